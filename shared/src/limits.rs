//! Admission: the per-minute rate limit and the monthly message and token limits, enforced by
//! conditional writes in the store so they hold across processes and under any concurrency.
//!
//! Token policy: a request holds `input estimate + max_tokens` of the month's tokens while it runs,
//! so concurrent requests can never jointly overspend. When the full hold no longer fits, the
//! request's `max_tokens` is clamped to what is left (if at least [`MIN_CLAMPED_OUTPUT`] output
//! tokens remain), otherwise it is refused with 402. The input estimate is the UTF-8 byte count,
//! which no tokenizer exceeds, so the settled usage never outgrows its hold.

use std::time::Duration;

use time::OffsetDateTime;

use crate::catalog::Plan;
use crate::chat::PreparedChat;
use crate::clock;
use crate::error::{GatewayError, LimitError};
use crate::ids::OrgId;
use crate::providers::{Part, ResponseFormat};
use crate::store::{AccessCheck, Admission, AdmitOutcome, Hold, MeterStore, MonthCounter, Slot};
use crate::usage;

/// How long a hold lives before it counts as abandoned: far longer than any function may run.
pub const HOLD_SECONDS: i64 = 15 * 60;
/// Clamping below this many output tokens is refused instead: a uselessly short answer.
pub const MIN_CLAMPED_OUTPUT: u64 = 16;
/// Per-message framing the providers add around the text.
const TOKENS_PER_MESSAGE: u64 = 8;
/// How many times admission retries after clamping or releasing dead holds.
const ATTEMPTS: u32 = 4;

/// The rate-limit state a response reports in `X-RateLimit-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// The month's tokens as an admission left them, for `x-ratelimit-*-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStatus {
    pub limit: u64,
    /// What is neither used nor held by requests in flight.
    pub remaining: u64,
    /// Seconds until the month turns.
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
    /// The month's tokens, when the plan limits them.
    pub tokens: Option<TokenStatus>,
}

/// What a provider adds to the input when tools are offered or a JSON answer is asked for: the
/// system prompt Anthropic writes about tool use (up to 346 tokens on its models, and a JSON answer
/// is a forced tool there), with room.
const TOOL_PROMPT_TOKENS: u64 = 400;

/// A schema's size as a token bound: as sent, or as Gemini receives it (`$ref`s inlined), the
/// larger, since a fallback may take the request to Gemini.
fn schema_bytes(schema: &serde_json::Value) -> usize {
    let sent = schema.to_string();
    // Only `$ref`s make Gemini's form larger than the schema as sent: without one, no conversion.
    if !sent.contains("\"$ref\"") {
        return sent.len();
    }
    let inlined = crate::providers::schema::gemini(schema).to_string().len();
    sent.len().max(inlined)
}

/// An upper bound on the input tokens of a request: no tokenizer makes more tokens than bytes, so
/// text (of messages, tool calls and their signatures, tool results, the tools' definitions and
/// the answer's schema) counts a token a byte; each image counts as the most one costs on the
/// model's provider; tools and JSON answers add [`TOOL_PROMPT_TOKENS`].
pub fn input_upper_bound(chat: &PreparedChat) -> u64 {
    let request = &chat.request;
    let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut bound = len(request.system.as_ref().map_or(0, String::len));
    let mut messages: u64 = 2;
    for turn in &request.turns {
        for part in &turn.parts {
            let tokens = match part {
                Part::Text(text) => len(text.len()),
                // The most one image costs on the model's provider (fallbacks that may cost more are
                // skipped: `chat::candidates`).
                Part::Image(_) => chat.model.provider.image_tokens(),
                Part::ToolCall(call) => len(call.name.len()
                    + call.arguments.len()
                    + call.signature.as_ref().map_or(0, String::len)),
                Part::ToolResult(result) => len(result.content.len()),
            };
            bound = bound.saturating_add(tokens);
            // Providers frame each tool call and result like a message of its own.
            messages = messages.saturating_add(1);
        }
    }
    for tool in &request.tooling.tools {
        let definition = schema_bytes(&tool.parameters) + tool.name.len();
        let description = tool.description.as_ref().map_or(0, String::len);
        bound = bound.saturating_add(len(definition + description));
        messages = messages.saturating_add(1);
    }
    if let ResponseFormat::JsonSchema { schema, .. } = &request.format {
        bound = bound.saturating_add(len(schema_bytes(schema)));
    }
    if request.tooling.offered() || request.format.is_json() {
        bound = bound.saturating_add(TOOL_PROMPT_TOKENS);
    }
    bound.saturating_add(TOKENS_PER_MESSAGE.saturating_mul(messages))
}

/// What admission decided, when it is not a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted(Ticket),
    /// The access the caller remembered (`access`) no longer holds; nothing was taken.
    AccessChanged,
}

/// The windows an instant falls in.
struct Windows {
    unix: i64,
    minute: i64,
    /// Seconds until the minute's window resets.
    reset_secs: u64,
    month: String,
    month_end: i64,
}

