//! From the file's shape to [`Settings`]: every value checked, defaults that
//! depend on other keys filled in, secrets read, and the checks that span
//! several keys or flows. Each problem is one [`ConfigError`] naming the key,
//! the value and what is allowed; the first one found is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use strait_actors::spec::is_internal_topic;
use strait_actors::{
    ClusterSpec, Delivery, Faults, FlowSpec, OnError, RenameFormat, SpecError, StartFrom,
    TopicSelector, Tuning,
};

use super::cluster::{property_key, ClusterConfig};
use super::error::ConfigError;
use super::file::{ConfigFile, HttpConfig, LogConfig};
use super::flow::{DeliveryConfig, FlowConfig, OnErrorConfig, StartFromConfig};
use super::load::one_line;
use super::settings::{HttpSettings, LogSettings, MetricsSettings, Settings};

/// Kafka's limit on a topic name's length.
const MAX_TOPIC_NAME_LEN: usize = 249;

/// A topic name any catch-all pattern selects, to find two flows that would
/// both copy every topic to the same names on one destination.
const PROBE_TOPIC: &str = "any-topic";

/// librdkafka properties Strait sets itself, with where to set them instead.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "set it with the cluster's bootstrap_servers key",
    ),
    (
        "group.id",
        "Strait sets it per flow; set the flow's group_id instead",
    ),
    (
        "transactional.id",
        "Strait sets it per flow for delivery = \"exactly_once\"",
    ),
];

/// Validates the whole file and resolves it into [`Settings`].
pub(crate) fn settings(file: ConfigFile) -> Result<Settings, ConfigError> {
    let http = http(&file.http)?;
    let log = log(&file.log)?;
    positive("shutdown_timeout", file.shutdown_timeout)?;

    let mut clusters = BTreeMap::new();
    let mut secret_properties = BTreeMap::new();
    for (alias, cluster) in &file.clusters {
        let (spec, secrets) = cluster_spec(alias, cluster)?;
        clusters.insert(alias.clone(), spec);
        if !secrets.is_empty() {
            secret_properties.insert(alias.clone(), secrets);
        }
    }

    if file.flows.is_empty() {
        return Err(ConfigError::invalid(
            "flows",
            "no flow is defined; add a [[flows]] table with source, destination and topics",
        ));
    }
    let mut flows = Vec::with_capacity(file.flows.len());
    for (i, flow) in file.flows.iter().enumerate() {
        flows.push(flow_spec(i, flow, &clusters, file.shutdown_timeout)?);
    }
    across_flows(&file.flows, &flows)?;

    Ok(Settings {
        flows,
        http,
        log,
        metrics: MetricsSettings {
            partition_labels: file.metrics.partition_labels,
        },
        shutdown_timeout: file.shutdown_timeout,
        clusters,
        secret_properties,
    })
}

fn http(http: &HttpConfig) -> Result<HttpSettings, ConfigError> {
    let listen: SocketAddr = http.listen.trim().parse().map_err(|_| {
        ConfigError::invalid(
            "http.listen",
            format!(
                "{:?} is not an address to listen on; expected IP:PORT, such as \
                 \"127.0.0.1:9464\", \"0.0.0.0:9464\" or \"[::]:9464\" (no host names)",
                http.listen
            ),
        )
    })?;
    Ok(HttpSettings { listen })
}

fn log(log: &LogConfig) -> Result<LogSettings, ConfigError> {
    let bad = |why: String| {
        ConfigError::invalid(
            "log.level",
            format!(
                "{:?} {why}; allowed: trace, debug, info, warn, error, off, or directives \
                 such as \"info,strait=debug\"",
                log.level
            ),
        )
    };
    let level = log.level.trim();
    if level.is_empty() {
        return Err(bad("is empty".to_string()));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let is_level = matches!(
            directive.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        );
        // A bare word that is not a level would silently enable every level
        // for a target of that name: refuse it rather than guess.
        if !is_level && !directive.contains('=') && !directive.contains('[') {
            return Err(bad(format!(
                "has `{directive}`, which is neither a level nor a target=level directive"
            )));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level).map_err(|e| bad(format!("is invalid: {e}")))?;
    Ok(LogSettings {
        level: level.to_string(),
        format: log.format,
    })
}

/// Longest `transaction_interval`: well inside the 60 s transaction timeout.
const MAX_TRANSACTION_INTERVAL: Duration = Duration::from_secs(30);

/// Most `transaction_lanes`: each is a producer with its own threads, and
/// the flow's instances are at most this many.
const MAX_TRANSACTION_LANES: u32 = 256;

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(
            key,
            "\"0s\" is not allowed; must be longer than zero, such as \"500ms\" or \"30s\"",
        ));
    }
    Ok(())
}

