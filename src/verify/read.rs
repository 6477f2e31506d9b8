//! Reading one partition range of a cluster, by assignment (no consumer
//! group is joined and nothing is committed), as a stream.
//!
//! Reads are `read_committed`: records of aborted transactions and
//! transaction markers are skipped by the client and never take a position.
//! A range is `[start, end)` in offsets, fixed when the comparison starts
//! (`end` is the high watermark then, or the first offset at or after `--to`),
//! so records written meanwhile are left for the next run.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use strait_actors::client::{client_config, log_client_error, log_client_event};
use strait_actors::ClusterSpec;

use super::align::Item;
use super::digest::record_digest;
use super::VerifyError;

/// How long a metadata, watermark or offset lookup may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a read may go without a record before it is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The group id the readers carry (never joined, never committed to).
pub const VERIFY_GROUP: &str = "strait.verify";

/// How long one poll waits.
const POLL: Duration = Duration::from_millis(500);

/// Routes the client's logs into `tracing`, tagged with the cluster.
pub struct VerifyContext {
    cluster: String,
}

impl ClientContext for VerifyContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }
}

impl ConsumerContext for VerifyContext {}

/// A consumer of one cluster that reads by assignment.
pub struct ClusterReader {
    alias: String,
    consumer: BaseConsumer<VerifyContext>,
}

/// Offsets `[start, end)` of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    /// First offset to read.
    pub start: i64,
    /// Offset after the last one to read.
    pub end: i64,
}

impl OffsetRange {
    /// Offsets in the range (records, plus any markers or gaps among them).
    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }

    /// True when nothing is to be read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which records of a range count: those whose timestamp is in `[from, to)`
/// (milliseconds since the epoch), when given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeFilter {
    /// Earliest timestamp included.
    pub from_ms: Option<i64>,
    /// First timestamp excluded.
    pub to_ms: Option<i64>,
}

impl TimeFilter {
    /// True when a record with this timestamp is compared.
    pub fn includes(&self, timestamp_ms: Option<i64>) -> bool {
        if self.from_ms.is_none() && self.to_ms.is_none() {
            return true;
        }
        let Some(ts) = timestamp_ms else {
            return false;
        };
        let after_from = !matches!(self.from_ms, Some(from) if ts < from);
        let before_to = !matches!(self.to_ms, Some(to) if ts >= to);
        after_from && before_to
    }
}

impl ClusterReader {
    /// A consumer for `cluster` with its own properties (credentials
    /// included) and the settings reading depends on.
    pub fn new(cluster: &ClusterSpec) -> Result<Self, VerifyError> {
        let defaults = [
            // A partition at a time: a modest prefetch is plenty.
            ("queued.max.messages.kbytes", "16384".to_string()),
            ("auto.offset.reset", "earliest".to_string()),
        ];
        let forced = [
            // librdkafka assigns only with a group id; this group is never
            // joined and nothing is committed to it.
            ("group.id", VERIFY_GROUP.to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
            ("enable.partition.eof", "true".to_string()),
            ("isolation.level", "read_committed".to_string()),
        ];
        let consumer = client_config(cluster, &defaults, &forced)
            .create_with_context(VerifyContext {
                cluster: cluster.alias.clone(),
            })
            .map_err(|e| {
                VerifyError::Cluster(format!(
                    "cluster `{}`: cannot create a Kafka client: {e}",
                    cluster.alias
                ))
            })?;
        Ok(Self {
            alias: cluster.alias.clone(),
            consumer,
        })
    }

    /// The cluster's alias.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    fn error(&self, what: &str, e: KafkaError) -> VerifyError {
        VerifyError::Cluster(format!("cluster `{}`: {what}: {e}", self.alias))
    }

    /// The ranges to read of `partitions` of `topic`: from the low watermark
    /// (or the first offset at or after `filter.from_ms`) to the high
    /// watermark (or the first offset at or after `filter.to_ms`).
    pub fn ranges(
        &self,
        topic: &str,
        partitions: &[i32],
        filter: TimeFilter,
    ) -> Result<Vec<OffsetRange>, VerifyError> {
        let mut ranges = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .map_err(|e| self.error(&format!("cannot read the offsets of {topic}[{p}]"), e))?;
            ranges.push(OffsetRange {
                start: low,
                end: high,
            });
        }
        for (bound, is_start) in [(filter.from_ms, true), (filter.to_ms, false)] {
            let Some(ms) = bound else { continue };
            let offsets = self.offsets_for_time(topic, partitions, ms)?;
            for (range, found) in ranges.iter_mut().zip(offsets) {
                // No record at or after the time: the range ends there.
                let at = found.unwrap_or(range.end).clamp(range.start, range.end);
                if is_start {
                    range.start = at;
                } else {
                    range.end = at;
                }
            }
        }
        for range in &mut ranges {
            range.end = range.end.max(range.start);
        }
        Ok(ranges)
    }

    /// Per partition, the first offset whose timestamp is at or after `ms`.
    fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[i32],
        ms: i64,
    ) -> Result<Vec<Option<i64>>, VerifyError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                .map_err(|e| self.error("cannot look up offsets by time", e))?;
        }
        let found = self
            .consumer
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(|e| self.error(&format!("cannot look up offsets of {topic} by time"), e))?;
        Ok(partitions
            .iter()
            .map(
                |&p| match found.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect())
    }

    /// Reads `range` of `topic`[`partition`]. `progress` is told how many
    /// offsets each step covered (records and the gaps before them).
    pub fn read<'a>(
        &'a self,
        topic: &str,
        partition: i32,
        range: OffsetRange,
        filter: TimeFilter,
        progress: &'a dyn Fn(u64),
    ) -> Result<PartitionStream<'a>, VerifyError> {
        let stream = PartitionStream {
            reader: self,
            topic: topic.to_string(),
            partition,
            next: range.start,
            end: range.end,
            filter,
            done: range.is_empty(),
            last_record: Instant::now(),
            progress,
        };
        if !stream.done {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(range.start))
                .and_then(|_| self.consumer.assign(&tpl))
                .map_err(|e| self.error(&format!("cannot read {topic}[{partition}]"), e))?;
        } else {
            // Nothing to read: drop any earlier assignment.
            let _ = self.consumer.unassign();
        }
        Ok(stream)
    }
}

