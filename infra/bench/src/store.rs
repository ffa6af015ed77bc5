//! The store behind the benchmarked gateway, and what one chat request costs it in DynamoDB.
//!
//! The cost is read from the store's own [`StoreMetrics`] (round trips sent, capacity units
//! DynamoDB reported), not derived from the code. To split it at the provider call, the request
//! asks the simulator to wait before answering and the metrics are read while it waits: what was
//! sent by then is the admission path, the rest is settlement.
//!
//! The units are whatever the server reports. DynamoDB Local charges a TransactWriteItems as if it
//! held one item, so against it the settlement shows 2 write units where DynamoDB charges 2 per
//! item (README.md, "Benchmark").

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use gateway::store::dynamo::{DynamoStore, MetricsSnapshot, StoreMetrics};
use reqwest::Client;

use crate::load::{self, Target};

/// Where the DynamoDB store's endpoint is read from, in order.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "AWS_ENDPOINT_URL_DYNAMODB",
    "GATEWAY_TEST_DYNAMODB_ENDPOINT",
];

/// How long the simulator holds the measured request; the metrics are read twice meanwhile.
pub const PROVIDER_LATENCY: Duration = Duration::from_millis(600);
const READ_AT: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(450)];
const ATTEMPTS: usize = 3;

/// A DynamoDB store on a fresh table of the local DynamoDB server named by the environment.
/// Credentials and region are dummies: this is for DynamoDB Local, never an account.
pub async fn fresh_dynamo() -> anyhow::Result<(Arc<DynamoStore>, String)> {
    let endpoint = ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .with_context(|| {
            format!(
                "--store dynamodb needs a DynamoDB endpoint in {}",
                ENDPOINT_VARIABLES.join(" or ")
            )
        })?;
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .build();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_millis();
    let table = format!("bench-{stamp}-{}", std::process::id());
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), table);
    store
        .create_table_if_missing()
        .await
        .with_context(|| format!("creating table {} at {endpoint}", store.table()))?;
    Ok((Arc::new(store), endpoint))
}

/// What one chat request cost in DynamoDB, split at the provider call.
#[derive(Debug, Clone, Copy)]
pub struct RequestCost {
    /// Sent before the provider was called: authorisation and admission.
    pub before: MetricsSnapshot,
    /// Sent after the provider answered: settlement.
    pub after: MetricsSnapshot,
}

impl RequestCost {
    pub fn total(&self) -> MetricsSnapshot {
        self.before + self.after
    }
}

/// Sends `target` (a chat whose prompt asks the simulator for [`PROVIDER_LATENCY`]) alone and
/// measures it. The two readings taken while the provider waits must agree, or the admission path
/// had not finished by the first one; then the measurement is repeated.
pub async fn measure_one(
    client: &Client,
    target: &Target,
    metrics: &StoreMetrics,
) -> anyhow::Result<RequestCost> {
    for _ in 0..ATTEMPTS {
        let start = metrics.snapshot();
        let sent = Instant::now();
        let request = {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move { load::send(&client, &target).await })
        };
        let mut readings = [MetricsSnapshot::default(); 2];
        for (reading, at) in readings.iter_mut().zip(READ_AT) {
            tokio::time::sleep_until((sent + at).into()).await;
            *reading = metrics.snapshot();
        }
        if let Err(err) = request.await? {
            bail!("the measured chat request failed: {err}");
        }
        let took = sent.elapsed();
        let end = metrics.snapshot();
        if took < PROVIDER_LATENCY {
            bail!("the measured chat took {took:?}: the simulator ignored its latency directive");
        }
        let [early, late] = readings;
        if early == late {
            return Ok(RequestCost {
                before: late - start,
                after: end - late,
            });
        }
        eprintln!(
            "the store was still busy {:?} after sending: admission is slower than that here; \
             measuring again",
            READ_AT[0]
        );
    }
    bail!("admission never finished within {:?}", READ_AT[0])
}
