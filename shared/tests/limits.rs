//! Limits and metering under concurrency, on every store: the in-memory one and DynamoDB Local.
//! Each case runs the real admission and settlement code against a store and an injected clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use gateway::catalog::{Catalog, ModelSet, Plan};
use gateway::chat::PreparedChat;
use gateway::error::{GatewayError, LimitError};
use gateway::ids::{ModelId, OrgId, PlanId, UserId};
use gateway::limits::{self, Ticket, Verdict};
use gateway::providers::{ChatRequest, ProviderError, ProviderErrorKind, Speaker, Turn, Usage};
use gateway::store::memory::MemoryStore;
use gateway::store::{AccessCheck, Admission, AdmitOutcome, Hold, Outcome, Party, Store};
use gateway::usage;
use time::macros::datetime;
use time::OffsetDateTime;

fn plan(rpm: u64, messages: Option<u64>, tokens: Option<u64>) -> Plan {
    Plan {
        id: PlanId::from("test"),
        requests_per_minute: rpm,
        messages_per_month: messages,
        tokens_per_month: tokens,
        max_tokens_per_request: 8_192,
        models: ModelSet::All,
        max_in_flight: 1_000,
        max_queued_items: 1_000,
    }
}

/// A request whose input bound is exactly 100 tokens (76 bytes + 3 × 8 framing).
fn chat(max_tokens: u32) -> PreparedChat {
    let model = Catalog::builtin()
        .model(&ModelId::from("gemini-1.5-flash"))
        .expect("model")
        .clone();
    PreparedChat {
        request: ChatRequest {
            upstream_model: model.upstream.clone(),
            system: None,
            turns: vec![Turn::text(Speaker::User, "x".repeat(76))],
            max_tokens,
            temperature: None,
            sampling: Default::default(),
            tooling: Default::default(),
            format: Default::default(),
        },
        model,
        asked_max_tokens: Some(u64::from(max_tokens)),
    }
}

#[test]
fn the_input_bound_counts_images_at_their_most_and_tools_a_token_a_byte() {
    use gateway::providers::{Image, ImageSource, Part, Tool};
    let mut pictured = chat(10);
    assert_eq!(limits::input_upper_bound(&pictured), 100);
    pictured.request.turns[0].parts.push(Part::Image(Image {
        source: ImageSource::Inline {
            media_type: "image/png".into(),
            data: "x".repeat(10_000),
        },
        detail: None,
    }));
    // A Gemini image: at most 16 tiles of 258 tokens, however many bytes it has; framed like a
    // message of its own.
    assert_eq!(limits::input_upper_bound(&pictured), 100 + 4_128 + 8);
    let parameters = serde_json::json!({"type": "object"});
    pictured.request.tooling.tools.push(Tool {
        name: "f".into(),
        description: Some("four".into()),
        parameters: parameters.clone(),
        strict: None,
    });
    let tool = parameters.to_string().len() + 1 + 4;
    // Offering tools adds what Anthropic says about them in its own system prompt.
    assert_eq!(
        limits::input_upper_bound(&pictured),
        100 + 4_128 + 8 + tool as u64 + 8 + 400
    );
}

fn plan_without_messages() -> Plan {
    plan(1_000, None, None)
}

/// In the future on purpose: DynamoDB Local really deletes items whose TTL has passed, and a
/// window's TTL is an hour after it ends, so a test clock in the past would see its counters
/// vanish mid-test.
const NOW: OffsetDateTime = datetime!(2030-11-15 12:00:00 UTC);

/// How long request records are kept.
const RETENTION: Duration = Duration::from_secs(86_400);

async fn admit(
    store: &Arc<dyn Store>,
    now: OffsetDateTime,
    org: &OrgId,
    plan: &Plan,
    max_tokens: u32,
) -> Result<Ticket, GatewayError> {
    let verdict = limits::admit(
        store.as_ref(),
        (now, RETENTION),
        org,
        plan,
        &chat(max_tokens),
        None,
    )
    .await?;
    match verdict {
        Verdict::Admitted(ticket) => Ok(ticket),
        Verdict::AccessChanged => panic!("no access was remembered, so none can have changed"),
    }
}

