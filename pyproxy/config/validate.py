"""Checks that need more than a field's type: one-ofs, ranges, cross-references, syntax.

`pyproxy.config.load` runs `validate` after decoding, so every `Bootstrap` a caller holds has
passed it. Each check raises `ConfigError(path, message)` with the dotted path of the field and a
message that names the bad value and what is allowed. Where Envoy rejects the same input, the
message says so in Envoy's terms; where pyproxy is stricter than Envoy, the message says that too.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Sequence

from ..errors import ConfigError
from . import model as m

__all__ = ["check_regex", "effective_listener_name", "validate"]

# RFC 9110 token characters: what a header name may contain.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RE2 (and the Rust `regex` crate the engine uses) have no look-around, back-references, atomic
# groups or conditionals; Python's `re` has, so they are refused before `re` sees them.
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|>|\(|P=)|\\[1-9]")
_UNICODE_CLASS = re.compile(r"\\[pP](?:\{[^}]*\}|[A-Za-z])")


def validate(bootstrap: m.Bootstrap) -> None:
    """Raises ConfigError for the first problem found, walking the document in order."""
    if bootstrap.admin is not None and bootstrap.admin.address is not None:
        _check_ip(bootstrap.admin.address, "admin.address")
    clusters = _check_clusters(bootstrap.static_resources.clusters)
    _check_listeners(bootstrap.static_resources.listeners, clusters)
    if bootstrap.overload_manager is not None:
        _check_overload(bootstrap.overload_manager, "overload_manager")


def effective_listener_name(listener: m.Listener) -> str:
    """The listener's name, or Envoy's stat name for it (`0.0.0.0_10000`) when it has none."""
    if listener.name:
        return listener.name
    sa = listener.address.socket_address
    return f"{sa.address}_{sa.port_value}"


# --- listeners --------------------------------------------------------------------------------


def _check_listeners(listeners: Sequence[m.Listener], clusters: set[str]) -> None:
    names: dict[str, int] = {}
    addresses: dict[tuple[str, int], int] = {}
    for i, listener in enumerate(listeners):
        path = f"static_resources.listeners[{i}]"
        name = effective_listener_name(listener)
        if name in names:
            raise ConfigError(
                f"{path}.name",
                f"duplicate listener name {name!r} (also static_resources.listeners"
                f"[{names[name]}]); pyproxy identifies listeners by name",
            )
        names[name] = i
        sa = _check_ip(listener.address, f"{path}.address")
        key = (str(ipaddress.ip_address(sa.address)), sa.port_value)
        if sa.port_value != 0 and key in addresses:
            raise ConfigError(
                f"{path}.address",
                f"{sa.address}:{sa.port_value} is already the address of "
                f"static_resources.listeners[{addresses[key]}]",
            )
        addresses[key] = i
        if len(listener.filter_chains) != 1:
            raise ConfigError(
                f"{path}.filter_chains",
                f"has {len(listener.filter_chains)} filter chains; pyproxy supports exactly one",
            )
        chain = listener.filter_chains[0]
        if len(chain.filters) != 1:
            raise ConfigError(
                f"{path}.filter_chains[0].filters",
                f"has {len(chain.filters)} filters; pyproxy supports exactly one, "
                f"{m.HCM_FILTER_NAME}",
            )
        hcm_path = f"{path}.filter_chains[0].filters[0].typed_config"
        _check_hcm(chain.filters[0].typed_config, hcm_path, clusters)


def _check_hcm(hcm: m.HttpConnectionManager, path: str, clusters: set[str]) -> None:
    if not hcm.stat_prefix:
        raise ConfigError(f"{path}.stat_prefix", "must not be empty")
    _check_no_line_breaks(hcm.server_name, f"{path}.server_name")
    _check_no_line_breaks(hcm.via, f"{path}.via")
    for i, log in enumerate(hcm.access_log):
        _check_access_log(log, f"{path}.access_log[{i}]")
    if hcm.rds is not None:
        raise ConfigError(
            f"{path}.rds",
            "RDS is not supported yet; put the RouteConfiguration inline in route_config",
        )
    if hcm.route_config is None:
        raise ConfigError(f"{path}.route_config", "is required (an inline RouteConfiguration)")
    if len(hcm.http_filters) != 1:
        raise ConfigError(
            f"{path}.http_filters",
            f"has {len(hcm.http_filters)} filters; pyproxy supports exactly one, "
            f"the router ({m.ROUTER_FILTER_NAME}), which must be last",
        )
    kb = hcm.max_request_headers_kb
    if kb is not None and not 1 <= kb <= 8192:
        raise ConfigError(
            f"{path}.max_request_headers_kb", f"{kb} is out of range; expected 1..8192"
        )
    if hcm.strip_any_host_port and hcm.strip_matching_host_port:
        raise ConfigError(
            f"{path}.strip_any_host_port",
            "set only one of strip_any_host_port and strip_matching_host_port, as Envoy requires",
        )
    if hcm.common_http_protocol_options is not None:
        _check_max_headers_count(
            hcm.common_http_protocol_options.max_headers_count,
            f"{path}.common_http_protocol_options",
        )
    _check_upgrade_configs(hcm.upgrade_configs, f"{path}.upgrade_configs", route=False)
    _check_route_config(hcm.route_config, f"{path}.route_config", clusters)


# Envoy's response flag names (`response_flag_filter.flags`).
RESPONSE_FLAGS = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
)

_FILTERS = ("status_code_filter", "duration_filter", "not_health_check_filter", "header_filter",
            "response_flag_filter", "and_filter", "or_filter", "traceable_filter",
            "runtime_filter", "grpc_status_filter", "extension_filter", "metadata_filter",
            "log_type_filter")
_UNSUPPORTED_FILTERS = {
    "traceable_filter": "pyproxy does no tracing",
    "runtime_filter": "pyproxy has no runtime",
    "grpc_status_filter": "pyproxy does not look at gRPC statuses",
    "extension_filter": "access log filter extensions are not supported",
    "metadata_filter": "pyproxy keeps no dynamic metadata",
    "log_type_filter": "pyproxy writes one log line per request; there are no other log types",
}


def _check_access_log(log: m.AccessLog, path: str) -> None:
    tc = log.typed_config
    tpath = f"{path}.typed_config"
    if isinstance(tc, m.FileAccessLog):
        if not tc.path:
            raise ConfigError(f"{tpath}.path", "must not be empty")
        given = [n for n in ("log_format", "format", "json_format", "typed_json_format")
                 if getattr(tc, n) is not None]
        if len(given) > 1:
            raise ConfigError(tpath, f"set only one of log_format, format, json_format, "
                                     f"typed_json_format; got {', '.join(given)}")
    if tc.log_format is not None:
        _check_format(tc.log_format, f"{tpath}.log_format")
    if log.filter is not None:
        _check_filter(log.filter, f"{path}.filter")


def _check_format(f: m.SubstitutionFormatString, path: str) -> None:
    given = [n for n in ("text_format", "text_format_source", "json_format")
             if getattr(f, n) is not None]
    if len(given) != 1:
        raise ConfigError(path, "needs exactly one of text_format, text_format_source, json_format"
                          + (f"; got {', '.join(given)}" if given else ""))
    if f.formatters:
        raise ConfigError(f"{path}.formatters", "custom formatter extensions are not supported")
    if f.text_format_source is not None:
        data_source_text(f.text_format_source, f"{path}.text_format_source")


def _check_filter(f: m.AccessLogFilter, path: str) -> None:
    given = [n for n in _FILTERS if getattr(f, n) is not None]
    if len(given) != 1:
        raise ConfigError(path, "needs exactly one filter" + (f"; got {', '.join(given)}" if given else ""))
    kind = given[0]
    if kind in _UNSUPPORTED_FILTERS:
        raise ConfigError(f"{path}.{kind}", f"is not supported: {_UNSUPPORTED_FILTERS[kind]}")
    if f.header_filter is not None:
        _check_header_matcher(f.header_filter.header, f"{path}.header_filter.header")
    if f.response_flag_filter is not None:
        for i, flag in enumerate(f.response_flag_filter.flags):
            if flag not in RESPONSE_FLAGS:
                raise ConfigError(f"{path}.response_flag_filter.flags[{i}]",
                                  f"{flag!r} is not a response flag; expected one of {', '.join(RESPONSE_FLAGS)}")
    for name in ("and_filter", "or_filter"):
        lst = getattr(f, name)
        if lst is not None:
            if len(lst.filters) < 2:
                raise ConfigError(f"{path}.{name}.filters",
                                  f"has {len(lst.filters)} filters; Envoy requires at least 2")
            for i, sub in enumerate(lst.filters):
                _check_filter(sub, f"{path}.{name}.filters[{i}]")


MAX_RING_SIZE = 8 * 1024 * 1024


MAX_MAGLEV_TABLE = 5000011


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def _check_ring_hash(cluster: m.Cluster, path: str) -> None:
    mg = cluster.maglev_lb_config
    if mg is not None and mg.table_size is not None:
        size = mg.table_size
        if size > MAX_MAGLEV_TABLE or not _is_prime(size):
            raise ConfigError(
                f"{path}.maglev_lb_config.table_size",
                f"{size} is not a prime number up to {MAX_MAGLEV_TABLE}, as Envoy requires",
            )
    rh = cluster.ring_hash_lb_config
    if rh is None:
        return
    rpath = f"{path}.ring_hash_lb_config"
    if rh.hash_function != "XX_HASH":
        raise ConfigError(f"{rpath}.hash_function", f"{rh.hash_function} is not supported; use XX_HASH")
    low = 1024 if rh.minimum_ring_size is None else rh.minimum_ring_size
    high = MAX_RING_SIZE if rh.maximum_ring_size is None else rh.maximum_ring_size
    for field, value in (("minimum_ring_size", low), ("maximum_ring_size", high)):
        if value > MAX_RING_SIZE:
            raise ConfigError(f"{rpath}.{field}", f"{value} is out of range; expected at most {MAX_RING_SIZE}")
    if low > high:
        raise ConfigError(f"{rpath}.minimum_ring_size", f"{low} is greater than maximum_ring_size ({high})")


def _check_hash_policy(policies: Sequence[m.HashPolicy], path: str) -> None:
    for i, hp in enumerate(policies):
        ppath = f"{path}[{i}]"
        given = [n for n in ("header", "cookie", "connection_properties", "query_parameter", "filter_state")
                 if getattr(hp, n) is not None]
        if len(given) != 1:
            raise ConfigError(
                ppath, "needs exactly one of header, cookie, connection_properties, query_parameter")
        if hp.filter_state is not None:
            raise ConfigError(f"{ppath}.filter_state", "is not supported")
        if hp.header is not None:
            _check_header_name(hp.header.header_name, f"{ppath}.header.header_name")
            if hp.header.regex_rewrite is not None:
                raise ConfigError(f"{ppath}.header.regex_rewrite", "is not supported yet")
        if hp.cookie is not None:
            if not hp.cookie.name:
                raise ConfigError(f"{ppath}.cookie.name", "must not be empty")
            _check_cookie_token(hp.cookie.name, f"{ppath}.cookie.name")
            _check_no_line_breaks(hp.cookie.path, f"{ppath}.cookie.path")
            for a, attr in enumerate(hp.cookie.attributes):
                _check_cookie_token(attr.name, f"{ppath}.cookie.attributes[{a}].name")
                _check_no_line_breaks(attr.value, f"{ppath}.cookie.attributes[{a}].value")
        if hp.query_parameter is not None and not hp.query_parameter.name:
            raise ConfigError(f"{ppath}.query_parameter.name", "must not be empty")


def _check_cookie_token(name: str, path: str) -> None:
    if not name:
        raise ConfigError(path, "must not be empty")
    bad = [c for c in name if c in ' \t\r\n\x00;=,"' or not c.isprintable()]
    if bad:
        raise ConfigError(path, f"{name!r} may not hold {bad[0]!r}")


def _check_upgrade_configs(
    configs: Sequence[m.HcmUpgradeConfig | m.RouteUpgradeConfig], path: str, route: bool
) -> None:
    """The connection manager's or a route's `upgrade_configs`: one entry per type (any case,
    as the types are matched), no CONNECT, no per-upgrade filters."""
    seen: dict[str, int] = {}
    for i, u in enumerate(configs):
        upath = f"{path}[{i}]"
        if route and not u.upgrade_type:
            raise ConfigError(f"{upath}.upgrade_type", "must not be empty")
        _check_no_line_breaks(u.upgrade_type, f"{upath}.upgrade_type")
        kind = u.upgrade_type.lower()
        if kind == "connect":
            raise ConfigError(f"{upath}.upgrade_type", "CONNECT is not supported yet")
        if kind in seen:
            raise ConfigError(
                f"{upath}.upgrade_type",
                f"{u.upgrade_type!r} is already configured at {path}[{seen[kind]}]",
            )
        seen[kind] = i
        if isinstance(u, m.HcmUpgradeConfig) and u.filters:
            raise ConfigError(
                f"{upath}.filters",
                "per-upgrade filter chains are not supported; leave filters out to use the "
                "connection manager's own",
            )
        if isinstance(u, m.RouteUpgradeConfig) and u.connect_config is not None:
            raise ConfigError(f"{upath}.connect_config", "CONNECT is not supported yet")


# --- routes -----------------------------------------------------------------------------------


def _check_route_config(rc: m.RouteConfiguration, path: str, clusters: set[str]) -> None:
    if rc.validate_clusters is False:
        raise ConfigError(
            f"{path}.validate_clusters",
            "false is not supported; every cluster a route names must exist",
        )
    max_body = rc.max_direct_response_body_size_bytes
    if max_body is None:
        max_body = DEFAULT_MAX_DIRECT_BODY
    _check_mutations(rc, path)
    seen: dict[str, int] = {}
    for v, vhost in enumerate(rc.virtual_hosts):
        vpath = f"{path}.virtual_hosts[{v}]"
        if not vhost.name:
            raise ConfigError(f"{vpath}.name", "must not be empty")
        if not vhost.domains:
            raise ConfigError(f"{vpath}.domains", "must have at least one domain")
        if vhost.require_tls == "EXTERNAL_ONLY":
            raise ConfigError(
                f"{vpath}.require_tls",
                "EXTERNAL_ONLY is not supported yet (pyproxy does not tell internal requests apart); "
                "use ALL or NONE",
            )
        for d, domain in enumerate(vhost.domains):
            dpath = f"{vpath}.domains[{d}]"
            _check_domain(domain, dpath)
            key = domain.lower()
            if key in seen:
                raise ConfigError(
                    dpath,
                    f"duplicate domain {domain!r} (also in {path}.virtual_hosts[{seen[key]}]); "
                    "like Envoy, each domain may appear once per route configuration",
                )
            seen[key] = v
        _check_mutations(vhost, vpath)
        if vhost.retry_policy is not None:
            check_retry_policy(vhost.retry_policy, f"{vpath}.retry_policy")
        for r, route in enumerate(vhost.routes):
            _check_route(route, f"{vpath}.routes[{r}]", clusters, max_body)


def _check_domain(domain: str, path: str) -> None:
    if not domain:
        raise ConfigError(path, "must not be empty")
    if domain == "*":
        return
    stars = domain.count("*")
    if stars == 0:
        return
    if stars == 1 and (domain.startswith("*") or domain.endswith("*")):
        return
    raise ConfigError(
        path,
        f"{domain!r} is not supported; a domain is exact ('example.com'), a suffix wildcard "
        "('*.example.com'), a prefix wildcard ('example.*') or '*' (Envoy would treat this one "
        "as an exact name that no Host header can match)",
    )


DEFAULT_MAX_DIRECT_BODY = 4096


def data_source_text(ds: m.DataSource, path: str) -> str:
    """A DataSource's contents as text (a direct response's body): read from the file or the
    environment now, when the config is loaded, as Envoy does."""
    import base64
    import binascii
    import os

    given = [n for n in ("inline_string", "inline_bytes", "filename", "environment_variable")
             if getattr(ds, n) is not None]
    if len(given) != 1:
        raise ConfigError(path, "needs exactly one of inline_string, inline_bytes, filename, environment_variable")
    if ds.inline_string is not None:
        return ds.inline_string
    if ds.inline_bytes is not None:
        try:
            raw = base64.b64decode(ds.inline_bytes, validate=True)
        except binascii.Error:
            raise ConfigError(f"{path}.inline_bytes", "is not base64") from None
        where = f"{path}.inline_bytes"
    elif ds.filename is not None:
        try:
            with open(ds.filename, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{path}.filename", f"file {ds.filename} does not exist") from None
        except OSError as e:
            raise ConfigError(f"{path}.filename", f"cannot read {ds.filename}: {e.strerror}") from None
        where = f"{path}.filename"
    else:
        assert ds.environment_variable is not None
        value = os.environ.get(ds.environment_variable)
        if value is None:
            raise ConfigError(
                f"{path}.environment_variable",
                f"environment variable {ds.environment_variable!r} does not exist",
            )
        return value
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(where, "pyproxy takes text bodies only (UTF-8)") from None


def _check_route(route: m.Route, path: str, clusters: set[str], max_body: int = DEFAULT_MAX_DIRECT_BODY) -> None:
    _check_route_match(route.match, f"{path}.match")
    actions = [
        n for n in ("route", "redirect", "direct_response") if getattr(route, n) is not None
    ]
    if len(actions) != 1:
        raise ConfigError(
            path,
            "needs exactly one action of route, redirect, direct_response"
            + (f"; got {', '.join(actions)}" if actions else ""),
        )
    if route.route is not None:
        _check_forward(route.route, f"{path}.route", clusters)
    elif route.redirect is not None:
        _check_redirect(route.redirect, f"{path}.redirect")
    elif route.direct_response is not None:
        status = route.direct_response.status
        if not 200 <= status <= 599:
            raise ConfigError(
                f"{path}.direct_response.status", f"{status} is out of range; expected 200..599"
            )
        if route.direct_response.body is not None:
            bpath = f"{path}.direct_response.body"
            size = len(data_source_text(route.direct_response.body, bpath).encode())
            if size > max_body:
                raise ConfigError(
                    bpath,
                    f"response body size is {size} bytes; maximum is {max_body} "
                    "(the route configuration's max_direct_response_body_size_bytes)",
                )
    _check_mutations(route, path)


def _check_route_match(match: m.RouteMatch, path: str) -> None:
    specs = [n for n in ("prefix", "path", "safe_regex") if getattr(match, n) is not None]
    if len(specs) != 1:
        raise ConfigError(
            path,
            "needs exactly one path specifier of prefix, path, safe_regex"
            + (f"; got {', '.join(specs)}" if specs else ""),
        )
    if match.safe_regex is not None:
        check_regex(match.safe_regex.regex, f"{path}.safe_regex.regex")
    for h, hm in enumerate(match.headers):
        _check_header_matcher(hm, f"{path}.headers[{h}]")
    for q, qm in enumerate(match.query_parameters):
        qpath = f"{path}.query_parameters[{q}]"
        if not qm.name:
            raise ConfigError(f"{qpath}.name", "must not be empty")
        if qm.string_match is not None and qm.present_match is not None:
            raise ConfigError(qpath, "set only one of string_match, present_match")
        if qm.string_match is not None:
            _check_string_match(qm.string_match, f"{qpath}.string_match")


_LEGACY_HEADER_SPECIFIERS = (
    "exact_match",
    "prefix_match",
    "suffix_match",
    "contains_match",
    "safe_regex_match",
    "present_match",
)


def _check_header_matcher(hm: m.HeaderMatcher, path: str) -> None:
    if not hm.name:
        raise ConfigError(f"{path}.name", "must not be empty")
    specs = [n for n in ("string_match", *_LEGACY_HEADER_SPECIFIERS) if getattr(hm, n) is not None]
    if len(specs) > 1:
        raise ConfigError(path, f"set only one header match specifier; got {', '.join(specs)}")
    if hm.string_match is not None:
        _check_string_match(hm.string_match, f"{path}.string_match")
    for legacy in ("prefix_match", "suffix_match", "contains_match"):
        if getattr(hm, legacy) == "":
            raise ConfigError(f"{path}.{legacy}", "must not be empty (Envoy: at least 1 character)")
    if hm.safe_regex_match is not None:
        check_regex(hm.safe_regex_match.regex, f"{path}.safe_regex_match.regex")


def _check_string_match(sm: m.StringMatcher, path: str) -> None:
    tests = [n for n in ("exact", "prefix", "suffix", "contains", "safe_regex")
             if getattr(sm, n) is not None]
    if len(tests) != 1:
        raise ConfigError(
            path,
            "needs exactly one of exact, prefix, suffix, contains, safe_regex"
            + (f"; got {', '.join(tests)}" if tests else ""),
        )
    for test in ("prefix", "suffix", "contains"):
        if getattr(sm, test) == "":
            raise ConfigError(f"{path}.{test}", "must not be empty (Envoy: at least 1 character)")
    if sm.safe_regex is not None:
        check_regex(sm.safe_regex.regex, f"{path}.safe_regex.regex")
        if sm.ignore_case:
            raise ConfigError(f"{path}.ignore_case", "has no effect for safe_regex; leave it out")


def _check_no_line_breaks(value: str | None, path: str) -> None:
    """Envoy's HTTP_HEADER_VALUE rule for strings that go out in a header or the request line:
    a CR, LF or NUL would let the config write extra header lines."""
    if value is not None and any(c in value for c in "\r\n\0"):
        raise ConfigError(path, "must not contain CR, LF or NUL")


def _check_forward(action: m.RouteAction, path: str, clusters: set[str]) -> None:
    given = [n for n in ("cluster", "weighted_clusters", "cluster_header") if getattr(action, n) is not None]
    if len(given) != 1:
        raise ConfigError(path, "needs exactly one of cluster, weighted_clusters, cluster_header")
    if action.cluster_header is not None:
        _check_header_name(action.cluster_header, f"{path}.cluster_header")
    if action.host_rewrite_literal is not None and action.auto_host_rewrite is not None:
        raise ConfigError(path, "set only one of host_rewrite_literal, auto_host_rewrite")
    _check_no_line_breaks(action.prefix_rewrite, f"{path}.prefix_rewrite")
    if action.regex_rewrite is not None:
        if action.prefix_rewrite:
            raise ConfigError(path, "specify only one of prefix_rewrite, regex_rewrite (as Envoy requires)")
        check_regex(action.regex_rewrite.pattern.regex, f"{path}.regex_rewrite.pattern.regex")
        _check_no_line_breaks(action.regex_rewrite.substitution, f"{path}.regex_rewrite.substitution")
    _check_no_line_breaks(action.host_rewrite_literal, f"{path}.host_rewrite_literal")
    _check_upgrade_configs(action.upgrade_configs, f"{path}.upgrade_configs", route=True)
    _check_hash_policy(action.hash_policy, f"{path}.hash_policy")
    if (msd := action.max_stream_duration) is not None:
        for name in ("grpc_timeout_header_max", "grpc_timeout_header_offset"):
            if getattr(msd, name) is not None:
                raise ConfigError(
                    f"{path}.max_stream_duration.{name}",
                    "a duration from the grpc-timeout header is not supported yet",
                )
    if action.retry_policy is not None:
        check_retry_policy(action.retry_policy, f"{path}.retry_policy")
    if action.cluster_header is not None:
        return
    if action.cluster is not None:
        if action.cluster not in clusters:
            raise ConfigError(f"{path}.cluster", f"unknown cluster {action.cluster!r}")
        return
    wc = action.weighted_clusters
    assert wc is not None
    wpath = f"{path}.weighted_clusters"
    if not wc.clusters:
        raise ConfigError(f"{wpath}.clusters", "must have at least one cluster")
    for c, cw in enumerate(wc.clusters):
        if cw.name not in clusters:
            raise ConfigError(f"{wpath}.clusters[{c}].name", f"unknown cluster {cw.name!r}")
        _check_mutations(cw, f"{wpath}.clusters[{c}]")
    total = sum(cw.weight for cw in wc.clusters)
    if total == 0:
        raise ConfigError(f"{wpath}.clusters", "the sum of the weights must be greater than 0")
    if total > 2**32 - 1:
        raise ConfigError(f"{wpath}.clusters", f"the sum of the weights ({total}) exceeds 2^32-1")
    if wc.total_weight is not None and wc.total_weight != total:
        raise ConfigError(
            f"{wpath}.total_weight",
            f"{wc.total_weight} is not the sum of the weights ({total}); total_weight is "
            "deprecated in Envoy: leave it out",
        )


# Envoy's `retry_on` conditions: those taken, and those it knows that never apply here.
RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "envoy-ratelimited", "retriable-4xx", "retriable-status-codes", "retriable-headers",
    # gRPC conditions read a `grpc-status` in the response head.
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    # HTTP/2 and HTTP/3 upstream conditions: never met over HTTP/1.1 upstreams.
    "refused-stream", "http3-post-connect-failure",
})
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)


def retry_on_tokens(retry_on: str) -> list[str]:
    """`retry_on`'s conditions, as Envoy splits them: on `,`, blanks trimmed, empties dropped."""
    return [t.strip() for t in retry_on.split(",") if t.strip()]


