//! Provider adapters: one trait, one adapter per upstream API, each owning its wire types and
//! mapping them to the gateway's one internal request and response.

pub mod anthropic;
pub mod content;
pub mod gemini;
pub mod openai;
pub mod schema;
pub mod sse;
pub mod tls;

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::StatusCode;
use serde::Serialize;

use crate::catalog::ProviderKind;
use crate::config::{Endpoint, ProviderSettings};
use crate::secret::Secret;

pub use content::{
    new_call_id, Image, ImageSource, Part, ResponseFormat, Speaker, Tool, ToolCall, ToolCallDelta,
    ToolChoice, ToolResult, Tooling, Turn, IMAGE_TYPES,
};

/// A chat request as the adapters receive it: validated, with the upstream model id.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub upstream_model: String,
    pub system: Option<String>,
    pub turns: Vec<Turn>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub sampling: Sampling,
    pub tooling: Tooling,
    pub format: ResponseFormat,
}

/// The rarer generation options, as OpenAI's API names them. Each adapter maps them to its
/// provider's names; one a provider cannot honour is refused before the call
/// (`chat::check`), never dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// Nucleus sampling, 0–1.
    pub top_p: Option<f32>,
    /// Up to four sequences that end the answer where they would appear.
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    /// The end user, for the provider's abuse monitoring.
    pub user: Option<String>,
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Why the answer ended, normalised across providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    /// Anything else, in the provider's own words (lower-cased).
    Other(String),
}

impl FinishReason {
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Other(other) => other,
        }
    }
}

impl Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatResponse {
    pub text: String,
    /// The calls of the request's tools the model made, in order.
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// What went wrong talking to a provider. Messages are scrubbed of keys before they get here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderErrorKind {
    #[error("is not configured: {0} is not set")]
    NotConfigured(&'static str),
    #[error("timed out")]
    Timeout,
    #[error("could not be reached: {0}")]
    Unreachable(String),
    #[error("returned HTTP {status}: {message}")]
    Upstream {
        status: u16,
        message: String,
        /// How long the provider asked to be left alone (`retry-after-ms`, `retry-after`).
        retry_after: Option<std::time::Duration>,
    },
    #[error("sent a response the gateway could not read: {0}")]
    InvalidResponse(String),
    /// The stream broke off: cut, or an error event mid-stream.
    #[error("stream was interrupted: {0}")]
    Interrupted(String),
}

/// A provider failure, naming the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Provider {provider} {kind}")]
pub struct ProviderError {
    pub provider: ProviderKind,
    pub kind: ProviderErrorKind,
}

impl ProviderError {
    pub fn new(provider: ProviderKind, kind: ProviderErrorKind) -> ProviderError {
        ProviderError { provider, kind }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ProviderErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the same call may well succeed if made again: timeouts, connections that failed or
    /// broke, and the statuses providers answer when busy or briefly down (408, 429, 500, 502,
    /// 503, 504, Anthropic's 529 "overloaded"). Never another 4xx: retrying a request the provider
    /// refused as invalid cannot help.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            ProviderErrorKind::Timeout
            | ProviderErrorKind::Unreachable(_)
            | ProviderErrorKind::Interrupted(_) => true,
            ProviderErrorKind::Upstream { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504 | 529)
            }
            ProviderErrorKind::NotConfigured(_) | ProviderErrorKind::InvalidResponse(_) => false,
        }
    }

    /// Whether another model may answer where this one's provider could not: any failure of the
    /// provider itself, but not a request it refused as invalid (400, 413, 422), which another
    /// provider would refuse too.
    pub fn worth_a_fallback(&self) -> bool {
        !matches!(
            self.kind,
            ProviderErrorKind::Upstream {
                status: 400 | 413 | 422,
                ..
            }
        )
    }

    /// The wait the provider asked for, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.kind {
            ProviderErrorKind::Upstream { retry_after, .. } => retry_after,
            _ => None,
        }
    }
}

