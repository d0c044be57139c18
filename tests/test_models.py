"""Whole models: the activations (fastlinear's own code) against float64 references and
torch, the fused epilogues against the modules run one by one, the other modules
(LayerNorm, Softmax, LogSoftmax, BatchNorm1d, Flatten, Dropout, Identity), nesting and
conversion from torch, and the promise: a row alone equals the row in any batch, at any
thread count, bit for bit."""
import numpy as np
import pytest
from scipy.special import erfc

import fastlinear as fl
from conftest import randomize_batchnorm
from fastlinear import _core

ACTIVATIONS = {
    "relu": (fl.ReLU(), lambda x: np.where(x < 0, 0.0, x)),
    # the slope is held in the data's type (float32 0.2 for float32 data, as torch)
    "leaky_relu": (fl.LeakyReLU(0.2), lambda x, dt=np.float64: np.where(
        x > 0, x, x * np.float64(dt(0.2)))),
    "gelu": (fl.GELU(), lambda x: x * 0.5 * erfc(-x / np.sqrt(2))),
    # torch's formula, written without its cancellation: 0.5 (1 + tanh(u)) = sigmoid(2u)
    "gelu_tanh": (fl.GELU("tanh"), lambda x: x / (1 + np.exp(-2 * np.sqrt(2 / np.pi)
                                                               * (x + 0.044715 * x ** 3)))),
    "silu": (fl.SiLU(), lambda x: x / (1 + np.exp(-x))),
    "sigmoid": (fl.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (fl.Tanh(), np.tanh),
}
# Largest error in units of the result's last place, for |x| <= 6 (README,
# "Activations"; gelu_tanh's grows with |x|^2 there: its argument u is rounded once).
MAX_ULP = {"relu": 0, "leaky_relu": 1, "gelu": 8, "gelu_tanh": 48, "silu": 4,
           "sigmoid": 3, "tanh": 3}


def ulp_error(y, exact, dtype):
    exact = np.asarray(exact, np.float64)
    tiny = np.finfo(dtype).tiny
    ok = np.abs(exact) >= tiny
    spacing = np.spacing(np.abs(exact[ok]).astype(dtype)).astype(np.float64)
    return np.abs(y[ok].astype(np.float64) - exact[ok]) / spacing


def sample(dtype, n=20000, scale=6.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.linspace(-scale, scale, n), rng.standard_normal(n) * 2,
                        rng.standard_normal(500) * 1e-4, [0.0, -0.0]])
    return x.astype(dtype)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_accuracy(name, dtype):
    module, exact = ACTIVATIONS[name]
    x = sample(dtype)
    y = module(x)
    assert y.dtype == dtype and y.shape == x.shape
    ref = exact(x.astype(np.float64), dtype) if name == "leaky_relu" else \
        exact(x.astype(np.float64))
    err = ulp_error(y, ref, dtype)
    # float64 results are checked against a float64 reference: a few ulp of it too
    limit = MAX_ULP[name] if dtype == np.float32 else 4 * MAX_ULP[name] + 64
    assert err.max() <= limit, (name, err.max())


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_extremes(name):
    module, exact = ACTIVATIONS[name]
    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 100, -100, 1e-40, -1e-40],
                 np.float32)
    with np.errstate(all="ignore"):
        y, ref = module(x), exact(x.astype(np.float64))
    assert np.isnan(y[0])
    for yi, ri in zip(y[1:], ref[1:]):
        if np.isnan(ri):
            continue
        assert np.isclose(yi, ri, rtol=1e-5, atol=1e-37), (name, yi, ri)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_same_bits_on_every_isa(name):
    """The activations' code is the same on every ISA (no FMA, no libm): the same bits."""
    module, _ = ACTIVATIONS[name]
    before = _core.isa_name()
    try:
        for dtype in (np.float32, np.float64):
            x = sample(dtype, 3000)
            results = []
            for isa in _core.supported_isas():
                _core.set_isa(isa)
                results.append(module(x))
            for got in results[1:]:
                assert np.array_equal(results[0].view(np.uint8), got.view(np.uint8))
    finally:
        _core.set_isa(before)


