//! Lambda entry point: builds the shared state once per cold start, then serves every invocation
//! with the shared `list_jobs` handler.

use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let state = gateway::AppState::from_env().await?;
    run(service_fn(|request| {
        gateway::api::list_jobs(&state, request)
    }))
    .await
}
