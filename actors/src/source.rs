//! The source cluster's supervisor: one consumer-group member per flow.
//!
//! It owns the group consumer and starts one [`Copier`] per assigned
//! partition. Because the partitions are those of a consumer group, several
//! Strait instances with the same group id divide them between themselves.
//!
//! The consumer is polled by a thread of its own (see [`crate::dispatcher`]),
//! which hands each partition's records to its copier. librdkafka runs
//! rebalance callbacks on that thread, never on the actix arbiter: an
//! assignment gets its routes there and is handed to this actor; a revocation
//! waits there until the copiers have stopped and their progress is
//! committed, without ever blocking the arbiter the copiers run on.
//!
//! In an exactly-once flow in lanes, partitions are assigned by lane instead
//! of by the group (see [`lanes`]).
//!
//! Progress is committed to the group every `commit_interval`, per partition,
//! only up to the acknowledged prefix (see [`crate::progress`]), synchronously
//! on revocation and on shutdown.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{client_config, log_client_error, log_client_event, DEFAULT_SESSION_TIMEOUT};
use crate::copier::{Copier, CopierFaults, CopierParts, ExactlyOnce, InjectedAt, StopCopier};
use crate::destination::Destination;
use crate::discovery::PartitionHistory;
use crate::dispatcher::{self, BatchBudget, Command, Inbox, Routed, Routes};
use crate::error::ReplicationError;
use crate::lane::LanePanic;
use crate::metrics::{self as names, labels, PartitionMetrics};
use crate::offset_store::OffsetMapReader;
use crate::spec::{Delivery, FlowSpec, StartFrom};
use crate::status::{FlowStatus, PartitionState, PartitionStatus};
use crate::transactional::{self, FillBudget};

mod lanes;
use lanes::LaneState;

/// The group consumer of a flow's source cluster.
pub type SourceConsumer = BaseConsumer<SourceContext>;

/// How often copiers are checked for a closed mailbox, and metrics published.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a subscription change waits for the group's join to end (see
/// [`Join`]). librdkafka ends every join with a rebalance callback, so this
/// only guards against one that never comes; it is longer than a first join
/// usually takes on a production cluster (the broker's
/// `group.initial.rebalance.delay.ms`, 3 s, then other members rejoining at
/// their next heartbeat).
const JOIN_HOLD_MAX: Duration = Duration::from_secs(10);

/// How often a held subscription change looks at the join again.
const JOIN_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Records the source consumer may hold read ahead, for all its partitions
/// (`queued.max.messages.kbytes`). At 32 MiB, peak RSS was 20–50 MB higher
/// on 8 to 1,000 partitions for the same records/s (benches/results/
/// 2026-11-26T2237-read-ahead-16-mib).
pub const SOURCE_PREFETCH_BYTES: usize = 16 * 1024 * 1024;

/// Records the source consumer may hold read ahead, for all its partitions
/// (`queued.min.messages`, librdkafka's default 100,000). librdkafka counts
/// only record values against [`SOURCE_PREFETCH_BYTES`], but keeps a few
/// hundred bytes of its own per record read ahead: on 100-byte records the
/// count limit came first, and peak RSS was 27–69 MB higher at its default
/// for the same records/s. At 20,000, records of about 840 bytes or more
/// still meet the byte limit first (benches/results/
/// 2026-12-08T0315-read-ahead-records).
pub const SOURCE_PREFETCH_RECORDS: usize = 20_000;

