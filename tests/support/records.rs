//! Records on a real cluster, for the integration tests: create topics,
//! produce records with every field set explicitly, read a topic back in full,
//! compare a source topic with its copy, and wait for a condition with a bound.
//!
//! Nothing here joins a consumer group: topics are read by assignment, and a
//! group's committed offsets are read without joining it, so the helpers never
//! disturb the group Strait itself is a member of.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, Timestamp, TopicPartitionList};

/// How long a single Kafka request from the helpers may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A name no other test, and no earlier run on the same cluster, uses:
/// `<prefix>-<pid>-<counter>-<nanos>`. Dots and dashes only, so it is a
/// valid topic and group name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `check` until it returns `Ok`, then returns its value. `check` returns
/// `Err(state)` describing what it saw while the condition does not hold yet.
///
/// The deadline is not an assertion on speed: it only bounds the wait so that a
/// broken build fails with the last observed state instead of hanging.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(state) => state,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}\nlast observed state:\n{last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("cannot create an admin client for {bootstrap}: {e}"))
}

/// A consumer that never joins its group: used for metadata, watermarks,
/// committed offsets and reading by assignment.
fn plain_consumer(bootstrap: &str, group_id: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap_or_else(|e| panic!("cannot create a consumer for {bootstrap}: {e}"))
}

/// Creates `topic` with `partitions` partitions (replication factor 1) and
/// waits until every partition has a leader.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin = admin(bootstrap);
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = futures::executor::block_on(admin.create_topics([&new_topic], &opts))
        .unwrap_or_else(|e| panic!("creating topic {topic} on {bootstrap}: {e}"));
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                panic!("creating topic {name} on {bootstrap}: {code}");
            }
        }
    }
    wait_until(
        &format!("topic {topic} to have {partitions} partitions with leaders on {bootstrap}"),
        Duration::from_secs(60),
        || match partition_count(bootstrap, topic) {
            Some(n) if n == partitions => Ok(()),
            other => Err(format!("partition count with leaders: {other:?}")),
        },
    );
}

/// The topic's partition count, counting only partitions that have a leader;
/// `None` when the topic does not exist (yet).
pub fn partition_count(bootstrap: &str, topic: &str) -> Option<i32> {
    let consumer = plain_consumer(bootstrap, "strait-tests.metadata");
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().iter().filter(|p| p.leader() >= 0).count() as i32)
}

/// Every topic on the cluster.
pub fn list_topics(bootstrap: &str) -> Vec<String> {
    let consumer = plain_consumer(bootstrap, "strait-tests.metadata");
    let md = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("metadata of {bootstrap}: {e}"));
    md.topics().iter().map(|t| t.name().to_string()).collect()
}

/// (low, high) watermark of every partition of `topic`, by partition number.
pub fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let consumer = plain_consumer(bootstrap, "strait-tests.watermarks");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}[{p}] on {bootstrap}: {e}"))
        })
        .collect()
}

/// The sum of the high watermarks of `topic`, or `None` while the topic does
/// not exist with `partitions` partitions. For a topic written without
/// transactions and never truncated, this is its record count.
pub fn total_records(bootstrap: &str, topic: &str, partitions: i32) -> Option<i64> {
    if partition_count(bootstrap, topic)? != partitions {
        return None;
    }
    let consumer = plain_consumer(bootstrap, "strait-tests.watermarks");
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT).ok()?;
        total += high - low;
    }
    Some(total)
}

/// The offsets `group_id` has committed for each partition of `topic`
/// (`None`: nothing committed), read without joining the group.
pub fn committed_offsets(
    bootstrap: &str,
    group_id: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    let consumer = plain_consumer(bootstrap, group_id);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let tpl = consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("committed offsets of group {group_id} on {bootstrap}: {e}"));
    (0..partitions)
        .map(|p| match tpl.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Producing
// ---------------------------------------------------------------------------

/// A header as Kafka has it: a name and an optional (possibly binary) value.
pub type Hdr = (String, Option<Vec<u8>>);

/// A record to produce, every field explicit.
#[derive(Clone, Debug, Default)]
pub struct Out {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Hdr>,
    /// CreateTime in milliseconds; `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
}

impl Out {
    /// A record with a value only.
    pub fn value(partition: i32, value: impl Into<Vec<u8>>) -> Self {
        Out {
            partition,
            value: Some(value.into()),
            ..Out::default()
        }
    }

    /// A record with a key and a value.
    pub fn keyed(partition: i32, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Out {
            partition,
            key: Some(key.into()),
            value: Some(value.into()),
            ..Out::default()
        }
    }
}

#[derive(Default)]
struct DeliveryTracker {
    delivered: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                if failures.len() < 10 {
                    failures.push(format!("{}[{}]: {e}", m.topic(), m.partition()));
                }
            }
        }
    }
}

