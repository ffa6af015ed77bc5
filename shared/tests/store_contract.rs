//! The store contract: every store implementation must pass these same cases, concurrency included.
//! The in-memory store runs them always; the DynamoDB store runs them against DynamoDB Local.

mod common;

use std::sync::Arc;

use common::{org, user};
use futures::future::join_all;
use gateway::ids::{KeyId, OrgId, PlanId, UserId};
use gateway::store::memory::MemoryStore;
use gateway::store::{ApiKeyRecord, OrgAccess, Role, Store, StoreError};

async fn registers_users_once(store: Arc<dyn Store>) {
    // GIVEN a registered user
    let ada = user("ada@example.com");
    store.create_user(&ada).await.expect("first registration");
    // WHEN the same email registers again
    let again = store.create_user(&user("ada@example.com")).await;
    // THEN it is a conflict and the first record stands
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let found = store
        .user_by_email("ada@example.com")
        .await
        .expect("read")
        .expect("found");
    assert_eq!(found, ada);
    assert_eq!(
        store.user_by_email("bob@example.com").await.expect("read"),
        None
    );
}

async fn concurrent_registrations_admit_exactly_one(store: Arc<dyn Store>) {
    // GIVEN 20 simultaneous registrations of one email
    let attempts = (0..20).map(|_| {
        let store = store.clone();
        async move { store.create_user(&user("race@example.com")).await }
    });
    let results = join_all(attempts).await;
    // THEN exactly one wins and the others conflict
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(results
        .iter()
        .filter(|r| r.is_err())
        .all(|r| matches!(r, Err(StoreError::Conflict(_)))));
}

async fn creates_orgs_with_their_owner(store: Arc<dyn Store>) {
    let owner = UserId::generate();
    let stranger = UserId::generate();
    let acme = org("acme", &owner, "2026-11-01T00:00:00Z");
    store
        .create_org(&acme, "2026-11-01T00:00:00Z")
        .await
        .expect("create");

    let OrgAccess::Member(membership) = store.org_access(&acme.id, &owner).await.expect("read")
    else {
        panic!("the owner must be a member");
    };
    assert_eq!(membership.org, acme);
    assert_eq!(membership.role, Role::Owner);
    assert_eq!(
        store.org_access(&acme.id, &stranger).await.expect("read"),
        OrgAccess::NotMember
    );
    assert_eq!(
        store
            .org_access(&OrgId::generate(), &owner)
            .await
            .expect("read"),
        OrgAccess::NoSuchOrg
    );
}

async fn slugs_are_unique_even_under_races(store: Arc<dyn Store>) {
    let owner = UserId::generate();
    store
        .create_org(
            &org("taken", &owner, "2026-11-01T00:00:00Z"),
            "2026-11-01T00:00:00Z",
        )
        .await
        .expect("create");
    let again = store
        .create_org(
            &org("taken", &owner, "2026-11-02T00:00:00Z"),
            "2026-11-02T00:00:00Z",
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    // GIVEN 10 users racing for one slug
    let racers = (0..10).map(|_| {
        let store = store.clone();
        async move {
            let user = UserId::generate();
            let result = store
                .create_org(
                    &org("contested", &user, "2026-11-03T00:00:00Z"),
                    "2026-11-03T00:00:00Z",
                )
                .await;
            (user, result)
        }
    });
    let results = join_all(racers).await;
    // THEN one gets it, and only the winner has an org
    assert_eq!(results.iter().filter(|(_, r)| r.is_ok()).count(), 1);
    for (user, result) in results {
        let orgs = store.orgs_of(&user).await.expect("list");
        assert_eq!(orgs.len(), usize::from(result.is_ok()));
    }
}

async fn lists_a_users_orgs_oldest_first(store: Arc<dyn Store>) {
    let owner = UserId::generate();
    assert!(store.orgs_of(&owner).await.expect("list").is_empty());
    let first = org("first-org", &owner, "2026-11-01T00:00:00Z");
    let second = org("second-org", &owner, "2026-11-02T00:00:00Z");
    // Created out of order: the listing follows join time, not insertion.
    store
        .create_org(&second, "2026-11-02T00:00:00Z")
        .await
        .expect("create");
    store
        .create_org(&first, "2026-11-01T00:00:00Z")
        .await
        .expect("create");
    let slugs: Vec<String> = store
        .orgs_of(&owner)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.org.slug)
        .collect();
    assert_eq!(slugs, ["first-org", "second-org"]);
}

