"""Differential probe of what routes do: generated route actions (forwarding with path and host
rewrites, redirects, direct responses) and header edits at every level, through pyproxy and
through the `envoy` binary; prints where what the client got or what the upstream saw differs.

    python3 -m tests.support.action_diff [CONFIGS] [REQUESTS] [SEED]

Each configuration has one or two virtual hosts whose routes (by prefix) forward to a recording
upstream (`prefix_rewrite`, `host_rewrite_literal`, `timeout`, weighted clusters with their
own edits), redirect (every `RedirectAction` field), or answer directly; the route, virtual host
and route configuration each add or remove request and response headers (`append`,
`append_action`, `keep_empty_value`). A configuration one proxy takes and the other refuses is a
difference too. As with tests/support/route_diff.py, a difference is a lead, to probe case by
case and then fix and pin (tests/dataplane/test_routing.py, test_headers.py) or list in
docs/envoy-behaviour.md. Needs `envoy` on PATH and the built extension (`make inplace`, then
run with PYTHONPATH=.).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.configs import bootstrap, cluster
from tests.support.envoy_diff import RecordingUpstream, normalise, seen
from tests.support.route_diff import Client, start

PREFIXES = ["/", "/a", "/a/", "/api/v1", "/r", "/d", "/x/y"]
PATHS = ["/", "/a", "/a/", "/ab", "/a/b/c", "/api/v1", "/api/v1/users", "/r", "/r/z", "/d", "/x/y", "/x/y/z"]
QUERIES = ["", "?q=1", "?a=b&c=d", "?", "?q=%20"]
# Inline names (one entry each in Envoy's header map, joined with ',') and plain ones. `host`
# is drawn rarely: both proxies refuse to edit it, so a configuration that does is not tested.
HEADER_NAMES = ["x-a", "x-b", "x-up", "server", "content-type", "x-envoy-upstream-service-time", "date",
                "x-forwarded-proto", "user-agent", "cache-control", "accept", "via", "location", "vary",
                "x-request-id", "x-forwarded-client-cert"]

# (No command whose value differs between the two runs, such as a port.)
VALUES = ["1", "two", "", " spaced ", "a,b", "%%", "50%%", "%REQ(x-a)%", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
          "%PROTOCOL%", "%RESPONSE_CODE%", "%REQ(:path)%", "<%RESP(x-up)%>"]


def header_name(rng: random.Random) -> str:
    return "host" if rng.random() < 0.01 else rng.choice(HEADER_NAMES)


def header_option(rng: random.Random) -> dict[str, Any]:
    o: dict[str, Any] = {"header": {"key": header_name(rng), "value": rng.choice(VALUES)}}
    r = rng.random()
    if r < 0.25:
        o["append"] = rng.random() < 0.5
    elif r < 0.5:
        o["append_action"] = rng.choice(["APPEND_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS_OR_ADD"])
    if rng.random() < 0.1:
        o["keep_empty_value"] = True
    return o


def edits(rng: random.Random, into: dict[str, Any]) -> None:
    """Adds random header edits to a route, virtual host or route configuration."""
    for field in ("request_headers_to_add", "response_headers_to_add"):
        if rng.random() < 0.3:
            into[field] = [header_option(rng) for _ in range(rng.choice([1, 1, 2]))]
    for field in ("request_headers_to_remove", "response_headers_to_remove"):
        if rng.random() < 0.15:
            into[field] = [header_name(rng) for _ in range(rng.choice([1, 2]))]


def action(rng: random.Random) -> dict[str, Any]:
    kind = rng.choices(["route", "redirect", "direct_response"], [5, 3, 2])[0]
    if kind == "route":
        a: dict[str, Any] = {"cluster": "up"}
        if rng.random() < 0.15:
            a = {"weighted_clusters": {"clusters": [{"name": "up", "weight": 1}]}}
            edits(rng, a["weighted_clusters"]["clusters"][0])
        if rng.random() < 0.4:
            a["prefix_rewrite"] = rng.choice(["/", "", "/new", "/new/", "x", "/a/b"])
        if rng.random() < 0.2:
            a["host_rewrite_literal"] = rng.choice(["h.example", "H.example:81"])
        if rng.random() < 0.2:
            a["timeout"] = rng.choice(["0s", "5s", "1.5s"])
        return {"route": a}
    if kind == "redirect":
        r: dict[str, Any] = {}
        # (One of each oneof pair mostly: a configuration both proxies refuse tests nothing.)
        for field, values in [("https_redirect", [True, False]), ("scheme_redirect", ["https", "http", "ftp", ""]),
                              ("host_redirect", ["r.example", "R.example:1"]), ("port_redirect", [0, 8443, 80, 443]),
                              ("path_redirect", ["/p", "/p?x=1", "/"]), ("prefix_rewrite", ["/n", "/", ""]),
                              ("response_code", ["MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT",
                                                 "PERMANENT_REDIRECT"]),
                              ("strip_query", [True, False])]:
            if rng.random() < 0.3:
                r[field] = rng.choice(values)
        if rng.random() < 0.9:
            for a, b in (("https_redirect", "scheme_redirect"), ("path_redirect", "prefix_rewrite")):
                if a in r and b in r:
                    del r[rng.choice([a, b])]
        return {"redirect": r}
    d: dict[str, Any] = {"status": rng.choice([200, 204, 301, 404, 503, 599])}
    if rng.random() < 0.6:
        d["body"] = {"inline_string": rng.choice(["hi", "", "x" * 100])}
    return {"direct_response": d}


def gen_config(rng: random.Random, port: int) -> dict[str, Any]:
    vhosts = []
    for vi, domains in enumerate(rng.choice([[["*"]], [["example.com"], ["*"]]])):
        routes = []
        for _ in range(rng.randint(1, 5)):
            r = {"match": {"prefix": rng.choice(PREFIXES)}, **action(rng)}
            edits(rng, r)
            routes.append(r)
        vh = {"name": f"v{vi}", "domains": domains, "routes": routes}
        edits(rng, vh)
        vhosts.append(vh)
    rc: dict[str, Any] = {}
    edits(rng, rc)
    cfg = bootstrap([], [cluster("up", port)], virtual_hosts=vhosts, route_config_extra=rc)
    return cfg


def gen_request(rng: random.Random) -> bytes:
    method = rng.choice(["GET"] * 5 + ["HEAD", "POST"])
    hosts = ["example.com", "other.org:8080", "EXAMPLE.com", "example.com:80", "example.com:443"]
    lines = [f"{method} {rng.choice(PATHS)}{rng.choice(QUERIES)} HTTP/1.1", f"Host: {rng.choice(hosts)}"]
    if method == "POST":
        lines.append("Content-Length: 0")
    for _ in range(rng.choice([0, 1, 2])):
        name = rng.choice(["x-a", "x-b", "cache-control", "x-forwarded-proto", "user-agent", "x-forwarded-client-cert"])
        lines.append(f"{name}: {rng.choice(['v', 'https', ''])}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run(configs: int, requests: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="action-diff-"))
    ups = {"pyproxy": RecordingUpstream(), "envoy": RecordingUpstream()}
    diffs: list[dict[str, Any]] = []
    counts = {"refused by both": 0, "agreed": 0}
    try:
        for ci in range(configs):
            state = rng.getstate()
            cfgs = {}
            for name, up in ups.items():
                rng.setstate(state)  # the same configuration, each with its own upstream
                cfgs[name] = gen_config(rng, up.port)
            cases = [gen_request(rng) for _ in range(requests)]
            started = {name: start(name, cfgs[name], work) for name in ups}
            routes = cfgs["envoy"]["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
                "typed_config"]["route_config"]
            try:
                refused = {k: v for k, v in started.items() if isinstance(v, str)}
                if refused:
                    if len(refused) == 1:
                        diffs.append({"config": ci, "routes": routes, **refused})
                    else:
                        counts["refused by both"] += 1
                    continue
                clients = {name: Client(v[1]) for name, v in started.items() if not isinstance(v, str)}
                for raw in cases:
                    got = {}
                    for name, c in clients.items():
                        ups[name].seen.clear()
                        reply = c.exchange(raw)
                        shown = normalise(reply, raw.startswith(b"HEAD")) if isinstance(reply, bytes) else reply
                        got[name] = f"{shown} ## {seen(ups[name])}"
                    if got["pyproxy"] != got["envoy"]:
                        diffs.append({"config": ci, "sent": raw.decode("latin-1"), **got, "routes": routes})
                    else:
                        counts["agreed"] += 1
                for c in clients.values():
                    c.close()
            finally:
                for v in started.values():
                    if not isinstance(v, str):
                        v[0].stop(timeout_s=2.0)
    finally:
        for up in ups.values():
            up.close()
    return diffs, counts


def main() -> None:
    configs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    diffs, counts = run(configs, requests, seed)
    for d in diffs:
        print(json.dumps(d, ensure_ascii=True))
    print(f"{len(diffs)} differences in {configs} configurations x {requests} requests (seed {seed}); "
          + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
