//! Logging: JSON lines for CloudWatch in Lambda, readable text locally.

use tracing_subscriber::EnvFilter;

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// One JSON object per line, as CloudWatch Logs Insights queries them. `RUST_LOG` sets the level.
pub fn init_json() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .with_current_span(false)
        .with_ansi(false)
        .without_time() // Lambda stamps every line itself.
        .with_target(false)
        .try_init();
}

/// Human-readable lines for the local server.
pub fn init_text() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_target(false)
        .try_init();
}
