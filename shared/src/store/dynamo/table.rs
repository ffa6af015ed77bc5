//! The table and the round trips every part of the DynamoDB store shares: one consistent read,
//! a batched read, a paged query, and transactions whose failures are read by what each write was.

use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes,
    ReturnConsumedCapacity, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use std::sync::Arc;

use super::item::{key, s, Item};
use super::keys::Key;
use super::metrics::{Metered, StoreMetrics, Units};
use crate::store::StoreError;

/// The attribute DynamoDB's TTL deletes items by (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// The DynamoDB store over one table. Clones share one client and one [`StoreMetrics`].
#[derive(Debug, Clone)]
pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    pub(super) metrics: Arc<StoreMetrics>,
}

pub(super) fn unavailable<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(DisplayErrorContext(err).to_string())
}

pub(super) fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Corrupt(format!("request could not be built: {err}"))
}

/// Whether a conditional write applied: `false` when its condition refused it.
pub(super) fn applied<T, E, R>(result: Result<T, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.code() == Some("ConditionalCheckFailedException")) =>
        {
            Ok(false)
        }
        Err(err) => Err(unavailable(err)),
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            metrics: Arc::default(),
        }
    }

    /// Builds a client from the environment (`AWS_ENDPOINT_URL_DYNAMODB` or `AWS_ENDPOINT_URL`
    /// point it at a local server).
    pub async fn from_env(table: impl Into<String>) -> DynamoStore {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        DynamoStore::new(Client::new(&config), table)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Round trips and capacity units of every request this store (and its clones) sent.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Creates the table (on-demand, TTL on `expires_at`) unless it exists. For local runs and
    /// tests; in AWS, template.yaml declares it.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        let exists = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .metered(&self.metrics, Units::Read)
            .await;
        match exists {
            Ok(_) => return Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(err) => return Err(unavailable(err)),
        }
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let key_element = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_error)
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .key_schema(key_element("pk", KeyType::Hash)?)
            .key_schema(key_element("sk", KeyType::Range)?)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        if let Err(err) = created {
            // Another process may have created it between our describe and create.
            if err.code() != Some("ResourceInUseException") {
                return Err(unavailable(err));
            }
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL_ATTRIBUTE)
                    .enabled(true)
                    .build()
                    .map_err(build_error)?,
            )
            .send()
            .metered(&self.metrics, Units::Write)
            .await
            .map(|_| ())
            .or_else(|err| {
                // Enabling TTL twice is refused; that is fine.
                if err.code() == Some("ValidationException") {
                    Ok(())
                } else {
                    Err(unavailable(err))
                }
            })
    }

    /// Reads one item by key, strongly consistent.
    pub(super) async fn get(&self, at: Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(at)))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Read)
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// Reads items by key in one BatchGetItem round trip, retrying what DynamoDB left unprocessed.
    pub(super) async fn batch_get(&self, keys: Vec<Key>) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.iter().cloned().map(key).collect()))
                    .consistent_read(true)
                    .build()
                    .map_err(build_error)?,
            );
            let mut attempt = 0u32;
            while let Some(request) = pending.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .metered(&self.metrics, Units::Read)
                    .await
                    .map_err(unavailable)?;
                if let Some(mut responses) = out.responses {
                    found.extend(responses.remove(&self.table).unwrap_or_default());
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(StoreError::Unavailable(
                            "BatchGetItem kept leaving keys unprocessed".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await;
                }
            }
        }
        Ok(found)
    }

    /// Every item of a partition, strongly consistent.
    pub(super) async fn query_all(&self, pk: String) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk.as_str()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .metered(&self.metrics, Units::Read)
                .await
                .map_err(unavailable)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }
    /// Up to `limit` items of a partition, newest (highest sort key) first, after the sort key
    /// `after` if given; and the sort key to continue after, if there may be more.
    pub(super) async fn query_newest(
        &self,
        pk: String,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<Item>, Option<String>), StoreError> {
        let start = after.map(|sk| key((pk.clone(), sk.to_owned())));
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk.as_str()))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Read)
            .await
            .map_err(unavailable)?;
        let next = out
            .last_evaluated_key
            .and_then(|key| key.get("sk").cloned())
            .and_then(|sk| sk.as_s().ok().cloned());
        Ok((out.items.unwrap_or_default(), next))
    }
}

/// A TransactWriteItems whose writes carry what each one is (`W`), so a cancellation is read by
/// which writes failed their condition, never by their position in the request.
pub(super) struct Transaction<W> {
    writes: Vec<(W, TransactWriteItem)>,
}

/// Why a transaction did not apply.
pub(super) enum TransactionFailure<W> {
    /// These writes' conditions failed; nothing was written.
    Refused(Vec<W>),
    /// Another transaction on the same items was in flight; nothing was written. Worth retrying.
    Conflict(StoreError),
    Unavailable(StoreError),
}

impl<W: Copy> Transaction<W> {
    pub(super) fn new() -> Transaction<W> {
        Transaction { writes: Vec::new() }
    }

    pub(super) fn push(&mut self, what: W, write: TransactWriteItem) {
        self.writes.push((what, write));
    }

    pub(super) async fn send(&self, store: &DynamoStore) -> Result<(), TransactionFailure<W>> {
        let items = self.writes.iter().map(|(_, write)| write.clone()).collect();
        let sent = store
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&store.metrics, Units::Write)
            .await;
        let Err(err) = sent else {
            return Ok(());
        };
        let codes: Vec<Option<String>> = match err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let refused: Vec<W> = self
            .writes
            .iter()
            .zip(&codes)
            .filter(|(_, code)| code.as_deref() == Some("ConditionalCheckFailed"))
            .map(|((what, _), _)| *what)
            .collect();
        if !refused.is_empty() {
            return Err(TransactionFailure::Refused(refused));
        }
        let conflict = codes
            .iter()
            .any(|c| c.as_deref() == Some("TransactionConflict"));
        let error = unavailable(err);
        Err(if conflict {
            TransactionFailure::Conflict(error)
        } else {
            TransactionFailure::Unavailable(error)
        })
    }
}

/// How many times a transaction cancelled by a concurrent one is sent.
const CONFLICT_ATTEMPTS: u32 = 8;

impl<W: Copy> Transaction<W> {
    /// Sends the transaction, again after a short growing pause when a concurrent transaction on
    /// the same items cancelled it (`TransactionConflict`), a few times at most. Writes refused by
    /// their conditions are not retried: they are the caller's to read.
    pub(super) async fn send_until_settled(
        &self,
        store: &DynamoStore,
    ) -> Result<(), TransactionFailure<W>> {
        let mut attempt = 0u32;
        loop {
            match self.send(store).await {
                Err(TransactionFailure::Conflict(_)) if attempt + 1 < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    back_off(attempt).await;
                }
                other => return other,
            }
        }
    }
}

/// A conditional Put of a new item: refused if the key exists.
pub(super) fn put_new(store: &DynamoStore, item: Item) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .put(
            aws_sdk_dynamodb::types::Put::builder()
                .table_name(&store.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_error)?,
        )
        .build())
}

/// A short, growing pause before retrying a conflicting transaction.
async fn back_off(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(5 << attempt.min(5))).await;
}
