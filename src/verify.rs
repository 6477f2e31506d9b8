//! `strait verify`: reads source and destination topics and compares them,
//! partition by partition.
//!
//! For every topic a flow replicates (or only those named with `--topic`),
//! each source partition is compared with the same partition of the
//! destination topic: record counts, and each record's content digest (key,
//! value, headers in order, timestamp) lined up by position. The report is a
//! table per topic: in sync, missing N, extra or duplicated N. Exit code 0
//! when everything compared is in sync, 1 for a mismatch or a cluster that
//! cannot be read, 2 for a bad config or bad arguments.
//!
//! Memory stays bounded whatever the topic size: records are hashed as they
//! are read and only digests within the alignment window are kept (see
//! [`align`]). One partition is compared at a time.
//!
//! # Layout
//! - [`digest`]: a record's content as a 128-bit digest.
//! - [`read`]: reading a partition range by assignment (no group), `read_committed`.
//! - [`align`]: lining up source and destination by position, or by a stored
//!   offset mapping ([`align::OffsetMapping`], for exactly-once flows).
//! - [`ids`]: counting lost and duplicated records by an id in each record,
//!   for fault-injection tests.
//!
//! The command itself is [`command`]; [`verify`] is the same as a library
//! call returning a [`VerifyReport`].

pub mod align;
pub mod digest;
pub mod ids;
pub mod read;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use strait_actors::discovery::TopicReader;
use strait_actors::{ClusterSpec, FlowSpec};

use crate::config::Settings;
use align::{align_by_mapping, align_by_position, Alignment, Comparison, Item};
use read::{ClusterReader, OffsetRange, TimeFilter};

/// Records of look-ahead and look-behind when lining up by position: room
/// for an at-least-once replay or a gap this long (about 16 MB of digests).
pub const DEFAULT_WINDOW: usize = 200_000;

/// Why `verify` could not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A flow, topic or option that does not fit the config: exit code 2.
    #[error("{0}")]
    BadArguments(String),
    /// A cluster could not be read: exit code 1.
    #[error("{0}")]
    Cluster(String),
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

/// `--partition`, `--from`, `--to` and `--window`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Only these partitions: numbers or ranges such as `0-3`; repeat the
    /// option or separate with commas. Default: every partition.
    #[arg(long = "partition", value_name = "P", value_delimiter = ',')]
    pub partitions: Vec<PartitionSpec>,
    /// Only records with a timestamp at or after TIME: an RFC 3339 time
    /// (`2024-05-01T00:00:00Z`) or a duration before now (`2h`, `30m`).
    #[arg(long, value_name = "TIME")]
    pub from: Option<TimeBound>,
    /// Only records with a timestamp before TIME (same forms as --from).
    #[arg(long, value_name = "TIME")]
    pub to: Option<TimeBound>,
    /// Records looked ahead and behind to tell gaps and duplicates apart
    /// from changed records; memory grows by about 80 bytes per record.
    #[arg(long, value_name = "RECORDS", default_value_t = DEFAULT_WINDOW)]
    pub window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            partitions: Vec::new(),
            from: None,
            to: None,
            window: DEFAULT_WINDOW,
        }
    }
}

/// One `--partition` value: a partition or an inclusive range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec {
    /// First partition.
    pub first: i32,
    /// Last partition, included.
    pub last: i32,
}

impl PartitionSpec {
    fn contains(&self, p: i32) -> bool {
        (self.first..=self.last).contains(&p)
    }
}

impl FromStr for PartitionSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |t: &str| {
            t.trim().parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                format!("`{s}` is not a partition: expected a number such as 3 or a range such as 0-7")
            })
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(s)?, number(s)?),
        };
        if first > last {
            return Err(format!(
                "`{s}`: a range goes from the lower partition to the higher"
            ));
        }
        Ok(Self { first, last })
    }
}

/// A `--from` / `--to` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// Milliseconds since the Unix epoch.
    At(i64),
    /// This long before the command started.
    Ago(Duration),
}

impl TimeBound {
    /// Milliseconds since the epoch, with `now_ms` for relative bounds.
    pub fn resolve(&self, now_ms: i64) -> i64 {
        match self {
            TimeBound::At(ms) => *ms,
            TimeBound::Ago(d) => now_ms.saturating_sub(d.as_millis() as i64),
        }
    }
}

