//! A lane: one transactional producer writing the records of many source
//! partitions, for exactly-once flows.
//!
//! A producer per partition ([`crate::transactional`]) costs librdkafka
//! threads, buffers and a transaction per partition: on 1,000 partitions,
//! exactly-once copied at under half of what one or two producers spanning
//! all of them did (BENCHMARKS.md, "Exactly-once on 1,000 partitions"). So a
//! flow's partitions are divided among a fixed number of lanes
//! ([`lane_of`]); each lane has one transactional producer,
//! `transactional.id = <group_id>.lane-<k>`, and each of its transactions
//! holds records of any of its partitions and, at commit, the offset-map
//! entry of every partition it wrote (docs/exactly-once.md, "Lanes").
//! Whoever owns lane k opens it, and the open fences the lane's previous
//! owner as a partition's producer fences its previous owner.
//!
//! Copiers send a lane [`WriteBatch`]es as they send the destination in
//! at-least-once flows: a batch is answered once its records are queued, and
//! acknowledged to its partition's progress only when its transaction
//! commits. An aborted transaction fails every batch it held, so their
//! copiers restart from the last committed offset; and a batch sent before
//! its copier learnt of the abort (one of the same epoch, see
//! [`crate::progress`]) is refused, so no transaction holds records that
//! come after lost ones.
//!
//! Ending a transaction holds the actor (`ctx.wait`), so nothing is queued
//! while a commit or an abort is under way; so does queueing a batch while
//! the producer's queue is full, which is how a slow destination slows the
//! copiers down.
//!
//! A lane outlives a panic of its own ([`crate::panic_guard`]): its
//! handlers and timers run guarded, and a panic fails the latest batch of
//! every partition it wrote (so their copiers restart from the offset map,
//! as after an abort), drops the open transaction with its producer, and
//! opens a new producer, whose `init_transactions` aborts what the old one
//! left open. Copiers keep the lane's address: an actor that died would
//! close its mailbox under all of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::batch::RecordView;
use crate::client::{client_config, log_client_error, log_client_event};
use crate::copier::InjectedAt;
use crate::delivery_poller::{serve_reports, Served};
use crate::destination::{self, owned_headers, send_waiting_with, WriteBatch};
use crate::error::ReplicationError;
use crate::metrics::{self as names, labels};
use crate::offset_store::{self, StoredOffset, OFFSETS_TOPIC};
use crate::panic_guard::{guard, guarded, Recover};
use crate::progress::BatchAck;
use crate::spec::{ClusterSpec, OnError, Tuning};
use crate::transactional::{
    self, blocking, commit_transaction, coordinator_timeout, is_fencing, reopen_delay,
    transactional_settings, Fill, TxnError, DEFAULT_COORDINATOR_TIMEOUT,
};

/// How long one transaction call may block.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The bytes of records a flow's lanes may hold queued, all together: each
/// lane's producer gets an equal share, at least [`LANE_QUEUE_MIN_BYTES`].
/// (A lane's records leave within `linger.ms` and are acknowledged within a
/// round trip; the queue only fills while the destination is slow.)
pub const LANES_QUEUE_BYTES: usize = 32 << 20;

/// The least queue a lane's producer gets.
const LANE_QUEUE_MIN_BYTES: usize = 2 << 20;

/// A source partition, as a lane keys it.
type PartitionKey = (Arc<str>, i32);

/// The lane of a source partition, out of `lanes`. A topic's partitions go
/// round the lanes from a lane that the topic's name picks (FNV-1a), so each
/// lane gets an even share of every topic. It must never change: an entry of
/// the offset map is only fenced by the lane that wrote it.
pub fn lane_of(topic: &str, partition: i32, lanes: u32) -> u32 {
    let lanes = u64::from(lanes.max(1));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let partition = u64::from(partition.max(0).unsigned_abs());
    // Both terms are below 2^32 + 2^31: the sum cannot overflow.
    ((hash % lanes + partition) % lanes) as u32
}

/// The transactional id of lane `lane` of the flow whose group is `group_id`.
pub fn transactional_id(group_id: &str, lane: u32) -> String {
    format!("{group_id}.lane-{lane}")
}

/// What one produce request of a lane of `group_id` carries for one
/// partition: copiers send it batches of at most that (see
/// [`crate::copier`]).
pub(crate) fn request_capacity(cluster: &ClusterSpec, group_id: &str) -> Fill {
    // The request header names the lane: counted at its longest.
    transactional::request_capacity(cluster, &transactional_id(group_id, u32::MAX))
}

/// What a lane is given when started.
#[derive(Clone, Debug)]
pub struct LaneParts {
    /// The destination cluster.
    pub destination: ClusterSpec,
    /// The flow's consumer group: part of the transactional id and of the
    /// offset map's keys.
    pub group_id: String,
    /// The flow's name, for logs, metrics and the offset map.
    pub flow: String,
    /// The source cluster's alias, for the offset map and dead-letter headers.
    pub source_cluster: String,
    /// This lane's number.
    pub lane: u32,
    /// How many lanes the flow has (sizes the producer's queue).
    pub lanes: u32,
    /// Transaction length, mailbox capacity, reopen backoff.
    pub tuning: Tuning,
    /// What a record the destination refuses for good does.
    pub on_error: OnError,
    /// A panic to inject while writing one source offset (tests only).
    pub injected_panic: Option<LanePanic>,
}

