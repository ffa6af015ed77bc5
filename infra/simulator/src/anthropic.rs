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
use serde::Serialize;
use serde_json::Value;

use crate::{
    script::{Finish, Outcome, Script},
    sse::{self, Playback},
    tools, AppState,
};

mod request;

#[derive(Debug, Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<ContentBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    usage: Usage,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
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
        index: usize,
        content_block: ContentBlock<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
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

/// A piece of a streamed block: text, or a fragment of a tool call's JSON input.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
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
        Finish::ToolUse => "tool_use",
    }
}

/// Ids of the answer's tool calls: `toolu_01` and 22 letters and digits, like Anthropic's.
fn call_ids(script: &Script) -> Vec<String> {
    (0..script.calls.len())
        .map(|index| tools::call_id("toolu_01", script.key, index, 22))
        .collect()
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(error) = check_headers(&headers, &state) {
        return error.into_response();
    }
    let request = match parse(body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let reading = match request::read(&request) {
        Ok(reading) => reading,
        Err(error) => return error.into_response(),
    };
    let (model, stream) = (reading.model, reading.stream);
    let script = Script::new(&state.config, &reading.turn());
    tracing::info!(
        provider = "anthropic",
        model,
        stream,
        input_tokens = script.input_tokens,
        output_tokens = script.output_tokens(),
        tool_calls = script.calls.len(),
        "message"
    );

    script.wait_latency().await;
    match state.outcome(&script, stream) {
        Outcome::Fail(status) => {
            return crate::failed(ApiError::simulated(status).into_response(), &script)
        }
        Outcome::Drop => return crate::drop_connection(&extensions),
        Outcome::Answer => {}
    }

    let id = format!("msg_sim{}", state.next_id(reading.prompt()));
    let request_id = format!("req_sim{}", state.next_id(reading.prompt()));
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
    let ids = call_ids(&script);
    let content = if script.calls.is_empty() {
        vec![ContentBlock::Text { text: &text }]
    } else {
        tool_blocks(&script, &ids).collect()
    };
    let message = Message {
        id: &id,
        kind: "message",
        role: "assistant",
        model,
        content,
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

/// Anthropic takes the key as `x-api-key` or, as recent SDKs (anthropic-python 2.x) send it, as
/// a bearer token; `anthropic-version` is required.
fn check_headers(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    let header_set = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| !value.trim().is_empty())
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let key = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .or(bearer);
    let Some(key) = key else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        ));
    };
    if !state.accepts_key(key) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        ));
    }
    if !header_set("anthropic-version") {
        return Err(ApiError::invalid("anthropic-version: header is required"));
    }
    Ok(())
}

/// The answer's `tool_use` blocks.
fn tool_blocks<'a>(
    script: &'a Script,
    ids: &'a [String],
) -> impl Iterator<Item = ContentBlock<'a>> {
    script
        .calls
        .iter()
        .zip(ids)
        .map(|(call, id)| ContentBlock::ToolUse {
            id,
            name: &call.name,
            input: &call.arguments,
        })
}

/// The stream: message_start, the first content_block_start, ping, the deltas,
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
    let (mut head, tokens, blocks) = if script.calls.is_empty() {
        text_frames(script)
    } else {
        tool_frames(script, &call_ids(script))
    };
    head.insert(0, start.frame());
    let tail = vec![
        StreamEvent::ContentBlockStop {
            index: blocks.saturating_sub(1),
        }
        .frame(),
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

/// A text answer: one text block, one text_delta per token. Returns the opening frames (after
/// message_start), the token frames and the number of blocks.
fn text_frames(script: &Script) -> (Vec<Bytes>, Vec<Bytes>, usize) {
    let head = vec![
        StreamEvent::ContentBlockStart {
            index: 0,
            content_block: ContentBlock::Text { text: "" },
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
                delta: BlockDelta::TextDelta { text: token },
            }
            .frame()
        })
        .collect();
    (head, tokens, 1)
}

/// Tool calls: one tool_use block each, opened with an empty input and an empty
/// input_json_delta (as Anthropic sends them), then one input_json_delta per fragment of its
/// JSON. A later block's stop-and-start events go out with its first fragment, so a cut after N
/// tokens still means after N fragments.
fn tool_frames(script: &Script, ids: &[String]) -> (Vec<Bytes>, Vec<Bytes>, usize) {
    let empty = Value::Object(serde_json::Map::new());
    let delta = |index: usize, partial_json: &str| {
        StreamEvent::ContentBlockDelta {
            index,
            delta: BlockDelta::InputJsonDelta { partial_json },
        }
        .frame()
    };
    let mut head = Vec::new();
    let mut tokens = Vec::new();
    for (index, (call, id)) in script.calls.iter().zip(ids).enumerate() {
        let start = StreamEvent::ContentBlockStart {
            index,
            content_block: ContentBlock::ToolUse {
                id,
                name: &call.name,
                input: &empty,
            },
        }
        .frame();
        let mut opening = if index == 0 {
            head.extend([start, StreamEvent::Ping.frame(), delta(0, "")]);
            None
        } else {
            let stop = StreamEvent::ContentBlockStop { index: index - 1 }.frame();
            Some([stop, start, delta(index, "")].concat())
        };
        for fragment in &call.fragments {
            let frame = delta(index, fragment);
            tokens.push(match opening.take() {
                Some(opening) => Bytes::from([opening, frame.to_vec()].concat()),
                None => frame,
            });
        }
    }
    (head, tokens, script.calls.len())
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

fn parse(body: Result<Bytes, BytesRejection>) -> Result<request::MessagesRequest, ApiError> {
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
