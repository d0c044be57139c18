"""load_onnx: MLPs in ONNX files as torch's exporters and ONNX Runtime's tools write
them, activations written out by hand, and files that must be refused."""
import math
import os
import sys
import time
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastlinear as fl  # noqa: E402
from conftest import randomize_batchnorm  # noqa: E402
from fastlinear.onnx import load_onnx  # noqa: E402

# the files of torch's older exporter are among those load_onnx reads
pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript"),
              pytest.mark.filterwarnings("ignore:The feature will be removed")]


def assert_near(y, expected, k):
    """Within 50 K eps of the reference: rounding of K-term sums, the activations' few
    ulp, and float32 constants (1/sqrt(2), ...) as the files hold them."""
    tol = 50 * k * np.finfo(y.dtype).eps
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def run_ort(path, x, output=None):
    """ONNX Runtime's result: the graph's first output, or the one named."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(output and [output], {session.get_inputs()[0].name: x})[0]


def op_types(path):
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


# -- files torch writes -----------------------------------------------------------------
def torch_mlp(torch):
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, 512),
        nn.GELU(), nn.Linear(512, 256), nn.SiLU(), nn.LayerNorm(256), nn.Linear(256, 10),
        nn.LogSoftmax(-1)).eval()


def export(torch, model, x, path, exporter, opset=None):
    """The file torch writes, the batch dimension left free."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="torch's default ONNX exporter "
                                                 "(dynamo=True) needs onnxscript")
        torch.onnx.export(model, (x,), str(path), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


EXPORTERS = [("torchscript", 13), ("torchscript", 17), ("torchscript", 20), ("dynamo", 20)]


@pytest.mark.parametrize("exporter, opset", EXPORTERS)
def test_torch_export_matches_torch_and_onnxruntime(tmp_path, exporter, opset):
    torch = pytest.importorskip("torch")
    model = torch_mlp(torch)
    path = export(torch, model, torch.randn(3, 1, 28, 28), tmp_path / "mlp.onnx",
                  exporter, opset)
    ours = load_onnx(path)
    kinds = [type(m).__name__ for m in ours.modules]
    assert [k for k in kinds if k not in ("Identity", "Dropout")] == [
        "Flatten", "Linear", "ReLU", "Linear", "GELU", "Linear", "SiLU", "LayerNorm",
        "Linear", "LogSoftmax"]
    x = torch.randn(7, 1, 28, 28)  # another batch than the exported one
    with torch.no_grad():
        expected = model(x).numpy()
    y = ours(x.numpy())
    assert y.dtype == np.float32 and y.shape == (7, 10)
    assert_near(y, expected, 784)
    assert_near(y, run_ort(path, x.numpy()), 784)


@pytest.mark.parametrize("exporter, opset", EXPORTERS)
def test_torch_export_with_batchnorm(tmp_path, exporter, opset):
    """BatchNormalization after a Gemm (the exporter may fold it in itself) and after a
    Relu: the same results as torch and ONNX Runtime."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.BatchNorm1d(8),
                          nn.Linear(8, 4)).eval()
    randomize_batchnorm(model[1], model[3])
    path = export(torch, model, torch.randn(3, 16), tmp_path / "bn.onnx", exporter, opset)
    ours = load_onnx(path)
    assert any(isinstance(m, fl.BatchNorm1d) for m in ours.modules)
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    y = ours(x.numpy())
    assert_near(y, expected, 16)
    assert_near(y, run_ort(path, x.numpy()), 16)


def run_modules(model, x):
    """The modules one by one (as a Sequential runs them where a Linear is on BLAS)."""
    for m in model.modules:
        x = m(x)
    return x


def torch_batchnorm_on_channels(torch, tmp_path):
    """A torch model of (N, 4, 5) input whose BatchNorm1d normalizes the 4 channels, its
    file, and an input."""
    nn = torch.nn
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(4), nn.ReLU()).eval()
    randomize_batchnorm(model[1])
    path = export(torch, model, torch.randn(3, 4, 5), tmp_path / "bn3.onnx",
                  "torchscript", 17)
    return model, path, torch.randn(6, 4, 5)


def test_torch_batchnorm_on_channels(tmp_path):
    """BatchNormalization of (N, C, L) data, after a MatMul on L: read as torch's
    BatchNorm1d reads it, per channel (dim 1), not per value of the row."""
    torch = pytest.importorskip("torch")
    model, path, x = torch_batchnorm_on_channels(torch, tmp_path)
    ours = load_onnx(path)
    assert [type(m).__name__ for m in ours.modules] == ["Linear", "BatchNorm1d", "ReLU"]
    assert ours[1].num_features == 4
    with torch.no_grad():
        expected = model(x).numpy()
    y = run_modules(ours, x.numpy())
    assert y.shape == (6, 4, 7)
    assert_near(y, expected, 5)
    assert_near(y, run_ort(path, x.numpy()), 5)


def test_torch_batchnorm_on_channels_whole_model(tmp_path):
    """The same file run as a whole: the Linear before the BatchNormalization runs on
    the rows (L) and the BatchNorm on the channels, as the modules one by one do."""
    torch = pytest.importorskip("torch")
    model, path, x = torch_batchnorm_on_channels(torch, tmp_path)
    ours = load_onnx(path)
    with torch.no_grad():
        expected = model(x).numpy()
    y = ours(x.numpy())
    assert y.shape == (6, 4, 7) and y.dtype == np.float32
    assert_near(y, expected, 5)
    assert_near(y, run_ort(path, x.numpy()), 5)
    assert np.array_equal(y, run_modules(ours, x.numpy()))
    # torch refuses (N, 5) data there (the BatchNorm would get 7 features), and so do we
    with pytest.raises(ValueError, match=r"module 1 \(BatchNorm1d\(4"):
        ours(x.numpy()[:, 0])


def torch_mlp64(torch):
    nn = torch.nn
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(48, 64), nn.GELU("tanh"), nn.LeakyReLU(0.2), nn.Linear(64, 32), nn.Tanh(),
        nn.Linear(32, 16), nn.Sigmoid(), nn.LayerNorm(16), nn.Linear(16, 8, bias=False),
        nn.Softmax(-1)).double().eval()


@pytest.mark.parametrize("exporter, opset", EXPORTERS)
def test_torch_float64_export(tmp_path, exporter, opset):
    """float64 weights give a float64 model; the float32 attributes (LeakyRelu's 0.2,
    LayerNorm's 1e-5) are read as the decimals they were written as. ONNX Runtime has
    no float64 LeakyRelu: torch is the reference."""
    torch = pytest.importorskip("torch")
    model = torch_mlp64(torch)
    path = export(torch, model, torch.randn(3, 48, dtype=torch.float64),
                  tmp_path / "mlp64.onnx", exporter, opset)
    ours = load_onnx(path)
    assert [type(m).__name__ for m in ours.modules] == [
        "Linear", "GELU", "LeakyReLU", "Linear", "Tanh", "Linear", "Sigmoid", "LayerNorm",
        "Linear", "Softmax"]
    assert ours[1].approximate == "tanh" and ours[2].negative_slope == 0.2
    assert ours[7].eps == 1e-5
    x = torch.randn(9, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x).numpy()
    y = ours(x.numpy())
    assert y.dtype == np.float64
    assert_near(y, expected, 64)
    assert load_onnx(path, dtype=np.float32)(x.numpy()).dtype == np.float32


# -- files ONNX Runtime's tools write ---------------------------------------------------
def torch_gelus(torch):
    nn = torch.nn
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU("tanh"),
                         nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("case", ["optimizer static", "optimizer level 2",
                                  "quant_pre_process"])
def test_onnxruntime_tools_output(tmp_path, case):
    """The fusions of onnxruntime.transformers' optimizer (com.microsoft Gelu, FastGelu,
    BiasGelu; Reshape around a Gemm for 3-D input) and quant_pre_process's file."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    model = torch_gelus(torch)
    x = torch.randn(2, 3, 8)
    src, out = tmp_path / "src.onnx", tmp_path / "out.onnx"
    if case == "optimizer static":  # fixed shapes: the optimizer writes Reshape, Gemm
        torch.onnx.export(model, (x,), str(src), dynamo=False, opset_version=13)
    else:
        export(torch, model, x, src, "torchscript", 13)
    if case == "quant_pre_process":
        from onnxruntime.quantization.shape_inference import quant_pre_process
        quant_pre_process(str(src), str(out))
        expected_ops = {"Erf", "Tanh"}
    else:
        from onnxruntime.transformers.optimizer import optimize_model
        level = 2 if case == "optimizer level 2" else None
        optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0,
                       opt_level=level).save_model_to_file(str(out))
        expected_ops = {"BiasGelu", "FastGelu"} if level else {"Reshape", "Gelu", "FastGelu"}
    ops = set(op_types(out))
    assert expected_ops <= ops, f"this ONNX Runtime no longer writes {expected_ops - ops}"
    ours = load_onnx(out)
    assert [repr(m) for m in ours.modules if not isinstance(m, fl.Linear)] == [
        "GELU(approximate='none')", "GELU(approximate='tanh')"]
    with torch.no_grad():
        expected = model(x).numpy()
    assert_near(ours(x.numpy()), expected, 16)
    assert_near(ours(x.numpy()), run_ort(out, x.numpy()), 16)


