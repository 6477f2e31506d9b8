//! The command line's contract (design.md): `strait check` exit codes 0 (all
//! good), 1 (a cluster or topic problem), 2 (a bad config, named by key);
//! config validation before any connection; `--config`, `STRAIT_CONFIG` and
//! `STRAIT__...` environment overrides; `--version` and `help`.

mod support;

use support::cluster::shared_pair;
use support::records::{create_topic, partition_count, unique_name};
use support::strait::{free_port, run_strait, toml_str, write_config_file, CmdOutput};

/// A valid config: clusters `east` (source) and `central` (destination), one
/// flow copying `topics`. Bad configs are made from it by one edit each.
fn config_text(east: &str, central: &str, topics: &str) -> String {
    format!(
        r#"shutdown_timeout = "20s"

[clusters.east]
bootstrap_servers = {east}

[clusters.central]
bootstrap_servers = {central}

[[flows]]
source = "east"
destination = "central"
topics = [{topics}]
group_id = "strait.cli-test"
topic_refresh_interval = "1s"

[http]
listen = "127.0.0.1:0"

[log]
level = "info"
"#,
        east = toml_str(east),
        central = toml_str(central),
        topics = toml_str(topics),
    )
}

/// An address where nothing listens.
fn closed_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn check(text: &str) -> CmdOutput {
    let (_dir, path) = write_config_file("strait.toml", text);
    run_strait(&["check", "--config", path.to_str().unwrap()], &[])
}

fn assert_bad_config(out: &CmdOutput, must_name: &[&str]) {
    assert_eq!(
        out.code,
        Some(2),
        "a bad config should exit 2\n{}",
        out.describe()
    );
    for word in must_name {
        assert!(
            out.stderr.contains(word),
            "the error on stderr should name {word:?}\n{}",
            out.describe()
        );
    }
}

/// A config whose clusters cannot be reached: a bad config must be reported
/// as such (exit 2) before any connection is attempted.
fn unreachable_config(topics: &str) -> String {
    config_text(&closed_address(), &closed_address(), topics)
}

