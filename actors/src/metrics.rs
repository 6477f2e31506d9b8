//! Strait's metric names: the one place they are defined.
//!
//! Record with the `metrics` macros and these constants, never a string
//! literal, so that a name cannot drift between the code and the dashboards:
//!
//! ```ignore
//! use strait_actors::metrics::{labels, RECORDS_REPLICATED};
//! metrics::counter!(RECORDS_REPLICATED,
//!     labels::FLOW => flow.clone(), labels::SOURCE_CLUSTER => source.clone(),
//!     labels::TOPIC => topic.clone(), labels::PARTITION => partition.to_string(),
//! ).increment(n);
//! ```
//!
//! Conventions (Prometheus): every name starts with `strait_`, carries its base
//! unit (`_seconds`, `_bytes`, `_records`), and counters end in `_total`.
//! Labels are low-cardinality: a flow name, a cluster alias, a topic, a
//! partition number, an error kind; never an offset, a key or an error text.
//! Each constant's doc says its type, labels and unit. [`describe`] registers
//! the descriptions and units with the installed recorder. `docs/metrics.md`
//! has the same list as one table, and a test keeps the two in step.
//!
//! # Per-partition labels
//! Clusters with many thousands of partitions can turn the `partition` label
//! off (`[metrics] partition_labels = false`, applied with
//! [`set_partition_labels`]). Code records exactly as before, `partition`
//! label included; the binary's recorder then drops that label when a metric
//! is registered, so that the partitions of a topic share one series:
//! counters and histograms add up, and gauges are combined as
//! [`gauge_aggregation`] says (sum, or max for ages). Hot paths hold a
//! [`PartitionMetrics`] handle, built once per partition, instead of looking
//! metrics up per record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Label keys used with the metrics below.
pub mod labels {
    /// The flow's name (`[[flows]] name`).
    pub const FLOW: &str = "flow";
    /// The source cluster's alias (`[clusters.NAME]`).
    pub const SOURCE_CLUSTER: &str = "source_cluster";
    /// The destination cluster's alias.
    pub const DESTINATION_CLUSTER: &str = "destination_cluster";
    /// The source topic's name.
    pub const TOPIC: &str = "topic";
    /// The partition number, as a decimal string.
    pub const PARTITION: &str = "partition";
    /// A short, fixed class of error (`retriable`, `fatal`, `too_large`, ...).
    pub const KIND: &str = "kind";
    /// Why a record was skipped (`too_large`, `invalid`, ...): a fixed word.
    pub const REASON: &str = "reason";
    /// A flow's state (`starting`, `running`, `degraded`, `stopping`, `stopped`).
    pub const STATE: &str = "state";
    /// Strait's version.
    pub const VERSION: &str = "version";
    /// A cluster's alias (`[clusters.NAME]`), for metrics about either side.
    pub const CLUSTER: &str = "cluster";
    /// A cluster's role in a flow: `source` or `destination`.
    pub const ROLE: &str = "role";
}

/// Values of the `kind` label of [`PRODUCE_ERRORS`] and [`CONSUME_ERRORS`]:
/// a fixed, small set, never an error's text. See [`error_kind`].
pub mod kinds {
    /// The client's queue was full (back-pressure, retried).
    pub const QUEUE_FULL: &str = "queue_full";
    /// The record is larger than the broker or topic accepts.
    pub const TOO_LARGE: &str = "too_large";
    /// A request or the record's delivery timed out.
    pub const TIMED_OUT: &str = "timed_out";
    /// The topic or partition does not exist (yet) on the cluster.
    pub const UNKNOWN_TOPIC: &str = "unknown_topic";
    /// The broker refused: authentication or authorization.
    pub const AUTHORIZATION: &str = "authorization";
    /// The connection to a broker failed or all brokers are down.
    pub const TRANSPORT: &str = "transport";
    /// Leadership moved, not enough replicas, or another transient broker state.
    pub const RETRIABLE: &str = "retriable";
    /// The record is invalid for the broker (corrupt, bad timestamp, ...).
    pub const INVALID: &str = "invalid";
    /// The producer was fenced or hit a fatal (idempotence/transaction) error.
    pub const FATAL: &str = "fatal";
    /// Anything else.
    pub const OTHER: &str = "other";
    /// Every kind, for documentation and tests.
    pub const ALL: &[&str] = &[
        QUEUE_FULL,
        TOO_LARGE,
        TIMED_OUT,
        UNKNOWN_TOPIC,
        AUTHORIZATION,
        TRANSPORT,
        RETRIABLE,
        INVALID,
        FATAL,
        OTHER,
    ];
}

