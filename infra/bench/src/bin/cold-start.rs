//! Cold-start benchmark: how much longer a gateway function takes than a hello-world
//! `lambda_http` function to start, to answer its first request, and how much memory it takes.
//!
//! Builds the functions and `hello-lambda` (infra/hello-lambda) in release (the same profile), then starts each one
//! `--runs` times under a Lambda Runtime API of its own on loopback, which hands it one API
//! Gateway event (`events/<function>.json`: a request with a token that does not verify, which
//! every function answers without a network call). For each run it times, from the process's
//! start: its first `GET /runtime/invocation/next` (init done), and the start of its answer; and
//! it reads the process's peak resident memory (`VmHWM`). Prints medians, and ratios to the
//! hello-world of the same run.
//!
//! `cargo run --release -p bench --bin cold-start -- --runs 15`

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;

const HELLO: &str = "hello-lambda";
const API: &str = "/2018-06-01/runtime";

#[derive(Debug, Parser)]
#[command(about = "Cold starts of the gateway's functions next to a hello-world lambda_http")]
struct Args {
    /// Starts of each function.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// The functions to measure (packages under functions/), or `all`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ai-models,ai-usage,auth-login,ai-chat,openai-chat,jobs-submit"
    )]
    functions: Vec<String>,
    /// Use the release binaries already built.
    #[arg(long)]
    no_build: bool,
}

/// What the runtime API saw of one start.
#[derive(Debug, Default)]
struct Run {
    event: Bytes,
    first_next: Option<Instant>,
    answered: Option<Instant>,
    /// The HTTP status of the answer (API Gateway's `statusCode`).
    status: Option<u16>,
    error: Option<String>,
    handed_out: bool,
}

type Shared = Arc<Mutex<Run>>;

/// One start's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    init: Duration,
    answer: Duration,
    rss_kib: u64,
    status: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let root = workspace_root()?;
    if args.functions.iter().any(|f| f == "all") {
        args.functions = every_function(&root)?;
    }
    if !args.no_build {
        build(&root, &args.functions)?;
    }
    let run: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let app = runtime_api(run.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("release");
    let names = std::iter::once(HELLO).chain(args.functions.iter().map(String::as_str));
    let mut rows = Vec::new();
    for name in names {
        let binary = release.join(name);
        let size = std::fs::metadata(&binary)
            .with_context(|| format!("{} (build it first)", binary.display()))?
            .len();
        // The hello-world answers anything: it gets the models request.
        let event_file = root.join("events").join(format!(
            "{}.json",
            if name == HELLO { "ai-models" } else { name }
        ));
        let event = std::fs::read(&event_file).with_context(|| event_file.display().to_string())?;
        let event = Bytes::from(without_network(name, event)?);
        let mut samples = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            samples.push(start_once(name, &binary, event.clone(), &run, &address).await?);
        }
        rows.push((name.to_owned(), size, samples));
    }
    report(&rows, args.runs);
    Ok(())
}

/// Every package under functions/, by name.
fn every_function(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("functions")).context("functions/")? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The event as the function's first request, answered without a network call. Most events carry
/// a token that does not verify (401 before any read); sign-up and sign-in carry real credentials,
/// which would be looked up in DynamoDB, so they get an empty body instead (refused as invalid);
/// the job worker's SQS batch would be read and settled in DynamoDB, so it gets an empty batch.
fn without_network(name: &str, event: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut event: serde_json::Value = serde_json::from_slice(&event).context("event JSON")?;
    if name.starts_with("auth-") {
        event["body"] = serde_json::Value::String(String::new());
        event["isBase64Encoded"] = serde_json::Value::Bool(false);
    } else if event.get("Records").is_some() {
        event["Records"] = serde_json::Value::Array(Vec::new());
    }
    Ok(serde_json::to_vec(&event)?)
}

/// Starts `binary` once, hands it the event, and stops it once it answered.
async fn start_once(
    name: &str,
    binary: &Path,
    event: Bytes,
    run: &Shared,
    address: &str,
) -> anyhow::Result<Sample> {
    *run.lock().unwrap_or_else(|p| p.into_inner()) = Run {
        event,
        ..Run::default()
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(lambda_environment(name, address))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let give_up = started + Duration::from_secs(20);
    let (first_next, answered) = loop {
        let seen = {
            let run = run.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(error) = &run.error {
                bail!("{name} reported an error: {error}");
            }
            run.first_next.zip(run.answered)
        };
        if let Some(times) = seen {
            break times;
        }
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited before it answered: {status}");
        }
        if Instant::now() > give_up {
            bail!("{name} did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let rss_kib = child.id().map_or(0, peak_rss_kib);
    child.kill().await?;
    let status = run.lock().unwrap_or_else(|p| p.into_inner()).status;
    Ok(Sample {
        init: first_next - started,
        answer: answered - started,
        rss_kib,
        status,
    })
}

/// What Lambda sets for a function, with the settings the gateway's functions need (none of
/// them reaches the network on the benchmark's request).
fn lambda_environment(name: &str, address: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", address.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/12/02/[$LATEST]bench".to_owned(),
        ),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "ASIABENCHBENCHBENCH0".to_owned()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "bench-secret-bench-secret-bench-secret00".to_owned(),
        ),
        ("AWS_SESSION_TOKEN", "bench-session-token".to_owned()),
        ("GATEWAY_TABLE", "gateway".to_owned()),
        (
            "JWT_SECRET",
            "bench-jwt-secret-bench-jwt-secret-0123".to_owned(),
        ),
        (
            "JOBS_QUEUE_URL",
            "http://127.0.0.1:9/123456789012/jobs".to_owned(),
        ),
        ("PATH", "/usr/bin:/bin".to_owned()),
    ]
}

