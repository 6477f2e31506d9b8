//! One thread that serves the delivery reports of every transactional
//! producer in the process, woken by librdkafka when a producer has some.
//!
//! An exactly-once flow has one producer per source partition. rdkafka's
//! `ThreadedProducer` gives each its own polling thread, and that thread
//! spins through the last millisecond of every 100 ms poll (rdkafka rounds
//! the remaining timeout down to whole milliseconds): 1% of a core per
//! producer, which on 1,000 partitions took more CPU than the copying.
//! Here librdkafka calls back when a producer's report queue goes from
//! empty to non-empty (`rd_kafka_queue_cb_event_enable`, as rdkafka's
//! `StreamConsumer` does), and this thread drains that one queue. Idle
//! producers cost nothing.
//!
//! The reports must be served promptly: librdkafka's `commit_transaction`
//! and `abort_transaction` wait until every record's report is served.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// How often every registered producer is polled even without a wake-up:
/// a safety net that costs one non-blocking poll per producer per second.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A producer whose delivery reports the thread can serve, whatever its
/// context (a partition's writer, a lane's).
pub trait Reported: Send + Sync {
    /// The librdkafka client.
    fn native(&self) -> *mut rdsys::rd_kafka_t;
    /// Serves at most one report event, without waiting.
    fn serve_one(&self);
}

impl<C: ProducerContext + 'static> Reported for BaseProducer<C> {
    fn native(&self) -> *mut rdsys::rd_kafka_t {
        self.client().native_ptr()
    }
    fn serve_one(&self) {
        self.poll(Duration::ZERO);
    }
}

/// A producer this thread serves.
struct Entry {
    producer: Weak<dyn Reported>,
    /// Our handle on the producer's main (report) queue; `None` once the
    /// producer stopped being served. Locked while the queue is drained.
    queue: Mutex<Option<QueueHandle>>,
    /// Set by the wake-up, cleared by the thread before it drains: at most
    /// one pending wake-up per producer.
    woken: AtomicBool,
    wake: Sender<Arc<Entry>>,
}

struct QueueHandle(*mut rdsys::rd_kafka_queue_t);

// SAFETY: the handle is only passed to librdkafka's queue functions, which
// are thread-safe, and destroyed once, under the entry's lock.
unsafe impl Send for QueueHandle {}

impl Entry {
    /// Called by librdkafka (on one of its threads, holding the queue's
    /// lock) when the queue goes from empty to non-empty. Must not block or
    /// touch the queue.
    fn wake(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            // The thread lives as long as the process.
            let _ = self.wake.send(Arc::clone(self));
        }
    }

    /// Serves the queue's reports until it is empty.
    fn drain(&self) {
        self.woken.store(false, Ordering::Release);
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // Upgraded only while the lock is held and the entry is open: once
        // `close` returns, this thread holds no reference to the producer,
        // so it is never the one left to destroy it.
        let Some(queue) = queue.as_ref() else {
            return;
        };
        let Some(producer) = self.producer.upgrade() else {
            return;
        };
        // SAFETY: the handle stays valid while the lock is held.
        while unsafe { rdsys::rd_kafka_queue_length(queue.0) } > 0 {
            producer.serve_one();
        }
    }

    /// Stops the wake-ups and releases the queue handle.
    fn close(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = queue.take() {
            // SAFETY: once `cb_event_enable(None)` returns no callback with
            // this entry runs or will run (librdkafka switches it under the
            // queue's lock, which callbacks hold); then the handle is ours
            // to destroy.
            unsafe {
                rdsys::rd_kafka_queue_cb_event_enable(handle.0, None, std::ptr::null_mut());
                rdsys::rd_kafka_queue_destroy(handle.0);
            }
        }
    }
}

/// A producer's registration: while it lives, the shared thread serves the
/// producer's delivery reports. Drop it before the producer.
pub struct Served {
    entry: Arc<Entry>,
    /// The pointer librdkafka passes back to [`wake_cb`] (boxed: a thin
    /// pointer to the entry's `Arc`, which the callback clones).
    #[allow(clippy::redundant_allocation)]
    _opaque: Box<Arc<Entry>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.entry.close();
    }
}

unsafe extern "C" fn wake_cb(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the boxed entry of a live `Served`, whose `Drop`
    // disables this callback before the box is freed.
    let entry = unsafe { &*(opaque as *const Arc<Entry>) };
    entry.wake();
}

/// The thread's inbox and the list it sweeps.
struct Poller {
    wake: Sender<Arc<Entry>>,
    registry: Arc<Mutex<Vec<Weak<Entry>>>>,
}

impl Poller {
    fn start() -> std::io::Result<Self> {
        let (wake, woken) = mpsc::channel();
        let registry = Arc::new(Mutex::new(Vec::new()));
        let swept = Arc::clone(&registry);
        std::thread::Builder::new()
            .name("strait-delivery-poller".into())
            .spawn(move || serve(woken, swept))?;
        Ok(Self { wake, registry })
    }

    fn register<P: Reported + 'static>(&self, producer: &Arc<P>) -> Served {
        // SAFETY: the producer is alive; the new handle is ours to destroy.
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(producer.native()) };
        let producer: Weak<dyn Reported> = Arc::downgrade(producer) as Weak<dyn Reported>;
        let entry = Arc::new(Entry {
            producer,
            queue: Mutex::new(Some(QueueHandle(queue))),
            woken: AtomicBool::new(false),
            wake: self.wake.clone(),
        });
        let opaque = Box::new(Arc::clone(&entry));
        // SAFETY: `opaque` outlives the callback (see `Served::drop`).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                queue,
                Some(wake_cb),
                &*opaque as *const Arc<Entry> as *mut c_void,
            );
        }
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&entry));
        // Reports queued before the callback was set would not wake us.
        entry.wake();
        Served {
            entry,
            _opaque: opaque,
        }
    }
}

/// The thread: drains each woken producer, and every producer once a second.
fn serve(woken: Receiver<Arc<Entry>>, registry: Arc<Mutex<Vec<Weak<Entry>>>>) {
    loop {
        match woken.recv_timeout(SWEEP_INTERVAL) {
            Ok(entry) => entry.drain(),
            Err(RecvTimeoutError::Timeout) => {
                let live: Vec<Arc<Entry>> = {
                    let mut all = registry.lock().unwrap_or_else(|e| e.into_inner());
                    all.retain(|e| e.strong_count() > 0);
                    all.iter().filter_map(Weak::upgrade).collect()
                };
                for entry in live {
                    entry.drain();
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Has the shared thread serve `producer`'s delivery reports until the
/// returned [`Served`] is dropped.
pub fn serve_reports<P: Reported + 'static>(producer: &Arc<P>) -> std::io::Result<Served> {
    static POLLER: OnceLock<Poller> = OnceLock::new();
    let poller = match POLLER.get() {
        Some(poller) => poller,
        None => {
            let started = Poller::start()?;
            POLLER.get_or_init(|| started)
        }
    };
    Ok(poller.register(producer))
}
