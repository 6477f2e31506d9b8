//! Counting lost and duplicated records by an id each record carries, for
//! tests that break things on purpose (kill -9, broker restarts) and then ask
//! what at-least-once delivery left behind.
//!
//! Where [`super::verify`] compares contents position by position,
//! [`count_by_id`] only needs every source record to carry a unique id
//! (in its value, key or a header: the caller's `id_of` finds it). It reads
//! both topics in full, streaming, and holds one entry per source id: fine
//! for test topics of millions of records, not meant for production topics.
//!
//! ```ignore
//! let report = strait::verify::ids::count_by_id(
//!     &source, &destination, "orders", "orders",
//!     |m| strait::verify::ids::value_id(m.payload()),
//! )?;
//! assert_eq!((report.lost, report.wrong_partition), (0, 0), "{report}");
//! ```

use std::collections::HashMap;
use std::fmt;

use rdkafka::message::{BorrowedMessage, Message};
use strait_actors::ClusterSpec;

use super::read::{ClusterReader, OffsetRange, TimeFilter};
use super::{partition_counts, VerifyError};

/// Most lost ids listed in [`IdReport::lost_examples`].
const EXAMPLES: usize = 20;

/// What the destination holds compared with the source, by record id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdReport {
    /// Records read from the source topic.
    pub source_records: u64,
    /// Source records `id_of` found no id in (not counted anywhere else).
    pub source_without_id: u64,
    /// Records read from the destination topic.
    pub destination_records: u64,
    /// Source ids absent from the destination.
    pub lost: u64,
    /// The smallest lost ids, at most 20.
    pub lost_examples: Vec<u64>,
    /// Destination records beyond the first copy of each id.
    pub duplicates: u64,
    /// Destination records without an id, or with an id the source lacks.
    pub unexpected: u64,
    /// First copies found in another partition than at the source.
    pub wrong_partition: u64,
    /// Per destination partition whose first copies are not in the source's
    /// order, the first place where that shows.
    pub out_of_order: Vec<String>,
}

impl IdReport {
    /// Nothing lost, nothing foreign, nothing misplaced or reordered:
    /// what at-least-once promises (duplicates allowed).
    pub fn at_least_once(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.wrong_partition == 0
            && self.out_of_order.is_empty()
    }

    /// [`Self::at_least_once`] and no duplicates either.
    pub fn exactly_once(&self) -> bool {
        self.at_least_once() && self.duplicates == 0
    }
}

impl fmt::Display for IdReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source {} records ({} without an id), destination {}: lost {}{}, duplicates {}, \
             unexpected {}, in the wrong partition {}",
            self.source_records,
            self.source_without_id,
            self.destination_records,
            self.lost,
            if self.lost_examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {:?})", self.lost_examples)
            },
            self.duplicates,
            self.unexpected,
            self.wrong_partition
        )?;
        for o in &self.out_of_order {
            write!(f, "; out of order: {o}")?;
        }
        Ok(())
    }
}

/// The id of a value written as `id-<n>` or `id-<n>|<anything>`.
pub fn value_id(value: Option<&[u8]>) -> Option<u64> {
    let text = std::str::from_utf8(value?).ok()?;
    text.strip_prefix("id-")?.split('|').next()?.parse().ok()
}

