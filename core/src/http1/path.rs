//! What the connection manager does to a request's path before routing, as Envoy's does when
//! configured to: `path_with_escaped_slashes_action`, then `normalize_path`, then
//! `merge_slashes`. Each works on the path alone; the query (from the first `?`) is kept as
//! sent.
//!
//! `normalize_path` is RFC 3986 dot-segment removal as Envoy does it (its path canonicaliser
//! comes from Chromium's URL library), byte by byte:
//! - `.` and `..` segments, also spelled `%2e`, resolve; `..` never climbs above the root; a
//!   raw `.` or `..` with parameters (`..;x`) is that segment, its parameters dropped;
//! - `\` is a `/`;
//! - an escaped letter, digit, `-`, `.`, `_` or `~` is unescaped (`%41` is `A`), every other
//!   escape is kept as sent, hex case included; a `%` that starts no escape stays, unless
//!   unescaping what follows it would make one (`%%30%30` becomes `%2500`);
//! - a byte no URL path may hold raw is escaped (`"` `<` `>` `^` `` ` `` `{` `|` `}`, DEL,
//!   controls, bytes from 0x80);
//! - an escaped NUL (`%00`) fails the request (400).
//!
//! Found by sending ~90 paths through the envoy binary under each option
//! (docs/envoy-behaviour.md section 18).

pub use crate::config::EscapedSlashes;

/// The connection manager's path settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl PathOptions {
    /// Whether any of them changes anything.
    #[inline]
    pub fn active(&self) -> bool {
        self.normalize
            || self.merge_slashes
            || self.escaped_slashes != EscapedSlashes::KeepUnchanged
    }
}

/// What [`apply`] made of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to change.
    Same,
    /// Go on with this target.
    Changed(Vec<u8>),
    /// Answer with a 307 to this target.
    Redirect(Vec<u8>),
    /// Refuse the request (400).
    Reject,
}

/// Applies `opts` to `target` (an origin-form path with its query).
pub fn apply(target: &[u8], opts: &PathOptions) -> Outcome {
    let q = memchr::memchr(b'?', target).unwrap_or(target.len());
    let (path, query) = target.split_at(q);
    let mut redirect = false;
    let mut owned: Option<Vec<u8>> = None;
    if opts.escaped_slashes != EscapedSlashes::KeepUnchanged {
        if let Some(p) = unescape_slashes(path) {
            match opts.escaped_slashes {
                EscapedSlashes::RejectRequest => return Outcome::Reject,
                EscapedSlashes::UnescapeAndRedirect => redirect = true,
                _ => {}
            }
            owned = Some(p);
        }
    }
    if opts.normalize {
        let cur = owned.as_deref().unwrap_or(path);
        match canonicalize(cur) {
            None => return Outcome::Reject,
            Some(p) if p != cur => owned = Some(p),
            Some(_) => {}
        }
    }
    if opts.merge_slashes {
        let cur = owned.as_deref().unwrap_or(path);
        // `//` alone merges into itself.
        if let Some(p) = merge_slashes(cur).filter(|p| p != cur) {
            owned = Some(p);
        }
    }
    let Some(mut p) = owned else {
        return Outcome::Same;
    };
    p.extend_from_slice(query);
    if redirect {
        Outcome::Redirect(p)
    } else {
        Outcome::Changed(p)
    }
}

/// `%2F` as `/` and `%5C` as `\`, either hex case; `None` when there are none.
fn unescape_slashes(path: &[u8]) -> Option<Vec<u8>> {
    let slash_at = |i: usize| -> Option<u8> {
        match path.get(i..i + 3)? {
            [b'%', b'2', b'f' | b'F'] => Some(b'/'),
            [b'%', b'5', b'c' | b'C'] => Some(b'\\'),
            _ => None,
        }
    };
    let mut i = memchr::memchr(b'%', path)?;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    while i < path.len() {
        if let Some(c) = slash_at(i) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(path.len()));
            o.extend_from_slice(&path[copied..i]);
            o.push(c);
            i += 3;
            copied = i;
        } else {
            i += 1;
        }
    }
    let mut o = out?;
    o.extend_from_slice(&path[copied..]);
    Some(o)
}

