//! The `strait` binary as the tests drive it: a config file written from a
//! few parameters, `strait run` as a child process with its output in a log
//! file, SIGTERM and `kill -9`, `/status` over plain HTTP/1.1, and one-shot
//! commands (`check`, `--version`) with their exit code and output.
//!
//! A failing test prints the path and the tail of each Strait log it started,
//! and keeps the log directory, so the cause is one `less` away.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const STRAIT: &str = env!("CARGO_BIN_EXE_strait");

/// How long one-shot commands (`check`, `--version`) may take before the test
/// gives up on them.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of the log shown when a test fails.
const TAIL_LINES: usize = 80;

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// A TOML basic string holding `s`.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A free TCP port on the loopback interface, for `[http] listen`.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The parameters of a test's config file: one source, one destination and
/// one flow, in the shape of design.md.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bootstrap servers of the cluster named `source`.
    pub source: String,
    /// Bootstrap servers of the cluster named `destination`.
    pub destination: String,
    /// The flow's topic regexes.
    pub topics: Vec<String>,
    pub topics_exclude: Vec<String>,
    pub group_id: String,
    pub topic_refresh_interval: String,
    pub shutdown_timeout: String,
    pub log_level: String,
    /// Port of `[http] listen` on 127.0.0.1; picked free by [`Config::new`].
    pub http_port: u16,
    /// Raw TOML appended to the file, for keys not covered above.
    pub extra: String,
    /// Raw TOML lines inside the `[[flows]]` table (e.g. `delivery = ...`);
    /// see [`Config::flow_key`].
    pub flow_extra: String,
    /// `[clusters.source.kafka]` properties; see [`Config::kafka`].
    pub source_kafka: Vec<(String, String)>,
    /// `[clusters.destination.kafka]` properties; see [`Config::kafka`].
    pub destination_kafka: Vec<(String, String)>,
}

impl Config {
    /// A flow copying every topic matching `topics` from `source` to
    /// `destination` under group `group_id`, re-reading topics every second.
    pub fn new(source: &str, destination: &str, topics: &[&str], group_id: &str) -> Self {
        Config {
            source: source.to_string(),
            destination: destination.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            topics_exclude: Vec::new(),
            group_id: group_id.to_string(),
            topic_refresh_interval: "1s".to_string(),
            shutdown_timeout: "20s".to_string(),
            log_level: "info".to_string(),
            http_port: free_port(),
            extra: String::new(),
            flow_extra: String::new(),
            source_kafka: Vec::new(),
            destination_kafka: Vec::new(),
        }
    }

    /// Adds `key = value` to the flow (`value` is raw TOML: quote strings).
    pub fn flow_key(mut self, key: &str, value: &str) -> Self {
        writeln!(self.flow_extra, "{key} = {value}").unwrap();
        self
    }

    /// Sets the flow's `delivery` mode.
    pub fn delivery(self, delivery: super::records::Delivery) -> Self {
        self.flow_key("delivery", &toml_str(delivery.config_value()))
    }

    /// Adds a librdkafka property to `[clusters.<cluster>.kafka]`, where
    /// `cluster` is `"source"` or `"destination"`.
    pub fn kafka(mut self, cluster: &str, key: &str, value: &str) -> Self {
        let props = match cluster {
            "source" => &mut self.source_kafka,
            "destination" => &mut self.destination_kafka,
            other => panic!("no cluster named {other:?} in a test config"),
        };
        props.push((key.to_string(), value.to_string()));
        self
    }

    /// The same config with another free `[http] listen` port, for a second
    /// instance of the same flow.
    pub fn another_instance(&self) -> Self {
        let mut c = self.clone();
        c.http_port = free_port();
        c
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|t| toml_str(t))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = String::new();
        writeln!(s, "shutdown_timeout = {}", toml_str(&self.shutdown_timeout)).unwrap();
        writeln!(s).unwrap();
        writeln!(s, "[clusters.source]").unwrap();
        writeln!(s, "bootstrap_servers = {}", toml_str(&self.source)).unwrap();
        write_kafka_table(&mut s, "source", &self.source_kafka);
        writeln!(s).unwrap();
        writeln!(s, "[clusters.destination]").unwrap();
        writeln!(s, "bootstrap_servers = {}", toml_str(&self.destination)).unwrap();
        write_kafka_table(&mut s, "destination", &self.destination_kafka);
        writeln!(s).unwrap();
        writeln!(s, "[[flows]]").unwrap();
        writeln!(s, "source = \"source\"").unwrap();
        writeln!(s, "destination = \"destination\"").unwrap();
        writeln!(s, "topics = [{}]", list(&self.topics)).unwrap();
        if !self.topics_exclude.is_empty() {
            writeln!(s, "topics_exclude = [{}]", list(&self.topics_exclude)).unwrap();
        }
        writeln!(s, "group_id = {}", toml_str(&self.group_id)).unwrap();
        writeln!(
            s,
            "topic_refresh_interval = {}",
            toml_str(&self.topic_refresh_interval)
        )
        .unwrap();
        s.push_str(&self.flow_extra);
        writeln!(s).unwrap();
        writeln!(s, "[http]").unwrap();
        writeln!(s, "listen = \"127.0.0.1:{}\"", self.http_port).unwrap();
        writeln!(s).unwrap();
        writeln!(s, "[log]").unwrap();
        writeln!(s, "level = {}", toml_str(&self.log_level)).unwrap();
        if !self.extra.is_empty() {
            writeln!(s).unwrap();
            s.push_str(&self.extra);
            s.push('\n');
        }
        s
    }

    fn shutdown_timeout(&self) -> Duration {
        parse_duration(&self.shutdown_timeout).unwrap_or(Duration::from_secs(20))
    }
}

