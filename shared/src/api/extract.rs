//! Reading requests: bodies (size, content type, JSON or form), the caller, and their current org.

use http::header::CONTENT_TYPE;
use lambda_http::Request;
use serde::de::DeserializeOwned;

use crate::access;
use crate::api_keys;
use crate::auth::{bearer_token, Caller};
use crate::error::{AuthError, GatewayError, RequestError};
use crate::ids::OrgId;
use crate::state::AppState;
use crate::store::{Membership, Party};
use crate::telemetry;

/// The largest body any endpoint accepts: Lambda's own limit on a request, room for a chat with
/// a few inline images.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

fn body_bytes(request: &Request) -> Result<&[u8], RequestError> {
    let bytes: &[u8] = request.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(RequestError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(bytes)
}

fn content_type_is(request: &Request, expected: &str) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// Parses a JSON body. Malformed JSON is a 400; a well-formed body with a missing or mistyped field
/// is a 422 naming the field's path (`messages[0].role: …`).
pub fn json_body<T: DeserializeOwned>(request: &Request) -> Result<T, RequestError> {
    let bytes = body_bytes(request)?;
    if !content_type_is(request, "application/json") {
        return Err(RequestError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::InvalidJson("the body is empty".into()));
    }
    // A well-formed object is read straight into `T`. Anything else is read again in two steps,
    // only to say what is wrong: the syntax first, so that a malformed body is never reported as
    // a missing field, then the field at fault by its path.
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if object {
        if let Ok(parsed) = serde_json::from_slice(bytes) {
            return Ok(parsed);
        }
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    if !value.is_object() {
        return Err(RequestError::InvalidField(
            "body: expected a JSON object".into(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            RequestError::InvalidField(format!("body: {inner}"))
        } else {
            RequestError::InvalidField(format!("{path}: {inner}"))
        }
    })
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn form_body<T: DeserializeOwned>(request: &Request) -> Result<T, RequestError> {
    let bytes = body_bytes(request)?;
    if !content_type_is(request, "application/x-www-form-urlencoded") {
        return Err(RequestError::UnsupportedMediaType {
            expected: "application/x-www-form-urlencoded",
        });
    }
    serde_urlencoded::from_bytes(bytes).map_err(|e| RequestError::InvalidForm(e.to_string()))
}

/// The caller, from their bearer token.
pub fn caller(state: &AppState, request: &Request) -> Result<Caller, AuthError> {
    let caller = state.tokens.verify(bearer_token(request.headers())?)?;
    telemetry::note_principal(&Party::User(caller.user_id.clone()), None);
    Ok(caller)
}

/// The client's address on the local server (the peer of its connection), set per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// Where the request came from: API Gateway's `sourceIp` in Lambda, the peer's address on the
/// local server, else `unknown` (every such request then shares one allowance).
pub fn client_address(request: &Request) -> String {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    if let Some(RequestContext::ApiGatewayV1(context)) = request.request_context_ref() {
        if let Some(ip) = context.identity.source_ip.as_deref() {
            return ip.chars().take(64).collect();
        }
    }
    match request.extensions().get::<ClientAddr>() {
        Some(ClientAddr(ip)) => ip.to_string(),
        None => "unknown".to_owned(),
    }
}

/// The org id in `X-Current-Org`.
pub fn org_header(request: &Request) -> Result<OrgId, AuthError> {
    let org = request
        .headers()
        .get("x-current-org")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(AuthError::MissingOrgHeader)?;
    // Ids are UUIDs; anything longer is nobody's org, and is not worth a read.
    if org.len() > 64 {
        return Err(AuthError::OrgNotFound(org.chars().take(64).collect()));
    }
    Ok(OrgId::from(org))
}

/// The organisation named by `X-Current-Org`, which the caller must belong to, read from the store.
pub async fn current_org(
    state: &AppState,
    request: &Request,
    caller: &Caller,
) -> Result<Membership, GatewayError> {
    let org = org_header(request)?;
    let party = Party::User(caller.user_id.clone());
    telemetry::note_principal(&party, Some(&org));
    access::read(state.stores.orgs.as_ref(), &state.access, org, &party).await
}

/// Who is calling, and for which org: one of an org's API keys (`Bearer sk-gw-…`, acting for its
/// org), or a user's token with `X-Current-Org`.
pub async fn principal(
    state: &AppState,
    request: &Request,
) -> Result<(Party, OrgId), GatewayError> {
    let token = bearer_token(request.headers())?;
    if api_keys::is_key(token) {
        let (key, org) = api_keys::resolve(state, token).await?;
        let party = Party::Key(key);
        telemetry::note_principal(&party, Some(&org));
        return Ok((party, org));
    }
    let caller = state.tokens.verify(token)?;
    let party = Party::User(caller.user_id);
    telemetry::note_principal(&party, None);
    let org = org_header(request)?;
    telemetry::note_principal(&party, Some(&org));
    Ok((party, org))
}

/// The caller (a user or a key) and their org, read from the store.
pub async fn principal_org(
    state: &AppState,
    request: &Request,
) -> Result<(Party, Membership), GatewayError> {
    let (party, org) = principal(state, request).await?;
    let membership = access::read(state.stores.orgs.as_ref(), &state.access, org, &party).await?;
    Ok((party, membership))
}

/// A query-string parameter, from API Gateway's parsed parameters in Lambda or from the URI.
pub fn query_param(request: &Request, name: &str) -> Option<String> {
    use lambda_http::RequestExt;
    if let Some(value) = request
        .query_string_parameters_ref()
        .and_then(|q| q.first(name))
    {
        return Some(value.to_owned());
    }
    let query = request.uri().query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// A path parameter: API Gateway's in Lambda, else the segment after `prefix/` in the URI.
pub fn path_param(request: &Request, name: &str, prefix: &str) -> Option<String> {
    use lambda_http::RequestExt;
    if let Some(value) = request.path_parameters_ref().and_then(|p| p.first(name)) {
        return Some(value.to_owned());
    }
    let rest = request
        .uri()
        .path()
        .strip_prefix(prefix)?
        .strip_prefix('/')?;
    let segment = rest.trim_end_matches('/');
    (!segment.is_empty() && !segment.contains('/'))
        .then(|| decoded(segment))
        .flatten()
}

/// A path segment percent-decoded, as API Gateway hands path parameters over; `None` if it does
/// not decode to UTF-8.
pub fn decoded(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        model: String,
        max_tokens: Option<u32>,
    }

    fn read(body: &str) -> Result<Body, RequestError> {
        let request = http::Request::builder()
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(lambda_http::Body::Text(body.to_owned()))
            .expect("request");
        json_body(&request)
    }

    fn message(result: Result<Body, RequestError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn an_object_is_read_whatever_path_it_takes() {
        let want = Body {
            model: "m".into(),
            max_tokens: Some(5),
        };
        assert_eq!(
            read(r#" {"model": "m", "max_tokens": 5}"#).expect("read"),
            want
        );
        // A repeated key is read as before, the last one kept.
        let repeated = r#"{"model": "x", "model": "m", "max_tokens": 5}"#;
        assert_eq!(read(repeated).expect("read"), want);
    }

    #[test]
    fn what_is_wrong_with_a_body_is_said() {
        // An array that would fill the struct's fields in order is still not an object.
        let array = message(read(r#"["m", 5]"#));
        assert!(array.contains("expected a JSON object"), "{array}");
        let malformed = message(read(r#"{"model": "m""#));
        assert!(malformed.contains("EOF"), "{malformed}");
        let missing = message(read(r#"{"max_tokens": 5}"#));
        assert!(missing.contains("missing field `model`"), "{missing}");
        let wrong = message(read(r#"{"model": "m", "max_tokens": "five"}"#));
        assert!(wrong.starts_with("max_tokens: "), "{wrong}");
        assert!(message(read("  ")).contains("empty"));
    }
}
