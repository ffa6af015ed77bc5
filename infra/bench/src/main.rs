//! Load benchmark: how much latency and throughput the gateway costs on top of the provider it
//! fronts.
//!
//! One process runs the provider simulator and the local gateway (in-memory store) on loopback,
//! then drives, one after the other and at the same fixed concurrency, the simulator's Gemini
//! `generateContent` directly, the same request through a bare proxy on the gateway's HTTP stack
//! (see `proxy.rs`), and the gateway's `POST /api/v1/ai/chat` for the same model (which calls that
//! very simulator). The difference is the gateway: auth, org and plan checks, the provider
//! adapter, usage accounting; the proxy row shows how much of it any HTTP hop costs. Client,
//! gateway and simulator share the machine's cores, so compare the rows with each other rather
//! than with production numbers; the CPU each request costs the process is printed too.
//!
//! With `--store dynamodb` the gateway keeps its data in a fresh table of a local DynamoDB
//! (`AWS_ENDPOINT_URL_DYNAMODB` or `GATEWAY_TEST_DYNAMODB_ENDPOINT`), and before the load one chat
//! request is sent alone to measure what it costs there: round trips before and after the provider
//! call, read and write capacity units (see `store.rs`).
//!
//! Then, unless `--no-stream`, the streaming phase: time to first event and tokens per second of
//! `POST /api/v1/ai/chat/stream` against the simulator's Gemini stream (see `stream.rs`).
//!
//! `cargo run --release -p bench -- --concurrency 16 --duration-secs 5 --warmup-secs 1`

mod load;
mod proxy;
mod store;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use gateway::catalog::Catalog;
use gateway::config::{Endpoint, ProviderSettings, Settings};
use gateway::ids::PlanId;
use gateway::secret::Secret;
use gateway::store::dynamo::DynamoStore;
use gateway::store::memory::MemoryStore;
use gateway::store::Stores;
use gateway::AppState;
use load::{Load, Outcome, Target};
use local_server::StoreKind;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

/// The local server's allocator (see infra/local-server/src/main.rs), for the gateway, the
/// simulator and the load client alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

const MODEL: &str = "gemini-1.5-flash";
const PROMPT: &str = "Say hello in one short sentence.";
const MAX_TOKENS: u32 = 256;
const CHAT_PATH: &str = "/api/v1/ai/chat";
const STREAM_PATH: &str = "/api/v1/ai/chat/stream";
/// The simulator's Gemini actions: one answer, or Server-Sent Events.
const GENERATE: &str = "generateContent";
const STREAM_GENERATE: &str = "streamGenerateContent?alt=sse";
const PLAN: &str = "team";
const ADMIN_TOKEN: &str = "bench-admin";
const PASSWORD: &str = "bench password, long enough";

#[derive(Debug, Parser)]
#[command(about = "Benchmark the gateway's chat endpoint against the simulator it fronts")]
struct Args {
    /// Requests in flight at once (one worker task each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Measured seconds per target.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: u64,
    /// Unmeasured seconds per target before measuring (connections, caches, allocator).
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// The gateway's store: in memory, or DynamoDB (a fresh table at `AWS_ENDPOINT_URL_DYNAMODB`
    /// or `GATEWAY_TEST_DYNAMODB_ENDPOINT`), which also measures one request's DynamoDB cost.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    store: StoreKind,
    /// How long the simulator waits before it answers each load request, as a provider would
    /// (0: at once). At 0 every row is CPU-bound from a few connections on, and a gateway can only
    /// cost throughput; with a provider's latency the rows measure whether the gateway keeps up.
    #[arg(long, default_value_t = 0)]
    provider_latency_ms: u64,
    /// Skip the streaming phase (time to first event, tokens per second).
    #[arg(long)]
    no_stream: bool,
    /// Streaming phase: sequential requests per target for the time to first event.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    stream_requests: u32,
    /// Streaming phase: streams in flight at once for the time to first event under load.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    stream_concurrency: u16,
    /// Streaming phase: measured seconds per target under load (after `--warmup-secs`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    stream_duration_secs: u64,
}

