//! Exactly-once lanes on real brokers (`strait_actors::lane`): one
//! transactional producer writing the records of many partitions, each
//! transaction carrying their offset-map entries and ending early once
//! every partition in it is caught up; a new owner of a lane
//! fencing the old one; an aborted transaction failing its batches and
//! refusing the rest of their epoch, and, with `on_error = "skip"`, the
//! next attempt leaving out the record the destination refused; a lane
//! that panics failing its partitions back to the offset map and going on
//! at the same address; a lane whose transaction outlived the coordinator's
//! timeout (which fences its producer) opening again. And the
//! lane group (`strait_actors::lane_ownership`): instances divide a flow's
//! lanes through a consumer group on the destination, and a leaving
//! instance's lanes move to the others.
//!
//! The lane is driven directly, as copiers drive it: each batch is
//! registered with its partition's progress, and its acknowledgement says
//! whether its transaction committed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use strait_actors::batch::Batch;
use strait_actors::copier::InjectedAt;
use strait_actors::destination::WriteBatch;
use strait_actors::lane::{Lane, LaneOpened, LanePanic, LaneParts, StopLane};
use strait_actors::lane_ownership::{
    ensure_lanes_topic, LaneOwnership, LanesAssigned, LanesRevoked,
};
use strait_actors::progress::PartitionProgress;
use strait_actors::{offset_store, ClusterSpec, OnError, ReplicationError, Tuning};
use support::cluster::shared_pair;
use support::records::{create_topic, read_topic, unique_name, Ts};

/// Bound on every wait for the brokers.
const WAIT: Duration = Duration::from_secs(60);

/// An interval no test waits out: transactions end by size or on stop.
const LONG: Duration = Duration::from_secs(600);

fn destination() -> ClusterSpec {
    let (_, dst) = shared_pair();
    ClusterSpec {
        alias: "destination".into(),
        properties: BTreeMap::from([(
            "bootstrap.servers".to_string(),
            dst.bootstrap().to_string(),
        )]),
    }
}

fn parts(group_id: &str, interval: Duration, max_records: usize, on_error: OnError) -> LaneParts {
    LaneParts {
        destination: destination(),
        group_id: group_id.to_string(),
        flow: "lanes-test".into(),
        source_cluster: "source".into(),
        lane: 0,
        lanes: 1,
        tuning: Tuning {
            transaction_interval: interval,
            transaction_max_records: max_records,
            ..Tuning::default()
        },
        on_error,
        injected_panic: None,
    }
}

/// Source records `first..` of a partition, with a header and a timestamp.
fn batch(first: i64, values: &[Vec<u8>]) -> Batch {
    let mut batch = Batch::with_capacity(values.len(), 1 << 16);
    for (i, value) in values.iter().enumerate() {
        let offset = first + i as i64;
        let headers = OwnedHeaders::new().insert(Header {
            key: "origin",
            value: Some(format!("offset-{offset}").as_bytes()),
        });
        batch.push(&OwnedMessage::new(
            Some(value.clone()),
            Some(format!("key-{offset}").into_bytes()),
            "source-topic".into(),
            Timestamp::CreateTime(1_700_000_000_000 + offset),
            0,
            offset,
            Some(headers),
        ));
    }
    batch
}

