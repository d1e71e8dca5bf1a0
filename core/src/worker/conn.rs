//! One downstream HTTP/1.1 connection: read a request head, route it, exchange it with an
//! upstream (request body and response streamed concurrently through bounded buffers), write
//! the response, repeat while keep-alive holds.
//!
//! Between requests a connection holds no read buffer: it waits for readability first and
//! allocates only when bytes arrive. The per-request state lives in a boxed future
//! (`Box::pin(request(..))`) so the long-lived connection future stays small.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::ctx::{Ctx, ListenerRt, WorkerSnap};
use crate::http1::body::{encode_chunk, Decoded, Decoder, Framing, LAST_CHUNK};
use crate::http1::codec::{
    is_upgrade, keep_alive, method_has_no_body, request_framing, response_framing,
    strip_hop_by_hop, write_framing, write_status_line, FramingError,
};
use crate::http1::head::{parse_request, parse_response, HeadError, HeaderMap, RequestHead};
use crate::router::{Action, Forward, Mutations, Redirect};
use crate::upstream::pool::UpConn;
use crate::upstream::{ClusterRt, CxGuard, HostRt};

/// Read size for heads and bodies. Bodies move in pieces of at most this size, so a
/// connection's buffering is bounded whatever the body length.
const READ_CHUNK: usize = 16 * 1024;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 96 * 1024;

/// What to do with the downstream connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

struct Down {
    stream: TcpStream,
    rbuf: BytesMut,
    peer: SocketAddr,
    /// HCM `request_timeout`: when the current request must have been fully received.
    request_deadline: Option<tokio::time::Instant>,
    /// Whether the current request is a HEAD (local replies then carry no body).
    head_request: bool,
}

/// Counts a downstream connection open for as long as it lives.
struct DownGuard {
    l: Rc<ListenerRt>,
    ctx: Rc<Ctx>,
    start: Instant,
}

