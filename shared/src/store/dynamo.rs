//! The DynamoDB store: one table, single-table design. Every item has a string partition key `pk`
//! and sort key `sk`; README.md ("DynamoDB table") says why each access is shaped so.
//!
//! | item | pk | sk |
//! |---|---|---|
//! | user | `USER#<email>` | `PROFILE` |
//! | organisation | `ORG#<org id>` | `ORG` |
//! | slug reservation | `SLUG#<slug>` | `SLUG` |
//! | member of an org | `ORG#<org id>` | `MEMBER#<user id>` |
//! | an org of a user | `USER_ORGS#<user id>` | `<joined at>#<org id>` |
//! | rate window | `RATE#<org id>#<epoch minute>` | `RATE` |
//! | month counter | `MONTH#<org id>#<YYYY-MM>` | `MONTH` |
//! | request record (`ai_requests`) | `REQ#<org id>#<YYYY-MM>` | `<request id>` (time-ordered) |
//! | daily aggregate (`ai_usage`) | `DAILY#<org id>#<YYYY-MM>` | `<YYYY-MM-DD>#<model>` |

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation as op;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConsumedCapacity, KeySchemaElement, KeyType,
    KeysAndAttributes, Put, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

use super::{
    Admission, AdmitOutcome, DailyUsage, Hold, Membership, MeterStore, MonthCounter, OrgAccess,
    OrgRecord, OrgStore, Outcome, RequestRecord, Role, Settlement, StoreError, UserRecord,
    UserStore,
};
use crate::ids::{OrgId, PlanId, UserId};

/// The attribute DynamoDB's TTL deletes items by (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";

pub(super) type Item = HashMap<String, AttributeValue>;

/// The DynamoDB store over one table. Clones share one client and one [`StoreMetrics`].
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    metrics: Arc<StoreMetrics>,
}

/// What this store has asked of DynamoDB since it was built: requests sent and the capacity units
/// DynamoDB reported for them, so a benchmark can measure a request's cost rather than derive it.
///
/// A round trip is one `send()` of ours, counting every pass of our own retry loops (unprocessed
/// batch keys, conflicting transactions); the SDK's internal retries of one `send()` are not seen.
/// DynamoDB reports no capacity with an error, yet a refused conditional write still consumes
/// write units: on refusal paths the units are a lower bound.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    round_trips: AtomicU64,
    steps: AtomicU64,
    in_flight: AtomicU64,
    /// Capacity in thousandths of a unit: DynamoDB's units are multiples of 0.5, so nothing is lost.
    read_milli_units: AtomicU64,
    write_milli_units: AtomicU64,
}

/// A reading of [`StoreMetrics`]; subtract two to get what happened in between.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub round_trips: u64,
    /// Round trips one after the other: requests sent while none was in flight. Requests sent
    /// together count once, so for one request alone this is its wait on DynamoDB in round trips.
    pub steps: u64,
    pub read_units: f64,
    pub write_units: f64,
}

impl std::ops::Add for MetricsSnapshot {
    type Output = MetricsSnapshot;
    fn add(self, other: MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            round_trips: self.round_trips + other.round_trips,
            steps: self.steps + other.steps,
            read_units: self.read_units + other.read_units,
            write_units: self.write_units + other.write_units,
        }
    }
}

impl std::ops::Sub for MetricsSnapshot {
    type Output = MetricsSnapshot;
    fn sub(self, earlier: MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            round_trips: self.round_trips.saturating_sub(earlier.round_trips),
            steps: self.steps.saturating_sub(earlier.steps),
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
        }
    }
}

/// Which units an operation consumes. DynamoDB's `TOTAL` answer may carry only `CapacityUnits`;
/// then the operation says whether they were read or write units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Units {
    Read,
    Write,
}

