//! The job store contract, on the in-memory store and DynamoDB Local alike.

mod common;

use std::sync::Arc;

use futures::future::join_all;
use gateway::ids::{JobId, OrgId, UserId};
use gateway::store::memory::MemoryStore;
use gateway::store::{ItemStatus, JobItem, JobItemFinish, JobRecord, Store};

fn job(org: &OrgId, n: usize) -> (JobRecord, Vec<JobItem>) {
    let items: Vec<JobItem> = (0..n)
        .map(|i| JobItem {
            id: format!("item-{i}"),
            messages: r#"[{"role":"user","content":"hi"}]"#.to_owned(),
            status: ItemStatus::Queued,
            result: None,
            error: None,
            claim: None,
        })
        .collect();
    let record = JobRecord {
        id: JobId::from(uuid::Uuid::now_v7().to_string()),
        org: org.clone(),
        user: UserId::generate(),
        model: "gemini-1.5-flash".to_owned(),
        options: "{}".to_owned(),
        total: n as u64,
        succeeded: 0,
        failed: 0,
        created_at: "2026-11-15T12:00:00Z".to_owned(),
    };
    (record, items)
}

/// An attempt finishing an item.
fn finish(
    job: &JobRecord,
    item: &str,
    attempt: &str,
    status: ItemStatus,
    result: Option<&str>,
    error: Option<&str>,
) -> JobItemFinish {
    JobItemFinish {
        org: job.org.clone(),
        job: job.id.clone(),
        item: item.to_owned(),
        attempt: attempt.to_owned(),
        status,
        result: result.map(str::to_owned),
        error: error.map(str::to_owned),
    }
}

async fn stores_and_reads_a_job_whole(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let (record, items) = job(&org, 3);
    store
        .create_job(&record, &items, 1_000)
        .await
        .expect("create");
    let (read, read_items) = store.job(&record.id).await.expect("read").expect("found");
    assert_eq!(read, record);
    assert_eq!(read_items, items);
    assert!(store
        .job(&JobId::from("nope"))
        .await
        .expect("read")
        .is_none());
}

async fn one_attempt_claims_an_item_and_finishes_it_once(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let (record, items) = job(&org, 1);
    store
        .create_job(&record, &items, 1_000)
        .await
        .expect("create");
    // GIVEN ten attempts racing for one item
    let claims = join_all((0..10).map(|i| {
        let store = store.clone();
        let id = record.id.clone();
        async move {
            let attempt = format!("attempt-{i}");
            let won = store
                .claim_item(&id, "item-0", &attempt, 1_000, 1_120)
                .await
                .expect("claim");
            (attempt, won)
        }
    }))
    .await;
    // THEN exactly one holds it
    let winners: Vec<&String> = claims
        .iter()
        .filter(|(_, won)| *won)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(winners.len(), 1);
    let winner = winners[0].clone();
    // AND only the holder may finish it, once
    assert!(!store
        .finish_item(&finish(
            &record,
            "item-0",
            "intruder",
            ItemStatus::Succeeded,
            Some("{}"),
            None
        ))
        .await
        .expect("finish"));
    assert!(store
        .finish_item(&finish(
            &record,
            "item-0",
            &winner,
            ItemStatus::Succeeded,
            Some("{\"message\":\"hi\"}"),
            None
        ))
        .await
        .expect("finish"));
    assert!(!store
        .finish_item(&finish(
            &record,
            "item-0",
            &winner,
            ItemStatus::Succeeded,
            Some("{}"),
            None
        ))
        .await
        .expect("finish"));
    let (read, items) = store.job(&record.id).await.expect("read").expect("found");
    assert_eq!((read.succeeded, read.failed), (1, 0));
    assert_eq!(items[0].status, ItemStatus::Succeeded);
    assert_eq!(items[0].result.as_deref(), Some("{\"message\":\"hi\"}"));
    // AND a finished item cannot be claimed again
    assert!(!store
        .claim_item(&record.id, "item-0", "late", 5_000, 5_120)
        .await
        .expect("claim"));
}

async fn released_or_expired_claims_free_the_item(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let (record, items) = job(&org, 1);
    store
        .create_job(&record, &items, 1_000)
        .await
        .expect("create");
    assert!(store
        .claim_item(&record.id, "item-0", "a", 1_000, 1_120)
        .await
        .expect("claim"));
    assert!(!store
        .claim_item(&record.id, "item-0", "b", 1_050, 1_170)
        .await
        .expect("claim"));
    // A crashed attempt's claim lapses.
    assert!(store
        .claim_item(&record.id, "item-0", "c", 1_121, 1_241)
        .await
        .expect("claim"));
    // A released claim frees the item at once, and the item is queued again.
    store
        .release_item(&record.id, "item-0", "c")
        .await
        .expect("release");
    let item = store
        .item(&record.id, "item-0")
        .await
        .expect("read")
        .expect("item");
    assert_eq!(item.status, ItemStatus::Queued);
    assert!(store
        .claim_item(&record.id, "item-0", "d", 1_122, 1_242)
        .await
        .expect("claim"));
    // The lapsed attempt cannot finish it any more.
    assert!(!store
        .finish_item(&finish(
            &record,
            "item-0",
            "a",
            ItemStatus::Failed,
            None,
            Some("late")
        ))
        .await
        .expect("finish"));
}

