//! Anthropic Messages: `POST /v1/messages`, plain and streamed as named SSE events.
//!
//! Wire types follow <https://docs.anthropic.com/en/api/messages>,
//! <https://docs.anthropic.com/en/docs/build-with-claude/streaming> and
//! <https://docs.anthropic.com/en/api/errors>.

use std::sync::Arc;

use axum::{
    extract::{rejection::BytesRejection, State},
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

#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    messages: Option<Vec<InputMessage>>,
    system: Option<Content>,
    max_tokens: Option<u32>,
    stream: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct InputMessage {
    role: String,
    content: Content,
}

/// Message content and the system prompt are each a string or a list of blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<InputBlock>),
}

#[derive(Debug, Deserialize)]
struct InputBlock {
    /// Only text blocks carry text; images, tool use and the like count for nothing here.
    text: Option<String>,
}

impl Content {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Blocks(blocks) => blocks
                .iter()
                .filter_map(|block| block.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<TextBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Debug, Serialize)]
struct Usage {
    input_tokens: u32,
    cache_creation_input_tokens: u32,
    cache_read_input_tokens: u32,
    output_tokens: u32,
}

/// The events of a streamed message, in the order they are sent.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: TextBlock<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: TextDelta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: DeltaUsage,
    },
    MessageStop,
    Error {
        error: ErrorDetail,
    },
}

impl StreamEvent<'_> {
    /// The SSE event name, which Anthropic always sets to the payload's `type`.
    fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::Ping => "ping",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
            Self::Error { .. } => "error",
        }
    }

    fn frame(&self) -> Bytes {
        sse::event(self.name(), self)
    }
}

#[derive(Debug, Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Debug, Serialize)]
struct MessageDeltaBody {
    stop_reason: &'static str,
    stop_sequence: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeltaUsage {
    output_tokens: u32,
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let header_set = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| !value.trim().is_empty())
    };
    // Recent SDKs (anthropic-python 2.x) send the key as a bearer token instead of x-api-key;
    // the API takes either.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty());
    if !header_set("x-api-key") && !bearer {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        )
        .into_response();
    }
    if !header_set("anthropic-version") {
        return ApiError::invalid("anthropic-version: header is required").into_response();
    }
    let request = match parse(body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some(model) = request.model.as_deref().filter(|model| !model.is_empty()) else {
        return ApiError::invalid("model: Field required").into_response();
    };
    let Some(messages) = request.messages.as_deref() else {
        return ApiError::invalid("messages: Field required").into_response();
    };
    if messages.is_empty() {
        return ApiError::invalid("messages: at least one message is required").into_response();
    }
    let Some(max_tokens) = request.max_tokens else {
        return ApiError::invalid("max_tokens: Field required").into_response();
    };
    if max_tokens == 0 {
        return ApiError::invalid("max_tokens: Input should be greater than or equal to 1")
            .into_response();
    }
    let stream = request.stream.unwrap_or(false);

    let system = request.system.as_ref().map(Content::text);
    let texts: Vec<String> = messages
        .iter()
        .map(|message| message.content.text())
        .collect();
    let prompt = messages
        .iter()
        .zip(&texts)
        .rev()
        .find(|(message, _)| message.role == "user")
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    let turn = Turn {
        provider: Provider::Anthropic,
        model,
        prompt,
        inputs: system.iter().chain(&texts).map(String::as_str).collect(),
        max_tokens: Some(max_tokens),
    };
    let script = Script::new(&state.config, &turn);
    tracing::info!(
        provider = "anthropic",
        model,
        stream,
        input_tokens = script.input_tokens,
        output_tokens = script.output_tokens(),
        "message"
    );

    tokio::time::sleep(script.latency).await;
    match state.outcome(&script, stream) {
        Outcome::Fail(status) => {
            return crate::failed(ApiError::simulated(status).into_response(), &script)
        }
        Outcome::Drop => return crate::drop_connection(&extensions),
        Outcome::Answer => {}
    }

    let id = format!("msg_sim{}", state.next_id(prompt));
    let request_id = format!("req_sim{}", state.next_id(prompt));
    if stream {
        let mut response = playback(&script, &id, model).into_body().into_response();
        set_headers(
            &mut response,
            "text/event-stream; charset=utf-8",
            &request_id,
        );
        return response;
    }
    let text = script.text();
    let message = Message {
        id: &id,
        kind: "message",
        role: "assistant",
        model,
        content: vec![TextBlock {
            kind: "text",
            text: &text,
        }],
        stop_reason: Some(stop_reason(script.finish)),
        stop_sequence: None,
        usage: Usage {
            input_tokens: script.input_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            output_tokens: script.output_tokens(),
        },
    };
    let mut response = Json(message).into_response();
    set_headers(&mut response, "application/json", &request_id);
    response
}

