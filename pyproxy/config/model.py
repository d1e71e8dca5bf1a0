"""msgspec Structs for the subset of the Envoy v3 bootstrap that pyproxy supports.

Each Struct mirrors one Envoy message and names its fields exactly as Envoy's YAML/JSON does, so a
config that loads here means the same thing it means to Envoy. Unknown fields are rejected
(`forbid_unknown_fields`): a field Envoy knows but pyproxy does not honour must fail loudly, never
be ignored. Enums list only the values pyproxy supports, so an unsupported one fails at decoding
with the list of the supported ones.

Decoding checks shapes and types; `pyproxy.config.validate` checks what needs more than one field
(one-ofs, ranges that depend on other fields, cross-references). docs/config.md is the user-facing
description of this file: keep both in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .duration import Duration

__all__ = [
    "HCM_FILTER_NAME",
    "HCM_TYPE_URL",
    "HTTP_PROTOCOL_OPTIONS_KEY",
    "HTTP_PROTOCOL_OPTIONS_TYPE_URL",
    "ROUTER_FILTER_NAME",
    "ROUTER_TYPE_URL",
    "AccessLog",
    "AccessLogFilter",
    "Address",
    "Admin",
    "Bootstrap",
    "Cluster",
    "ClusterLoadAssignment",
    "ClusterWeight",
    "DataSource",
    "DirectResponseAction",
    "Duration",
    "Endpoint",
    "ExplicitHttpConfig",
    "FilterChain",
    "HeaderMatcher",
    "HeaderValue",
    "HeaderValueOption",
    "HttpConnectionManager",
    "HttpFilter",
    "HttpProtocolOptions",
    "LbEndpoint",
    "LeastRequestLbConfig",
    "Listener",
    "LocalityLbEndpoints",
    "NetworkFilter",
    "Node",
    "OutlierDetection",
    "OverloadManager",
    "QueryParameterMatcher",
    "RedirectAction",
    "RegexMatcher",
    "Route",
    "RouteAction",
    "RouteConfiguration",
    "RouteMatch",
    "RouterConfig",
    "SocketAddress",
    "StaticResources",
    "StringMatcher",
    "TypedExtensionProtocolOptions",
    "VirtualHost",
    "WeightedClusters",
]

HCM_FILTER_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_FILTER_NAME = "envoy.filters.http.router"
ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_TYPE_URL = "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS_KEY

# Protobuf scalar ranges, as Envoy's JSON parser enforces them.
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
UInt64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # msgspec bounds fit in an int64


class _Message(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An Envoy message: unknown fields are errors. Subclasses pass `kw_only=True` (msgspec does
    not inherit it) so required and optional fields can keep Envoy's order."""


# --- shared messages --------------------------------------------------------------------------


class SocketAddress(_Message, kw_only=True):
    """`envoy.config.core.v3.SocketAddress`: an IP literal (or, for STRICT_DNS, a host name)."""

    address: str
    port_value: Port = 0
    protocol: Literal["TCP"] = "TCP"


class Address(_Message, kw_only=True):
    """`envoy.config.core.v3.Address`: only `socket_address` (no `pipe`, no internal addresses)."""

    socket_address: SocketAddress


class RegexMatcher(_Message, kw_only=True):
    """`envoy.type.matcher.v3.RegexMatcher`: RE2 syntax, matching the whole input."""

    regex: str
    # The RE2 engine marker of older configs; it carries no settings we honour.
    google_re2: dict[str, Any] | None = None


class StringMatcher(_Message, kw_only=True):
    """`envoy.type.matcher.v3.StringMatcher`: exactly one of the five tests."""

    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    contains: str | None = None
    safe_regex: RegexMatcher | None = None
    ignore_case: bool = False


class HeaderValue(_Message, kw_only=True):
    """`envoy.config.core.v3.HeaderValue` (no `raw_value`)."""

    key: str
    value: str = ""


class HeaderValueOption(_Message, kw_only=True):
    """`envoy.config.core.v3.HeaderValueOption`."""

    header: HeaderValue
    append: bool | None = None  # deprecated in Envoy; `append_action` replaces it
    append_action: Literal["APPEND_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS_OR_ADD"] | None = None
    keep_empty_value: bool = False


class DataSource(_Message, kw_only=True):
    """`envoy.config.core.v3.DataSource`: one of `inline_string`, `inline_bytes` (base64 in
    JSON/YAML), `filename` (read when the config is loaded), `environment_variable`."""

    inline_string: str | None = None
    inline_bytes: str | None = None
    filename: str | None = None
    environment_variable: str | None = None


