//! A copier: one per assigned source partition.
//!
//! It reads its partition's own queue (split off the group consumer), packs
//! records into batches and sends each to the destination actor, awaiting the
//! answer before reading on: that awaited send is what turns a slow
//! destination into a slow source.
//!
//! A copier that fails, by error or by panic, is restarted by its actix
//! `Supervisor`: the reading loop runs under `catch_unwind`, so a panic becomes
//! an error and `ctx.stop()`, which the supervisor answers with `restarting()`
//! and a fresh `started()`. Each restart waits an exponential backoff, forgets
//! the batches in flight and seeks the partition back to its last acknowledged
//! offset, so nothing is skipped. The source supervisor also watches for a
//! copier whose mailbox closed (a panic outside the loop) and starts a new one.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::stream_consumer::{MessageStream, StreamPartitionQueue};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;

use crate::batch::Batch;
use crate::destination::{self, Destination, WriteBatch};
use crate::error::ReplicationError;
use crate::metrics::{self as names, labels};
use crate::offset_store::{self, StoredOffset};
use crate::progress::Timing;
use crate::source::{SourceConsumer, SourceContext};
use crate::spec::{ClusterSpec, OnError, Tuning};
use crate::status::{PartitionState, PartitionStatus};
use crate::transactional::{CommitError, TransactionalWriter};

/// How long a copier waits on an empty queue before looking again: from
/// `IDLE_RECHECK_MIN` after a record, doubling up to `IDLE_RECHECK` while
/// nothing comes. librdkafka can miss a wake-up on split queues
/// (rust-rdkafka #665); this bounds the stall, closely while records flow
/// (at 25 records/s per partition a fixed 200 ms made p99 latency 82 ms)
/// and cheaply while a partition is idle.
const IDLE_RECHECK: Duration = Duration::from_millis(200);
const IDLE_RECHECK_MIN: Duration = Duration::from_millis(10);

/// Bytes of batches a flow may hold between its copiers and the destination:
/// each copier awaits one send at a time, so without it a thousand copiers
/// could each hold a full batch (`batch_max_bytes`) while the destination
/// works through them. One permit is one KB.
#[derive(Clone, Debug)]
pub struct BatchBudget {
    permits: Arc<tokio::sync::Semaphore>,
    kbytes: u32,
}

impl BatchBudget {
    /// A budget of `bytes` (at least 1 MB).
    pub fn new(bytes: usize) -> Self {
        let kbytes = u32::try_from((bytes / 1024).max(1024)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(kbytes as usize)),
            kbytes,
        }
    }

    /// Waits for room for a batch of up to `bytes`; answers with the room
    /// taken, in bytes, which may be less than asked (never more than a
    /// quarter of the budget, so that several partitions make progress).
    async fn reserve(
        &self,
        bytes: usize,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, usize), ReplicationError> {
        let kbytes = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, (self.kbytes / 4).max(1));
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(kbytes)
            .await
            // Only a closed semaphore fails, and this one is never closed.
            .map_err(|_| ReplicationError::ActorGone {
                actor: "batch budget",
            })?;
        Ok((permit, kbytes as usize * 1024))
    }
}

/// A partition queue split off the source's group consumer.
pub type PartitionQueue = StreamPartitionQueue<SourceContext>;

/// A failure to inject at one offset, a limited number of times (tests only).
#[derive(Clone, Debug)]
pub struct InjectedPanic {
    /// The source offset whose reading panics.
    pub offset: i64,
    /// How many more times it panics; shared across restarts.
    pub remaining: Arc<AtomicU32>,
}

/// What an exactly-once copier needs besides the common parts.
#[derive(Clone, Debug)]
pub struct ExactlyOnce {
    /// The destination cluster, for the partition's transactional producer
    /// and the offset map.
    pub destination: ClusterSpec,
    /// The flow's consumer group: part of the transactional id and the map key.
    pub group_id: String,
    /// The flow's name, written into the offset map.
    pub flow: String,
    /// The source cluster's alias, written into the offset map.
    pub source_cluster: String,
}