/// The `kind` label for a Kafka client error: one of [`kinds`].
pub fn error_kind(error: &KafkaError) -> &'static str {
    match error.rdkafka_error_code() {
        Some(code) => error_code_kind(code),
        None => kinds::OTHER,
    }
}

/// The `kind` label for a librdkafka error code: one of [`kinds`].
pub fn error_code_kind(code: RDKafkaErrorCode) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        C::QueueFull => kinds::QUEUE_FULL,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            kinds::TOO_LARGE
        }
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut => kinds::TIMED_OUT,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => kinds::UNKNOWN_TOPIC,
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => kinds::AUTHORIZATION,
        C::BrokerTransportFailure | C::AllBrokersDown | C::NetworkException => kinds::TRANSPORT,
        C::NotLeaderForPartition
        | C::LeaderNotAvailable
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::NotCoordinator
        | C::CoordinatorNotAvailable
        | C::CoordinatorLoadInProgress
        | C::KafkaStorageError
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch => kinds::RETRIABLE,
        C::InvalidMessage | C::InvalidTimestamp | C::InvalidRecord | C::BadMessage => {
            kinds::INVALID
        }
        C::Fatal
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::InvalidTransactionalState => kinds::FATAL,
        _ => kinds::OTHER,
    }
}

// --- records and bytes ---------------------------------------------------

/// Counter, records: records written to the destination and acknowledged by it.
/// Labels: `flow`, `source_cluster`, `topic` (source), `partition`.
pub const RECORDS_REPLICATED: &str = "strait_records_replicated_total";

/// Counter, bytes: key + value + header bytes of the records counted in
/// [`RECORDS_REPLICATED`]. Labels: `flow`, `source_cluster`, `topic`, `partition`.
pub const BYTES_REPLICATED: &str = "strait_bytes_replicated_total";

/// Counter, records: records not copied because `on_error = "skip"`.
/// Labels: `flow`, `topic`, `reason`.
pub const RECORDS_SKIPPED: &str = "strait_records_skipped_total";

/// Counter, records: records written to the dead-letter topic instead of their
/// own (`on_error = "dead_letter"`). Labels: `flow`, `topic`.
pub const RECORDS_DEAD_LETTERED: &str = "strait_records_dead_lettered_total";

// --- lag -----------------------------------------------------------------

/// Gauge, records: source high watermark minus the next offset the destination
/// has not acknowledged. Labels: `flow`, `topic`, `partition`.
pub const REPLICATION_LAG_RECORDS: &str = "strait_replication_lag_records";

/// Gauge, seconds: now minus the source timestamp of the newest record the
/// destination acknowledged, while records remain to copy; 0 when caught up.
/// Labels: `flow`, `topic`, `partition`.
pub const REPLICATION_LAG_SECONDS: &str = "strait_replication_lag_seconds";

/// Histogram, seconds: from a record's source timestamp to its acknowledgement
/// by the destination; one sample per batch, for its first record (the oldest
/// in position). Labels: `flow`, `topic`. Buckets 1 ms .. 1 h: a backfill of
/// old records shows up as hours, which is what it is.
pub const END_TO_END_LATENCY_SECONDS: &str = "strait_end_to_end_latency_seconds";

