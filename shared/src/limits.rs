//! Admission: the per-minute rate limit and the monthly message and token limits, enforced by
//! conditional writes in the store so they hold across processes and under any concurrency.
//!
//! Token policy: a request holds `input estimate + max_tokens` of the month's tokens while it runs,
//! so concurrent requests can never jointly overspend. When the full hold no longer fits, the
//! request's `max_tokens` is clamped to what is left (if at least [`MIN_CLAMPED_OUTPUT`] output
//! tokens remain), otherwise it is refused with 402. The input estimate is the UTF-8 byte count,
//! which no tokenizer exceeds, so the settled usage never outgrows its hold.

use time::OffsetDateTime;

use crate::catalog::Plan;
use crate::chat::PreparedChat;
use crate::clock;
use crate::error::{GatewayError, LimitError};
use crate::ids::{OrgId, UserId};
use crate::providers::ChatRequest;
use crate::store::{
    AccessCheck, Admission, AdmitOutcome, Hold, MeterStore, Outcome, RequestRecord, Settlement,
};

/// How long a hold lives before it counts as abandoned: far longer than any function may run.
pub const HOLD_SECONDS: i64 = 15 * 60;
/// Clamping below this many output tokens is refused instead: a uselessly short answer.
pub const MIN_CLAMPED_OUTPUT: u64 = 16;
/// Per-message framing the providers add around the text.
const TOKENS_PER_MESSAGE: u64 = 8;
/// How many times admission retries after clamping or releasing dead holds.
const ATTEMPTS: usize = 4;

/// The rate-limit state a response reports in `X-RateLimit-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// An admitted request: what it may use and how to settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub request_id: String,
    pub month: String,
    /// `YYYY-MM-DD`, UTC: the day of admission, under which the request's usage is aggregated,
    /// so a request that ends after midnight on the last of a month stays in its month.
    pub date: String,
    pub hold_tokens: u64,
    /// The output tokens the request may ask for, possibly clamped.
    pub max_tokens: u32,
    pub rate: RateStatus,
}

/// An upper bound on the input tokens of a request: no tokenizer makes more tokens than bytes.
pub fn input_upper_bound(request: &ChatRequest) -> u64 {
    let text: usize = request.system.as_ref().map_or(0, String::len)
        + request.turns.iter().map(|t| t.text.len()).sum::<usize>();
    text as u64 + TOKENS_PER_MESSAGE * (request.turns.len() as u64 + 2)
}

/// What admission decided, when it is not a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted(Ticket),
    /// The access the caller remembered (`access`) no longer holds; nothing was taken.
    AccessChanged,
}

