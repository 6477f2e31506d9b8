//! Topic management on real clusters: destination topics are created with the
//! source topic's partition count, replication factor and config overrides
//! (excluded configs not copied); they are renamed, grown and kept in sync as
//! the source changes; topics that cannot be created wait without holding up
//! the others; `start_from` decides where new partitions without progress
//! begin, except partitions added to a topic already being copied.
//!
//! Two clusters serve every test of this file: `small` (one broker) and
//! `big` (three brokers, for replication factors). Each test uses its own
//! topics and consumer groups, so tests run in parallel.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use strait_actors::topic_admin::{FailureKind, Layout, TopicAdmin, TopicPlan};
use strait_actors::ClusterSpec;

use support::cluster::KafkaCluster;
use support::records::{
    compare, create_topic, id_payload, id_report, partition_count, payload_id, produce, read_topic,
    total_records, unique_name, wait_until, Out, Rec, TestProducer,
};
use support::strait::{run_strait, toml_str, write_config_file, Config, Strait};

/// Bound on every wait: long enough for a slow, shared machine; short enough
/// that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

/// How long one admin request from the tests may take.
const REQUEST: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------

/// (`small`: one broker, `big`: three brokers), started together on first use
/// and shared by every test of this file. Never dropped: the harness's
/// watchdog removes them when the test process exits.
fn clusters() -> &'static (KafkaCluster, KafkaCluster) {
    static CLUSTERS: OnceLock<(KafkaCluster, KafkaCluster)> = OnceLock::new();
    CLUSTERS.get_or_init(|| {
        std::thread::scope(|s| {
            let small = s.spawn(|| KafkaCluster::start_with_brokers("small", 1));
            let big = s.spawn(|| KafkaCluster::start_with_brokers("big", 3));
            let small = small
                .join()
                .expect("starting the one-broker cluster panicked");
            let big = big
                .join()
                .expect("starting the three-broker cluster panicked");
            (small, big)
        })
    })
}

fn small() -> &'static str {
    clusters().0.bootstrap()
}

fn big() -> &'static str {
    clusters().1.bootstrap()
}

// ---------------------------------------------------------------------------
// Topic administration for the tests
// ---------------------------------------------------------------------------

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("admin client for {bootstrap}: {e}"))
}

/// Creates `topic` with a replication factor and per-topic configs, and waits
/// until every partition has a leader.
fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) {
    let mut new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let options = AdminOptions::new().operation_timeout(Some(REQUEST));
    let results = futures::executor::block_on(admin(bootstrap).create_topics([&new], &options))
        .unwrap_or_else(|e| panic!("creating {topic} on {bootstrap}: {e}"));
    for r in results {
        if let Err((name, code)) = r {
            panic!("creating {name} on {bootstrap}: {code}");
        }
    }
    wait_until(
        &format!("{topic} to have {partitions} partitions with leaders on {bootstrap}"),
        WAIT,
        || match partition_count(bootstrap, topic) {
            Some(n) if n == partitions => Ok(()),
            other => Err(format!("partitions with leaders: {other:?}")),
        },
    );
}

/// The topic's per-topic config overrides (not broker defaults).
fn topic_configs(bootstrap: &str, topic: &str) -> BTreeMap<String, String> {
    let options = AdminOptions::new().request_timeout(Some(REQUEST));
    let results = futures::executor::block_on(
        admin(bootstrap).describe_configs(&[ResourceSpecifier::Topic(topic)], &options),
    )
    .unwrap_or_else(|e| panic!("describing {topic} on {bootstrap}: {e}"));
    let resource = results
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("{bootstrap} did not describe {topic}"));
    resource
        .entries
        .into_iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// Replaces every per-topic override of `topic` with `configs` (AlterConfigs).
fn set_topic_configs(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        alter = alter.set(k, v);
    }
    let options = AdminOptions::new().request_timeout(Some(REQUEST));
    let results = futures::executor::block_on(admin(bootstrap).alter_configs([&alter], &options))
        .unwrap_or_else(|e| panic!("altering {topic} on {bootstrap}: {e}"));
    for r in results {
        if let Err((_, code)) = r {
            panic!("altering {topic} on {bootstrap}: {code}");
        }
    }
}

