//! Jobs over a real SQS API (moto's server, which `bash infra/scripts/test.sh` starts): jobs are
//! submitted through the handler, queued by `SqsQueue`, received with `ReceiveMessage` and worked
//! by `handle_batch`; the test then does what Lambda's event source mapping does with the answer
//! (delete the messages not reported, make the reported ones visible again), so redelivery, the
//! redrive policy and the dead-letter queue are SQS's own.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use gateway::clock::{self, Clock, ManualClock};
use gateway::config::Settings;
use gateway::ids::{JobId, OrgId, PlanId};
use gateway::queue::{JobMessage, JobQueue, QueueError, SqsQueue};
use gateway::store::memory::MemoryStore;
use gateway::store::{ItemStatus, JobItem, OrgStore, Outcome, Stores, UserStore};
use gateway::AppState;
use http::StatusCode;
use serde_json::{json, Value};
use time::macros::datetime;

/// How long a received message stays hidden. Long enough that nothing comes back behind a test's
/// back on a slow machine: every redelivery here is the test's own `ChangeMessageVisibility 0`.
const VISIBILITY_SECONDS: i32 = 30;

/// A client of the SQS server the test command started, or `None` when the tests run without one
/// (then these tests are skipped, loudly; under CI they fail instead, so a broken harness cannot
/// pass silently).
fn sqs_client() -> Option<aws_sdk_sqs::Client> {
    let Ok(endpoint) = std::env::var("GATEWAY_TEST_SQS_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "GATEWAY_TEST_SQS_ENDPOINT must be set under CI (bash infra/scripts/test.sh sets it)"
        );
        eprintln!(
            "skipping: GATEWAY_TEST_SQS_ENDPOINT is not set (run bash infra/scripts/test.sh)"
        );
        return None;
    };
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    Some(aws_sdk_sqs::Client::from_conf(config))
}

/// One received message, as the worker saw it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    receipt: String,
    body: String,
    receives: u32,
}

impl Received {
    fn item_id(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body["item_id"].as_str().map(str::to_owned)
    }
}

/// What one delivery to the worker saw and answered.
#[derive(Debug)]
struct Delivery {
    received: Vec<Received>,
    /// The message ids `handle_batch` reported as failed.
    failed: Vec<String>,
}

impl Delivery {
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.received.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    }

    fn ids_of_items(&self, items: &[&str]) -> Vec<String> {
        let mut ids: Vec<String> = self
            .received
            .iter()
            .filter(|r| r.item_id().is_some_and(|i| items.contains(&i.as_str())))
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn failed_sorted(&self) -> Vec<String> {
        let mut failed = self.failed.clone();
        failed.sort();
        failed
    }
}

struct Harness {
    state: AppState,
    clock: Arc<ManualClock>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    /// The queue's `maxReceiveCount`, which the worker is told as its `max_receives`.
    max_receives: u32,
    org: OrgId,
    token: String,
}

/// A gateway on a memory store, with the providers simulated in process, a user and their org
/// (free plan), and a fresh queue with its own dead-letter queue.
async fn harness(max_receives: u32) -> Option<Harness> {
    let sqs = sqs_client()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(simulator::serve(
        listener,
        simulator::SimulatorConfig::default(),
    ));

    let name = format!("jobs-{}", uuid::Uuid::new_v4().simple());
    let dlq_url = create_queue(&sqs, &format!("{name}-dlq"), HashMap::new()).await;
    let dlq_arn = queue_arn(&sqs, &dlq_url).await;
    let redrive =
        json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()});
    let queue_url = create_queue(
        &sqs,
        &name,
        HashMap::from([
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            (
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_SECONDS.to_string(),
            ),
        ]),
    )
    .await;
    let queue_arn = queue_arn(&sqs, &queue_url).await;

    let settings = Settings::local(
        "jobs-sqs-secret-jobs-sqs-secret-jobs",
        &url,
        Some("simulated-key"),
    );
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-15 12:00:10 UTC)));
    let state = AppState::new(&settings, Stores::from(store.clone()))
        .expect("state")
        .with_clock(clock.clone())
        .with_queue(Arc::new(SqsQueue::new(sqs.clone(), queue_url.clone())));

    let user = common::user(&format!("{name}@example.com"));
    store.create_user(&user).await.expect("user");
    let org = common::org(&name, &user.id, "2026-11-01T00:00:00Z");
    store
        .create_org(&org, "2026-11-01T00:00:00Z")
        .await
        .expect("org");
    let token = state.tokens.issue(&user.id, &user.email).expect("token");
    Some(Harness {
        state,
        clock,
        sqs,
        queue_url,
        queue_arn,
        dlq_url,
        max_receives,
        org: org.id,
        token,
    })
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> String {
    sqs.create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue URL")
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .expect("a queue ARN")
}

