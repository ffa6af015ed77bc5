//! Absorbing provider failures: each attempt of a call is retried on transient failures with
//! exponential backoff and full jitter (or the provider's `Retry-After`), then the model's
//! fallbacks that the plan allows are tried, all within the call's deadline. Which failures are
//! transient is the provider error's to say ([`ProviderError::is_transient`]).

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::catalog::{Model, RetryPolicy};
use crate::providers::{
    ChatRequest, ChatResponse, ChatStream, ProviderError, ProviderErrorKind, Providers,
};

/// What a call asks of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The whole answer at once.
    Whole,
    /// A stream, opened and past its first event.
    Stream,
}

/// A provider's answer to one attempt.
pub enum Reply {
    Whole(ChatResponse),
    Stream(ChatStream),
}

/// How the attempts of one call went.
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    /// How many provider calls were made.
    pub made: u32,
    /// The model that answered, if one did.
    pub answered_by: Option<Model>,
    /// The last model asked, answered or not.
    pub last_tried: Option<Model>,
    /// Whether a provider is being asked right now (not between attempts, waiting to retry).
    pub asking: bool,
}

/// The request for one of the call's models: the same conversation, that model's upstream id,
/// and no more output than the call was admitted for (nor than that model allows).
fn request_for(base: &ChatRequest, model: &Model) -> ChatRequest {
    ChatRequest {
        upstream_model: model.upstream.clone(),
        max_tokens: base.max_tokens.min(model.max_tokens),
        ..base.clone()
    }
}

/// A random wait in `[0, min(max_delay, base_delay × 2^attempt)]`: full jitter, so callers that
/// failed together do not come back together.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = policy
        .base_delay
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(policy.max_delay);
    let fraction = getrandom::u64().map_or(0.5, |n| (n >> 11) as f64 / (1u64 << 53) as f64);
    ceiling.mul_f64(fraction)
}

/// Calls `models` in turn, each up to the policy's attempts, until one answers or `deadline`
/// passes. The first model's request is `base` itself; the others are made from it.
pub async fn call(
    providers: &Providers,
    policy: &RetryPolicy,
    (models, base): (&[Model], &ChatRequest),
    ask: Ask,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<Reply, ProviderError> {
    let mut last = None;
    for (index, model) in models.iter().enumerate() {
        let fallback;
        let request = if index == 0 {
            base
        } else {
            fallback = request_for(base, model);
            &fallback
        };
        attempts.last_tried = Some(model.clone());
        match call_model(providers, policy, (model, request), ask, deadline, attempts).await {
            Ok(reply) => {
                attempts.answered_by = Some(model.clone());
                return Ok(reply);
            }
            Err(err) => {
                let next = models.get(index + 1).filter(|_| err.worth_a_fallback());
                if let Some(next) = next {
                    tracing::warn!(model = %model.id, fallback = %next.id, error = %err, "falling back to another model");
                }
                let stop = next.is_none();
                last = Some(err);
                if stop {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        let provider = models
            .first()
            .map_or(crate::catalog::ProviderKind::OpenAi, |m| m.provider);
        ProviderError::new(provider, ProviderErrorKind::Timeout)
    }))
}

/// One model's attempts: retried while the failure is transient, attempts remain and the wait
/// fits before the deadline.
async fn call_model(
    providers: &Providers,
    policy: &RetryPolicy,
    (model, request): (&Model, &ChatRequest),
    ask: Ask,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<Reply, ProviderError> {
    let timed_out = || ProviderError::new(model.provider, ProviderErrorKind::Timeout);
    let mut attempt = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        attempts.made = attempts.made.saturating_add(1);
        attempt += 1;
        let once = once(providers, model, request, ask);
        attempts.asking = true;
        let result = tokio::time::timeout(left, once).await;
        attempts.asking = false;
        let err = match result {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(err)) => err,
            Err(_) => timed_out(),
        };
        let wait = err
            .retry_after()
            .unwrap_or_else(|| backoff(policy, attempt - 1));
        let retry =
            err.is_transient() && attempt < policy.max_attempts && Instant::now() + wait < deadline;
        tracing::warn!(
            model = %model.id,
            provider = %model.provider,
            attempt,
            error = %err,
            retry_in_ms = retry.then(|| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            "provider attempt failed"
        );
        if !retry {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
    }
}

/// One attempt. A stream counts as answered only once its first event arrived, so a provider
/// that fails before any output (an error status, or an error as its first event) is retried.
async fn once(
    providers: &Providers,
    model: &Model,
    request: &ChatRequest,
    ask: Ask,
) -> Result<Reply, ProviderError> {
    let provider = providers.get(model.provider);
    match ask {
        Ask::Whole => provider.complete(request).await.map(Reply::Whole),
        Ask::Stream => {
            let mut events = provider.stream(request).await?;
            match events.next().await {
                Some(Err(err)) => Err(err),
                Some(Ok(first)) => Ok(Reply::Stream(Box::pin(
                    futures::stream::iter([Ok(first)]).chain(events),
                ))),
                // Ended without a single event: never poll an ended stream again.
                None => Ok(Reply::Stream(Box::pin(futures::stream::empty()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_a_doubling_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        for (attempt, ceiling) in [(0, 100), (1, 200), (2, 350), (10, 350), (40, 350)] {
            let waits: Vec<Duration> = (0..50).map(|_| backoff(&policy, attempt)).collect();
            assert!(waits.iter().all(|w| *w <= Duration::from_millis(ceiling)));
            assert!(waits.iter().any(|w| *w != waits[0]), "jittered");
        }
    }
}
