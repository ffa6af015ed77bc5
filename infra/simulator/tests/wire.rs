//! End-to-end tests over real sockets: each provider's wire format, plain and streamed, and
//! every `[sim:…]` directive, read the way an HTTP client reads them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use simulator::SimulatorConfig;

/// Starts a simulator on a free port and returns its base URL.
async fn start(config: SimulatorConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let address = listener.local_addr().expect("bound address");
    tokio::spawn(simulator::serve(listener, config));
    format!("http://{address}")
}

async fn start_default() -> String {
    start(SimulatorConfig::default()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// One SSE event: its `event:` name, if any, and its `data:` payload.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

/// Parses an SSE body (LF or CRLF line ends) into events.
fn parse_sse(body: &str) -> Vec<Event> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                }
            }
            Event {
                name,
                data: data.join("\n"),
            }
        })
        .collect()
}

fn json_of(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

async fn openai(base: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

async fn anthropic(base: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

async fn gemini(base: &str, action: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1beta/models/gemini-2.5-flash:{action}"))
        .header("x-goog-api-key", "test")
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn openai_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event.data != "[DONE]")
        .filter_map(|event| {
            json_of(event)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|text| !text.is_empty())
        .collect()
}

fn anthropic_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event.name.as_deref() == Some("content_block_delta"))
        .map(|event| {
            json_of(event)["delta"]["text"]
                .as_str()
                .expect("text delta")
                .to_owned()
        })
        .collect()
}

fn gemini_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            json_of(event)["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .expect("text part")
                .to_owned()
        })
        .collect()
}

// ---------------------------------------------------------------- OpenAI

#[tokio::test]
async fn openai_completion_has_the_chat_completion_shape() {
    // GIVEN a simulator
    let base = start_default().await;
    // WHEN a plain chat completion is requested
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"}
        ]}),
    )
    .await;
    // THEN it is a chat.completion with a stop answer and consistent usage
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    assert!(body["created"].is_u64());
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["system_fingerprint"].is_string());
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().expect("content");
    assert!(content.starts_with("Simulated OpenAI answer (gpt-4o-mini) to: Hello there."));
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 24);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().expect("prompt") + 24)
    );
}

#[tokio::test]
async fn openai_stream_matches_the_completion_and_reports_emitted_usage() {
    // GIVEN a simulator and the same prompt asked plainly
    let base = start_default().await;
    let plain: Value = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Stream me")}),
    )
    .await
    .json()
    .await
    .expect("JSON body");
    // WHEN it is streamed with usage included
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Stream me"), "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    // THEN the stream is chat.completion.chunk events ending in usage then [DONE]
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let events = parse_sse(&response.text().await.expect("body"));
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(json_of).collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["content"], "");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"] == Value::Null));
    // AND the deltas are the plain answer, one token each, as many as the usage says
    let texts = openai_texts(&events);
    assert_eq!(texts.concat(), plain["choices"][0]["message"]["content"]);
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"].as_u64(),
        Some(texts.len() as u64)
    );
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        plain["usage"]["prompt_tokens"]
    );
}

#[tokio::test]
async fn openai_stream_without_include_usage_has_no_usage_field() {
    let base = start_default().await;
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Hi"), "stream": true}),
    )
    .await;
    let events = parse_sse(&response.text().await.expect("body"));
    assert!(events
        .iter()
        .filter(|event| event.data != "[DONE]")
        .all(|event| json_of(event).get("usage").is_none()));
}

#[tokio::test]
async fn openai_max_tokens_and_max_completion_tokens_cut_the_answer() {
    let base = start_default().await;
    for field in ["max_tokens", "max_completion_tokens"] {
        // GIVEN a limit below the default answer length
        let mut body = json!({"model": "gpt-4o-mini", "messages": user("Hi")});
        body[field] = json!(5);
        // WHEN asked
        let body: Value = openai(&base, body).await.json().await.expect("JSON");
        // THEN the answer stops at the limit with finish_reason "length"
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{field}");
        assert_eq!(body["usage"]["completion_tokens"], 5, "{field}");
    }
}

