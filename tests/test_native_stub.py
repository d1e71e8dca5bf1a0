"""pyproxy/_native.pyi must describe the compiled module exactly: same functions, same classes,
same methods and properties, same parameter names. A drift either way fails here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pyproxy import _native

STUB = Path(__file__).resolve().parents[1] / "pyproxy" / "_native.pyi"


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def params(fn: ast.FunctionDef) -> list[str]:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    return [n for n in names if n != "self"]


def public(names: object) -> set[str]:
    return {n for n in names if not n.startswith("_")}  # type: ignore[union-attr]


def test_module_level_names_match() -> None:
    tree = stub_tree()
    stub = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert stub == public(dir(_native))


def test_functions_match_parameters() -> None:
    for node in stub_tree().body:
        if isinstance(node, ast.FunctionDef):
            sig = inspect.signature(getattr(_native, node.name))
            assert list(sig.parameters) == params(node), node.name


@pytest.mark.parametrize("cls", [n for n in stub_tree().body if isinstance(n, ast.ClassDef)], ids=lambda c: c.name)
def test_class_members_match(cls: ast.ClassDef) -> None:
    runtime = getattr(_native, cls.name)
    stub_members = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert public(stub_members) == public(dir(runtime))
    for name, fn in stub_members.items():
        if name.startswith("_"):
            continue
        member = getattr(runtime, name)
        if isinstance(member, property) or type(member).__name__ == "getset_descriptor":
            assert any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list), name
            continue
        sig = inspect.signature(member)
        assert [p for p in sig.parameters if p != "self"] == params(fn), name
