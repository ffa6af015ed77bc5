//! Metering: settling each request (its real usage, exact cost, request record and daily aggregate)
//! and the monthly usage report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::catalog::{Model, Plan};
use crate::clock;
use crate::error::GatewayError;
use crate::ids::{ModelId, OrgId, UserId};
use crate::limits::Ticket;
use crate::money::NanoUsd;
use crate::providers::Usage;
use crate::store::{
    DailyChange, DailyUsage, Hold, MeterStore, MonthChange, Outcome, Party, RequestRecord,
    Settlement,
};

/// How a request ended, as metering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The provider answered, whole or in part: `usage` counts. `note` says why it is partial or
    /// estimated, if it is.
    Answered { usage: Usage, note: Option<String> },
    /// The provider failed before any output: the message is given back, nothing is charged.
    Failed(String),
}

/// When and how long: what a settlement needs from the clock.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub now: OffsetDateTime,
    /// How long the request took.
    pub took: Duration,
    /// How long its record is kept (`REQUEST_RETENTION_DAYS`).
    pub retention: Duration,
}

impl Times {
    fn expires_at(&self) -> i64 {
        let keep = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        self.now.unix_timestamp().saturating_add(keep)
    }
}

/// What settling does to the counters, by outcome: the one place these rules live. A success adds
/// its tokens; a failure gives its message back; an abandoned request keeps its message and adds
/// nothing. Whatever the outcome, the request's hold is released, and every request that keeps
/// its message counts in the day's aggregate, so `/usage` adds up to what the monthly limit counts.
pub fn changes(
    outcome: &Outcome,
    used: Usage,
    cost: NanoUsd,
    hold_tokens: u64,
    (date, model): (&str, &str),
) -> (MonthChange, Option<DailyChange>) {
    let used = match outcome {
        Outcome::Success => used,
        Outcome::Failed | Outcome::Abandoned => Usage::default(),
    };
    let tokens = used.total();
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let month = MonthChange {
        messages: if *outcome == Outcome::Failed { -1 } else { 0 },
        tokens,
        committed_releasing_hold: signed(tokens).saturating_sub(signed(hold_tokens)),
        committed_without_hold: signed(tokens),
    };
    let daily = (*outcome != Outcome::Failed).then(|| DailyChange {
        date: date.to_owned(),
        model: model.to_owned(),
        messages: 1,
        input_tokens: used.input_tokens,
        output_tokens: used.output_tokens,
        total_tokens: tokens,
        cost: cost.0,
    });
    (month, daily)
}

/// Provider-reported usage, bounded by what the request held: no upstream can make a request
/// count more output than it may ask for, or more tokens in all than its hold. A bound that had
/// to be applied is logged.
pub fn bounded(reported: Usage, ticket: &Ticket) -> Usage {
    let output = reported.output_tokens.min(u64::from(ticket.max_tokens));
    let input = reported
        .input_tokens
        .min(ticket.hold_tokens.saturating_sub(output));
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
    };
    if usage != reported {
        tracing::warn!(
            request_id = %ticket.request_id,
            reported_input = reported.input_tokens,
            reported_output = reported.output_tokens,
            input_tokens = input,
            output_tokens = output,
            hold_tokens = ticket.hold_tokens,
            "provider-reported usage exceeds the request's hold; counted up to the hold"
        );
    }
    usage
}

/// Usage for an answer whose provider never finished reporting it: the provider's counts where it
/// gave them, otherwise about four bytes a token, never more than the request may use.
pub fn estimated(
    input_bound: u64,
    max_tokens: u32,
    reported: Option<Usage>,
    text_bytes: usize,
) -> Usage {
    let input = reported
        .map(|u| u.input_tokens)
        .filter(|n| *n > 0)
        .unwrap_or_else(|| input_bound.div_ceil(4));
    let text = u64::try_from(text_bytes).unwrap_or(u64::MAX);
    let output = text
        .div_ceil(4)
        .max(reported.map_or(0, |u| u.output_tokens))
        .min(u64::from(max_tokens));
    Usage {
        input_tokens: input,
        output_tokens: output,
    }
}

/// Which model served a request, which one it asked for, and how many provider calls it took.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The model that answered (or was last tried): its price is what the request costs.
    pub model: &'a Model,
    pub requested: &'a ModelId,
    pub attempts: u32,
}

