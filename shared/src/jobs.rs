//! Background and batch jobs: a long chat or a batch of chats on one model, accepted at once and
//! answered by a queue-triggered worker under the same plan checks, limits and metering as `/chat`.
//! Delivery is at least once, so every step is idempotent: a conditional claim stops two attempts
//! from working one item, and a finished item is never answered or charged again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde::{Deserialize, Serialize};

use crate::catalog::Plan;
use crate::chat::{self, ChatBody, ChatInput, InputMessage};
use crate::clock;
use crate::error::{AuthError, GatewayError, LimitError, PlanError, RequestError};
use crate::ids::{JobId, OrgId, UserId};
use crate::metered::{self, ItemAnswer};
use crate::money::NanoUsd;
use crate::providers::ChatResponse;
use crate::queue::{JobMessage, LocalQueue};
use crate::state::AppState;
use crate::store::{ItemStatus, JobItem, JobItemFinish, JobRecord, Membership, Party, StoreError};
use crate::telemetry::RequestLog;

/// The most chats one batch may hold.
pub const MAX_ITEMS: usize = 50;
/// The most bytes of messages one item may hold, as stored: a job item is one DynamoDB item
/// (at most 400 KB), which later holds the item's answer too.
pub const MAX_ITEM_MESSAGES_BYTES: usize = 300 * 1024;
/// How long one attempt holds an item: longer than the worker's timeout, so a live attempt is
/// never overtaken, short enough that a crashed one is retried.
pub const CLAIM_SECONDS: i64 = 120;

/// The body of `POST /api/v1/ai/jobs`: one chat (`messages`) or a batch (`items`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    pub model: Option<String>,
    pub messages: Option<Vec<InputMessage>>,
    pub items: Option<Vec<ItemBody>>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub id: String,
    pub messages: Vec<InputMessage>,
}

/// The options every item of a job shares.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Options {
    temperature: Option<f64>,
    max_tokens: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMessage {
    role: String,
    content: String,
}

fn invalid(text: String) -> GatewayError {
    RequestError::InvalidField(text).into()
}

/// Validates a submission against the plan (every item as `/chat` would check it) and builds the
/// job and its items.
pub fn prepare_job(
    state: &AppState,
    membership: &Membership,
    user: &UserId,
    body: JobBody,
    now: time::OffsetDateTime,
) -> Result<(JobRecord, Vec<JobItem>), GatewayError> {
    let plan = metered::plan_of(state, membership)?;
    let items: Vec<ItemBody> = match (body.messages, body.items) {
        (Some(messages), None) => vec![ItemBody {
            id: "chat".to_owned(),
            messages,
        }],
        (None, Some(items)) => items,
        _ => {
            return Err(invalid(
                "body: give either `messages` (one chat) or `items` (a batch), not both".into(),
            ))
        }
    };
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "items: must hold between 1 and {MAX_ITEMS} chats, got {}",
            items.len()
        )));
    }
    let model = body
        .model
        .unwrap_or_else(|| state.catalog.default_model.to_string());
    let options = Options {
        temperature: body.temperature,
        max_tokens: body.max_tokens,
    };
    let mut seen = HashSet::new();
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let valid_id = !item.id.is_empty()
            && item.id.len() <= 64
            && item
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid_id {
            return Err(invalid(format!(
                "items[{i}].id: must be 1-64 letters, digits, '-', '_', '.' or ':'"
            )));
        }
        if !seen.insert(item.id.clone()) {
            return Err(invalid(format!(
                "items[{i}].id: {:?} is not unique",
                item.id
            )));
        }
        records.push(job_item(state, plan, (&model, &options), i, item)?);
    }
    let job = JobRecord {
        id: JobId::from(uuid::Uuid::now_v7().to_string()),
        org: membership.org.id.clone(),
        user: user.clone(),
        model,
        options: serde_json::to_string(&options)
            .map_err(|e| GatewayError::Internal(e.to_string()))?,
        total: records.len() as u64,
        succeeded: 0,
        failed: 0,
        created_at: clock::rfc3339(now),
    };
    Ok((job, records))
}

