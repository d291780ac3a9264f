//! ferry-engine: the cache itself. The RocksDB keyspace (strings and hashes
//! with expiry), the meaning of each WAL mutation, applying records
//! atomically with their LSN, recovery by replaying the WAL, and the write
//! pipeline that orders a primary's commands, group-commits their effects
//! and applies them once durable.
//!
//! # Layout
//! - `keys`: how keys, hash fields and the expiry index are laid out in
//!   RocksDB, and the stored entry format.
//! - `engine`: [`Engine`]: open, replay, apply, reads of the applied state,
//!   the keyspace digest, and [`apply_mutation`](crate::engine), the one
//!   definition of what each mutation does.
//! - `cache`: the read cache of key entries in front of RocksDB.
//! - `pipeline`: [`Pipeline`]: the write path of a primary.
//! - `watch`: [`Watch`]: the keys a client watches (WATCH), and what
//!   spoils a watch.
//! - `builder`: [`StateBuilder`]: a keyspace built in memory from records
//!   and ingested whole into an empty engine (for `ferry replay`).
//!
//! # Invariants
//! - The engine holds only records that are durable in the WAL, applied in
//!   LSN order; the applied LSN is written in the same RocksDB batch as the
//!   data it covers, and RocksDB's own WAL is off.
//! - Applying a record never fails on its content and depends only on the
//!   record and the state, so every node that applies a log reaches the
//!   same state. Replaying any suffix of the WAL twice gives the same state
//!   because the engine skips the records at or below its applied LSN
//!   ([`Engine::apply_again`]); not every record could be applied twice
//!   harmlessly on its own (an APPEND is a range write after the old end).

mod builder;
mod cache;
mod engine;
mod error;
mod keys;
mod pipeline;
mod watch;

pub use builder::{StateBuilder, StringSet, single_string_set};
pub use cache::{READ_CACHE_BYTES_DEFAULT, ReadCacheStats};
pub use engine::{
    ChangeListener, Changed, ChangedKey, Engine, LAYOUT_COLUMN_FAMILY, RECLAIM_STEP_BYTES,
    REPLAY_BATCH_RECORDS, RocksFigures, SWAP_WAIT_MAX, Scanned, checkpoint_meta,
    complete_checkpoint_swap, decode_record, op_key, string_bytes,
};
pub use error::{EngineError, Result};
pub use keys::{
    Entry, Expiring, LONG_STRING_BYTES, ROW_OVERHEAD_BYTES, SCAN_HASH_MAX, STRING_CHUNK_BYTES,
    Value, scan_hash, stored_bytes,
};
pub use pipeline::{
    APPLY_RETRY_DELAY_MAX, APPLY_RETRY_FIRST, APPLY_RETRY_FOR, ApplyFailure, PausePurpose,
    Pipeline, Reader, Ticket, View,
};
pub use watch::Watch;
