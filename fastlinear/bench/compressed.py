"""The benchmark's compressed-weight tables (`python -m fastlinear.bench --weight-dtype F`).

For each shape, fastlinear with float32 weights and with weights in format F run
interleaved, round after round (as in the float32 table), against the rivals that store
weights in a like format:

    bfloat16     torch F.linear on bfloat16 weight, bias and input
    float16      the same, and torch F.linear on float16 weight, bias and input
    int8         torch.ao.quantization.quantize_dynamic (qint8, torch's default qconfig:
                 per tensor), and ONNX Runtime's quantize_dynamic (QInt8, per channel) of
                 a MatMul + Add model: int8 weights, inputs quantized to uint8 per call
    int4         ONNX Runtime MatMulNBits (4 bits, symmetric, block = --group-size) from
                 its MatMulNBitsQuantizer: at the default accuracy level (float compute)
                 and at accuracy_level=4 (inputs quantized to int8 per block)

With --activations int8 (int8 and int4 weights) fastlinear's layer in the format is
Linear(..., activations="int8"): each row of x quantized to int8 per call, exact integer
sums (docs/formats.md, "Integer activations"), the way the rivals compute; its column
replaces the weight-only one.

Every contender gets the same float32 x, N(0, 1), and the same float32 weight and bias,
drawn as torch.nn.Linear draws them (uniform in +-1/sqrt(K)); each quantizes the weight
its own way. The error of each is max|y - y64| / max|y64|, where y64 is the product of
those unquantized float32 arrays in float64: it includes the quantization. Times are the
best per call over the rounds; torch's bfloat16/float16 input is converted before timing.
"""
import contextlib
import logging
import os
import sys
import tempfile
import warnings

import numpy as np

import fastlinear as fl

from .._formats import FORMAT
from . import limits
from .harness import (Progress, best_times, format_us, group_line, micro, ort_session, rel_error,
                      torch_linear)

DEFAULT_SHAPES = "1x4096x4096,8x4096x4096,128x768x3072"
# Table titles of the contenders (8 characters at most): fl fastlinear, pt PyTorch,
# ort ONNX Runtime.
SHORT = {"bfloat16": "bf16", "float16": "f16", "int8": "i8", "int4": "i4"}
TITLES = {"fastlinear float32": "fl f32",
          **{f"fastlinear {f}": f"fl {s}" for f, s in SHORT.items()},
          **{f"fastlinear {f} x int8": f"fl {s}xi8" for f, s in SHORT.items()},
          "torch bf16": "pt bf16", "torch f16": "pt f16", "torch int8": "pt i8",
          "onnxruntime int8": "ort i8", "onnxruntime int4": "ort i4",
          "onnxruntime int4 acc4": "ort i4a4"}
LEGEND = {
    "torch bf16": "torch F.linear, bfloat16 weight, bias and input",
    "torch f16": "torch F.linear, float16 weight, bias and input",
    "torch int8": "torch quantize_dynamic, qint8 weights (per tensor), inputs quantized per call",
    "onnxruntime int8": "ONNX Runtime quantize_dynamic, int8 weights per channel, uint8 inputs",
    "onnxruntime int4": "ONNX Runtime MatMulNBits, 4 bits symmetric, block {g}, float compute",
    "onnxruntime int4 acc4": "the same at accuracy_level=4: inputs quantized to int8",
}


def ours(weight_dtype, activations="float32"):
    """The name of fastlinear's contender in the format (with int8 activations: the
    integer one)."""
    return f"fastlinear {weight_dtype}" + (" x int8" if activations == "int8" else "")


def rival_names(weight_dtype):
    """The rivals a format's table sets against fastlinear, in table order."""
    return {"bfloat16": ("torch bf16",),
            "float16": ("torch bf16", "torch f16"),
            "int8": ("torch int8", "onnxruntime int8"),
            "int4": ("onnxruntime int4", "onnxruntime int4 acc4")}[weight_dtype]


