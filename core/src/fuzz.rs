//! Property checks for the HTTP/1 codec, run on arbitrary bytes by the `cargo fuzz` targets in
//! `core/fuzz/` and, on mutated seed inputs, by `cargo test` (the tests below).
//!
//! Each check feeds its input through a piece of the request path and panics when a property
//! fails. The head parsers, the header map and the body decoder are written for speed (spans
//! into the raw head, a presence mask, raw-line runs copied whole); the checks hold them to
//! plain models of what they must do:
//! - a head split across reads parses as it does whole (a worker parses after every read);
//! - a parsed head has lower-case names and values without line breaks, and writing it out
//!   gives the bytes a line-by-line writer gives, which parse back to the same headers;
//! - lookups agree with a scan of the headers, before and after edits (the presence mask never
//!   hides a header);
//! - hop-by-hop stripping leaves exactly what the rules in `codec.rs`, applied to a plain
//!   list, leave;
//! - a body decodes to the same bytes and outcome however its bytes are split across reads, and
//!   chunks we encode decode back to their data.
//!
//! Not a public API: present under `cfg(test)` or the `fuzzing` feature only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::config::{Cluster, PathMatch, Snapshot};
use crate::lb::{Balancer, LbHost, Policy};
use crate::router::{breaks_line, Action, Cx, ReqView, RouteRequest};
use crate::snapshot::{compile_with, HostAddr, Resolver};
use crate::worker::headers::{redirect_location, redirect_rewritten_target, request_location};

use crate::http1::body::{encode_chunk, Decoded, Decoder, Framing, LAST_CHUNK};
use crate::http1::codec::{
    request_framing, response_framing, strip_hop_by_hop, ConnectionTokens, FramingError,
};
use crate::http1::head::{
    is_tchar, parse_request, parse_response, write_header, HeadError, HeaderMap, RequestHead,
    ResponseHead,
};
use crate::http1::request::{check_hosts, check_line, check_target, known_method};

type List = Vec<(Vec<u8>, Vec<u8>)>;

/// Names whose lookups take the mask's exact-bit path, its `x-envoy-` family path, or the
/// by-name path, for the lookup and edit checks.
const NAMES: &[&[u8]] = &[
    b"host",
    b"connection",
    b"te",
    b"transfer-encoding",
    b"content-length",
    b"upgrade",
    b"expect",
    b"keep-alive",
    b"proxy-connection",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-request-id",
    b"server",
    b"date",
    b"content-type",
    b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-original-path",
    b"x-envoy-",
    b"accept",
    b"a",
];

/// A request head as bytes on the wire. The first input byte picks the head size limit; the
/// rest is the wire.
pub fn request_head(data: &[u8]) {
    let Some((&b, wire)) = data.split_first() else {
        return;
    };
    let limit = 16 + usize::from(b) * 32;
    parses_alike_in_pieces(wire, |b| parse_request(b, limit), req_summary);
    let mut buf = BytesMut::from(wire);
    let Ok(Some(head)) = parse_request(&mut buf, limit) else {
        return;
    };
    assert!(head.wire_len <= wire.len() && head.wire_len <= limit);
    assert_eq!(&buf[..], &wire[head.wire_len..], "the head alone is taken");
    assert!(!head.method().is_empty() && !head.target().is_empty());
    assert!(!head
        .target()
        .iter()
        .any(|c| matches!(c, b' ' | b'\r' | b'\n')));
    check_map(&head.headers);

    parses_back(b"GET / HTTP/1.1\r\n", &head.headers, |b| {
        parse_request(b, usize::MAX).map(|o| o.map(|h| h.headers))
    });

    // `host` first, any later one dropped, the rest in order.
    let mut out = Vec::new();
    head.headers.write_host_first(&mut out);
    let l = list(&head.headers);
    let mut want = l
        .iter()
        .filter(|(n, _)| n == b"host")
        .take(1)
        .cloned()
        .collect::<List>();
    want.extend(l.iter().filter(|(n, _)| n != b"host").cloned());
    assert_eq!(out, written(&want));

    let framing = request_framing(&head);
    let lengths: Vec<_> = head.headers.get_all(b"content-length").collect();
    match framing {
        Ok(Framing::Length(n)) => {
            assert_eq!(lengths.len(), 1);
            let v = std::str::from_utf8(lengths[0].trim_ascii()).ok();
            assert_eq!(v.and_then(|v| v.parse::<u64>().ok()), Some(n));
        }
        Ok(Framing::Chunked) => {
            assert!(lengths.is_empty() && te_model(&head.headers) == Some(Ok(true)))
        }
        Ok(Framing::Empty) => {
            assert!(lengths.is_empty() && matches!(te_model(&head.headers), None | Some(Ok(false))))
        }
        Ok(Framing::Close) => panic!("a request is never close-delimited"),
        Err(FramingError::BadRequest | FramingError::NotImplemented) => {}
    }

    // What the request checks let through is a known method with a target of visible ASCII
    // in a form Envoy routes, and `host` values without spaces or path characters.
    let target_ok = check_line(&head).is_ok_and(|line| check_target(&head, line) == Ok(Ok(())));
    if target_ok && check_hosts(&head).is_ok() {
        assert!(known_method(head.method()));
        let t = head.target();
        assert!(t.iter().all(|&b| (0x21..0x7f).contains(&b)) && !t.contains(&b'#'));
        assert!(t[0] == b'/' || t[0] == b'*' || head.clone().normalize_absolute_form());
        for v in head.headers.get_all(b"host") {
            assert!(!v.iter().any(|b| b" \t/?#\\".contains(b)), "host {v:?}");
        }
    }

    let mut abs: RequestHead = head.clone();
    let was_absolute = {
        let t = head.target();
        t.len() > 8
            && (t[..7].eq_ignore_ascii_case(b"http://") || t[..8].eq_ignore_ascii_case(b"https://"))
    };
    if abs.normalize_absolute_form() && was_absolute {
        // A query right after the authority stays the path, as in Envoy.
        assert!(
            matches!(abs.target().first(), Some(b'/' | b'?')),
            "origin form after normalising"
        );
        assert!(abs.headers.contains(b"host"));
        check_map(&abs.headers);
    }

    let ops = edits_of(wire, head.wire_len);
    let mut h = head.headers;
    strip_and_check(&mut h);
    edit_and_check(&mut h, &ops);
}

