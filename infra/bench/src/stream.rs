//! The streaming phase: what the gateway's `POST /api/v1/ai/chat/stream` costs on top of the
//! simulator's Gemini `streamGenerateContent?alt=sse` it relays, for the same prompt.
//!
//! Two figures. Time to first event (TTFT): from sending the request until the first `data:`
//! event has arrived, over sequential requests and at a fixed concurrency. Tokens per second:
//! deltas received over the time from the first delta to the last, on a long unpaced answer (the
//! pipeline's own throughput) and on an answer the simulator paces (the gateway must keep the
//! provider's pace, neither batching nor stalling). Both sides are read with the gateway's own SSE
//! decoder; every stream is read to its end and must end as its protocol says a complete answer
//! ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use gateway::providers::sse::{SseDecoder, SseEvent};
use reqwest::Client;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::load::{self, Load, Outcome, Target};
use crate::{ms, round2, MAX_TOKENS, PROMPT};

/// Unmeasured request pairs before the sequential TTFT run: connections, caches, allocator.
const WARMUP_PAIRS: usize = 20;
/// The long answer: unpaced, so it measures how fast each side can relay tokens.
const LONG_TOKENS: u32 = 2_000;
/// Within both the model's and the team plan's output maximum (8,192).
const LONG_MAX_TOKENS: u32 = 4_096;
/// Long answers per side; the report gives the median rate.
const LONG_RUNS: usize = 11;
/// The paced answer: the gateway should deliver it at the simulator's pace.
const PACED_TPS: u32 = 50;
const PACED_TOKENS: u32 = 100;

/// The same stream asked of the simulator directly and of the gateway.
pub struct Pair {
    pub direct: Target,
    pub gateway: Target,
}

/// How hard to push the TTFT runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Sequential requests per side.
    pub requests: usize,
    /// The concurrent run: workers, warm-up and measured time per side.
    pub load: Load,
}

/// How a stream is framed, which decides what counts as a delta and as a complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Gemini `alt=sse`: every event is a `GenerateContentResponse`; each candidate's text part is
    /// a delta; the answer is complete once a candidate carries a finish reason.
    Gemini,
    /// The gateway: each unnamed event is a delta, `event: usage` is not, `event: error` is a
    /// failure, and `data: [DONE]` ends a complete answer.
    Gateway,
}

impl Framing {
    /// The deltas `event` carries; sets `finished` when it is the end of a complete answer.
    fn deltas(self, event: &SseEvent, finished: &mut bool) -> Result<u64, String> {
        match self {
            Framing::Gateway => match event.event.as_deref() {
                None if event.data == "[DONE]" => {
                    *finished = true;
                    Ok(0)
                }
                None => Ok(1),
                Some("error") => Err(format!("error event: {}", event.data)),
                Some(_) => Ok(0),
            },
            Framing::Gemini => {
                let chunk: GeminiChunk<'_> = serde_json::from_str(&event.data)
                    .map_err(|err| format!("unreadable Gemini event ({err}): {}", event.data))?;
                if let Some(error) = chunk.error {
                    return Err(format!("error event: {error}"));
                }
                let mut deltas = 0;
                for candidate in chunk.candidates {
                    let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
                    deltas += parts
                        .iter()
                        .filter(|part| !part.thought)
                        .filter(|part| part.text.as_deref().is_some_and(|t| !t.is_empty()))
                        .count() as u64;
                    *finished |= candidate.finish_reason.is_some();
                }
                Ok(deltas)
            }
        }
    }
}

/// What the count needs of a Gemini `GenerateContentResponse`
/// (<https://ai.google.dev/api/generate-content#generatecontentresponse>), or of the status object
/// sent in its place on failure. Typed and borrowed, so that reading the direct stream costs the
/// client no more than the gateway pays to read the same stream upstream; the rest is skipped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiChunk<'a> {
    #[serde(default, borrow)]
    candidates: Vec<GeminiCandidate<'a>>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiCandidate<'a> {
    #[serde(borrow)]
    content: Option<GeminiContent<'a>>,
    finish_reason: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct GeminiContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<GeminiPart<'a>>,
}

#[derive(Debug, Deserialize)]
struct GeminiPart<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    /// A thought summary: output, but not answer text (the gateway does not relay it).
    #[serde(default)]
    thought: bool,
}

