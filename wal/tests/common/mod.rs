//! Helpers shared by the WAL's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_wal::format::{self, Decoded, FrameLimits, SEGMENT_HEADER_LEN};
use ferry_wal::testing::MemStorage;
use ferry_wal::{Lsn, SyncPolicy, Wal, WalOptions};

pub const DIR: &str = "/data/wal";

pub fn dir() -> &'static Path {
    Path::new(DIR)
}

/// Options with small segments, so tests cross segment boundaries.
pub fn options(policy: SyncPolicy) -> WalOptions {
    WalOptions {
        sync_policy: policy,
        segment_bytes_max: 4096,
        ..WalOptions::default()
    }
}

pub fn open(storage: &MemStorage, options: WalOptions) -> Wal {
    Wal::open_with(DIR, options, Arc::new(storage.clone())).expect("open the log")
}

pub fn try_open(storage: &MemStorage, options: WalOptions) -> ferry_wal::Result<Wal> {
    Wal::open_with(DIR, options, Arc::new(storage.clone()))
}

/// A record whose bytes say which LSN-independent item it is.
pub fn record(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!("{tag}-{i:06}-{}", "x".repeat(i % 50)))
}

/// Every durable record from `from` on.
pub fn read_from(wal: &Wal, from: u64) -> Vec<(u64, Bytes)> {
    wal.records(Lsn(from))
        .expect("a reader")
        .map(|r| r.map(|r| (r.lsn.0, r.data)).expect("a record"))
        .collect()
}

pub fn read_all(wal: &Wal) -> Vec<(u64, Bytes)> {
    read_from(wal, wal.first_lsn().0)
}

/// The segment files of the log, oldest first.
pub fn segments(storage: &MemStorage) -> Vec<PathBuf> {
    storage
        .files(dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

pub fn broken_copies(storage: &MemStorage) -> Vec<PathBuf> {
    storage
        .files(dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".broken"))
        .collect()
}

/// `(offset, frame length, first lsn, record count)` of each frame of a
/// segment's bytes.
pub fn frame_bounds(segment: &[u8]) -> Vec<(usize, usize, u64, u32)> {
    let mut at = SEGMENT_HEADER_LEN;
    let mut frames = Vec::new();
    while at < segment.len() {
        match format::decode_frame(&segment[at..], FrameLimits::default()) {
            Decoded::Frame(f) => {
                let h = f.header;
                frames.push((at, h.frame_len(), h.first_lsn.0, h.record_count));
                at += h.frame_len();
            }
            other => panic!("not a valid segment at {at}: {other:?}"),
        }
    }
    frames
}

#[allow(unused_imports)]
pub use ferry_wal::testing::test_seed as seed;
