//! Tests of loading and validating whole configs: one test per kind of bad
//! config (each asserting that the message names the key and the value),
//! defaults, secrets, environment overrides, formats and the example files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use strait_actors::{Delivery, OnError, StartFrom, Tuning};

use super::*;

/// Tests that set `STRAIT__*` variables in the process, or call [`load`]
/// (which reads them), take turns.
static PROCESS_ENV: Mutex<()> = Mutex::new(());

fn process_env() -> std::sync::MutexGuard<'static, ()> {
    PROCESS_ENV.lock().unwrap_or_else(|e| e.into_inner())
}

const CLUSTERS: &str = r#"
[clusters.east]
bootstrap_servers = "east-1:9092,east-2:9092"

[clusters.central]
bootstrap_servers = "central:9092"
"#;

/// The two clusters and one `[[flows]]` table with these lines.
fn with_flow(flow: &str) -> String {
    format!("{CLUSTERS}\n[[flows]]\n{flow}\n")
}

const EAST_TO_CENTRAL: &str = r#"
source = "east"
destination = "central"
topics = ["orders"]
"#;

fn toml(text: &str) -> Result<Settings, ConfigError> {
    parse(text, Format::Toml, Vec::new())
}

fn toml_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(text, Format::Toml, env)
}

/// The error message for a config that must be refused.
fn error(text: &str) -> String {
    match toml(text) {
        Ok(s) => panic!("accepted a bad config: {s:?}\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "not one line: {msg}");
            msg
        }
    }
}

fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
}

// ---------------------------------------------------------------- defaults

#[test]
fn defaults_are_applied() {
    let s = toml(&with_flow(EAST_TO_CENTRAL)).expect("valid");
    assert_eq!(s.http.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(s.log.level, "info");
    assert_eq!(s.log.format, LogFormat::Text);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(s.clusters.len(), 2);

    let f = &s.flows[0];
    assert_eq!(f.name, "east-to-central");
    assert_eq!(f.group_id, "strait.east-to-central");
    assert!(f.rename.is_identity());
    assert_eq!(f.delivery, Delivery::AtLeastOnce);
    assert_eq!(f.start_from, StartFrom::Earliest);
    assert_eq!(f.topic_refresh_interval, Duration::from_secs(120));
    assert!(f.topic_auto_create && f.topic_config_sync);
    assert_eq!(f.replication_factor, None);
    assert_eq!(f.topic_config_exclude, DEFAULT_TOPIC_CONFIG_EXCLUDE);
    for must in [
        "leader.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
    ] {
        assert!(f.topic_config_exclude.iter().any(|c| c == must));
    }
    assert!(f.topic_config_overrides.is_empty());
    assert_eq!(f.on_error, OnError::Fail);
    assert!(f.faults.copier_panic_at.is_none());

    let d = Tuning::default();
    let t = &f.tuning;
    assert_eq!(t.batch_max_records, d.batch_max_records);
    assert_eq!(t.batch_max_bytes, d.batch_max_bytes);
    assert_eq!(t.mailbox_capacity, d.mailbox_capacity);
    assert_eq!(t.commit_interval, d.commit_interval);
    assert_eq!(t.shutdown_timeout, d.shutdown_timeout);
    assert_eq!(t.restart_backoff_initial, d.restart_backoff_initial);
    assert_eq!(t.restart_backoff_max, d.restart_backoff_max);
    assert_eq!(t.transaction_streaming_interval, None);

    assert_eq!(f.source.alias, "east");
    assert_eq!(f.source.bootstrap_servers(), "east-1:9092,east-2:9092");
    assert_eq!(f.destination.bootstrap_servers(), "central:9092");
    assert!(f.topics.matches("orders") && !f.topics.matches("orders2"));
}

#[test]
fn every_key_is_read() {
    let text = r#"
shutdown_timeout = "10s"

[clusters.east]
bootstrap_servers = " east-1:9092 , east-2:9092 "
[clusters.east.kafka]
"security.protocol" = "SASL_SSL"
"socket.keepalive.enable" = true
"message.max.bytes" = 2000000
"sasl.mechanism" = "SCRAM-SHA-512"

[clusters.central]
bootstrap_servers = "central:9092"

[[flows]]
name = "e2c"
source = "east"
destination = "central"
topics = ["orders\\..*", "payments"]
topics_exclude = ["orders\\.tmp\\..*"]
topic_rename_format = "${source}.${topic}"
group_id = "my-group"
delivery = "exactly_once"
start_from = "2024-05-01T00:00:00Z"
topic_refresh_interval = "30s"
topic_auto_create = false
topic_config_sync = false
replication_factor = 3
topic_config_exclude = ["min.insync.replicas"]
topic_config_overrides = { "retention.ms" = 86400000, "cleanup.policy" = "delete" }
on_error = "dead_letter"
dead_letter_topic = "strait.dead-letter"
batch_max_records = 500
batch_max_bytes = 65536
mailbox_capacity = 4
commit_interval = "250ms"
restart_backoff_initial = "1s"
restart_backoff_max = "2m"
transaction_streaming_interval = "25ms"

[http]
listen = "0.0.0.0:9000"

[log]
level = "info,strait=debug"
format = "json"
"#;
    let s = toml(text).expect("valid");
    assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(s.http.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(s.log.level, "info,strait=debug");
    assert_eq!(s.log.format, LogFormat::Json);
    let east = &s.clusters["east"];
    assert_eq!(east.bootstrap_servers(), "east-1:9092,east-2:9092");
    assert_eq!(east.properties["security.protocol"], "SASL_SSL");
    assert_eq!(east.properties["socket.keepalive.enable"], "true");
    assert_eq!(east.properties["message.max.bytes"], "2000000");

    let f = &s.flows[0];
    assert_eq!(f.name, "e2c");
    assert_eq!(f.group_id, "my-group");
    assert_eq!(f.destination_topic("orders.eu"), "east.orders.eu");
    assert!(f.topics.matches("orders.eu") && !f.topics.matches("orders.tmp.x"));
    assert_eq!(f.delivery, Delivery::ExactlyOnce);
    assert_eq!(f.start_from, StartFrom::Timestamp(1_714_521_600_000));
    assert_eq!(f.topic_refresh_interval, Duration::from_secs(30));
    assert!(!f.topic_auto_create && !f.topic_config_sync);
    assert_eq!(f.replication_factor, Some(3));
    assert_eq!(f.topic_config_exclude, ["min.insync.replicas"]);
    assert_eq!(f.topic_config_overrides["retention.ms"], "86400000");
    assert_eq!(f.topic_config_overrides["cleanup.policy"], "delete");
    assert_eq!(f.on_error, OnError::DeadLetter("strait.dead-letter".into()));
    assert_eq!(f.tuning.batch_max_records, 500);
    assert_eq!(f.tuning.batch_max_bytes, 65536);
    assert_eq!(f.tuning.mailbox_capacity, 4);
    assert_eq!(f.tuning.commit_interval, Duration::from_millis(250));
    assert_eq!(f.tuning.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(f.tuning.restart_backoff_initial, Duration::from_secs(1));
    assert_eq!(f.tuning.restart_backoff_max, Duration::from_secs(120));
    assert_eq!(
        f.tuning.transaction_streaming_interval,
        Some(Duration::from_millis(25))
    );
}

#[test]
fn toml_datetime_is_a_start_from_timestamp() {
    let s = toml(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nstart_from = 2024-05-01T00:00:00Z"
    )))
    .expect("valid");
    assert_eq!(
        s.flows[0].start_from,
        StartFrom::Timestamp(1_714_521_600_000)
    );
    let s = toml(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nstart_from = \"latest\""
    )))
    .expect("valid");
    assert_eq!(s.flows[0].start_from, StartFrom::Latest);
}

