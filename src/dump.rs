//! The payload of DUMP and RESTORE: one value in Redis's RDB serialization,
//! then the RDB version (2 bytes, little-endian) and a CRC-64 (Jones, as
//! Redis computes it, little-endian) of everything before it.
//!
//! DUMP writes strings as plain RDB strings and hashes as RDB hashes
//! (type 4), which every Redis since 2.6 loads, under RDB version 9 (Redis
//! 5 and later take it). RESTORE reads what Redis writes for the two types
//! ferry holds: strings (plain, integer-encoded or LZF-compressed) and
//! hashes (type 4, a ziplist from Redis 6 and before, a listpack from
//! Redis 7), up to RDB version [`RDB_VERSION_READ_MAX`]. Any other type,
//! or bytes that do not decode, is an error; no length read from the
//! payload makes it allocate more than the payload holds (an LZF string:
//! more than the largest value).

use bytes::Bytes;

/// The RDB version DUMP writes.
pub const RDB_VERSION_WRITTEN: u16 = 9;
/// The latest RDB version RESTORE takes (Redis 7.4's): its strings and
/// hashes are encoded as in earlier versions.
pub const RDB_VERSION_READ_MAX: u16 = 12;

const TYPE_STRING: u8 = 0;
const TYPE_HASH: u8 = 4;
const TYPE_HASH_ZIPLIST: u8 = 13;
const TYPE_HASH_LISTPACK: u8 = 16;

/// A value as a payload carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dumped {
    String(Bytes),
    /// Fields in the payload's order, each once.
    Hash(Vec<(Bytes, Bytes)>),
}

/// Why a payload was refused, in Redis's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too short, a later RDB version, or a checksum that does not match.
    VersionOrChecksum,
    /// The value does not decode, or is of a type ferry does not hold.
    BadFormat,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::VersionOrChecksum => "DUMP payload version or checksum are wrong",
            Refused::BadFormat => "Bad data format",
        }
    }
}

/// The payload of `value`.
pub fn encode(value: &Dumped) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Dumped::String(s) => {
            out.push(TYPE_STRING);
            put_string(&mut out, s);
        }
        Dumped::Hash(fields) => {
            out.push(TYPE_HASH);
            put_len(&mut out, fields.len() as u64);
            for (field, value) in fields {
                put_string(&mut out, field);
                put_string(&mut out, value);
            }
        }
    }
    out.extend_from_slice(&RDB_VERSION_WRITTEN.to_le_bytes());
    let crc = crc64(0, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The value in `payload`; `max_len` bounds a string a compressed one
/// expands to.
///
/// # Errors
///
/// [`Refused`], as RESTORE replies.
pub fn decode(payload: &[u8], max_len: u64) -> Result<Dumped, Refused> {
    let Some(body_len) = payload.len().checked_sub(10) else {
        return Err(Refused::VersionOrChecksum);
    };
    let footer = &payload[body_len..];
    let version = u16::from_le_bytes([footer[0], footer[1]]);
    let crc = u64::from_le_bytes(footer[2..].try_into().expect("8 bytes"));
    if version > RDB_VERSION_READ_MAX || crc64(0, &payload[..body_len + 2]) != crc {
        return Err(Refused::VersionOrChecksum);
    }
    let mut r = Rdb {
        bytes: &payload[..body_len],
        max_len,
    };
    let value = match r.byte()? {
        TYPE_STRING => Dumped::String(r.string()?),
        TYPE_HASH => {
            let len = r.len()?;
            // Each field takes two bytes at least.
            if len == 0 || len > r.bytes.len() as u64 / 2 {
                return Err(Refused::BadFormat);
            }
            let mut fields = Vec::with_capacity(len as usize);
            for _ in 0..len {
                fields.push((r.string()?, r.string()?));
            }
            Dumped::Hash(unique(fields)?)
        }
        TYPE_HASH_ZIPLIST => Dumped::Hash(unique(pairs(ziplist(&r.string()?)?)?)?),
        TYPE_HASH_LISTPACK => Dumped::Hash(unique(pairs(listpack(&r.string()?)?)?)?),
        _ => return Err(Refused::BadFormat),
    };
    if !r.bytes.is_empty() {
        return Err(Refused::BadFormat);
    }
    Ok(value)
}

/// An RDB length: 6 bits, 14 bits, or 32 or 64 bits big-endian.
fn put_len(out: &mut Vec<u8>, len: u64) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.extend_from_slice(&((len as u16) | 0x4000).to_be_bytes());
    } else if len <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// The RDB encoding of a value, read from the front.
struct Rdb<'a> {
    bytes: &'a [u8],
    max_len: u64,
}

