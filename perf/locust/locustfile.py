"""Mixed edge traffic for pyproxy, Envoy, HAProxy or nginx in front of perf/locust/upstreams.py.

    locust -f perf/locust/locustfile.py --headless -u 200 -r 50 -t 60s --host http://127.0.0.1:10100

Each simulated user browses like a client of two sites behind one edge proxy. The task
weights give the mix (out of 100 requests):

    45  GET  www.example.com /pages/<n>        ~1 KiB HTML, web cluster (2 hosts, round robin)
    10  GET  www.example.com /                 ~1 KiB HTML, web cluster
    15  GET  www.example.com /assets/app-<n>.js 64 KiB, assets cluster
    15  POST api.example.com /v1/orders        2 KiB JSON up, 512 B JSON down, api cluster
    10  GET  api.example.com /v1/items + x-canary: true   header-matched route, api_canary
     5  GET  www.example.com /missing/<n>      404 from the proxy (no route)

Every answer is checked, not only its status: the upstreams name themselves in `x-upstream`, so
a request the proxy routed to the wrong cluster counts as a failure. Virtual hosts are picked
with the Host header, so one `--host` URL serves every proxy.

Environment:
    LOCUST_WAIT_MAX  think time upper bound in seconds (default 0.5; 0 for a closed loop
                     with no think time, which measures the proxy's ceiling instead of a
                     realistic arrival rate)
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, between, constant, task

WAIT_MAX = float(os.environ.get("LOCUST_WAIT_MAX", "0.5"))

WWW = {"Host": "www.example.com"}
API = {"Host": "api.example.com", "Content-Type": "application/json"}
CANARY = {"Host": "api.example.com", "x-canary": "true"}

# A 2 KiB JSON order: the same document each time, as a client SDK would send.
ORDER = json.dumps(
    {
        "customer": "c-1029384756",
        "currency": "EUR",
        "items": [
            {"sku": f"SKU-{i:05d}", "qty": i % 3 + 1, "price": 9.99 + i, "note": "gift wrap " * 2} for i in range(24)
        ],
    }
).encode()
ORDER = ORDER + b" " * max(0, 2048 - len(ORDER))


class EdgeUser(FastHttpUser):
    """A browser-ish client; FastHttpUser keeps one keep-alive connection per user."""

    wait_time = between(WAIT_MAX / 5, WAIT_MAX) if WAIT_MAX > 0 else constant(0)

    def _get(self, path: str, headers: dict[str, str], name: str, upstream: tuple[str, ...], size: int) -> None:
        with self.client.get(path, headers=headers, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
            elif r.headers.get("x-upstream") not in upstream:
                r.failure(f"routed to {r.headers.get('x-upstream')!r}, want {upstream}")
            elif len(r.content or b"") != size:
                r.failure(f"body {len(r.content or b'')} bytes, want {size}")

    @task(45)
    def page(self) -> None:
        n = random.randrange(1000)
        self._get(f"/pages/{n}?ref=home", WWW, "GET /pages/[n]", ("web-a", "web-b"), 1024)

    @task(10)
    def home(self) -> None:
        self._get("/", WWW, "GET /", ("web-a", "web-b"), 1024)

    @task(15)
    def asset(self) -> None:
        n = random.randrange(20)
        self._get(f"/assets/app-{n}.js", WWW, "GET /assets/[n].js 64KiB", ("assets",), 65536)

    @task(15)
    def order(self) -> None:
        with self.client.post(
            "/v1/orders", data=ORDER, headers=API, name="POST /v1/orders 2KiB", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
            elif r.headers.get("x-upstream") != "api":
                r.failure(f"routed to {r.headers.get('x-upstream')!r}, want 'api'")
            elif r.headers.get("x-received-bytes") != str(len(ORDER)):
                r.failure(f"upstream got {r.headers.get('x-received-bytes')} body bytes")

    @task(10)
    def canary(self) -> None:
        self._get("/v1/items?limit=20", CANARY, "GET /v1/items x-canary", ("api-canary",), 512)

    @task(5)
    def missing(self) -> None:
        n = random.randrange(1000)
        with self.client.get(f"/missing/{n}", headers=WWW, name="GET /missing/[n] (404)", catch_response=True) as r:
            if r.status_code == 404:
                r.success()
            else:
                r.failure(f"status {r.status_code}, want 404")
