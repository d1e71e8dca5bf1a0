"""pyproxy: an Envoy-compatible HTTP/1.1 edge proxy with a Rust data plane.

    from pyproxy import Proxy
    with Proxy("configs/default.yaml") as proxy:
        proxy.wait()
"""

__version__ = "0.1.0"

# __version__ comes first: pyproxy.cli imports it from here.
from . import errors
from .proxy import Proxy

__all__ = ["Proxy", "__version__", "errors"]
