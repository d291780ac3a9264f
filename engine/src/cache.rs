//! A bounded cache of key entries read from RocksDB, for point reads (GET,
//! EXISTS, TYPE, the write pipeline's reads): a hit is one hash lookup
//! instead of a memtable skiplist search and SST block searches.
//!
//! Keys enter when read through [`crate::Engine::entry`] and when written:
//! after each applied batch, every key it touched holds the entry the batch
//! left it (or leaves if the write failed), so a client that reads what was
//! just written, and the applier that looks up a key's old type and expiry
//! before overwriting it, both find it here. Everything leaves when the
//! keyspace is replaced (FLUSHALL, a snapshot, a reset, an ingest), and the
//! CLOCK policy evicts when a shard is full: a key read since the hand last
//! passed stays one more round. A key read or deleted as absent is cached
//! as absent.
//!
//! A reader that misses notes its shard's generation before it reads
//! RocksDB, and its result enters only if the generation is unchanged: a
//! writer bumps it when it updates or invalidates a key, after its RocksDB
//! write, so a value read before a write can never be cached after it.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::keys::{Entry, Value};

/// Default for the read cache's size in bytes (0: no cache).
pub const READ_CACHE_BYTES_DEFAULT: usize = 32 << 20;
/// Independently locked parts of the cache.
const SHARDS: usize = 64;
/// Bytes counted for each entry beyond its key and value: the map's entry
/// with its control byte and the CLOCK ring's place, both twice over (a
/// table that has just doubled is half empty), and the header of the
/// allocation holding the key and value.
const ENTRY_OVERHEAD_BYTES: usize =
    2 * (std::mem::size_of::<(u64, Slot)>() + 1 + std::mem::size_of::<u64>()) + 16;
/// Kinds of [`Slot::kind`].
const ABSENT: u8 = 0;
const STRING: u8 = 1;
const HASH: u8 = 2;
const LONG_STRING: u8 = 3;

/// What [`ReadCache::get`] gives on a miss: the shard's generation, to hand
/// back to [`ReadCache::insert`] with what was read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Miss {
    hash: u64,
    shard: usize,
    generation: u64,
}

/// The map's keys are already hashes (of the user key, with the cache's
/// random key): they are used as they are.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One cached key, inline in its shard's map: a hit reads the map's entry
/// and one allocation holding the key and the value side by side.
#[derive(Debug)]
struct Slot {
    /// The key, then a string's value or a hash's field count (8 bytes,
    /// little-endian).
    data: Box<[u8]>,
    expire_at_ms: u64,
    key_len: u32,
    /// Its place in the CLOCK ring.
    ring_at: u32,
    kind: u8,
    referenced: bool,
}

impl Slot {
    /// For a key [`entry_bytes`] lets in.
    fn new(key: &[u8], entry: Option<&Entry>) -> Slot {
        let len_bytes;
        let (kind, expire_at_ms, value): (u8, u64, &[u8]) = match entry {
            None => (ABSENT, 0, &[]),
            Some(Entry {
                value: Value::String(s),
                expire_at_ms,
            }) => (STRING, *expire_at_ms, s),
            // A count: a hash's fields, a long string's bytes.
            Some(Entry {
                value: value @ (Value::Hash { len } | Value::LongString { len }),
                expire_at_ms,
            }) => {
                len_bytes = len.to_le_bytes();
                let kind = match value {
                    Value::Hash { .. } => HASH,
                    _ => LONG_STRING,
                };
                (kind, *expire_at_ms, &len_bytes)
            }
        };
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Slot {
            data: data.into_boxed_slice(),
            expire_at_ms,
            key_len: u32::try_from(key.len()).expect("checked by entry_bytes"),
            ring_at: 0,
            kind,
            referenced: false,
        }
    }

