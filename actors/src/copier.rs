//! A copier: one per assigned source partition.
//!
//! It takes its partition's batches from its inbox (filled by the source's
//! reading thread, see [`crate::dispatcher`]) and sends each to the
//! destination actor, awaiting the answer before taking the next: that
//! awaited send is what turns a slow destination into a slow source.
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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;

use crate::batch::{Batch, RecordView};
use crate::destination::{self, WriteBatch};
use crate::dispatcher::{Held, Inbox, Parcel};
use crate::error::ReplicationError;
use crate::lane;
use crate::metrics::{self as names, labels};
use crate::offset_store::{self, OffsetMapReader, StoredOffset};
use crate::panic_guard::panic_message;
use crate::progress::{BatchAck, Timing};
use crate::spec::{ClusterSpec, OnError, Tuning};
use crate::status::{PartitionState, PartitionStatus};
use crate::transactional::{
    fenced_or_timed_out, CommitError, Fill, FillBudget, TransactionalWriter,
};

/// How often a copier with nothing to copy checks whether it should stop.
const IDLE_RECHECK: Duration = Duration::from_millis(100);

/// Why an exactly-once copier ended a transaction: the `reason` label of
/// [`names::TRANSACTIONS_COMMITTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransactionEnd {
    /// Opened on an idle partition, which was then caught up with nothing
    /// more waiting; or on a streaming one, caught up once the transaction
    /// was `transaction_streaming_interval` old.
    CaughtUp,
    /// `transaction_interval` ran out.
    Interval,
    /// `transaction_max_records` was reached.
    Full,
    /// The copier is stopping.
    Stopping,
}

impl TransactionEnd {
    fn label(self) -> &'static str {
        match self {
            Self::CaughtUp => "caught_up",
            Self::Interval => "interval",
            Self::Full => "full",
            Self::Stopping => "stopping",
        }
    }
}

/// A failure to inject at one offset, a limited number of times (tests only).
#[derive(Clone, Debug)]
pub struct InjectedAt {
    /// The source offset where it happens.
    pub offset: i64,
    /// How many more times it happens; shared across restarts.
    pub remaining: Arc<AtomicU32>,
}

/// The failures injected into one copier (tests only), kept across its
/// restarts.
#[derive(Clone, Debug, Default)]
pub struct CopierFaults {
    /// Panic when reading the offset.
    pub panic: Option<InjectedAt>,
    /// Exactly-once with a producer per partition: before writing the
    /// offset, hold the open transaction this long (as a producer stalled
    /// behind a destination outage does).
    pub stall: Option<(InjectedAt, Duration)>,
}

