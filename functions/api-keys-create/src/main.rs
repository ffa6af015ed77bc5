//! Lambda entry point for `POST /api/v1/orgs/{org_id}/api-keys`: an org's owner or admin creates an API key, its secret shown once.

use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let state = gateway::AppState::from_env().await?;
    run(service_fn(|request| {
        gateway::api::keys::create_key(&state, request)
    }))
    .await
}
