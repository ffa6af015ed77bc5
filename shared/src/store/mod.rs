//! Persistence: narrow traits over what the domain needs, an in-memory store for local runs and
//! tests, and a DynamoDB store for Lambda. Both pass the same contract tests (`tests/store_contract.rs`).
//! The business layer makes ids and timestamps; a store writes what it is given.

pub mod dynamo;
pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use serde::Serialize;

use crate::ids::{KeyId, OrgId, PlanId, UserId};

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    /// Normalised (trimmed, lower-case); the login name.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A stored organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgRecord {
    pub id: OrgId,
    pub name: String,
    pub slug: String,
    pub plan: PlanId,
    pub owner_id: UserId,
    pub created_at: String,
}

/// A user's role in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Whether the role may manage the org (its API keys).
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// Who acts in an org: a user (by their token, with `X-Current-Org`), or one of the org's API
/// keys (by its secret).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Party {
    User(UserId),
    Key(KeyIdentity),
}

/// An API key as a caller: its id, its hash (how it is looked up), and who created it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyIdentity {
    pub id: KeyId,
    pub hash: String,
    pub created_by: UserId,
}

impl Party {
    /// The user a request is recorded under: the caller, or the key's creator.
    pub fn user(&self) -> &UserId {
        match self {
            Party::User(user) => user,
            Party::Key(key) => &key.created_by,
        }
    }

    /// The API key a request was made with, if it was.
    pub fn key(&self) -> Option<&KeyId> {
        match self {
            Party::User(_) => None,
            Party::Key(key) => Some(&key.id),
        }
    }
}

/// A stored API key: everything but its secret, of which only a keyed hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub org: OrgId,
    pub name: String,
    /// The start of the secret, for people to tell keys apart (`sk-gw-AbC1…`).
    pub prefix: String,
    /// Hex HMAC-SHA256 of the secret: how the key is looked up.
    pub hash: String,
    pub created_by: UserId,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// Org API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key (its lookup by hash and its place in the org's list, together).
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The key with this hash, read consistently: a revoked key is gone at once.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// The org's keys, oldest first.
    async fn keys_of(&self, org: &OrgId) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Deletes the org's key; false if the org has no such key.
    async fn revoke_key(&self, org: &OrgId, id: &KeyId) -> Result<bool, StoreError>;
    /// Notes when the key was last used; nothing if it is gone.
    async fn touch_key(&self, hash: &str, at: &str) -> Result<(), StoreError>;
}

/// An organisation as one of its members sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub org: OrgRecord,
    pub role: Role,
}

/// What a user may do in an organisation: answered in one read on the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgAccess {
    NoSuchOrg,
    NotMember,
    Member(Membership),
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness condition failed (email or slug taken).
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The store could not be reached or throttled us past the SDK's retries.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored item could not be understood.
    #[error("corrupt item: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn status(&self) -> StatusCode {
        match self {
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the caller may be told.
    pub fn public_detail(&self) -> &'static str {
        match self {
            StoreError::Conflict(_) => "Already exists",
            StoreError::NotFound(_) => "Not found",
            StoreError::Unavailable(_) => {
                "The gateway's store is temporarily unavailable. Retry shortly."
            }
            StoreError::Corrupt(_) => "Internal server error",
        }
    }
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores a new user; `Conflict("user")` if the email is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
}

#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Stores a new organisation with its owner as first member, atomically; `Conflict("slug")`
    /// if the slug is taken.
    async fn create_org(&self, org: &OrgRecord, joined_at: &str) -> Result<(), StoreError>;
    /// The organisations `user` belongs to, oldest first.
    async fn orgs_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError>;
    /// The organisation and the user's membership in it.
    async fn org_access(&self, org: &OrgId, user: &UserId) -> Result<OrgAccess, StoreError>;
    /// The organisation and whether the key with this hash is one of its keys (then a
    /// `Member`; else `NotMember`).
    async fn key_access(&self, org: &OrgId, hash: &str) -> Result<OrgAccess, StoreError>;
    /// An operator action; `NotFound("organization")` for an unknown org.
    async fn set_plan(&self, org: &OrgId, plan: &PlanId) -> Result<(), StoreError>;
}

/// One request's claim on the month's tokens while it runs, released when it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub request_id: String,
    /// The public model id, so a request that dies is still recorded and aggregated under it.
    pub model: String,
    pub tokens: u64,
    /// Epoch seconds after which nobody will settle it: its request died.
    pub expires_at: i64,
}

