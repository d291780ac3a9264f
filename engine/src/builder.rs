//! Building a keyspace from scratch in memory: records are folded into the
//! final state of each key (no RocksDB read or write per record), then the
//! state is written as one sorted SST file and ingested into an empty
//! engine. This is how `ferry replay` builds a new data directory fast; the
//! stored result is exactly what applying the records one by one leaves
//! (the same [`apply_mutation`] gives their meaning).

use std::path::Path;

use bytes::Bytes;
use ferry_proto::v1::WalRecord;
use ferry_wal::Lsn;

use crate::engine::{Engine, Target, apply_mutation, put_string};
use crate::error::Result;
use crate::keys::{self, Entry, Expiring, Value};

type FxHashMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Key bytes held inline in a [`StoredKey`].
const INLINE_KEY_BYTES: usize = 22;

/// A key of the state, inline when short (most are): comparing it in a hash
/// probe then reads no memory beyond the table's own.
#[derive(Debug, Clone)]
enum StoredKey {
    Inline(u8, [u8; INLINE_KEY_BYTES]),
    Heap(Bytes),
}

impl StoredKey {
    fn new(key: &[u8]) -> StoredKey {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            StoredKey::Inline(key.len() as u8, bytes)
        } else {
            StoredKey::Heap(Bytes::copy_from_slice(key))
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            StoredKey::Inline(len, bytes) => &bytes[..usize::from(*len)],
            StoredKey::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for StoredKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &StoredKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for StoredKey {}

impl std::hash::Hash for StoredKey {
    // As `[u8]` hashes, so that lookups by `&[u8]` find it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

/// Bytes a key costs in a [`StateBuilder`] beyond its key and value bytes.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// The value arena of a [`StateBuilder`] is not compacted below this size.
pub const STATE_ARENA_COMPACTION_FLOOR: usize = 64 << 20;
/// The value arena is compacted once the bytes of replaced values reach
/// this many times the live ones.
pub const STATE_ARENA_GARBAGE_RATIO: usize = 2;

/// A key's value in the state: a string's bytes in the value arena, or a
/// hash's field count or a long string's length (its fields or chunks are
/// kept on their own).
#[derive(Debug, Clone, Copy)]
enum HeldValue {
    String { at: usize, len: usize },
    Hash { len: u64 },
    LongString { len: u64 },
}

/// A key's value and expiry in the state.
#[derive(Debug, Clone, Copy)]
struct Held {
    value: HeldValue,
    expire_at_ms: u64,
}

/// The bytes of the state's strings, one after another. A replaced
/// string's bytes stay until a compaction copies out the live ones: folding
/// a record allocates and frees nothing.
#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
    /// Bytes of strings no longer held.
    garbage: usize,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("bytes", &self.bytes.len())
            .field("garbage", &self.garbage)
            .finish()
    }
}

impl Arena {
    fn push(&mut self, s: &[u8]) -> HeldValue {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(s);
        HeldValue::String { at, len: s.len() }
    }

    fn hold(&mut self, value: &Value) -> HeldValue {
        match value {
            Value::String(s) => self.push(s),
            Value::Hash { len } => HeldValue::Hash { len: *len },
            Value::LongString { len } => HeldValue::LongString { len: *len },
        }
    }

    fn release(&mut self, value: &HeldValue) {
        if let HeldValue::String { len, .. } = value {
            self.garbage += len;
        }
    }

    fn get(&self, at: usize, len: usize) -> &[u8] {
        &self.bytes[at..at + len]
    }
}

/// The state after a run of records, in memory.
#[derive(Debug)]
pub struct StateBuilder {
    // Keys come from the operator's own log: a fast hash, not a keyed one.
    entries: FxHashMap<StoredKey, Held>,
    fields: FxHashMap<Bytes, FxHashMap<Bytes, Bytes>>,
    arena: Arena,
    compaction_floor: usize,
    last: Lsn,
    /// Bytes of keys, fields and their overhead (the arena is apart).
    bytes: usize,
}

impl Default for StateBuilder {
    fn default() -> StateBuilder {
        StateBuilder::with_compaction_floor(STATE_ARENA_COMPACTION_FLOOR)
    }
}

impl Target for StateBuilder {
    fn entry(&mut self, key: &Bytes) -> Result<Option<Entry>> {
        Ok(self.entries.get(key.as_ref()).map(|held| Entry {
            value: match held.value {
                HeldValue::String { at, len } => {
                    Value::String(Bytes::copy_from_slice(self.arena.get(at, len)))
                }
                HeldValue::Hash { len } => Value::Hash { len },
                HeldValue::LongString { len } => Value::LongString { len },
            },
            expire_at_ms: held.expire_at_ms,
        }))
    }

