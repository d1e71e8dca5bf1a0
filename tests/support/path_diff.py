"""Differential probe of the connection manager's path rules: random request targets built from
the pieces those rules look at (dots plain and escaped, slashes and backslashes plain and
escaped, `;` parameters, broken and nested escapes, bytes a path may not hold raw, a query)
through pyproxy and through the `envoy` binary, under seven combinations of `normalize_path`,
`merge_slashes` and `path_with_escaped_slashes_action`; prints each target whose status,
forwarded path or redirect location differs.

    python3 -m tests.support.path_diff [PATHS] [SEED]

A difference is a lead: probe it, then fix it and pin it in tests/dataplane/test_paths.py (and
core/src/http1/path.rs's unit tests), or list it in docs/envoy-behaviour.md (section 18).
Needs `envoy` on PATH and the built extension (`make inplace`, then run with PYTHONPATH=.).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.configs import bootstrap, cluster, route
from tests.support.route_diff import start
from tests.support.upstream import Upstream

PIECES = ["/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%", "%%", "a", "b", "%41",
          "%61", "%00", "%25", "%3", "%7e", "%7E", '"', ";", ";x", "%zz", "%c3%a9", "\x80", "\xff", "~", "%2",
          "%%32%65", "%252e", "?", "=", "%3f", "%23", "{", "|", "%20", "%5f", "%2d", "x.", ".x", "%2e%2e", ".%2e",
          "%u002e", "+", "%7f", "%3b"]
OPTIONS: list[dict[str, Any]] = [
    {"normalize_path": True},
    {"merge_slashes": True},
    {"normalize_path": True, "merge_slashes": True},
    {"path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT", "normalize_path": True, "merge_slashes": True},
    {"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"},
    {"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD", "normalize_path": True},
    {"path_with_escaped_slashes_action": "REJECT_REQUEST", "normalize_path": True},
]


def targets(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["/" + "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 16))) for _ in range(n)]


def ask(port: int, target: str, upstream: Upstream) -> tuple[str, str | None, str | None]:
    """(status line, the target the upstream saw or None, the location header or None)."""
    from tests.dataplane.conftest import RawConn

    before = len(upstream.requests)
    # One response read by its framing, then the client closes (Envoy would hold a
    # `connection: close` request's connection open for its delayed close).
    with RawConn(port) as c:
        r = c.request(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode("latin-1"))
    seen = upstream.requests[-1].target if len(upstream.requests) > before else None
    return r.status_line, seen, r.header("location")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    work = Path(tempfile.mkdtemp(prefix="path-diff-"))
    upstream = Upstream().start()
    cases = targets(n, seed)
    diffs = 0
    try:
        for opts in OPTIONS:
            cfg = bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm=opts)
            started = {name: start(name, cfg, work) for name in ("pyproxy", "envoy")}
            try:
                refused = {k: v for k, v in started.items() if isinstance(v, str)}
                if refused:
                    print(json.dumps({"options": opts, **refused}))
                    diffs += 1
                    continue
                for target in cases:
                    got = {name: ask(v[1], target, upstream) for name, v in started.items()
                           if not isinstance(v, str)}
                    if got["pyproxy"] != got["envoy"]:
                        diffs += 1
                        print(json.dumps({"options": opts, "target": target, **got}, ensure_ascii=True))
            finally:
                for v in started.values():
                    if not isinstance(v, str):
                        v[0].stop(timeout_s=2.0)
    finally:
        upstream.stop()
    print(f"{diffs} differences in {len(OPTIONS)} option sets x {n} targets (seed {seed})", file=sys.stderr)


if __name__ == "__main__":
    main()
