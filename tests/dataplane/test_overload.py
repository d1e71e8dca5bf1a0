"""The overload manager (`overload_manager`): resource monitors (a pressure file, Envoy's
`injected_resource`; the global connection limit) and the actions their triggers take. Every
expectation here was checked against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy runs this
file against it, except the apply test; docs/envoy-behaviour.md section 29). The pressure file is
replaced by a rename, which is when Envoy's monitor reads it."""

from __future__ import annotations

import os
import select
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane.conftest import TARGET_IS_ENVOY, RawConn, get
from tests.support.configs import bootstrap
from tests.support.wait import wait_for, wait_stat

HTTP = "http.ingress_http."
LISTENER = "listener.127.0.0.1_0."
FILE = "overload.envoy.resource_monitors.injected_resource."
ACTIONS = "overload.envoy.overload_actions."
INJECTED = "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig"
CONNECTIONS = ("type.googleapis.com/"
               "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig")
DIRECT = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}


class Pressure:
    """The injected resource monitor's file."""

    def __init__(self, tmp_path: Path, value: float = 0.0) -> None:
        self.path = tmp_path / "pressure"
        self.set(str(value))

    def set(self, text: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def monitor(self) -> dict[str, Any]:
        return {"name": "envoy.resource_monitors.injected_resource",
                "typed_config": {"@type": INJECTED, "filename": str(self.path)}}


def trigger(threshold: float | None = None, scaled: tuple[float, float] | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "envoy.resource_monitors.injected_resource"}
    if scaled:
        t["scaled"] = {"scaling_threshold": scaled[0], "saturation_threshold": scaled[1]}
    else:
        t["threshold"] = {"value": threshold}
    return t


def config(monitors: list[dict[str, Any]], actions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    b = bootstrap([DIRECT], [])
    b["overload_manager"] = {
        "refresh_interval": "0.05s",
        "resource_monitors": monitors,
        "actions": [{"name": f"envoy.overload_actions.{n}", "triggers": [t]} for n, t in actions.items()],
    }
    return b


def answered(port: int) -> bytes:
    """One request on a new connection: the response, b"" when closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(get("/x", extra="connection: close\r\n"))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data
        except (ConnectionResetError, BrokenPipeError):
            return b""


def refused(port: int) -> bool:
    return answered(port).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


def served(port: int) -> bool:
    return answered(port).startswith(b"HTTP/1.1 200 OK\r\n")


# The workers hear of an action after its stats change: the first request after a change waits
# for the behaviour (wait_for), not for the stat alone.


def test_stop_accepting_requests(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.5)
    p = make_proxy(config([f.monitor()], {"stop_accepting_requests": trigger(0.95)}))
    wait_stat(p, FILE + "pressure", 50)
    assert answered(p.listener_port()).startswith(b"HTTP/1.1 200 OK\r\n")
    f.set("0.99")
    wait_stat(p, ACTIONS + "stop_accepting_requests.active", 1)
    s = p.stats()
    assert s[FILE + "pressure"] == 99
    assert s[ACTIONS + "stop_accepting_requests.scale_percent"] == 100
    wait_for(lambda: refused(p.listener_port()), what="a refusal")
    before = p.stats()[HTTP + "downstream_rq_overload_close"]
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/x"))
        assert r.status == 503
        assert r.body == b"envoy overloaded"
        assert r.header("content-type") == "text/plain"
        # The connection stays (keep-alive is another action).
        assert r.header("connection") is None
        assert c.request(get("/x")).status == 503
    wait_stat(p, HTTP + "downstream_rq_overload_close", before + 2)
    f.set("0.2")
    wait_stat(p, ACTIONS + "stop_accepting_requests.active", 0)
    wait_for(lambda: served(p.listener_port()), what="requests served again")


def test_a_scaled_trigger_refuses_that_share_of_requests(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.75)
    p = make_proxy(config([f.monitor()], {"stop_accepting_requests": trigger(scaled=(0.6, 0.9))}))
    wait_stat(p, ACTIONS + "stop_accepting_requests.scale_percent", 50)
    assert p.stats()[ACTIONS + "stop_accepting_requests.active"] == 0
    with RawConn(p.listener_port()) as c:
        codes = [c.request(get("/x")).status for _ in range(200)]
    # A coin per request: both answers (all 200 the same has a chance of 2**-199).
    assert set(codes) == {200, 503}
    wait_stat(p, HTTP + "downstream_rq_overload_close", codes.count(503))


def test_disable_http_keepalive(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.0)
    p = make_proxy(config([f.monitor()], {"disable_http_keepalive": trigger(0.8)}))
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/x")).header("connection") is None
    f.set("0.9")
    wait_stat(p, ACTIONS + "disable_http_keepalive.active", 1)

    def closes() -> bool:
        with RawConn(p.listener_port()) as c:
            r = c.request(get("/x"))
            assert r.status == 200
            if r.header("connection") != "close":
                return False
            # pyproxy closes once the response is written; Envoy waits up to its
            # drain_timeout (5 s) for the client to close first (docs/config.md).
            assert TARGET_IS_ENVOY or c.closed_within(5)
            return True

    wait_for(closes, what="a response with connection: close")
    s = p.stats()
    assert s[HTTP + "downstream_cx_overload_disable_keepalive"] >= 1
    # The connection is drained for it, and counted so.
    assert s[HTTP + "downstream_cx_drain_close"] == s[HTTP + "downstream_cx_overload_disable_keepalive"]


def test_stop_accepting_connections_leaves_them_waiting(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.0)
    p = make_proxy(config([f.monitor()], {"stop_accepting_connections": trigger(0.9)}))
    with RawConn(p.listener_port()) as kept:
        f.set("0.95")
        wait_stat(p, ACTIONS + "stop_accepting_connections.active", 1)
        # A connection open before goes on.
        assert kept.request(get("/x")).status == 200
        # A new one is taken by the kernel but not accepted: no answer while the action holds.
        with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=5) as s:
            s.sendall(get("/x"))
            assert select.select([s], [], [], 0.5)[0] == []
            f.set("0.1")
            wait_stat(p, ACTIONS + "stop_accepting_connections.active", 0)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_reject_incoming_connections(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.95)
    p = make_proxy(config([f.monitor()], {"reject_incoming_connections": trigger(0.9)}))
    wait_stat(p, ACTIONS + "reject_incoming_connections.active", 1)
    wait_for(lambda: answered(p.listener_port()) == b"", what="a connection closed unanswered")
    s = p.stats()
    assert s[LISTENER + "downstream_cx_overload_reject"] >= 1
    # A rejected connection is not counted as one.
    total = s[LISTENER + "downstream_cx_total"]
    assert answered(p.listener_port()) == b""
    wait_stat(p, LISTENER + "downstream_cx_overload_reject", s[LISTENER + "downstream_cx_overload_reject"] + 1)
    assert p.stats()[LISTENER + "downstream_cx_total"] == total
    f.set("0.5")
    wait_stat(p, ACTIONS + "reject_incoming_connections.active", 0)
    wait_for(lambda: served(p.listener_port()), what="connections served again")


def test_global_downstream_max_connections(make_proxy: Any) -> None:
    limit = {"name": "envoy.resource_monitors.global_downstream_max_connections",
             "typed_config": {"@type": CONNECTIONS, "max_active_downstream_connections": 2}}
    p = make_proxy(config([limit], {}))
    with RawConn(p.listener_port()) as a, RawConn(p.listener_port()) as b:
        assert a.request(get("/x")).status == 200
        assert b.request(get("/x")).status == 200
        assert answered(p.listener_port()) == b""
        assert answered(p.listener_port()) == b""
        wait_stat(p, LISTENER + "downstream_global_cx_overflow", 2)
        s = p.stats()
        assert s["overload.envoy.resource_monitors.global_downstream_max_connections.failed_updates"] == 2
        assert s["overload.envoy.resource_monitors.global_downstream_max_connections.pressure"] == 0
        assert s[LISTENER + "downstream_cx_total"] == 2
    # Once they are gone, there is room again.
    wait_stat(p, LISTENER + "downstream_cx_active", 0)
    assert answered(p.listener_port()).startswith(b"HTTP/1.1 200 OK\r\n")


def test_an_unreadable_file_keeps_the_last_pressure(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.97)
    p = make_proxy(config([f.monitor()], {"stop_accepting_requests": trigger(0.95)}))
    wait_stat(p, ACTIONS + "stop_accepting_requests.active", 1)
    for bad in ("garbage", "1.5", "-1"):
        before = p.stats()[FILE + "failed_updates"]
        f.set(bad)
        wait_for(lambda n=before: p.stats()[FILE + "failed_updates"] > n, what=f"a failed read of {bad!r}")
        s = p.stats()
        assert s[FILE + "pressure"] == 97
        assert s[ACTIONS + "stop_accepting_requests.active"] == 1
    f.set(" 0.2\n")
    wait_stat(p, FILE + "pressure", 20)
    wait_stat(p, ACTIONS + "stop_accepting_requests.active", 0)


@pytest.mark.skipif(TARGET_IS_ENVOY, reason="apply is pyproxy's API (Envoy's overload manager is bootstrap-only)")
def test_apply_adds_and_removes_the_overload_manager(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.99)
    plain = bootstrap([DIRECT], [])
    p = make_proxy(plain)
    assert answered(p.listener_port()).startswith(b"HTTP/1.1 200 OK\r\n")
    p.apply(config([f.monitor()], {"stop_accepting_requests": trigger(0.95)}))
    wait_stat(p, ACTIONS + "stop_accepting_requests.active", 1)
    wait_for(lambda: refused(p.listener_port()), what="a refusal")
    p.apply(plain)
    wait_for(lambda: ACTIONS + "stop_accepting_requests.active" not in p.stats(), what="the action's stats to go")
    wait_for(lambda: served(p.listener_port()), what="requests served again")


SCALE_TIMERS = "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig"


def reduce_timeouts(f: Pressure, hcm: dict[str, Any], routes: list[dict[str, Any]] | None = None,
                    clusters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    b = bootstrap(routes or [DIRECT], clusters or [], hcm={"drain_timeout": "0.1s", **hcm})
    b["overload_manager"] = {
        "refresh_interval": "0.05s",
        "resource_monitors": [f.monitor()],
        "actions": [{"name": "envoy.overload_actions.reduce_timeouts", "triggers": [trigger(scaled=(0.5, 0.9))],
                     "typed_config": {"@type": SCALE_TIMERS, "timer_scale_factors": [
                         {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "0.3s"},
                         {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 10}}]}}],
    }
    return b


def idle_close_after(port: int) -> float:
    """Seconds from a kept-alive response to the proxy's close of the idle connection."""
    import time

    with RawConn(port, timeout=10) as c:
        assert c.request(get("/x")).status == 200
        t0 = time.monotonic()
        assert c.closed_within(10)
        return time.monotonic() - t0


def test_reduce_timeouts_shortens_the_connection_idle_timeout(make_proxy: Any, tmp_path: Path) -> None:
    f = Pressure(tmp_path, 0.0)
    p = make_proxy(reduce_timeouts(f, {"common_http_protocol_options": {"idle_timeout": "4s"}}))
    f.set("0.95")
    wait_stat(p, ACTIONS + "reduce_timeouts.active", 1)
    # Saturated: the least duration, 0.3 s (Envoy then waits its drain_timeout, 0.1 s here).
    took = wait_for(lambda: (t := idle_close_after(p.listener_port())) < 2 and t, what="a short idle timeout")
    assert took >= 0.25, took
    wait_for(lambda: p.stats()[HTTP + "downstream_cx_idle_timeout"] >= 1, what="the idle timeout's count")


def test_reduce_timeouts_reaches_connections_already_idle(make_proxy: Any, tmp_path: Path) -> None:
    import time

    f = Pressure(tmp_path, 0.0)
    p = make_proxy(reduce_timeouts(f, {"common_http_protocol_options": {"idle_timeout": "4s"}}))
    wait_stat(p, FILE + "pressure", 0)
    with RawConn(p.listener_port(), timeout=10) as c:
        assert c.request(get("/x")).status == 200
        # Idle under the full 4 s for a while, then the pressure saturates the action: the
        # connection, idle for longer than the least duration, closes at once.
        assert c.open_after(0.5)
        f.set("0.95")
        t0 = time.monotonic()
        assert c.closed_within(3)
        assert time.monotonic() - t0 < 3


def test_reduce_timeouts_shortens_the_stream_idle_timeout(make_proxy: Any, make_canned: Any,
                                                          tmp_path: Path) -> None:
    import threading
    import time

    from tests.support.configs import cluster, route

    done = threading.Event()

    def hang(sock: socket.socket, _: bytes) -> None:
        done.wait(10)

    up = make_canned({"*": hang})
    f = Pressure(tmp_path, 0.95)
    p = make_proxy(reduce_timeouts(f, {"stream_idle_timeout": "3s"}, [route("/", "up")], [cluster("up", up.port)]))
    wait_stat(p, ACTIONS + "reduce_timeouts.active", 1)
    try:
        with RawConn(p.listener_port(), timeout=10) as c:
            t0 = time.monotonic()
            r = c.request(get("/x"))
            took = time.monotonic() - t0
        # 10% of the 3 s stream idle timeout.
        assert r.status == 504
        assert r.body == b"stream timeout"
        assert 0.25 <= took < 2, took
    finally:
        done.set()


def test_a_trigger_on_the_global_connection_limit_never_fires(make_proxy: Any) -> None:
    limit = {"name": "envoy.resource_monitors.global_downstream_max_connections",
             "typed_config": {"@type": CONNECTIONS, "max_active_downstream_connections": 100}}
    b = config([limit], {})
    b["overload_manager"]["actions"] = [{"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [
        {"name": "envoy.resource_monitors.global_downstream_max_connections", "threshold": {"value": 0}}]}]
    p = make_proxy(b)
    # Its pressure is never read (it reads 0), so even a threshold of 0 stays off.
    for _ in range(3):
        assert served(p.listener_port())
    assert p.stats()[ACTIONS + "stop_accepting_requests.active"] == 0


@pytest.mark.skipif(TARGET_IS_ENVOY, reason="Envoy reads the file only when a rename replaces it")
def test_a_pressure_file_that_is_no_regular_file_is_a_failed_read(make_proxy: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monitor = {"name": "envoy.resource_monitors.injected_resource",
               "typed_config": {"@type": INJECTED, "filename": str(fifo)}}
    p = make_proxy(config([monitor], {"stop_accepting_requests": trigger(0.5)}))
    # Not opened (a FIFO with no writer would block the monitor's thread for good).
    wait_for(lambda: p.stats()[FILE + "failed_updates"] >= 2, what="failed reads")
    assert served(p.listener_port())
