"""Subprocess-mode support for lifecycle and signal tests: `python -m pyproxy` as a real process.

A `ProxyProcess` is started on a YAML bootstrap written to tmp_path with every port 0. Its bound
ports are read from its own log lines (`listener <name> on <addr>:<port>`, `admin on
<addr>:<port>`, written by `Proxy.start()`), and it counts as ready once the admin `/ready`
answers 200. stdout and stderr go to files, so a test that fails can show the whole log.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Envoy's log line shape, as pyproxy.cli writes it: `[time][pid][level][logger] message`.
_LISTENER_LINE = re.compile(r"\]\s*listener (\S+) on (\S+):(\d+)\s*$")
_ADMIN_LINE = re.compile(r"\]\s*admin on (\S+):(\d+)\s*$")


def poll(
    check: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
) -> Any:
    """Calls `check` until it returns something truthy; fails the test after `timeout` seconds.
    Exceptions from `check` count as "not yet" and the last one is shown on failure, followed by
    `detail()` (e.g. the process's logs at that moment)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
        except Exception as e:  # noqa: BLE001 - "not yet", reported on timeout
            last, value = e, None
        if value:
            return value
        if time.monotonic() >= deadline:
            error = f" (last error: {last!r})" if last is not None else ""
            extra = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{error}{extra}")
        time.sleep(interval)


def connect_refused(host: str, port: int) -> bool:
    """True if a TCP connect to host:port is refused right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@dataclass
class ProxyProcess:
    """One running `python -m pyproxy`."""

    proc: subprocess.Popen[bytes]
    config_path: Path
    stdout_path: Path
    stderr_path: Path
    listeners: dict[str, tuple[str, int]] = field(default_factory=dict)
    admin: tuple[str, int] | None = None

    # --- output -----------------------------------------------------------------------------

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def logs(self) -> str:
        return f"--- stdout ---\n{self.stdout()}--- stderr ---\n{self.stderr()}"

    # --- addresses --------------------------------------------------------------------------

    def listener(self, name: str | None = None) -> tuple[str, int]:
        """(host to connect to, port) of listener `name`, or of the first listener."""
        if name is None:
            name = next(iter(self.listeners))
        host, port = self.listeners[name]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return host, port

    def url(self, path: str = "/", listener: str | None = None) -> str:
        host, port = self.listener(listener)
        return f"http://{host}:{port}{path}"

    def admin_url(self, path: str) -> str:
        assert self.admin is not None, "this proxy has no admin server"
        host, port = self.admin
        return f"http://{host}:{port}{path}"

    def admin_get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.admin_url(path), timeout=timeout)

    def admin_post(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.post(self.admin_url(path), timeout=timeout)

    def stat_values(self) -> dict[str, int]:
        """Counters and gauges from the admin `/stats` text format (`name: value` per line)."""
        out: dict[str, int] = {}
        for line in self.admin_get("/stats").text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    # --- process ----------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The exit status; fails the test (with the logs) if still running after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pyproxy still running {timeout}s later\n{self.logs()}")

    def alive(self) -> bool:
        return self.proc.poll() is None


def read_addresses(p: ProxyProcess, names: Sequence[str], with_admin: bool) -> bool:
    for line in p.stderr().splitlines():
        if m := _LISTENER_LINE.search(line):
            p.listeners[m.group(1)] = (m.group(2), int(m.group(3)))
        elif m := _ADMIN_LINE.search(line):
            p.admin = (m.group(1), int(m.group(2)))
    return all(n in p.listeners for n in names) and (p.admin is not None or not with_admin)


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "bootstrap.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
