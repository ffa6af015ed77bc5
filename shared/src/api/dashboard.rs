//! The usage dashboard (one page of HTML, CSS and JavaScript that calls the public API from the
//! browser) and the API's OpenAPI document. Both are compiled in, so the function that serves them
//! reads nothing at run time.

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

/// The OpenAPI 3.1 document of every route, as `shared/openapi.json` has it.
const OPENAPI: &str = include_str!("../../openapi.json");

/// `GET /openapi.json` → the OpenAPI document.
pub fn openapi(_request: Request) -> HttpResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header(CACHE_CONTROL, "no-cache")
        .header("access-control-allow-origin", "*")
        .body(Body::Text(OPENAPI.to_owned()))
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// The page or the document, by the route API Gateway matched (or the path, locally): what the
/// `dashboard` function serves.
pub fn static_content(request: Request) -> HttpResponse {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let resource = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(context)) => context.resource_path.clone(),
        _ => None,
    };
    let path = resource.unwrap_or_else(|| request.uri().path().to_owned());
    if path.ends_with(super::OPENAPI_PATH) {
        openapi(request)
    } else {
        dashboard(request)
    }
}

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
