"""Upgrades (websocket and any other type) under `upgrade_configs`: which requests go upstream,
what the upstream and the client see, the tunnel that follows a `101`, how it ends and how
each end is counted. Every test passes against the envoy binary too
(PYPROXY_DATAPLANE_TARGET=envoy); docs/envoy-behaviour.md §19 has what was probed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.dataplane.conftest import SWITCH, RawConn, Tunnel, parse_head, shape, shape_request, wait_for
from tests.dataplane.test_stats import settled
from tests.support.configs import bootstrap, cluster, route

WS = {"upgrade_configs": [{"upgrade_type": "websocket"}]}
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    f"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
SWITCHED = [("upgrade", "websocket"), ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), ("date", "<date>"), ("server", "envoy")]
P = "http.ingress_http."
C = "cluster.up."


def upgrade_proxy(make_proxy: Any, port: int, hcm: dict[str, Any] | None = WS,
                  routes: list[dict[str, Any]] | None = None) -> Any:
    return make_proxy(bootstrap(routes or [route("/", "up")], [cluster("up", port)], hcm=hcm))


def read_exactly(c: RawConn, n: int) -> bytes:
    while len(c.buf) < n:
        c._fill()
    out, c.buf = c.buf[:n], c.buf[n:]
    return out


def test_the_upgrade_goes_upstream_and_the_101_comes_back(make_proxy: Any, make_canned: Any) -> None:
    t = Tunnel()
    up = make_canned({"*": t})
    p = upgrade_proxy(make_proxy, up.port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        r = c.read_response()
        assert (r.status_line, shape(r.headers)) == ("HTTP/1.1 101 Switching Protocols", SWITCHED)
        # Its connection and upgrade go upstream as sent; no service time (the request never ends).
        assert shape_request(parse_head(up.heads[0])) == [
            ("host", "example.com"), ("upgrade", "websocket"), ("connection", "Upgrade"),
            ("sec-websocket-key", KEY), ("sec-websocket-version", "13"), ("x-forwarded-proto", "http"),
            ("x-request-id", "<uuid>"), ("x-envoy-expected-rq-timeout-ms", "15000")]
        # The 101 is counted as it goes, both sides.
        settled(p, {P + "downstream_cx_upgrades_total": 1, P + "downstream_cx_upgrades_active": 1,
                    P + "downstream_rq_active": 1, P + "downstream_rq_1xx": 1, P + "downstream_rq_completed": 1,
                    C + "upstream_rq_active": 1, C + "upstream_rq_101": 1})
        # Bytes both ways, any size.
        for data in (b"ping", bytes(range(256)) * 1024):
            c.send(data)
            assert read_exactly(c, len(data)) == data
        # The client's close ends the upstream side too.
    assert t.eof.wait(5)
    assert t.received == b"ping" + bytes(range(256)) * 1024
    settled(p, {
        P + "downstream_cx_upgrades_total": 1, P + "downstream_cx_upgrades_active": 0,
        P + "downstream_rq_1xx": 1, P + "downstream_rq_completed": 1,
        P + "downstream_rq_response_before_rq_complete": 1, P + "downstream_rq_rx_reset": 1,
        P + "downstream_rq_tx_reset": 0, P + "downstream_rq_active": 0,
        P + "downstream_cx_destroy_remote_active_rq": 1, P + "downstream_cx_destroy_local": 0,
        C + "upstream_rq_101": 1, C + "upstream_rq_1xx": 1, C + "upstream_rq_completed": 1,
        C + "upstream_rq_total": 1, C + "upstream_rq_active": 0, C + "upstream_rq_tx_reset": 0,
        C + "upstream_cx_destroy_local_with_active_rq": 1, C + "upstream_cx_active": 0,
    })


def test_a_client_half_close_ends_the_tunnel(make_proxy: Any, make_canned: Any) -> None:
    t = Tunnel()
    p = upgrade_proxy(make_proxy, make_canned({"*": t}).port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        assert c.read_response().status == 101
        c.send(b"last")
        assert read_exactly(c, 4) == b"last"
        c.sock.shutdown(socket.SHUT_WR)
        assert t.eof.wait(5)
        assert c.closed_within(5)
    settled(p, {P + "downstream_rq_rx_reset": 1, P + "downstream_cx_destroy_remote_active_rq": 1,
                C + "upstream_cx_destroy_local_with_active_rq": 1})


def test_the_upstream_closing_ends_the_tunnel_after_its_last_bytes(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": Tunnel(close_after=b"goodbye")})
    p = upgrade_proxy(make_proxy, up.port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        assert c.read_response().status == 101
        assert read_exactly(c, 7) == b"goodbye"
        assert c.closed_within(5)
    settled(p, {
        P + "downstream_rq_1xx": 1, P + "downstream_rq_rx_reset": 1, P + "downstream_rq_tx_reset": 1,
        P + "downstream_cx_destroy_local": 1, P + "downstream_cx_destroy_active_rq": 0,
        P + "downstream_cx_upgrades_active": 0,
        C + "upstream_rq_101": 1, C + "upstream_cx_destroy_remote_with_active_rq": 1,
    })


def test_bytes_sent_before_the_101_reach_the_upstream(make_proxy: Any, make_canned: Any) -> None:
    t = Tunnel()
    p = upgrade_proxy(make_proxy, make_canned({"*": t}).port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE + b"early")
        assert c.read_response().status == 101
        assert read_exactly(c, 5) == b"early"
    assert t.eof.wait(5)
    assert t.received == b"early"


def test_an_upgrade_request_body_goes_before_the_tunnel(make_proxy: Any, make_canned: Any) -> None:
    # A difference kept on purpose (docs/envoy-behaviour.md): Envoy 1.40 sends the head of an
    # upgrade with a body but not the body, and the exchange hangs. pyproxy sends the body by
    # its framing, then the tunnel's bytes.
    t = Tunnel()
    up = make_canned({"*": t})
    p = upgrade_proxy(make_proxy, up.port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE.replace(b"GET", b"POST").replace(b"\r\n\r\n", b"\r\ncontent-length: 3\r\n\r\nabc"))
        assert c.read_response().status == 101
        c.send(b"tunnel")
        assert read_exactly(c, 6) == b"tunnel"
    assert t.eof.wait(5)
    # The upstream read the 3 bytes its head announced, then the tunnel's.
    assert ("content-length", "3") in parse_head(up.heads[0])
    assert t.received == b"tunnel"


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [(b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nnope!", 404, b"nope!"),
     (b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n", 426, b"")],
    ids=["404", "426"],
)
def test_an_upgrade_the_upstream_refuses_closes_both_connections(
    make_proxy: Any, make_canned: Any, answer: bytes, status: int, body: bytes
) -> None:
    up = make_canned({"*": answer})
    p = upgrade_proxy(make_proxy, up.port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        r = c.read_response()
        # No service time: the request never completed.
        assert (r.status, r.body, [k for k, _ in r.headers if k not in ("content-length",)]) == (
            status, body, ["date", "server", "connection"])
        assert r.header("connection") == "close"
        assert c.closed_within(5)
    settled(p, {P + "downstream_cx_upgrades_total": 1, P + "downstream_rq_4xx": 1,
                P + "downstream_rq_response_before_rq_complete": 1, P + "downstream_rq_rx_reset": 1,
                P + "downstream_cx_destroy_local": 1,
                C + f"upstream_rq_{status}": 1, C + "upstream_cx_destroy_local_with_active_rq": 1})


ROUTE_WS = {"upgrade_configs": [{"upgrade_type": "WebSocket"}]}


@pytest.mark.parametrize(
    ("hcm", "route_upgrades", "taken"),
    [
        (None, None, False),
        (WS, None, True),
        (None, [{"upgrade_type": "WebSocket"}], True),  # a route alone takes it, in any case
        ({"upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}]}, None, False),
        ({"upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}]},
         [{"upgrade_type": "websocket", "enabled": True}], True),
        (WS, [{"upgrade_type": "websocket", "enabled": False}], False),
        (WS, [{"upgrade_type": "foo", "enabled": False}], True),  # another type: no say
        ({"upgrade_configs": [{"upgrade_type": "foo"}]}, None, False),
    ],
    ids=["none", "hcm", "route", "hcm-off", "hcm-off-route-on", "route-off", "route-other", "hcm-other"],
)
def test_the_route_has_the_last_say_on_an_upgrade(
    make_proxy: Any, make_canned: Any, hcm: Any, route_upgrades: Any, taken: bool
) -> None:
    action: dict[str, Any] = {"cluster": "up"}
    if route_upgrades is not None:
        action["upgrade_configs"] = route_upgrades
    t = Tunnel()
    up = make_canned({"*": t})
    p = upgrade_proxy(make_proxy, up.port, hcm=hcm, routes=[{"match": {"prefix": "/"}, "route": action}])
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        r = c.read_response()
        if taken:
            assert r.status == 101
            c.send(b"x")
            assert read_exactly(c, 1) == b"x"
        else:
            assert (r.status, r.header("connection")) == (403, "close")
            assert c.closed_within(5)
    if not taken:
        assert up.heads == []
        # Refused before the router: not its request (rq_total).
        settled(p, {P + "downstream_rq_ws_on_non_ws_route": 1, P + "downstream_cx_upgrades_total": 0,
                    P + "rq_total": 0, P + "downstream_rq_4xx": 1,
                    P + "downstream_rq_response_before_rq_complete": 1, P + "downstream_rq_rx_reset": 1})


@pytest.mark.parametrize(
    ("upgrade", "taken"),
    [("Upgrade: WebSocket\r\n", True),
     ("Upgrade: foo\r\n", True),
     ("Upgrade: websocket, foo\r\n", False),  # the whole value is the type
     ("Upgrade: websocket\r\nUpgrade: foo\r\n", False)],
    ids=["case", "other-configured", "two-tokens", "two-headers"],
)
def test_the_upgrade_type_is_the_whole_value_in_any_case(
    make_proxy: Any, make_canned: Any, upgrade: str, taken: bool
) -> None:
    hcm = {"upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "FOO"}]}
    up = make_canned({"*": Tunnel()})
    p = upgrade_proxy(make_proxy, up.port, hcm=hcm)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE.replace(b"Upgrade: websocket\r\n", upgrade.encode()))
        assert c.read_response().status == (101 if taken else 403)
    if taken:
        sent = dict(parse_head(up.heads[0]))
        assert sent["upgrade"] == upgrade.split(": ")[1].strip()


def test_an_upgrade_keeps_the_headers_its_connection_names(make_proxy: Any, make_canned: Any) -> None:
    # Only keep-alive and proxy-connection go; te stays as sent (envoy binary).
    up = make_canned({"*": Tunnel()})
    p = upgrade_proxy(make_proxy, up.port)
    extra = (b"Connection: keep-alive, Upgrade, x-foo, te\r\nx-foo: 1\r\nkeep-alive: 5\r\n"
             b"proxy-connection: x\r\nte: trailers, deflate\r\n")
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE.replace(b"Connection: Upgrade\r\n", extra))
        assert c.read_response().status == 101
    sent = parse_head(up.heads[0])
    assert [h for h in sent if h[0] in ("connection", "x-foo", "te", "keep-alive", "proxy-connection")] == [
        ("connection", "keep-alive, Upgrade, x-foo, te"), ("x-foo", "1"), ("te", "trailers, deflate")]


def test_header_edits_apply_to_the_upgrade_and_its_101(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": Tunnel()})
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"},
               "request_headers_to_add": [{"header": {"key": "x-rq", "value": "1"}}],
               "response_headers_to_add": [{"header": {"key": "x-rs", "value": "%RESPONSE_CODE%"}}]}]
    p = upgrade_proxy(make_proxy, up.port, routes=routes)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        r = c.read_response()
        assert shape(r.headers) == [*SWITCHED[:3], ("x-rs", "101"), *SWITCHED[3:]]
    assert parse_head(up.heads[0])[-1] == ("x-rq", "1")


def test_the_route_timeout_stops_at_the_101_and_the_idle_timeout_holds(make_proxy: Any, make_canned: Any) -> None:
    t = Tunnel()
    up = make_canned({"*": t})
    hcm = {**WS, "stream_idle_timeout": "1.5s"}
    p = upgrade_proxy(make_proxy, up.port, hcm=hcm, routes=[route("/", "up", timeout="0.3s")])
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        assert c.read_response().status == 101
        # Past the route timeout, within the idle timeout: the tunnel is there.
        assert c.open_after(0.6)
        c.send(b"still")
        assert read_exactly(c, 5) == b"still"
        # Then nothing moves: the idle timeout ends it.
        assert c.closed_within(5)
    assert t.eof.wait(5)
    settled(p, {P + "downstream_rq_idle_timeout": 1, P + "downstream_rq_rx_reset": 1, P + "downstream_rq_tx_reset": 1,
                P + "downstream_cx_destroy_local": 1, P + "downstream_cx_destroy_active_rq": 0,
                C + "upstream_cx_destroy_local_with_active_rq": 1, C + "upstream_rq_tx_reset": 0,
                C + "upstream_rq_timeout": 0})


def test_the_route_idle_timeout_holds_in_a_tunnel(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": Tunnel()})
    p = upgrade_proxy(make_proxy, up.port, routes=[route("/", "up", idle_timeout="0.5s")])
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        assert c.read_response().status == 101
        assert c.closed_within(5)
    settled(p, {P + "downstream_rq_idle_timeout": 1})


@pytest.mark.parametrize(
    ("routes", "status"),
    [([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}}], 200),
     ([{"match": {"prefix": "/other"}, "route": {"cluster": "up"}}], 404)],
    ids=["direct-response", "no-route"],
)
def test_a_taken_upgrade_answered_locally_closes(make_proxy: Any, upstream: Any, routes: Any, status: int) -> None:
    p = upgrade_proxy(make_proxy, upstream.port, routes=routes)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE)
        r = c.read_response()
        assert (r.status, r.header("connection")) == (status, "close")
        assert c.closed_within(5)
    # The connection manager took the upgrade before routing: counted, route or not (envoy binary).
    settled(p, {P + "downstream_rq_response_before_rq_complete": 1, P + "downstream_rq_rx_reset": 1,
                P + "downstream_cx_upgrades_total": 1, P + "downstream_cx_upgrades_active": 0})


# --- a real websocket client and server ----------------------------------------------------------


@pytest.fixture
def ws_server() -> Iterator[int]:
    """A `websockets` echo server on a port of its own (port 0), in a thread."""
    from websockets.asyncio.server import serve

    loop = asyncio.new_event_loop()
    port: list[int] = []
    ready = threading.Event()
    stop = asyncio.Event()

    async def echo(ws: Any) -> None:
        async for msg in ws:
            await ws.send(msg)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await stop.wait()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(5)
    yield port[0]
    loop.call_soon_threadsafe(stop.set)
    t.join(5)


def test_a_websocket_client_and_server_talk_through_the_proxy(make_proxy: Any, ws_server: int) -> None:
    from websockets.sync.client import connect

    p = upgrade_proxy(make_proxy, ws_server)
    with connect(f"ws://127.0.0.1:{p.listener_port()}/chat", max_size=None, open_timeout=5) as ws:
        for msg in ("hello", b"\x00\x01binary", "x" * 100_000, bytes(2 * 1024 * 1024)):
            ws.send(msg)
            assert ws.recv(timeout=5) == msg
    # The close handshake went through; then the connections close.
    settled(p, {P + "downstream_cx_upgrades_total": 1, P + "downstream_cx_upgrades_active": 0,
                P + "downstream_rq_1xx": 1, C + "upstream_rq_101": 1, C + "upstream_cx_active": 0})
    wait_for(lambda: p.stats().get(P + "downstream_cx_active") == 0, 5, "the client connection to close")


# --- ends found in review: a side that stops reading, a removed listener, early answers ---------


class Stalled:
    """An upstream that takes the upgrade, then neither reads nor writes until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, s: socket.socket, rest: bytes) -> None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(SWITCH)
        self.release.wait(30)
        s.close()


