//! Proxy rules for HTTP/1.1 messages: how a message's body is framed (with the request
//! smuggling checks), which headers are hop-by-hop, and how heads are written.

use super::body::Framing;
use super::head::{known, HeaderMap, RequestHead};

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Conflicting or invalid `content-length`, or `transfer-encoding` with `content-length`: 400.
    BadRequest,
    /// A transfer coding other than `chunked`: 501, as Envoy answers.
    NotImplemented,
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The request body framing, refusing every ambiguous form (RFC 9112 section 6.3) as Envoy
/// does: both `transfer-encoding` and `content-length`, more than one `content-length` (even
/// with equal values), a non-numeric length, a transfer coding other than exactly `chunked`,
/// or a body on a CONNECT.
#[inline]
pub fn request_framing(h: &RequestHead) -> Result<Framing, FramingError> {
    let mut te = h.headers.get_all(b"transfer-encoding").peekable();
    let has_te = te.peek().is_some();
    let mut lengths = h.headers.get_all(b"content-length");
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(v), None) => Some(parse_length(v.trim_ascii()).ok_or(FramingError::BadRequest)?),
        (Some(_), Some(_)) => return Err(FramingError::BadRequest),
    };
    if has_te {
        if length.is_some() {
            return Err(FramingError::BadRequest);
        }
        // A CONNECT carries no body of its own (Envoy 1.40).
        if h.method() == b"CONNECT" {
            return Err(FramingError::NotImplemented);
        }
        return match te_chunked(te) {
            Some(true) => Ok(Framing::Chunked),
            // Framed as if it had no `transfer-encoding`: no body.
            Some(false) => Ok(Framing::Empty),
            None => Err(FramingError::NotImplemented),
        };
    }
    Ok(match length {
        Some(n) if n > 0 && h.method() == b"CONNECT" => return Err(FramingError::BadRequest),
        Some(n) => Framing::Length(n),
        None => Framing::Empty,
    })
}

/// Envoy 1.40's reading of a message's `transfer-encoding` lines (checked with the envoy
/// binary, both ways): its header map joins the non-blank lines (a blank value is dropped),
/// and exactly `chunked`, any case, is taken; a list (`gzip, chunked`, or `chunked,` with an
/// empty element), a second line or only blank ones is refused (`None`: 501, or 502 for a
/// response). Its parser frames by the last line, though: after a blank one the message is
/// framed as if it had no `transfer-encoding` (`Some(false)`), so a request is bodiless and
/// the bytes after its head are read as the next request.
fn te_chunked<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<bool> {
    let mut nonblank = 0;
    let mut chunked = false;
    let mut last_blank = false;
    for v in lines {
        let v = v.trim_ascii();
        last_blank = v.is_empty();
        if !last_blank {
            nonblank += 1;
            chunked = v.eq_ignore_ascii_case(b"chunked");
        }
    }
    (nonblank == 1 && chunked).then_some(!last_blank)
}

/// Whether a request with this method is expected to carry no body (Envoy's
/// `requestShouldHaveNoBody`): bodiless requests of other methods get `content-length: 0`.
pub fn method_has_no_body(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"DELETE" | b"TRACE" | b"CONNECT")
}

/// The response body framing (RFC 9112 section 6.3), given the request method and status, with
/// the checks of Envoy 1.40's codec (docs/envoy-behaviour.md section 10): several
/// `content-length` lines or an unparsable one; `transfer-encoding` with `content-length`;
/// a transfer coding other than exactly one `chunked`; a 1xx or 204 with a
/// `transfer-encoding` or a `content-length` other than 0. Each is a protocol error: forwarding
/// it would let the client frame the body differently from us (and leave bytes in a pooled
/// upstream connection). A 304 is bodiless, its one length relayed unread.
pub fn response_framing(
    head_request: bool,
    status: u16,
    h: &HeaderMap,
) -> Result<Framing, FramingError> {
    let mut te = h.may_have_any(known::TRANSFER_ENCODING) && h.contains(b"transfer-encoding");
    let mut lengths = h.get_all(b"content-length");
    let (first_length, more_lengths) = (lengths.next(), lengths.next().is_some());
    if more_lengths {
        return Err(FramingError::BadRequest);
    }
    if (100..200).contains(&status) || status == 204 {
        return if te || first_length.is_some_and(|v| v.trim_ascii() != b"0") {
            Err(FramingError::BadRequest)
        } else {
            Ok(Framing::Empty)
        };
    }
    if te {
        if first_length.is_some() {
            return Err(FramingError::NotImplemented);
        }
        // A blank last line frames it as if it had none: by its length, else by the close.
        te = te_chunked(h.get_all(b"transfer-encoding")).ok_or(FramingError::NotImplemented)?;
    }
    // A 304's one length is relayed unread.
    if status == 304 {
        return Ok(Framing::Empty);
    }
    let length = match first_length {
        Some(v) => Some(parse_length(v.trim_ascii()).ok_or(FramingError::BadRequest)?),
        None => None,
    };
    Ok(match (head_request, te, length) {
        (true, _, _) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::Close,
    })
}

