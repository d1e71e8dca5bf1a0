"""Access logs across the proxy's life: an apply that drops a log lets its file go, a request cut
off by the stop still gets its line, and a destination nobody reads neither grows the process
without bound nor keeps it from exiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.dataplane.conftest import RawConn, get
from tests.lifecycle.process import ROOT, ProxyProcess, poll, read_addresses, subprocess_env, write_config
from tests.support.configs import bootstrap, cluster, route
from tests.support.upstream import Upstream

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"


def logged(upstream: Upstream, path: Path, fmt: str = "%REQ(:PATH)% %RESPONSE_CODE%\n") -> dict[str, Any]:
    return bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"access_log": [
        {"name": "f", "typed_config": {"@type": FILE_LOG, "path": str(path),
                                       "log_format": {"text_format": fmt}}}]})


def open_in_this_process(path: Path) -> bool:
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fds / fd) == str(path) for fd in os.listdir(fds) if (fds / fd).exists())


def test_an_apply_that_drops_a_log_closes_its_file(tmp_path: Path, make_proxy: Any, upstream: Upstream) -> None:
    path = tmp_path / "dropped.log"
    proxy = make_proxy(logged(upstream, path), concurrency=2, file_flush_interval_ms=20)
    for i in range(8):  # over both workers
        with RawConn(proxy.listener_port()) as c:
            c.request(get(f"/{i}"))
    poll(lambda: path.read_text().count("\n") == 8, timeout=5, what="8 lines")
    assert open_in_this_process(path)
    proxy.apply(bootstrap([route("/", "up")], [cluster("up", upstream.port)]))
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/after"))
    # Once every worker has handed its last lines over, nothing holds the file.
    poll(lambda: not open_in_this_process(path), timeout=15, what="the log file to be closed")
    assert path.read_text().count("\n") == 8


def test_a_request_cut_off_by_the_stop_gets_its_line(tmp_path: Path, make_proxy: Any, upstream: Upstream) -> None:
    path = tmp_path / "cut.log"
    proxy = make_proxy(logged(upstream, path, "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n"),
                       file_flush_interval_ms=20)
    with RawConn(proxy.listener_port()) as c:
        c.request(get("/done"))
        c.send(get("/delay/5000/slow"))
        poll(lambda: proxy.stats().get("cluster.up.upstream_rq_active") == 1, timeout=5, what="the slow request")
        proxy.stop(timeout_s=0.2)
    assert path.read_text() == "/done 200 - up\n/delay/5000/slow 0 DC up\n"


def test_a_destination_nobody_reads_is_bounded_and_does_not_hold_the_exit(
    tmp_path: Path, upstream: Upstream
) -> None:
    # stdout is a pipe this test never reads: the writer blocks once the pipe is full, lines
    # queue up to the cap and are then dropped (filesystem.write_failed), and SIGTERM still exits.
    config = bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"access_log": [
        {"name": "out", "typed_config": {"@type": STDOUT_LOG, "log_format": {
            "text_format": "%REQ(x-big)%\n"}}}]})
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    path = write_config(tmp_path, config)
    err = (tmp_path / "err.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyproxy", "-c", str(path), "--concurrency", "1",
         "--file-flush-interval-msec", "10", "--drain-time-s", "1"],
        stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=subprocess_env(),
    )
    try:
        p = ProxyProcess(proc, path, tmp_path / "none.out", tmp_path / "err.log")
        poll(lambda: "admin on" in p.stderr() and "listener" in p.stderr(), timeout=20, what="startup",
             detail=p.stderr)
        poll(lambda: read_addresses(p, ["listener_0"], True), timeout=20, what="addresses")
        big = "x" * 60_000
        with httpx.Client(base_url=p.url("/")) as client:
            for _ in range(600):  # 36 MB of lines
                assert client.get("/", headers={"x-big": big}).status_code == 200
        poll(lambda: p.stat_values().get("filesystem.write_failed", 0) > 0, timeout=10,
             what="lines dropped past the cap", detail=p.stderr)
        rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:")))
        assert rss_kib < 200 * 1024, rss_kib
        started = time.monotonic()
        proc.send_signal(signal.SIGUSR1)  # a reopen must not hang on the blocked writer either
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
        assert proc.stdout is not None
        proc.stdout.close()

