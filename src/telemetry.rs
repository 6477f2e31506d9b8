//! Logs and the metrics recorder: set up once, at start-up.
//!
//! Logs go to stderr, as text (coloured on a terminal) or one JSON object per
//! line. The `[log] level` from the config can be a level (`info`) or a
//! filter (`info,rdkafka=warn`); `RUST_LOG`, when set, overrides it.
//!
//! Metrics are recorded with the `metrics` crate, under the names of
//! [`strait_actors::metrics`], into a Prometheus recorder whose handle the
//! HTTP server renders at `/metrics`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use strait_actors::metrics as names;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// Bucket upper bounds, in seconds, for latency histograms: 1 ms .. 60 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
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
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_string()), LATENCY_BUCKETS_SECONDS)?;
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
    metrics::set_global_recorder(recorder)
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
}