/// The wait an error answer asks for: `retry-after-ms` (OpenAI, Anthropic), else `retry-after`
/// in seconds (an HTTP date is not honoured).
fn retry_after(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let value = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    let seconds = value("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| value("retry-after"))?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| std::time::Duration::from_secs_f64(seconds.min(3600.0)))
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Text to pass on, as it came.
    Delta(String),
    /// A piece of a tool call.
    ToolCall(ToolCallDelta),
    /// The usage known so far, whole (later events supersede earlier ones).
    Usage(Usage),
    Finish(FinishReason),
}

/// A streamed answer: events until the provider's terminal event, or an error.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// One upstream API.
#[async_trait]
pub trait ChatProvider: Send + Sync + fmt::Debug {
    fn kind(&self) -> ProviderKind;
    async fn complete(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError>;
    /// Opens a streamed answer. Fails (like `complete`) if the provider refuses it before the
    /// first byte, so that failure can still be a plain HTTP error.
    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError>;
}

/// Reads one provider's stream events.
pub(crate) trait StreamParser: Send + 'static {
    /// The events an upstream SSE event carries; an error event becomes `Err(message)`.
    fn parse(&mut self, event: sse::SseEvent) -> Result<Vec<StreamEvent>, String>;
    /// Whether the provider's terminal event arrived.
    fn finished(&self) -> bool;
}

/// The largest whole (not streamed) provider response read: far above any real answer.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Text from an upstream with anything that looks like a credential blanked: `sk-…`, `AIza…`,
/// `Bearer …`, and any long run of letters and digits with both in it (a key, a token), so no
/// key of ours or anyone's reaches a client or a log through an error message.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_bearer = false;
    for (word, gap) in words(text) {
        let looks_secret = after_bearer
            || ["sk-", "sk_", "AIza", "xai-", "key-"]
                .iter()
                .any(|p| word.starts_with(p) && word.len() >= p.len() + 12)
            || (word.len() >= 32
                && word.bytes().any(|b| b.is_ascii_digit())
                && word.bytes().any(|b| b.is_ascii_alphabetic()));
        after_bearer = word.eq_ignore_ascii_case("bearer");
        out.push_str(if looks_secret { "***" } else { word });
        out.push_str(gap);
    }
    out
}

/// The runs of key characters in `text`, each with the text that follows it up to the next run.
fn words(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let mut rest = text;
    let mut leading = true;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if leading {
            leading = false;
            let start = rest.find(is_key_char).unwrap_or(rest.len());
            let (gap, tail) = rest.split_at(start);
            rest = tail;
            return Some(("", gap));
        }
        let run = rest.find(|c| !is_key_char(c)).unwrap_or(rest.len());
        // A sentence's full stop is not part of the word before it.
        let end = rest[..run].trim_end_matches('.').len().max(1).min(run);
        let (word, tail) = rest.split_at(end);
        let gap_end = tail
            .char_indices()
            .find(|&(i, c)| is_key_char(c) && (c != '.' || i >= run - end))
            .map_or(tail.len(), |(i, _)| i);
        let (gap, tail) = tail.split_at(gap_end);
        rest = tail;
        Some((word, gap))
    })
}

/// What every adapter holds: the shared HTTP client, where to call, and the key.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub kind: ProviderKind,
    pub http: reqwest::Client,
    /// The base URL and the key (its Debug output hides both's secrets).
    pub endpoint: Endpoint,
    /// How long to wait for the response headers.
    pub first_byte: std::time::Duration,
    /// How long a response body may stay silent (between stream events, or before the body).
    pub idle: std::time::Duration,
}

impl Upstream {
    /// The base URL with `path` (absolute, already encoded where it must be) after its own path.
    /// Only the path is parsed again, not the scheme and host: a full parse per request was a
    /// tenth of the provider call's instructions (the host goes through IDNA every time).
    fn url(&self, path: &str) -> reqwest::Url {
        let base = &self.endpoint.base_url;
        let mut url = base.clone();
        let joined = format!("{}{path}", base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    fn key(&self) -> Result<&Secret, ProviderError> {
        self.endpoint
            .api_key
            .as_ref()
            .ok_or_else(|| self.error(ProviderErrorKind::NotConfigured(self.kind.key_name())))
    }

    fn error(&self, kind: ProviderErrorKind) -> ProviderError {
        ProviderError::new(self.kind, kind)
    }

    fn scrub(&self, text: &str) -> String {
        let scrubbed = match &self.endpoint.api_key {
            Some(key) => key.scrub(text),
            None => text.to_owned(),
        };
        redact_credentials(&scrubbed)
    }

    /// Maps a transport error, without the URL (it may carry a query string).
    fn transport_error(&self, err: reqwest::Error) -> ProviderError {
        if err.is_timeout() {
            return self.error(ProviderErrorKind::Timeout);
        }
        let err = err.without_url();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            source = inner.source();
        }
        self.error(ProviderErrorKind::Unreachable(self.scrub(&text)))
    }

    /// Sends a JSON request and returns the successful body, or the upstream error with the
    /// provider's message (found by `message_of`) scrubbed of the key.
    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        message_of: fn(&serde_json::Value) -> Option<String>,
    ) -> Result<T, ProviderError> {
        let response = tokio::time::timeout(self.first_byte, request.send())
            .await
            .map_err(|_| self.error(ProviderErrorKind::Timeout))?
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let body = self.read_capped(response).await?;
        if !status.is_success() {
            return Err(self.refused(status, &body, message_of, wait));
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.error(ProviderErrorKind::InvalidResponse(e.to_string())))
    }
}

