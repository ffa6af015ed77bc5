//! The OpenAI-compatible surface: `POST /v1/chat/completions`, `GET /v1/models` and
//! `GET /v1/models/{id}` in OpenAI's request, response, streaming and error shapes
//! (<https://platform.openai.com/docs/api-reference/chat>), so OpenAI's SDKs, LangChain and the
//! Vercel AI SDK work unchanged with their base URL pointed here, for every provider behind it.
//! A completion takes the one metered path, as `/api/v1/ai/chat` does.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use lambda_http::Request;
use serde::Serialize;
use serde_json::Value;

use super::extract::{json_body, principal, principal_org};
use super::respond::{self, HttpResponse};
use super::stream::{event_stream, plain, stream_deadline, Framing, StreamingResponse};
use super::{sse, HandlerResult};
use crate::catalog::Model;
use crate::error::{AuthError, GatewayError, LimitError, PlanError, RequestError};
use crate::limits::{RateStatus, TokenStatus};
use crate::metered::{self, StreamSummary};
use crate::providers::{
    ChatResponse, FinishReason, ProviderError, ProviderErrorKind, ToolCall, ToolCallDelta, Usage,
};
use crate::state::AppState;
use request::{wire_call_id, CompletionBody};

mod request;

pub const COMPLETIONS_PATH: &str = "/v1/chat/completions";
pub const MODELS_PATH: &str = "/v1/models";

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
    /// `null` when the answer is only tool calls, as OpenAI's is.
    content: Option<String>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall>,
}

#[derive(Debug, Serialize)]
struct WireCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction,
}

#[derive(Debug, Serialize)]
struct WireFunction {
    name: String,
    arguments: String,
}

impl From<ToolCall> for WireCall {
    fn from(call: ToolCall) -> WireCall {
        WireCall {
            id: wire_call_id(&call.id, call.signature.as_deref()),
            kind: "function",
            function: WireFunction {
                name: call.name,
                arguments: call.arguments,
            },
        }
    }
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
                    content: (!response.text.is_empty() || response.tool_calls.is_empty())
                        .then_some(response.text),
                    refusal: None,
                    tool_calls: response
                        .tool_calls
                        .into_iter()
                        .map(WireCall::from)
                        .collect(),
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

    /// OpenAI's shape: the call's id, type and name on its first piece, with the arguments so
    /// far; only more arguments on the next ones.
    fn tool_call(&mut self, call: &ToolCallDelta) -> Option<Bytes> {
        let mut piece = serde_json::json!({
            "index": call.index,
            "function": {"arguments": call.arguments},
        });
        if let Some(id) = &call.id {
            piece["id"] = wire_call_id(id, call.signature.as_deref()).into();
            piece["type"] = "function".into();
        }
        if let Some(name) = &call.name {
            piece["function"]["name"] = name.as_str().into();
        }
        Some(
            self.answer
                .delta(serde_json::json!({ "tool_calls": [piece] }), None),
        )
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
        GatewayError::Provider(e) => classify_provider(e),
        GatewayError::Request(_) => (status, INVALID, None, None),
        _ => (status, "server_error", None, None),
    }
}

/// A provider's failure: a request it refused as invalid is the client's to fix (400, not a 5xx
/// the SDKs would retry); a timeout is 504; anything else 502.
fn classify_provider(
    err: &ProviderError,
) -> (
    StatusCode,
    &'static str,
    Option<String>,
    Option<&'static str>,
) {
    match err.kind {
        ProviderErrorKind::Upstream {
            status: 400 | 413 | 422,
            ..
        } => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("upstream_rejected"),
        ),
        ProviderErrorKind::Timeout => (err.status(), "api_error", None, Some("upstream_timeout")),
        _ => (err.status(), "api_error", None, Some("upstream_error")),
    }
}

/// A request refused before its handler ran (a body too large or too slow, on the local server),
/// in OpenAI's shape.
pub fn refused(err: GatewayError) -> HttpResponse {
    error(err, &new_request_id())
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

    #[test]
    fn reset_durations_read_as_openai_writes_them() {
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(360), "6m0s");
        assert_eq!(duration(7384), "2h3m4s");
    }
}
