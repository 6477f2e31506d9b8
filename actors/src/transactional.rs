//! The transactional writer of one source partition, for exactly-once flows.
//!
//! Each assigned partition gets its own transactional producer whose
//! `transactional.id` is derived from the consumer group, topic and partition.
//! Whichever instance the group assigns the partition to calls
//! `init_transactions` with that id, which fences any older owner still alive
//! (a zombie): its open transaction is aborted and its next call fails. A
//! transaction holds a run of copied records and the offset-map entry saying
//! how far they reach (see [`crate::offset_store`]); they commit together.
//!
//! Records leave one produce request's worth at a time: the writer queues at
//! most what one request carries ([`TransactionalWriter::fits`]), then
//! sends it and waits for the answer ([`TransactionalWriter::flush`]) or
//! commits. This is for librdkafka (2.12): an idempotent producer has at
//! most one request in flight per partition (it counts the records in flight
//! against the limit of five requests), and while records wait behind that
//! request, ready to go, its broker thread polls without sleeping. A commit
//! that had to send more than one request's worth kept the thread spinning
//! until the first request was answered: on 1,000 partitions, most of the
//! machine.
//!
//! Many partitions' producers share a [`FillBudget`]: each holds at most an
//! equal share of it unsent, so the records waiting in a flow's producers
//! stay bounded however many partitions it copies (on 1,000 partitions,
//! one request's worth each was 1 GB at worst).
//!
//! librdkafka's transaction calls block up to their timeout, so they run on
//! tokio's blocking pool, never on the arbiter (pitfall 12). The producers'
//! delivery reports are served by one shared thread
//! ([`crate::delivery_poller`]), not a thread per producer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Header;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::batch::{RecordView, HEADER_OVERHEAD};
use crate::client::{
    client_config, log_client_error, log_client_event, millis_property, session_timeout,
};
use crate::delivery_poller::{serve_reports, Served};
use crate::destination::{owned_headers, send_waiting_with};
use crate::error::ReplicationError;
use crate::offset_store::{StoredOffset, OFFSETS_TOPIC};
use crate::spec::ClusterSpec;

/// How long one transaction call may block.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the warm-up waits for the coordinator: past it, the copiers'
/// own `init_transactions` wait instead. Short, since a stopping Strait
/// waits for it to return (it blocks a thread of tokio's blocking pool).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer's `linger.ms`: records wait for a flush or the commit, which
/// sends them in one request (see the module comment). Were they to leave
/// earlier, the records written after them would wait behind that request.
/// A record is not visible before its commit, so waiting costs no latency.
/// Longer than any transaction (`transaction_interval` is at most 30 s), and
/// below `message.timeout.ms`, which librdkafka caps at
/// `transaction.timeout.ms` (60 s).
const LINGER: Duration = Duration::from_secs(30);

/// The `transaction.timeout.ms` Strait gives its transactional producers
/// unless the destination's `kafka` settings set one.
pub const DEFAULT_COORDINATOR_TIMEOUT: Duration = Duration::from_secs(60);

/// The `transaction.timeout.ms` of `cluster`'s transactional producers: the
/// destination's coordinator aborts a transaction open longer than this,
/// and fences the producer that held it.
pub fn coordinator_timeout(cluster: &ClusterSpec) -> Duration {
    millis_property(cluster, "transaction.timeout.ms").unwrap_or(DEFAULT_COORDINATOR_TIMEOUT)
}

/// librdkafka's defaults for `batch.size` and `message.max.bytes`: the most
/// bytes one produce request carries for one partition is the smaller.
const DEFAULT_REQUEST_BYTES: usize = 1_000_000;

/// librdkafka's default `batch.num.messages`: the most records one produce
/// request carries for one partition.
const DEFAULT_REQUEST_RECORDS: usize = 10_000;

/// Room in a request for what precedes the records: the request header with
/// the client and transactional ids, the topic name (at most 249 bytes) and
/// the record batch header (61 bytes).
const REQUEST_HEADER_BYTES: usize = 1024;

/// What one produce request can carry, or how much of it the records queued
/// since the last flush (or the transaction's start) take.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fill {
    pub(crate) bytes: usize,
    pub(crate) records: usize,
}

/// The bytes of records that a flow's transactional producers may hold
/// unsent, all together. Each open writer may fill an equal share (at least
/// `min_share`, and never more than one request carries): with few
/// partitions that is a whole request, so the budget costs nothing; with
/// many, requests are smaller and memory stays bounded.
#[derive(Debug)]
pub struct FillBudget {
    bytes: usize,
    min_share: usize,
    writers: AtomicUsize,
}

