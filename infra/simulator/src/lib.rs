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
//!
//! A directive suffixed `@openai`, `@anthropic` or `@gemini` (`[sim:status=503@openai]`) applies
//! only to requests arriving in that provider's protocol.

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
mod openai;
mod script;
mod sse;

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
