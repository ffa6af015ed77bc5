//! Lambda entry point for `GET /api/v1/orgs/{org_id}/api-keys`: the org's API keys, never their secrets.

use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let state = gateway::AppState::from_env().await?;
    run(service_fn(|request| {
        gateway::api::keys::list_keys(&state, request)
    }))
    .await
}
