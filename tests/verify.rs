//! `strait verify` on real clusters: a copy made by `strait run` is in sync
//! (exit 0); missing, duplicated, foreign and changed records are counted
//! per partition (exit 1); `--topic`, `--partition`, `--from`/`--to` limit
//! what is compared; a bad flow, topic or config exits 2; an unreachable
//! cluster exits 1. Also the library's count by payload id.
//!
//! Most tests write the "copy" themselves, record by record, so that each
//! kind of difference is placed exactly; each uses its own topics.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strait::verify::ids::{count_by_id, value_id};
use strait_actors::ClusterSpec;
use support::cluster::shared_pair;
use support::records::{create_topic, id_payload, produce, unique_name, Out};
use support::strait::{free_port, run_strait, write_config_file, CmdOutput, Config, Strait};

const WAIT: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// `strait verify -c <config> ARGS...` with a config for one flow from
/// `src` to `dst` copying `topics`.
fn verify(src: &str, dst: &str, topics: &[&str], args: &[&str]) -> CmdOutput {
    let config = Config::new(src, dst, topics, &unique_name("strait.verify"));
    let (_dir, path) = write_config_file("strait.toml", &config.to_toml());
    let mut all = vec!["verify", "--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    run_strait(&all, &[])
}

fn assert_exit(out: &CmdOutput, code: i32, what: &str) {
    assert_eq!(out.code, Some(code), "{what}\n{}", out.describe());
}

/// The result column of `partition`'s row in the table of `topic`.
fn row<'a>(out: &'a CmdOutput, topic: &str, partition: i32) -> &'a str {
    let table = out
        .stdout
        .split("\n\n")
        .find(|block| block.starts_with(&format!("{topic} -> ")))
        .unwrap_or_else(|| panic!("no table for {topic}\n{}", out.describe()));
    table
        .lines()
        .skip(2)
        .find(|line| line.split_whitespace().next() == Some(&partition.to_string()))
        .unwrap_or_else(|| {
            panic!(
                "no row for partition {partition} of {topic}\n{}",
                out.describe()
            )
        })
}

/// `n` records for `partition` with ids from `first`, a key, a header and
/// fixed timestamps (`base + i` ms), so that writing them again elsewhere
/// gives identical records.
fn records(partition: i32, first: u64, n: u64, base: i64) -> Vec<Out> {
    (first..first + n)
        .map(|i| Out {
            partition,
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(id_payload(i, 32)),
            headers: vec![
                ("seq".to_string(), Some(i.to_string().into_bytes())),
                ("null".to_string(), None),
            ],
            timestamp: Some(base + i as i64),
        })
        .collect()
}

#[test]
fn a_copy_made_by_strait_run_is_in_sync_and_exits_0() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("vfy-run");
    create_topic(src, &topic, 3);
    let base = now_ms() - 600_000;
    let mut all = Vec::new();
    for p in 0..3 {
        all.extend(records(p, p as u64 * 1000, 400, base));
    }
    // Tombstones and empty values too.
    all.push(Out {
        partition: 1,
        key: Some(b"gone".to_vec()),
        value: None,
        headers: vec![],
        timestamp: Some(base),
    });
    all.push(Out::value(2, Vec::new()));
    produce(src, &topic, &all);
    assert_eq!(all.len(), 1202);

    let mut strait = Strait::start(
        "strait",
        &Config::new(src, dst, &[&topic], &unique_name("strait.vfy-run")),
    );
    strait.wait_for_copy(dst, &topic, 3, all.len() as i64, WAIT);
    strait.stop();

    let out = verify(src, dst, &[&topic], &[]);
    assert_exit(&out, 0, "a complete copy is in sync");
    assert!(
        out.stdout.contains(&format!(
            "{topic} -> {topic}: in sync (3 partitions, 1,{:03} records)",
            all.len() - 1000
        )),
        "{}",
        out.describe()
    );
    for p in 0..3 {
        assert!(
            row(&out, &topic, p).ends_with("in sync"),
            "{}",
            out.describe()
        );
    }
    assert!(
        out.stdout
            .ends_with("1 topic, 3 partitions compared: in sync\n"),
        "{}",
        out.describe()
    );
}