/// Bytes of records a flow holds between its consumer's read-ahead and its
/// producer's queue at most (or four batches of `batch_max_bytes`, if more):
/// see [`BatchBudget`].
pub const BATCH_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// Consumer defaults, each overridable through `[clusters.NAME.kafka]`.
fn consumer_defaults(spec: &FlowSpec) -> Vec<(&'static str, String)> {
    let refresh_ms = spec
        .topic_refresh_interval
        .as_millis()
        .clamp(1_000, 300_000);
    let mut defaults = vec![
        // Cooperative rebalancing moves only the partitions that change hands.
        ("partition.assignment.strategy", "cooperative-sticky".into()),
        // One fetch response at most this big: librdkafka keeps a response's
        // buffer until its last record is copied, so smaller responses let
        // memory go sooner (the default is 50 MB).
        ("fetch.max.bytes", (8 * 1024 * 1024).to_string()),
        // Once the read-ahead is full, look again this soon; the default
        // (1 s) left the copiers idle once they had drained it.
        ("fetch.queue.backoff.ms", "10".into()),
        // How long the broker may hold a fetch that finds nothing new. At
        // librdkafka's default (500 ms) records waited up to a second at
        // low rates (p99 871 ms at 2,000 records/s); at 20 ms, p99 was 17
        // ms, for at most 50 empty fetches a second per broker when idle.
        ("fetch.wait.max.ms", "20".into()),
        // And how little a fetch may return before that. At 1 byte (the
        // default) every fetch came back at once with a record or two: at
        // 2,000 records/s into 108 partitions, the consumer's broker thread
        // took 31-33% of a core and the source broker 10-20% more. 16 KiB
        // halved it, for up to 20 ms more at rates under 800 KB/s (p99 at
        // 200 records/s of 10 KB: 14 ms against 10; BENCHMARKS.md).
        ("fetch.min.bytes", "16384".into()),
        // Fresh high watermarks for lag.
        ("statistics.interval.ms", "1000".into()),
        // New partitions of subscribed topics are noticed this fast.
        ("topic.metadata.refresh.interval.ms", refresh_ms.to_string()),
        (
            "session.timeout.ms",
            DEFAULT_SESSION_TIMEOUT.as_millis().to_string(),
        ),
        ("heartbeat.interval.ms", "3000".into()),
        // Records of aborted transactions are never copied.
        ("isolation.level", "read_committed".into()),
    ];
    defaults.extend(read_ahead());
    defaults
}

