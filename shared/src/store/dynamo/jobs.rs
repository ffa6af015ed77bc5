//! Jobs and their items: a job, its listing under its org and all its items are written in one
//! transaction; an item is claimed by one attempt at a time and finished on condition it still
//! holds the claim.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use super::item::{get_i64, get_s, get_u64, item, key, n, s, Item};
use super::keys;
use super::table::{applied, build_error, put_new, DynamoStore, Transaction, TransactionFailure};

/// What each write of a job's creation is, so its refusal is read by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobWrite {
    /// The org's count of queued items; refused when the plan's cap would be passed.
    Queue,
    /// A new item of the job; refused when it exists.
    New,
}

use crate::ids::{JobId, OrgId, UserId};
use crate::store::{ItemStatus, JobItem, JobItemFinish, JobPage, JobRecord, JobStore, StoreError};

impl TryFrom<&Item> for JobRecord {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        Ok(JobRecord {
            id: JobId::from(get_s(item, "job_id")?),
            org: OrgId::from(get_s(item, "organization_id")?),
            user: UserId::from(get_s(item, "user_id")?),
            model: get_s(item, "model")?.to_owned(),
            options: get_s(item, "options")?.to_owned(),
            total: get_u64(item, "total")?,
            succeeded: get_u64(item, "succeeded")?,
            failed: get_u64(item, "failed")?,
            created_at: get_s(item, "created_at")?.to_owned(),
        })
    }
}

impl TryFrom<&Item> for JobItem {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        let status = get_s(item, "status")?;
        Ok(JobItem {
            id: get_s(item, "item_id")?.to_owned(),
            messages: get_s(item, "messages")?.to_owned(),
            status: ItemStatus::parse(status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown item status {status}")))?,
            result: get_s(item, "result").ok().map(str::to_owned),
            error: get_s(item, "error").ok().map(str::to_owned),
            claim: get_s(item, "claim")
                .ok()
                .map(|c| Ok::<_, StoreError>((c.to_owned(), get_i64(item, "claim_until")?)))
                .transpose()?,
        })
    }
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create_job(
        &self,
        job: &JobRecord,
        items: &[JobItem],
        max_queued: u64,
    ) -> Result<bool, StoreError> {
        let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
        if count > max_queued {
            return Ok(false);
        }
        let record = item(
            keys::job(&job.id),
            [
                ("job_id", s(job.id.as_str())),
                ("organization_id", s(job.org.as_str())),
                ("user_id", s(job.user.as_str())),
                ("model", s(job.model.as_str())),
                ("options", s(job.options.as_str())),
                ("total", n(job.total)),
                ("succeeded", n(job.succeeded)),
                ("failed", n(job.failed)),
                ("created_at", s(job.created_at.as_str())),
            ],
        );
        let listing = item(
            keys::org_job(&job.org, &job.id),
            [("job_id", s(job.id.as_str()))],
        );
        // One transaction: a job is never visible without all its items, nor without them
        // counted as queued for its org, within the plan's cap.
        let queue = Update::builder()
            .table_name(self.table())
            .set_key(Some(key(keys::queue(&job.org))))
            .update_expression("ADD queued :count")
            .condition_expression("attribute_not_exists(queued) OR queued <= :room")
            .expression_attribute_values(":count", n(count))
            .expression_attribute_values(":room", n(max_queued - count))
            .build()
            .map_err(build_error)?;
        let mut transaction = Transaction::new();
        transaction.push(
            JobWrite::Queue,
            TransactWriteItem::builder().update(queue).build(),
        );
        transaction.push(JobWrite::New, put_new(self, record)?);
        transaction.push(JobWrite::New, put_new(self, listing)?);
        for entry in items {
            let row = item(
                keys::job_item(&job.id, &entry.id),
                [
                    ("item_id", s(entry.id.as_str())),
                    ("messages", s(entry.messages.as_str())),
                    ("status", s(entry.status.as_str())),
                ],
            );
            transaction.push(JobWrite::New, put_new(self, row)?);
        }
        match transaction.send_until_settled(self).await {
            Ok(()) => Ok(true),
            Err(TransactionFailure::Refused(refused)) if refused.contains(&JobWrite::New) => {
                Err(StoreError::Conflict("job"))
            }
            Err(TransactionFailure::Refused(_)) => Ok(false),
            Err(TransactionFailure::Conflict(err) | TransactionFailure::Unavailable(err)) => {
                Err(err)
            }
        }
    }

    async fn job(&self, id: &JobId) -> Result<Option<(JobRecord, Vec<JobItem>)>, StoreError> {
        let mut record = None;
        let mut items = Vec::new();
        for item in self.query_all(keys::job_partition(id)).await? {
            if get_s(&item, "sk")? == keys::JOB_SK {
                record = Some(JobRecord::try_from(&item)?);
            } else {
                items.push(JobItem::try_from(&item)?);
            }
        }
        Ok(record.map(|r| (r, items)))
    }

