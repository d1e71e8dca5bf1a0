"""Lowering a validated Bootstrap into the engine snapshot (core/src/config.rs).

The snapshot is the only value that crosses into Rust, once per change. This module writes every
field config.rs declares, with Envoy's defaults filled in, so the engine never needs defaults of
its own; optional one-of members are left out when unset. The shape must match config.rs exactly
(the engine denies unknown fields): when one changes, change the other and tests/config/
test_lower.py in the same commit.
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import model as m
from .duration import Duration
from .validate import OVERLOAD_ACTIONS, data_source_text, effective_listener_name, payload_bytes, retry_on_tokens

__all__ = ["lower", "snapshot_bytes"]

# Envoy defaults that the snapshot spells out.
DEFAULT_SERVER_NAME = "envoy"
DEFAULT_BUFFER_LIMIT = 1024 * 1024
DEFAULT_MAX_REQUEST_HEADERS_KB = 60
DEFAULT_STREAM_IDLE_TIMEOUT_MS = 300_000
DEFAULT_IDLE_TIMEOUT_MS = 3_600_000
DEFAULT_MAX_HEADERS_COUNT = 100
DEFAULT_DRAIN_TIMEOUT_MS = 5_000
DEFAULT_ROUTE_TIMEOUT_MS = 15_000
DEFAULT_CONNECT_TIMEOUT_MS = 5_000
DEFAULT_CHOICE_COUNT = 2
DEFAULT_DNS_REFRESH_RATE_MS = 5_000
# Envoy's circuit breaker defaults (envoy.config.cluster.v3.CircuitBreakers.Thresholds).
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3

_REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301,
    "FOUND": 302,
    "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}

Json = dict[str, Any]


def snapshot_bytes(bootstrap: m.Bootstrap) -> bytes:
    """The snapshot as the JSON bytes `_native.Engine.start/apply` and `_native.validate` take."""
    return msgspec.json.encode(lower(bootstrap))


def lower(bootstrap: m.Bootstrap) -> Json:
    """The snapshot as a dict (config.rs `Snapshot`)."""
    return {
        "listeners": [_listener(x, i) for i, x in enumerate(bootstrap.static_resources.listeners)],
        "clusters": [_cluster(c) for c in bootstrap.static_resources.clusters],
        "overload": _overload(bootstrap.overload_manager) if bootstrap.overload_manager else None,
    }


def _overload(o: m.OverloadManager) -> Json:
    monitors = []
    for mon in o.resource_monitors:
        tc = mon.typed_config
        kind: Json
        if isinstance(tc, m.FixedHeapConfig):
            kind = {"fixed_heap": {"max_heap_size_bytes": tc.max_heap_size_bytes}}
        elif isinstance(tc, m.InjectedResourceConfig):
            kind = {"injected_resource": {"filename": tc.filename}}
        else:
            kind = {"global_downstream_max_connections": {
                "max_active_downstream_connections": tc.max_active_downstream_connections}}
        monitors.append({"name": mon.name, "kind": kind})
    actions = []
    for a in o.actions:
        triggers = []
        for t in a.triggers:
            if t.threshold is not None:
                tk: Json = {"threshold": {"value": t.threshold.value}}
            else:
                assert t.scaled is not None
                tk = {"scaled": {"scaling_threshold": t.scaled.scaling_threshold,
                                 "saturation_threshold": t.scaled.saturation_threshold}}
            triggers.append({"monitor": t.name, "kind": tk})
        factors = []
        if a.typed_config is not None:
            for f in a.typed_config.timer_scale_factors:
                least: Json = ({"min_timeout_ms": f.min_timeout.ms} if f.min_timeout is not None
                               else {"min_scale": (f.min_scale.value if f.min_scale else 0.0) / 100})
                factors.append({"timer": f.timer, "min": least})
        actions.append({"name": a.name, "kind": OVERLOAD_ACTIONS[a.name], "triggers": triggers,
                        "timer_scale_factors": factors})
    return {"refresh_interval_ms": _ms(o.refresh_interval, 1000), "monitors": monitors, "actions": actions}


def _ms(d: Duration | None, default: int) -> int:
    return default if d is None else d.ms


def _ms_floor(d: Duration | None) -> int:
    """A stream duration's milliseconds (0, none, where it is not given)."""
    return 0 if d is None else d.ms_floor


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


