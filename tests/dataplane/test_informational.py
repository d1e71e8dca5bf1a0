"""Informational (1xx) responses: the connection manager's own `100 Continue`, and an
upstream's 100, 102, 103 or 104, which Envoy's router takes as a response of its own: the
upstream's code is counted, the response is relayed under `proxy_100_continue` (whether or not
the client sent `Expect`), and the request is neither tried again nor subject to its per-try
timeout after it. Every expectation here was checked against the envoy binary
(PYPROXY_DATAPLANE_TARGET=envoy runs this file against it; docs/envoy-behaviour.md section 28)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.dataplane.conftest import AfterContinue, RawConn, get
from tests.support.configs import bootstrap, cluster, route
from tests.support.wait import wait_stat

HTTP = "http.ingress_http."
C = "cluster.up."
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def then_ok(*interim: bytes) -> bytes:
    return b"".join(interim) + OK


def proxy_with(make_proxy: Any, up: Any, relay: bool = False, **route_action: Any) -> Any:
    hcm = {"proxy_100_continue": True} if relay else None
    return make_proxy(bootstrap([route("/", "up", **route_action)], [cluster("up", up.port)], hcm=hcm))


def exchange(port: int, raw: bytes) -> bytes:
    """Sends one request that closes the connection; everything the proxy sent back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def close_get(path: str) -> bytes:
    return get(path, extra="connection: close\r\n")


