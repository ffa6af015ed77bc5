//! One metered call, the path of every chat the gateway answers (`/chat`, `/chat/stream`, a job
//! item): admit it (membership, plan, rate, month, hold), call the provider, settle it once.
//!
//! [`admit`] hands back an [`Admitted`] call: its `max_tokens` already clamped to what the month
//! has left, its rate-limit status, and the duty to settle. Every way out settles it exactly once:
//! an answer charges its usage, a provider failure gives the message back, and a call dropped
//! unsettled (its client went away, its future was cancelled) settles from its `Drop`: charged the
//! input it sent if the provider was called, given back if not. A hold is never left to lapse.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use crate::access;
use crate::catalog::{Model, Plan};
use crate::chat::{self, ChatInput, PreparedChat};
use crate::error::{GatewayError, PlanError};
use crate::ids::OrgId;
use crate::limits::{self, RateStatus, Ticket, TokenStatus, Verdict};
use crate::money::NanoUsd;
use crate::providers::{
    ChatResponse, ChatStream, FinishReason, ProviderError, StreamEvent, ToolCallDelta, Usage,
};
use crate::resilience::{self, Ask, Attempts, Reply};
use crate::state::AppState;
use crate::store::{AccessCheck, ItemStatus, JobItemFinish, Membership, Party, StoreError};
use crate::telemetry::RequestLog;
use crate::usage::{self, Ending, Times};

/// Admits a chat of `user` in `org`. `input` is the request as parsed, or why it could not be:
/// membership is checked before the body, so a caller who may not use the org hears that first.
///
/// When this process read the membership recently it is not read first: admission confirms it
/// while it takes the rate slot, one round trip instead of two. If it changed, or if the
/// remembered plan would refuse the request, everything is done again on a fresh read.
pub async fn admit(
    state: &AppState,
    party: &Party,
    org: OrgId,
    input: Result<ChatInput, GatewayError>,
) -> Result<Admitted, GatewayError> {
    let remembered = state.access.recall(&org, party);
    let input = match input {
        Ok(input) => input,
        Err(err) => {
            // The membership first: on a remembered one, read it again.
            state.access.forget(&org, party);
            access::read(state.stores.orgs.as_ref(), &state.access, org, party).await?;
            return Err(err);
        }
    };
    let input = match remembered {
        Some(membership) => match admit_remembered(state, party, membership, input).await? {
            Ok(admitted) => return Ok(admitted),
            Err(input) => {
                state.access.forget(&org, party);
                input
            }
        },
        None => input,
    };
    let membership = access::read(state.stores.orgs.as_ref(), &state.access, org, party).await?;
    let plan = plan_of(state, &membership)?;
    let chat = chat::prepare(&state.catalog, plan, input)?;
    match admit_prepared(state, party, &membership, plan, chat, false).await? {
        Ok(admitted) => Ok(admitted),
        Err(_) => Err(GatewayError::Internal(
            "admission without an access check reported changed access".into(),
        )),
    }
}

/// Admission on a remembered membership, confirmed as the rate slot is taken. Gives the input
/// back if the membership no longer holds or its plan would refuse the request: refusals are
/// given on fresh reads only.
async fn admit_remembered(
    state: &AppState,
    party: &Party,
    membership: Membership,
    input: ChatInput,
) -> Result<Result<Admitted, ChatInput>, GatewayError> {
    let Ok(plan) = plan_of(state, &membership) else {
        return Ok(Err(input));
    };
    let Ok((model, max_tokens)) = chat::check(&state.catalog, plan, &input) else {
        return Ok(Err(input));
    };
    let chat = chat::build(model, max_tokens, input);
    Ok(admit_prepared(state, party, &membership, plan, chat, true)
        .await?
        .map_err(PreparedChat::into_input))
}