fn values(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

/// One source partition as a copier holds it.
struct Partition {
    source_topic: Arc<str>,
    destination_topic: Arc<str>,
    partition: i32,
    progress: Arc<PartitionProgress>,
}

impl Partition {
    fn new(source_topic: &str, destination_topic: &str, partition: i32) -> Self {
        Self {
            source_topic: Arc::from(source_topic),
            destination_topic: Arc::from(destination_topic),
            partition,
            progress: PartitionProgress::new(),
        }
    }

    /// Registers `batch` with the partition's progress and sends it, as a
    /// copier with more to send after it.
    async fn write(&self, lane: &Addr<Lane>, batch: Batch) -> Result<(), ReplicationError> {
        self.write_with(lane, batch, false).await
    }

    /// [`Partition::write`], as a copier that has caught up after `batch`.
    async fn write_last(&self, lane: &Addr<Lane>, batch: Batch) -> Result<(), ReplicationError> {
        self.write_with(lane, batch, true).await
    }

    async fn write_with(
        &self,
        lane: &Addr<Lane>,
        batch: Batch,
        at_head: bool,
    ) -> Result<(), ReplicationError> {
        let (first, next) = (
            batch.first_offset().expect("a batch with records"),
            batch.next_offset().expect("a batch with records"),
        );
        let ack = self
            .progress
            .register(batch.len(), batch.bytes(), first, next, None, None);
        lane.send(WriteBatch {
            batch,
            source_topic: Arc::clone(&self.source_topic),
            topic: Arc::clone(&self.destination_topic),
            partition: self.partition,
            ack,
            alone: false,
            at_head,
            budget: None,
        })
        .await
        .expect("the lane is running")
    }

    /// Waits until everything sent is settled: acknowledged or failed.
    async fn settled(&self) {
        let deadline = Instant::now() + WAIT;
        while self.progress.in_flight_batches() > 0 && self.progress.failure().is_none() {
            assert!(
                Instant::now() < deadline,
                "{}[{}]: batches still unsettled after {WAIT:?}",
                self.source_topic,
                self.partition
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs a blocking helper off the arbiter the lane runs on.
async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking helper")
}

/// The values of each partition of `topic` visible to read_committed readers.
fn committed_values(topic: &str, partitions: i32) -> Vec<Vec<String>> {
    read_topic(shared_pair().1.bootstrap(), topic, partitions)
        .into_iter()
        .map(|records| {
            records
                .iter()
                .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into())
                .collect()
        })
        .collect()
}

/// Waits until `topic` reads as `expected` for read_committed readers: a
/// commit returns once the coordinator logged it, and the markers that
/// make its records readable reach the partitions just after.
fn wait_for_values(topic: &str, expected: &[&[&str]]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let values = committed_values(topic, expected.len() as i32);
        if values == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: read_committed sees {values:?} after {WAIT:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`committed_values`], off the arbiter.
async fn committed_values_now(topic: &str, partitions: i32) -> Vec<Vec<String>> {
    let topic = topic.to_string();
    off(move || committed_values(&topic, partitions)).await
}

/// The committed offset-map entries of `group_id`: (topic, partition) ->
/// next offset, the newest entry of each key.
fn map_entries(group_id: &str) -> BTreeMap<(String, i32), i64> {
    let records = read_topic(shared_pair().1.bootstrap(), offset_store::OFFSETS_TOPIC, 1);
    let prefix = format!("{group_id}/");
    let mut entries = BTreeMap::new();
    for record in records.into_iter().flatten() {
        let key = String::from_utf8(record.key.unwrap_or_default()).expect("utf-8 key");
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let (topic, partition) = rest.rsplit_once('/').expect("topic/partition");
        let value: serde_json::Value =
            serde_json::from_slice(&record.value.unwrap_or_default()).expect("JSON value");
        entries.insert(
            (topic.to_string(), partition.parse().expect("partition")),
            value["next_offset"].as_i64().expect("next_offset"),
        );
    }
    entries
}

/// The offset map of `group_id` once it has `entries` entries (see
/// [`wait_for_values`]).
fn wait_for_map(group_id: &str, entries: usize) -> BTreeMap<(String, i32), i64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let map = map_entries(group_id);
        if map.len() >= entries || Instant::now() >= deadline {
            return map;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn start_lane(parts: LaneParts) -> Addr<Lane> {
    // Logs the lane's and librdkafka's messages when RUST_LOG asks.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    offset_store::ensure_topic(&parts.destination)
        .await
        .expect("the offset map exists");
    let lane = Lane::new(parts).start();
    lane.send(LaneOpened)
        .await
        .expect("the lane is running")
        .expect("the lane opens");
    lane
}

#[test]
fn a_lane_commits_records_of_many_partitions_with_their_offset_map_entries_in_one_transaction() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-many");
    create_topic(dst.bootstrap(), &topic, 3);
    let group = unique_name("strait.lanes-many");
    System::new().block_on(async {
        let lane = start_lane(parts(&group, LONG, 10_000, OnError::Fail)).await;
        let partitions: Vec<Partition> = (0..3)
            .map(|p| Partition::new("orders", &topic, p))
            .collect();
        partitions[0]
            .write(&lane, batch(10, &values(&["a", "b", "c"])))
            .await
            .expect("queued");
        partitions[1]
            .write(&lane, batch(0, &values(&["d"])))
            .await
            .expect("queued");
        partitions[2]
            .write(&lane, batch(5, &values(&["e", "f"])))
            .await
            .expect("queued");
        partitions[0]
            .write(&lane, batch(13, &values(&["g"])))
            .await
            .expect("queued");

        // Queued and sent, but the transaction is open: nothing is visible
        // and nothing is acknowledged.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            committed_values_now(&topic, 3).await,
            vec![Vec::<String>::new(); 3]
        );
        for p in &partitions {
            assert!(
                p.progress.in_flight_batches() > 0,
                "{}: acknowledged before its commit",
                p.partition
            );
        }
        let group_now = group.clone();
        assert!(
            off(move || map_entries(&group_now)).await.is_empty(),
            "no map entry before the commit"
        );

        lane.send(StopLane).await.expect("the lane stops");
        for p in &partitions {
            p.settled().await;
            assert!(p.progress.failure().is_none(), "{:?}", p.progress.failure());
        }
        assert_eq!(
            partitions
                .iter()
                .map(|p| p.progress.committable())
                .collect::<Vec<_>>(),
            [Some(14), Some(1), Some(7)],
            "each partition is acknowledged up to its last record"
        );
    });
    wait_for_values(&topic, &[&["a", "b", "c", "g"], &["d"], &["e", "f"]]);
    let records = read_topic(dst.bootstrap(), &topic, 3);
    let first = &records[0][0];
    assert_eq!(first.key.as_deref(), Some(&b"key-10"[..]));
    assert_eq!(
        first.headers,
        [("origin".to_string(), Some(b"offset-10".to_vec()))]
    );
    assert!(
        matches!(first.timestamp, Ts::CreateTime(1_700_000_000_010)),
        "{:?}",
        first.timestamp
    );
    assert_eq!(
        wait_for_map(&group, 3),
        BTreeMap::from([
            (("orders".to_string(), 0), 14),
            (("orders".to_string(), 1), 1),
            (("orders".to_string(), 2), 7),
        ])
    );
}

#[test]
fn a_lanes_transaction_commits_when_its_interval_ends() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-interval");
    create_topic(dst.bootstrap(), &topic, 2);
    let group = unique_name("strait.lanes-interval");
    System::new().block_on(async {
        let lane = start_lane(parts(
            &group,
            Duration::from_millis(200),
            10_000,
            OnError::Fail,
        ))
        .await;
        let partitions: Vec<Partition> = (0..2)
            .map(|p| Partition::new("orders", &topic, p))
            .collect();
        partitions[0]
            .write(&lane, batch(0, &values(&["a"])))
            .await
            .expect("queued");
        partitions[1]
            .write(&lane, batch(0, &values(&["b"])))
            .await
            .expect("queued");
        // The lane keeps running: only the interval can end the transaction.
        for p in &partitions {
            p.settled().await;
            assert_eq!(p.progress.committable(), Some(1));
        }
        let visible = topic.clone();
        off(move || wait_for_values(&visible, &[&["a"], &["b"]])).await;
        lane.send(StopLane).await.expect("the lane stops");
    });
}

#[test]
fn a_lanes_transaction_ends_once_every_partition_in_it_is_caught_up_before_its_interval() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-caught-up");
    create_topic(dst.bootstrap(), &topic, 2);
    let group = unique_name("strait.lanes-caught-up");
    System::new().block_on(async {
        // Neither the interval nor the size ends a transaction here.
        let lane = start_lane(parts(&group, LONG, 10_000, OnError::Fail)).await;
        let partitions: Vec<Partition> = (0..2)
            .map(|p| Partition::new("orders", &topic, p))
            .collect();
        partitions[0]
            .write_last(&lane, batch(0, &values(&["a"])))
            .await
            .expect("queued");
        partitions[1]
            .write(&lane, batch(0, &values(&["b"])))
            .await
            .expect("queued");
        // Partition 1's copier has more to send: the transaction waits.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for p in &partitions {
            assert_eq!(p.progress.committable(), Some(0), "committed too soon");
        }
        assert_eq!(
            committed_values_now(&topic, 2).await,
            vec![Vec::<String>::new(), Vec::new()]
        );
        // Its last batch: every partition in the transaction is caught up.
        partitions[1]
            .write_last(&lane, batch(1, &values(&["c"])))
            .await
            .expect("queued");
        for p in &partitions {
            p.settled().await;
            assert!(p.progress.failure().is_none(), "{:?}", p.progress.failure());
        }
        assert_eq!(partitions[0].progress.committable(), Some(1));
        assert_eq!(partitions[1].progress.committable(), Some(2));
        let visible = topic.clone();
        off(move || wait_for_values(&visible, &[&["a"], &["b", "c"]])).await;
        let entries = {
            let group = group.clone();
            off(move || wait_for_map(&group, 2)).await
        };
        assert_eq!(
            entries,
            BTreeMap::from([
                (("orders".to_string(), 0), 1),
                (("orders".to_string(), 1), 2)
            ])
        );
        lane.send(StopLane).await.expect("the lane stops");
    });
}

