//! The source's reading thread: it polls the group consumer's one queue and
//! hands each partition's records, in batches, to that partition's copier.
//!
//! One queue for all partitions lets librdkafka bound its read-ahead for the
//! whole consumer (`queued.max.messages.kbytes`) while fetching up to
//! `max.partition.fetch.bytes` per partition: with a queue split per
//! partition the bound is per partition, so a thousand partitions had to
//! choose between small fetches (slow: the brokers' work per request
//! dominates) and gigabytes of read-ahead (librdkafka #4137). Polling it on a
//! thread of its own, blocking, also means no record waits for a missed
//! wake-up (rust-rdkafka #665).
//!
//! Each copier has an [`Inbox`]: a channel of one batch. While a copier is
//! busy, the thread keeps filling that partition's next batch, up to the
//! flow's `batch_max_records`/`batch_max_bytes`. Once a partition's batch is
//! full and its copier has not taken the previous one, the thread waits for
//! that copier, and after [`PAUSE_PARTITION_AFTER`] *pauses* the partition
//! instead, so a stuck partition holds up only itself (a pause drops what
//! librdkafka read ahead for the partition, so a copier that is merely busy
//! is waited for, not paused). The bytes read but not yet in the
//! producer's queue are bounded for the whole flow by a [`BatchBudget`]:
//! over it, the thread stops polling, and librdkafka stops fetching once its
//! own read-ahead is full. If that lasts ([`PAUSE_AFTER`]), it polls again
//! (the group needs it) and pauses each partition a record arrives for,
//! until the budget has room again. In an exactly-once flow a newly
//! assigned partition is not read at all until its copier is ready
//! (`Routes::hold_new_partitions`).
//!
//! Rebalance callbacks run on this thread, inside `poll`: they add and remove
//! routes (see `crate::source`). Everything else that changes a route, such as
//! a copier rewinding to its last acknowledged offset, is a [`Command`]
//! applied between polls, so no record read before a rewind reaches the copier
//! after it.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;

use crate::batch::Batch;
use crate::fetch_waker::FetchWaker;
use crate::metrics::{self as names, labels};

/// How long the thread may hold off polling because the budget is full before
/// it polls again and pauses partitions instead. Short enough that rebalance
/// callbacks are served promptly; long enough that a busy destination is
/// absorbed by librdkafka's read-ahead, not by re-fetching paused partitions
/// (a pause drops what librdkafka had read ahead for the partition).
pub const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How long the thread waits for the copier of a partition whose batch is
/// full before it pauses that partition and reads the others on.
pub const PAUSE_PARTITION_AFTER: Duration = Duration::from_millis(200);

/// Records polled in one go before batches are handed over.
const DRAIN_MAX: usize = 10_000;

/// Longest blocking poll: commands wait at most this long.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Poll wait while some batch is waiting for its copier.
const BUSY_POLL: Duration = Duration::from_millis(1);

/// Poll wait while a new partition is held for its copier. The copier's
/// rewind that releases it is a command, applied between polls, and a
/// blocking poll does not return for it: at start-up, when an exactly-once
/// flow holds every partition, the first records waited up to
/// [`IDLE_POLL`] (90 ms in a debug log of w1 in lanes) after their copiers
/// were ready. A partition is held only until its copier is ready; even
/// copiers that cannot start for minutes (destination down) cost the thread
/// 100 short polls a second, nothing more.
const HOLD_POLL: Duration = Duration::from_millis(10);

/// Bytes of records a flow holds between its consumer's queue and its
/// producer's queue: in batches being filled, waiting in inboxes, or on their
/// way to the destination. Each copier sends one batch at a time, but a
/// thousand of them could otherwise each hold a full batch while the
/// destination works through them.
#[derive(Clone, Debug)]
pub struct BatchBudget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl BatchBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self {
            held: Arc::new(AtomicUsize::new(0)),
            limit: bytes.max(1),
        }
    }

    fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// True when at least the limit is held.
    pub fn is_full(&self) -> bool {
        self.held() >= self.limit
    }

    /// True when under half the limit is held: paused partitions go on.
    fn has_room(&self) -> bool {
        self.held() < self.limit / 2
    }

    /// Hands accounting for `bytes` already added to a guard.
    fn guard(&self, bytes: usize) -> Held {
        Held {
            bytes,
            held: Arc::clone(&self.held),
        }
    }
}