// ------------------------------------------------------------ unknown keys

#[test]
fn unknown_key_at_top_level() {
    let msg = error(&format!(
        "shutdown_timout = \"5s\"\n{}",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert!(msg.starts_with("shutdown_timout: unknown key"), "{msg}");
    assert_mentions(&msg, &["did you mean `shutdown_timeout`"]);
    // TOML's trap: a top-level key written after a [[flows]] table belongs to the flow.
    let msg = error(&format!(
        "{}\nshutdown_timeout = \"5s\"",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(
        &msg,
        &[
            "flows[0].shutdown_timeout: unknown key",
            "is a top-level key",
            "before the first",
        ],
    );
}

#[test]
fn unknown_key_in_a_cluster() {
    let msg = error(&with_flow(EAST_TO_CENTRAL).replace(
        "bootstrap_servers = \"central:9092\"",
        "bootstrap_servers = \"central:9092\"\nbootstrap = \"x\"",
    ));
    assert_mentions(
        &msg,
        &[
            "clusters.central.bootstrap: unknown key",
            "bootstrap_servers, kafka",
        ],
    );
}

#[test]
fn unknown_key_in_a_flow() {
    let msg = error(&with_flow(&format!("{EAST_TO_CENTRAL}\ntopic = \"x\"")));
    assert_mentions(
        &msg,
        &["flows[0].topic: unknown key", "did you mean `topics`"],
    );
}

#[test]
fn unknown_key_in_http_and_log() {
    let msg = error(&format!(
        "{}\n[http]\nlisten_address = \"x\"",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(&msg, &["http.listen_address: unknown key", "listen"]);
    let msg = error(&format!(
        "{}\n[log]\nlevels = \"x\"",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(&msg, &["log.levels: unknown key", "did you mean `level`"]);
}

#[test]
fn wrong_type_names_key() {
    let msg = error(&with_flow(
        &EAST_TO_CENTRAL.replace("[\"orders\"]", "\"orders\""),
    ));
    assert_mentions(&msg, &["flows[0].topics", "expected"]);
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntopic_auto_create = \"maybe\""
    )));
    assert_mentions(&msg, &["flows[0].topic_auto_create", "maybe"]);
}

// ---------------------------------------------------------------- clusters

#[test]
fn missing_bootstrap_servers() {
    let msg = error(&with_flow(EAST_TO_CENTRAL).replace(
        "bootstrap_servers = \"central:9092\"",
        "kafka = { \"client.id\" = \"x\" }",
    ));
    assert_mentions(&msg, &["clusters.central.bootstrap_servers", "missing"]);
}

#[test]
fn empty_bootstrap_servers() {
    let msg = error(&with_flow(EAST_TO_CENTRAL).replace("\"central:9092\"", "\" \""));
    assert_mentions(
        &msg,
        &[
            "clusters.central.bootstrap_servers",
            "is empty",
            "host:port",
        ],
    );
    let msg = error(&with_flow(EAST_TO_CENTRAL).replace("\"central:9092\"", "\"central:99999\""));
    assert_mentions(&msg, &["clusters.central.bootstrap_servers", "99999"]);
}

#[test]
fn bad_cluster_name() {
    let msg =
        error(&with_flow(EAST_TO_CENTRAL).replace("[clusters.central]", "[clusters.\"cen tral\"]"));
    assert_mentions(&msg, &["clusters.\"cen tral\"", "cluster name"]);
}

#[test]
fn kafka_properties_strait_sets_itself_are_refused() {
    for (property, hint) in [
        ("bootstrap.servers", "bootstrap_servers"),
        ("group.id", "group_id"),
    ] {
        let msg = error(&with_flow(EAST_TO_CENTRAL).replace(
            "bootstrap_servers = \"central:9092\"",
            &format!("bootstrap_servers = \"central:9092\"\nkafka = {{ \"{property}\" = \"x\" }}"),
        ));
        assert_mentions(
            &msg,
            &[&format!("clusters.central.kafka.\"{property}\""), hint],
        );
    }
}

#[test]
fn kafka_property_of_a_bad_kind() {
    let msg = error(&with_flow(EAST_TO_CENTRAL).replace(
        "bootstrap_servers = \"central:9092\"",
        "bootstrap_servers = \"central:9092\"\nkafka = { \"sasl.password\" = { vault = \"x\" } }",
    ));
    assert_mentions(
        &msg,
        &["clusters.central.kafka.\"sasl.password\"", "`vault`", "env"],
    );
    let msg = error(&with_flow(EAST_TO_CENTRAL).replace(
        "bootstrap_servers = \"central:9092\"",
        "bootstrap_servers = \"central:9092\"\nkafka = { \"sasl.password\" = [\"hunter2\"] }",
    ));
    assert_mentions(&msg, &["clusters.central.kafka.\"sasl.password\"", "list"]);
    assert!(!msg.contains("hunter2"), "{msg}");
}

// ------------------------------------------------------------------- flows

#[test]
fn no_flows() {
    let msg = error(CLUSTERS);
    assert_mentions(&msg, &["flows:", "no flow"]);
}

#[test]
fn empty_topics() {
    let msg = error(&with_flow(&EAST_TO_CENTRAL.replace("[\"orders\"]", "[]")));
    assert_mentions(&msg, &["flows[0].topics", "is empty"]);
}

#[test]
fn bad_regex() {
    let msg = error(&with_flow(
        &EAST_TO_CENTRAL.replace("[\"orders\"]", "[\"orders(\"]"),
    ));
    assert_mentions(
        &msg,
        &[
            "flows[0].topics",
            "`orders(`",
            "not a valid regex",
            "unclosed group",
        ],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntopics_exclude = [\"[a\"]"
    )));
    assert_mentions(&msg, &["flows[0].topics_exclude", "`[a`"]);
}

#[test]
fn internal_topic_named_literally() {
    let msg = error(&with_flow(
        &EAST_TO_CENTRAL.replace("\"orders\"", "\"__consumer_offsets\""),
    ));
    assert_mentions(
        &msg,
        &["flows[0].topics", "__consumer_offsets", "never replicated"],
    );
}

#[test]
fn rename_format_with_unknown_placeholder() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntopic_rename_format = \"${{cluster}}.${{topic}}\""
    )));
    assert_mentions(
        &msg,
        &[
            "flows[0].topic_rename_format",
            "${cluster}",
            "unknown placeholder",
            "${source}",
        ],
    );
}

