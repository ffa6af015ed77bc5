//! Provider failures absorbed on the one metered path, on every store: transient failures retried
//! to success and charged once, persistent ones given back, a provider's 400 never retried,
//! `Retry-After` honoured, fallbacks (on failure and on timeout, skipping those outside the plan)
//! metered under the model that answered, and streams retried only before their first event.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::catalog::RetryPolicy;
use gateway::chat::{self, ChatBody};
use gateway::config::Settings;
use gateway::ids::{ModelId, OrgId, PlanId, UserId};
use gateway::metered::{self, StreamEnd};
use gateway::store::{Outcome, Party, RequestRecord, Store, Stores};
use gateway::AppState;
use serde_json::json;

const SECRET: &str = "resilience-secret-resilience-secret";

/// A gateway whose `gpt-4o-mini` falls back to `claude-3-haiku` (outside the free plan), then to
/// `gemini-1.5-flash`; retries are quick, and an attempt waits 300 ms for its first byte. Its
/// org is on the free plan.
async fn gateway<S: Store + 'static>(store: &Arc<S>) -> (AppState, OrgId, Party) {
    let mut settings = Settings::local(SECRET, &common::simulator().await, Some("sk-test"));
    settings.catalog.retries = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    settings.providers.request_timeout = Duration::from_millis(300);
    let fallbacks = vec![
        ModelId::from("claude-3-haiku"),
        ModelId::from("gemini-1.5-flash"),
    ];
    settings
        .catalog
        .models
        .get_mut(&ModelId::from("gpt-4o-mini"))
        .expect("model")
        .fallbacks = fallbacks;
    let state = AppState::new(&settings, Stores::from(store.clone())).expect("state");
    let owner = UserId::generate();
    let org = common::org("resilient", &owner, "2026-11-01T00:00:00Z");
    store
        .create_org(&org, "2026-11-01T00:00:00Z")
        .await
        .expect("org");
    store
        .set_plan(&org.id, &PlanId::from("free"))
        .await
        .expect("plan");
    (state, org.id, Party::User(owner))
}

fn input(model: &str, prompt: &str) -> Result<chat::ChatInput, gateway::GatewayError> {
    let body: ChatBody = serde_json::from_value(json!({
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": prompt}]
    }))
    .expect("body");
    chat::validate(body)
}

async fn admit(
    state: &AppState,
    who: &(OrgId, Party),
    model: &str,
    prompt: &str,
) -> metered::Admitted {
    metered::admit(state, &who.1, who.0.clone(), input(model, prompt))
        .await
        .expect("admitted")
}

/// The org's one request record and its month's message count.
async fn recorded(store: &Arc<dyn Store>, state: &AppState, org: &OrgId) -> (RequestRecord, u64) {
    let month = gateway::clock::month_of(state.clock.now());
    let records = store.requests(org, &month).await.expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    let counter = store.month_counter(org, &month).await.expect("counter");
    assert!(counter.holds.is_empty(), "{counter:?}");
    (records[0].clone(), counter.messages)
}

async fn transient_failures_are_retried_and_charged_once<S: Store + 'static>(store: Arc<S>) {
    // GIVEN a provider that fails a request twice with 503, then answers
    let (state, org, party) = gateway(&store).await;
    let call = admit(
        &state,
        &(org.clone(), party),
        "gemini-1.5-flash",
        "[sim:flaky=2] hi",
    )
    .await;
    // WHEN it is called
    let (answer, model) = call.complete().await.expect("answered after retries");
    // THEN the answer is charged once, after three attempts
    assert_eq!(model.as_str(), "gemini-1.5-flash");
    let store: Arc<dyn Store> = store;
    let (record, messages) = recorded(&store, &state, &org).await;
    assert_eq!(
        (record.outcome, record.attempts, messages),
        (Outcome::Success, 3, 1)
    );
    assert_eq!(
        record.input_tokens + record.output_tokens,
        answer.usage.total()
    );
}

async fn a_persistent_failure_gives_the_message_back<S: Store + 'static>(store: Arc<S>) {
    // GIVEN a provider that keeps answering 503, and a model without fallbacks
    let (state, org, party) = gateway(&store).await;
    let call = admit(
        &state,
        &(org.clone(), party),
        "gemini-1.5-flash",
        "[sim:status=503] hi",
    )
    .await;
    // WHEN it is called, THEN it fails with the provider's 502 after every attempt
    let err = call.complete().await.expect_err("failed");
    assert_eq!(err.status().as_u16(), 502);
    let store: Arc<dyn Store> = store;
    let (record, messages) = recorded(&store, &state, &org).await;
    assert_eq!(
        (record.outcome, record.attempts, messages),
        (Outcome::Failed, 3, 0)
    );
}

async fn a_providers_400_is_neither_retried_nor_fallen_back_from<S: Store + 'static>(
    store: Arc<S>,
) {
    // GIVEN a provider that refuses the request as invalid, on a model with fallbacks
    let (state, org, party) = gateway(&store).await;
    let call = admit(
        &state,
        &(org.clone(), party),
        "gpt-4o-mini",
        "[sim:status=400] hi",
    )
    .await;
    // WHEN it is called, THEN one attempt was made, and nobody else was asked
    call.complete().await.expect_err("refused");
    let store: Arc<dyn Store> = store;
    let (record, _) = recorded(&store, &state, &org).await;
    assert_eq!((record.attempts, record.model.as_str()), (1, "gpt-4o-mini"));
}

