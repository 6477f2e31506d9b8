//! `strait run`: the long-running service.
//!
//! Starts the HTTP server and every flow inside one actix System, then waits
//! for SIGINT or SIGTERM. On the first signal every flow delivers what is in
//! flight and commits its progress, within `shutdown_timeout`; a second signal
//! exits at once (what was not committed is copied again on the next start).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use strait_actors::{FlowSupervisor, StatusBoard, StopFlow};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Settings;
use crate::progress::{spawn_progress_line, startup_summary, ClusterSummary, FlowSummary};
use crate::{http, telemetry};

/// How often the progress line is printed on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Extra time, beyond `shutdown_timeout`, for the last commit and flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs until a signal stops it. Returns an error for fatal start-up problems.
pub fn run(mut settings: Settings) -> anyhow::Result<()> {
    telemetry::init_logging(&settings.log.level, settings.log.format)?;
    telemetry::apply_metrics_settings(&settings.metrics);
    let metrics = telemetry::install_metrics_recorder()?;
    apply_fault_injection(&mut settings)?;
    let system = actix::System::new();
    system.block_on(service(settings, metrics))
}

async fn service(
    settings: Settings,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let board = StatusBoard::new();
    let (listener, bound) = http::bind(settings.http.listen).await?;
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = actix_rt::spawn(http::serve_on(
        listener,
        Arc::clone(&board),
        metrics,
        async move {
            let _ = http_stopped.await;
        },
    ));

    // People get the summary on their terminal; services get it in the log.
    let summary = summary(&settings, bound);
    if std::io::stdout().is_terminal() {
        print!("{summary}");
    } else {
        tracing::info!("{}", summary.trim_end().replace('\n', "; "));
    }

    let mut flows = Vec::with_capacity(settings.flows.len());
    for spec in settings.flows.iter().cloned() {
        let name = spec.name.clone();
        let flow = FlowSupervisor::start(spec, &board)
            .with_context(|| format!("cannot start flow `{name}`"))?;
        flows.push(flow);
    }
    let probe =
        http::spawn_reachability_probe(Arc::clone(&board), &settings.flows, http::PROBE_EVERY);
    let progress = spawn_progress_line(Arc::clone(&board), PROGRESS_EVERY);

    let which = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(
        signal = which,
        timeout = ?settings.shutdown_timeout,
        "stopping: delivering in-flight records and committing progress"
    );
    // A second signal means "now": skip the drain.
    actix_rt::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        eprintln!("strait: second signal, exiting without waiting for in-flight records");
        std::process::exit(130);
    });
    if let Some(progress) = progress {
        progress.abort();
    }
    probe.abort();

    let stops = join_all(flows.iter().map(|f| f.send(StopFlow)));
    if tokio::time::timeout(settings.shutdown_timeout + SHUTDOWN_GRACE, stops)
        .await
        .is_err()
    {
        tracing::warn!("flows did not stop within shutdown_timeout; uncommitted records will be copied again on restart");
    }
    let _ = http_stop.send(());
    let _ = http.await;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn summary(settings: &Settings, http: std::net::SocketAddr) -> String {
    let clusters: Vec<ClusterSummary<'_>> = settings
        .clusters
        .values()
        .map(|c| ClusterSummary {
            alias: &c.alias,
            bootstrap_servers: c.bootstrap_servers(),
        })
        .collect();
    let flows: Vec<FlowSummary<'_>> = settings
        .flows
        .iter()
        .map(|f| FlowSummary {
            name: &f.name,
            source: &f.source.alias,
            destination: &f.destination.alias,
            topics: f.topics.include_patterns(),
            topics_exclude: f.topics.exclude_patterns(),
        })
        .collect();
    startup_summary(&clusters, &flows, Some(http))
}

/// Reads `STRAIT_FAULTS`, a test-only hook that makes failures happen on
/// purpose: `copier_panic_at=TOPIC:PARTITION:OFFSET:TIMES` panics the copier
/// of that partition when it reads that offset, the first TIMES times;
/// `lane_panic_at=...` (same form) panics the exactly-once lane that writes it;
/// `transaction_stall_at=TOPIC:PARTITION:OFFSET:MILLIS` has the exactly-once
/// copier that writes that offset hold its open transaction MILLIS first, once.
fn apply_fault_injection(settings: &mut Settings) -> anyhow::Result<()> {
    let Ok(faults) = std::env::var("STRAIT_FAULTS") else {
        return Ok(());
    };
    for fault in faults.split(',').filter(|f| !f.is_empty()) {
        let (kind, value) = fault
            .split_once('=')
            .with_context(|| format!("STRAIT_FAULTS: `{fault}` is not KIND=VALUE"))?;
        match kind {
            "copier_panic_at" | "lane_panic_at" => {
                let at = at_offset(kind, value, "TIMES")?;
                tracing::warn!(
                    ?at,
                    fault = kind,
                    "fault injection enabled: Strait will panic on purpose"
                );
                for flow in &mut settings.flows {
                    if kind == "copier_panic_at" {
                        flow.faults.copier_panic_at = Some(at.clone());
                    } else {
                        flow.faults.lane_panic_at = Some(at.clone());
                    }
                }
            }
            "transaction_stall_at" => {
                let (topic, partition, offset, millis) = at_offset(kind, value, "MILLIS")?;
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    millis,
                    fault = kind,
                    "fault injection enabled: Strait will hold a transaction open on purpose"
                );
                for flow in &mut settings.flows {
                    flow.faults.transaction_stall_at = Some((
                        topic.clone(),
                        partition,
                        offset,
                        Duration::from_millis(millis.into()),
                    ));
                }
            }
            other => {
                anyhow::bail!(
                    "STRAIT_FAULTS: unknown fault `{other}`; known: copier_panic_at, lane_panic_at, transaction_stall_at"
                )
            }
        }
    }
    Ok(())
}

/// A fault's `TOPIC:PARTITION:OFFSET:<last>` (the topic may hold colons).
fn at_offset(kind: &str, value: &str, last: &str) -> anyhow::Result<(String, i32, i64, u32)> {
    let parts: Vec<&str> = value.rsplitn(4, ':').collect();
    let parse = || -> Option<(String, i32, i64, u32)> {
        match parts.as_slice() {
            [n, offset, partition, topic] => Some((
                (*topic).to_string(),
                partition.parse().ok()?,
                offset.parse().ok()?,
                n.parse().ok()?,
            )),
            _ => None,
        }
    };
    parse().with_context(|| {
        format!("STRAIT_FAULTS: {kind}=`{value}` is not TOPIC:PARTITION:OFFSET:{last}")
    })
}
