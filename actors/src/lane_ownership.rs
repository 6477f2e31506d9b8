//! Which lanes of an exactly-once flow this instance owns: a consumer group
//! on the destination.
//!
//! Two instances writing partitions of one lane would share its
//! transactional id and fence each other for ever, so the unit that
//! instances divide among themselves must be the lane, not the source
//! partition (see [`crate::lane`]). The lanes are the partitions of the
//! topic `strait.lanes.<group_id>` on the destination, one per lane and
//! never written; the flow's instances join the consumer group `<group_id>`
//! on the destination, subscribed to it, and owning its partition k is
//! owning lane k. Kafka's own group protocol does the dividing, as it does
//! for the source partitions in at-least-once flows: no coordinator of
//! Strait's own.
//!
//! A thread polls the group's consumer (the topic holds no records: the
//! polls serve the group's heartbeats and rebalance callbacks). Lanes
//! assigned are told to the owner; lanes revoked are told to it and the
//! rebalance waits for its answer, so that a lane's transactions have ended
//! before another instance opens it (which would fence them otherwise).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;

use crate::client::{
    admin_client, client_config, log_client_error, log_client_event, DEFAULT_SESSION_TIMEOUT,
};
use crate::error::ReplicationError;
use crate::offset_store::ensure_internal_topic;
use crate::spec::ClusterSpec;

/// How long a poll of the group's consumer waits: how soon the thread sees
/// that it should stop.
const POLL: Duration = Duration::from_millis(100);

/// Longest wait for the lanes topic's partitions to show in metadata.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// The topic whose partitions are the lanes of `group_id`'s flow.
pub fn lanes_topic(group_id: &str) -> String {
    format!("strait.lanes.{group_id}")
}

/// Creates the lanes topic of `group_id` with `lanes` partitions, or checks
/// that the existing one has that many: changing the number would move
/// partitions between lanes while the old lanes may hold open transactions.
pub async fn ensure_lanes_topic(
    cluster: &ClusterSpec,
    group_id: &str,
    lanes: u32,
) -> Result<(), ReplicationError> {
    let topic = lanes_topic(group_id);
    let partitions = i32::try_from(lanes).unwrap_or(i32::MAX);
    ensure_internal_topic(cluster, &topic, partitions, &[]).await?;
    let admin = admin_client(cluster)?;
    let (alias, name) = (cluster.alias.clone(), topic.clone());
    let found = tokio::task::spawn_blocking(move || {
        // A topic just created may take a moment to show its partitions.
        let deadline = Instant::now() + METADATA_WAIT;
        loop {
            let found = admin
                .inner()
                .fetch_metadata(Some(&name), METADATA_WAIT)
                .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()));
            match found {
                Ok(0) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| ReplicationError::ActorGone { actor: "metadata" })?
    .map_err(|e| ReplicationError::TopicCreation {
        cluster: alias.clone(),
        topic: topic.clone(),
        reason: format!("reading its partition count: {e}"),
    })?;
    let found = i32::try_from(found).unwrap_or(i32::MAX);
    if found != partitions {
        return Err(ReplicationError::LaneCount {
            cluster: alias,
            topic,
            found,
            configured: lanes,
        });
    }
    Ok(())
}

/// Brings up the destination's group coordinator for `group_id` before the
/// lane group joins: on a destination that never saw a consumer group, the
/// first lookup creates `__consumer_offsets`, which took 3 s of an
/// exactly-once flow's start (BENCHMARKS.md). Asks for the group's
/// committed offsets, which looks the coordinator up; nothing waits for it.
pub async fn warm_up(cluster: &ClusterSpec, group_id: &str) -> Result<(), ReplicationError> {
    let consumer: BaseConsumer = client_config(cluster, &[], &[("group.id", group_id.to_string())])
        .create()
        .map_err(|source| ReplicationError::ClientCreation {
            cluster: cluster.alias.clone(),
            source: Box::new(source),
        })?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&lanes_topic(group_id), 0);
    let alias = cluster.alias.clone();
    tokio::task::spawn_blocking(move || consumer.committed_offsets(tpl, METADATA_WAIT))
        .await
        .map_err(|_| ReplicationError::ActorGone {
            actor: "lane group warm-up",
        })?
        .map(|_| ())
        .map_err(|e| ReplicationError::Transaction {
            cluster: alias,
            reason: format!("looking up the lane group's coordinator: {e}"),
        })
}