/// Admission on remembered access: `user` in `org` on plan `assumed`.
async fn admit_as(
    store: &Arc<dyn Store>,
    org: &OrgId,
    user: &UserId,
    assumed: &str,
    plan: &Plan,
) -> Result<Verdict, GatewayError> {
    let check = AccessCheck {
        party: Party::User(user.clone()),
        plan: PlanId::from(assumed),
    };
    limits::admit(
        store.as_ref(),
        (NOW, RETENTION),
        org,
        plan,
        &chat(10),
        Some(check),
    )
    .await
}

async fn settle(
    store: &Arc<dyn Store>,
    ticket: &Ticket,
    org: &OrgId,
    used: Result<Usage, ()>,
    now: OffsetDateTime,
) {
    let failure = ProviderError::new(
        gateway::catalog::ProviderKind::Google,
        ProviderErrorKind::Timeout,
    );
    let ending = match used {
        Ok(usage) => usage::Ending::Answered { usage, note: None },
        Err(()) => usage::Ending::Failed(failure.to_string()),
    };
    let times = usage::Times {
        now,
        took: Duration::from_millis(5),
        retention: RETENTION,
    };
    let model = chat(1).model;
    let settlement = usage::settlement(
        ticket,
        (org, &Party::User(UserId::from("user-1"))),
        usage::Served {
            model: &model,
            requested: &model.id,
            attempts: 1,
        },
        ending,
        times,
    );
    store.settle(&settlement).await.expect("settle");
}

fn is_rate_limited(r: &Result<Ticket, GatewayError>) -> bool {
    matches!(r, Err(GatewayError::Limit(LimitError::RateLimited { .. })))
}

fn is_monthly(r: &Result<Ticket, GatewayError>) -> bool {
    matches!(r, Err(GatewayError::Limit(LimitError::MonthlyExceeded)))
}

async fn burst(
    store: &Arc<dyn Store>,
    n: usize,
    org: &OrgId,
    plan: &Plan,
    max_tokens: u32,
) -> Vec<Result<Ticket, GatewayError>> {
    join_all((0..n).map(|_| {
        let store = store.clone();
        let (org, plan) = (org.clone(), plan.clone());
        async move { admit(&store, NOW, &org, &plan, max_tokens).await }
    }))
    .await
}

async fn a_burst_admits_exactly_the_rate_limit(store: Arc<dyn Store>) {
    // GIVEN 5 requests per minute WHEN 50 arrive at once
    let org = OrgId::generate();
    let results = burst(&store, 50, &org, &plan(5, None, None), 10).await;
    // THEN exactly 5 are admitted and 45 are rate limited
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    assert_eq!(results.iter().filter(|r| is_rate_limited(r)).count(), 45);
    // AND the rate limit does not touch the month: only admitted requests count as messages
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.messages, 5);
}

async fn a_burst_admits_exactly_the_remaining_messages(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let plan = plan(1_000, Some(5), None);
    let results = burst(&store, 50, &org, &plan, 10).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    assert_eq!(results.iter().filter(|r| is_monthly(r)).count(), 45);
    // Refused requests gave their rate slots back: the window holds only the admitted five, so
    // the next request (on a plan without a message limit) is the sixth.
    let next = admit(&store, NOW, &org, &plan_without_messages(), 10)
        .await
        .expect("admitted");
    assert_eq!(next.rate.remaining, 1_000 - 6);
}