/// Bytes counted against a [`BatchBudget`], given back when dropped: a batch
/// carries it until its records are in the producer's queue.
#[derive(Debug)]
pub struct Held {
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Held {
    /// Moves up to `bytes` of this guard's count to a new guard.
    pub fn split(&mut self, bytes: usize) -> Held {
        let moved = bytes.min(self.bytes);
        self.bytes -= moved;
        Held {
            bytes: moved,
            held: Arc::clone(&self.held),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A batch handed to a copier.
#[derive(Debug)]
pub struct Parcel {
    /// Records of one partition, in offset order.
    pub batch: Batch,
    /// The batch's share of the budget.
    pub held: Held,
    /// When its first record was polled.
    pub read_at: Instant,
    /// Its last record was the partition's last as of librdkafka's latest
    /// fetch: nothing more is there to read for now. Only worked out in
    /// flows that ask for it ([`Routes::mark_batches_at_head`]).
    pub at_head: bool,
}

/// What changes a route, applied by the thread between polls.
#[derive(Debug)]
pub enum Command {
    /// Drop what was read for the partition and not yet handed over, hand
    /// from now on to `sender`, and read again from `offset` (if `None`,
    /// from the first record not taken by the copier).
    Rewind {
        /// Source topic.
        topic: Arc<str>,
        /// Partition.
        partition: i32,
        /// Where to read from; `None`: from the first record not taken.
        offset: Option<i64>,
        /// The copier's new inbox.
        sender: tokio::sync::mpsc::Sender<Parcel>,
    },
}

/// A copier's end of its partition's route.
#[derive(Debug)]
pub struct Inbox {
    topic: Arc<str>,
    partition: i32,
    receiver: tokio::sync::mpsc::Receiver<Parcel>,
    commands: mpsc::Sender<Command>,
}

impl Inbox {
    /// A channel of one batch: while the copier sends one batch, the next is
    /// filled, and a partition never holds more than that.
    fn channel() -> (
        tokio::sync::mpsc::Sender<Parcel>,
        tokio::sync::mpsc::Receiver<Parcel>,
    ) {
        tokio::sync::mpsc::channel(1)
    }

    /// The next batch; `None` once the route is gone.
    pub async fn recv(&mut self) -> Option<Parcel> {
        self.receiver.recv().await
    }

    /// No batch is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }

    /// Drops every batch not yet taken and has the partition read again from
    /// `offset` (if `None`, from the first record not taken yet).
    pub fn rewind(&mut self, offset: Option<i64>) {
        let (sender, receiver) = Self::channel();
        self.receiver = receiver;
        // A send fails only once the reading thread has stopped, and then
        // nothing will be read anyway.
        let _ = self.commands.send(Command::Rewind {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            offset,
            sender,
        });
    }

    /// A new inbox for a partition whose copier is replaced, read from
    /// `offset` (as [`Inbox::rewind`]).
    pub fn reopen(
        commands: mpsc::Sender<Command>,
        topic: Arc<str>,
        partition: i32,
        offset: Option<i64>,
    ) -> Self {
        let (_, receiver) = Self::channel();
        let mut inbox = Self {
            topic,
            partition,
            receiver,
            commands,
        };
        inbox.rewind(offset);
        inbox
    }

    /// Refuses further batches and gives back the room of those waiting: for
    /// a copier that gave up on its partition.
    pub fn close(&mut self) {
        self.receiver.close();
        while self.receiver.try_recv().is_ok() {}
    }
}

/// One assigned partition's route to its copier.
struct Route {
    topic: Arc<str>,
    /// The topic for librdkafka's C API.
    topic_c: CString,
    partition: i32,
    sender: tokio::sync::mpsc::Sender<Parcel>,
    /// The batch being filled, and when its first record was polled.
    open: Option<(Batch, Instant)>,
    /// Paused in the consumer by this thread.
    paused: bool,
    /// Since when the open batch is full and waits for the copier.
    full_since: Option<Instant>,
    /// The copier gave up on the partition: paused until a rewind.
    closed: bool,
    /// Newly assigned, its copier not ready yet: paused until a rewind.
    held: bool,
    /// Records before this offset are left over from before a rewind.
    skip_below: Option<i64>,
    /// The first offset handed to the current inbox: where a rewind that
    /// does not say where goes back to (the copier took nothing from it).
    first_handed: Option<i64>,
    /// Records and bytes of the last batch handed over: the next is sized
    /// like it, so a thousand mostly idle partitions do not each hold a
    /// buffer sized for a busy one.
    last_size: (usize, usize),
}

/// The routes of one consumer's assigned partitions. Lives in the consumer's
/// context, since rebalance callbacks change it; only the reading thread
/// touches it.
pub struct Routes {
    map: HashMap<Arc<str>, HashMap<i32, Route>>,
    /// Partitions whose batch waits to be handed over.
    open: HashSet<(Arc<str>, i32)>,
    budget: BatchBudget,
    max_records: usize,
    max_bytes: usize,
    commands: mpsc::Sender<Command>,
    /// New partitions wait, paused, until their copier rewinds them.
    hold_new: bool,
    /// How many routes are held now: the reading loop polls in short
    /// waits while any is (see [`HOLD_POLL`]).
    holding: usize,
    /// Parcels say whether they reach the partition's end.
    mark_head: bool,
    /// Partitions resumed since the reading loop last looked: their
    /// fetchers are woken (see [`crate::fetch_waker`]).
    resumed: Vec<(Arc<str>, i32)>,
}

impl Routes {
    /// No routes yet; batches of at most `max_records` records and
    /// `max_bytes` bytes; `commands` reach the reading thread.
    pub fn new(
        budget: BatchBudget,
        max_records: usize,
        max_bytes: usize,
        commands: mpsc::Sender<Command>,
    ) -> Self {
        Self {
            map: HashMap::new(),
            open: HashSet::new(),
            budget,
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            commands,
            hold_new: false,
            holding: 0,
            mark_head: false,
            resumed: Vec::new(),
        }
    }

    /// Newly assigned partitions are not read until their copier is ready
    /// and rewinds its inbox (see [`Inbox::rewind`]); [`Routes::pause_held`]
    /// pauses them once assigned. For copiers that take seconds to start
    /// (an exactly-once copier opens a transactional producer and reads the
    /// offset map first, and may then seek elsewhere): what was read for
    /// them meanwhile would fill the flow's [`BatchBudget`], and over the
    /// budget every partition gets paused after a record or two, so copiers
    /// then got batches (and committed transactions) of a single record.
    pub fn hold_new_partitions(&mut self) {
        self.hold_new = true;
    }

    /// Each parcel says whether its last record was the partition's last
    /// ([`Parcel::at_head`]), so that an exactly-once copier can end a
    /// transaction opened on an idle partition once it is caught up instead
    /// of holding it open for more records that are not there.
    pub fn mark_batches_at_head(&mut self) {
        self.mark_head = true;
    }

    /// A route for a newly assigned partition, and the copier's inbox.
    pub fn add(&mut self, topic: &str, partition: i32) -> Inbox {
        let topic: Arc<str> = match self.map.get_key_value(topic) {
            Some((t, _)) => Arc::clone(t),
            None => Arc::from(topic),
        };
        let (sender, receiver) = Inbox::channel();
        let replaced = self.map.entry(Arc::clone(&topic)).or_default().insert(
            partition,
            Route {
                topic: Arc::clone(&topic),
                // A topic name never holds a NUL (Kafka allows [a-zA-Z0-9._-]).
                topic_c: CString::new(topic.as_bytes()).unwrap_or_default(),
                partition,
                sender,
                open: None,
                paused: false,
                full_since: None,
                closed: false,
                held: self.hold_new,
                skip_below: None,
                first_handed: None,
                last_size: (16, 16 * 1024),
            },
        );
        if let Some(old) = replaced {
            self.forget_hold(&old);
        }
        if self.hold_new {
            self.holding += 1;
        }
        Inbox {
            topic,
            partition,
            receiver,
            commands: self.commands.clone(),
        }
    }

    /// Pauses the held partitions that are not paused yet: called once they
    /// are assigned (librdkafka keeps the pause until they are resumed).
    pub fn pause_held<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut tpl = TopicPartitionList::new();
        for (partition, route) in self.map.values_mut().flat_map(HashMap::iter_mut) {
            if route.held && !route.paused {
                route.paused = true;
                tpl.add_partition(&route.topic, *partition);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(error) = consumer.pause(&tpl) {
            tracing::warn!(partitions = tpl.count(), error = %error, "could not pause newly assigned partitions until their copiers are ready");
        }
    }

    /// Some new partition is held until its copier is ready.
    fn holds_any(&self) -> bool {
        self.holding > 0
    }

    /// Takes a route that goes away out of the count of held ones.
    fn forget_hold(&mut self, route: &Route) {
        if route.held {
            self.holding -= 1;
        }
    }

    /// Forgets a revoked partition; what was read for it and not handed over
    /// is dropped (it is read again by whoever gets the partition).
    pub fn remove<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) {
        let Some(partitions) = self.map.get_mut(topic) else {
            return;
        };
        let Some(mut route) = partitions.remove(&partition) else {
            return;
        };
        if partitions.is_empty() {
            self.map.remove(topic);
        }
        self.forget_hold(&route);
        if let Some((batch, _)) = route.open.take() {
            self.budget.release(batch.bytes());
        }
        // librdkafka keeps a partition paused across assignments.
        if route.paused {
            pause_or_resume(consumer, topic, partition, false);
        }
    }

    /// Copies a polled record into its partition's batch; with `pause` (the
    /// budget has been full for a while), pauses the partition. True when
    /// the batch is now full and waits for its copier: the caller stops
    /// polling until it is taken (or the partition is paused).
    fn take<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        message: &BorrowedMessage<'_>,
        pause: bool,
    ) -> bool {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let Some(route) = self.map.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            // Revoked between the poll and now: whoever owns it reads it.
            return false;
        };
        if route.closed || route.skip_below.is_some_and(|first| offset < first) {
            return false;
        }
        let (max_records, max_bytes) = (self.max_records, self.max_bytes);
        let opened = route.open.is_none();
        let (batch, _) = route.open.get_or_insert_with(|| {
            let (records, bytes) = route.last_size;
            (
                Batch::with_capacity(records.min(max_records), bytes.min(max_bytes)),
                Instant::now(),
            )
        });
        let before = batch.bytes();
        batch.push(message);
        self.budget.add(batch.bytes() - before);
        let full = batch.len() >= max_records || batch.bytes() >= max_bytes;
        if opened {
            self.open.insert((Arc::clone(&route.topic), partition));
        }
        if full {
            Self::hand_over(route, &self.budget, self.mark_head.then_some(consumer));
        }
        if pause && !route.paused {
            route.paused = true;
            pause_or_resume(consumer, topic, partition, true);
        }
        let blocked = full && route.open.is_some() && !route.paused;
        if blocked {
            route.full_since.get_or_insert_with(Instant::now);
        }
        blocked
    }

    /// Hands every waiting batch whose copier has room to it, pauses
    /// partitions whose full batch waited too long, and resumes paused
    /// partitions that have nothing waiting (if the budget has room).
    fn flush<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Flushed {
        let budget = &self.budget;
        let head = self.mark_head.then_some(consumer);
        let room = budget.has_room();
        let map = &mut self.map;
        let resumed = &mut self.resumed;
        let mut blocked = false;
        self.open.retain(|(topic, partition)| {
            let Some(route) = map.get_mut(topic).and_then(|p| p.get_mut(partition)) else {
                return false;
            };
            Self::hand_over(route, budget, head);
            if route.closed {
                if !route.paused {
                    route.paused = true;
                    pause_or_resume(consumer, topic, *partition, true);
                }
                return false;
            }
            if route.paused && !route.held && route.open.is_none() && room {
                route.paused = false;
                pause_or_resume(consumer, topic, *partition, false);
                resumed.push((Arc::clone(topic), *partition));
            }
            if let Some(since) = route.full_since.filter(|_| !route.paused) {
                if since.elapsed() >= PAUSE_PARTITION_AFTER {
                    route.paused = true;
                    pause_or_resume(consumer, topic, *partition, true);
                } else {
                    blocked = true;
                }
            }
            route.open.is_some() || route.paused
        });
        Flushed {
            waiting: !self.open.is_empty(),
            blocked,
        }
    }

    /// Gives the route's batch to its copier if the inbox has room; with
    /// `head`, says whether the batch reaches the partition's end.
    fn hand_over<C: ConsumerContext>(
        route: &mut Route,
        budget: &BatchBudget,
        head: Option<&BaseConsumer<C>>,
    ) {
        let Some((batch, read_at)) = route.open.take() else {
            return;
        };
        match route.sender.try_reserve() {
            Ok(slot) => {
                route.full_since = None;
                route.last_size = (batch.len(), batch.bytes());
                route.first_handed = route.first_handed.or(batch.first_offset());
                let at_head = head.is_some_and(|consumer| reaches_end(consumer, route, &batch));
                let held = budget.guard(batch.bytes());
                slot.send(Parcel {
                    batch,
                    held,
                    read_at,
                    at_head,
                });
            }
            Err(TrySendError::Full(())) => route.open = Some((batch, read_at)),
            // The copier gave up on the partition, or is being replaced
            // (which rewinds the route): nothing to keep.
            Err(TrySendError::Closed(())) => {
                route.full_since = None;
                route.closed = true;
                budget.release(batch.bytes());
            }
        }
    }

    fn apply<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, command: Command) {
        match command {
            Command::Rewind {
                topic,
                partition,
                offset,
                sender,
            } => {
                let Some(route) = self.map.get_mut(&topic).and_then(|p| p.get_mut(&partition))
                else {
                    return;
                };
                route.sender = sender;
                route.full_since = None;
                route.closed = false;
                if std::mem::take(&mut route.held) {
                    self.holding -= 1;
                }
                let open = route.open.take();
                let offset = offset
                    .or(route.first_handed)
                    .or(open.as_ref().and_then(|(batch, _)| batch.first_offset()));
                route.first_handed = None;
                if let Some((batch, _)) = open {
                    self.budget.release(batch.bytes());
                }
                if route.paused {
                    route.paused = false;
                    pause_or_resume(consumer, &topic, partition, false);
                    self.resumed.push((Arc::clone(&topic), partition));
                }
                if let Some(offset) = offset {
                    route.skip_below = Some(offset);
                    if let Err(error) =
                        consumer.seek(&topic, partition, Offset::Offset(offset), Duration::ZERO)
                    {
                        tracing::warn!(topic = %topic, partition, offset, error = %error, "could not seek back to the last acknowledged offset");
                    }
                }
            }
        }
    }
}

/// True when `batch` ends at the partition's high watermark as of
/// librdkafka's latest fetch response for it: a cached value, no request.
/// Unknown (no fetch answered yet) counts as not at the end. A source topic
/// written transactionally never looks caught up this way, since its last
/// offset is a transaction marker, not a record: its transactions just run
/// their full interval.
fn reaches_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    route: &Route,
    batch: &Batch,
) -> bool {
    let Some(next) = batch.next_offset() else {
        return false;
    };
    cached_high_watermark(consumer, &route.topic_c, route.partition)
        .is_some_and(|high| next >= high)
}

