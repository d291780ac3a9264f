//! How the keyspace is laid out in RocksDB: one column family, four kinds of
//! entries told apart by their first byte.
//!
//! ```text
//! M name                              -> meta value (applied LSN, key count, keys with an expiry)
//! K user_key                          -> key entry: kind u8 | expire_at_ms u64 BE | payload
//!                                        payload: string bytes (kind 1) | field count u64 BE (kind 2)
//! F key_len u32 BE | user_key | field -> field value (hashes)
//! E expire_at_ms u64 BE | user_key    -> empty (expiry index, for the active sweep)
//! ```
//!
//! One column family keeps every flush atomic: the applied LSN never
//! reaches disk without the data it covers (with RocksDB's own WAL off,
//! several column families would need `atomic_flush`).

use bytes::Bytes;

use crate::error::{EngineError, Result};

pub(crate) const KEY: u8 = b'K';
pub(crate) const FIELD: u8 = b'F';
pub(crate) const EXPIRY: u8 = b'E';

pub(crate) const META_APPLIED_LSN: &[u8] = b"Mapplied_lsn";
pub(crate) const META_KEY_COUNT: &[u8] = b"Mkey_count";
/// [`Expiring`]: count u64 BE | sum of expiry times u128 BE.
pub(crate) const META_EXPIRING: &[u8] = b"Mexpiring";

const KIND_STRING: u8 = 1;
const KIND_HASH: u8 = 2;

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
            Value::String(_) => "string",
            Value::Hash { .. } => "hash",
        }
    }
}

pub(crate) fn key_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    key_key_into(key, &mut k);
    k
}

/// [`key_key`], appended to `k`.
pub(crate) fn key_key_into(key: &[u8], k: &mut Vec<u8>) {
    k.reserve(1 + key.len());
    k.push(KEY);
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
        Value::Hash { len } => encode_hash_into(*len, entry.expire_at_ms, v),
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
    v.push(KIND_HASH);
    v.extend_from_slice(&expire_at_ms.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
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
        KIND_HASH => {
            let len = v[9..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| bad())?;
            Value::Hash { len }
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