impl Upstream {
    /// Sends a streaming request; answers the upstream's error like [`Upstream::send_json`] when it
    /// refuses, else the decoded event stream. The whole-request timeout bounds the wait for the
    /// headers and every silence between chunks, not the length of the answer.
    async fn open_stream(
        &self,
        request: reqwest::RequestBuilder,
        message_of: fn(&serde_json::Value) -> Option<String>,
        parser: impl StreamParser,
    ) -> Result<ChatStream, ProviderError> {
        let response = tokio::time::timeout(self.first_byte, request.send())
            .await
            .map_err(|_| self.error(ProviderErrorKind::Timeout))?
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if !status.is_success() {
            let wait = retry_after(response.headers());
            let body = self.read_capped(response).await?;
            return Err(self.refused(status, &body, message_of, wait));
        }
        Ok(self.events(response, parser))
    }

    /// A response body, read within the idle timeout between chunks and refused past
    /// [`MAX_RESPONSE_BYTES`]: an upstream cannot make the gateway buffer without end.
    async fn read_capped(&self, mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.idle, response.chunk())
                .await
                .map_err(|_| self.error(ProviderErrorKind::Timeout))?
                .map_err(|e| self.transport_error(e))?;
            let Some(chunk) = chunk else {
                return Ok(body);
            };
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.error(ProviderErrorKind::InvalidResponse(format!(
                    "the response is larger than {MAX_RESPONSE_BYTES} bytes"
                ))));
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// The upstream's refusal, with the provider's message (found by `message_of`, else the
    /// start of the body) scrubbed of the key.
    fn refused(
        &self,
        status: StatusCode,
        body: &[u8],
        message_of: fn(&serde_json::Value) -> Option<String>,
        retry_after: Option<std::time::Duration>,
    ) -> ProviderError {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| message_of(&v))
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
        self.error(ProviderErrorKind::Upstream {
            status: status.as_u16(),
            message: self.scrub(&message),
            retry_after,
        })
    }

    /// The events of an accepted streaming response, decoded as they arrive: events parsed before
    /// a failure still go out first, and every silence is bounded by the idle timeout.
    fn events(&self, response: reqwest::Response, parser: impl StreamParser) -> ChatStream {
        let state = Decoding {
            upstream: self.clone(),
            bytes: Box::pin(response.bytes_stream()),
            decoder: sse::SseDecoder::new(),
            parser,
            pending: VecDeque::new(),
            failure: None,
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(event) = st.pending.pop_front() {
                    return Some((Ok(event), st));
                }
                if let Some(failure) = st.failure.take() {
                    return Some((Err(failure), st));
                }
                if st.done {
                    return None;
                }
                match tokio::time::timeout(st.upstream.idle, st.bytes.next()).await {
                    Err(_) => st.fail(st.upstream.error(ProviderErrorKind::Timeout)),
                    Ok(Some(Err(e))) => {
                        let why = st.upstream.transport_error(e).kind.to_string();
                        st.interrupt(why);
                    }
                    Ok(None) if st.parser.finished() => st.done = true,
                    Ok(None) => {
                        st.interrupt("the connection closed before the answer was complete".into())
                    }
                    Ok(Some(Ok(chunk))) => st.decode(&chunk),
                }
            }
        });
        Box::pin(stream)
    }
}

/// A streaming response being decoded into the gateway's events.
struct Decoding<P> {
    upstream: Upstream,
    bytes: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: sse::SseDecoder,
    parser: P,
    pending: VecDeque<StreamEvent>,
    /// Sent once `pending` is drained: events parsed before a failure still go out first.
    failure: Option<ProviderError>,
    done: bool,
}

impl<P: StreamParser> Decoding<P> {
    /// Ends the stream with `failure`, after the events already parsed.
    fn fail(&mut self, failure: ProviderError) {
        self.done = true;
        self.failure.get_or_insert(failure);
    }

    /// Ends the stream as interrupted, for `why` (scrubbed of credentials).
    fn interrupt(&mut self, why: String) {
        let failure = self
            .upstream
            .error(ProviderErrorKind::Interrupted(self.upstream.scrub(&why)));
        self.fail(failure);
    }