#[test]
fn a_new_owner_of_a_lane_fences_the_old_one_whose_open_transaction_is_never_seen() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-fenced");
    create_topic(dst.bootstrap(), &topic, 1);
    let group = unique_name("strait.lanes-fenced");
    System::new().block_on(async {
        // Two records end a transaction of the old owner.
        let old = start_lane(parts(&group, LONG, 2, OnError::Fail)).await;
        let old_partition = Partition::new("orders", &topic, 0);
        old_partition
            .write(&old, batch(0, &values(&["zombie-1"])))
            .await
            .expect("queued");

        // Another instance takes the lane over: same group, same lane.
        let new = start_lane(parts(&group, LONG, 10_000, OnError::Fail)).await;
        let new_partition = Partition::new("orders", &topic, 0);
        new_partition
            .write(&new, batch(0, &values(&["owner-1", "owner-2"])))
            .await
            .expect("queued");

        // The old owner's transaction fills and tries to commit: fenced.
        old_partition
            .write(&old, batch(1, &values(&["zombie-2"])))
            .await
            .expect("queued");
        old_partition.settled().await;
        let failure = old_partition
            .progress
            .failure()
            .expect("the old owner's batches failed");
        assert!(failure.permanent, "fenced is for good: {failure:?}");
        assert!(failure.reason.contains("fenced"), "{failure:?}");
        // And it writes nothing more.
        old_partition.progress.reset();
        let refused = old_partition
            .write(&old, batch(2, &values(&["zombie-3"])))
            .await;
        assert!(
            matches!(refused, Err(ReplicationError::Fenced { .. })),
            "{refused:?}"
        );

        new.send(StopLane).await.expect("the new owner stops");
        new_partition.settled().await;
        assert!(
            new_partition.progress.failure().is_none(),
            "{:?}",
            new_partition.progress.failure()
        );
        old.send(StopLane).await.expect("the old owner stops");
    });
    // Only the new owner's records are visible.
    wait_for_values(&topic, &[&["owner-1", "owner-2"]]);
    assert_eq!(
        wait_for_map(&group, 1),
        BTreeMap::from([(("orders".to_string(), 0), 2)])
    );
}

