"""Differential probe of the stats: the same traffic through pyproxy and through the `envoy`
binary, then `/stats` compared. Each scenario (a request proxied, refused, timed out, a client
or an upstream that goes away, ...) runs on a fresh proxy of each kind; the tool prints, per
scenario, every stat of the listener, connection manager and cluster whose value differs, and
the names Envoy has that pyproxy keeps nowhere (leaving out those of features pyproxy lacks).

    python3 -m tests.support.stats_diff [SCENARIO ...]

As with the other probes, a difference is a lead: probe it, then fix and pin it
(tests/dataplane/test_stats.py) or list it in docs/admin.md. Needs `envoy` on PATH and the
built extension (`make inplace`, then run with PYTHONPATH=.).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.dataplane.conftest import AfterContinue, CannedUpstream, Tunnel
from tests.support.configs import bootstrap, cluster, route
from tests.support.route_diff import start
from tests.support.upstream import Upstream
from tests.support.wait import wait_for

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
POST = b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
CANNED = {
    "/cc": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    "/cd": b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nclose-delimited",
    "/bad": b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok",
    # The upstream closes after part of the body it announced.
    "/cut": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello",
    "/cutchunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n",
    "/ws404": b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope",
    "/c100": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "/c103": b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "/c102": b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "/c100503": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    "/c100reset": b"HTTP/1.1 100 Continue\r\nconnection: close\r\n\r\n",
    "*": OK,
}


# An upstream that takes an upgrade: its 101, then an echo, or those bytes and its close.
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
CANNED["/wsecho"] = Tunnel(answer=SWITCH)


CANNED["/hang100"] = AfterContinue()
CANNED["/wsclose"] = Tunnel(answer=SWITCH, close_after=b"bye")
WS = {"hcm": {"upgrade_configs": [{"upgrade_type": "websocket"}], "stream_idle_timeout": "0.5s"}, "canned": True}


def upgrade(path: str, then: bytes = b"") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n".encode()
            + then)
QUIET = ("http.ingress_http.downstream_cx_active", "cluster.up.upstream_rq_active",
         "http.ingress_http.downstream_rq_active")
KEEP = re.compile(r"^(cluster\.up\.|http\.ingress_http\.|listener\.127\.0\.0\.1_0\.|http1\.|overload\.envoy\.)")
# Stats of features pyproxy does not have (yet): not reported as missing.
LACKS = re.compile(
    r"(lb_(?!healthy_panic)|_http[23]_|http[23]\.|up\.http1\.|metadata_not_supported|"
    r"response_flood|ssl|tracing|"
    r"assignment_|update_|version|warming|original_dst|bind_errors|"
    r"_0rtt|internal_redirect|max_duration_reached(?<!downstream_cx_max_duration_reached)(?<!downstream_rq_max_duration_reached)|"
    r"flow_control|shadow|maintenance|premature_resets|ip_detection|"
    r"too_large|listener_filter|pre_cx|transport_socket|no_filter_chain|"
    r"extension_config|preconnect|queue_overloaded|idle_timeout|"
    r"soft_drain|passthrough|rs_too_large|"
    r"total_match_count|membership_change|max_host_weight|close_notify_missing|rx_reset_no_error|"
    r"connect_attempts_exceeded|max_host|http3_broken)"
)


# Stats whose values differ by design (docs/admin.md), compared only in the scenarios named.
BY_DESIGN = {
    # Envoy sends its FIN only after its delayed close, so a client that reads to the end
    # counts a timeout there; pyproxy sends its FIN with the reply. Both count a client that
    # stays after a reply to a request whose body was not read.
    "http.ingress_http.downstream_cx_delayed_close_timeout": {"lingerstay"},
}
# Stats whose values differ by design in the scenarios named, and are compared in the others.
# After the `connection: close` that overload's disable_http_keepalive adds, Envoy waits for
# the client to close (its drain sequence); pyproxy closes once the response is written
# (docs/config.md, drain_timeout).
NOT_IN = {
    "http.ingress_http.downstream_cx_destroy_local": {"keepaliveoff"},
    "http.ingress_http.downstream_cx_destroy_remote": {"keepaliveoff"},
}


def stalled_port() -> tuple[int, list[socket.socket]]:
    """A port whose accept queue is full, so a connect to it hangs; keep the sockets open."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    # One filler fills a queue of backlog 0 (see tests/dataplane/test_stats.py, stalled_port).
    held = [lst, socket.create_connection(lst.getsockname(), timeout=5)]
    return lst.getsockname()[1], held


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def send(port: int, raw: bytes, then_close: bool = True, until: Callable[[], bool] | None = None,
         then: bytes = b"") -> None:
    """Sends `raw`; then, if `until` is given, waits for it (and sends `then`); then, unless
    `then_close` is false, reads to the end."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(3)
        s.sendall(raw)
        if until:
            wait_for(until, 5, "the scenario's state")
            if then:
                s.sendall(then)
        if then_close:
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass


OVERLOADED = "overload.envoy.overload_actions.stop_accepting_requests.active"
KEEPALIVE_OFF = "overload.envoy.overload_actions.disable_http_keepalive.active"


def second_connection(port: int) -> None:
    """A request on a second connection while a first one is open."""
    with socket.create_connection(("127.0.0.1", port)) as first:
        first.sendall(get("/x", "connection: keep-alive\r\n").replace(b"connection: close\r\n", b""))
        first.recv(65536)
        try:
            send(port, get("/x"))
        except OSError:
            pass


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example.com\r\n{extra}connection: close\r\n\r\n".encode()


# name -> (cluster settings, traffic)
Scenario = tuple[dict[str, Any], Callable[[int, Any], None]]
SCENARIOS: dict[str, Scenario] = {
    "ok": ({}, lambda p, _: send(p, get("/x"))),
    "post": ({}, lambda p, _: send(p, POST)),
    "status500": ({}, lambda p, _: send(p, get("/status/500/x"))),
    "timeout": ({}, lambda p, _: send(p, get("/hang"))),
    "reset": ({}, lambda p, _: send(p, get("/reset"))),
    "refused": ({"dead": True}, lambda p, _: send(p, get("/x"))),
    "nohealthy": ({"empty": True}, lambda p, _: send(p, get("/x"))),
    "noroute": ({}, lambda p, _: send(p, get("/nope"))),
    "direct": ({}, lambda p, _: send(p, get("/d"))),
    "codec400": ({}, lambda p, _: send(p, b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n")),
    "http10": ({}, lambda p, _: send(p, b"GET / HTTP/1.0\r\n\r\n")),
    # The client goes once its request is on an upstream connection.
    "clientgone": ({}, lambda p, proxy: send(p, get("/hang"), then_close=False,
                                            until=lambda: proxy.stats().get("cluster.up.upstream_rq_active") == 1)),
    "cc": ({"canned": True}, lambda p, _: send(p, get("/cc"))),
    "cd": ({"canned": True}, lambda p, _: send(p, get("/cd"))),
    "bad": ({"canned": True}, lambda p, _: send(p, get("/bad"))),
    "cut": ({"canned": True}, lambda p, _: send(p, get("/cut"))),
    "cutchunked": ({"canned": True}, lambda p, _: send(p, get("/cutchunked"))),
    "maxreq": ({"max_requests_per_connection": 1}, lambda p, _: (send(p, get("/x")), send(p, get("/x")))),
    # The upstream answers before the request body is in (early response).
    "early": ({"canned": True, "early": True},
              lambda p, _: send(p, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")),
    # The client goes while the upstream connection is being made, part of its body sent.
    "gonewhileconnecting": ({"stalled": True}, lambda p, proxy: send(
        p, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab", then_close=False,
        until=lambda: proxy.stats().get("cluster.up.upstream_rq_pending_total") == 1)),
    # The connection manager's options (session 16): path rules, header rules, limits.
    "paths": ({"hcm": {"normalize_path": True, "merge_slashes": True,
                       "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}},
              lambda p, _: [send(p, get(path)) for path in ("/x/../x//y", "/x%2Fy", "/x%00", "/x#f")]),
    "escapedreject": ({"hcm": {"path_with_escaped_slashes_action": "REJECT_REQUEST"}},
                      lambda p, _: send(p, get("/x%2fy"))),
    "nonrelative": ({}, lambda p, _: send(p, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n")),
    "underscorereject": ({"hcm": {"common_http_protocol_options": {
        "headers_with_underscores_action": "REJECT_REQUEST"}}}, lambda p, _: send(p, get("/x", "a_b: 1\r\n"))),
    "underscoredrop": ({"hcm": {"common_http_protocol_options": {
        "headers_with_underscores_action": "DROP_HEADER"}}}, lambda p, _: send(p, get("/x", "a_b: 1\r\nc_d: 2\r\n"))),
    "maxheaders": ({"hcm": {"common_http_protocol_options": {"max_headers_count": 2}}},
                   lambda p, _: send(p, get("/x", "a: 1\r\nb: 2\r\n"))),
    "hcmmaxreq": ({"hcm": {"common_http_protocol_options": {"max_requests_per_connection": 1}}},
                  lambda p, _: send(p, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")),
    "postnoroute": ({}, lambda p, _: send(p, b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")),
    # A refused request whose body is never read; the client neither sends more nor closes
    # until the proxy has closed (the delayed close's timeout, 1 s).
    "lingerstay": ({}, lambda p, proxy: send(
        p, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nab", then_close=False,
        until=lambda: proxy.stats().get("http.ingress_http.downstream_cx_destroy") == 1)),
    # Upgrades (session 17): the client ends the tunnel, the upstream does, the idle timeout
    # does; the upstream refuses; no route takes it.
    "wsclient": (WS, lambda p, proxy: send(p, upgrade("/wsecho", b"data"), then_close=False, until=lambda: (
        proxy.stats().get("cluster.up.upstream_cx_rx_bytes_total", 0) >= 81))),  # the 101 and the echo
    "wsupstream": (WS, lambda p, _: send(p, upgrade("/wsclose"))),
    "wsidle": (WS, lambda p, _: send(p, upgrade("/wsecho"))),
    "ws404": (WS, lambda p, _: send(p, upgrade("/ws404"))),
    "wsrefused": ({"canned": True}, lambda p, _: send(p, upgrade("/wsecho"))),
    # Retries (session 20): 503s until the retries run out, refused connections, per-try
    # timeouts.
    # A health check: its first check at start (then none within the run: no_traffic_interval),
    # passing, or failing (so the lone host is in panic).
    "hcok": ({"hc": "/x/healthz"}, lambda p, _: send(p, get("/x"))),
    "hcfail": ({"hc": "/status/503/healthz"}, lambda p, _: send(p, get("/x"))),
    "od5xx": ({"od": {"consecutive_5xx": 2, "max_ejection_percent": 100}}, lambda p, proxy: (
        send(p, get("/status/503/x")), send(p, get("/status/503/x")),
        # Ejected (the pool drained) before the third request, which panics.
        wait_for(lambda: proxy.stats().get("cluster.up.outlier_detection.ejections_active") == 1, 5, "ejection"),
        send(p, get("/status/503/x")))),
    "odoverflow": ({"od": {"consecutive_5xx": 1}}, lambda p, _: [send(p, get("/status/500/x")) for _ in range(2)]),
    "odrefused": ({"od": {"consecutive_5xx": 1, "enforcing_consecutive_gateway_failure": 100,
                          "consecutive_gateway_failure": 1, "max_ejection_percent": 100}, "dead": True},
                  lambda p, _: send(p, get("/x"))),
    "retry503": ({}, lambda p, _: send(p, get("/retry/status/503/x"))),
    "msd": ({"hcm": {"common_http_protocol_options": {"max_stream_duration": "0.2s"}}},
            lambda p, _: send(p, get("/hang"))),
    "pertryidle": ({}, lambda p, _: send(p, get("/idle/hang"))),
    "retryrefused": ({"dead": True}, lambda p, _: send(p, get("/retry/x"))),
    "retrypertry": ({}, lambda p, _: send(p, get("/pertry/hang"))),
    "streamidle": ({"hcm": {"stream_idle_timeout": "0.1s"}}, lambda p, _: send(p, get("/hang"))),
    "expect100": ({}, lambda p, _: send(p, b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                                             b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")),
    "expect100proxied": ({"canned": True, "hcm": {"proxy_100_continue": True}}, lambda p, _: send(
        p, b"POST /c100 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nExpect: 100-continue\r\n"
           b"Content-Length: 2\r\n\r\nhi")),
    "up100": ({"canned": True}, lambda p, _: send(p, get("/c100"))),
    "up100proxied": ({"canned": True, "hcm": {"proxy_100_continue": True}}, lambda p, _: send(p, get("/c100"))),
    "up103": ({"canned": True}, lambda p, _: send(p, get("/c103"))),
    "up103proxied": ({"canned": True, "hcm": {"proxy_100_continue": True}}, lambda p, _: send(p, get("/c103"))),
    "up102": ({"canned": True}, lambda p, _: send(p, get("/c102"))),
    # An informational response, then the upstream fails: not tried again, no upstream code.
    "retry100": ({"canned": True}, lambda p, _: send(p, get("/retry/c100503"))),
    "hang100": ({"canned": True}, lambda p, _: send(p, get("/hang100"))),
    "reset100": ({"canned": True}, lambda p, _: send(p, get("/c100reset"))),
    "pertry100": ({"canned": True}, lambda p, _: send(p, get("/pertry/hang100"))),
    # The overload manager refuses the request; the global connection limit a connection.
    "overloaded": ({"overload": "0.99"}, lambda p, proxy: (
        wait_for(lambda: proxy.stats().get(OVERLOADED) == 1, 5, "the action"), send(p, get("/x")))),
    "maxcx": ({"max_cx": 1}, lambda p, _: second_connection(p)),
    "keepaliveoff": ({"overload": "0.99", "action": "disable_http_keepalive"}, lambda p, proxy: (
        wait_for(lambda: proxy.stats().get(KEEPALIVE_OFF) == 1, 5, "the action"),
        send(p, get("/x", "connection: keep-alive\r\n").replace(b"connection: close\r\n", b"")))),
    # The request's body goes wrong, or stalls, after its head went upstream.
    "badbody": ({}, lambda p, proxy: send(
        p, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n",
        until=lambda: proxy.stats().get("cluster.up.upstream_rq_active") == 1, then=b"zz\r\n")),
    "idlebody": ({"hcm": {"stream_idle_timeout": "0.2s"}}, lambda p, _: send(
        p, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhi")),
    "rqtimeoutbody": ({"hcm": {"request_timeout": "0.2s"}}, lambda p, _: send(
        p, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhi")),
}


def config(port: int, settings: dict[str, Any]) -> dict[str, Any]:
    c = cluster("up", port)
    if settings.get("empty"):
        c["load_assignment"]["endpoints"] = []
    if "max_requests_per_connection" in settings:
        c["max_requests_per_connection"] = settings["max_requests_per_connection"]
    if "hc" in settings:
        c["health_checks"] = [{"timeout": "1s", "interval": "10s", "unhealthy_threshold": 2, "healthy_threshold": 2,
                               "http_health_check": {"path": settings["hc"]}}]
    if "od" in settings:
        c["outlier_detection"] = settings["od"]
    overload: dict[str, Any] | None = None
    if "overload" in settings:
        pressure = Path(tempfile.mkdtemp(prefix="stats-diff-")) / "pressure"
        pressure.write_text(settings["overload"])
        overload = {"refresh_interval": "0.05s", "resource_monitors": [{
            "name": "envoy.resource_monitors.injected_resource", "typed_config": {
                "@type": "type.googleapis.com/"
                         "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
                "filename": str(pressure)}}],
            "actions": [{"name": "envoy.overload_actions." + settings.get("action", "stop_accepting_requests"),
                         "triggers": [{"name": "envoy.resource_monitors.injected_resource",
                                       "threshold": {"value": 0.95}}]}]}
    if "max_cx" in settings:
        overload = {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
                "@type": "type.googleapis.com/"
                         "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": settings["max_cx"]}}]}
    # No catch-all: /nope finds no route.
    routes = [{"match": {"prefix": "/d"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}},
              route("/hang", "up", timeout="0.3s")]
    routes += [route(prefix, "up") for prefix in ("/x", "/status", "/reset", "/cc", "/cd", "/bad", "/ws", "/c1")]
    routes += [route("/retry/", "up", prefix_rewrite="/", retry_policy={"retry_on": "5xx", "num_retries": 2}),
               route("/pertry/", "up", prefix_rewrite="/", retry_policy={"retry_on": "5xx",
                                                                       "per_try_timeout": "0.2s"}),
               route("/idle/", "up", prefix_rewrite="/", retry_policy={"retry_on": "5xx", "num_retries": 1,
                                                                     "per_try_idle_timeout": "0.1s"})]
    b = bootstrap(routes, [c], hcm=settings.get("hcm"))
    if overload:
        b["overload_manager"] = overload
    return b


def measure(kind: str, name: str, work: Path) -> dict[str, int] | str:
    settings, traffic = SCENARIOS[name]
    up: Any = CannedUpstream(CANNED, settings.get("early", False)) if settings.get("canned") else Upstream().start()
    held: list[socket.socket] = []
    if settings.get("stalled"):
        port, held = stalled_port()
    else:
        port = dead_port() if settings.get("dead") else up.port
    started = start(kind, config(port, settings), work)
    if isinstance(started, str):
        up.stop()
        for h in held:
            h.close()
        return started
    proxy, listener = started
    try:
        traffic(listener, proxy)
        # Done once no client connection and no upstream request is left (the last counts
        # land as they end).
        wait_for(lambda: not any(proxy.stats().get(k) for k in QUIET), 10, "the proxy to go quiet")
        return {k: v for k, v in proxy.stats().items() if KEEP.match(k)}
    finally:
        proxy.stop()
        up.stop()
        for h in held:
            h.close()


def main() -> None:
    names = sys.argv[1:] or list(SCENARIOS)
    work = Path(tempfile.mkdtemp(prefix="stats-diff-"))
    differing = 0
    for name in names:
        got = {kind: measure(kind, name, work) for kind in ("pyproxy", "envoy")}
        p, e = got["pyproxy"], got["envoy"]
        if isinstance(p, str) or isinstance(e, str):
            print(json.dumps({"scenario": name, "pyproxy": p if isinstance(p, str) else "ran",
                              "envoy": e if isinstance(e, str) else "ran"}))
            differing += 1
            continue
        values = {k: (e.get(k), p.get(k)) for k in sorted(set(p) & set(e))
                  if p[k] != e[k] and name in BY_DESIGN.get(k, {name}) and name not in NOT_IN.get(k, set())}
        missing = sorted(k for k in set(e) - set(p) if e[k] and not LACKS.search(k))
        if values or missing:
            differing += 1
            print(json.dumps({"scenario": name, "values (envoy, pyproxy)": values, "only envoy, non-zero": missing}))
    print(f"{differing} of {len(names)} scenarios differ")


if __name__ == "__main__":
    main()
