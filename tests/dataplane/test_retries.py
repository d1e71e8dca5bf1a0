"""A route's `retry_policy`: which answers and failures are tried again, how often, with what
body and headers, and how the stats, the response flags and the local replies say so. Every
expectation here was checked against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy runs
this file against it; docs/envoy-behaviour.md section 24)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane.conftest import RawConn, get, shape
from tests.support.configs import bootstrap, cluster, route
from tests.support.stats_diff import dead_port
from tests.support.wait import wait_for, wait_stat

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"
REASONS = {
    200: "OK",
    409: "Conflict",
    404: "Not Found",
    418: "Unknown",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ScriptedUpstream:
    """A keep-alive HTTP/1.1 upstream on port 0 that answers each request with the next step of
    its script (then `200 ok`): `(code, body)` or `(code, body, extra header lines)`, `"close"`
    (close without answering), `"rst"` (reset), `"partial"` (half a head, then close) or
    `("slow", ms)` (200 after `ms`). It records each request's head, body and connection."""

    def __init__(self, script: list[Any] | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = list(script or [])
        self.requests: list[tuple[int, str, bytes]] = []
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def header(self, i: int, name: str) -> str | None:
        for line in self.requests[i][1].split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.lower() == name:
                return v.strip()
        return None

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                n = self.connections
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s: socket.socket, conn: int) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                text = head.decode("latin-1")
                lower = text.lower()
                body = b""
                if "content-length:" in lower:
                    n = int(lower.split("content-length:")[1].split("\r\n")[0])
                    while len(buf) < n:
                        buf += s.recv(65536)
                    body, buf = buf[:n], buf[n:]
                elif "transfer-encoding: chunked" in lower:
                    while b"\r\n0\r\n\r\n" not in b"\r\n" + buf:
                        buf += s.recv(65536)
                    end = (b"\r\n" + buf).index(b"\r\n0\r\n\r\n") + 5
                    body, buf = buf[:end], buf[end:]
                with self._lock:
                    self.requests.append((conn, text, body))
                    step = self.script.pop(0) if self.script else (200, b"ok")
                if step == "close":
                    return
                if step == "rst":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if step == "partial":
                    s.sendall(b"HTTP/1.1 200 OK\r\ncontent-le")
                    return
                if isinstance(step, tuple) and step[0] == "slow":
                    time.sleep(step[1] / 1000)
                    step = (200, b"slow")
                code, payload, *extra = step
                head = f"HTTP/1.1 {code} {REASONS[code]}\r\n{''.join(extra)}content-length: {len(payload)}\r\n\r\n"
                s.sendall(head.encode() + payload)
        except OSError:
            pass
        finally:
            s.close()


@pytest.fixture
def scripted() -> Any:
    made: list[ScriptedUpstream] = []

    def make(script: list[Any] | None = None) -> ScriptedUpstream:
        u = ScriptedUpstream(script)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


# Responses each proxy of a test has given (by id: each test's proxies are made by `proxy`).
ANSWERED: dict[int, int] = {}


def policy(retry_on: str = "5xx", **kw: Any) -> dict[str, Any]:
    return {"retry_policy": {"retry_on": retry_on, **kw}}


def proxy(
    make_proxy: Any,
    ports: list[int],
    log: Path | None = None,
    *,
    routes: list[Any] | None = None,
    vhost: dict[str, Any] | None = None,
    hcm: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    **cluster_extra: Any,
) -> Any:
    h = dict(hcm or {})
    if log is not None:
        h["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": str(log),
                    "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
                },
            }
        ]
    vhosts = None
    if vhost is not None:
        vhosts = [{"name": "vh", "domains": ["*"], "routes": routes, **vhost}]
    b = bootstrap(routes or [], [cluster("up", *ports, **cluster_extra)], hcm=h, virtual_hosts=vhosts)
    b["static_resources"]["listeners"][0].update(listener or {})
    p = make_proxy(b)
    ANSWERED[id(p)] = 0
    return p


