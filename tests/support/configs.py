"""Envoy v3 bootstrap builders for tests: plain dicts, as a user's YAML would load."""

from __future__ import annotations

import copy
from typing import Any

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def cluster(name: str, *ports: int, **extra: Any) -> dict[str, Any]:
    """A STATIC cluster on 127.0.0.1 with one endpoint per port."""
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                        for p in ports
                    ]
                }
            ],
        },
    }
    c.update(extra)
    return c


def bootstrap(
    routes: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    *,
    domains: list[str] | None = None,
    hcm: dict[str, Any] | None = None,
    virtual_hosts: list[dict[str, Any]] | None = None,
    route_config_extra: dict[str, Any] | None = None,
    admin: bool = True,
) -> dict[str, Any]:
    """One listener on 127.0.0.1:0 with one virtual host (or the given ones) and `clusters`."""
    vhosts = virtual_hosts or [{"name": "vh", "domains": domains or ["*"], "routes": routes}]
    rc: dict[str, Any] = {"name": "local_route", "virtual_hosts": vhosts}
    rc.update(route_config_extra or {})
    typed: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress_http",
        "route_config": rc,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    typed.update(hcm or {})
    b: dict[str, Any] = {
        "static_resources": {
            "listeners": [
                {
                    "name": "listener_0",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": typed}
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        }
    }
    if admin:
        b["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    return b


def route(prefix: str, cluster_name: str, **action: Any) -> dict[str, Any]:
    """A prefix route to a cluster; extra keyword arguments go into the route action."""
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **action}}


def with_second_listener(config: dict[str, Any]) -> dict[str, Any]:
    """`config` plus listener_1, a copy of listener_0 on a port of its own (port 0)."""
    two = copy.deepcopy(config)
    second = copy.deepcopy(two["static_resources"]["listeners"][0])
    second["name"] = "listener_1"
    second["address"]["socket_address"]["port_value"] = 0
    two["static_resources"]["listeners"].append(second)
    return two


def upstream_options(**common: Any) -> dict[str, Any]:
    """A cluster's `typed_extension_protocol_options` (HTTP/1.1) with these
    `common_http_protocol_options`, for `cluster(..., **upstream_options(...))`."""
    return {"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": common,
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }}