/// Everything a copier needs; kept across restarts.
pub struct Copier {
    flow: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    destination_topic: Arc<str>,
    queue: Arc<PartitionQueue>,
    consumer: Arc<SourceConsumer>,
    destination: Addr<Destination>,
    status: Arc<PartitionStatus>,
    tuning: Tuning,
    on_error: OnError,
    exactly_once: Option<ExactlyOnce>,
    injected_panic: Option<InjectedPanic>,
    budget: BatchBudget,
    /// Set to ask the reading loop to finish its current batch and stop.
    stop: Arc<AtomicBool>,
    /// True while the reading loop runs.
    running: Arc<AtomicBool>,
    /// Failures since the partition last made progress.
    failures_in_row: u32,
    /// After a batch was refused as too large: send records before this
    /// offset one at a time.
    isolate_until: Option<i64>,
    acked_at_last_failure: u64,
}

/// What a copier is given when started.
pub struct CopierParts {
    /// The flow's name, for logs and metrics.
    pub flow: Arc<str>,
    /// Source topic.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
    /// Destination topic.
    pub destination_topic: Arc<str>,
    /// The partition's own queue.
    pub queue: PartitionQueue,
    /// The group consumer, for seeking.
    pub consumer: Arc<SourceConsumer>,
    /// Where batches go.
    pub destination: Addr<Destination>,
    /// The partition's status and progress.
    pub status: Arc<PartitionStatus>,
    /// Batch sizes and backoff.
    pub tuning: Tuning,
    /// What a record the destination refuses for good does.
    pub on_error: OnError,
    /// Set for exactly-once flows.
    pub exactly_once: Option<ExactlyOnce>,
    /// Test-only failure injection.
    pub injected_panic: Option<InjectedPanic>,
    /// The flow's room for batches on their way to the destination.
    pub budget: BatchBudget,
}

