//! Lambda entry point for `POST /api/v1/ai/chat/stream`: response streaming, so the client gets
//! each piece of the answer as the provider produces it. Every response of this function, errors
//! included, is a streamed body.

use lambda_http::{run_with_streaming_response, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let state = gateway::AppState::from_env().await?;
    run_with_streaming_response(service_fn(|request| {
        gateway::runtime_api::send_without_delay();
        gateway::api::chat_stream(&state, request)
    }))
    .await
}