impl FillBudget {
    /// A flow's budget: 256 MiB. On 1,000 partitions that is 268 KB a
    /// partition, which copied as fast as 1 MB did (about 32k records/s of
    /// 1 KB) and took 485 MB instead of 636 MB at the peak.
    pub const DEFAULT_BYTES: usize = 256 << 20;
    /// The least a writer may fill, however many share the budget: below
    /// it, the requests' count costs the brokers more than the memory saves.
    pub const MIN_SHARE: usize = 64 << 10;

    /// A budget of `bytes`, shared down to `min_share` a writer.
    pub fn new(bytes: usize, min_share: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes,
            min_share,
            writers: AtomicUsize::new(0),
        })
    }

    /// What one writer may fill now.
    pub fn share(&self) -> usize {
        let writers = self.writers.load(Ordering::Relaxed).max(1);
        (self.bytes / writers).max(self.min_share)
    }
}

/// One open writer's place in its [`FillBudget`], given back when it closes.
struct Share(Arc<FillBudget>);

impl Share {
    fn take(budget: &Arc<FillBudget>) -> Self {
        budget.writers.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(budget))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Collects delivery failures (by source offset) of the open transaction.
pub struct TransactionContext {
    cluster: String,
    failures: Mutex<Vec<(i64, KafkaError)>>,
}

impl ClientContext for TransactionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_client_event(&self.cluster, level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&self.cluster, &error, reason);
    }
}

impl ProducerContext for TransactionContext {
    /// The source offset of the record (offsets are never negative).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, offset: usize) {
        if let Err((error, _)) = result {
            self.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((offset as i64, error.clone()));
        }
    }
}