fn item(id: &str, prompt: &str) -> Value {
    json!({"id": id, "messages": [{"role": "user", "content": prompt}]})
}

impl Harness {
    /// `POST /api/v1/ai/jobs` as API Gateway delivers it; the job's id.
    async fn submit(&self, body: Value) -> JobId {
        let (status, accepted) = self.submit_with(&self.state, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        JobId::from(accepted["id"].as_str().expect("job id"))
    }

    /// `POST /api/v1/ai/jobs` handled with `state`: the status and the JSON body.
    async fn submit_with(&self, state: &AppState, body: Value) -> (StatusCode, Value) {
        let mut event: Value = serde_json::from_str(
            &include_str!("../../events/jobs-submit.json")
                .replace("REPLACE_WITH_TOKEN", &self.token)
                .replace("REPLACE_WITH_ORG_ID", self.org.as_str()),
        )
        .expect("the sample event is JSON");
        event["body"] = Value::String(body.to_string());
        let request = lambda_http::request::from_str(&event.to_string()).expect("an API event");
        let response = gateway::api::submit_job(state, request)
            .await
            .expect("handler");
        let body: Value = serde_json::from_slice(response.body().as_ref()).expect("JSON body");
        (response.status(), body)
    }

    /// Receives what the queue has (one batch, as the event source mapping would) and hands it to
    /// the worker, acknowledging nothing.
    async fn deliver(&self) -> Delivery {
        self.deliver_at_least(0).await
    }

    /// Like `deliver`, but first waits (long polling, up to 20 s) until `want` messages are
    /// visible: for messages sent with a delay.
    async fn deliver_at_least(&self, want: usize) -> Delivery {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut messages = Vec::new();
        loop {
            let wait = if messages.len() >= want { 0 } else { 1 };
            let batch = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .wait_time_seconds(wait)
                .send()
                .await
                .expect("ReceiveMessage")
                .messages
                .unwrap_or_default();
            let empty = batch.is_empty();
            messages.extend(batch);
            if (messages.len() >= want && empty) || std::time::Instant::now() > deadline {
                break;
            }
        }
        let mut received = Vec::new();
        let mut event = SqsEvent::default();
        for message in messages {
            let attributes: HashMap<String, String> = message
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| (name.as_str().to_owned(), value))
                .collect();
            let mut record = SqsMessage::default();
            record.message_id = message.message_id.clone();
            record.receipt_handle = message.receipt_handle.clone();
            record.body = message.body.clone();
            record.md5_of_body = message.md5_of_body;
            record.event_source = Some("aws:sqs".to_owned());
            record.event_source_arn = Some(self.queue_arn.clone());
            record.aws_region = Some("us-east-1".to_owned());
            received.push(Received {
                id: message.message_id.expect("a message id"),
                receipt: message.receipt_handle.expect("a receipt handle"),
                body: message.body.unwrap_or_default(),
                receives: attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|c| c.parse().ok())
                    .expect("ApproximateReceiveCount"),
            });
            record.attributes = attributes;
            event.records.push(record);
        }
        let response = gateway::jobs::handle_batch(&self.state, event, self.max_receives).await;
        Delivery {
            received,
            failed: response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect(),
        }
    }

    /// What the event source mapping does with the worker's answer: deletes every message not
    /// reported as failed. The failed ones would come back after the visibility timeout; here
    /// they come back at once.
    async fn acknowledge(&self, delivery: &Delivery) {
        for message in &delivery.received {
            if delivery.failed.contains(&message.id) {
                self.make_visible(message).await;
            } else {
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(&message.receipt)
                    .send()
                    .await
                    .expect("DeleteMessage");
            }
        }
    }

    async fn make_visible(&self, message: &Received) {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&message.receipt)
            .visibility_timeout(0)
            .send()
            .await
            .expect("ChangeMessageVisibility");
    }

    /// One turn of the worker: deliver, then acknowledge.
    async fn work(&self) -> Delivery {
        self.work_at_least(0).await
    }

    /// One turn of the worker once `want` messages are visible.
    async fn work_at_least(&self, want: usize) -> Delivery {
        let delivery = self.deliver_at_least(want).await;
        self.acknowledge(&delivery).await;
        delivery
    }

    /// Messages in the queue, visible or in flight.
    async fn queue_depth(&self) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes
            .unwrap_or_default();
        attributes
            .values()
            .map(|v| v.parse::<u64>().expect("a count"))
            .sum()
    }

    /// The bodies waiting in the dead-letter queue.
    async fn dead_letters(&self) -> Vec<String> {
        let mut bodies: Vec<String> = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("ReceiveMessage (DLQ)")
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.body)
            .collect();
        bodies.sort();
        bodies
    }

    /// The job as its org's members see it (`GET /api/v1/ai/jobs/{id}`).
    async fn job(&self, id: &JobId) -> Value {
        let (job, items) = self
            .state
            .stores
            .jobs
            .job(id)
            .await
            .expect("store")
            .expect("the job exists");
        serde_json::to_value(gateway::jobs::view(job, Some(items))).expect("JSON")
    }

    async fn items(&self, id: &JobId) -> HashMap<String, JobItem> {
        let (_, items) = self
            .state
            .stores
            .jobs
            .job(id)
            .await
            .expect("store")
            .expect("the job exists");
        items.into_iter().map(|i| (i.id.clone(), i)).collect()
    }

    /// This month's request records, successes only.
    async fn answered(&self) -> usize {
        let month = clock::month_of(self.clock.now());
        self.state
            .stores
            .meter
            .requests(&self.org, &month)
            .await
            .expect("requests")
            .iter()
            .filter(|r| r.outcome == Outcome::Success)
            .count()
    }

    async fn set_plan(&self, plan: &str) {
        self.state
            .stores
            .orgs
            .set_plan(&self.org, &PlanId::from(plan))
            .await
            .expect("set plan");
    }
}

