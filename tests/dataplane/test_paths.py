"""The connection manager's path rules: `normalize_path`, `merge_slashes` and
`path_with_escaped_slashes_action`. Expected values are what the envoy binary made of each
path (docs/envoy-behaviour.md section 18); every test passes against it too
(PYPROXY_DATAPLANE_TARGET=envoy).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.dataplane.conftest import RawConn
from tests.dataplane.test_stats import settled
from tests.support.configs import bootstrap, cluster, route


def forwarded(proxy: Any, upstream: Any, path: str) -> tuple[int, str | None]:
    """The status a GET of `path` gets and the target the upstream saw (None: none came)."""
    before = len(upstream.requests)
    with RawConn(proxy.listener_port()) as c:
        r = c.request(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode("latin-1"))
    return r.status, upstream.requests[-1].target if len(upstream.requests) > before else None


def path_proxy(make_proxy: Any, upstream: Any, **hcm: Any) -> Any:
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm=hcm))


NORMALIZED = [
    ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/../a", "/a"), ("/a/..", "/"), ("/a/.", "/a/"),
    ("/a/%2E%2e/b", "/b"), ("/a/.%2e/b", "/b"), ("/a/b/../../..", "/"), ("/a//b", "/a//b"),
    ("/a//..//b", "/a//b"), ("//..", "/"), ("/%41%62", "/Ab"), ("/%7e", "/~"), ("/%2D%5F%30%7A", "/-_0z"),
    ("/a%2Fb", "/a%2Fb"), ("/a%5cb", "/a%5cb"), ("/a\\b", "/a/b"), ("/a/b\\..\\c", "/a/c"), ("/a%25", "/a%25"),
    ("/%zz", "/%zz"), ("/a%", "/a%"), ("/%%30%30", "/%2500"), ("/%%300", "/%2500"), ("/a%%2e/", "/a%./"),
    ('/a"b', "/a%22b"), ("/a<b>", "/a%3Cb%3E"), ("/a^b`{|}", "/a%5Eb%60%7B%7C%7D"),
    ("/a/%2e%2e%2fb", "/a/..%2fb"), ("/a;b/../c", "/c"), ("/a/...", "/a/..."), ("/a/..b", "/a/..b"),
    ("/a.%2e", "/a.."), ("/%C3%A9", "/%C3%A9"), ("/!$&'()*+,;=:@[]", "/!$&'()*+,;=:@[]"),
    ("/a/../b?q=%41&r=/../", "/b?q=%41&r=/../"), ("/%2e", "/"),
    # A raw dot segment with parameters is that segment (the `..;/` traversal).
    ("/public/..;/admin", "/admin"), ("/a/.;x/b", "/a/b"), ("/a/..;x\\b/c", "/c"),
    ("/a/.%2e;x/b", "/a/..;x/b"), ("/a/..;x?q=1", "/?q=1"), ("/a\\..;x|/b", "/a/..;x%7C/b"),
]


@pytest.mark.parametrize(("path", "expected"), NORMALIZED)
def test_normalize_path(make_proxy: Any, upstream: Any, path: str, expected: str) -> None:
    p = path_proxy(make_proxy, upstream, normalize_path=True)
    assert forwarded(p, upstream, path) == (200, expected)


def test_paths_stay_as_sent_by_default(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream)
    for path in ("/a/../b", "/a//b", "/%41", "/a%2Fb", "/a\\b", '/a"b', "/%00"):
        assert forwarded(p, upstream, path) == (200, path)


def test_an_escaped_nul_fails_normalization(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream, normalize_path=True)
    with RawConn(p.listener_port()) as c:
        r = c.request(b"GET /a%00 HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (r.status, r.body, r.header("connection")) == (400, b"", "close")
    assert not upstream.requests
    settled(p, {"http.ingress_http.downstream_rq_failed_path_normalization": 1,
                "http.ingress_http.downstream_rq_4xx": 1})


def test_a_fragment_counts_as_failed_normalization(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream)
    with RawConn(p.listener_port()) as c:
        r = c.request(b"GET /a#b HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (r.status, r.header("connection")) == (400, "close")
    settled(p, {"http.ingress_http.downstream_rq_failed_path_normalization": 1})


@pytest.mark.parametrize(("path", "expected"), [
    ("/a//b", "/a/b"), ("//a", "/a"), ("/a//", "/a/"), ("//", "//"), ("///", "//"),
    ("/a///b//c", "/a/b/c"), ("/a//b?c//d", "/a/b?c//d"), ("/a//..//b", "/a/../b"),
])
def test_merge_slashes(make_proxy: Any, upstream: Any, path: str, expected: str) -> None:
    p = path_proxy(make_proxy, upstream, merge_slashes=True)
    assert forwarded(p, upstream, path) == (200, expected)


def test_merge_slashes_after_normalizing(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream, normalize_path=True, merge_slashes=True)
    for path, expected in (("/a//./b", "/a/b"), ("/a//..//b", "/a/b"), ("///", "//")):
        assert forwarded(p, upstream, path) == (200, expected)


@pytest.mark.parametrize(("path", "expected"), [
    ("/a%2Fb", "/a/b"), ("/a%2fb", "/a/b"), ("/a%5Cb", "/a\\b"), ("/%2f", "//"),
    ("/a/%2e%2e%2fb", "/a/%2e%2e/b"), ("/a%2f%2f/b", "/a///b"), ("/a?x=%2F", "/a?x=%2F"),
])
def test_unescape_and_forward(make_proxy: Any, upstream: Any, path: str, expected: str) -> None:
    p = path_proxy(make_proxy, upstream, path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD")
    assert forwarded(p, upstream, path) == (200, expected)


def test_reject_request_refuses_escaped_slashes(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream, path_with_escaped_slashes_action="REJECT_REQUEST")
    for path in ("/a%2Fb", "/a%5cb"):
        assert forwarded(p, upstream, path) == (400, None)
    assert forwarded(p, upstream, "/a/b?x=%2F") == (200, "/a/b?x=%2F")
    settled(p, {"http.ingress_http.downstream_rq_failed_path_normalization": 2})


def test_unescape_and_redirect(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream, normalize_path=True, merge_slashes=True,
                   path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT")
    with RawConn(p.listener_port()) as c:
        # The location is the path as all three rules leave it, with the query.
        r = c.request(b"GET /a%2F..%2F%2Fb?x=1 HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (r.status, r.body) == (307, b"")
        assert [k for k, _ in r.headers] == ["location", "date", "server", "content-length"]
        assert (r.header("location"), r.header("content-length")) == ("/b?x=1", "0")
        # The connection stays; a path with nothing escaped goes on normalized.
        r = c.request(b"GET /a//./b HTTP/1.1\r\nhost: x\r\n\r\n")
        assert r.status == 200
    assert [u.target for u in upstream.requests] == ["/a/b"]
    with RawConn(p.listener_port()) as c:
        # A body not read closes the connection after the redirect.
        r = c.request(b"POST /a%5cb HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
        assert (r.status, r.header("location"), r.header("connection")) == (307, "/a/b", "close")
    settled(p, {
        "http.ingress_http.downstream_rq_redirected_with_normalized_path": 2,
        "http.ingress_http.downstream_rq_3xx": 2,
        "http.ingress_http.downstream_rq_response_before_rq_complete": 1,
        "http.ingress_http.downstream_rq_rx_reset": 1,
        "http.ingress_http.rq_total": 1,
    })


def test_options_star_is_not_routed(make_proxy: Any, upstream: Any) -> None:
    p = path_proxy(make_proxy, upstream, normalize_path=True)
    with RawConn(p.listener_port()) as c:
        r = c.request(b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (r.status, r.header("connection")) == (404, None)
        assert c.request(b"GET http://x/a/../b?q HTTP/1.1\r\nhost: y\r\n\r\n").status == 200
    assert [u.target for u in upstream.requests] == ["/b?q"]
    settled(p, {"http.ingress_http.downstream_rq_non_relative_path": 1,
                "http.ingress_http.no_route": 0, "http.ingress_http.rq_total": 1})


def test_a_local_reply_before_the_body_resets_the_request(make_proxy: Any, upstream: Any) -> None:
    routes = [{"match": {"prefix": "/d"}, "direct_response": {"status": 200}}, route("/u", "up")]
    p = make_proxy(bootstrap(routes, [cluster("up", upstream.port)]))
    for path in ("/nomatch", "/d"):
        with RawConn(p.listener_port()) as c:
            r = c.request(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc".encode())
            assert r.header("connection") == "close"
    settled(p, {"http.ingress_http.downstream_rq_response_before_rq_complete": 2,
                "http.ingress_http.downstream_rq_rx_reset": 2})

