//! The on-disk (and on-the-wire) format of the WAL, byte by byte. Pure code:
//! nothing here touches a file.
//!
//! # Segment file
//!
//! A log is a directory of segment files named by the LSN of their first
//! record, zero-padded to 20 digits so `ls` sorts them: `00000000000000000001.wal`.
//! A segment starts with a 24-byte header, followed by frames back to back:
//!
//! ```text
//! offset size  field (little-endian)
//!      0    8  magic            b"FERRYWAL"
//!      8    4  format version   1
//!     12    4  crc32            over bytes 0..12 and 16..24
//!     16    8  first_lsn        the LSN of the first record; equals the file name
//! ```
//!
//! # Frame
//!
//! One frame holds the records of one group commit (or a part of one, when it
//! would exceed [`WalOptions::group_bytes_max`](crate::WalOptions)): a fixed
//! 48-byte header, then the body.
//!
//! ```text
//! offset size  field (little-endian)
//!      0    4  crc32            crc32 (IEEE, crc32fast) over header bytes 4..48, then the body
//!      4    4  body_len         stored body bytes after the header
//!      8    4  raw_len          body bytes after decompression (= body_len when not compressed)
//!     12    4  record_count     records in the body, at least 1
//!     16    8  first_lsn        LSN of the first record; the others follow contiguously
//!     24    8  epoch            the primary term that wrote the frame
//!     32    8  timestamp_ms     wall-clock time of the writer, ms since the Unix epoch
//!     40    4  flags            bit 0: the body is zstd-compressed; other bits are 0
//!     44    4  reserved         0
//!     48    -  body             body_len bytes
//! ```
//!
//! The raw (decompressed) body is `record_count` times `varint(len) | bytes`,
//! with `len` as an unsigned LEB128 varint. The body is compressed with zstd
//! when it is at least [`COMPRESS_BYTES_MIN`] bytes and that makes it
//! smaller. Every byte of a segment is covered by a crc: a
//! reader checks the crc before zstd sees a byte, and bounds both the stored
//! and the decompressed size by [`FrameLimits::body_bytes_max`] before
//! allocating anything.
//!
//! A header whose 48 bytes are all zero is never a frame (a frame holds at
//! least one record, so `body_len >= 1`). Zero bytes from a frame boundary to
//! the end of a segment are preallocated space ([`is_zero_filled`]), the end of
//! what was written; zeros followed by anything else are damage.
//!
//! Frames travel between nodes as these same bytes: a replica verifies and
//! appends them without re-encoding.

use bytes::Bytes;

use crate::{Epoch, Lsn};

/// `b"FERRYWAL"`: the first bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FERRYWAL";
/// The segment format this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// Bytes of the frame header.
pub const FRAME_HEADER_LEN: usize = 48;
/// Frame flag: the body is zstd-compressed.
pub const FLAG_ZSTD: u32 = 1;
/// Raw bodies shorter than this are stored as they are: zstd builds its
/// tables for every frame, which costs more than a frame of a record or
/// two saves (about 20k instructions for one 130-byte SET, a third of all
/// the work of a SET at `-P 1`). Frames this small come from a lightly
/// loaded writer; under load a group holds many records and is compressed.
pub const COMPRESS_BYTES_MIN: usize = 512;
const FLAGS_KNOWN: u32 = FLAG_ZSTD;

/// Default for [`FrameLimits::body_bytes_max`]: 64 MiB.
pub const BODY_BYTES_MAX_DEFAULT: u32 = 64 << 20;
/// The largest whole frame under the default limits, header included.
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_LEN + BODY_BYTES_MAX_DEFAULT as usize;

/// Size caps applied when decoding frames, so that a corrupt or hostile
/// length never makes a reader allocate more than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// The largest frame body, stored or decompressed, in bytes.
    pub body_bytes_max: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
        }
    }
}

/// The parsed fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub crc: u32,
    pub body_len: u32,
    pub raw_len: u32,
    pub record_count: u32,
    pub first_lsn: Lsn,
    pub epoch: Epoch,
    pub timestamp_ms: u64,
    pub flags: u32,
}