/// Lanes now owned by this instance.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct LanesAssigned(pub Vec<u32>);

/// Lanes taken from this instance: answered once their transactions have
/// ended and their producers are closed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct LanesRevoked(pub Vec<u32>);

/// Receives the group consumer's callbacks on the polling thread.
struct OwnershipContext {
    cluster: String,
    assigned: Recipient<LanesAssigned>,
    revoked: Recipient<LanesRevoked>,
    /// Set once the owner stops: lanes are no longer reported.
    stopping: Arc<AtomicBool>,
}

impl ClientContext for OwnershipContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }
}

impl ConsumerContext for OwnershipContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        match rebalance {
            // Runs on the polling thread, never on the arbiter: safe to wait.
            Rebalance::Revoke(tpl) => {
                let _ = futures::executor::block_on(self.revoked.send(LanesRevoked(lanes(tpl))));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(cluster = %self.cluster, error = %error, "lane group rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Once the assignment is applied, so lanes are reported owned only
        // when the group has handed them over.
        if let Rebalance::Assign(tpl) = rebalance {
            let lanes = lanes(tpl);
            if !lanes.is_empty() {
                self.assigned.do_send(LanesAssigned(lanes));
            }
        }
    }
}

/// The lanes of a list of the lanes topic's partitions.
fn lanes(tpl: &TopicPartitionList) -> Vec<u32> {
    tpl.elements()
        .iter()
        .filter_map(|e| u32::try_from(e.partition()).ok())
        .collect()
}

/// This instance's member of a flow's lane group, polled by a thread of its
/// own. Stop it with [`LaneOwnership::stop`], which leaves the group.
pub struct LaneOwnership {
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LaneOwnership {
    /// Joins `group_id`'s lane group on `cluster` (the lanes topic must
    /// exist: [`ensure_lanes_topic`]) and reports lanes assigned and revoked.
    pub fn start(
        cluster: &ClusterSpec,
        group_id: &str,
        assigned: Recipient<LanesAssigned>,
        revoked: Recipient<LanesRevoked>,
    ) -> Result<Self, ReplicationError> {
        let stopping = Arc::new(AtomicBool::new(false));
        let context = OwnershipContext {
            cluster: cluster.alias.clone(),
            assigned,
            revoked,
            stopping: Arc::clone(&stopping),
        };
        let consumer: BaseConsumer<OwnershipContext> = client_config(
            cluster,
            &[
                // A crashed instance's lanes move after this long, as its
                // source partitions do in at-least-once flows.
                (
                    "session.timeout.ms",
                    DEFAULT_SESSION_TIMEOUT.as_millis().to_string(),
                ),
                ("heartbeat.interval.ms", "3000".into()),
            ],
            &[
                ("group.id", group_id.to_string()),
                // Only the lanes that change hands move.
                ("partition.assignment.strategy", "cooperative-sticky".into()),
                ("enable.auto.commit", "false".into()),
                ("enable.partition.eof", "false".into()),
            ],
        )
        .create_with_context(context)
        .map_err(|source| ReplicationError::ClientCreation {
            cluster: cluster.alias.clone(),
            source: Box::new(source),
        })?;
        let topic = lanes_topic(group_id);
        consumer
            .subscribe(&[&topic])
            .map_err(|source| ReplicationError::Subscribe {
                cluster: cluster.alias.clone(),
                source: Box::new(source),
            })?;
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name(format!("strait-lanes-{}", cluster.alias))
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // The topic is never written: a record here is ignored.
                    let _ = consumer.poll(POLL);
                }
                // Dropping the consumer closes it and leaves the group.
                drop(consumer);
            })
            .map_err(|_| ReplicationError::ActorGone {
                actor: "lane group polling thread",
            })?;
        Ok(Self {
            stopping,
            thread: Some(thread),
        })
    }

    /// Leaves the group (the owner has closed its lanes first) and waits
    /// for the polling thread to end. Blocks: call it off the arbiter.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LaneOwnership {
    fn drop(&mut self) {
        // Without `stop`, the thread still ends (and leaves the group) on
        // its own, unwaited.
        self.stopping.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flows_lanes_topic_is_named_after_its_group() {
        assert_eq!(lanes_topic("strait.dr"), "strait.lanes.strait.dr");
    }
}
