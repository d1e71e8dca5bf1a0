"""Error replies: malformed requests (codec errors), refused upgrades, missing Host, upstream
failures and timeouts. Exact status line, headers and body per docs/envoy-behaviour.md §6 (or the
`envoy` 1.40 binary where noted), and what happens to the connection afterwards."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.dataplane.conftest import RawConn, get, shape, wait_stat
from tests.support.configs import bootstrap, cluster, route

DATE = ("date", "<date>")
SERVER = ("server", "envoy")
CLOSE = ("connection", "close")


def text_reply(body: bytes, close: bool = False) -> list[tuple[str, str]]:
    """Envoy's header order for a local reply with a body (survey §6)."""
    return [("content-length", str(len(body))), ("content-type", "text/plain"), DATE, SERVER,
            *([CLOSE] if close else [])]


BAD_REQUEST = ("HTTP/1.1 400 Bad Request", text_reply(b"Bad Request", close=True), b"Bad Request")
BIG = "x-big: " + "a" * 1500 + "\r\n"


@pytest.fixture
def proxy(make_proxy: Any, upstream: Any) -> Any:
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GARBAGE\r\n\r\n", BAD_REQUEST),  # §6f
        (b"GET / HTTP/1.1 extra\r\nHost: example.com\r\n\r\n", BAD_REQUEST),  # §6f2
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5\r\nhello\r\n0\r\n\r\n", BAD_REQUEST),  # §6g
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
         BAD_REQUEST),  # §6h
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
         BAD_REQUEST),  # §6h2: even equal duplicates
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5, 5\r\n\r\nhello", BAD_REQUEST),  # §6h3
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\nhello", BAD_REQUEST),  # §6h4
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\nhello",
         ("HTTP/1.1 501 Not Implemented", text_reply(b"Not Implemented", close=True), b"Not Implemented")),  # §6h5
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nBad Header: x\r\n\r\n", BAD_REQUEST),  # §6i
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nx(y: z\r\n\r\n", BAD_REQUEST),  # §6i2
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nx-a : z\r\n\r\n", BAD_REQUEST),  # §6i3
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nx-a: a\x01b\r\n\r\n", BAD_REQUEST),  # §6i5
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n" + ("x-big: " + "a" * 62000 + "\r\n").encode() + b"\r\n",
         ("HTTP/1.1 431 Request Header Fields Too Large", text_reply(b"Request Header Fields Too Large", close=True),
          b"Request Header Fields Too Large")),  # §6j2: over the 60 KiB default
        (b"GET /nohost HTTP/1.1\r\nUser-Agent: t\r\n\r\n",  # §4l: no Host
         ("HTTP/1.1 400 Bad Request", [DATE, SERVER, CLOSE, ("content-length", "0")], b"")),
        (b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",  # §3b
         ("HTTP/1.1 403 Forbidden", [DATE, SERVER, CLOSE, ("content-length", "0")], b"")),
        (b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",  # §3d
         ("HTTP/1.1 403 Forbidden", [DATE, SERVER, CLOSE, ("content-length", "0")], b"")),
    ],
    ids=["garbage", "extra-token", "cl-and-te", "two-cl", "two-equal-cl", "cl-list", "cl-abc", "te-gzip",
         "space-in-name", "paren-in-name", "space-before-colon", "ctl-in-value", "headers-over-60k", "no-host",
         "upgrade-foo", "upgrade-websocket"],
)
def test_rejected_request_exact_reply_and_close(
    proxy: Any, upstream: Any, raw: bytes, expected: tuple[str, list[tuple[str, str]], bytes]
) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(raw)
        assert (r.status_line, shape(r.headers), r.body) == expected
        assert c.closed_within(3.0)  # Envoy closes ~1 s after (delayed close)
    assert upstream.requests == []


UPGRADE_ROUTES = [{"name": "v", "domains": ["example.com"], "routes": [
    {"match": {"prefix": "/d"}, "direct_response": {"status": 200}}, route("/", "up")]}]
WS = b"Connection: upgrade\r\nUpgrade: websocket\r\n"


