"""`Proxy`: the control API around one engine, used by the CLI, the admin server and tests.

A Proxy validates its config at construction (so a bad config fails before anything binds),
starts the engine and the admin server in `start()`, and stops both in `stop()`. `wait()` blocks
until `request_shutdown()` is called, from a signal handler or the admin `/quitquitquit`.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .config import Bootstrap, decode, load, snapshot_bytes
from .errors import ConfigError, EngineError

if TYPE_CHECKING:
    from . import _native

__all__ = ["LOG_LEVELS", "Proxy"]

log = logging.getLogger("pyproxy")

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

# Envoy's --log-level names -> logging levels. `off` is above CRITICAL.
LOG_LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_LEVEL_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
    logging.CRITICAL + 10: "off",
}


def _level(name: str) -> int:
    try:
        return LOG_LEVELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r}; expected one of {', '.join(LOG_LEVELS)}"
        ) from None


class Proxy:
    """One proxy: a validated config, an engine, and (if the bootstrap has one) an admin server."""

    def __init__(
        self,
        config: str | dict[str, Any] | os.PathLike[str] | None = None,
        *,
        config_yaml: str | None = None,
        concurrency: int | None = None,
        service_cluster: str | None = None,
        service_node: str | None = None,
        drain_time_s: float = 600.0,
        drain_strategy: str = "gradual",
        log_level: str = "info",
        admin: bool = True,
        file_flush_interval_ms: int = 10_000,
        file_flush_min_size_kb: int = 64,
    ) -> None:
        if concurrency is None:
            concurrency = os.cpu_count() or 1
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not drain_time_s >= 0 or drain_time_s == float("inf"):
            raise ValueError(f"drain_time_s must be a finite number of seconds, not negative, got {drain_time_s}")
        if drain_strategy not in ("gradual", "immediate"):
            raise ValueError(f'drain_strategy must be "gradual" or "immediate", got {drain_strategy!r}')
        if file_flush_interval_ms < 1:
            raise ValueError(f"file_flush_interval_ms must be at least 1, got {file_flush_interval_ms}")
        if file_flush_min_size_kb < 0:
            raise ValueError(f"file_flush_min_size_kb must not be negative, got {file_flush_min_size_kb}")
        self.concurrency: int = concurrency
        # Envoy's --file-flush-interval-msec / --file-flush-min-size-kb: when workers hand their
        # access log lines to the writers (process-wide, as in Envoy).
        self.file_flush_interval_ms = file_flush_interval_ms
        self.file_flush_min_size_kb = file_flush_min_size_kb
        self.drain_time_s: float = float(drain_time_s)
        # Envoy's --drain-strategy: how a drain closes connections (docs/admin.md, "Drains").
        self.drain_strategy: str = drain_strategy
        self._admin_enabled = admin
        self._service_cluster = service_cluster
        self._service_node = service_node

        raw, _ = load(config, config_yaml=config_yaml)
        self.raw_config: dict[str, Any] = self._with_node_overrides(raw)
        self.bootstrap: Bootstrap = decode(self.raw_config)
        self._snapshot: bytes = snapshot_bytes(self.bootstrap)

        config_path = os.fspath(config) if isinstance(config, str | os.PathLike) else None
        if config_path is not None and "\n" in config_path:  # a document, not a path
            config_path = None
        self.command_line: dict[str, Any] = {
            "concurrency": concurrency,
            "config_path": config_path or "",
            "config_yaml": config_yaml or "",
            "log_level": log_level,
            "service_cluster": service_cluster or "",
            "service_node": service_node or "",
            "drain_time_s": self.drain_time_s,
            "drain_strategy": drain_strategy,
            "file_flush_interval_msec": file_flush_interval_ms,
            "file_flush_min_size_kb": file_flush_min_size_kb,
            "mode": "serve",
        }
        self.engine: _native.Engine | None = None
        self.start_time: float = 0.0
        self.last_updated: float = 0.0
        self.state: str = "PRE_INITIALIZING"
        self._healthcheck_failed = False
        self.admin_address: tuple[str, int] | None = None
        self._admin: Any = None
        self._shutdown = threading.Event()
        self._lock = threading.Lock()  # serialises start/apply/stop
        self._stopped = False
        self.set_log_level(log_level)

    @classmethod
    def from_options(cls, options: Any) -> Proxy:
        """From the namespace `pyproxy.cli.parse_args` returns."""
        proxy = cls(
            options.config_path,
            config_yaml=options.config_yaml,
            concurrency=options.concurrency,
            service_cluster=options.service_cluster,
            service_node=options.service_node,
            drain_time_s=options.drain_time_s,
            drain_strategy=options.drain_strategy,
            log_level=options.log_level,
            file_flush_interval_ms=options.file_flush_interval_msec,
            file_flush_min_size_kb=options.file_flush_min_size_kb,
        )
        proxy.command_line["mode"] = options.mode
        return proxy

    def _with_node_overrides(self, raw: dict[str, Any]) -> dict[str, Any]:
        # Envoy: --service-cluster / --service-node override node.cluster / node.id.
        if self._service_cluster is None and self._service_node is None:
            return raw
        raw = copy.deepcopy(raw)
        node = raw.setdefault("node", {})
        if not isinstance(node, dict):
            raise ConfigError("node", f"expected a mapping, got {node!r}")
        if self._service_cluster is not None:
            node["cluster"] = self._service_cluster
        if self._service_node is not None:
            node["id"] = self._service_node
        return raw

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the engine with the validated snapshot, then the admin server (if any)."""
        with self._lock:
            if self.engine is not None:
                raise EngineError("the proxy is already started")
            native = _import_native()
            self.start_time = time.time()
            engine = native.Engine(self.concurrency)
            engine.set_health_check_failed(self._healthcheck_failed)
            engine.set_drain_time(self.drain_time_s)
            engine.set_drain_strategy(self.drain_strategy)
            engine.set_file_flush(self.file_flush_interval_ms, self.file_flush_min_size_kb * 1024)
            engine.start(self._snapshot)
            self.engine = engine
            try:
                self._start_admin()
            except BaseException:
                engine.shutdown(0.0)
                self.engine = None
                raise
            self.last_updated = time.time()
            self.state = "LIVE"
        for name, address, port in self.listeners():
            log.info("listener %s on %s:%d", name, address, port)
        if self.admin_address is not None:
            log.info("admin on %s:%d", *self.admin_address)

    def _start_admin(self) -> None:
        admin = self.bootstrap.admin
        if not self._admin_enabled or admin is None or admin.address is None:
            return
        from .admin import AdminServer  # written separately; imported only when needed

        sa = admin.address.socket_address
        server = AdminServer(self, sa.address, sa.port_value)
        self.admin_address = server.start()
        self._admin = server

    def apply(self, config: str | dict[str, Any] | os.PathLike[str]) -> None:
        """Validates, lowers and atomically swaps in a new config. On ConfigError the running
        config is untouched."""
        raw, _ = load(config)
        raw = self._with_node_overrides(raw)
        bootstrap = decode(raw)
        snapshot = snapshot_bytes(bootstrap)
        with self._lock:
            engine = self._require_engine()
            engine.apply(snapshot)
            self.raw_config, self.bootstrap, self._snapshot = raw, bootstrap, snapshot
            self.last_updated = time.time()

    @property
    def healthcheck_failed(self) -> bool:
        """Whether health checks fail (the admin's `/healthcheck/fail` until `/healthcheck/ok`).
        While they do, `/ready` says DRAINING and every response on a listener whose
        `drain_type` is DEFAULT carries `connection: close` and ends its connection, as Envoy
        drains while its health checks fail."""
        return self._healthcheck_failed

    @healthcheck_failed.setter
    def healthcheck_failed(self, failed: bool) -> None:
        self._healthcheck_failed = bool(failed)
        if self.engine is not None:
            self.engine.set_health_check_failed(self._healthcheck_failed)

    def reopen_logs(self) -> None:
        """Envoy's `/reopen_logs`: every access log file is closed and opened again at its path
        (after log rotation moved it), once the lines already handed to it are written. A file
        that cannot be opened again is logged and counted (`filesystem.reopen_failed`); its
        lines are dropped until the next reopen succeeds."""
        for error in self._require_engine().reopen_logs():
            log.warning("cannot reopen access log %s", error)

    def drain_listeners(self, shutdown: bool = False, graceful: bool = False, skip_exit: bool = False) -> None:
        """Drains: from now on responses close their connections (as `drain_strategy` says),
        and the listeners stop accepting at once, or with `graceful` after drain_time_s
        (Envoy's `/drain_listeners?graceful`), or with `skip_exit` never. Open connections
        finish their current request. With `shutdown` (the drain before the process exits)
        every response closes its connection and the server reports itself DRAINING (`/ready`
        503, `server.state` 1); without (the admin's `/drain_listeners`) it stays LIVE, as
        Envoy does."""
        self._require_engine().drain_listeners(shutdown, graceful, skip_exit)
        if shutdown:
            self.state = "DRAINING"

    def request_shutdown(self) -> None:
        """Makes `wait()` return. Thread-safe; safe from a signal handler."""
        self._shutdown.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until `request_shutdown()`; returns False if `timeout` passed first."""
        return self._shutdown.wait(timeout)

    def wait_for_connections(self, timeout_s: float) -> bool:
        """Waits up to `timeout_s` for every downstream connection to close (after a drain).
        Returns whether they all closed. Polls in short steps so signal handlers keep running."""
        if self.engine is None:
            return True
        deadline = time.monotonic() + timeout_s
        step = threading.Event()
        while self.engine.active_connections() > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            step.wait(min(0.05, remaining))
        return True

    def stop(self, timeout_s: float | None = None) -> None:
        """Stops the admin server, then drains and shuts the engine down, waiting up to
        `timeout_s` (default: drain_time_s) for connections to finish. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._admin is not None:
                self._admin.stop()
                self._admin = None
            if self.engine is not None:
                self.engine.shutdown(self.drain_time_s if timeout_s is None else timeout_s)
            self.state = "SHUTDOWN"
        self._shutdown.set()

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- introspection ------------------------------------------------------------------------

    def listeners(self) -> list[tuple[str, str, int]]:
        """(name, bound address, bound port) per listener."""
        return self._require_engine().listeners()

    def listener_port(self, name: str | None = None) -> int:
        """The bound port of the listener `name`, or of the first listener."""
        listeners = self.listeners()
        for lname, _, port in listeners:
            if name is None or lname == name:
                return port
        known = ", ".join(lname for lname, _, _ in listeners) or "none"
        raise KeyError(f"no listener named {name!r} (listeners: {known})")

    def stats(self) -> dict[str, int]:
        """Counters and gauges by Envoy name, merged across workers."""
        return self._require_engine().stat_values()

    def _require_engine(self) -> _native.Engine:
        if self.engine is None:
            raise EngineError("the proxy is not started; call start() first")
        return self.engine

    # --- logging ------------------------------------------------------------------------------

    def set_log_level(self, level: str, logger: str | None = None) -> None:
        """Sets the level of every pyproxy logger, or of one (`/logging?level=` and
        `/logging?<logger>=<level>`). Raises ValueError for an unknown level or logger."""
        value = _level(level)
        if logger is None:
            for name in self.loggers():
                logging.getLogger(name).setLevel(logging.NOTSET if name != "pyproxy" else value)
            logging.getLogger("pyproxy").setLevel(value)
            return
        if logger not in self.loggers():
            raise ValueError(f"unknown logger {logger!r}")
        logging.getLogger(logger).setLevel(value)

    def loggers(self) -> dict[str, str]:
        """Logger name -> effective level name, for the pyproxy logger and its children."""
        names = {"pyproxy"} | {
            n for n in logging.root.manager.loggerDict if n.startswith("pyproxy.")
        }
        out = {}
        for name in sorted(names):
            level = logging.getLogger(name).getEffectiveLevel()
            out[name] = _LEVEL_NAMES.get(level, logging.getLevelName(level).lower())
        return out


def _import_native() -> Any:
    try:
        from . import _native
    except ImportError as e:
        raise EngineError(
            f"the engine (pyproxy._native) is not built or does not load: {e}; run `make build`"
        ) from e
    return _native
