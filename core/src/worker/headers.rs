//! Envoy's header rules for proxied messages: what the connection manager and router add,
//! rewrite and strip on the way up, what they set on the way down, and where a redirect goes.
//! Every rule here was recorded from Envoy 1.40 (docs/envoy-behaviour.md) and is pinned by
//! tests/dataplane/test_headers.py.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use super::ctx::{Ctx, ListenerRt};
use crate::http1::codec::{strip_for_upgrade, strip_hop_by_hop, ConnectionTokens};
use crate::http1::head::{known, HeaderMap};
use crate::router::{Cx, Forward, Mutations, Redirect};

/// `x-envoy-*` request headers Envoy removes from every request: controls a client must not
/// be able to set (docs/envoy-behaviour.md, section 2b).
const ENVOY_CONTROL_HEADERS: [&[u8]; 12] = [
    b"x-envoy-retry-on",
    b"x-envoy-retry-grpc-on",
    b"x-envoy-max-retries",
    b"x-envoy-retriable-status-codes",
    b"x-envoy-retriable-header-names",
    b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-hedge-on-per-try-timeout",
    b"x-envoy-upstream-alt-stat-name",
    b"x-envoy-internal",
    b"x-envoy-force-trace",
    b"x-envoy-ip-tags",
];

/// Removed in addition from edge requests (`use_remote_address`).
const ENVOY_EDGE_HEADERS: [&[u8]; 4] = [
    b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node",
    b"x-envoy-original-path",
    b"x-envoy-decorator-operation",
];

/// A random UUID v4 in its 36-character text form (Envoy's `x-request-id`).
pub fn uuid4() -> [u8; 36] {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = hex[(x >> 4) as usize];
        out[j + 1] = hex[(x & 0xf) as usize];
        j += 2;
    }
    out
}

/// The first non-loopback address of this host in the peer's family: what Envoy appends to
/// `x-forwarded-for` for a loopback client under `use_remote_address`.
fn local_address(v4: bool) -> Option<IpAddr> {
    static CACHE: OnceLock<(Option<IpAddr>, Option<IpAddr>)> = OnceLock::new();
    let (a4, a6) = *CACHE.get_or_init(|| {
        let mut v4 = None;
        let mut v6 = None;
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `ifap` with a list we only read and then free once.
        unsafe {
            if libc::getifaddrs(&mut ifap) == 0 {
                let mut p = ifap;
                while !p.is_null() {
                    let a = (*p).ifa_addr;
                    if !a.is_null() {
                        match i32::from((*a).sa_family) {
                            libc::AF_INET if v4.is_none() => {
                                let sin = &*(a as *const libc::sockaddr_in);
                                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                                if !ip.is_loopback() {
                                    v4 = Some(IpAddr::V4(ip));
                                }
                            }
                            libc::AF_INET6 if v6.is_none() => {
                                let sin6 = &*(a as *const libc::sockaddr_in6);
                                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                                if !ip.is_loopback() {
                                    v6 = Some(IpAddr::V6(ip));
                                }
                            }
                            _ => {}
                        }
                    }
                    p = (*p).ifa_next;
                }
                libc::freeifaddrs(ifap);
            }
        }
        (v4, v6)
    });
    if v4 {
        a4
    } else {
        a6
    }
}