def ask(p: Any, data: bytes) -> Any:
    """One request on a new connection; returns once the proxy has counted its response (stats
    are updated just after a response is written)."""
    with RawConn(p.listener_port()) as c:
        r = c.request(data)
    ANSWERED[id(p)] = ANSWERED.get(id(p), 0) + 1
    wait_stat(p, "http.ingress_http.downstream_rq_completed", ANSWERED[id(p)])
    return r


def stat(p: Any, name: str) -> int:
    return p.stats().get(f"cluster.up.{name}", 0)


def logged(p: Any, log: Path) -> list[str]:
    p.stop()
    return log.read_text().splitlines()


def test_5xx_is_tried_again_until_the_retries_run_out(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([(503, b"upstream says no")] * 3)
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [up.port], log, routes=[route("/", "up", **policy(num_retries=2))])
    r = ask(p, get("/x"))
    # The last try's response goes to the client as it came.
    assert r.status_line == "HTTP/1.1 503 Service Unavailable"
    assert [k for k, _ in shape(r.headers)] == ["content-length", "x-envoy-upstream-service-time", "date", "server"]
    assert r.body == b"upstream says no"
    assert len(up.requests) == 3
    # Each retried response's connection was closed under it (its body unread).
    assert [c for c, _, _ in up.requests] == [1, 2, 3]
    assert len({up.header(i, "x-request-id") for i in range(3)}) == 1
    timeouts = [int(up.header(i, "x-envoy-expected-rq-timeout-ms") or 0) for i in range(3)]
    assert timeouts[0] == 15000 and 0 < timeouts[2] <= timeouts[1] <= 15000
    assert up.header(0, "x-envoy-attempt-count") is None
    s = p.stats()
    expected = {
        "upstream_rq_retry": 2,
        "upstream_rq_retry_backoff_exponential": 2,
        "upstream_rq_retry_limit_exceeded": 1,
        "upstream_rq_retry_success": 0,
        "upstream_rq_retry_overflow": 0,
        "upstream_rq_total": 3,
        "upstream_rq_completed": 1,
        "upstream_rq_503": 1,
        "retry.upstream_rq_503": 2,
        "retry.upstream_rq_5xx": 2,
        "retry.upstream_rq_completed": 2,
        "upstream_cx_total": 3,
        "upstream_cx_destroy_local_with_active_rq": 2,
        "upstream_rq_per_try_timeout": 0,
    }
    assert {k: s.get(f"cluster.up.{k}", 0) for k in expected} == expected
    assert logged(p, log) == ["503 URX via_upstream 3"]


def test_a_retry_that_succeeds(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([(503, b"no")])
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [up.port], log, routes=[route("/", "up", **policy())])
    r = ask(p, get("/x"))
    assert (r.status, r.body) == (200, b"ok")
    s = p.stats()
    assert s["cluster.up.upstream_rq_retry"] == 1
    assert s["cluster.up.upstream_rq_retry_success"] == 1
    assert s["cluster.up.upstream_rq_200"] == 1
    assert s["cluster.up.retry.upstream_rq_503"] == 1
    assert "cluster.up.upstream_rq_503" not in s
    assert logged(p, log) == ["200 - via_upstream 2"]


def test_a_bodiless_retried_response_keeps_its_connection(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy())])
    assert ask(p, get("/x")).status == 200
    assert [c for c, _, _ in up.requests] == [1, 1]
    assert stat(p, "upstream_cx_total") == 1