/// A length, or one of the special string encodings.
enum Len {
    Plain(u64),
    Encoded(u8),
}

impl Rdb<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], Refused> {
        let n = usize::try_from(n).map_err(|_| Refused::BadFormat)?;
        if n > self.bytes.len() {
            return Err(Refused::BadFormat);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn any_len(&mut self) -> Result<Len, Refused> {
        let first = self.byte()?;
        Ok(match first >> 6 {
            0 => Len::Plain(u64::from(first & 0x3f)),
            1 => Len::Plain(u64::from(first & 0x3f) << 8 | u64::from(self.byte()?)),
            2 if first == 0x80 => Len::Plain(u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            ))),
            2 if first == 0x81 => Len::Plain(u64::from_be_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => return Err(Refused::BadFormat),
            _ => Len::Encoded(first & 0x3f),
        })
    }

    fn len(&mut self) -> Result<u64, Refused> {
        match self.any_len()? {
            Len::Plain(len) => Ok(len),
            Len::Encoded(_) => Err(Refused::BadFormat),
        }
    }

    /// A string: plain, an integer (8, 16 or 32 bits, little-endian) or
    /// LZF-compressed.
    fn string(&mut self) -> Result<Bytes, Refused> {
        match self.any_len()? {
            Len::Plain(len) => Ok(Bytes::copy_from_slice(self.take(len)?)),
            Len::Encoded(0) => Ok(int_string(i64::from(self.byte()? as i8))),
            Len::Encoded(1) => Ok(int_string(i64::from(i16::from_le_bytes(
                self.take(2)?.try_into().expect("2 bytes"),
            )))),
            Len::Encoded(2) => Ok(int_string(i64::from(i32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )))),
            Len::Encoded(3) => {
                let compressed = self.len()?;
                let len = self.len()?;
                if len > self.max_len {
                    return Err(Refused::BadFormat);
                }
                let input = self.take(compressed)?;
                lzf_decompress(input, len as usize).map(Bytes::from)
            }
            Len::Encoded(_) => Err(Refused::BadFormat),
        }
    }
}

fn int_string(n: i64) -> Bytes {
    Bytes::from(n.to_string())
}

/// LZF's expansion of `input`, which must come to `len` bytes exactly.
fn lzf_decompress(input: &[u8], len: usize) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while i < input.len() {
        let ctrl = usize::from(input[i]);
        i += 1;
        if ctrl < 32 {
            // A run of ctrl + 1 literal bytes.
            let run = input.get(i..i + ctrl + 1).ok_or(Refused::BadFormat)?;
            out.extend_from_slice(run);
            i += ctrl + 1;
        } else {
            // A back reference: a length and a distance.
            let mut n = ctrl >> 5;
            if n == 7 {
                n += usize::from(*input.get(i).ok_or(Refused::BadFormat)?);
                i += 1;
            }
            let low = usize::from(*input.get(i).ok_or(Refused::BadFormat)?);
            i += 1;
            let distance = ((ctrl & 0x1f) << 8) + low + 1;
            let start = out.len().checked_sub(distance).ok_or(Refused::BadFormat)?;
            if out.len() + n + 2 > len {
                return Err(Refused::BadFormat);
            }
            // Byte by byte: the copy may overlap what it writes.
            for k in 0..n + 2 {
                let b = out[start + k];
                out.push(b);
            }
        }
        if out.len() > len {
            return Err(Refused::BadFormat);
        }
    }
    if out.len() == len {
        Ok(out)
    } else {
        Err(Refused::BadFormat)
    }
}

