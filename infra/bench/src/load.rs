//! The closed-loop load generator: N workers share one keep-alive client and each sends the same
//! request back to back, so at most N requests are in flight at any time.

use std::future::Future;
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
    /// What every successful request measured (its latency, or its time to first event), sorted
    /// ascending once the run is over.
    pub latencies: Vec<Duration>,
    pub errors: u64,
    /// The first failure, so a broken setup says why instead of only counting.
    pub first_error: Option<String>,
    /// From the end of warm-up until the last measured request finished.
    pub elapsed: Duration,
    /// CPU time the whole process (load client, gateway, simulator) used over `elapsed`.
    pub cpu: Duration,
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

    /// CPU microseconds the process spent per successful request: what a request costs whether
    /// or not the cores were saturated.
    pub fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (self.latencies.len().max(1) as f64)
    }

    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    /// Counts one request: what it measured, or why it failed.
    pub fn record(&mut self, result: Result<Duration, String>) {
        match result {
            Ok(measured) => self.latencies.push(measured),
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert(err);
            }
        }
    }

    /// Sorts the measurements, which the percentiles need.
    pub fn finish(&mut self, elapsed: Duration, cpu: Duration) {
        self.elapsed = elapsed;
        self.cpu = cpu;
        self.latencies.sort_unstable();
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Drives `target` for `load.warmup` (unmeasured) then `load.duration` (measured); each request's
/// latency covers the whole answer.
pub async fn run(client: &Client, target: Target, load: Load) -> anyhow::Result<Outcome> {
    let (client, target) = (client.clone(), Arc::new(target));
    run_with(load, move || {
        let (client, target) = (client.clone(), Arc::clone(&target));
        async move {
            let started = Instant::now();
            send(&client, &target).await.map(|()| started.elapsed())
        }
    })
    .await
}

/// Calls `request` back to back on `load.concurrency` workers, for `load.warmup` (unmeasured) then
/// `load.duration` (measured). Each call sends one request and returns what it measured.
pub async fn run_with<F, Fut>(load: Load, request: F) -> anyhow::Result<Outcome>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, String>> + Send,
{
    let request = Arc::new(request);
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let stop_at = measure_from + load.duration;
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let request = Arc::clone(&request);
            tokio::spawn(async move { worker(request.as_ref(), measure_from, stop_at).await })
        })
        .collect();
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        process_cpu()
    });
    let mut outcome = Outcome::default();
    for handle in workers {
        outcome.merge(handle.await?);
    }
    let cpu = process_cpu()?.saturating_sub(cpu_at_start.await??);
    outcome.finish(measure_from.elapsed(), cpu);
    Ok(outcome)
}

/// The CPU time (user and system) this process has used so far.
pub fn process_cpu() -> anyhow::Result<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::{TimeVal, TimeValLike};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros =
        |t: TimeVal| Duration::from_micros(u64::try_from(t.num_microseconds()).unwrap_or(0));
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

async fn worker<F, Fut>(request: &F, measure_from: Instant, stop_at: Instant) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Duration, String>>,
{
    let mut outcome = Outcome::default();
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return outcome;
        }
        let result = request().await;
        if started >= measure_from {
            outcome.record(result);
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
