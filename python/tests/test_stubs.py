"""The type stubs (qforge/_qforge.pyi) list exactly the native classes' public members, and every
public member has a docstring (help() is useful)."""

import ast
import inspect
from pathlib import Path

import pytest

import qforge

STUB = Path(qforge.__file__).with_name("_qforge.pyi")


def stub_members():
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    return out


@pytest.mark.parametrize("cls", [qforge.Model, qforge.Staged, qforge.Executable], ids=lambda c: c.__name__)
def test_stubs_match_and_everything_is_documented(cls):
    public = {n for n in dir(cls) if not n.startswith("_")}
    assert stub_members()[cls.__name__] == public
    assert cls.__doc__ and ">>>" in cls.__doc__
    undocumented = [n for n in public if not inspect.getdoc(getattr(cls, n))]
    assert undocumented == []


def test_load_is_documented_with_examples():
    doc = inspect.getdoc(qforge.load)
    assert ">>>" in doc and "Raises" in doc
