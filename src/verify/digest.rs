//! A record's content as one 128-bit number, and a partition's as another.
//!
//! The record digest covers the key, the value, the headers in order
//! (duplicates included) and the timestamp's value in milliseconds, each
//! length-prefixed so that no two different records encode alike (a null key
//! differs from an empty one, a header moved from one record field to another
//! changes the digest). The offset is not part of it: copies live at other
//! offsets. Neither is the timestamp's type: a source topic with
//! `LogAppendTime` is copied as `CreateTime` records carrying the same times.
//!
//! The hash is XXH3-128: fast on large values, and 128 bits make an
//! accidental collision between different records practically impossible.

use xxhash_rust::xxh3::Xxh3Default;

/// The digest of one record's content.
pub type Digest = u128;

/// Tags that separate absent from present fields in the encoding.
const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

/// The digest of a record's content. `headers` in the record's order.
pub fn record_digest<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    timestamp_ms: Option<i64>,
) -> Digest {
    let mut h = Xxh3Default::new();
    match timestamp_ms {
        None => h.update(&[ABSENT]),
        Some(ms) => {
            h.update(&[PRESENT]);
            h.update(&ms.to_le_bytes());
        }
    }
    bytes_field(&mut h, key);
    bytes_field(&mut h, value);
    let mut count: u64 = 0;
    for (name, value) in headers {
        count += 1;
        bytes_field(&mut h, Some(name.as_bytes()));
        bytes_field(&mut h, value);
    }
    // The count last: "no headers" and "one empty header" differ by it too.
    h.update(&count.to_le_bytes());
    h.digest128()
}

fn bytes_field(h: &mut Xxh3Default, field: Option<&[u8]>) {
    match field {
        None => h.update(&[ABSENT]),
        Some(bytes) => {
            h.update(&[PRESENT]);
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
}

/// The digest of a sequence of records, in order: two partitions with equal
/// sequence digests hold the same records in the same order.
#[derive(Clone)]
pub struct SequenceDigest {
    hasher: Xxh3Default,
    records: u64,
}

impl Default for SequenceDigest {
    fn default() -> Self {
        Self {
            hasher: Xxh3Default::new(),
            records: 0,
        }
    }
}

impl SequenceDigest {
    /// Adds the next record.
    pub fn push(&mut self, record: Digest) {
        self.hasher.update(&record.to_le_bytes());
        self.records += 1;
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The digest of everything added so far.
    pub fn digest(&self) -> Digest {
        self.hasher.digest128()
    }
}

/// A digest as 32 hex digits, for people.
pub fn hex(digest: Digest) -> String {
    format!("{digest:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        ts: Option<i64>,
    ) -> Digest {
        record_digest(key, value, headers.iter().copied(), ts)
    }

    #[test]
    fn equal_records_have_equal_digests() {
        let h: &[(&str, Option<&[u8]>)] = &[("a", Some(b"1")), ("a", None)];
        assert_eq!(
            d(Some(b"k"), Some(b"v"), h, Some(5)),
            d(Some(b"k"), Some(b"v"), h, Some(5))
        );
    }

    #[test]
    fn every_field_and_its_absence_count() {
        let base = d(Some(b"k"), Some(b"v"), &[("h", Some(b"x"))], Some(1));
        let variants = [
            d(None, Some(b"v"), &[("h", Some(b"x"))], Some(1)),
            d(Some(b""), Some(b"v"), &[("h", Some(b"x"))], Some(1)),
            d(Some(b"k"), None, &[("h", Some(b"x"))], Some(1)),
            d(Some(b"k"), Some(b""), &[("h", Some(b"x"))], Some(1)),
            d(Some(b"k"), Some(b"v"), &[], Some(1)),
            d(Some(b"k"), Some(b"v"), &[("h", None)], Some(1)),
            d(Some(b"k"), Some(b"v"), &[("h", Some(b""))], Some(1)),
            d(
                Some(b"k"),
                Some(b"v"),
                &[("h", Some(b"x")), ("h", Some(b"x"))],
                Some(1),
            ),
            d(Some(b"k"), Some(b"v"), &[("H", Some(b"x"))], Some(1)),
            d(Some(b"k"), Some(b"v"), &[("h", Some(b"x"))], Some(2)),
            d(Some(b"k"), Some(b"v"), &[("h", Some(b"x"))], None),
            // Bytes moved between fields.
            d(Some(b"kv"), Some(b""), &[("h", Some(b"x"))], Some(1)),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, base, "variant {i}");
        }
    }

    #[test]
    fn header_order_counts() {
        let ab = d(None, None, &[("a", Some(b"1")), ("b", Some(b"2"))], None);
        let ba = d(None, None, &[("b", Some(b"2")), ("a", Some(b"1"))], None);
        assert_ne!(ab, ba);
    }

    #[test]
    fn sequence_digest_depends_on_order() {
        let (a, b) = (1u128, 2u128);
        let mut ab = SequenceDigest::default();
        ab.push(a);
        ab.push(b);
        let mut ba = SequenceDigest::default();
        ba.push(b);
        ba.push(a);
        assert_ne!(ab.digest(), ba.digest());
        assert_eq!(ab.records(), 2);
        assert_eq!(hex(1).len(), 32);
    }
}
