//! The provider contract: every adapter passes the same cases against a server speaking its
//! provider's real wire format (the simulator), plus failure cases from hand-made upstreams.

use std::time::Duration;

use futures::StreamExt;

use gateway::catalog::ProviderKind;
use gateway::config::{Endpoint, ProviderSettings};
use gateway::providers::{
    ChatRequest, FinishReason, Image, ImageSource, Part, ProviderError, ProviderErrorKind,
    Providers, ResponseFormat, Speaker, StreamEvent, Tool, ToolCall, ToolChoice, ToolResult,
    Tooling, Turn, Usage,
};
use gateway::secret::Secret;

const KEY: &str = "sk-test-very-secret-key-0123456789";

fn settings(base_url: &str, timeout: Duration) -> ProviderSettings {
    let base_url = gateway::providers::base_url(base_url).expect("an http base URL");
    let endpoint = || Endpoint {
        base_url: base_url.clone(),
        api_key: Some(Secret::new(KEY)),
    };
    ProviderSettings {
        openai: endpoint(),
        anthropic: endpoint(),
        google: endpoint(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: timeout,
        idle_timeout: timeout,
        deadline: timeout,
    }
}

async fn simulator() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(simulator::serve(
        listener,
        simulator::SimulatorConfig::default(),
    ));
    url
}

async fn providers(timeout: Duration) -> Providers {
    Providers::new(&settings(&simulator().await, timeout)).expect("client")
}

fn request(model: &str, prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        upstream_model: model.to_owned(),
        system: Some("You are terse.".to_owned()),
        turns: vec![
            Turn::text(Speaker::User, "Hi"),
            Turn::text(Speaker::Assistant, "Hello."),
            Turn::text(Speaker::User, prompt),
        ],
        max_tokens,
        temperature: Some(0.7),
        sampling: Default::default(),
        tooling: Default::default(),
        format: Default::default(),
    }
}

fn model_of(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "gpt-4o-mini",
        ProviderKind::Anthropic => "claude-3-haiku-20240307",
        ProviderKind::Google => "gemini-2.5-flash",
    }
}

async fn answers_with_text_and_usage(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    // WHEN asked to echo a multi-line, multi-byte prompt
    let prompt = "[sim:echo]line one\n  من  ünïcödé";
    let answer = providers
        .get(kind)
        .complete(&request(model_of(kind), prompt, 200))
        .await
        .expect("answer");
    // THEN the text arrives intact with the provider's usage
    assert_eq!(answer.text, "line one\n  من  ünïcödé");
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert!(answer.usage.input_tokens > 0);
    assert!(answer.usage.output_tokens > 0);
}

async fn max_tokens_ends_with_length(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let answer = providers
        .get(kind)
        .complete(&request(model_of(kind), "[sim:tokens=50] tell me more", 5))
        .await
        .expect("answer");
    assert_eq!(answer.finish_reason, FinishReason::Length);
    assert_eq!(answer.usage.output_tokens, 5);
}

async fn upstream_errors_are_502_naming_the_provider(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    for status in [400, 401, 429, 500, 503] {
        let err = providers
            .get(kind)
            .complete(&request(
                model_of(kind),
                &format!("[sim:status={status}] hi"),
                50,
            ))
            .await
            .expect_err("upstream error");
        assert_eq!(err.provider, kind);
        assert_eq!(err.status().as_u16(), 502, "{err}");
        assert!(
            matches!(err.kind, ProviderErrorKind::Upstream { status: s, .. } if s == status),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with(&format!("Provider {kind} ")), "{text}");
        assert!(!text.contains(KEY), "{text}");
    }
}

async fn cut_connections_are_502(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let err = providers
        .get(kind)
        .complete(&request(model_of(kind), "[sim:cut=0] hi", 50))
        .await
        .expect_err("cut");
    assert_eq!(err.status().as_u16(), 502, "{err}");
}

async fn slow_upstreams_time_out_as_504(kind: ProviderKind) {
    let providers = providers(Duration::from_millis(300)).await;
    let err = providers
        .get(kind)
        .complete(&request(model_of(kind), "[sim:latency_ms=3000] hi", 50))
        .await
        .expect_err("timeout");
    assert_eq!(err.kind, ProviderErrorKind::Timeout);
    assert_eq!(err.status().as_u16(), 504);
}

async fn unreachable_upstreams_are_502(kind: ProviderKind) {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let providers = Providers::new(&settings(&url, Duration::from_secs(2))).expect("client");
    let err: ProviderError = providers
        .get(kind)
        .complete(&request(model_of(kind), "hi", 50))
        .await
        .expect_err("unreachable");
    assert!(
        matches!(err.kind, ProviderErrorKind::Unreachable(_)),
        "{err:?}"
    );
    assert_eq!(err.status().as_u16(), 502);
}