    async fn item(&self, job: &JobId, item: &str) -> Result<Option<JobItem>, StoreError> {
        self.get(keys::job_item(job, item))
            .await?
            .as_ref()
            .map(JobItem::try_from)
            .transpose()
    }

    async fn jobs_of(
        &self,
        org: &OrgId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<JobPage, StoreError> {
        let (items, next) = self.query_newest(keys::jobs_of(org), limit, after).await?;
        let ids: Vec<String> = items
            .iter()
            .map(|i| get_s(i, "job_id").map(str::to_owned))
            .collect::<Result<_, _>>()?;
        let wanted = ids
            .iter()
            .map(|id| keys::job(&JobId::from(id.as_str())))
            .collect();
        let mut found: HashMap<String, JobRecord> = HashMap::new();
        for item in self.batch_get(wanted).await? {
            let job = JobRecord::try_from(&item)?;
            found.insert(job.id.to_string(), job);
        }
        // Newest first, as the listing came.
        let jobs = ids.iter().filter_map(|id| found.remove(id)).collect();
        Ok(JobPage { jobs, next })
    }

    async fn claim_item(
        &self,
        job: &JobId,
        item: &str,
        attempt: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key(keys::job_item(job, item))))
            .update_expression("SET #status = :running, claim = :attempt, claim_until = :until")
            .condition_expression(
                "attribute_exists(pk) AND #status IN (:queued, :running) \
                 AND (attribute_not_exists(claim) OR claim_until < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":attempt", s(attempt))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        applied(result)
    }

    async fn release_item(&self, job: &JobId, item: &str, attempt: &str) -> Result<(), StoreError> {
        let result = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key(keys::job_item(job, item))))
            .update_expression("SET #status = :queued REMOVE claim, claim_until")
            .condition_expression("claim = :attempt AND #status = :running")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":attempt", s(attempt))
            .send()
            .await;
        // Refused: the claim is gone already (lapsed, or the item finished).
        applied(result).map(|_| ())
    }

    async fn finish_item(&self, finish: &JobItemFinish) -> Result<bool, StoreError> {
        let mut transaction = Transaction::new();
        // The item's outcome, the job's count and the org's queue change together, or not at all.
        for write in finish_writes(self, finish)? {
            transaction.push((), write);
        }
        // Other items of the org finishing at the same moment touch its queue count.
        match transaction.send_until_settled(self).await {
            Ok(()) => Ok(true),
            Err(TransactionFailure::Refused(_)) => Ok(false),
            Err(TransactionFailure::Conflict(err) | TransactionFailure::Unavailable(err)) => {
                Err(err)
            }
        }
    }
}

/// The two writes that finish an item: its outcome, on condition the attempt still holds it, and
/// the job's count. Also used inside a settlement's transaction.
pub(super) fn finish_writes(
    store: &DynamoStore,
    finish: &JobItemFinish,
) -> Result<[TransactWriteItem; 3], StoreError> {
    let JobItemFinish {
        org,
        job,
        item,
        attempt,
        status,
        result,
        error,
    } = finish;
    let mut sets = vec!["#status = :status"];
    let mut update = Update::builder()
        .table_name(store.table())
        .set_key(Some(key(keys::job_item(job, item))))
        .condition_expression("claim = :attempt AND #status = :running")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":status", s(status.as_str()))
        .expression_attribute_values(":running", s("running"))
        .expression_attribute_values(":attempt", s(attempt.as_str()));
    if let Some(result) = result {
        sets.push("#result = :result");
        update = update
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":result", s(result.as_str()));
    }
    if let Some(error) = error {
        sets.push("#error = :error");
        update = update
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":error", s(error.as_str()));
    }
    let update = update
        .update_expression(format!("SET {} REMOVE claim, claim_until", sets.join(", ")))
        .build()
        .map_err(build_error)?;
    let counter = if *status == ItemStatus::Succeeded {
        "succeeded"
    } else {
        "failed"
    };
    let count = Update::builder()
        .table_name(store.table())
        .set_key(Some(key(keys::job(job))))
        .update_expression("ADD #count :one")
        .expression_attribute_names("#count", counter)
        .expression_attribute_values(":one", n(1))
        .build()
        .map_err(build_error)?;
    let dequeued = Update::builder()
        .table_name(store.table())
        .set_key(Some(key(keys::queue(org))))
        .update_expression("ADD queued :minus_one")
        .expression_attribute_values(":minus_one", n(-1))
        .build()
        .map_err(build_error)?;
    Ok([
        TransactWriteItem::builder().update(update).build(),
        TransactWriteItem::builder().update(count).build(),
        TransactWriteItem::builder().update(dequeued).build(),
    ])
}
