//! Topic discovery: re-reads the source's topics and reports what changed.
//!
//! Every `topic_refresh_interval` it makes one metadata request and one
//! DescribeConfigs request for the selected topics (not one per topic or per
//! copier), compares the result with what it saw last, and sends the flow
//! [`TopicEvent`]s: added, partitions increased, config changed, removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{admin_client, LoggingContext};
use crate::error::ReplicationError;
use crate::spec::{ClusterSpec, FlowSpec, TopicSelector};

/// How long one metadata or DescribeConfigs request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed refresh, the next try comes this soon (or at the refresh
/// interval, if that is shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// What discovery knows of a selected source topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceTopic {
    /// Partition count.
    pub partitions: i32,
    /// Replicas of its first partition.
    pub replication_factor: i32,
    /// Per-topic config overrides (set on the topic, not broker defaults).
    pub configs: BTreeMap<String, String>,
}

/// A change at the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicEvent {
    /// A selected topic appeared (or was seen for the first time).
    Added { topic: String, info: SourceTopic },
    /// A selected topic gained partitions.
    PartitionsIncreased {
        topic: String,
        from: i32,
        info: SourceTopic,
    },
    /// A selected topic's config overrides changed.
    ConfigChanged { topic: String, info: SourceTopic },
    /// A selected topic is gone.
    Removed { topic: String },
}

/// The outcome of one refresh: events, or why the source could not be read.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Discovered(pub Result<Vec<TopicEvent>, String>);

/// The events that turn `before` into `after`.
pub fn diff(
    before: &BTreeMap<String, SourceTopic>,
    after: &BTreeMap<String, SourceTopic>,
) -> Vec<TopicEvent> {
    let mut events = Vec::new();
    for (topic, info) in after {
        match before.get(topic) {
            None => events.push(TopicEvent::Added {
                topic: topic.clone(),
                info: info.clone(),
            }),
            Some(old) => {
                if info.partitions > old.partitions {
                    events.push(TopicEvent::PartitionsIncreased {
                        topic: topic.clone(),
                        from: old.partitions,
                        info: info.clone(),
                    });
                }
                if info.configs != old.configs {
                    events.push(TopicEvent::ConfigChanged {
                        topic: topic.clone(),
                        info: info.clone(),
                    });
                }
            }
        }
    }
    events.extend(
        before
            .keys()
            .filter(|t| !after.contains_key(*t))
            .map(|t| TopicEvent::Removed { topic: t.clone() }),
    );
    events
}

/// Reads a cluster's topics.
pub struct TopicReader {
    cluster: ClusterSpec,
    admin: Arc<AdminClient<LoggingContext>>,
}

impl TopicReader {
    /// An admin client for `cluster`.
    pub fn new(cluster: &ClusterSpec) -> Result<Self, ReplicationError> {
        let admin = admin_client(cluster)?;
        Ok(Self {
            cluster: cluster.clone(),
            admin: Arc::new(admin),
        })
    }

    /// The cluster's metadata, fetched off the calling thread.
    pub async fn metadata(&self) -> Result<Metadata, ReplicationError> {
        let admin = Arc::clone(&self.admin);
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, REQUEST_TIMEOUT))
            .await
            .map_err(|_| ReplicationError::ActorGone { actor: "metadata" })?
            .map_err(|source| ReplicationError::Unreachable {
                cluster: self.cluster.alias.clone(),
                bootstrap: self.cluster.bootstrap_servers().to_string(),
                source: Box::new(source),
            })
    }

    /// The selected topics with their partition counts and replication
    /// factors (configs not read).
    pub async fn selected_topics(
        &self,
        selector: &TopicSelector,
    ) -> Result<BTreeMap<String, SourceTopic>, ReplicationError> {
        Ok(self.read_selected(selector).await?.0)
    }

    /// Like [`selected_topics`](Self::selected_topics), plus the selected
    /// topics the metadata reported with an error (a leader election, say):
    /// they exist but could not be described this time.
    async fn read_selected(
        &self,
        selector: &TopicSelector,
    ) -> Result<(BTreeMap<String, SourceTopic>, BTreeSet<String>), ReplicationError> {
        let metadata = self.metadata().await?;
        let mut topics = BTreeMap::new();
        let mut errored = BTreeSet::new();
        for t in metadata.topics() {
            if !selector.matches(t.name()) {
                continue;
            }
            if t.error().is_some() {
                errored.insert(t.name().to_string());
                continue;
            }
            let replication_factor = t
                .partitions()
                .first()
                .map_or(1, |p| p.replicas().len() as i32);
            topics.insert(
                t.name().to_string(),
                SourceTopic {
                    partitions: t.partitions().len() as i32,
                    replication_factor,
                    configs: BTreeMap::new(),
                },
            );
        }
        Ok((topics, errored))
    }

    /// Adds each topic's config overrides, in one DescribeConfigs request.
    /// A topic the answer leaves out or reports an error for keeps the
    /// configs in `known` (none if it is new), so that a failed read never
    /// looks like overrides removed at the source.
    pub async fn with_configs(
        &self,
        mut topics: BTreeMap<String, SourceTopic>,
        known: &BTreeMap<String, SourceTopic>,
    ) -> Result<BTreeMap<String, SourceTopic>, ReplicationError> {
        if topics.is_empty() {
            return Ok(topics);
        }
        let resources: Vec<ResourceSpecifier<'_>> =
            topics.keys().map(|t| ResourceSpecifier::Topic(t)).collect();
        let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .describe_configs(&resources, &options)
            .await
            .map_err(|source| ReplicationError::Unreachable {
                cluster: self.cluster.alias.clone(),
                bootstrap: self.cluster.bootstrap_servers().to_string(),
                source: Box::new(source),
            })?;
        let mut described = BTreeSet::new();
        for resource in results.into_iter().flatten() {
            let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
                continue;
            };
            if let Some(topic) = topics.get_mut(name) {
                topic.configs = resource
                    .entries
                    .iter()
                    .filter(|e| e.source == ConfigSource::DynamicTopic)
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                    .collect();
                described.insert(name.clone());
            }
        }
        for (name, topic) in &mut topics {
            if !described.contains(name) {
                if let Some(old) = known.get(name) {
                    topic.configs = old.configs.clone();
                }
            }
        }
        Ok(topics)
    }
}

