//! The exactly-once offset map reader on librdkafka's mock cluster: copiers
//! that ask together share one read, and a read that began before a question
//! never answers it. (The exactly-once fault tests in the root crate run the
//! whole path against real Kafka.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use strait_actors::offset_store::{self, OffsetMapReader, StoredOffset, OFFSETS_TOPIC};
use strait_actors::ClusterSpec;

const GROUP: &str = "strait.mock";

fn cluster(bootstrap: &str) -> ClusterSpec {
    ClusterSpec {
        alias: "dst".to_string(),
        properties: BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]),
    }
}

/// Writes the entry of `events[partition]`, as a committed transaction would.
fn store(bootstrap: &str, partition: i32, next_offset: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let key = offset_store::key(GROUP, "events", partition);
    let value = StoredOffset {
        flow: "mock".into(),
        source_cluster: "src".into(),
        next_offset,
    }
    .encode();
    producer
        .send(BaseRecord::to(OFFSETS_TOPIC).key(&key).payload(&value))
        .map_err(|(e, _)| e)
        .expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn copiers_asking_together_share_one_read_and_each_gets_its_own_entry() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    for p in 0..50 {
        store(&bootstrap, p, 1000 + i64::from(p));
    }
    let reader = Arc::new(OffsetMapReader::new(cluster(&bootstrap), GROUP.into()));
    let answers = runtime().block_on(async {
        // Spawned all at once (collected), so that they ask together.
        let asks: Vec<_> = (0..50)
            .map(|p| {
                let reader = Arc::clone(&reader);
                tokio::spawn(async move { reader.next_offset("events", p).await })
            })
            .collect();
        let mut answers = Vec::new();
        for ask in asks {
            answers.push(ask.await.expect("task").expect("read"));
        }
        answers
    });
    let expected: Vec<Option<i64>> = (0..50).map(|p| Some(1000 + i64::from(p))).collect();
    assert_eq!(answers, expected);
    // The first question starts a read; the 49 asked while it ran share the
    // next one (they may not use a read that began before they asked).
    assert!(
        reader.reads() <= 2,
        "50 questions asked together took {} reads",
        reader.reads()
    );
}

#[test]
fn a_read_that_began_before_the_question_does_not_answer_it() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    store(&bootstrap, 1, 7);
    let reader = OffsetMapReader::new(cluster(&bootstrap), GROUP.into());
    let rt = runtime();
    assert_eq!(
        rt.block_on(reader.next_offset("events", 0)).expect("read"),
        None
    );
    // Committed after the first read: the next question must see it.
    store(&bootstrap, 0, 42);
    assert_eq!(
        rt.block_on(reader.next_offset("events", 0)).expect("read"),
        Some(42)
    );
    assert_eq!(reader.reads(), 2);
}

#[test]
fn the_reader_keeps_its_ends_client_and_every_read_reads_the_map_from_its_start() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let reader = OffsetMapReader::new(cluster(&bootstrap), GROUP.into());
    let rt = runtime();
    // An empty map, then entries; each read must see each entry's latest
    // value, also when nothing was written since the read before (a read
    // that ended at once would answer "no entry").
    assert_eq!(
        rt.block_on(reader.next_offset("events", 3)).expect("read"),
        None
    );
    for (round, offset) in [10_i64, 20, 30].into_iter().enumerate() {
        store(&bootstrap, 3, offset);
        store(&bootstrap, 4, offset + 1);
        for again in 0..2 {
            assert_eq!(
                rt.block_on(reader.next_offset("events", 3)).expect("read"),
                Some(offset),
                "round {round}, read {again}"
            );
            assert_eq!(
                rt.block_on(reader.next_offset("events", 4)).expect("read"),
                Some(offset + 1),
                "round {round}, read {again}"
            );
        }
    }
    assert_eq!(reader.reads(), 13);
    assert_eq!(
        reader.ends_clients_made(),
        1,
        "one client asked where the map ends, for every read"
    );
}
