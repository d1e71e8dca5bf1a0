"""`google.protobuf.Duration` as Envoy reads it from YAML/JSON.

Envoy accepts the proto3 JSON form, a string of seconds with up to nine fractional digits and an
`s` suffix (`"5s"`, `"0.25s"`, `"1.000000001s"`), and, from YAML, the message form
`{seconds: 1, nanos: 500000000}`. Nothing else: `"250ms"` and bare numbers are errors in Envoy,
so they are errors here.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["Duration"]

_STRING = re.compile(r"(-?)(\d+)(?:\.(\d{1,9}))?s")
# google.protobuf.Duration's own bound: +-10,000 years.
_MAX_SECONDS = 315_576_000_000


class Duration:
    """A non-negative duration, kept exactly as seconds + nanos."""

    __slots__ = ("nanos", "seconds")

    def __init__(self, seconds: int = 0, nanos: int = 0) -> None:
        self.seconds = seconds
        self.nanos = nanos

    @classmethod
    def parse(cls, value: Any) -> Duration:
        """Parses Envoy's JSON/YAML forms; raises ValueError with a message for the user."""
        if isinstance(value, str):
            m = _STRING.fullmatch(value.strip())
            if m is None:
                raise ValueError(
                    f"{value!r} is not a duration; expected seconds with an 's' suffix, "
                    "e.g. \"5s\" or \"0.25s\""
                )
            if m.group(1):
                raise ValueError(f"{value!r}: a duration must not be negative")
            seconds = int(m.group(2))
            nanos = int((m.group(3) or "").ljust(9, "0"))
        elif isinstance(value, dict):
            unknown = set(value) - {"seconds", "nanos"}
            if unknown:
                raise ValueError(
                    f"{value!r} is not a duration; the object form has only 'seconds' and 'nanos'"
                )
            seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
            # proto3 JSON writes int64 as a string
            if isinstance(seconds, str) and seconds.isdigit():
                seconds = int(seconds)
            if not all(type(v) is int for v in (seconds, nanos)):
                raise ValueError(f"{value!r} is not a duration; 'seconds' and 'nanos' are integers")
            if seconds < 0 or nanos < 0:
                raise ValueError(f"{value!r}: a duration must not be negative")
            if nanos > 999_999_999:
                raise ValueError(f"{value!r}: 'nanos' must be at most 999999999")
        else:
            raise ValueError(
                f"{value!r} is not a duration; expected a string such as \"5s\" or \"0.25s\""
            )
        if seconds > _MAX_SECONDS:
            raise ValueError(f"{value!r}: a duration must be at most {_MAX_SECONDS}s")
        return cls(seconds, nanos)

    @property
    def ms(self) -> int:
        """Whole milliseconds, rounded up: a positive duration never becomes 0 ("disabled")."""
        return self.seconds * 1000 + math.ceil(self.nanos / 1_000_000)

    @property
    def ms_floor(self) -> int:
        """Whole milliseconds, rounded down, as Envoy reads a stream duration (under 1 ms: 0,
        "disabled")."""
        return self.seconds * 1000 + self.nanos // 1_000_000

    def is_zero(self) -> bool:
        return self.seconds == 0 and self.nanos == 0

    def to_json(self) -> str:
        """Envoy's canonical JSON form (`"0.250s"`), as its config dump would show it."""
        if self.nanos == 0:
            return f"{self.seconds}s"
        frac = f"{self.nanos:09d}"
        for width in (3, 6, 9):  # proto3 JSON uses 0, 3, 6 or 9 fractional digits
            if frac[width:].strip("0") == "":
                return f"{self.seconds}.{frac[:width]}s"
        return f"{self.seconds}.{frac}s"  # pragma: no cover - the loop always returns

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Duration):
            return NotImplemented
        return (self.seconds, self.nanos) == (other.seconds, other.nanos)

    def __hash__(self) -> int:
        return hash((self.seconds, self.nanos))

    def __repr__(self) -> str:
        return f"Duration({self.to_json()!r})"
