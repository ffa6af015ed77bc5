//! Chat: validating a request, checking it against the organisation's plan, and answering it
//! through the model's provider.

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Model, Plan};
use crate::error::{GatewayError, PlanError, RequestError};
use crate::ids::ModelId;
use crate::providers::{
    ChatRequest, ChatResponse, FinishReason, ProviderError, Providers, Speaker, Turn, Usage,
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

/// A request that passed every check that needs no counter.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    pub model: Model,
    pub request: ChatRequest,
}

fn invalid(text: String) -> GatewayError {
    RequestError::InvalidField(text).into()
}

/// Validates the body and applies the plan, in SPEC's order: fields, unknown model, model not in
/// plan, max_tokens above the model's or the plan's maximum.
pub fn prepare(
    catalog: &Catalog,
    plan: &Plan,
    body: ChatBody,
) -> Result<PreparedChat, GatewayError> {
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
        match message.role.as_str() {
            "system" => system.push(message.content),
            "user" => turns.push(Turn {
                speaker: Speaker::User,
                text: message.content,
            }),
            "assistant" => turns.push(Turn {
                speaker: Speaker::Assistant,
                text: message.content,
            }),
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role: unknown role {other:?}; expected system, user or assistant"
                )))
            }
        }
    }
    if turns.is_empty() {
        return Err(invalid(
            "messages: must contain at least one user or assistant message".into(),
        ));
    }
    let temperature = match body.temperature {
        None => None,
        Some(t) if (0.0..=2.0).contains(&t) => Some(t as f32),
        Some(t) => {
            return Err(invalid(format!(
                "temperature: must be between 0 and 2, got {t}"
            )))
        }
    };
    let requested_max = match body.max_tokens {
        None => None,
        Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Some(n) => {
            return Err(invalid(format!(
                "max_tokens: must be a positive integer, got {n}"
            )))
        }
    };

    let model_id = body
        .model
        .map(ModelId::from)
        .unwrap_or_else(|| catalog.default_model.clone());
    let model = catalog
        .model(&model_id)
        .ok_or_else(|| RequestError::UnknownModel {
            model: model_id.to_string(),
            valid: catalog.model_ids().join(", "),
        })?;
    if !plan.allows(&model.id) {
        return Err(PlanError::ModelNotInPlan(model.id.to_string()).into());
    }
    let max_tokens = match requested_max {
        Some(requested) if requested > model.max_tokens => {
            return Err(RequestError::MaxTokensAboveModel {
                requested,
                max: model.max_tokens,
                model: model.id.to_string(),
            }
            .into())
        }
        Some(requested) if requested > plan.max_tokens_per_request => {
            return Err(PlanError::MaxTokensAbovePlan {
                requested,
                max: plan.max_tokens_per_request,
            }
            .into())
        }
        Some(requested) => requested,
        None => model.max_tokens.min(plan.max_tokens_per_request),
    };

    Ok(PreparedChat {
        model: model.clone(),
        request: ChatRequest {
            upstream_model: model.upstream.clone(),
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            turns,
            max_tokens,
            temperature,
        },
    })
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
    pub fn from_parts(response: ChatResponse, chat: &PreparedChat) -> ChatAnswer {
        ChatAnswer {
            message: response.text,
            model: chat.model.id.to_string(),
            usage: response.usage.into(),
            finish_reason: response.finish_reason,
        }
    }
}

/// Calls the model's provider.
pub async fn answer(
    providers: &Providers,
    chat: &PreparedChat,
) -> Result<ChatResponse, ProviderError> {
    let provider = providers.get(chat.model.provider);
    let started = std::time::Instant::now();
    let response = provider.complete(&chat.request).await;
    match &response {
        Ok(response) => tracing::info!(
            model = %chat.model.id,
            provider = %chat.model.provider,
            input_tokens = response.usage.input_tokens,
            output_tokens = response.usage.output_tokens,
            duration_ms = started.elapsed().as_millis() as u64,
            "chat answered"
        ),
        Err(err) => tracing::warn!(
            model = %chat.model.id,
            provider = %chat.model.provider,
            duration_ms = started.elapsed().as_millis() as u64,
            error = %err,
            "provider failed"
        ),
    }
    response
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
        prepare(&catalog, &plan, body(json))
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