/// One item of a submission, checked as `/chat` would check it, so a bad batch is refused before
/// anything is queued.
fn job_item(
    state: &AppState,
    plan: &Plan,
    (model, options): (&str, &Options),
    i: usize,
    item: ItemBody,
) -> Result<JobItem, GatewayError> {
    let stored: Vec<StoredMessage> = item
        .messages
        .iter()
        .map(|m| StoredMessage {
            role: m.role.clone(),
            content: m.content.clone(),
        })
        .collect();
    chat::validate(ChatBody {
        messages: item.messages,
        model: Some(model.to_owned()),
        temperature: options.temperature,
        max_tokens: options.max_tokens,
        stream: None,
    })
    .and_then(|input| chat::check(&state.catalog, plan, &input).map(|_| ()))
    .map_err(|e| match e {
        GatewayError::Request(RequestError::InvalidField(text)) => {
            invalid(format!("items[{i}].{text}"))
        }
        other => other,
    })?;
    let messages =
        serde_json::to_string(&stored).map_err(|e| GatewayError::Internal(e.to_string()))?;
    if messages.len() > MAX_ITEM_MESSAGES_BYTES {
        return Err(invalid(format!(
            "items[{i}].messages: at most {MAX_ITEM_MESSAGES_BYTES} bytes of messages per item, got {}",
            messages.len()
        )));
    }
    Ok(JobItem {
        id: item.id,
        messages,
        status: ItemStatus::Queued,
        result: None,
        error: None,
        claim: None,
    })
}

/// A job as its org's members see it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub status: &'static str,
    pub model: String,
    pub created_at: String,
    pub progress: Progress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemView>>,
}

#[derive(Debug, Serialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct ItemView {
    pub id: String,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn job_status(job: &JobRecord, started: bool) -> &'static str {
    let done = job.succeeded + job.failed;
    match () {
        _ if done >= job.total && job.failed == 0 => "succeeded",
        _ if done >= job.total && job.succeeded == 0 => "failed",
        _ if done >= job.total => "partially_failed",
        _ if done > 0 || started => "running",
        _ => "queued",
    }
}

pub fn view(job: JobRecord, items: Option<Vec<JobItem>>) -> JobView {
    let started = items
        .as_ref()
        .is_some_and(|items| items.iter().any(|i| i.status != ItemStatus::Queued));
    JobView {
        id: job.id.clone(),
        status: job_status(&job, started),
        model: job.model.clone(),
        created_at: job.created_at.clone(),
        progress: Progress {
            done: job.succeeded + job.failed,
            total: job.total,
            succeeded: job.succeeded,
            failed: job.failed,
        },
        items: items.map(|items| {
            items
                .into_iter()
                .map(|i| ItemView {
                    id: i.id,
                    status: i.status,
                    result: i.result.and_then(|r| serde_json::from_str(&r).ok()),
                    error: i.error,
                })
                .collect()
        }),
    }
}

/// What to do with a message after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Finished (or already finished): delete the message.
    Done,
    /// Let the message come back later, for this reason.
    Retry(String),
    /// The org's minute window was full: a delayed copy of the message was sent to arrive in the
    /// next one, so this delivery is let go. Waiting is not failing: it uses up no receives.
    Waited,
}

/// What one attempt decided, before waiting is turned into a delayed copy.
enum Step {
    Settled(Disposition),
    /// The org's minute window is full: send `message` again to arrive after `delay`.
    Wait {
        message: JobMessage,
        delay: Duration,
    },
}

/// How long an item may wait for its org's minute window before it fails.
pub const MAX_WAIT_SECS: i64 = 3600;

/// Works one item. Never answers or charges an item twice: finished items are skipped, and only
/// the attempt holding the item's claim may finish it.
pub async fn process(
    state: &AppState,
    message: &JobMessage,
    receive_count: u32,
    max_receives: u32,
) -> Disposition {
    // Each delivery of an item is one logged request: its line says how the item's call went.
    let log = RequestLog::job(JOB_ITEM_ROUTE);
    let disposition = log
        .scope(deliver(state, message, receive_count, max_receives))
        .await;
    log.status(match &disposition {
        Disposition::Done => 200,
        Disposition::Waited => 429,
        Disposition::Retry(_) => 503,
    });
    disposition
}

/// What request lines call a job item's delivery.
pub const JOB_ITEM_ROUTE: &str = "job item";

async fn deliver(
    state: &AppState,
    message: &JobMessage,
    receive_count: u32,
    max_receives: u32,
) -> Disposition {
    let disposition = match attempt(state, message).await {
        Ok(Step::Settled(d)) => d,
        Ok(Step::Wait { message, delay }) => send_to_wait(state, &message, delay).await,
        Err(err) => Disposition::Retry(err.detail()),
    };
    if let Disposition::Retry(reason) = &disposition {
        if receive_count >= max_receives {
            // The last delivery: the item is failed with the reason; the message goes to the DLQ.
            fail_for_good(state, message, reason).await;
        }
    }
    disposition
}

