//! Request and response heads: parsed once from the connection's read buffer, edited in place
//! (headers removed, added, rewritten) and serialised once toward the other side.
//!
//! The raw head bytes are split off the read buffer without copying; every original name and
//! value is a span into them, so parsing needs one list of entries per head, which the thread
//! keeps for its next parse once the head is dropped. Header names are lower-cased in place
//! during the parse, as Envoy's HTTP/1 codec presents them.

use bytes::{Bytes, BytesMut};

/// Envoy's default `max_headers_count`. As in Envoy, it bounds the headers a head has once
/// repeated inline headers are joined, not its lines.
pub const MAX_HEADERS: usize = 100;

/// Lines the lenient parsers take for one head under the default limit: room for repeated
/// inline headers that join into at most [`MAX_HEADERS`] headers. The fast parse keeps
/// [`MAX_HEADERS`] slots and hands a head with more lines to the lenient one, so the usual
/// head pays nothing for this. A higher configured limit takes twice its count.
const PARSE_SLOTS: usize = 2 * MAX_HEADERS;

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

/// The request headers Envoy 1.40's header map holds inline, one entry each: a value added to
/// one already present is joined to it with `,`, by its codec (a repeated header) and by header
/// edits alike (found by sending, and adding, `a` and `b` for each of about a hundred names
/// through the envoy binary; the `x-envoy-` retry and timeout headers the router consumes are
/// left out). `host` is joined too, but after the codec's own host checks (worker/conn.rs).
pub const REQUEST_INLINE: Inline = Inline::new(&[
    "accept",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "authorization",
    "cache-control",
    "content-encoding",
    "content-type",
    "expect",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "pragma",
    "proxy-status",
    "referer",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
]);

/// A one-bit digest of a header name's length (`len`): two names with different digests
/// differ, so a head whose names' digests are all distinct repeats no name, and only a head
/// with two names of one length (modulo 64) pays for the exact look.
#[inline(always)]
const fn name_digest(len: usize) -> u64 {
    1u64 << (len & 63)
}

/// A set of names Envoy's header map holds inline, with the [`name_digest`]s of their lengths:
/// a head whose repeated name lengths miss these bits repeats none of the names.
#[derive(Debug, Clone, Copy)]
pub struct Inline {
    pub names: &'static [&'static str],
    lengths: u64,
}

impl Inline {
    const fn new(names: &'static [&'static str]) -> Inline {
        let mut lengths = 0u64;
        let mut i = 0;
        while i < names.len() {
            lengths |= name_digest(names[i].len());
            i += 1;
        }
        Inline { names, lengths }
    }

    /// Whether `name` (lower-case) is one of the set.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.iter().any(|n| n.as_bytes() == name)
    }
}

/// The response headers Envoy 1.40's header map holds inline (found as [`REQUEST_INLINE`]).
pub const RESPONSE_INLINE: Inline = Inline::new(&[
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "cache-control",
    "content-encoding",
    "content-type",
    "date",
    "etag",
    "expires",
    "grpc-message",
    "grpc-status",
    "last-modified",
    "location",
    "proxy-status",
    "vary",
    "via",
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-degraded",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-ratelimited",
    "x-envoy-upstream-canary",
    "x-envoy-upstream-healthchecked-cluster",
    "x-envoy-upstream-service-time",
    "x-request-id",
]);

/// Bits of [`HeaderMap`]'s presence mask: one per header name the request path looks up on
/// every request, and one for the whole `x-envoy-` family. Most of those lookups are for
/// headers a request does not carry; the mask answers them without scanning the entries.
pub mod known {
    pub const HOST: u32 = 1 << 0;
    pub const CONNECTION: u32 = 1 << 1;
    pub const TE: u32 = 1 << 2;
    pub const TRANSFER_ENCODING: u32 = 1 << 3;
    pub const CONTENT_LENGTH: u32 = 1 << 4;
    pub const UPGRADE: u32 = 1 << 5;
    pub const EXPECT: u32 = 1 << 6;
    pub const KEEP_ALIVE: u32 = 1 << 7;
    pub const PROXY_CONNECTION: u32 = 1 << 8;
    pub const X_FORWARDED_FOR: u32 = 1 << 9;
    pub const X_FORWARDED_PROTO: u32 = 1 << 10;
    pub const X_REQUEST_ID: u32 = 1 << 11;
    pub const SERVER: u32 = 1 << 12;
    pub const DATE: u32 = 1 << 13;
    pub const CONTENT_TYPE: u32 = 1 << 14;
    /// Any name starting with `x-envoy-`.
    pub const X_ENVOY: u32 = 1 << 15;
    pub const X_FORWARDED_CLIENT_CERT: u32 = 1 << 16;
    /// The hop-by-hop headers, and `te` (reduced, not dropped). `content-length` is
    /// end-to-end.
    pub const HOP_BY_HOP: u32 =
        CONNECTION | TE | TRANSFER_ENCODING | UPGRADE | KEEP_ALIVE | PROXY_CONNECTION;
}

/// The mask bit of a (lower-case) header name: exact for the names of [`known`], the family
/// bit for any other `x-envoy-` name, 0 for the rest. Cheap enough to run on every parsed
/// name: a length switch, then at most two comparisons. Inlined so that a literal name's bit
/// is worked out at compile time.
#[inline(always)]
pub fn known_bit(n: &[u8]) -> u32 {
    use known::*;
    let exact = match n.len() {
        2 if n == b"te" => TE,
        4 if n == b"host" => HOST,
        4 if n == b"date" => DATE,
        6 if n == b"expect" => EXPECT,
        6 if n == b"server" => SERVER,
        7 if n == b"upgrade" => UPGRADE,
        10 if n == b"connection" => CONNECTION,
        10 if n == b"keep-alive" => KEEP_ALIVE,
        12 if n == b"content-type" => CONTENT_TYPE,
        12 if n == b"x-request-id" => X_REQUEST_ID,
        14 if n == b"content-length" => CONTENT_LENGTH,
        15 if n == b"x-forwarded-for" => X_FORWARDED_FOR,
        16 if n == b"proxy-connection" => PROXY_CONNECTION,
        17 if n == b"transfer-encoding" => TRANSFER_ENCODING,
        17 if n == b"x-forwarded-proto" => X_FORWARDED_PROTO,
        23 if n == b"x-forwarded-client-cert" => X_FORWARDED_CLIENT_CERT,
        _ => 0,
    };
    if exact == 0 && n.len() > 8 && n.starts_with(b"x-envoy-") {
        X_ENVOY
    } else {
        exact
    }
}

/// One header: its name, its value and the name's [`known_bit`].
#[derive(Debug, Clone)]
struct Entry {
    name: Val,
    value: Val,
    bit: u32,
}