@contextlib.contextmanager
def _quiet():
    """Silences the rivals' quantizers: torch's deprecation warnings, and ONNX Runtime's
    log lines (its matmul_nbits_quantizer calls logging.basicConfig on import: the root
    logger's handlers and level are put back afterwards)."""
    root = logging.getLogger()
    handlers, level, disabled = root.handlers[:], root.level, root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
        root.handlers[:] = handlers
        root.setLevel(level)


# -- the rivals: each builder returns {name: (run, as_float64)} or {} when its package is
# not installed (a note says so on stderr).

def _torch_float(x, w, b, name, dtype_name):
    return {name: (torch_linear(x, w, b, dtype_name), lambda y: y.double().numpy())}


def _torch_int8(x, w, b):
    import torch
    module = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
        module.bias.copy_(torch.from_numpy(b))
    with _quiet():  # torch.ao.quantization warns that it is deprecated
        model = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(module), {torch.nn.Linear}, dtype=torch.qint8)
    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(tx)
    return {"torch int8": (run, lambda y: y.double().numpy())}


def matmul_add_model(w, b):
    """A float32 ONNX model y = MatMul(x, w.T) + b (the form ONNX Runtime's quantizers
    quantize; they leave Gemm alone)."""
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("MatMul", ["x", "w_t"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w.shape[0]])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "w_t"),
         numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _check_ops(model, wanted, what):
    ops = {node.op_type for node in model.graph.node}
    if not ops & set(wanted):
        raise RuntimeError(f"{what}: the quantized model has no {' or '.join(wanted)} node "
                           f"(its nodes: {sorted(ops)})")


def ort_int8_model(w, b):
    """ONNX Runtime's dynamic quantization, int8 weights per output channel."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as folder, _quiet():
        path = os.path.join(folder, "linear.int8.onnx")
        quantize_dynamic(matmul_add_model(w, b), path, per_channel=True,
                         weight_type=QuantType.QInt8)
        model = onnx.load(path)
    _check_ops(model, ("MatMulInteger", "DynamicQuantizeMatMul"), "ONNX Runtime int8")
    return model


def ort_int4_model(w, b, block_size, accuracy_level=None):
    """ONNX Runtime's 4-bit weight-only quantization (MatMulNBits), symmetric."""
    with _quiet():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        quantizer = MatMulNBitsQuantizer(matmul_add_model(w, b), bits=4,
                                         block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level)
        quantizer.process()
    model = quantizer.model.model
    _check_ops(model, ("MatMulNBits",), "ONNX Runtime int4")
    return model


def _ort_runs(x, models, threads):
    runs = {}
    for name, model in models.items():
        session = ort_session(model, threads)
        runs[name] = ((lambda s=session: s.run(None, {"x": x})[0]),
                      lambda y: np.asarray(y, np.float64))
    return runs


def rivals(weight_dtype, x, w, b, threads, group_size):
    """name -> (run, as_float64) for the format's rivals that are installed."""
    runs = {}
    names = rival_names(weight_dtype)
    if "torch bf16" in names or "torch int8" in names:
        try:
            import torch  # noqa: F401
        except ImportError:
            _note("torch is not installed: its columns stay empty")
        else:
            if "torch bf16" in names:
                runs.update(_torch_float(x, w, b, "torch bf16", "bfloat16"))
            if "torch f16" in names:
                runs.update(_torch_float(x, w, b, "torch f16", "float16"))
            if "torch int8" in names:
                runs.update(_torch_int8(x, w, b))
    ort_names = [n for n in names if n.startswith("onnxruntime")]
    if ort_names:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            if weight_dtype == "int4":
                import onnx_ir  # noqa: F401  (the 4-bit quantizer's, undeclared by its wheel)
        except ImportError as exc:
            _note(f"{exc.name} is not installed: the ONNX Runtime columns stay empty")
        else:
            if weight_dtype == "int8":
                models = {"onnxruntime int8": ort_int8_model(w, b)}
            else:
                models = {"onnxruntime int4": ort_int4_model(w, b, group_size),
                          "onnxruntime int4 acc4": ort_int4_model(w, b, group_size, 4)}
            runs.update(_ort_runs(x, models, threads))
    return runs


