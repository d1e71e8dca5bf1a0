"""The connection manager's and the cluster's `common_http_protocol_options` beyond the idle
timeouts (test_idle_timeouts.py): `headers_with_underscores_action`,
`max_requests_per_connection`, `max_headers_count` and `max_connection_duration` (with the
connection manager's `drain_timeout`). Each test passes against the envoy binary too
(PYPROXY_DATAPLANE_TARGET=envoy); docs/envoy-behaviour.md §17 has what was probed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.dataplane.conftest import Closed, RawConn, get, wait_for
from tests.dataplane.test_stats import settled
from tests.support.configs import bootstrap, cluster, route, upstream_options

UNDERSCORED = "x_foo: 1\r\nX-Bar_Baz: 2\r\nx-plain: 3\r\n"


def options_proxy(make_proxy: Any, port: int, **common: Any) -> Any:
    hcm = {"common_http_protocol_options": common}
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", port)], hcm=hcm))


def test_underscored_headers_pass_by_default(make_proxy: Any, upstream: Any) -> None:
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/", extra=UNDERSCORED)).status == 200
    got = upstream.requests[-1]
    assert (got.header("x_foo"), got.header("x-bar_baz"), got.header("x-plain")) == ("1", "2", "3")


def test_reject_request_refuses_a_head_with_an_underscored_name(make_proxy: Any, upstream: Any) -> None:
    p = options_proxy(make_proxy, upstream.port, headers_with_underscores_action="REJECT_REQUEST")
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/", extra=UNDERSCORED))
        assert (r.status, r.body, r.header("connection")) == (400, b"Bad Request", "close")
        assert c.closed_within(5)
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/", extra="x-plain: 3\r\n")).status == 200
    assert len(upstream.requests) == 1
    settled(p, {
        "http1.requests_rejected_with_underscores_in_headers": 1,
        "http1.dropped_headers_with_underscores": 0,
        "http.ingress_http.downstream_cx_protocol_error": 1,
        "http.ingress_http.downstream_rq_4xx": 1,
        "http.ingress_http.downstream_rq_total": 2,
        "http.ingress_http.rq_total": 1,
    })


def test_drop_header_drops_each_underscored_header(make_proxy: Any, upstream: Any) -> None:
    p = options_proxy(make_proxy, upstream.port, headers_with_underscores_action="DROP_HEADER")
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/", extra=UNDERSCORED)).status == 200
        # The connection stays.
        assert c.request(get("/", extra="a_b: 1\r\n")).status == 200
    first, second = upstream.requests
    names = [n.lower() for n, _ in first.headers]
    assert "x_foo" not in names and "x-bar_baz" not in names
    assert first.header("x-plain") == "3"
    assert second.header("a_b") is None
    settled(p, {
        "http1.dropped_headers_with_underscores": 3,
        "http1.requests_rejected_with_underscores_in_headers": 0,
        "http.ingress_http.downstream_cx_protocol_error": 0,
    })


def test_max_requests_per_connection_closes_after_the_last(make_proxy: Any, upstream: Any) -> None:
    p = options_proxy(make_proxy, upstream.port, max_requests_per_connection=2)
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/1")).header("connection") is None
        r = c.request(get("/2"))
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.closed_within(5)
    # Pipelined: the request past the limit is never read.
    with RawConn(p.listener_port()) as c:
        c.send(get("/3") + get("/4") + get("/5"))
        assert c.read_response().header("connection") is None
        assert c.read_response().header("connection") == "close"
        assert c.closed_within(5)
    assert [r.target for r in upstream.requests] == ["/1", "/2", "/3", "/4"]
    settled(p, {
        "http.ingress_http.downstream_cx_max_requests_reached": 2,
        "http.ingress_http.downstream_cx_destroy_local": 2,
        "http.ingress_http.downstream_rq_total": 4,
    })


def test_max_requests_counts_a_refused_request_too(make_proxy: Any, upstream: Any) -> None:
    p = options_proxy(make_proxy, upstream.port, max_requests_per_connection=1)
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/", extra="x: \x01\r\n"))
        assert (r.status, r.header("connection")) == (400, "close")
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/", extra="connection: close\r\n"))
        assert (r.status, r.header("connection")) == (200, "close")
    settled(p, {"http.ingress_http.downstream_cx_max_requests_reached": 2})


@pytest.mark.parametrize(("count", "status"), [(4, 200), (5, 431)])
def test_max_headers_count_bounds_a_request(make_proxy: Any, upstream: Any, count: int, status: int) -> None:
    # host and `count` more: at most 5.
    p = options_proxy(make_proxy, upstream.port, max_headers_count=5)
    extra = "".join(f"x-h{i}: 1\r\n" for i in range(count))
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/", extra=extra))
        assert r.status == status
        if status == 431:
            assert (r.body, r.header("connection")) == (b"Request Header Fields Too Large", "close")
    settled(p, {"http.ingress_http.downstream_cx_protocol_error": int(status == 431)})


def test_max_headers_count_counts_a_joined_header_once(make_proxy: Any, upstream: Any) -> None:
    p = options_proxy(make_proxy, upstream.port, max_headers_count=2)
    with RawConn(p.listener_port()) as c:
        # host, and accept three times: two headers once joined.
        assert c.request(get("/", extra="accept: a\r\naccept: b\r\naccept: c\r\n")).status == 200
    assert upstream.requests[-1].header("accept") == "a,b,c"


@pytest.mark.parametrize(("limit", "status"), [(None, 431), (200, 200)])
def test_max_headers_count_above_the_default(make_proxy: Any, upstream: Any, limit: int | None,
                                             status: int) -> None:
    common = {} if limit is None else {"max_headers_count": limit}
    p = options_proxy(make_proxy, upstream.port, **common)
    extra = "".join(f"x-h{i}: {i}\r\n" for i in range(150))
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/", extra=extra)).status == status
    if status == 200:
        assert upstream.requests[-1].header("x-h149") == "149"


def test_cluster_max_headers_count_bounds_a_response(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({
        "/3": b"HTTP/1.1 200 OK\r\na: 1\r\nb: 1\r\ncontent-length: 2\r\n\r\nok",
        "/4": b"HTTP/1.1 200 OK\r\na: 1\r\nb: 1\r\nc: 1\r\ncontent-length: 2\r\n\r\nok",
    })
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port, **upstream_options(max_headers_count=3))]))
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/3")).body == b"ok"
    with RawConn(p.listener_port()) as c:
        try:
            r = c.request(get("/4"))
        except Closed:
            pytest.fail("the proxy closed instead of answering 502")
        assert r.status == 502
        assert r.body.endswith(b"reset reason: protocol error")
    settled(p, {"cluster.up.upstream_cx_protocol_error": 1})


def duration_proxy(make_proxy: Any, upstream: Any, max_s: float, drain_s: float) -> Any:
    hcm = {"common_http_protocol_options": {"max_connection_duration": f"{max_s}s"},
           "drain_timeout": f"{drain_s}s"}
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm=hcm))


def test_max_connection_duration_closes_an_idle_connection_after_the_drain_timeout(
        make_proxy: Any, upstream: Any) -> None:
    p = duration_proxy(make_proxy, upstream, 0.5, 0.3)
    with RawConn(p.listener_port()) as c:
        start = time.monotonic()
        assert c.request(get("/")).header("connection") is None
        assert c.closed_within(5)
        # Envoy closes later still: its delayed close adds a second.
        assert time.monotonic() - start >= 0.75
    settled(p, {"http.ingress_http.downstream_cx_max_duration_reached": 1,
                "http.ingress_http.downstream_cx_idle_timeout": 0,
                "http.ingress_http.downstream_cx_drain_close": 0})


def test_a_response_after_the_max_connection_duration_closes(make_proxy: Any, upstream: Any) -> None:
    p = duration_proxy(make_proxy, upstream, 0.3, 5)
    with RawConn(p.listener_port()) as c:
        # In flight across the deadline.
        r = c.request(get("/delay/700/x"))
        assert (r.status, r.header("connection")) == (200, "close")
        # pyproxy closes at once; Envoy once the drain timeout after the deadline is over.
        assert c.closed_within(8)
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/")).header("connection") is None
        # Idle past the deadline, within the drain timeout: the next request is answered, and
        # its response closes the connection.
        settled(p, {"http.ingress_http.downstream_cx_max_duration_reached": 2})
        r = c.request(get("/"))
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.closed_within(8)
    assert len(upstream.requests) == 3
    settled(p, {"http.ingress_http.downstream_cx_max_duration_reached": 2,
                "http.ingress_http.downstream_cx_drain_close": 0})


def test_a_dropped_header_is_not_counted(make_proxy: Any, upstream: Any) -> None:
    # Envoy's codec drops (or refuses) a header with an `_` before it counts the headers.
    p = options_proxy(make_proxy, upstream.port, max_headers_count=3, headers_with_underscores_action="DROP_HEADER")
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/", extra="x-a: 1\r\nx_b: 1\r\nx_c: 1\r\n")).status == 200
        assert c.request(get("/", extra="x-a: 1\r\nx-b: 1\r\nx_c: 1\r\nx-d: 1\r\n")).status == 431
    p = options_proxy(make_proxy, upstream.port, max_headers_count=2, headers_with_underscores_action="REJECT_REQUEST")
    with RawConn(p.listener_port()) as c:
        assert c.request(get("/", extra="x_a: 1\r\nx-b: 1\r\nx-c: 1\r\n")).status == 400


def test_a_client_that_leaves_after_the_max_connection_duration_counts_it(
        make_proxy: Any, upstream: Any) -> None:
    p = duration_proxy(make_proxy, upstream, 0.3, 5)
    with RawConn(p.listener_port()) as c:
        opened = time.monotonic()
        c.send(get("/hang"))
        # The client leaves once its request waits on the upstream and the deadline has passed.
        wait_for(lambda: upstream.requests and time.monotonic() - opened > 0.45, 5,
                 "the request upstream past the deadline")
    settled(p, {"http.ingress_http.downstream_cx_max_duration_reached": 1,
                "http.ingress_http.downstream_rq_rx_reset": 1})
