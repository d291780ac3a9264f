//! How the keyspace is laid out in RocksDB: one column family, four kinds of
//! entries told apart by their first byte.
//!
//! ```text
//! M name                              -> meta value (applied LSN, key count, keys with an expiry,
//!                                        layout)
//! H scan_hash u64 BE | user_key       -> key entry: kind u8 | expire_at_ms u64 BE | payload
//!                                        payload: string bytes (kind 1) | field count u64 BE (kind 2)
//!                                                 | string length u64 BE (kind 3, a long string)
//! F key_len u32 BE | user_key | field -> field value (hashes), or chunk
//!                                        (long strings: field = chunk index u32 BE)
//! E expire_at_ms u64 BE | user_key    -> empty (expiry index, for the active sweep)
//! ```
//!
//! One column family keeps every flush atomic: the applied LSN never
//! reaches disk without the data it covers (with RocksDB's own WAL off,
//! several column families would need `atomic_flush`).
//!
//! Key entries are ordered by [`scan_hash`] of the key, then the key: a
//! SCAN cursor is the hash where the next call goes on, which every node
//! and every restart of a node reads alike, so a cursor needs no memory on
//! the server. Layout 1 stored them as `K user_key`; an engine opening
//! such a keyspace moves them ([`LEGACY_KEY`]).

use bytes::Bytes;

use crate::error::{EngineError, Result};

pub(crate) const KEY: u8 = b'H';
/// Key entries as layout 1 stored them (`K user_key`), moved to [`KEY`]
/// rows when an engine opens a keyspace of that layout.
pub(crate) const LEGACY_KEY: u8 = b'K';
pub(crate) const FIELD: u8 = b'F';
pub(crate) const EXPIRY: u8 = b'E';

pub(crate) const META_APPLIED_LSN: &[u8] = b"Mapplied_lsn";
pub(crate) const META_KEY_COUNT: &[u8] = b"Mkey_count";
/// [`Expiring`]: count u64 BE | sum of expiry times u128 BE.
pub(crate) const META_EXPIRING: &[u8] = b"Mexpiring";
/// The layout the keyspace is stored in, u64 BE ([`LAYOUT`]); missing in
/// a keyspace of layout 1.
pub(crate) const META_LAYOUT: &[u8] = b"Mlayout";
/// The layout this version stores: key entries by [`scan_hash`].
pub(crate) const LAYOUT: u64 = 2;

const KIND_STRING: u8 = 1;
const KIND_HASH: u8 = 2;
const KIND_LONG_STRING: u8 = 3;

/// Strings longer than this are stored in chunks of [`STRING_CHUNK_BYTES`]
/// (the last one shorter), each a row of its own, beside an entry that
/// holds the length: an APPEND or SETRANGE rewrites the chunks it touches,
/// not the whole string, and a read of the type, expiry or length reads no
/// chunk. Shorter strings are one row, read with one lookup (and held in
/// the read cache). Which form a string takes follows from its length
/// alone, so two nodes that hold the same data store the same rows.
pub const LONG_STRING_BYTES: usize = 64 << 10;
/// The size of a long string's chunks: what an APPEND to one rewrites at
/// most (twice that across a boundary).
pub const STRING_CHUNK_BYTES: usize = 4 << 10;

/// The keys that have an expiry (INFO's `expires`), and the sum of their
/// expiry times, from which their average time to live follows (`avg_ttl`).
/// Kept up to date by every applied write, in the same RocksDB write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiring {
    pub keys: u64,
    pub sum_ms: u128,
}

impl Expiring {
    pub(crate) fn add(&mut self, expire_at_ms: u64) {
        if expire_at_ms != 0 {
            self.keys += 1;
            self.sum_ms += u128::from(expire_at_ms);
        }
    }

    /// Saturating: a count off by one (from a bug) must not stop writes.
    pub(crate) fn remove(&mut self, expire_at_ms: u64) {
        if expire_at_ms != 0 {
            self.keys = self.keys.saturating_sub(1);
            self.sum_ms = self.sum_ms.saturating_sub(u128::from(expire_at_ms));
        }
    }

