//! The local server: every gateway endpoint in one process on loopback, calling the very handlers
//! the Lambda functions call. Providers without an API key are served by the simulator, started in
//! process, so the whole real code path runs without any account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use gateway::api::extract::MAX_BODY_BYTES;
use gateway::catalog::ProviderKind;
use gateway::config::Settings;
use gateway::error::{GatewayError, RequestError};
use gateway::ids::{OrgId, PlanId};
use gateway::secret::Secret;
use gateway::store::dynamo::DynamoStore;
use gateway::store::memory::MemoryStore;
use gateway::store::Stores;
use gateway::AppState;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Which store backs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// In process memory; gone when the server stops.
    Memory,
    /// DynamoDB through the AWS SDK (`AWS_ENDPOINT_URL_DYNAMODB` for a local one).
    Dynamodb,
}

/// How to run the local server.
#[derive(Debug, Clone)]
pub struct Options {
    pub store: StoreKind,
    pub table: String,
    pub create_tables: bool,
    /// Enables `PUT /admin/orgs/{id}/plan` for whoever presents this token.
    pub admin_token: Option<Secret>,
    /// The clock windows are counted by; the system clock when `None`.
    pub clock: Option<Arc<dyn gateway::clock::Clock>>,
    /// How long a job item that must be retried waits (SQS's visibility timeout, locally).
    pub job_retry_after: std::time::Duration,
}

/// A running gateway's shared state and the routes that serve it.
#[derive(Clone)]
struct Server {
    /// Behind an `Arc`: axum clones the router's state for every request.
    state: Arc<AppState>,
    admin_token: Option<Arc<Secret>>,
}

/// Reads the environment, starts the simulator for providers that have no key, builds the store.
pub async fn build(options: &Options) -> anyhow::Result<Router> {
    let fallback_secret = Secret::new(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ));
    let settings = Settings::from_env_or(Some(fallback_secret))?;
    if gateway::config::env("JWT_SECRET").is_none() {
        tracing::warn!(
            "JWT_SECRET is not set: using a random secret; tokens end with this process"
        );
    }
    build_with(settings, options).await
}

/// As [`build`], with the settings given rather than read from the environment.
pub async fn build_with(settings: Settings, options: &Options) -> anyhow::Result<Router> {
    let stores = match options.store {
        StoreKind::Memory => {
            tracing::info!("store: in memory");
            Stores::from(Arc::new(MemoryStore::new()))
        }
        StoreKind::Dynamodb => {
            let store = DynamoStore::from_env(options.table.clone()).await;
            if options.create_tables {
                store.create_table_if_missing().await?;
            }
            tracing::info!(table = %options.table, "store: DynamoDB");
            Stores::from(Arc::new(store))
        }
    };
    build_on(settings, stores, options).await
}

/// As [`build_with`], on `stores` (the store `options` names is not opened): for tests that bring
/// their own.
pub async fn build_on(
    mut settings: Settings,
    stores: Stores,
    options: &Options,
) -> anyhow::Result<Router> {
    let missing: Vec<ProviderKind> = ProviderKind::ALL
        .into_iter()
        .filter(|kind| settings.providers.endpoint(*kind).api_key.is_none())
        .collect();
    if !missing.is_empty() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = gateway::providers::base_url(&format!("http://{}", listener.local_addr()?))
            .ok_or_else(|| anyhow::anyhow!("the simulator's address is not a base URL"))?;
        tokio::spawn(async move {
            if let Err(err) =
                simulator::serve(listener, simulator::SimulatorConfig::default()).await
            {
                tracing::error!(error = %err, "simulator stopped");
            }
        });
        for kind in &missing {
            let endpoint = settings.providers.endpoint_mut(*kind);
            endpoint.base_url = url.clone();
            endpoint.api_key = Some(Secret::new("simulated-key"));
        }
    }
    for kind in ProviderKind::ALL {
        let endpoint = settings.providers.endpoint(kind);
        // Without the user name and password a proxy's URL may carry.
        let url = gateway::providers::without_credentials(&endpoint.base_url);
        if missing.contains(&kind) {
            tracing::info!(provider = %kind, %url, "no API key: provider is simulated");
        } else {
            tracing::info!(provider = %kind, %url, "API key set: calling the real provider");
        }
    }

    let mut state = AppState::new(&settings, stores)?;
    if let Some(clock) = &options.clock {
        state = state.with_clock(clock.clone());
    }
    // Jobs run in process, through the same worker code the SQS-triggered function runs.
    let (queue, receiver) = gateway::queue::LocalQueue::new();
    state = state.with_queue(Arc::new(queue.clone()));
    tokio::spawn(gateway::jobs::run_local_worker(
        state.clone(),
        queue,
        receiver,
        state.jobs_max_receives,
        options.job_retry_after,
    ));
    Ok(router(state, options.admin_token.clone()))
}

/// The routes: the operator route when enabled, everything else through the gateway's dispatch.
pub fn router(state: AppState, admin_token: Option<Secret>) -> Router {
    let server = Server {
        state: Arc::new(state),
        admin_token: admin_token.map(Arc::new),
    };
    Router::new()
        .route("/admin/orgs/{org_id}/plan", put(set_plan))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            gateway::api::STREAM_PATH,
            axum::routing::post(stream_route).fallback(gateway_route),
        )
        .route(
            gateway::api::openai::COMPLETIONS_PATH,
            axum::routing::post(completions_route).fallback(gateway_route),
        )
        .fallback(gateway_route)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(server)
}