@pytest.mark.parametrize(
    ("raw", "status_line"),
    [
        # No route: 404 first, and the connection closes as after the 403 (envoy binary).
        (b"GET / HTTP/1.1\r\nHost: nomatch.example\r\n" + WS + b"\r\n", "HTTP/1.1 404 Not Found"),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Proto: \r\n" + WS + b"\r\n", "HTTP/1.1 404 Not Found"),
        # A route, even a direct response: 403.
        (b"GET /d HTTP/1.1\r\nHost: example.com\r\n" + WS + b"\r\n", "HTTP/1.1 403 Forbidden"),
        # Not only h2c: refused as any upgrade.
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n",
         "HTTP/1.1 403 Forbidden"),
    ],
    ids=["no-vhost", "empty-xfp", "direct-response", "h2c-and-more"],
)
def test_refused_upgrade_after_routing(make_proxy: Any, upstream: Any, raw: bytes, status_line: str) -> None:
    proxy = make_proxy(bootstrap([], [cluster("up", upstream.port)], virtual_hosts=UPGRADE_ROUTES))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(raw)
        assert (r.status_line, shape(r.headers), r.body) == (
            status_line, [DATE, SERVER, CLOSE, ("content-length", "0")], b"")
        assert c.closed_within(3.0)
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("extra", "forwarded"),
    [
        ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n", []),
        ("Connection: keep-alive, Upgrade\r\nUpgrade: H2C\r\nx-a: 1\r\n", [("x-a", "1")]),
        # what else Connection names is still removed
        ("Connection: upgrade, x-b\r\nUpgrade: h2c\r\nx-b: 2\r\nx-a: 1\r\n", [("x-a", "1")]),
    ],
    ids=["with-settings", "keep-alive-upper-case", "nominated"],
)
def test_h2c_upgrade_offer_is_dropped_and_the_request_served(
    make_proxy: Any, upstream: Any, extra: str, forwarded: list[tuple[str, str]]
) -> None:
    # Envoy's codec removes an HTTP/1.1 offer to switch to HTTP/2 in the clear and serves the
    # request as a plain one (envoy binary).
    proxy = make_proxy(bootstrap([], [cluster("up", upstream.port)], virtual_hosts=UPGRADE_ROUTES))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(f"GET /x HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n".encode()).status == 200
        assert c.open_after(0.2)
    (rec,) = upstream.requests
    assert [(k, v) for k, v in rec.headers if k.startswith("x-") and not k.startswith("x-envoy")
            and k not in ("x-forwarded-proto", "x-request-id")] == forwarded
    assert not any(k.lower() in ("upgrade", "http2-settings", "connection") for k, _ in rec.headers)


def test_header_block_over_max_request_headers_kb_is_431(make_proxy: Any, upstream: Any) -> None:
    # §6j: listener with max_request_headers_kb: 1 and a ~1.5 KiB header
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"max_request_headers_kb": 1}))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/", extra=BIG))
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 431 Request Header Fields Too Large", text_reply(b"Request Header Fields Too Large", close=True),
            b"Request Header Fields Too Large")
        assert c.closed_within(3.0)
    assert upstream.requests == []


# --- upstream failures ------------------------------------------------------------------------------


