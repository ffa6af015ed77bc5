//! Limits and metering in DynamoDB: the rate window and month counter updated by conditional
//! writes, and a settlement applied as one transaction (month, record, day, and a job item's
//! answer when there is one).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};

use super::item::{get_i64, get_s, get_u64, item, key, n, s, Item};
use super::jobs::finish_writes;
use super::keys;
use super::metrics::{Metered, Units};
use super::table::{
    applied, build_error, unavailable, DynamoStore, Transaction, TransactionFailure, TTL_ATTRIBUTE,
};
use crate::ids::{KeyId, OrgId, UserId};
use crate::store::{
    Admission, AdmitOutcome, DailyUsage, Hold, MeterStore, MonthChange, MonthCounter, OrgAccess,
    Outcome, Party, RequestPage, RequestRecord, Settlement, Slot, StoreError, Throttle,
};

impl TryFrom<&Item> for MonthCounter {
    type Error = StoreError;
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        let mut holds = Vec::new();
        for (name, value) in item {
            let Some(request_id) = name.strip_prefix(keys::HOLD_PREFIX) else {
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
                expires_at: get_i64(hold, "expires_at")?,
            });
        }
        holds.sort_by(|a, b| a.request_id.cmp(&b.request_id));
        Ok(MonthCounter {
            messages: get_u64(item, "messages")?,
            tokens: get_u64(item, "tokens")?,
            committed: get_u64(item, "committed")?,
            in_flight: get_u64(item, "in_flight")?,
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
            api_key: get_s(item, "api_key_id").ok().map(KeyId::from),
            model: get_s(item, "model")?.to_owned(),
            requested_model: get_s(item, "requested_model")
                .or_else(|_| get_s(item, "model"))?
                .to_owned(),
            attempts: u32::try_from(get_u64(item, "attempts")?).unwrap_or(u32::MAX),
            input_tokens: get_u64(item, "input_tokens")?,
            output_tokens: get_u64(item, "output_tokens")?,
            duration_ms: get_u64(item, "duration_ms")?,
            outcome: match get_s(item, "status")? {
                s if s == Outcome::Success.as_str() => Outcome::Success,
                s if s == Outcome::Abandoned.as_str() => Outcome::Abandoned,
                _ => Outcome::Failed,
            },
            error_message: get_s(item, "error_message").ok().map(str::to_owned),
            cost: get_u64(item, "cost")?,
            timestamp: get_s(item, "timestamp")?.to_owned(),
            date: get_s(item, "date")?.to_owned(),
            expires_at: get_i64(item, "expires_at")?,
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
    let status = record.outcome.as_str();
    let mut item = item(
        keys::request(&record.org, month, &record.request_id),
        [
            ("request_id", s(record.request_id.as_str())),
            ("organization_id", s(record.org.as_str())),
            ("user_id", s(record.user.as_str())),
            ("model", s(record.model.as_str())),
            ("requested_model", s(record.requested_model.as_str())),
            ("attempts", n(record.attempts)),
            ("input_tokens", n(record.input_tokens)),
            ("output_tokens", n(record.output_tokens)),
            ("duration_ms", n(record.duration_ms)),
            ("status", s(status)),
            ("cost", n(record.cost)),
            ("timestamp", s(record.timestamp.as_str())),
            ("date", s(record.date.as_str())),
            (TTL_ATTRIBUTE, n(record.expires_at)),
        ],
    );
    if let Some(message) = &record.error_message {
        item.insert("error_message".to_owned(), s(message.as_str()));
    }
    if let Some(key) = &record.api_key {
        item.insert("api_key_id".to_owned(), s(key.as_str()));
    }
    item
}

/// The outcome of asking for a slot in a minute window, with the window's count.
enum RateSlot {
    Taken(u64),
    Full(u64),
}

/// What each write of a settlement's transaction is, so its cancellation is read by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettleWrite {
    /// The month counter; its condition is that the request's hold is still there.
    Month,
    /// The request record; its condition is that the request was not settled before.
    Record,
    Day,
    /// The job item's answer; its condition is that this attempt still holds the item.
    JobItem,
}

