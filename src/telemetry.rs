//! Logs and the metrics recorder: set up once, at start-up.
//!
//! Logs go to stderr, as text (coloured on a terminal) or one JSON object per
//! line. The `[log] level` from the config can be a level (`info`) or a
//! filter (`info,rdkafka=warn`); `RUST_LOG`, when set, overrides it.
//!
//! Metrics are recorded with the `metrics` crate, under the names of
//! [`strait_actors::metrics`], into a Prometheus recorder whose handle the
//! HTTP server renders at `/metrics`. The installed recorder is a
//! [`StraitRecorder`]: the Prometheus one, plus the `[metrics]
//! partition_labels = false` switch, which drops the `partition` label as
//! metrics are registered (see [`strait_actors::metrics`]).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use strait_actors::metrics::{self as names, GaugeAggregation};

use crate::config::MetricsSettings;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// Bucket upper bounds, in seconds, for latency histograms: 1 ms .. 60 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket upper bounds, in seconds, for the end-to-end latency: 1 ms .. 1 h,
/// since copying a backlog is minutes or hours behind its source timestamps.
pub const END_TO_END_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Bucket upper bounds for records per batch.
pub const BATCH_RECORDS_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

/// Bucket upper bounds for bytes per batch: 1 KiB .. 64 MiB.
pub const BATCH_BYTES_BUCKETS: &[f64] = &[
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the global logger, writing to stderr.
///
/// `level` is `[log] level`: a level (`trace`, `debug`, `info`, `warn`,
/// `error`, `off`) or a filter in `RUST_LOG` syntax. `RUST_LOG`, when set and
/// not empty, is used instead. Fails on a bad level or filter, or when a
/// logger is already installed.
pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::builder()
            .parse(&env)
            .map_err(|e| anyhow!("RUST_LOG = {env:?} is not a valid log filter: {e}"))?,
        _ => parse_level(level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|e| anyhow!("cannot install the logger: {e}"))
}

/// `[log] level` as a filter: a plain word must be a level; anything with
/// `=` or `,` is a filter in `RUST_LOG` syntax.
fn parse_level(level: &str) -> anyhow::Result<EnvFilter> {
    let level = level.trim();
    let bad = || {
        format!(
            "log.level = {level:?} is neither a level (trace, debug, info, warn, error, off) \
             nor a filter such as \"info,rdkafka=warn\""
        )
    };
    if level.contains('=') || level.contains(',') {
        return EnvFilter::builder()
            .parse(level)
            .map_err(|e| anyhow!("{}: {e}", bad()));
    }
    let parsed: LevelFilter = level.parse().map_err(|_| anyhow!(bad()))?;
    Ok(EnvFilter::builder().parse(parsed.to_string())?)
}

static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// A Prometheus recorder with Strait's histogram buckets, not installed.
/// [`install_metrics_recorder`] is what the binary uses; this is for tests
/// that want a recorder of their own (`metrics::with_local_recorder`).
pub fn build_metrics_recorder() -> anyhow::Result<PrometheusRecorder> {
    let mut builder = PrometheusBuilder::new();
    for name in names::LATENCY_HISTOGRAMS {
        let buckets = if *name == names::END_TO_END_LATENCY_SECONDS {
            END_TO_END_BUCKETS_SECONDS
        } else {
            LATENCY_BUCKETS_SECONDS
        };
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)?;
    }
    builder = builder
        .set_buckets_for_metric(
            Matcher::Full(names::BATCH_RECORDS.to_string()),
            BATCH_RECORDS_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::BATCH_BYTES.to_string()),
            BATCH_BYTES_BUCKETS,
        )?;
    Ok(builder.build_recorder())
}

/// Installs the Prometheus recorder as this process's global `metrics`
/// recorder, describes Strait's metrics, and returns the handle `/metrics`
/// renders.
///
/// Safe to call more than once: later calls return the same handle. Fails if
/// a recorder not installed by this function is already in place.
///
/// Also starts a small thread (`strait-metrics`) that folds histogram samples
/// into their buckets every few seconds, so that memory stays bounded even
/// when nobody scrapes.
pub fn install_metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let mut slot = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = build_metrics_recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(StraitRecorder::new(recorder))
        .map_err(|_| anyhow!("another metrics recorder is already installed in this process"))?;
    names::describe();
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    metrics::gauge!(names::START_TIME_SECONDS).set(started);

    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("strait-metrics".to_string())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        })
        .context("cannot start the metrics upkeep thread")?;

    *slot = Some(handle.clone());
    Ok(handle)
}

/// Applies `[metrics]`: call once at start-up, before any flow starts (the
/// switch applies to metrics registered after it).
pub fn apply_metrics_settings(settings: &MetricsSettings) {
    names::set_partition_labels(settings.partition_labels);
}

