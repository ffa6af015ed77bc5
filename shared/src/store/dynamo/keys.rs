//! Every key of the table, each shape built here and nowhere else. README.md ("DynamoDB table")
//! says why each access is shaped so.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | user | `USER#<email>` | `PROFILE` |
//! | organisation | `ORG#<org id>` | `ORG` |
//! | slug reservation | `SLUG#<slug>` | `SLUG` |
//! | member of an org | `ORG#<org id>` | `MEMBER#<user id>` |
//! | an org of a user | `USER_ORGS#<user id>` | `<joined at>#<org id>` |
//! | rate window | `RATE#<org id>#<epoch minute>` | `RATE` |
//! | month counter | `MONTH#<org id>#<YYYY-MM>` | `MONTH` |
//! | request record (`ai_requests`) | `REQ#<org id>#<YYYY-MM>` | `<request id>` (time-ordered) |
//! | daily aggregate (`ai_usage`) | `DAILY#<org id>#<YYYY-MM>` | `<YYYY-MM-DD>#<model>` |
//! | job | `JOB#<job id>` | `JOB` |
//! | job item | `JOB#<job id>` | `ITEM#<item id>` |
//! | an org's job | `ORG_JOBS#<org id>` | `<job id>` (UUIDv7: newest sorts last) |
//! | an org's queued job items | `JOBQ#<org id>` | `QUEUE` |
//! | throttle counter | `THROTTLE#<kind>#<email or address>#<window>` | `THROTTLE` |
//! | API key, by its hash | `APIKEY#<hmac of the secret>` | `KEY` |
//! | an org's API key | `ORG_KEYS#<org id>` | `<key id>` (UUIDv7: oldest first) |

use crate::ids::{JobId, KeyId, OrgId, UserId};

/// A `(pk, sk)` pair.
pub(super) type Key = (String, String);

pub(super) fn user(email: &str) -> Key {
    (format!("USER#{email}"), "PROFILE".to_owned())
}

pub(super) fn org(org: &OrgId) -> Key {
    (format!("ORG#{org}"), "ORG".to_owned())
}

pub(super) fn slug(slug: &str) -> Key {
    (format!("SLUG#{slug}"), "SLUG".to_owned())
}

pub(super) fn member(org: &OrgId, user: &UserId) -> Key {
    (format!("ORG#{org}"), format!("MEMBER#{user}"))
}

/// The partition listing a user's orgs, by join time.
pub(super) fn orgs_of(user: &UserId) -> String {
    format!("USER_ORGS#{user}")
}

pub(super) fn org_of(user: &UserId, joined_at: &str, org: &OrgId) -> Key {
    (orgs_of(user), format!("{joined_at}#{org}"))
}

/// The sort key of an org item, as opposed to its members'.
pub(super) const ORG_SK: &str = "ORG";

pub(super) fn rate_window(org: &OrgId, minute: i64) -> Key {
    (format!("RATE#{org}#{minute}"), "RATE".to_owned())
}

pub(super) fn month(org: &OrgId, month: &str) -> Key {
    (format!("MONTH#{org}#{month}"), "MONTH".to_owned())
}

/// Holds live in the month's item, one attribute per request.
pub(super) const HOLD_PREFIX: &str = "hold_";

pub(super) fn hold(request_id: &str) -> String {
    format!("{HOLD_PREFIX}{request_id}")
}

/// The partition of an org's request records in a month.
pub(super) fn requests(org: &OrgId, month: &str) -> String {
    format!("REQ#{org}#{month}")
}

pub(super) fn request(org: &OrgId, month: &str, request_id: &str) -> Key {
    (requests(org, month), request_id.to_owned())
}

/// The partition of an org's daily aggregates in a month.
pub(super) fn days(org: &OrgId, month: &str) -> String {
    format!("DAILY#{org}#{month}")
}

pub(super) fn day(org: &OrgId, month: &str, date: &str, model: &str) -> Key {
    (days(org, month), format!("{date}#{model}"))
}

/// The partition of a job and its items.
pub(super) fn job_partition(job: &JobId) -> String {
    format!("JOB#{job}")
}

/// The sort key of a job item, as opposed to its items'.
pub(super) const JOB_SK: &str = "JOB";

pub(super) fn job(job: &JobId) -> Key {
    (job_partition(job), JOB_SK.to_owned())
}

pub(super) fn job_item(job: &JobId, item: &str) -> Key {
    (job_partition(job), format!("ITEM#{item}"))
}

/// The partition listing an org's jobs.
pub(super) fn jobs_of(org: &OrgId) -> String {
    format!("ORG_JOBS#{org}")
}

pub(super) fn org_job(org: &OrgId, job: &JobId) -> Key {
    (jobs_of(org), job.to_string())
}

/// An org's count of job items queued.
pub(super) fn queue(org: &OrgId) -> Key {
    (format!("JOBQ#{org}"), "QUEUE".to_owned())
}

pub(super) fn throttle(kind: &str, subject: &str, window: i64) -> Key {
    (
        format!("THROTTLE#{kind}#{subject}#{window}"),
        "THROTTLE".to_owned(),
    )
}

pub(super) fn api_key(hash: &str) -> Key {
    (format!("APIKEY#{hash}"), "KEY".to_owned())
}

/// The partition listing an org's API keys.
pub(super) fn keys_of(org: &OrgId) -> String {
    format!("ORG_KEYS#{org}")
}

pub(super) fn org_key(org: &OrgId, id: &KeyId) -> Key {
    (keys_of(org), id.to_string())
}