/// The stream: message_start, content_block_start, ping, one content_block_delta per token,
/// content_block_stop, message_delta (stop reason and final usage), message_stop.
fn playback(script: &Script, id: &str, model: &str) -> Playback {
    let start = StreamEvent::MessageStart {
        message: Message {
            id,
            kind: "message",
            role: "assistant",
            model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            // Anthropic reports one output token up front and the real count in message_delta.
            usage: Usage {
                input_tokens: script.input_tokens,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                output_tokens: 1,
            },
        },
    };
    let head = vec![
        start.frame(),
        StreamEvent::ContentBlockStart {
            index: 0,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        }
        .frame(),
        StreamEvent::Ping.frame(),
    ];
    let tokens = script
        .tokens
        .iter()
        .map(|token| {
            StreamEvent::ContentBlockDelta {
                index: 0,
                delta: TextDelta {
                    kind: "text_delta",
                    text: token,
                },
            }
            .frame()
        })
        .collect();
    let tail = vec![
        StreamEvent::ContentBlockStop { index: 0 }.frame(),
        StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: stop_reason(script.finish),
                stop_sequence: None,
            },
            usage: DeltaUsage {
                output_tokens: script.output_tokens(),
            },
        }
        .frame(),
        StreamEvent::MessageStop.frame(),
    ];
    let error = vec![StreamEvent::Error {
        error: ErrorDetail {
            kind: "overloaded_error",
            message: "Overloaded".to_owned(),
        },
    }
    .frame()];
    Playback {
        head,
        tokens,
        tail,
        error,
        pacing: script.pacing,
        think: script.think,
        ending: script.ending(),
    }
}

fn set_headers(response: &mut Response, content_type: &'static str, request_id: &str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type.starts_with("text/event-stream") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", value);
    }
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<MessagesRequest, ApiError> {
    let body = body.map_err(|rejection| {
        let kind = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_request_error"
        };
        ApiError::new(rejection.status(), kind, rejection.body_text())
    })?;
    serde_json::from_slice(&body).map_err(|error| {
        if error.is_data() {
            ApiError::invalid(format!("Invalid request body: {error}"))
        } else {
            ApiError::invalid(format!(
                "There was an error parsing the body of your request: {error}"
            ))
        }
    })
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: &'static str,
    message: String,
}

/// An error answer in Anthropic's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                kind,
                message: message.into(),
            },
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// The error a `[sim:status=N]` request asked for, with Anthropic's type for that status.
    fn simulated(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, message) = match status.as_u16() {
            401 => ("authentication_error", "invalid x-api-key"),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            404 => (
                "not_found_error",
                "The requested resource could not be found.",
            ),
            413 => (
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
            ),
            429 => (
                "rate_limit_error",
                "This request would exceed your organization's rate limit. Please try again later.",
            ),
            500 => ("api_error", "Internal server error"),
            503 | 529 => ("overloaded_error", "Overloaded"),
            504 => ("timeout_error", "Request timed out"),
            code if code >= 500 => ("api_error", "Internal server error"),
            _ => ("invalid_request_error", "Simulated invalid request."),
        };
        Self::new(status, kind, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.status == StatusCode::TOO_MANY_REQUESTS;
        let body = ErrorBody {
            kind: "error",
            error: self.detail,
        };
        let mut response = (self.status, Json(body)).into_response();
        if retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
