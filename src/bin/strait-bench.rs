//! `strait-bench`: the load generator, ceiling and probes behind `scripts/bench`.
//!
//! Not part of Strait; a tool for measuring it (and MirrorMaker 2) on real
//! clusters. Every command prints one JSON object on stdout and logs to stderr.
//!
//! - `create`: creates a set of topics.
//! - `load`: pre-loads a topic set with records of a given size, round-robin
//!   over every partition (an 8-byte key and one 8-byte header per record, so
//!   the replicators' key and header paths are exercised).
//! - `pipe`: the ceiling: a bare consume-then-produce loop (one consumer,
//!   one producer, no batching, no offset tracking, no commits) that copies
//!   every partition of the given topics as fast as librdkafka allows.
//! - `watch`: waits until the destination holds a given number of records
//!   (with exactly-once: until Strait's `/status` or MirrorMaker 2's offsets
//!   topic says they are committed), sampling a replicator's CPU time and
//!   memory from `/proc`; reports when the first record arrived and when the
//!   last did.
//! - `latency`: produces at a steady rate with the send time in each value and
//!   consumes the destination, reporting end-to-end latency percentiles.
//!
//! A topic set is written `PREFIX` (one topic) or `PREFIX*COUNT` (topics
//! `PREFIX000` .. `PREFIX{COUNT-1}`, zero-padded to three digits).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Load, ceiling and probes for scripts/bench (not part of Strait)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// What `pipe` and `pipe-eos` copy.
#[derive(clap::Args)]
struct CopyArgs {
    #[arg(long)]
    source: String,
    #[arg(long)]
    dest: String,
    #[arg(long)]
    regex: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates a topic set (replication factor 1).
    Create {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topics: String,
        #[arg(long)]
        partitions: i32,
    },
    /// Produces RECORDS records with SIZE-byte values round-robin over every partition.
    Load {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topics: String,
        #[arg(long)]
        records: u64,
        #[arg(long)]
        size: usize,
    },
    /// Copies every partition of the topics matching REGEX from SOURCE to DEST, until killed.
    Pipe {
        #[command(flatten)]
        copy: CopyArgs,
    },
    /// Copies like `pipe`, exactly-once: LANES transactional producers, each
    /// with a consumer of an equal share of the partitions, commit what they
    /// copied every INTERVAL_MS together with their progress, written to
    /// `strait-bench.pipe-offsets` in the form of MirrorMaker 2's offsets topic.
    /// Until killed.
    PipeEos {
        #[command(flatten)]
        copy: CopyArgs,
        #[arg(long, default_value_t = 8)]
        lanes: usize,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Waits until the topic set on BOOTSTRAP holds EXPECT records in all.
    Watch {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topics: String,
        #[arg(long)]
        expect: i64,
        /// The replicator's process id: CPU time and memory are sampled from /proc.
        #[arg(long)]
        pid: u32,
        /// Other processes whose CPU time is reported too (the brokers), comma-separated.
        #[arg(long, default_value = "")]
        extra_pids: String,
        /// Count progress from Strait's /status (replicated offsets) instead of
        /// destination end offsets, which transaction markers inflate.
        #[arg(long)]
        status_url: Option<String>,
        /// Count progress from MirrorMaker 2's offsets topic on the destination
        /// (read committed) instead: with exactly-once, its source offsets are
        /// written in the same transaction as the records they stand for.
        #[arg(long, conflicts_with = "status_url")]
        mm2_offsets_topic: Option<String>,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long, default_value_t = 1800)]
        timeout_s: u64,
        /// Gives up when the count has not moved for this long.
        #[arg(long, default_value_t = 180)]
        stall_s: u64,
        /// Clock ticks per second of /proc/PID/stat (getconf CLK_TCK).
        #[arg(long, default_value_t = 100)]
        clk_tck: u64,
    },
    /// Steady-rate end-to-end latency through a running replicator.
    Latency {
        #[arg(long)]
        source: String,
        #[arg(long)]
        dest: String,
        #[arg(long)]
        topic: String,
        /// Records per second.
        #[arg(long)]
        rate: u64,
        /// Seconds of producing, warm-up included.
        #[arg(long)]
        seconds: u64,
        /// Seconds at the start whose records are not counted.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long)]
        size: usize,
        /// Also writes each counted record's send time (ns since the epoch),
        /// partition, latency and the replicator's share of it (µs) to this
        /// file, one record per line, to see when the slow ones were sent.
        #[arg(long)]
        samples: Option<std::path::PathBuf>,
        /// Read the destination as an exactly-once consumer does
        /// (`isolation.level = read_committed`): a record counts when its
        /// transaction commits, not when it lands.
        #[arg(long)]
        read_committed: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let out = match Cli::parse().command {
        Cmd::Create {
            bootstrap,
            topics,
            partitions,
        } => create(&bootstrap, &topic_set(&topics)?, partitions)?,
        Cmd::Load {
            bootstrap,
            topics,
            records,
            size,
        } => load(&bootstrap, &topic_set(&topics)?, records, size)?,
        Cmd::Pipe { copy } => pipe(&copy.source, &copy.dest, &copy.regex)?,
        Cmd::PipeEos {
            copy,
            lanes,
            interval_ms,
        } => pipe_eos(&copy, lanes, Duration::from_millis(interval_ms))?,
        Cmd::Watch {
            bootstrap,
            topics,
            expect,
            pid,
            extra_pids,
            status_url,
            mm2_offsets_topic,
            interval_ms,
            timeout_s,
            stall_s,
            clk_tck,
        } => {
            let extra = extra_pids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u32>().context("--extra-pids"))
                .collect::<Result<Vec<_>, _>>()?;
            watch(WatchArgs {
                bootstrap,
                topics: topic_set(&topics)?,
                expect,
                pid,
                extra,
                status_url,
                mm2_offsets_topic,
                interval: Duration::from_millis(interval_ms),
                timeout: Duration::from_secs(timeout_s),
                stall: Duration::from_secs(stall_s),
                clk_tck: clk_tck as f64,
            })?
        }
        Cmd::Latency {
            source,
            dest,
            topic,
            rate,
            seconds,
            warmup,
            size,
            samples,
            read_committed,
        } => latency(
            &source,
            &dest,
            &topic,
            rate,
            seconds,
            warmup,
            size,
            samples.as_deref(),
            read_committed,
        )?,
    };
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------- common

