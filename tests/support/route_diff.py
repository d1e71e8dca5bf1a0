"""Differential probe of route matching: generated route configurations, and requests drawn to
hit their matchers, through pyproxy and through the `envoy` binary; prints where the route that
answered differs.

    python3 -m tests.support.route_diff [CONFIGS] [REQUESTS] [SEED]

Each configuration has a few virtual hosts (exact, `*suffix`, `prefix*` and `*` domains) whose
routes match by `prefix`, `path` or `safe_regex` (some not case-sensitive), with header matchers
(every string test, `present_match`, `invert_match`, `ignore_case`) and query-parameter matchers.
Every route answers with a direct response naming itself (`v<vhost>r<route>`), so the body says
which route won; a request no route takes gets Envoy's 404. A configuration that one proxy takes
and the other refuses is a difference too. As with tests/support/envoy_diff.py, a difference is a
lead: probe it case by case, then fix and pin it in tests/dataplane/test_routing.py or list it
in docs/envoy-behaviour.md (section 11). Needs `envoy` on PATH and the built extension (`make inplace`, then
run with PYTHONPATH=.).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.configs import bootstrap

DOMAINS = ["example.com", "*.example.com", "*ample.com", "api.*", "api*", "*", "Example.ORG", "example.com:8080",
           "*.com", "[::1]", "[::1]:80", "a.b.example.com", "*-api.io", "x.*", "*.x.y"]
HOSTS = ["example.com", "EXAMPLE.COM", "example.com:80", "example.com:8080", "a.example.com", "b.a.example.com",
         "xample.com", "ample.com", "sample.com", "api.x", "api", "api.", "apix", "example.org", "Example.Org:1",
         "[::1]", "[::1]:80", "[::1]:81", "a.b.example.com", "z-api.io", "-api.io", "x.y", "q.x.y", "x.", "other.net",
         "com", ".com", "a.com:443"]
PREFIXES = ["/", "", "/api", "/api/", "/API", "/a/b", "/a", "/q?x", "/%41", "/api/v1", "/ap"]
PATHS = ["/exact", "/Exact", "/api", "/a/b/", "/", "/q?x=1"]
REGEXES = ["/re/[0-9]+", "/x.*", "/api/.*", "/(a|b)/c", "/A.*", ".*"]
REQUEST_PATHS = ["/", "/api", "/api/", "/API/x", "/Api", "/api/v1/x", "/apix", "/ap", "/a", "/a/b", "/a/b/",
                 "/A/B", "/exact", "/EXACT", "/Exact", "/exact/", "/re/12", "/re/x", "/x", "/xyz", "/a/c", "/b/c",
                 "/%41", "/A", "/q", "/q?x", "/q?x=1", "/q?xy", "/exact?x=1", "/api?debug=1", "/a/b?x", "/Api/V1"]
HEADER_NAMES = ["x-h", "x-k", "X-Up"]
# Matched on, not sent as such: the pseudo-headers, and headers the connection manager edits
# before routing.
MATCHED_ONLY = [":method", ":path", ":authority", ":scheme", ":protocol", "host", "te", "x-forwarded-proto",
                "connection"]
HEADER_VALUES = ["v1", "V1", "va", "abz", "", "v1,v2", "xv1", " v1", "v1 "]
QUERY_NAMES = ["debug", "x", "Debug", "a b"]
QUERY_STRINGS = ["", "debug", "debug=", "debug=1", "debug=true", "debug=TRUE", "x=1&debug=0", "debug=1&debug=2",
                 "Debug=1", "x", "x=", "x=%31", "a%20b=1", "a+b=1", "debug=a%20b", "&debug=1", "debug=1#f"]


def string_match(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["exact", "prefix", "suffix", "contains", "safe_regex"])
    value = rng.choice(["v1", "v", "z", "a", "V1", "1", "true", "GET", "POST", "/a", "http", "https", "example.com",
                        "trailers"] + [""] * (kind == "exact"))
    regex = rng.choice(["v[0-9]", "V.*", ".*", "true|1", "/a.*", "(GET|HEAD)", "https?", "[a-z.]+"])
    m: dict[str, Any] = {kind: {"regex": regex} if kind == "safe_regex" else value}
    if rng.random() < 0.3 and kind != "safe_regex":
        m["ignore_case"] = True
    if rng.random() < 0.02:
        # Now and then one that Envoy's validation refuses: both must refuse it.
        m = rng.choice([{"prefix": ""}, {"contains": ""}, {"suffix": ""}, {"safe_regex": {"regex": "("}}, {},
                        {"safe_regex": {"regex": "a"}, "ignore_case": True}, {"exact": "a", "prefix": "a"}])
    return m


def header_matcher(rng: random.Random) -> dict[str, Any]:
    h: dict[str, Any] = {"name": rng.choice(HEADER_NAMES * 3 + MATCHED_ONLY)}
    r = rng.random()
    if r < 0.2:
        h["present_match"] = rng.random() < 0.7
    elif r < 0.35:
        legacy = rng.choice(["exact_match", "prefix_match", "suffix_match", "contains_match"])
        h[legacy] = rng.choice(["v1", "v", "z", "a"])
    else:
        h["string_match"] = string_match(rng)
    if rng.random() < 0.25:
        h["invert_match"] = True
    return h


def query_matcher(rng: random.Random) -> dict[str, Any]:
    q: dict[str, Any] = {"name": rng.choice(QUERY_NAMES)}
    if rng.random() < 0.3:
        q["present_match"] = True
    else:
        q["string_match"] = string_match(rng)
    return q


def gen_config(rng: random.Random) -> list[dict[str, Any]]:
    domains = rng.sample(DOMAINS, rng.randint(2, 8))
    if "*" not in domains and rng.random() < 0.5:
        domains.append("*")
    n = rng.randint(1, min(4, len(domains)))
    groups: list[list[str]] = [[] for _ in range(n)]
    for i, d in enumerate(domains):
        groups[i % n].append(d)
    vhosts = []
    for vi, group in enumerate(groups):
        routes = []
        for ri in range(rng.choice([1, 2, 3, 5, 9, 12])):
            kind = rng.choices(["prefix", "path", "safe_regex"], [6, 2, 2])[0]
            match: dict[str, Any] = {
                "prefix": rng.choice(PREFIXES),
                "path": rng.choice(PATHS),
                "safe_regex": {"regex": rng.choice(REGEXES)},
            }
            match = {kind: match[kind]}
            if rng.random() < 0.2:
                match["case_sensitive"] = False
            if rng.random() < 0.35:
                match["headers"] = [header_matcher(rng) for _ in range(rng.choice([1, 1, 2]))]
            if rng.random() < 0.2:
                match["query_parameters"] = [query_matcher(rng) for _ in range(rng.choice([1, 1, 2]))]
            answer = {"status": 200, "body": {"inline_string": f"v{vi}r{ri}"}}
            routes.append({"match": match, "direct_response": answer})
        vhosts.append({"name": f"v{vi}", "domains": group, "routes": routes})
    return vhosts


def gen_host(rng: random.Random, vhosts: list[dict[str, Any]]) -> str:
    """A host from the pool, or one that a domain of the configuration matches."""
    if rng.random() < 0.5:
        return rng.choice(HOSTS)
    d = rng.choice([d for v in vhosts for d in v["domains"]])
    return d.replace("*", rng.choice(["a", "x-", "b.c"])) if d != "*" else rng.choice(HOSTS)


def gen_request(rng: random.Random, vhosts: list[dict[str, Any]]) -> bytes:
    path = rng.choice(REQUEST_PATHS)
    if "?" not in path and rng.random() < 0.3:
        path += "?" + rng.choice(QUERY_STRINGS)
    if rng.random() < 0.1:
        path = rng.choice(["http://", "https://", "HTTP://"]) + gen_host(rng, vhosts) + path
    method = rng.choice(["GET"] * 6 + ["POST", "DELETE", "OPTIONS"])
    lines = [f"{method} {path} HTTP/1.1", f"Host: {gen_host(rng, vhosts)}"]
    if method == "POST":
        lines.append("Content-Length: 0")
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        lines.append(f"{rng.choice(HEADER_NAMES)}: {rng.choice(HEADER_VALUES)}")
    if rng.random() < 0.15:
        lines.append(rng.choice(["TE: trailers", "TE: gzip", "X-Forwarded-Proto: https", "X-Forwarded-Proto: HTTP",
                                 "X-Forwarded-Proto: ftp", "Connection: keep-alive", "X-Request-Id: abc"]))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Client:
    """A keep-alive connection that reads whole responses (content-length framed), reconnecting
    after a close."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def ask(self, raw: bytes) -> str:
        """Sends `raw`; the status code and the start of the body, or the error."""
        got = self.exchange(raw)
        if isinstance(got, str):
            return got
        head, _, body = got.partition(b"\r\n\r\n")
        return f"{head[9:12].decode('latin-1')} {body[:60].decode('latin-1')}"

    def exchange(self, raw: bytes) -> bytes | str:
        """Sends `raw`; the whole response, or the error's name. A response is framed by its
        `content-length` (none: no body)."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=3)
            self.buf = b""
        try:
            self.sock.sendall(raw)
            while b"\r\n\r\n" not in self.buf:
                d = self.sock.recv(65536)
                if not d:
                    raise ConnectionResetError
                self.buf += d
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            hs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            n = int(hs.get("content-length", "0")) if not raw.startswith(b"HEAD ") else 0
            while len(self.buf) < n:
                d = self.sock.recv(65536)
                if not d:
                    raise ConnectionResetError
                self.buf += d
            body, self.buf = self.buf[:n], self.buf[n:]
            if hs.get("connection", "").lower() == "close":
                self.close()
            return head + b"\r\n\r\n" + body
        except (OSError, ValueError) as e:
            self.close()
            return f"<{type(e).__name__}>"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def start(name: str, cfg: dict[str, Any], work: Path) -> tuple[Any, int] | str:
    """(the proxy, its listener port), or why it refused the configuration."""
    if name == "pyproxy":
        from pyproxy import Proxy

        try:
            p = Proxy(cfg, concurrency=1)
            p.start()
        except Exception as e:  # noqa: BLE001 - the refusal is the result
            return f"refused: {e}"
        return p, p.listener_port()
    from tests.dataplane.conftest import EnvoyProcess

    try:
        e = EnvoyProcess(cfg, work, 1)
    except AssertionError as err:
        log = sorted(work.glob("envoy-*.log"))[-1].read_text(errors="replace")
        return f"refused: {err}: {log.strip().splitlines()[-1][-400:] if log.strip() else ''}"
    return e, e.listener_port()


def run(configs: int, requests: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The differences, and counts of what was seen: configurations both refused, and answers
    that were a route's, a 404 or something else, where both agreed."""
    rng = random.Random(seed)
    seen = {"refused by both": 0, "routed": 0, "404": 0, "other": 0}
    work = Path(tempfile.mkdtemp(prefix="route-diff-"))
    diffs: list[dict[str, Any]] = []
    for ci in range(configs):
        vhosts = gen_config(rng)
        cfg = bootstrap([], [], virtual_hosts=vhosts)
        cases = [gen_request(rng, vhosts) for _ in range(requests)]
        started = {name: start(name, cfg, work) for name in ("pyproxy", "envoy")}
        try:
            refused = {k: v for k, v in started.items() if isinstance(v, str)}
            if refused:
                if len(refused) == 1:
                    diffs.append({"config": ci, "vhosts": vhosts, **refused})
                else:
                    seen["refused by both"] += 1
                continue
            clients = {name: Client(v[1]) for name, v in started.items() if not isinstance(v, str)}
            for raw in cases:
                got = {name: c.ask(raw) for name, c in clients.items()}
                if got["pyproxy"] != got["envoy"]:
                    diffs.append({"config": ci, "sent": raw.decode("latin-1"), **got, "vhosts": vhosts})
                else:
                    kind = got["envoy"][:3]
                    seen["routed" if kind == "200" else "404" if kind == "404" else "other"] += 1
            for c in clients.values():
                c.close()
        finally:
            for v in started.values():
                if not isinstance(v, str):
                    v[0].stop(timeout_s=2.0)
    return diffs, seen


def main() -> None:
    configs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    diffs, seen = run(configs, requests, seed)
    for d in diffs:
        print(json.dumps(d, ensure_ascii=True))
    print(f"{len(diffs)} differences in {configs} configurations x {requests} requests (seed {seed}); agreed: "
          + ", ".join(f"{k} {v}" for k, v in seen.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
