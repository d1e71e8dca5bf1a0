"""Fixtures shared by every test area: a recording upstream and running proxies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A recording upstream on 127.0.0.1:<port 0>."""
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture
def make_upstream() -> Iterator[Callable[[], Upstream]]:
    """Starts as many extra upstreams as a test needs."""
    started: list[Upstream] = []

    def make() -> Upstream:
        u = Upstream().start()
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., Any]]:
    """Starts an embedded `pyproxy.Proxy` on a bootstrap dict; stops it (and checks it closed
    every downstream connection) at teardown."""
    from pyproxy import Proxy

    started: list[Proxy] = []

    def make(config: dict[str, Any], concurrency: int = 1, **kw: Any) -> Proxy:
        p = Proxy(config, concurrency=concurrency, **kw)
        p.start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop(timeout_s=2.0)