def test_activation_leaves_input_alone():
    x = sample(np.float32, 100)
    keep = x.copy()
    for module, _ in ACTIVATIONS.values():
        module(x)
    assert np.array_equal(x.view(np.uint32), keep.view(np.uint32))


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_epilogue_equals_modules_one_by_one(isa, name, dtype):
    """Linear + activation fused equals the Linear, then the activation, bit for bit,
    and is close to the float64 reference."""
    module, exact = ACTIVATIONS[name]
    layer = fl.Linear(70, 45, dtype=dtype, rng=3, backend="native")
    x = np.random.default_rng(4).standard_normal((11, 70)).astype(dtype)
    fused = fl.Sequential(layer, module)(x)
    assert np.array_equal(fused, module(layer(x)))
    w = layer.weight.astype(np.float64)
    pre = x.astype(np.float64) @ w.T + layer.bias
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(layer.bias)
    tol = 4 * (70 + 2) * np.finfo(dtype).eps * scale + 64 * np.finfo(dtype).eps * np.abs(pre)
    # the activations' slopes are at most 1.13 (GELU), so the sum's error carries over
    ref = exact(pre, dtype) if name == "leaky_relu" else exact(pre)
    assert np.all(np.abs(fused - ref) <= 1.2 * tol + np.finfo(dtype).tiny)


def torch_or_skip():
    return pytest.importorskip("torch")


def _mlp(torch, dtype):
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(48, 40), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(40, 40), nn.BatchNorm1d(40), nn.GELU(),
        nn.Sequential(nn.Linear(40, 30), nn.SiLU(), nn.LayerNorm(30), nn.Identity()),
        nn.LeakyReLU(0.1), nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 20),
        nn.GELU("tanh"), nn.BatchNorm1d(20), nn.Sigmoid(), nn.Linear(20, 10),
        nn.LogSoftmax(dim=1)).to(dtype).eval()
    randomize_batchnorm(model[5], model[13])
    return model


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_mlp_from_torch_matches_torch(dtype_name):
    torch = torch_or_skip()
    model = _mlp(torch, getattr(torch, dtype_name))
    ours = fl.Sequential.from_torch(model)
    x = np.random.default_rng(0).standard_normal((37, 3, 16)).astype(dtype_name)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    y = ours(x)
    assert y.dtype == np.dtype(dtype_name) and y.shape == (37, 10)
    eps = np.finfo(y.dtype).eps
    np.testing.assert_allclose(y, expected, rtol=0, atol=200 * 48 * eps)
    # the BatchNorm1d after a Linear runs in its epilogue, the one after GELU as an
    # affine step; both keep their modules, indices and keys
    assert isinstance(ours[5], fl.BatchNorm1d) and isinstance(ours[13], fl.BatchNorm1d)
    assert isinstance(ours[7], fl.Sequential) and len(ours[7]) == 4
    same = fl.Sequential.from_torch(_mlp(torch, getattr(torch, dtype_name)))
    same.load_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
    assert np.array_equal(same(x), y)
    # torch's BatchNorm1d takes (N, C) or (N, C, L) with C its features: on (N, 8, 8)
    # data it normalizes dim 1, not the rows the Linear wrote; 1-D input is refused
    tsmall = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).to(
        getattr(torch, dtype_name)).eval()
    randomize_batchnorm(tsmall[1])
    small = fl.Sequential.from_torch(tsmall, backend="native")
    x3 = np.random.default_rng(2).standard_normal((4, 8, 8)).astype(dtype_name)
    with torch.no_grad():
        expected = tsmall(torch.from_numpy(x3)).numpy()
    np.testing.assert_allclose(small(x3), expected, rtol=0, atol=200 * 8 * eps)
    with pytest.raises(ValueError, match=r"module 1 \(BatchNorm1d\(8"):
        small(np.ones(8))


