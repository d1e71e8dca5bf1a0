//! What Envoy accepts in a request line and `Host`: its codec's method list, the request-target
//! forms, and the characters an authority may hold. Recorded from Envoy 1.40
//! (docs/envoy-behaviour.md, section 7) and pinned by tests/dataplane/test_request_line.py.

use super::head::RequestHead;

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Refused by Envoy's codec: `400 Bad Request` with its text body, counted as a downstream
    /// protocol error.
    BadRequest,
    /// Refused by Envoy's connection manager after the codec took it: `400` with no body.
    Rejected,
    /// A target with a fragment (`#`): refused by the connection manager's path rules, as
    /// `Rejected`, and counted as `downstream_rq_failed_path_normalization`.
    Fragment,
    /// A well-formed `CONNECT host:port`. Envoy routes CONNECT only through `connect_matcher`
    /// routes, which the config does not support, so no route matches: `404` and close.
    ConnectNotRouted,
}

/// The methods Envoy 1.40's HTTP/1 codec accepts (without `allow_custom_methods`), exactly as
/// spelt: upper-case, and `MSEARCH` without the dash that UPnP's `M-SEARCH` has.
const METHODS: [&[u8]; 35] = [
    b"ACL",
    b"BIND",
    b"CHECKOUT",
    b"CONNECT",
    b"COPY",
    b"DELETE",
    b"GET",
    b"HEAD",
    b"LINK",
    b"LOCK",
    b"MERGE",
    b"MKACTIVITY",
    b"MKCALENDAR",
    b"MKCOL",
    b"MOVE",
    b"MSEARCH",
    b"NOTIFY",
    b"OPTIONS",
    b"PATCH",
    b"POST",
    b"PROPFIND",
    b"PROPPATCH",
    b"PURGE",
    b"PUT",
    b"QUERY",
    b"REBIND",
    b"REPORT",
    b"SEARCH",
    b"SOURCE",
    b"SUBSCRIBE",
    b"TRACE",
    b"UNBIND",
    b"UNLINK",
    b"UNLOCK",
    b"UNSUBSCRIBE",
];

/// Whether Envoy's codec knows the method.
#[inline]
pub fn known_method(m: &[u8]) -> bool {
    matches!(m, b"GET" | b"POST" | b"HEAD" | b"PUT" | b"DELETE") || METHODS.contains(&m)
}

/// What [`check_line`] saw of the target, for [`check_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    fragment: bool,
}

/// Checks the request line as Envoy's codec does as soon as it has read it, before the headers:
/// a known method and a target its URL check takes (origin form or `*`, or `scheme://`, an
/// authority of URL characters and a path; for CONNECT an authority and a path), of visible
/// ASCII only.
pub fn check_line(h: &RequestHead) -> Result<Line, Refusal> {
    if !known_method(h.method()) {
        return Err(Refusal::BadRequest);
    }
    let t = h.target();
    let path = match t.first() {
        Some(b'/' | b'*') => t,
        _ => {
            let mut rest = t;
            if h.method() != b"CONNECT" {
                let scheme = t
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
                    .count();
                if scheme == 0 || !t[0].is_ascii_alphabetic() {
                    return Err(Refusal::BadRequest);
                }
                let Some(after) = t[scheme..].strip_prefix(b"://") else {
                    return Err(Refusal::BadRequest);
                };
                rest = after;
            }
            let end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let host = &rest[..end];
            // The URL parser takes the characters a `host` value may hold, `@` never twice in a
            // row.
            let host_ok = authority_chars(host) && !host.windows(2).any(|w| w == b"@@");
            if !host_ok {
                return Err(Refusal::BadRequest);
            }
            &rest[end..]
        }
    };
    // The parser let through visible ASCII and bytes of 0x80 and up; Envoy takes only the
    // former. One pass without early exit, which the compiler vectorises.
    let (high, hash) = path
        .iter()
        .fold((0u8, false), |(h, f), &b| (h | b, f | (b == b'#')));
    if high >= 0x80 || t.is_empty() {
        return Err(Refusal::BadRequest);
    }
    Ok(Line { fragment: hash })
}

