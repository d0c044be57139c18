"""The Python API: construction, parameters, settings, errors with clear messages."""
import importlib.machinery
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _core

from conftest import assert_close, random_layer


def test_repr_and_attributes():
    layer = fl.Linear(100, 50)
    auto = fl._config.resolve_backend("auto")
    assert repr(layer) == ("Linear(in_features=100, out_features=50, bias=True, "
                           f"backend='auto' ({auto}))")
    assert (repr(fl.Linear(3, 2, bias=False, backend="blas"))
            == "Linear(in_features=3, out_features=2, bias=False, backend='blas')")
    assert (layer.in_features, layer.out_features) == (100, 50)
    assert layer.dtype == np.float32 and layer.backend == "auto"
    assert layer.resolved_backend == auto
    for backend in ("native", "blas"):
        assert fl.Linear(3, 2, backend=backend).resolved_backend == backend
    with pytest.raises(AttributeError):
        layer.resolved_backend = "blas"
    assert layer.weight.shape == (50, 100) and layer.bias.shape == (50,)
    assert fl.Linear(3, 2, bias=False).bias is None
    assert fl.Linear(3, 2, dtype=np.float64).weight.dtype == np.float64


def test_repr_shows_a_non_default_dtype():
    """A float64 module's repr says so (float32, the default, is left out, as torch
    leaves it out); the other settings keep their places."""
    f64 = np.float64
    assert repr(fl.Linear(3, 2, dtype=f64, backend="native")) == (
        "Linear(in_features=3, out_features=2, bias=True, dtype='float64', backend='native')")
    assert "dtype" not in repr(fl.Linear(3, 2, dtype=np.float32))
    assert repr(fl.Linear(64, 2, weight_dtype="int4", group_size=32, backend="native")) == (
        "Linear(in_features=64, out_features=2, bias=True, weight_dtype='int4', "
        "group_size=32, backend='native')")
    assert (repr(fl.LayerNorm(4, dtype=f64))
            == "LayerNorm((4,), eps=1e-05, elementwise_affine=True, dtype='float64')")
    assert (repr(fl.LayerNorm(4, bias=False))
            == "LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=False)")
    assert repr(fl.BatchNorm1d(3, dtype=f64)) == (
        "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, "
        "dtype='float64')")
    assert "dtype" not in repr(fl.BatchNorm1d(3))
    # a repr's arguments build the same module again
    for module in (fl.Linear(3, 2, dtype=f64, weight_dtype="float64", backend="blas"),
                   fl.LayerNorm(4, dtype=f64), fl.BatchNorm1d(3, dtype=f64)):
        text = repr(module).replace(" (native)", "").replace(" (blas)", "")
        assert repr(eval(text, {**vars(fl)})) == repr(module)
    # the modules without a dtype (they compute in their input's)
    for cls in (fl.ReLU, fl.SiLU, fl.Identity, fl.Softmax, fl.Flatten):
        assert "dtype" not in repr(cls())


def test_init_is_torch_uniform_and_seeded():
    layer = fl.Linear(400, 300, rng=0)
    bound = 1 / np.sqrt(400)
    for p in (layer.weight, layer.bias):
        assert np.all(np.abs(p) <= bound)
        assert np.abs(p).max() > 0.95 * bound          # spans the interval
        assert abs(float(p.mean())) < 0.1 * bound      # centred
    np.testing.assert_array_equal(fl.Linear(400, 300, rng=0).weight, layer.weight)
    gen = np.random.default_rng(0)
    np.testing.assert_array_equal(fl.Linear(400, 300, rng=gen).weight, layer.weight)
    assert not np.array_equal(fl.Linear(400, 300, rng=1).weight, layer.weight)
    old = layer.weight.copy()
    layer.reset_parameters(rng=5)
    assert not np.array_equal(layer.weight, old)
    np.testing.assert_array_equal(layer.weight, fl.Linear(400, 300, rng=5).weight)