async fn lists_an_orgs_jobs_newest_first_in_pages(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (record, items) = job(&org, 1);
        store
            .create_job(&record, &items, 1_000)
            .await
            .expect("create");
        ids.push(record.id.to_string());
    }
    store
        .create_job(&job(&OrgId::generate(), 1).0, &job(&org, 1).1, 1_000)
        .await
        .expect("another org's job");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .jobs_of(&org, 2, after.as_deref())
            .await
            .expect("page");
        seen.extend(page.jobs.iter().map(|j| j.id.to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
}

async fn an_answer_is_stored_and_charged_in_one_write(store: Arc<dyn Store>) {
    use gateway::store::{Outcome, RequestRecord, Settlement};
    let org = OrgId::generate();
    let (record, items) = job(&org, 1);
    store
        .create_job(&record, &items, 1_000)
        .await
        .expect("create");
    assert!(store
        .claim_item(&record.id, "item-0", "first", 1_000, 1_001)
        .await
        .expect("claim"));
    // A second attempt takes over after the first one's claim lapsed.
    assert!(store
        .claim_item(&record.id, "item-0", "second", 1_002, 1_200)
        .await
        .expect("claim"));
    let used = gateway::providers::Usage {
        input_tokens: 10,
        output_tokens: 20,
    };
    let (change, daily) = gateway::usage::changes(
        &Outcome::Success,
        used,
        gateway::money::NanoUsd(24_500),
        0,
        ("2026-11-15", "gemini-1.5-flash"),
    );
    let settlement = |attempt: &str, request_id: &str| Settlement {
        month: "2026-11".to_owned(),
        change,
        daily: daily.clone(),
        record: RequestRecord {
            request_id: request_id.to_owned(),
            org: org.clone(),
            user: record.user.clone(),
            api_key: None,
            model: "gemini-1.5-flash".to_owned(),
            requested_model: "gemini-1.5-flash".to_owned(),
            attempts: 1,
            input_tokens: 10,
            output_tokens: 20,
            duration_ms: 5,
            outcome: Outcome::Success,
            error_message: None,
            cost: 24_500,
            timestamp: "2026-11-15T12:00:00Z".to_owned(),
            date: "2026-11-15".to_owned(),
            expires_at: 2_000_000_000,
        },
        job_item: Some(JobItemFinish {
            org: record.org.clone(),
            job: record.id.clone(),
            item: "item-0".to_owned(),
            attempt: attempt.to_owned(),
            status: ItemStatus::Succeeded,
            result: Some(format!("{{\"by\":\"{attempt}\"}}")),
            error: None,
        }),
    };
    // WHEN both attempts got an answer and settle it
    store
        .settle(&settlement("second", "r-second"))
        .await
        .expect("the holder settles");
    let late = store.settle(&settlement("first", "r-first")).await;
    // THEN only the holder's answer is stored and charged
    assert!(
        matches!(late, Err(gateway::store::StoreError::Conflict(_))),
        "{late:?}"
    );
    let records = store.requests(&org, "2026-11").await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].request_id, "r-second");
    let (read, items) = store.job(&record.id).await.expect("read").expect("found");
    assert_eq!((read.succeeded, read.failed), (1, 0));
    assert_eq!(items[0].result.as_deref(), Some("{\"by\":\"second\"}"));
    assert_eq!(
        store
            .month_counter(&org, "2026-11")
            .await
            .expect("month")
            .tokens,
        30
    );
}

async fn an_orgs_queued_items_are_capped(store: Arc<dyn Store>) {
    // GIVEN an org allowed 5 queued items, with a job of 3 queued
    let org = OrgId::generate();
    let (first, items) = job(&org, 3);
    assert!(store.create_job(&first, &items, 5).await.expect("create"));
    // WHEN another job of 3 comes, THEN it is refused whole: nothing of it is stored
    let (second, more) = job(&org, 3);
    assert!(!store.create_job(&second, &more, 5).await.expect("create"));
    assert_eq!(store.job(&second.id).await.expect("read"), None);
    // AND another org is not held back by it
    let (elsewhere, theirs) = job(&OrgId::generate(), 5);
    assert!(store
        .create_job(&elsewhere, &theirs, 5)
        .await
        .expect("create"));
    // WHEN one of the first job's items finishes (here: failed), THEN there is room for 3
    assert!(store
        .claim_item(&first.id, "item-0", "a", 1_000, 1_120)
        .await
        .expect("claim"));
    let failed = finish(&first, "item-0", "a", ItemStatus::Failed, None, Some("no"));
    assert!(store.finish_item(&failed).await.expect("finish"));
    let (third, last) = job(&org, 3);
    assert!(store.create_job(&third, &last, 5).await.expect("create"));
    // AND a job larger than the cap is refused outright
    let (huge, many) = job(&OrgId::generate(), 6);
    assert!(!store.create_job(&huge, &many, 5).await.expect("create"));
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $case() { super::$case(Arc::new(MemoryStore::new())).await; } )*
        }
        mod dynamodb {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $case() {
                   if let Some(store) = common::dynamo_store().await { super::$case(store).await; }
               } )*
        }
    };
}

contract!(
    an_orgs_queued_items_are_capped,
    stores_and_reads_a_job_whole,
    one_attempt_claims_an_item_and_finishes_it_once,
    released_or_expired_claims_free_the_item,
    lists_an_orgs_jobs_newest_first_in_pages,
    an_answer_is_stored_and_charged_in_one_write,
);
