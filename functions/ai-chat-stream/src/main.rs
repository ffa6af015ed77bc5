//! Lambda entry point for `POST /api/v1/ai/chat/stream`: response streaming, so the client gets
//! each piece of the answer as the provider produces it. Every response of this function, errors
//! included, is a streamed body.

use lambda_http::{run_with_streaming_response, service_fn, Error};

// One request at a time per instance: one thread does it, and starts sooner with less memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let environment = gateway::Environment::load().await?;
    let state = environment
        .state()?
        .with_providers(&environment.settings.providers)?;
    run_with_streaming_response(service_fn(|request| {
        gateway::runtime_api::send_without_delay();
        gateway::telemetry::logged(request, |request| {
            gateway::api::chat_stream(&state, request)
        })
    }))
    .await
}
