//! The model catalog and the plans: data, with SPEC's defaults built in and an operator's TOML file
//! layered on top (see [`crate::config`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ModelId, PlanId};
use crate::money::NanoUsd;

/// The upstream providers the gateway speaks to: a closed set, one adapter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Google,
    Anthropic,
    #[serde(rename = "openai")]
    OpenAi,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Google,
        ProviderKind::Anthropic,
        ProviderKind::OpenAi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Google => "google",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
        }
    }

    /// The name the provider's API key goes by: an environment variable, and a field of the
    /// provider-keys secret.
    pub fn key_name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "OPENAI_API_KEY",
            ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
            ProviderKind::Google => "GEMINI_API_KEY",
        }
    }

    /// The most input tokens one image can count for on the provider's models, as the token
    /// hold counts each image: OpenAI's gpt-4o-mini bills a high-detail 2048×768 image as
    /// 2,833 + 8 × 5,667 tokens; Anthropic scales images to at most ~1.15 megapixels, about
    /// 1,600 tokens; Gemini bills 258 tokens per 768-pixel tile, 16 tiles for a 3072×3072 image
    /// (Gemini 3 at most 1,120 per image).
    pub fn image_tokens(self) -> u64 {
        match self {
            ProviderKind::OpenAi => 48_169,
            ProviderKind::Anthropic => 1_600,
            ProviderKind::Google => 4_128,
        }
    }

    /// Whether the provider fetches an image given by `http(s)` address itself (Gemini takes
    /// images only inline).
    pub fn fetches_image_urls(self) -> bool {
        !matches!(self, ProviderKind::Google)
    }

    /// Whether the provider reads inline images of this type (Gemini reads no GIFs).
    pub fn reads_image_type(self, media_type: &str) -> bool {
        !(self == ProviderKind::Google && media_type == "image/gif")
    }

    /// Whether the provider can offer tools and answer in JSON in one request: OpenAI only;
    /// Anthropic's JSON answers are a forced tool call, and Gemini refuses function calling with
    /// a JSON response type.
    pub fn tools_with_json(self) -> bool {
        matches!(self, ProviderKind::OpenAi)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model a client may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: ModelId,
    pub name: String,
    pub provider: ProviderKind,
    /// The id sent upstream; lets an operator point a public id at a newer model.
    pub upstream: String,
    /// The most output tokens one request may ask for.
    pub max_tokens: u32,
    pub input_price: NanoUsd,
    pub output_price: NanoUsd,
    /// The models tried, in order, when this one's provider keeps failing.
    pub fallbacks: Vec<ModelId>,
}

impl Model {
    /// The cost of a request that used these tokens.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> NanoUsd {
        self.input_price.times(input_tokens) + self.output_price.times(output_tokens)
    }
}

/// A monthly or per-minute allowance; `None` means unlimited.
pub type Limit = Option<u64>;

/// What an organisation on a plan may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub requests_per_minute: u64,
    pub messages_per_month: Limit,
    pub tokens_per_month: Limit,
    pub max_tokens_per_request: u32,
    pub models: ModelSet,
    /// Requests of one org running at once (each holds tokens in the month's item, which must
    /// stay far from DynamoDB's 400 KB item limit).
    pub max_in_flight: u64,
    /// Job items one org may have queued (not yet finished) at once.
    pub max_queued_items: u64,
}

/// The requests in flight a plan allows when the operator's file does not say.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 100;
/// The job items a plan lets an org have queued when the operator's file does not say.
pub const DEFAULT_MAX_QUEUED_ITEMS: u64 = 1_000;

impl Plan {
    pub fn allows(&self, model: &ModelId) -> bool {
        match &self.models {
            ModelSet::All => true,
            ModelSet::Only(ids) => ids.contains(model),
        }
    }
}

/// The models a plan allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSet {
    All,
    Only(Vec<ModelId>),
}

/// Every model and plan the gateway knows, after the operator's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub models: BTreeMap<ModelId, Model>,
    pub plans: BTreeMap<PlanId, Plan>,
    /// The model used when a request names none.
    pub default_model: ModelId,
    /// The plan a new organisation starts on.
    pub default_plan: PlanId,
    /// How failed provider calls are retried.
    pub retries: RetryPolicy,
}

/// How a provider call that failed transiently is tried again: up to `max_attempts` times per
/// model, waiting a random time up to `base_delay × 2^attempt` (at most `max_delay`) in between
/// ("full jitter"), or the provider's `Retry-After` when it gives one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: std::time::Duration,
    pub max_delay: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(200),
            max_delay: std::time::Duration::from_secs(2),
        }
    }
}

