//! ferry-engine: the cache itself — the RocksDB keyspace with TTLs, the
//! mutation types and their encoding into WAL records, applying a batch
//! atomically with its `applied_lsn`, and recovery by replaying the WAL.
//! Not yet built: this crate holds only its purpose for now.
