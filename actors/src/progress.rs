//! Which source offsets of one partition the destination has acknowledged.
//!
//! A copier registers each batch before sending it; the producer's delivery
//! callback acknowledges records one by one. Acknowledgements may arrive out
//! of order across batches, so the committable position only ever advances
//! over the contiguous prefix of fully acknowledged batches: committing more
//! could lose the records of a batch still in flight.
//!
//! A restart of the copier bumps the epoch: acknowledgements of batches sent
//! before it are then ignored, because the partition is re-read from the
//! committable position anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crate::metrics::PartitionMetrics;

/// Acknowledged progress of one source partition.
#[derive(Debug, Default)]
pub struct PartitionProgress {
    inner: Mutex<Inner>,
    /// Records acknowledged by the destination, over the process lifetime.
    acked_records: AtomicU64,
    /// Bytes of keys, values and headers acknowledged, over the process lifetime.
    acked_bytes: AtomicU64,
    /// Source high watermark, as last reported by the consumer's statistics (-1: unknown).
    high_watermark: AtomicI64,
    /// Where acknowledged batches are counted and timed.
    metrics: OnceLock<PartitionMetrics>,
    /// Next destination offset after the newest acknowledged record (-1: none yet).
    destination_next: AtomicI64,
}

impl std::fmt::Debug for PartitionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartitionMetrics")
    }
}

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    /// Next offset to read once every batch before it is acknowledged.
    committable: Option<i64>,
    /// The last position handed to the consumer group as committed.
    committed: Option<i64>,
    /// Batches in flight, in the order they were read.
    pending: VecDeque<Pending>,
    /// The first permanent delivery failure of this epoch.
    failure: Option<Failure>,
    /// Timestamp (ms) of the newest acknowledged record, for lag in seconds.
    last_acked_timestamp: Option<i64>,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    next_offset: i64,
    last_timestamp: Option<i64>,
    done: bool,
}

/// When a batch was read and sent, for latency metrics.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// When its first record was read from the source queue.
    pub read_at: Instant,
    /// Source timestamp (ms) of its first record.
    pub first_timestamp: Option<i64>,
}

/// A record the destination refused for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The source offset of the refused record.
    pub offset: i64,
    /// What the destination said.
    pub reason: String,
    /// True when retrying cannot help.
    pub permanent: bool,
    /// The broker refused a whole produce batch as too large: the records
    /// must be sent again one by one to learn which, if any, is too large.
    pub batch_too_large: bool,
}