@pytest.mark.parametrize("threads_n", [1, 2, 3])
def test_model_row_alone_equals_row_in_batch(isa, threads, threads_n):
    torch = torch_or_skip()
    ours = fl.Sequential.from_torch(_mlp(torch, torch.float32), backend="native")
    x = np.random.default_rng(1).standard_normal((300, 48)).astype(np.float32)
    fl.set_num_threads(threads_n)
    full = ours(x)  # more rows than one block of the runner (FL_MODEL_ROWS)
    fl.set_num_threads(1)
    for i in (0, 1, 127, 128, 299):
        assert np.array_equal(ours(x[i:i + 1]), full[i:i + 1])
    for lo, hi in ((3, 11), (100, 230)):
        assert np.array_equal(ours(x[lo:hi]), full[lo:hi])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_softmax_against_torch(dtype):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((9, 33)) * 5 + 3).astype(dtype)
    tx = torch.from_numpy(x)
    eps = np.finfo(dtype).eps
    for affine, bias in ((True, True), (True, False), (False, True)):
        tln = torch.nn.LayerNorm(33, eps=1e-3, elementwise_affine=affine, bias=bias,
                                 dtype=tx.dtype)
        if affine:
            with torch.no_grad():
                tln.weight.normal_()
                if bias:
                    tln.bias.normal_()
        ours = fl.Sequential.from_torch(torch.nn.Sequential(tln))
        np.testing.assert_allclose(ours(x), tln(tx).detach().numpy(), rtol=0,
                                   atol=64 * eps * 4)
    for t, ours in ((torch.nn.Softmax(-1), fl.Softmax()),
                    (torch.nn.LogSoftmax(1), fl.LogSoftmax(1))):
        np.testing.assert_allclose(ours(x), t(tx).numpy(), rtol=16 * eps, atol=16 * eps)


def test_row_modules_against_float64():
    """Computed in float64 and rounded once: within 2 ulp of the float64 result."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((7, 50)) * 3).astype(np.float32)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(1, keepdims=True))
    softmax = e / e.sum(1, keepdims=True)
    mean, var = x64.mean(1, keepdims=True), x64.var(1, keepdims=True)
    for module, exact in ((fl.Softmax(), softmax), (fl.LogSoftmax(), np.log(softmax)),
                          (fl.LayerNorm(50, elementwise_affine=False),
                           (x64 - mean) / np.sqrt(var + 1e-5))):
        assert ulp_error(module(x), exact, np.float32).max() <= 4, module


def test_softmax_nan_and_inf():
    x = np.array([[1.0, np.nan, 2.0], [-np.inf, 0.0, 1.0], [-np.inf] * 3], np.float32)
    y = fl.Softmax()(x)
    assert np.isnan(y[0]).all() and np.isnan(y[2]).all()
    assert y[1, 0] == 0 and np.isclose(y[1].sum(), 1)


def test_batchnorm_standalone_matches_torch():
    torch = torch_or_skip()
    bn = torch.nn.BatchNorm1d(6).eval()
    randomize_batchnorm(bn)
    ours = fl.Sequential.from_torch(torch.nn.Sequential(bn))[0]
    assert isinstance(ours, fl.BatchNorm1d)
    for shape in ((5, 6), (5, 6, 4)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ours(x), bn(torch.from_numpy(x)).detach().numpy(),
                                   atol=1e-5)
    assert set(ours.state_dict()) == set(bn.state_dict())
    with pytest.raises(ValueError, match=r"module 1 \(BatchNorm1d\(6"):
        fl.Sequential(fl.Linear(6, 6), ours)(np.zeros((2, 3, 6), np.float32))


def _bn(n, seed, dtype=np.float32):
    """A BatchNorm1d that is not the identity."""
    rng = np.random.default_rng(seed)
    bn = fl.BatchNorm1d(n, dtype=dtype)
    bn.load_state_dict({"weight": rng.standard_normal(n), "bias": rng.standard_normal(n),
                        "running_mean": rng.standard_normal(n),
                        "running_var": rng.uniform(0.5, 2, n), "num_batches_tracked": 0})
    return bn


def test_batchnorm_on_channels_in_a_model():
    """On (N, C, L) input a BatchNorm1d inside a Sequential normalizes the C channels
    (dim 1), as on its own and as torch's, not the rows a Linear's epilogue sees; the
    modules between run natively, with the bits of the modules one by one. On (N, C)
    input it stays in the Linear's epilogue."""
    native = {"backend": "native"}  # the bitwise promise (BLAS layers run one by one)
    model = fl.Sequential(
        fl.Linear(5, 7, rng=0, **native), _bn(4, 1), fl.GELU(), fl.Sequential(
            fl.Linear(7, 3, rng=2, **native), _bn(4, 3)), fl.Tanh(), fl.Flatten(),
        fl.Linear(12, 6, rng=4, **native), _bn(6, 5), fl.LogSoftmax())
    x = np.random.default_rng(0).standard_normal((9, 4, 5)).astype(np.float32)
    y = model(x)
    expected = x
    for m in (model[0], model[1], model[2], model[3][0], model[3][1], model[4], model[5],
              model[6], model[7], model[8]):
        expected = m(expected)
    assert y.shape == (9, 6) and y.dtype == np.float32
    assert np.array_equal(y, expected)
    for lo, hi in ((0, 1), (3, 8)):  # a row alone equals the row in the batch
        assert np.array_equal(model(x[lo:hi]), y[lo:hi])
    # widths that chain on rows too: (N, C) input fused, (N, C, L) per channel
    square = fl.Sequential(fl.Linear(8, 8, rng=6, **native), _bn(8, 7), fl.ReLU())
    x2 = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    rows = x2 @ square[0].weight.T + square[0].bias
    scale, shift = square[1].factors()
    np.testing.assert_allclose(square(x2), np.maximum(rows * scale + shift, 0), atol=1e-5)
    x3 = np.random.default_rng(2).standard_normal((5, 8, 8)).astype(np.float32)
    assert np.array_equal(square(x3), square[2](square[1](square[0](x3))))