/// An idempotent producer (no duplicates, order kept per partition) that can
/// wait for every record it sent to be acknowledged.
pub struct TestProducer {
    bootstrap: String,
    producer: ThreadedProducer<DeliveryTracker>,
    sent: u64,
}

impl TestProducer {
    pub fn new(bootstrap: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create_with_context(DeliveryTracker::default())
            .unwrap_or_else(|e| panic!("cannot create a producer for {bootstrap}: {e}"));
        TestProducer {
            bootstrap: bootstrap.to_string(),
            producer,
            sent: 0,
        }
    }

    /// Queues one record, waiting for room in the queue when it is full.
    pub fn send(&mut self, topic: &str, rec: &Out) {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(topic)
            .partition(rec.partition)
            .headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            record = record.payload(v.as_slice());
        }
        if let Some(ts) = rec.timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("producing to {topic} on {}: {e}", self.bootstrap),
            }
        }
        self.sent += 1;
    }

    /// Waits until every record sent so far is acknowledged; panics on any
    /// delivery failure.
    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("flushing the producer to {}: {e}", self.bootstrap));
        let ctx = self.producer.context();
        let failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            failures.is_empty(),
            "records were not delivered to {}: {failures:?}",
            self.bootstrap
        );
        let delivered = ctx.delivered.load(Ordering::Relaxed);
        assert_eq!(
            delivered, self.sent,
            "producer to {}: {delivered} of {} records delivered",
            self.bootstrap, self.sent
        );
    }
}

/// Produces `records` to `topic` in order and waits until all are acknowledged.
pub fn produce(bootstrap: &str, topic: &str, records: &[Out]) {
    let mut producer = TestProducer::new(bootstrap);
    for r in records {
        producer.send(topic, r);
    }
    producer.flush();
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// A record's timestamp and its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ts {
    None,
    CreateTime(i64),
    LogAppendTime(i64),
}

impl From<Timestamp> for Ts {
    fn from(t: Timestamp) -> Self {
        match t {
            Timestamp::NotAvailable => Ts::None,
            Timestamp::CreateTime(ms) => Ts::CreateTime(ms),
            Timestamp::LogAppendTime(ms) => Ts::LogAppendTime(ms),
        }
    }
}

/// A record as read back from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Hdr>,
    pub timestamp: Ts,
}

impl Rec {
    /// Key, value, headers and timestamp equal (the offset is not compared).
    pub fn same_content(&self, other: &Rec) -> bool {
        self.key == other.key
            && self.value == other.value
            && self.headers == other.headers
            && self.timestamp == other.timestamp
    }
}

/// Bytes for people: text when printable UTF-8, otherwise hex.
pub struct Show<'a>(pub &'a Option<Vec<u8>>);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("null"),
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) if !s.chars().any(char::is_control) => {
                    if s.chars().count() > 120 {
                        let head: String = s.chars().take(120).collect();
                        write!(f, "{head:?}... ({} bytes)", s.len())
                    } else {
                        write!(f, "{s:?}")
                    }
                }
                _ => {
                    f.write_str("0x")?;
                    for byte in b.iter().take(60) {
                        write!(f, "{byte:02x}")?;
                    }
                    if b.len() > 60 {
                        write!(f, "... ({} bytes)", b.len())?;
                    }
                    Ok(())
                }
            },
        }
    }
}

impl fmt::Display for Rec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offset {} key {} value {} timestamp {:?} headers [",
            self.offset,
            Show(&self.key),
            Show(&self.value),
            self.timestamp
        )?;
        for (i, (k, v)) in self.headers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k:?}={}", Show(v))?;
        }
        f.write_str("]")
    }
}

