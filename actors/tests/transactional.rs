//! Transactional writers on librdkafka's mock cluster: their delivery reports
//! are served by one shared thread, not a polling thread per producer
//! (librdkafka's commit waits until every record's report is served, so
//! without that thread no commit here would return before its 60 s timeout),
//! and a writer keeps at most one `batch.size` of records unacknowledged.
//! (The exactly-once fault tests in the root crate run the whole path
//! against real Kafka.)

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{OwnedMessage, Timestamp};
use rdkafka::mocking::MockCluster;
use strait_actors::batch::Batch;
use strait_actors::offset_store::{StoredOffset, OFFSETS_TOPIC};
use strait_actors::transactional::TransactionalWriter;
use strait_actors::ClusterSpec;

const WRITERS: i32 = 20;
const RECORDS: i64 = 50;

fn cluster(bootstrap: &str) -> ClusterSpec {
    ClusterSpec {
        alias: "dst".to_string(),
        properties: BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]),
    }
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
        for p in 0..WRITERS {
            let writer = TransactionalWriter::open(
                &spec,
                format!("strait.mock.events.{p}"),
                Duration::from_millis(100),
            )
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

#[test]
fn a_writer_queues_at_most_one_batch_size_of_unacknowledged_bytes() {
    // Each record is 15 bytes of key and value; a batch is 400 bytes.
    const BATCH: usize = 400;
    const RECORD: usize = 15;
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 1, 1).expect("topic");
    mock.create_topic(OFFSETS_TOPIC, 1, 1).expect("topic");
    let mut spec = cluster(&mock.bootstrap_servers());
    spec.properties
        .insert("batch.size".to_string(), BATCH.to_string());
    let runtime = runtime();
    let outcome: Result<usize, String> = runtime.block_on(async {
        let writer = TransactionalWriter::open(
            &spec,
            "strait.mock.paced".into(),
            Duration::from_millis(100),
        )
        .await
        .map_err(|e| format!("open: {e}"))?;
        // Answers slower than the sends: without the bound, all 2,000 bytes
        // would be queued long before the first acknowledgement.
        mock.broker_round_trip_time(1, Duration::from_millis(100))
            .map_err(|e| format!("round trip: {e}"))?;
        writer.begin().map_err(|e| format!("begin: {e}"))?;
        let mut most = 0;
        let mut batch = Batch::with_capacity(125, 125 * RECORD);
        for offset in 0..125i64 {
            batch.push(&OwnedMessage::new(
                Some(format!("value-{offset:04}").into_bytes()),
                Some(b"key-0".to_vec()),
                "events".to_string(),
                Timestamp::CreateTime(1_700_000_000_000 + offset),
                0,
                offset,
                None,
            ));
        }
        for record in batch.iter() {
            assert_eq!(
                record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len),
                RECORD
            );
            writer
                .send("events", Some(0), &record, &[])
                .await
                .map_err(|e| format!("send: {e}"))?;
            most = most.max(writer.unacked_bytes());
        }
        commit(&writer, "k", 125).await?;
        if writer.unacked_bytes() != 0 {
            return Err(format!(
                "{} bytes unacknowledged after the commit",
                writer.unacked_bytes()
            ));
        }
        Ok(most)
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let most = outcome.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        most < BATCH + RECORD,
        "at most one batch.size ({BATCH}) plus one record unacknowledged, saw {most}"
    );
    assert!(
        most >= BATCH,
        "the bound was never reached (saw {most}): the test shows nothing"
    );
}
