//! The HTTP server: `/metrics`, `/health`, `/ready`, `/status` and the status page.
//!
//! One server on `[http] listen`. Everything it answers comes from the
//! [`StatusBoard`] (flows, partitions, states) or the Prometheus recorder;
//! neither holds a secret, so neither can leak one.
//!
//! Bind first with [`bind`] so that a bad or busy address is reported at
//! start-up, naming the address, then run [`serve_on`] until the shutdown
//! future completes. The server runs on whatever Tokio runtime polls it,
//! including actix's current-thread System (spawn it with `actix_rt::spawn`).
//!
//! `/ready` is 200 only when every flow is running, both of its clusters
//! answered their last reachability check and no copier is restarting or
//! failed. The checks come from [`spawn_reachability_probe`], which asks each
//! cluster for its metadata every few seconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use strait_actors::discovery::TopicReader;
use strait_actors::metrics as names;
use strait_actors::status::{ClusterRole, FlowState, PartitionState};
use strait_actors::{ClusterSpec, FlowSpec, StatusBoard};
use tokio::net::TcpListener;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The status page, served at `/`: plain HTML and JS that polls `/status`.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// Every flow state, for `strait_flow_state`.
const FLOW_STATES: [FlowState; 5] = [
    FlowState::Starting,
    FlowState::Running,
    FlowState::Degraded,
    FlowState::Stopping,
    FlowState::Stopped,
];

#[derive(Clone)]
struct AppState {
    board: Arc<StatusBoard>,
    metrics: PrometheusHandle,
}

/// Binds `listen` and returns the listener with the address it is bound to
/// (the real port when `listen` asks for port 0). The error names the address.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on http.listen = {listen}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for http.listen = {listen}"))?;
    Ok((listener, bound))
}

/// Binds `listen` and serves until `shutdown` completes.
pub async fn serve(
    listen: SocketAddr,
    board: Arc<StatusBoard>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (listener, _) = bind(listen).await?;
    serve_on(listener, board, metrics, shutdown).await
}

/// Serves on an already bound listener until `shutdown` completes; then stops
/// accepting and returns once open requests are answered.
pub async fn serve_on(
    listener: TcpListener,
    board: Arc<StatusBoard>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::info!(%addr, "serving /metrics /health /ready /status and the status page");
    }
    axum::serve(listener, router(board, metrics))
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| match addr {
            Some(addr) => format!("the HTTP server on {addr} failed"),
            None => "the HTTP server failed".to_string(),
        })
}

/// The routes, for embedding or testing without a socket.
pub fn router(board: Arc<StatusBoard>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(AppState { board, metrics })
}

async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(app): State<AppState>) -> Response {
    match app.board.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn status(State(app): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(app.board.snapshot()),
    )
        .into_response()
}

async fn render_metrics(State(app): State<AppState>) -> Response {
    let mut body = app.metrics.render();
    process_metrics(&app.board, &mut body);
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found; try /, /metrics, /health, /ready or /status\n",
    )
}

/// How often [`spawn_reachability_probe`] checks each cluster.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Checks every cluster of `flows` now and then every `every`, by asking it
/// for its metadata, and notes the outcome on the board for `/ready`,
/// `/status` and `strait_cluster_reachable`. One check per cluster, shared by
/// every flow that uses it. Must be called within a Tokio runtime (actix's
/// System is one); abort the returned task to stop it.
pub fn spawn_reachability_probe(
    board: Arc<StatusBoard>,
    flows: &[FlowSpec],
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    // Per cluster alias: its spec and the (flow, role) pairs that use it.
    let mut clusters: BTreeMap<String, (ClusterSpec, Vec<(String, ClusterRole)>)> = BTreeMap::new();
    for flow in flows {
        for (cluster, role) in [
            (&flow.source, ClusterRole::Source),
            (&flow.destination, ClusterRole::Destination),
        ] {
            clusters
                .entry(cluster.alias.clone())
                .or_insert_with(|| (cluster.clone(), Vec::new()))
                .1
                .push((flow.name.clone(), role));
        }
    }
    let flows: Vec<(String, String, String)> = flows
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                f.source.alias.clone(),
                f.destination.alias.clone(),
            )
        })
        .collect();
    tokio::spawn(async move {
        let readers: Vec<_> = clusters
            .into_values()
            .map(|(spec, users)| (TopicReader::new(&spec).map_err(|e| e.to_string()), users))
            .collect();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (reader, users) in &readers {
                let result = match reader {
                    Ok(reader) => reader
                        .metadata()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(error) => Err(error.clone()),
                };
                for (flow, role) in users {
                    let Some((name, source, destination)) =
                        flows.iter().find(|(name, _, _)| name == flow)
                    else {
                        continue;
                    };
                    board
                        .flow(name, source, destination)
                        .set_reachable(*role, result.clone());
                }
            }
        }
    })
}

