"""The documentation's examples run: every row of docs/bad-inputs.md raises what it says,
and every Python block of the README executes."""
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


def test_every_documented_bad_input_raises_as_documented(rows):
    import builtins
    for expression, exc_name, message in rows:
        namespace = {"fl": fl, "np": np, "layer": fl.Linear(100, 50), "sq": fl.Linear(4, 4),
                     "x": np.ones((3, 100))}
        exc = getattr(builtins, exc_name)
        with pytest.raises(exc) as info:
            eval(expression, namespace)
        assert message in str(info.value), (expression, str(info.value))


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _read("README.md"), re.DOTALL)
    assert len(blocks) >= 2, "the README's Python examples were not found"
    monkeypatch.chdir(tmp_path)  # examples may write files
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