fn topic_set(spec: &str) -> anyhow::Result<Vec<String>> {
    match spec.split_once('*') {
        None => Ok(vec![spec.to_string()]),
        Some((prefix, count)) => {
            let n: usize = count.parse().context("topic set: PREFIX*COUNT")?;
            Ok((0..n).map(|i| format!("{prefix}{i:03}")).collect())
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "strait-bench");
    c
}

/// Partition count of each topic that exists, from one metadata request.
fn partition_counts<C: Consumer>(consumer: &C) -> anyhow::Result<HashMap<String, i32>> {
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// A 64 KiB buffer of pseudo-random bytes (xorshift), sliced for values.
fn filler() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Counts delivery failures of the load and latency producers.
#[derive(Default)]
struct CountingContext {
    failed: AtomicU64,
}
impl ClientContext for CountingContext {}
impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends, waiting while the producer's queue is full (its delivery reports
/// are served by its own thread).
#[allow(clippy::result_large_err)] // rdkafka's `send` returns the record in its error
fn send_retrying<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> anyhow::Result<()> {
    send_or_wait(
        |r| producer.send(r),
        record,
        || thread::sleep(Duration::from_micros(500)),
    )
}

/// Sends through a producer nobody else polls, serving its delivery reports
/// while its queue is full.
#[allow(clippy::result_large_err)] // as above
fn send_serving(producer: &BaseProducer, record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
    send_or_wait(
        |r| producer.send(r),
        record,
        || {
            producer.poll(Duration::from_millis(1));
        },
    )
}

/// What rdkafka's `send` returns for a record it did not take.
type Refused<'a, D> = (KafkaError, BaseRecord<'a, [u8], [u8], D>);

/// Sends `record`, calling `wait` each time the producer's queue is full.
fn send_or_wait<'a, D: rdkafka::util::IntoOpaque>(
    mut send: impl FnMut(BaseRecord<'a, [u8], [u8], D>) -> Result<(), Refused<'a, D>>,
    mut record: BaseRecord<'a, [u8], [u8], D>,
    mut wait: impl FnMut(),
) -> anyhow::Result<()> {
    loop {
        match send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                wait();
            }
            Err((e, _)) => bail!("produce: {e}"),
        }
    }
}

// ---------------------------------------------------------------- create