impl FromStr for TimeBound {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(TimeBound::At(t.timestamp_millis()));
        }
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(TimeBound::Ago(d));
        }
        Err(format!(
            "`{s}` is neither an RFC 3339 time such as 2024-05-01T00:00:00Z nor a duration \
             before now such as 2h"
        ))
    }
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only this flow.
    pub flow: Option<String>,
    /// Only these source topics (empty: every topic the flows replicate).
    pub topics: Vec<String>,
    /// Only these partitions (empty: all).
    pub partitions: Vec<PartitionSpec>,
    /// Only records with timestamps in this range.
    pub time: TimeFilter,
    /// How records are lined up.
    pub alignment: Alignment,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            flow: None,
            topics: Vec::new(),
            partitions: Vec::new(),
            time: TimeFilter::default(),
            alignment: Alignment::Position {
                window: DEFAULT_WINDOW,
            },
            progress: false,
        }
    }
}

impl VerifyOptions {
    /// From the command line; relative times are taken from now.
    pub fn from_cli(
        flow: Option<String>,
        topics: Vec<String>,
        limits: Limits,
    ) -> Result<Self, VerifyError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let time = TimeFilter {
            from_ms: limits.from.map(|t| t.resolve(now_ms)),
            to_ms: limits.to.map(|t| t.resolve(now_ms)),
        };
        if let (Some(from), Some(to)) = (time.from_ms, time.to_ms) {
            if from >= to {
                return Err(VerifyError::BadArguments(
                    "--from must be earlier than --to".to_string(),
                ));
            }
        }
        if limits.window == 0 {
            return Err(VerifyError::BadArguments(
                "--window must be at least 1".to_string(),
            ));
        }
        Ok(Self {
            flow,
            topics,
            partitions: limits.partitions,
            time,
            alignment: Alignment::Position {
                window: limits.window,
            },
            progress: true,
        })
    }

    fn wants_partition(&self, p: i32) -> bool {
        self.partitions.is_empty() || self.partitions.iter().any(|s| s.contains(p))
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// Everything `verify` compared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// One entry per (flow, source topic).
    pub topics: Vec<TopicReport>,
}

/// One topic of one flow.
#[derive(Debug, Clone, Serialize)]
pub struct TopicReport {
    /// The flow's name.
    pub flow: String,
    /// The source topic.
    pub source_topic: String,
    /// Where the flow copies it.
    pub destination_topic: String,
    /// What kept (part of) the topic from being compared.
    pub problems: Vec<String>,
    /// The partitions compared.
    pub partitions: Vec<PartitionReport>,
}

/// One partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Partition number, the same on both sides.
    pub partition: i32,
    /// The source offsets read; `None` when the source has no such partition.
    #[serde(skip)]
    pub source: Option<OffsetRange>,
    /// The destination offsets read; `None` when it has no such partition.
    #[serde(skip)]
    pub destination: Option<OffsetRange>,
    /// What was found.
    pub comparison: Comparison,
}

impl TopicReport {
    /// Every partition compared and in sync.
    pub fn in_sync(&self) -> bool {
        self.problems.is_empty() && self.partitions.iter().all(|p| p.comparison.in_sync())
    }

    fn sum(&self, f: impl Fn(&Comparison) -> u64) -> u64 {
        self.partitions.iter().map(|p| f(&p.comparison)).sum()
    }
}

impl VerifyReport {
    /// Every topic compared and in sync.
    pub fn in_sync(&self) -> bool {
        self.topics.iter().all(TopicReport::in_sync)
    }

    /// The report of `source_topic` (of any flow).
    pub fn topic(&self, source_topic: &str) -> Option<&TopicReport> {
        self.topics.iter().find(|t| t.source_topic == source_topic)
    }

