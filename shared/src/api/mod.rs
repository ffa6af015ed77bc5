//! The HTTP handlers, one per endpoint. Each is short: parse, one call into the library, respond.
//! Lambda functions run one handler each; the local server routes to all of them with [`dispatch`].

pub mod dashboard;
pub mod extract;
pub mod keys;
pub mod openai;
pub mod respond;
pub mod sse;
pub mod stream;

pub use dashboard::{dashboard, openapi, static_content};
pub use stream::{chat_stream, StreamingBody, StreamingResponse};

use http::{Method, StatusCode};
use lambda_http::Request;
use serde::{Deserialize, Serialize};

use crate::auth;
use crate::chat::{self, ChatBody};
use crate::clock;
use crate::error::{AuthError, GatewayError, LimitError, RequestError};
use crate::ids::{OrgId, UserId};
use crate::jobs;
use crate::limits;
use crate::metered;
use crate::queue::JobMessage;
use crate::state::AppState;
use crate::store::{Membership, OrgRecord, StoreError, UserRecord};
use crate::throttle;
use crate::usage;
use extract::{caller, current_org, form_body, json_body, principal, principal_org};
use respond::{finish, json, HttpResponse};

/// What every handler returns to `lambda_http`: errors are already responses.
pub type HandlerResult = Result<HttpResponse, lambda_http::Error>;

#[derive(Debug, Serialize)]
struct TokenBody {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

fn token_body(state: &AppState, user: &UserId, email: &str) -> Result<TokenBody, GatewayError> {
    Ok(TokenBody {
        access_token: state.tokens.issue(user, email)?,
        token_type: "bearer",
        expires_in: state.tokens.ttl().as_secs(),
    })
}

#[derive(Debug, Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

fn normalise_email(raw: &str) -> Result<String, RequestError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(RequestError::InvalidField(
            "email: must be a valid email address".into(),
        ))
    }
}

/// The longest password accepted: Argon2 reads all of it.
const MAX_PASSWORD_CHARS: usize = 128;

fn check_password(password: &str) -> Result<(), RequestError> {
    let chars = password.chars().count();
    if !(8..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(RequestError::InvalidField(
            "password: must be between 8 and 128 characters".into(),
        ));
    }
    Ok(())
}

/// How long password work waits for a place before the caller is told to come back.
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs CPU- and memory-heavy password work off the async threads, a bounded number at once.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, GatewayError> {
    let place = tokio::time::timeout(HASHING_WAIT, state.hashing.clone().acquire_owned()).await;
    let Ok(Ok(place)) = place else {
        return Err(GatewayError::Busy(
            "Too many sign-ins at once. Retry in a few seconds.".into(),
        ));
    };
    let done = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| GatewayError::Internal(format!("password task failed: {e}")));
    drop(place);
    done
}

/// `POST /api/v1/auth/register` with `{"email", "password"}` → 201 and a token.
pub async fn register(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(register_inner(state, &request).await))
}

async fn register_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let body: Credentials = json_body(request)?;
    let email = normalise_email(&body.email)?;
    check_password(&body.password)?;
    throttle::registration(state, &extract::client_address(request)).await?;
    let password = body.password;
    let password_hash = blocking(state, move || auth::hash_password(&password)).await??;
    let user = UserRecord {
        id: UserId::generate(),
        email,
        password_hash,
        created_at: clock::rfc3339(state.clock.now()),
    };
    match state.stores.users.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(RequestError::Conflict("Email already registered".into()).into())
        }
        Err(other) => return Err(other.into()),
    }
    tracing::info!(user_id = %user.id, "user registered");
    Ok(json(
        StatusCode::CREATED,
        &token_body(state, &user.id, &user.email)?,
    ))
}

/// OAuth2 password-grant style form, as FastAPI's `OAuth2PasswordRequestForm` takes it.
#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

/// `POST /api/v1/auth/login`, form-urlencoded `username=<email>&password=…` → a token.
pub async fn login(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(login_inner(state, &request).await))
}