async fn fail_for_good(state: &AppState, message: &JobMessage, reason: &str) {
    let reason = format!("gave up after repeated failures: {reason}");
    fail_item(state, message, None, &reason).await;
    tracing::warn!(job_id = %message.job_id, item_id = %message.item_id, %reason, "job item failed for good");
}

/// Fails the items whose messages the queue would not take, so the job still finishes (partly
/// failed) instead of waiting for ever. An item a worker got to first (its message was taken after
/// all) is left to that worker: the claim decides, so nothing is answered and failed at once.
pub async fn fail_unqueued(state: &AppState, org: &OrgId, unsent: &[JobMessage], reason: &str) {
    let reason = format!("could not be queued: {reason}");
    for message in unsent {
        fail_item(state, message, Some(org), &reason).await;
    }
}

/// Claims an item for one last attempt and finishes it as failed; does nothing if it is finished
/// or another attempt holds it.
/// The job's org is read only when the caller does not know it.
async fn fail_item(state: &AppState, message: &JobMessage, org: Option<&OrgId>, reason: &str) {
    let jobs = state.stores.jobs.as_ref();
    let attempt = uuid::Uuid::now_v7().to_string();
    let now = state.clock.now().unix_timestamp();
    let claimed = jobs
        .claim_item(
            &message.job_id,
            &message.item_id,
            &attempt,
            now,
            now + CLAIM_SECONDS,
        )
        .await;
    let finished = match claimed {
        // The job's org, whose count of queued items the finish takes one off.
        Ok(true) => match org_of(state, message, org).await {
            Ok(Some(org)) => {
                let at = (&org, &message.job_id);
                let failed = JobItemFinish::failed(at, &message.item_id, &attempt, reason);
                jobs.finish_item(&failed).await
            }
            Ok(None) => Ok(false),
            Err(error) => Err(error),
        },
        other => other,
    };
    if let Err(error) = finished {
        tracing::error!(job_id = %message.job_id, item_id = %message.item_id, %error, "a job item could not be marked failed");
    }
}

/// The org of a message's job: `known`, else read with the job.
async fn org_of(
    state: &AppState,
    message: &JobMessage,
    known: Option<&OrgId>,
) -> Result<Option<OrgId>, StoreError> {
    if let Some(org) = known {
        return Ok(Some(org.clone()));
    }
    let job = state.stores.jobs.job(&message.job_id).await?;
    Ok(job.map(|(job, _)| job.org))
}

#[derive(Debug, Serialize)]
struct ItemResult {
    message: String,
    model: String,
    usage: chat::UsageBody,
    finish_reason: crate::providers::FinishReason,
    /// US cents.
    cost: f64,
}

/// The item an attempt holds, and how to give it up or finish it.
struct Claimed<'a> {
    state: &'a AppState,
    job: JobRecord,
    item: String,
    attempt: String,
}

impl Claimed<'_> {
    async fn release(&self) -> Result<(), StoreError> {
        let jobs = self.state.stores.jobs.as_ref();
        jobs.release_item(&self.job.id, &self.item, &self.attempt)
            .await
    }

    /// Finishes the item as failed, for `reason`: the attempt is done with it.
    async fn fail(&self, reason: String) -> Result<Step, GatewayError> {
        let jobs = self.state.stores.jobs.as_ref();
        let at = (&self.job.org, &self.job.id);
        let failed = JobItemFinish::failed(at, &self.item, &self.attempt, &reason);
        jobs.finish_item(&failed).await?;
        Ok(Step::Settled(Disposition::Done))
    }

    /// Gives the item back for its message to be delivered again, for `reason`.
    async fn retry(&self, reason: String) -> Result<Step, GatewayError> {
        self.release().await?;
        Ok(Step::Settled(Disposition::Retry(reason)))
    }
}