# --- routes -----------------------------------------------------------------------------------


class HeaderMatcher(_Message, kw_only=True):
    """`envoy.config.route.v3.HeaderMatcher`: `string_match` or one of the legacy specifiers."""

    name: str
    string_match: StringMatcher | None = None
    exact_match: str | None = None
    prefix_match: str | None = None
    suffix_match: str | None = None
    contains_match: str | None = None
    safe_regex_match: RegexMatcher | None = None
    present_match: bool | None = None
    invert_match: bool = False
    treat_missing_header_as_empty: bool = False


class QueryParameterMatcher(_Message, kw_only=True):
    """`envoy.config.route.v3.QueryParameterMatcher`."""

    name: str
    string_match: StringMatcher | None = None
    present_match: bool | None = None


class RouteMatch(_Message, kw_only=True):
    """`envoy.config.route.v3.RouteMatch`: one of `prefix`, `path`, `safe_regex`."""

    prefix: str | None = None
    path: str | None = None
    safe_regex: RegexMatcher | None = None
    case_sensitive: bool | None = None
    headers: list[HeaderMatcher] = []
    query_parameters: list[QueryParameterMatcher] = []


class ClusterWeight(_Message, kw_only=True):
    """`envoy.config.route.v3.WeightedCluster.ClusterWeight`."""

    name: str
    weight: UInt32 = 0
    request_headers_to_add: list[HeaderValueOption] = []
    request_headers_to_remove: list[str] = []
    response_headers_to_add: list[HeaderValueOption] = []
    response_headers_to_remove: list[str] = []


class WeightedClusters(_Message, kw_only=True):
    """`envoy.config.route.v3.WeightedCluster`."""

    clusters: list[ClusterWeight]
    total_weight: UInt32 | None = None  # deprecated in Envoy; must equal the sum when given


class RouteUpgradeConfig(_Message, kw_only=True):
    """`envoy.config.route.v3.RouteAction.UpgradeConfig`: a route's own say on an upgrade type."""

    upgrade_type: str
    enabled: bool | None = None
    # Known to Envoy, refused by validate (no CONNECT support).
    connect_config: Any = None


class HashPolicyHeader(_Message, kw_only=True):
    """`RouteAction.HashPolicy.Header`."""

    header_name: str
    regex_rewrite: Any = None  # refused by validate


class CookieAttribute(_Message, kw_only=True):
    """`RouteAction.HashPolicy.CookieAttribute`."""

    name: str
    value: str = ""


class HashPolicyCookie(_Message, kw_only=True):
    """`RouteAction.HashPolicy.Cookie`: with a `ttl`, a request without the cookie gets one."""

    name: str
    ttl: Duration | None = None
    path: str = ""
    attributes: list[CookieAttribute] = []


class HashPolicyConnectionProperties(_Message, kw_only=True):
    """`RouteAction.HashPolicy.ConnectionProperties`."""

    source_ip: bool = False


class HashPolicyQueryParameter(_Message, kw_only=True):
    """`RouteAction.HashPolicy.QueryParameter`."""

    name: str


class HashPolicy(_Message, kw_only=True):
    """`RouteAction.HashPolicy`: one of `header`, `cookie`, `connection_properties`,
    `query_parameter`."""

    header: HashPolicyHeader | None = None
    cookie: HashPolicyCookie | None = None
    connection_properties: HashPolicyConnectionProperties | None = None
    query_parameter: HashPolicyQueryParameter | None = None
    filter_state: Any = None  # refused by validate
    terminal: bool = False


class RegexMatchAndSubstitute(_Message, kw_only=True):
    """`envoy.type.matcher.v3.RegexMatchAndSubstitute`."""

    pattern: RegexMatcher
    substitution: str = ""


class RetryBackOff(_Message, kw_only=True):
    """`RetryPolicy.RetryBackOff`: Envoy's jittered exponential back-off between attempts."""

    base_interval: Duration
    max_interval: Duration | None = None


class RetryHostPredicate(_Message, kw_only=True):
    """A `retry_host_predicate` entry (`envoy.config.core.v3.TypedExtensionConfig`): only
    `envoy.retry_host_predicates.previous_hosts` is taken."""

    name: str = ""
    typed_config: dict[str, Any] | None = None