def test_parameters_are_read_only_and_reassignable():
    layer = random_layer(6, 4, np.float32)
    x = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError):
        layer.weight[0, 0] = 1.0
    with pytest.raises(ValueError):
        layer.weight.flags.writeable = True
    with pytest.raises(ValueError):
        layer.bias[0] = 1.0
    new_w = np.arange(24, dtype=np.float64).reshape(4, 6)
    layer.weight = new_w
    new_w[0, 0] = 100.0  # the layer keeps its own copy
    assert layer.weight.dtype == np.float32 and layer.weight[0, 0] == 0
    assert_close(layer(x), x, layer.weight, layer.bias)
    layer.bias = [1, 2, 3, 4]
    np.testing.assert_array_equal(layer.bias, [1, 2, 3, 4])
    assert_close(layer(x), x, layer.weight, layer.bias)
    layer.bias = None
    assert "bias=False" in repr(layer)
    assert_close(layer(x), x, layer.weight, None)


@pytest.mark.parametrize("weight_dtype", ["float32", "int8", "int4"])
def test_a_new_bias_leaves_the_packed_weights_alone(weight_dtype):
    """Setting the bias builds a new bias beside the packed weights (O(N)): the weights,
    which a forward pass in another thread may be reading, are neither repacked nor
    written. The bias is added last, so it shifts the outputs of the same layer without
    one exactly."""
    layer = fl.Linear(40, 70, rng=0, weight_dtype=weight_dtype)  # 70: an edge panel
    x = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32)
    packed = layer._params.packed
    stored = layer.state_dict()["weight"]
    layer.bias = np.arange(70)
    assert layer._params.packed is packed
    np.testing.assert_array_equal(layer.state_dict()["weight"], stored)
    expected = fl.Linear(40, 70, rng=0, weight_dtype=weight_dtype)
    expected.bias = None
    np.testing.assert_array_equal(layer(x), expected(x) + np.arange(70, dtype=np.float32))


def test_state_dict_round_trip():
    a, b = random_layer(5, 3, np.float64, seed=1), random_layer(5, 3, np.float64, seed=2)
    sd = a.state_dict()
    assert set(sd) == {"weight", "bias"}
    sd["weight"][0, 0] = 42.0  # a copy: the layer does not change
    assert a.weight[0, 0] != 42.0
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 5))
    np.testing.assert_array_equal(b(x), a(x))
    assert set(fl.Linear(5, 3, bias=False).state_dict()) == {"weight"}
    with pytest.raises(KeyError, match="missing keys \\['bias'\\]"):
        b.load_state_dict({"weight": sd["weight"]})
    with pytest.raises(KeyError, match="unexpected keys \\['extra'\\]"):
        b.load_state_dict({**sd, "extra": 1})
    with pytest.raises(ValueError, match=re.escape("weight must have shape (3, 5), got (5, 3)")):
        b.load_state_dict({"weight": sd["weight"].T, "bias": sd["bias"]})


@pytest.mark.parametrize("backend", ["auto", "native", "blas"])
def test_pickle_round_trip(backend):
    layer = random_layer(7, 5, np.float64, backend=backend)
    clone = pickle.loads(pickle.dumps(layer))
    assert repr(clone) == repr(layer) and clone.backend == backend
    x = np.random.default_rng(0).standard_normal((3, 7))
    np.testing.assert_array_equal(clone(x), layer(x))
    big = fl.Linear(256, 256)
    assert len(pickle.dumps(big)) < 1.1 * big.weight.nbytes + 4096  # weights, not packs


def test_threads_setting(threads):
    assert fl.get_num_threads() >= 1
    fl.set_num_threads(1)
    assert fl.get_num_threads() == 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="positive integer"):
            fl.set_num_threads(bad)
    assert fl.get_num_threads() == 1


def test_none_goes_back_to_the_default(threads):
    default = fl.get_num_threads()
    fl.set_num_threads(1 if default > 1 else 2)
    assert fl.get_num_threads() != default
    fl.set_num_threads(None)
    assert fl.get_num_threads() == default


@pytest.mark.filterwarnings("ignore:threads:RuntimeWarning")  # 3 threads, maybe 2 CPUs
def test_threads_context_restores_nests_and_survives_exceptions(threads):
    default = fl.get_num_threads()
    with fl.threads(1):
        assert fl.get_num_threads() == 1
        with fl.threads(3):
            assert fl.get_num_threads() == 3
            with fl.threads(None):  # the default inside
                assert fl.get_num_threads() == default
            assert fl.get_num_threads() == 3
        assert fl.get_num_threads() == 1
    assert fl.get_num_threads() == default  # nothing was set before: the default again
    fl.set_num_threads(2)
    with pytest.raises(KeyError):
        with fl.threads(1):
            raise KeyError("inside")
    assert fl.get_num_threads() == 2  # what was set before, despite the exception
    once = fl.threads(1)
    with once:
        with once:  # one instance entered twice still restores each level
            assert fl.get_num_threads() == 1
        assert fl.get_num_threads() == 1
    assert fl.get_num_threads() == 2
    for bad in (0, 1.5, "2", True):  # checked when made, before the block runs
        with pytest.raises(ValueError, match="positive integer"):
            fl.threads(bad)
    assert fl.get_num_threads() == 2