impl DownGuard {
    fn new(ctx: Rc<Ctx>, l: Rc<ListenerRt>) -> DownGuard {
        l.stats.downstream_cx_total.inc();
        l.stats.downstream_cx_active.inc();
        l.worker.downstream_cx_total.inc();
        l.worker.downstream_cx_active.inc();
        l.http.downstream_cx_total.inc();
        l.http.downstream_cx_http1_total.inc();
        l.http.downstream_cx_active.inc();
        l.http.downstream_cx_http1_active.inc();
        let a = &ctx.shared.active_connections;
        a.store(
            a.load(std::sync::atomic::Ordering::Relaxed) + 1,
            std::sync::atomic::Ordering::Relaxed,
        );
        DownGuard {
            l,
            ctx,
            start: Instant::now(),
        }
    }
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        let l = &self.l;
        l.stats.downstream_cx_active.dec();
        l.stats.downstream_cx_destroy.inc();
        l.worker.downstream_cx_active.dec();
        l.stats.downstream_cx_length_ms.record_ms(self.start);
        l.http.downstream_cx_active.dec();
        l.http.downstream_cx_http1_active.dec();
        l.http.downstream_cx_destroy.inc();
        l.http.downstream_cx_length_ms.record_ms(self.start);
        let a = &self.ctx.shared.active_connections;
        a.store(
            a.load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

async fn sleep_ms(ms: u64) {
    if ms == 0 {
        std::future::pending::<()>().await;
    } else {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(ctx: Rc<Ctx>, lname: Arc<str>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(l) = ctx.current().listeners.get(&lname).cloned() else {
        return;
    };
    let _guard = DownGuard::new(ctx.clone(), l);
    let mut d = Down {
        stream,
        rbuf: BytesMut::new(),
        peer,
        request_deadline: None,
        head_request: false,
    };
    loop {
        let snap = ctx.current();
        let Some(l) = snap.listeners.get(&lname).cloned() else {
            // The listener was removed by a new snapshot: finish here.
            break;
        };
        if d.rbuf.is_empty() {
            // Idle between requests: no buffer held, woken by data, drain or idle timeout.
            d.rbuf = BytesMut::new();
            let ready = tokio::select! {
                r = d.stream.readable() => r.is_ok(),
                _ = ctx.drain_notify.notified() => false,
                _ = sleep_ms(l.c.cfg.hcm.idle_timeout_ms) => {
                    l.http.downstream_cx_idle_timeout.inc();
                    false
                }
            };
            if !ready || ctx.draining() {
                break;
            }
        }
        let next = Box::pin(request(&ctx, &snap, &l, &mut d)).await;
        if next == Next::Close || ctx.draining() {
            break;
        }
    }
    let _ = d.stream.shutdown().await;
}

enum ReadErr {
    Closed,
    Timeout,
}

/// Whether a head that failed to parse names an HTTP version other than 1.0 and 1.1
/// (`GET / HTTP/9.9`): Envoy answers those 426, not 400.
fn unsupported_version(buf: &[u8]) -> bool {
    let line_end = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let Some(sp) = memchr::memrchr(b' ', line) else {
        return false;
    };
    let v = &line[sp + 1..];
    v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
        && v[7].is_ascii_digit()
        && v != b"HTTP/1.1"
        && v != b"HTTP/1.0"
}

/// Reads at most `max` more bytes into `buf`, waiting at most `idle_ms` (0: no limit).
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    idle_ms: u64,
    max: usize,
) -> Result<usize, ReadErr> {
    buf.reserve(max);
    let mut limited = (&mut *buf).limit(max);
    let fut = r.read_buf(&mut limited);
    let res = if idle_ms == 0 {
        fut.await
    } else {
        match timeout(Duration::from_millis(idle_ms), fut).await {
            Ok(r) => r,
            Err(_) => return Err(ReadErr::Timeout),
        }
    };
    match res {
        Ok(0) | Err(_) => Err(ReadErr::Closed),
        Ok(n) => Ok(n),
    }
}

/// Reads, routes and answers one request.
async fn request(ctx: &Rc<Ctx>, snap: &Rc<WorkerSnap>, l: &Rc<ListenerRt>, d: &mut Down) -> Next {
    let hcm = &l.c.cfg.hcm;
    let max_head = hcm.max_request_headers_kb as usize * 1024;
    let header_deadline = (hcm.request_headers_timeout_ms > 0)
        .then(|| Instant::now() + Duration::from_millis(hcm.request_headers_timeout_ms));
    let head = loop {
        match parse_request(&mut d.rbuf, max_head) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => {
                l.http.downstream_cx_protocol_error.inc();
                l.http.downstream_rq_total.inc();
                let (status, body): (u16, &[u8]) = match e {
                    HeadError::Malformed if unsupported_version(&d.rbuf) => {
                        (426, b"Upgrade Required")
                    }
                    HeadError::Malformed => (400, b"Bad Request"),
                    HeadError::TooLarge => (431, b"Request Header Fields Too Large"),
                };
                l.http.count_response(status);
                let out = local_reply(ctx, l, status, body, true, None, false);
                let _ = d.stream.write_all(&out).await;
                return Next::Close;
            }
        }
        let idle = hcm.stream_idle_timeout_ms;
        // Which timer ends this wait decides the reply: request_headers_timeout or stream idle.
        let (wait, header_timer) = match header_deadline {
            Some(dl) => {
                let left = dl
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1) as u64;
                if idle > 0 && idle < left {
                    (idle, false)
                } else {
                    (left, true)
                }
            }
            None => (idle, false),
        };
        match read_more(&mut d.stream, &mut d.rbuf, wait, READ_CHUNK).await {
            Ok(_) => {}
            Err(ReadErr::Closed) => return Next::Close,
            Err(ReadErr::Timeout) => {
                let body: &[u8] = if header_timer {
                    l.http.downstream_rq_header_timeout.inc();
                    b"request header timeout"
                } else {
                    l.http.downstream_rq_idle_timeout.inc();
                    b"stream timeout"
                };
                l.http.downstream_rq_total.inc();
                l.http.count_response(408);
                let out = local_reply(ctx, l, 408, body, true, None, false);
                let _ = d.stream.write_all(&out).await;
                return Next::Close;
            }
        }
    };
    let start = Instant::now();
    d.request_deadline = (hcm.request_timeout_ms > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_millis(hcm.request_timeout_ms));
    l.http.downstream_rq_total.inc();
    l.http.downstream_rq_http1_total.inc();
    l.http.downstream_rq_active.inc();
    let (status, next) = handle(ctx, snap, l, d, head).await;
    l.http.downstream_rq_active.dec();
    if status != 0 {
        l.http.count_response(status);
        l.http.downstream_rq_completed.inc();
        l.http.downstream_rq_time.record_ms(start);
    }
    next
}

/// Builds a complete local reply in Envoy's header order: with a body, `content-length`,
/// `content-type: text/plain`, `date`, `server`; without one, `date`, `server`,
/// `content-length: 0` (and `connection: close` before the length when closing).
fn local_reply(
    ctx: &Ctx,
    l: &ListenerRt,
    status: u16,
    body: &[u8],
    close: bool,
    extra: Option<&HeaderMap>,
    head_request: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    write_status_line(&mut out, status);
    if let Some(h) = extra {
        h.write_to(&mut out);
    }
    if body.is_empty() {
        push_header(&mut out, b"date", &ctx.date());
        push_header(&mut out, b"server", &l.c.server_name);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        // Envoy 1.40 quirk, kept for parity: a bodiless local reply to HEAD says chunked.
        out.extend_from_slice(if head_request {
            &b"transfer-encoding: chunked\r\n\r\n"[..]
        } else {
            b"content-length: 0\r\n\r\n"
        });
        return out;
    }
    write_framing(&mut out, Framing::Length(body.len() as u64));
    if !extra.is_some_and(|h| h.contains(b"content-type")) {
        out.extend_from_slice(b"content-type: text/plain\r\n");
    }
    push_header(&mut out, b"date", &ctx.date());
    push_header(&mut out, b"server", &l.c.server_name);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body);
    }
    out
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes a local reply and decides whether the connection can continue: only if the request
/// had no body left unread.
async fn reply(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    status: u16,
    body: &[u8],
    keep: bool,
    extra: Option<&HeaderMap>,
) -> (u16, Next) {
    let out = local_reply(ctx, l, status, body, !keep, extra, d.head_request);
    if d.stream.write_all(&out).await.is_err() {
        return (status, Next::Close);
    }
    (status, if keep { Next::KeepAlive } else { Next::Close })
}