/// An upstream that answers 401 quoting the key it was sent, as OpenAI's error messages do.
async fn key_echoing_upstream() -> String {
    use axum::http::HeaderMap;
    async fn reject(headers: HeaderMap) -> (axum::http::StatusCode, String) {
        let sent = ["authorization", "x-api-key", "x-goog-api-key"]
            .iter()
            .find_map(|h| headers.get(*h))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_owned();
        let body = serde_json::json!({
            "error": {"message": format!("Incorrect API key provided: {sent}."), "type": "invalid_request_error"}
        });
        (axum::http::StatusCode::UNAUTHORIZED, body.to_string())
    }
    let app = axum::Router::new().fallback(reject);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn keys_never_reach_error_messages(kind: ProviderKind) {
    let providers = Providers::new(&settings(
        &key_echoing_upstream().await,
        Duration::from_secs(2),
    ))
    .expect("client");
    let err = providers
        .get(kind)
        .complete(&request(model_of(kind), "hi", 50))
        .await
        .expect_err("rejected");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("Incorrect API key provided: ***"), "{text}");
}

async fn missing_keys_are_reported_by_name(kind: ProviderKind) {
    let mut settings = settings("http://127.0.0.1:9", Duration::from_secs(1));
    settings.endpoint_mut(kind).api_key = None;
    let providers = Providers::new(&settings).expect("client");
    let err = providers
        .get(kind)
        .complete(&request(model_of(kind), "hi", 50))
        .await
        .expect_err("not configured");
    assert!(matches!(err.kind, ProviderErrorKind::NotConfigured(_)));
    assert!(err.to_string().contains("_API_KEY"), "{err}");
}

/// Drains a stream into (text, last usage, finish reason, error), with no tool calls in it.
async fn drain(
    stream: gateway::providers::ChatStream,
) -> (
    Vec<String>,
    Option<Usage>,
    Option<FinishReason>,
    Option<ProviderError>,
) {
    let drained = drain_all(stream).await;
    assert!(drained.calls.is_empty(), "{:?}", drained.calls);
    (drained.deltas, drained.usage, drained.finish, drained.error)
}

/// Everything a stream said.
struct Drained {
    deltas: Vec<String>,
    calls: Vec<gateway::providers::ToolCallDelta>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    error: Option<ProviderError>,
}

async fn drain_all(mut stream: gateway::providers::ChatStream) -> Drained {
    let (mut deltas, mut calls, mut usage, mut finish, mut error) =
        (Vec::new(), Vec::new(), None, None, None);
    while let Some(event) = stream.next().await {
        match event {
            Ok(StreamEvent::Delta(text)) => deltas.push(text),
            Ok(StreamEvent::ToolCall(call)) => calls.push(call),
            Ok(StreamEvent::Usage(u)) => usage = Some(u),
            Ok(StreamEvent::Finish(f)) => finish = Some(f),
            Err(e) => {
                assert!(error.is_none(), "one error ends the stream");
                error = Some(e);
            }
        }
    }
    Drained {
        deltas,
        calls,
        usage,
        finish,
        error,
    }
}

async fn streams_text_usage_and_finish(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let stream = providers
        .get(kind)
        .stream(&request(
            model_of(kind),
            "[sim:echo]line one\n  من  ünïcödé",
            200,
        ))
        .await
        .expect("stream opens");
    let (deltas, usage, finish, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), "line one\n  من  ünïcödé");
    assert_eq!(finish, Some(FinishReason::Stop));
    let usage = usage.expect("usage");
    assert!(usage.input_tokens > 0);
    assert_eq!(usage.output_tokens, deltas.len() as u64);
}

