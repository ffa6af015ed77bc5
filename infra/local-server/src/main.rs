//! `cargo run --release -p local-server`: every endpoint on 127.0.0.1:8000.

use clap::Parser;
use gateway::secret::Secret;
use local_server::{Options, StoreKind};

/// Many requests on many threads allocate and free at once: glibc's malloc spent a quarter of the
/// CPU at 32 connections in its arena locks and consolidation (perf); mimalloc's per-thread heaps
/// do not contend.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Run every AI gateway endpoint locally")]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
    /// Address to listen on. Loopback by default: the server is for this machine.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Where to keep users, orgs and usage.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    store: StoreKind,
    /// The DynamoDB table (with `--store dynamodb`).
    #[arg(long, env = "GATEWAY_TABLE", default_value = "ai-gateway")]
    table: String,
    /// Create the DynamoDB table first if it is missing.
    #[arg(long)]
    create_tables: bool,
    /// Enables the operator route `PUT /admin/orgs/{id}/plan` for this bearer token.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Log in JSON as the Lambda functions do (each request's line an EMF document), not text.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.log_json {
        gateway::telemetry::init_json();
    } else {
        gateway::telemetry::init_text();
    }
    let options = Options {
        store: args.store,
        table: args.table,
        create_tables: args.create_tables,
        admin_token: args.admin_token.filter(|t| !t.is_empty()).map(Secret::new),
        clock: None,
        job_retry_after: std::time::Duration::from_secs(5),
    };
    let router = local_server::build(&options).await?;
    let listener =
        tokio::net::TcpListener::bind(local_server::address(&args.host, args.port)?).await?;
    tracing::info!("gateway listening on http://{}", listener.local_addr()?);
    local_server::serve(listener, router).await?;
    Ok(())
}