_noted = set()


def _note(message):
    """A note on stderr, once per process."""
    if message not in _noted:
        _noted.add(message)
        sys.stdout.flush()
        print(f"note: {message}", file=sys.stderr)


# -- fastlinear ------------------------------------------------------------------------

def fastlinear_runs(x, w, b, weight_dtype, group_size, activations="float32"):
    """name -> (run, as_float64) for fastlinear float32 and fastlinear in `weight_dtype`
    (with `activations`); and that layer."""
    base = fl.Linear(w.shape[1], w.shape[0])
    base.load_state_dict({"weight": w, "bias": b})
    layer = base.quantize(weight_dtype,
                          group_size=group_size if weight_dtype == "int4" else None,
                          activations=None if activations == "float32" else activations)
    as64 = lambda y: np.asarray(y, np.float64)  # noqa: E731
    return {"fastlinear float32": ((lambda: base(x)), as64),
            ours(weight_dtype, activations): ((lambda: layer(x)), as64)}, layer


def _check_own_weights(layer, y, x, name):
    """The compressed layer computes x @ layer.weight.T + bias (the float32 values it
    reports) within float32 rounding: the quantization is all of its error. With int8
    activations, also within the rounding of each row of x to 127 steps of its largest
    magnitude (at most half a step per value)."""
    weight = np.asarray(layer.weight, np.float64)
    bias = np.zeros(weight.shape[0]) if layer.bias is None else np.asarray(layer.bias,
                                                                           np.float64)
    x64 = x.astype(np.float64)
    exact = x64 @ weight.T + bias
    scale = np.abs(x64) @ np.abs(weight).T + np.abs(bias)
    tol = 2 * (x.shape[1] + 2) * np.finfo(np.float32).eps * scale
    if layer.activations == "int8":
        step = np.abs(x64).max(axis=1, keepdims=True) / 127
        tol = tol + 0.501 * step * np.abs(weight).sum(axis=1)
    if not np.all(np.abs(y - exact) <= tol):
        raise SystemExit(f"{name} disagrees with its own layer.weight (float64 reference)")


