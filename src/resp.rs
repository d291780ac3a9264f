//! The Redis protocol: parsing requests (RESP multibulk and inline) and
//! encoding replies in RESP2 or RESP3.
//!
//! The parser never allocates from a length the client claims: a bulk is
//! taken once all its bytes have arrived, and the query buffer limit bounds
//! what may arrive. Protocol errors carry Redis's own text.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};

/// Longest inline request, and longest `*`/`$` header line (Redis's
/// PROTO_INLINE_MAX_SIZE).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Limits on what a request may claim.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Largest bulk string (Redis's `proto-max-bulk-len`).
    pub bulk_bytes_max: usize,
    /// Most arguments in one request.
    pub multibulk_len_max: usize,
    /// The client has yet to authenticate (with `--requirepass`): Redis's
    /// tighter limits hold ([`UNAUTHENTICATED_MULTIBULK_LEN_MAX`],
    /// [`UNAUTHENTICATED_BULK_BYTES_MAX`]).
    pub unauthenticated: bool,
}

/// Most arguments in one request of a client yet to authenticate.
pub const UNAUTHENTICATED_MULTIBULK_LEN_MAX: i64 = 10;
/// Largest bulk string of a client yet to authenticate.
pub const UNAUTHENTICATED_BULK_BYTES_MAX: i64 = 16 * 1024;
/// Requests of up to this many arguments (most) are parsed without a
/// scratch allocation.
const SHORT_REQUEST_ARGS: usize = 8;

/// A request the client sent that breaks the protocol: the connection is
/// answered with this text and closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// Takes one request off the front of `buf`: `Ok(None)` if more bytes are
/// needed. Empty requests (a blank line, `*0`, `*-1`) yield an empty vector.
///
/// # Errors
///
/// [`ProtocolError`] with Redis's text for malformed input.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: ParseLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'*' {
        parse_multibulk(buf, limits)
    } else {
        parse_inline(buf)
    }
}

/// The line starting at `from` (without its `\r\n`), and where the next
/// starts; `None` if no `\n` has arrived yet.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let nl = buf[from..].iter().position(|&b| b == b'\n')? + from;
    let end = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((&buf[from..end], nl + 1))
}

/// A decimal integer as Redis's `string2ll` takes it: an optional minus, no
/// plus, no spaces, no leading zeros.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        v = if neg {
            v.checked_mul(10)?.checked_sub(d)?
        } else {
            v.checked_mul(10)?.checked_add(d)?
        };
    }
    Some(v)
}

fn parse_multibulk(
    buf: &mut BytesMut,
    limits: ParseLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let err = |what: &str| ProtocolError(what.to_owned());
    let Some((head, mut at)) = line(buf, 1) else {
        if buf.len() > INLINE_BYTES_MAX {
            return Err(err("too big mbulk count string"));
        }
        return Ok(None);
    };
    // Redis's order: a length no request may have, then one a client yet
    // to authenticate may not, then ferry's own limit.
    let count = parse_i64(head)
        .filter(|&n| n <= i64::from(i32::MAX))
        .ok_or_else(|| err("invalid multibulk length"))?;
    if limits.unauthenticated && count > UNAUTHENTICATED_MULTIBULK_LEN_MAX {
        return Err(err("unauthenticated multibulk length"));
    }
    if count > limits.multibulk_len_max as i64 {
        return Err(err("invalid multibulk length"));
    }
    if count <= 0 {
        buf.advance(at);
        return Ok(Some(Vec::new()));
    }
    // Bulk bounds first (on the stack for a short request); the arguments
    // are cut out only once all are here.
    let count = count as usize;
    let mut short = [(0, 0); SHORT_REQUEST_ARGS];
    let mut long = Vec::new();
    if count > SHORT_REQUEST_ARGS {
        long.reserve(count.min(1024));
    }
    let mut filled = 0;
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                buf[at] as char
            )));
        }
        let Some((head, next)) = line(buf, at + 1) else {
            if buf.len() - at > INLINE_BYTES_MAX {
                return Err(err("too big bulk count string"));
            }
            return Ok(None);
        };
        let len = parse_i64(head)
            .filter(|&n| n >= 0 && n as u64 <= limits.bulk_bytes_max as u64)
            .ok_or_else(|| err("invalid bulk length"))?;
        if limits.unauthenticated && len > UNAUTHENTICATED_BULK_BYTES_MAX {
            return Err(err("unauthenticated bulk length"));
        }
        let len = len as usize;
        if buf.len() < next + len + 2 {
            return Ok(None);
        }
        if count > SHORT_REQUEST_ARGS {
            long.push((next, next + len));
        } else {
            short[filled] = (next, next + len);
            filled += 1;
        }
        at = next + len + 2;
    }
    let bounds = if count > SHORT_REQUEST_ARGS {
        &long[..]
    } else {
        &short[..count]
    };
    let frozen = buf.split_to(at).freeze();
    let mut args = Vec::with_capacity(count);
    args.extend(bounds.iter().map(|&(s, e)| frozen.slice(s..e)));
    Ok(Some(args))
}

