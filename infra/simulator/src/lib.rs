//! A local stand-in for the model providers: one HTTP server speaking the OpenAI Chat
//! Completions, Anthropic Messages and Gemini `generateContent` wire protocols, streaming and
//! not, with deterministic answers and exact usage numbers.
//!
//! The gateway talks to it exactly as it talks to the real APIs (only the base URL changes), so
//! the whole provider code path runs without keys or network. Tests steer it through
//! `[sim:…]` directives in the last user message because that is the only
//! part of a request that survives the trip through the gateway:
//!
//! | directive | effect |
//! |---|---|
//! | `[sim:latency_ms=N]` | wait N ms before the response headers |
//! | `[sim:tps=N]` | stream N tokens per second (0 = as fast as possible) |
//! | `[sim:think_ms=N]` | streaming: wait N ms after the opening events before the first token |
//! | `[sim:tokens=N]` | answer with N output tokens |
//! | `[sim:status=N]` | fail with HTTP status N (400–599) in the provider's error shape |
//! | `[sim:cut=N]` | stream N tokens then drop the connection; non-streaming: drop at once |
//! | `[sim:fail=N]` | stream N tokens then the provider's in-stream error event |
//! | `[sim:echo]` | answer with the prompt itself, directives removed |
//! | `[sim:flaky=N]`, `[sim:flaky=N:STATUS]` | fail the first N attempts of the same request with 503 (or STATUS) |
//! | `[sim:retry_after=S]` | error answers carry `Retry-After: S` |
//! | `[sim:tool]` | under `auto` tool choice, call the first tool offered |
//! | `[sim:tool=NAME]` | under `auto`, call tool NAME (text answer when it is not offered); under `required` / `any` / `ANY`, prefer it |
//! | `[sim:tools=N]` | make N calls (1–64) in one answer, cycling through the tools offered; under `auto` it also asks for them. One call when parallel calls are off |
//!
//! A directive suffixed `@openai`, `@anthropic` or `@gemini` (`[sim:status=503@openai]`) applies
//! only to requests arriving in that provider's protocol.
//!
//! ## Tools, JSON output and images
//!
//! Each protocol's own fields are read and answered in its own wire format, streaming included:
//!
//! - **Tool calls.** A forced choice (OpenAI `required` or a named function, Anthropic `any` or
//!   `tool`, Gemini `ANY`, honouring `allowedFunctionNames` / `allowed_tools`) always calls the
//!   named tool or the first one allowed; `auto` calls only on a `[sim:tool…]` directive and
//!   never right after a tool result; `none` / `NONE` never calls. Arguments hold every required
//!   property with a value of its schema type (see `schema::example`). Ids are reproducible:
//!   `call_` + 24 letters and digits (OpenAI), `toolu_01` + 22 (Anthropic), 8 lower-case letters
//!   and digits on Gemini's `functionCall.id`. Output tokens are the tokens of the arguments'
//!   JSON (written with a space after each `,` and `:`, so they split into words); streams send
//!   one argument fragment per token (OpenAI `delta.tool_calls`, Anthropic `input_json_delta`),
//!   except Gemini, which sends each call whole in its own chunk. `[sim:cut=N]` / `[sim:fail=N]`
//!   count those frames. A request's `max_tokens` never cuts a call short.
//! - **Tool results.** When the conversation ends with tool results (OpenAI `tool` messages,
//!   Anthropic `tool_result` blocks, Gemini `functionResponse` parts) the answer is text quoting
//!   each, one per line: `The tool returned: <content>` (`The tool failed: …` for Anthropic's
//!   `is_error`; Gemini's `response` object as JSON). A forced choice still calls again, as the
//!   real models do.
//! - **Gemini thought signatures.** The first `functionCall` part of an answer carries a
//!   `thoughtSignature`: base64 of `simsig1:` and a 16-byte hash of the call's name and
//!   arguments. In the current turn (after the last user message with more than function
//!   responses) the first `functionCall` part of each model step must carry the signature made
//!   for it, or the documented `skip_thought_signature_validator`; a missing one is answered
//!   400 "Function call is missing a thought_signature…", any signature that is not the one
//!   for its step 400 "Corrupted thought signature.".
//! - **JSON output.** OpenAI `response_format` `json_object` / `json_schema`, Anthropic
//!   `output_config.format` (and the older `output_format`), Gemini `responseMimeType:
//!   application/json` with `responseSchema` or `responseJsonSchema`: the answer text is a JSON
//!   value of the schema, or `{"answer": "…"}` without one (after tool results, the answer
//!   quotes them). OpenAI's `json_object` is refused unless a message mentions JSON, as OpenAI
//!   refuses it.
//! - **Images.** Inline (base64, PNG / JPEG / GIF / WebP) or by URL (OpenAI, Anthropic) or file
//!   (Gemini `fileData`, Anthropic `file`). Each image adds a fixed number of input tokens: OpenAI
//!   85 (`detail: "low"`) or 765 (otherwise), Anthropic 1600, Gemini 258. A media type the
//!   provider does not take or base64 that does not decode is answered 400 as the provider words
//!   it.
//! - **Validation** as the real APIs do it, answered 400 in the provider's error shape: a tool
//!   choice naming no offered tool, a tool result answering no call and a call left unanswered
//!   (OpenAI, Anthropic), mismatched function call and response counts (Gemini).
//!
//! Tool definitions and an output schema are part of the prompt at the real providers, so they
//! count as input tokens here too (their JSON text, like any other input).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::DefaultBodyLimit,
    http::{Extensions, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

mod anthropic;
mod connection;
mod gemini;
mod media;
mod openai;
mod schema;
mod script;
mod sse;
mod tools;

/// Global behaviour of the simulator; `[sim:…]` directives override it per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatorConfig {
    /// Delay before the response headers, in milliseconds.
    pub latency_ms: u64,
    /// Streamed tokens per second; 0 streams as fast as possible.
    pub tokens_per_second: u32,
    /// Length of an answer in output tokens.
    pub answer_tokens: usize,
    /// When set, every request fails with this HTTP status (400–599).
    pub status: Option<u16>,
    /// When set, streams drop the connection after this many tokens and non-streaming requests
    /// drop it at once.
    pub cut_after: Option<usize>,
    /// When set, streams send the provider's in-stream error after this many tokens.
    pub fail_after: Option<usize>,
    /// Answer with the last user message instead of the simulated text.
    pub echo: bool,
    /// When set, the only API key accepted: any other gets the provider's invalid-key error, as
    /// the real APIs answer it. When unset, any non-empty key is accepted.
    pub api_key: Option<String>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            tokens_per_second: 0,
            answer_tokens: 24,
            status: None,
            cut_after: None,
            fail_after: None,
            echo: false,
            api_key: None,
        }
    }
}

