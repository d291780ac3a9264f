//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*`, `?`,
//! `[abc]`, `[^a]`, `[a-z]`, and `\` to escape, on bytes.

/// Whether `s` matches `pattern`, as Redis's `stringmatchlen`.
pub fn matches(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if nocase {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index, string index).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            let matched = match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' if i < s.len() => Some(p + 1),
                b'[' if i < s.len() => class(pattern, p, s[i], nocase),
                b'\\' if p + 1 < pattern.len() && i < s.len() => {
                    eq(pattern[p + 1], s[i]).then_some(p + 2)
                }
                c if i < s.len() => eq(c, s[i]).then_some(p + 1),
                _ => None,
            };
            if let Some(next) = matched {
                p = next;
                i += 1;
                continue;
            }
        } else if i == s.len() {
            return true;
        }
        // Mismatch: let the last `*` take one more byte.
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches `c` against the class starting at `pattern[p] == b'['`; the index
/// after the class if it matches.
fn class(pattern: &[u8], p: usize, c: u8, nocase: bool) -> Option<usize> {
    let fold = |b: u8| if nocase { b.to_ascii_lowercase() } else { b };
    let c = fold(c);
    let mut j = p + 1;
    let negate = j < pattern.len() && pattern[j] == b'^';
    if negate {
        j += 1;
    }
    let mut hit = false;
    while j < pattern.len() && pattern[j] != b']' {
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            j += 1;
            hit |= fold(pattern[j]) == c;
            j += 1;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (mut lo, mut hi) = (fold(pattern[j]), fold(pattern[j + 2]));
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            hit |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            hit |= fold(pattern[j]) == c;
            j += 1;
        }
    }
    // An unterminated class ends at the end of the pattern, as in Redis.
    let next = if j < pattern.len() { j + 1 } else { j };
    (hit != negate).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_match_like_redis() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes(), false);
        assert!(m("*", ""));
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