/// librdkafka's last known high watermark of a partition, updated by each
/// fetch response (`rd_kafka_get_watermark_offsets`; rust-rdkafka only wraps
/// the variant that asks the broker).
fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &CStr,
    partition: i32,
) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; the topic is a
    // NUL-terminated string; librdkafka only writes the two offsets.
    let error = unsafe {
        rdsys::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// What [`Routes::flush`] left.
struct Flushed {
    /// Some batch still waits for its copier.
    waiting: bool,
    /// Some partition's full batch waits, not for long yet: poll no more
    /// until it is taken or the partition is paused.
    blocked: bool,
}

fn pause_or_resume<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    pause: bool,
) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => tracing::debug!(
            topic,
            partition,
            pause,
            "source partition paused or resumed"
        ),
        Err(error) => {
            tracing::warn!(topic, partition, pause, error = %error, "could not pause or resume a source partition")
        }
    }
}

/// What the reading thread needs of the consumer's context.
pub trait Routed: ConsumerContext {
    /// The routes of the assigned partitions.
    fn routes(&self) -> &std::sync::Mutex<Routes>;
    /// The cluster's alias, for logs.
    fn cluster(&self) -> &str;
    /// The flow's name, for metrics.
    fn flow(&self) -> &str;
}

fn lock<C: Routed>(consumer: &BaseConsumer<C>) -> std::sync::MutexGuard<'_, Routes> {
    consumer
        .context()
        .routes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The reading loop; returns once `stop` is set.