async fn retry_after_is_honoured<S: Store + 'static>(store: Arc<S>) {
    // GIVEN a provider that fails once and asks for a second's rest (backoff alone is ≤ 10 ms)
    let (state, org, party) = gateway(&store).await;
    let prompt = "[sim:flaky=1][sim:retry_after=1] hi";
    let call = admit(&state, &(org, party), "gemini-1.5-flash", prompt).await;
    // WHEN it is called, THEN the retry waited the second it was asked to
    let started = Instant::now();
    call.complete().await.expect("answered");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

async fn a_failing_model_falls_back_and_is_metered_under_the_one_that_answered<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    // GIVEN gpt-4o-mini's provider failing, its first fallback outside the plan, its second in it
    let (state, org, party) = gateway(&store).await;
    let prompt = "[sim:status=503@openai] hi";
    let call = admit(&state, &(org.clone(), party), "gpt-4o-mini", prompt).await;
    // WHEN it is called
    let (answer, model) = call.complete().await.expect("answered by a fallback");
    // THEN Gemini answered (Claude was skipped), and the request is metered as Gemini's
    assert_eq!(model.as_str(), "gemini-1.5-flash");
    let store: Arc<dyn Store> = store;
    let (record, messages) = recorded(&store, &state, &org).await;
    assert_eq!(
        (
            record.model.as_str(),
            record.requested_model.as_str(),
            record.attempts,
            messages
        ),
        ("gemini-1.5-flash", "gpt-4o-mini", 4, 1)
    );
    let gemini = state.catalog.model(&model).expect("model");
    let used = answer.usage;
    assert_eq!(
        record.cost,
        gemini.cost(used.input_tokens, used.output_tokens).0
    );
    let month = gateway::clock::month_of(state.clock.now());
    let days = store.daily_usage(&org, &month).await.expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(
        (days[0].model.as_str(), days[0].message_count),
        ("gemini-1.5-flash", 1)
    );
}

async fn a_model_that_times_out_falls_back<S: Store + 'static>(store: Arc<S>) {
    // GIVEN gpt-4o-mini's provider taking two seconds to answer, past the 300 ms first-byte wait
    let (state, org, party) = gateway(&store).await;
    let prompt = "[sim:latency_ms=2000@openai] hi";
    let call = admit(&state, &(org.clone(), party), "gpt-4o-mini", prompt).await;
    // WHEN it is called, THEN the fallback answered within the request's deadline
    let (_, model) = call.complete().await.expect("answered by a fallback");
    assert_eq!(model.as_str(), "gemini-1.5-flash");
    let store: Arc<dyn Store> = store;
    let (record, _) = recorded(&store, &state, &org).await;
    assert_eq!((record.attempts, record.outcome), (4, Outcome::Success));
}

async fn streams_are_retried_before_their_first_event_only<S: Store + 'static>(store: Arc<S>) {
    let (state, org, party) = gateway(&store).await;
    let who = (org.clone(), party);
    // GIVEN a stream refused once before its first event: it is retried, and opens
    let deadline = Instant::now() + Duration::from_secs(10);
    let call = admit(&state, &who, "gemini-1.5-flash", "[sim:flaky=1] tell me").await;
    let mut opened = call
        .open_stream(deadline)
        .await
        .expect("opened on the retry");
    while opened.next_piece().await.is_some() {}
    let summary = opened.finish(StreamEnd::Drained).await;
    assert!(summary.interrupted.is_none());
    // AND a stream that fails after its first tokens is not retried: it ends cut
    let call = admit(&state, &who, "gemini-1.5-flash", "[sim:fail=2] tell me").await;
    let mut opened = call.open_stream(deadline).await.expect("opened");
    let mut pieces = 0;
    while opened.next_piece().await.is_some() {
        pieces += 1;
    }
    assert_eq!(pieces, 2);
    let summary = opened.finish(StreamEnd::Drained).await;
    assert!(summary.interrupted.is_some());
    let store: Arc<dyn Store> = store;
    let month = gateway::clock::month_of(state.clock.now());
    let mut attempts: Vec<u32> = store
        .requests(&org, &month)
        .await
        .expect("records")
        .iter()
        .map(|r| r.attempts)
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2]);
}

async fn a_call_dropped_while_waiting_to_retry_is_given_back<S: Store + 'static>(store: Arc<S>) {
    // GIVEN a provider that failed once and asked for two seconds' rest
    let (state, org, party) = gateway(&store).await;
    let prompt = "[sim:flaky=1][sim:retry_after=2] hi";
    let call = admit(&state, &(org.clone(), party), "gemini-1.5-flash", prompt).await;
    // WHEN the client goes away during that rest, with no provider working for it
    let cut = tokio::time::timeout(Duration::from_millis(500), call.complete()).await;
    assert!(cut.is_err(), "still waiting to retry");
    // THEN nothing is charged: the message is given back, as for a provider failure
    let store: Arc<dyn Store> = store;
    let month = gateway::clock::month_of(state.clock.now());
    let mut counter = store.month_counter(&org, &month).await.expect("counter");
    for _ in 0..100 {
        if counter.holds.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        counter = store.month_counter(&org, &month).await.expect("counter");
    }
    let (record, messages) = recorded(&store, &state, &org).await;
    assert_eq!(
        (record.outcome, messages, record.input_tokens),
        (Outcome::Failed, 0, 0)
    );
}

on_every_store!(
    a_call_dropped_while_waiting_to_retry_is_given_back,
    transient_failures_are_retried_and_charged_once,
    a_persistent_failure_gives_the_message_back,
    a_providers_400_is_neither_retried_nor_fallen_back_from,
    retry_after_is_honoured,
    a_failing_model_falls_back_and_is_metered_under_the_one_that_answered,
    a_model_that_times_out_falls_back,
    streams_are_retried_before_their_first_event_only,
);