# -- graphs built by hand ---------------------------------------------------------------
def node(op, inputs, output, domain=None, **attrs):
    """A node named after its output, so that errors can be matched."""
    return helper.make_node(op, list(inputs), [output], name=f"{output}_node", domain=domain,
                            **attrs)


def write(tmp_path, nodes, consts=(), *, shape=("batch", 6), const_nodes=False,
          elem=TensorProto.FLOAT, out_elem=None, opset=17, outputs=("y",),
          name="model.onnx"):
    """A model from x to y; consts (name -> array) as initializers or Constant nodes;
    elem the type of x, and of y unless out_elem is given."""
    consts = dict(consts)
    tensors = [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()]
    if const_nodes:
        nodes = [helper.make_node("Constant", [], [t.name], name=f"{t.name}_const", value=t)
                 for t in tensors] + list(nodes)
        tensors = []
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info(o, elem if out_elem is None else out_elem, None)
         for o in outputs], initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8  # what ONNX Runtime reads
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def f32(v):
    return np.array(v, np.float32)


S2, C, HALF, ONE = f32(math.sqrt(2)), f32(1 / math.sqrt(2)), f32(0.5), f32(1.0)
ERF_GELUS = {
    "torchscript": [node("Div", ["x", "s2"], "d"), node("Erf", ["d"], "e"),
                    node("Add", ["e", "one"], "a"), node("Mul", ["x", "a"], "m"),
                    node("Mul", ["m", "half"], "y")],
    "mul by 1/sqrt2, operands swapped": [
        node("Mul", ["c", "x"], "d"), node("Erf", ["d"], "e"), node("Add", ["one", "e"], "a"),
        node("Mul", ["a", "x"], "m"), node("Mul", ["half", "m"], "y")],
    "half of x first": [
        node("Mul", ["x", "half"], "h"), node("Mul", ["x", "c"], "d"), node("Erf", ["d"], "e"),
        node("Add", ["e", "one"], "a"), node("Mul", ["h", "a"], "y")],
    "half of the factor": [
        node("Div", ["x", "s2"], "d"), node("Erf", ["d"], "e"), node("Add", ["e", "one"], "a"),
        node("Mul", ["a", "half"], "h"), node("Mul", ["x", "h"], "y")],
}


