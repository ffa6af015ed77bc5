//! Chat: validating a request, checking it against the organisation's plan, and answering it
//! through the model's provider.

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Model, Plan, ProviderKind};
use crate::error::{GatewayError, PlanError, RequestError};
use crate::ids::ModelId;
use crate::providers::{
    ChatRequest, ChatResponse, FinishReason, Image, ImageSource, Part, ResponseFormat, Sampling,
    Speaker, Tooling, Turn, Usage,
};

/// The body of `POST /api/v1/ai/chat`, as sent. Fields are loosely typed here and checked in
/// [`prepare`], so every mistake gets a message naming the field.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    pub messages: Vec<InputMessage>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    pub stream: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct InputMessage {
    pub role: String,
    pub content: String,
}

/// A chat request whose fields are valid, before any plan is applied to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatInput {
    /// The model asked for; the catalog's default when `None`.
    pub model: Option<ModelId>,
    /// The output tokens asked for, as sent; the model's and the plan's maximum when `None`.
    pub max_tokens: Option<u64>,
    pub system: Option<String>,
    pub turns: Vec<Turn>,
    pub temperature: Option<f32>,
    pub sampling: Sampling,
    pub tooling: Tooling,
    pub format: ResponseFormat,
}

/// The images the messages carry.
pub fn images(turns: &[Turn]) -> impl Iterator<Item = &Image> {
    turns
        .iter()
        .flat_map(|turn| &turn.parts)
        .filter_map(|part| match part {
            Part::Image(image) => Some(image),
            _ => None,
        })
}

/// What a request asks that not every provider can do.
struct Asks<'a> {
    seed: bool,
    turns: &'a [Turn],
    tools_and_json: bool,
}

impl<'a> Asks<'a> {
    fn of(input: &'a ChatInput) -> Asks<'a> {
        Asks {
            seed: input.sampling.seed.is_some(),
            turns: &input.turns,
            tools_and_json: input.tooling.offered() && input.format.is_json(),
        }
    }

    fn of_request(request: &'a ChatRequest) -> Asks<'a> {
        Asks {
            seed: request.sampling.seed.is_some(),
            turns: &request.turns,
            tools_and_json: request.tooling.offered() && request.format.is_json(),
        }
    }
}

/// A request that passed every check that needs no counter.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    pub model: Model,
    pub request: ChatRequest,
    /// `max_tokens` as the caller asked it, so the request can be prepared again under another
    /// plan (the default depends on the plan).
    pub asked_max_tokens: Option<u64>,
}

impl PreparedChat {
    /// The request as it was before a plan was applied.
    pub fn into_input(self) -> ChatInput {
        ChatInput {
            model: Some(self.model.id),
            max_tokens: self.asked_max_tokens,
            system: self.request.system,
            turns: self.request.turns,
            temperature: self.request.temperature,
            sampling: self.request.sampling,
            tooling: self.request.tooling,
            format: self.request.format,
        }
    }
}

fn invalid(text: String) -> GatewayError {
    RequestError::InvalidField(text).into()
}

/// Checks the fields of a body, naming the first that is wrong.
pub fn validate(body: ChatBody) -> Result<ChatInput, GatewayError> {
    if body.messages.is_empty() {
        return Err(invalid(
            "messages: must contain at least one message".into(),
        ));
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns = Vec::with_capacity(body.messages.len());
    for (i, message) in body.messages.into_iter().enumerate() {
        if message.content.trim().is_empty() {
            return Err(invalid(format!("messages[{i}].content: must not be empty")));
        }
        let speaker = match message.role.as_str() {
            "system" => {
                system.push(message.content);
                continue;
            }
            "user" => Speaker::User,
            "assistant" => Speaker::Assistant,
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role: unknown role {other:?}; expected system, user or assistant"
                )))
            }
        };
        turns.push(Turn::text(speaker, message.content));
    }
    let options = Options {
        model: body.model,
        temperature: body.temperature,
        max_tokens: body.max_tokens,
    };
    input(system, turns, options)
}

/// The options of a chat request every surface has, as sent.
#[derive(Debug, Default)]
pub struct Options {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
}

