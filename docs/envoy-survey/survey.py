"""Run the full Envoy wire survey; prints markdown to stdout."""
import sys

import harness as H
from harness import case

e = H.Env()
P = e.ports
EXT = H.EXT_IP
BASIC = b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test/1.0\r\nAccept: */*\r\n\r\n"
def sec(t): print("\n## " + t + "\n", flush=True)

only = sys.argv[1:]
def want(n): return not only or n in only

if want("1"):
    sec("1 plain GET")
    case("1a default listener, client 127.0.0.1", P["default"], BASIC)
    case("1b default listener, client 192.0.2.2 (external)", P["default"], BASIC, src=EXT, dst=EXT)
    case("1c header name case from client", P["default"], b"GET / HTTP/1.1\r\nHOST: example.com\r\nX-Mixed-CASE: Value\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n")

if want("2"):
    sec("2 XFF / request-id / x-envoy-*")
    reqs = [
        ("no XFF", b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("XFF 1.2.3.4", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-forwarded-for: 1.2.3.4\r\n\r\n"),
        ("XFF + x-request-id + x-envoy-* + XFP https", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-forwarded-for: 1.2.3.4, 5.6.7.8\r\n"
            b"x-request-id: my-id-123\r\nx-envoy-retry-on: 5xx\r\nx-envoy-upstream-rq-timeout-ms: 2500\r\n"
            b"x-envoy-internal: true\r\nx-envoy-external-address: 9.9.9.9\r\nx-envoy-foo: bar\r\nx-forwarded-proto: https\r\n\r\n"),
    ]
    for mode in ["default", "ura", "hops", "skip", "skipnoura"]:
        for srcname, src in [("127.0.0.1", None), ("192.0.2.2", EXT)]:
            for rname, r in reqs:
                case("2 listener=%s client=%s req=%s" % (mode, srcname, rname), P[mode], r,
                     idle=0.3, settle=0.1, src=src, dst=(EXT if src else "127.0.0.1"))

if want("2b"):
    sec("2b which x-envoy-* request headers survive")
    allenv = (b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-envoy-retry-on: 5xx\r\nx-envoy-retry-grpc-on: cancelled\r\n"
        b"x-envoy-max-retries: 3\r\nx-envoy-retriable-status-codes: 500\r\nx-envoy-retriable-header-names: x-a\r\n"
        b"x-envoy-upstream-rq-timeout-ms: 2500\r\nx-envoy-upstream-rq-per-try-timeout-ms: 100\r\n"
        b"x-envoy-hedge-on-per-try-timeout: true\r\nx-envoy-expected-rq-timeout-ms: 777\r\n"
        b"x-envoy-upstream-alt-stat-name: alt\r\nx-envoy-internal: true\r\nx-envoy-external-address: 9.9.9.9\r\n"
        b"x-envoy-downstream-service-cluster: dsc\r\nx-envoy-downstream-service-node: dsn\r\n"
        b"x-envoy-original-path: /orig\r\nx-envoy-decorator-operation: op\r\nx-envoy-force-trace: true\r\n"
        b"x-envoy-ip-tags: tag\r\nx-envoy-attempt-count: 5\r\nx-envoy-is-timeout-retry: true\r\n"
        b"x-envoy-upstream-service-time: 9\r\nx-envoy-foo: bar\r\n\r\n")
    singles = [
        ("x-envoy-upstream-rq-timeout-ms: 2500", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-envoy-upstream-rq-timeout-ms: 2500\r\n\r\n"),
        ("x-request-id only", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-request-id: my-id-123\r\n\r\n"),
        ("x-forwarded-proto: https only", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-forwarded-proto: https\r\n\r\n"),
        ("XFF 10.0.0.1 (private)", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"),
        ("x-envoy-internal: true only", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-envoy-internal: true\r\n\r\n"),
    ]
    for mode in ["default", "ura", "uraint"]:
        for srcname, src in [("127.0.0.1", None), ("192.0.2.2", EXT)]:
            for rname, r in [("all x-envoy-* headers", allenv)] + singles:
                case("2b listener=%s client=%s req=%s" % (mode, srcname, rname), P[mode], r,
                     idle=0.3, settle=0.1, src=src, dst=(EXT if src else "127.0.0.1"))

if want("3"):
    sec("3 hop-by-hop")
    case("3a hop-by-hop set", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, x-foo\r\n"
         b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nx-foo: bar\r\nx-bar: baz\r\n\r\n")
    case("3b Upgrade: foo + Connection: upgrade", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
    case("3c Upgrade: foo without Connection", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nUpgrade: foo\r\n\r\n")
    case("3d Upgrade: websocket + Connection: Upgrade (no upgrade_configs)", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    case("3e TE: gzip, trailers", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nTE: gzip, trailers\r\n\r\n")
    case("3f TE: gzip", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nTE: gzip\r\n\r\n")
    case("3g Connection: close from client", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    case("3h Connection: close + x-foo, x-foo header", P["default"], b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: close, x-foo\r\nx-foo: bar\r\n\r\n")

if want("4"):
    sec("4 request bodies")
    case("4a Content-Length body", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world")
    case("4b chunked body (3,5 + extension)", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\n\r\n")
    case("4c chunked body with trailers", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n")
    case("4d chunked body sent in two writes", P["default"], None, steps=[
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", 0.5),
        (b"5\r\ndefgh\r\n0\r\n\r\n", 0)])
    case("4e Expect: 100-continue (default listener), body sent after 0.5s pause", P["default"], None, steps=[
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", 0.5),
        (b"hello", 0)])
    case("4f Expect: 100-continue (proxy_100_continue: true), body after 0.5s", P["p100"], None, steps=[
        (b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", 0.5),
        (b"hello", 0)])
    case("4g Expect: 100-continue sent together with body", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
    case("4h Expect: foo", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: foo\r\n\r\nhello")
    case("4i HTTP/1.0 without Host", P["default"], b"GET /ten HTTP/1.0\r\nUser-Agent: t\r\n\r\n")
    case("4j HTTP/1.0 with Host", P["default"], b"GET /ten HTTP/1.0\r\nHost: example.com\r\n\r\n")
    case("4k HTTP/1.0 keep-alive, two requests on one connection", P["default"], None, steps=[
        (b"GET /ten HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", 0.5),
        (b"GET /ten2 HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", 0)])
    case("4l HTTP/1.1 without Host", P["default"], b"GET /nohost HTTP/1.1\r\nUser-Agent: t\r\n\r\n")
    case("4m POST with no length (HTTP/1.1)", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("4n absolute-form request target", P["default"], b"GET http://abs.example/abs?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("4o Content-Length: 0 POST", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")

if want("4b"):
    sec("4b HTTP/1.0 with accept_http_10: true")
    for lst in ["h10", "h10host"]:
        L = P[lst]
        case("4b listener=%s HTTP/1.0 without Host" % lst, L, b"GET /ten HTTP/1.0\r\nUser-Agent: t\r\n\r\n")
        case("4b listener=%s HTTP/1.0 with Host" % lst, L, b"GET /ten HTTP/1.0\r\nHost: example.com\r\n\r\n")
        case("4b listener=%s HTTP/1.0 keep-alive, two requests" % lst, L, None, steps=[
            (b"GET /ten HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", 0.5),
            (b"GET /ten2 HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n", 0)])
        case("4b listener=%s HTTP/1.0 GET /chunked (upstream chunked)" % lst, L, b"GET /chunked HTTP/1.0\r\nHost: example.com\r\n\r\n")
        case("4b listener=%s HTTP/1.0 keep-alive GET /chunked" % lst, L, b"GET /chunked HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
        case("4b listener=%s HTTP/1.0 keep-alive GET /basic" % lst, L, b"GET /basic HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
        case("4b listener=%s HTTP/1.0 POST with Content-Length" % lst, L, b"POST /b HTTP/1.0\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello")
        case("4b listener=%s HTTP/1.0 direct_response" % lst, L, b"GET /direct HTTP/1.0\r\nHost: example.com\r\n\r\n")

if want("5"):
    sec("5 responses")
    for p in ["basic", "chunked", "eofbody", "http10", "r204", "r304", "reason", "upclose", "multi"]:
        case("5 GET /%s" % p, P["default"], b"GET /%s HTTP/1.1\r\nHost: example.com\r\n\r\n" % p.encode())
    case("5 HEAD /headresp", P["default"], b"HEAD /headresp HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("5 HEAD /chunked", P["default"], b"HEAD /chunked HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("5 HTTP/1.0 client, GET /chunked", P["default"], b"GET /chunked HTTP/1.0\r\nHost: example.com\r\n\r\n")
    case("5 HTTP/1.0 client keep-alive, GET /chunked", P["default"], b"GET /chunked HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
    case("5 HTTP/1.0 client keep-alive, GET /basic", P["default"], b"GET /basic HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")

if want("6"):
    sec("6 local replies")
    case("6a no route (Host nomatch.example, path /)", P["default"], b"GET / HTTP/1.1\r\nHost: nomatch.example\r\n\r\n")
    case("6a2 no route, HEAD", P["default"], b"HEAD / HTTP/1.1\r\nHost: nomatch.example\r\n\r\n")
    case("6b cluster with zero endpoints", P["default"], b"GET /empty HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6c upstream refuses connection", P["default"], b"GET /refused HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=3)
    case("6d upstream never answers, route timeout 1s", P["default"], b"GET /timeout/hang HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=2.5)
    case("6e upstream closes mid-headers", P["default"], b"GET /midclose HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1.5)
    case("6e2 upstream closes without sending anything", P["default"], b"GET /closenow HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1.5)
    case("6e3 upstream closes mid-body (CL 10, 5 sent)", P["default"], b"GET /midbody HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1.5)
    case("6e4 upstream malformed status line", P["default"], b"GET /badstatus HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1.5)
    case("6f malformed request line GARBAGE", P["default"], b"GARBAGE\r\n\r\n")
    case("6f2 request line with extra token", P["default"], b"GET / HTTP/1.1 extra\r\nHost: example.com\r\n\r\n")
    case("6f3 HTTP/9.9", P["default"], b"GET / HTTP/9.9\r\nHost: example.com\r\n\r\n")
    case("6f4 bare LF line endings", P["default"], b"GET /lf HTTP/1.1\nHost: example.com\n\n")
    case("6g Content-Length + Transfer-Encoding", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    case("6h two different Content-Length", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
    case("6h2 two identical Content-Length", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
    case("6h3 Content-Length: 5, 5", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5, 5\r\n\r\nhello")
    case("6h4 invalid Content-Length abc", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\nhello")
    case("6h5 Transfer-Encoding: gzip", P["default"], b"POST /b HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\nhello")
    case("6i invalid header name char (space)", P["default"], b"GET / HTTP/1.1\r\nHost: example.com\r\nBad Header: x\r\n\r\n")
    case("6i2 invalid header name char '('", P["default"], b"GET / HTTP/1.1\r\nHost: example.com\r\nx(y: z\r\n\r\n")
    case("6i3 space before colon", P["default"], b"GET / HTTP/1.1\r\nHost: example.com\r\nx-a : z\r\n\r\n")
    case("6i4 underscore header name", P["default"], b"GET /us HTTP/1.1\r\nHost: example.com\r\nx_under: z\r\n\r\n")
    case("6i5 invalid header value char (\\x01)", P["default"], b"GET / HTTP/1.1\r\nHost: example.com\r\nx-a: a\x01b\r\n\r\n")
    case("6i6 obs-fold continuation line", P["default"], b"GET / HTTP/1.1\r\nHost: example.com\r\nx-a: a\r\n  b\r\n\r\n")
    big = b"x-big: " + b"a" * 1500 + b"\r\n"
    case("6j header block > max_request_headers_kb (listener with 1 KiB)", P["small"], b"GET / HTTP/1.1\r\nHost: example.com\r\n" + big + b"\r\n")
    big = b"x-big: " + b"a" * (61 * 1024) + b"\r\n"
    case("6j2 header block > 60 KiB default", P["default"], b"GET / HTTP/1.1\r\nHost: example.com\r\n" + big + b"\r\n")
    case("6k direct_response 200 inline_string", P["default"], b"GET /direct HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6k2 direct_response 200 no body", P["default"], b"GET /direct-empty HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6k3 direct_response 503 body 'down'", P["default"], b"GET /direct503 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6k4 direct_response HEAD", P["default"], b"HEAD /direct HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6l redirect https_redirect", P["default"], b"GET /redir-https/a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6l2 redirect https_redirect, Host with :80", P["default"], b"GET /redir-https/a?b=1 HTTP/1.1\r\nHost: example.com:80\r\n\r\n")
    case("6l3 redirect host_redirect", P["default"], b"GET /redir-host/a?b=1 HTTP/1.1\r\nHost: orig.example:8080\r\n\r\n")
    case("6l4 redirect path_redirect", P["default"], b"GET /redir-path/a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6l5 redirect path_redirect PERMANENT_REDIRECT", P["default"], b"GET /redir-301 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    case("6m 404 followed by second request on same connection", P["default"], None, steps=[
        (b"GET / HTTP/1.1\r\nHost: nomatch.example\r\n\r\n", 0.3), (b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n", 0)])
    case("6n 503 (empty cluster) followed by second request on same connection", P["default"], None, steps=[
        (b"GET /empty HTTP/1.1\r\nHost: example.com\r\n\r\n", 0.3), (b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n", 0)])

if want("8"):
    sec("8 pipelining")
    case("8a two GETs in one write", P["default"], b"GET /p1 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1)
    case("8b direct_response then upstream GET in one write", P["default"], b"GET /direct HTTP/1.1\r\nHost: example.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1)
    case("8c three GETs incl. POST body in one write", P["default"], b"GET /p1 HTTP/1.1\r\nHost: example.com\r\n\r\nPOST /p2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabcGET /p3 HTTP/1.1\r\nHost: example.com\r\n\r\n", idle=1)

e.stop()