/// An org's counters for one calendar month.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthCounter {
    /// Admitted requests, less those refunded because the provider failed.
    pub messages: u64,
    /// Tokens used by settled requests.
    pub tokens: u64,
    /// `tokens` plus every live hold: what the token limit is checked against.
    pub committed: u64,
    pub holds: Vec<Hold>,
    /// Requests in flight as the store counts them for the plan's cap (the holds' number,
    /// unless it drifted).
    pub in_flight: u64,
}

/// One request asking to be let in: a slot in the org's minute window, a message and a token hold
/// in its month. Applied all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub org: OrgId,
    pub request_id: String,
    /// Which of the request's tries this is (admission tries again after clamping or releasing
    /// dead holds): each try's rate slot is given back on its own.
    pub attempt: u32,
    /// Epoch minute of the rate window (in the key, so TTL lag never matters).
    pub minute: i64,
    pub requests_per_minute: u64,
    /// `YYYY-MM`, UTC.
    pub month: String,
    pub messages_limit: Option<u64>,
    pub tokens_limit: Option<u64>,
    /// Holds (requests in flight) the month's item may carry at once.
    pub in_flight_limit: u64,
    pub hold: Hold,
    /// Epoch seconds at which DynamoDB may delete the rate window and the month counter.
    pub rate_expires_at: i64,
    pub month_expires_at: i64,
    /// Access the caller remembered rather than read: admission confirms it (the org still on this
    /// plan, the user still a member) as it takes the rate slot, and takes nothing if it changed.
    pub access: Option<AccessCheck>,
}

impl Admission {
    /// The rate slot this try of the request takes.
    pub fn slot(&self) -> Slot {
        Slot {
            org: self.org.clone(),
            id: format!("{}#{}", self.request_id, self.attempt),
            minute: self.minute,
            limit: self.requests_per_minute,
            expires_at: self.rate_expires_at,
        }
    }
}

/// One slot in an org's minute window, taken for a request (or one try of it, or a job
/// submission), named so that it is given back at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub org: OrgId,
    pub id: String,
    /// Epoch minute of the window.
    pub minute: i64,
    pub limit: u64,
    /// Epoch seconds at which DynamoDB may delete the window.
    pub expires_at: i64,
}

/// What a caller assumed about its access to the org it is admitting a request for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCheck {
    pub party: Party,
    /// The plan whose limits the admission applies.
    pub plan: PlanId,
}

/// What the store decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// Let in; the window now holds this many requests. `holds` are the month's holds after this
    /// admission (its own included), so the caller can release any whose request died.
    Admitted {
        requests_in_window: u64,
        holds: Vec<Hold>,
        /// The month's `committed` tokens after this admission.
        committed: u64,
    },
    /// The minute window is full; nothing was written.
    RateLimited { requests_in_window: u64 },
    /// The month's messages or tokens would be exceeded; nothing was written. The counter as it
    /// stood lets the caller clamp or release dead holds and try again.
    MonthlyExceeded(MonthCounter),
    /// The org's plan or the user's membership is not what [`Admission::access`] assumed; nothing
    /// was written. Read them again.
    AccessChanged,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: usage and cost count.
    Success,
    /// The provider failed before any output: the message is given back.
    Failed,
    /// Nobody settled it in time (its process died): the hold is released, the message stays
    /// counted, no tokens are charged.
    Abandoned,
}

impl Outcome {
    /// As `ai_requests` stores it and the API shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "error",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// One request's record, as `ai_requests` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub request_id: String,
    pub org: OrgId,
    pub user: UserId,
    /// The API key the request was made with, if it was.
    pub api_key: Option<KeyId>,
    /// The model that answered (or was last tried), whose price the cost is.
    pub model: String,
    /// The model the request asked for; another answered if a fallback did.
    pub requested_model: String,
    /// Provider calls made: retries and fallbacks each count.
    pub attempts: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub duration_ms: u64,
    pub outcome: Outcome,
    pub error_message: Option<String>,
    /// Nano-dollars.
    pub cost: u64,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// `YYYY-MM-DD`, UTC: the day the request was admitted (in `timestamp`'s month or, for a
    /// request that ended after a month's last midnight, the day before).
    pub date: String,
    /// Epoch seconds at which the record may be deleted.
    pub expires_at: i64,
}