class RetryPolicy(_Message, kw_only=True):
    """`envoy.config.route.v3.RetryPolicy` (on a route or its virtual host; the route's replaces
    the virtual host's whole)."""

    retry_on: str = ""
    num_retries: UInt32 | None = None
    per_try_timeout: Duration | None = None
    per_try_idle_timeout: Duration | None = None
    retry_priority: dict[str, Any] | None = None  # refused by validate
    retry_host_predicate: list[RetryHostPredicate] = []
    retry_options_predicates: list[dict[str, Any]] = []  # refused by validate
    host_selection_retry_max_attempts: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] = 0
    retriable_status_codes: list[UInt32] = []
    retry_back_off: RetryBackOff | None = None
    rate_limited_retry_back_off: dict[str, Any] | None = None  # refused by validate
    retriable_headers: list[HeaderMatcher] = []
    retriable_request_headers: list[HeaderMatcher] = []


class MaxStreamDuration(_Message, kw_only=True):
    """`RouteAction.MaxStreamDuration` (the `grpc-timeout` header fields are refused by
    validate)."""

    max_stream_duration: Duration | None = None
    grpc_timeout_header_max: Duration | None = None
    grpc_timeout_header_offset: Duration | None = None


class RouteAction(_Message, kw_only=True):
    """`envoy.config.route.v3.RouteAction` (the `route` action): one of `cluster`,
    `weighted_clusters`."""

    cluster: str | None = None
    weighted_clusters: WeightedClusters | None = None
    cluster_header: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexMatchAndSubstitute | None = None
    host_rewrite_literal: str | None = None
    auto_host_rewrite: bool | None = None
    timeout: Duration | None = None
    idle_timeout: Duration | None = None
    max_stream_duration: MaxStreamDuration | None = None
    upgrade_configs: list[RouteUpgradeConfig] = []
    hash_policy: list[HashPolicy] = []
    priority: Literal["DEFAULT", "HIGH"] = "DEFAULT"
    retry_policy: RetryPolicy | None = None


class RedirectAction(_Message, kw_only=True):
    """`envoy.config.route.v3.RedirectAction`."""

    https_redirect: bool | None = None
    scheme_redirect: str | None = None
    host_redirect: str | None = None
    port_redirect: Port | None = None
    path_redirect: str | None = None
    prefix_rewrite: str | None = None
    response_code: Literal[
        "MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"
    ] = "MOVED_PERMANENTLY"
    strip_query: bool = False


class DirectResponseAction(_Message, kw_only=True):
    """`envoy.config.route.v3.DirectResponseAction`."""

    status: int
    body: DataSource | None = None


class Route(_Message, kw_only=True):
    """`envoy.config.route.v3.Route`: a match and one of `route`, `redirect`, `direct_response`."""

    name: str = ""
    match: RouteMatch
    route: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None
    request_headers_to_add: list[HeaderValueOption] = []
    request_headers_to_remove: list[str] = []
    response_headers_to_add: list[HeaderValueOption] = []
    response_headers_to_remove: list[str] = []
    per_request_buffer_limit_bytes: UInt32 | None = None


class VirtualHost(_Message, kw_only=True):
    """`envoy.config.route.v3.VirtualHost`."""

    name: str
    domains: list[str]
    routes: list[Route] = []
    require_tls: Literal["NONE", "EXTERNAL_ONLY", "ALL"] = "NONE"
    request_headers_to_add: list[HeaderValueOption] = []
    request_headers_to_remove: list[str] = []
    response_headers_to_add: list[HeaderValueOption] = []
    response_headers_to_remove: list[str] = []
    retry_policy: RetryPolicy | None = None
    per_request_buffer_limit_bytes: UInt32 | None = None
    include_request_attempt_count: bool = False
    include_attempt_count_in_response: bool = False


class RouteConfiguration(_Message, kw_only=True):
    """`envoy.config.route.v3.RouteConfiguration` (inline in the HCM)."""

    name: str = ""
    virtual_hosts: list[VirtualHost] = []
    request_headers_to_add: list[HeaderValueOption] = []
    request_headers_to_remove: list[str] = []
    response_headers_to_add: list[HeaderValueOption] = []
    response_headers_to_remove: list[str] = []
    validate_clusters: bool | None = None
    max_direct_response_body_size_bytes: UInt32 | None = None


# --- listeners --------------------------------------------------------------------------------