/// Each request ends with its line, as in Lambda (see `gateway::telemetry`).
async fn log_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let log =
        gateway::telemetry::RequestLog::start(request.method().as_str(), request.uri().path());
    let response = log.scope(next.run(request)).await;
    log.status(response.status().as_u16());
    response
}

/// What the local server allows a client, so a slow or lying one cannot hold it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Serves `router` until the process stops, within [`Limits::default`].
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    serve_with(listener, router, Limits::default()).await
}

/// Serves `router` until the process stops, within `limits`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let router = router.layer(axum::Extension(BodyTimeout(limits.body_timeout)));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a moment rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a streamed event written right after the headers waits for the
        // client's delayed ACK (40 ms on Linux): Nagle's algorithm would undo "no buffering".
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY on an accepted socket");
        }
        let client = axum::Extension(gateway::api::extract::ClientAddr(peer.ip()));
        let service = hyper_util::service::TowerToHyperService::new(router.clone().layer(client));
        tokio::spawn(async move {
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let io = hyper_util::rt::TokioIo::new(tcp);
            if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// How long a request's body may take to arrive (see [`Limits::body_timeout`]).
#[derive(Debug, Clone, Copy)]
struct BodyTimeout(Duration);

fn to_axum(response: gateway::api::respond::HttpResponse) -> Response {
    let (parts, body) = response.into_parts();
    let bytes: Vec<u8> = body.as_ref().to_vec();
    Response::from_parts(parts, AxumBody::from(bytes))
}

/// Turns the HTTP request into the `lambda_http::Request` API Gateway would deliver. A body
/// announced larger than the limit is refused before it is read; one that arrives too slowly is
/// given up on.
async fn to_lambda(request: axum::extract::Request) -> Result<lambda_http::Request, GatewayError> {
    let (parts, body) = request.into_parts();
    let too_large = || {
        GatewayError::from(RequestError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        })
    };
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let wait = parts
        .extensions
        .get::<BodyTimeout>()
        .map_or(Limits::default().body_timeout, |t| t.0);
    let bytes = match tokio::time::timeout(wait, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return Err(too_large()),
        Err(_) => {
            let timeout = RequestError::Timeout("the request body took too long to arrive".into());
            return Err(timeout.into());
        }
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(err) => lambda_http::Body::Binary(err.into_bytes()),
        }
    };
    Ok(lambda_http::Request::from_parts(parts, body))
}

/// Every buffered endpoint: the same handler code the Lambda functions run.
async fn gateway_route(State(server): State<Server>, request: axum::extract::Request) -> Response {
    match to_lambda(request).await {
        Ok(request) => to_axum(gateway::api::dispatch(&server.state, request).await),
        Err(err) => to_axum(gateway::api::respond::error(err)),
    }
}

/// The streaming endpoint: its body goes to the client frame by frame, unbuffered.
async fn stream_route(State(server): State<Server>, request: axum::extract::Request) -> Response {
    let request = match to_lambda(request).await {
        Ok(request) => request,
        Err(err) => return to_axum(gateway::api::respond::error(err)),
    };
    streamed(gateway::api::chat_stream(&server.state, request).await)
}

/// `POST /v1/chat/completions`, streamed or not, as its Lambda function answers it.
async fn completions_route(
    State(server): State<Server>,
    request: axum::extract::Request,
) -> Response {
    let request = match to_lambda(request).await {
        Ok(request) => request,
        Err(err) => return to_axum(gateway::api::openai::refused(err)),
    };
    streamed(gateway::api::openai::chat_completions(&server.state, request).await)
}

fn streamed(response: Result<gateway::api::StreamingResponse, lambda_http::Error>) -> Response {
    match response {
        Ok(response) => response.map(AxumBody::new),
        Err(err) => to_axum(gateway::api::respond::error(
            gateway::error::GatewayError::Internal(err.to_string()),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct PlanBody {
    plan: String,
}

/// `PUT /admin/orgs/{id}/plan` with `{"plan": "pro"}`: the operator's plan change. Answers 404 unless
/// the server was started with an admin token, and 401 unless the caller presents it.
async fn set_plan(
    State(server): State<Server>,
    Path(org_id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<PlanBody>>,
) -> Response {
    let Some(expected) = &server.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"detail": "Not found"})),
        )
            .into_response();
    };
    let presented = gateway::auth::bearer_token(&headers).unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        return to_axum(gateway::api::respond::error(
            gateway::error::AuthError::InvalidToken.into(),
        ));
    }
    let Some(Json(body)) = body else {
        return to_axum(gateway::api::respond::error(
            RequestError::InvalidField("plan: expected {\"plan\": \"<plan id>\"}".into()).into(),
        ));
    };
    let org = OrgId::from(org_id);
    let plan = PlanId::from(body.plan);
    let state = &server.state;
    match gateway::admin::set_plan(&state.catalog, state.stores.orgs.as_ref(), &org, &plan).await {
        Ok(()) => {
            tracing::info!(org_id = %org, plan = %plan, "plan changed by operator");
            Json(serde_json::json!({"id": org, "plan": plan})).into_response()
        }
        Err(err) => to_axum(gateway::api::respond::error(err)),
    }
}

/// The address the server should listen on.
pub fn address(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    Ok(format!("{host}:{port}").parse()?)
}
