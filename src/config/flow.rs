//! `[[flows]]`: one replication flow, from a source cluster to a destination
//! cluster, as written in the config file, with its defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use strait_actors::Tuning;

/// One `[[flows]]` entry, before validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// The flow's name, used in logs, metrics, the status and the default
    /// group id. Default: `"<source>-to-<destination>"`.
    #[serde(default)]
    pub name: Option<String>,
    /// The cluster records are read from: a name under `[clusters]`.
    pub source: String,
    /// The cluster records are written to: a name under `[clusters]`.
    pub destination: String,
    /// Regexes selecting the source topics to copy; each must match a whole
    /// topic name. Required, non-empty.
    pub topics: Vec<String>,
    /// Regexes of topics never copied, even when `topics` selects them.
    #[serde(default)]
    pub topics_exclude: Vec<String>,
    /// How a destination topic is named from a source topic: a template over
    /// `${topic}` and `${source}` (the source cluster's name).
    #[serde(default = "default_topic_rename_format")]
    pub topic_rename_format: String,
    /// The consumer group on the source that holds this flow's progress.
    /// Default: `"strait.<flow name>"`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// `at_least_once` or `exactly_once`.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Where partitions with no stored progress start: `earliest`, `latest`
    /// or an RFC 3339 timestamp.
    #[serde(default)]
    pub start_from: StartFromConfig,
    /// How often the source is re-read for new topics, partitions and configs.
    #[serde(default = "default_topic_refresh_interval", with = "humantime_serde")]
    pub topic_refresh_interval: Duration,
    /// Create missing destination topics (with the source's partition count).
    #[serde(default = "default_true")]
    pub topic_auto_create: bool,
    /// Copy the source topics' configs to the destination topics.
    #[serde(default = "default_true")]
    pub topic_config_sync: bool,
    /// Replication factor of created topics. Default: the source topic's.
    #[serde(default)]
    pub replication_factor: Option<i64>,
    /// Topic configs never copied to the destination. Replaces the default
    /// list, [`DEFAULT_TOPIC_CONFIG_EXCLUDE`], when given.
    #[serde(default = "default_topic_config_exclude")]
    pub topic_config_exclude: Vec<String>,
    /// Topic configs set on every destination topic, over the source's values.
    #[serde(default, deserialize_with = "deserialize_string_table")]
    pub topic_config_overrides: BTreeMap<String, String>,
    /// What a record the destination refuses for good does: `fail`, `skip`
    /// or `dead_letter`.
    #[serde(default)]
    pub on_error: OnErrorConfig,
    /// The destination topic refused records go to. Required when, and only
    /// when, `on_error = "dead_letter"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Most records handed to the destination at once.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Most payload bytes (keys, values, headers) in one batch.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Capacity of the destination's mailbox, in batches.
    #[serde(default = "default_mailbox_capacity")]
    pub mailbox_capacity: usize,
    /// How often delivered progress is committed to the source.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// First delay before a failed partition copier restarts; doubles each time.
    #[serde(default = "default_restart_backoff_initial", with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    /// Longest delay between restarts of a failed partition copier.
    #[serde(default = "default_restart_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// Consecutive failures after which a partition is marked failed and no
    /// longer restarted (0: never give up).
    #[serde(default = "default_max_consecutive_failures")]
    pub max_consecutive_failures: u32,
    /// Exactly-once: most records in one destination transaction.
    #[serde(default = "default_transaction_max_records")]
    pub transaction_max_records: usize,
    /// Exactly-once: longest time a destination transaction stays open (one
    /// opened on an idle partition commits once the partition is caught up).
    #[serde(default = "default_transaction_interval", with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// Exactly-once with a producer per partition: a transaction opened while
    /// records were waiting (the partition streams) commits once its
    /// partition is caught up and it has been open this long; unset, it stays
    /// open `transaction_interval`.
    #[serde(default, with = "humantime_serde")]
    pub transaction_streaming_interval: Option<Duration>,
    /// Exactly-once: lanes (transactional producers, each writing a share of
    /// the partitions) to divide the partitions among; 0: one per partition.
    #[serde(default = "default_transaction_lanes")]
    pub transaction_lanes: u32,
}

/// Topic configs that are never copied unless a flow's `topic_config_exclude`
/// says otherwise. Like MirrorMaker 2's and Replicator's defaults: configs
/// that describe the source cluster's brokers, hardware or operations rather
/// than the data, or that would make the destination refuse or rewrite the
/// copied records.
pub const DEFAULT_TOPIC_CONFIG_EXCLUDE: &[&str] = &[
    // Replication throttles name the source's broker ids.
    "follower.replication.throttled.replicas",
    "leader.replication.throttled.replicas",
    // Depend on the destination's broker count and durability policy.
    "min.insync.replicas",
    "unclean.leader.election.enable",
    // Would make the destination refuse old copied records, or overwrite
    // their timestamps with the time of copying.
    "message.timestamp.type",
    "message.timestamp.difference.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
    // Tiered storage: only valid where the destination has it configured.
    "remote.storage.enable",
    "local.retention.ms",
    "local.retention.bytes",
    // Broker-version specific; refused by Kafka 4.
    "message.format.version",
    "message.downconversion.enable",
    // Confluent Server: rack placement and tiering of the source's brokers.
    "confluent.placement.constraints",
    "confluent.tier.enable",
    "confluent.tier.local.hotset.ms",
    "confluent.tier.local.hotset.bytes",
];

