//! `/api/v1/orgs/{org_id}/api-keys`: an org's owner or admins create, list and revoke its API keys.

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::{Deserialize, Serialize};

use super::extract::{caller, decoded, json_body};
use super::respond::{finish, json, HttpResponse};
use super::HandlerResult;
use crate::access;
use crate::api_keys;
use crate::error::{AuthError, GatewayError, RequestError};
use crate::ids::{KeyId, OrgId};
use crate::state::AppState;
use crate::store::{ApiKeyRecord, Membership, Party};

/// The most keys one org may hold at once (a soft cap: two creations racing at the edge may
/// both pass), so listing them stays one small read.
pub const MAX_KEYS_PER_ORG: usize = 100;

/// Where an org's keys live; a key is `ORGS_PATH/{org_id}/api-keys/{id}`.
pub const ORGS_PATH: &str = "/api/v1/orgs";

/// The org (and key) a keys path names: API Gateway's path parameters in Lambda, else the URI.
pub fn keys_path(request: &Request) -> Option<(OrgId, Option<KeyId>)> {
    if let Some(params) = request.path_parameters_ref() {
        if let Some(org) = params.first("org_id") {
            return Some((OrgId::from(org), params.first("id").map(KeyId::from)));
        }
    }
    let rest = request
        .uri()
        .path()
        .strip_prefix(ORGS_PATH)?
        .strip_prefix('/')?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let id = |segment: &str| decoded(segment).filter(|id| !id.is_empty());
    match parts.as_slice() {
        [org, "api-keys"] => Some((OrgId::from(id(org)?.as_str()), None)),
        [org, "api-keys", key] => Some((
            OrgId::from(id(org)?.as_str()),
            Some(KeyId::from(id(key)?.as_str())),
        )),
        _ => None,
    }
}

/// The org of the path, which the caller must manage (its owner or an admin).
async fn managed_org(
    state: &AppState,
    request: &Request,
) -> Result<(Membership, Option<KeyId>), GatewayError> {
    let caller = caller(state, request)?;
    let (org, key) = keys_path(request).ok_or_else(|| RequestError::RouteNotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    })?;
    if org.as_str().len() > 64 {
        return Err(AuthError::OrgNotFound(org.as_str().chars().take(64).collect()).into());
    }
    let party = Party::User(caller.user_id);
    let membership = access::read(state.stores.orgs.as_ref(), &state.access, org, &party).await?;
    if !membership.role.manages() {
        return Err(AuthError::NotManager.into());
    }
    Ok((membership, key))
}

#[derive(Debug, Deserialize)]
struct NewKeyBody {
    name: String,
}

/// A key just created: the only answer that holds its secret.
#[derive(Debug, Serialize)]
struct CreatedKey<'a> {
    id: &'a KeyId,
    name: &'a str,
    key: &'a str,
    prefix: &'a str,
    created_at: &'a str,
}

/// A key as its org's managers see it: never its secret.
#[derive(Debug, Serialize)]
struct KeyView {
    id: KeyId,
    name: String,
    prefix: String,
    created_at: String,
    last_used_at: Option<String>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(key: ApiKeyRecord) -> KeyView {
        KeyView {
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
        }
    }
}

#[derive(Debug, Serialize)]
struct KeyList {
    keys: Vec<KeyView>,
}

/// `POST /api/v1/orgs/{org_id}/api-keys` with `{"name"}` → 201 and the key, its secret shown
/// this once.
pub async fn create_key(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(create_inner(state, &request).await))
}

async fn create_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (membership, _) = managed_org(state, request).await?;
    let body: NewKeyBody = json_body(request)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(RequestError::InvalidField(
            "name: must be 1-100 characters, none of them control characters".into(),
        )
        .into());
    }
    let caller = caller(state, request)?;
    if state.stores.keys.keys_of(&membership.org.id).await?.len() >= MAX_KEYS_PER_ORG {
        return Err(RequestError::Conflict(format!(
            "The organization already has {MAX_KEYS_PER_ORG} API keys; revoke one first"
        ))
        .into());
    }
    let new = api_keys::generate(state, &membership.org.id, name, &caller.user_id)?;
    state.stores.keys.create_key(&new.record).await?;
    tracing::info!(org_id = %membership.org.id, key_id = %new.record.id, "API key created");
    let record = &new.record;
    Ok(json(
        StatusCode::CREATED,
        &CreatedKey {
            id: &record.id,
            name: &record.name,
            key: new.secret.expose(),
            prefix: &record.prefix,
            created_at: &record.created_at,
        },
    ))
}

/// `GET /api/v1/orgs/{org_id}/api-keys` → the org's keys, oldest first, without their secrets.
pub async fn list_keys(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(list_inner(state, &request).await))
}

async fn list_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (membership, _) = managed_org(state, request).await?;
    let keys = state.stores.keys.keys_of(&membership.org.id).await?;
    Ok(json(
        StatusCode::OK,
        &KeyList {
            keys: keys.into_iter().map(KeyView::from).collect(),
        },
    ))
}

/// `DELETE /api/v1/orgs/{org_id}/api-keys/{id}` → 204; the key stops working at once.
pub async fn revoke_key(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(revoke_inner(state, &request).await))
}

async fn revoke_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (membership, key) = managed_org(state, request).await?;
    let not_found = |id: &str| RequestError::NotFoundDetail(format!("API key {id} not found"));
    let Some(key) = key else {
        return Err(not_found("").into());
    };
    if key.as_str().len() > 64
        || !state
            .stores
            .keys
            .revoke_key(&membership.org.id, &key)
            .await?
    {
        return Err(not_found(key.as_str()).into());
    }
    tracing::info!(org_id = %membership.org.id, key_id = %key, "API key revoked");
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}