def test_batchnorm_on_channels_dtype_and_errors():
    """The BatchNorm1d computes in the Linear layers' dtype, in the epilogue or not;
    shapes torch's BatchNorm1d refuses are refused before anything runs, naming it."""
    bn = _bn(4, 1)  # float32 parameters: in a float64 model they compute in float64
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    for backend in ("blas", "native"):  # module by module, and natively
        model = fl.Sequential(fl.Linear(5, 7, rng=0, dtype=np.float64, backend=backend), bn)
        y = model(x)
        assert y.dtype == np.float64
        scale, shift = bn.factors()
        rows = x.astype(np.float64) @ model[0].weight.T + model[0].bias
        np.testing.assert_allclose(y, rows * scale[:, None] + shift[:, None], rtol=1e-13,
                                   atol=1e-13)
    for bad, message in ((np.ones((3, 5)), r"BatchNorm1d\(4\) got rows of 7"),
                         (np.ones((3, 6, 5)), r"\(N, 4, L\) input, got shape \(3, 6, 7\)"),
                         (np.ones(5), "got a 1-D input"),
                         (np.ones((3, 4, 1, 5)), "got a 4-D input")):
        with pytest.raises(ValueError, match=r"module 1 \(BatchNorm1d\(4.*" + message):
            model(bad)


def test_batchnorm_on_channels_from_torch():
    torch = torch_or_skip()
    nn = torch.nn
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(5)
        tm = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(4), nn.SiLU(), nn.Linear(7, 7),
                           nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(28, 3),
                           nn.BatchNorm1d(3)).to(dtype).eval()
        randomize_batchnorm(tm[1], tm[4], tm[7])
        ours = fl.Sequential.from_torch(tm)
        x = torch.randn(11, 4, 5, dtype=dtype)
        with torch.no_grad():
            expected = tm(x).numpy()
        y = ours(x.numpy())
        assert y.dtype == expected.dtype and y.shape == (11, 3)
        eps = np.finfo(y.dtype).eps
        np.testing.assert_allclose(y, expected, rtol=0, atol=200 * 28 * eps)


def test_flatten_dropout_identity():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert fl.Flatten()(x).shape == (2, 12)
    assert fl.Flatten(0, 1)(x).shape == (6, 4)
    assert np.array_equal(fl.Dropout(0.3)(x), x) and np.array_equal(fl.Identity()(x), x)
    with pytest.raises(ValueError, match="does not fit"):
        fl.Flatten(3)(x)
    with pytest.raises(ValueError, match="between 0 and 1"):
        fl.Dropout(1.5)
    # a Flatten in the middle of a model merges rows into features
    model = fl.Sequential(fl.Linear(4, 5, rng=0), fl.Flatten(), fl.Linear(15, 2, rng=1))
    lin1, lin2 = model[0], model[2]
    assert np.array_equal(model(x), lin2(lin1(x).reshape(2, 15)))


