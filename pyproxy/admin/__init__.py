"""Envoy-compatible admin interface (`/stats`, `/config_dump`, `/clusters`, ...); see docs/admin.md."""

from pyproxy.admin.server import AdminServer

__all__ = ["AdminServer"]