/// How much the consumer reads ahead, for all partitions together (one queue
/// is polled), fetching up to `max.partition.fetch.bytes` (1 MB) per
/// partition at a time: bounded in bytes of record values, and in records,
/// for what librdkafka keeps besides those bytes.
fn read_ahead() -> [(&'static str, String); 2] {
    [
        (
            "queued.max.messages.kbytes",
            (SOURCE_PREFETCH_BYTES / 1024).to_string(),
        ),
        ("queued.min.messages", SOURCE_PREFETCH_RECORDS.to_string()),
    ]
}

/// Consumer settings Strait's progress tracking depends on.
fn consumer_forced(spec: &FlowSpec) -> Vec<(&'static str, String)> {
    let reset = match spec.start_from {
        StartFrom::Latest => "latest",
        StartFrom::Earliest | StartFrom::Timestamp(_) => "earliest",
    };
    vec![
        ("group.id", spec.group_id.clone()),
        // Progress is committed only after the destination acknowledged it.
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("enable.partition.eof", "false".into()),
        ("auto.offset.reset", reset.into()),
    ]
}

/// Receives the consumer's callbacks on the reading thread.
pub struct SourceContext {
    cluster: String,
    flow: Arc<FlowStatus>,
    start_from: StartFrom,
    supervisor: OnceLock<Addr<Source>>,
    /// Where each assigned partition's records go (see [`crate::dispatcher`]).
    routes: Mutex<Routes>,
    /// Routed in `pre_rebalance`, handed over in `post_rebalance`.
    assigned: Mutex<Vec<AssignedPartition>>,
    shutting_down: AtomicBool,
    /// Partition counts when the flow found each topic (see `assign`).
    history: Arc<PartitionHistory>,
    /// Group joins that ended, with an assignment or a rebalance error.
    joins_ended: AtomicU64,
}

/// A newly assigned partition and the inbox its records arrive in.
pub struct AssignedPartition {
    /// Source topic.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Where its records arrive.
    pub inbox: Inbox,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.hi_offset < 0 {
                    continue;
                }
                if let Some(status) = self.flow.find_partition(topic, *partition) {
                    status.progress.set_high_watermark(p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(base, tpl),
            Rebalance::Revoke(tpl) => self.revoke(base, tpl),
            Rebalance::Error(error) => {
                tracing::warn!(cluster = %self.cluster, error = %error, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // After the assignment was applied: a subscription change from here
        // on starts a join of its own (see `Join`).
        if matches!(rebalance, Rebalance::Assign(_) | Rebalance::Error(_)) {
            self.joins_ended.fetch_add(1, Ordering::SeqCst);
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        if let Rebalance::Assign(_) = rebalance {
            self.hand_over(base);
        }
    }
}

impl Routed for SourceContext {
    fn routes(&self) -> &Mutex<Routes> {
        &self.routes
    }
    fn cluster(&self) -> &str {
        &self.cluster
    }
    fn flow(&self) -> &str {
        self.flow.name()
    }
}

impl SourceContext {
    /// Hands the partitions routed by [`Self::assign`] over to the
    /// supervisor, once the consumer has them. Waits for it: never call it
    /// on the arbiter.
    fn hand_over(&self, base: &BaseConsumer<Self>) {
        let assigned =
            std::mem::take(&mut *self.assigned.lock().unwrap_or_else(|e| e.into_inner()));
        if assigned.is_empty() {
            return;
        }
        // Before any copier can ask for its partition (commands are
        // applied on the reading thread, after the poll this runs in).
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pause_held(base);
        if let Some(supervisor) = self.supervisor.get() {
            let _ = futures::executor::block_on(supervisor.send(Assigned(assigned)));
        }
    }

    fn assign(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let committed = base
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .ok();
        // Partitions added to a topic after the flow found it hold only new
        // records: they start at their beginning whatever start_from says.
        // Set in the assignment itself, since seeking a partition whose
        // fetcher has not started fails (see PartitionHistory).
        if let (Some(c), true) = (&committed, self.start_from != StartFrom::Earliest) {
            let has_progress = |t: &str, p: i32| {
                matches!(
                    c.find_partition(t, p).map(|e| e.offset()),
                    Some(Offset::Offset(_))
                )
            };
            for (topic, partition) in self.history.start_added_at_beginning(tpl, has_progress) {
                tracing::info!(cluster = %self.cluster, topic, partition, "partition added after its topic was found: copying it from its beginning");
            }
        }
        if let StartFrom::Timestamp(ms) = self.start_from {
            start_at_timestamp(base, tpl, committed.as_ref(), ms, &self.cluster);
        }
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        for e in tpl.elements() {
            let committed_offset = committed
                .as_ref()
                .and_then(|c| c.find_partition(e.topic(), e.partition()))
                .and_then(|c| match c.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            assigned.push(AssignedPartition {
                topic: e.topic().to_string(),
                partition: e.partition(),
                inbox: routes.add(e.topic(), e.partition()),
                committed: committed_offset,
            });
        }
    }

    fn revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let Some(supervisor) = self.supervisor.get() else {
            return;
        };
        let partitions = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        // Runs on the reading thread: waiting here holds the rebalance until the
        // copiers have drained, which is what makes the commit below complete.
        let Ok(offsets) = futures::executor::block_on(supervisor.send(Revoked(partitions))) else {
            return;
        };
        commit_sync(base, &offsets, &self.flow, &self.cluster);
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for e in tpl.elements() {
            routes.remove(base, e.topic(), e.partition());
        }
    }
}

/// Commits `offsets` and waits for the answer. (librdkafka reports async
/// manual commits only to an `offset_commit_cb`, which rust-rdkafka does not
/// set, so commits are synchronous, off the arbiter.) True on success.
fn commit_sync<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    offsets: &[(String, i32, i64)],
    flow: &FlowStatus,
    cluster: &str,
) -> bool {
    if offsets.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            for (topic, partition, offset) in offsets {
                if let Some(status) = flow.find_partition(topic, *partition) {
                    status.progress.mark_committed(*offset);
                }
            }
            tracing::debug!(
                cluster,
                flow = flow.name(),
                partitions = offsets.len(),
                "committed progress"
            );
            metrics::counter!(names::OFFSET_COMMITS, labels::FLOW => flow.name().to_string())
                .increment(1);
            true
        }
        Err(error) => {
            tracing::warn!(
                cluster,
                flow = flow.name(),
                error = %error,
                "committing progress to the source failed; retrying at the next interval (records after the last commit are copied again if Strait stops first)"
            );
            metrics::counter!(names::OFFSET_COMMIT_FAILURES, labels::FLOW => flow.name().to_string())
                .increment(1);
            false
        }
    }
}

/// Points partitions without stored progress at the first record at or after
/// `ms`, in the assignment itself: librdkafka refuses to seek a partition
/// whose fetcher has not started yet.
fn start_at_timestamp<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    assignment: &TopicPartitionList,
    committed: Option<&TopicPartitionList>,
    ms: i64,
    cluster: &str,
) {
    let mut lookup = TopicPartitionList::new();
    for e in assignment.elements() {
        let has_progress = committed
            .and_then(|c| c.find_partition(e.topic(), e.partition()))
            .is_some_and(|c| matches!(c.offset(), Offset::Offset(_)));
        // Partitions already placed (e.g. added ones, from their beginning) keep their place.
        if !has_progress && e.offset() == Offset::Invalid {
            let _ = lookup.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ms));
        }
    }
    if lookup.count() == 0 {
        return;
    }
    match consumer.offsets_for_times(lookup, Duration::from_secs(10)) {
        Ok(found) => {
            for f in found.elements() {
                // No record at or after the timestamp: start at the end.
                let offset = match f.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                };
                if let Some(mut e) = assignment.find_partition(f.topic(), f.partition()) {
                    let _ = e.set_offset(offset);
                }
            }
        }
        Err(error) => {
            tracing::warn!(cluster, error = %error, "could not look up offsets for start_from; starting from the earliest")
        }
    }
}

