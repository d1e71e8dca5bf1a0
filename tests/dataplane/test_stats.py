"""Which stats a request moves, and by how much, in the cases where a request fails: found in
session 12 by comparing `/stats` after the same traffic through pyproxy and the envoy binary,
and pinned here. Every test passes against both (`PYPROXY_DATAPLANE_TARGET=envoy`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.dataplane.conftest import RawConn, get, wait_for
from tests.support.configs import bootstrap, cluster, route, with_second_listener


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port bound but never listened on: connects to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def settled(proxy: Any, expected: dict[str, int]) -> dict[str, int]:
    """Waits until every stat in `expected` has its value (stats are merged when read), then
    returns them all."""
    def check() -> dict[str, int] | None:
        st = proxy.stats()
        return st if all(st.get(k, 0) == v for k, v in expected.items()) else None

    try:
        return wait_for(check, timeout=5, what="the stats")
    except AssertionError:
        st = proxy.stats()
        raise AssertionError({k: (st.get(k, 0), v) for k, v in expected.items() if st.get(k, 0) != v}) from None


def test_refused_connect_charges_a_503_but_sends_no_request(make_proxy: Any, dead_port: int) -> None:
    # The request waited on a connection that failed: it is ejected from the pending queue, the
    # 503 is charged (upstream_rq_completed with it), and it never counts as sent upstream. The
    # connection counts as made and destroyed.
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", dead_port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/")).status == 503
    settled(proxy, {
        "cluster.up.upstream_rq_total": 0, "cluster.up.upstream_rq_pending_total": 1,
        "cluster.up.upstream_rq_pending_failure_eject": 1, "cluster.up.upstream_rq_503": 1,
        "cluster.up.upstream_rq_completed": 1, "cluster.up.upstream_cx_total": 1,
        "cluster.up.upstream_cx_http1_total": 1, "cluster.up.upstream_cx_connect_fail": 1,
        "cluster.up.upstream_cx_destroy": 1, "cluster.up.upstream_cx_destroy_remote": 1,
        "cluster.up.upstream_cx_active": 0,
    })


def test_no_host_is_a_healthy_panic_and_a_charged_503(make_proxy: Any) -> None:
    c = cluster("up")
    c["load_assignment"]["endpoints"] = []
    proxy = make_proxy(bootstrap([route("/", "up")], [c]))
    with RawConn(proxy.listener_port()) as conn:
        assert conn.request(get("/")).status == 503
    settled(proxy, {
        "cluster.up.upstream_rq_total": 0, "cluster.up.upstream_cx_none_healthy": 1,
        "cluster.up.lb_healthy_panic": 1, "cluster.up.upstream_rq_503": 1, "cluster.up.upstream_rq_completed": 1,
    })


@pytest.mark.parametrize(
    ("path", "rt", "code"),
    [("/hang", {"timeout": "0.3s"}, 504), ("/reset", {}, 503)],
    ids=["route-timeout", "upstream-reset"],
)
def test_routers_own_answer_is_charged_as_completed(
    make_proxy: Any, upstream: Any, path: str, rt: dict[str, Any], code: int
) -> None:
    # Envoy charges its own 504 (timeout) or 503 (upstream closed before answering) like an
    # upstream's code; an HTTP/1 upstream that closes resets no stream (no upstream_rq_rx_reset).
    proxy = make_proxy(bootstrap([route("/", "up", **rt)], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get(path)).status == code
    settled(proxy, {
        "cluster.up.upstream_rq_total": 1, f"cluster.up.upstream_rq_{code}": 1, "cluster.up.upstream_rq_5xx": 1,
        "cluster.up.upstream_rq_completed": 1, "cluster.up.upstream_rq_rx_reset": 0,
        "cluster.up.upstream_rq_timeout": 1 if code == 504 else 0,
        # the timeout closes the connection from our side, the reset from the upstream's
        "cluster.up.upstream_cx_destroy_with_active_rq": 1,
        "cluster.up.upstream_cx_destroy_local_with_active_rq": 1 if code == 504 else 0,
        "cluster.up.upstream_cx_destroy_remote_with_active_rq": 0 if code == 504 else 1,
    })


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n", 400),  # the head does not parse
        (b"GET / HTTP/1.0\r\n\r\n", 426),                           # the codec refuses the head
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
    ids=["unparsable-head", "http10", "unknown-transfer-coding"],
)
def test_codec_refusal_counts_an_answered_then_reset_stream(make_proxy: Any, upstream: Any, raw: bytes,
                                                             code: int) -> None:
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(raw)
        assert c.read_response().status == code
    settled(proxy, {
        "http.ingress_http.downstream_rq_total": 1, "http.ingress_http.downstream_rq_http1_total": 1,
        f"http.ingress_http.downstream_rq_{code // 100}xx": 1, "http.ingress_http.downstream_rq_completed": 1,
        "http.ingress_http.downstream_rq_rx_reset": 1, "http.ingress_http.downstream_cx_protocol_error": 1,
    })


def test_upstream_closing_an_idle_pooled_connection_is_noticed(make_proxy: Any, make_canned: Any) -> None:
    # The upstream closes a kept-alive connection while it sits in the pool: the connection is
    # dropped (upstream_cx_active back to 0) without waiting for the next request or the
    # cluster's idle timeout (an hour by default). Envoy sees it at once; pyproxy within its
    # once-a-second sweep.
    up = make_canned({"*": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/")).status == 200
    settled(proxy, {"cluster.up.upstream_cx_active": 1})
    up.stop()
    start = time.monotonic()
    settled(proxy, {"cluster.up.upstream_cx_active": 0, "cluster.up.upstream_cx_destroy": 1})
    assert time.monotonic() - start < 3


def test_byte_counters_count_what_crossed_each_connection(make_proxy: Any, make_canned: Any) -> None:
    # downstream_cx_rx/tx_bytes_total and upstream_cx_rx/tx_bytes_total: every byte read and
    # written on each side, heads and bodies, as the peers saw them.
    resp = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-up: 1\r\n\r\nhello"
    up = make_canned({"*": resp})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    req = b"POST /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"
    got = b""
    with socket.create_connection(("127.0.0.1", proxy.listener_port())) as s:
        s.settimeout(5)
        s.sendall(req)
        while not (b"\r\n\r\n" in got and got.endswith(b"hello")):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        (head,) = up.heads
        settled(proxy, {
            "http.ingress_http.downstream_cx_rx_bytes_total": len(req),
            "http.ingress_http.downstream_cx_tx_bytes_total": len(got),
            "cluster.up.upstream_cx_tx_bytes_total": len(head) + 3,
            "cluster.up.upstream_cx_rx_bytes_total": len(resp),
        })


def test_byte_counters_count_local_replies_and_refused_requests(make_proxy: Any) -> None:
    proxy = make_proxy(bootstrap([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}], []))
    sent, got = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET / HTTP/1.0\r\n\r\n", b""
    with socket.create_connection(("127.0.0.1", proxy.listener_port())) as s:
        s.settimeout(5)
        s.sendall(sent)
        while chunk := s.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 ") == 2  # the direct 200, then the 426 that closes
    settled(proxy, {
        "http.ingress_http.downstream_cx_rx_bytes_total": len(sent),
        "http.ingress_http.downstream_cx_tx_bytes_total": len(got),
    })


@pytest.mark.parametrize(
    ("resp", "side"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok", "local"),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nclose-delimited", "remote"),
    ],
    ids=["connection-close", "close-delimited"],
)
def test_upstream_that_says_close(make_proxy: Any, make_canned: Any, resp: bytes, side: str) -> None:
    # An upstream's `connection: close` is a close notification. A response with a length
    # ends on its own and the proxy closes the connection; a close-delimited one ends with the
    # upstream's close. Neither has a request on it then.
    up = make_canned({"*": resp})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/")).status == 200
    settled(proxy, {
        "cluster.up.upstream_cx_close_notify": 1, "cluster.up.upstream_cx_destroy": 1,
        f"cluster.up.upstream_cx_destroy_{side}": 1, "cluster.up.upstream_cx_destroy_with_active_rq": 0,
    })


@pytest.mark.parametrize("how", ["client-closes-idle", "request-says-close", "client-gone-mid-request"])
def test_client_connection_end_is_counted_by_side(make_proxy: Any, make_canned: Any, how: str) -> None:
    import threading

    hold = threading.Event()
    up = make_canned({"*": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                      "/hang": lambda sock, _extra: hold.wait(10)})
    proxy = make_proxy(bootstrap([route("/", "up", timeout="0s")], [cluster("up", up.port)]))
    try:
        s = socket.create_connection(("127.0.0.1", proxy.listener_port()))
        s.settimeout(5)
        if how == "client-gone-mid-request":
            s.sendall(get("/hang"))
            wait_for(lambda: up.heads, what="the request upstream")
            s.close()
            expected = {"remote": 1, "remote_active_rq": 1, "active_rq": 1, "local": 0}
        else:
            extra = "connection: close\r\n" if how == "request-says-close" else ""
            s.sendall(get("/", extra=extra))
            got = b""
            while not got.endswith(b"ok"):
                got += s.recv(65536)
            if how == "request-says-close":
                assert s.recv(100) == b""  # the proxy closes
                expected = {"local": 1, "remote": 0, "active_rq": 0}
            else:
                expected = {"remote": 1, "local": 0, "active_rq": 0}
            s.close()
        settled(proxy, {"http.ingress_http.downstream_cx_destroy": 1,
                        **{f"http.ingress_http.downstream_cx_destroy_{k}": v for k, v in expected.items()}})
    finally:
        hold.set()


@pytest.mark.parametrize("client_closes", [False, True], ids=["client-stays", "client-closes"])
def test_delayed_close_timeout_counts_a_client_that_stays(make_proxy: Any, client_closes: bool) -> None:
    # A reply to a request whose body is not read closes the connection after a delay that
    # reads what the client still sends (Envoy's delayed close, 1 s). A client that has not
    # closed by then is closed on, counted as downstream_cx_delayed_close_timeout; one that
    # closes first is not. (pyproxy sends its FIN with the reply, Envoy after the delay: the
    # client here neither waits for it nor answers it.)
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", 9)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(b"POST /p HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: gzip\r\n\r\nxx")
        assert c.read_response().status == 501
        if client_closes:
            c.sock.shutdown(socket.SHUT_WR)
            settled(proxy, {"http.ingress_http.downstream_cx_destroy": 1})
        else:
            settled(proxy, {"http.ingress_http.downstream_cx_delayed_close_timeout": 1,
                            "http.ingress_http.downstream_cx_destroy": 1,
                            "http.ingress_http.downstream_cx_destroy_local": 1})
    assert proxy.stats().get("http.ingress_http.downstream_cx_delayed_close_timeout", 0) == (0 if client_closes else 1)


def test_delayed_close_ends_a_client_that_keeps_sending(make_proxy: Any) -> None:
    # The delay ends at its deadline even while the client's bytes keep coming: the connection
    # is closed on it (its sends then fail) and counted as a delayed close timeout.
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", 9)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(b"POST /p HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: gzip\r\n\r\nxx")
        assert c.read_response().status == 501
        start = time.monotonic()
        c.sock.settimeout(10)
        with pytest.raises(OSError):
            while time.monotonic() - start < 10:
                c.sock.sendall(b"x" * 65536)
        assert time.monotonic() - start < 5
    settled(proxy, {"http.ingress_http.downstream_cx_delayed_close_timeout": 1,
                    "http.ingress_http.downstream_cx_destroy": 1})


def test_router_and_per_listener_counts(make_proxy: Any, upstream: Any) -> None:
    # The router's rq_total counts every request that reaches routing, found or not (a codec
    # refusal never gets there); the listener keeps its own copy of the response classes.
    proxy = make_proxy(bootstrap([route("/x", "up")], [cluster("up", upstream.port)]))
    port = proxy.listener_port()
    with RawConn(port) as c:
        assert c.request(get("/x")).status == 200
        assert c.request(get("/nope")).status == 404
    with RawConn(port) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        assert c.read_response().status == 426
    lst = "listener.127.0.0.1_0.http.ingress_http"  # named after the configured address, as Envoy
    settled(proxy, {
        "http.ingress_http.rq_total": 2, "http.ingress_http.no_route": 1,
        f"{lst}.downstream_rq_2xx": 1, f"{lst}.downstream_rq_4xx": 2, f"{lst}.downstream_rq_completed": 3,
        "http.ingress_http.downstream_rq_completed": 3,
    })


def test_external_copies_of_the_response_counts(make_proxy: Any, upstream: Any, dead_port: int) -> None:
    # Every request is external here (no internal_address_config; a client's x-envoy-internal
    # is dropped): Envoy charges each code to cluster.<name>.external.* as well, its own 503
    # and 504 included.
    empty = cluster("none")
    empty["load_assignment"]["endpoints"] = []
    routes = [route("/hang", "up", timeout="0.3s"), route("/dead", "dead"), route("/none", "none"), route("/", "up")]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port), cluster("dead", dead_port), empty]))
    with RawConn(proxy.listener_port()) as c:
        for path, code in (("/x", 200), ("/x", 200), ("/hang", 504), ("/dead", 503), ("/none", 503)):
            assert c.request(get(path, extra="x-envoy-internal: true\r\n")).status == code
    settled(proxy, {
        "cluster.up.external.upstream_rq_200": 2, "cluster.up.external.upstream_rq_2xx": 2,
        "cluster.up.external.upstream_rq_504": 1, "cluster.up.external.upstream_rq_5xx": 1,
        "cluster.up.external.upstream_rq_completed": 3,
        "cluster.dead.external.upstream_rq_503": 1, "cluster.dead.external.upstream_rq_completed": 1,
        "cluster.none.upstream_rq_503": 1, "cluster.none.external.upstream_rq_503": 1,
    })
    assert "cluster.up.internal.upstream_rq_200" not in proxy.stats()


def test_malformed_upstream_body_is_a_protocol_error(make_proxy: Any, make_canned: Any) -> None:
    # The head went to the client; the chunked body that follows is malformed: Envoy's codec
    # counts an upstream protocol error and closes the connection from its side. The bad line
    # is sent once the client has the head (a read of its own), then the upstream waits for
    # the proxy's close.
    import threading

    head_seen = threading.Event()

    def reply(sock: Any, _extra: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        assert head_seen.wait(5)
        sock.sendall(b"zz\r\n")
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    up = make_canned({"*": reply})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with socket.create_connection(("127.0.0.1", proxy.listener_port())) as s:
        s.settimeout(5)
        s.sendall(get("/"))
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head_seen.set()
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 OK")
    settled(proxy, {"cluster.up.upstream_cx_protocol_error": 1,
                    "cluster.up.upstream_cx_destroy_local_with_active_rq": 1})


def test_early_response_has_no_service_time_and_resets_both_sides(make_proxy: Any, make_canned: Any) -> None:
    # The upstream answers before the request body came: Envoy sets x-envoy-upstream-service-time
    # only once the whole request has gone upstream, so this response has none; the upstream
    # connection closes with the request on it, and the client's unread request is reset.
    up = make_canned({"*": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"}, early=True)
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 10\r\n\r\nab")
        r = c.read_response()
        assert (r.status, r.body, r.header("connection")) == (200, b"ok", "close")
        assert r.header("x-envoy-upstream-service-time") is None, r.headers
    settled(proxy, {
        "http.ingress_http.downstream_rq_response_before_rq_complete": 1,
        "http.ingress_http.downstream_rq_rx_reset": 1,
        "cluster.up.upstream_cx_destroy_local_with_active_rq": 1,
    })


# A connect to a stalled listener gets through only when one of its SYNs, sent again 1, 3, 7,
# 15 and 31 s after the first, finds the accept queue drained: a connect timeout of 40 s keeps
# the later ones, so a test slowed down (a busy machine) before it drains the queue still
# gets the connection, at the next of them.
STALLED_CONNECT_TIMEOUT = "40s"


def stalled_proxy(make_proxy: Any, lst: socket.socket) -> Any:
    return make_proxy(bootstrap([route("/", "up")],
                                [cluster("up", lst.getsockname()[1], connect_timeout=STALLED_CONNECT_TIMEOUT)]))


@pytest.fixture
def stalled_port() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listener whose accept queue is full: a connect to it hangs (its SYNs are dropped and
    sent again) until the queue is drained. Yields the listener and the connections filling
    the queue.

    With a backlog of 0 the queue holds one connection, and every SYN that finds it empty is
    answered with a SYN cookie. One filler, connected at once, fills it. (With more, a
    filler's SYN sent again could meet the proxy's once `accept_proxy` drains the queue: both
    get a cookie, and the ACK that comes second finds the queue full and is dropped, so that
    client takes itself for connected while the listener never sees it until it sends.)"""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    f = socket.create_connection(("127.0.0.1", port), timeout=5)
    fillers = [f]
    try:
        yield lst, fillers
    finally:
        for f in fillers:
            f.close()
        lst.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/"),
        b"POST / HTTP/1.1\r\nhost: example.com\r\ncontent-length: 10\r\n\r\nhalf",
        b"POST / HTTP/1.1\r\nhost: example.com\r\ncontent-length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n",
    ],
    ids=["no-body", "part-of-the-body", "whole-body", "chunked-part"],
)
def test_client_gone_while_connecting_cancels_the_request(
    make_proxy: Any, stalled_port: tuple[socket.socket, list[socket.socket]], request_bytes: bytes
) -> None:
    # The upstream's accept queue is full, so the connect hangs; the client gives up and
    # closes: the pending request is cancelled, never sent (Envoy: upstream_rq_cancelled),
    # with or without a body under way.
    lst, fillers = stalled_port
    proxy = stalled_proxy(make_proxy, lst)
    s = socket.create_connection(("127.0.0.1", proxy.listener_port()))
    s.sendall(request_bytes)
    wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == 1, what="the pending request")
    settled(proxy, {"cluster.up.upstream_rq_pending_active": 1})
    s.close()
    start = time.monotonic()
    # The connection being made goes on (active from the attempt on, as in Envoy)...
    settled(proxy, {"cluster.up.upstream_rq_cancelled": 1, "http.ingress_http.downstream_rq_rx_reset": 1,
                    "cluster.up.upstream_rq_total": 0, "cluster.up.upstream_rq_completed": 0,
                    "cluster.up.upstream_cx_active": 1, "cluster.up.upstream_cx_destroy": 0,
                    "cluster.up.upstream_rq_pending_active": 0})
    assert time.monotonic() - start < 3
    # ... and the next request, come while it still hangs, waits for it rather than making a
    # connection of its own.
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/again"))
        with accept_proxy(lst, fillers) as up:
            assert read_head(up).startswith(b"GET /again HTTP/1.1\r\n")
            up.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            assert c.read_response().status == 200
    settled(proxy, {"cluster.up.upstream_cx_total": 1, "cluster.up.upstream_rq_total": 1})