/// What one produce request of `cluster`'s producers carries for one
/// partition: the smaller of `batch.size` and `message.max.bytes`, less the
/// request header, and `batch.num.messages` records.
pub(crate) fn request_capacity(cluster: &ClusterSpec, transactional_id: &str) -> Fill {
    let property = |key: &str, default: usize| {
        cluster
            .properties
            .get(key)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let client_id = cluster.properties.get("client.id").map_or(16, String::len);
    let bytes = property("batch.size", DEFAULT_REQUEST_BYTES)
        .min(property("message.max.bytes", DEFAULT_REQUEST_BYTES))
        .saturating_sub(REQUEST_HEADER_BYTES + client_id + transactional_id.len());
    Fill {
        bytes,
        records: property("batch.num.messages", DEFAULT_REQUEST_RECORDS).max(1),
    }
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub enum CommitError {
    /// Aborted; the records can be read and written again.
    Aborted {
        /// What went wrong.
        reason: String,
        /// Records the destination refused, by source offset.
        refused: Vec<(i64, KafkaError)>,
    },
    /// A newer owner of the partition took over the transactional id.
    Fenced(String),
    /// The producer can no longer be used.
    Fatal(String),
}

/// How long a flow waits before it opens a new producer after the
/// coordinator's timeout fenced the old one (see [`fenced_or_timed_out`]).
/// An instance that stalled that long may meanwhile have lost its
/// partitions to another (a process paused past the group's session
/// timeout): a new producer would fence their rightful new owner. By then
/// it knows: its group (`group_cluster`'s `session.timeout.ms`) has either
/// answered a heartbeat, so it is still a member and the owner, or gone
/// that long without, and librdkafka has revoked the assignment.
pub fn reopen_delay(group_cluster: &ClusterSpec) -> Duration {
    session_timeout(group_cluster) + Duration::from_secs(5)
}

/// What a fencing means. A newer owner's `init_transactions` fences this
/// instance's producer, and then the partition is no longer this
/// instance's: it stops. But the destination's coordinator also fences the
/// producer of a transaction it aborts for being open longer than
/// `transaction.timeout.ms` (after a destination outage, a producer that
/// delivered nothing for two minutes was). Then the partition is still this
/// instance's (unless it stalled long enough to lose it too: see
/// [`reopen_delay`]), and a new producer takes over. Only a transaction that
/// old can have been aborted that way, so a newer owner fencing a young one
/// is told apart.
pub fn fenced_or_timed_out(
    topic: &str,
    partition: i32,
    open_for: Duration,
    timeout: Duration,
    reason: String,
) -> ReplicationError {
    if open_for >= timeout {
        ReplicationError::TransactionTimedOut {
            topic: topic.to_string(),
            partition,
            open_for,
            timeout,
            reason,
        }
    } else {
        ReplicationError::Fenced {
            topic: topic.to_string(),
            partition,
            reason,
        }
    }
}

fn is_fenced(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_fencing)
}

pub(crate) fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// What a transactional producer with `transactional_id` needs, whatever
/// the user set.
pub(crate) fn transactional_settings(transactional_id: &str) -> [(&'static str, String); 3] {
    [
        ("transactional.id", transactional_id.to_string()),
        ("enable.idempotence", "true".into()),
        ("acks", "all".into()),
    ]
}

/// Brings the destination's transaction coordinator up before the copiers
/// need it. On a destination that never saw a transaction, the first
/// `FindCoordinator` creates `__transaction_state` and the first
/// `InitProducerId` waits for producer ids from the controller; librdkafka
/// retries both on timers, and an exactly-once flow's copiers, which open
/// their producers only once the group has assigned them partitions, waited
/// 0.6 s for that after the assignment (BENCHMARKS.md). Started with the
/// flow, it overlaps with topic creation and the group's join. Its
/// transactional id, `<group_id>.strait-warm-up`, never holds a transaction;
/// it shares the copiers' prefix, so ACLs that let them use `<group_id>.*`
/// cover it, and ends in no partition number, so it is no copier's.
pub async fn warm_up(cluster: &ClusterSpec, group_id: &str) -> Result<(), ReplicationError> {
    let transactional_id = format!("{group_id}.strait-warm-up");
    let config = client_config(
        cluster,
        &[("enable.metrics.push", "false".into())],
        &transactional_settings(&transactional_id),
    );
    let context = TransactionContext {
        cluster: cluster.alias.clone(),
        failures: Mutex::new(Vec::new()),
    };
    let alias = cluster.alias.clone();
    // Creating, initialising and dropping the producer all block.
    blocking(move || {
        let producer: TxProducer = config.create_with_context(context).map_err(|source| {
            ReplicationError::ClientCreation {
                cluster: alias.clone(),
                source: Box::new(source),
            }
        })?;
        producer
            .init_transactions(WARM_UP_TIMEOUT)
            .map_err(|e| ReplicationError::Transaction {
                cluster: alias,
                reason: format!("init_transactions for `{transactional_id}`: {e}"),
            })
    })
    .await?
}

/// A transactional producer without a polling thread of its own.
pub(crate) type TxProducer = BaseProducer<TransactionContext>;

/// One partition's transactional producer.
pub struct TransactionalWriter {
    producer: Arc<TxProducer>,
    /// Keeps the shared thread serving the producer's delivery reports;
    /// taken (and dropped before the producer) when the writer closes.
    served: Option<Served>,
    cluster: String,
    /// What one produce request carries.
    capacity: Fill,
    /// This writer's place in the flow's budget of unsent bytes.
    share: Share,
    /// What the open transaction has sent so far (an upper bound).
    filled: Mutex<Fill>,
    /// The producer's `transaction.timeout.ms`.
    coordinator_timeout: Duration,
}

impl TransactionalWriter {
    /// Creates the producer and fences any older owner of `transactional_id`.
    pub async fn open(
        cluster: &ClusterSpec,
        transactional_id: String,
        budget: &Arc<FillBudget>,
    ) -> Result<Self, ReplicationError> {
        // Creating a client starts its threads and takes milliseconds: off
        // the arbiter, where 1,000 copiers opening producers held everything
        // else up for seconds.
        let coordinator_timeout = coordinator_timeout(cluster);
        // librdkafka refuses a `linger.ms` that is not below
        // `message.timeout.ms`, which it caps at `transaction.timeout.ms`.
        let linger = LINGER.min(coordinator_timeout / 2);
        let config = client_config(
            cluster,
            &[
                ("queue.buffering.max.kbytes", "65536".into()),
                ("linger.ms", linger.as_millis().to_string()),
                (
                    "transaction.timeout.ms",
                    DEFAULT_COORDINATOR_TIMEOUT.as_millis().to_string(),
                ),
                // Client telemetry (KIP-714) keeps HDR histograms per broker
                // connection: about 190 KB of each producer's 420 KB, times
                // one producer per partition.
                ("enable.metrics.push", "false".into()),
            ],
            &transactional_settings(&transactional_id),
        );
        let capacity = request_capacity(cluster, &transactional_id);
        let context = TransactionContext {
            cluster: cluster.alias.clone(),
            failures: Mutex::new(Vec::new()),
        };
        let producer: TxProducer = blocking(move || config.create_with_context(context))
            .await?
            .map_err(|source| ReplicationError::ClientCreation {
                cluster: cluster.alias.clone(),
                source: Box::new(source),
            })?;
        let producer = Arc::new(producer);
        let served = serve_reports(&producer).map_err(|e| ReplicationError::Transaction {
            cluster: cluster.alias.clone(),
            reason: format!("starting the delivery-report thread: {e}"),
        })?;
        let init = Arc::clone(&producer);
        blocking(move || init.init_transactions(TRANSACTION_TIMEOUT))
            .await?
            .map_err(|e| ReplicationError::Transaction {
                cluster: cluster.alias.clone(),
                reason: format!("init_transactions for `{transactional_id}`: {e}"),
            })?;
        Ok(Self {
            producer,
            served: Some(served),
            cluster: cluster.alias.clone(),
            capacity,
            share: Share::take(budget),
            filled: Mutex::default(),
            coordinator_timeout,
        })
    }

    /// How long a transaction may stay open before the destination aborts
    /// it and fences this producer (its `transaction.timeout.ms`).
    pub fn coordinator_timeout(&self) -> Duration {
        self.coordinator_timeout
    }

    /// Whether `record` still goes out in the same produce request as what
    /// was queued since the transaction began or was last flushed, within
    /// the writer's share of the [`FillBudget`]. The first record always
    /// does, however large (librdkafka sends it alone).
    pub fn fits(&self, record: &RecordView<'_>) -> bool {
        let bytes = self.capacity.bytes.min(self.share.0.share());
        let filled = self.filled();
        filled.records == 0
            || (filled.bytes + record.wire_size() <= bytes
                && filled.records < self.capacity.records)
    }

    /// Sends what is queued and waits until the destination acknowledged it;
    /// the transaction stays open.
    pub async fn flush(&self) -> Result<(), ReplicationError> {
        let producer = Arc::clone(&self.producer);
        let flushed = blocking(move || flush(&producer, TRANSACTION_TIMEOUT)).await?;
        flushed.map_err(|e| ReplicationError::Transaction {
            cluster: self.cluster.clone(),
            reason: format!("flushing the open transaction: {e}"),
        })?;
        *self.filled() = Fill::default();
        Ok(())
    }

    fn filled(&self) -> std::sync::MutexGuard<'_, Fill> {
        self.filled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a transaction (a local call).
    pub fn begin(&self) -> Result<(), ReplicationError> {
        *self.filled() = Fill::default();
        self.producer
            .begin_transaction()
            .map_err(|e| ReplicationError::Transaction {
                cluster: self.cluster.clone(),
                reason: format!("begin_transaction: {e}"),
            })
    }

    /// Queues a copy of a source record, waiting while the producer's queue is
    /// full. `partition: None` lets the producer choose (dead-letter topics);
    /// `extra_headers` are appended after the record's own. The caller
    /// flushes first when the record no longer [fits](Self::fits).
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: &RecordView<'_>,
        extra_headers: &[(&str, String)],
    ) -> Result<(), KafkaError> {
        let mut headers = owned_headers(record);
        for (k, v) in extra_headers {
            headers = Some(headers.unwrap_or_default().insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            }));
        }
        let mut out: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, record.offset as usize);
        out.partition = partition;
        out.key = record.key;
        out.payload = record.value;
        out.timestamp = record.timestamp;
        out.headers = headers;
        let extra: usize = extra_headers
            .iter()
            .map(|(k, v)| HEADER_OVERHEAD + k.len() + v.len())
            .sum();
        {
            let mut filled = self.filled();
            filled.bytes += record.wire_size() + extra;
            filled.records += 1;
        }
        self.queue(out).await.map_err(|(error, _)| error)
    }

    /// Queues a record, waiting while the producer's queue is full.
    #[allow(clippy::result_large_err)] // rdkafka's `send` returns the record in its error
    async fn queue<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, usize>,
    ) -> Result<(), (KafkaError, BaseRecord<'a, K, P, usize>)>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        send_waiting_with(self.producer.client(), record, |r| self.producer.send(r)).await
    }

    /// Writes the offset-map entry and commits the transaction.
    pub async fn commit(&self, key: &str, stored: &StoredOffset) -> Result<(), CommitError> {
        let value = stored.encode();
        let entry: BaseRecord<'_, str, [u8], usize> = BaseRecord::with_opaque_to(OFFSETS_TOPIC, 0)
            .key(key)
            .payload(&value);
        if let Err((e, _)) = self.queue(entry).await {
            return Err(self.abort(format!("writing the offset map: {e}")).await);
        }
        let producer = Arc::clone(&self.producer);
        let outcome = blocking(move || loop {
            match commit_transaction(&producer, TRANSACTION_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) if e.retriable => continue,
                Err(e) if is_fencing(e.code) => return Err(CommitError::Fenced(e.to_string())),
                Err(e) if e.requires_abort => {
                    return Err(CommitError::Aborted {
                        reason: e.to_string(),
                        refused: Vec::new(),
                    })
                }
                Err(e) => return Err(CommitError::Fatal(e.to_string())),
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                self.take_failures();
                Ok(())
            }
            Ok(Err(CommitError::Aborted { reason, .. })) => Err(self.abort(reason).await),
            Ok(Err(other)) => Err(other),
            Err(e) => Err(CommitError::Fatal(e.to_string())),
        }
    }

    /// Aborts the open transaction.
    pub async fn abort(&self, reason: String) -> CommitError {
        let producer = Arc::clone(&self.producer);
        let aborted = blocking(move || producer.abort_transaction(TRANSACTION_TIMEOUT)).await;
        let refused = self.take_failures();
        match aborted {
            Ok(Ok(())) => CommitError::Aborted { reason, refused },
            Ok(Err(e)) if is_fenced(&e) => CommitError::Fenced(e.to_string()),
            Ok(Err(e)) => CommitError::Fatal(format!("{reason}; then abort failed: {e}")),
            Err(e) => CommitError::Fatal(e.to_string()),
        }
    }

    fn take_failures(&self) -> Vec<(i64, KafkaError)> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