/// Histogram, seconds: from reading a batch's first record off the source
/// partition's queue to the destination's acknowledgement of its last record:
/// the time a record spends inside Strait. Labels: `flow`, `topic`.
/// Buckets 1 ms .. 60 s.
pub const IN_PROCESS_LATENCY_SECONDS: &str = "strait_in_process_latency_seconds";

/// Histogram, seconds: from sending a batch to the destination to the
/// acknowledgement of its last record. Labels: `flow`. Buckets 1 ms .. 60 s.
pub const PRODUCE_LATENCY_SECONDS: &str = "strait_produce_latency_seconds";

// --- batches -------------------------------------------------------------

/// Histogram, records: records per batch sent to the destination. Labels: `flow`.
pub const BATCH_RECORDS: &str = "strait_batch_records";

/// Histogram, bytes: bytes per batch sent to the destination. Labels: `flow`.
pub const BATCH_BYTES: &str = "strait_batch_bytes";

/// Gauge, batches: batches sent but not yet fully acknowledged.
/// Labels: `flow`, `topic`, `partition`.
pub const BATCHES_IN_FLIGHT: &str = "strait_batches_in_flight";

/// Gauge, batches: batches waiting in the destination actor's mailbox (sent by
/// copiers, not yet taken up by the destination). Near `mailbox_capacity`
/// means the destination is the bottleneck. Labels: `flow`.
pub const MAILBOX_DEPTH: &str = "strait_destination_mailbox_batches";

// --- partitions and copiers ----------------------------------------------

/// Gauge, partitions: source partitions assigned to this process.
/// Labels: `flow`.
pub const PARTITIONS_ASSIGNED: &str = "strait_partitions_assigned";

/// Gauge, partitions: this process's partitions in each copier state
/// (`copying`, `restarting`, `failed`, `stopped`), one series per state.
/// Labels: `flow`, `state`. Written by the HTTP server at each scrape from the
/// status board, not through the recorder: do not record it.
pub const PARTITIONS_BY_STATE: &str = "strait_partitions";

/// Counter, restarts: copier restarts after a failure.
/// Labels: `flow`, `topic`, `partition`.
pub const COPIER_RESTARTS: &str = "strait_copier_restarts_total";

/// Counter, rebalances: partition assignments and revocations seen by the
/// flow's consumer-group member. Labels: `flow`, `kind` (`assign` | `revoke`).
pub const REBALANCES: &str = "strait_rebalances_total";

// --- offsets -------------------------------------------------------------

/// Counter, commits: successful offset commits to the source consumer group.
/// Labels: `flow`.
pub const OFFSET_COMMITS: &str = "strait_offset_commits_total";

/// Counter, commits: failed offset commits. Labels: `flow`.
pub const OFFSET_COMMIT_FAILURES: &str = "strait_offset_commit_failures_total";

/// Counter: exactly-once transactions committed on the destination.
/// Labels: `flow`, `reason` (why the copier or lane ended it: `caught_up`,
/// opened on an idle partition, which then had nothing more to read, or on
/// a streaming one that was caught up once the transaction was
/// `transaction_streaming_interval` old (in a lane: every partition in it
/// had nothing more to send); `interval`,
/// `transaction_interval` ran out; `full`, `transaction_max_records` was
/// reached; `stopping`).
pub const TRANSACTIONS_COMMITTED: &str = "strait_transactions_committed_total";

/// Histogram, seconds: an exactly-once commit on the destination, from
/// writing the transaction's offset-map entries to the coordinator's answer
/// to `EndTxn` (the transaction's queued records are flushed within it).
/// Waiting for one of the flow's commit slots is not counted; aborted
/// transactions are not timed. Labels: `flow`. Buckets 1 ms .. 60 s.
pub const TRANSACTION_COMMIT_SECONDS: &str = "strait_transaction_commit_duration_seconds";

