//! The usage dashboard: one page of HTML, CSS and JavaScript that calls the public API from the
//! browser. It is compiled in, so the function that serves it reads nothing at run time.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;
use lambda_http::{Body, Request, Response};

use super::respond::HttpResponse;

/// The page, as `shared/dashboard/index.html` has it.
const PAGE: &str = include_str!("../../dashboard/index.html");

/// What the page may load and call: itself, its inline script and style, and this origin's API.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `GET /` → the dashboard page.
pub fn dashboard(_request: Request) -> HttpResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/html; charset=utf-8")
        .header(CACHE_CONTROL, "no-cache")
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(Body::Text(PAGE.to_owned()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}
