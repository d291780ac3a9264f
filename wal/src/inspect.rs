//! Read-only scans of a WAL directory for the tools: every frame of every
//! segment in order, and every problem found on the way (not just the
//! first), each named by segment, byte offset and LSN. Nothing is written,
//! so a scan is safe on a live node's log (it sees what was written when it
//! read each segment).
//!
//! After a bad frame the scan looks for the next valid frame byte by byte
//! (a frame's crc covers its header, so a false match is a 1 in 2^32 event
//! on top of the header's own checks) and goes on from there. A bad stretch
//! at the end of the last segment with no valid frame after it is a torn
//! tail, which opening the log would cut off; anything else is corruption.
//! Zero-filled space after the last frame (what a crash leaves of the
//! space the writer fills ahead) is no problem: it is counted apart.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Result, WalError};
use crate::format::{self, Decoded, FrameHeader, FrameLimits, SEGMENT_HEADER_LEN};
use crate::segment::parse_segment_name;
use crate::storage::Storage;
use crate::{Epoch, Lsn};

/// What one segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    /// The first LSN its name (and header) gives.
    pub first_lsn: Lsn,
    /// The last LSN of its last valid frame ([`Lsn::ZERO`] if it has none).
    pub last_lsn: Lsn,
    pub frames: u64,
    pub records: u64,
    /// Lowest and highest frame epoch, and frame times (ms since the Unix
    /// epoch); zero when it has no frame.
    pub epoch_min: Epoch,
    pub epoch_max: Epoch,
    pub time_min_ms: u64,
    pub time_max_ms: u64,
    /// Bytes of valid frames as stored, and their bodies decompressed (with
    /// the frame headers).
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// Of them, zero-filled space after the last frame (preallocated; cut
    /// when the log is next opened).
    pub zero_filled_bytes: u64,
}

/// One problem found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub segment: PathBuf,
    /// Byte offset in the segment where the bad bytes start.
    pub offset: u64,
    /// The LSN the log should have held there.
    pub lsn: Lsn,
    pub reason: String,
    /// A torn tail (the end of the last segment), which recovery cuts off;
    /// otherwise corruption.
    pub torn_tail: bool,
    /// Bytes up to the next valid frame (or the end of the segment).
    pub bytes: u64,
}

/// The outcome of [`scan_dir`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    pub segments: Vec<SegmentInfo>,
    pub problems: Vec<Problem>,
}

impl Inspection {
    /// Whether every byte is a valid frame, in LSN order.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether the only problem is a torn tail.
    pub fn only_torn_tail(&self) -> bool {
        self.problems.len() == 1 && self.problems[0].torn_tail
    }
}

/// One valid frame, as [`scan_dir`] hands it to its visitor.
#[derive(Debug)]
pub struct ScannedFrame<'a> {
    pub segment: &'a Path,
    pub offset: u64,
    pub header: FrameHeader,
    /// The whole frame as stored.
    pub bytes: Bytes,
    /// Its records, decoded by the scan's check.
    records: Vec<Bytes>,
}

impl ScannedFrame<'_> {
    /// The frame's records, in LSN order from `header.first_lsn` (decoded
    /// once, by the scan's check).
    pub fn records(&self) -> &[Bytes] {
        &self.records
    }
}

/// The segment files of `dir`, in LSN order.
///
/// # Errors
///
/// [`WalError::Io`] if the directory cannot be listed.
pub fn segment_files(storage: &dyn Storage, dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut names: Vec<(Lsn, PathBuf)> = storage
        .list(dir)
        .map_err(|e| WalError::io("listing", dir, e))?
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|lsn| (lsn, dir.join(name))))
        .collect();
    names.sort();
    Ok(names)
}