@pytest.fixture
def dead_port() -> Any:
    """A loopback port with nothing listening: bound (never listened on) and held for the test,
    so no one else can take it; connects to it are refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]

CONNECT_FAIL = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
TERMINATION = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"


def test_dead_upstream_is_503_and_counted(make_proxy: Any, upstream: Any, dead_port: int) -> None:
    proxy = make_proxy(bootstrap([route("/refused", "refused"), route("/", "up")],
                                 [cluster("refused", dead_port), cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/refused"))
        # §6c
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 503 Service Unavailable", text_reply(CONNECT_FAIL), CONNECT_FAIL)
        assert c.request(get("/x")).status == 200  # router-level error: the connection stays usable
    wait_stat(proxy, "cluster.refused.upstream_cx_connect_fail", 1)


def test_cluster_without_endpoints_is_503_no_healthy_upstream(make_proxy: Any, upstream: Any) -> None:
    empty = {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": "empty", "endpoints": []}}
    proxy = make_proxy(bootstrap([route("/empty", "empty"), route("/", "up")], [empty, cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/empty"))
        # §6b, §6n
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 503 Service Unavailable", text_reply(b"no healthy upstream"), b"no healthy upstream")
        assert c.request(get("/x")).status == 200
    wait_stat(proxy, "cluster.empty.upstream_cx_none_healthy", 1)


def test_route_timeout_is_504_and_connection_stays_usable(make_proxy: Any, upstream: Any) -> None:
    proxy = make_proxy(bootstrap([route("/hang", "up", timeout="0.5s"), route("/", "up")],
                                 [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        start = time.monotonic()
        r = c.request(get("/hang"))
        elapsed = time.monotonic() - start
        # §6d
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 504 Gateway Timeout", text_reply(b"upstream request timeout"), b"upstream request timeout")
        assert 0.45 <= elapsed < 3.0, elapsed
        assert c.request(get("/x")).status == 200
    assert upstream.requests[0].header("x-envoy-expected-rq-timeout-ms") == "500"
    wait_stat(proxy, "cluster.up.upstream_rq_timeout", 1)


def test_upstream_reset_before_response_is_503_connection_termination(proxy: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/reset"))
        # §6e2
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 503 Service Unavailable", text_reply(TERMINATION), TERMINATION)
        assert c.request(get("/x")).status == 200


# --- downstream timeouts ------------------------------------------------------------------------------
# Not in the survey; observed with the envoy binary (timeouts of 0.5 s, replies after ~0.5 s,
# then the delayed close ~1 s later for the 408s).


def timed_proxy(make_proxy: Any, upstream: Any, **hcm: Any) -> Any:
    return make_proxy(bootstrap([route("/", "up", timeout="0s")], [cluster("up", upstream.port)], hcm=hcm))


@pytest.mark.parametrize(
    ("hcm", "sent", "stat", "body"),
    [
        ({"request_headers_timeout": "0.5s"}, b"GET / HTTP/1.1\r\nHost: exa", "downstream_rq_header_timeout",
         b"request header timeout"),
        ({"request_headers_timeout": "0.5s"}, b"GET / HT", "downstream_rq_header_timeout", b"request header timeout"),
        ({"stream_idle_timeout": "0.5s"}, b"GET / HT", "downstream_rq_idle_timeout", b"stream timeout"),
        ({"stream_idle_timeout": "0.5s"}, b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nab",
         "downstream_rq_idle_timeout", b"stream timeout"),
        # HCM request_timeout: the whole request must arrive in time, head and body.
        ({"request_timeout": "0.5s"}, b"GET / HTTP/1.1\r\nHost: exa", "downstream_rq_timeout", b"request timeout"),
        ({"request_timeout": "0.5s"}, b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nab",
         "downstream_rq_timeout", b"request timeout"),
    ],
    ids=["headers-timeout-in-header", "headers-timeout-in-request-line", "idle-in-head", "idle-in-body",
         "request-timeout-in-head", "request-timeout-in-body"],
)
def test_stalled_request_gets_408_and_connection_closed(
    make_proxy: Any, upstream: Any, hcm: dict[str, Any], sent: bytes, stat: str, body: bytes
) -> None:
    proxy = timed_proxy(make_proxy, upstream, **hcm)
    with RawConn(proxy.listener_port()) as c:
        start = time.monotonic()
        c.send(sent)
        r = c.read_response()
        assert time.monotonic() - start >= 0.45
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 408 Request Timeout", text_reply(body, close=True), body)
        assert c.closed_within(3.0)
    assert upstream.requests == []
    wait_stat(proxy, f"http.ingress_http.{stat}", 1)


def test_request_timeout_ends_with_the_request(make_proxy: Any, upstream: Any) -> None:
    # Once the request is in, request_timeout no longer runs: a slower upstream answer still
    # comes, on a connection that stays open.
    proxy = timed_proxy(make_proxy, upstream, request_timeout="0.3s")
    with RawConn(proxy.listener_port()) as c:
        start = time.monotonic()
        r = c.request(b"POST /delay/800/x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nab")
        assert time.monotonic() - start >= 0.75
        assert r.status == 200
        assert c.request(get("/x")).status == 200
    assert [rq.body_len for rq in upstream.requests] == [2, 0]


def test_stream_idle_timeout_waiting_for_upstream_is_504(make_proxy: Any, upstream: Any) -> None:
    proxy = timed_proxy(make_proxy, upstream, stream_idle_timeout="0.5s")
    with RawConn(proxy.listener_port()) as c:
        start = time.monotonic()
        r = c.request(get("/hang"))
        assert 0.45 <= time.monotonic() - start < 3.0
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 504 Gateway Timeout", text_reply(b"stream timeout"), b"stream timeout")
        assert c.open_after(0.5)
    wait_stat(proxy, "http.ingress_http.downstream_rq_idle_timeout", 1)


def test_a_routes_idle_timeout_replaces_the_stream_idle_timeout(make_proxy: Any, upstream: Any) -> None:
    # Route `idle_timeout`: shorter than the connection manager's, it ends the wait for the
    # upstream; 0s turns the stream idle timeout off for that route.
    routes = [route("/short/", "up", timeout="0s", idle_timeout="0.4s", prefix_rewrite="/"),
              route("/off/", "up", timeout="0s", idle_timeout="0s", prefix_rewrite="/"),
              route("/", "up", timeout="0s")]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port)], hcm={"stream_idle_timeout": "0.8s"}))
    with RawConn(proxy.listener_port()) as c:
        start = time.monotonic()
        r = c.request(get("/short/hang"))
        assert 0.35 <= time.monotonic() - start < 0.75
        assert (r.status, r.body) == (504, b"stream timeout")
        assert c.request(get("/off/delay/1200/x")).status == 200
        start = time.monotonic()
        assert c.request(get("/hang")).status == 504
        assert time.monotonic() - start >= 0.75
    wait_stat(proxy, "http.ingress_http.downstream_rq_idle_timeout", 2)


# --- timeouts once the response has started -------------------------------------------------------


class SlowBody:
    """An upstream reply whose head and first body bytes come at once and the rest in `pieces`,
    `gap_s` apart; with `stall`, the body stops after the first bytes (until `stop()`)."""

    def __init__(self, pieces: int = 0, gap_s: float = 0.0, stall: bool = False) -> None:
        import threading

        self.pieces, self.gap_s, self.stall = pieces, gap_s, stall
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def __call__(self, sock: Any, _extra: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n012\r\n")
        if self.stall:
            self._stop.wait(10)
            return
        for _ in range(self.pieces):
            time.sleep(self.gap_s)
            sock.sendall(b"1\r\nx\r\n")
        sock.sendall(b"0\r\n\r\n")


def read_to_eof(c: RawConn, timeout_s: float = 5.0) -> bytes:
    c.sock.settimeout(timeout_s)
    data = b""
    while chunk := c.sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("rt", "hcm", "stat"),
    [({"timeout": "0.5s"}, {}, "cluster.up.upstream_rq_timeout"),
     ({"timeout": "0s"}, {"stream_idle_timeout": "0.5s"}, "http.ingress_http.downstream_rq_idle_timeout")],
    ids=["route-timeout", "stream-idle-timeout"],
)
def test_timeout_after_the_response_started_ends_the_connection(
    make_proxy: Any, make_canned: Any, rt: dict[str, Any], hcm: dict[str, Any], stat: str
) -> None:
    # The response head and its first bytes went out; when the route timeout or the stream
    # idle timeout fires then, there is no reply left to send: the client gets what came, and
    # the connection closes without the last chunk (checked with the envoy binary).
    reply = SlowBody(stall=True)
    up = make_canned({"*": reply})
    proxy = make_proxy(bootstrap([route("/", "up", **rt)], [cluster("up", up.port)], hcm=hcm))
    try:
        with RawConn(proxy.listener_port()) as c:
            start = time.monotonic()
            c.send(get("/"))
            data = read_to_eof(c)
            assert time.monotonic() - start >= 0.45
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == b"3\r\n012\r\n"
        wait_stat(proxy, stat, 1)
    finally:
        reply.stop()


def test_stream_idle_timeout_is_reset_by_each_body_piece(make_proxy: Any, make_canned: Any) -> None:
    # A body that keeps coming, each piece within the idle timeout, outlives it (1.2 s against
    # 0.5 s).
    up = make_canned({"*": SlowBody(pieces=4, gap_s=0.3)})
    proxy = make_proxy(bootstrap([route("/", "up", timeout="0s")], [cluster("up", up.port)],
                                 hcm={"stream_idle_timeout": "0.5s"}))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/"))
        assert (r.status, r.body) == (200, b"012xxxx")



@pytest.mark.parametrize("framing", ["length", "chunked", "partial"])
def test_dead_upstream_after_the_whole_body_keeps_the_connection(make_proxy: Any, upstream: Any, dead_port: int,
                                                                 framing: str) -> None:
    """The body comes with the head, so it is whole by the time the connect fails: the 503 answers
    a complete request and the connection stays. A body still incomplete then closes it."""
    proxy = make_proxy(bootstrap([route("/refused", "refused"), route("/", "up")],
                                 [cluster("refused", dead_port), cluster("up", upstream.port)]))
    head = b"POST /refused HTTP/1.1\r\nHost: example.com\r\n"
    post = {"length": head + b"content-length: 5\r\n\r\nhello",
            "chunked": head + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            "partial": head + b"content-length: 10\r\n\r\nhello"}[framing]
    with RawConn(proxy.listener_port()) as c:
        r = c.request(post)
        assert (r.status_line, r.body) == ("HTTP/1.1 503 Service Unavailable", CONNECT_FAIL)
        if framing == "partial":
            assert r.header("connection") == "close"
            assert c.closed_within(3.0)
        else:
            assert r.header("connection") is None
            assert c.request(get("/x")).status == 200
    wait_stat(proxy, "cluster.refused.upstream_rq_pending_failure_eject", 1)
    before = proxy.stats()["http.ingress_http.downstream_rq_response_before_rq_complete"]
    assert before == (1 if framing == "partial" else 0)
    # The dropped body never reaches the next request: the upstream saw only `GET /x`, whole.
    seen = [(q.method, q.target, q.body_len) for q in upstream.requests]
    assert seen == ([] if framing == "partial" else [("GET", "/x", 0)])