fn create(bootstrap: &str, topics: &[String], partitions: i32) -> anyhow::Result<Value> {
    let wanted: Vec<(String, i32)> = topics.iter().map(|t| (t.clone(), partitions)).collect();
    let created = create_topics(bootstrap, &wanted)?;
    // Wait until every partition has a leader, so the first produce never waits.
    let probe: BaseConsumer = client(bootstrap).create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = partition_counts(&probe)?;
        if topics.iter().all(|t| counts.get(t) == Some(&partitions)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("topics not visible with {partitions} partitions after 60 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(json!({ "topics": topics.len(), "created": created, "partitions": partitions }))
}

/// Creates each (topic, partition count) on `bootstrap` with replication
/// factor 1, one CreateTopics request per 50; topics that exist already are
/// left as they are. Returns how many were created.
fn create_topics(bootstrap: &str, topics: &[(String, i32)]) -> anyhow::Result<usize> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let mut created = 0;
    for chunk in new.chunks(50) {
        for r in futures::executor::block_on(admin.create_topics(chunk, &opts))? {
            match r {
                Ok(_) => created += 1,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => bail!("creating {t} on {bootstrap}: {e}"),
            }
        }
    }
    Ok(created)
}

// ---------------------------------------------------------------- load

fn load(bootstrap: &str, topics: &[String], records: u64, size: usize) -> anyhow::Result<Value> {
    let probe: BaseConsumer = client(bootstrap).create()?;
    let counts = partition_counts(&probe)?;
    let mut targets = Vec::new();
    for t in topics {
        let n = *counts
            .get(t)
            .with_context(|| format!("topic {t} does not exist"))?;
        targets.extend((0..n).map(|p| (t.as_str(), p)));
    }
    let producer: ThreadedProducer<CountingContext> = client(bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("enable.idempotence", "false")
        .set("acks", "1")
        .create_with_context(CountingContext::default())?;
    let fill = filler();
    let size = size.min(fill.len() / 2);
    let started = Instant::now();
    let mut bytes = 0u64;
    for i in 0..records {
        let (topic, partition) = targets[(i % targets.len() as u64) as usize];
        let key = i.to_be_bytes();
        let at = (i as usize * 7919) % (fill.len() - size);
        let value = &fill[at..at + size];
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "bench",
            value: Some(&key[..]),
        });
        bytes += (key.len() + size + "bench".len() + key.len()) as u64;
        let record = BaseRecord::to(topic)
            .partition(partition)
            .key(&key[..])
            .payload(value)
            .headers(headers);
        send_retrying(&producer, record)?;
    }
    producer.flush(Duration::from_secs(120))?;
    let secs = started.elapsed().as_secs_f64();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} records were not delivered");
    }
    warm_group_coordinator(bootstrap, targets[0])?;
    Ok(json!({
        "records": records, "bytes": bytes, "seconds": secs,
        "records_per_s": records as f64 / secs, "mb_per_s": bytes as f64 / secs / 1e6,
        "partitions": targets.len(),
    }))
}

/// Makes the cluster create `__consumer_offsets` now: the first consumer
/// group on a fresh cluster waits seconds for it, which would be charged to
/// whichever replicator happens to use a group first.
fn warm_group_coordinator(bootstrap: &str, (topic, partition): (&str, i32)) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "strait-bench-warm-up")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the group coordinator: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => bail!("no group coordinator on {bootstrap} after 60 s: {e}"),
        }
    }
}

// ---------------------------------------------------------------- pipe

/// The source topics matching `regex`, each with its partition count, created
/// on `dest` with the same counts.
fn mirror_topics(
    consumer: &BaseConsumer,
    dest: &str,
    regex: &str,
) -> anyhow::Result<Vec<(String, i32)>> {
    let re = regex::Regex::new(&format!("^(?:{regex})$"))?;
    let mut counts: Vec<(String, i32)> = partition_counts(consumer)?
        .into_iter()
        .filter(|(t, _)| re.is_match(t))
        .collect();
    counts.sort();
    if counts.is_empty() {
        bail!("no source topic matches {regex}");
    }
    create_topics(dest, &counts)?;
    Ok(counts)
}

fn pipe(source: &str, dest: &str, regex: &str) -> anyhow::Result<Value> {
    let consumer: BaseConsumer = client(source)
        .set("group.id", "strait-bench-pipe")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let counts = mirror_topics(&consumer, dest, regex)?;
    let mut tpl = TopicPartitionList::new();
    for (t, n) in &counts {
        for p in 0..*n {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    // The same producer settings as Strait's destination (producer_defaults
    // and producer_forced in actors/src/destination.rs).
    let producer: ThreadedProducer<CountingContext> = client(dest)
        .set("queue.buffering.max.kbytes", "65536")
        .set("queue.buffering.max.messages", "200000")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(CountingContext::default())?;
    eprintln!("strait-bench pipe: copying {} topics", counts.len());
    loop {
        let Some(m) = consumer
            .poll(Duration::from_millis(100))
            .and_then(|r| consumed(r, "pipe"))
        else {
            continue;
        };
        send_retrying(&producer, copy_of(&m))?;
    }
}

/// A polled record, or `None` for a consume error, which is logged
/// (librdkafka goes on retrying).
fn consumed<'a>(
    result: KafkaResult<BorrowedMessage<'a>>,
    tool: &str,
) -> Option<BorrowedMessage<'a>> {
    result
        .map_err(|e| eprintln!("strait-bench {tool}: consume error: {e}"))
        .ok()
}

