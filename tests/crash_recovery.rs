//! At-least-once across a crash: `kill -9` in the middle of a stream, then a
//! restart with the same config, must leave every source record on the
//! destination. Duplicates are allowed (and reported); losses are not.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::cluster::shared_pair;
use support::records::{
    committed_offsets, create_topic, id_payload, id_report, read_topic, total_records, unique_name,
    wait_until, watermarks, Out, TestProducer,
};
use support::strait::{Config, Strait};

const WAIT: Duration = Duration::from_secs(120);

/// After a `kill -9`, the group coordinator only lets the restarted member in
/// once the dead member's session has expired (45 s by default), so the
/// catch-up bound is wider than elsewhere.
const CATCH_UP: Duration = Duration::from_secs(300);

#[test]
fn kill_9_mid_stream_then_restart_loses_none_of_200000_records() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("crash");
    let partitions = 4;
    let total: u64 = 200_000;
    create_topic(src, &topic, partitions);

    let config = Config::new(src, dst, &[&topic], &unique_name("strait.crash"));
    let mut strait = Strait::start("strait", &config);

    // The stream: produced at a steady pace (about 25,000 records/s), so that
    // it is still flowing when Strait is killed.
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (src, topic, produced) = (src.to_string(), topic.clone(), Arc::clone(&produced));
        thread::spawn(move || {
            let mut producer = TestProducer::new(&src);
            let start = Instant::now();
            for id in 0..total {
                let p = (id % partitions as u64) as i32;
                producer.send(
                    &topic,
                    &Out::keyed(p, format!("k{id}"), id_payload(id, 100)),
                );
                if (id + 1) % 2_000 == 0 {
                    producer.flush();
                    produced.store(id + 1, Ordering::SeqCst);
                    let due = Duration::from_millis((id + 1) / 25);
                    if let Some(ahead) = due.checked_sub(start.elapsed()) {
                        thread::sleep(ahead);
                    }
                }
            }
            producer.flush();
            produced.store(total, Ordering::SeqCst);
        })
    };

    // Kill once a good part is copied, while records are still in flight.
    strait.wait_for_copy(dst, &topic, partitions, 60_000, WAIT);
    let status_before = strait.status_summary();
    strait.kill9();
    let copied_at_kill = total_records(dst, &topic, partitions).unwrap_or(0);
    eprintln!(
        "killed Strait with {} records produced and {copied_at_kill} on the destination\n\
         its last /status:\n{status_before}",
        produced.load(Ordering::SeqCst)
    );

    strait.restart();
    producer.join().expect("the producer thread panicked");
    let source_records = read_topic(src, &topic, partitions);
    assert_eq!(
        source_records.iter().map(Vec::len).sum::<usize>(),
        total as usize,
        "the source should hold the whole stream"
    );

    let report = wait_until(
        &format!("every one of the {total} source records on the destination"),
        CATCH_UP,
        || {
            strait.assert_running();
            let copied = total_records(dst, &topic, partitions).unwrap_or(0);
            if copied < total as i64 {
                return Err(format!(
                    "{copied} records on the destination\n/status:\n{}",
                    strait.status_summary()
                ));
            }
            let report = id_report(&source_records, &read_topic(dst, &topic, partitions));
            if report.lost > 0 {
                return Err(format!("{report:#?}"));
            }
            Ok(report)
        },
    );
    strait.stop();

    eprintln!(
        "crash test: {} source records, {} destination records, {} duplicates, {} lost \
         ({copied_at_kill} had been copied at the kill)",
        report.source_records, report.destination_records, report.duplicates, report.lost
    );
    assert_eq!(report.lost, 0, "records lost: {report:#?}");
    assert_eq!(
        report.unexpected, 0,
        "records that are not on the source: {report:#?}"
    );
    assert_eq!(
        report.wrong_partition, 0,
        "records copied to another partition: {report:#?}"
    );
    assert!(
        report.out_of_order.is_empty(),
        "the first copies on the destination are not in source order: {report:#?}"
    );

    // After the clean stop, the group's progress covers the whole stream.
    let committed = committed_offsets(src, &config.group_id, &topic, partitions);
    let high: Vec<Option<i64>> = watermarks(src, &topic, partitions)
        .into_iter()
        .map(|(_, h)| Some(h))
        .collect();
    assert_eq!(
        committed, high,
        "committed offsets of group {} should reach the source high watermarks",
        config.group_id
    );
}
