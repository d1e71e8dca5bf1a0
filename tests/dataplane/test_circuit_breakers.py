"""A cluster's `circuit_breakers`: max_connections queues requests, max_pending_requests and
max_requests refuse them with Envoy's 503, and the stats and gauges say so. Every expectation
here was checked against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy runs this file
against it; docs/envoy-behaviour.md section 23)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane.conftest import RawConn, get, shape
from tests.support.configs import ROUTER_TYPE, bootstrap, cluster, route
from tests.support.wait import wait_for, wait_stat

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


class GatedUpstream:
    """A keep-alive HTTP/1.1 upstream on port 0 whose answers to `/gate...` wait until the test
    opens the gate (`release()`, one request at a time or all); anything else is answered at
    once. It records the order requests were answered in, and which connection each came on.
    `/gate-close` answers with `connection: close` and closes; `/slow-<ms>` answers after that
    many milliseconds."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.answered: list[tuple[str, int]] = []
        self.waiting = 0
        self._cond = threading.Condition()
        self._permits = 0
        self._open = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            with self._cond:
                self.connections += 1
                n = self.connections
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s: socket.socket, conn: int) -> None:
        buf = b""
        with s:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        d = s.recv(65536)
                    except OSError:
                        return
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                if path.startswith("/gate"):
                    with self._cond:
                        self.waiting += 1
                        self._cond.notify_all()
                        self._cond.wait_for(lambda: self._open or self._permits > 0)
                        if not self._open:
                            self._permits -= 1
                        self.waiting -= 1
                elif path.startswith("/slow-"):
                    with self._cond:
                        self._cond.wait_for(lambda: self._open, int(path[len("/slow-"):]) / 1000)
                close = path.startswith("/gate-close")
                body = f"{path} on {conn}".encode()
                extra = b"connection: close\r\n" if close else b""
                with self._cond:
                    self.answered.append((path, conn))
                try:
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body))
                except OSError:
                    return
                if close:
                    return

    def wait_held(self, n: int) -> None:
        """Waits until `n` requests are held at the gate."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.waiting == n, 5), f"{self.waiting} held, expected {n}"

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._permits += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def stop(self) -> None:
        self.open()
        self.listener.close()


@pytest.fixture
def gated() -> Any:
    u = GatedUpstream()
    yield u
    u.stop()


def breakers(**threshold: Any) -> dict[str, Any]:
    return {"circuit_breakers": {"thresholds": [threshold]}}


def send(port: int, path: str) -> RawConn:
    c = RawConn(port)
    c.send(get(path))
    return c


def start(make_proxy: Any, gated: Any, routes: list[dict[str, Any]] | None = None,
          concurrency: int = 1, **threshold: Any) -> tuple[Any, int]:
    """A proxy with `routes` (default: everything to `up`) and cluster `up`, the gated upstream
    with one thresholds entry; and its listener's port."""
    p = make_proxy(bootstrap(routes or [route("/", "up")], [cluster("up", gated.port, **breakers(**threshold))]),
                   concurrency=concurrency)
    return p, p.listener_port()


def hold(gated: Any, port: int, path: str) -> RawConn:
    """A request the gated upstream holds, once it does (the only one held)."""
    c = send(port, path)
    gated.wait_held(1)
    return c


def queue(p: Any, port: int, path: str, waiting: int) -> RawConn:
    """A request waiting for a connection, once `waiting` do."""
    c = send(port, path)
    wait_stat(p, "cluster.up.upstream_rq_pending_active", waiting)
    return c


def cx(proxy: Any, name: str) -> int:
    return proxy.stats()[f"cluster.up.{name}"]


def assert_overflow(resp: Any, overloaded: bool = True) -> None:
    assert resp.status_line == "HTTP/1.1 503 Service Unavailable"
    expected = [("x-envoy-overloaded", "true")] if overloaded else []
    expected += [("content-length", "81"), ("content-type", "text/plain"), ("date", "<date>"),
                 ("server", "envoy")]
    assert shape(resp.headers) == expected
    assert resp.body == OVERFLOW_BODY


