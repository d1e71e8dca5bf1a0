"""Shutdown of a real `python -m pyproxy` process: SIGTERM/SIGINT drain, a second signal, and the
admin `/quitquitquit`."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.lifecycle.process import ProxyProcess, connect_refused, poll
from tests.support.configs import bootstrap, cluster, route
from tests.support.upstream import Upstream

DRAIN_TIME_S = 10.0


class InFlight:
    """One request sent on its own thread; `.response` / `.error` once it is done."""

    def __init__(self, url: str, timeout: float) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, timeout), daemon=True)
        self._thread.start()

    def _run(self, url: str, timeout: float) -> None:
        try:
            with httpx.Client(timeout=timeout) as c:
                self.response = c.get(url)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the in-flight request never finished"


def wait_upstream_saw(upstream: Upstream, target: str, timeout: float = 5.0) -> None:
    poll(
        lambda: any(r.target == target for r in list(upstream.requests)),
        timeout=timeout,
        what=f"the upstream to receive {target}",
    )


def read_response(s: socket.socket) -> bytes:
    """One content-length response from a raw socket (the test upstream always sends one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed mid-head after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_request_then_exits_0(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream, sig: int
) -> None:
    p = proxy_process(
        bootstrap([route("/", "a")], [cluster("a", upstream.port)]),
        args=["--drain-time-s", str(DRAIN_TIME_S)],
    )
    host, port = p.listener()
    assert p.admin_get("/ready").status_code == 200

    inflight = InFlight(p.url("/delay/1500"), timeout=DRAIN_TIME_S + 5)
    wait_upstream_saw(upstream, "/delay/1500")
    sent = time.monotonic()
    p.send_signal(sig)

    # Drain closes the listeners: new connections are refused while the request is still running.
    poll(lambda: connect_refused(host, port), timeout=1.0, what="new connections to be refused")
    assert inflight.response is None, "the in-flight request finished before drain was observed"

    inflight.join(DRAIN_TIME_S + 5)
    assert inflight.error is None, f"in-flight request failed: {inflight.error!r}\n{p.logs()}"
    assert inflight.response is not None
    assert inflight.response.status_code == 200
    assert inflight.response.json()["target"] == "/delay/1500"
    # pyproxy/_native.pyi drain_listeners(): keep-alive responses carry `connection: close`.
    assert inflight.response.headers.get("connection") == "close"

    rc = p.wait_exit(DRAIN_TIME_S)
    elapsed = time.monotonic() - sent
    assert rc == 0, p.logs()
    # Nothing was left open once the response went out, so it need not wait the drain time.
    assert elapsed < DRAIN_TIME_S / 2, f"exited {elapsed:.1f}s after the signal"
    assert connect_refused(host, port)


def test_second_sigterm_while_draining_exits_at_once(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    drain = 60.0
    p = proxy_process(
        bootstrap([route("/", "a")], [cluster("a", upstream.port)]),
        args=["--drain-time-s", str(drain)],
    )
    host, port = p.listener()
    held = InFlight(p.url("/hang"), timeout=drain + 10)  # holds a connection open through drain
    wait_upstream_saw(upstream, "/hang")

    p.send_signal(signal.SIGTERM)
    poll(lambda: connect_refused(host, port), timeout=2.0, what="drain to start")
    poll(lambda: "draining listeners" in p.stderr(), timeout=2.0, what="the drain log line")
    assert p.alive(), "exited on the first SIGTERM although a connection was open"

    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait_exit(5.0)
    elapsed = time.monotonic() - sent
    assert elapsed < 5.0
    # An abandoned drain is not a clean exit (pyproxy.cli exits 128 + the signal number).
    assert rc == 128 + signal.SIGTERM, p.logs()
    held.join(10)
    assert held.response is None or held.response.status_code != 200


def test_post_quitquitquit_exits_0(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    p = proxy_process(
        bootstrap([route("/", "a")], [cluster("a", upstream.port)]),
        args=["--drain-time-s", str(DRAIN_TIME_S)],
    )
    host, port = p.listener()
    assert httpx.get(p.url("/before")).status_code == 200

    r = p.admin_post("/quitquitquit")
    assert (r.status_code, r.text) == (200, "OK\n")
    assert p.wait_exit(DRAIN_TIME_S) == 0, p.logs()
    assert connect_refused(host, port)
    assert p.admin is not None and connect_refused(*p.admin)


def test_get_quitquitquit_is_405_and_keeps_running(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    p = proxy_process(bootstrap([route("/", "a")], [cluster("a", upstream.port)]))
    r = p.admin_get("/quitquitquit")
    assert r.status_code == 405
    assert r.text == "Method GET not allowed, POST required."
    # Still serving, and still LIVE, a moment later: poll a few rounds rather than sleep.
    for _ in range(5):
        assert p.alive(), p.logs()
        assert p.admin_get("/ready").status_code == 200
        assert httpx.get(p.url("/still-up")).status_code == 200



def test_sigterm_closes_idle_keepalive_connections_and_exits_promptly(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    # An idle keep-alive connection has no request to finish: drain closes it instead of
    # waiting out --drain-time-s for the client to go away.
    p = proxy_process(
        bootstrap([route("/", "a")], [cluster("a", upstream.port)]),
        args=["--drain-time-s", str(DRAIN_TIME_S)],
    )
    host, port = p.listener()
    with socket.create_connection((host, port), timeout=DRAIN_TIME_S) as s:
        s.sendall(b"GET /idle HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        sent = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait_exit(DRAIN_TIME_S)
        elapsed = time.monotonic() - sent
        assert s.recv(1) == b"", "the idle connection was not closed"
    assert rc == 0, p.logs()
    assert elapsed < DRAIN_TIME_S / 2, f"exited {elapsed:.1f}s after SIGTERM with one idle connection"


def test_sigterm_closes_every_idle_connection_also_after_others_came_and_went(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    # Each worker keeps a list of its connections to wake when draining starts; a connection
    # that closed leaves it and a later one takes its place. With one worker: two connections
    # idle, one closes, a third comes; drain must then close both idle ones at once.
    p = proxy_process(
        bootstrap([route("/", "a")], [cluster("a", upstream.port)]),
        args=["--drain-time-s", str(DRAIN_TIME_S), "--concurrency", "1"],
    )
    host, port = p.listener()

    def idle_connection() -> socket.socket:
        s = socket.create_connection((host, port), timeout=DRAIN_TIME_S)
        s.sendall(b"GET /idle HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        return s

    def active() -> int:
        text = p.admin_get("/stats?filter=^http.ingress_http.downstream_cx_active$").text
        return int(text.split(":")[1])

    first, second = idle_connection(), idle_connection()
    first.close()
    poll(lambda: active() == 1, timeout=DRAIN_TIME_S, what="the closed connection to end")
    with second, idle_connection() as third:
        sent = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait_exit(DRAIN_TIME_S)
        elapsed = time.monotonic() - sent
        assert second.recv(1) == b"", "the older idle connection was not closed"
        assert third.recv(1) == b"", "the newer idle connection was not closed"
    assert rc == 0, p.logs()
    assert elapsed < DRAIN_TIME_S / 2, f"exited {elapsed:.1f}s after SIGTERM with two idle connections"