    /// Makes it hold `entry` (of the same key), keeping its place in the
    /// ring and its mark: a string of the value's length (the common
    /// overwrite) is copied over the old one, with no allocation.
    fn set(&mut self, key: &[u8], entry: Option<&Entry>) {
        if let Some(Entry {
            value: Value::String(value),
            expire_at_ms,
        }) = entry
            && self.kind == STRING
            && self.value().len() == value.len()
        {
            let key_len = self.key_len as usize;
            self.data[key_len..].copy_from_slice(value);
            self.expire_at_ms = *expire_at_ms;
            return;
        }
        *self = Slot {
            ring_at: self.ring_at,
            referenced: self.referenced,
            ..Slot::new(key, entry)
        };
    }

    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }

    /// Bytes counted for it.
    fn bytes(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD_BYTES
    }

    /// The entry, its value copied out (a hit holds no lock or reference
    /// on the cache once it returns); with `header_only`, a string's value
    /// is left empty.
    fn entry(&self, header_only: bool) -> Option<Entry> {
        let value = match self.kind {
            STRING if header_only => Value::String(Bytes::new()),
            STRING => Value::String(Bytes::copy_from_slice(self.value())),
            HASH => Value::Hash {
                len: u64::from_le_bytes(self.value().try_into().expect("8 bytes")),
            },
            LONG_STRING => Value::LongString {
                len: u64::from_le_bytes(self.value().try_into().expect("8 bytes")),
            },
            _ => return None,
        };
        Some(Entry {
            value,
            expire_at_ms: self.expire_at_ms,
        })
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// By the key's hash; the slot holds the key, compared on every hit
    /// (two keys of one hash: the second is not cached).
    map: HashMap<u64, Slot, BuildHasherDefault<Prehashed>>,
    /// CLOCK ring of the cached keys' hashes; a place whose hash maps to
    /// a slot elsewhere in the ring (or to none) is free, and in `free`.
    ring: Vec<u64>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
    generation: u64,
    hits: u64,
    misses: u64,
}

impl Shard {
    /// The slot holding `key`, if any.
    fn find(&mut self, hash: u64, key: &[u8]) -> Option<&mut Slot> {
        self.map.get_mut(&hash).filter(|slot| slot.key() == key)
    }

    fn remove(&mut self, hash: u64) {
        if let Some(slot) = self.map.remove(&hash) {
            self.free.push(slot.ring_at as usize);
            self.bytes -= slot.bytes();
        }
    }

    /// Adds a slot for a hash the shard does not hold (room made already).
    fn put(&mut self, hash: u64, mut slot: Slot) {
        let at = match self.free.pop() {
            Some(at) => {
                self.ring[at] = hash;
                at
            }
            None => {
                self.ring.push(hash);
                self.ring.len() - 1
            }
        };
        slot.ring_at = u32::try_from(at).expect("fewer than 2^32 entries in a shard");
        self.bytes += slot.bytes();
        self.map.insert(hash, slot);
    }

    /// Evicts until `need` more bytes fit within `max`: a referenced entry
    /// loses its mark and stays one more round, an unmarked one goes.
    fn make_room(&mut self, need: usize, max: usize) {
        while self.bytes + need > max && !self.map.is_empty() {
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let at = self.hand;
            self.hand += 1;
            let hash = self.ring[at];
            let Some(slot) = self
                .map
                .get_mut(&hash)
                .filter(|slot| slot.ring_at as usize == at)
            else {
                continue;
            };
            if slot.referenced {
                slot.referenced = false;
            } else {
                self.remove(hash);
            }
        }
    }
}

/// See the module documentation.
pub(crate) struct ReadCache {
    shards: Box<[Mutex<Shard>]>,
    /// Seeded per process, so clients cannot aim keys at one bucket;
    /// foldhash's quality variant, whose every bit is usable as the map's
    /// bucket and tag bits are.
    hasher: foldhash::quality::RandomState,
    shard_bytes_max: usize,
}

impl std::fmt::Debug for ReadCache {
    /// The figures, not the entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("bytes_max", &(self.shard_bytes_max * SHARDS))
            .field("stats", &self.stats())
            .finish()
    }
}

/// Bytes an entry would be counted for; `usize::MAX` (never cached) for a
/// key longer than a slot records.
fn entry_bytes(key: &[u8], entry: Option<&Entry>) -> usize {
    if u32::try_from(key.len()).is_err() {
        return usize::MAX;
    }
    let value = match entry {
        Some(Entry {
            value: Value::String(s),
            ..
        }) => s.len(),
        Some(Entry {
            value: Value::Hash { .. } | Value::LongString { .. },
            ..
        }) => 8,
        None => 0,
    };
    key.len() + value + ENTRY_OVERHEAD_BYTES
}