/// Counter: exactly-once transactions aborted (each is copied again from the
/// last committed offset). Labels: `flow`.
pub const TRANSACTIONS_ABORTED: &str = "strait_transactions_aborted_total";

/// Counter, panics: panics caught in an exactly-once lane. Each fails the
/// lane's partitions back to their last committed offsets and opens a new
/// producer; the lane keeps running. Labels: `flow`.
pub const LANE_PANICS: &str = "strait_lane_panics_total";

// --- topics --------------------------------------------------------------

/// Gauge, topics: source topics the flow currently selects. Labels: `flow`.
pub const TOPICS_SELECTED: &str = "strait_topics_selected";

/// Counter, topics: topics created on the destination. Labels: `flow`, `topic`
/// (the destination topic).
pub const TOPICS_CREATED: &str = "strait_topics_created_total";

/// Counter, attempts: failed attempts to create or grow a destination topic,
/// each retried with backoff. Labels: `flow`, `topic` (the destination topic).
pub const TOPIC_CREATION_RETRIES: &str = "strait_topic_creation_retries_total";

/// Counter, changes: topic configuration or partition-count updates applied to
/// the destination (config syncs). Labels: `flow`, `topic` (the destination topic).
pub const TOPIC_CONFIG_UPDATES: &str = "strait_topic_config_updates_total";

// --- errors --------------------------------------------------------------

/// Counter, errors: records the destination refused or failed to take.
/// Labels: `flow`, `topic` (source), `kind` (`retriable`, `fatal`, ...).
pub const PRODUCE_ERRORS: &str = "strait_produce_errors_total";

/// Counter, records: source records a copier expected to read but that were
/// no longer there when it (re)started (removed by retention or compaction),
/// so copying went on after them. Labels: `flow`, `topic`.
pub const RECORDS_UNAVAILABLE: &str = "strait_source_records_unavailable_total";

/// Counter, errors: errors reading the source (consumer errors).
/// Labels: `flow`, `topic` (empty: librdkafka does not say which partition a
/// consumer error is about), `kind`.
pub const CONSUME_ERRORS: &str = "strait_consume_errors_total";

// --- clusters ------------------------------------------------------------

/// Gauge: 1 while the cluster answered its last reachability check, 0 when it
/// did not. Labels: `flow`, `role` (`source` | `destination`), `cluster`.
/// Written by the HTTP server at each scrape from the status board, not
/// through the recorder: do not record it.
pub const CLUSTER_REACHABLE: &str = "strait_cluster_reachable";

// --- process (recorded by the binary, not by the actors) -------------------

/// Gauge: 1 while the process serves `/metrics`. No labels. Written by the HTTP
/// server at each scrape, not through the recorder: do not record it.
pub const UP: &str = "strait_up";

/// Gauge: 1 for the flow's current state, one series per state.
/// Labels: `flow`, `state`. Written by the HTTP server at each scrape from the
/// status board, not through the recorder: do not record it.
pub const FLOW_STATE: &str = "strait_flow_state";

/// Gauge, always 1. Labels: `version`. Written by the HTTP server at each
/// scrape, not through the recorder: do not record it.
pub const BUILD_INFO: &str = "strait_build_info";

/// Gauge, seconds since the Unix epoch: when the process started. No labels.
pub const START_TIME_SECONDS: &str = "strait_start_time_seconds";

/// Histogram names whose values are durations in seconds: they get the
/// 1 ms .. 60 s buckets ([`END_TO_END_LATENCY_SECONDS`] gets longer ones).
pub const LATENCY_HISTOGRAMS: &[&str] = &[
    END_TO_END_LATENCY_SECONDS,
    IN_PROCESS_LATENCY_SECONDS,
    PRODUCE_LATENCY_SECONDS,
    TRANSACTION_COMMIT_SECONDS,
];