/// An ordered multimap of lower-case header names to values.
#[derive(Debug, Clone, Default)]
pub struct HeaderMap {
    raw: Bytes,
    entries: Vec<Entry>,
    /// [`known_bit`]s of the names present. A bit may stay set after its header is gone
    /// (never the reverse), so a clear bit proves absence and a set one means "scan".
    mask: u32,
}

/// How a lookup recognises entries of one name: by the name's exact [`known_bit`] (an integer
/// compare per entry, no bytes read) or, for any other name, by its bytes.
#[derive(Clone, Copy)]
enum Key<'a> {
    Bit(u32),
    Name(&'a [u8]),
}

impl<'a> Key<'a> {
    /// Whether `e` (an entry of a map whose raw head is `raw`) has this key's name.
    #[inline]
    fn matches(self, raw: &[u8], e: &Entry) -> bool {
        match self {
            Key::Bit(b) => e.bit == b,
            Key::Name(n) => val(raw, &e.name) == n,
        }
    }

    #[inline(always)]
    fn of(name: &'a [u8]) -> Key<'a> {
        match known_bit(name) {
            0 | known::X_ENVOY => Key::Name(name),
            bit => Key::Bit(bit),
        }
    }
}

impl HeaderMap {
    #[inline]
    fn bytes<'a>(&'a self, v: &'a Val) -> &'a [u8] {
        val(&self.raw, v)
    }

    #[inline]
    fn is(&self, e: &Entry, key: Key<'_>) -> bool {
        key.matches(&self.raw, e)
    }

    /// Every (name, value) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(move |e| (self.bytes(&e.name), self.bytes(&e.value)))
    }

    /// Whether a header of `name` can be present: false proves it is absent.
    #[inline(always)]
    fn may_have(&self, name: &[u8]) -> bool {
        let bit = known_bit(name);
        bit == 0 || self.mask & bit != 0
    }

    /// Whether any header of the [`known`] bits in `bits` can be present: false proves none is.
    #[inline]
    pub fn may_have_any(&self, bits: u32) -> bool {
        self.mask & bits != 0
    }

    /// [`HeaderMap::get`] with the name's [`known_bit`] worked out beforehand (a name looked
    /// up for every request, as an access log's).
    #[inline]
    pub fn get_known(&self, name: &[u8], bit: u32) -> Option<&[u8]> {
        if bit != 0 && self.mask & bit == 0 {
            return None;
        }
        self.find(match bit {
            0 | known::X_ENVOY => Key::Name(name),
            bit => Key::Bit(bit),
        })
    }