/// A source topic of 3 partitions and a hand-made copy with: partition 0
/// missing 5 records in the middle and 10 at the end; partition 1 with a
/// replay of 10 records and one foreign record; partition 2 with one
/// record's header changed.
fn damaged_copy() -> (String, String, String, i64) {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("vfy-dmg");
    create_topic(src, &topic, 3);
    create_topic(dst, &topic, 3);
    let base = now_ms() - 3_600_000;
    let p0 = records(0, 0, 100, base);
    let p1 = records(1, 1000, 100, base);
    let p2 = records(2, 2000, 100, base);
    produce(src, &topic, &[p0.clone(), p1.clone(), p2.clone()].concat());

    let mut copy = Vec::new();
    copy.extend(p0[..40].iter().cloned());
    copy.extend(p0[45..90].iter().cloned());
    copy.extend(p1[..60].iter().cloned());
    copy.extend(p1[50..60].iter().cloned());
    copy.push(Out::value(1, b"not from the source".to_vec()));
    copy.extend(p1[60..].iter().cloned());
    let mut changed = p2.clone();
    changed[70].headers[0].1 = Some(b"changed".to_vec());
    copy.extend(changed);
    produce(dst, &topic, &copy);
    (src.to_string(), dst.to_string(), topic, base)
}

#[test]
fn missing_duplicated_foreign_and_changed_records_are_counted_per_partition_and_exit_1() {
    let (src, dst, topic, _) = damaged_copy();
    let out = verify(&src, &dst, &[&topic], &[]);
    assert_exit(&out, 1, "a damaged copy is a mismatch");
    assert!(
        out.stdout.contains(&format!(
            "{topic} -> {topic}: NOT IN SYNC (3 of 3 partitions)"
        )),
        "{}",
        out.describe()
    );
    let p0 = row(&out, &topic, 0);
    assert_eq!(
        p0.split_whitespace().take(3).collect::<Vec<_>>(),
        ["0", "100", "85"],
        "partition, source records, destination records: {p0}"
    );
    assert!(
        p0.ends_with("  missing 15 (first at source offset 40)"),
        "{p0}"
    );
    let p1 = row(&out, &topic, 1);
    assert!(
        p1.contains(
            "extra or duplicated 11 (10 duplicated, first at destination offset 60; \
                     1 not from the source, first at destination offset 70)"
        ),
        "{p1}"
    );
    assert!(!p1.contains("missing"), "{p1}");
    let p2 = row(&out, &topic, 2);
    assert!(
        p2.contains("missing 1 (first at source offset 70), extra or duplicated 1"),
        "{p2}"
    );
    assert!(
        out.stdout.contains(
            "1 topic, 3 partitions compared: NOT IN SYNC: 1 topic and 3 partitions differ \
             (missing 16, extra or duplicated 12)"
        ),
        "{}",
        out.describe()
    );
}

#[test]
fn partition_and_time_options_limit_what_is_compared() {
    let (src, dst, topic, base) = damaged_copy();

    let out = verify(&src, &dst, &[&topic], &["--partition", "1-2"]);
    assert_exit(&out, 1, "partitions 1 and 2 differ");
    assert!(
        out.stdout.contains("(2 of 2 partitions)"),
        "{}",
        out.describe()
    );
    assert!(!out.stdout.contains("missing 15"), "{}", out.describe());

    // Records with timestamps base+1000+i (partition 1) and base+2000+i
    // (partition 2) are untouched in [base+1000, base+1050) and
    // [base+2000, base+2070): partition 0's are all before.
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .expect("a valid time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let out = verify(
        &src,
        &dst,
        &[&topic],
        &[
            "--partition",
            "2",
            "--from",
            &at(base + 2000),
            "--to",
            &at(base + 2070),
        ],
    );
    assert_exit(
        &out,
        0,
        "the untouched time range of partition 2 is in sync",
    );
    assert!(
        out.stdout.contains(&format!(
            "{topic} -> {topic}: in sync (1 partition, 70 records)"
        )),
        "{}",
        out.describe()
    );
    let out = verify(
        &src,
        &dst,
        &[&topic],
        &["--partition", "0", "--to", &at(base + 40)],
    );
    assert_exit(&out, 0, "partition 0 before its gap is in sync");
}