/// The lane panic `STRAIT_FAULTS` asks for, if any: one for the flow, so
/// its count holds across lanes and their re-openings.
fn lane_panic(spec: &FlowSpec) -> Option<LanePanic> {
    let (topic, partition, offset, times) = spec.faults.lane_panic_at.clone()?;
    Some(LanePanic {
        topic,
        partition,
        at: InjectedAt {
            offset,
            remaining: Arc::new(AtomicU32::new(times)),
        },
    })
}

/// A running copier and what the supervisor keeps of it.
struct CopierEntry {
    addr: Addr<Copier>,
    status: Arc<PartitionStatus>,
    faults: CopierFaults,
}

/// Supervises the source side of one flow.
pub struct Source {
    spec: Arc<FlowSpec>,
    flow: Arc<FlowStatus>,
    consumer: Arc<SourceConsumer>,
    /// Reaches the reading thread.
    commands: mpsc::Sender<Command>,
    destination: Addr<Destination>,
    copiers: HashMap<(Arc<str>, i32), CopierEntry>,
    subscription: BTreeSet<String>,
    /// The join the last subscription started.
    join: Option<Join>,
    /// A subscription change waiting for that join to end.
    held: Option<BTreeSet<String>>,
    /// A look at the held change is scheduled.
    held_check: bool,
    reader_stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    committing: bool,
    stopping: bool,
    /// Shared by the flow's copiers in exactly-once mode.
    exactly_once: Option<ExactlyOnce>,
    /// In an exactly-once flow in lanes: the lanes this instance owns and
    /// the partitions assigned for them (see [`lanes`]).
    lanes: Option<LaneState>,
}

impl Source {
    /// Creates the group consumer (bad properties fail the start) and its
    /// reading thread, and starts the supervisor. The consumer joins the
    /// group at the first [`Subscribe`]; until then the reading thread's polls
    /// log what goes wrong reaching the cluster (refused connections, failed
    /// authentication).
    pub fn start(
        spec: Arc<FlowSpec>,
        flow: Arc<FlowStatus>,
        destination: Addr<Destination>,
        history: Arc<PartitionHistory>,
    ) -> Result<Addr<Self>, ReplicationError> {
        let budget = BatchBudget::new(BATCH_BUDGET_BYTES.max(4 * spec.tuning.batch_max_bytes));
        let (commands, received) = mpsc::channel();
        let mut routes = Routes::new(
            budget.clone(),
            spec.tuning.batch_max_records,
            spec.tuning.batch_max_bytes,
            commands.clone(),
        );
        if spec.delivery == Delivery::ExactlyOnce {
            routes.hold_new_partitions();
            routes.mark_batches_at_head();
        }
        let context = SourceContext {
            history,
            cluster: spec.source.alias.clone(),
            flow: Arc::clone(&flow),
            start_from: spec.start_from,
            supervisor: OnceLock::new(),
            routes: Mutex::new(routes),
            assigned: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
            joins_ended: AtomicU64::new(0),
        };
        let consumer: SourceConsumer = client_config(
            &spec.source,
            &consumer_defaults(&spec),
            &consumer_forced(&spec),
        )
        .create_with_context(context)
        .map_err(|source| ReplicationError::ClientCreation {
            cluster: spec.source.alias.clone(),
            source: Box::new(source),
        })?;
        let consumer = Arc::new(consumer);
        let reader_stop = Arc::new(AtomicBool::new(false));
        let reader = spawn_reader(
            Arc::clone(&consumer),
            received,
            budget.clone(),
            Arc::clone(&reader_stop),
        )?;
        let exactly_once = (spec.delivery == Delivery::ExactlyOnce).then(|| ExactlyOnce {
            destination: spec.destination.clone(),
            group_id: spec.group_id.clone(),
            flow: spec.name.clone(),
            source_cluster: spec.source.alias.clone(),
            offset_map: Arc::new(OffsetMapReader::new(
                spec.destination.clone(),
                spec.group_id.clone(),
            )),
            opening: Arc::new(tokio::sync::Semaphore::new(ExactlyOnce::CONCURRENT_OPENS)),
            ending: Arc::new(tokio::sync::Semaphore::new(ExactlyOnce::CONCURRENT_COMMITS)),
            fill_budget: FillBudget::new(FillBudget::DEFAULT_BYTES, FillBudget::MIN_SHARE),
            reopen_delay: transactional::reopen_delay(&spec.source),
            in_lanes: spec.in_lanes(),
        });
        let lanes = spec
            .in_lanes()
            .then(|| LaneState::new(spec.tuning.transaction_lanes, lane_panic(&spec)));
        let source = Self {
            spec,
            flow,
            consumer: Arc::clone(&consumer),
            commands,
            destination,
            copiers: HashMap::new(),
            subscription: BTreeSet::new(),
            join: None,
            held: None,
            held_check: false,
            reader_stop,
            reader: Some(reader),
            committing: false,
            stopping: false,
            exactly_once,
            lanes,
        };
        let addr = source.start();
        // Rebalance callbacks wait on the supervisor; there are none before
        // the first subscription, which comes through it.
        let _ = consumer.context().supervisor.set(addr.clone());
        Ok(addr)
    }

