//! The OpenAI-compatible surface: `POST /v1/chat/completions`, `GET /v1/models` and
//! `GET /v1/models/{id}` in OpenAI's request, response, streaming and error shapes
//! (<https://platform.openai.com/docs/api-reference/chat>), so OpenAI's SDKs, LangChain and the
//! Vercel AI SDK work unchanged with their base URL pointed here, for every provider behind it.
//! A completion takes the one metered path, as `/api/v1/ai/chat` does.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use lambda_http::Request;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{json_body, principal, principal_org};
use super::respond::{self, HttpResponse};
use super::stream::{event_stream, plain, stream_deadline, Framing, StreamingResponse};
use super::{sse, HandlerResult};
use crate::catalog::Model;
use crate::chat::{self, ChatBody, ChatInput, InputMessage};
use crate::error::{AuthError, GatewayError, LimitError, PlanError, RequestError};
use crate::limits::{RateStatus, TokenStatus};
use crate::metered::{self, StreamSummary};
use crate::providers::{ChatResponse, FinishReason, ProviderErrorKind, Usage};
use crate::state::AppState;

pub const COMPLETIONS_PATH: &str = "/v1/chat/completions";
pub const MODELS_PATH: &str = "/v1/models";

/// The most stop sequences a request may give, as OpenAI allows.
const MAX_STOP: usize = 4;

/// `POST /v1/chat/completions`, streamed when the body asks for it.
pub async fn chat_completions(
    state: &AppState,
    request: Request,
) -> Result<StreamingResponse, lambda_http::Error> {
    Ok(match complete(state, &request).await {
        Ok(response) => response,
        Err(err) => plain(error(err, &new_request_id())),
    })
}

async fn complete(state: &AppState, request: &Request) -> Result<StreamingResponse, GatewayError> {
    let (party, org) = principal(state, request).await?;
    let parsed = json_body::<CompletionBody>(request)
        .map_err(GatewayError::from)
        .and_then(CompletionBody::into_input);
    let (input, stream) = match parsed {
        Ok((input, stream)) => (Ok(input), stream),
        Err(err) => (Err(err), None),
    };
    let admitted = metered::admit(state, &party, org, input).await?;
    let request_id = admitted.request_id().to_owned();
    let mut answer = Answer {
        id: format!("chatcmpl-{request_id}"),
        created: state.clock.now().unix_timestamp(),
        model: admitted.chat().model.id.to_string(),
    };
    let mut headers = HeaderMap::new();
    limit_headers(&mut headers, admitted.rate(), admitted.tokens());
    insert(&mut headers, "x-request-id", &request_id);
    let Some(include_usage) = stream else {
        let result = admitted.complete().await;
        let mut response = match result {
            Ok((response, model)) => {
                answer.model = model.to_string();
                respond::json(StatusCode::OK, &answer.completion(response))
            }
            Err(err) => error(err.into(), &request_id),
        };
        response.headers_mut().extend(headers);
        return Ok(plain(response));
    };
    let deadline = stream_deadline(request, Instant::now());
    match admitted.open_stream(deadline).await {
        Ok(opened) => {
            // The model that answered, which a fallback may have been.
            answer.model = opened.model().to_string();
            let chunks = Chunks {
                answer,
                include_usage,
            };
            event_stream(opened, chunks, deadline, &headers)
        }
        Err((err, _)) => {
            let mut response = error(err.into(), &request_id);
            response.headers_mut().extend(headers);
            Ok(plain(response))
        }
    }
}

