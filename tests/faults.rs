//! Faults that must lose nothing, on real brokers: the destination or the
//! source cluster stopped mid-stream, `kill -9` ten times in one stream, a
//! copier that fails, an exactly-once lane that panics, an exactly-once
//! transaction the destination aborts for outliving its timeout, a source
//! unreachable at start-up, and (exactly-once) an
//! instance killed while another shares its group, and an instance set to
//! divide a flow the other way (in lanes, or not) started beside running ones.
//!
//! Every test ends with the verifier ([`verify_copy`]): it reads both clusters
//! (`read_committed`) and compares per partition by payload id. Nothing may be
//! lost; duplicates are counted and printed in at-least-once mode and must be
//! zero in exactly-once mode. The exactly-once variants take the same code
//! path with `Delivery::ExactlyOnce`.
//!
//! The tests share one source and one destination cluster and run one at a
//! time ([`serial`]): some stop a cluster, which the others must not see, and
//! one at a time also keeps a 2-core machine honest for memory and timing.
//! A stopped cluster is started again even when the test fails ([`Outage`]).

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::cluster::{shared_pair, KafkaCluster};
use support::records::{
    create_topic, id_payload, partition_count, produce, read_topic, total_records, unique_name,
    verify_copy, wait_for_complete_copy, wait_until, Delivery, Out, Stream,
};
use support::strait::{run_strait, Config, Memory, Strait};

const PARTITIONS: i32 = 4;

/// Bound on waits for things that normally take seconds.
const WAIT: Duration = Duration::from_secs(120);

/// Bound on catching up after a fault: a restarted member may wait for the
/// dead one's session to expire, and in exactly-once mode a dead instance's
/// open transaction may hold back read_committed readers until it is aborted.
const CATCH_UP: Duration = Duration::from_secs(300);

/// How long a cluster stays down in the outage tests (the 30 s).
const OUTAGE: Duration = Duration::from_secs(30);

/// Runs the tests of this file one at a time (see the module doc). A test
/// that failed poisons the lock; the next one still runs. The guard prints
/// how long the test took, for the file's time budget.
fn serial() -> Serial {
    static SERIAL: Mutex<()> = Mutex::new(());
    let lock = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _lock: lock,
        start: Instant::now(),
    }
}

struct Serial {
    _lock: MutexGuard<'static, ()>,
    start: Instant,
}

impl Drop for Serial {
    fn drop(&mut self) {
        let name = thread::current().name().unwrap_or("?").to_string();
        eprintln!("{name}: {:.0?}", self.start.elapsed());
    }
}

/// A cluster stopped on purpose. [`end`](Self::end) starts it again; so does
/// dropping it (when the test fails half-way), so the next test finds it up.
struct Outage<'a> {
    cluster: &'a KafkaCluster,
    over: bool,
}

impl<'a> Outage<'a> {
    fn begin(cluster: &'a KafkaCluster) -> Self {
        let start = Instant::now();
        cluster.stop_brokers();
        eprintln!(
            "cluster '{}' stopped (took {:?})",
            cluster.name(),
            start.elapsed()
        );
        Outage {
            cluster,
            over: false,
        }
    }

    fn end(mut self) {
        self.over = true;
        let start = Instant::now();
        self.cluster.restart();
        eprintln!(
            "cluster '{}' serving again (restart took {:?})",
            self.cluster.name(),
            start.elapsed()
        );
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        if !self.over {
            // Never panic in drop: it runs while the test's panic unwinds.
            let cluster = self.cluster;
            if catch_unwind(AssertUnwindSafe(|| cluster.restart())).is_err() {
                eprintln!("warning: could not restart cluster '{}'", cluster.name());
            }
        }
    }
}