/// What one streamed request measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// From sending the request until the chunk that completed the first `data:` event arrived.
    /// Events are small and written one at a time, so that chunk also carried its first byte.
    ttft: Duration,
    deltas: u64,
    /// From the chunk with the first delta to the chunk with the last.
    first_to_last: Duration,
}

impl Sample {
    /// Deltas per second between the first and the last: `deltas - 1` intervals in that span.
    fn tokens_per_sec(&self) -> Option<f64> {
        let span = self.first_to_last.as_secs_f64();
        (self.deltas >= 2 && span > 0.0).then(|| (self.deltas - 1) as f64 / span)
    }
}

/// Sends `target` and reads the stream to its end.
async fn sample(client: &Client, target: &Target, framing: Framing) -> Result<Sample, String> {
    let started = Instant::now();
    let response = client
        .post(&target.url)
        .headers(target.headers.clone())
        .body(target.body.clone())
        .send()
        .await
        .map_err(|err| format!("transport: {err}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{status}: {body}"));
    }
    let mut body = response.bytes_stream();
    let mut decoder = SseDecoder::new();
    let (mut first_event, mut first_delta, mut last_delta) = (None, None, None);
    let (mut deltas, mut finished) = (0, false);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| format!("reading the stream: {err}"))?;
        let arrived = Instant::now();
        for event in decoder.push(&chunk) {
            first_event.get_or_insert(arrived);
            let carried = framing.deltas(&event, &mut finished)?;
            if carried > 0 {
                first_delta.get_or_insert(arrived);
                last_delta = Some(arrived);
                deltas += carried;
            }
        }
    }
    if !finished || decoder.has_partial_event() {
        return Err(format!(
            "the stream ended before a complete answer ({deltas} deltas)"
        ));
    }
    let first_event = first_event.ok_or("the stream carried no event")?;
    Ok(Sample {
        ttft: first_event - started,
        deltas,
        first_to_last: match (first_delta, last_delta) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        },
    })
}

/// Everything the streaming phase measured; for each pair, the simulator first.
pub struct StreamReport {
    options: Options,
    sequential: [Outcome; 2],
    concurrent: [Outcome; 2],
    /// Tokens per second, the median over the runs.
    unpaced: [f64; 2],
    paced: [f64; 2],
}

/// Runs the streaming phase; `pair` builds both requests for a prompt and an output limit.
pub async fn run(
    client: &Client,
    options: Options,
    pair: impl Fn(&str, u32) -> anyhow::Result<Pair>,
) -> anyhow::Result<StreamReport> {
    let short = pair(PROMPT, MAX_TOKENS)?;

    eprintln!(
        "streaming: TTFT over {} sequential requests per side, alternating",
        options.requests
    );
    // Alternating keeps drift (frequency scaling, a noisy neighbour) out of the difference.
    for _ in 0..WARMUP_PAIRS {
        let _ = sample(client, &short.direct, Framing::Gemini).await;
        let _ = sample(client, &short.gateway, Framing::Gateway).await;
    }
    let mut sequential = [Outcome::default(), Outcome::default()];
    let started = Instant::now();
    for _ in 0..options.requests {
        let sides = [
            (&short.direct, Framing::Gemini),
            (&short.gateway, Framing::Gateway),
        ];
        for (outcome, (target, framing)) in sequential.iter_mut().zip(sides) {
            outcome.record(sample(client, target, framing).await.map(|s| s.ttft));
        }
    }
    for outcome in &mut sequential {
        // Shared by both sides, so no throughput or CPU is reported for this run.
        outcome.finish(started.elapsed(), Duration::ZERO);
    }

    eprintln!(
        "streaming: TTFT at concurrency {} for {}s (+{}s warm-up) per side",
        options.load.concurrency,
        options.load.duration.as_secs(),
        options.load.warmup.as_secs()
    );
    let concurrent = [
        ttft_under_load(client, short.direct, Framing::Gemini, options.load).await?,
        ttft_under_load(client, short.gateway, Framing::Gateway, options.load).await?,
    ];

    eprintln!(
        "streaming: tokens per second, {LONG_TOKENS} tokens unpaced, {LONG_RUNS} runs per side"
    );
    let long = pair(
        &format!("[sim:tokens={LONG_TOKENS}] {PROMPT}"),
        LONG_MAX_TOKENS,
    )?;
    let unpaced = rates(client, &long, LONG_RUNS, LONG_TOKENS).await?;
    eprintln!("streaming: tokens per second, {PACED_TOKENS} tokens paced at {PACED_TPS}/s");
    let paced = pair(
        &format!("[sim:tps={PACED_TPS}][sim:tokens={PACED_TOKENS}] {PROMPT}"),
        MAX_TOKENS,
    )?;
    let paced = rates(client, &paced, 1, PACED_TOKENS).await?;

    Ok(StreamReport {
        options,
        sequential,
        concurrent,
        unpaced,
        paced,
    })
}

