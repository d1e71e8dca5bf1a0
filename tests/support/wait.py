"""Polling with a deadline: stats and other state that a worker updates just after the event a
test waits on (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT_S = 5.0


def wait_for(pred: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT_S, what: str = "") -> Any:
    """Polls `pred` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(0.01)


def wait_stat(proxy: Any, name: str, expected: int, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Stats are updated just after a response is written: poll until `name` == `expected`."""
    last: list[Any] = [None]

    def ok() -> bool:
        last[0] = proxy.stats().get(name)
        return last[0] == expected

    try:
        wait_for(ok, timeout, name)
    except AssertionError:
        raise AssertionError(f"stat {name} = {last[0]!r}, expected {expected}") from None