@pytest.mark.parametrize("const_nodes", [False, True])
@pytest.mark.parametrize("form", sorted(ERF_GELUS))
def test_erf_gelu_written_out(tmp_path, form, const_nodes):
    path = write(tmp_path, ERF_GELUS[form], dict(s2=S2, c=C, half=HALF, one=ONE),
                 const_nodes=const_nodes)
    ours = load_onnx(path)
    assert repr(list(ours.modules)) == "[GELU(approximate='none')]"
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32) * 3
    assert_near(ours(x), run_ort(path, x), 1)


@pytest.mark.parametrize("operands", [["x", "s"], ["s", "x"]])
def test_silu_written_out(tmp_path, operands):
    path = write(tmp_path, [node("Sigmoid", ["x"], "s"), node("Mul", operands, "y")])
    assert repr(list(load_onnx(path).modules)) == "[SiLU()]"
    x = np.linspace(-8, 8, 12, dtype=np.float32).reshape(2, 6)
    assert_near(load_onnx(path)(x), run_ort(path, x), 1)


def linear_consts(rng, k=6, n=4):
    return rng.standard_normal((k, n)).astype(np.float32), \
        rng.standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("order", ["data first", "bias first"])
def test_matmul_add_is_a_linear_with_bias(tmp_path, order):
    w, b = linear_consts(np.random.default_rng(0))
    add = ["mm", "b"] if order == "data first" else ["b", "mm"]
    path = write(tmp_path, [node("MatMul", ["x", "w"], "mm"), node("Add", add, "y")],
                 dict(w=w, b=b))
    ours = load_onnx(path)
    assert len(ours) == 1 and ours[0].in_features == 6 and ours[0].out_features == 4
    np.testing.assert_array_equal(ours[0].weight, w.T)
    np.testing.assert_array_equal(ours[0].bias, b)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    assert_near(ours(x), run_ort(path, x), 6)


def test_matmul_alone_has_no_bias(tmp_path):
    w, _ = linear_consts(np.random.default_rng(0))
    ours = load_onnx(write(tmp_path, [node("MatMul", ["x", "w"], "y")], dict(w=w)))
    assert ours[0].bias is None
    np.testing.assert_array_equal(ours[0].weight, w.T)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [(4,), (1, 4), (), None])
def test_gemm(tmp_path, trans_b, c_shape):
    rng = np.random.default_rng(0)
    w, b = linear_consts(rng)
    consts = dict(B=w.T if trans_b else w)
    inputs = ["x", "B"]
    if c_shape is not None:
        consts["C"] = b[:1].reshape(c_shape) if c_shape == () else b.reshape(c_shape)
        inputs.append("C")
    path = write(tmp_path, [node("Gemm", inputs, "y", transB=trans_b, alpha=0.5, beta=2.0)],
                 consts)
    ours = load_onnx(path)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    assert_near(ours(x), run_ort(path, x), 6)


def test_constants_folded_and_reshape_from_shape(tmp_path):
    """A weight as Transpose of a Constant node; the x.view(x.size(0), -1) subgraph that
    exporters write (Shape, Gather, Unsqueeze, Concat, Reshape) -> Flatten."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)  # (out, in): transposed in-graph
    nodes = [node("Shape", ["x"], "shape"), node("Gather", ["shape", "zero"], "n", axis=0),
             node("Unsqueeze", ["n", "axes"], "n1"), node("Concat", ["n1", "rest"], "target",
                                                          axis=0),
             node("Reshape", ["x", "target"], "flat"),
             node("Transpose", ["wt"], "w", perm=[1, 0]), node("MatMul", ["flat", "w"], "y")]
    path = write(tmp_path, nodes, dict(zero=np.array(0), axes=np.array([0]),
                                       rest=np.array([-1]), wt=w),
                 shape=("batch", 2, 3), const_nodes=True)
    ours = load_onnx(path)
    assert [type(m).__name__ for m in ours.modules] == ["Flatten", "Linear"]
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    assert_near(ours(x), run_ort(path, x), 6)


def test_float16_weights_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    w, b = (a.astype(np.float16) for a in linear_consts(rng))
    path = write(tmp_path, [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "y")],
                 dict(w=w, b=b), elem=TensorProto.FLOAT16)
    ours = load_onnx(path)
    assert "weight_dtype='float16'" in repr(ours[0])
    x = rng.standard_normal((3, 6)).astype(np.float32)
    expected = x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
    assert_near(ours(x), expected, 6)


@pytest.mark.parametrize("dtype", [None, np.float32])
@pytest.mark.parametrize("elem", ["float16", "bfloat16"])
def test_a_cast_up_alone_returns_float32(tmp_path, dtype, elem):
    """x -> Cast(to=FLOAT) -> y on 16-bit input: float32 out, exactly the input's values
    (the Cast is an Identity, and a Sequential computes in float32)."""
    import ml_dtypes
    kind = {"float16": (TensorProto.FLOAT16, np.float16),
            "bfloat16": (TensorProto.BFLOAT16, ml_dtypes.bfloat16)}[elem]
    path = write(tmp_path, [node("Cast", ["x"], "y", to=TensorProto.FLOAT)], elem=kind[0],
                 out_elem=TensorProto.FLOAT)
    x = np.array([[0.47892547, -2.5, 65504, np.inf, -np.inf, np.nan]]).astype(kind[1])
    y = load_onnx(path, dtype=dtype)(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_casts_at_the_edges_of_a_float16_graph(tmp_path):
    """float16 in, cast up, a float32 Linear and ReLU, cast down to float16 at the end:
    the model takes the float16 input as it is and returns float32, which rounded to
    float16 is the graph's output."""
    rng = np.random.default_rng(0)
    w, b = linear_consts(rng)
    nodes = [node("Cast", ["x"], "x32", to=TensorProto.FLOAT),
             node("MatMul", ["x32", "w"], "mm"), node("Add", ["mm", "b"], "a"),
             node("Relu", ["a"], "r"), node("Cast", ["r"], "y", to=TensorProto.FLOAT16)]
    path = write(tmp_path, nodes, dict(w=w, b=b), elem=TensorProto.FLOAT16)
    ours = load_onnx(path)
    assert [type(m).__name__ for m in ours.modules] == ["Identity", "Linear", "ReLU"]
    assert ours[1].dtype == np.float32 and "weight_dtype" not in repr(ours[1])
    x = rng.standard_normal((5, 6)).astype(np.float16)
    y = ours(x)
    assert y.dtype == np.float32
    expected = np.maximum(x.astype(np.float64) @ w.astype(np.float64) + b, 0)
    assert_near(y, expected, 6)
    reference = run_ort(path, x)
    assert reference.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float16).astype(np.float32),
                               reference.astype(np.float32), rtol=2e-3, atol=1e-3)