/// The entries of a ziplist or a listpack: `header` bytes (the first four
/// the blob's length), then entries, each read by `entry` from its first
/// byte on, up to the end byte (0xff), which must be the last.
fn packed(
    blob: &[u8],
    header: usize,
    mut entry: impl FnMut(&mut Rdb<'_>, u8) -> Result<Bytes, Refused>,
) -> Result<Vec<Bytes>, Refused> {
    let total = blob.get(..4).ok_or(Refused::BadFormat)?;
    if u32::from_le_bytes(total.try_into().expect("4 bytes")) as usize != blob.len() {
        return Err(Refused::BadFormat);
    }
    let mut p = Rdb {
        bytes: blob.get(header..).ok_or(Refused::BadFormat)?,
        max_len: 0,
    };
    let mut out = Vec::new();
    loop {
        let first = p.byte()?;
        if first == 0xff {
            break;
        }
        out.push(entry(&mut p, first)?);
    }
    if p.bytes.is_empty() {
        Ok(out)
    } else {
        Err(Refused::BadFormat)
    }
}

/// The entries of a ziplist (Redis 6 and before): a header of 10 bytes,
/// entries that each begin with the previous entry's length.
fn ziplist(zl: &[u8]) -> Result<Vec<Bytes>, Refused> {
    packed(zl, 10, |p, first| {
        if first == 0xfe {
            p.take(4)?;
        }
        let enc = p.byte()?;
        Ok(match enc >> 6 {
            0 => Bytes::copy_from_slice(p.take(u64::from(enc & 0x3f))?),
            1 => {
                let len = u64::from(enc & 0x3f) << 8 | u64::from(p.byte()?);
                Bytes::copy_from_slice(p.take(len)?)
            }
            2 => {
                let len = u32::from_be_bytes(p.take(4)?.try_into().expect("4 bytes"));
                Bytes::copy_from_slice(p.take(u64::from(len))?)
            }
            _ => int_string(match enc {
                0xc0 => i64::from(i16::from_le_bytes(p.take(2)?.try_into().expect("2"))),
                0xd0 => i64::from(i32::from_le_bytes(p.take(4)?.try_into().expect("4"))),
                0xe0 => i64::from_le_bytes(p.take(8)?.try_into().expect("8")),
                0xf0 => {
                    let b = p.take(3)?;
                    i64::from(i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8)
                }
                0xfe => i64::from(p.byte()? as i8),
                0xf1..=0xfd => i64::from(enc & 0x0f) - 1,
                _ => return Err(Refused::BadFormat),
            }),
        })
    })
}

/// The entries of a listpack (Redis 7): a header of 6 bytes, entries that
/// each end with their own length.
fn listpack(lp: &[u8]) -> Result<Vec<Bytes>, Refused> {
    packed(lp, 6, |p, enc| {
        // With the byte already read.
        let before = p.bytes.len() + 1;
        let entry = if enc & 0x80 == 0 {
            int_string(i64::from(enc))
        } else if enc & 0xc0 == 0x80 {
            Bytes::copy_from_slice(p.take(u64::from(enc & 0x3f))?)
        } else if enc & 0xe0 == 0xc0 {
            // 13 bits, two's complement.
            let raw = i64::from(enc & 0x1f) << 8 | i64::from(p.byte()?);
            int_string(if raw >= 1 << 12 { raw - (1 << 13) } else { raw })
        } else if enc & 0xf0 == 0xe0 {
            let len = u64::from(enc & 0x0f) << 8 | u64::from(p.byte()?);
            Bytes::copy_from_slice(p.take(len)?)
        } else {
            match enc {
                0xf0 => {
                    let len = u32::from_le_bytes(p.take(4)?.try_into().expect("4 bytes"));
                    Bytes::copy_from_slice(p.take(u64::from(len))?)
                }
                0xf1 => int_string(i64::from(i16::from_le_bytes(
                    p.take(2)?.try_into().expect("2"),
                ))),
                0xf2 => {
                    let b = p.take(3)?;
                    int_string(i64::from(i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8))
                }
                0xf3 => int_string(i64::from(i32::from_le_bytes(
                    p.take(4)?.try_into().expect("4"),
                ))),
                0xf4 => int_string(i64::from_le_bytes(p.take(8)?.try_into().expect("8"))),
                _ => return Err(Refused::BadFormat),
            }
        };
        // The entry's length, written after it in 1 to 5 bytes.
        let backlen = match before - p.bytes.len() {
            0..=127 => 1,
            128..=16_382 => 2,
            16_383..=2_097_150 => 3,
            2_097_151..=268_435_454 => 4,
            _ => 5,
        };
        p.take(backlen)?;
        Ok(entry)
    })
}

/// Entries as field-value pairs.
fn pairs(entries: Vec<Bytes>) -> Result<Vec<(Bytes, Bytes)>, Refused> {
    if entries.is_empty() || !entries.len().is_multiple_of(2) {
        return Err(Refused::BadFormat);
    }
    let mut it = entries.into_iter();
    let mut out = Vec::new();
    while let (Some(field), Some(value)) = (it.next(), it.next()) {
        out.push((field, value));
    }
    Ok(out)
}

/// A hash's fields, refused if one comes twice (as Redis refuses them).
fn unique(fields: Vec<(Bytes, Bytes)>) -> Result<Vec<(Bytes, Bytes)>, Refused> {
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    if fields.iter().all(|(f, _)| seen.insert(f.clone())) {
        Ok(fields)
    } else {
        Err(Refused::BadFormat)
    }
}

/// CRC-64 with Jones's polynomial, reflected, as Redis computes it.
pub fn crc64(mut crc: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        crc = CRC64_TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

const CRC64_TABLE: [u64; 256] = {
    // Jones's polynomial 0xad93d23594c935a9, bits reversed.
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    /// `body` with its footer: the RDB version DUMP writes and the
    /// checksum.
    fn sealed(body: &[u8]) -> Vec<u8> {
        let mut p = body.to_vec();
        p.extend_from_slice(&RDB_VERSION_WRITTEN.to_le_bytes());
        let crc = crc64(0, &p);
        p.extend_from_slice(&crc.to_le_bytes());
        p
    }

    /// A ziplist's or listpack's bytes: a `header`-byte header (its total
    /// length first), `entries`, the end byte.
    fn packed_blob(header: usize, entries: &[u8]) -> Vec<u8> {
        let mut blob = ((header + entries.len() + 1) as u32).to_le_bytes().to_vec();
        blob.resize(header, 0);
        blob.extend_from_slice(entries);
        blob.push(0xff);
        blob
    }

    fn texts(entries: Vec<Bytes>) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect()
    }

    #[test]
    fn crc64_is_redis_s() {
        // The check value of CRC-64/Jones, in Redis's own crc64 test.
        assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    /// Payloads that Redis 7.0's DUMP gave (redis-cli --no-raw).
    #[test]
    fn redis_s_payloads_decode() {
        let cases: [(&[u8], Dumped); 4] = [
            (
                b"\x00\x05hello\n\x00cr\xdfve4 \n",
                Dumped::String(b(b"hello")),
            ),
            (
                b"\x00\xc0{\n\x00H\xe2S\xe1\x00zg\xb9",
                Dumped::String(b(b"123")),
            ),
            (
                b"\x10\x14\x14\x00\x00\x00\x04\x00\x81a\x02\x01\x01\x81b\x02\x83xyz\x04\xff\n\x00.,\"ne=\x1f\xc4",
                Dumped::Hash(vec![(b(b"a"), b(b"1")), (b(b"b"), b(b"xyz"))]),
            ),
            (
                b"\x00\xc3\t(\x01aa\xe0\x1b\x00\x01aa\n\x00\xcf\t/\xaa\xae%\x83\x1d",
                Dumped::String(Bytes::from(vec![b'a'; 40])),
            ),
        ];
        for (payload, value) in cases {
            assert_eq!(decode(payload, 1 << 20), Ok(value));
        }
    }

    #[test]
    fn what_dump_writes_decodes() {
        let long = Bytes::from(vec![7u8; 100_000]);
        for value in [
            Dumped::String(Bytes::new()),
            Dumped::String(b(b"x")),
            Dumped::String(long.clone()),
            Dumped::Hash(vec![(b(b"f"), b(b"")), (b(b"g"), long)]),
            Dumped::Hash(
                (0..300)
                    .map(|i| (b(format!("f{i}").as_bytes()), b(b"v")))
                    .collect(),
            ),
        ] {
            assert_eq!(decode(&encode(&value), 1 << 20), Ok(value));
        }
    }

    #[test]
    fn bad_payloads_are_refused_without_allocating_their_claims() {
        let good = encode(&Dumped::String(b(b"hello")));
        assert_eq!(decode(&good[..9], 100), Err(Refused::VersionOrChecksum));
        let mut flipped = good.clone();
        flipped[3] ^= 1;
        assert_eq!(decode(&flipped, 100), Err(Refused::VersionOrChecksum));
        // A later RDB version.
        let mut later = good[..good.len() - 10].to_vec();
        later.extend_from_slice(&(RDB_VERSION_READ_MAX + 1).to_le_bytes());
        let crc = crc64(0, &later);
        later.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&later, 100), Err(Refused::VersionOrChecksum));
        // Well-formed footers around bodies that do not decode: a length
        // past the end, a hash claiming 2^32 fields, an LZF string longer
        // than the largest value, a list (type 1), bytes left over, a hash
        // with a field twice.
        for body in [
            &b"\x00\x80\xff\xff\xff\xffab"[..],
            b"\x04\x80\xff\xff\xff\xff\x01a\x01b",
            b"\x00\xc3\x01\x80\x7f\xff\xff\xff\x00",
            b"\x01\x01\x01a",
            b"\x00\x01ab",
            b"\x04\x02\x01a\x01b\x01a\x01c",
            b"\x04\x00",
        ] {
            assert_eq!(
                decode(&sealed(body), 1 << 20),
                Err(Refused::BadFormat),
                "{body:?}"
            );
        }
    }

    /// RESTORE's payload comes from clients: payloads changed at random
    /// (bytes flipped, cut, inserted; the checksum made right again so
    /// the body is parsed) decode or are refused, never panic, and never
    /// decode to more than the largest value.
    #[test]
    fn changed_payloads_decode_or_are_refused() {
        let seed = ferry_wal::testing::test_seed("changed_payloads_decode_or_are_refused");
        let mut rng = ferry_wal::testing::SeededRng::new(seed);
        let mut seeds: Vec<Vec<u8>> = vec![
            b"\x00\xc3\t(\x01aa\xe0\x1b\x00\x01aa\n\x00\xcf\t/\xaa\xae%\x83\x1d".to_vec(),
            b"\x10\x14\x14\x00\x00\x00\x04\x00\x81a\x02\x01\x01\x81b\x02\x83xyz\x04\xff\n\x00.,\"ne=\x1f\xc4".to_vec(),
            encode(&Dumped::Hash(vec![(b(b"f"), b(b"v")), (b(b"g"), b(b"123"))])),
        ];
        // A ziplist hash, as Redis 6 dumps one.
        let zl = packed_blob(10, b"\x00\x01f\x02\xf2\x03\x02gh\x04\x01v");
        let mut body = vec![TYPE_HASH_ZIPLIST, zl.len() as u8];
        body.extend_from_slice(&zl);
        let body = sealed(&body);
        assert!(decode(&body, 1 << 20).is_ok(), "seed {seed}");
        seeds.push(body);
        let max_len = 1 << 16;
        for round in 0..20_000 {
            let mut p = seeds[rng.below(seeds.len() as u64) as usize].clone();
            let body_len = p.len() - 8;
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(body_len as u64) as usize;
                match rng.below(3) {
                    0 => p[at] ^= 1 << rng.below(8),
                    1 => p[at] = rng.next_u64() as u8,
                    _ => p.insert(at, rng.next_u64() as u8),
                }
            }
            if rng.below(4) == 0 {
                // The body cut short, the footer kept.
                let keep = rng.below(p.len() as u64 - 9) as usize;
                p.drain(keep..p.len() - 10);
            }
            let n = p.len() - 8;
            let crc = crc64(0, &p[..n]);
            p[n..].copy_from_slice(&crc.to_le_bytes());
            match decode(&p, max_len) {
                Ok(Dumped::String(s)) => assert!(s.len() as u64 <= max_len.max(p.len() as u64)),
                Ok(Dumped::Hash(fields)) => {
                    assert!(!fields.is_empty(), "seed {seed} round {round}")
                }
                Err(_) => {}
            }
        }
    }

    #[test]
    fn a_ziplist_of_every_encoding_decodes() {
        // prevlen, encoding, data: strings of 6 and 14 bits, ints of 8,
        // 16, 24, 32 and 64 bits and an immediate.
        let mut entries: Vec<u8> = Vec::new();
        let mut push = |entry: &[u8]| {
            entries.push(0);
            entries.extend_from_slice(entry);
        };
        push(b"\x01a");
        push(&[0xfe, 0xf6]);
        push(&[0x40, 0x02, b'b', b'c']);
        push(&[0xc0, 0x39, 0x30]);
        push(&[0xf0, 0xff, 0xff, 0x7f]);
        push(&[0xd0, 0x00, 0x00, 0x00, 0x80]);
        push(&[0xe0, 1, 0, 0, 0, 0, 0, 0, 0]);
        push(&[0xf3]);
        let got = texts(ziplist(&packed_blob(10, &entries)).unwrap());
        assert_eq!(
            got,
            [
                "a",
                "-10",
                "bc",
                "12345",
                "8388607",
                "-2147483648",
                "1",
                "2"
            ]
        );
    }

    #[test]
    fn a_listpack_of_every_encoding_decodes() {
        let mut entries: Vec<u8> = Vec::new();
        let mut push = |entry: &[u8]| {
            entries.extend_from_slice(entry);
            entries.push(entry.len() as u8);
        };
        push(&[0x05]);
        push(&[0xdf, 0xff]);
        push(&[0xe0, 0x02, b'x', b'y']);
        push(&[0xf1, 0x00, 0x80]);
        push(&[0xf2, 0xff, 0xff, 0xff]);
        push(&[0xf3, 0x00, 0x00, 0x00, 0x80]);
        push(&[0xf4, 2, 0, 0, 0, 0, 0, 0, 0]);
        push(&[0xf0, 1, 0, 0, 0, b'z']);
        let got = texts(listpack(&packed_blob(6, &entries)).unwrap());
        assert_eq!(
            got,
            ["5", "-1", "xy", "-32768", "-1", "-2147483648", "2", "z"]
        );
    }
}
