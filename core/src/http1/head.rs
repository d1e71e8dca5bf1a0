//! Request and response heads: parsed once from the connection's read buffer, edited in place
//! (headers removed, added, rewritten) and serialised once toward the other side.
//!
//! The raw head bytes are split off the read buffer without copying; every original name and
//! value is a span into them, so parsing allocates one `Vec` of entries per head. Header names
//! are lower-cased in place during the parse, as Envoy's HTTP/1 codec presents them.

use bytes::{Bytes, BytesMut};

/// Envoy's default `max_headers_count`.
pub const MAX_HEADERS: usize = 100;

/// Longest name or value stored inline in a header entry: covers every header the proxy adds
/// itself (a UUID is 36 bytes, an IMF-fixdate 29), so adding one allocates nothing.
const INLINE: usize = 38;

#[derive(Debug, Clone)]
enum Val {
    /// A span of the raw head.
    Span(u32, u32),
    /// A short value added after parsing.
    Inline(u8, [u8; INLINE]),
    /// A longer value added after parsing.
    Owned(Box<[u8]>),
}

impl Val {
    #[inline]
    fn new(b: &[u8]) -> Val {
        if b.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..b.len()].copy_from_slice(b);
            Val::Inline(b.len() as u8, buf)
        } else {
            Val::Owned(b.into())
        }
    }
}

#[inline]
fn val<'a>(raw: &'a [u8], v: &'a Val) -> &'a [u8] {
    match v {
        Val::Span(s, e) => &raw[*s as usize..*e as usize],
        Val::Inline(n, b) => &b[..*n as usize],
        Val::Owned(b) => b,
    }
}

/// An ordered multimap of lower-case header names to values.
#[derive(Debug, Clone, Default)]
pub struct HeaderMap {
    raw: Bytes,
    entries: Vec<(Val, Val)>,
}

impl HeaderMap {
    #[inline]
    fn bytes<'a>(&'a self, v: &'a Val) -> &'a [u8] {
        val(&self.raw, v)
    }

    /// Every (name, value) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(move |(n, v)| (self.bytes(n), self.bytes(v)))
    }

    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every value of `name` (lower-case).
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.remove_if(|n, _| n == name);
    }

    /// Removes every header for which `drop` returns true.
    pub fn remove_if(&mut self, mut drop: impl FnMut(&[u8], &[u8]) -> bool) {
        let raw = &self.raw;
        self.entries
            .retain(|(n, v)| !drop(val(raw, n), val(raw, v)));
    }

    /// Appends a header (name must be lower-case).
    pub fn append(&mut self, name: &[u8], value: &[u8]) {
        self.entries.push((Val::new(name), Val::new(value)));
    }

    /// Replaces every value of `name` with one `value`, keeping the first one's position.
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        let raw = &self.raw;
        let Some(i) = self.entries.iter().position(|(n, _)| val(raw, n) == name) else {
            self.append(name, value);
            return;
        };
        // Duplicates are rare: only then pay for a second pass that removes them.
        if self.entries[i + 1..]
            .iter()
            .any(|(n, _)| val(raw, n) == name)
        {
            let mut idx = 0;
            self.entries.retain(|(n, _)| {
                idx += 1;
                idx - 1 <= i || val(raw, n) != name
            });
        }
        self.entries[i].1 = Val::new(value);
    }

    /// Writes `host` first (Envoy's codec writes `:authority` right after the request line),
    /// then every other header in order.
    pub fn write_host_first(&self, out: &mut Vec<u8>) {
        if let Some(h) = self.get(b"host") {
            write_header(out, b"host", h);
        }
        for (n, v) in self.iter().filter(|(n, _)| *n != b"host") {
            write_header(out, n, v);
        }
    }

    /// Writes every header as `name: value\r\n`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for (n, v) in self.iter() {
            write_header(out, n, v);
        }
    }
}

/// Writes one header line, `name: value\r\n`.
#[inline]
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Spans of the raw head, which the header map holds.
    method: (u32, u32),
    target: (u32, u32),
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// The headers, names lower-case.
    pub headers: HeaderMap,
    /// Size of the head on the wire, for `max_request_headers_kb`-style accounting.
    pub wire_len: usize,
    /// The origin-form target when the request line carried an absolute URI.
    target_override: Option<Box<[u8]>>,
}

impl RequestHead {
    /// The method, as sent.
    pub fn method(&self) -> &[u8] {
        &self.headers.raw[self.method.0 as usize..self.method.1 as usize]
    }

    /// The request target: path and query as sent, or the path and query of an absolute URI
    /// once [`RequestHead::normalize_absolute_form`] has run.
    pub fn target(&self) -> &[u8] {
        match &self.target_override {
            Some(t) => t,
            None => &self.headers.raw[self.target.0 as usize..self.target.1 as usize],
        }
    }

    /// Turns an absolute-form target (`http://host/path?q`) into origin form, making the URI's
    /// authority the `host` header, as Envoy does. Returns false for a malformed URI.
    pub fn normalize_absolute_form(&mut self) -> bool {
        let t = &self.headers.raw[self.target.0 as usize..self.target.1 as usize];
        let rest = if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
            &t[7..]
        } else if t.len() > 8 && t[..8].eq_ignore_ascii_case(b"https://") {
            &t[8..]
        } else {
            return true;
        };
        let end = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?'))
            .unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return false;
        }
        let path: Box<[u8]> = match path.first() {
            Some(b'/') => path.into(),
            _ => [b"/", path].concat().into(),
        };
        let authority = authority.to_vec();
        self.headers.set(b"host", &authority);
        self.target_override = Some(path);
        true
    }
}

