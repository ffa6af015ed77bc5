//! The metered path on every store: a call whose future is dropped mid-flight still settles (its
//! hold released, its input charged), and usage an upstream over-reports is bounded by the hold,
//! so no counter can be corrupted by what a provider claims.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::routing::post;
use axum::{Json, Router};
use gateway::chat::{self, ChatBody};
use gateway::config::Settings;
use gateway::ids::{OrgId, PlanId, UserId};
use gateway::metered;
use gateway::store::{
    Admission, AdmitOutcome, DailyUsage, MeterStore, MonthCounter, Outcome, Party, RequestPage,
    RequestRecord, Settlement, Slot, Store, StoreError, Stores, Throttle,
};
use gateway::AppState;
use serde_json::json;

const SECRET: &str = "metered-secret-metered-secret-metered";

/// A server on loopback; its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// An OpenAI upstream that answers every chat claiming the largest usage a u64 can hold.
async fn lying_upstream() -> String {
    let answer = || async {
        Json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX, "total_tokens": u64::MAX}
        }))
    };
    serve(Router::new().route("/v1/chat/completions", post(answer))).await
}

/// The gateway's state over `store`, its providers at `upstream`, and an org on the pro plan
/// whose owner is the returned user.
async fn gateway<S: Store + 'static>(store: &Arc<S>, upstream: &str) -> (AppState, OrgId, Party) {
    let settings = Settings::local(SECRET, upstream, Some("sk-test"));
    gateway_on(store, &settings, "pro").await
}

/// The gateway's state over `store` with `settings`, and an org on `plan` whose owner is the
/// returned party.
async fn gateway_on<S: Store + 'static>(
    store: &Arc<S>,
    settings: &Settings,
    plan: &str,
) -> (AppState, OrgId, Party) {
    let state = AppState::new(settings, Stores::from(store.clone())).expect("state");
    let owner = UserId::generate();
    let org = common::org(
        &format!("m-{}", &OrgId::generate().as_str()[..8]),
        &owner,
        "2026-11-01T00:00:00Z",
    );
    store
        .create_org(&org, "2026-11-01T00:00:00Z")
        .await
        .expect("org");
    store
        .set_plan(&org.id, &PlanId::from(plan))
        .await
        .expect("plan");
    (state, org.id, Party::User(owner))
}

fn input(
    model: &str,
    prompt: &str,
    max_tokens: u32,
) -> Result<chat::ChatInput, gateway::GatewayError> {
    let body: ChatBody = serde_json::from_value(json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}]
    }))
    .expect("body");
    chat::validate(body)
}

