"""Bad arguments to `pyproxy.Proxy` and the engine's drain settings: a ValueError that names
the argument and the value, before anything starts."""

from __future__ import annotations

import pytest

from pyproxy import Proxy
from tests.support.configs import bootstrap, cluster, route

CONFIG = bootstrap([route("/", "a")], [cluster("a", 1)])


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_drain_time_must_be_finite_and_not_negative(value: float) -> None:
    with pytest.raises(ValueError, match=rf"drain_time_s must be a finite number of seconds.*got {value}"):
        Proxy(CONFIG, drain_time_s=value)


def test_drain_strategy_must_be_gradual_or_immediate() -> None:
    with pytest.raises(ValueError, match="drain_strategy must be \"gradual\" or \"immediate\", got 'slow'"):
        Proxy(CONFIG, drain_strategy="slow")


def test_engine_refuses_bad_drain_settings() -> None:
    native = pytest.importorskip("pyproxy._native")
    engine = native.Engine(1)
    with pytest.raises(ValueError, match="drain strategy \"slow\""):
        engine.set_drain_strategy("slow")
    with pytest.raises(ValueError, match="drain time -1: must be a finite number of seconds"):
        engine.set_drain_time(-1.0)
    engine.set_drain_time(1e20)  # too long for a Duration: a drain that never ends


def test_file_flush_settings_are_checked_and_shown() -> None:
    with pytest.raises(ValueError, match="file_flush_interval_ms must be at least 1, got 0"):
        Proxy(CONFIG, file_flush_interval_ms=0)
    with pytest.raises(ValueError, match="file_flush_min_size_kb must not be negative, got -1"):
        Proxy(CONFIG, file_flush_min_size_kb=-1)
    from pyproxy.admin.formats import command_line_options

    # Envoy's /server_info shows the interval as a duration (--file-flush-interval-msec 250 gave
    # "0.250s"), and 0 for the minimum size whatever it is.
    options = command_line_options(Proxy(CONFIG, file_flush_interval_ms=250, file_flush_min_size_kb=8).command_line)
    assert (options["file_flush_interval"], options["file_flush_min_size"]) == ("0.250s", 0)
