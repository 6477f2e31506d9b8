//! What one replication flow is, once its config has been read and validated.
//!
//! The binary turns the config file into a [`FlowSpec`]; the actors only ever
//! see this resolved form (secrets already read, regexes compiled, durations
//! parsed), so nothing here can fail on bad user input at run time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use regex::Regex;

use crate::error::SpecError;

/// A named cluster: its alias from the config and the librdkafka properties
/// every client of it is created with (`bootstrap.servers` included).
#[derive(Clone)]
pub struct ClusterSpec {
    /// The cluster's name in the config (`[clusters.NAME]`), used as its alias.
    pub alias: String,
    /// librdkafka properties, passed through unchanged; secrets already resolved.
    pub properties: BTreeMap<String, String>,
}

impl ClusterSpec {
    /// The cluster's bootstrap servers, for messages to people.
    pub fn bootstrap_servers(&self) -> &str {
        self.properties
            .get("bootstrap.servers")
            .map(String::as_str)
            .unwrap_or("")
    }
}

// Properties may hold passwords: never print them.
impl fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("alias", &self.alias)
            .field("bootstrap.servers", &self.bootstrap_servers())
            .finish_non_exhaustive()
    }
}

/// Which source topics a flow copies: every topic matching one `include`
/// regex in full and no `exclude` regex. Internal topics (`__*`) and Strait's
/// own (`strait.*`) are never selected, whatever the patterns say.
#[derive(Clone, Debug)]
pub struct TopicSelector {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    include_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
}

