//! `[clusters.NAME]`: where a cluster is and how to reach it, with the
//! librdkafka properties passed through and secrets read at load time.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::error::ConfigError;

/// What `Debug` and status output print instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// One named cluster. The name (the table's key) is its alias: flows refer to
/// it, `${source}` in a rename format expands to it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Comma-separated `host:port` list the clients bootstrap from
    /// (librdkafka's `bootstrap.servers`). Required, non-empty.
    pub bootstrap_servers: String,
    /// Any librdkafka property, passed through to every client of this
    /// cluster (consumer, producer, admin). Values may be strings, numbers or
    /// booleans (all passed as strings), or a secret read at load time:
    /// `{ env = "VAR" }` or `{ file = "PATH" }`.
    #[serde(default)]
    pub kafka: BTreeMap<String, PropertyValue>,
}

// The kafka table may hold passwords given inline: print only what is safe.
impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kafka: BTreeMap<&str, String> = self
            .kafka
            .iter()
            .map(|(k, v)| {
                let shown = match v {
                    PropertyValue::Plain(s) if !redact(k) => format!("{s:?}"),
                    PropertyValue::Plain(_) => REDACTED.to_string(),
                    other => format!("{other:?}"),
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("ClusterConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("kafka", &kafka)
            .finish()
    }
}

/// A librdkafka property's value as written in the config.
#[derive(Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// Given inline; numbers and booleans are turned into their text.
    Plain(String),
    /// `{ env = "VAR" }`: the value of an environment variable.
    Env(String),
    /// `{ file = "PATH" }`: the contents of a file, without a trailing newline.
    File(PathBuf),
}

// Never print an inline value: its key alone says whether it is secret.
impl fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain(..)"),
            Self::Env(var) => write!(f, "{{ env = {var:?} }}"),
            Self::File(path) => write!(f, "{{ file = {:?} }}", path.display().to_string()),
        }
    }
}

impl PropertyValue {
    /// True for `{ env }` and `{ file }`: always treated as secret.
    pub fn is_secret_ref(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The value to hand to librdkafka: inline values as they are, secrets read
    /// now. Errors name `key` and the variable or file, never the value.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        let secret_err = |reason: String| ConfigError::Secret {
            key: key.to_string(),
            reason,
        };
        match self {
            Self::Plain(s) => Ok(s.clone()),
            Self::Env(var) => match std::env::var(var) {
                Ok(v) if v.is_empty() => Err(secret_err(format!(
                    "environment variable {var} is set but empty"
                ))),
                Ok(v) => Ok(v),
                Err(std::env::VarError::NotPresent) => {
                    Err(secret_err(format!("environment variable {var} is not set")))
                }
                Err(std::env::VarError::NotUnicode(_)) => Err(secret_err(format!(
                    "environment variable {var} is not valid UTF-8"
                ))),
            },
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| secret_err(format!("cannot read file {}: {e}", path.display())))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(secret_err(format!("file {} is empty", path.display())));
                }
                Ok(value.to_string())
            }
        }
    }
}

const PROPERTY_VALUE_EXPECTED: &str =
    "a string, a number, a boolean, { env = \"VAR\" } or { file = \"PATH\" }";

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PropertyValueVisitor)
    }
}

struct PropertyValueVisitor;

// Error messages here never quote the value: it may be a password.
impl<'de> Visitor<'de> for PropertyValueVisitor {
    type Value = PropertyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PROPERTY_VALUE_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(PropertyValue::Plain(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "a property needs a value: {PROPERTY_VALUE_EXPECTED}"
        )))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom(format!(
            "a list is not a property value; expected {PROPERTY_VALUE_EXPECTED} \
             (librdkafka lists are comma-separated strings)"
        )))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: Option<PropertyValue> = None;
        while let Some(kind) = map.next_key::<String>()? {
            let source: String = map.next_value()?;
            let value = match kind.as_str() {
                "env" => PropertyValue::Env(source),
                "file" => PropertyValue::File(PathBuf::from(source)),
                other => {
                    return Err(de::Error::custom(format!(
                        "`{other}` is not a kind of secret; a secret is \
                         {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"
                    )))
                }
            };
            if found.replace(value).is_some() {
                return Err(de::Error::custom(
                    "a secret is either { env = \"VAR\" } or { file = \"PATH\" }, not both",
                ));
            }
        }
        found.ok_or_else(|| {
            de::Error::custom(
                "an empty table is not a secret; use { env = \"VAR\" } or { file = \"PATH\" }",
            )
        })
    }
}

/// True when a librdkafka property's value must never be shown (in logs,
/// status, metrics or errors): every `sasl.*` property, `ssl.key.pem`, and any
/// property whose name mentions a password or a secret.
///
/// Properties given as `{ env }` or `{ file }` are secret whatever their name:
/// see [`super::Settings::is_secret`].
pub fn redact(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.starts_with("sasl.")
        || key == "ssl.key.pem"
        || key.contains("password")
        || key.contains("secret")
}

/// How a cluster's property is named in messages: `clusters.east.kafka."sasl.password"`.
pub(crate) fn property_key(cluster: &str, property: &str) -> String {
    format!("clusters.{cluster}.kafka.\"{property}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_sasl_passwords_and_private_keys() {
        for key in [
            "sasl.password",
            "sasl.username",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "SASL.PASSWORD",
        ] {
            assert!(redact(key), "{key}");
        }
        for key in [
            "security.protocol",
            "ssl.ca.location",
            "bootstrap.servers",
            "client.id",
        ] {
            assert!(!redact(key), "{key}");
        }
    }

    #[test]
    fn debug_never_prints_inline_secrets() {
        let mut kafka = BTreeMap::new();
        kafka.insert(
            "sasl.password".to_string(),
            PropertyValue::Plain("hunter2".into()),
        );
        kafka.insert(
            "client.id".to_string(),
            PropertyValue::Plain("strait-1".into()),
        );
        kafka.insert(
            "ssl.key.password".to_string(),
            PropertyValue::Env("KEY_PASS".into()),
        );
        let c = ClusterConfig {
            bootstrap_servers: "b:9092".into(),
            kafka,
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(
            dbg.contains("strait-1") && dbg.contains("KEY_PASS"),
            "{dbg}"
        );
        assert_eq!(
            format!("{:?}", PropertyValue::Plain("x".into())),
            "Plain(..)"
        );
    }

    #[test]
    fn file_secret_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        let v = PropertyValue::File(path.clone())
            .resolve("k")
            .expect("reads");
        assert_eq!(v, "s3cret");
        std::fs::write(&path, "").expect("write");
        let err = PropertyValue::File(path)
            .resolve("k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is empty"), "{err}");
    }
}