async fn attempt(state: &AppState, message: &JobMessage) -> Result<Step, GatewayError> {
    let jobs = state.stores.jobs.as_ref();
    let Some(item) = jobs.item(&message.job_id, &message.item_id).await? else {
        return Ok(Step::Settled(Disposition::Retry(format!(
            "job {} has no item {}",
            message.job_id, message.item_id
        ))));
    };
    if item.status.is_final() {
        return Ok(Step::Settled(Disposition::Done)); // A redelivery of a finished item.
    }
    let Some((job, _)) = jobs.job(&message.job_id).await? else {
        return Ok(Step::Settled(Disposition::Retry(format!(
            "job {} not found",
            message.job_id
        ))));
    };
    let attempt = uuid::Uuid::now_v7().to_string();
    let unix = state.clock.now().unix_timestamp();
    if !jobs
        .claim_item(&job.id, &item.id, &attempt, unix, unix + CLAIM_SECONDS)
        .await?
    {
        return Ok(Step::Settled(Disposition::Retry(
            "another attempt holds the item".into(),
        )));
    }
    let input = stored_input(&job, &item);
    let claimed = Claimed {
        state,
        job,
        item: item.id,
        attempt,
    };
    // The plan may have changed since the job was accepted: the same admission as /chat's.
    let party = Party::User(claimed.job.user.clone());
    let admitted = match metered::admit(state, &party, claimed.job.org.clone(), input).await {
        Ok(admitted) => admitted,
        Err(err) => return refused(&claimed, message, err, unix).await,
    };
    let answered = admitted
        .complete_item(
            metered::ItemAttempt {
                org: claimed.job.org.clone(),
                job: claimed.job.id.clone(),
                item: claimed.item.clone(),
                attempt: claimed.attempt.clone(),
            },
            |response, cost, model| result_json(response, model.to_string(), cost),
        )
        .await;
    // The answer is stored and charged in one write: an item is charged exactly when it is
    // answered, however often its message is delivered.
    match answered {
        ItemAnswer::Stored | ItemAnswer::Overtaken => Ok(Step::Settled(Disposition::Done)),
        ItemAnswer::ProviderFailed(err) => claimed.retry(err.to_string()).await,
        // The answer was dropped and its message given back: the item is tried again.
        ItemAnswer::StoreFailed(err) => {
            claimed.release().await?;
            Err(err.into())
        }
    }
}