/// A small deterministic random source (64-bit LCG, Knuth's MMIX constants),
/// so that a failing run can be replayed with the seed it printed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform-enough in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed of the kill tests: `STRAIT_TEST_SEED` if set, else `default`.
fn seed(default: u64) -> u64 {
    std::env::var("STRAIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Waits until every record now on the source's `topic` is on the
/// destination (as `delivery` promises), failing if Strait exits meanwhile.
fn catch_up(strait: &Strait, src: &str, dst: &str, topic: &str, delivery: Delivery) {
    let source_records = read_topic(src, topic, PARTITIONS);
    wait_for_complete_copy(&source_records, dst, topic, delivery, CATCH_UP, || {
        strait.assert_running();
        strait.status_summary()
    });
}

/// After `kill -9` the restarted (or surviving) member gets the partitions
/// only once the dead member's session expires: 6 s (the brokers' minimum)
/// instead of Strait's 30 s keeps ten kills within the time budget.
fn fast_session(config: Config) -> Config {
    config.kafka("source", "session.timeout.ms", "6000").kafka(
        "source",
        "heartbeat.interval.ms",
        "1000",
    )
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Keeps `cluster` down for [`OUTAGE`] while `strait` runs, asserting every
/// second that the process is still alive and sampling its memory. Returns
/// the samples: the first taken just before the brokers stopped, the last
/// just before they are started again (by the caller, with `end`).
fn outage_with_memory_samples<'a>(
    cluster: &'a KafkaCluster,
    strait: &Strait,
) -> (Outage<'a>, Vec<Memory>) {
    let sample = || {
        strait.assert_running();
        strait
            .memory()
            .unwrap_or_else(|| strait.fail("cannot read /proc/<pid>/status of Strait"))
    };
    let mut samples = vec![sample()];
    let outage = Outage::begin(cluster);
    let start = Instant::now();
    while start.elapsed() < OUTAGE {
        thread::sleep(Duration::from_secs(1));
        samples.push(sample());
    }
    (outage, samples)
}

/// Prints the RSS samples of an outage and asserts that none is more than
/// `bound_mb` above the first.
fn assert_memory_bounded(what: &str, samples: &[Memory], bound_mb: f64) {
    let first = samples[0].rss_kb;
    let rss: Vec<String> = samples
        .iter()
        .map(|m| format!("{:.0}", mb(m.rss_kb)))
        .collect();
    let max = samples.iter().map(|m| m.rss_kb).max().unwrap_or(first);
    let last = samples.last().map_or(first, |m| m.rss_kb);
    eprintln!(
        "{what}: Strait RSS over the outage, MB, one sample per second: [{}]\n\
         {what}: RSS at start {:.1} MB, at end {:.1} MB, highest {:.1} MB; \
         peak RSS (VmHWM) so far {:.1} MB",
        rss.join(", "),
        mb(first),
        mb(last),
        mb(max),
        mb(samples.last().map_or(0, |m| m.peak_rss_kb)),
    );
    assert!(
        mb(max.saturating_sub(first)) <= bound_mb,
        "{what}: Strait's RSS grew by {:.1} MB during the outage (from {:.1} to {:.1} MB), \
         more than the {bound_mb} MB its buffers are configured to hold",
        mb(max - first),
        mb(first),
        mb(max)
    );
}

// ---------------------------------------------------------------------------
// 1. The destination cluster stopped for 30 s mid-stream
// ---------------------------------------------------------------------------

/// Record payloads of the destination-outage test: 2 KB, so that a 30-s
/// outage at 2,000 records/s brings about 120 MB, well over what Strait may
/// buffer with [`small_buffers`] (see [`outage_rss_bound_mb`]).
const OUTAGE_PADDING: usize = 2_000;
const OUTAGE_RATE: u64 = 2_000;

/// The buffers of the outage tests, set small so that the stream overflows
/// them several times during the outage. With the defaults (a 16 MB queue
/// per producer, 16 MB of read-ahead) an outage would have to bring a few
/// hundred MB before an unbounded buffer could be told from a full bounded one.
///
/// The source's `max.poll.interval.ms` is set to its smallest (the session
/// timeout): a reading thread that stopped polling for the outage would be
/// put out of the group, and its partitions revoked.
fn small_buffers(config: Config) -> Config {
    config
        // Each destination producer's queue: 4 MB.
        .kafka("destination", "queue.buffering.max.kbytes", "4096")
        // The consumer's read-ahead: 1 MB for all partitions.
        .kafka("source", "queued.max.messages.kbytes", "1024")
        .kafka("source", "max.poll.interval.ms", "10000")
        // The destination mailbox: 4 batches of at most 1 MB.
        .flow_key("mailbox_capacity", "4")
        .flow_key("batch_max_bytes", "1048576")
}

/// How much Strait's RSS may grow while a cluster is away, given
/// [`small_buffers`] and 4 partitions.
///
/// Record bytes Strait can hold: the producer queues (at-least-once: one
/// producer, 4 MB; exactly-once: one transactional producer per partition,
/// 4 x 4 MB = 16 MB) + the flow's batch budget (16 MB: batches being filled,
/// waiting for their copier, and in the mailbox; `BATCH_BUDGET_BYTES`) + the
/// read-ahead (1 MB) + fetch responses in flight (max.partition.fetch.bytes
/// 1 MB x 4): 25 MB at-least-once, 37 MB exactly-once. Doubled for
/// per-record bookkeeping (librdkafka's message structs, the batches' offsets
/// and headers) and allocator slack, plus 16 MB for whatever else an outage
/// grows (thread arenas, retry and reconnect buffers): 66 MB and 90 MB. An
/// unbounded buffer would instead grow with the ~120 MB the stream brings
/// during the outage.
fn outage_rss_bound_mb(delivery: Delivery) -> f64 {
    let held_mb = match delivery {
        Delivery::AtLeastOnce => 4.0 + 16.0 + 1.0 + 4.0,
        Delivery::ExactlyOnce => 16.0 + 16.0 + 1.0 + 4.0,
    };
    2.0 * held_mb + 16.0
}

fn destination_outage(delivery: Delivery) {
    let _serial = serial();
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("dst-outage");
    create_topic(src, &topic, PARTITIONS);
    let config = small_buffers(
        Config::new(src, dst, &[&topic], &unique_name("strait.dst-outage")).delivery(delivery),
    );
    let mut strait = Strait::start("strait", &config);
    let stream = Stream::start(
        src,
        &topic,
        PARTITIONS,
        OUTAGE_RATE,
        OUTAGE_PADDING,
        u64::MAX,
    );

    strait.wait_for_copy(dst, &topic, PARTITIONS, 10_000, WAIT);
    let at_stop = (
        stream.acknowledged(),
        total_records(dst, &topic, PARTITIONS),
    );
    let (outage, samples) = outage_with_memory_samples(destination, &strait);
    let during = stream.acknowledged() - at_stop.0;
    eprintln!(
        "destination down for {OUTAGE:?}: {during} records ({:.0} MB) produced meanwhile; \
         {:?} had been copied when it stopped",
        (during as f64 * OUTAGE_PADDING as f64) / 1_048_576.0,
        at_stop.1
    );
    outage.end();
    assert_memory_bounded(
        &format!("destination outage ({delivery:?})"),
        &samples,
        outage_rss_bound_mb(delivery),
    );
    // Held back by the outage, the reading thread paused the partitions but
    // went on polling, so the group kept its member (see `small_buffers`).
    let revoked = strait
        .metric("strait_rebalances_total", &[("kind", "revoke")])
        .unwrap_or_else(|e| strait.fail(&format!("reading /metrics: {e}")));
    assert!(
        revoked.unwrap_or(0.0) == 0.0,
        "destination outage ({delivery:?}): the source consumer lost its partitions \
         ({revoked:?} revocations): it stopped polling for longer than max.poll.interval.ms"
    );

    // The stream goes on a little after the destination is back, then ends.
    thread::sleep(Duration::from_secs(2));
    let produced = stream.stop();
    let t = Instant::now();
    catch_up(&strait, src, dst, &topic, delivery);
    eprintln!("caught up after {:?}", t.elapsed());
    let peak = strait.memory().map_or(0, |m| m.peak_rss_kb);
    strait.stop();
    let t = Instant::now();
    eprintln!(
        "destination outage ({delivery:?}): {produced} records produced; \
         Strait's peak RSS over the whole run (VmHWM) {:.1} MB",
        mb(peak)
    );
    verify_copy(src, dst, &topic, &topic, PARTITIONS, delivery);
    eprintln!("verified in {:?}", t.elapsed());
}

#[test]
fn destination_down_30s_mid_stream_strait_keeps_running_with_bounded_memory_and_loses_nothing() {
    destination_outage(Delivery::AtLeastOnce);
}

#[test]
fn exactly_once_destination_down_30s_mid_stream_bounded_memory_each_record_once() {
    destination_outage(Delivery::ExactlyOnce);
}

// ---------------------------------------------------------------------------
// 2. The source cluster stopped and restarted mid-stream
// ---------------------------------------------------------------------------

#[test]
fn source_down_30s_mid_stream_strait_keeps_running_with_bounded_memory_and_loses_nothing() {
    let _serial = serial();
    let delivery = Delivery::AtLeastOnce;
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("src-outage");
    create_topic(src, &topic, PARTITIONS);
    let config = small_buffers(
        Config::new(src, dst, &[&topic], &unique_name("strait.src-outage")).delivery(delivery),
    );
    let mut strait = Strait::start("strait", &config);
    // While the source is down, the stream's flush waits for it: records
    // queued then reach the source once it is back.
    let stream = Stream::start(src, &topic, PARTITIONS, 1_000, 500, u64::MAX);

    strait.wait_for_copy(dst, &topic, PARTITIONS, 5_000, WAIT);
    let (outage, samples) = outage_with_memory_samples(source, &strait);
    outage.end();
    // Nothing arrives while the source is away: memory has nothing to hold.
    assert_memory_bounded("source outage", &samples, outage_rss_bound_mb(delivery));

    thread::sleep(Duration::from_secs(2));
    let produced = stream.stop();
    catch_up(&strait, src, dst, &topic, delivery);
    strait.stop();
    eprintln!("source outage: {produced} records produced");
    verify_copy(src, dst, &topic, &topic, PARTITIONS, delivery);
}

// ---------------------------------------------------------------------------
// 3. kill -9 at random points, ten times in one stream
// ---------------------------------------------------------------------------

const KILLS: usize = 10;

fn kill_nine_ten_times(delivery: Delivery, default_seed: u64) {
    kill_nine_ten_times_with(delivery, default_seed, None);
}

/// The flow's config, in `lanes` lanes (`transaction_lanes`) if given.
fn with_lanes(config: Config, lanes: Option<u32>) -> Config {
    match lanes {
        Some(n) => config.flow_key("transaction_lanes", &n.to_string()),
        None => config,
    }
}

/// Fails unless the flow of `group_id` runs in `lanes` lanes: its lanes
/// topic exists on the destination with one partition per lane.
fn assert_in_lanes(destination: &str, group_id: &str, lanes: Option<u32>) {
    if let Some(n) = lanes {
        let topic = format!("strait.lanes.{group_id}");
        assert_eq!(
            partition_count(destination, &topic),
            Some(n as i32),
            "the flow should copy in {n} lanes, with the lanes topic `{topic}`"
        );
    }
}

fn kill_nine_ten_times_with(delivery: Delivery, default_seed: u64, lanes: Option<u32>) {
    let _serial = serial();
    let seed = seed(default_seed);
    let mut rng = Lcg(seed);
    eprintln!("kill test ({delivery:?}): seed {seed} (replay with STRAIT_TEST_SEED={seed})");
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("kills");
    create_topic(src, &topic, PARTITIONS);
    let group = unique_name("strait.kills");
    let config = with_lanes(
        fast_session(Config::new(src, dst, &[&topic], &group).delivery(delivery)),
        lanes,
    );
    let mut strait = Strait::start("strait", &config);
    let stream = Stream::start(src, &topic, PARTITIONS, 1_000, 100, u64::MAX);
    strait.wait_for_copy(dst, &topic, PARTITIONS, 2_000, WAIT);
    assert_in_lanes(dst, &group, lanes);

    for kill in 1..=KILLS {
        // Half the kills land while Strait is still starting (joining the
        // group, before or during its first batches), half while it copies.
        let while_starting = rng.below(2) == 0;
        let delay = Duration::from_millis(if while_starting {
            rng.below(2_000)
        } else {
            wait_until(
                &format!("Strait to copy again before kill {kill}"),
                WAIT,
                || match strait.active_partitions() {
                    Ok(p) if p.len() == PARTITIONS as usize => Ok(()),
                    Ok(p) => Err(format!("{} partitions copying", p.len())),
                    Err(e) => Err(e),
                },
            );
            rng.below(2_500)
        });
        thread::sleep(delay);
        strait.kill9();
        eprintln!(
            "kill {kill}/{KILLS}: {} after {delay:?}; {} produced, {:?} on the destination",
            if while_starting {
                "while starting"
            } else {
                "while copying"
            },
            stream.acknowledged(),
            total_records(dst, &topic, PARTITIONS)
        );
        strait.restart();
    }

    thread::sleep(Duration::from_secs(3));
    let produced = stream.stop();
    catch_up(&strait, src, dst, &topic, delivery);
    strait.stop();
    eprintln!("kill test ({delivery:?}): {produced} records produced, {KILLS} kills");
    verify_copy(src, dst, &topic, &topic, PARTITIONS, delivery);
}

#[test]
fn sigkill_ten_times_at_random_points_in_one_stream_loses_nothing() {
    kill_nine_ten_times(Delivery::AtLeastOnce, 0x5eed_0001);
}

#[test]
fn exactly_once_sigkill_ten_times_at_random_points_each_record_once() {
    kill_nine_ten_times(Delivery::ExactlyOnce, 0x5eed_0002);
}

#[test]
fn exactly_once_in_lanes_sigkill_ten_times_at_random_points_each_record_once() {
    // Fewer lanes than partitions: a lane's transactions carry records of
    // several partitions.
    kill_nine_ten_times_with(Delivery::ExactlyOnce, 0x5eed_0003, Some(3));
}

// ---------------------------------------------------------------------------
// 4. A copier that fails
// ---------------------------------------------------------------------------

/// Creates `topic` with [`PARTITIONS`] partitions holding `per_partition`
/// id records each: record `n` (payload id `n`, key `k<n>`, 100 bytes) in
/// partition `n % PARTITIONS`.
fn create_with_ids(src: &str, topic: &str, per_partition: u64) {
    create_topic(src, topic, PARTITIONS);
    let records: Vec<Out> = (0..per_partition * PARTITIONS as u64)
        .map(|id| {
            let p = (id % PARTITIONS as u64) as i32;
            Out::keyed(p, format!("k{id}"), id_payload(id, 100))
        })
        .collect();
    produce(src, topic, &records);
}

#[test]
fn failing_copier_restarts_3_times_with_exponential_backoff_others_uninterrupted() {
    let _serial = serial();
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("copier-fault");
    let per_partition: u64 = 5_000;
    create_with_ids(src, &topic, per_partition);

    let (bad, offset, times) = (1, 2_500, 3);
    let fault = format!("copier_panic_at={topic}:{bad}:{offset}:{times}");
    // Backoff 1 s, 2 s, 4 s: the failing partition is held back for 7 s,
    // ample time for the others to finish if they are not interrupted.
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.copier-fault"))
        .flow_key("restart_backoff_initial", "\"1s\"")
        .flow_key("restart_backoff_max", "\"8s\"");
    let mut strait = Strait::start_with_env("strait", &config, &[("STRAIT_FAULTS", &fault)]);

    // Watch /status until every partition is done, noting when each finished.
    let start = Instant::now();
    let mut finished: Vec<Option<Duration>> = vec![None; PARTITIONS as usize];
    let mut bad_restarts_when_others_done = None;
    let parts = wait_until("every partition copied to its end", WAIT, || {
        let parts = strait.active_partitions()?;
        for p in &parts {
            let i = p.partition as usize;
            if finished[i].is_none() && p.replicated_offset == Some(per_partition as i64) {
                finished[i] = Some(start.elapsed());
            }
        }
        let others_done = (0..PARTITIONS as usize)
            .filter(|&i| i != bad as usize)
            .all(|i| finished[i].is_some());
        if others_done && bad_restarts_when_others_done.is_none() {
            let bad_part = parts.iter().find(|p| p.partition == bad);
            bad_restarts_when_others_done =
                Some(bad_part.map(|p| (p.restarts, p.replicated_offset)));
        }
        if finished.iter().all(Option::is_some) {
            Ok(parts)
        } else {
            Err(format!(
                "finished at {finished:?}\n{}",
                strait.status_summary()
            ))
        }
    });
    eprintln!(
        "partitions finished after {finished:?}; partition {bad} (restarts, replicated offset) \
         when the others were done: {bad_restarts_when_others_done:?}"
    );

    // The failing partition: three restarts, the last error kept, and it
    // finished after the others, which were not held up by it.
    let bad_status = parts.iter().find(|p| p.partition == bad).unwrap();
    assert_eq!(
        bad_status.restarts, times,
        "restarts of partition {bad} in /status: {bad_status:?}"
    );
    let last_error = bad_status.last_error.clone().unwrap_or_default();
    assert!(
        last_error.contains(&format!(
            "injected failure at {topic}[{bad}] offset {offset}"
        )),
        "last_error of partition {bad} should name the injected failure: {bad_status:?}"
    );
    for p in parts.iter().filter(|p| p.partition != bad) {
        assert_eq!(
            p.restarts, 0,
            "partition {} was restarted: {p:?}",
            p.partition
        );
        assert_eq!(
            p.last_error, None,
            "partition {} has an error: {p:?}",
            p.partition
        );
        assert!(
            finished[p.partition as usize] < finished[bad as usize],
            "partition {} should finish before the failing partition {bad}: finished at {finished:?}",
            p.partition
        );
    }
    match bad_restarts_when_others_done {
        Some(Some((_, Some(o)))) if o >= per_partition as i64 => panic!(
            "partition {bad} was already done when the others finished: the failure held nothing up?"
        ),
        _ => {}
    }

    // Exponential backoff, as the copier logged it.
    let log = strait.log();
    let retries: Vec<String> = log
        .lines()
        .filter(|l| l.contains("copier failed"))
        .filter_map(|l| {
            let rest = &l[l.find("retry_in=")? + "retry_in=".len()..];
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect();
    eprintln!("copier restart delays logged: {retries:?}");
    assert_eq!(
        retries,
        ["1s", "2s", "4s"],
        "the copier should log its 3 restarts with delays doubling from restart_backoff_initial"
    );

    // The counter on /metrics.
    let restarts_metric = strait
        .metric(
            "strait_copier_restarts_total",
            &[("topic", &topic), ("partition", &bad.to_string())],
        )
        .unwrap_or_else(|e| strait.fail(&e));
    assert_eq!(
        restarts_metric,
        Some(times as f64),
        "strait_copier_restarts_total for {topic}[{bad}] on /metrics"
    );
    for p in (0..PARTITIONS).filter(|&p| p != bad) {
        let m = strait
            .metric(
                "strait_copier_restarts_total",
                &[("topic", &topic), ("partition", &p.to_string())],
            )
            .unwrap_or_else(|e| strait.fail(&e));
        assert!(
            m.unwrap_or(0.0) == 0.0,
            "strait_copier_restarts_total for partition {p}: {m:?}"
        );
    }
    strait.stop();

    // The record at the injected offset arrived, and so did everything else.
    let injected = read_topic(src, &topic, PARTITIONS)[bad as usize]
        .iter()
        .find(|r| r.offset == offset)
        .cloned()
        .expect("the source record at the injected offset");
    let verification = verify_copy(src, dst, &topic, &topic, PARTITIONS, Delivery::AtLeastOnce);
    let copies = read_topic(dst, &topic, PARTITIONS)[bad as usize]
        .iter()
        .filter(|r| r.value == injected.value)
        .count();
    assert!(
        copies >= 1,
        "the record at {topic}[{bad}] offset {offset} is not on the destination"
    );
    eprintln!(
        "copier fault: the record at the injected offset is on the destination ({copies} copy); \
         {} duplicates overall",
        verification.report.duplicates
    );
}

#[test]
fn copier_failing_max_consecutive_failures_times_is_marked_failed_others_finish() {
    let _serial = serial();
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("copier-gives-up");
    let per_partition: u64 = 2_000;
    create_with_ids(src, &topic, per_partition);

    // Fails at every attempt; Strait gives up after the third in a row.
    let (bad, offset) = (2, 1_000);
    let fault = format!("copier_panic_at={topic}:{bad}:{offset}:1000");
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.gives-up"))
        .flow_key("restart_backoff_initial", "\"200ms\"")
        .flow_key("restart_backoff_max", "\"1s\"")
        .flow_key("max_consecutive_failures", "3")
        // Small batches, so the records before the failing offset are copied.
        .flow_key("batch_max_records", "100");
    let mut strait = Strait::start_with_env("strait", &config, &[("STRAIT_FAULTS", &fault)]);

    let parts = wait_until(
        "the failing partition marked failed and the others copied to their end",
        WAIT,
        || {
            let status = strait.status()?;
            let parts = support::strait::partitions(&status);
            let failed = parts
                .iter()
                .any(|p| p.partition == bad && p.state == "failed");
            let others_done = parts
                .iter()
                .filter(|p| p.partition != bad && p.replicated_offset == Some(per_partition as i64))
                .count()
                == PARTITIONS as usize - 1;
            if failed && others_done {
                Ok(parts)
            } else {
                Err(strait.status_summary())
            }
        },
    );
    let bad_status = parts.iter().find(|p| p.partition == bad).unwrap();
    eprintln!("failed partition in /status: {bad_status:?}");
    assert_eq!(bad_status.restarts, 3, "failures counted: {bad_status:?}");
    assert!(
        bad_status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains(&format!(
                "injected failure at {topic}[{bad}] offset {offset}"
            )),
        "the failed partition's last error should name the failure: {bad_status:?}"
    );
    for p in parts.iter().filter(|p| p.partition != bad) {
        assert_eq!(p.restarts, 0, "partition {} restarted: {p:?}", p.partition);
        assert_eq!(p.state, "copying", "partition {}: {p:?}", p.partition);
    }
    // It stays failed, and Strait keeps running and answering.
    thread::sleep(Duration::from_secs(3));
    let again = strait
        .active_partitions()
        .unwrap_or_else(|e| strait.fail(&e));
    assert!(
        again.iter().all(|p| p.partition != bad),
        "the failed partition should not be restarted: {again:?}"
    );
    let log = strait.log();
    assert!(
        log.contains("partition stopped"),
        "the log should say the partition stopped"
    );
    strait.stop();

    // Verify: nothing lost on the other partitions; the failed one holds a
    // copy of its records up to (not including) the failing offset.
    let src_records = read_topic(src, &topic, PARTITIONS);
    let dst_records = read_topic(dst, &topic, PARTITIONS);
    let v = support::records::check_copy(&src_records, &dst_records, Delivery::AtLeastOnce);
    eprintln!("copier gives up: {}", v.summary());
    for p in v.partitions.iter().filter(|p| p.partition != bad as usize) {
        assert_eq!(p.lost, 0, "partition {} lost records: {p:?}", p.partition);
    }
    let offset_of: std::collections::HashMap<Option<u64>, i64> = src_records[bad as usize]
        .iter()
        .map(|r| (support::records::payload_id(&r.value), r.offset))
        .collect();
    let copied: Vec<i64> = dst_records[bad as usize]
        .iter()
        .map(|r| offset_of[&support::records::payload_id(&r.value)])
        .collect();
    assert!(
        copied.iter().all(|&o| o < offset),
        "partition {bad} has records from the failing offset {offset} on: {:?}",
        copied
            .iter()
            .filter(|&&o| o >= offset)
            .take(5)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "partition {bad}: {} records copied before it was stopped at offset {offset}",
        v.partitions[bad as usize].destination_records
    );
    assert!(
        v.report.out_of_order.is_empty(),
        "{:?}",
        v.report.out_of_order
    );
    assert_eq!(
        v.report.unexpected + v.report.wrong_partition,
        0,
        "{:?}",
        v.report
    );
}

// ---------------------------------------------------------------------------
// 5. The source unreachable at start-up
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// 4b. An exactly-once lane that panics
// ---------------------------------------------------------------------------

#[test]
fn exactly_once_lane_that_panics_twice_keeps_running_each_record_once() {
    let _serial = serial();
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("lane-fault");
    let per_partition: u64 = 5_000;
    create_with_ids(src, &topic, per_partition);

    // Two lanes for four partitions: the lane that panics holds records of
    // another partition too.
    let (bad, offset, times) = (1, 2_500, 2);
    let fault = format!("lane_panic_at={topic}:{bad}:{offset}:{times}");
    let group = unique_name("strait.lane-fault");
    let config = Config::new(src, dst, &[&topic], &group)
        .delivery(Delivery::ExactlyOnce)
        .flow_key("transaction_lanes", "2")
        .flow_key("restart_backoff_initial", "\"200ms\"");
    let mut strait = Strait::start_with_env("strait", &config, &[("STRAIT_FAULTS", &fault)]);

    catch_up(&strait, src, dst, &topic, Delivery::ExactlyOnce);
    assert_in_lanes(dst, &group, Some(2));

    // The lane panicked as often as asked, said so, and went on.
    let panics = strait
        .metric("strait_lane_panics_total", &[])
        .unwrap_or_else(|e| strait.fail(&e));
    assert_eq!(
        panics,
        Some(times as f64),
        "strait_lane_panics_total on /metrics"
    );
    let log = strait.log();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("strait_actors::lane: exactly-once lane panicked"))
        .collect();
    assert_eq!(
        logged.len(),
        times as usize,
        "lane panics logged: {logged:#?}"
    );
    assert!(
        logged.iter().all(|l| l.contains(&format!(
            "injected failure in a lane at {topic}[{bad}] offset {offset}"
        ))),
        "each logged panic names the injected failure: {logged:#?}"
    );
    strait.assert_running();
    strait.stop();
    verify_copy(src, dst, &topic, &topic, PARTITIONS, Delivery::ExactlyOnce);
}

// ---------------------------------------------------------------------------
// 4c. An exactly-once transaction the destination aborts for its age
// ---------------------------------------------------------------------------

/// A partition's producer stalls with a transaction open (as one did behind
/// a destination outage) past the destination's `transaction.timeout.ms`:
/// the coordinator aborts the transaction and fences the producer. The
/// partition is still this instance's, so it copies again through a new
/// producer, instead of stopping as for a newer owner.
#[test]
fn exactly_once_transaction_outliving_its_timeout_copies_again_each_record_once() {
    let _serial = serial();
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("eos-timed-out");
    let per_partition: u64 = 2_000;
    create_with_ids(src, &topic, per_partition);

    // 3 s of timeout; the coordinator checks every 10 s by default.
    let (bad, offset, stall_ms) = (1, 1_000, 16_000);
    let fault = format!("transaction_stall_at={topic}:{bad}:{offset}:{stall_ms}");
    // The copier waits the source group's session timeout (and 5 s) before
    // its new producer: 6 s here, instead of 10.
    let config = fast_session(Config::new(
        src,
        dst,
        &[&topic],
        &unique_name("strait.eos-timed-out"),
    ))
    .delivery(Delivery::ExactlyOnce)
    .kafka("destination", "transaction.timeout.ms", "3000")
    .flow_key("restart_backoff_initial", "\"200ms\"");
    let mut strait = Strait::start_with_env("strait", &config, &[("STRAIT_FAULTS", &fault)]);

    catch_up(&strait, src, dst, &topic, Delivery::ExactlyOnce);
    let log = strait.log();
    let timed_out: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the destination aborted a transaction open for"))
        .collect();
    assert!(
        timed_out
            .iter()
            .any(|l| l.contains(&format!("{topic}[{bad}]"))),
        "the stalled partition's transaction timed out and said so: {timed_out:#?}"
    );
    assert!(
        !log.contains("partition stopped"),
        "no partition stopped: {}",
        strait.log_tail(40)
    );
    strait.assert_running();
    strait.stop();
    verify_copy(src, dst, &topic, &topic, PARTITIONS, Delivery::ExactlyOnce);
}

#[test]
fn unreachable_source_at_start_up_strait_retries_not_ready_then_replicates() {
    let _serial = serial();
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("unreachable");
    create_topic(src, &topic, PARTITIONS);
    let first: Vec<Out> = (0..4_000u64)
        .map(|id| Out::keyed((id % 4) as i32, format!("k{id}"), id_payload(id, 100)))
        .collect();
    produce(src, &topic, &first);

    let outage = Outage::begin(source);
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.unreachable"));
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_status();
    // Ten seconds with the source away: alive, healthy, not ready, and why.
    let mut not_ready = String::new();
    for _ in 0..10 {
        thread::sleep(Duration::from_secs(1));
        let (code, body) = strait.get("/ready").unwrap_or_else(|e| strait.fail(&e));
        if code != 503 {
            strait.fail(&format!(
                "/ready should answer 503 while the source is unreachable, got {code}: {body}"
            ));
        }
        not_ready = body;
        let (health, _) = strait.get("/health").unwrap_or_else(|e| strait.fail(&e));
        assert_eq!(health, 200, "/health while the source is unreachable");
    }
    eprintln!("/ready with the source unreachable: 503 {not_ready:?}");
    assert!(
        not_ready.trim().len() > "not ready".len(),
        "/ready's 503 should give a reason: {not_ready:?}"
    );
    // It says so in its log, naming the source cluster.
    let retry_lines = wait_until(
        "a log line saying Strait retries the unreachable source",
        WAIT,
        || {
            strait.assert_running();
            let lines: Vec<String> = strait
                .log()
                .lines()
                .filter(|l| l.to_lowercase().contains("retry") && l.contains(src))
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                Err(strait.log_tail(20))
            } else {
                Ok(lines)
            }
        },
    );
    eprintln!(
        "{} log lines say it retries; the first: {}",
        retry_lines.len(),
        retry_lines[0]
    );
    // `strait check` reports the unreachable source as a failure (exit 1).
    let config_path = strait.config_path.to_str().expect("a UTF-8 path");
    let check = run_strait(&["check", "--config", config_path], &[]);
    eprintln!(
        "strait check with the source unreachable:\n{}",
        check.describe()
    );
    assert_eq!(
        check.code,
        Some(1),
        "strait check should fail with exit code 1 while the source is unreachable:\n{}",
        check.describe()
    );
    assert!(
        check.stdout.contains("FAIL") || check.stderr.contains("FAIL"),
        "strait check should say what failed:\n{}",
        check.describe()
    );
    let log = strait.log();
    if log.contains("panicked") {
        strait.fail("Strait panicked while the source was unreachable");
    }

    outage.end();
    wait_until(
        "/ready to answer 200 once the source is back",
        WAIT,
        || match strait.get("/ready")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code}: {body}")),
        },
    );
    let second: Vec<Out> = (4_000..8_000u64)
        .map(|id| Out::keyed((id % 4) as i32, format!("k{id}"), id_payload(id, 100)))
        .collect();
    produce(src, &topic, &second);
    let source_records = read_topic(src, &topic, PARTITIONS);
    wait_for_complete_copy(
        &source_records,
        dst,
        &topic,
        Delivery::AtLeastOnce,
        WAIT,
        || strait.status_summary(),
    );
    strait.stop();
    verify_copy(src, dst, &topic, &topic, PARTITIONS, Delivery::AtLeastOnce);
}