fn job_message(job: &JobId, item: &str) -> String {
    json!({"job_id": job.as_str(), "item_id": item}).to_string()
}

#[tokio::test]
async fn a_queued_batch_is_answered_and_its_messages_deleted() {
    let Some(h) = harness(2).await else { return };
    // GIVEN a batch of three chats submitted through the handler
    let job = h
        .submit(json!({"items": [
            item("a", "[sim:echo]first"),
            item("b", "[sim:echo]second"),
            item("c", "[sim:echo]third"),
        ]}))
        .await;
    assert_eq!(h.queue_depth().await, 3, "one message per item");

    // WHEN the worker receives them from SQS
    let delivery = h.work().await;

    // THEN every item succeeded and none was reported back
    assert_eq!(delivery.received.len(), 3);
    assert_eq!(delivery.failed, Vec::<String>::new());
    let view = h.job(&job).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(
        view["progress"],
        json!({"done": 3, "total": 3, "succeeded": 3, "failed": 0})
    );
    let items = view["items"].as_array().expect("items");
    for (id, text) in [("a", "first"), ("b", "second"), ("c", "third")] {
        let item = items.iter().find(|i| i["id"] == id).expect("item");
        assert_eq!(item["status"], "succeeded", "{item}");
        assert_eq!(item["result"]["message"], text, "{item}");
        assert!(item["result"]["usage"]["total_tokens"].as_u64() > Some(0));
    }
    // AND the queue is empty
    assert_eq!(h.queue_depth().await, 0);
    assert_eq!(h.dead_letters().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_redelivered_message_is_not_answered_twice() {
    let Some(h) = harness(3).await else { return };
    // GIVEN a batch of two worked once, whose messages were not deleted (the worker's answer was
    // lost, say) and come back
    let job = h
        .submit(json!({"items": [item("a", "one"), item("b", "two")]}))
        .await;
    let first = h.deliver().await;
    assert_eq!(first.failed, Vec::<String>::new());
    assert_eq!(h.answered().await, 2);
    for message in &first.received {
        h.make_visible(message).await;
    }

    // WHEN they are delivered again
    let again = h.work().await;

    // THEN they are the same messages, now acknowledged without being worked again
    assert_eq!(again.ids(), first.ids());
    assert!(again.received.iter().all(|m| m.receives == 2));
    assert_eq!(again.failed, Vec::<String>::new());
    assert_eq!(h.answered().await, 2, "one request record per item");
    let view = h.job(&job).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(
        view["progress"],
        json!({"done": 2, "total": 2, "succeeded": 2, "failed": 0})
    );
    assert_eq!(h.queue_depth().await, 0);
}

#[tokio::test]
async fn a_duplicate_message_in_the_same_batch_is_answered_once() {
    let Some(h) = harness(3).await else { return };
    // GIVEN an item whose message SQS holds twice (at-least-once delivery)
    let job = h.submit(json!({"items": [item("a", "one")]})).await;
    h.sqs
        .send_message()
        .queue_url(&h.queue_url)
        .message_body(job_message(&job, "a"))
        .send()
        .await
        .expect("SendMessage");

    // WHEN both copies reach the worker together, and whatever it reports comes back
    let first = h.work().await;
    assert_eq!(first.received.len(), 2);
    for _ in 0..2 {
        if h.queue_depth().await == 0 {
            break;
        }
        let again = h.work().await;
        assert_eq!(again.failed, Vec::<String>::new());
    }

    // THEN the item was answered and charged once, and both copies are gone
    assert_eq!(h.answered().await, 1);
    let view = h.job(&job).await;
    assert_eq!(
        view["progress"],
        json!({"done": 1, "total": 1, "succeeded": 1, "failed": 0})
    );
    assert_eq!(h.queue_depth().await, 0);
    assert_eq!(h.dead_letters().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_poison_message_is_reported_until_it_lands_in_the_dlq() {
    let Some(h) = harness(2).await else { return };
    // GIVEN a message that is not a job message at all
    let poison_id = h
        .sqs
        .send_message()
        .queue_url(&h.queue_url)
        .message_body("not a job message")
        .send()
        .await
        .expect("SendMessage")
        .message_id
        .expect("a message id");

    // WHEN the worker gets it as often as the redrive policy allows
    for receive in 1..=2 {
        let delivery = h.work().await;
        // THEN it is reported as failed every time
        assert_eq!(delivery.received.len(), 1);
        assert_eq!(delivery.received[0].receives, receive);
        assert_eq!(delivery.failed, std::slice::from_ref(&poison_id));
    }

    // AND SQS then moves it to the dead-letter queue instead of delivering it again
    let delivery = h.work().await;
    assert!(delivery.received.is_empty(), "{delivery:?}");
    assert_eq!(h.dead_letters().await, ["not a job message"]);
    assert_eq!(h.queue_depth().await, 0);
}

#[tokio::test]
async fn failing_items_are_retried_then_failed_and_dead_lettered() {
    let Some(h) = harness(2).await else { return };
    // The team plan's minute is wide enough that only the provider fails here.
    h.set_plan("team").await;
    // GIVEN a batch where the provider always fails one item
    let job = h
        .submit(json!({"model": "gpt-4o-mini", "items": [
            item("a", "[sim:echo]first"),
            item("b", "[sim:status=500] x"),
            item("c", "[sim:echo]third"),
        ]}))
        .await;

    // WHEN the worker gets it
    let first = h.work().await;
    // THEN only the failing item's message is reported, and it waits to be tried again
    assert_eq!(first.received.len(), 3);
    assert_eq!(first.failed_sorted(), first.ids_of_items(&["b"]));
    let items = h.items(&job).await;
    assert_eq!(items["a"].status, ItemStatus::Succeeded);
    assert_eq!(items["c"].status, ItemStatus::Succeeded);
    assert_eq!(items["b"].status, ItemStatus::Queued);
    assert_eq!(h.job(&job).await["status"], "running");

    // WHEN it comes back for its last delivery and fails again
    let last = h.work().await;
    assert_eq!(last.received.len(), 1);
    assert_eq!(last.received[0].receives, 2);
    // THEN it is still reported (so SQS dead-letters it) and the item is failed with the reason
    assert_eq!(last.failed, last.ids_of_items(&["b"]));
    let items = h.items(&job).await;
    assert_eq!(items["b"].status, ItemStatus::Failed);
    let reason = items["b"].error.as_deref().expect("a reason");
    assert!(
        reason.starts_with("gave up after repeated failures:")
            && reason.contains("Provider openai"),
        "{reason}"
    );
    let view = h.job(&job).await;
    assert_eq!(view["status"], "partially_failed", "{view}");
    assert_eq!(
        view["progress"],
        json!({"done": 3, "total": 3, "succeeded": 2, "failed": 1})
    );

    // AND its message ends in the dead-letter queue, the others are gone
    let after = h.work().await;
    assert!(after.received.is_empty(), "{after:?}");
    let dead: Vec<Value> = h
        .dead_letters()
        .await
        .iter()
        .map(|body| serde_json::from_str(body).expect("a job message"))
        .collect();
    assert_eq!(dead, [json!({"job_id": job.as_str(), "item_id": "b"})]);
    assert_eq!(h.queue_depth().await, 0);
    assert_eq!(h.answered().await, 2, "only the answered items are charged");
}

#[tokio::test]
async fn a_full_minute_makes_items_wait_for_the_next() {
    // Two receives at most: waiting must not use up deliveries, or a big batch on a small plan
    // would end in the dead-letter queue.
    let Some(h) = harness(2).await else { return };
    // GIVEN the free plan's 5 requests a minute, a batch of 7 whose submission takes one of
    // them, and two seconds left in the minute
    let items: Vec<Value> = (0..7).map(|i| item(&format!("i{i}"), "hi")).collect();
    let job = h.submit(json!({"items": items})).await;
    h.clock.advance(time::Duration::seconds(48));

    // WHEN the worker gets all seven in the same minute
    let first = h.work().await;

    // THEN four are answered and three wait: nothing is reported failed, each waiting item's
    // message is sent again to arrive in the next minute, and the items stay queued
    assert_eq!(first.received.len(), 7);
    assert_eq!(first.failed, Vec::<String>::new());
    let items = h.items(&job).await;
    let waiting: Vec<&JobItem> = items
        .values()
        .filter(|i| i.status != ItemStatus::Succeeded)
        .collect();
    assert_eq!(waiting.len(), 3, "{items:?}");
    assert!(
        waiting.iter().all(|i| i.status == ItemStatus::Queued),
        "{waiting:?}"
    );
    let view = h.job(&job).await;
    assert_eq!(
        view["progress"],
        json!({"done": 4, "total": 7, "succeeded": 4, "failed": 0})
    );
    assert_eq!(view["status"], "running");

    // WHEN the next minute starts and the three arrive
    h.clock.advance(time::Duration::minutes(1));
    let second = h.work_at_least(3).await;

    // THEN they are new messages for the three waiting items, first received, and answered
    let mut waited: Vec<String> = second
        .received
        .iter()
        .filter_map(Received::item_id)
        .collect();
    waited.sort();
    let mut expected: Vec<String> = waiting.iter().map(|i| i.id.clone()).collect();
    expected.sort();
    assert_eq!(waited, expected);
    assert!(
        second.received.iter().all(|m| m.receives == 1),
        "{second:?}"
    );
    assert!(second
        .received
        .iter()
        .all(|m| !first.received.iter().any(|f| f.id == m.id)));
    assert_eq!(second.failed, Vec::<String>::new());
    let view = h.job(&job).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(
        view["progress"],
        json!({"done": 7, "total": 7, "succeeded": 7, "failed": 0})
    );
    assert_eq!(h.answered().await, 7);
    assert_eq!(h.queue_depth().await, 0);
    assert_eq!(h.dead_letters().await, Vec::<String>::new());
}

#[tokio::test]
async fn an_item_that_waited_an_hour_fails_with_the_rate_limit() {
    let Some(h) = harness(2).await else { return };
    // GIVEN a one-chat job whose message is replaced by one saying it has waited over an hour
    let job = h
        .submit(json!({"messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let original = h
        .sqs
        .receive_message()
        .queue_url(&h.queue_url)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default();
    assert_eq!(original.len(), 1);
    h.sqs
        .delete_message()
        .queue_url(&h.queue_url)
        .receipt_handle(original[0].receipt_handle.clone().expect("receipt"))
        .send()
        .await
        .expect("DeleteMessage");
    // AND the org's minute already used up by another job
    let items: Vec<Value> = (0..5).map(|i| item(&format!("f{i}"), "hi")).collect();
    h.submit(json!({"items": items})).await;
    assert_eq!(h.work().await.received.len(), 5);
    let since = h.clock.now().unix_timestamp() - 3_601;
    let old = json!({"job_id": job.as_str(), "item_id": "chat", "waiting_since": since});
    h.sqs
        .send_message()
        .queue_url(&h.queue_url)
        .message_body(old.to_string())
        .send()
        .await
        .expect("SendMessage");

    // WHEN the worker gets it and the window is still full
    let delivery = h.work().await;

    // THEN the item fails with the reason instead of waiting again
    assert_eq!(delivery.received.len(), 1);
    assert_eq!(delivery.failed, Vec::<String>::new());
    let items = h.items(&job).await;
    let item = &items["chat"];
    assert_eq!(item.status, ItemStatus::Failed);
    let error = item.error.as_deref().unwrap_or_default();
    assert!(error.starts_with("waited over 60 minutes"), "{error}");
    assert!(
        error.contains("Rate limit exceeded. Max 5 requests per minute."),
        "{error}"
    );
    assert_eq!(h.queue_depth().await, 0);
}

/// SQS in front, refusing the messages of some items as SQS refuses entries of a batch it takes.
#[derive(Debug)]
struct Refusing {
    inner: SqsQueue,
    refuse: Vec<&'static str>,
}

#[async_trait::async_trait]
impl JobQueue for Refusing {
    async fn enqueue_after(
        &self,
        messages: &[JobMessage],
        _delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let (unsent, sent): (Vec<JobMessage>, Vec<JobMessage>) = messages
            .iter()
            .cloned()
            .partition(|m| self.refuse.contains(&m.item_id.as_str()));
        self.inner.enqueue(&sent).await?;
        if unsent.is_empty() {
            return Ok(());
        }
        Err(QueueError {
            reason: "SQS refused a message: throttled".into(),
            unsent,
        })
    }
}

#[tokio::test]
async fn a_job_sqs_will_not_take_is_failed_not_left_queued() {
    let Some(h) = harness(2).await else { return };
    // GIVEN a queue that no longer exists
    let gone = create_queue(
        &h.sqs,
        &format!("gone-{}", uuid::Uuid::new_v4().simple()),
        HashMap::new(),
    )
    .await;
    h.sqs
        .delete_queue()
        .queue_url(&gone)
        .send()
        .await
        .expect("DeleteQueue");
    let state = h
        .state
        .clone()
        .with_queue(Arc::new(SqsQueue::new(h.sqs.clone(), gone)));

    // WHEN a batch is submitted
    let (status, body) = h
        .submit_with(
            &state,
            json!({"items": [item("a", "one"), item("b", "two")]}),
        )
        .await;

    // THEN the caller is told to retry, with a 503 naming the job
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("was not started"), "{detail}");
    // AND the stored job is failed, every item saying why, rather than queued for ever
    let page = state
        .stores
        .jobs
        .jobs_of(&h.org, 10, None)
        .await
        .expect("jobs");
    assert_eq!(page.jobs.len(), 1);
    let job = page.jobs[0].id.clone();
    assert!(detail.contains(job.as_str()), "{detail}");
    let view = h.job(&job).await;
    assert_eq!(view["status"], "failed", "{view}");
    for item in view["items"].as_array().expect("items") {
        assert_eq!(item["status"], "failed", "{item}");
        let error = item["error"].as_str().expect("error");
        assert!(error.starts_with("could not be queued: "), "{error}");
    }
    // AND nothing was charged
    assert_eq!(h.answered().await, 0);
}

#[tokio::test]
async fn items_sqs_refused_fail_and_the_rest_run() {
    let Some(h) = harness(2).await else { return };
    // GIVEN a queue that refuses item b's message and takes the others
    let state = h.state.clone().with_queue(Arc::new(Refusing {
        inner: SqsQueue::new(h.sqs.clone(), h.queue_url.clone()),
        refuse: vec!["b"],
    }));

    // WHEN a batch of three is submitted
    let (status, body) = h
        .submit_with(
            &state,
            json!({"items": [item("a", "[sim:echo]one"), item("b", "two"), item("c", "[sim:echo]three")]}),
        )
        .await;

    // THEN it is accepted: two items will run
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = JobId::from(body["id"].as_str().expect("job id"));
    assert_eq!(h.queue_depth().await, 2);
    let items = h.items(&job).await;
    assert_eq!(items["b"].status, ItemStatus::Failed);
    assert_eq!(
        items["b"].error.as_deref(),
        Some("could not be queued: SQS refused a message: throttled")
    );

    // AND once the worker has done the others, the job ends partially failed, not running
    let delivery = h.work().await;
    assert_eq!(delivery.received.len(), 2);
    let view = h.job(&job).await;
    assert_eq!(view["status"], "partially_failed", "{view}");
    assert_eq!(
        view["progress"],
        json!({"done": 3, "total": 3, "succeeded": 2, "failed": 1})
    );
    assert_eq!(h.answered().await, 2);
}

#[tokio::test]
async fn an_attempt_overtaken_by_another_gives_its_message_back() {
    let Some(h) = harness(5).await else { return };
    // GIVEN a one-chat job whose provider takes a second and a half to answer
    let job = h
        .submit(json!({"messages": [{"role": "user", "content": "[sim:latency_ms=1500] hi"}]}))
        .await;
    let message = gateway::queue::JobMessage {
        job_id: job.clone(),
        item_id: "chat".to_owned(),
        waiting_since: None,
    };
    // WHEN one attempt is still waiting on the provider when its claim lapses, and a redelivery
    // claims the item and asks the provider too
    let first = {
        let (state, message) = (h.state.clone(), message.clone());
        tokio::spawn(async move { gateway::jobs::process(&state, &message, 1, 5).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.clock
        .advance(time::Duration::seconds(gateway::jobs::CLAIM_SECONDS + 1));
    let second = gateway::jobs::process(&h.state, &message, 2, 5).await;
    let first = first.await.expect("first attempt");

    // THEN both are done, the item is answered once, and the month counts one message: the
    // attempt whose answer was dropped gave its message and hold back
    assert_eq!(first, gateway::jobs::Disposition::Done);
    assert_eq!(second, gateway::jobs::Disposition::Done);
    assert_eq!(h.items(&job).await["chat"].status, ItemStatus::Succeeded);
    let month = clock::month_of(h.clock.now());
    let counter = h
        .state
        .stores
        .meter
        .month_counter(&h.org, &month)
        .await
        .expect("counter");
    assert_eq!(
        (counter.messages, counter.holds.len()),
        (1, 0),
        "{counter:?}"
    );
    let records = h
        .state
        .stores
        .meter
        .requests(&h.org, &month)
        .await
        .expect("records");
    let outcomes: Vec<(&Outcome, Option<&str>)> = records
        .iter()
        .map(|r| (&r.outcome, r.error_message.as_deref()))
        .collect();
    assert_eq!(records.len(), 2, "{outcomes:?}");
    assert!(
        outcomes.contains(&(&Outcome::Success, None)),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(
            &Outcome::Failed,
            Some("another attempt answered the item first")
        )),
        "{outcomes:?}"
    );
}

/// SQS in front, refusing every delayed send, as SQS throttling the worker would.
#[derive(Debug)]
struct NoDelays(SqsQueue);

#[async_trait::async_trait]
impl JobQueue for NoDelays {
    async fn enqueue_after(
        &self,
        messages: &[JobMessage],
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        if delay.is_zero() {
            return self.0.enqueue(messages).await;
        }
        Err(QueueError {
            reason: "SQS refused a message: throttled".into(),
            unsent: messages.to_vec(),
        })
    }
}

#[tokio::test]
async fn an_item_that_cannot_wait_on_its_last_delivery_fails_instead_of_hanging() {
    // One receive only: the first delivery is also the last.
    let Some(h) = harness(1).await else { return };
    let state = h.state.clone().with_queue(Arc::new(NoDelays(SqsQueue::new(
        h.sqs.clone(),
        h.queue_url.clone(),
    ))));
    let h = Harness { state, ..h };
    // GIVEN the free plan's 5 requests a minute, one taken by the submission, and a batch of 5
    let items: Vec<Value> = (0..5).map(|i| item(&format!("i{i}"), "hi")).collect();
    let job = h.submit(json!({"items": items})).await;

    // WHEN the fifth finds the window full and its delayed copy cannot be sent
    let delivery = h.work().await;

    // THEN it is failed with the reason rather than left queued with no message
    assert_eq!(delivery.received.len(), 5);
    let view = h.job(&job).await;
    assert_eq!(view["status"], "partially_failed", "{view}");
    let failed: Vec<&Value> = view["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{view}");
    let error = failed[0]["error"].as_str().expect("error");
    assert!(error.contains("could not wait"), "{error}");
}