/// A chat of `turns` after the `system` prompts, checked: at least one turn, the options in range.
pub fn input(
    system: Vec<String>,
    turns: Vec<Turn>,
    options: Options,
) -> Result<ChatInput, GatewayError> {
    if turns.is_empty() {
        return Err(invalid(
            "messages: must contain at least one user or assistant message".into(),
        ));
    }
    let temperature = match options.temperature {
        None => None,
        Some(t) if (0.0..=2.0).contains(&t) => Some(t as f32),
        Some(t) => {
            return Err(invalid(format!(
                "temperature: must be between 0 and 2, got {t}"
            )))
        }
    };
    let max_tokens = match options.max_tokens {
        None => None,
        Some(n) if n >= 1 => Some(n.unsigned_abs()),
        Some(n) => {
            return Err(invalid(format!(
                "max_tokens: must be a positive integer, got {n}"
            )))
        }
    };
    Ok(ChatInput {
        model: options.model.map(ModelId::from),
        max_tokens,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        turns,
        temperature,
        sampling: Sampling::default(),
        tooling: Tooling::default(),
        format: ResponseFormat::default(),
    })
}

/// The first field of `input` that `model`'s provider cannot honour, if any: a `seed` on
/// Anthropic, an image by address or a GIF on Gemini, tools with a JSON answer anywhere but
/// OpenAI.
fn unsupported(model: &Model, asks: &Asks<'_>) -> Option<&'static str> {
    let provider = model.provider;
    if asks.seed && provider == ProviderKind::Anthropic {
        return Some("seed");
    }
    let refused = |image: &Image| match &image.source {
        ImageSource::Url(_) => !provider.fetches_image_urls(),
        ImageSource::Inline { media_type, .. } => !provider.reads_image_type(media_type),
    };
    if images(asks.turns).any(refused) {
        return Some("image_url");
    }
    if asks.tools_and_json && !provider.tools_with_json() {
        return Some("response_format");
    }
    None
}

/// Applies the catalog and the plan to a valid request, in SPEC's order: unknown model, model not
/// in plan, max_tokens above the model's or the plan's maximum. Gives the model and the output
/// tokens the request may use.
pub fn check<'a>(
    catalog: &'a Catalog,
    plan: &Plan,
    input: &ChatInput,
) -> Result<(&'a Model, u32), GatewayError> {
    let model_id = input.model.as_ref().unwrap_or(&catalog.default_model);
    let model = catalog
        .model(model_id)
        .ok_or_else(|| RequestError::UnknownModel {
            model: model_id.to_string(),
            valid: catalog.model_ids().join(", "),
        })?;
    if !plan.allows(&model.id) {
        return Err(PlanError::ModelNotInPlan(model.id.to_string()).into());
    }
    if let Some(field) = unsupported(model, &Asks::of(input)) {
        return Err(RequestError::Unsupported {
            field,
            model: model.id.to_string(),
        }
        .into());
    }
    let max_tokens = match input.max_tokens {
        Some(requested) if requested > u64::from(model.max_tokens) => {
            return Err(RequestError::MaxTokensAboveModel {
                requested,
                max: model.max_tokens,
                model: model.id.to_string(),
            }
            .into())
        }
        Some(requested) if requested > u64::from(plan.max_tokens_per_request) => {
            return Err(PlanError::MaxTokensAbovePlan {
                requested,
                max: plan.max_tokens_per_request,
            }
            .into())
        }
        // At most the model's maximum, a u32, by the check above.
        Some(requested) => u32::try_from(requested).unwrap_or(model.max_tokens),
        None => model.max_tokens.min(plan.max_tokens_per_request),
    };
    Ok((model, max_tokens))
}

/// The models a prepared request may be answered by, in order: its own, then its fallbacks that
/// the plan allows and that can honour the request as admitted (nothing [`check`] would refuse;
/// a `max_tokens` the caller asked for rules out models that allow fewer, rather than being cut;
/// images rule out models whose images may cost more tokens than were held for them).
pub fn candidates(catalog: &Catalog, plan: &Plan, chat: &PreparedChat) -> Vec<Model> {
    let asks = Asks::of_request(&chat.request);
    let has_images = images(&chat.request.turns).next().is_some();
    let honours = |model: &Model| {
        let asked = chat
            .asked_max_tokens
            .is_some_and(|asked| asked > u64::from(model.max_tokens));
        let images =
            has_images && model.provider.image_tokens() > chat.model.provider.image_tokens();
        !asked && !images && unsupported(model, &asks).is_none()
    };
    std::iter::once(chat.model.clone())
        .chain(
            chat.model
                .fallbacks
                .iter()
                .filter_map(|id| catalog.model(id))
                .filter(|model| plan.allows(&model.id) && honours(model))
                .cloned(),
        )
        .collect()
}

/// [`check`], then the request for the model's provider.
pub fn prepare(
    catalog: &Catalog,
    plan: &Plan,
    input: ChatInput,
) -> Result<PreparedChat, GatewayError> {
    let (model, max_tokens) = check(catalog, plan, &input)?;
    Ok(build(model, max_tokens, input))
}

