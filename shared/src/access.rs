//! Memberships remembered between requests of one process, so that the chat path can confirm a
//! caller's access while it takes the rate slot instead of reading it first. A remembered
//! membership is a guess, never a grant: admission confirms it in the same step
//! ([`crate::store::Admission::access`]) and takes nothing if the org's plan or the membership
//! changed, and no refusal is ever given on a remembered plan.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{AuthError, GatewayError};
use crate::ids::OrgId;
use crate::store::{ApiKeyRecord, Membership, OrgAccess, OrgStore, Party};

/// The party's access to the org, read from the store (and remembered), or why there is none. A
/// key that is no longer one of the org's keys was revoked: the caller is not authenticated.
pub async fn read(
    orgs: &dyn OrgStore,
    cache: &AccessCache,
    org: OrgId,
    party: &Party,
) -> Result<Membership, GatewayError> {
    let access = match party {
        Party::User(user) => orgs.org_access(&org, user).await?,
        Party::Key(key) => orgs.key_access(&org, &key.hash).await?,
    };
    match (access, party) {
        (OrgAccess::Member(membership), _) => {
            cache.remember(party, &membership);
            Ok(membership)
        }
        (_, Party::Key(key)) => {
            cache.forget_key(&key.hash);
            Err(AuthError::InvalidApiKey.into())
        }
        (OrgAccess::NotMember, _) => Err(AuthError::NotMember(org.to_string()).into()),
        (OrgAccess::NoSuchOrg, _) => Err(AuthError::OrgNotFound(org.to_string()).into()),
    }
}

/// How long a membership is remembered: only to keep the map small, never for correctness.
const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// The most memberships remembered at once.
const CAPACITY: usize = 10_000;

type Entries = HashMap<(OrgId, Party), (Membership, Instant)>;

/// What one process remembers; cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct AccessCache {
    entries: Mutex<Entries>,
    /// API keys by hash, so a key's org is known without a read (admission confirms the key).
    keys: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
    /// When each key's last use was last noted.
    touches: Mutex<crate::api_keys::Touches>,
}

impl AccessCache {
    pub fn new() -> AccessCache {
        AccessCache::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every operation leaves the map whole, so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The membership last read for this party in this org, if read recently.
    pub fn recall(&self, org: &OrgId, party: &Party) -> Option<Membership> {
        let key = (org.clone(), party.clone());
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
    pub fn remember(&self, party: &Party, membership: &Membership) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.retain(|_, (_, at)| at.elapsed() < REMEMBER_FOR);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            (membership.org.id.clone(), party.clone()),
            (membership.clone(), Instant::now()),
        );
    }

    /// Forgets a membership found to be out of date.
    pub fn forget(&self, org: &OrgId, party: &Party) {
        self.lock().remove(&(org.clone(), party.clone()));
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ApiKeyRecord, Instant)>> {
        // Every operation leaves the map whole, so a poisoned lock is still consistent.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key with this hash, if read recently.
    pub fn recall_key(&self, hash: &str) -> Option<ApiKeyRecord> {
        let keys = self.lock_keys();
        keys.get(hash)
            .filter(|(_, at)| at.elapsed() < REMEMBER_FOR)
            .map(|(key, _)| key.clone())
    }

    /// Remembers a key just read from the store.
    pub fn remember_key(&self, key: &ApiKeyRecord) {
        let mut keys = self.lock_keys();
        if keys.len() >= CAPACITY {
            keys.retain(|_, (_, at)| at.elapsed() < REMEMBER_FOR);
            if keys.len() >= CAPACITY {
                keys.clear();
            }
        }
        keys.insert(key.hash.clone(), (key.clone(), Instant::now()));
    }

    /// Whether a key's last use is due to be noted (not noted within `every`); if so, it counts
    /// as noted now.
    pub fn due_for_touch(&self, hash: &str, every: Duration) -> bool {
        let mut touches = self.touches.lock().unwrap_or_else(|p| p.into_inner());
        if touches.len() >= CAPACITY {
            touches.clear();
        }
        let due = touches.get(hash).is_none_or(|at| at.elapsed() >= every);
        if due {
            touches.insert(hash.to_owned(), Instant::now());
        }
        due
    }

    /// Forgets a key found revoked.
    pub fn forget_key(&self, hash: &str) {
        self.lock_keys().remove(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PlanId, UserId};
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
        let (org, user) = (OrgId::from("o1"), Party::User(UserId::from("u1")));
        assert_eq!(cache.recall(&org, &user), None);

        cache.remember(&user, &membership("o1", "free"));
        assert_eq!(cache.recall(&org, &user), Some(membership("o1", "free")));
        assert_eq!(cache.recall(&org, &Party::User(UserId::from("u2"))), None);
        assert_eq!(cache.recall(&OrgId::from("o2"), &user), None);

        cache.remember(&user, &membership("o1", "pro"));
        assert_eq!(cache.recall(&org, &user), Some(membership("o1", "pro")));
        cache.forget(&org, &user);
        assert_eq!(cache.recall(&org, &user), None);
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = AccessCache::new();
        let user = Party::User(UserId::from("u1"));
        for i in 0..CAPACITY + 5 {
            cache.remember(&user, &membership(&format!("o{i}"), "free"));
        }
        assert!(cache.lock().len() <= CAPACITY);
        let last = OrgId::from(format!("o{}", CAPACITY + 4).as_str());
        assert!(cache.recall(&last, &user).is_some(), "the newest is kept");
    }
}
