//! Readers of a live log: [`FrameReader`] hands out the stored bytes of each
//! frame (what a shipper sends), [`RecordReader`] the decoded records (what
//! replay applies). Both stop at the durable LSN and can wait for it to move.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::{Result, WalError};
use crate::format::{self, Decoded, FrameHeader};
use crate::segment::SegmentMeta;
use crate::storage::StorageFile;
use crate::wal::{Shared, wait_durable};
use crate::{Epoch, Lsn};

/// Bytes a reader fetches from a segment at a time.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// One stored frame: its verified header and its exact bytes, header
/// included, as on disk and on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub header: FrameHeader,
    pub bytes: Bytes,
}

impl RawFrame {
    /// The frame's records, in LSN order.
    ///
    /// # Errors
    ///
    /// [`WalError::InvalidFrames`] if the body does not decode.
    pub fn records(&self) -> Result<Vec<Bytes>> {
        format::decode_records(&self.header, &self.bytes).map_err(|why| WalError::InvalidFrames {
            offset: 0,
            reason: why.to_string(),
        })
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// The epoch of the frame that holds it.
    pub epoch: Epoch,
    /// When its frame was written, ms since the Unix epoch.
    pub timestamp_ms: u64,
    pub data: Bytes,
}

/// Where a reader is in a segment.
struct Cursor {
    segment: Arc<SegmentMeta>,
    file: Arc<dyn StorageFile>,
    /// Offset of the next frame.
    offset: u64,
    /// Offset of the last frame returned, for error messages.
    frame_offset: u64,
    /// Bytes of the segment from `buf_start` on.
    buf: Vec<u8>,
    buf_start: u64,
}

/// Reads stored frames in LSN order, up to the durable LSN.
///
/// [`next_frame`](Self::next_frame) returns `None` once it has caught up;
/// [`wait`](Self::wait) then waits for more. A reader keeps its segment open,
/// so purging that segment does not disturb it; it fails with
/// [`WalError::NotRetained`] only when the next segment it needs is gone.
pub struct FrameReader {
    shared: Arc<Shared>,
    durable: watch::Receiver<Lsn>,
    next_lsn: Lsn,
    cursor: Option<Cursor>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("next_lsn", &self.next_lsn)
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    pub(crate) fn new(shared: Arc<Shared>, from: Lsn) -> Result<FrameReader> {
        let from = Lsn(from.0.max(1));
        let next = shared.last_lsn().next();
        if from > next {
            return Err(WalError::BeyondEnd {
                requested: from,
                next,
            });
        }
        let first_retained = shared.first_lsn();
        if from < first_retained {
            return Err(WalError::NotRetained {
                requested: from,
                first_retained,
            });
        }
        Ok(FrameReader {
            durable: shared.durable.subscribe(),
            shared,
            next_lsn: from,
            cursor: None,
        })
    }

    /// The LSN the next frame holds.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The next frame, or `None` when every durable frame has been read.
    ///
    /// # Errors
    ///
    /// [`WalError::Corruption`] (with the segment and offset) if stored bytes
    /// fail their crc, [`WalError::NotRetained`] if the segment it needs was
    /// purged, [`WalError::Io`].
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>> {
        let limits = self.shared.options.limits;
        loop {
            if self.next_lsn > *self.durable.borrow() {
                return Ok(None);
            }
            let cursor = match &mut self.cursor {
                Some(cursor) => cursor,
                None => self
                    .cursor
                    .insert(open_cursor(&self.shared, self.next_lsn)?),
            };
            // Every frame up to the durable LSN is whole below `end`.
            let end = cursor.segment.end();
            if cursor.offset >= end {
                let next = self.shared.segment_for(self.next_lsn)?;
                if Arc::ptr_eq(&next, &cursor.segment) {
                    return Err(
                        cursor.corruption(format!("segment ends before lsn {}", self.next_lsn))
                    );
                }
                self.cursor = None;
                continue;
            }
            let header = cursor.read_frame(end, limits)?;
            if header.first_lsn > self.next_lsn {
                return Err(cursor.corruption(format!(
                    "frame starts at lsn {}, expected {}",
                    header.first_lsn, self.next_lsn
                )));
            }
            let start = (cursor.offset - cursor.buf_start) as usize;
            let bytes = Bytes::copy_from_slice(&cursor.buf[start..start + header.frame_len()]);
            cursor.frame_offset = cursor.offset;
            cursor.offset += header.frame_len() as u64;
            if header.last_lsn() < self.next_lsn {
                continue;
            }
            self.next_lsn = header.last_lsn().next();
            return Ok(Some(RawFrame { header, bytes }));
        }
    }

    /// Waits until the frame holding [`next_lsn`](Self::next_lsn) is durable.
    ///
    /// # Errors
    ///
    /// [`WalError::Failed`] or [`WalError::Closed`] if the log stops first.
    pub async fn wait(&mut self) -> Result<()> {
        wait_durable(&self.shared, &mut self.durable, self.next_lsn)
            .await
            .map(drop)
    }