/// A request target and the connection manager's path rules: the first input byte picks the
/// rules (bit 0 `normalize_path`, bit 1 `merge_slashes`, bits 2-3
/// `path_with_escaped_slashes_action`), the rest is the target.
pub fn path(data: &[u8]) {
    use crate::http1::path::{apply, canonicalize, EscapedSlashes, Outcome, PathOptions};
    let Some((&b, target)) = data.split_first() else {
        return;
    };
    let opts = PathOptions {
        normalize: b & 1 != 0,
        merge_slashes: b & 2 != 0,
        escaped_slashes: [
            EscapedSlashes::KeepUnchanged,
            EscapedSlashes::RejectRequest,
            EscapedSlashes::UnescapeAndRedirect,
            EscapedSlashes::UnescapeAndForward,
        ][usize::from(b >> 2 & 3)],
    };
    let q = target
        .iter()
        .position(|&c| c == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(q);
    let escaped_slash = path
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2] | 0x20), (b'2', b'f') | (b'5', b'c')));
    let out = match apply(target, &opts) {
        Outcome::Same => target.to_vec(),
        Outcome::Changed(t) => {
            assert_ne!(&t[..], target, "a change that changes nothing");
            t
        }
        Outcome::Redirect(t) => {
            assert!(opts.escaped_slashes == EscapedSlashes::UnescapeAndRedirect && escaped_slash);
            t
        }
        Outcome::Reject => {
            // The canonicaliser sees the path with its escaped slashes unescaped, if asked.
            let seen = if opts.escaped_slashes == EscapedSlashes::KeepUnchanged {
                path.to_vec()
            } else {
                unescape_slashes_model(path)
            };
            assert!(
                (opts.escaped_slashes == EscapedSlashes::RejectRequest && escaped_slash)
                    || (opts.normalize && canonicalize(&seen).is_none())
            );
            return;
        }
    };
    // Only the path changes.
    assert!(out.ends_with(query), "the query is kept");
    let new_path = &out[..out.len() - query.len()];
    if opts.escaped_slashes == EscapedSlashes::RejectRequest {
        assert!(!escaped_slash);
    }
    if opts.normalize {
        // A canonical path: rooted, visible ASCII, no byte a path may not hold raw, no `.` or
        // `..` segment; canonical again it stays as it is (before merging).
        assert_eq!(new_path.first(), Some(&b'/'));
        assert!(new_path
            .iter()
            .all(|&c| (0x21..0x7f).contains(&c) && !b"\"<>^`{|}?#".contains(&c)));
        for seg in new_path.split(|&c| c == b'/') {
            let s = String::from_utf8_lossy(seg)
                .to_ascii_lowercase()
                .replace("%2e", ".");
            assert!(
                s != "." && s != "..",
                "dot segment in {:?}",
                String::from_utf8_lossy(new_path)
            );
        }
        // Idempotent, but for a dot segment with parameters that came after a backslash: it is a
        // name there, and a dot segment once the backslash is a `/` (so in Envoy too).
        let params_after_slash =
            new_path.windows(3).any(|w| w == b"/.;") || new_path.windows(4).any(|w| w == b"/..;");
        if !opts.merge_slashes && !params_after_slash {
            assert_eq!(
                canonicalize(new_path).as_deref(),
                Some(new_path),
                "not idempotent"
            );
        }
    }
    if opts.merge_slashes {
        assert!(new_path == b"//" || !new_path.windows(2).any(|w| w == b"//"));
    }
    if !opts.normalize
        && !opts.merge_slashes
        && opts.escaped_slashes == EscapedSlashes::KeepUnchanged
    {
        assert_eq!(&out[..], target);
    }
}