/// The DynamoDB store under the gateway and what one chat request cost it.
struct Dynamo {
    endpoint: String,
    store: Arc<DynamoStore>,
    cost: Option<store::RequestCost>,
    /// The same for a caller the gateway process had not seen (its month counter new too).
    first_cost: Option<store::RequestCost>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load = Load {
        concurrency: usize::from(args.concurrency),
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut dynamo = match args.store {
        StoreKind::Memory => None,
        StoreKind::Dynamodb => {
            let (store, endpoint) = store::fresh_dynamo().await?;
            Some(Dynamo {
                endpoint,
                store,
                cost: None,
                first_cost: None,
            })
        }
    };
    let stores = match &dynamo {
        Some(dynamo) => Stores::from(dynamo.store.clone()),
        None => Stores::from(Arc::new(MemoryStore::new())),
    };

    let simulator = start_simulator().await?;
    let gateway = start_gateway(&simulator, stores).await?;
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let tenant = set_up_tenant(&client, &gateway, "bench").await?;

    if let Some(dynamo) = &mut dynamo {
        eprintln!(
            "measuring one chat request alone on DynamoDB ({}, table {})",
            dynamo.endpoint,
            dynamo.store.table()
        );
        // One unmeasured request first, so the month counter and the day's aggregate exist, as
        // they do for every request but an org's first of the month (or day).
        load::send(
            &client,
            &gateway_target(&gateway, &tenant, CHAT_PATH, PROMPT, MAX_TOKENS)?,
        )
        .await
        .map_err(|err| anyhow::anyhow!("the first chat request failed: {err}"))?;
        let slow = format!(
            "[sim:latency_ms={}] {PROMPT}",
            store::PROVIDER_LATENCY.as_millis()
        );
        let target = gateway_target(&gateway, &tenant, CHAT_PATH, &slow, MAX_TOKENS)?;
        dynamo.cost = Some(store::measure_one(&client, &target, dynamo.store.metrics()).await?);
        // And a request from a caller this process has not seen yet: its membership is read
        // before admission rather than confirmed during it.
        let newcomer = set_up_tenant(&client, &gateway, "bench-newcomer").await?;
        let target = gateway_target(&gateway, &newcomer, CHAT_PATH, &slow, MAX_TOKENS)?;
        dynamo.first_cost =
            Some(store::measure_one(&client, &target, dynamo.store.metrics()).await?);
    }

    eprintln!(
        "driving the simulator for {}s (+{}s warm-up) at concurrency {}",
        args.duration_secs, args.warmup_secs, args.concurrency
    );
    // The same prompt, so the same simulated latency, in all three rows.
    let prompt = match args.provider_latency_ms {
        0 => PROMPT.to_owned(),
        ms => format!("[sim:latency_ms={ms}] {PROMPT}"),
    };
    let direct_target = simulator_target(&simulator, GENERATE, &prompt, MAX_TOKENS);
    let direct = load::run(&client, direct_target.clone(), load).await?;
    eprintln!("driving a bare proxy to the simulator likewise");
    let proxy = proxy::start(direct_target.url.clone()).await?;
    let proxied = Target {
        url: format!("{proxy}{}", proxy::PATH),
        ..direct_target
    };
    let proxied = load::run(&client, proxied, load).await?;
    eprintln!("driving the gateway likewise");
    let chat = gateway_target(&gateway, &tenant, CHAT_PATH, &prompt, MAX_TOKENS)?;
    let through = load::run(&client, chat, load).await?;

    let streamed = if args.no_stream {
        None
    } else {
        let options = stream::Options {
            requests: args.stream_requests as usize,
            load: Load {
                concurrency: usize::from(args.stream_concurrency),
                warmup: load.warmup,
                duration: Duration::from_secs(args.stream_duration_secs),
            },
        };
        let pair = |prompt: &str, max_tokens: u32| {
            Ok(stream::Pair {
                direct: simulator_target(&simulator, STREAM_GENERATE, prompt, max_tokens),
                gateway: gateway_target(&gateway, &tenant, STREAM_PATH, prompt, max_tokens)?,
            })
        };
        Some(stream::run(&client, options, pair).await?)
    };

    let report = Report {
        args: &args,
        cores,
        rows: [
            ("simulator", &direct),
            ("proxy", &proxied),
            ("gateway", &through),
        ],
        dynamo: dynamo.as_ref(),
        stream: streamed.as_ref(),
    };
    report.print();
    Ok(())
}

/// The simulator on an ephemeral loopback port; returns its base URL.
async fn start_simulator() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(simulator::serve(
        listener,
        simulator::SimulatorConfig::default(),
    ));
    Ok(base)
}

