//! What `strait run` tells a person at the terminal: a start-up summary, then
//! a progress line every few seconds.
//!
//! The summary names what the config says (clusters, flows and their topic
//! patterns, where the HTTP endpoints are); once the flows have found their
//! topics, a line says which topics and how many partitions are copied, and
//! again whenever that changes. Then every few seconds: records/s, bytes/s,
//! total lag.
//!
//! The summary takes plain data, not the config, so that it names exactly
//! what it is given: cluster aliases and bootstrap servers, never a property
//! that could hold a secret. The progress line is only printed when stderr is
//! a terminal; under a service manager the logs and `/metrics` say the same.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_actors::StatusBoard;

/// A cluster as the summary shows it.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSummary<'a> {
    /// The cluster's alias (`[clusters.NAME]`).
    pub alias: &'a str,
    /// Its `bootstrap_servers`.
    pub bootstrap_servers: &'a str,
}

/// A flow as the summary shows it.
#[derive(Clone, Copy, Debug)]
pub struct FlowSummary<'a> {
    /// The flow's name.
    pub name: &'a str,
    /// Source cluster alias.
    pub source: &'a str,
    /// Destination cluster alias.
    pub destination: &'a str,
    /// `topics`: the include patterns.
    pub topics: &'a [String],
    /// `topics_exclude`: the exclude patterns.
    pub topics_exclude: &'a [String],
}