/// Every metric Strait exports, recorded or written at scrape time.
pub const ALL: &[&str] = &[
    RECORDS_REPLICATED,
    BYTES_REPLICATED,
    RECORDS_SKIPPED,
    RECORDS_DEAD_LETTERED,
    REPLICATION_LAG_RECORDS,
    REPLICATION_LAG_SECONDS,
    END_TO_END_LATENCY_SECONDS,
    IN_PROCESS_LATENCY_SECONDS,
    PRODUCE_LATENCY_SECONDS,
    BATCH_RECORDS,
    BATCH_BYTES,
    BATCHES_IN_FLIGHT,
    MAILBOX_DEPTH,
    PARTITIONS_ASSIGNED,
    PARTITIONS_BY_STATE,
    COPIER_RESTARTS,
    REBALANCES,
    OFFSET_COMMITS,
    OFFSET_COMMIT_FAILURES,
    TRANSACTIONS_COMMITTED,
    TRANSACTION_COMMIT_SECONDS,
    TRANSACTIONS_ABORTED,
    LANE_PANICS,
    TOPICS_SELECTED,
    TOPICS_CREATED,
    TOPIC_CREATION_RETRIES,
    TOPIC_CONFIG_UPDATES,
    PRODUCE_ERRORS,
    CONSUME_ERRORS,
    RECORDS_UNAVAILABLE,
    CLUSTER_REACHABLE,
    UP,
    FLOW_STATE,
    BUILD_INFO,
    START_TIME_SECONDS,
];

/// Metrics that are histograms: Prometheus exports each as `_bucket`, `_sum`
/// and `_count` series.
pub const HISTOGRAMS: &[&str] = &[
    END_TO_END_LATENCY_SECONDS,
    IN_PROCESS_LATENCY_SECONDS,
    PRODUCE_LATENCY_SECONDS,
    TRANSACTION_COMMIT_SECONDS,
    BATCH_RECORDS,
    BATCH_BYTES,
];

// --- per-partition labels --------------------------------------------------

static PARTITION_LABELS: AtomicBool = AtomicBool::new(true);

/// Turns the `partition` label on (the default) or off for metrics registered
/// from now on. The binary calls it once at start-up, before any flow starts,
/// from `[metrics] partition_labels`.
pub fn set_partition_labels(on: bool) {
    PARTITION_LABELS.store(on, Ordering::Relaxed);
}

/// True while metrics carry a `partition` label.
pub fn partition_labels() -> bool {
    PARTITION_LABELS.load(Ordering::Relaxed)
}

/// How the per-partition values of a gauge combine when the `partition`
/// label is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaugeAggregation {
    /// The topic's value is the sum over its partitions (records, batches).
    Sum,
    /// The topic's value is the largest over its partitions (ages).
    Max,
}

/// How a gauge's partitions combine without the `partition` label: the
/// largest for ages (`_seconds`), the sum for everything else.
pub fn gauge_aggregation(name: &str) -> GaugeAggregation {
    if name.ends_with("_seconds") {
        GaugeAggregation::Max
    } else {
        GaugeAggregation::Sum
    }
}

/// The metrics of one source partition, registered once when its copier
/// starts, so that recording in the record path is a few atomic operations
/// and never a lookup. Cheap to clone (share it as an `Arc` per batch).
///
/// Labels as documented on each metric; the `partition` label is given here
/// and dropped by the binary's recorder when per-partition labels are off.
#[derive(Clone)]
pub struct PartitionMetrics {
    flow: String,
    topic: String,
    records: Counter,
    bytes: Counter,
    lag_records: Gauge,
    lag_seconds: Gauge,
    in_flight: Gauge,
    mailbox: Gauge,
    restarts: Counter,
    end_to_end: Histogram,
    in_process: Histogram,
    produce: Histogram,
    batch_records: Histogram,
    batch_bytes: Histogram,
}