impl Drop for TransactionalWriter {
    /// Closing a producer blocks: it flushes and joins librdkafka's
    /// threads. Done on the arbiter, 1,000 copiers stopping together closed
    /// 1,000 producers one after another, over a minute in which no timer
    /// of the arbiter (not even `shutdown_timeout`) could fire. On the
    /// blocking pool they close side by side.
    fn drop(&mut self) {
        let closing = Closing {
            _served: self.served.take(),
            producer: Arc::clone(&self.producer),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // outside a runtime the producer closes right here
        };
        drop(runtime.spawn_blocking(move || {
            // The last owner closes it: a transaction call still running on
            // the blocking pool holds a clone until it returns.
            while Arc::strong_count(&closing.producer) > 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(closing);
        }));
    }
}

/// A producer on its way out, and its registration with the shared
/// delivery-report thread.
struct Closing {
    // Held for their drops, which run in field order: the shared thread
    // must stop touching the producer's queue before the producer is
    // destroyed.
    _served: Option<Served>,
    producer: Arc<TxProducer>,
}

/// A failed transaction call, as librdkafka describes it.
#[derive(Debug)]
pub(crate) struct TxnError {
    pub(crate) code: RDKafkaErrorCode,
    message: String,
    pub(crate) retriable: bool,
    pub(crate) requires_abort: bool,
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

/// librdkafka's `rd_kafka_flush`: the records leave at once, and the call
/// returns when all are acknowledged (the shared thread serves the reports).
/// rdkafka's `flush` would poll in 100 ms rounds that never end early.
pub(crate) fn flush<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), RDKafkaErrorCode> {
    // SAFETY: the client pointer is valid while `producer` is borrowed.
    let code = unsafe { rdsys::rd_kafka_flush(producer.client().native_ptr(), millis(timeout)) };
    match RDKafkaErrorCode::from(code) {
        RDKafkaErrorCode::NoError => Ok(()),
        error => Err(error),
    }
}

