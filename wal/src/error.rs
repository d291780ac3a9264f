//! The one error type of ferry-wal.

use std::io;
use std::path::PathBuf;

use crate::{Epoch, Lsn};

/// Everything that can go wrong in the WAL.
///
/// Disk and input faults are values of this type; broken invariants of the
/// code itself are assertions instead.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A read, write, sync, rename or delete failed.
    #[error("i/o error while {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Stored bytes are not what the writer wrote, at a place where a torn
    /// tail cannot explain it. The log refuses to open.
    #[error(
        "corrupt WAL segment {segment} at byte {offset}: {reason} \
         (inspect it with `ferry wal verify {dir}`)",
        dir = segment.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Corruption {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Frames offered to [`crate::Wal::append_frames`] do not continue this
    /// log exactly where it ends.
    #[error("lsn gap: the log continues at {expected}, the frame starts at {found}")]
    LsnGap { expected: Lsn, found: Lsn },
    /// Bytes offered to [`crate::Wal::append_frames`] are not whole, valid
    /// frames. Nothing of them was written.
    #[error("invalid frame at byte {offset} of the input: {reason}")]
    InvalidFrames { offset: u64, reason: String },
    /// A frame or [`crate::Wal::set_epoch`] would lower the epoch.
    #[error("epoch would go backwards: the log is at epoch {current}, got {found}")]
    EpochRegression { current: Epoch, found: Epoch },
    /// One append does not fit in one frame.
    #[error("batch of {bytes} bytes exceeds the largest frame body of {max} bytes")]
    BatchTooLarge { bytes: u64, max: u64 },
    /// An append with no records.
    #[error("an append needs at least one record")]
    EmptyBatch,
    /// A reader asked for an LSN that was purged.
    #[error("lsn {requested} is no longer retained (the first retained lsn is {first_retained})")]
    NotRetained { requested: Lsn, first_retained: Lsn },
    /// A reader asked for an LSN past the end of the log.
    #[error("lsn {requested} is beyond the end of the log (the next lsn is {next})")]
    BeyondEnd { requested: Lsn, next: Lsn },
    /// An earlier write or sync failed: what reached the disk is unknown, so
    /// nothing more is accepted until the log is reopened and recovered.
    #[error("the log refuses appends after an earlier failure ({reason}); reopen it to recover")]
    Failed { reason: String },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A copy for the second and later waiters of a failed group commit
    /// (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            WalError::Io { op, path, source } => WalError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            WalError::Failed { reason } => WalError::Failed {
                reason: reason.clone(),
            },
            other => WalError::Failed {
                reason: other.to_string(),
            },
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;
