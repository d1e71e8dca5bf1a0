"""Reads the real Envoy 1.40 responses saved in tests/admin/data/envoy/ (see its README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
ENVOY = DATA / "envoy"

#: Admin response headers whose value is fixed (date varies; framing is transfer-encoding).
FIXED_HEADERS = ("content-type", "cache-control", "x-content-type-options")


@dataclass(frozen=True)
class Capture:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def capture(name: str) -> Capture:
    raw = (ENVOY / f"{name}.http").read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Capture(int(status_line.split()[1]), headers, body)
