//! What `strait run` copies, checked record by record on real clusters:
//! every field of every record, in order, partition N to partition N; large
//! volumes; topics that appear while it runs; records that keep coming.
//!
//! Each test uses its own topics and consumer group, so the tests share one
//! source/destination pair and run in parallel.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::cluster::shared_pair;
use support::records::{
    assert_same_topic, create_topic, id_payload, produce, unique_name, Out, TestProducer,
};
use support::strait::{Config, Strait};

/// Bound on every wait: long enough for a slow CI machine, short enough that
/// a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Records exercising every field: keys absent, empty and present; values
/// absent (tombstones), empty, binary and large; no headers, duplicate header
/// names, binary and null header values; explicit timestamps that are not in
/// order.
fn fidelity_records(partitions: i32, per_partition: usize) -> Vec<Out> {
    // Recent timestamps, so retention never removes them; from an hour ago.
    let base = now_ms() - 3_600_000;
    let mut out = Vec::new();
    for i in 0..per_partition {
        for p in 0..partitions {
            let n = i as i64;
            let key = match i % 4 {
                0 => None,
                1 => Some(Vec::new()),
                2 => Some(format!("key-{p}-{i}").into_bytes()),
                _ => Some(vec![0x00, 0xff, p as u8, i as u8, 0x80]),
            };
            let value = match i % 6 {
                0 => None, // tombstone
                1 => Some(Vec::new()),
                2 => Some(vec![0xde, 0xad, 0x00, 0xbe, 0xef, i as u8]),
                3 if i % 12 == 3 => Some(vec![b'L'; 200_000 + i]),
                _ => Some(format!("value {p}/{i} ünïcödé").into_bytes()),
            };
            let headers = match i % 5 {
                0 => Vec::new(),
                1 => vec![("h".to_string(), Some(b"first".to_vec()))],
                2 => vec![
                    ("dup".to_string(), Some(b"one".to_vec())),
                    ("other".to_string(), Some(b"between".to_vec())),
                    ("dup".to_string(), Some(b"two".to_vec())),
                    ("dup".to_string(), Some(b"one".to_vec())),
                ],
                3 => vec![
                    ("bin".to_string(), Some(vec![0x00, 0x01, 0xfe, 0xff])),
                    ("null".to_string(), None),
                    ("empty".to_string(), Some(Vec::new())),
                ],
                _ => vec![
                    (
                        "trace-id".to_string(),
                        Some(format!("{p}-{i}").into_bytes()),
                    ),
                    ("null".to_string(), None),
                    ("null".to_string(), None),
                    ("ütf".to_string(), Some("välue".as_bytes().to_vec())),
                ],
            };
            // Mostly increasing, sometimes going back in time.
            let timestamp = if i % 7 == 6 {
                base + n * 1000 - 500_000
            } else {
                base + n * 1000 + p as i64
            };
            out.push(Out {
                partition: p,
                key,
                value,
                headers,
                timestamp: Some(timestamp),
            });
        }
    }
    out
}

#[test]
fn destination_holds_same_keys_values_headers_and_timestamps_in_order_per_partition() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("fid");
    let partitions = 3;
    create_topic(src, &topic, partitions);
    let records = fidelity_records(partitions, 60);
    produce(src, &topic, &records);

    let mut strait = Strait::start(
        "strait",
        &Config::new(src, dst, &[&topic], &unique_name("strait.fid")),
    );
    strait.wait_for_copy(dst, &topic, partitions, records.len() as i64, WAIT);

    // A fresh destination topic written by one uninterrupted process: the
    // offsets match too.
    let copied = assert_same_topic(src, dst, &topic, &topic, partitions, true);
    assert_eq!(
        copied.iter().map(Vec::len).sum::<usize>(),
        records.len(),
        "the source should hold what the test produced"
    );
    strait.stop();
}

#[test]
fn ten_topics_of_four_partitions_with_10000_records_each_are_copied_completely() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let prefix = unique_name("vol");
    let topics: Vec<String> = (0..10).map(|t| format!("{prefix}.t{t}")).collect();
    let partitions = 4;
    let per_partition: u64 = 10_000;
    for t in &topics {
        create_topic(src, t, partitions);
    }
    let mut producer = TestProducer::new(src);
    for t in &topics {
        for i in 0..per_partition {
            for p in 0..partitions {
                let mut rec = Out::keyed(
                    p,
                    format!("k{i}"),
                    id_payload(i * partitions as u64 + p as u64, 64),
                );
                rec.headers = vec![("seq".to_string(), Some(i.to_string().into_bytes()))];
                producer.send(t, &rec);
            }
        }
    }
    producer.flush();

    let mut strait = Strait::start(
        "strait",
        &Config::new(
            src,
            dst,
            &[&format!("{prefix}\\.t[0-9]+")],
            &unique_name("strait.vol"),
        ),
    );
    let expected = per_partition as i64 * partitions as i64;
    for t in &topics {
        strait.wait_for_copy(dst, t, partitions, expected, WAIT);
    }
    for t in &topics {
        let copied = assert_same_topic(src, dst, t, t, partitions, true);
        for (p, recs) in copied.iter().enumerate() {
            assert_eq!(
                recs.len(),
                per_partition as usize,
                "{t}[{p}] on the source should hold what the test produced"
            );
        }
    }
    strait.stop();
}

#[test]
fn topic_created_on_source_while_running_is_created_and_copied() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let prefix = unique_name("late");
    let first = format!("{prefix}.first");
    let late = format!("{prefix}.late");
    create_topic(src, &first, 2);
    let first_records: Vec<Out> = (0..200)
        .map(|i| Out::value(i % 2, id_payload(i as u64, 16)))
        .collect();
    produce(src, &first, &first_records);

    let mut strait = Strait::start(
        "strait",
        &Config::new(
            src,
            dst,
            &[&format!("{prefix}\\..*")],
            &unique_name("strait.late"),
        ),
    );
    strait.wait_for_copy(dst, &first, 2, first_records.len() as i64, WAIT);

    // Created after Strait has started and copied the first topic: only the
    // periodic topic refresh (every second here) can find it.
    create_topic(src, &late, 3);
    let late_records: Vec<Out> = (0..300)
        .map(|i| Out::keyed(i % 3, format!("k{i}"), id_payload(i as u64, 16)))
        .collect();
    produce(src, &late, &late_records);
    strait.wait_for_copy(dst, &late, 3, late_records.len() as i64, WAIT);

    assert_same_topic(src, dst, &first, &first, 2, true);
    assert_same_topic(src, dst, &late, &late, 3, true);
    strait.stop();
}

#[test]
fn records_produced_while_running_keep_appearing_on_destination() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("live");
    let partitions = 2;
    create_topic(src, &topic, partitions);

    // Started on an empty topic: everything it copies arrives while it runs.
    let mut strait = Strait::start(
        "strait",
        &Config::new(src, dst, &[&topic], &unique_name("strait.live")),
    );
    strait.wait_for_status();

    let mut total = 0;
    for round in 0..4u64 {
        let batch: Vec<Out> = (0..250u64)
            .map(|i| {
                let id = round * 1000 + i;
                Out::keyed((i % 2) as i32, format!("r{round}"), id_payload(id, 32))
            })
            .collect();
        produce(src, &topic, &batch);
        total += batch.len() as i64;
        strait.wait_for_copy(dst, &topic, partitions, total, WAIT);
    }

    assert_same_topic(src, dst, &topic, &topic, partitions, true);
    strait.stop();
}