#[test]
fn flow_naming_an_unknown_cluster() {
    let msg = error(&with_flow(&EAST_TO_CENTRAL.replace("\"east\"", "\"eats\"")));
    assert_eq!(
        msg,
        "flows[0].source: unknown cluster \"eats\"; defined clusters: central, east"
    );
    let msg = error(&with_flow(
        &EAST_TO_CENTRAL.replace("\"central\"", "\"west\""),
    ));
    assert_mentions(&msg, &["flows[0].destination", "\"west\"", "central, east"]);
}

#[test]
fn bad_flow_name() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nname = \"east to central\""
    )));
    assert_mentions(&msg, &["flows[0].name", "\"east to central\""]);
}

#[test]
fn duplicate_flow_names() {
    let text = format!(
        "{}\n[[flows]]\nsource = \"east\"\ndestination = \"central\"\ntopics = [\"payments\"]\ngroup_id = \"g2\"\n",
        with_flow(EAST_TO_CENTRAL)
    );
    let msg = error(&text);
    assert_mentions(
        &msg,
        &[
            "flows[1].name",
            "\"east-to-central\"",
            "flows[0]",
            "unique",
            "default name",
        ],
    );
}

#[test]
fn duplicate_group_ids_on_one_source() {
    let second = "[[flows]]\nname = \"two\"\nsource = \"east\"\ndestination = \"central\"\n\
                  topics = [\"payments\"]\ngroup_id = \"strait.east-to-central\"\n";
    let msg = error(&format!("{}\n{second}", with_flow(EAST_TO_CENTRAL)));
    assert_mentions(
        &msg,
        &[
            "flows[1].group_id",
            "\"strait.east-to-central\"",
            "flows[0]",
        ],
    );

    // Another alias of the same cluster is the same source.
    let text = format!(
        "{}\n[clusters.east-again]\nbootstrap_servers = \"east-2:9092,EAST-1:9092\"\n{}",
        with_flow(EAST_TO_CENTRAL),
        second.replace("source = \"east\"", "source = \"east-again\"")
    );
    let msg = error(&text);
    assert_mentions(&msg, &["flows[1].group_id"]);

    // One group id on two different source clusters is fine.
    let text = format!(
        "{}\n[clusters.west]\nbootstrap_servers = \"west:9092\"\n{}",
        with_flow(EAST_TO_CENTRAL),
        second
            .replace("source = \"east\"", "source = \"west\"")
            .replace("payments", "refunds")
    );
    toml(&text).expect("same group on other clusters is fine");
}

