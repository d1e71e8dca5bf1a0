"""What the proxy takes in a request line, `Host`, `Expect`, `TE`, chunk-size lines and trailers,
and how it answers what it refuses. Found by sending the same odd requests to pyproxy and to the
`envoy` 1.40 binary side by side (docs/envoy-behaviour.md §7); every case here passes against
both (PYPROXY_DATAPLANE_TARGET=envoy)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dataplane.conftest import RawConn, get, shape, shape_request, wait_stat
from tests.support.configs import bootstrap, cluster, route

DATE = ("date", "<date>")
SERVER = ("server", "envoy")
CLOSE = ("connection", "close")
PROTOCOL_ERRORS = "http.ingress_http.downstream_cx_protocol_error"
TAIL = [("x-forwarded-proto", "http"), ("x-request-id", "<uuid>"), ("x-envoy-expected-rq-timeout-ms", "15000")]


def text_reply(status_line: str, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """A codec refusal: text body, `connection: close`."""
    return (status_line, [("content-length", str(len(body))), ("content-type", "text/plain"), DATE, SERVER, CLOSE],
            body)


BAD_REQUEST = text_reply("HTTP/1.1 400 Bad Request", b"Bad Request")
UPGRADE_REQUIRED = text_reply("HTTP/1.1 426 Upgrade Required", b"Upgrade Required")
NOT_IMPLEMENTED = text_reply("HTTP/1.1 501 Not Implemented", b"Not Implemented")
# A refusal of Envoy's connection manager, after its codec took the request: no body.
EMPTY_400 = ("HTTP/1.1 400 Bad Request", [DATE, SERVER, CLOSE, ("content-length", "0")], b"")
CONNECT_404 = ("HTTP/1.1 404 Not Found", [DATE, SERVER, CLOSE, ("content-length", "0")], b"")

# Envoy 1.40's codec knows these methods, exactly so spelt (`MSEARCH` has no dash).
KNOWN_METHODS = ["ACL", "BIND", "CHECKOUT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK", "MERGE", "MKACTIVITY",
                 "MKCALENDAR", "MKCOL", "MOVE", "MSEARCH", "NOTIFY", "OPTIONS", "PATCH", "POST", "PROPFIND",
                 "PROPPATCH", "PURGE", "PUT", "REBIND", "REPORT", "SEARCH", "SOURCE", "SUBSCRIBE", "TRACE", "UNBIND",
                 "UNLINK", "UNLOCK", "UNSUBSCRIBE"]


@pytest.fixture
def proxy(make_proxy: Any, upstream: Any) -> Any:
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))


def refused(proxy: Any, upstream: Any, raw: bytes, expected: Any, protocol_errors: int, head: bool = False) -> None:
    """Sends `raw` on a new connection: the exact reply comes back, the connection closes, the
    upstream sees nothing, and the protocol-error count is as Envoy's."""
    with RawConn(proxy.listener_port()) as c:
        r = c.request(raw, head=head)
        assert (r.status_line, shape(r.headers), r.body) == expected
        assert c.closed_within(3.0)  # Envoy closes ~1 s after (delayed close)
    assert upstream.requests == []
    wait_stat(proxy, f"http.ingress_http.downstream_rq_{expected[0].split()[1][0]}xx", 1)
    assert proxy.stats().get(PROTOCOL_ERRORS, 0) == protocol_errors


# --- methods ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", KNOWN_METHODS)
def test_every_method_envoy_knows_is_forwarded(proxy: Any, upstream: Any, method: str) -> None:
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/m", method=method), head=method == "HEAD").status == 200
    (rec,) = upstream.requests
    assert (rec.method, rec.target) == (method, "/m")


@pytest.mark.parametrize("method", ["get", "Get", "FOO", "M-SEARCH", "PRI", "GETX", "QX"])
def test_a_method_envoy_does_not_know_is_400(proxy: Any, upstream: Any, method: str) -> None:
    refused(proxy, upstream, get("/", method=method), BAD_REQUEST, 1)


def test_query_is_refused_by_the_connection_manager(proxy: Any, upstream: Any) -> None:
    refused(proxy, upstream, get("/", method="QUERY"), EMPTY_400, 0)


