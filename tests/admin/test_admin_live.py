"""The admin interface end to end: a real `pyproxy.Proxy` (native engine, real listener, real
upstream) and its admin server from the bootstrap, every endpoint checked after real requests.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytest.importorskip("pyproxy._native")  # native: drop this skip once the engine builds in CI

from pyproxy import Proxy  # noqa: E402
from pyproxy.admin.endpoints import ENDPOINTS  # noqa: E402

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

CONFIG = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: listener_0
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
"""


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"hello\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@dataclass
class Live:
    proxy: Proxy
    admin: httpx.Client
    listener: str  # base URL of listener_0
    upstream_port: int


@pytest.fixture
def live(tmp_path: Path, upstream_port: int) -> Iterator[Live]:
    path = tmp_path / "pyproxy.yaml"
    path.write_text(CONFIG.format(upstream_port=upstream_port, hcm=HCM))
    proxy = Proxy(str(path), concurrency=1, service_cluster="svc", service_node="node1")
    proxy.start()
    try:
        assert proxy.admin_address is not None
        host, port = proxy.admin_address
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as admin:
            assert admin.get("/ready").text == "LIVE\n"  # readiness signal
            listener = f"http://127.0.0.1:{proxy.listener_port('listener_0')}"
            yield Live(proxy, admin, listener, upstream_port)
    finally:
        proxy.stop(timeout_s=1)
    assert not [t for t in threading.enumerate() if t.name == "pyproxy-admin"]


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Polls `check` until it holds (stats are merged across workers asynchronously)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _send(live: Live, n: int) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            assert client.get(live.listener + "/x").text == "hello\n"


def test_stats_after_real_requests(live: Live) -> None:
    _send(live, 3)
    eventually(lambda: "cluster.backend.upstream_rq_total: 3\n" in live.admin.get("/stats").text)
    r = live.admin.get("/stats?filter=upstream_rq_total")
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"
    assert all("upstream_rq_total" in line for line in r.text.splitlines())
    stats = live.admin.get("/stats?format=json").json()["stats"]
    assert {"name": "cluster.backend.upstream_rq_total", "value": 3} in stats


@pytest.mark.parametrize("path", ["/stats/prometheus", "/stats?format=prometheus"])
def test_prometheus_names(live: Live, path: str) -> None:
    _send(live, 2)
    wanted = 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 2\n'
    eventually(lambda: wanted in live.admin.get(path).text)
    r = live.admin.get(path)
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"
    assert "# TYPE envoy_cluster_upstream_rq_total counter\n" in r.text


def test_usedonly_and_reset_counters(live: Live) -> None:
    _send(live, 1)
    eventually(lambda: "cluster.backend.upstream_rq_total: 1" in live.admin.get("/stats?usedonly").text)
    assert "cluster_manager.cluster_added: 1\n" in live.admin.get("/stats").text
    assert live.admin.post("/reset_counters").text == "OK\n"
    text = live.admin.get("/stats").text
    assert "cluster.backend.upstream_rq_total: 0\n" in text
    # The engine's own counters too (the managers'); gauges keep their values.
    assert "cluster_manager.cluster_added: 0\n" in text
    assert "cluster_manager.active_clusters: 1\n" in text


def test_clusters_text_and_json(live: Live) -> None:
    _send(live, 2)
    host = f"backend::127.0.0.1:{live.upstream_port}::"
    eventually(lambda: f"{host}rq_total::2\n" in live.admin.get("/clusters").text)
    text = live.admin.get("/clusters").text
    assert text.startswith("backend::observability_name::backend\n")
    assert f"{host}rq_success::2\n{host}rq_timeout::0\n" in text
    assert f"{host}health_flags::healthy\n" in text
    body = live.admin.get("/clusters?format=json").json()
    status = body["cluster_statuses"][0]
    assert status["name"] == "backend"
    address = status["host_statuses"][0]["address"]["socket_address"]
    assert address == {"address": "127.0.0.1", "port_value": live.upstream_port}


def test_listeners(live: Live) -> None:
    port = live.proxy.listener_port("listener_0")
    assert live.admin.get("/listeners").text == f"listener_0::127.0.0.1:{port}\n"
    assert live.admin.get("/listeners?format=json").json() == {
        "listener_statuses": [
            {
                "name": "listener_0",
                "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            }
        ]
    }


def test_server_info_and_config_dump(live: Live) -> None:
    info = live.admin.get("/server_info").json()
    assert info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 1
    assert (info["node"]["id"], info["node"]["cluster"]) == ("node1", "svc")
    dump = live.admin.get("/config_dump").json()
    kinds = [c["@type"].rsplit(".", 1)[1] for c in dump["configs"]]
    assert kinds == [
        "BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
        "ScopedRoutesConfigDump", "RoutesConfigDump", "SecretsConfigDump",
    ]  # fmt: skip
    assert dump["configs"][1]["static_clusters"][0]["cluster"]["name"] == "backend"
    assert dump["configs"][4]["static_route_configs"][0]["route_config"]["name"] == "local_route"


def test_help_memory_runtime_home(live: Live) -> None:
    assert live.admin.get("/help").text.startswith("admin commands are:\n  /: Admin home page\n")
    assert int(live.admin.get("/memory").json()["allocated"]) > 0
    assert live.admin.get("/runtime").json() == {"layers": [], "entries": {}}
    assert live.admin.get("/").headers["content-type"] == "text/html; charset=UTF-8"
    assert live.admin.get("/nosuch").status_code == 404


@pytest.mark.parametrize("path", [e.path for e in ENDPOINTS if e.mutates_state])
def test_mutating_get_is_405(live: Live, path: str) -> None:
    r = live.admin.get(path)
    assert (r.status_code, r.text) == (405, "Method GET not allowed, POST required.")
    assert live.admin.get("/ready").status_code == 200
    assert not live.proxy.wait(0)


def server_state(live: Live) -> tuple[int, int]:
    stats = live.admin.get("/stats?format=json&filter=^server\\.(live|state)$").json()["stats"]
    return next(x["value"] for x in stats if x["name"] == "server.live"), next(
        x["value"] for x in stats if x["name"] == "server.state")


def test_healthcheck_fail_and_ok(live: Live) -> None:
    # envoy binary: while health checks fail, server.live is 0 and server.state 1 (draining).
    assert server_state(live) == (1, 0)
    assert live.admin.post("/healthcheck/fail").text == "OK\n"
    r = live.admin.get("/ready")
    assert (r.status_code, r.text) == (503, "DRAINING\n")
    assert server_state(live) == (0, 1)
    assert live.admin.post("/healthcheck/ok").text == "OK\n"
    assert live.admin.get("/ready").text == "LIVE\n"
    assert server_state(live) == (1, 0)


def test_logging(live: Live) -> None:
    listing = live.admin.post("/logging").text
    assert listing.startswith("active loggers:\n  pyproxy: ")
    assert "  pyproxy: debug\n" in live.admin.post("/logging?level=debug").text
    assert live.admin.post("/logging?level=bogus").status_code == 400


def test_drain_listeners(live: Live) -> None:
    _send(live, 1)
    assert live.admin.post("/drain_listeners").text == "OK\n"
    with pytest.raises(httpx.TransportError):
        httpx.get(live.listener + "/x", timeout=2)
    # envoy binary: the server stays live after /drain_listeners.
    assert live.admin.get("/ready").text == "LIVE\n"
    assert live.admin.get("/server_info").json()["state"] == "LIVE"
    assert server_state(live) == (1, 0)


def test_quitquitquit(live: Live) -> None:
    assert live.admin.post("/quitquitquit").text == "OK\n"
    assert live.proxy.wait(5)