def test_a_cast_down_at_the_end_is_left_to_the_caller(tmp_path):
    import ml_dtypes
    path = write(tmp_path, [node("Relu", ["x"], "r"),
                            node("Cast", ["r"], "y", to=TensorProto.BFLOAT16)],
                 out_elem=TensorProto.BFLOAT16)
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(2, 6) / 7
    y = load_onnx(path)(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    expected = np.maximum(x, 0).astype(ml_dtypes.bfloat16)  # what the graph returns
    np.testing.assert_array_equal(y.astype(ml_dtypes.bfloat16), expected)


@pytest.mark.parametrize("to", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_a_cast_down_inside_the_graph_is_refused(tmp_path, to):
    """A rounding to 16 bits between layers would change what follows: refused."""
    path = write(tmp_path, [node("Cast", ["x"], "h", to=to), node("Relu", ["h"], "y")])
    with pytest.raises(TypeError, match=rf"node 'h_node' \(Cast\): casts to type {to}; "
                                        rf"load_onnx reads casts to float32 and float64, "
                                        rf"and to float16 or bfloat16 as the graph's last"):
        load_onnx(path)


def test_batchnormalization_of_3d_data(tmp_path):
    rng = np.random.default_rng(0)
    scale, bias, mean = (f32(rng.standard_normal(3)) for _ in range(3))
    var = f32(rng.random(3) + 0.5)
    consts = dict(s=scale, b=bias, m=mean, v=var)
    path = write(tmp_path, [node("BatchNormalization", ["x", "s", "b", "m", "v"], "y",
                                 epsilon=1e-3)], consts, shape=("batch", 3, 5))
    ours = load_onnx(path)
    assert repr(list(ours.modules)) == "[BatchNorm1d(3, eps=0.001, momentum=0.1, " \
                                       "affine=True, track_running_stats=True)]"
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    shape = (1, 3, 1)
    expected = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-3) * \
        scale.reshape(shape) + bias.reshape(shape)
    assert_near(run_modules(ours, x), expected, 1)
    assert_near(run_modules(ours, x), run_ort(path, x), 1)
    four = write(tmp_path, [node("BatchNormalization", ["x", "s", "b", "m", "v"], "y")],
                 consts, shape=("batch", 3, 5, 2), name="four.onnx")
    with pytest.raises(ValueError, match=r"'y_node' \(BatchNormalization\): normalizes "
                                         r"dim 1 of 4-D data; load_onnx reads it on \(N, "
                                         r"C\) and \(N, C, L\) data"):
        load_onnx(four)
    wrong = write(tmp_path, [node("BatchNormalization", ["x", "s", "b", "m", "v"], "y")],
                  consts, shape=("batch", 4, 5), name="wrong.onnx")
    with pytest.raises(ValueError, match=r"its scale of shape \(3,\) does not match the "
                                         r"4 channels"):
        load_onnx(wrong)


def test_layernorm_ops_and_dropout(tmp_path):
    rng = np.random.default_rng(0)
    scale, bias = rng.standard_normal(6).astype(np.float32), f32(rng.standard_normal(6))
    nodes = [node("Dropout", ["x", "ratio"], "d"),
             helper.make_node("LayerNormalization", ["d", "scale", "bias"], ["ln", "mean"],
                              name="ln_node", epsilon=1e-3),
             node("LogSoftmax", ["ln"], "y", axis=1)]
    path = write(tmp_path, nodes, dict(ratio=f32(0.25), scale=scale, bias=bias))
    ours = load_onnx(path)
    assert repr(ours[0]) == "Dropout(p=0.25, inplace=False)" and ours[1].eps == 1e-3
    x = rng.standard_normal((4, 6)).astype(np.float32)
    assert_near(ours(x), run_ort(path, x), 6)


# -- files that must be refused ---------------------------------------------------------
def test_truncated_and_foreign_files(tmp_path):
    good = write(tmp_path, [node("Relu", ["x"], "y")])
    data = good.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[:len(data) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not an ONNX model\n" * 20)
    for path in (cut, text):
        with pytest.raises(ValueError, match=rf"{path.name}: not a readable ONNX model"):
            load_onnx(path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")  # parses as an empty model
    with pytest.raises(ValueError, match=r"empty.onnx: holds no ONNX graph \(an empty file"):
        load_onnx(empty)
    with pytest.raises(TypeError, match="path must be a file path"):
        load_onnx(3.5)


def huge_tensor():
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2 ** 40, 2 ** 40])
    t.raw_data = b"\0" * 16
    return t


def test_dims_larger_than_the_data_fail_fast(tmp_path):
    graph = helper.make_graph([node("MatMul", ["x", "w"], "y")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[huge_tensor()])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph), str(path))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"huge.onnx: node 'y_node' \(MatMul\): "
                                             r"initializer 'w': dims \[1099511627776, "
                                             r"1099511627776\] of float32 call for \d+ "
                                             r"bytes, it holds 16"):
            load_onnx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20 and time.perf_counter() - start < 5


