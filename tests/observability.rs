//! What operators see: the status page in a real browser, `/metrics` of a
//! running replication, JSON logs with topic and partition on every
//! partition line, no secret anywhere (logs, `/metrics`, `/status`, `/`,
//! `strait check`, `strait verify`), and a dashboard and a metrics table
//! that only name metrics Strait defines.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_actors::metrics as names;
use support::cluster::shared_pair;
use support::records::{create_topic, id_payload, produce, unique_name, wait_until, Out};
use support::strait::{http_get, run_strait, Config, Strait};

const WAIT: Duration = Duration::from_secs(120);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The metric a Prometheus series name belongs to: a histogram's
/// `_bucket`, `_sum` and `_count` series belong to the histogram.
fn metric_of(series: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix) {
            if names::HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    series
}

/// Every `strait_*` name in `text`.
fn strait_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bstrait_[a-z0-9_]+").expect("a valid regex");
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

// ---------------------------------------------------------------------------
// Without a broker
// ---------------------------------------------------------------------------

#[test]
fn the_dashboard_queries_only_metrics_strait_exports_and_covers_the_essentials() {
    let text = std::fs::read_to_string(repo_file("dashboards/strait.json"))
        .expect("dashboards/strait.json is readable");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let found = strait_names(expr);
        assert!(!found.is_empty(), "a query without a Strait metric: {expr}");
        for series in found {
            let metric = metric_of(&series);
            assert!(
                names::ALL.contains(&metric),
                "the dashboard queries `{series}`, which Strait does not export (query: {expr})"
            );
            used.insert(metric.to_string());
        }
    }
    for essential in [
        names::RECORDS_REPLICATED,
        names::BYTES_REPLICATED,
        names::REPLICATION_LAG_RECORDS,
        names::REPLICATION_LAG_SECONDS,
        names::END_TO_END_LATENCY_SECONDS,
        names::IN_PROCESS_LATENCY_SECONDS,
        names::PRODUCE_ERRORS,
        names::CONSUME_ERRORS,
        names::COPIER_RESTARTS,
    ] {
        assert!(used.contains(essential), "no panel shows {essential}");
    }
    // Per flow and topic: the panels can be narrowed to both.
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"flow") && vars.contains(&"topic"),
        "{vars:?}"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("by (flow, topic") && e.contains("histogram_quantile(0.99")),
        "a p99 latency per flow and topic"
    );
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_metrics_doc_has_one_row_per_metric_with_its_type() {
    let text = std::fs::read_to_string(repo_file("docs/metrics.md")).expect("docs/metrics.md");
    let mut documented = BTreeSet::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, ..] = cells.as_slice() else {
            continue;
        };
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        if !name.starts_with("strait_") {
            continue;
        }
        assert!(
            documented.insert(name.to_string()),
            "{name} is listed twice"
        );
        assert!(
            names::ALL.contains(&name),
            "{name} is documented but not defined"
        );
        let expected = if names::HISTOGRAMS.contains(&name) {
            "histogram"
        } else if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(*kind, expected, "type of {name}");
    }
    for name in names::ALL {
        assert!(
            documented.contains(*name),
            "{name} is not in docs/metrics.md"
        );
    }
}

// ---------------------------------------------------------------------------
// With brokers
// ---------------------------------------------------------------------------

/// Two topics of two partitions with `n` records each, copied by a running
/// Strait; returns the topics and the running process.
fn running_replication(prefix: &str, n: u64, extra: &str) -> (Vec<String>, Strait) {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let base = unique_name(prefix);
    let topics: Vec<String> = ["orders", "payments"]
        .iter()
        .map(|t| format!("{base}.{t}"))
        .collect();
    for t in &topics {
        create_topic(src, t, 2);
        let records: Vec<Out> = (0..n)
            .map(|i| Out::keyed((i % 2) as i32, format!("k{i}"), id_payload(i, 32)))
            .collect();
        produce(src, t, &records);
    }
    let mut config = Config::new(
        src,
        dst,
        &[&format!("{}\\..*", regex::escape(&base))],
        &unique_name("strait.obs"),
    );
    config.extra = extra.to_string();
    let strait = Strait::start("strait", &config);
    for t in &topics {
        strait.wait_for_copy(dst, t, 2, n as i64, WAIT);
    }
    (topics, strait)
}