/// The lines printed when `strait run` starts: version, clusters, flows and
/// where the HTTP endpoints are served (`http`: the bound address).
pub fn startup_summary(
    clusters: &[ClusterSummary<'_>],
    flows: &[FlowSummary<'_>],
    http: Option<SocketAddr>,
) -> String {
    let mut out = format!("strait {}\n", env!("CARGO_PKG_VERSION"));
    let width = clusters.iter().map(|c| c.alias.len()).max().unwrap_or(0);
    out.push_str("clusters:\n");
    if clusters.is_empty() {
        out.push_str("  (none)\n");
    }
    for c in clusters {
        let _ = writeln!(
            out,
            "  {:width$}  {}",
            c.alias,
            servers_for_display(c.bootstrap_servers)
        );
    }
    out.push_str("flows:\n");
    if flows.is_empty() {
        out.push_str("  (none)\n");
    }
    for f in flows {
        let _ = write!(
            out,
            "  {}: {} -> {}, topics {}",
            f.name,
            f.source,
            f.destination,
            patterns(f.topics)
        );
        if !f.topics_exclude.is_empty() {
            let _ = write!(out, " except {}", patterns(f.topics_exclude));
        }
        out.push('\n');
    }
    match http {
        Some(addr) => {
            let _ = writeln!(
                out,
                "http: http://{addr}/ (/metrics /health /ready /status)"
            );
        }
        None => out.push_str("http: off\n"),
    }
    out
}

fn patterns(list: &[String]) -> String {
    if list.is_empty() {
        return "(none)".to_string();
    }
    list.iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bootstrap servers as given, with any `user:password@` part dropped from an
/// entry, should one ever be written there.
fn servers_for_display(servers: &str) -> String {
    servers
        .split(',')
        .map(|s| {
            let s = s.trim();
            s.rsplit_once('@').map_or(s, |(_, host)| host)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints a progress line to stderr every `every` (and a topics line when the
/// copied topics change), but only when stderr is a terminal; otherwise does
/// nothing and returns `None`. Must be called within
/// a Tokio runtime (actix's System is one). Abort the returned task to stop it.
///
/// Rates come from the records and bytes the destination acknowledged, summed
/// over the partitions on the board.
pub fn spawn_progress_line(
    board: Arc<StatusBoard>,
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() || every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = (Instant::now(), Totals::of(&board));
        let mut topics_said = String::new();
        loop {
            tick.tick().await;
            if let Some(line) = topics_line(&board).filter(|l| *l != topics_said) {
                eprintln!("{line}");
                topics_said = line;
            }
            let now = (Instant::now(), Totals::of(&board));
            let elapsed = now.0.duration_since(last.0).as_secs_f64();
            // Revoked partitions leave the board: a sum may go down; count that as 0.
            let per_second = |now: u64, then: u64| {
                if elapsed > 0.0 {
                    now.saturating_sub(then) as f64 / elapsed
                } else {
                    0.0
                }
            };
            eprintln!(
                "{}",
                progress_line(
                    per_second(now.1.records, last.1.records),
                    per_second(now.1.bytes, last.1.bytes),
                    now.1.lag,
                    now.1.partitions,
                )
            );
            last = now;
        }
    }))
}

/// What the progress line sums over the board.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    records: u64,
    bytes: u64,
    lag: i64,
    partitions: usize,
}

impl Totals {
    fn of(board: &StatusBoard) -> Self {
        let mut t = Totals::default();
        for f in board.snapshot().flows {
            // `flow` returns the flow already on the board under that name.
            for p in board.flow(&f.name, &f.source, &f.destination).partitions() {
                t.records += p.progress.acked_records();
                t.bytes += p.progress.acked_bytes();
                t.lag += p.progress.lag().unwrap_or(0);
                t.partitions += 1;
            }
        }
        t
    }
}

/// How many topic names [`topics_line`] lists before "and N more".
const TOPICS_LISTED: usize = 5;

/// `strait: copying 3 topics, 12 partitions (8 here): clicks, orders, payments`,
/// or `None` while no flow has found a topic yet.
pub fn topics_line(board: &StatusBoard) -> Option<String> {
    let mut names = Vec::new();
    let mut partitions: i64 = 0;
    let mut here = 0usize;
    for flow in board.snapshot().flows {
        for (name, topic) in &flow.topics {
            names.push(name.clone());
            partitions += i64::from(topic.partitions.max(0));
            here += topic.assigned.len();
        }
    }
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut list = names
        .iter()
        .take(TOPICS_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > TOPICS_LISTED {
        let _ = write!(list, " and {} more", names.len() - TOPICS_LISTED);
    }
    Some(format!(
        "strait: copying {} topic{}, {} partition{} ({} here): {list}",
        thousands(names.len() as u64),
        if names.len() == 1 { "" } else { "s" },
        thousands(partitions as u64),
        if partitions == 1 { "" } else { "s" },
        thousands(here as u64),
    ))
}

/// `strait: 12,345 rec/s  1.2 MB/s  lag 4,321 records  8 partitions`
pub fn progress_line(
    records_per_second: f64,
    bytes_per_second: f64,
    lag_records: i64,
    partitions: usize,
) -> String {
    format!(
        "strait: {} rec/s  {}/s  lag {} records  {} partition{}",
        thousands(whole(records_per_second)),
        bytes(whole(bytes_per_second)),
        thousands(lag_records.max(0) as u64),
        thousands(partitions as u64),
        if partitions == 1 { "" } else { "s" },
    )
}

fn whole(rate: f64) -> u64 {
    if rate.is_finite() && rate > 0.0 {
        rate.round() as u64
    } else {
        0
    }
}

/// Bytes in decimal units: `512 B`, `1.2 kB`, `3.4 MB`, `5.6 GB`.
fn bytes(n: u64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    for (size, unit) in UNITS {
        if n as f64 >= size {
            return format!("{:.1} {unit}", n as f64 / size);
        }
    }
    format!("{n} B")
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let head = digits.len() % 3;
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    out.push_str(&digits[..head]);
    for start in (head..digits.len()).step_by(3) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&digits[start..start + 3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_actors::status::FlowState;

    #[test]
    fn the_summary_names_clusters_flows_and_the_http_address() {
        let topics = vec!["orders\\..*".to_string(), "payments".to_string()];
        let exclude = vec!["orders\\.tmp\\..*".to_string()];
        let text = startup_summary(
            &[
                ClusterSummary {
                    alias: "east",
                    bootstrap_servers: "10.1.0.1:9092,10.1.0.2:9092",
                },
                ClusterSummary {
                    alias: "central",
                    bootstrap_servers: "10.9.0.1:9092",
                },
            ],
            &[FlowSummary {
                name: "east-to-central",
                source: "east",
                destination: "central",
                topics: &topics,
                topics_exclude: &exclude,
            }],
            Some("127.0.0.1:9464".parse().unwrap()),
        );
        let expected = format!(
            "strait {}\n\
             clusters:\n\
             \x20 east     10.1.0.1:9092,10.1.0.2:9092\n\
             \x20 central  10.9.0.1:9092\n\
             flows:\n\
             \x20 east-to-central: east -> central, topics \"orders\\..*\", \"payments\" except \"orders\\.tmp\\..*\"\n\
             http: http://127.0.0.1:9464/ (/metrics /health /ready /status)\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn the_summary_never_shows_credentials_in_a_server_list() {
        let text = startup_summary(
            &[ClusterSummary {
                alias: "a",
                bootstrap_servers: "user:hunter2@h1:9092, h2:9092",
            }],
            &[],
            None,
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("  a  h1:9092,h2:9092\n"), "{text}");
        assert!(text.contains("flows:\n  (none)\n"), "{text}");
        assert!(text.ends_with("http: off\n"), "{text}");
    }

    #[test]
    fn the_progress_line_reads_well() {
        assert_eq!(
            progress_line(12_345.4, 1_234_567.0, 4_321, 8),
            "strait: 12,345 rec/s  1.2 MB/s  lag 4,321 records  8 partitions"
        );
        assert_eq!(
            progress_line(0.0, 0.0, -3, 1),
            "strait: 0 rec/s  0 B/s  lag 0 records  1 partition"
        );
        assert_eq!(
            progress_line(f64::NAN, f64::INFINITY, 1_000_000, 1_000),
            "strait: 0 rec/s  0 B/s  lag 1,000,000 records  1,000 partitions"
        );
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_000), "1.0 kB");
        assert_eq!(bytes(2_500_000_000), "2.5 GB");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
    }

    #[test]
    fn totals_sum_over_every_partition() {
        let board = StatusBoard::new();
        let flow = board.flow("f", "a", "b");
        flow.set_state(FlowState::Running);
        for partition in 0..3 {
            let p = flow.partition("t", partition, "t");
            p.progress.set_start(10);
            p.progress.set_high_watermark(20);
            let ack = p.progress.register(2, 300, 10, 12, None, None);
            ack.delivered();
            ack.delivered();
        }
        assert_eq!(
            Totals::of(&board),
            Totals {
                records: 6,
                bytes: 900,
                lag: 24,
                partitions: 3
            }
        );
    }

    #[test]
    fn the_topics_line_lists_topics_and_partitions() {
        let board = StatusBoard::new();
        assert_eq!(topics_line(&board), None, "nothing found yet");
        let flow = board.flow("f", "a", "b");
        for (name, partitions) in [
            ("orders", 4),
            ("payments", 2),
            ("a", 1),
            ("b", 1),
            ("c", 1),
            ("d", 1),
        ] {
            flow.set_topic(
                name,
                strait_actors::status::TopicStatus {
                    destination_topic: name.to_string(),
                    partitions,
                    state: "copying".to_string(),
                },
            );
        }
        flow.partition("orders", 0, "orders");
        flow.partition("orders", 1, "orders");
        assert_eq!(
            topics_line(&board).as_deref(),
            Some("strait: copying 6 topics, 10 partitions (2 here): a, b, c, d, orders and 1 more")
        );
    }
}
