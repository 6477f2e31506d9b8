//! Records the destination refuses for good, under each `on_error` policy, on
//! real clusters: the destination topic is created beforehand with a small
//! `max.message.bytes`, and one record of partition 0 is larger than that.
//!
//! The oversized record is produced on its own, after the records before it
//! have been copied, so that it travels alone in its produce request: the
//! broker applies `max.message.bytes` to a whole batch (see docs/configuration.md,
//! `on_error`).

mod support;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::Value;
use support::cluster::shared_pair;
use support::records::{
    create_topic, id_payload, payload_id, produce, read_topic, unique_name, wait_until, Delivery,
    Out,
};
use support::strait::{toml_str, Config, Strait};

const WAIT: Duration = Duration::from_secs(120);
/// The destination topic's limit, and the size of the refused record.
const LIMIT: usize = 4096;
const OVERSIZED: usize = 20_000;
/// Records of partition 0 before the oversized one (which gets offset BEFORE).
const BEFORE: u64 = 30;
const AFTER: u64 = 20;

fn create_limited_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let limit = LIMIT.to_string();
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("max.message.bytes", &limit);
    let results = futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

fn partition_status(strait: &Strait, topic: &str, partition: i64) -> Option<Value> {
    let status = strait.status().ok()?;
    status["flows"][0]["topics"][topic]["assigned"]
        .as_array()?
        .iter()
        .find(|p| p["partition"].as_i64() == Some(partition))
        .cloned()
}

struct Setup {
    src: String,
    dst: String,
    topic: String,
    strait: Strait,
}

impl Setup {
    /// Waits until partition 0 holds exactly the records produced, in order,
    /// without the oversized one.
    fn wait_for_all_but_the_refused_record(&self, what: &str) {
        let expected: Vec<u64> = (0..BEFORE).chain(BEFORE + 1..=BEFORE + AFTER).collect();
        wait_until(what, WAIT, || {
            let got = ids(&read_topic(&self.dst, &self.topic, 2), 0);
            if got == expected {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        });
    }
}

/// Starts Strait on a fresh topic, copies partition 0's first records and all
/// of partition 1's, then produces the oversized record and the ones after it.
fn run_with_policy(policy: &str, delivery: Delivery, extra: &[(&str, String)]) -> Setup {
    run_with(policy, delivery, extra, &[])
}

fn run_with(
    policy: &str,
    delivery: Delivery,
    extra: &[(&str, String)],
    destination_kafka: &[(&str, &str)],
) -> Setup {
    let (source, destination) = shared_pair();
    let (src, dst) = (
        source.bootstrap().to_string(),
        destination.bootstrap().to_string(),
    );
    let topic = unique_name(&format!("refused-{policy}"));
    create_topic(&src, &topic, 2);
    create_limited_topic(&dst, &topic, 2);
    let small = |id: u64, p: i32| Out::value(p, id_payload(id, 100));
    let first: Vec<Out> = (0..BEFORE)
        .map(|i| small(i, 0))
        .chain((0..50).map(|i| small(1000 + i, 1)))
        .collect();
    produce(&src, &topic, &first);

    // Config sync would give the destination topic the source's (default,
    // larger) max.message.bytes: keep the smaller limit made for this test.
    let mut config = Config::new(&src, &dst, &[&topic], &unique_name("strait.refused"))
        .delivery(delivery)
        .flow_key("on_error", &toml_str(policy))
        .flow_key("topic_config_sync", "false");
    for (k, v) in extra {
        config = config.flow_key(k, v);
    }
    for (k, v) in destination_kafka {
        config = config.kafka("destination", k, v);
    }
    let strait = Strait::start("strait", &config);
    strait.wait_for_copy(&dst, &topic, 2, BEFORE as i64 + 50, WAIT);

    produce(
        &src,
        &topic,
        &[Out::value(0, id_payload(BEFORE, OVERSIZED))],
    );
    let after: Vec<Out> = (1..=AFTER).map(|i| small(BEFORE + i, 0)).collect();
    // Give the oversized record its own produce request on the way out.
    std::thread::sleep(Duration::from_millis(500));
    produce(&src, &topic, &after);
    Setup {
        src,
        dst,
        topic,
        strait,
    }
}

fn ids(parts: &[Vec<support::records::Rec>], partition: usize) -> Vec<u64> {
    parts[partition]
        .iter()
        .filter_map(|r| payload_id(&r.value))
        .collect()
}

#[test]
fn on_error_fail_stops_only_the_partition_and_names_topic_partition_and_offset() {
    let mut s = run_with_policy("fail", Delivery::AtLeastOnce, &[]);
    let failed = wait_until(
        "partition 0 to be marked failed",
        WAIT,
        || match partition_status(&s.strait, &s.topic, 0) {
            Some(p) if p["state"] == "failed" => Ok(p),
            other => Err(format!("{other:?}")),
        },
    );
    let error = failed["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains(&s.topic)
            && error.contains("[0]")
            && error.contains(&format!("offset {BEFORE}")),
        "the error must name topic, partition and offset: {error}"
    );
    // The other partition keeps copying.
    produce(&s.src, &s.topic, &[Out::value(1, id_payload(2000, 100))]);
    s.strait
        .wait_for_copy(&s.dst, &s.topic, 2, BEFORE as i64 + 51, WAIT);
    let dst = read_topic(&s.dst, &s.topic, 2);
    assert_eq!(
        ids(&dst, 0),
        (0..BEFORE).collect::<Vec<_>>(),
        "nothing after the refused record is copied"
    );
    assert_eq!(dst[1].len(), 51);
    s.strait.assert_running();
    s.strait.stop();
}

#[test]
fn on_error_skip_copies_everything_but_the_refused_record() {
    let mut s = run_with_policy("skip", Delivery::AtLeastOnce, &[]);
    s.wait_for_all_but_the_refused_record("partition 0 to hold every record but the refused one");
    assert!(s
        .strait
        .log()
        .contains("skipping a record the destination refuses"));
    let src = read_topic(&s.src, &s.topic, 2);
    assert_eq!(ids(&src, 0).len() as u64, BEFORE + AFTER + 1);
    s.strait.stop();
}

#[test]
fn on_error_dead_letter_writes_the_refused_record_with_its_origin() {
    let dead_letter = unique_name("strait.dead-letter");
    let mut s = run_with_policy(
        "dead_letter",
        Delivery::AtLeastOnce,
        &[("dead_letter_topic", toml_str(&dead_letter))],
    );
    s.wait_for_all_but_the_refused_record("partition 0 to hold every record but the refused one");
    let dead = wait_until(
        "the dead-letter topic to hold the refused record",
        WAIT,
        || {
            let parts = read_topic(&s.dst, &dead_letter, 1);
            match parts[0].as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!("{} records", other.len())),
            }
        },
    );
    let source = read_topic(&s.src, &s.topic, 2);
    assert_eq!(payload_id(&dead.value), Some(BEFORE));
    assert_eq!(
        dead.value, source[0][BEFORE as usize].value,
        "the dead letter holds the original value"
    );
    let header = |name: &str| {
        dead.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    assert_eq!(
        header("strait.source.topic").as_deref(),
        Some(s.topic.as_str())
    );
    assert_eq!(header("strait.source.partition").as_deref(), Some("0"));
    assert_eq!(header("strait.source.offset"), Some(BEFORE.to_string()));
    assert_eq!(header("strait.source.cluster").as_deref(), Some("source"));
    assert!(header("strait.error").is_some_and(|e| !e.is_empty()));
    s.strait.stop();
}