/// Takes the counters for a prepared request; gives it back if `confirm` found the remembered
/// access changed (nothing taken).
async fn admit_prepared(
    state: &AppState,
    party: &Party,
    membership: &Membership,
    plan: &Plan,
    mut chat: PreparedChat,
    confirm: bool,
) -> Result<Result<Admitted, PreparedChat>, GatewayError> {
    let check = confirm.then(|| AccessCheck {
        party: party.clone(),
        plan: membership.org.plan.clone(),
    });
    let (state, party, org, plan) = (
        state.clone(),
        party.clone(),
        membership.org.id.clone(),
        plan.clone(),
    );
    // Admission runs to its end (see `to_the_end`): if the caller goes away meanwhile, the call it
    // made is dropped with the task's output, and its Drop gives the message and hold back.
    let log = RequestLog::current();
    let admission = to_the_end(async move {
        let now = (state.clock.now(), state.request_retention);
        let meter = state.stores.meter.as_ref();
        let ticket = match limits::admit(meter, now, &org, &plan, &chat, check).await? {
            Verdict::AccessChanged => return Ok(Err(chat)),
            Verdict::Admitted(ticket) => ticket,
        };
        chat.request.max_tokens = ticket.max_tokens;
        let models = chat::candidates(&state.catalog, &plan, &chat);
        if let Some(log) = &log {
            log.principal(&party, Some(&org));
            log.admitted(&ticket.request_id, chat.model.id.as_str());
        }
        Ok(Ok(Admitted {
            call: Some(Call {
                state,
                party,
                org,
                chat,
                ticket,
                models,
                called_at: None,
                attempts: Attempts::default(),
                log,
            }),
        }))
    });
    admission
        .await
        .map_err(|e| GatewayError::Internal(format!("admission task failed: {e}")))?
}

/// Runs `work` to its end even if the caller stops waiting for it. It is polled here first: work
/// that is done at once (the in-memory store's) costs no task and no wake-up of another thread;
/// work that has to wait is handed, as it stands, to a task of its own, which finishes it whatever
/// the caller does. Between that first poll and the hand-over nothing awaits, so there is no moment
/// at which dropping the caller could abandon the work half done. A panic in the work, here or on
/// its task, is an error for the caller, as a failed task was.
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, Unfinished> {
    let mut work = Box::pin(AssertUnwindSafe(work).catch_unwind());
    let outcome = match futures::poll!(work.as_mut()) {
        Poll::Ready(outcome) => outcome,
        Poll::Pending => tokio::spawn(work)
            .await
            .map_err(|e| Unfinished(e.to_string()))?,
    };
    outcome.map_err(|_| Unfinished("it panicked".into()))
}

/// Why work run by [`to_the_end`] did not finish.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unfinished(String);

/// The plan of a membership's org, as the catalog defines it.
pub fn plan_of<'a>(state: &'a AppState, membership: &Membership) -> Result<&'a Plan, GatewayError> {
    state
        .catalog
        .plan(&membership.org.plan)
        .ok_or_else(|| PlanError::UnknownPlan(membership.org.plan.to_string()).into())
}

/// An admitted call, until it is settled.
struct Call {
    state: AppState,
    party: Party,
    org: OrgId,
    chat: PreparedChat,
    ticket: Ticket,
    /// The models to ask, in order: the admitted one, then its fallbacks the plan allows.
    models: Vec<Model>,
    /// When the provider was asked: from then on it may have done work worth charging.
    called_at: Option<Instant>,
    attempts: Attempts,
    /// The request's log line, told how the call went.
    log: Option<RequestLog>,
}

impl Call {
    /// The model that answered, else the last one asked, else the admitted one.
    fn served(&self) -> &Model {
        self.attempts
            .answered_by
            .as_ref()
            .or(self.attempts.last_tried.as_ref())
            .unwrap_or(&self.chat.model)
    }

    fn settlement(&self, ending: Ending) -> crate::store::Settlement {
        let times = Times {
            now: self.state.clock.now(),
            took: self.called_at.map_or(Duration::ZERO, |at| at.elapsed()),
            retention: self.state.request_retention,
        };
        let served = usage::Served {
            model: self.served(),
            requested: &self.chat.model.id,
            attempts: self.attempts.made,
        };
        let settlement = usage::settlement(
            &self.ticket,
            (&self.org, &self.party),
            served,
            ending,
            times,
        );
        if let Some(log) = &self.log {
            log.settled(&settlement.record, self.served().provider.as_str());
        }
        settlement
    }