/// Envoy's `merge_slashes`: runs of `/` become one, the leading and trailing one kept (so `//`
/// alone stays `//`, as in Envoy). `None` when the path has no `//`.
fn merge_slashes(path: &[u8]) -> Option<Vec<u8>> {
    memchr::memmem::find(path, b"//")?;
    let mut out = Vec::with_capacity(path.len());
    if path.first() == Some(&b'/') {
        out.push(b'/');
    }
    for (n, seg) in path
        .split(|&c| c == b'/')
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        if n > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(seg);
    }
    if path.last() == Some(&b'/') {
        out.push(b'/');
    }
    Some(out)
}

/// How the canonical form treats a byte found raw, and one found escaped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is, and an escape of it is kept.
    Keep,
    /// Copied as it is, and an escape of it is unescaped.
    Unescape,
    /// Escaped, and an escape of it is kept.
    Escape,
    /// Fails the path (NUL), raw or escaped.
    Invalid,
    /// Looked at by the loop itself (`.`, `%`, `\`).
    Special,
}

const fn class_of(c: u8) -> Class {
    match c {
        0 => Class::Invalid,
        b'.' | b'%' | b'\\' => Class::Special,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'~' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Keep,
        _ => Class::Escape,
    }
}

static CLASS: [Class; 256] = {
    let mut t = [Class::Escape; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = class_of(i as u8);
        i += 1;
    }
    t
};

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte `%XY` at `s[i..]` stands for.
fn escaped_at(s: &[u8], i: usize) -> Option<u8> {
    match s.get(i..i + 3)? {
        [b'%', a, b] => Some(hex_val(*a)? << 4 | hex_val(*b)?),
        _ => None,
    }
}

fn push_escaped(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
}

