//! Environment variables that override keys of the config file:
//! `STRAIT__` then the key's path, with `__` between its parts.
//!
//! The `config` crate's own `Environment` source splits every name on `__`
//! and lowercases it, which cannot reach librdkafka properties (their names
//! hold dots) nor clusters whose names hold capitals or dashes. This source
//! sees the file's values first and resolves each variable against them:
//!
//! - `STRAIT__HTTP__LISTEN` → `http.listen`
//! - `STRAIT__CLUSTERS__EAST__BOOTSTRAP_SERVERS` → `clusters.east.bootstrap_servers`
//!   (cluster names match ignoring case, and `_` matches `-`; an unknown name
//!   defines a new cluster)
//! - `STRAIT__CLUSTERS__EAST__KAFKA__SASL__PASSWORD` or `…__KAFKA__SASL_PASSWORD`
//!   → `clusters.east.kafka."sasl.password"` (`__` and `_` both become `.`)
//! - `STRAIT__FLOWS__0__TOPICS=orders,payments` → `flows[0].topics`: a flow
//!   by its index in the file; list keys take comma-separated values
//! - `STRAIT__FLOWS__0__TOPIC_CONFIG_OVERRIDES__RETENTION_MS` →
//!   `flows[0].topic_config_overrides."retention.ms"`
//!
//! `STRAIT_CONFIG` (one underscore) is not a key: it names the file.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use config::{Map, Source, Value, ValueKind};

use super::cluster::property_key;

/// What every overriding variable's name starts with.
pub const PREFIX: &str = "STRAIT__";
const SEPARATOR: &str = "__";

/// Flow keys whose values are lists: from the environment, comma-separated.
const LIST_KEYS: &[&str] = &["topics", "topics_exclude", "topic_config_exclude"];

/// A `config` source that applies `STRAIT__*` variables over what the
/// sources before it (the file) collected.
#[derive(Clone)]
pub(crate) struct EnvOverrides {
    /// The variables whose names start with [`PREFIX`], sorted by name.
    vars: Vec<(String, String)>,
    /// Which variable set which key (as errors name keys), filled on collection.
    applied: Arc<Mutex<BTreeMap<String, String>>>,
}

// Values may be secrets: print names only.
impl fmt::Debug for EnvOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.vars.iter().map(|(name, _)| name))
            .finish()
    }
}

impl EnvOverrides {
    /// Keeps the variables that start with [`PREFIX`] (ignoring case).
    pub(crate) fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(name, _)| {
                name.len() > PREFIX.len()
                    && name
                        .get(..PREFIX.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
            })
            .collect();
        vars.sort();
        Self {
            vars,
            applied: Arc::default(),
        }
    }

    /// Config key → the variable that set it, once the config is built.
    pub(crate) fn applied(&self) -> BTreeMap<String, String> {
        self.applied.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Source for EnvOverrides {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    /// Only what [`Source::collect_to`] does makes sense for this source: on
    /// its own, it sees no file to resolve names against.
    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        let mut root = Value::new(None, Map::<String, Value>::new());
        self.collect_to(&mut root)?;
        match root.kind {
            ValueKind::Table(t) => Ok(t),
            _ => Ok(Map::new()),
        }
    }

    fn collect_to(&self, cache: &mut Value) -> Result<(), config::ConfigError> {
        let mut applied = BTreeMap::new();
        for (name, value) in &self.vars {
            let path: Vec<String> = name[PREFIX.len()..]
                .split(SEPARATOR)
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(config::ConfigError::Message(format!(
                    "environment variable {name}: empty key part; parts are separated by \
                     exactly two underscores, as in STRAIT__HTTP__LISTEN"
                )));
            }
            let key = apply(cache, &path, value).map_err(|reason| {
                config::ConfigError::Message(format!("environment variable {name}: {reason}"))
            })?;
            applied.insert(key, name.clone());
        }
        if let Ok(mut shared) = self.applied.lock() {
            shared.extend(applied);
        }
        Ok(())
    }
}