def measure(shape, weight_dtype, threads, group_size, rounds, budget, settle, rng,
            activations="float32"):
    """One shape of one format's table: time and error per contender, and the ratios."""
    m, k, n = shape
    bound = 1.0 / np.sqrt(k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.uniform(-bound, bound, (n, k)).astype(np.float32)
    b = rng.uniform(-bound, bound, n).astype(np.float32)
    y64 = x.astype(np.float64) @ w.astype(np.float64).T + b
    name_ours = ours(weight_dtype, activations)
    contenders, layer = fastlinear_runs(x, w, b, weight_dtype, group_size, activations)
    contenders.update(rivals(weight_dtype, x, w, b, threads, group_size))
    errors = {}
    for name, (run, as_float64) in contenders.items():
        y = as_float64(run())
        errors[name] = rel_error(y, y64)
        if name == name_ours:
            _check_own_weights(layer, y, x, name)
    best = best_times({name: run for name, (run, _) in contenders.items()}, rounds, budget,
                      settle)
    us = {name: t * 1e6 for name, t in best.items()}
    mine = us.get(name_ours)
    present = [name for name in rival_names(weight_dtype) if name in us]
    rival = min(present, key=us.get) if present else None
    limit = None
    if activations == "int8" and mine is not None:  # how close to the machine's bound
        bound = limits.int8_bound(m, k, n, FORMAT[weight_dtype], threads, group_size)
        limit = None if bound is None else (bound[0], bound[1] * 1e6 / mine)
    row = {"m": m, "k": k, "n": n, "weight_dtype": weight_dtype, "limit": limit,
           "group_size": group_size if weight_dtype == "int4" else None,
           "activations": activations,
           "us": us, "error": errors, "best_rival": rival,
           "ratio_float32": None if mine is None else mine / us["fastlinear float32"],
           "ratio_best": None if mine is None or rival is None else mine / us[rival]}
    return row


# -- the table ---------------------------------------------------------------------------

def _ratio(r):
    return "-" if r is None else f"{r:.2f}"


def _err(e):
    return "-" if e is None else f"{e:.1e}"


def columns(weight_dtype, activations="float32"):
    """(group, title, width, cell of a row) for a format's table."""
    names = ["fastlinear float32", ours(weight_dtype, activations),
             *rival_names(weight_dtype)]
    cols = [("", "M x K x N", 12, lambda r: f"{r['m']}x{r['k']}x{r['n']}")]
    cols += [("time", TITLES[name], 8, lambda r, name=name: format_us(r["us"].get(name)))
             for name in names]
    if activations == "int8":  # its share of the bound, in the place of /f32
        cols += [("ratio", "limit", 8, lambda r: "-" if not r.get("limit") else
                  f"{r['limit'][0]} {100 * r['limit'][1]:.0f}%")]
    else:
        cols += [("ratio", "/f32", 5, lambda r: _ratio(r["ratio_float32"]))]
    cols += [("ratio", "/best", 5, lambda r: _ratio(r["ratio_best"]))]
    cols += [("error", TITLES[name], 8, lambda r, name=name: _err(r["error"].get(name)))
             for name in names]
    return cols


def table_head(weight_dtype, group_size, threads, rounds, activations="float32"):
    """The lines above a format's table: what it measures, every column, the header."""
    what = f"{weight_dtype} weights" + (" x int8 activations" if activations == "int8"
                                        else "")
    what += f", groups of {group_size}" if weight_dtype == "int4" else ""
    timing = (f"times in {micro()}s per call, the best of {rounds} interleaved rounds"
              if activations == "float32" else  # shorter: the line within 100 columns
              f"{micro()}s per call, best of {rounds} interleaved rounds")
    name = ours(weight_dtype, activations)
    title = TITLES[name]
    kind = (f"{weight_dtype} weights, each row of x quantized to int8, integer sums"
            if activations == "int8" else f"{weight_dtype} weights")
    lines = [f"{what}, {threads} threads; {timing}",
             f"  {'fl f32':>8}: fastlinear, float32 weights",
             f"  {title:>8}: fastlinear, {kind}",
             (f"  {'limit':>8}: the bound's share of the time: the probed int8 dot-product "
              f"peak (dot) or read (BW)" if activations == "int8" else
              f"  {'/f32':>8}: time of {name} / time of fastlinear float32"),
             f"  {'/best':>8}: time of {name} / time of the fastest rival",
             f"  {'error':>8}: max|y - y64| / max|y64|, y64 the float64 product of the "
             f"unquantized weights"]
    for name in rival_names(weight_dtype):
        lines.append(f"  {TITLES[name]:>8}: {LEGEND[name].format(g=group_size)}")
    cols = columns(weight_dtype, activations)
    titles = {"time": f" time ({micro()}s) ", "ratio": " ratio ", "error": " error "}
    lines.append(group_line([(titles.get(g, ""), width) for g, _, width, _ in cols]))
    lines.append(" ".join(f"{title:>{width}}" for _, title, width, _ in cols))
    return lines


def format_row(row):
    return " ".join(f"{cell(row):>{width}}" for _, _, width, cell
                    in columns(row["weight_dtype"], row.get("activations", "float32")))


def run_tables(formats, shapes, group_size, threads, rounds, budget, settle,
               activations="float32"):
    """format -> rows, printing each format's table as it is measured. Every table draws
    its arrays from the same seed: the float32 weights are the same in each."""
    progress = Progress(len(formats) * len(shapes))
    results = {}
    for weight_dtype in formats:
        for line in ["", *table_head(weight_dtype, group_size, threads, rounds,
                                     activations)]:
            progress.write(line, step=False)
        rng = np.random.default_rng(0)
        rows = []
        for shape in shapes:
            progress.show(f"{weight_dtype} {'x'.join(map(str, shape))}")
            row = measure(shape, weight_dtype, threads, group_size, rounds, budget, settle,
                          rng, activations)
            progress.write(format_row(row))
            rows.append(row)
        results[weight_dtype] = rows
    progress.close()
    return results
