//! INCRBYFLOAT and HINCRBYFLOAT's numbers as Redis keeps them: C long
//! doubles, read and printed by the C library (`src/c/long_double.c`), so
//! a result is Redis's to the last digit.

use std::ffi::{c_char, c_int, c_long};

/// The longest number text read or written (Redis's
/// `MAX_LONG_DOUBLE_CHARS`).
pub const LONG_DOUBLE_CHARS_MAX: usize = 5 * 1024;

unsafe extern "C" {
    fn ferry_long_double_check(s: *const c_char, len: usize) -> c_int;
    fn ferry_long_double_add(
        base: *const c_char,
        base_len: usize,
        by: *const c_char,
        by_len: usize,
        out: *mut c_char,
        out_len: usize,
    ) -> c_long;
}

/// What a text is as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    NotANumber,
    Finite,
    Infinite,
}

/// Whether `text` is a number as Redis reads one.
pub fn check(text: &[u8]) -> Checked {
    // SAFETY: the pointer and length describe `text`, which the function
    // only reads.
    match unsafe { ferry_long_double_check(text.as_ptr().cast(), text.len()) } {
        1 => Checked::Finite,
        2 => Checked::Infinite,
        _ => Checked::NotANumber,
    }
}

/// Why [`add`] has no sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// The stored number is not one.
    Base,
    /// The increment is not a number.
    By,
    /// The sum is NaN or infinite.
    NotFinite,
}

/// `base` (none: 0) plus `by`, printed as Redis prints it.
pub fn add(base: Option<&[u8]>, by: &[u8]) -> Result<Vec<u8>, AddError> {
    // On the stack: the text is copied out at its own length.
    let mut out = [0u8; LONG_DOUBLE_CHARS_MAX];
    let (base_ptr, base_len) = base.map_or((std::ptr::null(), 0), |b| (b.as_ptr(), b.len()));
    // SAFETY: each pointer and length describe a live slice; `out` is
    // written only within its length, and the function reads the others.
    let len = unsafe {
        ferry_long_double_add(
            base_ptr.cast(),
            base_len,
            by.as_ptr().cast(),
            by.len(),
            out.as_mut_ptr().cast(),
            out.len(),
        )
    };
    match len {
        -1 => Err(AddError::Base),
        -2 => Err(AddError::By),
        // -3, and -4 (no room) which a long double's text never needs.
        n if n < 0 => Err(AddError::NotFinite),
        n => Ok(out[..n as usize].to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_print_as_redis_prints_them() {
        let sum = |a: Option<&str>, b: &str| {
            add(a.map(str::as_bytes), b.as_bytes()).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(sum(Some("0.1"), "0.2").unwrap(), "0.3");
        assert_eq!(sum(Some("10.50"), "0.1").unwrap(), "10.6");
        assert_eq!(sum(Some("5.0e3"), "2.0e2").unwrap(), "5200");
        assert_eq!(sum(None, "-0").unwrap(), "0");
        assert_eq!(sum(Some("0x10"), "1").unwrap(), "17");
        assert_eq!(
            sum(Some("9223372036854775807"), "1.5").unwrap(),
            "9223372036854775808"
        );
        assert_eq!(sum(Some("abc"), "1"), Err(AddError::Base));
        assert_eq!(sum(Some("1"), " 1"), Err(AddError::By));
        assert_eq!(sum(Some("1"), ""), Err(AddError::By));
        assert_eq!(sum(Some("\0\0\x342"), "1"), Err(AddError::Base));
        assert_eq!(sum(Some("1"), "inf"), Err(AddError::NotFinite));
        assert_eq!(sum(Some("1e4932"), "1e4932"), Err(AddError::NotFinite));
        // The longest text there is (the largest long double, 4,933 digits)
        // fits the buffer: "no room" is never taken for "not finite".
        let largest = sum(Some("1.1e4932"), "0").unwrap();
        assert_eq!(largest.len(), 4933);
        assert_eq!(check(b"nan"), Checked::NotANumber);
        assert_eq!(check(b"-inf"), Checked::Infinite);
        assert_eq!(check(b"1e5000"), Checked::NotANumber);
        assert_eq!(check(b"1.5"), Checked::Finite);
    }
}