# --- request targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["*", "*x", "x", "example.com:443", "?q", "ws://x/", "h://x/", "http:/x", "http://", "http:///x", "http://a_b/",
     "http://a%41/", "http://a!b/", "http://a,b/", "http://a:b:c/", "http://a:/", "http://:80/", "http://a@b@c/",
     "http://[zz]/", "/\u00e9"],
)
def test_a_target_envoy_cannot_take_is_400(proxy: Any, upstream: Any, target: str) -> None:
    refused(proxy, upstream, f"GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode(), BAD_REQUEST, 1)


@pytest.mark.parametrize("target", ["/a#", "/#", "/a?b#c", "http://example.com/a#b"])
def test_a_fragment_is_refused_by_the_connection_manager(proxy: Any, upstream: Any, target: str) -> None:
    refused(proxy, upstream, f"GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode(), EMPTY_400, 0)


@pytest.mark.parametrize(
    ("target", "host"),
    [("http://x", "x"), ("HTTP://x/", "x"), ("https://x/y", "x"), ("http://-a/", "-a"),
     ("http://[::1]/", "[::1]"), ("http://a:80/", "a:80")],
)
def test_absolute_targets_envoy_takes(make_proxy: Any, upstream: Any, target: str, host: str) -> None:
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(f"GET {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode()).status == 200
    (rec,) = upstream.requests
    assert rec.header("host") == host


FORBIDDEN = text_reply("HTTP/1.1 403 Forbidden", b"Forbidden")


@pytest.mark.parametrize(
    "line",
    ["GET https://x/y HTTP/1.1", "GET HTTPS://x/y HTTP/1.1", "GET https://x/y HTTP/1.0", "GET https://x/#f HTTP/1.1"],
)
def test_an_edge_listener_refuses_https_targets_in_the_clear(make_proxy: Any, upstream: Any, line: str) -> None:
    # Envoy's codec validates the scheme where use_remote_address is set: "https in the clear"
    # is a 403 protocol error, before the version and the fragment are looked at.
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"use_remote_address": True}))
    refused(proxy, upstream, f"{line}\r\nHost: example.com\r\n\r\n".encode(), FORBIDDEN, 1)


def test_an_edge_listener_takes_http_targets(make_proxy: Any, upstream: Any) -> None:
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"use_remote_address": True}))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(b"GET http://x/y HTTP/1.1\r\nHost: example.com\r\n\r\n").status == 200


def test_a_query_right_after_the_authority_is_the_path(make_proxy: Any, upstream: Any) -> None:
    # Envoy takes `?y` as the path of `http://x?y`; a path that does not start with `/` is not
    # routed, whatever the routes (here one that matches anything): 404.
    routes = [{"match": {"safe_regex": {"regex": ".*"}}, "route": {"cluster": "up"}}]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(b"GET http://x?y HTTP/1.1\r\nHost: example.com\r\n\r\n").status == 404
    assert upstream.requests == []
    wait_stat(proxy, "http.ingress_http.downstream_rq_non_relative_path", 1)


def test_options_star_is_not_routed(proxy: Any, upstream: Any) -> None:
    # `*` is not a path: 404 (downstream_rq_non_relative_path, test_paths.py), and the
    # connection stays.
    with RawConn(proxy.listener_port()) as c:
        assert c.request(b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n").status == 404
        assert c.request(get("/")).status == 200


@pytest.mark.parametrize("target", ["example.com:443", "[::1]:443"])
def test_connect_to_an_authority_finds_no_route(proxy: Any, upstream: Any, target: str) -> None:
    refused(proxy, upstream, f"CONNECT {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode(), CONNECT_404, 0)


@pytest.mark.parametrize("target", ["/", "*", "example.com", "http://example.com/", "a:", "u@a:1", ":443"])
def test_connect_without_host_and_port_is_400(proxy: Any, upstream: Any, target: str) -> None:
    refused(proxy, upstream, f"CONNECT {target} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode(), BAD_REQUEST, 1)


# --- versions and spacing -----------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["GET /", "GET / ", "GET / HTTP/2.0", "GET / HTTP/1.2", "GET / HTTP/1.0",
                                  "GET / HTTP/1.0 "])
def test_other_versions_and_none_are_426(proxy: Any, upstream: Any, line: str) -> None:
    refused(proxy, upstream, f"{line}\r\nHost: example.com\r\n\r\n".encode(), UPGRADE_REQUIRED, 1)


@pytest.mark.parametrize("line", ["GET / HTTP/1.1 x", "GET / HTTP/1.10", "GET / http/1.1", " GET / HTTP/1.1",
                                  "GET / HTTP/1.1\x0b"])
def test_a_malformed_request_line_is_400(proxy: Any, upstream: Any, line: str) -> None:
    refused(proxy, upstream, f"{line}\r\nHost: example.com\r\n\r\n".encode(), BAD_REQUEST, 1)


@pytest.mark.parametrize("line", ["GET  /s  HTTP/1.1  ", "GET\t/s\tHTTP/1.1", "GET /s HTTP/1.1 \t "])
def test_runs_of_spaces_and_tabs_in_the_request_line_are_taken(proxy: Any, upstream: Any, line: str) -> None:
    with RawConn(proxy.listener_port()) as c:
        assert c.request(f"{line}\r\nHost: example.com\r\n\r\n".encode()).status == 200
        assert c.request(get("/again")).status == 200
    assert [(r.method, r.target, r.version) for r in upstream.requests] == [
        ("GET", "/s", "HTTP/1.1"), ("GET", "/again", "HTTP/1.1")]


def test_a_spaced_request_line_split_across_reads(proxy: Any, upstream: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        c.send(b"GET  /s")
        assert c.open_after(0.2)
        c.send(b"  HTTP/1")
        assert c.open_after(0.2)
        assert c.request(b".1 \r\nHost: example.com\r\n\r\n").status == 200
    assert upstream.requests[0].target == "/s"


# --- Host ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["ex ample.com", "a/b", "a?b", "a#b", "a\\b", 'a"b', "a{b", "a|b", "a^b", "a<b",
                                  "a\tb", "exa\u00e9mple.com"])
