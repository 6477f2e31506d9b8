//! `strait check`: connects to every cluster of every flow and prints what
//! would be replicated and where, without copying anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use strait_actors::discovery::TopicReader;
use strait_actors::FlowSpec;

use crate::config::Settings;

/// What `check` found: the report to print, and whether all is well.
pub struct CheckReport {
    /// Human-readable, one block per flow.
    pub text: String,
    /// False when a cluster is unreachable or a topic cannot be replicated.
    pub ok: bool,
}

/// Checks every flow. Needs no actix System: it only reads metadata.
pub fn check(settings: &Settings) -> anyhow::Result<CheckReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut text = String::new();
    let mut ok = true;
    for flow in &settings.flows {
        ok &= runtime.block_on(check_flow(flow, &mut text));
    }
    Ok(CheckReport { text, ok })
}

async fn check_flow(flow: &FlowSpec, out: &mut String) -> bool {
    let _ = writeln!(
        out,
        "flow `{}`: {} ({}) -> {} ({})",
        flow.name,
        flow.source.alias,
        flow.source.bootstrap_servers(),
        flow.destination.alias,
        flow.destination.bootstrap_servers()
    );
    let source_topics = match TopicReader::new(&flow.source) {
        Ok(reader) => reader.selected_topics(&flow.topics).await,
        Err(e) => Err(e),
    };
    let source_topics = match source_topics {
        Ok(topics) => topics,
        Err(error) => {
            let _ = writeln!(
                out,
                "  FAIL source cluster `{}`: {error}",
                flow.source.alias
            );
            return false;
        }
    };
    let destination_partitions: Result<BTreeMap<String, i32>, _> =
        match TopicReader::new(&flow.destination) {
            Ok(reader) => reader.metadata().await.map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect()
            }),
            Err(e) => Err(e),
        };
    let destination_partitions = match destination_partitions {
        Ok(d) => d,
        Err(error) => {
            let _ = writeln!(
                out,
                "  FAIL destination cluster `{}`: {error}",
                flow.destination.alias
            );
            return false;
        }
    };
    if source_topics.is_empty() {
        let _ = writeln!(
            out,
            "  no source topic matches {:?} (excluding {:?}); Strait will pick them up when they appear",
            flow.topics.include_patterns(),
            flow.topics.exclude_patterns()
        );
    }
    let mut ok = true;
    for (topic, info) in &source_topics {
        let destination = flow.destination_topic(topic);
        let what = match destination_partitions.get(&destination) {
            Some(&n) if n == info.partitions => "exists".to_string(),
            Some(&n) if n < info.partitions => {
                format!(
                    "exists with {n} partitions; will be grown to {}",
                    info.partitions
                )
            }
            Some(&n) => format!("exists with {n} partitions (more than the source)"),
            None if flow.topic_auto_create => "will be created".to_string(),
            None => {
                ok = false;
                "MISSING, and topic_auto_create is false".to_string()
            }
        };
        let _ = writeln!(
            out,
            "  {topic} [{} partitions] -> {destination}: {what}",
            info.partitions
        );
    }
    let _ = writeln!(
        out,
        "  {} topic(s), {} partition(s)",
        source_topics.len(),
        source_topics.values().map(|t| t.partitions).sum::<i32>()
    );
    ok
}
