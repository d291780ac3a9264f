//! Building a keyspace from scratch in memory: records are folded into the
//! final state of each key (no RocksDB read or write per record), then the
//! state is written as one sorted SST file and ingested into an empty
//! engine. This is how `ferry replay` builds a new data directory fast; the
//! stored result is exactly what applying the records one by one leaves
//! (the same [`apply_mutation`] gives their meaning).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use ferry_proto::v1::WalRecord;
use ferry_wal::Lsn;

use crate::engine::{Engine, Target, apply_mutation};
use crate::error::Result;
use crate::keys::{self, Entry, Value};

/// Bytes a key costs in a [`StateBuilder`] beyond its key and value bytes.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The state after a run of records, in memory.
#[derive(Debug, Default)]
pub struct StateBuilder {
    entries: HashMap<Bytes, Entry>,
    fields: HashMap<Bytes, HashMap<Bytes, Bytes>>,
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
        Ok(self.entries.get(key).cloned())
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
        match self.entries.get_mut(key) {
            Some(slot) => {
                let old = std::mem::replace(slot, new);
                self.bytes -= entry_bytes(key, &old);
            }
            None => {
                self.entries.insert(Bytes::copy_from_slice(key), new);
            }
        }
    }

    fn remove(&mut self, key: &Bytes, _old: &Entry) {
        if let Some(old) = self.entries.remove(key) {
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
                .insert(Bytes::copy_from_slice(key), HashMap::new());
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

    /// Every stored row of the state, sorted, as the engine stores them.
    fn rows(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::with_capacity(self.entries.len() + 2);
        for (key, entry) in &self.entries {
            rows.push((keys::key_key(key), keys::encode_entry(entry)));
            if entry.expire_at_ms != 0 {
                rows.push((keys::expiry_key(entry.expire_at_ms, key), Vec::new()));
            }
        }
        for (key, fields) in &self.fields {
            for (field, value) in fields {
                rows.push((keys::field_key(key, field), value.to_vec()));
            }
        }
        rows.push((
            keys::META_APPLIED_LSN.to_vec(),
            self.last.0.to_be_bytes().to_vec(),
        ));
        rows.push((
            keys::META_KEY_COUNT.to_vec(),
            (self.entries.len() as u64).to_be_bytes().to_vec(),
        ));
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
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
        for (key, value) in state.rows() {
            writer.put(key, value)?;
        }
        writer.finish()?;
        self.ingest_file(&path, last, count)?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}