class RouterConfig(_Message, kw_only=True):
    """`envoy.extensions.filters.http.router.v3.Router`."""

    type_url: Literal[
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    ] = msgspec.field(name="@type")
    suppress_envoy_headers: bool = False


class HttpFilter(_Message, kw_only=True):
    """`...http_connection_manager.v3.HttpFilter`: only the router. Like Envoy, the extension is
    chosen by `typed_config.@type`; `name` is free-form."""

    name: str
    typed_config: RouterConfig


class HcmProtocolOptions(_Message, kw_only=True):
    """The HCM's `common_http_protocol_options` (`envoy.config.core.v3.HttpProtocolOptions`)."""

    idle_timeout: Duration | None = None
    max_connection_duration: Duration | None = None
    max_stream_duration: Duration | None = None
    max_requests_per_connection: UInt32 | None = None
    max_headers_count: UInt32 | None = None
    headers_with_underscores_action: Literal["ALLOW", "REJECT_REQUEST", "DROP_HEADER"] = "ALLOW"


class HcmUpgradeConfig(_Message, kw_only=True):
    """`HttpConnectionManager.UpgradeConfig`: an upgrade type the connection manager forwards."""

    upgrade_type: str
    enabled: bool | None = None
    # Accepted empty only: an upgrade goes through the connection manager's own filters.
    filters: list[Any] = []


FILE_ACCESS_LOG_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
)
STDOUT_ACCESS_LOG_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
)
STDERR_ACCESS_LOG_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
)


class JsonFormatOptions(_Message, kw_only=True):
    """`envoy.config.core.v3.JsonFormatOptions` (keys are always written sorted, as Envoy's)."""

    sort_properties: bool = False


class SubstitutionFormatString(_Message, kw_only=True):
    """`envoy.config.core.v3.SubstitutionFormatString`: one of `text_format`,
    `text_format_source`, `json_format`."""

    text_format: str | None = None
    text_format_source: DataSource | None = None
    json_format: dict[str, Any] | None = None
    omit_empty_values: bool = False
    content_type: str = ""
    # Accepted empty only: custom command parsers are extensions pyproxy does not have.
    formatters: list[Any] = []
    json_format_options: JsonFormatOptions | None = None


class FileAccessLog(_Message, kw_only=True, tag_field="@type", tag=FILE_ACCESS_LOG_TYPE_URL):
    """`envoy.extensions.access_loggers.file.v3.FileAccessLog`: `path`, and one of
    `log_format` or the deprecated `format` / `json_format` / `typed_json_format`."""

    path: str
    log_format: SubstitutionFormatString | None = None
    format: str | None = None
    json_format: dict[str, Any] | None = None
    typed_json_format: dict[str, Any] | None = None


class StdoutAccessLog(_Message, kw_only=True, tag_field="@type", tag=STDOUT_ACCESS_LOG_TYPE_URL):
    """`envoy.extensions.access_loggers.stream.v3.StdoutAccessLog`."""

    log_format: SubstitutionFormatString | None = None


class StderrAccessLog(_Message, kw_only=True, tag_field="@type", tag=STDERR_ACCESS_LOG_TYPE_URL):
    """`envoy.extensions.access_loggers.stream.v3.StderrAccessLog`."""

    log_format: SubstitutionFormatString | None = None


class RuntimeUInt32(_Message, kw_only=True):
    """`envoy.config.core.v3.RuntimeUInt32`: pyproxy has no runtime, so `default_value` holds."""

    default_value: UInt32 = 0
    runtime_key: str = ""


class ComparisonFilter(_Message, kw_only=True):
    """`envoy.config.accesslog.v3.ComparisonFilter`."""

    op: Literal["GE", "EQ", "LE", "NE"] = "GE"
    value: RuntimeUInt32 | None = None


class StatusCodeFilter(_Message, kw_only=True):
    comparison: ComparisonFilter


class DurationFilter(_Message, kw_only=True):
    comparison: ComparisonFilter


class HeaderFilter(_Message, kw_only=True):
    header: HeaderMatcher


class ResponseFlagFilter(_Message, kw_only=True):
    flags: list[str] = []


class FilterList(_Message, kw_only=True):
    """`AndFilter` / `OrFilter`: at least two filters (Envoy)."""

    filters: list[AccessLogFilter] = []


