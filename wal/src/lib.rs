//! ferry-wal: the write-ahead log of a ferry node. A segmented log of opaque
//! records with contiguous LSNs, crc32-checksummed and zstd-compressed
//! frames, group commit under a Redis-like sync policy, recovery of a torn
//! tail, readers from any LSN, raw frames for shipping, and purging. It knows
//! nothing of keys, RocksDB or the network.
//!
//! # Layout
//! - [`format`]: the byte layout of segments and frames, and the pure frame
//!   encoder and decoder.
//! - `segment`: segment naming, durable creation and the recovery scan.
//! - `wal`: [`Wal`], the handle: open and recover, append, append raw frames,
//!   sync, purge, and the writer and syncer threads behind them.
//! - `reader`: [`FrameReader`] (the stored bytes of each frame, for
//!   shipping) and [`RecordReader`] (decoded records, for replay).
//! - [`inspect`]: read-only scans of a log directory for the tools: every
//!   frame, and every problem with its segment, offset and LSN.
//! - [`storage`]: the file access trait and the real file system.
//! - [`testing`]: an in-memory storage that crashes, tears writes and fails
//!   on demand.
//!
//! # Guarantees
//! - An append returns only when its records are written and, under
//!   [`SyncPolicy::Always`], synced. All records of one append share one
//!   frame: after a crash, all of them survive or none does.
//! - After a crash, recovery keeps exactly the whole, valid frames: a torn or
//!   zero-filled tail of the last segment is cut off (a `.broken` copy is
//!   kept), anything else bad refuses to open with [`WalError::Corruption`].
//! - A failed write or sync is never acknowledged, and the log accepts no
//!   more appends until it is reopened.

pub mod format;
pub mod inspect;
pub mod storage;
pub mod testing;

mod error;
mod reader;
mod segment;
mod wal;

use std::fmt;

pub use error::{Result, WalError};
pub use format::{FrameHeader, FrameLimits};
pub use reader::{FrameReader, RawFrame, Record, RecordReader};
pub use wal::{
    AfterCommit, CheckedFrames, EagerSync, LatencyHook, LatencySlot, LogSummary, LsnRange,
    PendingAppend, SEGMENT_BYTES_MAX_DEFAULT, SyncPolicy, TornTail, Wal, WalOptions, WalStats,
    check_frames, verify, verify_frames,
};

/// A log sequence number: the position of one record in the log. The first
/// record ever written is LSN 1; 0 stands for "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// No record.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN after this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The term of a primary. Epochs never decrease along a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The epoch of the record at `lsn` by a log's terms, each (epoch, first
/// LSN) as a node keeps them: that of the last term begun at or before
/// it, 0 before the first (a log's first term has no entry).
pub fn epoch_at(terms: &[(u64, u64)], lsn: Lsn) -> u64 {
    terms
        .iter()
        .filter(|&&(_, first)| first <= lsn.0)
        .max_by_key(|&&(epoch, first)| (first, epoch))
        .map_or(0, |&(epoch, _)| epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_s_epoch_is_its_term_s() {
        // Terms out of order, one begun and left without records.
        let terms = [(5, 40), (2, 10), (3, 40)];
        let at = |lsn| epoch_at(&terms, Lsn(lsn));
        assert_eq!(
            [at(1), at(9), at(10), at(39), at(40), at(99)],
            [0, 0, 2, 2, 5, 5]
        );
        assert_eq!(epoch_at(&[], Lsn(7)), 0);
    }
}