impl TopicSelector {
    /// Compiles the patterns, each anchored so that it must match the whole name.
    /// `key` names the config key for error messages (e.g. `flows[0].topics`).
    pub fn new(include: &[String], exclude: &[String], key: &str) -> Result<Self, SpecError> {
        let compile = |patterns: &[String], key: String| -> Result<Vec<Regex>, SpecError> {
            patterns
                .iter()
                .map(|p| {
                    Regex::new(&format!("^(?:{p})$")).map_err(|e| SpecError::BadRegex {
                        key: key.clone(),
                        pattern: p.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect()
        };
        Ok(Self {
            include: compile(include, key.to_string())?,
            exclude: compile(exclude, format!("{key}_exclude"))?,
            include_patterns: include.to_vec(),
            exclude_patterns: exclude.to_vec(),
        })
    }

    /// The include patterns as written in the config.
    pub fn include_patterns(&self) -> &[String] {
        &self.include_patterns
    }

    /// The exclude patterns as written in the config.
    pub fn exclude_patterns(&self) -> &[String] {
        &self.exclude_patterns
    }

    /// True when the topic is one this flow copies.
    pub fn matches(&self, topic: &str) -> bool {
        !is_internal_topic(topic)
            && self.include.iter().any(|r| r.is_match(topic))
            && !self.exclude.iter().any(|r| r.is_match(topic))
    }
}

/// Topics no flow ever copies: Kafka's internal ones and Strait's own.
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with("__") || topic.starts_with("strait.")
}

/// How a source topic's name becomes the destination topic's name:
/// a template over `${topic}` and `${source}` (the source cluster's alias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenameFormat {
    parts: Vec<RenamePart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RenamePart {
    Literal(String),
    Topic,
    Source,
}

impl RenameFormat {
    /// The default: the destination topic has the source topic's name.
    pub fn identity() -> Self {
        Self {
            parts: vec![RenamePart::Topic],
        }
    }

    /// Parses a template; `key` names the config key for error messages.
    pub fn parse(template: &str, key: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::BadRenameFormat {
            key: key.to_string(),
            format: template.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(RenamePart::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| bad("a `${` is never closed by `}`".to_string()))?;
            parts.push(match &after[..end] {
                "topic" => RenamePart::Topic,
                "source" => RenamePart::Source,
                other => {
                    return Err(bad(format!(
                        "unknown placeholder `${{{other}}}`; allowed: ${{topic}}, ${{source}}"
                    )))
                }
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(RenamePart::Literal(rest.to_string()));
        }
        if !parts.contains(&RenamePart::Topic) {
            return Err(bad(
                "must contain ${topic}, or every source topic would map to one destination topic"
                    .to_string(),
            ));
        }
        let format = Self { parts };
        let sample = format.apply("t", "s");
        if let Some(c) = sample.chars().find(|c| !is_topic_char(*c)) {
            return Err(bad(format!(
                "`{c}` cannot appear in a Kafka topic name (allowed: letters, digits, '.', '_', '-')"
            )));
        }
        Ok(format)
    }

    /// The destination topic for `topic` read from the cluster aliased `source`.
    pub fn apply(&self, topic: &str, source: &str) -> String {
        let mut out = String::with_capacity(topic.len() + 16);
        for part in &self.parts {
            match part {
                RenamePart::Literal(s) => out.push_str(s),
                RenamePart::Topic => out.push_str(topic),
                RenamePart::Source => out.push_str(source),
            }
        }
        out
    }

    /// True for `${topic}`: destination names equal source names.
    pub fn is_identity(&self) -> bool {
        self.parts == [RenamePart::Topic]
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Where a partition with no stored progress starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest record still in the partition (the default).
    Earliest,
    /// Only records produced after Strait starts.
    Latest,
    /// The first record whose timestamp is at or after this many milliseconds
    /// since the Unix epoch.
    Timestamp(i64),
}

/// The delivery guarantee a flow gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every record arrives; after a crash some may arrive twice.
    AtLeastOnce,
    /// Every record arrives once, for readers with `isolation.level=read_committed`.
    ExactlyOnce,
}

/// What to do with a record the destination refuses for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Stop the partition with an error naming topic, partition and offset.
    Fail,
    /// Log and count the record, then go on.
    Skip,
    /// Write the record to this topic on the destination, then go on.
    DeadLetter(String),
}

/// Knobs that trade memory, latency and throughput. Defaults suit most flows.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Most records a copier hands to the destination at once.
    pub batch_max_records: usize,
    /// Most payload bytes (keys, values, headers) in one batch.
    pub batch_max_bytes: usize,
    /// Capacity of the destination actor's mailbox, in batches.
    pub mailbox_capacity: usize,
    /// How often acknowledged progress is committed to the source.
    pub commit_interval: Duration,
    /// How long a clean stop may take to deliver in-flight batches and commit.
    pub shutdown_timeout: Duration,
    /// First delay before a failed copier is restarted; doubles on each failure.
    pub restart_backoff_initial: Duration,
    /// Longest delay between restarts of a failed copier.
    pub restart_backoff_max: Duration,
    /// Consecutive failures after which a partition is marked failed and left
    /// alone (0: never give up).
    pub max_consecutive_failures: u32,
    /// Exactly-once: most records in one transaction.
    pub transaction_max_records: usize,
    /// Exactly-once: longest time a transaction stays open (one opened on an
    /// idle partition commits once the partition is caught up).
    pub transaction_interval: Duration,
    /// Exactly-once with a producer per partition: a transaction opened on a
    /// streaming partition commits once the partition is caught up and the
    /// transaction is this old; `None`: it runs `transaction_interval`.
    pub transaction_streaming_interval: Option<Duration>,
    /// Exactly-once: how many lanes (transactional producers, each writing a
    /// share of the partitions) the flow's partitions are divided among; 0:
    /// one transactional producer per partition.
    pub transaction_lanes: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            batch_max_records: 2_000,
            batch_max_bytes: 1024 * 1024,
            mailbox_capacity: 16,
            commit_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            restart_backoff_initial: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(60),
            max_consecutive_failures: 10,
            transaction_max_records: 10_000,
            transaction_interval: Duration::from_millis(100),
            transaction_streaming_interval: None,
            transaction_lanes: 0,
        }
    }
}

/// Failures injected on purpose, for tests of restarts and recovery.
/// Empty in production: the binary fills it only from `STRAIT_FAULTS`.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Panic a copier when it reads this (source topic, partition, offset),
    /// the first `times` times it gets there.
    pub copier_panic_at: Option<(String, i32, i64, u32)>,
    /// Panic an exactly-once lane when it writes this (source topic,
    /// partition, offset), the first `times` times.
    pub lane_panic_at: Option<(String, i32, i64, u32)>,
    /// Exactly-once with a producer per partition: the copier that writes
    /// this (source topic, partition, offset) holds its open transaction
    /// this long first, once.
    pub transaction_stall_at: Option<(String, i32, i64, Duration)>,
}