#[test]
fn topic_copied_onto_itself() {
    let msg = error(&with_flow(
        &EAST_TO_CENTRAL.replace("\"central\"", "\"east\""),
    ));
    assert_mentions(
        &msg,
        &[
            "flows[0].destination",
            "\"east\"",
            "onto itself",
            "topic_rename_format",
        ],
    );

    // Two aliases, one cluster.
    let text =
        with_flow(EAST_TO_CENTRAL).replace("\"central:9092\"", "\"east-2:9092,east-1:9092\"");
    let msg = error(&text);
    assert_mentions(
        &msg,
        &[
            "flows[0].destination",
            "same bootstrap_servers",
            "onto itself",
        ],
    );

    // Renamed copies on the same cluster are fine, unless the flow reads them again.
    let same = EAST_TO_CENTRAL.replace("\"central\"", "\"east\"");
    toml(&with_flow(&format!(
        "{same}\ntopic_rename_format = \"${{topic}}.copy\""
    )))
    .expect("valid");
    let catch_all = same.replace("[\"orders\"]", "[\".*\"]");
    let msg = error(&with_flow(&format!(
        "{catch_all}\ntopic_rename_format = \"${{topic}}.copy\""
    )));
    assert_mentions(&msg, &["flows[0].topics_exclude", ".copy", "without end"]);
    toml(&with_flow(&format!(
        "{catch_all}\ntopic_rename_format = \"${{topic}}.copy\"\ntopics_exclude = [\".*\\\\.copy\"]"
    )))
    .expect("copies excluded");
}

#[test]
fn two_flows_writing_one_destination_topic() {
    let west = "[clusters.west]\nbootstrap_servers = \"west:9092\"\n";
    let west_flow =
        "[[flows]]\nsource = \"west\"\ndestination = \"central\"\ntopics = [\"orders\"]\n";
    let text = format!("{}\n{west}\n{west_flow}", with_flow(EAST_TO_CENTRAL));
    let msg = error(&text);
    assert_mentions(
        &msg,
        &[
            "flows[1].topics",
            "\"orders\"",
            "\"west\"",
            "\"east\"",
            "cluster \"central\"",
            "flows[0]",
        ],
    );

    // A literal topic against a catch-all pattern.
    let msg = error(&text.replace("topics = [\"orders\"]\n\n", "topics = [\".*\"]\n\n"));
    assert_mentions(&msg, &["flows[1].topics", "\"orders\""]);

    // Two catch-alls into one cluster under the same names.
    let msg = error(&text.replace("[\"orders\"]", "[\".*\"]"));
    assert_mentions(&msg, &["flows[1].topics", "any topic"]);

    // Prefixed by source, they are apart.
    let apart = text.replace(
        "topics = [\"orders\"]",
        "topics = [\".*\"]\ntopic_rename_format = \"${source}.${topic}\"",
    );
    toml(&apart).expect("aggregation with ${source} prefixes");
}

#[test]
fn dead_letter_needs_a_topic_and_only_then() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\non_error = \"dead_letter\""
    )));
    assert_mentions(
        &msg,
        &["flows[0].dead_letter_topic", "missing", "dead_letter"],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\non_error = \"skip\"\ndead_letter_topic = \"dlq\""
    )));
    assert_mentions(&msg, &["flows[0].dead_letter_topic", "\"dlq\"", "\"skip\""]);
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\non_error = \"dead_letter\"\ndead_letter_topic = \"dead letters\""
    )));
    assert_mentions(&msg, &["flows[0].dead_letter_topic", "\"dead letters\""]);
}

#[test]
fn bad_choices() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\non_error = \"retry\""
    )));
    assert_mentions(
        &msg,
        &["flows[0].on_error", "\"retry\"", "fail, skip, dead_letter"],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ndelivery = \"exactly-once\""
    )));
    assert_mentions(
        &msg,
        &["flows[0].delivery", "\"exactly-once\"", "exactly_once"],
    );
}

