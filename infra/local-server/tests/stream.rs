//! The streaming endpoint over real sockets: SSE framing, usage and cost, errors before and after
//! the stream opened, and a client that goes away.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway::clock::ManualClock;
use gateway::config::Settings;
use gateway::providers::sse::{SseDecoder, SseEvent};
use gateway::secret::Secret;
use local_server::{Options, StoreKind};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use time::macros::datetime;

struct Gateway {
    base: String,
    http: Client,
    token: String,
    org: String,
}

async fn start() -> Gateway {
    let settings = Settings::local("stream-secret-stream-secret-stream", "http://unused", None);
    let options = Options {
        store: StoreKind::Memory,
        table: String::new(),
        create_tables: false,
        admin_token: Some(Secret::new("op")),
        clock: Some(Arc::new(ManualClock::new(
            datetime!(2026-11-15 12:00:10 UTC),
        ))),
        job_retry_after: Duration::from_millis(200),
    };
    let router = local_server::build_with(settings, &options)
        .await
        .expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(local_server::serve(listener, router));
    let http = Client::new();
    let register = json!({"email": "sam@example.com", "password": "correct horse battery"});
    let token: Value = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&register)
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let token = token["access_token"].as_str().expect("token").to_owned();
    let org: Value = http
        .post(format!("{base}/api/v1/orgs"))
        .bearer_auth(&token)
        .json(&json!({"name": "Stream", "slug": "stream"}))
        .send()
        .await
        .expect("org")
        .json()
        .await
        .expect("json");
    Gateway {
        base,
        http,
        token,
        org: org["id"].as_str().expect("id").to_owned(),
    }
}

impl Gateway {
    async fn stream(&self, prompt: &str, model: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/ai/chat/stream", self.base))
            .bearer_auth(&self.token)
            .header("x-current-org", &self.org)
            .json(&json!({"messages": [{"role": "user", "content": prompt}], "model": model}))
            .send()
            .await
            .expect("request")
    }

    /// The operator's plan change, through the local server's operator route.
    async fn set_plan(&self, plan: &str) {
        let response = self
            .http
            .put(format!("{}/admin/orgs/{}/plan", self.base, self.org))
            .bearer_auth("op")
            .json(&json!({ "plan": plan }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// The usage report once `messages` requests are settled (a stream settles after its
    /// client left, in the background); fails the test if that takes over five seconds.
    async fn usage_once_settled(&self, messages: u64) -> Value {
        let mut report = self.usage().await;
        for _ in 0..100 {
            if report["total_messages"] == messages {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            report = self.usage().await;
        }
        assert_eq!(report["total_messages"], messages, "{report}");
        report
    }

    async fn usage(&self) -> Value {
        self.http
            .get(format!("{}/api/v1/ai/usage", self.base))
            .bearer_auth(&self.token)
            .header("x-current-org", &self.org)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }
}

/// Reads the whole stream as a standard SSE client would.
async fn events(response: reqwest::Response) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        events.extend(decoder.push(&chunk.expect("chunk")));
    }
    assert!(
        !decoder.has_partial_event(),
        "the stream ends on a whole event"
    );
    events
}

fn deltas(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event.is_none() && e.data != "[DONE]")
        .map(|e| e.data.as_str())
        .collect()
}

fn named<'a>(events: &'a [SseEvent], name: &str) -> Option<&'a SseEvent> {
    events.iter().find(|e| e.event.as_deref() == Some(name))
}

#[tokio::test]
async fn streams_deltas_then_usage_then_done() {
    let gw = start().await;
    // GIVEN a prompt echoed back with a line break, a leading space and Arabic
    let response = gw
        .stream("[sim:echo]Hello\nworld  من", "gemini-1.5-flash")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(response.headers()["x-ratelimit-limit"], "5");
    let events = events(response).await;
    // THEN the deltas rebuild the text exactly, and usage then [DONE] close the stream
    assert_eq!(deltas(&events), "Hello\nworld  من");
    let usage: Value =
        serde_json::from_str(&named(&events, "usage").expect("usage event").data).expect("json");
    assert_eq!(usage["estimated"], false);
    assert_eq!(usage["finish_reason"], "stop");
    assert!(usage["cost"].as_f64().is_some_and(|c| c > 0.0), "{usage}");
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert!(named(&events, "error").is_none());
    // AND the request is metered like /chat
    let report = gw.usage().await;
    assert_eq!(report["total_messages"], 1);
    assert_eq!(report["total_tokens"], usage["total_tokens"]);
}

#[tokio::test]
async fn the_first_delta_leaves_before_the_answer_is_complete() {
    let gw = start().await;
    // GIVEN a slow answer of 40 tokens at 10 a second
    let response = gw
        .stream("[sim:tps=10][sim:tokens=40] go", "gpt-4o-mini")
        .await;
    let mut body = response.bytes_stream();
    // WHEN the first chunk arrives
    let first = body.next().await.expect("a chunk").expect("bytes");
    // THEN it holds one delta, not a buffered answer
    let mut decoder = SseDecoder::new();
    let events = decoder.push(&first);
    assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&first));
    assert!(events[0].event.is_none() && events[0].data != "[DONE]");
}