impl DynamoStore {
    async fn read_month(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError> {
        self.get(keys::month(org, month))
            .await?
            .as_ref()
            .map(MonthCounter::try_from)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Takes a slot in the org's minute window if one is free: one conditional ADD.
    async fn take_rate_slot(&self, slot: &Slot) -> Result<RateSlot, StoreError> {
        let rate = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::rate_window(&slot.org, slot.minute))))
            .update_expression("ADD requests :one SET expires_at = :ttl")
            .condition_expression("attribute_not_exists(requests) OR requests < :limit")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(slot.expires_at))
            .expression_attribute_values(":limit", n(slot.limit))
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
    /// The give-back names the request in the window's `released` set, on condition it is not
    /// there yet: an SDK resend of it (after a lost answer) changes nothing, and so can never
    /// free another request's slot.
    async fn release_rate_slot(&self, taken: &Slot) -> Result<(), StoreError> {
        let slot = &taken.id;
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::rate_window(&taken.org, taken.minute))))
            .update_expression("ADD requests :minus_one, released :request")
            .condition_expression(
                "requests > :zero AND (attribute_not_exists(released) OR NOT contains(released, :id))",
            )
            .expression_attribute_values(":minus_one", n(-1))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":request", AttributeValue::Ss(vec![slot.clone()]))
            .expression_attribute_values(":id", s(slot.as_str()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        // Refused: the window holds no request to give back.
        applied(released).map(|_| ())
    }

    /// The rate slot, with the remembered access read at the same time, so confirming it costs no
    /// round trip of its own. `None` if the access changed (and the slot, if taken, is given back).
    async fn slot_on_confirmed_access(
        &self,
        a: &Admission,
    ) -> Result<Option<RateSlot>, StoreError> {
        let Some(check) = &a.access else {
            return self.take_rate_slot(&a.slot()).await.map(Some);
        };
        let slot = a.slot();
        let (rate, access) = tokio::join!(
            self.take_rate_slot(&slot),
            self.access_of(&a.org, &check.party)
        );
        let confirmed = match access {
            Ok(OrgAccess::Member(m)) => Ok(m.org.plan == check.plan),
            Ok(_) => Ok(false),
            Err(err) => Err(err),
        };
        if matches!(confirmed, Ok(true)) {
            return rate.map(Some);
        }
        // Nothing may stay written for a request admitted on access that no longer holds.
        if let Ok(RateSlot::Taken(_)) = rate {
            self.release_rate_slot(&a.slot()).await?;
        }
        confirmed.map(|_| None)
    }

    async fn access_of(&self, org: &OrgId, party: &Party) -> Result<OrgAccess, StoreError> {
        match party {
            Party::User(user) => crate::store::OrgStore::org_access(self, org, user).await,
            Party::Key(key) => crate::store::OrgStore::key_access(self, org, &key.hash).await,
        }
    }

    /// The month's message and the request's hold, under both limits, in one conditional update.
    /// Conditions cannot add, so the item keeps `committed` = settled tokens + live holds.
    /// `Ok(Err(item))` when a limit refused it (nothing written); the counter after it when in.
    async fn add_to_month(&self, a: &Admission) -> Result<Result<MonthCounter, Item>, StoreError> {
        // The hold's own absence makes the update apply once: if the SDK resends it after a lost
        // answer, the resend is refused and the hold it finds says the first one went through.
        let mut conditions = vec!["attribute_not_exists(#hold)"];
        let hold_name = keys::hold(&a.hold.request_id);
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::month(&a.org, &a.month))))
            .update_expression(
                "ADD messages :one, committed :hold, in_flight :one \
                 SET #hold = :hold_item, expires_at = :ttl",
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
        conditions.push("(attribute_not_exists(in_flight) OR in_flight < :in_flight_limit)");
        request = request.expression_attribute_values(":in_flight_limit", n(a.in_flight_limit));
        if let Some(limit) = a.messages_limit {
            conditions.push("(attribute_not_exists(messages) OR messages < :messages_limit)");
            request = request.expression_attribute_values(":messages_limit", n(limit));
        }
        if let Some(limit) = a.tokens_limit {
            conditions.push("(attribute_not_exists(committed) OR committed <= :committed_max)");
            request = request.expression_attribute_values(
                ":committed_max",
                n(limit.saturating_sub(a.hold.tokens)),
            );
        }
        request = request.condition_expression(conditions.join(" AND "));
        match request.send().metered(&self.metrics, Units::Write).await {
            Ok(out) => Ok(Ok(MonthCounter::try_from(
                &out.attributes.unwrap_or_default(),
            )?)),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    let old = c.item.clone().unwrap_or_default();
                    if old.contains_key(&hold_name) {
                        return Ok(Ok(MonthCounter::try_from(&old)?));
                    }
                    Ok(Err(old))
                }
                _ => Err(unavailable(err)),
            },
        }
    }

    /// The month counter's update of a settlement: releasing the hold when `with_hold`.
    fn month_write(
        &self,
        st: &Settlement,
        with_hold: bool,
    ) -> Result<TransactWriteItem, StoreError> {
        let change = &st.change;
        let committed = if with_hold {
            change.committed_releasing_hold
        } else {
            change.committed_without_hold
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(keys::month(&st.record.org, &st.month))))
            .expression_attribute_values(":committed", n(committed))
            .expression_attribute_values(":messages", n(change.messages))
            .expression_attribute_values(":tokens", n(change.tokens));
        let mut expression =
            "ADD committed :committed, messages :messages, tokens :tokens".to_owned();
        if with_hold {
            expression.push_str(", in_flight :in_flight REMOVE #hold");
            update = update
                .expression_attribute_values(":in_flight", n(MonthChange::IN_FLIGHT_RELEASED));
            update = update
                .expression_attribute_names("#hold", keys::hold(&st.record.request_id))
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
    }

    /// The day's aggregate update of a settlement, if the request counts there.
    fn day_write(&self, st: &Settlement) -> Result<Option<TransactWriteItem>, StoreError> {
        let Some(day) = &st.daily else {
            return Ok(None);
        };
        let org = &st.record.org;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(keys::day(org, &st.month, &day.date, &day.model))))
            .update_expression(
                "SET #date = :date, model = :model, organization_id = :org \
                 ADD message_count :messages, input_tokens :in, output_tokens :out, \
                 total_tokens :total, estimated_cost :cost",
            )
            .expression_attribute_names("#date", "date")
            .expression_attribute_values(":date", s(day.date.as_str()))
            .expression_attribute_values(":model", s(day.model.as_str()))
            .expression_attribute_values(":org", s(org.as_str()))
            .expression_attribute_values(":messages", n(day.messages))
            .expression_attribute_values(":in", n(day.input_tokens))
            .expression_attribute_values(":out", n(day.output_tokens))
            .expression_attribute_values(":total", n(day.total_tokens))
            .expression_attribute_values(":cost", n(day.cost))
            .build()
            .map_err(build_error)?;
        Ok(Some(TransactWriteItem::builder().update(update).build()))
    }

    /// The whole transaction of a settlement.
    fn settlement(
        &self,
        st: &Settlement,
        with_hold: bool,
    ) -> Result<Transaction<SettleWrite>, StoreError> {
        let mut transaction = Transaction::new();
        transaction.push(SettleWrite::Month, self.month_write(st, with_hold)?);
        transaction.push(
            SettleWrite::Record,
            super::table::put_new(self, record_item(&st.record, &st.month))?,
        );
        if let Some(day) = self.day_write(st)? {
            transaction.push(SettleWrite::Day, day);
        }
        if let Some(finish) = &st.job_item {
            for write in finish_writes(self, finish)? {
                transaction.push(SettleWrite::JobItem, write);
            }
        }
        Ok(transaction)
    }
}