def test_typed_values_fewer_than_the_dims(tmp_path):
    t = helper.make_tensor("w", TensorProto.FLOAT, [6, 4], [1.0] * 24)
    del t.float_data[3:]
    graph = helper.make_graph([node("MatMul", ["x", "w"], "y")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[t])
    path = tmp_path / "short.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match=r"'y_node' \(MatMul\): initializer 'w': dims "
                                         r"\[6, 4\] call for 24 values, it holds 3"):
        load_onnx(path)


def test_shapes_that_do_not_fit(tmp_path):
    rng = np.random.default_rng(0)
    w, b = linear_consts(rng)
    gemm = write(tmp_path, [node("Gemm", ["x", "B", "C"], "y")], dict(B=w, C=b[:3]),
                 name="gemm.onnx")
    with pytest.raises(ValueError, match=r"gemm.onnx: node 'y_node' \(Gemm\): its bias of "
                                         r"shape \(3,\) does not match the 4 outputs"):
        load_onnx(gemm)
    chain = write(tmp_path, [node("MatMul", ["x", "w1"], "h"), node("Relu", ["h"], "r"),
                             node("MatMul", ["r", "w2"], "y")],
                  dict(w1=w, w2=rng.standard_normal((5, 3)).astype(np.float32)),
                  name="chain.onnx")
    with pytest.raises(ValueError, match=r"node 'y_node' \(MatMul\): its weight takes 5 "
                                         r"inputs, the data before it has 4 per row"):
        load_onnx(chain)
    first = write(tmp_path, [node("MatMul", ["x", "w"], "y")], dict(w=w[:5]),
                  name="first.onnx")  # against the declared input width 6
    with pytest.raises(ValueError, match=r"takes 5 inputs, the data before it has 6"):
        load_onnx(first)
    ints = write(tmp_path, [node("MatMul", ["x", "w"], "y")], dict(w=np.ones((6, 4), np.int64)),
                 name="ints.onnx")
    with pytest.raises(TypeError, match=r"'y_node' \(MatMul\): its weight holds int64"):
        load_onnx(ints)


@pytest.mark.parametrize("nodes, consts, message", [
    ([node("Conv", ["x", "k"], "y")], dict(k=np.ones((1, 1, 1), np.float32)),
     r"node 'y_node' \(Conv\): this operator is not supported"),
    ([node("Relu", ["x"], "a"), node("Sigmoid", ["x"], "b"), node("Add", ["a", "b"], "y")],
     {}, r"node 'a_node' \(Relu\): 'x' feeds 2 nodes \(node 'a_node' \(Relu\), "
         r"node 'b_node' \(Sigmoid\)\)"),
    ([node("Gemm", ["x", "w"], "y", transA=1)], dict(w=np.ones((6, 4), np.float32)),
     r"'y_node' \(Gemm\): transA=1"),
    ([node("Softmax", ["x"], "y", axis=0)], {}, r"'y_node' \(Softmax\): axis=0 on 2-D data"),
    ([node("Dropout", ["x", "r", "t"], "y")], dict(r=f32(0.1), t=np.array(True)),
     r"'y_node' \(Dropout\): runs in training mode"),
    ([node("Div", ["x", "s2"], "d"), node("Erf", ["d"], "e"), node("Add", ["e", "one"], "a"),
      node("Mul", ["x", "a"], "m"), node("Mul", ["m", "bad"], "y")],
     dict(s2=S2, one=ONE, bad=f32(0.6)),
     r"node 'd_node' \(Div\): it and the element-wise nodes after it do not compute an "
     r"activation"),
    ([node("Gelu", ["x"], "y", domain="com.example")], {},
     r"'y_node' \(com.example.Gelu\): this operator is not supported"),
    ([node("Reshape", ["x", "s"], "y")], dict(s=np.array([3, 4])),
     r"'y_node' \(Reshape\): reshapes \['batch', 6\] to \[3, 4\]"),
])
def test_unsupported_graphs_name_the_node(tmp_path, nodes, consts, message):
    path = write(tmp_path, nodes, consts, opset=20)
    with pytest.raises(ValueError, match=message):
        load_onnx(path)


@pytest.mark.parametrize("nodes, consts, elem, message", [
    ([node("Gemm", ["x", "w"], "y", transB="yes")], dict(w=np.ones((4, 6), np.float32)),
     TensorProto.FLOAT, r"'y_node' \(Gemm\): its attribute 'transB' is not an int"),
    ([node("Cast", ["x"], "y", to=TensorProto.INT32)], {}, TensorProto.FLOAT,
     r"'y_node' \(Cast\): casts to type 6"),
    ([node("Relu", ["x"], "y")], {}, TensorProto.INT64,
     r"the graph's input 'x' holds INT64"),
    ([node("MatMul", ["x", "w"], "y")], dict(w=np.array([["a"] * 4] * 6)), TensorProto.FLOAT,
     r"'y_node' \(MatMul\): initializer 'w' has data type 8"),
])
def test_wrong_types_name_the_node(tmp_path, nodes, consts, elem, message):
    with pytest.raises(TypeError, match=message):
        load_onnx(write(tmp_path, nodes, consts, elem=elem))