#[tokio::test]
async fn openai_rejects_missing_auth_and_bad_json_in_its_error_shape() {
    let base = start_default().await;
    // WHEN no bearer token is sent THEN 401 in OpenAI's shape
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o-mini", "messages": user("Hi")}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
    // WHEN the body is not JSON THEN 400 in the same shape
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sk-test")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // WHEN messages is missing THEN 400 naming the parameter
    let body: Value = openai(&base, json!({"model": "gpt-4o-mini"}))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["error"]["param"], "messages");
}

#[tokio::test]
async fn openai_status_directive_answers_rate_limit_with_retry_after() {
    let base = start_default().await;
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("[sim:status=429] Hi"), "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

// ---------------------------------------------------------------- Anthropic

#[tokio::test]
async fn anthropic_message_has_the_messages_shape() {
    // GIVEN a simulator
    let base = start_default().await;
    // WHEN a message is requested with a block system prompt and block content
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100,
               "system": [{"type": "text", "text": "Be brief."}],
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}),
    )
    .await;
    // THEN it is a message with one text block, end_turn and usage
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(body["model"], "claude-3-haiku-20240307");
    assert_eq!(body["content"][0]["type"], "text");
    assert!(body["content"][0]["text"]
        .as_str()
        .is_some_and(|text| text.starts_with("Simulated Anthropic answer")));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"]["output_tokens"], 24);
    assert!(body["usage"]["input_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));
}

#[tokio::test]
async fn anthropic_stream_sends_the_event_sequence_with_emitted_usage() {
    let base = start_default().await;
    // WHEN a message is streamed
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100, "stream": true,
               "messages": user("[sim:tokens=7] Tell me")}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.expect("body"));
    // THEN the named events come in Anthropic's order, each name matching its payload type
    let names: Vec<&str> = events
        .iter()
        .map(|event| event.name.as_deref().expect("named event"))
        .collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 7]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    for event in &events {
        assert_eq!(json_of(event)["type"], event.name.as_deref().expect("name"));
    }
    let start = json_of(&events[0]);
    assert_eq!(start["message"]["usage"]["output_tokens"], 1);
    assert!(start["message"]["usage"]["input_tokens"].as_u64().is_some());
    // AND message_delta reports as many output tokens as deltas were sent
    let delta = json_of(&events[events.len() - 2]);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 7);
    assert_eq!(anthropic_texts(&events).len(), 7);
}

#[tokio::test]
async fn anthropic_accepts_a_bearer_key_like_recent_sdks_send() {
    // GIVEN a client that sends its key as a bearer token (anthropic-python 2.x does)
    let base = start_default().await;
    // WHEN it asks for a message
    let response = client()
        .post(format!("{base}/v1/messages"))
        .bearer_auth("test")
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-3-haiku-20240307", "max_tokens": 10,
                      "messages": user("Hi")}),
        )
        .send()
        .await
        .expect("sent");
    // THEN it is answered
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn anthropic_max_tokens_stops_with_max_tokens() {
    let base = start_default().await;
    let body: Value = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 3, "messages": user("Hi")}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn anthropic_checks_headers_and_required_fields() {
    let base = start_default().await;
    let body =
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 10, "messages": user("Hi")});
    // WHEN x-api-key is missing THEN 401 authentication_error
    let response = client()
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");
    // WHEN anthropic-version is missing THEN 400 invalid_request_error
    let response = client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "test")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    // WHEN max_tokens is missing THEN 400 naming it
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "messages": user("Hi")}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("max_tokens")));
}

#[tokio::test]
async fn anthropic_fail_directive_sends_an_overloaded_error_event() {
    let base = start_default().await;
    // WHEN the stream is told to fail after 2 tokens
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100, "stream": true,
               "messages": user("[sim:fail=2] Hi")}),
    )
    .await;
    let events = parse_sse(&response.text().await.expect("body ends cleanly"));
    // THEN 2 deltas arrive, then an error event and nothing else
    assert_eq!(anthropic_texts(&events).len(), 2);
    let last = events.last().expect("events");
    assert_eq!(last.name.as_deref(), Some("error"));
    assert_eq!(
        json_of(last),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[tokio::test]
async fn anthropic_status_529_is_overloaded() {
    let base = start_default().await;
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 10,
               "messages": user("[sim:status=529]")}),
    )
    .await;
    assert_eq!(response.status().as_u16(), 529);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["type"], "overloaded_error");
}

// ---------------------------------------------------------------- Gemini