def test_every_cluster_has_envoys_breaker_gauges_and_overflow_counters(make_proxy: Any, gated: Any) -> None:
    p = make_proxy(bootstrap([route("/", "up")], [
        cluster("up", gated.port),
        cluster("tracked", gated.port, **breakers(max_connections=7, track_remaining=True)),
    ]))
    with RawConn(p.listener_port()) as c:
        c.send(get("/x"))
        assert c.read_response().status == 200
    stats = p.stats()
    for name in ("up", "tracked"):
        for prio in ("default", "high"):
            for g in ("cx_open", "cx_pool_open", "rq_open", "rq_pending_open", "rq_retry_open"):
                assert stats[f"cluster.{name}.circuit_breakers.{prio}.{g}"] == 0
        for counter in ("upstream_cx_overflow", "upstream_cx_pool_overflow", "upstream_rq_active_overflow",
                        "upstream_rq_pending_overflow", "upstream_rq_retry_overflow"):
            assert stats[f"cluster.{name}.{counter}"] == 0
    # remaining_* only where the priority tracks them, at rest its limits.
    assert not [k for k in stats if k.startswith("cluster.up.") and ".remaining_" in k]
    remaining = {k.rsplit(".", 1)[1]: v for k, v in stats.items()
                 if k.startswith("cluster.tracked.circuit_breakers.") and ".remaining_" in k}
    assert remaining == {"remaining_cx": 7, "remaining_cx_pools": 2**64 - 1, "remaining_pending": 1024,
                         "remaining_retries": 3, "remaining_rq": 1024}
    assert not [k for k in stats if k.startswith("cluster.tracked.circuit_breakers.high.remaining")]


def test_max_requests_refuses_once_its_connection_is_ready(make_proxy: Any, gated: Any) -> None:
    p, port = start(make_proxy, gated, max_requests=1, track_remaining=True)
    held = hold(gated, port, "/gate")
    assert cx(p, "circuit_breakers.default.rq_open") == 1
    assert cx(p, "circuit_breakers.default.remaining_rq") == 0
    with RawConn(port) as c:
        c.send(get("/second"))
        assert_overflow(c.read_response())
        # The refused request's client connection stays, and its connection upstream (made
        # for it, then refused) stays in the pool.
        gated.release()
        assert held.read_response().body == b"/gate on 1"
        wait_stat(p, "cluster.up.upstream_rq_active", 0)
        c.send(get("/third"))
        assert c.read_response().status == 200
    held.close()
    # The connection made for the refused request may sit in the upstream's accept queue.
    wait_for(lambda: gated.connections == 2, what="the upstream to accept both connections")
    # A request is counted completed just after its response is written.
    wait_stat(p, "cluster.up.upstream_rq_completed", 3)
    s = p.stats()
    assert s["cluster.up.upstream_rq_active_overflow"] == 1
    assert s["cluster.up.upstream_rq_pending_overflow"] == 0
    assert s["cluster.up.upstream_rq_total"] == 2
    assert s["cluster.up.upstream_rq_503"] == 1
    assert s["cluster.up.upstream_rq_completed"] == 3
    assert s["cluster.up.upstream_rq_pending_total"] == 2
    assert s["cluster.up.circuit_breakers.default.rq_open"] == 0
    assert s["cluster.up.circuit_breakers.default.remaining_rq"] == 1
    assert s["http.ingress_http.downstream_rq_5xx"] == 1


def test_max_connections_queues_requests_on_the_connection_there_is(make_proxy: Any, gated: Any) -> None:
    p, port = start(make_proxy, gated, max_connections=1)
    first = hold(gated, port, "/gate/1")
    second = queue(p, port, "/gate/2", 1)
    third = queue(p, port, "/gate/3", 2)
    assert cx(p, "circuit_breakers.default.cx_open") == 1
    # One at a time, in the order they came, on the one connection.
    for c, path in ((first, "/gate/1"), (second, "/gate/2"), (third, "/gate/3")):
        gated.release()
        assert c.read_response().body == f"{path} on 1".encode()
        c.close()
    assert gated.connections == 1
    s = p.stats()
    assert s["cluster.up.upstream_cx_total"] == 1
    assert s["cluster.up.upstream_rq_pending_total"] == 3
    # Two requests found the limit, and the first connection given back still had one waiting.
    assert s["cluster.up.upstream_cx_overflow"] == 3
    assert s["cluster.up.upstream_rq_pending_overflow"] == 0
    assert s["cluster.up.upstream_rq_total"] == 3
    assert s["cluster.up.upstream_rq_pending_active"] == 0