/// Grows `topic` to `partitions` and waits until every one has a leader.
fn add_partitions(bootstrap: &str, topic: &str, partitions: i32) {
    let options = AdminOptions::new().operation_timeout(Some(REQUEST));
    let grow = NewPartitions::new(topic, partitions as usize);
    let results =
        futures::executor::block_on(admin(bootstrap).create_partitions([&grow], &options))
            .unwrap_or_else(|e| panic!("adding partitions to {topic} on {bootstrap}: {e}"));
    for r in results {
        if let Err((_, code)) = r {
            panic!("adding partitions to {topic} on {bootstrap}: {code}");
        }
    }
    wait_until(
        &format!("{topic} to have {partitions} partitions with leaders on {bootstrap}"),
        WAIT,
        || match partition_count(bootstrap, topic) {
            Some(n) if n == partitions => Ok(()),
            other => Err(format!("partitions with leaders: {other:?}")),
        },
    );
}

/// Replicas of each partition of `topic`; `None` while it does not exist.
fn replication_factors(bootstrap: &str, topic: &str) -> Option<Vec<usize>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a metadata client");
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST).ok()?;
    let t = metadata.topics().first()?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some(t.partitions().iter().map(|p| p.replicas().len()).collect())
}

/// True when every partition of `topic` holds a record; false also while
/// the cluster's metadata still lags behind the topic's creation.
fn every_partition_has_records(bootstrap: &str, topic: &str, partitions: i32) -> bool {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a metadata client");
    (0..partitions).all(|p| {
        consumer
            .fetch_watermarks(topic, p, REQUEST)
            .is_ok_and(|(low, high)| high > low)
    })
}

/// Strait's own topic administration, for the cluster at `bootstrap`.
fn topic_admin(bootstrap: &str) -> TopicAdmin {
    let cluster = ClusterSpec {
        alias: "destination".into(),
        properties: BTreeMap::from([("bootstrap.servers".to_string(), bootstrap.to_string())]),
    };
    TopicAdmin::new(&cluster).expect("admin client")
}

/// Looks up how many of a topic's partitions have a leader, from a client
/// connected beforehand, so that a look takes one round trip: for checking
/// a topic the moment Strait reports it ready.
struct LeaderLookup(BaseConsumer);

impl LeaderLookup {
    fn connected(bootstrap: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("a metadata client");
        let _ = consumer.fetch_metadata(None, REQUEST);
        Self(consumer)
    }

    /// Partitions of `topic` with a leader and no error; `None` when the
    /// topic is not in the metadata.
    fn led_partitions(&self, topic: &str) -> Option<usize> {
        let metadata = self.0.fetch_metadata(Some(topic), REQUEST).ok()?;
        let t = metadata.topics().iter().find(|t| t.name() == topic)?;
        let led = t
            .partitions()
            .iter()
            .filter(|p| p.error().is_none() && p.leader() >= 0);
        Some(led.count())
    }
}

fn topic_exists(bootstrap: &str, topic: &str) -> bool {
    replication_factors(bootstrap, topic).is_some()
}

// ---------------------------------------------------------------------------
// Strait's view
// ---------------------------------------------------------------------------

/// `/status`'s state of source topic `topic`, in any flow.
fn topic_state(strait: &Strait, topic: &str) -> Result<String, String> {
    let status = strait.status()?;
    flows_topic(&status, topic)
        .and_then(|t| t["state"].as_str().map(str::to_string))
        .ok_or_else(|| format!("{topic} not in /status: {status}"))
}

fn flows_topic<'a>(status: &'a Value, topic: &str) -> Option<&'a Value> {
    status["flows"]
        .as_array()?
        .iter()
        .find_map(|f| f["topics"].get(topic))
}

/// Log lines of `strait` that mention `needle` and contain `text`.
fn log_lines(strait: &Strait, needle: &str, text: &str) -> Vec<String> {
    strait
        .log()
        .lines()
        .filter(|l| l.contains(needle) && l.contains(text))
        .map(str::to_string)
        .collect()
}

/// Ids of every record of a topic read with [`read_topic`].
fn ids(parts: &[Vec<Rec>]) -> BTreeSet<u64> {
    parts
        .iter()
        .flatten()
        .filter_map(|r| payload_id(&r.value))
        .collect()
}