def test_constant_node_data_checked_and_unnamed_nodes(tmp_path):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[6, 2 ** 50])
    t.raw_data = b"\0" * 8
    nodes = [helper.make_node("Constant", [], ["w"], name="w_const", value=t),
             node("MatMul", ["x", "w"], "y")]
    with pytest.raises(ValueError, match=r"'y_node' \(MatMul\): the value of node "
                                         r"'w_const' \(Constant\): dims \[6, "):
        load_onnx(write(tmp_path, nodes, name="const.onnx"))
    unnamed = write(tmp_path, [helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Conv", ["r", "k"], ["y"])],
                    dict(k=np.ones((1, 1, 1), np.float32)), name="unnamed.onnx")
    with pytest.raises(ValueError, match=r"node #1 \(Conv\): this operator is not "):
        load_onnx(unnamed)


def test_layer_options(tmp_path):
    w, b = linear_consts(np.random.default_rng(0), k=64, n=8)
    path = write(tmp_path, [node("MatMul", ["x", "w"], "mm"), node("Add", ["mm", "b"], "y")],
                 dict(w=w, b=b), shape=("batch", 64))
    int8 = load_onnx(path, weight_dtype="int8", backend="native")
    assert "weight_dtype='int8'" in repr(int8[0]) and "backend='native'" in repr(int8[0])
    assert load_onnx(path, dtype="float64")[0].dtype == np.float64
    with pytest.raises(ValueError, match="unknown backend"):
        load_onnx(path, backend="gpu")
    with pytest.raises(ValueError, match="weight_dtype 'int8' needs dtype=np.float32"):
        load_onnx(path, dtype=np.float64, weight_dtype="int8")


def test_two_outputs_and_the_output_option(tmp_path):
    """Several outputs: refused naming them and the option; output= reads the chain to
    the value it names, any value the graph computes, and nodes that do not feed it are
    ignored (with one output too)."""
    two = write(tmp_path, [node("Relu", ["x"], "y"), node("Tanh", ["y"], "z")],
                outputs=("y", "z"), name="two.onnx")
    with pytest.raises(ValueError, match=r"two.onnx: the graph has 2 outputs \['y', 'z'\]; "
                                         r".* load_onnx\(path, output=NAME\)"):
        load_onnx(two)
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(2, 6)
    assert [repr(m) for m in load_onnx(two, output="y").modules] == ["ReLU()"]
    assert [repr(m) for m in load_onnx(two, output="z").modules] == ["ReLU()", "Tanh()"]
    np.testing.assert_array_equal(load_onnx(two, output="y")(x), np.maximum(x, 0))
    side = write(tmp_path, [node("Relu", ["x"], "y"), node("Tanh", ["y"], "z")],
                 name="side.onnx")  # y is the output and feeds a node that leads nowhere
    assert [repr(m) for m in load_onnx(side).modules] == ["ReLU()"]
    with pytest.raises(ValueError, match=r"two.onnx: output='w' is no value of the graph; "
                                         r"its outputs are \['y', 'z'\]"):
        load_onnx(two, output="w")
    with pytest.raises(TypeError, match="output must be the name of a value"):
        load_onnx(two, output=0)
    apart = write(tmp_path, [node("Relu", ["x"], "y"), node("Identity", ["c"], "z")],
                  dict(c=f32([1.0])), outputs=("y", "z"), name="apart.onnx")
    with pytest.raises(ValueError, match=r"'x' feeds only nodes that do not lead to the "
                                         r"output: the output 'z' is not reached"):
        load_onnx(apart, output="z")


def test_models_without_opsets_are_refused(tmp_path):
    """A file cut just before its opset_import field parses as a model with a graph and
    no opsets; that, and a model declaring only other domains, are refused."""
    path = write(tmp_path, [node("Relu", ["x"], "y")])
    model = onnx.load(str(path))
    data = model.SerializeToString()
    del model.opset_import[:]
    cut = model.SerializeToString()
    assert data.startswith(cut)  # opset_import is serialized last here
    (tmp_path / "cut.onnx").write_bytes(cut)
    with pytest.raises(ValueError, match=r"cut.onnx: declares no opset of ONNX's default "
                                         r"domain \(its opset_import is empty\): a "
                                         r"truncated file"):
        load_onnx(tmp_path / "cut.onnx")
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match=r"other.onnx: declares no opset of ONNX's default "
                                         r"domain \(its opset_import lists only "
                                         r"\['com.microsoft'\]\)"):
        load_onnx(tmp_path / "other.onnx")


@pytest.mark.parametrize("nodes", [[node("Shape", ["x"], "y")],
                                   [node("Relu", ["x"], "r"), node("Shape", ["r"], "y")]])
def test_shape_of_the_data_as_the_output_names_the_node(tmp_path, nodes):
    """A Shape reads only the data's shape, so no node reads the data itself: the error
    names the Shape rather than saying that nothing reads it."""
    data = nodes[-1].input[0]
    with pytest.raises(ValueError, match=rf"model.onnx: node 'y_node' \(Shape\): reads "
                                         rf"the shape of '{data}'; Shape is not supported "
                                         rf"here"):
        load_onnx(write(tmp_path, nodes))


def test_rows_regrouped_and_not_restored(tmp_path):
    w, _ = linear_consts(np.random.default_rng(0))
    path = write(tmp_path, [node("Reshape", ["x", "s"], "r"), node("MatMul", ["r", "w"], "y")],
                 dict(s=np.array([6, 6]), w=w), shape=(2, 3, 6))
    with pytest.raises(ValueError, match=r"node 'r_node' \(Reshape\): regroups the rows to "
                                         r"\[6, 4\], and nothing after it restores"):
        load_onnx(path)