def test_threads_context_is_process_wide(threads):
    """Like set_num_threads and threadpoolctl's limits: a call from another thread
    while the block runs uses the block's count."""
    from concurrent.futures import ThreadPoolExecutor
    with fl.threads(1), ThreadPoolExecutor(1) as pool:
        assert pool.submit(fl.get_num_threads).result() == 1


def test_more_threads_than_cpus_warn_and_are_kept(threads):
    cpus = fl._config.available_cpus()
    assert 1 <= cpus <= (os.cpu_count() or cpus)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fl.set_num_threads(cpus)
    assert fl.get_num_threads() == cpus
    with pytest.warns(RuntimeWarning, match=rf"set_num_threads\({cpus + 1}\): this process "
                                            rf"has {cpus} CPU"):
        fl.set_num_threads(cpus + 1)
    assert fl.get_num_threads() == cpus + 1


def test_available_cpus_follow_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(fl._config, "cgroup_cpu_quota", lambda: 1)
    assert fl._config.available_cpus() == 1
    monkeypatch.setattr(fl._config, "cgroup_cpu_quota", lambda: None)
    assert fl._config.available_cpus() == len(os.sched_getaffinity(0))


def test_show_config(capsys):
    assert fl.show_config() is None
    text = capsys.readouterr().out
    for word in ("fastlinear", fl.__version__, "native_isa", _core.isa_name(), "openmp",
                 "num_threads", "blas"):
        assert word in text
    info = fl.show_config(mode="dicts")  # as numpy.show_config(mode="dicts")
    assert capsys.readouterr().out == ""
    assert info["fastlinear"] == fl.__version__ and info["native_isa"] == _core.isa_name()
    assert info["num_threads"] == fl.get_num_threads()
    assert info["auto_backend"] == fl._config.resolve_backend("auto")
    assert _core.isa_name() in info["supported_isas"] and isinstance(info["openmp"], bool)
    for key, value in info.items():  # each printed line is the dict's
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        assert f"{key:>15}: {shown}" in text
    with pytest.raises(ValueError, match="'stdout' or 'dicts'"):
        fl.show_config(mode="dict")


def test_isa_names():
    names = _core.supported_isas()
    assert "ref" in names and _core.isa_name() in names
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        _core.set_isa("sse9")


# -- errors ------------------------------------------------------------------------
LAYER = fl.Linear(100, 50)