impl StoreMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let units = |milli: &AtomicU64| milli.load(Ordering::Relaxed) as f64 / 1000.0;
        MetricsSnapshot {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            read_units: units(&self.read_milli_units),
            write_units: units(&self.write_milli_units),
        }
    }

    /// Marks a request sent until the guard is dropped: a new step if none was in flight.
    fn take_off(&self) -> InFlight<'_> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.steps.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(self)
    }

    /// Counts one round trip and the capacity its answer reports.
    fn record(&self, units: Units, consumed: &[ConsumedCapacity]) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let milli = |value: Option<f64>| (value.unwrap_or(0.0) * 1000.0).round() as u64;
        for c in consumed {
            let (read, write) = match (c.read_capacity_units, c.write_capacity_units) {
                (None, None) => match units {
                    Units::Read => (c.capacity_units, None),
                    Units::Write => (None, c.capacity_units),
                },
                split => split,
            };
            self.read_milli_units
                .fetch_add(milli(read), Ordering::Relaxed);
            self.write_milli_units
                .fetch_add(milli(write), Ordering::Relaxed);
        }
    }
}

/// An operation's answer as metering sees it: the capacity DynamoDB says it consumed.
trait ReportsCapacity {
    fn consumed(&self) -> &[ConsumedCapacity];
}

macro_rules! reports_capacity {
    (one: $($output:ty),*) => {$(
        impl ReportsCapacity for $output {
            fn consumed(&self) -> &[ConsumedCapacity] {
                self.consumed_capacity().map(std::slice::from_ref).unwrap_or_default()
            }
        }
    )*};
    (per table: $($output:ty),*) => {$(
        impl ReportsCapacity for $output {
            fn consumed(&self) -> &[ConsumedCapacity] {
                self.consumed_capacity()
            }
        }
    )*};
    (none: $($output:ty),*) => {$(
        impl ReportsCapacity for $output {
            fn consumed(&self) -> &[ConsumedCapacity] {
                &[]
            }
        }
    )*};
}

reports_capacity!(one: op::get_item::GetItemOutput, op::put_item::PutItemOutput,
    op::update_item::UpdateItemOutput, op::query::QueryOutput);
reports_capacity!(per table: op::batch_get_item::BatchGetItemOutput,
    op::transact_write_items::TransactWriteItemsOutput);
reports_capacity!(none: op::describe_table::DescribeTableOutput,
    op::create_table::CreateTableOutput, op::update_time_to_live::UpdateTimeToLiveOutput);

/// A request in flight, for [`StoreMetrics`]' steps; landed when dropped (cancelled or answered).
struct InFlight<'a>(&'a StoreMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records a request in [`StoreMetrics`] as it is sent: `client.op()….send().metered(…).await`.
trait Metered<T, E> {
    async fn metered(self, metrics: &StoreMetrics, units: Units) -> Result<T, E>;
}

impl<F, T, E> Metered<T, E> for F
where
    F: std::future::Future<Output = Result<T, E>>,
    T: ReportsCapacity,
{
    async fn metered(self, metrics: &StoreMetrics, units: Units) -> Result<T, E> {
        let flight = metrics.take_off();
        let result = self.await;
        drop(flight);
        // An error carries no consumed capacity (not even a refused conditional write, which is
        // charged): the round trip still counts.
        let consumed = result.as_ref().map_or(&[][..], ReportsCapacity::consumed);
        metrics.record(units, consumed);
        result
    }
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!(
            "item lacks string attribute {name}"
        ))),
    }
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

impl TryFrom<&Item> for UserRecord {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        Ok(UserRecord {
            id: UserId::from(get_s(item, "user_id")?),
            email: get_s(item, "email")?.to_owned(),
            password_hash: get_s(item, "password_hash")?.to_owned(),
            created_at: get_s(item, "created_at")?.to_owned(),
        })
    }
}

impl TryFrom<&Item> for OrgRecord {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        Ok(OrgRecord {
            id: OrgId::from(get_s(item, "org_id")?),
            name: get_s(item, "name")?.to_owned(),
            slug: get_s(item, "slug")?.to_owned(),
            plan: PlanId::from(get_s(item, "plan")?),
            owner_id: UserId::from(get_s(item, "owner_id")?),
            created_at: get_s(item, "created_at")?.to_owned(),
        })
    }
}