async fn concurrent_holds_never_exceed_the_token_limit(store: Arc<dyn Store>) {
    // GIVEN 10,000 tokens a month and requests holding 100 input + 1,000 output
    let org = OrgId::generate();
    let plan = plan(1_000, None, Some(10_000));
    let results = burst(&store, 30, &org, &plan, 1_000).await;
    let admitted: Vec<Ticket> = results.into_iter().filter_map(Result::ok).collect();
    // THEN the holds admitted never add up to more than the limit
    let held: u64 = admitted.iter().map(|t| t.hold_tokens).sum();
    assert!(held <= 10_000, "held {held}");
    assert!(
        admitted.len() >= 9,
        "9 full holds fit, got {}",
        admitted.len()
    );
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.committed, held);
    // WHEN they settle using far less than they held
    for ticket in &admitted {
        settle(
            &store,
            ticket,
            &org,
            Ok(Usage {
                input_tokens: 20,
                output_tokens: 30,
            }),
            NOW,
        )
        .await;
    }
    // THEN only real usage counts, and new requests fit again
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.tokens, 50 * admitted.len() as u64);
    assert_eq!(counter.committed, counter.tokens);
    assert!(counter.holds.is_empty());
    assert!(admit(&store, NOW, &org, &plan, 1_000).await.is_ok());
}

async fn max_tokens_is_clamped_to_what_is_left(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let plan = plan(1_000, None, Some(1_000));
    // GIVEN 700 of 1,000 tokens used
    let first = admit(&store, NOW, &org, &plan, 600)
        .await
        .expect("admitted");
    settle(
        &store,
        &first,
        &org,
        Ok(Usage {
            input_tokens: 100,
            output_tokens: 600,
        }),
        NOW,
    )
    .await;
    // WHEN a request asks for 500 output tokens with a 100-token input
    let clamped = admit(&store, NOW, &org, &plan, 500)
        .await
        .expect("clamped, not refused");
    // THEN it may use the 200 that are left
    assert_eq!(clamped.max_tokens, 200);
    assert_eq!(clamped.hold_tokens, 300);
    // AND with nothing left for output, the next is refused
    assert!(is_monthly(&admit(&store, NOW, &org, &plan, 500).await));
}

async fn windows_turn_over_at_minute_and_month_boundaries(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let plan = plan(2, Some(3), None);
    let last_second = datetime!(2030-11-30 23:59:59 UTC);
    for _ in 0..2 {
        admit(&store, last_second, &org, &plan, 10)
            .await
            .expect("admitted");
    }
    let refused = admit(&store, last_second, &org, &plan, 10).await;
    assert!(is_rate_limited(&refused));
    // A second later it is a new minute, a new day and a new month.
    let next = datetime!(2030-12-01 00:00:00 UTC);
    let ticket = admit(&store, next, &org, &plan, 10)
        .await
        .expect("new minute");
    assert_eq!(ticket.month, "2030-12");
    assert_eq!(ticket.rate.remaining, 1);
    assert_eq!(ticket.rate.reset_secs, 60);
    assert_eq!(
        store
            .month_counter(&org, "2030-11")
            .await
            .expect("nov")
            .messages,
        2
    );
    assert_eq!(
        store
            .month_counter(&org, "2030-12")
            .await
            .expect("dec")
            .messages,
        1
    );
}

async fn a_plan_change_mid_month_applies_at_once(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let free = plan(1_000, Some(3), None);
    for _ in 0..3 {
        admit(&store, NOW, &org, &free, 10).await.expect("admitted");
    }
    assert!(is_monthly(&admit(&store, NOW, &org, &free, 10).await));
    // The month's usage stays; the new plan's limit applies to it.
    let pro = plan(1_000, Some(10), None);
    assert!(admit(&store, NOW, &org, &pro, 10).await.is_ok());
    assert_eq!(
        store
            .month_counter(&org, "2030-11")
            .await
            .expect("counter")
            .messages,
        4
    );
}

async fn a_failed_provider_call_gives_its_message_and_hold_back(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let plan = plan(1_000, Some(1), Some(10_000));
    let ticket = admit(&store, NOW, &org, &plan, 1_000)
        .await
        .expect("admitted");
    assert!(is_monthly(&admit(&store, NOW, &org, &plan, 10).await));
    settle(&store, &ticket, &org, Err(()), NOW).await;
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(
        (counter.messages, counter.tokens, counter.committed),
        (0, 0, 0)
    );
    // The message is usable again, and the failure is on record.
    assert!(admit(&store, NOW, &org, &plan, 10).await.is_ok());
    let records = store.requests(&org, "2030-11").await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Failed);
    assert!(records[0]
        .error_message
        .as_deref()
        .is_some_and(|m| m.contains("timed out")));
}