/// Produces probe records (ids from `first_id`) to every partition until each
/// destination partition holds at least one record: from then on the flow is
/// known to be positioned, whatever `start_from` says.
fn wait_until_positioned(
    strait: &Strait,
    src: &str,
    dst: &str,
    topic: &str,
    partitions: i32,
    first_id: u64,
) {
    let mut next = first_id;
    wait_until(
        &format!("{topic}: a record produced now to reach every destination partition"),
        WAIT,
        || {
            strait.assert_running();
            if partition_count(dst, topic) == Some(partitions)
                && every_partition_has_records(dst, topic, partitions)
            {
                return Ok(());
            }
            let probes: Vec<Out> = (0..partitions)
                .map(|p| {
                    next += 1;
                    Out::value(p, id_payload(next, 8))
                })
                .collect();
            produce(src, topic, &probes);
            Err(strait.status_summary())
        },
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn created_topic_has_source_partitions_and_config_overrides_but_not_excluded_configs() {
    let (src, dst) = (small(), big());
    let topic = unique_name("cfg");
    create_topic_with(
        src,
        &topic,
        3,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("retention.ms", "3600000"),
            ("max.message.bytes", "2000000"),
            ("compression.type", "gzip"),
            // Excluded by default: never copied.
            ("min.insync.replicas", "1"),
            ("leader.replication.throttled.replicas", "*"),
        ],
    );
    let records: Vec<Out> = (0..90)
        .map(|i| Out::keyed(i % 3, format!("k{i}"), id_payload(i as u64, 16)))
        .collect();
    produce(src, &topic, &records);

    let config = Config::new(src, dst, &[&topic], &unique_name("strait.cfg"))
        .flow_key("topic_config_overrides", r#"{ "segment.ms" = "3600000" }"#);
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, 3, records.len() as i64, WAIT);

    assert_eq!(
        topic_configs(dst, &topic),
        BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("retention.ms".to_string(), "3600000".to_string()),
            ("max.message.bytes".to_string(), "2000000".to_string()),
            ("compression.type".to_string(), "gzip".to_string()),
            ("segment.ms".to_string(), "3600000".to_string()),
        ]),
        "the source's overrides plus the flow's, without the excluded ones"
    );
    assert_eq!(replication_factors(dst, &topic), Some(vec![1, 1, 1]));
    let copied = compare(
        &read_topic(src, &topic, 3),
        &read_topic(dst, &topic, 3),
        true,
    );
    assert!(copied.is_ok(), "{}", copied.unwrap_err());
    assert_eq!(
        strait
            .metric("strait_topics_created_total", &[("topic", &topic)])
            .expect("/metrics"),
        Some(1.0)
    );
    strait.stop();
}

#[test]
fn topics_prepared_together_each_get_their_own_outcome() {
    // A flow prepares the topics it finds at once concurrently: new ones are
    // created with their configs, an existing one is kept, one the
    // destination cannot hold fails alone.
    let dst = small();
    let prefix = unique_name("batch");
    let existing = format!("{prefix}.existing");
    create_topic(dst, &existing, 2);
    let admin = topic_admin(dst);
    let plan = |name: String, partitions: i32, replication_factor: i32| TopicPlan {
        name,
        partitions,
        replication_factor,
        configs: BTreeMap::from([("retention.ms".to_string(), "3600000".to_string())]),
        unmanaged: BTreeSet::new(),
    };
    let mut plans: Vec<TopicPlan> = (0..40)
        .map(|i| plan(format!("{prefix}.new{i:02}"), 3, 1))
        .collect();
    plans.push(plan(existing.clone(), 2, 1));
    let too_wide = format!("{prefix}.rf3");
    plans.push(plan(too_wide.clone(), 1, 3));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcomes = runtime.block_on(futures::future::join_all(
        plans.iter().map(|p| admin.ensure_topic(p, true, false)),
    ));

    for (plan, outcome) in plans.iter().zip(&outcomes) {
        let name = &plan.name;
        if *name == existing {
            let ensured = outcome.as_ref().expect("the existing topic is ready");
            assert_eq!(ensured.layout, Layout::Existed, "{name}");
        } else if *name == too_wide {
            let failure = outcome
                .as_ref()
                .expect_err("one broker cannot hold 3 replicas");
            assert_eq!(failure.kind, FailureKind::ReplicationFactor, "{failure}");
            assert!(!topic_exists(dst, name), "{name} must not exist");
        } else {
            let ensured = outcome
                .as_ref()
                .unwrap_or_else(|e| panic!("{name} should have been created: {e}"));
            assert_eq!(ensured.layout, Layout::Created, "{name}");
            assert_eq!(partition_count(dst, name), Some(3), "{name}");
            assert_eq!(
                topic_configs(dst, name)
                    .get("retention.ms")
                    .map(String::as_str),
                Some("3600000"),
                "{name}"
            );
        }
    }
}

