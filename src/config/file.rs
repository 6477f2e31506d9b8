//! The config file's top level: clusters, flows, `[http]`, `[log]` and
//! `shutdown_timeout`, as written, with their defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use strait_actors::Tuning;

use super::cluster::ClusterConfig;
use super::flow::FlowConfig;

/// The whole config file, before validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The clusters flows read from and write to, by name (their alias).
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// The replication flows; at least one.
    #[serde(default)]
    pub flows: Vec<FlowConfig>,
    /// How long a clean stop (SIGINT/SIGTERM) may take to deliver in-flight
    /// records and commit progress, for every flow.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// What `/metrics` exports.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

fn default_shutdown_timeout() -> Duration {
    Tuning::default().shutdown_timeout
}

/// `[http]`: the one server for `/metrics`, `/health`, `/ready`, `/status`
/// and the status page.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The address to listen on, `IP:PORT` (port 0 picks a free one).
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".to_string()
}

/// `[metrics]`: what `/metrics` exports.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label per-partition metrics with the partition number. Turn it off on
    /// clusters with many thousands of partitions: the partitions of a topic
    /// then share one series (counts summed, ages the largest).
    #[serde(default = "default_true")]
    pub partition_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            partition_labels: default_true(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `[log]`: what is logged and how. `RUST_LOG`, when set, overrides `level`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn`, `error` or `off`, or a directive
    /// list such as `"info,strait=debug,rdkafka=warn"`.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".to_string()
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// `text` (default): one human-readable line per event.
    #[default]
    Text,
    /// `json`: one JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("{s:?} is not allowed; allowed: text, json")),
        }
    }
}
