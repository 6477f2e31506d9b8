//! The source's reading thread on librdkafka's mock cluster: one consumer
//! queue handed out to per-partition inboxes. (Against real Kafka it is
//! exercised by every test of the root crate.)
//!
//! - a partition whose copier takes nothing is held (paused) at a batch or
//!   two, while the others flow, and it loses nothing once taken again;
//! - a full budget holds every partition, and nothing is lost once the
//!   copiers take again;
//! - a rewind drops what was waiting and reads again from the offset given.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};
use strait_actors::dispatcher::{self, BatchBudget, Inbox, Routed, Routes};

const TOPIC: &str = "events";
const RECORDS: i64 = 3_000;
const VALUE: [u8; 100] = [7u8; 100];
const BATCH_RECORDS: usize = 100;

struct TestContext {
    routes: Mutex<Routes>,
}

impl ClientContext for TestContext {}
impl ConsumerContext for TestContext {}

impl Routed for TestContext {
    fn routes(&self) -> &Mutex<Routes> {
        &self.routes
    }
    fn cluster(&self) -> &str {
        "mock"
    }
    fn flow(&self) -> &str {
        "mock"
    }
}

/// A mock cluster whose topic has `partitions` partitions of [`RECORDS`] each.
fn loaded_cluster(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, partitions, 1).expect("topic");
    for p in 0..partitions {
        produce(&mock, p, RECORDS);
    }
    mock
}

fn produce(mock: &MockCluster<'static, DefaultProducerContext>, partition: i32, records: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .expect("producer");
    for n in 0..records {
        let key = n.to_string();
        let record = BaseRecord::to(TOPIC)
            .partition(partition)
            .key(&key)
            .payload(&VALUE[..]);
        producer.send(record).expect("queued");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// The reading thread over every partition, with an inbox per partition.
struct Reading {
    consumer: Arc<BaseConsumer<TestContext>>,
    inboxes: Vec<Inbox>,
    budget: BatchBudget,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reading {
    fn start(bootstrap: &str, partitions: i32, budget_bytes: usize) -> Self {
        let budget = BatchBudget::new(budget_bytes);
        let (commands, received) = mpsc::channel();
        let mut routes = Routes::new(budget.clone(), BATCH_RECORDS, 1 << 20, commands);
        let inboxes = (0..partitions).map(|p| routes.add(TOPIC, p)).collect();
        let consumer: BaseConsumer<TestContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "dispatcher-test")
            .set("enable.auto.commit", "false")
            .set("queued.max.messages.kbytes", "256")
            .create_with_context(TestContext {
                routes: Mutex::new(routes),
            })
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assigned");
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (consumer, budget, stop) =
                (Arc::clone(&consumer), budget.clone(), Arc::clone(&stop));
            std::thread::spawn(move || dispatcher::run(&consumer, &received, &budget, &stop))
        };
        Self {
            consumer,
            inboxes,
            budget,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = &self.consumer;
    }
}

/// Takes batches from `inbox` until `count` records came (or 30 s passed);
/// returns their offsets in the order they came.
async fn take(inbox: &mut Inbox, count: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, inbox.recv()).await {
            Ok(Some(parcel)) => {
                assert!(
                    parcel.batch.len() <= BATCH_RECORDS,
                    "a batch over batch_max_records"
                );
                offsets.extend(parcel.batch.iter().map(|r| r.offset));
            }
            Ok(None) => panic!("the route closed after {} records", offsets.len()),
            Err(_) => panic!("only {} of {count} records came within 30 s", offsets.len()),
        }
    }
    offsets
}

fn in_order_from(offsets: &[i64], first: i64) {
    let expected: Vec<i64> = (first..first + offsets.len() as i64).collect();
    assert_eq!(
        offsets,
        expected.as_slice(),
        "records missing, repeated or out of order"
    );
}

#[tokio::test]
async fn a_partition_nobody_takes_is_held_at_two_batches_while_the_other_flows_and_loses_nothing() {
    let mock = loaded_cluster(2);
    let mut reading = Reading::start(&mock.bootstrap_servers(), 2, 64 << 20);
    let mut idle = reading.inboxes.pop().expect("inbox 1");
    let mut busy = reading.inboxes.pop().expect("inbox 0");

    let offsets = take(&mut busy, RECORDS as usize).await;
    in_order_from(&offsets, 0);
    // Partition 1 is read too, but its copier takes nothing: one batch in
    // its inbox, one full batch waiting, then the partition is paused.
    let two_batches = 2 * BATCH_RECORDS * (VALUE.len() + 4);
    let mut most = 0;
    let watch = Instant::now();
    while watch.elapsed() < dispatcher::PAUSE_PARTITION_AFTER * 5 {
        most = most.max(reading.budget.held());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        most > 0 && most <= two_batches,
        "up to {most} bytes held for the partition nobody takes; at most {two_batches} expected"
    );
    // Paused, not waited for: partition 0 goes on.
    produce(&mock, 0, 500);
    let more = take(&mut busy, 500).await;
    in_order_from(&more, RECORDS);
    let offsets = take(&mut idle, RECORDS as usize).await;
    in_order_from(&offsets, 0);
}

#[tokio::test]
async fn a_full_budget_holds_every_partition_and_nothing_is_lost_after() {
    let mock = loaded_cluster(2);
    let budget = 8 * 1024;
    let mut reading = Reading::start(&mock.bootstrap_servers(), 2, budget);
    // Nobody takes anything for longer than the thread waits before pausing.
    tokio::time::sleep(dispatcher::PAUSE_AFTER + Duration::from_millis(500)).await;
    let held = reading.budget.held();
    // The budget, plus what arrived for each partition before it was paused.
    let bound = budget + 2 * 2 * BATCH_RECORDS * (VALUE.len() + 4);
    assert!(
        held >= budget,
        "the budget should be full: {held} bytes held"
    );
    assert!(held <= bound, "{held} bytes held, over {bound}");
    // Both copiers take again (one alone could not: the other partition's
    // waiting batches would keep the budget full).
    let [zero, one] = &mut reading.inboxes[..] else {
        panic!("two inboxes");
    };
    let (zero, one) = tokio::join!(take(zero, RECORDS as usize), take(one, RECORDS as usize));
    in_order_from(&zero, 0);
    in_order_from(&one, 0);
}

#[tokio::test]
async fn a_rewind_drops_what_waits_and_reads_again_from_the_offset_given() {
    let mock = loaded_cluster(1);
    let mut reading = Reading::start(&mock.bootstrap_servers(), 1, 64 << 20);
    let mut inbox = reading.inboxes.pop().expect("inbox 0");
    let first = take(&mut inbox, 500).await;
    in_order_from(&first, 0);
    inbox.rewind(Some(123));
    let again = take(&mut inbox, (RECORDS - 123) as usize).await;
    in_order_from(&again, 123);
}