/// The tokens of a message's `connection` header(s) the codec acts on, read in one pass per
/// message (`ConnectionTokens::of`) and then asked by the keep-alive, upgrade, `host` and
/// hop-by-hop rules. A message without the header costs one mask test; the usual single
/// `keep-alive` or `close` value is recognised whole, without splitting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    host: bool,
    /// A token other than `close` and `keep-alive`: a header the sender nominates for removal
    /// (`upgrade` and `host` included).
    nominates: bool,
}

impl ConnectionTokens {
    /// Whether it names a header for removal (a token other than `close` and `keep-alive`).
    #[inline]
    pub fn nominates(self) -> bool {
        self.nominates
    }

    #[inline]
    pub fn of(h: &HeaderMap) -> ConnectionTokens {
        let mut t = ConnectionTokens::default();
        for v in h.get_all(b"connection") {
            if v.eq_ignore_ascii_case(b"keep-alive") {
                t.keep_alive = true;
            } else if v.eq_ignore_ascii_case(b"close") {
                t.close = true;
            } else {
                t.add_list(v);
            }
        }
        t
    }

    #[cold]
    fn add_list(&mut self, v: &[u8]) {
        for tok in list_tokens(v) {
            if tok.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.nominates = true;
                self.upgrade |= tok.eq_ignore_ascii_case(b"upgrade");
                self.host |= tok.eq_ignore_ascii_case(b"host");
            }
        }
    }

    /// Whether the connection persists after this message of HTTP/1.`minor`.
    #[inline]
    pub fn keep_alive(self, minor: u8) -> bool {
        if minor == 0 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }

    /// Whether `connection` names `host`: Envoy's codec then treats the request as having no
    /// host, and answers 400.
    #[inline]
    pub fn names_host(self) -> bool {
        self.host
    }

    /// Whether the request asks for a protocol upgrade (`connection: upgrade` plus `upgrade`).
    #[inline]
    pub fn is_upgrade(self, h: &HeaderMap) -> bool {
        self.upgrade && h.contains(b"upgrade")
    }
}

/// Envoy's codec drops an HTTP/1.1 request's offer to upgrade to HTTP/2 in the clear
/// (`upgrade: h2c`, one token in any case, with `connection: upgrade`): the `upgrade` and
/// `http2-settings` headers go, and so do those two tokens of `connection` (the header too if
/// nothing is left), and the request is served as a plain one. Returns whether it did; the
/// caller then reads the `connection` tokens again. Checked against the envoy binary.
#[cold]
pub fn strip_h2c_upgrade(h: &mut HeaderMap) -> bool {
    if !h
        .only(b"upgrade")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    {
        return false;
    }
    h.remove(b"upgrade");
    h.remove(b"http2-settings");
    let kept: Vec<Vec<u8>> = h
        .get_all(b"connection")
        .flat_map(list_tokens)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"upgrade") && !t.eq_ignore_ascii_case(b"http2-settings")
        })
        .map(<[u8]>::to_vec)
        .collect();
    if kept.is_empty() {
        h.remove(b"connection");
    } else {
        h.set(b"connection", &kept.join(&b","[..]));
    }
    true
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1: `connection`, `keep-alive`,
/// `transfer-encoding`, `upgrade`, plus `proxy-connection`, which Envoy also strips: the
/// [`known::HOP_BY_HOP`] bits less `te`) and the headers the `connection` header names
/// (`conn`, read from `h` before); the writer adds `transfer-encoding` for the next hop. `te`
/// is kept only as `te: trailers`, when it lists it.
///
/// Each header's name was classified once at parse time, so finding and dropping these is
/// integer compares, and a message without any (the presence mask) costs nothing. The
/// nominated-headers path, which compares bytes and allocates, runs only when `connection`
/// names something other than `close` / `keep-alive`.
pub fn strip_hop_by_hop(h: &mut HeaderMap, conn: ConnectionTokens) {
    strip(h, conn, true);
}

/// The hop-by-hop strip for the messages of an upgrade (the request, and the `101` that
/// accepts it), as Envoy's: `connection` and `upgrade` go on as sent, and so do the headers
/// `connection` names (and `te`, untouched); only `keep-alive` and `proxy-connection` go, and
/// `transfer-encoding`, which the head writer sets from the framing. Routes match on what this
/// leaves (checked with the envoy binary).
#[cold]
#[inline(never)]
pub fn strip_for_upgrade(h: &mut HeaderMap) {
    h.remove_known(known::KEEP_ALIVE | known::PROXY_CONNECTION | known::TRANSFER_ENCODING);
}

