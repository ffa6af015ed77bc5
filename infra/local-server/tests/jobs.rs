//! Background and batch jobs through the local server: the same submit, worker and polling code
//! the Lambda functions run, with the in-process queue standing in for SQS.

use std::sync::Arc;
use std::time::Duration;

use gateway::clock::ManualClock;
use gateway::config::Settings;
use local_server::{Options, StoreKind};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use time::macros::datetime;

struct Gateway {
    base: String,
    http: Client,
    clock: Arc<ManualClock>,
}

struct Tenant {
    token: String,
    org: String,
}

async fn start() -> Gateway {
    let settings = Settings::local("jobs-secret-jobs-secret-jobs-secret", "http://unused", None);
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-15 12:00:10 UTC)));
    let options = Options {
        store: StoreKind::Memory,
        table: String::new(),
        create_tables: false,
        admin_token: Some(gateway::secret::Secret::new("op")),
        clock: Some(clock.clone()),
        job_retry_after: Duration::from_millis(100),
    };
    let router = local_server::build_with(settings, &options)
        .await
        .expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(local_server::serve(listener, router));
    Gateway {
        base,
        http: Client::new(),
        clock,
    }
}

impl Gateway {
    async fn tenant(&self, email: &str, slug: &str) -> Tenant {
        let token: Value = self
            .http
            .post(format!("{}/api/v1/auth/register", self.base))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("json");
        let token = token["access_token"].as_str().expect("token").to_owned();
        let org: Value = self
            .http
            .post(format!("{}/api/v1/orgs", self.base))
            .bearer_auth(&token)
            .json(&json!({"name": "Jobs", "slug": slug}))
            .send()
            .await
            .expect("org")
            .json()
            .await
            .expect("json");
        Tenant {
            token,
            org: org["id"].as_str().expect("id").to_owned(),
        }
    }