# --- listeners --------------------------------------------------------------------------------


def _listener(listener: m.Listener, index: int = 0) -> Json:
    sa = listener.address.socket_address
    return {
        "name": effective_listener_name(listener),
        "address": sa.address,
        "port": sa.port_value,
        "per_connection_buffer_limit_bytes": _or(
            listener.per_connection_buffer_limit_bytes, DEFAULT_BUFFER_LIMIT
        ),
        "drain_type": listener.drain_type,
        "hcm": _hcm(listener.filter_chains[0].filters[0].typed_config,
                    f"static_resources.listeners[{index}].filter_chains[0].filters[0].typed_config"),
    }


def _hcm(hcm: m.HttpConnectionManager, path: str = "") -> Json:
    assert hcm.route_config is not None  # validate requires it
    common = hcm.common_http_protocol_options or m.HcmProtocolOptions()
    return {
        "stat_prefix": hcm.stat_prefix,
        # Envoy sends `server: envoy` when server_name is unset or empty.
        "server_name": hcm.server_name or DEFAULT_SERVER_NAME,
        "server_header_transformation": hcm.server_header_transformation,
        "use_remote_address": hcm.use_remote_address,
        "xff_num_trusted_hops": hcm.xff_num_trusted_hops,
        "skip_xff_append": hcm.skip_xff_append,
        "generate_request_id": hcm.generate_request_id,
        "preserve_external_request_id": hcm.preserve_external_request_id,
        "always_set_request_id_in_response": hcm.always_set_request_id_in_response,
        "via": hcm.via,
        "max_request_headers_kb": _or(hcm.max_request_headers_kb, DEFAULT_MAX_REQUEST_HEADERS_KB),
        "stream_idle_timeout_ms": _ms(hcm.stream_idle_timeout, DEFAULT_STREAM_IDLE_TIMEOUT_MS),
        "request_headers_timeout_ms": _ms(hcm.request_headers_timeout, 0),
        "request_timeout_ms": _ms(hcm.request_timeout, 0),
        "max_stream_duration_ms": _ms_floor(common.max_stream_duration),
        "idle_timeout_ms": _ms(common.idle_timeout, DEFAULT_IDLE_TIMEOUT_MS),
        "max_connection_duration_ms": _ms(common.max_connection_duration, 0),
        "drain_timeout_ms": _ms(hcm.drain_timeout, DEFAULT_DRAIN_TIMEOUT_MS),
        "max_requests_per_connection": _or(common.max_requests_per_connection, 0),
        "max_headers_count": _or(common.max_headers_count, DEFAULT_MAX_HEADERS_COUNT),
        "headers_with_underscores_action": common.headers_with_underscores_action,
        "proxy_100_continue": hcm.proxy_100_continue,
        # The types it forwards (matched in any case); one `enabled: false` is as if absent.
        "upgrade_types": [
            u.upgrade_type.lower() for u in hcm.upgrade_configs if _or(u.enabled, True)
        ],
        "strip_any_host_port": hcm.strip_any_host_port,
        "strip_matching_host_port": hcm.strip_matching_host_port,
        "normalize_path": hcm.normalize_path,
        "merge_slashes": hcm.merge_slashes,
        # Envoy's implementation-specific default is to keep them.
        "path_with_escaped_slashes_action": (
            "KEEP_UNCHANGED"
            if hcm.path_with_escaped_slashes_action == "IMPLEMENTATION_SPECIFIC_DEFAULT"
            else hcm.path_with_escaped_slashes_action
        ),
        "suppress_envoy_headers": hcm.http_filters[0].typed_config.suppress_envoy_headers,
        "route_config": _route_config(hcm.route_config),
        "access_log": [_access_log(a, f"{path}.access_log[{i}].typed_config")
                       for i, a in enumerate(hcm.access_log)],
    }


# Envoy's format when an access log gives none (Envoy 1.40, checked with the envoy binary).
DEFAULT_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)