    fn field(&mut self, key: &Bytes, field: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.fields.get(key).and_then(|f| f.get(field)).cloned())
    }

    fn put_entry(&mut self, key: &Bytes, _old: Option<&Entry>, new: Entry) {
        // Records are slices of whole decompressed frames: the arena holds
        // copies, so that those buffers go and memory holds only the state.
        let held = Held {
            value: self.arena.hold(&new.value),
            expire_at_ms: new.expire_at_ms,
        };
        match self.entries.get_mut(key.as_ref()) {
            Some(slot) => {
                let old = std::mem::replace(slot, held);
                self.arena.release(&old.value);
            }
            None => {
                self.bytes += key.len() + ENTRY_OVERHEAD_BYTES;
                self.entries.insert(StoredKey::new(key), held);
            }
        }
    }

    fn remove(&mut self, key: &Bytes, _old: &Entry) {
        if let Some(old) = self.entries.remove(key.as_ref()) {
            self.bytes -= key.len() + ENTRY_OVERHEAD_BYTES;
            self.arena.release(&old.value);
        }
        if let Some(fields) = self.fields.remove(key) {
            self.bytes -= fields
                .iter()
                .map(|(f, v)| f.len() + v.len() + ENTRY_OVERHEAD_BYTES)
                .sum::<usize>();
        }
    }

    fn put_field(&mut self, key: &Bytes, field: &Bytes, value: &Bytes) {
        if !self.fields.contains_key(key) {
            self.fields
                .insert(Bytes::copy_from_slice(key), FxHashMap::default());
        }
        let fields = self.fields.get_mut(key).expect("inserted");
        self.bytes += field.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        if let Some(old) =
            fields.insert(Bytes::copy_from_slice(field), Bytes::copy_from_slice(value))
        {
            self.bytes -= field.len() + old.len() + ENTRY_OVERHEAD_BYTES;
        }
    }

    fn delete_field(&mut self, key: &Bytes, field: &Bytes) {
        if let Some(fields) = self.fields.get_mut(key)
            && let Some(old) = fields.remove(field)
        {
            self.bytes -= field.len() + old.len() + ENTRY_OVERHEAD_BYTES;
        }
    }

    fn flush_all(&mut self) {
        self.entries.clear();
        self.fields.clear();
        self.arena = Arena::default();
        self.bytes = 0;
    }

    fn set_string(&mut self, key: &Bytes, value: &Bytes, expire_at_ms: u64) -> Result<()> {
        self.set_string_slices(key, value, expire_at_ms)
    }
}

/// A WAL record that is a single `SetString` mutation, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringSet<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub expire_at_ms: u64,
}

/// Protobuf tag of field `field` with wire type `wire`.
const fn tag(field: u8, wire: u8) -> u8 {
    field << 3 | wire
}
const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

/// A varint at the start of `data`, and the bytes after it.
fn read_varint(data: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        // The tenth byte holds the 64th bit only (as prost checks).
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((value, &data[i + 1..]));
        }
    }
    None
}

/// A length-delimited field's bytes at the start of `data` (after its
/// tag), and the bytes after it.
fn read_len(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = read_varint(data)?;
    let len = usize::try_from(len).ok().filter(|&l| l <= rest.len())?;
    Some(rest.split_at(len))
}