impl InjectedAt {
    /// Takes one of the remaining failures: true if there was one left.
    pub fn take(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
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
    /// The flow's offset map, read once for copiers starting together.
    pub offset_map: Arc<OffsetMapReader>,
    /// Bounds how many copiers of the flow open their transactional
    /// producer at once, so that a flow of 1,000 partitions does not send
    /// 1,000 `InitProducerId` requests to one coordinator together.
    pub opening: Arc<tokio::sync::Semaphore>,
    /// Bounds how many copiers of the flow end a transaction at once. One
    /// broker's transaction coordinator fell over (request time-outs, then
    /// aborts and retries) when 1,000 copiers each committed every 100 ms;
    /// a copier waiting here lets its next transaction grow instead.
    pub ending: Arc<tokio::sync::Semaphore>,
    /// The bytes the flow's transactional producers may hold unsent.
    pub fill_budget: Arc<FillBudget>,
    /// How long a copier whose transaction the coordinator timed out waits
    /// before it opens a new producer (see [`crate::transactional::reopen_delay`]).
    pub reopen_delay: Duration,
    /// The flow writes through lanes ([`crate::lane`]): the copier sends
    /// its batches to its partition's lane, which owns the transactions.
    pub in_lanes: bool,
}

impl ExactlyOnce {
    /// Producers of one flow that may be opening at the same time.
    pub const CONCURRENT_OPENS: usize = 32;
    /// Transactions of one flow that may be ending at the same time.
    pub const CONCURRENT_COMMITS: usize = 8;
}

/// Everything a copier needs; kept across restarts.
pub struct Copier {
    flow: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    destination_topic: Arc<str>,
    /// Held by the reading loop while it runs.
    inbox: Arc<tokio::sync::Mutex<Inbox>>,
    destination: Recipient<WriteBatch>,
    status: Arc<PartitionStatus>,
    tuning: Tuning,
    on_error: OnError,
    exactly_once: Option<ExactlyOnce>,
    faults: CopierFaults,
    /// Set to ask the reading loop to finish its current batch and stop.
    stop: Arc<AtomicBool>,
    /// True while the reading loop runs.
    running: Arc<AtomicBool>,
    /// Failures since the partition last made progress.
    failures_in_row: u32,
    /// The least delay before the next start, whatever the backoff.
    hold_off: Duration,
    /// After a batch was refused as too large: send records before this
    /// offset one at a time.
    isolate_until: Option<i64>,
    /// The offset after the last record the reading loop took.
    read_to: Arc<AtomicI64>,
    /// Where reading had got to at the last failure: a streak of failures
    /// ends only once everything read before it is acknowledged (records
    /// that were in flight and are sent again after a restart do not count).
    read_to_at_last_failure: i64,
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
    /// Where the partition's batches arrive.
    pub inbox: Inbox,
    /// Where batches go: the destination actor, or in an exactly-once flow
    /// in lanes, the partition's lane.
    pub destination: Recipient<WriteBatch>,
    /// The partition's status and progress.
    pub status: Arc<PartitionStatus>,
    /// Batch sizes and backoff.
    pub tuning: Tuning,
    /// What a record the destination refuses for good does.
    pub on_error: OnError,
    /// Set for exactly-once flows.
    pub exactly_once: Option<ExactlyOnce>,
    /// Test-only failure injection.
    pub faults: CopierFaults,
}

impl Copier {
    /// Starts a supervised copier in the current arbiter.
    pub fn start(parts: CopierParts) -> Addr<Self> {
        let copier = Self {
            flow: parts.flow,
            topic: parts.topic,
            partition: parts.partition,
            destination_topic: parts.destination_topic,
            inbox: Arc::new(tokio::sync::Mutex::new(parts.inbox)),
            destination: parts.destination,
            status: parts.status,
            tuning: parts.tuning,
            on_error: parts.on_error,
            exactly_once: parts.exactly_once,
            faults: parts.faults,
            stop: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicBool::new(false)),
            failures_in_row: 0,
            hold_off: Duration::ZERO,
            isolate_until: None,
            read_to: Arc::new(AtomicI64::new(-1)),
            read_to_at_last_failure: i64::MIN,
        };
        Supervisor::start(|_| copier)
    }

    /// The delay before the next start: none at first, then doubling.
    fn backoff(&self) -> Duration {
        if self.failures_in_row == 0 {
            return self.hold_off;
        }
        let factor = 2u32.saturating_pow(self.failures_in_row.saturating_sub(1).min(20));
        self.tuning
            .restart_backoff_initial
            .saturating_mul(factor)
            .min(self.tuning.restart_backoff_max)
            .max(self.hold_off)
    }

