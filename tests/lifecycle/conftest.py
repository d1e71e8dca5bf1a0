"""The `proxy_process` fixture: a real `python -m pyproxy` per test (see process.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.lifecycle.process import (
    ROOT,
    ProxyProcess,
    poll,
    read_addresses,
    subprocess_env,
    write_config,
)


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: `proxy_process(config, concurrency=1, args=[...], ready_timeout=20)` starts
    `python -m pyproxy -c <tmp>/bootstrap.yaml --concurrency N *args` and returns once every
    configured listener and the admin server have logged their bound address and `/ready` says
    200. At teardown a process still alive is killed; every process must have exited."""
    started: list[ProxyProcess] = []
    counter = 0

    def start(
        config: dict[str, Any],
        concurrency: int = 1,
        args: Sequence[str] = (),
        ready_timeout: float = 20.0,
    ) -> ProxyProcess:
        nonlocal counter
        counter += 1
        config_path = write_config(tmp_path, config, f"bootstrap-{counter}.yaml")
        out, err = tmp_path / f"pyproxy-{counter}.out", tmp_path / f"pyproxy-{counter}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "pyproxy",
                    "-c", str(config_path),
                    "--concurrency", str(concurrency),
                    *args,
                ],
                stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=ROOT, env=subprocess_env(),
            )
        p = ProxyProcess(proc, config_path, out, err)
        started.append(p)

        names = [x["name"] for x in config.get("static_resources", {}).get("listeners", [])]
        with_admin = "admin" in config

        def addresses_known() -> bool:
            if not p.alive():
                pytest.fail(f"pyproxy exited with {p.proc.returncode} while starting\n{p.logs()}")
            return read_addresses(p, names, with_admin)

        poll(addresses_known, timeout=ready_timeout, what="bound addresses in the log", detail=p.logs)
        if with_admin:
            poll(
                lambda: p.admin_get("/ready", timeout=1.0).status_code == 200,
                timeout=ready_timeout,
                what="admin /ready to answer 200",
                detail=p.logs,
            )
        return p

    yield start

    leaked = []
    for p in started:
        if p.alive():
            p.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(10)
        if p.alive():
            leaked.append(p.proc.pid)
    assert not leaked, f"pyproxy processes still running after kill: {leaked}"

