"""Route table behaviour seen on the wire: virtual host selection, route match kinds and order,
weighted clusters, rewrites, redirects, direct responses and the no-route reply.

Expected values come from Envoy 1.40 (docs/envoy-behaviour.md §1, §6; items the survey did not
record were checked against the `envoy` binary with PYPROXY_DATAPLANE_TARGET=envoy)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from tests.dataplane.conftest import RawConn, get, shape, shape_request, wait_stat
from tests.support.configs import ROUTER_TYPE, bootstrap, cluster, route


def direct(body: str, status: int = 200) -> dict[str, Any]:
    return {"status": status, "body": {"inline_string": body}}


def vhost(name: str, domains: list[str], routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A virtual host whose catch-all route answers with its own name."""
    routes = routes or [{"match": {"prefix": "/"}, "direct_response": direct(name)}]
    return {"name": name, "domains": domains, "routes": routes}


# --- virtual hosts ----------------------------------------------------------------------------

VHOSTS = [
    vhost("star", ["*"]),
    vhost("prefix", ["api.*"]),
    vhost("suffix", ["*.example.com"]),
    vhost("suffix-long", ["*.b.example.com"]),
    vhost("exact", ["api.example.com", "other.test"]),
]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "exact"),  # exact beats *.example.com and api.*
        ("other.test", "exact"),  # second domain of the same vhost
        ("API.Example.COM", "exact"),  # host matching ignores case
        ("www.example.com", "suffix"),
        ("x.b.example.com", "suffix-long"),  # longest suffix wins
        ("api.x.example.com", "suffix"),  # suffix wildcard beats prefix wildcard
        ("api.other.org", "prefix"),
        ("example.com", "star"),  # "*.example.com" needs a label before the dot
        ("unknown.org", "star"),
    ],
)
def test_virtual_host_domain_precedence(make_proxy: Any, host: str, expected: str) -> None:
    proxy = make_proxy(bootstrap([], [], virtual_hosts=VHOSTS))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/", host=host))
    assert (r.status_line, r.body) == ("HTTP/1.1 200 OK", expected.encode())


# --- route match kinds and order ----------------------------------------------------------------

ROUTES = [
    {"match": {"prefix": "/o"}, "direct_response": direct("o-first")},
    {"match": {"path": "/o/exact"}, "direct_response": direct("never")},  # shadowed by /o
    {"match": {"path": "/exact"}, "direct_response": direct("path")},
    {"match": {"path": "/Exact-CS"}, "direct_response": direct("path-cs")},
    {"match": {"safe_regex": {"regex": "/re/[0-9]+"}}, "direct_response": direct("regex")},
    {"match": {"prefix": "/CaseLess", "case_sensitive": False}, "direct_response": direct("ci")},
    {"match": {"prefix": "/Sens"}, "direct_response": direct("sensitive")},
    {"match": {"prefix": "/"}, "direct_response": direct("fallback")},
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/o/exact", "o-first"),  # first match in order wins, not the most specific
        ("/other", "o-first"),  # prefix is a plain string prefix, not a path segment
        ("/exact", "path"),
        ("/exact?x=1", "path"),  # the query is not part of the path
        ("/exact/", "fallback"),
        ("/exactly", "fallback"),
        ("/Exact-CS", "path-cs"),
        ("/exact-cs", "fallback"),  # case-sensitive by default
        ("/re/123", "regex"),
        ("/re/12?a=b", "regex"),
        ("/re/123x", "fallback"),  # safe_regex must match the whole path
        ("/re/", "fallback"),
        ("/caseless/x", "ci"),
        ("/CASELESS", "ci"),
        ("/sens", "fallback"),
        ("/Sens/x", "sensitive"),
    ],
)
def test_route_match_kinds_in_order(make_proxy: Any, path: str, expected: str) -> None:
    proxy = make_proxy(bootstrap(ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path))
    assert r.body == expected.encode()


def header_route(body: str, matcher: dict[str, Any], prefix: str = "/h") -> dict[str, Any]:
    return {"match": {"prefix": prefix, "headers": [matcher]}, "direct_response": direct(body)}


HEADER_ROUTES = [
    header_route("exact", {"name": "x-exact", "string_match": {"exact": "a"}}),
    header_route("exact-legacy", {"name": "x-exact-legacy", "exact_match": "a"}),
    header_route("prefix", {"name": "x-prefix", "string_match": {"prefix": "ab"}}),
    header_route("suffix", {"name": "x-suffix", "string_match": {"suffix": "yz"}}),
    header_route("present", {"name": "x-present", "present_match": True}),
    header_route("regex", {"name": "x-regex", "string_match": {"safe_regex": {"regex": "[0-9]+"}}}),
    header_route("contains", {"name": "x-contains", "string_match": {"contains": "mid"}}),
    header_route("ignore-case", {"name": "x-icase", "string_match": {"exact": "abc", "ignore_case": True}}),
    header_route("inverted", {"name": "x-not", "string_match": {"exact": "yes"}, "invert_match": True}, "/inv"),
    header_route("absent-inverted", {"name": "x-gone", "present_match": True, "invert_match": True}, "/absent"),
    header_route("absent", {"name": "x-gone", "present_match": False}, "/not-present"),
    header_route("inverted-absent", {"name": "x-gone", "present_match": False, "invert_match": True}, "/both"),
    header_route("missing-empty", {"name": "x-e", "string_match": {"exact": ""},
                                   "treat_missing_header_as_empty": True}, "/empty"),
    header_route("missing-inverted", {"name": "x-e", "string_match": {"exact": "yes"}, "invert_match": True,
                                      "treat_missing_header_as_empty": True}, "/minv"),
    {"match": {"prefix": "/"}, "direct_response": direct("none")},
]