async fn login_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let form: LoginForm = form_body(request)?;
    let address = extract::client_address(request);
    let name = form.username.trim().to_lowercase();
    let name: String = name.chars().take(254).collect();
    throttle::check_login(state, &name, &address).await?;
    // A name that could not have registered (too long for a key, control characters) or a
    // password no account can have is not looked up; it fails as a wrong password would.
    let user = match normalise_email(&form.username) {
        Ok(email) if check_password(&form.password).is_ok() => {
            state.stores.users.user_by_email(&email).await?
        }
        _ => None,
    };
    let password: String = form.password.chars().take(MAX_PASSWORD_CHARS).collect();
    let verified = blocking(state, move || match user {
        Some(user) if auth::verify_password(&password, &user.password_hash) => Some(user),
        Some(_) => None,
        None => {
            auth::verify_against_dummy(&password);
            None
        }
    })
    .await?;
    let Some(user) = verified else {
        throttle::failed_login(state, &name, &address).await;
        return Err(AuthError::BadCredentials.into());
    };
    Ok(json(
        StatusCode::OK,
        &token_body(state, &user.id, &user.email)?,
    ))
}

#[derive(Debug, Deserialize)]
struct NewOrgBody {
    name: String,
    slug: String,
}

/// An organisation as its members see it.
#[derive(Debug, Serialize)]
struct OrgBody {
    id: OrgId,
    name: String,
    slug: String,
    plan: String,
    role: &'static str,
    created_at: String,
}

impl From<Membership> for OrgBody {
    fn from(m: Membership) -> OrgBody {
        OrgBody {
            id: m.org.id,
            name: m.org.name,
            slug: m.org.slug,
            plan: m.org.plan.to_string(),
            role: m.role.as_str(),
            created_at: m.org.created_at,
        }
    }
}

fn check_slug(slug: &str) -> Result<(), RequestError> {
    let ok = (3..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && !slug.contains("--");
    if ok {
        Ok(())
    } else {
        Err(RequestError::InvalidField(
            "slug: must be 3-63 lower-case letters, digits or single hyphens, not starting or ending with a hyphen".into(),
        ))
    }
}

/// `POST /api/v1/orgs` with `{"name", "slug"}` → 201 and the org; the caller owns it.
pub async fn create_org(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(create_org_inner(state, &request).await))
}

async fn create_org_inner(
    state: &AppState,
    request: &Request,
) -> Result<HttpResponse, GatewayError> {
    let caller = caller(state, request)?;
    let body: NewOrgBody = json_body(request)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(RequestError::InvalidField("name: must be 1-100 characters".into()).into());
    }
    check_slug(&body.slug)?;
    let now = clock::rfc3339(state.clock.now());
    let org = OrgRecord {
        id: OrgId::generate(),
        name,
        slug: body.slug,
        plan: state.catalog.default_plan.clone(),
        owner_id: caller.user_id.clone(),
        created_at: now.clone(),
    };
    match state.stores.orgs.create_org(&org, &now).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(
                RequestError::Conflict(format!("Slug {} is already taken", org.slug)).into(),
            )
        }
        Err(other) => return Err(other.into()),
    }
    tracing::info!(org_id = %org.id, user_id = %caller.user_id, "organization created");
    Ok(json(
        StatusCode::CREATED,
        &OrgBody::from(Membership {
            org,
            role: crate::store::Role::Owner,
        }),
    ))
}

/// `GET /api/v1/orgs` → the caller's orgs, oldest first.
pub async fn list_orgs(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(list_orgs_inner(state, &request).await))
}

async fn list_orgs_inner(
    state: &AppState,
    request: &Request,
) -> Result<HttpResponse, GatewayError> {
    let caller = caller(state, request)?;
    let orgs: Vec<OrgBody> = state
        .stores
        .orgs
        .orgs_of(&caller.user_id)
        .await?
        .into_iter()
        .map(OrgBody::from)
        .collect();
    Ok(json(StatusCode::OK, &orgs))
}

/// `POST /api/v1/ai/chat` → the model's answer with its usage.
pub async fn chat(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(chat_inner(state, &request).await))
}

async fn chat_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (party, org) = principal(state, request).await?;
    let input = chat_input(request, |body| {
        if body.stream == Some(true) {
            return Err(RequestError::InvalidField(
                "stream: streaming answers are served by POST /api/v1/ai/chat/stream".into(),
            )
            .into());
        }
        Ok(())
    });
    let admitted = metered::admit(state, &party, org, input).await?;
    let rate = admitted.rate();
    let mut response = match admitted.complete().await {
        Ok((answer, model)) => json(
            StatusCode::OK,
            &chat::ChatAnswer::from_parts(answer, model.to_string()),
        ),
        Err(err) => respond::error(err.into()),
    };
    respond::rate_headers(&mut response, rate);
    Ok(response)
}