#[test]
fn a_topic_is_ready_only_once_the_destination_serves_all_its_partitions() {
    // A broker answers CreateTopics before it serves the topic, and creating
    // many topics at once puts it seconds behind: a copy started on the
    // answer would wait in the producer (in exactly-once, holding back the
    // whole transaction). Each topic is looked up the moment it is reported
    // ready, from a client of its own.
    let dst = small();
    let prefix = unique_name("served");
    let grown = format!("{prefix}.grown");
    create_topic(dst, &grown, 1);
    let admin = topic_admin(dst);
    let plan = |name: String| TopicPlan {
        name,
        partitions: 10,
        replication_factor: 1,
        configs: BTreeMap::new(),
        unmanaged: BTreeSet::new(),
    };
    let mut plans: Vec<TopicPlan> = (0..40)
        .map(|i| plan(format!("{prefix}.new{i:02}")))
        .collect();
    plans.push(plan(grown.clone()));

    let lookup = LeaderLookup::connected(dst);
    let served = |topic: &str| lookup.led_partitions(topic);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let seen = runtime.block_on(futures::future::join_all(plans.iter().map(|p| {
        let (admin, served) = (&admin, &served);
        async move {
            let ensured = admin.ensure_topic(p, true, false).await;
            // Blocking the runtime on purpose: nothing else moves meanwhile.
            (ensured, served(&p.name))
        }
    })));

    for (plan, (ensured, served)) in plans.iter().zip(&seen) {
        let name = &plan.name;
        let ensured = ensured
            .as_ref()
            .unwrap_or_else(|e| panic!("{name} should be ready: {e}"));
        let layout = if *name == grown {
            Layout::Grown { from: 1 }
        } else {
            Layout::Created
        };
        assert_eq!(ensured.layout, layout, "{name}");
        assert_eq!(
            *served,
            Some(10),
            "{name} was reported ready before the destination served its 10 partitions"
        );
    }
}

#[test]
fn a_topic_two_instances_create_at_once_is_ready_for_both_once_served() {
    // Instances of a flow started together all try to create each topic;
    // the ones refused with "already exists" may not see it in the
    // metadata yet. For them too it is ready, not failed, once served.
    let dst = small();
    let prefix = unique_name("race");
    let (first, second) = (topic_admin(dst), topic_admin(dst));
    let plans: Vec<TopicPlan> = (0..30)
        .map(|i| TopicPlan {
            name: format!("{prefix}.t{i:02}"),
            partitions: 10,
            replication_factor: 1,
            configs: BTreeMap::new(),
            unmanaged: BTreeSet::new(),
        })
        .collect();
    let lookup = LeaderLookup::connected(dst);
    let led = |topic: &str| lookup.led_partitions(topic);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let both = [&first, &second];
    let seen = runtime.block_on(futures::future::join_all(
        plans
            .iter()
            .flat_map(|p| both.map(|admin| (admin, p)))
            .map(|(admin, p)| {
                let led = &led;
                async move {
                    let ensured = admin.ensure_topic(p, true, false).await;
                    (p.name.clone(), ensured, led(&p.name))
                }
            }),
    ));

    let mut created = BTreeMap::<String, usize>::new();
    for (name, ensured, served) in &seen {
        let ensured = ensured
            .as_ref()
            .unwrap_or_else(|e| panic!("{name} should be ready for both instances: {e}"));
        assert_eq!(
            *served,
            Some(10),
            "{name} was reported ready before it was served"
        );
        *created.entry(name.clone()).or_default() += usize::from(ensured.layout == Layout::Created);
    }
    for plan in &plans {
        assert_eq!(
            created.get(&plan.name),
            Some(&1),
            "{}: one instance creates it",
            plan.name
        );
    }
}