/// `transaction_streaming_interval` shortens what `transaction_interval`
/// allows, for the transactions of a producer per partition only.
fn streaming_interval(flow: &FlowConfig, value: Duration, key: &str) -> Result<(), ConfigError> {
    let shown = humantime::format_duration(value);
    positive(key, value)?;
    if value > flow.transaction_interval {
        return Err(ConfigError::invalid(
            key,
            format!(
                "\"{shown}\" is longer than transaction_interval (\"{}\"); must be at most as long",
                humantime::format_duration(flow.transaction_interval)
            ),
        ));
    }
    if flow.delivery != DeliveryConfig::ExactlyOnce {
        return Err(ConfigError::invalid(
            key,
            format!("\"{shown}\" is set on a flow without transactions; it applies to delivery = \"exactly_once\" only"),
        ));
    }
    if flow.transaction_lanes > 0 {
        return Err(ConfigError::invalid(
            key,
            format!(
                "\"{shown}\" is set with transaction_lanes = {}; a lane commits as soon as its partitions are caught up, so it applies to transaction_lanes = 0 only",
                flow.transaction_lanes
            ),
        ));
    }
    Ok(())
}

fn at_least_one(key: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(
            key,
            "0 is not allowed; must be at least 1",
        ));
    }
    Ok(())
}

/// Letters, digits, `.`, `_` and `-`: what may appear in a Kafka topic name.
fn is_topic_name_chars(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Why `name` cannot be a Kafka topic, if it cannot.
fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".to_string())
    } else if name == "." || name == ".." {
        Some("is not allowed as a topic name".to_string())
    } else if name.len() > MAX_TOPIC_NAME_LEN {
        Some(format!(
            "is longer than Kafka's {MAX_TOPIC_NAME_LEN} characters"
        ))
    } else if !is_topic_name_chars(name) {
        Some(
            "has characters a topic name cannot have (allowed: letters, digits, '.', '_', '-')"
                .to_string(),
        )
    } else {
        None
    }
}

/// Comma-separated `host:port` entries, trimmed, joined without spaces.
fn bootstrap_servers(alias: &str, raw: &str) -> Result<String, ConfigError> {
    let key = format!("clusters.{alias}.bootstrap_servers");
    let bad = |why: &str| {
        ConfigError::invalid(
            key.clone(),
            format!("{raw:?} {why}; expected \"host:port\" entries separated by commas, such as \"10.0.0.1:9092,10.0.0.2:9092\""),
        )
    };
    if raw.trim().is_empty() {
        return Err(bad("is empty"));
    }
    let mut entries = Vec::new();
    for entry in raw.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(bad("has an empty entry"));
        }
        if entry.contains(char::is_whitespace) {
            return Err(bad("has an entry with a space in it"));
        }
        if let Some((_, port)) = entry.rsplit_once(':') {
            if !port.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
                && !port.parse::<u16>().is_ok_and(|p| p > 0)
            {
                return Err(bad(&format!("has port {port}, which is not 1 to 65535")));
            }
        }
        entries.push(entry);
    }
    Ok(entries.join(","))
}

/// The same cluster whatever its alias: its bootstrap entries, sorted, lowercased.
fn cluster_identity(spec: &ClusterSpec) -> BTreeSet<String> {
    spec.bootstrap_servers()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn same_cluster(a: &ClusterSpec, b: &ClusterSpec) -> bool {
    a.alias == b.alias || cluster_identity(a) == cluster_identity(b)
}

/// A cluster's spec, and the properties that came from `{ env }` / `{ file }`.
fn cluster_spec(
    alias: &str,
    cluster: &ClusterConfig,
) -> Result<(ClusterSpec, BTreeSet<String>), ConfigError> {
    if !is_topic_name_chars(alias) {
        return Err(ConfigError::invalid(
            format!("clusters.{alias:?}"),
            format!(
                "{alias:?} is not allowed as a cluster name; use letters, digits, '.', '_' and \
                 '-' (the name becomes ${{source}} in topic names)"
            ),
        ));
    }
    let bootstrap = bootstrap_servers(alias, &cluster.bootstrap_servers)?;
    let mut properties = BTreeMap::new();
    let mut secrets = BTreeSet::new();
    for (name, value) in &cluster.kafka {
        let key = property_key(alias, name);
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                key,
                "is not a librdkafka property name (names look like \"security.protocol\")",
            ));
        }
        if let Some((_, instead)) = MANAGED_PROPERTIES.iter().find(|(p, _)| p == name) {
            return Err(ConfigError::invalid(
                key,
                format!("may not be set in the kafka table: {instead}"),
            ));
        }
        properties.insert(name.clone(), value.resolve(&key)?);
        if value.is_secret_ref() {
            secrets.insert(name.clone());
        }
    }
    properties.insert("bootstrap.servers".to_string(), bootstrap);
    Ok((
        ClusterSpec {
            alias: alias.to_string(),
            properties,
        },
        secrets,
    ))
}