/// The settlement of an admitted request that ended as `ending`.
pub fn settlement(
    ticket: &Ticket,
    (org, party): (&OrgId, &Party),
    served: Served<'_>,
    ending: Ending,
    times: Times,
) -> Settlement {
    let model = served.model;
    let (outcome, used, error_message) = match ending {
        Ending::Answered { usage, note } => (Outcome::Success, bounded(usage, ticket), note),
        Ending::Failed(why) => (Outcome::Failed, Usage::default(), Some(why)),
    };
    let cost = model.cost(used.input_tokens, used.output_tokens);
    let (month, daily) = changes(
        &outcome,
        used,
        cost,
        ticket.hold_tokens,
        (&ticket.date, model.id.as_str()),
    );
    Settlement {
        month: ticket.month.clone(),
        change: month,
        daily,
        record: RequestRecord {
            request_id: ticket.request_id.clone(),
            org: org.clone(),
            user: party.user().clone(),
            api_key: party.key().cloned(),
            model: model.id.to_string(),
            requested_model: served.requested.to_string(),
            attempts: served.attempts,
            input_tokens: used.input_tokens,
            output_tokens: used.output_tokens,
            duration_ms: u64::try_from(times.took.as_millis()).unwrap_or(u64::MAX),
            outcome,
            error_message,
            cost: cost.0,
            timestamp: clock::rfc3339(times.now),
            date: ticket.date.clone(),
            expires_at: times.expires_at(),
        },
        job_item: None,
    }
}

/// The settlement of a request nobody settled in time (its process died): found by its hold.
pub fn abandonment(org: &OrgId, month: &str, hold: &Hold, times: Times) -> Settlement {
    let date = clock::date_of(times.now);
    let (change, daily) = changes(
        &Outcome::Abandoned,
        Usage::default(),
        NanoUsd::ZERO,
        hold.tokens,
        (&date, &hold.model),
    );
    Settlement {
        month: month.to_owned(),
        change,
        daily,
        record: RequestRecord {
            request_id: hold.request_id.clone(),
            org: org.clone(),
            user: UserId::from("unknown"),
            api_key: None,
            model: hold.model.clone(),
            requested_model: hold.model.clone(),
            attempts: 0,
            input_tokens: 0,
            output_tokens: 0,
            duration_ms: 0,
            outcome: Outcome::Abandoned,
            error_message: Some("abandoned: the request never settled".to_owned()),
            cost: 0,
            timestamp: clock::rfc3339(times.now),
            date,
            expires_at: times.expires_at(),
        },
        job_item: None,
    }
}

/// How many times settling is tried before the usage is logged for reconciliation.
const SETTLE_ATTEMPTS: u32 = 3;

