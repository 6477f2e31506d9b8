//! Transactional writers on librdkafka's mock cluster: their delivery reports
//! are served by one shared thread, not a polling thread per producer
//! (librdkafka's commit waits until every record's report is served, so
//! without that thread no commit here would return before its 60 s timeout),
//! records leave one produce request's worth at a time, and writers sharing
//! a budget each fill an equal share of it.
//! (The exactly-once fault tests in the root crate run the whole path
//! against real Kafka.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{OwnedMessage, Timestamp};
use rdkafka::mocking::MockCluster;
use strait_actors::batch::Batch;
use strait_actors::offset_store::{StoredOffset, OFFSETS_TOPIC};
use strait_actors::transactional::{FillBudget, TransactionalWriter};
use strait_actors::ClusterSpec;

const WRITERS: i32 = 20;
const RECORDS: i64 = 50;

fn cluster(bootstrap: &str) -> ClusterSpec {
    ClusterSpec {
        alias: "dst".to_string(),
        properties: BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]),
    }
}

/// The budget a flow's writers share by default.
fn budget() -> Arc<FillBudget> {
    FillBudget::new(FillBudget::DEFAULT_BYTES, FillBudget::MIN_SHARE)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn batch(partition: i32) -> Batch {
    let mut batch = Batch::with_capacity(RECORDS as usize, 64 * RECORDS as usize);
    for offset in 0..RECORDS {
        batch.push(&OwnedMessage::new(
            Some(format!("value {offset}").into_bytes()),
            Some(format!("key {partition}").into_bytes()),
            "events".to_string(),
            Timestamp::CreateTime(1_700_000_000_000 + offset),
            partition,
            offset,
            None,
        ));
    }
    batch
}

/// `count` records of partition 0 with no key and a `size`-byte value.
fn values(count: i64, size: usize) -> Batch {
    let mut records = Batch::with_capacity(count as usize, count as usize * (size + 64));
    for offset in 0..count {
        records.push(&OwnedMessage::new(
            Some(vec![b'v'; size]),
            None,
            "events".to_string(),
            Timestamp::CreateTime(1_700_000_000_000 + offset),
            0,
            offset,
            None,
        ));
    }
    records
}

/// Commits `writer`'s open transaction, with the offset-map entry saying
/// `next_offset`; the error says why not, or that it never returned.
async fn commit(writer: &TransactionalWriter, key: &str, next_offset: i64) -> Result<(), String> {
    let stored = StoredOffset {
        flow: "mock".into(),
        source_cluster: "src".into(),
        next_offset,
    };
    match tokio::time::timeout(Duration::from_secs(120), writer.commit(key, &stored)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{key}: {e:?}")),
        Err(_) => Err(format!("{key}: commit never returned")),
    }
}

/// One transaction holding `batch(partition)`.
async fn copy_batch(
    writer: &TransactionalWriter,
    partition: i32,
    next_offset: i64,
) -> Result<(), String> {
    writer.begin().map_err(|e| format!("begin: {e}"))?;
    for record in batch(partition).iter() {
        writer
            .send("events", Some(partition), &record, &[])
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    commit(
        writer,
        &format!("strait.mock/events/{partition}"),
        next_offset,
    )
    .await
}

/// Names of this process's threads (`comm`, at most 15 bytes).
fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        panic!("this test reads /proc/self/task (Linux)");
    };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

#[test]
fn writers_commit_with_their_reports_served_by_one_shared_thread() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", WRITERS, 1).expect("topic");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let spec = cluster(&mock.bootstrap_servers());
    let runtime = runtime();
    // Failures come out of the runtime before they are asserted: a commit
    // that never returns keeps retrying on the blocking pool, and dropping
    // the runtime would wait for it.
    let outcome: Result<(), String> = runtime.block_on(async {
        let mut writers = Vec::new();
        let budget = budget();
        for p in 0..WRITERS {
            let writer =
                TransactionalWriter::open(&spec, format!("strait.mock.events.{p}"), &budget)
                    .await
                    .expect("open");
            writers.push(writer);
        }
        let names = thread_names();
        let polling: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("producer pollin"))
            .collect();
        assert!(
            polling.is_empty(),
            "{} producers should have no polling thread each: {polling:?}",
            WRITERS
        );
        let shared = names
            .iter()
            .filter(|n| n.as_str() == "strait-delivery")
            .count();
        assert_eq!(shared, 1, "one shared delivery-report thread: {names:?}");

        // Two rounds, so that a writer's second transaction is served too.
        for round in 0..2 {
            let commits: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(p, writer)| copy_batch(writer, p as i32, (round + 1) * RECORDS))
                .collect();
            let failed: Vec<String> = futures::future::join_all(commits)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if !failed.is_empty() {
                return Err(format!("round {round}: {failed:?}"));
            }
        }

        // Writers that close stop being served; the others still commit.
        let kept = writers.split_off(WRITERS as usize / 2);
        drop(writers);
        for (i, writer) in kept.iter().enumerate() {
            let p = WRITERS / 2 + i as i32;
            copy_batch(writer, p, 3 * RECORDS)
                .await
                .map_err(|e| format!("after half the writers closed: {e}"))?;
        }
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(failed) = outcome {
        panic!("{failed}");
    }
}

