//! Lining up a source partition with its copy, record by record, in bounded
//! memory.
//!
//! # By position (the default)
//! The n-th record read from the source range should be the n-th read from
//! the destination range. Both are read in offset order as streams of
//! [`Item`]s; offsets themselves are not compared, since a copy's offsets
//! differ wherever transaction markers, aborted records or compaction left
//! gaps on either side (a `read_committed` reader sees none of those, so they
//! never take a position).
//!
//! When the n-th records differ, [`align_by_position`] looks for the reason
//! within a window of `window` records on each side:
//! - the destination record equals a source record aligned recently (within
//!   the last `window`): a **duplicate**, as an at-least-once replay after a
//!   crash writes;
//! - it equals a source record further ahead (within the next `window`): the
//!   source records in between are **missing**;
//! - neither: an **extra** record, not from the source (or changed on the way).
//!
//! Source records never reached when the destination ends are missing. Only
//! digests are held, never records: memory is about 80 bytes per record of
//! window on each side. A gap or replay longer than the window shows up as
//! extra and missing records rather than as a gap or duplicates.
//!
//! # By offset mapping
//! Where a flow records which destination offset each source offset was
//! written to, [`align_by_mapping`] compares exactly those pairs. Exactly-once
//! flows store their progress on the destination (`strait.offsets`); once
//! they store a full mapping, an [`OffsetMapping`] over it plugs in here
//! through [`Alignment::Mapping`] without changing the reading or the report.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::digest::{Digest, SequenceDigest};

/// One record as the comparison sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its offset in its own partition.
    pub offset: i64,
    /// Its content ([`super::digest::record_digest`]).
    pub digest: Digest,
}

/// Where a source record went: the destination offset each source offset of
/// a partition was written to.
pub trait OffsetMapping: Send + Sync {
    /// The destination offset the record at `source_offset` of
    /// `source_topic`[`partition`] was written to, if known.
    fn destination_offset(
        &self,
        source_topic: &str,
        partition: i32,
        source_offset: i64,
    ) -> Option<i64>;
}

/// How records are lined up.
#[derive(Clone)]
pub enum Alignment {
    /// By position, looking `window` records ahead and behind for gaps and
    /// duplicates.
    Position {
        /// Records of look-ahead and look-behind on each side.
        window: usize,
    },
    /// By a stored source-to-destination offset mapping.
    Mapping(Arc<dyn OffsetMapping>),
}

impl fmt::Debug for Alignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alignment::Position { window } => write!(f, "Position {{ window: {window} }}"),
            Alignment::Mapping(_) => f.write_str("Mapping(..)"),
        }
    }
}

/// What one partition's comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Records read from the source range.
    pub source_records: u64,
    /// Records read from the destination range.
    pub destination_records: u64,
    /// Source records found on the destination in place.
    pub matched: u64,
    /// Source records not found on the destination.
    pub missing: u64,
    /// Destination records repeating a source record already matched.
    pub duplicated: u64,
    /// Destination records matching no source record.
    pub extra: u64,
    /// Source offset of the first missing record.
    pub first_missing: Option<i64>,
    /// Destination offset of the first duplicate.
    pub first_duplicated: Option<i64>,
    /// Destination offset of the first extra record.
    pub first_extra: Option<i64>,
    /// Digest of the source range, in order.
    #[serde(serialize_with = "as_hex")]
    pub source_digest: Digest,
    /// Digest of the destination range, in order.
    #[serde(serialize_with = "as_hex")]
    pub destination_digest: Digest,
}

fn as_hex<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::digest::hex(*d))
}

impl Comparison {
    /// Every source record is on the destination, once, in order, and
    /// nothing else is.
    pub fn in_sync(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.extra == 0
    }

    fn missing(&mut self, source: &Item) {
        self.missing += 1;
        self.first_missing.get_or_insert(source.offset);
    }

    fn duplicated(&mut self, destination: &Item) {
        self.duplicated += 1;
        self.first_duplicated.get_or_insert(destination.offset);
    }

    fn extra(&mut self, destination: &Item) {
        self.extra += 1;
        self.first_extra.get_or_insert(destination.offset);
    }
}

/// A multiset of digests in arrival order, at most `limit` long.
struct Window {
    order: VecDeque<Item>,
    counts: HashMap<Digest, u32>,
}

impl Window {
    fn new() -> Self {
        Self {
            order: VecDeque::new(),
            counts: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn contains(&self, digest: Digest) -> bool {
        self.counts.contains_key(&digest)
    }

    fn front(&self) -> Option<&Item> {
        self.order.front()
    }

    fn push(&mut self, item: Item) {
        *self.counts.entry(item.digest).or_insert(0) += 1;
        self.order.push_back(item);
    }

    fn pop(&mut self) -> Option<Item> {
        let item = self.order.pop_front()?;
        if let Some(n) = self.counts.get_mut(&item.digest) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&item.digest);
            }
        }
        Some(item)
    }
}