def test_bad_models_name_the_module():
    model = fl.Sequential(fl.Linear(4, 5), fl.ReLU(), fl.Sequential(fl.Linear(6, 2)))
    # (the message of the native runner, or of the Linear run alone where it is BLAS's)
    with pytest.raises(ValueError, match=r"module 2\.0 \(Linear\(in_features=6.*"
                                         r"(takes 6 values per row and gets 5|=6, got 5)"):
        model(np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="share one dtype"):
        fl.Sequential(fl.Linear(4, 4), fl.Linear(4, 4, dtype=np.float64))
    with pytest.raises(ValueError, match="last dimension only"):
        fl.LayerNorm((3, 4))
    with pytest.raises(ValueError, match="last dimension only"):
        fl.Softmax(dim=0)(np.zeros((2, 3)))
    # dim=None is torch's legacy rule: the last dimension of 1-D and 2-D input only
    assert fl.Softmax(None)(np.zeros((2, 3))).shape == (2, 3)
    with pytest.raises(ValueError, match="last dimension only"):
        fl.Sequential(fl.Linear(3, 3), fl.Softmax(None))(np.zeros((2, 2, 3)))
    torch = pytest.importorskip("torch")
    bad = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.Conv1d(1, 1, 1)))
    with pytest.raises(TypeError, match=r"cannot convert module '1\.1' \(Conv1d\)"):
        fl.Sequential.from_torch(bad)


def test_training_mode_warns():
    torch = torch_or_skip()
    model = _mlp(torch, torch.float32).train()
    with pytest.warns(UserWarning, match="training mode"):
        ours = fl.Sequential.from_torch(model)
    x = np.random.default_rng(0).standard_normal((3, 48)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), expected, atol=1e-5)


def test_state_dict_round_trip_and_repr():
    torch = torch_or_skip()
    model = _mlp(torch, torch.float32)
    ours = fl.Sequential.from_torch(model)
    sd = ours.state_dict()
    assert "7.2.weight" in sd and "13.running_var" in sd and "1.weight" in sd
    other = fl.Sequential.from_torch(_mlp(torch, torch.float32))
    other.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((4, 48)).astype(np.float32)
    assert np.array_equal(other(x), ours(x))
    text = repr(ours)
    for part in ("(7): Sequential(", "LayerNorm((30,), eps=1e-05", "LeakyReLU(negative_slope=0.1)",
                 "GELU(approximate='tanh')", "LogSoftmax(dim=1)", "Dropout(p=0.2"):
        assert part in text
    with pytest.raises(KeyError):
        other.load_state_dict({k: v for k, v in sd.items() if k != "7.2.weight"})


def test_parameter_change_reaches_the_compiled_model():
    layer = fl.Linear(5, 3, rng=0)
    model = fl.Sequential(layer, fl.ReLU())
    x = np.ones((2, 5), np.float32)
    model(x)
    layer.weight = np.zeros((3, 5))
    assert np.array_equal(model(x), np.maximum(np.broadcast_to(layer.bias, (2, 3)), 0))


def test_compressed_weights_in_a_model():
    torch = torch_or_skip()
    model = _mlp(torch, torch.float32)
    x = np.random.default_rng(0).standard_normal((6, 48)).astype(np.float32)
    for fmt in ("bfloat16", "int8", "int4"):
        ours = fl.Sequential.from_torch(model, weight_dtype=fmt)
        one_by_one = x
        for m in ours.modules:
            one_by_one = m(one_by_one)
        assert np.array_equal(ours(x), one_by_one)
        assert np.array_equal(ours(x)[:3], ours(x[:3]))


def test_benchmark_mlp_agrees_with_float64():
    from fastlinear.bench import harness, mlp
    layers = mlp.mlp_weights(np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 784)).astype(np.float32)
    assert harness.rel_error(mlp.fastlinear_model(layers)(x),
                             mlp.reference(layers, x)) < 784 * np.finfo(np.float32).eps


def test_model_shapes_layouts_and_backends():
    rng = np.random.default_rng(5)
    layers = [fl.Linear(6, 9, rng=1), fl.GELU(), fl.LayerNorm(9), fl.Linear(9, 4, rng=2),
              fl.Softmax()]
    model = fl.Sequential(*layers)
    x = rng.standard_normal((2, 3, 6))
    keep = x.copy()
    y = model(x)
    assert y.shape == (2, 3, 4) and y.dtype == np.float32
    assert np.array_equal(x, keep)  # cast aside, never changed
    assert np.array_equal(model(np.asfortranarray(x[0])), y[0])
    assert np.array_equal(model(x[:, ::2]), y[:, ::2])
    assert model(np.ones((0, 6))).shape == (0, 4)
    # BLAS Linear layers: the modules run one by one, to the same values within rounding
    blas = fl.Sequential(*[fl.Linear(m.in_features, m.out_features, backend="blas")
                           if isinstance(m, fl.Linear) else m for m in layers])
    for ours, theirs in zip(blas.modules, layers):
        if isinstance(ours, fl.Linear):
            ours.load_state_dict(theirs.state_dict())
    np.testing.assert_allclose(blas(x), y, rtol=1e-5, atol=1e-6)


