"""A cluster's active `health_checks` (HTTP and TCP): what a check sends, when a host turns
unhealthy and healthy again, how the balancer leaves unhealthy hosts out (and Envoy's panic
threshold), the stats and the admin `/clusters` flags. Every expectation here was checked
against the envoy binary (PYPROXY_DATAPLANE_TARGET=envoy runs this file against it;
docs/envoy-behaviour.md section 25)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dataplane.conftest import TARGET_IS_ENVOY, RawConn, admin_get, get
from tests.support.configs import bootstrap, cluster, route
from tests.support.wait import wait_for, wait_stat

HC = "cluster.up.health_check."


def health_check(**fields: Any) -> dict[str, Any]:
    """An HTTP check of `/healthz`, fast enough for tests: Envoy checks a cluster that has had no
    traffic only every `no_traffic_interval` (60 s by default), so it is as short here."""
    hc: dict[str, Any] = {
        "timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
        "unhealthy_threshold": 1, "healthy_threshold": 1,
        "http_health_check": {"path": "/healthz"},
    }  # fmt: skip
    hc.update(fields)
    return hc


def checked_proxy(make_proxy: Any, ports: list[int], hc: dict[str, Any], **extra: Any) -> Any:
    return make_proxy(bootstrap([route("/", "up")], [cluster("up", *ports, health_checks=[hc], **extra)]))


def flags(proxy: Any) -> dict[int, str]:
    """Each host's `health_flags` in `/clusters`, by port."""
    out = {}
    for line in admin_get(proxy, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            out[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return out


def wait_flags(proxy: Any, port: int, want: str, timeout: float = 5.0) -> None:
    last: list[Any] = [None]

    def ok() -> bool:
        last[0] = flags(proxy).get(port)
        return last[0] == want

    try:
        wait_for(ok, timeout, f"health_flags {want}")
    except AssertionError:
        raise AssertionError(f"health_flags of {port}: {last[0]!r}, expected {want!r}") from None


def served_by(proxy: Any, n: int) -> list[str]:
    port = proxy.listener_port()
    with RawConn(port) as c:
        return [c.request(get(f"/r{i}")).body.decode() for i in range(n)]


# --- what a check sends ---------------------------------------------------------------------------


def test_http_check_request_on_the_wire(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = checked_proxy(make_proxy, [u.port], health_check())
    wait_for(lambda: len(u.checks) >= 3, what="three checks")
    # One kept connection carries every check (reuse_connection defaults to true).
    assert {conn for _, conn, _ in u.checks} == {1}
    assert u.checks[0][0] == b"GET /healthz HTTP/1.1\r\nhost: up\r\nuser-agent: Envoy/HC"
    # The upstream records a check before it answers; the proxy counts it once answered.
    wait_for(lambda: p.stats()[HC + "success"] >= 3, what="three successes counted")
    # Checks are not upstream traffic.
    assert p.stats().get("cluster.up.upstream_cx_total", 0) == 0
    assert p.stats().get("cluster.up.upstream_rq_total", 0) == 0


def test_http_check_host_and_added_headers(make_proxy: Any, ups: Any) -> None:
    u = ups()
    checked_proxy(make_proxy, [u.port], health_check(http_health_check={
        "path": "/healthz?deep=1", "host": "svc.local",
        "request_headers_to_add": [
            {"header": {"key": "user-agent", "value": "mine"}},
            {"header": {"key": "x-check", "value": "1"}},
        ],
    }))  # fmt: skip
    wait_for(lambda: u.checks, what="a check")
    assert u.checks[0][0] == (
        b"GET /healthz?deep=1 HTTP/1.1\r\nhost: svc.local\r\nuser-agent: Envoy/HC,mine\r\nx-check: 1"
    )


def test_added_headers_of_one_name_go_on_lines_of_their_own(make_proxy: Any, ups: Any) -> None:
    u = ups()
    checked_proxy(make_proxy, [u.port], health_check(http_health_check={
        "path": "/healthz", "request_headers_to_add": [
            {"header": {"key": "x-d", "value": "1"}}, {"header": {"key": "x-d", "value": "2"}},
            {"header": {"key": "x-empty", "value": ""}},
            {"header": {"key": "x-kept", "value": ""}, "keep_empty_value": True}]}))  # fmt: skip
    wait_for(lambda: u.checks, what="a check")
    assert u.checks[0][0] == (
        b"GET /healthz HTTP/1.1\r\nhost: up\r\nuser-agent: Envoy/HC\r\nx-d: 1\r\nx-d: 2\r\nx-kept: "
    )


def test_overwritten_and_removed_headers(make_proxy: Any, ups: Any) -> None:
    u, v = ups(), ups()
    make_proxy(bootstrap([route("/", "up")], [
        cluster("up", u.port, health_checks=[health_check(http_health_check={
            "path": "/healthz", "request_headers_to_add": [
                {"header": {"key": "user-agent", "value": "mine"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]})]),
        cluster("other", v.port, health_checks=[health_check(http_health_check={
            "path": "/healthz", "request_headers_to_remove": ["user-agent"]})]),
    ]))  # fmt: skip
    wait_for(lambda: u.checks and v.checks, what="a check of each")
    assert u.checks[0][0] == b"GET /healthz HTTP/1.1\r\nhost: up\r\nuser-agent: mine"
    assert v.checks[0][0] == b"GET /healthz HTTP/1.1\r\nhost: other"


def test_head_check(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = checked_proxy(make_proxy, [u.port], health_check(http_health_check={"path": "/healthz", "method": "HEAD"}))
    wait_for(lambda: len(u.checks) >= 2, what="two checks")
    assert u.checks[0][0] == b"HEAD /healthz HTTP/1.1\r\nhost: up\r\nuser-agent: Envoy/HC"
    assert flags(p)[u.port] == "healthy"


def test_without_reuse_each_check_has_its_own_connection(make_proxy: Any, ups: Any) -> None:
    u = ups()
    checked_proxy(make_proxy, [u.port], health_check(reuse_connection=False))
    wait_for(lambda: len(u.checks) >= 3, what="three checks")
    assert [conn for _, conn, _ in u.checks[:3]] == [1, 2, 3]
    # The proxy closes each connection after its response.
    wait_for(lambda: u.closed >= 2, what="the first connections closed")


def test_upstream_closing_after_a_check_is_no_failure(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.extra = "connection: close\r\n"
    p = checked_proxy(make_proxy, [u.port], health_check())
    wait_for(lambda: len(u.checks) >= 3, what="three checks")
    assert [conn for _, conn, _ in u.checks[:3]] == [1, 2, 3]
    s = p.stats()
    assert s.get(HC + "failure", 0) == 0
    assert flags(p)[u.port] == "healthy"


# --- health and the balancer ------------------------------------------------------------------------


def test_first_check_is_done_when_the_proxy_starts(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.status = 503
    p = checked_proxy(make_proxy, [u.port], health_check(interval="5s", no_traffic_interval="5s"))
    # The listener opened only once the host had its first check, which failed.
    assert p.stats()[HC + "failure"] == 1
    assert flags(p)[u.port] == "/failed_active_hc"


def test_a_failing_host_leaves_the_balancer(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    b.status = 503
    p = checked_proxy(make_proxy, [a.port, b.port], health_check())
    wait_flags(p, b.port, "/failed_active_hc")
    assert flags(p)[a.port] == "healthy"
    assert served_by(p, 8) == ["a"] * 8
    s = p.stats()
    assert s[HC + "healthy"] == 1
    assert s["cluster.up.membership_healthy"] == 1
    assert s["cluster.up.membership_total"] == 2
    assert s.get(HC + "network_failure", 0) == 0
    assert s.get("cluster.up.lb_healthy_panic", 0) == 0
    # A health change is no membership change.
    assert s["cluster.up.membership_change"] == 1
    # It comes back with its next good check (healthy_threshold 1).
    b.status = 200
    wait_flags(p, b.port, "healthy")
    wait_for(lambda: set(served_by(p, 8)) == {"a", "b"}, what="both hosts serving")
    assert p.stats()["cluster.up.membership_healthy"] == 2


def test_a_bad_status_fails_at_once_network_failures_need_the_threshold(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = checked_proxy(make_proxy, [u.port], health_check(
        interval="1s", no_traffic_interval="1s", unhealthy_threshold=2, healthy_threshold=2))
    # A refused connect counts toward unhealthy_threshold: one leaves the host healthy.
    u.refuse()
    wait_stat(p, HC + "network_failure", 1)
    assert flags(p)[u.port] == "healthy"
    wait_stat(p, HC + "network_failure", 2)
    wait_flags(p, u.port, "/failed_active_hc")
    # Back: healthy_threshold successes in a row.
    u.listen()
    ok = p.stats()[HC + "success"]
    wait_stat(p, HC + "success", ok + 1)
    assert flags(p)[u.port] == "/failed_active_hc"
    wait_flags(p, u.port, "healthy")
    assert p.stats()[HC + "success"] == ok + 2
    # A status it does not expect fails a healthy host at once, whatever the threshold.
    u.status = 500
    failures = p.stats()[HC + "failure"]
    wait_stat(p, HC + "failure", failures + 1)
    assert flags(p)[u.port] == "/failed_active_hc"


def test_expected_and_retriable_statuses(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.status = 204
    p = checked_proxy(make_proxy, [u.port], health_check(
        interval="1s", no_traffic_interval="1s", unhealthy_threshold=2,
        http_health_check={"path": "/healthz", "expected_statuses": [{"start": 200, "end": 300}],
                           "retriable_statuses": [{"start": 503, "end": 504}]}))  # fmt: skip
    assert flags(p)[u.port] == "healthy"
    # A retriable status counts toward the threshold (not as a network failure).
    u.status = 503
    failures = p.stats().get(HC + "failure", 0)
    wait_stat(p, HC + "failure", failures + 1)
    assert flags(p)[u.port] == "healthy"
    wait_stat(p, HC + "failure", failures + 2)
    assert flags(p)[u.port] == "/failed_active_hc"
    assert p.stats().get(HC + "network_failure", 0) == 0


def test_a_timeout_is_a_network_failure_and_shows(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.hang = True
    p = checked_proxy(make_proxy, [u.port], health_check(timeout="0.3s"))
    s = p.stats()
    assert s[HC + "network_failure"] >= 1
    assert s.get(HC + "success", 0) == 0
    assert flags(p)[u.port] == "/failed_active_hc/active_hc_timeout"
    j = json.loads(admin_get(p, "/clusters?format=json"))
    status = j["cluster_statuses"][0]["host_statuses"][0]["health_status"]
    assert status == {"failed_active_health_check": True, "eds_health_status": "HEALTHY", "active_hc_timeout": True}
    # Each timed-out check's connection is closed; the next one connects again.
    wait_for(lambda: u.connections >= 2, what="a second connection")


def test_degraded_host(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    b.extra = "x-envoy-degraded: 1\r\n"
    p = checked_proxy(make_proxy, [a.port, b.port], health_check())
    wait_flags(p, b.port, "/degraded_active_hc")
    s = p.stats()
    assert s["cluster.up.membership_degraded"] == 1
    assert s["cluster.up.membership_healthy"] == 1
    assert s[HC + "healthy"] == 2
    j = json.loads(admin_get(p, "/clusters?format=json"))
    statuses = {h["address"]["socket_address"]["port_value"]: h["health_status"]
                for h in j["cluster_statuses"][0]["host_statuses"]}  # fmt: skip
    assert statuses[b.port] == {"eds_health_status": "HEALTHY", "failed_active_degraded_check": True}
    # Envoy's load: the healthy host takes what it can (1.4 × 1/2 = 70%), the degraded one the
    # rest (30%); 300 picks put the degraded share well within 15% to 45%.
    served = served_by(p, 300)
    assert 45 <= served.count("b") <= 135, served.count("b")
    b.extra = ""
    wait_flags(p, b.port, "healthy")


def test_a_failure_keeps_the_degraded_flag(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    b.extra = "x-envoy-degraded: 1\r\n"
    p = checked_proxy(make_proxy, [a.port, b.port], health_check())
    wait_flags(p, b.port, "/degraded_active_hc")
    b.status = 503
    wait_flags(p, b.port, "/failed_active_hc/degraded_active_hc")
    s = p.stats()
    # A failed host is in neither the healthy nor the degraded count.
    assert s["cluster.up.membership_healthy"] == 1
    assert s["cluster.up.membership_degraded"] == 0


def test_immediate_fail_header_on_a_check_changes_nothing(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.extra = "x-envoy-immediate-health-check-fail: true\r\n"
    p = checked_proxy(make_proxy, [u.port], health_check())
    wait_for(lambda: len(u.checks) >= 3, what="three checks")
    assert flags(p)[u.port] == "healthy"
    assert p.stats().get(HC + "failure", 0) == 0


def test_immediate_fail_on_a_proxied_response_fails_and_excludes_the_host(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    b.serve_extra = "x-envoy-immediate-health-check-fail: true\r\n"
    p = checked_proxy(make_proxy, [a.port, b.port], health_check(
        interval="1s", no_traffic_interval="1s", unhealthy_threshold=3, healthy_threshold=2))
    with RawConn(p.listener_port()) as c:
        for _ in range(8):
            r = c.request(get("/"))
            if r.body == b"b":
                # The header goes on to the client as it came.
                assert r.header("x-envoy-immediate-health-check-fail") == "true"
                break
        else:
            raise AssertionError("no request reached b")
    wait_flags(p, b.port, "/failed_active_hc/excluded_via_immediate_hc_fail")
    s = p.stats()
    assert s[HC + "passive_failure"] == 1
    assert s[HC + "failure"] == 1
    assert s["cluster.up.membership_excluded"] == 1
    assert s["cluster.up.membership_healthy"] == 1
    j = json.loads(admin_get(p, "/clusters?format=json"))
    statuses = {h["address"]["socket_address"]["port_value"]: h["health_status"]
                for h in j["cluster_statuses"][0]["host_statuses"]}  # fmt: skip
    assert statuses[b.port] == {"failed_active_health_check": True, "eds_health_status": "HEALTHY",
                                "excluded_via_immediate_hc_fail": True}  # fmt: skip
    assert served_by(p, 6) == ["a"] * 6
    # Back after healthy_threshold passing checks (the checks never said anything).
    b.serve_extra = ""
    n = len(b.checks)
    wait_for(lambda: len(b.checks) > n, what="a check of b")
    assert flags(p)[b.port] == "/failed_active_hc/excluded_via_immediate_hc_fail"
    wait_flags(p, b.port, "healthy")
    assert p.stats()["cluster.up.membership_excluded"] == 0


# --- panic ------------------------------------------------------------------------------------------


def test_below_the_panic_threshold_every_host_is_used(make_proxy: Any, ups: Any) -> None:
    # 1 healthy of 3: 46% available with Envoy's 1.4 overprovisioning, a share of 33%, below
    # the default 50%.
    a, b, c = ups("a"), ups("b"), ups("c")
    b.status = c.status = 503
    p = checked_proxy(make_proxy, [a.port, b.port, c.port], health_check())
    wait_flags(p, b.port, "/failed_active_hc")
    wait_flags(p, c.port, "/failed_active_hc")
    assert sorted(set(served_by(p, 9))) == ["a", "b", "c"]
    assert p.stats()["cluster.up.lb_healthy_panic"] == 9


def test_two_of_five_healthy_is_a_panic(make_proxy: Any, ups: Any) -> None:
    # Below full availability (2 × 1.4 / 5 = 56%) Envoy compares the plain share, 40%, with the
    # threshold.
    hosts = [ups(n) for n in "abcde"]
    for h in hosts[2:]:
        h.status = 503
    p = checked_proxy(make_proxy, [h.port for h in hosts], health_check())
    for h in hosts[2:]:
        wait_flags(p, h.port, "/failed_active_hc")
    wait_for(lambda: len(set(served_by(p, 20))) == 5, what="every host serving")
    assert p.stats()["cluster.up.lb_healthy_panic"] >= 20


def test_three_of_four_healthy_with_a_high_threshold_is_no_panic(make_proxy: Any, ups: Any) -> None:
    # 3 × 1.4 / 4 is full availability: no panic, whatever the threshold.
    hosts = [ups(n) for n in "abcd"]
    hosts[3].status = 503
    p = checked_proxy(make_proxy, [h.port for h in hosts], health_check(),
                      common_lb_config={"healthy_panic_threshold": {"value": 90}})
    wait_flags(p, hosts[3].port, "/failed_active_hc")
    assert sorted(set(served_by(p, 9))) == ["a", "b", "c"]
    assert p.stats().get("cluster.up.lb_healthy_panic", 0) == 0


def test_two_of_four_healthy_is_no_panic(make_proxy: Any, ups: Any) -> None:
    hosts = [ups(n) for n in "abcd"]
    hosts[2].status = hosts[3].status = 503
    p = checked_proxy(make_proxy, [h.port for h in hosts], health_check())
    for h in hosts[2:]:
        wait_flags(p, h.port, "/failed_active_hc")
    assert sorted(set(served_by(p, 8))) == ["a", "b"]
    assert p.stats().get("cluster.up.lb_healthy_panic", 0) == 0


def test_a_lone_failed_host_still_serves(make_proxy: Any, ups: Any) -> None:
    u = ups("only")
    u.status = 503
    p = checked_proxy(make_proxy, [u.port], health_check())
    assert flags(p)[u.port] == "/failed_active_hc"
    assert served_by(p, 3) == ["only"] * 3
    s = p.stats()
    assert s["cluster.up.lb_healthy_panic"] == 3
    assert s.get("cluster.up.upstream_cx_none_healthy", 0) == 0


def test_panic_threshold_zero_answers_no_healthy_upstream(make_proxy: Any, ups: Any) -> None:
    u = ups()
    u.status = 503
    p = checked_proxy(make_proxy, [u.port], health_check(),
                      common_lb_config={"healthy_panic_threshold": {"value": 0}})
    assert flags(p)[u.port] == "/failed_active_hc"
    with RawConn(p.listener_port()) as c:
        r = c.request(get("/"))
    assert r.status == 503
    assert r.body == b"no healthy upstream"
    assert u.served == []
    wait_stat(p, "cluster.up.upstream_cx_none_healthy", 1)
    s = p.stats()
    assert s["cluster.up.upstream_rq_503"] == 1
    assert s.get("cluster.up.lb_healthy_panic", 0) == 0
    assert s.get("cluster.up.upstream_rq_total", 0) == 0


# --- timing -----------------------------------------------------------------------------------------


def test_without_traffic_checks_wait_the_no_traffic_interval(make_proxy: Any, ups: Any) -> None:
    u = ups()
    p = checked_proxy(make_proxy, [u.port], health_check(interval="0.05s", no_traffic_interval="1s"))
    wait_for(lambda: len(u.checks) >= 2, timeout=5, what="two checks")
    gap = u.checks[1][2] - u.checks[0][2]
    assert gap >= 0.9, gap
    # Once the cluster carries a request the checks go at their interval: many within the
    # time the no-traffic interval would allow one.
    served_by(p, 1)
    n = len(u.checks)
    wait_for(lambda: len(u.checks) >= n + 6, timeout=5, what="checks at the interval")
    assert u.checks[-1][2] - u.checks[-6][2] < 0.9


def test_strict_dns_hosts_are_checked(make_proxy: Any, ups: Any) -> None:
    u = ups("dns")
    u.status = 503
    c = cluster("up", u.port, type="STRICT_DNS", dns_lookup_family="V4_ONLY", health_checks=[health_check()])
    endpoint = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["address"] = "localhost"
    p = make_proxy(bootstrap([route("/", "up")], [c]))
    wait_flags(p, u.port, "/failed_active_hc")
    u.status = 200
    wait_flags(p, u.port, "healthy")
    assert u.checks[0][0] == b"GET /healthz HTTP/1.1\r\nhost: up\r\nuser-agent: Envoy/HC"


# --- TCP --------------------------------------------------------------------------------------------


def test_tcp_connect_only_check(make_proxy: Any, ups: Any) -> None:
    u = ups(tcp=True)
    p = checked_proxy(make_proxy, [u.port], health_check(http_health_check=None, tcp_health_check={}))
    # The connection is closed at once; each check connects again.
    wait_for(lambda: u.connections >= 3 and u.closed >= 2, what="three connects")
    assert u.checks == []
    assert flags(p)[u.port] == "healthy"
    u.refuse()
    wait_flags(p, u.port, "/failed_active_hc")
    assert p.stats()[HC + "network_failure"] >= 1


def test_tcp_send_and_receive(make_proxy: Any, ups: Any) -> None:
    u = ups(tcp=True)
    p = checked_proxy(make_proxy, [u.port], health_check(
        http_health_check=None,
        tcp_health_check={"send": {"text": "70696e67"}, "receive": [{"text": "706f"}, {"text": "6e67"}]}))
    wait_for(lambda: len(u.checks) >= 3, what="three pings")
    # One kept connection.
    assert {conn for _, conn, _ in u.checks} == {1}
    assert flags(p)[u.port] == "healthy"
    assert p.stats().get(HC + "failure", 0) == 0


# --- pyproxy only -----------------------------------------------------------------------------------


@pytest.mark.skipif(TARGET_IS_ENVOY, reason="apply is pyproxy's API")
def test_apply_keeps_an_unchanged_clusters_health(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    b.status = 503
    hc = health_check(interval="5s", no_traffic_interval="5s")
    cfg = bootstrap([route("/", "up")], [cluster("up", a.port, b.port, health_checks=[hc])])
    p = make_proxy(cfg)
    assert flags(p)[b.port] == "/failed_active_hc"
    attempts = p.stats()[HC + "attempt"]
    # Another cluster added: `up` keeps its hosts' health and its schedule.
    cfg["static_resources"]["clusters"].append(cluster("other", a.port))
    p.apply(cfg)
    assert flags(p)[b.port] == "/failed_active_hc"
    assert served_by(p, 4) == ["a"] * 4
    assert p.stats()[HC + "attempt"] == attempts
    # The check changed: its hosts start as the old check left them (no request goes to the
    # failed one meanwhile), its counters go on, and the new checks start at once.
    b.hang = True
    cfg["static_resources"]["clusters"][0]["health_checks"] = [health_check(interval="5s", no_traffic_interval="4s")]
    p.apply(cfg)
    assert flags(p)[b.port] == "/failed_active_hc"
    assert served_by(p, 4) == ["a"] * 4
    assert p.stats()[HC + "attempt"] >= attempts
    b.hang = False
    b.status = 200
    cfg["static_resources"]["clusters"][0]["health_checks"] = [health_check(interval="5s", no_traffic_interval="3s")]
    p.apply(cfg)
    wait_flags(p, b.port, "healthy")
    assert p.stats()[HC + "attempt"] >= attempts + 2


@pytest.mark.skipif(TARGET_IS_ENVOY, reason="apply is pyproxy's API")
def test_apply_warms_a_new_check_before_requests_see_it(make_proxy: Any, ups: Any) -> None:
    a, b = ups("a"), ups("b")
    b.status = 503
    cfg = bootstrap([route("/", "up")], [cluster("up", a.port, b.port)])
    p = make_proxy(cfg)
    assert sorted(set(served_by(p, 6))) == ["a", "b"]
    # The check is new: apply returns once both hosts have had their first check, so no
    # request goes to the failing one.
    cfg["static_resources"]["clusters"][0]["health_checks"] = [health_check(interval="5s", no_traffic_interval="5s")]
    p.apply(cfg)
    assert flags(p) == {a.port: "healthy", b.port: "/failed_active_hc"}
    assert served_by(p, 6) == ["a"] * 6