    /// The first value of `name` (lower-case).
    #[inline(always)]
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        if !self.may_have(name) {
            return None;
        }
        self.find(Key::of(name))
    }

    fn find(&self, key: Key<'_>) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| self.is(e, key))
            .map(|e| self.bytes(&e.value))
    }

    /// Every value of `name` (lower-case).
    #[inline(always)]
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let entries = if self.may_have(name) {
            &self.entries[..]
        } else {
            &[]
        };
        let key = Key::of(name);
        entries
            .iter()
            .filter(move |e| self.is(e, key))
            .map(|e| self.bytes(&e.value))
    }

    /// The value of `name` when exactly one header has it: how Envoy reads a header it keeps
    /// as one (several are joined by `,`, which no single expected value equals).
    #[inline(always)]
    pub fn only<'a>(&'a self, name: &'a [u8]) -> Option<&'a [u8]> {
        let mut values = self.get_all(name);
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }

    /// Whether `name` is present.
    #[inline(always)]
    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// How many headers (a joined one counts once).
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every value of `name`.
    #[inline(always)]
    pub fn remove(&mut self, name: &[u8]) {
        if self.may_have(name) {
            self.remove_key(Key::of(name));
            // Exact bits only: another `x-envoy-` header may remain.
            let bit = known_bit(name);
            if bit != known::X_ENVOY {
                self.mask &= !bit;
            }
        }
    }

    fn remove_key(&mut self, key: Key<'_>) {
        let raw = &self.raw;
        self.entries.retain(|e| !key.matches(raw, e));
    }

    /// Removes every header whose [`known_bit`] is one of `bits` (exact bits: not
    /// [`known::X_ENVOY`]); integer compares only.
    pub fn remove_known(&mut self, bits: u32) {
        debug_assert_eq!(bits & known::X_ENVOY, 0);
        if self.mask & bits != 0 {
            self.entries.retain(|e| e.bit & bits == 0);
            self.mask &= !bits;
        }
    }

    /// Removes every header for which `drop` returns true. The presence mask keeps its bits
    /// (a set bit only means "scan").
    pub fn remove_if(&mut self, mut drop: impl FnMut(&[u8], &[u8]) -> bool) {
        let raw = &self.raw;
        self.entries
            .retain(|e| !drop(val(raw, &e.name), val(raw, &e.value)));
    }

    /// Appends a header (name must be lower-case).
    #[inline(always)]
    pub fn append(&mut self, name: &[u8], value: &[u8]) {
        let bit = known_bit(name);
        self.mask |= bit;
        self.push(name, value, bit);
    }

    fn push(&mut self, name: &[u8], value: &[u8], bit: u32) {
        self.entries.push(Entry {
            name: Val::new(name),
            value: Val::new(value),
            bit,
        });
    }

    /// Replaces every value of `name` with one `value`, keeping the first one's position.
    #[inline(always)]
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        if !self.may_have(name) {
            self.append(name, value);
            return;
        }
        self.replace(name, Key::of(name), value);
    }

    fn replace(&mut self, name: &[u8], key: Key<'_>, value: &[u8]) {
        let Some(i) = self.entries.iter().position(|e| self.is(e, key)) else {
            self.append(name, value);
            return;
        };
        // Duplicates are rare: only then pay for a second pass that removes them.
        if self.entries[i + 1..].iter().any(|e| self.is(e, key)) {
            let raw = &self.raw;
            let mut idx = 0;
            self.entries.retain(|e| {
                idx += 1;
                idx - 1 <= i || !key.matches(raw, e)
            });
        }
        self.entries[i].value = Val::new(value);
    }

    /// Makes every `name` header one, in the place of the first, its value the values joined by
    /// `,` (as Envoy's header map keeps a repeated inline header such as `host`). As Envoy's
    /// `appendToHeader`, an empty value adds nothing, not even a `,`.
    #[cold]
    pub fn join_all(&mut self, name: &[u8]) {
        if self.contains(name) {
            let joined = join_values(self.get_all(name));
            self.set(name, &joined);
        }
    }

    /// [`HeaderMap::join_inline`], by value.
    #[cold]
    #[inline(never)]
    fn joined(mut self, inline: Inline, lengths: u64) -> HeaderMap {
        self.join_inline(inline, lengths);
        self
    }

    /// Joins each name of `inline` that comes more than once into one header (see
    /// [`HeaderMap::join_all`]), looking only at names whose length digest is in `lengths`
    /// (a browser's request has four: `connection`, `user-agent`, `accept-encoding`,
    /// `accept-language`). Sorted, a repeat sits next to its twin: n log n compares however
    /// many names a client sends of one length, and no allocation for up to 16 of them.
    fn join_inline(&mut self, inline: Inline, lengths: u64) {
        const SMALL: usize = 16;
        let mut small: [&[u8]; SMALL] = [&[]; SMALL];
        let mut more: Vec<&[u8]> = Vec::new();
        let mut n = 0;
        for e in &self.entries {
            let name = self.bytes(&e.name);
            if lengths & name_digest(name.len()) == 0 {
                continue;
            }
            if n < SMALL {
                small[n] = name;
            } else {
                if more.is_empty() {
                    more.extend_from_slice(&small);
                }
                more.push(name);
            }
            n += 1;
        }
        let names: &mut [&[u8]] = if n <= SMALL {
            &mut small[..n]
        } else {
            &mut more
        };
        names.sort_unstable();
        let mut repeated: Vec<Vec<u8>> = names
            .windows(2)
            .filter(|w| w[0] == w[1] && inline.contains(w[0]))
            .map(|w| w[0].to_vec())
            .collect();
        repeated.dedup();
        for name in repeated {
            self.join_all(&name);
        }
    }

    /// Writes `host` first (Envoy's codec writes `:authority` right after the request line),
    /// then every other header in order.
    pub fn write_host_first(&self, out: &mut Vec<u8>) {
        let host = if self.mask & known::HOST != 0 {
            self.entries.iter().position(|e| e.bit == known::HOST)
        } else {
            None
        };
        match host {
            // Any later `host` is dropped: one authority goes upstream.
            Some(i) => {
                self.write_entries(out, &self.entries[i..i + 1], 0);
                self.write_entries(out, &self.entries[..i], 0);
                self.write_entries(out, &self.entries[i + 1..], known::HOST);
            }
            None => self.write_entries(out, &self.entries, 0),
        }
    }

    /// Writes every header as `name: value\r\n`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.write_entries(out, &self.entries, 0);
    }

    /// The line of a header exactly as parsed, `name: value\r\n` (name lower-cased in place),
    /// as a span of the raw head: `None` for an added or rewritten header, or one whose line
    /// is spelled otherwise (no space after the colon, trailing spaces, a bare `\n`).
    #[inline]
    fn raw_line(&self, e: &Entry) -> Option<(usize, usize)> {
        let (Val::Span(ns, ne), Val::Span(vs, ve)) = (&e.name, &e.value) else {
            return None;
        };
        let (ns, ne, vs, ve) = (*ns as usize, *ne as usize, *vs as usize, *ve as usize);
        let raw = &self.raw[..];
        (vs == ne + 2
            && raw.get(ne..vs) == Some(&b": "[..])
            && raw.get(ve..ve + 2) == Some(&b"\r\n"[..]))
        .then_some((ns, ve + 2))
    }

    /// Writes `entries` (a run of this map's) as header lines, leaving out those whose
    /// [`known_bit`] is `skip` (0: none). Consecutive headers that are still the parsed bytes,
    /// as most are, go out in one copy per run instead of four small ones per header.
    fn write_entries(&self, out: &mut Vec<u8>, entries: &[Entry], skip: u32) {
        let mut run: Option<(usize, usize)> = None;
        for e in entries {
            if skip != 0 && e.bit == skip {
                if let Some((rs, re)) = run.take() {
                    out.extend_from_slice(&self.raw[rs..re]);
                }
                continue;
            }
            match self.raw_line(e) {
                Some((s, end)) => match &mut run {
                    Some((_, re)) if *re == s => *re = end,
                    _ => {
                        if let Some((rs, re)) = run {
                            out.extend_from_slice(&self.raw[rs..re]);
                        }
                        run = Some((s, end));
                    }
                },
                None => {
                    if let Some((rs, re)) = run.take() {
                        out.extend_from_slice(&self.raw[rs..re]);
                    }
                    write_header(out, self.bytes(&e.name), self.bytes(&e.value));
                }
            }
        }
        if let Some((rs, re)) = run {
            out.extend_from_slice(&self.raw[rs..re]);
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
    /// Whether that URI was `https` (`None`: origin form).
    absolute_https: Option<bool>,
}

impl RequestHead {
    /// The method, as sent.
    #[inline]
    pub fn method(&self) -> &[u8] {
        &self.headers.raw[self.method.0 as usize..self.method.1 as usize]
    }

    /// The request target: path and query as sent, or the path and query of an absolute URI
    /// once [`RequestHead::normalize_absolute_form`] has run.
    #[inline(always)]
    pub fn target(&self) -> &[u8] {
        match &self.target_override {
            Some(t) => t,
            None => &self.headers.raw[self.target.0 as usize..self.target.1 as usize],
        }
    }

    /// Replaces the target (the connection manager's path rules, `path.rs`).
    pub fn set_target(&mut self, target: Vec<u8>) {
        self.target_override = Some(target.into_boxed_slice());
    }

    /// Turns an absolute-form target (`http://host/path?q`) into origin form, making the URI's
    /// authority the `host` header, as Envoy does. Returns false for a malformed URI.
    pub fn normalize_absolute_form(&mut self) -> bool {
        let t = &self.headers.raw[self.target.0 as usize..self.target.1 as usize];
        let (rest, https) = if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
            (&t[7..], false)
        } else if t.len() > 8 && t[..8].eq_ignore_ascii_case(b"https://") {
            (&t[8..], true)
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
        // No path is `/`; a query right after the authority stays the path as it is, as in
        // Envoy (`http://x?y` has the path `?y`, which is not relative: a 404, not routed).
        let path: Box<[u8]> = if path.is_empty() {
            (*b"/").into()
        } else {
            path.into()
        };
        let authority = authority.to_vec();
        self.headers.set(b"host", &authority);
        self.target_override = Some(path);
        self.absolute_https = Some(https);
        true
    }

    /// The scheme of an absolute-form target once [`RequestHead::normalize_absolute_form`] has
    /// run (`Some(true)`: https); `None` for origin form.
    pub fn absolute_https(&self) -> Option<bool> {
        self.absolute_https
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
    /// More headers than the configured count ([`MAX_HEADERS`] by default) or more bytes than
    /// the configured length: 431.
    TooLarge,
}

/// The position of `s` inside the buffer starting at `base`. Every slice httparse returns for
/// a name, value, method or target points into the buffer it parsed.
fn span(base: *const u8, s: &[u8]) -> (u32, u32) {
    let start = (s.as_ptr() as usize).wrapping_sub(base as usize);
    (start as u32, (start + s.len()) as u32)
}

/// Room left in a parsed head's entry list for the headers the proxy adds (request: up to
/// six; response: up to four), so adding them does not regrow the list.
const ADDED_HEADERS: usize = 6;

/// Entry lists kept per thread (a worker is one thread) for the next parses. A map gives its
/// list back when dropped; a list that grew past [`SPARE_MAX_LEN`] entries is freed instead.
/// Two lists a request (its head and its response's), each a malloc and a free before: ~250
/// instructions a request, and ~700 once a head of 9 or more headers made its list too large
/// for glibc's per-thread cache (callgrind).
const SPARE_KEPT: usize = 32;
const SPARE_MAX_LEN: usize = 32;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<Entry>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Room in a new entry list: kept lists then rarely need to grow for another head.
const NEW_LIST_LEN: usize = 16;

/// An empty entry list with room for `n`, kept or new.
#[inline]
fn entry_list(n: usize) -> Vec<Entry> {
    let kept = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten();
    match kept {
        Some(mut v) => {
            v.reserve(n);
            v
        }
        None => Vec::with_capacity(n.max(NEW_LIST_LEN)),
    }
}

impl Drop for HeaderMap {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.entries);
        if v.capacity() == 0 || v.capacity() > SPARE_MAX_LEN {
            return;
        }
        v.clear();
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_KEPT {
                s.push(v);
            }
        });
    }
}