/// The body of `POST /v1/chat/completions`. Fields the gateway does not know are ignored, as
/// OpenAI's API does for newer clients; fields it knows but cannot honour are refused by name.
#[derive(Debug, Deserialize)]
struct CompletionBody {
    model: Option<String>,
    messages: Vec<WireMessage>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    seed: Option<i64>,
    user: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    logprobs: Option<bool>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    /// Known to OpenAI's API and not honoured here: refused when given a value.
    #[serde(flatten)]
    unsupported: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
struct Unsupported {
    top_logprobs: Option<Value>,
    logit_bias: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    audio: Option<Value>,
    modalities: Option<Value>,
    prediction: Option<Value>,
    reasoning_effort: Option<Value>,
    web_search_options: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

fn invalid(text: String) -> GatewayError {
    RequestError::InvalidField(text).into()
}

impl Unsupported {
    /// The first field given a value this gateway cannot honour.
    fn first(&self) -> Option<&'static str> {
        let given = |value: &Option<Value>| match value {
            None | Some(Value::Null) => false,
            Some(Value::Object(map)) => !map.is_empty(),
            Some(Value::Array(list)) => !list.is_empty(),
            Some(_) => true,
        };
        let plain_text = |value: &Option<Value>| match value {
            Some(Value::Object(format)) => format.get("type") == Some(&Value::from("text")),
            Some(Value::String(choice)) => choice == "none",
            _ => false,
        };
        let only_text =
            matches!(&self.modalities, Some(Value::Array(m)) if m == &[Value::from("text")]);
        [
            ("top_logprobs", given(&self.top_logprobs)),
            ("logit_bias", given(&self.logit_bias)),
            ("tools", given(&self.tools)),
            (
                "tool_choice",
                given(&self.tool_choice) && !plain_text(&self.tool_choice),
            ),
            ("functions", given(&self.functions)),
            ("function_call", given(&self.function_call)),
            (
                "response_format",
                given(&self.response_format) && !plain_text(&self.response_format),
            ),
            ("audio", given(&self.audio)),
            ("modalities", given(&self.modalities) && !only_text),
            ("prediction", given(&self.prediction)),
            ("reasoning_effort", given(&self.reasoning_effort)),
            ("web_search_options", given(&self.web_search_options)),
        ]
        .into_iter()
        .find_map(|(field, refused)| refused.then_some(field))
    }
}

impl CompletionBody {
    /// The request, and whether to stream it (with the usage chunk or not).
    fn into_input(self) -> Result<(ChatInput, Option<bool>), GatewayError> {
        self.refuse_what_cannot_be_honoured()?;
        let top_p = match self.top_p {
            Some(p) if !(0.0..=1.0).contains(&p) => {
                return Err(invalid(format!("top_p: must be between 0 and 1, got {p}")))
            }
            p => p.map(|p| p as f32),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        };
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(invalid(format!(
                "stop: must be up to {MAX_STOP} non-empty sequences"
            )));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, message) in self.messages.into_iter().enumerate() {
            messages.push(message.into_input(i)?);
        }
        let mut input = chat::validate(ChatBody {
            messages,
            model: self.model,
            temperature: self.temperature,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stream: None,
        })?;
        input.sampling.top_p = top_p;
        input.sampling.stop = stop;
        input.sampling.seed = self.seed;
        input.sampling.user = self.user.filter(|u| !u.is_empty());
        let stream = (self.stream == Some(true)).then(|| {
            self.stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
        });
        Ok((input, stream))
    }

    fn refuse_what_cannot_be_honoured(&self) -> Result<(), GatewayError> {
        let refuse = |field: &str, why: &str| Err(invalid(format!("{field}: {why}")));
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "only one choice per request is supported");
        }
        if self.logprobs == Some(true) {
            return refuse("logprobs", "log probabilities are not supported");
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return refuse(field, "penalties are not supported");
            }
        }
        match self.unsupported.first() {
            Some(field) => refuse(field, "is not supported by this gateway"),
            None => Ok(()),
        }
    }
}