def test_max_pending_requests_refuses_at_once(make_proxy: Any, gated: Any, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log),
        "log_format": {"text_format_source": {"inline_string":
                       "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST%\n"}}}}]
    p = make_proxy(bootstrap(
        [route("/", "up")],
        [cluster("up", gated.port, **breakers(max_connections=1, max_pending_requests=1))],
        hcm={"access_log": access_log}))
    port = p.listener_port()
    first = hold(gated, port, "/gate/1")
    second = queue(p, port, "/gate/2", 1)
    assert cx(p, "circuit_breakers.default.rq_pending_open") == 1
    with RawConn(port) as c:
        c.send(get("/third"))
        assert_overflow(c.read_response())
    gated.release(2)
    assert first.read_response().body == b"/gate/1 on 1"
    assert second.read_response().body == b"/gate/2 on 1"
    first.close()
    second.close()
    s = p.stats()
    assert s["cluster.up.upstream_rq_pending_overflow"] == 1
    assert s["cluster.up.upstream_rq_active_overflow"] == 0
    # The refused request never waited: only the second counted the connection limit.
    assert s["cluster.up.upstream_rq_pending_total"] == 2
    assert s["cluster.up.upstream_cx_overflow"] == 1
    assert s["cluster.up.circuit_breakers.default.rq_pending_open"] == 0
    p.stop()
    host = f"127.0.0.1:{gated.port}"
    assert log.read_text().splitlines() == [
        "503 UO upstream_reset_before_response_started{overflow} -",
        f"200 - via_upstream {host}",
        f"200 - via_upstream {host}",
    ]


def test_suppressed_envoy_headers_leave_out_x_envoy_overloaded(make_proxy: Any, gated: Any) -> None:
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": ROUTER_TYPE, "suppress_envoy_headers": True}}
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", gated.port, **breakers(max_pending_requests=0))],
                             hcm={"http_filters": [router]}))
    with RawConn(p.listener_port()) as c:
        c.send(get("/x"))
        assert_overflow(c.read_response(), overloaded=False)
    # No request ever found a connection ready, so none was made.
    assert gated.connections == 0


def test_a_waiting_request_times_out_by_its_route(make_proxy: Any, gated: Any) -> None:
    p, port = start(make_proxy, gated, [route("/quick", "up", timeout="0.2s"), route("/", "up")],
                    max_connections=1)
    held = hold(gated, port, "/gate")
    with RawConn(port) as c:
        c.send(get("/quick"))
        r = c.read_response()
        assert (r.status, r.body) == (504, b"upstream request timeout")
    gated.release()
    assert held.read_response().status == 200
    held.close()
    s = p.stats()
    assert s["cluster.up.upstream_rq_timeout"] == 1
    assert s["cluster.up.upstream_rq_cancelled"] == 1
    assert s["cluster.up.upstream_rq_504"] == 1
    assert s["cluster.up.upstream_rq_total"] == 1
    assert s["cluster.up.upstream_rq_pending_active"] == 0


def test_a_waiting_request_whose_client_leaves_is_cancelled(make_proxy: Any, gated: Any) -> None:
    p, port = start(make_proxy, gated, max_connections=1)
    held = hold(gated, port, "/gate/1")
    leaving = queue(p, port, "/gate/2", 1)
    leaving.close()
    wait_stat(p, "cluster.up.upstream_rq_cancelled", 1)
    wait_stat(p, "cluster.up.upstream_rq_pending_active", 0)
    gated.release()
    assert held.read_response().body == b"/gate/1 on 1"
    held.close()
    # The connection goes back to the pool: the next request takes it.
    with RawConn(port) as c:
        c.send(get("/after"))
        assert c.read_response().body == b"/after on 1"
    assert p.stats()["cluster.up.upstream_rq_total"] == 2


def test_a_waiting_request_gets_a_new_connection_when_the_only_one_closes(make_proxy: Any, gated: Any) -> None:
    p, port = start(make_proxy, gated, max_connections=1)
    first = hold(gated, port, "/gate-close")
    second = queue(p, port, "/next", 1)
    gated.release()
    assert first.read_response().body == b"/gate-close on 1"
    assert second.read_response().body == b"/next on 2"
    first.close()
    second.close()
    s = p.stats()
    assert s["cluster.up.upstream_cx_total"] == 2
    assert s["cluster.up.upstream_rq_total"] == 2