def check_retry_policy(rp: m.RetryPolicy, path: str) -> None:
    """Refuses what pyproxy does not do yet, and (unlike Envoy, which ignores them) a `retry_on`
    condition it does not know: a misspelt one would silently retry nothing."""
    for name in ("retry_priority", "rate_limited_retry_back_off"):
        if getattr(rp, name) is not None:
            raise ConfigError(f"{path}.{name}", "is not supported yet")
    if rp.retry_options_predicates:
        raise ConfigError(f"{path}.retry_options_predicates", "is not supported yet")
    for name in ("retriable_headers", "retriable_request_headers"):
        for i, hm in enumerate(getattr(rp, name)):
            _check_header_matcher(hm, f"{path}.{name}[{i}]")
    for token in retry_on_tokens(rp.retry_on):
        if token not in RETRY_ON:
            raise ConfigError(
                f"{path}.retry_on",
                f"unknown retry condition {token!r}; expected a comma-separated list of "
                + ", ".join(sorted(RETRY_ON)),
            )
    for c, code in enumerate(rp.retriable_status_codes):
        if not 100 <= code <= 599:
            raise ConfigError(
                f"{path}.retriable_status_codes[{c}]", f"{code} is not an HTTP status (100..599)"
            )
    for p, pred in enumerate(rp.retry_host_predicate):
        # Envoy finds the extension by its typed_config's type (a name alone is refused).
        kind = (pred.typed_config or {}).get("@type")
        if kind != PREVIOUS_HOSTS_TYPE:
            raise ConfigError(
                f"{path}.retry_host_predicate[{p}]",
                f"only {PREVIOUS_HOSTS} is supported, with typed_config "
                f"{{'@type': {PREVIOUS_HOSTS_TYPE!r}}}",
            )
    bo = rp.retry_back_off
    if bo is not None:
        bpath = f"{path}.retry_back_off"
        if bo.base_interval.is_zero():
            raise ConfigError(f"{bpath}.base_interval", "must be greater than 0s")
        if bo.max_interval is not None:
            if bo.max_interval.is_zero():
                raise ConfigError(f"{bpath}.max_interval", "must be greater than 0s")
            if bo.max_interval.ms < bo.base_interval.ms:
                raise ConfigError(
                    f"{bpath}.max_interval",
                    "must be greater than or equal to the base_interval "
                    f"({bo.max_interval.to_json()} < {bo.base_interval.to_json()})",
                )