async fn a_crashed_requests_hold_is_recovered(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let plan = plan(1_000, None, Some(2_000));
    // GIVEN a request that took a 1,100-token hold and died without settling
    let _dead = admit(&store, NOW, &org, &plan, 1_000)
        .await
        .expect("admitted");
    // THEN while the hold may still be live, it counts against the month
    assert!(admit(&store, NOW, &org, &plan, 1_000)
        .await
        .is_ok_and(|t| t.max_tokens < 1_000));
    // WHEN it is past any function's lifetime
    let later = NOW + time::Duration::minutes(20);
    let ticket = admit(&store, later, &org, &plan, 1_000)
        .await
        .expect("admitted after release");
    // THEN the dead holds were released and the full request fits
    assert_eq!(ticket.max_tokens, 1_000);
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.holds.len(), 1);
    assert_eq!(counter.committed, 1_100);
    let abandoned = store.requests(&org, "2030-11").await.expect("records");
    assert_eq!(
        abandoned
            .iter()
            .filter(|r| r.outcome == Outcome::Abandoned)
            .count(),
        2
    );
}

async fn settling_twice_counts_once_and_aggregates_match_records(store: Arc<dyn Store>) {
    let org = OrgId::generate();
    let plan = plan(1_000, None, None);
    let mut expected_cost = 0;
    for (i, day) in [NOW, NOW, NOW + time::Duration::days(1)]
        .into_iter()
        .enumerate()
    {
        let ticket = admit(&store, day, &org, &plan, 500)
            .await
            .expect("admitted");
        let used = Usage {
            input_tokens: 100 + i as u64,
            output_tokens: 200,
        };
        settle(&store, &ticket, &org, Ok(used), day).await;
        // A retried settlement changes nothing.
        settle(&store, &ticket, &org, Ok(used), day).await;
        expected_cost += 350 * used.input_tokens + 1_050 * used.output_tokens;
    }
    let records = store.requests(&org, "2030-11").await.expect("records");
    assert_eq!(records.len(), 3);
    let daily = store.daily_usage(&org, "2030-11").await.expect("daily");
    assert_eq!(daily.len(), 2, "two days");
    let sum = |f: fn(&gateway::store::DailyUsage) -> u64| daily.iter().map(f).sum::<u64>();
    assert_eq!(sum(|d| d.message_count), 3);
    assert_eq!(
        sum(|d| d.input_tokens),
        records.iter().map(|r| r.input_tokens).sum::<u64>()
    );
    assert_eq!(
        sum(|d| d.output_tokens),
        records.iter().map(|r| r.output_tokens).sum::<u64>()
    );
    assert_eq!(
        sum(|d| d.estimated_cost),
        records.iter().map(|r| r.cost).sum::<u64>()
    );
    assert_eq!(sum(|d| d.estimated_cost), expected_cost);
    // The seed's example: 100 in + 200 out on Gemini Flash costs 245,000 nano-dollars.
    assert_eq!(records[0].cost, 245_000);
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.tokens, sum(|d| d.total_tokens));

    // AND the report adds up exactly
    let report = usage::report(store.as_ref(), &org, &plan, "2030-11")
        .await
        .expect("report");
    assert_eq!(report.total_messages, 3);
    assert_eq!(report.usage_percentage, None);
    let breakdown = &report.models_breakdown["gemini-1.5-flash"];
    assert_eq!(breakdown.messages, 3);
    assert_eq!(breakdown.tokens, report.total_tokens);
    assert!(breakdown.cost > 0.0 && breakdown.cost == report.total_cost);
}