/// The record to produce for a consumed one: same topic name, partition,
/// key, value, timestamp and headers.
fn copy_of<'a>(m: &'a BorrowedMessage<'_>) -> BaseRecord<'a, [u8], [u8]> {
    let mut record = BaseRecord::to(m.topic()).partition(m.partition());
    record.key = m.key();
    record.payload = m.payload();
    record.timestamp = m.timestamp().to_millis();
    record.headers = m.headers().map(|h| h.detach());
    record
}

/// Where `pipe-eos` writes its progress on the destination.
const PIPE_OFFSETS_TOPIC: &str = "strait-bench.pipe-offsets";

fn pipe_eos(copy: &CopyArgs, lanes: usize, interval: Duration) -> anyhow::Result<Value> {
    let CopyArgs {
        source,
        dest,
        regex,
    } = copy;
    if lanes == 0 {
        bail!("--lanes must be at least 1");
    }
    let consumer: BaseConsumer = client(source).create()?;
    let counts = mirror_topics(&consumer, dest, regex)?;
    drop(consumer);
    create_topics(dest, &[(PIPE_OFFSETS_TOPIC.to_string(), 1)])?;
    // Round robin over the sorted partitions: each lane gets a share of
    // every topic.
    let mut shares = vec![Vec::new(); lanes];
    let all = counts
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)));
    for (i, tp) in all.enumerate() {
        shares[i % lanes].push(tp);
    }
    eprintln!(
        "strait-bench pipe-eos: copying {} topics in {lanes} lanes",
        counts.len()
    );
    // The lanes run until killed; the first to fail ends the copy.
    let (failed, failure) = std::sync::mpsc::channel();
    for (lane, share) in shares.into_iter().enumerate() {
        if share.is_empty() {
            continue;
        }
        let (source, dest, failed) = (source.to_string(), dest.to_string(), failed.clone());
        thread::spawn(move || {
            let error = match pipe_lane(&source, &dest, lane, lanes, &share, interval) {
                Err(e) => e.context(format!("lane {lane}")),
                Ok(never) => match never {},
            };
            let _ = failed.send(error);
        });
    }
    drop(failed);
    match failure.recv() {
        Ok(error) => Err(error),
        Err(_) => bail!("every pipe-eos lane ended without an error"),
    }
}

/// One lane of `pipe-eos`: its own consumer and transactional producer.
fn pipe_lane(
    source: &str,
    dest: &str,
    lane: usize,
    lanes: usize,
    share: &[(String, i32)],
    interval: Duration,
) -> anyhow::Result<std::convert::Infallible> {
    // The lanes together read ahead what one `pipe` consumer does.
    let read_ahead_kb = (65536 / lanes).max(1024);
    let consumer: BaseConsumer = client(source)
        .set("group.id", "strait-bench-pipe-eos")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", read_ahead_kb.to_string())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in share {
        tpl.add_partition_offset(t, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: BaseProducer = client(dest)
        .set("transactional.id", format!("strait-bench-pipe-eos-{lane}"))
        .set("queue.buffering.max.kbytes", read_ahead_kb.to_string())
        .set("queue.buffering.max.messages", "200000")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .create()?;
    let timeout = Duration::from_secs(60);
    producer.init_transactions(timeout)?;
    producer.begin_transaction()?;
    let mut opened = Instant::now();
    // The last offset copied of each partition in the open transaction.
    let mut copied: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let wait = interval.saturating_sub(opened.elapsed());
        let polled = consumer.poll(wait.max(Duration::from_millis(1)));
        if let Some(m) = polled.and_then(|r| consumed(r, "pipe-eos")) {
            send_serving(&producer, copy_of(&m))?;
            copied.insert((m.topic().to_string(), m.partition()), m.offset());
        }
        producer.poll(Duration::ZERO);
        if opened.elapsed() < interval || copied.is_empty() {
            continue;
        }
        for ((topic, partition), offset) in copied.drain() {
            let key = json!(["pipe-eos", {"topic": topic, "partition": partition}]).to_string();
            let value = json!({ "offset": offset }).to_string();
            send_serving(
                &producer,
                BaseRecord::to(PIPE_OFFSETS_TOPIC)
                    .key(key.as_bytes())
                    .payload(value.as_bytes()),
            )?;
        }
        producer
            .commit_transaction(timeout)
            .context("pipe-eos: commit")?;
        producer.begin_transaction()?;
        opened = Instant::now();
    }
}

// ---------------------------------------------------------------- watch