impl PartitionProgress {
    /// A partition with nothing read yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            high_watermark: AtomicI64::new(-1),
            destination_next: AtomicI64::new(-1),
            ..Self::default()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a batch of `records` records, from `first_offset` up to
    /// before `next_offset`, is about to be sent. The returned ack must see
    /// every record delivered.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        self: &Arc<Self>,
        records: usize,
        bytes: usize,
        first_offset: i64,
        next_offset: i64,
        last_timestamp: Option<i64>,
        timing: Option<Timing>,
    ) -> Arc<BatchAck> {
        if let Some(m) = self.metrics.get() {
            m.batch_sent(records, bytes);
        }
        let mut inner = self.lock();
        // Nothing acknowledged yet: a restart resumes where this batch starts.
        if inner.committable.is_none() {
            inner.committable = Some(first_offset);
        }
        let id = inner.pending.back().map_or(0, |p| p.id + 1);
        inner.pending.push_back(Pending {
            id,
            next_offset,
            last_timestamp,
            done: false,
        });
        Arc::new(BatchAck {
            progress: Arc::clone(self),
            epoch: inner.epoch,
            id,
            remaining: AtomicUsize::new(records),
            records: records as u64,
            bytes: bytes as u64,
            timing,
            sent_at: Instant::now(),
            unsent: AtomicUsize::new(records),
            sent: tokio::sync::Notify::new(),
        })
    }

    fn complete(&self, epoch: u64, id: u64, records: u64, bytes: u64) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if let Some(p) = inner.pending.iter_mut().find(|p| p.id == id) {
            p.done = true;
        }
        while inner.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = inner.pending.pop_front() {
                inner.committable = Some(p.next_offset);
                if p.last_timestamp.is_some() {
                    inner.last_acked_timestamp = p.last_timestamp;
                }
            }
        }
        self.acked_records.fetch_add(records, Ordering::Relaxed);
        self.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn fail(&self, epoch: u64, failure: Failure) {
        let mut inner = self.lock();
        if inner.epoch == epoch && inner.failure.is_none() {
            inner.failure = Some(failure);
        }
    }

    /// Resumes at `offset` whatever was acknowledged before: for exactly-once
    /// flows, whose position is the one stored on the destination.
    pub fn resume_at(&self, offset: i64) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.pending.clear();
        inner.failure = None;
        inner.committable = Some(offset);
    }

    /// Starts a new epoch after a copier restart: batches in flight are
    /// forgotten and the partition is to be re-read from [`Self::committable`].
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.pending.clear();
        inner.failure = None;
    }

    /// Sets where reading starts when nothing was acknowledged yet (the group's
    /// committed offset), so that a restart before the first ack knows where to go.
    pub fn set_start(&self, offset: i64) {
        let mut inner = self.lock();
        if inner.committable.is_none() {
            inner.committable = Some(offset);
            inner.committed = Some(offset);
        }
    }

    /// The next offset to read once everything before it is acknowledged.
    pub fn committable(&self) -> Option<i64> {
        self.lock().committable
    }

    /// The committable position if it moved since the last [`Self::mark_committed`].
    pub fn uncommitted(&self) -> Option<i64> {
        let inner = self.lock();
        match (inner.committable, inner.committed) {
            (Some(c), Some(done)) if c <= done => None,
            (c, _) => c,
        }
    }

    /// Notes that `offset` was committed to the source's consumer group.
    pub fn mark_committed(&self, offset: i64) {
        let mut inner = self.lock();
        if inner.committed.is_none_or(|c| c < offset) {
            inner.committed = Some(offset);
        }
    }

    /// The last committed position.
    pub fn committed(&self) -> Option<i64> {
        self.lock().committed
    }

    /// Batches sent but not yet fully acknowledged.
    pub fn in_flight_batches(&self) -> usize {
        self.lock().pending.len()
    }

    /// The first permanent failure of this epoch, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.lock().failure.clone()
    }

    /// Records acknowledged since the process started.
    pub fn acked_records(&self) -> u64 {
        self.acked_records.load(Ordering::Relaxed)
    }

    /// Bytes acknowledged since the process started.
    pub fn acked_bytes(&self) -> u64 {
        self.acked_bytes.load(Ordering::Relaxed)
    }

    /// Source timestamp (ms) of the newest acknowledged record.
    pub fn last_acked_timestamp(&self) -> Option<i64> {
        self.lock().last_acked_timestamp
    }

    /// Attaches the partition's metrics (once; later calls are ignored).
    pub fn set_metrics(&self, metrics: PartitionMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// The partition's metrics, once attached.
    pub fn metrics(&self) -> Option<&PartitionMetrics> {
        self.metrics.get()
    }

    /// The destination acknowledged a record written at `offset` of the
    /// destination partition. One atomic maximum: fit for the delivery callback.
    pub fn destination_delivered(&self, offset: i64) {
        self.destination_next
            .fetch_max(offset.saturating_add(1), Ordering::Relaxed);
    }

    /// Next destination offset after the newest acknowledged record, once one is.
    pub fn destination_offset(&self) -> Option<i64> {
        let offset = self.destination_next.load(Ordering::Relaxed);
        (offset >= 0).then_some(offset)
    }

    /// Records the source's high watermark.
    pub fn set_high_watermark(&self, offset: i64) {
        self.high_watermark.store(offset, Ordering::Relaxed);
    }

    /// The source's high watermark, if known.
    pub fn high_watermark(&self) -> Option<i64> {
        let hw = self.high_watermark.load(Ordering::Relaxed);
        (hw >= 0).then_some(hw)
    }

    /// Records still to be copied: high watermark minus acknowledged position.
    pub fn lag(&self) -> Option<i64> {
        let hw = self.high_watermark()?;
        let pos = self.committable().unwrap_or(0);
        Some((hw - pos).max(0))
    }
}

/// The acknowledgement of one batch: shared by its records' deliveries.
#[derive(Debug)]
pub struct BatchAck {
    progress: Arc<PartitionProgress>,
    epoch: u64,
    id: u64,
    remaining: AtomicUsize,
    records: u64,
    bytes: u64,
    timing: Option<Timing>,
    sent_at: Instant,
    /// Records not yet answered by the destination: see [`Self::record_sent`].
    unsent: AtomicUsize,
    sent: tokio::sync::Notify,
}