fn org_item(org: &OrgRecord) -> Item {
    let mut item = key(format!("ORG#{}", org.id), "ORG");
    item.extend([
        ("org_id".to_owned(), s(org.id.as_str())),
        ("name".to_owned(), s(org.name.as_str())),
        ("slug".to_owned(), s(org.slug.as_str())),
        ("plan".to_owned(), s(org.plan.as_str())),
        ("owner_id".to_owned(), s(org.owner_id.as_str())),
        ("created_at".to_owned(), s(org.created_at.as_str())),
    ]);
    item
}

fn role_of(item: &Item) -> Result<Role, StoreError> {
    let raw = get_s(item, "role")?;
    Role::parse(raw).ok_or_else(|| StoreError::Corrupt(format!("unknown role {raw}")))
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
    pub(super) async fn get(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Read)
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// Reads items by key in one BatchGetItem round trip, retrying what DynamoDB left unprocessed.
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
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
}

#[async_trait]
impl UserStore for DynamoStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut item = key(format!("USER#{}", user.email), "PROFILE");
        item.extend([
            ("user_id".to_owned(), s(user.id.as_str())),
            ("email".to_owned(), s(user.email.as_str())),
            ("password_hash".to_owned(), s(user.password_hash.as_str())),
            ("created_at".to_owned(), s(user.created_at.as_str())),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await
            .map(|_| ())
            .map_err(|err| {
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception())
                {
                    StoreError::Conflict("user")
                } else {
                    unavailable(err)
                }
            })
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get(key(format!("USER#{email}"), "PROFILE"))
            .await?
            .as_ref()
            .map(UserRecord::try_from)
            .transpose()
    }
}

#[async_trait]
impl OrgStore for DynamoStore {
    async fn create_org(&self, org: &OrgRecord, joined_at: &str) -> Result<(), StoreError> {
        let put = |item: Item| -> Result<TransactWriteItem, StoreError> {
            Ok(TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build_error)?,
                )
                .build())
        };
        let mut slug = key(format!("SLUG#{}", org.slug), "SLUG");
        slug.insert("org_id".to_owned(), s(org.id.as_str()));
        let mut member = key(
            format!("ORG#{}", org.id),
            format!("MEMBER#{}", org.owner_id),
        );
        member.extend([
            ("role".to_owned(), s(Role::Owner.as_str())),
            ("joined_at".to_owned(), s(joined_at)),
        ]);
        let mut listing = key(
            format!("USER_ORGS#{}", org.owner_id),
            format!("{joined_at}#{}", org.id),
        );
        listing.extend([
            ("org_id".to_owned(), s(org.id.as_str())),
            ("role".to_owned(), s(Role::Owner.as_str())),
        ]);
        let request = self
            .client
            .transact_write_items()
            .transact_items(put(slug)?)
            .transact_items(put(org_item(org))?)
            .transact_items(put(member)?)
            .transact_items(put(listing)?)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        // A transaction that collides with another one in flight on the same slug is cancelled with
        // `TransactionConflict`; retried, it sees the winner's slug and reports the conflict.
        let mut attempt = 0u32;
        loop {
            let sent = request
                .clone()
                .send()
                .metered(&self.metrics, Units::Write)
                .await;
            let Err(err) = sent else {
                return Ok(());
            };
            let reasons: Vec<String> = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            };
            if reasons.iter().any(|r| r == "ConditionalCheckFailed") {
                return Err(StoreError::Conflict("slug"));
            }
            attempt += 1;
            if reasons.iter().any(|r| r == "TransactionConflict") && attempt < 5 {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                continue;
            }
            return Err(unavailable(err));
        }
    }

    async fn orgs_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let mut listings = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(format!("USER_ORGS#{user}")))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .metered(&self.metrics, Units::Read)
                .await
                .map_err(unavailable)?;
            listings.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let mut roles = Vec::with_capacity(listings.len());
        for listing in &listings {
            roles.push((get_s(listing, "org_id")?.to_owned(), role_of(listing)?));
        }
        let keys = roles
            .iter()
            .map(|(org_id, _)| key(format!("ORG#{org_id}"), "ORG"))
            .collect();
        let mut orgs: HashMap<String, OrgRecord> = HashMap::new();
        for item in self.batch_get(keys).await? {
            let org = OrgRecord::try_from(&item)?;
            orgs.insert(org.id.to_string(), org);
        }
        // Listings come sorted by join time; keep that order.
        Ok(roles
            .into_iter()
            .filter_map(|(org_id, role)| orgs.remove(&org_id).map(|org| Membership { org, role }))
            .collect())
    }

    async fn org_access(&self, org: &OrgId, user: &UserId) -> Result<OrgAccess, StoreError> {
        let pk = format!("ORG#{org}");
        let items = self
            .batch_get(vec![
                key(pk.clone(), "ORG"),
                key(pk, format!("MEMBER#{user}")),
            ])
            .await?;
        let mut record = None;
        let mut role = None;
        for item in &items {
            match get_s(item, "sk")? {
                "ORG" => record = Some(OrgRecord::try_from(item)?),
                _ => role = Some(role_of(item)?),
            }
        }
        Ok(match (record, role) {
            (None, _) => OrgAccess::NoSuchOrg,
            (Some(_), None) => OrgAccess::NotMember,
            (Some(org), Some(role)) => OrgAccess::Member(Membership { org, role }),
        })
    }

    async fn set_plan(&self, org: &OrgId, plan: &PlanId) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("ORG#{org}"), "ORG")))
            .update_expression("SET #plan = :plan")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#plan", "plan")
            .expression_attribute_values(":plan", s(plan.as_str()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await
            .map(|_| ())
            .map_err(|err| {
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception())
                {
                    StoreError::NotFound("organization")
                } else {
                    unavailable(err)
                }
            })
    }
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn get_u64(item: &Item, name: &str) -> Result<u64, StoreError> {
    match item.get(name) {
        None => Ok(0),
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map(|v| v.max(0) as u64)
            .map_err(|_| StoreError::Corrupt(format!("{name} is not an integer: {v}"))),
        Some(_) => Err(StoreError::Corrupt(format!("{name} is not a number"))),
    }
}