/// Lines up `source` and `destination` by position (see the module docs).
/// Stops at the first read error and returns it.
pub fn align_by_position<E>(
    source: impl IntoIterator<Item = Result<Item, E>>,
    destination: impl IntoIterator<Item = Result<Item, E>>,
    window: usize,
) -> Result<Comparison, E> {
    let window = window.max(1);
    let mut source = source.into_iter();
    let mut c = Comparison::default();
    let mut source_seq = SequenceDigest::default();
    let mut destination_seq = SequenceDigest::default();
    // Source records read but not lined up yet, and recently matched ones.
    let mut ahead = Window::new();
    let mut behind = Window::new();
    let mut source_done = false;

    let mut fill = |ahead: &mut Window, seq: &mut SequenceDigest| -> Result<(), E> {
        while !source_done && ahead.len() < window {
            match source.next() {
                Some(item) => {
                    let item = item?;
                    seq.push(item.digest);
                    ahead.push(item);
                }
                None => source_done = true,
            }
        }
        Ok(())
    };

    for d in destination {
        let d = d?;
        destination_seq.push(d.digest);
        fill(&mut ahead, &mut source_seq)?;
        let matched = |behind: &mut Window, s: Item| {
            behind.push(s);
            if behind.len() > window {
                behind.pop();
            }
        };
        if ahead.front().map(|s| s.digest) == Some(d.digest) {
            if let Some(s) = ahead.pop() {
                c.matched += 1;
                matched(&mut behind, s);
            }
        } else if behind.contains(d.digest) {
            // Replays are the usual reason; prefer them when content repeats.
            c.duplicated(&d);
        } else if ahead.contains(d.digest) {
            while let Some(s) = ahead.pop() {
                if s.digest == d.digest {
                    c.matched += 1;
                    matched(&mut behind, s);
                    break;
                }
                c.missing(&s);
            }
        } else {
            c.extra(&d);
        }
    }
    // The destination ended: whatever the source still has is missing.
    loop {
        fill(&mut ahead, &mut source_seq)?;
        if ahead.len() == 0 {
            break;
        }
        while let Some(s) = ahead.pop() {
            c.missing(&s);
        }
    }
    c.source_records = source_seq.records();
    c.destination_records = destination_seq.records();
    c.source_digest = source_seq.digest();
    c.destination_digest = destination_seq.digest();
    Ok(c)
}

