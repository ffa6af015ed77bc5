//! Logging and metrics. Each request ends with one line saying what it did (who, which org, which
//! model asked and served, status, attempts, tokens, cost, duration, time to first token): in
//! Lambda a JSON object that is also a CloudWatch Embedded Metric Format document, so CloudWatch
//! turns it into metrics with no agent and no API call; on the local server a readable line,
//! unless JSON is asked for. Other events are `tracing` lines, JSON in Lambda, text locally.
//!
//! The line is written when the request is done with, not when its handler returns: a streamed
//! answer holds its [`RequestLog`] until the stream is settled, so its line carries its usage.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::{GatewayError, LimitError};
use crate::ids::OrgId;
use crate::store::{Party, RequestRecord};

/// How request lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// One JSON object (an EMF document) per request on standard output.
    Json,
    /// One readable `tracing` line per request.
    Text,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// The CloudWatch namespace of the metrics: `METRICS_NAMESPACE`, else `AiGateway`.
static NAMESPACE: OnceLock<String> = OnceLock::new();

/// `RUST_LOG` as a level (`debug`) or levels by target (`gateway=debug,info`), else `info`. A value
/// that does not parse does not stop the function: it logs at `info` and says why once logging is
/// up (the value, second).
fn filter() -> (Targets, Option<String>) {
    filter_of(std::env::var("RUST_LOG").ok().as_deref())
}

fn filter_of(value: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(LevelFilter::INFO);
    match value.map(|value| (value, value.parse::<Targets>())) {
        None => (info(), None),
        Some((_, Ok(targets))) => (targets, None),
        Some((value, Err(_))) => (info(), Some(value.to_owned())),
    }
}

/// Says, once logging is up, that `RUST_LOG` could not be read.
fn warn_unreadable(unreadable: Option<String>) {
    if let Some(value) = unreadable {
        tracing::warn!(rust_log = %value, "RUST_LOG could not be read (expected a level such as `debug`, or levels by target such as `gateway=debug,warn`): logging at info");
    }
}

/// One JSON object per line, as CloudWatch Logs Insights queries them. `RUST_LOG` sets the level.
pub fn init_json() {
    let _ = FORMAT.set(Format::Json);
    let (filter, unreadable) = filter();
    let _ = tracing_subscriber::fmt()
        .json()
        .with_max_level(LevelFilter::TRACE)
        .with_current_span(false)
        .with_ansi(false)
        .without_time() // Lambda stamps every line itself.
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
    warn_unreadable(unreadable);
}

/// Human-readable lines for the local server.
pub fn init_text() {
    let _ = FORMAT.set(Format::Text);
    let (filter, unreadable) = filter();
    let _ = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
    warn_unreadable(unreadable);
}

fn namespace() -> &'static str {
    NAMESPACE.get_or_init(|| {
        crate::config::env("METRICS_NAMESPACE").unwrap_or_else(|| "AiGateway".to_owned())
    })
}

/// Why a request failed, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request was wrong or not allowed (4xx other than the two below).
    Client,
    /// The per-minute limit (or the in-flight cap) refused it.
    RateLimited,
    /// The month's messages or tokens are used up.
    Quota,
    /// The provider failed or timed out.
    Provider,
    /// The gateway or its store failed.
    Server,
}

impl ErrorClass {
    pub fn of(err: &GatewayError) -> ErrorClass {
        match err {
            GatewayError::Limit(LimitError::MonthlyExceeded) => ErrorClass::Quota,
            GatewayError::Limit(_) => ErrorClass::RateLimited,
            GatewayError::Provider(_) => ErrorClass::Provider,
            other if other.is_server_fault() => ErrorClass::Server,
            _ => ErrorClass::Client,
        }
    }

    /// The metric that counts this class.
    fn metric(self) -> &'static str {
        match self {
            ErrorClass::Client => "ClientErrors",
            ErrorClass::RateLimited => "RateLimited",
            ErrorClass::Quota => "QuotaRefused",
            ErrorClass::Provider => "ProviderErrors",
            ErrorClass::Server => "ServerErrors",
        }
    }
}