def test_limits_count_across_workers(make_proxy: Any, gated: Any) -> None:
    """max_requests is the cluster's, not each worker's: with two workers and connections
    spread by the kernel, one request is admitted and every other one refused."""
    p, port = start(make_proxy, gated, concurrency=2, max_requests=1)
    held = hold(gated, port, "/gate")
    refused = 0
    for i in range(8):
        with RawConn(port) as c:
            c.send(get(f"/other/{i}"))
            r = c.read_response()
            refused += r.status == 503 and r.body == OVERFLOW_BODY
    assert refused == 8
    gated.release()
    assert held.read_response().status == 200
    held.close()
    wait_for(lambda: p.stats()["cluster.up.upstream_rq_active_overflow"] == 8)


def test_the_route_timeout_counts_the_time_spent_waiting(make_proxy: Any, gated: Any) -> None:
    """The route timeout runs from the request's end, the wait for a connection included: a
    request that waited 1.2 s of its 2 s goes upstream with 0.8 s left, not 2 s more."""
    p, port = start(make_proxy, gated, [route("/gate-timed", "up", timeout="2s"), route("/", "up")],
                    max_connections=1)
    # The upstream answers the first request 1.2 s after it came; the timed one waits for it.
    held = send(port, "/slow-1200")
    wait_stat(p, "cluster.up.upstream_rq_active", 1)
    begun = time.monotonic()
    with RawConn(port, timeout=10) as c:
        c.send(get("/gate-timed"))
        wait_stat(p, "cluster.up.upstream_rq_pending_active", 1)
        assert held.read_response().status == 200
        gated.wait_held(1)  # the timed request is upstream now, held there
        r = c.read_response()
        elapsed = time.monotonic() - begun
    held.close()
    assert (r.status, r.body) == (504, b"upstream request timeout")
    # 2 s from the request's end; 3.2 s if the wait were not counted.
    assert 1.9 < elapsed < 2.8, elapsed
    s = p.stats()
    assert s["cluster.up.upstream_rq_timeout"] == 1
    assert s["cluster.up.upstream_rq_total"] == 2


def test_a_request_that_left_the_line_is_not_counted_as_waiting(make_proxy: Any, gated: Any) -> None:
    p, port = start(make_proxy, gated, max_connections=1)
    first = hold(gated, port, "/gate/1")
    second = queue(p, port, "/gate/2", 1)
    third = queue(p, port, "/gate/3", 2)
    third.close()
    wait_stat(p, "cluster.up.upstream_rq_cancelled", 1)
    # The first connection given back goes to the second request and leaves no one waiting:
    # no third overflow (two requests found the limit).
    gated.release(2)
    assert first.read_response().body == b"/gate/1 on 1"
    assert second.read_response().body == b"/gate/2 on 1"
    first.close()
    second.close()
    assert p.stats()["cluster.up.upstream_cx_overflow"] == 2


def test_a_high_priority_route_counts_against_the_high_thresholds_with_pools_of_its_own(
        make_proxy: Any, gated: Any) -> None:
    high = {"priority": "HIGH", "max_requests": 1}
    p = make_proxy(bootstrap(
        [route("/gate-high", "up", priority="HIGH"), route("/", "up")],
        [cluster("up", gated.port, circuit_breakers={"thresholds": [{"max_requests": 1}, high]})]))
    port = p.listener_port()
    held = hold(gated, port, "/gate-high/1")
    assert cx(p, "circuit_breakers.high.rq_open") == 1
    assert cx(p, "circuit_breakers.default.rq_open") == 0
    with RawConn(port) as c:
        # The HIGH limit is reached; the DEFAULT one is not, and its request goes on a
        # connection of its own (the HIGH pool's is busy, and pools are per priority).
        c.send(get("/gate-high/2"))
        assert_overflow(c.read_response())
        c.send(get("/default"))
        assert c.read_response().status == 200
        gated.release()
        assert held.read_response().status == 200
        wait_stat(p, "cluster.up.upstream_rq_active", 0)
        # Each priority reuses its own idle connection.
        c.send(get("/gate-high/3"))
        gated.release()
        assert c.read_response().status == 200
        c.send(get("/default/2"))
        assert c.read_response().status == 200
    held.close()
    # One HIGH connection for the held request, one made for the refused one, one DEFAULT.
    wait_for(lambda: gated.connections == 3, what="the upstream to accept three connections")
    served = {path: conn for path, conn in gated.answered}
    assert served["/gate-high/3"] in (served["/gate-high/1"], 2)
    assert served["/default/2"] == served["/default"]
    s = p.stats()
    assert s["cluster.up.upstream_rq_active_overflow"] == 1
    assert s["cluster.up.circuit_breakers.high.rq_open"] == 0
