//! The errors the actors report, one enum per place they can arise.

use rdkafka::error::KafkaError;
use thiserror::Error;

/// A flow's settings are unusable. Raised while the binary validates the
/// config, before any connection is made.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// A topic pattern does not compile.
    #[error("{key}: `{pattern}` is not a valid regex: {reason}")]
    BadRegex {
        key: String,
        pattern: String,
        reason: String,
    },
    /// A rename template is malformed.
    #[error("{key}: `{format}` is not a valid rename format: {reason}")]
    BadRenameFormat {
        key: String,
        format: String,
        reason: String,
    },
}

/// What stops a flow, a copier or a cluster connection at run time.
///
/// librdkafka's errors are boxed: unboxed, the largest variant made every
/// `Result` carrying this error over 128 bytes, paid on each return.
#[derive(Debug, Error)]
pub enum ReplicationError {
    /// A Kafka client could not be created from the cluster's properties.
    #[error("cluster `{cluster}`: cannot create a Kafka client: {source}")]
    ClientCreation {
        cluster: String,
        #[source]
        source: Box<KafkaError>,
    },
    /// A cluster did not answer a metadata request.
    #[error("cluster `{cluster}` ({bootstrap}) is unreachable: {source}")]
    Unreachable {
        cluster: String,
        bootstrap: String,
        #[source]
        source: Box<KafkaError>,
    },
    /// Subscribing the source consumer failed.
    #[error("cluster `{cluster}`: cannot subscribe to topics: {source}")]
    Subscribe {
        cluster: String,
        #[source]
        source: Box<KafkaError>,
    },
    /// A destination topic could not be created or grown.
    #[error("cluster `{cluster}`: cannot create topic `{topic}`: {reason}")]
    TopicCreation {
        cluster: String,
        topic: String,
        reason: String,
    },
    /// Reading a source partition failed.
    #[error("reading {topic}[{partition}]: {source}")]
    Consume {
        topic: String,
        partition: i32,
        #[source]
        source: Box<KafkaError>,
    },
    /// The destination refused a record for good.
    #[error("writing {topic}[{partition}] offset {offset} to `{destination_topic}`: {reason}")]
    Produce {
        topic: String,
        partition: i32,
        offset: i64,
        destination_topic: String,
        reason: String,
    },
    /// The destination refused a record for a reason no retry can fix (too
    /// large, invalid, not authorized): the partition stops under `on_error = "fail"`.
    #[error("the destination refused {topic}[{partition}] offset {offset} for `{destination_topic}` for good: {reason}")]
    RecordRefused {
        topic: String,
        partition: i32,
        offset: i64,
        destination_topic: String,
        reason: String,
    },
    /// The destination refused a produce batch as too large for the topic;
    /// the records up to `read_up_to` are sent again one by one.
    #[error("{topic}[{partition}]: a batch from offset {offset} was too large for `{destination_topic}`; sending those records one by one")]
    BatchTooLarge {
        topic: String,
        partition: i32,
        offset: i64,
        destination_topic: String,
        read_up_to: i64,
    },
    /// The exactly-once offset map could not be read.
    #[error("cluster `{cluster}`: cannot read the exactly-once offset map: {reason}")]
    OffsetMap { cluster: String, reason: String },
    /// A transactional producer call failed.
    #[error("cluster `{cluster}`: transaction failed: {reason}")]
    Transaction { cluster: String, reason: String },
    /// The lanes topic of an exactly-once flow has another number of lanes
    /// than the flow's config.
    #[error("cluster `{cluster}`: topic `{topic}` has {found} partitions, one per lane, but the flow is configured with {configured} lanes; the number of lanes of a consumer group cannot change while its old lanes may hold open transactions: keep {found}, or use a new group_id")]
    LaneCount {
        cluster: String,
        topic: String,
        found: i32,
        configured: u32,
    },
    /// Instances of the flow that divide its partitions the other way (in
    /// lanes, or not) are running.
    #[error("cluster `{cluster}`: the consumer group `{group}` has members ({members}): instances of this flow run {running}, and both kinds would copy the same partitions; stop them (or change this instance's transaction_lanes back) before starting this one")]
    OtherMode {
        cluster: String,
        group: String,
        members: String,
        running: String,
    },
    /// A newer owner of the partition took over its transactional id.
    #[error("{topic}[{partition}] is now written by another instance (fenced): {reason}")]
    Fenced {
        topic: String,
        partition: i32,
        reason: String,
    },
    /// The destination's transaction coordinator aborted a transaction that
    /// stayed open longer than the producer's `transaction.timeout.ms`, which
    /// fences the producer that held it: this instance's own producer, not a
    /// newer owner's (no transaction of Strait's lives that long unless its
    /// producer stalled, as behind a destination outage). A new producer
    /// takes over.
    #[error("{topic}[{partition}]: the destination aborted a transaction open for {}s, longer than its transaction.timeout.ms ({}s), which fenced the producer; copying again with a new one: {reason}", .open_for.as_secs(), .timeout.as_secs())]
    TransactionTimedOut {
        topic: String,
        partition: i32,
        open_for: std::time::Duration,
        timeout: std::time::Duration,
        reason: String,
    },
    /// A copier panicked; turned into an error so that it is restarted.
    #[error("copier for {topic}[{partition}] panicked: {message}")]
    CopierPanicked {
        topic: String,
        partition: i32,
        message: String,
    },
    /// The copier failed too many times in a row and is given up on.
    #[error("{topic}[{partition}] failed {failures} times in a row; last error: {last}")]
    TooManyFailures {
        topic: String,
        partition: i32,
        failures: u32,
        last: String,
    },
    /// An actor this one depends on has stopped.
    #[error("the {actor} actor has stopped")]
    ActorGone { actor: &'static str },
}

impl ReplicationError {
    /// True for errors a restart cannot fix: the copier stops instead.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ReplicationError::RecordRefused { .. } | ReplicationError::Fenced { .. }
        )
    }
}
