//! Memberships remembered between requests of one process, so that the chat path can confirm a
//! caller's access while it takes the rate slot instead of reading it first. A remembered
//! membership is a guess, never a grant: admission confirms it in the same step
//! ([`crate::store::Admission::access`]) and takes nothing if the org's plan or the membership
//! changed, and no refusal is ever given on a remembered plan.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{AuthError, GatewayError};
use crate::ids::{OrgId, UserId};
use crate::store::{Membership, OrgAccess, OrgStore};

/// The user's membership in the org, read from the store (and remembered), or why there is none.
pub async fn read(
    orgs: &dyn OrgStore,
    cache: &AccessCache,
    org: OrgId,
    user: &UserId,
) -> Result<Membership, GatewayError> {
    match orgs.org_access(&org, user).await? {
        OrgAccess::Member(membership) => {
            cache.remember(user, &membership);
            Ok(membership)
        }
        OrgAccess::NotMember => Err(AuthError::NotMember(org.to_string()).into()),
        OrgAccess::NoSuchOrg => Err(AuthError::OrgNotFound(org.to_string()).into()),
    }
}

/// How long a membership is remembered: only to keep the map small, never for correctness.
const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// The most memberships remembered at once.
const CAPACITY: usize = 10_000;

/// What one process remembers; cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct AccessCache {
    entries: Mutex<HashMap<(OrgId, UserId), (Membership, Instant)>>,
}

impl AccessCache {
    pub fn new() -> AccessCache {
        AccessCache::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(OrgId, UserId), (Membership, Instant)>> {
        // Every operation leaves the map whole, so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The membership last read for this user in this org, if read recently.
    pub fn recall(&self, org: &OrgId, user: &UserId) -> Option<Membership> {
        let key = (org.clone(), user.clone());
        let mut entries = self.lock();
        match entries.get(&key) {
            Some((membership, at)) if at.elapsed() < REMEMBER_FOR => Some(membership.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a membership just read from the store.
    pub fn remember(&self, user: &UserId, membership: &Membership) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.retain(|_, (_, at)| at.elapsed() < REMEMBER_FOR);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            (membership.org.id.clone(), user.clone()),
            (membership.clone(), Instant::now()),
        );
    }

    /// Forgets a membership found to be out of date.
    pub fn forget(&self, org: &OrgId, user: &UserId) {
        self.lock().remove(&(org.clone(), user.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PlanId;
    use crate::store::{OrgRecord, Role};

    fn membership(org: &str, plan: &str) -> Membership {
        Membership {
            org: OrgRecord {
                id: OrgId::from(org),
                name: "Acme".into(),
                slug: "acme".into(),
                plan: PlanId::from(plan),
                owner_id: UserId::from("u1"),
                created_at: "2026-11-01T00:00:00Z".into(),
            },
            role: Role::Owner,
        }
    }

    #[test]
    fn remembers_per_org_and_user_until_forgotten() {
        let cache = AccessCache::new();
        let (org, user) = (OrgId::from("o1"), UserId::from("u1"));
        assert_eq!(cache.recall(&org, &user), None);

        cache.remember(&user, &membership("o1", "free"));
        assert_eq!(cache.recall(&org, &user), Some(membership("o1", "free")));
        assert_eq!(cache.recall(&org, &UserId::from("u2")), None);
        assert_eq!(cache.recall(&OrgId::from("o2"), &user), None);

        cache.remember(&user, &membership("o1", "pro"));
        assert_eq!(cache.recall(&org, &user), Some(membership("o1", "pro")));
        cache.forget(&org, &user);
        assert_eq!(cache.recall(&org, &user), None);
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = AccessCache::new();
        let user = UserId::from("u1");
        for i in 0..CAPACITY + 5 {
            cache.remember(&user, &membership(&format!("o{i}"), "free"));
        }
        assert!(cache.lock().len() <= CAPACITY);
        let last = OrgId::from(format!("o{}", CAPACITY + 4).as_str());
        assert!(cache.recall(&last, &user).is_some(), "the newest is kept");
    }
}
