//! The floor under any gateway: a bare HTTP proxy on the gateway's own stack (the local server's
//! hyper connection settings, an axum route, a reqwest client) that forwards each request to the
//! simulator and its answer back, and does nothing else. Whatever the gateway costs beyond it is
//! the gateway's own work: auth, limits, the adapter, metering.

use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use reqwest::header::CONTENT_TYPE;

/// The proxy's one route.
pub const PATH: &str = "/forward";

/// Starts the proxy on an ephemeral loopback port, forwarding to `upstream` (a full URL); returns
/// its base URL.
pub async fn start(upstream: String) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .context("building the proxy's HTTP client")?;
    let forward = move |headers: HeaderMap, body: Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move { forward(&client, &upstream, &headers, body).await }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(local_server::serve(
        listener,
        Router::new().route(PATH, post(forward)),
    ));
    Ok(base)
}

/// Sends `body` on to `upstream` with the headers the provider needs; answers what it answered.
async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = client.post(upstream).body(body);
    for name in [CONTENT_TYPE.as_str(), "x-goog-api-key"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let answered = match request.send().await {
        Ok(response) => response,
        Err(err) => return (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    };
    let status = answered.status();
    match answered.bytes().await {
        Ok(body) => (status, body).into_response(),
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}