def _access_log(a: m.AccessLog, path: str = "") -> Json:
    """`path`: the entry's typed_config in the user's config, for the engine's errors."""
    tc = a.typed_config
    sink: Any
    if isinstance(tc, m.FileAccessLog):
        sink = {"file": tc.path}
    elif isinstance(tc, m.StdoutAccessLog):
        sink = "stdout"
    else:
        sink = "stderr"
    fmt: Json = {"text": {"text": DEFAULT_ACCESS_LOG_FORMAT}}
    at = f"{path} (Envoy's default format)"
    if tc.log_format is not None:
        f = tc.log_format
        if f.json_format is not None:
            fmt = {"json": {"json": f.json_format, "omit_empty_values": f.omit_empty_values}}
            at = f"{path}.log_format.json_format"
        else:
            field = "text_format" if f.text_format is not None else "text_format_source"
            text = (f.text_format if f.text_format is not None
                    else data_source_text(f.text_format_source, "text_format_source"))  # type: ignore[arg-type]
            fmt = {"text": {"text": text, "omit_empty_values": f.omit_empty_values}}
            at = f"{path}.log_format.{field}"
    elif isinstance(tc, m.FileAccessLog):
        if tc.format:  # Envoy takes an empty one as none: its default
            fmt = {"text": {"text": tc.format}}
            at = f"{path}.format"
        elif tc.json_format is not None or tc.typed_json_format is not None:
            fmt = {"json": {"json": tc.json_format if tc.json_format is not None else tc.typed_json_format}}
            at = f"{path}.json_format" if tc.json_format is not None else f"{path}.typed_json_format"
    out: Json = {"sink": sink, "format": fmt}
    if path:
        out["format_at"] = at
        out["sink_at"] = f"{path}.path" if isinstance(tc, m.FileAccessLog) else path
    if a.filter is not None:
        out["filter"] = _log_filter(a.filter)
    return out


def _log_filter(f: m.AccessLogFilter) -> Any:
    def comparison(c: m.ComparisonFilter) -> Json:
        return {"op": c.op, "value": c.value.default_value if c.value is not None else 0}

    if f.status_code_filter is not None:
        return {"status_code": comparison(f.status_code_filter.comparison)}
    if f.duration_filter is not None:
        return {"duration": comparison(f.duration_filter.comparison)}
    if f.header_filter is not None:
        return {"header": _header_matcher(f.header_filter.header)}
    if f.response_flag_filter is not None:
        return {"response_flag": list(f.response_flag_filter.flags)}
    if f.and_filter is not None:
        return {"and": [_log_filter(x) for x in f.and_filter.filters]}
    if f.or_filter is not None:
        return {"or": [_log_filter(x) for x in f.or_filter.filters]}
    return "not_health_check"


# --- routes -----------------------------------------------------------------------------------


def _mutations(
    obj: m.RouteConfiguration | m.VirtualHost | m.Route | m.ClusterWeight,
) -> Json:
    return {
        "request_headers_to_add": _headers_to_add(obj.request_headers_to_add),
        "request_headers_to_remove": [h.lower() for h in obj.request_headers_to_remove],
        "response_headers_to_add": _headers_to_add(obj.response_headers_to_add),
        "response_headers_to_remove": [h.lower() for h in obj.response_headers_to_remove],
    }


def _headers_to_add(options: list[m.HeaderValueOption]) -> list[Json]:
    out = []
    for o in options:
        # Envoy drops a header whose value is empty unless keep_empty_value is set.
        if o.header.value == "" and not o.keep_empty_value:
            continue
        if o.append_action is not None:
            append = o.append_action == "APPEND_IF_EXISTS_OR_ADD"
        else:
            append = _or(o.append, True)
        out.append({
            "key": o.header.key.lower(),
            "value": o.header.value,  # `%...%` commands are compiled by the engine
            "append": append,
            "keep_empty_value": o.keep_empty_value,
        })
    return out


def _route_config(rc: m.RouteConfiguration) -> Json:
    return {
        "name": rc.name,
        "virtual_hosts": [_virtual_host(v) for v in rc.virtual_hosts],
        **_mutations(rc),
    }


def _virtual_host(vhost: m.VirtualHost) -> Json:
    return {
        "name": vhost.name,
        "domains": [d.lower() for d in vhost.domains],
        "routes": [_route(r, vhost) for r in vhost.routes],
        "require_tls": vhost.require_tls == "ALL",
        **_mutations(vhost),
    }


