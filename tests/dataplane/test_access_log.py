"""The connection manager's `access_log`: file loggers with Envoy's default format, text and
JSON formats, filters, and the response flags and details of each way a request ends.

Every expected line here was checked against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy
runs this file against it; docs/envoy-behaviour.md section 22)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane.conftest import Closed, RawConn, Tunnel, get
from tests.support.configs import bootstrap, cluster, route
from tests.support.wait import wait_for

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Lines are handed to the file every 20 ms (Envoy's --file-flush-interval-msec).
FLUSH = {"file_flush_interval_ms": 20}


def file_log(path: Path, log_format: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    typed: dict[str, Any] = {"@type": FILE_LOG, "path": str(path)}
    if log_format is not None:
        typed["log_format"] = log_format
    return {"name": "envoy.access_loggers.file", "typed_config": typed, **extra}


def lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    """The file's first `n` lines, once it has them (and no more than that)."""

    def have() -> bool:
        return path.exists() and path.read_text().count("\n") >= n

    wait_for(have, timeout, f"{n} lines in {path.name}")
    text = path.read_text()
    assert text.count("\n") == n, text
    return text.splitlines()


def json_lines(path: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path, n)]


# Every field a probe of one request needs; a JSON log keeps each value's type.
FIELDS = {
    "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "long": "%RESPONSE_FLAGS_LONG%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "rx": "%BYTES_RECEIVED%",
    "tx": "%BYTES_SENT%",
    "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "route": "%ROUTE_NAME%",
    "proto": "%PROTOCOL%",
    "scheme": "%REQ(:SCHEME)%",
    "request_done": "%REQUEST_DURATION%",
    "response_start": "%RESPONSE_DURATION%",
}


