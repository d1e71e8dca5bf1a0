"""`make run`'s setup, with every port 0: the demo upstream and the proxy on the README's default
config (configs/default.yaml), and curl through it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.lifecycle.process import ROOT, ProxyProcess, poll, subprocess_env

DEFAULT = ROOT / "configs" / "default.yaml"
_DEMO_LINE = re.compile(r"listening on (\S+):(\d+)$")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`python -m pyproxy.demo --port 0`; its bound address is read from the line it prints."""
    out = tmp_path / "demo.out"
    with out.open("wb") as fo:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyproxy.demo", "--port", "0"],
            stdout=fo, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=ROOT, env=subprocess_env(),
        )

    def bound() -> re.Match[str] | None:
        assert proc.poll() is None, f"demo exited: {out.read_text()}"
        return _DEMO_LINE.search(out.read_text().strip())

    try:
        m = poll(bound, timeout=15.0, what="the demo upstream to print its address")
        yield m.group(1), int(m.group(2))
    finally:
        proc.send_signal(signal.SIGINT)  # the demo exits quietly on KeyboardInterrupt
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            pytest.fail("the demo upstream ignored SIGINT")


def default_config_on(demo_port: int) -> dict:
    config = yaml.safe_load(DEFAULT.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"]["port_value"] = 0
    (c,) = config["static_resources"]["clusters"]
    (lb,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    lb["endpoint"]["address"]["socket_address"]["port_value"] = demo_port
    return config


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_default_config_serves_the_demo_through_curl(
    proxy_process: Callable[..., ProxyProcess], demo: tuple[str, int]
) -> None:
    _, demo_port = demo
    p = proxy_process(default_config_on(demo_port))
    assert p.listeners["main"][0] == "0.0.0.0"  # the README's config listens on every address
    host, port = p.listener("main")
    done = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", f"http://{host}:{port}/hello?x=1"],
        capture_output=True, text=True, timeout=20,
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.splitlines()[0] == "HTTP/1.1 200 OK"
    assert "x-demo-upstream: demo" in head.lower().splitlines()
    assert body == "Hello from the pyproxy demo upstream (demo): GET /hello?x=1\n"

    p.send_signal(signal.SIGTERM)
    assert p.wait_exit(10) == 0, p.logs()