@pytest.mark.parametrize(
    ("retry_on", "step", "tried_again"),
    [
        ("gateway-error", (500, b"e"), False),
        ("gateway-error", (502, b"e"), True),
        ("gateway-error", (504, b"e"), True),
        ("gateway-error", "close", True),
        ("5xx", (500, b"e"), True),
        ("5xx", "rst", True),
        ("retriable-4xx", (409, b"e"), True),
        ("retriable-4xx", (404, b"e"), False),
        ("reset", (503, b"e"), False),
        ("reset", "close", True),
        ("reset", "partial", True),
        ("connect-failure", "close", False),
        ("connect-failure", (503, b"e"), False),
        (" 5xx , reset", "close", True),
    ],
)
def test_what_each_condition_tries_again(
    make_proxy: Any, scripted: Any, retry_on: str, step: Any, tried_again: bool
) -> None:
    up = scripted([step])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy(retry_on))])
    r = ask(p, get("/x"))
    assert len(up.requests) == (2 if tried_again else 1)
    if tried_again:
        assert (r.status, r.body) == (200, b"ok")
    assert stat(p, "upstream_rq_retry") == int(tried_again)


def test_retriable_status_codes(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(418, b"tea"), (503, b"no")])
    p = proxy(
        make_proxy,
        [up.port],
        routes=[route("/", "up", **policy("retriable-status-codes", retriable_status_codes=[418], num_retries=3))],
    )
    r = ask(p, get("/x"))
    # 418 is tried again; 503 is not a listed code.
    assert (r.status, r.body) == (503, b"no")
    assert len(up.requests) == 2


def test_a_connect_failure_is_tried_on_another_host(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted()
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [dead_port(), up.port], log, routes=[route("/", "up", **policy("connect-failure"))])
    for _ in range(4):
        assert ask(p, get("/x")).status == 200
    s = p.stats()
    assert s["cluster.up.upstream_cx_connect_fail"] == s["cluster.up.upstream_rq_retry"] >= 1
    assert s["cluster.up.upstream_rq_retry_success"] == s["cluster.up.upstream_rq_retry"]
    lines = logged(p, log)
    assert "200 - via_upstream 2" in lines
    assert set(lines) <= {"200 - via_upstream 1", "200 - via_upstream 2"}


def test_connect_failures_when_the_retries_run_out(make_proxy: Any, tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [dead_port()], log, routes=[route("/", "up", **policy("5xx", num_retries=2))])
    r = ask(p, get("/x"))
    assert r.status_line == "HTTP/1.1 503 Service Unavailable"
    assert r.body == (
        b"upstream connect error or disconnect/reset before headers. retried and the latest "
        b"reset reason: remote connection failure"
    )
    assert shape(r.headers) == [
        ("content-length", "121"),
        ("content-type", "text/plain"),
        ("date", "<date>"),
        ("server", "envoy"),
    ]
    s = p.stats()
    expected = {
        "upstream_cx_connect_fail": 3,
        "upstream_rq_pending_failure_eject": 3,
        "upstream_rq_retry": 2,
        "upstream_rq_retry_limit_exceeded": 1,
        "upstream_rq_total": 0,
        "upstream_rq_503": 1,
        "upstream_rq_completed": 1,
    }
    assert {k: s.get(f"cluster.up.{k}", 0) for k in expected} == expected
    assert logged(p, log) == [
        "503 URX,UF upstream_reset_before_response_started{remote_connection_failure|"
        "delayed_connect_error:_Connection_refused} 3"
    ]


def test_resets_when_the_retries_run_out(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted(["close", "close"])
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [up.port], log, routes=[route("/", "up", **policy("reset"))])
    r = ask(p, get("/x"))
    assert r.status == 503
    assert r.body == (
        b"upstream connect error or disconnect/reset before headers. retried and the latest "
        b"reset reason: connection termination"
    )
    s = p.stats()
    assert s["cluster.up.upstream_rq_total"] == 2
    assert s["cluster.up.upstream_rq_503"] == 1
    assert "cluster.up.retry.upstream_rq_503" not in s
    assert logged(p, log) == ["503 URX,UC upstream_reset_before_response_started{connection_termination} 2"]