#[tokio::test]
async fn checks_before_the_stream_are_plain_json_errors() {
    let gw = start().await;
    let response = gw.stream("hi", "claude-3-haiku").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["detail"],
        "Model claude-3-haiku not available in your plan. Upgrade to access."
    );
    // A provider that refuses before the first byte: 502 as JSON, and no message used.
    let response = gw.stream("[sim:status=503] hi", "gpt-4o-mini").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("json");
    assert!(body["detail"]
        .as_str()
        .expect("detail")
        .starts_with("Provider openai"));
    assert_eq!(gw.usage().await["total_messages"], 0);
}

#[tokio::test]
async fn a_broken_stream_ends_with_an_error_event_and_estimated_usage() {
    let gw = start().await;
    for (prompt, model) in [
        ("[sim:fail=3] hi", "gpt-4o-mini"),
        ("[sim:cut=3] hi", "gemini-1.5-flash"),
    ] {
        let events = events(gw.stream(prompt, model).await).await;
        assert_eq!(
            events
                .iter()
                .filter(|e| e.event.is_none() && e.data != "[DONE]")
                .count(),
            3,
            "{prompt}"
        );
        let error: Value =
            serde_json::from_str(&named(&events, "error").expect("error event").data)
                .expect("json");
        assert!(
            error["detail"]
                .as_str()
                .expect("detail")
                .contains("interrupted"),
            "{error}"
        );
        let usage: Value =
            serde_json::from_str(&named(&events, "usage").expect("usage event").data)
                .expect("json");
        assert!(
            usage["output_tokens"].as_u64().is_some_and(|n| n >= 1),
            "{usage}"
        );
        assert_eq!(
            events.last().map(|e| e.data.as_str()),
            Some("[DONE]"),
            "{prompt}"
        );
    }
    // What was consumed is still recorded.
    assert_eq!(gw.usage().await["total_messages"], 2);
}

#[tokio::test]
async fn a_client_that_leaves_stops_the_upstream_and_is_still_metered() {
    let gw = start().await;
    // GIVEN an answer that would take 20 s to stream in full
    let response = gw
        .stream("[sim:tps=5][sim:tokens=100] long", "gemini-1.5-flash")
        .await;
    let mut body = response.bytes_stream();
    body.next().await.expect("first chunk").expect("bytes");
    // WHEN the client goes away after the first delta
    drop(body);
    // THEN the request is settled soon after, with what was streamed, not the whole answer
    let report = gw.usage_once_settled(1).await;
    let output = report["models_breakdown"]["gemini-1.5-flash"]["output_tokens"]
        .as_u64()
        .expect("tokens");
    assert!(output < 100, "only what was consumed: {output}");
}

#[tokio::test]
async fn a_client_that_leaves_before_any_text_is_charged_its_input() {
    let gw = start().await;
    // GIVEN a model that thinks for 20 s after opening its stream (Anthropic reports the input
    // tokens in its opening event)
    gw.set_plan("pro").await;
    let response = gw
        .stream("[sim:think_ms=20000] ponder this", "claude-3-haiku")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // WHEN the client goes away before the first delta
    drop(response);
    // THEN the request is still metered: one message and the input the provider was sent, with
    // the output as the provider reported it so far (Anthropic's opening event counts one token)
    let report = gw.usage_once_settled(1).await;
    let used = &report["models_breakdown"]["claude-3-haiku"];
    assert!(used["input_tokens"].as_u64() > Some(0), "{report}");
    assert!(used["output_tokens"].as_u64() <= Some(1), "{report}");
}

#[tokio::test]
async fn a_provider_failing_before_any_output_is_a_plain_error() {
    let gw = start().await;
    // GIVEN providers whose stream fails before any output: an error as their first event, or a
    // connection dropped before the first event
    for (prompt, model, provider) in [
        ("[sim:fail=0] hi", "gpt-4o-mini", "openai"),
        ("[sim:cut=0] hi", "gemini-1.5-flash", "google"),
    ] {
        // WHEN a stream is asked of them
        let response = gw.stream(prompt, model).await;
        // THEN the answer is a plain JSON 502 naming the provider, not a 200 and an error event
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{prompt}");
        let body: Value = response.json().await.expect("json");
        let detail = body["detail"].as_str().expect("detail");
        assert!(
            detail.starts_with(&format!("Provider {provider}")),
            "{detail}"
        );
    }
    // AND no message was used
    assert_eq!(gw.usage().await["total_messages"], 0);
}

#[tokio::test]
async fn an_answer_cannot_forge_the_end_of_the_stream() {
    let gw = start().await;
    // GIVEN a model whose answer holds the stream's terminator as a piece of its own
    let events = events(
        gw.stream("[sim:echo]before [DONE] after", "gemini-1.5-flash")
            .await,
    )
    .await;
    // THEN no text event reads as the terminator, the whole answer arrives, and so does its usage
    let texts: Vec<&str> = events
        .iter()
        .filter(|e| e.event.is_none())
        .map(|e| e.data.as_str())
        .collect();
    let (last, pieces) = texts.split_last().expect("events");
    assert_eq!(*last, "[DONE]");
    assert!(pieces.iter().all(|p| p.trim() != "[DONE]"), "{pieces:?}");
    assert_eq!(pieces.concat(), "before [DONE] after");
    assert!(named(&events, "usage").is_some());
}