    fn start_reading(&mut self, ctx: &mut Context<Self>) {
        let reader = Reader {
            flow: Arc::clone(&self.flow),
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            destination_topic: Arc::clone(&self.destination_topic),
            destination: self.destination.clone(),
            status: Arc::clone(&self.status),
            tuning: self.tuning.clone(),
            on_error: self.on_error.clone(),
            faults: self.faults.clone(),
            stop: Arc::clone(&self.stop),
            isolate_until: self.isolate_until,
            read_to: Arc::clone(&self.read_to),
            lane_request: self
                .exactly_once
                .as_ref()
                .filter(|e| e.in_lanes)
                .map(|e| lane::request_capacity(&e.destination, &e.group_id)),
        };
        let exactly_once = self.exactly_once.clone();
        let inbox = Arc::clone(&self.inbox);
        let topic = Arc::clone(&self.topic);
        let partition = self.partition;
        self.running.store(true, Ordering::SeqCst);
        self.status.set_state(PartitionState::Copying);
        let run = async move {
            let mut inbox = inbox.lock_owned().await;
            match exactly_once {
                None => reader.run(&mut inbox).await,
                Some(eos) if eos.in_lanes => reader.run_in_lane(eos, &mut inbox).await,
                Some(eos) => reader.run_exactly_once(eos, &mut inbox).await,
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
        let acknowledged = self.status.progress.committable().unwrap_or(-1);
        if acknowledged > self.read_to_at_last_failure {
            // It got past the last failure: this is a new streak.
            self.failures_in_row = 0;
        }
        self.read_to_at_last_failure = self.read_to.load(Ordering::SeqCst);
        self.failures_in_row += 1;
        self.status.record_failure(error.to_string());
        if let Some(m) = self.status.progress.metrics() {
            m.restarted();
        }
        self.hold_off = match (&error, &self.exactly_once) {
            (ReplicationError::TransactionTimedOut { .. }, Some(eos)) => eos.reopen_delay,
            _ => Duration::ZERO,
        };
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
            // What was read for it would only sit in the flow's budget.
            if let Ok(mut inbox) = self.inbox.try_lock() {
                inbox.close();
            }
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

    /// Has the partition read again from the first unacknowledged offset.
    fn rewind(&self) {
        self.status.progress.reset();
        let Some(offset) = self.status.progress.committable() else {
            // Nothing was taken from the inbox yet, so nothing can be skipped.
            return;
        };
        match self.inbox.try_lock() {
            Ok(mut inbox) => inbox.rewind(Some(offset)),
            // The reading loop ended before the restart, so this never waits.
            Err(_) => {
                tracing::error!(flow = %self.flow, topic = %self.topic, partition = self.partition, "the previous reading loop still holds the inbox; not rewinding")
            }
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
    destination: Recipient<WriteBatch>,
    status: Arc<PartitionStatus>,
    tuning: Tuning,
    on_error: OnError,
    faults: CopierFaults,
    stop: Arc<AtomicBool>,
    /// Records before this offset are sent one at a time.
    isolate_until: Option<i64>,
    /// The offset after the last record taken (see `Copier::read_to`).
    read_to: Arc<AtomicI64>,
    /// In a lane: what one produce request carries. Batches go in pieces
    /// of at most that, each once the destination answered every record of
    /// the previous one (see [`Reader::run_in_lane`]).
    lane_request: Option<Fill>,
}

impl Reader {
    async fn run(self, inbox: &mut Inbox) -> Result<(), ReplicationError> {
        // Where reading has got to: the end of what a too-large batch held.
        let mut read_up_to = 0;
        // Where the first record should be: anything before what arrives
        // first is gone from the source, and that must not pass unnoticed.
        let mut expected = self.status.progress.committable();
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
            let Some(Parcel {
                mut batch,
                held,
                read_at,
                at_head,
            }) = self.next_parcel(inbox).await?
            else {
                continue;
            };
            // Nothing more to send for now (read once the batch is taken).
            let at_head = at_head && inbox.is_empty();
            let Some(first) = batch.first_offset() else {
                continue;
            };
            if let Some(expected) = expected.take() {
                self.note_gap(expected, first);
            }
            self.inject_panic(&batch);
            read_up_to = batch.next_offset().unwrap_or(read_up_to).max(read_up_to);
            // After a batch was refused as too large, its records go one by
            // one, each alone in flight, so a refusal names the record.
            if let Some(end) = self.isolate_until.filter(|end| first < *end) {
                let alone = batch.position_of(end);
                let rest = batch.split_off(alone);
                if !self.send_one_by_one(batch, read_at).await? {
                    continue;
                }
                batch = rest;
            }
            if !batch.is_empty() {
                self.send_in_requests(batch, at_head, read_at, held).await?;
            }
        }
    }

    /// The next batch from the inbox, or `None` after [`IDLE_RECHECK`]
    /// without one (so that a stop request is seen).
    async fn next_parcel(&self, inbox: &mut Inbox) -> Result<Option<Parcel>, ReplicationError> {
        match tokio::time::timeout(IDLE_RECHECK, inbox.recv()).await {
            Err(_idle) => Ok(None),
            Ok(None) => Err(ReplicationError::ActorGone {
                actor: "source reading thread",
            }),
            Ok(Some(parcel)) => {
                self.taken(&parcel);
                Ok(Some(parcel))
            }
        }
    }

    /// Notes a batch taken from the inbox.
    fn taken(&self, parcel: &Parcel) {
        if let Some(first) = parcel.batch.first_offset() {
            // A restart before the first acknowledgement must come back to
            // this batch: it is no longer in the inbox.
            self.status.progress.set_start(first);
        }
        if let Some(next) = parcel.batch.next_offset() {
            self.read_to.fetch_max(next, Ordering::SeqCst);
        }
    }

    /// Sends `batch`; in a lane, in pieces of one produce request each. A
    /// piece queued behind the partition's request in flight was ready to
    /// go (its `linger.ms` over) and could not, and librdkafka's broker
    /// thread polled without sleeping until the answer came: 5,600
    /// zero-timeout polls in 2 s per lane on 8 partitions (strace), most of
    /// the lanes' CPU.
    async fn send_in_requests(
        &self,
        mut batch: Batch,
        at_head: bool,
        read_at: Instant,
        mut held: Held,
    ) -> Result<(), ReplicationError> {
        let Some(request) = &self.lane_request else {
            return self.send(batch, false, at_head, read_at, Some(held)).await;
        };
        loop {
            let rest = batch.split_off(batch.fitting(request.bytes, request.records));
            let rest_held = held.split(rest.bytes());
            let last = rest.is_empty();
            self.send(batch, false, at_head && last, read_at, Some(held))
                .await?;
            // After a failure or a stop the rest is read again anyway.
            if last || self.stop.load(Ordering::SeqCst) || self.status.progress.failure().is_some()
            {
                return Ok(());
            }
            (batch, held) = (rest, rest_held);
        }
    }

    /// Sends each record of `batch` alone, waiting for its acknowledgement
    /// before the next. False when one failed (the loop then reports it).
    async fn send_one_by_one(
        &self,
        mut batch: Batch,
        read_at: Instant,
    ) -> Result<bool, ReplicationError> {
        while !batch.is_empty() {
            let rest = batch.split_off(1);
            // Nothing more is sent before it is acknowledged: in a lane,
            // its transaction need not wait out the interval.
            self.send(batch, true, true, read_at, None).await?;
            self.wait_until_acknowledged().await;
            if self.status.progress.failure().is_some() || self.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            batch = rest;
        }
        Ok(true)
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

    /// Exactly-once in lanes: the partition resumes where the offset map
    /// says (its lane, open before the partition was assigned, has fenced
    /// the lane's older owner), then batches go to the lane as to the
    /// destination; the lane acknowledges them once their transaction
    /// commits, and an abort fails them, which restarts this copier from
    /// the last committed offset. A batch goes only once the destination
    /// answered the previous one: librdkafka (2.12) sends one request at a
    /// time per partition of a transactional producer, and while records
    /// wait behind it the lane's broker thread polls without sleeping
    /// (8 lanes on 1,000 partitions: 62 CPU s per GB, against 25 for a
    /// producer per partition, in BENCHMARKS.md).
    async fn run_in_lane(
        self,
        eos: ExactlyOnce,
        inbox: &mut Inbox,
    ) -> Result<(), ReplicationError> {
        // Either rewind also starts reading a newly assigned partition,
        // held until its copier is ready (`Routes::hold_new_partitions`).
        match eos
            .offset_map
            .next_offset(&self.topic, self.partition)
            .await?
        {
            Some(offset) => {
                self.status.progress.resume_at(offset);
                inbox.rewind(Some(offset));
            }
            None => inbox.rewind(self.status.progress.committable()),
        }
        self.run(inbox).await
    }

    /// Exactly-once: records and the offset map entry go out in one
    /// transaction per run of records (at most `transaction_max_records`, open
    /// at most `transaction_interval`; one opened on an idle partition ends
    /// once it is caught up), sent one produce request's worth at a
    /// time. Reading resumes where the offset map says, after
    /// `init_transactions` has fenced any older owner.
    async fn run_exactly_once(
        self,
        eos: ExactlyOnce,
        inbox: &mut Inbox,
    ) -> Result<(), ReplicationError> {
        let transactional_id = format!("{}.{}.{}", eos.group_id, self.topic, self.partition);
        let writer = {
            let _permit = eos
                .opening
                .acquire()
                .await
                .map_err(|_| ReplicationError::ActorGone {
                    actor: "exactly-once opening limit",
                })?;
            TransactionalWriter::open(&eos.destination, transactional_id, &eos.fill_budget).await?
        };
        let mut next = eos
            .offset_map
            .next_offset(&self.topic, self.partition)
            .await?;
        // Either rewind also starts reading a newly assigned partition,
        // held until its copier is ready (`Routes::hold_new_partitions`).
        match next {
            Some(offset) => {
                self.status.progress.resume_at(offset);
                inbox.rewind(Some(offset));
            }
            None => {
                next = self.status.progress.committable();
                inbox.rewind(None);
            }
        }
        let key = offset_store::key(&eos.group_id, &self.topic, self.partition);
        // Where the first record should be (see `note_gap`).
        let mut start = next;
        // Offsets to pass over (skip) or redirect (dead letter) after the
        // destination refused them for good and the transaction was aborted.
        let mut refused: BTreeMap<i64, String> = BTreeMap::new();
        // What a transaction full at `transaction_max_records` left of a batch.
        let mut carried: Option<Parcel> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Nothing was waiting: the partition is idle, not streaming.
            let idle = carried.is_none() && inbox.is_empty();
            let parcel = match carried.take() {
                Some(parcel) => parcel,
                None => match self.next_parcel(inbox).await? {
                    Some(parcel) => parcel,
                    None => continue,
                },
            };
            // Records left over from before a rewind are already committed.
            let Some(mut parcel) = skip_before(parcel, next) else {
                continue;
            };
            let Some(first_offset) = parcel.batch.first_offset() else {
                continue;
            };
            if let Some(expected) = start.take() {
                self.note_gap(expected, first_offset);
            }
            writer.begin()?;
            let began = Instant::now();
            let timing = Timing {
                read_at: parcel.read_at,
                first_timestamp: parcel.batch.first_timestamp(),
            };
            let deadline = Instant::now() + self.tuning.transaction_interval;
            let (mut last_offset, mut last_timestamp) = (first_offset, None);
            let (mut records, mut bytes) = (0usize, 0usize);
            let ended = loop {
                let room = self.tuning.transaction_max_records.max(1) - records;
                if parcel.batch.len() > room {
                    let rest = parcel.batch.split_off(room);
                    let held = parcel.held.split(rest.bytes());
                    carried = Some(Parcel {
                        batch: rest,
                        held,
                        read_at: parcel.read_at,
                        at_head: parcel.at_head,
                    });
                    parcel.at_head = false;
                }
                for record in parcel.batch.iter() {
                    self.inject_panic_at(record.offset);
                    self.inject_stall_at(record.offset).await;
                    // One produce request's worth at a time, within the writer's
                    // share of the flow's budget (see `transactional`).
                    if !writer.fits(&record) {
                        writer.flush().await?;
                    }
                    self.write_exactly_once(&writer, &record, &refused, &eos)
                        .await?;
                    records += 1;
                    bytes +=
                        record.value.map_or(0, <[u8]>::len) + record.key.map_or(0, <[u8]>::len);
                    last_offset = record.offset;
                    last_timestamp = record.timestamp.or(last_timestamp);
                }
                let caught_up = parcel.at_head;
                // Its records are in the producer's queue now.
                drop(parcel);
                if carried.is_some() || records >= self.tuning.transaction_max_records {
                    break TransactionEnd::Full;
                }
                if self.stop.load(Ordering::SeqCst) {
                    break TransactionEnd::Stopping;
                }
                // A record that reached an idle partition: nothing more to
                // read, and waiting out the interval would only delay what
                // read-committed consumers see. A partition that streams
                // (records were waiting when the transaction began) keeps
                // the interval even when caught up, or the shorter
                // `transaction_streaming_interval` when set: transactions
                // back to back, each after a fetch, swamped the destination
                // (250 records/s per partition: p99 1.0-1.7 s, against 0.5 s
                // with the interval, in turn on one machine). During a
                // catch-up the partition's end is far ahead anyway.
                let caught_up = caught_up && inbox.is_empty();
                if caught_up && (idle || self.streamed_long_enough(began)) {
                    break TransactionEnd::CaughtUp;
                }
                // Caught up too soon on a streaming partition: more records
                // are waited for only until the streaming interval has run,
                // or a stream that stops here would hold its last records
                // for the whole interval.
                let (until, end) = match self.streaming_end(began) {
                    Some(at) if caught_up && at < deadline => (at, TransactionEnd::CaughtUp),
                    _ => (deadline, TransactionEnd::Interval),
                };
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break end;
                }
                parcel = match tokio::time::timeout(left, inbox.recv()).await {
                    Ok(Some(parcel)) => {
                        self.taken(&parcel);
                        parcel
                    }
                    Ok(None) => {
                        return Err(ReplicationError::ActorGone {
                            actor: "source reading thread",
                        })
                    }
                    Err(_timed_out) => break end,
                };
            };
            let stored = StoredOffset {
                flow: eos.flow.clone(),
                source_cluster: eos.source_cluster.clone(),
                next_offset: last_offset + 1,
            };
            let (committed, took) = {
                let _permit =
                    eos.ending
                        .acquire()
                        .await
                        .map_err(|_| ReplicationError::ActorGone {
                            actor: "exactly-once commit limit",
                        })?;
                let committing = Instant::now();
                (writer.commit(&key, &stored).await, committing.elapsed())
            };
            match committed {
                Ok(()) => {
                    metrics::counter!(names::TRANSACTIONS_COMMITTED, labels::FLOW => eos.flow.clone(), labels::REASON => ended.label()).increment(1);
                    metrics::histogram!(names::TRANSACTION_COMMIT_SECONDS, labels::FLOW => eos.flow.clone()).record(took.as_secs_f64());
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
                    metrics::counter!(names::TRANSACTIONS_ABORTED, labels::FLOW => eos.flow.clone()).increment(1);
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
                    carried = None;
                    inbox.rewind(Some(back));
                    next = Some(back);
                }
                Err(CommitError::Fenced(reason)) => {
                    let error = fenced_or_timed_out(
                        &self.topic,
                        self.partition,
                        began.elapsed(),
                        writer.coordinator_timeout(),
                        reason,
                    );
                    if matches!(error, ReplicationError::TransactionTimedOut { .. }) {
                        // By the coordinator.
                        metrics::counter!(names::TRANSACTIONS_ABORTED, labels::FLOW => eos.flow.clone()).increment(1);
                    }
                    return Err(error);
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
        m: &RecordView<'_>,
        refused: &BTreeMap<i64, String>,
        eos: &ExactlyOnce,
    ) -> Result<(), ReplicationError> {
        let sent = match (refused.get(&m.offset), &self.on_error) {
            (None, _) | (Some(_), OnError::Fail) => {
                writer
                    .send(&self.destination_topic, Some(self.partition), m, &[])
                    .await
            }
            (Some(reason), OnError::Skip) => {
                tracing::warn!(flow = %self.flow, topic = %self.topic, partition = self.partition, offset = m.offset, error = %reason, "skipping a record the destination refuses (on_error = \"skip\")");
                metrics::counter!(names::RECORDS_SKIPPED, labels::FLOW => eos.flow.clone(), labels::TOPIC => self.topic.to_string(), labels::REASON => "refused").increment(1);
                Ok(())
            }
            (Some(reason), OnError::DeadLetter(topic)) => {
                let origin = destination::dead_letter_origin(
                    &eos.source_cluster,
                    &self.topic,
                    self.partition,
                    m.offset,
                    reason,
                );
                metrics::counter!(names::RECORDS_DEAD_LETTERED, labels::FLOW => eos.flow.clone(), labels::TOPIC => self.topic.to_string()).increment(1);
                writer.send(topic, None, m, &origin).await
            }
        };
        sent.map_err(|error| {
            self.refused(
                m.offset,
                error.to_string(),
                destination::is_permanent(&error),
            )
        })
    }

    async fn send(
        &self,
        batch: Batch,
        alone: bool,
        at_head: bool,
        read_at: Instant,
        held: Option<Held>,
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
        let sent = self.lane_request.is_some().then(|| Arc::clone(&ack));
        self.destination
            .send(WriteBatch {
                batch,
                source_topic: Arc::clone(&self.topic),
                topic: Arc::clone(&self.destination_topic),
                partition: self.partition,
                ack,
                alone,
                at_head,
                budget: held,
            })
            .await
            .map_err(|_| ReplicationError::ActorGone {
                actor: "destination",
            })??;
        if let Some(ack) = sent {
            self.wait_until_sent(&ack).await;
        }
        Ok(())
    }

    /// Waits until the destination answered every record of the batch, or
    /// a write failed, or the copier is asked to stop.
    async fn wait_until_sent(&self, ack: &BatchAck) {
        loop {
            if tokio::time::timeout(IDLE_RECHECK, ack.all_sent())
                .await
                .is_ok()
                || self.status.progress.failure().is_some()
                || self.stop.load(Ordering::SeqCst)
            {
                return;
            }
        }
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

    fn inject_panic(&self, batch: &Batch) {
        if let Some(fault) = &self.faults.panic {
            if batch.contains_offset(fault.offset) {
                self.inject_panic_at(fault.offset);
            }
        }
    }

    fn inject_panic_at(&self, offset: i64) {
        if let Some(fault) = &self.faults.panic {
            if fault.offset == offset && fault.take() {
                panic!(
                    "injected failure at {}[{}] offset {}",
                    self.topic, self.partition, fault.offset
                );
            }
        }
    }

    /// Whether a transaction opened on a streaming partition at `began` may
    /// end now that the partition is caught up.
    fn streamed_long_enough(&self, began: Instant) -> bool {
        self.streaming_end(began)
            .is_some_and(|at| Instant::now() >= at)
    }

    /// When a transaction opened on a streaming partition at `began` may end
    /// once caught up (with `transaction_streaming_interval` set).
    fn streaming_end(&self, began: Instant) -> Option<Instant> {
        self.tuning
            .transaction_streaming_interval
            .map(|after| began + after)
    }

    async fn inject_stall_at(&self, offset: i64) {
        if let Some((fault, stall)) = &self.faults.stall {
            if fault.offset == offset && fault.take() {
                tracing::warn!(flow = %self.flow, topic = %self.topic, partition = self.partition, offset, ?stall, "injected stall: holding the open transaction");
                tokio::time::sleep(*stall).await;
            }
        }
    }
}

/// The parcel without its records before `next`; `None` if nothing is left.
fn skip_before(mut parcel: Parcel, next: Option<i64>) -> Option<Parcel> {
    if let Some(next) = next {
        let stale = parcel.batch.position_of(next);
        if stale > 0 {
            parcel.batch = parcel.batch.split_off(stale);
        }
    }
    (!parcel.batch.is_empty()).then_some(parcel)
}
