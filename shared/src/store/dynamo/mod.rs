//! The DynamoDB store: one table, single-table design. Every item has a string partition key `pk`
//! and sort key `sk`, built in [`keys`]; README.md ("DynamoDB table") says why each access is
//! shaped so. Each part of the store lives in its own file: the table's shared round trips, the
//! users, the orgs, the meter (limits and settlement) and the jobs.

mod api_keys;
mod item;
mod jobs;
mod keys;
mod meter;
mod metrics;
mod orgs;
mod table;
mod users;

pub use metrics::{MetricsSnapshot, StoreMetrics};
pub use table::{DynamoStore, TTL_ATTRIBUTE};
