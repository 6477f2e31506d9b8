//! The offset map stored on the destination, for exactly-once flows.
//!
//! Each transaction of an exactly-once copier writes its records *and* one
//! record to the compacted topic [`OFFSETS_TOPIC`] saying how far the source
//! partition has been copied. Both become visible together or not at all, so
//! on restart a copier resumes from the stored position and a read_committed
//! reader of the destination sees every source record once. The same map is
//! what failover tooling reads to translate positions.
//!
//! Key: `<group id>/<source topic>/<partition>`; value: JSON
//! `{"flow": ..., "source_cluster": ..., "next_offset": N}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::client::{admin_client, client_config, LoggingContext};
use crate::error::ReplicationError;
use crate::spec::ClusterSpec;

/// The destination topic holding exactly-once progress.
pub const OFFSETS_TOPIC: &str = "strait.offsets";

/// Partitions of [`OFFSETS_TOPIC`] when Strait creates it. One keeps reads
/// simple; compaction keeps it small.
const OFFSETS_PARTITIONS: i32 = 1;

/// Longest wait to read the stored offsets at assignment.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The key of a source partition's entry.
pub fn key(group_id: &str, topic: &str, partition: i32) -> String {
    format!("{group_id}/{topic}/{partition}")
}

/// One entry of the offset map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    /// The flow that wrote it.
    pub flow: String,
    /// The source cluster's alias.
    pub source_cluster: String,
    /// The next source offset to copy.
    pub next_offset: i64,
}

impl StoredOffset {
    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of strings and an integer cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Creates [`OFFSETS_TOPIC`] on the destination if it is missing: compacted,
/// replicated like Kafka's own internal topics (up to 3).
pub async fn ensure_topic(cluster: &ClusterSpec) -> Result<(), ReplicationError> {
    ensure_internal_topic(
        cluster,
        OFFSETS_TOPIC,
        OFFSETS_PARTITIONS,
        &[("cleanup.policy", "compact"), ("segment.ms", "600000")],
    )
    .await
}

/// Creates a topic Strait itself writes to (the offset map, a dead-letter
/// topic) if it is missing, with a replication factor of up to 3.
pub async fn ensure_internal_topic(
    cluster: &ClusterSpec,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), ReplicationError> {
    let admin = admin_client(cluster)?;
    let error = |reason: String| ReplicationError::TopicCreation {
        cluster: cluster.alias.clone(),
        topic: name.to_string(),
        reason,
    };
    let (admin, brokers) = tokio::task::spawn_blocking(move || {
        let brokers = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| m.brokers().len() as i32);
        (admin, brokers)
    })
    .await
    .map_err(|_| ReplicationError::ActorGone { actor: "metadata" })?;
    let brokers = brokers.map_err(|e| error(e.to_string()))?;
    let mut topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(brokers.clamp(1, 3)),
    );
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .map_err(|e| error(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(error(code.to_string())),
        }
    }
    Ok(())
}

/// The offset map of one flow, read once for all the copiers that ask at
/// about the same time: on a flow of 1,000 partitions, one consumer reading
/// the map once instead of 1,000 consumers each reading all of it (which
/// swamped a single destination broker).
///
/// A copier asks after its `init_transactions` fenced the partition's older
/// owner, and must see every entry committed before it asked; so an answer
/// always comes from a read that began after the question.
///
/// The reader keeps the client that asks where the map ends from one read
/// to the next, and reads the entries with a new consumer whose teardown
/// it does not wait for: creating two clients, connecting them and
/// destroying them took 0.2–0.5 s of each read, and a flow's copiers,
/// opening their producers a few at a time, ask in several waves at start.
/// (A consumer kept and assigned again could report the position of its
/// previous read until librdkafka had processed the unassignment, which
/// would end a read before it began.)
#[derive(Debug)]
pub struct OffsetMapReader {
    cluster: ClusterSpec,
    group_id: String,
    /// Questions asked so far; each question's number is its ticket.
    asked: AtomicU64,
    /// Reads done so far.
    reads: AtomicU64,
    /// Times the reader made the client that asks where the map ends.
    ends_clients_made: Arc<AtomicU64>,
    last: tokio::sync::Mutex<LastRead>,
}