def cancel_while_connecting(proxy: Any, n: int) -> None:
    """Sends a request whose connect hangs and closes its client once it is pending: the `n`th
    such request, cancelled."""
    s = socket.create_connection(("127.0.0.1", proxy.listener_port()))
    s.sendall(get(f"/gone{n}"))
    wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == n, what="the pending request")
    s.close()
    wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_cancelled") == n, what="the cancel")


def accept_proxy(lst: socket.socket, fillers: list[socket.socket]) -> socket.socket:
    """Accepts the proxy's connection to a stalled listener: the fillers' connections come
    first or between (as their SYNs are sent again) and are closed."""
    filler_addrs = {f.getsockname() for f in fillers}
    lst.settimeout(20)
    while True:
        up, peer = lst.accept()
        if peer not in filler_addrs:
            up.settimeout(10)
            return up
        up.close()


def read_head(up: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = up.recv(65536)
        assert chunk, got
        got += chunk
    return got


def test_body_sent_while_connecting_goes_upstream_whole(
    make_proxy: Any, stalled_port: tuple[socket.socket, list[socket.socket]]
) -> None:
    # The body comes while the upstream connection is being made: it is read ahead (the
    # proxy's rx byte counter shows it) and then sent upstream with the head once connected.
    lst, fillers = stalled_port
    proxy = stalled_proxy(make_proxy, lst)
    head = b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 6000\r\n\r\n"
    body = bytes(range(256)) * 23 + b"x" * 112
    with RawConn(proxy.listener_port()) as c:
        c.send(head)
        wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == 1, what="the pending request")
        c.send(body[:3000])
        c.send(body[3000:])
        rx = "http.ingress_http.downstream_cx_rx_bytes_total"
        wait_for(lambda: proxy.stats().get(rx) == len(head) + len(body), what="the body read ahead")
        # Let the connect through.
        up = accept_proxy(lst, fillers)
        got = b""
        while not (b"\r\n\r\n" in got and len(got.split(b"\r\n\r\n", 1)[1]) >= len(body)):
            chunk = up.recv(65536)
            assert chunk, got
            got += chunk
        with up:
            assert got.endswith(b"\r\n\r\n" + body)
            assert got.startswith(b"POST /p HTTP/1.1\r\n")
            up.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            r = c.read_response()
            assert (r.status, r.body) == (200, b"ok")
    # Nothing more went upstream than the head and the body, once each.
    settled(proxy, {"cluster.up.upstream_cx_tx_bytes_total": len(got)})


