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

use crate::engine::{Engine, Target, apply_mutation};
use crate::error::Result;
use crate::keys::{self, Entry, Value};

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

/// Leading key bytes kept beside each key while sorting.
const SORT_HEAD_BYTES: usize = 16;

/// The first bytes of `key`, zero-padded: ordering by them, then by the
/// whole key, is the keys' order.
fn sort_head(key: &[u8]) -> [u8; SORT_HEAD_BYTES] {
    let mut head = [0u8; SORT_HEAD_BYTES];
    let n = key.len().min(SORT_HEAD_BYTES);
    head[..n].copy_from_slice(&key[..n]);
    head
}

/// Bytes a key costs in a [`StateBuilder`] beyond its key and value bytes.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The state after a run of records, in memory.
#[derive(Debug, Default)]
pub struct StateBuilder {
    // Keys come from the operator's own log: a fast hash, not a keyed one.
    entries: FxHashMap<StoredKey, Entry>,
    fields: FxHashMap<Bytes, FxHashMap<Bytes, Bytes>>,
    last: Lsn,
    bytes: usize,
}

fn entry_bytes(key: &Bytes, entry: &Entry) -> usize {
    let value = match &entry.value {
        Value::String(s) => s.len(),
        Value::Hash { .. } => 0,
    };
    key.len() + value + ENTRY_OVERHEAD_BYTES
}

impl Target for StateBuilder {
    fn entry(&mut self, key: &Bytes) -> Result<Option<Entry>> {
        Ok(self.entries.get(key.as_ref()).cloned())
    }

    fn field_exists(&mut self, key: &Bytes, field: &Bytes) -> Result<bool> {
        Ok(self.fields.get(key).is_some_and(|f| f.contains_key(field)))
    }

    fn put_entry(&mut self, key: &Bytes, _old: Option<&Entry>, mut new: Entry) {
        // Records are slices of whole decompressed frames: own copies let
        // those buffers go, so memory holds only the state.
        if let Value::String(s) = &new.value {
            new.value = Value::String(Bytes::copy_from_slice(s));
        }
        self.bytes += entry_bytes(key, &new);
        match self.entries.get_mut(key.as_ref()) {
            Some(slot) => {
                let old = std::mem::replace(slot, new);
                self.bytes -= entry_bytes(key, &old);
            }
            None => {
                self.entries.insert(StoredKey::new(key), new);
            }
        }
    }

    fn remove(&mut self, key: &Bytes, _old: &Entry) {
        if let Some(old) = self.entries.remove(key.as_ref()) {
            self.bytes -= entry_bytes(key, &old);
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
        self.bytes = 0;
    }

    /// One lookup where the general path takes two and a copy of the old
    /// entry; a key that holds a hash takes the general path.
    fn set_string(&mut self, key: &Bytes, value: &Bytes, expire_at_ms: u64) -> Result<()> {
        let new = Entry {
            value: Value::String(Bytes::copy_from_slice(value)),
            expire_at_ms,
        };
        let added = entry_bytes(key, &new);
        match self.entries.get_mut(key.as_ref()) {
            Some(slot) if matches!(slot.value, Value::String(_)) => {
                let old = std::mem::replace(slot, new);
                self.bytes = self.bytes + added - entry_bytes(key, &old);
            }
            Some(_) => {
                let old = self.entries.get(key.as_ref()).cloned().expect("present");
                self.remove(key, &old);
                self.put_entry(key, None, new);
            }
            None => {
                self.bytes += added;
                self.entries.insert(StoredKey::new(key), new);
            }
        }
        Ok(())
    }
}

impl StateBuilder {
    pub fn new() -> StateBuilder {
        StateBuilder::default()
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
        Ok(())
    }

    /// The last LSN folded in.
    pub fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// About how much memory the state takes.
    pub fn state_bytes(&self) -> usize {
        self.bytes
    }

    /// Writes every stored row of the state, as the engine stores them, in
    /// key order: the kinds of rows by their first byte (`E` < `F` < `K` <
    /// `M`), each kind sorted on its own. Rows are encoded one at a time.
    fn write_rows(&self, writer: &mut rocksdb::SstFileWriter) -> Result<()> {
        const _: () = assert!(
            keys::EXPIRY < keys::FIELD
                && keys::FIELD < keys::KEY
                && keys::KEY < keys::META_APPLIED_LSN[0]
                && keys::META_APPLIED_LSN[0] == keys::META_KEY_COUNT[0]
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
        let mut hashes: Vec<(&Bytes, &FxHashMap<Bytes, Bytes>)> = self.fields.iter().collect();
        // The length prefix is fixed-width big-endian: shorter keys first.
        hashes.sort_unstable_by(|a, b| (a.0.len(), a.0).cmp(&(b.0.len(), b.0)));
        for (k, fields) in hashes {
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
        // Sorted by the first bytes held inline, then the whole key: most
        // comparisons touch no key bytes elsewhere in memory.
        let mut entries: Vec<([u8; SORT_HEAD_BYTES], &[u8], &Entry)> = self
            .entries
            .iter()
            .map(|(k, e)| (sort_head(k.as_slice()), k.as_slice(), e))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        for (_, k, entry) in entries {
            key.clear();
            key.push(keys::KEY);
            key.extend_from_slice(k);
            value.clear();
            keys::encode_entry_into(entry, &mut value);
            writer.put(&key, &value)?;
        }
        writer.put(keys::META_APPLIED_LSN, self.last.0.to_be_bytes())?;
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
        let (last, count) = (state.last, state.entries.len() as u64);
        let path = scratch.join("built.sst");
        let mut opts = rocksdb::Options::default();
        // Written once and soon compacted (and compressed) by RocksDB.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let mut writer = rocksdb::SstFileWriter::create(&opts);
        writer.open(&path)?;
        state.write_rows(&mut writer)?;
        writer.finish()?;
        self.ingest_file(&path, last, count)?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}