/// The recorder Strait installs: records into `inner`, dropping the
/// `partition` label when per-partition labels are off.
///
/// Without the label, the partitions of a topic register the same series:
/// counters add up and histograms merge by themselves; a gauge gets one
/// [`PartitionGauge`] per partition over a shared [`TopicGauge`], which
/// writes their sum (or, for ages, their maximum) to the series.
pub struct StraitRecorder<R = PrometheusRecorder> {
    inner: R,
    /// `None`: follow [`names::partition_labels`]; `Some`: fixed (for tests).
    partition_labels: Option<bool>,
    topic_gauges: Mutex<HashMap<Key, Arc<TopicGauge>>>,
}

impl<R: Recorder> StraitRecorder<R> {
    /// Follows the process-wide switch ([`apply_metrics_settings`]).
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            partition_labels: None,
            topic_gauges: Mutex::default(),
        }
    }

    /// With the `partition` label fixed on or off, whatever the switch says.
    pub fn with_partition_labels(inner: R, on: bool) -> Self {
        Self {
            partition_labels: Some(on),
            ..Self::new(inner)
        }
    }

    /// The key without its `partition` label and that label's value, when
    /// the label is to be dropped.
    fn without_partition(&self, key: &Key) -> Option<(Key, String)> {
        if self
            .partition_labels
            .unwrap_or_else(names::partition_labels)
        {
            return None;
        }
        let partition = key
            .labels()
            .find(|l| l.key() == names::labels::PARTITION)?
            .value()
            .to_string();
        let labels: Vec<Label> = key
            .labels()
            .filter(|l| l.key() != names::labels::PARTITION)
            .cloned()
            .collect();
        Some((Key::from_parts(key.name().to_string(), labels), partition))
    }
}

impl<R: Recorder> Recorder for StraitRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.without_partition(key) {
            Some((topic_key, _)) => self.inner.register_counter(&topic_key, metadata),
            None => self.inner.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let Some((topic_key, partition)) = self.without_partition(key) else {
            return self.inner.register_gauge(key, metadata);
        };
        let topic = {
            let mut gauges = self.topic_gauges.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(gauges.entry(topic_key.clone()).or_insert_with(|| {
                Arc::new(TopicGauge {
                    series: self.inner.register_gauge(&topic_key, metadata),
                    aggregation: names::gauge_aggregation(topic_key.name()),
                    partitions: Mutex::default(),
                })
            }))
        };
        Gauge::from_arc(Arc::new(PartitionGauge { topic, partition }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match self.without_partition(key) {
            Some((topic_key, _)) => self.inner.register_histogram(&topic_key, metadata),
            None => self.inner.register_histogram(key, metadata),
        }
    }
}

/// One series standing for every partition of a topic: keeps each
/// partition's value and writes their combination.
struct TopicGauge {
    series: Gauge,
    aggregation: GaugeAggregation,
    partitions: Mutex<HashMap<String, f64>>,
}

impl TopicGauge {
    fn update(&self, partition: &str, change: impl FnOnce(f64) -> f64) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let value = partitions.entry(partition.to_string()).or_insert(0.0);
        *value = change(*value);
        let combined = match self.aggregation {
            GaugeAggregation::Sum => partitions.values().sum(),
            GaugeAggregation::Max => partitions.values().copied().fold(0.0, f64::max),
        };
        self.series.set(combined);
    }
}

/// A partition's view of a [`TopicGauge`].
struct PartitionGauge {
    topic: Arc<TopicGauge>,
    partition: String,
}