fn keep_known_configs(
    mut topics: BTreeMap<String, SourceTopic>,
    known: &BTreeMap<String, SourceTopic>,
) -> BTreeMap<String, SourceTopic> {
    for (name, topic) in &mut topics {
        if let Some(old) = known.get(name) {
            topic.configs = old.configs.clone();
        }
    }
    topics
}

/// The partition count of each topic when the flow first found it, shared
/// with the source's rebalance handling.
///
/// A partition added to a topic after that holds only records written since
/// the flow started copying the topic, and every one of them must be copied:
/// such a partition starts at its beginning whatever `start_from` says. (With
/// `start_from = latest` the consumer would otherwise start it at its end and
/// skip what was written between its creation and its assignment.) Partitions
/// with stored progress always resume from it; partitions that existed when
/// the topic was found, and partitions added while no Strait ran, follow
/// `start_from`.
#[derive(Debug, Default)]
pub struct PartitionHistory {
    first_seen: Mutex<BTreeMap<String, i32>>,
}

impl PartitionHistory {
    /// An empty history.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Notes `topic`'s partition count when the flow finds it; a topic
    /// already noted keeps its first count.
    pub fn topic_found(&self, topic: &str, partitions: i32) {
        self.lock().entry(topic.to_string()).or_insert(partitions);
    }

    /// Forgets a topic deleted at the source: if it comes back, it is new.
    pub fn topic_removed(&self, topic: &str) {
        self.lock().remove(topic);
    }

    /// Of the partitions just assigned, given as (topic, partition, has
    /// stored progress), those that must start at their beginning.
    pub fn start_at_beginning(&self, assigned: &[(&str, i32, bool)]) -> Vec<(String, i32)> {
        added_without_progress(&self.lock(), assigned)
    }

    /// Sets the start of every added partition without progress to its
    /// beginning in `assignment`, which must not be assigned yet. Call it
    /// from the rebalance callback before the assignment is applied: the
    /// consumer then starts those partitions there directly. (Seeking after
    /// the assignment is not reliable: librdkafka refuses to seek a partition
    /// whose fetcher has not started yet.) Returns the partitions changed.
    pub fn start_added_at_beginning(
        &self,
        assignment: &TopicPartitionList,
        has_progress: impl Fn(&str, i32) -> bool,
    ) -> Vec<(String, i32)> {
        let elements = assignment.elements();
        let assigned: Vec<(&str, i32, bool)> = elements
            .iter()
            .map(|e| {
                (
                    e.topic(),
                    e.partition(),
                    has_progress(e.topic(), e.partition()),
                )
            })
            .collect();
        let added = self.start_at_beginning(&assigned);
        for (topic, partition) in &added {
            if let Some(mut e) = assignment.find_partition(topic, *partition) {
                // Offset::Beginning always has a raw value: this cannot fail.
                let _ = e.set_offset(Offset::Beginning);
            }
        }
        added
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i32>> {
        self.first_seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The assigned partitions without progress that were added after their
/// topic was first seen.
fn added_without_progress(
    first_seen: &BTreeMap<String, i32>,
    assigned: &[(&str, i32, bool)],
) -> Vec<(String, i32)> {
    assigned
        .iter()
        .filter(|(topic, partition, has_progress)| {
            !has_progress && first_seen.get(*topic).is_some_and(|n| partition >= n)
        })
        .map(|(topic, partition, _)| (topic.to_string(), *partition))
        .collect()
}

/// Polls the source for topic changes and reports them to the flow.
pub struct TopicDiscovery {
    spec: Arc<FlowSpec>,
    reader: Arc<TopicReader>,
    known: BTreeMap<String, SourceTopic>,
    subscriber: Recipient<Discovered>,
}

impl TopicDiscovery {
    /// Creates the actor; it refreshes at once when started.
    pub fn new(
        spec: Arc<FlowSpec>,
        subscriber: Recipient<Discovered>,
    ) -> Result<Self, ReplicationError> {
        Ok(Self {
            reader: Arc::new(TopicReader::new(&spec.source)?),
            spec,
            known: BTreeMap::new(),
            subscriber,
        })
    }

    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let reader = Arc::clone(&self.reader);
        let spec = Arc::clone(&self.spec);
        let known = self.known.clone();
        let read = async move {
            let (mut topics, errored) = reader.read_selected(&spec.topics).await?;
            // A known topic with a transient metadata error is still there:
            // keep it as it was rather than report it removed.
            for name in errored {
                if let Some(old) = known.get(&name) {
                    topics.insert(name, old.clone());
                }
            }
            match reader.with_configs(topics.clone(), &known).await {
                Ok(with_configs) => Ok(with_configs),
                Err(error) => {
                    // Configs only matter for creating and syncing topics: keep
                    // copying with what was last known rather than stopping.
                    tracing::warn!(flow = %spec.name, error = %error, "cannot read source topic configs; using the last known ones");
                    Ok(keep_known_configs(topics, &known))
                }
            }
        };
        ctx.wait(
            read.into_actor(self)
                .map(|result: Result<_, ReplicationError>, act, ctx| {
                    let next = match result {
                        Ok(current) => {
                            let events = diff(&act.known, &current);
                            act.known = current;
                            act.subscriber.do_send(Discovered(Ok(events)));
                            act.spec.topic_refresh_interval
                        }
                        Err(error) => {
                            act.subscriber.do_send(Discovered(Err(error.to_string())));
                            act.spec.topic_refresh_interval.min(RETRY_AFTER_FAILURE)
                        }
                    };
                    ctx.run_later(next, |act, ctx| act.refresh(ctx));
                }),
        );
    }
}

impl Actor for TopicDiscovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.refresh(ctx);
    }
}

