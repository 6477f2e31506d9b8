//! Creates, grows and reconfigures destination topics, for the flow.
//!
//! Kept apart from the destination actor so that topic work never waits
//! behind a mailbox that is backed up by a slow destination.
//!
//! # Configs
//! A destination topic should carry its source topic's per-topic overrides,
//! minus `topic_config_exclude`, plus the flow's `topic_config_overrides`
//! (the [`TopicPlan`]'s `configs`). Excluded configs are *unmanaged*: Strait
//! never copies, changes or removes them, so a destination operator may set
//! them (`min.insync.replicas`, throttles) and they stay.
//!
//! Syncing uses AlterConfigs, which rdkafka offers safely and which Kafka 4.x
//! still accepts (checked on 4.3.1). It replaces a topic's whole set of
//! overrides, so the request carries the planned configs *and* the
//! destination's current unmanaged ones: configs removed at the source are
//! removed at the destination, unmanaged ones are kept. The read and the
//! write are two requests, so a change another admin makes in between to an
//! unmanaged config can be lost; IncrementalAlterConfigs would avoid that
//! window but rdkafka 0.39 has no safe binding for it. Describe results lag
//! an alter by a moment on KRaft, so a sync is not verified by reading back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::Semaphore;

use crate::client::{admin_client, LoggingContext};
use crate::error::ReplicationError;
use crate::spec::ClusterSpec;

/// What a destination topic must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPlan {
    /// Destination topic name.
    pub name: String,
    /// Partition count it needs at least.
    pub partitions: i32,
    /// Replication factor when created.
    pub replication_factor: i32,
    /// Per-topic configs it should have (source overrides minus excluded,
    /// plus the flow's overrides).
    pub configs: BTreeMap<String, String>,
    /// Config names Strait leaves as they are on the destination.
    pub unmanaged: BTreeSet<String>,
}

/// What happened to the topic's partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The topic was there with enough partitions.
    Existed,
    /// The topic was created.
    Created,
    /// The topic had fewer partitions; it now has enough.
    Grown { from: i32 },
    /// The topic has more partitions than the source's (left alone).
    HasMorePartitions { partitions: i32 },
}

/// What happened to the topic's configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// Set when the topic was created.
    SetAtCreation,
    /// Already as planned.
    InSync,
    /// Changed to match the plan.
    Updated(ConfigDiff),
    /// Differs from the plan, and syncing is off: left as it is.
    Differs(ConfigDiff),
    /// Could not be read or changed; copying is not affected.
    Failed(String),
}

/// What [`TopicAdmin::ensure_topic`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    /// Partitions.
    pub layout: Layout,
    /// Configs.
    pub configs: ConfigOutcome,
}

/// Why a destination topic is not ready, as a fixed word for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// It does not exist and `topic_auto_create` is false.
    Missing,
    /// The replication factor is more than the destination's brokers.
    ReplicationFactor,
    /// The destination could not be reached.
    Unreachable,
    /// Anything else the destination refused.
    Refused,
}

impl FailureKind {
    /// The word used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Missing => "missing",
            FailureKind::ReplicationFactor => "replication_factor",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Refused => "refused",
        }
    }
}

/// A destination topic that could not be made ready.
#[derive(Debug)]
pub struct TopicFailure {
    /// What kind of problem.
    pub kind: FailureKind,
    /// The error, naming cluster and topic.
    pub error: ReplicationError,
}

impl fmt::Display for TopicFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// The config changes that make a destination topic match its plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Configs to set: name -> (current value, if set; planned value).
    pub set: BTreeMap<String, (Option<String>, String)>,
    /// Configs to remove (back to the destination's default): name -> current value.
    pub remove: BTreeMap<String, String>,
}