#[test]
fn same_cluster_copy_renamed_with_source_alias_keeps_replication_factor_3_and_records() {
    // Source and destination are both the three-broker cluster: the copy of
    // `t` is `source.t` (`${source}` is the source cluster's alias).
    let cluster = big();
    let topic = unique_name("rf3");
    let renamed = format!("source.{topic}");
    create_topic_with(cluster, &topic, 2, 3, &[("retention.ms", "7200000")]);
    let records: Vec<Out> = (0..100)
        .map(|i| Out::keyed(i % 2, format!("k{i}"), id_payload(i as u64, 16)))
        .collect();
    produce(cluster, &topic, &records);

    let config = Config::new(cluster, cluster, &[&topic], &unique_name("strait.rf3"))
        .flow_key("topic_rename_format", &toml_str("${source}.${topic}"));
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(cluster, &renamed, 2, records.len() as i64, WAIT);

    assert_eq!(replication_factors(cluster, &renamed), Some(vec![3, 3]));
    assert_eq!(
        topic_configs(cluster, &renamed)
            .get("retention.ms")
            .map(String::as_str),
        Some("7200000")
    );
    let copied = compare(
        &read_topic(cluster, &topic, 2),
        &read_topic(cluster, &renamed, 2),
        true,
    );
    assert!(copied.is_ok(), "{}", copied.unwrap_err());
    assert!(
        !topic_exists(cluster, &format!("source.{renamed}")),
        "the copy must not be copied again"
    );
    strait.stop();
}

#[test]
fn same_cluster_without_rename_is_refused_at_start_up_with_exit_code_2() {
    let cluster = small();
    let config = Config::new(cluster, cluster, &["anything"], "strait.onto-itself");
    let (_dir, path) = write_config_file("strait.toml", &config.to_toml());
    let out = run_strait(
        &["run", "--config", path.to_str().expect("UTF-8 path")],
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("flows[0].destination") && text.contains("topic_rename_format"),
        "the error should name the key and the way out:\n{}",
        out.describe()
    );
}

#[test]
fn replication_factor_above_destination_brokers_is_retried_with_one_warning_while_others_flow() {
    // Source: three brokers; destination: one.
    let (src, dst) = (big(), small());
    let prefix = unique_name("rfwait");
    let (wide, narrow) = (format!("{prefix}.wide"), format!("{prefix}.narrow"));
    create_topic_with(src, &wide, 1, 3, &[]);
    create_topic(src, &narrow, 2);
    produce(src, &wide, &[Out::value(0, id_payload(1, 8))]);
    let records: Vec<Out> = (0..50)
        .map(|i| Out::value(i % 2, id_payload(i as u64, 8)))
        .collect();
    produce(src, &narrow, &records);

    let config = Config::new(
        src,
        dst,
        &[&format!("{prefix}\\..*")],
        &unique_name("strait.rfwait"),
    );
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &narrow, 2, records.len() as i64, WAIT);

    // Retried: the retry counter goes past one attempt, with backoff.
    wait_until(
        "creating the 3-replica topic to be retried",
        WAIT,
        || match strait.metric("strait_topic_creation_retries_total", &[("topic", &wide)])? {
            Some(n) if n >= 2.0 => Ok(()),
            other => Err(format!(
                "retries: {other:?}; state: {:?}",
                topic_state(&strait, &wide)
            )),
        },
    );
    let state = topic_state(&strait, &wide).expect("/status");
    assert!(
        state.starts_with("waiting:") && state.contains("replication factor 3"),
        "state: {state}"
    );
    assert!(
        !topic_exists(dst, &wide),
        "the topic cannot exist on one broker"
    );
    let warnings = log_lines(&strait, &wide, "cannot prepare the destination topic");
    assert_eq!(
        warnings.len(),
        1,
        "one warning per streak of failures, not one per retry:\n{warnings:#?}"
    );
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("replication_factor"),
        "{}",
        warnings[0]
    );
    strait.stop();
}

#[test]
fn replication_factor_override_creates_topic_the_destination_could_not_replicate_3_times() {
    let (src, dst) = (big(), small());
    let topic = unique_name("rfone");
    create_topic_with(src, &topic, 2, 3, &[]);
    let records: Vec<Out> = (0..40)
        .map(|i| Out::value(i % 2, id_payload(i as u64, 8)))
        .collect();
    produce(src, &topic, &records);

    let config = Config::new(src, dst, &[&topic], &unique_name("strait.rfone"))
        .flow_key("replication_factor", "1");
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, 2, records.len() as i64, WAIT);
    assert_eq!(replication_factors(dst, &topic), Some(vec![1, 1]));
    strait.stop();
}