async fn streams_stop_at_max_tokens(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let stream = providers
        .get(kind)
        .stream(&request(model_of(kind), "[sim:tokens=50] more", 4))
        .await
        .expect("stream opens");
    let (deltas, usage, finish, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(deltas.len(), 4);
    assert_eq!(finish, Some(FinishReason::Length));
    assert_eq!(usage.map(|u| u.output_tokens), Some(4));
}

async fn refused_streams_fail_before_the_first_byte(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let err = match providers
        .get(kind)
        .stream(&request(model_of(kind), "[sim:status=429] hi", 50))
        .await
    {
        Ok(_) => panic!("must fail before streaming"),
        Err(err) => err,
    };
    assert!(
        matches!(err.kind, ProviderErrorKind::Upstream { status: 429, .. }),
        "{err:?}"
    );
}

async fn cut_streams_end_in_an_error_after_their_text(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    for prompt in ["[sim:cut=3] hi", "[sim:fail=3] hi"] {
        let stream = providers
            .get(kind)
            .stream(&request(model_of(kind), prompt, 50))
            .await
            .expect("stream opens");
        let (deltas, _, finish, error) = drain(stream).await;
        assert_eq!(deltas.len(), 3, "{prompt}");
        assert_eq!(finish, None, "{prompt}");
        let error = error.expect("interrupted");
        assert!(
            matches!(error.kind, ProviderErrorKind::Interrupted(_)),
            "{error:?}"
        );
        assert_eq!(error.status().as_u16(), 502);
    }
}

async fn silent_streams_time_out(kind: ProviderKind) {
    let providers = providers(Duration::from_millis(300)).await;
    let stream = providers
        .get(kind)
        .stream(&request(
            model_of(kind),
            "[sim:tps=2] [sim:tokens=5] hi",
            50,
        ))
        .await
        .expect("stream opens");
    let (_, _, _, error) = drain(stream).await;
    assert_eq!(error.map(|e| e.kind), Some(ProviderErrorKind::Timeout));
}

/// An upstream that answers every request 200 with an endless body: one SSE line that never
/// ends for streams, one JSON document that never ends otherwise.
async fn endless_upstream() -> String {
    async fn endless(request: axum::extract::Request) -> axum::response::Response {
        let streaming = request.uri().path().contains("stream")
            || request.uri().path().ends_with("/messages")
            || request.uri().path().ends_with("/completions");
        let first = if streaming { "data: " } else { "{\"a\": \"" };
        let chunks = futures::stream::iter(
            std::iter::once(first.to_owned())
                .chain(std::iter::repeat_n("x".repeat(64 * 1024), 400)),
        )
        .map(|chunk| Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)));
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(axum::body::Body::from_stream(chunks))
            .expect("response")
    }
    let app = axum::Router::new().fallback(endless);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn endless_answers_are_cut_off_at_a_cap(kind: ProviderKind) {
    let providers = Providers::new(&settings(&endless_upstream().await, Duration::from_secs(5)))
        .expect("client");
    let provider = providers.get(kind);
    // A whole answer past the response cap (25 MiB sent, 16 MiB accepted) is refused.
    let err = provider
        .complete(&request(model_of(kind), "hi", 50))
        .await
        .expect_err("refused");
    assert!(
        matches!(err.kind, ProviderErrorKind::InvalidResponse(ref why) if why.contains("larger than")),
        "{err:?}"
    );
    // A stream whose line never ends is cut at the line cap, as an error.
    let stream = provider
        .stream(&request(model_of(kind), "hi", 50))
        .await
        .expect("stream opens");
    let (_, _, _, error) = drain(stream).await;
    assert!(
        matches!(error.map(|e| e.kind), Some(ProviderErrorKind::Interrupted(ref why)) if why.contains("larger than")),
    );
}

/// A request offering a weather tool, forced to call it.
fn forced_tool(kind: ProviderKind) -> ChatRequest {
    let mut request = request(model_of(kind), "What is the weather in Paris?", 200);
    request.tooling = Tooling {
        tools: vec![Tool {
            name: "weather".into(),
            description: Some("The weather in a city".into()),
            parameters: serde_json::json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": ["integer", "null"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }),
            strict: None,
        }],
        choice: Some(ToolChoice::Named("weather".into())),
        parallel: None,
    };
    request
}

fn assert_weather_arguments(arguments: &str) {
    let arguments: serde_json::Value = serde_json::from_str(arguments).expect("JSON arguments");
    assert!(arguments["city"].is_string(), "{arguments}");
    assert_eq!(
        arguments["unit"], "celsius",
        "an enum takes its first value"
    );
}

async fn forced_tools_are_called_whole_and_streamed(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    // WHEN a request forces its tool
    let answer = providers
        .get(kind)
        .complete(&forced_tool(kind))
        .await
        .expect("answer");
    // THEN the answer is one call with an id, the tool's name and typed arguments
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    let [call] = answer.tool_calls.as_slice() else {
        panic!("one call: {answer:?}");
    };
    assert!(!call.id.is_empty());
    assert_eq!(call.name, "weather");
    assert_weather_arguments(&call.arguments);
    assert!(answer.usage.output_tokens > 0);
    // AND streamed, the call's id and name come first, then its arguments in pieces
    let stream = providers
        .get(kind)
        .stream(&forced_tool(kind))
        .await
        .expect("stream opens");
    let drained = drain_all(stream).await;
    assert!(drained.error.is_none(), "{:?}", drained.error);
    assert_eq!(drained.finish, Some(FinishReason::ToolCalls));
    assert!(drained.calls.iter().all(|piece| piece.index == 0));
    let first = &drained.calls[0];
    assert!(first.id.is_some() && first.name.as_deref() == Some("weather"));
    let arguments: String = drained.calls.iter().map(|p| p.arguments.as_str()).collect();
    assert_weather_arguments(&arguments);
    assert_eq!(
        drained.usage.map(|u| u.output_tokens),
        Some(answer.usage.output_tokens)
    );
}