#[test]
fn an_aborted_transaction_fails_its_batches_and_the_retry_skips_the_refused_record() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-refused");
    create_topic_with(dst.bootstrap(), &topic, 2, &[("max.message.bytes", "2000")]);
    let group = unique_name("strait.lanes-refused");
    let big = vec![b'x'; 5_000];
    System::new().block_on(async {
        let lane = start_lane(parts(
            &group,
            Duration::from_millis(300),
            10_000,
            OnError::Skip,
        ))
        .await;
        let small = Partition::new("orders", &topic, 0);
        let large = Partition::new("orders", &topic, 1);
        small
            .write(&lane, batch(0, &values(&["a", "b"])))
            .await
            .expect("queued");
        large
            .write(&lane, batch(0, std::slice::from_ref(&big)))
            .await
            .expect("queued");

        // The destination refuses the big record: the transaction aborts,
        // and every batch in it fails, to be copied again.
        small.settled().await;
        large.settled().await;
        for p in [&small, &large] {
            let failure = p
                .progress
                .failure()
                .expect("the aborted transaction's batches failed");
            assert!(!failure.permanent, "an abort is retried: {failure:?}");
        }
        // A batch its copier sent before learning of the abort is refused.
        let late = small.write(&lane, batch(2, &values(&["late"]))).await;
        assert!(
            late.is_err(),
            "a batch after a lost one must not be written"
        );

        // The copiers restart (a new epoch) and send again from the last
        // committed offset; the refused record is skipped this time.
        small.progress.reset();
        large.progress.reset();
        small
            .write(&lane, batch(0, &values(&["a", "b", "late"])))
            .await
            .expect("queued");
        large
            .write(&lane, batch(0, &[big.clone(), b"d".to_vec()]))
            .await
            .expect("queued");
        small.settled().await;
        large.settled().await;
        assert!(
            small.progress.failure().is_none(),
            "{:?}",
            small.progress.failure()
        );
        assert!(
            large.progress.failure().is_none(),
            "{:?}",
            large.progress.failure()
        );
        assert_eq!(large.progress.committable(), Some(2));
        lane.send(StopLane).await.expect("the lane stops");
    });
    wait_for_values(&topic, &[&["a", "b", "late"], &["d"]]);
    assert_eq!(
        wait_for_map(&group, 2),
        BTreeMap::from([
            (("orders".to_string(), 0), 3),
            (("orders".to_string(), 1), 2)
        ])
    );
}