    /// The tables people read: one per topic, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut flow = None;
        for t in &self.topics {
            if flow != Some(&t.flow) {
                flow = Some(&t.flow);
                let _ = writeln!(out, "flow `{}`", t.flow);
            }
            render_topic(t, &mut out);
        }
        let partitions: usize = self.topics.iter().map(|t| t.partitions.len()).sum();
        let bad_partitions: usize = self
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| !p.comparison.in_sync())
            .count();
        let bad_topics = self.topics.iter().filter(|t| !t.in_sync()).count();
        let sum =
            |f: &dyn Fn(&Comparison) -> u64| -> u64 { self.topics.iter().map(|t| t.sum(f)).sum() };
        let _ = write!(
            out,
            "\n{} topic{}, {} partition{} compared: ",
            self.topics.len(),
            plural(self.topics.len()),
            partitions,
            plural(partitions)
        );
        if self.in_sync() {
            out.push_str("in sync\n");
        } else {
            let _ = writeln!(
                out,
                "NOT IN SYNC: {bad_topics} topic{} and {bad_partitions} partition{} differ \
                 (missing {}, extra or duplicated {})",
                plural(bad_topics),
                plural(bad_partitions),
                thousands(sum(&|c| c.missing)),
                thousands(sum(&|c| c.extra + c.duplicated)),
            );
        }
        out
    }
}

fn render_topic(t: &TopicReport, out: &mut String) {
    let records = t.sum(|c| c.source_records);
    let verdict = if t.in_sync() {
        format!(
            "in sync ({} partition{}, {} record{})",
            t.partitions.len(),
            plural(t.partitions.len()),
            thousands(records),
            plural(records as usize)
        )
    } else {
        let bad = t
            .partitions
            .iter()
            .filter(|p| !p.comparison.in_sync())
            .count();
        format!(
            "NOT IN SYNC ({bad} of {} partition{})",
            t.partitions.len(),
            plural(t.partitions.len())
        )
    };
    let _ = writeln!(
        out,
        "\n{} -> {}: {verdict}",
        t.source_topic, t.destination_topic
    );
    for problem in &t.problems {
        let _ = writeln!(out, "  ! {problem}");
    }
    if t.partitions.is_empty() {
        return;
    }
    let head = [
        "partition",
        "source records",
        "destination records",
        "result",
    ];
    let rows: Vec<[String; 4]> = t
        .partitions
        .iter()
        .map(|p| {
            let side = |range: Option<OffsetRange>, n: u64| match range {
                None => "no partition".to_string(),
                Some(_) => thousands(n),
            };
            [
                p.partition.to_string(),
                side(p.source, p.comparison.source_records),
                side(p.destination, p.comparison.destination_records),
                result_text(&p.comparison),
            ]
        })
        .collect();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let _ = writeln!(
        out,
        "  {:>w0$}  {:>w1$}  {:>w2$}  {}",
        head[0], head[1], head[2], head[3]
    );
    for r in rows {
        let _ = writeln!(
            out,
            "  {:>w0$}  {:>w1$}  {:>w2$}  {}",
            r[0], r[1], r[2], r[3]
        );
    }
}

