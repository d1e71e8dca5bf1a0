"""Clusters end to end: discovery (STATIC, STRICT_DNS), load balancers over real upstreams,
membership stats, and `max_requests_per_connection`."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.support.configs import bootstrap, cluster, route
from tests.support.wait import wait_for, wait_stat


def served_by(proxy, n: int, path: str = "/") -> Counter:
    port = proxy.listener_port()
    seen: Counter = Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        for _ in range(n):
            r = c.get(path)
            assert r.status_code == 200
            seen[int(r.headers["x-upstream-port"])] += 1
    return seen


def test_strict_dns_cluster_resolves_localhost(upstream, make_proxy):
    c = cluster("dns", upstream.port, type="STRICT_DNS", dns_lookup_family="V4_ONLY")
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = (
        "localhost"
    )
    p = make_proxy(bootstrap([route("/", "dns")], [c]))
    assert served_by(p, 3) == {upstream.port: 3}
    wait_stat(p, "cluster.dns.membership_total", 1)


def test_strict_dns_unresolvable_name_gives_no_healthy_upstream(make_proxy):
    c = cluster("dns", 80, type="STRICT_DNS")
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = (
        "no-such-host.invalid"
    )
    p = make_proxy(bootstrap([route("/", "dns")], [c]))
    r = httpx.get(f"http://127.0.0.1:{p.listener_port()}/")
    assert (r.status_code, r.text) == (503, "no healthy upstream")
    wait_stat(p, "cluster.dns.membership_total", 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_membership_gauges_are_not_multiplied_by_workers(make_upstream, make_proxy, workers):
    a, b = make_upstream(), make_upstream()
    p = make_proxy(bootstrap([route("/", "c")], [cluster("c", a.port, b.port)]), concurrency=workers)
    wait_stat(p, "cluster.c.membership_total", 2)
    wait_stat(p, "cluster.c.membership_healthy", 2)


def test_round_robin_alternates_exactly(make_upstream, make_proxy):
    ups = [make_upstream() for _ in range(3)]
    p = make_proxy(bootstrap([route("/", "c")], [cluster("c", *(u.port for u in ups))]))
    seen = served_by(p, 30)
    assert sorted(seen.values()) == [10, 10, 10]


def test_weighted_round_robin_follows_endpoint_weights(make_upstream, make_proxy):
    a, b = make_upstream(), make_upstream()
    c = cluster("c", a.port, b.port)
    eps = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    eps[0]["load_balancing_weight"] = 1
    eps[1]["load_balancing_weight"] = 3
    p = make_proxy(bootstrap([route("/", "c")], [c]))
    assert served_by(p, 40) == {a.port: 10, b.port: 30}


@pytest.mark.parametrize("policy", ["RANDOM", "LEAST_REQUEST"])
def test_random_and_least_request_use_every_host(make_upstream, make_proxy, policy):
    a, b = make_upstream(), make_upstream()
    p = make_proxy(bootstrap([route("/", "c")], [cluster("c", a.port, b.port, lb_policy=policy)]))
    seen = served_by(p, 100)
    assert set(seen) == {a.port, b.port}
    assert min(seen.values()) > 15, seen


def test_least_request_avoids_a_host_with_requests_in_flight(make_upstream, make_proxy):
    """One host holds a slow request; with two choices, new requests prefer the idle host."""
    import threading

    slow, fast = make_upstream(), make_upstream()
    # Both hosts serve the same paths; /delay/1500 pins a request on whichever host gets it.
    p = make_proxy(bootstrap([route("/", "c")], [cluster("c", slow.port, fast.port, lb_policy="LEAST_REQUEST")]))
    port = p.listener_port()
    pinned = []

    def hold() -> None:
        r = httpx.get(f"http://127.0.0.1:{port}/delay/1500", timeout=10)
        pinned.append(int(r.headers["x-upstream-port"]))

    t = threading.Thread(target=hold)
    t.start()
    wait_for(lambda: p.stats().get("cluster.c.upstream_rq_active", 0) >= 1, what="the slow request in flight")
    seen = served_by(p, 20)
    t.join()
    busy = pinned[0]
    # The busy host is chosen only when both random choices land on it (about 1 in 4).
    assert seen[busy] < 12, seen


def test_max_requests_per_connection_rotates_upstream_connections(upstream, make_proxy):
    c = cluster(
        "c",
        upstream.port,
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"max_requests_per_connection": 2},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
    )
    p = make_proxy(bootstrap([route("/", "c")], [c]))
    served_by(p, 6)
    assert upstream.connections == 3
    wait_stat(p, "cluster.c.upstream_cx_max_requests", 3)


def test_clusters_api_reports_per_host_stats(make_upstream, make_proxy):
    a, b = make_upstream(), make_upstream()
    p = make_proxy(bootstrap([route("/", "c")], [cluster("c", a.port, b.port)]))
    served_by(p, 4)
    def counted() -> dict | None:
        (c,) = p.engine.clusters()
        return c if sum(h["rq_total"] for h in c["hosts"]) == 4 else None

    info = wait_for(counted, what="4 requests in the per-host stats")
    hosts = {h["port"]: h for h in info["hosts"]}
    assert info["name"] == "c"
    assert set(hosts) == {a.port, b.port}
    assert all(h["rq_total"] == 2 and h["rq_success"] == 2 and h["cx_total"] == 1 for h in hosts.values()), hosts


def test_strict_dns_endpoints_resolving_alike_are_separate_named_hosts(make_upstream, make_proxy):
    # Two STRICT_DNS endpoints whose names resolve to the same address and port are two hosts
    # in Envoy, each named after its endpoint: balanced apart, counted apart, and listed apart
    # by /clusters with their `hostname` (the lines below are Envoy 1.40's for this config).
    up = make_upstream()
    c = cluster("dns", up.port, up.port, type="STRICT_DNS", dns_lookup_family="V4_ONLY")
    lb = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    lb[0]["endpoint"]["address"]["socket_address"]["address"] = "localhost"
    p = make_proxy(bootstrap([route("/", "dns")], [c]))
    assert served_by(p, 4) == {up.port: 4}

    def counted() -> dict | None:
        (info,) = p.engine.clusters()
        return info if sum(h["rq_total"] for h in info["hosts"]) == 4 else None

    info = wait_for(counted, what="4 requests in the per-host stats")
    assert [(h["hostname"], h["rq_total"]) for h in info["hosts"]] == [("localhost", 2), ("127.0.0.1", 2)]
    host, admin_port = p.admin_address
    text = httpx.get(f"http://{host}:{admin_port}/clusters").text
    names = [line.rsplit("::", 1)[1] for line in text.splitlines() if "::hostname::" in line]
    assert names == ["localhost", "127.0.0.1"], text
    body = httpx.get(f"http://{host}:{admin_port}/clusters?format=json").json()
    statuses = body["cluster_statuses"][0]["host_statuses"]
    assert [s.get("hostname") for s in statuses] == ["localhost", "127.0.0.1"]


def test_static_hosts_have_no_hostname(make_upstream, make_proxy):
    up = make_upstream()
    p = make_proxy(bootstrap([route("/", "c")], [cluster("c", up.port)]))
    (info,) = p.engine.clusters()
    assert [h["hostname"] for h in info["hosts"]] == [""]


# --- ring hash (Envoy's ring; which host each hash lands on is pinned against the envoy binary
# in core/src/lb/mod.rs) -------------------------------------------------------------------------


def ring_hash_proxy(make_upstream, make_proxy, hash_policy, n=3, lb_policy="RING_HASH", **cluster_extra):
    ups = [make_upstream() for _ in range(n)]
    c = cluster("c", *(u.port for u in ups), lb_policy=lb_policy, **cluster_extra)
    return ups, make_proxy(bootstrap([route("/", "c", hash_policy=hash_policy)], [c]))


def port_for(proxy, headers=None, path="/"):
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.listener_port()}") as c:
        r = c.get(path, headers=headers or {})
        assert r.status_code == 200
        return int(r.headers["x-upstream-port"])


@pytest.mark.parametrize("lb_policy", ["RING_HASH", "MAGLEV"])
@pytest.mark.parametrize(
    ("policy", "request_for"),
    [
        ([{"header": {"header_name": "X-User"}}], lambda k: {"headers": {"x-user": k}}),
        ([{"query_parameter": {"name": "u"}}], lambda k: {"path": f"/p?a=1&u={k}"}),
        ([{"cookie": {"name": "sid"}}], lambda k: {"headers": {"cookie": f"a=1; sid={k}"}}),
    ],
    ids=["header", "query", "cookie"],
)
def test_ring_hash_sends_each_key_to_one_host(make_upstream, make_proxy, policy, request_for, lb_policy):
    ups, p = ring_hash_proxy(make_upstream, make_proxy, policy, lb_policy=lb_policy)
    keys = [f"user-{i}" for i in range(40)]
    first = {k: port_for(p, **request_for(k)) for k in keys}
    # The same key lands on the same host every time (each request on a new connection), and
    # the keys spread over the hosts.
    assert all(port_for(p, **request_for(k)) == first[k] for k in keys[:15])
    assert set(first.values()) == {u.port for u in ups}, Counter(first.values())


@pytest.mark.parametrize("lb_policy", ["RING_HASH", "MAGLEV"])
def test_ring_hash_by_source_ip_and_without_a_hash(make_upstream, make_proxy, lb_policy):
    ups, p = ring_hash_proxy(make_upstream, make_proxy, [{"connection_properties": {"source_ip": True}}],
                             lb_policy=lb_policy)
    # Every request comes from 127.0.0.1: one host.
    assert len({port_for(p) for _ in range(20)}) == 1
    # No policy yields a hash: a random point each time, so every host serves.
    ups, p = ring_hash_proxy(make_upstream, make_proxy, [{"header": {"header_name": "x-absent"}}],
                             lb_policy=lb_policy)
    assert set(served_by(p, 90)) == {u.port for u in ups}


@pytest.mark.parametrize(("lb_policy", "share"), [("RING_HASH", 0.6), ("MAGLEV", 0.8)])
def test_hashing_keeps_most_keys_when_a_host_goes(make_upstream, make_proxy, lb_policy, share):
    # Consistent hashing: dropping one of four hosts moves its keys and few others. Envoy's ring
    # gives each remaining host more points (342 instead of 256 at the default minimum size),
    # which take about a sixth of their keys; Maglev's rebuilt table hands the host's slots to
    # the others and moves few of theirs (the paper's minimal disruption, not zero).
    ups = [make_upstream() for _ in range(4)]
    policy = [{"header": {"header_name": "x-user"}}]

    def mapping(hosts):
        c = cluster("c", *(u.port for u in hosts), lb_policy=lb_policy)
        p = make_proxy(bootstrap([route("/", "c", hash_policy=policy)], [c]))
        return {k: port_for(p, {"x-user": k}) for k in (f"k{i}" for i in range(60))}

    before, after = mapping(ups), mapping(ups[:3])
    kept = [k for k in before if before[k] != ups[3].port]
    assert len(kept) < len(before)
    stayed = sum(after[k] == before[k] for k in kept)
    assert stayed >= share * len(kept), (stayed, len(kept))
