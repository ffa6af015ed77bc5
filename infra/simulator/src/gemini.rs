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

use crate::{
    script::{Finish, Outcome, Script, Turn},
    sse::{self, Playback},
    AppState, Provider,
};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ModelsQuery {
    alt: Option<String>,
    key: Option<String>,
}

/// Google's JSON mapping accepts both the camelCase and the proto (snake_case) field names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest {
    contents: Option<Vec<Content>>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<Content>,
    #[serde(alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Debug, Deserialize)]
struct Content {
    /// "user" or "model"; absent means user.
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    /// Inline data, files and function calls have no text; they count for nothing here.
    text: Option<String>,
}

impl Content {
    fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|part| part.text.as_deref())
            .collect::<Vec<_>>()
            .join("")
    }

    fn is_user(&self) -> bool {
        self.role.as_deref().is_none_or(|role| role == "user")
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u32>,
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
    parts: [TextPart<'a>; 1],
    role: &'static str,
}

#[derive(Debug, Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u32,
    candidates_token_count: u32,
    total_token_count: u32,
    prompt_tokens_details: [ModalityTokenCount; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModalityTokenCount {
    modality: &'static str,
    token_count: u32,
}

impl UsageMetadata {
    fn new(prompt: u32, candidates: u32) -> Self {
        Self {
            prompt_token_count: prompt,
            candidates_token_count: candidates,
            total_token_count: prompt.saturating_add(candidates),
            prompt_tokens_details: [ModalityTokenCount {
                modality: "TEXT",
                token_count: prompt,
            }],
        }
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "STOP",
        Finish::Length => "MAX_TOKENS",
    }
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
    let Some((model, action)) = model_action.rsplit_once(':') else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("models/{model_action} is not found, or is not supported for this method."),
        )
        .into_response();
    };
    let action = match action {
        "generateContent" => Action::Generate,
        "streamGenerateContent" => Action::Stream {
            sse: query.alt.as_deref() == Some("sse"),
        },
        other => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Method {other} is not found for models/{model}."),
            )
            .into_response()
        }
    };
    let header_key = headers
        .get("x-goog-api-key")
        .and_then(|value| value.to_str().ok());
    let has_key = header_key
        .or(query.key.as_deref())
        .is_some_and(|key| !key.trim().is_empty());
    if !has_key {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )
        .into_response();
    }
    let request = match parse(body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some(contents) = request.contents.as_deref().filter(|c| !c.is_empty()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified\n",
        )
        .into_response();
    };

    let system = request.system_instruction.as_ref().map(Content::text);
    let texts: Vec<String> = contents.iter().map(Content::text).collect();
    let prompt = contents
        .iter()
        .zip(&texts)
        .rev()
        .find(|(content, _)| content.is_user())
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    let turn = Turn {
        provider: Provider::Gemini,
        model,
        prompt,
        inputs: system.iter().chain(&texts).map(String::as_str).collect(),
        // Zero is what an unset proto field reads as: no limit.
        max_tokens: request
            .generation_config
            .and_then(|config| config.max_output_tokens)
            .filter(|&limit| limit > 0),
    };
    let script = Script::new(&state.config, &turn);
    let stream = action != Action::Generate;
    tracing::info!(
        provider = "gemini",
        model,
        stream,
        input_tokens = script.input_tokens,
        output_tokens = script.output_tokens(),
        "generate content"
    );

    tokio::time::sleep(script.latency).await;
    match state.outcome(&script, stream) {
        Outcome::Fail(status) => {
            return crate::failed(ApiError::simulated(status).into_response(), &script)
        }
        Outcome::Drop => return crate::drop_connection(&extensions),
        Outcome::Answer => {}
    }

    let response_id = format!("sim{}", state.next_id(prompt));
    match action {
        Action::Generate => {
            let text = script.text();
            let response = chunk(
                &text,
                Some(script.finish),
                UsageMetadata::new(script.input_tokens, script.output_tokens()),
                model,
                &response_id,
            );
            let mut response = Json(response).into_response();
            set_content_type(&mut response, "application/json; charset=UTF-8");
            response
        }
        Action::Stream { sse } => {
            let mut response = playback(&script, model, &response_id, sse)
                .into_body()
                .into_response();
            let content_type = if sse {
                "text/event-stream"
            } else {
                "application/json; charset=UTF-8"
            };
            set_content_type(&mut response, content_type);
            response
        }
    }
}

fn chunk<'a>(
    text: &'a str,
    finish: Option<Finish>,
    usage: UsageMetadata,
    model: &'a str,
    response_id: &'a str,
) -> GenerateContentResponse<'a> {
    GenerateContentResponse {
        candidates: [Candidate {
            content: CandidateContent {
                parts: [TextPart { text }],
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

/// The stream: one response object per token, each with the usage so far; the last one
/// carries the finish reason. With `alt=sse` each is an SSE event, otherwise an element of one
/// JSON array written piece by piece.
fn playback(script: &Script, model: &str, response_id: &str, sse: bool) -> Playback {
    let count = script.tokens.len();
    let objects: Vec<GenerateContentResponse<'_>> = if count == 0 {
        vec![chunk(
            "",
            Some(script.finish),
            UsageMetadata::new(script.input_tokens, 0),
            model,
            response_id,
        )]
    } else {
        script
            .tokens
            .iter()
            .enumerate()
            .map(|(index, token)| {
                let emitted = u32::try_from(index + 1).unwrap_or(u32::MAX);
                let finish = (index + 1 == count).then_some(script.finish);
                chunk(
                    token,
                    finish,
                    UsageMetadata::new(script.input_tokens, emitted),
                    model,
                    response_id,
                )
            })
            .collect()
    };
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

fn set_content_type(response: &mut Response, content_type: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<GenerateContentRequest, ApiError> {
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