def _check_redirect(r: m.RedirectAction, path: str) -> None:
    if r.https_redirect is not None and r.scheme_redirect is not None:
        raise ConfigError(path, "set only one of https_redirect, scheme_redirect")
    if r.path_redirect is not None and r.prefix_rewrite is not None:
        raise ConfigError(path, "set only one of path_redirect, prefix_rewrite")
    for name in ("host_redirect", "path_redirect", "prefix_rewrite"):
        _check_no_line_breaks(getattr(r, name), f"{path}.{name}")
    # An empty scheme_redirect is proto3's default: unset, as in Envoy.
    if r.scheme_redirect and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*",
                                                          r.scheme_redirect):
        raise ConfigError(f"{path}.scheme_redirect", f"{r.scheme_redirect!r} is not a URI scheme")


# --- header mutations -------------------------------------------------------------------------


def _check_mutations(
    obj: m.RouteConfiguration | m.VirtualHost | m.Route | m.ClusterWeight, path: str
) -> None:
    for field in ("request_headers_to_add", "response_headers_to_add"):
        for i, hvo in enumerate(getattr(obj, field)):
            _check_header_value_option(hvo, f"{path}.{field}[{i}]")
    for field in ("request_headers_to_remove", "response_headers_to_remove"):
        for i, name in enumerate(getattr(obj, field)):
            hpath = f"{path}.{field}[{i}]"
            _check_header_name(name, hpath)
            if name.startswith(":") or name.lower() == "host":
                raise ConfigError(
                    hpath, f"{name!r}: ':'-prefixed or host headers may not be removed"
                )


