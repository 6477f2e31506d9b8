//! Actor tests on librdkafka's built-in mock cluster: fast, no broker needed.
//! (Every feature is also tested against real Kafka in the root crate's tests.)
//!
//! - a copier that panics, or whose writes the destination refuses, is
//!   restarted and resumes from its last acknowledged offset, while the other
//!   partitions keep flowing;
//! - a destination that cannot keep up blocks the copier's send instead of
//!   letting batches pile up in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use strait_actors::batch::Batch;
use strait_actors::destination::{Destination, RefusalPolicy, WriteBatch};
use strait_actors::progress::PartitionProgress;
use strait_actors::{
    ClusterSpec, Delivery, Faults, FlowSpec, FlowSupervisor, OnError, RenameFormat, StartFrom,
    StatusBoard, StopFlow, TopicSelector, Tuning,
};

const RECORDS_PER_PARTITION: usize = 600;

fn cluster(alias: &str, bootstrap: &str, extra: &[(&str, &str)]) -> ClusterSpec {
    let mut properties = BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]);
    for (k, v) in extra {
        properties.insert(k.to_string(), v.to_string());
    }
    ClusterSpec {
        alias: alias.to_string(),
        properties,
    }
}

fn flow(source: &str, destination: &str, faults: Faults) -> FlowSpec {
    FlowSpec {
        name: "mock".into(),
        source: cluster("src", source, &[]),
        destination: cluster("dst", destination, &[]),
        topics: TopicSelector::new(&["events".into()], &[], "flows[0].topics").expect("regex"),
        rename: RenameFormat::identity(),
        group_id: "strait.mock".into(),
        delivery: Delivery::AtLeastOnce,
        start_from: StartFrom::Earliest,
        topic_refresh_interval: Duration::from_secs(1),
        topic_auto_create: true,
        topic_config_sync: true,
        replication_factor: None,
        topic_config_exclude: vec![],
        topic_config_overrides: BTreeMap::new(),
        on_error: OnError::Fail,
        tuning: Tuning {
            batch_max_records: 10,
            restart_backoff_initial: Duration::from_millis(50),
            ..Tuning::default()
        },
        faults,
    }
}

