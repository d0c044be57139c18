"""The benchmark's whole-model table (`python -m fastlinear.bench --mlp [FILE.onnx ...]`).

The MLP 784-512 (ReLU) - 512 (GELU, erf) - 256 (ReLU) - 10, its weights drawn as
torch.nn.Linear draws them, runs at batch 1, 8, 64 and 1024 as:

    fastlinear     fastlinear.Sequential: one native call per forward, float32 weights
    fastlinear bfloat16, fastlinear int8
                   the same model quantized (Sequential.quantize): at batch 1 a
                   forward is a read of the weights, and these read half and a quarter
                   of the bytes
    fastlinear i8 x i8
                   int8 weights and int8 activations (quantize("int8",
                   activations="int8"): integer sums; no bound is shown for it)
    torch          the same torch.nn.Sequential, eager, under inference_mode
    onnxruntime    an ONNX graph of Gemm, Relu and Gelu nodes (opset 20), all graph
                   optimizations on, intra_op_num_threads = the thread count
    openvino       the same ONNX graph compiled by OpenVINO for the CPU (f32 precision,
                   the thread count, latency hint, one stream; harness.openvino_runner)

interleaved, round after round, best time per call (as in the float32 table), a line per
contender. The error of each is max|y - y64| / max|y64|, y64 the float32-weight model in
float64 (numpy, scipy's erf), so a quantized model's error includes its quantization's.
Each of fastlinear's models is set against the machine's bound for it (limits.ModelBound,
probed around the rounds): its Linear layers' flops at the FMA peak, or one read of its
own weights' bytes, whichever takes longer. Each .onnx file given runs with fastlinear
(fastlinear.load_onnx), ONNX Runtime and OpenVINO on N(0, 1) input shaped as the graph's
input says (the batch its first dimension); its float64 reference is fastlinear's
float64 load of the file.
"""
import os

import numpy as np
from scipy.special import erf

import fastlinear as fl
from fastlinear._formats import FORMAT

from . import limits
from .harness import Progress, best_times, micro, openvino_runner, ort_session, rel_error

MLP = ((784, 512, "relu"), (512, 512, "gelu"), (512, 256, "relu"), (256, 10, None))
BATCHES = (1, 8, 64, 1024)
# fastlinear's contenders and the format of their weights; the quantized ones are the
# float32 model's quantize().
OURS = {"fastlinear": "float32", "fastlinear bfloat16": "bfloat16",
        "fastlinear int8": "int8", "fastlinear i8 x i8": "int8"}
INTEGER = ("fastlinear i8 x i8",)  # with int8 activations
RIVALS = ("torch", "onnxruntime", "openvino")


def mlp_weights(rng):
    """[(w, b, act)] drawn like torch.nn.Linear: uniform in +-1/sqrt(in)."""
    layers = []
    for k, n, act in MLP:
        bound = 1 / np.sqrt(k)
        layers.append((rng.uniform(-bound, bound, (n, k)).astype(np.float32),
                       rng.uniform(-bound, bound, n).astype(np.float32), act))
    return layers


def reference(layers, x):
    """The MLP in float64."""
    y = x.astype(np.float64)
    for w, b, act in layers:
        y = y @ w.astype(np.float64).T + b
        if act == "relu":
            y = np.maximum(y, 0)
        elif act == "gelu":
            y = y * 0.5 * (1 + erf(y / np.sqrt(2)))
    return y


def fastlinear_model(layers):
    modules = []
    for w, b, act in layers:
        linear = fl.Linear(w.shape[1], w.shape[0])
        linear.load_state_dict({"weight": w, "bias": b})
        modules.append(linear)
        if act:
            modules.append(fl.ReLU() if act == "relu" else fl.GELU())
    return fl.Sequential(*modules)