/// Checks the target's form as Envoy's codec does once the headers and their framing are
/// read, before the version: `*` only for OPTIONS, an absolute URI only `http` or `https` with
/// an authority its URL parser takes, CONNECT only to `host:port`. What the codec takes, its
/// connection manager may still refuse: that comes back as `Ok(Err(..))`, to be answered after
/// the codec's last checks ([`check_hosts`], version) and the `100 Continue`.
pub fn check_target(h: &RequestHead, line: Line) -> Result<Result<(), Refusal>, Refusal> {
    let (method, target) = (h.method(), h.target());
    if method == b"CONNECT" {
        return if authority_form(target) {
            Ok(Err(Refusal::ConnectNotRouted))
        } else {
            Err(Refusal::BadRequest)
        };
    }
    match target.first() {
        Some(b'/') => {}
        // `OPTIONS *` (and only OPTIONS) may name the server rather than a path.
        Some(b'*') if method == b"OPTIONS" => {}
        _ if !absolute_form(target) => return Err(Refusal::BadRequest),
        _ => {}
    }
    Ok(if line.fragment {
        Err(Refusal::Fragment)
    } else if method == b"QUERY" {
        Err(Refusal::Rejected)
    } else {
        Ok(())
    })
}

/// Checks the `host` values as Envoy's codec does: only authority characters. Returns whether
/// there are several (Envoy routes and forwards their values joined by `,`).
pub fn check_hosts(h: &RequestHead) -> Result<bool, Refusal> {
    let mut hosts = 0u32;
    for v in h.headers.get_all(b"host") {
        if !authority_chars(v) {
            return Err(Refusal::BadRequest);
        }
        hosts += 1;
    }
    Ok(hosts > 1)
}

/// Bytes a `host` value may hold (Envoy checks it with nghttp2's authority rules): letters,
/// digits, `-._~`, `!$&'()*+,;=`, and `:@%[]`.
static AUTHORITY_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'%'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

/// Whether every byte of `v` may be in a `host` value. Without early exit, so the compiler
/// unrolls it into table loads and `and`s: a branch per byte cost ~10 instructions a byte.
#[inline]
fn authority_chars(v: &[u8]) -> bool {
    v.iter()
        .fold(true, |ok, &b| ok & AUTHORITY_CHARS[b as usize])
}

/// `http://` or `https://` (any case), an authority Envoy's URL parser takes, then nothing or
/// a path or query. Other schemes are refused.
fn absolute_form(t: &[u8]) -> bool {
    let rest = if t.len() >= 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        &t[7..]
    } else if t.len() >= 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        &t[8..]
    } else {
        return false;
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    url_authority(&rest[..end], false)
}

/// `host:port` with a port, as CONNECT must name.
fn authority_form(t: &[u8]) -> bool {
    url_authority(t, true)
}