/// Appends the gauges computed at scrape time rather than recorded:
/// `strait_up`, `strait_build_info`, `strait_flow_state`, `strait_partitions`
/// and `strait_cluster_reachable`.
fn process_metrics(board: &StatusBoard, out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# HELP {up} 1 while Strait serves metrics.\n# TYPE {up} gauge\n{up} 1",
        up = names::UP
    );
    let _ = writeln!(
        out,
        "# HELP {b} Strait's version, as a label; always 1.\n# TYPE {b} gauge\n{b}{{{v}=\"{ver}\"}} 1",
        b = names::BUILD_INFO,
        v = names::labels::VERSION,
        ver = escape_label(env!("CARGO_PKG_VERSION")),
    );
    let flows = board.snapshot().flows;
    if flows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {s} 1 for the flow's current state, 0 for the others.\n# TYPE {s} gauge",
        s = names::FLOW_STATE
    );
    for flow in &flows {
        for state in FLOW_STATES {
            let _ = writeln!(
                out,
                "{s}{{{f}=\"{flow}\",{st}=\"{state}\"}} {v}",
                s = names::FLOW_STATE,
                f = names::labels::FLOW,
                st = names::labels::STATE,
                flow = escape_label(&flow.name),
                v = u8::from(flow.state == state),
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP {p} Partitions of this process in each copier state.\n# TYPE {p} gauge",
        p = names::PARTITIONS_BY_STATE
    );
    for flow in &flows {
        for state in PartitionState::ALL {
            let count = flow
                .topics
                .values()
                .flat_map(|t| &t.assigned)
                .filter(|p| p.state == state)
                .count();
            let _ = writeln!(
                out,
                "{p}{{{f}=\"{flow}\",{st}=\"{state}\"}} {count}",
                p = names::PARTITIONS_BY_STATE,
                f = names::labels::FLOW,
                st = names::labels::STATE,
                flow = escape_label(&flow.name),
            );
        }
    }
    let checked: Vec<_> = flows
        .iter()
        .flat_map(|f| {
            [
                (f, "source", &f.source, &f.source_reachability),
                (
                    f,
                    "destination",
                    &f.destination,
                    &f.destination_reachability,
                ),
            ]
        })
        .filter_map(|(f, role, alias, r)| Some((f, role, alias, r.reachable?)))
        .collect();
    if checked.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {c} 1 when the cluster answered its last reachability check, 0 when not.\n# TYPE {c} gauge",
        c = names::CLUSTER_REACHABLE
    );
    for (flow, role, alias, reachable) in checked {
        let _ = writeln!(
            out,
            "{c}{{{f}=\"{flow}\",{r}=\"{role}\",{cl}=\"{alias}\"}} {v}",
            c = names::CLUSTER_REACHABLE,
            f = names::labels::FLOW,
            r = names::labels::ROLE,
            cl = names::labels::CLUSTER,
            flow = escape_label(&flow.name),
            alias = escape_label(alias),
            v = u8::from(reachable),
        );
    }
}