async fn operators_change_plans(store: Arc<dyn Store>) {
    let owner = UserId::generate();
    let acme = org("plan-change", &owner, "2026-11-01T00:00:00Z");
    store
        .create_org(&acme, "2026-11-01T00:00:00Z")
        .await
        .expect("create");
    store
        .set_plan(&acme.id, &PlanId::from("pro"))
        .await
        .expect("set plan");
    let OrgAccess::Member(membership) = store.org_access(&acme.id, &owner).await.expect("read")
    else {
        panic!("member");
    };
    assert_eq!(membership.org.plan, PlanId::from("pro"));
    let missing = store
        .set_plan(&OrgId::generate(), &PlanId::from("pro"))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

fn api_key(org: &OrgId, name: &str, hash: &str, created_at: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: KeyId::from(format!("key-{name}").as_str()),
        org: org.clone(),
        name: name.to_owned(),
        prefix: "sk-gw-abcdef…".to_owned(),
        hash: hash.to_owned(),
        created_by: UserId::generate(),
        created_at: created_at.to_owned(),
        last_used_at: None,
    }
}

async fn api_keys_are_found_by_hash_listed_and_revoked(store: Arc<dyn Store>) {
    // GIVEN two orgs, and two keys of the first
    let owner = UserId::generate();
    let acme = org("acme", &owner, "2026-11-01T00:00:00Z");
    let other = org("other", &owner, "2026-11-01T00:00:00Z");
    for o in [&acme, &other] {
        store
            .create_org(o, "2026-11-01T00:00:00Z")
            .await
            .expect("org");
    }
    let first = api_key(&acme.id, "first", "hash-1", "2026-11-02T00:00:00Z");
    let second = api_key(&acme.id, "second", "hash-2", "2026-11-03T00:00:00Z");
    store.create_key(&second).await.expect("create");
    store.create_key(&first).await.expect("create");
    // WHEN they are looked up
    // THEN each is found by its hash, acts for its org only, and the org lists them oldest first
    assert_eq!(
        store.key_by_hash("hash-1").await.expect("read"),
        Some(first.clone())
    );
    assert_eq!(store.key_by_hash("hash-3").await.expect("read"), None);
    assert!(matches!(
        store.key_access(&acme.id, "hash-2").await.expect("read"),
        OrgAccess::Member(_)
    ));
    assert_eq!(
        store.key_access(&other.id, "hash-2").await.expect("read"),
        OrgAccess::NotMember
    );
    assert_eq!(
        store
            .key_access(&OrgId::generate(), "hash-2")
            .await
            .expect("read"),
        OrgAccess::NoSuchOrg
    );
    assert_eq!(
        store.keys_of(&acme.id).await.expect("list"),
        vec![first.clone(), second.clone()]
    );
    assert!(store.keys_of(&other.id).await.expect("list").is_empty());
    // AND a key's use is noted
    store
        .touch_key("hash-1", "2026-11-04T00:00:00Z")
        .await
        .expect("touch");
    let touched = store
        .key_by_hash("hash-1")
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        touched.last_used_at.as_deref(),
        Some("2026-11-04T00:00:00Z")
    );
    // AND the same hash cannot be stored twice
    let again = store
        .create_key(&api_key(
            &acme.id,
            "again",
            "hash-1",
            "2026-11-05T00:00:00Z",
        ))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // WHEN a key is revoked, by its org only
    assert!(!store
        .revoke_key(&other.id, &first.id)
        .await
        .expect("revoke"));
    assert!(store.revoke_key(&acme.id, &first.id).await.expect("revoke"));
    assert!(!store
        .revoke_key(&acme.id, &first.id)
        .await
        .expect("revoke twice"));
    // THEN it is gone at once, everywhere; touching it does not bring it back
    assert_eq!(store.key_by_hash("hash-1").await.expect("read"), None);
    assert_eq!(
        store.key_access(&acme.id, "hash-1").await.expect("read"),
        OrgAccess::NotMember
    );
    store
        .touch_key("hash-1", "2026-11-06T00:00:00Z")
        .await
        .expect("touch");
    assert_eq!(store.key_by_hash("hash-1").await.expect("read"), None);
    assert_eq!(store.keys_of(&acme.id).await.expect("list"), vec![second]);
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(Arc::new(MemoryStore::new())).await;
                }
            )*
        }

        mod dynamodb {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(store) = common::dynamo_store().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}

contract!(
    registers_users_once,
    concurrent_registrations_admit_exactly_one,
    creates_orgs_with_their_owner,
    slugs_are_unique_even_under_races,
    lists_a_users_orgs_oldest_first,
    operators_change_plans,
    api_keys_are_found_by_hash_listed_and_revoked,
);