def fill(sock: socket.socket) -> None:
    """Sends until the peer's and the kernel's buffers are full (no room within 0.5 s)."""
    import select

    sock.setblocking(False)
    while True:
        try:
            sock.send(b"x" * 65536)
        except BlockingIOError:
            if not select.select([], [sock], [], 0.5)[1]:
                return


def test_a_client_reset_ends_a_tunnel_whose_upstream_stopped_reading(make_proxy: Any, make_canned: Any) -> None:
    # The client's bytes wait on an upstream that reads none; the client is not read meanwhile,
    # but its reset still ends the tunnel, with no idle timeout to do it. A difference kept on
    # purpose (docs/envoy-behaviour.md): Envoy 1.40 keeps the tunnel until the upstream reads.
    import struct

    st = Stalled()
    up = make_canned({"*": st})
    p = upgrade_proxy(make_proxy, up.port, hcm={**WS, "stream_idle_timeout": "0s"})
    try:
        c = RawConn(p.listener_port())
        c.send(UPGRADE)
        assert c.read_response().status == 101
        fill(c.sock)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        settled(p, {P + "downstream_cx_active": 0, P + "downstream_cx_upgrades_active": 0,
                    P + "downstream_rq_active": 0, C + "upstream_cx_active": 0, C + "upstream_rq_active": 0,
                    P + "downstream_rq_rx_reset": 1})
    finally:
        st.release.set()


