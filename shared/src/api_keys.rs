//! Org API keys: machine credentials that act for one org, under its plan, limits and metering.
//! A key is 32 random bytes behind a recognisable prefix (`sk-gw-…`); its secret is shown once,
//! and only an HMAC-SHA256 of it, keyed by the gateway's secret, is stored and looked up. Random
//! keys need no slow hash: no one can guess their way to a hash without the gateway's key.

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock;
use crate::error::{AuthError, GatewayError};
use crate::ids::{KeyId, OrgId, UserId};
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::{ApiKeyRecord, KeyIdentity, StoreError};

/// What every key starts with, so a key is told apart from a user's token at a glance.
pub const PREFIX: &str = "sk-gw-";
/// How much of a key is kept to tell keys apart: the prefix and the first characters.
const SHOWN_CHARS: usize = PREFIX.len() + 6;
/// How often one process notes a key's last use.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Whether a bearer token is an API key rather than a user's token.
pub fn is_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Hashes presented keys with the gateway's secret.
#[derive(Clone)]
pub struct KeyHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(***)")
    }
}

impl KeyHasher {
    /// A hasher keyed by `secret`, domain-separated so it never equals another use of it.
    pub fn new(secret: &Secret) -> KeyHasher {
        let mut key = b"ai-gateway api keys\0".to_vec();
        key.extend_from_slice(secret.expose().as_bytes());
        KeyHasher { key }
    }

    /// The hex HMAC-SHA256 of a presented key.
    pub fn hash(&self, presented: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes a key of any length; this cannot happen.
            return String::new();
        };
        mac.update(presented.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A key just made: its secret, to show once, and what is stored of it.
#[derive(Debug)]
pub struct NewKey {
    pub secret: Secret,
    pub record: ApiKeyRecord,
}

/// Makes a key for `org`, named `name`, created by `user`.
pub fn generate(
    state: &AppState,
    org: &OrgId,
    name: String,
    user: &UserId,
) -> Result<NewKey, GatewayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| GatewayError::Internal(format!("no randomness for a key: {e}")))?;
    let secret = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let record = ApiKeyRecord {
        id: KeyId::from(uuid::Uuid::now_v7().to_string()),
        org: org.clone(),
        name,
        prefix: format!("{}…", &secret[..SHOWN_CHARS]),
        hash: state.key_hasher.hash(&secret),
        created_by: user.clone(),
        created_at: clock::rfc3339(state.clock.now()),
        last_used_at: None,
    };
    Ok(NewKey {
        secret: Secret::new(secret),
        record,
    })
}

/// The key a caller presented, as a party of its org: remembered if this process read it
/// recently (admission then confirms it still exists), else read. 401 if there is no such key.
pub async fn resolve(
    state: &AppState,
    presented: &str,
) -> Result<(KeyIdentity, OrgId), GatewayError> {
    let hash = state.key_hasher.hash(presented);
    let record = match state.access.recall_key(&hash) {
        Some(record) => record,
        None => {
            let record = state
                .stores
                .keys
                .key_by_hash(&hash)
                .await?
                .ok_or(AuthError::InvalidApiKey)?;
            state.access.remember_key(&record);
            record
        }
    };
    // Found by its hash already; compared again in constant time all the same.
    if !bool::from(record.hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Err(AuthError::InvalidApiKey.into());
    }
    touch(state, &record);
    let identity = KeyIdentity {
        id: record.id,
        hash: record.hash,
        created_by: record.created_by,
    };
    Ok((identity, record.org))
}

/// Notes the key's use in the background, at most once a minute per process.
fn touch(state: &AppState, record: &ApiKeyRecord) {
    if !state.access.due_for_touch(&record.hash, TOUCH_EVERY) {
        return;
    }
    let (keys, hash) = (state.stores.keys.clone(), record.hash.clone());
    let at = clock::rfc3339(state.clock.now());
    tokio::spawn(async move {
        if let Err(error) = keys.touch_key(&hash, &at).await {
            log_touch_failure(&error);
        }
    });
}

fn log_touch_failure(error: &StoreError) {
    tracing::warn!(%error, "an API key's last use could not be noted");
}

/// The instant a key was last noted as used, per process; see [`touch`].
pub(crate) type Touches = std::collections::HashMap<String, Instant>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_stable() {
        let one = KeyHasher::new(&Secret::new("first-secret-first-secret-first-secret"));
        let two = KeyHasher::new(&Secret::new("other-secret-other-secret-other-secret"));
        let key = "sk-gw-abcdef";
        assert_eq!(one.hash(key), one.hash(key));
        assert_eq!(one.hash(key).len(), 64);
        assert_ne!(one.hash(key), two.hash(key));
        assert_ne!(one.hash(key), one.hash("sk-gw-abcdeg"));
    }

    #[test]
    fn keys_are_told_from_tokens() {
        assert!(is_key("sk-gw-abc"));
        assert!(!is_key("eyJhbGciOiJIUzI1NiJ9.e30.x"));
    }
}
