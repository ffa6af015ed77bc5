//! Secrets in AWS: the token signing secret and the provider API keys are read from AWS Secrets
//! Manager at cold start, once, when environment variables name them:
//!
//! - `JWT_SECRET_ID`: a secret whose value is the signing secret (instead of `JWT_SECRET`);
//! - `PROVIDER_KEYS_SECRET_ID`: a secret whose value is a JSON object of provider keys,
//!   `{"OPENAI_API_KEY": "…", "ANTHROPIC_API_KEY": "…", "GEMINI_API_KEY": "…"}` (an empty or
//!   missing key leaves that provider's plain variable, if any, in force).
//!
//! Each function is given only the names (and the read permission) of the secrets it uses, so
//! one that calls no provider never reads the provider keys. Both are read at once. Without
//! these variables nothing is read: plain environment variables work as before (locally).

use std::collections::HashMap;

use crate::catalog::ProviderKind;
use crate::config::{env, ConfigError, ProviderSettings};
use crate::secret::Secret;

/// Which secrets the environment names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    pub jwt_secret: Option<String>,
    pub provider_keys: Option<String>,
}

/// What was read.
#[derive(Default)]
pub struct Fetched {
    pub jwt_secret: Option<Secret>,
    /// By variable name (`OPENAI_API_KEY`, …), empty values left out.
    pub provider_keys: HashMap<String, Secret>,
}

/// Why the secrets could not be read. Says which secret, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("reading the secret {id} from Secrets Manager failed: {reason}")]
    Unreadable { id: String, reason: String },
    #[error("the secret {id} is not what {variable} names: {reason}")]
    Malformed {
        id: String,
        variable: &'static str,
        reason: String,
    },
}

impl Named {
    /// The secrets the environment names. Naming the signing secret twice (`JWT_SECRET` and
    /// `JWT_SECRET_ID`) is refused: which one signs tokens must not be a guess.
    pub fn from_env() -> Result<Named, ConfigError> {
        let named = Named {
            jwt_secret: env("JWT_SECRET_ID"),
            provider_keys: env("PROVIDER_KEYS_SECRET_ID"),
        };
        if named.jwt_secret.is_some() && env("JWT_SECRET").is_some() {
            return Err(ConfigError::Invalid {
                name: "JWT_SECRET_ID",
                reason: "set either JWT_SECRET or JWT_SECRET_ID, not both".into(),
            });
        }
        Ok(named)
    }

    pub fn is_empty(&self) -> bool {
        self.jwt_secret.is_none() && self.provider_keys.is_none()
    }
}

/// Reads the named secrets from Secrets Manager, all at once.
pub async fn fetch(aws: &aws_types::SdkConfig, named: &Named) -> Result<Fetched, SecretsError> {
    if named.is_empty() {
        return Ok(Fetched::default());
    }
    let client = aws_sdk_secretsmanager::Client::new(aws);
    let read = |id: Option<&String>| {
        let client = client.clone();
        let id = id.cloned();
        async move {
            match id {
                Some(id) => read_secret(&client, &id)
                    .await
                    .map(|value| Some((id, value))),
                None => Ok(None),
            }
        }
    };
    let (jwt, keys) = futures::try_join!(
        read(named.jwt_secret.as_ref()),
        read(named.provider_keys.as_ref())
    )?;
    let mut fetched = Fetched {
        jwt_secret: jwt.map(|(_, value)| value),
        ..Fetched::default()
    };
    if let Some((id, value)) = keys {
        fetched.provider_keys = provider_keys(&id, &value)?;
    }
    Ok(fetched)
}

async fn read_secret(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<Secret, SecretsError> {
    let unreadable = |reason: String| SecretsError::Unreadable {
        id: id.to_owned(),
        reason,
    };
    let output = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|err| {
            unreadable(aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string())
        })?;
    output
        .secret_string()
        .map(Secret::new)
        .ok_or_else(|| unreadable("it holds no text value".into()))
}

/// The keys in a provider-keys secret's JSON object; anything else in it is refused by name.
fn provider_keys(id: &str, value: &Secret) -> Result<HashMap<String, Secret>, SecretsError> {
    let malformed = |reason: String| SecretsError::Malformed {
        id: id.to_owned(),
        variable: "PROVIDER_KEYS_SECRET_ID",
        reason,
    };
    let object: HashMap<String, serde_json::Value> = serde_json::from_str(value.expose())
        .map_err(|_| malformed("expected a JSON object of provider keys".into()))?;
    let mut keys = HashMap::new();
    for (name, value) in object {
        if !ProviderKind::ALL.iter().any(|kind| kind.key_name() == name) {
            let known: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.key_name()).collect();
            return Err(malformed(format!(
                "unknown name {name:?} (expected {})",
                known.join(", ")
            )));
        }
        match value {
            serde_json::Value::String(key) if !key.trim().is_empty() => {
                keys.insert(name, Secret::new(key.trim()));
            }
            serde_json::Value::String(_) | serde_json::Value::Null => {}
            _ => return Err(malformed(format!("{name} must be a string"))),
        }
    }
    Ok(keys)
}

impl Fetched {
    /// Puts the provider keys read into `providers`.
    pub fn apply_keys(&self, providers: &mut ProviderSettings) {
        for kind in ProviderKind::ALL {
            if let Some(key) = self.provider_keys.get(kind.key_name()) {
                providers.endpoint_mut(kind).api_key = Some(key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_are_read_by_name_and_blank_ones_left_out() {
        let value = Secret::new(
            r#"{"OPENAI_API_KEY":" sk-1 ","ANTHROPIC_API_KEY":"","GEMINI_API_KEY":null}"#,
        );
        let keys = provider_keys("arn:keys", &value).expect("keys");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["OPENAI_API_KEY"].expose(), "sk-1");
    }

    #[test]
    fn a_malformed_keys_secret_is_refused_without_its_value() {
        for raw in [
            "sk-plain-text-key",
            r#"{"OPENAI_KEY":"sk-secret-value"}"#,
            r#"{"OPENAI_API_KEY":42}"#,
        ] {
            let err = provider_keys("arn:keys", &Secret::new(raw))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("arn:keys"), "{err}");
            assert!(!err.contains("sk-"), "the value leaked: {err}");
        }
    }
}