async fn admission_confirms_remembered_access_and_takes_nothing_if_it_changed(
    store: Arc<dyn Store>,
) {
    // GIVEN an org on the free plan, its owner, and someone else
    let owner = common::user(&format!("{}@example.com", uuid::Uuid::new_v4().simple()));
    store.create_user(&owner).await.expect("user");
    let record = common::org(
        &uuid::Uuid::new_v4().simple().to_string(),
        &owner.id,
        "2030-11-01T00:00:00Z",
    );
    store
        .create_org(&record, "2030-11-01T00:00:00Z")
        .await
        .expect("org");
    let org = record.id.clone();
    let rpm_2 = plan(2, Some(100), None);

    // WHEN the owner is admitted on the plan it remembered, THEN it is let in
    let first = admit_as(&store, &org, &owner.id, "free", &rpm_2).await;
    assert!(matches!(first, Ok(Verdict::Admitted(_))), "{first:?}");

    // WHEN an operator moves the org to pro and a request still assumes free
    store
        .set_plan(&org, &PlanId::from("pro"))
        .await
        .expect("set plan");
    let stale = admit_as(&store, &org, &owner.id, "free", &rpm_2).await;
    // THEN admission says so and takes nothing
    assert!(matches!(stale, Ok(Verdict::AccessChanged)), "{stale:?}");
    // AND so for a non-member, and for an org that does not exist
    let stranger = UserId::from("not-a-member");
    let outsider = admit_as(&store, &org, &stranger, "pro", &rpm_2).await;
    assert!(
        matches!(outsider, Ok(Verdict::AccessChanged)),
        "{outsider:?}"
    );
    let nowhere = admit_as(&store, &OrgId::generate(), &owner.id, "pro", &rpm_2).await;
    assert!(matches!(nowhere, Ok(Verdict::AccessChanged)), "{nowhere:?}");

    // THEN the refused requests hold no rate slot and no message: the second slot is still free
    let second = admit_as(&store, &org, &owner.id, "pro", &rpm_2).await;
    match second {
        Ok(Verdict::Admitted(ticket)) => assert_eq!(ticket.rate.remaining, 0),
        other => panic!("expected the second slot, got {other:?}"),
    }
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.messages, 2);
    // AND a full window on a changed plan is reported as the change, not as the limit
    let changed_and_full = admit_as(&store, &org, &owner.id, "free", &rpm_2).await;
    assert!(
        matches!(changed_and_full, Ok(Verdict::AccessChanged)),
        "{changed_and_full:?}"
    );
    let full = admit_as(&store, &org, &owner.id, "pro", &rpm_2).await;
    assert!(
        matches!(
            full,
            Err(GatewayError::Limit(LimitError::RateLimited { .. }))
        ),
        "the window is full: {full:?}"
    );
}

async fn an_admission_sent_twice_counts_once(store: Arc<dyn Store>) {
    // GIVEN an admission, as a retrying client library could send it twice
    let org = OrgId::generate();
    let unix = NOW.unix_timestamp();
    let admission = Admission {
        attempt: 0,
        org: org.clone(),
        request_id: "request-sent-twice".to_owned(),
        minute: unix.div_euclid(60),
        requests_per_minute: 100,
        month: "2030-11".to_owned(),
        messages_limit: Some(10),
        in_flight_limit: 1_000,
        tokens_limit: Some(10_000),
        hold: Hold {
            request_id: "request-sent-twice".to_owned(),
            model: "gemini-1.5-flash".to_owned(),
            tokens: 500,
            expires_at: unix + limits::HOLD_SECONDS,
        },
        rate_expires_at: unix + 3_600,
        month_expires_at: unix + 40 * 86_400,
        access: None,
    };
    // WHEN it arrives twice
    let first = store.admit(&admission).await.expect("first");
    let second = store.admit(&admission).await.expect("second");
    // THEN both say admitted, and the month holds one message and one hold
    assert!(matches!(first, AdmitOutcome::Admitted { .. }), "{first:?}");
    assert!(
        matches!(second, AdmitOutcome::Admitted { .. }),
        "{second:?}"
    );
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(
        (counter.messages, counter.committed, counter.holds.len()),
        (1, 500, 1)
    );
}

