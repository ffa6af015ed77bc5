//! The embedded store: DynamoDB's semantics (atomic conditional writes) in process memory, for the
//! local server and tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Admission, AdmitOutcome, ApiKeyRecord, DailyUsage, ItemStatus, JobItem, JobItemFinish, JobPage,
    JobRecord, JobStore, KeyStore, Membership, MeterStore, MonthCounter, OrgAccess, OrgRecord,
    OrgStore, Party, RequestPage, RequestRecord, Role, Settlement, Slot, StoreError, Throttle,
    UserRecord, UserStore,
};
use crate::ids::{JobId, KeyId, OrgId, PlanId, UserId};

#[derive(Default)]
struct Inner {
    users_by_email: HashMap<String, UserRecord>,
    orgs: HashMap<OrgId, OrgRecord>,
    slugs: HashMap<String, OrgId>,
    /// user → (joined_at, org) → role; ordered so listings are oldest first.
    memberships: HashMap<UserId, BTreeMap<(String, OrgId), Role>>,
    rate_windows: HashMap<(OrgId, i64), u64>,
    months: HashMap<(OrgId, String), MonthCounter>,
    /// (org, month) → request id → record; request ids are time-ordered.
    requests: HashMap<(OrgId, String), BTreeMap<String, RequestRecord>>,
    daily: HashMap<(OrgId, String), BTreeMap<(String, String), DailyUsage>>,
    jobs: BTreeMap<JobId, (JobRecord, BTreeMap<String, JobItem>)>,
    /// API keys by hash.
    keys: HashMap<String, ApiKeyRecord>,
    /// Job items queued (not yet finished), by org.
    queued: HashMap<OrgId, u64>,
    /// Slots given back, so each is given back once.
    released_slots: HashSet<(OrgId, i64, String)>,
    /// Throttle counters by (kind, subject, window).
    throttles: HashMap<(&'static str, String, i64), u64>,
}

impl Inner {
    /// Whether the party may act in the org: a member, or one of its keys.
    fn acts_for(&self, party: &Party, org: &OrgId) -> bool {
        match party {
            Party::User(user) => self
                .memberships
                .get(user)
                .is_some_and(|m| m.iter().any(|((_, id), _)| id == org)),
            Party::Key(key) => self.keys.get(&key.hash).is_some_and(|k| &k.org == org),
        }
    }

    /// Finishes an item the attempt holds, counting it on the job; false if the attempt no longer
    /// holds it (nothing changed).
    fn finish(&mut self, finish: &JobItemFinish) -> Result<bool, StoreError> {
        let Some((record, items)) = self.jobs.get_mut(&finish.job) else {
            return Err(StoreError::NotFound("job"));
        };
        let Some(entry) = items.get_mut(&finish.item) else {
            return Err(StoreError::NotFound("job item"));
        };
        let held = entry
            .claim
            .as_ref()
            .is_some_and(|(a, _)| a == &finish.attempt);
        if entry.status.is_final() || !held {
            return Ok(false);
        }
        entry.status = finish.status;
        entry.result.clone_from(&finish.result);
        entry.error.clone_from(&finish.error);
        entry.claim = None;
        match finish.status {
            ItemStatus::Succeeded => record.succeeded = record.succeeded.saturating_add(1),
            _ => record.failed = record.failed.saturating_add(1),
        }
        if let Some(queued) = self.queued.get_mut(&finish.org) {
            *queued = queued.saturating_sub(1);
        }
        Ok(true)
    }
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

    async fn key_access(&self, org: &OrgId, hash: &str) -> Result<OrgAccess, StoreError> {
        let inner = self.lock();
        let Some(record) = inner.orgs.get(org) else {
            return Ok(OrgAccess::NoSuchOrg);
        };
        let party_of_org = inner.keys.get(hash).is_some_and(|k| &k.org == org);
        Ok(if party_of_org {
            OrgAccess::Member(Membership {
                org: record.clone(),
                role: Role::Member,
            })
        } else {
            OrgAccess::NotMember
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

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.keys.contains_key(&key.hash) {
            return Err(StoreError::Conflict("key"));
        }
        inner.keys.insert(key.hash.clone(), key.clone());
        Ok(())
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.lock().keys.get(hash).cloned())
    }

    async fn keys_of(&self, org: &OrgId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys: Vec<ApiKeyRecord> = self
            .lock()
            .keys
            .values()
            .filter(|k| &k.org == org)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, org: &OrgId, id: &KeyId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let before = inner.keys.len();
        inner.keys.retain(|_, k| !(&k.org == org && &k.id == id));
        Ok(inner.keys.len() < before)
    }

    async fn touch_key(&self, hash: &str, at: &str) -> Result<(), StoreError> {
        if let Some(key) = self.lock().keys.get_mut(hash) {
            key.last_used_at = Some(at.to_owned());
        }
        Ok(())
    }
}

#[async_trait]
impl MeterStore for MemoryStore {
    async fn throttle(&self, t: &Throttle) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let count = inner
            .throttles
            .entry((t.kind, t.subject.clone(), t.window))
            .or_insert(0);
        if *count >= t.limit {
            return Ok(false);
        }
        *count += 1;
        Ok(true)
    }