/// Closing a request, as explicit changes: its hold released, the month's counters moved, its
/// record written, its day's aggregate updated, all in one atomic write; at most once per request,
/// however often it is retried. `usage::changes` decides what the changes are; a store applies
/// them and decides nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub month: String,
    pub change: MonthChange,
    /// Added to the day's aggregate of the request's model, when the request counts there.
    pub daily: Option<DailyChange>,
    pub record: RequestRecord,
    /// A job item this request answered: finished in the same atomic write as the settlement,
    /// so an item is charged exactly when its answer is stored. If the attempt no longer holds
    /// the item, nothing is written and settling fails with `Conflict("job item")`.
    pub job_item: Option<JobItemFinish>,
}

/// What a settlement adds to the month's counter. The request's hold is removed if it is still
/// there; `committed` then moves by `committed_releasing_hold`, else (an abandonment released it
/// first) by `committed_without_hold`. No counter goes below zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonthChange {
    /// −1 gives the request's message back.
    pub messages: i64,
    pub tokens: u64,
    pub committed_releasing_hold: i64,
    pub committed_without_hold: i64,
}

impl MonthChange {
    /// What releasing the hold does to the count of requests in flight.
    pub const IN_FLIGHT_RELEASED: i64 = -1;
}

/// What a settlement adds to one day's aggregate of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyChange {
    pub date: String,
    pub model: String,
    pub messages: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Nano-dollars.
    pub cost: u64,
}

/// An attempt finishing the job item it holds: answered (with its answer, as JSON) or failed
/// (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobItemFinish {
    /// The job's org, whose count of queued items the finish takes one off.
    pub org: OrgId,
    pub job: crate::ids::JobId,
    pub item: String,
    pub attempt: String,
    pub status: ItemStatus,
    pub result: Option<String>,
    pub error: Option<String>,
}

impl JobItemFinish {
    /// The attempt gives up on the item, for `reason`.
    pub fn failed(
        (org, job): (&OrgId, &crate::ids::JobId),
        item: &str,
        attempt: &str,
        reason: &str,
    ) -> JobItemFinish {
        JobItemFinish {
            org: org.clone(),
            job: job.clone(),
            item: item.to_owned(),
            attempt: attempt.to_owned(),
            status: ItemStatus::Failed,
            result: None,
            error: Some(reason.to_owned()),
        }
    }
}

/// A day's usage of one model by one org (`ai_usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyUsage {
    pub date: String,
    pub model: String,
    pub message_count: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Nano-dollars.
    pub estimated_cost: u64,
}

/// A page of an org's request records, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestPage {
    pub requests: Vec<RequestRecord>,
    /// Where the next page starts (pass it as `after`); `None` on the last page.
    pub next: Option<String>,
}

/// A counter of attempts (failed logins, registrations) of one kind by one subject in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub kind: &'static str,
    /// The email or client address counted.
    pub subject: String,
    /// The window's index (epoch seconds divided by its length): in the key, so TTL lag never
    /// matters.
    pub window: i64,
    pub limit: u64,
    /// Epoch seconds at which the counter may be deleted.
    pub expires_at: i64,
}

