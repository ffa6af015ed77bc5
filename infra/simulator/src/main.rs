//! `simulator`: runs the simulated providers as a standalone HTTP server.

use std::net::IpAddr;

use clap::Parser;
use simulator::SimulatorConfig;

/// A local HTTP server speaking the OpenAI, Anthropic and Gemini wire protocols with
/// deterministic answers. Per-request `[sim:…]` directives in the last user message override
/// these defaults.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SIMULATOR_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed at start-up).
    #[arg(long, env = "SIMULATOR_PORT", default_value_t = 8001)]
    port: u16,
    /// Delay before the response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streamed tokens per second; 0 streams as fast as possible.
    #[arg(long, default_value_t = 0)]
    tokens_per_second: u32,
    /// Length of an answer in output tokens.
    #[arg(long, default_value_t = 24)]
    answer_tokens: usize,
    /// Fail every request with this HTTP status.
    #[arg(long, value_parser = clap::value_parser!(u16).range(400..=599))]
    status: Option<u16>,
    /// Drop every stream after this many tokens (non-streaming requests: at once).
    #[arg(long)]
    cut_after: Option<usize>,
    /// Send the provider's in-stream error after this many tokens.
    #[arg(long)]
    fail_after: Option<usize>,
    /// Answer with the last user message.
    #[arg(long)]
    echo: bool,
    /// Accept only this API key (any other gets the provider's invalid-key error).
    #[arg(long, env = "SIMULATOR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "simulator=info".into()),
        )
        .init();
    let args = Args::parse();
    let config = SimulatorConfig {
        latency_ms: args.latency_ms,
        tokens_per_second: args.tokens_per_second,
        answer_tokens: args.answer_tokens,
        status: args.status,
        cut_after: args.cut_after,
        fail_after: args.fail_after,
        echo: args.echo,
        api_key: args.api_key,
    };
    let listener = tokio::net::TcpListener::bind((args.host, args.port)).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, ?config, "simulator listening");
    // Scripts wait for this line to know the port when started with --port 0.
    println!("simulator listening on http://{address}");
    simulator::serve(listener, config).await
}
