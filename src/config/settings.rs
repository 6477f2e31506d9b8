//! What the rest of Strait gets from the config: validated, secrets read,
//! every default applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use strait_actors::{ClusterSpec, FlowSpec};

use super::cluster::{redact, REDACTED};
pub use super::file::LogFormat;

/// A validated config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Every flow, in the file's order.
    pub flows: Vec<FlowSpec>,
    /// The HTTP server.
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
    /// What `/metrics` exports.
    pub metrics: MetricsSettings,
    /// How long a clean stop may take (also in every flow's tuning).
    pub shutdown_timeout: Duration,
    /// Every cluster in the file, by alias, whether a flow uses it or not.
    pub clusters: BTreeMap<String, ClusterSpec>,
    /// Per cluster alias, the properties given as `{ env }` or `{ file }`:
    /// secret whatever their name. See [`Settings::is_secret`].
    pub secret_properties: BTreeMap<String, BTreeSet<String>>,
}

impl Settings {
    /// True when the property `key` of cluster `alias` must never be shown:
    /// its name says so ([`redact`]) or it was read from `{ env }` / `{ file }`.
    pub fn is_secret(&self, alias: &str, key: &str) -> bool {
        redact(key)
            || self
                .secret_properties
                .get(alias)
                .is_some_and(|keys| keys.contains(key))
    }

    /// A cluster's properties, fit to print: secret values replaced by `<redacted>`.
    pub fn printable_properties(&self, cluster: &ClusterSpec) -> BTreeMap<String, String> {
        cluster
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if self.is_secret(&cluster.alias, k) {
                    REDACTED.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }

    /// The flow with this name.
    pub fn flow(&self, name: &str) -> Option<&FlowSpec> {
        self.flows.iter().find(|f| f.name == name)
    }
}

/// `[http]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where the server listens.
    pub listen: SocketAddr,
}

/// `[metrics]`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Per-partition metrics carry a `partition` label.
    pub partition_labels: bool,
}

/// `[log]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// A `tracing` filter: a level or a directive list. `RUST_LOG` wins over it.
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
}
