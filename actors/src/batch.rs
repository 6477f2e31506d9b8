//! A batch of source records on their way to the destination.
//!
//! A copier copies each record it reads out of the consumer's buffers into a
//! batch, and hands the batch to the destination actor. All keys, values and
//! headers of a batch share one byte buffer, so a batch costs a few
//! allocations however many records it holds.

use std::borrow::Cow;
use std::ops::Range;

use rdkafka::message::{Headers, Message};

/// Records read from one source partition, in offset order.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    records: Vec<Slot>,
    headers: Vec<HeaderSlot>,
}

#[derive(Debug)]
struct Slot {
    /// Where the record's bytes begin in `data`.
    start: usize,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: Range<usize>,
}

#[derive(Debug)]
struct HeaderSlot {
    name: Range<usize>,
    value: Option<Range<usize>>,
}

/// The widest framing of one header in a produce request: its name and
/// value lengths as varints.
pub const HEADER_OVERHEAD: usize = 10;

/// One record of a batch, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Offset in the source partition.
    pub offset: i64,
    /// The record's timestamp in ms since the epoch, if it has one.
    pub timestamp: Option<i64>,
    /// The key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// The value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    batch: &'a Batch,
    headers: &'a [HeaderSlot],
}

impl<'a> RecordView<'a> {
    /// The record's headers in their original order, duplicates included.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (Cow<'a, str>, Option<&'a [u8]>)> + 'a {
        // Names were copied from `&str`, so this never replaces anything.
        self.raw_headers()
            .map(|(name, value)| (String::from_utf8_lossy(name), value))
    }

    /// The record's headers as bytes, in their original order: for handing
    /// to librdkafka, which takes names with their length.
    pub fn raw_headers(&self) -> impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let batch = self.batch;
        self.headers.iter().map(move |h| {
            (
                &batch.data[h.name.clone()],
                h.value.clone().map(|r| &batch.data[r]),
            )
        })
    }

    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// The most bytes this record can take in a produce request (record
    /// format v2): its key, value and headers, plus the largest varint
    /// framing, as librdkafka counts it when it fills a request.
    pub fn wire_size(&self) -> usize {
        /// Length, attributes, timestamp and offset deltas, key and value
        /// lengths and header count, each at its widest
        /// (librdkafka's `RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`).
        const RECORD_OVERHEAD: usize = 36;
        let headers: usize = self
            .headers
            .iter()
            .map(|h| HEADER_OVERHEAD + h.name.len() + h.value.as_ref().map_or(0, Range::len))
            .sum();
        RECORD_OVERHEAD
            + self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + headers
    }
}