impl FrameHeader {
    /// The LSN of the last record in the frame.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + u64::from(self.record_count) - 1)
    }

    /// Header and body, in bytes.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len as usize
    }

    /// Whether the body is zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            crc: u32_at(b, 0),
            body_len: u32_at(b, 4),
            raw_len: u32_at(b, 8),
            record_count: u32_at(b, 12),
            first_lsn: Lsn(u64_at(b, 16)),
            epoch: Epoch(u64_at(b, 24)),
            timestamp_ms: u64_at(b, 32),
            flags: u32_at(b, 40),
        }
    }

    /// Checks the fields that do not need the body; the reason when they are
    /// not a frame header.
    fn check(&self, b: &[u8; FRAME_HEADER_LEN], limits: FrameLimits) -> Result<(), Corrupt> {
        if b.iter().all(|&x| x == 0) {
            return Err(Corrupt::Zeroed);
        }
        if self.record_count == 0 {
            return Err(Corrupt::Header("record count is 0"));
        }
        if self.first_lsn.0 == 0
            || self
                .first_lsn
                .0
                .checked_add(u64::from(self.record_count))
                .is_none()
        {
            return Err(Corrupt::Header("lsn out of range"));
        }
        if self.flags & !FLAGS_KNOWN != 0 || u32_at(b, 44) != 0 {
            return Err(Corrupt::Header("unknown flags"));
        }
        if self.body_len > limits.body_bytes_max || self.raw_len > limits.body_bytes_max {
            return Err(Corrupt::TooLarge {
                body_len: self.body_len.max(self.raw_len),
                max: limits.body_bytes_max,
            });
        }
        if !self.is_compressed() && self.raw_len != self.body_len {
            return Err(Corrupt::Header("raw length differs from body length"));
        }
        // Every record takes at least a byte before compression; a
        // compressed body of many alike records can be far smaller.
        if self.body_len == 0 || self.raw_len < self.record_count {
            return Err(Corrupt::Header("body too short for its records"));
        }
        Ok(())
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corrupt {
    /// The header is all zero bytes: preallocated or zero-filled space.
    Zeroed,
    /// A header field is impossible.
    Header(&'static str),
    /// The header claims a body larger than the limit.
    TooLarge { body_len: u32, max: u32 },
    /// The crc does not match the header and body.
    Crc { stored: u32, computed: u32 },
    /// The crc matched but the body does not decode.
    Body(String),
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corrupt::Zeroed => write!(f, "zero-filled frame header"),
            Corrupt::Header(what) => write!(f, "bad frame header: {what}"),
            Corrupt::TooLarge { body_len, max } => {
                write!(
                    f,
                    "frame body of {body_len} bytes exceeds the limit of {max}"
                )
            }
            Corrupt::Crc { stored, computed } => {
                write!(
                    f,
                    "crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Corrupt::Body(why) => write!(f, "bad frame body: {why}"),
        }
    }
}

/// The outcome of decoding the bytes at the start of a buffer.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A whole frame whose crc matches.
    Frame(FrameRef<'a>),
    /// The buffer ends inside the frame: at least this many bytes are needed.
    NeedMore(usize),
    /// Not a valid frame.
    Corrupt(Corrupt),
}

/// A verified frame inside a buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    /// The whole frame, header included: the bytes to store or ship.
    pub bytes: &'a [u8],
}

impl FrameRef<'_> {
    /// The stored body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[FRAME_HEADER_LEN..]
    }
}

/// Whether `rest`, the bytes from a frame boundary to the end of a segment,
/// is zero-filled space: preallocated and never written, the end of the log
/// rather than damage (see the `wal` module's notes on preallocation).
pub fn is_zero_filled(rest: &[u8]) -> bool {
    !rest.is_empty() && rest.iter().all(|&x| x == 0)
}