/// The chat request of a native `/api/v1/ai/chat*` body; `check_body` adds the endpoint's own rule.
pub(crate) fn chat_input(
    request: &Request,
    check_body: impl Fn(&ChatBody) -> Result<(), GatewayError>,
) -> Result<chat::ChatInput, GatewayError> {
    let body = json_body::<ChatBody>(request)?;
    check_body(&body)?;
    chat::validate(body)
}

/// `GET /api/v1/ai/usage[?month=YYYY-MM]` → the org's usage in the month (this month by default).
pub async fn usage(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(usage_inner(state, &request).await))
}

async fn usage_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (_, membership) = principal_org(state, request).await?;
    let plan = metered::plan_of(state, &membership)?;
    let month = month_param(state, request)?;
    let report = usage::report(
        state.stores.meter.as_ref(),
        &membership.org.id,
        plan,
        &month,
    )
    .await?;
    Ok(json(StatusCode::OK, &report))
}

/// `?month=YYYY-MM`, this month (UTC) when absent.
fn month_param(state: &AppState, request: &Request) -> Result<String, RequestError> {
    match extract::query_param(request, "month") {
        None => Ok(clock::month_of(state.clock.now())),
        Some(raw) => usage::parse_month(&raw).ok_or_else(|| {
            RequestError::InvalidField(format!("month: expected YYYY-MM, got {raw:?}"))
        }),
    }
}

/// `?limit=N` of a listing: 1 to 100, 20 when absent.
fn page_limit(request: &Request) -> Result<usize, RequestError> {
    let Some(raw) = extract::query_param(request, "limit") else {
        return Ok(20);
    };
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| RequestError::InvalidField(format!("limit: must be 1-100, got {raw:?}")))
}

/// `?after=` of a listing: the `next` of a previous page, an id (a UUID). Anything else would
/// reach the store as a key.
fn page_after(request: &Request) -> Result<Option<String>, RequestError> {
    let after = extract::query_param(request, "after");
    if after
        .as_deref()
        .is_some_and(|a| uuid::Uuid::parse_str(a).is_err())
    {
        return Err(RequestError::InvalidField(
            "after: must be the `next` cursor of a previous page".into(),
        ));
    }
    Ok(after)
}

/// `GET /api/v1/ai/requests[?month=YYYY-MM&limit=N&after=ID]` → the org's requests, newest
/// first, with the `next` page's start.
pub async fn requests(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(requests_inner(state, &request).await))
}

async fn requests_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (_, membership) = principal_org(state, request).await?;
    let month = month_param(state, request)?;
    let page = (page_limit(request)?, page_after(request)?);
    let list = usage::recent(
        state.stores.meter.as_ref(),
        &membership.org.id,
        &month,
        (page.0, page.1.as_deref()),
    )
    .await?;
    Ok(json(StatusCode::OK, &list))
}

#[derive(Debug, Serialize)]
struct ModelsBody<'a> {
    plan: &'a str,
    models: Vec<ModelBody<'a>>,
}

#[derive(Debug, Serialize)]
struct ModelBody<'a> {
    id: &'a str,
    name: &'a str,
    provider: &'a str,
    max_tokens: u32,
}

/// `GET /api/v1/ai/models` → the models the org's plan allows.
pub async fn models(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(models_inner(state, &request).await))
}

async fn models_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let (_, membership) = principal_org(state, request).await?;
    let plan = metered::plan_of(state, &membership)?;
    let models = state
        .catalog
        .models_in(plan)
        .into_iter()
        .map(|m| ModelBody {
            id: m.id.as_str(),
            name: &m.name,
            provider: m.provider.as_str(),
            max_tokens: m.max_tokens,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &ModelsBody {
            plan: plan.id.as_str(),
            models,
        },
    ))
}

#[derive(Debug, Serialize)]
struct Accepted {
    id: crate::ids::JobId,
    status: &'static str,
    total: u64,
}

/// `POST /api/v1/ai/jobs` → 202 with the job id; the work is queued.
pub async fn submit_job(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(submit_job_inner(state, &request).await))
}