def _check_header_value_option(hvo: m.HeaderValueOption, path: str) -> None:
    key = hvo.header.key
    _check_header_name(key, f"{path}.header.key")
    if key.startswith(":") or key.lower() == "host":  # Envoy refuses these in both directions
        raise ConfigError(
            f"{path}.header.key", f"{key!r}: ':'-prefixed or host headers may not be modified"
        )
    if key.lower() in ("content-length", "transfer-encoding"):
        raise ConfigError(
            f"{path}.header.key",
            f"{key!r} frames the body and is the proxy's to write; it may not be added",
        )
    _check_no_line_breaks(hvo.header.value, f"{path}.header.value")
    if hvo.append is not None and hvo.append_action is not None:
        raise ConfigError(path, "set only one of append (deprecated), append_action")


def _check_header_name(name: str, path: str) -> None:
    if not name:
        raise ConfigError(path, "must not be empty")
    bare = name[1:] if name.startswith(":") else name
    if not _HEADER_NAME.fullmatch(bare):
        raise ConfigError(path, f"{name!r} is not a valid header name")


# --- clusters ---------------------------------------------------------------------------------


# Each LEAST_REQUEST pick draws choice_count random hosts, as Envoy's does: a larger count only
# costs time on every request (Envoy accepts any; pyproxy refuses what would stall a worker).
MAX_CHOICE_COUNT = 1000