impl Catalog {
    pub fn model(&self, id: &ModelId) -> Option<&Model> {
        self.models.get(id)
    }

    pub fn plan(&self, id: &PlanId) -> Option<&Plan> {
        self.plans.get(id)
    }

    /// The public model ids, sorted, for error messages.
    pub fn model_ids(&self) -> Vec<&str> {
        self.models.keys().map(ModelId::as_str).collect()
    }

    /// The models `plan` allows, in catalog order.
    pub fn models_in(&self, plan: &Plan) -> Vec<&Model> {
        self.models
            .values()
            .filter(|m| plan.allows(&m.id))
            .collect()
    }

    /// SPEC's default catalog and plans.
    pub fn builtin() -> Catalog {
        Catalog {
            models: builtin_models(),
            plans: builtin_plans(),
            default_model: ModelId::from("gemini-1.5-flash"),
            default_plan: PlanId::from("free"),
            retries: RetryPolicy::default(),
        }
    }
}

/// SPEC §2's models.
fn builtin_models() -> BTreeMap<ModelId, Model> {
    let model = |id: &str, name: &str, provider, upstream: &str, max_tokens, input, output| {
        let price = |nanos| NanoUsd(nanos);
        (
            ModelId::from(id),
            Model {
                id: ModelId::from(id),
                name: name.to_owned(),
                provider,
                upstream: upstream.to_owned(),
                max_tokens,
                input_price: price(input),
                output_price: price(output),
                fallbacks: Vec::new(),
            },
        )
    };
    BTreeMap::from([
        model(
            "gemini-1.5-flash",
            "Gemini 1.5 Flash",
            ProviderKind::Google,
            "gemini-1.5-flash",
            8_192,
            350,
            1_050,
        ),
        model(
            "gemini-1.5-pro",
            "Gemini 1.5 Pro",
            ProviderKind::Google,
            "gemini-1.5-pro",
            8_192,
            1_250,
            3_750,
        ),
        model(
            "claude-3-haiku",
            "Claude 3 Haiku",
            ProviderKind::Anthropic,
            "claude-3-haiku-20240307",
            4_096,
            250,
            1_250,
        ),
        model(
            "gpt-4o-mini",
            "GPT-4o Mini",
            ProviderKind::OpenAi,
            "gpt-4o-mini",
            16_384,
            150,
            600,
        ),
    ])
}

/// SPEC §3's plans.
fn builtin_plans() -> BTreeMap<PlanId, Plan> {
    let plan = |id: &str, rpm: u64, messages, tokens, max_tokens, models| {
        // Room for every request of a minute to run for a few minutes.
        let in_flight = (rpm * 2).max(10);
        (
            PlanId::from(id),
            Plan {
                id: PlanId::from(id),
                requests_per_minute: rpm,
                messages_per_month: messages,
                tokens_per_month: tokens,
                max_tokens_per_request: max_tokens,
                models,
                max_in_flight: in_flight,
                // About twenty minutes of the plan's rate.
                max_queued_items: rpm * 20,
            },
        )
    };
    BTreeMap::from([
        plan(
            "free",
            5,
            Some(50),
            Some(50_000),
            1_024,
            ModelSet::Only(vec![
                ModelId::from("gemini-1.5-flash"),
                ModelId::from("gpt-4o-mini"),
            ]),
        ),
        plan(
            "pro",
            60,
            Some(10_000),
            Some(10_000_000),
            4_096,
            ModelSet::All,
        ),
        plan("team", 300, None, None, 8_192, ModelSet::All),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_matches_the_spec() {
        let catalog = Catalog::builtin();
        let haiku = catalog
            .model(&ModelId::from("claude-3-haiku"))
            .expect("haiku");
        assert_eq!(haiku.upstream, "claude-3-haiku-20240307");
        assert_eq!(haiku.provider, ProviderKind::Anthropic);
        let free = catalog.plan(&PlanId::from("free")).expect("free");
        assert!(free.allows(&ModelId::from("gpt-4o-mini")));
        assert!(!free.allows(&ModelId::from("gemini-1.5-pro")));
        let team = catalog.plan(&PlanId::from("team")).expect("team");
        assert_eq!(team.messages_per_month, None);
        assert_eq!(catalog.models_in(team).len(), 4);
    }

    #[test]
    fn seed_cost_example() {
        let catalog = Catalog::builtin();
        let flash = catalog
            .model(&ModelId::from("gemini-1.5-flash"))
            .expect("flash");
        assert_eq!(flash.cost(100, 200), NanoUsd(245_000));
    }
}