/// Lines up `source` and `destination` by `mapping` (source offset to
/// destination offset; increasing with the source offset, as a flow copying
/// in order writes it). A source record whose destination offset is unknown,
/// or holds no record, or another record, is missing; destination records
/// no source record maps to are extra, or duplicated when they repeat the
/// record just matched.
pub fn align_by_mapping<E>(
    source: impl IntoIterator<Item = Result<Item, E>>,
    destination: impl IntoIterator<Item = Result<Item, E>>,
    mapping: impl Fn(i64) -> Option<i64>,
) -> Result<Comparison, E> {
    let mut destination = destination.into_iter();
    let mut c = Comparison::default();
    let mut source_seq = SequenceDigest::default();
    let mut destination_seq = SequenceDigest::default();
    let mut pending: Option<Item> = None;
    let mut last_matched: Option<Digest> = None;
    let mut next_destination =
        |pending: &mut Option<Item>, seq: &mut SequenceDigest| -> Result<Option<Item>, E> {
            if let Some(item) = pending.take() {
                return Ok(Some(item));
            }
            match destination.next() {
                Some(item) => {
                    let item = item?;
                    seq.push(item.digest);
                    Ok(Some(item))
                }
                None => Ok(None),
            }
        };
    let unmapped = |c: &mut Comparison, d: &Item, last: Option<Digest>| {
        if last == Some(d.digest) {
            c.duplicated(d);
        } else {
            c.extra(d);
        }
    };

    for s in source {
        let s = s?;
        source_seq.push(s.digest);
        let Some(target) = mapping(s.offset) else {
            c.missing(&s);
            continue;
        };
        loop {
            match next_destination(&mut pending, &mut destination_seq)? {
                Some(d) if d.offset < target => unmapped(&mut c, &d, last_matched),
                Some(d) if d.offset == target && d.digest == s.digest => {
                    c.matched += 1;
                    last_matched = Some(d.digest);
                    break;
                }
                Some(d) if d.offset == target => {
                    // Something else sits where the record should be.
                    c.missing(&s);
                    c.extra(&d);
                    break;
                }
                Some(d) => {
                    pending = Some(d);
                    c.missing(&s);
                    break;
                }
                None => {
                    c.missing(&s);
                    break;
                }
            }
        }
    }
    while let Some(d) = next_destination(&mut pending, &mut destination_seq)? {
        unmapped(&mut c, &d, last_matched);
    }
    c.source_records = source_seq.records();
    c.destination_records = destination_seq.records();
    c.source_digest = source_seq.digest();
    c.destination_digest = destination_seq.digest();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// Records with digests `ids`, at offsets from `first`.
    fn items(first: i64, ids: &[u128]) -> Vec<Result<Item, Infallible>> {
        ids.iter()
            .enumerate()
            .map(|(i, &digest)| {
                Ok(Item {
                    offset: first + i as i64,
                    digest,
                })
            })
            .collect()
    }

    fn by_position(src: &[u128], dst: &[u128], window: usize) -> Comparison {
        align_by_position(items(0, src), items(100, dst), window).unwrap()
    }

    fn counts(c: &Comparison) -> (u64, u64, u64, u64) {
        (c.matched, c.missing, c.duplicated, c.extra)
    }

    #[test]
    fn identical_partitions_are_in_sync() {
        let ids: Vec<u128> = (0..1000).collect();
        let c = by_position(&ids, &ids, 10);
        assert!(c.in_sync(), "{c:?}");
        assert_eq!(counts(&c), (1000, 0, 0, 0));
        assert_eq!((c.source_records, c.destination_records), (1000, 1000));
        assert_eq!(c.source_digest, c.destination_digest);
        let empty = by_position(&[], &[], 10);
        assert!(empty.in_sync());
    }

    #[test]
    fn a_lagging_copy_misses_the_tail() {
        let c = by_position(&[1, 2, 3, 4, 5], &[1, 2, 3], 2);
        assert_eq!(counts(&c), (3, 2, 0, 0));
        assert_eq!(c.first_missing, Some(3));
        assert_ne!(c.source_digest, c.destination_digest);
    }

    #[test]
    fn a_gap_inside_the_window_is_missing_records() {
        let c = by_position(&[1, 2, 3, 4, 5, 6], &[1, 2, 5, 6], 3);
        assert_eq!(counts(&c), (4, 2, 0, 0));
        assert_eq!(c.first_missing, Some(2), "source offset of record 3");
    }

    #[test]
    fn a_replay_is_duplicates() {
        // Crash after 1..=4 were written, restart from the commit at 2.
        let c = by_position(&[1, 2, 3, 4, 5, 6], &[1, 2, 3, 4, 3, 4, 5, 6], 4);
        assert_eq!(counts(&c), (6, 0, 2, 0));
        assert_eq!(c.first_duplicated, Some(104), "destination offset");
    }

    #[test]
    fn a_replay_of_repeated_content_is_still_duplicates() {
        let c = by_position(&[7, 8, 9, 7, 6], &[7, 8, 7, 8, 9, 7, 6], 4);
        assert_eq!(counts(&c), (5, 0, 2, 0));
    }

    #[test]
    fn foreign_records_are_extra() {
        let c = by_position(&[1, 2, 3], &[1, 99, 2, 3, 98], 2);
        assert_eq!(counts(&c), (3, 0, 0, 2));
        assert_eq!(c.first_extra, Some(101));
    }

    #[test]
    fn a_changed_record_is_one_missing_and_one_extra() {
        let c = by_position(&[1, 2, 3], &[1, 20, 3], 2);
        assert_eq!(counts(&c), (2, 1, 0, 1));
    }

    #[test]
    fn a_gap_longer_than_the_window_is_reported_as_missing_and_extra() {
        let src: Vec<u128> = (0..20).collect();
        let dst: Vec<u128> = (0..5).chain(15..20).collect();
        let wide = by_position(&src, &dst, 100);
        assert_eq!(counts(&wide), (10, 10, 0, 0));
        let narrow = by_position(&src, &dst, 3);
        assert_eq!(narrow.matched + narrow.missing, 20);
        assert!(!narrow.in_sync());
    }

    #[test]
    fn read_errors_stop_the_comparison() {
        let src = vec![
            Ok(Item {
                offset: 0,
                digest: 1,
            }),
            Err("broken"),
        ];
        let dst = vec![Ok(Item {
            offset: 0,
            digest: 1,
        })];
        assert_eq!(align_by_position(src, dst, 10), Err("broken"));
    }

    #[test]
    fn by_mapping_compares_the_mapped_pairs() {
        // Source offsets 0..5 went to destination offsets 10, 12, 14, ... (a
        // transaction marker after each record).
        let map = |o: i64| Some(10 + 2 * o);
        let src = items(0, &[1, 2, 3, 4, 5]);
        let dst = |ids: &[(i64, u128)]| -> Vec<Result<Item, Infallible>> {
            ids.iter()
                .map(|&(offset, digest)| Ok(Item { offset, digest }))
                .collect()
        };
        let all = dst(&[(10, 1), (12, 2), (14, 3), (16, 4), (18, 5)]);
        let c = align_by_mapping(src.clone(), all, map).unwrap();
        assert!(c.in_sync(), "{c:?}");

        let lost_and_changed = dst(&[(10, 1), (14, 30), (16, 4), (17, 4), (18, 5), (30, 9)]);
        let c = align_by_mapping(src.clone(), lost_and_changed, map).unwrap();
        assert_eq!(counts(&c), (3, 2, 1, 2), "{c:?}");
        assert_eq!(c.first_missing, Some(1));
        assert_eq!(c.first_duplicated, Some(17));

        let unknown = |o: i64| (o < 3).then_some(10 + 2 * o);
        let c = align_by_mapping(src, dst(&[(10, 1), (12, 2), (14, 3)]), unknown).unwrap();
        assert_eq!(counts(&c), (3, 2, 0, 0));
    }
}