async fn a_request_settled_after_midnight_stays_in_its_month(store: Arc<dyn Store>) {
    // GIVEN a request admitted a second before the end of November
    let org = OrgId::generate();
    let plan = plan(1_000, None, None);
    let last_second = datetime!(2030-11-30 23:59:59 UTC);
    let ticket = admit(&store, last_second, &org, &plan, 10)
        .await
        .expect("admitted");
    // WHEN it is settled in December
    let used = Usage {
        input_tokens: 100,
        output_tokens: 10,
    };
    settle(
        &store,
        &ticket,
        &org,
        Ok(used),
        last_second + time::Duration::seconds(3),
    )
    .await;
    // THEN its record and its day's aggregate are November's, on November's last day
    let days = store.daily_usage(&org, "2030-11").await.expect("daily");
    assert_eq!(days.len(), 1, "{days:?}");
    assert_eq!(
        (days[0].date.as_str(), days[0].total_tokens),
        ("2030-11-30", 110)
    );
    let records = store.requests(&org, "2030-11").await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].date, "2030-11-30");
    assert!(
        records[0].timestamp.starts_with("2030-12-01"),
        "{}",
        records[0].timestamp
    );
    assert!(store
        .daily_usage(&org, "2030-12")
        .await
        .expect("daily")
        .is_empty());
}

async fn a_dead_hold_is_released_by_the_next_admission_even_without_limits(store: Arc<dyn Store>) {
    // GIVEN an org on a plan without monthly limits, and a request that died holding tokens
    let org = OrgId::generate();
    let unlimited = plan(1_000, None, None);
    let _dead = admit(&store, NOW, &org, &unlimited, 1_000)
        .await
        .expect("admitted");
    // WHEN another request is admitted after the first could still be running
    let later = NOW + time::Duration::minutes(20);
    admit(&store, later, &org, &unlimited, 10)
        .await
        .expect("admitted");
    // THEN the dead hold is gone and the dead request is on record as abandoned
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!(counter.holds.len(), 1, "{counter:?}");
    assert_eq!(counter.messages, 2);
    let records = store.requests(&org, "2030-11").await.expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Abandoned);
    assert_eq!(records[0].model, "gemini-1.5-flash");
    // AND its message, which stays counted, is in the day's aggregate under its model, tokenless
    let days = store.daily_usage(&org, "2030-11").await.expect("daily");
    assert_eq!(days.len(), 1, "{days:?}");
    assert_eq!(
        (
            days[0].model.as_str(),
            days[0].message_count,
            days[0].total_tokens,
            days[0].estimated_cost
        ),
        ("gemini-1.5-flash", 1, 0, 0)
    );
}

async fn a_request_refused_after_several_tries_gives_back_every_slot(store: Arc<dyn Store>) {
    // GIVEN a month with its one message used by a request that then died
    let org = OrgId::generate();
    let one_message = plan(1_000, Some(1), None);
    let _dead = admit(&store, NOW, &org, &one_message, 10)
        .await
        .expect("admitted");
    // WHEN, after its hold expired, a request is refused, tries again once the dead hold is
    // released, and is refused again (its message stays counted)
    let later = NOW + time::Duration::minutes(20);
    assert!(is_monthly(
        &admit(&store, later, &org, &one_message, 10).await
    ));
    // THEN each of its tries gave its rate slot back: the next request is alone in the window
    let next = admit(&store, later, &org, &plan_without_messages(), 10)
        .await
        .expect("admitted");
    assert_eq!(next.rate.remaining, 1_000 - 1);
}

async fn requests_in_flight_are_capped_by_the_plan(store: Arc<dyn Store>) {
    // GIVEN a plan that lets an org run 3 requests at once
    let org = OrgId::generate();
    let plan = Plan {
        max_in_flight: 3,
        ..plan(1_000, None, None)
    };
    // WHEN 10 arrive together and none has finished
    let results = burst(&store, 10, &org, &plan, 10).await;
    // THEN exactly 3 run; the others are told to wait, and took nothing
    let admitted: Vec<Ticket> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    assert_eq!(admitted.len(), 3);
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(
        r,
        Err(GatewayError::Limit(LimitError::TooManyInFlight {
            limit: 3
        }))
    )));
    let counter = store.month_counter(&org, "2030-11").await.expect("counter");
    assert_eq!((counter.messages, counter.holds.len()), (3, 3));
    // AND once one settles, another may run
    settle(
        &store,
        &admitted[0],
        &org,
        Ok(Usage {
            input_tokens: 5,
            output_tokens: 5,
        }),
        NOW,
    )
    .await;
    assert!(admit(&store, NOW, &org, &plan, 10).await.is_ok());
    assert!(matches!(
        admit(&store, NOW, &org, &plan, 10).await,
        Err(GatewayError::Limit(LimitError::TooManyInFlight { .. }))
    ));
}

