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
use serde::{Deserialize, Serialize};

use crate::{
    script::{Finish, Outcome, Script, Turn},
    sse::{self, Playback},
    AppState, Provider,
};

/// Real responses carry one; clients log it, nothing depends on its value.
const SYSTEM_FINGERPRINT: &str = "fp_simulator";

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    /// Absent or null on assistant messages that only call tools.
    content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    /// Images and audio parts have no text; they count for nothing here.
    text: Option<String>,
}

impl MessageContent {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|part| part.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
    refusal: Option<String>,
    annotations: [(); 0],
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
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
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
    let request = match parse(body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some(model) = request.model.as_deref().filter(|model| !model.is_empty()) else {
        return ApiError::missing("model").into_response();
    };
    let Some(messages) = request.messages.as_deref() else {
        return ApiError::missing("messages").into_response();
    };
    if messages.is_empty() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "invalid_request_error",
        )
        .param("messages")
        .code("empty_array")
        .into_response();
    }
    let stream = request.stream.unwrap_or(false);
    if request.stream_options.is_some() && !stream {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "invalid_request_error",
        )
        .param("stream_options")
        .into_response();
    }
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    if max_tokens == Some(0) {
        let param = if request.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid '{param}': integer below minimum value. \
                 Expected a value >= 1, but got 0 instead."
            ),
            "invalid_request_error",
        )
        .param(param)
        .code("integer_below_min_value")
        .into_response();
    }

    let texts: Vec<String> = messages
        .iter()
        .map(|message| {
            message
                .content
                .as_ref()
                .map(MessageContent::text)
                .unwrap_or_default()
        })
        .collect();
    let prompt = messages
        .iter()
        .zip(&texts)
        .rev()
        .find(|(message, _)| message.role == "user")
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    let turn = Turn {
        provider: Provider::OpenAi,
        model,
        prompt,
        inputs: texts.iter().map(String::as_str).collect(),
        max_tokens,
    };
    let script = Script::new(&state.config, &turn);
    tracing::info!(
        provider = "openai",
        model,
        stream,
        input_tokens = script.input_tokens,
        output_tokens = script.output_tokens(),
        "chat completion"
    );

    tokio::time::sleep(script.latency).await;
    match state.outcome(&script, stream) {
        Outcome::Fail(status) => {
            return crate::failed(ApiError::simulated(status).into_response(), &script)
        }
        Outcome::Drop => return crate::drop_connection(&extensions),
        Outcome::Answer => {}
    }

    let id = format!("chatcmpl-sim{}", state.next_id(prompt));
    let created = crate::unix_now();
    if stream {
        let include_usage = request
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false);
        let playback = playback(&script, &id, created, model, include_usage);
        let mut response = playback.into_body().into_response();
        set_headers(&mut response, "text/event-stream; charset=utf-8", &id);
        return response;
    }
    let completion = ChatCompletion {
        id: &id,
        object: "chat.completion",
        created,
        model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: script.text(),
                refusal: None,
                annotations: [],
            },
            logprobs: None,
            finish_reason: finish_reason(script.finish),
        }],
        usage: Usage::of(&script),
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
    };
    let mut response = Json(completion).into_response();
    set_headers(&mut response, "application/json", &id);
    response
}

/// The stream: a role chunk, one chunk per token, a finish chunk, the usage chunk when asked
/// for, then `[DONE]`.
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
    let head = vec![chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
            refusal: Some(None),
        },
        None,
    )];
    let tokens = script
        .tokens
        .iter()
        .map(|token| {
            chunk(
                Delta {
                    content: Some(token),
                    ..Delta::default()
                },
                None,
            )
        })
        .collect();
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

fn has_bearer_token(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty())
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<ChatRequest, ApiError> {
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
    param: Option<&'static str>,
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

    fn param(mut self, param: &'static str) -> Self {
        self.detail.param = Some(param);
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.detail.code = Some(code);
        self
    }

    fn missing(param: &'static str) -> Self {
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