/// One replication flow: everything the actors need to run it.
#[derive(Clone, Debug)]
pub struct FlowSpec {
    /// The flow's name (`flows[].name`), used in logs, metrics and the status.
    pub name: String,
    /// Where records are read from.
    pub source: ClusterSpec,
    /// Where records are written to.
    pub destination: ClusterSpec,
    /// Which source topics are copied.
    pub topics: TopicSelector,
    /// How destination topic names are made from source topic names.
    pub rename: RenameFormat,
    /// The consumer group on the source that holds the flow's progress.
    pub group_id: String,
    /// At-least-once or exactly-once.
    pub delivery: Delivery,
    /// Where partitions without stored progress start.
    pub start_from: StartFrom,
    /// How often the source's topics are re-read.
    pub topic_refresh_interval: Duration,
    /// Create missing destination topics (else a missing one is an error for that topic).
    pub topic_auto_create: bool,
    /// Apply the source topics' config overrides to the destination topics.
    pub topic_config_sync: bool,
    /// Replication factor for created topics; `None` keeps the source topic's.
    pub replication_factor: Option<i32>,
    /// Topic configs never copied to the destination.
    pub topic_config_exclude: Vec<String>,
    /// Topic configs set on every destination topic, over the source's values.
    pub topic_config_overrides: BTreeMap<String, String>,
    /// What a permanent produce error does.
    pub on_error: OnError,
    /// Throughput and memory knobs.
    pub tuning: Tuning,
    /// Test-only failure injection.
    pub faults: Faults,
}

impl FlowSpec {
    /// The destination topic a source topic is copied to.
    pub fn destination_topic(&self, source_topic: &str) -> String {
        self.rename.apply(source_topic, &self.source.alias)
    }

    /// Whether the flow's partitions are divided in lanes (exactly-once
    /// with `transaction_lanes`) rather than by the source's group.
    pub fn in_lanes(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce && self.tuning.transaction_lanes > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matches_whole_names_and_never_internal_topics() {
        let s = TopicSelector::new(
            &["orders\\..*".into(), "payments".into(), ".*".into()],
            &["orders\\.tmp\\..*".into()],
            "flows[0].topics",
        )
        .expect("valid patterns");
        assert!(s.matches("orders.eu"));
        assert!(s.matches("payments"));
        assert!(!s.matches("orders.tmp.x"));
        assert!(!s.matches("__consumer_offsets"));
        assert!(!s.matches("strait.offsets"));

        let only = TopicSelector::new(&["pay".into()], &[], "k").expect("valid");
        assert!(
            !only.matches("payments"),
            "a pattern must match the whole name"
        );
    }

    #[test]
    fn bad_regex_names_key_and_pattern() {
        let err = TopicSelector::new(&["(".into()], &[], "flows[0].topics").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("flows[0].topics") && msg.contains("`(`"),
            "{msg}"
        );
    }

    #[test]
    fn rename_applies_placeholders() {
        let f = RenameFormat::parse("${source}.${topic}", "k").expect("valid");
        assert_eq!(f.apply("orders", "east"), "east.orders");
        assert!(!f.is_identity());
        assert!(RenameFormat::parse("${topic}", "k")
            .expect("valid")
            .is_identity());
        assert_eq!(
            RenameFormat::parse("dr-${topic}-copy", "k")
                .expect("valid")
                .apply("t", "s"),
            "dr-t-copy"
        );
    }

    #[test]
    fn rename_rejects_unknown_placeholder_missing_topic_and_bad_chars() {
        for (fmt, needle) in [
            ("${cluster}.${topic}", "unknown placeholder"),
            ("${source}", "must contain ${topic}"),
            ("${topic", "never closed"),
            ("a/${topic}", "cannot appear"),
        ] {
            let msg = RenameFormat::parse(fmt, "flows[1].topic_rename_format")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "{fmt}: {msg}");
            assert!(msg.contains("flows[1].topic_rename_format"), "{msg}");
        }
    }
}