def test_model_pickles_and_saves(tmp_path):
    import pickle
    model = fl.Sequential(fl.Linear(4, 5, rng=0), fl.GELU(), fl.Sequential(
        fl.LayerNorm(5), fl.Linear(5, 2, rng=1)), fl.BatchNorm1d(2), fl.LogSoftmax())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = model(x)
    assert np.array_equal(pickle.loads(pickle.dumps(model))(x), y)
    fl.save(model, tmp_path / "m.npz")
    same = fl.Sequential(fl.Linear(4, 5), fl.GELU(), fl.Sequential(
        fl.LayerNorm(5), fl.Linear(5, 2)), fl.BatchNorm1d(2), fl.LogSoftmax())
    same.load_state_dict(fl.load(tmp_path / "m.npz"))
    assert np.array_equal(same(x), y)


def test_each_module_class_declares_its_own_names():
    """The converters' tables (torch, ONNX) are built from what each module class
    declares: a name inherited from a parent, or declared twice, would shadow another."""
    from fastlinear.sequential import _MODULES
    assert {getattr(fl, cls.__name__) for cls in _MODULES} == set(_MODULES)  # exported
    for names in ("torch_names", "onnx_ops"):
        declared = [n for cls in _MODULES for n in vars(cls).get(names, ())]
        assert len(declared) == len(set(declared)), names
    assert all("torch_names" in vars(cls) for cls in _MODULES)


def _quantizable():
    return fl.Sequential(fl.Linear(64, 48, rng=0), fl.GELU(), fl.Sequential(
        fl.LayerNorm(48), fl.Linear(48, 40, rng=1)), fl.BatchNorm1d(40), fl.Softmax())


@pytest.mark.parametrize("fmt, group", [("int8", None), ("int4", 32), ("bfloat16", None)])
def test_sequential_quantize(fmt, group):
    model = _quantizable()
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    before, weights = model(x), [m.weight for m in (model[0], model[2][1])]
    q = model.quantize(fmt, group_size=group)
    assert isinstance(q[2], fl.Sequential) and len(q) == len(model)  # nested as given
    by_hand = fl.Sequential(model[0].quantize(fmt, group), fl.GELU(), fl.Sequential(
        model[2][0], model[2][1].quantize(fmt, group)), model[3], fl.Softmax())
    assert np.array_equal(q(x), by_hand(x))  # each Linear as Linear.quantize makes it
    assert q[0].weight_dtype == q[2][1].weight_dtype == fmt and q[0].group_size == group
    # this model is left as it is, and the other modules are copies of its own
    assert np.array_equal(model(x), before)
    assert all(np.array_equal(m.weight, w) for m, w in zip((model[0], model[2][1]), weights))
    assert q[2][0] is not model[2][0] and repr(q[2][0]) == repr(model[2][0])
    q[2][0].weight = np.full(48, 2.0)
    assert np.array_equal(model[2][0].weight, np.ones(48))
    assert np.array_equal(model(x), before)


def test_sequential_quantize_names_the_module():
    with pytest.raises(ValueError, match=r"module 0 \(Linear\(.*\)\): weight_dtype must"):
        _quantizable().quantize("int3")
    f64 = fl.Sequential(fl.ReLU(), fl.Sequential(fl.Linear(4, 4, dtype=np.float64)))
    with pytest.raises(ValueError, match=r"module 1\.0 .*float64 layer keeps float64"):
        f64.quantize("int8")
    assert f64.quantize("float64")[1][0].dtype == np.float64


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_sequential_to_torch(dtype_name):
    torch = torch_or_skip()
    model = _mlp(torch, getattr(torch, dtype_name))
    ours = fl.Sequential.from_torch(model)
    back = ours.to_torch()
    assert not back.training and all(not m.training for m in back.modules())
    assert isinstance(back, torch.nn.Sequential) and isinstance(back[7], torch.nn.Sequential)
    assert [type(m).__name__ for m in back.modules()] == [
        type(m).__name__ for m in model.modules()]  # plain torch modules, nested as given
    theirs = model.state_dict()
    assert list(back.state_dict()) == list(theirs)
    for key, value in back.state_dict().items():
        assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
    x = np.random.default_rng(0).standard_normal((7, 3, 16)).astype(dtype_name)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), ours(x),
                                   rtol=1e-5 if dtype_name == "float32" else 1e-12,
                                   atol=1e-5 if dtype_name == "float32" else 1e-12)
    assert np.array_equal(fl.Sequential.from_torch(back)(x), ours(x))  # a round trip