/// `%2F` as `/` and `%5C` as `\`, either case, written plainly.
fn unescape_slashes_model(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < path.len() {
        let three = path.get(i..i + 3).map(|w| [w[0], w[1], w[2] | 0x20]);
        match three {
            Some([b'%', b'2', b'f']) => out.push(b'/'),
            Some([b'%', b'5', b'c']) => out.push(b'\\'),
            _ => {
                out.push(path[i]);
                i += 1;
                continue;
            }
        }
        i += 3;
    }
    out
}

/// A response head as bytes on the wire; the first input byte picks the size limit and whether
/// it answers a HEAD request.
pub fn response_head(data: &[u8]) {
    let Some((&b, wire)) = data.split_first() else {
        return;
    };
    let limit = 16 + usize::from(b >> 1) * 64;
    let head_request = b & 1 == 1;
    parses_alike_in_pieces(wire, |b| parse_response(b, limit), resp_summary);
    let mut buf = BytesMut::from(wire);
    let Ok(Some(head)) = parse_response(&mut buf, limit) else {
        return;
    };
    assert!((100..=999).contains(&head.status), "status {}", head.status);
    assert!(buf.len() < wire.len());
    check_map(&head.headers);

    parses_back(b"HTTP/1.1 200 OK\r\n", &head.headers, |b| {
        parse_response(b, usize::MAX).map(|o| o.map(|h| h.headers))
    });

    let framing = response_framing(head_request, head.status, &head.headers);
    let bodiless =
        head_request || (100..200).contains(&head.status) || matches!(head.status, 204 | 304);
    match framing {
        Ok(Framing::Empty) => assert!(bodiless),
        Ok(Framing::Length(_)) => {
            assert!(!bodiless && !head.headers.contains(b"transfer-encoding"))
        }
        Ok(Framing::Chunked) => {
            assert!(!bodiless && te_model(&head.headers) == Some(Ok(true)));
            assert!(!head.headers.contains(b"content-length"));
        }
        Ok(Framing::Close) => {
            assert!(!bodiless && matches!(te_model(&head.headers), None | Some(Ok(false))));
            assert!(!head.headers.contains(b"content-length"));
        }
        // Refused only for a framing header: a length, or a transfer coding (which a 304
        // may carry).
        Err(_) => assert!(
            head.headers.contains(b"content-length") || head.headers.contains(b"transfer-encoding")
        ),
    }

    let ops = edits_of(wire, wire.len() - buf.len());
    let mut h = head.headers;
    strip_and_check(&mut h);
    edit_and_check(&mut h, &ops);
}

/// Twelve edit codes for [`edit_and_check`]: the bytes after the head, then bytes drawn from a
/// generator seeded with the wire (so the same input always makes the same edits).
fn edits_of(wire: &[u8], head_len: usize) -> Vec<u8> {
    let seed = wire.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    wire[head_len..]
        .iter()
        .copied()
        .chain(std::iter::repeat_with(|| rng.u8(..)))
        .take(12)
        .collect()
}

/// A message body: the first input byte picks the framing (and a length), the second the most
/// bytes taken per decode, the rest is the wire; the wire is also cut into reads at the
/// positions its own bytes give. Decoded whole or read by read, the body and the outcome are
/// the same. Then the wire's bytes, encoded as chunks by us, decode back to themselves.
pub fn body(data: &[u8]) {
    let [f, m, wire @ ..] = data else {
        return;
    };
    let framing = match f % 4 {
        0 => Framing::Chunked,
        1 => Framing::Length(u64::from(f / 4) * 7),
        2 => Framing::Close,
        _ => Framing::Empty,
    };
    let max = 1 + usize::from(*m);
    let whole = decode_reads(framing, max, &[wire]);
    let mut reads = vec![&wire[..0]];
    let mut rest = wire;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (1 + usize::from(wire[i % wire.len()]) % 9).min(rest.len());
        reads.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    let split = decode_reads(framing, max, &reads);
    assert_eq!(split, whole, "{framing:?} decoded read by read vs whole");
    if let Framing::Length(n) = framing {
        if whole.error.is_none() {
            assert_eq!(whole.data.len() as u64, n.min(wire.len() as u64));
            assert_eq!(whole.data, wire[..whole.data.len()]);
        }
    }

    // Our chunks (cut where the wire's bytes say) plus the last chunk: the data comes back, the
    // body ends, and nothing after it is taken.
    let mut encoded = Vec::new();
    for piece in &reads {
        encode_chunk(&mut encoded, piece);
    }
    encoded.extend_from_slice(LAST_CHUNK);
    encoded.extend_from_slice(b"GET");
    let back = decode_reads(Framing::Chunked, max, &[&encoded]);
    assert_eq!(back.error, None);
    assert!(back.end);
    assert_eq!(back.data, wire);
    assert_eq!(back.left, b"GET");
}

