"""Unit tests of the admin layer: the real AdminServer on a real socket, every handler, compared
with real Envoy 1.40's responses (tests/admin/data/envoy/).

The proxy is a double (`FakeProxy`) that holds real values: a bootstrap loaded from the same YAML
file Envoy ran with, a command line, times, state. Only its `engine` is canned (`FakeEngine`):
fixed strings and dicts for the engine calls, so these tests do not need the native module.
test_admin_live.py runs the same endpoints against the real engine.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from envoy_capture import ENVOY, FIXED_HEADERS, capture

from pyproxy.admin import AdminServer
from pyproxy.admin.endpoints import ENDPOINTS, help_text
from pyproxy.errors import ConfigError

# --- the double ----------------------------------------------------------------------------------

#: Canned engine output; the real rendering is tested in core/ and in test_admin_live.py.
STATS = {
    "text": "cluster.backend.upstream_rq_total: 4\n",
    "json": '{"stats":[{"name":"cluster.backend.upstream_rq_total","value":4}]}',
    "prometheus": "# TYPE envoy_cluster_upstream_rq_total counter\n"
    'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 4\n',
}

#: What Envoy's /clusters showed for the capture run (tests/admin/data/envoy/clusters.http).
BACKEND_HOST = {
    "address": "127.0.0.1",
    "port": 36617,
    "weight": 1,
    "cx_active": 0,
    "cx_connect_fail": 0,
    "cx_total": 4,
    "rq_active": 0,
    "rq_error": 0,
    "rq_success": 4,
    "rq_timeout": 0,
    "rq_total": 4,
    "healthy": True,
}


class FakeEngine:
    """Fixed answers for the engine calls only; records what it was asked."""

    concurrency = 1

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.stats_gate: threading.Event | None = None  # set by a test to hold stats() open

    def stats(self, format: str = "text", filter: str | None = None, used_only: bool = False) -> str:
        self.calls.append(("stats", format, filter, used_only))
        if self.stats_gate is not None:
            assert self.stats_gate.wait(10)
        if filter == "(":
            raise ConfigError("regex parse error: unclosed group")
        return STATS[format]

    def reset_counters(self) -> None:
        self.calls.append(("reset_counters",))

    def clusters(self) -> list[dict]:
        return [{"name": "backend", "hosts": [dict(BACKEND_HOST)]}]

    def listeners(self) -> list[tuple[str, str, int]]:
        return [("listener_0", "127.0.0.1", 33727)]


class FakeProxy:
    """The `pyproxy.proxy.Proxy` surface the admin server uses, holding real values."""

    def __init__(self, raw_config: dict) -> None:
        self.engine = FakeEngine()
        self.raw_config = raw_config
        self.bootstrap = None
        self.command_line = {
            "concurrency": 1,
            "config_path": "envoy.yaml",
            "config_yaml": "",
            "log_level": "info",
            "service_cluster": "svc",
            "service_node": "node1",
            "drain_time_s": 600,
            "mode": "serve",
        }
        self.start_time = time.time() - 7
        self.last_updated = self.start_time + 0.012
        self.state = "LIVE"
        self.healthcheck_failed = False
        self.drained = 0
        self.shutdown_requested = threading.Event()
        self._loggers = {"admin": "info", "http": "info", "upstream": "info"}

    def drain_listeners(self, graceful: bool = False, skip_exit: bool = False) -> None:
        self.drained += 1
        self.graceful, self.skip_exit = graceful, skip_exit

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    def set_log_level(self, level: str, logger: str | None = None) -> None:
        for name in [logger] if logger else list(self._loggers):
            self._loggers[name] = level

    def loggers(self) -> dict[str, str]:
        return dict(self._loggers)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> FakeProxy:
    # The very bootstrap Envoy ran with for the captures, loaded from its YAML file.
    return FakeProxy(yaml.safe_load((ENVOY / "envoy.yaml").read_text()))


def _admin_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pyproxy-admin"]


@pytest.fixture(params=["keepalive", "close"])
def admin(
    request: pytest.FixtureRequest, proxy: FakeProxy, caplog: pytest.LogCaptureFixture
) -> Iterator[httpx.Client]:
    """A started AdminServer on port 0 and a client for it; every test runs once over one
    keep-alive connection and once with a connection per request. Teardown asserts the server
    thread and every admin connection are gone and nothing was logged as an error."""
    server = AdminServer(proxy, "127.0.0.1", 0)
    host, port = server.start()
    headers = {"connection": "close"} if request.param == "close" else {}
    with httpx.Client(base_url=f"http://{host}:{port}", headers=headers, timeout=10) as client:
        yield client
    server.stop()
    assert server.open_connections == 0
    assert not _admin_threads()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def assert_envoy_headers(response: httpx.Response, envoy_name: str) -> None:
    envoy = capture(envoy_name)
    for name in FIXED_HEADERS:
        assert response.headers.get(name) == envoy.headers.get(name), name


# --- generated from the table --------------------------------------------------------------------


def test_help_has_envoys_layout_and_lines(admin: httpx.Client) -> None:
    r = admin.get("/help")
    assert r.status_code == 200
    assert_envoy_headers(r, "help")
    assert r.text == help_text()
    envoy_lines = capture("help").text.splitlines()
    ours = r.text.splitlines()
    assert ours[0] == envoy_lines[0] == "admin commands are:"
    # Every endpoint line is Envoy's line, word for word, in Envoy's (sorted) order.
    endpoint_lines = [line for line in ours[1:] if not line.startswith("      ")]
    assert all(line in envoy_lines for line in endpoint_lines)
    assert endpoint_lines == [x for x in envoy_lines if x in endpoint_lines]
    # Parameter lines sit under their endpoint, indented six spaces.
    assert all(re.match(r"^(  /\S*( \(POST\))?|      \w+): ", line) for line in ours[1:])


def test_help_lists_every_endpoint_once_with_post_marker() -> None:
    text = help_text()
    for e in ENDPOINTS:
        marker = " (POST)" if e.mutates_state else ""
        assert text.count(f"\n  {e.path}{marker}: {e.help}\n") == 1


def test_unknown_path_is_envoys_404(admin: httpx.Client) -> None:
    r = admin.get("/nosuch")
    envoy = capture("not_found")
    assert r.status_code == envoy.status == 404
    assert_envoy_headers(r, "not_found")
    assert r.text == "invalid path. " + help_text()
    assert envoy.text.startswith("invalid path. admin commands are:\n")


MUTATING = [e.path for e in ENDPOINTS if e.mutates_state]


def test_the_mutating_set_is_envoys() -> None:
    envoy_post = {m.group(1) for m in re.finditer(r"^  (/\S*) \(POST\):", capture("help").text, re.M)}
    assert set(MUTATING) <= envoy_post
    assert set(MUTATING) == {
        "/drain_listeners", "/healthcheck/fail", "/healthcheck/ok", "/logging",
        "/quitquitquit", "/reopen_logs", "/reset_counters",
    }  # fmt: skip


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("path", MUTATING)
def test_mutating_endpoint_refuses_non_post(
    admin: httpx.Client, proxy: FakeProxy, path: str, method: str
) -> None:
    r = admin.request(method, path + "?level=debug")
    assert r.status_code == 405
    assert r.text == f"Method {method} not allowed, POST required."
    assert_envoy_headers(r, "healthcheck_fail_get")
    assert not proxy.healthcheck_failed and proxy.drained == 0
    assert proxy.engine.calls == [] and not proxy.shutdown_requested.is_set()
    assert set(proxy.loggers().values()) == {"info"}


@pytest.mark.parametrize(
    "envoy_name",
    [
        "healthcheck_fail_get", "quitquitquit_get", "reset_counters_get",
        "drain_listeners_get", "logging_get", "logging_get_level", "put_quit",
    ],
)  # fmt: skip
def test_405_bodies_are_envoys(admin: httpx.Client, envoy_name: str) -> None:
    envoy = capture(envoy_name)
    request_line = {
        "healthcheck_fail_get": ("GET", "/healthcheck/fail"),
        "quitquitquit_get": ("GET", "/quitquitquit"),
        "reset_counters_get": ("GET", "/reset_counters"),
        "drain_listeners_get": ("GET", "/drain_listeners"),
        "logging_get": ("GET", "/logging"),
        "logging_get_level": ("GET", "/logging?level=debug"),
        "put_quit": ("PUT", "/quitquitquit"),
    }[envoy_name]
    r = admin.request(*request_line)
    assert (r.status_code, r.content) == (envoy.status, envoy.body)


def test_head_on_mutating_endpoint_is_405_without_body(admin: httpx.Client) -> None:
    r = admin.head("/quitquitquit")
    assert r.status_code == capture("head_quit").status == 405
    assert r.content == b""


def test_home_page_links_every_endpoint(admin: httpx.Client) -> None:
    r = admin.get("/")
    assert r.status_code == 200
    assert_envoy_headers(r, "root")
    assert r.text.startswith("<!DOCTYPE html>")
    for e in ENDPOINTS:
        if e.path == "/":
            continue
        name = e.path.lstrip("/")
        if e.mutates_state:
            assert f"<form action='{name}' method='post'" in r.text
        else:
            assert f"<a href='{name}'>" in r.text


# --- /ready, /server_info ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "HEAD"])
def test_ready_live_any_method(admin: httpx.Client, method: str) -> None:
    envoy = capture({"GET": "ready", "PUT": "put_ready", "POST": "post_ready", "HEAD": "head_ready"}[method])
    r = admin.request(method, "/ready")
    assert (r.status_code, r.content) == (envoy.status, envoy.body)
    assert_envoy_headers(r, "ready")


@pytest.mark.parametrize("state", ["PRE_INITIALIZING", "DRAINING", "SHUTDOWN"])
def test_ready_not_live_is_503_with_state(admin: httpx.Client, proxy: FakeProxy, state: str) -> None:
    proxy.state = state
    r = admin.get("/ready")
    assert (r.status_code, r.text) == (503, state + "\n")


def test_healthcheck_fail_reports_draining_like_envoy(admin: httpx.Client, proxy: FakeProxy) -> None:
    r = admin.post("/healthcheck/fail")
    assert (r.status_code, r.content) == (200, capture("healthcheck_fail_post").body)
    assert proxy.healthcheck_failed
    envoy = capture("ready_hcfail")
    r = admin.get("/ready")
    assert (r.status_code, r.content) == (envoy.status, envoy.body)
    assert admin.get("/server_info").json()["state"] == "DRAINING"
    r = admin.post("/healthcheck/ok")
    assert (r.status_code, r.content) == (200, capture("healthcheck_ok_post").body)
    assert not proxy.healthcheck_failed
    assert admin.get("/ready").text == "LIVE\n"


def _shape(value: Any) -> Any:
    """Keys (in order) and value types, recursively: what a JSON consumer depends on."""
    if isinstance(value, dict):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_server_info_has_envoys_fields(admin: httpx.Client) -> None:
    r = admin.get("/server_info")
    assert r.status_code == 200
    assert_envoy_headers(r, "server_info")
    ours, envoy = r.json(), json.loads(capture("server_info").body)
    assert list(ours) == list(envoy)
    assert _shape(ours["command_line_options"]) == _shape(envoy["command_line_options"])
    envoy["node"]["extensions"] = []  # pyproxy has no extension registry to list
    assert _shape(ours["node"]) == _shape(envoy["node"])
    assert ours["state"] == "LIVE"
    assert re.fullmatch(r"pyproxy/\d+\.\d+\.\d+\S*/Clean/RELEASE/none", ours["version"])
    assert ours["uptime_current_epoch"] == ours["uptime_all_epochs"]
    assert 7 <= int(ours["uptime_current_epoch"].rstrip("s")) < 60
    assert ours["hot_restart_version"] == "disabled"
    options = ours["command_line_options"]
    assert (options["concurrency"], options["config_path"], options["mode"]) == (1, "envoy.yaml", "Serve")
    assert (options["service_cluster"], options["service_node"]) == ("svc", "node1")
    assert options["drain_time"] == "600s" == envoy["command_line_options"]["drain_time"]
    assert options["file_flush_interval"] == "10s" == envoy["command_line_options"]["file_flush_interval"]
    assert (ours["node"]["id"], ours["node"]["cluster"]) == ("node1", "svc")
    # Envoy's pretty JSON: one-space indent, trailing newline.
    assert r.text.startswith('{\n "version": ') and r.text.endswith("}\n")


def test_hot_restart_version(admin: httpx.Client) -> None:
    r = admin.get("/hot_restart_version")
    assert (r.status_code, r.text) == (200, "disabled")
    assert_envoy_headers(r, "hot_restart_version")


# --- /stats --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "envoy_name", "engine_args"),
    [
        ("", "stats", ("text", None, False)),
        ("?format=json", "stats_json", ("json", None, False)),
        ("?format=prometheus", "stats_format_prometheus", ("prometheus", None, False)),
        ("?filter=upstream_rq", "stats_filter", ("text", "upstream_rq", False)),
        ("?usedonly", "stats_usedonly", ("text", None, True)),
        ("?format=json&usedonly&filter=%5Ecluster%5C.", "stats_json", ("json", r"^cluster\.", True)),
        ("?type=All&histogram_buckets=cumulative", "stats", ("text", None, False)),
    ],
)
def test_stats_renders_in_one_engine_call(
    admin: httpx.Client, proxy: FakeProxy, query: str, envoy_name: str, engine_args: tuple
) -> None:
    r = admin.get("/stats" + query)
    assert r.status_code == 200
    assert_envoy_headers(r, envoy_name)
    assert proxy.engine.calls == [("stats", *engine_args)]
    assert r.text == STATS[engine_args[0]]


@pytest.mark.parametrize(
    ("query", "engine_args"),
    [("", ("prometheus", None, False)), ("?usedonly&filter=backend", ("prometheus", "backend", True))],
)
def test_stats_prometheus(admin: httpx.Client, proxy: FakeProxy, query: str, engine_args: tuple) -> None:
    r = admin.get("/stats/prometheus" + query)
    assert r.status_code == 200
    assert_envoy_headers(r, "stats_prometheus")  # text/plain; charset=UTF-8, as Envoy 1.40
    assert proxy.engine.calls == [("stats", *engine_args)]
    assert r.text == STATS["prometheus"]


@pytest.mark.parametrize(
    ("path", "envoy_name"), [("/stats", "stats_badfilter"), ("/stats/prometheus", "prom_bad_regex")]
)
def test_stats_bad_regex_is_400(admin: httpx.Client, path: str, envoy_name: str) -> None:
    r = admin.get(path + "?filter=(")
    envoy = capture(envoy_name)
    assert r.status_code == envoy.status == 400
    assert_envoy_headers(r, envoy_name)
    assert r.text.startswith("Invalid re2 regex: ") and envoy.text.startswith("Invalid re2 regex: ")


@pytest.mark.parametrize("query", ["?format=xml", "?format=html", "?type=Counters", "?invert_filter"])
def test_stats_unsupported_queries_are_400(admin: httpx.Client, proxy: FakeProxy, query: str) -> None:
    r = admin.get("/stats" + query)
    assert r.status_code == 400
    assert proxy.engine.calls == []
    if query == "?format=xml":
        assert capture("stats_bad_format").status == 400
        assert r.text == "usage: /stats?format=(json|prometheus|text)\n\n"


def test_admin_loop_stays_responsive_while_engine_renders(admin: httpx.Client, proxy: FakeProxy) -> None:
    gate = threading.Event()
    proxy.engine.stats_gate = gate
    result: list[httpx.Response] = []
    base = str(admin.base_url)
    slow = threading.Thread(target=lambda: result.append(httpx.get(base + "/stats", timeout=10)))
    slow.start()
    try:
        # /ready answers while /stats is blocked inside the engine call.
        assert httpx.get(base + "/ready", timeout=5).text == "LIVE\n"
    finally:
        gate.set()
        slow.join()
    assert result[0].text == STATS["text"]


def test_reset_counters(admin: httpx.Client, proxy: FakeProxy) -> None:
    r = admin.post("/reset_counters")
    assert (r.status_code, r.content) == (200, capture("reset_counters_post").body)
    assert proxy.engine.calls == [("reset_counters",)]


# --- /config_dump --------------------------------------------------------------------------------


def _normalize_dump(dump: dict) -> dict:
    """Drops what legitimately differs between pyproxy and Envoy: node identity, timestamps,
    and fields Envoy leaves out because they hold the default value (lb_policy: ROUND_ROBIN)."""
    text = json.dumps(dump)
    text = re.sub(r'"last_updated": "[^"]*"', '"last_updated": "T"', text)
    dump = json.loads(text)
    for config in dump.get("configs", []):
        if "bootstrap" in config:
            config["bootstrap"].pop("node")
        for key in ("static_clusters",):
            for c in config.get(key, []):
                c["cluster"].pop("lb_policy", None)
    for c in dump["configs"][0].get("bootstrap", {}).get("static_resources", {}).get("clusters", []):
        c.pop("lb_policy", None)
    return dump


def test_config_dump_matches_envoy(admin: httpx.Client) -> None:
    r = admin.get("/config_dump")
    assert r.status_code == 200
    assert_envoy_headers(r, "config_dump")
    ours, envoy = r.json(), json.loads(capture("config_dump").body)
    assert [c["@type"] for c in ours["configs"]] == [c["@type"] for c in envoy["configs"]]
    # Same content in the same key order (Envoy prints fields in proto field-number order).
    assert json.dumps(_normalize_dump(ours)) == json.dumps(_normalize_dump(envoy))
    node = ours["configs"][0]["bootstrap"]["node"]
    assert node["user_agent_name"] == "pyproxy"
    assert list(ours["configs"][0]["bootstrap"])[0] == "node"


def test_config_dump_timestamps_are_rfc3339_millis(admin: httpx.Client, proxy: FakeProxy) -> None:
    stamps = re.findall(r'"last_updated": "([^"]*)"', admin.get("/config_dump").text)
    envoy_stamps = re.findall(r'"last_updated": "([^"]*)"', capture("config_dump").text)
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z"
    assert len(stamps) == len(envoy_stamps) == 4
    assert all(re.fullmatch(pattern, s) for s in stamps + envoy_stamps)


def test_config_dump_include_eds(admin: httpx.Client) -> None:
    ours = admin.get("/config_dump?include_eds").json()
    envoy = json.loads(capture("config_dump_include_eds").body)
    assert [c["@type"] for c in ours["configs"]] == [c["@type"] for c in envoy["configs"]]
    eds = ours["configs"][2]["static_endpoint_configs"][0]["endpoint_config"]
    assert eds["@type"] == "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    assert eds["cluster_name"] == "backend"


@pytest.mark.parametrize(
    ("query", "envoy_name"),
    [
        ("?resource=static_clusters&mask=cluster.name", "config_dump_resource_mask"),
        ("?mask=bootstrap.admin", "config_dump_mask"),
        ("?resource=nope", "config_dump_badresource"),
        ("?resource=dynamic_active_clusters", "config_dump_empty_resource"),
        ("?resource=bootstrap", "config_dump_resource_bootstrap"),
        ("?mask=nosuchfield", "config_dump_bad_mask"),
    ],
)
def test_config_dump_queries_byte_for_byte(admin: httpx.Client, query: str, envoy_name: str) -> None:
    envoy = capture(envoy_name)
    r = admin.get("/config_dump" + query)
    assert (r.status_code, r.content) == (envoy.status, envoy.body)
    assert_envoy_headers(r, envoy_name)


@pytest.mark.parametrize(
    ("query", "envoy_name"),
    [
        ("?resource=static_clusters", "config_dump_resource"),
        ("?resource=static_clusters&name_regex=back.*", "config_dump_name_regex"),
    ],
)
def test_config_dump_resource(admin: httpx.Client, query: str, envoy_name: str) -> None:
    r = admin.get("/config_dump" + query)
    ours, envoy = r.json(), json.loads(capture(envoy_name).body)
    for element in ours["configs"] + envoy["configs"]:
        element["cluster"].pop("lb_policy", None)
        element["last_updated"] = "T"
    assert ours == envoy


def test_config_dump_name_regex_keeps_bootstrap_and_empty_dumps(admin: httpx.Client) -> None:
    ours = admin.get("/config_dump?name_regex=nomatch").json()
    assert "bootstrap" in ours["configs"][0]
    assert all(len(c) == 1 for c in ours["configs"][1:])  # only @type, as Envoy


def test_config_dump_bad_name_regex(admin: httpx.Client) -> None:
    envoy = capture("config_dump_bad_regex")
    r = admin.get("/config_dump?name_regex=(")
    assert r.status_code == envoy.status == 400
    assert_envoy_headers(r, "config_dump_bad_regex")
    prefix = "INVALID_ARGUMENT: Error while parsing name_regex from (: "
    assert r.text.startswith(prefix) and envoy.text.startswith(prefix)


# --- /clusters, /listeners -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "envoy_name"),
    [
        ("", "clusters"),
        ("?format=json", "clusters_json"),
        ("?filter=back", "clusters_filter"),
        ("?filter=zzz", "clusters_filter_nomatch"),
        ("?format=xml", "clusters_badformat"),
        ("?filter=(", "clusters_bad_regex"),
    ],
)
def test_clusters_byte_for_byte(admin: httpx.Client, query: str, envoy_name: str) -> None:
    envoy = capture(envoy_name)
    r = admin.get("/clusters" + query)
    assert (r.status_code, r.text) == (envoy.status, envoy.text)
    assert_envoy_headers(r, envoy_name)


@pytest.mark.parametrize(
    ("query", "envoy_name"),
    [("", "listeners"), ("?format=json", "listeners_json"), ("?format=xml", "listeners_badformat")],
)
def test_listeners_byte_for_byte(admin: httpx.Client, query: str, envoy_name: str) -> None:
    envoy = capture(envoy_name)
    r = admin.get("/listeners" + query)
    assert (r.status_code, r.text) == (envoy.status, envoy.text)
    assert_envoy_headers(r, envoy_name)


# --- mutating ------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?graceful", "?skip_exit", "?inboundonly&graceful"])
def test_drain_listeners(admin: httpx.Client, proxy: FakeProxy, query: str) -> None:
    r = admin.post("/drain_listeners" + query)
    assert (r.status_code, r.content) == (200, capture("drain_listeners_post").body)
    # Envoy's inboundonly drains only listeners with traffic_direction: INBOUND; this one has none.
    assert proxy.drained == (0 if "inboundonly" in query else 1)
    if proxy.drained:
        assert (proxy.graceful, proxy.skip_exit) == ("graceful" in query, "skip_exit" in query)


def test_drain_inboundonly_with_every_listener_inbound(admin: httpx.Client, proxy: FakeProxy) -> None:
    proxy.raw_config["static_resources"]["listeners"][0]["traffic_direction"] = "INBOUND"
    assert admin.post("/drain_listeners?inboundonly").text == "OK\n"
    assert proxy.drained == 1


def test_drain_inboundonly_with_mixed_listeners_is_refused(admin: httpx.Client, proxy: FakeProxy) -> None:
    listeners = proxy.raw_config["static_resources"]["listeners"]
    listeners.append({**listeners[0], "name": "out", "traffic_direction": "OUTBOUND"})
    listeners[0]["traffic_direction"] = "INBOUND"
    assert admin.post("/drain_listeners?inboundonly").status_code == 501
    assert proxy.drained == 0


def test_quitquitquit_answers_then_requests_shutdown(admin: httpx.Client, proxy: FakeProxy) -> None:
    r = admin.post("/quitquitquit")
    assert (r.status_code, r.content) == (200, capture("quitquitquit_post").body)
    assert_envoy_headers(r, "quitquitquit_post")
    assert proxy.shutdown_requested.wait(5)


def _split_logging_error(text: str) -> tuple[str, str]:
    head, _, tail = text.partition("active loggers:\n")
    return head, tail


def test_logging_lists_loggers(admin: httpx.Client) -> None:
    r = admin.post("/logging")
    assert r.status_code == 200
    assert_envoy_headers(r, "logging_post")
    assert r.text == "active loggers:\n  admin: info\n  http: info\n  upstream: info\n"
    assert capture("logging_post").text.startswith("active loggers:\n  a2a: info\n")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?level=debug", {"admin": "debug", "http": "debug", "upstream": "debug"}),
        ("?upstream=trace", {"admin": "info", "http": "info", "upstream": "trace"}),
        ("?paths=upstream:warning,http:error", {"admin": "info", "http": "error", "upstream": "warning"}),
    ],
)
def test_logging_changes_levels(admin: httpx.Client, proxy: FakeProxy, query: str, expected: dict) -> None:
    r = admin.post("/logging" + query)
    assert r.status_code == 200
    assert proxy.loggers() == expected
    assert r.text == "active loggers:\n" + "".join(f"  {k}: {v}\n" for k, v in expected.items())


@pytest.mark.parametrize(
    ("query", "envoy_name"),
    [
        ("?level=bogus", "logging_post_bad"),
        ("?nosuch=info", "logging_post_badlogger"),
        ("?level=info&upstream=debug", "logging_post_two"),
        ("?group=upstream:info", "logging_post_group"),
    ],
)
def test_logging_errors_are_envoys(
    admin: httpx.Client, proxy: FakeProxy, query: str, envoy_name: str
) -> None:
    envoy = capture(envoy_name)
    r = admin.post("/logging" + query)
    assert r.status_code == envoy.status == 400
    assert_envoy_headers(r, envoy_name)
    ours_head, ours_list = _split_logging_error(r.text)
    envoy_head, _ = _split_logging_error(envoy.text)
    assert ours_head == envoy_head
    assert ours_list == "  admin: info\n  http: info\n  upstream: info\n"
    assert set(proxy.loggers().values()) == {"info"}


# --- /memory, /runtime ---------------------------------------------------------------------------


def test_memory_has_envoys_fields(admin: httpx.Client) -> None:
    r = admin.get("/memory")
    assert r.status_code == 200
    assert_envoy_headers(r, "memory")
    ours, envoy = r.json(), json.loads(capture("memory").body)
    assert list(ours) == list(envoy)
    assert all(isinstance(v, str) and v.isdigit() for v in ours.values())
    assert int(ours["allocated"]) > 0 and int(ours["total_physical_bytes"]) > 0


def test_runtime_byte_for_byte(admin: httpx.Client) -> None:
    envoy = capture("runtime")
    r = admin.get("/runtime")
    assert (r.status_code, r.content) == (envoy.status, envoy.body)
    assert_envoy_headers(r, "runtime")