/// `in sync`, or what differs: `missing N (from source offset X)`,
/// `extra or duplicated N (D duplicated from destination offset Y, E extra
/// from destination offset Z)`.
pub fn result_text(c: &Comparison) -> String {
    if c.in_sync() {
        return "in sync".to_string();
    }
    let mut parts = Vec::new();
    if c.missing > 0 {
        parts.push(format!(
            "missing {}{}",
            thousands(c.missing),
            c.first_missing
                .map(|o| format!(" (first at source offset {o})"))
                .unwrap_or_default()
        ));
    }
    if c.duplicated + c.extra > 0 {
        let mut why = Vec::new();
        if c.duplicated > 0 {
            why.push(format!(
                "{} duplicated{}",
                thousands(c.duplicated),
                c.first_duplicated
                    .map(|o| format!(", first at destination offset {o}"))
                    .unwrap_or_default()
            ));
        }
        if c.extra > 0 {
            why.push(format!(
                "{} not from the source{}",
                thousands(c.extra),
                c.first_extra
                    .map(|o| format!(", first at destination offset {o}"))
                    .unwrap_or_default()
            ));
        }
        parts.push(format!(
            "extra or duplicated {} ({})",
            thousands(c.duplicated + c.extra),
            why.join("; ")
        ));
    }
    parts.join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

/// Partition counts of every topic of `cluster` (topics in error left out),
/// read with the actors' [`TopicReader`].
pub fn partition_counts(cluster: &ClusterSpec) -> Result<BTreeMap<String, i32>, VerifyError> {
    let reader = TopicReader::new(cluster).map_err(|e| VerifyError::Cluster(e.to_string()))?;
    let metadata = block_on(reader.metadata()).map_err(|e| VerifyError::Cluster(e.to_string()))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread Tokio runtime builds")
        .block_on(future)
}

/// Compares what `options` selects of the flows in `settings`.
pub fn verify(settings: &Settings, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let flows: Vec<&FlowSpec> = match &options.flow {
        Some(name) => vec![settings.flow(name).ok_or_else(|| {
            VerifyError::BadArguments(format!(
                "--flow {name:?}: no such flow; flows in the config: {}",
                settings
                    .flows
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?],
        None => settings.flows.iter().collect(),
    };
    for topic in &options.topics {
        if !flows.iter().any(|f| f.topics.matches(topic)) {
            return Err(VerifyError::BadArguments(format!(
                "--topic {topic:?}: not replicated by {}",
                match &options.flow {
                    Some(f) => format!("flow `{f}`"),
                    None => "any flow in the config".to_string(),
                }
            )));
        }
    }
    let progress = Progress::new(options.progress);
    let mut report = VerifyReport::default();
    for flow in flows {
        verify_flow(flow, options, &progress, &mut report)?;
    }
    progress.done();
    Ok(report)
}

fn verify_flow(
    flow: &FlowSpec,
    options: &VerifyOptions,
    progress: &Progress,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let source_reader =
        TopicReader::new(&flow.source).map_err(|e| VerifyError::Cluster(e.to_string()))?;
    let selected = block_on(source_reader.selected_topics(&flow.topics))
        .map_err(|e| VerifyError::Cluster(e.to_string()))?;
    let destination_counts = partition_counts(&flow.destination)?;
    let topics: Vec<String> = if options.topics.is_empty() {
        selected.keys().cloned().collect()
    } else {
        options
            .topics
            .iter()
            .filter(|t| flow.topics.matches(t))
            .cloned()
            .collect()
    };
    let source = ClusterReader::new(&flow.source)?;
    let destination = ClusterReader::new(&flow.destination)?;
    for topic in topics {
        let destination_topic = flow.destination_topic(&topic);
        let mut t = TopicReport {
            flow: flow.name.clone(),
            source_topic: topic.clone(),
            destination_topic: destination_topic.clone(),
            problems: Vec::new(),
            partitions: Vec::new(),
        };
        let source_partitions = selected.get(&topic).map_or(0, |s| s.partitions);
        let destination_partitions = destination_counts
            .get(&destination_topic)
            .copied()
            .unwrap_or(0);
        if !selected.contains_key(&topic) {
            t.problems.push(format!(
                "topic `{topic}` does not exist on source cluster `{}`",
                flow.source.alias
            ));
        }
        if !destination_counts.contains_key(&destination_topic) {
            t.problems.push(format!(
                "topic `{destination_topic}` does not exist on destination cluster `{}`",
                flow.destination.alias
            ));
        }
        let pairs = Pairs {
            source: &source,
            destination: &destination,
            source_topic: &topic,
            destination_topic: &destination_topic,
            source_partitions,
            destination_partitions,
        };
        if let Err(error) = compare_topic(&pairs, options, progress, &mut t) {
            t.problems.push(error.to_string());
        }
        report.topics.push(t);
    }
    Ok(())
}

/// The two sides of one topic.
struct Pairs<'a> {
    source: &'a ClusterReader,
    destination: &'a ClusterReader,
    source_topic: &'a str,
    destination_topic: &'a str,
    source_partitions: i32,
    destination_partitions: i32,
}

fn compare_topic(
    pairs: &Pairs<'_>,
    options: &VerifyOptions,
    progress: &Progress,
    report: &mut TopicReport,
) -> Result<(), VerifyError> {
    let partitions: Vec<i32> = (0..pairs.source_partitions.max(pairs.destination_partitions))
        .filter(|p| options.wants_partition(*p))
        .collect();
    let on =
        |count: i32| -> Vec<i32> { partitions.iter().copied().filter(|p| *p < count).collect() };
    // The destination first: records copied in between then count as not
    // yet copied (missing at the end), never as extra.
    let destination_parts = on(pairs.destination_partitions);
    let destination_ranges: BTreeMap<i32, OffsetRange> = destination_parts
        .iter()
        .copied()
        .zip(
            pairs
                .destination
                .ranges(pairs.destination_topic, &destination_parts, options.time)?,
        )
        .collect();
    let source_parts = on(pairs.source_partitions);
    let source_ranges: BTreeMap<i32, OffsetRange> = source_parts
        .iter()
        .copied()
        .zip(
            pairs
                .source
                .ranges(pairs.source_topic, &source_parts, options.time)?,
        )
        .collect();
    progress.add(
        source_ranges.values().map(OffsetRange::len).sum::<u64>()
            + destination_ranges
                .values()
                .map(OffsetRange::len)
                .sum::<u64>(),
    );
    for p in partitions {
        progress.show(pairs.source_topic, p);
        let source = source_ranges.get(&p).copied();
        let destination = destination_ranges.get(&p).copied();
        let comparison = compare_partition(pairs, p, source, destination, options, progress)?;
        report.partitions.push(PartitionReport {
            partition: p,
            source,
            destination,
            comparison,
        });
    }
    Ok(())
}

fn compare_partition(
    pairs: &Pairs<'_>,
    p: i32,
    source: Option<OffsetRange>,
    destination: Option<OffsetRange>,
    options: &VerifyOptions,
    progress: &Progress,
) -> Result<Comparison, VerifyError> {
    let advance = |n: u64| progress.advance(n);
    let source_stream: Box<dyn Iterator<Item = Result<Item, VerifyError>> + '_> = match source {
        Some(range) => {
            Box::new(
                pairs
                    .source
                    .read(pairs.source_topic, p, range, options.time, &advance)?,
            )
        }
        None => Box::new(std::iter::empty()),
    };
    let destination_stream: Box<dyn Iterator<Item = Result<Item, VerifyError>> + '_> =
        match destination {
            Some(range) => Box::new(pairs.destination.read(
                pairs.destination_topic,
                p,
                range,
                options.time,
                &advance,
            )?),
            None => Box::new(std::iter::empty()),
        };
    match &options.alignment {
        Alignment::Position { window } => {
            align_by_position(source_stream, destination_stream, *window)
        }
        Alignment::Mapping(mapping) => align_by_mapping(source_stream, destination_stream, |o| {
            mapping.destination_offset(pairs.source_topic, p, o)
        }),
    }
}

/// The progress bar: offsets read of all ranges found so far, drawn on
/// stderr only when it is a terminal.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(wanted: bool) -> Self {
        let bar = if wanted && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:30} [{bar:30}] {human_pos}/{human_len} offsets  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }

    fn add(&self, offsets: u64) {
        self.bar.inc_length(offsets);
    }

    fn show(&self, topic: &str, partition: i32) {
        if !self.bar.is_hidden() {
            self.bar.set_message(format!("{topic}[{partition}]"));
        }
    }

    fn advance(&self, offsets: u64) {
        self.bar.inc(offsets);
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// `strait verify`: loads the config, compares, prints the report, and
/// returns the exit code (0 in sync, 1 a mismatch or an unreadable cluster,
/// 2 a bad config or bad arguments).
pub fn command(
    config: &Path,
    flow: Option<String>,
    topics: Vec<String>,
    limits: Limits,
) -> ExitCode {
    let settings = match crate::config::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strait: bad config: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::telemetry::init_logging(&settings.log.level, settings.log.format) {
        eprintln!("strait: {e:#}");
        return ExitCode::from(2);
    }
    let outcome = VerifyOptions::from_cli(flow, topics, limits)
        .and_then(|options| verify(&settings, &options));
    match outcome {
        Ok(report) => {
            print!("{}", report.render());
            if report.in_sync() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e @ VerifyError::BadArguments(_)) => {
            eprintln!("strait: {e}");
            ExitCode::from(2)
        }
        Err(e @ VerifyError::Cluster(_)) => {
            eprintln!("strait: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_numbers_or_ranges() {
        assert_eq!(
            "3".parse::<PartitionSpec>(),
            Ok(PartitionSpec { first: 3, last: 3 })
        );
        assert_eq!(
            "0-7".parse::<PartitionSpec>(),
            Ok(PartitionSpec { first: 0, last: 7 })
        );
        for bad in ["", "-1", "x", "5-2", "1-"] {
            assert!(bad.parse::<PartitionSpec>().is_err(), "{bad}");
        }
        let options = VerifyOptions {
            partitions: vec![
                PartitionSpec { first: 0, last: 1 },
                PartitionSpec { first: 5, last: 5 },
            ],
            ..VerifyOptions::default()
        };
        let wanted: Vec<i32> = (0..8).filter(|p| options.wants_partition(*p)).collect();
        assert_eq!(wanted, vec![0, 1, 5]);
    }

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        assert_eq!(
            "2024-01-01T00:00:01Z".parse::<TimeBound>(),
            Ok(TimeBound::At(1_704_067_201_000))
        );
        let ago = "2h".parse::<TimeBound>().expect("a duration");
        assert_eq!(ago, TimeBound::Ago(Duration::from_secs(7200)));
        assert_eq!(ago.resolve(10_000_000), 10_000_000 - 7_200_000);
        let err = "yesterday".parse::<TimeBound>().unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn from_must_come_before_to() {
        let limits = Limits {
            from: Some(TimeBound::At(20)),
            to: Some(TimeBound::At(10)),
            ..Limits::default()
        };
        let err = VerifyOptions::from_cli(None, vec![], limits).unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadArguments("--from must be earlier than --to".into())
        );
    }

    fn comparison(missing: u64, duplicated: u64, extra: u64) -> Comparison {
        Comparison {
            source_records: 10,
            destination_records: 10 - missing + duplicated + extra,
            matched: 10 - missing,
            missing,
            duplicated,
            extra,
            first_missing: (missing > 0).then_some(7),
            first_duplicated: (duplicated > 0).then_some(3),
            first_extra: (extra > 0).then_some(4),
            ..Comparison::default()
        }
    }

    #[test]
    fn results_say_what_differs_and_where() {
        assert_eq!(result_text(&comparison(0, 0, 0)), "in sync");
        assert_eq!(
            result_text(&comparison(2, 0, 0)),
            "missing 2 (first at source offset 7)"
        );
        assert_eq!(
            result_text(&comparison(0, 3, 1)),
            "extra or duplicated 4 (3 duplicated, first at destination offset 3; \
             1 not from the source, first at destination offset 4)"
        );
    }

    #[test]
    fn the_report_has_a_table_per_topic_and_a_verdict() {
        let part = |p, c| PartitionReport {
            partition: p,
            source: Some(OffsetRange { start: 0, end: 10 }),
            destination: Some(OffsetRange { start: 0, end: 10 }),
            comparison: c,
        };
        let report = VerifyReport {
            topics: vec![
                TopicReport {
                    flow: "f".into(),
                    source_topic: "orders".into(),
                    destination_topic: "east.orders".into(),
                    problems: vec![],
                    partitions: vec![part(0, comparison(0, 0, 0)), part(1, comparison(0, 0, 0))],
                },
                TopicReport {
                    flow: "f".into(),
                    source_topic: "payments".into(),
                    destination_topic: "east.payments".into(),
                    problems: vec![],
                    partitions: vec![part(0, comparison(0, 0, 0)), part(1, comparison(2, 0, 0))],
                },
            ],
        };
        assert!(!report.in_sync());
        let text = report.render();
        assert!(
            text.contains("orders -> east.orders: in sync (2 partitions, 20 records)"),
            "{text}"
        );
        assert!(
            text.contains("payments -> east.payments: NOT IN SYNC (1 of 2 partitions)"),
            "{text}"
        );
        assert!(
            text.contains("  partition  source records  destination records  result\n"),
            "{text}"
        );
        assert!(
            text.contains("          1              10                    8  missing 2"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "2 topics, 4 partitions compared: NOT IN SYNC: 1 topic and 1 partition differ \
                 (missing 2, extra or duplicated 0)\n"
            ),
            "{text}"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