fn uuid4() -> [u8; 36] {
    let r = fastrand::u128(..).to_be_bytes();
    let mut b = r;
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

fn lower_host(h: &RequestHead) -> Vec<u8> {
    h.headers
        .get(b"host")
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default()
}

async fn handle(
    ctx: &Rc<Ctx>,
    snap: &Rc<WorkerSnap>,
    l: &Rc<ListenerRt>,
    d: &mut Down,
    mut head: RequestHead,
) -> (u16, Next) {
    let hcm = &l.c.cfg.hcm;
    let keep = keep_alive(head.minor, &head.headers) && !ctx.draining();
    let framing = match request_framing(&head) {
        Ok(f) => f,
        Err(FramingError::BadRequest) => {
            l.http.downstream_cx_protocol_error.inc();
            return reply(ctx, l, d, 400, b"Bad Request", false, None).await;
        }
        Err(FramingError::NotImplemented) => {
            l.http.downstream_cx_protocol_error.inc();
            return reply(ctx, l, d, 501, b"Not Implemented", false, None).await;
        }
    };
    d.head_request = head.method() == b"HEAD";
    // Envoy's codec-level refusals, all answered with `connection: close`.
    if !head.normalize_absolute_form() {
        return reply(ctx, l, d, 400, b"Bad Request", false, None).await;
    }
    if head.minor == 0 {
        return reply(ctx, l, d, 426, b"Upgrade Required", false, None).await;
    }
    if !head.headers.contains(b"host") {
        return reply(ctx, l, d, 400, b"", false, None).await;
    }
    if is_upgrade(&head.headers) {
        // No `upgrade_configs` support yet: Envoy answers 403 without contacting the upstream.
        return reply(ctx, l, d, 403, b"", false, None).await;
    }
    let body_pending = framing != Framing::Empty;
    let host = lower_host(&head);
    let table = &l.c.routes;
    let Some((vh, route)) = table.route(&host, head.target(), &head.headers) else {
        l.http.no_route.inc();
        return reply(ctx, l, d, 404, b"", keep && !body_pending, None).await;
    };
    let response_mutations = |h: &mut HeaderMap| {
        route.mutations.apply_response(h);
        vh.mutations.apply_response(h);
        table.mutations.apply_response(h);
    };
    match &route.action {
        Action::Direct { status, body } => {
            l.http.rq_direct_response.inc();
            let mut h = HeaderMap::default();
            response_mutations(&mut h);
            reply(ctx, l, d, *status, body, keep && !body_pending, Some(&h)).await
        }
        Action::Redirect(r) => {
            // Envoy's router counts a redirect as a direct response.
            l.http.rq_direct_response.inc();
            let mut h = HeaderMap::default();
            h.append(b"location", &redirect_location(r, &host, head.target()));
            response_mutations(&mut h);
            reply(
                ctx,
                l,
                d,
                r.cfg.response_code,
                b"",
                keep && !body_pending,
                Some(&h),
            )
            .await
        }
        Action::Forward(fwd) => {
            let (ci, _, wc_mut) = fwd.pick();
            let cluster = snap.clusters[*ci].clone();
            // Header edits, most specific first (weighted cluster, route, virtual host, route
            // config), as Envoy applies them; `forward` applies them after Envoy's own headers.
            let chain = [wc_mut, &route.mutations, &vh.mutations, &table.mutations];
            forward(
                ctx,
                l,
                d,
                head,
                framing,
                keep,
                fwd,
                route.prefix_len(),
                &cluster,
                &chain,
                hcm.proxy_100_continue,
            )
            .await
        }
    }
}

fn redirect_location(r: &Redirect, host: &[u8], target: &[u8]) -> Vec<u8> {
    let c = &r.cfg;
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, &b""[..]),
    };
    let mut out = Vec::new();
    out.extend_from_slice(c.scheme_redirect.as_deref().unwrap_or("http").as_bytes());
    out.extend_from_slice(b"://");
    let (req_host, req_port) = match memchr::memrchr(b':', host) {
        Some(i) if !host.ends_with(b"]") => (&host[..i], Some(&host[i..])),
        _ => (host, None),
    };
    match &c.host_redirect {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.extend_from_slice(req_host),
    }
    match c.port_redirect {
        Some(p) => {
            out.push(b':');
            out.extend_from_slice(p.to_string().as_bytes());
        }
        None if c.host_redirect.is_none() && c.scheme_redirect.is_none() => {
            if let Some(p) = req_port {
                out.extend_from_slice(p);
            }
        }
        None => {}
    }
    let has_query_in_redirect;
    if let Some(p) = &c.path_redirect {
        has_query_in_redirect = p.contains('?');
        out.extend_from_slice(p.as_bytes());
    } else if let Some(p) = &c.prefix_rewrite {
        has_query_in_redirect = false;
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(&path[r.prefix_len.min(path.len())..]);
    } else {
        has_query_in_redirect = false;
        out.extend_from_slice(path);
    }
    if !c.strip_query && !has_query_in_redirect {
        out.extend_from_slice(query);
    }
    out
}

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