/// A panic to inject while a lane writes one source record (tests only:
/// `STRAIT_FAULTS=lane_panic_at=...`).
#[derive(Clone, Debug)]
pub struct LanePanic {
    /// The record's source topic.
    pub topic: String,
    /// The record's source partition.
    pub partition: i32,
    /// Its offset, and how many more times it panics.
    pub at: InjectedAt,
}

impl LanePanic {
    fn inject(&self, msg: &WriteBatch) {
        let at = &self.at;
        if *msg.source_topic == *self.topic
            && msg.partition == self.partition
            && msg.batch.contains_offset(at.offset)
            && at.take()
        {
            panic!(
                "injected failure in a lane at {}[{}] offset {}",
                self.topic, self.partition, at.offset
            );
        }
    }
}

/// What a queued record carries to its delivery report.
struct Written {
    /// The batch it belongs to (`None` for an offset-map entry).
    ack: Option<Arc<BatchAck>>,
    /// The batch's place in the open transaction.
    batch: usize,
    /// Its source offset.
    offset: i64,
    /// True for a write to the dead-letter topic.
    dead_letter: bool,
}

/// A record the destination did not take.
struct Failed {
    batch: usize,
    offset: i64,
    dead_letter: bool,
    error: KafkaError,
}

/// Collects the open transaction's delivery failures.
struct LaneContext {
    cluster: String,
    failures: Mutex<Vec<Failed>>,
}

impl LaneContext {
    fn failed(&self, written: &Written, error: KafkaError) {
        if written.ack.is_none() {
            return; // an offset-map entry: the commit says why
        }
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Failed {
                batch: written.batch,
                offset: written.offset,
                dead_letter: written.dead_letter,
                error,
            });
    }

    fn take_failures(&self) -> Vec<Failed> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for LaneContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }
}

impl ProducerContext for LaneContext {
    type DeliveryOpaque = Box<Written>;

    fn delivery(&self, result: &DeliveryResult<'_>, written: Box<Written>) {
        match result {
            Ok(message) => {
                if let (Some(ack), false) = (&written.ack, written.dead_letter) {
                    ack.progress().destination_delivered(message.offset());
                }
            }
            Err((error, _)) => self.failed(&written, error.clone()),
        }
        if let Some(ack) = &written.ack {
            ack.record_sent();
        }
    }
}

/// A lane's producer, without a polling thread of its own.
type LaneProducer = BaseProducer<LaneContext>;

/// The open producer and its registration with the shared delivery-report
/// thread ([`crate::delivery_poller`]).
struct Open {
    producer: Arc<LaneProducer>,
    served: Option<Served>,
}

impl Drop for Open {
    /// Closing a producer blocks (it flushes and joins librdkafka's
    /// threads): done on tokio's blocking pool, once no transaction call
    /// running there holds the producer any more. Not waited for longer
    /// than a transaction call may take: then whoever holds it last closes it.
    fn drop(&mut self) {
        let served = self.served.take();
        let producer = Arc::clone(&self.producer);
        let close = move || {
            // The reports thread lets go of the producer first.
            drop(served);
            let deadline = std::time::Instant::now() + TRANSACTION_TIMEOUT;
            while Arc::strong_count(&producer) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(producer);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
}

/// A batch in the open transaction.
struct Sent {
    ack: Arc<BatchAck>,
    partition: PartitionKey,
    first_offset: i64,
}

/// The open transaction.
struct Transaction {
    id: u64,
    records: usize,
    batches: Vec<Sent>,
    /// The next offset of each partition written: its offset-map entry.
    ends: BTreeMap<PartitionKey, i64>,
    /// Partitions whose latest batch here was not at their head: their
    /// copiers have more to send, so the transaction waits for them.
    behind: HashSet<PartitionKey>,
    /// Why it cannot commit, when a record was refused before it was queued.
    doomed: Option<String>,
    /// When it began: one open longer than the producer's
    /// `transaction.timeout.ms` may be aborted by the coordinator.
    began: Instant,
}

/// Why a lane ended a transaction: the `reason` label of
/// [`names::TRANSACTIONS_COMMITTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `transaction_interval` ran out.
    Interval,
    /// `transaction_max_records` was reached.
    Full,
    /// Every partition in it was caught up, and no batch was waiting.
    CaughtUp,
    /// The lane is stopping.
    Stopping,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Full => "full",
            Self::CaughtUp => "caught_up",
            Self::Stopping => "stopping",
        }
    }
}

/// How a transaction ended.
#[derive(Debug)]
enum Ended {
    Committed,
    /// Aborted: its records can be read and written again.
    Aborted(String),
    /// A newer owner of the lane opened it.
    Fenced(String),
    /// The producer can no longer be used.
    Fatal(String),
}