impl ReadCache {
    /// A cache of at most `bytes_max` bytes (0: none; every read misses).
    pub(crate) fn new(bytes_max: usize) -> ReadCache {
        ReadCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
            shard_bytes_max: bytes_max / SHARDS,
        }
    }

    fn enabled(&self) -> bool {
        self.shard_bytes_max > 0
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key's hash and its shard.
    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // Middle bits: the map itself takes the low ones for its buckets
        // and the top seven for its tags.
        (hash, (hash >> 32) as usize % SHARDS)
    }

    /// The cached entry of `key` (`Ok(None)`: cached as absent), or what to
    /// give [`ReadCache::insert`] after reading it.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Entry>, Miss> {
        if !self.enabled() {
            return Err(Miss {
                hash: 0,
                shard: 0,
                generation: 0,
            });
        }
        let (hash, index) = self.locate(key);
        let mut shard = self.shard(index);
        if let Some(slot) = shard.find(hash, key) {
            slot.referenced = true;
            let entry = slot.entry(false);
            shard.hits += 1;
            return Ok(entry);
        }
        shard.misses += 1;
        Err(Miss {
            hash,
            shard: index,
            generation: shard.generation,
        })
    }

    /// The cached entry of `key` if there is one, for the applier's reads
    /// of the state before its batch (not counted as a hit or a miss).
    /// Every cached entry is what RocksDB holds between two batches.
    pub(crate) fn peek(&self, key: &[u8]) -> Option<Option<Entry>> {
        self.peek_with(key, false)
    }

    /// As [`ReadCache::peek`], with a string's value left empty: for a
    /// write that replaces the value, only the kind and expiry count.
    pub(crate) fn peek_header(&self, key: &[u8]) -> Option<Option<Entry>> {
        self.peek_with(key, true)
    }

    fn peek_with(&self, key: &[u8], header_only: bool) -> Option<Option<Entry>> {
        if !self.enabled() {
            return None;
        }
        let (hash, index) = self.locate(key);
        let mut shard = self.shard(index);
        shard.find(hash, key).map(|slot| slot.entry(header_only))
    }

    /// Caches what a reader found for `key` after `miss`, unless the key
    /// may have changed since (the shard's generation moved).
    pub(crate) fn insert(&self, miss: Miss, key: &[u8], entry: Option<&Entry>) {
        if !self.enabled() {
            return;
        }
        let bytes = entry_bytes(key, entry);
        if bytes > self.shard_bytes_max {
            return;
        }
        let mut shard = self.shard(miss.shard);
        if shard.generation != miss.generation || shard.map.contains_key(&miss.hash) {
            return;
        }
        shard.make_room(bytes, self.shard_bytes_max);
        shard.put(miss.hash, Slot::new(key, entry));
    }

    /// Sets what `key` holds now, caching it if it was not; called after a
    /// write of it reached RocksDB, with the entry the write left.
    pub(crate) fn update(&self, key: &[u8], entry: Option<&Entry>) {
        if !self.enabled() {
            return;
        }
        let (hash, index) = self.locate(key);
        let mut shard = self.shard(index);
        shard.generation += 1;
        let fits = entry_bytes(key, entry) <= self.shard_bytes_max;
        match shard.map.get_mut(&hash) {
            Some(slot) if slot.key() == key && fits => {
                let before = slot.bytes();
                slot.set(key, entry);
                let after = slot.bytes();
                shard.bytes = shard.bytes - before + after;
                shard.make_room(0, self.shard_bytes_max);
            }
            Some(slot) if slot.key() == key => shard.remove(hash),
            // Another key of the same hash holds the place: it stays.
            Some(_) => {}
            None if fits => {
                let new = Slot::new(key, entry);
                shard.make_room(new.bytes(), self.shard_bytes_max);
                shard.put(hash, new);
            }
            None => {}
        }
    }

    /// Forgets `key`; called after a write of it reached RocksDB.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        if !self.enabled() {
            return;
        }
        let (hash, index) = self.locate(key);
        let mut shard = self.shard(index);
        shard.generation += 1;
        if shard.find(hash, key).is_some() {
            shard.remove(hash);
        }
    }

    /// Forgets everything; called after the keyspace changed as a whole.
    pub(crate) fn clear(&self) {
        for index in 0..self.shards.len() {
            let mut shard = self.shard(index);
            shard.generation += 1;
            shard.map.clear();
            shard.ring.clear();
            shard.free.clear();
            shard.hand = 0;
            shard.bytes = 0;
        }
    }

    /// Bytes held, entries held, hits and misses since start.
    pub(crate) fn stats(&self) -> ReadCacheStats {
        let mut stats = ReadCacheStats::default();
        for index in 0..self.shards.len() {
            let shard = self.shard(index);
            stats.bytes += shard.bytes as u64;
            stats.entries += shard.map.len() as u64;
            stats.hits += shard.hits;
            stats.misses += shard.misses;
        }
        stats
    }
}