/// Adds and rewrites the proxy's own request headers as Envoy's connection manager and router
/// do (docs/envoy-behaviour.md, sections 1 and 2): order and in-place edits included.
fn mutate_request(l: &ListenerRt, d: &Down, h: &mut HeaderMap, fwd: &Forward) {
    let hcm = &l.c.cfg.hcm;
    let edge = hcm.use_remote_address;
    strip_hop_by_hop(h);
    h.remove_if(|n, _| {
        // The router sets its own expected-timeout header, appended last.
        n == b"x-envoy-expected-rq-timeout-ms"
            || n.starts_with(b"x-envoy-")
                && (ENVOY_CONTROL_HEADERS.contains(&n) || (edge && ENVOY_EDGE_HEADERS.contains(&n)))
    });
    if edge {
        let peer = d.peer.ip();
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
        if hcm.generate_request_id && !h.contains(b"x-request-id") {
            h.append(b"x-request-id", &uuid4());
        }
    }
    if !hcm.suppress_envoy_headers && fwd.timeout_ms > 0 {
        h.append(b"x-envoy-expected-rq-timeout-ms", &fwd.timeout_header);
    }
}

/// The target after `prefix_rewrite`, or `None` when the route does not rewrite it.
fn rewrite_target(
    fwd: &Forward,
    route_prefix_len: Option<usize>,
    target: &[u8],
) -> Option<Vec<u8>> {
    match (&fwd.prefix_rewrite, route_prefix_len) {
        (Some(p), Some(n)) if target.len() >= n => {
            let mut out = Vec::with_capacity(p.len() + target.len() - n);
            out.extend_from_slice(p);
            out.extend_from_slice(&target[n..]);
            Some(out)
        }
        _ => None,
    }
}