/// [`strip_hop_by_hop`] for a response: Envoy 1.40 removes the hop-by-hop headers from a
/// response but keeps the ones its `connection` header names (`connection: x-foo` leaves
/// `x-foo`; `connection: content-length` leaves the length).
pub fn strip_hop_by_hop_response(h: &mut HeaderMap, conn: ConnectionTokens) {
    strip(h, conn, false);
}

#[inline(always)]
fn strip(h: &mut HeaderMap, conn: ConnectionTokens, nominated: bool) {
    debug_assert_eq!(conn, ConnectionTokens::of(h));
    if !h.may_have_any(known::HOP_BY_HOP) {
        return;
    }
    // Read before the removals: a `te` the connection header names is still reduced, not lost.
    let te = if h.may_have_any(known::TE) {
        te_rule(h)
    } else {
        Te::Keep
    };
    // Reduced in place, where the client sent it (also when `connection` names it).
    if te == Te::Trailers {
        h.set(b"te", b"trailers");
    }
    if nominated && conn.nominates {
        remove_nominated(h, te == Te::Trailers);
    }
    h.remove_known(known::HOP_BY_HOP & !known::TE);
    if te == Te::Remove {
        h.remove(b"te");
    }
}

/// What becomes of a request's `te` headers (Envoy's rule, on their values joined by `,`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Te {
    /// None, or one with an empty value: left as they are.
    Keep,
    /// A comma-separated token is exactly `trailers` (case and parameters count): `te: trailers`.
    Trailers,
    /// Anything else: removed.
    Remove,
}

#[cold]
fn te_rule(h: &HeaderMap) -> Te {
    let mut values = 0;
    let mut empty = true;
    for v in h.get_all(b"te") {
        values += 1;
        empty &= v.is_empty();
        if v.split(|b| *b == b',')
            .any(|t| t.trim_ascii() == b"trailers")
        {
            return Te::Trailers;
        }
    }
    match values {
        0 => Te::Keep,
        1 if empty => Te::Keep,
        _ => Te::Remove,
    }
}

/// The comma-separated tokens of a `connection` value, trimmed, empty ones left out.
fn list_tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cold]
fn remove_nominated(h: &mut HeaderMap, keep_te: bool) {
    let named: Vec<Vec<u8>> = h
        .get_all(b"connection")
        .flat_map(list_tokens)
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter(|t| !(keep_te && t.eq_ignore_ascii_case(b"te")))
        .map(<[u8]>::to_ascii_lowercase)
        .collect();
    // `connection` may nominate end-to-end headers for removal, but never `host` (a request
    // naming it is refused before this, see `ConnectionTokens::names_host`).
    h.remove_if(|n, _| n != b"host" && named.iter().any(|t| t.as_slice() == n));
}

/// Writes a content-length or transfer-encoding header for `framing`.
pub fn write_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
}

