//! Lambda entry point for `DELETE /api/v1/orgs/{org_id}/api-keys/{id}`: a key stops working at once.

use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    let state = gateway::AppState::from_env().await?;
    run(service_fn(|request| {
        gateway::api::keys::revoke_key(&state, request)
    }))
    .await
}