/// `data`, an encoded [`WalRecord`], read in place when it is exactly one
/// `SetString` mutation encoded as prost encodes one (each field at most
/// once, in field order, defaults left out); `None` for anything else,
/// which [`crate::decode_record`] then reads. Most records of a cache's
/// log are such SETs: reading them needs no allocation.
pub fn single_string_set(data: &[u8]) -> Option<StringSet<'_>> {
    // WalRecord { mutations: [Mutation { op: SetString { .. } }] }
    let rest = data.strip_prefix(&[tag(1, WIRE_LEN)])?;
    let (mutation, rest) = read_len(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let rest = mutation.strip_prefix(&[tag(1, WIRE_LEN)])?;
    let (mut set, rest) = read_len(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut found = StringSet {
        key: &[],
        value: &[],
        expire_at_ms: 0,
    };
    if let Some(rest) = set.strip_prefix(&[tag(1, WIRE_LEN)]) {
        (found.key, set) = read_len(rest)?;
    }
    if let Some(rest) = set.strip_prefix(&[tag(2, WIRE_LEN)]) {
        (found.value, set) = read_len(rest)?;
    }
    if let Some(rest) = set.strip_prefix(&[tag(3, WIRE_VARINT)]) {
        (found.expire_at_ms, set) = read_varint(rest)?;
    }
    set.is_empty().then_some(found)
}

impl StateBuilder {
    pub fn new() -> StateBuilder {
        StateBuilder::default()
    }

    /// A builder whose value arena is compacted from `floor` bytes on
    /// ([`STATE_ARENA_COMPACTION_FLOOR`] by default; tests use less).
    pub fn with_compaction_floor(floor: usize) -> StateBuilder {
        StateBuilder {
            entries: FxHashMap::default(),
            fields: FxHashMap::default(),
            arena: Arena::default(),
            compaction_floor: floor,
            last: Lsn::ZERO,
            bytes: 0,
        }
    }

    /// One lookup where the general path takes two and a copy of the old
    /// entry; a key that holds a hash or a long string, and a long value,
    /// take the general path.
    fn set_string_slices(&mut self, key: &[u8], value: &[u8], expire_at_ms: u64) -> Result<()> {
        let long = keys::is_long(value.len() as u64);
        match self.entries.get_mut(key) {
            Some(slot) if !long && matches!(slot.value, HeldValue::String { .. }) => {
                self.arena.release(&slot.value);
                *slot = Held {
                    value: self.arena.push(value),
                    expire_at_ms,
                };
            }
            found if long || found.is_some() => {
                let existed = found.is_some();
                let key = Bytes::copy_from_slice(key);
                if existed {
                    let old = self.entry(&key)?.expect("present");
                    self.remove(&key, &old);
                }
                put_string(
                    self,
                    &key,
                    None,
                    Bytes::copy_from_slice(value),
                    expire_at_ms,
                );
            }
            _ => {
                self.bytes += key.len() + ENTRY_OVERHEAD_BYTES;
                let held = Held {
                    value: self.arena.push(value),
                    expire_at_ms,
                };
                self.entries.insert(StoredKey::new(key), held);
            }
        }
        Ok(())
    }

    /// Folds in the record at `lsn`, one [`StringSet`] read in place (see
    /// [`single_string_set`]): the same as [`StateBuilder::apply`] with its
    /// decoded record.
    ///
    /// # Errors
    ///
    /// None for now; as [`StateBuilder::apply`].
    ///
    /// # Panics
    ///
    /// If `lsn` does not follow the last record folded in.
    pub fn apply_string_set(&mut self, lsn: Lsn, set: StringSet<'_>) -> Result<()> {
        assert_eq!(lsn, self.last.next(), "records are folded in LSN order");
        self.set_string_slices(set.key, set.value, set.expire_at_ms)?;
        self.last = lsn;
        self.compact_if_due();
        Ok(())
    }

    /// Copies the live strings into a new arena once replaced ones fill
    /// most of it.
    fn compact_if_due(&mut self) {
        let live = self.arena.bytes.len() - self.arena.garbage;
        if self.arena.bytes.len() < self.compaction_floor
            || self.arena.garbage == 0
            || self.arena.garbage < STATE_ARENA_GARBAGE_RATIO * live
        {
            return;
        }
        let mut fresh = Vec::with_capacity(live + live / 2);
        for held in self.entries.values_mut() {
            if let HeldValue::String { at, len } = &mut held.value {
                let from = *at;
                *at = fresh.len();
                fresh.extend_from_slice(&self.arena.bytes[from..from + *len]);
            }
        }
        self.arena = Arena {
            bytes: fresh,
            garbage: 0,
        };
    }

    /// Folds in the record at `lsn`, which must follow the last one.
    ///
    /// # Errors
    ///
    /// What applying a mutation can return (none for a well-formed record).
    ///
    /// # Panics
    ///
    /// If `lsn` does not follow the last record folded in.
    pub fn apply(&mut self, lsn: Lsn, record: &WalRecord) -> Result<()> {
        assert_eq!(lsn, self.last.next(), "records are folded in LSN order");
        for op in record.mutations.iter().filter_map(|m| m.op.as_ref()) {
            apply_mutation(self, op)?;
        }
        self.last = lsn;
        self.compact_if_due();
        Ok(())
    }

    /// The last LSN folded in.
    pub fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// The keys of the state with an expiry.
    fn expiring(&self) -> Expiring {
        let mut expiring = Expiring::default();
        for held in self.entries.values() {
            expiring.add(held.expire_at_ms);
        }
        expiring
    }

    /// About how much memory the state takes.
    pub fn state_bytes(&self) -> usize {
        self.bytes
            + self.arena.bytes.capacity()
            + self.entries.capacity() * std::mem::size_of::<(StoredKey, Held)>()
    }

    /// Writes every stored row of the state, as the engine stores them, in
    /// key order: the kinds of rows by their first byte (`E` < `F` < `H` <
    /// `M`), each kind sorted on its own. Rows are encoded one at a time.
    fn write_rows(&self, writer: &mut rocksdb::SstFileWriter) -> Result<()> {
        const _: () = assert!(
            keys::EXPIRY < keys::FIELD
                && keys::FIELD < keys::KEY
                && keys::KEY < keys::META_APPLIED_LSN[0]
                && keys::META_APPLIED_LSN[0] == keys::META_KEY_COUNT[0]
                && keys::META_APPLIED_LSN[0] == keys::META_EXPIRING[0]
        );
        // The meta rows in their order.
        debug_assert!(
            keys::META_APPLIED_LSN < keys::META_EXPIRING
                && keys::META_EXPIRING < keys::META_KEY_COUNT
        );
        let mut key = Vec::new();
        let mut value = Vec::new();
        let mut expiring: Vec<(u64, &[u8])> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expire_at_ms != 0)
            .map(|(k, e)| (e.expire_at_ms, k.as_slice()))
            .collect();
        // Big-endian expiry then the key: the order of the stored rows.
        expiring.sort_unstable();
        for (at, k) in expiring {
            writer.put(keys::expiry_key(at, k), b"")?;
        }
        // The rows of hashes' fields and of long strings' chunks, key by
        // key; the length prefix is fixed-width big-endian: shorter keys
        // first.
        let mut with_rows: Vec<(&Bytes, &FxHashMap<Bytes, Bytes>)> = self.fields.iter().collect();
        with_rows.sort_unstable_by(|a, b| (a.0.len(), a.0).cmp(&(b.0.len(), b.0)));
        for (k, fields) in with_rows {
            let mut fields: Vec<(&Bytes, &Bytes)> = fields.iter().collect();
            fields.sort_unstable();
            let prefix = keys::field_prefix(k);
            for (field, v) in fields {
                key.clear();
                key.extend_from_slice(&prefix);
                key.extend_from_slice(field);
                writer.put(&key, v)?;
            }
        }
        // In scan order: by each key's hash, held inline (most comparisons
        // touch no key bytes elsewhere in memory), then the key.
        let mut entries: Vec<(u64, &[u8], &Held)> = self
            .entries
            .iter()
            .map(|(k, e)| (keys::scan_hash(k.as_slice()), k.as_slice(), e))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        for (_, k, held) in entries {
            key.clear();
            keys::key_key_into(k, &mut key);
            value.clear();
            match held.value {
                HeldValue::LongString { len } => {
                    keys::encode_long_string_into(len, held.expire_at_ms, &mut value)
                }
                HeldValue::String { at, len } => {
                    keys::encode_string_into(self.arena.get(at, len), held.expire_at_ms, &mut value)
                }
                HeldValue::Hash { len } => {
                    keys::encode_hash_into(len, held.expire_at_ms, &mut value)
                }
            }
            writer.put(&key, &value)?;
        }
        writer.put(keys::META_APPLIED_LSN, self.last.0.to_be_bytes())?;
        writer.put(keys::META_EXPIRING, self.expiring().encode())?;
        writer.put(
            keys::META_KEY_COUNT,
            (self.entries.len() as u64).to_be_bytes(),
        )?;
        Ok(())
    }
}

impl Engine {
    /// Writes a built state into this engine, which must be empty, as one
    /// SST file made in `scratch` and ingested.
    ///
    /// # Errors
    ///
    /// [`crate::EngineError::Rocks`].
    ///
    /// # Panics
    ///
    /// If the engine is not empty.
    pub fn ingest(&self, state: StateBuilder, scratch: &Path) -> Result<()> {
        assert_eq!(
            (self.applied_lsn(), self.key_count()),
            (Lsn::ZERO, 0),
            "a built state goes into an empty engine"
        );
        let (last, count, expiring) = (state.last, state.entries.len() as u64, state.expiring());
        let path = scratch.join("built.sst");
        let mut opts = rocksdb::Options::default();
        // Written once and soon compacted (and compressed) by RocksDB.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let mut writer = rocksdb::SstFileWriter::create(&opts);
        writer.open(&path)?;
        state.write_rows(&mut writer)?;
        writer.finish()?;
        self.ingest_file(&path, last, count, expiring)?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}
