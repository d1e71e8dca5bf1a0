"""`python -m pyproxy --mode validate`: Envoy's output and exit codes for good and bad configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "pyproxy", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_validate_ok(path: Path) -> None:
    done = run("--mode", "validate", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"configuration '{path}' OK\n"


def test_validate_long_flag_and_relative_path() -> None:
    done = run("--mode", "validate", "--config-path", "configs/default.yaml")
    assert (done.returncode, done.stdout) == (0, "configuration 'configs/default.yaml' OK\n")


# One listener whose connection manager routes everything to cluster `a`; the route config's
# virtual hosts come next.
ONE_LISTENER = (
    "static_resources:\n  clusters: [{name: a}]\n  listeners:\n  - address: {socket_address: {address: 127.0.0.1, "
    "port_value: 0}}\n    filter_chains:\n    - filters:\n      - name: hcm\n        typed_config:\n"
    "          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager\n          stat_prefix: x\n          http_filters: [{name: r, typed_config: {'@type': "
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]\n          route_config:\n"
)
# ...with a route to `a` and one file access log, whose fields come next.
ACCESS_LOG = (
    ONE_LISTENER
    + "            virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a}}]}]\n"
    "          access_log: [{typed_config: {'@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3."
)

BAD = [
    ("lb_policy", "static_resources:\n  clusters:\n  - name: a\n    lb_policy: FOO\n",
     "static_resources.clusters[0].lb_policy: 'FOO' is not one of ROUND_ROBIN, LEAST_REQUEST, "
     "RANDOM"),
    ("unknown_field", "static_resources:\n  clusterz: []\n",
     "static_resources.clusterz: unknown field 'clusterz'; did you mean 'clusters'"),
    ("yaml_syntax", "static_resources: [\n", "unable to parse"),
    ("not_a_mapping", "[1, 2]\n", "expected a mapping"),
    # Found by the engine's compile step.
    ("regex_rewrite_group",
     ONE_LISTENER +
     "            virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a, "
     "regex_rewrite: {pattern: {regex: '(a)'}, substitution: '\\2'}}}]}]\n",
     "regex_rewrite.substitution: \"\\\\2\": \\2 is not a group of the pattern (\\0 to \\1) nor \\\\"),
    ("access_log_unknown_command",
     ACCESS_LOG +
     "FileAccessLog, path: /dev/null, log_format: {text_format: '%NOPE% %PROTOCOL%'}}}]\n",
     "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log[0].typed_config."
     "log_format.text_format: \"%NOPE% %PROTOCOL%\": %NOPE% is not supported by pyproxy"),
    ("access_log_bad_command",
     ACCESS_LOG +
     "FileAccessLog, path: /dev/null, log_format: {text_format: 'x %REQ()%'}}}]\n",
     "no valid command at position 2"),
    ("access_log_unwritable",
     ACCESS_LOG +
     "FileAccessLog, path: /nonexistent-dir/a.log}}]\n",
     "access_log[0].typed_config.path: cannot open access log file \"/nonexistent-dir/a.log\""),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_validate_bad(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    done = run("--mode", "validate", "-c", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"error initializing configuration '{path}': " in done.stderr
    assert message in done.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    done = run("--mode", "validate", "-c", str(path))
    assert done.returncode == 1
    assert f"unable to read file '{path}'" in done.stderr


@pytest.mark.parametrize(
    ("yaml_text", "code", "message"),
    [
        ("node: {id: x}", 0, "OK"),
        ("static_resources: {clusters: [{name: demo}]}", 1, "duplicate cluster 'demo'"),
        ("admin: {address: {socket_address: {address: localhost}}}", 1, "not an IP address"),
    ],
)
def test_config_yaml_is_merged_over_the_file(yaml_text: str, code: int, message: str) -> None:
    done = run("--mode", "validate", "-c", str(DEFAULT), "--config-yaml", yaml_text)
    assert done.returncode == code, done.stderr
    assert message in (done.stdout + done.stderr)


def test_config_yaml_alone() -> None:
    text = (ROOT / "configs" / "default.yaml").read_text()
    done = run("--mode", "validate", "--config-yaml", text)
    assert (done.returncode, done.stdout) == (0, "configuration '' OK\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mode", "validate"), "at least one of --config-path or --config-yaml"),
        (("--mode", "init_only", "-c", "x"), "invalid choice: 'init_only'"),
        (("--concurrency", "0", "-c", "x"), "must be at least 1"),
        (("--log-level", "loud", "-c", "x"), "invalid choice: 'loud'"),
        (("--drain-time-s", "-1", "-c", "x"), "must not be negative"),
        (("--drain-time-s", "nan", "-c", "x"), "must not be negative"),
        (("--drain-time-s", "inf", "-c", "x"), "must be finite"),
        (("--drain-strategy", "slow", "-c", "x"), "invalid choice: 'slow' (choose from 'gradual', 'immediate')"),
        (("--file-flush-interval-msec", "0", "-c", "x"), "must be at least 1"),
        (("--file-flush-min-size-kb", "-1", "-c", "x"), "must not be negative"),
    ],
)
def test_bad_command_line(args: tuple[str, ...], message: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_envoy_flags_accepted() -> None:
    done = run("--mode", "validate", "-c", str(DEFAULT), "--concurrency", "2", "-l", "warn",
               "--service-cluster", "edge", "--service-node", "n1", "--drain-time-s", "5",
               "--base-id", "3", "--drain-strategy", "immediate", "--file-flush-interval-msec", "100",
               "--file-flush-min-size-kb", "0")
    assert done.returncode == 0, done.stderr


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("pyproxy ")


def test_validate_uses_native_when_built() -> None:
    pytest.importorskip("pyproxy._native")  # native: drop the skip once the engine is built
    done = run("--mode", "validate", "-c", str(DEFAULT), "-l", "debug")
    assert done.returncode == 0
    assert "not importable" not in done.stderr
