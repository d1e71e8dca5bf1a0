"""Drains as the connection manager sees them: while the server drains, or health checks fail
(`/healthcheck/fail`) on a listener whose `drain_type` is DEFAULT, each response carries
`connection: close`, its connection ends, and `downstream_cx_drain_close` counts it.

Under `--drain-strategy gradual` (the default, as Envoy's) a server drain closes a response's
connection with a chance that grows from 0 to 1 over the drain time; under `immediate`, and
while health checks fail, every response's.

Expected values: the `envoy` 1.40 binary with the same `--drain-strategy` (the Envoy harness
in conftest.py passes it). pyproxy closes the connection as soon as that response is written;
Envoy waits for the client to close for the connection manager's `drain_timeout` (5 s by
default) before it closes, so its runs set that to 100 ms."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.dataplane.conftest import TARGET_IS_ENVOY, RawConn, get, wait_for, wait_stat
from tests.lifecycle.process import connect_refused
from tests.support.configs import bootstrap, cluster, route

DRAIN_CLOSE = "http.ingress_http.downstream_cx_drain_close"


def config(upstream_port: int, **listener: Any) -> dict[str, Any]:
    vhosts = [{"name": "vh", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        route("/", "up"),
    ]}]
    hcm = {"drain_timeout": "0.1s"} if TARGET_IS_ENVOY else None
    b = bootstrap([], [cluster("up", upstream_port)], virtual_hosts=vhosts, hcm=hcm)
    b["static_resources"]["listeners"][0].update(listener)
    return b


def test_failed_health_checks_close_each_connection_after_its_response(make_proxy: Any, upstream: Any) -> None:
    proxy = make_proxy(config(upstream.port))
    port = proxy.listener_port()
    with RawConn(port) as c:
        assert c.request(get("/")).header("connection") is None
        proxy.healthcheck_failed = True
        # The connection that was kept alive closes after its next response, a proxied one or
        # a local reply alike, and so does a new one.
        r = c.request(get("/"))
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.closed_within(5)
    with RawConn(port) as c:
        r = c.request(get("/direct"))
        assert (r.status, r.header("connection"), r.body) == (200, "close", b"direct")
        assert c.closed_within(5)
    # A client that asked to close is counted too: the drain is looked at first.
    with RawConn(port) as c:
        r = c.request(get("/", extra="connection: close\r\n"))
        assert r.header("connection") == "close"
        assert c.closed_within(5)
    wait_stat(proxy, DRAIN_CLOSE, 3)
    proxy.healthcheck_failed = False
    with RawConn(port) as c:
        for _ in range(2):
            assert c.request(get("/")).header("connection") is None
    assert proxy.stats()[DRAIN_CLOSE] == 3


def test_modify_only_listener_keeps_its_connections_while_health_checks_fail(make_proxy: Any, upstream: Any) -> None:
    proxy = make_proxy(config(upstream.port, drain_type="MODIFY_ONLY"))
    proxy.healthcheck_failed = True
    with RawConn(proxy.listener_port()) as c:
        for path in ("/", "/direct", "/"):
            assert c.request(get(path)).header("connection") is None
    wait_stat(proxy, "http.ingress_http.downstream_rq_completed", 3)
    assert proxy.stats()[DRAIN_CLOSE] == 0


class Held:
    """An upstream reply held back until `release()`; `asked` is set once the request came."""

    def __init__(self) -> None:
        self.asked, self._go = threading.Event(), threading.Event()

    def release(self) -> None:
        self._go.set()

    def __call__(self, sock: Any, _extra: bytes) -> None:
        self.asked.set()
        assert self._go.wait(10), "the test never released the reply"
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")


def refused(port: int) -> bool:
    return connect_refused("127.0.0.1", port)


def drained_in_flight(
    make_proxy: Any, make_canned: Any, drain: Callable[[Any, int], None], **proxy_kw: Any
) -> tuple[Any, int]:
    """A proxy (`proxy_kw`) whose upstream holds its reply: a request goes out, `drain(proxy,
    port)` runs while the reply is held, then the reply comes. Its response must close the
    connection, and the drain is counted. Returns the proxy and its listener's port."""
    held = Held()
    up = make_canned({"*": held})
    proxy = make_proxy(config(up.port), **proxy_kw)
    port = proxy.listener_port()
    with RawConn(port) as c:
        c.send(get("/"))
        assert held.asked.wait(10)
        drain(proxy, port)
        held.release()
        r = c.read_response()
        assert (r.status, r.header("connection"), r.body) == (200, "close", b"held")
        assert c.closed_within(5)
    wait_stat(proxy, DRAIN_CLOSE, 1)
    return proxy, port


