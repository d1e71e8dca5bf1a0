"""`--concurrency 2`: both workers accept connections (SO_REUSEPORT), and the per-worker listener
stats add up to the listener's totals. Run in subprocess mode (stats from the admin `/stats`)
and embedded mode (stats from `Proxy.stats()`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.lifecycle.process import ProxyProcess, poll
from tests.support.configs import bootstrap, cluster, route
from tests.support.upstream import Upstream

CONNECTIONS = 40


def one_request_per_connection(url: str, n: int) -> None:
    # A new client per request: each gets its own connection and so its own client port, which
    # is what the kernel's SO_REUSEPORT hash spreads over the workers' sockets.
    for i in range(n):
        with httpx.Client(timeout=5.0) as c:
            r = c.get(f"{url}/conn/{i}")
            assert r.status_code == 200


def check_worker_stats(stats: dict[str, int], listener: str, workers: int, expected: int) -> None:
    prefix = f"listener.{listener}"
    total = stats[f"{prefix}.downstream_cx_total"]
    per_worker = [stats.get(f"{prefix}.worker_{w}.downstream_cx_total", 0) for w in range(workers)]
    assert total >= expected, stats
    assert all(n > 0 for n in per_worker), f"a worker accepted nothing: {per_worker}"
    assert sum(per_worker) == total, f"workers {per_worker} do not add up to {total}"
    assert f"{prefix}.worker_{workers}.downstream_cx_total" not in stats
    assert stats["server.concurrency"] == workers
    active = [stats.get(f"{prefix}.worker_{w}.downstream_cx_active", 0) for w in range(workers)]
    assert sum(active) == stats[f"{prefix}.downstream_cx_active"]


def test_concurrency_2_spreads_connections_subprocess(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    p = proxy_process(bootstrap([route("/", "a")], [cluster("a", upstream.port)]), concurrency=2)
    host, port = p.listener()
    one_request_per_connection(f"http://{host}:{port}", CONNECTIONS)
    listener = f"{host}_0"  # Envoy names listener stats by the configured address (port 0)
    # Connection counters are bumped on the worker threads; wait until every close is counted.
    stats = poll(
        lambda: (s := p.stat_values())[f"listener.{listener}.downstream_cx_destroy"] >= CONNECTIONS
        and s,
        timeout=5.0,
        what="all connections to be counted closed",
    )
    check_worker_stats(stats, listener, 2, CONNECTIONS)
    assert "started; 2 workers" in p.stderr()
    info = p.admin_get("/server_info").json()
    assert int(info["command_line_options"]["concurrency"]) == 2


def test_concurrency_2_spreads_connections_embedded(
    make_proxy: Callable[..., Any], upstream: Upstream
) -> None:
    proxy = make_proxy(bootstrap([route("/", "a")], [cluster("a", upstream.port)]), concurrency=2)
    port = proxy.listener_port()
    one_request_per_connection(f"http://127.0.0.1:{port}", CONNECTIONS)
    listener = "127.0.0.1_0"  # Envoy names listener stats by the configured address
    stats = poll(
        lambda: (s := proxy.stats())[f"listener.{listener}.downstream_cx_destroy"] >= CONNECTIONS
        and s,
        timeout=5.0,
        what="all connections to be counted closed",
    )
    check_worker_stats(stats, listener, 2, CONNECTIONS)
    assert proxy.engine.concurrency == 2
