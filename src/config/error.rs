//! What can be wrong with a config: one variant per kind of problem, each
//! displayed as one line that names the key, the value and what is allowed.
//!
//! No variant ever holds a secret's value: secrets are named by their key and
//! by where they were to be read from (an environment variable or a file).

use std::path::PathBuf;

use strait_actors::SpecError;
use thiserror::Error;

/// A config that Strait refuses, found before any connection is made.
/// The binary exits with code 2 on any of these.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {reason}", path.display())]
    Read {
        /// The file named on the command line or by `STRAIT_CONFIG`.
        path: PathBuf,
        /// Why, as the operating system put it.
        reason: String,
    },
    /// The config file is not valid TOML, YAML or JSON.
    #[error("config file {} is not valid {format}: {reason}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The format its extension selected: TOML, YAML or JSON.
        format: &'static str,
        /// The parser's message, on one line.
        reason: String,
    },
    /// A key that Strait does not know.
    #[error("{key}: unknown key; allowed here: {allowed}{}", with_hint(.hint))]
    UnknownKey {
        /// The full key, such as `flows[0].topic`.
        key: String,
        /// The keys allowed at that place.
        allowed: String,
        /// What was probably meant, such as "did you mean `topics`?".
        hint: Option<String>,
    },
    /// A required key is absent.
    #[error("{key}: required, but missing")]
    Missing {
        /// The full key, such as `clusters.east.bootstrap_servers`.
        key: String,
    },
    /// A key's value is not allowed.
    #[error("{key}: {message}")]
    Invalid {
        /// The full key, such as `flows[0].source`.
        key: String,
        /// The value and what is allowed instead.
        message: String,
    },
    /// A secret (`{ env = "VAR" }` or `{ file = "PATH" }`) could not be read.
    #[error("{key}: cannot read the secret: {reason}")]
    Secret {
        /// The property, such as `clusters.east.kafka."sasl.password"`.
        key: String,
        /// Names the variable or the file, never the value.
        reason: String,
    },
    /// A topic pattern or a rename format is invalid (the message names the key).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The problem lies in a value set by an environment variable, not the file.
    #[error("{error} (set by environment variable {var})")]
    FromEnv {
        /// The variable, such as `STRAIT__HTTP__LISTEN`.
        var: String,
        /// The problem itself.
        error: Box<ConfigError>,
    },
}

fn with_hint(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

impl ConfigError {
    /// An invalid value at `key`; `message` says what the value is and what is allowed.
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The config key the problem is at, when it is at one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Syntax { .. } => None,
            Self::UnknownKey { key, .. }
            | Self::Missing { key }
            | Self::Invalid { key, .. }
            | Self::Secret { key, .. } => Some(key),
            Self::Spec(SpecError::BadRegex { key, .. })
            | Self::Spec(SpecError::BadRenameFormat { key, .. }) => Some(key),
            Self::FromEnv { error, .. } => error.key(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_key() {
        let errors = [
            ConfigError::UnknownKey {
                key: "flows[0].topic".into(),
                allowed: "`topics`, `name`".into(),
                hint: Some("did you mean `topics`?".into()),
            },
            ConfigError::Missing {
                key: "clusters.east.bootstrap_servers".into(),
            },
            ConfigError::invalid("http.listen", "\"x\" is not an address"),
            ConfigError::FromEnv {
                var: "STRAIT__HTTP__LISTEN".into(),
                error: Box::new(ConfigError::invalid("http.listen", "bad")),
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            let key = e.key().expect("has a key");
            assert!(msg.starts_with(key), "{msg}");
        }
    }
}
