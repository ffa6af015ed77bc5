//! Lambda entry point for `GET /v1/models` and `GET /v1/models/{id}`: the models of the org's plan, in OpenAI's shape.

use lambda_http::{run, service_fn, Error};

// One request at a time per instance: one thread does it, and starts sooner with less memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let environment = gateway::Environment::load().await?;
    let state = environment.state()?;
    run(service_fn(|request| {
        gateway::telemetry::logged(request, |request| {
            gateway::api::openai::models(&state, request)
        })
    }))
    .await
}
