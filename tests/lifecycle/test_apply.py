"""`Proxy.apply()` on a running embedded proxy: under keep-alive load, with a request in flight,
with a bad config, and adding/removing a listener."""

from __future__ import annotations

import copy
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pyproxy.errors import ConfigError
from tests.dataplane.conftest import CannedUpstream, RawConn, get
from tests.dataplane.test_drain import DRAIN_CLOSE, Held
from tests.lifecycle.process import connect_refused, poll
from tests.support.configs import bootstrap, cluster, route, with_second_listener
from tests.support.upstream import Upstream

APPLY_VISIBLE_S = 5.0  # how long after apply() new requests may still see the old config


def pinned(config: dict[str, Any], port: int) -> dict[str, Any]:
    """`config` with listener_0 asking for the port it is already bound to (instead of 0)."""
    config = copy.deepcopy(config)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    return config


def header(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}}


def fresh_get(port: int, target: str) -> str | None:
    """GET on a new raw connection with `connection: close`; None if 200, else what went wrong.
    Raw sockets, not httpx: a new httpx.Client per request is too slow to keep connects coming."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        return repr(e)
    status = data.split(b"\r\n", 1)[0]
    return None if status.startswith(b"HTTP/1.1 200 ") else f"status line {status!r}"


class Hammer:
    """Client threads sending GETs until stopped: `keepalive` threads each reuse one httpx.Client
    connection, `fresh` threads open a new connection per request (so connects land in the
    listener's accept queue during an apply). Every non-200 response or exception is recorded."""

    def __init__(self, port: int, keepalive: int = 3, fresh: int = 2) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._keepalive, args=(i,), daemon=True, name=f"ka-{i}")
            for i in range(keepalive)
        ] + [
            threading.Thread(target=self._fresh, args=(i,), daemon=True, name=f"fresh-{i}")
            for i in range(fresh)
        ]

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        poll(lambda: self.ok >= 50, timeout=5.0, what="the hammer threads to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        assert not any(t.is_alive() for t in self._threads), "a hammer thread is stuck"

    def _record(self, who: str, bad: str | None) -> None:
        with self._lock:
            if bad is None:
                self.ok += 1
            else:
                self.failures.append(f"{who}: {bad}")

    def _keepalive(self, i: int) -> None:
        with httpx.Client(timeout=5.0) as c:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    r = c.get(f"http://127.0.0.1:{self.port}/ka/{i}/{n}")
                    bad = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]!r}"
                except httpx.HTTPError as e:
                    bad = repr(e)
                self._record(f"keep-alive thread {i} request {n}", bad)

    def _fresh(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            self._record(f"fresh thread {i} request {n}", fresh_get(self.port, f"/fresh/{i}/{n}"))


def served_by(url: str) -> httpx.Response:
    """One request on a fresh connection."""
    return httpx.get(url, timeout=5.0, headers={"connection": "close"})


@pytest.fixture
def two_upstreams(make_upstream: Callable[[], Upstream]) -> Iterator[tuple[Upstream, Upstream]]:
    yield make_upstream(), make_upstream()


def test_apply_sequence_under_keepalive_load_has_no_failures(
    make_proxy: Callable[..., Any], two_upstreams: tuple[Upstream, Upstream]
) -> None:
    a, b = two_upstreams
    clusters = [cluster("a", a.port), cluster("b", b.port)]
    proxy = make_proxy(bootstrap([route("/", "a")], clusters), concurrency=2)
    port = proxy.listener_port()
    base = f"http://127.0.0.1:{port}"
    assert served_by(f"{base}/x").headers["x-upstream-port"] == str(a.port)

    steps: list[tuple[str, dict[str, Any], Callable[[], bool]]] = [
        (
            "route / from cluster a to cluster b",
            bootstrap([route("/", "b")], clusters),
            lambda: served_by(f"{base}/x").headers["x-upstream-port"] == str(b.port),
        ),
        (
            "add route /extra -> a",
            bootstrap([route("/extra", "a"), route("/", "b")], clusters),
            lambda: served_by(f"{base}/extra/1").headers["x-upstream-port"] == str(a.port)
            and served_by(f"{base}/x").headers["x-upstream-port"] == str(b.port),
        ),
        (
            "add a response header on the virtual host",
            bootstrap(
                [],
                clusters,
                virtual_hosts=[
                    {
                        "name": "vh",
                        "domains": ["*"],
                        "routes": [route("/extra", "a"), route("/", "b")],
                        "response_headers_to_add": [header("x-config", "v3")],
                        "request_headers_to_add": [header("x-config-req", "v3")],
                    }
                ],
            ),
            lambda: served_by(f"{base}/x").headers.get("x-config") == "v3"
            and ["x-config-req", "v3"] in served_by(f"{base}/x").json()["headers"],
        ),
    ]
    with Hammer(port) as hammer:
        for what, config, observed in steps:
            before = hammer.ok
            proxy.apply(config)  # listener_0 still asks for port 0: it keeps its sockets
            poll(observed, timeout=APPLY_VISIBLE_S, what=f"new requests to see: {what}")
            assert proxy.listener_port() == port
            # Traffic kept flowing across this apply.
            poll(lambda n=before: hammer.ok > n + 20, timeout=5.0, what="hammer progress")
    assert hammer.failures == [], f"{len(hammer.failures)} failed of {hammer.ok}: {hammer.failures[:5]}"
    assert hammer.ok > 100
    # Envoy names listener stats by the configured address: port 0 stays 0.
    assert proxy.stats().get("listener.127.0.0.1_0.downstream_cx_total", 0) > 0


def test_keepalive_connection_sees_new_config_after_apply(
    make_proxy: Callable[..., Any], two_upstreams: tuple[Upstream, Upstream]
) -> None:
    # A client that keeps one connection open across an apply must not be stuck on the old
    # routes forever: either its next requests use the new config or the proxy closes the
    # connection (connection: close) so that the client reconnects and does.
    a, b = two_upstreams
    clusters = [cluster("a", a.port), cluster("b", b.port)]
    proxy = make_proxy(bootstrap([route("/", "a")], clusters))
    port = proxy.listener_port()
    with httpx.Client(timeout=5.0) as c:
        assert c.get(f"http://127.0.0.1:{port}/before").headers["x-upstream-port"] == str(a.port)
        proxy.apply(bootstrap([route("/", "b")], clusters))
        poll(
            lambda: c.get(f"http://127.0.0.1:{port}/after").headers["x-upstream-port"]
            == str(b.port),
            timeout=APPLY_VISIBLE_S,
            what="the keep-alive client to reach cluster b",
        )


def test_idle_keepalive_connection_uses_the_new_config_for_its_very_next_request(
    make_proxy: Callable[..., Any], two_upstreams: tuple[Upstream, Upstream]
) -> None:
    # One worker: once a new connection is served by the new routes, that worker has swapped
    # its snapshot, and a request arriving on a connection that waited idle across the swap is
    # served by the new routes too, not by the snapshot of the connection's previous request.
    a, b = two_upstreams
    clusters = [cluster("a", a.port), cluster("b", b.port)]
    proxy = make_proxy(bootstrap([route("/", "a")], clusters), concurrency=1)
    port = proxy.listener_port()
    with httpx.Client(timeout=5.0) as kept:
        assert kept.get(f"http://127.0.0.1:{port}/before").headers["x-upstream-port"] == str(a.port)
        proxy.apply(bootstrap([route("/", "b")], clusters))
        poll(
            lambda: served_by(f"http://127.0.0.1:{port}/fresh").headers["x-upstream-port"]
            == str(b.port),
            timeout=APPLY_VISIBLE_S,
            what="a new connection to reach cluster b",
        )
        r = kept.get(f"http://127.0.0.1:{port}/after")
        assert r.headers["x-upstream-port"] == str(b.port)


def test_apply_port_0_config_keeps_listener_port(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # The config a user started with says port 0; re-applying it (or a route change on it) must
    # not move the listener to a new port: listeners are matched by name and address as in Envoy.
    config = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    proxy = make_proxy(config)
    port = proxy.listener_port()
    changed = bootstrap([route("/", "a", prefix_rewrite="/rewritten/")], [cluster("a", upstream.port)])
    proxy.apply(changed)
    assert proxy.listener_port() == port
    poll(
        lambda: served_by(f"http://127.0.0.1:{port}/x").json()["target"] == "/rewritten/x",
        timeout=APPLY_VISIBLE_S,
        what="the rewritten route",
    )


def test_request_in_flight_during_apply_finishes_on_old_config(
    make_proxy: Callable[..., Any], two_upstreams: tuple[Upstream, Upstream]
) -> None:
    a, b = two_upstreams
    clusters = [cluster("a", a.port), cluster("b", b.port)]
    proxy = make_proxy(bootstrap([route("/", "a")], clusters))
    port = proxy.listener_port()
    result: list[Any] = []

    def send() -> None:
        try:
            result.append(httpx.get(f"http://127.0.0.1:{port}/delay/800", timeout=10.0))
        except httpx.HTTPError as e:
            result.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    poll(lambda: any(r.target == "/delay/800" for r in list(a.requests)), timeout=5.0,
         what="upstream a to receive the slow request")
    proxy.apply(bootstrap([route("/", "b")], clusters))
    t.join(10)
    assert not t.is_alive()
    (r,) = result
    assert isinstance(r, httpx.Response), repr(r)
    assert r.status_code == 200
    assert r.headers["x-upstream-port"] == str(a.port)
    assert not any(x.target == "/delay/800" for x in list(b.requests))
    poll(lambda: served_by(f"http://127.0.0.1:{port}/x").headers["x-upstream-port"] == str(b.port),
         timeout=APPLY_VISIBLE_S, what="new requests to go to b")


def test_apply_bad_config_raises_config_error_and_keeps_serving(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    config = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    proxy = make_proxy(config)
    port = proxy.listener_port()
    bad = copy.deepcopy(config)
    bad["static_resources"]["clusters"][0]["lb_policy"] = "FOO"
    with pytest.raises(ConfigError) as info:
        proxy.apply(bad)
    assert info.value.path == "static_resources.clusters[0].lb_policy"
    assert "static_resources.clusters[0].lb_policy" in str(info.value)
    assert "FOO" in str(info.value)

    # A config that decodes but routes to a cluster that does not exist fails in compile.
    dangling = bootstrap([route("/", "missing")], [cluster("a", upstream.port)])
    with pytest.raises(ConfigError) as info2:
        proxy.apply(dangling)
    assert "missing" in str(info2.value)

    with httpx.Client(timeout=5.0) as c:
        for i in range(20):
            r = c.get(f"http://127.0.0.1:{port}/still/{i}")
            assert r.status_code == 200
            assert r.headers["x-upstream-port"] == str(upstream.port)
    assert proxy.raw_config["static_resources"]["clusters"][0].get("lb_policy") is None


def test_apply_adds_then_removes_a_listener(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    config = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    proxy = make_proxy(config)
    port = proxy.listener_port()
    one = config
    two = with_second_listener(one)

    proxy.apply(two)
    names = {name: p for name, _, p in proxy.listeners()}
    assert set(names) == {"listener_0", "listener_1"}
    assert names["listener_0"] == port
    new_port = names["listener_1"]
    assert new_port not in (0, port)
    r = poll(lambda: served_by(f"http://127.0.0.1:{new_port}/via-second"), timeout=APPLY_VISIBLE_S,
             what="the new listener to serve")
    assert r.status_code == 200
    assert r.json()["target"] == "/via-second"

    proxy.apply(one)
    assert [name for name, _, _ in proxy.listeners()] == ["listener_0"]
    poll(lambda: connect_refused("127.0.0.1", new_port), timeout=APPLY_VISIBLE_S,
         what="the removed listener to refuse connections")
    assert served_by(f"http://127.0.0.1:{port}/first").status_code == 200


def test_keepalive_connection_of_a_removed_listener_is_answered_then_closed(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # A request that arrives on a kept-alive connection after its listener was removed is
    # still answered (by the listener's last config) with `connection: close`, and the proxy
    # then closes the connection: the client is never left with a request that got no answer,
    # nor told it may send another.
    one = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    two = with_second_listener(one)
    proxy = make_proxy(two, concurrency=1, drain_strategy="immediate")
    new_port = {name: p for name, _, p in proxy.listeners()}["listener_1"]
    with socket.create_connection(("127.0.0.1", new_port), timeout=5.0) as s:
        s.sendall(b"GET /before HTTP/1.1\r\nhost: x\r\n\r\n")
        first = http.client.HTTPResponse(s)  # reads one response off the socket
        first.begin()
        assert first.status == 200
        first.read()
        proxy.apply(one)
        # Draining for the drain time (600 s here), as Envoy's listener manager counts it.
        assert proxy.stats()["listener_manager.total_listeners_draining"] == 1
        poll(lambda: connect_refused("127.0.0.1", new_port), timeout=APPLY_VISIBLE_S,
             what="the removed listener to refuse connections")
        s.sendall(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):  # to the proxy's close; a kept connection times out here
            rest += chunk
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), rest
    assert b"\r\nconnection: close" in head.lower(), "the answer says the connection closes"
    assert json.loads(body)["target"] == "/after"
    # Envoy counts a connection its listener's drain closes.
    poll(lambda: proxy.stats()[DRAIN_CLOSE] == 1, timeout=5.0, what="downstream_cx_drain_close 1")


def test_idle_connection_of_a_removed_listener_closes_once_the_drain_time_has_passed(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # Envoy drains a removed listener for --drain-time-s, then destroys it with its
    # connections: an idle keep-alive connection does not outlive the drain time (with the
    # default 600 s it would wait for the next request, as the test above shows).
    one = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    two = with_second_listener(one)
    proxy = make_proxy(two, concurrency=2, drain_time_s=0.2)
    ports = {name: p for name, _, p in proxy.listeners()}
    with RawConn(ports["listener_1"]) as gone, RawConn(ports["listener_0"]) as kept:
        for c in (gone, kept):
            assert c.request(get("/")).header("connection") is None
        proxy.apply(one)
        assert gone.closed_within(10)
        assert kept.request(get("/")).header("connection") is None
    assert proxy.stats()[DRAIN_CLOSE] == 0
    poll(lambda: proxy.stats()["listener_manager.total_listeners_draining"] == 0, timeout=5.0,
         what="the drain to be over")


def test_connection_of_a_listener_removed_then_added_again_stays_the_old_listeners(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # listener_1 is removed, then added again under the same name (a new socket): a connection
    # of the first one still drains (connection: close on its next response), it does not
    # become the new listener's. (A drain time longer than a Duration holds never ends.)
    one = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    two = with_second_listener(one)
    proxy = make_proxy(two, concurrency=1, drain_time_s=1e20, drain_strategy="immediate")
    old_port = {name: p for name, _, p in proxy.listeners()}["listener_1"]
    with RawConn(old_port) as c:
        assert c.request(get("/")).header("connection") is None
        proxy.apply(one)
        proxy.apply(two)
        new_port = {name: p for name, _, p in proxy.listeners()}["listener_1"]
        with RawConn(new_port) as n:
            assert n.request(get("/")).header("connection") is None
        r = c.request(get("/"))
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.closed_within(5)
    poll(lambda: proxy.stats()[DRAIN_CLOSE] == 1, timeout=5.0, what="downstream_cx_drain_close 1")
    assert proxy.stats()["listener_manager.total_listeners_draining"] == 1


def test_a_request_in_flight_when_its_listener_is_removed_is_answered_with_connection_close(
    make_proxy: Callable[..., Any],
) -> None:
    # The drain is looked at when the response head is written, not when the request came.
    held = Held()
    up = CannedUpstream({"*": held})
    try:
        one = bootstrap([route("/", "a")], [cluster("a", up.port)])
        two = with_second_listener(one)
        proxy = make_proxy(two, concurrency=1, drain_strategy="immediate")
        new_port = {name: p for name, _, p in proxy.listeners()}["listener_1"]
        with RawConn(new_port) as c:
            c.send(get("/"))
            assert held.asked.wait(10)
            proxy.apply(one)
            poll(lambda: connect_refused("127.0.0.1", new_port), timeout=APPLY_VISIBLE_S,
                 what="the removed listener to refuse connections")
            held.release()
            r = c.read_response()
            assert (r.status, r.header("connection"), r.body) == (200, "close", b"held")
            assert c.closed_within(5)
        poll(lambda: proxy.stats()[DRAIN_CLOSE] == 1, timeout=5.0, what="downstream_cx_drain_close 1")
    finally:
        up.stop()


def test_apply_rebinding_listener_on_same_port_drops_no_connection(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # Started on port 0, then applied with listener_0 asking for the port it got: the engine
    # treats that as a changed address and binds new SO_REUSEPORT sockets on the same port before
    # closing the old ones. A connect that sits in an old socket's accept queue at that moment
    # must still be served (Envoy hands the old socket over rather than closing it).
    config = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    failures: list[str] = []
    for _ in range(5):  # only the first apply rebinds, so a fresh proxy per round
        proxy = make_proxy(config, concurrency=2)
        port = proxy.listener_port()
        with Hammer(port, keepalive=0, fresh=4) as hammer:
            before = hammer.ok
            proxy.apply(pinned(config, port))
            assert proxy.listener_port() == port
            poll(lambda n=before: hammer.ok > n + 50, timeout=5.0, what="hammer progress")
        failures += hammer.failures
        proxy.stop(timeout_s=2.0)
    assert failures == [], f"{len(failures)} failed: {failures[:5]}"


def test_a_new_stat_prefix_takes_a_kept_connections_buffered_share_along(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # A keep-alive connection counts its last read in http.<prefix>.downstream_cx_rx_bytes_buffered;
    # once an apply renames the prefix, its share moves to the new scope with its next request
    # (the old one goes back to 0, not below), and goes when the connection closes.
    config = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    proxy = make_proxy(config, concurrency=1)
    port = proxy.listener_port()
    old, new = "http.ingress_http.downstream_cx_rx_bytes_buffered", "http.renamed.downstream_cx_rx_bytes_buffered"
    first = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
    second = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        s.sendall(first)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        poll(lambda: proxy.stats().get(old) == len(first), timeout=5, what="the first request's share")
        renamed = pinned(config, port)
        hcm = renamed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = "renamed"
        proxy.apply(renamed)
        poll(lambda: fresh_get(port, "/fresh") is None and new in proxy.stats(), timeout=APPLY_VISIBLE_S,
             what="the renamed scope")
        s.sendall(second)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        poll(lambda: (proxy.stats().get(old), proxy.stats().get(new)) == (0, len(second)), timeout=5,
             what="the share moved")
    # (The old scope may be gone by then, with the last connection that held its listener.)
    poll(lambda: (proxy.stats().get(old, 0), proxy.stats().get(new)) == (0, 0), timeout=5, what="the share gone")


def test_membership_change_counts_only_clusters_whose_hosts_changed(
    make_proxy: Callable[..., Any], two_upstreams: tuple[Upstream, Upstream]
) -> None:
    # As Envoy's CDS: an update that leaves a cluster as it was keeps it, hosts and all (no
    # membership change); a cluster whose config changed starts again from its new hosts.
    a, b = two_upstreams
    config = bootstrap([route("/", "a")], [cluster("a", a.port), cluster("b", b.port)])
    proxy = make_proxy(config, concurrency=2)
    port = proxy.listener_port()
    change = "cluster.{}.membership_change"
    poll(lambda: (proxy.stats().get(change.format("a")), proxy.stats().get(change.format("b"))) == (1, 1),
         timeout=5, what="the first hosts")
    # Only the routes change: both clusters stay as they were.
    proxy.apply(pinned(bootstrap([route("/", "b")], [cluster("a", a.port), cluster("b", b.port)]), port))
    poll(lambda: served_by(f"http://127.0.0.1:{port}/x").headers["x-upstream-port"] == str(b.port),
         timeout=APPLY_VISIBLE_S, what="the new routes")
    assert (proxy.stats()[change.format("a")], proxy.stats()[change.format("b")]) == (1, 1)
    # Cluster a now points at b's upstream: its hosts changed.
    proxy.apply(pinned(bootstrap([route("/", "a")], [cluster("a", b.port), cluster("b", b.port)]), port))
    poll(lambda: proxy.stats().get(change.format("a")) == 2, timeout=APPLY_VISIBLE_S, what="a's new hosts")
    assert proxy.stats()[change.format("b")] == 1


def test_apply_counts_added_modified_and_removed_like_envoys_managers(
    make_proxy: Callable[..., Any], two_upstreams: tuple[Upstream, Upstream]
) -> None:
    # As Envoy's CDS and LDS updates count them: by name, a changed config is a modification,
    # and a listener whose connection manager alone changed is updated in place (its sockets
    # kept); each listener added or modified is created again on every worker.
    a, b = two_upstreams
    config = bootstrap([route("/", "a")], [cluster("a", a.port), cluster("b", b.port)])
    proxy = make_proxy(config, concurrency=2)
    port = proxy.listener_port()
    # Routes changed, cluster b changed, cluster a removed, cluster c added.
    changed = pinned(bootstrap([route("/", "b")], [cluster("b", a.port), cluster("c", b.port)]), port)
    proxy.apply(changed)
    expected = {
        "cluster_manager.active_clusters": 2, "cluster_manager.cluster_added": 3,
        "cluster_manager.cluster_modified": 1, "cluster_manager.cluster_removed": 1,
        "listener_manager.total_listeners_active": 1, "listener_manager.listener_added": 1,
        # The port went from 0 to the one bound: the address changed, so not in place.
        "listener_manager.listener_modified": 1, "listener_manager.listener_in_place_updated": 0,
        "listener_manager.listener_create_success": 4, "listener_manager.listener_removed": 0,
    }
    poll(lambda: {k: proxy.stats().get(k) for k in expected} == expected, timeout=5,
         what="the first apply's counts")
    # The same config again: nothing changes.
    proxy.apply(changed)
    # Only the routes change now (same address): in place.
    proxy.apply(pinned(bootstrap([route("/", "c")], [cluster("b", a.port), cluster("c", b.port)]), port))
    expected.update({"listener_manager.listener_modified": 2, "listener_manager.listener_in_place_updated": 1,
                     "listener_manager.listener_create_success": 6})
    poll(lambda: {k: proxy.stats().get(k) for k in expected} == expected, timeout=5, what="the in-place update")
    # A second listener added, then the first removed.
    two = pinned(bootstrap([route("/", "c")], [cluster("b", a.port), cluster("c", b.port)]), port)
    extra = copy.deepcopy(two["static_resources"]["listeners"][0])
    extra["name"] = "listener_1"
    extra["address"]["socket_address"]["port_value"] = 0
    two["static_resources"]["listeners"].append(extra)
    proxy.apply(two)
    only_second = copy.deepcopy(two)
    del only_second["static_resources"]["listeners"][0]
    proxy.apply(only_second)
    expected.update({"listener_manager.listener_added": 2, "listener_manager.listener_removed": 1,
                     "listener_manager.listener_create_success": 8, "listener_manager.total_listeners_active": 1})
    poll(lambda: {k: proxy.stats().get(k) for k in expected} == expected, timeout=5,
         what="the added and removed listener")


def test_apply_during_a_graceful_drains_accepting_time_adds_listeners(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # The listeners stop only when the drain time is over: until then an apply takes effect
    # (listeners added, as Envoy goes on taking listener changes), and the new one stops
    # with the others.
    one = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    proxy = make_proxy(one, concurrency=2, drain_time_s=600)
    proxy.drain_listeners(graceful=True)
    proxy.apply(with_second_listener(one))
    ports = {name: p for name, _, p in proxy.listeners()}
    assert set(ports) == {"listener_0", "listener_1"}
    r = poll(lambda: served_by(f"http://127.0.0.1:{ports['listener_1']}/new"), timeout=APPLY_VISIBLE_S,
             what="the new listener to serve")
    assert r.status_code == 200
    assert proxy.stats()["listener_manager.listener_stopped"] == 0
    proxy.drain_listeners()  # stops both now
    for port in ports.values():
        poll(lambda p=port: connect_refused("127.0.0.1", p), timeout=5.0, what="the listeners to stop")
    poll(lambda: proxy.stats()["listener_manager.listener_stopped"] == 2, timeout=5.0, what="2 stopped")


def test_a_tunnel_of_a_removed_listener_closes_once_the_drain_time_has_passed(
    make_proxy: Callable[..., Any]
) -> None:
    # A websocket on a listener a config removed lasts as long as the drain time, as the
    # listener's idle connections, even with no idle timeout to end it.
    from tests.dataplane.test_upgrades import UPGRADE, Tunnel

    t = Tunnel()
    up = CannedUpstream({"*": t})
    hcm = {"upgrade_configs": [{"upgrade_type": "websocket"}], "stream_idle_timeout": "0s"}
    one = bootstrap([route("/", "a")], [cluster("a", up.port)], hcm=hcm)
    two = with_second_listener(one)
    proxy = make_proxy(two, drain_time_s=0.3)
    ports = {name: p for name, _, p in proxy.listeners()}
    with RawConn(ports["listener_1"]) as c:
        c.send(UPGRADE)
        assert c.read_response().status == 101
        proxy.apply(one)
        assert c.closed_within(10)
    assert t.eof.wait(5)
    up.stop()


def test_a_changed_clusters_circuit_breakers_start_again_with_connections_of_their_own(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    # As Envoy's CDS: an update that leaves a cluster as it was keeps its breakers and what they
    # count (its pooled connection is reused); a changed cluster counts from none, so it does
    # not reuse connections the old one counted (Envoy's new cluster has pools of its own).
    def config(max_requests: int) -> dict[str, Any]:
        breakers = {"thresholds": [{"max_connections": 1, "max_requests": max_requests,
                                    "track_remaining": True}]}
        return bootstrap([route("/", "up")], [cluster("up", upstream.port, circuit_breakers=breakers)])

    proxy = make_proxy(config(5))
    port = proxy.listener_port()
    remaining = "cluster.up.circuit_breakers.default.remaining_cx"
    with RawConn(port) as c:
        c.send(get("/a"))
        assert c.read_response().status == 200
    assert (upstream.connections, proxy.stats()[remaining]) == (1, 0)
    proxy.apply(pinned(config(5), port))
    with RawConn(port) as c:
        c.send(get("/b"))
        assert c.read_response().status == 200
    assert (upstream.connections, proxy.stats()[remaining]) == (1, 0)
    proxy.apply(pinned(config(6), port))
    poll(lambda: proxy.stats()[remaining] == 1, timeout=APPLY_VISIBLE_S, what="the new breakers")
    with RawConn(port) as c:
        c.send(get("/c"))
        assert c.read_response().status == 200
    # The old connection was closed, not reused: one connection, counted by the new breakers.
    assert upstream.connections == 2
    poll(lambda: upstream.open_connections == 1, timeout=5, what="the old connection to close")
    assert proxy.stats()[remaining] == 0