def test_request_while_a_cancelled_connect_goes_on_takes_that_connection(
    make_proxy: Any, stalled_port: tuple[socket.socket, list[socket.socket]]
) -> None:
    # A request whose client left is cancelled while its connection is being made; the next
    # request, come while that connect still hangs, waits for that connection rather than
    # opening a second one (Envoy's pool counts the attempt's capacity for pending requests).
    lst, fillers = stalled_port
    proxy = stalled_proxy(make_proxy, lst)
    cancel_while_connecting(proxy, 1)
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/again"))
        wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == 2, what="the second request")
        settled(proxy, {"cluster.up.upstream_cx_total": 1, "cluster.up.upstream_cx_active": 1,
                        "cluster.up.upstream_rq_pending_active": 1})
        up = accept_proxy(lst, fillers)
        with up:
            assert read_head(up).startswith(b"GET /again HTTP/1.1\r\n")
            up.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            assert c.read_response().status == 200
    settled(proxy, {"cluster.up.upstream_cx_total": 1, "cluster.up.upstream_rq_total": 1,
                    "cluster.up.upstream_rq_cancelled": 1})


def test_request_waiting_on_a_cancelled_connect_that_times_out_gets_503(
    make_proxy: Any, stalled_port: tuple[socket.socket, list[socket.socket]]
) -> None:
    # The connection the second request waits for never comes up: its connect timeout fails
    # that request too (Envoy ejects the pending requests of a failed connect), and no second
    # connection is tried.
    lst, _fillers = stalled_port
    # Room for the second request to come (two stats polls and a connect) on a busy machine.
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", lst.getsockname()[1], connect_timeout="5s")]))
    cancel_while_connecting(proxy, 1)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/again"))
        assert (r.status, r.body) == (
            503, b"upstream connect error or disconnect/reset before headers. reset reason: connection timeout")
        assert r.header("connection") is None
    settled(proxy, {"cluster.up.upstream_cx_total": 1, "cluster.up.upstream_cx_connect_timeout": 1,
                    "cluster.up.upstream_rq_pending_total": 2, "cluster.up.upstream_rq_pending_failure_eject": 1,
                    "cluster.up.upstream_rq_cancelled": 1, "cluster.up.upstream_rq_total": 0,
                    "cluster.up.upstream_cx_active": 0, "cluster.up.upstream_rq_pending_active": 0})


