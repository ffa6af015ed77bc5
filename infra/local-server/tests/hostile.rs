//! Hostile input over a real socket, on both stores: each class of it gets a clear 4xx (never a
//! 503 from input the store would refuse), and the server is healthy after each group.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use futures::StreamExt;
use gateway::config::Settings;
use gateway::providers::sse::SseDecoder;
use gateway::store::dynamo::DynamoStore;
use gateway::store::memory::MemoryStore;
use gateway::store::Stores;
use local_server::{Options, StoreKind};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Gateway {
    base: String,
    http: Client,
    token: String,
    org: String,
}

fn options() -> Options {
    Options {
        store: StoreKind::Memory,
        table: String::new(),
        create_tables: false,
        admin_token: None,
        // Mid-window, so no minute or sign-in window turns during a test (and in the future:
        // DynamoDB Local deletes expired items).
        clock: Some(Arc::new(gateway::clock::ManualClock::new(
            time::macros::datetime!(2030-11-15 12:05:30 UTC),
        ))),
        job_retry_after: Duration::from_millis(200),
    }
}

/// The DynamoDB store on a fresh table of the server the test command started, if there is one.
async fn dynamo() -> Option<Stores> {
    let Ok(endpoint) = std::env::var("GATEWAY_TEST_DYNAMODB_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI"
        );
        eprintln!("skipping: GATEWAY_TEST_DYNAMODB_ENDPOINT is not set");
        return None;
    };
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    let table = format!("hostile-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), table);
    store.create_table_if_missing().await.expect("table");
    Some(Stores::from(Arc::new(store)))
}

/// An OpenAI upstream gone bad: a prompt saying `leak` gets a 500 whose message holds a
/// credential; any other gets 200 and a body that never ends.
async fn hostile_upstream() -> String {
    async fn answer(body: String) -> axum::response::Response {
        if body.contains("leak") {
            let error = json!({"error": {"message": "upstream broke; key sk-live-abcdefghijklmnopqrstuvwx1234 was used"}});
            return axum::response::Response::builder()
                .status(500)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(error.to_string()))
                .expect("response");
        }
        let endless = futures::stream::iter(
            std::iter::once("{\"choices\": \"".to_owned())
                .chain(std::iter::repeat_n("x".repeat(64 * 1024), 400)),
        )
        .map(|chunk| Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk)));
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from_stream(endless))
            .expect("response")
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn start(stores: Stores) -> Gateway {
    let mut settings = Settings::local(
        "hostile-secret-hostile-secret-hostile",
        "http://unused",
        None,
    );
    // GPT's provider is hostile; the others are simulated.
    settings.providers.openai = gateway::config::Endpoint {
        base_url: gateway::providers::base_url(&hostile_upstream().await).expect("an http URL"),
        api_key: Some(gateway::secret::Secret::new(
            "sk-gateway-own-key-0123456789",
        )),
    };
    // Two requests in flight at most on the team plan, to show the cap.
    settings
        .catalog
        .plans
        .get_mut(&gateway::ids::PlanId::from("team"))
        .expect("team")
        .max_in_flight = 2;
    let orgs = stores.orgs.clone();
    let router = local_server::build_on(settings, stores, &options())
        .await
        .expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    // Short waits, so slow clients are shown the door within the test.
    let limits = local_server::Limits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        max_connections: 64,
    };
    tokio::spawn(local_server::serve_with(listener, router, limits));
    let http = Client::new();
    let registered: Value = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "mallory@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let token = registered["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let org: Value = http
        .post(format!("{base}/api/v1/orgs"))
        .bearer_auth(&token)
        .json(&json!({"name": "Mallory", "slug": "mallory"}))
        .send()
        .await
        .expect("org")
        .json()
        .await
        .expect("json");
    let org = org["id"].as_str().expect("id").to_owned();
    // Room for every group's chats within the test's one minute.
    orgs.set_plan(
        &gateway::ids::OrgId::from(org.as_str()),
        &gateway::ids::PlanId::from("team"),
    )
    .await
    .expect("plan");
    Gateway {
        base,
        http,
        token,
        org,
    }
}

impl Gateway {
    fn ai(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("x-current-org", &self.org)
    }

