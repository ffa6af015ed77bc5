//! Start-up configuration: the environment (the only place that reads it) and the operator's TOML
//! file that overrides the built-in catalog and plans field by field.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{
    Catalog, Limit, Model, ModelSet, Plan, ProviderKind, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED_ITEMS,
};
use crate::ids::{ModelId, PlanId};
use crate::money::NanoUsd;
use crate::secret::Secret;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {reason}")]
    File { path: String, reason: String },
}

/// Everything read from the environment at cold start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub jwt_secret: Secret,
    pub token_ttl: Duration,
    pub table_name: Option<String>,
    /// How long `ai_requests` records are kept (DynamoDB TTL).
    pub request_retention: Duration,
    /// The SQS queue jobs are sent to (`JOBS_QUEUE_URL`).
    pub jobs_queue_url: Option<String>,
    /// Deliveries of a job message before it goes to the DLQ; must match the queue's
    /// `maxReceiveCount` (`JOBS_MAX_RECEIVES`).
    pub jobs_max_receives: u32,
    pub providers: ProviderSettings,
    pub catalog: Catalog,
}

/// Where each provider lives and how long to wait for it.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub openai: Endpoint,
    pub anthropic: Endpoint,
    pub google: Endpoint,
    pub connect_timeout: Duration,
    /// How long one attempt waits for the provider's response headers.
    pub request_timeout: Duration,
    /// How long a provider's answer may stay silent: between stream events, or before the body.
    pub idle_timeout: Duration,
    /// How long a `/chat` request (or a job item) may take in all, retries and fallbacks
    /// included: under API Gateway's 29 s.
    pub deadline: Duration,
}

impl ProviderSettings {
    pub fn endpoint(&self, kind: ProviderKind) -> &Endpoint {
        match kind {
            ProviderKind::OpenAi => &self.openai,
            ProviderKind::Anthropic => &self.anthropic,
            ProviderKind::Google => &self.google,
        }
    }

    pub fn endpoint_mut(&mut self, kind: ProviderKind) -> &mut Endpoint {
        match kind {
            ProviderKind::OpenAi => &mut self.openai,
            ProviderKind::Anthropic => &mut self.anthropic,
            ProviderKind::Google => &mut self.google,
        }
    }
}

/// One provider's base URL (without the API path) and key.
#[derive(Clone)]
pub struct Endpoint {
    /// Parsed once, where it is read (see [`crate::providers::base_url`]); a call joins its API
    /// path onto it.
    pub base_url: reqwest::Url,
    pub api_key: Option<Secret>,
}

/// Written by hand so that credentials in a proxy's URL stay out of any debug output (the key is
/// a [`Secret`] already).
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field(
                "base_url",
                &crate::providers::without_credentials(&self.base_url),
            )
            .field("api_key", &self.api_key)
            .finish()
    }
}

pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com";
pub const ANTHROPIC_DEFAULT_BASE: &str = "https://api.anthropic.com";
pub const GOOGLE_DEFAULT_BASE: &str = "https://generativelanguage.googleapis.com";

/// Reads a variable, treating an empty value as unset (SAM passes empty parameters as "").
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_secs(name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    match env(name) {
        None => Ok(Duration::from_secs(default)),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or(ConfigError::Invalid {
                name,
                reason: format!("expected a positive number of seconds, got {raw:?}"),
            }),
    }
}