/// One lane of an exactly-once flow.
pub struct Lane {
    parts: LaneParts,
    transactional_id: String,
    open: Option<Open>,
    txn: Option<Transaction>,
    next_txn: u64,
    /// Per partition, the newest epoch whose batches were in an aborted
    /// transaction: later batches of it are refused.
    poisoned: HashMap<PartitionKey, u64>,
    /// Records the destination refused for good, per partition, by source
    /// offset: written again, `on_error` decides what happens to them.
    refused: HashMap<PartitionKey, BTreeMap<i64, String>>,
    /// Set once a newer owner fenced the lane: it writes nothing more.
    fenced: Option<String>,
    /// The producer's `transaction.timeout.ms`.
    coordinator_timeout: Duration,
    /// Ends the retries of an open that keeps failing.
    stopping: Arc<AtomicBool>,
    /// A batch is being queued. actix may run one timer between a handler
    /// that asked to hold the actor and the hold itself, so the interval's
    /// end waits for the batch ([`Lane::due`]) instead of ending the
    /// transaction under it.
    writing: bool,
    /// The interval ran out while a batch was being queued.
    due: bool,
    /// The latest batch taken of each partition: what a panic fails, since
    /// the transaction that held it may have been lost with the panic.
    latest: HashMap<PartitionKey, (Arc<BatchAck>, i64)>,
}

impl Lane {
    /// A lane, not started yet: it opens (and fences) once started.
    pub fn new(parts: LaneParts) -> Self {
        Self {
            transactional_id: transactional_id(&parts.group_id, parts.lane),
            coordinator_timeout: coordinator_timeout(&parts.destination),
            parts,
            open: None,
            txn: None,
            next_txn: 0,
            poisoned: HashMap::new(),
            refused: HashMap::new(),
            fenced: None,
            stopping: Arc::new(AtomicBool::new(false)),
            writing: false,
            due: false,
            latest: HashMap::new(),
        }
    }

    /// Opens the producer and fences the lane's previous owner, retrying
    /// with backoff until it works or the lane stops; holds the actor
    /// meanwhile, so batches wait in the mailbox.
    fn open_producer(&mut self, ctx: &mut Context<Self>) {
        let cluster = self.parts.destination.clone();
        let id = self.transactional_id.clone();
        let queue_bytes =
            (LANES_QUEUE_BYTES / self.parts.lanes.max(1) as usize).max(LANE_QUEUE_MIN_BYTES);
        let (initial, max) = (
            self.parts.tuning.restart_backoff_initial,
            self.parts.tuning.restart_backoff_max,
        );
        let stopping = Arc::clone(&self.stopping);
        let flow = self.parts.flow.clone();
        let work = async move {
            let mut delay = initial;
            loop {
                match open(&cluster, &id, queue_bytes).await {
                    Ok(open) => return Some(open),
                    Err(error) => {
                        tracing::warn!(flow, transactional_id = %id, error = %error, retry_in = ?delay, "cannot open an exactly-once lane; retrying");
                    }
                }
                if stopping.load(Ordering::SeqCst) {
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(max);
            }
        };
        let opened = work.into_actor(self).map(|open, act, _| {
            if open.is_some() {
                tracing::debug!(flow = %act.parts.flow, transactional_id = %act.transactional_id, "exactly-once lane open");
            }
            act.open = open;
        });
        ctx.wait(guard(opened).map(|_, _, _| ()));
    }

    /// Why a batch cannot be written now, if it cannot.
    fn refusal(&self, msg: &WriteBatch, partition: &PartitionKey) -> Option<ReplicationError> {
        if let Some(reason) = &self.fenced {
            return Some(ReplicationError::Fenced {
                topic: msg.source_topic.to_string(),
                partition: msg.partition,
                reason: reason.clone(),
            });
        }
        let produce = |reason: &str| ReplicationError::Produce {
            topic: msg.source_topic.to_string(),
            partition: msg.partition,
            offset: msg.batch.first_offset().unwrap_or(-1),
            destination_topic: msg.topic.to_string(),
            reason: reason.to_string(),
        };
        if self
            .poisoned
            .get(partition)
            .is_some_and(|epoch| msg.ack.epoch() <= *epoch)
        {
            return Some(produce(
                "an earlier batch of the partition was in an aborted transaction; copying again from the last committed offset",
            ));
        }
        if self.open.is_none() {
            return Some(produce("the exactly-once lane is closed"));
        }
        None
    }

    /// Begins a transaction unless one is open; its interval starts now.
    fn begin(&mut self, ctx: &mut Context<Self>) -> Result<(), ReplicationError> {
        if self.txn.is_some() {
            return Ok(());
        }
        let Some(open) = &self.open else {
            return Err(self.transaction_error("the lane is closed".into()));
        };
        // A local call: no round trip.
        if let Err(e) = open.producer.begin_transaction() {
            let error = self.transaction_error(format!("begin_transaction: {e}"));
            // The producer is unusable: a new one fences this one.
            self.open = None;
            self.open_producer(ctx);
            return Err(error);
        }
        let id = self.next_txn;
        self.next_txn += 1;
        self.txn = Some(Transaction {
            id,
            records: 0,
            batches: Vec::new(),
            ends: BTreeMap::new(),
            behind: HashSet::new(),
            doomed: None,
            began: Instant::now(),
        });
        ctx.run_later(self.parts.tuning.transaction_interval, move |act, ctx| {
            if act.txn.as_ref().is_some_and(|t| t.id == id) {
                if act.writing {
                    act.due = true;
                } else {
                    guarded(act, ctx, |act, ctx| act.end(End::Interval, ctx));
                }
            }
        });
        Ok(())
    }

    /// Ends transaction `id` once the batches already in the mailbox were
    /// taken, if none of them came (it then still holds `batches`).
    ///
    /// Every partition in it is caught up, so waiting out the interval
    /// would only delay what read-committed consumers see. The timer runs
    /// after the mailbox's ready messages, so batches that arrived together
    /// (or during the previous commit, which held the lane) share a
    /// transaction: at a steady trickle the lane commits back to back,
    /// each commit taking what came during the one before. During a
    /// catch-up partitions are behind their head and the interval holds.
    fn end_when_quiet(&mut self, id: u64, batches: usize, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::ZERO, move |act, ctx| {
            let unchanged = act
                .txn
                .as_ref()
                .is_some_and(|t| t.id == id && t.batches.len() == batches);
            if unchanged && !act.writing {
                guarded(act, ctx, |act, ctx| act.end(End::CaughtUp, ctx));
            }
        });
    }