@pytest.mark.parametrize(
    ("path", "header", "expected"),
    [
        ("/h", "x-exact: a", "exact"),
        ("/h", "x-exact: ab", "none"),
        ("/h", "X-Exact: a", "exact"),  # header names are case-insensitive
        ("/h", "x-exact-legacy: a", "exact-legacy"),
        ("/h", "x-prefix: abc", "prefix"),
        ("/h", "x-prefix: ba", "none"),
        ("/h", "x-suffix: xyz", "suffix"),
        ("/h", "x-suffix: yzx", "none"),
        ("/h", "x-present: anything", "present"),
        ("/h", "x-regex: 123", "regex"),
        ("/h", "x-regex: 12a", "none"),  # full match
        ("/h", "x-contains: xxmidxx", "contains"),
        ("/h", "x-contains: mi-d", "none"),
        ("/h", "x-icase: ABC", "ignore-case"),
        ("/h", "x-unrelated: a", "none"),
        ("/inv", "x-not: no", "inverted"),
        ("/inv", "x-not: yes", "none"),
        # An absent header fails every test but present_match, and invert_match does not turn
        # that into a match (route_diff, checked against Envoy 1.40).
        ("/inv", "x-unrelated: a", "none"),
        ("/absent", "x-unrelated: a", "absent-inverted"),
        ("/absent", "x-gone: 1", "none"),
        ("/not-present", "x-unrelated: a", "absent"),
        ("/not-present", "x-gone: 1", "none"),
        ("/both", "x-unrelated: a", "none"),
        ("/both", "x-gone: 1", "inverted-absent"),
        ("/empty", "x-unrelated: a", "missing-empty"),
        ("/empty", "x-e: ", "missing-empty"),
        ("/empty", "x-e: a", "none"),
        ("/minv", "x-unrelated: a", "missing-inverted"),
        ("/minv", "x-e: yes", "none"),
        ("/other", "x-exact: a", "none"),  # headers only narrow the path match
    ],
)
def test_header_matchers(make_proxy: Any, path: str, header: str, expected: str) -> None:
    proxy = make_proxy(bootstrap(HEADER_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, extra=header + "\r\n"))
    assert r.body == expected.encode()


def body_route(body: str, *headers: dict[str, Any]) -> dict[str, Any]:
    return {"match": {"prefix": "/", "headers": list(headers)}, "direct_response": direct(body)}


PSEUDO_ROUTES = [
    body_route("post", {"name": ":method", "string_match": {"exact": "POST"}}),
    body_route("path-query", {"name": ":path", "string_match": {"prefix": "/p?"}}),
    body_route("authority", {"name": ":authority", "string_match": {"exact": "a.com:80"}}),
    body_route("https", {"name": ":scheme", "string_match": {"exact": "https"}}),
    body_route("protocol", {"name": ":protocol", "present_match": True}),
    body_route("http", {"name": ":scheme", "string_match": {"exact": "http"}}, {"name": ":path", "exact_match": "/s"}),
    body_route("none"),
]


@pytest.mark.parametrize(
    ("request_line", "extra", "expected"),
    [
        ("POST /x", "content-length: 0", "post"),
        ("GET /p?x", "", "path-query"),
        ("GET /p", "", "none"),
        ("GET /x", "Host: a.com:80", "authority"),
        ("GET /x", "Host: A.com:80", "none"),  # the authority as sent: not lower-cased
        ("GET http://a.com:80/x", "", "authority"),  # an absolute target's authority
        ("GET /s", "", "http"),
        # :scheme: an absolute target's scheme, else one x-forwarded-proto of http or https
        # (any case), else http
        ("GET /x", "x-forwarded-proto: HTTPS", "https"),
        ("GET https://q/x", "x-forwarded-proto: http", "https"),
        ("GET HTTPS://q/s", "", "https"),
        ("GET http://q/s", "x-forwarded-proto: https", "http"),
        ("GET /s", "x-forwarded-proto: ftp", "http"),
        ("GET /s", "x-forwarded-proto: https\r\nx-forwarded-proto: https", "http"),
    ],
)
def test_header_matchers_on_pseudo_headers(make_proxy: Any, request_line: str, extra: str, expected: str) -> None:
    # An HTTP/1 request's request line and Host are Envoy's :method, :path, :authority and
    # :scheme; an HTTP/2-only pseudo-header such as :protocol is absent.
    proxy = make_proxy(bootstrap(PSEUDO_ROUTES, []))
    lines = ("" if extra.startswith("Host:") else "Host: example.com\r\n") + (extra + "\r\n" if extra else "")
    raw = f"{request_line} HTTP/1.1\r\n{lines}\r\n".encode()
    with RawConn(proxy.listener_port()) as c:
        assert c.request(raw).body == expected.encode()


EDITED_ROUTES = [
    {"match": {"prefix": "/xfp", "headers": [{"name": "x-forwarded-proto", "exact_match": "http"}]},
     "direct_response": direct("xfp")},
    {"match": {"prefix": "/rid", "headers": [{"name": "x-request-id", "present_match": True}]},
     "direct_response": direct("request-id")},
    {"match": {"prefix": "/te", "headers": [{"name": "te", "present_match": True}]}, "direct_response": direct("te")},
    {"match": {"prefix": "/conn", "headers": [{"name": "connection", "present_match": True}]},
     "direct_response": direct("connection")},
    {"match": {"prefix": "/ka", "headers": [{"name": "keep-alive", "present_match": True}]},
     "direct_response": direct("keep-alive")},
    {"match": {"prefix": "/"}, "direct_response": direct("none")},
]