impl Settings {
    /// Reads the environment. `JWT_SECRET` is required here; the local server supplies a random one
    /// when it is unset (see `local-server`).
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_env_or(None)
    }

    /// As [`Settings::from_env`], with a signing secret to use when `JWT_SECRET` is unset.
    pub fn from_env_or(jwt_fallback: Option<Secret>) -> Result<Settings, ConfigError> {
        let jwt_secret = env("JWT_SECRET")
            .or_else(|| jwt_fallback.map(|s| s.expose().to_owned()))
            .ok_or(ConfigError::Missing("JWT_SECRET"))?;
        if jwt_secret.len() < 32 {
            return Err(ConfigError::Invalid {
                name: "JWT_SECRET",
                reason: "must be at least 32 bytes".into(),
            });
        }
        let catalog = match env("GATEWAY_CONFIG") {
            Some(path) => load_catalog(Path::new(&path))?,
            None => Catalog::builtin(),
        };
        // A base URL that cannot be called stops the function here, naming the variable, rather
        // than failing every request to that provider. The value is not repeated: a proxy's URL
        // may carry credentials.
        let endpoint = |base: &'static str, default: &str, kind: ProviderKind| {
            let text = env(base).unwrap_or_else(|| default.to_owned());
            let base_url =
                crate::providers::base_url(&text).ok_or_else(|| ConfigError::Invalid {
                    name: base,
                    reason: "expected an http or https URL without a query or fragment".into(),
                })?;
            Ok(Endpoint {
                base_url,
                api_key: env(kind.key_name()).map(Secret::new),
            })
        };
        Ok(Settings {
            jwt_secret: Secret::new(jwt_secret),
            token_ttl: env_secs("JWT_TTL_SECONDS", 24 * 3600)?,
            table_name: env("GATEWAY_TABLE"),
            request_retention: env_secs("REQUEST_RETENTION_DAYS", 90)?
                .checked_mul(86_400)
                .unwrap_or(Duration::MAX),
            jobs_queue_url: env("JOBS_QUEUE_URL"),
            jobs_max_receives: match env("JOBS_MAX_RECEIVES") {
                None => 5,
                Some(raw) => {
                    raw.trim()
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(ConfigError::Invalid {
                            name: "JOBS_MAX_RECEIVES",
                            reason: format!("expected a positive count, got {raw:?}"),
                        })?
                }
            },
            providers: ProviderSettings {
                openai: endpoint("OPENAI_BASE_URL", OPENAI_DEFAULT_BASE, ProviderKind::OpenAi)?,
                anthropic: endpoint(
                    "ANTHROPIC_BASE_URL",
                    ANTHROPIC_DEFAULT_BASE,
                    ProviderKind::Anthropic,
                )?,
                google: endpoint("GEMINI_BASE_URL", GOOGLE_DEFAULT_BASE, ProviderKind::Google)?,
                connect_timeout: env_secs("PROVIDER_CONNECT_TIMEOUT_SECONDS", 5)?,
                request_timeout: env_secs("PROVIDER_TIMEOUT_SECONDS", 25)?,
                idle_timeout: env_secs("PROVIDER_IDLE_TIMEOUT_SECONDS", 25)?,
                deadline: env_secs("CHAT_DEADLINE_SECONDS", 25)?,
            },
            catalog,
        })
    }

    /// Settings read from nowhere: the built-in catalog, every provider at `base_url` (keyless
    /// when `key` is `None`, so the local server simulates it), and the defaults elsewhere. For
    /// tests and tools that must not depend on the environment.
    ///
    /// # Panics
    /// When `base_url` is not a provider base URL (see [`crate::providers::base_url`]): it is the
    /// caller's own constant or the address of a server it started.
    pub fn local(jwt_secret: &str, base_url: &str, key: Option<&str>) -> Settings {
        let base_url = crate::providers::base_url(base_url)
            .expect("Settings::local needs an http or https base URL");
        let endpoint = || Endpoint {
            base_url: base_url.clone(),
            api_key: key.map(Secret::new),
        };
        Settings {
            jwt_secret: Secret::new(jwt_secret),
            token_ttl: Duration::from_secs(600),
            table_name: None,
            request_retention: Duration::from_secs(86_400),
            jobs_queue_url: None,
            jobs_max_receives: 3,
            providers: ProviderSettings {
                openai: endpoint(),
                anthropic: endpoint(),
                google: endpoint(),
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(5),
                deadline: Duration::from_secs(20),
            },
            catalog: Catalog::builtin(),
        }
    }

    /// The DynamoDB table, required by the DynamoDB store.
    pub fn require_table(&self) -> Result<&str, ConfigError> {
        self.table_name
            .as_deref()
            .ok_or(ConfigError::Missing("GATEWAY_TABLE"))
    }
}