    /// The average time left to the keys with an expiry at `now_ms`, in ms
    /// (0 with none, or when they are due on average).
    pub fn avg_ttl_ms(&self, now_ms: u64) -> u64 {
        if self.keys == 0 {
            return 0;
        }
        let avg = self.sum_ms / u128::from(self.keys);
        u64::try_from(avg.saturating_sub(u128::from(now_ms))).unwrap_or(u64::MAX)
    }

    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.keys.to_be_bytes());
        out[8..].copy_from_slice(&self.sum_ms.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Expiring> {
        let bytes: &[u8; 24] = bytes.try_into().ok()?;
        Some(Expiring {
            keys: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            sum_ms: u128::from_be_bytes(bytes[8..].try_into().expect("16 bytes")),
        })
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(Bytes),
    /// A hash, by its field count; fields are read one by one.
    Hash {
        len: u64,
    },
    /// A string longer than [`LONG_STRING_BYTES`], by its length; its
    /// bytes are read by chunk ([`crate::string_bytes`]).
    LongString {
        len: u64,
    },
}

/// A key's value and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Value,
    /// Absolute expiry in ms since the Unix epoch; 0 for none.
    pub expire_at_ms: u64,
}

impl Entry {
    /// Whether the key is logically gone at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }

    /// Redis's name of the type: `string` or `hash`.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::String(_) | Value::LongString { .. } => "string",
            Value::Hash { .. } => "hash",
        }
    }

    /// A string's length (0 for a hash).
    pub fn string_len(&self) -> u64 {
        match &self.value {
            Value::String(s) => s.len() as u64,
            Value::LongString { len } => *len,
            Value::Hash { .. } => 0,
        }
    }

    /// Whether other rows hold parts of it: a hash's fields or a long
    /// string's chunks (removed with the key).
    pub(crate) fn has_rows(&self) -> bool {
        matches!(self.value, Value::Hash { .. } | Value::LongString { .. })
    }
}

/// The largest [`scan_hash`] (53 bits: a SCAN cursor is one, and clients
/// that hold numbers as doubles keep 53 bits exactly).
pub const SCAN_HASH_MAX: u64 = (1 << 53) - 1;

/// Where `key` stands in the order of key entries, and so the SCAN cursor
/// of a call that goes on at it: from 1 to [`SCAN_HASH_MAX`] (0 is the
/// cursor of a scan's start and end). Part of the stored layout: it must
/// never change.
pub fn scan_hash(key: &[u8]) -> u64 {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ (key.len() as u64).wrapping_mul(MUL);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(MUL).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(MUL);
    // splitmix64's finish: every bit of the key moves the top bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11).max(1)
}

/// The first row key of the entries at or after scan position `from`.
pub(crate) fn key_position(from: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = KEY;
    k[1..].copy_from_slice(&from.to_be_bytes());
    k
}

/// A key entry's row key: its user key and [`scan_hash`], or `None` if it
/// is not one.
pub(crate) fn split_key_row(row: &[u8]) -> Option<(u64, &[u8])> {
    if row.first() != Some(&KEY) || row.len() < 9 {
        return None;
    }
    let hash = u64::from_be_bytes(row[1..9].try_into().expect("8 bytes"));
    Some((hash, &row[9..]))
}

pub(crate) fn key_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    key_key_into(key, &mut k);
    k
}

/// [`key_key`], appended to `k`.
pub(crate) fn key_key_into(key: &[u8], k: &mut Vec<u8>) {
    k.reserve(9 + key.len());
    k.push(KEY);
    k.extend_from_slice(&scan_hash(key).to_be_bytes());
    k.extend_from_slice(key);
}

/// The prefix of every field of the hash at `key`.
pub(crate) fn field_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(FIELD);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub(crate) fn field_key(key: &[u8], field: &[u8]) -> Vec<u8> {
    let mut k = field_prefix(key);
    k.extend_from_slice(field);
    k
}