/// Writes `HTTP/1.1 <code> <reason>\r\n` with Envoy's reason phrase for the code.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    if status == 200 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase Envoy's HTTP/1 codec writes for a status code (it does not pass the
/// upstream's phrase through): Envoy's `CodeUtility::toString` table, `Unknown` otherwise.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        // Envoy 1.40's name for it (checked against the binary, as is the whole table).
        599 => "Last Unassigned Server Error Code",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::parse_request;
    use bytes::BytesMut;

    fn req(wire: &str) -> RequestHead {
        parse_request(&mut BytesMut::from(wire.as_bytes()), 65536)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn request_framing_table() {
        let cases: &[(&str, Result<Framing, FramingError>)] = &[
            ("GET / HTTP/1.1\r\n\r\n", Ok(Framing::Empty)),
            (
                "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n",
                Ok(Framing::Length(5)),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
                Err(FramingError::BadRequest),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                Err(FramingError::BadRequest),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 5, 6\r\n\r\n",
                Err(FramingError::BadRequest),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                Err(FramingError::BadRequest),
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 0x10\r\n\r\n",
                Err(FramingError::BadRequest),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Err(FramingError::BadRequest),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
            // Envoy 1.40: an empty element is a list, not `chunked`; blank lines are dropped,
            // but a blank last line leaves the request bodiless.
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, \r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: , chunked\r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: \r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: \r\ntransfer-encoding: chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: CHUNKED\r\ntransfer-encoding: \r\n\r\n",
                Ok(Framing::Empty),
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \r\ntransfer-encoding: chunked\r\n\r\n",
                Err(FramingError::NotImplemented),
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(request_framing(&req(wire)), *want, "{wire:?}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = req("GET / HTTP/1.1\r\nhost: h\r\nconnection: keep-alive, x-foo, host\r\nkeep-alive: 5\r\nx-foo: 1\r\nte: trailers\r\nupgrade: h2c\r\nx-bar: 2\r\n\r\n").headers;
        let conn = ConnectionTokens::of(&h);
        assert!(conn.names_host() && !conn.is_upgrade(&h) && conn.keep_alive(1));
        strip_hop_by_hop(&mut h, conn);
        let names: Vec<_> = h
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        // Regression: `connection: host` used to strip host from the upstream request.
        assert_eq!(names, vec!["host", "te", "x-bar"]);
    }

    #[test]
    fn a_te_the_connection_header_names_is_still_reduced_not_lost() {
        // Regression (review): naming `te` in `connection` used to drop `te: trailers` too.
        for (wire, want) in [
            (
                "connection: te\r\nte: trailers",
                vec!["host: h", "te: trailers"],
            ),
            ("connection: te\r\nte: gzip", vec!["host: h"]),
            (
                "connection: te, x-a\r\nx-a: 1\r\nte: gzip, trailers",
                vec!["host: h", "te: trailers"],
            ),
            // Envoy matches `trailers` exactly: a parameter or another case removes `te`, and
            // an empty `te` stays (Envoy 1.40, docs/envoy-behaviour.md section 3e).
            ("te: trailers;q=1", vec!["host: h"]),
            ("te: Trailers", vec!["host: h"]),
            ("te: x, , trailers", vec!["host: h", "te: trailers"]),
            ("te: \r\nte: gzip", vec!["host: h"]),
            ("te: ", vec!["host: h", "te: "]),
        ] {
            let mut h = req(&format!("GET / HTTP/1.1\r\nhost: h\r\n{wire}\r\n\r\n")).headers;
            let conn = ConnectionTokens::of(&h);
            strip_hop_by_hop(&mut h, conn);
            let got: Vec<String> = h
                .iter()
                .map(|(n, v)| {
                    format!(
                        "{}: {}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect();
            assert_eq!(got, want, "{wire:?}");
        }
    }

    #[test]
    fn response_framing_refuses_ambiguous_lengths() {
        let resp = |wire: &str| {
            crate::http1::head::parse_response(&mut BytesMut::from(wire.as_bytes()), 65536)
                .unwrap()
                .unwrap()
        };
        let cases: &[(&str, bool, Result<Framing, FramingError>)] = &[
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
                false,
                Ok(Framing::Length(2)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 7\r\n\r\n",
                false,
                Err(FramingError::BadRequest),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
                false,
                Err(FramingError::BadRequest),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                Ok(Framing::Chunked),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Ok(Framing::Close)),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
                true,
                Ok(Framing::Empty),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false,
                Ok(Framing::Empty),
            ),
        ];
        for (wire, head, want) in cases {
            let r = resp(wire);
            assert_eq!(
                response_framing(*head, r.status, &r.headers),
                *want,
                "{wire:?}"
            );
        }
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |minor: u8, wire: &str| ConnectionTokens::of(&req(wire).headers).keep_alive(minor);
        assert!(ka(1, "GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(1, "GET / HTTP/1.1\r\nconnection: close\r\n\r\n"));
        assert!(!ka(1, "GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n"));
        assert!(!ka(1, "GET / HTTP/1.1\r\nconnection: x-a, Close\r\n\r\n"));
        assert!(!ka(
            1,
            "GET / HTTP/1.1\r\nconnection: keep-alive\r\nconnection: close\r\n\r\n"
        ));
        assert!(!ka(0, "GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(0, "GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"));
        assert!(ka(
            0,
            "GET / HTTP/1.0\r\nconnection: x-a ,Keep-Alive\r\n\r\n"
        ));
        assert!(!ka(
            0,
            "GET / HTTP/1.0\r\nconnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn connection_tokens_upgrade_and_host() {
        let of = |wire: &str| {
            let h = req(wire).headers;
            let t = ConnectionTokens::of(&h);
            (t.is_upgrade(&h), t.names_host())
        };
        let up = "GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
        assert_eq!(of(up), (true, false));
        // `connection: upgrade` without an `upgrade` header is no upgrade.
        assert_eq!(
            of("GET / HTTP/1.1\r\nconnection: upgrade\r\n\r\n"),
            (false, false)
        );
        assert_eq!(of("GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n"), (false, false));
        assert_eq!(
            of("GET / HTTP/1.1\r\nconnection: keep-alive,  HOST \r\n\r\n"),
            (false, true)
        );
        assert_eq!(
            of("GET / HTTP/1.1\r\nconnection: hosts\r\n\r\n"),
            (false, false)
        );
    }
}
