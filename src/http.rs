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

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use strait_actors::metrics as names;
use strait_actors::status::FlowState;
use strait_actors::StatusBoard;
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

/// Appends the gauges computed at scrape time rather than recorded:
/// `strait_up`, `strait_build_info` and `strait_flow_state`.
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
    use strait_actors::status::PartitionState;
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
        assert_eq!(r.status, 200, "{}", r.body);

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