impl Windows {
    /// What admitting a request of `chat` asks of the store: a slot, a message and `hold` tokens.
    fn admission(
        &self,
        org: &OrgId,
        plan: &Plan,
        chat: &PreparedChat,
        (request_id, hold): (&str, u64),
        access: Option<AccessCheck>,
    ) -> Admission {
        Admission {
            org: org.clone(),
            request_id: request_id.to_owned(),
            attempt: 0,
            minute: self.minute,
            requests_per_minute: plan.requests_per_minute,
            month: self.month.clone(),
            messages_limit: plan.messages_per_month,
            tokens_limit: plan.tokens_per_month,
            in_flight_limit: plan.max_in_flight,
            hold: Hold {
                request_id: request_id.to_owned(),
                model: chat.model.id.to_string(),
                tokens: hold,
                expires_at: self.unix.saturating_add(HOLD_SECONDS),
            },
            // Clean-up only: the window is in the key, so a late delete changes nothing.
            rate_expires_at: (self.minute + 1) * 60 + 3600,
            month_expires_at: self.month_end + 35 * 86_400,
            access,
        }
    }

    fn at(now: OffsetDateTime) -> Windows {
        let unix = now.unix_timestamp();
        Windows {
            unix,
            minute: unix.div_euclid(60),
            reset_secs: u64::try_from(60 - unix.rem_euclid(60)).unwrap_or(60),
            month: clock::month_of(now),
            month_end: clock::next_month_start(now).unix_timestamp(),
        }
    }
}

/// What to do after the month refused an admission.
enum Next {
    /// Try again as it is: dead holds were released, or others settled meanwhile.
    Retry,
    /// Try again asking for this many output tokens: all that is left.
    Clamp(u64),
    Refuse,
    /// The org already has as many requests running as its plan allows.
    TooManyInFlight,
}

/// Admits a request against the org's plan, or says why not. With `access`, the plan and the
/// membership the caller remembered are confirmed in the same step as the rate slot is taken.
/// `retention` is how long the records of abandoned requests it releases are kept.
pub async fn admit(
    meter: &dyn MeterStore,
    (now, retention): (OffsetDateTime, Duration),
    org: &OrgId,
    plan: &Plan,
    chat: &PreparedChat,
    mut access: Option<AccessCheck>,
) -> Result<Verdict, GatewayError> {
    let at = Windows::at(now);
    let input = input_upper_bound(chat);
    let mut max_tokens = u64::from(chat.request.max_tokens);
    let request_id = uuid::Uuid::now_v7().to_string();
    for attempt in 0..ATTEMPTS {
        // Confirmed once is enough: a retry below reuses what the first attempt read.
        let hold = input.saturating_add(max_tokens);
        let mut admission = at.admission(org, plan, chat, (&request_id, hold), access.take());
        admission.attempt = attempt;
        match meter.admit(&admission).await? {
            AdmitOutcome::AccessChanged => return Ok(Verdict::AccessChanged),
            AdmitOutcome::Admitted {
                requests_in_window,
                holds,
                committed,
            } => {
                // Holds of requests that died are released as they are seen, so they never pile
                // up in the month's item (on unlimited plans nothing else would): one per
                // admission, picked by this request's id so that concurrent admissions mostly
                // pick different ones. A failure is left for a later admission: this one is in.
                let dead: Vec<&Hold> = holds.iter().filter(|h| h.expires_at < at.unix).collect();
                if let Some(hold) = pick(&dead, &request_id) {
                    let times = (now, retention);
                    if let Err(error) = release_abandoned(meter, org, &at.month, hold, times).await
                    {
                        tracing::warn!(%org, request_id = %hold.request_id, %error, "an abandoned hold could not be released yet");
                    }
                }
                return Ok(Verdict::Admitted(Ticket {
                    request_id,
                    month: at.month,
                    date: clock::date_of(now),
                    hold_tokens: admission.hold.tokens,
                    max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
                    rate: RateStatus {
                        limit: plan.requests_per_minute,
                        remaining: plan.requests_per_minute.saturating_sub(requests_in_window),
                        reset_secs: at.reset_secs,
                    },
                    tokens: plan.tokens_per_month.map(|limit| TokenStatus {
                        limit,
                        remaining: limit.saturating_sub(committed),
                        reset_secs: u64::try_from(at.month_end.saturating_sub(at.unix))
                            .unwrap_or(0),
                    }),
                }));
            }
            AdmitOutcome::RateLimited { .. } => {
                return Err(LimitError::RateLimited {
                    limit: plan.requests_per_minute,
                    reset_secs: at.reset_secs,
                }
                .into());
            }
            AdmitOutcome::MonthlyExceeded(counter) => {
                let month = (at.month.as_str(), now, retention);
                match after_refusal(meter, org, plan, month, &counter, (input, max_tokens)).await? {
                    Next::Retry => {}
                    Next::Clamp(output) => max_tokens = output,
                    Next::Refuse => break,
                    Next::TooManyInFlight => {
                        return Err(LimitError::TooManyInFlight {
                            limit: plan.max_in_flight,
                        }
                        .into())
                    }
                }
            }
        }
    }
    Err(LimitError::MonthlyExceeded.into())
}