@pytest.fixture
def probe(tmp_path: Path, make_proxy: Any, upstream: Any, make_canned: Any) -> Any:
    """A proxy logging FIELDS as JSON, with routes for every way a request can end."""
    canned = make_canned({
        "/bad": b"HTTP/1.1 abc\r\n\r\n",
        "/cut": b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nabc",
        "/reset": lambda s, rest: s.close(),
        "/ws": Tunnel(close_after=b"bye"),
        "*": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    })
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    path = tmp_path / "probe.log"
    routes = [
        {"name": "direct", "match": {"prefix": "/direct"},
         "direct_response": {"status": 200, "body": {"inline_string": "hello"}}},
        {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/x"}},
        {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"}},
        route("/empty", "empty"),
        route("/dead", "dead"),
        {"name": "canned", "match": {"prefix": "/c/"},
         "route": {"cluster": "canned", "prefix_rewrite": "/"}},
        {"match": {"prefix": "/idle/"}, "route": {"cluster": "up", "idle_timeout": "0.3s", "prefix_rewrite": "/"}},
        {"match": {"prefix": "/timeout/"}, "route": {"cluster": "up", "timeout": "0.3s", "prefix_rewrite": "/"}},
        {"name": "up", "match": {"prefix": "/"}, "route": {"cluster": "up"}},
    ]
    vhosts = [
        {"name": "main", "domains": ["example.com", "e"], "routes": routes},
    ]
    config = bootstrap([], [cluster("up", upstream.port), cluster("canned", canned.port),
                            cluster("empty"), cluster("dead", dead_port)],
                       virtual_hosts=vhosts,
                       hcm={"access_log": [file_log(path, {"json_format": FIELDS})],
                            "request_headers_timeout": "1s",
                            "upgrade_configs": [{"upgrade_type": "websocket"}]})
    proxy = make_proxy(config, **FLUSH)
    proxy.log_path = path
    proxy.logged = 0
    proxy.upstream_port = upstream.port
    proxy.canned_port = canned.port
    proxy.dead_port = dead_port
    return proxy


def one(proxy: Any, data: bytes) -> dict[str, Any]:
    """Sends `data` on a new connection, reads the answer (if a whole one comes), closes, and
    returns the request's log entry. A keep-alive connection closed idle is no request."""
    with RawConn(proxy.listener_port()) as c:
        c.send(data)
        try:
            c.read_response()
        except (OSError, Closed):  # an answer cut short, or none
            pass
    return next_entry(proxy)


def next_entry(proxy: Any) -> dict[str, Any]:
    proxy.logged += 1
    return json_lines(proxy.log_path, proxy.logged)[-1]


def test_default_format_is_envoys(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "access.log"
    config = bootstrap([route("/", "up"), ], [cluster("up", upstream.port), cluster("empty")],
                       hcm={"access_log": [file_log(path)]})
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"].insert(0, route("/empty", "empty"))
    proxy = make_proxy(config, **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        ok = c.request(get("/a?x=1", extra="user-agent: ua/1\r\nx-forwarded-for: 1.2.3.4\r\n"))
        c.request(get("/empty"))
    first, second = lines(path, 2)
    m = re.fullmatch(
        r'\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "GET /a\?x=1 HTTP/1\.1" 200 - 0 (\d+) (\d+) (\d+) '
        rf'"1\.2\.3\.4" "ua/1" "{UUID}" "example\.com" "127\.0\.0\.1:{upstream.port}"', first)
    assert m, first
    assert int(m.group(2)) == len(ok.body)
    # START_TIME is the request's, in UTC.
    started = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(started - time.time()) < 60
    assert re.fullmatch(
        rf'\[[^]]+\] "GET /empty HTTP/1\.1" 503 UH 0 19 \d+ - "-" "-" "{UUID}" "example\.com" "-"',
        second), second


def test_json_format_keeps_types_sorts_keys_and_nests(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "json.log"
    fmt = {"json_format": {
        "zeta": "%RESPONSE_CODE%", "alpha": "%REQ(:PATH)%", "code_str": "c=%RESPONSE_CODE%",
        "missing": "%REQ(x-nope)%", "nested": {"b": "%PROTOCOL%", "a": "%BYTES_SENT%"},
        "num": 5, "bool": True, "lit": "plain", "trunc": "%REQ(:PATH):3%",
        "epoch": "%START_TIME(%s)%", "ust": "%RESP(x-envoy-upstream-service-time)%",
    }}
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"access_log": [file_log(path, fmt)]}), **FLUSH)
    before = int(time.time())
    with RawConn(proxy.listener_port()) as c:
        ok = c.request(get("/abc?q=1"))
    (raw,) = lines(path, 1)
    entry = json.loads(raw)
    assert list(entry) == sorted(entry)
    assert list(entry["nested"]) == ["a", "b"]
    assert entry["zeta"] == 200 and entry["code_str"] == "c=200"
    assert entry["alpha"] == "/abc?q=1" and entry["trunc"] == "/ab"
    assert entry["missing"] is None
    assert entry["nested"] == {"a": len(ok.body), "b": "HTTP/1.1"}
    assert entry["num"] == 5 and entry["bool"] is True and entry["lit"] == "plain"
    assert before <= int(entry["epoch"]) <= time.time() + 1
    assert entry["ust"].isdigit()
    # One object per line, nothing else.
    assert raw == json.dumps(entry, separators=(",", ":"))


def test_omit_empty_values(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    text_path, json_path = tmp_path / "text.log", tmp_path / "json.log"
    logs = [
        file_log(text_path, {"text_format_source": {"inline_string": "[%REQ(x-nope)%][%RESPONSE_CODE%]\n"},
                             "omit_empty_values": True}),
        file_log(json_path, {"json_format": {"a": "%REQ(x-nope)%", "b": "%RESPONSE_CODE%"},
                             "omit_empty_values": True}),
    ]
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"access_log": logs}), **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/"))
    assert lines(text_path, 1) == ["[][200]"]
    assert json_lines(json_path, 1) == [{"b": 200}]


def test_proxied_requests(probe: Any) -> None:
    got = one(probe, get("/get") + b"")
    assert got == {**got, "code": 200, "flags": "-", "long": "-", "details": "via_upstream",
                   "method": "GET", "path": "/get", "rx": 0, "upstream": f"127.0.0.1:{probe.upstream_port}",
                   "cluster": "up", "attempts": 1, "route": "up", "proto": "HTTP/1.1", "scheme": "http"}
    assert got["tx"] > 0 and got["request_done"] == 0 and got["response_start"] is not None
    post = one(probe, b"POST /p HTTP/1.1\r\nhost: e\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert (post["code"], post["rx"], post["method"]) == (200, 5, "POST")
    head = one(probe, b"HEAD /get HTTP/1.1\r\nhost: e\r\n\r\n")
    assert (head["code"], head["tx"]) == (200, 0)
    # A prefix rewrite: the original path, from x-envoy-original-path.
    rewritten = one(probe, get("/c/x"))
    assert (rewritten["path"], rewritten["route"], rewritten["tx"]) == ("/c/x", "canned", 2)


# (request, code, flags, details, extra fields expected)
ENDINGS = [
    ("direct", get("/direct"), 200, "-", "direct_response",
     {"tx": 5, "attempts": 0, "cluster": None, "route": "direct"}),
    ("redirect", get("/redirect"), 301, "-", "direct_response", {"tx": 0, "route": None}),
    ("no cluster", get("/by-header"), 503, "NC", "cluster_not_found", {"cluster": None, "attempts": 0}),
    ("no host", get("/empty"), 503, "UH", "no_healthy_upstream",
     {"cluster": "empty", "attempts": 1, "tx": 19, "upstream": None}),
    ("refused", get("/dead"), 503, "UF",
     "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
     {"attempts": 1, "response_start": None}),
    ("bad response", get("/c/bad"), 502, "UPE", "upstream_reset_before_response_started{protocol_error}", {}),
    ("reset", get("/c/reset"), 503, "UC", "upstream_reset_before_response_started{connection_termination}", {}),
    ("cut body", get("/c/cut"), 200, "UPE", "upstream_reset_after_response_started{protocol_error}", {"tx": 3}),
    ("route timeout", get("/timeout/hang"), 504, "UT", "response_timeout", {"tx": 24}),
    ("stream idle", get("/idle/hang"), 504, "SI", "stream_idle_timeout", {}),
    ("no route", b"GET / HTTP/1.1\r\nhost: nowhere.example\r\n\r\n", 404, "NR", "route_not_found",
     {"route": None, "scheme": "http"}),
    ("not a path", b"OPTIONS * HTTP/1.1\r\nhost: e\r\n\r\n", 404, "-", "absolute_path_rejected",
     {"method": "OPTIONS", "path": "*", "scheme": None}),
    ("no host header", b"GET / HTTP/1.1\r\n\r\n", 400, "-", "missing_host_header", {"method": "GET"}),
    ("fragment", b"GET /a#b HTTP/1.1\r\nhost: e\r\n\r\n", 400, "-", "path_normalization_failed", {}),
    ("http/1.0", b"GET / HTTP/1.0\r\n\r\n", 426, "DPE", "low_version",
     {"method": None, "proto": "HTTP/1.1", "request_done": None, "tx": 16}),
    ("bad header", b"GET / HTTP/1.1\r\nhost: e\r\nbad header: x\r\n\r\n", 400, "DPE", "http1.codec_error",
     {"method": None, "tx": 11}),
    ("too large", get("/", extra="x-big: " + "a" * 70000 + "\r\n"), 431, "DPE", "http1.headers_too_large", {}),
    ("bad coding", b"POST / HTTP/1.1\r\nhost: e\r\ntransfer-encoding: gzip\r\n\r\n", 501, "DPE",
     "http1.invalid_transfer_encoding", {}),
    ("length and chunked",
     b"POST / HTTP/1.1\r\nhost: e\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
     400, "DPE", "http1.content_length_and_chunked_not_allowed", {}),
    ("bad chunk", b"POST /p HTTP/1.1\r\nhost: e\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400, "DPE",
     "http1.codec_error", {"method": "POST", "cluster": "up", "request_done": None}),
    ("header timeout", b"GET / HTTP/1.1\r\nhost", 408, "-", "request_header_timeout", {"method": None}),
    ("upgrade refused", get("/", extra="connection: upgrade\r\nupgrade: foo\r\n"), 403, "-", "upgrade_failed",
     {"route": "up", "request_done": None, "cluster": "up", "attempts": 0, "upstream": None}),
]


@pytest.mark.parametrize("case", ENDINGS, ids=[c[0] for c in ENDINGS])
def test_how_a_request_ended(probe: Any, case: Any) -> None:
    _, data, code, flags, details, extra = case
    got = one(probe, data)
    assert (got["code"], got["flags"], got["details"]) == (code, flags, details)
    assert got == {**got, **extra}


def test_a_body_read_while_connecting_is_received(probe: Any) -> None:
    # The connection is refused; the body, which came with the head, was read meanwhile: the
    # request is whole (Envoy buffers it likewise).
    got = one(probe, b"POST /dead HTTP/1.1\r\nhost: e\r\ncontent-length: 5\r\n\r\nhello")
    assert (got["code"], got["flags"], got["rx"]) == (503, "UF", 5)
    assert got["request_done"] is not None
    # A direct response never reads the body (Envoy neither).
    got = one(probe, b"POST /direct HTTP/1.1\r\nhost: e\r\ncontent-length: 5\r\n\r\nhello")
    assert (got["code"], got["rx"], got["request_done"]) == (200, 0, None)


def test_client_that_leaves(probe: Any) -> None:
    # Mid-head: a request Envoy logs, with nothing of it.
    with RawConn(probe.listener_port()) as c:
        c.send(b"GET / HTTP/1.1\r\nhost")
        wait_for(lambda: probe.stats().get("http.ingress_http.downstream_cx_rx_bytes_total", 0) > 0, 5,
                 "the bytes to arrive")
    got = next_entry(probe)
    assert (got["code"], got["flags"], got["details"], got["method"]) == (
        0, "DC", "downstream_remote_disconnect", None)
    # While the upstream is thinking.
    with RawConn(probe.listener_port()) as c:
        c.send(get("/hang"))
        wait_for(lambda: probe.stats().get("cluster.up.upstream_rq_active", 0) == 1, 5, "the request upstream")
    got = next_entry(probe)
    assert (got["code"], got["flags"], got["method"], got["attempts"]) == (0, "DC", "GET", 1)
    # An idle keep-alive connection that closes is no request: the next line is the next
    # request's.
    with RawConn(probe.listener_port()) as c:
        c.request(get("/first"))
    assert next_entry(probe)["path"] == "/first"
    assert one(probe, get("/second"))["path"] == "/second"


def test_tunnel(probe: Any) -> None:
    with RawConn(probe.listener_port()) as c:
        c.send(get("/c/ws", extra="connection: upgrade\r\nupgrade: websocket\r\n"))
        assert c.read_response(head=True).status == 101
        assert c.closed_within(3)
    got = next_entry(probe)
    # The upstream's `bye` after its 101, then its close.
    assert (got["code"], got["flags"], got["tx"], got["request_done"]) == (101, "UC", 3, None)
    assert got["details"] == "upstream_reset_after_response_started{connection_termination}"


def test_filters(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    def log(name: str, flt: dict[str, Any]) -> dict[str, Any]:
        return file_log(tmp_path / f"{name}.log", {"text_format": "%RESPONSE_CODE% %REQ(:PATH)%\n"}, filter=flt)

    cmp = lambda op, v: {"comparison": {"op": op, "value": {"default_value": v, "runtime_key": "k"}}}  # noqa: E731
    logs = [
        log("errors", {"status_code_filter": cmp("GE", 500)}),
        log("ok", {"status_code_filter": cmp("EQ", 200)}),
        log("slow", {"duration_filter": cmp("GE", 200)}),
        log("header", {"header_filter": {"header": {"name": "x-debug", "string_match": {"exact": "1"}}}}),
        log("flags", {"response_flag_filter": {"flags": ["NR", "UH"]}}),
        log("anyflag", {"response_flag_filter": {}}),
        log("and", {"and_filter": {"filters": [{"status_code_filter": cmp("GE", 400)},
                                               {"not_health_check_filter": {}}]}}),
        log("or", {"or_filter": {"filters": [{"status_code_filter": cmp("EQ", 404)},
                                             {"header_filter": {"header": {"name": "x-debug"}}}]}}),
    ]
    config = bootstrap([route("/empty", "empty"), route("/", "up")],
                       [cluster("up", upstream.port), cluster("empty")], domains=["e"], hcm={"access_log": logs})
    proxy = make_proxy(config, **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/status/200", host="e"))
        c.request(get("/status/503", host="e"))
        c.request(get("/empty", host="e"))
        c.request(get("/delay/300/x", host="e", extra="x-debug: 1\r\n"))
        c.request(get("/", host="nowhere"))
    expect = {
        "errors": ["503 /status/503", "503 /empty"],
        "ok": ["200 /status/200", "200 /delay/300/x"],
        "slow": ["200 /delay/300/x"],
        "header": ["200 /delay/300/x"],
        "flags": ["503 /empty", "404 /"],
        "anyflag": ["503 /empty", "404 /"],
        "and": ["503 /status/503", "503 /empty", "404 /"],
        "or": ["200 /delay/300/x", "404 /"],
    }
    for name, want in expect.items():
        assert lines(tmp_path / f"{name}.log", len(want)) == want, name


def test_every_worker_writes_whole_lines(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "many.log"
    fmt = {"json_format": {"p": "%REQ(:PATH)%", "c": "%RESPONSE_CODE%"}}
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"access_log": [file_log(path, fmt)]}), concurrency=2, **FLUSH)
    conns = [RawConn(proxy.listener_port()) for _ in range(8)]
    for i in range(25):
        for j, c in enumerate(conns):
            c.request(get(f"/n/{j}/{i}"))
    for c in conns:
        c.close()
    got = json_lines(path, 200)
    assert sorted(e["p"] for e in got) == sorted(f"/n/{j}/{i}" for i in range(25) for j in range(8))
    assert {e["c"] for e in got} == {200}


def test_reopen_logs_after_rotation(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "rotated.log"
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"access_log": [file_log(path, {"text_format": "%REQ(:PATH)%\n"})]}), **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/before"))
        assert lines(path, 1) == ["/before"]
        os.rename(path, tmp_path / "rotated.log.1")
        proxy.reopen_logs()
        c.request(get("/after"))
    assert lines(path, 1) == ["/after"]
    assert (tmp_path / "rotated.log.1").read_text() == "/before\n"


def test_filesystem_stats(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "counted.log"
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"access_log": [file_log(path, {"text_format": "%REQ(:PATH)%\n"})]}), **FLUSH)
    assert proxy.stats()["filesystem.write_buffered"] == 0
    with RawConn(proxy.listener_port()) as c:
        for i in range(5):
            c.request(get(f"/{i}"))
    lines(path, 5)
    # A line each; written out by the flush timer, nothing left buffered.
    wait_for(lambda: proxy.stats()["filesystem.write_total_buffered"] == 0, 5, "the buffer to empty")
    stats = proxy.stats()
    assert stats["filesystem.write_buffered"] == 5
    assert stats["filesystem.write_completed"] >= 1
    assert stats["filesystem.flushed_by_timer"] >= 1
    assert stats["filesystem.write_failed"] == stats["filesystem.reopen_failed"] == 0