/// Admits a request against the org's plan, or says why not. With `access`, the plan and the
/// membership the caller remembered are confirmed in the same step as the rate slot is taken.
pub async fn admit(
    meter: &dyn MeterStore,
    now: OffsetDateTime,
    org: &OrgId,
    plan: &Plan,
    chat: &PreparedChat,
    mut access: Option<AccessCheck>,
) -> Result<Verdict, GatewayError> {
    let unix = now.unix_timestamp();
    let minute = unix.div_euclid(60);
    let reset_secs = (60 - unix.rem_euclid(60)) as u64;
    let month = clock::month_of(now);
    let month_end = clock::next_month_start(now).unix_timestamp();
    let input = input_upper_bound(&chat.request);
    let mut max_tokens = u64::from(chat.request.max_tokens);
    let request_id = uuid::Uuid::now_v7().to_string();

    for _ in 0..ATTEMPTS {
        let admission = Admission {
            org: org.clone(),
            request_id: request_id.clone(),
            minute,
            requests_per_minute: plan.requests_per_minute,
            month: month.clone(),
            messages_limit: plan.messages_per_month,
            tokens_limit: plan.tokens_per_month,
            hold: Hold {
                request_id: request_id.clone(),
                model: chat.model.id.to_string(),
                tokens: input + max_tokens,
                expires_at: unix + HOLD_SECONDS,
            },
            // Clean-up only: the window is in the key, so a late delete changes nothing.
            rate_expires_at: (minute + 1) * 60 + 3600,
            month_expires_at: month_end + 35 * 86_400,
            // Confirmed once is enough: a retry below reuses what the first attempt read.
            access: access.take(),
        };
        match meter.admit(&admission).await? {
            AdmitOutcome::AccessChanged => return Ok(Verdict::AccessChanged),
            AdmitOutcome::Admitted {
                requests_in_window,
                holds,
            } => {
                // Holds of requests that died are released as they are seen, so they never pile
                // up in the month's item (on unlimited plans nothing else would): one per
                // admission, picked by this request's id so that concurrent admissions mostly
                // pick different ones. A failure is left for a later admission: this one is in.
                let dead: Vec<&Hold> = holds.iter().filter(|h| h.expires_at < unix).collect();
                if let Some(hold) = pick(&dead, &request_id) {
                    if let Err(error) = release_abandoned(meter, org, &month, hold, now).await {
                        tracing::warn!(%org, request_id = %hold.request_id, %error, "an abandoned hold could not be released yet");
                    }
                }
                return Ok(Verdict::Admitted(Ticket {
                    request_id,
                    month,
                    date: clock::date_of(now),
                    hold_tokens: admission.hold.tokens,
                    max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
                    rate: RateStatus {
                        limit: plan.requests_per_minute,
                        remaining: plan.requests_per_minute.saturating_sub(requests_in_window),
                        reset_secs,
                    },
                }));
            }
            AdmitOutcome::RateLimited { .. } => {
                return Err(LimitError::RateLimited {
                    limit: plan.requests_per_minute,
                    reset_secs,
                }
                .into());
            }
            AdmitOutcome::MonthlyExceeded(counter) => {
                // Holds of requests that died are released first; they were never going to settle.
                let dead: Vec<&Hold> = counter
                    .holds
                    .iter()
                    .filter(|h| h.expires_at < unix)
                    .collect();
                if !dead.is_empty() {
                    for hold in dead {
                        release_abandoned(meter, org, &month, hold, now).await?;
                    }
                    continue;
                }
                if plan
                    .messages_per_month
                    .is_some_and(|l| counter.messages >= l)
                {
                    break;
                }
                let Some(limit) = plan.tokens_per_month else {
                    break;
                };
                let left = limit.saturating_sub(counter.committed);
                let output_left = left.saturating_sub(input);
                if output_left >= max_tokens {
                    continue; // Freed meanwhile by a request that settled.
                }
                if output_left < MIN_CLAMPED_OUTPUT.min(max_tokens) {
                    break;
                }
                tracing::info!(%org, from = max_tokens, to = output_left, "max_tokens clamped to the month's remaining tokens");
                max_tokens = output_left;
            }
        }
    }
    Err(LimitError::MonthlyExceeded.into())
}

/// One of `holds`, chosen by `key`.
fn pick<'a>(holds: &[&'a Hold], key: &str) -> Option<&'a Hold> {
    let count = u64::try_from(holds.len()).ok().filter(|n| *n > 0)?;
    let index = usize::try_from(crate::ids::spread(key) % count).ok()?;
    holds.get(index).copied()
}

/// Releases the hold of a request that never settled, recording it as abandoned.
async fn release_abandoned(
    meter: &dyn MeterStore,
    org: &OrgId,
    month: &str,
    hold: &Hold,
    now: OffsetDateTime,
) -> Result<(), GatewayError> {
    tracing::warn!(%org, request_id = %hold.request_id, tokens = hold.tokens, "releasing the hold of an abandoned request");
    meter
        .settle(&Settlement {
            job_item: None,
            month: month.to_owned(),
            hold_tokens: hold.tokens,
            record: RequestRecord {
                request_id: hold.request_id.clone(),
                org: org.clone(),
                user: UserId::from("unknown"),
                model: hold.model.clone(),
                input_tokens: 0,
                output_tokens: 0,
                duration_ms: 0,
                outcome: Outcome::Abandoned,
                error_message: Some("abandoned: the request never settled".to_owned()),
                cost: 0,
                timestamp: clock::rfc3339(now),
                date: clock::date_of(now),
                expires_at: now.unix_timestamp() + 90 * 86_400,
            },
        })
        .await
        .map_err(GatewayError::from)
}