/// Decodes the frame at the start of `buf`, checking its crc (but not
/// decompressing the body: see [`decode_records`]).
pub fn decode_frame(buf: &[u8], limits: FrameLimits) -> Decoded<'_> {
    let Some(head) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        if !buf.is_empty() && buf.iter().all(|&x| x == 0) {
            return Decoded::Corrupt(Corrupt::Zeroed);
        }
        return Decoded::NeedMore(FRAME_HEADER_LEN);
    };
    let header = FrameHeader::parse(head);
    if let Err(corrupt) = header.check(head, limits) {
        return Decoded::Corrupt(corrupt);
    }
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Decoded::NeedMore(frame_len);
    }
    let computed = frame_crc(&buf[4..FRAME_HEADER_LEN], &buf[FRAME_HEADER_LEN..frame_len]);
    if computed != header.crc {
        return Decoded::Corrupt(Corrupt::Crc {
            stored: header.crc,
            computed,
        });
    }
    Decoded::Frame(FrameRef {
        header,
        bytes: &buf[..frame_len],
    })
}

fn frame_crc(header_rest: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_rest);
    hasher.update(body);
    hasher.finalize()
}

thread_local! {
    /// One zstd decompression context per thread: creating one per frame
    /// costs more than decompressing a small frame.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses `body` into at most `capacity` bytes.
fn decompress(body: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match &mut *cell {
            Some(d) => d,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(body, capacity)
    })
}

/// Decodes the records of a verified frame. `frame` holds the whole frame
/// (as returned in [`FrameRef::bytes`]); uncompressed records are returned as
/// slices of it without copying.
///
/// # Errors
///
/// [`Corrupt::Body`] when the body does not decompress to `raw_len` bytes or
/// does not hold exactly `record_count` records.
pub fn decode_records(header: &FrameHeader, frame: &Bytes) -> Result<Vec<Bytes>, Corrupt> {
    let body = frame.slice(FRAME_HEADER_LEN..header.frame_len());
    let raw = if header.is_compressed() {
        // The capacity bounds the output: zstd fails rather than grow it.
        let out = decompress(&body, header.raw_len as usize)
            .map_err(|e| Corrupt::Body(format!("zstd: {e}")))?;
        if out.len() != header.raw_len as usize {
            return Err(Corrupt::Body(format!(
                "decompressed to {} bytes, header says {}",
                out.len(),
                header.raw_len
            )));
        }
        Bytes::from(out)
    } else {
        body
    };
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut pos = 0usize;
    for _ in 0..header.record_count {
        let (len, used) =
            read_varint(&raw[pos..]).ok_or_else(|| Corrupt::Body("bad record length".into()))?;
        pos += used;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| pos.checked_add(len))
            .filter(|&end| end <= raw.len())
            .ok_or_else(|| Corrupt::Body("record runs past the body".into()))?;
        records.push(raw.slice(pos..end));
        pos = end;
    }
    if pos != raw.len() {
        return Err(Corrupt::Body(format!(
            "{} bytes after the last record",
            raw.len() - pos
        )));
    }
    Ok(records)
}

/// Builds frames from records, reusing its buffers and zstd context.
pub struct FrameEncoder {
    raw: Vec<u8>,
    record_count: u32,
    compressor: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("raw_len", &self.raw.len())
            .field("record_count", &self.record_count)
            .finish_non_exhaustive()
    }
}

impl FrameEncoder {
    /// An encoder compressing with zstd at `level`.
    ///
    /// # Panics
    ///
    /// If zstd cannot create a compression context (out of memory).
    pub fn new(level: i32) -> FrameEncoder {
        FrameEncoder {
            raw: Vec::new(),
            record_count: 0,
            compressor: zstd::bulk::Compressor::new(level).expect("zstd compression context"),
            compressed: Vec::new(),
        }
    }

    /// Adds one record to the frame being built.
    pub fn push(&mut self, record: &[u8]) {
        write_varint(&mut self.raw, record.len() as u64);
        self.raw.extend_from_slice(record);
        self.record_count += 1;
    }