    fn transaction_error(&self, reason: String) -> ReplicationError {
        ReplicationError::Transaction {
            cluster: self.parts.destination.alias.clone(),
            reason: format!("lane `{}`: {reason}", self.transactional_id),
        }
    }

    /// Ends the open transaction, holding the actor until it has.
    fn end(&mut self, end: End, ctx: &mut Context<Self>) {
        if let Some(finishing) = self.finish(end) {
            ctx.wait(guard(finishing).map(|_, _, _| ()));
        }
    }

    /// The work of ending the open transaction (commit, or abort if it
    /// cannot commit), then settling its batches.
    fn finish(&mut self, end: End) -> Option<impl ActorFuture<Self, Output = ()>> {
        let txn = self.txn.take()?;
        self.due = false;
        let producer = self.open.as_ref().map(|o| Arc::clone(&o.producer));
        let entries: Vec<(String, Vec<u8>)> = txn
            .ends
            .iter()
            .map(|((topic, partition), next)| {
                let entry = StoredOffset {
                    flow: self.parts.flow.clone(),
                    source_cluster: self.parts.source_cluster.clone(),
                    next_offset: *next,
                };
                (
                    offset_store::key(&self.parts.group_id, topic, *partition),
                    entry.encode(),
                )
            })
            .collect();
        let doomed = txn.doomed.clone();
        let work = async move {
            let ending = Instant::now();
            let ended = match producer {
                Some(producer) => commit_or_abort(producer, entries, doomed).await,
                None => Ended::Fatal("the lane's producer is closed".into()),
            };
            (ended, ending.elapsed())
        };
        Some(
            work.into_actor(self)
                .map(move |(ended, took), act, ctx| act.settle(txn, end, ended, took, ctx)),
        )
    }

    /// Acknowledges or fails the batches of a transaction that ended `took`
    /// after it began to end.
    fn settle(
        &mut self,
        txn: Transaction,
        end: End,
        ended: Ended,
        took: Duration,
        ctx: &mut Context<Self>,
    ) {
        let failures = self
            .open
            .as_ref()
            .map(|o| o.producer.context().take_failures())
            .unwrap_or_default();
        let flow = self.parts.flow.clone();
        match ended {
            Ended::Committed => {
                for sent in &txn.batches {
                    sent.ack.delivered_all();
                }
                metrics::counter!(names::TRANSACTIONS_COMMITTED, labels::FLOW => flow.clone(), labels::REASON => end.label()).increment(1);
                metrics::histogram!(names::TRANSACTION_COMMIT_SECONDS, labels::FLOW => flow)
                    .record(took.as_secs_f64());
            }
            Ended::Aborted(reason) => {
                metrics::counter!(names::TRANSACTIONS_ABORTED, labels::FLOW => flow.clone())
                    .increment(1);
                tracing::warn!(flow, transactional_id = %self.transactional_id, partitions = txn.ends.len(), reason, "transaction aborted; its partitions copy again from their last committed offsets");
                let records_failed = !failures.is_empty();
                self.note_refusals(&txn, failures);
                self.fail_all(&txn, &format!("transaction aborted: {reason}"), false);
                if records_failed && !self.stopping.load(Ordering::SeqCst) {
                    // A record the broker refused still took its sequence
                    // number, and the abort does not always bump the
                    // producer's epoch: the partition's next record would be
                    // refused as out of order. A new producer starts afresh
                    // (and fences nothing but this lane's old one).
                    self.open = None;
                    self.open_producer(ctx);
                }
            }
            Ended::Fenced(reason)
                if txn.began.elapsed() >= self.coordinator_timeout
                    && !self.stopping.load(Ordering::SeqCst) =>
            {
                // The coordinator's own abort of a transaction that outlived
                // `transaction.timeout.ms`: the lane is still this
                // instance's (see `transactional::fenced_or_timed_out`).
                metrics::counter!(names::TRANSACTIONS_ABORTED, labels::FLOW => flow.clone())
                    .increment(1);
                let open_for = txn.began.elapsed().as_secs();
                let timeout = self.coordinator_timeout.as_secs();
                tracing::warn!(flow, transactional_id = %self.transactional_id, open_for_seconds = open_for, reason, "the destination aborted the lane's transaction, open longer than its transaction.timeout.ms ({timeout}s), which fenced the producer; its partitions copy again from their last committed offsets, through a new producer");
                self.fail_all(
                    &txn,
                    &format!("the destination aborted a transaction open for {open_for}s, longer than its transaction.timeout.ms ({timeout}s): {reason}"),
                    false,
                );
                self.open = None;
                // Not holding the lane meanwhile: a revocation (StopLane)
                // must get through and cancel the new producer.
                ctx.run_later(reopen_delay(&self.parts.destination), |act, ctx| {
                    if act.open.is_none()
                        && act.fenced.is_none()
                        && !act.stopping.load(Ordering::SeqCst)
                    {
                        act.open_producer(ctx);
                    }
                });
            }
            Ended::Fenced(reason) => {
                tracing::error!(flow, transactional_id = %self.transactional_id, reason, "exactly-once lane fenced: another instance owns it now; it writes nothing more");
                self.fail_all(&txn, &format!("fenced: {reason}"), true);
                self.fenced = Some(reason);
                self.open = None;
            }
            Ended::Fatal(reason) => {
                metrics::counter!(names::TRANSACTIONS_ABORTED, labels::FLOW => flow.clone())
                    .increment(1);
                tracing::error!(flow, transactional_id = %self.transactional_id, reason, "the lane's producer failed; opening a new one");
                self.fail_all(
                    &txn,
                    &format!("the lane's producer failed: {reason}"),
                    false,
                );
                self.open = None;
                if !self.stopping.load(Ordering::SeqCst) {
                    self.open_producer(ctx);
                }
            }
        }
    }

