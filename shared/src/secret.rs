//! A wrapper for secrets (API keys, signing keys) that never prints its contents.

use std::fmt;

/// A secret string. `Debug` and `Display` print `***`, so it cannot leak through a log line or an
/// error message by accident; the value is read only where it is used, with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Removes every occurrence of this secret from `text` (upstream error messages sometimes echo
    /// the key they were given).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&self.0, "***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::new("sk-very-secret");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "sk-very-secret");
    }

    #[test]
    fn scrubs_itself_from_text() {
        let secret = Secret::new("sk-very-secret");
        assert_eq!(
            secret.scrub("Incorrect API key provided: sk-very-secret."),
            "Incorrect API key provided: ***."
        );
    }
}