/// A timeout as librdkafka takes it.
fn millis(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
}

/// `rd_kafka_commit_transaction`, called directly. rdkafka's
/// `commit_transaction` flushes first by polling in 100 ms rounds that never
/// end early, so every commit took at least 100 ms (most of an exactly-once
/// flow's latency, and the whole time a commit slot was held). librdkafka's
/// own commit waits for the queued records' delivery reports, which the
/// shared thread serves as they arrive.
pub(crate) fn commit_transaction<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), TxnError> {
    // SAFETY: the producer is alive for the call; the returned error (if
    // any) is ours, read and then destroyed once.
    unsafe {
        let error =
            rdsys::rd_kafka_commit_transaction(producer.client().native_ptr(), millis(timeout));
        if error.is_null() {
            return Ok(());
        }
        let message = rdsys::rd_kafka_error_string(error);
        let failed = TxnError {
            code: RDKafkaErrorCode::from(rdsys::rd_kafka_error_code(error)),
            message: if message.is_null() {
                "unknown error".to_string()
            } else {
                std::ffi::CStr::from_ptr(message)
                    .to_string_lossy()
                    .into_owned()
            },
            retriable: rdsys::rd_kafka_error_is_retriable(error) != 0,
            requires_abort: rdsys::rd_kafka_error_txn_requires_abort(error) != 0,
        };
        rdsys::rd_kafka_error_destroy(error);
        Err(failed)
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReplicationError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ReplicationError::ActorGone {
            actor: "transaction worker",
        })
}
