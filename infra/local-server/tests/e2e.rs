//! End to end over real sockets: the local server (the same handlers the Lambda functions run) with
//! its in-process simulator, driven as an HTTP client would drive it.

use std::sync::Arc;
use std::time::Duration;

use gateway::clock::ManualClock;
use time::macros::datetime;

use futures::future::join_all;
use gateway::auth::{Claims, TokenIssuer};
use gateway::config::Settings;
use gateway::secret::Secret;
use local_server::{Options, StoreKind};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-42";
const ADMIN: &str = "operator-token";

fn settings(request_timeout: Duration) -> Settings {
    let mut settings = Settings::local(SECRET, "http://unused", None);
    settings.providers.request_timeout = request_timeout;
    settings
}

struct Gateway {
    base: String,
    http: Client,
}

async fn start_with(settings: Settings, admin: Option<&str>) -> Gateway {
    let options = Options {
        store: StoreKind::Memory,
        table: String::new(),
        create_tables: false,
        admin_token: admin.map(Secret::new),
        clock: Some(Arc::new(ManualClock::new(
            datetime!(2026-11-15 12:00:30 UTC),
        ))),
        job_retry_after: Duration::from_millis(200),
    };
    let router = local_server::build_with(settings, &options)
        .await
        .expect("gateway builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(local_server::serve(listener, router));
    Gateway {
        base,
        http: Client::new(),
    }
}

async fn start() -> Gateway {
    start_with(settings(Duration::from_secs(5)), Some(ADMIN)).await
}

/// A registered user with an org, as the seed's curl flow leaves them.
struct Tenant {
    token: String,
    org: String,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn register(&self, email: &str) -> Response {
        self.http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .expect("request")
    }

    async fn login(&self, email: &str, password: &str) -> Response {
        self.http
            .post(self.url("/api/v1/auth/login"))
            .form(&[("username", email), ("password", password)])
            .send()
            .await
            .expect("request")
    }

    async fn tenant(&self, email: &str, slug: &str) -> Tenant {
        assert_eq!(self.register(email).await.status(), StatusCode::CREATED);
        let login: Value = self
            .login(email, "correct horse battery")
            .await
            .json()
            .await
            .expect("json");
        let token = login["access_token"].as_str().expect("token").to_owned();
        let org: Value = self
            .http
            .post(self.url("/api/v1/orgs"))
            .bearer_auth(&token)
            .json(&json!({"name": "Acme", "slug": slug}))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        Tenant {
            token,
            org: org["id"].as_str().expect("org id").to_owned(),
        }
    }

    async fn chat(&self, tenant: &Tenant, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/api/v1/ai/chat"))
            .bearer_auth(&tenant.token)
            .header("x-current-org", &tenant.org)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }

    async fn set_plan(&self, org: &str, plan: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .put(self.url(&format!("/admin/orgs/{org}/plan")))
            .bearer_auth(ADMIN)
            .json(&json!({"plan": plan}))
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }
}

fn hello(model: &str) -> Value {
    json!({"messages": [{"role": "user", "content": "Hello"}], "model": model})
}

#[tokio::test]
async fn the_seed_flow_works_end_to_end() {
    let gw = start().await;
    // GIVEN a user who registered, logged in and created an org
    let tenant = gw.tenant("Ada@Example.com", "acme").await;

    // THEN the org is listed with the free plan
    let orgs: Value = gw
        .http
        .get(gw.url("/api/v1/orgs"))
        .bearer_auth(&tenant.token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(orgs[0]["slug"], "acme");
    assert_eq!(orgs[0]["plan"], "free");
    assert_eq!(orgs[0]["role"], "owner");

    // AND the free plan's models are offered
    let models: Value = gw
        .http
        .get(gw.url("/api/v1/ai/models"))
        .bearer_auth(&tenant.token)
        .header("x-current-org", &tenant.org)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        models,
        json!({"plan": "free", "models": [
            {"id": "gemini-1.5-flash", "name": "Gemini 1.5 Flash", "provider": "google", "max_tokens": 8192},
            {"id": "gpt-4o-mini", "name": "GPT-4o Mini", "provider": "openai", "max_tokens": 16384}
        ]})
    );

    // AND each of them answers in SPEC's shape
    for model in ["gemini-1.5-flash", "gpt-4o-mini"] {
        let (status, body) = gw.chat(&tenant, hello(model)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model"], model);
        assert_eq!(body["finish_reason"], "stop");
        assert!(!body["message"].as_str().expect("text").is_empty());
        let usage = &body["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["input_tokens"].as_u64().expect("in")
                    + usage["output_tokens"].as_u64().expect("out")
            )
        );
    }

    // AND a model outside the plan is refused with SPEC's text
    let (status, body) = gw.chat(&tenant, hello("claude-3-haiku")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["detail"],
        "Model claude-3-haiku not available in your plan. Upgrade to access."
    );

    // WHEN an operator moves the org to pro
    let (status, body) = gw.set_plan(&tenant.org, "pro").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // THEN Claude answers, and pro's per-request maximum applies
    let (status, body) = gw.chat(&tenant, hello("claude-3-haiku")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = gw
        .chat(
            &tenant,
            json!({"messages": [{"role": "user", "content": "Hi"}], "model": "gemini-1.5-pro", "max_tokens": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("5000") && detail.contains("4096"),
        "{detail}"
    );
}

#[tokio::test]
async fn accounts_and_logins() {
    let gw = start().await;
    assert_eq!(
        gw.register("bob@example.com").await.status(),
        StatusCode::CREATED
    );
    // Emails are case-insensitive: the same address cannot register twice.
    let again = gw.register("BOB@example.com").await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    // Wrong password and unknown email get the same answer.
    for (email, password) in [
        ("bob@example.com", "wrong password"),
        ("nobody@example.com", "correct horse battery"),
    ] {
        let response = gw.login(email, password).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["detail"], "Incorrect email or password");
    }
    let ok: Value = gw
        .login("BOB@example.com", "correct horse battery")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ok["token_type"], "bearer");
}

#[tokio::test]
async fn tokens_and_org_membership_are_checked() {
    let gw = start().await;
    let ada = gw.tenant("ada@example.com", "ada-org").await;
    let eve = gw.tenant("eve@example.com", "eve-org").await;
    let issuer = TokenIssuer::new(&Secret::new(SECRET), Duration::from_secs(60)).expect("issuer");
    let expired = issuer
        .sign_claims(&Claims {
            sub: "someone".into(),
            email: "a@b.c".into(),
            iss: "ai-gateway".into(),
            iat: 1,
            exp: 2,
        })
        .expect("token");
    let forged = TokenIssuer::new(
        &Secret::new("some-other-secret-some-other-secret"),
        Duration::from_secs(60),
    )
    .expect("issuer")
    .issue(&gateway::ids::UserId::from("x"), "a@b.c")
    .expect("token");
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiaXNzIjoiYWktZ2F0ZXdheSIsImV4cCI6NDEwMjQ0NDgwMH0.";

    let models = |token: Option<&str>, org: Option<&str>| {
        let mut request = gw.http.get(gw.url("/api/v1/ai/models"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(org) = org {
            request = request.header("x-current-org", org);
        }
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(models(None, Some(&ada.org)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        models(Some("garbage"), Some(&ada.org)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        models(Some(&expired), Some(&ada.org)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        models(Some(&forged), Some(&ada.org)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        models(Some(alg_none), Some(&ada.org)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        models(Some(&ada.token), None).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        models(
            Some(&ada.token),
            Some("00000000-0000-0000-0000-000000000000")
        )
        .await,
        StatusCode::NOT_FOUND
    );
    // Eve cannot use Ada's org.
    assert_eq!(
        models(Some(&eve.token), Some(&ada.org)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        models(Some(&ada.token), Some(&ada.org)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error() {
    let gw = start().await;
    let tenant = gw.tenant("carol@example.com", "carol-org").await;
    let raw = |body: Vec<u8>, content_type: &str| {
        let request = gw
            .http
            .post(gw.url("/api/v1/ai/chat"))
            .bearer_auth(&tenant.token)
            .header("x-current-org", &tenant.org)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status();
            let body: Value = response.json().await.expect("every error is JSON");
            (status, body["detail"].as_str().expect("detail").to_owned())
        }
    };
    let cases: Vec<(Vec<u8>, &str, StatusCode, &str)> = vec![
        (b"{\"messages\": [".to_vec(), "application/json", StatusCode::BAD_REQUEST, "Invalid JSON"),
        (b"".to_vec(), "application/json", StatusCode::BAD_REQUEST, "Invalid JSON"),
        (b"[1,2]".to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "body"),
        (b"{}".to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "body: missing field `messages`"),
        (b"{\"messages\": \"hi\"}".to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "messages:"),
        (b"{\"messages\": []}".to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "messages:"),
        (br#"{"messages": [{"role": "robot", "content": "hi"}]}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "messages[0].role"),
        (br#"{"messages": [{"role": "user"}]}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "messages[0]"),
        (br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "temperature"),
        (br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "temperature"),
        (br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "max_tokens"),
        (br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "max_tokens"),
        (br#"{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-5"}"#.to_vec(), "application/json", StatusCode::BAD_REQUEST, "Unknown model gpt-5. Valid models: claude-3-haiku, gemini-1.5-flash, gemini-1.5-pro, gpt-4o-mini"),
        (br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}"#.to_vec(), "application/json", StatusCode::BAD_REQUEST, "max_tokens 100000 exceeds the maximum of 8192"),
        (br#"{"messages": [{"role": "user", "content": "hi"}]}"#.to_vec(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"),
        ([0xff, 0xfe, 0x00].to_vec(), "application/json", StatusCode::BAD_REQUEST, "Invalid JSON"),
        (vec![b' '; 7 * 1024 * 1024], "application/json", StatusCode::PAYLOAD_TOO_LARGE, "Request body is larger than 6291456 bytes"),
    ];
    for (body, content_type, status, detail) in cases {
        let (got_status, got_detail) = raw(body, content_type).await;
        assert_eq!(got_status, status, "{got_detail}");
        assert!(
            got_detail.starts_with(detail),
            "{got_detail:?} should start with {detail:?}"
        );
    }

    // Registration and org creation name their fields too.
    for (body, field) in [
        (
            json!({"email": "not-an-email", "password": "long enough pw"}),
            "email",
        ),
        (
            json!({"email": "dan@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "dan@example.com"}),
            "body: missing field `password`",
        ),
    ] {
        let response = gw
            .http
            .post(gw.url("/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["detail"].as_str().expect("detail").starts_with(field),
            "{body}"
        );
    }
    for (slug, status) in [
        ("Bad Slug", StatusCode::UNPROCESSABLE_ENTITY),
        ("carol-org", StatusCode::CONFLICT),
    ] {
        let response = gw
            .http
            .post(gw.url("/api/v1/orgs"))
            .bearer_auth(&tenant.token)
            .json(&json!({"name": "Other", "slug": slug}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), status);
    }
    // Login is a form, as OAuth2's password flow sends it.
    let response = gw
        .http
        .post(gw.url("/api/v1/auth/login"))
        .json(&json!({"username": "carol@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Unknown routes and methods are JSON too.
    let response = gw
        .http
        .get(gw.url("/api/v1/nope"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.json::<Value>().await.expect("json")["detail"].is_string());
    let response = gw
        .http
        .delete(gw.url("/api/v1/orgs"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    // And after all that the service still answers.
    let (status, _) = gw.chat(&tenant, hello("gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn provider_failures_are_502_and_504_naming_the_provider() {
    let gw = start_with(settings(Duration::from_millis(500)), Some(ADMIN)).await;
    let tenant = gw.tenant("frank@example.com", "frank-org").await;
    let (status, body) = gw
        .chat(
            &tenant,
            json!({"messages": [{"role": "user", "content": "[sim:status=503] hi"}], "model": "gpt-4o-mini"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .starts_with("Provider openai "),
        "{body}"
    );
    let (status, body) = gw
        .chat(
            &tenant,
            json!({"messages": [{"role": "user", "content": "[sim:latency_ms=3000] hi"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["detail"], "Provider google timed out");
}

#[tokio::test]
async fn the_operator_route_needs_the_operator_token() {
    let closed = start_with(settings(Duration::from_secs(5)), None).await;
    let tenant = closed.tenant("gina@example.com", "gina-org").await;
    let (status, _) = closed.set_plan(&tenant.org, "team").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "disabled without a token");

    let gw = start().await;
    let tenant = gw.tenant("gina@example.com", "gina-org").await;
    // An org member's own token is not the operator's.
    let response = gw
        .http
        .put(gw.url(&format!("/admin/orgs/{}/plan", tenant.org)))
        .bearer_auth(&tenant.token)
        .json(&json!({"plan": "team"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        gw.set_plan(&tenant.org, "platinum").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        gw.set_plan("no-such-org", "team").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(gw.set_plan(&tenant.org, "team").await.0, StatusCode::OK);
}

async fn usage_report(gw: &Gateway, tenant: &Tenant, query: &str) -> (StatusCode, Value) {
    let response = gw
        .http
        .get(gw.url(&format!("/api/v1/ai/usage{query}")))
        .bearer_auth(&tenant.token)
        .header("x-current-org", &tenant.org)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_its_headers() {
    let gw = start().await;
    let tenant = gw.tenant("hank@example.com", "hank-org").await;
    // GIVEN the free plan's 5 requests a minute WHEN 8 arrive at once
    let responses = join_all((0..8).map(|_| {
        gw.http
            .post(gw.url("/api/v1/ai/chat"))
            .bearer_auth(&tenant.token)
            .header("x-current-org", &tenant.org)
            .json(&hello("gpt-4o-mini"))
            .send()
    }))
    .await;
    let mut ok = 0;
    let mut limited = 0;
    for response in responses {
        let response = response.expect("request");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // THEN every answer carries the window's state (the clock stands at 30 s past the minute)
        assert_eq!(header("x-ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(header("x-ratelimit-reset").as_deref(), Some("30"));
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(header("retry-after").as_deref(), Some("30"));
                assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
                let body: Value = response.json().await.expect("json");
                assert_eq!(
                    body["detail"],
                    "Rate limit exceeded. Max 5 requests per minute."
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    // AND exactly five got through
    assert_eq!((ok, limited), (5, 3));
}

#[tokio::test]
async fn usage_is_metered_exactly_and_monthly_limits_answer_402() {
    let mut settings = settings(Duration::from_secs(5));
    let free = settings
        .catalog
        .plans
        .get_mut(&gateway::ids::PlanId::from("free"))
        .expect("free plan");
    free.messages_per_month = Some(3);
    free.requests_per_minute = 100;
    let gw = start_with(settings, Some(ADMIN)).await;
    let tenant = gw.tenant("iris@example.com", "iris-org").await;

    // GIVEN two answers and one provider failure
    let mut used = Vec::new();
    for model in ["gemini-1.5-flash", "gpt-4o-mini"] {
        let (status, body) = gw.chat(&tenant, hello(model)).await;
        assert_eq!(status, StatusCode::OK);
        used.push((
            model,
            body["usage"]["total_tokens"].as_u64().expect("tokens"),
        ));
    }
    let (status, _) = gw
        .chat(
            &tenant,
            json!({"messages": [{"role": "user", "content": "[sim:status=500] hi"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // THEN the report counts the answers, not the failure, and adds up
    let (status, report) = usage_report(&gw, &tenant, "").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["month"], "2026-11");
    assert_eq!(report["total_messages"], 2);
    assert_eq!(report["messages_limit"], 3);
    assert_eq!(report["tokens_limit"], 50_000);
    assert_eq!(report["usage_percentage"], 66.67);
    let total: u64 = used.iter().map(|(_, t)| t).sum();
    assert_eq!(report["total_tokens"].as_u64(), Some(total));
    for (model, tokens) in &used {
        let entry = &report["models_breakdown"][model];
        assert_eq!(entry["messages"], 1);
        assert_eq!(entry["tokens"].as_u64(), Some(*tokens));
        assert!(entry["cost"].as_f64().is_some_and(|c| c > 0.0), "{entry}");
    }

    // AND the failed call gave its message back: one more fits, then the month is used up
    let (status, _) = gw.chat(&tenant, hello("gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = gw.chat(&tenant, hello("gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        body["detail"],
        "Monthly limit exceeded. Upgrade your plan to continue."
    );

    // AND another month, or a bad month, is answered too
    let (status, report) = usage_report(&gw, &tenant, "?month=2026-10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["total_messages"], 0);
    assert_eq!(report["usage_percentage"], 0.0);
    let (status, _) = usage_report(&gw, &tenant, "?month=2026-13").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // AND once an operator moves the org to team, the very next request is let in and the
    // limits are null
    assert_eq!(gw.set_plan(&tenant.org, "team").await.0, StatusCode::OK);
    let (status, body) = gw.chat(&tenant, hello("gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, report) = usage_report(&gw, &tenant, "").await;
    assert_eq!(report["messages_limit"], Value::Null);
    assert_eq!(report["tokens_limit"], Value::Null);
    assert_eq!(report["usage_percentage"], Value::Null);
}

#[tokio::test]
async fn a_client_that_leaves_mid_chat_is_settled_at_once() {
    let gw = start().await;
    let tenant = gw.tenant("leaver@example.com", "leaver").await;
    // GIVEN a chat whose provider takes three seconds to answer
    let body = json!({"messages": [{"role": "user", "content": "[sim:latency_ms=3000] hi"}]});
    // WHEN the client gives up after 200 ms and closes its connection
    let cut = gw
        .http
        .post(gw.url("/api/v1/ai/chat"))
        .bearer_auth(&tenant.token)
        .header("x-current-org", &tenant.org)
        .json(&body)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(cut.is_err_and(|e| e.is_timeout()));
    // THEN the request is settled at once, not left holding tokens until its hold lapses: it
    // counts as a message, charged the input the provider was sent
    let mut report = Value::Null;
    for _ in 0..100 {
        report = usage_report(&gw, &tenant, "").await.1;
        if report["total_messages"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(report["total_messages"], 1, "{report}");
    let used = &report["models_breakdown"]["gemini-1.5-flash"];
    assert!(used["input_tokens"].as_u64() > Some(0), "{report}");
    assert_eq!(used["output_tokens"], 0, "{report}");
}