class AccessLogFilter(_Message, kw_only=True):
    """`envoy.config.accesslog.v3.AccessLogFilter`: exactly one filter."""

    status_code_filter: StatusCodeFilter | None = None
    duration_filter: DurationFilter | None = None
    not_health_check_filter: dict[str, Any] | None = None
    header_filter: HeaderFilter | None = None
    response_flag_filter: ResponseFlagFilter | None = None
    and_filter: FilterList | None = None
    or_filter: FilterList | None = None
    # Known to Envoy, refused by validate with a message of its own.
    traceable_filter: Any = None
    runtime_filter: Any = None
    grpc_status_filter: Any = None
    extension_filter: Any = None
    metadata_filter: Any = None
    log_type_filter: Any = None


class AccessLog(_Message, kw_only=True):
    """`envoy.config.accesslog.v3.AccessLog`: a file, stdout or stderr logger, chosen by
    `typed_config.@type`; `name` is free-form."""

    name: str = ""
    filter: AccessLogFilter | None = None
    typed_config: FileAccessLog | StdoutAccessLog | StderrAccessLog


class HttpConnectionManager(_Message, kw_only=True):
    """`envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`."""

    type_url: Literal[
        "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    ] = msgspec.field(name="@type")
    stat_prefix: str
    codec_type: Literal["AUTO", "HTTP1"] = "AUTO"
    route_config: RouteConfiguration | None = None
    # Known to Envoy, refused by validate with a message of its own rather than "unknown field".
    rds: Any = None
    access_log: list[AccessLog] = []
    http_filters: list[HttpFilter] = []
    server_name: str | None = None
    server_header_transformation: Literal["OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"] = (
        "OVERWRITE"
    )
    use_remote_address: bool = False
    xff_num_trusted_hops: UInt32 = 0
    skip_xff_append: bool = False
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    via: str = ""
    max_request_headers_kb: UInt32 | None = None
    stream_idle_timeout: Duration | None = None
    request_timeout: Duration | None = None
    request_headers_timeout: Duration | None = None
    common_http_protocol_options: HcmProtocolOptions | None = None
    drain_timeout: Duration | None = None
    proxy_100_continue: bool = False
    upgrade_configs: list[HcmUpgradeConfig] = []
    strip_any_host_port: bool = False
    strip_matching_host_port: bool = False
    normalize_path: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: Literal[
        "IMPLEMENTATION_SPECIFIC_DEFAULT",
        "KEEP_UNCHANGED",
        "REJECT_REQUEST",
        "UNESCAPE_AND_REDIRECT",
        "UNESCAPE_AND_FORWARD",
    ] = "IMPLEMENTATION_SPECIFIC_DEFAULT"


class NetworkFilter(_Message, kw_only=True):
    """`envoy.config.listener.v3.Filter`: only the HTTP connection manager. The extension is chosen
    by `typed_config.@type`, as Envoy does; `name` is free-form."""

    name: str
    typed_config: HttpConnectionManager


class FilterChain(_Message, kw_only=True):
    """`envoy.config.listener.v3.FilterChain` (no `filter_chain_match`, no `transport_socket`)."""

    name: str = ""
    filters: list[NetworkFilter]


class Listener(_Message, kw_only=True):
    """`envoy.config.listener.v3.Listener`."""

    name: str = ""
    address: Address
    filter_chains: list[FilterChain]
    per_connection_buffer_limit_bytes: UInt32 | None = None
    # Which drains close this listener's connections: DEFAULT every one, MODIFY_ONLY not a
    # failed health check (/healthcheck/fail).
    drain_type: Literal["DEFAULT", "MODIFY_ONLY"] = "DEFAULT"


# --- clusters ---------------------------------------------------------------------------------


class LeastRequestLbConfig(_Message, kw_only=True):
    """`Cluster.LeastRequestLbConfig` (only `choice_count`)."""

    choice_count: UInt32 | None = None


class Endpoint(_Message, kw_only=True):
    """`envoy.config.endpoint.v3.Endpoint`."""

    address: Address


class LbEndpoint(_Message, kw_only=True):
    """`envoy.config.endpoint.v3.LbEndpoint`."""

    endpoint: Endpoint
    load_balancing_weight: UInt32 | None = None


class LocalityLbEndpoints(_Message, kw_only=True):
    """`envoy.config.endpoint.v3.LocalityLbEndpoints` (one locality, priority 0)."""

    lb_endpoints: list[LbEndpoint] = []


class ClusterLoadAssignment(_Message, kw_only=True):
    """`envoy.config.endpoint.v3.ClusterLoadAssignment`."""

    cluster_name: str
    endpoints: list[LocalityLbEndpoints] = []


class UpstreamCommonOptions(_Message, kw_only=True):
    """The upstream `common_http_protocol_options` (`envoy.config.core.v3.HttpProtocolOptions`)."""

    idle_timeout: Duration | None = None
    max_requests_per_connection: UInt32 | None = None
    max_headers_count: UInt32 | None = None


class Http1ProtocolOptions(_Message, kw_only=True):
    """`envoy.config.core.v3.Http1ProtocolOptions`: accepted empty only (HTTP/1.1, defaults)."""


class ExplicitHttpConfig(_Message, kw_only=True):
    """`HttpProtocolOptions.ExplicitHttpConfig`: HTTP/1.1 only."""

    http_protocol_options: Http1ProtocolOptions


class HttpProtocolOptions(_Message, kw_only=True):
    """`envoy.extensions.upstreams.http.v3.HttpProtocolOptions`."""

    type_url: Literal[
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ] = msgspec.field(name="@type")
    common_http_protocol_options: UpstreamCommonOptions | None = None
    explicit_http_config: ExplicitHttpConfig


class TypedExtensionProtocolOptions(_Message, kw_only=True):
    """`Cluster.typed_extension_protocol_options`, a map keyed by extension name in Envoy; the one
    key pyproxy knows is a field here, so any other key is an unknown-field error."""

    http: HttpProtocolOptions | None = msgspec.field(
        default=None, name="envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    )


class RingHashLbConfig(_Message, kw_only=True):
    """`Cluster.RingHashLbConfig`."""

    minimum_ring_size: UInt64 | None = None
    maximum_ring_size: UInt64 | None = None
    hash_function: Literal["XX_HASH", "MURMUR_HASH_2"] = "XX_HASH"


class MaglevLbConfig(_Message, kw_only=True):
    """`Cluster.MaglevLbConfig`."""

    table_size: UInt64 | None = None


class CircuitBreakerThresholds(_Message, kw_only=True):
    """`envoy.config.cluster.v3.CircuitBreakers.Thresholds` (unset limits are Envoy's defaults:
    1024 connections, pending requests and requests, 3 retries)."""

    priority: Literal["DEFAULT", "HIGH"] = "DEFAULT"
    max_connections: UInt32 | None = None
    max_pending_requests: UInt32 | None = None
    max_requests: UInt32 | None = None
    max_retries: UInt32 | None = None
    max_connection_pools: UInt32 | None = None  # refused by validate
    track_remaining: bool = False
    retry_budget: dict[str, Any] | None = None  # refused by validate


class CircuitBreakers(_Message, kw_only=True):
    """`envoy.config.cluster.v3.CircuitBreakers`: the first entry of each priority counts, as in
    Envoy."""

    thresholds: list[CircuitBreakerThresholds] = []
    per_host_thresholds: list[dict[str, Any]] = []  # refused by validate


class HealthCheckPayload(_Message, kw_only=True):
    """`HealthCheck.Payload`: `text` is hex, `binary` base64 (JSON/YAML)."""

    text: str | None = None
    binary: str | None = None


class Int64Range(_Message, kw_only=True):
    """`envoy.type.v3.Int64Range`: `[start, end)`."""

    start: int = 0
    end: int = 0


class HttpHealthCheck(_Message, kw_only=True):
    """`HealthCheck.HttpHealthCheck` (HTTP/1.1; `send`/`receive`, gRPC-style service name
    matching and other codecs are refused by validate)."""

    path: str = ""
    host: str = ""
    method: Literal[
        "METHOD_UNSPECIFIED", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
        "TRACE", "PATCH",
    ] = "METHOD_UNSPECIFIED"  # fmt: skip
    request_headers_to_add: list[HeaderValueOption] = []
    request_headers_to_remove: list[str] = []
    expected_statuses: list[Int64Range] = []
    retriable_statuses: list[Int64Range] = []
    codec_client_type: Literal["HTTP1", "HTTP2", "HTTP3"] = "HTTP1"
    send: HealthCheckPayload | None = None  # refused by validate
    receive: list[HealthCheckPayload] = []  # refused by validate
    response_buffer_size: UInt64 | None = None
    service_name_matcher: StringMatcher | None = None  # refused by validate


class TcpHealthCheck(_Message, kw_only=True):
    """`HealthCheck.TcpHealthCheck`: bytes to send, blocks that must come back in order."""

    send: HealthCheckPayload | None = None
    receive: list[HealthCheckPayload] = []
    proxy_protocol_config: dict[str, Any] | None = None  # refused by validate


class HealthCheck(_Message, kw_only=True):
    """`envoy.config.core.v3.HealthCheck`: an HTTP or TCP check (gRPC, custom checkers, event
    logs and TLS options are refused by validate)."""

    name: str = ""  # refused by validate (named checks move their stats)
    timeout: Duration | None = None
    interval: Duration | None = None
    initial_jitter: Duration | None = None
    interval_jitter: Duration | None = None
    interval_jitter_percent: UInt32 = 0
    unhealthy_threshold: UInt32 | None = None
    healthy_threshold: UInt32 | None = None
    reuse_connection: bool | None = None
    no_traffic_interval: Duration | None = None
    no_traffic_healthy_interval: Duration | None = None
    unhealthy_interval: Duration | None = None
    unhealthy_edge_interval: Duration | None = None
    healthy_edge_interval: Duration | None = None
    http_health_check: HttpHealthCheck | None = None
    tcp_health_check: TcpHealthCheck | None = None
    always_log_health_check_failures: bool = False
    always_log_health_check_success: bool = False
    # Refused by validate, each with its reason.
    grpc_health_check: dict[str, Any] | None = None
    custom_health_check: dict[str, Any] | None = None
    event_log_path: str | None = None
    event_logger: list[dict[str, Any]] = []
    tls_options: dict[str, Any] | None = None
    transport_socket_match_criteria: dict[str, Any] | None = None
    alt_port: UInt32 | None = None


class Percent(_Message, kw_only=True):
    """`envoy.type.v3.Percent`: 0 to 100."""

    value: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 0.0


class CommonLbConfig(_Message, kw_only=True):
    """`Cluster.CommonLbConfig`: only the panic threshold."""

    healthy_panic_threshold: Percent | None = None


class OutlierDetection(_Message, kw_only=True):
    """`envoy.config.cluster.v3.OutlierDetection`: passive health checking. Unset fields take
    Envoy's defaults (lower.py); custom `monitors` and `detect_degraded_hosts` are refused by
    validate."""

    consecutive_5xx: UInt32 | None = None
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: UInt32 | None = None
    enforcing_consecutive_5xx: UInt32 | None = None
    enforcing_success_rate: UInt32 | None = None
    success_rate_minimum_hosts: UInt32 | None = None
    success_rate_request_volume: UInt32 | None = None
    success_rate_stdev_factor: UInt32 | None = None
    consecutive_gateway_failure: UInt32 | None = None
    enforcing_consecutive_gateway_failure: UInt32 | None = None
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: UInt32 | None = None
    enforcing_consecutive_local_origin_failure: UInt32 | None = None
    enforcing_local_origin_success_rate: UInt32 | None = None
    failure_percentage_threshold: UInt32 | None = None
    enforcing_failure_percentage: UInt32 | None = None
    enforcing_failure_percentage_local_origin: UInt32 | None = None
    failure_percentage_minimum_hosts: UInt32 | None = None
    failure_percentage_request_volume: UInt32 | None = None
    max_ejection_time: Duration | None = None
    max_ejection_time_jitter: Duration | None = None
    successful_active_health_check_uneject_host: bool | None = None
    monitors: list[dict[str, Any]] = []  # refused by validate
    always_eject_one_host: bool | None = None
    detect_degraded_hosts: bool | None = None  # refused by validate (true)


class Cluster(_Message, kw_only=True):
    """`envoy.config.cluster.v3.Cluster`."""

    name: str
    type: Literal["STATIC", "STRICT_DNS"] = "STATIC"
    connect_timeout: Duration | None = None
    lb_policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"] = "ROUND_ROBIN"
    least_request_lb_config: LeastRequestLbConfig | None = None
    ring_hash_lb_config: RingHashLbConfig | None = None
    maglev_lb_config: MaglevLbConfig | None = None
    load_assignment: ClusterLoadAssignment | None = None
    per_connection_buffer_limit_bytes: UInt32 | None = None
    max_requests_per_connection: UInt32 | None = None  # deprecated in Envoy, still honoured
    typed_extension_protocol_options: TypedExtensionProtocolOptions | None = None
    dns_refresh_rate: Duration | None = None
    dns_lookup_family: Literal["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"] = "AUTO"
    circuit_breakers: CircuitBreakers | None = None
    health_checks: list[HealthCheck] = []
    common_lb_config: CommonLbConfig | None = None
    outlier_detection: OutlierDetection | None = None


# --- bootstrap --------------------------------------------------------------------------------


class Node(_Message, kw_only=True):
    """`envoy.config.core.v3.Node`: identity only, shown by the admin `/server_info`."""

    id: str = ""
    cluster: str = ""
    metadata: dict[str, Any] | None = None


class Admin(_Message, kw_only=True):
    """`envoy.config.bootstrap.v3.Admin`. `access_log`/`access_log_path` are accepted and ignored
    (the admin server does not write access logs), as docs/config.md says."""

    address: Address | None = None
    access_log: list[dict[str, Any]] = []
    access_log_path: str | None = None


class StaticResources(_Message, kw_only=True):
    """`Bootstrap.StaticResources` (no `secrets`)."""

    listeners: list[Listener] = []
    clusters: list[Cluster] = []


FIXED_HEAP_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
)
INJECTED_RESOURCE_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig"
)
DOWNSTREAM_CONNECTIONS_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