def test_the_latest_try_decides(make_proxy: Any, scripted: Any) -> None:
    up = scripted(["close", (503, b"nope")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy(num_retries=1))])
    r = ask(p, get("/x"))
    assert (r.status, r.body) == (503, b"nope")


def test_per_try_timeout(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([("slow", 1000), ("slow", 1000)])
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [up.port], log, routes=[route("/", "up", timeout="3s", **policy(per_try_timeout="0.2s"))])
    r = ask(p, get("/x"))
    assert r.status_line == "HTTP/1.1 504 Gateway Timeout"
    assert r.body == b"upstream request timeout"
    assert [up.header(i, "x-envoy-expected-rq-timeout-ms") for i in range(2)] == ["200", "200"]
    s = p.stats()
    expected = {
        "upstream_rq_per_try_timeout": 2,
        "upstream_rq_timeout": 0,
        "upstream_rq_retry": 1,
        "upstream_rq_retry_limit_exceeded": 1,
        "upstream_rq_504": 1,
        "upstream_rq_total": 2,
        "upstream_cx_destroy_local_with_active_rq": 2,
    }
    assert {k: s.get(f"cluster.up.{k}", 0) for k in expected} == expected
    assert logged(p, log) == ["504 URX,UT upstream_per_try_timeout 2"]