/// How an exchange with an upstream ended.
enum Outcome {
    /// The response went downstream in full.
    Done {
        status: u16,
        up_reusable: bool,
        down_keep: bool,
    },
    /// Failed before anything was sent downstream: answer locally.
    Local {
        status: u16,
        body: &'static [u8],
        keep: bool,
    },
    /// Failed after the response started, or the client went away: close.
    Abort { status: u16 },
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &Rc<Ctx>,
    l: &Rc<ListenerRt>,
    d: &mut Down,
    mut head: RequestHead,
    framing: Framing,
    keep: bool,
    fwd: &Forward,
    prefix_len: Option<usize>,
    cluster: &Rc<ClusterRt>,
    chain: &[&Mutations; 4],
    proxy_100: bool,
) -> (u16, Next) {
    let cs = &cluster.stats;
    cs.s.upstream_rq_total.inc();
    let Some(host) = cluster.pick() else {
        cs.s.upstream_cx_none_healthy.inc();
        cs.count_response(503);
        return reply(
            ctx,
            l,
            d,
            503,
            b"no healthy upstream",
            keep && framing == Framing::Empty,
            None,
        )
        .await;
    };
    // Envoy answers `Expect: 100-continue` itself unless proxy_100_continue is set.
    if !proxy_100
        && head.minor == 1
        && head
            .headers
            .get(b"expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    {
        head.headers.remove(b"expect");
        if framing != Framing::Empty
            && d.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return (0, Next::Close);
        }
    }
    mutate_request(l, d, &mut head.headers, fwd);
    for m in chain {
        m.apply_request(&mut head.headers);
    }
    // Rewrites come last and record what they replaced (Envoy's router, unless
    // suppress_envoy_headers): x-envoy-original-host, then x-envoy-original-path.
    let keep_original = !l.c.cfg.hcm.suppress_envoy_headers;
    let new_host = match &fwd.host_rewrite {
        Some(h) => Some(h.clone()),
        None if fwd.auto_host_rewrite
            && cluster.cfg.discovery == crate::snapshot::Discovery::StrictDns =>
        {
            cluster
                .cfg
                .cfg
                .endpoints
                .iter()
                .find(|e| e.port == host.addr.port())
                .map(|e| e.address.clone().into_bytes())
        }
        None => None,
    };
    if let Some(nh) = new_host {
        let orig = head.headers.get(b"host").map(<[u8]>::to_vec);
        head.headers.set(b"host", &nh);
        if let (true, Some(o)) = (keep_original, orig) {
            head.headers.append(b"x-envoy-original-host", &o);
        }
    }
    let new_target = rewrite_target(fwd, prefix_len, head.target());
    if new_target.is_some() && keep_original {
        let orig = head.target().to_vec();
        head.headers.append(b"x-envoy-original-path", &orig);
    }
    if let Framing::Length(n) = framing {
        if head.headers.get_all(b"content-length").count() != 1 {
            head.headers
                .set(b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
    }
    let is_head = head.method() == b"HEAD";
    let client_minor = head.minor;
    let mut out = Vec::with_capacity(head.wire_len + 256);
    out.extend_from_slice(head.method());
    out.push(b' ');
    out.extend_from_slice(new_target.as_deref().unwrap_or(head.target()));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    head.headers.write_host_first(&mut out);
    if framing == Framing::Chunked {
        write_framing(&mut out, Framing::Chunked);
    }
    out.extend_from_slice(b"\r\n");

    host.rq_start();
    cs.s.upstream_rq_active.inc();
    let mut up = match host.pool.checkout(|| {}) {
        Some(c) => c,
        None => match connect(cluster, &host).await {
            Ok(c) => c,
            Err(reason) => {
                host.rq_end();
                cs.s.upstream_rq_active.dec();
                host.stats.rq_error.inc();
                cs.count_response(503);
                let body: &'static [u8] = match reason {
                    ConnectFail::Timeout => b"upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
                    ConnectFail::Refused | ConnectFail::Other => {
                        b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                    }
                };
                return reply(
                    ctx,
                    l,
                    d,
                    503,
                    body,
                    keep && framing == Framing::Empty,
                    None,
                )
                .await;
            }
        },
    };
    if framing == Framing::Empty && !method_has_no_body(head_method(&out)) {
        // Envoy's codec gives a bodiless POST/PUT/... an explicit `content-length: 0`.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"content-length: 0\r\n\r\n");
    }
    up.requests += 1;
    let rq_start = Instant::now();
    let outcome = exchange(
        ctx,
        l,
        d,
        &mut up,
        out,
        framing,
        is_head,
        client_minor,
        keep,
        fwd.timeout_ms,
        chain,
        rq_start,
        READ_CHUNK.min(cluster.cfg.cfg.per_connection_buffer_limit_bytes.max(1) as usize),
    )
    .await;
    host.rq_end();
    cs.s.upstream_rq_active.dec();
    match outcome {
        Outcome::Done {
            status,
            up_reusable,
            down_keep,
        } => {
            cs.count_response(status);
            cs.s.upstream_rq_completed.inc();
            cs.s.upstream_rq_time.record_ms(rq_start);
            if status >= 500 {
                host.stats.rq_error.inc();
            } else {
                host.stats.rq_success.inc();
            }
            let max = cluster.cfg.cfg.max_requests_per_connection;
            if up_reusable && (max == 0 || up.requests < max) && !ctx.draining() {
                host.pool.checkin(up);
            } else if up_reusable {
                cs.s.upstream_cx_max_requests.inc();
            }
            (
                status,
                if down_keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                },
            )
        }
        Outcome::Local { status, body, keep } => {
            drop(up);
            host.stats.rq_error.inc();
            cs.count_response(status);
            if status == 504 {
                cs.s.upstream_rq_timeout.inc();
                host.stats.rq_timeout.inc();
            }
            reply(ctx, l, d, status, body, keep, None).await
        }
        Outcome::Abort { status } => {
            drop(up);
            host.stats.rq_error.inc();
            if status != 0 {
                cs.count_response(status);
            }
            (status, Next::Close)
        }
    }
}