    fn start_copier(&mut self, topic: &str, partition: i32, inbox: Inbox, committed: Option<i64>) {
        let destination_topic = self.spec.destination_topic(topic);
        let status = self.flow.partition(topic, partition, &destination_topic);
        status.progress.set_metrics(PartitionMetrics::new(
            &self.spec.name,
            &self.spec.source.alias,
            topic,
            partition,
        ));
        if let Some(offset) = committed {
            status.progress.set_start(offset);
        }
        let destination = match &self.lanes {
            None => self.destination.clone().recipient(),
            Some(lanes) => match lanes.lane_for(topic, partition) {
                Some(lane) => lane.recipient(),
                None => {
                    tracing::warn!(flow = %self.spec.name, topic, partition, "partition assigned for a lane this instance no longer owns; not copying it here");
                    return;
                }
            },
        };
        let key: (Arc<str>, i32) = (Arc::from(topic), partition);
        let faults = self
            .copiers
            .get(&key)
            .map(|c| c.faults.clone())
            .unwrap_or_else(|| self.injected_faults_for(topic, partition));
        let addr = Copier::start(CopierParts {
            flow: Arc::from(self.spec.name.as_str()),
            topic: Arc::clone(&key.0),
            partition,
            destination_topic: Arc::from(destination_topic.as_str()),
            inbox,
            destination,
            status: Arc::clone(&status),
            tuning: self.spec.tuning.clone(),
            on_error: self.spec.on_error.clone(),
            exactly_once: self.exactly_once.clone(),
            faults: faults.clone(),
        });
        self.copiers.insert(
            key,
            CopierEntry {
                addr,
                status,
                faults,
            },
        );
    }

    fn injected_faults_for(&self, topic: &str, partition: i32) -> CopierFaults {
        let faults = &self.spec.faults;
        let here = |t: &String, p: &i32| t == topic && *p == partition;
        let at = |offset: i64, times: u32| InjectedAt {
            offset,
            remaining: Arc::new(AtomicU32::new(times)),
        };
        CopierFaults {
            panic: faults
                .copier_panic_at
                .as_ref()
                .filter(|(t, p, _, _)| here(t, p))
                .map(|(_, _, offset, times)| at(*offset, *times)),
            stall: faults
                .transaction_stall_at
                .as_ref()
                .filter(|(t, p, _, _)| here(t, p))
                .map(|(_, _, offset, stall)| (at(*offset, 1), *stall)),
        }
    }

    /// Stops the given copiers and answers with what they acknowledged.
    fn stop_copiers(
        &mut self,
        keys: Vec<(Arc<str>, i32)>,
    ) -> impl std::future::Future<Output = Vec<(String, i32, i64)>> {
        let timeout = self.spec.tuning.shutdown_timeout;
        let stopping: Vec<_> = keys
            .into_iter()
            .filter_map(|key| self.copiers.remove(&key).map(|c| (key, c)))
            .collect();
        async move {
            let answers = futures::future::join_all(
                stopping
                    .iter()
                    .map(|(_, c)| c.addr.send(StopCopier { timeout })),
            )
            .await;
            stopping
                .iter()
                .zip(answers)
                .filter_map(|((key, c), answer)| {
                    // A copier that is gone still left its progress behind.
                    let offset = answer
                        .ok()
                        .flatten()
                        .or_else(|| c.status.progress.committable())?;
                    Some((key.0.to_string(), key.1, offset))
                })
                .collect()
        }
    }