/// A parsed response head. The reason phrase is not kept: we write Envoy's phrase for the
/// code, never the upstream's.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// The headers, names lower-case.
    pub headers: HeaderMap,
}

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not valid HTTP/1.x (bad token, bad character, bad version): 400.
    Malformed,
    /// More than [`MAX_HEADERS`] headers or more bytes than the configured limit: 431.
    TooLarge,
}

/// The position of `s` inside the buffer starting at `base`. Every slice httparse returns for
/// a name, value, method or target points into the buffer it parsed.
fn span(base: *const u8, s: &[u8]) -> (u32, u32) {
    let start = (s.as_ptr() as usize).wrapping_sub(base as usize);
    (start as u32, (start + s.len()) as u32)
}

/// Room left in a parsed head's entry list for the headers the proxy adds (request: up to
/// six; response: up to four), so adding them does not regrow the list. Kept small enough that
/// a typical head's list stays within glibc's per-thread cache (1 KiB blocks).
const ADDED_HEADERS: usize = 6;

/// The header entries of a parse, as spans of the buffer at `base`, in one allocation.
fn entries_of(base: *const u8, headers: &[httparse::Header<'_>]) -> Vec<(Val, Val)> {
    let mut entries = Vec::with_capacity(headers.len() + ADDED_HEADERS);
    for h in headers {
        let (ns, ne) = span(base, h.name.as_bytes());
        let (vs, ve) = span(base, h.value);
        entries.push((Val::Span(ns, ne), Val::Span(vs, ve)));
    }
    entries
}

/// Splits the head off `buf`, lower-cases the header names in place and builds the map.
fn take_head(buf: &mut BytesMut, n: usize, entries: Vec<(Val, Val)>) -> HeaderMap {
    let mut raw = buf.split_to(n);
    for (name, _) in &entries {
        if let Val::Span(s, e) = name {
            raw[*s as usize..*e as usize].make_ascii_lowercase();
        }
    }
    HeaderMap {
        raw: raw.freeze(),
        entries,
    }
}

/// Parses a request head from the front of `buf`. Returns `Ok(None)` when more bytes are
/// needed (and `buf` is still within `max_len`); on success the head's bytes are split off `buf`.
pub fn parse_request(buf: &mut BytesMut, max_len: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hdrs);
    let base = buf.as_ptr();
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_len {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if n > max_len {
        return Err(HeadError::TooLarge);
    }
    let method = span(base, req.method.unwrap_or("").as_bytes());
    let target = span(base, req.path.unwrap_or("").as_bytes());
    let minor = req.version.unwrap_or(1);
    let entries = entries_of(base, req.headers);
    let headers = take_head(buf, n, entries);
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        headers,
        wire_len: n,
        target_override: None,
    }))
}

/// Parses a response head from the front of `buf`, like [`parse_request`].
pub fn parse_response(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hdrs);
    let base = buf.as_ptr();
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_len {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let headers = take_head(buf, n, entries_of(base, resp.headers));
    Ok(Some(ResponseHead {
        status,
        minor,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_and_lowercases_names() {
        let mut b =
            BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Foo: Bar\r\n\r\nrest"[..]);
        let h = parse_request(&mut b, 1024).unwrap().unwrap();
        assert_eq!(h.method(), b"GET");
        assert_eq!(h.target(), b"/a?b=1");
        assert_eq!(h.minor, 1);
        assert_eq!(h.headers.get(b"x-foo"), Some(&b"Bar"[..]));
        assert_eq!(&b[..], b"rest");
    }

    #[test]
    fn partial_then_too_large() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse_request(&mut b, 1024).unwrap().is_none());
        assert_eq!(parse_request(&mut b, 10).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn malformed_header_name_is_rejected() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..]);
        assert_eq!(
            parse_request(&mut b, 1024).unwrap_err(),
            HeadError::Malformed
        );
    }

    #[test]
    fn status_line_without_reason_parses() {
        // Regression: the reason span of `HTTP/1.1 200\r\n` pointed outside the buffer and
        // overflowed in debug builds.
        let mut b = BytesMut::from(&b"HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n"[..]);
        let r = parse_response(&mut b, 1024).unwrap().unwrap();
        assert_eq!(
            (r.status, r.headers.get(b"content-length")),
            (200, Some(&b"0"[..]))
        );
    }

    #[test]
    fn set_replaces_all_and_keeps_position() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\na: 3\r\n\r\n"[..]);
        let mut h = parse_request(&mut b, 1024).unwrap().unwrap();
        h.headers.set(b"a", b"9");
        let all: Vec<_> = h.headers.iter().collect();
        assert_eq!(all, vec![(&b"a"[..], &b"9"[..]), (&b"b"[..], &b"2"[..])]);
        h.headers.remove(b"b");
        h.headers.append(b"c", b"4");
        let mut out = Vec::new();
        h.headers.write_to(&mut out);
        assert_eq!(out, b"a: 9\r\nc: 4\r\n");
    }
}