/// The local gateway over `stores`, every provider pointed at `simulator`; returns its base URL.
///
/// Settings are built here rather than read from the environment so that no real key, base URL or
/// operator catalog in the caller's shell can leak into the measurement. The state is built here
/// too, so that the caller keeps its own handle on the store (and the store's metrics).
async fn start_gateway(simulator: &str, stores: Stores) -> anyhow::Result<String> {
    let base_url = gateway::providers::base_url(simulator)
        .with_context(|| format!("the simulator's address {simulator} is not a base URL"))?;
    let endpoint = || Endpoint {
        base_url: base_url.clone(),
        api_key: Some(Secret::new("simulated-key")),
    };
    let mut catalog = Catalog::builtin();
    // Team's 300 requests a minute would turn most of a run into 429s; the check itself still runs.
    let plan = catalog
        .plans
        .get_mut(&PlanId::from(PLAN))
        .with_context(|| format!("the built-in catalog has no {PLAN} plan"))?;
    plan.requests_per_minute = 1_000_000_000;
    // Team is unlimited already; said here too so that the month's messages and tokens (every
    // request holds its max_tokens while it runs) can never end a run in 402s.
    plan.messages_per_month = None;
    plan.tokens_per_month = None;
    let settings = Settings {
        jwt_secret: Secret::new("bench-jwt-secret-bench-jwt-secret-0123456789"),
        token_ttl: Duration::from_secs(3600),
        table_name: None,
        request_retention: Duration::from_secs(86_400),
        jobs_queue_url: None,
        jobs_max_receives: 3,
        providers: ProviderSettings {
            openai: endpoint(),
            anthropic: endpoint(),
            google: endpoint(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(25),
            deadline: Duration::from_secs(25),
        },
        catalog,
    };
    let state = AppState::new(&settings, stores)?;
    let router = local_server::router(state, Some(Secret::new(ADMIN_TOKEN)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(local_server::serve(listener, router));
    Ok(base)
}

/// A signed-in user and the org the load runs under.
struct Tenant {
    token: String,
    org: String,
}

/// Register, log in, create an org, move it to the team plan: the seed's flow plus the operator.
async fn set_up_tenant(client: &Client, gateway: &str, name: &str) -> anyhow::Result<Tenant> {
    let email = format!("{name}@example.com");
    let email = email.as_str();
    let registered = client
        .post(format!("{gateway}/api/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    expect(registered, StatusCode::CREATED, "register").await?;

    let login = client
        .post(format!("{gateway}/api/v1/auth/login"))
        .form(&[("username", email), ("password", PASSWORD)])
        .send()
        .await?;
    let login = expect(login, StatusCode::OK, "login").await?;
    let token = login["access_token"]
        .as_str()
        .context("login answered without access_token")?
        .to_owned();

    let org = client
        .post(format!("{gateway}/api/v1/orgs"))
        .bearer_auth(&token)
        .json(&json!({"name": name, "slug": name}))
        .send()
        .await?;
    let org = expect(org, StatusCode::CREATED, "create org").await?;
    let org = org["id"]
        .as_str()
        .context("create org answered without id")?
        .to_owned();

    let plan = client
        .put(format!("{gateway}/admin/orgs/{org}/plan"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"plan": PLAN}))
        .send()
        .await?;
    expect(plan, StatusCode::OK, "set plan").await?;
    Ok(Tenant { token, org })
}

/// The JSON body of `response`, or an error naming the step, the status and the body.
async fn expect(response: Response, want: StatusCode, step: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await?;
    if status != want {
        bail!("{step}: expected {want}, got {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{step}: body is not JSON: {text}"))
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

/// The Gemini request the gateway itself sends for [`gateway_target`]; `action` is
/// [`GENERATE`] or [`STREAM_GENERATE`].
fn simulator_target(simulator: &str, action: &str, prompt: &str, max_tokens: u32) -> Target {
    let mut headers = json_headers();
    headers.insert("x-goog-api-key", HeaderValue::from_static("k"));
    Target {
        url: format!("{simulator}/v1beta/models/{MODEL}:{action}"),
        headers,
        body: json!({
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"maxOutputTokens": max_tokens},
        })
        .to_string(),
    }
}

/// A chat at the gateway's `path` ([`CHAT_PATH`] or [`STREAM_PATH`]) as the tenant.
fn gateway_target(
    gateway: &str,
    tenant: &Tenant,
    path: &str,
    prompt: &str,
    max_tokens: u32,
) -> anyhow::Result<Target> {
    let mut headers = json_headers();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", tenant.token))?,
    );
    headers.insert("x-current-org", HeaderValue::from_str(&tenant.org)?);
    Ok(Target {
        url: format!("{gateway}{path}"),
        headers,
        body: json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        })
        .to_string(),
    })
}

/// Both runs, printed as a table and then as one JSON line.
struct Report<'a> {
    args: &'a Args,
    cores: usize,
    /// The baseline (simulator) first, then the bare proxy, then the gateway.
    rows: [(&'static str, &'a Outcome); 3],
    /// With `--store dynamodb`.
    dynamo: Option<&'a Dynamo>,
    /// Unless `--no-stream`.
    stream: Option<&'a stream::StreamReport>,
}