/// The item's chat, as stored at submission, with the job's model and options.
fn stored_input(job: &JobRecord, item: &JobItem) -> Result<ChatInput, GatewayError> {
    let options: Options = serde_json::from_str(&job.options).unwrap_or_default();
    let messages: Vec<StoredMessage> = serde_json::from_str(&item.messages)
        .map_err(|e| GatewayError::Internal(format!("stored messages unreadable: {e}")))?;
    chat::validate(ChatBody {
        messages: messages
            .into_iter()
            .map(|m| InputMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        model: Some(job.model.clone()),
        temperature: options.temperature,
        max_tokens: options.max_tokens,
        stream: None,
    })
}

/// The stored answer of an item.
fn result_json(response: &ChatResponse, model: String, cost: NanoUsd) -> String {
    let result = ItemResult {
        message: response.text.clone(),
        model,
        usage: response.usage.into(),
        finish_reason: response.finish_reason.clone(),
        cost: cost.as_cents(),
    };
    serde_json::to_string(&result).unwrap_or_default()
}

/// What an item refused admission does: waits for the next minute, fails, or is retried.
async fn refused(
    claimed: &Claimed<'_>,
    message: &JobMessage,
    err: GatewayError,
    unix: i64,
) -> Result<Step, GatewayError> {
    match err {
        GatewayError::Auth(AuthError::NotMember(_) | AuthError::OrgNotFound(_)) => {
            claimed
                .fail("the submitter is no longer a member of the organization".into())
                .await
        }
        GatewayError::Plan(PlanError::UnknownPlan(_)) => {
            claimed
                .retry("the organization's plan is not configured".into())
                .await
        }
        GatewayError::Limit(LimitError::RateLimited { reset_secs, .. }) => {
            // The minute is full: the item waits for the next one, unless it has waited too long.
            wait(claimed, message, (reset_secs, err), unix).await
        }
        GatewayError::Limit(LimitError::TooManyInFlight { .. }) => {
            // The org runs all it may at once: the item waits a few seconds for a place.
            wait(claimed, message, (IN_FLIGHT_WAIT_SECS, err), unix).await
        }
        GatewayError::Request(_) | GatewayError::Plan(_) | GatewayError::Limit(_) => {
            claimed.fail(err.detail()).await
        }
        other => {
            claimed.release().await?;
            Err(other)
        }
    }
}

/// How long an item waits when its org has as many requests in flight as the plan allows.
const IN_FLIGHT_WAIT_SECS: u64 = 5;

/// Lets the item wait `secs` (plus a jitter) for its message to come back, unless it has waited
/// too long already: then it fails with `err`'s reason.
async fn wait(
    claimed: &Claimed<'_>,
    message: &JobMessage,
    (secs, err): (u64, GatewayError),
    unix: i64,
) -> Result<Step, GatewayError> {
    let waiting_since = message.waiting_since.unwrap_or(unix);
    if unix.saturating_sub(waiting_since) > MAX_WAIT_SECS {
        let reason = format!(
            "waited over {} minutes for the org's limits: {}",
            MAX_WAIT_SECS / 60,
            err.detail()
        );
        return claimed.fail(reason).await;
    }
    claimed.release().await?;
    Ok(Step::Wait {
        message: JobMessage {
            waiting_since: Some(waiting_since),
            ..message.clone()
        },
        delay: Duration::from_secs(secs + jitter_secs(&claimed.item)),
    })
}

/// Up to two seconds, fixed per item, so a batch that waited does not come back all at once.
fn jitter_secs(item: &str) -> u64 {
    crate::ids::spread(item) % 3
}

/// Sends a waiting item's message again, delayed; if that fails, the delivery is retried instead.
async fn send_to_wait(state: &AppState, message: &JobMessage, delay: Duration) -> Disposition {
    let Some(queue) = &state.queue else {
        return Disposition::Retry("rate limited; no queue to wait on".into());
    };
    match queue
        .enqueue_after(std::slice::from_ref(message), delay)
        .await
    {
        Ok(()) => {
            tracing::info!(job_id = %message.job_id, item_id = %message.item_id, delay_secs = delay.as_secs(), "job item waits for the org's next minute");
            Disposition::Waited
        }
        Err(err) => Disposition::Retry(format!("rate limited, and could not wait: {err}")),
    }
}

/// The SQS-triggered worker: each message is its own future; only the failed ones are reported,
/// so SQS redelivers just those (the event source mapping needs `ReportBatchItemFailures`).
pub async fn handle_batch(
    state: &AppState,
    event: SqsEvent,
    max_receives: u32,
) -> SqsBatchResponse {
    let work = event.records.into_iter().map(|record| async move {
        let id = record.message_id.clone().unwrap_or_default();
        let receives = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        let parsed = record
            .body
            .as_deref()
            .map(serde_json::from_str::<JobMessage>);
        let disposition = match parsed {
            Some(Ok(message)) => process(state, &message, receives, max_receives).await,
            Some(Err(e)) => Disposition::Retry(format!("unreadable message: {e}")),
            None => Disposition::Retry("empty message".into()),
        };
        if let Disposition::Retry(reason) = &disposition {
            tracing::info!(message_id = %id, receives, %reason, "job message will be retried");
        }
        (id, disposition)
    });
    let mut response = SqsBatchResponse::default();
    for (id, disposition) in futures::future::join_all(work).await {
        if let Disposition::Retry(_) = disposition {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// The local server's worker: the same `process`, fed by an in-process queue; a retried message
/// comes back after `retry_after`, as SQS's visibility timeout would bring it back.
pub async fn run_local_worker(
    state: AppState,
    queue: LocalQueue,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<JobMessage>,
    max_receives: u32,
    retry_after: Duration,
) {
    let receives =
        std::sync::Arc::new(std::sync::Mutex::new(HashMap::<(JobId, String), u32>::new()));
    while let Some(message) = receiver.recv().await {
        let (state, queue, receives) = (state.clone(), queue.clone(), receives.clone());
        tokio::spawn(async move {
            let key = (message.job_id.clone(), message.item_id.clone());
            let count = {
                let mut map = receives.lock().unwrap_or_else(|p| p.into_inner());
                let count = map.entry(key.clone()).or_insert(0);
                *count += 1;
                *count
            };
            match process(&state, &message, count, max_receives).await {
                Disposition::Retry(_) if count < max_receives => {
                    tokio::time::sleep(retry_after).await;
                    let _ = crate::queue::JobQueue::enqueue(&queue, &[message]).await;
                }
                Disposition::Waited => {
                    // A delayed copy was sent, a new message as in SQS: its receives start again.
                    receives
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                }
                _ => {}
            }
        });
    }
}

/// Pages through an org's jobs.
pub async fn list(
    state: &AppState,
    org: &OrgId,
    limit: usize,
    after: Option<&str>,
) -> Result<(Vec<JobView>, Option<String>), GatewayError> {
    let page = state.stores.jobs.jobs_of(org, limit, after).await?;
    Ok((
        page.jobs.into_iter().map(|job| view(job, None)).collect(),
        page.next,
    ))
}