/// The records of one partition range, in offset order.
pub struct PartitionStream<'a> {
    reader: &'a ClusterReader,
    topic: String,
    partition: i32,
    /// Offset after the last record seen.
    next: i64,
    end: i64,
    filter: TimeFilter,
    done: bool,
    last_record: Instant,
    progress: &'a dyn Fn(u64),
}

impl<'a> PartitionStream<'a> {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            (self.progress)((self.end - self.next).max(0) as u64);
            self.next = self.end.max(self.next);
        }
    }

    /// The next record of the range that passes the time filter.
    pub fn next_message(&mut self) -> Option<Result<BorrowedMessage<'a>, VerifyError>> {
        let consumer = &self.reader.consumer;
        loop {
            if self.done {
                return None;
            }
            if self.next >= self.end {
                self.finish();
                return None;
            }
            match consumer.poll(POLL) {
                None => {
                    if self.reached_end() {
                        self.finish();
                        return None;
                    }
                    if self.last_record.elapsed() > STALL_TIMEOUT {
                        self.done = true;
                        return Some(Err(VerifyError::Cluster(format!(
                            "cluster `{}`: no record from {}[{}] for {}s; stopped at offset {} \
                             of a range ending at {}",
                            self.reader.alias,
                            self.topic,
                            self.partition,
                            STALL_TIMEOUT.as_secs(),
                            self.next,
                            self.end
                        ))));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p == self.partition => {
                    self.finish();
                    return None;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(self
                        .reader
                        .error(&format!("reading {}[{}]", self.topic, self.partition), e)));
                }
                Some(Ok(m)) => {
                    if m.topic() != self.topic || m.partition() != self.partition {
                        continue;
                    }
                    self.last_record = Instant::now();
                    if m.offset() >= self.end {
                        self.finish();
                        return None;
                    }
                    if m.offset() < self.next {
                        continue;
                    }
                    (self.progress)((m.offset() + 1 - self.next) as u64);
                    self.next = m.offset() + 1;
                    if self.filter.includes(m.timestamp().to_millis()) {
                        return Some(Ok(m));
                    }
                }
            }
        }
    }

    /// True when the consumer's position is at or past the range's end
    /// (the last offsets may be markers that never arrive as records).
    fn reached_end(&self) -> bool {
        let Ok(positions) = self.reader.consumer.position() else {
            return false;
        };
        matches!(
            positions
                .find_partition(&self.topic, self.partition)
                .map(|e| e.offset()),
            Some(Offset::Offset(o)) if o >= self.end
        )
    }
}

impl Iterator for PartitionStream<'_> {
    type Item = Result<Item, VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_message()?.map(|m| Item {
            offset: m.offset(),
            digest: digest_of(&m),
        }))
    }
}

/// The content digest of a message read from Kafka.
pub fn digest_of<M: Message>(m: &M) -> super::digest::Digest {
    let headers = m.headers();
    let pairs = headers
        .into_iter()
        .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
    record_digest(m.key(), m.payload(), pairs, m.timestamp().to_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_filter_is_half_open() {
        let all = TimeFilter::default();
        assert!(all.includes(None) && all.includes(Some(5)));
        let f = TimeFilter {
            from_ms: Some(10),
            to_ms: Some(20),
        };
        assert!(!f.includes(Some(9)));
        assert!(f.includes(Some(10)));
        assert!(f.includes(Some(19)));
        assert!(!f.includes(Some(20)));
        assert!(!f.includes(None));
    }

    #[test]
    fn an_empty_range_has_no_length() {
        assert_eq!(OffsetRange { start: 5, end: 3 }.len(), 0);
        assert!(OffsetRange { start: 5, end: 5 }.is_empty());
        assert_eq!(OffsetRange { start: 5, end: 8 }.len(), 3);
    }
}