#[test]
fn partitions_added_at_source_while_records_flow_are_added_at_destination_and_fully_copied() {
    // start_from = latest: the added partitions must still be copied from
    // their beginning, including what was written before Strait noticed them.
    let (src, dst) = (small(), big());
    let topic = unique_name("grow");
    create_topic(src, &topic, 2);
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.grow"))
        .flow_key("start_from", &toml_str("latest"));
    let mut config = config;
    // Slow enough that records land in the new partitions before Strait
    // notices them, fast enough for the test.
    config.topic_refresh_interval = "3s".to_string();
    let mut strait = Strait::start("strait", &config);
    const PROBES: u64 = 1_000_000;
    wait_until_positioned(&strait, src, dst, &topic, 2, PROBES);

    let mut producer = TestProducer::new(src);
    let mut id = 0u64;
    let mut send = |producer: &mut TestProducer, partitions: i32, n: u64| {
        for _ in 0..n {
            producer.send(
                &topic,
                &Out::value((id % partitions as u64) as i32, id_payload(id, 32)),
            );
            id += 1;
        }
    };
    send(&mut producer, 2, 400);
    producer.flush();
    add_partitions(src, &topic, 4);
    // A fresh producer knows the new partitions; write to all four at once,
    // before Strait's next refresh, and keep writing after it.
    let mut producer = TestProducer::new(src);
    send(&mut producer, 4, 400);
    producer.flush();
    wait_until(
        "the destination topic to grow to 4 partitions",
        WAIT,
        || {
            strait.assert_running();
            match partition_count(dst, &topic) {
                Some(4) => Ok(()),
                other => Err(format!("destination partitions: {other:?}")),
            }
        },
    );
    send(&mut producer, 4, 400);
    producer.flush();
    let total = id;

    let without_probes = |parts: Vec<Vec<Rec>>| -> Vec<Vec<Rec>> {
        parts
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .filter(|r| payload_id(&r.value).is_some_and(|id| id < PROBES))
                    .collect()
            })
            .collect()
    };
    let (source, copy) = wait_until("every record to reach the destination", WAIT, || {
        strait.assert_running();
        let source = without_probes(read_topic(src, &topic, 4));
        let copy = without_probes(read_topic(dst, &topic, 4));
        let report = id_report(&source, &copy);
        if report.lost == 0 {
            Ok((source, copy))
        } else {
            Err(format!("{report:?}\n{}", strait.status_summary()))
        }
    });
    let report = id_report(&source, &copy);
    assert_eq!(report.source_records as u64, total, "{report:?}");
    assert_eq!(report.wrong_partition, 0, "{report:?}");
    assert!(report.out_of_order.is_empty(), "{report:?}");
    // The added partitions were copied whole from their beginning, so even
    // their offsets match.
    let added = compare(&source[2..], &copy[2..], true);
    assert!(
        added.is_ok(),
        "added partitions differ: {}",
        added.unwrap_err()
    );
    assert!(
        !log_lines(&strait, &topic, "copying it from its beginning").is_empty(),
        "the log should say the added partitions start at their beginning"
    );
    strait.stop();
}

#[test]
fn config_change_at_source_is_applied_at_destination_by_the_next_refresh() {
    let (src, dst) = (small(), big());
    let topic = unique_name("sync");
    create_topic_with(
        src,
        &topic,
        1,
        1,
        &[("cleanup.policy", "compact"), ("retention.ms", "1000000")],
    );
    let mut config = Config::new(src, dst, &[&topic], &unique_name("strait.sync"));
    let refresh = Duration::from_secs(10);
    config.topic_refresh_interval = "10s".to_string();
    let mut strait = Strait::start("strait", &config);
    wait_until(
        "the destination topic with the source's configs",
        WAIT,
        || {
            strait.assert_running();
            if !topic_exists(dst, &topic) {
                return Err("not created yet".to_string());
            }
            let configs = topic_configs(dst, &topic);
            if configs.get("cleanup.policy").map(String::as_str) == Some("compact") {
                Ok(())
            } else {
                Err(format!("{configs:?}"))
            }
        },
    );
    // Set by the destination's operator, excluded from copying: kept.
    set_topic_configs(
        dst,
        &topic,
        &[
            ("cleanup.policy", "compact"),
            ("retention.ms", "1000000"),
            ("min.insync.replicas", "1"),
        ],
    );

    // Changed, added and removed overrides at once.
    let changed_at = Instant::now();
    set_topic_configs(
        src,
        &topic,
        &[("retention.ms", "2000000"), ("segment.ms", "600000")],
    );
    let expected = BTreeMap::from([
        ("retention.ms".to_string(), "2000000".to_string()),
        ("segment.ms".to_string(), "600000".to_string()),
        ("min.insync.replicas".to_string(), "1".to_string()),
    ]);
    wait_until(
        "the destination topic's configs to follow the source's",
        WAIT,
        || {
            strait.assert_running();
            let configs = topic_configs(dst, &topic);
            if configs == expected {
                Ok(())
            } else {
                Err(format!("{configs:?}"))
            }
        },
    );
    let took = changed_at.elapsed();
    // The next refresh starts at most one interval after the change; the
    // second interval is slack for the requests on a busy machine.
    assert!(
        took < 2 * refresh,
        "the change took {took:?}, more than the refresh after next ({refresh:?} each)"
    );
    let updates = strait
        .metric("strait_topic_config_updates_total", &[("topic", &topic)])
        .expect("/metrics");
    assert!(updates >= Some(1.0), "config updates counted: {updates:?}");
    assert!(
        !log_lines(&strait, &topic, "cleanup.policy: compact -> (default)").is_empty(),
        "the log should say what changed"
    );
    strait.stop();
}