    /// How a call that nobody settled ends: the input the provider was sent is charged if a
    /// provider was working on it or had answered (it did that work); if none was (never asked,
    /// or only failed attempts and a wait before the next), the message is given back.
    fn ending_unsettled(&self, why: &str) -> Ending {
        if self.attempts.asking || self.attempts.answered_by.is_some() {
            Ending::Answered {
                usage: self.estimate(None, 0),
                note: Some(format!("usage estimated: {why}")),
            }
        } else {
            Ending::Failed(why.to_owned())
        }
    }

    fn estimate(&self, reported: Option<Usage>, text_bytes: usize) -> Usage {
        usage::estimated(
            limits::input_upper_bound(&self.chat),
            self.ticket.max_tokens,
            reported,
            text_bytes,
        )
    }
}

/// A call let in by [`admit`]; settles exactly once, however it ends (see the module's docs).
pub struct Admitted {
    /// `None` once settled.
    call: Option<Call>,
}

impl Admitted {
    fn call(&self) -> &Call {
        self.call
            .as_ref()
            .expect("an Admitted is consumed by settling, so it is never seen settled")
    }

    /// The request as admitted: its model, and `max_tokens` as clamped by admission.
    pub fn chat(&self) -> &PreparedChat {
        &self.call().chat
    }

    /// The rate-limit window as admission left it, for `X-RateLimit-*`.
    pub fn rate(&self) -> RateStatus {
        self.call().ticket.rate
    }

    /// The month's tokens as admission left them, when the plan limits them.
    pub fn tokens(&self) -> Option<TokenStatus> {
        self.call().ticket.tokens
    }

    pub fn request_id(&self) -> &str {
        &self.call().ticket.request_id
    }

    /// The price of `usage` on the model that answered (the admitted one until one did).
    pub fn cost(&self, usage: Usage) -> NanoUsd {
        self.call()
            .served()
            .cost(usage.input_tokens, usage.output_tokens)
    }

    /// The public id of the model that answered (the admitted one until one did).
    pub fn model(&self) -> &crate::ids::ModelId {
        &self.call().served().id
    }

    /// Calls the provider for the whole answer, then settles: the usage it reports (never more
    /// than the hold) on success, the message given back on failure. Gives the answer and the
    /// model that gave it, which a fallback may have been.
    pub async fn complete(mut self) -> Result<(ChatResponse, crate::ids::ModelId), ProviderError> {
        match self.ask().await {
            Ok(response) => {
                let model = self.model().clone();
                self.settle(Ending::Answered {
                    usage: response.usage,
                    note: None,
                })
                .await;
                Ok((response, model))
            }
            Err(err) => {
                self.settle(Ending::Failed(err.to_string())).await;
                Err(err)
            }
        }
    }

    /// Asks the providers (the model, retried, then its fallbacks) within the call's deadline.
    async fn reply(&mut self, ask: Ask, deadline: Instant) -> Result<Reply, ProviderError> {
        let call = self
            .call
            .as_mut()
            .expect("an Admitted is consumed by settling, so it is never seen settled");
        let started = Instant::now();
        call.called_at = Some(started);
        let state = &call.state;
        let reply = resilience::call(
            &state.providers,
            &state.catalog.retries,
            (&call.models, &call.chat.request),
            ask,
            deadline,
            &mut call.attempts,
        )
        .await;
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (requested, served) = (&call.chat.model.id, &call.served().id);
        match &reply {
            Ok(_) => {
                tracing::debug!(request_id = %call.ticket.request_id, model = %requested, served_by = %served, attempts = call.attempts.made, duration_ms = took_ms, "provider answered")
            }
            Err(err) => {
                tracing::warn!(request_id = %call.ticket.request_id, model = %requested, attempts = call.attempts.made, duration_ms = took_ms, error = %err, "every provider attempt failed")
            }
        }
        reply
    }

