//! Persistence: narrow traits over what the domain needs, an in-memory store for local runs and
//! tests, and a DynamoDB store for Lambda. Both pass the same contract tests (`tests/store_contract.rs`).
//! The business layer makes ids and timestamps; a store writes what it is given.

pub mod dynamo;
pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use serde::Serialize;

use crate::ids::{OrgId, PlanId, UserId};

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    /// Normalised (trimmed, lower-case); the login name.
    pub email: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A stored organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgRecord {
    pub id: OrgId,
    pub name: String,
    pub slug: String,
    pub plan: PlanId,
    pub owner_id: UserId,
    pub created_at: String,
}

/// A user's role in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// An organisation as one of its members sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub org: OrgRecord,
    pub role: Role,
}

/// What a user may do in an organisation: answered in one read on the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgAccess {
    NoSuchOrg,
    NotMember,
    Member(Membership),
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness condition failed (email or slug taken).
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The store could not be reached or throttled us past the SDK's retries.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored item could not be understood.
    #[error("corrupt item: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn status(&self) -> StatusCode {
        match self {
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the caller may be told.
    pub fn public_detail(&self) -> &'static str {
        match self {
            StoreError::Conflict(_) => "Already exists",
            StoreError::NotFound(_) => "Not found",
            StoreError::Unavailable(_) => {
                "The gateway's store is temporarily unavailable. Retry shortly."
            }
            StoreError::Corrupt(_) => "Internal server error",
        }
    }
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores a new user; `Conflict("user")` if the email is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
}

#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Stores a new organisation with its owner as first member, atomically; `Conflict("slug")`
    /// if the slug is taken.
    async fn create_org(&self, org: &OrgRecord, joined_at: &str) -> Result<(), StoreError>;
    /// The organisations `user` belongs to, oldest first.
    async fn orgs_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError>;
    /// The organisation and the user's membership in it.
    async fn org_access(&self, org: &OrgId, user: &UserId) -> Result<OrgAccess, StoreError>;
    /// An operator action; `NotFound("organization")` for an unknown org.
    async fn set_plan(&self, org: &OrgId, plan: &PlanId) -> Result<(), StoreError>;
}

/// Everything the gateway stores, as one object behind each narrow trait.
pub trait Store: UserStore + OrgStore {}
impl<T: UserStore + OrgStore> Store for T {}

/// The store handles the application holds: the same object seen through each trait.
#[derive(Clone)]
pub struct Stores {
    pub users: Arc<dyn UserStore>,
    pub orgs: Arc<dyn OrgStore>,
}

impl Stores {
    pub fn from<S: Store + 'static>(store: Arc<S>) -> Stores {
        Stores {
            users: store.clone(),
            orgs: store,
        }
    }
}
