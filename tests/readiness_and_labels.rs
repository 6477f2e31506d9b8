//! `/ready` follows both clusters of a flow (a reachability probe asks each
//! for its metadata every 10 s), and `[metrics] partition_labels = false`
//! folds a topic's partitions into one series. Both need `strait run` to
//! start the probe and apply the metrics settings.

mod support;

use std::time::Duration;

use support::cluster::{shared_pair, KafkaCluster};
use support::records::{create_topic, id_payload, produce, unique_name, wait_until, Out};
use support::strait::{http_get, Config, Strait};

const WAIT: Duration = Duration::from_secs(120);

fn records(n: u64) -> Vec<Out> {
    (0..n)
        .map(|i| Out::value((i % 2) as i32, id_payload(i, 16)))
        .collect()
}

#[test]
fn ready_names_an_unreachable_destination_and_is_200_again_once_it_answers() {
    let (source, _) = shared_pair();
    let destination = KafkaCluster::start("ready-destination");
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("ready");
    create_topic(src, &topic, 2);
    produce(src, &topic, &records(100));
    let mut strait = Strait::start(
        "strait",
        &Config::new(src, dst, &[&topic], &unique_name("strait.ready")),
    );
    strait.wait_for_copy(dst, &topic, 2, 100, WAIT);
    wait_until("/ready to be 200", WAIT, || http_get(strait.http, "/ready"));
    let status = strait.status().expect("/status");
    for role in ["source_reachability", "destination_reachability"] {
        assert_eq!(
            status["flows"][0][role]["reachable"], true,
            "{role}: {status}"
        );
    }

    destination.stop_brokers();
    let reason = wait_until("/ready to report the destination down", WAIT, || {
        strait.assert_running();
        match http_get(strait.http, "/ready") {
            Ok(body) => Err(format!("still ready: {body}")),
            Err(e) if e.contains("destination cluster `destination` is unreachable") => Ok(e),
            Err(e) => Err(e),
        }
    });
    assert!(reason.contains("503"), "{reason}");
    let metrics = http_get(strait.http, "/metrics").expect("/metrics");
    assert!(
        metrics.contains(
            "strait_cluster_reachable{flow=\"source-to-destination\",role=\"destination\",cluster=\"destination\"} 0"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "strait_cluster_reachable{flow=\"source-to-destination\",role=\"source\",cluster=\"source\"} 1"
        ),
        "{metrics}"
    );

    destination.restart();
    wait_until("/ready to be 200 again", WAIT, || {
        strait.assert_running();
        http_get(strait.http, "/ready")
    });
    strait.stop();
}

#[test]
fn without_partition_labels_a_topic_has_one_series_per_metric() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("nolabels");
    create_topic(src, &topic, 2);
    produce(src, &topic, &records(300));
    let mut config = Config::new(src, dst, &[&topic], &unique_name("strait.nolabels"));
    config.extra = "[metrics]\npartition_labels = false".to_string();
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, 2, 300, WAIT);
    let series = format!(
        "strait_records_replicated_total{{flow=\"source-to-destination\",source_cluster=\"source\",topic=\"{topic}\"}} 300"
    );
    let lag = format!(
        "strait_replication_lag_records{{flow=\"source-to-destination\",topic=\"{topic}\"}} 0"
    );
    let body = wait_until(
        "/metrics to count the topic's records in one series",
        WAIT,
        || {
            let body = http_get(strait.http, "/metrics")?;
            if body.contains(&series) && body.contains(&lag) {
                Ok(body)
            } else {
                Err(body)
            }
        },
    );
    let labelled: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("strait_") && l.contains("partition=\""))
        .collect();
    assert!(
        labelled.is_empty(),
        "series with a partition label: {labelled:#?}"
    );
    strait.stop();
}