    /// Records pushed since the last [`finish`](Self::finish).
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Raw body bytes pushed since the last [`finish`](Self::finish).
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Appends the finished frame to `out` and starts a new one. Returns the
    /// frame's header.
    ///
    /// # Panics
    ///
    /// If no record was pushed, or the body exceeds `u32::MAX` bytes (callers
    /// bound it by [`FrameLimits`] first).
    pub fn finish(
        &mut self,
        first_lsn: Lsn,
        epoch: Epoch,
        timestamp_ms: u64,
        out: &mut Vec<u8>,
    ) -> FrameHeader {
        assert!(self.record_count > 0, "a frame holds at least one record");
        let raw_len = u32::try_from(self.raw.len()).expect("frame body fits in u32");
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        let compressed = self.raw.len() >= COMPRESS_BYTES_MIN
            && self
                .compressor
                .compress_to_buffer(&self.raw, &mut self.compressed)
                .is_ok()
            && self.compressed.len() < self.raw.len();
        let (body, flags) = if compressed {
            (&self.compressed, FLAG_ZSTD)
        } else {
            (&self.raw, 0)
        };
        let header = FrameHeader {
            crc: 0,
            body_len: body.len() as u32,
            raw_len,
            record_count: self.record_count,
            first_lsn,
            epoch,
            timestamp_ms,
            flags,
        };
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let head = &mut out[start..start + FRAME_HEADER_LEN];
        head[4..8].copy_from_slice(&header.body_len.to_le_bytes());
        head[8..12].copy_from_slice(&header.raw_len.to_le_bytes());
        head[12..16].copy_from_slice(&header.record_count.to_le_bytes());
        head[16..24].copy_from_slice(&first_lsn.0.to_le_bytes());
        head[24..32].copy_from_slice(&epoch.0.to_le_bytes());
        head[32..40].copy_from_slice(&timestamp_ms.to_le_bytes());
        head[40..44].copy_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(body);
        let crc = frame_crc(
            &out[start + 4..start + FRAME_HEADER_LEN],
            &out[start + FRAME_HEADER_LEN..],
        );
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        self.raw.clear();
        self.record_count = 0;
        FrameHeader { crc, ..header }
    }
}

/// The raw-body bytes one record takes: its varint length and its bytes.
pub fn encoded_record_len(record_len: usize) -> usize {
    let mut len = record_len as u64;
    let mut bytes = 1;
    while len >= 0x80 {
        len >>= 7;
        bytes += 1;
    }
    bytes + record_len
}

/// The segment header for a segment whose first record is `first_lsn`.
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&first_lsn.0.to_le_bytes());
    let crc = segment_header_crc(&b);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn segment_header_crc(b: &[u8; SEGMENT_HEADER_LEN]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&b[0..12]);
    hasher.update(&b[16..24]);
    hasher.finalize()
}

