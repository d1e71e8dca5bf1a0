"""AdminServer's lifecycle and HTTP/1.1 handling on real sockets (the proxy double of
test_endpoints.py; no native engine needed)."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
import yaml
from envoy_capture import ENVOY
from test_endpoints import FakeProxy

from pyproxy.admin import AdminServer
from pyproxy.errors import BindError


@pytest.fixture
def proxy() -> FakeProxy:
    return FakeProxy(yaml.safe_load((ENVOY / "envoy.yaml").read_text()))


@pytest.fixture
def server(proxy: FakeProxy, caplog: pytest.LogCaptureFixture):
    srv = AdminServer(proxy, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()
    assert srv.open_connections == 0
    assert not [t for t in threading.enumerate() if t.name == "pyproxy-admin"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _connect(server: AdminServer) -> socket.socket:
    assert server.address is not None
    return socket.create_connection(server.address, timeout=5)


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_start_returns_the_bound_port(server: AdminServer) -> None:
    host, port = server.address  # type: ignore[misc]
    assert host == "127.0.0.1" and port > 0


def test_stop_is_idempotent_and_safe_before_start(proxy: FakeProxy) -> None:
    never_started = AdminServer(proxy, "127.0.0.1", 0)
    never_started.stop()
    srv = AdminServer(proxy, "127.0.0.1", 0)
    srv.start()
    srv.stop()
    srv.stop()
    assert srv.address is None


def test_bind_failure_is_bind_error(proxy: FakeProxy) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = AdminServer(proxy, "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(BindError, match="admin: cannot bind 127.0.0.1:"):
            srv.start()
        srv.stop()


def test_stop_closes_idle_keepalive_connections(server: AdminServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        assert server.open_connections == 1
        server.stop()
        assert _read_until_closed(sock) == b""
    assert server.open_connections == 0


def test_pipelined_requests_on_one_connection(server: AdminServer) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /hot_restart_version HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        data = _read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b"\r\n\r\n5\r\nLIVE\n\r\n0\r\n\r\n" in data  # chunked, as Envoy
    assert data.endswith(b"disabled\r\n0\r\n\r\n")


def test_http10_request_is_close_delimited(server: AdminServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /ready HTTP/1.0\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nLIVE\n")


def test_malformed_request_is_400_and_closed(server: AdminServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_post_body_is_ignored(server: AdminServer, proxy: FakeProxy) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /healthcheck/fail HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
            b"connection: close\r\n\r\nhello"
        )
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"OK\n" in data
    assert proxy.healthcheck_failed


def test_handler_error_is_500_and_logged(
    server: AdminServer, proxy: FakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list:
        raise RuntimeError("engine exploded")

    proxy.engine.clusters = broken  # type: ignore[method-assign]
    with _connect(server) as sock:
        sock.sendall(b"GET /clusters HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"engine exploded" in data
    assert any("GET /clusters failed" in r.getMessage() for r in caplog.records)
    caplog.clear()  # expected; the fixture asserts nothing else was logged


def test_quitquitquit_may_stop_the_server_from_its_own_loop(proxy: FakeProxy) -> None:
    """Regression: request_shutdown() that stops the admin server synchronously (as a Proxy
    shutting down does) must not deadlock by joining the admin thread from itself."""
    srv = AdminServer(proxy, "127.0.0.1", 0)
    srv.start()
    proxy.request_shutdown = srv.stop  # type: ignore[method-assign]
    with _connect(srv) as sock:
        sock.sendall(b"POST /quitquitquit HTTP/1.1\r\nhost: x\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"OK\n" in data
    srv.stop()  # joins the thread the handler's stop() could not
    assert not [t for t in threading.enumerate() if t.name == "pyproxy-admin"]