    /// Applies `on_error` to records the destination refused for good:
    /// `fail` stops their partition; `skip` and `dead_letter` note them for
    /// the next attempt.
    fn note_refusals(&mut self, txn: &Transaction, failures: Vec<Failed>) {
        let mut too_large: HashMap<usize, usize> = HashMap::new();
        for failed in failures {
            let Some(sent) = txn.batches.get(failed.batch) else {
                continue;
            };
            let permanent = destination::is_permanent(&failed.error);
            if failed.dead_letter {
                sent.ack.failed(
                    failed.offset,
                    format!("writing to the dead-letter topic failed: {}", failed.error),
                    permanent,
                );
                continue;
            }
            if !permanent {
                continue;
            }
            if destination::is_too_large(&failed.error) {
                *too_large.entry(failed.batch).or_default() += 1;
            }
            if self.parts.on_error == OnError::Fail {
                sent.ack
                    .failed(failed.offset, failed.error.to_string(), true);
            } else {
                self.refused
                    .entry(sent.partition.clone())
                    .or_default()
                    .insert(failed.offset, failed.error.to_string());
            }
        }
        for (batch, count) in too_large.into_iter().filter(|(_, n)| *n > 1) {
            if let Some(sent) = txn.batches.get(batch) {
                // A whole produce batch was refused: skipping or
                // dead-lettering its records would lose good ones.
                sent.ack.failed(
                    sent.first_offset,
                    format!("a produce batch of {count} records was refused as too large for the destination topic; set `batch.size` in [clusters.<destination>.kafka] below the topic's max.message.bytes"),
                    true,
                );
            }
        }
    }

    /// Fails every batch of `txn` and refuses the rest of their epochs.
    fn fail_all(&mut self, txn: &Transaction, reason: &str, permanent: bool) {
        for sent in &txn.batches {
            let epoch = self.poisoned.entry(sent.partition.clone()).or_default();
            *epoch = (*epoch).max(sent.ack.epoch());
            sent.ack
                .failed(sent.first_offset, reason.to_string(), permanent);
        }
    }
}

/// Creates a lane's producer and initialises its transactions, which fences
/// any older producer with the same id.
async fn open(
    cluster: &ClusterSpec,
    transactional_id: &str,
    queue_bytes: usize,
) -> Result<Open, ReplicationError> {
    let mut forced = transactional_settings(transactional_id).to_vec();
    forced.push(("allow.auto.create.topics", "false".into()));
    let config = client_config(
        cluster,
        &[
            (
                "queue.buffering.max.kbytes",
                (queue_bytes / 1024).to_string(),
            ),
            ("queue.buffering.max.messages", "200000".into()),
            // As the at-least-once producer: a lane's records leave while
            // its transaction is open, each partition's in requests of up
            // to `batch.size`. (Held until the commit, they made 8 lanes
            // on 1,000 partitions copy at a third of the speed: BENCHMARKS.md.)
            ("linger.ms", "5".into()),
            ("batch.size", "1000000".into()),
            ("batch.num.messages", "10000".into()),
            (
                "transaction.timeout.ms",
                DEFAULT_COORDINATOR_TIMEOUT.as_millis().to_string(),
            ),
            ("enable.metrics.push", "false".into()),
        ],
        &forced,
    );
    let context = LaneContext {
        cluster: cluster.alias.clone(),
        failures: Mutex::new(Vec::new()),
    };
    let alias = cluster.alias.clone();
    let producer: LaneProducer = blocking(move || config.create_with_context(context))
        .await?
        .map_err(|source| ReplicationError::ClientCreation {
            cluster: alias.clone(),
            source: Box::new(source),
        })?;
    let producer = Arc::new(producer);
    let served = serve_reports(&producer).map_err(|e| ReplicationError::Transaction {
        cluster: alias.clone(),
        reason: format!("starting the delivery-report thread: {e}"),
    })?;
    let open = Open {
        producer: Arc::clone(&producer),
        served: Some(served),
    };
    let id = transactional_id.to_string();
    blocking(move || producer.init_transactions(TRANSACTION_TIMEOUT))
        .await?
        .map_err(|e| ReplicationError::Transaction {
            cluster: alias,
            reason: format!("init_transactions for `{id}`: {e}"),
        })?;
    Ok(open)
}