/// Runs headless Chromium with `args` and the flags a container needs;
/// fails the test, never skips it, when Chromium is missing.
fn chromium(args: &[String], profile: &Path) -> String {
    let program = std::env::var("STRAIT_CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    let mut cmd = Command::new(&program);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run `{program}` ({e}): the status-page test needs headless Chromium. \
             Install Debian's `chromium` package (apt-get install chromium), or set \
             STRAIT_CHROMIUM to a Chromium or Chrome binary."
        )
    });
    let pid = child.id();
    let started = Instant::now();
    // Chromium exits on its own after the virtual time budget; bound the wait.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done_rx.recv_timeout(WAIT) {
        Ok(output) => output.expect("waiting for chromium"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("chromium did not finish within {WAIT:?} (args {args:?})");
        }
    };
    assert!(
        output.status.success(),
        "chromium failed after {:?} ({}): {}",
        started.elapsed(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_status_page_in_headless_chromium_shows_the_topics_being_replicated() {
    let (topics, mut strait) = running_replication("page", 400, "");
    let url = format!("http://{}/", strait.http);
    let dir = tempfile::Builder::new()
        .prefix("strait-status-page-")
        .tempdir()
        .expect("a temporary directory");

    // The DOM after the page's script has fetched /status and rendered it.
    let dom = wait_until("the status page to list every topic", WAIT, || {
        let dom = chromium(
            &[
                "--virtual-time-budget=5000".to_string(),
                "--dump-dom".to_string(),
                url.clone(),
            ],
            &dir.path().join("profile-dom"),
        );
        let missing: Vec<&String> = topics
            .iter()
            .filter(|t| !dom.contains(&format!("<tr class=\"topic\" data-topic=\"{t}\">")))
            .collect();
        if missing.is_empty() && dom.contains("source-to-destination") {
            Ok(dom)
        } else {
            Err(format!("topics not shown yet: {missing:?}\n{dom}"))
        }
    });
    for t in &topics {
        for p in 0..2 {
            assert!(
                dom.contains(&format!("data-topic=\"{t}\" data-partition=\"{p}\"")),
                "partition {p} of {t} is listed:\n{dom}"
            );
        }
    }
    assert!(
        dom.contains(">running<"),
        "the flow's state is shown:\n{dom}"
    );
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "the page reached /status:\n{dom}"
    );

    let shot = dir.path().join("status-page.png");
    chromium(
        &[
            "--virtual-time-budget=5000".to_string(),
            "--window-size=1600,900".to_string(),
            format!("--screenshot={}", shot.display()),
            url,
        ],
        &dir.path().join("profile-shot"),
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page with content, not a blank one ({} bytes)",
        png.len()
    );
    // The docs' picture is refreshed on request only, so a test run leaves
    // the tree as it found it.
    if std::env::var_os("STRAIT_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(repo_file("docs/status-page.png"), &png)
            .expect("writing docs/status-page.png");
    }
    eprintln!("screenshot: {}", shot.display());
    let _ = dir.keep();
    strait.stop();
}

#[test]
fn metrics_of_a_running_replication_name_topics_and_partitions_and_only_defined_metrics() {
    let (topics, mut strait) = running_replication("metrics", 300, "");
    let body = wait_until("/metrics to count every copied record", WAIT, || {
        let body = http_get(strait.http, "/metrics")?;
        let copied: f64 = body
            .lines()
            .filter(|l| l.starts_with("strait_records_replicated_total{"))
            .filter(|l| topics.iter().any(|t| l.contains(&format!("topic=\"{t}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let lags = body
            .lines()
            .filter(|l| l.starts_with("strait_replication_lag_records{"))
            .filter(|l| topics.iter().any(|t| l.contains(&format!("topic=\"{t}\""))))
            .count();
        if copied >= 600.0 && lags == 4 {
            Ok(body)
        } else {
            Err(format!(
                "{copied} records counted so far, lag of {lags} partitions\n{body}"
            ))
        }
    });
    for t in &topics {
        for p in 0..2 {
            let series = format!(
                "strait_records_replicated_total{{flow=\"source-to-destination\",source_cluster=\"source\",topic=\"{t}\",partition=\"{p}\"}}"
            );
            assert!(body.contains(&series), "{series} missing:\n{body}");
            let lag = format!("strait_replication_lag_records{{flow=\"source-to-destination\",topic=\"{t}\",partition=\"{p}\"}}");
            assert!(body.contains(&lag), "{lag} missing:\n{body}");
        }
    }
    assert!(
        body.contains("strait_partitions{flow=\"source-to-destination\",state=\"copying\"} 4"),
        "{body}"
    );
    assert!(
        body.contains("strait_flow_state{flow=\"source-to-destination\",state=\"running\"} 1"),
        "{body}"
    );
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        assert!(
            names::ALL.contains(&name),
            "/metrics exports {name}, which metrics.rs does not define"
        );
        let expected = if names::HISTOGRAMS.contains(&name) {
            "histogram"
        } else if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(kind, expected, "type of {name}");
    }
    strait.stop();
}

#[test]
fn json_log_lines_about_a_partition_carry_flow_topic_and_partition() {
    let (topics, mut strait) = running_replication("jsonlog", 100, "format = \"json\"");
    strait.stop();
    let log = strait.log();
    let mut json_lines = 0;
    let mut assigned = BTreeSet::new();
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        json_lines += 1;
        for key in ["timestamp", "level", "fields", "target"] {
            assert!(event.get(key).is_some(), "no `{key}` in {line}");
        }
        let fields = &event["fields"];
        if fields.get("partition").is_some() {
            assert!(
                fields.get("topic").is_some(),
                "a line with a partition but no topic: {line}"
            );
        }
        if fields["message"] == "partition assigned" {
            assert!(fields.get("flow").is_some(), "{line}");
            assigned.insert((
                fields["topic"].as_str().unwrap_or("").to_string(),
                fields["partition"].as_i64().unwrap_or(-1),
            ));
        }
    }
    assert!(json_lines > 5, "JSON log lines: {json_lines}\n{log}");
    for t in &topics {
        for p in 0..2 {
            assert!(
                assigned.contains(&(t.clone(), p)),
                "no `partition assigned` line with topic {t} and partition {p}: {assigned:?}"
            );
        }
    }
    // Everything else on stderr/stdout is the start-up summary.
    for line in log.lines().filter(|l| !l.starts_with('{')) {
        assert!(
            !line.contains("INFO") && !line.contains("WARN") && !line.contains("ERROR"),
            "a text log line in JSON mode: {line}"
        );
    }
}

#[test]
fn no_secret_appears_in_logs_metrics_status_the_page_check_or_verify_output() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("secret");
    create_topic(src, &topic, 1);
    let password = format!("pw-{}-do-not-show", unique_name("x"));
    let username = format!("user-{}", unique_name("x"));
    let secrets_dir = tempfile::tempdir().expect("a temporary directory");
    let password_file = secrets_dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).expect("writing the password file");

    // SASL against a PLAINTEXT listener: every connection to the source
    // fails, so the error paths (the likeliest to leak) all run.
    let mut config = Config::new(src, dst, &[&topic], &unique_name("strait.secret"));
    config.log_level = "debug".to_string();
    config.extra = format!(
        "format = \"json\"\n\n[clusters.source.kafka]\n\
         \"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.mechanism\" = \"PLAIN\"\n\
         \"sasl.username\" = \"{username}\"\n\
         \"sasl.password\" = {{ file = {} }}\n",
        support::strait::toml_str(password_file.to_str().unwrap())
    );
    let mut strait = Strait::start("strait", &config);
    let status = wait_until("the flow to find its source unreachable", WAIT, || {
        let status = strait.status()?;
        match status["flows"][0]["state"].as_str() {
            Some("degraded") => Ok(status),
            other => Err(format!("flow state {other:?}")),
        }
    });
    let mut outputs = vec![
        ("/status".to_string(), status.to_string()),
        (
            "/metrics".to_string(),
            http_get(strait.http, "/metrics").expect("/metrics"),
        ),
        ("/".to_string(), http_get(strait.http, "/").expect("/")),
    ];
    // 503 while degraded: read the body through the error.
    let ready = http_get(strait.http, "/ready").expect_err("not ready while the source is down");
    assert!(ready.contains("not ready"), "{ready}");
    outputs.push(("/ready".to_string(), ready));
    strait.terminate();
    outputs.push(("the log".to_string(), strait.log()));

    let config_path = strait.config_path.to_str().unwrap().to_string();
    for command in ["check", "verify"] {
        let out = run_strait(&[command, "--config", &config_path], &[]);
        assert_eq!(
            out.code,
            Some(1),
            "`strait {command}` cannot read the source\n{}",
            out.describe()
        );
        outputs.push((
            format!("`strait {command}`"),
            format!("{}\n{}", out.stdout, out.stderr),
        ));
    }

    for (what, text) in &outputs {
        assert!(!text.is_empty(), "{what} is empty");
        assert!(
            !text.contains(&password),
            "the password appears in {what}:\n{text}"
        );
        assert!(
            !text.contains(&username),
            "the SASL user name appears in {what}:\n{text}"
        );
    }
    // The log did run the failing paths.
    let log = &outputs.iter().find(|(w, _)| w == "the log").unwrap().1;
    assert!(
        log.contains("\"cluster\":\"source\""),
        "no client error logged:\n{log}"
    );
}
