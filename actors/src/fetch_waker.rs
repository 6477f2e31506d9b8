//! Wakes the source consumer's fetchers after the reading thread resumes
//! partitions.
//!
//! librdkafka (2.12) notices a resumed partition on the next pass of the
//! thread of the broker that leads it, and a broker thread with nothing to
//! fetch (every partition it leads paused) sleeps up to a second between
//! passes: resuming does not wake it, a request to send does. An
//! exactly-once flow holds each new partition paused until its copier's
//! producer is ready, so at start every partition is paused, and the first
//! records waited 0.25–1 s after their copiers were ready; so did a flow
//! whose partitions were all paused for a slow destination. After a resume
//! the waker asks the resumed partitions' leaders for their latest offsets
//! (one small `ListOffsets` per broker, answered from memory): the request
//! wakes each broker thread, which then sees the partitions and fetches.
//! It runs on a thread of its own, so the reading thread never waits for
//! the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// Resumed partitions: (topic, partition).
type Partitions = Vec<(Arc<str>, i32)>;

/// How long one wake-up waits for its answer; it is not needed, only sent.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// The least time between two wake-ups: a flow whose partitions are paused
/// and resumed over and over (a slow destination) asks its brokers at most
/// 20 times a second; what is resumed meanwhile is woken with the next.
const MIN_SPACING: Duration = Duration::from_millis(50);

/// A handle to the waking thread; dropping it stops and joins the thread.
pub struct FetchWaker {
    sender: Option<mpsc::Sender<Partitions>>,
    thread: Option<JoinHandle<()>>,
    answered: Arc<AtomicU64>,
}

impl FetchWaker {
    /// Starts the thread that wakes `consumer`'s fetchers. If the thread
    /// cannot start, the waker does nothing: resumed partitions are then
    /// fetched on librdkafka's next pass, as without it.
    pub fn spawn<C: ConsumerContext + 'static>(consumer: Arc<BaseConsumer<C>>) -> Self {
        let (sender, received) = mpsc::channel::<Partitions>();
        let answered = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&answered);
        let thread = std::thread::Builder::new()
            .name("strait-fetch-waker".into())
            .spawn(move || serve(&consumer, &received, &counted));
        match thread {
            Ok(thread) => Self {
                sender: Some(sender),
                thread: Some(thread),
                answered,
            },
            Err(error) => {
                tracing::warn!(error = %error, "cannot start the fetch waker; resumed partitions may wait up to a second");
                Self {
                    sender: None,
                    thread: None,
                    answered,
                }
            }
        }
    }

    /// Wakes the fetchers of `partitions`, just resumed. Never blocks.
    pub fn wake(&self, partitions: Partitions) {
        if partitions.is_empty() {
            return;
        }
        if let Some(sender) = &self.sender {
            // Fails only once the thread is gone; the fetch then waits for
            // librdkafka's next pass.
            let _ = sender.send(partitions);
        }
    }

    /// How many wake-ups the brokers answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for FetchWaker {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves wake-ups until the sender is dropped; those that queued while one
/// was asked go out together.
fn serve<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    received: &mpsc::Receiver<Partitions>,
    answered: &AtomicU64,
) {
    while let Ok(first) = received.recv() {
        let began = Instant::now();
        let mut partitions = first;
        while let Ok(more) = received.try_recv() {
            partitions.extend(more);
        }
        partitions.sort_unstable();
        partitions.dedup();
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &partitions {
            // For `offsets_for_times` the offset is a timestamp; "end" asks
            // for the latest offset, which the broker has at hand. A partition
            // that cannot be added waits for librdkafka's next pass.
            let _ = tpl.add_partition_offset(topic, *partition, Offset::End);
        }
        // A partition revoked meanwhile, or a broker slow to answer, only
        // means that its fetch waits for librdkafka's next pass.
        match consumer.offsets_for_times(tpl, ANSWER_TIMEOUT) {
            Ok(_) => {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                tracing::debug!(error = %error, partitions = partitions.len(), "waking the fetchers of resumed partitions");
            }
        }
        std::thread::sleep(MIN_SPACING.saturating_sub(began.elapsed()));
    }
}