struct WatchArgs {
    bootstrap: String,
    topics: Vec<String>,
    expect: i64,
    pid: u32,
    extra: Vec<u32>,
    status_url: Option<String>,
    mm2_offsets_topic: Option<String>,
    interval: Duration,
    timeout: Duration,
    stall: Duration,
    clk_tck: f64,
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck)
}

/// (VmRSS, VmHWM) in KiB.
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Records on the destination, as the sum of its end offsets.
struct Count {
    records: i64,
    /// Every partition of every topic answered: `records` is the whole count.
    /// Otherwise it is a lower bound (enough to tell the first record).
    complete: bool,
}

/// Records on the destination: the sum of the end offsets of the topics that
/// exist. `layout` caches partition counts; metadata is fetched again only
/// while some topic of the set is missing.
fn destination_records(
    consumer: &BaseConsumer,
    topics: &[String],
    layout: &mut HashMap<String, i32>,
) -> anyhow::Result<Count> {
    if layout.len() < topics.len() {
        let counts = partition_counts(consumer)?;
        layout.clear();
        layout.extend(
            topics
                .iter()
                .filter_map(|t| counts.get(t).filter(|n| **n > 0).map(|n| (t.clone(), *n))),
        );
    }
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        if let Some(n) = layout.get(t) {
            for p in 0..*n {
                tpl.add_partition_offset(t, p, Offset::End)?;
            }
        }
    }
    let mut complete = layout.len() == topics.len();
    if tpl.count() == 0 {
        return Ok(Count {
            records: 0,
            complete,
        });
    }
    // A partition that does not answer (a topic created a moment ago) makes
    // the count partial: callers look again for the whole count, but a
    // partial count above zero already shows the first record, which the
    // start-up time must not wait for the other topics to tell.
    let ends = consumer.offsets_for_times(tpl, Duration::from_secs(10))?;
    let mut records = 0;
    for e in ends.elements() {
        match (e.error(), e.offset()) {
            (Ok(()), Offset::Offset(o)) => records += o.max(0),
            _ => complete = false,
        }
    }
    Ok(Count { records, complete })
}

/// A plain HTTP/1.1 GET, for Strait's /status.
fn http_get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .context("status url must be http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (_, body) = body.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body.to_string())
}

/// Records replicated according to Strait's /status: the sum, over the
/// partitions of the topic set, of the offset up to which all is acknowledged.
fn status_records(url: &str, topics: &[String]) -> anyhow::Result<i64> {
    let v: Value = serde_json::from_str(&http_get(url)?)?;
    let mut sum = 0;
    for flow in v["flows"].as_array().into_iter().flatten() {
        let Some(ts) = flow["topics"].as_object() else {
            continue;
        };
        for (name, t) in ts {
            if !topics.contains(name) {
                continue;
            }
            for p in t["assigned"].as_array().into_iter().flatten() {
                sum += p["replicated_offset"].as_i64().unwrap_or(0);
            }
        }
    }
    Ok(sum)
}

/// MirrorMaker 2's committed progress, from its offsets topic on the
/// destination read committed. Each record there has the key
/// `["<connector>",{"cluster":"A","partition":P,"topic":"T"}]` and the value
/// `{"offset":O}`, O being the last source offset copied; source offsets start
/// at 0 and have no gaps here (the load is not transactional), so O + 1 records
/// of that partition are on the destination.
struct Mm2Offsets {
    consumer: BaseConsumer,
    topic: String,
    assigned: bool,
    copied: HashMap<(String, i64), i64>,
}

impl Mm2Offsets {
    fn new(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer = client(bootstrap)
            .set("group.id", "strait-bench-watch")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            assigned: false,
            copied: HashMap::new(),
        })
    }

    /// Records copied into `topics`, as of the offsets read so far. Zero until
    /// MirrorMaker 2 has created its offsets topic.
    fn records(&mut self, topics: &[String]) -> anyhow::Result<i64> {
        if !self.assigned {
            let Some(n) = partition_counts(&self.consumer)?.get(&self.topic).copied() else {
                return Ok(0);
            };
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition_offset(&self.topic, p, Offset::Beginning)?;
            }
            self.consumer.assign(&tpl)?;
            self.assigned = true;
        }
        while let Some(m) = self.consumer.poll(Duration::ZERO) {
            let m = m?;
            let (Some(k), Some(v)) = (m.key(), m.payload()) else {
                continue;
            };
            // Other connectors' entries (and anything unparsable) are not ours.
            let (Ok(key), Ok(value)) = (
                serde_json::from_slice::<Value>(k),
                serde_json::from_slice::<Value>(v),
            ) else {
                continue;
            };
            let part = &key[1];
            if let (Some(t), Some(p), Some(o)) = (
                part["topic"].as_str(),
                part["partition"].as_i64(),
                value["offset"].as_i64(),
            ) {
                self.copied.insert((t.to_string(), p), o + 1);
            }
        }
        Ok(self
            .copied
            .iter()
            .filter(|((t, _), _)| topics.contains(t))
            .map(|(_, n)| n)
            .sum())
    }
}