def _route(route: m.Route, vhost: m.VirtualHost) -> Json:
    return {
        "name": route.name,
        "match": _route_match(route.match),
        "action": _action(route, vhost),
        **_mutations(route),
    }


def _route_match(match: m.RouteMatch) -> Json:
    if match.prefix is not None:
        path: Json = {"prefix": match.prefix}
    elif match.path is not None:
        path = {"path": match.path}
    else:
        assert match.safe_regex is not None
        path = {"safe_regex": match.safe_regex.regex}
    return {
        "path": path,
        "case_sensitive": _or(match.case_sensitive, True),
        "headers": [_header_matcher(h) for h in match.headers],
        "query_parameters": [_query_matcher(q) for q in match.query_parameters],
    }


def _string_match(sm: m.StringMatcher) -> Json:
    for test in ("exact", "prefix", "suffix", "contains"):
        value = getattr(sm, test)
        if value is not None:
            return {test: value}
    assert sm.safe_regex is not None
    return {"safe_regex": sm.safe_regex.regex}


def _header_matcher(hm: m.HeaderMatcher) -> Json:
    ignore_case = False
    if hm.string_match is not None:
        match = _string_match(hm.string_match)
        ignore_case = hm.string_match.ignore_case
    elif hm.exact_match is not None:
        match = {"exact": hm.exact_match}
    elif hm.prefix_match is not None:
        match = {"prefix": hm.prefix_match}
    elif hm.suffix_match is not None:
        match = {"suffix": hm.suffix_match}
    elif hm.contains_match is not None:
        match = {"contains": hm.contains_match}
    elif hm.safe_regex_match is not None:
        match = {"safe_regex": hm.safe_regex_match.regex}
    elif hm.present_match is not None:
        match = {"present": hm.present_match}
    else:  # Envoy: a matcher with no specifier matches when the header is present
        match = {"present": True}
    return {
        "name": hm.name.lower(),
        "match": match,
        "invert_match": hm.invert_match,
        "ignore_case": ignore_case,
        "treat_missing_header_as_empty": hm.treat_missing_header_as_empty,
    }


def _query_matcher(qm: m.QueryParameterMatcher) -> Json:
    if qm.string_match is not None:
        match = _string_match(qm.string_match)
        ignore_case = qm.string_match.ignore_case
    else:  # present_match, or nothing, which Envoy treats as "present"
        match = {"present": _or(qm.present_match, True)}
        ignore_case = False
    return {"name": qm.name, "match": match, "ignore_case": ignore_case}


def _action(route: m.Route, vhost: m.VirtualHost) -> Json:
    if route.route is not None:
        out = _forward(route.route, vhost)
        # How much of a request body is kept for a retry: the route's, else its virtual
        # host's, else the listener's per_connection_buffer_limit_bytes (Envoy's buffer limit).
        limit = route.per_request_buffer_limit_bytes
        if limit is None:
            limit = vhost.per_request_buffer_limit_bytes
        if limit is not None:
            out["per_request_buffer_limit_bytes"] = limit
        return {"route": out}
    if route.redirect is not None:
        return {"redirect": _redirect(route.redirect)}
    assert route.direct_response is not None
    dr = route.direct_response
    body: Json = {"status": dr.status}
    if dr.body is not None:
        body["body"] = data_source_text(dr.body, "direct_response.body")
    return {"direct_response": body}


