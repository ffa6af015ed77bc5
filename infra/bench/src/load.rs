//! The closed-loop load generator: N workers share one keep-alive client and each sends the same
//! request back to back, so at most N requests are in flight at any time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Client;

/// One request, sent again and again.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub headers: HeaderMap,
    /// JSON, serialised once up front so the loop measures the server, not the encoder.
    pub body: String,
}

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one run measured: only requests started inside the measured window count.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every successful request, sorted ascending.
    pub latencies: Vec<Duration>,
    pub errors: u64,
    /// The first failure, so a broken setup says why instead of only counting.
    pub first_error: Option<String>,
    /// From the end of warm-up until the last measured request finished.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn requests(&self) -> u64 {
        self.latencies.len() as u64 + self.errors
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Nearest-rank percentile of the successful requests' latency; zero when there were none.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Drives `target` for `load.warmup` (unmeasured) then `load.duration` (measured).
pub async fn run(client: &Client, target: Target, load: Load) -> anyhow::Result<Outcome> {
    let target = Arc::new(target);
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let stop_at = measure_from + load.duration;
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let client = client.clone();
            let target = Arc::clone(&target);
            tokio::spawn(async move { worker(&client, &target, measure_from, stop_at).await })
        })
        .collect();
    let mut outcome = Outcome::default();
    for handle in workers {
        outcome.merge(handle.await?);
    }
    outcome.elapsed = measure_from.elapsed();
    outcome.latencies.sort_unstable();
    Ok(outcome)
}

async fn worker(
    client: &Client,
    target: &Target,
    measure_from: Instant,
    stop_at: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return outcome;
        }
        let result = send(client, target).await;
        if started < measure_from {
            continue;
        }
        match result {
            Ok(()) => outcome.latencies.push(started.elapsed()),
            Err(err) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(err);
            }
        }
    }
}

/// One request, body read to the end: the latency covers the whole answer, and the connection goes
/// back to the pool for the next request.
pub async fn send(client: &Client, target: &Target) -> Result<(), String> {
    let response = client
        .post(&target.url)
        .headers(target.headers.clone())
        .body(target.body.clone())
        .send()
        .await
        .map_err(|err| format!("transport: {err}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|err| format!("reading the body: {err}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(millis: &[u64]) -> Outcome {
        Outcome {
            latencies: millis.iter().map(|m| Duration::from_millis(*m)).collect(),
            elapsed: Duration::from_secs(2),
            ..Outcome::default()
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        // GIVEN ten sorted latencies, 1..=10 ms
        let outcome = outcome(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        // THEN p50 is the 5th, p90 the 9th, p99 and max the 10th
        assert_eq!(outcome.percentile(50.0), Duration::from_millis(5));
        assert_eq!(outcome.percentile(90.0), Duration::from_millis(9));
        assert_eq!(outcome.percentile(99.0), Duration::from_millis(10));
        assert_eq!(outcome.max(), Duration::from_millis(10));
        // AND throughput counts successes over the measured time
        assert_eq!(outcome.throughput(), 5.0);
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let outcome = outcome(&[]);
        assert_eq!(outcome.percentile(99.0), Duration::ZERO);
        assert_eq!(outcome.max(), Duration::ZERO);
        assert_eq!(outcome.requests(), 0);
    }
}