    /// Commits what was acknowledged since the last commit, on a blocking
    /// thread; one commit at a time.
    fn commit_progress(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.stopping {
            return;
        }
        let offsets: Vec<(String, i32, i64)> = self
            .copiers
            .iter()
            .filter_map(|((topic, partition), c)| {
                Some((
                    topic.to_string(),
                    *partition,
                    c.status.progress.uncommitted()?,
                ))
            })
            .collect();
        let consumer = Arc::clone(&self.consumer);
        if offsets.is_empty() {
            return;
        }
        self.committing = true;
        let flow = Arc::clone(&self.flow);
        let cluster = self.spec.source.alias.clone();
        let commit = tokio::task::spawn_blocking(move || {
            commit_sync(consumer.as_ref(), &offsets, &flow, &cluster);
        });
        ctx.spawn(
            commit
                .into_actor(self)
                .map(|_, act, _| act.committing = false),
        );
    }

    /// Restarts copiers whose mailbox closed: actix does not restart an actor
    /// that panicked outside its guarded loop.
    fn revive_dead_copiers(&mut self) {
        let dead: Vec<_> = self
            .copiers
            .iter()
            .filter(|(_, c)| !c.addr.connected())
            .map(|(k, _)| k.clone())
            .collect();
        for (topic, partition) in dead {
            let mut from = None;
            if let Some(c) = self.copiers.get(&(Arc::clone(&topic), partition)) {
                c.status
                    .record_failure("the copier stopped unexpectedly".to_string());
                c.status.progress.reset();
                from = c.status.progress.committable();
            }
            tracing::error!(flow = %self.spec.name, topic = %topic, partition, "copier stopped unexpectedly; starting a new one");
            let inbox = Inbox::reopen(self.commands.clone(), Arc::clone(&topic), partition, from);
            self.start_copier(&topic, partition, inbox, None);
        }
    }

    fn publish_metrics(&mut self) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for c in self.copiers.values() {
            let progress = &c.status.progress;
            let Some(m) = progress.metrics() else {
                continue;
            };
            m.set_in_flight(progress.in_flight_batches());
            if let Some(lag) = progress.lag() {
                let seconds = match (lag, progress.last_acked_timestamp()) {
                    (0, _) | (_, None) => 0.0,
                    (_, Some(ts)) => (now_ms - ts).max(0) as f64 / 1000.0,
                };
                m.set_lag(lag, seconds);
            }
        }
        metrics::gauge!(names::PARTITIONS_ASSIGNED, labels::FLOW => self.spec.name.clone())
            .set(self.copiers.len() as f64);
    }
}

fn spawn_reader(
    consumer: Arc<SourceConsumer>,
    commands: mpsc::Receiver<Command>,
    budget: BatchBudget,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, ReplicationError> {
    let name = format!("strait-source-{}", consumer.context().cluster);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || dispatcher::run(&consumer, &commands, &budget, &stop))
        .map_err(|_| ReplicationError::ActorGone {
            actor: "source reading thread",
        })
}

impl Actor for Source {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.spec.tuning.commit_interval, |act, ctx| {
            act.commit_progress(ctx);
        });
        ctx.run_interval(HOUSEKEEPING_INTERVAL, |act, _| {
            if !act.stopping {
                act.revive_dead_copiers();
            }
            act.publish_metrics();
        });
    }
}

/// Partitions newly assigned to this instance (from the reading thread).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Assigned(pub Vec<AssignedPartition>);

impl Handler<Assigned> for Source {
    type Result = ();

    fn handle(&mut self, Assigned(partitions): Assigned, _: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        metrics::counter!(names::REBALANCES, labels::FLOW => self.spec.name.clone(), labels::KIND => "assign").increment(1);
        for p in partitions {
            tracing::info!(flow = %self.spec.name, topic = %p.topic, partition = p.partition, committed = ?p.committed, "partition assigned");
            self.start_copier(&p.topic, p.partition, p.inbox, p.committed);
        }
    }
}

/// Partitions taken away from this instance (from the reading thread). Answered
/// with the offsets to commit once their copiers have drained.
#[derive(Message)]
#[rtype(result = "Vec<(String, i32, i64)>")]
pub struct Revoked(pub Vec<(String, i32)>);

impl Handler<Revoked> for Source {
    type Result = ResponseActFuture<Self, Vec<(String, i32, i64)>>;

