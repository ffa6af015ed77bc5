//! OpenAI Chat Completions: `POST /v1/chat/completions`, plain and streamed.
//!
//! Wire types follow <https://platform.openai.com/docs/api-reference/chat/create> and
//! <https://platform.openai.com/docs/api-reference/chat-streaming>; errors follow
//! <https://platform.openai.com/docs/guides/error-codes>.

use std::sync::Arc;

use axum::{
    extract::{rejection::BytesRejection, State},
    http::{header, Extensions, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use bytes::Bytes;
use serde::Serialize;

use crate::{
    script::{Finish, Outcome, Script},
    sse::{self, Playback},
    tools::{self, Call},
    AppState,
};

mod request;

/// Real responses carry one; clients log it, nothing depends on its value.
const SYSTEM_FINGERPRINT: &str = "fp_simulator";

#[derive(Debug, Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Debug, Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    /// Null when the answer is tool calls.
    content: Option<String>,
    refusal: Option<String>,
    annotations: [(); 0],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
}

#[derive(Debug, Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Debug, Serialize)]
struct Function<'a> {
    name: &'a str,
    /// The arguments as JSON text, as OpenAI sends them.
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Serialize)]
struct PromptTokensDetails {
    cached_tokens: u32,
    audio_tokens: u32,
}

#[derive(Debug, Serialize)]
struct CompletionTokensDetails {
    reasoning_tokens: u32,
    audio_tokens: u32,
    accepted_prediction_tokens: u32,
    rejected_prediction_tokens: u32,
}

impl Usage {
    fn of(script: &Script) -> Self {
        let output = script.output_tokens();
        Self {
            prompt_tokens: script.input_tokens,
            completion_tokens: output,
            total_tokens: script.input_tokens.saturating_add(output),
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: 0,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct ChatCompletionChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent unless usage was asked for; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// Absent, or `""` / null on the opening chunk of a text / tool-call answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
}

/// A piece of a streamed tool call: the opening one has the id, type and name with empty
/// arguments; the following ones only `index` and a fragment of the arguments.
#[derive(Debug, Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolUse => "tool_calls",
    }
}

/// Ids of the answer's tool calls: `call_` and 24 letters and digits, like OpenAI's.
fn call_ids(script: &Script) -> Vec<String> {
    (0..script.calls.len())
        .map(|index| tools::call_id("call_", script.key, index, 24))
        .collect()
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !has_bearer_token(&headers) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
        )
        .into_response();
    }
    if !state.accepts_key(bearer_token(&headers).unwrap_or_default()) {
        let mut error = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
        );
        error.detail.code = Some("invalid_api_key");
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
    let model = reading.model;
    let stream = reading.stream;
    let script = Script::new(&state.config, &reading.turn());
    tracing::info!(
        provider = "openai",
        model,
        stream,
        input_tokens = script.input_tokens,
        output_tokens = script.output_tokens(),
        tool_calls = script.calls.len(),
        "chat completion"
    );

    script.wait_latency().await;
    match state.outcome(&script, stream) {
        Outcome::Fail(status) => {
            return crate::failed(ApiError::simulated(status).into_response(), &script)
        }
        Outcome::Drop => return crate::drop_connection(&extensions),
        Outcome::Answer => {}
    }

    let id = format!("chatcmpl-sim{}", state.next_id(reading.prompt()));
    let created = crate::unix_now();
    if stream {
        let playback = playback(&script, &id, created, model, reading.include_usage);
        let mut response = playback.into_body().into_response();
        set_headers(&mut response, "text/event-stream; charset=utf-8", &id);
        return response;
    }
    let ids = call_ids(&script);
    let completion = completion(&script, &ids, &id, created, model);
    let mut response = Json(completion).into_response();
    set_headers(&mut response, "application/json", &id);
    response
}

/// The plain (non-streamed) answer.
fn completion<'a>(
    script: &'a Script,
    ids: &'a [String],
    id: &'a str,
    created: u64,
    model: &'a str,
) -> ChatCompletion<'a> {
    let tool_calls = script
        .calls
        .iter()
        .zip(ids)
        .map(|(call, id)| ToolCall {
            id,
            kind: "function",
            function: Function {
                name: &call.name,
                arguments: &call.json,
            },
        })
        .collect();
    ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: script.calls.is_empty().then(|| script.text()),
                refusal: None,
                annotations: [],
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(script.finish),
        }],
        usage: Usage::of(script),
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
    }
}

/// The stream: the opening chunk (the role, and the first tool call's id and name when the
/// answer is tool calls), one chunk per token, a finish chunk, the usage chunk when asked for,
/// then `[DONE]`.
fn playback(script: &Script, id: &str, created: u64, model: &str, include_usage: bool) -> Playback {
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        sse::data(&ChatCompletionChunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            service_tier: "default",
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: include_usage.then_some(None),
        })
    };
    let (head, tokens) = if script.calls.is_empty() {
        text_frames(&chunk, script)
    } else {
        call_frames(&chunk, &script.calls, &call_ids(script))
    };
    let mut tail = vec![chunk(Delta::default(), Some(finish_reason(script.finish)))];
    if include_usage {
        tail.push(sse::data(&ChatCompletionChunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            service_tier: "default",
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: Vec::new(),
            usage: Some(Some(Usage::of(script))),
        }));
    }
    tail.push(sse::done());
    // OpenAI reports a failure after the stream started as a data event holding an error object
    // and then closes the stream; the SDKs raise it as an APIError.
    let error = vec![sse::data(&ErrorBody {
        error: ErrorDetail {
            message: "The server had an error while processing your request. Sorry about that!"
                .to_owned(),
            kind: "server_error",
            param: None,
            code: None,
        },
    })];
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

