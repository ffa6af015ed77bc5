//! Accounts: one item per user, keyed by the normalised email, so an email registers once.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnConsumedCapacity;

use super::item::{get_s, item, s, Item};
use super::keys;
use super::metrics::{Metered, Units};
use super::table::{applied, DynamoStore};
use crate::ids::UserId;
use crate::store::{StoreError, UserRecord, UserStore};

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

#[async_trait]
impl UserStore for DynamoStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let record = item(
            keys::user(&user.email),
            [
                ("user_id", s(user.id.as_str())),
                ("email", s(user.email.as_str())),
                ("password_hash", s(user.password_hash.as_str())),
                ("created_at", s(user.created_at.as_str())),
            ],
        );
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        if applied(put)? {
            Ok(())
        } else {
            Err(StoreError::Conflict("user"))
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get(keys::user(email))
            .await?
            .as_ref()
            .map(UserRecord::try_from)
            .transpose()
    }
}