    fn handle(&mut self, Revoked(partitions): Revoked, _: &mut Context<Self>) -> Self::Result {
        let keys: Vec<_> = partitions
            .iter()
            .map(|(t, p)| (Arc::from(t.as_str()), *p))
            .collect();
        metrics::counter!(names::REBALANCES, labels::FLOW => self.spec.name.clone(), labels::KIND => "revoke").increment(1);
        for (t, p) in &partitions {
            tracing::info!(flow = %self.spec.name, topic = %t, partition = p, "partition revoked");
        }
        let stopped = self.stop_copiers(keys);
        Box::pin(stopped.into_actor(self).map(|offsets, act, _| {
            for (topic, partition, _) in &offsets {
                if let Some(m) = act
                    .flow
                    .find_partition(topic, *partition)
                    .as_ref()
                    .and_then(|p| p.progress.metrics())
                {
                    m.forget();
                }
                act.flow.remove_partition(topic, *partition);
            }
            offsets
        }))
    }
}

/// The topics the group consumer should read, replacing the previous set.
/// A change that arrives while the group is joining is held until the join
/// ends (see [`Join`]), and the latest one held is then applied.
#[derive(Message)]
#[rtype(result = "Result<(), ReplicationError>")]
pub struct Subscribe {
    /// Topic names.
    pub topics: BTreeSet<String>,
    /// Their partition counts: in lanes, the source assigns partitions
    /// itself (see [`lanes`]).
    pub partitions: BTreeMap<String, i32>,
}

/// A group join started by a subscription. librdkafka takes a subscription
/// change that lands mid-join to the group only at the next heartbeat
/// (`heartbeat.interval.ms`, 3 s): so the first subscription goes out as
/// soon as one topic is ready, and later changes wait for its join to end,
/// at most [`JOIN_HOLD_MAX`].
#[derive(Clone, Copy, Debug)]
struct Join {
    since: Instant,
    /// `SourceContext::joins_ended` when the join started.
    ended_before: u64,
}

impl Join {
    /// True while a change must wait: no join has ended since this one
    /// started, and it has not waited its longest.
    fn holds(&self, joins_ended: u64, now: Instant) -> bool {
        joins_ended == self.ended_before
            && now.saturating_duration_since(self.since) < JOIN_HOLD_MAX
    }
}

impl Source {
    fn joining(&self) -> bool {
        let ended = self.consumer.context().joins_ended.load(Ordering::SeqCst);
        self.join
            .is_some_and(|join| join.holds(ended, Instant::now()))
    }

    /// Applies the held change once the join has ended.
    fn release_held(&mut self, ctx: &mut Context<Self>) {
        if self.held_check {
            return;
        }
        self.held_check = true;
        ctx.run_later(JOIN_CHECK_INTERVAL, |act, ctx| {
            act.held_check = false;
            if act.stopping {
                return;
            }
            if act.joining() {
                act.release_held(ctx);
                return;
            }
            if let Some(topics) = act.held.take() {
                if let Err(error) = act.subscribe(topics) {
                    tracing::error!(flow = %act.spec.name, error = %error, "subscription failed");
                }
            }
        });
    }

    fn subscribe(&mut self, topics: BTreeSet<String>) -> Result<(), ReplicationError> {
        if topics == self.subscription {
            return Ok(());
        }
        // Read before subscribing, so a join that ends at once still counts.
        let ended_before = self.consumer.context().joins_ended.load(Ordering::SeqCst);
        let consumer = &self.consumer;
        let result = if topics.is_empty() {
            consumer.unsubscribe();
            Ok(())
        } else {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer.subscribe(&names)
        };
        result.map_err(|source| ReplicationError::Subscribe {
            cluster: self.spec.source.alias.clone(),
            source: Box::new(source),
        })?;
        tracing::info!(flow = %self.spec.name, topics = ?topics, "subscribed");
        self.join = (!topics.is_empty()).then(|| Join {
            since: Instant::now(),
            ended_before,
        });
        self.subscription = topics;
        Ok(())
    }
}

impl Handler<Subscribe> for Source {
    type Result = Result<(), ReplicationError>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        if self.stopping {
            return Ok(());
        }
        if self.lanes.is_some() {
            return self.subscribe_lanes(msg.partitions, ctx);
        }
        if self.joining() {
            tracing::debug!(flow = %self.spec.name, topics = msg.topics.len(), "subscription change held until the group's join ends");
            self.held = Some(msg.topics);
            self.release_held(ctx);
            return Ok(());
        }
        self.held = None;
        self.subscribe(msg.topics)
    }
}

/// Stops every copier, commits what was acknowledged, leaves the group.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSource;

