"""The documentation's examples run: every row of docs/bad-inputs.md raises what it says,
and every Python block of the README and of docs/*.md executes.

A block runs in a fresh namespace, in a temporary folder (examples may write files). A
block that imports a package this environment lacks (torch, onnx ...) is skipped, so the
docs' tests pass with or without the optional extras; shell commands are in ```bash
blocks, which are never run."""
import ast
import glob
import importlib.util
import os
import re

import numpy as np
import pytest

import fastlinear as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    path = os.path.join(ROOT, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not beside the tests")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _bad_input_rows():
    rows = re.findall(r"^\| `(.+)` \| `(\w+)` \| `(.*)` \|$", _read("docs/bad-inputs.md"),
                      re.MULTILINE)
    assert len(rows) >= 25, "the table of bad inputs was not found"
    return rows


@pytest.fixture(scope="module")
def rows():
    return _bad_input_rows()


def test_every_documented_bad_input_raises_as_documented(rows, tmp_path, monkeypatch):
    import builtins
    monkeypatch.chdir(tmp_path)  # rows that load models write their files here
    for expression, exc_name, message in rows:
        namespace = {"fl": fl, "np": np, "layer": fl.Linear(100, 50), "sq": fl.Linear(4, 4),
                     "x": np.ones((3, 100))}
        exc = getattr(builtins, exc_name)
        with pytest.raises(exc) as info:
            eval(expression, namespace)
        assert message in str(info.value), (expression, str(info.value))


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def _documents():
    """README.md and those of docs/*.md that hold Python blocks, as paths relative to
    the repository root."""
    docs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path, encoding="utf-8") as f:
            if _python_blocks(f.read()):
                docs.append(os.path.relpath(path, ROOT).replace(os.sep, "/"))
    return ["README.md", *docs]


def _missing_imports(block):
    """Top-level packages the block imports that are not installed."""
    names = set()
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def test_readme_has_a_python_example():
    assert _python_blocks(_read("README.md")), "the README's Python example was not found"


@pytest.mark.parametrize("name", _documents())
def test_python_blocks_run(name, tmp_path, monkeypatch):
    blocks = _python_blocks(_read(name))
    assert blocks, f"no Python blocks found in {name}"
    monkeypatch.chdir(tmp_path)
    skipped = []
    for i, block in enumerate(blocks, 1):
        missing = _missing_imports(block)
        if missing:
            skipped.append(f"block {i} needs {', '.join(missing)}")
            continue
        exec(compile(block, f"{name}, Python block {i}", "exec"), {})
    if skipped:
        pytest.skip(f"{name}: {'; '.join(skipped)} (not installed)")
