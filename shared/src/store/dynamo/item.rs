//! Reading and writing DynamoDB attributes: the helpers every item conversion of the store uses.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::store::StoreError;

/// One item, as the SDK reads and writes it.
pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// An item holding only its key.
pub(super) fn key((pk, sk): (String, String)) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// An item: its key and these attributes.
pub(super) fn item(
    at: (String, String),
    attributes: impl IntoIterator<Item = (&'static str, AttributeValue)>,
) -> Item {
    let mut item = key(at);
    item.extend(
        attributes
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    item
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt(format!(
            "item lacks string attribute {name}"
        ))),
    }
}

/// A number attribute, 0 when absent; negative stored values read as 0.
pub(super) fn get_u64(item: &Item, name: &str) -> Result<u64, StoreError> {
    match item.get(name) {
        None => Ok(0),
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map(|v| u64::try_from(v).unwrap_or(0))
            .map_err(|_| StoreError::Corrupt(format!("{name} is not an integer: {v}"))),
        Some(_) => Err(StoreError::Corrupt(format!("{name} is not a number"))),
    }
}

/// A number attribute holding epoch seconds.
pub(super) fn get_i64(item: &Item, name: &str) -> Result<i64, StoreError> {
    Ok(i64::try_from(get_u64(item, name)?).unwrap_or(i64::MAX))
}
