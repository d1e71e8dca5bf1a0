"""`max_stream_duration`, the connection manager's (`common_http_protocol_options`) and the
route's: a forwarded request's whole life from its first byte, 504 (or 408 while the request is
not whole) `downstream duration timeout`, a reset once the response has begun; and a retry
policy's `per_try_idle_timeout`. Every
expectation here was checked against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy runs this
file against it; docs/envoy-behaviour.md section 27)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from tests.dataplane.conftest import RawConn, Tunnel, get, until_closed
from tests.support.configs import bootstrap, cluster, route
from tests.support.wait import wait_stat

HTTP = "http.ingress_http."
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Stalled:
    """An upstream response that waits: `OK` after `head_after` seconds, or with `head`, that
    head (and what follows it in `head`) at once and then nothing; either way `closed` is set
    once the proxy closes the connection first."""

    def __init__(self, head_after: float = 60.0, head: bytes = b"") -> None:
        self.head_after, self.head = head_after, head
        self.closed = threading.Event()

    def __call__(self, sock: socket.socket, _: bytes) -> None:
        if self.head:
            sock.sendall(self.head)
        if until_closed(sock, 60.0 if self.head else self.head_after):
            self.closed.set()
        elif not self.head:
            sock.sendall(OK)


def proxy_with(make_proxy: Any, up: Any, hcm_ms: str | None = None, **route_action: Any) -> Any:
    hcm = {"common_http_protocol_options": {"max_stream_duration": hcm_ms}} if hcm_ms else None
    return make_proxy(bootstrap([route("/", "up", **route_action)], [cluster("up", up.port)], hcm=hcm))


def test_before_the_response_a_504_and_the_connection_stays(make_proxy: Any, make_canned: Any) -> None:
    stalled = Stalled()
    up = make_canned({"/slow": stalled, "*": OK})
    p = proxy_with(make_proxy, up, "0.3s")
    with RawConn(p.listener_port()) as c:
        t0 = time.monotonic()
        r = c.request(get("/slow"))
        took = time.monotonic() - t0
        assert r.status == 504
        assert r.body == b"downstream duration timeout"
        assert r.header("connection") is None
        assert 0.25 < took < 2, took
        # The client connection goes on; the upstream one was closed under the request.
        assert c.request(get("/fast")).status == 200
    assert stalled.closed.wait(5)
    wait_stat(p, HTTP + "downstream_rq_max_duration_reached", 1)
    s = p.stats()
    assert s.get("cluster.up.upstream_rq_timeout", 0) == 0
    assert s.get("cluster.up.upstream_rq_504", 0) == 0
    assert s["cluster.up.upstream_cx_destroy_local_with_active_rq"] == 1


def test_a_request_not_yet_whole_gets_a_408_and_the_connection_closes(
    make_proxy: Any, make_canned: Any
) -> None:
    up = make_canned({"*": OK})
    p = proxy_with(make_proxy, up, "0.3s")
    with RawConn(p.listener_port()) as c:
        # The body never comes whole: Envoy answers at once (408) and closes.
        c.send(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc")
        r = c.read_response()
        assert r.status == 408
        assert r.body == b"downstream duration timeout"
        assert r.header("connection") == "close"
    wait_stat(p, HTTP + "downstream_rq_max_duration_reached", 1)


def test_the_duration_counts_from_the_first_byte(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"/slow": Stalled(head_after=0.2), "*": OK})
    p = proxy_with(make_proxy, up, "0.3s")
    with RawConn(p.listener_port()) as c:
        # The head trickles in over 0.2 s, the upstream answers 0.2 s later: 0.4 s in all.
        c.send(b"GET /slow HTTP/1.1\r\n")
        time.sleep(0.2)
        c.send(b"host: a\r\n\r\n")
        assert c.read_response().status == 504


def test_once_the_response_began_the_stream_is_reset(make_proxy: Any, make_canned: Any) -> None:
    stalled = Stalled(head_after=0, head=b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
    up = make_canned({"*": stalled})
    p = proxy_with(make_proxy, up, "0.3s")
    with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=5) as c:
        c.sendall(get("/"))
        got = b""
        while True:
            d = c.recv(4096)
            if not d:
                break
            got += d
    # The head and the chunk that came, then the connection closed with no last chunk.
    assert got.startswith(b"HTTP/1.1 200 OK")
    assert b"2\r\nhi\r\n" in got
    assert not got.endswith(b"0\r\n\r\n")
    wait_stat(p, HTTP + "downstream_rq_max_duration_reached", 1)
    s = p.stats()
    assert s[HTTP + "downstream_rq_tx_reset"] == 1
    assert s[HTTP + "downstream_rq_2xx"] == 1


def test_the_route_duration_replaces_the_connection_managers(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"/slow": Stalled(head_after=0.45), "/slower": Stalled(), "*": OK})
    p = proxy_with(make_proxy, up, "0.3s", max_stream_duration={"max_stream_duration": "0.6s"})
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/slow")).status == 200
        t0 = time.monotonic()
        assert c.request(get("/slower")).status == 504
        assert time.monotonic() - t0 > 0.55


def test_a_route_duration_of_0_disables_the_connection_managers(
    make_proxy: Any, make_canned: Any
) -> None:
    up = make_canned({"/slow": Stalled(head_after=0.5), "*": OK})
    p = proxy_with(make_proxy, up, "0.3s", max_stream_duration={"max_stream_duration": "0s"})
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/slow")).status == 200


def test_a_route_with_the_message_has_no_route_timeout(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"/slow": Stalled(head_after=0.5), "*": OK})
    # Envoy's "new timeouts": the route timeout (0.2 s here) no longer applies, nor is it
    # announced upstream; an empty message leaves the connection manager's duration (none).
    p = proxy_with(make_proxy, up, timeout="0.2s", max_stream_duration={})
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/slow")).status == 200
    assert all(b"x-envoy-expected-rq-timeout-ms" not in h for h in up.heads)


def test_the_duration_covers_every_try(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": Stalled()})
    # Tries of 0.15 s with (almost) no backoff: three time out, the fourth is under way at 0.5 s.
    p = proxy_with(make_proxy, up, "0.5s", retry_policy={
        "retry_on": "5xx", "num_retries": 5, "per_try_timeout": "0.15s",
        "retry_back_off": {"base_interval": "0.001s"}})  # fmt: skip
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/"))
        assert r.status == 504
        assert r.body == b"downstream duration timeout"
    wait_stat(p, HTTP + "downstream_rq_max_duration_reached", 1)
    s = p.stats()
    assert s["cluster.up.upstream_rq_per_try_timeout"] == 3
    assert s["cluster.up.upstream_rq_retry"] == 3


def test_an_upgraded_stream_ends_at_its_duration(make_proxy: Any, make_canned: Any) -> None:
    tunnel = Tunnel()
    up = make_canned({"*": tunnel})
    hcm = {"common_http_protocol_options": {"max_stream_duration": "0.4s"},
           "upgrade_configs": [{"upgrade_type": "websocket"}]}  # fmt: skip
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)], hcm=hcm))
    with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=5) as c:
        t0 = time.monotonic()
        c.sendall(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += c.recv(4096)
        assert got.startswith(b"HTTP/1.1 101")
        c.sendall(b"ping")
        # The tunnel carries bytes, then closes once the stream's 0.4 s are over.
        rest = got.partition(b"\r\n\r\n")[2]
        while True:
            d = c.recv(4096)
            if not d:
                break
            rest += d
        assert rest == b"ping"
        assert time.monotonic() - t0 > 0.35
    wait_stat(p, HTTP + "downstream_rq_max_duration_reached", 1)


# --- a retry policy's per_try_idle_timeout ---------------------------------------------------------


def idle_proxy(make_proxy: Any, up: Any, **policy: Any) -> Any:
    rp = {"per_try_idle_timeout": "0.2s", **policy}
    return make_proxy(bootstrap([route("/", "up", retry_policy=rp)], [cluster("up", up.port)]))


def test_per_try_idle_before_the_head_is_a_504(make_proxy: Any, make_canned: Any) -> None:
    stalled = Stalled()
    up = make_canned({"*": stalled})
    p = idle_proxy(make_proxy, up, retry_on="connect-failure")
    with RawConn(p.listener_port()) as c:
        t0 = time.monotonic()
        r = c.request(get("/"))
        assert r.status == 504
        assert r.body == b"upstream request timeout"
        assert 0.15 < time.monotonic() - t0 < 2
    # connect-failure does not try it again.
    wait_stat(p, "cluster.up.upstream_rq_per_try_idle_timeout", 1)
    s = p.stats()
    assert s.get("cluster.up.upstream_rq_retry", 0) == 0
    assert s["cluster.up.upstream_rq_504"] == 1
    assert s.get("cluster.up.upstream_rq_per_try_timeout", 0) == 0
    assert stalled.closed.wait(5)


def test_per_try_idle_is_tried_again_on_5xx(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": Stalled()})
    p = idle_proxy(make_proxy, up, retry_on="5xx", num_retries=2,
                   retry_back_off={"base_interval": "0.001s"})  # fmt: skip
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/")).status == 504
    wait_stat(p, "cluster.up.upstream_rq_per_try_idle_timeout", 3)
    assert p.stats()["cluster.up.upstream_rq_retry"] == 2


def test_per_try_idle_is_reset_by_body_bytes_and_ends_a_stalled_body(
    make_proxy: Any, make_canned: Any
) -> None:
    def trickle(sock: socket.socket, _: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):
            time.sleep(0.05)
            sock.sendall(b"1\r\nx\r\n")
        sock.sendall(b"0\r\n\r\n")

    stalled = Stalled(head=b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
    up = make_canned({"/trickle": trickle, "*": stalled})
    p = idle_proxy(make_proxy, up)
    # Bytes every 0.05 s, 0.4 s in all, keep a 0.2 s idle timeout from firing.
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/trickle"))
        assert (r.status, r.body) == (200, b"x" * 8)
    # A body that stalls after the head: the response is cut, the connection closed.
    with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=5) as c:
        c.sendall(get("/"))
        got = b""
        while d := c.recv(4096):
            got += d
    assert got.startswith(b"HTTP/1.1 200 OK") and b"2\r\nhi\r\n" in got
    assert not got.endswith(b"0\r\n\r\n")
    wait_stat(p, "cluster.up.upstream_rq_per_try_idle_timeout", 1)


def test_per_try_idle_waits_for_the_whole_request(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": OK})
    p = idle_proxy(make_proxy, up)
    with RawConn(p.listener_port()) as c:
        # The body comes over 0.45 s: no upstream idle time counts until it is all in.
        c.send(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\na")
        time.sleep(0.25)
        c.send(b"b")
        time.sleep(0.2)
        c.send(b"c")
        assert c.read_response().status == 200


def test_per_try_idle_counts_the_whole_head_not_its_pieces_nor_a_1xx(
    make_proxy: Any, make_canned: Any
) -> None:
    def pieces(sock: socket.socket, _: bytes) -> None:
        # A head in pieces 0.12 s apart, then a 100 Continue: none of it is the response head.
        for part in (b"HTTP/1.1 200 OK\r\n", b"x-a: 1\r\n", b"x-b: 2\r\n"):
            time.sleep(0.12)
            sock.sendall(part)
        until_closed(sock, 5)

    def interim(sock: socket.socket, _: bytes) -> None:
        time.sleep(0.15)
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        until_closed(sock, 5)

    up = make_canned({"/pieces": pieces, "/interim": interim, "*": OK})
    p = idle_proxy(make_proxy, up)
    for path in ("/pieces", "/interim"):
        with RawConn(p.listener_port()) as c:
            r = c.request(get(path))
            assert (r.status, r.body) == (504, b"upstream request timeout"), path
    wait_stat(p, "cluster.up.upstream_rq_per_try_idle_timeout", 2)


def test_the_duration_in_a_backoff_answers_a_whole_request_504(make_proxy: Any) -> None:
    # Nothing listens: each try fails to connect, and the next waits a long backoff.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    hcm = {"common_http_protocol_options": {"max_stream_duration": "0.3s"}}
    rp = {"retry_on": "connect-failure", "num_retries": 3, "retry_back_off": {"base_interval": "10s"}}
    p = make_proxy(bootstrap([route("/", "up", retry_policy=rp)], [cluster("up", dead)], hcm=hcm))
    with RawConn(p.listener_port()) as c:
        r = c.request(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
        assert (r.status, r.body) == (504, b"downstream duration timeout")
        assert r.header("connection") is None
        # The connection goes on.
        r = c.request(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
        assert r.status == 504
    wait_stat(p, HTTP + "downstream_rq_max_duration_reached", 2)
    assert p.stats().get(HTTP + "downstream_rq_response_before_rq_complete", 0) == 0


def test_a_per_try_idle_timeout_after_the_head_resets_both_ways(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": Stalled(head=b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")})
    p = idle_proxy(make_proxy, up)
    with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=5) as c:
        c.sendall(get("/"))
        while c.recv(4096):
            pass
    wait_stat(p, "cluster.up.upstream_rq_per_try_idle_timeout", 1)
    s = p.stats()
    assert s[HTTP + "downstream_rq_tx_reset"] == 1
    assert s[HTTP + "downstream_rq_rx_reset"] == 1