/// Reads `source_topic` on `source` and `destination_topic` on
/// `destination` in full and compares them by the id `id_of` finds in each
/// record. Partition `p` is expected to be copied to partition `p`.
pub fn count_by_id<F>(
    source: &ClusterSpec,
    destination: &ClusterSpec,
    source_topic: &str,
    destination_topic: &str,
    id_of: F,
) -> Result<IdReport, VerifyError>
where
    F: Fn(&BorrowedMessage<'_>) -> Option<u64>,
{
    let mut report = IdReport::default();
    let no_progress = |_: u64| {};

    // Destination watermarks first: whatever is copied meanwhile is then on
    // the source side of the comparison, never a surprise on the other.
    let destination_reader = ClusterReader::new(destination)?;
    let destination_partitions = partition_counts(destination)?
        .get(destination_topic)
        .copied()
        .unwrap_or(0);
    let destination_ranges = destination_reader.ranges(
        destination_topic,
        &(0..destination_partitions).collect::<Vec<_>>(),
        TimeFilter::default(),
    )?;
    let source_reader = ClusterReader::new(source)?;
    let source_partitions = partition_counts(source)?
        .get(source_topic)
        .copied()
        .ok_or_else(|| {
            VerifyError::Cluster(format!(
                "cluster `{}`: topic `{source_topic}` does not exist",
                source.alias
            ))
        })?;
    let source_ranges = source_reader.ranges(
        source_topic,
        &(0..source_partitions).collect::<Vec<_>>(),
        TimeFilter::default(),
    )?;

    // Id -> (source partition, position in it).
    let mut at_source: HashMap<u64, (i32, u64)> = HashMap::new();
    for (p, range) in (0..source_partitions).zip(source_ranges) {
        let mut stream =
            source_reader.read(source_topic, p, range, TimeFilter::default(), &no_progress)?;
        let mut position = 0u64;
        while let Some(m) = stream.next_message() {
            let m = m?;
            report.source_records += 1;
            match id_of(&m) {
                Some(id) => {
                    at_source.insert(id, (p, position));
                    position += 1;
                }
                None => report.source_without_id += 1,
            }
        }
    }

    let mut copies: HashMap<u64, u32> = HashMap::with_capacity(at_source.len());
    for (p, range) in (0..destination_partitions).zip(destination_ranges) {
        read_destination_partition(
            &destination_reader,
            destination_topic,
            p,
            range,
            &id_of,
            &at_source,
            &mut copies,
            &mut report,
        )?;
    }

    let mut lost: Vec<u64> = at_source
        .keys()
        .filter(|id| !copies.contains_key(id))
        .copied()
        .collect();
    lost.sort_unstable();
    report.lost = lost.len() as u64;
    report.lost_examples = lost.into_iter().take(EXAMPLES).collect();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn read_destination_partition<F>(
    reader: &ClusterReader,
    topic: &str,
    p: i32,
    range: OffsetRange,
    id_of: &F,
    at_source: &HashMap<u64, (i32, u64)>,
    copies: &mut HashMap<u64, u32>,
    report: &mut IdReport,
) -> Result<(), VerifyError>
where
    F: Fn(&BorrowedMessage<'_>) -> Option<u64>,
{
    let no_progress = |_: u64| {};
    let mut stream = reader.read(topic, p, range, TimeFilter::default(), &no_progress)?;
    let mut last_position: Option<u64> = None;
    let mut reordered = false;
    while let Some(m) = stream.next_message() {
        let m = m?;
        report.destination_records += 1;
        let Some(id) = id_of(&m) else {
            report.unexpected += 1;
            continue;
        };
        let count = copies.entry(id).or_insert(0);
        *count += 1;
        if *count > 1 {
            report.duplicates += 1;
            continue;
        }
        match at_source.get(&id) {
            None => report.unexpected += 1,
            Some(&(sp, _)) if sp != p => report.wrong_partition += 1,
            Some(&(_, position)) => {
                if let Some(last) = last_position.filter(|&last| position < last) {
                    if !reordered {
                        reordered = true;
                        report.out_of_order.push(format!(
                            "partition {p}: id {id} (source position {position}) is copied \
                             after source position {last}, at destination offset {}",
                            m.offset()
                        ));
                    }
                }
                last_position = Some(last_position.map_or(position, |l| l.max(position)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ids_are_read_with_or_without_padding() {
        assert_eq!(value_id(Some(b"id-42|xxxx")), Some(42));
        assert_eq!(value_id(Some(b"id-7")), Some(7));
        assert_eq!(value_id(Some(b"id-x|")), None);
        assert_eq!(value_id(Some(b"other")), None);
        assert_eq!(value_id(None), None);
    }

    #[test]
    fn the_report_reads_well_and_judges_the_guarantees() {
        let mut r = IdReport {
            source_records: 10,
            destination_records: 12,
            duplicates: 2,
            ..IdReport::default()
        };
        assert!(r.at_least_once() && !r.exactly_once());
        r.lost = 1;
        r.lost_examples = vec![3];
        assert!(!r.at_least_once());
        let text = r.to_string();
        assert!(text.contains("lost 1 (e.g. [3])"), "{text}");
        assert!(text.contains("duplicates 2"), "{text}");
    }
}