/// The process's peak resident memory, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort_unstable();
    values[values.len() / 2]
}

/// The answers' status: one code when every start gave the same.
fn statuses(samples: &[Sample]) -> String {
    let mut codes: Vec<String> = samples
        .iter()
        .map(|s| {
            s.status
                .map_or_else(|| "-".to_owned(), |code| code.to_string())
        })
        .collect();
    codes.sort();
    codes.dedup();
    codes.join("/")
}

fn report(rows: &[(String, u64, Vec<Sample>)], runs: usize) {
    println!("cold starts, medians of {runs} runs (release profile, this machine):");
    println!(
        "{:<16} {:>9} {:>10} {:>14} {:>10} {:>7} {:>8} {:>6} {:>7}",
        "binary", "size", "init", "first answer", "peak RSS", "init×", "answer×", "RSS×", "status"
    );
    let figures: Vec<(u64, Duration, Duration, u64)> = rows
        .iter()
        .map(|(_, size, samples)| {
            (
                *size,
                median(samples.iter().map(|s| s.init).collect()),
                median(samples.iter().map(|s| s.answer).collect()),
                median(samples.iter().map(|s| s.rss_kib).collect()),
            )
        })
        .collect();
    let Some(&(_, hello_init, hello_answer, hello_rss)) = figures.first() else {
        return;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for ((name, _, samples), (size, init, answer, rss)) in rows.iter().zip(figures) {
        println!(
            "{:<16} {:>6.1} MB {:>7.2} ms {:>11.2} ms {:>7.1} MB {:>7.2} {:>8.2} {:>6.2} {:>7}",
            name,
            size as f64 / 1e6,
            ms(init),
            ms(answer),
            rss as f64 / 1024.0,
            ms(init) / ms(hello_init),
            ms(answer) / ms(hello_answer),
            rss as f64 / hello_rss.max(1) as f64,
            statuses(samples),
        );
    }
}

/// The Lambda Runtime API, as much of it as one invocation needs.
fn runtime_api(run: Shared) -> Router {
    Router::new()
        .route(&format!("{API}/invocation/next"), get(next))
        .route(&format!("{API}/invocation/{{id}}/response"), post(response))
        .route(&format!("{API}/invocation/{{id}}/error"), post(error))
        .route(&format!("{API}/init/error"), post(error))
        .with_state(run)
}

async fn next(State(run): State<Shared>) -> Response {
    let event = {
        let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
        run.first_next.get_or_insert_with(Instant::now);
        if run.handed_out {
            None
        } else {
            run.handed_out = true;
            Some(run.event.clone())
        }
    };
    let Some(event) = event else {
        // One invocation per start: the next poll waits until the process is stopped.
        return std::future::pending::<Response>().await;
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() + 30_000);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (
            "lambda-runtime-aws-request-id",
            "bench-request-1".to_owned(),
        ),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:bench".to_owned(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, event).into_response()
}

async fn response(State(run): State<Shared>, body: Bytes) -> StatusCode {
    let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
    run.answered.get_or_insert_with(Instant::now);
    run.status = answer_status(&body);
    StatusCode::ACCEPTED
}

/// The `statusCode` of an API Gateway answer: the whole body, or a stream's prelude (the JSON
/// before the eight NUL bytes that separate it from the streamed body).
fn answer_status(body: &[u8]) -> Option<u16> {
    let prelude = body.split(|b| *b == 0).next().unwrap_or(body);
    let answer: serde_json::Value = serde_json::from_slice(prelude).ok()?;
    answer["statusCode"]
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
}

async fn error(State(run): State<Shared>, body: Bytes) -> StatusCode {
    let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
    run.error = Some(String::from_utf8_lossy(&body).into_owned());
    run.answered.get_or_insert_with(Instant::now);
    StatusCode::ACCEPTED
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .context("the workspace root")
}

fn build(root: &Path, functions: &[String]) -> anyhow::Result<()> {
    // Apart, so that the hello-world gets no feature its neighbours would turn on.
    let hello = vec!["-p".to_owned(), HELLO.to_owned()];
    let packages = functions
        .iter()
        .flat_map(|f| ["-p".to_owned(), f.clone()])
        .collect();
    for selection in [hello, packages] {
        let status = std::process::Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["build", "--release"])
            .args(selection)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build failed: {status}");
        }
    }
    Ok(())
}
