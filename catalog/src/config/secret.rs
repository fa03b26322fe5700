//! Settings that must never be printed.

use serde::{Deserialize, Serialize};

/// A setting that must never be printed: `***` in `Debug` (and so in logs and error
/// messages that show a configuration), its value only through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that needs it (a client's credentials).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

/// Whether a librdkafka setting holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, …): its value is never printed.
pub fn is_secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "token",
        "jaas",
        "key.pem",
        "credentials",
    ]
    .iter()
    .any(|w| name.contains(w))
}