#[test]
fn destination_transaction_timeout_must_outlast_the_transaction_interval() {
    let config = |timeout: &str, delivery: &str| {
        format!(
            "{CLUSTERS}[clusters.central.kafka]\n\"transaction.timeout.ms\" = \"{timeout}\"\n\
             [[flows]]\n{EAST_TO_CENTRAL}\ntransaction_interval = \"5s\"\ndelivery = \"{delivery}\"\n"
        )
    };
    let msg = error(&config("8000", "exactly_once"));
    assert_mentions(
        &msg,
        &[
            "clusters.central.kafka.\"transaction.timeout.ms\"",
            "\"8000\"",
            "flows[0].transaction_interval",
            "at least 10000 ms",
        ],
    );
    let msg = error(&config("a minute", "exactly_once"));
    assert_mentions(
        &msg,
        &[
            "clusters.central.kafka.\"transaction.timeout.ms\"",
            "\"a minute\"",
            "milliseconds",
        ],
    );
    toml(&config("10000", "exactly_once")).expect("twice the interval is enough");
    toml(&config("8000", "at_least_once")).expect("no transactions: any timeout");
}

#[test]
fn transaction_streaming_interval_applies_to_a_producer_per_partition_within_the_interval() {
    let flow = |extra: &str| {
        with_flow(&format!(
            "{EAST_TO_CENTRAL}\ndelivery = \"exactly_once\"\ntransaction_interval = \"100ms\"\n{extra}"
        ))
    };
    let key = "flows[0].transaction_streaming_interval";
    let msg = error(&flow("transaction_streaming_interval = \"0s\""));
    assert_mentions(&msg, &[key, "\"0s\"", "longer than zero"]);
    let msg = error(&flow("transaction_streaming_interval = \"200ms\""));
    assert_mentions(
        &msg,
        &[key, "\"200ms\"", "transaction_interval (\"100ms\")"],
    );
    let msg = error(&flow(
        "transaction_streaming_interval = \"25ms\"\ntransaction_lanes = 4",
    ));
    assert_mentions(&msg, &[key, "\"25ms\"", "transaction_lanes = 0 only"]);
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntransaction_streaming_interval = \"25ms\""
    )));
    assert_mentions(&msg, &[key, "\"25ms\"", "exactly_once"]);
    let s =
        toml(&flow("transaction_streaming_interval = \"100ms\"")).expect("as long as the interval");
    assert_eq!(
        s.flows[0].tuning.transaction_streaming_interval,
        Some(Duration::from_millis(100))
    );
}

#[test]
fn bad_durations() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ncommit_interval = \"0s\""
    )));
    assert_mentions(
        &msg,
        &["flows[0].commit_interval", "\"0s\"", "longer than zero"],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntransaction_interval = \"45s\""
    )));
    assert_mentions(
        &msg,
        &[
            "flows[0].transaction_interval",
            "\"45s\"",
            "at most \"30s\"",
        ],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntransaction_lanes = 1000"
    )));
    assert_mentions(
        &msg,
        &["flows[0].transaction_lanes", "1000", "from 0", "to 256"],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\ntopic_refresh_interval = \"5 parsecs\""
    )));
    assert_mentions(
        &msg,
        &[
            "flows[0].topic_refresh_interval",
            "\"5 parsecs\"",
            "\"30s\"",
        ],
    );
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nrestart_backoff_initial = \"10s\"\nrestart_backoff_max = \"1s\""
    )));
    assert_mentions(
        &msg,
        &[
            "flows[0].restart_backoff_max",
            "\"1s\"",
            "restart_backoff_initial",
        ],
    );
    let msg = error(&format!(
        "shutdown_timeout = \"0ms\"\n{}",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(&msg, &["shutdown_timeout", "longer than zero"]);
    let msg = error(&format!(
        "shutdown_timeout = 30\n{}",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(&msg, &["shutdown_timeout", "\"30\"", "not a duration"]);
}

#[test]
fn bad_sizes() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nbatch_max_records = 0"
    )));
    assert_mentions(&msg, &["flows[0].batch_max_records", "at least 1"]);
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nreplication_factor = 0"
    )));
    assert_mentions(&msg, &["flows[0].replication_factor", "0 is not allowed"]);
}

#[test]
fn bad_start_from() {
    let msg = error(&with_flow(&format!(
        "{EAST_TO_CENTRAL}\nstart_from = \"beginning\""
    )));
    assert_mentions(
        &msg,
        &[
            "flows[0].start_from",
            "\"beginning\"",
            "earliest, latest or an RFC 3339",
        ],
    );
}