/// An authority as Envoy's URL parser takes it: optional `userinfo@` (not with `need_port`), a
/// host of letters, digits, `-` and `.` or a bracketed IPv6 address, and an optional `:port` of
/// one or more digits (required with `need_port`).
fn url_authority(a: &[u8], need_port: bool) -> bool {
    let hostport = match memchr::memchr(b'@', a) {
        Some(i) => {
            let user = &a[..i];
            let ok = user
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:".contains(&b));
            if !ok || need_port {
                return false;
            }
            &a[i + 1..]
        }
        None => a,
    };
    let (host, port) = if hostport.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', hostport) else {
            return false;
        };
        let inner = &hostport[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&hostport[..=close], &hostport[close + 1..])
    } else {
        let end = memchr::memchr(b':', hostport).unwrap_or(hostport.len());
        let host = &hostport[..end];
        if !host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return false;
        }
        (host, &hostport[end..])
    };
    if host.is_empty() {
        return false;
    }
    match port {
        [] => !need_port,
        [b':', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::parse_request;
    use bytes::BytesMut;

    /// The checks' verdict in Envoy's order (the codec's line and host checks, then the
    /// connection manager's); a head the parser already refuses reads as the codec's refusal.
    fn check(line: &str, host: &str) -> Result<bool, Refusal> {
        let wire = format!("{line}\r\nhost: {host}\r\n\r\n");
        let h = match parse_request(&mut BytesMut::from(wire.as_bytes()), 65536) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("{line}: incomplete"),
            Err(_) => return Err(Refusal::BadRequest),
        };
        let line = check_line(&h)?;
        let later = check_target(&h, line)?;
        let several = check_hosts(&h)?;
        later.map(|()| several)
    }

    #[test]
    fn methods_are_envoys_list_exactly() {
        for m in METHODS {
            let line = format!("{} / HTTP/1.1", String::from_utf8_lossy(m));
            let want = if m == b"CONNECT" {
                Err(Refusal::BadRequest) // `/` is no authority
            } else if m == b"QUERY" {
                Err(Refusal::Rejected)
            } else {
                Ok(false)
            };
            assert_eq!(check(&line, "a"), want, "{line}");
        }
        for m in ["get", "Get", "FOO", "M-SEARCH", "PRI", "GETX"] {
            assert_eq!(
                check(&format!("{m} / HTTP/1.1"), "a"),
                Err(Refusal::BadRequest),
                "{m}"
            );
        }
    }

    #[test]
    fn target_forms() {
        let ok = Ok(false);
        for t in [
            "/",
            "/a?b",
            "http://x",
            "HTTP://x/",
            "https://x/y",
            "http://x?y",
            "http://-a/",
            "http://x@y/",
            "http://[::1]/",
            "http://u:p@a/",
            "http://a:80/",
            "//double",
        ] {
            assert_eq!(check(&format!("GET {t} HTTP/1.1"), "a"), ok, "{t}");
        }
        for t in [
            "*",
            "*x",
            "x",
            "example.com:443",
            "?q",
            "ws://x/",
            "h://x/",
            "http:/x",
            "http://",
            "http:///x",
            "http://a_b/",
            "http://a%41/",
            "http://a!b/",
            "http://a,b/",
            "http://a:b:c/",
            "http://a@@b/",
            "http://a@b@c/",
            "http://a:/",
            "http://:80/",
            "http://[zz]/",
            "http://[::1/",
            "/\u{e9}",
            "/a\u{7f}",
        ] {
            assert_eq!(
                check(&format!("GET {t} HTTP/1.1"), "a"),
                Err(Refusal::BadRequest),
                "{t}"
            );
        }
        for t in ["/a#", "/#", "/a?b#c", "http://x/a#b"] {
            assert_eq!(
                check(&format!("GET {t} HTTP/1.1"), "a"),
                Err(Refusal::Fragment),
                "{t}"
            );
        }
        assert_eq!(check("QUERY /a HTTP/1.1", "a"), Err(Refusal::Rejected));
        assert_eq!(check("OPTIONS * HTTP/1.1", "a"), ok);
        assert_eq!(check("OPTIONS *x HTTP/1.1", "a"), ok);
        assert_eq!(check("POST * HTTP/1.1", "a"), Err(Refusal::BadRequest));
    }

    #[test]
    fn connect_needs_host_and_port() {
        for t in ["example.com:443", "[::1]:443", "a:1"] {
            assert_eq!(
                check(&format!("CONNECT {t} HTTP/1.1"), "a"),
                Err(Refusal::ConnectNotRouted),
                "{t}"
            );
        }
        for t in [
            "/",
            "*",
            "example.com",
            "http://example.com/",
            "a:",
            "u@a:1",
            ":443",
        ] {
            assert_eq!(
                check(&format!("CONNECT {t} HTTP/1.1"), "a"),
                Err(Refusal::BadRequest),
                "{t}"
            );
        }
    }

    #[test]
    fn host_characters() {
        for h in [
            "a,b",
            "example.com:abc",
            "[::1]:80",
            "a@b",
            "",
            "a%41b",
            "a_b",
            "a:1:2",
            "A.B",
            "a;b=c",
            "a(b)*+!$&'~",
        ] {
            assert!(check("GET / HTTP/1.1", h).is_ok(), "{h:?}");
        }
        for h in [
            "a/b", "a?b", "a#b", "a\\b", "a\"b", "a{b", "a|b", "a^b", "a<b", "a\tb", "a b",
            "a\u{80}b",
        ] {
            assert_eq!(
                check("GET / HTTP/1.1", h),
                Err(Refusal::BadRequest),
                "{h:?}"
            );
        }
        let wire = b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n";
        let h = parse_request(&mut BytesMut::from(&wire[..]), 65536)
            .unwrap()
            .unwrap();
        assert_eq!(check_hosts(&h), Ok(true));
    }
}