fn parse_inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some((text, next)) = line(buf, 0) else {
        if buf.len() > INLINE_BYTES_MAX {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    let args =
        split_args(text).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    buf.advance(next);
    Ok(Some(args))
}

/// Splits an inline request as Redis's `sdssplitargs`: spaces separate,
/// double quotes allow `\n`, `\xHH` and friends, single quotes allow `\'`.
/// `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            if in_dq {
                if i == line.len() {
                    return None;
                }
                if line[i] == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok();
                    if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        cur.push(b);
                        i += 4;
                        continue;
                    }
                }
                if line[i] == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if line[i] == b'"' {
                    // A closing quote must be followed by a space or the end.
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    in_dq = false;
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                }
            } else if in_sq {
                if i == line.len() {
                    return None;
                }
                if line[i] == b'\\' && i + 1 < line.len() && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if line[i] == b'\'' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    in_sq = false;
                    i += 1;
                    break;
                } else {
                    cur.push(line[i]);
                }
            } else {
                if i == line.len() || line[i].is_ascii_whitespace() {
                    break;
                }
                match line[i] {
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    b => cur.push(b),
                }
            }
            i += 1;
        }
        debug_assert!(!in_dq && !in_sq);
        args.push(Bytes::from(cur));
    }
}

/// A reply, encoded for the connection's protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK` (most are fixed words: no allocation for them).
    Simple(Cow<'static, str>),
    /// `-ERR ...`: the text includes its prefix (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// A missing array: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    Array(Vec<Reply>),
    /// A set (`~N`) in RESP3, an array in RESP2.
    Set(Vec<Reply>),
    /// A map in RESP3, a flat array of pairs in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Pairs that may repeat (HRANDFIELD's fields with values): an array
    /// of two-element arrays in RESP3, a flat array in RESP2.
    Pairs(Vec<(Reply, Reply)>),
    /// A double (`,` in RESP3, a bulk string in RESP2), written as C's
    /// `%.17g` writes it, as Redis does.
    Double(f64),
    /// Text to show as it is (INFO, CLIENT LIST): a verbatim string
    /// (`=N\r\ntxt:...`) in RESP3, a bulk string in RESP2.
    Verbatim(Bytes),
    /// An out-of-band message (`>N` in RESP3, an array in RESP2): Pub/Sub's
    /// confirmations and messages.
    Push(Vec<Reply>),
    /// Several replies in a row, for one command (SUBSCRIBE's, one per
    /// channel).
    Seq(Vec<Reply>),
    /// A reply in the protocol given, whatever the connection's: inside
    /// EXEC's array, the replies before a HELLO among its commands keep the
    /// protocol they were made in.
    In {
        resp3: bool,
        reply: Box<Reply>,
    },
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// An error with the `ERR` prefix.
    pub fn err(text: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {text}"))
    }

    pub fn wrong_type() -> Reply {
        Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn bulk_str(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    pub fn opt_bulk(b: Option<Bytes>) -> Reply {
        b.map_or(Reply::Null, Reply::Bulk)
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut, resp3: bool) {
        use std::fmt::Write;
        match self {
            Reply::Simple(s) => {
                out.extend_from_slice(b"+");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.extend_from_slice(b"-");
                // An error is one line.
                out.extend(
                    s.bytes()
                        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
                );
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(n) => {
                let _ = write!(out, ":{n}\r\n");
            }
            Reply::Bulk(b) => {
                let _ = write!(out, "${}\r\n", b.len());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) | Reply::Set(items) => {
                let kind = if resp3 && matches!(self, Reply::Set(_)) {
                    '~'
                } else {
                    '*'
                };
                let _ = write!(out, "{kind}{}\r\n", items.len());
                for item in items {
                    item.encode(out, resp3);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    let _ = write!(out, "%{}\r\n", pairs.len());
                } else {
                    let _ = write!(out, "*{}\r\n", pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(out, resp3);
                    v.encode(out, resp3);
                }
            }
            Reply::Pairs(pairs) => {
                let len = if resp3 { pairs.len() } else { pairs.len() * 2 };
                let _ = write!(out, "*{len}\r\n");
                for (k, v) in pairs {
                    if resp3 {
                        out.extend_from_slice(b"*2\r\n");
                    }
                    k.encode(out, resp3);
                    v.encode(out, resp3);
                }
            }
            Reply::Push(items) => {
                let _ = write!(out, "{}{}\r\n", if resp3 { '>' } else { '*' }, items.len());
                for item in items {
                    item.encode(out, resp3);
                }
            }
            Reply::Seq(replies) => {
                for reply in replies {
                    reply.encode(out, resp3);
                }
            }
            Reply::In { resp3, reply } => reply.encode(out, *resp3),
            Reply::Verbatim(b) if resp3 => {
                let _ = write!(out, "={}\r\ntxt:", b.len() + 4);
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(b) => Reply::Bulk(b.clone()).encode(out, false),
            Reply::Double(d) if resp3 => {
                let _ = write!(out, ",{}\r\n", format_g17(*d));
            }
            Reply::Double(d) => Reply::Bulk(format_g17(*d).into()).encode(out, false),
        }
    }
}

/// `d` as C's `printf("%.17g", d)` writes it: 17 significant digits,
/// trailing zeros dropped, in exponent form below 1e-4 or from 1e17.
pub fn format_g17(d: f64) -> String {
    const DIGITS: i32 = 17;
    if d.is_nan() {
        return if d.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if d.is_infinite() {
        return if d < 0.0 { "-inf" } else { "inf" }.into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // The exponent after rounding to 17 digits decides the form.
    let scientific = format!("{:.*e}", (DIGITS - 1) as usize, d);
    let (mantissa, exp) = scientific.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("a number");
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..DIGITS).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        trim(&format!("{:.*}", (DIGITS - 1 - exp) as usize, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        bulk_bytes_max: 1024,
        multibulk_len_max: 1024,
        unauthenticated: false,
    };

    fn parse(input: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        parse_request(&mut BytesMut::from(input), LIMITS)
    }

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn doubles_are_written_as_c_writes_them_with_17_digits() {
        // Each as Python's (and C's) "%.17g" writes it.
        for (d, text) in [
            (0.051, "0.050999999999999997"),
            (0.252, "0.252"),
            (0.05, "0.050000000000000003"),
            (1.0, "1"),
            (123456.789, "123456.789"),
            (1e-5, "1.0000000000000001e-05"),
            (1e20, "1e+20"),
            (3e17, "3e+17"),
            (0.0001, "0.0001"),
            (-2.75, "-2.75"),
            (1e16, "10000000000000000"),
            (0.0, "0"),
        ] {
            assert_eq!(format_g17(d), text, "{d}");
        }
        let mut out = BytesMut::new();
        Reply::Double(0.5).encode(&mut out, true);
        Reply::Double(0.5).encode(&mut out, false);
        assert_eq!(&out[..], b",0.5\r\n$3\r\n0.5\r\n");
    }

    #[test]
    fn multibulk_requests_parse_whole_or_wait() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        assert_eq!(parse(full), Ok(Some(args(&["SET", "k", "hello"]))));
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n"[..]);
        assert!(parse_request(&mut two, LIMITS).unwrap().is_some());
        assert!(parse_request(&mut two, LIMITS).unwrap().is_some());
        assert!(two.is_empty());
    }

    /// Requests on either side of [`SHORT_REQUEST_ARGS`] (bounds on the
    /// stack, or in a vector) parse alike.
    #[test]
    fn short_and_long_requests_parse_alike() {
        for n in [
            1,
            SHORT_REQUEST_ARGS - 1,
            SHORT_REQUEST_ARGS,
            SHORT_REQUEST_ARGS + 1,
            40,
        ] {
            let words: Vec<String> = (0..n).map(|i| "a".repeat(i)).collect();
            let mut wire = format!("*{n}\r\n").into_bytes();
            for w in &words {
                wire.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
            }
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            assert_eq!(parse(&wire), Ok(Some(args(&words))), "{n} arguments");
            assert_eq!(parse(&wire[..wire.len() - 1]), Ok(None), "{n} arguments");
        }
    }

    #[test]
    fn malformed_requests_get_redis_errors() {
        let e = |s: &str| Err(ProtocolError(s.into()));
        assert_eq!(parse(b"*3000000000\r\n"), e("invalid multibulk length"));
        assert_eq!(parse(b"*20000000\r\n"), e("invalid multibulk length"));
        assert_eq!(parse(b"*abc\r\n"), e("invalid multibulk length"));
        assert_eq!(
            parse(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"),
            e("expected '$', got 'f'")
        );
        assert_eq!(parse(b"*1\r\nfoo\r\n"), e("expected '$', got 'f'"));
        assert_eq!(
            parse(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n"),
            e("invalid bulk length")
        );
        assert_eq!(
            parse(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n"),
            e("invalid bulk length")
        );
        assert_eq!(
            parse(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n"),
            e("invalid bulk length")
        );
        assert_eq!(
            parse(&[b'x'; INLINE_BYTES_MAX + 1]),
            e("too big inline request")
        );
        let mut huge = b"*1\r\n$".to_vec();
        huge.extend(std::iter::repeat_n(b'1', INLINE_BYTES_MAX + 1));
        assert_eq!(parse(&huge), e("too big bulk count string"));
        assert_eq!(
            parse(b"set \"\"\"test-key\"\"\" test-value\r\n"),
            e("unbalanced quotes in request")
        );
    }

    #[test]
    fn empty_and_negative_requests_are_skipped() {
        assert_eq!(parse(b"\r\n"), Ok(Some(vec![])));
        assert_eq!(parse(b"*-10\r\n"), Ok(Some(vec![])));
        assert_eq!(parse(b"*0\r\n"), Ok(Some(vec![])));
    }

    #[test]
    fn inline_requests_split_like_redis() {
        assert_eq!(parse(b"PING\r\n"), Ok(Some(args(&["PING"]))));
        assert_eq!(
            parse(b"set  k  \"a b\\x41\\n\"\n"),
            Ok(Some(args(&["set", "k", "a bA\n"])))
        );
        assert_eq!(
            parse(b"echo 'it\\'s'\r\n"),
            Ok(Some(args(&["echo", "it's"])))
        );
    }

    #[test]
    fn integers_parse_as_string2ll() {
        assert_eq!(parse_i64(b"123"), Some(123));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"9223372036854775808",
            b"1.5",
            b"-",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replies_encode_per_protocol() {
        let enc = |r: &Reply, resp3| {
            let mut out = BytesMut::new();
            r.encode(&mut out, resp3);
            out.to_vec()
        };
        let map = Reply::Map(vec![(Reply::bulk_str("a"), Reply::Int(1))]);
        assert_eq!(enc(&map, false), b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, true), b"%1\r\n$1\r\na\r\n:1\r\n");
        let pairs = Reply::Pairs(vec![(Reply::bulk_str("a"), Reply::Int(1)); 2]);
        assert_eq!(
            enc(&pairs, false),
            b"*4\r\n$1\r\na\r\n:1\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(
            enc(&pairs, true),
            b"*2\r\n*2\r\n$1\r\na\r\n:1\r\n*2\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(enc(&Reply::Null, false), b"$-1\r\n");
        assert_eq!(enc(&Reply::Null, true), b"_\r\n");
        assert_eq!(
            enc(&Reply::Error("ERR a\r\nb".into()), false),
            b"-ERR a  b\r\n"
        );
    }
}