/// An exactly-once flow's transactions must commit well inside the
/// destination's `transaction.timeout.ms`, when its `kafka` table sets one:
/// past it, the coordinator aborts them (and Strait takes that for a stall
/// and copies again, for ever).
fn coordinator_timeout(
    destination: &ClusterSpec,
    interval_key: &str,
    interval: Duration,
) -> Result<(), ConfigError> {
    let Some(raw) = destination.properties.get("transaction.timeout.ms") else {
        return Ok(());
    };
    let key = property_key(&destination.alias, "transaction.timeout.ms");
    let least = (interval * 2).max(Duration::from_secs(1));
    match raw.trim().parse::<u64>().map(Duration::from_millis) {
        Ok(timeout) if timeout >= least => Ok(()),
        Ok(_) => Err(ConfigError::invalid(
            key,
            format!(
                "\"{raw}\" is too short for {interval_key} = \"{}\" in an exactly-once flow; \
                 must be at least {} ms (twice the interval, and at least 1000), or removed for \
                 Strait's {}",
                humantime::format_duration(interval),
                least.as_millis(),
                strait_actors::transactional::DEFAULT_COORDINATOR_TIMEOUT.as_millis()
            ),
        )),
        Err(_) => Err(ConfigError::invalid(
            key,
            format!("\"{raw}\" is not a number of milliseconds, such as \"60000\""),
        )),
    }
}

/// The cluster a flow names, or an error listing the defined ones.
fn cluster<'a>(
    key: String,
    alias: &str,
    clusters: &'a BTreeMap<String, ClusterSpec>,
) -> Result<&'a ClusterSpec, ConfigError> {
    clusters.get(alias).ok_or_else(|| {
        let defined = if clusters.is_empty() {
            "none; define one with a [clusters.NAME] table".to_string()
        } else {
            clusters.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        ConfigError::invalid(
            key,
            format!("unknown cluster {alias:?}; defined clusters: {defined}"),
        )
    })
}

/// The flow's name: given, or `<source>-to-<destination>`.
fn flow_name(flow: &FlowConfig) -> String {
    flow.name
        .clone()
        .unwrap_or_else(|| format!("{}-to-{}", flow.source, flow.destination))
}