/// The request for a model that passed [`check`].
pub fn build(model: &Model, max_tokens: u32, input: ChatInput) -> PreparedChat {
    PreparedChat {
        model: model.clone(),
        request: ChatRequest {
            upstream_model: model.upstream.clone(),
            system: input.system,
            turns: input.turns,
            max_tokens,
            temperature: input.temperature,
            sampling: input.sampling,
            tooling: input.tooling,
            format: input.format,
        },
        asked_max_tokens: input.max_tokens,
    }
}

/// The body of a chat answer, as SPEC §5 shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatAnswer {
    pub message: String,
    pub model: String,
    pub usage: UsageBody,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageBody {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> UsageBody {
        UsageBody {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.total(),
        }
    }
}

impl ChatAnswer {
    /// The answer of `model` (its public id).
    pub fn from_parts(response: ChatResponse, model: String) -> ChatAnswer {
        ChatAnswer {
            message: response.text,
            model,
            usage: response.usage.into(),
            finish_reason: response.finish_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PlanId;

    fn body(json: serde_json::Value) -> ChatBody {
        serde_json::from_value(json).expect("body")
    }

    fn check(plan: &str, json: serde_json::Value) -> Result<PreparedChat, GatewayError> {
        let catalog = Catalog::builtin();
        let plan = catalog.plan(&PlanId::from(plan)).expect("plan").clone();
        validate(body(json)).and_then(|input| prepare(&catalog, &plan, input))
    }

    fn refusal(result: Result<PreparedChat, GatewayError>) -> (u16, String) {
        let err = result.expect_err("should fail");
        (err.status().as_u16(), err.detail())
    }

    #[test]
    fn defaults_fill_model_and_max_tokens() {
        let chat = check(
            "free",
            serde_json::json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}
            ]}),
        )
        .expect("valid");
        assert_eq!(chat.model.id.as_str(), "gemini-1.5-flash");
        assert_eq!(chat.request.max_tokens, 1_024);
        assert_eq!(chat.request.system.as_deref(), Some("Be brief."));
        assert_eq!(chat.request.turns.len(), 1);
    }

    #[test]
    fn model_outside_the_plan_is_403_with_the_spec_text() {
        let (status, detail) = refusal(check(
            "free",
            serde_json::json!({"model": "gemini-1.5-pro", "messages": [{"role": "user", "content": "Hi"}]}),
        ));
        assert_eq!(status, 403);
        assert_eq!(
            detail,
            "Model gemini-1.5-pro not available in your plan. Upgrade to access."
        );
    }

    #[test]
    fn unknown_model_names_the_valid_ids() {
        let (status, detail) = refusal(check(
            "pro",
            serde_json::json!({"model": "gpt-5", "messages": [{"role": "user", "content": "Hi"}]}),
        ));
        assert_eq!(status, 400);
        assert!(
            detail.contains("gpt-5") && detail.contains("claude-3-haiku"),
            "{detail}"
        );
    }

    #[test]
    fn max_tokens_above_plan_is_403_and_above_model_is_400() {
        let (status, detail) = refusal(check(
            "free",
            serde_json::json!({"max_tokens": 2048, "messages": [{"role": "user", "content": "Hi"}]}),
        ));
        assert_eq!(status, 403);
        assert!(
            detail.contains("2048") && detail.contains("1024"),
            "{detail}"
        );
        let (status, detail) = refusal(check(
            "team",
            serde_json::json!({"model": "claude-3-haiku", "max_tokens": 5000, "messages": [{"role": "user", "content": "Hi"}]}),
        ));
        assert_eq!(status, 400);
        assert!(
            detail.contains("5000") && detail.contains("4096"),
            "{detail}"
        );
    }

    #[test]
    fn fallbacks_are_those_the_plan_allows_that_can_honour_the_request() {
        let mut catalog = Catalog::builtin();
        let gpt = ModelId::from("gpt-4o-mini");
        catalog.models.get_mut(&gpt).expect("model").fallbacks = vec![
            ModelId::from("claude-3-haiku"),
            ModelId::from("gemini-1.5-pro"),
            ModelId::from("gemini-1.5-flash"),
        ];
        let candidates = |plan: &str, json: serde_json::Value| {
            let plan = catalog.plan(&PlanId::from(plan)).expect("plan");
            let chat = prepare(&catalog, plan, validate(body(json)).expect("valid")).expect("ok");
            candidates(&catalog, plan, &chat)
                .into_iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
        };
        let hi = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
        // The free plan allows only GPT and Gemini Flash.
        assert_eq!(
            candidates("free", hi.clone()),
            ["gpt-4o-mini", "gemini-1.5-flash"]
        );
        assert_eq!(
            candidates("team", hi),
            [
                "gpt-4o-mini",
                "claude-3-haiku",
                "gemini-1.5-pro",
                "gemini-1.5-flash"
            ]
        );
        // A seed rules Claude out; 6,000 output tokens asked for rule out Claude's 4,096.
        let seeded = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
        let mut seeded_input = validate(body(seeded)).expect("valid");
        seeded_input.sampling.seed = Some(1);
        let team = catalog.plan(&PlanId::from("team")).expect("plan");
        let chat = prepare(&catalog, team, seeded_input).expect("ok");
        assert!(!super::candidates(&catalog, team, &chat)
            .iter()
            .any(|m| m.id.as_str() == "claude-3-haiku"));
        let long = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 6000, "messages": [{"role": "user", "content": "Hi"}]});
        assert_eq!(
            candidates("team", long),
            ["gpt-4o-mini", "gemini-1.5-pro", "gemini-1.5-flash"]
        );
    }

    #[test]
    fn what_a_provider_cannot_do_is_refused_and_rules_its_models_out_as_fallbacks() {
        let mut catalog = Catalog::builtin();
        let pro = catalog.plan(&PlanId::from("pro")).expect("plan").clone();
        let image = |url: bool| {
            let source = if url {
                ImageSource::Url("https://example.com/cat.png".into())
            } else {
                ImageSource::Inline {
                    media_type: "image/png".into(),
                    data: "iVBORw0K".into(),
                }
            };
            Part::Image(Image {
                source,
                detail: None,
            })
        };
        let input = |model: &str, part: Part| {
            let body = body(
                serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Look"}]}),
            );
            let mut input = validate(body).expect("valid");
            input.turns[0].parts.push(part);
            input
        };
        // Gemini fetches no image addresses.
        let err = prepare(&catalog, &pro, input("gemini-1.5-flash", image(true))).expect_err("400");
        assert_eq!(err.status().as_u16(), 400);
        assert!(err.detail().starts_with("image_url"), "{}", err.detail());
        // Claude and Gemini cannot offer tools and answer in JSON at once.
        let mut both = input("claude-3-haiku", Part::Text("x".into()));
        both.tooling.tools.push(crate::providers::Tool {
            name: "f".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
            strict: None,
        });
        both.format = ResponseFormat::JsonObject;
        let err = prepare(&catalog, &pro, both).expect_err("400");
        assert!(
            err.detail().starts_with("response_format"),
            "{}",
            err.detail()
        );
        // As fallbacks, such models are skipped; so are models whose images may cost more.
        for (id, fallbacks) in [
            ("gpt-4o-mini", ["claude-3-haiku", "gemini-1.5-flash"]),
            ("gemini-1.5-pro", ["gpt-4o-mini", "gemini-1.5-flash"]),
        ] {
            catalog
                .models
                .get_mut(&ModelId::from(id))
                .expect("model")
                .fallbacks = fallbacks.into_iter().map(ModelId::from).collect();
        }
        let names = |chat: &PreparedChat| {
            candidates(&catalog, &pro, chat)
                .into_iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
        };
        let by_address = prepare(&catalog, &pro, input("gpt-4o-mini", image(true))).expect("ok");
        assert_eq!(names(&by_address), ["gpt-4o-mini", "claude-3-haiku"]);
        let inline = prepare(&catalog, &pro, input("gemini-1.5-pro", image(false))).expect("ok");
        assert_eq!(inline.model.provider.image_tokens(), 4_128);
        assert_eq!(names(&inline), ["gemini-1.5-pro", "gemini-1.5-flash"]);
    }

    #[test]
    fn max_tokens_beyond_32_bits_is_reported_as_sent() {
        let (status, detail) = refusal(check(
            "team",
            serde_json::json!({"max_tokens": 5_000_000_000_i64, "messages": [{"role": "user", "content": "Hi"}]}),
        ));
        assert_eq!(status, 400);
        assert!(detail.contains("5000000000"), "{detail}");
    }

    #[test]
    fn bad_fields_are_422_naming_the_field() {
        for (json, field) in [
            (serde_json::json!({"messages": []}), "messages"),
            (
                serde_json::json!({"messages": [{"role": "bot", "content": "Hi"}]}),
                "messages[0].role",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "  "}]}),
                "messages[0].content",
            ),
            (
                serde_json::json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages",
            ),
            (
                serde_json::json!({"temperature": 2.5, "messages": [{"role": "user", "content": "Hi"}]}),
                "temperature",
            ),
            (
                serde_json::json!({"max_tokens": 0, "messages": [{"role": "user", "content": "Hi"}]}),
                "max_tokens",
            ),
        ] {
            let (status, detail) = refusal(check("pro", json));
            assert_eq!(status, 422, "{detail}");
            assert!(detail.starts_with(field), "{detail}");
        }
    }
}