#[tokio::test]
async fn gemini_generate_content_has_the_response_shape() {
    let base = start_default().await;
    // WHEN content is generated with a system instruction, the key in the query string
    let response = client()
        .post(format!(
            "{base}/v1beta/models/gemini-2.5-flash:generateContent?key=test"
        ))
        .json(&json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
            "generationConfig": {"temperature": 0.5}
        }))
        .send()
        .await
        .expect("sent");
    // THEN it has one model candidate with STOP and usage metadata that adds up
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert!(candidate["content"]["parts"][0]["text"]
        .as_str()
        .is_some_and(|text| text.starts_with("Simulated Gemini answer (gemini-2.5-flash)")));
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["index"], 0);
    let usage = &body["usageMetadata"];
    assert_eq!(usage["candidatesTokenCount"], 24);
    assert_eq!(
        usage["totalTokenCount"].as_u64(),
        Some(usage["promptTokenCount"].as_u64().expect("prompt") + 24)
    );
    assert_eq!(body["modelVersion"], "gemini-2.5-flash");
    assert!(body["responseId"].is_string());
}

#[tokio::test]
async fn gemini_sse_stream_has_crlf_frames_running_usage_and_final_finish_reason() {
    let base = start_default().await;
    // WHEN content is streamed with alt=sse
    let response = gemini(
        &base,
        "streamGenerateContent?alt=sse",
        json!({"contents": [{"parts": [{"text": "[sim:tokens=6] Stream"}]}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    // THEN every frame is `data: …\r\n\r\n`
    assert!(body.ends_with("\r\n\r\n"));
    assert_eq!(body.matches("data: ").count(), 6);
    let events = parse_sse(&body);
    // AND each chunk carries the usage so far; only the last has the finish reason
    for (index, event) in events.iter().enumerate() {
        let chunk = json_of(event);
        assert_eq!(chunk["usageMetadata"]["candidatesTokenCount"], index + 1);
        let finish = &chunk["candidates"][0]["finishReason"];
        if index + 1 == events.len() {
            assert_eq!(finish, "STOP");
        } else {
            assert_eq!(finish, &Value::Null);
        }
    }
    assert_eq!(gemini_texts(&events).len(), 6);
}

#[tokio::test]
async fn gemini_stream_without_alt_is_a_json_array() {
    let base = start_default().await;
    let response = gemini(
        &base,
        "streamGenerateContent",
        json!({"contents": [{"parts": [{"text": "[sim:tokens=3] Hi"}]}]}),
    )
    .await;
    let body: Value = response.json().await.expect("a JSON array");
    assert_eq!(body.as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn gemini_max_output_tokens_stops_with_max_tokens() {
    let base = start_default().await;
    let body: Value = gemini(
        &base,
        "generateContent",
        json!({"contents": [{"parts": [{"text": "Hi"}]}],
               "generationConfig": {"maxOutputTokens": 4}}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 4);
}

#[tokio::test]
async fn gemini_errors_use_the_google_status_shape() {
    let base = start_default().await;
    // WHEN no key is given THEN 403 PERMISSION_DENIED
    let response = client()
        .post(format!(
            "{base}/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .json(&json!({"contents": [{"parts": [{"text": "Hi"}]}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["code"], 403);
    assert_eq!(error["error"]["status"], "PERMISSION_DENIED");
    // WHEN a 429 is asked for THEN RESOURCE_EXHAUSTED
    let response = gemini(
        &base,
        "generateContent",
        json!({"contents": [{"parts": [{"text": "[sim:status=429]"}]}]}),
    )
    .await;
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["status"], "RESOURCE_EXHAUSTED");
    // WHEN the body is not JSON THEN 400 INVALID_ARGUMENT
    let response = client()
        .post(format!(
            "{base}/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .header("x-goog-api-key", "test")
        .body("nope")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    // WHEN the action is unknown THEN 404
    let response = gemini(&base, "countTokens", json!({})).await;
    assert_eq!(response.status(), 404);
}

// ---------------------------------------------------------------- Directives

#[tokio::test]
async fn echo_streams_unicode_with_leading_spaces_through_every_provider() {
    // GIVEN a prompt of Arabic words with leading spaces
    let base = start_default().await;
    let prompt = "[sim:echo] من  هنا\nسطر";
    let expected = vec![" من", "  هنا", "\nسطر"];
    // WHEN each provider streams its echo
    let openai_events = parse_sse(
        &openai(
            &base,
            json!({"model": "gpt-4o-mini", "messages": user(prompt), "stream": true}),
        )
        .await
        .text()
        .await
        .expect("body"),
    );
    let anthropic_events = parse_sse(
        &anthropic(
            &base,
            json!({"model": "claude-3-haiku-20240307", "max_tokens": 50, "stream": true,
                   "messages": user(prompt)}),
        )
        .await
        .text()
        .await
        .expect("body"),
    );
    let gemini_events = parse_sse(
        &gemini(
            &base,
            "streamGenerateContent?alt=sse",
            json!({"contents": [{"parts": [{"text": prompt}]}]}),
        )
        .await
        .text()
        .await
        .expect("body"),
    );
    // THEN the deltas are the prompt without the directive, one word with its spaces each
    assert_eq!(openai_texts(&openai_events), expected);
    assert_eq!(anthropic_texts(&anthropic_events), expected);
    assert_eq!(gemini_texts(&gemini_events), expected);
}

#[tokio::test]
async fn tokens_directive_sets_the_answer_length() {
    let base = start_default().await;
    let body: Value = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("[sim:tokens=50] long")}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(body["usage"]["completion_tokens"], 50);
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(!content.contains("[sim:"));
}

#[tokio::test]
async fn cut_directive_drops_a_plain_request_without_response() {
    let base = start_default().await;
    // WHEN a plain request asks to be cut
    let result = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&json!({"model": "gpt-4o-mini", "messages": user("[sim:cut=0] Hi")}))
        .send()
        .await;
    // THEN the client gets no response at all
    assert!(
        result.is_err(),
        "expected a dropped connection, got {result:?}"
    );
}

#[tokio::test]
async fn cut_directive_drops_a_stream_after_n_tokens() {
    let base = start_default().await;
    // WHEN a stream asks to be cut after 3 tokens
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100, "stream": true,
               "messages": user("[sim:cut=3] Hi")}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    // THEN the body ends in an error after exactly 3 deltas and no closing events
    assert!(failed, "the body should end abruptly");
    let events = parse_sse(&String::from_utf8_lossy(&received));
    assert_eq!(anthropic_texts(&events).len(), 3);
    assert!(events
        .iter()
        .all(|event| event.name.as_deref() != Some("message_stop")));
}

#[tokio::test]
async fn latency_and_tps_directives_slow_the_answer() {
    let base = start_default().await;
    // WHEN 5 tokens are streamed at 20 tokens/s after 150 ms of latency
    let started = Instant::now();
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "stream": true,
               "messages": user("[sim:latency_ms=150][sim:tps=20][sim:tokens=5] Hi")}),
    )
    .await;
    let headers_after = started.elapsed();
    let text = response.text().await.expect("body");
    let total = started.elapsed();
    // THEN the headers wait for the latency and the 4 gaps between tokens take 50 ms each
    assert!(
        headers_after >= Duration::from_millis(150),
        "{headers_after:?}"
    );
    assert!(total >= Duration::from_millis(350), "{total:?}");
    assert_eq!(openai_texts(&parse_sse(&text)).len(), 5);
}

#[tokio::test]
async fn config_defaults_apply_when_no_directive_is_given() {
    // GIVEN a simulator configured to fail everything with 503 and to answer 3 tokens
    let failing = start(SimulatorConfig {
        status: Some(503),
        ..SimulatorConfig::default()
    })
    .await;
    let short = start(SimulatorConfig {
        answer_tokens: 3,
        ..SimulatorConfig::default()
    })
    .await;
    // WHEN plain requests are sent
    let response = gemini(
        &failing,
        "generateContent",
        json!({"contents": [{"parts": [{"text": "Hi"}]}]}),
    )
    .await;
    let body: Value = openai(
        &short,
        json!({"model": "gpt-4o-mini", "messages": user("Hi")}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    // THEN the configured behaviour applies
    assert_eq!(response.status(), 503);
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn answers_are_deterministic() {
    let base = start_default().await;
    let ask = || async {
        let body: Value = anthropic(
            &base,
            json!({"model": "claude-3-haiku-20240307", "max_tokens": 100,
                   "messages": user("Same question")}),
        )
        .await
        .json()
        .await
        .expect("JSON");
        (body["content"].clone(), body["usage"].clone())
    };
    assert_eq!(ask().await, ask().await);
}
