"""A cluster's `outlier_detection` (Envoy's passive health checking): consecutive 5xx, gateway
and local-origin failures, success rate and failure percentage, the ejection time and its
growth, the ejection limit, the stats and the admin `/clusters` output. Every expectation here
was checked against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy runs this file against
it; docs/envoy-behaviour.md section 26)."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from tests.dataplane.conftest import TARGET_IS_ENVOY, RawConn, admin_get, get
from tests.support.configs import bootstrap, cluster, route
from tests.support.wait import wait_for, wait_stat

OD = "cluster.up.outlier_detection."


def outlier(**fields: Any) -> dict[str, Any]:
    """Outlier detection fast enough for tests, every host allowed out."""
    od: dict[str, Any] = {
        "consecutive_5xx": 3, "interval": "0.1s", "base_ejection_time": "0.5s",
        "max_ejection_percent": 100,
    }  # fmt: skip
    od.update(fields)
    return od


def active_check(timeout: str, every: str, unhealthy_threshold: int = 1) -> dict[str, Any]:
    """An HTTP check of `/healthz` every `every`, with or without traffic."""
    return {
        "timeout": timeout, "interval": every, "no_traffic_interval": every,
        "unhealthy_threshold": unhealthy_threshold, "healthy_threshold": 1,
        "http_health_check": {"path": "/healthz"},
    }  # fmt: skip


def od_proxy(make_proxy: Any, ports: list[int], od: dict[str, Any], **extra: Any) -> Any:
    return make_proxy(
        bootstrap([route("/", "up")], [cluster("up", *ports, outlier_detection=od, **extra)])
    )


def host_field(proxy: Any, field: str) -> dict[int, str]:
    """Each host's `field` in `/clusters` text, by port."""
    out = {}
    for line in admin_get(proxy, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "up" and parts[2] == field:
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


def wait_flags(proxy: Any, port: int, want: str, timeout: float = 5.0) -> None:
    last: list[Any] = [None]

    def ok() -> bool:
        last[0] = host_field(proxy, "health_flags").get(port)
        return last[0] == want

    try:
        wait_for(ok, timeout, f"health_flags {want}")
    except AssertionError:
        raise AssertionError(f"health_flags of {port}: {last[0]!r}, expected {want!r}") from None


def send(proxy: Any, n: int) -> list[tuple[int, str]]:
    """`n` requests on one connection: each one's status and body (the upstream's name)."""
    out = []
    with RawConn(proxy.listener_port()) as c:
        for i in range(n):
            r = c.request(get(f"/r{i}"))
            out.append((r.status, r.body.decode()))
    return out


def fail_until_ejected(proxy: Any, port: int, stat: str, n: int = 1) -> None:
    """Sends requests until `stat` reaches `n` and the host at `port` shows as ejected."""
    wait_for(lambda: send(proxy, 1) and proxy.stats().get(OD + stat, 0) >= n, what=stat)
    wait_flags(proxy, port, "/failed_outlier_check")


# --- consecutive failures -------------------------------------------------------------------------


def test_consecutive_5xx_ejects_the_host_until_its_time_is_over(make_proxy: Any, ups: Any) -> None:
    bad, good = ups("bad"), ups("good")
    bad.serve_status = 500
    p = od_proxy(make_proxy, [bad.port, good.port], outlier(base_ejection_time="1s"))
    # Round robin: the bad host's third 500 in a row ejects it.
    got = send(p, 6)
    assert sorted(s for s, _ in got) == [200, 200, 200, 500, 500, 500]
    wait_stat(p, OD + "ejections_enforced_consecutive_5xx", 1)
    wait_flags(p, bad.port, "/failed_outlier_check")
    s = p.stats()
    assert s[OD + "ejections_active"] == 1
    assert s[OD + "ejections_detected_consecutive_5xx"] == 1
    assert s[OD + "ejections_enforced_total"] == 1
    assert s[OD + "ejections_total"] == 1
    assert s[OD + "ejections_consecutive_5xx"] == 1
    # While out, every request goes to the good host.
    assert {b for _, b in send(p, 6)} == {"good"}
    assert host_field(p, "health_flags")[good.port] == "healthy"
    # Back after base_ejection_time, at an interval.
    t0 = time.monotonic()
    wait_flags(p, bad.port, "healthy", timeout=5)
    assert time.monotonic() - t0 > 0.5
    wait_stat(p, OD + "ejections_active", 0)
    bad.serve_status = 200
    assert {b for _, b in send(p, 4)} == {"bad", "good"}


def test_an_ejected_hosts_connections_are_closed(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    p = od_proxy(make_proxy, [u.port, v.port], outlier(base_ejection_time="30s"))
    send(p, 4)
    # Each host has a pooled connection.
    assert (u.connections, v.connections) == (1, 1)
    assert (u.closed, v.closed) == (0, 0)
    send(p, 2)
    wait_flags(p, u.port, "/failed_outlier_check")
    # Envoy drains an ejected host's pools: its idle connection is closed, the other host's
    # kept.
    wait_for(lambda: u.closed == 1, what="the ejected host's connection closed")
    wait_stat(p, "cluster.up.upstream_cx_destroy_local", 1)
    assert v.closed == 0
    assert {b for _, b in send(p, 4)} == {"v"}
    assert v.connections == 1


def test_a_success_between_failures_starts_the_count_over(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = od_proxy(make_proxy, [u.port], outlier())
    for status in (500, 500, 200, 500, 500):
        u.serve_status = status
        send(p, 1)
    assert p.stats().get(OD + "ejections_detected_consecutive_5xx", 0) == 0
    u.serve_status = 500
    send(p, 1)
    wait_stat(p, OD + "ejections_detected_consecutive_5xx", 1)


def test_a_4xx_is_a_success(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = od_proxy(make_proxy, [u.port], outlier(consecutive_5xx=2))
    for status in (500, 404, 500, 499, 500):
        u.serve_status = status
        send(p, 1)
    assert p.stats().get(OD + "ejections_detected_consecutive_5xx", 0) == 0


def test_gateway_failures_are_detected_but_not_enforced_by_default(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 503
    p = od_proxy(make_proxy, [u.port, v.port], outlier(consecutive_5xx=100, consecutive_gateway_failure=2))
    wait_for(lambda: send(p, 1) and p.stats()[OD + "ejections_detected_consecutive_gateway_failure"] == 1,
             what="a detection")
    s = p.stats()
    assert s[OD + "ejections_enforced_consecutive_gateway_failure"] == 0
    assert s[OD + "ejections_active"] == 0
    assert host_field(p, "health_flags")[u.port] == "healthy"


def test_enforced_gateway_failures_eject_and_a_500_breaks_their_run(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    p = od_proxy(make_proxy, [u.port], outlier(
        consecutive_5xx=100, consecutive_gateway_failure=2,
        enforcing_consecutive_gateway_failure=100))  # fmt: skip
    for status in (502, 500, 504):
        u.serve_status = status
        send(p, 1)
    assert p.stats().get(OD + "ejections_detected_consecutive_gateway_failure", 0) == 0
    u.serve_status = 503
    send(p, 1)
    wait_stat(p, OD + "ejections_enforced_consecutive_gateway_failure", 1)
    wait_flags(p, u.port, "/failed_outlier_check")
    del v


def test_a_refused_connect_counts_as_a_5xx(make_proxy: Any, ups: Any) -> None:
    down, good = ups("down"), ups("good")
    down.refuse()
    p = od_proxy(make_proxy, [down.port, good.port], outlier())
    got = send(p, 6)
    assert sorted(s for s, _ in got) == [200, 200, 200, 503, 503, 503]
    wait_stat(p, OD + "ejections_enforced_consecutive_5xx", 1)
    wait_flags(p, down.port, "/failed_outlier_check")
    assert {b for _, b in send(p, 4)} == {"good"}


def test_split_local_origin_failures_eject_apart_from_5xx(make_proxy: Any, ups: Any) -> None:
    down, err, good = ups("down"), ups("err"), ups("good")
    down.refuse()
    err.serve_status = 500
    p = od_proxy(make_proxy, [down.port, err.port, good.port], outlier(
        split_external_local_origin_errors=True, consecutive_local_origin_failure=2,
        consecutive_5xx=2))  # fmt: skip
    wait_for(lambda: send(p, 1) and p.stats()[OD + "ejections_active"] == 2, what="both ejected")
    s = p.stats()
    assert s[OD + "ejections_enforced_consecutive_local_origin_failure"] == 1
    assert s[OD + "ejections_enforced_consecutive_5xx"] == 1
    assert s[OD + "ejections_detected_consecutive_local_origin_failure"] == 1
    assert s[OD + "ejections_detected_consecutive_5xx"] == 1
    assert s[OD + "ejections_active"] == 2
    flags = host_field(p, "health_flags")
    assert flags[down.port] == flags[err.port] == "/failed_outlier_check"


def test_each_try_of_a_retried_request_counts(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.serve_status = 500
    p = make_proxy(bootstrap(
        [route("/", "up", retry_policy={"retry_on": "5xx", "num_retries": 2})],
        [cluster("up", u.port, outlier_detection=outlier())]))  # fmt: skip
    # One request, three tries of 500: the third in a row ejects the host.
    assert send(p, 1)[0][0] == 500
    wait_stat(p, OD + "ejections_enforced_consecutive_5xx", 1)
    assert len(u.served) == 3


def test_a_reset_counts_as_a_503_and_a_timeout_as_a_504(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = make_proxy(bootstrap(
        [route("/", "up", timeout="0.2s")],
        [cluster("up", u.port, outlier_detection=outlier(
            consecutive_5xx=100, consecutive_gateway_failure=3,
            enforcing_consecutive_gateway_failure=0))]))  # fmt: skip
    u.serve_reset = True
    assert send(p, 1)[0][0] == 503
    u.serve_reset, u.serve_hang = False, True
    assert send(p, 1)[0][0] == 504
    assert p.stats().get(OD + "ejections_detected_consecutive_gateway_failure", 0) == 0
    u.serve_hang, u.serve_reset = False, True
    assert send(p, 1)[0][0] == 503
    # Three gateway failures in a row: detected (not enforced by default).
    wait_stat(p, OD + "ejections_detected_consecutive_gateway_failure", 1)


def test_split_a_reset_after_connecting_is_no_local_failure_run(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_reset = True
    p = od_proxy(make_proxy, [u.port, v.port], outlier(
        split_external_local_origin_errors=True, consecutive_local_origin_failure=2,
        consecutive_5xx=2))  # fmt: skip
    # Each try connects first (a local-origin success), so resets never make a run of two; nor
    # are they 5xx responses.
    got = send(p, 8)
    assert sorted(s for s, _ in got) == [200] * 4 + [503] * 4
    assert p.stats().get(OD + "ejections_detected_consecutive_local_origin_failure", 0) == 0
    assert p.stats().get(OD + "ejections_detected_consecutive_5xx", 0) == 0


def test_immediate_health_check_fail_without_active_checks_changes_nothing(
    make_proxy: Any, ups: Any
) -> None:
    u = ups()
    u.serve_extra = "x-envoy-immediate-health-check-fail: true\r\n"
    p = od_proxy(make_proxy, [u.port], outlier(consecutive_5xx=1))
    assert [s for s, _ in send(p, 3)] == [200, 200, 200]
    assert host_field(p, "health_flags")[u.port] == "healthy"
    assert p.stats()[OD + "ejections_detected_consecutive_5xx"] == 0


def test_the_code_counts_when_the_head_comes(make_proxy: Any, make_canned: Any) -> None:
    # A 200 whose body is still coming ends a run of 500s: Envoy's router reports the code
    # with the head. The gateway failures of another cluster, told after it, are the barrier
    # (a worker's reports reach the detectors in order).
    release = threading.Event()

    def slow(sock: socket.socket, _: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        release.wait(10)
        sock.sendall(b"ok")

    u = make_canned({"/slow": slow, "*": b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n"})
    w = make_canned({"*": b"HTTP/1.1 502 X\r\ncontent-length: 0\r\n\r\n"})
    p = make_proxy(bootstrap([route("/w", "w"), route("/", "up")], [
        cluster("up", u.port, outlier_detection=outlier(consecutive_5xx=3)),
        cluster("w", w.port, outlier_detection=outlier(consecutive_5xx=100, consecutive_gateway_failure=1)),
    ]))  # fmt: skip
    assert [s for s, _ in send(p, 2)] == [500, 500]
    with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=5) as c:
        c.sendall(get("/slow"))
        got = b""
        while b"\r\n\r\n" not in got:
            got += c.recv(4096)
        assert got.startswith(b"HTTP/1.1 200")
        assert [s for s, _ in send(p, 1)] == [500]
        with RawConn(p.listener_port()) as r:
            assert r.request(get("/w")).status == 502
        wait_stat(p, "cluster.w.outlier_detection.ejections_detected_consecutive_gateway_failure", 1)
        # 500, 500, 200, 500: no run of three.
        assert p.stats()[OD + "ejections_detected_consecutive_5xx"] == 0
        release.set()


# --- the ejection limit, time and backoff ---------------------------------------------------------


def test_max_ejection_percent_counts_the_host_to_eject(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    a.serve_status = b.serve_status = 500
    p = od_proxy(make_proxy, [a.port, b.port], outlier(max_ejection_percent=50, base_ejection_time="30s"))
    send(p, 6)
    wait_stat(p, OD + "ejections_overflow", 1)
    s = p.stats()
    assert s[OD + "ejections_active"] == 1
    assert s[OD + "ejections_enforced_consecutive_5xx"] == 1
    assert s[OD + "ejections_detected_consecutive_5xx"] == 2


def test_default_max_ejection_percent_ejects_no_host_of_two(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    a.serve_status = 500
    p = od_proxy(make_proxy, [a.port, b.port], {"consecutive_5xx": 2, "interval": "0.1s"})
    wait_for(lambda: send(p, 1) and p.stats()[OD + "ejections_overflow"] == 1, what="an overflow")
    assert p.stats()[OD + "ejections_active"] == 0
    assert host_field(p, "health_flags")[a.port] == "healthy"


def test_always_eject_one_host(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    a.serve_status = b.serve_status = 500
    p = od_proxy(make_proxy, [a.port, b.port], {
        "consecutive_5xx": 2, "interval": "0.1s", "always_eject_one_host": True})  # fmt: skip
    send(p, 4)
    wait_stat(p, OD + "ejections_enforced_consecutive_5xx", 1)
    wait_stat(p, OD + "ejections_overflow", 1)
    assert p.stats()[OD + "ejections_active"] == 1


def test_each_ejection_in_a_row_lasts_longer(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    # A base of 1 s: Envoy delays a health change that comes within 1 s of the one before
    # (update_merge_window), which a shorter base would measure instead.
    p = od_proxy(make_proxy, [u.port, v.port], outlier(
        consecutive_5xx=1, interval="0.5s", base_ejection_time="1s"))  # fmt: skip
    times = []
    back = 0.0
    for n in (1, 2):
        # Ejected again at once (within the interval it came back in, so the multiplier stays).
        fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx", n)
        t0 = time.monotonic()
        times.append(t0 - back)
        wait_flags(p, u.port, "healthy", timeout=5)
        back = time.monotonic()
        times.append(back - t0)
    # 1 s the first time, 2 s the second, each ended at a 0.5 s interval.
    assert 0.85 < times[1] < 1.75, times
    assert times[2] < 0.5, f"ejected again {times[2]:.2f} s after it came back: {times}"
    assert 1.85 < times[3] < 2.75, times


# --- success rate and failure percentage ----------------------------------------------------------


def test_success_rate_ejects_the_outlier(make_proxy: Any, ups: Any) -> None:
    hosts = [ups(f"h{i}") for i in range(5)]
    # One host fails every other request; no run of failures reaches consecutive_5xx.
    p = od_proxy(make_proxy, [h.port for h in hosts], outlier(
        interval="3s", consecutive_5xx=1000, success_rate_request_volume=10,
        base_ejection_time="30s"))  # fmt: skip
    bad = hosts[4]
    with RawConn(p.listener_port()) as c:
        # Round robin: each run of five requests reaches every host once.
        for i in range(100):
            bad.serve_status = 500 if (i // 5) % 2 == 0 else 200
            c.request(get("/"))
    wait_stat(p, OD + "ejections_enforced_success_rate", 1, timeout=8)
    s = p.stats()
    assert s[OD + "ejections_detected_success_rate"] == 1
    assert s[OD + "ejections_success_rate"] == 1
    wait_flags(p, bad.port, "/failed_outlier_check")
    # The figures of the interval that judged it, shown until the next: each host's rate, the
    # mean and the threshold (the mean less 1.9 standard deviations). The interval may have
    # cut the run, so the bad host's rate is about 50%.
    rates = host_field(p, "success_rate")
    assert rates[hosts[0].port] == "100"
    text = admin_get(p, "/clusters")
    figures = dict(
        line.split("::")[2:] for line in text.splitlines() if line.startswith("up::outlier::")
    )
    assert figures["local_origin_success_rate_average"] == "-1"
    assert figures["local_origin_success_rate_ejection_threshold"] == "-1"
    average = float(figures["success_rate_average"])
    assert 85 < average < 95
    threshold = float(figures["success_rate_ejection_threshold"])
    assert threshold < average
    # JSON: the threshold on the cluster, each host's rate once it has one.
    doc = json.loads(admin_get(p, "/clusters?format=json"))
    (up,) = [c for c in doc["cluster_statuses"] if c["name"] == "up"]
    assert list(up)[:3] == ["name", "success_rate_ejection_threshold", "host_statuses"]
    assert abs(up["success_rate_ejection_threshold"]["value"] - threshold) < 1e-3
    assert "local_origin_success_rate_ejection_threshold" not in up
    by_port = {h["address"]["socket_address"]["port_value"]: h for h in up["host_statuses"]}
    assert by_port[hosts[0].port]["success_rate"] == {"value": 100}
    assert list(by_port[hosts[0].port])[:5] == [
        "address", "stats", "health_status", "success_rate", "weight"]  # fmt: skip
    assert "local_origin_success_rate" not in by_port[hosts[0].port]


def test_failure_percentage_ejects_hosts_over_the_threshold(make_proxy: Any, ups: Any) -> None:
    hosts = [ups(f"h{i}") for i in range(2)]
    hosts[0].serve_status = 500
    p = od_proxy(make_proxy, [h.port for h in hosts], outlier(
        interval="1s", consecutive_5xx=1000, enforcing_success_rate=0,
        enforcing_failure_percentage=100, failure_percentage_minimum_hosts=2,
        failure_percentage_request_volume=5, base_ejection_time="30s"))  # fmt: skip
    send(p, 20)
    wait_stat(p, OD + "ejections_enforced_failure_percentage", 1, timeout=5)
    assert p.stats()[OD + "ejections_detected_failure_percentage"] == 1
    wait_flags(p, hosts[0].port, "/failed_outlier_check")
    assert host_field(p, "health_flags")[hosts[1].port] == "healthy"


# --- with the balancer and active health checks ---------------------------------------------------


def test_ejected_hosts_count_toward_the_panic_threshold(make_proxy: Any, ups: Any) -> None:
    hosts = [ups(f"h{i}") for i in range(3)]
    for h in hosts[:2]:
        h.serve_status = 500
    p = od_proxy(make_proxy, [h.port for h in hosts], outlier(consecutive_5xx=1, base_ejection_time="30s"))
    wait_for(lambda: send(p, 1) and p.stats()[OD + "ejections_active"] == 2, what="two ejections")
    wait_stat(p, "cluster.up.membership_healthy", 1)
    # One healthy host of three is below the 50% panic threshold: every host is picked again
    # (Envoy's workers may see the second ejection up to 1 s late, its update_merge_window).
    hosts[0].serve_status = hosts[1].serve_status = 200
    wait_for(lambda: send(p, 1) and p.stats()["cluster.up.lb_healthy_panic"] > 0, what="panic")
    assert {b for _, b in send(p, 6)} == {"h0", "h1", "h2"}
    assert p.stats()["cluster.up.membership_healthy"] == 1


def test_a_passing_active_check_brings_an_ejected_host_back(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    hc = active_check("1s", "0.3s")
    p = od_proxy(make_proxy, [u.port, v.port], outlier(base_ejection_time="60s"), health_checks=[hc])
    fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx")
    # The next check passes: the host is back long before its 60 s.
    wait_flags(p, u.port, "healthy", timeout=3)
    wait_stat(p, OD + "ejections_active", 0)


def test_a_failed_active_check_leaves_an_ejected_host_out(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    # The checks of u time out, far below the unhealthy threshold: the host stays healthy to
    # the active check, and ejected.
    hc = active_check("0.1s", "0.1s", unhealthy_threshold=1000)
    p = od_proxy(make_proxy, [u.port, v.port], outlier(base_ejection_time="60s"), health_checks=[hc])
    u.hang = True
    fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx")
    n = len(u.checks)
    wait_for(lambda: len(u.checks) >= n + 3, what="three more checks")
    assert host_field(p, "health_flags")[u.port] == "/failed_outlier_check"
    u.hang = False
    wait_flags(p, u.port, "healthy")


def test_without_uneject_by_active_check_the_host_stays_out(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    hc = active_check("1s", "0.1s")
    p = od_proxy(make_proxy, [u.port, v.port], outlier(
        base_ejection_time="60s", successful_active_health_check_uneject_host=False), health_checks=[hc])  # fmt: skip
    fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx")
    n = len(u.checks)
    wait_for(lambda: len(u.checks) >= n + 3, what="three more checks")
    assert host_field(p, "health_flags")[u.port] == "/failed_outlier_check"


# --- stats and admin ------------------------------------------------------------------------------

OUTLIER_STATS = [
    "ejections_active", "ejections_consecutive_5xx", "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_detected_consecutive_local_origin_failure", "ejections_detected_degradation",
    "ejections_detected_failure_percentage",
    "ejections_detected_local_origin_failure_percentage",
    "ejections_detected_local_origin_success_rate", "ejections_detected_success_rate",
    "ejections_enforced_consecutive_5xx", "ejections_enforced_consecutive_gateway_failure",
    "ejections_enforced_consecutive_local_origin_failure", "ejections_enforced_failure_percentage",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_enforced_local_origin_success_rate", "ejections_enforced_success_rate",
    "ejections_enforced_total", "ejections_overflow", "ejections_success_rate", "ejections_total",
]  # fmt: skip


def test_stats_exist_only_for_a_cluster_with_outlier_detection(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = make_proxy(bootstrap([route("/", "up")], [
        cluster("up", u.port, outlier_detection={}), cluster("plain", u.port)]))  # fmt: skip
    s = p.stats()
    have = sorted(k[len(OD):] for k in s if k.startswith(OD))
    assert have == OUTLIER_STATS
    assert all(s[OD + k] == 0 for k in have)
    assert not [k for k in s if k.startswith("cluster.plain.outlier_detection.")]


def test_clusters_json_shows_the_ejection(make_proxy: Any, ups: Any) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    p = od_proxy(make_proxy, [u.port, v.port], outlier(base_ejection_time="30s"))
    fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx")
    doc = json.loads(admin_get(p, "/clusters?format=json"))
    (up,) = [c for c in doc["cluster_statuses"] if c["name"] == "up"]
    by_port = {h["address"]["socket_address"]["port_value"]: h for h in up["host_statuses"]}
    assert by_port[u.port]["health_status"] == {
        "failed_outlier_check": True, "eds_health_status": "HEALTHY"}  # fmt: skip
    assert by_port[v.port]["health_status"] == {"eds_health_status": "HEALTHY"}
    text = admin_get(p, "/clusters")
    assert f"up::127.0.0.1:{u.port}::success_rate::-1\n" in text


# --- pyproxy only -----------------------------------------------------------------------------------


@pytest.mark.skipif(TARGET_IS_ENVOY, reason="apply is pyproxy's API")
def test_apply_keeps_an_unchanged_clusters_ejections_and_a_changed_one_starts_afresh(
    make_proxy: Any, ups: Any
) -> None:
    u, v = ups("u"), ups("v")
    u.serve_status = 500
    cfg = bootstrap([route("/", "up")], [
        cluster("up", u.port, v.port, outlier_detection=outlier(base_ejection_time="60s"))])  # fmt: skip
    p = make_proxy(cfg)
    fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx")
    # Another cluster added: `up` keeps its detector and its ejection.
    cfg["static_resources"]["clusters"].append(cluster("other", v.port))
    p.apply(cfg)
    assert host_field(p, "health_flags")[u.port] == "/failed_outlier_check"
    assert {b for _, b in send(p, 4)} == {"v"}
    assert p.stats()[OD + "ejections_active"] == 1
    # `up` changed: a new detector, no host ejected (as Envoy builds a changed cluster anew);
    # the counters go on, and the new detector counts the host's failures from zero.
    cfg["static_resources"]["clusters"][0]["outlier_detection"] = outlier(
        base_ejection_time="60s", consecutive_5xx=2)
    p.apply(cfg)
    assert host_field(p, "health_flags")[u.port] == "healthy"
    s = p.stats()
    assert s[OD + "ejections_active"] == 0
    assert s[OD + "ejections_enforced_consecutive_5xx"] == 1
    fail_until_ejected(p, u.port, "ejections_enforced_consecutive_5xx", 2)
    assert p.stats()[OD + "ejections_active"] == 1
    # Outlier detection removed: the host is back, and its failures eject nothing.
    del cfg["static_resources"]["clusters"][0]["outlier_detection"]
    p.apply(cfg)
    assert host_field(p, "health_flags")[u.port] == "healthy"
    assert sorted(s for s, _ in send(p, 6)) == [200, 200, 200, 500, 500, 500]
    # Its stats go with the old detector.
    wait_for(lambda: not [k for k in p.stats() if k.startswith(OD)], what="the stats gone")
