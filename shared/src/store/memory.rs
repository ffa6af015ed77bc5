//! The embedded store: DynamoDB's semantics (atomic conditional writes) in process memory, for the
//! local server and tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Membership, OrgAccess, OrgRecord, OrgStore, Role, StoreError, UserRecord, UserStore};
use crate::ids::{OrgId, PlanId, UserId};

#[derive(Default)]
struct Inner {
    users_by_email: HashMap<String, UserRecord>,
    orgs: HashMap<OrgId, OrgRecord>,
    slugs: HashMap<String, OrgId>,
    /// user → (joined_at, org) → role; ordered so listings are oldest first.
    memberships: HashMap<UserId, BTreeMap<(String, OrgId), Role>>,
}

/// One lock over everything: each operation is one critical section, like one DynamoDB
/// conditional write or transaction.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write (each operation checks
        // before it mutates), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.users_by_email.contains_key(&user.email) {
            return Err(StoreError::Conflict("user"));
        }
        inner
            .users_by_email
            .insert(user.email.clone(), user.clone());
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.lock().users_by_email.get(email).cloned())
    }
}

#[async_trait]
impl OrgStore for MemoryStore {
    async fn create_org(&self, org: &OrgRecord, joined_at: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.slugs.contains_key(&org.slug) || inner.orgs.contains_key(&org.id) {
            return Err(StoreError::Conflict("slug"));
        }
        inner.slugs.insert(org.slug.clone(), org.id.clone());
        inner.orgs.insert(org.id.clone(), org.clone());
        inner
            .memberships
            .entry(org.owner_id.clone())
            .or_default()
            .insert((joined_at.to_owned(), org.id.clone()), Role::Owner);
        Ok(())
    }

    async fn orgs_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let inner = self.lock();
        let Some(memberships) = inner.memberships.get(user) else {
            return Ok(Vec::new());
        };
        Ok(memberships
            .iter()
            .filter_map(|((_, org_id), role)| {
                inner.orgs.get(org_id).map(|org| Membership {
                    org: org.clone(),
                    role: *role,
                })
            })
            .collect())
    }

    async fn org_access(&self, org: &OrgId, user: &UserId) -> Result<OrgAccess, StoreError> {
        let inner = self.lock();
        let Some(record) = inner.orgs.get(org) else {
            return Ok(OrgAccess::NoSuchOrg);
        };
        let role = inner.memberships.get(user).and_then(|m| {
            m.iter()
                .find(|((_, id), _)| id == org)
                .map(|(_, role)| *role)
        });
        Ok(match role {
            Some(role) => OrgAccess::Member(Membership {
                org: record.clone(),
                role,
            }),
            None => OrgAccess::NotMember,
        })
    }

    async fn set_plan(&self, org: &OrgId, plan: &PlanId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let record = inner
            .orgs
            .get_mut(org)
            .ok_or(StoreError::NotFound("organization"))?;
        record.plan = plan.clone();
        Ok(())
    }
}
