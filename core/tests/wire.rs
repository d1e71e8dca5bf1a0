//! Wire-level tests of the engine: real loopback sockets, a real upstream thread, raw client
//! bytes. The Python suite covers the same paths through the CLI and config loader; these keep
//! `cargo test` meaningful on its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyproxy_core::config::Snapshot;
use pyproxy_core::Engine;

/// A keep-alive HTTP/1.1 upstream that answers every request with its method, path and body
/// length, and records each request head it saw.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

fn upstream() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c, h) = (connections.clone(), heads.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            std::thread::spawn(move || serve_upstream(s, h));
        }
    });
    Upstream {
        port,
        connections,
        heads,
    }
}

const BIG: usize = 1 << 20;

fn serve_upstream(s: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            body.resize(cl.trim().parse().unwrap(), 0);
            r.read_exact(&mut body).unwrap();
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let first = head.lines().next().unwrap().to_string();
        if first.contains("/slow") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        heads.lock().unwrap().push(head);
        if first.contains("/big") {
            // 1 MiB, so the proxy writes it to the client in many pieces.
            let big: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
            let _ = write!(w, "HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
            let _ = w.write_all(&big);
            continue;
        }
        let reply = format!("{first} body={}", body.len());
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
            reply.len(),
            reply
        );
    }
}

fn engine(upstream_port: u16) -> (Engine, u16) {
    let snap = format!(
        r#"{{"listeners": [{{"name": "l", "address": "127.0.0.1", "port": 0, "hcm": {{"stat_prefix": "ingress_http",
        "route_config": {{"virtual_hosts": [{{"name": "v", "domains": ["*"], "routes": [
          {{"match": {{"path": {{"prefix": "/slow"}}}}, "action": {{"route": {{"cluster": "up", "timeout_ms": 300}}}}}},
          {{"match": {{"path": {{"prefix": "/dead"}}}}, "action": {{"route": {{"cluster": "dead"}}}}}},
          {{"match": {{"path": {{"prefix": "/"}}}}, "action": {{"route": {{"cluster": "up"}}}}}}]}}]}}}}}}],
        "clusters": [{{"name": "up", "type": "STATIC", "endpoints": [{{"address": "127.0.0.1", "port": {upstream_port}}}]}},
                     {{"name": "dead", "type": "STATIC", "endpoints": [{{"address": "127.0.0.1", "port": 1}}]}}]}}"#
    );
    let snap = Snapshot::from_json(snap.as_bytes()).unwrap();
    let e = Engine::new(1);
    e.start(&snap).unwrap();
    let port = e.listeners()[0].1.port();
    (e, port)
}

/// Reads one response (content-length framed) and returns (status line, body).
fn read_response(r: &mut BufReader<TcpStream>) -> (String, String) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (
        status.trim_end().to_string(),
        String::from_utf8(body).unwrap(),
    )
}

