"""fastlinear.torch: fastlinear inside torch models (skipped when torch is not
installed). The modules against float64 references, replace_linear on a transformer and
a residual MLP (each replaced kernel runs, torch's fused paths decline), state dicts,
the inference-only errors, torch.compile and torch.export through the custom operator,
a row alone against the same row in the batch, and one OpenMP runtime for both
libraries. Sizes are tiny: the real model is the benchmark's
(`python -m fastlinear.bench --transformer`)."""
import collections
import copy
import gc
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastlinear as fl

from conftest import assert_close

torch = pytest.importorskip("torch")
nn = torch.nn
flt = fl.torch  # noqa: E305 (imported on first use: fastlinear.torch)

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of each fastlinear layer (by id) during the test."""
    counts = collections.Counter()
    real = fl.Linear.__call__

    def spy(self, *args, **kwargs):
        counts[id(self)] += 1
        return real(self, *args, **kwargs)
    monkeypatch.setattr(fl.Linear, "__call__", spy)
    return counts


def fastlinear_layers(model):
    return [m.layer for m in model.modules() if isinstance(m, flt.Linear)]


def transformer(d=32, heads=4, ff=64, layers=2, batch_first=True, activation="relu"):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=batch_first,
                                       activation=activation)
    # nested tensors (with a padding mask) where torch takes them: batch_first only
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=batch_first).eval()


class Residual(nn.Module):
    """x + fc2(GELU(fc1(LayerNorm(x)))): a pre-norm MLP block."""

    def __init__(self, d, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def residual_mlp(d=24, hidden=40, out=5):
    torch.manual_seed(1)
    return nn.Sequential(Residual(d, hidden), Residual(d, hidden), nn.Linear(d, out)).eval()


def rel_error(y, y64):
    return float((y.double() - y64).abs().max() / y64.abs().max())


def float64_of(model, x):
    with torch.inference_mode():
        return copy.deepcopy(model).double()(x.double())


# -- the module -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64,), (3, 64), (2, 5, 64), (0, 64), (2, 1, 3, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_any_leading_shape_within_the_bound(shape, bias):
    torch.manual_seed(2)
    module = nn.Linear(64, 24, bias=bias).eval()
    ours = flt.Linear.from_torch(module)
    x = torch.randn(shape)
    with torch.inference_mode():
        y = ours(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert y.shape == (*shape[:-1], 24)
    w = module.weight.detach().numpy()
    b = module.bias.detach().numpy() if bias else None
    assert_close(y.numpy().reshape(-1, 24), x.numpy().reshape(-1, 64), w, b)
    # the same bits as the numpy layer it holds
    np.testing.assert_array_equal(y.numpy(), ours.layer(x.numpy()))


def test_linear_reads_float32_inputs_in_place(monkeypatch):
    module = flt.Linear.from_torch(nn.Linear(16, 8).eval())
    seen = []
    real = fl.Linear.__call__
    monkeypatch.setattr(fl.Linear, "__call__",
                        lambda self, x, *a: seen.append(x) or real(self, x, *a))
    x = torch.randn(4, 16)
    with torch.inference_mode():
        module(x)
        module(x.t().contiguous().t())  # not C-contiguous: the kernel copies what it must
    assert np.shares_memory(seen[0], x.numpy())
    assert len(seen) == 2


@pytest.mark.parametrize("weight_dtype", ["bfloat16", "float16", "int8", "int4"])
def test_compressed_weights_compute_with_their_values(weight_dtype):
    torch.manual_seed(3)
    module = nn.Linear(96, 20).eval()
    ours = flt.Linear.from_torch(module, weight_dtype=weight_dtype)
    assert ours.weight_dtype == weight_dtype and weight_dtype in repr(ours)
    x = torch.randn(7, 96)
    with torch.inference_mode():
        y = ours(x)
    w = ours.weight.numpy()  # the values the layer computes with, as float32
    assert ours.weight.dtype == torch.float32
    assert_close(y.numpy(), x.numpy(), w, ours.bias.numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_keeps_its_dtype(dtype):
    torch.manual_seed(4)
    module = nn.Linear(32, 16).to(dtype).eval()
    ours = flt.Linear.from_torch(module)
    assert ours.dtype == dtype and ours.weight_dtype == str(dtype)[6:]
    assert ours.weight.dtype == dtype and torch.equal(ours.weight, module.weight.detach())
    x = torch.randn(5, 32).to(dtype)
    with torch.inference_mode():
        y = ours(x)
        expected = ours.layer(x.float().numpy())  # float32 sums of the exact values ...
    assert y.dtype == dtype  # ... rounded once to the model's dtype
    assert torch.equal(y, torch.from_numpy(expected).to(dtype))
    with torch.inference_mode():  # and float32 inputs give the float32 result
        assert torch.equal(ours(x.float()), torch.from_numpy(expected))


def test_float64_model():
    torch.manual_seed(5)
    module = nn.Linear(40, 10).double().eval()
    ours = flt.Linear.from_torch(module)
    x = torch.randn(6, 40, dtype=torch.float64)
    with torch.inference_mode():
        y = ours(x)
    assert y.dtype == torch.float64 and ours.weight.dtype == torch.float64
    assert_close(y.numpy(), x.numpy(), module.weight.detach().numpy(),
                 module.bias.detach().numpy())
    with pytest.raises(TypeError, match="float64 inputs, got torch.float32"):
        ours(x.float())


def test_weight_and_bias_are_tensors_and_assignable():
    torch.manual_seed(6)
    module = nn.Linear(12, 6).eval()
    ours = flt.Linear.from_torch(module)
    assert ours.in_features == 12 and ours.out_features == 6
    assert torch.equal(ours.weight, module.weight.detach())
    assert torch.equal(ours.bias, module.bias.detach())
    assert list(ours.parameters()) == []  # nothing for an optimizer
    new = torch.randn(6, 12)
    ours.weight = nn.Parameter(new.clone())  # a Parameter too: converted and packed
    ours.bias = None
    assert torch.equal(ours.weight, new) and ours.bias is None
    x = torch.randn(3, 12)
    with torch.inference_mode():
        np.testing.assert_array_equal(ours(x).numpy(), ours.layer(x.numpy()))
    ours.weight.zero_()  # a new tensor: the layer is unchanged
    assert torch.equal(ours.weight, new)
    with pytest.raises(ValueError, match="weight must have shape"):
        ours.weight = torch.zeros(3, 3)


def test_training_mode_and_autograd_are_refused():
    module = nn.Linear(8, 4)  # a torch module starts in training mode
    ours = flt.Linear.from_torch(module)
    assert ours.training
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match=r"training mode: call model\.eval\(\)"):
        ours(x)
    ours.eval()
    with pytest.raises(RuntimeError, match="computes no gradients.*inference_mode"):
        ours(x.requires_grad_())
    with torch.no_grad():  # no autograd recording: fine, even on such an input
        y = ours(x)
    assert not y.requires_grad
    assert not ours(torch.randn(2, 8)).requires_grad  # grad mode, input without grad


def test_errors_name_what_is_wrong():
    ours = flt.Linear.from_torch(nn.Linear(8, 4).eval())
    with pytest.raises(ValueError, match="in_features=8, got 5"):
        ours(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="got torch.int64"):
        ours(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="fastlinear.Linear"):
        flt.Linear(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="float64 layer"):
        flt.Linear(fl.Linear(3, 2, dtype=np.float64), dtype=torch.float32)


def test_state_dict_keys_are_torchs():
    torch.manual_seed(7)
    module = nn.Linear(70, 9).eval()
    ours = flt.Linear.from_torch(module)
    sd = ours.state_dict()
    assert list(sd) == ["weight", "bias"]
    assert torch.equal(sd["weight"], module.weight.detach())
    other = nn.Linear(70, 9)
    other.load_state_dict(sd)  # back into torch
    assert torch.equal(other.weight, module.weight)

    int4 = flt.Linear.from_torch(module, weight_dtype="int4", group_size=32)
    sd = int4.state_dict()
    assert list(sd) == ["weight", "weight_scale", "bias"]
    assert sd["weight"].dtype == torch.uint8 and sd["weight"].shape == (9, 35)
    assert sd["weight_scale"].shape == (9, 3)
    bf16 = flt.Linear.from_torch(module, weight_dtype="bfloat16")
    assert bf16.state_dict()["weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("weight_dtype", [None, "bfloat16", "int8", "int4"])
def test_load_state_dict_round_trip(weight_dtype):
    torch.manual_seed(8)
    a = flt.Linear.from_torch(nn.Linear(40, 8).eval(), weight_dtype=weight_dtype)
    b = flt.Linear.from_torch(nn.Linear(40, 8).eval(), weight_dtype=weight_dtype)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 40)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    result = b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "bias"},
                               strict=False)
    assert result.missing_keys == ["bias"]
    with pytest.raises(RuntimeError, match="Unexpected key.*extra"):
        b.load_state_dict({**a.state_dict(), "extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"While loading the weights: weight .*shape"):
        b.load_state_dict({"weight": torch.zeros(8, 41), "bias": torch.zeros(8)}
                          if weight_dtype in (None, "bfloat16") else
                          {**a.state_dict(), "weight": a.state_dict()["weight"][:, :-1]})


def test_custom_operator_passes_torchs_checks():
    ours = flt.Linear.from_torch(nn.Linear(16, 8).eval())
    x = torch.randn(3, 16)
    torch.library.opcheck(torch.ops.fastlinear.linear.default, (x, ours._handle))


def test_registry_forgets_collected_layers():
    from fastlinear.torch import _op
    ours = flt.Linear.from_torch(nn.Linear(4, 2).eval())
    handle = ours._handle
    assert _op.layer(handle) is ours.layer
    copied = copy.deepcopy(ours)  # its own layer, its own handle
    assert copied._handle != handle and _op.layer(copied._handle) is copied.layer
    del ours
    gc.collect()
    with pytest.raises(KeyError, match="garbage-collected"):
        _op.layer(handle)


# -- replace_linear ---------------------------------------------------------------------

def test_replace_linear_copies_unless_inplace():
    model = residual_mlp()
    weight = model[0].fc1.weight.detach().clone()
    replaced = flt.replace_linear(model)
    assert type(model[0].fc1) is nn.Linear  # the original is untouched
    assert torch.equal(model[0].fc1.weight, weight)
    assert isinstance(replaced[0].fc1, flt.Linear) and isinstance(replaced[2], flt.Linear)
    assert replaced[0].norm is not model[0].norm
    assert replaced[0].norm.weight is not model[0].norm.weight
    assert "fastlinear.torch.Linear(in_features=24, out_features=40" in repr(replaced)
    same = flt.replace_linear(model, inplace=True)
    assert same is model and isinstance(model[0].fc2, flt.Linear)
    single = flt.replace_linear(nn.Linear(3, 2))
    assert isinstance(single, flt.Linear) and single.training


@pytest.mark.parametrize("include, exclude, expected", [
    (None, None, {"0.fc1", "0.fc2", "1.fc1", "1.fc2", "2"}),
    ("*.fc1", None, {"0.fc1", "1.fc1"}),
    (["0.*", "2"], None, {"0.fc1", "0.fc2", "2"}),
    (None, "*fc2", {"0.fc1", "1.fc1", "2"}),
    ("1.*", "*.fc2", {"1.fc1"}),
    (lambda name, m: m.out_features == 5, None, {"2"}),
    (None, lambda name, m: name.startswith("0."), {"1.fc1", "1.fc2", "2"}),
])
def test_replace_linear_filters(include, exclude, expected):
    replaced = flt.replace_linear(residual_mlp(), include=include, exclude=exclude)
    names = {name for name, m in replaced.named_modules() if isinstance(m, flt.Linear)}
    assert names == expected
    assert not any(type(m) is nn.Linear for name, m in replaced.named_modules()
                   if name in expected)
    with pytest.raises(TypeError, match="pattern"):
        flt.replace_linear(residual_mlp(), include=[1])


def test_replace_linear_weight_dtype_and_shared_modules():
    torch.manual_seed(9)
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()
    replaced = flt.replace_linear(model, weight_dtype="int4", group_size=64)
    assert replaced[0] is replaced[2] and replaced[0].layer.group_size == 64
    assert replaced[0].weight_dtype == "int4"


def test_replace_linear_leaves_what_it_cannot_run():
    class Scaled(nn.Linear):  # a forward of its own: not what fastlinear computes
        def forward(self, x):
            return 2 * super().forward(x)
    odd = nn.MultiheadAttention(8, 2, kdim=6, vdim=6)  # separate projections: torch's
    model = nn.ModuleDict({"s": Scaled(4, 4), "odd": odd, "plain": nn.Linear(4, 4)})
    replaced = flt.replace_linear(model)
    assert type(replaced["s"]) is Scaled and type(replaced["odd"]) is nn.MultiheadAttention
    assert type(replaced["odd"].out_proj) is not flt.Linear  # torch reads its weight
    assert isinstance(replaced["plain"], flt.Linear)
    partly = flt.replace_linear(nn.ModuleDict({"a": nn.MultiheadAttention(8, 2)}),
                                exclude="*.out_proj")  # the attention needs both
    assert type(partly["a"]) is nn.MultiheadAttention
    with pytest.raises(TypeError, match="torch.nn.Module"):
        flt.replace_linear(fl.Linear(2, 2))


@pytest.mark.parametrize("model, x", [(residual_mlp, (4, 24)), (transformer, (2, 5, 32))])
def test_pickle_and_deepcopy_of_a_replaced_model(model, x, calls):
    replaced = flt.replace_linear(model(), weight_dtype="int8")
    buffer = io.BytesIO()
    torch.save(replaced, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(replaced)
    x = torch.randn(x)
    with torch.inference_mode():
        y = replaced(x)
        calls.clear()
        assert torch.equal(loaded(x), y) and torch.equal(copied(x), y)
    layers = [fastlinear_layers(m) for m in (replaced, loaded, copied)]
    assert len({id(layer) for group in layers for layer in group}) == 3 * len(layers[0])
    # the copies run fastlinear too (the transformer: its fused path still declined)
    assert set(calls) == {id(layer) for group in layers[1:] for layer in group}


def test_torch_checkpoint_loads_into_a_replaced_model():
    replaced = flt.replace_linear(transformer())
    other = transformer()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    replaced.load_state_dict(other.state_dict())
    assert sorted(replaced.state_dict()) == sorted(other.state_dict())
    x = torch.randn(2, 5, 32)
    with torch.inference_mode():
        torch.testing.assert_close(replaced(x), other(x), rtol=0, atol=1e-5)


# -- models: the residual MLP and the transformer ----------------------------------------

def test_residual_mlp_within_float32_bound_and_every_kernel_runs(calls):
    model = residual_mlp()
    replaced = flt.replace_linear(model)
    x = torch.randn(9, 24)
    with torch.inference_mode():
        y, expected = replaced(x), model(x)
    y64 = float64_of(model, x)
    bound = 8 * (40 + 2) * EPS32
    assert rel_error(y, y64) <= bound and rel_error(expected, y64) <= bound
    assert sorted(calls.values()) == [1] * 5
    assert set(calls) == {id(layer) for layer in fastlinear_layers(replaced)}


@pytest.mark.parametrize("weight_dtype", [None, "bfloat16", "int8"])
def test_residual_mlp_row_alone_equals_row_in_batch(weight_dtype):
    """Every part of this model computes a row from that row alone (LayerNorm, GELU and
    the residual sum in torch, the Linear layers in fastlinear): a row gives the same
    bits alone as inside any batch."""
    replaced = flt.replace_linear(residual_mlp(d=30, hidden=50), weight_dtype=weight_dtype,
                                  backend="native")  # "auto" may be BLAS: no promise
    x = torch.randn(37, 30)
    with torch.inference_mode():
        y = replaced(x)
        for i in (0, 5, 36):
            assert torch.equal(replaced(x[i]), y[i])
            assert torch.equal(replaced(x[i:i + 3]), y[i:i + 3])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_every_kernel_runs_once_per_forward(batch_first, calls):
    """torch's fused paths would read the weights and compute with torch's kernels:
    replace_linear makes them decline, and every fastlinear layer (each layer's
    in-projection, out-projection, linear1 and linear2) runs once per forward."""
    model = transformer(batch_first=batch_first)
    replaced = flt.replace_linear(model)
    layers = fastlinear_layers(replaced)
    assert len(layers) == 8
    x = torch.randn((2, 5, 32) if batch_first else (5, 2, 32))
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    for kwargs in ({}, {"src_key_padding_mask": padding},
                   {"mask": nn.Transformer.generate_square_subsequent_mask(5),
                    "is_causal": True}):
        calls.clear()
        with torch.inference_mode():
            y = replaced(x, **kwargs)
            expected = model(x, **kwargs)
        assert set(calls) == {id(layer) for layer in layers}, kwargs
        assert all(n == 1 for n in calls.values()), kwargs
        # torch's nested-tensor path (with the padding mask) gives 0 at padded places
        kept = ~padding if "src_key_padding_mask" in kwargs else torch.ones(2, 5, dtype=bool)
        kept = kept if batch_first else kept.T
        torch.testing.assert_close(y[kept], expected[kept], rtol=0, atol=1e-5)
    y64 = float64_of(model, x)
    with torch.inference_mode():
        y, expected = replaced(x), model(x)
    bound = 16 * (64 + 2) * EPS32
    assert rel_error(y, y64) <= bound and rel_error(expected, y64) <= bound


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_sequence_alone_equals_sequence_in_batch(batch_first):
    """Through the whole replaced transformer, where torch's parts keep it too
    (docs/torch.md says where they do not)."""
    replaced = flt.replace_linear(transformer(d=32, heads=2, batch_first=batch_first,
                                              activation="gelu"), backend="native")
    x = torch.randn((4, 6, 32) if batch_first else (6, 4, 32))
    with torch.inference_mode():
        y = replaced(x)
        for i in range(4):
            if batch_first:
                assert torch.equal(replaced(x[i:i + 1]), y[i:i + 1])
            else:
                assert torch.equal(replaced(x[:, i:i + 1]), y[:, i:i + 1])


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("inputs", ["self", "key is value", "three"])
def test_multihead_attention_matches_torch(batch_first, need_weights, inputs):
    torch.manual_seed(10)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = flt.MultiheadAttention.from_torch(mha)
    n, length, source = 3, 5, (5 if inputs == "self" else 6)

    def seq(m):
        return torch.randn((n, m, 16) if batch_first else (m, n, 16))
    q = seq(length)
    k = q if inputs == "self" else seq(source)
    v = k if inputs != "three" else seq(source)
    padding = torch.rand(n, source) < 0.3
    padding[:, 0] = False
    masks = [None, torch.rand(length, source) < 0.2, torch.randn(n * 4, length, source)]
    for attn_mask in masks:
        for key_padding_mask in (None, padding):
            for average in (True, False):
                kwargs = dict(key_padding_mask=key_padding_mask, need_weights=need_weights,
                              attn_mask=attn_mask, average_attn_weights=average)
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch: masks of two types
                    expected, expected_w = mha(q, k, v, **kwargs)
                    y, w = ours(q, k, v, **kwargs)
                torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
                if need_weights:
                    torch.testing.assert_close(w, expected_w, rtol=0, atol=1e-6)
                else:
                    assert w is None and expected_w is None


def test_multihead_attention_unbatched_causal_and_state_dict(calls):
    torch.manual_seed(11)
    mha = nn.MultiheadAttention(16, 2, bias=False).eval()
    ours = flt.MultiheadAttention.from_torch(mha, weight_dtype="int8")
    assert list(ours.state_dict()) == ["in_proj_weight", "in_proj_weight_scale",
                                       "out_proj.weight", "out_proj.weight_scale"]
    fresh = flt.MultiheadAttention.from_torch(nn.MultiheadAttention(16, 2, bias=False),
                                             weight_dtype="int8").eval()
    fresh.load_state_dict(ours.state_dict())
    x = torch.randn(5, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.inference_mode():
        y, w = ours(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
        assert y.shape == (5, 16) and w is None
        assert torch.equal(fresh(x, x, x, attn_mask=causal, is_causal=True,
                                 need_weights=False)[0], y)
        expected = mha(x, x, x, attn_mask=causal)[0]
        torch.testing.assert_close(y, expected, rtol=0, atol=0.05)  # int8 weights
        with pytest.raises(RuntimeError, match="Need attn_mask"):
            ours(x, x, x, is_causal=True)
    float_model = flt.replace_linear(nn.ModuleDict({"a": nn.MultiheadAttention(16, 2)}))
    torch_sd = nn.ModuleDict({"a": nn.MultiheadAttention(16, 2)}).state_dict()
    assert sorted(float_model.state_dict()) == sorted(torch_sd)
    float_model.load_state_dict(torch_sd)  # a torch checkpoint loads into it
    assert torch.equal(float_model["a"].in_proj_weight, torch_sd["a.in_proj_weight"])


@pytest.mark.parametrize("weight_dtype", ["int8", "int4"])
def test_int8_activations_through_replace_linear(weight_dtype, calls):
    """activations="int8" reaches every replaced layer: each runs the integer mode, a row
    alone gives the bits it gives in the batch, and the error against the float64 model
    is of the size of the rounding to int8 and the weights' own (int8: no larger than
    torch's quantize_dynamic on the same model)."""
    model = residual_mlp(d=32, hidden=64)
    replaced = flt.replace_linear(model, weight_dtype=weight_dtype, activations="int8")
    layers = fastlinear_layers(replaced)
    assert layers and all(layer.activations == "int8" for layer in layers)
    torch.manual_seed(14)
    x = torch.randn(17, 32)
    with torch.inference_mode():
        y = replaced(x)
        assert torch.equal(replaced(x[3]), y[3])
    assert sorted(calls.values()) == [2] * len(layers)
    y64 = float64_of(model, x)
    error = rel_error(y, y64)
    assert error < (0.05 if weight_dtype == "int8" else 0.3)
    if weight_dtype == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model),
                                                            {nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            assert error <= rel_error(theirs(x), y64)


# -- torch.compile and torch.export ------------------------------------------------------

def test_int8_activations_compiled_give_the_bits_of_eager():
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 24)).eval()
    replaced = flt.replace_linear(model, weight_dtype="int8", activations="int8")
    compiled = torch.compile(replaced)
    with torch.no_grad():
        x = torch.randn(5, 24)
        assert torch.equal(compiled(x), replaced(x))