#[test]
fn existing_destination_topics_are_grown_or_kept_with_a_warning_when_they_differ() {
    // topic_config_sync = false: configs are left alone, with a warning.
    let (src, dst) = (small(), big());
    let prefix = unique_name("exist");
    let (fewer, more) = (format!("{prefix}.fewer"), format!("{prefix}.more"));
    create_topic_with(src, &fewer, 3, 1, &[]);
    create_topic_with(src, &more, 2, 1, &[("retention.ms", "3600000")]);
    create_topic_with(dst, &fewer, 1, 1, &[]);
    create_topic_with(dst, &more, 4, 1, &[("retention.ms", "7200000")]);
    let fewer_records: Vec<Out> = (0..60)
        .map(|i| Out::value(i % 3, id_payload(i as u64, 8)))
        .collect();
    let more_records: Vec<Out> = (0..40)
        .map(|i| Out::value(i % 2, id_payload(i as u64, 8)))
        .collect();
    produce(src, &fewer, &fewer_records);
    produce(src, &more, &more_records);

    let config = Config::new(
        src,
        dst,
        &[&format!("{prefix}\\..*")],
        &unique_name("strait.exist"),
    )
    .flow_key("topic_config_sync", "false");
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &fewer, 3, fewer_records.len() as i64, WAIT);
    strait.wait_for_copy(dst, &more, 4, more_records.len() as i64, WAIT);

    let copied = compare(
        &read_topic(src, &fewer, 3),
        &read_topic(dst, &fewer, 3),
        false,
    );
    assert!(copied.is_ok(), "{}", copied.unwrap_err());
    let copied = compare(
        &read_topic(src, &more, 2),
        &read_topic(dst, &more, 2),
        false,
    );
    assert!(copied.is_ok(), "{}", copied.unwrap_err());
    assert_eq!(
        total_records(dst, &more, 4),
        Some(more_records.len() as i64)
    );
    assert_eq!(
        topic_configs(dst, &more)
            .get("retention.ms")
            .map(String::as_str),
        Some("7200000"),
        "with topic_config_sync = false the destination's config stays"
    );
    let more_partitions = log_lines(&strait, &more, "more partitions than the source");
    let differs = log_lines(&strait, &more, "topic_config_sync is false");
    assert_eq!(more_partitions.len(), 1, "{more_partitions:#?}");
    assert_eq!(differs.len(), 1, "{differs:#?}");
    assert!(
        differs[0].contains("retention.ms: 7200000 -> 3600000"),
        "{}",
        differs[0]
    );
    strait.stop();
}

#[test]
fn missing_destination_topic_without_auto_create_is_an_error_for_that_topic_only() {
    let (src, dst) = (small(), big());
    let prefix = unique_name("noauto");
    let (present, missing) = (format!("{prefix}.present"), format!("{prefix}.missing"));
    create_topic(src, &present, 1);
    create_topic(src, &missing, 1);
    create_topic(dst, &present, 1);
    let records: Vec<Out> = (0..20).map(|i| Out::value(0, id_payload(i, 8))).collect();
    produce(src, &present, &records);
    produce(src, &missing, &records);

    let config = Config::new(
        src,
        dst,
        &[&format!("{prefix}\\..*")],
        &unique_name("strait.noauto"),
    )
    .flow_key("topic_auto_create", "false");
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &present, 1, records.len() as i64, WAIT);
    let state = wait_until("/status to show the missing topic's error", WAIT, || {
        let state = topic_state(&strait, &missing)?;
        if state.starts_with("error:") {
            Ok(state)
        } else {
            Err(state)
        }
    });
    assert!(state.contains("topic_auto_create"), "state: {state}");
    assert!(!topic_exists(dst, &missing), "Strait must not create it");

    // Once the operator creates it, copying starts.
    create_topic(dst, &missing, 1);
    strait.wait_for_copy(dst, &missing, 1, records.len() as i64, WAIT);
    strait.stop();
}