#[test]
fn exactly_once_skip_leaves_out_the_refused_record_and_duplicates_nothing() {
    // In exactly-once mode batches are not split: they must fit the topic.
    let mut s = run_with(
        "skip",
        Delivery::ExactlyOnce,
        &[],
        &[("batch.size", "2048")],
    );
    s.wait_for_all_but_the_refused_record(
        "partition 0 (read_committed) to hold every record but the refused one, once",
    );
    s.strait.stop();
}

#[test]
fn records_gone_from_the_source_are_logged_and_counted_and_copying_goes_on() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("gone");
    create_topic(src, &topic, 1);
    let records = |ids: std::ops::Range<u64>| -> Vec<Out> {
        ids.map(|i| Out::value(0, id_payload(i, 50))).collect()
    };
    produce(src, &topic, &records(0..100));
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.gone"));
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, 1, 100, WAIT);
    strait.stop();

    // While Strait is stopped, records 100..150 arrive and are deleted, as
    // retention would: its committed position (100) is no longer readable.
    produce(src, &topic, &records(100..200));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", src)
        .create()
        .expect("admin client");
    let mut upto = rdkafka::TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(150))
        .expect("offset");
    futures::executor::block_on(admin.delete_records(&upto, &AdminOptions::new()))
        .expect("delete records");

    strait.restart();
    strait.wait_for_copy(dst, &topic, 1, 150, WAIT);
    let got = ids(&read_topic(dst, &topic, 1), 0);
    let expected: Vec<u64> = (0..100).chain(150..200).collect();
    assert_eq!(got, expected, "copying goes on from the oldest record left");
    let log = strait.log();
    assert!(
        log.contains("source records are gone")
            && log.contains("from=100")
            && log.contains("to=149"),
        "the gap must be logged with its offsets"
    );
    let counted = wait_until("the gap to be counted", WAIT, || {
        match strait.metric(
            "strait_source_records_unavailable_total",
            &[("topic", &topic)],
        ) {
            Ok(Some(v)) => Ok(v),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(counted, 50.0);
    strait.stop();
}