/// The header entries of a parse, as spans of the buffer at `base`, in one list (their bits
/// are filled in by [`take_head`], once the names are lower-case).
fn entries_of(base: *const u8, headers: &[httparse::Header<'_>]) -> Vec<Entry> {
    let mut entries = entry_list(headers.len() + ADDED_HEADERS);
    for h in headers {
        let (ns, ne) = span(base, h.name.as_bytes());
        let (vs, ve) = span(base, h.value);
        entries.push(Entry {
            name: Val::Span(ns, ne),
            value: Val::Span(vs, ve),
            bit: 0,
        });
    }
    entries
}

/// Values joined by `,`, the empty ones left out (Envoy's `appendToHeader`).
pub fn join_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        if !v.is_empty() {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(v);
        }
    }
    out
}

/// Splits the head off `buf`, lower-cases the header names in place, classifies them and
/// builds the map with its presence mask. A name of `inline` that comes more than once becomes
/// one header, as in Envoy's codec (see [`HeaderMap::join_inline`]).
fn take_head(buf: &mut BytesMut, n: usize, mut entries: Vec<Entry>, inline: Inline) -> HeaderMap {
    let mut raw = buf.split_to(n);
    let mut mask = 0;
    // One bit per name length seen, and the bits seen twice.
    let (mut seen, mut twice) = (0u64, 0u64);
    for e in &mut entries {
        if let Val::Span(s, end) = e.name {
            let name = &mut raw[s as usize..end as usize];
            name.make_ascii_lowercase();
            e.bit = known_bit(name);
            mask |= e.bit;
            let d = name_digest((end - s) as usize);
            twice |= seen & d;
            seen |= d;
        }
    }
    let raw = raw.freeze();
    // Only names of a length seen twice that an inline name has can need a join: browsers send
    // `accept-encoding` and `accept-language` (15), `user-agent` and `connection` (10).
    if twice & inline.lengths != 0 {
        return HeaderMap { raw, entries, mask }.joined(inline, twice & inline.lengths);
    }
    // Built where it is returned: a map built first and returned after the test above was
    // moved, 17 instructions a head (callgrind).
    HeaderMap { raw, entries, mask }
}

/// Room for httparse's header slices, left uninitialised: httparse writes the ones it fills
/// (an initialised array of [`MAX_HEADERS`] cost ~3 KiB of stores per parse).
#[inline(always)]
fn uninit_headers<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses a request head from the front of `buf`. Returns `Ok(None)` when more bytes are
/// needed (and `buf` is still within `max_len`); on success the head's bytes are split off `buf`.
/// At most [`MAX_HEADERS`] headers (see [`parse_request_counted`]).
pub fn parse_request(buf: &mut BytesMut, max_len: usize) -> Result<Option<RequestHead>, HeadError> {
    parse_request_counted(buf, max_len, MAX_HEADERS)
}

/// [`parse_request`] with at most `max_headers` headers (Envoy's `max_headers_count`, counted
/// once repeated inline headers are joined).
pub fn parse_request_counted(
    buf: &mut BytesMut,
    max_len: usize,
    max_headers: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut hdrs = uninit_headers();
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr();
    let n = match req.parse_with_uninit_headers(buf, &mut hdrs) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_len {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        // More lines than slots: repeated inline headers may join into few enough.
        Err(_) => return parse_request_lenient(buf, max_len, max_headers),
    };
    if n > max_len {
        return Err(HeadError::TooLarge);
    }
    let method = span(base, req.method.unwrap_or("").as_bytes());
    let target = span(base, req.path.unwrap_or("").as_bytes());
    let minor = req.version.unwrap_or(1);
    let entries = entries_of(base, req.headers);
    let headers = take_head(buf, n, entries, REQUEST_INLINE);
    // At most MAX_HEADERS lines came: only a lower configured count needs a look.
    if headers.entries.len() > max_headers {
        return Err(HeadError::TooLarge);
    }
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        headers,
        wire_len: n,
        target_override: None,
        absolute_https: None,
    }))
}

/// `RequestHead::minor` for a request line that names a version other than HTTP/1.0 and
/// HTTP/1.1 (`HTTP/2.0`), or none at all (HTTP/0.9): Envoy's codec takes such a head whole
/// and its connection manager answers 426.
pub const UNSUPPORTED_VERSION: u8 = u8::MAX;

