//! `start_from` as a timestamp, on real clusters: a partition without stored
//! progress starts at the first record whose timestamp is at or after it.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::cluster::shared_pair;
use support::records::{
    create_topic, id_payload, payload_id, produce, read_topic, unique_name, Out,
};
use support::strait::{toml_str, Config, Strait};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn start_from_timestamp_copies_only_records_at_or_after_it() {
    let (source, destination) = shared_pair();
    let (src, dst) = (source.bootstrap(), destination.bootstrap());
    let topic = unique_name("since");
    create_topic(src, &topic, 2);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let (old, cut) = (now - 2 * 3_600_000, now - 3_600_000);
    let record = |id: u64, ts: i64| {
        let mut r = Out::value((id % 2) as i32, id_payload(id, 32));
        r.timestamp = Some(ts);
        r
    };
    // Ids 0..40 an hour before the cut, ids 40..80 after it.
    let records: Vec<Out> = (0..40)
        .map(|i| record(i, old + i as i64))
        .chain((40..80).map(|i| record(i, cut + 1000 + i as i64)))
        .collect();
    produce(src, &topic, &records);

    let since = chrono::DateTime::from_timestamp_millis(cut)
        .expect("a valid timestamp")
        .to_rfc3339();
    let config = Config::new(src, dst, &[&topic], &unique_name("strait.since"))
        .flow_key("start_from", &toml_str(&since));
    let mut strait = Strait::start("strait", &config);
    strait.wait_for_copy(dst, &topic, 2, 40, WAIT);
    let mut ids: Vec<u64> = read_topic(dst, &topic, 2)
        .iter()
        .flatten()
        .filter_map(|r| payload_id(&r.value))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (40..80).collect::<Vec<_>>(),
        "only records at or after {since} are copied"
    );
    strait.stop();
}