/// Adds and rewrites the proxy's own request headers as Envoy's connection manager does
/// before routing (docs/envoy-behaviour.md, sections 1 and 2), in-place edits and order
/// included: hop-by-hop and control headers stripped; `x-forwarded-for`, `x-forwarded-proto`,
/// `x-envoy-external-address`, `x-request-id`. Routes match on the headers as these leave
/// them, as in Envoy. `conn` is what the request's `connection` header said, read when the
/// request was checked; `upgrade`: the request asks for an upgrade (its `connection` and
/// `upgrade` stay).
pub fn mutate_request(
    l: &ListenerRt,
    peer: SocketAddr,
    h: &mut HeaderMap,
    conn: ConnectionTokens,
    upgrade: bool,
) {
    let hcm = &l.c.cfg.hcm;
    let edge = hcm.use_remote_address;
    if upgrade {
        strip_for_upgrade(h);
    } else {
        strip_hop_by_hop(h, conn);
    }
    if h.may_have_any(known::X_ENVOY) {
        h.remove_if(|n, _| {
            // The router sets its own expected-timeout header, appended last.
            n == b"x-envoy-expected-rq-timeout-ms"
                || n.starts_with(b"x-envoy-")
                    && (ENVOY_CONTROL_HEADERS.contains(&n)
                        || (edge && ENVOY_EDGE_HEADERS.contains(&n)))
        });
    }
    // Envoy's `forward_client_cert_details` default, SANITIZE (the only mode taken): a
    // client certificate's details come from the proxy's own TLS handshake, never from the
    // client, so a client's `x-forwarded-client-cert` is dropped.
    if h.may_have_any(known::X_FORWARDED_CLIENT_CERT) {
        h.remove_known(known::X_FORWARDED_CLIENT_CERT);
    }
    if edge {
        let peer = peer.ip();
        if !hcm.skip_xff_append {
            let appended = if peer.is_loopback() {
                local_address(peer.is_ipv4()).unwrap_or(peer)
            } else {
                peer
            };
            let ip = appended.to_string();
            match h.get(b"x-forwarded-for") {
                Some(v) => {
                    let mut nv = v.to_vec();
                    nv.push(b',');
                    nv.extend_from_slice(ip.as_bytes());
                    h.set(b"x-forwarded-for", &nv);
                }
                None => h.append(b"x-forwarded-for", ip.as_bytes()),
            }
        }
        let hops = hcm.xff_num_trusted_hops as usize;
        let external = match (hops, h.get(b"x-forwarded-for")) {
            (0, _) | (_, None) => peer.to_string().into_bytes(),
            (_, Some(xff)) => {
                let entries: Vec<&[u8]> =
                    xff.split(|b| *b == b',').map(<[u8]>::trim_ascii).collect();
                if !hcm.skip_xff_append && entries.len() > hops {
                    entries[entries.len() - 1 - hops].to_vec()
                } else {
                    peer.to_string().into_bytes()
                }
            }
        };
        if hops == 0 || !h.contains(b"x-forwarded-proto") {
            h.set(b"x-forwarded-proto", b"http");
        }
        if !hcm.via.is_empty() {
            append_via(h, hcm.via.as_bytes());
        }
        h.set(b"x-envoy-external-address", &external);
        if hcm.generate_request_id {
            if !hcm.preserve_external_request_id {
                h.set(b"x-request-id", &uuid4());
            } else if !h.contains(b"x-request-id") {
                h.append(b"x-request-id", &uuid4());
            }
        }
    } else {
        if !h.contains(b"x-forwarded-proto") {
            h.append(b"x-forwarded-proto", b"http");
        }
        if !hcm.via.is_empty() {
            append_via(h, hcm.via.as_bytes());
        }
        if hcm.generate_request_id && !h.contains(b"x-request-id") {
            h.append(b"x-request-id", &uuid4());
        }
    }
}

/// The connection manager's `via`, added to a request's or a response's: after the value it
/// has (several `via` headers joined by `,` first, as Envoy's codec joins them), with `, `;
/// else a header of its own, last.
#[cold]
#[inline(never)]
pub fn append_via(h: &mut HeaderMap, via: &[u8]) {
    h.join_all(b"via");
    match h.get(b"via") {
        Some(v) if !v.is_empty() => {
            let mut v = v.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(via);
            h.set(b"via", &v);
        }
        _ => h.set(b"via", via),
    }
}

/// The router's own request headers, after the connection manager's: the time the upstream
/// has in `x-envoy-expected-rq-timeout-ms` (the route timeout, or the retry policy's per-try
/// timeout if shorter), appended last, then `x-envoy-attempt-count` for the try `attempt`
/// when the virtual host asks for it. `left_ms`: what a try after the first has left of the
/// route timeout (the header then says at most that).
#[inline]
pub fn router_request_headers(
    l: &ListenerRt,
    h: &mut HeaderMap,
    fwd: &Forward,
    attempt: u32,
    left_ms: Option<u64>,
) {
    if !l.c.cfg.hcm.suppress_envoy_headers && !fwd.timeout_header.is_empty() {
        match left_ms {
            None => h.append(b"x-envoy-expected-rq-timeout-ms", &fwd.timeout_header),
            Some(left) => {
                let ms = fwd.expected_timeout_ms.min(left);
                h.append(
                    b"x-envoy-expected-rq-timeout-ms",
                    itoa::Buffer::new().format(ms).as_bytes(),
                );
            }
        }
    }
    if fwd.attempt_count_up {
        set_attempt_count(h, attempt);
    }
}