class FixedHeapConfig(_Message, kw_only=True, tag_field="@type", tag=FIXED_HEAP_TYPE_URL):
    """`envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig`."""

    max_heap_size_bytes: UInt64 = 0


class InjectedResourceConfig(_Message, kw_only=True, tag_field="@type", tag=INJECTED_RESOURCE_TYPE_URL):
    """`envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig`."""

    filename: Annotated[str, msgspec.Meta(min_length=1)]


class DownstreamConnectionsConfig(
    _Message, kw_only=True, tag_field="@type", tag=DOWNSTREAM_CONNECTIONS_TYPE_URL
):
    """`envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig`."""

    max_active_downstream_connections: Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]


class ResourceMonitor(_Message, kw_only=True):
    """`envoy.config.overload.v3.ResourceMonitor`: chosen by `typed_config.@type`; `name`
    names it for triggers and stats."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    typed_config: FixedHeapConfig | InjectedResourceConfig | DownstreamConnectionsConfig


class ThresholdTrigger(_Message, kw_only=True):
    """`envoy.config.overload.v3.ThresholdTrigger`."""

    value: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class ScaledTrigger(_Message, kw_only=True):
    """`envoy.config.overload.v3.ScaledTrigger`."""

    scaling_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    saturation_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class Trigger(_Message, kw_only=True):
    """`envoy.config.overload.v3.Trigger`: a monitor's name and one of `threshold`, `scaled`."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    threshold: ThresholdTrigger | None = None
    scaled: ScaledTrigger | None = None