/// `[clusters.<alias>.kafka]` with `props`, when there are any.
fn write_kafka_table(s: &mut String, alias: &str, props: &[(String, String)]) {
    if props.is_empty() {
        return;
    }
    writeln!(s, "[clusters.{alias}.kafka]").unwrap();
    for (k, v) in props {
        writeln!(s, "{} = {}", toml_str(k), toml_str(v)).unwrap();
    }
}

/// `"500ms"`, `"20s"`, `"2m"`: enough of humantime for the tests' own waits.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    match &s[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

/// A temporary directory holding `text` as `strait.toml` (or `name`).
pub fn write_config_file(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("strait-test-")
        .tempdir()
        .expect("a temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("writing the config file");
    (dir, path)
}

// ---------------------------------------------------------------------------
// `strait run`
// ---------------------------------------------------------------------------

/// A `strait run --config FILE` process (restartable with the same file).
pub struct Strait {
    /// Name used in messages (e.g. "strait-a").
    pub name: String,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub http: SocketAddr,
    shutdown_timeout: Duration,
    child: Mutex<Option<Child>>,
    /// Extra environment of every run (e.g. `STRAIT_FAULTS`).
    env: Vec<(String, String)>,
    runs: usize,
    /// Set once a panic message already carries the log tail.
    log_shown: AtomicBool,
}

impl Strait {
    /// Writes `config` to a fresh temporary directory and starts Strait on it.
    pub fn start(name: &str, config: &Config) -> Strait {
        Self::start_with_env(name, config, &[])
    }

    /// [`start`](Self::start) with `env` added to the process's environment,
    /// for this run and every restart.
    pub fn start_with_env(name: &str, config: &Config, env: &[(&str, &str)]) -> Strait {
        let (dir, config_path) = write_config_file("strait.toml", &config.to_toml());
        let dir_path = dir.path().to_path_buf();
        let mut s = Strait {
            name: name.to_string(),
            log_path: dir_path.join("strait.log"),
            dir: Some(dir),
            dir_path,
            config_path,
            http: SocketAddr::from(([127, 0, 0, 1], config.http_port)),
            shutdown_timeout: config.shutdown_timeout(),
            child: Mutex::new(None),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runs: 0,
            log_shown: AtomicBool::new(false),
        };
        s.spawn();
        s
    }

    /// Starts the process again with the same config file (after `kill9` or
    /// `stop`); its output is appended to the same log.
    pub fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "{}: restart() while the previous process is still running",
            self.name
        );
        self.spawn();
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the Strait log");
        writeln!(
            log,
            "===== test harness: {} run #{}: {STRAIT} run --config {} =====",
            self.name,
            self.runs,
            self.config_path.display()
        )
        .ok();
        let err = log.try_clone().expect("cloning the log handle");
        let child = Command::new(STRAIT)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.dir_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {STRAIT}: {e}"));
        eprintln!(
            "{}: started pid {} (log {})",
            self.name,
            child.id(),
            self.log_path.display()
        );
        *self.lock_child() = Some(child);
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Panics with the log tail when the process has exited on its own.
    pub fn assert_running(&self) {
        let exited = {
            let mut child = self.lock_child();
            match child.as_mut() {
                None => Some("was not started (or was already stopped)".to_string()),
                Some(c) => match c.try_wait() {
                    Ok(None) => None,
                    Ok(Some(status)) => Some(format!("exited unexpectedly: {status}")),
                    Err(e) => Some(format!("cannot be waited for: {e}")),
                },
            }
        };
        if let Some(why) = exited {
            self.fail(&format!("{} {why}", self.name));
        }
    }

    /// Panics with `msg`, the log's path and its tail.
    pub fn fail(&self, msg: &str) -> ! {
        self.log_shown.store(true, Ordering::Relaxed);
        panic!(
            "{msg}\n--- {} log: {} (last {TAIL_LINES} lines) ---\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail(TAIL_LINES)
        );
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    /// Gives up (kill -9, panic) after the shutdown timeout plus a margin.
    pub fn terminate(&mut self) -> ExitStatus {
        let Some(mut child) = self.lock_child().take() else {
            self.fail(&format!(
                "{}: terminate() but nothing is running",
                self.name
            ));
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.fail(&format!(
                "{} had already exited ({status}) before SIGTERM",
                self.name
            ));
        }
        signal(child.id(), "TERM");
        let limit = self.shutdown_timeout + Duration::from_secs(30);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!(
                        "{}: exited after SIGTERM in {:?}: {status}",
                        self.name,
                        start.elapsed()
                    );
                    return status;
                }
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(None) => {
                    child.kill().ok();
                    child.wait().ok();
                    self.fail(&format!(
                        "{} did not exit within {limit:?} of SIGTERM (killed it)",
                        self.name
                    ));
                }
                Err(e) => self.fail(&format!("waiting for {}: {e}", self.name)),
            }
        }
    }

    /// SIGTERM, then asserts a clean exit (code 0).
    pub fn stop(&mut self) {
        let status = self.terminate();
        if status.code() != Some(0) {
            self.fail(&format!(
                "{} should exit 0 after SIGTERM, but {status}",
                self.name
            ));
        }
    }

    /// `kill -9`: no chance to deliver or commit anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            signal(child.id(), "KILL");
            let status = child.wait().expect("waiting for the killed process");
            eprintln!("{}: killed with SIGKILL: {status}", self.name);
        }
    }

    /// GET `/status` as JSON; `Err` while the server does not answer (yet).
    /// Panics, with the log, when the process has exited.
    pub fn status(&self) -> Result<Value, String> {
        self.assert_running();
        let body = http_get(self.http, "/status")?;
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))
    }

    /// Waits until `/status` answers, and returns it.
    pub fn wait_for_status(&self) -> Value {
        super::records::wait_until(
            &format!("{} to serve /status on {}", self.name, self.http),
            Duration::from_secs(120),
            || self.status(),
        )
    }

    /// A one-line-per-partition summary of `/status`, for messages.
    pub fn status_summary(&self) -> String {
        let status = match self.status() {
            Ok(s) => s,
            Err(e) => return format!("(/status unavailable: {e})"),
        };
        let parts = partitions(&status);
        if parts.is_empty() {
            return format!("no partition assigned; raw: {status}");
        }
        parts
            .iter()
            .map(|p| {
                format!(
                    "{}[{}] {} replicated_offset={:?} committed_offset={:?} lag={:?} copied={}",
                    p.topic,
                    p.partition,
                    p.state,
                    p.replicated_offset,
                    p.committed_offset,
                    p.lag_records,
                    p.records_replicated
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `topic` on the destination (`dst` bootstrap servers) has
    /// `partitions` partitions holding at least `expected` records in all,
    /// failing early if this process exits.
    pub fn wait_for_copy(
        &self,
        dst: &str,
        topic: &str,
        partitions: i32,
        expected: i64,
        timeout: Duration,
    ) {
        super::records::wait_until(
            &format!(
                "{expected} records in {topic} ({partitions} partitions) on the destination, \
                 copied by {}",
                self.name
            ),
            timeout,
            || {
                self.assert_running();
                match super::records::total_records(dst, topic, partitions) {
                    Some(n) if n >= expected => Ok(()),
                    other => Err(format!(
                        "destination records: {other:?} (partitions with leaders: {:?})\n\
                         /status of {}:\n{}",
                        super::records::partition_count(dst, topic),
                        self.name,
                        self.status_summary()
                    )),
                }
            },
        )
    }

    /// `/proc/<pid>/status` memory figures of the running process.
    pub fn memory(&self) -> Option<Memory> {
        let pid = self.pid()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = |key: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Memory {
            rss_kb: kb("VmRSS:")?,
            peak_rss_kb: kb("VmHWM:")?,
        })
    }

    /// GET `path` on Strait's HTTP server: (status code, body), whatever the
    /// code; `Err` when the server does not answer. Panics if Strait exited.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.assert_running();
        match http_get(self.http, path) {
            Ok(body) => Ok((200, body)),
            Err(e) => {
                // http_get's error for a non-200: "GET <path>: HTTP/1.1 <code> <reason>: <body>"
                let rest = e.strip_prefix(&format!("GET {path}: ")).unwrap_or("");
                let code = rest
                    .strip_prefix("HTTP/1.")
                    .and_then(|r| r.get(2..5))
                    .and_then(|c| c.parse().ok());
                match code {
                    Some(code) => {
                        let body = rest.split_once(": ").map(|(_, b)| b).unwrap_or("");
                        Ok((code, body.to_string()))
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// The value of the Prometheus sample `name{labels}` whose labels include
    /// every `label="value"` of `labels`, from `/metrics`; `None` when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>, String> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            return Err(format!("/metrics answered {code}: {body}"));
        }
        Ok(body.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| labels_text.split(',').any(|l| l == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse().ok())?
        }))
    }

    /// The partitions this instance reports as assigned and copying
    /// (not stopped or failed), from `/status`.
    pub fn active_partitions(&self) -> Result<Vec<PartitionStatus>, String> {
        let status = self.status()?;
        Ok(partitions(&status)
            .into_iter()
            .filter(PartitionStatus::is_active)
            .collect())
    }
}

impl Drop for Strait {
    fn drop(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            child.kill().ok();
            child.wait().ok();
        }
        if std::thread::panicking() {
            let dir = self.dir.take().map(TempDir::keep);
            let dir = dir.as_deref().unwrap_or(&self.dir_path).display();
            if self.log_shown.load(Ordering::Relaxed) {
                eprintln!("--- {} log kept in {dir} ---", self.name);
            } else {
                eprintln!(
                    "--- {} log (kept in {dir}): {} (last {TAIL_LINES} lines) ---\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

fn tail(path: &Path, n: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// /status
// ---------------------------------------------------------------------------

/// Memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kb: u64,
    /// VmHWM: the most ever resident.
    pub peak_rss_kb: u64,
}

/// One partition of `/status` (`flows[].topics{}.assigned[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub flow: String,
    pub topic: String,
    pub partition: i32,
    pub state: String,
    pub replicated_offset: Option<i64>,
    pub committed_offset: Option<i64>,
    pub lag_records: Option<i64>,
    pub records_replicated: u64,
    /// Copier restarts of this partition.
    pub restarts: u64,
    pub last_error: Option<String>,
    /// The source high watermark Strait last saw.
    pub source_high_watermark: Option<i64>,
}

impl PartitionStatus {
    /// Assigned here and copying (or about to be restarted).
    pub fn is_active(&self) -> bool {
        matches!(self.state.as_str(), "copying" | "restarting")
    }
}

/// Every partition listed in a `/status` document.
pub fn partitions(status: &Value) -> Vec<PartitionStatus> {
    let mut out = Vec::new();
    let flows = status["flows"].as_array().cloned().unwrap_or_default();
    for flow in &flows {
        let flow_name = flow["name"].as_str().unwrap_or("").to_string();
        let Some(topics) = flow["topics"].as_object() else {
            continue;
        };
        for (topic, t) in topics {
            for p in t["assigned"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                out.push(PartitionStatus {
                    flow: flow_name.clone(),
                    topic: topic.clone(),
                    partition: p["partition"].as_i64().unwrap_or(-1) as i32,
                    state: p["state"].as_str().unwrap_or("").to_string(),
                    replicated_offset: p["replicated_offset"].as_i64(),
                    committed_offset: p["committed_offset"].as_i64(),
                    lag_records: p["lag_records"].as_i64(),
                    records_replicated: p["records_replicated"].as_u64().unwrap_or(0),
                    restarts: p["restarts"].as_u64().unwrap_or(0),
                    last_error: p["last_error"].as_str().map(str::to_string),
                    source_high_watermark: p["source_high_watermark"].as_i64(),
                });
            }
        }
    }
    out
}

/// A minimal HTTP/1.1 GET on a fresh connection; the body on a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer to GET {path} from {addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "GET {path}: no HTTP header in {:?}",
                String::from_utf8_lossy(&raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status_line = head.lines().next().unwrap_or("");
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path}: {status_line}: {body}"));
    }
    Ok(body)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".to_string());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

// ---------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------

/// What a finished command left behind.
#[derive(Debug)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Both streams, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `strait ARGS...` to completion (bounded by a generous timeout) with
/// `env` added to its environment.
pub fn run_strait(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(STRAIT);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .env_remove("STRAIT_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {STRAIT}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for strait") {
            break status;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "`strait {}` did not finish within {COMMAND_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                tail(&out_path, TAIL_LINES),
                tail(&err_path, TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    CmdOutput {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}