def _check_clusters(clusters: Sequence[m.Cluster]) -> set[str]:
    names: dict[str, int] = {}
    for i, cluster in enumerate(clusters):
        path = f"static_resources.clusters[{i}]"
        if not cluster.name:
            raise ConfigError(f"{path}.name", "must not be empty")
        if cluster.name in names:
            raise ConfigError(
                f"{path}.name",
                f"duplicate cluster {cluster.name!r} (also static_resources.clusters"
                f"[{names[cluster.name]}])",
            )
        names[cluster.name] = i
        if cluster.connect_timeout is not None and cluster.connect_timeout.is_zero():
            raise ConfigError(f"{path}.connect_timeout", "must be greater than 0s")
        if cluster.dns_refresh_rate is not None and cluster.dns_refresh_rate.ms <= 1:
            raise ConfigError(f"{path}.dns_refresh_rate", "must be greater than 1ms")
        _check_ring_hash(cluster, path)
        lr = cluster.least_request_lb_config
        if lr is not None and lr.choice_count is not None and not 2 <= lr.choice_count <= MAX_CHOICE_COUNT:
            raise ConfigError(
                f"{path}.least_request_lb_config.choice_count",
                f"{lr.choice_count} is out of range; expected 2 to {MAX_CHOICE_COUNT} (each pick "
                "draws that many hosts)",
            )
        teo = cluster.typed_extension_protocol_options
        hpo = teo.http if teo is not None else None
        if (
            hpo is not None
            and hpo.common_http_protocol_options is not None
            and hpo.common_http_protocol_options.max_requests_per_connection is not None
            and cluster.max_requests_per_connection is not None
        ):
            raise ConfigError(
                f"{path}.max_requests_per_connection",
                "set only one of max_requests_per_connection here and in "
                "typed_extension_protocol_options (HttpProtocolOptions."
                "common_http_protocol_options), as Envoy requires",
            )
        if hpo is not None and hpo.common_http_protocol_options is not None:
            _check_max_headers_count(
                hpo.common_http_protocol_options.max_headers_count,
                f"{path}.typed_extension_protocol_options"
                f'["{m.HTTP_PROTOCOL_OPTIONS_KEY}"].common_http_protocol_options',
            )
        if cluster.load_assignment is not None:
            _check_load_assignment(cluster, f"{path}.load_assignment")
        if cluster.circuit_breakers is not None:
            _check_circuit_breakers(cluster.circuit_breakers, f"{path}.circuit_breakers")
        if len(cluster.health_checks) > 1:
            raise ConfigError(
                f"{path}.health_checks", "only one health check per cluster is supported"
            )
        for j, hc in enumerate(cluster.health_checks):
            _check_health_check(hc, f"{path}.health_checks[{j}]")
        if cluster.outlier_detection is not None:
            _check_outlier(cluster.outlier_detection, f"{path}.outlier_detection")
    return set(names)