#[test]
fn a_lane_that_panics_fails_its_partitions_back_to_the_offset_map_and_keeps_running() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-panic");
    create_topic(dst.bootstrap(), &topic, 2);
    let group = unique_name("strait.lanes-panic");
    System::new().block_on(async {
        let mut parts = parts(&group, LONG, 10_000, OnError::Fail);
        // Writing orders[1] offset 1 panics, once.
        parts.injected_panic = Some(LanePanic {
            topic: "orders".into(),
            partition: 1,
            at: InjectedAt {
                offset: 1,
                remaining: Arc::new(AtomicU32::new(1)),
            },
        });
        let lane = start_lane(parts).await;
        let partitions: Vec<Partition> = (0..2)
            .map(|p| Partition::new("orders", &topic, p))
            .collect();
        partitions[0]
            .write(&lane, batch(0, &values(&["a"])))
            .await
            .expect("queued");
        partitions[1]
            .write(&lane, batch(0, &values(&["b"])))
            .await
            .expect("queued");
        // The open transaction holds "a" and "b" when the lane panics.
        let panicked = partitions[1]
            .write(&lane, batch(1, &values(&["boom"])))
            .await;
        assert!(
            matches!(&panicked, Err(e) if e.to_string().contains("panicked")),
            "the batch whose write panicked is answered with an error: {panicked:?}"
        );
        assert!(lane.connected(), "the lane keeps its mailbox");
        // Both partitions' copiers are told to copy again from the offset map.
        for p in &partitions {
            let failure = p
                .progress
                .failure()
                .expect("the panic failed the partition's batches");
            assert!(!failure.permanent, "a panic is retried: {failure:?}");
            assert!(
                failure.reason.contains("injected failure in a lane"),
                "the failure names the panic: {failure:?}"
            );
        }
        // A batch its copier sent before learning of it is refused.
        let late = partitions[0]
            .write(&lane, batch(1, &values(&["late"])))
            .await;
        assert!(
            late.is_err(),
            "a batch after a lost one must not be written"
        );

        // The copiers restart (a new epoch) from the last committed offset,
        // none yet: the lane, with a new producer, takes them.
        for p in &partitions {
            p.progress.reset();
        }
        partitions[0]
            .write_last(&lane, batch(0, &values(&["a", "late"])))
            .await
            .expect("queued after the panic");
        partitions[1]
            .write_last(&lane, batch(0, &values(&["b", "boom"])))
            .await
            .expect("queued after the panic");
        for p in &partitions {
            p.settled().await;
            assert!(p.progress.failure().is_none(), "{:?}", p.progress.failure());
            assert_eq!(p.progress.committable(), Some(2));
        }
        lane.send(StopLane).await.expect("the lane stops");
    });
    // The transaction the panic lost was aborted: each record once.
    wait_for_values(&topic, &[&["a", "late"], &["b", "boom"]]);
    assert_eq!(
        wait_for_map(&group, 2),
        BTreeMap::from([
            (("orders".to_string(), 0), 2),
            (("orders".to_string(), 1), 2)
        ])
    );
}