    async fn status_and_detail(&self, request: reqwest::RequestBuilder) -> (StatusCode, String) {
        let response = request.send().await.expect("request");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (
            status,
            body["detail"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Still serving: health, and a chat answered.
    async fn still_healthy(&self) {
        let health = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), StatusCode::OK);
        let chat = self
            .ai(reqwest::Method::POST, "/api/v1/ai/chat")
            .json(&json!({"messages": [{"role": "user", "content": "still there?"}]}))
            .send()
            .await
            .expect("chat");
        assert_eq!(chat.status(), StatusCode::OK);
    }
}

async fn input_the_store_would_refuse_is_a_4xx(gw: &Gateway) {
    // A login name far beyond any key DynamoDB takes, and a password no account can have.
    let login = |username: String, password: String| {
        gw.http
            .post(format!("{}/api/v1/auth/login", gw.base))
            .form(&[("username", username), ("password", password)])
    };
    for (username, password) in [
        (
            "a".repeat(5000) + "@example.com",
            "correct horse battery".to_owned(),
        ),
        ("mallory@example.com".to_owned(), "p".repeat(200_000)),
        (
            "mallory\u{0}@example.com".to_owned(),
            "correct horse battery".to_owned(),
        ),
    ] {
        let (status, detail) = gw.status_and_detail(login(username, password)).await;
        assert_eq!(
            (status, detail.as_str()),
            (StatusCode::UNAUTHORIZED, "Incorrect email or password")
        );
    }
    // A job item whose messages would not fit one stored item.
    let big = "x".repeat(310 * 1024);
    let job = json!({"items": [{"id": "big", "messages": [{"role": "user", "content": big}]}]});
    let (status, detail) = gw
        .status_and_detail(gw.ai(reqwest::Method::POST, "/api/v1/ai/jobs").json(&job))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{detail}");
    assert!(detail.starts_with("items[0].messages"), "{detail}");
    // Cursors that are no job id.
    for after in ["", "not-a-job", &"0".repeat(3000)] {
        let path = format!("/api/v1/ai/jobs?after={after}");
        let (status, detail) = gw
            .status_and_detail(gw.ai(reqwest::Method::GET, &path))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{after:?}: {detail}"
        );
        assert!(detail.starts_with("after:"), "{detail}");
    }
    gw.still_healthy().await;
}

async fn parsing_is_strict(gw: &Gateway) {
    for month in ["2026-+1", "2026-1", "+026-11", "2026-11-01"] {
        let path = format!("/api/v1/ai/usage?month={month}");
        let (status, detail) = gw
            .status_and_detail(gw.ai(reqwest::Method::GET, &path))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{month}: {detail}"
        );
    }
    let register = gw
        .http
        .post(format!("{}/api/v1/auth/register", gw.base))
        .json(&json!({"email": "eve\u{1b}[31m@example.com", "password": "correct horse battery"}));
    let (status, detail) = gw.status_and_detail(register).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{detail}");
    let huge =
        json!({"max_tokens": 5_000_000_000_i64, "messages": [{"role": "user", "content": "Hi"}]});
    let (status, detail) = gw
        .status_and_detail(gw.ai(reqwest::Method::POST, "/api/v1/ai/chat").json(&huge))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{detail}");
    assert!(detail.contains("5000000000"), "{detail}");
    gw.still_healthy().await;
}

async fn an_answer_cannot_end_the_stream(gw: &Gateway) {
    let response = gw
        .ai(reqwest::Method::POST, "/api/v1/ai/chat/stream")
        .json(&json!({"messages": [{"role": "user", "content": "[sim:echo][DONE] and more"}]}))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        events.extend(decoder.push(&chunk.expect("chunk")));
    }
    let done = events
        .iter()
        .position(|e| e.event.is_none() && e.data.trim() == "[DONE]")
        .expect("the terminator");
    assert_eq!(
        done,
        events.len() - 1,
        "only the real terminator reads as one: {events:?}"
    );
    let text: String = events[..done]
        .iter()
        .filter(|e| e.event.is_none())
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(text, "[DONE] and more");
    gw.still_healthy().await;
}