def test_the_route_timeout_covers_every_try(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([("slow", 2000)] * 6)
    log = tmp_path / "a.log"
    p = proxy(
        make_proxy,
        [up.port],
        log,
        routes=[route("/", "up", timeout="0.5s", **policy(per_try_timeout="0.2s", num_retries=5))],
    )
    t0 = time.monotonic()
    r = ask(p, get("/x"))
    assert (r.status, r.body) == (504, b"upstream request timeout")
    assert time.monotonic() - t0 < 1.5
    assert len(up.requests) == 3
    assert int(up.header(2, "x-envoy-expected-rq-timeout-ms") or 0) < 200
    s = p.stats()
    assert s["cluster.up.upstream_rq_timeout"] == 1
    assert s["cluster.up.upstream_rq_per_try_timeout"] == 2
    assert s["cluster.up.upstream_rq_retry_limit_exceeded"] == 0
    assert logged(p, log) == ["504 UT response_timeout 3"]


def test_a_per_try_timeout_ends_with_the_response_head(make_proxy: Any, scripted: Any) -> None:
    up = scripted([("slow", 500)])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy("connect-failure", per_try_timeout="0.2s"))])
    r = ask(p, get("/x"))
    # connect-failure does not retry a per-try timeout: the try's 504.
    assert (r.status, r.body) == (504, b"upstream request timeout")
    assert len(up.requests) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_the_body_goes_again(make_proxy: Any, scripted: Any, chunked: bool) -> None:
    up = scripted([(503, b"no")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy())])
    body = bytes(range(256)) * 16
    if chunked:
        req = (
            b"POST /p HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )
    else:
        req = b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with RawConn(p.listener_port()) as c:
        assert c.request(req).status == 200
        # The connection serves the next request.
        assert c.request(get("/after")).status == 200
    wait_stat(p, "http.ingress_http.downstream_rq_completed", 2)
    assert up.requests[0][2] == up.requests[1][2]
    assert body in up.requests[1][2]
    assert up.requests[0][1] == up.requests[1][1].replace(
        up.header(1, "x-envoy-expected-rq-timeout-ms") or "", up.header(0, "x-envoy-expected-rq-timeout-ms") or ""
    )


def test_a_body_over_the_buffer_limit_is_not_tried_again(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"no")])
    p = proxy(
        make_proxy,
        [up.port],
        routes=[route("/", "up", **policy())],
        listener={"per_connection_buffer_limit_bytes": 1024},
    )
    body = b"x" * 65536
    r = ask(p, b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 65536\r\n\r\n" + body)
    assert (r.status, r.body) == (503, b"no")
    assert len(up.requests) == 1
    assert stat(p, "retry_or_shadow_abandoned") == 1
    assert stat(p, "upstream_rq_retry") == 0


def test_max_retries_refuses_a_retry(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([(503, b"x")])
    log = tmp_path / "a.log"
    p = proxy(
        make_proxy,
        [up.port],
        log,
        routes=[route("/", "up", **policy(num_retries=2))],
        circuit_breakers={"thresholds": [{"max_retries": 0}]},
    )
    r = ask(p, get("/x"))
    assert (r.status, r.body) == (503, b"x")
    s = p.stats()
    assert s["cluster.up.upstream_rq_retry_overflow"] == 1
    assert s["cluster.up.upstream_rq_retry"] == 0
    assert s["cluster.up.circuit_breakers.default.rq_retry_open"] == 0
    assert logged(p, log) == ["503 UO via_upstream 1"]


def test_no_retries_allowed(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([(503, b"x")])
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [up.port], log, routes=[route("/", "up", **policy(num_retries=0))])
    assert ask(p, get("/x")).status == 503
    assert stat(p, "upstream_rq_retry_limit_exceeded") == 1
    assert logged(p, log) == ["503 URX via_upstream 1"]


def test_a_routes_policy_replaces_its_virtual_hosts(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(500, b"a"), (503, b"b"), (503, b"b"), (500, b"c"), (500, b"c"), (500, b"c"), (500, b"c")])
    p = proxy(
        make_proxy,
        [up.port],
        vhost=policy("5xx", num_retries=3),
        routes=[route("/r", "up", **policy("gateway-error", num_retries=1)), route("/n", "up")],
    )
    assert ask(p, get("/r")).body == b"a"
    assert len(up.requests) == 1
    assert ask(p, get("/r")).body == b"b"
    assert len(up.requests) == 3
    assert ask(p, get("/n")).body == b"c"
    assert len(up.requests) == 7


def test_attempt_counts(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"a"), (503, b"b"), (503, b"c")])
    counts = {"include_request_attempt_count": True, "include_attempt_count_in_response": True}
    p = proxy(make_proxy, [up.port], vhost=counts, routes=[route("/", "up", **policy(num_retries=2))])
    r = ask(p, get("/x"))
    assert (r.status, r.body) == (503, b"c")
    assert [k for k, _ in shape(r.headers)] == [
        "content-length",
        "x-envoy-upstream-service-time",
        "x-envoy-attempt-count",
        "date",
        "server",
    ]
    assert r.header("x-envoy-attempt-count") == "3"
    assert [up.header(i, "x-envoy-attempt-count") for i in range(3)] == ["1", "2", "3"]
    for _, head, _ in up.requests:
        names = [line.split(":")[0] for line in head.split("\r\n")[1:]]
        assert names[-2:] == ["x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count"]


def test_local_replies_say_the_attempt_count_first(make_proxy: Any) -> None:
    p = proxy(
        make_proxy,
        [dead_port()],
        vhost={"include_attempt_count_in_response": True},
        routes=[route("/", "up", **policy("connect-failure", num_retries=2))],
    )
    r = ask(p, get("/x"))
    assert r.status == 503
    assert shape(r.headers)[:2] == [("x-envoy-attempt-count", "3"), ("content-length", "121")]


def test_a_clients_retry_headers_are_dropped(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"x")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up")])
    r = ask(p, get("/x", extra="x-envoy-retry-on: 5xx\r\nx-envoy-max-retries: 2\r\n"))
    assert r.status == 503
    assert len(up.requests) == 1
    assert up.header(0, "x-envoy-retry-on") is None
    assert up.header(0, "x-envoy-max-retries") is None