def test_drain_closes_the_connection_of_a_request_in_flight(make_proxy: Any, make_canned: Any) -> None:
    proxy, port = drained_in_flight(
        make_proxy, make_canned, lambda proxy, _port: proxy.drain_listeners(), drain_strategy="immediate"
    )
    # The listener no longer accepts, counted as stopped (once a listener, not per worker).
    wait_for(lambda: refused(port), 5, "the drained listener to refuse connections")
    wait_stat(proxy, "listener_manager.listener_stopped", 1)


def test_graceful_drain_accepts_for_the_drain_time_then_stops_the_listener(make_proxy: Any, upstream: Any) -> None:
    # /drain_listeners?graceful: each response closes its connection at once, but the listener
    # goes on accepting until the drain time (2 s; Envoy takes whole seconds) has passed.
    proxy = make_proxy(config(upstream.port), concurrency=2, drain_time_s=2, drain_strategy="immediate")
    port = proxy.listener_port()
    proxy.drain_listeners(graceful=True)
    with RawConn(port) as c:
        r = c.request(get("/"))
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.closed_within(5)
    assert proxy.stats()["listener_manager.listener_stopped"] == 0
    wait_for(lambda: refused(port), 10, "the drained listener to refuse connections")
    wait_stat(proxy, "listener_manager.listener_stopped", 1)
    wait_stat(proxy, DRAIN_CLOSE, 1)


def test_a_refused_head_counts_a_drain_too(make_proxy: Any, upstream: Any) -> None:
    # envoy binary: the 400 for a head its codec refuses goes through the same response path,
    # so it is counted while health checks fail (as well as the protocol error).
    proxy = make_proxy(config(upstream.port))
    proxy.healthcheck_failed = True
    with RawConn(proxy.listener_port()) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: example.com\r\nbad header\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.header("connection")) == (400, "close")
        assert c.closed_within(5)
    wait_stat(proxy, "http.ingress_http.downstream_cx_protocol_error", 1)
    wait_stat(proxy, DRAIN_CLOSE, 1)


def test_gradual_drain_closes_few_connections_at_first(make_proxy: Any, upstream: Any) -> None:
    # With the default 600 s drain time, a response right after the drain starts closes its
    # connection with a chance of about 1/600 (Envoy counts whole seconds, so never less):
    # of 20 fresh connections, hardly any close (more than 5 has a chance below 1e-9).
    proxy = make_proxy(config(upstream.port))
    port = proxy.listener_port()
    proxy.drain_listeners(graceful=True)  # the listener goes on accepting
    closed = 0
    for _ in range(20):
        with RawConn(port) as c:
            r = c.request(get("/"))
            assert r.status == 200
            closed += r.header("connection") == "close"
    assert closed <= 5, f"{closed} of 20 closed"
    wait_stat(proxy, "http.ingress_http.downstream_rq_completed", 20)
    assert proxy.stats()[DRAIN_CLOSE] == closed


def test_gradual_drain_closes_every_connection_once_the_drain_time_is_over(
    make_proxy: Any, make_canned: Any
) -> None:
    # A request in flight when the drain time (1 s) ends: its response closes the connection.
    # (The graceful drain's listener stops then: the test waits for that.)
    def drain(proxy: Any, port: int) -> None:
        proxy.drain_listeners(graceful=True)
        wait_for(lambda: refused(port), 10, "the drain time to end")

    drained_in_flight(make_proxy, make_canned, drain, drain_time_s=1)


def test_skip_exit_drains_the_connections_and_keeps_the_listener(make_proxy: Any, upstream: Any) -> None:
    # Envoy's help: "drain the connections but never stop the listeners".
    proxy = make_proxy(config(upstream.port), drain_strategy="immediate")
    port = proxy.listener_port()
    proxy.drain_listeners(skip_exit=True)
    for _ in range(2):
        with RawConn(port) as c:
            r = c.request(get("/"))
            assert (r.status, r.header("connection")) == (200, "close")
            assert c.closed_within(5)
    wait_stat(proxy, DRAIN_CLOSE, 2)
    assert proxy.stats()["listener_manager.listener_stopped"] == 0


@pytest.mark.skipif(TARGET_IS_ENVOY, reason="Envoy leaves the connections of a stopped listener open")
def test_stopped_listener_says_its_connection_closes_whatever_the_strategy(
    make_proxy: Any, make_canned: Any
) -> None:
    # A plain drain under the gradual strategy: the chance of a close is still tiny, but the
    # listener has stopped and pyproxy ends its connections after their response, so the
    # response says so (docs/admin.md, "Drains": pyproxy closes what Envoy leaves open).
    def drain(proxy: Any, port: int) -> None:
        proxy.drain_listeners()
        wait_for(lambda: refused(port), 5, "the drained listener to refuse connections")

    drained_in_flight(make_proxy, make_canned, drain)