/// A text answer: the role chunk with empty content, then one chunk per token.
fn text_frames(
    chunk: &impl Fn(Delta<'_>, Option<&'static str>) -> Bytes,
    script: &Script,
) -> (Vec<Bytes>, Vec<Bytes>) {
    let head = vec![chunk(
        Delta {
            role: Some("assistant"),
            content: Some(Some("")),
            refusal: Some(None),
            ..Delta::default()
        },
        None,
    )];
    let tokens = script
        .tokens
        .iter()
        .map(|token| {
            chunk(
                Delta {
                    content: Some(Some(token)),
                    ..Delta::default()
                },
                None,
            )
        })
        .collect();
    (head, tokens)
}

/// Tool calls, one after the other: each opens with a chunk naming it (the first one in the
/// role chunk, with null content), then one chunk per fragment of its arguments. A later call's
/// opening chunk goes out together with its first fragment so that a cut after N tokens still
/// means after N argument fragments.
fn call_frames(
    chunk: &impl Fn(Delta<'_>, Option<&'static str>) -> Bytes,
    calls: &[Call],
    ids: &[String],
) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut head = Vec::with_capacity(1);
    let mut tokens = Vec::new();
    for (index, (call, id)) in calls.iter().zip(ids).enumerate() {
        let first = index == 0;
        let opening = chunk(
            Delta {
                role: first.then_some("assistant"),
                content: first.then_some(None),
                tool_calls: Some([ToolCallDelta {
                    index,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(&call.name),
                        arguments: "",
                    },
                }]),
                refusal: first.then_some(None),
            },
            None,
        );
        let mut opening = Some(opening);
        if first {
            head.extend(opening.take());
        }
        for fragment in &call.fragments {
            let frame = chunk(
                Delta {
                    tool_calls: Some([ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: fragment,
                        },
                    }]),
                    ..Delta::default()
                },
                None,
            );
            tokens.push(match opening.take() {
                Some(opening) => Bytes::from([opening, frame].concat()),
                None => frame,
            });
        }
    }
    (head, tokens)
}

fn set_headers(response: &mut Response, content_type: &'static str, id: &str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type.starts_with("text/event-stream") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(value) = HeaderValue::from_str(&format!("req_{id}")) {
        headers.insert("x-request-id", value);
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

fn has_bearer_token(headers: &HeaderMap) -> bool {
    bearer_token(headers).is_some_and(|token| !token.is_empty())
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<request::ChatRequest, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            rejection.body_text(),
            "invalid_request_error",
        )
    })?;
    serde_json::from_slice(&body).map_err(|error| {
        let message = if error.is_data() {
            format!("Invalid request body: {error}")
        } else {
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)".to_owned()
        };
        ApiError::new(StatusCode::BAD_REQUEST, message, "invalid_request_error")
    })
}

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

/// An error answer in OpenAI's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, kind: &'static str) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                message: message.into(),
                kind,
                param: None,
                code: None,
            },
            retry_after: false,
        }
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.detail.param = Some(param.into());
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.detail.code = Some(code);
        self
    }

    fn missing(param: impl Into<String>) -> Self {
        let param = param.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("Missing required parameter: '{param}'."),
            "invalid_request_error",
        )
        .param(param)
        .code("missing_required_parameter")
    }

    /// The error a `[sim:status=N]` request asked for, worded as OpenAI words it.
    fn simulated(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = status.as_u16();
        let (message, kind, error_code) = match code {
            401 => (
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.".to_owned(),
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            403 => (
                "You are not allowed to sample from this model".to_owned(),
                "invalid_request_error",
                None,
            ),
            404 => (
                "The model does not exist or you do not have access to it.".to_owned(),
                "invalid_request_error",
                Some("model_not_found"),
            ),
            429 => (
                "Rate limit reached for requests. Please try again in 1s.".to_owned(),
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => (
                "The server had an error while processing your request. Sorry about that!"
                    .to_owned(),
                "server_error",
                None,
            ),
            503 => (
                "The engine is currently overloaded, please try again later".to_owned(),
                "server_error",
                None,
            ),
            _ if code >= 500 => (format!("Simulated server error {code}."), "server_error", None),
            _ => (
                format!("Simulated request error {code}."),
                "invalid_request_error",
                None,
            ),
        };
        let mut error = Self::new(status, message, kind);
        error.detail.code = error_code;
        error.retry_after = status == StatusCode::TOO_MANY_REQUESTS;
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.detail })).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