@pytest.mark.parametrize("x, exc, pattern", [
    (np.ones((3, 99)), ValueError, "in_features=100, got 99"),
    (np.ones(101), ValueError, "in_features=100, got 101"),
    (np.float32(1.0), ValueError, "0-d"),
    (np.ones((2, 100), np.complex64), TypeError, "complex"),
    (np.array([["a"] * 100]), TypeError, "real numeric"),
    (np.ones((2, 100), object), TypeError, "real numeric"),
    ([[1.0] * 99], ValueError, "got 99"),
])
def test_bad_inputs(x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        LAYER(x)


def test_bool_and_int_inputs_are_cast():
    layer = random_layer(4, 2, np.float64)
    for x in (np.array([[True, False, True, True]]), np.arange(4).reshape(1, 4),
              [[1, 2, 3, 4]]):
        xf = np.asarray(x, np.float64)
        assert_close(layer(x), xf, layer.weight, layer.bias)


@pytest.mark.parametrize("out, pattern", [
    (np.empty((3, 49), np.float32), re.escape("shape (3, 50), got (3, 49)")),
    (np.empty((3, 50), np.float64), "dtype float32, got float64"),
    (np.empty((50, 3), np.float32).T, "C-contiguous"),
    (np.empty((3, 100), np.float32)[:, ::2], "C-contiguous"),
])
def test_bad_out(out, pattern):
    with pytest.raises(ValueError, match=pattern):
        LAYER(np.ones((3, 100)), out=out)


def test_read_only_out():
    out = np.empty((3, 50), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        LAYER(np.ones((3, 100)), out=out)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        LAYER(np.ones((3, 100)), out=[0.0] * 150)


@pytest.mark.parametrize("args, kwargs, exc, pattern", [
    ((0, 5), {}, ValueError, "in_features must be a positive integer, got 0"),
    ((5, -1), {}, ValueError, "out_features must be a positive integer, got -1"),
    ((2.5, 5), {}, ValueError, "in_features must be a positive integer, got 2.5"),
    (("3", 5), {}, ValueError, "in_features"),
    ((True, 5), {}, ValueError, "in_features"),
    ((3, 5), {"backend": "cuda"}, ValueError, "unknown backend 'cuda'"),
    ((3, 5), {"dtype": np.int32}, TypeError, "float32 or float64, got int32"),
    ((3, 5), {"dtype": np.float16}, TypeError, "float32 or float64"),
    ((3, 5), {"bias": "yes"}, TypeError, "bias must be True or False"),
])
def test_bad_constructor_arguments(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fl.Linear(*args, **kwargs)


def test_bad_parameter_assignment():
    layer = random_layer(4, 3, np.float32)
    before = layer.weight.copy()
    with pytest.raises(ValueError, match=re.escape("weight must have shape (3, 4), got (4, 3)")):
        layer.weight = np.ones((4, 3))
    with pytest.raises(ValueError, match=re.escape("bias must have shape (3,), got (4,)")):
        layer.bias = np.ones(4)
    with pytest.raises(TypeError, match="complex"):
        layer.weight = np.ones((3, 4), complex)
    np.testing.assert_array_equal(layer.weight, before)  # unchanged after each failure


def test_functional_errors():
    x = np.ones((2, 4))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        fl.functional.linear(x, np.ones(4))
    with pytest.raises(ValueError, match="in_features=4, got 5"):
        fl.functional.linear(np.ones((2, 5)), np.ones((3, 4)))
    with pytest.raises(ValueError, match=re.escape("bias must have shape (3,)")):
        fl.functional.linear(x, np.ones((3, 4)), np.ones(2))
    with pytest.raises(ValueError, match="unknown backend"):
        fl.functional.linear(x, np.ones((3, 4)), backend="gpu")


def test_inputs_are_never_modified():
    x = np.random.default_rng(0).standard_normal((5, 100))
    w = np.random.default_rng(1).standard_normal((50, 100)).astype(np.float32)
    copies = x.copy(), w.copy()
    LAYER(x)
    fl.functional.linear(x, w, backend="native")
    fl.functional.linear(x, w, backend="blas")
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(w, copies[1])


def _run_with_isa(value):
    # The same fastlinear as this process, installed or built in place.
    env = {**os.environ, "FASTLINEAR_ISA": value,
           "PYTHONPATH": os.path.dirname(os.path.dirname(fl.__file__))}
    code = "import fastlinear, fastlinear._core as c; print(c.isa_name())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=os.path.dirname(__file__))


# Run first in a child Python: an editable install's finder (pip install -e .) maps
# fastlinear's submodules to the checkout whatever folder the package came from; a
# regular install has none, and these tests mean that case.
_NO_EDITABLE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                "if not getattr(f, '__module__', '').startswith('__editable__')]; ")


def _source_copy(tmp_path, extensions=()):
    """fastlinear's top-level .py files (and the named built extensions) in a folder of
    their own; the environment that makes Python find it first."""
    folder = tmp_path / "fastlinear"
    folder.mkdir()
    source = os.path.dirname(fl.__file__)
    for name in os.listdir(source):
        built = name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        if name.endswith(".py") or built and name.split(".")[0] in extensions:
            shutil.copy(os.path.join(source, name), folder)
    return folder, {**os.environ, "PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("built", [False, True])
def test_import_from_an_unbuilt_source_folder_says_why(tmp_path, built):
    """`python -c "import fastlinear"` in a checkout without a build finds the source
    folder before the installed package: the error names it and says what to do."""
    folder, env = _source_copy(tmp_path)
    if built:  # an extension that is there but does not load keeps its own error
        (folder / ("_core" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"junk")
    run = subprocess.run([sys.executable, "-c", _NO_EDITABLE + "import fastlinear"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), run.stderr
    if built:
        assert "source folder" not in run.stderr
        return
    assert f"imported from the source folder {os.path.realpath(folder)} " in last
    for words in ("compiled extension _core is not built", "Run Python from another folder",
                  "pip install -e .", "python setup.py build_ext --inplace"):
        assert words in last, last
    assert "No module named 'fastlinear._core'" in run.stderr  # chained, not lost
    assert "direct cause of the following exception" in run.stderr


def test_an_unbuilt_blas_backend_says_why_when_first_used(tmp_path):
    """The BLAS extension loads on first use, not at import: without it the native
    backend works and the first BLAS call says what to do."""
    _, env = _source_copy(tmp_path, extensions=("_core",))
    code = _NO_EDITABLE + """
import numpy as np, fastlinear as fl
print(fl.Linear(3, 2, backend="native")(np.ones(3)).shape)
fl.Linear(3, 2, backend="blas")(np.ones(3))
"""
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and run.stdout.strip() == "(2,)", run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "compiled extension _blas is not built" in last, run.stderr
    assert "No module named 'fastlinear._blas'" in run.stderr


def test_import_leaves_the_heavy_packages_for_later(tmp_path):
    """`import fastlinear` loads neither scipy (the BLAS backend), onnx, torch nor the
    benchmark: each comes when first used. Which modules, not how long: timings vary."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", "import fastlinear"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
             if line.startswith("import time:")}
    assert "fastlinear" in names and "numpy" in names
    heavy = sorted(n for n in names if n.split(".")[0] in ("scipy", "onnx", "onnxruntime",
                                                           "torch")
                   or n.startswith(("fastlinear.bench", "fastlinear._blas")))
    assert not heavy, f"import fastlinear imports {heavy}"
    # ... and what was left out still works
    code = ("import numpy as np, fastlinear as fl; fl.show_config(); "
            "print(fl.Linear(3, 2, backend='blas')(np.ones(3)).shape, fl.load_onnx.__name__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "scipy" in run.stdout and run.stdout.strip().endswith("(2,) load_onnx")


@pytest.mark.parametrize("name", _core.supported_isas())
def test_isa_forced_by_environment(name):
    result = _run_with_isa(name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_unknown_isa_in_environment_fails_loudly():
    result = _run_with_isa("sse9")
    assert result.returncode != 0
    assert "unknown ISA 'sse9'" in result.stderr


def test_auto_backend_rule(isa):
    layer = fl.Linear(4, 3, backend="auto")
    expected = "blas" if isa == "ref" else "native"
    assert fl._config.resolve_backend("auto") == expected
    assert layer.resolved_backend == expected and f"backend='auto' ({expected})" in repr(layer)
    x = np.ones((2, 4), np.float32)
    if expected == "native":  # bitwise the native kernel's answer
        np.testing.assert_array_equal(layer(x), fl.functional.linear(
            x, layer.weight, layer.bias, backend="native"))


def test_typing_example_runs(threads):
    """tests/typing_example.py, which CI type-checks with mypy, is a working script."""
    import runpy
    runpy.run_path(os.path.join(os.path.dirname(__file__), "typing_example.py"),
                   run_name="__main__")


def _stub_names(path):
    """{name: set of member names (classes) or None} that a .pyi stub declares."""
    import ast
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign):
            names[node.target.id] = None
        elif isinstance(node, ast.FunctionDef) and node.name != "__getattr__":
            names[node.name] = None
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {n.target.id if isinstance(n, ast.AnnAssign) else n.name
                                for n in node.body
                                if isinstance(n, (ast.AnnAssign, ast.FunctionDef))}
    return names


@pytest.mark.parametrize("name", ["_core", "_blas"])
def test_extension_stubs_name_what_the_extensions_have(name):
    """The type stubs beside the compiled extensions (shipped with py.typed) declare
    only names the extensions have, so that mypy checks calls against the real thing."""
    folder = os.path.dirname(fl.__file__)
    assert os.path.exists(os.path.join(folder, "py.typed"))
    module = importlib.import_module(f"fastlinear.{name}")
    for attr, members in _stub_names(os.path.join(folder, f"{name}.pyi")).items():
        assert hasattr(module, attr), f"{name}.pyi declares {attr}, which {name} lacks"
        for member in members or ():
            assert member == "__init__" or hasattr(getattr(module, attr), member), (
                f"{name}.pyi declares {attr}.{member}, which {name} lacks")