/// A config snapshot as the control plane hands it over (JSON). What parses is compiled (STRICT_DNS
/// names resolve to loopback, no DNS), then used as a worker would: requests routed for hosts
/// and paths taken from the config, redirects rendered, header edits applied, clusters picked
/// and hosts balanced. None of it may panic; what it produces must be well-formed. Access logs
/// are compiled with their files taken for stderr (nothing is created on disk), and each
/// writes a line for a request that went nowhere, into a buffer that is never handed over.
pub fn snapshot(data: &[u8]) {
    let Ok(mut s) = Snapshot::from_json(data) else {
        return;
    };
    for l in &mut s.listeners {
        for a in &mut l.hcm.access_log {
            a.sink = crate::config::LogSink::Stderr;
        }
    }
    let resolver: Resolver = Arc::new(|c: &Cluster| {
        c.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| HostAddr {
                addr: SocketAddr::from(([127, 0, 0, 1], e.port)),
                weight: e.weight,
                endpoint: i as u32,
            })
            .collect()
    });
    let Ok(compiled) = compile_with(&s, &resolver) else {
        return;
    };
    for l in &compiled.listeners {
        if let Some(logs) = &l.logs {
            let now = std::time::Instant::now();
            let rec = crate::accesslog::Record::new(now);
            let e = crate::accesslog::Emit {
                peer: SocketAddr::from(([10, 0, 0, 1], 5000)),
                local: None,
                end: now,
                now,
                wall: std::time::Duration::from_secs(1_796_642_431),
            };
            // Every line renders; a JSON one is one valid JSON object.
            for (json, line) in logs.lines(&rec, &e) {
                if json {
                    assert!(
                        serde_json::from_slice::<serde_json::Value>(&line).is_ok(),
                        "{}",
                        String::from_utf8_lossy(&line)
                    );
                }
            }
        }
    }
    for c in &compiled.clusters {
        balance(c.policy, &c.hosts);
    }
    // Hosts and paths the config itself names, and a few it does not.
    let mut hosts: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"example.com".to_vec(),
        b"a.example.com:8080".to_vec(),
    ];
    let mut targets: Vec<Vec<u8>> = vec![
        b"/".to_vec(),
        b"/a/b?c=d&e".to_vec(),
        b"/%2e%2e/x?".to_vec(),
    ];
    for l in &s.listeners {
        for vh in &l.hcm.route_config.virtual_hosts {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                hosts.push(d.replace('*', "x").into_bytes());
                hosts.push(d.replace('*', "").into_bytes());
            }
            for r in &vh.routes {
                let p = match &r.route_match.path {
                    PathMatch::Prefix(p) | PathMatch::Path(p) => p.clone(),
                    PathMatch::SafeRegex(_) => continue,
                };
                targets.push(format!("{p}?q=1").into_bytes());
                targets.push(format!("{p}x").into_bytes());
                targets.push(p.to_ascii_uppercase().into_bytes());
            }
        }
    }
    hosts.truncate(12);
    targets.truncate(24);
    for l in &compiled.listeners {
        assert!(!breaks_line(&l.server_name));
        for host in &hosts {
            for target in &targets {
                let target: &[u8] = if target.starts_with(b"/") {
                    target
                } else {
                    b"/"
                };
                let mut wire = b"GET ".to_vec();
                wire.extend_from_slice(target);
                wire.extend_from_slice(b" HTTP/1.1\r\nhost: ");
                wire.extend_from_slice(host);
                wire.extend_from_slice(b"\r\nx-a: 1\r\n\r\n");
                let Ok(Some(mut head)) = parse_request(&mut BytesMut::from(&wire[..]), usize::MAX)
                else {
                    continue;
                };
                let req = RouteRequest {
                    method: head.method(),
                    target,
                    headers: &head.headers,
                    absolute_https: None,
                };
                let Some((vh, r)) = l.routes.route(host, &req) else {
                    continue;
                };
                let local = || Some(SocketAddr::from(([127, 0, 0, 1], 8080)));
                let line = (head.method().to_vec(), target.to_vec());
                let mut cx = Cx {
                    peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
                    local: &local,
                    minor: 1,
                    request: Some(ReqView {
                        method: &line.0,
                        target: &line.1,
                        headers: None,
                        https: false,
                    }),
                    status: 0,
                    upstream: None,
                    response: false,
                };
                l.routes.mutations.apply_request(&mut head.headers, &cx);
                vh.mutations.apply_request(&mut head.headers, &cx);
                r.mutations.apply_request(&mut head.headers, &cx);
                check_map(&head.headers);
                let sent = head.headers.clone();
                let mut resp = parse_response(
                    &mut BytesMut::from(
                        &b"HTTP/1.1 200 OK\r\nserver: up\r\ncontent-length: 0\r\n\r\n"[..],
                    ),
                    usize::MAX,
                )
                .unwrap()
                .unwrap();
                cx.request = Some(ReqView {
                    method: &line.0,
                    target: &line.1,
                    headers: Some(&sent),
                    https: false,
                });
                cx.status = 200;
                cx.response = true;
                cx.upstream = Some(SocketAddr::from(([127, 0, 0, 1], 9)));
                r.mutations.apply_response(&mut resp.headers, &cx);
                vh.mutations.apply_response(&mut resp.headers, &cx);
                l.routes.mutations.apply_response(&mut resp.headers, &cx);
                check_map(&resp.headers);
                match &r.action {
                    Action::Forward(f) => {
                        for v in [&f.prefix_rewrite, &f.host_rewrite].into_iter().flatten() {
                            assert!(!breaks_line(v), "rewrite {v:?}");
                        }
                        let (ci, w, m) = f.pick();
                        assert!(*ci < compiled.clusters.len(), "cluster index {ci}");
                        assert!(*w > 0 || f.clusters.len() == 1);
                        cx.request = None;
                        cx.response = false;
                        m.apply_request(&mut head.headers, &cx);
                        check_map(&head.headers);
                    }
                    Action::Redirect(rd) => {
                        let n = r.prefix_len(target);
                        for (scheme, proto) in [(&b"http"[..], &b"http"[..]), (b"https", b"http")] {
                            let loc = redirect_location(rd, n, host, target, scheme, proto);
                            assert!(!breaks_line(&loc), "location {loc:?}");
                            let path = redirect_rewritten_target(rd, n, target);
                            assert!(!path.is_some_and(|p| breaks_line(&p)));
                        }
                    }
                    Action::TlsRedirect => {}
                    Action::Direct { status, .. } => {
                        assert!((200..=599).contains(status), "status {status}");
                        let loc = request_location(host, target, b"https", b"http");
                        assert!(!breaks_line(&loc), "location {loc:?}");
                    }
                }
            }
        }
    }
}

