//! Jobs in the DynamoDB table:
//!
//! | item | pk | sk |
//! |---|---|---|
//! | job | `JOB#<job id>` | `JOB` |
//! | job item | `JOB#<job id>` | `ITEM#<item id>` |
//! | an org's job | `ORG_JOBS#<org id>` | `<job id>` (UUIDv7: newest sorts last) |

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::dynamo::{
    build_error, cancellation_codes, get_s, get_u64, key, n, s, unavailable, DynamoStore, Item,
};
use super::{ItemStatus, JobItem, JobPage, JobRecord, JobStore, StoreError};
use crate::ids::{JobId, OrgId, UserId};

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
                .map(|c| Ok::<_, StoreError>((c.to_owned(), get_u64(item, "claim_until")? as i64)))
                .transpose()?,
        })
    }
}

fn put(store: &DynamoStore, item: Item) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(store.table())
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_error)?,
        )
        .build())
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create_job(&self, job: &JobRecord, items: &[JobItem]) -> Result<(), StoreError> {
        let mut record = key(format!("JOB#{}", job.id), "JOB");
        record.extend([
            ("job_id".to_owned(), s(job.id.as_str())),
            ("organization_id".to_owned(), s(job.org.as_str())),
            ("user_id".to_owned(), s(job.user.as_str())),
            ("model".to_owned(), s(job.model.as_str())),
            ("options".to_owned(), s(job.options.as_str())),
            ("total".to_owned(), n(job.total)),
            ("succeeded".to_owned(), n(job.succeeded)),
            ("failed".to_owned(), n(job.failed)),
            ("created_at".to_owned(), s(job.created_at.as_str())),
        ]);
        let mut listing = key(format!("ORG_JOBS#{}", job.org), job.id.as_str());
        listing.insert("job_id".to_owned(), s(job.id.as_str()));
        // One transaction: a job is never visible without all its items.
        let mut request = self
            .client()
            .transact_write_items()
            .transact_items(put(self, record)?)
            .transact_items(put(self, listing)?);
        for item in items {
            let mut row = key(format!("JOB#{}", job.id), format!("ITEM#{}", item.id));
            row.extend([
                ("item_id".to_owned(), s(item.id.as_str())),
                ("messages".to_owned(), s(item.messages.as_str())),
                ("status".to_owned(), s(item.status.as_str())),
            ]);
            request = request.transact_items(put(self, row)?);
        }
        request.send().await.map(|_| ()).map_err(|err| {
            if cancellation_codes(&err)
                .unwrap_or_default()
                .iter()
                .any(|c| c.as_deref() == Some("ConditionalCheckFailed"))
            {
                StoreError::Conflict("job")
            } else {
                unavailable(err)
            }
        })
    }

    async fn job(&self, id: &JobId) -> Result<Option<(JobRecord, Vec<JobItem>)>, StoreError> {
        let mut record = None;
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client()
                .query()
                .table_name(self.table())
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(format!("JOB#{id}")))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                if get_s(&item, "sk")? == "JOB" {
                    record = Some(JobRecord::try_from(&item)?);
                } else {
                    items.push(JobItem::try_from(&item)?);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(record.map(|r| (r, items)))
    }

    async fn item(&self, job: &JobId, item: &str) -> Result<Option<JobItem>, StoreError> {
        self.get(key(format!("JOB#{job}"), format!("ITEM#{item}")))
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
        let mut query = self
            .client()
            .query()
            .table_name(self.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("ORG_JOBS#{org}")))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(100));
        if let Some(after) = after {
            query = query.exclusive_start_key("pk", s(format!("ORG_JOBS#{org}")));
            query = query.exclusive_start_key("sk", s(after));
        }
        let out = query.send().await.map_err(unavailable)?;
        let ids: Vec<String> = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|i| get_s(i, "job_id").map(str::to_owned))
            .collect::<Result<_, _>>()?;
        let next = out
            .last_evaluated_key
            .and_then(|k| k.get("sk").cloned())
            .and_then(|v| v.as_s().ok().cloned());
        let keys = ids
            .iter()
            .map(|id| key(format!("JOB#{id}"), "JOB"))
            .collect();
        let mut found: HashMap<String, JobRecord> = HashMap::new();
        for item in self.batch_get(keys).await? {
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
            .set_key(Some(key(format!("JOB#{job}"), format!("ITEM#{item}"))))
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
        match result {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn release_item(&self, job: &JobId, item: &str, attempt: &str) -> Result<(), StoreError> {
        let result = self
            .client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key(format!("JOB#{job}"), format!("ITEM#{item}"))))
            .update_expression("SET #status = :queued REMOVE claim, claim_until")
            .condition_expression("claim = :attempt AND #status = :running")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":attempt", s(attempt))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn finish_item(
        &self,
        job: &JobId,
        item: &str,
        attempt: &str,
        status: ItemStatus,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let [update, count] = finish_writes(self, job, item, attempt, status, result, error)?;
        // The item's outcome and the job's count change together, or not at all.
        let sent = self
            .client()
            .transact_write_items()
            .transact_items(update)
            .transact_items(count)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(err) => {
                let codes = cancellation_codes(&err).unwrap_or_default();
                if codes.first().and_then(|c| c.as_deref()) == Some("ConditionalCheckFailed") {
                    Ok(false)
                } else {
                    Err(unavailable(err))
                }
            }
        }
    }
}

/// The two writes that finish an item: its outcome, on condition the attempt still holds it, and
/// the job's count. Also used inside a settlement's transaction.
pub(super) fn finish_writes(
    store: &DynamoStore,
    job: &JobId,
    item: &str,
    attempt: &str,
    status: ItemStatus,
    result: Option<&str>,
    error: Option<&str>,
) -> Result<[TransactWriteItem; 2], StoreError> {
    let mut sets = vec!["#status = :status"];
    let mut update = Update::builder()
        .table_name(store.table())
        .set_key(Some(key(format!("JOB#{job}"), format!("ITEM#{item}"))))
        .condition_expression("claim = :attempt AND #status = :running")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":status", s(status.as_str()))
        .expression_attribute_values(":running", s("running"))
        .expression_attribute_values(":attempt", s(attempt));
    if let Some(result) = result {
        sets.push("#result = :result");
        update = update
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":result", s(result));
    }
    if let Some(error) = error {
        sets.push("#error = :error");
        update = update
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":error", s(error));
    }
    let update = update
        .update_expression(format!("SET {} REMOVE claim, claim_until", sets.join(", ")))
        .build()
        .map_err(build_error)?;
    let counter = if status == ItemStatus::Succeeded {
        "succeeded"
    } else {
        "failed"
    };
    let count = Update::builder()
        .table_name(store.table())
        .set_key(Some(key(format!("JOB#{job}"), "JOB")))
        .update_expression("ADD #count :one")
        .expression_attribute_names("#count", counter)
        .expression_attribute_values(":one", n(1))
        .build()
        .map_err(build_error)?;
    Ok([
        TransactWriteItem::builder().update(update).build(),
        TransactWriteItem::builder().update(count).build(),
    ])
}