/// Stops polling the source.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDiscovery;

impl Handler<StopDiscovery> for TopicDiscovery {
    type Result = ();
    fn handle(&mut self, _: StopDiscovery, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(partitions: i32, configs: &[(&str, &str)]) -> SourceTopic {
        SourceTopic {
            partitions,
            replication_factor: 1,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn partitions_added_after_a_topic_was_found_start_at_their_beginning() {
        let history = PartitionHistory::default();
        history.topic_found("orders", 2);
        // A later sighting with more partitions does not move the mark.
        history.topic_found("orders", 4);
        let assigned = [
            ("orders", 0, false),
            ("orders", 1, true),
            ("orders", 2, false),
            ("orders", 3, true),
            ("unknown", 5, false),
        ];
        assert_eq!(
            history.start_at_beginning(&assigned),
            vec![("orders".to_string(), 2)],
            "only an added partition without progress; existing ones follow start_from \
             and progress always wins"
        );
        history.topic_removed("orders");
        assert!(history.start_at_beginning(&assigned).is_empty());
        history.topic_found("orders", 4);
        assert!(
            history.start_at_beginning(&assigned).is_empty(),
            "a topic recreated with 4 partitions is new: start_from applies to all of them"
        );
    }

    #[test]
    fn added_partitions_without_progress_are_set_to_start_at_their_beginning() {
        let history = PartitionHistory::default();
        history.topic_found("orders", 1);
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition("orders", 0);
        assignment.add_partition("orders", 1);
        assignment.add_partition("orders", 2);
        let changed = history.start_added_at_beginning(&assignment, |_, p| p == 2);
        assert_eq!(changed, vec![("orders".to_string(), 1)]);
        let offset = |p| assignment.find_partition("orders", p).map(|e| e.offset());
        assert_eq!(
            offset(0),
            Some(Offset::Invalid),
            "existing: left to start_from"
        );
        assert_eq!(offset(1), Some(Offset::Beginning), "added, no progress");
        assert_eq!(offset(2), Some(Offset::Invalid), "added, but has progress");
    }

    #[test]
    fn diff_reports_each_kind_of_change() {
        let before = BTreeMap::from([
            ("kept".to_string(), topic(2, &[])),
            ("grown".to_string(), topic(2, &[])),
            (
                "reconfigured".to_string(),
                topic(1, &[("retention.ms", "1")]),
            ),
            ("deleted".to_string(), topic(1, &[])),
        ]);
        let after = BTreeMap::from([
            ("kept".to_string(), topic(2, &[])),
            ("grown".to_string(), topic(5, &[])),
            (
                "reconfigured".to_string(),
                topic(1, &[("retention.ms", "2")]),
            ),
            ("new".to_string(), topic(3, &[])),
        ]);
        let events = diff(&before, &after);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events.contains(&TopicEvent::PartitionsIncreased {
            topic: "grown".into(),
            from: 2,
            info: topic(5, &[]),
        }));
        assert!(events.contains(&TopicEvent::ConfigChanged {
            topic: "reconfigured".into(),
            info: topic(1, &[("retention.ms", "2")]),
        }));
        assert!(events.contains(&TopicEvent::Added {
            topic: "new".into(),
            info: topic(3, &[]),
        }));
        assert!(events.contains(&TopicEvent::Removed {
            topic: "deleted".into()
        }));
        assert!(diff(&after, &after).is_empty());
    }
}