fn default_topic_rename_format() -> String {
    "${topic}".to_string()
}

fn default_topic_refresh_interval() -> Duration {
    Duration::from_secs(120)
}

fn default_true() -> bool {
    true
}

fn default_topic_config_exclude() -> Vec<String> {
    DEFAULT_TOPIC_CONFIG_EXCLUDE
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_batch_max_records() -> usize {
    Tuning::default().batch_max_records
}

fn default_batch_max_bytes() -> usize {
    Tuning::default().batch_max_bytes
}

fn default_mailbox_capacity() -> usize {
    Tuning::default().mailbox_capacity
}

fn default_commit_interval() -> Duration {
    Tuning::default().commit_interval
}

fn default_restart_backoff_initial() -> Duration {
    Tuning::default().restart_backoff_initial
}

fn default_restart_backoff_max() -> Duration {
    Tuning::default().restart_backoff_max
}

fn default_max_consecutive_failures() -> u32 {
    Tuning::default().max_consecutive_failures
}

fn default_transaction_max_records() -> usize {
    Tuning::default().transaction_max_records
}

fn default_transaction_interval() -> Duration {
    Tuning::default().transaction_interval
}

fn default_transaction_lanes() -> u32 {
    Tuning::default().transaction_lanes
}

/// `delivery`: the guarantee a flow gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DeliveryConfig {
    /// `at_least_once` (default): every record arrives, some maybe twice after a crash.
    #[default]
    AtLeastOnce,
    /// `exactly_once`: transactions; each record visible once to `read_committed` readers.
    ExactlyOnce,
}

impl TryFrom<String> for DeliveryConfig {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "at_least_once" => Ok(Self::AtLeastOnce),
            "exactly_once" => Ok(Self::ExactlyOnce),
            _ => Err(not_allowed(&s, &["at_least_once", "exactly_once"])),
        }
    }
}

/// `on_error`: what a record the destination refuses for good does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum OnErrorConfig {
    /// `fail` (default): stop the partition with an error.
    #[default]
    Fail,
    /// `skip`: log and count the record, then go on.
    Skip,
    /// `dead_letter`: write it to `dead_letter_topic`, then go on.
    DeadLetter,
}

impl OnErrorConfig {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::DeadLetter => "dead_letter",
        }
    }
}

impl TryFrom<String> for OnErrorConfig {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            "dead_letter" => Ok(Self::DeadLetter),
            _ => Err(not_allowed(&s, &["fail", "skip", "dead_letter"])),
        }
    }
}

/// `start_from`: where a partition with no stored progress starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StartFromConfig {
    /// `earliest` (default): the oldest record still there.
    #[default]
    Earliest,
    /// `latest`: only records produced after the flow starts.
    Latest,
    /// An RFC 3339 timestamp such as `2024-05-01T00:00:00Z`, in milliseconds
    /// since the Unix epoch: the first record at or after it.
    Timestamp(i64),
}

impl TryFrom<String> for StartFromConfig {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                let t = chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|e| {
                    // The parser's reason helps only for what looks like a timestamp.
                    let why = if s.starts_with(|c: char| c.is_ascii_digit()) {
                        format!(" ({e})")
                    } else {
                        String::new()
                    };
                    format!(
                        "{s:?} is not allowed{why}; allowed: earliest, latest or an RFC 3339 \
                         timestamp such as \"2024-05-01T00:00:00Z\""
                    )
                })?;
                let ms = t.timestamp_millis();
                if ms < 0 {
                    return Err(format!(
                        "{s:?} is before 1970; Kafka timestamps start there"
                    ));
                }
                Ok(Self::Timestamp(ms))
            }
        }
    }
}

/// `"x" is not allowed; allowed: a, b`
fn not_allowed(value: &str, allowed: &[&str]) -> String {
    format!("{value:?} is not allowed; allowed: {}", allowed.join(", "))
}

/// A table of strings, where numbers and booleans are taken as their text
/// (`"retention.ms" = 86400000` is as good as `"retention.ms" = "86400000"`).
fn deserialize_string_table<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A string, number or boolean, kept as text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_name_what_is_allowed() {
        let msg = DeliveryConfig::try_from("exacly_once".to_string()).unwrap_err();
        assert!(
            msg.contains("\"exacly_once\"") && msg.contains("exactly_once"),
            "{msg}"
        );
        let msg = OnErrorConfig::try_from("retry".to_string()).unwrap_err();
        assert!(msg.contains("fail, skip, dead_letter"), "{msg}");
    }

    #[test]
    fn start_from_reads_rfc3339_in_milliseconds() {
        assert_eq!(
            StartFromConfig::try_from("2024-01-01T00:00:01.5Z".to_string()),
            Ok(StartFromConfig::Timestamp(1_704_067_201_500))
        );
        assert_eq!(
            StartFromConfig::try_from("2024-01-01T02:00:00+02:00".to_string()),
            Ok(StartFromConfig::Timestamp(1_704_067_200_000))
        );
        let msg = StartFromConfig::try_from("yesterday".to_string()).unwrap_err();
        assert!(msg.contains("earliest, latest or an RFC 3339"), "{msg}");
    }
}