impl Report<'_> {
    fn print(&self) {
        let [(_, direct), (_, proxied), (_, through)] = self.rows;
        let added = Added::between(direct, through);
        let over_proxy = Added::between(proxied, through);
        let (added_p50, added_p99, ratio) = (added.p50, added.p99, added.ratio);

        println!(
            "{:<10} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "target", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (name, outcome) in self.rows {
            println!(
                "{:<10} {:>9} {:>7} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                name,
                outcome.requests(),
                outcome.errors,
                outcome.throughput(),
                ms(outcome.percentile(50.0)),
                ms(outcome.percentile(90.0)),
                ms(outcome.percentile(99.0)),
                ms(outcome.max()),
            );
        }
        println!();
        println!("gateway added latency: p50 {added_p50:+.2} ms, p99 {added_p99:+.2} ms");
        println!("throughput ratio (gateway / simulator): {ratio:.3}");
        println!(
            "over the bare proxy: p50 {:+.2} ms, p99 {:+.2} ms, throughput ratio {:.3}",
            over_proxy.p50, over_proxy.p99, over_proxy.ratio
        );
        let cpu = |outcome: &Outcome| outcome.cpu_per_request_us();
        println!(
            "CPU per request, whole process: {:.1} us driving the simulator, {:.1} us through \
             the proxy, {:.1} us through the gateway: the proxy's hop {:.1} us, the gateway's own \
             work {:.1} us more; on saturated cores the ratio cannot pass {:.3}",
            cpu(direct),
            cpu(proxied),
            cpu(through),
            cpu(proxied) - cpu(direct),
            cpu(through) - cpu(proxied),
            cpu(direct) / cpu(through).max(f64::EPSILON)
        );
        println!(
            "machine: {} cores, shared by the load client, the gateway and the simulator (one process){}; \
             concurrency {}, {} s measured after {} s warm-up per target; the simulator answers after {} ms",
            self.cores,
            if self.dynamo.is_some() { " and the DynamoDB server" } else { "" },
            self.args.concurrency,
            self.args.duration_secs,
            self.args.warmup_secs,
            self.args.provider_latency_ms
        );
        for (name, outcome) in self.rows {
            if let Some(error) = &outcome.first_error {
                println!("first error ({name}): {error}");
            }
        }
        let cost = self.dynamo.and_then(|d| d.cost);
        if let (Some(dynamo), Some(cost)) = (self.dynamo, cost) {
            println!();
            println!(
                "store: DynamoDB at {}, table {}",
                dynamo.endpoint,
                dynamo.store.table()
            );
            println!("one chat request alone, as the store counted it:");
            println!(
                "  {:<22} {:>11} {:>11} {:>10} {:>11}",
                "", "round trips", "in sequence", "read units", "write units"
            );
            let total = cost.total();
            for (name, part) in [
                ("before the provider", cost.before),
                ("after the provider", cost.after),
                ("whole request", total),
            ] {
                println!(
                    "  {name:<22} {:>11} {:>11} {:>10.1} {:>11.1}",
                    part.round_trips, part.steps, part.read_units, part.write_units
                );
            }
            if let Some(first) = dynamo.first_cost {
                println!(
                    "  a caller's first request to this process: {} round trips before the \
                     provider, {} in sequence",
                    first.before.round_trips, first.before.steps
                );
            }
        }

        if let Some(stream) = self.stream {
            println!();
            stream.print();
        }

        let targets: serde_json::Map<String, Value> = self
            .rows
            .iter()
            .map(|(name, outcome)| ((*name).to_owned(), summary(outcome)))
            .collect();
        let dynamodb = cost.map(|cost| {
            json!({
                "round_trips_before": cost.before.round_trips,
                "sequential_round_trips_before": cost.before.steps,
                "round_trips_after": cost.after.round_trips,
                "sequential_round_trips_after": cost.after.steps,
                "read_units": cost.total().read_units,
                "write_units": cost.total().write_units,
            })
        });
        let line = json!({
            "store": match self.args.store {
                StoreKind::Memory => "memory",
                StoreKind::Dynamodb => "dynamodb",
            },
            "concurrency": self.args.concurrency,
            "duration_secs": self.args.duration_secs,
            "warmup_secs": self.args.warmup_secs,
            "provider_latency_ms": self.args.provider_latency_ms,
            "cores": self.cores,
            "targets": targets,
            "gateway_added_ms": {"p50": round2(added_p50), "p99": round2(added_p99)},
            "throughput_ratio": (ratio * 1000.0).round() / 1000.0,
            "gateway_over_proxy": {
                "p50_ms": round2(over_proxy.p50),
                "p99_ms": round2(over_proxy.p99),
                "throughput_ratio": (over_proxy.ratio * 1000.0).round() / 1000.0,
                "cpu_us_per_request": round2(through.cpu_per_request_us() - proxied.cpu_per_request_us()),
            },
            "dynamodb": dynamodb,
            "stream": self.stream.map(stream::StreamReport::json),
        });
        println!("{line}");
    }
}

/// What the second of two runs adds to the first: latency at p50 and p99 (ms), and its share of
/// the first's throughput.
struct Added {
    p50: f64,
    p99: f64,
    ratio: f64,
}

impl Added {
    fn between(base: &Outcome, over: &Outcome) -> Added {
        Added {
            p50: ms(over.percentile(50.0)) - ms(base.percentile(50.0)),
            p99: ms(over.percentile(99.0)) - ms(base.percentile(99.0)),
            ratio: over.throughput() / base.throughput().max(f64::EPSILON),
        }
    }
}

fn summary(outcome: &Outcome) -> Value {
    json!({
        "requests": outcome.requests(),
        "errors": outcome.errors,
        "rps": (outcome.throughput() * 10.0).round() / 10.0,
        "p50_ms": round2(ms(outcome.percentile(50.0))),
        "p90_ms": round2(ms(outcome.percentile(90.0))),
        "p99_ms": round2(ms(outcome.percentile(99.0))),
        "max_ms": round2(ms(outcome.max())),
        "cpu_us_per_request": round2(outcome.cpu_per_request_us()),
    })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