fn flow_spec(
    i: usize,
    flow: &FlowConfig,
    clusters: &BTreeMap<String, ClusterSpec>,
    shutdown_timeout: Duration,
) -> Result<FlowSpec, ConfigError> {
    let k = |field: &str| format!("flows[{i}].{field}");

    let source = cluster(k("source"), &flow.source, clusters)?;
    let destination = cluster(k("destination"), &flow.destination, clusters)?;

    let name = flow_name(flow);
    if !is_topic_name_chars(&name) {
        return Err(ConfigError::invalid(
            k("name"),
            format!(
                "{name:?} is not allowed as a flow name; use letters, digits, '.', '_' and '-' \
                 (it appears in metrics, logs and the default group id)"
            ),
        ));
    }

    if flow.topics.is_empty() {
        return Err(ConfigError::invalid(
            k("topics"),
            "is empty; list at least one regex, such as [\"orders\", \"payments\\\\..*\"]",
        ));
    }
    for (field, patterns) in [
        ("topics", &flow.topics),
        ("topics_exclude", &flow.topics_exclude),
    ] {
        if patterns.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::invalid(
                k(field),
                "has an empty pattern, which matches no topic",
            ));
        }
    }
    for p in &flow.topics {
        if is_topic_name_chars(p) && is_internal_topic(p) {
            return Err(ConfigError::invalid(
                k("topics"),
                format!(
                    "{p:?} is never replicated: topics starting with \"__\" are Kafka's own, \
                     those starting with \"strait.\" are Strait's"
                ),
            ));
        }
    }
    let topics = TopicSelector::new(&flow.topics, &flow.topics_exclude, &k("topics"))
        .map_err(one_line_spec)?;
    let rename = RenameFormat::parse(&flow.topic_rename_format, &k("topic_rename_format"))?;

    let group_id = flow
        .group_id
        .clone()
        .unwrap_or_else(|| format!("strait.{name}"));
    if group_id.trim().is_empty() {
        return Err(ConfigError::invalid(
            k("group_id"),
            "is empty; remove it for the default \"strait.<flow name>\"",
        ));
    }

    for (field, value) in [
        ("topic_refresh_interval", flow.topic_refresh_interval),
        ("commit_interval", flow.commit_interval),
        ("restart_backoff_initial", flow.restart_backoff_initial),
        ("restart_backoff_max", flow.restart_backoff_max),
        ("transaction_interval", flow.transaction_interval),
    ] {
        positive(&k(field), value)?;
    }
    // The destination aborts a transaction open longer than its
    // `transaction.timeout.ms` (Strait sets 60 s); a transaction stays open
    // for up to this interval, then commits.
    if flow.transaction_interval > MAX_TRANSACTION_INTERVAL {
        return Err(ConfigError::invalid(
            k("transaction_interval"),
            format!(
                "\"{}\" is too long; must be at most \"{}\" (the destination aborts transactions open longer than 60s)",
                humantime::format_duration(flow.transaction_interval),
                humantime::format_duration(MAX_TRANSACTION_INTERVAL)
            ),
        ));
    }
    if flow.delivery == DeliveryConfig::ExactlyOnce {
        coordinator_timeout(
            destination,
            &k("transaction_interval"),
            flow.transaction_interval,
        )?;
    }
    if flow.transaction_lanes > MAX_TRANSACTION_LANES {
        return Err(ConfigError::invalid(
            k("transaction_lanes"),
            format!(
                "{} is too many; must be from 0 (a transactional producer per partition) to {MAX_TRANSACTION_LANES}",
                flow.transaction_lanes
            ),
        ));
    }
    if let Some(streaming) = flow.transaction_streaming_interval {
        streaming_interval(flow, streaming, &k("transaction_streaming_interval"))?;
    }
    if flow.restart_backoff_max < flow.restart_backoff_initial {
        return Err(ConfigError::invalid(
            k("restart_backoff_max"),
            format!(
                "\"{}\" is shorter than restart_backoff_initial (\"{}\"); must be at least as long",
                humantime::format_duration(flow.restart_backoff_max),
                humantime::format_duration(flow.restart_backoff_initial)
            ),
        ));
    }
    for (field, value) in [
        ("batch_max_records", flow.batch_max_records),
        ("batch_max_bytes", flow.batch_max_bytes),
        ("mailbox_capacity", flow.mailbox_capacity),
        ("transaction_max_records", flow.transaction_max_records),
    ] {
        at_least_one(&k(field), value)?;
    }

    let replication_factor = match flow.replication_factor {
        None => None,
        Some(rf) => Some(
            i32::try_from(rf)
                .ok()
                .filter(|rf| (1..=i32::from(i16::MAX)).contains(rf))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        k("replication_factor"),
                        format!(
                            "{rf} is not allowed; must be from 1 to {} (remove it to keep each \
                             source topic's)",
                            i16::MAX
                        ),
                    )
                })?,
        ),
    };

    if flow
        .topic_config_exclude
        .iter()
        .any(|c| c.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            k("topic_config_exclude"),
            "has an empty name; list topic config names such as \"min.insync.replicas\"",
        ));
    }
    if let Some(name) = flow
        .topic_config_overrides
        .keys()
        .find(|n| n.trim().is_empty() || n.contains(char::is_whitespace))
    {
        return Err(ConfigError::invalid(
            k("topic_config_overrides"),
            format!("{name:?} is not a topic config name (names look like \"retention.ms\")"),
        ));
    }

    let on_error = match (flow.on_error, &flow.dead_letter_topic) {
        (OnErrorConfig::DeadLetter, None) => {
            return Err(ConfigError::invalid(
                k("dead_letter_topic"),
                "is missing; on_error = \"dead_letter\" needs the topic to write refused \
                 records to, such as \"strait.dead-letter\"",
            ))
        }
        (OnErrorConfig::DeadLetter, Some(topic)) => {
            if let Some(why) = topic_name_problem(topic) {
                return Err(ConfigError::invalid(
                    k("dead_letter_topic"),
                    format!("{topic:?} {why}"),
                ));
            }
            if topic.starts_with("__") {
                return Err(ConfigError::invalid(
                    k("dead_letter_topic"),
                    format!("{topic:?} starts with \"__\", which is Kafka's own"),
                ));
            }
            OnError::DeadLetter(topic.clone())
        }
        (other, Some(topic)) => {
            return Err(ConfigError::invalid(
                k("dead_letter_topic"),
                format!(
                    "{topic:?} is set, but on_error is {:?}; set on_error = \"dead_letter\" or \
                     remove dead_letter_topic",
                    other.as_str()
                ),
            ))
        }
        (OnErrorConfig::Fail, None) => OnError::Fail,
        (OnErrorConfig::Skip, None) => OnError::Skip,
    };

    let spec = FlowSpec {
        name,
        source: source.clone(),
        destination: destination.clone(),
        topics,
        rename,
        group_id,
        delivery: match flow.delivery {
            DeliveryConfig::AtLeastOnce => Delivery::AtLeastOnce,
            DeliveryConfig::ExactlyOnce => Delivery::ExactlyOnce,
        },
        start_from: match flow.start_from {
            StartFromConfig::Earliest => StartFrom::Earliest,
            StartFromConfig::Latest => StartFrom::Latest,
            StartFromConfig::Timestamp(ms) => StartFrom::Timestamp(ms),
        },
        topic_refresh_interval: flow.topic_refresh_interval,
        topic_auto_create: flow.topic_auto_create,
        topic_config_sync: flow.topic_config_sync,
        replication_factor,
        topic_config_exclude: flow.topic_config_exclude.clone(),
        topic_config_overrides: flow.topic_config_overrides.clone(),
        on_error,
        tuning: Tuning {
            batch_max_records: flow.batch_max_records,
            batch_max_bytes: flow.batch_max_bytes,
            mailbox_capacity: flow.mailbox_capacity,
            commit_interval: flow.commit_interval,
            shutdown_timeout,
            restart_backoff_initial: flow.restart_backoff_initial,
            restart_backoff_max: flow.restart_backoff_max,
            max_consecutive_failures: flow.max_consecutive_failures,
            transaction_max_records: flow.transaction_max_records,
            transaction_interval: flow.transaction_interval,
            transaction_streaming_interval: flow.transaction_streaming_interval,
            transaction_lanes: flow.transaction_lanes,
        },
        faults: Faults::default(),
    };
    onto_itself(i, flow, &spec)?;
    Ok(spec)
}