#[test]
fn bad_listen_address() {
    let msg = error(&format!(
        "{}\n[http]\nlisten = \"localhost:9464\"",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(&msg, &["http.listen", "\"localhost:9464\"", "IP:PORT"]);
}

#[test]
fn bad_log_level_and_format() {
    for level in ["verbose", "info,strait=loud", ""] {
        let msg = error(&format!(
            "{}\n[log]\nlevel = \"{level}\"",
            with_flow(EAST_TO_CENTRAL)
        ));
        assert_mentions(
            &msg,
            &["log.level", &format!("{level:?}"), "trace, debug, info"],
        );
    }
    let s = toml(&format!(
        "{}\n[log]\nlevel = \"warn,strait=debug,rdkafka=error\"",
        with_flow(EAST_TO_CENTRAL)
    ))
    .expect("directives are fine");
    assert_eq!(s.log.level, "warn,strait=debug,rdkafka=error");
    let msg = error(&format!(
        "{}\n[log]\nformat = \"xml\"",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(&msg, &["log.format", "\"xml\"", "text, json"]);
}

// ----------------------------------------------------------------- secrets

fn secure_config(password: &str) -> String {
    with_flow(EAST_TO_CENTRAL).replace(
        "bootstrap_servers = \"central:9092\"",
        &format!(
            "bootstrap_servers = \"central:9092\"\n\
             [clusters.central.kafka]\n\
             \"security.protocol\" = \"SASL_SSL\"\n\
             \"sasl.username\" = \"strait\"\n\
             \"sasl.password\" = {password}\n"
        ),
    )
}

#[test]
fn secret_from_env_is_read_and_never_shown() {
    std::env::set_var("STRAIT_TEST_SECRET_FROM_ENV", "correct-horse-battery");
    let s = toml(&secure_config("{ env = \"STRAIT_TEST_SECRET_FROM_ENV\" }")).expect("valid");
    let central = &s.clusters["central"];
    assert_eq!(central.properties["sasl.password"], "correct-horse-battery");
    assert_eq!(
        s.flows[0].destination.properties["sasl.password"],
        "correct-horse-battery"
    );
    assert!(s.is_secret("central", "sasl.password"));
    let printable = s.printable_properties(central);
    assert_eq!(printable["sasl.password"], REDACTED);
    assert_eq!(printable["security.protocol"], "SASL_SSL");
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("correct-horse-battery"), "{dbg}");
}

#[test]
fn secret_from_file_is_read_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("password");
    std::fs::write(&path, "tr0ub4dor\n").expect("write");
    // A property with an ordinary name is secret when read from a file.
    let text = secure_config(&format!("{{ file = {:?} }}", path.display().to_string())).replace(
        "\"sasl.username\" = \"strait\"",
        &format!(
            "\"client.id\" = {{ file = {:?} }}",
            path.display().to_string()
        ),
    );
    let s = toml(&text).expect("valid");
    let central = &s.clusters["central"];
    assert_eq!(central.properties["sasl.password"], "tr0ub4dor");
    assert!(s.is_secret("central", "client.id"));
    assert_eq!(s.printable_properties(central)["client.id"], REDACTED);
    assert!(!format!("{s:?}").contains("tr0ub4dor"));
}

#[test]
fn missing_secret_names_key_and_variable() {
    let msg = error(&secure_config("{ env = \"STRAIT_TEST_SECRET_NEVER_SET\" }"));
    assert_mentions(
        &msg,
        &[
            "clusters.central.kafka.\"sasl.password\"",
            "STRAIT_TEST_SECRET_NEVER_SET",
            "not set",
        ],
    );
    let msg = error(&secure_config(
        "{ file = \"/nonexistent/strait/password\" }",
    ));
    assert_mentions(
        &msg,
        &[
            "clusters.central.kafka.\"sasl.password\"",
            "/nonexistent/strait/password",
        ],
    );
}

#[test]
fn secrets_stay_out_of_error_messages() {
    // An error elsewhere in a config with a resolved secret.
    std::env::set_var("STRAIT_TEST_SECRET_IN_ERROR", "s3cr3t-value");
    let text = secure_config("{ env = \"STRAIT_TEST_SECRET_IN_ERROR\" }")
        .replace("topics = [\"orders\"]", "topics = []");
    assert!(!error(&text).contains("s3cr3t-value"));
    // An inline password, with a type error in the kafka table.
    let msg = error(
        &secure_config("\"inline-pw\"")
            .replace("\"sasl.username\" = \"strait\"", "\"sasl.username\" = []"),
    );
    assert!(!msg.contains("inline-pw"), "{msg}");
    // An inline password overridden from the environment, with an error after it.
    let msg = toml_env(
        &secure_config("\"inline-pw\"").replace("topics = [\"orders\"]", "topics = []"),
        &[("STRAIT__CLUSTERS__CENTRAL__KAFKA__SASL_PASSWORD", "env-pw")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        !msg.contains("inline-pw") && !msg.contains("env-pw"),
        "{msg}"
    );
    // A variable that puts a value where the kafka table should be.
    let msg = toml_env(
        &with_flow(EAST_TO_CENTRAL),
        &[("STRAIT__CLUSTERS__EAST__KAFKA", "misplaced-pw")],
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&msg, &["clusters.east.kafka", "expected a table"]);
    assert!(!msg.contains("misplaced-pw"), "{msg}");
}

// ----------------------------------------------------- environment overrides

#[test]
fn env_overrides_keys_of_the_file() {
    let s = toml_env(
        &secure_config("\"from-file\""),
        &[
            ("STRAIT__HTTP__LISTEN", "0.0.0.0:9999"),
            ("STRAIT__LOG__FORMAT", "json"),
            ("STRAIT__SHUTDOWN_TIMEOUT", "5s"),
            ("STRAIT__CLUSTERS__EAST__BOOTSTRAP_SERVERS", "east-9:9092"),
            (
                "STRAIT__CLUSTERS__CENTRAL__KAFKA__SASL__PASSWORD",
                "from-env",
            ),
            ("STRAIT__CLUSTERS__CENTRAL__KAFKA__SECURITY_PROTOCOL", "SSL"),
            ("STRAIT__FLOWS__0__TOPICS", "orders, payments"),
            ("STRAIT__FLOWS__0__TOPIC_AUTO_CREATE", "false"),
            ("STRAIT__FLOWS__0__BATCH_MAX_RECORDS", "10"),
            (
                "STRAIT__FLOWS__0__TOPIC_CONFIG_OVERRIDES__RETENTION_MS",
                "1000",
            ),
            ("STRAIT_CONFIG", "/not/a/key.toml"),
        ],
    )
    .expect("valid");
    assert_eq!(s.http.listen, "0.0.0.0:9999".parse().unwrap());
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(s.clusters["east"].bootstrap_servers(), "east-9:9092");
    assert_eq!(s.flows[0].source.bootstrap_servers(), "east-9:9092");
    let central = &s.clusters["central"].properties;
    assert_eq!(central["sasl.password"], "from-env");
    assert_eq!(central["security.protocol"], "SSL");
    assert!(!central.contains_key("sasl"));
    let f = &s.flows[0];
    assert!(f.topics.matches("payments") && f.topics.matches("orders"));
    assert!(!f.topic_auto_create);
    assert_eq!(f.tuning.batch_max_records, 10);
    assert_eq!(f.topic_config_overrides["retention.ms"], "1000");
}

#[test]
fn env_matches_cluster_names_ignoring_case_and_dashes() {
    let text = with_flow(EAST_TO_CENTRAL)
        .replace("[clusters.central]", "[clusters.Central-DC]")
        .replace("destination = \"central\"", "destination = \"Central-DC\"");
    let s = toml_env(
        &text,
        &[("STRAIT__CLUSTERS__CENTRAL_DC__BOOTSTRAP_SERVERS", "c2:9092")],
    )
    .expect("valid");
    assert_eq!(s.clusters.len(), 2);
    assert_eq!(s.clusters["Central-DC"].bootstrap_servers(), "c2:9092");
}

#[test]
fn env_can_define_a_cluster() {
    let text = with_flow(EAST_TO_CENTRAL).replace("\"central\"", "\"west\"");
    let s = toml_env(
        &text,
        &[("STRAIT__CLUSTERS__WEST__BOOTSTRAP_SERVERS", "west:9092")],
    )
    .expect("valid");
    assert_eq!(s.flows[0].destination.bootstrap_servers(), "west:9092");
}

#[test]
fn env_errors_name_the_variable() {
    let msg = toml_env(
        &with_flow(EAST_TO_CENTRAL),
        &[("STRAIT__HTTP__LISTEN", "nowhere")],
    )
    .unwrap_err()
    .to_string();
    assert_mentions(
        &msg,
        &[
            "http.listen",
            "\"nowhere\"",
            "set by environment variable STRAIT__HTTP__LISTEN",
        ],
    );
    let msg = toml_env(&with_flow(EAST_TO_CENTRAL), &[("STRAIT__HTTP__LISEN", "x")])
        .unwrap_err()
        .to_string();
    assert_mentions(&msg, &["http.lisen: unknown key", "STRAIT__HTTP__LISEN"]);
    let msg = toml_env(
        &with_flow(EAST_TO_CENTRAL),
        &[("STRAIT__FLOWS__3__TOPICS", "x")],
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&msg, &["STRAIT__FLOWS__3__TOPICS", "1 flow"]);
    let msg = toml_env(
        &with_flow(EAST_TO_CENTRAL),
        &[("STRAIT__CLUSTERS__EAST__BOOTSTRAP_SERVERS", "")],
    )
    .unwrap_err()
    .to_string();
    assert_mentions(
        &msg,
        &[
            "clusters.east.bootstrap_servers",
            "STRAIT__CLUSTERS__EAST__BOOTSTRAP_SERVERS",
        ],
    );
}

#[test]
fn load_reads_the_process_environment() {
    let _g = process_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("strait.toml");
    let text = with_flow(EAST_TO_CENTRAL)
        .replace("[clusters.central]", "[clusters.envtest-central]")
        .replace(
            "destination = \"central\"",
            "destination = \"envtest-central\"",
        );
    std::fs::write(&path, text).expect("write");
    std::env::set_var(
        "STRAIT__CLUSTERS__ENVTEST_CENTRAL__BOOTSTRAP_SERVERS",
        "from-env:9092",
    );
    // Only a key of this test's own cluster: other tests of the crate may
    // load configs meanwhile, and must not see their keys changed.
    let loaded = load(&path);
    std::env::remove_var("STRAIT__CLUSTERS__ENVTEST_CENTRAL__BOOTSTRAP_SERVERS");
    let s = loaded.expect("valid");
    assert_eq!(
        s.clusters["envtest-central"].bootstrap_servers(),
        "from-env:9092"
    );
}

// ----------------------------------------------------------- files, formats

#[test]
fn missing_file_names_the_path() {
    let msg = load_with_env(Path::new("/nonexistent/strait.toml"), Vec::new())
        .unwrap_err()
        .to_string();
    assert_mentions(&msg, &["/nonexistent/strait.toml", "cannot read"]);
}

#[test]
fn syntax_error_names_file_and_position_on_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[clusters.east\nbootstrap_servers = 1\n").expect("write");
    let msg = load_with_env(&path, Vec::new()).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert_mentions(&msg, &["bad.toml", "not valid TOML", "line 1"]);
}

#[test]
fn yaml_and_json_files_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = dir.path().join("strait.yaml");
    std::fs::write(
        &yaml,
        r#"
clusters:
  east:
    bootstrap_servers: "east:9092"
    kafka:
      security.protocol: SSL
      socket.keepalive.enable: true
  central:
    bootstrap_servers: "central:9092"
flows:
  - source: east
    destination: central
    topics: ["orders", "payments\\..*"]
    topic_rename_format: "${source}.${topic}"
    commit_interval: 2s
http:
  listen: "127.0.0.1:9000"
"#,
    )
    .expect("write");
    let s = load_with_env(&yaml, Vec::new()).expect("valid YAML");
    assert_eq!(s.flows[0].destination_topic("orders"), "east.orders");
    assert_eq!(s.flows[0].tuning.commit_interval, Duration::from_secs(2));
    assert_eq!(
        s.clusters["east"].properties["socket.keepalive.enable"],
        "true"
    );
    assert_eq!(s.http.listen.port(), 9000);

    let json = dir.path().join("strait.json");
    std::fs::write(
        &json,
        r#"{
  "clusters": {
    "east": { "bootstrap_servers": "east:9092", "kafka": { "client.id": "strait", "linger.ms": 5 } },
    "central": { "bootstrap_servers": "central:9092" }
  },
  "flows": [ { "source": "east", "destination": "central", "topics": ["orders"], "delivery": "exactly_once" } ],
  "log": { "format": "json" }
}"#,
    )
    .expect("write");
    let s = load_with_env(&json, Vec::new()).expect("valid JSON");
    assert_eq!(s.flows[0].delivery, Delivery::ExactlyOnce);
    assert_eq!(s.clusters["east"].properties["linger.ms"], "5");
    assert_eq!(s.log.format, LogFormat::Json);

    // Unknown keys are refused in every format.
    std::fs::write(&json, r#"{ "flows": [ { "sorce": "east" } ] }"#).expect("write");
    let msg = load_with_env(&json, Vec::new()).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &["flows[0].sorce: unknown key", "did you mean `source`"],
    );
}

/// The variables the example configs read secrets from.
const EXAMPLE_SECRETS: &[(&str, &str)] = &[
    ("STRAIT_EAST_PASSWORD", "example-east-password"),
    ("STRAIT_WEST_PASSWORD", "example-west-password"),
];

#[test]
fn example_configs_are_valid() {
    for (var, value) in EXAMPLE_SECRETS {
        std::env::set_var(var, value);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml" | "yaml" | "yml" | "json")
        ) {
            continue;
        }
        let settings =
            load_with_env(&path, Vec::new()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!settings.flows.is_empty(), "{}", path.display());
        let dbg = format!("{settings:?}");
        for (_, secret) in EXAMPLE_SECRETS {
            assert!(!dbg.contains(secret), "{}: secret in Debug", path.display());
        }
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    for expected in [
        "active-active.toml",
        "aggregation.toml",
        "demo.toml",
        "disaster-recovery.toml",
        "migration.toml",
        "secure.toml",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} missing: {checked:?}"
        );
    }
}