/// The target after `prefix_rewrite`, or `None` when the route does not rewrite it.
/// `route_prefix_len`: what the rewrite replaces ([`crate::router::Route::prefix_len`]).
pub fn rewrite_target(fwd: &Forward, route_prefix_len: usize, target: &[u8]) -> Option<Vec<u8>> {
    if let Some(rw) = &fwd.regex_rewrite {
        return regex_rewrite(rw, target);
    }
    match &fwd.prefix_rewrite {
        Some(p) if target.len() >= route_prefix_len => {
            Some(replace_prefix(p, route_prefix_len, target))
        }
        _ => None,
    }
}

/// A route's `regex_rewrite` of the path, the query kept as it was (Envoy's); `None` when the
/// rewritten path would be empty.
#[cold]
#[inline(never)]
fn regex_rewrite(rw: &crate::router::matcher::PathRewrite, target: &[u8]) -> Option<Vec<u8>> {
    let q = memchr::memchr(b'?', target).unwrap_or(target.len());
    let mut out = rw.apply(&target[..q])?;
    out.extend_from_slice(&target[q..]);
    Some(out)
}

/// `rewrite` followed by what `target` has after its first `n` bytes (a forwarded route's or a
/// redirect's `prefix_rewrite`).
fn replace_prefix(rewrite: &[u8], n: usize, target: &[u8]) -> Vec<u8> {
    let rest = &target[n.min(target.len())..];
    let mut out = Vec::with_capacity(rewrite.len() + rest.len());
    out.extend_from_slice(rewrite);
    out.extend_from_slice(rest);
    out
}

/// Response headers the proxy sets, in Envoy's order: `x-envoy-upstream-service-time`
/// appended (`service_ms`: none when the request had not all gone upstream, as Envoy sets it
/// only then), the configured response edits, then `date` if absent and `server` per
/// `server_header_transformation`: under `OVERWRITE` an upstream `server` is replaced in place
/// (a configured one too; the edits only remove and append, so replacing it once, last, gives
/// the same head as replacing it before them as well).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn apply_response_extras(
    ctx: &Ctx,
    l: &ListenerRt,
    h: &mut HeaderMap,
    service_ms: Option<u64>,
    set_cookie: Option<&[u8]>,
    chain: &[&Mutations; 4],
    cx: &Cx<'_>,
    attempt: u32,
) {
    let hcm = &l.c.cfg.hcm;
    let transformation = hcm.server_header_transformation.as_str();
    if let (false, Some(ms)) = (hcm.suppress_envoy_headers, service_ms) {
        h.set(
            b"x-envoy-upstream-service-time",
            itoa::Buffer::new().format(ms).as_bytes(),
        );
    }
    // The router's own, before the edits (Envoy): a cookie a `hash_policy` made up.
    if let Some(c) = set_cookie {
        h.append(b"set-cookie", c);
    }
    for m in chain {
        m.apply_response(h, cx);
    }
    // The router's last (`include_attempt_count_in_response`).
    if attempt > 0 {
        set_attempt_count(h, attempt);
    }
    if !h.contains(b"date") {
        h.append(b"date", &ctx.date());
    }
    match transformation {
        "PASS_THROUGH" => {}
        "APPEND_IF_ABSENT" if h.contains(b"server") => {}
        _ => h.set(b"server", &l.c.server_name),
    }
}

/// `x-envoy-attempt-count`: the request's tries so far (on a try's head, or a response).
#[cold]
#[inline(never)]
pub fn set_attempt_count(h: &mut HeaderMap, attempt: u32) {
    h.set(
        b"x-envoy-attempt-count",
        itoa::Buffer::new().format(attempt).as_bytes(),
    );
}