/// Writes the offset-map entries and commits; aborts instead when the
/// transaction is `doomed` or cannot commit.
async fn commit_or_abort(
    producer: Arc<LaneProducer>,
    entries: Vec<(String, Vec<u8>)>,
    doomed: Option<String>,
) -> Ended {
    let reason = match doomed {
        Some(reason) => reason,
        None => match commit(&producer, &entries).await {
            Ok(ended) => return ended,
            Err(reason) => reason,
        },
    };
    let aborting = Arc::clone(&producer);
    match blocking(move || aborting.abort_transaction(TRANSACTION_TIMEOUT)).await {
        Ok(Ok(())) => Ended::Aborted(reason),
        Ok(Err(e)) if e.rdkafka_error_code().is_some_and(is_fencing) => {
            Ended::Fenced(e.to_string())
        }
        Ok(Err(e)) => Ended::Fatal(format!("{reason}; then abort failed: {e}")),
        Err(e) => Ended::Fatal(e.to_string()),
    }
}

/// Writes the offset-map entries and commits. `Err`: why it must abort.
#[allow(clippy::result_large_err)] // rdkafka's `send` returns the record in its error
async fn commit(
    producer: &Arc<LaneProducer>,
    entries: &[(String, Vec<u8>)],
) -> Result<Ended, String> {
    for (key, value) in entries {
        let entry: BaseRecord<'_, str, [u8], Box<Written>> = BaseRecord::with_opaque_to(
            OFFSETS_TOPIC,
            Box::new(Written {
                ack: None,
                batch: usize::MAX,
                offset: -1,
                dead_letter: false,
            }),
        )
        .key(key.as_str())
        .payload(value.as_slice());
        send_waiting_with(producer.client(), entry, |r| producer.send(r))
            .await
            .map_err(|(e, _)| format!("writing the offset map: {e}"))?;
    }
    let committing = Arc::clone(producer);
    let outcome = blocking(move || loop {
        match commit_transaction(&committing, TRANSACTION_TIMEOUT) {
            Ok(()) => return Ok(Ended::Committed),
            Err(e) if e.retriable => continue,
            Err(e) if is_fencing(e.code) => return Ok(Ended::Fenced(e.to_string())),
            Err(e) if e.requires_abort => return Err(e),
            Err(e) => return Ok(Ended::Fatal(e.to_string())),
        }
    })
    .await;
    match outcome {
        Ok(Ok(ended)) => Ok(ended),
        Ok(Err(e)) => Err(TxnError::to_string(&e)),
        Err(e) => Ok(Ended::Fatal(e.to_string())),
    }
}

/// What writing one batch needs, moved into its future.
struct BatchWrite {
    producer: Arc<LaneProducer>,
    /// The batch's place in the open transaction.
    index: usize,
    /// Earlier refusals of this partition's records, by source offset.
    refused: Option<BTreeMap<i64, String>>,
    on_error: OnError,
    flow: String,
    source_cluster: String,
}

impl BatchWrite {
    /// Queues the batch's records; `Some(reason)` when one was refused
    /// before it was queued (the transaction must then abort).
    async fn write(&self, msg: &WriteBatch) -> Option<String> {
        for record in msg.batch.iter() {
            let refusal = self.refused.as_ref().and_then(|r| r.get(&record.offset));
            let queued = match (refusal, &self.on_error) {
                (None, _) | (Some(_), OnError::Fail) => {
                    self.queue(msg, &record, &msg.topic, Some(msg.partition), None)
                        .await
                }
                (Some(reason), OnError::Skip) => {
                    tracing::warn!(flow = %self.flow, topic = %msg.source_topic, partition = msg.partition, offset = record.offset, error = %reason, "skipping a record the destination refuses (on_error = \"skip\")");
                    metrics::counter!(names::RECORDS_SKIPPED, labels::FLOW => self.flow.clone(), labels::TOPIC => msg.source_topic.to_string(), labels::REASON => "refused").increment(1);
                    msg.ack.record_sent();
                    Ok(())
                }
                (Some(reason), OnError::DeadLetter(topic)) => {
                    let origin = destination::dead_letter_origin(
                        &self.source_cluster,
                        &msg.source_topic,
                        msg.partition,
                        record.offset,
                        reason,
                    );
                    metrics::counter!(names::RECORDS_DEAD_LETTERED, labels::FLOW => self.flow.clone(), labels::TOPIC => msg.source_topic.to_string()).increment(1);
                    self.queue(msg, &record, topic, None, Some(&origin)).await
                }
            };
            if let Err(error) = queued {
                let reason = format!(
                    "{}[{}] offset {}: {error}",
                    msg.source_topic, msg.partition, record.offset
                );
                let dead_letter =
                    refusal.is_some() && matches!(self.on_error, OnError::DeadLetter(_));
                self.producer.context().failed(
                    &Written {
                        ack: Some(Arc::clone(&msg.ack)),
                        batch: self.index,
                        offset: record.offset,
                        dead_letter,
                    },
                    error,
                );
                return Some(reason);
            }
        }
        None
    }