async fn tool_results_come_back_as_an_answer(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let mut request = forced_tool(kind);
    let answer = providers
        .get(kind)
        .complete(&request)
        .await
        .expect("answer");
    let call: ToolCall = answer.tool_calls[0].clone();
    // WHEN the call goes back (with whatever the provider needs back) with the tool's result
    request.turns.push(Turn {
        speaker: Speaker::Assistant,
        parts: vec![Part::ToolCall(call.clone())],
    });
    request.turns.push(Turn {
        speaker: Speaker::User,
        parts: vec![Part::ToolResult(ToolResult {
            call_id: call.id,
            name: call.name,
            content: "18 degrees and sunny".into(),
        })],
    });
    request.tooling.choice = Some(ToolChoice::Auto);
    let answer = providers
        .get(kind)
        .complete(&request)
        .await
        .expect("answer");
    // THEN the model answers with text that used it
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert!(answer.tool_calls.is_empty());
    assert!(
        answer.text.contains("18 degrees and sunny"),
        "{}",
        answer.text
    );
}

async fn json_answers_hold_the_schemas_required_properties(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let mut request = request(model_of(kind), "Describe a person", 200);
    request.format = ResponseFormat::JsonSchema {
        name: "person".into(),
        description: None,
        schema: serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"]
        }),
        strict: Some(true),
    };
    let answer = providers
        .get(kind)
        .complete(&request)
        .await
        .expect("answer");
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    let person: serde_json::Value = serde_json::from_str(&answer.text).expect("JSON");
    assert!(
        person["name"].is_string() && person["age"].is_i64(),
        "{person}"
    );
    let stream = providers
        .get(kind)
        .stream(&request)
        .await
        .expect("stream opens");
    let (deltas, _, finish, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(finish, Some(FinishReason::Stop));
    let streamed: serde_json::Value = serde_json::from_str(&deltas.concat()).expect("JSON");
    assert_eq!(streamed, person);
}

/// A 1×1 PNG.
const PIXEL: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

async fn images_are_sent_and_counted_as_input(kind: ProviderKind) {
    let providers = providers(Duration::from_secs(5)).await;
    let plain = request(model_of(kind), "What is in the picture?", 50);
    let mut pictured = plain.clone();
    pictured.turns[2].parts.push(Part::Image(Image {
        source: ImageSource::Inline {
            media_type: "image/png".into(),
            data: PIXEL.into(),
        },
        detail: None,
    }));
    let without = providers.get(kind).complete(&plain).await.expect("answer");
    let with = providers
        .get(kind)
        .complete(&pictured)
        .await
        .expect("answer");
    assert!(
        with.usage.input_tokens > without.usage.input_tokens,
        "{with:?} {without:?}"
    );
}

macro_rules! provider_contract {
    ($($case:ident),* $(,)?) => {
        mod openai {
            $( #[tokio::test] async fn $case() { super::$case(gateway::catalog::ProviderKind::OpenAi).await; } )*
        }
        mod anthropic {
            $( #[tokio::test] async fn $case() { super::$case(gateway::catalog::ProviderKind::Anthropic).await; } )*
        }
        mod google {
            $( #[tokio::test] async fn $case() { super::$case(gateway::catalog::ProviderKind::Google).await; } )*
        }
    };
}

provider_contract!(
    answers_with_text_and_usage,
    max_tokens_ends_with_length,
    upstream_errors_are_502_naming_the_provider,
    cut_connections_are_502,
    slow_upstreams_time_out_as_504,
    unreachable_upstreams_are_502,
    keys_never_reach_error_messages,
    missing_keys_are_reported_by_name,
    streams_text_usage_and_finish,
    streams_stop_at_max_tokens,
    refused_streams_fail_before_the_first_byte,
    cut_streams_end_in_an_error_after_their_text,
    silent_streams_time_out,
    endless_answers_are_cut_off_at_a_cap,
    forced_tools_are_called_whole_and_streamed,
    tool_results_come_back_as_an_answer,
    json_answers_hold_the_schemas_required_properties,
    images_are_sent_and_counted_as_input,
);
