//! Metering: settling each request (its real usage, exact cost, request record and daily aggregate)
//! and the monthly usage report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::catalog::{Model, Plan};
use crate::clock;
use crate::error::GatewayError;
use crate::ids::{OrgId, UserId};
use crate::limits::Ticket;
use crate::money::NanoUsd;
use crate::providers::{ProviderError, Usage};
use crate::store::{MeterStore, Outcome, RequestRecord, Settlement};

/// How many times settling is tried before the usage is logged for reconciliation.
const SETTLE_ATTEMPTS: u32 = 3;

/// The settlement of a finished request.
#[allow(clippy::too_many_arguments)]
pub fn settlement(
    ticket: &Ticket,
    org: &OrgId,
    user: &UserId,
    model: &Model,
    result: Result<Usage, &ProviderError>,
    duration: Duration,
    now: OffsetDateTime,
    retention: Duration,
) -> Settlement {
    let (outcome, usage, error_message) = match result {
        Ok(usage) => (Outcome::Success, usage, None),
        Err(err) => (Outcome::Failed, Usage::default(), Some(err.to_string())),
    };
    settlement_of(
        ticket,
        org,
        user,
        model,
        (outcome, usage, error_message),
        duration,
        now,
        retention,
    )
}

/// The settlement of a request that ended as `(outcome, usage, error message)`.
#[allow(clippy::too_many_arguments)]
pub fn settlement_of(
    ticket: &Ticket,
    org: &OrgId,
    user: &UserId,
    model: &Model,
    (outcome, usage, error_message): (Outcome, Usage, Option<String>),
    duration: Duration,
    now: OffsetDateTime,
    retention: Duration,
) -> Settlement {
    Settlement {
        job_item: None,
        month: ticket.month.clone(),
        hold_tokens: ticket.hold_tokens,
        record: RequestRecord {
            request_id: ticket.request_id.clone(),
            org: org.clone(),
            user: user.clone(),
            model: model.id.to_string(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            duration_ms: duration.as_millis() as u64,
            outcome,
            error_message,
            cost: model.cost(usage.input_tokens, usage.output_tokens).0,
            timestamp: clock::rfc3339(now),
            date: ticket.date.clone(),
            expires_at: now.unix_timestamp() + retention.as_secs() as i64,
        },
    }
}

/// Settles a request. The caller's answer never waits on a failure here: after the store's own
/// retries and ours, the settlement is logged whole (`usage_unrecorded`) for reconciliation.
pub async fn settle(meter: &dyn MeterStore, settlement: &Settlement) {
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
        hold_tokens = settlement.hold_tokens,
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
    for day in meter.daily_usage(org, month).await? {
        let entry = by_model.entry(day.model).or_default();
        entry.0 += day.message_count;
        entry.1 += day.total_tokens;
        entry.2 += day.input_tokens;
        entry.3 += day.output_tokens;
        entry.4 += NanoUsd(day.estimated_cost);
    }
    let total_messages = by_model.values().map(|m| m.0).sum();
    let total_tokens = by_model.values().map(|m| m.1).sum();
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
    })
}

/// Checks a `YYYY-MM` month parameter.
pub fn parse_month(raw: &str) -> Option<String> {
    let (year, month) = raw.split_once('-')?;
    let valid = year.len() == 4
        && month.len() == 2
        && year.bytes().all(|b| b.is_ascii_digit())
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
            "2026-13", "2026-1", "26-11", "2026-00", "abcd-ef", "2026/11", "",
        ] {
            assert_eq!(parse_month(bad), None, "{bad}");
        }
    }
}