/// The `location` of a redirect, as Envoy 1.40 builds it (`Http::Utility::newUri`):
/// - the scheme: the redirect's, else the request's `:scheme` (`scheme`);
/// - the host: `host_redirect` as configured (its port too), else the request's `host`, whose
///   port is dropped when there is a `port_redirect`, or when the new scheme differs from the
///   request's `x-forwarded-proto` (`forwarded_proto`) and the port is that protocol's default
///   (`:80` for http, `:443` for https): `http://h:80` redirected to https becomes `https://h`;
/// - then `:port_redirect`, if set (appended even to a `host_redirect` that has a port);
/// - then the path (`path_redirect`, `prefix_rewrite` of the first `prefix_len` bytes, or the
///   original), with a `/` put in front if it lacks one, and the request's query unless
///   `strip_query` (or the new path brings its own query, which is never stripped).
pub fn redirect_location(
    r: &Redirect,
    prefix_len: usize,
    host: &[u8],
    target: &[u8],
    scheme: &[u8],
    forwarded_proto: &[u8],
) -> Vec<u8> {
    let c = &r.cfg;
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, &b""[..]),
    };
    let mut out = Vec::with_capacity(16 + host.len() + target.len());
    let scheme = c.scheme_redirect.as_deref().map_or(scheme, str::as_bytes);
    out.extend_from_slice(scheme);
    out.extend_from_slice(b"://");
    match &c.host_redirect {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.extend_from_slice(request_host(
            host,
            scheme,
            c.port_redirect.is_some(),
            forwarded_proto,
        )),
    }
    if let Some(p) = c.port_redirect {
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(p).as_bytes());
    }
    let path_at = out.len();
    let query_in_path = match (&c.path_redirect, &c.prefix_rewrite) {
        (Some(p), _) => {
            out.extend_from_slice(p.as_bytes());
            p.contains('?')
        }
        (None, Some(p)) => {
            out.extend_from_slice(&replace_prefix(p.as_bytes(), prefix_len, path));
            false
        }
        (None, None) => {
            out.extend_from_slice(path);
            false
        }
    };
    if out.get(path_at) != Some(&b'/') {
        out.insert(path_at, b'/');
    }
    if !c.strip_query && !query_in_path {
        out.extend_from_slice(query);
    }
    out
}

/// The request target after a redirect's `prefix_rewrite` (`None`: none), which Envoy writes
/// into the request's `:path` before the redirect's edits run: the first `prefix_len` bytes
/// replaced, query and all.
pub fn redirect_rewritten_target(
    r: &Redirect,
    prefix_len: usize,
    target: &[u8],
) -> Option<Vec<u8>> {
    let p = r.cfg.prefix_rewrite.as_deref()?;
    Some(replace_prefix(p.as_bytes(), prefix_len, target))
}

/// The `location` of a direct response of 201 or 3xx (Envoy's `newUri` with no redirect): the
/// request's scheme, its host (see [`redirect_location`] for when the port goes) and target.
pub fn request_location(
    host: &[u8],
    target: &[u8],
    scheme: &[u8],
    forwarded_proto: &[u8],
) -> Vec<u8> {
    let host = request_host(host, scheme, false, forwarded_proto);
    let mut out = Vec::with_capacity(scheme.len() + 4 + host.len() + target.len());
    out.extend_from_slice(scheme);
    out.extend_from_slice(b"://");
    out.extend_from_slice(host);
    if target.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out
}

/// Envoy's `processRequestHost`: the request's host for a redirect's location, without its
/// port when a new port comes (`new_port`) or when the port is the default of the request's
/// protocol (`x-forwarded-proto`) and the redirect changes the scheme.
fn request_host<'a>(
    host: &'a [u8],
    new_scheme: &[u8],
    new_port: bool,
    forwarded_proto: &[u8],
) -> &'a [u8] {
    let port_at = if host.first() == Some(&b'[') {
        // An IPv6 literal: only a colon after the closing bracket starts a port.
        memchr::memmem::rfind(host, b"]:").map(|i| i + 1)
    } else {
        memchr::memrchr(b':', host)
    };
    let Some(i) = port_at else { return host };
    let port = &host[i..];
    let remove = new_port
        || (new_scheme != forwarded_proto
            && ((forwarded_proto.eq_ignore_ascii_case(b"https") && port == b":443")
                || (forwarded_proto.eq_ignore_ascii_case(b"http") && port == b":80")));
    if remove {
        &host[..i]
    } else {
        host
    }
}