/// Reads the operator's TOML file and applies it over the built-in catalog.
pub fn load_catalog(path: &Path) -> Result<Catalog, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    apply_overrides(Catalog::builtin(), &text).map_err(|reason| ConfigError::File {
        path: display,
        reason,
    })
}

/// The operator's file. Every field is optional: what is given replaces the built-in value, what is
/// absent keeps it. Unknown fields are errors, so a typo cannot silently do nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    default_model: Option<String>,
    default_plan: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, ModelPatch>,
    #[serde(default)]
    plans: BTreeMap<String, PlanPatch>,
    retries: Option<RetriesPatch>,
}

/// `[retries]`: how failed provider calls are tried again.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetriesPatch {
    max_attempts: Option<u32>,
    base_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelPatch {
    name: Option<String>,
    provider: Option<ProviderKind>,
    upstream: Option<String>,
    max_tokens: Option<u32>,
    input_usd_per_1k: Option<f64>,
    output_usd_per_1k: Option<f64>,
    fallbacks: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanPatch {
    requests_per_minute: Option<u64>,
    messages_per_month: Option<LimitValue>,
    tokens_per_month: Option<LimitValue>,
    max_tokens_per_request: Option<u32>,
    models: Option<ModelsValue>,
    max_in_flight: Option<u64>,
    max_queued_items: Option<u64>,
}

/// A count, or the string `"unlimited"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LimitValue {
    Count(u64),
    Word(String),
}

impl LimitValue {
    fn into_limit(self, field: &str) -> Result<Limit, String> {
        match self {
            LimitValue::Count(n) => Ok(Some(n)),
            LimitValue::Word(w) if w == "unlimited" => Ok(None),
            LimitValue::Word(w) => Err(format!(
                "{field}: expected a number or \"unlimited\", got {w:?}"
            )),
        }
    }
}

/// A list of model ids, or the string `"all"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModelsValue {
    List(Vec<String>),
    Word(String),
}

fn price(field: &str, usd_per_1k: f64) -> Result<NanoUsd, String> {
    NanoUsd::per_token_from_usd_per_1k(usd_per_1k).map_err(|e| format!("{field}: {e}"))
}

const MODEL_FIELDS: [&str; 7] = [
    "name",
    "provider",
    "upstream",
    "max_tokens",
    "input_usd_per_1k",
    "output_usd_per_1k",
    "fallbacks",
];

/// Model ids contain dots (`gemini-1.5-flash`), which TOML reads as nesting unless quoted: an
/// unquoted `[models.gemini-1.5-flash]` arrives as `models."gemini-1"."5-flash"`. Tables that
/// hold no model field are joined back into one dotted id, so both spellings work.
fn rejoin_dotted_ids(models: toml::Table) -> toml::Table {
    fn walk(prefix: String, table: toml::Table, out: &mut toml::Table) {
        let is_model = table.keys().any(|k| MODEL_FIELDS.contains(&k.as_str()))
            || !table.values().all(toml::Value::is_table);
        if is_model || table.is_empty() {
            out.insert(prefix, toml::Value::Table(table));
            return;
        }
        for (key, value) in table {
            if let toml::Value::Table(inner) = value {
                walk(format!("{prefix}.{key}"), inner, out);
            }
        }
    }
    let mut out = toml::Table::new();
    for (id, value) in models {
        match value {
            toml::Value::Table(table) => walk(id, table, &mut out),
            other => {
                out.insert(id, other);
            }
        }
    }
    out
}