impl WireMessage {
    /// The message as the gateway's chat takes it: `developer` is a system message, and text
    /// parts are joined.
    fn into_input(self, i: usize) -> Result<InputMessage, GatewayError> {
        let role = match self.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => {
                return Err(invalid(format!(
                    "messages[{i}].role: {} messages are not supported by this gateway",
                    self.role
                )))
            }
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role: unknown role {other:?}; expected system, developer, user or assistant"
                )))
            }
        };
        if self.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(invalid(format!(
                "messages[{i}].tool_calls: tool calls are not supported by this gateway"
            )));
        }
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => texts.push(text),
                        (kind, _) => {
                            return Err(invalid(format!(
                                "messages[{i}].content[{j}]: {kind:?} parts are not supported by this gateway"
                            )))
                        }
                    }
                }
                texts.join("\n")
            }
        };
        Ok(InputMessage {
            role: role.to_owned(),
            content,
        })
    }
}

/// What every piece of one answer carries.
struct Answer {
    id: String,
    created: i64,
    model: String,
}

#[derive(Debug, Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice; 1],
    usage: WireUsage,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: u32,
    message: AnswerMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct AnswerMessage {
    role: &'static str,
    content: String,
    refusal: Option<()>,
}

#[derive(Debug, Serialize)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for WireUsage {
    fn from(usage: Usage) -> WireUsage {
        WireUsage {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.total(),
        }
    }
}

/// OpenAI's finish reasons; a provider's other reasons end the answer as `stop` does.
fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Stop | FinishReason::Other(_) => "stop",
    }
}

impl Answer {
    fn completion(&self, response: ChatResponse) -> Completion<'_> {
        Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                message: AnswerMessage {
                    role: "assistant",
                    content: response.text,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: finish_reason(&response.finish_reason),
            }],
            usage: response.usage.into(),
        }
    }

    /// One `chat.completion.chunk` event.
    fn chunk(&self, choices: Value, usage: Option<WireUsage>) -> Bytes {
        let mut chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(usage), Some(map)) = (usage, chunk.as_object_mut()) {
            map.insert("usage".into(), serde_json::json!(usage));
        }
        sse::data(&chunk.to_string())
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let choice = serde_json::json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        }]);
        self.chunk(choice, None)
    }
}

/// A completion's stream: the role first, then the content as it comes, a last chunk with the
/// finish reason, the usage when asked for (`stream_options.include_usage`), then `[DONE]`. An
/// answer cut short ends with an error event instead, then `[DONE]`.
struct Chunks {
    answer: Answer,
    include_usage: bool,
}

impl Framing for Chunks {
    fn opening(&mut self) -> Option<Bytes> {
        Some(self.answer.delta(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ))
    }

    fn text(&mut self, text: &str) -> Bytes {
        self.answer
            .delta(serde_json::json!({ "content": text }), None)
    }

    fn closing(&mut self, summary: &StreamSummary) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(3);
        if let Some(detail) = &summary.interrupted {
            let body = ErrorBody::new(
                detail.clone(),
                "api_error",
                None,
                Some("stream_interrupted"),
            );
            frames.push(sse::data(&serde_json::json!(body).to_string()));
        } else {
            let reason = summary.finish_reason.as_ref().map_or("stop", finish_reason);
            frames.push(self.answer.delta(serde_json::json!({}), Some(reason)));
            if self.include_usage {
                frames.push(
                    self.answer
                        .chunk(serde_json::json!([]), Some(summary.usage.into())),
                );
            }
        }
        frames.push(sse::done());
        frames
    }
}

/// `{"error": {"message", "type", "param", "code"}}`, as OpenAI answers errors.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ErrorBody {
    fn new(
        message: String,
        kind: &'static str,
        param: Option<String>,
        code: Option<&'static str>,
    ) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code,
            },
        }
    }
}

/// The field an invalid-field message names (`messages[0].role: …` → `messages[0].role`).
fn param_of(detail: &str) -> Option<String> {
    detail
        .split_once(": ")
        .map(|(field, _)| field.to_owned())
        .filter(|f| !f.contains(' '))
}