#[test]
fn demo_config_is_what_the_demo_expects() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let s = load_with_env(&path, Vec::new()).expect("valid");
    assert_eq!(s.clusters["source"].bootstrap_servers(), "127.0.0.1:19092");
    assert_eq!(
        s.clusters["destination"].bootstrap_servers(),
        "127.0.0.1:29092"
    );
    assert_eq!(s.flows.len(), 1);
    let f = &s.flows[0];
    assert_eq!(
        (f.source.alias.as_str(), f.destination.alias.as_str()),
        ("source", "destination")
    );
    for t in ["orders", "payments", "clicks"] {
        assert!(f.topics.matches(t), "{t}");
    }
    assert_eq!(f.topic_refresh_interval, Duration::from_secs(5));
    assert_eq!(s.http.listen, "127.0.0.1:9464".parse().unwrap());
}

#[test]
fn metrics_partition_labels_default_on_and_can_be_turned_off() {
    let s = toml(&with_flow(EAST_TO_CENTRAL)).expect("valid");
    assert!(s.metrics.partition_labels, "on by default");
    let s = toml(&format!(
        "{}\n[metrics]\npartition_labels = false\n",
        with_flow(EAST_TO_CENTRAL)
    ))
    .expect("valid");
    assert!(!s.metrics.partition_labels);
    let s = toml_env(
        &with_flow(EAST_TO_CENTRAL),
        &[("STRAIT__METRICS__PARTITION_LABELS", "false")],
    )
    .expect("valid");
    assert!(!s.metrics.partition_labels, "from the environment");
    let msg = error(&format!(
        "{}\n[metrics]\npartition_label = false\n",
        with_flow(EAST_TO_CENTRAL)
    ));
    assert_mentions(
        &msg,
        &[
            "metrics.partition_label: unknown key",
            "did you mean `partition_labels`",
        ],
    );
}
