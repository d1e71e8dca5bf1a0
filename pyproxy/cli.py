"""The `pyproxy` command: Envoy's command line, where its flags apply.

    pyproxy -c configs/default.yaml                 # serve
    pyproxy --mode validate -c envoy.yaml           # "configuration 'envoy.yaml' OK", exit 0/1

In serve mode the first SIGTERM/SIGINT (or the admin `/quitquitquit`) drains the listeners and
waits up to --drain-time-s for connections to finish, then exits 0; a second signal exits at once.
SIGUSR1 reopens the access log files (after rotation), as Envoy's.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import load, snapshot_bytes
from .errors import BindError, ConfigError, EngineError, PyproxyError
from .proxy import LOG_LEVELS, Proxy

__all__ = ["build_parser", "main", "parse_args"]

log = logging.getLogger("pyproxy.main")

# Envoy's default --drain-time-s.
DEFAULT_DRAIN_TIME_S = 600
DEFAULT_FILE_FLUSH_INTERVAL_MS = 10_000
DEFAULT_FILE_FLUSH_MIN_SIZE_KB = 64


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyproxy",
        description="An Envoy-compatible HTTP/1.1 edge proxy. Takes Envoy v3 bootstrap configs.",
    )
    p.add_argument("-c", "--config-path", metavar="FILE", help="bootstrap file (YAML or JSON)")
    p.add_argument(
        "--config-yaml",
        metavar="YAML",
        help="bootstrap YAML, merged over --config-path as Envoy merges it",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="worker threads (default: the number of CPUs)",
    )
    p.add_argument("--mode", choices=("serve", "validate"), default="serve")
    p.add_argument(
        "-l", "--log-level", choices=tuple(LOG_LEVELS), default="info", type=str.lower
    )
    p.add_argument("--service-cluster", help="overrides node.cluster")
    p.add_argument("--service-node", help="overrides node.id")
    p.add_argument(
        "--drain-time-s",
        type=_non_negative_float,
        default=DEFAULT_DRAIN_TIME_S,
        help=f"how long to wait for connections to finish on shutdown (default "
        f"{DEFAULT_DRAIN_TIME_S})",
    )
    p.add_argument(
        "--drain-strategy",
        choices=("gradual", "immediate"),
        default="gradual",
        type=str.lower,
        help="how a drain closes connections: gradual (default, as Envoy: each response closes "
        "its connection with a chance that grows over the drain time) or immediate",
    )
    p.add_argument(
        "--file-flush-interval-msec",
        type=_positive_int,
        default=DEFAULT_FILE_FLUSH_INTERVAL_MS,
        help="how often access log lines are written out, at the latest (default "
        f"{DEFAULT_FILE_FLUSH_INTERVAL_MS}, as Envoy)",
    )
    p.add_argument(
        "--file-flush-min-size-kb",
        type=_non_negative_int,
        default=DEFAULT_FILE_FLUSH_MIN_SIZE_KB,
        help="how many KiB of access log lines a worker gathers before it writes them out "
        f"(default {DEFAULT_FILE_FLUSH_MIN_SIZE_KB}, as Envoy)",
    )
    p.add_argument("--base-id", type=int, help="accepted for Envoy compatibility; ignored")
    p.add_argument("--version", action="version", version=f"pyproxy {__version__}")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    if value == float("inf"):
        raise argparse.ArgumentTypeError("must be finite")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    options = parser.parse_args(argv)
    if not options.config_path and not options.config_yaml:
        parser.error("at least one of --config-path or --config-yaml must be given")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    _configure_logging(options.log_level)
    if options.mode == "validate":
        return _validate(options)
    return _serve(options)


class _EnvoyFormatter(logging.Formatter):
    """Envoy's log line shape: `[time][pid][level][logger] message`, level in lower case."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _EnvoyFormatter("[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s")
    )
    root = logging.getLogger("pyproxy")
    root.addHandler(handler)
    root.setLevel(LOG_LEVELS[level])


def _config_error(options: argparse.Namespace, error: PyproxyError) -> int:
    # Envoy's wording, so scripts that grep Envoy's output keep working.
    print(
        f"error initializing configuration '{options.config_path or ''}': {error}",
        file=sys.stderr,
    )
    return 1


def _validate(options: argparse.Namespace) -> int:
    try:
        _, bootstrap = load(options.config_path, config_yaml=options.config_yaml)
        snapshot = snapshot_bytes(bootstrap)
        native = _native_or_none()
        if native is not None:  # native
            native.validate(snapshot)
    except ConfigError as e:
        return _config_error(options, e)
    print(f"configuration '{options.config_path or ''}' OK")
    return 0


def _native_or_none() -> Any:
    try:
        from . import _native
    except ImportError:
        log.debug("pyproxy._native is not importable; validating without the engine")
        return None
    return _native


def _serve(options: argparse.Namespace) -> int:
    try:
        proxy = Proxy.from_options(options)
    except ConfigError as e:
        return _config_error(options, e)

    signals_seen = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: draining listeners", signal.Signals(signum).name)
        proxy.request_shutdown()

    def on_usr1(_signum: int, _frame: object) -> None:
        # On a thread of its own: the handler runs on the main thread, which must stay free to
        # take SIGTERM even while a writer is slow to reopen.
        if proxy.engine is not None:
            log.info("SIGUSR1: reopening access logs")
            threading.Thread(target=proxy.reopen_logs, name="reopen-logs", daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        try:
            proxy.start()
        except (BindError, EngineError) as e:
            log.critical("%s", e)
            return 1
        except ConfigError as e:  # the engine's own compile step
            return _config_error(options, e)
        log.info("pyproxy %s started; %d workers", __version__, proxy.concurrency)
        # A timeout keeps the main thread returning to the interpreter, where signal handlers
        # run; the event is set by request_shutdown() from a handler or /quitquitquit.
        while not proxy.wait(1.0):
            pass
        proxy.drain_listeners(shutdown=True)
        log.info("waiting up to %gs for connections to finish", proxy.drain_time_s)
        # Wait here, in Python, rather than inside the blocking native shutdown: the main thread
        # keeps returning to the interpreter, so a second signal is handled at once.
        proxy.wait_for_connections(proxy.drain_time_s)
        proxy.stop(0.0)
        log.info("exiting")
        return 0
    finally:
        proxy.stop(0.0)  # no-op after a clean stop; closes everything after an error
        for s, handler in previous.items():
            signal.signal(s, handler)