@pytest.mark.parametrize(
    ("path", "extra", "expected"),
    [
        ("/xfp", "", "xfp"),  # added before routing
        ("/rid", "", "request-id"),  # generated before routing
        ("/te", "TE: trailers", "te"),
        ("/te", "TE: gzip", "none"),  # stripped before routing
        ("/conn", "Connection: keep-alive", "none"),
        ("/ka", "Keep-Alive: timeout=5", "none"),
    ],
)
def test_routes_match_the_headers_the_connection_manager_leaves(
    make_proxy: Any, path: str, extra: str, expected: str
) -> None:
    # Envoy's connection manager edits the request headers (hop-by-hop headers stripped,
    # x-forwarded-proto and x-request-id set) before the route is chosen.
    proxy = make_proxy(bootstrap(EDITED_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get(path, extra=extra + "\r\n" if extra else "")).body == expected.encode()


QUERY_ROUTES = [
    {"match": {"prefix": "/q", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]},
     "direct_response": direct("q-exact")},
    {"match": {"prefix": "/q", "query_parameters": [{"name": "flag", "present_match": True}]},
     "direct_response": direct("q-present")},
    {"match": {"prefix": "/q", "query_parameters": [{"name": "p", "string_match": {"prefix": "ab"}}]},
     "direct_response": direct("q-prefix")},
    {"match": {"prefix": "/"}, "direct_response": direct("none")},
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/q?debug=1", "q-exact"),
        ("/q?a=b&debug=1&c=d", "q-exact"),
        ("/q?debug=2", "none"),
        ("/q?debug=10", "none"),
        ("/q?flag=x", "q-present"),
        ("/q?x=flag", "none"),
        ("/q?p=abc", "q-prefix"),
        ("/q?p=cab", "none"),
        ("/q", "none"),
    ],
)
def test_query_parameter_matchers(make_proxy: Any, path: str, expected: str) -> None:
    proxy = make_proxy(bootstrap(QUERY_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path))
    assert r.body == expected.encode()


# --- weighted clusters --------------------------------------------------------------------------


def test_weighted_clusters_split_1_to_3_and_weight_0_never_chosen(make_proxy: Any, make_upstream: Any) -> None:
    a, b, zero = make_upstream(), make_upstream(), make_upstream()
    routes = [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1}, {"name": "b", "weight": 3}, {"name": "zero", "weight": 0}]}}}]
    proxy = make_proxy(bootstrap(routes, [cluster("a", a.port), cluster("b", b.port), cluster("zero", zero.port)]))
    n = 400
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.listener_port()}") as client:
        for _ in range(n):
            r = client.get("/w")
            assert r.status_code == 200
            seen[r.headers["x-upstream-port"]] += 1
    # Binomial(400, 1/4): mean 100, sd ~8.7; +-35 is four standard deviations.
    assert abs(seen[str(a.port)] - 100) <= 35, seen
    assert seen[str(a.port)] + seen[str(b.port)] == n, seen
    assert zero.requests == []


# --- rewrites and the expected-timeout header ---------------------------------------------------


@pytest.mark.parametrize(
    ("action", "path", "target", "host", "added"),
    [
        ({"prefix_rewrite": "/new/"}, "/old/a?x=1", "/new/a?x=1", "example.com",
         [("x-envoy-original-path", "/old/a?x=1")]),
        # the matched prefix is replaced as a plain string: "/old/" -> "/v2" gives "/v2users"
        ({"prefix_rewrite": "/v2"}, "/old/users", "/v2users", "example.com",
         [("x-envoy-original-path", "/old/users")]),
        # an empty prefix_rewrite rewrites nothing (envoy binary: no x-envoy-original-path either)
        ({"prefix_rewrite": ""}, "/old/a?x=1", "/old/a?x=1", "example.com", []),
        ({"host_rewrite_literal": "rewritten.internal"}, "/old/a", "/old/a", "rewritten.internal",
         [("x-envoy-original-host", "example.com")]),
        ({"prefix_rewrite": "/n/", "host_rewrite_literal": "h.internal"}, "/old/z?q", "/n/z?q", "h.internal",
         [("x-envoy-original-host", "example.com"), ("x-envoy-original-path", "/old/z?q")]),
    ],
)
def test_prefix_and_host_rewrite(
    make_proxy: Any, upstream: Any, action: dict[str, Any], path: str, target: str, host: str,
    added: list[tuple[str, str]],
) -> None:
    proxy = make_proxy(bootstrap([route("/old/", "up", **action)], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get(path)).status == 200
    (rec,) = upstream.requests
    assert rec.target == target
    # Observed with the envoy binary: host is rewritten in place, no x-forwarded-host
    # (append_x_forwarded_host is off), and x-envoy-original-host / x-envoy-original-path are
    # appended after x-envoy-expected-rq-timeout-ms, in that order.
    assert shape_request(rec.headers) == [
        ("host", host),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "<uuid>"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        *added,
    ]


@pytest.mark.parametrize("dns", [True, False], ids=["strict-dns", "static"])
def test_auto_host_rewrite_takes_the_endpoints_name(make_proxy: Any, upstream: Any, dns: bool) -> None:
    # auto_host_rewrite: the host becomes the chosen endpoint's DNS name (STRICT_DNS), without
    # its port; a STATIC endpoint has no name, and the host stays (checked with the envoy binary).
    if dns:
        c = cluster("up", upstream.port, type="STRICT_DNS", dns_lookup_family="V4_ONLY")
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "address"] = "localhost"
    else:
        c = cluster("up", upstream.port)
    proxy = make_proxy(bootstrap([route("/", "up", auto_host_rewrite=True)], [c]))
    with RawConn(proxy.listener_port()) as conn:
        assert conn.request(get("/a", host="example.com:8080")).status == 200
    (rec,) = upstream.requests
    added = [("x-envoy-original-host", "example.com:8080")] if dns else []
    assert shape_request(rec.headers) == [
        ("host", "localhost" if dns else "example.com:8080"), ("x-forwarded-proto", "http"),
        ("x-request-id", "<uuid>"), ("x-envoy-expected-rq-timeout-ms", "15000"), *added]


def test_auto_host_rewrite_follows_the_picked_endpoint(make_proxy: Any, upstream: Any) -> None:
    # Two STRICT_DNS endpoints whose names resolve to the same address and port are two hosts,
    # each with its own name: round robin alternates them, and so does the rewritten host
    # (checked with the envoy binary).
    c = cluster("up", upstream.port, type="STRICT_DNS", dns_lookup_family="V4_ONLY")
    lb = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    lb[0]["endpoint"]["address"]["socket_address"]["address"] = "localhost"
    second = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream.port}}}}
    lb.append(second)
    proxy = make_proxy(bootstrap([route("/", "up", auto_host_rewrite=True)], [c]))
    with RawConn(proxy.listener_port()) as conn:
        for _ in range(4):
            assert conn.request(get("/a")).status == 200
    hosts = [rq.header("host") for rq in upstream.requests]
    assert sorted(hosts) == ["127.0.0.1", "127.0.0.1", "localhost", "localhost"], hosts
    assert hosts[0] != hosts[1] and hosts[2] != hosts[3], hosts


