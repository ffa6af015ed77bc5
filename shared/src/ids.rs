//! Identifier newtypes, so a user id can never be passed where an org id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fixed number for `key`, to spread work keyed by it (not for anything secret or stored).
pub(crate) fn spread(key: &str) -> u64 {
    key.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user, as named in the `sub` claim of their tokens.
    UserId
);
id_type!(
    /// An organisation (tenant), as sent in `X-Current-Org`.
    OrgId
);
id_type!(
    /// A plan's id, such as `free`.
    PlanId
);
id_type!(
    /// A background job.
    JobId
);
id_type!(
    /// A model's public id, such as `gemini-1.5-flash`.
    ModelId
);
id_type!(
    /// An org's API key (its id, not its secret).
    KeyId
);
