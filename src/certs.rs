//! When the node's TLS certificates expire: read from the certificates
//! themselves (X.509 `notAfter`), logged at start and at each reload, and
//! exported as metrics, so an operator is warned before peers refuse them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::tls::Tls;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// A certificate that expires sooner than this is warned about at start
/// and at each reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// DER tags read here.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version`, present from X.509 v2 on.
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The DER elements of `der`, in order: (tag, content); stops at the first
/// malformed one.
struct Elements<'a>(&'a [u8]);

impl<'a> Iterator for Elements<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b))
        };
        if rest.len() < len {
            self.0 = &[];
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, content))
    }
}

/// A UTCTime or GeneralizedTime of a certificate (`YYMMDDHHMMSSZ`,
/// `YYYYMMDDHHMMSSZ`, as RFC 5280 has them) in seconds since the Unix
/// epoch.
fn time_seconds(tag: u8, text: &[u8]) -> Option<u64> {
    let year_digits = match tag {
        UTC_TIME => 2,
        GENERALIZED_TIME => 4,
        _ => return None,
    };
    if text.len() != year_digits + 11
        || text.last() != Some(&b'Z')
        || !text[..text.len() - 1].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let num = |from: usize, len: usize| {
        text[from..from + len]
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'))
    };
    let year = match num(0, year_digits) {
        // RFC 5280: UTCTime years 50 to 99 are 1950 to 1999.
        yy if year_digits == 2 && yy >= 50 => 1900 + yy,
        yy if year_digits == 2 => 2000 + yy,
        yyyy => yyyy,
    };
    let at = |i: usize| num(year_digits + 2 * i, 2);
    let (month, day, hour, minute, second) = (at(0), at(1), at(2), at(3), at(4));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = crate::tools::days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// When the certificate `der` expires (its `notAfter`), in seconds since
/// the Unix epoch; `None` if it does not parse as X.509.
pub fn not_after(der: &[u8]) -> Option<u64> {
    let (SEQUENCE, certificate) = Elements(der).next()? else {
        return None;
    };
    let (SEQUENCE, tbs) = Elements(certificate).next()? else {
        return None;
    };
    let mut fields = Elements(tbs);
    let mut serial = fields.next()?;
    if serial.0 == VERSION {
        serial = fields.next()?;
    }
    if serial.0 != INTEGER {
        return None;
    }
    let _signature = fields.next()?;
    let _issuer = fields.next()?;
    let (SEQUENCE, validity) = fields.next()? else {
        return None;
    };
    let mut times = Elements(validity);
    let _not_before = times.next()?;
    let (tag, text) = times.next()?;
    time_seconds(tag, text)
}

/// The soonest expiry among `certificates`.
pub fn earliest(certificates: &[CertificateDer<'_>]) -> Option<u64> {
    certificates.iter().filter_map(|c| not_after(c)).min()
}

/// The soonest expiry of the node's certificate (chain) and of its CA's
/// certificates, as last read.
pub fn expiries(tls: &Tls) -> [(&'static str, Option<u64>); 2] {
    let certificates = tls.certificates();
    [
        ("cert", earliest(&certificates.chain)),
        ("ca", earliest(&certificates.ca)),
    ]
}

/// Logs when the TLS files' certificates expire: a warning within
/// [`EXPIRY_WARNING`] or past it.
pub fn log_expiry(tls: &Tls) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for (file, expiry) in expiries(tls) {
        let Some(expiry) = expiry else {
            continue;
        };
        let flag = if file == "ca" {
            "--tls-ca-cert-file"
        } else {
            "--tls-cert-file"
        };
        let until = crate::tools::format_time(expiry.saturating_mul(1000));
        if expiry <= now {
            tracing::warn!(file = flag, %until, "a TLS certificate has expired: replace it and send SIGHUP");
        } else if expiry - now < EXPIRY_WARNING.as_secs() {
            let days = (expiry - now) / 86_400;
            tracing::warn!(file = flag, %until, days, "a TLS certificate expires soon: replace it and send SIGHUP");
        } else {
            tracing::info!(file = flag, %until, "TLS certificate valid");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 certificate (with its `[0]` version field) valid until
    /// `not_after`.
    fn certificate(not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert!(der.windows(3).any(|w| w == [VERSION, 3, 2]));
        der
    }

    /// `der` as a v1 certificate: the same without its version field (and
    /// so with shorter lengths around it).
    fn without_version(der: &[u8]) -> Vec<u8> {
        fn element(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match content.len() {
                n if n < 0x80 => out.push(n as u8),
                n if n < 0x100 => out.extend([0x81, n as u8]),
                n => out.extend([0x82, (n >> 8) as u8, n as u8]),
            }
            out.extend_from_slice(content);
            out
        }
        let (_, certificate) = Elements(der).next().unwrap();
        let mut parts = Elements(certificate);
        let (_, tbs) = parts.next().unwrap();
        let rest: Vec<u8> = parts.flat_map(|(tag, c)| element(tag, c)).collect();
        let fields: Vec<u8> = Elements(tbs)
            .filter(|(tag, _)| *tag != VERSION)
            .flat_map(|(tag, c)| element(tag, c))
            .collect();
        element(SEQUENCE, &[element(SEQUENCE, &fields), rest].concat())
    }

    /// UTCTime (to 2049) and GeneralizedTime (from 2050), as RFC 5280
    /// has certificates carry them; anything malformed is `None`.
    #[test]
    fn not_after_reads_both_kinds_of_time() {
        for (y, m, d) in [(2030, 6, 15), (2049, 12, 31), (2050, 1, 1), (2107, 2, 28)] {
            let der = certificate((y, m, d));
            let want =
                crate::tools::days_from_civil(i64::from(y), i64::from(m), i64::from(d)) * 86_400;
            assert_eq!(not_after(&der), Some(want as u64), "{y}-{m}-{d}");
            let v1 = without_version(&der);
            assert!(v1.len() < der.len());
            assert_eq!(not_after(&v1), Some(want as u64), "v1 {y}-{m}-{d}");
            assert_eq!(
                earliest(&[CertificateDer::from(der.clone())]),
                Some(want as u64)
            );
            for cut in [0, 1, 10, der.len() / 2] {
                assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
            }
        }
        assert_eq!(time_seconds(UTC_TIME, b"991231235959Z"), Some(946_684_799));
        assert_eq!(time_seconds(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(
            time_seconds(GENERALIZED_TIME, b"20000101000000Z"),
            Some(946_684_800)
        );
        for bad in [
            &b"9912312359Z"[..],
            b"991231235959+",
            b"99123123595xZ",
            b"991331235959Z",
        ] {
            assert_eq!(time_seconds(UTC_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(time_seconds(0x04, b"991231235959Z"), None);
    }
}
