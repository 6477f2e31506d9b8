//! The live picture of every flow, for `/status`, `/ready` and the progress line.
//!
//! Actors write to it as things happen; readers take a [`Snapshot`], a plain
//! serializable copy. Nothing here holds a secret: clusters appear by alias
//! and bootstrap servers only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::progress::PartitionProgress;

/// Every flow of this process.
#[derive(Debug, Default)]
pub struct StatusBoard {
    flows: RwLock<BTreeMap<String, Arc<FlowStatus>>>,
}

impl StatusBoard {
    /// An empty board.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a flow (or returns the one already there under that name).
    pub fn flow(&self, name: &str, source: &str, destination: &str) -> Arc<FlowStatus> {
        let mut flows = self.flows.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(flows.entry(name.to_string()).or_insert_with(|| {
            Arc::new(FlowStatus {
                name: name.to_string(),
                source: source.to_string(),
                destination: destination.to_string(),
                state: Mutex::new(FlowState::Starting),
                partitions: RwLock::default(),
                topics: RwLock::default(),
                source_reachability: Reachability::default(),
                destination_reachability: Reachability::default(),
            })
        }))
    }

    /// A copy of everything, for the HTTP endpoints.
    pub fn snapshot(&self) -> Snapshot {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            flows: flows.values().map(|f| f.snapshot()).collect(),
        }
    }

    /// `Ok` when every flow is copying: it is running, neither of its
    /// clusters failed its last reachability check, and none of its
    /// partitions' copiers is restarting or failed. Otherwise why not, one
    /// reason per flow (at most a few partitions named).
    pub fn ready(&self) -> Result<(), String> {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        if flows.is_empty() {
            return Err("no flow has started yet".to_string());
        }
        let not_ready: Vec<String> = flows.values().filter_map(|f| f.not_ready()).collect();
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready.join("; "))
        }
    }

    /// Sum over all partitions: (records acknowledged, total lag in records).
    pub fn totals(&self) -> (u64, i64) {
        let flows = self.flows.read().unwrap_or_else(|e| e.into_inner());
        let mut acked = 0;
        let mut lag = 0;
        for f in flows.values() {
            for p in f
                .partitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                acked += p.progress.acked_records();
                lag += p.progress.lag().unwrap_or(0);
            }
        }
        (acked, lag)
    }
}

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Connecting to its clusters.
    Starting,
    /// Connected and copying.
    Running,
    /// A cluster is unreachable; retrying.
    Degraded,
    /// Delivering what is in flight before exiting.
    Stopping,
    /// Done.
    Stopped,
}

impl std::fmt::Display for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PartitionState::Copying => "copying",
            PartitionState::Restarting => "restarting",
            PartitionState::Failed => "failed",
            PartitionState::Stopped => "stopped",
        })
    }
}

impl PartitionState {
    /// Every state, for metrics with one series per state.
    pub const ALL: [PartitionState; 4] = [
        PartitionState::Copying,
        PartitionState::Restarting,
        PartitionState::Failed,
        PartitionState::Stopped,
    ];
}

impl std::fmt::Display for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            FlowState::Starting => "starting",
            FlowState::Running => "running",
            FlowState::Degraded => "degraded",
            FlowState::Stopping => "stopping",
            FlowState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// A cluster's part in a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterRole {
    /// Records are read from it.
    Source,
    /// Records are written to it.
    Destination,
}

impl std::fmt::Display for ClusterRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClusterRole::Source => "source",
            ClusterRole::Destination => "destination",
        })
    }
}

/// What the last reachability check of a cluster found.
#[derive(Debug, Default)]
struct Reachability {
    /// `None` until the first check.
    last: Mutex<Option<Result<(), String>>>,
}

impl Reachability {
    fn set(&self, result: Result<(), String>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }

    fn get(&self) -> Option<Result<(), String>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where a partition's copier is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Reading and writing.
    Copying,
    /// Failed; waiting to be restarted.
    Restarting,
    /// Failed too often, or for good: not copying.
    Failed,
    /// Revoked or stopped.
    Stopped,
}

/// One flow's live state.
#[derive(Debug)]
pub struct FlowStatus {
    name: String,
    source: String,
    destination: String,
    state: Mutex<FlowState>,
    partitions: RwLock<BTreeMap<(String, i32), Arc<PartitionStatus>>>,
    topics: RwLock<BTreeMap<String, TopicStatus>>,
    source_reachability: Reachability,
    destination_reachability: Reachability,
}