def _forward(action: m.RouteAction, vhost: m.VirtualHost) -> Json:
    out: Json = {}
    if action.cluster is not None:
        out["cluster"] = action.cluster
    elif action.cluster_header is not None:
        out["cluster_header"] = action.cluster_header.lower()
    else:
        assert action.weighted_clusters is not None
        out["weighted_clusters"] = [
            {"name": cw.name, "weight": cw.weight, **_mutations(cw)}
            for cw in action.weighted_clusters.clusters
        ]
    if action.prefix_rewrite:  # Envoy: an empty prefix_rewrite rewrites nothing
        out["prefix_rewrite"] = action.prefix_rewrite
    if action.regex_rewrite is not None:
        out["regex_rewrite"] = {
            "regex": action.regex_rewrite.pattern.regex,
            "substitution": action.regex_rewrite.substitution,
        }
    if action.host_rewrite_literal is not None:
        out["host_rewrite_literal"] = action.host_rewrite_literal
    out["auto_host_rewrite"] = bool(action.auto_host_rewrite)
    out["timeout_ms"] = _ms(action.timeout, DEFAULT_ROUTE_TIMEOUT_MS)
    if action.idle_timeout is not None:
        out["idle_timeout_ms"] = action.idle_timeout.ms
    if (msd := action.max_stream_duration) is not None:
        # Envoy's "new timeouts": a route with this message has no route timeout (nor its
        # x-envoy-expected-rq-timeout-ms); its own duration, if given, replaces the
        # connection manager's (0 disables it), else the connection manager's holds.
        out["timeout_ms"] = 0
        if msd.max_stream_duration is not None:
            out["max_stream_duration_ms"] = msd.max_stream_duration.ms_floor
    if action.priority == "HIGH":
        out["high_priority"] = True
    policies = [_hash_policy(hp) for hp in action.hash_policy]
    # Envoy drops a connection_properties policy without source_ip.
    if any(p is not None for p in policies):
        out["hash_policy"] = [p for p in policies if p is not None]
    if action.upgrade_configs:
        out["upgrade_configs"] = [
            {"upgrade_type": u.upgrade_type.lower(), "enabled": _or(u.enabled, True)}
            for u in action.upgrade_configs
        ]
    # The route's retry policy replaces its virtual host's whole (Envoy merges nothing).
    rp = action.retry_policy if action.retry_policy is not None else vhost.retry_policy
    if rp is not None:
        out["retry_policy"] = _retry_policy(rp)
    if vhost.include_request_attempt_count:
        out["include_request_attempt_count"] = True
    if vhost.include_attempt_count_in_response:
        out["include_attempt_count_in_response"] = True
    return out


# Envoy's retry back-off: 25 ms base, and a maximum of ten times the base.
DEFAULT_RETRY_BASE_MS = 25


def _retry_policy(rp: m.RetryPolicy) -> Json:
    base = DEFAULT_RETRY_BASE_MS
    top = None
    if rp.retry_back_off is not None:
        base = rp.retry_back_off.base_interval.ms
        if rp.retry_back_off.max_interval is not None:
            top = rp.retry_back_off.max_interval.ms
    return {
        "retry_on": retry_on_tokens(rp.retry_on),
        "num_retries": _or(rp.num_retries, 1),
        "per_try_timeout_ms": rp.per_try_timeout.ms if rp.per_try_timeout is not None else 0,
        # Below 1 ms Envoy reads none.
        "per_try_idle_timeout_ms": _ms_floor(rp.per_try_idle_timeout),
        "retriable_status_codes": list(rp.retriable_status_codes),
        "base_interval_ms": base,
        "max_interval_ms": top if top is not None else 10 * base,
        "retriable_headers": [_header_matcher(h) for h in rp.retriable_headers],
        "retriable_request_headers": [_header_matcher(h) for h in rp.retriable_request_headers],
        "previous_hosts": bool(rp.retry_host_predicate),
        # Envoy's int64: a negative count picks once.
        "host_selection_retry_max_attempts": min(
            max(0, rp.host_selection_retry_max_attempts), 2**32 - 1
        ),
    }


def _hash_policy(hp: m.HashPolicy) -> Json | None:
    out: Json = {"terminal": hp.terminal}
    if hp.header is not None:
        out["header"] = hp.header.header_name.lower()
    elif hp.cookie is not None:
        out["cookie"] = hp.cookie.name
        if hp.cookie.ttl is not None:
            # Envoy takes the ttl's whole seconds.
            out["cookie_ttl_s"] = hp.cookie.ttl.seconds
            out["cookie_path"] = hp.cookie.path
            out["cookie_attributes"] = [{"name": a.name, "value": a.value} for a in hp.cookie.attributes]
    elif hp.query_parameter is not None:
        out["query"] = hp.query_parameter.name
    elif hp.connection_properties is not None and hp.connection_properties.source_ip:
        out["source_ip"] = True
    else:
        return None
    return out