def test_an_upgrade_that_cannot_connect_gets_the_503_and_closes(make_proxy: Any, dead_port: int) -> None:
    p = upgrade_proxy(make_proxy, dead_port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE + b"tunnel")
        r = c.read_response()
        assert (r.status, r.header("connection")) == (503, "close")
        assert c.closed_within(5)
    settled(p, {P + "downstream_rq_rx_reset": 1, P + "downstream_rq_response_before_rq_complete": 1,
                P + "downstream_cx_upgrades_total": 1, C + "upstream_rq_503": 1})


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port bound but never listened on: connects to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_a_101_before_the_upgrade_body_is_in_is_a_protocol_error(make_proxy: Any, make_canned: Any) -> None:
    # Part of the kept difference on upgrade bodies (Envoy 1.40 sends none): RFC 9110 section
    # 7.8 has the server read the body before it switches. One that switches before has its
    # 101 refused (502), never tunnelled with part of the body unsent.
    up = make_canned({"*": Tunnel()})
    p = upgrade_proxy(make_proxy, up.port)
    with RawConn(p.listener_port()) as c:
        c.send(UPGRADE.replace(b"GET", b"POST").replace(b"\r\n\r\n", b"\r\ntransfer-encoding: chunked\r\n\r\n")
               + b"a\r\n01234")
        r = c.read_response()
        assert (r.status, r.header("connection")) == (502, "close")
    settled(p, {C + "upstream_cx_protocol_error": 1, P + "downstream_cx_upgrades_active": 0})
