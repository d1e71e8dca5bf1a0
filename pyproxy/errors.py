"""The pyproxy exception tree.

The compiled engine (`pyproxy._native`) imports these classes to raise them, so the names are part
of the native contract: never rename them without changing `native/` too.
"""

from __future__ import annotations

__all__ = ["BindError", "ConfigError", "EngineError", "PyproxyError"]


class PyproxyError(Exception):
    """Base class of every error pyproxy raises on purpose."""


class ConfigError(PyproxyError):
    """A configuration that cannot be loaded, validated or compiled.

    `path` is the dotted JSON path of the offending field in the bootstrap
    (`static_resources.clusters[0].lb_policy`), or `""` when the error is about the whole
    document or comes from the engine, which raises `ConfigError("message")` with a single string.
    `message` says what is wrong and what is supported, without the path.
    """

    def __init__(self, message_or_path: str, message: str | None = None) -> None:
        if message is None:
            path, message = "", message_or_path
        else:
            path = message_or_path
        self.path: str = path
        self.message: str = message
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self):  # keep both attributes across pickling (multiprocessing, pytest-xdist)
        return (type(self), (self.path, self.message))


class BindError(PyproxyError):
    """A listener or the admin server could not bind its address (in use, not permitted, ...)."""


class EngineError(PyproxyError):
    """The engine failed at run time (worker start, shutdown) for a reason other than config."""