/// Whether `c` may appear in an HTTP token (RFC 9110 section 5.6.2), such as a method or a
/// header name.
pub fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The request lines httparse refuses but Envoy's codec takes: runs of spaces or tabs between
/// the parts, spaces or tabs after the version, another `HTTP/x.y` version, or none (HTTP/0.9).
/// Tried only once httparse has refused the head, so it costs the usual request nothing. A
/// line not yet whole needs more bytes while what came of it could still be such a line.
#[cold]
#[inline(never)]
fn parse_request_lenient(
    buf: &mut BytesMut,
    max_len: usize,
    max_headers: usize,
) -> Result<Option<RequestHead>, HeadError> {
    // Empty lines before the request line are skipped, as httparse does.
    let mut start = 0;
    loop {
        match &buf[start..] {
            [b'\r', b'\n', ..] => start += 2,
            [b'\n', ..] => start += 1,
            _ => break,
        }
    }
    let Some(lf) = memchr::memchr(b'\n', &buf[start..]).map(|i| start + i) else {
        // The line so far, less a CR its LF may still follow.
        let part = &buf[start..];
        let part = part.strip_suffix(b"\r").unwrap_or(part);
        return match line_parts(part, start, true) {
            Some(_) => need_more(buf, max_len),
            None => Err(HeadError::Malformed),
        };
    };
    let line = &buf[start..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some((parts, n)) = line_parts(line, start, false) else {
        return Err(HeadError::Malformed);
    };
    let minor = match n {
        2 => UNSUPPORTED_VERSION,
        3 => match &buf[parts[2].0..parts[2].1] {
            b"HTTP/1.1" => 1,
            b"HTTP/1.0" => 0,
            _ => UNSUPPORTED_VERSION,
        },
        _ => return Err(HeadError::Malformed),
    };
    // An HTTP/0.9 request is its line alone: Envoy's codec reads nothing after it and answers
    // 426 whatever follows (bad header lines, conflicting framing; checked against the envoy
    // binary).
    let (n, entries) = if minor == UNSUPPORTED_VERSION && n == 2 {
        // Its line alone is the head, and still bounded by `max_len`: a longer one refused
        // only when it came in pieces would depend on how the bytes arrived (found by the
        // request_head fuzz target).
        if lf + 1 > max_len {
            return Err(HeadError::TooLarge);
        }
        (lf + 1, entry_list(ADDED_HEADERS))
    } else {
        match headers_after_line(buf, lf, max_len, max_headers)? {
            Some(found) => found,
            None => return Ok(None),
        }
    };
    let at = |(s, e): (usize, usize)| (s as u32, e as u32);
    let headers = take_head(buf, n, entries, REQUEST_INLINE);
    if headers.entries.len() > max_headers {
        return Err(HeadError::TooLarge);
    }
    Ok(Some(RequestHead {
        method: at(parts[0]),
        target: at(parts[1]),
        minor,
        headers,
        wire_len: n,
        target_override: None,
        absolute_https: None,
    }))
}

/// `Ok(None)` while a partial head is within `max_len`, else too large.
fn need_more<T>(buf: &[u8], max_len: usize) -> Result<Option<T>, HeadError> {
    if buf.len() > max_len {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    }
}

/// The headers after a start line that ends at `lf`, for the lenient parsers: the head's
/// length and its entries, or `None` while more bytes are needed. Up to twice `max_headers`
/// lines (at least [`PARSE_SLOTS`]), for repeated inline headers that join.
fn headers_after_line(
    buf: &[u8],
    lf: usize,
    max_len: usize,
    max_headers: usize,
) -> Result<Option<(usize, Vec<Entry>)>, HeadError> {
    let mut fixed = [httparse::EMPTY_HEADER; PARSE_SLOTS];
    let mut grown;
    let hdrs: &mut [httparse::Header<'_>] = if max_headers > MAX_HEADERS {
        // No more than the bytes at hand can hold (a line is at least `a:` and a LF), so a
        // huge configured count costs no huge list.
        let room = (buf.len() - lf) / 3 + 1;
        grown = vec![httparse::EMPTY_HEADER; max_headers.saturating_mul(2).min(room)];
        &mut grown
    } else {
        &mut fixed
    };
    match httparse::parse_headers(&buf[lf + 1..], hdrs) {
        Ok(httparse::Status::Complete((used, _))) if lf + 1 + used > max_len => {
            Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Complete((used, headers))) => {
            Ok(Some((lf + 1 + used, entries_of(buf.as_ptr(), headers))))
        }
        Ok(httparse::Status::Partial) => need_more(buf, max_len),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Length of `HTTP/<digit>.<digit>`.
const VERSION_LEN: usize = 8;

/// Whether `part` is `HTTP/<digit>.<digit>` or the start of one.
fn version_prefix(part: &[u8]) -> bool {
    part.len() <= VERSION_LEN
        && part.iter().zip(b"HTTP/0.0").all(|(&c, &p)| {
            if p == b'0' {
                c.is_ascii_digit()
            } else {
                c == p
            }
        })
}

/// Splits a request line at runs of spaces and tabs into its parts (as offsets from `offset`):
/// a method token, a target of visible bytes, and optionally a version `HTTP/<digit>.<digit>`.
/// `None` if it cannot be a request line; with `partial`, if no line it starts could be one.
fn line_parts(line: &[u8], offset: usize, partial: bool) -> Option<([(usize, usize); 3], usize)> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return None;
    }
    let mut parts = [(0, 0); 3];
    let mut n = 0;
    let mut i = 0;
    while i < line.len() {
        if matches!(line[i], b' ' | b'\t') {
            i += 1;
            continue;
        }
        let s = i;
        while i < line.len() && !matches!(line[i], b' ' | b'\t') {
            i += 1;
        }
        if n == 3 {
            return None;
        }
        parts[n] = (offset + s, offset + i);
        n += 1;
        let part = &line[s..i];
        // The last part of a partial line may be cut short.
        let cut = partial && i == line.len();
        let ok = match n {
            1 => part.iter().all(|&c| is_tchar(c)),
            2 => part.iter().all(|&c| c > b' ' && c != 0x7f),
            _ => version_prefix(part) && (cut || part.len() == VERSION_LEN),
        };
        if !ok {
            return None;
        }
    }
    (partial || n >= 2).then_some((parts, n))
}

/// Parses a response head from the front of `buf`, like [`parse_request`].
pub fn parse_response(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    parse_response_counted(buf, max_len, MAX_HEADERS)
}

/// [`parse_response`] with at most `max_headers` headers (the cluster's `max_headers_count`).
pub fn parse_response_counted(
    buf: &mut BytesMut,
    max_len: usize,
    max_headers: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    // Envoy's codec wants `H` first: httparse would skip empty lines before the status line.
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return Err(HeadError::Malformed);
    }
    let mut hdrs = uninit_headers();
    let mut resp = httparse::Response::new(&mut []);
    let base = buf.as_ptr();
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut hdrs)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_len {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        // More lines than slots: repeated inline headers may join into few enough.
        Err(_) => return parse_response_lenient(buf, max_len, max_headers),
    };
    // A head over the limit is refused however it arrived (the partial case above refuses it
    // only when it came in pieces).
    if n > max_len {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    // httparse takes any three digits; a code below 100 is not HTTP, and Envoy resets the
    // stream as a protocol error (502 downstream) rather than pass on such a status line.
    if status < 100 {
        return Err(HeadError::Malformed);
    }
    let minor = resp.version.unwrap_or(1);
    let headers = take_head(buf, n, entries_of(base, resp.headers), RESPONSE_INLINE);
    if headers.entries.len() > max_headers {
        return Err(HeadError::TooLarge);
    }
    Ok(Some(ResponseHead {
        status,
        minor,
        headers,
    }))
}

/// The status lines httparse refuses but Envoy's codec takes: runs of spaces or tabs between
/// the parts, and another `HTTP/<digit>.<digit>` version (read as HTTP/1.0: the connection is
/// kept only if the response asks for it). Tried only once httparse has refused the head.
#[cold]
#[inline(never)]
fn parse_response_lenient(
    buf: &mut BytesMut,
    max_len: usize,
    max_headers: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        let part = buf.strip_suffix(b"\r").unwrap_or(buf);
        return match status_line(part, true) {
            Some(_) => need_more(buf, max_len),
            None => Err(HeadError::Malformed),
        };
    };
    let line = &buf[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some((minor, status)) = status_line(line, false) else {
        return Err(HeadError::Malformed);
    };
    let Some((n, entries)) = headers_after_line(buf, lf, max_len, max_headers)? else {
        return Ok(None);
    };
    let headers = take_head(buf, n, entries, RESPONSE_INLINE);
    if headers.entries.len() > max_headers {
        return Err(HeadError::TooLarge);
    }
    Ok(Some(ResponseHead {
        status,
        minor,
        headers,
    }))
}

