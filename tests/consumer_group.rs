//! Strait as a consumer-group member on the source: progress is the group's
//! committed offsets, written only for records the destination acknowledged;
//! instances sharing a group id share the partitions and take over from each
//! other.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use support::cluster::shared_pair;
use support::records::{
    committed_offsets, create_topic, id_payload, id_records, id_report, produce, read_topic,
    unique_name, wait_until, watermarks, Out,
};
use support::strait::{free_port, Config, Strait};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn sigterm_exits_0_with_committed_offsets_equal_to_records_replicated_and_status_shows_no_lag() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("stop");
    let partitions = 3;
    create_topic(src, &topic, partitions);
    // Different counts per partition, so offsets cannot match by accident.
    let counts = [500u64, 300, 100];
    let mut records = Vec::new();
    let mut id = 0;
    for (p, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            records.push(Out::value(p as i32, id_payload(id, 32)));
            id += 1;
        }
    }
    produce(src, &topic, &records);

    let config = Config::new(src, dst, &[&topic], &unique_name("strait.stop"));
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, partitions, records.len() as i64, WAIT);
    // /status agrees: every partition replicated up to its end, no lag.
    wait_until(
        "/status to report every partition replicated to its end with no lag",
        WAIT,
        || {
            let parts: Vec<_> = strait
                .active_partitions()?
                .into_iter()
                .filter(|p| p.topic == topic)
                .collect();
            let done = parts.len() == counts.len()
                && parts.iter().all(|p| {
                    p.replicated_offset == Some(counts[p.partition as usize] as i64)
                        && p.lag_records == Some(0)
                });
            if done {
                Ok(())
            } else {
                Err(strait.status_summary())
            }
        },
    );
    strait.stop(); // asserts exit code 0

    let copied: Vec<i64> = watermarks(dst, &topic, partitions)
        .into_iter()
        .map(|(low, high)| high - low)
        .collect();
    assert_eq!(
        copied,
        counts.iter().map(|&n| n as i64).collect::<Vec<_>>(),
        "records per partition on the destination"
    );
    let committed = committed_offsets(src, &config.group_id, &topic, partitions);
    assert_eq!(
        committed,
        copied.iter().map(|&n| Some(n)).collect::<Vec<_>>(),
        "after a clean stop, group {}'s committed offsets should equal the records replicated \
         per partition",
        config.group_id
    );
}

#[test]
fn restart_after_clean_stop_resumes_from_committed_offsets_without_duplicates() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("resume");
    let partitions = 2;
    create_topic(src, &topic, partitions);
    let first = id_records(0, 400, partitions);
    produce(src, &topic, &first);

    let config = Config::new(src, dst, &[&topic], &unique_name("strait.resume"));
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, partitions, first.len() as i64, WAIT);
    strait.stop();

    // Produced while Strait is down; copied after the restart.
    let second = id_records(400, 600, partitions);
    produce(src, &topic, &second);
    strait.restart();
    let total = (first.len() + second.len()) as i64;
    strait.wait_for_copy(dst, &topic, partitions, total, WAIT);
    strait.stop();

    // Exactly the source, offsets included: nothing was copied twice.
    let src_parts = read_topic(src, &topic, partitions);
    let dst_parts = read_topic(dst, &topic, partitions);
    if let Err(diff) = support::records::compare(&src_parts, &dst_parts, true) {
        panic!("after a clean stop and restart the destination should equal the source:\n{diff}");
    }
}