def _redirect(r: m.RedirectAction) -> Json:
    out: Json = {}
    if r.https_redirect:
        out["scheme_redirect"] = "https"
    elif r.scheme_redirect:
        out["scheme_redirect"] = r.scheme_redirect.lower()
    # As in Envoy, an empty string or a port of 0 leaves that part of the URL as it was.
    for field in ("host_redirect", "port_redirect", "path_redirect", "prefix_rewrite"):
        value = getattr(r, field)
        if value:
            out[field] = value
    out["response_code"] = _REDIRECT_CODES[r.response_code]
    out["strip_query"] = r.strip_query
    return out


# --- clusters ---------------------------------------------------------------------------------


def _ring_sizes(rh: m.RingHashLbConfig | None) -> Json:
    rh = rh or m.RingHashLbConfig()
    return {
        "minimum_ring_size": _or(rh.minimum_ring_size, 1024),
        "maximum_ring_size": _or(rh.maximum_ring_size, 8 * 1024 * 1024),
    }


def _thresholds(cb: m.CircuitBreakers | None, priority: str) -> Json:
    """One priority's circuit breaker limits: its first entry (Envoy takes the first), Envoy's
    defaults for what it leaves unset."""
    given = next((t for t in cb.thresholds if t.priority == priority), None) if cb else None
    t = given or m.CircuitBreakerThresholds()
    return {
        "max_connections": _or(t.max_connections, DEFAULT_MAX_CONNECTIONS),
        "max_pending_requests": _or(t.max_pending_requests, DEFAULT_MAX_PENDING_REQUESTS),
        "max_requests": _or(t.max_requests, DEFAULT_MAX_REQUESTS),
        "max_retries": _or(t.max_retries, DEFAULT_MAX_RETRIES),
        "track_remaining": t.track_remaining,
    }


def _cluster(c: m.Cluster) -> Json:
    teo = c.typed_extension_protocol_options
    given = teo.http.common_http_protocol_options if teo is not None and teo.http else None
    common = given or m.UpstreamCommonOptions()
    # Validation lets at most one of the two be set.
    max_requests = _or(common.max_requests_per_connection, c.max_requests_per_connection)
    lr = c.least_request_lb_config
    endpoints = []
    if c.load_assignment is not None:
        for locality in c.load_assignment.endpoints:
            for lbe in locality.lb_endpoints:
                sa = lbe.endpoint.address.socket_address
                endpoints.append(
                    {
                        "address": sa.address,
                        "port": sa.port_value,
                        "weight": _or(lbe.load_balancing_weight, 1),
                    }
                )
    return {
        "name": c.name,
        "type": c.type,
        "connect_timeout_ms": _ms(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT_MS),
        "lb_policy": c.lb_policy,
        "choice_count": _or(lr.choice_count if lr is not None else None, DEFAULT_CHOICE_COUNT),
        **_ring_sizes(c.ring_hash_lb_config),
        "maglev_table_size": _or(
            c.maglev_lb_config.table_size if c.maglev_lb_config is not None else None, 65537
        ),
        "per_connection_buffer_limit_bytes": _or(
            c.per_connection_buffer_limit_bytes, DEFAULT_BUFFER_LIMIT
        ),
        "max_requests_per_connection": _or(max_requests, 0),
        "max_headers_count": _or(common.max_headers_count, DEFAULT_MAX_HEADERS_COUNT),
        "idle_timeout_ms": _ms(common.idle_timeout, DEFAULT_IDLE_TIMEOUT_MS),
        "dns_refresh_rate_ms": _ms(c.dns_refresh_rate, DEFAULT_DNS_REFRESH_RATE_MS),
        "dns_lookup_family": c.dns_lookup_family,
        "endpoints": endpoints,
        "circuit_breakers": _thresholds(c.circuit_breakers, "DEFAULT"),
        "circuit_breakers_high": _thresholds(c.circuit_breakers, "HIGH"),
        "health_check": _health_check(c.health_checks[0]) if c.health_checks else None,
        "healthy_panic_threshold": _panic_threshold(c.common_lb_config),
        "outlier_detection": _outlier(c.outlier_detection) if c.outlier_detection else None,
    }