fn head_method(out: &[u8]) -> &[u8] {
    &out[..memchr::memchr(b' ', out).unwrap_or(0)]
}

enum ConnectFail {
    Timeout,
    Refused,
    Other,
}

async fn connect(cluster: &ClusterRt, host: &HostRt) -> Result<UpConn, ConnectFail> {
    let cs = &cluster.stats;
    let t0 = Instant::now();
    match timeout(cluster.cfg.connect_timeout, TcpStream::connect(host.addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            cs.s.upstream_cx_connect_ms.record_ms(t0);
            Ok(UpConn {
                stream,
                rbuf: BytesMut::new(),
                requests: 0,
                idle_since: Instant::now(),
                guard: CxGuard::new(cs.clone(), host.stats.clone()),
            })
        }
        Ok(Err(e)) => {
            cs.s.upstream_cx_connect_fail.inc();
            host.stats.cx_connect_fail.inc();
            Err(if e.kind() == std::io::ErrorKind::ConnectionRefused {
                ConnectFail::Refused
            } else {
                ConnectFail::Other
            })
        }
        Err(_) => {
            cs.s.upstream_cx_connect_fail.inc();
            cs.s.upstream_cx_connect_timeout.inc();
            host.stats.cx_connect_fail.inc();
            Err(ConnectFail::Timeout)
        }
    }
}

/// Why the exchange loop stopped before the response finished.
enum Stop {
    DownstreamGone,
    StreamIdle,
    RouteTimeout,
    RequestTimeout,
}

enum ReqErr {
    Downstream,
    Upstream,
    Timeout,
}

enum RespErr {
    /// The upstream closed or reset before a complete response head.
    BeforeHeaders,
    /// The upstream sent an invalid response head.
    Protocol,
    /// The stream broke after the response started.
    AfterHeaders,
    /// The client went away while we wrote the response.
    Downstream,
}

