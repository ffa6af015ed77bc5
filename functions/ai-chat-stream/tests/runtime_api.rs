//! The real `ai-chat-stream` binary against a fake Lambda Runtime API served here: checks the
//! response-streaming protocol it speaks, as lambda_runtime implements it and
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-custom.html#runtimes-custom-response-streaming>
//! describes it. The runtime takes one event from `GET …/invocation/next`, then answers with one
//! chunked `POST …/invocation/{id}/response` (`Lambda-Runtime-Function-Response-Mode: streaming`)
//! whose body is a JSON prelude (status, headers, cookies), eight NUL bytes, then the HTTP body as
//! the handler produces it.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use gateway::auth::TokenIssuer;
use gateway::ids::{OrgId, PlanId, UserId};
use gateway::secret::Secret;
use gateway::store::dynamo::DynamoStore;
use gateway::store::{OrgRecord, OrgStore, UserRecord, UserStore};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Bounds every wait, so a broken binary fails the test instead of hanging it.
const TIMEOUT: Duration = Duration::from_secs(30);
const JWT_SECRET: &str = "runtime-api-test-signing-secret-0123456789";
const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";
const NEXT_PATH: &str = "/2018-06-01/runtime/invocation/next";
/// Separates the prelude from the body in a streamed response.
const DELIMITER: [u8; 8] = [0; 8];
/// The only event file for this endpoint; its placeholders are filled in per test.
const EVENT: &str = include_str!("../../../events/ai-chat-stream.json");

// ---------------------------------------------------------------------------------------------
// The fake Runtime API
// ---------------------------------------------------------------------------------------------

/// One request the function sent to the fake Runtime API other than `/next`, as it arrived.
#[derive(Debug)]
struct Posted {
    path: String,
    headers: HeaderMap,
    /// Each body frame with the moment the fake server read it.
    frames: Vec<(Instant, Bytes)>,
    trailers: Option<HeaderMap>,
}

impl Posted {
    fn body(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The index of the frame that carried body byte `offset`.
    fn frame_holding(&self, offset: usize) -> usize {
        let mut end = 0;
        for (index, (_, bytes)) in self.frames.iter().enumerate() {
            end += bytes.len();
            if offset < end {
                return index;
            }
        }
        panic!("offset {offset} is past the body's {end} bytes");
    }
}

struct FakeRuntime {
    /// What `/next` hands out, in order; once empty, `/next` never answers, as Lambda's does
    /// while no invocation is waiting.
    events: Mutex<VecDeque<Value>>,
    /// How many times `/next` was polled.
    polls: watch::Sender<usize>,
    posted: mpsc::UnboundedSender<Posted>,
}

fn deadline_ms() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    (now + Duration::from_secs(300)).as_millis().to_string()
}

async fn next(State(fake): State<Arc<FakeRuntime>>) -> Response {
    fake.polls.send_modify(|n| *n += 1);
    let event = fake.events.lock().expect("events lock").pop_front();
    let Some(event) = event else {
        return std::future::pending().await;
    };
    (
        [
            ("content-type", "application/json".to_owned()),
            ("lambda-runtime-aws-request-id", REQUEST_ID.to_owned()),
            ("lambda-runtime-deadline-ms", deadline_ms()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:ai-chat-stream".to_owned(),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-67a0b1c2-0a1b2c3d4e5f60718293a4b5;Parent=53995c3f42cd8ad8;Sampled=0"
                    .to_owned(),
            ),
        ],
        event.to_string(),
    )
        .into_response()
}

/// Everything else (`…/response`, `…/error`, `init/error`): read frame by frame, timing each, then
/// acknowledged as Lambda does.
async fn record(State(fake): State<Arc<FakeRuntime>>, request: Request) -> Response {
    let (parts, mut body) = request.into_parts();
    let mut frames = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        match frame.into_data() {
            Ok(data) => frames.push((Instant::now(), data)),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let _ = fake.posted.send(Posted {
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        frames,
        trailers,
    });
    (StatusCode::ACCEPTED, r#"{"status":"OK"}"#).into_response()
}

/// Serves a fake Runtime API that hands out `event` once.
async fn fake_runtime(
    event: Value,
) -> (
    String,
    watch::Receiver<usize>,
    mpsc::UnboundedReceiver<Posted>,
) {
    let (polls, polls_rx) = watch::channel(0);
    let (posted, posted_rx) = mpsc::unbounded_channel();
    let fake = Arc::new(FakeRuntime {
        events: Mutex::new(VecDeque::from([event])),
        polls,
        posted,
    });
    let app = Router::new()
        .route(NEXT_PATH, get(next))
        .fallback(record)
        .with_state(fake);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the fake Runtime API");
    let addr = listener.local_addr().expect("its address").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, polls_rx, posted_rx)
}

// ---------------------------------------------------------------------------------------------
// The function process
// ---------------------------------------------------------------------------------------------

/// The running binary; killed when dropped, its output printed if the test is failing.
struct Function {
    child: tokio::process::Child,
    output: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut from: impl AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<Vec<u8>>>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            into.lock()
                .expect("output lock")
                .extend_from_slice(&buf[..n]);
        }
    });
}