    /// The operator's plan change, through the local server's operator route.
    async fn set_plan(&self, tenant: &Tenant, plan: &str) {
        let response = self
            .http
            .put(format!("{}/admin/orgs/{}/plan", self.base, tenant.org))
            .bearer_auth("op")
            .json(&json!({ "plan": plan }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn call(
        &self,
        tenant: &Tenant,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        }
        .bearer_auth(&tenant.token)
        .header("x-current-org", &tenant.org);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    /// Polls a job until it is finished, as a client would.
    async fn wait(&self, tenant: &Tenant, id: &str) -> Value {
        for _ in 0..400 {
            let (status, job) = self
                .call(tenant, "GET", &format!("/api/v1/ai/jobs/{id}"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if job["progress"]["done"] == job["progress"]["total"] {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("job {id} did not finish");
    }
}

fn item(id: &str, prompt: &str) -> Value {
    json!({"id": id, "messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test]
async fn a_batch_is_answered_item_by_item_with_failures_reported() {
    let gw = start().await;
    let tenant = gw.tenant("batch@example.com", "batch").await;
    // (On a plan whose minute has room for every delivery of the failing item.)
    gw.set_plan(&tenant, "pro").await;
    // GIVEN a batch of three chats, one of which the provider always fails
    let (status, accepted) = gw
        .call(
            &tenant,
            "POST",
            "/api/v1/ai/jobs",
            Some(json!({"model": "gpt-4o-mini", "items": [
                item("a", "[sim:echo]first"),
                item("b", "[sim:status=500] second"),
                item("c", "[sim:echo]third"),
            ]})),
        )
        .await;
    // THEN it is accepted at once
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["total"], 3);
    let id = accepted["id"].as_str().expect("id");

    // AND once done, each item has its own result or reason
    let job = gw.wait(&tenant, id).await;
    assert_eq!(job["status"], "partially_failed", "{job}");
    assert_eq!(
        job["progress"],
        json!({"done": 3, "total": 3, "succeeded": 2, "failed": 1})
    );
    let items = job["items"].as_array().expect("items");
    let by_id = |id: &str| items.iter().find(|i| i["id"] == id).expect("item").clone();
    assert_eq!(by_id("a")["result"]["message"], "first");
    assert!(by_id("a")["result"]["cost"]
        .as_f64()
        .is_some_and(|c| c > 0.0));
    assert_eq!(by_id("c")["result"]["message"], "third");
    assert_eq!(by_id("b")["status"], "failed");
    assert!(
        by_id("b")["error"]
            .as_str()
            .expect("reason")
            .contains("Provider openai"),
        "{job}"
    );

    // AND only the answered items were metered
    let (_, usage) = gw.call(&tenant, "GET", "/api/v1/ai/usage", None).await;
    assert_eq!(usage["total_messages"], 2);
}

#[tokio::test]
async fn a_full_minute_makes_items_wait_not_fail() {
    let gw = start().await;
    let tenant = gw.tenant("wait@example.com", "wait").await;
    // GIVEN the free plan's 5 requests a minute, two seconds left in it, and a batch of 7 whose
    // submission takes one of the 5
    gw.clock.advance(time::Duration::seconds(48));
    let items: Vec<Value> = (0..7).map(|i| item(&format!("i{i}"), "hi")).collect();
    let (status, accepted) = gw
        .call(
            &tenant,
            "POST",
            "/api/v1/ai/jobs",
            Some(json!({"items": items})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = accepted["id"].as_str().expect("id").to_owned();
    // WHEN four are done, the other three wait in the queue
    for _ in 0..100 {
        let (_, job) = gw
            .call(&tenant, "GET", &format!("/api/v1/ai/jobs/{id}"), None)
            .await;
        if job["progress"]["succeeded"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, job) = gw
        .call(&tenant, "GET", &format!("/api/v1/ai/jobs/{id}"), None)
        .await;
    assert_eq!(job["progress"]["succeeded"], 4, "{job}");
    assert_eq!(job["progress"]["failed"], 0, "{job}");
    // THEN the next minute they are answered (their messages arrive two to four seconds later)
    gw.clock.advance(time::Duration::seconds(60));
    let job = gw.wait(&tenant, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test]
async fn jobs_are_listed_newest_first_and_private_to_their_org() {
    let gw = start().await;
    let tenant = gw.tenant("list@example.com", "list").await;
    let mut ids = Vec::new();
    for prompt in ["one", "two", "three"] {
        let (status, accepted) = gw
            .call(
                &tenant,
                "POST",
                "/api/v1/ai/jobs",
                Some(json!({"messages": [{"role": "user", "content": prompt}]})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(accepted["id"].as_str().expect("id").to_owned());
    }
    let (_, page) = gw
        .call(&tenant, "GET", "/api/v1/ai/jobs?limit=2", None)
        .await;
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    let next = page["next"].as_str().expect("a next page");
    let (_, page) = gw
        .call(
            &tenant,
            "GET",
            &format!("/api/v1/ai/jobs?limit=2&after={next}"),
            None,
        )
        .await;
    assert_eq!(page["jobs"][0]["id"], ids[0].as_str());
    assert_eq!(page["next"], Value::Null);

    // Another org's member cannot see them.
    let other = gw.tenant("other@example.com", "other").await;
    let (status, _) = gw
        .call(&other, "GET", &format!("/api/v1/ai/jobs/{}", ids[0]), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = gw.call(&other, "GET", "/api/v1/ai/jobs", None).await;
    assert_eq!(page["jobs"], json!([]));
}

#[tokio::test]
async fn bad_submissions_are_refused_before_anything_is_queued() {
    let gw = start().await;
    let tenant = gw.tenant("bad@example.com", "bad").await;
    let too_many: Vec<Value> = (0..51).map(|i| item(&format!("i{i}"), "hi")).collect();
    for (body, status, detail) in [
        (
            json!({"items": [item("a", "x"), item("a", "y")]}),
            422,
            "items[1].id",
        ),
        (json!({"items": too_many}), 422, "items:"),
        (json!({"items": []}), 422, "items:"),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "items": [item("a", "y")]}),
            422,
            "body:",
        ),
        (
            json!({"items": [item("a", "x"), {"id": "b", "messages": [{"role": "robot", "content": "x"}]}]}),
            422,
            "items[1].messages[0].role",
        ),
        (
            json!({"model": "claude-3-haiku", "messages": [{"role": "user", "content": "x"}]}),
            403,
            "Model claude-3-haiku not available",
        ),
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "Unknown model nope",
        ),
    ] {
        let (got, body) = gw
            .call(&tenant, "POST", "/api/v1/ai/jobs", Some(body))
            .await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert!(
            body["detail"].as_str().expect("detail").starts_with(detail),
            "{body}"
        );
    }
    let (_, page) = gw.call(&tenant, "GET", "/api/v1/ai/jobs", None).await;
    assert_eq!(page["jobs"], json!([]));
}

#[tokio::test]
async fn a_submission_is_metered_like_a_chat() {
    let gw = start().await;
    let tenant = gw.tenant("metered@example.com", "metered").await;
    let chat = || {
        gw.http
            .post(format!("{}/api/v1/ai/chat", gw.base))
            .bearer_auth(&tenant.token)
            .header("x-current-org", &tenant.org)
            .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
    };
    // GIVEN one of the free plan's 50 messages used
    assert_eq!(chat().send().await.expect("chat").status(), StatusCode::OK);
    // WHEN a batch of 50 is submitted, THEN it is refused whole: 49 messages are left
    let items: Vec<Value> = (0..50).map(|i| item(&format!("i{i}"), "hi")).collect();
    let (status, refused) = gw
        .call(
            &tenant,
            "POST",
            "/api/v1/ai/jobs",
            Some(json!({"items": items})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(
        refused["detail"],
        "Monthly limit exceeded. Upgrade your plan to continue."
    );
    // AND a batch that fits takes a slot of the minute, as a chat does; the refused one took none
    let response = gw
        .http
        .post(format!("{}/api/v1/ai/jobs", gw.base))
        .bearer_auth(&tenant.token)
        .header("x-current-org", &tenant.org)
        .json(&json!({"items": [item("one", "hi")]}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "3");
}