fn watch(a: WatchArgs) -> anyhow::Result<Value> {
    let consumer: BaseConsumer = client(&a.bootstrap).create()?;
    let started = Instant::now();
    let t0 = now_ns();
    let mut first: Option<(u64, Option<f64>, Vec<Option<f64>>)> = None;
    let mut peak_rss = 0u64;
    let mut samples = Vec::new();
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    let (mut last_count, mut last_change) = (0i64, Instant::now());
    let mut layout = HashMap::new();
    // When every partition of the set first answered: on a fresh destination,
    // when the replicator's topics were all created and ready.
    let mut answered: Option<u64> = None;
    let mut mm2 = a
        .mm2_offsets_topic
        .as_deref()
        .map(|t| Mm2Offsets::new(&a.bootstrap, t))
        .transpose()?;
    // Transactions: progress is what the replicator committed, and the end
    // offsets, which markers inflate, are read once at the end.
    let transactional = a.status_url.is_some() || mm2.is_some();
    loop {
        // Errors are transient here (a topic just created has no leader yet,
        // /status not yet served): count nothing and look again.
        let probe = match (&a.status_url, mm2.as_mut()) {
            (Some(url), _) => status_records(url, &a.topics).map(|records| Count {
                records,
                complete: true,
            }),
            (None, Some(m)) => m.records(&a.topics).map(|records| Count {
                records,
                complete: true,
            }),
            (None, None) => destination_records(&consumer, &a.topics, &mut layout),
        };
        let seen = probe.as_ref().map_or(0, |c| c.records);
        // (Only counting end offsets asks every partition.)
        if answered.is_none() && !transactional && probe.as_ref().is_ok_and(|c| c.complete) {
            answered = Some(now_ns());
        }
        let count = probe
            .ok()
            .filter(|c| c.complete)
            .map_or(last_count, |c| c.records);
        let t = now_ns();
        let cpu = cpu_seconds(a.pid, a.clk_tck);
        let mem = memory_kb(a.pid);
        let Some((rss, hwm)) = mem else {
            bail!("the replicator (pid {}) exited before the destination held {} records (it had {count})", a.pid, a.expect);
        };
        peak_rss = peak_rss.max(rss);
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            samples.push(json!([(t - t0) as f64 / 1e9, count, cpu, rss, seen]));
        }
        if first.is_none() && seen > 0 {
            let extra = a.extra.iter().map(|p| cpu_seconds(*p, a.clk_tck)).collect();
            first = Some((t, cpu, extra));
        }
        if count >= a.expect {
            // With --status-url or --mm2-offsets-topic, what the destination's end offsets add up to
            // (more than the records when transaction markers take offsets).
            // Read committed, the end offsets reach the last records only once
            // the coordinator has written the commit markers, which it does
            // after answering the commit: look again for a while.
            let destination_end_offsets = transactional
                .then(|| {
                    let mut last = None;
                    for attempt in 0..60 {
                        if attempt > 0 {
                            thread::sleep(Duration::from_millis(500));
                        }
                        // Only a count over every topic of the set.
                        last = destination_records(&consumer, &a.topics, &mut layout)
                            .ok()
                            .filter(|c| c.complete)
                            .map(|c| c.records)
                            .or(last);
                        if last.is_some_and(|n| n > a.expect) {
                            break;
                        }
                    }
                    last
                })
                .flatten();
            let (first_ns, first_cpu, first_extra) = first.clone().unwrap_or((t, cpu, vec![]));
            let extra: Vec<Value> = a
                .extra
                .iter()
                .zip(first_extra.iter().chain(std::iter::repeat(&None)))
                .map(|(p, f)| {
                    let now = cpu_seconds(*p, a.clk_tck);
                    json!({ "pid": p, "cpu_s_copy": now.zip(*f).map(|(n, f)| n - f) })
                })
                .collect();
            return Ok(json!({
                "watch_start_ns": t0,
                "first_ns": first_ns,
                "all_partitions_answered_ns": answered,
                "done_ns": t,
                "records": count,
                "destination_end_offsets": destination_end_offsets,
                "cpu_s_at_first": first_cpu,
                "cpu_s_at_done": cpu,
                "vm_hwm_kb": hwm,
                "vm_rss_kb_at_done": rss,
                "vm_rss_kb_peak_sampled": peak_rss,
                "extra": extra,
                "samples": samples,
            }));
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        } else if last_change.elapsed() > a.stall {
            bail!(
                "no progress for {:?}: {count} of {} records",
                a.stall,
                a.expect
            );
        }
        if started.elapsed() > a.timeout {
            bail!(
                "timed out after {:?} with {count} of {} records",
                a.timeout,
                a.expect
            );
        }
        // Fine-grained until the first record (start-up time), then lighter on the broker.
        thread::sleep(if first.is_some() {
            a.interval * 4
        } else {
            a.interval
        });
    }
}