def test_previous_hosts_tries_another_host(make_proxy: Any, scripted: Any) -> None:
    bad = scripted([(503, b"bad")] * 40)
    good = scripted()
    predicate = [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ]
    p = proxy(
        make_proxy,
        [bad.port, good.port],
        lb_policy="RANDOM",
        routes=[route("/", "up", **policy(retry_host_predicate=predicate, host_selection_retry_max_attempts=40))],
    )
    for _ in range(20):
        assert ask(p, get("/x")).body == b"ok"
    assert stat(p, "upstream_rq_retry") == len(bad.requests)
    wait_for(lambda: stat(p, "upstream_rq_retry_success") == len(bad.requests), 5, "the retries' successes")


# A back-off so long that only the test's end (or a route timeout) ends it: a wait below 0.5 s
# has a chance of 1 in 1,200.
SLOW_BACKOFF = {"retry_back_off": {"base_interval": "600s", "max_interval": "600s"}}


def test_nothing_is_on_a_connection_during_the_back_off(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"")])
    p = proxy(make_proxy, [up.port], routes=[route("/r", "up", **policy(**SLOW_BACKOFF)), route("/n", "up")],
              circuit_breakers={"thresholds": [{"max_requests": 1}]})
    with RawConn(p.listener_port()) as waiting:
        waiting.send(get("/r"))
        wait_stat(p, "cluster.up.retry.upstream_rq_503", 1)
        # max_requests: 1 does not count the request waiting out its back-off.
        assert ask(p, get("/n")).status == 200


def test_a_reused_connection_keeps_max_requests_per_connection(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy())], max_requests_per_connection=1)
    assert ask(p, get("/x")).status == 200
    assert [c for c, _, _ in up.requests] == [1, 2]
    assert stat(p, "upstream_cx_max_requests") == 2


def test_each_invalid_head_counts_a_protocol_error(make_proxy: Any, scripted: Any) -> None:
    up = scripted(["partial", "partial"])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy("reset"))])
    r = ask(p, get("/x"))
    assert r.status == 502
    assert r.body == (b"upstream connect error or disconnect/reset before headers. retried and the latest "
                      b"reset reason: protocol error")
    assert stat(p, "upstream_cx_protocol_error") == 2


def test_the_route_timeout_in_the_back_off(make_proxy: Any, scripted: Any, tmp_path: Path) -> None:
    up = scripted([(503, b"")] * 3)
    log = tmp_path / "a.log"
    p = proxy(make_proxy, [up.port], log, routes=[route("/", "up", timeout="0.3s", **policy(**SLOW_BACKOFF))])
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/x", extra="connection: close\r\n"))
        assert (r.status, r.body) == (504, b"upstream request timeout")
        # The client's `connection: close` holds.
        assert r.header("connection") == "close"
        assert c.closed_within(2.0)
    wait_stat(p, "http.ingress_http.downstream_rq_completed", 1)
    # No retry went out and nothing was upstream when the time ran out: nothing counted there.
    keys = ["upstream_rq_retry", "upstream_rq_retry_backoff_exponential", "upstream_rq_timeout",
            "upstream_rq_504", "upstream_rq_completed", "upstream_rq_total"]
    assert {k: stat(p, k) for k in keys} == {**dict.fromkeys(keys, 0), "upstream_rq_total": 1}
    assert logged(p, log) == ["504 UT response_timeout 1"]


def test_a_client_leaving_during_the_back_off(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy(**SLOW_BACKOFF))])
    c = RawConn(p.listener_port())
    c.send(get("/x"))
    wait_stat(p, "cluster.up.retry.upstream_rq_503", 1)
    c.close()
    wait_stat(p, "http.ingress_http.downstream_rq_rx_reset", 1)
    wait_stat(p, "cluster.up.circuit_breakers.default.rq_retry_open", 0)
    keys = ["upstream_rq_cancelled", "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_completed"]
    assert {k: stat(p, k) for k in keys} == dict.fromkeys(keys, 0)