/// Lets a job submission in: it takes a slot of the org's minute window, as a chat does, and is
/// refused with 402 when its `items` would not fit the messages left this month (those of
/// requests in flight count as used). A refused submission takes nothing.
pub async fn admit_submission(
    meter: &dyn MeterStore,
    now: OffsetDateTime,
    (org, job): (&OrgId, &str),
    plan: &Plan,
    items: u64,
) -> Result<RateStatus, GatewayError> {
    let at = Windows::at(now);
    let slot = submission_slot(&at, (org, job), plan);
    let Some(in_window) = meter.take_slot(&slot).await? else {
        return Err(LimitError::RateLimited {
            limit: plan.requests_per_minute,
            reset_secs: at.reset_secs,
        }
        .into());
    };
    if let Some(limit) = plan.messages_per_month {
        let used = match meter.month_counter(org, &at.month).await {
            Ok(counter) => counter.messages,
            Err(err) => {
                meter.give_slot_back(&slot).await?;
                return Err(err.into());
            }
        };
        if used.saturating_add(items) > limit {
            meter.give_slot_back(&slot).await?;
            return Err(LimitError::MonthlyExceeded.into());
        }
    }
    Ok(RateStatus {
        limit: plan.requests_per_minute,
        remaining: plan.requests_per_minute.saturating_sub(in_window),
        reset_secs: at.reset_secs,
    })
}

/// The slot a job submission takes.
fn submission_slot(at: &Windows, (org, job): (&OrgId, &str), plan: &Plan) -> Slot {
    Slot {
        org: org.clone(),
        id: format!("job#{job}"),
        minute: at.minute,
        limit: plan.requests_per_minute,
        expires_at: (at.minute + 1) * 60 + 3600,
    }
}

/// Gives back the slot [`admit_submission`] took for a job refused after it.
pub async fn give_back_submission(
    meter: &dyn MeterStore,
    now: OffsetDateTime,
    (org, job): (&OrgId, &str),
    plan: &Plan,
) -> Result<(), GatewayError> {
    let slot = submission_slot(&Windows::at(now), (org, job), plan);
    Ok(meter.give_slot_back(&slot).await?)
}

/// Decides what follows a refusal by the month, from its counter as it stood: holds of requests
/// that died are released first (they were never going to settle); then the request asks for the
/// output tokens that are left, if that is enough to be worth it.
async fn after_refusal(
    meter: &dyn MeterStore,
    org: &OrgId,
    plan: &Plan,
    (month, now, retention): (&str, OffsetDateTime, Duration),
    counter: &MonthCounter,
    (input, max_tokens): (u64, u64),
) -> Result<Next, GatewayError> {
    let unix = now.unix_timestamp();
    let dead: Vec<&Hold> = counter
        .holds
        .iter()
        .filter(|h| h.expires_at < unix)
        .collect();
    if !dead.is_empty() {
        for hold in dead {
            release_abandoned(meter, org, month, hold, (now, retention)).await?;
        }
        return Ok(Next::Retry);
    }
    if counter.in_flight >= plan.max_in_flight {
        let holds = u64::try_from(counter.holds.len()).unwrap_or(u64::MAX);
        if holds >= plan.max_in_flight {
            return Ok(Next::TooManyInFlight);
        }
        // The count drifted above the holds it counts (an older version settled without
        // it): set it right and try again.
        meter
            .recount_in_flight(org, month, counter.in_flight, holds)
            .await?;
        return Ok(Next::Retry);
    }
    if plan
        .messages_per_month
        .is_some_and(|l| counter.messages >= l)
    {
        return Ok(Next::Refuse);
    }
    let Some(limit) = plan.tokens_per_month else {
        return Ok(Next::Refuse);
    };
    let left = limit.saturating_sub(counter.committed);
    let output_left = left.saturating_sub(input);
    if output_left >= max_tokens {
        return Ok(Next::Retry); // Freed meanwhile by a request that settled.
    }
    if output_left < MIN_CLAMPED_OUTPUT.min(max_tokens) {
        return Ok(Next::Refuse);
    }
    tracing::info!(%org, from = max_tokens, to = output_left, "max_tokens clamped to the month's remaining tokens");
    Ok(Next::Clamp(output_left))
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
    (now, retention): (OffsetDateTime, Duration),
) -> Result<(), GatewayError> {
    tracing::warn!(%org, request_id = %hold.request_id, tokens = hold.tokens, "releasing the hold of an abandoned request");
    let times = usage::Times {
        now,
        took: Duration::ZERO,
        retention,
    };
    meter
        .settle(&usage::abandonment(org, month, hold, times))
        .await
        .map_err(GatewayError::from)
}
