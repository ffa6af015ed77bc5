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

// ---------------------------------------------------------------- Tools, JSON output, images

/// A 1×1 transparent PNG.
const PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "note": {"type": "string"}
        },
        "required": ["city", "days", "unit"]
    })
}

fn openai_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": weather_schema()}},
        {"type": "function", "function": {"name": "get_time", "parameters":
            {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
    ])
}

fn anthropic_tools() -> Value {
    json!([
        {"name": "get_weather", "description": "Weather", "input_schema": weather_schema()},
        {"name": "get_time", "input_schema":
            {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}
    ])
}

fn gemini_tools() -> Value {
    json!([{"functionDeclarations": [
        {"name": "get_weather", "parameters": {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"},
                           "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "days", "unit"]}},
        {"name": "get_time", "parametersJsonSchema":
            {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}
    ]}])
}

/// The arguments every weather call must carry: each required property, typed.
fn assert_weather_arguments(arguments: &Value) {
    assert_eq!(
        arguments,
        &json!({"city": "simulated", "days": 1, "unit": "celsius"}),
        "{arguments}"
    );
}

/// Output tokens of a call: its arguments' JSON split at whitespace.
fn tokens_of(arguments: &str) -> u64 {
    arguments.split_whitespace().count() as u64
}

#[tokio::test]
async fn openai_forced_tool_call_is_the_same_plain_and_streamed() {
    // GIVEN a request that forces get_weather
    let base = start_default().await;
    let body = json!({"model": "gpt-4o-mini", "messages": user("Weather in Paris?"),
                      "tools": openai_tools(),
                      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    // WHEN it is asked plainly
    let plain: Value = openai(&base, body.clone())
        .await
        .json()
        .await
        .expect("JSON");
    // THEN the answer is one get_weather call with typed arguments and no content
    let choice = &plain["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("call_") && id.len() == 29));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"]
        .as_str()
        .expect("a JSON string");
    assert_weather_arguments(&serde_json::from_str(arguments).expect("JSON arguments"));
    assert_eq!(
        plain["usage"]["completion_tokens"].as_u64(),
        Some(tokens_of(arguments))
    );
    // WHEN it is streamed
    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = parse_sse(&openai(&base, streamed).await.text().await.expect("body"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(json_of).collect();
    // THEN the first chunk names the call, the next ones carry its arguments in fragments
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["content"], Value::Null);
    assert_eq!(
        first["tool_calls"][0],
        json!({"index": 0, "id": call["id"], "type": "function",
               "function": {"name": "get_weather", "arguments": ""}})
    );
    let fragments: Vec<&str> = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(fragments.len() > 1, "{fragments:?}");
    assert_eq!(fragments.concat(), arguments);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(chunks[chunks.len() - 1]["usage"], plain["usage"]);
}

#[tokio::test]
async fn openai_auto_calls_a_tool_only_when_the_prompt_asks() {
    let base = start_default().await;
    let ask = |prompt: &str, choice: Value| {
        let body = json!({"model": "gpt-4o-mini", "messages": user(prompt),
                          "tools": openai_tools(), "tool_choice": choice});
        let base = base.clone();
        async move {
            openai(&base, body)
                .await
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    // WHEN auto is not asked to call THEN it answers with text
    let text = ask("Hello", json!("auto")).await;
    assert_eq!(text["choices"][0]["finish_reason"], "stop");
    assert!(text["choices"][0]["message"].get("tool_calls").is_none());
    // WHEN the prompt asks for a named tool THEN that one is called
    let named = ask("Time? [sim:tool=get_time]", json!("auto")).await;
    assert_eq!(
        named["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );
    // WHEN tools are off THEN even an asking prompt gets text
    let none = ask("[sim:tool] Hello", json!("none")).await;
    assert_eq!(none["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn openai_parallel_calls_have_distinct_ids_unless_parallel_calls_are_off() {
    let base = start_default().await;
    let body = json!({"model": "gpt-4o-mini", "messages": user("Both [sim:tools=2]"),
                      "tools": openai_tools(), "stream": true});
    let events = parse_sse(
        &openai(&base, body.clone())
            .await
            .text()
            .await
            .expect("body"),
    );
    let opened: Vec<Value> = events
        .iter()
        .filter(|event| event.data != "[DONE]")
        .filter_map(|event| {
            let call = json_of(event)["choices"][0]["delta"]["tool_calls"][0].clone();
            call.get("id").is_some().then_some(call)
        })
        .collect();
    assert_eq!(opened.len(), 2);
    assert_eq!(
        (opened[0]["index"].clone(), opened[1]["index"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(opened[0]["function"]["name"], "get_weather");
    assert_eq!(opened[1]["function"]["name"], "get_time");
    assert_ne!(opened[0]["id"], opened[1]["id"]);
    let mut single = body;
    single["stream"] = json!(false);
    single["parallel_tool_calls"] = json!(false);
    let plain: Value = openai(&base, single).await.json().await.expect("JSON");
    assert_eq!(
        plain["choices"][0]["message"]["tool_calls"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn openai_tool_results_are_answered_with_text_quoting_them() {
    let base = start_default().await;
    let messages = json!([
        {"role": "user", "content": "Weather? [sim:tool]"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"}
    ]);
    let body: Value = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": messages, "tools": openai_tools()}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The tool returned: 21 degrees and sunny"
    );
    assert_eq!(body["usage"]["completion_tokens"], 7);
}

#[tokio::test]
async fn openai_refuses_unknown_tools_and_unmatched_results() {
    let base = start_default().await;
    // WHEN tool_choice names a tool that is not offered THEN 400 naming tool_choice
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Hi"), "tools": openai_tools(),
               "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["param"]
        .as_str()
        .is_some_and(|p| p.starts_with("tool_choice")));
    // WHEN a tool message answers no call THEN 400 naming its tool_call_id
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "noon"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["param"], "messages.[2].tool_call_id");
}

#[tokio::test]
async fn openai_json_output_follows_the_schema() {
    let base = start_default().await;
    let schema_body: Value = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Weather"),
               "response_format": {"type": "json_schema",
                   "json_schema": {"name": "weather", "schema": weather_schema(), "strict": true}}}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    let content = schema_body["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_weather_arguments(&serde_json::from_str(content).expect("JSON content"));
    assert_eq!(
        schema_body["usage"]["completion_tokens"].as_u64(),
        Some(tokens_of(content))
    );
    // WHEN json_object is asked and the prompt says JSON THEN a small object comes back
    let object: Value = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Answer in JSON"),
               "response_format": {"type": "json_object"}}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    let content = object["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    let parsed: Value = serde_json::from_str(content).expect("JSON content");
    assert!(parsed["answer"]
        .as_str()
        .is_some_and(|a| a.starts_with("Simulated OpenAI")));
    // WHEN json_object is asked and the prompt never says JSON THEN 400, as OpenAI answers
    let response = openai(
        &base,
        json!({"model": "gpt-4o-mini", "messages": user("Hi"),
               "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn openai_images_cost_input_tokens_and_bad_ones_are_refused() {
    let base = start_default().await;
    let prompt_tokens = |content: Value| {
        let base = base.clone();
        async move {
            let body: Value = openai(
                &base,
                json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}),
            )
            .await
            .json()
            .await
            .expect("JSON");
            body["usage"]["prompt_tokens"]
                .as_u64()
                .expect("prompt tokens")
        }
    };
    let text = json!({"type": "text", "text": "What is this?"});
    let image = |url: String, detail: &str| json!({"type": "image_url", "image_url": {"url": url, "detail": detail}});
    let alone = prompt_tokens(json!([text])).await;
    let low = prompt_tokens(json!([
        text,
        image(format!("data:image/png;base64,{PNG}"), "low")
    ]));
    assert_eq!(low.await, alone + 85);
    let high = prompt_tokens(json!([
        text,
        image("https://example.com/cat.jpg".into(), "high")
    ]));
    assert_eq!(high.await, alone + 765);
    for (url, code) in [
        (
            format!("data:image/bmp;base64,{PNG}"),
            "invalid_image_format",
        ),
        (
            "data:image/png;base64,not*base64".to_owned(),
            "invalid_value",
        ),
    ] {
        let response = openai(
            &base,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content":
                [text, image(url.clone(), "auto")]}]}),
        )
        .await;
        assert_eq!(response.status(), 400, "{url}");
        let error: Value = response.json().await.expect("JSON");
        assert_eq!(error["error"]["code"], code, "{url}");
    }
}

#[tokio::test]
async fn anthropic_forced_tool_use_is_the_same_plain_and_streamed() {
    // GIVEN a request that forces get_weather
    let base = start_default().await;
    let body = json!({"model": "claude-3-haiku-20240307", "max_tokens": 100,
                      "messages": user("Weather in Paris?"), "tools": anthropic_tools(),
                      "tool_choice": {"type": "tool", "name": "get_weather"}});
    // WHEN it is asked plainly THEN the answer is one tool_use block with typed input
    let plain: Value = anthropic(&base, body.clone())
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(plain["stop_reason"], "tool_use");
    let block = &plain["content"][0];
    assert_eq!(plain["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("toolu_01") && id.len() == 30));
    assert_eq!(block["name"], "get_weather");
    assert_weather_arguments(&block["input"]);
    // WHEN it is streamed
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let events = parse_sse(&anthropic(&base, streamed).await.text().await.expect("body"));
    // THEN the block opens with an empty input, and input_json_delta fragments rebuild it
    let start = events
        .iter()
        .find(|event| event.name.as_deref() == Some("content_block_start"))
        .map(json_of)
        .expect("content_block_start");
    assert_eq!(
        start["content_block"],
        json!({"type": "tool_use", "id": block["id"], "name": "get_weather", "input": {}})
    );
    let fragments: Vec<String> = events
        .iter()
        .filter(|event| event.name.as_deref() == Some("content_block_delta"))
        .map(|event| {
            let delta = json_of(event)["delta"].clone();
            assert_eq!(delta["type"], "input_json_delta");
            delta["partial_json"]
                .as_str()
                .expect("partial_json")
                .to_owned()
        })
        .collect();
    assert!(
        fragments.iter().filter(|f| !f.is_empty()).count() > 1,
        "{fragments:?}"
    );
    let input: Value = serde_json::from_str(&fragments.concat()).expect("JSON input");
    assert_eq!(input, block["input"]);
    let delta = events
        .iter()
        .find(|event| event.name.as_deref() == Some("message_delta"))
        .map(json_of)
        .expect("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        delta["usage"]["output_tokens"],
        plain["usage"]["output_tokens"]
    );
    assert_eq!(
        plain["usage"]["output_tokens"].as_u64(),
        Some(tokens_of(&fragments.concat()))
    );
}

#[tokio::test]
async fn anthropic_auto_parallel_and_disabled_parallel_tool_use() {
    let base = start_default().await;
    let ask = |prompt: &str, choice: Value| {
        let body = json!({"model": "claude-3-haiku-20240307", "max_tokens": 100,
                          "messages": user(prompt), "tools": anthropic_tools(),
                          "tool_choice": choice});
        let base = base.clone();
        async move {
            anthropic(&base, body)
                .await
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let text = ask("Hello", json!({"type": "auto"})).await;
    assert_eq!(text["stop_reason"], "end_turn");
    assert_eq!(text["content"][0]["type"], "text");
    let asked = ask("Weather [sim:tool]", json!({"type": "auto"})).await;
    assert_eq!(asked["content"][0]["name"], "get_weather");
    let parallel = ask("Both [sim:tools=2]", json!({"type": "any"})).await;
    let names: Vec<&str> = parallel["content"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter_map(|block| block["name"].as_str())
        .collect();
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_ne!(parallel["content"][0]["id"], parallel["content"][1]["id"]);
    let single = ask(
        "Both [sim:tools=2]",
        json!({"type": "any", "disable_parallel_tool_use": true}),
    )
    .await;
    assert_eq!(single["content"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn anthropic_tool_results_are_answered_with_text_and_checked() {
    let base = start_default().await;
    let history = |result_id: &str, is_error: bool| {
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100, "tools": anthropic_tools(),
        "messages": [
            {"role": "user", "content": "Weather? [sim:tool]"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A",
                "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": result_id,
                "content": [{"type": "text", "text": "21 degrees"}], "is_error": is_error}]}
        ]})
    };
    let answered: Value = anthropic(&base, history("toolu_01A", false))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answered["stop_reason"], "end_turn");
    assert_eq!(
        answered["content"][0]["text"],
        "The tool returned: 21 degrees"
    );
    let failed: Value = anthropic(&base, history("toolu_01A", true))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(failed["content"][0]["text"], "The tool failed: 21 degrees");
    // WHEN the result answers another id THEN 400 invalid_request_error
    let response = anthropic(&base, history("toolu_01B", false)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    // WHEN tool_choice names a tool that is not offered THEN 400
    let response = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100, "messages": user("Hi"),
               "tools": anthropic_tools(), "tool_choice": {"type": "tool", "name": "nope"}}),
    )
    .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn anthropic_output_format_and_images() {
    let base = start_default().await;
    let structured: Value = anthropic(
        &base,
        json!({"model": "claude-3-haiku-20240307", "max_tokens": 100, "messages": user("Weather"),
               "output_config": {"format": {"type": "json_schema", "schema": weather_schema()}}}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    let text = structured["content"][0]["text"].as_str().expect("text");
    assert_weather_arguments(&serde_json::from_str(text).expect("JSON text"));
    let input_tokens = |content: Value| {
        let base = base.clone();
        async move {
            let response = anthropic(
                &base,
                json!({"model": "claude-3-haiku-20240307", "max_tokens": 10,
                       "messages": [{"role": "user", "content": content}]}),
            )
            .await;
            let status = response.status();
            let body: Value = response.json().await.expect("JSON");
            (status.as_u16(), body["usage"]["input_tokens"].as_u64())
        }
    };
    let text = json!({"type": "text", "text": "What is this?"});
    let image = |media_type: &str, data: &str| {
        json!({"type": "image", "source": {"type": "base64", "media_type": media_type,
                                           "data": data}})
    };
    let (_, alone) = input_tokens(json!([text])).await;
    let (status, with_image) = input_tokens(json!([image("image/png", PNG), text])).await;
    assert_eq!(status, 200);
    assert_eq!(with_image, alone.map(|n| n + 1600));
    assert_eq!(
        input_tokens(json!([image("image/tiff", PNG), text]))
            .await
            .0,
        400
    );
    assert_eq!(
        input_tokens(json!([image("image/png", "???"), text]))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn gemini_forced_call_is_the_same_plain_and_streamed_and_signed() {
    let base = start_default().await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
                      "tools": gemini_tools(),
                      "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}});
    // WHEN it is asked plainly THEN one signed functionCall part comes back with STOP
    let plain: Value = gemini(&base, "generateContent", body.clone())
        .await
        .json()
        .await
        .expect("JSON");
    let candidate = &plain["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    let part = &candidate["content"]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "get_weather");
    assert!(part["functionCall"]["id"]
        .as_str()
        .is_some_and(|id| id.len() == 8));
    assert_weather_arguments(&part["functionCall"]["args"]);
    assert!(part["thoughtSignature"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    // WHEN it is streamed THEN the call arrives whole in one chunk, signature included
    let events = parse_sse(
        &gemini(&base, "streamGenerateContent?alt=sse", body)
            .await
            .text()
            .await
            .expect("body"),
    );
    assert_eq!(events.len(), 1);
    let chunk = json_of(&events[0]);
    assert_eq!(chunk["candidates"][0]["content"]["parts"][0], *part);
    assert_eq!(chunk["usageMetadata"], plain["usageMetadata"]);
}

#[tokio::test]
async fn gemini_auto_allowed_names_and_parallel_calls() {
    let base = start_default().await;
    let ask = |prompt: &str, config: Value| {
        let body = json!({"contents": [{"parts": [{"text": prompt}]}], "tools": gemini_tools(),
                          "toolConfig": {"functionCallingConfig": config}});
        let base = base.clone();
        async move {
            gemini(&base, "generateContent", body)
                .await
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let text = ask("Hello", json!({"mode": "AUTO"})).await;
    assert!(text["candidates"][0]["content"]["parts"][0]["text"].is_string());
    let asked = ask("Weather [sim:tool]", json!({"mode": "AUTO"})).await;
    assert_eq!(
        asked["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );
    let allowed = ask(
        "Hi",
        json!({"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
    )
    .await;
    assert_eq!(
        allowed["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_time"
    );
    let none = ask("[sim:tool]", json!({"mode": "NONE"})).await;
    assert!(none["candidates"][0]["content"]["parts"][0]["text"].is_string());
    // WHEN two calls are asked for THEN only the first part is signed
    let parallel = ask("Both [sim:tools=2]", json!({"mode": "AUTO"})).await;
    let parts = parallel["candidates"][0]["content"]["parts"]
        .as_array()
        .expect("parts")
        .clone();
    assert_eq!(parts.len(), 2);
    assert!(parts[0].get("thoughtSignature").is_some());
    assert!(parts[1].get("thoughtSignature").is_none());
    assert_ne!(
        parts[0]["functionCall"]["id"],
        parts[1]["functionCall"]["id"]
    );
}

#[tokio::test]
async fn gemini_signatures_make_the_round_trip_and_are_checked() {
    let base = start_default().await;
    let question = json!({"role": "user", "parts": [{"text": "Weather? [sim:tool]"}]});
    let first: Value = gemini(
        &base,
        "generateContent",
        json!({"contents": [question], "tools": gemini_tools()}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    let model_turn = first["candidates"][0]["content"].clone();
    let follow_up = |model_turn: Value| {
        json!({"tools": gemini_tools(), "contents": [question, model_turn,
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                "response": {"forecast": "sunny"}}}]}]})
    };
    // WHEN the model's turn is sent back as it came THEN the answer is text quoting the result
    let answer: Value = gemini(&base, "generateContent", follow_up(model_turn.clone()))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["text"],
        "The tool returned: {\"forecast\": \"sunny\"}"
    );
    // WHEN the signature is dropped, altered, or replaced by the documented dummy
    let with_signature = |signature: Option<&str>| {
        let mut turn = model_turn.clone();
        match signature {
            Some(signature) => turn["parts"][0]["thoughtSignature"] = json!(signature),
            None => {
                if let Some(part) = turn["parts"][0].as_object_mut() {
                    part.remove("thoughtSignature");
                }
            }
        }
        follow_up(turn)
    };
    let status_and_message = |body: Value| {
        let base = base.clone();
        async move {
            let response = gemini(&base, "generateContent", body).await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON");
            (
                status,
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    // THEN a missing or altered one is refused with Gemini's messages, the dummy is accepted
    let (status, message) = status_and_message(with_signature(None)).await;
    assert_eq!(status, 400);
    assert!(
        message.starts_with("Function call is missing a thought_signature"),
        "{message}"
    );
    let (status, message) = status_and_message(with_signature(Some("AAAA"))).await;
    assert_eq!(
        (status, message.as_str()),
        (400, "Corrupted thought signature.")
    );
    let (status, _) =
        status_and_message(with_signature(Some("skip_thought_signature_validator"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn gemini_json_output_and_images() {
    let base = start_default().await;
    let structured: Value = gemini(
        &base,
        "generateContent",
        json!({"contents": [{"parts": [{"text": "Weather"}]}],
               "generationConfig": {"responseMimeType": "application/json",
                   "responseSchema": gemini_tools()[0]["functionDeclarations"][0]["parameters"]}}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    let text = structured["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .expect("text");
    assert_weather_arguments(&serde_json::from_str(text).expect("JSON text"));
    let ask = |parts: Value| {
        let base = base.clone();
        async move {
            let response = gemini(
                &base,
                "generateContent",
                json!({"contents": [{"parts": parts}]}),
            )
            .await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let text = json!({"text": "What is this?"});
    let (_, alone) = ask(json!([text])).await;
    let (status, with_image) =
        ask(json!([{"inlineData": {"mimeType": "image/png", "data": PNG}}, text])).await;
    assert_eq!(status, 200);
    let prompt = |body: &Value| body["usageMetadata"]["promptTokenCount"].as_u64();
    assert_eq!(prompt(&with_image), prompt(&alone).map(|n| n + 258));
    assert_eq!(
        with_image["usageMetadata"]["promptTokensDetails"][1],
        json!({"modality": "IMAGE", "tokenCount": 258})
    );
    let (status, _) =
        ask(json!([{"inlineData": {"mimeType": "image/bmp", "data": PNG}}, text])).await;
    assert_eq!(status, 400);
    let (status, error) =
        ask(json!([{"inlineData": {"mimeType": "image/png", "data": "@@@"}}, text])).await;
    assert_eq!(
        (status, error["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
}

#[tokio::test]
async fn a_configured_key_is_the_only_one_accepted() {
    // GIVEN a simulator that accepts only the key "right-key"
    let base = start(SimulatorConfig {
        api_key: Some("right-key".to_owned()),
        ..SimulatorConfig::default()
    })
    .await;
    let send = |path: &str, key_header: (&str, String), body: Value| {
        client()
            .post(format!("{base}{path}"))
            .header(key_header.0, key_header.1)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let chat = json!({"model": "m", "max_tokens": 5, "messages": user("Hi")});
    let gemini_body = json!({"contents": [{"parts": [{"text": "Hi"}]}]});
    for (key, openai_status, anthropic_status, gemini_status) in
        [("wrong-key", 401, 401, 400), ("right-key", 200, 200, 200)]
    {
        // WHEN each provider's endpoint is called with that key
        let openai = send(
            "/v1/chat/completions",
            ("authorization", format!("Bearer {key}")),
            chat.clone(),
        )
        .await
        .expect("sent");
        let anthropic = send("/v1/messages", ("x-api-key", key.to_owned()), chat.clone())
            .await
            .expect("sent");
        let gemini = send(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            ("x-goog-api-key", key.to_owned()),
            gemini_body.clone(),
        )
        .await
        .expect("sent");
        // THEN only the configured key gets answers; others get each API's own refusal
        assert_eq!(openai.status(), openai_status, "{key}");
        assert_eq!(anthropic.status(), anthropic_status, "{key}");
        assert_eq!(gemini.status(), gemini_status, "{key}");
        if key == "wrong-key" {
            let body: Value = openai.json().await.expect("JSON");
            assert_eq!(body["error"]["code"], "invalid_api_key");
            let body: Value = anthropic.json().await.expect("JSON");
            assert_eq!(body["error"]["type"], "authentication_error");
        }
    }
}