    /// Decodes a chunk into events; a parse failure or an oversized line or event ends the
    /// stream, and so does the provider's terminal event (no need to wait for the close).
    fn decode(&mut self, chunk: &[u8]) {
        for event in self.decoder.push(chunk) {
            match self.parser.parse(event) {
                Ok(events) => self.pending.extend(events),
                Err(why) => return self.interrupt(why),
            }
        }
        if self.decoder.overflowed() {
            let cap = sse::MAX_LINE_BYTES;
            return self.interrupt(format!("an event or line was larger than {cap} bytes"));
        }
        if self.parser.finished() {
            self.done = true;
        }
    }
}

/// A one-turn request (`Be brief.`, then `Hi`) for the adapters' wire-format tests.
#[cfg(test)]
pub(crate) fn brief_hi(upstream_model: &str, temperature: Option<f32>) -> ChatRequest {
    ChatRequest {
        upstream_model: upstream_model.into(),
        system: Some("Be brief.".into()),
        turns: vec![Turn::text(Speaker::User, "Hi")],
        max_tokens: 100,
        temperature,
        sampling: Sampling::default(),
        tooling: Tooling::default(),
        format: ResponseFormat::default(),
    }
}

/// [`brief_hi`] with every sampling option set (`top_p` 0.5, stop `END`, user `u-1`, `seed`).
#[cfg(test)]
pub(crate) fn sampled(upstream_model: &str, seed: Option<i64>) -> ChatRequest {
    ChatRequest {
        sampling: Sampling {
            top_p: Some(0.5),
            stop: vec!["END".into()],
            seed,
            user: Some("u-1".into()),
        },
        ..brief_hi(upstream_model, None)
    }
}

/// A conversation with a tool round trip and an image for the adapters' wire-format tests: the
/// user asks with a picture, the assistant called `weather` (id `call 1`, signed `sig-1`), the
/// tool answered `18C`; `weather` is offered, forced, one call at a time.
#[cfg(test)]
pub(crate) fn tool_round_trip(upstream_model: &str) -> ChatRequest {
    let call = ToolCall {
        id: "call 1".into(),
        name: "weather".into(),
        arguments: r#"{"city":"Paris"}"#.into(),
        signature: Some("sig-1".into()),
    };
    let turns = vec![
        Turn {
            speaker: Speaker::User,
            parts: vec![
                Part::Text("Weather here?".into()),
                Part::Image(Image {
                    source: ImageSource::Inline {
                        media_type: "image/png".into(),
                        data: "iVBORw0K".into(),
                    },
                    detail: Some("low".into()),
                }),
            ],
        },
        Turn {
            speaker: Speaker::Assistant,
            parts: vec![Part::ToolCall(call)],
        },
        Turn {
            speaker: Speaker::User,
            parts: vec![Part::ToolResult(ToolResult {
                call_id: "call 1".into(),
                name: "weather".into(),
                content: "18C".into(),
            })],
        },
    ];
    ChatRequest {
        turns,
        tooling: Tooling {
            tools: vec![Tool {
                name: "weather".into(),
                description: Some("The weather".into()),
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": false
                }),
                strict: Some(true),
            }],
            choice: Some(ToolChoice::Named("weather".into())),
            parallel: Some(false),
        },
        ..brief_hi(upstream_model, None)
    }
}

/// Why the provider client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("building the HTTP client failed: {0}")]
    Http(#[from] reqwest::Error),
}

/// `text` as a provider base URL: http or https (which the parser gives a host), and no query or
/// fragment (the API path goes after it).
pub fn base_url(text: &str) -> Option<reqwest::Url> {
    let url = reqwest::Url::parse(text).ok()?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.query().is_none()
        && url.fragment().is_none();
    usable.then_some(url)
}