    /// Queues a copy of `record` to `topic`, waiting while the producer's
    /// queue is full; with `origin`, a dead-letter write carrying it in
    /// headers after the record's own.
    #[allow(clippy::result_large_err)] // rdkafka's `send` returns the record in its error
    async fn queue(
        &self,
        msg: &WriteBatch,
        record: &RecordView<'_>,
        topic: &str,
        partition: Option<i32>,
        origin: Option<&[(&str, String)]>,
    ) -> Result<(), KafkaError> {
        let mut headers = owned_headers(record);
        for (k, v) in origin.unwrap_or_default() {
            headers = Some(headers.unwrap_or_default().insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            }));
        }
        let written = Box::new(Written {
            ack: Some(Arc::clone(&msg.ack)),
            batch: self.index,
            offset: record.offset,
            dead_letter: origin.is_some(),
        });
        let mut out: BaseRecord<'_, [u8], [u8], Box<Written>> =
            BaseRecord::with_opaque_to(topic, written);
        out.partition = partition;
        out.key = record.key;
        out.payload = record.value;
        out.timestamp = record.timestamp;
        out.headers = headers;
        send_waiting_with(self.producer.client(), out, |r| self.producer.send(r))
            .await
            .map_err(|(error, _)| error)
    }
}

impl Actor for Lane {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.parts.tuning.mailbox_capacity);
        self.open_producer(ctx);
    }
}

impl Recover for Lane {
    /// Fails the latest batch of every partition the lane wrote, with the
    /// rest of their epochs (the panic may have lost the transaction that
    /// held them, or the record of it), and starts afresh with a new
    /// producer, which fences the old one and aborts what it left open.
    fn recover(&mut self, message: String, ctx: &mut Context<Self>) {
        metrics::counter!(names::LANE_PANICS, labels::FLOW => self.parts.flow.clone()).increment(1);
        tracing::error!(flow = %self.parts.flow, transactional_id = %self.transactional_id, panic = %message, partitions = self.latest.len(), "exactly-once lane panicked; its partitions copy again from their last committed offsets, through a new producer");
        let reason = format!("the exactly-once lane panicked: {message}");
        for (partition, (ack, first_offset)) in self.latest.drain() {
            let epoch = self.poisoned.entry(partition).or_default();
            *epoch = (*epoch).max(ack.epoch());
            ack.failed(first_offset, reason.clone(), false);
        }
        self.txn = None;
        self.writing = false;
        self.due = false;
        self.open = None;
        if !self.stopping.load(Ordering::SeqCst) && self.fenced.is_none() {
            self.open_producer(ctx);
        }
    }
}

/// The answer to `msg` when writing it panicked (its copier was failed by
/// [`Lane::recover`] already).
fn panicked(msg: &WriteBatch) -> impl FnOnce() -> ReplicationError {
    let (source_topic, partition, topic) = (
        Arc::clone(&msg.source_topic),
        msg.partition,
        Arc::clone(&msg.topic),
    );
    let offset = msg.batch.first_offset().unwrap_or(-1);
    move || ReplicationError::Produce {
        topic: source_topic.to_string(),
        partition,
        offset,
        destination_topic: topic.to_string(),
        reason: "the exactly-once lane panicked while writing the batch".into(),
    }
}

impl Handler<WriteBatch> for Lane {
    type Result = AtomicResponse<Self, Result<(), ReplicationError>>;

    #[allow(clippy::result_large_err)] // the message's result, as the destination's
    fn handle(&mut self, msg: WriteBatch, ctx: &mut Context<Self>) -> Self::Result {
        let panicked = panicked(&msg);
        let answer = move |written: Option<Result<(), ReplicationError>>| {
            written.unwrap_or_else(|| Err(panicked()))
        };
        match guarded(self, ctx, |act, ctx| act.queue_batch(msg, ctx)) {
            Some(writing) => {
                AtomicResponse::new(Box::pin(guard(writing).map(move |w, _, _| answer(w))))
            }
            None => AtomicResponse::new(Box::pin(fut::ready(answer(None)))),
        }
    }
}