    /// The segment and offset of the frame returned last.
    fn position(&self) -> (PathBuf, u64) {
        match &self.cursor {
            Some(cursor) => (cursor.segment.path.clone(), cursor.frame_offset),
            None => (self.shared.dir.clone(), 0),
        }
    }
}

fn open_cursor(shared: &Shared, lsn: Lsn) -> Result<Cursor> {
    let segment = shared.segment_for(lsn)?;
    let file = shared.storage.open(&segment.path, false).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            WalError::NotRetained {
                requested: lsn,
                first_retained: shared.first_lsn(),
            }
        } else {
            WalError::io("opening", &segment.path, e)
        }
    })?;
    let offset = segment.seek_hint(lsn);
    Ok(Cursor {
        segment,
        file,
        offset,
        frame_offset: offset,
        buf: Vec::new(),
        buf_start: offset,
    })
}

impl Cursor {
    fn corruption(&self, reason: String) -> WalError {
        WalError::Corruption {
            segment: self.segment.path.clone(),
            offset: self.offset,
            reason,
        }
    }

    /// Makes `buf` hold `len` bytes from `self.offset`, reading no further
    /// than `end`.
    fn fill(&mut self, len: usize, end: u64) -> Result<()> {
        let have_from = self.buf_start;
        let have_to = self.buf_start + self.buf.len() as u64;
        let want_to = self.offset + len as u64;
        if self.offset >= have_from && want_to <= have_to {
            return Ok(());
        }
        if want_to > end {
            return Err(self.corruption(format!(
                "frame of {len} bytes runs past the segment's written end at byte {end}"
            )));
        }
        let read = (len.max(READ_CHUNK_BYTES) as u64).min(end - self.offset) as usize;
        self.buf.resize(read, 0);
        self.buf_start = self.offset;
        let got = self
            .file
            .read_at(&mut self.buf, self.offset)
            .map_err(|e| WalError::io("reading", &self.segment.path, e))?;
        if got < read {
            self.buf.truncate(got);
            return Err(self.corruption(format!(
                "segment shorter than its written end ({end} bytes)"
            )));
        }
        Ok(())
    }

    /// Reads and verifies the frame at `self.offset` into `buf`.
    fn read_frame(&mut self, end: u64, limits: format::FrameLimits) -> Result<FrameHeader> {
        let mut need = format::FRAME_HEADER_LEN;
        loop {
            self.fill(need, end)?;
            let start = (self.offset - self.buf_start) as usize;
            match format::decode_frame(&self.buf[start..], limits) {
                Decoded::Frame(frame) => return Ok(frame.header),
                Decoded::NeedMore(n) if n > need => need = n,
                Decoded::NeedMore(_) => unreachable!("a filled buffer holds what was asked"),
                Decoded::Corrupt(why) => return Err(self.corruption(why.to_string())),
            }
        }
    }
}

/// Reads records in LSN order from a given LSN, up to the durable LSN.
///
/// As an iterator it ends once it has caught up; [`wait`](Self::wait) then
/// waits for more, after which iteration can go on.
#[derive(Debug)]
pub struct RecordReader {
    frames: FrameReader,
    /// Records below this are skipped (the first frame may start earlier).
    from: Lsn,
    pending: VecDeque<Record>,
}

impl RecordReader {
    pub(crate) fn new(frames: FrameReader, from: Lsn) -> RecordReader {
        RecordReader {
            frames,
            from,
            pending: VecDeque::new(),
        }
    }

    /// The LSN of the next record.
    pub fn next_lsn(&self) -> Lsn {
        self.pending
            .front()
            .map_or(self.frames.next_lsn().max(self.from), |r| r.lsn)
    }

    /// Waits until the next record is durable.
    ///
    /// # Errors
    ///
    /// As [`FrameReader::wait`].
    pub async fn wait(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            self.frames.wait().await?;
        }
        Ok(())
    }

    fn next_record(&mut self) -> Result<Option<Record>> {
        while self.pending.is_empty() {
            let Some(frame) = self.frames.next_frame()? else {
                return Ok(None);
            };
            let header = frame.header;
            let records = format::decode_records(&header, &frame.bytes).map_err(|why| {
                let (segment, offset) = self.frames.position();
                WalError::Corruption {
                    segment,
                    offset,
                    reason: why.to_string(),
                }
            })?;
            for (i, data) in records.into_iter().enumerate() {
                let lsn = Lsn(header.first_lsn.0 + i as u64);
                if lsn >= self.from {
                    self.pending.push_back(Record {
                        lsn,
                        epoch: header.epoch,
                        timestamp_ms: header.timestamp_ms,
                        data,
                    });
                }
            }
        }
        Ok(self.pending.pop_front())
    }
}

impl Iterator for RecordReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