# Envoy's defaults for `OutlierDetection` (outlier_detection.proto).
_OUTLIER_DEFAULTS = {
    "consecutive_5xx": 5,
    "consecutive_gateway_failure": 5,
    "consecutive_local_origin_failure": 5,
    "max_ejection_percent": 10,
    "enforcing_consecutive_5xx": 100,
    "enforcing_consecutive_gateway_failure": 0,
    "enforcing_consecutive_local_origin_failure": 100,
    "enforcing_success_rate": 100,
    "enforcing_local_origin_success_rate": 100,
    "enforcing_failure_percentage": 0,
    "enforcing_failure_percentage_local_origin": 0,
    "success_rate_minimum_hosts": 5,
    "success_rate_request_volume": 100,
    "success_rate_stdev_factor": 1900,
    "failure_percentage_threshold": 85,
    "failure_percentage_minimum_hosts": 5,
    "failure_percentage_request_volume": 50,
}


def _outlier(o: m.OutlierDetection) -> Json:
    out: dict[str, Any] = {k: _or(getattr(o, k), v) for k, v in _OUTLIER_DEFAULTS.items()}
    out.update(
        interval_ms=_ms(o.interval, 10_000),
        base_ejection_time_ms=_ms(o.base_ejection_time, 30_000),
        # Envoy's default cap is 300 s, or the base ejection time where that is longer.
        max_ejection_time_ms=_ms(o.max_ejection_time, max(300_000, _ms(o.base_ejection_time, 30_000))),
        max_ejection_time_jitter_ms=_ms(o.max_ejection_time_jitter, 0),
        split_external_local_origin_errors=o.split_external_local_origin_errors,
        successful_active_health_check_uneject_host=_or(
            o.successful_active_health_check_uneject_host, True
        ),
        always_eject_one_host=_or(o.always_eject_one_host, False),
    )
    return out


def _panic_threshold(common: m.CommonLbConfig | None) -> float:
    given = common.healthy_panic_threshold if common is not None else None
    return 50.0 if given is None else given.value


def _opt_ms(d: Duration | None) -> int | None:
    return None if d is None else d.ms


def _ranges(ranges: list[m.Int64Range]) -> list[list[int]]:
    return [[r.start, r.end] for r in ranges]


def _health_check(hc: m.HealthCheck) -> Json:
    """Validation has checked the fields this reads (`timeout`, `interval`, the thresholds,
    one checker)."""
    assert hc.timeout is not None and hc.interval is not None
    http = tcp = None
    if (h := hc.http_health_check) is not None:
        http = {
            "path": h.path,
            "method": "HEAD" if h.method == "HEAD" else "GET",
            "host": h.host or None,
            "expected": _ranges(h.expected_statuses),
            "retriable": _ranges(h.retriable_statuses),
            "add": [
                {
                    "name": o.header.key.lower(),
                    "value": o.header.value,
                    "overwrite": o.append_action == "OVERWRITE_IF_EXISTS_OR_ADD"
                    or (o.append_action is None and o.append is False),
                }
                for o in h.request_headers_to_add
                # Envoy leaves an empty value out unless told to keep it.
                if o.header.value or o.keep_empty_value
            ],
            "remove": [n.lower() for n in h.request_headers_to_remove],
        }
    if (t := hc.tcp_health_check) is not None:
        tcp = {
            "send": list(payload_bytes(t.send, "send")) if t.send is not None else [],
            "receive": [list(payload_bytes(r, "receive")) for r in t.receive],
        }
    return {
        "timeout_ms": hc.timeout.ms,
        "interval_ms": hc.interval.ms,
        "initial_jitter_ms": _ms(hc.initial_jitter, 0),
        "interval_jitter_ms": _ms(hc.interval_jitter, 0),
        "interval_jitter_percent": hc.interval_jitter_percent,
        "unhealthy_interval_ms": _opt_ms(hc.unhealthy_interval),
        "unhealthy_edge_interval_ms": _opt_ms(hc.unhealthy_edge_interval),
        "healthy_edge_interval_ms": _opt_ms(hc.healthy_edge_interval),
        "no_traffic_interval_ms": _ms(hc.no_traffic_interval, 60_000),
        "no_traffic_healthy_interval_ms": _opt_ms(hc.no_traffic_healthy_interval),
        "unhealthy_threshold": hc.unhealthy_threshold,
        "healthy_threshold": hc.healthy_threshold,
        "reuse_connection": _or(hc.reuse_connection, True),
        "http": http,
        "tcp": tcp,
    }
