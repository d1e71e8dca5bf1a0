"""Reading a bootstrap: YAML/JSON text or file, Envoy's `--config-yaml` merge, decoding.

`load()` is the one entry point the CLI and `Proxy` use: it returns the merged raw document (for
the admin `/config_dump`) and the decoded, validated `Bootstrap`. Every failure is a ConfigError
whose path is the dotted JSON path (`static_resources.clusters[0].lb_policy`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
import typing
from typing import Any

import msgspec
import yaml

from ..errors import ConfigError
from . import model
from .duration import Duration
from .validate import validate

__all__ = ["decode", "load", "merge", "parse_text", "read_file"]

ConfigSource = str | os.PathLike[str] | dict[str, Any]

# Known Envoy fields that people reach for and pyproxy does not support, with a word on why.
_UNSUPPORTED_HINTS = {
    "layered_runtime": "runtime layers are not supported",
    "dynamic_resources": "xDS is not supported yet; use static_resources",
    "transport_socket": "TLS is not supported yet",
    "filter_chain_match": "pyproxy supports exactly one filter chain, which matches everything",
    "http2_protocol_options": "HTTP/2 is not supported yet",
    "hedge_policy": "request hedging is not supported yet",
    "cluster_type": "custom cluster types are not supported; use type: STATIC or STRICT_DNS",
    "scoped_routes": "scoped routes are not supported; use an inline route_config",
    "secrets": "TLS secrets are not supported yet",
    # Unknown only on a listener (the connection manager has its own access_log).
    "access_log": "a listener's own (connection) access logs are not supported yet; the "
    "http_connection_manager's access_log logs every request",
    "access_log_options": "access log flushes at a request's start or on an interval are not "
    "supported yet; a line is written when the request ends",
}

# Fields the model declares only so that validate can refuse them with a message of their own.
_REFUSED_FIELDS = frozenset({
    "rds", "traceable_filter", "runtime_filter", "grpc_status_filter", "extension_filter",
    "metadata_filter", "log_type_filter",
})


# libyaml's parser when PyYAML has it (its wheels do): the pure-Python one spends 0.56 s on a
# 1,000-route, 1,000-cluster file (perf/ scenario 5), libyaml 0.10 s. Same YAML 1.1 safe schema.
# A document libyaml refuses is parsed again by the pure-Python loader, whose error names the
# line and column of the problem itself (libyaml's often points past it, at the stream end).
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_text(text: str, *, source: str = "config") -> dict[str, Any]:
    """Parses YAML (a superset of JSON) into a dict. An empty document is an empty bootstrap."""
    try:
        try:
            doc = yaml.load(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, UnicodeError):  # libyaml encodes to UTF-8 first: lone surrogates
            doc = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"unable to parse {source} as YAML/JSON{where}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            "", f"{source}: expected a mapping (a Bootstrap), got {type(doc).__name__}"
        )
    return doc


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and parses a bootstrap file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"unable to read file {os.fspath(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"unable to read file {os.fspath(path)!r}: {e}") from None
    return parse_text(text, source=f"file {os.fspath(path)!r}")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merges `override` into a copy of `base` as Envoy merges `--config-yaml` into the file
    (protobuf MergeFrom): mappings merge key by key, lists are concatenated, scalars replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = old + copy.deepcopy(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _source_to_raw(config: ConfigSource) -> dict[str, Any]:
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if isinstance(config, os.PathLike):
        return read_file(config)
    if isinstance(config, str):
        text = config.strip()
        # A one-line string that names an existing file, or looks like a file name, is a path;
        # anything else is the document itself.
        one_line = "\n" not in text and not text.startswith("{")
        if one_line and (os.path.exists(text) or re.search(r"\.(ya?ml|json)$", text)):
            return read_file(text)
        return parse_text(config, source="config string")
    raise TypeError(f"config must be a path, a YAML/JSON string or a dict, not {type(config)!r}")


def load(
    config: ConfigSource | None = None, *, config_yaml: str | None = None
) -> tuple[dict[str, Any], model.Bootstrap]:
    """Loads, merges, decodes and validates; returns (raw merged document, Bootstrap)."""
    if config is None and not config_yaml:
        raise ConfigError("", "at least one of --config-path or --config-yaml must be given")
    raw = _source_to_raw(config) if config is not None else {}
    if config_yaml:
        raw = merge(raw, parse_text(config_yaml, source="--config-yaml"))
    return raw, decode(raw)


def decode(raw: dict[str, Any]) -> model.Bootstrap:
    """Decodes a raw document into a validated Bootstrap."""
    try:
        bootstrap = msgspec.convert(raw, model.Bootstrap, strict=True, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        raise _translate(str(e), raw) from None
    validate(bootstrap)
    return bootstrap


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Duration:
        return Duration.parse(obj)
    # msgspec's decode-hook contract: NotImplementedError means "not a type this hook handles",
    # which msgspec reports as a validation error naming the path.
    raise NotImplementedError(typ)


# --- turning msgspec's messages into ours ----------------------------------------------------

_MSGSPEC = re.compile(r"(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_TOKEN = re.compile(r'\.(?P<field>[^.\[]+)|\[(?P<index>\d+|\.\.\.)\]|\["(?P<key>[^"]+)"\]')
# Field names that contain dots (map keys made fields); msgspec writes them bare in its paths.
_DOTTED_FIELDS = (model.HTTP_PROTOCOL_OPTIONS_KEY,)


def _normalize_path(msgspec_path: str) -> str:
    for name in _DOTTED_FIELDS:
        msgspec_path = msgspec_path.replace(f".{name}", f'["{name}"]')
    return msgspec_path.lstrip(".")


def _tokens(path: str) -> list[str | int]:
    out: list[str | int] = []
    for t in _TOKEN.finditer(path if path.startswith((".", "[")) else "." + path):
        if t.group("field") is not None:
            out.append(t.group("field"))
        elif t.group("key") is not None:
            out.append(t.group("key"))
        elif t.group("index") != "...":
            out.append(int(t.group("index")))
    return out


def _value_at(raw: Any, path: str) -> Any:
    node = raw
    for tok in _tokens(path):
        try:
            node = node[tok]
        except (KeyError, IndexError, TypeError):
            return None
    return node


@functools.cache
def _bootstrap_info() -> msgspec.inspect.Type:
    return msgspec.inspect.type_info(model.Bootstrap)


def _unwrap(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    if isinstance(t, msgspec.inspect.UnionType):
        for member in t.types:
            if not isinstance(member, msgspec.inspect.NoneType):
                return member
    if isinstance(t, msgspec.inspect.Metadata):
        return _unwrap(t.type)
    return t


def _type_at(path: str) -> msgspec.inspect.Type | None:
    t: msgspec.inspect.Type = _bootstrap_info()
    for tok in _tokens(path):
        t = _unwrap(t)
        if isinstance(tok, int) and isinstance(t, msgspec.inspect.ListType):
            t = t.item_type
        elif isinstance(tok, str) and isinstance(t, msgspec.inspect.StructType):
            field = next((f for f in t.fields if f.encode_name == tok), None)
            if field is None:
                return None
            t = field.type
        elif isinstance(tok, str) and isinstance(t, msgspec.inspect.DictType):
            t = t.value_type
        else:
            return None
    return _unwrap(t)


def _literal_values(path: str) -> list[str]:
    """The allowed values of the Literal field at `path`, in the order model.py declares them
    (msgspec.inspect sorts them, and the declared order puts the default first)."""
    parent, _, field = path.rpartition(".")
    owner = _type_at(parent)
    if not isinstance(owner, msgspec.inspect.StructType):
        return []
    attr = next((f.name for f in owner.fields if f.encode_name == field), None)
    hint = typing.get_type_hints(owner.cls).get(attr) if attr else None
    for t in (hint, *typing.get_args(hint)):  # Literal[...] or Literal[...] | None
        if typing.get_origin(t) is typing.Literal:
            return [str(v) for v in typing.get_args(t)]
    return []


def _join(path: str, field: str) -> str:
    if "." in field:
        return f'{path}["{field}"]'
    return f"{path}.{field}" if path else field


def _translate(text: str, raw: dict[str, Any]) -> ConfigError:
    parsed = _MSGSPEC.fullmatch(text)
    assert parsed is not None
    msg = parsed.group("msg")
    path = _normalize_path(parsed.group("path") or "")

    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", msg):
        field = unknown.group(1)
        owner = _type_at(path)
        supported = (
            [f.encode_name for f in owner.fields if f.encode_name not in _REFUSED_FIELDS]
            if isinstance(owner, msgspec.inspect.StructType)
            else []
        )
        hint = _UNSUPPORTED_HINTS.get(field)
        close = difflib.get_close_matches(field, supported, n=1)
        parts = [f"unknown field {field!r}"]
        if hint:
            parts.append(hint)
        elif close:
            parts.append(f"did you mean {close[0]!r}")
        if supported:
            parts.append(f"supported here: {', '.join(supported)}")
        else:
            parts.append("this object takes no fields")
        detail = "; ".join(parts)
        return ConfigError(_join(path, field), detail)

    if missing := re.fullmatch(r"Object missing required field `(.*)`", msg):
        return ConfigError(_join(path, missing.group(1)), "required field is missing")

    if enum := re.fullmatch(r"Invalid enum value (.*)", msg):
        allowed = _literal_values(path)
        if path.endswith("@type") and len(allowed) == 1:
            return ConfigError(path, f"{enum.group(1)} is not supported; expected {allowed[0]}")
        return ConfigError(path, f"{enum.group(1)} is not one of {', '.join(map(str, allowed))}")

    if expected := re.fullmatch(r"Expected `(.*?)`(.*)", msg):
        kind, rest = expected.group(1), expected.group(2)
        value = _value_at(raw, path)
        if rest.startswith(", got"):
            got = f"{value!r}" if value is not None and not isinstance(value, dict | list) else (
                rest.removeprefix(", got ").strip("`")
            )
            return ConfigError(path, f"expected {_KIND.get(kind, kind)}, got {got}")
        expected_kind = _KIND.get(kind, kind)
        return ConfigError(path, f"{value!r} is out of range; expected {expected_kind}{rest}")

    if msg.startswith("Invalid value") and path.endswith("typed_config.@type") and ".access_log[" in path:
        value = _value_at(raw, path)
        kinds = ", ".join((model.FILE_ACCESS_LOG_TYPE_URL, model.STDOUT_ACCESS_LOG_TYPE_URL,
                           model.STDERR_ACCESS_LOG_TYPE_URL))
        return ConfigError(path, f"{value!r} is not a supported access logger; expected one of {kinds}")

    return ConfigError(path, msg[0].lower() + msg[1:] if msg else msg)


_KIND = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "object": "a mapping",
    "array": "a list",
    "str | null": "a string",
    "int | null": "an integer",
    "bool | null": "a boolean",
    "object | null": "a mapping",
    "array | null": "a list",
}
