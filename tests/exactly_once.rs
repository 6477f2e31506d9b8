//! Exactly-once transactions on real brokers: how long a copier keeps one
//! open. `transaction_interval` bounds every transaction; one opened on an
//! idle partition commits as soon as the partition is caught up with nothing
//! more waiting, so a read-committed consumer of the destination does not
//! wait out the interval for records that trickle in; in lanes, once every
//! partition in it is; one opened on a streaming partition, once caught up
//! after `transaction_streaming_interval` when that is set. And a lane is
//! never handed more than one produce request's worth of a partition at a
//! time.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use strait_actors::{transactional, ClusterSpec};
use support::cluster::{shared_pair, KafkaCluster};
use support::records::{
    create_topic, id_payload, id_records, produce, read_topic, unique_name, verify_copy,
    wait_for_complete_copy, wait_until, Delivery, Out, TestProducer,
};
use support::strait::{toml_str, Config, Strait};

const PARTITIONS: i32 = 2;

/// Bound on start-up and the first catch-up.
const WAIT: Duration = Duration::from_secs(120);

/// The flow's `transaction_interval`: far longer than copying a record takes.
const INTERVAL: Duration = Duration::from_secs(30);

/// How long a trickled record may take to become visible: well inside
/// [`INTERVAL`], so it can only be met by a transaction that ended early.
const VISIBLE_WITHIN: Duration = Duration::from_secs(20);

#[test]
fn exactly_once_record_to_caught_up_partition_is_committed_before_transaction_interval_ends() {
    caught_up_records_are_committed_before_the_interval_ends(None);
}

#[test]
fn exactly_once_in_lanes_records_to_caught_up_partitions_are_committed_before_transaction_interval_ends(
) {
    // One lane: each transaction spans both partitions.
    caught_up_records_are_committed_before_the_interval_ends(Some(1));
}

fn caught_up_records_are_committed_before_the_interval_ends(lanes: Option<u32>) {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("eos-head");
    create_topic(src, &topic, PARTITIONS);
    produce(src, &topic, &id_records(0, 1_000, PARTITIONS));

    let mut config = Config::new(src, dst, &[&topic], &unique_name("strait.eos-head"))
        .delivery(Delivery::ExactlyOnce)
        .flow_key(
            "transaction_interval",
            &toml_str(&format!("{}s", INTERVAL.as_secs())),
        );
    if let Some(lanes) = lanes {
        config = config.flow_key("transaction_lanes", &lanes.to_string());
    }
    let mut strait = Strait::start("strait", &config);
    let first = read_topic(src, &topic, PARTITIONS);
    wait_for_complete_copy(&first, dst, &topic, Delivery::ExactlyOnce, WAIT, || {
        strait.assert_running();
        strait.status_summary()
    });

    // Three rounds of one record per partition, each to a caught-up
    // partition: each must be visible, read committed, before a transaction
    // opened for it could have run its interval.
    let mut next_id = 1_000;
    for round in 1..=3 {
        produce(
            src,
            &topic,
            &id_records(next_id, PARTITIONS as u64, PARTITIONS),
        );
        next_id += PARTITIONS as u64;
        let produced_at = Instant::now();
        wait_until_visible(src, dst, &topic, PARTITIONS, &strait);
        eprintln!(
            "round {round}: visible read committed {:?} after it was produced \
             (transaction_interval {INTERVAL:?})",
            produced_at.elapsed()
        );
    }

    // A producer per partition commits each partition's record alone; a
    // lane may commit a round's records together.
    let rounds = match lanes {
        None => 3 * PARTITIONS,
        Some(_) => 3,
    };
    let (caught_up, interval) = wait_until(
        "the metrics to count the transactions ended because their partition was caught up",
        WAIT,
        || match (
            committed(&strait, "caught_up"),
            committed(&strait, "interval"),
        ) {
            (c, i) if c >= f64::from(rounds) => Ok((c, i)),
            other => Err(format!("(caught_up, interval) = {other:?}")),
        },
    );
    assert_eq!(
        interval, 0.0,
        "no transaction should have waited out the {INTERVAL:?} interval ({caught_up} ended caught up)"
    );
    // Every commit is timed.
    let timed = strait
        .metric("strait_transaction_commit_duration_seconds_count", &[])
        .unwrap_or_else(|e| panic!("reading /metrics: {e}"))
        .unwrap_or(0.0);
    assert!(
        timed >= caught_up,
        "{timed} commits timed, fewer than the {caught_up} transactions committed caught up"
    );
    strait.stop();
    verify_copy(src, dst, &topic, &topic, PARTITIONS, Delivery::ExactlyOnce);
}

#[test]
fn exactly_once_streaming_partition_commits_once_caught_up_after_transaction_streaming_interval() {
    stream_then_stop(Duration::from_millis(50));
}

/// Transactions on the stream last about a second each, so when it stops
/// after 3 s, the last one is caught up before it is a second old. It used
/// to wait for more records until the 30 s interval ran out.
#[test]
fn exactly_once_stream_that_stops_mid_transaction_commits_once_the_streaming_interval_has_run() {
    stream_then_stop(Duration::from_secs(1));
}

