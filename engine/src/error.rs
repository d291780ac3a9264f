//! The one error type of ferry-engine.

use ferry_wal::{Lsn, WalError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The WAL failed, or refused a record.
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    /// A WAL record does not decode as a `WalRecord`.
    #[error("WAL record {lsn} does not decode: {reason}")]
    CorruptRecord { lsn: Lsn, reason: String },
    /// A stored key entry does not decode.
    #[error("stored entry of key {key:?} does not decode")]
    CorruptEntry { key: String },
    /// The keyspace is stored in a layout this version does not know (a
    /// later version wrote it).
    #[error(
        "the keyspace is stored in layout {found}, newer than this version's {supported}: \
         run a ferry at least as new as the one that wrote it"
    )]
    UnknownLayout { found: u64, supported: u64 },
    /// The engine holds records the WAL does not reach back to.
    #[error(
        "the engine has applied up to lsn {applied}, but the WAL holds {first}..={last}: \
         the two do not belong together"
    )]
    WalMismatch { applied: Lsn, first: Lsn, last: Lsn },
    /// A command with effects on a node that does not accept writes (a
    /// replica).
    #[error("the node does not accept writes")]
    ReadOnly,
    /// A file operation on the engine's directories failed.
    #[error("{0}")]
    Io(String),
    /// The write pipeline stopped (the WAL failed or the node is shutting down).
    #[error("the write path is stopped: {0}")]
    Stopped(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