# `OutlierDetection` fields that are percentages (Envoy: `lte: 100`).
_OUTLIER_PERCENTS = (
    "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
    "enforcing_consecutive_gateway_failure", "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate", "failure_percentage_threshold",
    "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
)  # fmt: skip


def _check_outlier(o: m.OutlierDetection, path: str) -> None:
    if o.monitors:
        raise ConfigError(f"{path}.monitors", "custom outlier detection monitors are not supported")
    for field in ("interval", "base_ejection_time", "max_ejection_time"):
        d = getattr(o, field)
        if d is not None and d.is_zero():
            raise ConfigError(f"{path}.{field}", "must be greater than 0s")
    for field in _OUTLIER_PERCENTS:
        v = getattr(o, field)
        if v is not None and v > 100:
            raise ConfigError(f"{path}.{field}", f"{v} is over 100 (a percentage)")
    base = o.base_ejection_time.ms if o.base_ejection_time is not None else 30_000
    if o.max_ejection_time is not None and o.max_ejection_time.ms < base:
        raise ConfigError(
            f"{path}.max_ejection_time",
            f"{o.max_ejection_time.ms}ms is less than base_ejection_time ({base}ms); Envoy "
            "refuses a cap below the base",
        )
    if o.detect_degraded_hosts:
        raise ConfigError(
            f"{path}.detect_degraded_hosts",
            "marking hosts degraded by outlier detection is not supported yet",
        )


# What each refused `HealthCheck` field would need.
_HC_REFUSED = {
    "grpc_health_check": "gRPC health checks are not supported yet; use http_health_check or "
    "tcp_health_check",
    "custom_health_check": "custom health checkers are not supported",
    "event_log_path": "health check event logs are not supported yet",
    "event_logger": "health check event logs are not supported yet",
    "tls_options": "TLS is not supported yet",
    "transport_socket_match_criteria": "TLS is not supported yet",
    "alt_port": "is deprecated in Envoy and not supported; checks go to the host's own port",
}


def _check_health_check(hc: m.HealthCheck, path: str) -> None:
    if hc.name:
        raise ConfigError(
            f"{path}.name",
            "named health checks are not supported yet (Envoy moves their stats to "
            "health_check.name.<name>.*); leave the name out",
        )
    for field, why in _HC_REFUSED.items():
        if getattr(hc, field) not in (None, []):
            raise ConfigError(f"{path}.{field}", why)
    for field in ("timeout", "interval"):
        d = getattr(hc, field)
        if d is None:
            raise ConfigError(f"{path}.{field}", "is required")
        if d.is_zero():
            raise ConfigError(f"{path}.{field}", "must be greater than 0s")
    for field in ("unhealthy_threshold", "healthy_threshold"):
        if getattr(hc, field) is None:
            raise ConfigError(f"{path}.{field}", "is required")
    for field in ("no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval",
                  "unhealthy_edge_interval", "healthy_edge_interval"):  # fmt: skip
        d = getattr(hc, field)
        if d is not None and d.is_zero():
            raise ConfigError(f"{path}.{field}", "must be greater than 0s")
    checkers = [f for f in ("http_health_check", "tcp_health_check") if getattr(hc, f) is not None]
    if not checkers:
        raise ConfigError(
            path, "needs a checker: http_health_check or tcp_health_check (one of them)"
        )
    if len(checkers) > 1:
        raise ConfigError(f"{path}.{checkers[1]}", f"only one checker may be set ({checkers[0]} is)")
    if hc.http_health_check is not None:
        _check_http_health_check(hc.http_health_check, f"{path}.http_health_check")
    if hc.tcp_health_check is not None:
        t = hc.tcp_health_check
        tpath = f"{path}.tcp_health_check"
        if t.proxy_protocol_config is not None:
            raise ConfigError(f"{tpath}.proxy_protocol_config", "PROXY protocol is not supported")
        if t.send is not None:
            payload_bytes(t.send, f"{tpath}.send")
        for k, r in enumerate(t.receive):
            payload_bytes(r, f"{tpath}.receive[{k}]")


