//! Org API keys: one item per key under its hash (how a request finds it, consistently, so a
//! revoked key stops at once) and one in its org's list, written and deleted together.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Delete, ReturnConsumedCapacity, TransactWriteItem};

use super::item::{get_s, item, key, s, Item};
use super::keys;
use super::metrics::{Metered, Units};
use super::table::{applied, build_error, put_new, DynamoStore, Transaction, TransactionFailure};
use crate::ids::{KeyId, OrgId, UserId};
use crate::store::{ApiKeyRecord, KeyStore, StoreError};

impl TryFrom<&Item> for ApiKeyRecord {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        Ok(ApiKeyRecord {
            id: KeyId::from(get_s(item, "key_id")?),
            org: OrgId::from(get_s(item, "org_id")?),
            name: get_s(item, "name")?.to_owned(),
            prefix: get_s(item, "prefix")?.to_owned(),
            hash: get_s(item, "hash")?.to_owned(),
            created_by: UserId::from(get_s(item, "created_by")?),
            created_at: get_s(item, "created_at")?.to_owned(),
            last_used_at: get_s(item, "last_used_at").ok().map(str::to_owned),
        })
    }
}

/// A conditional Delete of an item that must exist.
fn delete_existing(store: &DynamoStore, at: keys::Key) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .delete(
            Delete::builder()
                .table_name(&store.table)
                .set_key(Some(key(at)))
                .condition_expression("attribute_exists(pk)")
                .build()
                .map_err(build_error)?,
        )
        .build())
}

#[async_trait]
impl KeyStore for DynamoStore {
    async fn create_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let record = item(
            keys::api_key(&k.hash),
            [
                ("key_id", s(k.id.as_str())),
                ("org_id", s(k.org.as_str())),
                ("name", s(k.name.as_str())),
                ("prefix", s(k.prefix.as_str())),
                ("hash", s(k.hash.as_str())),
                ("created_by", s(k.created_by.as_str())),
                ("created_at", s(k.created_at.as_str())),
            ],
        );
        let listing = item(keys::org_key(&k.org, &k.id), [("hash", s(k.hash.as_str()))]);
        let mut transaction = Transaction::new();
        transaction.push((), put_new(self, record)?);
        transaction.push((), put_new(self, listing)?);
        match transaction.send(self).await {
            Ok(()) => Ok(()),
            Err(TransactionFailure::Refused(_)) => Err(StoreError::Conflict("key")),
            Err(TransactionFailure::Conflict(err) | TransactionFailure::Unavailable(err)) => {
                Err(err)
            }
        }
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(keys::api_key(hash))
            .await?
            .as_ref()
            .map(ApiKeyRecord::try_from)
            .transpose()
    }

    async fn keys_of(&self, org: &OrgId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let listings = self.query_all(keys::keys_of(org)).await?;
        let mut hashes = Vec::with_capacity(listings.len());
        for listing in &listings {
            hashes.push(keys::api_key(get_s(listing, "hash")?));
        }
        let mut found: Vec<ApiKeyRecord> = self
            .batch_get(hashes)
            .await?
            .iter()
            .map(ApiKeyRecord::try_from)
            .collect::<Result<_, _>>()?;
        found.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(found)
    }

    async fn revoke_key(&self, org: &OrgId, id: &KeyId) -> Result<bool, StoreError> {
        let Some(listing) = self.get(keys::org_key(org, id)).await? else {
            return Ok(false);
        };
        let mut transaction = Transaction::new();
        transaction.push((), delete_existing(self, keys::org_key(org, id))?);
        transaction.push(
            (),
            delete_existing(self, keys::api_key(get_s(&listing, "hash")?))?,
        );
        match transaction.send(self).await {
            Ok(()) => Ok(true),
            // Revoked meanwhile by another request.
            Err(TransactionFailure::Refused(_)) => Ok(false),
            Err(TransactionFailure::Conflict(err) | TransactionFailure::Unavailable(err)) => {
                Err(err)
            }
        }
    }

    async fn touch_key(&self, hash: &str, at: &str) -> Result<(), StoreError> {
        let touched = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::api_key(hash))))
            .update_expression("SET last_used_at = :at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", s(at))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        // Refused: the key was revoked meanwhile; there is nothing to note.
        applied(touched).map(|_| ())
    }
}