impl PartitionMetrics {
    /// Registers the metrics of partition `partition` of `topic` in `flow`, read from the
    /// cluster aliased `source_cluster`.
    pub fn new(flow: &str, source_cluster: &str, topic: &str, partition: i32) -> Self {
        let partition = partition.to_string();
        let counter_labels = [
            (labels::FLOW, flow.to_string()),
            (labels::SOURCE_CLUSTER, source_cluster.to_string()),
            (labels::TOPIC, topic.to_string()),
            (labels::PARTITION, partition.clone()),
        ];
        let partition_labels = [
            (labels::FLOW, flow.to_string()),
            (labels::TOPIC, topic.to_string()),
            (labels::PARTITION, partition),
        ];
        let topic_labels = [
            (labels::FLOW, flow.to_string()),
            (labels::TOPIC, topic.to_string()),
        ];
        let flow_labels = [(labels::FLOW, flow.to_string())];
        Self {
            flow: flow.to_string(),
            topic: topic.to_string(),
            records: metrics::counter!(RECORDS_REPLICATED, &counter_labels),
            bytes: metrics::counter!(BYTES_REPLICATED, &counter_labels),
            lag_records: metrics::gauge!(REPLICATION_LAG_RECORDS, &partition_labels),
            lag_seconds: metrics::gauge!(REPLICATION_LAG_SECONDS, &partition_labels),
            in_flight: metrics::gauge!(BATCHES_IN_FLIGHT, &partition_labels),
            mailbox: mailbox_depth(flow),
            restarts: metrics::counter!(COPIER_RESTARTS, &partition_labels),
            end_to_end: metrics::histogram!(END_TO_END_LATENCY_SECONDS, &topic_labels),
            in_process: metrics::histogram!(IN_PROCESS_LATENCY_SECONDS, &topic_labels),
            produce: metrics::histogram!(PRODUCE_LATENCY_SECONDS, &flow_labels),
            batch_records: metrics::histogram!(BATCH_RECORDS, &flow_labels),
            batch_bytes: metrics::histogram!(BATCH_BYTES, &flow_labels),
        }
    }

    /// A batch is handed to the destination actor: the batch-size
    /// histograms and the mailbox depth (until [`mailbox_depth`]'s gauge is
    /// decremented by the destination when it takes the batch).
    pub fn batch_sent(&self, records: usize, bytes: usize) {
        self.batch_records.record(records as f64);
        self.batch_bytes.record(bytes as f64);
        self.mailbox.increment(1.0);
    }

    /// Every record of a batch is acknowledged. `read_at`: when its first
    /// record was read from the source queue; `sent_at`: when it was handed
    /// to the destination; `first_timestamp_ms`: its first record's source
    /// timestamp. Also counts the batch's records and bytes as replicated.
    pub fn batch_acked(
        &self,
        records: u64,
        bytes: u64,
        read_at: Instant,
        sent_at: Instant,
        first_timestamp_ms: Option<i64>,
    ) {
        let now = Instant::now();
        self.records.increment(records);
        self.bytes.increment(bytes);
        self.in_process
            .record(now.saturating_duration_since(read_at).as_secs_f64());
        self.produce
            .record(now.saturating_duration_since(sent_at).as_secs_f64());
        if let Some(age) = first_timestamp_ms.and_then(age_of) {
            self.end_to_end.record(age.as_secs_f64());
        }
    }

    /// The partition's lag, in records and in seconds (see
    /// [`REPLICATION_LAG_RECORDS`] and [`REPLICATION_LAG_SECONDS`]).
    pub fn set_lag(&self, records: i64, seconds: f64) {
        self.lag_records.set(records.max(0) as f64);
        self.lag_seconds.set(seconds.max(0.0));
    }

    /// Batches sent and not yet acknowledged.
    pub fn set_in_flight(&self, batches: usize) {
        self.in_flight.set(batches as f64);
    }