// ---------------------------------------------------------------- latency

/// A consumer at the end of every partition of `topic`, for the latency
/// probe: it fetches as soon as a record is there (`fetch.min.bytes` 1,
/// `fetch.wait.max.ms` 10).
fn latency_reader(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    read_committed: bool,
) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "strait-bench-latency")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// One counted record as a reader saw it: its index (the key), the
/// partition it was read from, when it was sent and when it arrived (ns
/// since the epoch).
#[derive(Clone, Copy)]
struct Arrival {
    index: u64,
    partition: i32,
    sent_ns: u64,
    arrived_ns: u64,
}

impl Arrival {
    /// The replicator's share of this record's trip (µs): from when the
    /// source reader saw it (`read_at_source`, by index) to its arrival.
    /// Saturates at zero when the source reader was the slower of the two
    /// to fetch it; `None` when the source reader missed it.
    fn share_us(&self, read_at_source: &[Option<u64>]) -> Option<u64> {
        let at_source = (*read_at_source.get(self.index as usize)?)?;
        Some(self.arrived_ns.saturating_sub(at_source) / 1000)
    }
}

/// Reads until the producer is done and every counted record arrived (or 30 s
/// after the producer is done), keeping the records sent after `warm_ns`.
fn read_arrivals(
    consumer: &BaseConsumer,
    producing: &AtomicBool,
    warm_sent: &AtomicU64,
    warm_ns: u64,
    capacity: usize,
) -> Vec<Arrival> {
    let mut arrivals = Vec::with_capacity(capacity);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if !producing.load(Ordering::SeqCst) {
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            if arrivals.len() as u64 >= warm_sent.load(Ordering::SeqCst)
                || Instant::now() > deadline
            {
                return arrivals;
            }
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let arrived_ns = now_ns();
        let field = |b: Option<&[u8]>| -> Option<[u8; 8]> { b?.get(..8)?.try_into().ok() };
        let (Some(sent), Some(index)) = (field(m.payload()), field(m.key())) else {
            continue;
        };
        let sent_ns = u64::from_le_bytes(sent);
        if sent_ns >= warm_ns {
            arrivals.push(Arrival {
                index: u64::from_be_bytes(index),
                partition: m.partition(),
                sent_ns,
                arrived_ns,
            });
        }
    }
}

/// p50, p90, p99, p99.9, max and mean of `values_us`, in ms.
fn percentiles(mut values_us: Vec<u64>) -> Value {
    values_us.sort_unstable();
    let pct = |q: f64| -> Option<f64> {
        if values_us.is_empty() {
            return None;
        }
        let i = ((values_us.len() as f64 * q).ceil() as usize).clamp(1, values_us.len()) - 1;
        Some(values_us[i] as f64 / 1000.0)
    };
    let mean = (!values_us.is_empty())
        .then(|| values_us.iter().sum::<u64>() as f64 / values_us.len() as f64 / 1000.0);
    json!({
        "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
        "max_ms": pct(1.0), "mean_ms": mean, "count": values_us.len(),
    })
}