async fn submit_job_inner(
    state: &AppState,
    request: &Request,
) -> Result<HttpResponse, GatewayError> {
    let caller = caller(state, request)?;
    let membership = current_org(state, request, &caller).await?;
    let body: jobs::JobBody = json_body(request)?;
    let queue = state
        .queue
        .as_ref()
        .ok_or_else(|| GatewayError::Internal("JOBS_QUEUE_URL is not configured".into()))?;
    let (job, items) =
        jobs::prepare_job(state, &membership, &caller.user_id, body, state.clock.now())?;
    // Metered like a chat: a slot of the minute, and room in the month for every item.
    let plan = metered::plan_of(state, &membership)?;
    let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
    let meter = state.stores.meter.as_ref();
    let at = (&membership.org.id, job.id.as_str());
    let rate = limits::admit_submission(meter, state.clock.now(), at, plan, count).await?;
    let stored = state
        .stores
        .jobs
        .create_job(&job, &items, plan.max_queued_items)
        .await;
    if !matches!(stored, Ok(true)) {
        let slot_back = limits::give_back_submission(meter, state.clock.now(), at, plan).await;
        if let Err(error) = slot_back {
            tracing::warn!(%error, "a refused submission's rate slot could not be given back");
        }
        stored?;
        return Err(LimitError::TooManyQueued {
            limit: plan.max_queued_items,
        }
        .into());
    }
    let messages: Vec<JobMessage> = items
        .iter()
        .map(|item| JobMessage {
            job_id: job.id.clone(),
            item_id: item.id.clone(),
            waiting_since: None,
        })
        .collect();
    if let Err(err) = queue.enqueue(&messages).await {
        tracing::error!(job_id = %job.id, error = %err, unsent = err.unsent.len(), "job items could not be queued");
        jobs::fail_unqueued(state, &job.org, &err.unsent, &err.reason).await;
        if err.unsent.len() == messages.len() {
            // Nothing will run: the job is failed and the caller told to try again.
            return Err(GatewayError::QueueUnavailable(job.id));
        }
    } else {
        tracing::info!(job_id = %job.id, org_id = %job.org, items = job.total, "job queued");
    }
    let mut response = json(
        StatusCode::ACCEPTED,
        &Accepted {
            id: job.id,
            status: "queued",
            total: job.total,
        },
    );
    respond::rate_headers(&mut response, rate);
    Ok(response)
}

/// `GET /api/v1/ai/jobs/{id}` → the job, its progress and every item's result.
pub async fn get_job(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(get_job_inner(state, &request).await))
}

async fn get_job_inner(state: &AppState, request: &Request) -> Result<HttpResponse, GatewayError> {
    let caller = caller(state, request)?;
    let membership = current_org(state, request, &caller).await?;
    let id = extract::path_param(request, "id", JOBS_PATH).unwrap_or_default();
    let not_found = || RequestError::NotFoundDetail(format!("Job {id} not found"));
    if id.is_empty() || id.len() > 64 {
        return Err(not_found().into());
    }
    match state
        .stores
        .jobs
        .job(&crate::ids::JobId::from(id.as_str()))
        .await?
    {
        // Another org's job does not exist, as far as this caller can tell.
        Some((job, items)) if job.org == membership.org.id => {
            Ok(json(StatusCode::OK, &jobs::view(job, Some(items))))
        }
        _ => Err(not_found().into()),
    }
}

#[derive(Debug, Serialize)]
struct JobList {
    jobs: Vec<jobs::JobView>,
    next: Option<String>,
}

/// `GET /api/v1/ai/jobs[?limit=N&after=<cursor>]` → the org's jobs, newest first.
pub async fn list_jobs(state: &AppState, request: Request) -> HandlerResult {
    Ok(finish(list_jobs_inner(state, &request).await))
}

async fn list_jobs_inner(
    state: &AppState,
    request: &Request,
) -> Result<HttpResponse, GatewayError> {
    let caller = caller(state, request)?;
    let membership = current_org(state, request, &caller).await?;
    let limit = page_limit(request)?;
    let after = page_after(request)?;
    let (jobs, next) = jobs::list(state, &membership.org.id, limit, after.as_deref()).await?;
    Ok(json(StatusCode::OK, &JobList { jobs, next }))
}

/// The jobs collection; a job is `JOBS_PATH/{id}`.
pub const JOBS_PATH: &str = "/api/v1/ai/jobs";

/// An org's recent requests.
pub const REQUESTS_PATH: &str = "/api/v1/ai/requests";