def test_json_strings_are_escaped_as_envoys(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "bytes.log"
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"access_log": [
        file_log(path, {"json_format": {"ua": "%REQ(USER-AGENT)%"}})]}), **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        c.request(b"GET / HTTP/1.1\r\nhost: e\r\nuser-agent: q\"b\\s\xc3\xa9\r\n\r\n")
        c.request(b"GET / HTTP/1.1\r\nhost: e\r\nuser-agent: a\xffb\xc3\xa9\"\\\r\n\r\n")
    lines(path, 2)
    # Valid UTF-8 goes as it is; anything else is read as Latin-1, every byte past ASCII and the
    # quote and backslash escaped: valid JSON whatever a client sent.
    assert path.read_bytes() == (b'{"ua":"q\\"b\\\\s\xc3\xa9"}\n'
                                 b'{"ua":"a\\u00ffb\\u00c3\\u00a9\\u0022\\u005c"}\n')


def test_an_empty_format_is_the_default(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "empty-format.log"
    log = file_log(path)
    log["typed_config"]["format"] = ""
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"access_log": [log]}), **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/x"))
    (line,) = lines(path, 1)
    assert re.fullmatch(r'\[[^]]+\] "GET /x HTTP/1\.1" 200 - .*', line), line


def test_duration_of_a_request_after_a_kept_alive_one(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "durations.log"
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={
        "request_headers_timeout": "0.5s",
        "access_log": [file_log(path, {"json_format": {"c": "%RESPONSE_CODE%", "d": "%DURATION%"}})]}), **FLUSH)
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/first"))
        c.send(b"GET /second HTTP/1.1\r\nhost")
        assert c.read_response().status == 408
    first, second = json_lines(path, 2)
    assert first["c"] == 200
    # Its own time, not measured from the first request's end.
    assert second["c"] == 408 and second["d"] >= 400