/// Keeps the messages of `debug` events from clusters named `cluster`
/// (librdkafka's log lines come from its own threads, so the subscriber is
/// global; other tests' clusters have other names).
struct Capture {
    cluster: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Fields {
    cluster: String,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "cluster" {
            self.cluster = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.cluster == self.cluster {
            self.lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(fields.message);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// What librdkafka logs (with `debug=msg`) when the records queued for a
/// partition are more than one produce request carries.
const SPLIT: &str = "No more space in current MessageSet";

#[test]
fn records_leave_one_produce_request_at_a_time() {
    // Each record is 5 bytes of key, 40 of value and 36 of framing; a
    // request carries 4,000 bytes.
    const RECORDS: i64 = 400;
    let lines = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Capture {
        cluster: "one-request",
        lines: Arc::clone(&lines),
    })
    .expect("the only test here that sets a subscriber");
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let mut spec = cluster(&mock.bootstrap_servers());
    spec.alias = "one-request".to_string();
    spec.properties
        .insert("batch.size".to_string(), "4000".to_string());
    spec.properties
        .insert("debug".to_string(), "msg".to_string());
    let records = || {
        let mut records = Batch::with_capacity(RECORDS as usize, 64 * RECORDS as usize);
        for offset in 0..RECORDS {
            records.push(&OwnedMessage::new(
                Some(vec![b'v'; 40]),
                Some(b"key-0".to_vec()),
                "events".to_string(),
                Timestamp::CreateTime(1_700_000_000_000 + offset),
                0,
                offset,
                None,
            ));
        }
        records
    };
    let split = || {
        lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|line| line.contains(SPLIT))
            .count()
    };
    let runtime = runtime();
    let outcome: Result<(usize, usize, usize), String> = runtime.block_on(async {
        let writer = TransactionalWriter::open(&spec, "strait.mock.one-request".into(), &budget())
            .await
            .map_err(|e| format!("open: {e}"))?;
        // As a copier writes: flushing whenever the next record would not
        // go out in the same request.
        let mut flushes = 0;
        writer.begin().map_err(|e| format!("begin: {e}"))?;
        for record in records().iter() {
            if !writer.fits(&record) {
                writer.flush().await.map_err(|e| format!("flush: {e}"))?;
                flushes += 1;
            }
            writer
                .send("events", Some(0), &record, &[])
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        commit(&writer, "k", RECORDS).await?;
        let split_when_flushed = split();
        // The same records in one transaction: the check below can fail.
        writer.begin().map_err(|e| format!("begin: {e}"))?;
        for record in records().iter() {
            writer
                .send("events", Some(0), &record, &[])
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        commit(&writer, "k", 2 * RECORDS).await?;
        Ok((flushes, split_when_flushed, split()))
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let (flushes, split_when_flushed, split_unflushed) = outcome.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        flushes > 1,
        "{RECORDS} records of 81 bytes should not fit one 4,000-byte request"
    );
    assert_eq!(
        split_when_flushed, 0,
        "what was queued between flushes left in one request each time"
    );
    assert!(
        split_unflushed > 0,
        "all {RECORDS} records queued at once should need more than one request \
         (else this test shows nothing)"
    );
}

#[test]
fn the_first_record_after_a_flush_fits_however_large() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let mut spec = cluster(&mock.bootstrap_servers());
    spec.properties
        .insert("batch.size".to_string(), "4000".to_string());
    let records = values(2, 8_000);
    let runtime = runtime();
    let fits: Result<[bool; 3], String> = runtime.block_on(async {
        let writer = TransactionalWriter::open(&spec, "strait.mock.large".into(), &budget())
            .await
            .map_err(|e| format!("open: {e}"))?;
        writer.begin().map_err(|e| format!("begin: {e}"))?;
        let mut iter = records.iter();
        let first = iter.next().ok_or("no record")?;
        let second = iter.next().ok_or("no record")?;
        let empty = writer.fits(&first);
        writer
            .send("events", Some(0), &first, &[])
            .await
            .map_err(|e| format!("send: {e}"))?;
        let after_one = writer.fits(&second);
        writer.flush().await.map_err(|e| format!("flush: {e}"))?;
        let after_flush = writer.fits(&second);
        commit(&writer, "k", 1).await?;
        Ok([empty, after_one, after_flush])
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let [empty, after_one, after_flush] = fits.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        empty,
        "an empty request takes the first record, however large"
    );
    assert!(!after_one, "and then nothing more");
    assert!(after_flush, "after a flush, the next record fits again");
}

/// How many of `records` `writer` takes (from the first) before one no
/// longer fits; then flushes, so the next count starts empty.
async fn fill(writer: &TransactionalWriter, records: &Batch) -> Result<usize, String> {
    let mut taken = 0;
    for record in records.iter() {
        if !writer.fits(&record) {
            break;
        }
        writer
            .send("events", Some(0), &record, &[])
            .await
            .map_err(|e| format!("send: {e}"))?;
        taken += 1;
    }
    writer.flush().await.map_err(|e| format!("flush: {e}"))?;
    Ok(taken)
}

#[test]
fn writers_sharing_a_budget_each_fill_an_equal_share_of_it() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let spec = cluster(&mock.bootstrap_servers());
    let records = values(100, 1_000);
    let wire = records.iter().next().map(|r| r.wire_size()).unwrap_or(0);
    // 40 records' worth for one writer, far below what a request carries.
    let shared = FillBudget::new(40 * wire, 0);
    let runtime = runtime();
    let counts: Result<[usize; 3], String> = runtime.block_on(async {
        let alone = TransactionalWriter::open(&spec, "strait.mock.share.a".into(), &shared)
            .await
            .map_err(|e| format!("open: {e}"))?;
        alone.begin().map_err(|e| format!("begin: {e}"))?;
        let by_one = fill(&alone, &records).await?;
        let other = TransactionalWriter::open(&spec, "strait.mock.share.b".into(), &shared)
            .await
            .map_err(|e| format!("open: {e}"))?;
        let by_two = fill(&alone, &records).await?;
        drop(other);
        let after_close = fill(&alone, &records).await?;
        commit(&alone, "k", 1).await?;
        Ok([by_one, by_two, after_close])
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let [by_one, by_two, after_close] = counts.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(by_one, 40, "alone, a writer fills the whole budget");
    assert_eq!(by_two, 20, "with a second writer open, half of it");
    assert_eq!(after_close, 40, "and the whole again once that one closed");
}