/// The usage dashboard page.
pub const DASHBOARD_PATH: &str = "/";

/// The OpenAPI document of every route.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The streaming route, served apart because its body is a stream.
pub const STREAM_PATH: &str = "/api/v1/ai/chat/stream";

/// The routes, as API Gateway maps them to functions.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/orgs"),
    ("GET", "/api/v1/orgs"),
    ("POST", "/api/v1/ai/chat"),
    ("POST", STREAM_PATH),
    ("GET", "/api/v1/ai/models"),
    ("GET", "/api/v1/ai/usage"),
    ("GET", REQUESTS_PATH),
    ("GET", DASHBOARD_PATH),
    ("GET", OPENAPI_PATH),
    ("POST", JOBS_PATH),
    ("GET", JOBS_PATH),
    ("POST", openai::COMPLETIONS_PATH),
    ("GET", openai::MODELS_PATH),
];

/// Every route's path, ids as `{id}`: what request lines and metrics name routes by.
pub const ROUTE_TEMPLATES: &[&str] = &[
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/orgs",
    "/api/v1/orgs/{id}/api-keys",
    "/api/v1/orgs/{id}/api-keys/{id}",
    "/api/v1/ai/chat",
    STREAM_PATH,
    "/api/v1/ai/models",
    "/api/v1/ai/usage",
    REQUESTS_PATH,
    JOBS_PATH,
    "/api/v1/ai/jobs/{id}",
    openai::COMPLETIONS_PATH,
    openai::MODELS_PATH,
    "/v1/models/{id}",
    DASHBOARD_PATH,
    OPENAPI_PATH,
    "/admin/orgs/{id}/plan",
    "/health",
];

/// Routes a request to its handler, as API Gateway does in AWS: for the local server and tests.
pub async fn dispatch(state: &AppState, request: Request) -> HttpResponse {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let method = request.method().clone();
    let result = match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/auth/register") => register(state, request).await,
        ("POST", "/api/v1/auth/login") => login(state, request).await,
        ("POST", "/api/v1/orgs") => create_org(state, request).await,
        ("GET", "/api/v1/orgs") => list_orgs(state, request).await,
        ("POST", "/api/v1/ai/chat") => chat(state, request).await,
        ("GET", "/api/v1/ai/models") => models(state, request).await,
        ("GET", "/api/v1/ai/usage") => usage(state, request).await,
        ("GET", REQUESTS_PATH) => requests(state, request).await,
        ("GET", "") => Ok(dashboard(request)),
        ("GET", OPENAPI_PATH) => Ok(openapi(request)),
        ("POST", JOBS_PATH) => submit_job(state, request).await,
        ("GET", JOBS_PATH) => list_jobs(state, request).await,
        ("GET", p) if p.starts_with("/api/v1/ai/jobs/") => get_job(state, request).await,
        ("GET", openai::MODELS_PATH) => openai::models(state, request).await,
        ("GET", p)
            if p.strip_prefix("/v1/models/")
                .is_some_and(|id| !id.contains('/')) =>
        {
            openai::models(state, request).await
        }
        (m, _) if keys::keys_path(&request).is_some() => match (m, keys::keys_path(&request)) {
            ("POST", Some((_, None))) => keys::create_key(state, request).await,
            ("GET", Some((_, None))) => keys::list_keys(state, request).await,
            ("DELETE", Some((_, Some(_)))) => keys::revoke_key(state, request).await,
            _ => Ok(respond::error(
                RequestError::MethodNotAllowed {
                    method: method.to_string(),
                    path,
                }
                .into(),
            )),
        },
        _ => {
            let known_path = ROUTES.iter().any(|(_, p)| p.trim_end_matches('/') == path);
            let error = if known_path && method != Method::OPTIONS {
                RequestError::MethodNotAllowed {
                    method: method.to_string(),
                    path,
                }
            } else {
                RequestError::RouteNotFound {
                    method: method.to_string(),
                    path,
                }
            };
            Ok(respond::error(error.into()))
        }
    };
    result
        .unwrap_or_else(|e| respond::error(GatewayError::Internal(format!("handler failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalise_email(" Ada@Example.COM ").ok().as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "ada@example",
            "@example.com",
            "ada@exa mple.com",
            "ada\u{0}@example.com",
            "ada@example.com\u{7}",
            "ada\u{1b}[31m@example.com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalise_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
