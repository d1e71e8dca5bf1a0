"""Lowering to the engine snapshot: Envoy defaults filled in, Envoy shapes flattened, and every
key one that core/src/config.rs declares (the engine denies unknown fields)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyproxy.config import decode, lower, snapshot_bytes
from pyproxy.config.lower import DEFAULT_ACCESS_LOG_FORMAT

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
HPO_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Envoy's circuit breaker defaults, as every cluster's snapshot carries them when unset.
ENVOY_THRESHOLDS = {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024,
                    "max_retries": 3, "track_remaining": False}


def hcm(c: dict) -> dict:
    return c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def vhost(c: dict) -> dict:
    return hcm(c)["route_config"]["virtual_hosts"][0]


def route(c: dict) -> dict:
    return vhost(c)["routes"][0]


def cluster(c: dict) -> dict:
    return c["static_resources"]["clusters"][0]


def lowered(mutate: Callable[[dict], Any] | None = None) -> dict:
    c = copy.deepcopy(BASE)
    if mutate is not None:
        mutate(c)
    return lower(decode(c))


def snap_hcm(s: dict) -> dict:
    return s["listeners"][0]["hcm"]


def snap_route(s: dict) -> dict:
    return snap_hcm(s)["route_config"]["virtual_hosts"][0]["routes"][0]


def test_default_snapshot() -> None:
    s = lowered()
    listener = s["listeners"][0]
    assert {k: listener[k] for k in ("name", "address", "port")} == {
        "name": "main", "address": "0.0.0.0", "port": 10000}
    assert listener["per_connection_buffer_limit_bytes"] == 1024 * 1024
    h = listener["hcm"]
    assert h["stat_prefix"] == "ingress_http"
    assert {k: v for k, v in h.items() if k not in ("stat_prefix", "route_config", "access_log")} == {
        "server_name": "envoy",
        "server_header_transformation": "OVERWRITE",
        "use_remote_address": False,
        "xff_num_trusted_hops": 0,
        "skip_xff_append": False,
        "generate_request_id": True,
        "preserve_external_request_id": False,
        "max_request_headers_kb": 60,
        "stream_idle_timeout_ms": 300_000,
        "request_headers_timeout_ms": 0,
        "request_timeout_ms": 0,
        "max_stream_duration_ms": 0,
        "idle_timeout_ms": 3_600_000,
        "max_connection_duration_ms": 0,
        "drain_timeout_ms": 5000,
        "max_requests_per_connection": 0,
        "max_headers_count": 100,
        "headers_with_underscores_action": "ALLOW",
        "proxy_100_continue": False,
        "upgrade_types": [],
        "always_set_request_id_in_response": False,
        "via": "",
        "strip_any_host_port": False,
        "strip_matching_host_port": False,
        "normalize_path": False,
        "merge_slashes": False,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "suppress_envoy_headers": False,
    }
    assert snap_route(s)["match"] == {
        "path": {"prefix": "/"}, "case_sensitive": True, "headers": [], "query_parameters": []}
    assert snap_route(s)["action"] == {
        "route": {"cluster": "demo", "auto_host_rewrite": False, "timeout_ms": 15_000}}
    assert s["clusters"] == [{
        "name": "demo",
        "type": "STATIC",
        "connect_timeout_ms": 1000,
        "lb_policy": "ROUND_ROBIN",
        "choice_count": 2,
        "minimum_ring_size": 1024,
        "maximum_ring_size": 8 * 1024 * 1024,
        "maglev_table_size": 65537,
        "per_connection_buffer_limit_bytes": 1024 * 1024,
        "max_requests_per_connection": 0,
        "max_headers_count": 100,
        "idle_timeout_ms": 3_600_000,
        "dns_refresh_rate_ms": 5000,
        "dns_lookup_family": "AUTO",
        "endpoints": [{"address": "127.0.0.1", "port": 8080, "weight": 1}],
        "circuit_breakers": ENVOY_THRESHOLDS,
        "circuit_breakers_high": ENVOY_THRESHOLDS,
        "health_check": None,
        "healthy_panic_threshold": 50.0,
        "outlier_detection": None,
    }]


CASES: list[tuple[str, Callable[[dict], Any], Callable[[dict], Any], Any]] = [
    # Health checks: durations in ms, Envoy's defaults filled in, payloads as bytes.
    ("health_check_http", lambda c: cluster(c).update(health_checks=[{
        "timeout": "0.5s", "interval": "2s", "unhealthy_threshold": 3, "healthy_threshold": 2,
        "interval_jitter_percent": 10, "unhealthy_interval": "5s", "reuse_connection": False,
        "http_health_check": {"path": "/healthz", "host": "svc", "expected_statuses": [{"start": 200, "end": 300}],
                              "retriable_statuses": [{"start": 503, "end": 504}],
                              "request_headers_to_add": [{"header": {"key": "X-Check", "value": "1"}}],
                              "request_headers_to_remove": ["User-Agent"]}}],
        common_lb_config={"healthy_panic_threshold": {"value": 25}}),
     lambda s: (s["clusters"][0]["health_check"], s["clusters"][0]["healthy_panic_threshold"]),
     ({"timeout_ms": 500, "interval_ms": 2000, "initial_jitter_ms": 0, "interval_jitter_ms": 0,
       "interval_jitter_percent": 10, "unhealthy_interval_ms": 5000, "unhealthy_edge_interval_ms": None,
       "healthy_edge_interval_ms": None, "no_traffic_interval_ms": 60000,
       "no_traffic_healthy_interval_ms": None, "unhealthy_threshold": 3, "healthy_threshold": 2,
       "reuse_connection": False,
       "http": {"path": "/healthz", "method": "GET", "host": "svc", "expected": [[200, 300]], "retriable": [[503, 504]],
                "add": [{"name": "x-check", "value": "1", "overwrite": False}], "remove": ["user-agent"]},
       "tcp": None}, 25.0)),
    ("health_check_tcp", lambda c: cluster(c).update(health_checks=[{
        "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "tcp_health_check": {"send": {"text": "70696E67"}, "receive": [{"binary": "cG9u"}, {"text": "67"}]}}]),
     lambda s: s["clusters"][0]["health_check"]["tcp"],
     {"send": list(b"ping"), "receive": [list(b"pon"), list(b"g")]}),
    # Outlier detection: Envoy's defaults for what is left out; the cap follows a longer base.
    ("outlier_defaults", lambda c: cluster(c).update(outlier_detection={}),
     lambda s: s["clusters"][0]["outlier_detection"],
     {"consecutive_5xx": 5, "consecutive_gateway_failure": 5, "consecutive_local_origin_failure": 5,
      "max_ejection_percent": 10, "enforcing_consecutive_5xx": 100,
      "enforcing_consecutive_gateway_failure": 0, "enforcing_consecutive_local_origin_failure": 100,
      "enforcing_success_rate": 100, "enforcing_local_origin_success_rate": 100,
      "enforcing_failure_percentage": 0, "enforcing_failure_percentage_local_origin": 0,
      "success_rate_minimum_hosts": 5, "success_rate_request_volume": 100,
      "success_rate_stdev_factor": 1900, "failure_percentage_threshold": 85,
      "failure_percentage_minimum_hosts": 5, "failure_percentage_request_volume": 50,
      "interval_ms": 10_000, "base_ejection_time_ms": 30_000, "max_ejection_time_ms": 300_000,
      "max_ejection_time_jitter_ms": 0, "split_external_local_origin_errors": False,
      "successful_active_health_check_uneject_host": True, "always_eject_one_host": False}),
    ("outlier_given", lambda c: cluster(c).update(outlier_detection={
        "consecutive_5xx": 0, "interval": "0.5s", "base_ejection_time": "400s", "max_ejection_percent": 100,
        "split_external_local_origin_errors": True, "successful_active_health_check_uneject_host": False,
        "max_ejection_time_jitter": "2s", "always_eject_one_host": True}),
     lambda s: {k: v for k, v in s["clusters"][0]["outlier_detection"].items() if k in (
         "consecutive_5xx", "interval_ms", "base_ejection_time_ms", "max_ejection_time_ms",
         "max_ejection_percent", "split_external_local_origin_errors",
         "successful_active_health_check_uneject_host", "max_ejection_time_jitter_ms",
         "always_eject_one_host")},
     {"consecutive_5xx": 0, "interval_ms": 500, "base_ejection_time_ms": 400_000,
      "max_ejection_time_ms": 400_000, "max_ejection_percent": 100,
      "split_external_local_origin_errors": True, "successful_active_health_check_uneject_host": False,
      "max_ejection_time_jitter_ms": 2000, "always_eject_one_host": True}),
    # A retry policy: the route's, else its virtual host's (never merged), Envoy's defaults.
    ("retry_policy", lambda c: route(c)["route"].update(retry_policy={
        "retry_on": " 5xx ,,reset", "per_try_timeout": "0.25s", "per_try_idle_timeout": "1.0005s",
        "retriable_status_codes": [418],
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": -1}),
     lambda s: snap_route(s)["action"]["route"]["retry_policy"],
     {"retry_on": ["5xx", "reset"], "num_retries": 1, "per_try_timeout_ms": 250,
      "per_try_idle_timeout_ms": 1000, "retriable_status_codes": [418], "base_interval_ms": 25, "max_interval_ms": 250,
      "retriable_headers": [], "retriable_request_headers": [],
      "previous_hosts": True, "host_selection_retry_max_attempts": 0}),
    ("retry_back_off", lambda c: vhost(c).update(retry_policy={
        "retry_on": "gateway-error", "num_retries": 4, "retry_back_off": {"base_interval": "0.1s"}},
        include_request_attempt_count=True, include_attempt_count_in_response=True),
     lambda s: {k: v for k, v in snap_route(s)["action"]["route"].items()
                if "retry" in k or "attempt" in k},
     {"retry_policy": {"retry_on": ["gateway-error"], "num_retries": 4, "per_try_timeout_ms": 0,
                       "per_try_idle_timeout_ms": 0, "retriable_status_codes": [], "base_interval_ms": 100,
                       "max_interval_ms": 1000,
                       "retriable_headers": [], "retriable_request_headers": [],
                       "previous_hosts": False, "host_selection_retry_max_attempts": 0},
      "include_request_attempt_count": True, "include_attempt_count_in_response": True}),
    ("per_request_buffer_limit", lambda c: (vhost(c).update(per_request_buffer_limit_bytes=4096),
                                            route(c).update(per_request_buffer_limit_bytes=1024)),
     lambda s: snap_route(s)["action"]["route"]["per_request_buffer_limit_bytes"], 1024),
    ("per_request_buffer_limit_vhost", lambda c: vhost(c).update(per_request_buffer_limit_bytes=4096),
     lambda s: snap_route(s)["action"]["route"]["per_request_buffer_limit_bytes"], 4096),
    ("retriable_headers", lambda c: route(c)["route"].update(retry_policy={
        "retry_on": "retriable-headers", "retriable_headers": [{"name": "x-retry", "exact_match": "yes"}],
        "retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}),
     lambda s: {k: v for k, v in snap_route(s)["action"]["route"]["retry_policy"].items() if "headers" in k},
     {"retriable_headers": [{"name": "x-retry", "match": {"exact": "yes"}, "invert_match": False,
                             "ignore_case": False, "treat_missing_header_as_empty": False}],
      "retriable_request_headers": [{"name": ":method", "match": {"exact": "GET"}, "invert_match": False,
                                     "ignore_case": False, "treat_missing_header_as_empty": False}]}),
    ("retry_route_over_vhost", lambda c: (vhost(c).update(retry_policy={"retry_on": "5xx", "num_retries": 3}),
                                          route(c)["route"].update(retry_policy={"retry_on": "reset"})),
     lambda s: snap_route(s)["action"]["route"]["retry_policy"]["retry_on"], ["reset"]),
    ("route_priority", lambda c: route(c)["route"].update(priority="HIGH"),
     lambda s: snap_route(s)["action"]["route"].get("high_priority"), True),
    # Circuit breakers: each priority's first entry, the rest Envoy's defaults.
    ("circuit_breakers", lambda c: cluster(c).update(circuit_breakers={"thresholds": [
        {"max_connections": 2, "track_remaining": True},
        {"priority": "HIGH", "max_requests": 0, "max_pending_requests": 7},
        {"max_connections": 9},
    ]}),
     lambda s: (s["clusters"][0]["circuit_breakers"], s["clusters"][0]["circuit_breakers_high"]),
     ({**ENVOY_THRESHOLDS, "max_connections": 2, "track_remaining": True},
      {**ENVOY_THRESHOLDS, "max_requests": 0, "max_pending_requests": 7})),
    # HCM
    ("hcm_timeouts", lambda c: hcm(c).update(
        stream_idle_timeout="0s", request_timeout="1.5s", request_headers_timeout="0.0001s",
        common_http_protocol_options={"idle_timeout": {"seconds": 2}}),
     lambda s: {k: snap_hcm(s)[k] for k in ("stream_idle_timeout_ms", "request_timeout_ms",
                                            "request_headers_timeout_ms", "idle_timeout_ms")},
     {"stream_idle_timeout_ms": 0, "request_timeout_ms": 1500,
      "request_headers_timeout_ms": 1, "idle_timeout_ms": 2000}),
    # max_stream_duration: the HCM's, the route's over it; below 1 ms is none (Envoy truncates);
    # a route with the message has no route timeout.
    ("stream_duration", lambda c: (
        hcm(c).update(common_http_protocol_options={"max_stream_duration": "1.5s"}),
        route(c)["route"].update(timeout="3s", max_stream_duration={"max_stream_duration": "0.0005s"})),
     lambda s: (snap_hcm(s)["max_stream_duration_ms"], snap_route(s)["action"]["route"]["max_stream_duration_ms"],
                snap_route(s)["action"]["route"]["timeout_ms"]),
     (1500, 0, 0)),
    ("stream_duration_empty_route", lambda c: route(c)["route"].update(max_stream_duration={}),
     lambda s: ("max_stream_duration_ms" in snap_route(s)["action"]["route"],
                snap_route(s)["action"]["route"]["timeout_ms"]),
     (False, 0)),
    ("hcm_flags", lambda c: hcm(c).update(
        server_name="edge", server_header_transformation="PASS_THROUGH", use_remote_address=True,
        xff_num_trusted_hops=2, skip_xff_append=True, generate_request_id=False,
        preserve_external_request_id=True, max_request_headers_kb=96, proxy_100_continue=True),
     lambda s: {k: v for k, v in snap_hcm(s).items() if k in (
         "server_name", "server_header_transformation", "use_remote_address",
         "xff_num_trusted_hops", "skip_xff_append", "generate_request_id",
         "preserve_external_request_id", "max_request_headers_kb", "proxy_100_continue")},
     {"server_name": "edge", "server_header_transformation": "PASS_THROUGH",
      "use_remote_address": True, "xff_num_trusted_hops": 2, "skip_xff_append": True,
      "generate_request_id": False, "preserve_external_request_id": True,
      "max_request_headers_kb": 96, "proxy_100_continue": True}),
    ("hash_policy", lambda c: (
        cluster(c).update(lb_policy="RING_HASH", ring_hash_lb_config={"minimum_ring_size": 8}),
        route(c)["route"].update(hash_policy=[
            {"header": {"header_name": "X-User"}, "terminal": True}, {"cookie": {"name": "sid"}},
            {"connection_properties": {"source_ip": False}}, {"connection_properties": {"source_ip": True}},
            {"query_parameter": {"name": "u"}}])),
     lambda s: (s["clusters"][0]["lb_policy"], s["clusters"][0]["minimum_ring_size"],
                s["clusters"][0]["maximum_ring_size"], snap_route(s)["action"]["route"]["hash_policy"]),
     ("RING_HASH", 8, 8388608, [{"terminal": True, "header": "x-user"}, {"terminal": False, "cookie": "sid"},
                                {"terminal": False, "source_ip": True}, {"terminal": False, "query": "u"}])),
    ("upgrade_configs", lambda c: (
        hcm(c).update(upgrade_configs=[{"upgrade_type": "WebSocket"}, {"upgrade_type": "foo", "enabled": False},
                                       {"upgrade_type": "bar", "enabled": True}]),
        route(c)["route"].update(upgrade_configs=[{"upgrade_type": "Foo"},
                                                           {"upgrade_type": "websocket", "enabled": False}])),
     lambda s: (snap_hcm(s)["upgrade_types"], snap_route(s)["action"]["route"]["upgrade_configs"]),
     (["websocket", "bar"], [{"upgrade_type": "foo", "enabled": True},
                             {"upgrade_type": "websocket", "enabled": False}])),
    ("empty_server_name_is_envoy", lambda c: hcm(c).update(server_name=""),
     lambda s: snap_hcm(s)["server_name"], "envoy"),
    ("suppress_envoy_headers", lambda c: hcm(c)["http_filters"][0]["typed_config"].update(
        suppress_envoy_headers=True), lambda s: snap_hcm(s)["suppress_envoy_headers"], True),
    ("listener_buffer_limit", lambda c: c["static_resources"]["listeners"][0].update(
        per_connection_buffer_limit_bytes=4096),
     lambda s: s["listeners"][0]["per_connection_buffer_limit_bytes"], 4096),
    ("listener_name_from_address", lambda c: c["static_resources"]["listeners"][0].pop("name"),
     lambda s: s["listeners"][0]["name"], "0.0.0.0_10000"),
    # path specifiers
    ("path", lambda c: route(c).update(match={"path": "/x", "case_sensitive": False}),
     lambda s: snap_route(s)["match"], {"path": {"path": "/x"}, "case_sensitive": False,
                                         "headers": [], "query_parameters": []}),
    ("safe_regex", lambda c: route(c).update(match={"safe_regex": {"regex": "/v[0-9]+"}}),
     lambda s: snap_route(s)["match"]["path"], {"safe_regex": "/v[0-9]+"}),
    # header matchers
    ("header_string_match", lambda c: route(c)["match"].update(headers=[
        {"name": "X-Env", "string_match": {"prefix": "Prod", "ignore_case": True},
         "invert_match": True, "treat_missing_header_as_empty": True}]),
     lambda s: snap_route(s)["match"]["headers"],
     [{"name": "x-env", "match": {"prefix": "Prod"}, "invert_match": True, "ignore_case": True,
       "treat_missing_header_as_empty": True}]),
    ("header_legacy", lambda c: route(c)["match"].update(headers=[
        {"name": "a", "exact_match": "1"}, {"name": "b", "prefix_match": "2"},
        {"name": "c", "suffix_match": "3"}, {"name": "d", "contains_match": "4"},
        {"name": "e", "safe_regex_match": {"regex": "5+"}}, {"name": "f", "present_match": False},
        {"name": ":method", "string_match": {"exact": "GET"}}, {"name": "g"}]),
     lambda s: [(h["name"], h["match"]) for h in snap_route(s)["match"]["headers"]],
     [("a", {"exact": "1"}), ("b", {"prefix": "2"}), ("c", {"suffix": "3"}),
      ("d", {"contains": "4"}), ("e", {"safe_regex": "5+"}), ("f", {"present": False}),
      (":method", {"exact": "GET"}), ("g", {"present": True})]),
    ("query_matchers", lambda c: route(c)["match"].update(query_parameters=[
        {"name": "Debug", "string_match": {"exact": "On", "ignore_case": True}},
        {"name": "p", "present_match": True}, {"name": "q"}]),
     lambda s: snap_route(s)["match"]["query_parameters"],
     [{"name": "Debug", "match": {"exact": "On"}, "ignore_case": True},
      {"name": "p", "match": {"present": True}, "ignore_case": False},
      {"name": "q", "match": {"present": True}, "ignore_case": False}]),
    # actions
    ("forward_options", lambda c: route(c)["route"].update(
        prefix_rewrite="/api", host_rewrite_literal="h", timeout="0s"),
     lambda s: snap_route(s)["action"],
     {"route": {"cluster": "demo", "prefix_rewrite": "/api", "host_rewrite_literal": "h",
                "auto_host_rewrite": False, "timeout_ms": 0}}),
    ("auto_host_rewrite", lambda c: route(c)["route"].update(auto_host_rewrite=True),
     lambda s: snap_route(s)["action"]["route"]["auto_host_rewrite"], True),
    ("weighted_clusters", lambda c: route(c).update(route={"weighted_clusters": {"clusters": [
        {"name": "demo", "weight": 3,
         "response_headers_to_add": [{"header": {"key": "X-W", "value": "3"}}]}]}}),
     lambda s: snap_route(s)["action"],
     {"route": {"weighted_clusters": [{
         "name": "demo", "weight": 3, "request_headers_to_add": [],
         "request_headers_to_remove": [], "response_headers_to_remove": [],
         "response_headers_to_add": [{"key": "x-w", "value": "3", "append": True, "keep_empty_value": False}]}],
         "auto_host_rewrite": False, "timeout_ms": 15_000}}),
    ("redirect_https", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "https_redirect": True, "host_redirect": "a.com", "port_redirect": 8443,
        "strip_query": True, "response_code": "TEMPORARY_REDIRECT"})),
     lambda s: snap_route(s)["action"],
     {"redirect": {"scheme_redirect": "https", "host_redirect": "a.com", "port_redirect": 8443,
                   "response_code": 307, "strip_query": True}}),
    ("redirect_defaults", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "scheme_redirect": "HTTP", "prefix_rewrite": "/n/"})),
     lambda s: snap_route(s)["action"],
     {"redirect": {"scheme_redirect": "http", "prefix_rewrite": "/n/", "response_code": 301,
                   "strip_query": False}}),
    ("https_redirect_false", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "https_redirect": False, "path_redirect": "/p"})),
     lambda s: snap_route(s)["action"],
     {"redirect": {"path_redirect": "/p", "response_code": 301, "strip_query": False}}),
    ("direct_response", lambda c: (route(c).pop("route"), route(c).update(direct_response={
        "status": 503, "body": {"inline_string": "down\n"}})),
     lambda s: snap_route(s)["action"], {"direct_response": {"status": 503, "body": "down\n"}}),
    ("direct_response_no_body", lambda c: (route(c).pop("route"), route(c).update(
        direct_response={"status": 204})),
     lambda s: snap_route(s)["action"], {"direct_response": {"status": 204}}),
    # header add/remove
    ("header_append_variants", lambda c: route(c).update(request_headers_to_add=[
        {"header": {"key": "A", "value": "1"}},
        {"header": {"key": "b", "value": "2"}, "append": False},
        {"header": {"key": "c", "value": "3"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "d", "value": "4"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
        {"header": {"key": "e", "value": ""}},
        {"header": {"key": "f", "value": ""}, "keep_empty_value": True}]),
     lambda s: snap_route(s)["request_headers_to_add"],
     [{"key": k, "value": v, "append": a, "keep_empty_value": k == "f"}
      for k, v, a in [("a", "1", True), ("b", "2", False), ("c", "3", False), ("d", "4", True), ("f", "", True)]]),
    ("headers_to_remove_lowercased", lambda c: hcm(c)["route_config"].update(
        response_headers_to_remove=["X-Powered-By"]),
     lambda s: snap_hcm(s)["route_config"]["response_headers_to_remove"], ["x-powered-by"]),
    ("domains_lowercased", lambda c: hcm(c)["route_config"]["virtual_hosts"][0].update(
        domains=["Example.COM:8080"]),
     lambda s: snap_hcm(s)["route_config"]["virtual_hosts"][0]["domains"], ["example.com:8080"]),
    # clusters
    ("cluster_options", lambda c: cluster(c).update(
        type="STRICT_DNS", lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 4},
        per_connection_buffer_limit_bytes=1, dns_refresh_rate="30s", dns_lookup_family="V4_ONLY",
        max_requests_per_connection=7),
     lambda s: {k: s["clusters"][0][k] for k in (
         "type", "lb_policy", "choice_count", "per_connection_buffer_limit_bytes",
         "dns_refresh_rate_ms", "dns_lookup_family", "max_requests_per_connection")},
     {"type": "STRICT_DNS", "lb_policy": "LEAST_REQUEST", "choice_count": 4,
      "per_connection_buffer_limit_bytes": 1, "dns_refresh_rate_ms": 30_000,
      "dns_lookup_family": "V4_ONLY", "max_requests_per_connection": 7}),
    ("cluster_http_protocol_options", lambda c: cluster(c).update(
        typed_extension_protocol_options={HPO_KEY: {
            "@type": "type.googleapis.com/" + HPO_KEY,
            "common_http_protocol_options": {"idle_timeout": "0s",
                                             "max_requests_per_connection": 9},
            "explicit_http_config": {"http_protocol_options": {}}}}),
     lambda s: (s["clusters"][0]["idle_timeout_ms"],
                s["clusters"][0]["max_requests_per_connection"]),
     (0, 9)),
    ("cluster_max_headers_count", lambda c: cluster(c).update(
        typed_extension_protocol_options={HPO_KEY: {
            "@type": "type.googleapis.com/" + HPO_KEY,
            "common_http_protocol_options": {"max_headers_count": 150},
            "explicit_http_config": {"http_protocol_options": {}}}}),
     lambda s: s["clusters"][0]["max_headers_count"], 150),
    ("hcm_protocol_options", lambda c: hcm(c).update(common_http_protocol_options={
        "max_requests_per_connection": 3, "max_headers_count": 7,
        "headers_with_underscores_action": "DROP_HEADER"}),
     lambda s: {k: snap_hcm(s)[k] for k in ("max_requests_per_connection", "max_headers_count",
                                            "headers_with_underscores_action")},
     {"max_requests_per_connection": 3, "max_headers_count": 7,
      "headers_with_underscores_action": "DROP_HEADER"}),
    ("route_idle_timeout", lambda c: route(c)["route"].update(idle_timeout="1.5s"),
     lambda s: (snap_route(s)["action"]["route"]["idle_timeout_ms"],
                "idle_timeout_ms" in lowered()["listeners"][0]["hcm"]["route_config"]
                ["virtual_hosts"][0]["routes"][0]["action"]["route"]),
     (1500, False)),
    ("hcm_connection_duration", lambda c: hcm(c).update(
        drain_timeout="0.25s", common_http_protocol_options={"max_connection_duration": "90s"}),
     lambda s: (snap_hcm(s)["max_connection_duration_ms"], snap_hcm(s)["drain_timeout_ms"]),
     (90_000, 250)),
    ("hcm_paths", lambda c: hcm(c).update(normalize_path=True, merge_slashes=True,
                                          path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT"),
     lambda s: {k: snap_hcm(s)[k] for k in ("normalize_path", "merge_slashes",
                                            "path_with_escaped_slashes_action")},
     {"normalize_path": True, "merge_slashes": True,
      "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"}),
    ("hcm_paths_envoy_default", lambda c: hcm(c).update(
        path_with_escaped_slashes_action="IMPLEMENTATION_SPECIFIC_DEFAULT"),
     lambda s: snap_hcm(s)["path_with_escaped_slashes_action"], "KEEP_UNCHANGED"),
    ("hcm_protocol_options_defaults", lambda c: None,
     lambda s: ({k: snap_hcm(s)[k] for k in ("max_requests_per_connection", "max_headers_count",
                                             "headers_with_underscores_action")},
                s["clusters"][0]["max_headers_count"]),
     ({"max_requests_per_connection": 0, "max_headers_count": 100,
       "headers_with_underscores_action": "ALLOW"}, 100)),
    ("endpoints_flattened", lambda c: cluster(c)["load_assignment"].update(endpoints=[
        {"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1",
                                                         "port_value": 80}}},
             "load_balancing_weight": 5},
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2"}}}}]},
        {"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "::1", "port_value": 81}}}}]}]),
     lambda s: s["clusters"][0]["endpoints"],
     [{"address": "10.0.0.1", "port": 80, "weight": 5},
      {"address": "10.0.0.2", "port": 0, "weight": 1},
      {"address": "::1", "port": 81, "weight": 1}]),
    ("no_load_assignment", lambda c: cluster(c).pop("load_assignment"),
     lambda s: s["clusters"][0]["endpoints"], []),
    ("access_logs", lambda c: hcm(c).update(access_log=[
        {"typed_config": {"@type": FILE_LOG, "path": "/var/log/a.log"}},
        {"name": "json", "typed_config": {"@type": STDOUT_LOG, "log_format": {
            "json_format": {"code": "%RESPONSE_CODE%", "n": {"x": 1}}, "omit_empty_values": True}},
         "filter": {"and_filter": {"filters": [
             {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500,
                                                                         "runtime_key": "k"}}}},
             {"or_filter": {"filters": [
                 {"duration_filter": {"comparison": {"value": {"default_value": 10, "runtime_key": "d"}}}},
                 {"not_health_check_filter": {}},
                 {"header_filter": {"header": {"name": "X-A", "string_match": {"prefix": "b"}}}},
                 {"response_flag_filter": {"flags": ["UH"]}}]}}]}}},
        {"typed_config": {"@type": STDERR_LOG, "log_format": {
            "text_format_source": {"inline_string": "%PROTOCOL%\n"}}}},
        {"typed_config": {"@type": FILE_LOG, "path": "/tmp/old.log", "format": "%REQ(:PATH)%\n"}},
        {"typed_config": {"@type": FILE_LOG, "path": "/tmp/old.json", "json_format": {"p": "%REQ(:PATH)%"}}},
    ]), lambda s: [{k: v for k, v in a.items() if not k.endswith("_at")} for a in snap_hcm(s)["access_log"]], [
        {"sink": {"file": "/var/log/a.log"}, "format": {"text": {"text": DEFAULT_ACCESS_LOG_FORMAT}}},
        {"sink": "stdout",
         "format": {"json": {"json": {"code": "%RESPONSE_CODE%", "n": {"x": 1}}, "omit_empty_values": True}},
         "filter": {"and": [
             {"status_code": {"op": "GE", "value": 500}},
             {"or": [{"duration": {"op": "GE", "value": 10}}, "not_health_check",
                     {"header": {"name": "x-a", "match": {"prefix": "b"}, "invert_match": False,
                                 "ignore_case": False, "treat_missing_header_as_empty": False}},
                     {"response_flag": ["UH"]}]}]}},
        {"sink": "stderr", "format": {"text": {"text": "%PROTOCOL%\n", "omit_empty_values": False}}},
        {"sink": {"file": "/tmp/old.log"}, "format": {"text": {"text": "%REQ(:PATH)%\n"}}},
        {"sink": {"file": "/tmp/old.json"}, "format": {"json": {"json": {"p": "%REQ(:PATH)%"}}}},
    ]),
]


OVERLOAD = {
    "refresh_interval": "0.25s",
    "resource_monitors": [
        {"name": "envoy.resource_monitors.fixed_heap", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
            "max_heap_size_bytes": 2147483648}},
        {"name": "file", "typed_config": {
            "@type": "type.googleapis.com/"
                     "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
            "filename": "/tmp/pressure"}},
        {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
            "@type": "type.googleapis.com/"
                     "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            "max_active_downstream_connections": 50000}},
    ],
    "actions": [
        {"name": "envoy.overload_actions.shrink_heap",
         "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.95}}]},
        {"name": "envoy.overload_actions.stop_accepting_requests",
         "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.98}},
                      {"name": "file", "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}]},
        {"name": "envoy.overload_actions.reduce_timeouts",
         "triggers": [{"name": "file", "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}],
         "typed_config": {"@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
                          "timer_scale_factors": [
                              {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "0.5s"},
                              {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 10}}]}},
    ],
}
CASES.append(("overload_manager", lambda c: c.update(overload_manager=OVERLOAD), lambda s: s["overload"], {
    "refresh_interval_ms": 250,
    "monitors": [
        {"name": "envoy.resource_monitors.fixed_heap", "kind": {"fixed_heap": {"max_heap_size_bytes": 2147483648}}},
        {"name": "file", "kind": {"injected_resource": {"filename": "/tmp/pressure"}}},
        {"name": "envoy.resource_monitors.global_downstream_max_connections",
         "kind": {"global_downstream_max_connections": {"max_active_downstream_connections": 50000}}},
    ],
    "actions": [
        {"name": "envoy.overload_actions.shrink_heap", "kind": "shrink_heap", "triggers": [
            {"monitor": "envoy.resource_monitors.fixed_heap", "kind": {"threshold": {"value": 0.95}}}],
         "timer_scale_factors": []},
        {"name": "envoy.overload_actions.stop_accepting_requests", "kind": "stop_accepting_requests", "triggers": [
            {"monitor": "envoy.resource_monitors.fixed_heap", "kind": {"threshold": {"value": 0.98}}},
            {"monitor": "file", "kind": {"scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}}],
         "timer_scale_factors": []},
        {"name": "envoy.overload_actions.reduce_timeouts", "kind": "reduce_timeouts", "triggers": [
            {"monitor": "file", "kind": {"scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}}],
         "timer_scale_factors": [
             {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min": {"min_timeout_ms": 500}},
             {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min": {"min_scale": 0.1}}]},
    ],
}))
CASES.append(("no_overload_manager", lambda c: None, lambda s: s["overload"], None))


@pytest.mark.parametrize(("name", "mutate", "pick", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lowering(name: str, mutate: Callable[[dict], Any], pick: Callable[[dict], Any],
                  expected: Any) -> None:
    assert pick(lowered(mutate)) == expected


def test_access_logs_name_their_place_in_the_config_for_the_engine() -> None:
    logs = snap_hcm(lowered(lambda c: hcm(c).update(access_log=[
        {"typed_config": {"@type": FILE_LOG, "path": "/a"}},
        {"typed_config": {"@type": STDOUT_LOG, "log_format": {"json_format": {"a": "b"}}}},
        {"typed_config": {"@type": FILE_LOG, "path": "/b", "format": "%PROTOCOL%"}},
    ])))["access_log"]
    at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log"
    assert [(a["format_at"], a["sink_at"]) for a in logs] == [
        (f"{at}[0].typed_config (Envoy's default format)", f"{at}[0].typed_config.path"),
        (f"{at}[1].typed_config.log_format.json_format", f"{at}[1].typed_config"),
        (f"{at}[2].typed_config.format", f"{at}[2].typed_config.path"),
    ]


def test_snapshot_bytes_is_the_json_of_lower() -> None:
    b = decode(copy.deepcopy(BASE))
    assert json.loads(snapshot_bytes(b)) == lower(b)


# --- the contract with core/src/config.rs -----------------------------------------------------

CONFIG_RS = ROOT / "core" / "src" / "config.rs"


def rust_structs() -> dict[str, dict[str, tuple[str, bool, bool]]]:
    """struct name -> {json field name: (rust type, required, flatten)} parsed from config.rs."""
    text = CONFIG_RS.read_text()
    structs: dict[str, dict[str, tuple[str, bool, bool]]] = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.DOTALL):
        fields: dict[str, tuple[str, bool, bool]] = {}
        attrs: list[str] = []
        for line in m.group(2).splitlines():
            line = line.strip()
            if line.startswith("#["):
                attrs.append(line)
            elif line.startswith("pub "):
                fm = re.match(r"pub (\w+): (.+),$", line)
                assert fm, line
                name, rtype = fm.groups()
                rename = next((re.search(r'rename = "(\w+)"', a) for a in attrs
                               if "rename =" in a), None)
                flatten = any("flatten" in a for a in attrs)
                required = not any("default" in a for a in attrs) and not flatten
                fields[rename.group(1) if rename else name] = (rtype, required, flatten)
                attrs = []
            elif not line.startswith("///"):
                attrs = []
        structs[m.group(1)] = fields
    return structs


ENUMS = {  # externally tagged enums: variant (snake_case) -> payload struct or scalar
    "PathMatch": {"prefix": "String", "path": "String", "safe_regex": "String"},
    "ValueMatch": {"exact": "String", "prefix": "String", "suffix": "String",
                   "contains": "String", "safe_regex": "String", "present": "bool"},
    "RouteAction": {"route": "ForwardAction", "redirect": "RedirectAction",
                    "direct_response": "DirectResponseAction"},
    # A unit variant (None) is a bare string; a struct variant's fields are given inline.
    "LogSink": {"file": "String", "stdout": None, "stderr": None},
    "LogFormat": {"text": {"text": ("String", True), "omit_empty_values": ("bool", False)},
                  "json": {"json": ("JsonObject", True), "omit_empty_values": ("bool", False)}},
    "LogFilter": {"status_code": "Comparison", "duration": "Comparison", "not_health_check": None,
                  "header": "HeaderMatcher", "response_flag": "Vec<String>",
                  "and": "Vec<LogFilter>", "or": "Vec<LogFilter>"},
    "MonitorKind": {"fixed_heap": {"max_heap_size_bytes": ("u64", True)},
                    "injected_resource": {"filename": ("String", True)},
                    "global_downstream_max_connections": {"max_active_downstream_connections": ("u64", True)}},
    "TriggerKind": {"threshold": {"value": ("f64", True)},
                    "scaled": {"scaling_threshold": ("f64", True), "saturation_threshold": ("f64", True)}},
    "ActionKind": {"stop_accepting_requests": None, "disable_http_keepalive": None,
                   "stop_accepting_connections": None, "reject_incoming_connections": None, "shrink_heap": None,
                   "reduce_timeouts": None},
    "TimerMin": {"min_timeout_ms": "u64", "min_scale": "f64"},
}


UNIT_ENUMS = {  # enums of unit variants, each a string (SCREAMING_SNAKE_CASE in config.rs)
    "DrainType": {"DEFAULT", "MODIFY_ONLY"},
    "UnderscoresAction": {"ALLOW", "REJECT_REQUEST", "DROP_HEADER"},
    "EscapedSlashes": {"KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_REDIRECT", "UNESCAPE_AND_FORWARD"},
    "ComparisonOp": {"GE", "EQ", "LE", "NE"},
    "ScaledTimer": {"HTTP_DOWNSTREAM_CONNECTION_IDLE", "HTTP_DOWNSTREAM_STREAM_IDLE"},
}


def check_against(value: Any, rtype: str, structs: dict, where: str) -> None:
    """Every key is a field of the Rust type, every required field is present, recursively."""
    rtype = rtype.strip()
    for wrapper in ("Option<", "Vec<"):
        if rtype.startswith(wrapper):
            inner = rtype[len(wrapper):-1]
            if wrapper == "Vec<":
                assert isinstance(value, list), where
                for i, item in enumerate(value):
                    check_against(item, inner, structs, f"{where}[{i}]")
            elif value is not None:
                check_against(value, inner, structs, where)
            return
    if rtype in ENUMS:
        if isinstance(value, str):
            assert value in ENUMS[rtype] and ENUMS[rtype][value] is None, \
                f"{where}: {value!r} is no unit variant of {rtype}"
            return
        assert isinstance(value, dict), where
        assert len(value) == 1, f"{where}: an externally tagged enum has one key"
        (variant, payload), = value.items()
        assert variant in ENUMS[rtype], f"{where}: {variant} is no variant of {rtype}"
        spec = ENUMS[rtype][variant]
        assert spec is not None, f"{where}: {variant} of {rtype} takes no payload"
        if isinstance(spec, dict):
            assert isinstance(payload, dict), where
            assert not set(payload) - set(spec), f"{where}: {sorted(set(payload) - set(spec))} not in {rtype}"
            assert {f for f, (_, req) in spec.items() if req} <= set(payload), where
            for fname, item in payload.items():
                check_against(item, spec[fname][0], structs, f"{where}.{variant}.{fname}")
        else:
            check_against(payload, spec, structs, f"{where}.{variant}")
        return
    if rtype == "JsonObject":  # serde_json::Map: any JSON object
        assert isinstance(value, dict), where
        return
    if rtype in UNIT_ENUMS:
        assert value in UNIT_ENUMS[rtype], f"{where}: {value!r} is no variant of {rtype}"
        return
    if rtype in structs:
        assert isinstance(value, dict), where
        fields: dict[str, tuple[str, bool, bool]] = {}
        for fname, (ftype, required, flatten) in structs[rtype].items():
            if flatten:
                fields.update(structs[ftype])
            else:
                fields[fname] = (ftype, required, flatten)
        unknown = set(value) - set(fields)
        assert not unknown, f"{where}: {sorted(unknown)} not in config.rs {rtype}"
        missing = {f for f, (_, req, _) in fields.items() if req} - set(value)
        assert not missing, f"{where}: required {sorted(missing)} of {rtype} missing"
        for fname, item in value.items():
            check_against(item, fields[fname][0], structs, f"{where}.{fname}")
        return
    if rtype.startswith("("):  # a tuple: a JSON array of its items
        items = [t.strip() for t in rtype[1:-1].split(",")]
        assert isinstance(value, list) and len(value) == len(items), f"{where}: not {rtype}"
        for i, (item, itype) in enumerate(zip(value, items, strict=True)):
            check_against(item, itype, structs, f"{where}[{i}]")
        return
    if rtype == "f64":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not f64"
        return
    python_type = {"String": str, "bool": bool, "u8": int, "u16": int, "u32": int, "u64": int}[rtype]
    assert isinstance(value, python_type), f"{where}: {value!r} is not {rtype}"
    if python_type is int:
        assert not isinstance(value, bool), f"{where}: {value!r} is not {rtype}"
    if rtype in ("u8", "u16", "u32", "u64"):
        bits = int(rtype[1:])
        assert 0 <= value < 2**bits, f"{where}: {value} out of {rtype}"


def test_contract_parser_sees_config_rs() -> None:
    structs = rust_structs()
    text = CONFIG_RS.read_text()
    for name, variants in UNIT_ENUMS.items():
        body = re.search(rf"pub enum {name} \{{(.*?)\n\}}", text, re.DOTALL)
        assert body, name
        names = re.findall(r"^\s*(\w+),$", body.group(1), re.MULTILINE)
        assert {re.sub(r"(?<!^)([A-Z])", r"_\1", n).upper() for n in names} == variants, name
    assert {"Snapshot", "Listener", "HttpConnectionManager", "Cluster", "Endpoint"} <= set(structs)
    assert structs["Cluster"]["type"][0] == "String"


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_snapshot_matches_config_rs(name: str) -> None:
    mutate = next(c[1] for c in CASES if c[0] == name)
    check_against(lowered(mutate), "Snapshot", rust_structs(), "snapshot")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_snapshots_match_config_rs(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    check_against(lower(decode(raw)), "Snapshot", rust_structs(), "snapshot")


def test_native_validate_accepts_snapshot() -> None:
    native = pytest.importorskip("pyproxy._native")  # native: drop the skip once it is built
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        native.validate(snapshot_bytes(decode(yaml.safe_load(path.read_text()))))