/// The month's counter once its holds are all released; fails the test after five seconds.
async fn once_released(store: &Arc<dyn Store>, org: &OrgId, month: &str) -> MonthCounter {
    for _ in 0..100 {
        let counter = store.month_counter(org, month).await.expect("counter");
        if counter.holds.is_empty() {
            return counter;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the hold was not released");
}

async fn only_record(store: &Arc<dyn Store>, org: &OrgId, month: &str) -> RequestRecord {
    let records = store.requests(org, month).await.expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().expect("one record")
}

async fn a_dropped_call_settles_and_releases_its_hold<S: Store + 'static>(store: Arc<S>) {
    // GIVEN an admitted call to a provider that takes five seconds to answer
    let (state, org, user) = gateway(&store, &common::simulator().await).await;
    let store: Arc<dyn Store> = store;
    let month = gateway::clock::month_of(state.clock.now());
    let admitted = metered::admit(
        &state,
        &user,
        org.clone(),
        input("gemini-1.5-flash", "[sim:latency_ms=5000] tell me", 500),
    )
    .await
    .expect("admitted");
    let hold = store.month_counter(&org, &month).await.expect("counter");
    assert_eq!(hold.holds.len(), 1);

    // WHEN its future is dropped while the provider works (a client that closed the connection)
    let cut = tokio::time::timeout(Duration::from_millis(300), admitted.complete()).await;
    assert!(cut.is_err(), "the provider was still working");

    // THEN the hold is released at once, the message counts and the input sent is charged
    let counter = once_released(&store, &org, &month).await;
    assert_eq!(counter.messages, 1);
    assert_eq!(counter.committed, counter.tokens);
    let record = only_record(&store, &org, &month).await;
    assert_eq!(record.outcome, Outcome::Success);
    assert_eq!(
        record.error_message.as_deref(),
        Some("usage estimated: the client disconnected")
    );
    assert!(record.input_tokens > 0, "{record:?}");
    assert_eq!(record.output_tokens, 0);
    assert_eq!(counter.tokens, record.input_tokens);
    // AND the next request of the org is not clamped by a dead hold: it may use all it asks for
    let next = metered::admit(
        &state,
        &user,
        org.clone(),
        input("gemini-1.5-flash", "hi", 4_096),
    )
    .await
    .expect("admitted");
    assert_eq!(next.chat().request.max_tokens, 4_096);
    next.complete().await.expect("answered");
}

/// A meter whose admissions wait `delay` before they reach `inner` (a store slow to answer), and
/// say when one has begun.
struct SlowAdmissions {
    inner: Arc<dyn MeterStore>,
    delay: Duration,
    begun: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl MeterStore for SlowAdmissions {
    async fn take_slot(&self, slot: &Slot) -> Result<Option<u64>, StoreError> {
        self.inner.take_slot(slot).await
    }
    async fn give_slot_back(&self, slot: &Slot) -> Result<(), StoreError> {
        self.inner.give_slot_back(slot).await
    }
    async fn recount_in_flight(
        &self,
        org: &OrgId,
        month: &str,
        seen: u64,
        holds: u64,
    ) -> Result<(), StoreError> {
        self.inner.recount_in_flight(org, month, seen, holds).await
    }
    async fn throttle(&self, counter: &Throttle) -> Result<bool, StoreError> {
        self.inner.throttle(counter).await
    }
    async fn throttled(&self, counter: &Throttle) -> Result<u64, StoreError> {
        self.inner.throttled(counter).await
    }
    async fn admit(&self, admission: &Admission) -> Result<AdmitOutcome, StoreError> {
        self.begun.notify_one();
        tokio::time::sleep(self.delay).await;
        self.inner.admit(admission).await
    }
    async fn settle(&self, settlement: &Settlement) -> Result<(), StoreError> {
        self.inner.settle(settlement).await
    }
    async fn month_counter(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError> {
        self.inner.month_counter(org, month).await
    }
    async fn daily_usage(&self, org: &OrgId, month: &str) -> Result<Vec<DailyUsage>, StoreError> {
        self.inner.daily_usage(org, month).await
    }
    async fn recent_requests(
        &self,
        org: &OrgId,
        month: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<RequestPage, StoreError> {
        self.inner.recent_requests(org, month, limit, after).await
    }
    async fn requests(&self, org: &OrgId, month: &str) -> Result<Vec<RequestRecord>, StoreError> {
        self.inner.requests(org, month).await
    }
}

async fn a_call_dropped_while_it_is_admitted_gives_everything_back<S: Store + 'static>(
    store: Arc<S>,
) {
    // GIVEN a store that takes 300 ms to admit a request
    let (mut state, org, user) = gateway(&store, &common::simulator().await).await;
    let begun = Arc::new(tokio::sync::Notify::new());
    state.stores.meter = Arc::new(SlowAdmissions {
        inner: store.clone(),
        delay: Duration::from_millis(300),
        begun: begun.clone(),
    });
    let store: Arc<dyn Store> = store;
    let month = gateway::clock::month_of(state.clock.now());

    // WHEN the caller goes away once its request's admission has begun
    let chat = input("gemini-1.5-flash", "hi", 500);
    tokio::select! {
        _ = metered::admit(&state, &user, org.clone(), chat) => {
            panic!("admitted before the store answered")
        }
        () = begun.notified() => {}
    }

    // THEN the admission still ends, and the call it made settles as abandoned: the message is
    // given back, no token is charged, and no hold is left behind
    let mut records = Vec::new();
    for _ in 0..100 {
        records = store.requests(&org, &month).await.expect("records");
        if !records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].outcome, Outcome::Failed);
    assert_eq!(
        records[0].error_message.as_deref(),
        Some("the client disconnected")
    );
    let counter = once_released(&store, &org, &month).await;
    assert_eq!((counter.messages, counter.tokens), (0, 0));
}

async fn over_reported_usage_is_bounded_by_the_hold<S: Store + 'static>(store: Arc<S>) {
    // GIVEN an upstream that claims u64::MAX input and output tokens for every answer
    let (state, org, user) = gateway(&store, &lying_upstream().await).await;
    let store: Arc<dyn Store> = store;
    let month = gateway::clock::month_of(state.clock.now());
    let admitted = metered::admit(&state, &user, org.clone(), input("gpt-4o-mini", "hi", 100))
        .await
        .expect("admitted");
    let held = store
        .month_counter(&org, &month)
        .await
        .expect("counter")
        .committed;

    // WHEN it answers
    let (answer, _) = admitted.complete().await.expect("answered");

    // THEN the usage counted is what the request held, never more: the output its max_tokens,
    // the input the rest of its hold
    assert_eq!(answer.usage.output_tokens, 100);
    assert_eq!(answer.usage.total(), held);
    let counter = once_released(&store, &org, &month).await;
    assert_eq!(counter.tokens, held);
    assert_eq!(counter.committed, held);
    assert_eq!(counter.messages, 1);
    let record = only_record(&store, &org, &month).await;
    assert_eq!(
        (record.input_tokens, record.output_tokens),
        (held - 100, 100)
    );
    // AND the cost is that usage's price, the day's aggregate the same usage
    assert_eq!(record.cost, (held - 100) * 150 + 100 * 600);
    let days = store.daily_usage(&org, &month).await.expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(
        (days[0].total_tokens, days[0].estimated_cost),
        (held, record.cost)
    );
    // AND the org can go on: a second answer counts the same again, nothing wrapped
    let again = metered::admit(&state, &user, org.clone(), input("gpt-4o-mini", "hi", 100))
        .await
        .expect("admitted");
    again.complete().await.expect("answered");
    let counter = once_released(&store, &org, &month).await;
    assert_eq!(counter.tokens, 2 * held);
}

/// A chat of whoever holds `key`, as `/v1/chat/completions` admits it.
async fn admit_with_key(
    state: &AppState,
    key: &str,
) -> Result<metered::Admitted, gateway::GatewayError> {
    let (identity, org) = gateway::api_keys::resolve(state, key).await?;
    let input = input("gpt-4o-mini", "hi", 50);
    metered::admit(state, &Party::Key(identity), org, input).await
}

async fn a_revoked_key_stops_on_the_next_request_in_every_process<S: Store + 'static>(
    store: Arc<S>,
) {
    // GIVEN two processes on one store, and an org key that the first has used (and remembers)
    let upstream = common::simulator().await;
    let (first, org, owner) = gateway(&store, &upstream).await;
    let settings = Settings::local(SECRET, &upstream, Some("sk-test"));
    let second = AppState::new(&settings, Stores::from(store.clone())).expect("state");
    let new =
        gateway::api_keys::generate(&first, &org, "backend".into(), owner.user()).expect("key");
    store.create_key(&new.record).await.expect("stored");
    let key = new.secret.expose();
    let answered = admit_with_key(&first, key).await.expect("admitted");
    answered.complete().await.expect("answered");
    // WHEN the second process revokes it
    assert!(second
        .stores
        .keys
        .revoke_key(&org, &new.record.id)
        .await
        .expect("revoked"));
    // THEN the first refuses it on the very next request, having taken nothing for it
    let refused = admit_with_key(&first, key).await;
    assert!(
        matches!(
            refused,
            Err(gateway::GatewayError::Auth(
                gateway::error::AuthError::InvalidApiKey
            ))
        ),
        "{:?}",
        refused.err()
    );
    let month = gateway::clock::month_of(first.clock.now());
    let store: Arc<dyn Store> = store;
    let counter = store.month_counter(&org, &month).await.expect("counter");
    assert_eq!((counter.messages, counter.holds.len()), (1, 0));
    // AND the request the key made is on record under the key and its creator
    let record = only_record(&store, &org, &month).await;
    assert_eq!(record.api_key.as_ref(), Some(&new.record.id));
    assert_eq!(&record.user, owner.user());
}

on_every_store!(
    a_dropped_call_settles_and_releases_its_hold,
    a_call_dropped_while_it_is_admitted_gives_everything_back,
    over_reported_usage_is_bounded_by_the_hold,
    a_revoked_key_stops_on_the_next_request_in_every_process,
);
