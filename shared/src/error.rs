//! Errors: one small enum per layer, composed into [`GatewayError`], whose one `status()` match picks
//! the HTTP status. The body is always SPEC's `{"detail": "…"}`.

use http::StatusCode;

use crate::providers::ProviderError;
use crate::store::StoreError;

/// Who is calling and on behalf of which organisation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Not authenticated")]
    MissingToken,
    #[error("Could not validate credentials")]
    InvalidToken,
    #[error("Incorrect API key provided")]
    InvalidApiKey,
    #[error("Only the organization's owner or an admin may manage its API keys")]
    NotManager,
    #[error("Token has expired")]
    ExpiredToken,
    #[error("Incorrect email or password")]
    BadCredentials,
    #[error("Missing X-Current-Org header")]
    MissingOrgHeader,
    #[error("Organization {0} not found")]
    OrgNotFound(String),
    #[error("You are not a member of organization {0}")]
    NotMember(String),
}

/// What is wrong with the request itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Content-Type must be {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("Request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("Invalid form body: {0}")]
    InvalidForm(String),
    /// A field is missing, mistyped or out of range; the text names the field and why.
    #[error("{0}")]
    InvalidField(String),
    #[error("Unknown model {model}. Valid models: {valid}")]
    UnknownModel { model: String, valid: String },
    #[error("max_tokens {requested} exceeds the maximum of {max} output tokens for model {model}")]
    MaxTokensAboveModel {
        requested: u64,
        max: u32,
        model: String,
    },
    /// A request field the chosen model's provider cannot honour.
    #[error("{field} is not supported by model {model}")]
    Unsupported { field: &'static str, model: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFoundDetail(String),
    /// The client took too long to send its request.
    #[error("Request timeout: {0}")]
    Timeout(String),
    #[error("Not found: {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("Method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
}

/// What the organisation's plan does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("Model {0} not available in your plan. Upgrade to access.")]
    ModelNotInPlan(String),
    #[error(
        "max_tokens {requested} exceeds your plan's maximum of {max} tokens per request. Upgrade to raise it."
    )]
    MaxTokensAbovePlan { requested: u64, max: u32 },
    #[error("Organization plan {0} is not configured")]
    UnknownPlan(String),
}

/// A limit of the organisation's plan is used up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("Rate limit exceeded. Max {limit} requests per minute.")]
    RateLimited { limit: u64, reset_secs: u64 },
    #[error("Monthly limit exceeded. Upgrade your plan to continue.")]
    MonthlyExceeded,
    #[error("Too many requests in flight. Max {limit} at once.")]
    TooManyInFlight { limit: u64 },
    #[error("Too many attempts. Retry in {reset_secs} seconds.")]
    Throttled { reset_secs: u64 },
    #[error("Too many job items queued. Max {limit} at once; submit more as these finish.")]
    TooManyQueued { limit: u64 },
}

/// Every error a request can end in.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job was stored but none of its items could be queued: they are marked failed.
    #[error("The job queue is unavailable; job {0} was not started and its items are marked failed. Retry shortly.")]
    QueueUnavailable(crate::ids::JobId),
    /// The gateway is at capacity for this kind of work; the caller may retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Auth(e) => match e {
                AuthError::MissingToken
                | AuthError::InvalidToken
                | AuthError::ExpiredToken
                | AuthError::InvalidApiKey
                | AuthError::BadCredentials => StatusCode::UNAUTHORIZED,
                AuthError::MissingOrgHeader => StatusCode::BAD_REQUEST,
                AuthError::OrgNotFound(_) => StatusCode::NOT_FOUND,
                AuthError::NotMember(_) | AuthError::NotManager => StatusCode::FORBIDDEN,
            },
            GatewayError::Request(e) => match e {
                RequestError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                RequestError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                RequestError::InvalidJson(_)
                | RequestError::InvalidForm(_)
                | RequestError::UnknownModel { .. }
                | RequestError::Unsupported { .. }
                | RequestError::MaxTokensAboveModel { .. } => StatusCode::BAD_REQUEST,
                RequestError::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
                RequestError::Conflict(_) => StatusCode::CONFLICT,
                RequestError::RouteNotFound { .. } | RequestError::NotFoundDetail(_) => {
                    StatusCode::NOT_FOUND
                }
                RequestError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
                RequestError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            },
            GatewayError::Plan(e) => match e {
                PlanError::ModelNotInPlan(_) | PlanError::MaxTokensAbovePlan { .. } => {
                    StatusCode::FORBIDDEN
                }
                PlanError::UnknownPlan(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            GatewayError::Limit(LimitError::RateLimited { .. }) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Limit(LimitError::MonthlyExceeded) => StatusCode::PAYMENT_REQUIRED,
            GatewayError::Limit(
                LimitError::TooManyInFlight { .. }
                | LimitError::Throttled { .. }
                | LimitError::TooManyQueued { .. },
            ) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Provider(e) => e.status(),
            GatewayError::Store(e) => e.status(),
            GatewayError::QueueUnavailable(_) | GatewayError::Busy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text of the `detail` field: safe to show the caller (no secrets, no internals).
    pub fn detail(&self) -> String {
        match self {
            GatewayError::Store(e) => e.public_detail().to_owned(),
            GatewayError::Internal(_) | GatewayError::Plan(PlanError::UnknownPlan(_)) => {
                "Internal server error".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// Whether the fault is ours or upstream's (logged), rather than the caller's (answered only).
    pub fn is_server_fault(&self) -> bool {
        self.status().is_server_error()
    }
}