def test_the_local_100_continue_counts_as_a_response(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": OK})
    p = proxy_with(make_proxy, up)
    with RawConn(p.listener_port()) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert c.read_response(skip_100=False).status == 100
        c.send(b"hi")
        assert c.read_response().status == 200
    wait_stat(p, HTTP + "downstream_rq_2xx", 1)
    s = p.stats()
    assert s[HTTP + "downstream_rq_1xx"] == 1
    assert s[HTTP + "downstream_rq_completed"] == 2
    assert s["listener.127.0.0.1_0.http.ingress_http.downstream_rq_1xx"] == 1
    assert s["listener.127.0.0.1_0.http.ingress_http.downstream_rq_completed"] == 2
    # The upstream sent none.
    assert s.get(C + "upstream_rq_1xx", 0) == 0
    assert s[C + "upstream_rq_completed"] == 1


@pytest.mark.parametrize("code", [100, 102, 103, 104])
def test_an_upstream_informational_response_is_counted_and_dropped(
    make_proxy: Any, make_canned: Any, code: int
) -> None:
    up = make_canned({"*": then_ok(f"HTTP/1.1 {code} Whatever\r\nlink: </a.css>\r\n\r\n".encode())})
    p = proxy_with(make_proxy, up)
    got = exchange(p.listener_port(), close_get("/x"))
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    assert got.count(b"HTTP/1.1") == 1
    wait_stat(p, HTTP + "downstream_rq_2xx", 1)
    s = p.stats()
    assert s[C + f"upstream_rq_{code}"] == 1
    assert s[C + "upstream_rq_1xx"] == 1
    assert s[C + "upstream_rq_completed"] == 2
    assert s[C + "external.upstream_rq_1xx"] == 1
    assert s.get(HTTP + "downstream_rq_1xx", 0) == 0
    assert s[HTTP + "downstream_rq_completed"] == 1


@pytest.mark.parametrize("expect", [False, True])
def test_proxy_100_continue_relays_the_first_one(make_proxy: Any, make_canned: Any, expect: bool) -> None:
    interim = [b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\nconnection: keep-alive\r\nupgrade: h2c\r\n"
               b"proxy-connection: k\r\nkeep-alive: 5\r\n\r\n",
               b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </b.css>\r\n\r\n"]
    up = make_canned({"*": then_ok(*interim)})
    p = proxy_with(make_proxy, up, relay=True)
    ask = "Expect: 100-continue\r\n" if expect else ""
    got = exchange(p.listener_port(), f"POST /x HTTP/1.1\r\nHost: a\r\n{ask}connection: close\r\n"
                                      "Content-Length: 2\r\n\r\nhi".encode())
    # Envoy's reason phrase, the upstream's headers less `connection`, `upgrade` and
    # `proxy-connection` (`keep-alive` stays on an informational response), nothing added.
    first, final = got.split(b"\r\n\r\n", 1)
    assert first == b"HTTP/1.1 103 Unknown\r\nlink: </a.css>\r\nkeep-alive: 5"
    assert final.startswith(b"HTTP/1.1 200 OK\r\n"), got
    wait_stat(p, HTTP + "downstream_rq_2xx", 1)
    s = p.stats()
    assert s[HTTP + "downstream_rq_1xx"] == 1
    assert s[HTTP + "downstream_rq_completed"] == 2
    # The later ones are dropped uncounted.
    assert s[C + "upstream_rq_103"] == 1
    assert s.get(C + "upstream_rq_100", 0) == 0
    assert s[C + "upstream_rq_completed"] == 2


def test_a_relayed_100_continue(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": then_ok(b"HTTP/1.1 100 Continue\r\nx-a: 1\r\n\r\n")})
    p = proxy_with(make_proxy, up, relay=True)
    got = exchange(p.listener_port(), close_get("/x"))
    assert got.startswith(b"HTTP/1.1 100 Continue\r\nx-a: 1\r\n\r\nHTTP/1.1 200 OK\r\n"), got


def test_other_informational_codes_are_dropped_uncounted(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": then_ok(b"HTTP/1.1 199 Odd\r\nx-a: 1\r\n\r\n")})
    p = proxy_with(make_proxy, up, relay=True)
    got = exchange(p.listener_port(), close_get("/x"))
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    wait_stat(p, HTTP + "downstream_rq_2xx", 1)
    s = p.stats()
    assert s.get(C + "upstream_rq_1xx", 0) == 0
    assert s.get(HTTP + "downstream_rq_1xx", 0) == 0
    assert s[C + "upstream_rq_completed"] == 1


@pytest.mark.parametrize("relay", [False, True])
def test_no_retry_after_an_informational_response(make_proxy: Any, make_canned: Any, relay: bool) -> None:
    up = make_canned({"*": b"HTTP/1.1 100 Continue\r\n\r\n"
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"})
    p = proxy_with(make_proxy, up, relay=relay, retry_policy={"retry_on": "5xx", "num_retries": 2})
    got = exchange(p.listener_port(), close_get("/x"))
    assert b"HTTP/1.1 503 Service Unavailable\r\n" in got, got
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n") == relay
    wait_stat(p, HTTP + "downstream_rq_5xx", 1)
    s = p.stats()
    assert len(up.heads) == 1
    assert s[C + "upstream_rq_total"] == 1
    for name in ("upstream_rq_retry", "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_success"):
        assert s.get(C + name, 0) == 0, name
    assert s[C + "upstream_rq_503"] == 1
    assert s[C + "upstream_rq_100"] == 1


def test_the_per_try_timeout_is_off_after_one(make_proxy: Any, make_canned: Any) -> None:
    hang = AfterContinue()
    up = make_canned({"*": hang})
    p = proxy_with(make_proxy, up, timeout="0.6s",
                   retry_policy={"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.1s"})
    t0 = time.monotonic()
    got = exchange(p.listener_port(), close_get("/x"))
    took = time.monotonic() - t0
    # The route timeout's reply, after the 100 went nowhere.
    assert got.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), got
    assert got.endswith(b"upstream request timeout")
    assert took >= 0.55, took
    assert hang.closed.wait(5)
    wait_stat(p, HTTP + "downstream_rq_5xx", 1)
    s = p.stats()
    assert s[C + "upstream_rq_timeout"] == 1
    assert s.get(C + "upstream_rq_per_try_timeout", 0) == 0
    assert s.get(C + "upstream_rq_retry", 0) == 0
    # No upstream 504: the upstream's response had begun.
    assert s.get(C + "upstream_rq_504", 0) == 0
    assert s[C + "upstream_rq_100"] == 1
    assert s[C + "upstream_rq_completed"] == 1


def test_a_close_after_one_is_a_termination(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": AfterContinue(close=True)})
    p = proxy_with(make_proxy, up)
    got = exchange(p.listener_port(), close_get("/x"))
    assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), got
    assert got.endswith(b"reset reason: connection termination")
    wait_stat(p, HTTP + "downstream_rq_5xx", 1)
    s = p.stats()
    assert s.get(C + "upstream_cx_protocol_error", 0) == 0
    assert s.get(C + "upstream_rq_503", 0) == 0
    assert s[C + "upstream_rq_100"] == 1


def test_stream_idle_timeout_counts_no_upstream_reset(make_proxy: Any, make_canned: Any) -> None:
    hang = AfterContinue()
    up = make_canned({"*": hang})
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)], hcm={"stream_idle_timeout": "0.2s"}))
    got = exchange(p.listener_port(), close_get("/x"))
    assert got.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), got
    assert hang.closed.wait(5)
    wait_stat(p, HTTP + "downstream_rq_idle_timeout", 1)
    s = p.stats()
    # The connection manager ended the stream: Envoy's router closes the upstream connection
    # and counts no reset of its own.
    assert s.get(C + "upstream_rq_tx_reset", 0) == 0
    assert s[C + "upstream_cx_destroy_local_with_active_rq"] == 1