/// `url` without its user name and password, for logs: a proxy's URL may carry credentials.
pub fn without_credentials(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    // Only URLs that cannot have credentials refuse these, and they have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Every provider adapter, built once at cold start around one HTTP client.
#[derive(Debug, Clone)]
pub struct Providers {
    openai: Arc<dyn ChatProvider>,
    anthropic: Arc<dyn ChatProvider>,
    google: Arc<dyn ChatProvider>,
}

impl Providers {
    pub fn new(settings: &ProviderSettings) -> Result<Providers, ClientError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config()?)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("ai-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let upstream = |kind: ProviderKind| Upstream {
            kind,
            http: http.clone(),
            endpoint: settings.endpoint(kind).clone(),
            first_byte: settings.request_timeout,
            idle: settings.idle_timeout,
        };
        Ok(Providers {
            openai: Arc::new(openai::OpenAi::new(upstream(ProviderKind::OpenAi))),
            anthropic: Arc::new(anthropic::Anthropic::new(upstream(ProviderKind::Anthropic))),
            google: Arc::new(gemini::Gemini::new(upstream(ProviderKind::Google))),
        })
    }

    /// No provider client at all, for functions that call no provider: none of the adapters or
    /// the HTTP client is built (or linked). A call answers that the provider is not configured.
    pub fn absent() -> Providers {
        Providers {
            openai: Arc::new(Absent(ProviderKind::OpenAi)),
            anthropic: Arc::new(Absent(ProviderKind::Anthropic)),
            google: Arc::new(Absent(ProviderKind::Google)),
        }
    }

    pub fn get(&self, kind: ProviderKind) -> &dyn ChatProvider {
        match kind {
            ProviderKind::OpenAi => self.openai.as_ref(),
            ProviderKind::Anthropic => self.anthropic.as_ref(),
            ProviderKind::Google => self.google.as_ref(),
        }
    }
}

/// The provider of a function built without provider clients.
#[derive(Debug)]
struct Absent(ProviderKind);

impl Absent {
    fn error(&self) -> ProviderError {
        ProviderError::new(
            self.0,
            ProviderErrorKind::NotConfigured("a provider client in this function"),
        )
    }
}

#[async_trait]
impl ChatProvider for Absent {
    fn kind(&self) -> ProviderKind {
        self.0
    }

    async fn complete(&self, _: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        Err(self.error())
    }

    async fn stream(&self, _: &ChatRequest) -> Result<ChatStream, ProviderError> {
        Err(self.error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> Upstream {
        Upstream {
            kind: ProviderKind::Google,
            http: reqwest::Client::new(),
            endpoint: Endpoint {
                base_url: base_url(base).expect("a usable base URL"),
                api_key: None,
            },
            first_byte: std::time::Duration::from_secs(1),
            idle: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn base_urls_are_http_with_a_host_and_no_query() {
        for good in [
            "https://api.openai.com",
            "http://127.0.0.1:8001",
            "https://proxy.example.com/gemini/",
        ] {
            assert!(base_url(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "api.openai.com",
            "ftp://example.com",
            "file:///etc/passwd",
            "https://example.com/?key=1",
            "https://example.com/#top",
            "http://",
        ] {
            assert!(base_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_path_goes_after_the_base_urls_own_path() {
        let at = |base: &str, path: &str| upstream(base).url(path).to_string();
        assert_eq!(
            at("https://api.openai.com", "/v1/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        // A proxy's prefix is kept, with or without its trailing slash
        for base in ["http://127.0.0.1:9/gemini", "http://127.0.0.1:9/gemini/"] {
            assert_eq!(
                at(base, "/v1beta/models/gemini-1.5-flash:generateContent"),
                "http://127.0.0.1:9/gemini/v1beta/models/gemini-1.5-flash:generateContent"
            );
        }
        // What must not be read as URL syntax in a model name is escaped, not a query
        assert_eq!(
            at("http://h", "/v1beta/models/a b?c:x"),
            "http://h/v1beta/models/a%20b%3Fc:x"
        );
    }

    #[test]
    fn credentials_in_a_base_url_are_kept_out_of_logs_and_debug_output() {
        let up = upstream("https://proxy-user:proxy-pass@proxy.example.com/openai");
        assert_eq!(
            without_credentials(&up.endpoint.base_url),
            "https://proxy.example.com/openai"
        );
        let debug = format!("{up:?}");
        assert!(debug.contains("proxy.example.com"), "{debug}");
        assert!(
            !debug.contains("proxy-pass") && !debug.contains("proxy-user"),
            "{debug}"
        );
        // The request itself still carries them (reqwest sends them as Basic auth)
        assert_eq!(up.url("/v1/x").password(), Some("proxy-pass"));
    }

    #[test]
    fn credential_shaped_words_are_redacted() {
        let text = "Incorrect API key provided: sk-proj-abcdefghijklmnop1234. Use Authorization: Bearer eyJhbGciOi.x and AIzaSyA1234567890abcdefg; id 6f1c2a9e8b7d4c3f2e1d0a9b8c7d6e5f4a3b2c1d. Model gemini-1.5-flash is overloaded.";
        let redacted = redact_credentials(text);
        assert_eq!(
            redacted,
            "Incorrect API key provided: ***. Use Authorization: Bearer *** and ***; id ***. Model gemini-1.5-flash is overloaded."
        );
        assert_eq!(
            redact_credentials("plain words, 503 twice."),
            "plain words, 503 twice."
        );
        assert_eq!(redact_credentials(""), "");
    }
}