impl BatchAck {
    /// The destination answered one record of the batch (written or
    /// refused), whether or not that acknowledges it: in a transaction the
    /// acknowledgement waits for the commit.
    pub fn record_sent(&self) {
        if self.unsent.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sent.notify_one();
        }
    }

    /// Waits until the destination answered every record of the batch (see
    /// [`Self::record_sent`]).
    pub async fn all_sent(&self) {
        while self.unsent.load(Ordering::Acquire) > 0 {
            let notified = self.sent.notified();
            if self.unsent.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// One record of the batch was written.
    pub fn delivered(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.completed();
        }
    }

    /// One record of the batch was refused: the batch never completes.
    /// `permanent` when no retry can help (the partition then stops).
    pub fn failed(&self, offset: i64, reason: String, permanent: bool) {
        self.progress.fail(
            self.epoch,
            Failure {
                offset,
                reason,
                permanent,
                batch_too_large: false,
            },
        );
    }

    /// The produce batch holding this record was too large for the topic.
    pub fn failed_batch_too_large(&self, offset: i64, reason: String) {
        self.progress.fail(
            self.epoch,
            Failure {
                offset,
                reason,
                permanent: false,
                batch_too_large: true,
            },
        );
    }

    /// Every record of the batch is written (a committed transaction).
    pub fn delivered_all(&self) {
        if self.remaining.swap(0, Ordering::AcqRel) > 0 {
            self.completed();
        }
    }

    fn completed(&self) {
        self.progress
            .complete(self.epoch, self.id, self.records, self.bytes);
        if let (Some(m), Some(t)) = (self.progress.metrics.get(), self.timing) {
            m.batch_acked(
                self.records,
                self.bytes,
                t.read_at,
                self.sent_at,
                t.first_timestamp,
            );
        }
    }

    /// The progress this batch belongs to.
    pub fn progress(&self) -> &Arc<PartitionProgress> {
        &self.progress
    }

    /// The partition's epoch when the batch was sent: every restart of
    /// its copier begins a new one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver_all(ack: &BatchAck, n: usize) {
        for _ in 0..n {
            ack.delivered();
        }
    }

    #[test]
    fn committable_advances_only_over_the_acknowledged_prefix() {
        let p = PartitionProgress::new();
        let a = p.register(2, 10, 8, 10, None, None);
        let b = p.register(3, 10, 17, 20, None, None);
        let c = p.register(1, 10, 20, 21, None, None);
        deliver_all(&c, 1);
        deliver_all(&b, 3);
        assert_eq!(p.committable(), Some(8), "batch a is still in flight");
        a.delivered();
        assert_eq!(
            p.committable(),
            Some(8),
            "one record of a is still in flight"
        );
        a.delivered();
        assert_eq!(p.committable(), Some(21));
        assert_eq!(p.acked_records(), 6);
        assert_eq!(p.in_flight_batches(), 0);
    }

    #[test]
    fn a_failure_holds_the_position_and_reset_ignores_old_acks() {
        let p = PartitionProgress::new();
        p.set_start(5);
        let a = p.register(1, 10, 5, 6, None, None);
        let b = p.register(1, 10, 6, 7, None, None);
        a.failed(5, "too large".into(), true);
        b.delivered();
        assert_eq!(p.committable(), Some(5));
        assert_eq!(p.failure().map(|f| f.offset), Some(5));
        p.reset();
        assert_eq!(p.failure(), None);
        a.delivered();
        assert_eq!(
            p.committable(),
            Some(5),
            "acks from before the reset are ignored"
        );
        let c = p.register(2, 10, 5, 7, None, None);
        deliver_all(&c, 2);
        assert_eq!(p.committable(), Some(7));
    }

    #[test]
    fn uncommitted_reports_only_new_positions() {
        let p = PartitionProgress::new();
        p.set_start(0);
        assert_eq!(p.uncommitted(), None);
        let a = p.register(1, 10, 0, 1, Some(1000), None);
        a.delivered();
        assert_eq!(p.uncommitted(), Some(1));
        p.mark_committed(1);
        assert_eq!(p.uncommitted(), None);
        assert_eq!(p.last_acked_timestamp(), Some(1000));
    }

    #[test]
    fn lag_is_high_watermark_minus_position() {
        let p = PartitionProgress::new();
        assert_eq!(p.lag(), None);
        p.set_high_watermark(100);
        p.set_start(40);
        assert_eq!(p.lag(), Some(60));
    }
}