/// Moves body bytes from `rbuf` through `dec` into `out` (chunk-encoded if `chunked`).
/// Returns true once the body is complete.
fn pump(
    dec: &mut Decoder,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    chunked: bool,
    max: usize,
) -> Result<bool, ()> {
    loop {
        match dec.decode(rbuf, max).map_err(|_| ())? {
            Decoded::Data(b) => {
                if chunked {
                    encode_chunk(out, &b);
                } else {
                    out.extend_from_slice(&b);
                }
                if out.len() >= max {
                    return Ok(false);
                }
            }
            Decoded::NeedMore => return Ok(false),
            Decoded::End => {
                if chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                return Ok(true);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    ctx: &Ctx,
    l: &ListenerRt,
    d: &mut Down,
    up: &mut UpConn,
    head_out: Vec<u8>,
    framing: Framing,
    is_head: bool,
    client_minor: u8,
    keep: bool,
    timeout_ms: u64,
    chain: &[&Mutations; 4],
    rq_start: Instant,
    up_chunk: usize,
) -> Outcome {
    let idle_ms = l.c.cfg.hcm.stream_idle_timeout_ms;
    // Bodies move in pieces no larger than either side's per_connection_buffer_limit_bytes.
    let down_chunk = READ_CHUNK.min(l.c.cfg.per_connection_buffer_limit_bytes.max(1) as usize);
    let request_deadline = d.request_deadline;
    let resp_started = Cell::new(false);
    let req_complete = Cell::new(false);
    let urbuf_empty = Cell::new(true);
    // Envoy's stream_idle_timeout is one timer per stream, reset by progress in either
    // direction; the reads below do not time out on their own.
    let activity = Cell::new(tokio::time::Instant::now());
    let touch = || activity.set(tokio::time::Instant::now());
    let (mut dr, mut dw) = d.stream.split();
    let (mut ur, mut uw) = up.stream.split();
    let drbuf = &mut d.rbuf;
    let urbuf = &mut up.rbuf;

    let req_fut = async {
        let mut out = head_out;
        let mut dec = Decoder::new(framing);
        let chunked = framing == Framing::Chunked;
        loop {
            let done = pump(&mut dec, drbuf, &mut out, chunked, down_chunk)
                .map_err(|_| ReqErr::Downstream)?;
            if !out.is_empty() {
                uw.write_all(&out).await.map_err(|_| ReqErr::Upstream)?;
                out.clear();
                touch();
            }
            if done {
                req_complete.set(true);
                return Ok::<(), ReqErr>(());
            }
            match read_more(&mut dr, drbuf, 0, down_chunk).await {
                Ok(_) => touch(),
                Err(ReadErr::Closed) => return Err(ReqErr::Downstream),
                Err(ReadErr::Timeout) => return Err(ReqErr::Timeout),
            }
        }
    };

    let resp_fut = async {
        let head = loop {
            match parse_response(urbuf, MAX_RESPONSE_HEAD) {
                // 1xx informational responses are not forwarded (Envoy drops upstream 100s
                // after answering the client's Expect itself).
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => continue,
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(_) => return Err(RespErr::Protocol),
            }
            match read_more(&mut ur, urbuf, 0, up_chunk).await {
                Ok(_) => {
                    urbuf_empty.set(false);
                    touch();
                }
                Err(_) => return Err(RespErr::BeforeHeaders),
            }
        };
        let status = head.status;
        let service_ms = rq_start.elapsed().as_millis();
        let up_framing = response_framing(is_head, status, &head.headers);
        let up_keep = keep_alive(head.minor, &head.headers) && up_framing != Framing::Close;
        // A close-delimited upstream body goes to an HTTP/1.1 client chunked, so the client
        // connection can stay open; an HTTP/1.0 client gets it close-delimited.
        let (down_framing, down_keep) = match up_framing {
            Framing::Close if client_minor == 1 => (Framing::Chunked, keep),
            Framing::Close => (Framing::Close, false),
            f => (f, keep),
        };
        let down_keep = down_keep && !ctx.draining();
        let mut h = head.headers;
        let orig_len = if up_framing == Framing::Empty {
            h.get(b"content-length").map(<[u8]>::to_vec)
        } else {
            None
        };
        strip_hop_by_hop(&mut h);
        if down_framing == Framing::Chunked || status == 204 {
            h.remove(b"content-length");
        } else if let Some(v) = orig_len {
            h.set(b"content-length", &v);
        }
        apply_response_extras(ctx, l, &mut h, service_ms, chain);
        let mut out = Vec::with_capacity(512);
        write_status_line(&mut out, status);
        h.write_to(&mut out);
        if down_framing == Framing::Chunked {
            write_framing(&mut out, Framing::Chunked);
        }
        if !down_keep {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        resp_started.set(true);
        let mut dec = Decoder::new(up_framing);
        let rechunk = down_framing == Framing::Chunked && up_framing != Framing::Chunked;
        let chunked_out = down_framing == Framing::Chunked;
        loop {
            let done = pump(&mut dec, urbuf, &mut out, chunked_out || rechunk, up_chunk)
                .map_err(|_| RespErr::AfterHeaders)?;
            if !out.is_empty() {
                dw.write_all(&out).await.map_err(|_| RespErr::Downstream)?;
                out.clear();
                touch();
            }
            if done {
                break;
            }
            match read_more(&mut ur, urbuf, 0, up_chunk).await {
                Ok(_) => touch(),
                Err(ReadErr::Closed) if dec.is_close_delimited() => {
                    let _ = dec.on_eof();
                    if chunked_out {
                        dw.write_all(LAST_CHUNK)
                            .await
                            .map_err(|_| RespErr::Downstream)?;
                    }
                    break;
                }
                Err(_) => return Err(RespErr::AfterHeaders),
            }
        }
        Ok((status, up_keep, down_keep))
    };

    tokio::pin!(req_fut);
    tokio::pin!(resp_fut);
    let mut req_state: Option<bool> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            r = &mut resp_fut => break Ok(r),
            r = &mut req_fut, if req_state.is_none() => {
                match r {
                    Ok(()) => req_state = Some(true),
                    Err(ReqErr::Downstream) => break Err(Stop::DownstreamGone),
                    Err(ReqErr::Timeout) => {
                        l.http.downstream_rq_idle_timeout.inc();
                        break Err(Stop::StreamIdle);
                    }
                    // The upstream stopped reading: it may still answer (an early error).
                    Err(ReqErr::Upstream) => req_state = Some(false),
                }
                if timeout_ms > 0 {
                    deadline = Some(tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
                }
            }
            _ = tokio::time::sleep_until(activity.get() + Duration::from_millis(idle_ms)), if idle_ms > 0 => {
                // Re-armed each turn of the loop; fires only after a full idle period.
                if tokio::time::Instant::now() >= activity.get() + Duration::from_millis(idle_ms) {
                    l.http.downstream_rq_idle_timeout.inc();
                    break Err(Stop::StreamIdle);
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                break Err(Stop::RouteTimeout);
            }
            _ = async { tokio::time::sleep_until(request_deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if req_state.is_none() && request_deadline.is_some() => {
                l.http.downstream_rq_timeout.inc();
                break Err(Stop::RequestTimeout);
            }
        }
    };
    let started = resp_started.get();
    let complete = req_complete.get();
    // After a routing-level failure the client connection stays usable (as Envoy's) when the
    // whole request was read.
    let down_keep_ok = keep && complete && !ctx.draining();
    match result {
        Ok(Ok((status, up_keep, down_keep))) => Outcome::Done {
            status,
            up_reusable: up_keep && complete,
            down_keep: down_keep && complete,
        },
        // Nothing at all came back: the connection was terminated (Envoy: 503).
        Ok(Err(RespErr::BeforeHeaders)) if !started && urbuf_empty.get() => Outcome::Local {
            status: 503,
            body: b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            keep: down_keep_ok,
        },
        // A partial or invalid head (Envoy: 502).
        Ok(Err(RespErr::BeforeHeaders | RespErr::Protocol)) if !started => Outcome::Local {
            status: 502,
            body: b"upstream connect error or disconnect/reset before headers. reset reason: protocol error",
            keep: down_keep_ok,
        },
        Ok(Err(_)) => Outcome::Abort { status: 0 },
        Err(Stop::RouteTimeout) if !started => {
            Outcome::Local { status: 504, body: b"upstream request timeout", keep: down_keep_ok }
        }
        Err(Stop::RequestTimeout) if !started => Outcome::Local { status: 408, body: b"request timeout", keep: false },
        // Idle while the client still owed request bytes: 408; while waiting on the upstream: 504.
        Err(Stop::StreamIdle) if !started && !complete => {
            Outcome::Local { status: 408, body: b"stream timeout", keep: false }
        }
        Err(Stop::StreamIdle) if !started => Outcome::Local { status: 504, body: b"stream timeout", keep: down_keep_ok },
        Err(_) => Outcome::Abort { status: 0 },
    }
}

/// Response headers the proxy sets, in Envoy's order: an upstream `server` replaced in place,
/// `x-envoy-upstream-service-time` appended, the configured response edits, then `date` if
/// absent and `server` per `server_header_transformation` (a configured `server` is
/// overwritten too).
fn apply_response_extras(
    ctx: &Ctx,
    l: &ListenerRt,
    h: &mut HeaderMap,
    service_ms: u128,
    chain: &[&Mutations; 4],
) {
    let hcm = &l.c.cfg.hcm;
    let transformation = hcm.server_header_transformation.as_str();
    if transformation == "OVERWRITE" && h.contains(b"server") {
        h.set(b"server", &l.c.server_name);
    }
    if !hcm.suppress_envoy_headers {
        h.set(
            b"x-envoy-upstream-service-time",
            itoa::Buffer::new().format(service_ms).as_bytes(),
        );
    }
    for m in chain {
        m.apply_response(h);
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