const HOLD_PREFIX: &str = "hold_";

impl TryFrom<&Item> for MonthCounter {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        let mut holds = Vec::new();
        for (name, value) in item {
            let Some(request_id) = name.strip_prefix(HOLD_PREFIX) else {
                continue;
            };
            let AttributeValue::M(hold) = value else {
                return Err(StoreError::Corrupt(format!("{name} is not a map")));
            };
            holds.push(Hold {
                request_id: request_id.to_owned(),
                model: match hold.get("model") {
                    Some(AttributeValue::S(model)) => model.clone(),
                    _ => "unknown".to_owned(),
                },
                tokens: get_u64(hold, "tokens")?,
                expires_at: get_u64(hold, "expires_at")? as i64,
            });
        }
        holds.sort_by(|a, b| a.request_id.cmp(&b.request_id));
        Ok(MonthCounter {
            messages: get_u64(item, "messages")?,
            tokens: get_u64(item, "tokens")?,
            committed: get_u64(item, "committed")?,
            holds,
        })
    }
}

impl TryFrom<&Item> for RequestRecord {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        Ok(RequestRecord {
            request_id: get_s(item, "request_id")?.to_owned(),
            org: OrgId::from(get_s(item, "organization_id")?),
            user: UserId::from(get_s(item, "user_id")?),
            model: get_s(item, "model")?.to_owned(),
            input_tokens: get_u64(item, "input_tokens")?,
            output_tokens: get_u64(item, "output_tokens")?,
            duration_ms: get_u64(item, "duration_ms")?,
            outcome: match get_s(item, "status")? {
                "success" => Outcome::Success,
                "abandoned" => Outcome::Abandoned,
                _ => Outcome::Failed,
            },
            error_message: get_s(item, "error_message").ok().map(str::to_owned),
            cost: get_u64(item, "cost")?,
            timestamp: get_s(item, "timestamp")?.to_owned(),
            date: get_s(item, "date")?.to_owned(),
            expires_at: get_u64(item, "expires_at")? as i64,
        })
    }
}

