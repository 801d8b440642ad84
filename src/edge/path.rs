//! One canonical request path, decided before routing and authentication and forwarded as it
//! is (RFC 3986 §6): unreserved characters percent-decoded, other escapes in upper case, `.`
//! and `..` segments resolved (climbing above `/` is refused), `//` merged, and `%2F` and `\`
//! handled as `limits.path` says. What the router and the auth checks saw is what the backend
//! gets, whatever the backend's own normalisation.

use crate::config::{Backslash, EncodedSlash, PathRules};

/// Why a path was refused (the `reason` label of `http_requests_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A control byte or a space.
    Bytes,
    /// `%` not followed by two hex digits, or `%00`.
    BadEscape,
    /// `..` above the root.
    Climbs,
    /// `%2F` with `encoded_slash: reject`.
    EncodedSlash,
    /// `\` with `backslash: reject`.
    Backslash,
}

impl PathError {
    /// The metric label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PathError::Bytes => "target_bytes",
            PathError::BadEscape => "path_escape",
            PathError::Climbs => "path_climbs",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
        }
    }

    /// What the client is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            PathError::Bytes => "the request target holds a control character or a space",
            PathError::BadEscape => "the path has a malformed or NUL percent-escape",
            PathError::Climbs => "the path climbs above the root (`..`)",
            PathError::EncodedSlash => "`%2F` is not accepted in paths here",
            PathError::Backslash => "`\\` is not accepted in paths",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `path` is already canonical: no escape, no backslash, no byte outside visible
/// ASCII, no empty segment (when merging), no `.` or `..` segment. The common case, one scan.
fn is_plain(path: &[u8], rules: &PathRules) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0..=0x20 | 0x7f..=0xff => return false,
            b'/' if prev == b'/' && rules.merge_slashes => return false,
            b'.' if prev == b'/' => {
                let rest = &path[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

/// The canonical form of a request target's path (the query is checked for bytes and kept as
/// it is): `Ok(None)` when the target is already canonical.
pub(crate) fn normalise(target: &[u8], rules: &PathRules) -> Result<Option<String>, PathError> {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q..])),
        None => (target, None),
    };
    if query.is_some_and(|q| q.iter().any(|&b| b <= 0x20 || b == 0x7f)) {
        return Err(PathError::Bytes);
    }
    if is_plain(path, rules) {
        return Ok(None);
    }
    // Decode unreserved escapes, upper-case the others, settle `%2F` and `\`; `/` stays the
    // only separator.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            0..=0x20 | 0x7f => return Err(PathError::Bytes),
            b'%' => {
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                match v {
                    0 => return Err(PathError::BadEscape),
                    b'/' => match rules.encoded_slash {
                        EncodedSlash::Keep => decoded.extend_from_slice(b"%2F"),
                        EncodedSlash::Decode => decoded.push(b'/'),
                        EncodedSlash::Reject => return Err(PathError::EncodedSlash),
                    },
                    v if is_unreserved(v) => decoded.push(v),
                    v => decoded.extend_from_slice(&[
                        b'%',
                        UPPER_HEX[usize::from(v >> 4)],
                        UPPER_HEX[usize::from(v & 15)],
                    ]),
                }
                i += 3;
                continue;
            }
            b'\\' => match rules.backslash {
                Backslash::Reject => return Err(PathError::Backslash),
                Backslash::Encode => decoded.extend_from_slice(b"%5C"),
            },
            0x80..=0xff => decoded.extend_from_slice(&[
                b'%',
                UPPER_HEX[usize::from(b >> 4)],
                UPPER_HEX[usize::from(b & 15)],
            ]),
            _ => decoded.push(b),
        }
        i += 1;
    }
    // Resolve dot segments (RFC 3986 §5.2.4), refusing to climb above the root.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').collect();
    // `decoded` starts with `/` (origin form), so the first piece is empty.
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (n, seg) in segments.iter().enumerate().skip(1) {
        trailing = n == last && matches!(*seg, b"" | b"." | b"..");
        match *seg {
            b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::Climbs);
                }
            }
            b"" if rules.merge_slashes && n != last => {}
            s => out.push(s),
        }
    }
    let mut canon = String::with_capacity(decoded.len() + query.map_or(0, <[u8]>::len));
    for seg in &out {
        canon.push('/');
        // Only ASCII is left: escapes and visible bytes.
        canon.push_str(std::str::from_utf8(seg).map_err(|_| PathError::Bytes)?);
    }
    if canon.is_empty() || (trailing && !canon.ends_with('/')) {
        canon.push('/');
    }
    if let Some(q) = query {
        canon.push_str(std::str::from_utf8(q).map_err(|_| PathError::Bytes)?);
    }
    if canon.as_bytes() == target {
        return Ok(None);
    }
    Ok(Some(canon))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(t: &str) -> Result<String, PathError> {
        normalise(t.as_bytes(), &PathRules::default()).map(|o| o.unwrap_or_else(|| t.to_string()))
    }

    #[test]
    fn canonical_paths_cost_one_scan_and_stay() {
        for t in [
            "/",
            "/api/users/1",
            "/a.b/c..d/.e",
            "/x?y=1&z=%2e%2e",
            "/a/b/",
        ] {
            assert_eq!(
                normalise(t.as_bytes(), &PathRules::default()),
                Ok(None),
                "{t}"
            );
        }
    }

    #[test]
    fn dot_segments_escapes_and_slashes_are_resolved() {
        for (t, want) in [
            ("/open/../raw/secret", "/raw/secret"),
            ("/open/%2e%2e/raw/secret", "/raw/secret"),
            ("/open/%2E%2e/raw", "/raw"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("//raw//secret", "/raw/secret"),
            ("/%7euser/%41%62", "/~user/Ab"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%3a%c3%a9", "/a%3A%C3%A9"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a/..?q=1", "/?q=1"),
        ] {
            assert_eq!(norm(t).as_deref(), Ok(want), "{t}");
        }
        // Normalising twice is normalising once.
        for t in ["/open/../raw/secret", "//a/%2e/b", "/a%2fb"] {
            let once = norm(t).unwrap();
            assert_eq!(norm(&once).unwrap(), once);
        }
    }

    #[test]
    fn what_cannot_be_made_canonical_is_refused() {
        for (t, why) in [
            ("/..", PathError::Climbs),
            ("/a/../../b", PathError::Climbs),
            ("/%2e%2e/x", PathError::Climbs),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%00b", PathError::BadEscape),
            ("/a\\b", PathError::Backslash),
            ("/a b", PathError::Bytes),
            ("/a\u{1}b", PathError::Bytes),
            ("/a?b c", PathError::Bytes),
        ] {
            assert_eq!(norm(t), Err(why), "{t}");
        }
    }

    #[test]
    fn the_options_change_slashes_and_backslashes() {
        let rules = PathRules {
            merge_slashes: false,
            encoded_slash: EncodedSlash::Decode,
            backslash: Backslash::Encode,
        };
        let n =
            |t: &str| normalise(t.as_bytes(), &rules).map(|o| o.unwrap_or_else(|| t.to_string()));
        assert_eq!(n("/a//b").as_deref(), Ok("/a//b"));
        assert_eq!(n("/a%2Fb/../c").as_deref(), Ok("/a/c"));
        assert_eq!(n("/a\\b").as_deref(), Ok("/a%5Cb"));
        let reject = PathRules {
            encoded_slash: EncodedSlash::Reject,
            ..PathRules::default()
        };
        assert_eq!(normalise(b"/a%2fb", &reject), Err(PathError::EncodedSlash));
    }
}