/// A regex error's reason spans lines (the pattern, a caret, the error):
/// keep the error itself, so that the message is one line.
fn one_line_spec(error: SpecError) -> SpecError {
    match error {
        SpecError::BadRegex {
            key,
            pattern,
            reason,
        } => {
            let reason = reason
                .lines()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .map(str::to_string)
                .unwrap_or_else(|| one_line(&reason));
            SpecError::BadRegex {
                key,
                pattern,
                reason,
            }
        }
        other => other,
    }
}

/// Literal patterns (topic names as written) of a flow: the names it surely selects.
fn literals(flow: &FlowConfig) -> impl Iterator<Item = &str> {
    flow.topics
        .iter()
        .map(String::as_str)
        .filter(|p| is_topic_name_chars(p))
}

/// The source topic a flow would copy to `destination_topic`, if its rename
/// format can be undone (it holds `${topic}` once).
fn unrename(spec: &FlowSpec, destination_topic: &str) -> Option<String> {
    const MARK: &str = "\u{0}";
    let template = spec.destination_topic(MARK);
    let (prefix, suffix) = template.split_once(MARK)?;
    if suffix.contains(MARK) {
        return None;
    }
    let topic = destination_topic
        .strip_prefix(prefix)?
        .strip_suffix(suffix)?;
    (!topic.is_empty()).then(|| topic.to_string())
}