def torch_model(layers):
    """The torch.nn.Sequential, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    modules = []
    for w, b, act in layers:
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if act:
            modules.append(torch.nn.ReLU() if act == "relu" else torch.nn.GELU())
    return torch.nn.Sequential(*modules).eval()


def onnx_model(layers):
    """The MLP as an ONNX ModelProto, or None without onnx."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    nodes, inits, name = [], [], "x"
    for i, (w, b, act) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [name, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
        name = f"h{i}"
        if act:
            nodes.append(helper.make_node("Relu" if act == "relu" else "Gelu", [name],
                                          [f"a{i}"]))
            name = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 784])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["m", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def ort_runner(model_or_path, threads):
    """A callable x -> y running ONNX Runtime, or None without it."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    session = ort_session(model_or_path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def linear_layers(model):
    """[(K, N, Format, group)] of the Linear layers of a fastlinear model, in order; None
    where the model computes in float64 (the bound is float32's)."""
    layers = [m for _, m in model._flat() if isinstance(m, fl.Linear)]
    if any(m.dtype != np.float32 for m in layers):
        return None
    return [(m.in_features, m.out_features, FORMAT[m.weight_dtype], m.group_size)
            for m in layers]


def measure_model(title, runs_for, ref_for, input_for, layers_for, threads, rounds,
                  budget, settle, progress):
    """Rows of one model at each batch: times in microseconds, errors, the ratio to the
    fastest rival per contender, and each of fastlinear's models set against the
    machine's bound for it. `layers_for`: {contender: linear_layers(its model)} for those
    with a bound."""
    rows = []
    for m in BATCHES:
        progress.show(f"{title} batch {m}")
        x = input_for(m)
        runs = runs_for(x)
        y64 = ref_for(x)
        # each right after its call: OpenVINO's output is a view its next call rewrites
        errors = {name: rel_error(run(), y64) for name, run in runs.items()}
        bound = limits.ModelBound(layers_for, m, threads) if layers_for else None
        best = best_times(runs, rounds, budget, settle,
                          between=bound.probe if bound is not None else None)
        row = {"model": title, "batch": m,
               "us": {name: t * 1e6 for name, t in best.items()}, "error": errors}
        rivals = [name for name in RIVALS if name in best]
        if rivals:
            rival = min(rivals, key=best.get)
            row["best_rival"] = rival
            row["ratio_best"] = {name: t / best[rival] for name, t in best.items()}
        if bound is not None:
            bound.release()
            row["bound"], row["limit_fraction"], row["limits"] = {}, {}, {}
            for name in layers_for:
                limit = bound.bound(name)
                if limit is not None:
                    row["bound"][name] = limit[0]
                    row["limit_fraction"][name] = limit[1] / best[name]
                    row["limits"][name] = bound.record(name)
        rows.append(row)
        progress.write(format_row(row))
    return rows


# The table's columns after the model and the batch (title, width); a line per contender.
COLUMNS = (("contender", 19), ("time", 10), ("/best", 6), ("limit", 8), ("error", 8))


def _cells(row, name):
    us = row["us"][name]
    ratio = row.get("ratio_best", {}).get(name)
    fraction = row.get("limit_fraction", {}).get(name)
    return (name, f"{us:.1f}" if us < 1e4 else f"{us:.0f}",
            "-" if ratio is None else f"{ratio:.2f}",
            "-" if fraction is None else f"{row['bound'][name]} {100 * fraction:.0f}%",
            f"{row['error'][name]:.1e}")


def format_row(row):
    """The lines of one batch: the model and the batch on the first."""
    lines = []
    for i, name in enumerate(row["us"]):
        lead = f"{row['model']:>12} {row['batch']:>6}" if i == 0 else " " * 19
        cells = [f"{cell:<{w}}" if j == 0 else f"{cell:>{w}}"
                 for j, (cell, (_, w)) in enumerate(zip(_cells(row, name), COLUMNS))]
        lines.append(f"{lead}  {' '.join(cells)}")
    return "\n".join(lines)


def head(rounds):
    """The legend and the header of the table."""
    return [f"Times in {micro()}s per call, each contender's best of {rounds} interleaved "
            "rounds; a line per contender.",
            "  mlp                784-512 (ReLU) - 512 (GELU) - 256 (ReLU) - 10",
            "  fastlinear         fastlinear.Sequential (the MLP: float32 weights); "
            "bfloat16, int8: the",
            "                     same model quantized; i8 x i8: int8 weights and activations",
            "  torch              eager; onnxruntime: ONNX Runtime, the model as ONNX Gemm, "
            "Relu, Gelu",
            "  openvino           OpenVINO, the same ONNX model: f32 precision, latency "
            "hint, one stream",
            "  /best              the time / the fastest rival's (torch, onnxruntime, "
            "openvino): below 1,",
            "                     faster",
            "  limit              the machine's bound for that model / its time, 100% = at "
            "the bound; the",
            "                     longer of FMA, the Linear layers' flops at the FMA peak, "
            "and BW, one read",
            "                     of the model's weights in its own format (bfloat16: half "
            "the bytes, int8:",
            "                     a quarter)",
            "  error              max|y - y64| / max|y64|, y64: the model in float64 (the "
            "MLP: its float32",
            "                     weights, so a quantized model's error includes its "
            "quantization's)",
            f"{'model':>12} {'batch':>6}  "
            + " ".join(f"{t:<{w}}" if j == 0 else f"{t:>{w}}" for j, (t, w) in enumerate(
                (title if title != "time" else f"time ({micro()}s)", w)
                for title, w in COLUMNS))]


def run_mlp(onnx_paths, threads, rounds, budget, settle):
    """The MLP table, then one per .onnx file; returns the rows."""
    for line in head(rounds):
        print(line)
    progress = Progress(len(BATCHES) * (1 + len(onnx_paths)), "model")
    rng = np.random.default_rng(0)
    layers = mlp_weights(rng)
    ours = {"fastlinear": fastlinear_model(layers)}
    for name, fmt in OURS.items():
        if fmt != "float32":
            ours[name] = ours["fastlinear"].quantize(
                fmt, activations="int8" if name in INTEGER else None)
    theirs = torch_model(layers)
    onnx = onnx_model(layers)
    ort_run = ort_runner(onnx, threads) if onnx is not None else None
    ov_run = openvino_runner(onnx, threads) if onnx is not None else None

    def runs_for(x):
        runs = {name: (lambda model=model: model(x)) for name, model in ours.items()}
        if theirs is not None:
            import torch
            tx = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode():
                    return theirs(tx).numpy()
            runs["torch"] = run_torch
        return _with_onnx_rivals(runs, x, ort_run, ov_run)

    def input_for(m):
        return rng.standard_normal((m, MLP[0][0])).astype(np.float32)

    layers_for = {name: linear_layers(model) for name, model in ours.items()
                  if name not in INTEGER}  # the bound is the float FMA peak's
    rows = measure_model("mlp", runs_for, lambda x: reference(layers, x), input_for,
                         layers_for, threads, rounds, budget, settle, progress)
    for path in onnx_paths:
        rows += run_onnx_file(path, threads, rounds, budget, settle, rng, progress)
    progress.close()
    return rows


def _with_onnx_rivals(runs, x, ort_run, ov_run):
    """runs, with ONNX Runtime's and OpenVINO's session on x where each is installed."""
    if ort_run is not None:
        runs["onnxruntime"] = lambda: ort_run(x)
    if ov_run is not None:
        runs["openvino"] = lambda: ov_run(x)
    return runs


def run_onnx_file(path, threads, rounds, budget, settle, rng, progress):
    import onnx
    graph_input = onnx.load(path, load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:]
    try:
        ours, ref = fl.load_onnx(path), fl.load_onnx(path, dtype=np.float64)
    except (OSError, TypeError, ValueError) as exc:
        raise SystemExit(f"--mlp: cannot run {path}: {exc}") from None
    ort_run = ort_runner(path, threads)
    ov_run = openvino_runner(path, threads)

    def runs_for(x):
        return _with_onnx_rivals({"fastlinear": lambda: ours(x)}, x, ort_run, ov_run)

    def input_for(m):
        return rng.standard_normal((m, *dims)).astype(np.float32)

    # The bound counts the batch's rows through every Linear: only where the input is
    # a batch of vectors (a 3-D input's rows depend on what the graph does with them).
    layers = linear_layers(ours) if len(dims) == 1 else None
    title = os.path.basename(path)[:12]
    return measure_model(title, runs_for, lambda x: ref(x.astype(np.float64)), input_for,
                         {"fastlinear": layers} if layers else {}, threads, rounds,
                         budget, settle, progress)