// ---------------------------------------------------------------------------
// Exactly-once: two instances, one killed
// ---------------------------------------------------------------------------

#[test]
fn exactly_once_two_instances_one_killed_destination_holds_each_record_once_in_order() {
    two_instances_one_killed(None);
}

#[test]
fn exactly_once_in_lanes_two_instances_one_killed_destination_holds_each_record_once_in_order() {
    // As many lanes as partitions: both instances get some.
    two_instances_one_killed(Some(PARTITIONS as u32));
}

fn two_instances_one_killed(lanes: Option<u32>) {
    let _serial = serial();
    let delivery = Delivery::ExactlyOnce;
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("eos-pair");
    create_topic(src, &topic, PARTITIONS);
    let group = unique_name("strait.eos-pair");
    let config_a = with_lanes(
        fast_session(Config::new(src, dst, &[&topic], &group).delivery(delivery)),
        lanes,
    );
    let config_b = config_a.another_instance();
    let mut a = Strait::start("strait-a", &config_a);
    let mut b = Strait::start("strait-b", &config_b);
    let stream = Stream::start(src, &topic, PARTITIONS, 1_000, 100, u64::MAX);

    let split = wait_until("the two instances to share the partitions", WAIT, || {
        let (pa, pb) = (a.active_partitions()?, b.active_partitions()?);
        if !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == PARTITIONS as usize {
            Ok((
                pa.iter().map(|p| p.partition).collect::<Vec<_>>(),
                pb.iter().map(|p| p.partition).collect::<Vec<_>>(),
            ))
        } else {
            Err(format!(
                "strait-a:\n{}\nstrait-b:\n{}",
                a.status_summary(),
                b.status_summary()
            ))
        }
    });
    assert_in_lanes(dst, &group, lanes);
    eprintln!("split: strait-a {:?}, strait-b {:?}", split.0, split.1);
    // Let both copy for a while, then kill strait-b mid-stream.
    wait_until("both instances to copy records", WAIT, || {
        let copied = |s: &Strait| -> Result<u64, String> {
            Ok(s.active_partitions()?
                .iter()
                .map(|p| p.records_replicated)
                .sum())
        };
        match (copied(&a)?, copied(&b)?) {
            (ca, cb) if ca > 2_000 && cb > 2_000 => Ok(()),
            other => Err(format!("records copied (a, b): {other:?}")),
        }
    });
    b.kill9();
    eprintln!(
        "killed strait-b with {} records produced, {:?} on the destination",
        stream.acknowledged(),
        total_records(dst, &topic, PARTITIONS)
    );

    wait_until("strait-a to take over every partition", CATCH_UP, || {
        let pa = a.active_partitions()?;
        if pa.len() == PARTITIONS as usize {
            Ok(())
        } else {
            Err(a.status_summary())
        }
    });
    thread::sleep(Duration::from_secs(5));
    let produced = stream.stop();
    catch_up(&a, src, dst, &topic, delivery);
    a.stop();
    eprintln!("two instances, one killed: {produced} records produced");
    verify_copy(src, dst, &topic, &topic, PARTITIONS, delivery);
}