def test_suppress_envoy_headers_adds_none_of_the_routers_headers(make_proxy: Any, upstream: Any) -> None:
    # The router's `suppress_envoy_headers`: the rewrites happen, but neither the expected
    # timeout nor the original host and path go upstream, and the client gets no
    # x-envoy-upstream-service-time (checked with the envoy binary).
    router = {"@type": ROUTER_TYPE, "suppress_envoy_headers": True}
    hcm = {"http_filters": [{"name": "envoy.filters.http.router", "typed_config": router}]}
    rt = route("/old/", "up", prefix_rewrite="/n/", host_rewrite_literal="h.internal")
    proxy = make_proxy(bootstrap([rt], [cluster("up", upstream.port)], hcm=hcm))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/old/z?q"))
    assert r.status == 200
    assert not [k for k, _ in r.headers if k.startswith("x-envoy-")], r.headers
    (rec,) = upstream.requests
    assert rec.target == "/n/z?q"
    assert shape_request(rec.headers) == [("host", "h.internal"), ("x-forwarded-proto", "http"),
                                          ("x-request-id", "<uuid>")]


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(None, "15000"), ("1s", "1000"), ("2.5s", "2500"), ("0.25s", "250"), ("0s", None)],
)
def test_route_timeout_sets_expected_rq_timeout_header(
    make_proxy: Any, upstream: Any, timeout: str | None, expected: str | None
) -> None:
    action = {} if timeout is None else {"timeout": timeout}
    proxy = make_proxy(bootstrap([route("/", "up", **action)], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/t")).status == 200
    # A timeout of 0 disables the route timeout, and Envoy then sends no header at all.
    assert upstream.requests[0].header_all("x-envoy-expected-rq-timeout-ms") == ([expected] if expected else [])


# --- redirects ----------------------------------------------------------------------------------

REDIRECT_ROUTES = [
    {"match": {"prefix": "/redir-https"}, "redirect": {"https_redirect": True}},
    {"match": {"prefix": "/redir-host-path"}, "redirect": {"host_redirect": "h.example", "path_redirect": "/p"}},
    {"match": {"prefix": "/redir-host"}, "redirect": {"host_redirect": "example.com"}},
    {"match": {"prefix": "/redir-strip"}, "redirect": {"path_redirect": "/new", "strip_query": True}},
    {"match": {"prefix": "/redir-path"}, "redirect": {"path_redirect": "/new"}},
    {"match": {"prefix": "/redir-301"}, "redirect": {"path_redirect": "/new", "response_code": "PERMANENT_REDIRECT"}},
    {"match": {"prefix": "/redir-302"}, "redirect": {"path_redirect": "/new", "response_code": "FOUND"}},
    {"match": {"prefix": "/redir-303"}, "redirect": {"path_redirect": "/new", "response_code": "SEE_OTHER"}},
    {"match": {"prefix": "/redir-307"}, "redirect": {"path_redirect": "/new", "response_code": "TEMPORARY_REDIRECT"}},
    {"match": {"prefix": "/redir-prefix/"}, "redirect": {"prefix_rewrite": "/other/"}},
]


@pytest.mark.parametrize(
    ("path", "host", "status_line", "location"),
    [
        # survey §6l .. §6l5
        ("/redir-https/a?b=1", "example.com", "HTTP/1.1 301 Moved Permanently", "https://example.com/redir-https/a?b=1"),
        ("/redir-https/a?b=1", "example.com:80", "HTTP/1.1 301 Moved Permanently", "https://example.com/redir-https/a?b=1"),
        ("/redir-host/a?b=1", "orig.example:8080", "HTTP/1.1 301 Moved Permanently", "http://example.com/redir-host/a?b=1"),
        ("/redir-path/a?b=1", "example.com", "HTTP/1.1 301 Moved Permanently", "http://example.com/new?b=1"),
        # envoy binary: the location keeps the host's case
        ("/redir-path/a?b=1", "Example.COM", "HTTP/1.1 301 Moved Permanently", "http://Example.COM/new?b=1"),
        ("/redir-https", "Example.COM:80", "HTTP/1.1 301 Moved Permanently", "https://Example.COM/redir-https"),
        ("/redir-301", "example.com", "HTTP/1.1 308 Permanent Redirect", "http://example.com/new"),
        # checked against the envoy binary
        ("/redir-strip/a?b=1", "example.com", "HTTP/1.1 301 Moved Permanently", "http://example.com/new"),
        ("/redir-host-path/a?b=1", "example.com", "HTTP/1.1 301 Moved Permanently", "http://h.example/p?b=1"),
        ("/redir-302", "example.com", "HTTP/1.1 302 Found", "http://example.com/new"),
        ("/redir-303", "example.com", "HTTP/1.1 303 See Other", "http://example.com/new"),
        ("/redir-307?x=1", "example.com", "HTTP/1.1 307 Temporary Redirect", "http://example.com/new?x=1"),
        ("/redir-prefix/a/b?c=d", "example.com", "HTTP/1.1 301 Moved Permanently", "http://example.com/other/a/b?c=d"),
    ],
)
def test_redirect(make_proxy: Any, path: str, host: str, status_line: str, location: str) -> None:
    proxy = make_proxy(bootstrap(REDIRECT_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, host=host))
        assert (r.status_line, shape(r.headers), r.body) == (
            status_line,
            [("location", location), ("date", "<date>"), ("server", "envoy"), ("content-length", "0")],
            b"",
        )
        assert c.open_after(0.3)


PORT_SCHEME_ROUTES = [
    {"match": {"prefix": "/to-https-port"}, "redirect": {"https_redirect": True, "port_redirect": 8443}},
    {"match": {"prefix": "/to-port"}, "redirect": {"port_redirect": 8443}},
    {"match": {"prefix": "/to-host-port"}, "redirect": {"host_redirect": "h.example:1", "port_redirect": 8443}},
    {"match": {"prefix": "/to-http"}, "redirect": {"scheme_redirect": "http"}},
    {"match": {"prefix": "/to-ftp"}, "redirect": {"scheme_redirect": "ftp"}},
    {"match": {"prefix": "/to-bare-path"}, "redirect": {"path_redirect": "p"}},
    {"match": {"prefix": "/to-empty-path"}, "redirect": {"path_redirect": ""}},
    {"match": {"prefix": "/to-empty"}, "redirect": {"host_redirect": "", "port_redirect": 0, "scheme_redirect": "",
                                                    "prefix_rewrite": ""}},
    {"match": {"prefix": "/to-same"}, "redirect": {"host_redirect": "h.example"}},
]


@pytest.mark.parametrize(
    ("path", "host", "extra", "location"),
    [
        # A port_redirect replaces the request's port, and is appended to a host_redirect as is.
        ("/to-port/a?b=1", "example.com:8080", "", "http://example.com:8443/to-port/a?b=1"),
        ("/to-port", "example.com", "", "http://example.com:8443/to-port"),
        ("/to-port", "[::1]:80", "", "http://[::1]:8443/to-port"),
        ("/to-host-port", "example.com:8080", "", "http://h.example:1:8443/to-host-port"),
        ("/to-https-port", "example.com:80", "", "https://example.com:8443/to-https-port"),
        # Without a scheme redirect the location keeps the request's scheme (a kept
        # x-forwarded-proto here: the listener is not an edge one).
        ("/to-same", "example.com", "x-forwarded-proto: https\r\n", "https://h.example/to-same"),
        # The port is dropped when it is the default of the request's protocol
        # (x-forwarded-proto) and the scheme changes, whatever the new scheme is.
        ("/to-http", "example.com:443", "x-forwarded-proto: https\r\n", "http://example.com/to-http"),
        ("/to-http", "example.com:80", "x-forwarded-proto: https\r\n", "http://example.com:80/to-http"),
        ("/to-http", "example.com:443", "", "http://example.com:443/to-http"),
        ("/to-ftp", "example.com:80", "", "ftp://example.com/to-ftp"),
        ("/to-ftp", "example.com:8080", "", "ftp://example.com:8080/to-ftp"),
        ("/to-ftp", "[::1]:80", "", "ftp://[::1]/to-ftp"),
        ("/to-ftp", "[::1]", "", "ftp://[::1]/to-ftp"),
        # A path without its leading slash gets one.
        ("/to-bare-path?q=1", "example.com", "", "http://example.com/p?q=1"),
        # Empty strings and a port of 0 change nothing.
        ("/to-empty/x?q=1", "example.com:81", "", "http://example.com:81/to-empty/x?q=1"),
        ("/to-empty-path/x?q=1", "example.com", "", "http://example.com/to-empty-path/x?q=1"),
    ],
)
def test_redirect_port_and_scheme(make_proxy: Any, path: str, host: str, extra: str, location: str) -> None:
    proxy = make_proxy(bootstrap(PORT_SCHEME_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, host=host, extra=extra))
        assert (r.status, dict(r.headers).get("location")) == (301, location)


def test_redirect_is_counted_as_direct_response(make_proxy: Any) -> None:
    # Envoy counts a redirect in rq_direct_response; rq_redirect is for internal redirects only
    # (observed with the envoy binary: rq_direct_response 1, rq_redirect 0).
    proxy = make_proxy(bootstrap(REDIRECT_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/redir-path")).status == 301
    wait_stat(proxy, "http.ingress_http.rq_direct_response", 1)
    assert proxy.stats().get("http.ingress_http.rq_redirect", 0) == 0


# --- direct responses ---------------------------------------------------------------------------

DIRECT_ROUTES = [
    {"match": {"prefix": "/direct-empty"}, "direct_response": {"status": 200}},
    {"match": {"prefix": "/direct503"}, "direct_response": direct("down", 503)},
    {"match": {"prefix": "/direct418"}, "direct_response": direct("teapot", 418)},
    {"match": {"prefix": "/direct"}, "direct_response": direct("hello direct")},
]

BODYLESS = [("date", "<date>"), ("server", "envoy"), ("content-length", "0")]


def bodyful(n: int) -> list[tuple[str, str]]:
    return [("content-length", str(n)), ("content-type", "text/plain"), ("date", "<date>"), ("server", "envoy")]


@pytest.mark.parametrize(
    ("method", "path", "status_line", "headers", "body"),
    [
        ("GET", "/direct", "HTTP/1.1 200 OK", bodyful(12), b"hello direct"),  # survey §6k
        ("GET", "/direct-empty", "HTTP/1.1 200 OK", BODYLESS, b""),  # §6k2
        ("GET", "/direct503", "HTTP/1.1 503 Service Unavailable", bodyful(4), b"down"),  # §6k3
        ("HEAD", "/direct", "HTTP/1.1 200 OK", bodyful(12), b""),  # §6k4
        # Envoy's reason table has no entry for 418: the status line says "Unknown" (envoy binary)
        ("GET", "/direct418", "HTTP/1.1 418 Unknown", bodyful(6), b"teapot"),
    ],
)
def test_direct_response(
    make_proxy: Any, method: str, path: str, status_line: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    proxy = make_proxy(bootstrap(DIRECT_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, method=method), head=method == "HEAD")
        assert (r.status_line, shape(r.headers), r.body) == (status_line, headers, body)
        # the connection stays usable after a direct response
        assert c.request(get("/direct")).body == b"hello direct"


LOCATION_ROUTES = [
    {"match": {"prefix": "/d201"}, "direct_response": direct("made", 201)},
    {"match": {"prefix": "/d301"}, "direct_response": {"status": 301}},
    {"match": {"prefix": "/d399"}, "direct_response": direct("x", 399)},
    {"match": {"prefix": "/d200"}, "direct_response": direct("ok")},
    {"match": {"prefix": "/d400"}, "direct_response": {"status": 400}},
    {"match": {"prefix": "/d204"}, "direct_response": {"status": 204}},
    {"match": {"prefix": "/d304"}, "direct_response": {"status": 304}},
    {"match": {"prefix": "/d425"}, "direct_response": {"status": 425}},
    {"match": {"prefix": "/d599"}, "direct_response": {"status": 599}},
]


@pytest.mark.parametrize(
    ("path", "host", "extra", "headers"),
    [
        # Envoy (RFC 9110 section 10.2.2): a direct response of 201 or 3xx says where the request
        # went: the request's own URL, built as a redirect's location with nothing changed.
        ("/d201/a?b=1", "example.com", "",
         [("location", "http://example.com/d201/a?b=1"), *bodyful(4)]),
        ("/d301", "Example.com:80", "", [("location", "http://Example.com:80/d301"), *BODYLESS]),
        ("/d399?q", "h.example", "x-forwarded-proto: https\r\n",
         [("location", "https://h.example/d399?q"), *bodyful(1)]),
        ("/d200", "example.com", "", bodyful(2)),
    ],
)
def test_direct_response_location(
    make_proxy: Any, path: str, host: str, extra: str, headers: list[tuple[str, str]]
) -> None:
    proxy = make_proxy(bootstrap(LOCATION_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, host=host, extra=extra))
        assert shape(r.headers) == headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("path", "status_line", "headers"),
    [
        # No body by definition: no content-length, and no chunked quirk for HEAD (envoy binary).
        ("/d204", "HTTP/1.1 204 No Content", [("date", "<date>"), ("server", "envoy")]),
        ("/d304", "HTTP/1.1 304 Not Modified",
         [("location", "http://example.com/d304"), ("date", "<date>"), ("server", "envoy")]),
        # Envoy's reason phrases for two codes outside the usual table.
        ("/d425", "HTTP/1.1 425 Too Early", BODYLESS),
        ("/d599", "HTTP/1.1 599 Last Unassigned Server Error Code", BODYLESS),
    ],
)
def test_direct_response_without_body_framing(
    make_proxy: Any, method: str, path: str, status_line: str, headers: list[tuple[str, str]]
) -> None:
    if method == "HEAD" and headers is BODYLESS:
        headers = [*BODYLESS[:2], ("transfer-encoding", "chunked")]
    proxy = make_proxy(bootstrap(LOCATION_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, method=method), head=True)
        assert (r.status_line, shape(r.headers)) == (status_line, headers)
        # the next response starts right after the head: nothing was framed as a body
        assert c.request(get("/d200")).body == b"ok"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_direct_response_400_closes_the_connection(make_proxy: Any, method: str) -> None:
    # Envoy's connection manager closes an HTTP/1 connection after a local 400, a configured
    # direct response too (envoy binary); an upstream's 400 leaves it open.
    proxy = make_proxy(bootstrap(LOCATION_ROUTES, []))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/d400", method=method), head=method == "HEAD")
        framing = ("content-length", "0") if method == "GET" else ("transfer-encoding", "chunked")
        assert (r.status_line, shape(r.headers)) == (
            "HTTP/1.1 400 Bad Request",
            [("date", "<date>"), ("server", "envoy"), ("connection", "close"), framing],
        )
        assert c.closed_within(3)


# --- no route -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("nomatch.example", "/"),  # vhost matched, no route in it (survey §6a)
        ("unknown.example", "/never"),  # no vhost at all
    ],
)
def test_no_route_is_404_and_connection_stays_usable(make_proxy: Any, upstream: Any, host: str, path: str) -> None:
    vhosts = [
        {"name": "nomatch", "domains": ["nomatch.example"], "routes": [route("/never", "up")]},
        {"name": "main", "domains": ["example.com"], "routes": [route("/", "up")]},
    ]
    proxy = make_proxy(bootstrap([], [cluster("up", upstream.port)], virtual_hosts=vhosts))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get(path, host=host))
        assert (r.status_line, shape(r.headers), r.body) == ("HTTP/1.1 404 Not Found", BODYLESS, b"")
        r2 = c.request(get("/x"))  # survey §6m: the next request on the same connection is served
        assert r2.status_line == "HTTP/1.1 200 OK"
    assert [rec.target for rec in upstream.requests] == ["/x"]
    wait_stat(proxy, "http.ingress_http.no_route", 1)


def test_no_route_head_is_404_with_chunked_and_no_body(make_proxy: Any) -> None:
    # Envoy quirk (survey §6a2): a HEAD to no route gets transfer-encoding: chunked, no length.
    vhosts = [{"name": "nomatch", "domains": ["nomatch.example"], "routes": []}]
    proxy = make_proxy(bootstrap([], [], virtual_hosts=vhosts))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/", host="nomatch.example", method="HEAD"), head=True)
        assert (r.status_line, shape(r.headers)) == (
            "HTTP/1.1 404 Not Found",
            [("date", "<date>"), ("server", "envoy"), ("transfer-encoding", "chunked")],
        )
        assert c.open_after(0.3)
        assert c.buf == b""  # nothing after the header block


# --- prefix_rewrite on path and regex routes (review finding, session 11) ------------------------


def test_prefix_rewrite_replaces_the_whole_path_of_path_and_regex_routes(make_proxy: Any, upstream: Any) -> None:
    # envoy binary: for a `path` or `safe_regex` match the "prefix" is the whole path (the query
    # stays), forwarded or redirected.
    routes = [
        {"match": {"path": "/fwd-path"}, "route": {"cluster": "up", "prefix_rewrite": "/p"}},
        {"match": {"safe_regex": {"regex": "/fwd-re/[a-z]+"}}, "route": {"cluster": "up", "prefix_rewrite": "/r"}},
        {"match": {"path": "/red-path"}, "redirect": {"prefix_rewrite": "/bar"}},
        {"match": {"safe_regex": {"regex": "/red-re/[a-z]+"}}, "redirect": {"prefix_rewrite": "/baz"}},
    ]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/fwd-path?x=1")).status == 200
        assert c.request(get("/fwd-re/abc?y")).status == 200
        assert dict(c.request(get("/red-path?x")).headers)["location"] == "http://example.com/bar?x"
        assert dict(c.request(get("/red-re/zz")).headers)["location"] == "http://example.com/baz"
    assert [r.target for r in upstream.requests] == ["/p?x=1", "/r?y"]


def test_direct_204_and_304_send_no_configured_body(make_proxy: Any) -> None:
    # A difference kept on purpose (docs/envoy-behaviour.md): Envoy 1.40 sends the configured
    # body with its content-length after a 204 or 304, and a client reads it as the start of the
    # next response. pyproxy sends neither.
    routes = [
        {"match": {"prefix": "/d204"}, "direct_response": direct("x", 204)},
        {"match": {"prefix": "/d304"}, "direct_response": direct("yy", 304)},
        {"match": {"prefix": "/"}, "direct_response": direct("next")},
    ]
    proxy = make_proxy(bootstrap(routes, []))
    with RawConn(proxy.listener_port()) as c:
        for path, names in (("/d204", ["date", "server"]), ("/d304", ["location", "date", "server"])):
            r = c.request(get(path), head=True)
            assert [k for k, _ in r.headers] == names
            assert c.request(get("/")).body == b"next"


def test_upgrade_request_routes_on_its_connection_and_upgrade_headers(make_proxy: Any, upstream: Any) -> None:
    # envoy binary: the connection manager keeps an upgrade request's `connection` and
    # `upgrade`, so a route can match them (and then refuses the upgrade: 403, not 404).
    routes = [{"match": {"prefix": "/", "headers": [{"name": "upgrade", "string_match": {"exact": "websocket"}}]},
               "route": {"cluster": "up"}}]
    proxy = make_proxy(bootstrap(routes, [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        r = c.request(get("/", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"))
        assert r.status_line == "HTTP/1.1 403 Forbidden"
    with RawConn(proxy.listener_port()) as c:
        assert c.request(get("/", extra="Upgrade: websocket\r\n")).status == 404  # not an upgrade
    assert upstream.requests == []


@pytest.mark.parametrize("kind", ["websocket", "foo"])
def test_an_upgrade_a_route_refuses_is_counted(make_proxy: Any, upstream: Any, kind: str) -> None:
    # No upgrade_configs: 403 once a route matched, counted under Envoy's websocket name.
    p = make_proxy(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    with RawConn(p.listener_port()) as c:
        r = c.request(f"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: {kind}\r\n\r\n".encode())
        assert (r.status, r.header("connection")) == (403, "close")
    wait_stat(p, "http.ingress_http.downstream_rq_ws_on_non_ws_route", 1)


# (host sent, port stripped under strip_any_host_port, under strip_matching_host_port); PORT is
# the listener's. Observed with the envoy binary.
HOST_PORTS = [
    ("example.com:80", "example.com", "example.com:80"),
    ("example.com:PORT", "example.com", "example.com"),
    ("[::1]:80", "[::1]", "[::1]:80"),
    ("[::1]", "[::1]", "[::1]"),
    ("a:b:c", "a:b:c", "a:b:c"),
    ("x:", "x:", "x:"),
    ("x:0080", "x", "x:0080"),
    (":80", "", ":80"),
    ("example.com:99999", "example.com", "example.com:99999"),
]


@pytest.mark.parametrize("mode", ["strip_any_host_port", "strip_matching_host_port"])
def test_host_port_stripped_before_routing(make_proxy: Any, upstream: Any, mode: str) -> None:
    exact = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "exact"}}}
    vhosts = [{"name": "exact", "domains": ["example.com"], "routes": [exact]},
              {"name": "any", "domains": ["*"], "routes": [route("/", "up")]}]
    p = make_proxy(bootstrap([], [cluster("up", upstream.port)], hcm={mode: True}, virtual_hosts=vhosts))
    port = str(p.listener_port())
    for sent, any_port, matching in HOST_PORTS:
        sent = sent.replace("PORT", port)
        expected = any_port if mode == "strip_any_host_port" else matching.replace("PORT", port)
        before = len(upstream.requests)
        with RawConn(p.listener_port()) as c:
            r = c.request(f"GET /x HTTP/1.1\r\nhost: {sent}\r\n\r\n".encode())
        assert r.status == 200, sent
        if expected == "example.com":
            assert r.body == b"exact", sent
        else:
            assert upstream.requests[before:] and upstream.requests[-1].header("host") == expected, sent


# --- hash_policy cookies a RING_HASH cluster makes up (envoy binary, session 17) ----------------


@pytest.mark.parametrize(
    ("cookie", "pattern"),
    [({"name": "sticky", "ttl": "3600s", "path": "/app"},
      r'sticky="[0-9a-f]{16}"; Max-Age=3600; Path=/app; HttpOnly'),
     ({"name": "s2", "ttl": "0s", "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "Secure"}]},
      r's2="[0-9a-f]{16}"; SameSite=Lax; Secure; HttpOnly')],
    ids=["max-age-path", "session-attributes"],
)
def test_a_hash_cookie_is_made_up_and_then_sticks(make_proxy: Any, make_upstream: Any, cookie: Any,
                                                   pattern: str) -> None:
    import re

    ups = [make_upstream() for _ in range(3)]
    c = cluster("up", *(u.port for u in ups), lb_policy="RING_HASH")
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up", "hash_policy": [{"cookie": cookie}]},
               "response_headers_to_add": [{"header": {"key": "x-edit", "value": "1"}}]}]
    p = make_proxy(bootstrap(routes, [c]))
    with RawConn(p.listener_port()) as conn:
        r = conn.request(get("/"))
        # The router's set-cookie comes before the route's edits.
        names = [k for k, _ in r.headers]
        assert names[names.index("set-cookie") - 1:names.index("set-cookie") + 2] == [
            "x-envoy-upstream-service-time", "set-cookie", "x-edit"]
        set_cookie = r.header("set-cookie")
        assert re.fullmatch(pattern, set_cookie), set_cookie
        host = r.header("x-upstream-port")
        value = set_cookie.split(";")[0].split("=", 1)[1].strip('"')
        # The same connection, still without the cookie: the same one again.
        assert conn.request(get("/")).header("set-cookie") == set_cookie
    name = cookie["name"]
    # With the cookie, from any connection: its host, and no new cookie.
    for _ in range(5):
        with RawConn(p.listener_port()) as conn:
            r = conn.request(get("/", extra=f"cookie: a=1; {name}={value}\r\n"))
            assert (r.header("x-upstream-port"), r.header("set-cookie")) == (host, None)


# --- regex_rewrite (envoy binary, session 17) ----------------------------------------------------

REWRITES = [
    ("/service", r"^/service/([^/]+)(/.*)$", r"\2/instance/\1"),
    ("/foo", "o", "0"),
    ("/ab", "^/(a)(b)?", r"/[\0|\1|\2|\\]"),
    ("/xx", "x*", "-"),
    ("/q", "^/q$", "/Q"),
    ("/empty", "^/empty$", ""),
    ("/nomatch", "zzz", "y"),
    ("/dollar", "^/dollar", "/$1"),
]


@pytest.mark.parametrize(
    ("target", "sent", "original"),
    [
        ("/service/foo/v1/api?x=/service/y", "/v1/api/instance/foo?x=/service/y", "/service/foo/v1/api?x=/service/y"),
        ("/foo/boo?o=o", "/f00/b00?o=o", "/foo/boo?o=o"),  # every match; the query untouched
        ("/ab/c", "/[/ab|a|b|\\]/c", "/ab/c"),  # \0 the whole match, \\ a backslash
        ("/xxyx", "-/-y-", "/xxyx"),  # empty matches too, as RE2's GlobalReplace
        ("/q?a=1", "/Q?a=1", "/q?a=1"),
        ("/empty?z", "/empty?z", None),  # an empty result leaves the path alone
        ("/nomatch", "/nomatch", "/nomatch"),
        ("/dollar/x", "/$1/x", "/dollar/x"),  # a `$` is a `$`
    ],
    ids=["groups", "global", "whole-and-backslash", "empty-matches", "query", "empty-result", "no-match",
         "dollar"],
)
def test_regex_rewrite(make_proxy: Any, make_canned: Any, target: str, sent: str, original: str | None) -> None:
    up = make_canned({"*": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"})
    routes = [{"match": {"prefix": prefix},
               "route": {"cluster": "up", "regex_rewrite": {"pattern": {"regex": rx}, "substitution": sub}}}
              for prefix, rx, sub in REWRITES]
    p = make_proxy(bootstrap(routes, [cluster("up", up.port)]))
    with RawConn(p.listener_port()) as c:
        assert c.request(get(target)).status == 200
    (head,) = up.heads
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == f"GET {sent} HTTP/1.1"
    got = [v.split(": ", 1)[1] for v in lines if v.startswith("x-envoy-original-path:")]
    assert got == ([original] if original else [])


# --- a virtual host's require_tls (envoy binary, session 17) -------------------------------------


@pytest.mark.parametrize("edge", [False, True], ids=["trusts-xfp", "edge"])
def test_require_tls_redirects_requests_in_the_clear(make_proxy: Any, upstream: Any, edge: bool) -> None:
    vhosts = [{"name": "v", "domains": ["*"], "require_tls": "ALL",
               "routes": [route("/api", "up")],
               "response_headers_to_add": [{"header": {"key": "x-vh", "value": "1"}}]}]
    hcm = {"use_remote_address": edge}
    p = make_proxy(bootstrap([], [cluster("up", upstream.port)], virtual_hosts=vhosts, hcm=hcm))
    with RawConn(p.listener_port()) as c:
        # Any path, a route or not; the host as sent, its port too; the query kept; no edits;
        # the connection stays.
        for target, host in (("/api/a?b=1", "example.com:8080"), ("/none", "h")):
            r = c.request(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert (r.status_line, shape(r.headers), r.body) == (
                "HTTP/1.1 301 Moved Permanently",
                [("location", f"https://{host}{target}"), ("date", "<date>"), ("server", "envoy"),
                 ("content-length", "0")], b"")
        # Over TLS as x-forwarded-proto says (kept only off the edge): served.
        r = c.request(get("/api/x", extra="x-forwarded-proto: https\r\n"))
        assert r.status == (301 if edge else 200)
    wait_stat(p, "http.ingress_http.rq_direct_response", 3 if edge else 2)
    assert len(upstream.requests) == (0 if edge else 1)


def test_a_direct_response_body_from_a_file_or_bytes(make_proxy: Any, tmp_path: Any) -> None:
    # Read when the config is loaded, as Envoy does.
    page = tmp_path / "page.html"
    page.write_text("<h1>maintenance</h1>\n")
    routes = [{"match": {"prefix": "/file"}, "direct_response": {"status": 503, "body": {"filename": str(page)}}},
              {"match": {"prefix": "/bytes"}, "direct_response": {"status": 200, "body": {"inline_bytes": "aGk="}}}]
    p = make_proxy(bootstrap(routes, []))
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/file"))
        assert (r.status, r.body, r.header("content-type")) == (503, b"<h1>maintenance</h1>\n", "text/plain")
        r = c.request(get("/bytes"))
        assert (r.status, r.body) == (200, b"hi")


# --- cluster_header (envoy binary, session 17) ---------------------------------------------------


def test_cluster_header_names_the_cluster(make_proxy: Any, make_upstream: Any) -> None:
    a, b = make_upstream(), make_upstream()
    routes = [{"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}]
    p = make_proxy(bootstrap(routes, [cluster("a", a.port), cluster("b", b.port)]))
    with RawConn(p.listener_port()) as c:
        for extra, port in (("x-cluster: a\r\n", a.port), ("x-cluster: b\r\n", b.port),
                            ("x-cluster: a\r\nx-cluster: b\r\n", a.port)):  # the first value
            r = c.request(get("/", extra=extra))
            assert (r.status, r.header("x-upstream-port")) == (200, str(port))
        # No header, no such cluster (names are exact): 503, no body; the connection stays.
        for extra in ("", "x-cluster: nope\r\n", "x-cluster: A\r\n"):
            r = c.request(get("/", extra=extra))
            assert (r.status, r.body, r.header("connection")) == (503, b"", None)
    wait_stat(p, "http.ingress_http.no_cluster", 3)
