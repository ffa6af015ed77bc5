//! Helpers shared by the integration tests: the DynamoDB Local connection and record builders.

#![allow(dead_code)]

use std::sync::Arc;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use gateway::ids::{OrgId, PlanId, UserId};
use gateway::store::dynamo::DynamoStore;
use gateway::store::{OrgRecord, UserRecord};

/// A store on a fresh table of the DynamoDB server the test command started, or `None` when the
/// tests run without one (then the DynamoDB half of the contract is skipped, loudly; under CI it
/// fails instead, so a broken harness cannot pass silently).
pub async fn dynamo_store() -> Option<Arc<DynamoStore>> {
    let Ok(endpoint) = std::env::var("GATEWAY_TEST_DYNAMODB_ENDPOINT") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI (bash infra/scripts/test.sh sets it)"
        );
        eprintln!(
            "skipping: GATEWAY_TEST_DYNAMODB_ENDPOINT is not set (run bash infra/scripts/test.sh)"
        );
        return None;
    };
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    let table = format!("test-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), table);
    store
        .create_table_if_missing()
        .await
        .expect("creating a test table in DynamoDB Local");
    Some(Arc::new(store))
}

pub fn user(email: &str) -> UserRecord {
    UserRecord {
        id: UserId::generate(),
        email: email.to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".to_owned(),
        created_at: "2026-11-01T00:00:00Z".to_owned(),
    }
}

pub fn org(slug: &str, owner: &UserId, created_at: &str) -> OrgRecord {
    OrgRecord {
        id: OrgId::generate(),
        name: format!("Org {slug}"),
        slug: slug.to_owned(),
        plan: PlanId::from("free"),
        owner_id: owner.clone(),
        created_at: created_at.to_owned(),
    }
}

/// A provider simulator on loopback; its base URL.
pub async fn simulator() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(simulator::serve(
        listener,
        simulator::SimulatorConfig::default(),
    ));
    url
}

/// One test per case and store: the in-memory store always, DynamoDB Local when the test
/// command started it. Each case is generic over the store.
#[macro_export]
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(std::sync::Arc::new(gateway::store::memory::MemoryStore::new())).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(store) = super::common::dynamo_store().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}