#[test]
fn two_instances_with_one_group_id_split_partitions_and_survivor_takes_over_without_loss() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let prefix = unique_name("grp");
    let topics = [format!("{prefix}.a"), format!("{prefix}.b")];
    let partitions = 4;
    for t in &topics {
        create_topic(src, t, partitions);
    }
    let all: BTreeSet<(String, i32)> = topics
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (t.clone(), p)))
        .collect();
    let produce_all = |first_id: u64| {
        for t in &topics {
            produce(src, t, &id_records(first_id, 400, partitions));
        }
    };
    let expect_on_destination = |records_per_topic: i64, a: &Strait, b: Option<&Strait>| {
        for t in &topics {
            a.wait_for_copy(dst, t, partitions, records_per_topic, WAIT);
            if let Some(b) = b {
                b.assert_running();
            }
        }
    };

    produce_all(0);
    let config_a = Config::new(
        src,
        dst,
        &[&format!("{prefix}\\..*")],
        &unique_name("strait.grp"),
    );
    let mut config_b = config_a.clone();
    config_b.http_port = free_port();
    let mut a = Strait::start("strait-a", &config_a);
    let mut b = Strait::start("strait-b", &config_b);

    let active = |s: &Strait| -> Result<BTreeSet<(String, i32)>, String> {
        Ok(s.active_partitions()?
            .into_iter()
            .map(|p| (p.topic, p.partition))
            .filter(|tp| all.contains(tp))
            .collect())
    };
    let (on_a, on_b) = wait_until(
        "the two instances to split the 8 partitions between them",
        WAIT,
        || {
            let (pa, pb) = (active(&a)?, active(&b)?);
            let union: BTreeSet<_> = pa.union(&pb).cloned().collect();
            let overlap: Vec<_> = pa.intersection(&pb).cloned().collect();
            if !pa.is_empty() && !pb.is_empty() && overlap.is_empty() && union == all {
                Ok((pa, pb))
            } else {
                Err(format!(
                    "strait-a copies {pa:?}\nstrait-b copies {pb:?}\n\
                     overlap {overlap:?}\nunassigned {:?}",
                    all.difference(&union).collect::<Vec<_>>()
                ))
            }
        },
    );
    eprintln!("split: strait-a {on_a:?}, strait-b {on_b:?}");

    produce_all(10_000);
    expect_on_destination(800, &a, Some(&b));

    b.stop();
    produce_all(20_000);
    wait_until(
        "strait-a to take over every partition after strait-b stopped",
        WAIT,
        || {
            let pa = active(&a)?;
            if pa == all {
                Ok(())
            } else {
                Err(format!(
                    "strait-a copies {pa:?}; missing {:?}",
                    all.difference(&pa).collect::<Vec<_>>()
                ))
            }
        },
    );
    expect_on_destination(1200, &a, None);
    let source_parts: Vec<_> = topics
        .iter()
        .map(|t| read_topic(src, t, partitions))
        .collect();
    let reports = wait_until(
        "every source record of both topics on the destination",
        WAIT,
        || {
            a.assert_running();
            let reports: Vec<_> = topics
                .iter()
                .zip(&source_parts)
                .map(|(t, s)| id_report(s, &read_topic(dst, t, partitions)))
                .collect();
            if reports.iter().all(|r| r.lost == 0) {
                Ok(reports)
            } else {
                Err(format!(
                    "{reports:#?}\n/status of strait-a:\n{}",
                    a.status_summary()
                ))
            }
        },
    );
    a.stop();

    for (t, report) in topics.iter().zip(&reports) {
        eprintln!(
            "{t}: {} source records, {} destination records, {} duplicates",
            report.source_records, report.destination_records, report.duplicates
        );
        assert_eq!(report.source_records, 1200, "{t} on the source");
        assert_eq!(report.lost, 0, "{t}: records lost: {report:#?}");
        assert_eq!(
            report.unexpected, 0,
            "{t}: records not on the source: {report:#?}"
        );
        assert_eq!(
            report.wrong_partition, 0,
            "{t}: records in another partition: {report:#?}"
        );
        assert!(
            report.out_of_order.is_empty(),
            "{t}: first copies not in source order: {report:#?}"
        );
    }
}

/// A subscription change that arrives while the group is still joining waits
/// for the join to end instead of landing in it, and is not lost. A second
/// member, subscribed to a topic of its own, makes the first join last: the
/// coordinator waits for it to rejoin at its next heartbeat (3 s). Strait
/// subscribes with its first destination topic ready; the others get ready
/// during that join. Topic refreshes are 10 minutes apart here, so only the
/// held change can bring the later topics into the subscription.
#[test]
fn topics_ready_while_the_group_is_joining_join_the_subscription_once_the_join_ends() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let prefix = unique_name("joining");
    let group = unique_name("strait.joining");
    let topics: Vec<String> = (0..6).map(|t| format!("{prefix}.t{t}")).collect();
    let partitions = 2;
    let records = id_records(0, 200, partitions);
    for t in &topics {
        create_topic(src, t, partitions);
        produce(src, t, &records);
    }
    let decoy_topic = format!("{prefix}-decoy");
    create_topic(src, &decoy_topic, 1);

    let decoy: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", src)
        .set("group.id", &group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("heartbeat.interval.ms", "3000")
        .set("session.timeout.ms", "30000")
        .create()
        .expect("decoy consumer");
    decoy.subscribe(&[&decoy_topic]).expect("decoy subscribes");
    wait_until("the decoy member to be assigned its topic", WAIT, || {
        decoy.poll(Duration::from_millis(100));
        match decoy.assignment() {
            Ok(a) if a.count() > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let polling = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                decoy.poll(Duration::from_millis(100));
            }
            decoy
        })
    };

    let mut config = Config::new(src, dst, &[&format!("{prefix}\\.t[0-9]+")], &group);
    config.topic_refresh_interval = "10m".to_string();
    let mut strait = Strait::start_with_env(
        "strait",
        &config,
        &[("RUST_LOG", "info,strait_actors::source=debug")],
    );
    for t in &topics {
        strait.wait_for_copy(dst, t, partitions, records.len() as i64, WAIT);
    }
    for t in &topics {
        let report = id_report(
            &read_topic(src, t, partitions),
            &read_topic(dst, t, partitions),
        );
        assert_eq!(report.lost, 0, "{t}: {report:?}");
        assert_eq!(report.destination_records, records.len(), "{t}: {report:?}");
    }
    assert!(
        strait
            .log()
            .contains("subscription change held until the group's join ends"),
        "no subscription change arrived during the join, so this test did not exercise the hold:\n{}",
        strait.log_tail(60)
    );
    strait.stop();
    stop.store(true, Ordering::SeqCst);
    drop(polling.join().expect("decoy polling thread"));
}