/// Scans every segment of `dir` in order, hands each valid frame to
/// `visit` (which may stop the scan with `ControlFlow::Break`), and returns
/// what each segment holds and every problem found.
///
/// # Errors
///
/// [`WalError::Io`] if a file cannot be read, or what `visit` returns.
pub fn scan_dir(
    storage: &dyn Storage,
    dir: &Path,
    limits: FrameLimits,
    visit: impl FnMut(&ScannedFrame<'_>) -> Result<ControlFlow<()>>,
) -> Result<Inspection> {
    scan_dir_from(storage, dir, limits, Lsn::ZERO, visit)
}

/// As [`scan_dir`], skipping the segments that lie wholly before `from`
/// (they are neither read nor reported).
///
/// # Errors
///
/// As [`scan_dir`].
pub fn scan_dir_from(
    storage: &dyn Storage,
    dir: &Path,
    limits: FrameLimits,
    from: Lsn,
    mut visit: impl FnMut(&ScannedFrame<'_>) -> Result<ControlFlow<()>>,
) -> Result<Inspection> {
    let mut files = segment_files(storage, dir)?;
    // Keep the segment holding `from` and every later one.
    let skip = files
        .iter()
        .rposition(|(first, _)| *first <= from)
        .unwrap_or(0);
    files.drain(..skip);
    let mut out = Inspection::default();
    let mut expected: Option<Lsn> = None;
    // The highest frame epoch so far: a frame's may not be below it (the
    // log refuses to open then).
    let mut epoch = Epoch(0);
    for (i, (name_lsn, path)) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        let data = read_file(storage, path)?;
        let mut info = SegmentInfo {
            path: path.clone(),
            first_lsn: *name_lsn,
            last_lsn: Lsn::ZERO,
            frames: 0,
            records: 0,
            epoch_min: Epoch(0),
            epoch_max: Epoch(0),
            time_min_ms: 0,
            time_max_ms: 0,
            stored_bytes: 0,
            raw_bytes: 0,
            file_bytes: data.len() as u64,
            zero_filled_bytes: 0,
        };
        let mut problem = |offset: u64, lsn: Lsn, reason: String, torn_tail: bool, bytes: u64| {
            out.problems.push(Problem {
                segment: path.clone(),
                offset,
                lsn,
                reason,
                torn_tail,
                bytes,
            });
        };
        let mut next = expected.unwrap_or(*name_lsn);
        match format::decode_segment_header(&data) {
            Ok(first) if first == *name_lsn => {}
            Ok(first) => problem(
                0,
                next,
                format!("header says first lsn {first}, the file name says {name_lsn}"),
                false,
                SEGMENT_HEADER_LEN as u64,
            ),
            Err(why) => problem(0, next, why.to_string(), false, data.len() as u64),
        }
        if expected.is_some_and(|e| e != *name_lsn) {
            problem(
                0,
                next,
                format!("segment starts at lsn {name_lsn}, the log continues at {next}"),
                false,
                0,
            );
        }
        next = *name_lsn;
        let mut offset = SEGMENT_HEADER_LEN.min(data.len());
        let mut stopped = false;
        // Right after bad bytes, the next valid frame's LSNs are taken as
        // they are: what was skipped is part of that problem.
        let mut after_bad = false;
        while offset < data.len() && !stopped {
            let bad = match format::decode_frame(&data[offset..], limits) {
                Decoded::Frame(frame) => {
                    let header = frame.header;
                    let len = header.frame_len();
                    let bytes = data.slice(offset..offset + len);
                    if header.first_lsn != next && !std::mem::take(&mut after_bad) {
                        problem(
                            offset as u64,
                            next,
                            format!(
                                "frame holds lsn {}..={}, the log continues at {next}",
                                header.first_lsn,
                                header.last_lsn()
                            ),
                            false,
                            0,
                        );
                    }
                    if header.epoch < epoch {
                        problem(
                            offset as u64,
                            header.first_lsn,
                            format!(
                                "frame epoch {} is below the previous frame's {epoch}",
                                header.epoch
                            ),
                            false,
                            len as u64,
                        );
                    }
                    epoch = epoch.max(header.epoch);
                    match format::decode_records(&header, &bytes) {
                        Err(why) => {
                            problem(offset as u64, next, why.to_string(), false, len as u64);
                        }
                        Ok(records) => {
                            info.frames += 1;
                            info.records += u64::from(header.record_count);
                            info.last_lsn = header.last_lsn();
                            if info.frames == 1 {
                                info.epoch_min = header.epoch;
                                info.time_min_ms = header.timestamp_ms;
                            }
                            info.epoch_min = info.epoch_min.min(header.epoch);
                            info.epoch_max = info.epoch_max.max(header.epoch);
                            info.time_min_ms = info.time_min_ms.min(header.timestamp_ms);
                            info.time_max_ms = info.time_max_ms.max(header.timestamp_ms);
                            info.stored_bytes += len as u64;
                            info.raw_bytes +=
                                (format::FRAME_HEADER_LEN as u64) + u64::from(header.raw_len);
                            let scanned = ScannedFrame {
                                segment: path,
                                offset: offset as u64,
                                header,
                                bytes,
                                records,
                            };
                            if visit(&scanned)?.is_break() {
                                stopped = true;
                            }
                        }
                    }
                    next = header.last_lsn().next();
                    offset += len;
                    None
                }
                Decoded::NeedMore(n) => Some(format!(
                    "the segment ends inside a frame of {n} bytes ({} left)",
                    data.len() - offset
                )),
                Decoded::Corrupt(why) => Some(why.to_string()),
            };
            let Some(reason) = bad else { continue };
            if format::is_zero_filled(&data[offset..]) {
                // Preallocated space after the last frame: not a problem.
                info.zero_filled_bytes = (data.len() - offset) as u64;
                break;
            }
            let resume = resync(&data, offset + 1, limits);
            let end = resume.unwrap_or(data.len());
            let torn = is_last && resume.is_none();
            problem(offset as u64, next, reason, torn, (end - offset) as u64);
            offset = end;
            after_bad = true;
        }
        expected = Some(next);
        out.segments.push(info);
        if stopped {
            break;
        }
    }
    Ok(out)
}

/// The offset of the next valid frame at or after `from`.
fn resync(data: &[u8], from: usize, limits: FrameLimits) -> Option<usize> {
    (from..data.len().saturating_sub(format::FRAME_HEADER_LEN))
        .find(|&at| matches!(format::decode_frame(&data[at..], limits), Decoded::Frame(_)))
}

fn read_file(storage: &dyn Storage, path: &Path) -> Result<Bytes> {
    let file = storage
        .open(path, false)
        .map_err(|e| WalError::io("opening", path, e))?;
    let data =
        crate::storage::read_all(file.as_ref()).map_err(|e| WalError::io("reading", path, e))?;
    Ok(Bytes::from(data))
}