def _check_http_health_check(h: m.HttpHealthCheck, path: str) -> None:
    if not h.path:
        raise ConfigError(f"{path}.path", "is required (the path the check asks for)")
    if not h.path.startswith("/") or any(c <= " " or c == "\x7f" for c in h.path):
        raise ConfigError(f"{path}.path", f"{h.path!r} is not a valid request path")
    if any(c <= " " or c in "\x7f/" for c in h.host):
        raise ConfigError(f"{path}.host", f"{h.host!r} is not a valid host")
    if h.method not in ("METHOD_UNSPECIFIED", "GET", "HEAD"):
        why = "is not allowed" if h.method == "CONNECT" else "is not supported yet"
        raise ConfigError(f"{path}.method", f"{h.method} {why}; use GET or HEAD")
    if h.codec_client_type != "HTTP1":
        raise ConfigError(
            f"{path}.codec_client_type", f"{h.codec_client_type} is not supported yet; use HTTP1"
        )
    if h.send is not None:
        raise ConfigError(f"{path}.send", "a request body for HTTP checks is not supported yet")
    if h.receive:
        raise ConfigError(f"{path}.receive", "matching the response body is not supported yet")
    if h.service_name_matcher is not None:
        raise ConfigError(f"{path}.service_name_matcher", "is not supported yet")
    for field in ("expected_statuses", "retriable_statuses"):
        for k, r in enumerate(getattr(h, field)):
            rpath = f"{path}.{field}[{k}]"
            if not 100 <= r.start < 600:
                raise ConfigError(f"{rpath}.start", f"{r.start} is not a status code (100 to 599)")
            if not 100 < r.end <= 600:
                raise ConfigError(f"{rpath}.end", f"{r.end} is out of range (101 to 600)")
            if r.start >= r.end:
                raise ConfigError(rpath, f"start ({r.start}) must be below end ({r.end})")
    for k, opt in enumerate(h.request_headers_to_add):
        hpath = f"{path}.request_headers_to_add[{k}]"
        _check_header_value_option(opt, hpath)
        if "%" in opt.header.value:
            raise ConfigError(
                f"{hpath}.header.value",
                "command operators (%...%) in health check headers are not supported yet",
            )
    for k, name in enumerate(h.request_headers_to_remove):
        rpath = f"{path}.request_headers_to_remove[{k}]"
        _check_header_name(name, rpath)
        if name.lower() == "host" or name.startswith(":"):
            raise ConfigError(rpath, ":-prefixed or host headers may not be removed")


def payload_bytes(p: m.HealthCheckPayload, path: str) -> bytes:
    """A health check payload's bytes (`text` is hex, `binary` base64)."""
    if (p.text is None) == (p.binary is None):
        raise ConfigError(path, "needs exactly one of text (hex) or binary (base64)")
    if p.text is not None:
        try:
            data = bytes.fromhex(p.text)
        except ValueError:
            raise ConfigError(f"{path}.text", f"{p.text!r} is not hex") from None
    else:
        try:
            data = base64.b64decode(p.binary or "", validate=True)
        except ValueError:
            raise ConfigError(f"{path}.binary", "is not base64") from None
    if not data:
        raise ConfigError(path, "must not be empty")
    return data


def _check_circuit_breakers(cb: m.CircuitBreakers, path: str) -> None:
    if cb.per_host_thresholds:
        raise ConfigError(
            f"{path}.per_host_thresholds",
            "per-host circuit breakers are not supported yet; thresholds apply to the cluster",
        )
    for i, t in enumerate(cb.thresholds):
        tpath = f"{path}.thresholds[{i}]"
        if t.retry_budget is not None:
            raise ConfigError(f"{tpath}.retry_budget", "retries are not supported yet")
        if t.max_connection_pools is not None:
            raise ConfigError(
                f"{tpath}.max_connection_pools",
                "is not supported; each host has one connection pool per worker",
            )


def _check_max_headers_count(count: int | None, path: str) -> None:
    """Envoy's `max_headers_count` is at least 1 (a request or response has at least one)."""
    if count is not None and count < 1:
        raise ConfigError(f"{path}.max_headers_count", f"{count} is out of range; expected at least 1")


def _check_load_assignment(cluster: m.Cluster, path: str) -> None:
    la = cluster.load_assignment
    assert la is not None
    if not la.cluster_name:
        raise ConfigError(f"{path}.cluster_name", "must not be empty")
    for e, locality in enumerate(la.endpoints):
        for b, lbe in enumerate(locality.lb_endpoints):
            bpath = f"{path}.endpoints[{e}].lb_endpoints[{b}]"
            if lbe.load_balancing_weight is not None and lbe.load_balancing_weight < 1:
                raise ConfigError(
                    f"{bpath}.load_balancing_weight",
                    f"{lbe.load_balancing_weight} is out of range; expected at least 1",
                )
            sa = lbe.endpoint.address.socket_address
            apath = f"{bpath}.endpoint.address.socket_address.address"
            if cluster.type == "STATIC":
                if not _is_ip(sa.address):
                    raise ConfigError(
                        apath,
                        f"{sa.address!r} is not an IP address; a STATIC cluster needs IP "
                        "literals (use type: STRICT_DNS for host names)",
                    )
            elif not sa.address:
                raise ConfigError(apath, "must not be empty")


# --- shared -----------------------------------------------------------------------------------


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_ip(address: m.Address, path: str) -> m.SocketAddress:
    sa = address.socket_address
    if not _is_ip(sa.address):
        raise ConfigError(
            f"{path}.socket_address.address",
            f"{sa.address!r} is not an IP address; listeners bind IP literals "
            "(0.0.0.0, 127.0.0.1, ::)",
        )
    return sa


