//! Gemini: `POST /v1beta/models/{model}:generateContent` and
//! `POST /v1beta/models/{model}:streamGenerateContent` (`?alt=sse` for SSE, otherwise a
//! streamed JSON array).
//!
//! Wire types follow <https://ai.google.dev/api/generate-content>; errors follow
//! <https://ai.google.dev/gemini-api/docs/troubleshooting> (the `google.rpc.Status` shape).

use std::sync::Arc;

use axum::{
    extract::{
        rejection::{BytesRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, Extensions, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    script::{Finish, Outcome, Script},
    sse::{self, Playback},
    tools, AppState,
};

mod request;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ModelsQuery {
    alt: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse<'a> {
    candidates: [Candidate<'a>; 1],
    usage_metadata: UsageMetadata,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: CandidateContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Debug, Serialize)]
struct CandidateContent<'a> {
    parts: Vec<ResponsePart<'a>>,
    role: &'static str,
}

/// A text part or a function call part; the signature sits beside the call, not inside it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponsePart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<String>,
}

#[derive(Debug, Serialize)]
struct FunctionCall<'a> {
    id: &'a str,
    name: &'a str,
    args: &'a Value,
}

impl<'a> ResponsePart<'a> {
    fn text(text: &'a str) -> Self {
        Self {
            text: Some(text),
            function_call: None,
            thought_signature: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u32,
    candidates_token_count: u32,
    total_token_count: u32,
    prompt_tokens_details: Vec<ModalityTokenCount>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModalityTokenCount {
    modality: &'static str,
    token_count: u32,
}

impl UsageMetadata {
    /// Usage with `candidates` output tokens so far; the prompt is split by modality as Gemini
    /// reports it.
    fn new(script: &Script, candidates: u32) -> Self {
        let prompt = script.input_tokens;
        let mut details = vec![ModalityTokenCount {
            modality: "TEXT",
            token_count: prompt.saturating_sub(script.image_tokens),
        }];
        if script.image_tokens > 0 {
            details.push(ModalityTokenCount {
                modality: "IMAGE",
                token_count: script.image_tokens,
            });
        }
        Self {
            prompt_token_count: prompt,
            candidates_token_count: candidates,
            total_token_count: prompt.saturating_add(candidates),
            prompt_tokens_details: details,
        }
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "STOP",
        Finish::Length => "MAX_TOKENS",
        // Gemini has no finish reason of its own for function calls.
        Finish::ToolUse => "STOP",
    }
}

/// Ids of the answer's function calls: 8 lower-case letters and digits.
fn call_ids(script: &Script) -> Vec<String> {
    (0..script.calls.len())
        .map(|index| tools::call_id("", script.key, index, 8).to_ascii_lowercase())
        .collect()
}

/// The answer's function call parts; only the first carries a thought signature, as Gemini
/// signs parallel calls.
fn call_parts<'a>(script: &'a Script, ids: &'a [String]) -> Vec<ResponsePart<'a>> {
    script
        .calls
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(index, (call, id))| ResponsePart {
            text: None,
            function_call: Some(FunctionCall {
                id,
                name: &call.name,
                args: &call.arguments,
            }),
            thought_signature: (index == 0)
                .then(|| request::signature(&call.name, Some(&call.arguments))),
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Generate,
    Stream { sse: bool },
}

/// `POST /v1beta/models/{model}:{action}`.
pub(crate) async fn models(
    State(state): State<Arc<AppState>>,
    Path(model_action): Path<String>,
    query: Result<Query<ModelsQuery>, QueryRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A query we cannot read is treated as empty: the key check below then answers.
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let (model, action) = match route(&model_action, &query) {
        Ok(route) => route,
        Err(error) => return error.into_response(),
    };
    let Some(key) = presented_key(&headers, &query) else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )
        .into_response();
    };
    if !state.accepts_key(key) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "API key not valid. Please pass a valid API key.",
        )
        .into_response();
    }
    let request = match parse(body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let reading = match request::read(&request) {
        Ok(reading) => reading,
        Err(error) => return error.into_response(),
    };
    let script = Script::new(&state.config, &reading.turn(model));
    let stream = action != Action::Generate;
    tracing::info!(
        provider = "gemini",
        model,
        stream,
        input_tokens = script.input_tokens,
        output_tokens = script.output_tokens(),
        tool_calls = script.calls.len(),
        "generate content"
    );

    script.wait_latency().await;
    match state.outcome(&script, stream) {
        Outcome::Fail(status) => {
            return crate::failed(ApiError::simulated(status).into_response(), &script)
        }
        Outcome::Drop => return crate::drop_connection(&extensions),
        Outcome::Answer => {}
    }

    let response_id = format!("sim{}", state.next_id(reading.prompt()));
    let ids = call_ids(&script);
    let (body, content_type) = match action {
        Action::Generate => {
            let text = script.text();
            let parts = if script.calls.is_empty() {
                vec![ResponsePart::text(&text)]
            } else {
                call_parts(&script, &ids)
            };
            let usage = UsageMetadata::new(&script, script.output_tokens());
            let response = chunk(parts, Some(script.finish), usage, model, &response_id);
            let body = axum::body::Body::from(sse::to_json(&response));
            (body, "application/json; charset=UTF-8")
        }
        Action::Stream { sse } => {
            let body = playback(&script, &ids, model, &response_id, sse).into_body();
            let content_type = if sse {
                "text/event-stream"
            } else {
                "application/json; charset=UTF-8"
            };
            (body, content_type)
        }
    };
    let mut response = body.into_response();
    set_content_type(&mut response, content_type);
    response
}

/// Splits `models/{model}:{action}`; the router cannot split a path segment on ':'.
fn route<'a>(model_action: &'a str, query: &ModelsQuery) -> Result<(&'a str, Action), ApiError> {
    let Some((model, action)) = model_action.rsplit_once(':') else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("models/{model_action} is not found, or is not supported for this method."),
        ));
    };
    let action = match action {
        "generateContent" => Action::Generate,
        "streamGenerateContent" => Action::Stream {
            sse: query.alt.as_deref() == Some("sse"),
        },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Method {other} is not found for models/{model}."),
            ))
        }
    };
    Ok((model, action))
}

