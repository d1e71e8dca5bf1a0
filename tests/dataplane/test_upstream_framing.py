"""What the proxy takes from an upstream's status line and framing headers, and what it refuses
as a protocol error (502). Found by the response mode of tests/support/envoy_diff.py and checked
case by case against the `envoy` 1.40 binary (docs/envoy-behaviour.md §10); every case here
passes against both (PYPROXY_DATAPLANE_TARGET=envoy)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.dataplane.conftest import RawConn, get, wait_stat
from tests.support.configs import bootstrap, cluster, route

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
UPSTREAM_PROTOCOL_ERROR = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"


def through(make_proxy: Any, make_canned: Any, answer: bytes) -> Any:
    up = make_canned({"*": answer})
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\nok"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, \r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n" + OK),
        ("GET", b"HTTP/1.1 103 Early\r\nTransfer-Encoding: chunked\r\n\r\n" + OK),
        ("GET", b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ],
    ids=["te-gzip", "te-identity", "te-chunked-gzip", "te-empty", "te-twice", "te-empty-element-after",
         "te-empty-element-before", "cl-and-te", "cl-and-te-http10",
         "head-te-gzip", "head-cl-and-te", "204-te", "204-cl-5", "100-cl", "103-te", "empty-line-first"],
)
def test_ambiguous_or_unsupported_upstream_framing_is_a_502(
    make_proxy: Any, make_canned: Any, method: str, answer: bytes
) -> None:
    proxy = through(make_proxy, make_canned, answer)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/a", method=method), head=method == "HEAD")
        assert r.status == 502
        assert r.body == (b"" if method == "HEAD" else UPSTREAM_PROTOCOL_ERROR)
    wait_stat(proxy, "cluster.up.upstream_cx_protocol_error", 1)


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1  200  OK", b"HTTP/1.1 200\tOK", b"HTTP/1.1\t200 OK", b"HTTP/2.0 200 OK", b"HTTP/3.0 200 OK"],
    ids=["double-spaces", "tab-before-reason", "tab-before-code", "http-2.0", "http-3.0"],
)
def test_status_lines_envoy_takes(make_proxy: Any, make_canned: Any, status_line: bytes) -> None:
    proxy = through(make_proxy, make_canned, status_line + b"\r\ncontent-length: 2\r\n\r\nok")
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/a"))
        assert (r.status_line, r.body) == ("HTTP/1.1 200 OK", b"ok")


@pytest.mark.parametrize(
    ("answer", "status", "names"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, ["transfer-encoding"]),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204, []),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", 304, []),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 304, ["content-length"]),
    ],
    ids=["te-chunked-any-case", "204-cl-0-dropped", "304-te-dropped", "304-cl-kept"],
)
def test_framing_headers_envoy_takes(
    make_proxy: Any, make_canned: Any, answer: bytes, status: int, names: list[str]
) -> None:
    proxy = through(make_proxy, make_canned, answer)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/a"))
        assert r.status == status
        assert [k for k, _ in r.headers if k in ("content-length", "transfer-encoding")] == names
        assert r.body == (b"ok" if status == 200 else b"")
        assert c.request(get("/b")).status == status  # the connection stays usable


@pytest.mark.parametrize(
    "answer", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n"],
    ids=["chunked", "no-length"],
)
def test_a_response_to_head_without_a_length_says_chunked(make_proxy: Any, make_canned: Any, answer: bytes) -> None:
    # As the response to a GET would; a HEAD response with content-length keeps that instead.
    proxy = through(make_proxy, make_canned, answer)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/a", method="HEAD"), head=True)
        assert (r.status, r.header("transfer-encoding"), r.body) == (200, "chunked", b"")
        r = c.request(get("/b", method="HEAD"), head=True)  # nothing was left to read
        assert r.status == 200


@pytest.mark.parametrize("body", [b"zz\r\n", b"0x2\r\nok\r\n0\r\n\r\n"], ids=["not-hex", "0x"])
def test_a_malformed_chunked_body_still_sends_the_head_then_ends(
    make_proxy: Any, make_canned: Any, body: bytes
) -> None:
    proxy = through(make_proxy, make_canned, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    s = socket.create_connection(("127.0.0.1", proxy.listener_port()), timeout=5)
    s.sendall(get("/a"))
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
    assert not rest.endswith(b"0\r\n\r\n")  # never the last chunk: the client sees the break


def read_all(port: int, until: bytes | None = None, then: Any = None) -> bytes:
    """Sends GET /a and reads until EOF; once `until` has come, calls `then` (once)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(get("/a"))
    got = b""
    while chunk := s.recv(65536):
        got += chunk
        if until is not None and until in got:
            then()
            until = None
    s.close()
    return got


