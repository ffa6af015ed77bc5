//! Lambda entry point for `GET /` (the usage dashboard page) and `GET /openapi.json` (the API's
//! OpenAPI document). Both are compiled in; the page calls the public API from the browser, so
//! this function reads no settings and builds no client.

use lambda_http::{run, service_fn, Error};

// One request at a time per instance: one thread does it, and starts sooner with less memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_json();
    run(service_fn(|request| {
        gateway::telemetry::logged(request, |request| async {
            Ok::<_, Error>(gateway::api::static_content(request))
        })
    }))
    .await
}