impl Copier {
    /// Starts a supervised copier in the current arbiter.
    pub fn start(parts: CopierParts) -> Addr<Self> {
        let copier = Self {
            flow: parts.flow,
            topic: parts.topic,
            partition: parts.partition,
            destination_topic: parts.destination_topic,
            queue: Arc::new(parts.queue),
            consumer: parts.consumer,
            destination: parts.destination,
            status: parts.status,
            tuning: parts.tuning,
            on_error: parts.on_error,
            exactly_once: parts.exactly_once,
            injected_panic: parts.injected_panic,
            budget: parts.budget,
            stop: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicBool::new(false)),
            failures_in_row: 0,
            isolate_until: None,
            acked_at_last_failure: 0,
        };
        Supervisor::start(|_| copier)
    }

    /// The delay before the next start: none at first, then doubling.
    fn backoff(&self) -> Duration {
        if self.failures_in_row == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(self.failures_in_row.saturating_sub(1).min(20));
        self.tuning
            .restart_backoff_initial
            .saturating_mul(factor)
            .min(self.tuning.restart_backoff_max)
    }

    fn start_reading(&mut self, ctx: &mut Context<Self>) {
        let reader = Reader {
            flow: Arc::clone(&self.flow),
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            destination_topic: Arc::clone(&self.destination_topic),
            queue: Arc::clone(&self.queue),
            consumer: Arc::clone(&self.consumer),
            destination: self.destination.clone(),
            status: Arc::clone(&self.status),
            tuning: self.tuning.clone(),
            on_error: self.on_error.clone(),
            injected_panic: self.injected_panic.clone(),
            budget: self.budget.clone(),
            stop: Arc::clone(&self.stop),
            isolate_until: self.isolate_until,
        };
        let exactly_once = self.exactly_once.clone();
        let topic = Arc::clone(&self.topic);
        let partition = self.partition;
        self.running.store(true, Ordering::SeqCst);
        self.status.set_state(PartitionState::Copying);
        let run = async move {
            match exactly_once {
                None => reader.run().await,
                Some(eos) => reader.run_exactly_once(eos).await,
            }
        };
        let guarded = AssertUnwindSafe(run).catch_unwind().map(move |result| {
            result.unwrap_or_else(|panic| {
                Err(ReplicationError::CopierPanicked {
                    topic: topic.to_string(),
                    partition,
                    message: panic_message(panic.as_ref()),
                })
            })
        });
        ctx.spawn(guarded.into_actor(self).map(|result, act, ctx| {
            act.running.store(false, Ordering::SeqCst);
            if let Err(error) = result {
                act.failed(error, ctx);
            }
        }));
    }

    fn failed(&mut self, error: ReplicationError, ctx: &mut Context<Self>) {
        if let ReplicationError::BatchTooLarge { read_up_to, .. } = &error {
            // Not a failure of the copier: go back and send one by one, now.
            tracing::info!(flow = %self.flow, topic = %self.topic, partition = self.partition, error = %error, "re-sending records one at a time");
            self.isolate_until = Some(*read_up_to);
            self.status.set_state(PartitionState::Restarting);
            ctx.stop();
            return;
        }
        let acked = self.status.progress.acked_records();
        if acked > self.acked_at_last_failure {
            // It made progress since the last failure: this is a new streak.
            self.failures_in_row = 0;
        }
        self.acked_at_last_failure = acked;
        self.failures_in_row += 1;
        self.status.record_failure(error.to_string());
        if let Some(m) = self.status.progress.metrics() {
            m.restarted();
        }
        let limit = self.tuning.max_consecutive_failures;
        let give_up = error.is_permanent() || (limit > 0 && self.failures_in_row >= limit);
        if give_up {
            // Restarting cannot help: leave the partition stopped, with its
            // error in the status, and let the others go on.
            tracing::error!(
                flow = %self.flow,
                topic = %self.topic,
                partition = self.partition,
                failures_in_row = self.failures_in_row,
                error = %error,
                "partition stopped: it will not be copied until Strait restarts or it is reassigned"
            );
            self.status.set_state(PartitionState::Failed);
            return;
        }
        tracing::error!(
            flow = %self.flow,
            topic = %self.topic,
            partition = self.partition,
            failures_in_row = self.failures_in_row,
            retry_in = ?self.backoff(),
            error = %error,
            "copier failed; restarting it from the last acknowledged offset"
        );
        self.status.set_state(PartitionState::Restarting);
        ctx.stop();
    }

    /// Moves the consumer back to the first unacknowledged offset.
    fn rewind(&self) {
        self.status.progress.reset();
        let Some(offset) = self.status.progress.committable() else {
            // Nothing was read yet, so nothing can have been skipped.
            return;
        };
        if let Err(error) = self.consumer.seek(
            &self.topic,
            self.partition,
            Offset::Offset(offset),
            Duration::ZERO,
        ) {
            tracing::warn!(
                flow = %self.flow,
                topic = %self.topic,
                partition = self.partition,
                offset,
                error = %error,
                "could not seek back to the last acknowledged offset"
            );
        }
    }
}

impl Actor for Copier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4);
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        match self.backoff() {
            Duration::ZERO => self.start_reading(ctx),
            delay => {
                ctx.run_later(delay, |act, ctx| {
                    if !act.stop.load(Ordering::SeqCst) {
                        act.start_reading(ctx);
                    }
                });
            }
        }
    }
}

impl Supervised for Copier {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.rewind();
    }
}

/// Stops the copier cleanly: finish the batch being read, wait until the
/// destination acknowledged what is in flight (or `timeout` passes), and
/// answer with the offset up to which everything is acknowledged.
#[derive(Message)]
#[rtype(result = "Option<i64>")]
pub struct StopCopier {
    /// Longest wait for in-flight batches.
    pub timeout: Duration,
}

impl Handler<StopCopier> for Copier {
    type Result = ResponseFuture<Option<i64>>;