/// Reads every record of every partition of `topic` up to the high watermark
/// each partition had when reading started, by assignment (no group joined).
/// Element `p` of the result holds partition `p`, in offset order.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Vec<Rec>> {
    let consumer = plain_consumer(bootstrap, "strait-tests.reader");
    let mut out: Vec<Vec<Rec>> = vec![Vec::new(); partitions as usize];
    let mut high = Vec::with_capacity(partitions as usize);
    let mut tpl = TopicPartitionList::new();
    let mut pending = 0;
    for p in 0..partitions {
        let (low, hw) = consumer
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("watermarks of {topic}[{p}] on {bootstrap}: {e}"));
        high.push(hw);
        if hw > low {
            pending += 1;
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("valid offset");
        }
    }
    if pending == 0 {
        return out;
    }
    consumer
        .assign(&tpl)
        .unwrap_or_else(|e| panic!("assigning {topic} on {bootstrap}: {e}"));
    let mut done = vec![false; partitions as usize];
    for p in 0..partitions {
        if tpl.find_partition(topic, p).is_none() {
            done[p as usize] = true;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while pending > 0 {
        if Instant::now() > deadline {
            let counts: Vec<usize> = out.iter().map(Vec::len).collect();
            panic!(
                "reading {topic} on {bootstrap}: timed out; records read per partition {counts:?}, \
                 high watermarks {high:?}"
            );
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            // Past the end: nothing below the watermark is left, whatever
            // control records (transaction markers) sit there.
            Some(Err(KafkaError::PartitionEOF(p))) if !done[p as usize] => {
                done[p as usize] = true;
                pending -= 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("reading {topic} on {bootstrap}: {e}"),
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                if done[p] || m.offset() >= high[p] {
                    continue;
                }
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                out[p].push(Rec {
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp: m.timestamp().into(),
                });
                if m.offset() + 1 >= high[p] {
                    done[p] = true;
                    pending -= 1;
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

/// `Ok` when every partition of `dst` holds the same sequence as the same
/// partition of `src` (key, value, headers in order, timestamp at each
/// position; offsets too when `compare_offsets`); otherwise a readable
/// description of each partition's first mismatch.
pub fn compare(src: &[Vec<Rec>], dst: &[Vec<Rec>], compare_offsets: bool) -> Result<(), String> {
    let mut problems = Vec::new();
    if src.len() != dst.len() {
        problems.push(format!(
            "partition count differs: source {}, destination {}",
            src.len(),
            dst.len()
        ));
    }
    for (p, (s, d)) in src.iter().zip(dst).enumerate() {
        let first_diff = s
            .iter()
            .zip(d)
            .position(|(a, b)| !a.same_content(b) || (compare_offsets && a.offset != b.offset));
        match first_diff {
            Some(i) => problems.push(format!(
                "partition {p}: first mismatch at position {i} \
                 (source has {} records, destination {})\n  source:      {}\n  destination: {}",
                s.len(),
                d.len(),
                s[i],
                d[i]
            )),
            None if s.len() != d.len() => {
                let (longer, which) = if s.len() > d.len() {
                    (s, "source")
                } else {
                    (d, "destination")
                };
                problems.push(format!(
                    "partition {p}: source has {} records, destination {}; \
                     first record only in the {which}: {}",
                    s.len(),
                    d.len(),
                    longer[s.len().min(d.len())]
                ));
            }
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Reads `topic` on both clusters and compares them with [`compare`],
/// returning the source's records on success.
pub fn assert_same_topic(
    src_bootstrap: &str,
    dst_bootstrap: &str,
    topic: &str,
    dst_topic: &str,
    partitions: i32,
    compare_offsets: bool,
) -> Vec<Vec<Rec>> {
    let src = read_topic(src_bootstrap, topic, partitions);
    let dst = read_topic(dst_bootstrap, dst_topic, partitions);
    if let Err(diff) = compare(&src, &dst, compare_offsets) {
        panic!("destination topic {dst_topic} differs from source topic {topic}:\n{diff}");
    }
    src
}

// ---------------------------------------------------------------------------
// Counting by payload id (at-least-once checks)
// ---------------------------------------------------------------------------

/// A value carrying a unique id: `id-<n>|<padding>`.
pub fn id_payload(id: u64, padding: usize) -> Vec<u8> {
    let mut v = format!("id-{id}|").into_bytes();
    v.resize(v.len() + padding, b'x');
    v
}

/// `count` records with ids from `first_id`: record `n` has key `k<n>`, an
/// [`id_payload`] value, and goes to partition `n % partitions`.
pub fn id_records(first_id: u64, count: u64, partitions: i32) -> Vec<Out> {
    (first_id..first_id + count)
        .map(|id| {
            Out::keyed(
                (id % partitions as u64) as i32,
                format!("k{id}"),
                id_payload(id, 32),
            )
        })
        .collect()
}

/// The id of an [`id_payload`] value.
pub fn payload_id(value: &Option<Vec<u8>>) -> Option<u64> {
    let v = value.as_deref()?;
    let s = std::str::from_utf8(v).ok()?;
    s.strip_prefix("id-")?.split('|').next()?.parse().ok()
}

/// What the destination holds compared with the source, by payload id.
#[derive(Debug, Default)]
pub struct IdReport {
    pub source_records: usize,
    pub destination_records: usize,
    /// Source ids absent from the destination (at most 20 listed).
    pub lost: usize,
    pub lost_examples: Vec<u64>,
    /// Destination records beyond the first copy of each id.
    pub duplicates: usize,
    /// Destination ids not on the source at all.
    pub unexpected: usize,
    /// Ids found in another destination partition than at the source.
    pub wrong_partition: usize,
    /// Partitions whose first copies are not in the source's order.
    pub out_of_order: Vec<String>,
}

/// Compares by payload id: each source record must be on the destination, in
/// the same partition; duplicates are counted; the first copies of each id
/// must keep the source's order within each partition (a replay after a
/// crash re-sends a range, which leaves the order of first copies intact).
pub fn id_report(src: &[Vec<Rec>], dst: &[Vec<Rec>]) -> IdReport {
    let mut report = IdReport::default();
    let mut source_partition: HashMap<u64, usize> = HashMap::new();
    for (p, recs) in src.iter().enumerate() {
        for r in recs {
            let id =
                payload_id(&r.value).unwrap_or_else(|| panic!("source record without an id: {r}"));
            source_partition.insert(id, p);
            report.source_records += 1;
        }
    }
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (p, recs) in dst.iter().enumerate() {
        let mut first_copies = Vec::new();
        for r in recs {
            report.destination_records += 1;
            let Some(id) = payload_id(&r.value) else {
                report.unexpected += 1;
                continue;
            };
            let count = seen.entry(id).or_insert(0);
            *count += 1;
            if *count > 1 {
                report.duplicates += 1;
                continue;
            }
            match source_partition.get(&id) {
                None => report.unexpected += 1,
                Some(&sp) if sp != p => report.wrong_partition += 1,
                Some(_) => first_copies.push(id),
            }
        }
        let here: HashSet<u64> = first_copies.iter().copied().collect();
        let source_order: Vec<u64> = src
            .get(p)
            .map(|recs| {
                recs.iter()
                    .filter_map(|r| payload_id(&r.value))
                    .filter(|id| here.contains(id))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(i) = source_order
            .iter()
            .zip(&first_copies)
            .position(|(a, b)| a != b)
        {
            report.out_of_order.push(format!(
                "partition {p}: at position {i} of the first copies, source has id {} and destination id {}",
                source_order[i], first_copies[i]
            ));
        }
    }
    let mut lost: Vec<u64> = source_partition
        .keys()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    lost.sort_unstable();
    report.lost = lost.len();
    report.lost_examples = lost.into_iter().take(20).collect();
    report
}

/// Per-partition record counts, for messages.
pub fn counts(parts: &[Vec<Rec>]) -> BTreeMap<usize, usize> {
    parts.iter().map(Vec::len).enumerate().collect()
}

// ---------------------------------------------------------------------------
// Verifying a copy (the fault tests' last step; reusable by `strait verify`)
// ---------------------------------------------------------------------------

/// The delivery mode a flow runs in, as the verifier and the config see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Duplicates after a fault are allowed (counted and printed).
    AtLeastOnce,
    /// A `read_committed` reader of the destination sees each record once.
    ExactlyOnce,
}

impl Delivery {
    /// The value of the flow's `delivery` key.
    pub fn config_value(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::ExactlyOnce => "exactly_once",
        }
    }
}

/// One partition of a [`Verification`]: counts by payload id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionCheck {
    pub partition: usize,
    pub source_records: usize,
    pub destination_records: usize,
    /// Source ids of this partition absent from the same destination partition.
    pub lost: usize,
    /// Destination records of this partition beyond the first copy of their id.
    pub duplicates: usize,
    /// Exactly-once only: the destination's ids are not the source's, in order.
    pub sequence_differs: Option<String>,
}

/// What the destination holds compared with the source, overall and per
/// partition, and what is wrong with it for the delivery mode.
#[derive(Debug)]
pub struct Verification {
    pub delivery: Delivery,
    pub report: IdReport,
    pub partitions: Vec<PartitionCheck>,
}

impl Verification {
    /// Every way the copy breaks the delivery mode's promise; empty when none.
    /// Both modes: nothing lost, nothing unexpected, nothing in another
    /// partition, first copies in source order. Exactly-once: no duplicates,
    /// and each destination partition is the source partition's id sequence.
    pub fn problems(&self) -> Vec<String> {
        let r = &self.report;
        let mut problems = Vec::new();
        if r.lost > 0 {
            problems.push(format!(
                "{} source records lost (e.g. ids {:?})",
                r.lost, r.lost_examples
            ));
        }
        if r.unexpected > 0 {
            problems.push(format!(
                "{} destination records not on the source",
                r.unexpected
            ));
        }
        if r.wrong_partition > 0 {
            problems.push(format!(
                "{} records copied to another partition",
                r.wrong_partition
            ));
        }
        for o in &r.out_of_order {
            problems.push(format!("first copies out of source order: {o}"));
        }
        if self.delivery == Delivery::ExactlyOnce {
            if r.duplicates > 0 {
                problems.push(format!(
                    "{} duplicates in exactly-once mode (read_committed)",
                    r.duplicates
                ));
            }
            for p in &self.partitions {
                if let Some(d) = &p.sequence_differs {
                    problems.push(format!("partition {}: {d}", p.partition));
                }
            }
        }
        problems
    }

    /// One line overall, then one per partition.
    pub fn summary(&self) -> String {
        let r = &self.report;
        let mut s = format!(
            "{:?}: {} source records, {} destination records (read_committed), \
             {} lost, {} duplicates",
            self.delivery, r.source_records, r.destination_records, r.lost, r.duplicates
        );
        for p in &self.partitions {
            s.push_str(&format!(
                "\n  partition {}: source {}, destination {}, lost {}, duplicates {}",
                p.partition, p.source_records, p.destination_records, p.lost, p.duplicates
            ));
        }
        s
    }
}

/// Compares a source topic's records with its copy's by payload id, per
/// partition, for `delivery`. Pure: see [`verify_copy`] to read the clusters.
pub fn check_copy(src: &[Vec<Rec>], dst: &[Vec<Rec>], delivery: Delivery) -> Verification {
    let report = id_report(src, dst);
    let empty = Vec::new();
    let partitions = (0..src.len().max(dst.len()))
        .map(|p| {
            let s = src.get(p).unwrap_or(&empty);
            let d = dst.get(p).unwrap_or(&empty);
            let src_ids: Vec<Option<u64>> = s.iter().map(|r| payload_id(&r.value)).collect();
            let dst_ids: Vec<Option<u64>> = d.iter().map(|r| payload_id(&r.value)).collect();
            let here: HashSet<Option<u64>> = dst_ids.iter().copied().collect();
            let mut seen = HashSet::new();
            let duplicates = dst_ids.iter().filter(|id| !seen.insert(**id)).count();
            let sequence_differs = (src_ids != dst_ids).then(|| {
                let i = src_ids
                    .iter()
                    .zip(&dst_ids)
                    .position(|(a, b)| a != b)
                    .unwrap_or(src_ids.len().min(dst_ids.len()));
                let show = |ids: &[Option<u64>]| -> String {
                    let shown: Vec<String> = ids[i.min(ids.len())..(i + 5).min(ids.len())]
                        .iter()
                        .map(|id| id.map_or("no id".to_string(), |id| id.to_string()))
                        .collect();
                    format!(
                        "[{}{}]",
                        shown.join(", "),
                        if ids.len() > i + 5 { ", ..." } else { "" }
                    )
                };
                format!(
                    "destination ids differ from the source's from position {i}: \
                     source {}, destination {} (lengths {} and {})",
                    show(&src_ids),
                    show(&dst_ids),
                    src_ids.len(),
                    dst_ids.len()
                )
            });
            PartitionCheck {
                partition: p,
                source_records: s.len(),
                destination_records: d.len(),
                lost: src_ids.iter().filter(|id| !here.contains(id)).count(),
                duplicates,
                sequence_differs,
            }
        })
        .collect();
    Verification {
        delivery,
        report,
        partitions,
    }
}

/// The verifier every fault test ends with: reads `topic` on the source and
/// `dst_topic` on the destination (both `read_committed`), compares them per
/// partition by payload id, prints the counts (duplicates included), and
/// panics when anything was lost, or duplicated in exactly-once mode.
pub fn verify_copy(
    src_bootstrap: &str,
    dst_bootstrap: &str,
    topic: &str,
    dst_topic: &str,
    partitions: i32,
    delivery: Delivery,
) -> Verification {
    let src = read_topic(src_bootstrap, topic, partitions);
    let dst = read_topic(dst_bootstrap, dst_topic, partitions);
    let v = check_copy(&src, &dst, delivery);
    eprintln!("verify {topic} -> {dst_topic}: {}", v.summary());
    let problems = v.problems();
    assert!(
        problems.is_empty(),
        "destination topic {dst_topic} is not a {:?} copy of source topic {topic}:\n- {}\n{}",
        delivery,
        problems.join("\n- "),
        v.summary()
    );
    assert_eq!(v.report.lost, 0);
    if delivery == Delivery::ExactlyOnce {
        assert_eq!(v.report.duplicates, 0);
    }
    v
}

/// Waits until the destination holds every record of `src` (read beforehand,
/// once the source stopped changing) with nothing lost: cheap watermark
/// checks first, then a full `read_committed` read. `alive` is called on each
/// round (e.g. to fail early when Strait exited) and adds its text to the
/// state shown on timeout. In exactly-once mode records may sit in an open
/// transaction for a while, so "nothing lost" is read, never inferred.
pub fn wait_for_complete_copy(
    src: &[Vec<Rec>],
    dst_bootstrap: &str,
    dst_topic: &str,
    delivery: Delivery,
    timeout: Duration,
    mut alive: impl FnMut() -> String,
) -> Verification {
    let partitions = src.len() as i32;
    let expected: i64 = src.iter().map(|p| p.len() as i64).sum();
    wait_until(
        &format!("all {expected} source records in {dst_topic} on the destination ({delivery:?})"),
        timeout,
        || {
            let state = alive();
            // Every record, plus transaction markers in exactly-once mode,
            // lies below the high watermarks: until they add up, don't read.
            let marks = total_records(dst_bootstrap, dst_topic, partitions);
            if marks.unwrap_or(0) < expected {
                return Err(format!(
                    "destination high watermarks add up to {marks:?}\n{state}"
                ));
            }
            let v = check_copy(
                src,
                &read_topic(dst_bootstrap, dst_topic, partitions),
                delivery,
            );
            if v.report.lost > 0 {
                return Err(format!("{}\n{state}", v.summary()));
            }
            Ok(v)
        },
    )
}

/// A stream of id records produced in the background at a steady pace until
/// stopped or `max` records are out: record `n` has payload id `n`, key
/// `k<n>`, and goes to partition `n % partitions`. Sent in slices of a tenth
/// of a second, each flushed, so [`acknowledged`](Self::acknowledged) counts
/// records the source holds; a source outage just makes a flush wait.
pub struct Stream {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        records_per_second: u64,
        padding: usize,
        max: u64,
    ) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let handle = {
            let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                let mut producer = TestProducer::new(&bootstrap);
                let slice = (records_per_second / 10).max(1);
                let start = Instant::now();
                let mut next = 0u64;
                while next < max && !stop.load(Ordering::SeqCst) {
                    let end = (next + slice).min(max);
                    for id in next..end {
                        let p = (id % partitions as u64) as i32;
                        producer.send(
                            &topic,
                            &Out::keyed(p, format!("k{id}"), id_payload(id, padding)),
                        );
                    }
                    producer.flush();
                    next = end;
                    acknowledged.store(next, Ordering::SeqCst);
                    let due = Duration::from_millis(next * 1000 / records_per_second);
                    if let Some(ahead) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
            })
        };
        Stream {
            stop,
            acknowledged,
            handle: Some(handle),
        }
    }

    /// Records the source has acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// True once the producing thread has ended (`max` reached).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops producing (after the current slice) and returns the number of
    /// records produced; panics if producing failed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits until `max` records are produced; returns the count.
    pub fn finish(mut self) -> u64 {
        self.join()
    }

    fn join(&mut self) -> u64 {
        if let Some(h) = self.handle.take() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.acknowledged()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