def save_external(tmp_path, folder="model"):
    rng = np.random.default_rng(0)
    w, b = linear_consts(rng)
    (tmp_path / folder).mkdir()
    model = onnx.load(str(write(tmp_path, [node("MatMul", ["x", "w"], "mm"),
                                           node("Add", ["mm", "b"], "y")], dict(w=w, b=b))))
    path = tmp_path / folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    return path, w


def set_location(path, location, length=None):
    model = onnx.load(str(path), load_external_data=False)
    entries = model.graph.initializer[0].external_data
    for e in entries:
        if e.key == "location":
            e.value = location
        if e.key == "length" and length is not None:
            e.value = str(length)
    onnx.save(model, str(path))


def test_external_data_inside_the_folder(tmp_path):
    path, w = save_external(tmp_path)
    ours = load_onnx(path)
    np.testing.assert_array_equal(ours[0].weight, w.T)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    assert_near(ours(x), run_ort(path, x), 6)


@pytest.mark.parametrize("where", ["parent", "absolute", "link out", "too long"])
def test_external_data_outside_the_folder_is_refused(tmp_path, where):
    path, _ = save_external(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((path.parent / "weights.bin").read_bytes())
    if where == "parent":
        set_location(path, "../outside.bin")
    elif where == "absolute":
        set_location(path, str(outside))
    elif where == "link out":
        try:
            os.symlink(outside, path.parent / "link.bin")
        except OSError:
            pytest.skip("this file system has no symbolic links")
        set_location(path, "link.bin")
    else:
        set_location(path, "weights.bin", length=10 ** 12)
    message = r"its dims call for 96 bytes, its external data has 1000000000000" \
        if where == "too long" else r"is not a file inside the model's folder"
    with pytest.raises(ValueError, match=rf"model.onnx: node 'mm_node' \(MatMul\): "
                                         rf"initializer 'w': .*{message}"):
        load_onnx(path)


def test_every_operator_in_the_table_loads_or_names_the_node(tmp_path):
    """Each handler, the derived ones (a module class's onnx_ops, built without
    arguments) included, given a bare node x -> op -> y: a model, or an error naming
    the node, never another exception."""
    from fastlinear.onnx._handlers import HANDLERS
    from fastlinear.sequential import _MODULES
    assert {op for cls in _MODULES for op in cls.onnx_ops} <= set(HANDLERS)
    for key in HANDLERS:
        domain, _, op = key.rpartition(".")
        path = write(tmp_path, [node(op, ["x"], "y", domain=domain or None)],
                     name=f"{key}.onnx")
        try:
            load_onnx(path)
        except (ValueError, TypeError) as exc:
            assert f"{key}.onnx: node 'y_node' ({key})" in str(exc), str(exc)


def test_nothing_below_imports_the_reader():
    """The reader sits above the containers it fills: no other module of fastlinear
    imports it (fastlinear/__init__.py exports it)."""
    import glob
    folder = os.path.dirname(fl.__file__)
    for path in glob.glob(os.path.join(folder, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, folder)
        if rel == "__init__.py" or rel.startswith("onnx" + os.sep):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert "from .onnx" not in text and "fastlinear.onnx" not in text and \
            "from . import onnx" not in text, rel


def test_without_onnx_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # any import of onnx now fails
    with pytest.raises(ImportError, match=r"pip install fastlinear\[onnx\]"):
        load_onnx(tmp_path / "model.onnx")


def test_onnxruntime_optimized_model_with_fused_gemm(tmp_path):
    """A file ONNX Runtime's session optimizer writes (optimized_model_filepath): each
    Gemm and its activation as one com.microsoft FusedGemm."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    nn = torch.nn
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.LeakyReLU(0.2),
                          nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4), nn.Sigmoid()).eval()
    path = export(torch, model, torch.randn(3, 16), tmp_path / "plain.onnx", "torchscript",
                  17)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "FusedGemm" in op_types(tmp_path / "optimized.onnx")
    ours = load_onnx(tmp_path / "optimized.onnx")
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    assert_near(ours(x.numpy()), expected, 16)


# -- files of other exporters -----------------------------------------------------------
def test_onnxruntime_quickgelu_is_silu(tmp_path):
    """ONNX Runtime's session optimizer (at its default level, and at EXTENDED, which
    this writes with) fuses x * Sigmoid(x) into com.microsoft QuickGelu with alpha=1:
    read as SiLU."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    nn = torch.nn
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 12), nn.SiLU(), nn.Linear(12, 4)).eval()
    path = export(torch, model, torch.randn(3, 16), tmp_path / "plain.onnx", "torchscript",
                  17)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "QuickGelu" in op_types(tmp_path / "optimized.onnx")
    ours = load_onnx(tmp_path / "optimized.onnx")
    assert [type(m).__name__ for m in ours.modules] == ["Linear", "SiLU", "Linear"]
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    assert_near(ours(x.numpy()), expected, 16)
    assert_near(ours(x.numpy()), run_ort(tmp_path / "optimized.onnx", x.numpy()), 16)


@pytest.mark.parametrize("alpha, shown", [(None, "1.702"), (0.5, "0.5")])
def test_quickgelu_of_other_alphas_is_refused(tmp_path, alpha, shown):
    attrs = {} if alpha is None else dict(alpha=alpha)  # ONNX Runtime's default: 1.702
    path = write(tmp_path, [node("QuickGelu", ["x"], "y", domain="com.microsoft", **attrs)])
    with pytest.raises(ValueError, match=rf"node 'y_node' \(com.microsoft.QuickGelu\): "
                                         rf"alpha={shown}: x \* Sigmoid\(alpha \* x\) is "
                                         rf"SiLU only for alpha=1"):
        load_onnx(path)