/// Reads a status line whose parts are separated by runs of spaces or tabs: `HTTP/x.y`, three
/// digits from 100, then any reason without control characters but tabs. Returns (minor,
/// status); with `partial`, `Some` while more bytes could still make such a line.
fn status_line(line: &[u8], partial: bool) -> Option<(u8, u16)> {
    let ws = |b: &u8| matches!(b, b' ' | b'\t');
    let vlen = line.iter().position(ws).unwrap_or(line.len());
    let version = &line[..vlen];
    if !version_prefix(version) {
        return None;
    }
    // Cut short: still a line, if the bytes end here.
    let more = partial.then_some((0, 0));
    if vlen < VERSION_LEN {
        return if vlen == line.len() { more } else { None };
    }
    let after = &line[vlen..];
    let skip = after.iter().take_while(|b| ws(b)).count();
    let rest = &after[skip..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.is_empty() {
        return more;
    }
    if skip == 0 || digits > 3 {
        return None;
    }
    if digits < 3 {
        return if digits == rest.len() { more } else { None };
    }
    let reason = &rest[3..];
    if reason.first().is_some_and(|b| !ws(b))
        || reason
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return None;
    }
    let status = rest[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (status >= 100).then_some((u8::from(version == b"HTTP/1.1"), status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_of_any_length_and_case_are_lowered() {
        let head = b"GET / HTTP/1.1\r\nHOST: A\r\nX-Envoy-Upstream-RQ-Timeout-MS: 5\r\nConTent-LENGTH: 0\r\nA: B\r\nX-ABCDEFGH: Q\r\n\r\n";
        let h = parse_request(&mut BytesMut::from(&head[..]), 1 << 16)
            .unwrap()
            .unwrap();
        let names: Vec<&[u8]> = h.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                &b"host"[..],
                b"x-envoy-upstream-rq-timeout-ms",
                b"content-length",
                b"a",
                b"x-abcdefgh"
            ]
        );
        // Values keep their case.
        let values: Vec<&[u8]> = h.headers.iter().map(|(_, v)| v).collect();
        assert_eq!(values, [&b"A"[..], b"5", b"0", b"B", b"Q"]);
        assert!(h.headers.may_have_any(known::HOST));
        assert!(h.headers.may_have_any(known::CONTENT_LENGTH));
        assert!(h.headers.may_have_any(known::X_ENVOY));
        assert!(!h.headers.may_have_any(known::CONNECTION));
    }

    #[test]
    fn a_dropped_map_gives_its_entry_list_to_the_next_parse_of_the_thread() {
        // Runs on its own thread: other tests' maps do not share its lists.
        std::thread::spawn(|| {
            let parse = |head: &[u8]| {
                parse_request(&mut BytesMut::from(head), 1 << 16)
                    .unwrap()
                    .unwrap()
            };
            let a = parse(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
            let list = a.headers.entries.as_ptr();
            drop(a);
            let mut b = parse(b"GET /b HTTP/1.1\r\nhost: b\r\nx-y: z\r\n\r\n");
            assert_eq!(b.headers.entries.as_ptr(), list, "the list is reused");
            // Reused, it holds this head's headers only, and takes additions as before.
            b.headers.append(b"x-long", &[b'v'; 100]);
            let got: Vec<_> = b
                .headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.len()))
                .collect();
            assert_eq!(
                got,
                [
                    (b"host".to_vec(), 1),
                    (b"x-y".to_vec(), 1),
                    (b"x-long".to_vec(), 100)
                ]
            );
            drop(b);
            // A list grown past SPARE_MAX_LEN (this one took the kept list) is freed, not kept.
            let mut many = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..SPARE_MAX_LEN + 1 {
                many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
            }
            many.extend_from_slice(b"\r\n");
            let big = parse(&many);
            assert!(big.headers.entries.capacity() > SPARE_MAX_LEN);
            let small = parse(b"GET / HTTP/1.1\r\n\r\n");
            drop(big);
            drop(small);
            let kept: Vec<usize> = SPARE.with(|s| s.borrow().iter().map(Vec::capacity).collect());
            assert_eq!(kept, [NEW_LIST_LEN]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn repeated_inline_headers_become_one_and_others_keep_their_lines() {
        fn all(h: &HeaderMap) -> Vec<(&[u8], &[u8])> {
            h.iter().collect()
        }
        let head = b"GET / HTTP/1.1\r\nAccept: a\r\nx-a: 1\r\naccept: \r\nACCEPT: b\r\nx-a: 2\r\nhost: h\r\n\r\n";
        let h = parse_request(&mut BytesMut::from(&head[..]), 1 << 16);
        let expected: [(&[u8], &[u8]); 4] = [
            (b"accept", b"a,b"),
            (b"x-a", b"1"),
            (b"x-a", b"2"),
            (b"host", b"h"),
        ];
        assert_eq!(all(&h.unwrap().unwrap().headers), expected);
        // In a response, `accept` is not inline, `vary` is.
        let head = b"HTTP/1.1 200 OK\r\naccept: a\r\nvary: x\r\naccept: b\r\nvary: y\r\n\r\n";
        let r = parse_response(&mut BytesMut::from(&head[..]), 1 << 16);
        let expected: [(&[u8], &[u8]); 3] =
            [(b"accept", b"a"), (b"vary", b"x,y"), (b"accept", b"b")];
        assert_eq!(all(&r.unwrap().unwrap().headers), expected);
    }

    #[test]
    fn a_repeat_among_many_names_of_its_length_is_joined() {
        // More same-length names than the stack array holds: the look continues in a Vec.
        let mut head = b"GET / HTTP/1.1\r\nuser-agent: a\r\n".to_vec();
        for i in 0..20 {
            head.extend_from_slice(format!("x-name-{i:03}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"User-Agent: b\r\nhost: h\r\n\r\n");
        let h = parse_request(&mut BytesMut::from(&head[..]), 1 << 16)
            .unwrap()
            .unwrap();
        assert_eq!(
            h.headers.get_all(b"user-agent").collect::<Vec<_>>(),
            [b"a,b"]
        );
        assert_eq!(h.headers.iter().count(), 22);
        assert_eq!(h.headers.iter().next().unwrap().0, b"user-agent");
    }

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
    fn status_lines_envoy_takes_that_httparse_does_not() {
        for (line, status, minor) in [
            (&b"HTTP/1.1  200  OK"[..], 200, 1),
            (b"HTTP/1.1 200\tOK", 200, 1),
            (b"HTTP/1.1\t404", 404, 1),
            (b"HTTP/2.0 200 OK", 200, 0),
            (b"HTTP/1.0  503 X", 503, 0),
        ] {
            let wire = [line, b"\r\ncontent-length: 2\r\n\r\nok"].concat();
            for cut in 1..wire.len() - 2 {
                let mut b = BytesMut::from(&wire[..cut]);
                let got = parse_response(&mut b, 1000).map(|h| h.is_some());
                assert_eq!(got, Ok(false), "{line:?} cut at {cut}");
            }
            let mut b = BytesMut::from(&wire[..]);
            let h = parse_response(&mut b, 1000).unwrap().unwrap();
            assert_eq!((h.status, h.minor), (status, minor), "{line:?}");
            assert_eq!(h.headers.get(b"content-length"), Some(&b"2"[..]));
            assert_eq!(&b[..], b"ok");
        }
        for line in [
            &b"HTTP/1.1 20 X"[..],
            b"HTTP/1.1 2000 X",
            b"HTTP/1.1  099 X",
            b"http/1.1 200 OK",
            b"HTTP/1.10 200 OK",
            b"HTTP/1.1  200X",
            b"HTTP/1.1  200 O\x01K",
            b" HTTP/1.1 200 OK",
        ] {
            let wire = [line, b"\r\ncontent-length: 0\r\n\r\n"].concat();
            let mut b = BytesMut::from(&wire[..]);
            assert_eq!(
                parse_response(&mut b, 1000).err(),
                Some(HeadError::Malformed),
                "{line:?}"
            );
        }
    }

    #[test]
    fn request_lines_envoy_takes_that_httparse_does_not() {
        // (line, method, target, minor): whole, and cut after every byte of the line.
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], u8);
        let cases: &[Case] = &[
            (b"GET  /a  HTTP/1.1", b"GET", b"/a", 1),
            (b"GET\t/a\tHTTP/1.1", b"GET", b"/a", 1),
            (b"GET /a HTTP/1.1 \t ", b"GET", b"/a", 1),
            (b"POST /a HTTP/1.0 ", b"POST", b"/a", 0),
            (b"GET /a HTTP/2.0", b"GET", b"/a", UNSUPPORTED_VERSION),
            (b"GET /a HTTP/1.2", b"GET", b"/a", UNSUPPORTED_VERSION),
        ];
        for &(line, method, target, minor) in cases {
            let wire = [line, b"\r\nhost: h\r\nx-a: b\r\n\r\nrest"].concat();
            for cut in 1..wire.len() - 4 {
                let mut b = BytesMut::from(&wire[..cut]);
                assert_eq!(parse_request(&mut b, 1000).map(|h| h.is_some()), Ok(false));
            }
            let mut b = BytesMut::from(&wire[..]);
            let h = parse_request(&mut b, 1000).unwrap().unwrap();
            let got = (h.method(), h.target(), h.minor, h.wire_len);
            assert_eq!(got, (method, target, minor, wire.len() - 4), "{line:?}");
            assert_eq!(h.headers.get(b"x-a"), Some(&b"b"[..]));
            assert_eq!(&b[..], b"rest");
        }
        // HTTP/0.9: the line alone, complete once it ends; what follows stays unread.
        for line in [&b"GET /a"[..], b"GET /a "] {
            let wire = [line, b"\r\nbad header\r\n\r\n"].concat();
            for cut in 1..line.len() + 1 {
                let mut b = BytesMut::from(&wire[..cut]);
                assert_eq!(parse_request(&mut b, 1000).map(|h| h.is_some()), Ok(false));
            }
            let mut b = BytesMut::from(&wire[..]);
            let h = parse_request(&mut b, 1000).unwrap().unwrap();
            let got = (h.method(), h.target(), h.minor, h.wire_len);
            assert_eq!(
                got,
                (&b"GET"[..], &b"/a"[..], UNSUPPORTED_VERSION, line.len() + 2)
            );
            assert_eq!(h.headers.iter().count(), 0);
            assert_eq!(&b[..], b"bad header\r\n\r\n");
        }
        for line in [
            &b" GET / HTTP/1.1"[..],
            b"GET / HTTP/1.1 x",
            b"GET / HTTP/1.10",
            b"GET / http/1.1",
            b"GET / HTTP/1.1\x0b",
            b"GET",
            b"G(T / HTTP/1.1",
            b"GET /a\x7f HTTP/1.1",
        ] {
            let wire = [line, b"\r\nhost: h\r\n\r\n"].concat();
            let mut b = BytesMut::from(&wire[..]);
            assert_eq!(
                parse_request(&mut b, 1000).err(),
                Some(HeadError::Malformed),
                "{line:?}"
            );
        }
        // A partial line that no more bytes could make valid is refused at once.
        let mut b = BytesMut::from(&b"GET / HTTP/3"[..]);
        assert_eq!(parse_request(&mut b, 1000).map(|h| h.is_some()), Ok(false));
        let mut b = BytesMut::from(&b"GET / HTTPS"[..]);
        assert_eq!(
            parse_request(&mut b, 1000).err(),
            Some(HeadError::Malformed)
        );
    }

    /// A head of `n` distinct headers after `start`, each line `h<i>: v`.
    fn with_headers(start: &str, n: usize) -> Vec<u8> {
        let mut h = start.as_bytes().to_vec();
        for i in 0..n {
            h.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        h
    }

    #[test]
    fn a_configured_header_count_bounds_requests_and_responses_either_way_of_the_default() {
        let req = |n: usize, max: usize| {
            let head = with_headers("GET / HTTP/1.1\r\n", n);
            parse_request_counted(&mut BytesMut::from(&head[..]), 1 << 20, max)
                .map(|h| h.unwrap().headers.entries.len())
        };
        let resp = |n: usize, max: usize| {
            let head = with_headers("HTTP/1.1 200 OK\r\n", n);
            parse_response_counted(&mut BytesMut::from(&head[..]), 1 << 20, max)
                .map(|h| h.unwrap().headers.entries.len())
        };
        for parse in [req, resp] {
            assert_eq!(parse(5, 5), Ok(5));
            assert_eq!(parse(6, 5), Err(HeadError::TooLarge));
            assert_eq!(parse(100, MAX_HEADERS), Ok(100));
            assert_eq!(parse(101, MAX_HEADERS), Err(HeadError::TooLarge));
            // Past the fast parse's slots and past the lenient one's default lines.
            assert_eq!(parse(450, 450), Ok(450));
            assert_eq!(parse(451, 450), Err(HeadError::TooLarge));
            // A huge count takes no more lines than the head's bytes can hold.
            assert_eq!(parse(300, u32::MAX as usize), Ok(300));
        }
        // Lines that join count once; a head may have twice the count in lines (a bound on
        // the work of parsing a partial head again as it grows).
        let joined = |accepts: usize| {
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            for _ in 0..accepts {
                head.extend_from_slice(b"accept: a\r\n");
            }
            head.extend_from_slice(b"host: h\r\n\r\n");
            parse_request_counted(&mut BytesMut::from(&head[..]), 1 << 20, 150)
                .map(|h| h.unwrap().headers.entries.len())
        };
        assert_eq!(joined(299), Ok(2));
        assert_eq!(joined(300), Err(HeadError::TooLarge));
    }

    #[test]
    fn partial_then_too_large() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse_request(&mut b, 1024).unwrap().is_none());
        assert_eq!(parse_request(&mut b, 10).unwrap_err(), HeadError::TooLarge);
        // An HTTP/0.9 line (no version) longer than the limit is refused whole too, as it is
        // in pieces.
        let mut b = BytesMut::from(&b"GET /0123456789abcdef\r\n"[..]);
        assert_eq!(parse_request(&mut b, 10).unwrap_err(), HeadError::TooLarge);
        let mut b = BytesMut::from(&b"GET /0123456789abcdef\r\n"[..]);
        assert!(parse_request(&mut b, 100).unwrap().is_some());
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
    fn a_response_head_over_the_limit_is_refused_whole_or_in_pieces() {
        // Found by the response_head fuzz target: only the partial case checked the limit.
        let wire = b"HTTP/1.1 200 OK\r\nx-long: 0123456789012345678901234567890123456789\r\n\r\n";
        let limit = 40;
        assert_eq!(
            parse_response(&mut BytesMut::from(&wire[..]), limit).unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            parse_response(&mut BytesMut::from(&wire[..45]), limit).unwrap_err(),
            HeadError::TooLarge
        );
        assert!(parse_response(&mut BytesMut::from(&wire[..]), wire.len())
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_status_below_100_is_malformed_and_600_to_999_pass() {
        // Found by the response_head fuzz target: `HTTP/1.1 001` went downstream as status 1.
        let status = |line: &str| {
            let mut b = BytesMut::from(format!("{line}\r\ncontent-length: 0\r\n\r\n").as_bytes());
            parse_response(&mut b, 1024).map(|r| r.unwrap().status)
        };
        for bad in ["HTTP/1.1 000 X", "HTTP/1.1 001 Switching", "HTTP/1.1 099 X"] {
            assert_eq!(status(bad), Err(HeadError::Malformed), "{bad}");
        }
        // Envoy passes unknown codes of three digits on ("600 Unknown").
        for (ok, code) in [
            ("HTTP/1.1 100 Continue", 100),
            ("HTTP/1.1 600 X", 600),
            ("HTTP/1.1 999 X", 999),
        ] {
            assert_eq!(status(ok), Ok(code), "{ok}");
        }
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

    fn written(h: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::new();
        h.write_to(&mut out);
        out
    }

    #[test]
    fn writes_parsed_lines_as_parsed_and_edited_ones_normalised() {
        // Spelled-otherwise lines (no space, trailing spaces, tab, bare LF) are rewritten;
        // the rest go out as parsed, names lower-cased.
        let mut b = BytesMut::from(
            &b"GET / HTTP/1.1\r\nA: 1\r\nB:2\r\nC: 3  \r\nD:\t4\r\nE: 5\nF: 6\r\n\r\n"[..],
        );
        let mut h = parse_request(&mut b, 1024).unwrap().unwrap();
        assert_eq!(
            written(&h.headers),
            b"a: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\nf: 6\r\n"
        );
        // Removing, replacing and appending break the runs where they should.
        h.headers.remove(b"b");
        h.headers.set(b"e", b"55");
        h.headers.append(b"g", b"7");
        assert_eq!(
            written(&h.headers),
            b"a: 1\r\nc: 3\r\nd: 4\r\ne: 55\r\nf: 6\r\ng: 7\r\n"
        );
    }

    #[test]
    fn host_goes_first_once() {
        let mut b = BytesMut::from(
            &b"GET / HTTP/1.1\r\nA: 1\r\nHost: x\r\nB: 2\r\nhost: y\r\nC: 3\r\n\r\n"[..],
        );
        let h = parse_request(&mut b, 1024).unwrap().unwrap();
        let mut out = Vec::new();
        h.headers.write_host_first(&mut out);
        assert_eq!(out, b"host: x\r\na: 1\r\nb: 2\r\nc: 3\r\n");
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nA: 1\r\n\r\n"[..]);
        let h = parse_request(&mut b, 1024).unwrap().unwrap();
        let mut out = Vec::new();
        h.headers.write_host_first(&mut out);
        assert_eq!(out, b"a: 1\r\n");
    }

    #[test]
    fn presence_mask_never_hides_a_header() {
        let mut b = BytesMut::from(
            &b"GET / HTTP/1.1\r\nHost: x\r\nX-Envoy-Foo: 1\r\nTE: trailers\r\n\r\n"[..],
        );
        let mut h = parse_request(&mut b, 1024).unwrap().unwrap().headers;
        assert_eq!(h.get(b"host"), Some(&b"x"[..]));
        assert_eq!(h.get(b"te"), Some(&b"trailers"[..]));
        assert_eq!(h.get(b"x-envoy-foo"), Some(&b"1"[..]));
        assert!(h.may_have_any(known::X_ENVOY | known::TE));
        assert!(!h.may_have_any(known::CONNECTION | known::X_FORWARDED_FOR));
        assert_eq!(h.get(b"connection"), None);
        // Removed by name: the bit goes; by predicate: it stays (a set bit means "scan"), and
        // the lookup still finds nothing. Appended, set or re-added: it comes back.
        h.remove(b"te");
        assert!(!h.may_have_any(known::TE));
        h.remove_if(|n, _| n.starts_with(b"x-envoy-"));
        assert_eq!(h.get(b"x-envoy-foo"), None);
        h.set(b"x-forwarded-proto", b"http");
        h.append(b"x-envoy-bar", b"2");
        h.append(b"connection", b"close");
        assert_eq!(h.get(b"x-forwarded-proto"), Some(&b"http"[..]));
        assert_eq!(h.get(b"x-envoy-bar"), Some(&b"2"[..]));
        assert_eq!(
            h.get_all(b"connection").collect::<Vec<_>>(),
            vec![&b"close"[..]]
        );
        assert_eq!(h.get(b"host"), Some(&b"x"[..]));
        for name in [
            &b"te"[..],
            b"host",
            b"date",
            b"expect",
            b"server",
            b"upgrade",
            b"connection",
            b"keep-alive",
            b"content-type",
            b"x-request-id",
            b"content-length",
            b"x-forwarded-for",
            b"proxy-connection",
            b"transfer-encoding",
            b"x-forwarded-proto",
            b"x-envoy-x",
        ] {
            assert_ne!(known_bit(name), 0, "{}", String::from_utf8_lossy(name));
        }
        assert_eq!(known_bit(b"x-envoy-"), 0);
        assert_eq!(known_bit(b"accept"), 0);
    }
}