/// What one request did. Never holds a secret: ids, names, numbers and public error texts only.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestLine {
    /// The gateway's id of a metered call (the client's `x-request-id`).
    pub request_id: Option<String>,
    /// API Gateway's id of the request, in Lambda.
    pub aws_request_id: Option<String>,
    pub method: String,
    /// The route, ids replaced by `{id}`: the same for every request to one endpoint.
    pub route: String,
    pub status: Option<u16>,
    pub org_id: Option<String>,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub model_requested: Option<String>,
    pub model_served: Option<String>,
    pub provider: Option<String>,
    /// `success`, `error` or `abandoned`, for a metered call once settled.
    pub outcome: Option<&'static str>,
    pub attempts: Option<u32>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_nano_usd: Option<u64>,
    pub duration_ms: f64,
    pub time_to_first_token_ms: Option<f64>,
    pub error_class: Option<ErrorClass>,
    /// The error as the client was told it.
    pub error: Option<String>,
}

/// The most of an error's text a line keeps.
const MAX_ERROR_CHARS: usize = 300;

/// Milliseconds with a tenth's precision.
fn millis(from: Instant) -> f64 {
    (from.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

struct Shared {
    started: Instant,
    line: Mutex<RequestLine>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut line = std::mem::take(self.line.get_mut().unwrap_or_else(|p| p.into_inner()));
        line.duration_ms = millis(self.started);
        write(&line);
    }
}

/// The line of one request, shared by whatever works on it; written once, when the last holder
/// lets go.
#[derive(Clone)]
pub struct RequestLog {
    shared: Arc<Shared>,
}

tokio::task_local! {
    static CURRENT: RequestLog;
}

impl RequestLog {
    /// A request's line, starting now.
    pub fn start(method: &str, path: &str) -> RequestLog {
        RequestLog {
            shared: Arc::new(Shared {
                started: Instant::now(),
                line: Mutex::new(RequestLine {
                    method: method.to_owned(),
                    route: route_of(path),
                    ..RequestLine::default()
                }),
            }),
        }
    }

    /// A line for work that is not an HTTP request (a job item from the queue): `route` as given.
    pub fn job(route: &str) -> RequestLog {
        let log = RequestLog::start("SQS", "");
        log.edit(|line| line.route = route.to_owned());
        log
    }

    /// The log of the request the current task works on, if it has one.
    pub fn current() -> Option<RequestLog> {
        CURRENT.try_with(RequestLog::clone).ok()
    }

    /// Runs `work` as this request's: [`RequestLog::current`] finds this log within it.
    pub async fn scope<F: std::future::Future>(&self, work: F) -> F::Output {
        CURRENT.scope(self.clone(), work).await
    }

    fn edit(&self, change: impl FnOnce(&mut RequestLine)) {
        let mut line = self.shared.line.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut line);
    }

    pub fn status(&self, status: u16) {
        self.edit(|line| line.status = Some(status));
    }

    /// Who called, for which org.
    pub fn principal(&self, party: &Party, org: Option<&OrgId>) {
        self.edit(|line| {
            line.user_id = Some(party.user().to_string());
            line.key_id = party.key().map(ToString::to_string);
            if let Some(org) = org {
                line.org_id = Some(org.to_string());
            }
        });
    }

    pub fn org(&self, org: &OrgId) {
        self.edit(|line| line.org_id = Some(org.to_string()));
    }

    /// An admitted call: its id (the gateway's, as the client sees it) and the model it asked for.
    pub fn admitted(&self, request_id: &str, model: &str) {
        self.edit(|line| {
            line.request_id = Some(request_id.to_owned());
            line.model_requested = Some(model.to_owned());
        });
    }

    /// A settled call, as it was recorded, and the provider of the model that answered.
    pub fn settled(&self, record: &RequestRecord, provider: &str) {
        self.edit(|line| {
            line.model_served = Some(record.model.clone());
            line.provider = Some(provider.to_owned());
            line.outcome = Some(record.outcome.as_str());
            line.attempts = Some(record.attempts);
            line.input_tokens = Some(record.input_tokens);
            line.output_tokens = Some(record.output_tokens);
            line.cost_nano_usd = Some(record.cost);
        });
    }

    /// The first piece of a streamed answer left for the client now.
    pub fn first_token(&self) {
        let at = millis(self.shared.started);
        self.edit(|line| {
            line.time_to_first_token_ms.get_or_insert(at);
        });
    }

    /// The request failed with `err` (its public text is what the client was told).
    pub fn failed(&self, err: &GatewayError) {
        self.edit(|line| {
            line.error_class = Some(ErrorClass::of(err));
            line.error = Some(err.detail().chars().take(MAX_ERROR_CHARS).collect());
        });
    }
}