def test_a_host_with_characters_no_authority_has_is_400(proxy: Any, upstream: Any, host: str) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    refused(proxy, upstream, raw, BAD_REQUEST, 1)


@pytest.mark.parametrize("host", ["a,b", "example.com:abc", "[::1]:80", "a@b", "a%41b", "a_b", "a:1:2", "a;b=c",
                                  "a(b)*+!$&'~"])
def test_hosts_envoy_takes(proxy: Any, upstream: Any, host: str) -> None:
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/", host=host)).status == 200
    assert upstream.requests[0].header("host") == host


def test_several_hosts_are_joined_and_routed_joined(make_proxy: Any, upstream: Any) -> None:
    vhosts = [{"name": "one", "domains": ["example.com"], "routes": [route("/", "up")]},
              {"name": "joined", "domains": ["example.com,other.com"], "routes": [route("/", "up")]}]
    proxy = make_proxy(bootstrap([], [cluster("up", upstream.port)], virtual_hosts=vhosts))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(b"GET /j HTTP/1.1\r\nHost: example.com\r\nx-a: 1\r\nHost: other.com\r\n\r\n")
        assert r.status == 200
        r = c.request(b"GET /k HTTP/1.1\r\nHost: example.com\r\nHost: nomatch\r\n\r\n")
        assert r.status == 404
    (rec,) = upstream.requests
    assert shape_request(rec.headers) == [("host", "example.com,other.com"), ("x-a", "1"), *TAIL]


# --- Expect -------------------------------------------------------------------------------------------


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nExpect:  100-CONTINUE  \r\n\r\n", 200),
        (b"POST / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", 400),  # no host: after the 100
        (b"GET /a# HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nConnection: upgrade\r\n"
         b"Upgrade: foo\r\n\r\n", 403),
    ],
    ids=["get", "case-and-spaces", "empty-post", "no-host", "fragment", "connect", "upgrade"],
)
def test_expect_100_continue_is_answered_once_the_codec_took_the_head(
    proxy: Any, upstream: Any, raw: bytes, status: int
) -> None:
    with RawConn(proxy.listener_port()) as c:
        c.send(raw)
        assert c.read_response(skip_100=False).raw == CONTINUE
        assert c.read_response(skip_100=False).status == status
    for rec in upstream.requests:
        assert rec.header("expect") is None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"FOO / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.0\r\nHost: example.com\r\nExpect: 100-continue\r\n\r\n", 426),
    ],
    ids=["unknown-method", "te-gzip", "http-1.0"],
)
def test_no_100_continue_when_the_codec_refuses(proxy: Any, upstream: Any, raw: bytes, status: int) -> None:
    with RawConn(proxy.listener_port()) as c:
        c.send(raw)
        assert c.read_response(skip_100=False).status == status
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("extra", "expect"),
    [("Expect: 100-continue\r\nExpect: 100-continue\r\n", ["100-continue", "100-continue"]),
     ("Expect: 100-continue, foo\r\n", ["100-continue, foo"])],
    ids=["twice", "list"],
)
def test_expect_that_is_not_exactly_100_continue_is_forwarded(
    proxy: Any, upstream: Any, extra: str, expect: list[str]
) -> None:
    with RawConn(proxy.listener_port()) as c:
        c.send(get("/", extra=extra))
        assert c.read_response(skip_100=False).status == 200
    # Envoy sends two `expect` headers as one joined value; either way the same list.
    got = ",".join(upstream.requests[0].header_all("expect")).replace(", ", ",")
    assert got == ",".join(expect).replace(", ", ",")


