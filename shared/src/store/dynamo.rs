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

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes,
    Put, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;

use super::{Membership, OrgAccess, OrgRecord, OrgStore, Role, StoreError, UserRecord, UserStore};
use crate::ids::{OrgId, PlanId, UserId};

/// The attribute DynamoDB's TTL deletes items by (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB store over one table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!(
            "item lacks string attribute {name}"
        ))),
    }
}

fn unavailable<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable(DisplayErrorContext(err).to_string())
}

fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
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

    /// Creates the table (on-demand, TTL on `expires_at`) unless it exists. For local runs and
    /// tests; in AWS, template.yaml declares it.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        let exists = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
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

    /// Reads items by key in one BatchGetItem round trip, retrying what DynamoDB left unprocessed.
    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
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
                    .send()
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
            .send()
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
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("USER#{email}"), "PROFILE")))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item.as_ref().map(UserRecord::try_from).transpose()
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
            .transact_items(put(listing)?);
        // A transaction that collides with another one in flight on the same slug is cancelled with
        // `TransactionConflict`; retried, it sees the winner's slug and reports the conflict.
        let mut attempt = 0u32;
        loop {
            let Err(err) = request.clone().send().await else {
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
                .send()
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
            .send()
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