impl GaugeFn for PartitionGauge {
    fn increment(&self, value: f64) {
        self.topic.update(&self.partition, |v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.topic.update(&self.partition, |v| v - value);
    }

    fn set(&self, value: f64) {
        self.topic.update(&self.partition, |_| value);
    }
}

/// Checks a `[log] level` without installing anything (for `strait check`
/// and config validation).
pub fn validate_level(level: &str) -> anyhow::Result<()> {
    if level.trim().is_empty() {
        bail!("log.level is empty");
    }
    parse_level(level).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_are_accepted_and_nonsense_is_not() {
        for ok in ["info", "DEBUG", "off", "info,rdkafka=warn", "strait=trace"] {
            assert!(validate_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "loud", "info,=x=y"] {
            let err = validate_level(bad).expect_err(bad);
            if !bad.is_empty() {
                assert!(err.to_string().contains("log.level"), "{err}");
            }
        }
    }

    #[test]
    fn install_twice_returns_the_same_recorder() {
        let first = install_metrics_recorder().expect("first install");
        let second = install_metrics_recorder().expect("second install");
        metrics::counter!(names::RECORDS_REPLICATED, "flow" => "f", "source_cluster" => "east",
            "topic" => "t", "partition" => "0")
        .increment(3);
        metrics::histogram!(names::END_TO_END_LATENCY_SECONDS, "flow" => "f").record(0.02);
        let text = second.render();
        assert_eq!(text, first.render());
        assert!(
            text.contains(r#"strait_records_replicated_total{flow="f",source_cluster="east",topic="t",partition="0"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE strait_records_replicated_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"strait_end_to_end_latency_seconds_bucket{flow="f",le="0.025"} 1"#),
            "latency histograms have buckets: {text}"
        );
        assert!(text.contains("strait_start_time_seconds "), "{text}");
    }

    fn labels(partition: i32) -> [(&'static str, String); 4] {
        [
            (names::labels::FLOW, "f".to_string()),
            (names::labels::SOURCE_CLUSTER, "east".to_string()),
            (names::labels::TOPIC, "t".to_string()),
            (names::labels::PARTITION, partition.to_string()),
        ]
    }

    /// Records lag, records and latency for two partitions of one topic.
    fn record_two_partitions() {
        for (partition, lag, age) in [(0, 10.0, 3.0), (1, 5.0, 7.0)] {
            let l = labels(partition);
            metrics::counter!(names::RECORDS_REPLICATED, &l).increment(100);
            metrics::gauge!(names::REPLICATION_LAG_RECORDS, &l[..]).set(lag);
            metrics::gauge!(names::REPLICATION_LAG_SECONDS, &l[..]).set(age);
            metrics::gauge!(names::BATCHES_IN_FLIGHT, &l[..]).increment(2.0);
        }
        // Partition 0 catches up: the topic's lag follows.
        metrics::gauge!(names::REPLICATION_LAG_RECORDS, &labels(0)[..]).set(1.0);
        metrics::gauge!(names::BATCHES_IN_FLIGHT, &labels(1)[..]).decrement(1.0);
    }

    #[test]
    fn partition_labels_on_keep_one_series_per_partition() {
        let prometheus = build_metrics_recorder().expect("recorder");
        let handle = prometheus.handle();
        let recorder = StraitRecorder::with_partition_labels(prometheus, true);
        metrics::with_local_recorder(&recorder, record_two_partitions);
        let text = handle.render();
        for series in [
            r#"strait_records_replicated_total{flow="f",source_cluster="east",topic="t",partition="0"} 100"#,
            r#"strait_records_replicated_total{flow="f",source_cluster="east",topic="t",partition="1"} 100"#,
            r#"strait_replication_lag_records{flow="f",source_cluster="east",topic="t",partition="0"} 1"#,
            r#"strait_replication_lag_records{flow="f",source_cluster="east",topic="t",partition="1"} 5"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn partition_labels_off_sum_counts_and_keep_the_largest_age() {
        let prometheus = build_metrics_recorder().expect("recorder");
        let handle = prometheus.handle();
        let recorder = StraitRecorder::with_partition_labels(prometheus, false);
        metrics::with_local_recorder(&recorder, record_two_partitions);
        let text = handle.render();
        assert!(!text.contains("partition="), "no partition label:\n{text}");
        for series in [
            r#"strait_records_replicated_total{flow="f",source_cluster="east",topic="t"} 200"#,
            r#"strait_replication_lag_records{flow="f",source_cluster="east",topic="t"} 6"#,
            r#"strait_replication_lag_seconds{flow="f",source_cluster="east",topic="t"} 7"#,
            r#"strait_batches_in_flight{flow="f",source_cluster="east",topic="t"} 3"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn partition_metrics_handle_records_every_metric_of_the_record_path() {
        let prometheus = build_metrics_recorder().expect("recorder");
        let handle = prometheus.handle();
        let recorder = StraitRecorder::with_partition_labels(prometheus, false);
        metrics::with_local_recorder(&recorder, || {
            let p0 = names::PartitionMetrics::new("f", "east", "t", 0);
            let p1 = names::PartitionMetrics::new("f", "east", "t", 1);
            let mailbox = names::mailbox_depth("f");
            let read_at = std::time::Instant::now();
            for p in [&p0, &p1] {
                p.batch_sent(10, 1000);
                mailbox.decrement(1.0);
                p.set_in_flight(1);
                p.set_lag(100, 2.5);
            }
            p1.set_lag(50, 9.0);
            p0.forget();
            let minute_ago = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
                - 60_000;
            p0.batch_acked(10, 1000, read_at, read_at, Some(minute_ago));
            p1.produce_error(strait_actors::metrics::kinds::TIMED_OUT);
            p1.restarted();
        });
        let text = handle.render();
        for series in [
            r#"strait_records_replicated_total{flow="f",source_cluster="east",topic="t"} 10"#,
            r#"strait_bytes_replicated_total{flow="f",source_cluster="east",topic="t"} 1000"#,
            r#"strait_batches_in_flight{flow="f",topic="t"} 1"#,
            r#"strait_replication_lag_records{flow="f",topic="t"} 50"#,
            r#"strait_replication_lag_seconds{flow="f",topic="t"} 9"#,
            r#"strait_destination_mailbox_batches{flow="f"} 0"#,
            r#"strait_batch_records_count{flow="f"} 2"#,
            r#"strait_end_to_end_latency_seconds_bucket{flow="f",topic="t",le="300"} 1"#,
            r#"strait_end_to_end_latency_seconds_bucket{flow="f",topic="t",le="30"} 0"#,
            r#"strait_in_process_latency_seconds_count{flow="f",topic="t"} 1"#,
            r#"strait_produce_latency_seconds_count{flow="f"} 1"#,
            r#"strait_produce_errors_total{flow="f",topic="t",kind="timed_out"} 1"#,
            r#"strait_copier_restarts_total{flow="f",topic="t"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }
}