def check_regex(regex: str, path: str) -> None:
    """A first check of RE2 syntax with Python's `re`: the engine compiles the regex again
    (Rust `regex`, RE2 syntax) and has the last word."""
    bad = _NOT_RE2.search(regex)
    if bad:
        raise ConfigError(
            path,
            f"{regex!r} uses {bad.group(0)!r}, which RE2 does not support (no look-around, "
            "back-references, atomic groups or conditionals)",
        )
    # Python spells RE2's end-of-text `\z` as `\Z` and has no Unicode classes (`\pL`);
    # stand-ins keep those valid RE2 forms from failing the Python check.
    probe = _UNICODE_CLASS.sub(".", regex.replace(r"\z", r"\Z"))
    try:
        re.compile(probe)
    except re.error as e:
        raise ConfigError(path, f"{regex!r} is not a valid regex: {e}") from None


# --- overload manager -------------------------------------------------------------------------

# Envoy's overload actions pyproxy takes, by name.
OVERLOAD_ACTIONS = {
    "envoy.overload_actions.stop_accepting_requests": "stop_accepting_requests",
    "envoy.overload_actions.disable_http_keepalive": "disable_http_keepalive",
    "envoy.overload_actions.stop_accepting_connections": "stop_accepting_connections",
    "envoy.overload_actions.reject_incoming_connections": "reject_incoming_connections",
    "envoy.overload_actions.shrink_heap": "shrink_heap",
    "envoy.overload_actions.reduce_timeouts": "reduce_timeouts",
}
GLOBAL_CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
_OVERLOAD_REFUSED = {
    "envoy.overload_actions.reset_high_memory_stream": "resetting streams by buffer memory is not "
    "supported yet (it needs buffer_factory_config)",
}


def _check_overload(o: m.OverloadManager, path: str) -> None:
    if o.loadshed_points:
        raise ConfigError(f"{path}.loadshed_points", "load shed points are not supported yet")
    if o.buffer_factory_config:
        raise ConfigError(f"{path}.buffer_factory_config", "buffer memory accounting is not supported yet")
    monitors: dict[str, int] = {}
    global_at: int | None = None
    for i, mon in enumerate(o.resource_monitors):
        mpath = f"{path}.resource_monitors[{i}]"
        if mon.name in monitors:
            raise ConfigError(
                f"{mpath}.name",
                f"duplicate resource monitor {mon.name!r} (also {path}.resource_monitors[{monitors[mon.name]}])",
            )
        monitors[mon.name] = i
        tc = mon.typed_config
        if isinstance(tc, m.FixedHeapConfig) and tc.max_heap_size_bytes == 0:
            raise ConfigError(f"{mpath}.typed_config.max_heap_size_bytes", "must be greater than 0")
        if isinstance(tc, m.DownstreamConnectionsConfig):
            if mon.name != GLOBAL_CONNECTIONS_MONITOR:
                raise ConfigError(
                    f"{mpath}.name",
                    f"the global connection limit must be named {GLOBAL_CONNECTIONS_MONITOR!r}, as Envoy "
                    f"requires (not {mon.name!r})",
                )
            if global_at is not None:
                raise ConfigError(
                    f"{mpath}.typed_config",
                    f"a second global connection limit (also {path}.resource_monitors[{global_at}])",
                )
            global_at = i
    actions: dict[str, int] = {}
    for i, a in enumerate(o.actions):
        apath = f"{path}.actions[{i}]"
        if a.name in _OVERLOAD_REFUSED:
            raise ConfigError(f"{apath}.name", f"{a.name}: {_OVERLOAD_REFUSED[a.name]}")
        if a.name not in OVERLOAD_ACTIONS:
            raise ConfigError(
                f"{apath}.name",
                f"unknown overload action {a.name!r}; supported: {', '.join(OVERLOAD_ACTIONS)}",
            )
        if a.name in actions:
            raise ConfigError(
                f"{apath}.name", f"duplicate overload action {a.name!r} (also {path}.actions[{actions[a.name]}])"
            )
        actions[a.name] = i
        if a.name == "envoy.overload_actions.reduce_timeouts":
            _check_scale_timers(a.typed_config, f"{apath}.typed_config")
        elif a.typed_config is not None:
            raise ConfigError(f"{apath}.typed_config", f"{a.name} takes no typed_config")
        seen: set[str] = set()
        for j, t in enumerate(a.triggers):
            tpath = f"{apath}.triggers[{j}]"
            if t.name not in monitors:
                raise ConfigError(
                    f"{tpath}.name", f"unknown resource monitor {t.name!r}; configured: {', '.join(monitors)}"
                )
            if t.name in seen:
                raise ConfigError(f"{tpath}.name", f"a second trigger on resource monitor {t.name!r}")
            seen.add(t.name)
            if (t.threshold is None) == (t.scaled is None):
                raise ConfigError(tpath, "exactly one of threshold and scaled is required")
            if t.scaled is not None and t.scaled.scaling_threshold >= t.scaled.saturation_threshold:
                raise ConfigError(
                    f"{tpath}.scaled",
                    f"scaling_threshold ({t.scaled.scaling_threshold}) must be less than "
                    f"saturation_threshold ({t.scaled.saturation_threshold})",
                )


_SCALED_TIMERS_REFUSED = {
    "TRANSPORT_SOCKET_CONNECT": "TLS is not supported yet, so there is no transport socket timer to scale",
    "HTTP_DOWNSTREAM_CONNECTION_MAX": "scaling max_connection_duration is not supported yet",
}


def _check_scale_timers(tc: m.ScaleTimersOverloadActionConfig | None, path: str) -> None:
    if tc is None:
        raise ConfigError(path, "envoy.overload_actions.reduce_timeouts requires typed_config "
                          "(a ScaleTimersOverloadActionConfig)")
    seen: dict[str, int] = {}
    for i, t in enumerate(tc.timer_scale_factors):
        tpath = f"{path}.timer_scale_factors[{i}]"
        if t.timer in _SCALED_TIMERS_REFUSED:
            raise ConfigError(f"{tpath}.timer", f"{t.timer}: {_SCALED_TIMERS_REFUSED[t.timer]}")
        if t.timer in seen:
            raise ConfigError(
                f"{tpath}.timer", f"duplicate timer {t.timer} (also {path}.timer_scale_factors[{seen[t.timer]}])"
            )
        seen[t.timer] = i
        if (t.min_timeout is None) == (t.min_scale is None):
            raise ConfigError(tpath, "exactly one of min_timeout and min_scale is required")