impl FlowStatus {
    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The flow's state.
    pub fn state(&self) -> FlowState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the flow to `state`.
    pub fn set_state(&self, state: FlowState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The alias of the cluster playing `role`.
    pub fn cluster(&self, role: ClusterRole) -> &str {
        match role {
            ClusterRole::Source => &self.source,
            ClusterRole::Destination => &self.destination,
        }
    }

    /// Notes the outcome of a reachability check of the flow's `role` cluster:
    /// `Err` holds why it could not be reached (no secret: an error message
    /// naming the cluster by alias and bootstrap servers).
    pub fn set_reachable(&self, role: ClusterRole, result: Result<(), String>) {
        match role {
            ClusterRole::Source => self.source_reachability.set(result),
            ClusterRole::Destination => self.destination_reachability.set(result),
        }
    }

    /// The last reachability check of the `role` cluster; `None` before the first.
    pub fn reachable(&self, role: ClusterRole) -> Option<Result<(), String>> {
        match role {
            ClusterRole::Source => self.source_reachability.get(),
            ClusterRole::Destination => self.destination_reachability.get(),
        }
    }

    /// Why the flow is not copying, or `None` when it is.
    fn not_ready(&self) -> Option<String> {
        let state = self.state();
        if state != FlowState::Running {
            return Some(format!("flow `{}` is {state}", self.name));
        }
        for role in [ClusterRole::Source, ClusterRole::Destination] {
            if let Some(Err(error)) = self.reachable(role) {
                return Some(format!(
                    "flow `{}`: {role} cluster `{}` is unreachable: {error}",
                    self.name,
                    self.cluster(role)
                ));
            }
        }
        const NAMED: usize = 3;
        let stuck: Vec<String> = self
            .partitions()
            .iter()
            .filter(|p| {
                matches!(
                    p.state(),
                    PartitionState::Restarting | PartitionState::Failed
                )
            })
            .map(|p| format!("{}[{}] is {}", p.topic, p.partition, p.state()))
            .collect();
        if stuck.is_empty() {
            return None;
        }
        let more = match stuck.len() {
            n if n > NAMED => format!(" and {} more", n - NAMED),
            _ => String::new(),
        };
        Some(format!(
            "flow `{}`: {}{more}",
            self.name,
            stuck[..stuck.len().min(NAMED)].join(", ")
        ))
    }

    /// Notes a topic the flow copies and where to.
    pub fn set_topic(&self, topic: &str, status: TopicStatus) {
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), status);
    }

    /// Forgets a topic (deleted at the source).
    pub fn remove_topic(&self, topic: &str) {
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
    }

    /// Topics known to the flow.
    pub fn topics(&self) -> BTreeMap<String, TopicStatus> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The status of an assigned partition, created on first use.
    pub fn partition(
        &self,
        topic: &str,
        partition: i32,
        destination_topic: &str,
    ) -> Arc<PartitionStatus> {
        let mut parts = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            parts
                .entry((topic.to_string(), partition))
                .or_insert_with(|| {
                    Arc::new(PartitionStatus {
                        topic: topic.to_string(),
                        partition,
                        destination_topic: destination_topic.to_string(),
                        progress: PartitionProgress::new(),
                        state: Mutex::new(PartitionState::Copying),
                        restarts: AtomicU64::new(0),
                        last_error: Mutex::new(None),
                    })
                }),
        )
    }

    /// The status of a partition, if it was ever assigned here.
    pub fn find_partition(&self, topic: &str, partition: i32) -> Option<Arc<PartitionStatus>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Every partition ever assigned here.
    pub fn partitions(&self) -> Vec<Arc<PartitionStatus>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Drops a partition that moved to another instance.
    pub fn remove_partition(&self, topic: &str, partition: i32) {
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(topic.to_string(), partition));
    }

    fn snapshot(&self) -> FlowSnapshot {
        let mut topics: BTreeMap<String, TopicSnapshot> = self
            .topics()
            .into_iter()
            .map(|(name, t)| {
                (
                    name,
                    TopicSnapshot {
                        destination_topic: t.destination_topic,
                        partitions: t.partitions,
                        state: t.state,
                        assigned: Vec::new(),
                    },
                )
            })
            .collect();
        for p in self.partitions() {
            let snap = p.snapshot();
            topics
                .entry(p.topic.clone())
                .or_insert_with(|| TopicSnapshot {
                    destination_topic: p.destination_topic.clone(),
                    partitions: 0,
                    state: "copying".to_string(),
                    assigned: Vec::new(),
                })
                .assigned
                .push(snap);
        }
        let reachability = |role| match self.reachable(role) {
            None => ReachabilitySnapshot {
                reachable: None,
                error: None,
            },
            Some(Ok(())) => ReachabilitySnapshot {
                reachable: Some(true),
                error: None,
            },
            Some(Err(error)) => ReachabilitySnapshot {
                reachable: Some(false),
                error: Some(error),
            },
        };
        FlowSnapshot {
            name: self.name.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            state: self.state(),
            source_reachability: reachability(ClusterRole::Source),
            destination_reachability: reachability(ClusterRole::Destination),
            topics,
        }
    }
}

