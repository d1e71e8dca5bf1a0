"""Envoy 1.40's admin formats, rendered from plain data.

Everything here is a pure function of values the handlers fetched (the bootstrap as loaded, the
command line, what the engine reported), so each format is unit-tested without a server. The
reference outputs of real Envoy 1.40 are in tests/admin/data/envoy/.

Envoy prints its admin JSON with protobuf's JSON printer: one-space indent, a trailing newline,
64-bit integers as strings, fields in proto field-number order, and (except in /server_info)
fields at their default value left out. The builders below write keys in that order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import html
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TYPE_PREFIX = "type.googleapis.com/"
ADMIN_V3 = TYPE_PREFIX + "envoy.admin.v3."

#: No hot restart in pyproxy; Envoy run with --disable-hot-restart reports exactly this.
HOT_RESTART_VERSION = "disabled"

#: Envoy's level names, in its order (`/logging` usage text and validation).
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def proto_json(message: Any) -> str:
    """Envoy's pretty JSON: `MessageUtil::getJsonStringFromMessage(msg, pretty=true)`."""
    return json.dumps(message, indent=1, ensure_ascii=False) + "\n"


def timestamp(epoch_s: float) -> str:
    """A google.protobuf.Timestamp as JSON. Envoy stores admin times with millisecond precision,
    and protobuf prints 0, 3, 6 or 9 fractional digits: here 0 or 3."""
    ms = int(epoch_s * 1000)
    moment = _dt.datetime.fromtimestamp(ms // 1000, tz=_dt.UTC)
    frac = f".{ms % 1000:03d}" if ms % 1000 else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def duration(seconds: float) -> str:
    """A google.protobuf.Duration as JSON: `600s`, `0.250s`, `1.000500s`."""
    nanos = round(seconds * 1_000_000_000)
    whole, frac = divmod(nanos, 1_000_000_000)
    if frac == 0:
        return f"{whole}s"
    for digits, unit in ((3, 1_000_000), (6, 1_000)):
        if frac % unit == 0:
            return f"{whole}.{frac // unit:0{digits}d}s"
    return f"{whole}.{frac:09d}s"


# --- version -------------------------------------------------------------------------------------


def pyproxy_version() -> str:
    """The package version: `pyproxy.__version__`, else the installed distribution's, else 0.0.0."""
    import pyproxy

    version = getattr(pyproxy, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("pyproxy")
    except (ImportError, PackageNotFoundError):
        return "0.0.0"


def version_string(version: str) -> str:
    """Envoy's `<revision>/<version>/<status>/<build type>/<ssl>` with pyproxy in the revision
    slot, so tools that split on `/` and read field 1 as the semver still work."""
    return f"pyproxy/{version}/Clean/RELEASE/none"


def _semver(version: str) -> tuple[int, int, int]:
    parts = [int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", version)[:3]]
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


def build_version(version: str, *, print_defaults: bool) -> dict[str, Any]:
    """envoy.config.core.v3.BuildVersion for pyproxy."""
    major, minor, patch = _semver(version)
    semantic = {"major_number": major, "minor_number": minor, "patch": patch}
    if not print_defaults:
        semantic = {k: v for k, v in semantic.items() if v}
    return {
        "version": semantic,
        "metadata": {
            "build.type": "RELEASE",
            "ssl.version": "none",
            "revision.sha": "pyproxy",
            "revision.status": "Clean",
        },
    }


# --- /server_info --------------------------------------------------------------------------------

_MODES = {
    "serve": "Serve",
    "validate": "Validate",
    "init_only": "InitOnly",
    "initonly": "InitOnly",
}


def command_line_options(cmd: Mapping[str, Any]) -> dict[str, Any]:
    """envoy.admin.v3.CommandLineOptions, every field printed (as Envoy's /server_info does).
    Options pyproxy has no equivalent for carry the value Envoy reports when they are unset."""
    mode = str(cmd.get("mode") or "serve")
    return {
        "base_id": "0",
        "concurrency": int(cmd.get("concurrency") or 1),
        "config_path": cmd.get("config_path") or "",
        "config_yaml": cmd.get("config_yaml") or "",
        "allow_unknown_static_fields": False,
        "admin_address_path": "",
        "local_address_ip_version": "v4",
        "log_level": cmd.get("log_level") or "info",
        "component_log_level": "",
        "log_format": "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v",
        "log_path": "",
        "service_cluster": cmd.get("service_cluster") or "",
        "service_node": cmd.get("service_node") or "",
        "service_zone": "",
        "file_flush_interval": duration(int(cmd.get("file_flush_interval_msec") or 10_000) / 1000),
        "drain_time": duration(float(cmd.get("drain_time_s") or 600)),
        "parent_shutdown_time": "900s",
        "mode": _MODES.get(mode.lower(), mode),
        "disable_hot_restart": True,
        "enable_mutex_tracing": False,
        "restart_epoch": 0,
        "cpuset_threads": False,
        "reject_unknown_dynamic_fields": False,
        "log_format_escaped": False,
        "disabled_extensions": [],
        "ignore_unknown_dynamic_fields": False,
        "use_dynamic_base_id": False,
        "base_id_path": "",
        "drain_strategy": "Immediate" if cmd.get("drain_strategy") == "immediate" else "Gradual",
        "enable_fine_grain_logging": False,
        "socket_path": "@envoy_domain_socket",
        "socket_mode": 0,
        "enable_core_dump": False,
        "stats_tag": [],
        "skip_hot_restart_on_no_parent": False,
        "skip_hot_restart_parent_stats": False,
        "skip_deprecated_logs": False,
        # Envoy 1.40 reports 0 whatever --file-flush-min-size-kb says (checked).
        "file_flush_min_size": 0,
        "log_stacktrace_single_entry": False,
    }


def _config_node(raw_config: Mapping[str, Any]) -> dict[str, Any]:
    node = raw_config.get("node")
    return dict(node) if isinstance(node, Mapping) else {}


def server_info(
    *,
    state: str,
    uptime_s: float,
    version: str,
    command_line: Mapping[str, Any],
    raw_config: Mapping[str, Any],
) -> dict[str, Any]:
    """envoy.admin.v3.ServerInfo. The CLI's service node/cluster win over the bootstrap's node,
    as in Envoy."""
    node = _config_node(raw_config)
    uptime = f"{int(uptime_s)}s"
    return {
        "version": version_string(version),
        "state": state,
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
        "hot_restart_version": HOT_RESTART_VERSION,
        "command_line_options": command_line_options(command_line),
        "node": {
            "id": command_line.get("service_node") or node.get("id", ""),
            "cluster": command_line.get("service_cluster") or node.get("cluster", ""),
            **{k: node[k] for k in ("metadata", "locality") if k in node},
            "user_agent_name": "pyproxy",
            "user_agent_build_version": build_version(version, print_defaults=True),
            "extensions": [],
            "client_features": [],
            "listening_addresses": [],
            "dynamic_parameters": {},
        },
        "hot_restart_initializing": False,
    }


# --- /config_dump --------------------------------------------------------------------------------

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

#: Repeated fields of each dump message, with their element message (for `?resource=`).
REPEATED_FIELDS: dict[str, dict[str, str]] = {
    "BootstrapConfigDump": {},
    "ClustersConfigDump": {
        "static_clusters": "StaticCluster",
        "dynamic_active_clusters": "DynamicCluster",
        "dynamic_warming_clusters": "DynamicCluster",
    },
    "EndpointsConfigDump": {
        "static_endpoint_configs": "StaticEndpointConfig",
        "dynamic_endpoint_configs": "DynamicEndpointConfig",
    },
    "ListenersConfigDump": {
        "static_listeners": "StaticListener",
        "dynamic_listeners": "DynamicListener",
    },
    "ScopedRoutesConfigDump": {
        "inline_scoped_route_configs": "InlineScopedRouteConfigs",
        "dynamic_scoped_route_configs": "DynamicScopedRouteConfigs",
    },
    "RoutesConfigDump": {
        "static_route_configs": "StaticRouteConfig",
        "dynamic_route_configs": "DynamicRouteConfig",
    },
    "SecretsConfigDump": {
        "static_secrets": "StaticSecret",
        "dynamic_active_secrets": "DynamicSecret",
        "dynamic_warming_secrets": "DynamicSecret",
    },
}

#: Singular fields, which `?resource=` refuses the way Envoy does.
SINGULAR_FIELDS = frozenset({"bootstrap", "last_updated", "version_info"})

#: Where an element of a repeated field keeps its resource, and the name `?name_regex=` matches.
_ELEMENT_RESOURCE = {
    "cluster": "name",
    "listener": "name",
    "route_config": "name",
    "endpoint_config": "cluster_name",
    "secret": "name",
}


class ConfigDumpError(Exception):
    """A `/config_dump` query Envoy refuses; carries Envoy's status and body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Field-number order of the messages whose top level a reader sees first, so the dump reads like
# Envoy's; keys not listed keep their config order after these. Deeper messages keep the order
# the config was written in (docs/admin.md).
_FIELD_ORDER = {
    "bootstrap": (
        "node", "static_resources", "dynamic_resources", "cluster_manager", "flags_path",
        "stats_sinks", "stats_flush_interval", "watchdog", "tracing", "admin", "stats_config",
        "hds_config", "overload_manager", "enable_dispatcher_stats", "layered_runtime",
        "header_prefix", "stats_server_version_override", "use_tcp_for_dns_lookups",
    ),
    "static_resources": ("listeners", "clusters", "secrets"),
    "node": (
        "id", "cluster", "metadata", "locality", "user_agent_name", "user_agent_build_version",
        "extensions", "client_features", "listening_addresses", "dynamic_parameters",
    ),
    "cluster": (
        "name", "type", "eds_cluster_config", "connect_timeout",
        "per_connection_buffer_limit_bytes", "lb_policy", "health_checks",
        "max_requests_per_connection", "circuit_breakers", "http_protocol_options",
        "http2_protocol_options", "dns_refresh_rate", "dns_lookup_family", "dns_resolvers",
        "outlier_detection", "cleanup_interval", "upstream_bind_config", "lb_subset_config",
        "ring_hash_lb_config", "transport_socket", "metadata", "protocol_selection",
        "common_lb_config", "alt_stat_name", "common_http_protocol_options",
        "upstream_connection_options", "close_connections_on_host_health_failure",
        "ignore_health_on_host_removal", "load_assignment",
    ),
    "listener": (
        "name", "address", "filter_chains", "use_original_dst",
        "per_connection_buffer_limit_bytes", "metadata", "drain_type", "listener_filters",
        "transparent", "freebind", "tcp_fast_open_queue_length", "socket_options",
        "listener_filters_timeout", "traffic_direction",
    ),
}  # fmt: skip


def _ordered(message: Mapping[str, Any], kind: str) -> dict[str, Any]:
    order = _FIELD_ORDER[kind]
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(message.items(), key=lambda kv: rank.get(kv[0], len(order))))


def _typed(type_url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"@type": TYPE_PREFIX + type_url, **body}


def static_resources(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    resources = raw.get("static_resources") or {}
    return [r for r in resources.get(key) or [] if isinstance(r, Mapping)]


def inline_route_configs(
    listeners: Iterable[Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    """Every `route_config` written inline in an http_connection_manager, in listener order."""
    found = []
    for listener in listeners:
        chains = list(listener.get("filter_chains") or [])
        if isinstance(listener.get("default_filter_chain"), Mapping):
            chains.append(listener["default_filter_chain"])
        for chain in chains:
            for flt in chain.get("filters") or []:
                typed = flt.get("typed_config") or {}
                if str(typed.get("@type", "")).endswith(_HCM) and isinstance(
                    typed.get("route_config"), Mapping
                ):
                    found.append(typed["route_config"])
    return found


def config_dump_configs(
    raw: Mapping[str, Any],
    *,
    version: str,
    bootstrap_time: float,
    resources_time: float,
    include_eds: bool = False,
) -> list[dict[str, Any]]:
    """The `configs` of envoy.admin.v3.ConfigDump, in the order Envoy 1.40 prints them."""
    node = _ordered(
        {
            **_config_node(raw),
            "user_agent_name": "pyproxy",
            "user_agent_build_version": build_version(version, print_defaults=False),
        },
        "node",
    )
    updated = timestamp(resources_time)
    clusters = [_ordered(c, "cluster") for c in static_resources(raw, "clusters")]
    listeners = [_ordered(x, "listener") for x in static_resources(raw, "listeners")]
    bootstrap = _ordered({**raw, "node": node}, "bootstrap")
    if isinstance(raw.get("static_resources"), Mapping):
        resources = {
            **raw["static_resources"],
            "listeners": listeners,
            "clusters": clusters,
        }
        bootstrap["static_resources"] = _ordered(
            {k: v for k, v in resources.items() if v or k in raw["static_resources"]},
            "static_resources",
        )

    def dump(kind: str, field: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
        body = {field: elements} if elements else {}
        return _typed("envoy.admin.v3." + kind, body)

    configs = [
        _typed(
            "envoy.admin.v3.BootstrapConfigDump",
            {"bootstrap": bootstrap, "last_updated": timestamp(bootstrap_time)},
        ),
        dump(
            "ClustersConfigDump",
            "static_clusters",
            [
                {
                    "cluster": _typed("envoy.config.cluster.v3.Cluster", c),
                    "last_updated": updated,
                }
                for c in clusters
            ],
        ),
    ]
    if include_eds:
        configs.append(
            dump(
                "EndpointsConfigDump",
                "static_endpoint_configs",
                [
                    {
                        "endpoint_config": _typed(
                            "envoy.config.endpoint.v3.ClusterLoadAssignment",
                            c["load_assignment"],
                        )
                    }
                    for c in clusters
                    if isinstance(c.get("load_assignment"), Mapping)
                ],
            )
        )
    configs += [
        dump(
            "ListenersConfigDump",
            "static_listeners",
            [
                {
                    "listener": _typed("envoy.config.listener.v3.Listener", x),
                    "last_updated": updated,
                }
                for x in listeners
            ],
        ),
        dump("ScopedRoutesConfigDump", "inline_scoped_route_configs", []),
        dump(
            "RoutesConfigDump",
            "static_route_configs",
            [
                {
                    "route_config": _typed("envoy.config.route.v3.RouteConfiguration", rc),
                    "last_updated": updated,
                }
                for rc in inline_route_configs(listeners)
            ],
        ),
        # Secrets are not supported by pyproxy's config; Envoy prints this empty dump too.
        dump("SecretsConfigDump", "static_secrets", []),
    ]
    return configs


def _element_name(element: Mapping[str, Any]) -> str | None:
    for key, name_field in _ELEMENT_RESOURCE.items():
        resource = element.get(key)
        if isinstance(resource, Mapping):
            return str(resource.get(name_field, ""))
    return None


def _filter_by_name(configs: list[dict[str, Any]], name_regex: re.Pattern[str]) -> list[dict[str, Any]]:
    out = []
    for config in configs:
        kind = config["@type"].rsplit(".", 1)[-1]
        config = dict(config)
        for field in REPEATED_FIELDS.get(kind, {}):
            if field in config:
                kept = [e for e in config[field] if name_regex.search(_element_name(e) or "")]
                if kept:
                    config[field] = kept
                else:
                    del config[field]
        out.append(config)
    return out


def trim(message: Any, paths: Sequence[Sequence[str]]) -> Any:
    """protobuf's FieldMaskUtil::TrimMessage on JSON: keep the fields the paths name, descend
    into repeated messages element by element, and keep `@type` so an Any stays typed."""
    if any(not p for p in paths):
        return message
    if isinstance(message, list):
        return [trim(m, paths) for m in message]
    if not isinstance(message, Mapping):
        return message
    out: dict[str, Any] = {}
    if "@type" in message:
        out["@type"] = message["@type"]
    for key, value in message.items():
        sub = [p[1:] for p in paths if p[0] == key]
        if not sub:
            continue
        trimmed = trim(value, sub)
        if trimmed == {} and value != {}:
            continue  # the mask named a field below this one that is not set: proto omits it
        out[key] = trimmed
    return out


def _mask_paths(mask: str) -> list[list[str]]:
    return [p.strip().split(".") for p in mask.split(",") if p.strip()]


def config_dump(
    configs: list[dict[str, Any]],
    *,
    resource: str | None = None,
    mask: str | None = None,
    name_regex: str | None = None,
) -> dict[str, Any]:
    """Apply Envoy's `/config_dump` query parameters to the full dump. Raises ConfigDumpError
    with Envoy's status and message for a query it refuses."""
    if name_regex is not None:
        try:
            pattern = re.compile(name_regex)
        except re.error as err:
            raise ConfigDumpError(
                400,
                f"INVALID_ARGUMENT: Error while parsing name_regex from {name_regex}: {err}",
            ) from None
        configs = _filter_by_name(configs, pattern)
    paths = _mask_paths(mask) if mask else None

    if resource:
        for config in configs:
            kind = config["@type"].rsplit(".", 1)[-1]
            element_type = REPEATED_FIELDS.get(kind, {}).get(resource)
            if element_type is None:
                continue
            elements = [
                {"@type": f"{ADMIN_V3}{kind}.{element_type}", **element}
                for element in config.get(resource, [])
            ]
            if paths:
                elements = [trim(e, paths) for e in elements]
            return {"configs": elements} if elements else {}
        if resource in SINGULAR_FIELDS:
            raise ConfigDumpError(
                400,
                f"{resource} is not a repeated field. Use ?mask={resource} to get only this field",
            )
        raise ConfigDumpError(404, f"{resource} not found in config dump")

    if paths:
        trimmed = [trim(c, paths) for c in configs]
        configs = [c for c in trimmed if len(c) > 1]
        if not configs:
            raise ConfigDumpError(
                400,
                f"FieldMask {mask} could not be successfully applied to any configs.",
            )
    return {"configs": configs}


# --- /clusters -----------------------------------------------------------------------------------

_DEFAULT_THRESHOLDS = {
    "max_connections": 1024,
    "max_pending_requests": 1024,
    "max_requests": 1024,
    "max_retries": 3,
}


def _wrapped(value: Any) -> int:
    """A UInt32Value as YAML may spell it: `5` or `{value: 5}`."""
    if isinstance(value, Mapping):
        value = value.get("value", 0)
    return int(value)


def circuit_breakers(cluster_config: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Thresholds by priority ("DEFAULT", "HIGH"), Envoy's defaults filled in."""
    out = {p: dict(_DEFAULT_THRESHOLDS) for p in ("DEFAULT", "HIGH")}
    seen = set()
    for threshold in (cluster_config.get("circuit_breakers") or {}).get("thresholds") or []:
        priority = str(threshold.get("priority", "DEFAULT")).upper()
        # The first entry of a priority is the one Envoy uses.
        if priority in out and priority not in seen:
            seen.add(priority)
            for key in _DEFAULT_THRESHOLDS:
                if key in threshold:
                    out[priority][key] = _wrapped(threshold[key])
    return out


def _host_config(
    cluster_config: Mapping[str, Any],
) -> dict[tuple[str, int], dict[str, Any]]:
    """hostname, locality and priority of each configured endpoint, by (address, port)."""
    hosts = {}
    for group in (cluster_config.get("load_assignment") or {}).get("endpoints") or []:
        locality = group.get("locality") or {}
        for lb_endpoint in group.get("lb_endpoints") or []:
            endpoint = lb_endpoint.get("endpoint") or {}
            sock = (endpoint.get("address") or {}).get("socket_address") or {}
            key = (str(sock.get("address", "")), int(sock.get("port_value", 0)))
            hosts[key] = {
                "hostname": endpoint.get("hostname", ""),
                "locality": {k: locality[k] for k in ("region", "zone", "sub_zone") if locality.get(k)},
                "priority": int(group.get("priority", 0)),
            }
    return hosts


def _hostname(host: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
    """Envoy's host `hostname`: the engine's (a STRICT_DNS host's endpoint name), else the
    endpoint's configured one."""
    return str(host.get("hostname") or extra.get("hostname", ""))


def cluster_configs(raw: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("name")): c for c in static_resources(raw, "clusters")}


def _observability_name(name: str, config: Mapping[str, Any]) -> str:
    return str(config.get("alt_stat_name") or name)


_HOST_COUNTERS = (
    "cx_connect_fail",
    "cx_total",
    "rq_error",
    "rq_success",
    "rq_timeout",
    "rq_total",
)
_HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
_HOST_TEXT_STATS = (
    "cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error",
    "rq_pending_active", "rq_success", "rq_timeout", "rq_total",
)  # fmt: skip


# A host's flags, as the engine has them (pyproxy_core::upstream::health::flag): the active
# health check's and the outlier ejection.
HC_FAILED, OUTLIER_EJECTED, HC_DEGRADED, HC_TIMEOUT, HC_EXCLUDED = 1, 2, 4, 8, 16


def health_flags(flags: int) -> str:
    """Envoy's `health_flags` text: each flag set, in Envoy's order, or `healthy`."""
    names = [(HC_FAILED, "/failed_active_hc"), (OUTLIER_EJECTED, "/failed_outlier_check"),
             (HC_DEGRADED, "/degraded_active_hc"), (HC_EXCLUDED, "/excluded_via_immediate_hc_fail"),
             (HC_TIMEOUT, "/active_hc_timeout")]  # fmt: skip
    return "".join(name for bit, name in names if flags & bit) or "healthy"


def _json_number(v: float) -> float | int:
    """A double as protobuf's JSON writes it: a whole number without `.0`."""
    return int(v) if v.is_integer() else v


def _rate_text(v: float) -> str:
    """A host's success rate as Envoy prints it (`{}`: the shortest form that reads back)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def clusters_text(clusters: Sequence[Mapping[str, Any]], configs: Mapping[str, Mapping[str, Any]]) -> str:
    """`/clusters` as Envoy's text: `<cluster>::<field>::<value>` lines."""
    lines = []
    for cluster in clusters:
        name = str(cluster["name"])
        config = configs.get(name, {})
        lines.append(f"{name}::observability_name::{_observability_name(name, config)}")
        if (od := cluster.get("outlier")) is not None:
            # Envoy's `{:g}` (six significant digits).
            lines += [
                f"{name}::outlier::{k}::{float(od[k]):g}"
                for k in ("success_rate_average", "success_rate_ejection_threshold",
                          "local_origin_success_rate_average",
                          "local_origin_success_rate_ejection_threshold")
            ]  # fmt: skip
        for priority, thresholds in circuit_breakers(config).items():
            prefix = "default_priority" if priority == "DEFAULT" else "high_priority"
            lines += [f"{name}::{prefix}::{k}::{v}" for k, v in thresholds.items()]
        lines.append(f"{name}::added_via_api::false")
        by_address = _host_config(config)
        for host in cluster.get("hosts", []):
            extra = by_address.get((str(host["address"]), int(host["port"])), {})
            locality = extra.get("locality", {})
            h = f"{name}::{host['address']}:{host['port']}::"
            lines += [f"{h}{stat}::{int(host.get(stat, 0))}" for stat in _HOST_TEXT_STATS]
            lines += [
                f"{h}hostname::{_hostname(host, extra)}",
                f"{h}health_flags::{health_flags(int(host.get('health_flags', 0)))}",
                f"{h}weight::{int(host.get('weight', 1))}",
                f"{h}region::{locality.get('region', '')}",
                f"{h}zone::{locality.get('zone', '')}",
                f"{h}sub_zone::{locality.get('sub_zone', '')}",
                f"{h}canary::false",
                f"{h}priority::{extra.get('priority', 0)}",
                f"{h}success_rate::{_rate_text(host.get('success_rate', -1))}",
                f"{h}local_origin_success_rate::{_rate_text(host.get('local_origin_success_rate', -1))}",
            ]
    return "".join(line + "\n" for line in lines)


def clusters_json(clusters: Sequence[Mapping[str, Any]], configs: Mapping[str, Mapping[str, Any]]) -> dict:
    """`/clusters?format=json`: envoy.admin.v3.Clusters, defaults left out as protobuf does."""
    statuses = []
    for cluster in clusters:
        name = str(cluster["name"])
        config = configs.get(name, {})
        by_address = _host_config(config)
        hosts = []
        for host in cluster.get("hosts", []):
            extra = by_address.get((str(host["address"]), int(host["port"])), {})
            stats: list[dict[str, Any]] = []
            for stat in _HOST_COUNTERS:
                value = int(host.get(stat, 0))
                stats.append({"value": str(value), "name": stat} if value else {"name": stat})
            for stat in _HOST_GAUGES:
                value = int(host.get(stat, 0))
                entry: dict[str, Any] = {"type": "GAUGE"}
                if value:
                    entry["value"] = str(value)
                stats.append({**entry, "name": stat})
            flags = int(host.get("health_flags", 0))
            health: dict[str, Any] = {}
            if flags & HC_FAILED:
                health["failed_active_health_check"] = True
            if flags & OUTLIER_EJECTED:
                health["failed_outlier_check"] = True
            health["eds_health_status"] = "HEALTHY"
            if flags & HC_DEGRADED:
                health["failed_active_degraded_check"] = True
            if flags & HC_EXCLUDED:
                health["excluded_via_immediate_hc_fail"] = True
            if flags & HC_TIMEOUT:
                health["active_hc_timeout"] = True
            status: dict[str, Any] = {
                "address": {
                    "socket_address": {
                        "address": host["address"],
                        "port_value": int(host["port"]),
                    }
                },
                "stats": stats,
                "health_status": health,
            }
            # Envoy shows a rate only once outlier detection has one (HostStatus field order).
            if (rate := float(host.get("success_rate", -1))) >= 0:
                status["success_rate"] = {"value": _json_number(rate)}
            status["weight"] = int(host.get("weight", 1))
            if hostname := _hostname(host, extra):
                status["hostname"] = hostname
            if extra.get("priority"):
                status["priority"] = extra["priority"]
            if (rate := float(host.get("local_origin_success_rate", -1))) >= 0:
                status["local_origin_success_rate"] = {"value": _json_number(rate)}
            status["locality"] = extra.get("locality", {})
            hosts.append(status)
        entry: dict[str, Any] = {"name": name}
        od = cluster.get("outlier") or {}
        # Shown only above 0, as Envoy (ClusterStatus field order).
        if (t := float(od.get("success_rate_ejection_threshold", -1))) > 0:
            entry["success_rate_ejection_threshold"] = {"value": _json_number(t)}
        if hosts:
            entry["host_statuses"] = hosts
        if (t := float(od.get("local_origin_success_rate_ejection_threshold", -1))) > 0:
            entry["local_origin_success_rate_ejection_threshold"] = {"value": _json_number(t)}
        thresholds = []
        for priority, values in circuit_breakers(config).items():
            thresholds.append({**({"priority": priority} if priority != "DEFAULT" else {}), **values})
        entry["circuit_breakers"] = {"thresholds": thresholds}
        entry["observability_name"] = _observability_name(name, config)
        statuses.append(entry)
    return {"cluster_statuses": statuses} if statuses else {}


# --- /listeners ----------------------------------------------------------------------------------


def listeners_text(listeners: Sequence[tuple[str, str, int]]) -> str:
    return "".join(f"{name}::{_host_port(addr, port)}\n" for name, addr, port in listeners)


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def listeners_json(listeners: Sequence[tuple[str, str, int]]) -> dict:
    statuses = [
        {
            "name": name,
            "local_address": {"socket_address": {"address": addr, "port_value": int(port)}},
        }
        for name, addr, port in listeners
    ]
    return {"listener_statuses": statuses} if statuses else {}


# --- /logging ------------------------------------------------------------------------------------

LOGGING_USAGE = (
    "usage: /logging?<name>=<level> (change single level)\n"
    "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
    "usage: /logging?level=<level> (change all levels)\n"
    "usage: /logging?group=<group_name>:<level> (change group of loggers)\n"
    "levels: " + "".join(level + " " for level in LOG_LEVELS) + "\n"
)


def loggers_text(loggers: Mapping[str, str]) -> str:
    return "active loggers:\n" + "".join(f"  {name}: {level}\n" for name, level in loggers.items())


def logging_error(message: str, loggers: Mapping[str, str]) -> str:
    return f"error: {message}\n\n" + LOGGING_USAGE + loggers_text(loggers)


# --- /memory -------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> _MallInfo2 | None:
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        fn = libc.mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn()


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory() -> dict[str, str]:
    """envoy.admin.v3.Memory from glibc's allocator (Envoy reads tcmalloc's): allocated = bytes
    in use (uordblks + hblkhd), heap_size = bytes obtained from the OS (arena + hblkhd),
    pageheap_free = free bytes held (fordblks); glibc has no unmapped page heap or thread cache,
    so those read 0. total_physical_bytes is the resident set size."""
    rss = _resident_bytes()
    info = _mallinfo2()
    if info is None:
        allocated = heap = rss
        free = 0
    else:
        allocated = info.uordblks + info.hblkhd
        heap = info.arena + info.hblkhd
        free = info.fordblks
    return {
        "allocated": str(allocated),
        "heap_size": str(heap),
        "pageheap_unmapped": "0",
        "pageheap_free": str(free),
        "total_thread_cache": "0",
        "total_physical_bytes": str(rss),
    }


# --- / -------------------------------------------------------------------------------------------


def home_page(endpoints: Iterable[tuple[str, str, bool]]) -> str:
    """A plain HTML index of the admin endpoints (Envoy serves a richer page with the same links
    and forms: GET endpoints as links, mutating ones as POST forms)."""
    rows = []
    for path, help_text, mutates in endpoints:
        if path == "/":
            continue
        target = html.escape(path.lstrip("/"), quote=True)
        label = html.escape(path.lstrip("/"))
        if mutates:
            cell = (
                f"<form action='{target}' method='post' class='home-form'>"
                f"<button class='button-as-link'>{label}</button></form>"
            )
        else:
            cell = f"<a href='{target}'>{label}</a>"
        rows.append(f"<tr><td>{cell}</td><td>{html.escape(help_text)}</td></tr>")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<title>pyproxy Admin</title>\n"
        "<style>.button-as-link{background:none;border:none;padding:0;color:#069;"
        "text-decoration:underline;cursor:pointer;font:inherit}"
        ".home-form{margin:0}</style>\n</head>\n<body>\n"
        "<table class='home-table'>\n<thead><tr><th>Command</th><th>Description</th></tr></thead>\n"
        "<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n</body>\n</html>\n"
    )