/// Runs `handler` on `request` as one logged request: its line is written when the request is
/// done with (after its stream, for a streamed answer). Every function's handler runs in this.
pub async fn logged<B, E, F>(
    request: lambda_http::Request,
    handler: impl FnOnce(lambda_http::Request) -> F,
) -> Result<http::Response<B>, E>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let context = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(context)) => Some(context),
        _ => None,
    };
    // API Gateway's resource (`/api/v1/orgs/{org_id}/api-keys`) names the route whatever the
    // stage in the path; its parameters become `{id}` as in a path.
    let path = context
        .and_then(|c| c.resource_path.as_deref())
        .map(resource_as_path)
        .unwrap_or_else(|| request.uri().path().to_owned());
    let log = RequestLog::start(request.method().as_str(), &path);
    if let Some(id) = context.and_then(|c| c.request_id.clone()) {
        log.edit(|line| line.aws_request_id = Some(id));
    }
    let result = log.scope(handler(request)).await;
    log.status(
        result
            .as_ref()
            .map_or(500, |response| response.status().as_u16()),
    );
    result
}

/// An API Gateway resource path with every `{parameter}` as `{id}`.
fn resource_as_path(resource: &str) -> String {
    resource
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The route of `path`, its ids replaced by `{id}`, if it is one of the gateway's routes; else
/// `other`. It is a metric's dimension, so it takes one value per endpoint whatever is asked.
pub fn route_of(path: &str) -> String {
    let mut route = String::with_capacity(path.len());
    let mut previous = "";
    for segment in path.trim_end_matches('/').split('/').skip(1) {
        route.push('/');
        if matches!(previous, "orgs" | "api-keys" | "jobs" | "models") {
            route.push_str("{id}");
        } else {
            route.push_str(segment);
        }
        previous = segment;
    }
    if route.is_empty() {
        route.push('/');
    }
    if crate::api::ROUTE_TEMPLATES.contains(&route.as_str()) {
        route
    } else {
        "other".to_owned()
    }
}

/// Notes `err` on the current request's line, if there is one.
pub fn note_error(err: &GatewayError) {
    if let Some(log) = RequestLog::current() {
        log.failed(err);
    }
}

/// Notes the caller on the current request's line, if there is one.
pub fn note_principal(party: &Party, org: Option<&OrgId>) {
    if let Some(log) = RequestLog::current() {
        log.principal(party, org);
    }
}

fn write(line: &RequestLine) {
    match FORMAT.get().copied().unwrap_or(Format::Text) {
        Format::Json => {
            let document = emf(line, SystemTime::now());
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{document}");
        }
        Format::Text => text(line),
    }
}

fn text(line: &RequestLine) {
    tracing::info!(
        request_id = line.request_id.as_deref(),
        status = line.status,
        org_id = line.org_id.as_deref(),
        user_id = line.user_id.as_deref(),
        key_id = line.key_id.as_deref(),
        model = line.model_requested.as_deref(),
        served_by = line.model_served.as_deref(),
        provider = line.provider.as_deref(),
        attempts = line.attempts,
        input_tokens = line.input_tokens,
        output_tokens = line.output_tokens,
        cost_nano_usd = line.cost_nano_usd,
        duration_ms = line.duration_ms,
        ttft_ms = line.time_to_first_token_ms,
        error_class = line.error_class.map(ErrorClass::metric),
        "{} {}",
        line.method,
        line.route
    );
}

/// The line as a CloudWatch Embedded Metric Format document: every field of the line, plus the
/// metrics (requests, errors by class, latency, time to first token, tokens, cost) by route, and
/// by model and provider where a model served. Never by org or user: one metric series each
/// would cost without bound.
pub fn emf(line: &RequestLine, at: SystemTime) -> Value {
    let mut metrics: Vec<(&str, &str, Value)> = vec![
        ("Requests", "Count", json!(1)),
        ("Latency", "Milliseconds", json!(line.duration_ms)),
    ];
    if let Some(class) = line.error_class {
        metrics.push(("Errors", "Count", json!(1)));
        metrics.push((class.metric(), "Count", json!(1)));
    }
    if let Some(ttft) = line.time_to_first_token_ms {
        metrics.push(("TimeToFirstToken", "Milliseconds", json!(ttft)));
    }
    if let (Some(input), Some(output)) = (line.input_tokens, line.output_tokens) {
        metrics.push(("InputTokens", "Count", json!(input)));
        metrics.push(("OutputTokens", "Count", json!(output)));
    }
    if let Some(cost) = line.cost_nano_usd {
        metrics.push(("CostNanoUsd", "None", json!(cost)));
    }
    let mut dimensions = vec![json!(["Route"])];
    if line.model_served.is_some() && line.provider.is_some() {
        dimensions.push(json!(["Model", "Provider"]));
    }
    let millis_since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut document = match serde_json::to_value(line) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    document.retain(|_, value| !value.is_null());
    document.insert("message".into(), json!("request"));
    document.insert(
        "Route".into(),
        json!(format!("{} {}", line.method, line.route)),
    );
    if let (Some(model), Some(provider)) = (&line.model_served, &line.provider) {
        document.insert("Model".into(), json!(model));
        document.insert("Provider".into(), json!(provider));
    }
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
        .collect();
    for (name, _, value) in metrics {
        document.insert(name.into(), value);
    }
    document.insert(
        "_aws".into(),
        json!({
            "Timestamp": millis_since_epoch,
            "CloudWatchMetrics": [{
                "Namespace": namespace(),
                "Dimensions": dimensions,
                "Metrics": definitions,
            }],
        }),
    );
    Value::Object(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_the_level_overall_or_by_target() {
        use tracing::Level;
        let (default, unreadable) = filter_of(None);
        assert_eq!(unreadable, None);
        assert!(default.would_enable("gateway", &Level::INFO));
        assert!(!default.would_enable("gateway", &Level::DEBUG));
        assert!(filter_of(Some("debug"))
            .0
            .would_enable("hyper", &Level::DEBUG));
        let (by_target, unreadable) = filter_of(Some("gateway=debug,warn"));
        assert_eq!(unreadable, None);
        assert!(by_target.would_enable("gateway::api", &Level::DEBUG));
        assert!(!by_target.would_enable("hyper", &Level::INFO));
        assert!(by_target.would_enable("hyper", &Level::WARN));
        // A value that does not parse logs at info, and is handed back to be warned about.
        let (fallback, unreadable) = filter_of(Some("gateway=loud"));
        assert!(fallback.would_enable("gateway", &Level::INFO));
        assert!(!fallback.would_enable("gateway", &Level::DEBUG));
        assert_eq!(unreadable.as_deref(), Some("gateway=loud"));
    }

    #[test]
    fn routes_are_the_gateways_own_with_ids_hidden() {
        for (path, route) in [
            ("/", "/"),
            ("/api/v1/ai/chat", "/api/v1/ai/chat"),
            ("/api/v1/ai/chat/", "/api/v1/ai/chat"),
            ("/api/v1/ai/models", "/api/v1/ai/models"),
            ("/api/v1/orgs/0a1b/api-keys", "/api/v1/orgs/{id}/api-keys"),
            (
                "/api/v1/orgs/0a1b/api-keys/key-9",
                "/api/v1/orgs/{id}/api-keys/{id}",
            ),
            ("/api/v1/ai/jobs/j-1", "/api/v1/ai/jobs/{id}"),
            ("/v1/models/gpt-4o-mini", "/v1/models/{id}"),
            ("/admin/orgs/o-1/plan", "/admin/orgs/{id}/plan"),
            ("/wp-admin/install.php", "other"),
            ("/api/v1/ai/chat/extra", "other"),
            ("/api/v1/orgs/x/api-keys/y/z", "other"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
        let resource = resource_as_path("/api/v1/orgs/{org_id}/api-keys/{id}");
        assert_eq!(route_of(&resource), "/api/v1/orgs/{id}/api-keys/{id}");
    }

    fn metered_line() -> RequestLine {
        RequestLine {
            request_id: Some("r-1".into()),
            method: "POST".into(),
            route: "/api/v1/ai/chat/stream".into(),
            status: Some(200),
            org_id: Some("org-1".into()),
            user_id: Some("user-1".into()),
            model_requested: Some("gpt-4o-mini".into()),
            model_served: Some("gemini-1.5-flash".into()),
            provider: Some("google".into()),
            outcome: Some("success"),
            attempts: Some(2),
            input_tokens: Some(100),
            output_tokens: Some(200),
            cost_nano_usd: Some(245_000),
            duration_ms: 812.5,
            time_to_first_token_ms: Some(95.1),
            ..RequestLine::default()
        }
    }

    #[test]
    fn a_metered_line_is_an_emf_document_by_route_and_by_model() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_123);
        let document = emf(&metered_line(), at);
        let aws = &document["_aws"];
        assert_eq!(aws["Timestamp"], 1_796_000_000_123u64);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(
            directive["Dimensions"],
            json!([["Route"], ["Model", "Provider"]])
        );
        assert_eq!(document["Route"], "POST /api/v1/ai/chat/stream");
        assert_eq!(document["Model"], "gemini-1.5-flash");
        assert_eq!(document["Provider"], "google");
        let names: Vec<&str> = directive["Metrics"]
            .as_array()
            .map(|m| m.iter().filter_map(|d| d["Name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "Requests",
                "Latency",
                "TimeToFirstToken",
                "InputTokens",
                "OutputTokens",
                "CostNanoUsd"
            ]
        );
        for name in names {
            assert!(document[name].is_number(), "{name}");
        }
        assert_eq!(document["CostNanoUsd"], 245_000);
        assert_eq!(document["org_id"], "org-1");
        assert_eq!(document["attempts"], 2);
        assert!(
            document.get("key_id").is_none(),
            "absent fields are left out"
        );
    }

    #[test]
    fn a_refusal_counts_as_an_error_of_its_class_with_no_model_dimension() {
        let line = RequestLine {
            method: "POST".into(),
            route: "/v1/chat/completions".into(),
            status: Some(429),
            error_class: Some(ErrorClass::Quota),
            error: Some("Monthly limit exceeded.".into()),
            duration_ms: 1.5,
            ..RequestLine::default()
        };
        let document = emf(&line, SystemTime::now());
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([["Route"]]));
        assert_eq!(document["Errors"], 1);
        assert_eq!(document["QuotaRefused"], 1);
        assert!(document.get("RateLimited").is_none());
        assert!(document.get("Model").is_none());
    }

    #[test]
    fn errors_are_classed_by_what_went_wrong() {
        use crate::error::{AuthError, RequestError};
        use crate::providers::{ProviderError, ProviderErrorKind};
        let provider = ProviderError::new(
            crate::catalog::ProviderKind::Google,
            ProviderErrorKind::Timeout,
        );
        for (err, class) in [
            (
                GatewayError::Limit(LimitError::MonthlyExceeded),
                ErrorClass::Quota,
            ),
            (
                GatewayError::Limit(LimitError::RateLimited {
                    limit: 5,
                    reset_secs: 3,
                }),
                ErrorClass::RateLimited,
            ),
            (GatewayError::Provider(provider), ErrorClass::Provider),
            (GatewayError::Internal("boom".into()), ErrorClass::Server),
            (
                RequestError::InvalidField("x".into()).into(),
                ErrorClass::Client,
            ),
            (AuthError::MissingOrgHeader.into(), ErrorClass::Client),
        ] {
            assert_eq!(ErrorClass::of(&err), class, "{err}");
        }
    }
}