/// What the flow knows of one source topic.
#[derive(Clone, Debug, Serialize)]
pub struct TopicStatus {
    /// Where it is copied to.
    pub destination_topic: String,
    /// Its partition count at the source.
    pub partitions: i32,
    /// `copying`, `creating`, `waiting: <reason>`, ...
    pub state: String,
}

/// One assigned partition's live state.
#[derive(Debug)]
pub struct PartitionStatus {
    /// Source topic.
    pub topic: String,
    /// Partition number (the same at source and destination).
    pub partition: i32,
    /// Destination topic.
    pub destination_topic: String,
    /// Acknowledged offsets.
    pub progress: Arc<PartitionProgress>,
    state: Mutex<PartitionState>,
    restarts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl PartitionStatus {
    /// The partition's state.
    pub fn state(&self) -> PartitionState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the partition to `state`.
    pub fn set_state(&self, state: PartitionState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Counts a restart of the copier, with the error that caused it.
    pub fn record_failure(&self, error: String) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// Copier restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Notes that the destination acknowledged a record written at
    /// `offset` of the destination partition. Cheap (one atomic maximum):
    /// call it from the delivery callback.
    pub fn destination_delivered(&self, offset: i64) {
        self.progress.destination_delivered(offset);
    }

    /// Next offset after the newest record the destination acknowledged,
    /// once one has been.
    pub fn destination_offset(&self) -> Option<i64> {
        self.progress.destination_offset()
    }

    /// Seconds between now and the source timestamp of the newest
    /// acknowledged record while records remain to copy; 0 when caught up;
    /// `None` when unknown.
    pub fn lag_seconds(&self) -> Option<f64> {
        match self.progress.lag()? {
            0 => Some(0.0),
            _ => {
                let ts = self.progress.last_acked_timestamp()?;
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .ok()?
                    .as_millis() as i64;
                Some((now_ms - ts).max(0) as f64 / 1000.0)
            }
        }
    }

    /// The last error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn snapshot(&self) -> PartitionSnapshot {
        PartitionSnapshot {
            partition: self.partition,
            state: self.state(),
            source_high_watermark: self.progress.high_watermark(),
            replicated_offset: self.progress.committable(),
            destination_offset: self.destination_offset(),
            lag_seconds: self.lag_seconds(),
            committed_offset: self.progress.committed(),
            lag_records: self.progress.lag(),
            in_flight_batches: self.progress.in_flight_batches(),
            records_replicated: self.progress.acked_records(),
            restarts: self.restarts(),
            last_error: self.last_error(),
        }
    }
}

/// `/status` as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// One entry per flow.
    pub flows: Vec<FlowSnapshot>,
}

/// One flow in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSnapshot {
    /// The flow's name.
    pub name: String,
    /// Source cluster alias.
    pub source: String,
    /// Destination cluster alias.
    pub destination: String,
    /// The flow's state.
    pub state: FlowState,
    /// The source cluster's last reachability check.
    pub source_reachability: ReachabilitySnapshot,
    /// The destination cluster's last reachability check.
    pub destination_reachability: ReachabilitySnapshot,
    /// Per source topic.
    pub topics: BTreeMap<String, TopicSnapshot>,
}