impl TryFrom<&Item> for DailyUsage {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        Ok(DailyUsage {
            date: get_s(item, "date")?.to_owned(),
            model: get_s(item, "model")?.to_owned(),
            message_count: get_u64(item, "message_count")?,
            input_tokens: get_u64(item, "input_tokens")?,
            output_tokens: get_u64(item, "output_tokens")?,
            total_tokens: get_u64(item, "total_tokens")?,
            estimated_cost: get_u64(item, "estimated_cost")?,
        })
    }
}

fn record_item(record: &RequestRecord, month: &str) -> Item {
    let mut item = key(
        format!("REQ#{}#{month}", record.org),
        record.request_id.as_str(),
    );
    item.extend([
        ("request_id".to_owned(), s(record.request_id.as_str())),
        ("organization_id".to_owned(), s(record.org.as_str())),
        ("user_id".to_owned(), s(record.user.as_str())),
        ("model".to_owned(), s(record.model.as_str())),
        ("input_tokens".to_owned(), n(record.input_tokens)),
        ("output_tokens".to_owned(), n(record.output_tokens)),
        ("duration_ms".to_owned(), n(record.duration_ms)),
        (
            "status".to_owned(),
            s(match record.outcome {
                Outcome::Success => "success",
                Outcome::Failed => "error",
                Outcome::Abandoned => "abandoned",
            }),
        ),
        ("cost".to_owned(), n(record.cost)),
        ("timestamp".to_owned(), s(record.timestamp.as_str())),
        ("date".to_owned(), s(record.date.as_str())),
        (TTL_ATTRIBUTE.to_owned(), n(record.expires_at)),
    ]);
    if let Some(message) = &record.error_message {
        item.insert("error_message".to_owned(), s(message.as_str()));
    }
    item
}

/// The outcome of asking for a slot in a minute window, with the window's count.
enum RateSlot {
    Taken(u64),
    Full(u64),
}