SCALE_TIMERS_TYPE_URL = "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig"


class ScaleTimer(_Message, kw_only=True):
    """`ScaleTimersOverloadActionConfig.ScaleTimer`: one of `min_timeout`, `min_scale`."""

    timer: Literal["HTTP_DOWNSTREAM_CONNECTION_IDLE", "HTTP_DOWNSTREAM_STREAM_IDLE",
                   "TRANSPORT_SOCKET_CONNECT", "HTTP_DOWNSTREAM_CONNECTION_MAX"]
    min_timeout: Duration | None = None
    min_scale: Percent | None = None


class ScaleTimersOverloadActionConfig(
    _Message, kw_only=True, tag_field="@type", tag=SCALE_TIMERS_TYPE_URL
):
    """`envoy.config.overload.v3.ScaleTimersOverloadActionConfig` (`reduce_timeouts`)."""

    timer_scale_factors: Annotated[list[ScaleTimer], msgspec.Meta(min_length=1)]


class OverloadAction(_Message, kw_only=True):
    """`envoy.config.overload.v3.OverloadAction`."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    triggers: Annotated[list[Trigger], msgspec.Meta(min_length=1)]
    typed_config: ScaleTimersOverloadActionConfig | None = None


class OverloadManager(_Message, kw_only=True):
    """`envoy.config.overload.v3.OverloadManager`."""

    refresh_interval: Duration | None = None
    resource_monitors: Annotated[list[ResourceMonitor], msgspec.Meta(min_length=1)]
    actions: list[OverloadAction] = []
    loadshed_points: list[Any] = []
    buffer_factory_config: dict[str, Any] | None = None


class Bootstrap(_Message, kw_only=True):
    """`envoy.config.bootstrap.v3.Bootstrap`."""

    node: Node | None = None
    admin: Admin | None = None
    static_resources: StaticResources = msgspec.field(default_factory=StaticResources)
    overload_manager: OverloadManager | None = None
