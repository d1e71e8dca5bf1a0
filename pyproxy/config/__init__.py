"""The Envoy v3 bootstrap subset pyproxy accepts: loading, validation, lowering to the engine.

    raw, bootstrap = load("configs/default.yaml", config_yaml=None)  # ConfigError on any problem
    snapshot = snapshot_bytes(bootstrap)                               # bytes for pyproxy._native

docs/config.md lists every supported field with its default and what is rejected.
"""

from .duration import Duration
from .load import decode, load, merge, parse_text, read_file
from .lower import lower, snapshot_bytes
from .model import Bootstrap
from .validate import validate

__all__ = [
    "Bootstrap",
    "Duration",
    "decode",
    "load",
    "lower",
    "merge",
    "parse_text",
    "read_file",
    "snapshot_bytes",
    "validate",
]