#[test]
fn version_flag_exits_0_and_prints_the_version() {
    let out = run_strait(&["--version"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version should print {}\n{}",
        env!("CARGO_PKG_VERSION"),
        out.describe()
    );
}

#[test]
fn help_exits_0_and_lists_the_commands() {
    let out = run_strait(&["help"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for command in ["run", "check"] {
        assert!(
            out.stdout.contains(command),
            "help should list `{command}`\n{}",
            out.describe()
        );
    }
}

#[test]
fn check_with_unknown_key_exits_2_naming_the_key() {
    let text =
        unreachable_config("orders").replace("group_id = ", "colour = \"blue\"\ngroup_id = ");
    assert_bad_config(&check(&text), &["colour"]);
}

#[test]
fn check_with_bad_topic_regex_exits_2_naming_key_and_value() {
    let out = check(&unreachable_config("orders(["));
    assert_bad_config(&out, &["topics", "orders(["]);
}

#[test]
fn check_with_flow_naming_unknown_cluster_exits_2_naming_it() {
    let text = unreachable_config("orders").replace("source = \"east\"", "source = \"nowhere\"");
    assert_bad_config(&check(&text), &["source", "nowhere"]);
}

#[test]
fn check_with_cluster_missing_bootstrap_servers_exits_2_naming_the_key() {
    let text = unreachable_config("orders");
    let central_line = text
        .lines()
        .skip_while(|l| *l != "[clusters.central]")
        .nth(1)
        .expect("the central cluster's bootstrap line")
        .to_string();
    let text = text.replace(&format!("{central_line}\n"), "");
    assert!(!text.contains(&central_line));
    assert_bad_config(&check(&text), &["bootstrap_servers", "central"]);
}

#[test]
fn run_with_bad_config_exits_2_naming_the_key_before_connecting() {
    let text =
        unreachable_config("orders").replace("group_id = ", "colour = \"blue\"\ngroup_id = ");
    let (_dir, path) = write_config_file("strait.toml", &text);
    let out = run_strait(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_bad_config(&out, &["colour"]);
}

#[test]
fn check_with_unreachable_cluster_exits_1_naming_it() {
    let (source, _) = shared_pair();
    let text = config_text(source.bootstrap(), &closed_address(), "orders")
        .replace("clusters.central", "clusters.offline")
        .replace("destination = \"central\"", "destination = \"offline\"");
    let out = check(&text);
    assert_eq!(
        out.code,
        Some(1),
        "an unreachable cluster should exit 1\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("offline") || out.stdout.contains("offline"),
        "the output should name the unreachable cluster `offline`\n{}",
        out.describe()
    );
}

/// The line(s) of `text` mentioning `topic` mention its partitions: the count,
/// or the highest partition number (as in "0-2").
fn mentions_partitions(text: &str, topic: &str, count: i32) -> bool {
    text.lines().filter(|l| l.contains(topic)).any(|l| {
        let rest = l.replace(topic, " ");
        rest.split(|c: char| !c.is_ascii_digit())
            .any(|n| n == count.to_string() || n == (count - 1).to_string())
    })
}

#[test]
fn check_against_reachable_clusters_exits_0_listing_topics_partitions_and_destinations_and_copies_nothing(
) {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let prefix = unique_name("chk");
    let a = format!("{prefix}.alpha");
    let b = format!("{prefix}.beta");
    let other = format!("{prefix}-other");
    create_topic(src, &a, 3);
    create_topic(src, &b, 2);
    create_topic(src, &other, 1);

    let out = check(&config_text(src, dst, &format!("{prefix}\\..*")));
    assert_eq!(
        out.code,
        Some(0),
        "check should succeed\n{}",
        out.describe()
    );
    for (topic, partitions) in [(&a, 3), (&b, 2)] {
        assert!(
            out.stdout.contains(topic.as_str()),
            "stdout should list {topic}\n{}",
            out.describe()
        );
        assert!(
            out.stdout.matches(topic.as_str()).count() >= 2,
            "stdout should name {topic} as source and as destination topic\n{}",
            out.describe()
        );
        assert!(
            mentions_partitions(&out.stdout, topic, partitions),
            "stdout should give the {partitions} partitions of {topic}\n{}",
            out.describe()
        );
    }
    assert!(
        !out.stdout.contains(&other),
        "{other} does not match the flow and should not be listed\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("central"),
        "stdout should say where the topics go (cluster `central`)\n{}",
        out.describe()
    );
    for topic in [&a, &b] {
        assert_eq!(
            partition_count(dst, topic),
            None,
            "check copies nothing: {topic} should not exist on the destination"
        );
    }
}

#[test]
fn check_takes_bootstrap_servers_from_environment_over_the_file() {
    let (source, destination) = shared_pair();
    let topic = unique_name("chkenv");
    create_topic(source.bootstrap(), &topic, 1);
    // The file points at closed ports; the environment at the real clusters.
    let (_dir, path) = write_config_file("strait.toml", &unreachable_config(&topic));
    let out = run_strait(
        &["check", "--config", path.to_str().unwrap()],
        &[
            (
                "STRAIT__CLUSTERS__EAST__BOOTSTRAP_SERVERS",
                source.bootstrap(),
            ),
            (
                "STRAIT__CLUSTERS__CENTRAL__BOOTSTRAP_SERVERS",
                destination.bootstrap(),
            ),
        ],
    );
    assert_eq!(
        out.code,
        Some(0),
        "the environment should override bootstrap_servers\n{}",
        out.describe()
    );
}

#[test]
fn check_reads_the_config_file_named_by_strait_config() {
    let (source, destination) = shared_pair();
    let topic = unique_name("chkfile");
    create_topic(source.bootstrap(), &topic, 1);
    let (_dir, path) = write_config_file(
        "strait.toml",
        &config_text(source.bootstrap(), destination.bootstrap(), &topic),
    );
    let out = run_strait(&["check"], &[("STRAIT_CONFIG", path.to_str().unwrap())]);
    assert_eq!(
        out.code,
        Some(0),
        "STRAIT_CONFIG should name the file\n{}",
        out.describe()
    );
}
