//! Building rdkafka clients for a cluster: defaults, user properties, and the
//! settings Strait's guarantees depend on, in that order of precedence.

use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

use std::time::Duration;

use crate::error::ReplicationError;
use crate::spec::ClusterSpec;

/// The `session.timeout.ms` Strait gives its consumer groups (the source
/// group, and the lane group on the destination) unless the cluster's
/// `kafka` settings set one: a crashed instance's partitions move after
/// this long, and short, since Strait has no GC pauses to ride out.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The `session.timeout.ms` of Strait's consumer groups on `cluster`.
pub fn session_timeout(cluster: &ClusterSpec) -> Duration {
    millis_property(cluster, "session.timeout.ms").unwrap_or(DEFAULT_SESSION_TIMEOUT)
}

/// A property of `cluster`'s `kafka` settings that holds milliseconds, if
/// set to a number (any other value is refused at start-up, by validation
/// or by librdkafka when it creates the client).
pub fn millis_property(cluster: &ClusterSpec, key: &str) -> Option<Duration> {
    cluster
        .properties
        .get(key)
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// A client config for `cluster`: `defaults` first, then the user's
/// properties (which may override any default), then `forced`, which the
/// user may not change because correctness depends on them.
pub fn client_config(
    cluster: &ClusterSpec,
    defaults: &[(&str, String)],
    forced: &[(&str, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in defaults {
        config.set(*k, v.as_str());
    }
    for (k, v) in &cluster.properties {
        config.set(k.as_str(), v.as_str());
    }
    for (k, v) in forced {
        if let Some(user) = cluster.properties.get(*k) {
            if user != v {
                tracing::warn!(
                    cluster = %cluster.alias,
                    property = *k,
                    "ignoring the configured value of `{k}`: Strait needs `{v}` here"
                );
            }
        }
        config.set(*k, v.as_str());
    }
    // librdkafka's own `debug` contexts log at debug level: let them through
    // when asked for.
    let level = if cluster.properties.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    };
    config.set_log_level(level);
    config
}

/// Routes librdkafka's logs and errors into `tracing`, tagged with the cluster.
pub fn log_client_event(cluster: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(cluster, facility, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(cluster, facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(cluster, facility, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(cluster, facility, "{message}"),
    }
}

/// Logs a client-level error (e.g. all brokers down): these are transient,
/// librdkafka keeps retrying.
pub fn log_client_error(cluster: &str, error: &KafkaError, reason: &str) {
    // End of partition is news only to readers that asked for it.
    if matches!(error, KafkaError::PartitionEOF(_)) {
        return;
    }
    tracing::warn!(cluster, error = %error, "{reason}");
}

/// An admin client for `cluster`.
pub fn admin_client(
    cluster: &ClusterSpec,
) -> Result<AdminClient<LoggingContext>, ReplicationError> {
    // librdkafka's admin client is a producer underneath, and producers
    // default to asking brokers to auto-create topics they look up: a lookup
    // of a missing topic would create it with the broker's defaults (where
    // `auto.create.topics.enable` is on, Kafka's default).
    let forced = [("allow.auto.create.topics", "false".to_string())];
    client_config(cluster, &[], &forced)
        .create_with_context(LoggingContext {
            cluster: cluster.alias.clone(),
        })
        .map_err(|source| ReplicationError::ClientCreation {
            cluster: cluster.alias.clone(),
            source: Box::new(source),
        })
}

/// A client context that only routes logs, for admin clients.
#[derive(Clone, Debug)]
pub struct LoggingContext {
    /// The cluster's alias.
    pub cluster: String,
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }
}

// Plain readers (e.g. of the offset map) need no rebalance handling.
impl rdkafka::consumer::ConsumerContext for LoggingContext {}