# --- TE -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "te"),
    [("TE: trailers\r\n", ["trailers"]), ("TE: Trailers\r\n", []), ("TE: TRAILERS\r\n", []),
     ("TE: trailers;q=1\r\n", []), ("TE: gzip\r\nTE: trailers\r\n", ["trailers"]),
     ("TE: x, , trailers\r\n", ["trailers"]), ("TE: \r\n", [""]), ("TE: \r\nTE: gzip\r\n", [])],
)
def test_te_keeps_exactly_trailers_or_an_empty_value(proxy: Any, upstream: Any, extra: str, te: list[str]) -> None:
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/", extra=extra)).status == 200
    assert upstream.requests[0].header_all("te") == te


# --- chunked bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"0x5\r\nhello\r\n0\r\n\r\n", b"5x\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
     b"5\r\nhello\r\n0\r\nx t: 1\r\n\r\n", b"5\r\nhello\r\n0\r\nx-t: a\x01b\r\n\r\n"],
    ids=["0x5", "5x", "no-colon", "space-in-name", "control-byte"],
)
def test_a_bad_chunk_size_or_trailer_is_400_and_nothing_is_smuggled(proxy: Any, upstream: Any, body: bytes) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with RawConn(proxy.listener_port()) as c:
        r = c.request(raw + get("/smuggled"))
        assert r.status == 400
        assert c.closed_within(3.0)
    assert [r.target for r in upstream.requests if r.body_len == 5] == []
    assert all(r.target != "/smuggled" for r in upstream.requests)


@pytest.mark.parametrize(
    "body",
    [b"5 x\r\nhello\r\n0\r\n\r\n", b"5 \t ;a=b\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nx-t:\r\n\r\n",
     b"5\r\nhello\r\n0\r\nx-t: 1\r\n folded\r\n\r\n", b"5\r\nhello\r\n0\r\nx-t: a\x80b\r\n\r\n"],
    ids=["space-then-text", "spaces-then-extension", "empty-trailer", "folded-trailer", "obs-text-trailer"],
)
def test_chunk_lines_and_trailers_envoy_takes(proxy: Any, upstream: Any, body: bytes) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with RawConn(proxy.listener_port()) as c:
        assert c.request(raw).status == 200
        assert c.request(get("/next")).status == 200
    assert [(r.target, r.body_len) for r in upstream.requests] == [("/", 5), ("/next", 0)]


# --- HEAD -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n", BAD_REQUEST),
        (b"HEAD / HTTP/1.0\r\nHost: example.com\r\n\r\n", UPGRADE_REQUIRED),
        (b"HEAD / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
         text_reply("HTTP/1.1 501 Not Implemented", b"Not Implemented")),
    ],
    ids=["bad-host", "http-1.0", "te-gzip"],
)
def test_a_codec_refusal_of_head_still_carries_its_body(proxy: Any, upstream: Any, raw: bytes, expected: Any) -> None:
    # Envoy's codec answers before it looks at the method, so the text goes out even to HEAD.
    refused(proxy, upstream, raw, expected, 1)


# --- HTTP/0.9 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /\r\n\r\n",
        b"GET /\r\nBad Header: x\r\n\r\n",
        b"GET /\r\nHost: e\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /#frag\r\nBad Header: x\r\n\r\n",
        b"HEAD /\r\nHost: example.com\r\n folded\r\n\r\n",
    ],
    ids=["line-only", "bad-header", "cl-and-te", "fragment", "folded"],
)
def test_an_http_0_9_request_is_its_line_alone(proxy: Any, upstream: Any, raw: bytes) -> None:
    # envoy binary (envoy_diff seed 12): no version, no headers: whatever follows the line is
    # not read, and the answer is the 426.
    refused(proxy, upstream, raw, UPGRADE_REQUIRED, 1)