def test_a_policy_without_conditions_keeps_nothing(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"no")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", retry_policy={"num_retries": 3})],
              listener={"per_connection_buffer_limit_bytes": 1024})
    r = ask(p, b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 65536\r\n\r\n" + b"x" * 65536)
    assert (r.status, r.body) == (503, b"no")
    assert stat(p, "retry_or_shadow_abandoned") == 0


def test_pipelined_requests_after_a_retried_post(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"no"), (503, b"")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy(num_retries=3))])
    body = b"abc" * 1000
    req = b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with RawConn(p.listener_port()) as c:
        c.send(req + get("/after") + get("/third"))
        assert [c.read_response().status for _ in range(3)] == [200, 200, 200]
    assert up.requests[0][2] == up.requests[1][2] == up.requests[2][2] == body
    assert up.requests[3][1].startswith("GET /after")
    assert up.requests[4][1].startswith("GET /third")


@pytest.mark.parametrize("level", ["route", "virtual_host"])
def test_the_request_buffer_limit_bounds_the_kept_body(make_proxy: Any, scripted: Any, level: str) -> None:
    up = scripted([(503, b"no"), (200, b"ok"), (503, b"no")])
    limit = {"per_request_buffer_limit_bytes": 1024}
    r = {"match": {"prefix": "/"}, "route": {"cluster": "up", **policy()}}
    if level == "route":
        r.update(limit)
    p = proxy(make_proxy, [up.port], routes=[r], vhost=limit if level == "virtual_host" else {})
    small = b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 1000\r\n\r\n" + b"s" * 1000
    assert ask(p, small).status == 200
    big = b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 65536\r\n\r\n" + b"b" * 65536
    assert ask(p, big).body == b"no"
    assert len(up.requests) == 3
    assert stat(p, "retry_or_shadow_abandoned") == 1


@pytest.mark.parametrize("lb_policy", ["RING_HASH", "MAGLEV"])
def test_previous_hosts_under_a_hashing_balancer(make_proxy: Any, scripted: Any, lb_policy: str) -> None:
    bad = scripted([(503, b"bad")] * 100)
    good = scripted()
    predicate = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]
    p = proxy(make_proxy, [bad.port, good.port], lb_policy=lb_policy, routes=[route(
        "/", "up", hash_policy=[{"header": {"header_name": "x-k"}}],
        **policy(retry_host_predicate=predicate, host_selection_retry_max_attempts=20))])
    # A key hashed to the bad host is tried again elsewhere: the balancer walks on from its
    # point (each pick moves one point: twenty of them all on the bad host is a 1 in 10^6 case).
    bodies = [ask(p, get("/x", extra=f"x-k: {i}\r\n")).body for i in range(16)]
    assert bodies == [b"ok"] * 16
    assert stat(p, "upstream_rq_retry") == len(bad.requests) >= 1


def test_retriable_headers(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(200, b"again", "x-retry: yes\r\n"), (200, b"kept", "x-retry: no\r\n"), (429, b"slow down")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy(
        "retriable-headers", num_retries=3, retriable_headers=[
            {"name": "x-retry", "string_match": {"exact": "yes"}},
            {"name": ":status", "string_match": {"exact": "429"}}]))])
    # A response with a matching header is tried again; one without is the answer.
    assert ask(p, get("/x")).body == b"kept"
    assert len(up.requests) == 2
    # `:status` matches the response's code.
    assert ask(p, get("/y")).body == b"ok"
    assert len(up.requests) == 4
    assert stat(p, "upstream_rq_retry") == 2


def test_retriable_request_headers(make_proxy: Any, scripted: Any) -> None:
    up = scripted([(503, b"no"), (503, b"no")])
    p = proxy(make_proxy, [up.port], routes=[route("/", "up", **policy(
        retriable_request_headers=[{"name": "x-idempotent", "present_match": True}]))])
    # Only a request with one of the headers is tried again.
    assert ask(p, get("/x")).body == b"no"
    assert len(up.requests) == 1
    assert ask(p, get("/x", extra="x-idempotent: 1\r\n")).body == b"ok"
    assert len(up.requests) == 3