#[test]
fn turning_lanes_on_waits_until_instances_without_lanes_stopped_each_record_once() {
    switch_lanes(None, Some(2));
}

#[test]
fn turning_lanes_off_waits_until_instances_in_lanes_stopped_each_record_once() {
    switch_lanes(Some(2), None);
}

/// An instance of a flow set to divide it one way (`first` lanes) copies;
/// one set the other way (`second`) starts beside it, and must copy nothing
/// (it would copy the same partitions under transactional ids that do not
/// fence the first's) until the first stops; then it takes over, and each
/// record is on the destination once, in order.
fn switch_lanes(first: Option<u32>, second: Option<u32>) {
    let _serial = serial();
    let delivery = Delivery::ExactlyOnce;
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("eos-switch");
    create_topic(src, &topic, PARTITIONS);
    let group = unique_name("strait.eos-switch");
    let base = fast_session(Config::new(src, dst, &[&topic], &group).delivery(delivery));
    let config_b = with_lanes(base.another_instance(), second);
    let config_a = with_lanes(base, first);
    let batch = |first_id: u64| -> Vec<Out> {
        (first_id..first_id + 1_000)
            .map(|id| {
                Out::keyed(
                    (id % PARTITIONS as u64) as i32,
                    format!("k{id}"),
                    id_payload(id, 32),
                )
            })
            .collect()
    };
    let copied = |strait: &Strait| catch_up(strait, src, dst, &topic, delivery);

    produce(src, &topic, &batch(0));
    let mut a = Strait::start("strait-a", &config_a);
    copied(&a);
    assert_in_lanes(dst, &group, first);

    let mut b = Strait::start("strait-b", &config_b);
    wait_until("strait-b to refuse to copy beside strait-a", WAIT, || {
        b.assert_running();
        if b.log().contains("instances of this flow run") {
            Ok(())
        } else {
            Err(b.log_tail(20))
        }
    });
    // strait-a goes on alone.
    produce(src, &topic, &batch(1_000));
    copied(&a);
    let idle = b
        .active_partitions()
        .unwrap_or_else(|e| b.fail(&format!("reading strait-b's status: {e}")));
    assert!(idle.is_empty(), "strait-b copies beside strait-a: {idle:?}");
    if first.is_none() {
        let lanes_topic = format!("strait.lanes.{group}");
        assert_eq!(
            partition_count(dst, &lanes_topic),
            None,
            "strait-b should not have gone as far as creating `{lanes_topic}`"
        );
    }

    // Once strait-a has stopped, strait-b takes over.
    a.stop();
    produce(src, &topic, &batch(2_000));
    copied(&b);
    assert_in_lanes(dst, &group, second);
    b.stop();
    verify_copy(src, dst, &topic, &topic, PARTITIONS, delivery);
}