/// A flow that writes to its own source cluster must not read what it writes.
fn onto_itself(i: usize, flow: &FlowConfig, spec: &FlowSpec) -> Result<(), ConfigError> {
    if !same_cluster(&spec.source, &spec.destination) {
        return Ok(());
    }
    let same = if spec.source.alias == spec.destination.alias {
        format!("{:?} is also the source", spec.destination.alias)
    } else {
        format!(
            "{:?} has the same bootstrap_servers as the source {:?}",
            spec.destination.alias, spec.source.alias
        )
    };
    if spec.rename.is_identity() {
        return Err(ConfigError::invalid(
            format!("flows[{i}].destination"),
            format!(
                "{same} and topic_rename_format is \"${{topic}}\": every topic would be copied \
                 onto itself; choose another destination or set topic_rename_format, such as \
                 \"${{source}}.${{topic}}\""
            ),
        ));
    }
    for topic in literals(flow).chain([PROBE_TOPIC]) {
        if !spec.topics.matches(topic) {
            continue;
        }
        let copy = spec.destination_topic(topic);
        if spec.topics.matches(&copy) {
            let template = spec.destination_topic("\u{0}");
            let exclude = template
                .split('\u{0}')
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join(".*");
            return Err(ConfigError::invalid(
                format!("flows[{i}].topics_exclude"),
                format!(
                    "{same}, and the flow would copy topic {topic:?} to {copy:?}, which it \
                     selects too: copies would be copied again without end; exclude them, \
                     such as topics_exclude = [{exclude:?}]"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that concern two flows: names, groups, destination topics.
fn across_flows(configs: &[FlowConfig], specs: &[FlowSpec]) -> Result<(), ConfigError> {
    for (j, b) in specs.iter().enumerate() {
        for (i, a) in specs.iter().enumerate().take(j) {
            if a.name == b.name {
                let how = if configs[j].name.is_none() {
                    " (the default name, from source and destination; set name to tell them apart)"
                } else {
                    ""
                };
                return Err(ConfigError::invalid(
                    format!("flows[{j}].name"),
                    format!(
                        "{:?} is already the name of flows[{i}]; flow names must be unique{how}",
                        b.name
                    ),
                ));
            }
            if a.group_id == b.group_id && same_cluster(&a.source, &b.source) {
                return Err(ConfigError::invalid(
                    format!("flows[{j}].group_id"),
                    format!(
                        "{:?} is already the group of flows[{i}] ({:?}) on the same source \
                         cluster {:?}: the two flows would take each other's partitions; give \
                         each flow its own group_id",
                        b.group_id, a.name, b.source.alias
                    ),
                ));
            }
            if same_cluster(&a.destination, &b.destination) {
                if let Some(msg) = shared_destination_topic(&configs[i], a, &configs[j], b)
                    .or_else(|| shared_destination_topic(&configs[j], b, &configs[i], a))
                {
                    return Err(ConfigError::invalid(
                        format!("flows[{j}].topics"),
                        format!("{msg}; flows[{i}] is {:?}", a.name),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A destination topic both flows would write: `a`'s literal topics (or any
/// topic, for catch-all patterns) mapped forward, then back through `b`.
fn shared_destination_topic(
    a_config: &FlowConfig,
    a: &FlowSpec,
    b_config: &FlowConfig,
    b: &FlowSpec,
) -> Option<String> {
    let advice = "two source topics cannot share a destination topic: give the flows different \
                  topic_rename_format values (such as \"${source}.${topic}\") or exclude the \
                  topic from one of them";
    for topic in literals(a_config) {
        if !a.topics.matches(topic) {
            continue;
        }
        let written = a.destination_topic(topic);
        let from_b = unrename(b, &written).into_iter().chain(
            literals(b_config)
                .filter(|t| b.destination_topic(t) == written)
                .map(str::to_string),
        );
        for b_topic in from_b {
            if b.topics.matches(&b_topic) {
                return Some(format!(
                    "topic {b_topic:?} of cluster {:?} and topic {topic:?} of cluster {:?} would \
                     both be copied to topic {written:?} on cluster {:?}; {advice}",
                    b.source.alias, a.source.alias, b.destination.alias
                ));
            }
        }
    }
    if a.topics.matches(PROBE_TOPIC)
        && b.topics.matches(PROBE_TOPIC)
        && a.destination_topic(PROBE_TOPIC) == b.destination_topic(PROBE_TOPIC)
    {
        let what = if same_cluster(&a.source, &b.source) {
            format!("every topic of {:?} would be copied twice", a.source.alias)
        } else {
            format!(
                "a topic present on both {:?} and {:?} would be copied into one",
                a.source.alias, b.source.alias
            )
        };
        return Some(format!(
            "both flows select any topic name and copy it under the same name to cluster {:?}: \
             {what}; {advice}",
            b.destination.alias
        ));
    }
    None
}