#[async_trait]
impl MeterStore for DynamoStore {
    async fn take_slot(&self, slot: &Slot) -> Result<Option<u64>, StoreError> {
        Ok(match self.take_rate_slot(slot).await? {
            RateSlot::Taken(requests) => Some(requests),
            RateSlot::Full(_) => None,
        })
    }

    async fn give_slot_back(&self, slot: &Slot) -> Result<(), StoreError> {
        self.release_rate_slot(slot).await
    }

    async fn throttle(&self, t: &Throttle) -> Result<bool, StoreError> {
        let counted = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::throttle(t.kind, &t.subject, t.window))))
            .update_expression("ADD attempts :one SET expires_at = :ttl")
            .condition_expression("attribute_not_exists(attempts) OR attempts < :limit")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(t.expires_at))
            .expression_attribute_values(":limit", n(t.limit))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        applied(counted)
    }

    async fn recount_in_flight(
        &self,
        org: &OrgId,
        month: &str,
        seen: u64,
        holds: u64,
    ) -> Result<(), StoreError> {
        let recounted = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::month(org, month))))
            .update_expression("SET in_flight = :holds")
            .condition_expression("in_flight = :seen")
            .expression_attribute_values(":holds", n(holds))
            .expression_attribute_values(":seen", n(seen))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .metered(&self.metrics, Units::Write)
            .await;
        // Refused: another admission moved it meanwhile; the next try reads it again.
        applied(recounted).map(|_| ())
    }

    async fn throttled(&self, t: &Throttle) -> Result<u64, StoreError> {
        match self
            .get(keys::throttle(t.kind, &t.subject, t.window))
            .await?
        {
            Some(item) => get_u64(&item, "attempts"),
            None => Ok(0),
        }
    }

    async fn admit(&self, a: &Admission) -> Result<AdmitOutcome, StoreError> {
        // The rate window first: one conditional ADD on the window's own item.
        let requests_in_window = match self.slot_on_confirmed_access(a).await? {
            None => return Ok(AdmitOutcome::AccessChanged),
            Some(RateSlot::Full(requests)) => {
                return Ok(AdmitOutcome::RateLimited {
                    requests_in_window: requests,
                })
            }
            Some(RateSlot::Taken(requests)) => requests,
        };
        // Then the month. Whatever refuses it, the rate slot goes back: a refused request
        // consumes no counter.
        if a.tokens_limit.is_some_and(|l| a.hold.tokens > l) {
            self.release_rate_slot(&a.slot()).await?;
            return Ok(AdmitOutcome::MonthlyExceeded(
                self.read_month(&a.org, &a.month).await?,
            ));
        }
        match self.add_to_month(a).await {
            Ok(Ok(counter)) => Ok(AdmitOutcome::Admitted {
                requests_in_window,
                holds: counter.holds,
                committed: counter.committed,
            }),
            Ok(Err(old)) => {
                self.release_rate_slot(&a.slot()).await?;
                Ok(AdmitOutcome::MonthlyExceeded(MonthCounter::try_from(&old)?))
            }
            Err(err) => {
                self.release_rate_slot(&a.slot()).await?;
                Err(err)
            }
        }
    }

    async fn settle(&self, st: &Settlement) -> Result<(), StoreError> {
        // With its hold present, the month update releases it; if the hold is gone (released as
        // abandoned), the usage still counts.
        let mut with_hold = true;
        loop {
            let sent = self
                .settlement(st, with_hold)?
                .send_until_settled(self)
                .await;
            let refused = match sent {
                Ok(()) => return Ok(()),
                Err(TransactionFailure::Refused(refused)) => refused,
                Err(TransactionFailure::Conflict(err) | TransactionFailure::Unavailable(err)) => {
                    return Err(err)
                }
            };
            if refused.contains(&SettleWrite::Record) {
                // The record exists: this request was settled before. Nothing more to do.
                return Ok(());
            }
            if refused.contains(&SettleWrite::JobItem) {
                return Err(StoreError::Conflict("job item"));
            }
            if refused.contains(&SettleWrite::Month) && with_hold {
                with_hold = false;
                continue;
            }
            return Err(StoreError::Unavailable(format!(
                "settlement refused by {refused:?}"
            )));
        }
    }

    async fn month_counter(&self, org: &OrgId, month: &str) -> Result<MonthCounter, StoreError> {
        self.read_month(org, month).await
    }

    async fn daily_usage(&self, org: &OrgId, month: &str) -> Result<Vec<DailyUsage>, StoreError> {
        self.query_all(keys::days(org, month))
            .await?
            .iter()
            .map(DailyUsage::try_from)
            .collect()
    }

    async fn recent_requests(
        &self,
        org: &OrgId,
        month: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<RequestPage, StoreError> {
        let (items, next) = self
            .query_newest(keys::requests(org, month), limit, after)
            .await?;
        let requests = items
            .iter()
            .map(RequestRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        // DynamoDB says where it stopped even when nothing follows: a full page may be the last.
        Ok(RequestPage { requests, next })
    }

    #[cfg(any(test, feature = "test-support"))]
    async fn requests(&self, org: &OrgId, month: &str) -> Result<Vec<RequestRecord>, StoreError> {
        self.query_all(keys::requests(org, month))
            .await?
            .iter()
            .map(RequestRecord::try_from)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MeterStore;

    /// A store on a fresh table of the DynamoDB server the test command started, if any.
    async fn store() -> Option<DynamoStore> {
        let endpoint = std::env::var("GATEWAY_TEST_DYNAMODB_ENDPOINT").ok()?;
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        let table = format!("meter-{}", uuid::Uuid::new_v4().simple());
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), table);
        store.create_table_if_missing().await.ok()?;
        Some(store)
    }

    fn admission(org: &OrgId, request_id: &str) -> Admission {
        Admission {
            org: org.clone(),
            request_id: request_id.to_owned(),
            attempt: 0,
            minute: 33_000_000,
            requests_per_minute: 10,
            month: "2030-11".to_owned(),
            messages_limit: None,
            tokens_limit: None,
            in_flight_limit: 100,
            hold: Hold {
                request_id: request_id.to_owned(),
                model: "gemini-1.5-flash".to_owned(),
                tokens: 10,
                expires_at: 2_000_000_000,
            },
            rate_expires_at: 2_000_000_000,
            month_expires_at: 2_000_000_000,
            access: None,
        }
    }

    #[tokio::test]
    async fn a_resent_give_back_frees_no_other_requests_slot() {
        let Some(store) = store().await else {
            assert!(
                std::env::var_os("CI").is_none(),
                "GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI"
            );
            return;
        };
        // GIVEN two requests in a minute's window
        let org = OrgId::generate();
        for id in ["first", "second"] {
            let admitted = store.admit(&admission(&org, id)).await.expect("admit");
            assert!(
                matches!(admitted, AdmitOutcome::Admitted { .. }),
                "{admitted:?}"
            );
        }
        // WHEN the first's slot is given back, and the give-back sent again (an SDK resend)
        store
            .release_rate_slot(&admission(&org, "first").slot())
            .await
            .expect("release");
        store
            .release_rate_slot(&admission(&org, "first").slot())
            .await
            .expect("resent");
        // THEN only one slot was freed: the second request still holds its own
        let window = store
            .get(keys::rate_window(&org, 33_000_000))
            .await
            .expect("read")
            .expect("window");
        assert_eq!(get_u64(&window, "requests").expect("requests"), 1);
    }
}
