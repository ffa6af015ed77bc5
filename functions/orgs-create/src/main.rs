//! Lambda entry point: builds the shared state once per cold start, then serves every invocation
//! with the shared `create_org` handler.

use lambda_http::{run, service_fn, Error};

// One request at a time per instance: one thread does it, and starts sooner with less memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let environment = gateway::Environment::load().await?;
    let state = environment.state()?;
    run(service_fn(|request| {
        gateway::telemetry::logged(request, |request| gateway::api::create_org(&state, request))
    }))
    .await
}