#[test]
fn topic_option_picks_topics_and_a_missing_destination_topic_is_all_missing() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let prefix = unique_name("vfy-pick");
    let (copied, uncopied) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let base = now_ms() - 60_000;
    for t in [&copied, &uncopied] {
        create_topic(src, t, 1);
        produce(src, t, &records(0, 0, 20, base));
    }
    create_topic(dst, &copied, 1);
    produce(dst, &copied, &records(0, 0, 20, base));
    let pattern = format!("{prefix}-.*");

    let out = verify(src, dst, &[&pattern], &["--topic", &copied]);
    assert_exit(&out, 0, "only the copied topic is compared");
    assert!(!out.stdout.contains(&uncopied), "{}", out.describe());

    let out = verify(src, dst, &[&pattern], &[]);
    assert_exit(&out, 1, "the other topic was never copied");
    assert!(
        out.stdout.contains(&format!(
            "! topic `{uncopied}` does not exist on destination cluster `destination`"
        )),
        "{}",
        out.describe()
    );
    let r = row(&out, &uncopied, 0);
    assert!(
        r.contains(" 20  ") && r.contains("no partition  missing 20"),
        "{r}"
    );
}

#[test]
fn an_unknown_flow_or_topic_or_a_bad_config_exits_2() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("vfy-args");

    let out = verify(src, dst, &[&topic], &["--flow", "nope"]);
    assert_exit(&out, 2, "unknown flow");
    assert!(
        out.stderr
            .contains("--flow \"nope\": no such flow; flows in the config: source-to-destination"),
        "{}",
        out.describe()
    );

    let out = verify(src, dst, &[&topic], &["--topic", "something-else"]);
    assert_exit(&out, 2, "a topic no flow replicates");
    assert!(
        out.stderr
            .contains("--topic \"something-else\": not replicated by any flow"),
        "{}",
        out.describe()
    );

    let out = verify(src, dst, &[&topic], &["--from", "yesterday"]);
    assert_exit(&out, 2, "a bad time");

    let (_dir, path) = write_config_file("strait.toml", "[[flows]]\nsource = 1\n");
    let out = run_strait(&["verify", "-c", path.to_str().unwrap()], &[]);
    assert_exit(&out, 2, "a bad config");
    assert!(out.stderr.contains("bad config"), "{}", out.describe());
}

#[test]
fn an_unreachable_destination_exits_1_naming_the_cluster() {
    let (source, _) = shared_pair();
    let topic = unique_name("vfy-down");
    create_topic(source.bootstrap(), &topic, 1);
    let nowhere = format!("127.0.0.1:{}", free_port());
    let out = verify(source.bootstrap(), &nowhere, &[&topic], &[]);
    assert_exit(&out, 1, "the destination cannot be read");
    assert!(
        out.stderr.contains("cluster `destination`"),
        "{}",
        out.describe()
    );
}

fn cluster(alias: &str, bootstrap: &str) -> ClusterSpec {
    ClusterSpec {
        alias: alias.to_string(),
        properties: [("bootstrap.servers".to_string(), bootstrap.to_string())].into(),
    }
}

#[test]
fn count_by_id_finds_lost_duplicated_foreign_and_misplaced_records() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("vfy-ids");
    create_topic(src, &topic, 2);
    create_topic(dst, &topic, 2);
    let source_records: Vec<Out> = (0..100u64)
        .map(|id| Out::value((id % 2) as i32, id_payload(id, 8)))
        .collect();
    produce(src, &topic, &source_records);

    // Lose 4 and 7, copy 10 and 11 twice, put 13 in the wrong partition,
    // add a foreign id and a record without one.
    let mut copy: Vec<Out> = source_records
        .iter()
        .filter(|r| ![4, 7, 13].contains(&value_id(r.value.as_deref()).unwrap()))
        .cloned()
        .collect();
    copy.push(Out::value(0, id_payload(10, 8)));
    copy.push(Out::value(1, id_payload(11, 8)));
    copy.push(Out::value(0, id_payload(13, 8)));
    copy.push(Out::value(1, id_payload(5000, 8)));
    copy.push(Out::value(1, b"no id".to_vec()));
    produce(dst, &topic, &copy);

    let report = count_by_id(
        &cluster("source", src),
        &cluster("destination", dst),
        &topic,
        &topic,
        |m| value_id(rdkafka::Message::payload(m)),
    )
    .expect("both topics can be read");
    assert_eq!(report.source_records, 100, "{report}");
    assert_eq!(report.destination_records, 102, "{report}");
    assert_eq!(report.lost, 2, "{report}");
    assert_eq!(report.lost_examples, vec![4, 7], "{report}");
    assert_eq!(report.duplicates, 2, "{report}");
    assert_eq!(report.unexpected, 2, "{report}");
    assert_eq!(report.wrong_partition, 1, "{report}");
    assert!(report.out_of_order.is_empty(), "{report}");
    assert!(!report.at_least_once());
}
