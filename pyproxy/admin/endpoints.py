"""The admin endpoints: one declarative table (`ENDPOINTS`, at the bottom) of path, help,
handler, and whether the endpoint mutates state; `/help`, `/` and the 404 body are generated
from it, and `dispatch` refuses anything but POST on a mutating endpoint, as Envoy 1.40 does.

Handlers are coroutines on the admin loop. Anything that may block (every engine call, draining)
runs in the loop's default executor; the native calls release the GIL, so the admin loop stays
responsive while the engine renders thousands of stats in one call.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pyproxy.admin import formats
from pyproxy.errors import ConfigError

if TYPE_CHECKING:
    from pyproxy.proxy import Proxy


TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"
#: Envoy answers /config_dump's own errors with this bare content type (no charset).
PLAIN = "text/plain"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    #: Query parameters, URL-decoded, in order; a bare `?usedonly` has the value "".
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: str
    content_type: str = TEXT
    #: Runs on the admin loop once the response has been written (e.g. /quitquitquit's exit).
    after: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    help: str


class Context:
    """What a handler sees: the proxy, and a way to run blocking calls off the admin loop."""

    def __init__(self, proxy: Proxy, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self._loop = loop

    def blocking(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return self._loop.run_in_executor(None, fn, *args)

    def server_state(self) -> str:
        # Envoy reports DRAINING while health checks are failed, whatever the init state.
        return "DRAINING" if self.proxy.healthcheck_failed else self.proxy.state


Handler = Callable[[Context, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    help: str
    handler: Handler
    mutates_state: bool
    params: tuple[Param, ...] = field(default=())


def ok() -> Response:
    return Response(200, "OK\n")


def text_json(message: Any, status: int = 200) -> Response:
    return Response(status, formats.proto_json(message), JSON)


# --- handlers ------------------------------------------------------------------------------------


async def home(ctx: Context, req: Request) -> Response:
    return Response(
        200,
        formats.home_page((e.path, e.help, e.mutates_state) for e in ENDPOINTS),
        HTML,
    )


async def help_(ctx: Context, req: Request) -> Response:
    return Response(200, help_text())


async def ready(ctx: Context, req: Request) -> Response:
    state = ctx.server_state()
    return Response(200 if state == "LIVE" else 503, state + "\n")


async def server_info(ctx: Context, req: Request) -> Response:
    proxy = ctx.proxy
    return text_json(
        formats.server_info(
            state=ctx.server_state(),
            uptime_s=time.time() - proxy.start_time,
            version=formats.pyproxy_version(),
            command_line=proxy.command_line,
            raw_config=proxy.raw_config,
        )
    )


async def hot_restart_version(ctx: Context, req: Request) -> Response:
    return Response(200, formats.HOT_RESTART_VERSION)


_STATS_FORMATS = {"text": TEXT, "json": JSON, "prometheus": TEXT}


async def _render_stats(ctx: Context, req: Request, fmt: str) -> Response:
    if req.params.get("type", "All") != "All":
        return Response(400, "type= is not supported by pyproxy; only type=All (the default)\n")
    if "invert_filter" in req.params:
        return Response(400, "invert_filter is not supported by pyproxy\n")
    regex = req.params.get("filter") or None
    try:
        body = await ctx.blocking(ctx.proxy.engine.stats, fmt, regex, "usedonly" in req.params)
    except ConfigError as err:
        return Response(400, f"Invalid re2 regex: {err.message}")
    return Response(200, body, _STATS_FORMATS[fmt])


async def stats(ctx: Context, req: Request) -> Response:
    fmt = req.params.get("format", "text") or "text"
    if fmt not in _STATS_FORMATS:
        return Response(400, "usage: /stats?format=(json|prometheus|text)\n\n")
    return await _render_stats(ctx, req, fmt)


async def stats_prometheus(ctx: Context, req: Request) -> Response:
    return await _render_stats(ctx, req, "prometheus")


async def reopen_logs(ctx: Context, req: Request) -> Response:
    # Envoy answers OK whether or not a file could be reopened; one that could not is counted
    # (filesystem.reopen_failed) and logged.
    await ctx.blocking(ctx.proxy.reopen_logs)
    return ok()


async def reset_counters(ctx: Context, req: Request) -> Response:
    await ctx.blocking(ctx.proxy.engine.reset_counters)
    return ok()


async def config_dump(ctx: Context, req: Request) -> Response:
    proxy = ctx.proxy
    configs = formats.config_dump_configs(
        proxy.raw_config,
        version=formats.pyproxy_version(),
        bootstrap_time=proxy.start_time,
        resources_time=proxy.last_updated,
        include_eds="include_eds" in req.params,
    )
    try:
        dump = formats.config_dump(
            configs,
            resource=req.params.get("resource") or None,
            mask=req.params.get("mask") or None,
            name_regex=req.params.get("name_regex"),
        )
    except formats.ConfigDumpError as err:
        return Response(err.status, err.message, PLAIN)
    return text_json(dump)


async def clusters(ctx: Context, req: Request) -> Response:
    try:
        wanted = re.compile(req.params.get("filter", ""))
    except re.error:
        return Response(400, "Invalid re2 regex")
    live = await ctx.blocking(ctx.proxy.engine.clusters)
    live = [c for c in live if wanted.search(str(c["name"]))]
    configs = formats.cluster_configs(ctx.proxy.raw_config)
    if req.params.get("format") == "json":
        return text_json(formats.clusters_json(live, configs))
    return Response(200, formats.clusters_text(live, configs))


async def listeners(ctx: Context, req: Request) -> Response:
    bound = await ctx.blocking(ctx.proxy.engine.listeners)
    if req.params.get("format") == "json":
        return text_json(formats.listeners_json(bound))
    return Response(200, formats.listeners_text(bound))


async def healthcheck_fail(ctx: Context, req: Request) -> Response:
    ctx.proxy.healthcheck_failed = True
    return ok()


async def healthcheck_ok(ctx: Context, req: Request) -> Response:
    ctx.proxy.healthcheck_failed = False
    return ok()


def _inbound(listener: dict[str, Any]) -> bool:
    return str(listener.get("traffic_direction", "")).upper() == "INBOUND"


async def drain_listeners(ctx: Context, req: Request) -> Response:
    # `graceful` keeps the listeners accepting for the drain time first; `skip_exit` drains
    # the connections and never stops the listeners (Envoy's help text).
    if "inboundonly" in req.params:
        configured = formats.static_resources(ctx.proxy.raw_config, "listeners")
        inbound = [x for x in configured if _inbound(x)]
        if not inbound:
            return ok()  # as Envoy: nothing is inbound, nothing drains
        if len(inbound) != len(configured):
            return Response(
                501,
                "inboundonly with both inbound and other listeners is not supported by pyproxy: "
                "it drains every listener or none\n",
            )
    drain = functools.partial(
        ctx.proxy.drain_listeners, graceful="graceful" in req.params, skip_exit="skip_exit" in req.params
    )
    await ctx.blocking(drain)
    return ok()


async def quitquitquit(ctx: Context, req: Request) -> Response:
    return Response(200, "OK\n", after=ctx.proxy.request_shutdown)


async def logging(ctx: Context, req: Request) -> Response:
    proxy = ctx.proxy
    loggers = proxy.loggers()
    params = req.params
    if not params:
        return Response(200, formats.loggers_text(loggers))

    def fail(message: str) -> Response:
        return Response(400, formats.logging_error(message, proxy.loggers()))

    if len(params) != 1:
        return fail("invalid number of parameters")
    ((name, value),) = params.items()
    if name == "group":
        return fail("group parameter requires fine-grain logging to be enabled")
    if name == "level":
        changes = [(None, value)]
    elif name == "paths":
        changes = []
        for pair in value.split(","):
            logger, sep, level = pair.partition(":")
            if not sep:
                return fail("invalid paths format")
            changes.append((logger, level))
    else:
        changes = [(name, value)]
    for logger, level in changes:
        if level not in formats.LOG_LEVELS:
            return fail("unknown logger level")
        if logger is not None and logger not in loggers:
            return fail("unknown logger name")
    for logger, level in changes:
        proxy.set_log_level(level, logger)
    return Response(200, formats.loggers_text(proxy.loggers()))


async def memory(ctx: Context, req: Request) -> Response:
    return text_json(formats.memory())


async def runtime(ctx: Context, req: Request) -> Response:
    # pyproxy has no runtime layers; Envoy without a layered_runtime prints exactly this.
    return text_json({"layers": [], "entries": {}})


# --- the table -----------------------------------------------------------------------------------

_USEDONLY = Param("usedonly", "Only include stats that have been written by system since restart")
_FILTER = Param("filter", "Regular expression (Rust regex, RE2 syntax) for filtering stats")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/", "Admin home page", home, False),
    Endpoint("/clusters", "upstream cluster status", clusters, False, (
        Param("format", "File format to use; One of (text, json)"),
        Param("filter", "Regular expression (Google re2) for filtering clusters by name"),
    )),
    Endpoint("/config_dump", "dump current Envoy configs", config_dump, False, (
        Param("resource", "The resource to dump"),
        Param("mask", "The mask to apply. When both resource and mask are specified, the mask is "
              "applied to every element in the desired repeated field so that only a subset of "
              "fields are returned. The mask is parsed as a Protobuf::FieldMask"),
        Param("name_regex", "Dump only the currently loaded configurations whose names match the "
              "specified regex. Can be used with both resource and mask query parameters."),
        Param("include_eds", "Dump currently loaded configuration including EDS. See the response "
              "definition for more information"),
    )),
    Endpoint("/drain_listeners", "drain listeners", drain_listeners, True, (
        Param("graceful", "When draining listeners, enter a graceful drain period prior to closing "
              "listeners. This behaviour and duration is configurable via server options or CLI"),
        Param("skip_exit", "When draining listeners, drain the connections but never stop the "
              "listeners. The graceful parameter has no effect when this is set, since the drain "
              "period only delays stopping the listeners"),
        Param("inboundonly", "Drains all inbound listeners. traffic_direction field in "
              "envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a "
              "listener is inbound or outbound."),
    )),
    Endpoint("/healthcheck/fail", "cause the server to fail health checks", healthcheck_fail, True),
    Endpoint("/healthcheck/ok", "cause the server to pass health checks", healthcheck_ok, True),
    Endpoint("/help", "print out list of admin commands", help_, False),
    Endpoint("/hot_restart_version", "print the hot restart compatibility version",
             hot_restart_version, False),
    Endpoint("/listeners", "print listener info", listeners, False, (
        Param("format", "File format to use; One of (text, json)"),
    )),
    Endpoint("/logging", "query/change logging levels", logging, True, (
        Param("paths", "Change multiple logging levels by setting to "
              "<logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>."),
        Param("level", "desired logging level, this will change all loggers's level; "
              "One of (" + ", ".join(formats.LOG_LEVELS) + ")"),
    )),
    Endpoint("/memory", "print current allocation/heap usage", memory, False),
    Endpoint("/quitquitquit", "exit the server", quitquitquit, True),
    Endpoint("/ready", "print server state, return 200 if LIVE, otherwise return 503", ready, False),
    Endpoint("/reopen_logs", "reopen access logs", reopen_logs, True),
    Endpoint("/reset_counters", "reset all counters to zero", reset_counters, True),
    Endpoint("/runtime", "print runtime values", runtime, False),
    Endpoint("/server_info", "print server version/status information", server_info, False),
    Endpoint("/stats", "print server stats", stats, False, (
        _USEDONLY,
        _FILTER,
        Param("format", "Format to use; One of (text, json, prometheus)"),
    )),
    Endpoint("/stats/prometheus", "print server stats in prometheus format", stats_prometheus,
             False, (_USEDONLY, _FILTER)),
)  # fmt: skip

ROUTES: dict[str, Endpoint] = {e.path: e for e in ENDPOINTS}


def help_text() -> str:
    """Envoy's /help: `admin commands are:`, then each endpoint sorted by path, `(POST)` after
    mutating ones, each parameter indented below its endpoint."""
    lines = ["admin commands are:"]
    for e in sorted(ENDPOINTS, key=lambda e: e.path):
        lines.append(f"  {e.path}{' (POST)' if e.mutates_state else ''}: {e.help}")
        lines += [f"      {p.name}: {p.help}" for p in e.params]
    return "\n".join(lines) + "\n"


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """Path and decoded query parameters (first value wins, as Envoy's query map)."""
    parts = urlsplit(target)
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        params.setdefault(key, value)
    return parts.path or "/", params


async def dispatch(ctx: Context, method: str, target: str) -> Response:
    path, params = parse_target(target)
    endpoint = ROUTES.get(path)
    if endpoint is None:
        return Response(404, "invalid path. " + help_text())
    if endpoint.mutates_state and method != "POST":
        return Response(405, f"Method {method} not allowed, POST required.")
    return await endpoint.handler(ctx, Request(method, path, params))
