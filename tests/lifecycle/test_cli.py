"""The `python -m pyproxy` command line as a process: `--mode validate`, usage errors, and
`--config-yaml` merged over `-c` in serve mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.lifecycle.process import ROOT, ProxyProcess, poll, subprocess_env, write_config
from tests.support.configs import bootstrap, cluster, route
from tests.support.upstream import Upstream

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def pyproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproxy", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=subprocess_env(),
    )


def test_configs_dir_is_not_empty() -> None:
    assert CONFIGS, "configs/*.yaml matched nothing"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validate_shipped_config_prints_envoy_ok_line(path: Path) -> None:
    done = pyproxy("--mode", "validate", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"configuration '{path}' OK\n"


BAD = [
    (
        "lb_policy",
        {"static_resources": {"clusters": [{"name": "a", "lb_policy": "FOO"}]}},
        "static_resources.clusters[0].lb_policy",
    ),
    (
        "listener_port",
        {**bootstrap([route("/", "a")], [cluster("a", 1)])},
        "static_resources.listeners[0].address.socket_address.port_value",
    ),
    (
        "route_to_unknown_cluster",
        bootstrap([route("/", "nope")], [cluster("a", 1)]),
        "nope",
    ),
]
# A port out of range at a known path.
BAD[1][1]["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 70000


@pytest.mark.parametrize(("name", "config", "names"), BAD, ids=[b[0] for b in BAD])
def test_validate_bad_config_exits_1_naming_the_path(
    tmp_path: Path, name: str, config: dict, names: str
) -> None:
    path = write_config(tmp_path, config, f"{name}.yaml")
    done = pyproxy("--mode", "validate", "-c", str(path))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert f"error initializing configuration '{path}': " in done.stderr
    assert names in done.stderr


def test_unknown_flag_is_a_usage_error() -> None:
    done = pyproxy("-c", str(ROOT / "configs" / "default.yaml"), "--no-such-flag")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: pyproxy")
    assert "unrecognized arguments: --no-such-flag" in done.stderr
    assert done.stdout == ""


def test_no_config_is_a_usage_error() -> None:
    done = pyproxy("--mode", "validate")
    assert done.returncode == 2
    assert "usage: pyproxy" in done.stderr
    assert "--config-path" in done.stderr


def test_config_yaml_overrides_a_field_of_config_path(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    # -c puts the admin on 127.0.0.1:0; --config-yaml moves it to 127.0.0.2 (another loopback
    # address: no fixed port needed to see that the override won).
    override = "admin: {address: {socket_address: {address: 127.0.0.2}}}"
    p = proxy_process(
        bootstrap([route("/", "a")], [cluster("a", upstream.port)]),
        args=["--config-yaml", override],
    )
    assert p.admin is not None
    assert p.admin[0] == "127.0.0.2"
    assert p.admin_get("/ready").text == "LIVE\n"
    # The merge kept the rest of -c: the admin port (0 -> some port), listener and routes.
    assert p.admin[1] != 0
    assert httpx.get(p.url("/through")).status_code == 200
    info = p.admin_get("/server_info").json()
    assert info["command_line_options"]["config_yaml"] == override
    p.send_signal(signal.SIGTERM)
    assert p.wait_exit(10) == 0, p.logs()


def test_config_yaml_override_validates(tmp_path: Path, upstream: Upstream) -> None:
    path = write_config(tmp_path, bootstrap([route("/", "a")], [cluster("a", upstream.port)]))
    bad = "static_resources: {clusters: [{name: a, lb_policy: FOO}]}"
    done = pyproxy("--mode", "validate", "-c", str(path), "--config-yaml", bad)
    assert done.returncode == 1
    assert "lb_policy" in done.stderr and "FOO" in done.stderr


def test_config_yaml_lists_are_appended_as_envoy_merges(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    # protobuf MergeFrom concatenates repeated fields: a listener in --config-yaml is a second
    # listener, not a replacement of the first.
    base = bootstrap([route("/", "a")], [cluster("a", upstream.port)])
    extra = bootstrap([route("/", "a")], [], admin=False)["static_resources"]["listeners"][0]
    extra["name"] = "from_flag"
    override = json.dumps({"static_resources": {"listeners": [extra]}})  # JSON is YAML
    p = proxy_process(base, args=["--config-yaml", override])
    assert set(p.listeners) == {"listener_0", "from_flag"}
    for name in p.listeners:
        assert httpx.get(p.url(f"/via/{name}", listener=name)).status_code == 200


STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"


def test_stdout_access_log_flushes_on_interval_and_at_exit(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream
) -> None:
    config = bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"access_log": [
        {"name": "out", "typed_config": {"@type": STDOUT_LOG, "log_format": {
            "text_format": "%REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%\n"}}}]})
    # Written out every 50 ms.
    p = proxy_process(config, args=["--file-flush-interval-msec", "50"])
    assert httpx.get(p.url("/first")).status_code == 200
    poll(lambda: "/first 200 up\n" in p.stdout(), timeout=5, what="the line on stdout", detail=p.logs)
    # With Envoy's default interval (10 s) the line waits, and is written when the process stops.
    q = proxy_process(config)
    assert httpx.get(q.url("/second")).status_code == 200
    assert "/second" not in q.stdout()
    q.send_signal(signal.SIGTERM)
    assert q.wait_exit(10) == 0
    assert q.stdout().splitlines() == ["/second 200 up"]


FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def test_sigusr1_reopens_access_logs(
    proxy_process: Callable[..., ProxyProcess], upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    config = bootstrap([route("/", "up")], [cluster("up", upstream.port)], hcm={"access_log": [
        {"name": "f", "typed_config": {"@type": FILE_LOG, "path": str(path),
                                       "log_format": {"text_format": "%REQ(:PATH)%\n"}}}]})
    p = proxy_process(config, args=["--file-flush-interval-msec", "20"])
    assert httpx.get(p.url("/before")).status_code == 200
    poll(lambda: path.exists() and path.read_text() == "/before\n", timeout=5, what="the first line")
    path.rename(tmp_path / "access.log.1")
    p.send_signal(signal.SIGUSR1)
    poll(lambda: path.exists(), timeout=5, what="the log reopened at its path", detail=p.logs)
    assert httpx.get(p.url("/after")).status_code == 200
    poll(lambda: path.read_text() == "/after\n", timeout=5, what="the line in the new file")
    assert (tmp_path / "access.log.1").read_text() == "/before\n"
    assert p.alive()