/// Waits for a stat to reach `want`: a worker counts a response just after writing it, so a
/// reader may briefly see the old value (as with Envoy's stats).
fn wait_stat(e: &Engine, name: &str, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = e.stat_values().get(name).copied().unwrap_or(0);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn client(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[test]
fn keep_alive_pipelining_and_upstream_reuse() {
    let up = upstream();
    let (e, port) = engine(up.port);
    let (mut s, mut r) = client(port);
    // Three pipelined requests in one write, one with a chunked body.
    s.write_all(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        read_response(&mut r),
        ("HTTP/1.1 200 OK".into(), "GET /a HTTP/1.1 body=0".into())
    );
    assert_eq!(
        read_response(&mut r),
        ("HTTP/1.1 200 OK".into(), "POST /b HTTP/1.1 body=5".into())
    );
    assert_eq!(
        read_response(&mut r),
        ("HTTP/1.1 200 OK".into(), "GET /c HTTP/1.1 body=0".into())
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection reused"
    );
    let heads = up.heads.lock().unwrap().clone();
    assert!(
        heads[1].contains("transfer-encoding: chunked"),
        "{}",
        heads[1]
    );
    assert!(heads[0].contains("x-request-id: "), "{}", heads[0]);
    wait_stat(&e, "cluster.up.upstream_rq_200", 3);
    wait_stat(&e, "http.ingress_http.downstream_rq_2xx", 3);
    wait_stat(&e, "cluster.up.upstream_cx_total", 1);
}

#[test]
fn smuggling_shaped_requests_get_400_and_close() {
    let up = upstream();
    let (_e, port) = engine(up.port);
    for req in [
        &b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n",
    ] {
        let (mut s, mut r) = client(port);
        s.write_all(req).unwrap();
        let (status, _) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{}", String::from_utf8_lossy(req));
        let mut rest = Vec::new();
        assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "connection closed after 400");
    }
    assert!(
        up.heads.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[test]
fn dead_upstream_is_503_and_slow_upstream_is_504() {
    let up = upstream();
    let (e, port) = engine(up.port);
    let (mut s, mut r) = client(port);
    s.write_all(b"GET /dead HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers"),
        "{body}"
    );
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 504 Gateway Timeout", "upstream request timeout")
    );
    wait_stat(&e, "cluster.dead.upstream_cx_connect_fail", 1);
    wait_stat(&e, "cluster.up.upstream_rq_timeout", 1);
}

#[test]
fn apply_swaps_routes_and_shutdown_waits_for_requests() {
    let up = upstream();
    let (e, port) = engine(up.port);
    let snap = r#"{"listeners": [{"name": "l", "address": "127.0.0.1", "port": 0, "hcm": {"stat_prefix": "ingress_http",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
          {"match": {"path": {"prefix": "/"}}, "action": {"direct_response": {"status": 418, "body": "new"}}}]}]}}}], "clusters": []}"#;
    e.apply(&Snapshot::from_json(snap.as_bytes()).unwrap())
        .unwrap();
    assert_eq!(
        e.listeners()[0].1.port(),
        port,
        "same name and address keep the socket"
    );
    let (mut s, mut r) = client(port);
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 418 Unknown", "new")
    );
    let bad =
        r#"{"listeners": [], "clusters": [{"name": "c", "type": "STATIC", "lb_policy": "FOO"}]}"#;
    let err = e
        .apply(&Snapshot::from_json(bad.as_bytes()).unwrap())
        .unwrap_err();
    assert!(
        err.is_config() && err.message().starts_with("clusters[0].lb_policy"),
        "{err}"
    );
    e.shutdown(Duration::from_secs(1));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "listener closed after shutdown"
    );
}

#[test]
fn strict_dns_cluster_follows_re_resolution() {
    let (a, b) = (upstream(), upstream());
    let answer = Arc::new(Mutex::new(vec![a.port]));
    let ans = answer.clone();
    let resolver: pyproxy_core::snapshot::Resolver = Arc::new(move |c| {
        assert_eq!(c.endpoints[0].address, "svc.test");
        ans.lock()
            .unwrap()
            .iter()
            .map(|p| pyproxy_core::snapshot::HostAddr {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                weight: 1,
                endpoint: 0,
            })
            .collect()
    });
    let snap = r#"{"listeners": [{"name": "l", "address": "127.0.0.1", "port": 0, "hcm": {"stat_prefix": "ingress_http",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
          {"match": {"path": {"prefix": "/"}}, "action": {"route": {"cluster": "dns"}}}]}]}}}],
        "clusters": [{"name": "dns", "type": "STRICT_DNS", "dns_refresh_rate_ms": 20,
                      "endpoints": [{"address": "svc.test", "port": 80}]}]}"#;
    let e = Engine::with_resolver(2, resolver);
    e.start(&Snapshot::from_json(snap.as_bytes()).unwrap())
        .unwrap();
    let port = e.listeners()[0].1.port();
    let get = || {
        let (mut s, mut r) = client(port);
        s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        read_response(&mut r)
    };
    assert_eq!(get().0, "HTTP/1.1 200 OK");
    assert_eq!(a.heads.lock().unwrap().len(), 1);
    // The name now resolves to b, then to both: the next refreshes move traffic.
    *answer.lock().unwrap() = vec![b.port];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.heads.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "traffic never moved to the re-resolved host"
        );
        assert_eq!(get().0, "HTTP/1.1 200 OK");
    }
    *answer.lock().unwrap() = vec![a.port, b.port];
    wait_stat(&e, "cluster.dns.membership_total", 2);
    *answer.lock().unwrap() = vec![];
    wait_stat(&e, "cluster.dns.membership_total", 0);
    let (status, body) = get();
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 503 Service Unavailable", "no healthy upstream")
    );
}

