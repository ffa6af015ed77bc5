//! The sample events in `events/` (what `cargo lambda invoke --data-file` sends) drive the very
//! handlers each function runs, as API Gateway would deliver them.

use std::sync::Arc;

use gateway::config::Settings;
use gateway::store::memory::MemoryStore;
use gateway::store::Stores;
use gateway::AppState;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

async fn state() -> AppState {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(simulator::serve(
        listener,
        simulator::SimulatorConfig::default(),
    ));
    let settings = Settings::local(
        "events-secret-events-secret-events",
        &url,
        Some("simulated-key"),
    );
    let (queue, receiver) = gateway::queue::LocalQueue::new();
    // Kept open and never read: the test delivers the messages itself, as SQS events.
    std::mem::forget(receiver);
    AppState::new(&settings, Stores::from(Arc::new(MemoryStore::new())))
        .expect("state")
        .with_queue(Arc::new(queue))
}

fn event(json: &str, token: &str, org: &str) -> lambda_http::Request {
    let json = json
        .replace("REPLACE_WITH_TOKEN", token)
        .replace("REPLACE_WITH_ORG_ID", org);
    lambda_http::request::from_str(&json).expect("a valid API Gateway event")
}

fn body(response: &http::Response<lambda_http::Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).expect("JSON body")
}

#[tokio::test]
async fn every_sample_event_is_answered_by_its_function() {
    let state = state().await;

    // GIVEN the register and login events
    let response = gateway::api::register(
        &state,
        event(include_str!("../../events/auth-register.json"), "", ""),
    )
    .await
    .expect("handler");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        body(&response)
    );
    let response = gateway::api::login(
        &state,
        event(include_str!("../../events/auth-login.json"), "", ""),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::OK, "{:?}", body(&response));
    let token = body(&response)["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // WHEN the org events carry that token
    let response = gateway::api::create_org(
        &state,
        event(include_str!("../../events/orgs-create.json"), &token, ""),
    )
    .await
    .expect("handler");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        body(&response)
    );
    let org = body(&response)["id"].as_str().expect("org id").to_owned();
    let response = gateway::api::list_orgs(
        &state,
        event(include_str!("../../events/orgs-list.json"), &token, ""),
    )
    .await
    .expect("handler");
    assert_eq!(body(&response).as_array().map(Vec::len), Some(1));

    // THEN the AI events are answered for that org
    let response = gateway::api::models(
        &state,
        event(include_str!("../../events/ai-models.json"), &token, &org),
    )
    .await
    .expect("handler");
    assert_eq!(body(&response)["plan"], "free");
    let response = gateway::api::chat(
        &state,
        event(include_str!("../../events/ai-chat.json"), &token, &org),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::OK, "{:?}", body(&response));
    assert_eq!(body(&response)["model"], "gemini-1.5-flash");

    let response = gateway::api::usage(
        &state,
        event(include_str!("../../events/ai-usage.json"), &token, &org),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::OK, "{:?}", body(&response));
    assert_eq!(body(&response)["month"], "2026-10");
    let response = gateway::api::requests(
        &state,
        event(include_str!("../../events/ai-requests.json"), &token, &org),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::OK, "{:?}", body(&response));
    let listed = body(&response);
    assert_eq!(listed["requests"][0]["model"], "gemini-1.5-flash");
    assert_eq!(listed["requests"][0]["status"], "success");

    // AND the dashboard page is served as HTML that calls this API
    let response =
        gateway::api::dashboard(event(include_str!("../../events/dashboard.json"), "", ""));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let page = std::str::from_utf8(response.body().as_ref()).expect("UTF-8 page");
    assert!(
        page.contains("/api/v1/ai/usage"),
        "the page reads the usage API"
    );

    // AND a batch job is accepted, worked from its SQS event, and polled
    let response = gateway::api::submit_job(
        &state,
        event(include_str!("../../events/jobs-submit.json"), &token, &org),
    )
    .await
    .expect("handler");
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        body(&response)
    );
    let job = body(&response)["id"].as_str().expect("job id").to_owned();
    let worker_event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_str(
        &include_str!("../../events/jobs-worker.json").replace("REPLACE_WITH_JOB_ID", &job),
    )
    .expect("an SQS event");
    let outcome = gateway::jobs::handle_batch(&state, worker_event, 3).await;
    // The job item is answered; the poison message is reported back for redelivery.
    let failed: Vec<&str> = outcome
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"]);
    let get = include_str!("../../events/jobs-get.json").replace("REPLACE_WITH_JOB_ID", &job);
    let response = gateway::api::get_job(&state, event(&get, &token, &org))
        .await
        .expect("handler");
    assert_eq!(response.status(), StatusCode::OK, "{:?}", body(&response));
    assert_eq!(body(&response)["progress"]["succeeded"], 1);
    let response = gateway::api::list_jobs(
        &state,
        event(include_str!("../../events/jobs-list.json"), &token, &org),
    )
    .await
    .expect("handler");
    assert_eq!(body(&response)["jobs"][0]["id"], job.as_str());

    // AND an API key is created for the org, and the OpenAI-compatible events use it
    let response = gateway::api::keys::create_key(
        &state,
        event(
            include_str!("../../events/api-keys-create.json"),
            &token,
            &org,
        ),
    )
    .await
    .expect("handler");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        body(&response)
    );
    let key = body(&response)["key"].as_str().expect("key").to_owned();
    let key_id = body(&response)["id"].as_str().expect("key id").to_owned();
    let with_key = |json: &str| event(&json.replace("REPLACE_WITH_API_KEY", &key), "", "");
    let response = gateway::api::openai::chat_completions(
        &state,
        with_key(include_str!("../../events/openai-chat.json")),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::OK);
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let answer: Value = serde_json::from_slice(&answer).expect("JSON body");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "gpt-4o-mini");
    let response = gateway::api::openai::models(
        &state,
        with_key(include_str!("../../events/openai-models.json")),
    )
    .await
    .expect("handler");
    assert_eq!(body(&response)["data"][0]["object"], "model");
    let response = gateway::api::openai::models(
        &state,
        with_key(include_str!("../../events/openai-model.json")),
    )
    .await
    .expect("handler");
    assert_eq!(body(&response)["id"], "gpt-4o-mini");
    let response = gateway::api::keys::list_keys(
        &state,
        event(
            include_str!("../../events/api-keys-list.json"),
            &token,
            &org,
        ),
    )
    .await
    .expect("handler");
    assert_eq!(body(&response)["keys"][0]["id"], key_id.as_str());
    let revoke =
        include_str!("../../events/api-keys-revoke.json").replace("REPLACE_WITH_KEY_ID", &key_id);
    let response = gateway::api::keys::revoke_key(&state, event(&revoke, &token, &org))
        .await
        .expect("handler");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = gateway::api::openai::models(
        &state,
        with_key(include_str!("../../events/openai-models.json")),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // AND the placeholders alone are refused, not crashed on
    let response = gateway::api::chat(
        &state,
        lambda_http::request::from_str(include_str!("../../events/ai-chat.json")).expect("event"),
    )
    .await
    .expect("handler");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