impl Handler<StopSource> for Source {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopSource, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        // From here on, rebalance callbacks (e.g. when the consumer closes)
        // must not wait on this actor.
        self.consumer
            .context()
            .shutting_down
            .store(true, Ordering::SeqCst);
        let keys: Vec<_> = self.copiers.keys().cloned().collect();
        let stopped = self.stop_copiers(keys);
        Box::pin(stopped.into_actor(self).then(|offsets, act, _| {
            // Lanes commit what their copiers handed them, then close; only
            // then does the instance leave the lane group.
            let (lanes, ownership) = act
                .lanes
                .as_mut()
                .map(LaneState::take_all)
                .unwrap_or_default();
            let consumer = Arc::clone(&act.consumer);
            let flow = Arc::clone(&act.flow);
            let cluster = act.spec.source.alias.clone();
            let stop = Arc::clone(&act.reader_stop);
            let reader = act.reader.take();
            async move {
                for lane in lanes {
                    let _ = lane.send(crate::lane::StopLane).await;
                }
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(ownership) = ownership {
                        ownership.stop();
                    }
                    commit_sync(consumer.as_ref(), &offsets, &flow, &cluster);
                    for p in flow.partitions() {
                        p.set_state(PartitionState::Stopped);
                    }
                    stop.store(true, Ordering::SeqCst);
                    if let Some(reader) = reader {
                        let _ = reader.join();
                    }
                    consumer.unsubscribe();
                })
                .await;
            }
            .into_actor(act)
            .map(|_, act, ctx| {
                act.publish_metrics();
                ctx.stop();
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::bindings as rdsys;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    /// Records waiting in the consumer's queue: what librdkafka read ahead.
    fn read_ahead_records(consumer: &BaseConsumer) -> usize {
        // SAFETY: the consumer outlives this call; the queue handle taken
        // from it is released before returning.
        unsafe {
            let queue = rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr());
            let length = rdsys::rd_kafka_queue_length(queue);
            rdsys::rd_kafka_queue_destroy(queue);
            length
        }
    }

    /// 40,000 records of 100 bytes are 4 MB, far under the byte bound: before
    /// the record bound, librdkafka read all of them ahead (its own default
    /// bound is 100,000), each with a few hundred bytes of its own beside it.
    /// (The mock broker keeps about 5 MB of a partition, hence not more.)
    #[test]
    fn small_records_are_read_ahead_up_to_the_record_bound_not_only_the_byte_bound() {
        const RECORDS: usize = 40_000;
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("small", 1, 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("linger.ms", "20")
            .create()
            .expect("producer");
        let value = [7u8; 100];
        for _ in 0..RECORDS {
            while producer
                .send(
                    BaseRecord::<(), _>::to("small")
                        .partition(0)
                        .payload(&value[..]),
                )
                .is_err()
            {
                producer.poll(Duration::from_millis(10));
            }
        }
        producer.flush(Duration::from_secs(30)).expect("flushed");

        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "read-ahead-test")
            .set("enable.auto.commit", "false")
            // As the flow's consumer: a full read-ahead is looked at again soon.
            .set("fetch.queue.backoff.ms", "10");
        for (key, value) in read_ahead() {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config.create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("small", 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assigned");

        // Nothing is polled: the queue grows until librdkafka stops fetching.
        let (mut last, mut steady_since) = (usize::MAX, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && steady_since.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
            let now = read_ahead_records(&consumer);
            if now != last {
                (last, steady_since) = (now, Instant::now());
            }
        }
        // Once over the bound, one fetch may still be in flight: at most
        // `max.partition.fetch.bytes` (1 MiB) of 100-byte records.
        let one_fetch = (1 << 20) / 100;
        assert!(
            (SOURCE_PREFETCH_RECORDS..=SOURCE_PREFETCH_RECORDS + one_fetch).contains(&last),
            "read ahead {last} records, expected {SOURCE_PREFETCH_RECORDS} to {}",
            SOURCE_PREFETCH_RECORDS + one_fetch
        );
    }

    /// A join that started at `since`, after 4 joins had ended.
    fn join_from(since: Instant) -> Join {
        Join {
            since,
            ended_before: 4,
        }
    }

    #[test]
    fn a_subscription_change_waits_while_the_join_it_would_interrupt_goes_on() {
        let start = Instant::now();
        let join = join_from(start);
        assert!(join.holds(4, start));
        assert!(join.holds(4, start + JOIN_HOLD_MAX - Duration::from_millis(1)));
    }

    #[test]
    fn a_subscription_change_goes_out_once_a_join_has_ended() {
        let start = Instant::now();
        assert!(!join_from(start).holds(5, start + Duration::from_millis(50)));
    }

    #[test]
    fn a_subscription_change_goes_out_after_waiting_its_longest_for_a_join() {
        let start = Instant::now();
        assert!(!join_from(start).holds(4, start + JOIN_HOLD_MAX));
    }
}