/// Limits and metering: the counters that must hold under concurrency.
#[async_trait]
pub trait MeterStore: Send + Sync {
    /// Takes a slot in the org's minute window on its own (a job submission): the window's count
    /// after it, or `None` if the window is full (nothing taken).
    async fn take_slot(&self, slot: &Slot) -> Result<Option<u64>, StoreError>;
    /// Gives a slot taken by [`MeterStore::take_slot`] back, once however often it is asked.
    async fn give_slot_back(&self, slot: &Slot) -> Result<(), StoreError>;
    /// Sets the month's in-flight count to `holds` if it still reads `seen`.
    async fn recount_in_flight(
        &self,
        org: &OrgId,
        month: &str,
        seen: u64,
        holds: u64,
    ) -> Result<(), StoreError>;
    /// Counts one attempt if the counter is under its limit; false (nothing counted) if not.
    async fn throttle(&self, counter: &Throttle) -> Result<bool, StoreError>;
    /// The attempts counted so far.
    async fn throttled(&self, counter: &Throttle) -> Result<u64, StoreError>;
    async fn admit(&self, admission: &Admission) -> Result<AdmitOutcome, StoreError>;
    /// Settles a request. Settling the same request twice changes nothing the second time.
    async fn settle(&self, settlement: &Settlement) -> Result<(), StoreError>;
    /// The org's counter for a month (zero if none).
    async fn month_counter(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError>;
    /// The org's daily aggregates for a month, by day and model.
    async fn daily_usage(&self, org: &OrgId, month: &str) -> Result<Vec<DailyUsage>, StoreError>;
    /// The org's request records for a month, newest first: at most `limit`, those after the
    /// request id `after` when it is given (the `next` of the page before).
    async fn recent_requests(
        &self,
        org: &OrgId,
        month: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<RequestPage, StoreError>;
    /// The org's request records for a month, oldest first.
    #[cfg(any(test, feature = "test-support"))]
    async fn requests(&self, org: &OrgId, month: &str) -> Result<Vec<RequestRecord>, StoreError>;
}

/// Everything the gateway stores, as one object behind each narrow trait.
pub trait Store: UserStore + OrgStore + MeterStore + JobStore + KeyStore {}
impl<T: UserStore + OrgStore + MeterStore + JobStore + KeyStore> Store for T {}

/// The store handles the application holds: the same object seen through each trait.
#[derive(Clone)]
pub struct Stores {
    pub users: Arc<dyn UserStore>,
    pub orgs: Arc<dyn OrgStore>,
    pub meter: Arc<dyn MeterStore>,
    pub jobs: Arc<dyn JobStore>,
    pub keys: Arc<dyn KeyStore>,
}

impl Stores {
    pub fn from<S: Store + 'static>(store: Arc<S>) -> Stores {
        Stores {
            users: store.clone(),
            orgs: store.clone(),
            meter: store.clone(),
            jobs: store.clone(),
            keys: store,
        }
    }
}

/// Where a job item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Queued => "queued",
            ItemStatus::Running => "running",
            ItemStatus::Succeeded => "succeeded",
            ItemStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ItemStatus> {
        Some(match s {
            "queued" => ItemStatus::Queued,
            "running" => ItemStatus::Running,
            "succeeded" => ItemStatus::Succeeded,
            "failed" => ItemStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, ItemStatus::Succeeded | ItemStatus::Failed)
    }
}

/// A stored job: one chat or a batch of chats on one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: crate::ids::JobId,
    pub org: OrgId,
    pub user: UserId,
    pub model: String,
    /// The request options every item shares, as JSON (`max_tokens`, `temperature`).
    pub options: String,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub created_at: String,
}

/// One chat of a job, with its outcome once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobItem {
    pub id: String,
    /// The item's messages, as JSON.
    pub messages: String,
    pub status: ItemStatus,
    /// The answer (as JSON: message, usage, cost, finish_reason) once succeeded.
    pub result: Option<String>,
    pub error: Option<String>,
    /// The worker attempt holding the item, and until when (epoch seconds).
    pub claim: Option<(String, i64)>,
}

/// A page of an org's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Pass back to get the next page.
    pub next: Option<String>,
}

/// Jobs and their items.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a job and all its items (queued), and counts them as queued for the org, on
    /// condition the org then has at most `max_queued` items queued; false (nothing stored) if it
    /// would have more.
    async fn create_job(
        &self,
        job: &JobRecord,
        items: &[JobItem],
        max_queued: u64,
    ) -> Result<bool, StoreError>;
    async fn job(
        &self,
        id: &crate::ids::JobId,
    ) -> Result<Option<(JobRecord, Vec<JobItem>)>, StoreError>;
    async fn item(
        &self,
        job: &crate::ids::JobId,
        item: &str,
    ) -> Result<Option<JobItem>, StoreError>;
    async fn jobs_of(
        &self,
        org: &OrgId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<JobPage, StoreError>;
    /// Claims a queued (or abandoned running) item for one attempt; false if it is finished or
    /// another attempt holds it.
    async fn claim_item(
        &self,
        job: &crate::ids::JobId,
        item: &str,
        attempt: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError>;
    /// Gives a claim back (the item waits for its message to come back).
    async fn release_item(
        &self,
        job: &crate::ids::JobId,
        item: &str,
        attempt: &str,
    ) -> Result<(), StoreError>;
    /// Finishes an item the attempt holds, counting it on the job; false if the attempt no longer
    /// holds it (nothing written).
    async fn finish_item(&self, finish: &JobItemFinish) -> Result<bool, StoreError>;
}