/// Escapes a label value for the Prometheus text format.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// A bare HTTP/1.1 GET, read to the end.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8(raw).expect("utf-8");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        Reply {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }

    async fn start(
        board: Arc<StatusBoard>,
    ) -> (
        SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let metrics = crate::telemetry::build_metrics_recorder()
            .expect("recorder")
            .handle();
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(listener, board, metrics, async move {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    #[tokio::test]
    async fn every_endpoint_answers() {
        let board = StatusBoard::new();
        let (addr, stop, server) = start(Arc::clone(&board)).await;

        let r = get(addr, "/ready").await;
        assert_eq!(r.status, 503);
        assert!(r.body.contains("no flow has started yet"), "{}", r.body);

        let flow = board.flow("east-to-central", "east", "central");
        let p = flow.partition("orders", 3, "east.orders");
        p.progress.set_start(40);
        p.progress.set_high_watermark(100);
        p.record_failure("broker down".to_string());
        p.set_state(PartitionState::Restarting);

        let r = get(addr, "/ready").await;
        assert_eq!(r.status, 503);
        assert!(
            r.body.contains("flow `east-to-central` is starting"),
            "{}",
            r.body
        );

        flow.set_state(FlowState::Running);
        let r = get(addr, "/ready").await;
        assert_eq!(r.status, 503, "a copier is restarting: {}", r.body);
        assert!(r.body.contains("orders[3] is restarting"), "{}", r.body);

        p.set_state(PartitionState::Copying);
        flow.set_reachable(ClusterRole::Source, Ok(()));
        flow.set_reachable(
            ClusterRole::Destination,
            Err("cluster `central` (c:9092) is unreachable: all brokers down".to_string()),
        );
        let r = get(addr, "/ready").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            r.body
                .contains("destination cluster `central` is unreachable"),
            "{}",
            r.body
        );

        flow.set_reachable(ClusterRole::Destination, Ok(()));
        let r = get(addr, "/ready").await;
        assert_eq!(r.status, 200, "{}", r.body);
        p.set_state(PartitionState::Restarting);

        let r = get(addr, "/health").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        let r = get(addr, "/status").await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains("content-type: application/json"),
            "{}",
            r.headers
        );
        let json: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        let f = &json["flows"][0];
        assert_eq!(f["name"], "east-to-central");
        assert_eq!(f["source"], "east");
        assert_eq!(f["state"], "running");
        assert_eq!(f["destination_reachability"]["reachable"], true);
        let part = &f["topics"]["orders"]["assigned"][0];
        assert_eq!(part["partition"], 3);
        assert_eq!(part["lag_records"], 60);
        assert_eq!(part["restarts"], 1);
        assert_eq!(part["state"], "restarting");
        assert_eq!(part["last_error"], "broker down");

        let r = get(addr, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            r.headers
        );
        assert!(r.body.contains("strait_up 1\n"), "{}", r.body);
        assert!(
            r.body
                .contains(r#"strait_flow_state{flow="east-to-central",state="running"} 1"#),
            "{}",
            r.body
        );
        assert!(
            r.body
                .contains(r#"strait_flow_state{flow="east-to-central",state="starting"} 0"#),
            "{}",
            r.body
        );
        for series in [
            r#"strait_partitions{flow="east-to-central",state="restarting"} 1"#,
            r#"strait_partitions{flow="east-to-central",state="copying"} 0"#,
            r#"strait_cluster_reachable{flow="east-to-central",role="source",cluster="east"} 1"#,
            r#"strait_cluster_reachable{flow="east-to-central",role="destination",cluster="central"} 1"#,
        ] {
            assert!(r.body.contains(series), "{series}:\n{}", r.body);
        }

        let r = get(addr, "/").await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains("content-type: text/html"),
            "{}",
            r.headers
        );
        assert!(
            r.body.contains(r#"fetch("status""#),
            "the page polls /status"
        );
        assert!(
            !r.body.contains("http://") && !r.body.contains("https://"),
            "no external resources"
        );

        let r = get(addr, "/nope").await;
        assert_eq!(r.status, 404);

        stop.send(()).unwrap();
        server.await.unwrap().expect("a clean stop");
    }

    #[test]
    fn serves_inside_an_actix_system() {
        actix_rt::System::new().block_on(async {
            let metrics = crate::telemetry::build_metrics_recorder()
                .expect("recorder")
                .handle();
            let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
            let (stop, stopped) = oneshot::channel::<()>();
            let server = actix_rt::spawn(serve_on(
                listener,
                StatusBoard::new(),
                metrics,
                async move {
                    let _ = stopped.await;
                },
            ));
            let r = get(addr, "/health").await;
            assert_eq!(r.status, 200);
            stop.send(()).unwrap();
            server.await.unwrap().expect("a clean stop");
        });
    }

    #[tokio::test]
    async fn a_busy_address_is_reported_with_the_address() {
        let (_held, addr) = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let err = bind(addr).await.expect_err("already bound");
        let text = format!("{err:#}");
        assert!(text.contains(&format!("http.listen = {addr}")), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