# --- the order of the codec's checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # the request line before the framing
        (b"FOO / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_REQUEST),
        # the framing before the version and the host
        (b"GET / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
         text_reply("HTTP/1.1 501 Not Implemented", b"Not Implemented")),
        (b"GET / HTTP/1.1\r\nHost: a b\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
         text_reply("HTTP/1.1 501 Not Implemented", b"Not Implemented")),
        # the version before the host
        (b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n", UPGRADE_REQUIRED),
        (b"GET / HTTP/3.0\r\nHost: a b\r\n\r\n", UPGRADE_REQUIRED),
        # the URL check of the request line before the framing ...
        (b"GET x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_REQUEST),
        (b"GET /a\xc3\xa9 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_REQUEST),
        (b"GET http://a@@b/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_REQUEST),
        # ... the target's form after it, and before the version
        (b"GET * HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", NOT_IMPLEMENTED),
        (b"GET http://a_b/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", NOT_IMPLEMENTED),
        (b"GET ws://x/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", NOT_IMPLEMENTED),
        (b"CONNECT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", NOT_IMPLEMENTED),
        (b"GET * HTTP/1.0\r\nHost: a\r\n\r\n", BAD_REQUEST),
        (b"GET http://a_b/ HTTP/1.0\r\nHost: a\r\n\r\n", BAD_REQUEST),
        (b"CONNECT / HTTP/1.0\r\nHost: a\r\n\r\n", BAD_REQUEST),
        # a CONNECT carries no body
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", NOT_IMPLEMENTED),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab", BAD_REQUEST),
    ],
    ids=["method-then-te", "te-then-version", "te-then-host", "version-then-host", "other-version-then-host",
         "url-then-te", "high-byte-then-te", "double-at-then-te", "te-then-star", "te-then-authority",
         "te-then-scheme", "te-then-connect-target", "star-then-version", "authority-then-version",
         "connect-target-then-version", "connect-te", "connect-body"],
)
def test_the_codec_refuses_for_the_first_problem_in_envoys_order(
    proxy: Any, upstream: Any, raw: bytes, expected: Any
) -> None:
    refused(proxy, upstream, raw, expected, 1)


# --- an empty x-forwarded-proto -----------------------------------------------------------------------


NOT_FOUND = ("HTTP/1.1 404 Not Found", [DATE, SERVER, ("content-length", "0")], b"")


@pytest.mark.parametrize("path", ["/", "/direct"])
def test_an_empty_x_forwarded_proto_matches_no_route(make_proxy: Any, upstream: Any, path: str) -> None:
    # Envoy takes the scheme from a kept x-forwarded-proto; an empty one matches no route, not
    # even a direct response, and the connection stays.
    routes = [{"match": {"path": "/direct"}, "direct_response": {"status": 200}}, route("/", "up")]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, extra="X-Forwarded-Proto: \r\n"))
        assert (r.status_line, shape(r.headers), r.body) == NOT_FOUND
        assert c.request(get(path, extra="X-Forwarded-Proto: ftp\r\n")).status == 200
        assert c.request(get(path, extra="X-Forwarded-Proto: \r\nX-Forwarded-Proto: http\r\n")).status == 200
    wait_stat(proxy, "http.ingress_http.no_route", 1)


def test_an_edge_listener_overwrites_an_empty_x_forwarded_proto(make_proxy: Any, upstream: Any) -> None:
    proxy = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)],
                                 hcm={"use_remote_address": True}))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/", extra="X-Forwarded-Proto: \r\n")).status == 200
    assert upstream.requests[0].header("x-forwarded-proto") == "http"


@pytest.mark.parametrize(
    "te_lines",
    [["chunked, "], [", chunked"], ["chunked", "chunked"], [""], ["chunked", "", "chunked"]],
    ids=["empty-element-after", "empty-element-before", "twice", "blank", "twice-around-blank"],
)
def test_transfer_encoding_other_than_one_chunked_is_501(proxy: Any, upstream: Any, te_lines: list[str]) -> None:
    # Envoy 1.40 joins the non-blank lines and takes exactly `chunked`: an empty list element
    # makes a list, not `chunked` (checked with the envoy binary).
    te = "".join(f"Transfer-Encoding: {v}\r\n" for v in te_lines)
    refused(proxy, upstream, f"POST / HTTP/1.1\r\nHost: a\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n".encode(),
            NOT_IMPLEMENTED, 1)


def test_blank_transfer_encoding_line_before_chunked_is_dropped(proxy: Any, upstream: Any) -> None:
    with RawConn(proxy.listener_port()) as c:
        r = c.request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\n\r\n")
        assert r.status == 200
    seen = [(q.method, q.body_len, q.header("transfer-encoding")) for q in upstream.requests]
    assert seen == [("POST", 5, "chunked")]


def test_blank_transfer_encoding_line_after_chunked_leaves_the_request_bodiless(proxy: Any, upstream: Any) -> None:
    # Envoy 1.40's parser frames by the last `transfer-encoding` line: after a blank one the
    # request has no body (a POST goes up with `content-length: 0`), and the chunk lines are
    # read as the next request, which is malformed (checked with the envoy binary).
    with RawConn(proxy.listener_port()) as c:
        r = c.request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: \r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert r.status == 200
        assert c.read_response().status == 400
    assert [(q.method, q.body_len, q.header("transfer-encoding"), q.header("content-length"))
            for q in upstream.requests] == [("POST", 0, None, "0")]
