"""The pure renderers of pyproxy/admin/formats.py."""

from __future__ import annotations

import calendar

import pytest

from pyproxy.admin import formats

EPOCH = calendar.timegm((2026, 11, 24, 13, 35, 27))


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (EPOCH + 0.158, "2026-11-24T13:35:27.158Z"),
        (EPOCH, "2026-11-24T13:35:27Z"),  # protobuf prints no fraction when it is zero
        (EPOCH + 0.0009, "2026-11-24T13:35:27Z"),  # Envoy keeps milliseconds
        (EPOCH + 0.5, "2026-11-24T13:35:27.500Z"),
    ],
)
def test_timestamp(seconds: float, expected: str) -> None:
    assert formats.timestamp(seconds) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(600, "600s"), (0.25, "0.250s"), (1.0005, "1.000500s"), (0, "0s"), (1e-9, "0.000000001s")],
)
def test_duration(seconds: float, expected: str) -> None:
    assert formats.duration(seconds) == expected


@pytest.mark.parametrize(
    ("message", "mask", "expected"),
    [
        ({"a": 1, "b": 2}, "a", {"a": 1}),
        ({"a": {"x": 1, "y": 2}, "b": 2}, "a.y", {"a": {"y": 2}}),
        ({"l": [{"x": 1, "y": 2}, {"x": 3}]}, "l.x", {"l": [{"x": 1}, {"x": 3}]}),
        (
            {"@type": "t", "c": {"@type": "u", "n": 1, "m": 2}},
            "c.n",
            {"@type": "t", "c": {"@type": "u", "n": 1}},
        ),
        ({"a": {"x": 1}}, "a.nope", {}),
        ({"a": 1, "b": 2, "c": 3}, "c,a", {"a": 1, "c": 3}),
    ],
)
def test_trim_is_field_mask_semantics(message: dict, mask: str, expected: dict) -> None:
    assert formats.trim(message, formats._mask_paths(mask)) == expected


def test_version_string_has_envoys_shape() -> None:
    parts = formats.version_string("1.2.3").split("/")
    assert parts == ["pyproxy", "1.2.3", "Clean", "RELEASE", "none"]


def test_build_version_drops_zero_fields_outside_server_info() -> None:
    assert formats.build_version("0.1.0", print_defaults=False)["version"] == {"minor_number": 1}
    assert formats.build_version("0.1.0", print_defaults=True)["version"] == {
        "major_number": 0,
        "minor_number": 1,
        "patch": 0,
    }


def test_clusters_reports_unhealthy_host_and_locality() -> None:
    config = {
        "backend": {
            "name": "backend",
            "alt_stat_name": "be",
            "load_assignment": {
                "endpoints": [
                    {
                        "locality": {"region": "eu", "zone": "a"},
                        "priority": 1,
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "hostname": "h1",
                                    "address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
                                }
                            }
                        ],
                    }
                ]
            },
        }
    }
    live = [
        {"name": "backend", "hosts": [{"address": "10.0.0.1", "port": 80, "weight": 2,
                                      "healthy": False, "health_flags": 1}]}
    ]
    text = formats.clusters_text(live, config)
    assert "backend::observability_name::be\n" in text
    assert "backend::10.0.0.1:80::health_flags::/failed_active_hc\n" in text
    assert "backend::10.0.0.1:80::region::eu\nbackend::10.0.0.1:80::zone::a\n" in text
    assert "backend::10.0.0.1:80::priority::1\n" in text
    host = formats.clusters_json(live, config)["cluster_statuses"][0]["host_statuses"][0]
    assert host["health_status"] == {"failed_active_health_check": True, "eds_health_status": "HEALTHY"}
    assert (host["weight"], host["hostname"], host["priority"]) == (2, "h1", 1)
    assert host["locality"] == {"region": "eu", "zone": "a"}


def test_clusters_show_each_prioritys_first_thresholds() -> None:
    """As the envoy binary prints them: the first entry of a priority counts, its unset limits
    are Envoy's defaults."""
    config = {"up": {"name": "up", "circuit_breakers": {"thresholds": [
        {"max_requests": 1, "track_remaining": True},
        {"max_requests": 5, "max_connections": 7},
        {"priority": "HIGH", "max_pending_requests": 9},
    ]}}}
    text = formats.clusters_text([{"name": "up", "hosts": []}], config)
    assert text.splitlines()[1:9] == [
        "up::default_priority::max_connections::1024",
        "up::default_priority::max_pending_requests::1024",
        "up::default_priority::max_requests::1",
        "up::default_priority::max_retries::3",
        "up::high_priority::max_connections::1024",
        "up::high_priority::max_pending_requests::9",
        "up::high_priority::max_requests::1024",
        "up::high_priority::max_retries::3",
    ]


def test_empty_lists_render_as_envoy_does() -> None:
    assert formats.listeners_json([]) == {}
    assert formats.clusters_json([], {}) == {}
    assert formats.listeners_text([("l", "::1", 8080)]) == "l::[::1]:8080\n"