#[derive(Debug, Default)]
struct LastRead {
    /// The read began after every ticket up to this one was handed out.
    covers: u64,
    map: BTreeMap<(String, i32), i64>,
    /// The client that asked where the map ends, unless the read failed.
    ends_client: Option<MapEnds>,
}

impl OffsetMapReader {
    /// A reader of `group_id`'s entries on `cluster`; reads nothing yet.
    pub fn new(cluster: ClusterSpec, group_id: String) -> Self {
        Self {
            cluster,
            group_id,
            asked: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            ends_clients_made: Arc::new(AtomicU64::new(0)),
            last: tokio::sync::Mutex::new(LastRead::default()),
        }
    }

    /// The stored next offset of a source partition, if the map has one.
    pub async fn next_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, ReplicationError> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = self.last.lock().await;
        if last.covers < ticket {
            // Every ticket up to `covers` was handed out before this read starts.
            let covers = self.asked.load(Ordering::SeqCst);
            let (cluster, group) = (self.cluster.clone(), self.group_id.clone());
            let ends = last.ends_client.take();
            let made = Arc::clone(&self.ends_clients_made);
            let began = Instant::now();
            // librdkafka's calls block: off the arbiter.
            let (map, ends) = tokio::task::spawn_blocking(move || {
                let ends = match ends {
                    Some(ends) => ends,
                    None => match MapEnds::new(&cluster, &group) {
                        Ok(ends) => {
                            made.fetch_add(1, Ordering::SeqCst);
                            ends
                        }
                        Err(e) => return (Err(e), None),
                    },
                };
                match ends.read(&cluster, &group) {
                    Ok(map) => (Ok(map), Some(ends)),
                    // The client may be what failed: the next read makes a new one.
                    Err(e) => (Err(e), None),
                }
            })
            .await
            .map_err(|_| ReplicationError::ActorGone {
                actor: "offset map reader",
            })?;
            last.ends_client = ends;
            let map = map?;
            self.reads.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(
                group = %self.group_id,
                entries = map.len(),
                questions = covers - last.covers,
                seconds = began.elapsed().as_secs_f64(),
                "read the offset map"
            );
            last.covers = covers;
            last.map = map;
        }
        Ok(last.map.get(&(topic.to_string(), partition)).copied())
    }

    /// How many times the map was read.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// How many times the reader made the client that asks where the map
    /// ends: once, unless a read failed.
    pub fn ends_clients_made(&self) -> u64 {
        self.ends_clients_made.load(Ordering::SeqCst)
    }
}

impl Drop for OffsetMapReader {
    fn drop(&mut self) {
        if let Some(ends) = self.last.get_mut().ends_client.take() {
            drop_in_background(ends);
        }
    }
}

/// Drops a client on tokio's blocking pool, where there is one, so that
/// nobody waits for its threads to end (not the arbiter, not a read);
/// otherwise here.
fn drop_in_background<T: Send + 'static>(client: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(client));
        }
        Err(_) => drop(client),
    }
}

/// The client that asks where each partition of the map ends (and how many
/// there are). The end is the high watermark, asked for read_uncommitted:
/// other copiers commit to this topic all the time, so waiting for "end of
/// partition" may never end; and a read_committed client is told the last
/// stable offset, which a transaction still open elsewhere (another
/// partition's zombie, not yet fenced) holds back below entries committed
/// after it began, so the read stopped short and answered with an older
/// entry (records copied twice, seen in the SIGKILL test). Reaching the high
/// watermark read_committed waits for those transactions to end instead.
struct MapEnds(BaseConsumer<LoggingContext>);

impl std::fmt::Debug for MapEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MapEnds")
    }
}

impl MapEnds {
    fn new(cluster: &ClusterSpec, group_id: &str) -> Result<Self, ReplicationError> {
        Ok(Self(map_reader(cluster, group_id, "read_uncommitted")?))
    }