    async fn take_slot(&self, slot: &Slot) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        let count = inner
            .rate_windows
            .entry((slot.org.clone(), slot.minute))
            .or_insert(0);
        if *count >= slot.limit {
            return Ok(None);
        }
        *count += 1;
        Ok(Some(*count))
    }

    async fn give_slot_back(&self, slot: &Slot) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let released = (slot.org.clone(), slot.minute, slot.id.clone());
        if inner.released_slots.insert(released) {
            if let Some(count) = inner.rate_windows.get_mut(&(slot.org.clone(), slot.minute)) {
                *count = count.saturating_sub(1);
            }
        }
        Ok(())
    }

    async fn recount_in_flight(
        &self,
        _: &OrgId,
        _: &str,
        _: u64,
        _: u64,
    ) -> Result<(), StoreError> {
        // Counted from the holds themselves: never drifts.
        Ok(())
    }

    async fn throttled(&self, t: &Throttle) -> Result<u64, StoreError> {
        let inner = self.lock();
        Ok(inner
            .throttles
            .get(&(t.kind, t.subject.clone(), t.window))
            .copied()
            .unwrap_or(0))
    }

    async fn admit(&self, a: &Admission) -> Result<AdmitOutcome, StoreError> {
        let mut inner = self.lock();
        if let Some(check) = &a.access {
            let on_plan = inner.orgs.get(&a.org).is_some_and(|o| o.plan == check.plan);
            if !(on_plan && inner.acts_for(&check.party, &a.org)) {
                return Ok(AdmitOutcome::AccessChanged);
            }
        }
        let window = (a.org.clone(), a.minute);
        let in_window = inner.rate_windows.get(&window).copied().unwrap_or(0);
        if in_window >= a.requests_per_minute {
            return Ok(AdmitOutcome::RateLimited {
                requests_in_window: in_window,
            });
        }
        let key = (a.org.clone(), a.month.clone());
        let mut counter = inner.months.get(&key).cloned().unwrap_or_default();
        counter.in_flight = u64::try_from(counter.holds.len()).unwrap_or(u64::MAX);
        if counter
            .holds
            .iter()
            .any(|h| h.request_id == a.hold.request_id)
        {
            // Already admitted: the same admission sent again takes nothing more of the month.
            return Ok(AdmitOutcome::Admitted {
                requests_in_window: in_window,
                holds: counter.holds,
                committed: counter.committed,
            });
        }
        let in_flight = u64::try_from(counter.holds.len()).unwrap_or(u64::MAX);
        let messages_full = a.messages_limit.is_some_and(|l| counter.messages >= l)
            || in_flight >= a.in_flight_limit;
        let tokens_full = a
            .tokens_limit
            .is_some_and(|l| counter.committed.saturating_add(a.hold.tokens) > l);
        if messages_full || tokens_full {
            return Ok(AdmitOutcome::MonthlyExceeded(counter));
        }
        inner.rate_windows.insert(window, in_window + 1);
        let counter = inner.months.entry(key).or_default();
        counter.messages = counter.messages.saturating_add(1);
        counter.committed = counter.committed.saturating_add(a.hold.tokens);
        counter.holds.push(a.hold.clone());
        Ok(AdmitOutcome::Admitted {
            requests_in_window: in_window + 1,
            holds: counter.holds.clone(),
            committed: counter.committed,
        })
    }

    async fn settle(&self, s: &Settlement) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let record = &s.record;
        let key = (record.org.clone(), s.month.clone());
        // A settlement is written whole with its record: the record is what says it was settled.
        if inner
            .requests
            .get(&key)
            .is_some_and(|records| records.contains_key(&record.request_id))
        {
            return Ok(());
        }
        if let Some(finish) = &s.job_item {
            // An item that is gone is not held by this attempt either.
            if !inner.finish(finish).unwrap_or(false) {
                return Err(StoreError::Conflict("job item"));
            }
        }
        let counter = inner.months.entry(key.clone()).or_default();
        let before = counter.holds.len();
        counter.holds.retain(|h| h.request_id != record.request_id);
        let committed = if counter.holds.len() < before {
            s.change.committed_releasing_hold
        } else {
            s.change.committed_without_hold
        };
        counter.messages = counter.messages.saturating_add_signed(s.change.messages);
        counter.tokens = counter.tokens.saturating_add(s.change.tokens);
        counter.committed = counter.committed.saturating_add_signed(committed);
        if let Some(change) = &s.daily {
            let day = inner
                .daily
                .entry(key.clone())
                .or_default()
                .entry((change.date.clone(), change.model.clone()))
                .or_insert_with(|| DailyUsage {
                    date: change.date.clone(),
                    model: change.model.clone(),
                    ..DailyUsage::default()
                });
            day.message_count = day.message_count.saturating_add(change.messages);
            day.input_tokens = day.input_tokens.saturating_add(change.input_tokens);
            day.output_tokens = day.output_tokens.saturating_add(change.output_tokens);
            day.total_tokens = day.total_tokens.saturating_add(change.total_tokens);
            day.estimated_cost = day.estimated_cost.saturating_add(change.cost);
        }
        inner
            .requests
            .entry(key)
            .or_default()
            .insert(record.request_id.clone(), record.clone());
        Ok(())
    }

    async fn month_counter(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError> {
        Ok(self
            .lock()
            .months
            .get(&(org.clone(), month.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn daily_usage(&self, org: &OrgId, month: &str) -> Result<Vec<DailyUsage>, StoreError> {
        Ok(self
            .lock()
            .daily
            .get(&(org.clone(), month.to_owned()))
            .map(|days| days.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn recent_requests(
        &self,
        org: &OrgId,
        month: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<RequestPage, StoreError> {
        let inner = self.lock();
        let Some(records) = inner.requests.get(&(org.clone(), month.to_owned())) else {
            return Ok(RequestPage::default());
        };
        let requests: Vec<RequestRecord> = records
            .values()
            .rev()
            .filter(|record| after.is_none_or(|a| record.request_id.as_str() < a))
            .take(limit)
            .cloned()
            .collect();
        let next = (requests.len() == limit)
            .then(|| requests.last().map(|r| r.request_id.clone()))
            .flatten();
        Ok(RequestPage { requests, next })
    }

    #[cfg(any(test, feature = "test-support"))]
    async fn requests(&self, org: &OrgId, month: &str) -> Result<Vec<RequestRecord>, StoreError> {
        Ok(self
            .lock()
            .requests
            .get(&(org.clone(), month.to_owned()))
            .map(|records| records.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn create_job(
        &self,
        job: &JobRecord,
        items: &[JobItem],
        max_queued: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.jobs.contains_key(&job.id) {
            return Err(StoreError::Conflict("job"));
        }
        let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
        let queued = inner.queued.entry(job.org.clone()).or_insert(0);
        if queued.saturating_add(count) > max_queued {
            return Ok(false);
        }
        *queued = queued.saturating_add(count);
        let items = items.iter().map(|i| (i.id.clone(), i.clone())).collect();
        inner.jobs.insert(job.id.clone(), (job.clone(), items));
        Ok(true)
    }

    async fn job(&self, id: &JobId) -> Result<Option<(JobRecord, Vec<JobItem>)>, StoreError> {
        Ok(self
            .lock()
            .jobs
            .get(id)
            .map(|(job, items)| (job.clone(), items.values().cloned().collect())))
    }

    async fn item(&self, job: &JobId, item: &str) -> Result<Option<JobItem>, StoreError> {
        Ok(self
            .lock()
            .jobs
            .get(job)
            .and_then(|(_, items)| items.get(item).cloned()))
    }

    async fn jobs_of(
        &self,
        org: &OrgId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<JobPage, StoreError> {
        let inner = self.lock();
        let mut jobs: Vec<JobRecord> = inner
            .jobs
            .values()
            .rev()
            .map(|(job, _)| job)
            .filter(|job| &job.org == org)
            .filter(|job| after.is_none_or(|a| job.id.as_str() < a))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = (jobs.len() > limit).then(|| {
            jobs.truncate(limit);
            jobs.last().map(|j| j.id.to_string()).unwrap_or_default()
        });
        Ok(JobPage { jobs, next })
    }

    async fn claim_item(
        &self,
        job: &JobId,
        item: &str,
        attempt: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = inner
            .jobs
            .get_mut(job)
            .and_then(|(_, items)| items.get_mut(item))
        else {
            return Err(StoreError::NotFound("job item"));
        };
        let free =
            !entry.status.is_final() && entry.claim.as_ref().is_none_or(|(_, exp)| *exp < now);
        if free {
            entry.status = ItemStatus::Running;
            entry.claim = Some((attempt.to_owned(), until));
        }
        Ok(free)
    }

    async fn release_item(&self, job: &JobId, item: &str, attempt: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(entry) = inner
            .jobs
            .get_mut(job)
            .and_then(|(_, items)| items.get_mut(item))
        {
            if entry.claim.as_ref().is_some_and(|(a, _)| a == attempt) && !entry.status.is_final() {
                entry.claim = None;
                entry.status = ItemStatus::Queued;
            }
        }
        Ok(())
    }

    async fn finish_item(&self, finish: &JobItemFinish) -> Result<bool, StoreError> {
        self.lock().finish(finish)
    }
}