impl Lane {
    /// Queues `msg` in the open transaction (beginning one if needed), then
    /// ends the transaction if it is full, due or caught up.
    #[allow(clippy::result_large_err)] // the message's result, as the destination's
    fn queue_batch(
        &mut self,
        msg: WriteBatch,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<(), ReplicationError>> {
        let partition: PartitionKey = (Arc::clone(&msg.source_topic), msg.partition);
        let refusal = self
            .refusal(&msg, &partition)
            .map(Err)
            .or_else(|| self.begin(ctx).err().map(Err));
        if let Some(refused) = refusal {
            return Box::pin(fut::ready(refused));
        }
        let (Some(open), Some(txn)) = (&self.open, &self.txn) else {
            return Box::pin(fut::ready(Err(
                self.transaction_error("no transaction is open".into())
            )));
        };
        let txn_id = txn.id;
        if let Some(first_offset) = msg.batch.first_offset() {
            self.latest
                .insert(partition.clone(), (Arc::clone(&msg.ack), first_offset));
        }
        let write = BatchWrite {
            producer: Arc::clone(&open.producer),
            index: txn.batches.len(),
            refused: self.refused.get(&partition).cloned(),
            on_error: self.parts.on_error.clone(),
            flow: self.parts.flow.clone(),
            source_cluster: self.parts.source_cluster.clone(),
        };
        self.writing = true;
        let fault = self.parts.injected_panic.clone();
        let work = async move {
            if let Some(fault) = fault {
                fault.inject(&msg);
            }
            let doomed = write.write(&msg).await;
            (msg, doomed)
        };
        Box::pin(work.into_actor(self).map(move |(msg, doomed), act, ctx| {
            let max_records = act.parts.tuning.transaction_max_records.max(1);
            act.writing = false;
            let Some(txn) = act.txn.as_mut().filter(|t| t.id == txn_id) else {
                return Err(
                    act.transaction_error("the transaction ended while a batch was written".into())
                );
            };
            if let (Some(first_offset), Some(next)) =
                (msg.batch.first_offset(), msg.batch.next_offset())
            {
                txn.batches.push(Sent {
                    ack: Arc::clone(&msg.ack),
                    partition: partition.clone(),
                    first_offset,
                });
                if msg.at_head {
                    txn.behind.remove(&partition);
                } else {
                    txn.behind.insert(partition.clone());
                }
                txn.ends.insert(partition, next);
                txn.records += msg.batch.len();
            }
            let full = txn.records >= max_records;
            let caught_up = txn.behind.is_empty().then_some(txn.batches.len());
            let due = std::mem::take(&mut act.due);
            if doomed.is_some() {
                txn.doomed = doomed;
                act.end(End::Full, ctx);
            } else if full {
                act.end(End::Full, ctx);
            } else if due {
                act.end(End::Interval, ctx);
            } else if let Some(batches) = caught_up {
                act.end_when_quiet(txn_id, batches, ctx);
            }
            Ok(())
        }))
    }
}

/// Answered once the lane is open (its previous owner fenced), or with
/// why it is not.
#[derive(Message)]
#[rtype(result = "Result<(), ReplicationError>")]
pub struct LaneOpened;

impl Handler<LaneOpened> for Lane {
    type Result = Result<(), ReplicationError>;

    fn handle(&mut self, _: LaneOpened, _: &mut Context<Self>) -> Self::Result {
        if let Some(reason) = &self.fenced {
            return Err(self.transaction_error(format!("fenced: {reason}")));
        }
        match self.open {
            Some(_) => Ok(()),
            None => Err(self.transaction_error("not open".into())),
        }
    }
}

/// Commits the open transaction and closes the lane. Answered when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopLane;

impl Handler<StopLane> for Lane {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: StopLane, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping.store(true, Ordering::SeqCst);
        let finishing = guarded(self, ctx, |act, _| act.finish(End::Stopping)).flatten();
        let work = async {}.into_actor(self);
        let closed = move |_, act: &mut Self, ctx: &mut Context<Self>| {
            act.open = None;
            ctx.stop();
        };
        match finishing {
            Some(finishing) => {
                AtomicResponse::new(Box::pin(guard(finishing).map(|_, _, _| ()).map(closed)))
            }
            None => AtomicResponse::new(Box::pin(work.map(closed))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_partitions_go_round_the_lanes() {
        let lanes: Vec<u32> = (0..16).map(|p| lane_of("orders", p, 8)).collect();
        for window in lanes.windows(2) {
            assert_eq!(window[1], (window[0] + 1) % 8, "{lanes:?}");
        }
        let mut per_lane = [0; 8];
        for lane in lanes {
            per_lane[lane as usize] += 1;
        }
        assert_eq!(per_lane, [2; 8]);
    }

    #[test]
    fn the_lane_of_a_partition_never_changes() {
        // Changing these would move partitions between transactional ids,
        // which an instance upgraded in place must not do.
        assert_eq!(lane_of("orders", 0, 8), lane_of("orders", 8, 8));
        assert_eq!(
            [
                lane_of("orders", 0, 8),
                lane_of("payments", 0, 8),
                lane_of("", 0, 8)
            ],
            [
                fnv_start("orders", 8),
                fnv_start("payments", 8),
                fnv_start("", 8)
            ]
        );
        assert_eq!(lane_of("", 0, 8), (0xcbf2_9ce4_8422_2325u64 % 8) as u32);
    }

    /// FNV-1a of `topic`, modulo `lanes`, written out independently.
    fn fnv_start(topic: &str, lanes: u64) -> u32 {
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % lanes) as u32
    }

    #[test]
    fn one_lane_takes_every_partition() {
        assert!((0..100).all(|p| lane_of("t", p, 1) == 0));
        assert!((0..100).all(|p| lane_of("t", p, 0) == 0));
    }

    #[test]
    fn a_lanes_transactional_id_is_its_groups_with_its_number() {
        assert_eq!(transactional_id("strait.dr", 3), "strait.dr.lane-3");
    }
}