    /// The whole answer, its usage bounded by the hold; not settled.
    async fn ask(&mut self) -> Result<ChatResponse, ProviderError> {
        let deadline = Instant::now() + self.call().state.deadline;
        match self.reply(Ask::Whole, deadline).await? {
            Reply::Whole(mut response) => {
                response.usage = usage::bounded(response.usage, &self.call().ticket);
                Ok(response)
            }
            Reply::Stream(_) => Err(ProviderError::new(
                self.call().served().provider,
                crate::providers::ProviderErrorKind::InvalidResponse(
                    "a stream, not an answer".into(),
                ),
            )),
        }
    }

    /// Calls the provider for a job item's answer and, if it answers, stores the answer (made by
    /// `result_of` from the response and its cost) and charges it in one write, on condition the
    /// attempt still holds the item.
    pub async fn complete_item(
        mut self,
        item: ItemAttempt,
        result_of: impl FnOnce(&ChatResponse, NanoUsd, &crate::ids::ModelId) -> String,
    ) -> ItemAnswer {
        let response = match self.ask().await {
            Ok(response) => response,
            Err(err) => {
                self.settle(Ending::Failed(err.to_string())).await;
                return ItemAnswer::ProviderFailed(err);
            }
        };
        let cost = self.cost(response.usage);
        let Some(call) = self.call.take() else {
            return ItemAnswer::Stored;
        };
        let mut settlement = call.settlement(Ending::Answered {
            usage: response.usage,
            note: None,
        });
        settlement.job_item = Some(JobItemFinish {
            org: item.org,
            job: item.job,
            item: item.item,
            attempt: item.attempt,
            status: ItemStatus::Succeeded,
            result: Some(result_of(&response, cost, &call.served().id)),
            error: None,
        });
        // The write runs to its end (see `to_the_end`), even if the worker stops waiting.
        let write = to_the_end(async move {
            let meter = call.state.stores.meter.clone();
            let Err(err) = meter.settle(&settlement).await else {
                return ItemAnswer::Stored;
            };
            // Nothing was written (or an earlier send of this same write was, and this request
            // is settled already): the answer is dropped, so the request gives its message and
            // hold back, as a provider failure would.
            let why = match &err {
                StoreError::Conflict(_) => "another attempt answered the item first".to_owned(),
                other => format!("the answer could not be stored: {other}"),
            };
            usage::apply(meter.as_ref(), &call.settlement(Ending::Failed(why))).await;
            match err {
                StoreError::Conflict(_) => ItemAnswer::Overtaken,
                other => ItemAnswer::StoreFailed(other),
            }
        });
        write.await.unwrap_or_else(|e| {
            ItemAnswer::StoreFailed(StoreError::Unavailable(format!(
                "settling task failed: {e}"
            )))
        })
    }

    /// Opens a provider's stream and waits for its first event, retrying and falling back as a
    /// whole answer would, so that a provider failing before any output (an HTTP error, or an
    /// error as its first event) is retried, or settled as a failure and answered as a plain
    /// error. Gives up at `deadline`.
    pub async fn open_stream(
        mut self,
        deadline: Instant,
    ) -> Result<MeteredStream, (ProviderError, RateStatus)> {
        let rate = self.rate();
        match self.reply(Ask::Stream, deadline).await {
            Ok(Reply::Stream(events)) => Ok(MeteredStream::new(self, events)),
            Ok(Reply::Whole(_)) => {
                let err = ProviderError::new(
                    self.call().served().provider,
                    crate::providers::ProviderErrorKind::InvalidResponse(
                        "an answer, not a stream".into(),
                    ),
                );
                self.settle(Ending::Failed(err.to_string())).await;
                Err((err, rate))
            }
            Err(err) => {
                self.settle(Ending::Failed(err.to_string())).await;
                Err((err, rate))
            }
        }
    }