#[test]
fn start_from_latest_copies_only_records_produced_after_start() {
    let (src, dst) = (small(), big());
    let topic = unique_name("latest");
    create_topic(src, &topic, 2);
    let old: Vec<Out> = (0..100)
        .map(|i| Out::value(i % 2, id_payload(i as u64, 8)))
        .collect();
    produce(src, &topic, &old);

    let config = Config::new(src, dst, &[&topic], &unique_name("strait.latest"))
        .flow_key("start_from", &toml_str("latest"));
    let mut strait = Strait::start("strait", &config);
    wait_until_positioned(&strait, src, dst, &topic, 2, 1_000_000);
    let new: Vec<Out> = (1000..1100)
        .map(|i| Out::value(i % 2, id_payload(i as u64, 8)))
        .collect();
    produce(src, &topic, &new);

    let new_ids: BTreeSet<u64> = (1000..1100).collect();
    let copied = wait_until("every record produced after start to arrive", WAIT, || {
        strait.assert_running();
        let copied = ids(&read_topic(dst, &topic, 2));
        if new_ids.is_subset(&copied) {
            Ok(copied)
        } else {
            Err(format!(
                "{} of {} arrived",
                new_ids.intersection(&copied).count(),
                new_ids.len()
            ))
        }
    });
    let old_copied: Vec<u64> = copied.iter().copied().filter(|id| *id < 100).collect();
    assert!(
        old_copied.is_empty(),
        "records produced before start were copied: {old_copied:?}"
    );
    strait.stop();
}

#[test]
fn two_source_topics_mapping_to_one_destination_topic_are_refused_before_copying() {
    // Two flows into `big`: `small`'s `<p>-x` keeps its name, and `big`'s
    // `<p>` is renamed `<p>-x`. The patterns are regexes, so the config checks
    // cannot see the collision; the flows find it when they find the topics.
    let (small_cluster, big_cluster) = (small(), big());
    let prefix = unique_name("clash");
    let shared = format!("{prefix}-x");
    create_topic(small_cluster, &shared, 1);
    create_topic(big_cluster, &prefix, 1);
    produce(small_cluster, &shared, &[Out::value(0, id_payload(1, 8))]);
    produce(big_cluster, &prefix, &[Out::value(0, id_payload(2, 8))]);

    let mut config = Config::new(
        small_cluster,
        big_cluster,
        &[&format!("{}-[x]", regex_escape(&prefix))],
        &unique_name("strait.clash-a"),
    );
    config.extra = format!(
        "\n[[flows]]\nname = \"renaming\"\nsource = \"destination\"\ndestination = \"destination\"\n\
         topics = [{}]\ntopic_rename_format = {}\ngroup_id = {}\ntopic_refresh_interval = \"1s\"\n",
        toml_str(&format!("(?:{})", regex_escape(&prefix))),
        toml_str("${topic}-x"),
        toml_str(&unique_name("strait.clash-b")),
    );
    let mut strait = Strait::start("strait", &config);
    let (loser, state) = wait_until("one of the two topics to be refused", WAIT, || {
        for t in [&shared, &prefix] {
            if let Ok(state) = topic_state(&strait, t) {
                if state.starts_with("error:") {
                    return Ok((t.clone(), state));
                }
            }
        }
        Err(strait.status_summary())
    });
    assert!(
        state.contains("cannot share a destination topic"),
        "{state}"
    );
    let winner = if loser == shared { &prefix } else { &shared };
    assert!(
        !log_lines(&strait, &loser, "not copying this topic").is_empty(),
        "the refusal should be logged"
    );
    // The winner's one record (id 1 from `small`, id 2 from `big`) is all
    // the destination topic holds.
    strait.wait_for_copy(big_cluster, &shared, 1, 1, WAIT);
    let expected = if winner == &shared { 1 } else { 2 };
    assert_eq!(
        ids(&read_topic(big_cluster, &shared, 1)),
        BTreeSet::from([expected]),
        "only {winner} should be copied to {shared}"
    );
    strait.stop();
}

/// `s` as a regex matching itself literally.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = !(c.is_ascii_alphanumeric() || c == '_' || c == '-');
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