/// Applies the TOML `text` over `catalog`, then checks the result is coherent.
pub fn apply_overrides(mut catalog: Catalog, text: &str) -> Result<Catalog, String> {
    let mut raw: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    if let Some(toml::Value::Table(models)) = raw.get_mut("models") {
        *models = rejoin_dotted_ids(std::mem::take(models));
    }
    let file: ConfigFile = raw.try_into().map_err(|e: toml::de::Error| e.to_string())?;

    for (id, patch) in file.models {
        apply_model(&mut catalog, id, patch)?;
    }
    for (id, patch) in file.plans {
        apply_plan(&mut catalog, id, patch)?;
    }
    if let Some(id) = file.default_model {
        catalog.default_model = ModelId::from(id);
    }
    if let Some(id) = file.default_plan {
        catalog.default_plan = PlanId::from(id);
    }
    if let Some(retries) = file.retries {
        let policy = &mut catalog.retries;
        if let Some(n) = retries.max_attempts {
            policy.max_attempts = n;
        }
        if let Some(ms) = retries.base_delay_ms {
            policy.base_delay = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = retries.max_delay_ms {
            policy.max_delay = std::time::Duration::from_millis(ms);
        }
        if policy.max_attempts == 0 || policy.base_delay > policy.max_delay {
            return Err(
                "retries: max_attempts must be positive and base_delay_ms at most max_delay_ms"
                    .into(),
            );
        }
    }
    validate(&catalog)?;
    Ok(catalog)
}

/// Applies one `[models.<id>]` table: patches a known model, or adds a new one whole.
fn apply_model(catalog: &mut Catalog, id: String, patch: ModelPatch) -> Result<(), String> {
    let at = format!("models.{id}");
    let model_id = ModelId::from(id.as_str());
    let model = match catalog.models.remove(&model_id) {
        Some(mut model) => {
            if let Some(v) = patch.name {
                model.name = v;
            }
            if let Some(v) = patch.provider {
                model.provider = v;
            }
            if let Some(v) = patch.upstream {
                model.upstream = v;
            }
            if let Some(v) = patch.max_tokens {
                model.max_tokens = v;
            }
            if let Some(v) = patch.input_usd_per_1k {
                model.input_price = price(&format!("{at}.input_usd_per_1k"), v)?;
            }
            if let Some(v) = patch.output_usd_per_1k {
                model.output_price = price(&format!("{at}.output_usd_per_1k"), v)?;
            }
            if let Some(v) = patch.fallbacks {
                model.fallbacks = v.into_iter().map(ModelId::from).collect();
            }
            model
        }
        None => {
            let missing = |field: &str| format!("{at}: a new model needs `{field}`");
            Model {
                id: model_id.clone(),
                name: patch.name.unwrap_or_else(|| id.clone()),
                provider: patch.provider.ok_or_else(|| missing("provider"))?,
                upstream: patch.upstream.unwrap_or_else(|| id.clone()),
                max_tokens: patch.max_tokens.ok_or_else(|| missing("max_tokens"))?,
                input_price: price(
                    &format!("{at}.input_usd_per_1k"),
                    patch
                        .input_usd_per_1k
                        .ok_or_else(|| missing("input_usd_per_1k"))?,
                )?,
                output_price: price(
                    &format!("{at}.output_usd_per_1k"),
                    patch
                        .output_usd_per_1k
                        .ok_or_else(|| missing("output_usd_per_1k"))?,
                )?,
                fallbacks: patch
                    .fallbacks
                    .unwrap_or_default()
                    .into_iter()
                    .map(ModelId::from)
                    .collect(),
            }
        }
    };
    if model.max_tokens == 0 {
        return Err(format!("{at}.max_tokens must be positive"));
    }
    catalog.models.insert(model_id, model);
    Ok(())
}

/// Applies one `[plans.<id>]` table: patches a known plan, or adds a new one whole.
fn apply_plan(catalog: &mut Catalog, id: String, patch: PlanPatch) -> Result<(), String> {
    let at = format!("plans.{id}");
    let plan_id = PlanId::from(id.as_str());
    let models = patch
        .models
        .map(|m| match m {
            ModelsValue::Word(w) if w == "all" => Ok(ModelSet::All),
            ModelsValue::Word(w) => Err(format!(
                "{at}.models: expected a list of model ids or \"all\", got {w:?}"
            )),
            ModelsValue::List(ids) => {
                Ok(ModelSet::Only(ids.into_iter().map(ModelId::from).collect()))
            }
        })
        .transpose()?;
    let messages = patch
        .messages_per_month
        .map(|v| v.into_limit(&format!("{at}.messages_per_month")))
        .transpose()?;
    let tokens = patch
        .tokens_per_month
        .map(|v| v.into_limit(&format!("{at}.tokens_per_month")))
        .transpose()?;
    let plan = match catalog.plans.remove(&plan_id) {
        Some(mut plan) => {
            if let Some(v) = patch.requests_per_minute {
                plan.requests_per_minute = v;
            }
            if let Some(v) = messages {
                plan.messages_per_month = v;
            }
            if let Some(v) = tokens {
                plan.tokens_per_month = v;
            }
            if let Some(v) = patch.max_tokens_per_request {
                plan.max_tokens_per_request = v;
            }
            if let Some(v) = models {
                plan.models = v;
            }
            if let Some(v) = patch.max_in_flight {
                plan.max_in_flight = v;
            }
            if let Some(v) = patch.max_queued_items {
                plan.max_queued_items = v;
            }
            plan
        }
        None => {
            let missing = |field: &str| format!("{at}: a new plan needs `{field}`");
            Plan {
                id: plan_id.clone(),
                requests_per_minute: patch
                    .requests_per_minute
                    .ok_or_else(|| missing("requests_per_minute"))?,
                messages_per_month: messages.ok_or_else(|| missing("messages_per_month"))?,
                tokens_per_month: tokens.ok_or_else(|| missing("tokens_per_month"))?,
                max_tokens_per_request: patch
                    .max_tokens_per_request
                    .ok_or_else(|| missing("max_tokens_per_request"))?,
                models: models.ok_or_else(|| missing("models"))?,
                max_in_flight: patch.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
                max_queued_items: patch.max_queued_items.unwrap_or(DEFAULT_MAX_QUEUED_ITEMS),
            }
        }
    };
    if plan.requests_per_minute == 0 || plan.max_tokens_per_request == 0 || plan.max_in_flight == 0
    {
        return Err(format!(
            "{at}: requests_per_minute, max_tokens_per_request and max_in_flight must be positive"
        ));
    }
    catalog.plans.insert(plan_id, plan);
    Ok(())
}

fn validate(catalog: &Catalog) -> Result<(), String> {
    if !catalog.models.contains_key(&catalog.default_model) {
        return Err(format!(
            "default_model {} is not in the catalog",
            catalog.default_model
        ));
    }
    if !catalog.plans.contains_key(&catalog.default_plan) {
        return Err(format!(
            "default_plan {} is not a plan",
            catalog.default_plan
        ));
    }
    for model in catalog.models.values() {
        if let Some(unknown) = model
            .fallbacks
            .iter()
            .find(|id| !catalog.models.contains_key(*id) || **id == model.id)
        {
            return Err(format!(
                "models.{}.fallbacks names {unknown}, which is not another model of the catalog",
                model.id
            ));
        }
    }
    for plan in catalog.plans.values() {
        if let ModelSet::Only(ids) = &plan.models {
            if let Some(unknown) = ids.iter().find(|id| !catalog.models.contains_key(*id)) {
                return Err(format!(
                    "plans.{}.models names unknown model {unknown}",
                    plan.id
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Result<Catalog, String> {
        apply_overrides(Catalog::builtin(), text)
    }

    #[test]
    fn an_empty_file_keeps_the_builtin_catalog() {
        assert_eq!(apply(""), Ok(Catalog::builtin()));
    }

    #[test]
    fn retries_and_fallbacks_are_data() {
        let catalog = apply(
            "[retries]\nmax_attempts = 5\nbase_delay_ms = 50\nmax_delay_ms = 400\n\n\
             [models.gpt-4o-mini]\nfallbacks = [\"claude-3-haiku\", \"gemini-1.5-flash\"]\n",
        )
        .expect("valid");
        assert_eq!(catalog.retries.max_attempts, 5);
        assert_eq!(catalog.retries.base_delay, Duration::from_millis(50));
        assert_eq!(catalog.retries.max_delay, Duration::from_millis(400));
        let model = catalog.model(&ModelId::from("gpt-4o-mini")).expect("model");
        assert_eq!(
            model.fallbacks,
            vec![
                ModelId::from("claude-3-haiku"),
                ModelId::from("gemini-1.5-flash")
            ]
        );
        for bad in [
            "[models.gpt-4o-mini]\nfallbacks = [\"gpt-9\"]\n",
            "[models.gpt-4o-mini]\nfallbacks = [\"gpt-4o-mini\"]\n",
            "[retries]\nmax_attempts = 0\n",
            "[retries]\nbase_delay_ms = 5000\n",
            "[retries]\nattempts = 2\n",
        ] {
            assert!(apply(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remaps_a_public_id_to_another_upstream_model() {
        // GIVEN Google retired gemini-1.5-flash upstream
        let catalog =
            apply("[models.gemini-1.5-flash]\nupstream = \"gemini-2.5-flash\"\n").expect("valid");
        // THEN the public id stays, the upstream changes, the rest is kept
        let model = catalog
            .model(&ModelId::from("gemini-1.5-flash"))
            .expect("model");
        assert_eq!(model.upstream, "gemini-2.5-flash");
        assert_eq!(model.input_price, NanoUsd(350));
        assert_eq!(model.max_tokens, 8_192);
        // AND the quoted spelling means the same
        let quoted = apply("[models.\"gemini-1.5-flash\"]\nupstream = \"gemini-2.5-flash\"\n")
            .expect("valid");
        assert_eq!(quoted, catalog);
    }

    #[test]
    fn overrides_plan_fields_and_adds_models_and_plans() {
        let catalog = apply(
            r#"
            [plans.free]
            requests_per_minute = 10
            tokens_per_month = "unlimited"

            [models.gpt-4o]
            name = "GPT-4o"
            provider = "openai"
            max_tokens = 16384
            input_usd_per_1k = 0.0025
            output_usd_per_1k = 0.01

            [plans.enterprise]
            requests_per_minute = 1000
            messages_per_month = "unlimited"
            tokens_per_month = 1000000000
            max_tokens_per_request = 16384
            models = "all"
            "#,
        )
        .expect("valid");
        let free = catalog.plan(&PlanId::from("free")).expect("free");
        assert_eq!(free.requests_per_minute, 10);
        assert_eq!(free.tokens_per_month, None);
        assert_eq!(free.messages_per_month, Some(50));
        let gpt4o = catalog.model(&ModelId::from("gpt-4o")).expect("gpt-4o");
        assert_eq!(gpt4o.upstream, "gpt-4o");
        assert_eq!(gpt4o.output_price, NanoUsd(10_000));
        assert!(catalog.plan(&PlanId::from("enterprise")).is_some());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = apply("[plans.free]\nrequests_per_minit = 10\n").expect_err("typo");
        assert!(err.contains("requests_per_minit"), "{err}");
        let err = apply("colour = \"blue\"\n").expect_err("typo");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn incomplete_new_entries_name_what_is_missing() {
        let err = apply("[models.new-model]\nprovider = \"openai\"\n").expect_err("missing");
        assert!(err.contains("max_tokens"), "{err}");
        let err = apply("[plans.gold]\nrequests_per_minute = 1\n").expect_err("missing");
        assert!(err.contains("messages_per_month"), "{err}");
    }

    #[test]
    fn plans_cannot_name_unknown_models() {
        let err = apply("[plans.free]\nmodels = [\"gpt-5\"]\n").expect_err("unknown");
        assert!(err.contains("gpt-5"), "{err}");
    }
}