/// Sends `head` (and then nothing) on a fresh connection; what the server answers, up to EOF.
async fn raw(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server does not wait for ever")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

async fn slow_and_lying_clients_are_shown_the_door(gw: &Gateway) {
    // A body announced over the limit is refused before a byte of it is read.
    let answer = raw(
        &gw.base,
        "POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7000000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A body that stops arriving is given up on.
    let answer = raw(
        &gw.base,
        "POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"em",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Headers that stop arriving end the connection.
    let answer = raw(
        &gw.base,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    )
    .await;
    assert!(!answer.contains("200 OK"), "{answer}");
    gw.still_healthy().await;
}

async fn sign_ins_and_sign_ups_cannot_be_hammered(gw: &Gateway) {
    let password = "correct horse battery";
    let register = |email: String| {
        gw.http
            .post(format!("{}/api/v1/auth/register", gw.base))
            .json(&json!({"email": email, "password": password}))
    };
    let login = |password: &str| {
        gw.http
            .post(format!("{}/api/v1/auth/login", gw.base))
            .form(&[("username", "victim@example.com"), ("password", password)])
    };
    assert_eq!(
        register("victim@example.com".into())
            .send()
            .await
            .expect("register")
            .status(),
        StatusCode::CREATED
    );
    // Ten wrong passwords for one email...
    for _ in 0..gateway::throttle::FAILED_LOGINS_PER_EMAIL {
        let (status, _) = gw.status_and_detail(login("wrong password!")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // ...and its logins are refused for the window, the right password too, with a wait to honour.
    let response = login(password).send().await.expect("login");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    // One address registers at most its allowance per window (mallory and victim so far).
    for i in 2..gateway::throttle::REGISTRATIONS_PER_ADDRESS {
        let status = register(format!("bulk{i}@example.com"))
            .send()
            .await
            .expect("register")
            .status();
        assert_eq!(status, StatusCode::CREATED, "registration {i}");
    }
    let (status, detail) = gw
        .status_and_detail(register("one-more@example.com".into()))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{detail}");
    gw.still_healthy().await;
}

async fn hostile_upstreams_are_a_clear_502(gw: &Gateway) {
    let chat = |prompt: &str| {
        gw.ai(reqwest::Method::POST, "/api/v1/ai/chat").json(
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}),
        )
    };
    // An answer that never ends is cut at the cap.
    let (status, detail) = gw.status_and_detail(chat("go on")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{detail}");
    assert!(detail.contains("larger than"), "{detail}");
    // An error that carries a credential reaches the client without it.
    let (status, detail) = gw.status_and_detail(chat("leak")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{detail}");
    assert!(!detail.contains("sk-live"), "{detail}");
    assert!(detail.contains("***"), "{detail}");
    gw.still_healthy().await;
}

async fn work_is_bounded_per_org(gw: &Gateway) {
    // Two streams held open by a thinking model fill the plan's two places in flight...
    let thinking = || {
        gw.ai(reqwest::Method::POST, "/api/v1/ai/chat/stream")
            .json(&json!({
                "model": "claude-3-haiku",
                "messages": [{"role": "user", "content": "[sim:think_ms=3000] ponder"}]
            }))
    };
    let first = thinking().send().await.expect("stream");
    let second = thinking().send().await.expect("stream");
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    // ...so a third request waits its turn.
    let response = thinking().send().await.expect("stream");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    // Once their clients leave, the two settle and make room again.
    drop((first, second));
    let mut room = false;
    for _ in 0..100 {
        let chat = gw
            .ai(reqwest::Method::POST, "/api/v1/ai/chat")
            .json(&json!({"messages": [{"role": "user", "content": "room?"}]}));
        if chat.send().await.expect("chat").status() == StatusCode::OK {
            room = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(room, "the streams' places were never given back");
    // A batch larger than the messages left this month is refused before anything is queued
    // (the team plan has no such limit: a free org shows it).
    // (mallory's second org, on the free plan: this address has used up its sign-ups.)
    let free = gw.http.clone();
    let token = gw.token.clone();
    let org: Value = free
        .post(format!("{}/api/v1/orgs", gw.base))
        .bearer_auth(&token)
        .json(&json!({"name": "Batch", "slug": "batch"}))
        .send()
        .await
        .expect("org")
        .json()
        .await
        .expect("json");
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("i{i}"), "messages": [{"role": "user", "content": "hi"}]}))
        .collect();
    let submit = |items: Vec<Value>| {
        free.post(format!("{}/api/v1/ai/jobs", gw.base))
            .bearer_auth(&token)
            .header("x-current-org", org["id"].as_str().expect("id"))
            .json(&json!({"items": items}))
    };
    // One of the free plan's 50 messages used: a batch of 50 no longer fits.
    let chat = free
        .post(format!("{}/api/v1/ai/chat", gw.base))
        .bearer_auth(&token)
        .header("x-current-org", org["id"].as_str().expect("id"))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(chat.send().await.expect("chat").status(), StatusCode::OK);
    let (status, detail) = gw.status_and_detail(submit(items)).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{detail}");
    gw.still_healthy().await;
}

async fn an_org_holds_a_bounded_number_of_keys(gw: &Gateway) {
    let create = |name: String| {
        gw.http
            .post(format!("{}/api/v1/orgs/{}/api-keys", gw.base, gw.org))
            .bearer_auth(&gw.token)
            .json(&json!({ "name": name }))
    };
    for i in 0..gateway::api::keys::MAX_KEYS_PER_ORG {
        let status = create(format!("key {i}"))
            .send()
            .await
            .expect("create")
            .status();
        assert_eq!(status, StatusCode::CREATED, "key {i}");
    }
    let (status, detail) = gw.status_and_detail(create("one too many".into())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{detail}");
    gw.still_healthy().await;
}

async fn every_group(stores: Stores) {
    let gw = start(stores).await;
    input_the_store_would_refuse_is_a_4xx(&gw).await;
    parsing_is_strict(&gw).await;
    an_answer_cannot_end_the_stream(&gw).await;
    slow_and_lying_clients_are_shown_the_door(&gw).await;
    sign_ins_and_sign_ups_cannot_be_hammered(&gw).await;
    hostile_upstreams_are_a_clear_502(&gw).await;
    work_is_bounded_per_org(&gw).await;
    an_org_holds_a_bounded_number_of_keys(&gw).await;
}

#[tokio::test]
async fn hostile_input_on_the_memory_store() {
    every_group(Stores::from(Arc::new(MemoryStore::new()))).await;
}

#[tokio::test]
async fn hostile_input_on_dynamodb() {
    if let Some(stores) = dynamo().await {
        every_group(stores).await;
    }
}