def test_a_malformed_chunk_drops_the_body_of_the_same_read(make_proxy: Any, make_canned: Any) -> None:
    # envoy binary: head, a good chunk and a bad chunk line in one read give the head alone
    # (Envoy's codec passes a read's body on once the read parsed whole).
    proxy = through(make_proxy, make_canned,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    head, _, rest = read_all(proxy.listener_port()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and rest == b""


def test_a_malformed_chunk_keeps_the_body_of_earlier_reads(make_proxy: Any, make_canned: Any) -> None:
    import threading

    go = threading.Event()

    def answer(s: socket.socket, _rest: bytes) -> None:
        s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        go.wait(5)  # the client has the first chunk: the bad line comes in a read of its own
        s.sendall(b"zz\r\n")
        s.close()

    up = make_canned({"*": answer})
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", up.port)]))
    got = read_all(proxy.listener_port(), until=b"hello", then=go.set)
    assert got.endswith(b"\r\n\r\n5\r\nhello\r\n")


@pytest.mark.parametrize(
    ("answer", "status"),
    [(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 502),
     (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 502),
     (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\n\r\n", 502),
     (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0, 0\r\n\r\n", 304)],
    ids=["cl-and-te", "two-cl", "te-gzip", "cl-list-not-read"],
)
def test_a_304_length_is_not_read_but_its_framing_headers_are_checked(
    make_proxy: Any, make_canned: Any, answer: bytes, status: int
) -> None:
    proxy = through(make_proxy, make_canned, answer)
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/a")).status == status


# --- a length removed by a connection header or a header edit ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "route_edits"),
    [("Connection: content-length\r\n", None), ("Connection: x-a, Content-Length\r\nx-a: 1\r\n", None),
     ("", {"request_headers_to_remove": ["content-length"]})],
    ids=["nominated", "nominated-among-others", "removed-by-config"],
)
def test_a_request_whose_length_is_removed_goes_chunked_not_unframed(
    make_proxy: Any, upstream: Any, extra: str, route_edits: Any
) -> None:
    # Regression (review): the length went, the body still followed, and the upstream read the
    # body as the next request: `GET /smuggled` below reached it as a request of its own.
    proxy = make_proxy(bootstrap([{**route("/", "up"), **(route_edits or {})}], [cluster("up", upstream.port)]))
    body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = f"POST /p HTTP/1.1\r\nHost: example.com\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body
    with RawConn(proxy.listener_port()) as c:
        assert c.request(raw).status == 200
        assert c.request(get("/after")).status == 200
    assert [(r.method, r.target, r.body_len) for r in upstream.requests] == [
        ("POST", "/p", len(body)), ("GET", "/after", 0)]
    assert upstream.requests[0].header("transfer-encoding") == "chunked"


def test_a_response_keeps_the_headers_its_connection_header_names(make_proxy: Any, make_canned: Any) -> None:
    # Envoy removes only the hop-by-hop set from a response, not what `connection` nominates;
    # pyproxy removed both, a named `content-length` included (then sent the body unframed).
    answer = b"HTTP/1.1 200 OK\r\nConnection: content-length, x-foo\r\nx-foo: 1\r\nContent-Length: 5\r\n\r\nhello"
    proxy = through(make_proxy, make_canned, answer)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/a"))
        assert (r.status, r.header("x-foo"), r.header("content-length"), r.body) == (200, "1", "5", b"hello")
        assert r.header("connection") is None
        assert c.request(get("/b")).body == b"hello"  # framed: the connection is still in step


def test_a_response_whose_length_a_header_edit_removes_goes_chunked(make_proxy: Any, make_canned: Any) -> None:
    up = make_canned({"*": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"})
    r = {**route("/", "up"), "response_headers_to_remove": ["content-length"]}
    proxy = make_proxy(bootstrap([r], [cluster("up", up.port)]))
    with RawConn(proxy.listener_port()) as c:
        r1 = c.request(get("/a"))
        assert (r1.status, r1.header("content-length"), r1.body) == (200, None, b"hello")
        assert c.request(get("/b")).body == b"hello"


@pytest.mark.parametrize(
    ("te_lines", "body"),
    [(["", "chunked"], b"hello"), (["chunked", ""], b"5\r\nhello\r\n0\r\n\r\n"),
     (["CHUNKED", " "], b"5\r\nhello\r\n0\r\n\r\n")],
    ids=["blank-then-chunked", "chunked-then-blank", "chunked-then-space"],
)
def test_blank_transfer_encoding_lines(make_proxy: Any, make_canned: Any, te_lines: list[str], body: bytes) -> None:
    # Envoy 1.40 drops a blank `transfer-encoding` value but frames by the last line: after a
    # blank last line the response has no transfer coding, so its bytes are a body read to the
    # upstream's close (chunk lines included), relayed chunked (checked with the envoy binary).
    te = "".join(f"Transfer-Encoding: {v}\r\n" for v in te_lines).encode()
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + te + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    proxy = through(make_proxy, make_canned, answer)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/a"))
        assert (r.status, r.header("transfer-encoding"), r.body) == (200, "chunked", body)