pub fn run<C: Routed + 'static>(
    consumer: &Arc<BaseConsumer<C>>,
    commands: &mpsc::Receiver<Command>,
    budget: &BatchBudget,
    stop: &AtomicBool,
) {
    let waker = FetchWaker::spawn(Arc::clone(consumer));
    let consumer: &BaseConsumer<C> = consumer;
    let mut errors = ErrorLog::default();
    let mut full_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let (flushed, resumed, holding) = {
            let mut routes = lock(consumer);
            while let Ok(command) = commands.try_recv() {
                routes.apply(consumer, command);
            }
            let flushed = routes.flush(consumer);
            (
                flushed,
                std::mem::take(&mut routes.resumed),
                routes.holds_any(),
            )
        };
        waker.wake(resumed);
        if flushed.blocked {
            nap();
            continue;
        }
        // While the budget is full, polling would only move records from
        // librdkafka's bounded read-ahead into Strait's: wait, for a while.
        let pause = match (budget.is_full(), full_since) {
            (false, _) => {
                full_since = None;
                false
            }
            (true, None) => {
                full_since = Some(Instant::now());
                nap();
                continue;
            }
            (true, Some(since)) if since.elapsed() < PAUSE_AFTER => {
                nap();
                continue;
            }
            (true, Some(_)) => true,
        };
        let timeout = if flushed.waiting {
            BUSY_POLL
        } else if holding {
            HOLD_POLL
        } else {
            IDLE_POLL
        };
        let mut next = consumer.poll(timeout);
        let mut taken = 0usize;
        // The routes are locked per record, never across `poll`: rebalance
        // callbacks run inside it and lock them too.
        while let Some(result) = next {
            match result {
                Ok(message) => {
                    let blocked = lock(consumer).take(consumer, &message, pause);
                    taken += 1;
                    if blocked {
                        break;
                    }
                }
                Err(error) => errors.note(consumer.context().as_ref(), &error),
            }
            if taken >= DRAIN_MAX || (!pause && budget.is_full()) {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
    }
}

fn nap() {
    std::thread::sleep(BUSY_POLL);
}

/// Logs consumer errors, each when it changes and again at most every half
/// minute (the same error repeats many times a second while a cluster is
/// down), and counts them all.
#[derive(Default)]
struct ErrorLog {
    last: Option<(String, Instant)>,
}

impl ErrorLog {
    fn note<C: Routed>(&mut self, context: &C, error: &rdkafka::error::KafkaError) {
        metrics::counter!(names::CONSUME_ERRORS,
            labels::FLOW => context.flow().to_string(), labels::TOPIC => "",
            labels::KIND => names::error_kind(error))
        .increment(1);
        let text = error.to_string();
        let repeat = self
            .last
            .as_ref()
            .is_some_and(|(last, at)| *last == text && at.elapsed() < Duration::from_secs(30));
        if !repeat {
            tracing::warn!(cluster = %context.cluster(), error = %error, "source consumer error; librdkafka keeps retrying");
            self.last = Some((text, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_gives_its_bytes_back_when_dropped_and_can_be_split() {
        let budget = BatchBudget::new(100);
        budget.add(60);
        let mut held = budget.guard(60);
        assert!(!budget.is_full() && !budget.has_room());
        budget.add(40);
        let other = budget.guard(40);
        assert!(budget.is_full(), "100 of 100 bytes held");
        drop(other);
        let part = held.split(20);
        drop(held);
        assert_eq!(budget.held(), 20, "the split-off part is still held");
        assert!(budget.has_room());
        drop(part);
        assert_eq!(budget.held(), 0);
    }

    /// A consumer that is never assigned anything: pausing and resuming
    /// partitions on it changes no broker state, and nothing connects.
    fn unassigned_consumer() -> BaseConsumer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "dispatcher-unit-test")
            .create()
            .expect("creating a consumer connects to nothing")
    }

    fn routes(hold_new: bool) -> (Routes, mpsc::Receiver<Command>) {
        let (commands, received) = mpsc::channel();
        let mut routes = Routes::new(BatchBudget::new(1 << 20), 100, 1 << 20, commands);
        if hold_new {
            routes.hold_new_partitions();
        }
        (routes, received)
    }

    fn route<'a>(routes: &'a Routes, topic: &str, partition: i32) -> &'a Route {
        &routes.map[topic][&partition]
    }

    #[test]
    fn a_held_partition_stays_paused_until_its_copier_rewinds_it() {
        let consumer = unassigned_consumer();
        let (mut routes, received) = routes(true);
        let mut inbox = routes.add("t", 0);
        routes.pause_held(&consumer);
        assert!(route(&routes, "t", 0).paused, "paused once assigned");
        // As if a record had come in before the pause: flush visits the
        // partition, and with the budget's room it would resume a partition
        // paused for the budget.
        routes.open.insert((Arc::from("t"), 0));
        routes.flush(&consumer);
        assert!(
            route(&routes, "t", 0).paused,
            "still paused: the copier is not ready"
        );
        assert!(
            routes.resumed.is_empty(),
            "nothing resumed, nothing to wake"
        );

        inbox.rewind(Some(7));
        let command = received
            .try_recv()
            .expect("the rewind reaches the reading thread");
        routes.apply(&consumer, command);
        let released = route(&routes, "t", 0);
        assert!(!released.held && !released.paused, "read from now on");
        assert_eq!(released.skip_below, Some(7));
        assert_eq!(
            routes.resumed,
            vec![(Arc::from("t"), 0)],
            "the reading loop wakes the fetcher of the resumed partition"
        );
    }

    #[test]
    fn a_partition_counts_as_held_until_its_copier_releases_it_or_it_is_revoked_or_replaced() {
        let consumer = unassigned_consumer();
        let (mut routes, received) = routes(true);
        assert!(!routes.holds_any(), "nothing assigned, nothing held");
        let mut first = routes.add("t", 0);
        let _second = routes.add("t", 1);
        let _third = routes.add("u", 0);
        assert!(routes.holds_any());

        first.rewind(None);
        let command = received.try_recv().expect("the rewind is sent");
        routes.apply(&consumer, command);
        routes.remove(&consumer, "t", 1);
        assert!(routes.holds_any(), "u[0] still waits for its copier");
        // Assigned again before its copier came: still one route, held once.
        let _again = routes.add("u", 0);
        routes.remove(&consumer, "u", 0);
        assert!(
            !routes.holds_any(),
            "released, revoked or replaced: none is held any more"
        );

        let (mut unheld, _received) = self::routes(false);
        let _inbox = unheld.add("t", 0);
        assert!(
            !unheld.holds_any(),
            "a flow that does not hold never waits for a rewind"
        );
    }

    #[test]
    fn without_holding_new_partitions_are_read_at_once() {
        let consumer = unassigned_consumer();
        let (mut routes, _received) = routes(false);
        let _inbox = routes.add("t", 0);
        routes.pause_held(&consumer);
        let route = route(&routes, "t", 0);
        assert!(!route.held && !route.paused);
    }
}