/// Time to first event of `target` under `load`: each worker reads its streams to the end.
async fn ttft_under_load(
    client: &Client,
    target: Target,
    framing: Framing,
    load: Load,
) -> anyhow::Result<Outcome> {
    let (client, target) = (client.clone(), Arc::new(target));
    load::run_with(load, move || {
        let (client, target) = (client.clone(), Arc::clone(&target));
        async move { sample(&client, &target, framing).await.map(|s| s.ttft) }
    })
    .await
}

/// The median tokens per second of `runs` streams of `tokens` tokens per side, alternating sides.
async fn rates(client: &Client, pair: &Pair, runs: usize, tokens: u32) -> anyhow::Result<[f64; 2]> {
    let mut measured: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (side, target, framing) in [
            (0, &pair.direct, Framing::Gemini),
            (1, &pair.gateway, Framing::Gateway),
        ] {
            let name = side_name(side);
            let sample = sample(client, target, framing)
                .await
                .map_err(|err| anyhow::anyhow!("{name} stream of {tokens} tokens: {err}"))?;
            if sample.deltas != u64::from(tokens) {
                bail!(
                    "{name} stream delivered {} deltas, expected {tokens}",
                    sample.deltas
                );
            }
            measured[side].push(
                sample
                    .tokens_per_sec()
                    .with_context(|| format!("{name} stream: no time between deltas"))?,
            );
        }
    }
    Ok(measured.map(|mut rates| median(&mut rates)))
}

fn side_name(side: usize) -> &'static str {
    ["simulator", "gateway"][side]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

impl StreamReport {
    fn added_p50(outcomes: &[Outcome; 2]) -> f64 {
        ms(outcomes[1].percentile(50.0)) - ms(outcomes[0].percentile(50.0))
    }

    fn ratio(rates: &[f64; 2]) -> f64 {
        rates[1] / rates[0].max(f64::EPSILON)
    }

    fn concurrent_mode(&self) -> String {
        format!("concurrency {}", self.options.load.concurrency)
    }

    /// The two tables: TTFT, then tokens per second.
    pub fn print(&self) {
        println!("streaming: time to the first data event (TTFT)");
        println!(
            "{:<10} {:<15} {:>9} {:>7} {:>8} {:>8}",
            "target", "mode", "requests", "errors", "p50 ms", "p99 ms"
        );
        let concurrent_mode = self.concurrent_mode();
        for (mode, outcomes) in [
            ("sequential", &self.sequential),
            (concurrent_mode.as_str(), &self.concurrent),
        ] {
            for (side, outcome) in outcomes.iter().enumerate() {
                println!(
                    "{:<10} {:<15} {:>9} {:>7} {:>8.2} {:>8.2}",
                    side_name(side),
                    mode,
                    outcome.requests(),
                    outcome.errors,
                    ms(outcome.percentile(50.0)),
                    ms(outcome.percentile(99.0)),
                );
            }
        }
        println!(
            "gateway added TTFT (p50): sequential {:+.2} ms, {concurrent_mode} {:+.2} ms",
            Self::added_p50(&self.sequential),
            Self::added_p50(&self.concurrent),
        );
        for (mode, outcomes) in [
            ("sequential", &self.sequential),
            (concurrent_mode.as_str(), &self.concurrent),
        ] {
            for (side, outcome) in outcomes.iter().enumerate() {
                if let Some(error) = &outcome.first_error {
                    println!("first error ({}, {mode}): {error}", side_name(side));
                }
            }
        }
        println!();
        println!("streaming: tokens per second, first delta to last");
        println!(
            "{:<34} {:>10} {:>10} {:>7}",
            "answer", "simulator", "gateway", "ratio"
        );
        for (answer, rates) in [
            (
                format!("{LONG_TOKENS} tokens unpaced (median of {LONG_RUNS})"),
                &self.unpaced,
            ),
            (
                format!("{PACED_TOKENS} tokens paced at {PACED_TPS}/s"),
                &self.paced,
            ),
        ] {
            println!(
                "{answer:<34} {:>10.1} {:>10.1} {:>7.3}",
                rates[0],
                rates[1],
                Self::ratio(rates)
            );
        }
    }

