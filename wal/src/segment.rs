//! Segment files: naming, durable creation, and the recovery scan that
//! validates a segment's frames and finds where its valid bytes end.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Result, WalError};
use crate::format::{self, Decoded, FrameLimits, SEGMENT_HEADER_LEN};
use crate::storage::{Storage, StorageFile};
use crate::{Epoch, Lsn};

/// Segment files end in this.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// A segment being created carries this suffix until it is complete.
pub(crate) const TMP_SUFFIX: &str = ".wal.tmp";
/// The sparse frame index keeps one entry per this many bytes of segment.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 64 << 10;

/// `{first_lsn:020}.wal`.
pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", first_lsn.0)
}

/// The first LSN a segment file name stands for, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// What the log knows of one segment, shared by the writer and readers.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    pub first_lsn: Lsn,
    pub path: PathBuf,
    /// Bytes of whole frames written so far. The writer raises it after each
    /// write and before it publishes the LSNs, so a reader never reads bytes
    /// that are still being written.
    pub end: AtomicU64,
    /// `(first LSN of a frame, its byte offset)`, about one entry per
    /// [`INDEX_INTERVAL_BYTES`], so a reader starting at an LSN skips most of
    /// the segment.
    pub index: Mutex<Vec<(Lsn, u64)>>,
}

impl SegmentMeta {
    pub fn new(first_lsn: Lsn, path: PathBuf, end: u64, index: Vec<(Lsn, u64)>) -> SegmentMeta {
        SegmentMeta {
            first_lsn,
            path,
            end: AtomicU64::new(end),
            index: Mutex::new(index),
        }
    }

    /// The offset of a frame at or before the one holding `lsn`.
    pub fn seek_hint(&self, lsn: Lsn) -> u64 {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let at = index.partition_point(|&(first, _)| first <= lsn);
        if at == 0 {
            SEGMENT_HEADER_LEN as u64
        } else {
            index[at - 1].1
        }
    }

    /// The offset of the last index entry.
    pub fn last_indexed(&self) -> Option<u64> {
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|&(_, at)| at)
    }

    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }
}

/// Creates an empty segment durably: written under a temporary name, synced,
/// renamed, and the directory synced.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    first_lsn: Lsn,
) -> Result<(Arc<dyn StorageFile>, PathBuf)> {
    let path = dir.join(segment_name(first_lsn));
    let tmp = dir.join(format!("{:020}{TMP_SUFFIX}", first_lsn.0));
    let file = storage
        .create(&tmp)
        .map_err(|e| WalError::io("creating", &tmp, e))?;
    file.write_at(&format::encode_segment_header(first_lsn), 0)
        .map_err(|e| WalError::io("writing", &tmp, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("syncing", &tmp, e))?;
    storage
        .rename(&tmp, &path)
        .map_err(|e| WalError::io("renaming", &tmp, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("syncing directory", dir, e))?;
    Ok((file, path))
}

/// What the recovery scan found in one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Bytes of the header and the whole valid frames.
    pub valid_len: u64,
    /// The LSN after the last valid frame.
    pub next_lsn: Lsn,
    /// The epoch of the last valid frame, or the floor passed in.
    pub epoch: Epoch,
    pub index: Vec<(Lsn, u64)>,
    /// For a torn tail: where it starts and why its first frame is bad.
    pub torn: Option<(u64, String)>,
}

/// Validates a segment's bytes: header, every frame's crc, LSN continuity and
/// epoch order.
///
/// `expected_first` is where the previous segment ended (none for the oldest
/// segment). In the last segment, a bad frame with no valid frame after it
/// is a torn tail, reported in [`Scan::torn`]; anywhere else a bad frame is
/// [`WalError::Corruption`]. Zero-filled space after the last frame is the
/// end of the segment, not a torn tail.
pub(crate) fn scan_segment(
    path: &Path,
    data: &[u8],
    expected_first: Option<Lsn>,
    is_last: bool,
    limits: FrameLimits,
    epoch_floor: Epoch,
) -> Result<Scan> {
    let corruption = |offset: u64, reason: String| WalError::Corruption {
        segment: path.to_path_buf(),
        offset,
        reason,
    };
    let name_lsn = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name)
        .ok_or_else(|| corruption(0, "not a segment file name".into()))?;
    let first = format::decode_segment_header(data).map_err(|why| corruption(0, why.into()))?;
    if first != name_lsn {
        return Err(corruption(
            0,
            format!("header says first lsn {first}, the file name says {name_lsn}"),
        ));
    }
    if let Some(expected) = expected_first
        && first != expected
    {
        return Err(corruption(
            0,
            format!("segment starts at lsn {first}, the previous segment ends before {expected}"),
        ));
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut next = first;
    let mut epoch = epoch_floor;
    let mut index = Vec::new();
    let mut indexed_at: Option<usize> = None;
    while offset < data.len() {
        let why = match format::decode_frame(&data[offset..], limits) {
            Decoded::Frame(frame) => {
                let h = frame.header;
                if h.first_lsn != next {
                    return Err(corruption(
                        offset as u64,
                        format!("frame starts at lsn {}, expected {next}", h.first_lsn),
                    ));
                }
                if h.epoch < epoch {
                    return Err(corruption(
                        offset as u64,
                        format!(
                            "frame epoch {} is below the previous frame's {epoch}",
                            h.epoch
                        ),
                    ));
                }
                if indexed_at.is_none_or(|at| offset - at >= INDEX_INTERVAL_BYTES as usize) {
                    index.push((h.first_lsn, offset as u64));
                    indexed_at = Some(offset);
                }
                epoch = h.epoch;
                next = Lsn(h.last_lsn().0 + 1);
                offset += h.frame_len();
                continue;
            }
            Decoded::NeedMore(n) => format!(
                "frame of {n} bytes cut short at {} bytes",
                data.len() - offset
            ),
            Decoded::Corrupt(corrupt) => corrupt.to_string(),
        };
        if format::is_zero_filled(&data[offset..]) {
            // Preallocated space: the frames end here.
            break;
        }
        if !is_last {
            return Err(corruption(
                offset as u64,
                format!("{why} in a sealed segment"),
            ));
        }
        if let Some(valid_at) = find_valid_frame(data, offset + 1, next, limits) {
            return Err(corruption(
                offset as u64,
                format!("{why}, followed by a valid frame at byte {valid_at}"),
            ));
        }
        return Ok(Scan {
            valid_len: offset as u64,
            next_lsn: next,
            epoch,
            index,
            torn: Some((offset as u64, why)),
        });
    }
    Ok(Scan {
        valid_len: offset as u64,
        next_lsn: next,
        epoch,
        index,
        torn: None,
    })
}

/// The offset of the first valid frame at or after `from` whose LSN is at
/// least `min_lsn`, searching byte by byte: tells a torn tail (nothing valid
/// after the damage) from corruption in the middle of the log.
fn find_valid_frame(data: &[u8], from: usize, min_lsn: Lsn, limits: FrameLimits) -> Option<usize> {
    (from..data.len()).find(|&at| {
        matches!(format::decode_frame(&data[at..], limits),
            Decoded::Frame(f) if f.header.first_lsn >= min_lsn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_and_parse() {
        assert_eq!(segment_name(Lsn(1)), "00000000000000000001.wal");
        assert_eq!(
            parse_segment_name("00000000000000000042.wal"),
            Some(Lsn(42))
        );
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.wal.tmp"), None);
        assert!(segment_name(Lsn(9)) < segment_name(Lsn(10)));
    }
}
