//! What a function builds once at cold start and every request shares.

use std::sync::Arc;

use crate::access::AccessCache;
use crate::api_keys::KeyHasher;
use crate::auth::TokenIssuer;
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, ProviderSettings, Settings};
use crate::providers::Providers;
use crate::queue::{Queue, SqsQueue};
use crate::secrets;
use crate::store::dynamo::DynamoStore;
use crate::store::Stores;

/// The shared state of one process: cheap to clone (a request holds a clone while it runs), so
/// whatever owns heap data sits behind an `Arc`.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub tokens: Arc<TokenIssuer>,
    pub stores: Stores,
    pub providers: Providers,
    pub clock: Arc<dyn Clock>,
    pub request_retention: std::time::Duration,
    /// Where job items are sent; `None` where jobs are not offered.
    pub queue: Option<Queue>,
    pub jobs_max_receives: u32,
    /// Memberships this process read recently, confirmed again by every admission.
    pub access: Arc<AccessCache>,
    /// Hashes the API keys callers present.
    pub key_hasher: Arc<KeyHasher>,
    /// How long a whole answer (not a stream) may take in all, retries and fallbacks included.
    pub deadline: std::time::Duration,
    /// Password hashes computed at once: each holds ~19 MiB and a core while it runs, so a flood
    /// of logins queues here instead of exhausting memory.
    pub hashing: Arc<tokio::sync::Semaphore>,
}

/// Why a function could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Http(#[from] crate::providers::ClientError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error(transparent)]
    Tls(#[from] crate::providers::tls::TlsError),
}

impl AppState {
    /// What every function needs (settings, catalog, tokens, the store) and no more: no provider
    /// client (see [`AppState::with_providers`]) and no queue (see [`AppState::with_queue`]), so a
    /// function that calls neither neither builds nor links them.
    pub fn base(settings: &Settings, stores: Stores) -> Result<AppState, StartupError> {
        Ok(AppState {
            catalog: Arc::new(settings.catalog.clone()),
            tokens: Arc::new(TokenIssuer::new(&settings.jwt_secret, settings.token_ttl)?),
            stores,
            providers: Providers::absent(),
            clock: Arc::new(SystemClock),
            request_retention: settings.request_retention,
            queue: None,
            jobs_max_receives: settings.jobs_max_receives,
            access: Arc::new(AccessCache::new()),
            key_hasher: Arc::new(KeyHasher::new(&settings.jwt_secret)),
            deadline: settings.providers.deadline,
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            )),
        })
    }

    /// The state of every endpoint at once, providers included: the local server's, the tests'.
    pub fn new(settings: &Settings, stores: Stores) -> Result<AppState, StartupError> {
        AppState::base(settings, stores)?.with_providers(&settings.providers)
    }

    /// The same state calling the providers: the HTTP client and every adapter.
    pub fn with_providers(mut self, settings: &ProviderSettings) -> Result<AppState, StartupError> {
        self.providers = Providers::new(settings)?;
        Ok(self)
    }

    /// The same state sending jobs to `queue`.
    pub fn with_queue(mut self, queue: Queue) -> AppState {
        self.queue = Some(queue);
        self
    }

    /// The same state on another clock: for tests at month and minute boundaries.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> AppState {
        self.clock = clock;
        self
    }

    /// The same state sending jobs to the queue `environment` names, if it names one.
    pub fn with_queue_of(self, environment: &Environment) -> AppState {
        match &environment.settings.jobs_queue_url {
            Some(url) => {
                let client = aws_sdk_sqs::Client::new(&environment.aws);
                self.with_queue(Arc::new(SqsQueue::new(client, url.clone())))
            }
            None => self,
        }
    }
}

/// What a Lambda function starts from: its settings, read from the environment, and the AWS
/// configuration its clients share (read once, however many clients it builds).
pub struct Environment {
    pub settings: Settings,
    aws: aws_types::SdkConfig,
}

impl Environment {
    /// Reads the settings, the AWS configuration and the secrets the environment names in
    /// Secrets Manager (see [`crate::secrets`]).
    pub async fn load() -> Result<Environment, StartupError> {
        let named = secrets::Named::from_env()?;
        let aws = crate::aws::lambda_config()?;
        let fetched = secrets::fetch(&aws, &named).await?;
        let mut settings = Settings::from_env_or(fetched.jwt_secret.clone())?;
        fetched.apply_keys(&mut settings.providers);
        Ok(Environment { settings, aws })
    }

    /// The function's [`AppState::base`] on its DynamoDB table.
    pub fn state(&self) -> Result<AppState, StartupError> {
        let table = self.settings.require_table()?;
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.aws), table);
        AppState::base(&self.settings, Stores::from(Arc::new(store)))
    }
}
