//! The fetch waker on librdkafka's mock cluster: a wake-up reaches the
//! resumed partitions' leader as a request it answers, and dropping the
//! waker stops its thread. (That the request gets an idle fetcher going
//! sooner is a matter of time, shown by the benchmarks, not asserted here.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use strait_actors::fetch_waker::FetchWaker;

const TOPIC: &str = "events";

fn paused_consumer(bootstrap: &str) -> Arc<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fetch-waker-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assigned");
    consumer.pause(&tpl).expect("paused");
    Arc::new(consumer)
}

#[test]
fn a_wake_up_is_a_request_the_leader_answers_and_drop_stops_the_thread() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 3, 1).expect("topic");
    let consumer = paused_consumer(&mock.bootstrap_servers());
    let waker = FetchWaker::spawn(Arc::clone(&consumer));
    assert_eq!(waker.answered(), 0, "nothing to wake yet");
    waker.wake(Vec::new());

    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 1);
    consumer.resume(&tpl).expect("resumed");
    let topic: Arc<str> = Arc::from(TOPIC);
    waker.wake(vec![(Arc::clone(&topic), 1), (topic, 1)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while waker.answered() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        waker.answered(),
        1,
        "the resumed partition's leader answered one request"
    );

    drop(waker);
    assert_eq!(
        Arc::strong_count(&consumer),
        1,
        "the waker's thread ended and let go of the consumer"
    );
}