/// What RocksDB keeps beside each row's key and value, in bytes: the
/// internal key's sequence number and type (8) and the lengths it stores
/// with them (about 8).
pub const ROW_OVERHEAD_BYTES: u64 = 16;

/// The bytes the rows of `key`, whose entry is `entry`, take as stored
/// (before RocksDB compresses its files): its entry, its expiry index row,
/// and a long string's chunks or a hash's fields. `sample` is some of a
/// hash's fields (the first, say); their mean size stands for all of them.
pub fn stored_bytes(key: &[u8], entry: &Entry, sample: &[(Bytes, Bytes)]) -> u64 {
    let key_len = key.len() as u64;
    let row = |k: u64, v: u64| k + v + ROW_OVERHEAD_BYTES;
    // Kind and expiry, then the string's bytes or a count or a length.
    let header = 1 + 8;
    let mut bytes = match &entry.value {
        Value::String(s) => row(9 + key_len, header + s.len() as u64),
        Value::Hash { .. } | Value::LongString { .. } => row(9 + key_len, header + 8),
    };
    if entry.expire_at_ms != 0 {
        bytes += row(1 + 8 + key_len, 0);
    }
    let field_row = |field: u64, value: u64| row(1 + 4 + key_len + field, value);
    match &entry.value {
        Value::String(_) => {}
        Value::LongString { len } => {
            bytes += len.div_ceil(STRING_CHUNK_BYTES as u64) * field_row(4, 0) + len;
        }
        Value::Hash { len } => {
            if !sample.is_empty() {
                let sampled: u64 = sample
                    .iter()
                    .map(|(f, v)| field_row(f.len() as u64, v.len() as u64))
                    .sum();
                bytes += sampled * len / sample.len() as u64;
            }
        }
    }
    bytes
}