impl ConfigDiff {
    /// The changes from `current` (the destination topic's overrides) to
    /// `planned`, leaving `unmanaged` names alone.
    pub fn between(
        planned: &BTreeMap<String, String>,
        current: &BTreeMap<String, String>,
        unmanaged: &BTreeSet<String>,
    ) -> Self {
        let set = planned
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), (current.get(k).cloned(), v.clone())))
            .collect();
        let remove = current
            .iter()
            .filter(|(k, _)| !planned.contains_key(*k) && !unmanaged.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self { set, remove }
    }

    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { ", " };
            first = false;
            f.write_str(s)
        };
        for (k, (old, new)) in &self.set {
            sep(f)?;
            write!(f, "{k}: {} -> {new}", old.as_deref().unwrap_or("(default)"))?;
        }
        for (k, old) in &self.remove {
            sep(f)?;
            write!(f, "{k}: {old} -> (default)")?;
        }
        Ok(())
    }
}

/// The complete override set to send with AlterConfigs (which replaces all
/// of a topic's overrides): the plan, plus the current unmanaged overrides.
pub fn alter_request(
    planned: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    unmanaged: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut all: BTreeMap<String, String> = current
        .iter()
        .filter(|(k, _)| unmanaged.contains(*k) && !planned.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    all.extend(planned.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// Topics prepared at the same time: a flow finding a thousand topics at
/// start-up asks the destination about a few at a time, not all at once.
const CONCURRENT_TOPICS: usize = 8;
/// Longest a topic just created or grown may take to be served (see
/// [`TopicAdmin::await_served`]): librdkafka's own wait for a topic's
/// metadata (`topic.metadata.propagation.max.ms`).
const SERVED_WAIT_MAX: Duration = Duration::from_secs(30);
/// First pause between two looks at a new topic's metadata; it doubles.
const SERVED_POLL_FIRST: Duration = Duration::from_millis(10);
/// Longest pause between two looks.
const SERVED_POLL_MAX: Duration = Duration::from_millis(200);

/// What [`TopicAdmin::await_served`] waits for.
#[derive(Clone, Debug)]
enum Served {
    /// These partitions, just made here.
    Partitions(Range<i32>),
    /// The whole topic, made by someone else.
    Whole,
}

impl Served {
    /// True when a topic of `partitions` partitions, of which `leaderless`
    /// have no leader, is served as wanted.
    fn by(&self, partitions: i32, leaderless: &[i32]) -> bool {
        match self {
            Self::Partitions(wanted) => {
                partitions >= wanted.end && !leaderless.iter().any(|p| wanted.contains(p))
            }
            Self::Whole => partitions > 0 && leaderless.is_empty(),
        }
    }
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partitions(wanted) => write!(f, "partitions {wanted:?}, just made,"),
            Self::Whole => f.write_str("the topic, made by another client,"),
        }
    }
}

/// Creates, grows and reconfigures destination topics. Shared by the flow.
pub struct TopicAdmin {
    cluster: String,
    admin: Arc<AdminClient<LoggingContext>>,
    timeout: Duration,
    permits: Semaphore,
}

/// A destination topic's partition count (when it exists) and the number of
/// brokers in the cluster.
struct Layouts {
    partitions: Option<i32>,
    /// The partitions without a leader.
    leaderless: Vec<i32>,
    brokers: usize,
}

impl TopicAdmin {
    /// An admin client for `cluster`.
    pub fn new(cluster: &ClusterSpec) -> Result<Self, ReplicationError> {
        let admin = admin_client(cluster)?;
        Ok(Self {
            cluster: cluster.alias.clone(),
            admin: Arc::new(admin),
            timeout: Duration::from_secs(10),
            permits: Semaphore::new(CONCURRENT_TOPICS),
        })
    }

    /// Partition count of `topic`, or `None` when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, ReplicationError> {
        self.layout(topic)
            .await
            .map(|l| l.partitions)
            .map_err(|f| f.error)
    }

    async fn layout(&self, topic: &str) -> Result<Layouts, TopicFailure> {
        let admin = Arc::clone(&self.admin);
        let name = topic.to_string();
        let timeout = self.timeout;
        let metadata =
            tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), timeout))
                .await
                .map_err(|_| self.failure(topic, FailureKind::Unreachable, "lookup interrupted"))?
                .map_err(|e| {
                    self.failure(topic, FailureKind::Unreachable, format!("metadata: {e}"))
                })?;
        let topic = metadata.topics().first().filter(|t| t.error().is_none());
        let partitions = topic.map(|t| t.partitions().len() as i32);
        let leaderless = topic.map_or_else(Vec::new, |t| {
            t.partitions()
                .iter()
                .filter(|p| p.error().is_some() || p.leader() < 0)
                .map(|p| p.id())
                .collect()
        });
        Ok(Layouts {
            partitions,
            leaderless,
            brokers: metadata.brokers().len(),
        })
    }

    /// Makes sure the destination topic exists with at least the planned
    /// partitions (creating it when `create` allows), and compares its
    /// configs with the plan, changing them when `sync` is on.
    ///
    /// Fails only when the topic cannot be used: missing, or not creatable,
    /// or not growable. Config problems are reported in the outcome.
    pub async fn ensure_topic(
        &self,
        plan: &TopicPlan,
        create: bool,
        sync: bool,
    ) -> Result<Ensured, TopicFailure> {
        // Never closed, so acquiring only waits for a turn.
        let _turn = self.permits.acquire().await;
        let layout = self.layout(&plan.name).await?;
        let have = match layout.partitions {
            Some(have) => have,
            None if !create => {
                return Err(self.failure(
                    &plan.name,
                    FailureKind::Missing,
                    "it does not exist and topic_auto_create is false; create it on the \
                     destination, or set topic_auto_create = true",
                ))
            }
            None => match self.create(plan, layout.brokers).await? {
                true => {
                    self.await_served(&plan.name, Served::Partitions(0..plan.partitions))
                        .await?;
                    return Ok(Ensured {
                        layout: Layout::Created,
                        configs: ConfigOutcome::SetAtCreation,
                    });
                }
                // Created meanwhile by someone else (another instance of the
                // flow starting at the same time): once served, as if it
                // had existed. The broker that refused to create it again
                // may not show it yet.
                false => self.await_served(&plan.name, Served::Whole).await?,
            },
        };
        let layout = if have < plan.partitions {
            self.grow(&plan.name, plan.partitions).await?;
            self.await_served(&plan.name, Served::Partitions(have..plan.partitions))
                .await?;
            Layout::Grown { from: have }
        } else if have > plan.partitions {
            Layout::HasMorePartitions { partitions: have }
        } else {
            Layout::Existed
        };
        let configs = self.reconcile_configs(plan, sync).await;
        Ok(Ensured { layout, configs })
    }

    /// Waits until the destination's metadata shows `topic` as `served`
    /// says, each of those partitions with a leader; answers its partition
    /// count.
    ///
    /// A broker answers CreateTopics (or CreatePartitions) once the
    /// controller has the change, and serves the topic once it has applied
    /// it, which on a broker creating many topics lags by seconds. Records
    /// sent meanwhile wait in the producer for the topic's metadata (and
    /// fail after `topic.metadata.propagation.max.ms`); in exactly-once, a
    /// transaction holding one of them cannot commit, and holds back every
    /// other partition in it. Waiting here, with the topic's turn held,
    /// also keeps creation at the pace the broker applies it.
    async fn await_served(&self, topic: &str, served: Served) -> Result<i32, TopicFailure> {
        let began = tokio::time::Instant::now();
        let deadline = began + SERVED_WAIT_MAX;
        let mut pause = SERVED_POLL_FIRST;
        loop {
            let layout = self.layout(topic).await?;
            if let Some(partitions) = layout
                .partitions
                .filter(|p| served.by(*p, &layout.leaderless))
            {
                tracing::debug!(cluster = %self.cluster, topic, seconds = began.elapsed().as_secs_f64(), "the destination serves the topic");
                return Ok(partitions);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(self.failure(
                    topic,
                    FailureKind::Unreachable,
                    format!(
                        "{served} had no leader in the destination's metadata after \
                         {SERVED_WAIT_MAX:?}"
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SERVED_POLL_MAX);
        }
    }

    /// True when created, false when it already existed.
    async fn create(&self, plan: &TopicPlan, brokers: usize) -> Result<bool, TopicFailure> {
        let mut topic = NewTopic::new(
            &plan.name,
            plan.partitions,
            TopicReplication::Fixed(plan.replication_factor),
        );
        for (k, v) in &plan.configs {
            topic = topic.set(k, v);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| self.failure(&plan.name, FailureKind::Unreachable, e.to_string()))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    return Err(self.failure(
                        &plan.name,
                        FailureKind::ReplicationFactor,
                        format!(
                            "replication factor {} is more than the cluster's {brokers} \
                             available broker(s); set replication_factor for this flow, or add \
                             brokers",
                            plan.replication_factor
                        ),
                    ))
                }
                Err((_, code)) => {
                    return Err(self.failure(&plan.name, FailureKind::Refused, code.to_string()))
                }
            }
        }
        Ok(true)
    }

    async fn grow(&self, topic: &str, partitions: i32) -> Result<(), TopicFailure> {
        let count = usize::try_from(partitions).unwrap_or(0);
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_partitions([&NewPartitions::new(topic, count)], &options)
            .await
            .map_err(|e| self.failure(topic, FailureKind::Unreachable, e.to_string()))?;
        for result in results {
            if let Err((_, code)) = result {
                // Another instance of the flow may have grown it first.
                if code != RDKafkaErrorCode::InvalidPartitions {
                    return Err(self.failure(
                        topic,
                        FailureKind::Refused,
                        format!("adding partitions: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Compares the topic's configs with the plan; with `sync`, changes them.
    async fn reconcile_configs(&self, plan: &TopicPlan, sync: bool) -> ConfigOutcome {
        let current = match self.overrides(&plan.name).await {
            Ok(current) => current,
            Err(reason) => return ConfigOutcome::Failed(format!("reading configs: {reason}")),
        };
        // A sensitive override is described without its value: AlterConfigs
        // could not send it back and would drop it. (Apache Kafka has no
        // sensitive topic configs; this guards against plugins that do.)
        let hidden: Vec<&String> = current
            .iter()
            .filter_map(|(k, v)| v.is_none().then_some(k))
            .collect();
        let readable: BTreeMap<String, String> = current
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let diff = ConfigDiff::between(&plan.configs, &readable, &plan.unmanaged);
        if diff.is_empty() {
            return ConfigOutcome::InSync;
        }
        if !sync {
            return ConfigOutcome::Differs(diff);
        }
        if !hidden.is_empty() {
            return ConfigOutcome::Failed(format!(
                "not changed: the topic has sensitive configs ({hidden:?}) that a change would \
                 drop"
            ));
        }
        let all = alter_request(&plan.configs, &readable, &plan.unmanaged);
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&plan.name));
        for (k, v) in &all {
            alter = alter.set(k, v);
        }
        let options = AdminOptions::new().request_timeout(Some(self.timeout));
        match self.admin.alter_configs([&alter], &options).await {
            Err(e) => ConfigOutcome::Failed(format!("changing configs: {e}")),
            Ok(results) => match results.into_iter().find_map(Result::err) {
                Some((_, code)) => ConfigOutcome::Failed(format!("changing configs: {code}")),
                None => ConfigOutcome::Updated(diff),
            },
        }
    }

    /// The topic's per-topic overrides (values are `None` when sensitive).
    async fn overrides(&self, topic: &str) -> Result<BTreeMap<String, Option<String>>, String> {
        let options = AdminOptions::new().request_timeout(Some(self.timeout));
        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
            .await
            .map_err(|e| e.to_string())?;
        for result in results {
            let resource = result.map_err(|code| code.to_string())?;
            if matches!(&resource.specifier, OwnedResourceSpecifier::Topic(t) if t == topic) {
                return Ok(resource
                    .entries
                    .into_iter()
                    .filter(|e| e.source == ConfigSource::DynamicTopic)
                    .map(|e| (e.name, e.value))
                    .collect());
            }
        }
        Err("the destination did not describe the topic".to_string())
    }

    fn failure(&self, topic: &str, kind: FailureKind, reason: impl Into<String>) -> TopicFailure {
        TopicFailure {
            kind,
            error: ReplicationError::TopicCreation {
                cluster: self.cluster.clone(),
                topic: topic.to_string(),
                reason: reason.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_partitions_are_served_once_each_has_a_leader_whatever_the_others() {
        let grown = Served::Partitions(3..6);
        assert!(grown.by(6, &[]));
        assert!(
            grown.by(6, &[0, 1]),
            "an old partition without a leader is not waited for"
        );
        assert!(!grown.by(6, &[4]), "a new one is");
        assert!(!grown.by(5, &[]), "all of them must show");
        let whole = Served::Whole;
        assert!(whole.by(10, &[]));
        assert!(!whole.by(10, &[9]));
        assert!(
            !whole.by(0, &[]),
            "a topic without partitions is not there yet"
        );
    }

    #[test]
    fn diff_sets_changed_and_added_configs_and_removes_dropped_ones() {
        let planned = map(&[("retention.ms", "2000"), ("segment.ms", "600000")]);
        let current = map(&[
            ("retention.ms", "1000"),
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "2"),
        ]);
        let diff = ConfigDiff::between(&planned, &current, &set(&["min.insync.replicas"]));
        assert_eq!(
            diff.set,
            BTreeMap::from([
                (
                    "retention.ms".to_string(),
                    (Some("1000".to_string()), "2000".to_string())
                ),
                ("segment.ms".to_string(), (None, "600000".to_string())),
            ])
        );
        assert_eq!(diff.remove, map(&[("cleanup.policy", "compact")]));
        assert_eq!(
            diff.to_string(),
            "retention.ms: 1000 -> 2000, segment.ms: (default) -> 600000, \
             cleanup.policy: compact -> (default)"
        );
    }

    #[test]
    fn diff_is_empty_when_only_unmanaged_configs_differ() {
        let planned = map(&[("retention.ms", "1000")]);
        let current = map(&[("retention.ms", "1000"), ("min.insync.replicas", "2")]);
        assert!(ConfigDiff::between(&planned, &current, &set(&["min.insync.replicas"])).is_empty());
        // Without the exclusion, the destination-only config is removed.
        let diff = ConfigDiff::between(&planned, &current, &set(&[]));
        assert_eq!(diff.remove, map(&[("min.insync.replicas", "2")]));
    }

    #[test]
    fn alter_request_keeps_unmanaged_configs_and_drops_removed_ones() {
        let planned = map(&[("retention.ms", "2000")]);
        let current = map(&[
            ("retention.ms", "1000"),
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "2"),
        ]);
        let all = alter_request(&planned, &current, &set(&["min.insync.replicas"]));
        assert_eq!(
            all,
            map(&[("retention.ms", "2000"), ("min.insync.replicas", "2")])
        );
    }

    #[test]
    fn alter_request_prefers_the_plan_for_an_unmanaged_name_it_sets() {
        // `topic_config_overrides` may name an excluded config: the override wins.
        let planned = map(&[("min.insync.replicas", "1")]);
        let current = map(&[("min.insync.replicas", "2")]);
        let all = alter_request(&planned, &current, &set(&["min.insync.replicas"]));
        assert_eq!(all, map(&[("min.insync.replicas", "1")]));
    }
}