def test_compile_has_no_graph_break():
    for model, x in ((flt.replace_linear(transformer()), torch.randn(2, 5, 32)),
                     (flt.replace_linear(residual_mlp()), torch.randn(3, 24))):
        with torch.no_grad():
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


def test_compiled_gives_the_bits_of_eager():
    """Inductor compiles the model around the fastlinear operator: the Linear layers
    give the same bits (this model's other parts, ReLU and a sum, are exact), at two
    batch sizes."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 24)).eval()
    replaced = flt.replace_linear(model)
    compiled = torch.compile(replaced)
    with torch.no_grad():
        for m in (3, 8):
            x = torch.randn(m, 24)
            assert torch.equal(compiled(x), replaced(x))


def test_compiled_transformer_within_float32_of_eager():
    replaced = flt.replace_linear(transformer())
    compiled = torch.compile(replaced, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), replaced(x), rtol=0, atol=1e-5)


def test_export_runs_the_fastlinear_operator():
    replaced = flt.replace_linear(transformer())
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        exported = torch.export.export(replaced, (x,))
        nodes = [n for n in exported.graph.nodes
                 if n.target is torch.ops.fastlinear.linear.default]
        assert len(nodes) == 8
        assert torch.equal(exported.module()(x), replaced(x))


# -- threads ----------------------------------------------------------------------------

THREADS_CHECK = """
import os, numpy as np, torch, fastlinear as fl
def runtimes():
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if any(
            name in line for name in ("libgomp", "libomp", "libiomp"))}