/// Writes one line per record that reached the destination: when it was
/// sent (ns since the epoch), its partition, its end-to-end latency and the
/// replicator's share of it (µs; `-` when the source reader missed it), to
/// see when the slow ones were sent and where their time went.
fn write_samples(
    path: &std::path::Path,
    arrivals: &[Arrival],
    read_at_source: &[Option<u64>],
) -> anyhow::Result<()> {
    let mut out = String::from("# sent_ns partition end_to_end_us share_us\n");
    for a in arrivals {
        let share = a
            .share_us(read_at_source)
            .map_or_else(|| "-".to_string(), |us| us.to_string());
        out.push_str(&format!(
            "{} {} {} {share}\n",
            a.sent_ns,
            a.partition,
            a.arrived_ns.saturating_sub(a.sent_ns) / 1000
        ));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Steady-rate latency through a replicator. Besides the destination, a
/// second reader reads the source topic itself at the same time, so the
/// same records also give the source hop alone (sent to readable on the
/// source: a floor no replicator can go under) and the replicator's own
/// share (arrival at the destination minus arrival at the source).
#[allow(clippy::too_many_arguments)]
fn latency(
    source: &str,
    dest: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    warmup: u64,
    size: usize,
    samples: Option<&std::path::Path>,
    read_committed: bool,
) -> anyhow::Result<Value> {
    let size = size.max(8);
    let probe: BaseConsumer = client(source).create()?;
    let partitions = *partition_counts(&probe)?
        .get(topic)
        .with_context(|| format!("source topic {topic} does not exist"))?;
    // The replicator creates the destination topic; wait for it.
    let dest_probe: BaseConsumer = client(dest).create()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while partition_counts(&dest_probe)?.get(topic) != Some(&partitions) {
        if Instant::now() > deadline {
            bail!("destination topic {topic} did not appear with {partitions} partitions within 120 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let consumer = latency_reader(dest, topic, partitions, read_committed)?;
    let source_reader = latency_reader(source, topic, partitions, false)?;
    // Let the readers resolve their end offsets before anything is produced.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let _ = consumer.poll(Duration::from_millis(50));
        let _ = source_reader.poll(Duration::from_millis(50));
    }

    let total = rate * seconds;
    let start_ns = now_ns() + 100_000_000;
    let warm_ns = start_ns + warmup * 1_000_000_000;
    let warm_sent = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));

    let producer_thread = {
        let source = source.to_string();
        let topic = topic.to_string();
        let warm_sent = Arc::clone(&warm_sent);
        let producing = Arc::clone(&producing);
        thread::spawn(move || -> anyhow::Result<u64> {
            let producer: ThreadedProducer<CountingContext> = client(&source)
                .set("linger.ms", "0")
                .set("enable.idempotence", "false")
                .set("acks", "1")
                .create_with_context(CountingContext::default())?;
            let fill = filler();
            let mut value = fill[..size.min(fill.len())].to_vec();
            for i in 0..total {
                let due = start_ns + i * 1_000_000_000 / rate;
                let now = now_ns();
                if due > now {
                    thread::sleep(Duration::from_nanos(due - now));
                }
                let sent = now_ns();
                value[..8].copy_from_slice(&sent.to_le_bytes());
                let key = i.to_be_bytes();
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: "bench",
                    value: Some(&key[..]),
                });
                let record = BaseRecord::to(&topic)
                    .partition((i % partitions as u64) as i32)
                    .key(&key[..])
                    .payload(&value[..])
                    .headers(headers);
                send_retrying(&producer, record)?;
                if sent >= warm_ns {
                    warm_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
            producer.flush(Duration::from_secs(30))?;
            producing.store(false, Ordering::SeqCst);
            Ok(producer.context().failed.load(Ordering::Relaxed))
        })
    };
    let source_thread = {
        let (producing, warm_sent) = (Arc::clone(&producing), Arc::clone(&warm_sent));
        thread::spawn(move || {
            read_arrivals(
                &source_reader,
                &producing,
                &warm_sent,
                warm_ns,
                total as usize,
            )
        })
    };
    let arrivals = read_arrivals(&consumer, &producing, &warm_sent, warm_ns, total as usize);
    let failed = producer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let at_source = source_thread
        .join()
        .map_err(|_| anyhow::anyhow!("source reader thread panicked"))?;
    let sent = warm_sent.load(Ordering::SeqCst);
    let mut read_at_source = vec![None; total as usize];
    for a in &at_source {
        if let Some(slot) = read_at_source.get_mut(a.index as usize) {
            *slot = Some(a.arrived_ns);
        }
    }
    if let Some(path) = samples {
        write_samples(path, &arrivals, &read_at_source)?;
    }
    // The replicator's share, for each record both readers saw.
    let replication_us: Vec<u64> = arrivals
        .iter()
        .filter_map(|a| a.share_us(&read_at_source))
        .collect();
    let end_to_end = percentiles(
        arrivals
            .iter()
            .map(|a| a.arrived_ns.saturating_sub(a.sent_ns) / 1000)
            .collect(),
    );
    let source_hop = percentiles(
        at_source
            .iter()
            .map(|a| a.arrived_ns.saturating_sub(a.sent_ns) / 1000)
            .collect(),
    );
    let mut out = json!({
        "rate": rate, "seconds": seconds, "warmup": warmup, "size": size, "partitions": partitions,
        "counted_sent": sent, "counted_received": arrivals.len(), "produce_failures": failed,
        "read_committed": read_committed,
        "source_hop": source_hop,
        "replication": percentiles(replication_us),
    });
    // The end-to-end figures stay at the top level, as runs before the
    // source reader recorded them.
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), end_to_end) {
        o.extend(e.into_iter().filter(|(k, _)| k != "count"));
    }
    Ok(out)
}