fn is_condition_failure<E: ProvideErrorMetadata>(err: &E) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// Cancellation reasons of a cancelled transaction, one per item (`None` where the item was fine).
pub(super) fn cancellation_codes<R>(
    err: &SdkError<TransactWriteItemsError, R>,
) -> Option<Vec<Option<String>>> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => Some(
            c.cancellation_reasons()
                .iter()
                .map(|r| r.code().filter(|c| *c != "None").map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

impl DynamoStore {
    async fn read_month(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError> {
        self.get(key(format!("MONTH#{org}#{month}"), "MONTH"))
            .await?
            .as_ref()
            .map(MonthCounter::try_from)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn query_all(&self, pk: String) -> Result<Vec<Item>, StoreError> {
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

    /// Takes a slot in the org's minute window if one is free: one conditional ADD.
    async fn take_rate_slot(&self, a: &Admission) -> Result<RateSlot, StoreError> {
        let rate = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RATE#{}#{}", a.org, a.minute), "RATE")))
            .update_expression("ADD requests :one SET expires_at = :ttl")
            .condition_expression("attribute_not_exists(requests) OR requests < :limit")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(a.rate_expires_at))
            .expression_attribute_values(":limit", n(a.requests_per_minute))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        match rate {
            Ok(out) => Ok(RateSlot::Taken(get_u64(
                &out.attributes.unwrap_or_default(),
                "requests",
            )?)),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(RateSlot::Full(
                    get_u64(c.item.as_ref().unwrap_or(&Item::new()), "requests")?,
                )),
                _ => Err(unavailable(err)),
            },
        }
    }

    /// Gives a rate slot back (the request was refused by its monthly limit).
    async fn release_rate_slot(&self, a: &Admission) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RATE#{}#{}", a.org, a.minute), "RATE")))
            .update_expression("ADD requests :minus_one")
            .condition_expression("requests > :zero")
            .expression_attribute_values(":minus_one", n(-1))
            .expression_attribute_values(":zero", n(0))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await
            .map(|_| ())
            .or_else(|err| {
                if err.as_service_error().is_some_and(is_condition_failure) {
                    Ok(())
                } else {
                    Err(unavailable(err))
                }
            })
    }
}

#[async_trait]
impl MeterStore for DynamoStore {
    async fn admit(&self, a: &Admission) -> Result<AdmitOutcome, StoreError> {
        // The rate window first: one conditional ADD on the window's own item. Access the caller
        // remembered is read at the same time, so confirming it costs no round trip of its own.
        let (rate, access) = match &a.access {
            None => (self.take_rate_slot(a).await, None),
            Some(check) => {
                let (rate, access) =
                    tokio::join!(self.take_rate_slot(a), self.org_access(&a.org, &check.user));
                (rate, Some((check, access)))
            }
        };
        if let Some((check, access)) = access {
            let confirmed = match access {
                Ok(OrgAccess::Member(m)) => Ok(m.org.plan == check.plan),
                Ok(_) => Ok(false),
                Err(err) => Err(err),
            };
            if !matches!(confirmed, Ok(true)) {
                // Nothing may stay written for a request admitted on access that no longer holds.
                if let Ok(RateSlot::Taken(_)) = rate {
                    self.release_rate_slot(a).await?;
                }
                return confirmed.map(|_| AdmitOutcome::AccessChanged);
            }
        }
        let requests_in_window = match rate? {
            RateSlot::Taken(requests) => requests,
            RateSlot::Full(requests) => {
                return Ok(AdmitOutcome::RateLimited {
                    requests_in_window: requests,
                })
            }
        };

        // Then the month: one message and the hold, under both limits, in one conditional update.
        // Conditions cannot add, so the item keeps `committed` = settled tokens + live holds.
        if a.tokens_limit.is_some_and(|l| a.hold.tokens > l) {
            self.release_rate_slot(a).await?;
            return Ok(AdmitOutcome::MonthlyExceeded(
                self.read_month(&a.org, &a.month).await?,
            ));
        }
        // The hold's own absence makes the update apply once: if the SDK resends it after a lost
        // answer, the resend is refused and the hold it finds says the first one went through.
        let mut conditions = vec!["attribute_not_exists(#hold)"];
        let hold_name = format!("{HOLD_PREFIX}{}", a.hold.request_id);
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("MONTH#{}#{}", a.org, a.month), "MONTH")))
            .update_expression(
                "ADD messages :one, committed :hold SET #hold = :hold_item, expires_at = :ttl",
            )
            .expression_attribute_names("#hold", hold_name.as_str())
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":hold", n(a.hold.tokens))
            .expression_attribute_values(
                ":hold_item",
                AttributeValue::M(HashMap::from([
                    ("model".to_owned(), s(a.hold.model.as_str())),
                    ("tokens".to_owned(), n(a.hold.tokens)),
                    ("expires_at".to_owned(), n(a.hold.expires_at)),
                ])),
            )
            .expression_attribute_values(":ttl", n(a.month_expires_at))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        if let Some(limit) = a.messages_limit {
            conditions.push("(attribute_not_exists(messages) OR messages < :messages_limit)");
            request = request.expression_attribute_values(":messages_limit", n(limit));
        }
        if let Some(limit) = a.tokens_limit {
            conditions.push("(attribute_not_exists(committed) OR committed <= :committed_max)");
            request =
                request.expression_attribute_values(":committed_max", n(limit - a.hold.tokens));
        }
        request = request.condition_expression(conditions.join(" AND "));
        match request.send().metered(&self.metrics, Units::Write).await {
            Ok(out) => Ok(AdmitOutcome::Admitted {
                requests_in_window,
                holds: MonthCounter::try_from(&out.attributes.unwrap_or_default())?.holds,
            }),
            Err(err) => {
                let old = match err.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                        Some(c.item.clone().unwrap_or_default())
                    }
                    _ => None,
                };
                if let Some(item) = old.as_ref().filter(|item| item.contains_key(&hold_name)) {
                    return Ok(AdmitOutcome::Admitted {
                        requests_in_window,
                        holds: MonthCounter::try_from(item)?.holds,
                    });
                }
                // Whatever happened to the month, the rate slot goes back: a refused request
                // consumes no counter.
                self.release_rate_slot(a).await?;
                match old {
                    Some(item) => Ok(AdmitOutcome::MonthlyExceeded(MonthCounter::try_from(
                        &item,
                    )?)),
                    None => Err(unavailable(err)),
                }
            }
        }
    }

    async fn settle(&self, st: &Settlement) -> Result<(), StoreError> {
        let record = &st.record;
        let used = record.input_tokens + record.output_tokens;
        let month_key = key(format!("MONTH#{}#{}", record.org, st.month), "MONTH");
        let hold_name = format!("{HOLD_PREFIX}{}", record.request_id);
        // With its hold present, the month update releases it; if the hold is gone (released as
        // abandoned), the usage still counts.
        let month_update = |with_hold: bool| -> Result<TransactWriteItem, StoreError> {
            let mut adds = Vec::new();
            let mut update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(month_key.clone()));
            let committed_delta = match record.outcome {
                Outcome::Success => used as i64 - if with_hold { st.hold_tokens as i64 } else { 0 },
                _ => -(if with_hold { st.hold_tokens as i64 } else { 0 }),
            };
            adds.push("committed :delta");
            update = update.expression_attribute_values(":delta", n(committed_delta));
            match record.outcome {
                Outcome::Success => {
                    adds.push("tokens :used");
                    update = update.expression_attribute_values(":used", n(used));
                }
                Outcome::Failed => {
                    adds.push("messages :minus_one");
                    update = update.expression_attribute_values(":minus_one", n(-1));
                }
                Outcome::Abandoned => {}
            }
            let mut expression = format!("ADD {}", adds.join(", "));
            if with_hold {
                expression.push_str(" REMOVE #hold");
                update = update
                    .expression_attribute_names("#hold", hold_name.as_str())
                    .condition_expression("attribute_exists(#hold)");
            }
            Ok(TransactWriteItem::builder()
                .update(
                    update
                        .update_expression(expression)
                        .build()
                        .map_err(build_error)?,
                )
                .build())
        };
        let record_put = TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(record_item(record, &st.month)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_error)?,
            )
            .build();
        // Abandoned requests keep their message, so they count in the day's aggregate too.
        let daily = if record.outcome != Outcome::Failed {
            Some(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(
                                format!("DAILY#{}#{}", record.org, st.month),
                                format!("{}#{}", record.date, record.model),
                            )))
                            .update_expression(
                                "SET #date = :date, model = :model, organization_id = :org \
                                 ADD message_count :one, input_tokens :in, output_tokens :out, \
                                 total_tokens :total, estimated_cost :cost",
                            )
                            .expression_attribute_names("#date", "date")
                            .expression_attribute_values(":date", s(record.date.as_str()))
                            .expression_attribute_values(":model", s(record.model.as_str()))
                            .expression_attribute_values(":org", s(record.org.as_str()))
                            .expression_attribute_values(":one", n(1))
                            .expression_attribute_values(":in", n(record.input_tokens))
                            .expression_attribute_values(":out", n(record.output_tokens))
                            .expression_attribute_values(":total", n(used))
                            .expression_attribute_values(":cost", n(record.cost))
                            .build()
                            .map_err(build_error)?,
                    )
                    .build(),
            )
        } else {
            None
        };

        let job_writes = match &st.job_item {
            Some(finish) => super::dynamo_jobs::finish_writes(
                self,
                &finish.job,
                &finish.item,
                &finish.attempt,
                super::ItemStatus::Succeeded,
                Some(&finish.result),
                None,
            )?
            .to_vec(),
            None => Vec::new(),
        };
        let mut with_hold = true;
        let mut attempt = 0u32;
        loop {
            let mut request = self
                .client
                .transact_write_items()
                .transact_items(month_update(with_hold)?)
                .transact_items(record_put.clone())
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            if let Some(daily) = &daily {
                request = request.transact_items(daily.clone());
            }
            for write in &job_writes {
                request = request.transact_items(write.clone());
            }
            let Err(err) = request.send().metered(&self.metrics, Units::Write).await else {
                return Ok(());
            };
            let codes = cancellation_codes(&err).unwrap_or_default();
            let failed = |i: usize| {
                codes.get(i).and_then(|c| c.as_deref()) == Some("ConditionalCheckFailed")
            };
            if failed(1) {
                // The record exists: this request was settled before. Nothing more to do.
                return Ok(());
            }
            if !job_writes.is_empty() && failed(2 + usize::from(daily.is_some())) {
                return Err(StoreError::Conflict("job item"));
            }
            attempt += 1;
            if failed(0) && with_hold {
                with_hold = false;
                continue;
            }
            if codes
                .iter()
                .any(|c| c.as_deref() == Some("TransactionConflict"))
                && attempt < 8
            {
                tokio::time::sleep(Duration::from_millis(5 << attempt.min(5))).await;
                continue;
            }
            return Err(unavailable(err));
        }
    }

    async fn month_counter(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError> {
        self.read_month(org, month).await
    }

    async fn daily_usage(&self, org: &OrgId, month: &str) -> Result<Vec<DailyUsage>, StoreError> {
        self.query_all(format!("DAILY#{org}#{month}"))
            .await?
            .iter()
            .map(DailyUsage::try_from)
            .collect()
    }

    async fn requests(&self, org: &OrgId, month: &str) -> Result<Vec<RequestRecord>, StoreError> {
        self.query_all(format!("REQ#{org}#{month}"))
            .await?
            .iter()
            .map(RequestRecord::try_from)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(total: f64, read: Option<f64>, write: Option<f64>) -> ConsumedCapacity {
        ConsumedCapacity::builder()
            .table_name("t")
            .capacity_units(total)
            .set_read_capacity_units(read)
            .set_write_capacity_units(write)
            .build()
    }

    #[test]
    fn a_bare_total_counts_as_the_operations_kind_of_units() {
        // GIVEN answers that report only CapacityUnits, as DynamoDB's TOTAL may
        let metrics = StoreMetrics::default();
        // WHEN a read and a write are recorded
        metrics.record(Units::Read, &[capacity(0.5, None, None)]);
        metrics.record(Units::Write, &[capacity(2.0, None, None)]);
        // THEN each lands on its side
        let want = MetricsSnapshot {
            round_trips: 2,
            steps: 0,
            read_units: 0.5,
            write_units: 2.0,
        };
        assert_eq!(metrics.snapshot(), want);
    }

    #[test]
    fn a_reported_split_wins_over_the_operations_kind() {
        // GIVEN a write whose answer splits its units (a transaction with a condition check)
        let metrics = StoreMetrics::default();
        let split = [capacity(3.0, Some(1.0), Some(2.0))];
        // WHEN it is recorded
        metrics.record(Units::Write, &split);
        // THEN the split is kept as reported
        assert_eq!(metrics.snapshot().read_units, 1.0);
        assert_eq!(metrics.snapshot().write_units, 2.0);
    }

    #[tokio::test]
    async fn a_failed_request_is_a_round_trip_without_units() {
        // GIVEN a request that failed (errors carry no consumed capacity)
        let metrics = StoreMetrics::default();
        let before = metrics.snapshot();
        let failed = async { Err::<op::put_item::PutItemOutput, &str>("refused") };
        // WHEN it is metered
        let _ = failed.metered(&metrics, Units::Write).await;
        // THEN it counts once and consumes nothing we can see
        let delta = metrics.snapshot() - before;
        assert_eq!((delta.round_trips, delta.steps), (1, 1));
        assert_eq!(delta.write_units, 0.0);
    }

    #[tokio::test]
    async fn requests_sent_together_are_one_step() {
        // GIVEN two requests in flight at once, then one after them
        let metrics = StoreMetrics::default();
        let answer = || async {
            tokio::task::yield_now().await;
            Ok::<_, &str>(op::get_item::GetItemOutput::builder().build())
        };
        // WHEN they are metered
        let (a, b) = tokio::join!(
            answer().metered(&metrics, Units::Read),
            answer().metered(&metrics, Units::Read)
        );
        let c = answer().metered(&metrics, Units::Read).await;
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        // THEN three round trips took two steps
        let seen = metrics.snapshot();
        assert_eq!((seen.round_trips, seen.steps), (3, 2));
    }
}