/// Applies a settlement. The caller's answer never waits on a failure here: after the store's own
/// retries and ours, the settlement is logged whole (`usage_unrecorded`) for reconciliation.
pub async fn apply(meter: &dyn MeterStore, settlement: &Settlement) {
    let mut last_error = None;
    for attempt in 0..SETTLE_ATTEMPTS {
        match meter.settle(settlement).await {
            Ok(()) => return,
            Err(err) => {
                last_error = Some(err);
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    let record = &settlement.record;
    tracing::error!(
        event = "usage_unrecorded",
        error = %last_error.map(|e| e.to_string()).unwrap_or_default(),
        request_id = %record.request_id,
        org = %record.org,
        user = %record.user,
        model = %record.model,
        month = %settlement.month,
        messages = settlement.change.messages,
        tokens = settlement.change.tokens,
        committed_releasing_hold = settlement.change.committed_releasing_hold,
        input_tokens = record.input_tokens,
        output_tokens = record.output_tokens,
        cost_nanos = record.cost,
        status = ?record.outcome,
        timestamp = %record.timestamp,
        "settling a request failed; reconcile from this line"
    );
}

/// `GET /api/v1/ai/usage`, SPEC §5.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageReport {
    pub month: String,
    pub plan: String,
    pub total_messages: u64,
    pub total_tokens: u64,
    pub messages_limit: Option<u64>,
    pub tokens_limit: Option<u64>,
    pub usage_percentage: Option<f64>,
    /// US cents.
    pub total_cost: f64,
    pub models_breakdown: BTreeMap<String, ModelUsage>,
    /// The month by day and model, in date then model order: days without use are absent.
    pub daily: Vec<DayUsage>,
}

/// One model's use on one day (UTC), as [`UsageReport::daily`] lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub model: String,
    pub messages: u64,
    pub tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US cents, exact to the nano-dollar.
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelUsage {
    pub messages: u64,
    pub tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US cents, exact to the nano-dollar (never rounded to zero).
    pub cost: f64,
}

/// The org's usage in `month`, summed from the daily aggregates so the breakdown adds up to the
/// totals exactly.
pub async fn report(
    meter: &dyn MeterStore,
    org: &OrgId,
    plan: &Plan,
    month: &str,
) -> Result<UsageReport, GatewayError> {
    let mut by_model: BTreeMap<String, (u64, u64, u64, u64, NanoUsd)> = BTreeMap::new();
    let mut days = meter.daily_usage(org, month).await?;
    days.sort_by(|a, b| (&a.date, &a.model).cmp(&(&b.date, &b.model)));
    let daily = days.iter().map(DayUsage::from).collect();
    for day in days {
        let entry = by_model.entry(day.model).or_default();
        entry.0 = entry.0.saturating_add(day.message_count);
        entry.1 = entry.1.saturating_add(day.total_tokens);
        entry.2 = entry.2.saturating_add(day.input_tokens);
        entry.3 = entry.3.saturating_add(day.output_tokens);
        entry.4 += NanoUsd(day.estimated_cost);
    }
    let total_messages = by_model
        .values()
        .fold(0u64, |sum, m| sum.saturating_add(m.0));
    let total_tokens = by_model
        .values()
        .fold(0u64, |sum, m| sum.saturating_add(m.1));
    let total_cost = by_model.values().fold(NanoUsd::ZERO, |sum, m| sum + m.4);
    let share = |used: u64, limit: Option<u64>| {
        limit.map(|l| {
            if l == 0 {
                100.0
            } else {
                used as f64 * 100.0 / l as f64
            }
        })
    };
    let usage_percentage = match (
        share(total_messages, plan.messages_per_month),
        share(total_tokens, plan.tokens_per_month),
    ) {
        (None, None) => None,
        (a, b) => Some((a.unwrap_or(0.0).max(b.unwrap_or(0.0)) * 100.0).round() / 100.0),
    };
    Ok(UsageReport {
        month: month.to_owned(),
        plan: plan.id.to_string(),
        total_messages,
        total_tokens,
        messages_limit: plan.messages_per_month,
        tokens_limit: plan.tokens_per_month,
        usage_percentage,
        total_cost: total_cost.as_cents(),
        models_breakdown: by_model
            .into_iter()
            .map(
                |(model, (messages, tokens, input_tokens, output_tokens, cost))| {
                    (
                        model,
                        ModelUsage {
                            messages,
                            tokens,
                            input_tokens,
                            output_tokens,
                            cost: cost.as_cents(),
                        },
                    )
                },
            )
            .collect(),
        daily,
    })
}

impl From<&DailyUsage> for DayUsage {
    fn from(day: &DailyUsage) -> DayUsage {
        DayUsage {
            date: day.date.clone(),
            model: day.model.clone(),
            messages: day.message_count,
            tokens: day.total_tokens,
            input_tokens: day.input_tokens,
            output_tokens: day.output_tokens,
            cost: NanoUsd(day.estimated_cost).as_cents(),
        }
    }
}

/// `GET /api/v1/ai/requests`: an org's recent requests, newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
    /// Pass as `after` for the next page; `null` on the last.
    pub next: Option<String>,
}

/// One request as its org sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestView {
    pub id: String,
    /// The model that answered (a fallback, perhaps), whose price the cost is.
    pub model: String,
    pub requested_model: String,
    /// `success`, `error` or `abandoned`.
    pub status: &'static str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub duration_ms: u64,
    /// US cents, exact to the nano-dollar.
    pub cost: f64,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub user_id: String,
    /// The API key it was made with, if it was.
    pub api_key_id: Option<String>,
    pub error: Option<String>,
}

impl From<RequestRecord> for RequestView {
    fn from(record: RequestRecord) -> RequestView {
        RequestView {
            id: record.request_id,
            model: record.model,
            requested_model: record.requested_model,
            status: record.outcome.as_str(),
            input_tokens: record.input_tokens,
            output_tokens: record.output_tokens,
            total_tokens: record.input_tokens.saturating_add(record.output_tokens),
            duration_ms: record.duration_ms,
            cost: NanoUsd(record.cost).as_cents(),
            timestamp: record.timestamp,
            user_id: record.user.to_string(),
            api_key_id: record.api_key.map(|key| key.to_string()),
            error: record.error_message,
        }
    }
}

/// Up to `limit` of the org's requests in `month`, newest first, after the request `after`.
pub async fn recent(
    meter: &dyn MeterStore,
    org: &OrgId,
    month: &str,
    (limit, after): (usize, Option<&str>),
) -> Result<RequestList, GatewayError> {
    let page = meter.recent_requests(org, month, limit, after).await?;
    Ok(RequestList {
        requests: page.requests.into_iter().map(RequestView::from).collect(),
        next: page.next,
    })
}

/// Checks a `YYYY-MM` month parameter.
pub fn parse_month(raw: &str) -> Option<String> {
    let (year, month) = raw.split_once('-')?;
    let valid = year.len() == 4
        && month.len() == 2
        && year
            .bytes()
            .chain(month.bytes())
            .all(|b| b.is_ascii_digit())
        && month.parse::<u8>().is_ok_and(|m| (1..=12).contains(&m));
    valid.then(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_checked() {
        assert_eq!(parse_month("2026-11").as_deref(), Some("2026-11"));
        for bad in [
            "2026-13",
            "2026-1",
            "26-11",
            "2026-00",
            "abcd-ef",
            "2026/11",
            "",
            "2026-+1",
            "+026-11",
            "2026-11-01",
            " 2026-11",
        ] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
    }
}
