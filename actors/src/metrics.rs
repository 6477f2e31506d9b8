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
//! the descriptions and units with the installed recorder.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

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
/// by the destination. Labels: `flow`. Buckets 1 ms .. 60 s.
pub const END_TO_END_LATENCY_SECONDS: &str = "strait_end_to_end_latency_seconds";

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

// --- partitions and copiers ----------------------------------------------

/// Gauge, partitions: source partitions assigned to this process.
/// Labels: `flow`.
pub const PARTITIONS_ASSIGNED: &str = "strait_partitions_assigned";

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
/// the destination. Labels: `flow`, `topic` (the destination topic).
pub const TOPIC_CONFIG_UPDATES: &str = "strait_topic_config_updates_total";

// --- errors --------------------------------------------------------------

/// Counter, errors: records the destination refused or failed to take.
/// Labels: `flow`, `topic` (source), `kind` (`retriable`, `fatal`, ...).
pub const PRODUCE_ERRORS: &str = "strait_produce_errors_total";

/// Counter, errors: errors reading the source (consumer errors).
/// Labels: `flow`, `kind`.
pub const CONSUME_ERRORS: &str = "strait_consume_errors_total";

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
/// 1 ms .. 60 s buckets.
pub const LATENCY_HISTOGRAMS: &[&str] = &[END_TO_END_LATENCY_SECONDS, PRODUCE_LATENCY_SECONDS];

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
    describe_gauge!(
        START_TIME_SECONDS,
        Unit::Seconds,
        "When the process started, in seconds since the Unix epoch."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        RECORDS_REPLICATED,
        BYTES_REPLICATED,
        RECORDS_SKIPPED,
        RECORDS_DEAD_LETTERED,
        REPLICATION_LAG_RECORDS,
        REPLICATION_LAG_SECONDS,
        END_TO_END_LATENCY_SECONDS,
        PRODUCE_LATENCY_SECONDS,
        BATCH_RECORDS,
        BATCH_BYTES,
        BATCHES_IN_FLIGHT,
        PARTITIONS_ASSIGNED,
        COPIER_RESTARTS,
        REBALANCES,
        OFFSET_COMMITS,
        OFFSET_COMMIT_FAILURES,
        TOPICS_SELECTED,
        TOPICS_CREATED,
        TOPIC_CREATION_RETRIES,
        TOPIC_CONFIG_UPDATES,
        PRODUCE_ERRORS,
        CONSUME_ERRORS,
        UP,
        FLOW_STATE,
        BUILD_INFO,
        START_TIME_SECONDS,
    ];

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
}
