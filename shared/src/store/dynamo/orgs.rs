//! Organisations, their slugs and their members: an org, its slug claim and its owner's two
//! membership items are written in one transaction, so an org never exists without its owner.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnConsumedCapacity;

use super::item::{get_s, item, s, Item};
use super::keys;
use super::metrics::{Metered, Units};
use super::table::{applied, put_new, DynamoStore, Transaction, TransactionFailure};
use crate::ids::{OrgId, PlanId, UserId};
use crate::store::{Membership, OrgAccess, OrgRecord, OrgStore, Role, StoreError};

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
    item(
        keys::org(&org.id),
        [
            ("org_id", s(org.id.as_str())),
            ("name", s(org.name.as_str())),
            ("slug", s(org.slug.as_str())),
            ("plan", s(org.plan.as_str())),
            ("owner_id", s(org.owner_id.as_str())),
            ("created_at", s(org.created_at.as_str())),
        ],
    )
}

fn role_of(item: &Item) -> Result<Role, StoreError> {
    let raw = get_s(item, "role")?;
    Role::parse(raw).ok_or_else(|| StoreError::Corrupt(format!("unknown role {raw}")))
}

#[async_trait]
impl OrgStore for DynamoStore {
    async fn create_org(&self, org: &OrgRecord, joined_at: &str) -> Result<(), StoreError> {
        let owner = Role::Owner.as_str();
        let mut transaction = Transaction::new();
        transaction.push(
            (),
            put_new(
                self,
                item(keys::slug(&org.slug), [("org_id", s(org.id.as_str()))]),
            )?,
        );
        transaction.push((), put_new(self, org_item(org))?);
        transaction.push(
            (),
            put_new(
                self,
                item(
                    keys::member(&org.id, &org.owner_id),
                    [("role", s(owner)), ("joined_at", s(joined_at))],
                ),
            )?,
        );
        transaction.push(
            (),
            put_new(
                self,
                item(
                    keys::org_of(&org.owner_id, joined_at, &org.id),
                    [("org_id", s(org.id.as_str())), ("role", s(owner))],
                ),
            )?,
        );
        // A transaction that collides with another one in flight on the same slug is cancelled with
        // `TransactionConflict`; retried, it sees the winner's slug and reports the conflict.
        match transaction.send_until_settled(self).await {
            Ok(()) => Ok(()),
            Err(TransactionFailure::Refused(_)) => Err(StoreError::Conflict("slug")),
            Err(TransactionFailure::Conflict(err) | TransactionFailure::Unavailable(err)) => {
                Err(err)
            }
        }
    }

    async fn orgs_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let listings = self.query_all(keys::orgs_of(user)).await?;
        let mut roles = Vec::with_capacity(listings.len());
        for listing in &listings {
            roles.push((get_s(listing, "org_id")?.to_owned(), role_of(listing)?));
        }
        let wanted = roles
            .iter()
            .map(|(org_id, _)| keys::org(&OrgId::from(org_id.as_str())))
            .collect();
        let mut orgs: HashMap<String, OrgRecord> = HashMap::new();
        for item in self.batch_get(wanted).await? {
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
        let items = self
            .batch_get(vec![keys::org(org), keys::member(org, user)])
            .await?;
        let mut record = None;
        let mut role = None;
        for item in &items {
            if get_s(item, "sk")? == keys::ORG_SK {
                record = Some(OrgRecord::try_from(item)?);
            } else {
                role = Some(role_of(item)?);
            }
        }
        Ok(match (record, role) {
            (None, _) => OrgAccess::NoSuchOrg,
            (Some(_), None) => OrgAccess::NotMember,
            (Some(org), Some(role)) => OrgAccess::Member(Membership { org, role }),
        })
    }

    async fn key_access(&self, org: &OrgId, hash: &str) -> Result<OrgAccess, StoreError> {
        let items = self
            .batch_get(vec![keys::org(org), keys::api_key(hash)])
            .await?;
        let mut record = None;
        let mut key_org = None;
        for item in &items {
            if get_s(item, "sk")? == keys::ORG_SK {
                record = Some(OrgRecord::try_from(item)?);
            } else {
                key_org = Some(OrgId::from(get_s(item, "org_id")?));
            }
        }
        Ok(match record {
            None => OrgAccess::NoSuchOrg,
            Some(record) if key_org.as_ref() == Some(org) => OrgAccess::Member(Membership {
                org: record,
                role: Role::Member,
            }),
            Some(_) => OrgAccess::NotMember,
        })
    }

    async fn set_plan(&self, org: &OrgId, plan: &PlanId) -> Result<(), StoreError> {
        let set = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(super::item::key(keys::org(org))))
            .update_expression("SET #plan = :plan")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#plan", "plan")
            .expression_attribute_values(":plan", s(plan.as_str()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        if applied(set)? {
            Ok(())
        } else {
            Err(StoreError::NotFound("organization"))
        }
    }
}