/// Parses a segment header: its first LSN, or why it is not one.
pub fn decode_segment_header(buf: &[u8]) -> Result<Lsn, &'static str> {
    let b = buf
        .first_chunk::<SEGMENT_HEADER_LEN>()
        .ok_or("segment shorter than its header")?;
    if b[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if segment_header_crc(b) != u32_at(b, 12) {
        return Err("segment header crc mismatch");
    }
    if u32_at(b, 8) != SEGMENT_VERSION {
        return Err("unsupported segment format version");
    }
    match u64_at(b, 16) {
        0 => Err("a segment's first lsn is 0 (lsns start at 1)"),
        lsn => Ok(Lsn(lsn)),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The value and the bytes it took, or `None` if `buf` ends first or the
/// varint is longer than 10 bytes.
fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(records: &[Vec<u8>], first: u64) -> Vec<u8> {
        let mut enc = FrameEncoder::new(1);
        for r in records {
            enc.push(r);
        }
        let mut out = Vec::new();
        enc.finish(Lsn(first), Epoch(3), 1_700_000_000_000, &mut out);
        out
    }

    fn decode_all(buf: &[u8]) -> (FrameHeader, Vec<Vec<u8>>) {
        match decode_frame(buf, FrameLimits::default()) {
            Decoded::Frame(f) => {
                let bytes = Bytes::copy_from_slice(f.bytes);
                let records = decode_records(&f.header, &bytes).expect("body decodes");
                (f.header, records.iter().map(|r| r.to_vec()).collect())
            }
            other => panic!("not a frame: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn frame_round_trips(
            records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..40),
            repeat in any::<bool>(),
            first in 1u64..1 << 40,
        ) {
            // Repetitive records compress, random ones do not: both paths run.
            let records: Vec<Vec<u8>> = if repeat {
                records.iter().map(|r| r.iter().cycle().take(r.len() * 4).copied().collect()).collect()
            } else {
                records
            };
            let buf = encode(&records, first);
            let (header, decoded) = decode_all(&buf);
            prop_assert_eq!(header.first_lsn, Lsn(first));
            prop_assert_eq!(header.record_count as usize, records.len());
            prop_assert_eq!(header.epoch, Epoch(3));
            prop_assert_eq!(header.frame_len(), buf.len());
            prop_assert_eq!(decoded, records);
        }

        #[test]
        fn every_strict_prefix_needs_more_or_is_zeroed(cut in 0usize..2000) {
            let records = vec![vec![7u8; 100], b"hello".to_vec(), vec![]];
            let buf = encode(&records, 1);
            let cut = cut % buf.len();
            match decode_frame(&buf[..cut], FrameLimits::default()) {
                Decoded::NeedMore(n) => prop_assert!(n > cut),
                other => prop_assert!(false, "prefix of {} decoded as {:?}", cut, other),
            }
        }
    }

    #[test]
    fn compressible_body_is_compressed_and_small_or_random_body_is_not() {
        let buf = encode(&[vec![b'a'; 1000]], 1);
        let (header, _) = decode_all(&buf);
        assert!(header.is_compressed());
        assert!(header.body_len < 100);

        // Under the threshold, even a body that would compress is stored.
        let small = vec![b'a'; COMPRESS_BYTES_MIN - 10];
        let buf = encode(std::slice::from_ref(&small), 1);
        let (header, records) = decode_all(&buf);
        assert!(!header.is_compressed());
        assert_eq!(header.raw_len, header.body_len);
        assert_eq!(records, vec![small]);

        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let buf = encode(&[noise], 1);
        let (header, _) = decode_all(&buf);
        assert!(!header.is_compressed());
        assert_eq!(header.raw_len, header.body_len);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = encode(&[b"one".to_vec(), vec![b'z'; 200], b"three".to_vec()], 42);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode_frame(&bad, FrameLimits::default()) {
                Decoded::Corrupt(_) | Decoded::NeedMore(_) => {}
                Decoded::Frame(f) => panic!("flip of bit {bit} went unnoticed: {:?}", f.header),
            }
        }
    }

    #[test]
    fn oversize_claims_are_refused_before_reading_the_body() {
        let mut buf = encode(&[b"x".to_vec()], 1);
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&buf, FrameLimits::default()),
            Decoded::Corrupt(Corrupt::TooLarge { .. })
        ));
        let limits = FrameLimits { body_bytes_max: 4 };
        let buf = encode(&[vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], 1);
        assert!(matches!(
            decode_frame(&buf, limits),
            Decoded::Corrupt(Corrupt::TooLarge { .. })
        ));
    }

    #[test]
    fn zero_filled_space_reads_as_zeroed() {
        assert!(matches!(
            decode_frame(&[0u8; 512], FrameLimits::default()),
            Decoded::Corrupt(Corrupt::Zeroed)
        ));
        assert!(matches!(
            decode_frame(&[0u8; 5], FrameLimits::default()),
            Decoded::Corrupt(Corrupt::Zeroed)
        ));
        assert!(matches!(
            decode_frame(&[], FrameLimits::default()),
            Decoded::NeedMore(_)
        ));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_flips() {
        let b = encode_segment_header(Lsn(12345));
        assert_eq!(decode_segment_header(&b), Ok(Lsn(12345)));
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut bad = b;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&bad).is_err(), "bit {bit}");
        }
        assert!(decode_segment_header(&encode_segment_header(Lsn(0))).is_err());
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 16383, 16384, u32::MAX as u64] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(
                out.len(),
                encoded_record_len(v as usize) - v as usize,
                "{v}"
            );
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        let mut out = Vec::new();
        write_varint(&mut out, u64::MAX);
        assert_eq!(read_varint(&out), Some((u64::MAX, 10)));
        assert_eq!(read_varint(&[0x80, 0x80]), None);
    }
}