    fn handle(&mut self, msg: StopCopier, _: &mut Context<Self>) -> Self::Result {
        self.stop.store(true, Ordering::SeqCst);
        self.status.set_state(PartitionState::Stopped);
        let running = Arc::clone(&self.running);
        let status = Arc::clone(&self.status);
        Box::pin(async move {
            let deadline = Instant::now() + msg.timeout;
            while (running.load(Ordering::SeqCst) || status.progress.in_flight_batches() > 0)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            status.progress.committable()
        })
    }
}

/// The reading loop, owned by a task of the copier.
struct Reader {
    flow: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    destination_topic: Arc<str>,
    queue: Arc<PartitionQueue>,
    consumer: Arc<SourceConsumer>,
    destination: Addr<Destination>,
    status: Arc<PartitionStatus>,
    tuning: Tuning,
    on_error: OnError,
    injected_panic: Option<InjectedPanic>,
    budget: BatchBudget,
    stop: Arc<AtomicBool>,
    /// Records before this offset are sent one at a time.
    isolate_until: Option<i64>,
}

impl Reader {
    async fn run(self) -> Result<(), ReplicationError> {
        let mut stream = self.queue.stream();
        // Where reading has got to: the end of what a too-large batch held.
        let mut read_up_to = 0;
        // Where the first record should be: anything before what arrives
        // first is gone from the source, and that must not pass unnoticed.
        let mut expected = self.status.progress.committable();
        // Records and bytes of the previous batch.
        let mut last_size = (16, 16 * 1024);
        let mut recheck = IDLE_RECHECK_MIN;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if let Some(failure) = self.status.progress.failure() {
                if failure.batch_too_large {
                    return Err(ReplicationError::BatchTooLarge {
                        topic: self.topic.to_string(),
                        partition: self.partition,
                        offset: failure.offset,
                        destination_topic: self.destination_topic.to_string(),
                        read_up_to,
                    });
                }
                return Err(self.refused(failure.offset, failure.reason, failure.permanent));
            }
            let Some(first) = self.next_record(&mut stream, &mut recheck).await? else {
                continue;
            };
            let read_at = Instant::now();
            if let Some(expected) = expected.take() {
                self.note_gap(expected, first.offset());
            }
            // After a batch was refused as too large, its records go one by
            // one, each alone in flight, so a refusal names the record.
            let alone = self.isolate_until.is_some_and(|end| first.offset() < end);
            let (mut permit, room) = self.budget.reserve(self.tuning.batch_max_bytes).await?;
            let max_bytes = self.tuning.batch_max_bytes.min(room);
            // Sized like the previous batch: a thousand mostly idle partitions
            // must not each hold a buffer sized for a busy one.
            let mut batch = Batch::with_capacity(
                last_size.0.min(self.tuning.batch_max_records),
                last_size.1.min(max_bytes),
            );
            batch.push(&first);
            drop(first);
            while !alone && batch.len() < self.tuning.batch_max_records && batch.bytes() < max_bytes
            {
                match stream.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(&message),
                    Some(Some(Err(error))) => {
                        self.consume_error(&error);
                        break;
                    }
                    _ => break,
                }
            }
            self.inject_panic(&batch);
            // Keep only the room the batch takes (its first record may have
            // been larger than the room, which is then all it gets).
            let used = batch.bytes().div_ceil(1024).max(1);
            drop(permit.split(permit.num_permits().saturating_sub(used)));
            last_size = (batch.len(), batch.bytes());
            read_up_to = batch.next_offset().unwrap_or(read_up_to).max(read_up_to);
            self.send(batch, alone, read_at, permit).await?;
            if alone {
                self.wait_until_acknowledged().await;
            }
        }
    }

    /// Waits for the partition's next record, at most `recheck`: `None` when
    /// none came (the wait doubles, up to [`IDLE_RECHECK`]) or the queue
    /// reported an error (logged and counted); a record resets the wait.
    async fn next_record<'a>(
        &self,
        stream: &mut MessageStream<'a, SourceContext>,
        recheck: &mut Duration,
    ) -> Result<Option<BorrowedMessage<'a>>, ReplicationError> {
        match tokio::time::timeout(*recheck, stream.next()).await {
            Err(_idle) => {
                *recheck = (*recheck * 2).min(IDLE_RECHECK);
                Ok(None)
            }
            Ok(None) => Err(ReplicationError::ActorGone {
                actor: "partition queue",
            }),
            Ok(Some(Err(error))) => {
                self.consume_error(&error);
                Ok(None)
            }
            Ok(Some(Ok(message))) => {
                *recheck = IDLE_RECHECK_MIN;
                Ok(Some(message))
            }
        }
    }

    /// Waits until nothing of this partition is in flight, or a write failed.
    async fn wait_until_acknowledged(&self) {
        while self.status.progress.in_flight_batches() > 0
            && self.status.progress.failure().is_none()
            && !self.stop.load(Ordering::SeqCst)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Exactly-once: records and the offset map entry go out in one
    /// transaction per run of records (at most `transaction_max_records`, open
    /// at most `transaction_interval`). Reading resumes where the offset map
    /// says, after `init_transactions` has fenced any older owner.
    async fn run_exactly_once(self, eos: ExactlyOnce) -> Result<(), ReplicationError> {
        let transactional_id = format!("{}.{}.{}", eos.group_id, self.topic, self.partition);
        let writer = TransactionalWriter::open(&eos.destination, transactional_id).await?;
        let (cluster, group) = (eos.destination.clone(), eos.group_id.clone());
        let stored = tokio::task::spawn_blocking(move || offset_store::read(&cluster, &group))
            .await
            .map_err(|_| ReplicationError::ActorGone {
                actor: "offset map reader",
            })??;
        let mut next = stored
            .get(&(self.topic.to_string(), self.partition))
            .copied();
        match next {
            Some(offset) => {
                self.status.progress.resume_at(offset);
                self.seek(offset);
            }
            None => next = self.status.progress.committable(),
        }
        let key = offset_store::key(&eos.group_id, &self.topic, self.partition);
        // Where the first record should be (see `note_gap`).
        let mut start = next;
        // Offsets to pass over (skip) or redirect (dead letter) after the
        // destination refused them for good and the transaction was aborted.
        let mut refused: BTreeMap<i64, String> = BTreeMap::new();
        let mut stream = self.queue.stream();
        let mut recheck = IDLE_RECHECK_MIN;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let first = match self.next_record(&mut stream, &mut recheck).await? {
                None => continue,
                // Left over from before a seek back: already committed.
                Some(m) if next.is_some_and(|n| m.offset() < n) => continue,
                Some(m) => m,
            };
            if let Some(expected) = start.take() {
                self.note_gap(expected, first.offset());
            }
            writer.begin()?;
            let timing = Timing {
                read_at: Instant::now(),
                first_timestamp: first.timestamp().to_millis(),
            };
            let deadline = Instant::now() + self.tuning.transaction_interval;
            let (first_offset, mut last_offset, mut last_timestamp) = (
                first.offset(),
                first.offset(),
                first.timestamp().to_millis(),
            );
            let (mut records, mut bytes) = (0usize, 0usize);
            let mut pending = Some(first);
            while let Some(m) = pending.take() {
                if next.is_none_or(|n| m.offset() >= n) && m.offset() >= last_offset {
                    self.inject_panic_at(m.offset());
                    self.write_exactly_once(&writer, &m, &refused, &eos).await?;
                    records += 1;
                    bytes += m.payload_len() + m.key().map_or(0, <[u8]>::len);
                    last_offset = m.offset();
                    last_timestamp = m.timestamp().to_millis().or(last_timestamp);
                }
                if records >= self.tuning.transaction_max_records
                    || self.stop.load(Ordering::SeqCst)
                {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                pending = match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => Some(m),
                    _ if left.is_zero() => None,
                    _ => match tokio::time::timeout(left, stream.next()).await {
                        Ok(Some(Ok(m))) => Some(m),
                        Ok(Some(Err(error))) => {
                            self.consume_error(&error);
                            None
                        }
                        _ => None,
                    },
                };
            }
            let stored = StoredOffset {
                flow: eos.flow.clone(),
                source_cluster: eos.source_cluster.clone(),
                next_offset: last_offset + 1,
            };
            match writer.commit(&key, &stored).await {
                Ok(()) => {
                    self.status
                        .progress
                        .register(
                            records,
                            bytes,
                            first_offset,
                            last_offset + 1,
                            last_timestamp,
                            Some(timing),
                        )
                        .delivered_all();
                    next = Some(last_offset + 1);
                }
                Err(CommitError::Aborted {
                    reason,
                    refused: now_refused,
                }) => {
                    let too_large = now_refused
                        .iter()
                        .filter(|(_, e)| destination::is_too_large(e))
                        .count();
                    if too_large > 1 {
                        // A whole produce batch was refused: skipping or
                        // dead-lettering its records would lose good ones, and
                        // splitting batches inside a transaction is not safe here.
                        return Err(self.refused(
                            first_offset,
                            format!("a produce batch of {too_large} records was refused as too large for the destination topic; set `batch.size` in [clusters.<destination>.kafka] below the topic's max.message.bytes"),
                            true,
                        ));
                    }
                    for (offset, error) in now_refused {
                        if !destination::is_permanent(&error) {
                            continue;
                        }
                        if self.on_error == OnError::Fail {
                            return Err(self.refused(offset, error.to_string(), true));
                        }
                        refused.insert(offset, error.to_string());
                    }
                    let back = next.unwrap_or(first_offset);
                    tracing::warn!(flow = %self.flow, topic = %self.topic, partition = self.partition, reason, resume_at = back, "transaction aborted; copying again from the last committed offset");
                    self.seek(back);
                    next = Some(back);
                }
                Err(CommitError::Fenced(reason)) => {
                    return Err(ReplicationError::Fenced {
                        topic: self.topic.to_string(),
                        partition: self.partition,
                        reason,
                    })
                }
                Err(CommitError::Fatal(reason)) => {
                    return Err(ReplicationError::Transaction {
                        cluster: eos.destination.alias.clone(),
                        reason,
                    })
                }
            }
        }
    }

    /// Writes one record inside the open transaction, unless an earlier
    /// attempt showed the destination refuses it: then `on_error` decides.
    async fn write_exactly_once(
        &self,
        writer: &TransactionalWriter,
        m: &BorrowedMessage<'_>,
        refused: &BTreeMap<i64, String>,
        eos: &ExactlyOnce,
    ) -> Result<(), ReplicationError> {
        let sent = match (refused.get(&m.offset()), &self.on_error) {
            (None, _) | (Some(_), OnError::Fail) => {
                writer
                    .send(&self.destination_topic, Some(self.partition), m, &[])
                    .await
            }
            (Some(reason), OnError::Skip) => {
                tracing::warn!(flow = %self.flow, topic = %self.topic, partition = self.partition, offset = m.offset(), error = %reason, "skipping a record the destination refuses (on_error = \"skip\")");
                metrics::counter!(names::RECORDS_SKIPPED, labels::FLOW => eos.flow.clone(), labels::TOPIC => self.topic.to_string(), labels::REASON => "refused").increment(1);
                Ok(())
            }
            (Some(reason), OnError::DeadLetter(topic)) => {
                let origin = [
                    ("strait.source.cluster", eos.source_cluster.clone()),
                    ("strait.source.topic", self.topic.to_string()),
                    ("strait.source.partition", self.partition.to_string()),
                    ("strait.source.offset", m.offset().to_string()),
                    ("strait.error", reason.clone()),
                ];
                metrics::counter!(names::RECORDS_DEAD_LETTERED, labels::FLOW => eos.flow.clone(), labels::TOPIC => self.topic.to_string()).increment(1);
                writer.send(topic, None, m, &origin).await
            }
        };
        sent.map_err(|error| {
            self.refused(
                m.offset(),
                error.to_string(),
                destination::is_permanent(&error),
            )
        })
    }

    /// Moves the partition to `offset`; records read before it are dropped
    /// by librdkafka (and by the offset checks of the reading loops).
    fn seek(&self, offset: i64) {
        if let Err(error) = self.consumer.seek(
            &self.topic,
            self.partition,
            Offset::Offset(offset),
            Duration::ZERO,
        ) {
            tracing::warn!(flow = %self.flow, topic = %self.topic, partition = self.partition, offset, error = %error, "could not seek");
        }
    }

    async fn send(
        &self,
        batch: Batch,
        alone: bool,
        read_at: Instant,
        budget: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), ReplicationError> {
        let (Some(first), Some(next)) = (batch.first_offset(), batch.next_offset()) else {
            return Ok(());
        };
        let ack = self.status.progress.register(
            batch.len(),
            batch.bytes(),
            first,
            next,
            batch.last_timestamp(),
            Some(Timing {
                read_at,
                first_timestamp: batch.first_timestamp(),
            }),
        );
        self.destination
            .send(WriteBatch {
                batch,
                source_topic: Arc::clone(&self.topic),
                topic: Arc::clone(&self.destination_topic),
                partition: self.partition,
                ack,
                alone,
                budget: Some(budget),
            })
            .await
            .map_err(|_| ReplicationError::ActorGone {
                actor: "destination",
            })?
    }

    fn refused(&self, offset: i64, reason: String, permanent: bool) -> ReplicationError {
        let (topic, partition, destination_topic) = (
            self.topic.to_string(),
            self.partition,
            self.destination_topic.to_string(),
        );
        if permanent {
            ReplicationError::RecordRefused {
                topic,
                partition,
                offset,
                destination_topic,
                reason,
            }
        } else {
            ReplicationError::Produce {
                topic,
                partition,
                offset,
                destination_topic,
                reason,
            }
        }
    }

    /// Says so when the first record read is past where reading should have
    /// started: the records in between are gone from the source (retention,
    /// compaction). A single missing offset is usually a transaction marker.
    fn note_gap(&self, expected: i64, got: i64) {
        let missing = got - expected;
        if missing > 1 {
            tracing::warn!(
                flow = %self.flow,
                topic = %self.topic,
                partition = self.partition,
                from = expected,
                to = got - 1,
                missing,
                "source records are gone (removed by retention or compaction); copying goes on from the oldest one left"
            );
            if let Some(m) = self.status.progress.metrics() {
                m.records_unavailable(missing as u64);
            }
        }
    }

    fn consume_error(&self, error: &KafkaError) {
        tracing::warn!(
            flow = %self.flow,
            topic = %self.topic,
            partition = self.partition,
            error = %error,
            "error reading the source partition; the consumer retries"
        );
        if let Some(m) = self.status.progress.metrics() {
            m.consume_error(names::error_kind(error));
        }
    }

    fn inject_panic(&self, batch: &Batch) {
        if let Some(fault) = &self.injected_panic {
            if batch.contains_offset(fault.offset) {
                self.inject_panic_at(fault.offset);
            }
        }
    }

    fn inject_panic_at(&self, offset: i64) {
        if let Some(fault) = &self.injected_panic {
            if fault.offset == offset
                && fault
                    .remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                panic!(
                    "injected failure at {}[{}] offset {}",
                    self.topic, self.partition, fault.offset
                );
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_budget_caps_a_reservation_and_makes_the_next_wait_until_room_is_given_back() {
        let budget = BatchBudget::new(4 * 1024 * 1024);
        let (first, room) = budget.reserve(8 * 1024 * 1024).await.expect("open");
        assert_eq!(room, 1024 * 1024, "at most a quarter of the budget");
        let mut held = vec![first];
        for _ in 0..3 {
            held.push(budget.reserve(1024 * 1024).await.expect("open").0);
        }
        let blocked = tokio::time::timeout(Duration::from_millis(50), budget.reserve(1)).await;
        assert!(blocked.is_err(), "a full budget makes the next copier wait");
        held.pop();
        let (_, room) = tokio::time::timeout(Duration::from_secs(1), budget.reserve(1))
            .await
            .expect("room given back")
            .expect("open");
        assert_eq!(room, 1024, "a reservation is counted in whole KB");
    }
}