impl Batch {
    /// An empty batch with room for about `records` records of `bytes` bytes.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            records: Vec::with_capacity(records),
            headers: Vec::new(),
        }
    }

    /// Copies a source record into the batch.
    pub fn push<M: Message>(&mut self, message: &M) {
        let headers = message.headers();
        self.push_parts(
            message.offset(),
            message.timestamp().to_millis(),
            message.key(),
            message.payload(),
            headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value)),
        );
    }

    /// Copies a record of another batch into this one.
    pub fn push_view(&mut self, record: &RecordView<'_>) {
        self.push_parts(
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            record.headers(),
        );
    }

    fn push_parts<'h, N: AsRef<str>>(
        &mut self,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = (N, Option<&'h [u8]>)>,
    ) {
        let start = self.data.len();
        let key = key.map(|k| self.append(k));
        let value = value.map(|v| self.append(v));
        let first_header = self.headers.len();
        for (name, value) in headers {
            let name = self.append(name.as_ref().as_bytes());
            let value = value.map(|v| self.append(v));
            self.headers.push(HeaderSlot { name, value });
        }
        self.records.push(Slot {
            start,
            offset,
            timestamp,
            key,
            value,
            headers: first_header..self.headers.len(),
        });
    }

    /// Moves the records from index `at` on into a new batch.
    pub fn split_off(&mut self, at: usize) -> Batch {
        let mut rest = Batch::with_capacity(0, 0);
        if at >= self.records.len() {
            return rest;
        }
        for record in self.iter().skip(at) {
            rest.push_view(&record);
        }
        let first_moved = &self.records[at];
        let (data_end, headers_end) = (first_moved.start, first_moved.headers.start);
        self.records.truncate(at);
        self.headers.truncate(headers_end);
        self.data.truncate(data_end);
        rest
    }

    /// How many of the first records fit in one produce request that
    /// carries at most `bytes` (by [`RecordView::wire_size`]) and `records`
    /// records; at least one, however large.
    pub fn fitting(&self, bytes: usize, records: usize) -> usize {
        let mut filled = 0;
        for (i, record) in self.iter().enumerate() {
            let size = record.wire_size();
            if i > 0 && (i >= records || filled + size > bytes) {
                return i;
            }
            filled += size;
        }
        self.len()
    }

    /// Index of the first record at or after `offset` (the length if none).
    pub fn position_of(&self, offset: i64) -> usize {
        self.records.partition_point(|r| r.offset < offset)
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        start..self.data.len()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of keys, values and headers held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Offset of the first record.
    pub fn first_offset(&self) -> Option<i64> {
        self.records.first().map(|r| r.offset)
    }

    /// The offset after the last record: where reading resumes.
    pub fn next_offset(&self) -> Option<i64> {
        self.records.last().map(|r| r.offset + 1)
    }

    /// Timestamp of the first record.
    pub fn first_timestamp(&self) -> Option<i64> {
        self.records.first().and_then(|r| r.timestamp)
    }

    /// Timestamp of the last record.
    pub fn last_timestamp(&self) -> Option<i64> {
        self.records.last().and_then(|r| r.timestamp)
    }

    /// The records, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> + '_ {
        self.records.iter().map(move |r| RecordView {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.clone().map(|k| &self.data[k]),
            value: r.value.clone().map(|v| &self.data[v]),
            batch: self,
            headers: &self.headers[r.headers.clone()],
        })
    }

    /// True when a record at `offset` is in the batch.
    pub fn contains_offset(&self, offset: i64) -> bool {
        self.records.iter().any(|r| r.offset == offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn message(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> OwnedMessage {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "h",
                value: Some(&[0u8, 159, 146, 150][..]),
            })
            .insert(Header {
                key: "h",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "other",
                value: Some("x"),
            });
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            key.map(<[u8]>::to_vec),
            "t".into(),
            Timestamp::CreateTime(1_700_000_000_000 + offset),
            0,
            offset,
            Some(headers),
        )
    }

    #[test]
    fn keeps_keys_values_tombstones_headers_and_timestamps() {
        let mut b = Batch::with_capacity(4, 64);
        b.push(&message(7, Some(b"k"), Some(b"v")));
        b.push(&message(8, None, None));
        b.push(&message(10, Some(b""), Some(b"")));
        assert_eq!(b.len(), 3);
        assert_eq!(b.first_offset(), Some(7));
        assert_eq!(b.next_offset(), Some(11));
        assert!(b.contains_offset(8) && !b.contains_offset(9));

        let recs: Vec<_> = b.iter().collect();
        assert_eq!(recs[0].key, Some(&b"k"[..]));
        assert_eq!(recs[0].value, Some(&b"v"[..]));
        assert_eq!(recs[1].key, None, "null key stays null");
        assert_eq!(recs[1].value, None, "tombstone stays a tombstone");
        assert_eq!(recs[2].key, Some(&b""[..]), "empty key is not null");
        assert_eq!(recs[2].timestamp, Some(1_700_000_000_010));

        let headers: Vec<_> = recs[1].headers().collect();
        assert_eq!(headers.len(), 3);
        drop(recs);
        assert_eq!(b.position_of(9), 2);
        let rest = b.split_off(1);
        assert_eq!((b.len(), rest.len()), (1, 2));
        assert_eq!(b.next_offset(), Some(8));
        assert_eq!(
            b.bytes(),
            1 + 1 + (1 + 4) + 1 + (5 + 1),
            "only the first record's key, value and headers are left"
        );
        assert_eq!(rest.first_offset(), Some(8));
        let moved: Vec<_> = rest.iter().collect();
        assert_eq!(moved[0].value, None, "a tombstone moves as a tombstone");
        assert_eq!(
            moved[0].headers().count(),
            3,
            "headers move with their record"
        );
        assert_eq!(moved[1].key, Some(&b""[..]));
        let b = rest;
        let recs: Vec<_> = b.iter().collect();
        let headers: Vec<_> = recs[0].headers().collect();
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[0].0, "h");
        assert_eq!(headers[0].1, Some(&[0u8, 159, 146, 150][..]));
        assert_eq!(
            headers[1].0, "h",
            "duplicate header names are kept in order"
        );
        assert_eq!(headers[1].1, None);
        assert_eq!(headers[2].0, "other");
    }

    #[test]
    fn wire_size_counts_key_value_headers_and_their_framing() {
        let mut b = Batch::with_capacity(2, 64);
        b.push(&message(1, Some(b"key"), Some(b"value")));
        b.push(&OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            2,
            None,
        ));
        let recs: Vec<_> = b.iter().collect();
        // Headers: "h" with 4 bytes, "h" with none, "other" with "x".
        let headers = (10 + 1 + 4) + (10 + 1) + (10 + 5 + 1);
        assert_eq!(recs[0].wire_size(), 36 + 3 + 5 + headers);
        assert_eq!(
            recs[1].wire_size(),
            36,
            "a tombstone with no key is framing only"
        );
    }

    #[test]
    fn fitting_counts_the_records_one_produce_request_carries() {
        let mut b = Batch::with_capacity(4, 4096);
        for offset in 0..4 {
            b.push(&message(offset, None, Some(&[7u8; 1000])));
        }
        let size = b.iter().next().map(|r| r.wire_size()).unwrap_or_default();
        assert_eq!(b.fitting(usize::MAX, usize::MAX), 4, "all fit");
        assert_eq!(b.fitting(2 * size, usize::MAX), 2, "by bytes");
        assert_eq!(b.fitting(2 * size - 1, usize::MAX), 1, "a byte short");
        assert_eq!(b.fitting(usize::MAX, 3), 3, "by records");
        assert_eq!(b.fitting(1, 1), 1, "one record however large");
        assert_eq!(Batch::with_capacity(0, 0).fitting(10, 10), 0);
    }
}