/// Every wait of a connection shares one lazily armed timer: a deadline armed by one wait (a
/// short route timeout) must neither end a later wait early (the idle timeout) nor keep a later
/// one (the next request's route timeout) from firing.
#[test]
fn one_connection_timer_serves_every_deadline() {
    let up = upstream();
    let snap = format!(
        r#"{{"listeners": [{{"name": "l", "address": "127.0.0.1", "port": 0, "hcm": {{"stat_prefix": "ingress_http",
        "idle_timeout_ms": 700,
        "route_config": {{"virtual_hosts": [{{"name": "v", "domains": ["*"], "routes": [
          {{"match": {{"path": {{"prefix": "/slow"}}}}, "action": {{"route": {{"cluster": "up", "timeout_ms": 300}}}}}},
          {{"match": {{"path": {{"prefix": "/"}}}}, "action": {{"route": {{"cluster": "up", "timeout_ms": 50}}}}}}]}}]}}}}}}],
        "clusters": [{{"name": "up", "type": "STATIC", "endpoints": [{{"address": "127.0.0.1", "port": {}}}]}}]}}"#,
        up.port
    );
    let e = Engine::new(1);
    e.start(&Snapshot::from_json(snap.as_bytes()).unwrap())
        .unwrap();
    let port = e.listeners()[0].1.port();

    // A fast request arms the timer for its 50 ms route timeout; the idle wait that follows
    // must see it go off early, find nothing due and wait on to the 700 ms idle timeout.
    let (mut s, mut r) = client(port);
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).0, "HTTP/1.1 200 OK");
    let t0 = std::time::Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    let idle = t0.elapsed();
    assert!(rest.is_empty());
    assert!(
        idle >= Duration::from_millis(600) && idle < Duration::from_secs(4),
        "closed after {idle:?}, idle_timeout is 700 ms"
    );
    wait_stat(&e, "http.ingress_http.downstream_cx_idle_timeout", 1);

    // Past the first request's route deadline, with the timer re-armed for idle, a slow
    // request still gets its own 300 ms route timeout.
    let (mut s, mut r) = client(port);
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).0, "HTTP/1.1 200 OK");
    // Let the first request's 50 ms route deadline pass (time itself is what is tested here,
    // not a readiness wait): the timer goes off during the idle wait and is re-armed.
    std::thread::sleep(Duration::from_millis(150));
    let t0 = std::time::Instant::now();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut r);
    let waited = t0.elapsed();
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 504 Gateway Timeout", "upstream request timeout")
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1400),
        "504 after {waited:?}, route timeout is 300 ms"
    );
    wait_stat(&e, "cluster.up.upstream_rq_timeout", 1);
}

/// A connection that closes after its response (the client's `connection: close`, or a local
/// reply that leaves a request body unread) gets the whole response and then a clean end: the
/// last bytes leave with the FIN (MSG_MORE, then shutdown), in one write or after many.
#[test]
fn closing_connections_get_the_whole_response_then_the_end() {
    let up = upstream();
    let (e, port) = engine(up.port);

    // One small response, then EOF.
    let (mut s, mut r) = client(port);
    s.write_all(b"GET /small HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    r.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
    assert!(all.ends_with("GET /small HTTP/1.1 body=0"), "{all}");

    // 1 MiB, relayed in many writes: every byte, then EOF.
    let (mut s, r) = client(port);
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    r.into_inner().read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &all[split..];
    assert_eq!(body.len(), BIG);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == b'a' + (i % 26) as u8));

    // A local reply (503: the cluster is down) to a request whose 1 MB body never comes in
    // full: the reply arrives whole, then the proxy reads and drops what the client still
    // sends (linger) and the client sees a clean end when it stops sending.
    let (mut s, mut r) = client(port);
    s.write_all(b"POST /dead HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'x'; 20_000]).unwrap();
    let (status, body) = read_response(&mut r);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.starts_with("upstream connect error"), "{body}");
    s.write_all(&[b'y'; 20_000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    wait_stat(
        &e,
        "http.ingress_http.downstream_rq_response_before_rq_complete",
        1,
    );
    e.shutdown(Duration::from_secs(1));
}