    /// Reads the committed entries of `group_id`, keyed by (topic,
    /// partition), from the map's start to the ends it has now, with a new
    /// read_committed consumer. Blocking: call it off the arbiter.
    fn read(
        &self,
        cluster: &ClusterSpec,
        group_id: &str,
    ) -> Result<BTreeMap<(String, i32), i64>, ReplicationError> {
        let unreachable = |source: KafkaError| ReplicationError::Unreachable {
            cluster: cluster.alias.clone(),
            bootstrap: cluster.bootstrap_servers().to_string(),
            source: Box::new(source),
        };
        let metadata = self
            .0
            .fetch_metadata(Some(OFFSETS_TOPIC), Duration::from_secs(10))
            .map_err(unreachable)?;
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..partitions {
            let (low, high) = self
                .0
                .fetch_watermarks(OFFSETS_TOPIC, p, Duration::from_secs(10))
                .map_err(unreachable)?;
            if high > low {
                let _ = tpl.add_partition_offset(OFFSETS_TOPIC, p, Offset::Offset(low));
                ends.push((p, high));
            }
        }
        if ends.is_empty() {
            return Ok(BTreeMap::new());
        }
        let consumer = map_reader(cluster, group_id, "read_committed")?;
        consumer.assign(&tpl).map_err(unreachable)?;
        let stored = read_entries(&consumer, group_id, &ends, cluster);
        drop_in_background(consumer);
        stored
    }
}

/// Consumes the assigned map partitions up to `ends`: `group_id`'s entries.
fn read_entries(
    consumer: &BaseConsumer<LoggingContext>,
    group_id: &str,
    ends: &[(i32, i64)],
    cluster: &ClusterSpec,
) -> Result<BTreeMap<(String, i32), i64>, ReplicationError> {
    let mut stored = BTreeMap::new();
    let prefix = format!("{group_id}/");
    let deadline = Instant::now() + READ_TIMEOUT;
    while !reached(consumer, ends) {
        if Instant::now() > deadline {
            return Err(ReplicationError::OffsetMap {
                cluster: cluster.alias.clone(),
                reason: format!("timed out after {READ_TIMEOUT:?} reading {OFFSETS_TOPIC}"),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let Some(rest) = k.strip_prefix(&prefix) else {
                    continue;
                };
                let Some((topic, partition)) = rest.rsplit_once('/') else {
                    continue;
                };
                let Ok(partition) = partition.parse::<i32>() else {
                    continue;
                };
                let entry = (topic.to_string(), partition);
                match m.payload().map(serde_json::from_slice::<StoredOffset>) {
                    Some(Ok(v)) => {
                        stored.insert(entry, v.next_offset);
                    }
                    // A tombstone forgets the entry.
                    None => {
                        stored.remove(&entry);
                    }
                    Some(Err(_)) => {}
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "reading {OFFSETS_TOPIC}"),
        }
    }
    Ok(stored)
}

/// A consumer of [`OFFSETS_TOPIC`] that joins no group and commits nothing.
fn map_reader(
    cluster: &ClusterSpec,
    group_id: &str,
    isolation_level: &str,
) -> Result<BaseConsumer<LoggingContext>, ReplicationError> {
    client_config(
        cluster,
        &[],
        &[
            ("isolation.level", isolation_level.to_string()),
            ("enable.partition.eof", "false".to_string()),
            // The read ends at a known offset: a fetch waiting at the
            // broker for more (500 ms by default) only delays it.
            ("fetch.wait.max.ms", "10".to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("group.id", format!("{group_id}.offsets-reader")),
        ],
    )
    .create_with_context(LoggingContext {
        cluster: cluster.alias.clone(),
    })
    .map_err(|source| ReplicationError::ClientCreation {
        cluster: cluster.alias.clone(),
        source: Box::new(source),
    })
}

/// True once the consumer's position (past any transaction markers) has
/// reached every partition's end.
fn reached<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    ends: &[(i32, i64)],
) -> bool {
    let Ok(position) = consumer.position() else {
        return false;
    };
    ends.iter().all(|(p, end)| {
        matches!(
            position.find_partition(OFFSETS_TOPIC, *p).map(|e| e.offset()),
            Some(Offset::Offset(o)) if o >= *end
        )
    })
}