#[test]
fn a_lane_whose_transaction_outlives_its_timeout_opens_again_and_its_partitions_copy_again() {
    let (_, dst) = shared_pair();
    let topic = unique_name("lanes-timed-out");
    create_topic(dst.bootstrap(), &topic, 1);
    let group = unique_name("strait.lanes-timed-out");
    let mut parts = parts(&group, LONG, 2, OnError::Fail);
    let timeout = Duration::from_secs(2);
    parts.destination.properties.insert(
        "transaction.timeout.ms".into(),
        timeout.as_millis().to_string(),
    );
    // The lane waits this (and 5 s) before its new producer: an instance
    // that stalled may have lost the lane meanwhile, and would know by then.
    parts
        .destination
        .properties
        .insert("session.timeout.ms".into(), "1000".into());
    System::new().block_on(async {
        let lane = start_lane(parts).await;
        let partition = Partition::new("orders", &topic, 0);
        partition
            .write(&lane, batch(0, &values(&["lost-1"])))
            .await
            .expect("queued");
        // The coordinator aborts a transaction past its timeout at its next
        // check (every 10 s by default), which also fences the producer:
        // a stall, as behind a destination outage.
        tokio::time::sleep(timeout + Duration::from_secs(12)).await;
        partition
            .write(&lane, batch(1, &values(&["lost-2"])))
            .await
            .expect("queued");
        partition.settled().await;
        let failure = partition
            .progress
            .failure()
            .expect("the timed-out transaction failed its batches");
        assert!(
            !failure.permanent,
            "the lane is still this instance's: copied again, not stopped: {failure:?}"
        );
        assert!(
            failure.reason.contains("transaction.timeout.ms"),
            "the failure says the transaction timed out: {failure:?}"
        );
        assert!(lane.connected(), "the lane keeps running");
        let deadline = Instant::now() + WAIT;
        while lane
            .send(LaneOpened)
            .await
            .expect("the lane is running")
            .is_err()
        {
            assert!(Instant::now() < deadline, "the lane did not open again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The copier restarts (a new epoch) from the offset map, empty yet:
        // the lane takes the partition again through a new producer.
        partition.progress.reset();
        partition
            .write(&lane, batch(0, &values(&["again-1", "again-2"])))
            .await
            .expect("queued after the timeout");
        partition.settled().await;
        assert!(
            partition.progress.failure().is_none(),
            "{:?}",
            partition.progress.failure()
        );
        assert_eq!(partition.progress.committable(), Some(2));
        lane.send(StopLane).await.expect("the lane stops");
    });
    // The timed-out transaction was aborted: its records are never seen.
    wait_for_values(&topic, &[&["again-1", "again-2"]]);
    assert_eq!(
        wait_for_map(&group, 1),
        BTreeMap::from([(("orders".to_string(), 0), 2)])
    );
}

/// Creates `topic` with topic configs.
fn create_topic_with(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = futures::executor::block_on(admin.create_topics(
        [&new_topic],
        &AdminOptions::new().operation_timeout(Some(WAIT)),
    ))
    .expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating {name}: {code}"));
    }
    // Waits for the leaders.
    create_topic(bootstrap, topic, partitions);
}

/// An instance's view of the lanes it owns, kept as the group reports them.
struct Owner {
    lanes: Arc<Mutex<BTreeSet<u32>>>,
}

impl Actor for Owner {
    type Context = Context<Self>;
}

impl Handler<LanesAssigned> for Owner {
    type Result = ();
    fn handle(&mut self, LanesAssigned(lanes): LanesAssigned, _: &mut Context<Self>) {
        let mut owned = self.lanes.lock().expect("lanes");
        for lane in lanes {
            assert!(owned.insert(lane), "lane {lane} assigned twice");
        }
    }
}

impl Handler<LanesRevoked> for Owner {
    type Result = ();
    fn handle(&mut self, LanesRevoked(lanes): LanesRevoked, _: &mut Context<Self>) {
        let mut owned = self.lanes.lock().expect("lanes");
        for lane in lanes {
            assert!(owned.remove(&lane), "lane {lane} revoked but not owned");
        }
    }
}

/// Joins `group_id`'s lane group as one more instance.
fn join(group_id: &str) -> (LaneOwnership, Arc<Mutex<BTreeSet<u32>>>) {
    let lanes = Arc::new(Mutex::new(BTreeSet::new()));
    let owner = Owner {
        lanes: Arc::clone(&lanes),
    }
    .start();
    let member = LaneOwnership::start(
        &destination(),
        group_id,
        owner.clone().recipient(),
        owner.recipient(),
    )
    .expect("joins the lane group");
    (member, lanes)
}

/// Waits until `condition` holds of the lanes each instance owns.
async fn wait_for_lanes(
    what: &str,
    owners: &[&Arc<Mutex<BTreeSet<u32>>>],
    condition: impl Fn(&[BTreeSet<u32>]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let owned: Vec<BTreeSet<u32>> = owners
            .iter()
            .map(|o| o.lock().expect("lanes").clone())
            .collect();
        if condition(&owned) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: after {WAIT:?} the instances own {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn instances_divide_a_flows_lanes_through_a_group_on_the_destination_and_take_over_a_leavers() {
    let group = unique_name("strait.lanes-group");
    let all: BTreeSet<u32> = (0..4).collect();
    System::new().block_on(async {
        ensure_lanes_topic(&destination(), &group, 4)
            .await
            .expect("the lanes topic exists");
        let (first, first_lanes) = join(&group);
        wait_for_lanes("one instance owns every lane", &[&first_lanes], |o| {
            o[0] == all
        })
        .await;

        let (second, second_lanes) = join(&group);
        wait_for_lanes(
            "two instances share the lanes",
            &[&first_lanes, &second_lanes],
            |o| {
                o[0].len() == 2
                    && o[1].len() == 2
                    && o[0].union(&o[1]).copied().collect::<BTreeSet<u32>>() == all
            },
        )
        .await;

        // The second instance leaves: its lanes come back to the first.
        off(move || second.stop()).await;
        wait_for_lanes(
            "the first instance owns every lane again",
            &[&first_lanes],
            |o| o[0] == all,
        )
        .await;
        off(move || first.stop()).await;
    });
}

#[test]
fn a_lanes_topic_with_another_number_of_lanes_is_refused_by_name() {
    let group = unique_name("strait.lanes-count");
    System::new().block_on(async {
        ensure_lanes_topic(&destination(), &group, 4)
            .await
            .expect("the lanes topic is created");
        ensure_lanes_topic(&destination(), &group, 4)
            .await
            .expect("the same number of lanes is fine");
        let error = ensure_lanes_topic(&destination(), &group, 8)
            .await
            .expect_err("another number of lanes is refused");
        let message = error.to_string();
        assert!(
            message.contains(&format!("strait.lanes.{group}"))
                && message.contains("has 4 partitions")
                && message.contains("8 lanes"),
            "{message}"
        );
    });
}
