"""Decoding and validating Envoy bootstraps: what is accepted, and the error for what is not."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyproxy.config import Bootstrap, Duration, decode, load, merge
from pyproxy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())

LISTENER = "static_resources.listeners[0]"
HCM = f"{LISTENER}.filter_chains[0].filters[0].typed_config"
VHOST = f"{HCM}.route_config.virtual_hosts[0]"
ROUTE = f"{VHOST}.routes[0]"
CLUSTER = "static_resources.clusters[0]"
# A health check with its required fields; a case adds its checker or the field it tests.
HC = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1}
SOCKET = f"{CLUSTER}.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address"
HPO_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HPO_TYPE = "type.googleapis.com/" + HPO_KEY


def listener(c: dict) -> dict:
    return c["static_resources"]["listeners"][0]


def access_log(typed: dict | None = None, **extra: Any) -> dict:
    """A file access log entry, `typed` merged into its typed_config."""
    base = {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null"}
    return {"name": "log", "typed_config": {**base, **(typed or {})}, **extra}


def hcm(c: dict) -> dict:
    return listener(c)["filter_chains"][0]["filters"][0]["typed_config"]


def vhost(c: dict) -> dict:
    return hcm(c)["route_config"]["virtual_hosts"][0]


def route(c: dict) -> dict:
    return vhost(c)["routes"][0]


def cluster(c: dict) -> dict:
    return c["static_resources"]["clusters"][0]


def socket(c: dict) -> dict:
    lbe = cluster(c)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    return lbe["endpoint"]["address"]["socket_address"]


def second_cluster(c: dict) -> None:
    other = copy.deepcopy(cluster(c))
    other["name"] = "other"
    c["static_resources"]["clusters"].append(other)


def mutated(fn: Callable[[dict], Any]) -> dict:
    c = copy.deepcopy(BASE)
    fn(c)
    return c


def hpo(**fields: Any) -> dict:
    return {HPO_KEY: {"@type": HPO_TYPE, **fields}}


DOWNSTREAM_CX = ("type.googleapis.com/"
                 "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig")


def fixed_heap(n: int, name: str = "heap") -> dict:
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
        "max_heap_size_bytes": n}}


def action(name: str = "envoy.overload_actions.stop_accepting_requests", monitor: str = "heap",
           threshold: dict | None = {"value": 0.9}, scaled: dict | None = None) -> dict:  # noqa: B006
    trigger: dict = {"name": monitor}
    if threshold is not None:
        trigger["threshold"] = threshold
    if scaled is not None:
        trigger["scaled"] = scaled
    return {"name": name, "triggers": [trigger]}


def scale_timers(*factors: dict) -> dict:
    return {"@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
            "timer_scale_factors": list(factors)}


def overload(*actions: dict) -> dict:
    return {"resource_monitors": [fixed_heap(1 << 30)], "actions": list(actions)}


def test_default_config_decodes() -> None:
    b = decode(copy.deepcopy(BASE))
    assert isinstance(b, Bootstrap)
    assert b.static_resources.clusters[0].name == "demo"
    assert b.admin is not None
    assert b.admin.address is not None
    assert b.admin.address.socket_address.port_value == 9901


ACCEPTED: list[tuple[str, Callable[[dict], Any]]] = [
    ("no_admin", lambda c: c.pop("admin")),
    ("circuit_breakers", lambda c: cluster(c).update(circuit_breakers={"thresholds": [
        {"priority": "DEFAULT", "max_connections": 100, "max_pending_requests": 0, "max_requests": 50,
         "max_retries": 1, "track_remaining": True},
        {"priority": "HIGH", "max_connections": 200}]})),
    ("retry_policy", lambda c: route(c)["route"].update(retry_policy={
        "retry_on": " 5xx , reset,connect-failure,retriable-4xx,unavailable", "num_retries": 3,
        "per_try_timeout": "0.25s", "retriable_status_codes": [418],
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "1s"},
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 3})),
    ("vhost_retry_policy", lambda c: vhost(c).update(
        retry_policy={"retry_on": "gateway-error"}, include_request_attempt_count=True,
        include_attempt_count_in_response=True)),
    ("route_priority_default", lambda c: route(c)["route"].update(priority="DEFAULT")),
    ("route_priority_high", lambda c: route(c)["route"].update(priority="HIGH")),
    ("empty_static_resources", lambda c: c.update(static_resources={})),
    ("node", lambda c: c.update(node={"id": "n1", "cluster": "edge", "metadata": {"a": 1}})),
    ("admin_access_log_ignored", lambda c: c["admin"].update(access_log=[{"name": "x"}])),
    ("listener_without_name", lambda c: listener(c).pop("name")),
    ("any_filter_name", lambda c: listener(c)["filter_chains"][0]["filters"][0].update(name="hcm")),
    ("codec_http1", lambda c: hcm(c).update(codec_type="HTTP1")),
    ("max_headers_8192", lambda c: hcm(c).update(max_request_headers_kb=8192)),
    ("stream_idle_0", lambda c: hcm(c).update(stream_idle_timeout="0s")),
    ("duration_object", lambda c: cluster(c).update(connect_timeout={"seconds": 1, "nanos": 5})),
    ("cluster_type_absent", lambda c: cluster(c).pop("type")),
    ("strict_dns_hostname", lambda c: (cluster(c).update(type="STRICT_DNS"),
                                       socket(c).update(address="localhost"))),
    ("ipv6_endpoint", lambda c: socket(c).update(address="::1")),
    ("legacy_header_match", lambda c: route(c)["match"].update(
        headers=[{"name": "X-A", "exact_match": "1"}])),
    ("header_present_by_default", lambda c: route(c)["match"].update(headers=[{"name": "x"}])),
    ("header_exact_empty_missing_as_empty", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True}])),
    ("query_no_matcher", lambda c: route(c)["match"].update(query_parameters=[{"name": "q"}])),
    ("regex_google_re2", lambda c: route(c).update(
        match={"safe_regex": {"google_re2": {}, "regex": "/a.*"}})),
    ("regex_re2_end_of_text", lambda c: route(c).update(match={"safe_regex": {"regex": r"/a\z"}})),
    ("regex_unicode_class", lambda c: route(c).update(match={"safe_regex": {"regex": r"/\pL+"}})),
    ("domains_wildcards", lambda c: vhost(c).update(domains=["*.a.com", "b.*", "C.com:80"])),
    ("hpo", lambda c: cluster(c).update(typed_extension_protocol_options=hpo(
        common_http_protocol_options={"idle_timeout": "1s", "max_requests_per_connection": 5},
        explicit_http_config={"http_protocol_options": {}}))),
    ("total_weight_equal", lambda c: route(c).update(route={"weighted_clusters": {
        "total_weight": 5, "clusters": [{"name": "demo", "weight": 5}]}})),
    ("hcm_drain_timeout", lambda c: hcm(c).update(drain_timeout="0s")),
    ("hcm_protocol_options", lambda c: hcm(c).update(common_http_protocol_options={
        "idle_timeout": "1s", "max_connection_duration": "60s",
        "max_requests_per_connection": 0, "max_headers_count": 1,
        "headers_with_underscores_action": "REJECT_REQUEST"})),
    ("direct_body_4096", lambda c: route(c).update(route=None, direct_response={
        "status": 200, "body": {"inline_string": "x" * 4096}})),
    ("direct_body_raised_limit", lambda c: (
        hcm(c)["route_config"].update(max_direct_response_body_size_bytes=6000),
        route(c).update(route=None, direct_response={"status": 200, "body": {"inline_string": "x" * 5000}}))),
    ("cluster_header", lambda c: route(c).update(route={"cluster_header": "X-Cluster"})),
    ("maglev", lambda c: cluster(c).update(lb_policy="MAGLEV", maglev_lb_config={"table_size": 5000011})),
    ("ring_hash", lambda c: (
        cluster(c).update(lb_policy="RING_HASH", ring_hash_lb_config={
            "minimum_ring_size": 8, "maximum_ring_size": 8388608, "hash_function": "XX_HASH"}),
        route(c)["route"].update(hash_policy=[
            {"header": {"header_name": "x-user"}, "terminal": True}, {"cookie": {"name": "sid", "path": "/"}},
            {"cookie": {"name": "s2", "ttl": "0s", "attributes": [{"name": "SameSite", "value": "Lax"}]}},
            {"connection_properties": {"source_ip": True}}, {"query_parameter": {"name": "u"}}]))),
    ("upgrade_configs", lambda c: (
        hcm(c).update(upgrade_configs=[{"upgrade_type": "websocket", "enabled": True, "filters": []},
                                       {"upgrade_type": ""}]),
        route(c)["route"].update(upgrade_configs=[{"upgrade_type": "websocket", "enabled": False}]))),
    ("hpo_max_headers_count", lambda c: cluster(c).update(typed_extension_protocol_options=hpo(
        common_http_protocol_options={"max_headers_count": 4294967295},
        explicit_http_config={"http_protocol_options": {}}))),
]


@pytest.mark.parametrize(("name", "mutate"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(name: str, mutate: Callable[[dict], Any]) -> None:
    decode(mutated(mutate))


REJECTED: list[tuple[str, Callable[[dict], Any], str, str]] = [
    # shapes and types
    ("unknown_field", lambda c: cluster(c).update(foo=1), f"{CLUSTER}.foo", "unknown field 'foo'"),
    ("misspelled_field", lambda c: cluster(c).update(lb_polcy="RANDOM"), f"{CLUSTER}.lb_polcy",
     "did you mean 'lb_policy'"),
    ("camel_case", lambda c: hcm(c).update(statPrefix=hcm(c).pop("stat_prefix")),
     f"{HCM}.statPrefix", "did you mean 'stat_prefix'"),
    ("layered_runtime", lambda c: c.update(layered_runtime={}), "layered_runtime",
     "runtime layers are not supported"),
    ("wrong_type", lambda c: cluster(c).update(name=5), f"{CLUSTER}.name",
     "expected a string, got 5"),
    ("string_port", lambda c: socket(c).update(port_value="8080"), f"{SOCKET}.port_value",
     "expected an integer, got '8080'"),
    ("port_range", lambda c: socket(c).update(port_value=70000), f"{SOCKET}.port_value",
     "70000 is out of range"),
    ("missing_required", lambda c: cluster(c).pop("name"), f"{CLUSTER}.name",
     "required field is missing"),
    ("not_a_mapping", lambda c: c.update(static_resources=[]), "static_resources",
     "expected a mapping"),
    # enums
    ("lb_policy", lambda c: cluster(c).update(lb_policy="FOO"), f"{CLUSTER}.lb_policy",
     "'FOO' is not one of ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV"),
    ("cluster_type_eds", lambda c: cluster(c).update(type="EDS"), f"{CLUSTER}.type",
     "'EDS' is not one of STATIC, STRICT_DNS"),
    ("codec_http2", lambda c: hcm(c).update(codec_type="HTTP2"), f"{HCM}.codec_type",
     "'HTTP2' is not one of AUTO, HTTP1"),
    ("add_if_absent", lambda c: route(c).update(request_headers_to_add=[
        {"header": {"key": "a", "value": "b"}, "append_action": "ADD_IF_ABSENT"}]),
     f"{ROUTE}.request_headers_to_add[0].append_action", "'ADD_IF_ABSENT' is not one of"),
    # typed_config
    ("hcm_type_url", lambda c: hcm(c).update({"@type": "type.googleapis.com/x"}),
     f"{HCM}.@type", "'type.googleapis.com/x' is not supported; expected "
     "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
     "HttpConnectionManager"),
    ("router_type_url", lambda c: hcm(c)["http_filters"][0]["typed_config"].update(
        {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}),
     f"{HCM}.http_filters[0].typed_config.@type",
     "expected type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
    ("router_typed_config_missing", lambda c: hcm(c)["http_filters"][0].pop("typed_config"),
     f"{HCM}.http_filters[0].typed_config", "required field is missing"),
    ("hpo_type_url", lambda c: cluster(c).update(typed_extension_protocol_options={
        HPO_KEY: {"@type": "x", "explicit_http_config": {"http_protocol_options": {}}}}),
     f'{CLUSTER}.typed_extension_protocol_options["{HPO_KEY}"].@type', "'x' is not supported"),
    ("hpo_unknown_key", lambda c: cluster(c).update(typed_extension_protocol_options={"foo": {}}),
     f"{CLUSTER}.typed_extension_protocol_options.foo", "unknown field 'foo'"),
    ("hpo_http2", lambda c: cluster(c).update(typed_extension_protocol_options=hpo(
        explicit_http_config={"http2_protocol_options": {}})),
     f'{CLUSTER}.typed_extension_protocol_options["{HPO_KEY}"].explicit_http_config.'
     "http2_protocol_options", "HTTP/2 is not supported yet"),
    ("hpo_no_explicit", lambda c: cluster(c).update(typed_extension_protocol_options=hpo()),
     f'{CLUSTER}.typed_extension_protocol_options["{HPO_KEY}"].explicit_http_config',
     "required field is missing"),
    ("hpo_max_headers_count_0", lambda c: cluster(c).update(typed_extension_protocol_options=hpo(
        common_http_protocol_options={"max_headers_count": 0},
        explicit_http_config={"http_protocol_options": {}})),
     f'{CLUSTER}.typed_extension_protocol_options["{HPO_KEY}"].common_http_protocol_options.'
     "max_headers_count", "0 is out of range; expected at least 1"),
    # listeners and HCM
    ("hcm_max_headers_count_0", lambda c: hcm(c).update(
        common_http_protocol_options={"max_headers_count": 0}),
     f"{HCM}.common_http_protocol_options.max_headers_count",
     "0 is out of range; expected at least 1"),
    ("hcm_underscores_action", lambda c: hcm(c).update(
        common_http_protocol_options={"headers_with_underscores_action": "DROP"}),
     f"{HCM}.common_http_protocol_options.headers_with_underscores_action",
     "'DROP' is not one of ALLOW, REJECT_REQUEST, DROP_HEADER"),
    ("hcm_max_requests_negative", lambda c: hcm(c).update(
        common_http_protocol_options={"max_requests_per_connection": -1}),
     f"{HCM}.common_http_protocol_options.max_requests_per_connection", "-1 is out of range"),
    ("hcm_escaped_slashes", lambda c: hcm(c).update(path_with_escaped_slashes_action="UNESCAPE"),
     f"{HCM}.path_with_escaped_slashes_action",
     "'UNESCAPE' is not one of IMPLEMENTATION_SPECIFIC_DEFAULT, KEEP_UNCHANGED, REJECT_REQUEST, "
     "UNESCAPE_AND_REDIRECT, UNESCAPE_AND_FORWARD"),
    ("hcm_normalize_path_string", lambda c: hcm(c).update(normalize_path="yes"),
     f"{HCM}.normalize_path", "expected a boolean"),
    ("hcm_max_connection_duration", lambda c: hcm(c).update(
        common_http_protocol_options={"max_connection_duration": "1"}),
     f"{HCM}.common_http_protocol_options.max_connection_duration", "'1' is not a duration"),
    ("ring_min_over_max", lambda c: cluster(c).update(lb_policy="RING_HASH", ring_hash_lb_config={
        "minimum_ring_size": 10, "maximum_ring_size": 5}),
     f"{CLUSTER}.ring_hash_lb_config.minimum_ring_size", "10 is greater than maximum_ring_size (5)"),
    ("ring_too_large", lambda c: cluster(c).update(ring_hash_lb_config={"maximum_ring_size": 8388609}),
     f"{CLUSTER}.ring_hash_lb_config.maximum_ring_size", "expected at most 8388608"),
    ("ring_murmur", lambda c: cluster(c).update(ring_hash_lb_config={"hash_function": "MURMUR_HASH_2"}),
     f"{CLUSTER}.ring_hash_lb_config.hash_function", "MURMUR_HASH_2 is not supported"),
    ("maglev_not_prime", lambda c: cluster(c).update(lb_policy="MAGLEV", maglev_lb_config={"table_size": 65536}),
     f"{CLUSTER}.maglev_lb_config.table_size", "65536 is not a prime number up to 5000011"),
    ("maglev_too_large", lambda c: cluster(c).update(maglev_lb_config={"table_size": 5000077}),
     f"{CLUSTER}.maglev_lb_config.table_size", "not a prime number up to 5000011"),
    ("lb_policy_cluster_provided", lambda c: cluster(c).update(lb_policy="CLUSTER_PROVIDED"),
     f"{CLUSTER}.lb_policy", "'CLUSTER_PROVIDED' is not one of"),
    ("regex_and_prefix_rewrite", lambda c: route(c)["route"].update(
        prefix_rewrite="/x", regex_rewrite={"pattern": {"regex": "a"}, "substitution": "b"}),
     f"{ROUTE}.route", "specify only one of prefix_rewrite, regex_rewrite"),
    ("regex_rewrite_lookahead", lambda c: route(c)["route"].update(
        regex_rewrite={"pattern": {"regex": "a(?=b)"}, "substitution": "b"}),
     f"{ROUTE}.route.regex_rewrite.pattern.regex", ""),
    ("require_tls_external_only", lambda c: vhost(c).update(require_tls="EXTERNAL_ONLY"),
     f"{VHOST}.require_tls", "EXTERNAL_ONLY is not supported yet"),
    ("direct_body_too_big", lambda c: route(c).update(route=None, direct_response={
        "status": 200, "body": {"inline_string": "x" * 4097}}),
     f"{ROUTE}.direct_response.body", "response body size is 4097 bytes; maximum is 4096"),
    ("direct_body_missing_file", lambda c: route(c).update(route=None, direct_response={
        "status": 200, "body": {"filename": "/nonexistent/page.html"}}),
     f"{ROUTE}.direct_response.body.filename", "file /nonexistent/page.html does not exist"),
    ("direct_body_two_sources", lambda c: route(c).update(route=None, direct_response={
        "status": 200, "body": {"inline_string": "a", "inline_bytes": "YQ=="}}),
     f"{ROUTE}.direct_response.body", "needs exactly one of"),
    ("direct_body_bad_base64", lambda c: route(c).update(route=None, direct_response={
        "status": 200, "body": {"inline_bytes": "!!"}}),
     f"{ROUTE}.direct_response.body.inline_bytes", "is not base64"),
    ("direct_body_no_env", lambda c: route(c).update(route=None, direct_response={
        "status": 200, "body": {"environment_variable": "PYPROXY_SURELY_UNSET"}}),
     f"{ROUTE}.direct_response.body.environment_variable", "does not exist"),
    ("hash_policy_two", lambda c: route(c)["route"].update(hash_policy=[
        {"header": {"header_name": "x"}, "cookie": {"name": "y"}}]),
     f"{ROUTE}.route.hash_policy[0]", "needs exactly one of"),
    ("hash_policy_none", lambda c: route(c)["route"].update(hash_policy=[{"terminal": True}]),
     f"{ROUTE}.route.hash_policy[0]", "needs exactly one of"),
    ("hash_policy_cookie_name", lambda c: route(c)["route"].update(hash_policy=[
        {"cookie": {"name": "s;id", "ttl": "10s"}}]),
     f"{ROUTE}.route.hash_policy[0].cookie.name", "may not hold ';'"),
    ("hash_policy_cookie_attribute", lambda c: route(c)["route"].update(hash_policy=[
        {"cookie": {"name": "sid", "ttl": "10s", "attributes": [{"name": ""}]}}]),
     f"{ROUTE}.route.hash_policy[0].cookie.attributes[0].name", "must not be empty"),
    ("hash_policy_regex_rewrite", lambda c: route(c)["route"].update(hash_policy=[
        {"header": {"header_name": "x", "regex_rewrite": {}}}]),
     f"{ROUTE}.route.hash_policy[0].header.regex_rewrite", "not supported"),
    ("hash_policy_filter_state", lambda c: route(c)["route"].update(hash_policy=[{"filter_state": {"key": "k"}}]),
     f"{ROUTE}.route.hash_policy[0].filter_state", "not supported"),
    ("hash_policy_bad_header", lambda c: route(c)["route"].update(hash_policy=[{"header": {"header_name": "a b"}}]),
     f"{ROUTE}.route.hash_policy[0].header.header_name", ""),
    ("hcm_upgrade_twice", lambda c: hcm(c).update(upgrade_configs=[
        {"upgrade_type": "websocket"}, {"upgrade_type": "WebSocket"}]),
     f"{HCM}.upgrade_configs[1].upgrade_type", "'WebSocket' is already configured at"),
    ("route_upgrade_twice", lambda c: route(c)["route"].update(upgrade_configs=[
        {"upgrade_type": "websocket"}, {"upgrade_type": "websocket", "enabled": False}]),
     f"{ROUTE}.route.upgrade_configs[1].upgrade_type", "already configured"),
    ("route_upgrade_empty", lambda c: route(c)["route"].update(upgrade_configs=[{"upgrade_type": ""}]),
     f"{ROUTE}.route.upgrade_configs[0].upgrade_type", "must not be empty"),
    ("hcm_upgrade_connect", lambda c: hcm(c).update(upgrade_configs=[{"upgrade_type": "CONNECT"}]),
     f"{HCM}.upgrade_configs[0].upgrade_type", "CONNECT is not supported"),
    ("route_upgrade_connect_config", lambda c: route(c)["route"].update(upgrade_configs=[
        {"upgrade_type": "x", "connect_config": {}}]),
     f"{ROUTE}.route.upgrade_configs[0].connect_config", "CONNECT is not supported"),
    ("hcm_upgrade_filters", lambda c: hcm(c).update(upgrade_configs=[
        {"upgrade_type": "websocket", "filters": [{"name": "x"}]}]),
     f"{HCM}.upgrade_configs[0].filters", "per-upgrade filter chains are not supported"),
    ("hcm_upgrade_unknown_field", lambda c: hcm(c).update(upgrade_configs=[{"upgrade_type": "ws", "x": 1}]),
     f"{HCM}.upgrade_configs[0].x", "unknown field"),
    ("hcm_strip_both", lambda c: hcm(c).update(strip_any_host_port=True, strip_matching_host_port=True),
     f"{HCM}.strip_any_host_port", "set only one of strip_any_host_port and strip_matching_host_port"),
    ("hcm_drain_timeout_negative", lambda c: hcm(c).update(drain_timeout="-1s"),
     f"{HCM}.drain_timeout", "must not be negative"),
    ("listener_hostname", lambda c: listener(c)["address"]["socket_address"].update(
        address="localhost"), f"{LISTENER}.address.socket_address.address", "not an IP address"),
    ("duplicate_listener", lambda c: c["static_resources"]["listeners"].append(
        {**copy.deepcopy(listener(c)), "address": {"socket_address": {
            "address": "0.0.0.0", "port_value": 1}}}),
     "static_resources.listeners[1].name", "duplicate listener name 'main'"),
    ("duplicate_listener_address", lambda c: c["static_resources"]["listeners"].append(
        {**copy.deepcopy(listener(c)), "name": "b"}),
     "static_resources.listeners[1].address", "0.0.0.0:10000 is already the address"),
    ("two_filter_chains", lambda c: listener(c)["filter_chains"].append(
        copy.deepcopy(listener(c)["filter_chains"][0])), f"{LISTENER}.filter_chains",
     "exactly one"),
    ("tls", lambda c: listener(c)["filter_chains"][0].update(transport_socket={}),
     f"{LISTENER}.filter_chains[0].transport_socket", "TLS is not supported yet"),
    ("no_http_filters", lambda c: hcm(c).update(http_filters=[]), f"{HCM}.http_filters",
     "has 0 filters; pyproxy supports exactly one, the router"),
    ("two_routers", lambda c: hcm(c)["http_filters"].append(hcm(c)["http_filters"][0]),
     f"{HCM}.http_filters", "has 2 filters"),
    ("listener_access_log", lambda c: listener(c).update(access_log=[access_log()]),
     f"{LISTENER}.access_log", "a listener's own (connection) access logs are not supported yet"),
    ("access_log_options", lambda c: hcm(c).update(access_log_options={"flush_access_log_on_new_request": True}),
     f"{HCM}.access_log_options", "access log flushes at a request's start or on an interval are not supported"),
    ("access_log_no_logger", lambda c: hcm(c).update(access_log=[{"name": "x"}]),
     f"{HCM}.access_log[0].typed_config", "required field is missing"),
    ("access_log_unknown_logger", lambda c: hcm(c).update(access_log=[access_log({"@type": "x.y"})]),
     f"{HCM}.access_log[0].typed_config.@type",
     "'x.y' is not a supported access logger; expected one of type.googleapis.com/envoy.extensions."
     "access_loggers.file.v3.FileAccessLog"),
    ("access_log_empty_path", lambda c: hcm(c).update(access_log=[access_log({"path": ""})]),
     f"{HCM}.access_log[0].typed_config.path", "must not be empty"),
    ("access_log_unknown_field", lambda c: hcm(c).update(access_log=[access_log({"paht": "/x"})]),
     f"{HCM}.access_log[0].typed_config.paht", "did you mean 'path'"),
    ("access_log_two_formats", lambda c: hcm(c).update(access_log=[access_log(
        {"log_format": {"text_format": "%PROTOCOL%", "json_format": {"a": "b"}}})]),
     f"{HCM}.access_log[0].typed_config.log_format",
     "needs exactly one of text_format, text_format_source, json_format; got text_format, json_format"),
    ("access_log_no_format", lambda c: hcm(c).update(access_log=[access_log({"log_format": {}})]),
     f"{HCM}.access_log[0].typed_config.log_format", "needs exactly one of"),
    ("access_log_old_and_new_format", lambda c: hcm(c).update(access_log=[access_log(
        {"format": "x", "log_format": {"text_format": "y"}})]),
     f"{HCM}.access_log[0].typed_config", "set only one of log_format, format"),
    ("access_log_formatters", lambda c: hcm(c).update(access_log=[access_log(
        {"log_format": {"text_format": "y", "formatters": [{"name": "f"}]}})]),
     f"{HCM}.access_log[0].typed_config.log_format.formatters", "custom formatter extensions"),
    ("access_log_two_filters", lambda c: hcm(c).update(access_log=[access_log(filter={
        "not_health_check_filter": {}, "response_flag_filter": {}})]),
     f"{HCM}.access_log[0].filter",
     "needs exactly one filter; got not_health_check_filter, response_flag_filter"),
    ("access_log_traceable", lambda c: hcm(c).update(access_log=[access_log(filter={"traceable_filter": {}})]),
     f"{HCM}.access_log[0].filter.traceable_filter", "is not supported: pyproxy does no tracing"),
    ("access_log_bad_flag", lambda c: hcm(c).update(access_log=[access_log(filter={
        "response_flag_filter": {"flags": ["UH", "XX"]}})]),
     f"{HCM}.access_log[0].filter.response_flag_filter.flags[1]", "'XX' is not a response flag"),
    ("access_log_one_and", lambda c: hcm(c).update(access_log=[access_log(filter={
        "and_filter": {"filters": [{"not_health_check_filter": {}}]}})]),
     f"{HCM}.access_log[0].filter.and_filter.filters", "has 1 filters; Envoy requires at least 2"),
    ("access_log_nested_bad", lambda c: hcm(c).update(access_log=[access_log(filter={
        "or_filter": {"filters": [{"not_health_check_filter": {}}, {"header_filter": {"header": {"name": ""}}}]}})]),
     f"{HCM}.access_log[0].filter.or_filter.filters[1].header_filter.header.name", "must not be empty"),
    ("access_log_comparison_op", lambda c: hcm(c).update(access_log=[access_log(filter={
        "status_code_filter": {"comparison": {"op": "GT"}}})]),
     f"{HCM}.access_log[0].filter.status_code_filter.comparison.op", "'GT' is not one of GE, EQ, LE, NE"),
    ("rds", lambda c: (hcm(c).pop("route_config"), hcm(c).update(rds={"route_config_name": "r"})),
     f"{HCM}.rds", "RDS is not supported yet"),
    ("no_route_config", lambda c: hcm(c).pop("route_config"), f"{HCM}.route_config",
     "is required"),
    ("empty_stat_prefix", lambda c: hcm(c).update(stat_prefix=""), f"{HCM}.stat_prefix",
     "must not be empty"),
    ("max_headers_0", lambda c: hcm(c).update(max_request_headers_kb=0),
     f"{HCM}.max_request_headers_kb", "0 is out of range; expected 1..8192"),
    ("max_headers_9000", lambda c: hcm(c).update(max_request_headers_kb=9000),
     f"{HCM}.max_request_headers_kb", "9000 is out of range"),
    ("duration_ms", lambda c: hcm(c).update(request_timeout="250ms"), f"{HCM}.request_timeout",
     "'250ms' is not a duration"),
    ("duration_number", lambda c: hcm(c).update(request_timeout=5), f"{HCM}.request_timeout",
     "5 is not a duration"),
    ("duration_negative", lambda c: hcm(c).update(request_timeout="-1s"),
     f"{HCM}.request_timeout", "must not be negative"),
    # routes
    ("unknown_cluster", lambda c: route(c)["route"].update(cluster="nope"),
     f"{ROUTE}.route.cluster", "unknown cluster 'nope'"),
    ("unknown_weighted_cluster", lambda c: route(c).update(route={"weighted_clusters": {
        "clusters": [{"name": "nope", "weight": 1}]}}),
     f"{ROUTE}.route.weighted_clusters.clusters[0].name", "unknown cluster 'nope'"),
    ("weights_zero", lambda c: route(c).update(route={"weighted_clusters": {
        "clusters": [{"name": "demo", "weight": 0}]}}),
     f"{ROUTE}.route.weighted_clusters.clusters", "must be greater than 0"),
    ("total_weight_differs", lambda c: route(c).update(route={"weighted_clusters": {
        "total_weight": 100, "clusters": [{"name": "demo", "weight": 50}]}}),
     f"{ROUTE}.route.weighted_clusters.total_weight", "is not the sum of the weights (50)"),
    ("cluster_and_weighted", lambda c: route(c)["route"].update(weighted_clusters={
        "clusters": [{"name": "demo", "weight": 1}]}), f"{ROUTE}.route",
     "exactly one of cluster, weighted_clusters"),
    ("cluster_and_cluster_header", lambda c: route(c)["route"].update(cluster_header="x-cluster"),
     f"{ROUTE}.route", "exactly one of cluster, weighted_clusters, cluster_header"),
    ("cluster_header_bad_name", lambda c: route(c).update(route={"cluster_header": "x cluster"}),
     f"{ROUTE}.route.cluster_header", ""),
    ("validate_clusters_false", lambda c: hcm(c)["route_config"].update(validate_clusters=False),
     f"{HCM}.route_config.validate_clusters", "false is not supported"),
    ("duplicate_domain", lambda c: hcm(c)["route_config"]["virtual_hosts"].append(
        {"name": "b", "domains": ["*"]}), f"{HCM}.route_config.virtual_hosts[1].domains[0]",
     "duplicate domain '*'"),
    ("duplicate_domain_case", lambda c: (vhost(c).update(domains=["A.com"]),
        hcm(c)["route_config"]["virtual_hosts"].append({"name": "b", "domains": ["a.com"]})),
     f"{HCM}.route_config.virtual_hosts[1].domains[0]", "duplicate domain 'a.com'"),
    ("middle_wildcard", lambda c: vhost(c).update(domains=["a.*.com"]), f"{VHOST}.domains[0]",
     "'a.*.com' is not supported"),
    ("no_domains", lambda c: vhost(c).update(domains=[]), f"{VHOST}.domains",
     "at least one domain"),
    ("two_path_specifiers", lambda c: route(c)["match"].update(path="/x"), f"{ROUTE}.match",
     "exactly one path specifier of prefix, path, safe_regex; got prefix, path"),
    ("no_path_specifier", lambda c: route(c).update(match={}), f"{ROUTE}.match",
     "exactly one path specifier"),
    ("no_action", lambda c: route(c).pop("route"), ROUTE, "exactly one action"),
    ("two_actions", lambda c: route(c).update(direct_response={"status": 200}), ROUTE,
     "got route, direct_response"),
    ("regex_syntax", lambda c: route(c).update(match={"safe_regex": {"regex": "(("}}),
     f"{ROUTE}.match.safe_regex.regex", "'((' is not a valid regex"),
    ("regex_lookahead", lambda c: route(c).update(match={"safe_regex": {"regex": "/(?=a)"}}),
     f"{ROUTE}.match.safe_regex.regex", "RE2 does not support"),
    ("regex_backreference", lambda c: route(c).update(
        match={"safe_regex": {"regex": r"/(a)\1"}}),
     f"{ROUTE}.match.safe_regex.regex", "RE2 does not support"),
    ("header_regex", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "string_match": {"safe_regex": {"regex": "["}}}]),
     f"{ROUTE}.match.headers[0].string_match.safe_regex.regex", "not a valid regex"),
    ("two_header_specifiers", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "exact_match": "a", "present_match": True}]), f"{ROUTE}.match.headers[0]",
     "got exact_match, present_match"),
    ("string_match_empty", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "string_match": {}}]), f"{ROUTE}.match.headers[0].string_match",
     "exactly one of exact, prefix, suffix, contains, safe_regex"),
    # Envoy 1.40 refuses these too (StringMatcher and HeaderMatcher min_len 1; checked with
    # `envoy --mode validate`)
    ("string_match_empty_prefix", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "string_match": {"prefix": ""}}]),
     f"{ROUTE}.match.headers[0].string_match.prefix", "must not be empty"),
    ("query_string_match_empty_contains", lambda c: route(c)["match"].update(query_parameters=[
        {"name": "x", "string_match": {"contains": ""}}]),
     f"{ROUTE}.match.query_parameters[0].string_match.contains", "must not be empty"),
    ("legacy_suffix_match_empty", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "suffix_match": ""}]), f"{ROUTE}.match.headers[0].suffix_match", "must not be empty"),
    ("regex_ignore_case", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True}}]),
     f"{ROUTE}.match.headers[0].string_match.ignore_case", "has no effect for safe_regex"),
    ("range_match", lambda c: route(c)["match"].update(headers=[
        {"name": "x", "range_match": {"start": 1, "end": 2}}]),
     f"{ROUTE}.match.headers[0].range_match", "unknown field 'range_match'"),
    ("query_two_specifiers", lambda c: route(c)["match"].update(query_parameters=[
        {"name": "q", "present_match": True, "string_match": {"exact": "1"}}]),
     f"{ROUTE}.match.query_parameters[0]", "only one of string_match, present_match"),
    ("retry_on_unknown", lambda c: route(c)["route"].update(retry_policy={"retry_on": "5xx,foo"}),
     f"{ROUTE}.route.retry_policy.retry_on", "unknown retry condition 'foo'"),
    ("retriable_headers_bad", lambda c: route(c)["route"].update(
        retry_policy={"retry_on": "retriable-headers", "retriable_headers": [{"name": ""}]}),
     f"{ROUTE}.route.retry_policy.retriable_headers[0].name", "must not be empty"),
    ("retry_status_code", lambda c: route(c)["route"].update(retry_policy={"retriable_status_codes": [99999]}),
     f"{ROUTE}.route.retry_policy.retriable_status_codes[0]", "99999 is not an HTTP status"),
    ("retry_num_negative", lambda c: route(c)["route"].update(retry_policy={"num_retries": -1}),
     f"{ROUTE}.route.retry_policy.num_retries", "-1 is out of range"),
    ("retry_base_zero", lambda c: route(c)["route"].update(
        retry_policy={"retry_back_off": {"base_interval": "0s"}}),
     f"{ROUTE}.route.retry_policy.retry_back_off.base_interval", "must be greater than 0s"),
    ("retry_base_missing", lambda c: route(c)["route"].update(
        retry_policy={"retry_back_off": {"max_interval": "1s"}}),
     f"{ROUTE}.route.retry_policy.retry_back_off.base_interval", "required"),
    ("retry_max_below_base", lambda c: route(c)["route"].update(
        retry_policy={"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}),
     f"{ROUTE}.route.retry_policy.retry_back_off.max_interval",
     "must be greater than or equal to the base_interval"),
    ("retry_predicate", lambda c: route(c)["route"].update(
        retry_policy={"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]}),
     f"{ROUTE}.route.retry_policy.retry_host_predicate[0]", "only envoy.retry_host_predicates.previous_hosts"),
    ("retry_predicate_untyped", lambda c: route(c)["route"].update(
        retry_policy={"retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}]}),
     f"{ROUTE}.route.retry_policy.retry_host_predicate[0]", "with typed_config"),
    ("retry_priority", lambda c: route(c)["route"].update(retry_policy={"retry_priority": {"name": "x"}}),
     f"{ROUTE}.route.retry_policy.retry_priority", "is not supported yet"),
    ("retry_options_predicates", lambda c: route(c)["route"].update(
        retry_policy={"retry_options_predicates": [{"name": "x"}]}),
     f"{ROUTE}.route.retry_policy.retry_options_predicates", "is not supported yet"),
    ("vhost_retry_on_unknown", lambda c: vhost(c).update(retry_policy={"retry_on": "bogus"}),
     f"{VHOST}.retry_policy.retry_on", "unknown retry condition 'bogus'"),
    ("hedge_policy", lambda c: route(c)["route"].update(hedge_policy={}),
     f"{ROUTE}.route.hedge_policy", "request hedging is not supported yet"),
    ("host_rewrite_both", lambda c: route(c)["route"].update(
        host_rewrite_literal="a", auto_host_rewrite=True), f"{ROUTE}.route",
     "only one of host_rewrite_literal, auto_host_rewrite"),
    ("redirect_schemes", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "https_redirect": True, "scheme_redirect": "http"})), f"{ROUTE}.redirect",
     "only one of https_redirect, scheme_redirect"),
    ("redirect_paths", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "path_redirect": "/a", "prefix_rewrite": "/b"})), f"{ROUTE}.redirect",
     "only one of path_redirect, prefix_rewrite"),
    # CR, LF or NUL in what goes out in a header or the request line (header injection);
    # Envoy 1.40 refuses each of these (HTTP_HEADER_VALUE), found by the engine's snapshot fuzzing
    ("host_redirect_newline", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "host_redirect": "a\r\nset-cookie: x"})), f"{ROUTE}.redirect.host_redirect",
     "must not contain CR, LF or NUL"),
    ("path_redirect_newline", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "path_redirect": "/a\nb"})), f"{ROUTE}.redirect.path_redirect",
     "must not contain CR, LF or NUL"),
    ("redirect_prefix_rewrite_nul", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "prefix_rewrite": "/a\0"})), f"{ROUTE}.redirect.prefix_rewrite",
     "must not contain CR, LF or NUL"),
    ("prefix_rewrite_newline", lambda c: route(c)["route"].update(prefix_rewrite="/b\r\n"),
     f"{ROUTE}.route.prefix_rewrite", "must not contain CR, LF or NUL"),
    ("host_rewrite_newline", lambda c: route(c)["route"].update(host_rewrite_literal="h\r\nx: 1"),
     f"{ROUTE}.route.host_rewrite_literal", "must not contain CR, LF or NUL"),
    ("server_name_newline", lambda c: hcm(c).update(server_name="pp\r\nx: 1"),
     f"{HCM}.server_name", "must not contain CR, LF or NUL"),
    ("redirect_code", lambda c: (route(c).pop("route"), route(c).update(redirect={
        "response_code": 302})), f"{ROUTE}.redirect.response_code", "expected a string"),
    ("direct_response_status", lambda c: (route(c).pop("route"), route(c).update(
        direct_response={"status": 99})), f"{ROUTE}.direct_response.status",
     "99 is out of range; expected 200..599"),
    # header mutations
    ("add_pseudo_header", lambda c: route(c).update(request_headers_to_add=[
        {"header": {"key": ":path", "value": "/"}}]),
     f"{ROUTE}.request_headers_to_add[0].header.key", "may not be modified"),
    ("add_host_header", lambda c: vhost(c).update(request_headers_to_add=[
        {"header": {"key": "Host", "value": "a"}}]),
     f"{VHOST}.request_headers_to_add[0].header.key", "may not be modified"),
    ("remove_host_header", lambda c: route(c).update(request_headers_to_remove=["host"]),
     f"{ROUTE}.request_headers_to_remove[0]", "may not be removed"),
    ("bad_header_name", lambda c: route(c).update(response_headers_to_remove=["a b"]),
     f"{ROUTE}.response_headers_to_remove[0]", "'a b' is not a valid header name"),
    ("add_content_length", lambda c: route(c).update(response_headers_to_add=[
        {"header": {"key": "Content-Length", "value": "7"}}]),
     f"{ROUTE}.response_headers_to_add[0].header.key", "frames the body"),
    ("add_transfer_encoding", lambda c: vhost(c).update(request_headers_to_add=[
        {"header": {"key": "transfer-encoding", "value": "chunked"}}]),
     f"{VHOST}.request_headers_to_add[0].header.key", "frames the body"),
    ("header_value_newline", lambda c: route(c).update(response_headers_to_add=[
        {"header": {"key": "a", "value": "x\r\ny: z"}}]),
     f"{ROUTE}.response_headers_to_add[0].header.value", "must not contain CR, LF or NUL"),
    ("append_and_action", lambda c: route(c).update(response_headers_to_add=[
        {"header": {"key": "a", "value": "b"}, "append": True,
         "append_action": "APPEND_IF_EXISTS_OR_ADD"}]),
     f"{ROUTE}.response_headers_to_add[0]", "only one of append (deprecated), append_action"),
    ("raw_value", lambda c: route(c).update(response_headers_to_add=[
        {"header": {"key": "a", "raw_value": "Yg=="}}]),
     f"{ROUTE}.response_headers_to_add[0].header.raw_value", "unknown field 'raw_value'"),
    # clusters
    ("duplicate_cluster", lambda c: c["static_resources"]["clusters"].append(
        copy.deepcopy(cluster(c))), "static_resources.clusters[1].name",
     "duplicate cluster 'demo'"),
    ("static_hostname", lambda c: socket(c).update(address="localhost"), f"{SOCKET}.address",
     "'localhost' is not an IP address; a STATIC cluster needs IP literals"),
    ("connect_timeout_zero", lambda c: cluster(c).update(connect_timeout="0s"),
     f"{CLUSTER}.connect_timeout", "must be greater than 0s"),
    ("dns_refresh_rate_1ms", lambda c: cluster(c).update(dns_refresh_rate="0.001s"),
     f"{CLUSTER}.dns_refresh_rate", "must be greater than 1ms"),
    ("dns_lookup_family", lambda c: cluster(c).update(dns_lookup_family="V5"),
     f"{CLUSTER}.dns_lookup_family", "'V5' is not one of AUTO, V4_ONLY"),
    ("choice_count_1", lambda c: cluster(c).update(least_request_lb_config={"choice_count": 1}),
     f"{CLUSTER}.least_request_lb_config.choice_count", "expected 2 to 1000"),
    ("choice_count_huge", lambda c: cluster(c).update(least_request_lb_config={"choice_count": 4000000000}),
     f"{CLUSTER}.least_request_lb_config.choice_count", "expected 2 to 1000"),
    ("lb_weight_0", lambda c: cluster(c)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
     .update(load_balancing_weight=0),
     f"{CLUSTER}.load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight",
     "expected at least 1"),
    ("max_requests_twice", lambda c: cluster(c).update(
        max_requests_per_connection=5, typed_extension_protocol_options=hpo(
            common_http_protocol_options={"max_requests_per_connection": 3},
            explicit_http_config={"http_protocol_options": {}})),
     f"{CLUSTER}.max_requests_per_connection", "set only one of max_requests_per_connection"),
    ("health_check_no_timeout", lambda c: cluster(c).update(health_checks=[{
        "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}]),
     f"{CLUSTER}.health_checks[0].timeout", "is required"),
    ("health_check_zero_interval", lambda c: cluster(c).update(health_checks=[{
        "timeout": "1s", "interval": "0s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "tcp_health_check": {}}]),
     f"{CLUSTER}.health_checks[0].interval", "must be greater than 0s"),
    ("health_check_no_threshold", lambda c: cluster(c).update(health_checks=[{
        "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "tcp_health_check": {}}]),
     f"{CLUSTER}.health_checks[0].healthy_threshold", "is required"),
    ("health_check_no_checker", lambda c: cluster(c).update(health_checks=[{
        "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1}]),
     f"{CLUSTER}.health_checks[0]", "needs a checker"),
    ("health_check_two", lambda c: cluster(c).update(health_checks=[{**HC,
        "tcp_health_check": {}}] * 2),
     f"{CLUSTER}.health_checks", "only one health check per cluster"),
    ("health_check_named", lambda c: cluster(c).update(health_checks=[{
        "name": "hc", "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "tcp_health_check": {}}]),
     f"{CLUSTER}.health_checks[0].name", "named health checks are not supported yet"),
    ("health_check_no_path", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.path", "is required"),
    ("health_check_status_range", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h", "expected_statuses": [{"start": 300, "end": 200}]}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.expected_statuses[0]", "start (300) must be below end (200)"),
    ("health_check_host_header", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h", "request_headers_to_add": [{"header": {"key": "Host", "value": "x"}}]}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.request_headers_to_add[0].header.key",
     "-prefixed or host headers may not be modified"),
    ("health_check_content_length", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h", "request_headers_to_add": [
            {"header": {"key": "content-length", "value": "3"}}]}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.request_headers_to_add[0].header.key", "may not be added"),
    ("health_check_header_name", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h", "request_headers_to_add": [{"header": {"key": "x(a", "value": "3"}}]}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.request_headers_to_add[0].header.key",
     "is not a valid header name"),
    ("health_check_path_nul", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h\u0000x"}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.path", "is not a valid request path"),
    ("health_check_remove_host", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h", "request_headers_to_remove": ["host"]}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.request_headers_to_remove[0]",
     ":-prefixed or host headers may not be removed"),
    ("health_check_connect", lambda c: cluster(c).update(health_checks=[{**HC,
        "http_health_check": {"path": "/h", "method": "CONNECT"}}]),
     f"{CLUSTER}.health_checks[0].http_health_check.method", "CONNECT is not allowed"),
    ("health_check_bad_hex", lambda c: cluster(c).update(health_checks=[{**HC,
        "tcp_health_check": {"send": {"text": "zz"}, "receive": [{"text": "00"}]}}]),
     f"{CLUSTER}.health_checks[0].tcp_health_check.send.text", "is not hex"),
    ("panic_threshold", lambda c: cluster(c).update(common_lb_config={"healthy_panic_threshold": {"value": 120}}),
     f"{CLUSTER}.common_lb_config.healthy_panic_threshold.value", "<= 100"),
    ("health_check_grpc", lambda c: cluster(c).update(health_checks=[{**HC,
        "grpc_health_check": {}}]),
     f"{CLUSTER}.health_checks[0].grpc_health_check", "gRPC health checks are not supported yet"),
    ("route_grpc_timeout_max", lambda c: route(c)["route"].update(
        max_stream_duration={"grpc_timeout_header_max": "1s"}),
     f"{ROUTE}.route.max_stream_duration.grpc_timeout_header_max", "grpc-timeout header is not supported yet"),
    ("hcm_negative_stream_duration", lambda c: hcm(c).update(
        common_http_protocol_options={"max_stream_duration": "-1s"}),
     f"{HCM}.common_http_protocol_options.max_stream_duration", "must not be negative"),
    # outlier detection
    ("outlier_percent", lambda c: cluster(c).update(outlier_detection={"max_ejection_percent": 101}),
     f"{CLUSTER}.outlier_detection.max_ejection_percent", "101 is over 100 (a percentage)"),
    ("outlier_enforcing", lambda c: cluster(c).update(outlier_detection={"enforcing_consecutive_5xx": 200}),
     f"{CLUSTER}.outlier_detection.enforcing_consecutive_5xx", "200 is over 100"),
    ("outlier_zero_interval", lambda c: cluster(c).update(outlier_detection={"interval": "0s"}),
     f"{CLUSTER}.outlier_detection.interval", "must be greater than 0s"),
    ("outlier_zero_base", lambda c: cluster(c).update(outlier_detection={"base_ejection_time": "0s"}),
     f"{CLUSTER}.outlier_detection.base_ejection_time", "must be greater than 0s"),
    ("outlier_max_below_base", lambda c: cluster(c).update(outlier_detection={"max_ejection_time": "10s"}),
     f"{CLUSTER}.outlier_detection.max_ejection_time", "10000ms is less than base_ejection_time (30000ms)"),
    ("outlier_negative_jitter", lambda c: cluster(c).update(outlier_detection={"max_ejection_time_jitter": "-1s"}),
     f"{CLUSTER}.outlier_detection.max_ejection_time_jitter", "must not be negative"),
    ("outlier_monitors", lambda c: cluster(c).update(outlier_detection={"monitors": [{"name": "m"}]}),
     f"{CLUSTER}.outlier_detection.monitors", "custom outlier detection monitors are not supported"),
    ("outlier_degraded", lambda c: cluster(c).update(outlier_detection={"detect_degraded_hosts": True}),
     f"{CLUSTER}.outlier_detection.detect_degraded_hosts", "not supported yet"),
    ("outlier_unknown", lambda c: cluster(c).update(outlier_detection={"consecutive_500": 1}),
     f"{CLUSTER}.outlier_detection.consecutive_500", ""),
    # circuit breakers
    ("breaker_priority", lambda c: cluster(c).update(circuit_breakers={"thresholds": [{"priority": "LOW"}]}),
     f"{CLUSTER}.circuit_breakers.thresholds[0].priority", "'LOW' is not one of DEFAULT, HIGH"),
    ("breaker_negative", lambda c: cluster(c).update(
        circuit_breakers={"thresholds": [{"max_requests": -1}]}),
     f"{CLUSTER}.circuit_breakers.thresholds[0].max_requests", "-1 is out of range"),
    ("breaker_per_host", lambda c: cluster(c).update(
        circuit_breakers={"per_host_thresholds": [{"max_connections": 1}]}),
     f"{CLUSTER}.circuit_breakers.per_host_thresholds", "per-host circuit breakers are not supported"),
    ("breaker_retry_budget", lambda c: cluster(c).update(
        circuit_breakers={"thresholds": [{}, {"retry_budget": {}}]}),
     f"{CLUSTER}.circuit_breakers.thresholds[1].retry_budget", "retries are not supported yet"),
    ("breaker_pools", lambda c: cluster(c).update(
        circuit_breakers={"thresholds": [{"max_connection_pools": 3}]}),
     f"{CLUSTER}.circuit_breakers.thresholds[0].max_connection_pools", "is not supported"),
    ("route_priority", lambda c: route(c)["route"].update(priority="LOW"),
     f"{ROUTE}.route.priority", "'LOW' is not one of DEFAULT, HIGH"),
    ("pipe_address", lambda c: listener(c).update(address={"pipe": {"path": "/tmp/s"}}),
     f"{LISTENER}.address.pipe", "unknown field 'pipe'; supported here: socket_address"),
    ("udp", lambda c: listener(c)["address"]["socket_address"].update(protocol="UDP"),
     f"{LISTENER}.address.socket_address.protocol", "'UDP' is not one of TCP"),
    # overload manager
    ("overload_no_monitors", lambda c: c.update(overload_manager={"resource_monitors": []}),
     "overload_manager.resource_monitors", "length >= 1"),
    ("overload_heap_zero", lambda c: c.update(overload_manager={"resource_monitors": [fixed_heap(0)]}),
     "overload_manager.resource_monitors[0].typed_config.max_heap_size_bytes", "must be greater than 0"),
    ("overload_connections_zero", lambda c: c.update(overload_manager={"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {"@type": DOWNSTREAM_CX, "max_active_downstream_connections": 0}}]}),
     "overload_manager.resource_monitors[0].typed_config.max_active_downstream_connections",
     "expected an integer >= 1"),
    ("overload_connections_name", lambda c: c.update(overload_manager={"resource_monitors": [{
        "name": "dcx", "typed_config": {"@type": DOWNSTREAM_CX, "max_active_downstream_connections": 5}}]}),
     "overload_manager.resource_monitors[0].name",
     "must be named 'envoy.resource_monitors.global_downstream_max_connections'"),
    ("overload_cgroup", lambda c: c.update(overload_manager={"resource_monitors": [{"name": "m", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig"}}]}),
     "overload_manager.resource_monitors[0].typed_config.@type", "CgroupMemoryConfig"),
    ("overload_duplicate_monitor", lambda c: c.update(overload_manager={"resource_monitors": [
        fixed_heap(1), fixed_heap(2)]}),
     "overload_manager.resource_monitors[1].name", "duplicate resource monitor 'heap' (also "
     "overload_manager.resource_monitors[0])"),
    ("overload_unknown_action", lambda c: c.update(overload_manager=overload(action("envoy.overload_actions.foo"))),
     "overload_manager.actions[0].name", "unknown overload action 'envoy.overload_actions.foo'"),
    ("overload_reduce_timeouts_untyped", lambda c: c.update(overload_manager=overload(
        action("envoy.overload_actions.reduce_timeouts"))),
     "overload_manager.actions[0].typed_config", "reduce_timeouts requires typed_config"),
    ("overload_reduce_timeouts_duplicate", lambda c: c.update(overload_manager=overload({
        **action("envoy.overload_actions.reduce_timeouts"), "typed_config": scale_timers(
            {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_timeout": "1s"},
            {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_timeout": "2s"})})),
     "overload_manager.actions[0].typed_config.timer_scale_factors[1].timer",
     "duplicate timer HTTP_DOWNSTREAM_STREAM_IDLE"),
    ("overload_reduce_timeouts_no_min", lambda c: c.update(overload_manager=overload({
        **action("envoy.overload_actions.reduce_timeouts"), "typed_config": scale_timers(
            {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE"})})),
     "overload_manager.actions[0].typed_config.timer_scale_factors[0]", "exactly one of min_timeout and min_scale"),
    ("overload_reduce_timeouts_tls", lambda c: c.update(overload_manager=overload({
        **action("envoy.overload_actions.reduce_timeouts"), "typed_config": scale_timers(
            {"timer": "TRANSPORT_SOCKET_CONNECT", "min_timeout": "1s"})})),
     "overload_manager.actions[0].typed_config.timer_scale_factors[0].timer", "TLS is not supported yet"),
    ("overload_reduce_timeouts_scale", lambda c: c.update(overload_manager=overload({
        **action("envoy.overload_actions.reduce_timeouts"), "typed_config": scale_timers(
            {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 150}})})),
     "overload_manager.actions[0].typed_config.timer_scale_factors[0].min_scale.value", "<= 100"),
    ("overload_typed_elsewhere", lambda c: c.update(overload_manager=overload({
        **action(), "typed_config": scale_timers({"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_timeout": "1s"})})),
     "overload_manager.actions[0].typed_config", "takes no typed_config"),
    ("overload_duplicate_action", lambda c: c.update(overload_manager=overload(action(), action())),
     "overload_manager.actions[1].name", "duplicate overload action"),
    ("overload_unknown_monitor", lambda c: c.update(overload_manager=overload(action(monitor="nope"))),
     "overload_manager.actions[0].triggers[0].name", "unknown resource monitor 'nope'; configured: heap"),
    ("overload_threshold_range", lambda c: c.update(overload_manager=overload(action(threshold={"value": 1.5}))),
     "overload_manager.actions[0].triggers[0].threshold.value", "<= 1"),
    ("overload_scaled_inverted", lambda c: c.update(overload_manager=overload(action(
        threshold=None, scaled={"scaling_threshold": 0.9, "saturation_threshold": 0.5}))),
     "overload_manager.actions[0].triggers[0].scaled", "scaling_threshold (0.9) must be less than"),
    ("overload_no_trigger_kind", lambda c: c.update(overload_manager=overload(action(threshold=None))),
     "overload_manager.actions[0].triggers[0]", "exactly one of threshold and scaled"),
    ("overload_no_triggers", lambda c: c.update(overload_manager=overload({
        "name": "envoy.overload_actions.shrink_heap", "triggers": []})),
     "overload_manager.actions[0].triggers", "length >= 1"),
    ("overload_loadshed", lambda c: c.update(overload_manager={**overload(), "loadshed_points": [{"name": "x"}]}),
     "overload_manager.loadshed_points", "load shed points are not supported yet"),
    ("second_cluster_still_checked", lambda c: (second_cluster(c),
        c["static_resources"]["clusters"][1].update(lb_policy="X")),
     "static_resources.clusters[1].lb_policy", "'X' is not one of"),
]


@pytest.mark.parametrize(
    ("name", "mutate", "path", "message"), REJECTED, ids=[r[0] for r in REJECTED]
)
def test_rejected(name: str, mutate: Callable[[dict], Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode(mutated(mutate))
    assert info.value.path == path
    assert message in info.value.message
    assert str(info.value) == f"{path}: {info.value.message}"


@pytest.mark.parametrize(
    ("text", "seconds", "nanos", "ms"),
    [
        ("5s", 5, 0, 5000),
        ("0.25s", 0, 250_000_000, 250),
        ("1.000000001s", 1, 1, 1001),  # rounded up: a positive duration never becomes 0
        ("0.0001s", 0, 100_000, 1),
        ("0s", 0, 0, 0),
        ({"seconds": 2, "nanos": 500_000_000}, 2, 500_000_000, 2500),
        ({"seconds": "3"}, 3, 0, 3000),
    ],
)
def test_duration_parse(text: Any, seconds: int, nanos: int, ms: int) -> None:
    d = Duration.parse(text)
    assert (d.seconds, d.nanos, d.ms) == (seconds, nanos, ms)


@pytest.mark.parametrize(
    "text", ["5", "5ms", "1m", "-1s", "1.0000000001s", "", 5, None, {"secs": 1},
             {"seconds": 1, "nanos": 1_000_000_000}, {"seconds": -1}]
)
def test_duration_invalid(text: Any) -> None:
    with pytest.raises(ValueError, match=r"duration|nanos"):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}, {"a": {"b": 1, "c": 3}}),
        ({"a": [1]}, {"a": [2]}, {"a": [1, 2]}),  # protobuf MergeFrom appends repeated fields
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
        ({}, {"n": {"id": "x"}}, {"n": {"id": "x"}}),
    ],
)
def test_merge(base: dict, override: dict, expected: dict) -> None:
    before = copy.deepcopy(base)
    assert merge(base, override) == expected
    assert base == before


def test_config_yaml_merges_over_file() -> None:
    path = ROOT / "configs" / "default.yaml"
    yaml_text = """
    node: {id: from-yaml}
    static_resources:
      clusters:
      - name: extra
        load_assignment: {cluster_name: extra}
    """
    raw, b = load(path, config_yaml=yaml_text)
    assert [c.name for c in b.static_resources.clusters] == ["demo", "extra"]
    assert b.node is not None
    assert b.node.id == "from-yaml"
    assert raw["node"] == {"id": "from-yaml"}


def test_fast_yaml_parser_builds_the_same_document() -> None:
    """The libyaml loader (used when PyYAML has it, as its wheels do) must read every YAML form a
    config uses exactly as the pure-Python safe loader does: anchors, merge keys, YAML 1.1 scalars."""
    from pyproxy.config.load import _FAST_LOADER, parse_text

    if yaml.__with_libyaml__:
        assert _FAST_LOADER is yaml.CSafeLoader
    text = """
    base: &base {connect_timeout: 0.25s, type: STATIC, lb_policy: ROUND_ROBIN}
    static_resources:
      clusters:
      - <<: *base
        name: a
        per_connection_buffer_limit_bytes: 0x8000
        ignore_health_on_host_removal: yes
        circuit_breakers: {thresholds: [{max_connections: 1_000, max_retries: ~}]}
        metadata: {filter_metadata: {x: {ratio: 1.5e3, when: 2026-11-24, quoted: "010", flag: off}}}
      - {<<: *base, name: "b\u00e9", alt_stat_name: 'it''s'}
    text: |
      line one
      line two
    """
    doc = yaml.load(text, Loader=_FAST_LOADER)
    assert doc == yaml.load(text, Loader=yaml.SafeLoader)
    assert parse_text(text) == doc
    assert doc["static_resources"]["clusters"][0]["connect_timeout"] == "0.25s"
    assert doc["static_resources"]["clusters"][0]["ignore_health_on_host_removal"] is True
    assert doc["static_resources"]["clusters"][1]["name"] == "b\u00e9"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("static_resources: [", "unable to parse config string as YAML/JSON at line 1"),
        # A byte that is not UTF-8 on the command line arrives as a lone surrogate.
        ("node: {id: \udcff}", "unable to parse config string as YAML/JSON"),
        ("- a\n- b\n", "expected a mapping (a Bootstrap), got list"),
        ("/nonexistent/pyproxy.yaml", "unable to read file '/nonexistent/pyproxy.yaml'"),
    ],
)
def test_load_errors(source: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(source)
    assert info.value.path == ""
    assert message in info.value.message


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda: str(ROOT / "configs" / "default.yaml"), id="path_str"),
        pytest.param(lambda: ROOT / "configs" / "default.yaml", id="pathlike"),
        pytest.param(lambda: (ROOT / "configs" / "default.yaml").read_text(), id="yaml_text"),
        pytest.param(lambda: copy.deepcopy(BASE), id="dict"),
        pytest.param(lambda: __import__("json").dumps(BASE), id="json_text"),
    ],
)
def test_load_sources(source: Callable[[], Any]) -> None:
    raw, b = load(source())
    assert raw == BASE
    assert b.static_resources.listeners[0].name == "main"


def test_load_needs_a_source() -> None:
    with pytest.raises(ConfigError, match="at least one of --config-path or --config-yaml"):
        load(None)


@pytest.mark.parametrize(
    ("args", "path", "message"),
    [
        (("x",), "", "x"),  # how native raises it
        (("a.b", "bad"), "a.b", "bad"),
    ],
)
def test_config_error_constructor(args: tuple[str, ...], path: str, message: str) -> None:
    e = ConfigError(*args)
    assert (e.path, e.message) == (path, message)
    assert str(e) == (f"{path}: {message}" if path else message)