/// The key, from `x-goog-api-key` or the `key` query parameter.
fn presented_key<'a>(headers: &'a HeaderMap, query: &'a ModelsQuery) -> Option<&'a str> {
    headers
        .get("x-goog-api-key")
        .and_then(|value| value.to_str().ok())
        .or(query.key.as_deref())
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

fn chunk<'a>(
    parts: Vec<ResponsePart<'a>>,
    finish: Option<Finish>,
    usage: UsageMetadata,
    model: &'a str,
    response_id: &'a str,
) -> GenerateContentResponse<'a> {
    GenerateContentResponse {
        candidates: [Candidate {
            content: CandidateContent {
                parts,
                role: "model",
            },
            finish_reason: finish.map(finish_reason),
            index: 0,
        }],
        usage_metadata: usage,
        model_version: model,
        response_id,
    }
}

/// The stream: one response object per token (per function call, whole, when the answer is
/// calls), each with the usage so far; the last one carries the finish reason. With `alt=sse`
/// each is an SSE event, otherwise an element of one JSON array written piece by piece.
fn playback(
    script: &Script,
    ids: &[String],
    model: &str,
    response_id: &str,
    sse: bool,
) -> Playback {
    let objects = stream_objects(script, ids, model, response_id);
    // In-stream failures arrive as a status object in place of the next response.
    let error = ApiError::simulated(503).body();
    let (tokens, tail, error) = if sse {
        (
            objects.iter().map(sse::data_crlf).collect(),
            Vec::new(),
            vec![sse::data_crlf(&error)],
        )
    } else {
        let tokens = objects
            .iter()
            .enumerate()
            .map(|(index, object)| {
                let separator = if index == 0 { "[" } else { ",\r\n" };
                Bytes::from(format!("{separator}{}", sse::to_json(object)))
            })
            .collect();
        (
            tokens,
            vec![Bytes::from_static(b"]")],
            vec![Bytes::from(format!(",\r\n{}]", sse::to_json(&error)))],
        )
    };
    Playback {
        head: Vec::new(),
        tokens,
        tail,
        error,
        pacing: script.pacing,
        think: script.think,
        ending: script.ending(),
    }
}

fn stream_objects<'a>(
    script: &'a Script,
    ids: &'a [String],
    model: &'a str,
    response_id: &'a str,
) -> Vec<GenerateContentResponse<'a>> {
    let pieces: Vec<(ResponsePart<'a>, usize)> = if script.calls.is_empty() {
        script
            .tokens
            .iter()
            .map(|token| (ResponsePart::text(token), 1))
            .collect()
    } else {
        call_parts(script, ids)
            .into_iter()
            .zip(&script.calls)
            .map(|(part, call)| (part, call.fragments.len()))
            .collect()
    };
    if pieces.is_empty() {
        let usage = UsageMetadata::new(script, 0);
        let parts = vec![ResponsePart::text("")];
        return vec![chunk(parts, Some(script.finish), usage, model, response_id)];
    }
    let count = pieces.len();
    let mut emitted = 0usize;
    pieces
        .into_iter()
        .enumerate()
        .map(|(index, (part, tokens))| {
            emitted += tokens;
            let usage = UsageMetadata::new(script, u32::try_from(emitted).unwrap_or(u32::MAX));
            let finish = (index + 1 == count).then_some(script.finish);
            chunk(vec![part], finish, usage, model, response_id)
        })
        .collect()
}

fn set_content_type(response: &mut Response, content_type: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<request::GenerateContentRequest, ApiError> {
    let body =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid JSON payload received. {error}"),
        )
    })
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: Status,
}

/// `google.rpc.Status`.
#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    message: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<serde_json::Value>,
}

/// An error answer in Google's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The error a `[sim:status=N]` request asked for, worded as Google words it.
    fn simulated(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match status.as_u16() {
            400 => "Request contains an invalid argument.",
            401 => "Request had invalid authentication credentials.",
            403 => "The caller does not have permission",
            404 => "Requested entity was not found.",
            429 => "Resource has been exhausted (e.g. check quota).",
            500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            503 => "The model is overloaded. Please try again later.",
            504 => "Deadline expired before operation could complete.",
            _ => "Simulated error.",
        };
        let mut error = Self::new(status, message);
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Gemini says when to retry in the body, not in a header.
            error.details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": "1s",
            }));
        }
        error
    }

    fn body(self) -> ErrorBody {
        ErrorBody {
            error: Status {
                code: self.status.as_u16(),
                status: rpc_status(self.status),
                message: self.message,
                details: self.details,
            },
        }
    }
}

/// The `google.rpc.Code` name Google pairs with an HTTP status.
fn rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        413 => "INVALID_ARGUMENT",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        code if code >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.status == StatusCode::TOO_MANY_REQUESTS;
        let mut response = (self.status, Json(self.body())).into_response();
        if retry_after {
            // Not sent by Google; given so a gateway's generic backoff has something to read.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