macro_rules! meter_contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(Arc::new(MemoryStore::new())).await;
                }
            )*
        }

        mod dynamodb {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(store) = common::dynamo_store().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}

async fn recent_requests_are_listed_newest_first_in_pages(store: Arc<dyn Store>) {
    // GIVEN five settled requests of one org, one of them failed, and one of another org
    let org = OrgId::generate();
    let plan = plan(1_000, None, None);
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let ticket = admit(&store, NOW, &org, &plan, 500)
            .await
            .expect("admitted");
        let used = if i == 2 {
            Err(())
        } else {
            Ok(Usage {
                input_tokens: 10 + i,
                output_tokens: 20,
            })
        };
        settle(&store, &ticket, &org, used, NOW).await;
        ids.push(ticket.request_id.clone());
    }
    let other = OrgId::generate();
    let ticket = admit(&store, NOW, &other, &plan, 500)
        .await
        .expect("admitted");
    settle(&store, &ticket, &other, Ok(Usage::default()), NOW).await;

    // WHEN they are listed two at a time
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..5 {
        let page = store
            .recent_requests(&org, "2030-11", 2, after.as_deref())
            .await
            .expect("page");
        assert!(page.requests.len() <= 2);
        seen.extend(page.requests);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }

    // THEN every request of the org comes once, newest first, as recorded
    let listed: Vec<&str> = seen.iter().map(|r| r.request_id.as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    assert_eq!(seen[2].outcome, Outcome::Failed);
    assert_eq!(seen[0].input_tokens, 14);
    assert_eq!(seen[0].cost, 350 * 14 + 1_050 * 20);
    // AND a month without requests lists none
    let empty = store
        .recent_requests(&org, "2030-10", 2, None)
        .await
        .expect("page");
    assert_eq!((empty.requests.len(), empty.next), (0, None));
}

meter_contract!(
    recent_requests_are_listed_newest_first_in_pages,
    a_request_refused_after_several_tries_gives_back_every_slot,
    requests_in_flight_are_capped_by_the_plan,
    a_burst_admits_exactly_the_rate_limit,
    a_burst_admits_exactly_the_remaining_messages,
    concurrent_holds_never_exceed_the_token_limit,
    max_tokens_is_clamped_to_what_is_left,
    windows_turn_over_at_minute_and_month_boundaries,
    a_plan_change_mid_month_applies_at_once,
    a_failed_provider_call_gives_its_message_and_hold_back,
    a_crashed_requests_hold_is_recovered,
    settling_twice_counts_once_and_aggregates_match_records,
    admission_confirms_remembered_access_and_takes_nothing_if_it_changed,
    an_admission_sent_twice_counts_once,
    a_request_settled_after_midnight_stays_in_its_month,
    a_dead_hold_is_released_by_the_next_admission_even_without_limits,
);

#[tokio::test]
async fn an_unreachable_store_fails_closed_with_503() {
    // GIVEN a DynamoDB endpoint where nothing listens
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    let store: Arc<dyn Store> = Arc::new(gateway::store::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        "unreachable",
    ));
    // WHEN a request asks to be admitted
    let result = admit(
        &store,
        NOW,
        &OrgId::generate(),
        &plan(5, Some(5), Some(5_000)),
        10,
    )
    .await;
    // THEN it is refused as unavailable, not admitted uncounted
    let err = result.expect_err("must fail closed");
    assert_eq!(err.status().as_u16(), 503, "{err}");
    assert!(!err.detail().contains("127.0.0.1"), "{}", err.detail());
}