    /// The partition left this process (revoked, or its topic deleted): its
    /// gauges go to 0, so that no stale lag stays behind.
    pub fn forget(&self) {
        self.set_lag(0, 0.0);
        self.set_in_flight(0);
    }

    /// The destination refused or failed to take a record; `kind` from
    /// [`error_kind`].
    pub fn produce_error(&self, kind: &'static str) {
        metrics::counter!(PRODUCE_ERRORS,
            labels::FLOW => self.flow.clone(), labels::TOPIC => self.topic.clone(),
            labels::KIND => kind)
        .increment(1);
    }

    /// Records gone from the source before the copier could read them.
    pub fn records_unavailable(&self, records: u64) {
        metrics::counter!(RECORDS_UNAVAILABLE,
            labels::FLOW => self.flow.clone(), labels::TOPIC => self.topic.clone())
        .increment(records);
    }

    /// The copier failed and is restarted.
    pub fn restarted(&self) {
        self.restarts.increment(1);
    }
}

/// The [`MAILBOX_DEPTH`] gauge of `flow`: copiers increment it
/// ([`PartitionMetrics::batch_sent`]); the destination actor holds this
/// handle and decrements it as it takes each batch out of its mailbox.
pub fn mailbox_depth(flow: &str) -> Gauge {
    metrics::gauge!(MAILBOX_DEPTH, labels::FLOW => flow.to_string())
}

/// How long ago a source timestamp (ms since the epoch) was; `None` for a
/// timestamp in the future or before 1970.
pub fn age_of(timestamp_ms: i64) -> Option<Duration> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as i64;
    u64::try_from(now_ms.checked_sub(timestamp_ms)?)
        .ok()
        .map(Duration::from_millis)
}