/// Length of the dot at `s[i..]`: `.` is 1, `%2e` or `%2E` is 3, anything else 0.
fn dot_len(s: &[u8], i: usize) -> usize {
    match s.get(i..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

fn is_slash(c: u8) -> bool {
    c == b'/' || c == b'\\'
}

/// What a dot segment that starts after a `/` is, given what follows its first dot at `j`:
/// `(up, consumed)`, where `up` is Some(true) for `..`, Some(false) for `.` and None for a
/// name that merely starts with dots; `consumed` counts the bytes after the first dot that
/// belong to it (the second dot, the slash that ends it).
fn after_dot(s: &[u8], j: usize) -> (Option<bool>, usize) {
    if j == s.len() {
        return (Some(false), 0);
    }
    if is_slash(s[j]) {
        return (Some(false), 1);
    }
    let second = dot_len(s, j);
    if second > 0 {
        let k = j + second;
        if k == s.len() {
            return (Some(true), second);
        }
        if is_slash(s[k]) {
            return (Some(true), second + 1);
        }
    }
    (None, 0)
}

/// A segment of a raw `.` or `..` with parameters (`.;x`, `..;x`, up to the next slash): Envoy
/// takes it for that dot segment, parameters dropped (so `/public/..;/admin` is `/admin`; an
/// escaped dot does not count). `(up, where the next segment starts)`.
fn dot_params(s: &[u8], i: usize) -> Option<(bool, usize)> {
    // After a `/` as sent: after a `\` the dots and `;` are a name (`\..;x` stays).
    if i == 0 || s[i - 1] != b'/' {
        return None;
    }
    let semi = if s.get(i + 1) == Some(&b'.') {
        i + 2
    } else {
        i + 1
    };
    if s.get(semi) != Some(&b';') {
        return None;
    }
    // Only `/` ends them (`..;x\b/c` is `/c`).
    let end = memchr::memchr(b'/', &s[semi..]).map_or(s.len(), |p| semi + p + 1);
    Some((semi == i + 2, end))
}

/// Drops the last segment of `out` (which ends with `/`), never the root.
fn up_one(out: &mut Vec<u8>) {
    let mut i = out.len() - 1;
    if i == 0 {
        return;
    }
    i -= 1;
    while i > 0 && out[i] != b'/' {
        i -= 1;
    }
    out.truncate(i + 1);
}

/// Called just after unescaping a byte close behind a `%` that started no escape (at
/// `pct` in `out`): if that `%` and what now follows it read as an escape, the `%` becomes
/// `%25` so the output cannot be unescaped into something else later. `next` is the input
/// byte after the one unescaped.
fn guard_nested(out: &mut Vec<u8>, pct: usize, next: Option<u8>) {
    let len = out.len();
    let last = out[len - 1];
    // `%c`: try it with the next input byte.
    let with_next = pct + 2 == len;
    if with_next {
        match next {
            Some(n) if n < 0x80 => out.push(n),
            _ => return,
        }
    }
    if escaped_at(out, pct).is_some() {
        if !with_next {
            out.push(out[pct + 1]);
        }
        out[pct + 1] = b'2';
        out[pct + 2] = b'5';
        out.push(last);
    } else if with_next {
        out.truncate(len);
    }
}

/// The canonical form of `path` (see the module doc); `None` if it holds an escaped NUL.
pub fn canonicalize(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len() + 8);
    if path.first().is_none_or(|&c| !is_slash(c)) {
        out.push(b'/');
    }
    let mut ok = true;
    // Where in `out` the last `%` that started no escape is.
    let mut bad_pct: Option<usize> = None;
    let mut i = 0;
    while i < path.len() {
        let c = path[i];
        match CLASS[usize::from(c)] {
            Class::Keep | Class::Unescape => out.push(c),
            Class::Escape => push_escaped(&mut out, c),
            Class::Invalid => {
                push_escaped(&mut out, c);
                ok = false;
            }
            Class::Special => {
                let dot = dot_len(path, i);
                if dot > 0 {
                    if out.last() == Some(&b'/') {
                        if let Some((up, next)) = dot_params(path, i) {
                            if up {
                                up_one(&mut out);
                            }
                            i = next;
                            continue;
                        }
                        match after_dot(path, i + dot) {
                            (None, _) => {
                                out.push(b'.');
                                i += dot;
                            }
                            (Some(up), consumed) => {
                                if up {
                                    up_one(&mut out);
                                }
                                i += dot + consumed;
                            }
                        }
                    } else {
                        out.push(b'.');
                        i += dot;
                    }
                    continue;
                }
                if c == b'\\' {
                    out.push(b'/');
                } else if let Some(v) = escaped_at(path, i) {
                    i += 2;
                    match CLASS[usize::from(v)] {
                        Class::Unescape => {
                            out.push(v);
                            if let Some(p) = bad_pct.filter(|p| p + 3 >= out.len()) {
                                guard_nested(&mut out, p, path.get(i + 1).copied());
                            }
                        }
                        class => {
                            out.extend_from_slice(&path[i - 2..=i]);
                            ok &= class != Class::Invalid;
                        }
                    }
                } else {
                    bad_pct = Some(out.len());
                    out.push(b'%');
                }
            }
        }
        i += 1;
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Option<String> {
        canonicalize(p.as_bytes()).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Pairs observed through the envoy binary with `normalize_path: true`.
    #[test]
    fn canonical_paths_as_envoy_makes_them() {
        for (input, expected) in [
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../a", "/a"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/b/../../..", "/"),
            ("/a//b", "/a//b"),
            ("/a//./b", "/a//b"),
            ("/a//..//b", "/a//b"),
            ("//..", "/"),
            ("/%41%62", "/Ab"),
            ("/%7e", "/~"),
            ("/%2D%5F%30%7A", "/-_0z"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%5cb", "/a%5cb"),
            ("/a\\b", "/a/b"),
            ("/a/b\\..\\c", "/a/c"),
            ("/a%25", "/a%25"),
            ("/%zz", "/%zz"),
            ("/a%", "/a%"),
            ("/a%2", "/a%2"),
            ("/%%30%30", "/%2500"),
            ("/%%300", "/%2500"),
            ("/a%%2e/", "/a%./"),
            ("/a\"b", "/a%22b"),
            ("/a<b>", "/a%3Cb%3E"),
            ("/a^b`{|}", "/a%5Eb%60%7B%7C%7D"),
            ("/a/%2e%2e%2fb", "/a/..%2fb"),
            ("/a/b%2F%2E%2E%2Fc", "/a/b%2F..%2Fc"),
            ("/a;b/../c", "/c"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
            ("/a.%2e", "/a.."),
            ("/%C3%A9", "/%C3%A9"),
            ("/!$&'()*+,;=:@[]", "/!$&'()*+,;=:@[]"),
            ("/%20", "/%20"),
            ("/a%3Fb", "/a%3Fb"),
            ("/.", "/"),
            ("/%2e", "/"),
            // Dot segments with parameters.
            ("/public/..;/admin", "/admin"),
            ("/..;/..;/etc/passwd", "/etc/passwd"),
            ("/a/.;x/b", "/a/b"),
            ("/a/..;x;y/b", "/b"),
            ("/a/..;x\\b/c", "/c"),
            ("/a/..;x%2fy/b", "/b"),
            ("/a/b/.;", "/a/b/"),
            ("/..;", "/"),
            ("/a/.%2e;x/b", "/a/..;x/b"),
            ("/a/%2e;x/b", "/a/.;x/b"),
            ("/a/...;x/b", "/a/...;x/b"),
            ("/a/..x;y/b", "/a/..x;y/b"),
            ("/a/x;/../b", "/a/b"),
            ("/a/..;x%00/b", "/b"),
            ("/a\\..;x|/b", "/a/..;x%7C/b"),
        ] {
            assert_eq!(canon(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(canon("/%00"), None);
        assert_eq!(canon("/a/..;x/%00"), None);
        assert_eq!(canon("/a\\.;x%00"), None);
        assert_eq!(canon("/a\x7fb\u{e9}").as_deref(), Some("/a%7Fb%C3%A9"));
    }

    #[test]
    fn merged_slashes_as_envoy_makes_them() {
        let m = |p: &str| merge_slashes(p.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(m("/a/b"), None);
        assert_eq!(m("/a///b//c").as_deref(), Some("/a/b/c"));
        assert_eq!(m("//a").as_deref(), Some("/a"));
        assert_eq!(m("/a//").as_deref(), Some("/a/"));
        assert_eq!(m("//").as_deref(), Some("//"));
        assert_eq!(m("///").as_deref(), Some("//"));
    }

    #[test]
    fn the_three_options_in_envoys_order() {
        let all = PathOptions {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::UnescapeAndRedirect,
        };
        let ap = |t: &str, o: &PathOptions| apply(t.as_bytes(), o);
        let own = |s: &str| s.as_bytes().to_vec();
        assert_eq!(ap("/a/b?x=/../y", &all), Outcome::Same);
        assert_eq!(ap("/a//b?c//d", &all), Outcome::Changed(own("/a/b?c//d")));
        assert_eq!(
            ap("/a%2F..%2Fb?x=1", &all),
            Outcome::Redirect(own("/b?x=1"))
        );
        assert_eq!(ap("/a%2f%2f/b", &all), Outcome::Redirect(own("/a/b")));
        assert_eq!(ap("/%5c", &all), Outcome::Redirect(own("//")));
        assert_eq!(ap("/%00", &all), Outcome::Reject);
        let fwd = PathOptions {
            escaped_slashes: EscapedSlashes::UnescapeAndForward,
            ..PathOptions::default()
        };
        assert_eq!(
            ap("/a/%2e%2e%2fb", &fwd),
            Outcome::Changed(own("/a/%2e%2e/b"))
        );
        assert_eq!(ap("/a%5Cb", &fwd), Outcome::Changed(own("/a\\b")));
        let reject = PathOptions {
            escaped_slashes: EscapedSlashes::RejectRequest,
            ..PathOptions::default()
        };
        assert_eq!(ap("/a%2fb", &reject), Outcome::Reject);
        assert_eq!(ap("/a/b?x=%2f", &reject), Outcome::Same);
        assert!(!PathOptions::default().active());
    }
}