struct Host(u32, u32);

impl LbHost for Host {
    fn weight(&self) -> u32 {
        self.0
    }
    fn active_requests(&self) -> u32 {
        self.1
    }
    fn hash_key(&self) -> String {
        format!("10.0.0.{}:80", self.0)
    }
}

/// Picks over a cluster's hosts stay in range, and weighted round robin, over one round of the
/// total weight, picks each host exactly its weight's times (when that round is short enough to
/// run here).
fn balance(policy: Policy, hosts: &[HostAddr]) {
    let hs: Vec<Host> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Host(h.weight, i as u32 % 3))
        .collect();
    let b = Balancer::new(policy, &hs);
    let total: u64 = hs.iter().map(|h| u64::from(h.0)).sum();
    let weighted = hs.windows(2).any(|w| w[0].0 != w[1].0);
    if policy == Policy::RoundRobin && weighted && total <= 10_000 {
        let mut got = vec![0u64; hs.len()];
        for _ in 0..total {
            got[b.pick(&hs).expect("a host")] += 1;
        }
        let want: Vec<u64> = hs.iter().map(|h| u64::from(h.0)).collect();
        assert_eq!(got, want, "one round of smooth weighted round robin");
    } else {
        for _ in 0..8 {
            match b.pick(&hs) {
                Some(i) => assert!(i < hs.len()),
                None => assert!(hs.is_empty()),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Decoding {
    data: Vec<u8>,
    end: bool,
    error: Option<usize>,
    /// Bytes left in the buffer once the body ended (the next message's).
    left: Vec<u8>,
}

/// Decodes a body arriving as `reads`, as a connection would: after each read, decode until
/// more bytes are needed. `error` is the count of body bytes delivered before a framing error.
fn decode_reads(framing: Framing, max: usize, reads: &[&[u8]]) -> Decoding {
    let mut d = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut out = Decoding {
        data: Vec::new(),
        end: false,
        error: None,
        left: Vec::new(),
    };
    for (i, r) in reads.iter().enumerate() {
        buf.extend_from_slice(r);
        loop {
            match d.decode(&mut buf, max) {
                Ok(Decoded::Data(n)) => {
                    assert!(n > 0 && n <= max && n <= buf.len(), "data of {n} bytes");
                    out.data.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::End) => {
                    out.end = true;
                    out.left = buf.to_vec();
                    out.left.extend(reads[i + 1..].concat());
                    return out;
                }
                Err(_) => {
                    out.error = Some(out.data.len());
                    return out;
                }
            }
        }
    }
    out
}

/// Parses the wire whole and cut at a few places (the first read of a head that comes in two),
/// and compares each prefix's outcome with the whole's: a prefix may need more bytes, or fail
/// where the whole fails (not always with the same error: a prefix already over the size limit
/// is refused as too large before the bytes that make the whole malformed arrive), but a prefix
/// that completes is the same head.
fn parses_alike_in_pieces<H, T: PartialEq + std::fmt::Debug>(
    wire: &[u8],
    parse: impl Fn(&mut BytesMut) -> Result<Option<H>, HeadError>,
    summary: impl Fn(&H) -> T,
) {
    let whole = parse(&mut BytesMut::from(wire)).map(|o| o.as_ref().map(&summary));
    for cut in cuts(wire) {
        let part = parse(&mut BytesMut::from(&wire[..cut])).map(|o| o.as_ref().map(&summary));
        same_outcome(&part, &whole, cut);
    }
}

/// Writes `h` after `start_line` and parses it again: the same headers come back.
fn parses_back(
    start_line: &[u8],
    h: &HeaderMap,
    parse: impl Fn(&mut BytesMut) -> Result<Option<HeaderMap>, HeadError>,
) {
    let mut again = start_line.to_vec();
    h.write_to(&mut again);
    again.extend_from_slice(b"\r\n");
    let back = parse(&mut BytesMut::from(&again[..]))
        .expect("a written head parses")
        .expect("a written head is complete");
    assert_eq!(list(&back), list(h), "written out and parsed again");
}

fn same_outcome<T: PartialEq + std::fmt::Debug>(
    part: &Result<Option<T>, HeadError>,
    whole: &Result<Option<T>, HeadError>,
    cut: usize,
) {
    match (part, whole) {
        (Ok(None), _) => {}
        (Ok(Some(p)), Ok(Some(w))) => assert_eq!(p, w, "the first {cut} bytes parse as a head"),
        (Err(HeadError::Malformed), Err(HeadError::Malformed)) => {}
        (Err(HeadError::TooLarge), Err(_)) => {}
        _ => panic!("the first {cut} bytes gave {part:?}, the whole wire {whole:?}"),
    }
}

fn req_summary(h: &RequestHead) -> (usize, Vec<u8>, Vec<u8>, u8, List) {
    (
        h.wire_len,
        h.method().to_vec(),
        h.target().to_vec(),
        h.minor,
        list(&h.headers),
    )
}

fn resp_summary(h: &ResponseHead) -> (u16, u8, List) {
    (h.status, h.minor, list(&h.headers))
}

/// Where to cut a wire into a first read: a few places spread over it (every place would be
/// quadratic in the input).
fn cuts(wire: &[u8]) -> impl Iterator<Item = usize> {
    let n = wire.len();
    let mut c = vec![
        n / 2,
        n.saturating_sub(1),
        n.saturating_sub(2),
        n / 3,
        2 * n / 3,
    ];
    if let Some(i) = memchr::memchr(b'\n', wire) {
        c.push(i + 1);
    }
    c.sort_unstable();
    c.dedup();
    c.into_iter().filter(move |&k| k > 0 && k < n)
}

fn list(h: &HeaderMap) -> List {
    h.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect()
}

fn written(l: &List) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in l {
        write_header(&mut out, n, v);
    }
    out
}

/// Names lower-case tokens, values free of line breaks, lookups in agreement with a scan, and
/// the fast writer in agreement with the line-by-line one.
fn check_map(h: &HeaderMap) {
    let l = list(h);
    for (n, v) in &l {
        assert!(!n.is_empty(), "an empty header name");
        assert!(
            n.iter().all(|&c| is_tchar(c) && !c.is_ascii_uppercase()),
            "name {n:?} is not a lower-case token"
        );
        assert!(!breaks_line(v), "value {v:?}");
    }
    let mut names: Vec<&[u8]> = NAMES.to_vec();
    names.extend(l.iter().map(|(n, _)| n.as_slice()));
    for name in names {
        let scan: Vec<&[u8]> = l
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(
            h.get_all(name).collect::<Vec<_>>(),
            scan,
            "get_all({name:?})"
        );
        assert_eq!(h.get(name), scan.first().copied(), "get({name:?})");
        assert_eq!(h.contains(name), !scan.is_empty(), "contains({name:?})");
    }
    let mut out = Vec::new();
    h.write_to(&mut out);
    assert_eq!(out, written(&l), "write_to");
}

const HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-connection",
];

/// `strip_hop_by_hop` against the same rules on a plain list.
fn strip_and_check(h: &mut HeaderMap) {
    let mut want = list(h);
    // Envoy's rule on the `te` values joined by `,`: empty is left alone; a token that is
    // exactly `trailers` makes it `te: trailers`; anything else removes it.
    let te_values: Vec<&[u8]> = want
        .iter()
        .filter(|(n, _)| n == b"te")
        .map(|(_, v)| v.as_slice())
        .collect();
    let joined = te_values.join(&b","[..]);
    let te = (!joined.is_empty()).then(|| {
        joined
            .split(|c| *c == b',')
            .any(|t| t.trim_ascii() == b"trailers")
    });
    let named: Vec<Vec<u8>> = want
        .iter()
        .filter(|(n, _)| n == b"connection")
        .flat_map(|(_, v)| {
            v.split(|c| *c == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
        })
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .map(<[u8]>::to_ascii_lowercase)
        .collect();
    // A `te` that keeps `trailers` is reduced where it stands, even when `connection` names it.
    if te == Some(true) {
        set(&mut want, b"te", b"trailers");
    }
    let kept_te = |n: &[u8]| te == Some(true) && n == b"te";
    want.retain(|(n, _)| n == b"host" || kept_te(n) || !named.contains(n));
    want.retain(|(n, _)| !HOP.contains(&n.as_slice()));
    if te == Some(false) {
        want.retain(|(n, _)| n != b"te");
    }
    let conn = ConnectionTokens::of(h);
    strip_hop_by_hop(h, conn);
    assert_eq!(list(h), want, "after strip_hop_by_hop");
    check_map(h);
}

/// `set` on a plain list: the first of the name takes the value, later ones go; else appended.
fn set(l: &mut List, name: &[u8], value: &[u8]) {
    match l.iter().position(|(n, _)| n == name) {
        Some(i) => {
            l[i].1 = value.to_vec();
            let mut k = 0;
            l.retain(|(n, _)| {
                k += 1;
                k - 1 <= i || n != name
            });
        }
        None => l.push((name.to_vec(), value.to_vec())),
    }
}

/// Edits chosen by the input's bytes (append, set, remove, remove by predicate), each checked
/// against the same edit of a plain list.
fn edit_and_check(h: &mut HeaderMap, ops: &[u8]) {
    let mut want = list(h);
    for (i, &b) in ops.iter().take(12).enumerate() {
        let name = NAMES[usize::from(b >> 2) % NAMES.len()];
        // Short values stay inline in the entry, long ones are boxed.
        let value = if i % 2 == 0 {
            b"v".to_vec()
        } else {
            vec![b'w'; 40 + i]
        };
        match b & 3 {
            0 => {
                h.append(name, &value);
                want.push((name.to_vec(), value));
            }
            1 => {
                h.set(name, &value);
                set(&mut want, name, &value);
            }
            2 => {
                h.remove(name);
                want.retain(|(n, _)| n != name);
            }
            _ => {
                h.remove_if(|n, _| n == name);
                want.retain(|(n, _)| n != name);
            }
        }
        assert_eq!(list(h), want, "after edit {i} ({b:#x}) of {name:?}");
        check_map(h);
    }
}

/// What a message's `transfer-encoding` lines say, as Envoy 1.40 reads them, written plainly
/// (the model `codec::te_chunked` is checked against): `None` without a line; refused unless
/// the non-blank lines are exactly one `chunked`; then chunked, or framed as if there were no
/// transfer coding when the last line is blank.
fn te_model(h: &crate::http1::head::HeaderMap) -> Option<Result<bool, ()>> {
    let lines: Vec<&[u8]> = h
        .get_all(b"transfer-encoding")
        .map(<[u8]>::trim_ascii)
        .collect();
    let last = lines.last()?;
    let nonblank: Vec<&&[u8]> = lines.iter().filter(|v| !v.is_empty()).collect();
    if nonblank.len() != 1 || !nonblank[0].eq_ignore_ascii_case(b"chunked") {
        return Some(Err(()));
    }
    Some(Ok(!last.is_empty()))
}

#[cfg(test)]
mod tests {
    //! The checks on the seed inputs (`core/fuzz/seeds/<target>/`) and on a fixed run of
    //! mutations of them: a short, repeatable fuzz that `cargo test` runs everywhere.
    use std::path::PathBuf;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        v.sort();
        assert!(v.len() >= 3, "seeds in {}", dir.display());
        v
    }

    /// Pieces of HTTP/1 that mutations splice in.
    const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b": ",
        b":",
        b" ",
        b"\t",
        b",",
        b";",
        b"0",
        b"ff",
        b"chunked",
        b"content-length: 5\r\n",
        b"transfer-encoding: chunked\r\n",
        b"transfer-encoding: \r\n",
        b"connection: te, x-a, close\r\n",
        b"te: trailers\r\n",
        b"host: h\r\n",
        b"HOST: H\r\n",
        b"x-envoy-a: 1\r\n",
        b"keep-alive",
        b"upgrade",
        b"http://a/b",
        b"\xff",
        b"\x00",
        b"\x7f",
    ];

    fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
        for _ in 0..rng.usize(1..4) {
            let n = input.len();
            match rng.u8(0..5) {
                0 if n > 0 => input[rng.usize(0..n)] = rng.u8(..),
                1 => {
                    let t = TOKENS[rng.usize(0..TOKENS.len())];
                    let at = rng.usize(0..=n);
                    input.splice(at..at, t.iter().copied());
                }
                2 if n > 1 => {
                    let a = rng.usize(0..n);
                    let b = rng.usize(a..=n.min(a + 16));
                    input.drain(a..b);
                }
                3 if n > 1 => {
                    let a = rng.usize(0..n);
                    let b = rng.usize(a..=n.min(a + 24));
                    let piece = input[a..b].to_vec();
                    let at = rng.usize(0..=input.len());
                    input.splice(at..at, piece);
                }
                _ => input.push(rng.u8(..)),
            }
        }
    }

    fn run(target: &str, check: fn(&[u8]), rounds: usize) {
        let seeds = seeds(target);
        for s in &seeds {
            check(s);
        }
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..rounds {
            let mut input = seeds[rng.usize(0..seeds.len())].clone();
            mutate(&mut rng, &mut input);
            let r = std::panic::catch_unwind(|| check(&input));
            assert!(
                r.is_ok(),
                "{target} failed on {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn request_heads_hold_their_properties() {
        run("request_head", super::request_head, 3000);
    }

    #[test]
    fn response_heads_hold_their_properties() {
        run("response_head", super::response_head, 3000);
    }

    /// A value to put in place of `old`: mostly one of the same JSON type (so that the snapshot
    /// still parses), sometimes any.
    fn odd_value(rng: &mut fastrand::Rng, old: &serde_json::Value) -> serde_json::Value {
        use serde_json::{json, Value};
        let strings = [
            "",
            "*",
            "*.example.com",
            "api.*",
            "x\r\ny: z",
            "/",
            "/a",
            "^(a|b)+$",
            "(",
            "A-Header",
            "\u{0}",
            "ROUND_ROBIN",
            "LEAST_REQUEST",
            "RANDOM",
            "STRICT_DNS",
            "STATIC",
            "127.0.0.1",
            "::1",
            "localhost",
            "https",
            "OVERWRITE",
            "PASS_THROUGH",
            "APPEND_IF_ABSENT",
        ];
        let numbers = [
            json!(0),
            json!(1),
            json!(2),
            json!(65535),
            json!(4294967295u64),
            json!(1u64 << 40),
        ];
        let any = rng.u8(0..10) == 0;
        match old {
            Value::String(_) if !any => json!(strings[rng.usize(0..strings.len())]),
            Value::Number(_) if !any => numbers[rng.usize(0..numbers.len())].clone(),
            Value::Bool(b) if !any => json!(!b),
            _ => [
                json!("x"),
                json!(-1),
                json!(1e20),
                json!(null),
                json!([]),
                json!({}),
            ][rng.usize(0..6)]
            .clone(),
        }
    }

    /// Changes one node of `v`, picked by walking down at random: a new value, or an array
    /// element dropped or repeated.
    fn mutate_json(rng: &mut fastrand::Rng, v: &mut serde_json::Value) {
        use serde_json::Value;
        let descend = rng.u8(0..8) != 0;
        match v {
            Value::Object(m) if descend && !m.is_empty() => {
                let k = m.keys().nth(rng.usize(0..m.len())).unwrap().clone();
                mutate_json(rng, m.get_mut(&k).unwrap());
            }
            Value::Array(a) if descend && !a.is_empty() => match rng.u8(0..6) {
                0 => {
                    a.remove(rng.usize(0..a.len()));
                }
                1 => {
                    let e = a[rng.usize(0..a.len())].clone();
                    a.push(e);
                }
                _ => {
                    let i = rng.usize(0..a.len());
                    mutate_json(rng, &mut a[i]);
                }
            },
            _ => *v = odd_value(rng, v),
        }
    }

    #[test]
    fn snapshots_compile_and_route_without_panics() {
        // The seeds, then JSON-aware mutations of them (byte mutations of JSON rarely parse).
        let seeds = seeds("snapshot");
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let (mut compiled, mut rounds) = (0, 0);
        for s in &seeds {
            super::snapshot(s);
        }
        while rounds < 1500 {
            let mut v: serde_json::Value =
                serde_json::from_slice(&seeds[rng.usize(0..seeds.len())]).unwrap();
            for _ in 0..rng.usize(1..4) {
                mutate_json(&mut rng, &mut v);
            }
            let input = serde_json::to_vec(&v).unwrap();
            rounds += 1;
            let r = std::panic::catch_unwind(|| super::snapshot(&input));
            assert!(
                r.is_ok(),
                "snapshot failed on {}",
                String::from_utf8_lossy(&input)
            );
            if crate::config::Snapshot::from_json(&input).is_ok() {
                compiled += 1;
            }
        }
        // Most mutations must still be snapshots, or this tests only the JSON parser.
        assert!(
            compiled > rounds / 4,
            "{compiled} of {rounds} mutations parsed"
        );
    }

    #[test]
    fn paths_hold_their_properties() {
        run("path", super::path, 3000);
    }

    #[test]
    fn bodies_decode_alike_however_they_are_read() {
        run("body", super::body, 3000);
    }
}