/// Registers the description and unit of every metric recorded through the
/// `metrics` crate with the installed recorder. Call once, after installing it.
pub fn describe() {
    describe_counter!(
        RECORDS_REPLICATED,
        Unit::Count,
        "Records written to the destination and acknowledged by it."
    );
    describe_counter!(
        BYTES_REPLICATED,
        Unit::Bytes,
        "Key, value and header bytes of the records acknowledged by the destination."
    );
    describe_counter!(
        RECORDS_SKIPPED,
        Unit::Count,
        "Records not copied because on_error = skip."
    );
    describe_counter!(
        RECORDS_DEAD_LETTERED,
        Unit::Count,
        "Records written to the dead-letter topic instead of their own."
    );
    describe_gauge!(
        REPLICATION_LAG_RECORDS,
        Unit::Count,
        "Source high watermark minus the next offset not yet acknowledged by the destination."
    );
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the newest acknowledged record while records remain to copy; 0 when caught up."
    );
    describe_histogram!(
        END_TO_END_LATENCY_SECONDS,
        Unit::Seconds,
        "From a record's source timestamp to its acknowledgement by the destination."
    );
    describe_histogram!(
        IN_PROCESS_LATENCY_SECONDS,
        Unit::Seconds,
        "From reading a batch's first record to the acknowledgement of its last record."
    );
    describe_histogram!(
        PRODUCE_LATENCY_SECONDS,
        Unit::Seconds,
        "From sending a batch to the acknowledgement of its last record."
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "Records per batch sent to the destination."
    );
    describe_histogram!(
        BATCH_BYTES,
        Unit::Bytes,
        "Bytes per batch sent to the destination."
    );
    describe_gauge!(
        BATCHES_IN_FLIGHT,
        Unit::Count,
        "Batches sent but not yet fully acknowledged."
    );
    describe_gauge!(
        MAILBOX_DEPTH,
        Unit::Count,
        "Batches waiting in the destination actor's mailbox."
    );
    describe_gauge!(
        PARTITIONS_ASSIGNED,
        Unit::Count,
        "Source partitions assigned to this process."
    );
    describe_counter!(
        COPIER_RESTARTS,
        Unit::Count,
        "Copier restarts after a failure."
    );
    describe_counter!(
        REBALANCES,
        Unit::Count,
        "Partition assignments and revocations seen by the consumer-group member."
    );
    describe_counter!(
        OFFSET_COMMITS,
        Unit::Count,
        "Successful offset commits to the source consumer group."
    );
    describe_counter!(
        OFFSET_COMMIT_FAILURES,
        Unit::Count,
        "Failed offset commits to the source consumer group."
    );
    describe_counter!(
        TRANSACTIONS_COMMITTED,
        Unit::Count,
        "Exactly-once transactions committed on the destination, by why they ended."
    );
    describe_counter!(
        TRANSACTIONS_ABORTED,
        Unit::Count,
        "Exactly-once transactions aborted and copied again from the last committed offset."
    );
    describe_counter!(
        LANE_PANICS,
        Unit::Count,
        "Panics caught in an exactly-once lane; its partitions copy again from their last committed offsets."
    );
    describe_gauge!(
        TOPICS_SELECTED,
        Unit::Count,
        "Source topics the flow currently selects."
    );
    describe_counter!(
        TOPICS_CREATED,
        Unit::Count,
        "Topics created on the destination."
    );
    describe_counter!(
        TOPIC_CREATION_RETRIES,
        Unit::Count,
        "Failed attempts to create or grow a destination topic, retried with backoff."
    );
    describe_counter!(
        TOPIC_CONFIG_UPDATES,
        Unit::Count,
        "Topic configuration or partition-count updates applied to the destination."
    );
    describe_counter!(
        PRODUCE_ERRORS,
        Unit::Count,
        "Records the destination refused or failed to take."
    );
    describe_counter!(CONSUME_ERRORS, Unit::Count, "Errors reading the source.");
    describe_counter!(
        RECORDS_UNAVAILABLE,
        Unit::Count,
        "Source records that were gone (retention, compaction) when a copier started reading after them."
    );
    describe_gauge!(
        START_TIME_SECONDS,
        Unit::Seconds,
        "When the process started, in seconds since the Unix epoch."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for name in ALL {
            assert!(name.starts_with("strait_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert!(seen.insert(*name), "{name} is defined twice");
        }
        for name in LATENCY_HISTOGRAMS {
            assert!(name.ends_with("_seconds"), "{name}");
        }
    }

    #[test]
    fn histograms_are_listed_among_all_metrics() {
        for name in HISTOGRAMS.iter().chain(LATENCY_HISTOGRAMS) {
            assert!(ALL.contains(name), "{name}");
        }
        for name in LATENCY_HISTOGRAMS {
            assert!(HISTOGRAMS.contains(name), "{name}");
        }
    }

    #[test]
    fn error_kinds_are_a_fixed_set() {
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(error_kind(&timed_out), kinds::TIMED_OUT);
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(error_kind(&too_large), kinds::TOO_LARGE);
        assert_eq!(error_kind(&KafkaError::Canceled), kinds::OTHER);
        assert_eq!(
            error_code_kind(RDKafkaErrorCode::AllBrokersDown),
            kinds::TRANSPORT
        );
        for kind in kinds::ALL {
            assert!(
                kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{kind}"
            );
        }
    }

    #[test]
    fn ages_use_the_larger_partition_and_counts_the_sum() {
        assert_eq!(
            gauge_aggregation(REPLICATION_LAG_SECONDS),
            GaugeAggregation::Max
        );
        assert_eq!(
            gauge_aggregation(REPLICATION_LAG_RECORDS),
            GaugeAggregation::Sum
        );
        assert_eq!(gauge_aggregation(BATCHES_IN_FLIGHT), GaugeAggregation::Sum);
    }

    #[test]
    fn age_of_a_past_timestamp_and_none_for_the_future() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let age = age_of(now_ms - 5_000).expect("a past timestamp");
        assert!(age >= Duration::from_secs(5), "{age:?}");
        assert_eq!(age_of(now_ms + 3_600_000), None);
    }
}