impl Function {
    fn spawn(env: &[(&str, String)]) -> Function {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-chat-stream"));
        // Only what Lambda would set, so nothing from the developer's shell (a profile, another
        // provider URL) changes what runs.
        command.env_clear();
        if let Ok(level) = std::env::var("RUST_LOG") {
            command.env("RUST_LOG", level);
        }
        let mut child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the ai-chat-stream binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("piped stdout"), output.clone());
        collect(child.stderr.take().expect("piped stderr"), output.clone());
        Function { child, output }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock")).into_owned()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for _ in 0..200 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if std::thread::panicking() {
            eprintln!("--- ai-chat-stream output ---\n{}", self.output());
        }
    }
}

/// The function wired to a fake Runtime API that holds one invocation.
struct Invocation {
    function: Function,
    polls: watch::Receiver<usize>,
    posted: mpsc::UnboundedReceiver<Posted>,
}

impl Invocation {
    async fn start(event: Value, env: Vec<(&'static str, String)>) -> Invocation {
        let (runtime_api, polls, posted) = fake_runtime(event).await;
        let mut env = env;
        // The signing secret is a plain variable unless the test names it in Secrets Manager.
        if !env.iter().any(|(name, _)| *name == "JWT_SECRET_ID") {
            env.push(("JWT_SECRET", JWT_SECRET.to_owned()));
        }
        env.extend([
            ("AWS_LAMBDA_RUNTIME_API", runtime_api),
            ("AWS_LAMBDA_FUNCTION_NAME", "ai-chat-stream".to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "1".to_owned()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "x".to_owned()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "x".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]);
        Invocation {
            function: Function::spawn(&env),
            polls,
            posted,
        }
    }

    /// The next request the function posted, failing fast if it exits first.
    async fn posted(&mut self) -> Posted {
        tokio::select! {
            posted = self.posted.recv() => posted.expect("the fake Runtime API is running"),
            status = self.function.child.wait() => {
                panic!("ai-chat-stream exited before answering the invocation: {status:?}")
            }
            () = tokio::time::sleep(TIMEOUT) => panic!("no answer to the invocation within {TIMEOUT:?}"),
        }
    }

    /// Waits until `/next` has been polled `count` times in all.
    async fn polled(&mut self, count: usize) {
        tokio::time::timeout(TIMEOUT, self.polls.wait_for(|n| *n >= count))
            .await
            .unwrap_or_else(|_| panic!("/next was not polled {count} times within {TIMEOUT:?}"))
            .expect("the fake Runtime API is running");
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// DynamoDB Local's endpoint, or `None` when the tests run without one (skipped loudly; under CI
/// that fails instead, so a broken harness cannot pass silently).
fn dynamodb_endpoint() -> Option<String> {
    let Ok(endpoint) = std::env::var("GATEWAY_TEST_DYNAMODB_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI (bash infra/scripts/test.sh sets it)"
        );
        eprintln!(
            "skipping: GATEWAY_TEST_DYNAMODB_ENDPOINT is not set (run bash infra/scripts/test.sh)"
        );
        return None;
    };
    Some(endpoint)
}

/// A fresh table holding one user who owns one free-plan org, and a token for that user.
struct Seeded {
    table: String,
    org: OrgId,
    token: String,
}

async fn seed(endpoint: &str) -> Seeded {
    seed_signed_by(endpoint, JWT_SECRET).await
}

/// As [`seed`], the token signed with `signing_secret`.
async fn seed_signed_by(endpoint: &str, signing_secret: &str) -> Seeded {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    let table = format!("stream-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), table.clone());
    store
        .create_table_if_missing()
        .await
        .expect("creating a test table in DynamoDB Local");
    let user = UserRecord {
        id: UserId::generate(),
        email: "streamer@example.com".to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".to_owned(),
        created_at: "2026-11-01T00:00:00Z".to_owned(),
    };
    store.create_user(&user).await.expect("creating the user");
    let org = OrgRecord {
        id: OrgId::generate(),
        name: "Streamers".to_owned(),
        slug: "streamers".to_owned(),
        plan: PlanId::from("free"),
        owner_id: user.id.clone(),
        created_at: "2026-11-01T00:00:00Z".to_owned(),
    };
    store
        .create_org(&org, "2026-11-01T00:00:00Z")
        .await
        .expect("creating the org");
    let token = TokenIssuer::new(&Secret::new(signing_secret), Duration::from_secs(3600))
        .expect("a valid signing secret")
        .issue(&user.id, &user.email)
        .expect("issuing a token");
    Seeded {
        table,
        org: org.id,
        token,
    }
}

/// The API Gateway (REST) proxy event for `POST /api/v1/ai/chat/stream` with `prompt`.
fn stream_event(token: &str, org: &str, prompt: &str) -> Value {
    let raw = EVENT
        .replace("REPLACE_WITH_TOKEN", token)
        .replace("REPLACE_WITH_ORG_ID", org);
    let mut event: Value = serde_json::from_str(&raw).expect("the event file is JSON");
    event["body"] = Value::String(
        json!({
            "messages": [{ "role": "user", "content": prompt }],
            "model": "gemini-1.5-flash",
        })
        .to_string(),
    );
    event
}

async fn simulator() -> String {
    simulator_with(simulator::SimulatorConfig::default()).await
}

async fn simulator_with(config: simulator::SimulatorConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the simulator");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(simulator::serve(listener, config));
    url
}

// ---------------------------------------------------------------------------------------------
// Reading a streamed response
// ---------------------------------------------------------------------------------------------

/// A streamed response split at the delimiter.
struct Streamed {
    prelude: Value,
    /// Where the HTTP body starts in the POST body.
    body_start: usize,
    body: Vec<u8>,
}

fn split(posted: &Posted) -> Streamed {
    let raw = posted.body();
    let at = raw
        .windows(DELIMITER.len())
        .position(|w| w == DELIMITER)
        .unwrap_or_else(|| {
            panic!(
                "no eight-NUL delimiter in the streamed body: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let prelude = serde_json::from_slice(&raw[..at]).unwrap_or_else(|e| {
        panic!(
            "the prelude is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&raw[..at])
        )
    });
    let body_start = at + DELIMITER.len();
    Streamed {
        prelude,
        body_start,
        body: raw[body_start..].to_vec(),
    }
}

/// One SSE event: its name (`event:` line), if any, and its `data:` lines joined.
#[derive(Debug, PartialEq)]
struct SseEvent {
    name: Option<String>,
    data: String,
}

fn sse_events(body: &str) -> Vec<SseEvent> {
    body.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                } else {
                    panic!("not an SSE line: {line:?}");
                }
            }
            SseEvent {
                name,
                data: data.join("\n"),
            }
        })
        .collect()
}

fn assert_streaming_post(posted: &Posted) {
    assert_eq!(
        posted.path,
        format!("/2018-06-01/runtime/invocation/{REQUEST_ID}/response"),
        "the answer went to the wrong endpoint; body: {:?}",
        String::from_utf8_lossy(&posted.body())
    );
    assert_eq!(
        posted.header("lambda-runtime-function-response-mode"),
        Some("streaming")
    );
    assert_eq!(posted.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        posted.header("content-type"),
        Some("application/vnd.awslambda.http-integration-response")
    );
    assert!(
        posted.trailers.is_none(),
        "no mid-stream error was reported: {:?}",
        posted.trailers
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn streams_a_chat_answer_through_the_runtime_api() {
    let Some(endpoint) = dynamodb_endpoint() else {
        return;
    };
    // GIVEN a user who owns a free-plan org, a provider that streams six tokens at 20 a second,
    // and the function waiting on a Runtime API that holds one chat-stream event for that user
    let seeded = seed(&endpoint).await;
    let gemini = simulator().await;
    let event = stream_event(
        &seeded.token,
        seeded.org.as_str(),
        "[sim:tps=20][sim:tokens=6] hi",
    );
    let mut invocation = Invocation::start(
        event,
        vec![
            ("GATEWAY_TABLE", seeded.table.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB", endpoint),
            ("GEMINI_BASE_URL", gemini),
            ("GEMINI_API_KEY", "k".to_owned()),
            ("RUST_LOG", "info,gateway::runtime_api=debug".to_owned()),
        ],
    )
    .await;

    // WHEN the function answers the invocation
    let posted = invocation.posted().await;

    // THEN it first turned Nagle's algorithm off on its connection to the Runtime API, so no
    // chunk waits for the previous one's ACK
    let output = invocation.function.output();
    let sockets = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "sending to the Runtime API without delay")
        .and_then(|line| line["fields"]["sockets"].as_u64());
    assert!(
        sockets.is_some_and(|n| n >= 1),
        "no Runtime API socket set to TCP_NODELAY ({sockets:?}); output:\n{output}"
    );

    // AND it streams to …/response: prelude with the HTTP status and headers, eight NULs, body
    assert_streaming_post(&posted);
    let streamed = split(&posted);
    assert_eq!(streamed.prelude["statusCode"], 200, "{}", streamed.prelude);
    let content_type = streamed.prelude["headers"]["content-type"]
        .as_str()
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "prelude: {}",
        streamed.prelude
    );
    assert_eq!(streamed.prelude["cookies"], json!([]));
    assert_ne!(
        streamed.body.first(),
        Some(&0),
        "exactly eight NULs separate the prelude from the body"
    );

    // AND the body is the SSE answer: six deltas, the usage, then [DONE]
    let body = std::str::from_utf8(&streamed.body).expect("the SSE body is UTF-8");
    let events = sse_events(body);
    assert_eq!(events.len(), 8, "events: {events:#?}");
    for delta in &events[..6] {
        assert_eq!(delta.name, None, "events: {events:#?}");
        assert!(!delta.data.is_empty(), "events: {events:#?}");
        assert_ne!(delta.data, "[DONE]", "events: {events:#?}");
    }
    assert_eq!(events[6].name.as_deref(), Some("usage"));
    let usage: Value = serde_json::from_str(&events[6].data).expect("the usage event is JSON");
    assert_eq!(usage["output_tokens"], 6, "usage: {usage}");
    assert_eq!(
        events[7],
        SseEvent {
            name: None,
            data: "[DONE]".to_owned()
        }
    );

    // AND it left as it was produced: the first delta reached the Runtime API in an earlier body
    // frame than [DONE], not all at once at the end
    let first_event_end = body.find("\n\n").expect("a complete first event");
    let done_start = body.rfind("data: [DONE]").expect("[DONE]");
    let first_frame = posted.frame_holding(streamed.body_start + first_event_end);
    let done_frame = posted.frame_holding(streamed.body_start + done_start);
    let body_frames = posted
        .frames
        .iter()
        .scan(0, |offset, (_, bytes)| {
            *offset += bytes.len();
            Some(*offset)
        })
        .filter(|end| *end > streamed.body_start)
        .count();
    let (t0, _) = posted.frames[0];
    eprintln!(
        "body frames (ms after the first, bytes): {:?}",
        posted
            .frames
            .iter()
            .map(|(at, bytes)| (at.duration_since(t0).as_millis(), bytes.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        body_frames > 1,
        "{body_frames} body frame(s) after the prelude"
    );
    assert!(
        first_frame < done_frame,
        "the first delta (frame {first_frame}) and [DONE] (frame {done_frame}) arrived together"
    );

    // AND only then does the runtime go back for the next invocation
    invocation.polled(2).await;
}

#[tokio::test]
async fn an_invalid_token_is_a_streamed_401() {
    // GIVEN the function waiting on a Runtime API that holds an event with a forged token. The
    // token is checked before any store read, so no DynamoDB is needed: without one, the store
    // points at a closed port and any read would turn the answer into a 503.
    let endpoint = std::env::var("GATEWAY_TEST_DYNAMODB_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:9".to_owned());
    let event = stream_event(
        "not.a.token",
        OrgId::generate().as_str(),
        "[sim:tokens=6] hi",
    );
    let mut invocation = Invocation::start(
        event,
        vec![
            ("GATEWAY_TABLE", "no-such-table".to_owned()),
            ("AWS_ENDPOINT_URL_DYNAMODB", endpoint),
        ],
    )
    .await;

    // WHEN the function answers the invocation
    let posted = invocation.posted().await;

    // THEN the refusal is streamed too: a prelude with 401, eight NULs, then the JSON error
    assert_streaming_post(&posted);
    let streamed = split(&posted);
    assert_eq!(streamed.prelude["statusCode"], 401, "{}", streamed.prelude);
    let detail: Value = serde_json::from_slice(&streamed.body).unwrap_or_else(|e| {
        panic!(
            "the body after the delimiter is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&streamed.body)
        )
    });
    assert!(
        detail["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "body: {detail}"
    );
    assert_eq!(
        detail.as_object().map(|o| o.len()),
        Some(1),
        "body: {detail}"
    );

    // AND the runtime goes back for the next invocation
    invocation.polled(2).await;
}

/// moto's endpoint for Secrets Manager, or `None` without one (skipped loudly; failed under CI).
fn secrets_manager_endpoint() -> Option<String> {
    let Ok(endpoint) = std::env::var("GATEWAY_TEST_SECRETSMANAGER_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "GATEWAY_TEST_SECRETSMANAGER_ENDPOINT must be set under CI (bash infra/scripts/test.sh sets it)"
        );
        eprintln!("skipping: GATEWAY_TEST_SECRETSMANAGER_ENDPOINT is not set (run bash infra/scripts/test.sh)");
        return None;
    };
    Some(endpoint)
}

/// Stores `value` as a new secret in Secrets Manager (moto); gives its ARN.
async fn store_secret(endpoint: &str, value: &str) -> String {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
        .create_secret()
        .name(format!("gateway-test-{}", uuid::Uuid::new_v4().simple()))
        .secret_string(value)
        .send()
        .await
        .expect("creating a secret in moto")
        .arn()
        .expect("the new secret's ARN")
        .to_owned()
}

#[tokio::test]
async fn reads_its_signing_secret_and_provider_keys_from_secrets_manager() {
    let (Some(dynamodb), Some(secrets)) = (dynamodb_endpoint(), secrets_manager_endpoint()) else {
        return;
    };
    // GIVEN the signing secret and the provider keys only in Secrets Manager, a user whose token
    // that secret signed, and a provider that accepts only the key kept there
    let signing = format!(
        "signing-secret-kept-in-secrets-manager-{}",
        uuid::Uuid::new_v4().simple()
    );
    let key = format!(
        "gemini-key-kept-in-secrets-manager-{}",
        uuid::Uuid::new_v4().simple()
    );
    let jwt_secret_id = store_secret(&secrets, &signing).await;
    let keys = json!({"GEMINI_API_KEY": key, "OPENAI_API_KEY": ""}).to_string();
    let keys_secret_id = store_secret(&secrets, &keys).await;
    let seeded = seed_signed_by(&dynamodb, &signing).await;
    let gemini = simulator_with(simulator::SimulatorConfig {
        api_key: Some(key.clone()),
        ..simulator::SimulatorConfig::default()
    })
    .await;
    let event = stream_event(&seeded.token, seeded.org.as_str(), "[sim:tokens=3] hi");

    // WHEN the function starts with only the secrets' names and answers a streamed chat
    let mut invocation = Invocation::start(
        event,
        vec![
            ("GATEWAY_TABLE", seeded.table.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", secrets),
            ("JWT_SECRET_ID", jwt_secret_id),
            ("PROVIDER_KEYS_SECRET_ID", keys_secret_id),
            ("GEMINI_BASE_URL", gemini),
            ("RUST_LOG", "debug".to_owned()),
        ],
    )
    .await;
    let posted = invocation.posted().await;

    // THEN the token verified and the provider took the key: the answer streamed in full
    let streamed = split(&posted);
    assert_eq!(streamed.prelude["statusCode"], 200, "{}", streamed.prelude);
    let body = std::str::from_utf8(&streamed.body).expect("the SSE body is UTF-8");
    let events = sse_events(body);
    assert_eq!(events.len(), 5, "three deltas, usage, [DONE]: {events:#?}");
    // AND neither secret appears in anything the function wrote, at debug level
    let output = invocation.function.output();
    assert!(!output.contains(&signing), "the signing secret was logged");
    assert!(!output.contains(&key), "the provider key was logged");
}