def test_header_bytes_are_envoys_byte_sizes(tmp_path: Path, make_proxy: Any, upstream: Any) -> None:
    path = tmp_path / "sizes.log"
    routes = [{"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hello"}}},
              route("/", "up")]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port)], hcm={"access_log": [file_log(path, {
        "json_format": {"rq": "%REQUEST_HEADERS_BYTES%", "rs": "%RESPONSE_HEADERS_BYTES%"}})]}), **FLUSH)

    def size(pairs: list[tuple[str, str]]) -> int:
        return sum(len(k) + len(v) for k, v in pairs)

    with RawConn(proxy.listener_port()) as c:
        proxied = c.request(get("/get?a=1", extra="user-agent: t\r\n"))
        direct = c.request(get("/direct"))
        c.send(b"GET / HTTP/1.0\r\n\r\n")  # refused by the codec: no request, a reply
        refused = c.read_response()
    sent = upstream.requests[-1]
    # The request as it went upstream, `host` as `:authority`, with the request line's
    # pseudo-headers; the response as the client got it, with `:status`.
    want_rq = size([(k.lower().replace("host", ":authority"), v) for k, v in sent.headers]) + \
        size([(":method", "GET"), (":path", "/get?a=1"), (":scheme", "http")])
    first, second, third = json_lines(path, 3)
    assert first == {"rq": want_rq, "rs": 10 + size(proxied.headers)}
    # A local reply's `connection`-free head, and the connection manager's own headers.
    assert second["rs"] == 10 + size(direct.headers)
    assert second["rq"] == size([(":method", "GET"), (":path", "/direct"), (":authority", "example.com"),
                                 (":scheme", "http"), ("x-forwarded-proto", "http"),
                                 ("x-request-id", "0" * 36)])
    assert third == {"rq": 0, "rs": 10 + size(refused.headers)}