def test_connection_whose_waiting_request_also_left_waits_in_the_pool(
    make_proxy: Any, stalled_port: tuple[socket.socket, list[socket.socket]]
) -> None:
    # Two requests in turn give up on the same connection being made; once up, it waits in
    # the pool and serves the third.
    lst, fillers = stalled_port
    proxy = stalled_proxy(make_proxy, lst)
    for n in (1, 2):
        cancel_while_connecting(proxy, n)
    # Up, and pooled: the third request goes on it without waiting or another connect.
    with accept_proxy(lst, fillers) as up:
        settled(proxy, {"cluster.up.upstream_cx_total": 1, "cluster.up.upstream_cx_active": 1})
        with RawConn(proxy.listener_port()) as c:
            c.send(get("/third"))
            assert read_head(up).startswith(b"GET /third HTTP/1.1\r\n")
            up.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            assert c.read_response().status == 200
    settled(proxy, {"cluster.up.upstream_cx_total": 1, "cluster.up.upstream_rq_total": 1,
                    "cluster.up.upstream_rq_cancelled": 2, "cluster.up.upstream_rq_pending_total": 2})


# --- *_bytes_buffered ---------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
RX_BUF = "http.ingress_http.downstream_cx_rx_bytes_buffered"
TX_BUF = "http.ingress_http.downstream_cx_tx_bytes_buffered"
UP_RX_BUF = "cluster.up.upstream_cx_rx_bytes_buffered"
UP_TX_BUF = "cluster.up.upstream_cx_tx_bytes_buffered"