    /// Settles the call as `ending`, once. The write runs to its end (see `to_the_end`), even if
    /// the caller goes away while it is under way.
    async fn settle(&mut self, ending: Ending) {
        if let Some(call) = self.call.take() {
            let settlement = call.settlement(ending);
            let meter = call.state.stores.meter.clone();
            let write = to_the_end(async move { usage::apply(meter.as_ref(), &settlement).await });
            if let Err(error) = write.await {
                tracing::error!(request_id = %call.ticket.request_id, %error, "the settling task failed");
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let settlement = call.settlement(call.ending_unsettled("the client disconnected"));
        tracing::info!(request_id = %call.ticket.request_id, provider_called = call.called_at.is_some(), "call dropped before it settled; settling it now");
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let meter = call.state.stores.meter.clone();
                runtime.spawn(async move { usage::apply(meter.as_ref(), &settlement).await });
            }
            Err(_) => {
                tracing::error!(event = "usage_unrecorded", request_id = %call.ticket.request_id, "no runtime to settle a dropped call on")
            }
        }
    }
}

/// The job item an attempt answers.
#[derive(Debug, Clone)]
pub struct ItemAttempt {
    pub org: OrgId,
    pub job: crate::ids::JobId,
    pub item: String,
    pub attempt: String,
}

/// How answering a job item ended.
#[derive(Debug)]
pub enum ItemAnswer {
    /// Answered, stored and charged.
    Stored,
    /// Another attempt stored its answer first: this one was dropped, its message given back.
    Overtaken,
    /// The provider failed: the message was given back.
    ProviderFailed(ProviderError),
    /// The answer could not be stored: it was dropped, its message given back.
    StoreFailed(StoreError),
}

/// Why a stream stopped being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The provider's stream ended (finished, or failed: see [`MeteredStream::finish`]).
    Drained,
    /// The client went away.
    ClientGone,
    /// The stream reached its deadline and was cut.
    OutOfTime,
}

/// What a settled stream tells its client last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub usage: Usage,
    pub cost: NanoUsd,
    /// True when the provider never reported the usage and it was estimated.
    pub estimated: bool,
    pub finish_reason: Option<FinishReason>,
    /// Why the answer was cut short, for the client, if it was.
    pub interrupted: Option<String>,
}

/// A piece of a streamed answer, as it is passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    ToolCall(ToolCallDelta),
}

/// A streamed answer being read: the text it passed on, the usage and finish the provider
/// reported, and the admitted call it settles when [`MeteredStream::finish`] is called (or, if
/// it is dropped first, as a dropped call).
pub struct MeteredStream {
    admitted: Admitted,
    events: ChatStream,
    /// The bytes of text and tool-call arguments passed on, for an estimate if the provider
    /// never reports usage.
    text_bytes: usize,
    /// Whether anything was passed on.
    any_output: bool,
    reported: Option<Usage>,
    finish: Option<FinishReason>,
    failure: Option<ProviderError>,
}

impl MeteredStream {
    pub(crate) fn new(admitted: Admitted, events: ChatStream) -> MeteredStream {
        MeteredStream {
            admitted,
            events,
            text_bytes: 0,
            any_output: false,
            reported: None,
            finish: None,
            failure: None,
        }
    }

    pub fn rate(&self) -> RateStatus {
        self.admitted.rate()
    }

    pub fn tokens(&self) -> Option<TokenStatus> {
        self.admitted.tokens()
    }

    /// The public id of the model whose stream this is (a fallback's, perhaps).
    pub fn model(&self) -> &crate::ids::ModelId {
        self.admitted.model()
    }

    pub fn request_id(&self) -> &str {
        self.admitted.request_id()
    }

    /// The next piece of the answer; `None` once the provider's stream ended or failed. Safe to
    /// cancel: every event is recorded as it arrives.
    pub async fn next_piece(&mut self) -> Option<Piece> {
        if self.failure.is_some() {
            return None;
        }
        loop {
            let piece = match self.events.next().await? {
                Ok(StreamEvent::Delta(text)) => {
                    self.text_bytes = self.text_bytes.saturating_add(text.len());
                    Piece::Text(text)
                }
                Ok(StreamEvent::ToolCall(call)) => {
                    let bytes = call.arguments.len() + call.name.as_ref().map_or(0, String::len);
                    self.text_bytes = self.text_bytes.saturating_add(bytes);
                    Piece::ToolCall(call)
                }
                Ok(StreamEvent::Usage(usage)) => {
                    self.reported = Some(usage);
                    continue;
                }
                Ok(StreamEvent::Finish(reason)) => {
                    self.finish = Some(reason);
                    continue;
                }
                Err(err) => {
                    self.failure = Some(err);
                    return None;
                }
            };
            if !self.any_output {
                if let Some(log) = &self.admitted.call().log {
                    log.first_token();
                }
            }
            self.any_output = true;
            return Some(piece);
        }
    }