def sklearn_classifier(classes):
    """A small scikit-learn MLPClassifier and data for it."""
    import warnings
    neural = pytest.importorskip("sklearn.neural_network")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (classes == 3) * (x[:, 1] > 0)
    with warnings.catch_warnings():  # not converging in a few steps is fine here
        warnings.simplefilter("ignore")
        return neural.MLPClassifier((8,), max_iter=50, random_state=0).fit(x, y), x


@pytest.mark.parametrize("classes", [2, 3])
def test_skl2onnx_classifiers(tmp_path, classes):
    """skl2onnx's files of a classifier: two outputs (labels, probabilities), refused
    naming output=; the probabilities read with it, ZipMap's or not. The binary one
    writes them as Concat(1 - Sigmoid(z), Sigmoid(z)), read as Softmax([0, z])."""
    skl2onnx = pytest.importorskip("skl2onnx")
    clf, x = sklearn_classifier(classes)
    plain, zipped = tmp_path / "plain.onnx", tmp_path / "zipmap.onnx"
    plain.write_bytes(skl2onnx.to_onnx(clf, x[:1], options={"zipmap": False})
                      .SerializeToString())
    zipped.write_bytes(skl2onnx.to_onnx(clf, x[:1]).SerializeToString())
    if classes == 2:
        assert {"Sub", "Concat"} <= set(op_types(plain)), "skl2onnx writes another form"
    with pytest.raises(ValueError, match=r"plain.onnx: the graph has 2 outputs \['label', "
                                         r"'probabilities'\].*output=NAME"):
        load_onnx(plain)
    with pytest.raises(ValueError, match=r"ZipMap\): turns the probabilities '(\w+)' into a "
                                         r"list of dicts; read the chain to them instead, "
                                         r"output='\1'"):
        load_onnx(zipped, output="output_probability")
    name = "probabilities" if classes == 2 else "out_activations_result"
    x = np.concatenate([x, 10 * x])  # large logits too: probabilities of 0 and 1
    expected = run_ort(plain, x, "probabilities")
    for path, output in ((plain, "probabilities"), (zipped, name)):
        ours = load_onnx(path, output=output)
        kinds = [type(m).__name__ for m in ours.modules if type(m).__name__ != "Identity"]
        assert kinds == ["Linear", "ReLU", "Linear", "Softmax"]
        y = ours(x)
        # within the rounding of probabilities near 1 (the file's 1 - p rounds there)
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=2 * np.finfo(np.float32).eps)
        np.testing.assert_allclose(y, clf.predict_proba(x), rtol=1e-5, atol=1e-6)


def hummingbird_binary(tmp_path, order, width=1, between=None, name="hb.onnx"):
    """The nodes hummingbird writes for a binary classifier (hand-built: hummingbird
    pins onnx <= 1.16): Gemm -> z, Sigmoid, Sub(1, p), Concat along axis 1 -> the
    probabilities, which ArgMax reads for the label, a second output."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((width, 6)).astype(np.float32)
    b = rng.standard_normal(width).astype(np.float32)
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [node("Gemm", ["x", "w", "b"], "z", transB=1)]
    z = "z"
    if between is not None:
        nodes.append(node(between, ["z"], "z2"))
        z = "z2"
    nodes += [node("Sigmoid", [z], "p"), helper.make_node("Constant", [], ["c1"], value=one),
              node("Sub", ["c1", "p"], "q"),
              node("Concat", ["q", "p"] if order == "q, p" else ["p", "q"], "probs", axis=1),
              node("ArgMax", ["probs"], "variable", axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("variable", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2 * width])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("weight_dtype", [None, "int8"])
@pytest.mark.parametrize("order", ["q, p", "p, q"])
def test_binary_probabilities_are_softmax_of_zero_and_z(tmp_path, order, weight_dtype):
    """Concat(1 - Sigmoid(z), Sigmoid(z)): the Gemm gains a row of zeros on the side of
    1 - Sigmoid(z), then Softmax; its z keeps its bits, the zero row gives exactly 0."""
    path = hummingbird_binary(tmp_path, order)
    with pytest.raises(ValueError, match=r"\['variable', 'probs'\].*output=NAME"):
        load_onnx(path)
    ours = load_onnx(path, output="probs", weight_dtype=weight_dtype)
    assert [type(m).__name__ for m in ours.modules] == ["Linear", "Softmax"]
    linear = ours[0]
    zero = 0 if order == "q, p" else 1
    assert linear.out_features == 2 and not linear.weight[zero].any() and \
        linear.bias[zero] == 0
    x = np.random.default_rng(8).standard_normal((64, 6)).astype(np.float32) * 4
    logits = linear(x)
    assert not logits[:, zero].any()
    y = ours(x)
    np.testing.assert_array_equal(y, fl.Softmax(-1)(logits))
    if weight_dtype is None:
        np.testing.assert_allclose(y, run_ort(path, x, "probs"), rtol=1e-6,
                                   atol=2 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("width, between", [(2, None), (1, "Tanh")])
def test_binary_probabilities_not_after_one_output_are_refused(tmp_path, width, between):
    """Two values per row, or z not written by a Linear: refused naming the value to
    read the chain to instead."""
    path = hummingbird_binary(tmp_path, "q, p", width, between)
    with pytest.raises(ValueError, match=r"node 'p_node' \(Sigmoid\): .* compute "
                                         r"Concat\(1 - Sigmoid\(z\), Sigmoid\(z\)\).*"
                                         r"output='p'"):
        load_onnx(path, output="probs")
    assert [type(m).__name__ for m in load_onnx(path, output="p").modules][-1] == "Sigmoid"
