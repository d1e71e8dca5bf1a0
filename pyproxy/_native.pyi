"""Typed stub of the compiled engine (`native/`, built by maturin). Checked by tests/test_native_stub.py.

Every call crosses the boundary once. Blocking calls (start, apply, shutdown) release the GIL.
Errors raise the classes of `pyproxy.errors` (ConfigError, BindError, EngineError), which native
imports from there when it maps a core error.
"""

from typing import Literal

def validate(snapshot: bytes) -> None:
    """Compiles a snapshot (JSON, see core/src/config.rs) without binding anything; raises ConfigError."""

class Engine:
    def __init__(self, concurrency: int) -> None:
        """An engine with `concurrency` workers (>= 1). Nothing runs until start()."""
    @property
    def concurrency(self) -> int: ...
    def start(self, snapshot: bytes) -> None:
        """Compiles the snapshot, binds every listener on every worker, starts the workers."""
    def apply(self, snapshot: bytes) -> None:
        """Compiles and atomically swaps in a new snapshot. In-flight requests finish on the old
        one; listeners added are opened, listeners removed are drained. Raises ConfigError and
        leaves the running config untouched if it does not compile."""
    def listeners(self) -> list[tuple[str, str, int]]:
        """(name, bound address, bound port) of each listener; the port is the real one when the
        config asked for port 0."""
    def drain_listeners(self, shutdown: bool = False, graceful: bool = False, skip_exit: bool = False) -> None:
        """Drains: responses close their connections from now on (every one, or under the
        gradual strategy more and more over the drain time), and every listener stops
        accepting (idle connections close then) at once, with `graceful` once the drain time
        has passed, with `skip_exit` never. With `shutdown` (the drain before exiting) every
        response closes its connection, `server.live` goes to 0 and `server.state` to 1;
        without, the server stays live, as after Envoy's `/drain_listeners`."""
    def set_health_check_failed(self, failed: bool) -> None:
        """While set (the admin's `/healthcheck/fail`), every response on a listener whose
        `drain_type` is DEFAULT carries `connection: close` and ends its connection, counted as
        `downstream_cx_drain_close` (Envoy's drain decision while health checks fail)."""
    def set_drain_strategy(self, strategy: str) -> None:
        """`--drain-strategy`: "gradual" (the default, as Envoy's) or "immediate" (ValueError
        otherwise). Under gradual a drain closes a response's connection with a chance that
        grows from 0 to 1 over the drain time; under immediate every response's."""
    def set_file_flush(self, interval_ms: int, min_bytes: int) -> None:
        """`--file-flush-interval-msec` and `--file-flush-min-size-kb` (in bytes here): each
        worker hands its access log lines to their writers at least this often, and as soon as
        it holds this many bytes of them. Process-wide, as in Envoy."""
    def reopen_logs(self) -> list[str]:
        """`/reopen_logs`: every access log file is closed and opened again (log rotation),
        after the lines already handed to it; returns an error for each that could not be."""
    def set_drain_time(self, seconds: float) -> None:
        """`--drain-time-s`: once it has passed after an apply removed a listener, that
        listener's idle connections are closed (ValueError if negative or not finite; a time too
        long to represent never ends)."""
    def active_connections(self) -> int:
        """Downstream connections currently open, all workers."""
    def shutdown(self, timeout_s: float) -> None:
        """Drains listeners, waits up to timeout_s for connections to finish, then stops the
        workers and closes what is left. Idempotent."""
    def stats(self, format: Literal["text", "json", "prometheus"] = "text",
              filter: str | None = None, used_only: bool = False) -> str:
        """All stats merged across workers and rendered in Envoy's admin format, in one call.
        `filter` is a regex (Envoy's `/stats?filter=`); raises ConfigError if it is invalid."""
    def stat_values(self) -> dict[str, int]:
        """Counters and gauges merged across workers, by Envoy name (for tests and the API)."""
    def reset_counters(self) -> None:
        """Envoy's `/reset_counters`: counters read as zero from now on."""
    def clusters(self) -> list[dict]:
        """One dict per cluster: {"name", "hosts": [{"address", "port", "weight", "hostname", "cx_active",
        "cx_connect_fail", "cx_total", "rq_active", "rq_error", "rq_success", "rq_timeout",
        "rq_total", "healthy"}]} for `/clusters`."""