/// Produces `RECORDS_PER_PARTITION` records with ids "p<partition>-<n>" to each partition.
fn produce(bootstrap: &str, partitions: i32) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for p in 0..partitions {
        for n in 0..RECORDS_PER_PARTITION {
            let id = format!("p{p}-{n}");
            let record = BaseRecord::<str, str>::to("events")
                .partition(p)
                .payload(&id);
            producer
                .send(record)
                .map_err(|(e, _)| e)
                .expect("queue record");
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush source records");
}

/// Reads every record of `events` on the destination, per partition, in order.
fn read_destination(bootstrap: &str, partitions: i32) -> HashMap<i32, Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset("events", p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: HashMap<i32, Vec<String>> = HashMap::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out
                .entry(m.partition())
                .or_default()
                .push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    out
}

/// Waits until the destination holds every id of every partition.
fn wait_complete(bootstrap: &str, partitions: i32) -> HashMap<i32, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = read_destination(bootstrap, partitions);
        let complete = (0..partitions).all(|p| {
            let ids: std::collections::HashSet<_> = got.get(&p).into_iter().flatten().collect();
            ids.len() == RECORDS_PER_PARTITION
        });
        if complete {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "destination never held every record; per partition: {:?}",
            got.iter().map(|(p, v)| (p, v.len())).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How many ids of `ids` repeat an earlier one.
fn duplicates(ids: &[String]) -> usize {
    let mut seen = std::collections::HashSet::new();
    ids.iter().filter(|id| !seen.insert(id.as_str())).count()
}

/// Runs a flow from one mock cluster to another until every record arrived,
/// and returns what the destination holds and the board.
fn replicate_with(
    faults: Faults,
    before_start: impl FnOnce(&MockCluster<'static, DefaultProducerContext>),
) -> (HashMap<i32, Vec<String>>, Arc<StatusBoard>) {
    let source = MockCluster::new(1).expect("source mock cluster");
    let destination = MockCluster::new(1).expect("destination mock cluster");
    source.create_topic("events", 2, 1).expect("source topic");
    destination
        .create_topic("events", 2, 1)
        .expect("destination topic");
    produce(&source.bootstrap_servers(), 2);
    before_start(&destination);

    let board = StatusBoard::new();
    let spec = flow(
        &source.bootstrap_servers(),
        &destination.bootstrap_servers(),
        faults,
    );
    let system = System::new();
    let dst = destination.bootstrap_servers();
    let got = system.block_on({
        let board = Arc::clone(&board);
        async move {
            let addr = FlowSupervisor::start(spec, &board).expect("flow starts");
            let got = tokio::task::spawn_blocking(move || wait_complete(&dst, 2))
                .await
                .expect("reader thread");
            addr.send(StopFlow).await.expect("flow stops");
            got
        }
    });
    (got, board)
}

fn partition_restarts(board: &StatusBoard, partition: i32) -> u64 {
    let snapshot = board.snapshot();
    snapshot.flows[0].topics["events"]
        .assigned
        .iter()
        .find(|p| p.partition == partition)
        .map_or(0, |p| p.restarts)
}

#[test]
fn panicking_copier_is_restarted_and_resumes_from_its_last_acknowledged_offset() {
    let faults = Faults {
        copier_panic_at: Some(("events".into(), 0, 300, 1)),
        ..Faults::default()
    };
    let (got, board) = replicate_with(faults, |_| {});
    let p0 = &got[&0];
    assert_eq!(
        partition_restarts(&board, 0),
        1,
        "partition 0's copier restarted once"
    );
    assert_eq!(
        partition_restarts(&board, 1),
        0,
        "partition 1 was not interrupted"
    );
    // Everything before the panic that was acknowledged is not copied again:
    // a restart from the beginning would repeat at least 300 records.
    let repeats = duplicates(p0);
    assert!(
        repeats < 300,
        "{repeats} records copied twice: the copier did not resume from its acknowledged offset"
    );
    assert_eq!(duplicates(&got[&1]), 0);
    // Order is kept: the first occurrences come in source order.
    let mut seen = std::collections::HashSet::new();
    let first: Vec<&String> = p0.iter().filter(|id| seen.insert(id.as_str())).collect();
    let expected: Vec<String> = (0..RECORDS_PER_PARTITION)
        .map(|n| format!("p0-{n}"))
        .collect();
    assert_eq!(first, expected.iter().collect::<Vec<_>>());
}

#[test]
fn copier_whose_destination_write_fails_is_restarted_and_loses_nothing() {
    let (got, board) = replicate_with(Faults::default(), |destination| {
        // The next produce requests fail with an error librdkafka does not
        // retry itself, but that is not about the records: a restart fixes it.
        destination.request_errors(
            rdkafka::types::RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS; 2],
        );
    });
    let restarts = partition_restarts(&board, 0) + partition_restarts(&board, 1);
    assert!(restarts >= 1, "a failed write must restart its copier");
    for p in 0..2 {
        let unique: std::collections::HashSet<_> = got[&p].iter().collect();
        assert_eq!(
            unique.len(),
            RECORDS_PER_PARTITION,
            "partition {p} lost records"
        );
    }
}

#[test]
fn full_destination_blocks_the_sender_instead_of_growing() {
    let destination = MockCluster::new(1).expect("mock cluster");
    destination.create_topic("events", 1, 1).expect("topic");
    let bootstrap = destination.bootstrap_servers();
    // The producer may hold 50 records; each batch has 10.
    let spec = cluster(
        "dst",
        &bootstrap,
        &[
            ("queue.buffering.max.messages", "50"),
            ("message.timeout.ms", "120000"),
        ],
    );
    destination.broker_down(1).expect("broker down");

    let sent = Arc::new(AtomicUsize::new(0));
    let progress = PartitionProgress::new();
    let system = System::new();
    let (blocked_at, finished) = system.block_on({
        let sent = Arc::clone(&sent);
        let progress = Arc::clone(&progress);
        async move {
            let refusals = RefusalPolicy {
                on_error: OnError::Fail,
                flow: "mock".into(),
                source_cluster: "src".into(),
            };
            let dest = Destination::new(&spec, 2, refusals)
                .expect("producer")
                .start();
            let sender = {
                let sent = Arc::clone(&sent);
                let progress = Arc::clone(&progress);
                actix_rt::spawn(async move {
                    for b in 0..100i64 {
                        let mut batch = Batch::with_capacity(10, 1000);
                        for i in 0..10 {
                            let offset = b * 10 + i;
                            batch.push(&rdkafka::message::OwnedMessage::new(
                                Some(format!("r{offset}").into_bytes()),
                                None,
                                "events".into(),
                                rdkafka::Timestamp::NotAvailable,
                                0,
                                offset,
                                None,
                            ));
                        }
                        let ack =
                            progress.register(10, batch.bytes(), b * 10, b * 10 + 10, None, None);
                        dest.send(WriteBatch {
                            batch,
                            source_topic: Arc::from("events"),
                            topic: Arc::from("events"),
                            partition: 0,
                            ack,
                            alone: false,
                            at_head: false,
                            budget: None,
                        })
                        .await
                        .expect("destination alive")
                        .expect("batch queued");
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            // While the broker is down, the sender must stall: it cannot have
            // handed over more than the producer queue plus the batch waiting on it.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let blocked_at = sent.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let still = sent.load(Ordering::SeqCst);
            assert_eq!(
                blocked_at, still,
                "the sender kept going while the destination was down"
            );
            destination.broker_up(1).expect("broker up");
            let finished = tokio::time::timeout(Duration::from_secs(60), sender)
                .await
                .is_ok();
            (blocked_at, finished)
        }
    });
    assert!(
        blocked_at <= 6,
        "{blocked_at} batches were accepted while the destination was down; at most 5 fit in the producer queue plus the one being written"
    );
    assert!(
        finished,
        "the sender never finished after the destination came back"
    );
    assert_eq!(sent.load(Ordering::SeqCst), 100);
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.acked_records() < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        progress.acked_records(),
        1000,
        "every record is acknowledged once the destination is back"
    );
    assert_eq!(progress.committable(), Some(1000));
}