    /// The `"stream"` member of the JSON line.
    pub fn json(&self) -> Value {
        let ttft = |outcomes: &[Outcome; 2]| {
            let side = |outcome: &Outcome| {
                json!({
                    "requests": outcome.requests(),
                    "errors": outcome.errors,
                    "p50_ms": round2(ms(outcome.percentile(50.0))),
                    "p99_ms": round2(ms(outcome.percentile(99.0))),
                })
            };
            json!({
                "simulator": side(&outcomes[0]),
                "gateway": side(&outcomes[1]),
                "gateway_added_p50_ms": round2(Self::added_p50(outcomes)),
            })
        };
        let rate = |tokens: u32, rates: &[f64; 2]| {
            json!({
                "tokens": tokens,
                "simulator": (rates[0] * 10.0).round() / 10.0,
                "gateway": (rates[1] * 10.0).round() / 10.0,
                "ratio": (Self::ratio(rates) * 1000.0).round() / 1000.0,
            })
        };
        let mut sequential = ttft(&self.sequential);
        sequential["requests_per_side"] = json!(self.options.requests);
        let mut concurrent = ttft(&self.concurrent);
        concurrent["concurrency"] = json!(self.options.load.concurrency);
        concurrent["duration_secs"] = json!(self.options.load.duration.as_secs());
        let mut unpaced = rate(LONG_TOKENS, &self.unpaced);
        unpaced["runs"] = json!(LONG_RUNS);
        let mut paced = rate(PACED_TOKENS, &self.paced);
        paced["provider_tps"] = json!(PACED_TPS);
        json!({
            "ttft": {"sequential": sequential, "concurrent": concurrent},
            "tokens_per_sec": {"unpaced": unpaced, "paced": paced},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(framing: Framing, frames: &str) -> Result<(u64, bool), String> {
        let mut decoder = SseDecoder::new();
        let mut finished = false;
        let mut deltas = 0;
        for event in decoder.push(frames.as_bytes()) {
            deltas += framing.deltas(&event, &mut finished)?;
        }
        Ok((deltas, finished))
    }

    #[test]
    fn gateway_deltas_are_its_unnamed_events_but_done() {
        // GIVEN a complete gateway stream: two deltas (one of two lines), usage, [DONE]
        let frames = "data: Hello\n\ndata: a\ndata: b\n\nevent: usage\ndata: {\"output_tokens\":2}\n\ndata: [DONE]\n\n";
        // THEN two deltas, and the answer is complete
        assert_eq!(read(Framing::Gateway, frames), Ok((2, true)));
        // AND without [DONE] it is not
        assert_eq!(read(Framing::Gateway, "data: Hello\n\n"), Ok((1, false)));
    }

    #[test]
    fn a_gateway_error_event_fails_the_sample() {
        let frames = "data: Hi\n\nevent: error\ndata: {\"detail\":\"cut\"}\n\n";
        assert!(read(Framing::Gateway, frames).is_err());
    }

    #[test]
    fn gemini_deltas_are_candidates_text_parts() {
        // GIVEN Gemini alt=sse events, CRLF-framed as Google writes them; the last has a finish
        let frames = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"},{\"text\":\"hm\",\"thought\":true}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{}}\r\n\r\n",
        );
        // THEN two deltas (a thought is not text), and the answer is complete
        assert_eq!(read(Framing::Gemini, frames), Ok((2, true)));
    }

    #[test]
    fn a_gemini_error_object_fails_the_sample() {
        let frames = "data: {\"error\":{\"code\":503,\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
        assert!(read(Framing::Gemini, frames).is_err());
    }

    #[test]
    fn the_rate_counts_intervals_between_deltas() {
        // GIVEN 101 deltas, the last 2 s after the first
        let sample = Sample {
            ttft: Duration::ZERO,
            deltas: 101,
            first_to_last: Duration::from_secs(2),
        };
        // THEN 100 intervals in 2 s: 50 a second
        assert_eq!(sample.tokens_per_sec(), Some(50.0));
        // AND one delta has no rate
        let one = Sample {
            deltas: 1,
            ..sample
        };
        assert_eq!(one.tokens_per_sec(), None);
    }
}