def threads():
    return len(os.listdir("/proc/self/task"))
torch.set_num_threads(2)
follows = fl.get_num_threads()
a = torch.randn(512, 512)
for _ in range(3):
    a @ a
with_torch = threads()
layer = fl.Linear(512, 512, rng=0, backend="native")  # BLAS would start its own
for _ in range(3):
    layer(np.ones((512, 512), np.float32))
fl.set_num_threads(2)
torch.set_num_threads(1)
print(len(runtimes()), follows, with_torch, threads(), fl.get_num_threads(),
      torch.get_num_threads())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="counts the threads of a Linux process with 2 CPUs or more")
def test_one_openmp_runtime_for_torch_and_fastlinear(tmp_path):
    """torch and fastlinear load one OpenMP runtime (libgomp) between them: fastlinear's
    teams reuse the threads of torch's, so running both starts no second pool.
    fastlinear's thread count follows torch.set_num_threads until fl.set_num_threads
    is called; after that each keeps its own. (Run away from the sources: from the
    repository's root, `python -c` would import the unbuilt ./fastlinear.)"""
    run = subprocess.run([sys.executable, "-c", THREADS_CHECK], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    runtimes, follows, with_torch, with_both, fl_threads, torch_threads = map(
        int, run.stdout.split())
    if runtimes != 1:
        pytest.skip(f"{runtimes} OpenMP runtimes loaded (a build with another runtime)")
    assert follows == 2
    assert with_both == with_torch
    assert (fl_threads, torch_threads) == (2, 1)