/// The read cache's figures, for INFO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    pub bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(v: &str) -> Entry {
        Entry {
            value: Value::String(Bytes::copy_from_slice(v.as_bytes())),
            expire_at_ms: 0,
        }
    }

    fn read(cache: &ReadCache, key: &[u8], stored: Option<&Entry>) -> Option<Entry> {
        match cache.get(key) {
            Ok(hit) => hit,
            Err(miss) => {
                cache.insert(miss, key, stored);
                stored.cloned()
            }
        }
    }

    #[test]
    fn a_read_entry_is_a_hit_until_invalidated() {
        let cache = ReadCache::new(1 << 20);
        let v1 = string("one");
        assert!(cache.get(b"k").is_err());
        assert_eq!(read(&cache, b"k", Some(&v1)), Some(v1.clone()));
        assert_eq!(cache.get(b"k").expect("hit"), Some(v1));
        cache.invalidate(b"k");
        assert!(cache.get(b"k").is_err());
        // Absent keys are cached as absent.
        assert_eq!(read(&cache, b"gone", None), None);
        assert_eq!(cache.get(b"gone").expect("hit"), None);
        cache.clear();
        assert!(cache.get(b"gone").is_err());
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes), (0, 0));
        assert_eq!((s.hits, s.misses), (2, 5));
    }

    #[test]
    fn an_update_replaces_a_cached_entry_or_caches_the_key() {
        let cache = ReadCache::new(1 << 20);
        read(&cache, b"k", Some(&string("old")));
        let before = cache.stats().bytes;
        cache.update(b"k", Some(&string("a longer value")));
        assert_eq!(
            cache.get(b"k").expect("hit"),
            Some(string("a longer value"))
        );
        assert_eq!(cache.stats().bytes, before + 11);
        // One of the same length is copied over it, expiry too.
        let same_length = Entry {
            value: Value::String(Bytes::from_static(b"a shorter one!")),
            expire_at_ms: 9,
        };
        cache.update(b"k", Some(&same_length));
        assert_eq!(cache.get(b"k").expect("hit"), Some(same_length));
        assert_eq!(cache.stats().bytes, before + 11);
        // The applier's look at it leaves a string's bytes out.
        assert_eq!(
            cache.peek_header(b"k").expect("cached"),
            Some(Entry {
                value: Value::String(Bytes::new()),
                expire_at_ms: 9,
            })
        );
        cache.update(b"k", None);
        assert_eq!(cache.get(b"k").expect("hit"), None);
        // A key not cached enters with what the write left, and a read
        // that raced the write does not replace it.
        let miss = cache.get(b"other").expect_err("empty");
        cache.update(b"other", Some(&string("new")));
        cache.insert(miss, b"other", Some(&string("old")));
        assert_eq!(cache.get(b"other").expect("hit"), Some(string("new")));
        // Nor does one that started after the write.
        cache.invalidate(b"other");
        let miss = cache.get(b"other").expect_err("invalidated");
        cache.update(b"other", Some(&string("newer")));
        cache.insert(miss, b"other", Some(&string("new")));
        assert_eq!(cache.get(b"other").expect("hit"), Some(string("newer")));
        // An entry larger than a shard leaves, and does not enter.
        let huge = string(&"y".repeat((1 << 20) / SHARDS + 1));
        cache.update(b"k", Some(&huge));
        cache.update(b"new", Some(&huge));
        assert!(cache.get(b"k").is_err() && cache.get(b"new").is_err());
    }

    #[test]
    fn a_value_read_before_a_write_is_not_cached_after_it() {
        let cache = ReadCache::new(1 << 20);
        let miss = cache.get(b"k").expect_err("empty");
        // A writer changes the key and invalidates it meanwhile.
        cache.invalidate(b"k");
        cache.insert(miss, b"k", Some(&string("old")));
        assert!(cache.get(b"k").is_err(), "the stale read stayed out");
        // So does one that raced a clear.
        let miss = cache.get(b"k").expect_err("empty");
        cache.clear();
        cache.insert(miss, b"k", Some(&string("old")));
        assert!(cache.get(b"k").is_err());
    }

    #[test]
    fn the_size_stays_within_its_bound_and_read_entries_stay_longest() {
        let max = SHARDS * 4096;
        let cache = ReadCache::new(max);
        let value = "x".repeat(100);
        // A hot key, read again between every insert.
        let hot = string("hot");
        read(&cache, b"hot", Some(&hot));
        for i in 0..20_000u32 {
            read(&cache, format!("key:{i}").as_bytes(), Some(&string(&value)));
            assert_eq!(
                cache.get(b"hot").expect("the hot key stays"),
                Some(hot.clone())
            );
            if i % 1000 == 0 {
                assert!(cache.stats().bytes as usize <= max);
            }
        }
        let s = cache.stats();
        assert!(s.bytes as usize <= max);
        assert!(s.entries > 100, "{s:?}");
        // An entry larger than a shard is not cached.
        let huge = string(&"y".repeat(8192));
        read(&cache, b"huge", Some(&huge));
        assert!(cache.get(b"huge").is_err());
    }

    #[test]
    fn freed_places_in_the_ring_are_reused_and_every_entry_stays_its_own() {
        // Room for about half the keys: evictions too.
        let max = SHARDS * 4096;
        let cache = ReadCache::new(max);
        let value = |i: u32, round: u32| string(&format!("{i}:{round}:{}", "v".repeat(60)));
        // Each round a key is written (cached or not), read, or forgotten,
        // in turn; a read finds what the last write left.
        let mut stored = vec![value(0, 0); 2_000];
        let mut most_entries = 0;
        for round in 0..20u32 {
            for i in 0..2_000u32 {
                let key = format!("key:{i}");
                match (i + round) % 3 {
                    0 => {
                        stored[i as usize] = value(i, round);
                        cache.update(key.as_bytes(), Some(&stored[i as usize]));
                    }
                    1 => drop(read(&cache, key.as_bytes(), Some(&stored[i as usize]))),
                    _ => cache.invalidate(key.as_bytes()),
                }
            }
            let s = cache.stats();
            assert!(s.bytes as usize <= max, "{s:?}");
            most_entries = most_entries.max(s.entries as usize);
            let ring: usize = (0..SHARDS).map(|i| cache.shard(i).ring.len()).sum();
            assert!(
                ring <= most_entries + SHARDS * 8,
                "ring {ring}, entries {most_entries}"
            );
        }
        // What is cached is the key's own latest entry.
        for i in 0..2_000u32 {
            if let Ok(hit) = cache.get(format!("key:{i}").as_bytes()) {
                assert_ne!((i + 19) % 3, 2, "an invalidated key stayed");
                assert_eq!(hit.as_ref(), Some(&stored[i as usize]));
            }
        }
        // Hash entries keep their field count and expiry.
        let hash = Entry {
            value: Value::Hash { len: 7 },
            expire_at_ms: 42,
        };
        cache.update(b"h", Some(&hash));
        assert_eq!(cache.get(b"h").expect("hit"), Some(hash));
    }

    #[test]
    fn a_cache_of_size_zero_holds_nothing() {
        let cache = ReadCache::new(0);
        read(&cache, b"k", Some(&string("v")));
        assert!(cache.get(b"k").is_err());
        assert_eq!(cache.stats(), ReadCacheStats::default());
    }
}
