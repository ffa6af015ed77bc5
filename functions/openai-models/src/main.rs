//! Lambda entry point for `GET /v1/models` and `GET /v1/models/{id}`: the models of the org's plan, in OpenAI's shape.

use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let state = gateway::AppState::from_env().await?;
    run(service_fn(|request| {
        gateway::api::openai::models(&state, request)
    }))
    .await
}
