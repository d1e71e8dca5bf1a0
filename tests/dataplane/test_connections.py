"""Connection management: upstream keep-alive reuse, max_requests_per_connection, pipelining,
Connection: close and HTTP/1.0.

Expected values: docs/envoy-behaviour.md (§3g, §4i/j, §8) or the `envoy` 1.40 binary."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.dataplane.conftest import RawConn, get, shape, wait_stat
from tests.support.configs import bootstrap, cluster, route

UST = ("x-envoy-upstream-service-time", "<ms>")
DATE = ("date", "<date>")
SERVER = ("server", "envoy")


@pytest.fixture
def proxy(make_proxy: Any, upstream: Any) -> Any:
    vhosts = [
        {"name": "nomatch", "domains": ["nomatch.example"], "routes": []},
        {"name": "main", "domains": ["*"], "routes": [
            {"match": {"prefix": "/direct"},
             "direct_response": {"status": 200, "body": {"inline_string": "hello direct"}}},
            route("/", "up"),
        ]},
    ]
    return make_proxy(bootstrap([], [cluster("up", upstream.port)], virtual_hosts=vhosts))


def test_sequential_requests_on_one_client_connection_use_one_upstream_connection(proxy: Any, upstream: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        for i in range(10):
            assert c.request(get(f"/r{i}")).status == 200
    assert [r.target for r in upstream.requests] == [f"/r{i}" for i in range(10)]
    assert upstream.connections == 1


def test_upstream_connection_reused_across_client_connections(proxy: Any, upstream: Any) -> None:
    # one request at a time over 5 client connections (with httpx and with curl): the pooled
    # upstream connection serves them all
    port = proxy.listener_port()
    for _ in range(3):
        with httpx.Client() as client:
            for _ in range(3):
                assert client.get(f"http://127.0.0.1:{port}/a").status_code == 200
    import subprocess

    for _ in range(2):
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/c"],
                             capture_output=True, text=True, timeout=10, check=True)
        assert out.stdout == "200"
    assert len(upstream.requests) == 11
    assert upstream.connections == 1


def test_concurrent_client_connections_keep_upstream_connections_small(proxy: Any, upstream: Any) -> None:
    # 4 client connections open at once, 5 rounds of one request each: at most one upstream
    # connection per concurrently active request, reused across rounds
    conns = [RawConn(proxy.listener_port()) for _ in range(4)]
    try:
        for _ in range(5):
            for c in conns:
                c.send(get("/delay/20"))
            for c in conns:
                assert c.read_response().status == 200
    finally:
        for c in conns:
            c.close()
    assert len(upstream.requests) == 20
    assert upstream.connections <= 4


HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@pytest.mark.parametrize(
    "extra",
    [
        {"typed_extension_protocol_options": {HTTP_OPTIONS_KEY: {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 2},
            "explicit_http_config": {"http_protocol_options": {}},
        }}},
        {"max_requests_per_connection": 2},  # deprecated field, still honoured by Envoy
    ],
    ids=["typed_extension_protocol_options", "deprecated-field"],
)
def test_max_requests_per_connection(make_proxy: Any, upstream: Any, extra: dict[str, Any]) -> None:
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port, **extra)]))
    with RawConn(proxy.listener_port()) as c:
        for i in range(6):
            assert c.request(get(f"/r{i}")).status == 200
            # a new upstream connection every 2 requests
            assert upstream.connections == i // 2 + 1
    wait_stat(proxy, "cluster.up.upstream_cx_max_requests", 3)
    wait_stat(proxy, "cluster.up.upstream_cx_total", 3)


# --- pipelining -------------------------------------------------------------------------------------


def test_pipelined_local_reply_first_then_two_proxied_answered_in_order(proxy: Any, upstream: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/", host="nomatch.example") + get("/p2") + get("/p3"))
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        assert [r.status_line for r in (r1, r2, r3)] == ["HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
        assert shape(r1.headers) == [DATE, SERVER, ("content-length", "0")]
        assert b'"/p2"' in r2.body and b'"/p3"' in r3.body
        assert c.open_after(0.3)
    assert [r.target for r in upstream.requests] == ["/p2", "/p3"]
    assert upstream.connections == 1


@pytest.mark.parametrize("local", [get("/", host="nomatch.example"), get("/direct")], ids=["404", "direct"])
def test_pipelined_local_reply_between_two_proxied_answers_all_three(proxy: Any, upstream: Any, local: bytes) -> None:
    # A deliberate difference from Envoy 1.40 (docs/admin.md is about the admin; this one is in
    # docs/envoy-behaviour.md, "Differences"): when a local reply (no-route 404 or
    # direct_response) comes for a pipelined request while the proxied request before it is in
    # flight, Envoy answers the first two, then closes the connection without forwarding the
    # third (checked with the envoy binary, every run). pyproxy answers all three in order, as
    # RFC 9112 section 9.3.2 asks, and keeps the connection.
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/p1") + local + get("/p3"))
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        assert r1.status_line == "HTTP/1.1 200 OK" and b'"/p1"' in r1.body
        assert r2.status in (404, 200) and b"x-upstream-port" not in r2.raw
        assert r3.status_line == "HTTP/1.1 200 OK" and b'"/p3"' in r3.body
        assert c.open_after(0.3)
    assert [r.target for r in upstream.requests] == ["/p1", "/p3"]


def test_pipelined_post_with_body_and_direct_response(proxy: Any, upstream: Any) -> None:
    # survey §8b/§8c
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/direct") + b"POST /p2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc" + get("/p3"))
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
    assert r1.body == b"hello direct"
    assert b'"POST"' in r2.body and b'"body_len": 3' in r2.body
    assert b'"/p3"' in r3.body
    assert [(r.method, r.target, r.body_len) for r in upstream.requests] == [("POST", "/p2", 3), ("GET", "/p3", 0)]


def test_pipelined_responses_keep_order_when_first_is_slowest(proxy: Any, upstream: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/delay/300/a") + get("/b") + get("/delay/50/c"))
        bodies = [c.read_response().body for _ in range(3)]
    assert [b'"/delay/300/a"' in bodies[0], b'"/b"' in bodies[1], b'"/delay/50/c"' in bodies[2]] == [True] * 3


# --- Connection: close, HTTP/1.0 ----------------------------------------------------------------------


def test_client_connection_close_gets_connection_close_and_socket_closed(proxy: Any, upstream: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/h", extra="Connection: close\r\n"))
        # survey §3g: connection: close appended after server; closed right after the response
        assert (r.status_line, shape(r.headers)) == (
            "HTTP/1.1 200 OK",
            [("x-upstream-port", "<port>"), ("content-type", "application/json"),
             ("content-length", str(len(r.body))), UST, DATE, SERVER, ("connection", "close")],
        )
        assert c.closed_within(2.0)
    assert upstream.requests[0].header("connection") is None
    # the upstream connection is not closed because the client asked: it serves the next client
    with RawConn(proxy.listener_port()) as c2:
        assert c2.request(get("/again")).status == 200
    assert upstream.connections == 1


def test_connection_close_with_curl(proxy: Any) -> None:
    import subprocess

    out = subprocess.run(["curl", "-sS", "-i", "-H", "Connection: close", f"http://127.0.0.1:{proxy.listener_port()}/x"],
                         capture_output=True, timeout=10, check=True)
    assert out.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in out.stdout


UPGRADE_REQUIRED = [("content-length", "16"), ("content-type", "text/plain"), DATE, SERVER, ("connection", "close")]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /ten HTTP/1.0\r\nUser-Agent: t\r\n\r\n",  # survey §4i
        b"GET /ten HTTP/1.0\r\nHost: example.com\r\n\r\n",  # §4j
        b"GET /ten HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n",  # §4k
        b"GET / HTTP/9.9\r\nHost: example.com\r\n\r\n",  # §6f3
    ],
    ids=["1.0-no-host", "1.0-host", "1.0-keep-alive", "9.9"],
)
def test_http10_rejected_with_426(proxy: Any, upstream: Any, raw: bytes) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(raw)
        assert (r.status_line, shape(r.headers), r.body) == (
            "HTTP/1.1 426 Upgrade Required", UPGRADE_REQUIRED, b"Upgrade Required")
        assert c.closed_within(3.0)  # Envoy: delayed close, ~1 s
    assert upstream.requests == []


# --- a client that goes away mid-exchange (session 12) --------------------------------------------


class Silent:
    """An upstream reply that never comes: `head` (if any) is sent, then the upstream waits for
    the proxy to close the connection and sets `gone`."""

    def __init__(self, head: bytes = b"") -> None:
        import threading

        self.head = head
        self.got, self.gone = threading.Event(), threading.Event()

    def __call__(self, sock: Any, _extra: bytes) -> None:
        if self.head:
            sock.sendall(self.head)
        self.got.set()
        sock.settimeout(10)
        try:
            if sock.recv(1) == b"":
                self.gone.set()
        except OSError:
            self.gone.set()


@pytest.mark.parametrize("how", ["close", "half-close", "pipelined-close", "pipelined-half-close"])
def test_client_gone_while_waiting_ends_the_upstream_request(make_proxy: Any, make_canned: Any, how: str) -> None:
    # The request is in and the upstream is slow (no route timeout). When the client closes,
    # or half-closes (Envoy's HTTP/1 takes that for a close: no response), the proxy closes the
    # upstream connection at once instead of waiting for an answer nobody will read, and counts
    # downstream_rq_rx_reset; no response code is counted (checked with the envoy binary).
    import socket

    reply = Silent()
    up = make_canned({"*": reply})
    proxy = make_proxy(bootstrap([route("/", "up", timeout="0s")], [cluster("up", up.port)]))
    s = socket.create_connection(("127.0.0.1", proxy.listener_port()))
    # A pipelining client's second request waits behind the first; its close is seen all the same.
    s.sendall(get("/") + (get("/next") if how.startswith("pipelined") else b""))
    assert reply.got.wait(5)
    if how.endswith("half-close"):
        s.shutdown(socket.SHUT_WR)
    else:
        s.close()
    assert reply.gone.wait(5), "the upstream connection stayed open"
    if how.endswith("half-close"):
        s.settimeout(5)
        assert s.recv(100) == b""
        s.close()
    wait_stat(proxy, "http.ingress_http.downstream_rq_rx_reset", 1)
    stats = proxy.stats()
    assert stats.get("http.ingress_http.downstream_rq_completed", 0) == 0
    assert stats.get("cluster.up.upstream_rq_5xx", 0) == 0


def test_client_gone_while_the_response_streams_ends_the_upstream_request(
    make_proxy: Any, make_canned: Any
) -> None:
    import socket

    reply = Silent(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    up = make_canned({"*": reply})
    proxy = make_proxy(bootstrap([route("/", "up", timeout="0s")], [cluster("up", up.port)]))
    s = socket.create_connection(("127.0.0.1", proxy.listener_port()))
    s.sendall(get("/"))
    s.settimeout(5)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
    s.close()
    assert reply.gone.wait(5), "the upstream connection stayed open"
    wait_stat(proxy, "http.ingress_http.downstream_rq_rx_reset", 1)


def test_pipelined_request_arriving_in_pieces_during_a_slow_exchange(make_proxy: Any, upstream: Any) -> None:
    # The client watch reads what comes while the first request is served; a pipelined head
    # that arrives in two pieces meanwhile is served whole afterwards (nothing is left waiting
    # for a readiness event that will not come again). Each piece is sent once the proxy has
    # read the bytes before it (its byte counter says so).
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    rx = "http.ingress_http.downstream_cx_rx_bytes_total"
    with RawConn(proxy.listener_port()) as c:
        first_head, second = get("/delay/400/first"), get("/second")
        c.send(first_head + second[:10])
        wait_stat(proxy, rx, len(first_head) + 10)
        c.send(second[10:20])
        wait_stat(proxy, rx, len(first_head) + 20)
        c.send(second[20:])
        c.sock.settimeout(5)
        first = c.read_response()
        assert first.status == 200 and b"/delay/400/first" in first.body
        again = c.read_response()
        assert again.status == 200 and b"/second" in again.body