/// A cluster's last reachability check in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct ReachabilitySnapshot {
    /// `true`: it answered; `false`: it did not; `null`: not checked yet.
    pub reachable: Option<bool>,
    /// Why it could not be reached.
    pub error: Option<String>,
}

/// One topic in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct TopicSnapshot {
    /// Where it is copied to.
    pub destination_topic: String,
    /// Partition count at the source.
    pub partitions: i32,
    /// The topic's state.
    pub state: String,
    /// The partitions assigned to this instance.
    pub assigned: Vec<PartitionSnapshot>,
}

/// One partition in `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionSnapshot {
    /// Partition number.
    pub partition: i32,
    /// The copier's state.
    pub state: PartitionState,
    /// Source high watermark, when known.
    pub source_high_watermark: Option<i64>,
    /// Next source offset not yet acknowledged by the destination.
    pub replicated_offset: Option<i64>,
    /// Next destination offset after the newest record the destination
    /// acknowledged, when known.
    pub destination_offset: Option<i64>,
    /// Age of the newest acknowledged record while records remain to copy;
    /// 0 when caught up.
    pub lag_seconds: Option<f64>,
    /// Last offset committed to the source consumer group.
    pub committed_offset: Option<i64>,
    /// Records still to copy.
    pub lag_records: Option<i64>,
    /// Batches sent but not yet acknowledged.
    pub in_flight_batches: usize,
    /// Records copied by this process.
    pub records_replicated: u64,
    /// Copier restarts.
    pub restarts: u64,
    /// The last error.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_flow(board: &StatusBoard) -> Arc<FlowStatus> {
        let flow = board.flow("f", "east", "central");
        flow.set_state(FlowState::Running);
        flow
    }

    #[test]
    fn ready_needs_a_running_flow() {
        let board = StatusBoard::new();
        assert_eq!(board.ready(), Err("no flow has started yet".to_string()));
        let flow = board.flow("f", "east", "central");
        assert_eq!(board.ready(), Err("flow `f` is starting".to_string()));
        flow.set_state(FlowState::Running);
        assert_eq!(board.ready(), Ok(()));
    }

    #[test]
    fn ready_needs_both_clusters_reachable() {
        let board = StatusBoard::new();
        let flow = running_flow(&board);
        flow.set_reachable(ClusterRole::Source, Ok(()));
        flow.set_reachable(
            ClusterRole::Destination,
            Err("cluster `central` (c:9092) is unreachable: timed out".to_string()),
        );
        let why = board.ready().expect_err("destination down");
        assert!(
            why.contains("destination cluster `central` is unreachable"),
            "{why}"
        );
        flow.set_reachable(ClusterRole::Destination, Ok(()));
        assert_eq!(board.ready(), Ok(()));
        let snap = board.snapshot();
        assert_eq!(snap.flows[0].destination_reachability.reachable, Some(true));
    }

    #[test]
    fn ready_needs_every_copier_running() {
        let board = StatusBoard::new();
        let flow = running_flow(&board);
        for p in 0..5 {
            flow.partition("orders", p, "orders");
        }
        assert_eq!(board.ready(), Ok(()));
        flow.partition("orders", 1, "orders")
            .set_state(PartitionState::Restarting);
        let why = board.ready().expect_err("a copier restarts");
        assert_eq!(why, "flow `f`: orders[1] is restarting");
        for p in 0..5 {
            flow.partition("orders", p, "orders")
                .set_state(PartitionState::Failed);
        }
        let why = board.ready().expect_err("copiers failed");
        assert!(why.ends_with("and 2 more"), "{why}");
        flow.partition("orders", 0, "orders")
            .set_state(PartitionState::Stopped);
    }

    #[test]
    fn destination_offset_is_the_next_after_the_newest_acknowledged() {
        let board = StatusBoard::new();
        let p = running_flow(&board).partition("t", 0, "t");
        assert_eq!(p.destination_offset(), None);
        p.destination_delivered(41);
        p.destination_delivered(7);
        assert_eq!(p.destination_offset(), Some(42));
        p.progress.set_start(10);
        p.progress.set_high_watermark(10);
        assert_eq!(p.lag_seconds(), Some(0.0), "caught up");
        let snap = board.snapshot();
        let part = &snap.flows[0].topics["t"].assigned[0];
        assert_eq!(part.destination_offset, Some(42));
        assert_eq!(part.lag_seconds, Some(0.0));
    }
}