/// Sets the value a variable names; returns the key as errors name it.
fn apply(root: &mut Value, path: &[String], value: &str) -> Result<String, String> {
    let string = || Value::new(None, ValueKind::String(value.to_string()));
    match path {
        [top, name, rest @ ..] if top == "clusters" && !rest.is_empty() => {
            let clusters = child_table(root, "clusters")?;
            let name = find_key(clusters, name, normalize_name).unwrap_or_else(|| name.clone());
            let cluster = child_table(clusters, &name)?;
            match rest {
                [kafka, property @ ..] if kafka == "kafka" && !property.is_empty() => {
                    let property = dotted(property);
                    let kafka = child_table(cluster, "kafka")?;
                    let property = find_key(kafka, &property, |k| k.to_ascii_lowercase())
                        .unwrap_or(property);
                    table(kafka)?.insert(property.clone(), string());
                    Ok(property_key(&name, &property))
                }
                [field] => {
                    table(cluster)?.insert(field.clone(), string());
                    Ok(format!("clusters.{name}.{field}"))
                }
                _ => Err(format!(
                    "`clusters.{name}.{}` is not a key; a cluster has bootstrap_servers and kafka.<property>",
                    rest.join(".")
                )),
            }
        }
        [top, index, rest @ ..] if top == "flows" && !rest.is_empty() => {
            let flows = match table(root)?.get_mut("flows").map(|v| &mut v.kind) {
                Some(ValueKind::Array(flows)) => flows,
                _ => return Err("the file defines no [[flows]] to override".to_string()),
            };
            let count = flows.len();
            let i: usize = index.parse().ok().filter(|i| *i < count).ok_or_else(|| {
                format!(
                    "`{index}` is not the index of a flow; the file defines {count} flow(s), \
                         numbered from 0"
                )
            })?;
            let flow = &mut flows[i];
            match rest {
                [field, name @ ..] if field == "topic_config_overrides" && !name.is_empty() => {
                    let name = dotted(name);
                    let overrides = child_table(flow, field)?;
                    table(overrides)?.insert(name.clone(), string());
                    Ok(format!("flows[{i}].topic_config_overrides.\"{name}\""))
                }
                [field] => {
                    let v = if LIST_KEYS.contains(&field.as_str()) {
                        let items = value
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(|s| Value::new(None, ValueKind::String(s.to_string())))
                            .collect();
                        Value::new(None, ValueKind::Array(items))
                    } else {
                        string()
                    };
                    table(flow)?.insert(field.clone(), v);
                    Ok(format!("flows[{i}].{field}"))
                }
                _ => Err(format!("`flows[{i}].{}` is not a key", rest.join("."))),
            }
        }
        [parents @ .., field] => {
            let mut at = root;
            for p in parents {
                at = child_table(at, p)?;
            }
            table(at)?.insert(field.clone(), string());
            Ok(path.join("."))
        }
        [] => Err("no key after the prefix".to_string()),
    }
}

/// The table `value` is; an error if it is something else.
fn table(value: &mut Value) -> Result<&mut Map<String, Value>, String> {
    match &mut value.kind {
        ValueKind::Table(t) => Ok(t),
        _ => Err("overrides a key inside a value that is not a table".to_string()),
    }
}

/// The table under `key`, created empty when absent.
fn child_table<'a>(parent: &'a mut Value, key: &str) -> Result<&'a mut Value, String> {
    let t = table(parent)?;
    let child = t
        .entry(key.to_string())
        .or_insert_with(|| Value::new(None, Map::<String, Value>::new()));
    match child.kind {
        ValueKind::Table(_) => Ok(child),
        _ => Err(format!("`{key}` is not a table in the file")),
    }
}

/// The existing key of `value`'s table that equals `wanted` once both are normalized.
fn find_key(value: &Value, wanted: &str, normalize: fn(&str) -> String) -> Option<String> {
    let ValueKind::Table(t) = &value.kind else {
        return None;
    };
    let wanted = normalize(wanted);
    let mut keys: Vec<&String> = t.keys().filter(|k| normalize(k) == wanted).collect();
    keys.sort();
    keys.first().map(|k| k.to_string())
}

fn normalize_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// `["sasl", "password"]` or `["sasl_password"]` → `sasl.password`.
fn dotted(parts: &[String]) -> String {
    parts.join(".").replace('_', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keeps_only_double_underscore_prefix() {
        let env = EnvOverrides::new(vars(&[
            ("STRAIT_CONFIG", "/etc/strait.toml"),
            ("STRAIT__HTTP__LISTEN", "0.0.0.0:1"),
            ("PATH", "/bin"),
        ]));
        assert_eq!(format!("{env:?}"), "[\"STRAIT__HTTP__LISTEN\"]");
    }

    #[test]
    fn dotted_property_names() {
        assert_eq!(dotted(&["sasl".into(), "password".into()]), "sasl.password");
        assert_eq!(dotted(&["ssl_key_password".into()]), "ssl.key.password");
    }
}
