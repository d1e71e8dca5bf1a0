"""Message bodies through the proxy: request bodies by length and chunked, response framing
(chunked, close-delimited, bodiless), Expect: 100-continue, and 100 MB each way with the proxy's
memory flat.

Expected values: docs/envoy-behaviour.md (§4, §5) or the `envoy` 1.40 binary."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.dataplane.conftest import RawConn, get, shape, shape_request, wait_for
from tests.support.configs import bootstrap, cluster, route

UST = ("x-envoy-upstream-service-time", "<ms>")
DATE = ("date", "<date>")
SERVER = ("server", "envoy")
TAIL = [("x-forwarded-proto", "http"), ("x-request-id", "<uuid>"), ("x-envoy-expected-rq-timeout-ms", "15000")]


@pytest.fixture
def proxy(make_proxy: Any, upstream: Any) -> Any:
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that are not all the same, so a reordered or shifted body changes the hash."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


# --- request bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 11, 65535, 65537, 1 << 20, 5 * (1 << 20) + 3])
def test_content_length_request_body_intact(proxy: Any, upstream: Any, size: int) -> None:
    body = pattern(size, size)
    with httpx.Client() as client:
        r = client.post(f"http://127.0.0.1:{proxy.listener_port()}/b", content=body)
    assert r.status_code == 200
    (rec,) = upstream.requests
    assert (rec.body_len, rec.body_sha256) == (size, hashlib.sha256(body).hexdigest())
    assert rec.header("content-length") == str(size)


@pytest.mark.parametrize(
    "chunks",
    [[b"abc", b"defgh"], [b"x" * 1], [pattern(70000, 1)], [pattern(4096, i) for i in range(40)], [b"a"] * 50],
    ids=["3+5", "1", "70000", "40x4096", "50x1"],
)
def test_chunked_request_body_intact(proxy: Any, upstream: Any, chunks: list[bytes]) -> None:
    wire = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    with RawConn(proxy.listener_port()) as c:
        c.send(b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + wire)
        assert c.read_response().status == 200
    (rec,) = upstream.requests
    body = b"".join(chunks)
    assert (rec.body_len, rec.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    # survey §4b: forwarded chunked, with transfer-encoding moved to the end
    assert shape_request(rec.headers) == [("host", "example.com"), *TAIL, ("transfer-encoding", "chunked")]


def test_chunked_request_with_extension_and_trailers_forwarded_without_them(proxy: Any, make_canned: Any,
                                                                               make_proxy: Any) -> None:
    # survey §4b/§4c: chunk extensions and request trailers are dropped; the data is intact.
    # The canned upstream records raw bytes, so read the wire here.
    got: list[bytes] = []

    def capture(s: Any, buf: bytes) -> None:
        while not buf.endswith(b"0\r\n\r\n"):
            buf += s.recv(65536)
        got.append(buf)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = make_canned({"*": capture})
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(p.listener_port()) as c:
        r = c.request(b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n")
        assert r.status == 200
    wire = got[0]
    assert b"ext" not in wire and b"x-trailer" not in wire.lower()
    data = b"".join(m.group(2) for m in re.finditer(rb"([0-9a-f]+)\r\n(.*?)\r\n", wire) if m.group(1) != b"0")
    assert data == b"abc"


def test_chunked_request_via_httpx_generator(proxy: Any, upstream: Any) -> None:
    parts = [pattern(10000, i) for i in range(10)]
    with httpx.Client() as client:
        r = client.post(f"http://127.0.0.1:{proxy.listener_port()}/b", content=iter(parts))
    assert r.status_code == 200
    rec = upstream.requests[0]
    assert (rec.body_len, rec.body_sha256) == (100000, hashlib.sha256(b"".join(parts)).hexdigest())


# --- response framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4096, 4097, 300000])
def test_chunked_response_reaches_client_chunked(proxy: Any, n: int) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(f"/chunked/{n}"))
        # survey §5 chunked: transfer-encoding moved after server
        assert (r.status_line, shape(r.headers)) == (
            "HTTP/1.1 200 OK",
            [("x-upstream-port", "<port>"), UST, DATE, SERVER, ("transfer-encoding", "chunked")],
        )
        assert r.body == b"y" * n
        assert c.request(get("/x")).status == 200  # framing ended exactly: the next response parses


@pytest.mark.parametrize("n", [0, 1, 16, 200000])
def test_close_delimited_response_reaches_client_chunked(proxy: Any, n: int) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(f"/close/{n}"))
        # survey §5 eofbody: chunked to the client, upstream connection: close not relayed,
        # client connection kept
        assert (r.status_line, shape(r.headers)) == (
            "HTTP/1.1 200 OK",
            [("x-upstream-port", "<port>"), UST, DATE, SERVER, ("transfer-encoding", "chunked")],
        )
        assert r.body == b"z" * n
        assert c.request(get("/x")).status == 200


@pytest.mark.parametrize("n", [0, 10, 1 << 20])
def test_content_length_response_body_intact(proxy: Any, n: int) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(f"/bytes/{n}"))
        assert r.header("content-length") == str(n) and r.header("transfer-encoding") is None
        assert r.body == b"x" * n


def read_until(c: RawConn, sep: bytes) -> bytes:
    """Raw bytes from the client socket up to and including `sep` (more may follow)."""
    data = b""
    while sep not in data:
        chunk = c.sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def read_to_eof(c: RawConn) -> bytes:
    data = b""
    while chunk := c.sock.recv(65536):
        data += chunk
    return data


class Staged:
    """An upstream reply in two stages: the head (and `first` body bytes) at once, the rest
    once the test calls `release()`; `head_sent` is set in between."""

    def __init__(self, head: bytes, first: bytes, rest: bytes | None) -> None:
        self.head, self.first, self.rest = head, first, rest
        self.head_sent, self._go = threading.Event(), threading.Event()

    def release(self) -> None:
        self._go.set()

    def __call__(self, sock: Any, _extra: bytes) -> None:
        sock.sendall(self.head + self.first)
        self.head_sent.set()
        assert self._go.wait(10), "the test never released the body"
        if self.rest is not None:  # None: the upstream goes away instead
            sock.sendall(self.rest)


def test_streamed_chunked_response_head_reaches_client_before_its_body(make_proxy: Any, make_canned: Any) -> None:
    # A chunked body may stream (server-sent events): its head goes out at once, not after
    # the body. (A head held in the kernel with MSG_MORE would still come, 200 ms later: this
    # catches a head that waits for the body in the proxy, not that.)
    reply = Staged(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"", b"5\r\nhello\r\n0\r\n\r\n")
    up = make_canned({"*": reply})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/"))
        head = read_until(c, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
        reply.release()
        assert read_until(c, b"0\r\n\r\n").endswith(b"5\r\nhello\r\n0\r\n\r\n")


def test_content_length_response_whose_body_comes_later_arrives_whole(make_proxy: Any, make_canned: Any) -> None:
    # The head of a response with a length waits in the kernel for the body's first bytes
    # (one segment instead of two); whenever the body comes, the client gets all of it.
    # (`connection: close`: the canned upstream closes after a staged reply, so the proxy
    # must not pool that connection for the next request.)
    reply = Staged(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n", b"", b"0123456789")
    up = make_canned({"*": reply, "/next": NEXT})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/"))
        assert reply.head_sent.wait(10)
        reply.release()
        r = c.read_response()
        assert (r.status_line, r.header("content-length"), r.body) == ("HTTP/1.1 200 OK", "10", b"0123456789")
        assert c.request(get("/next")).body == b"next"


@pytest.mark.parametrize("first", [b"", b"012"], ids=["no-body-bytes", "some-body-bytes"])
def test_upstream_gone_after_the_head_client_gets_what_came_then_close(
    make_proxy: Any, make_canned: Any, first: bytes
) -> None:
    # envoy binary: the head and whatever body bytes came, then the connection closes.
    reply = Staged(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", first, None)
    up = make_canned({"*": reply})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/"))
        assert reply.head_sent.wait(10)
        reply.release()
        data = read_to_eof(c)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 10" in head
        assert body == first


R204 = b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n"
R204_CL = b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\nContent-Length: 0\r\n\r\n"
R304 = b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 5\r\n\r\n'
HEADRESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\n"
NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


@pytest.mark.parametrize(
    ("method", "canned", "status_line", "expected"),
    [
        ("GET", R204, "HTTP/1.1 204 No Content", [("x-up", "1"), UST, DATE, SERVER]),  # survey §5 r204
        # envoy binary: an upstream content-length: 0 on a 204 is removed
        ("GET", R204_CL, "HTTP/1.1 204 No Content", [("x-up", "1"), UST, DATE, SERVER]),
        ("GET", R304, "HTTP/1.1 304 Not Modified", [("etag", '"abc"'), ("content-length", "5"), UST, DATE, SERVER]),
        ("HEAD", HEADRESP, "HTTP/1.1 200 OK", [("content-length", "5"), ("x-up", "1"), UST, DATE, SERVER]),
    ],
    ids=["204", "204-cl0", "304", "HEAD"],
)
def test_bodiless_responses(make_proxy: Any, make_canned: Any, method: str, canned: bytes, status_line: str,
                            expected: list[tuple[str, str]]) -> None:
    up = make_canned({"/r": canned, "/next": NEXT})
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/r", method=method), head=True)
        assert (r.status_line, shape(r.headers)) == (status_line, expected)
        # no body bytes follow: the next response on the connection starts right away
        r2 = c.request(get("/next"))
        assert (r2.status_line, r2.body) == ("HTTP/1.1 200 OK", b"next")


def test_head_through_test_upstream_keeps_content_length(proxy: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/echo", method="HEAD"), head=True)
        assert r.status == 200 and int(r.header("content-length") or "0") > 0
        assert c.request(get("/x")).status == 200


# --- Expect: 100-continue ---------------------------------------------------------------------------


def test_expect_100_continue_answered_by_proxy_and_not_forwarded(proxy: Any, upstream: Any) -> None:
    # survey §4e: Envoy answers 100 itself before the body is sent and strips Expect
    with RawConn(proxy.listener_port()) as c:
        c.send(b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_response(skip_100=False)
        assert interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello")
        r = c.read_response()
        assert r.status_line == "HTTP/1.1 200 OK"
    (rec,) = upstream.requests
    assert rec.header("expect") is None
    assert (rec.body_len, rec.body_sha256) == (5, hashlib.sha256(b"hello").hexdigest())
    assert shape_request(rec.headers) == [("host", "example.com"), ("content-length", "5"), *TAIL]


def test_expect_100_continue_with_body_in_same_write(proxy: Any, upstream: Any) -> None:
    # survey §4g: the 100 is still sent, once, before the final response
    with RawConn(proxy.listener_port()) as c:
        c.send(b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
        assert c.read_response(skip_100=False).raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert c.read_response(skip_100=False).status_line == "HTTP/1.1 200 OK"
    assert upstream.requests[0].header("expect") is None


def test_expect_other_value_forwarded(proxy: Any, upstream: Any) -> None:
    # survey §4h: Expect: foo is forwarded untouched, no 100 and no 417
    with RawConn(proxy.listener_port()) as c:
        r = c.request(b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: foo\r\n\r\nhello")
        assert r.status_line == "HTTP/1.1 200 OK"
    assert shape_request(upstream.requests[0].headers) == [
        ("host", "example.com"), ("content-length", "5"), ("expect", "foo"), *TAIL]


def test_expect_100_continue_with_curl(proxy: Any, upstream: Any, tmp_path: Any) -> None:
    body = pattern(200000, 7)
    f = tmp_path / "body"
    f.write_bytes(body)
    out = subprocess.run(
        ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect: 100-continue",
         "--expect100-timeout", "30", "--data-binary", f"@{f}", f"http://127.0.0.1:{proxy.listener_port()}/b"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert out.stdout == "200"
    assert "< HTTP/1.1 100 Continue" in out.stderr
    rec = upstream.requests[0]
    assert rec.header("expect") is None
    assert rec.body_sha256 == hashlib.sha256(body).hexdigest()


# --- 100 MB each way, memory flat ---------------------------------------------------------------------

MB = 1 << 20
BIG = 100 * MB
RSS_GROWTH_LIMIT = 30 * MB


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's VmRSS on a thread until stopped; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, vm_rss(pid), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, vm_rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, vm_rss(self.pid))
        return self.peak


@pytest.fixture
def subprocess_proxy(upstream: Any, tmp_path: Any) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`python -m pyproxy` on a YAML file, listener on port 0; the port is read from its log
    line `listener <name> on <addr>:<port>`."""
    import json

    cfg = bootstrap([route("/", "up")], [cluster("up", upstream.port)], admin=False)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyproxy", "-c", str(path), "--concurrency", "1", "-l", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    port: list[int] = []
    lines: list[str] = []

    def read_log() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"listener \S+ on [\d.]+:(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))

    threading.Thread(target=read_log, daemon=True).start()
    try:
        wait_for(lambda: port or proc.poll() is not None, 20, "the proxy's listener log line")
        assert port, f"proxy exited {proc.returncode}: {''.join(lines)}"
        yield proc, port[0]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_100mb_upload_memory_flat(subprocess_proxy: tuple[subprocess.Popen[str], int], upstream: Any) -> None:
    proc, port = subprocess_proxy
    sha = hashlib.sha256()
    block = pattern(64 * 1024, 3)

    def gen() -> Iterator[bytes]:
        for _ in range(BIG // len(block)):
            sha.update(block)
            yield block

    with httpx.Client(timeout=120) as client:
        assert client.get(f"http://127.0.0.1:{port}/warm").status_code == 200
        base = vm_rss(proc.pid)
        sampler = RssSampler(proc.pid)
        r = client.post(f"http://127.0.0.1:{port}/up", content=gen())
        peak = sampler.stop()
    assert r.status_code == 200
    rec = upstream.requests[-1]
    assert (rec.body_len, rec.body_sha256) == (BIG, sha.hexdigest())
    assert peak - base < RSS_GROWTH_LIMIT, f"proxy RSS grew {(peak - base) / MB:.1f} MB during a 100 MB upload"


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_100mb_download_memory_flat(subprocess_proxy: tuple[subprocess.Popen[str], int], kind: str) -> None:
    proc, port = subprocess_proxy
    with httpx.Client(timeout=120) as client:
        assert client.get(f"http://127.0.0.1:{port}/warm").status_code == 200
        base = vm_rss(proc.pid)
        sampler = RssSampler(proc.pid)
        n = 0
        with client.stream("GET", f"http://127.0.0.1:{port}/{kind}/{BIG}") as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                n += len(chunk)
        peak = sampler.stop()
    assert n == BIG
    assert peak - base < RSS_GROWTH_LIMIT, f"proxy RSS grew {(peak - base) / MB:.1f} MB during a 100 MB download"