    /// Stops reading (dropping the upstream request, so nothing more is generated) and settles
    /// what was consumed: the provider's usage for a complete answer; an estimate for one cut
    /// short; nothing, with the message given back, when the provider failed before any output.
    pub async fn finish(self, end: StreamEnd) -> StreamSummary {
        let MeteredStream {
            mut admitted,
            events,
            text_bytes,
            any_output,
            reported,
            finish,
            failure,
        } = self;
        drop(events);
        let complete = finish.is_some() && failure.is_none() && end != StreamEnd::ClientGone;
        let provider_failed_first = !any_output && !complete && end == StreamEnd::Drained;
        let why = match (&failure, end) {
            (Some(err), _) => err.to_string(),
            (None, StreamEnd::ClientGone) => "the client disconnected".to_owned(),
            (None, StreamEnd::OutOfTime) => "the stream reached its time limit".to_owned(),
            (None, StreamEnd::Drained) if provider_failed_first => {
                "the provider ended the stream without any output".to_owned()
            }
            (None, StreamEnd::Drained) => "the provider reported no usage".to_owned(),
        };
        let (ending, estimated) = match reported {
            // The provider failed before any output: like a refusal, nothing is used. (A client
            // that leaves first, or a stream cut at its deadline, is charged what the provider was
            // sent: the provider did that work.)
            _ if provider_failed_first => (Ending::Failed(why), false),
            Some(usage) if complete => (Ending::Answered { usage, note: None }, false),
            _ => {
                let usage = admitted.call().estimate(reported, text_bytes);
                let note = Some(format!("usage estimated: {why}"));
                (Ending::Answered { usage, note }, true)
            }
        };
        let usage = match &ending {
            Ending::Answered { usage, .. } => usage::bounded(*usage, &admitted.call().ticket),
            Ending::Failed(_) => Usage::default(),
        };
        if end == StreamEnd::ClientGone {
            tracing::info!(request_id = %admitted.request_id(), "client went away; upstream cancelled");
        }
        let cost = admitted.cost(usage);
        admitted.settle(ending).await;
        let interrupted = match (failure, end) {
            (Some(err), _) => Some(err.to_string()),
            (None, StreamEnd::OutOfTime) => Some(
                "The answer was cut: the stream reached its time limit. Ask for fewer tokens or use a job."
                    .to_owned(),
            ),
            (None, _) => None,
        };
        StreamSummary {
            usage,
            cost,
            estimated,
            finish_reason: finish,
            interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn work_runs_to_its_end_inline_or_on_a_task_and_a_panic_is_an_error() {
        assert_eq!(to_the_end(async { 1 }).await.expect("at once"), 1);
        let waits = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            2
        };
        assert_eq!(to_the_end(waits).await.expect("on a task"), 2);
        let panics_at_once = to_the_end(async { panic!("at once") });
        let error: Result<(), Unfinished> = panics_at_once.await;
        assert_eq!(error.expect_err("a panic").to_string(), "it panicked");
        let panics_later = to_the_end(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            panic!("later")
        });
        let error: Result<(), Unfinished> = panics_later.await;
        assert_eq!(error.expect_err("a panic").to_string(), "it panicked");
    }

    #[tokio::test]
    async fn work_finishes_when_its_caller_goes_away() {
        // GIVEN work that waits, then says it finished
        let (done, finished) = tokio::sync::oneshot::channel();
        let work = to_the_end(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done.send(());
        });
        // WHEN its caller stops waiting before it is done
        let cut = tokio::time::timeout(Duration::from_millis(1), work).await;
        assert!(cut.is_err());
        // THEN it still finishes
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("finished in time")
            .expect("finished");
    }
}