def test_sequential_to_torch_compressed_weights_as_float32():
    torch = torch_or_skip()
    ours = fl.Sequential.from_torch(_mlp(torch, torch.float32))
    for fmt, group in (("int4", 32), ("int8", None), ("bfloat16", None), ("float16", None)):
        q = ours.quantize(fmt, group)
        back = q.to_torch()
        linears = [m for _, m in q._flat() if isinstance(m, fl.Linear)]
        torch_linears = [m for m in back.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == len(torch_linears)
        for m, t in zip(linears, torch_linears):
            assert t.weight.dtype == torch.float32
            assert np.array_equal(t.weight.detach().numpy(), m.weight)
            assert np.array_equal(t.bias.detach().numpy(), m.bias)
    # the modules without parameters on their own
    for m in (fl.LeakyReLU(0.3), fl.GELU("tanh"), fl.Softmax(0), fl.Flatten(0, 1),
              fl.Dropout(0.25), fl.Identity()):
        assert repr(m.to_torch()).startswith(repr(m).split("(")[0])
    assert m.to_torch().__class__ is torch.nn.Identity
    assert fl.GELU("tanh").to_torch().approximate == "tanh"
    assert fl.Flatten(0, 1).to_torch().end_dim == 1


def _out_models():
    rng = np.random.default_rng(3)
    return {
        "one call": (fl.Sequential(fl.Linear(6, 9, rng=1), fl.GELU(), fl.LayerNorm(9),
                                   fl.Linear(9, 4, rng=2), fl.Softmax()),
                     rng.standard_normal((2, 3, 6)).astype(np.float32)),
        "cut by a Flatten": (fl.Sequential(fl.Linear(6, 5, rng=1), fl.Flatten(),
                                           fl.Linear(15, 4, rng=2)),
                             rng.standard_normal((2, 3, 6)).astype(np.float32)),
        "BLAS, one by one": (fl.Sequential(fl.Linear(6, 4, backend="blas", rng=1),
                                           fl.ReLU()),
                             rng.standard_normal((5, 6))),
        "BatchNorm1d on (N, C, L)": (fl.Sequential(fl.Linear(6, 6, rng=1),
                                                   fl.BatchNorm1d(3)),
                                     rng.standard_normal((2, 3, 6)).astype(np.float32)),
        "no Linear": (fl.Sequential(fl.Tanh()), rng.standard_normal(4)),
        "empty": (fl.Sequential(), rng.standard_normal((2, 2))),
    }


@pytest.mark.parametrize("name", list(_out_models()))
def test_sequential_out(name):
    model, x = _out_models()[name]
    expected = model(x)
    out = np.full(expected.shape, np.nan, expected.dtype)  # C-contiguous
    assert model(x, out=out) is out and np.array_equal(out, expected)
    assert model.forward(x, out=out) is out
    with pytest.raises(ValueError, match=r"out must have shape"):
        model(x, out=np.empty((1, *expected.shape), expected.dtype))
    other = np.float64 if expected.dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match=r"out must have dtype"):
        model(x, out=np.empty(expected.shape, other))
    if expected.ndim == 2:
        with pytest.raises(ValueError, match=r"out must be C-contiguous"):
            model(x, out=np.empty(expected.shape[::-1], expected.dtype).T)
    read_only = np.empty(expected.shape, expected.dtype)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        model(x, out=read_only)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        model(x, out=list(expected))


def test_sequential_out_may_be_the_input():
    model = fl.Sequential(fl.Linear(8, 8, rng=0), fl.ReLU(), fl.Linear(8, 8, rng=1))
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    expected = model(x)
    assert model(x, out=x) is x and np.array_equal(x, expected)