/// OpenAI's status, type and code for an error, so each SDK raises its usual exception.
fn classify(
    err: &GatewayError,
) -> (
    StatusCode,
    &'static str,
    Option<String>,
    Option<&'static str>,
) {
    const INVALID: &str = "invalid_request_error";
    let status = err.status();
    match err {
        GatewayError::Auth(AuthError::MissingOrgHeader) => {
            (status, INVALID, None, Some("missing_org"))
        }
        GatewayError::Auth(AuthError::NotMember(_) | AuthError::NotManager) => {
            (status, INVALID, None, Some("permission_denied"))
        }
        GatewayError::Auth(AuthError::OrgNotFound(_)) => {
            (status, INVALID, None, Some("org_not_found"))
        }
        GatewayError::Auth(_) => (status, INVALID, None, Some("invalid_api_key")),
        GatewayError::Request(RequestError::UnknownModel { .. }) => (
            StatusCode::NOT_FOUND,
            INVALID,
            Some("model".into()),
            Some("model_not_found"),
        ),
        GatewayError::Request(RequestError::InvalidField(detail)) => {
            (StatusCode::BAD_REQUEST, INVALID, param_of(detail), None)
        }
        GatewayError::Request(RequestError::Unsupported { field, .. }) => (
            status,
            INVALID,
            Some((*field).to_owned()),
            Some("unsupported_parameter"),
        ),
        GatewayError::Request(RequestError::MaxTokensAboveModel { .. })
        | GatewayError::Plan(PlanError::MaxTokensAbovePlan { .. }) => {
            (status, INVALID, Some("max_tokens".into()), None)
        }
        GatewayError::Plan(PlanError::ModelNotInPlan(_)) => (
            status,
            INVALID,
            Some("model".into()),
            Some("model_not_in_plan"),
        ),
        GatewayError::Limit(LimitError::RateLimited { .. }) => {
            (status, "requests", None, Some("rate_limit_exceeded"))
        }
        GatewayError::Limit(LimitError::TooManyInFlight { .. }) => (
            status,
            "requests",
            None,
            Some("too_many_requests_in_flight"),
        ),
        GatewayError::Limit(LimitError::MonthlyExceeded) => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        ),
        GatewayError::Provider(e) if e.kind == ProviderErrorKind::Timeout => {
            (status, "api_error", None, Some("upstream_timeout"))
        }
        GatewayError::Provider(_) => (status, "api_error", None, Some("upstream_error")),
        GatewayError::Request(_) => (status, INVALID, None, None),
        _ => (status, "server_error", None, None),
    }
}

/// An error in OpenAI's shape, with `x-request-id` and, for limits, the headers SDKs read.
fn error(err: GatewayError, request_id: &str) -> HttpResponse {
    respond::log(&err);
    let (status, kind, param, code) = classify(&err);
    let mut response = respond::json(status, &ErrorBody::new(err.detail(), kind, param, code));
    let headers = response.headers_mut();
    insert(headers, "x-request-id", request_id);
    match err {
        GatewayError::Limit(LimitError::RateLimited { limit, reset_secs }) => {
            let rate = RateStatus {
                limit,
                remaining: 0,
                reset_secs,
            };
            limit_headers(headers, rate, None);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(reset_secs));
        }
        GatewayError::Limit(LimitError::TooManyInFlight { .. }) => {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(1));
        }
        // A used-up month does not come back by retrying: SDKs read this and stop.
        GatewayError::Limit(LimitError::MonthlyExceeded) => {
            insert(headers, "x-should-retry", "false")
        }
        _ => {}
    }
    response
}

fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A duration as OpenAI writes its reset headers: `59s`, `6m0s`, `2h3m4s`.
fn duration(secs: u64) -> String {
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// `x-ratelimit-{limit,remaining,reset}-requests`, and `-tokens` when the plan limits tokens.
fn limit_headers(headers: &mut HeaderMap, rate: RateStatus, tokens: Option<TokenStatus>) {
    let windows = std::iter::once(("requests", rate.limit, rate.remaining, rate.reset_secs))
        .chain(tokens.map(|t| ("tokens", t.limit, t.remaining, t.reset_secs)));
    for (what, limit, remaining, reset_secs) in windows {
        for (name, value) in [
            ("limit", limit.to_string()),
            ("remaining", remaining.to_string()),
            ("reset", duration(reset_secs)),
        ] {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(format!("x-ratelimit-{name}-{what}")),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

/// One model as `/v1/models` lists it.
#[derive(Debug, Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    /// The catalog does not know when a model was made.
    created: i64,
    owned_by: &'a str,
}

impl<'a> From<&'a Model> for ModelObject<'a> {
    fn from(model: &'a Model) -> ModelObject<'a> {
        ModelObject {
            id: model.id.as_str(),
            object: "model",
            created: 0,
            owned_by: model.provider.as_str(),
        }
    }
}

#[derive(Debug, Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// `GET /v1/models` → the models of the org's plan; `GET /v1/models/{id}` → one of them.
pub async fn models(state: &AppState, request: Request) -> HandlerResult {
    let request_id = new_request_id();
    let mut response = models_inner(state, &request)
        .await
        .unwrap_or_else(|err| error(err, &request_id));
    insert(response.headers_mut(), "x-request-id", &request_id);
    Ok(response)
}

async fn models_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (_, membership) = principal_org(state, request).await?;
    let plan = metered::plan_of(state, &membership)?;
    let models = state.catalog.models_in(plan);
    let wanted = super::extract::path_param(request, "id", MODELS_PATH);
    let Some(id) = wanted else {
        let data = models.into_iter().map(ModelObject::from).collect();
        return Ok(respond::json(
            StatusCode::OK,
            &ModelList {
                object: "list",
                data,
            },
        ));
    };
    match models.into_iter().find(|m| m.id.as_str() == id) {
        Some(model) => Ok(respond::json(StatusCode::OK, &ModelObject::from(model))),
        None => Err(RequestError::UnknownModel {
            model: id,
            valid: state
                .catalog
                .models_in(plan)
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> Result<(ChatInput, Option<bool>), GatewayError> {
        serde_json::from_value::<CompletionBody>(json)
            .expect("body")
            .into_input()
    }

    #[test]
    fn openai_requests_become_chats() {
        let (input, stream) = body(serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}
            ],
            "max_completion_tokens": 50, "max_tokens": 10, "top_p": 0.5, "stop": "END", "seed": 7,
            "user": "u-1", "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "logprobs": false, "tool_choice": "none", "response_format": {"type": "text"},
            "something_new": {"a": 1}
        }))
        .expect("valid");
        assert_eq!(stream, Some(true));
        assert_eq!(input.system.as_deref(), Some("Be brief."));
        assert_eq!(input.turns[0].text, "Hi\nthere");
        assert_eq!(input.max_tokens, Some(50));
        assert_eq!(input.sampling.top_p, Some(0.5));
        assert_eq!(input.sampling.stop, vec!["END".to_owned()]);
        assert_eq!(input.sampling.seed, Some(7));
        assert_eq!(input.sampling.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn fields_that_cannot_be_honoured_are_refused_by_name() {
        for (field, value) in [
            ("n", serde_json::json!(2)),
            ("logprobs", serde_json::json!(true)),
            ("presence_penalty", serde_json::json!(0.5)),
            (
                "tools",
                serde_json::json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            (
                "response_format",
                serde_json::json!({"type": "json_object"}),
            ),
            ("top_p", serde_json::json!(1.5)),
            ("stop", serde_json::json!(["a", "b", "c", "d", "e"])),
        ] {
            let mut json = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
            json[field] = value;
            let err = body(json).expect_err(field);
            let (status, _, param, _) = classify(&err);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
            assert_eq!(param.as_deref(), Some(field), "{err}");
        }
    }

    #[test]
    fn reset_durations_read_as_openai_writes_them() {
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(360), "6m0s");
        assert_eq!(duration(7384), "2h3m4s");
    }
}