pub(crate) fn expiry_key(expire_at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(EXPIRY);
    k.extend_from_slice(&expire_at_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The smallest byte string greater than every string starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// The stored form of an entry, appended to `v`.
pub(crate) fn encode_entry_into(entry: &Entry, v: &mut Vec<u8>) {
    match &entry.value {
        Value::String(s) => encode_string_into(s, entry.expire_at_ms, v),
        Value::Hash { len } => encode_counted_into(KIND_HASH, *len, entry.expire_at_ms, v),
        Value::LongString { len } => {
            encode_counted_into(KIND_LONG_STRING, *len, entry.expire_at_ms, v)
        }
    }
}

/// The stored form of a string entry, appended to `v`.
pub(crate) fn encode_string_into(s: &[u8], expire_at_ms: u64, v: &mut Vec<u8>) {
    v.reserve(9 + s.len());
    v.push(KIND_STRING);
    v.extend_from_slice(&expire_at_ms.to_be_bytes());
    v.extend_from_slice(s);
}

/// The stored form of a hash entry of `len` fields, appended to `v`.
pub(crate) fn encode_hash_into(len: u64, expire_at_ms: u64, v: &mut Vec<u8>) {
    encode_counted_into(KIND_HASH, len, expire_at_ms, v);
}

/// The stored form of a long string's entry of `len` bytes, appended to `v`.
pub(crate) fn encode_long_string_into(len: u64, expire_at_ms: u64, v: &mut Vec<u8>) {
    encode_counted_into(KIND_LONG_STRING, len, expire_at_ms, v);
}

/// An entry whose payload is a count (a hash's fields, a long string's
/// bytes).
fn encode_counted_into(kind: u8, count: u64, expire_at_ms: u64, v: &mut Vec<u8>) {
    v.push(kind);
    v.extend_from_slice(&expire_at_ms.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
}

/// The field under which a long string keeps chunk `index`.
pub(crate) fn chunk_field(index: u64) -> [u8; 4] {
    u32::try_from(index)
        .expect("a string within the largest length")
        .to_be_bytes()
}

/// The chunks of a long string `value`, each with its field: slices of it.
pub(crate) fn chunks(value: &Bytes) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
    value
        .chunks(STRING_CHUNK_BYTES)
        .enumerate()
        .map(|(index, chunk)| {
            let field = Bytes::copy_from_slice(&chunk_field(index as u64));
            (field, value.slice_ref(chunk))
        })
}

/// The chunks a long string of `len` bytes is stored in: its bytes from
/// `index * STRING_CHUNK_BYTES`, [`STRING_CHUNK_BYTES`] of them or the rest.
pub(crate) fn chunk_len(len: u64, index: u64) -> usize {
    let start = index * STRING_CHUNK_BYTES as u64;
    len.saturating_sub(start).min(STRING_CHUNK_BYTES as u64) as usize
}

/// Whether a string of `len` bytes is stored in chunks.
pub(crate) fn is_long(len: u64) -> bool {
    len > LONG_STRING_BYTES as u64
}

/// The bytes `range` of a long string of `len` bytes from its chunks
/// (`(field, chunk)`, in order, of the chunks that overlap the range; a
/// chunk missing or short reads as zeros).
pub(crate) fn assemble(
    len: u64,
    chunks: &[(Bytes, Bytes)],
    range: std::ops::Range<u64>,
) -> Result<Bytes> {
    let range = range.start.min(len)..range.end.min(len);
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for (field, chunk) in chunks {
        let index = <[u8; 4]>::try_from(field.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| EngineError::CorruptEntry {
                key: format!("a chunk named {field:?}"),
            })?;
        let start = u64::from(index) * STRING_CHUNK_BYTES as u64;
        let from = (range.start + out.len() as u64).max(start);
        let to = range.end.min(start + chunk.len() as u64);
        if from < to {
            out.resize((from - range.start) as usize, 0);
            out.extend_from_slice(&chunk[(from - start) as usize..(to - start) as usize]);
        }
    }
    out.resize((range.end - range.start) as usize, 0);
    Ok(Bytes::from(out))
}

pub(crate) fn decode_entry(key: &[u8], v: &[u8]) -> Result<Entry> {
    decode(key, v, true)
}

/// As [`decode_entry`], a string's bytes left out (it reads as empty): its
/// kind and expiry, for a write that replaces the value whatever it is.
pub(crate) fn decode_entry_header(key: &[u8], v: &[u8]) -> Result<Entry> {
    decode(key, v, false)
}

fn decode(key: &[u8], v: &[u8], with_value: bool) -> Result<Entry> {
    let bad = || EngineError::CorruptEntry {
        key: String::from_utf8_lossy(key).into_owned(),
    };
    if v.len() < 9 {
        return Err(bad());
    }
    let expire_at_ms = u64::from_be_bytes(v[1..9].try_into().expect("8 bytes"));
    let value = match v[0] {
        KIND_STRING if with_value => Value::String(Bytes::copy_from_slice(&v[9..])),
        KIND_STRING => Value::String(Bytes::new()),
        kind @ (KIND_HASH | KIND_LONG_STRING) => {
            let len = v[9..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| bad())?;
            if kind == KIND_HASH {
                Value::Hash { len }
            } else {
                Value::LongString { len }
            }
        }
        _ => return Err(bad()),
    };
    Ok(Entry {
        value,
        expire_at_ms,
    })
}

pub(crate) fn decode_u64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the stored layout and of every SCAN cursor a
    /// client holds: these values must never change.
    #[test]
    fn scan_hashes_stay_what_they_were() {
        let pinned: [(&[u8], u64); 5] = [
            (b"", 281_938_383_706_145),
            (b"a", 4_565_370_621_776_637),
            (b"key:000000012345", 981_520_104_251_719),
            (b"a key longer than one word", 6_464_408_933_117_257),
            (&[0xff; 40], 8_286_867_361_409_563),
        ];
        for (key, hash) in pinned {
            assert_eq!(scan_hash(key), hash, "{key:?}");
        }
    }

    #[test]
    fn scan_hashes_are_cursors_from_1_to_53_bits_and_order_key_rows() {
        let mut rows = Vec::new();
        for i in 0..10_000u32 {
            let key = format!("user:{i}").into_bytes();
            let hash = scan_hash(&key);
            assert!((1..=SCAN_HASH_MAX).contains(&hash));
            let row = key_key(&key);
            assert_eq!(split_key_row(&row), Some((hash, &key[..])));
            assert!(row.as_slice() >= key_position(hash).as_slice());
            rows.push(row);
        }
        // Spread over the whole range: each eighth holds about an eighth.
        let mut eighths = [0u32; 8];
        for row in &rows {
            eighths[(split_key_row(row).unwrap().0 >> 50) as usize] += 1;
        }
        assert!(
            eighths.iter().all(|n| (1_000..1_500).contains(n)),
            "{eighths:?}"
        );
        assert_eq!(split_key_row(b"Fxyz"), None);
        assert_eq!(split_key_row(b"H1234567"), None);
    }

    #[test]
    fn entries_round_trip() {
        for entry in [
            Entry {
                value: Value::String(Bytes::from_static(b"hello")),
                expire_at_ms: 0,
            },
            Entry {
                value: Value::String(Bytes::new()),
                expire_at_ms: 1_700_000_000_000,
            },
            Entry {
                value: Value::Hash { len: 42 },
                expire_at_ms: 7,
            },
            Entry {
                value: Value::LongString { len: 1 << 20 },
                expire_at_ms: 9,
            },
        ] {
            let mut stored = Vec::new();
            encode_entry_into(&entry, &mut stored);
            assert_eq!(decode_entry(b"k", &stored).unwrap(), entry);
            let header = decode_entry_header(b"k", &stored).unwrap();
            assert_eq!(header.expire_at_ms, entry.expire_at_ms);
            match (&header.value, &entry.value) {
                (Value::String(s), Value::String(_)) => assert!(s.is_empty()),
                (header, value) => assert_eq!(header, value),
            }
        }
        assert!(decode_entry(b"k", b"\x09\0\0\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn a_long_string_reads_from_its_chunks_with_gaps_as_zeros() {
        const C: usize = STRING_CHUNK_BYTES;
        let chunk = |index: u64, byte: u8, len: usize| {
            (
                Bytes::copy_from_slice(&chunk_field(index)),
                Bytes::from(vec![byte; len]),
            )
        };
        // Chunk 1 missing, chunk 2 short of its length.
        let chunks = [chunk(0, 1, C), chunk(2, 3, 10), chunk(3, 4, 5)];
        let len = (3 * C + 5) as u64;
        let whole = assemble(len, &chunks, 0..u64::MAX).unwrap();
        let mut expected = vec![1; C];
        expected.resize(2 * C, 0);
        expected.extend([3; 10]);
        expected.resize(3 * C, 0);
        expected.extend([4; 5]);
        assert_eq!(whole, expected);
        for range in [
            0..1,
            C as u64 - 2..2 * C as u64 + 12,
            2 * C as u64 + 5..len,
            7..7,
        ] {
            let (start, end) = (range.start as usize, range.end as usize);
            assert_eq!(
                assemble(len, &chunks, range).unwrap(),
                expected[start..end],
                "{start}..{end}"
            );
        }
        assert!(assemble(len, &[(Bytes::from_static(b"x"), Bytes::new())], 0..1).is_err());
        assert_eq!(
            (chunk_len(len, 2), chunk_len(len, 3), chunk_len(len, 4)),
            (C, 5, 0)
        );
        assert!(!is_long(LONG_STRING_BYTES as u64) && is_long(LONG_STRING_BYTES as u64 + 1));
    }

    #[test]
    fn field_prefixes_do_not_overlap_between_keys() {
        // "ab" + field "c" must not fall under the prefix of key "a" + ...
        let a = field_prefix(b"a");
        let ab = field_key(b"ab", b"c");
        assert!(!ab.starts_with(&a));
        assert!(prefix_end(&a) > field_key(b"a", b"\xff\xff"));
        assert_eq!(prefix_end(b"K"), b"L");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}
