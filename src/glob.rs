//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*`, `?`,
//! `[abc]`, `[^a]`, `[a-z]`, and `\` to escape, on bytes.

/// Whether `s` matches `pattern`, as Redis's `stringmatchlen` (7.0): bytes
/// compare as C's signed `char` in ranges, an empty string matches only an
/// empty pattern (not even `*`: see [`matches_key`]), and patterns nested
/// past [`NESTING_MAX`] stars match nothing.
pub fn matches(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    let mut skip_longer = false;
    match_from(pattern, s, nocase, &mut skip_longer, 0)
}

/// [`matches`] as KEYS, SCAN and HSCAN use it: a pattern of one `*` takes
/// every key (the empty one too), without matching.
pub fn matches_key(pattern: &[u8], key: &[u8]) -> bool {
    pattern == b"*" || matches(pattern, key, false)
}

/// Stars nested deeper than this match nothing (Redis's guard against
/// abusive patterns).
pub const NESTING_MAX: usize = 1000;

/// A byte as C's signed `char`, lowercased (ASCII) under `nocase`.
fn ch(b: u8, nocase: bool) -> i32 {
    let b = if nocase { b.to_ascii_lowercase() } else { b };
    i32::from(b as i8)
}

fn match_from(
    mut p: &[u8],
    mut s: &[u8],
    nocase: bool,
    skip_longer: &mut bool,
    nesting: usize,
) -> bool {
    if nesting > NESTING_MAX {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, nocase, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                // No match for the rest of the pattern from anywhere in
                // the rest of the string: an earlier star taking more
                // would not find one either.
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut hit = false;
                loop {
                    if p.first() == Some(&b'\\') && p.len() >= 2 {
                        p = &p[1..];
                        hit |= p[0] == s[0];
                    } else if p.first() == Some(&b']') {
                        break;
                    } else if p.is_empty() {
                        // An unterminated class: it ends with the pattern
                        // (the step after the class takes nothing more).
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (mut lo, mut hi) = (ch(p[0], nocase), ch(p[2], nocase));
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        hit |= (lo..=hi).contains(&ch(s[0], nocase));
                        p = &p[2..];
                    } else {
                        hit |= ch(p[0], nocase) == ch(s[0], nocase);
                    }
                    p = &p[1..];
                }
                if hit == negate {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // The unterminated class's end: nothing left to step over.
                    return s.is_empty();
                }
            }
            c => {
                let c = if c == b'\\' && p.len() >= 2 {
                    p = &p[1..];
                    p[0]
                } else {
                    c
                };
                if ch(c, nocase) != ch(s[0], nocase) {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::{matches, matches_key};

    #[test]
    fn patterns_match_like_redis() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes(), false);
        assert!(!m("*", ""), "only KEYS and SCAN take the empty key for `*`");
        assert!(matches_key(b"*", b""));
        assert!(!matches_key(b"**", b""));
        assert!(m("", ""));
        // A range ending in `]` is a range, and the class goes on.
        for (key, hit) in [
            ("]", true),
            ("^", true),
            ("_", true),
            ("a", true),
            ("-", false),
            ("b", false),
        ] {
            assert_eq!(m("[a-]", key), hit, "{key}");
        }
        assert!(m("[a-]b", "b"));
        assert!(!m("[a-]b", "ab"));
        // Bytes past 0x7f are negative, as C's `char`.
        let mb = |p: &[u8], s: &[u8]| matches(p, s, false);
        assert!(mb(b"[a-\xff]", b"\xff"));
        assert!(mb(b"[a-\xff]", b"0"));
        assert!(!mb(b"[a-\xff]", b"\x80"));
        assert!(!mb(b"[a-\xff]", b"b"));
        assert!(m("[abc", "a"));
        assert!(!m("[abc", "ab"));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:age"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(matches(b"HELLO", b"hello", true));
        assert!(!m("abc", "abcd"));
        assert!(!m("abcd", "abc"));
    }
}
