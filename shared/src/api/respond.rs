//! Turning results into HTTP responses: JSON bodies, and errors as `{"detail": …}`, logged once here.

use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::StatusCode;
use lambda_http::{Body, Response};
use serde::Serialize;

use crate::error::{GatewayError, LimitError};
use crate::limits::RateStatus;

pub type HttpResponse = Response<Body>;

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_string(value) {
        Ok(text) => Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::Text(text))
            .unwrap_or_else(|_| fallback()),
        Err(err) => error(GatewayError::Internal(format!(
            "serialising a response failed: {err}"
        ))),
    }
}

fn fallback() -> HttpResponse {
    let mut response = Response::new(Body::Text(
        r#"{"detail":"Internal server error"}"#.to_owned(),
    ));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[derive(Serialize)]
struct Detail {
    detail: String,
}

/// Logs an error once, at the edge: server faults with their full (secret-free) cause; client
/// mistakes only at debug level.
pub fn log(err: &GatewayError) {
    crate::telemetry::note_error(err);
    let status = err.status();
    if err.is_server_fault() {
        tracing::error!(status = status.as_u16(), error = %err, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), error = %err, "request refused");
    }
}

/// An error response, logged by [`log`].
pub fn error(err: GatewayError) -> HttpResponse {
    log(&err);
    let status = err.status();
    let mut response = json(
        status,
        &Detail {
            detail: err.detail(),
        },
    );
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    if let GatewayError::Limit(LimitError::Throttled { reset_secs }) = err {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(reset_secs),
        );
    }
    if let GatewayError::Limit(LimitError::TooManyInFlight { .. }) = err {
        // Another request of the org will finish soon; a second is a fair wait.
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
    }
    if let GatewayError::Limit(LimitError::RateLimited { limit, reset_secs }) = err {
        rate_headers(
            &mut response,
            RateStatus {
                limit,
                remaining: 0,
                reset_secs,
            },
        );
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(reset_secs),
        );
    }
    response
}

/// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the window
/// resets).
pub fn rate_headers(response: &mut HttpResponse, rate: RateStatus) {
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", http::HeaderValue::from(rate.limit));
    headers.insert(
        "x-ratelimit-remaining",
        http::HeaderValue::from(rate.remaining),
    );
    headers.insert(
        "x-ratelimit-reset",
        http::HeaderValue::from(rate.reset_secs),
    );
}

/// Collapses a handler's result into a response.
pub fn finish(result: Result<HttpResponse, GatewayError>) -> HttpResponse {
    result.unwrap_or_else(error)
}