def test_read_buffers_count_their_last_read_until_the_connection_goes(make_proxy: Any, make_canned: Any) -> None:
    # Envoy's rx_bytes_buffered is the read buffer's length right after the connection's last
    # read (it does not look again once the codec has taken the bytes), so an idle keep-alive
    # connection counts its last request, and a pooled upstream connection its last response.
    up = make_canned({"*": OK})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    one, longer = get("/"), get("/", extra="x-pad: 0123456789\r\n")
    with RawConn(proxy.listener_port()) as c:
        assert c.request(one).status == 200
        settled(proxy, {RX_BUF: len(one), UP_RX_BUF: len(OK), TX_BUF: 0, UP_TX_BUF: 0})
        assert c.request(longer).status == 200
        settled(proxy, {RX_BUF: len(longer)})
        # Pipelined: Envoy looks again as its codec takes each next request up, so the last
        # one's bytes are what counts.
        c.send(one + longer + one)
        assert [c.read_response().status for _ in range(3)] == [200, 200, 200]
        settled(proxy, {RX_BUF: len(one)})
    # The client connection ends: its share goes; the pooled upstream one keeps its own.
    settled(proxy, {RX_BUF: 0, UP_RX_BUF: len(OK)})


def test_a_client_that_does_not_read_leaves_response_bytes_buffered(make_proxy: Any, make_canned: Any) -> None:
    # What waits for the client's socket to take it counts in tx_bytes_buffered (pyproxy holds
    # at most a read's worth, Envoy up to its buffer limit), and is gone once the client reads.
    size = 16 << 20  # more than the kernel's socket buffers take (tcp_wmem max: 4 MiB)
    up = make_canned({"*": b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with socket.socket() as s:
        # A small window, set before the connect, so that the kernel takes less of it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", proxy.listener_port()))
        s.sendall(get("/big"))
        wait_for(lambda: proxy.stats().get(TX_BUF, 0) > 0 and proxy.stats().get(UP_RX_BUF, 0) > 0,
                 what="the response to back up")
        s.settimeout(10)
        got = 0
        while got < size:
            chunk = s.recv(1 << 20)
            assert chunk
            got += len(chunk)
        wait_for(lambda: proxy.stats().get(TX_BUF) == 0, what="the buffered bytes to go")
    settled(proxy, {TX_BUF: 0, RX_BUF: 0})


def test_an_upstream_that_does_not_read_leaves_request_bytes_buffered(make_proxy: Any) -> None:
    # The request body waits for the upstream's socket: upstream_cx_tx_bytes_buffered. It is
    # taken off once that connection ends.
    import threading

    lst = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    ready = threading.Event()

    def accept() -> None:
        s, _ = lst.accept()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        accepted.append(s)
        ready.set()

    threading.Thread(target=accept, daemon=True).start()
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", lst.getsockname()[1])]))
    size = 16 << 20  # more than the kernel's socket buffers take (tcp_wmem max: 4 MiB)
    with socket.create_connection(("127.0.0.1", proxy.listener_port())) as c:
        c.sendall(b"POST /sink HTTP/1.1\r\nhost: example.com\r\ncontent-length: %d\r\n\r\n" % size)
        c.settimeout(0.2)
        try:
            for _ in range(size // 65536):
                c.sendall(b"y" * 65536)
        except TimeoutError:
            pass  # the proxy stopped reading: its buffer towards the upstream is full
        wait_for(lambda: proxy.stats().get(UP_TX_BUF, 0) > 0, what="the body to back up")
        assert ready.wait(5)
        accepted[0].close()
        lst.close()
        settled(proxy, {UP_TX_BUF: 0})


def test_cluster_response_classes_appear_once_counted(make_proxy: Any, make_canned: Any) -> None:
    # Envoy creates a cluster's upstream_rq_<N>xx on first use (its connection manager's
    # downstream_rq_<N>xx are there from the start, at 0).
    up = make_canned({"*": OK})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/")).status == 200
    st = settled(proxy, {"cluster.up.upstream_rq_2xx": 1, "cluster.up.upstream_rq_200": 1})
    assert [k for k in st if k.startswith("cluster.up.upstream_rq_") and k.endswith("xx")] == [
        "cluster.up.upstream_rq_2xx"]
    assert st["http.ingress_http.downstream_rq_5xx"] == 0


def test_request_waiting_on_a_cancelled_connect_takes_a_connection_given_back_first(make_proxy: Any) -> None:
    # A request waits for a connection being made for a request that left; another request's
    # connection to the same host comes back first: the waiting request goes on that one, at
    # once, not on the connection still being made.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    lst.settimeout(10)
    proxy = stalled_proxy(make_proxy, lst)
    with lst, RawConn(proxy.listener_port()) as first:
        first.send(get("/first"))
        busy, _ = lst.accept()  # the queue was empty: the first request's connection is up
        with busy:
            busy.settimeout(10)
            assert read_head(busy).startswith(b"GET /first HTTP/1.1\r\n")
            with socket.create_connection(lst.getsockname(), timeout=5):  # fills the queue
                s = socket.create_connection(("127.0.0.1", proxy.listener_port()))
                s.sendall(get("/gone"))
                wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == 2,
                         what="the connect that hangs")
                s.close()
                wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_cancelled") == 1, what="the cancel")
                with RawConn(proxy.listener_port()) as waiting:
                    waiting.send(get("/waiting"))
                    wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == 3,
                             what="the request waiting")
                    # The first answer gives its connection back, and the waiting request
                    # comes on it.
                    busy.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    assert first.read_response().status == 200
                    assert read_head(busy).startswith(b"GET /waiting HTTP/1.1\r\n")
                    busy.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    assert waiting.read_response().status == 200
    settled(proxy, {"cluster.up.upstream_cx_total": 2, "cluster.up.upstream_rq_total": 2,
                    "cluster.up.upstream_rq_cancelled": 1})


def test_membership_stats_at_start(make_proxy: Any) -> None:
    # Envoy 1.40: a cluster's first hosts are a membership change (none for a cluster without
    # hosts); max_host_weight is the largest weight of a STRICT_DNS cluster's hosts, and 0 for a
    # STATIC one; nothing is degraded or excluded without health checking.
    two = cluster("two", 1)
    two["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.2", "port_value": 1}}},
         "load_balancing_weight": 3})
    zero = {"name": "zero", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "zero", "endpoints": []}}
    dns = cluster("dns", 1)
    dns["type"] = "STRICT_DNS"
    dns["dns_lookup_family"] = "V4_ONLY"
    lb = dns["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    lb["endpoint"]["address"]["socket_address"]["address"] = "localhost"
    lb["load_balancing_weight"] = 7
    # Two workers: the cluster-wide figures are published once, not per worker.
    proxy = make_proxy(bootstrap([route("/", "two")], [two, zero, dns]), concurrency=2)
    st = settled(proxy, {
        "cluster.two.membership_change": 1, "cluster.two.membership_total": 2,
        "cluster.two.max_host_weight": 0, "cluster.two.membership_degraded": 0,
        "cluster.two.membership_excluded": 0,
        "cluster.zero.membership_change": 0, "cluster.zero.membership_total": 0,
        "cluster.dns.membership_change": 1, "cluster.dns.membership_total": 1,
        "cluster.dns.max_host_weight": 7,
    })
    present = {"cluster.zero.membership_degraded", "cluster.zero.membership_excluded", "cluster.zero.max_host_weight"}
    assert present <= set(st)


def test_manager_stats_at_start(make_proxy: Any) -> None:
    # Envoy 1.40 with two listeners and two clusters on two workers: each is added, and each
    # listener is created on each worker.
    config = with_second_listener(bootstrap([route("/", "a")], [cluster("a", 1), cluster("b", 2)]))
    proxy = make_proxy(config, concurrency=2)
    st = settled(proxy, {
        "cluster_manager.active_clusters": 2, "cluster_manager.warming_clusters": 0,
        "cluster_manager.cluster_added": 2, "cluster_manager.cluster_modified": 0,
        "cluster_manager.cluster_removed": 0,
        "listener_manager.total_listeners_active": 2, "listener_manager.total_listeners_warming": 0,
        "listener_manager.listener_added": 2, "listener_manager.listener_modified": 0,
        "listener_manager.listener_in_place_updated": 0, "listener_manager.listener_removed": 0,
        "listener_manager.listener_create_success": 4, "listener_manager.listener_create_failure": 0,
        "listener_manager.workers_started": 1,
    })
    assert {"cluster_manager.cluster_removed", "listener_manager.listener_create_failure"} <= set(st)


def test_a_bad_chunk_before_the_response_counts_one_reset(make_proxy: Any, upstream: Any) -> None:
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5x\r\nhello\r\n0\r\n\r\n")
        assert r.status == 400
    settled(proxy, {"http.ingress_http.downstream_rq_rx_reset": 1,
                    "http.ingress_http.downstream_cx_protocol_error": 1,
                    "http.ingress_http.downstream_rq_response_before_rq_complete": 1})


@pytest.mark.parametrize(
    ("policy", "weights", "expected"),
    [
        ("RING_HASH", [1, 1, 1], {"ring_hash_lb.size": 1026, "ring_hash_lb.min_hashes_per_host": 342,
                                  "ring_hash_lb.max_hashes_per_host": 342}),
        ("RING_HASH", [1, 2, 3], {"ring_hash_lb.size": 1026, "ring_hash_lb.min_hashes_per_host": 171,
                                  "ring_hash_lb.max_hashes_per_host": 513}),
        ("MAGLEV", [1, 1, 1], {"maglev_lb.min_entries_per_host": 21845, "maglev_lb.max_entries_per_host": 21846}),
        ("MAGLEV", [1, 2, 3], {"maglev_lb.min_entries_per_host": 10923, "maglev_lb.max_entries_per_host": 32768}),
    ],
    ids=["ring", "ring-weighted", "maglev", "maglev-weighted"],
)
def test_a_hashing_balancer_reports_its_table(make_proxy: Any, make_upstream: Any, policy: str,
                                              weights: list[int], expected: dict[str, int]) -> None:
    ups = [make_upstream() for _ in weights]
    c = cluster("up", *(u.port for u in ups), lb_policy=policy)
    for e, w in zip(c["load_assignment"]["endpoints"][0]["lb_endpoints"], weights, strict=True):
        e["load_balancing_weight"] = w
    p = make_proxy(bootstrap([route("/", "up")], [c]), concurrency=2)
    got = settled(p, {f"cluster.up.{k}": v for k, v in expected.items()})
    other = "maglev_lb." if policy == "RING_HASH" else "ring_hash_lb."
    assert not any(k.startswith(f"cluster.up.{other}") for k in got)