/// Copies a record every 2 ms for 3 s with `transaction_streaming_interval`
/// at `streaming`, and checks that every record became visible well inside
/// the 30 s `transaction_interval`, no transaction having waited it out.
fn stream_then_stop(streaming: Duration) {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("eos-streaming");
    create_topic(src, &topic, 1);
    produce(src, &topic, &id_records(0, 100, 1));
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.eos-streaming"))
        .delivery(Delivery::ExactlyOnce)
        .flow_key(
            "transaction_interval",
            &toml_str(&format!("{}s", INTERVAL.as_secs())),
        )
        .flow_key(
            "transaction_streaming_interval",
            &toml_str(&format!("{}ms", streaming.as_millis())),
        );
    let mut strait = Strait::start("strait", &config);
    let first = read_topic(src, &topic, 1);
    wait_for_complete_copy(&first, dst, &topic, Delivery::ExactlyOnce, WAIT, || {
        strait.assert_running();
        strait.status_summary()
    });

    // A record every 2 ms for 3 s: records keep waiting for the copier
    // while it commits, so transactions open on a streaming partition.
    let mut producer = TestProducer::new(src);
    let streaming_since = Instant::now();
    let mut id = 100;
    while streaming_since.elapsed() < Duration::from_secs(3) {
        producer.send(&topic, &id_records(id, 1, 1)[0]);
        id += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    producer.flush();
    wait_until_visible(src, dst, &topic, 1, &strait);

    let (caught_up, interval) = (
        committed(&strait, "caught_up"),
        committed(&strait, "interval"),
    );
    // Without the streaming interval, a transaction opened while records
    // waited would have run the whole 30 s interval.
    assert_eq!(
        interval, 0.0,
        "no transaction should have waited out the {INTERVAL:?} interval ({caught_up} ended caught up)"
    );
    assert!(caught_up > 1.0, "{caught_up} transactions ended caught up");
    strait.stop();
    verify_copy(src, dst, &topic, &topic, 1, Delivery::ExactlyOnce);
}

/// Waits, at most [`VISIBLE_WITHIN`], until every record now on the
/// source's `topic` can be read committed on the destination.
fn wait_until_visible(src: &str, dst: &str, topic: &str, partitions: i32, strait: &Strait) {
    let source_now = read_topic(src, topic, partitions);
    wait_for_complete_copy(
        &source_now,
        dst,
        topic,
        Delivery::ExactlyOnce,
        VISIBLE_WITHIN,
        || {
            strait.assert_running();
            strait.status_summary()
        },
    );
}

/// Transactions `strait` committed for `reason` so far.
fn committed(strait: &Strait, reason: &str) -> f64 {
    strait
        .metric("strait_transactions_committed_total", &[("reason", reason)])
        .unwrap_or_else(|e| panic!("reading /metrics: {e}"))
        .unwrap_or(0.0)
}

/// Whether `bootstrap`'s cluster lists `topic` (internal topics included).
fn has_topic(bootstrap: &str, topic: &str) -> bool {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("metadata");
    metadata.topics().iter().any(|t| t.name() == topic)
}

#[test]
fn warm_up_brings_up_the_transaction_coordinator_of_a_destination_that_never_saw_a_transaction() {
    // A cluster of its own: the shared one has seen transactions.
    let destination = KafkaCluster::start("eos-warm-up");
    let dst = destination.bootstrap();
    assert!(
        !has_topic(dst, "__transaction_state"),
        "a new cluster has no transaction log yet"
    );
    let spec = ClusterSpec {
        alias: "destination".into(),
        properties: BTreeMap::from([("bootstrap.servers".to_string(), dst.to_string())]),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(transactional::warm_up(
            &spec,
            &unique_name("strait.warm-up"),
        ))
        .expect("the warm-up's init_transactions succeeds");
    assert!(
        has_topic(dst, "__transaction_state"),
        "the warm-up created the transaction log, so the copiers find its coordinator"
    );
}

#[test]
fn exactly_once_in_lanes_sends_no_batch_larger_than_one_produce_request() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("eos-lane-pieces");
    create_topic(src, &topic, PARTITIONS);
    // 2 MB of 1 KB records: the source hands copiers batches of up to
    // `batch_max_bytes` (1 MiB), far more than one request carries here.
    let records: Vec<Out> = (0..2_000u64)
        .map(|id| {
            Out::keyed(
                (id % PARTITIONS as u64) as i32,
                format!("k{id}"),
                id_payload(id, 1_000),
            )
        })
        .collect();
    produce(src, &topic, &records);

    const REQUEST_BYTES: u64 = 16_384;
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.eos-lane-pieces"))
        .delivery(Delivery::ExactlyOnce)
        .flow_key("transaction_lanes", "1")
        .kafka("destination", "batch.size", &REQUEST_BYTES.to_string());
    let mut strait = Strait::start("strait", &config);
    let copied = read_topic(src, &topic, PARTITIONS);
    wait_for_complete_copy(&copied, dst, &topic, Delivery::ExactlyOnce, WAIT, || {
        strait.assert_running();
        strait.status_summary()
    });

    // Every batch handed to the lane fits one request: the histogram's
    // bucket at the request size holds them all.
    let sample = |name: &str, labels: &[(&str, &str)]| {
        strait
            .metric(name, labels)
            .unwrap_or_else(|e| panic!("reading /metrics: {e}"))
            .unwrap_or_else(|| panic!("{name}{labels:?} is not on /metrics"))
    };
    let batches = sample("strait_batch_bytes_count", &[]);
    let within = sample(
        "strait_batch_bytes_bucket",
        &[("le", &REQUEST_BYTES.to_string())],
    );
    assert!(
        batches >= (2_000_000 / REQUEST_BYTES) as f64,
        "{batches} batches for 2 MB in requests of {REQUEST_BYTES} bytes"
    );
    assert_eq!(
        within, batches,
        "batches larger than one produce request ({REQUEST_BYTES} bytes) reached the lane"
    );
    strait.stop();
    verify_copy(src, dst, &topic, &topic, PARTITIONS, Delivery::ExactlyOnce);
}