/// The provider whose protocol a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Provider {
    /// The provider a directive's `@name` suffix names.
    pub fn named(name: &str) -> Option<Provider> {
        match name {
            "openai" => Some(Self::OpenAi),
            "anthropic" => Some(Self::Anthropic),
            "gemini" => Some(Self::Gemini),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::OpenAi => "OpenAI",
            Self::Anthropic => "Anthropic",
            Self::Gemini => "Gemini",
        }
    }
}

/// Shared by every handler.
#[derive(Debug)]
struct AppState {
    config: SimulatorConfig,
    /// Makes response ids unique within a run while keeping them reproducible.
    sequence: AtomicU64,
    /// How many times each request (by [`script::Script::key`]) was seen, for `[sim:flaky]`.
    attempts: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

impl AppState {
    /// Whether `presented` is a key this simulator accepts (see [`SimulatorConfig::api_key`]).
    fn accepts_key(&self, presented: &str) -> bool {
        self.config
            .api_key
            .as_deref()
            .is_none_or(|expected| expected == presented)
    }

    /// A response id: hex, derived from the request and a per-run sequence number.
    fn next_id(&self, seed: &str) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let hash = script::Fnv::new().write(seed).finish();
        format!("{hash:016x}{sequence:08x}")
    }

    /// What to do with a request once its latency passed: `[sim:flaky]` first, then the script.
    fn outcome(&self, script: &script::Script, stream: bool) -> script::Outcome {
        if let Some((times, status)) = script.flaky {
            let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let seen = attempts.entry(script.key).or_insert(0);
            *seen += 1;
            if *seen <= times {
                return script::Outcome::Fail(status);
            }
        }
        script.outcome(stream)
    }
}

/// A simulated error answer, with `Retry-After` when the script asks for it.
fn failed(mut response: Response, script: &script::Script) -> Response {
    if let Some(seconds) = script.retry_after {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(seconds),
        );
    }
    response
}

/// Requests are whole conversations; real providers accept tens of megabytes.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The simulator's routes, on the providers' real paths.
pub fn router(config: SimulatorConfig) -> Router {
    let state = Arc::new(AppState {
        config,
        sequence: AtomicU64::new(0),
        attempts: std::sync::Mutex::default(),
    });
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        // The Gemini action shares the path segment with the model (`models/x:generateContent`)
        // and the router cannot split a segment on ':', so the handler does.
        .route("/v1beta/models/{model_action}", post(gemini::models))
        .route("/v1/models/{model_action}", post(gemini::models))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves the simulator on `listener` until the process ends.
///
/// Use this rather than `axum::serve(listener, router(config))`: only connections accepted here
/// can be dropped without a response (`[sim:cut]` on a non-streaming request).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimulatorConfig,
) -> std::io::Result<()> {
    let app = router(config).into_make_service_with_connect_info::<connection::KillSwitch>();
    axum::serve(connection::SeverableListener(listener), app).await
}

async fn not_found() -> Response {
    let body = serde_json::json!({
        "error": {
            "message": "Unknown path: the simulator serves /v1/chat/completions, /v1/messages and /v1beta/models/{model}:generateContent.",
            "type": "invalid_request_error",
            "param": null,
            "code": "unknown_url",
        }
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Closes the request's connection without a response.
fn drop_connection(extensions: &Extensions) -> Response {
    if let Some(switch) = connection::KillSwitch::of(extensions) {
        switch.pull();
        // Never written: the connection fails on the first write.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    // Served without `serve` (e.g. `router` in another server): the closest we can get is a
    // body that fails at once, which aborts the connection after the status line.
    let failing = futures::stream::once(async {
        Err::<bytes::Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated connection drop",
        ))
    });
    Response::new(Body::from_stream(failing))
}

/// Seconds since the Unix epoch, for OpenAI's `created`.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
