"""The benchmark's whole-model table (`python -m fastlinear.bench --mlp [FILE.onnx ...]`).

The MLP 784-512 (ReLU) - 512 (GELU, erf) - 256 (ReLU) - 10, its weights drawn as
torch.nn.Linear draws them, runs at batch 1, 8, 64 and 1024 as:

    fastlinear     fastlinear.Sequential: one native call per forward
    torch          the same torch.nn.Sequential, eager, under inference_mode
    onnxruntime    an ONNX graph of Gemm, Relu and Gelu nodes (opset 20), all graph
                   optimizations on, intra_op_num_threads = the thread count

interleaved, round after round, best time per call (as in the float32 table). The error
of each is max|y - y64| / max|y64|, y64 the same model in float64 (numpy, scipy's erf).
Each .onnx file given runs with fastlinear (fastlinear.load_onnx) and ONNX Runtime on
N(0, 1) input shaped as the graph's input says (the batch its first dimension); its
float64 reference is fastlinear's float64 load of the file.
"""
import os

import numpy as np
from scipy.special import erf

import fastlinear as fl

from .harness import Progress, best_times, micro, ort_session, rel_error

MLP = ((784, 512, "relu"), (512, 512, "gelu"), (512, 256, "relu"), (256, 10, None))
BATCHES = (1, 8, 64, 1024)


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


def measure_model(title, runs_for, ref_for, input_for, threads, rounds, budget, settle,
                  progress):
    """Rows of one model at each batch: times in microseconds and errors per contender."""
    rows = []
    for m in BATCHES:
        progress.show(f"{title} batch {m}")
        x = input_for(m)
        runs = runs_for(x)
        y64 = ref_for(x)
        errors = {name: rel_error(run(), y64) for name, run in runs.items()}
        best = best_times(runs, rounds, budget, settle)
        rows.append({"model": title, "batch": m,
                     "us": {name: t * 1e6 for name, t in best.items()}, "error": errors})
        progress.write(format_row(rows[-1]))
    return rows


def format_row(row):
    us, err = row["us"], row["error"]
    fl_us = us["fastlinear"]
    cells = [f"{row['model']:>12} {row['batch']:>6}"]
    for name in ("fastlinear", "torch", "onnxruntime"):
        cells.append(f"{us[name]:>10.1f}" if name in us else f"{'-':>10}")
    for name in ("torch", "onnxruntime"):
        cells.append(f"{fl_us / us[name]:>7.2f}" if name in us else f"{'-':>7}")
    cells.append("  " + ", ".join(f"{name} {e:.1e}" for name, e in err.items()))
    return " ".join(cells)


def head(rounds):
    """The legend and the header of the table."""
    us = f"{micro()}s"
    return [f"Times in {us} per call, each contender's best of {rounds} interleaved rounds.",
            "  mlp: 784-512 (ReLU) - 512 (GELU) - 256 (ReLU) - 10; fl: fastlinear.Sequential, "
            "torch: eager,",
            "  ort: ONNX Runtime; /torch, /ort: fastlinear's time / that rival's; error: "
            "max|y - y64| / max|y64|",
            f"{'model':>12} {'batch':>6} {'fl ' + us:>10} {'torch ' + us:>10} "
            f"{'ort ' + us:>10} {'/torch':>7} {'/ort':>7}  error against float64"]


def run_mlp(onnx_paths, threads, rounds, budget, settle):
    """The MLP table, then one per .onnx file; returns the rows."""
    for line in head(rounds):
        print(line)
    progress = Progress(len(BATCHES) * (1 + len(onnx_paths)), "model")
    rng = np.random.default_rng(0)
    layers = mlp_weights(rng)
    ours, theirs = fastlinear_model(layers), torch_model(layers)
    onnx = onnx_model(layers)
    ort_run = ort_runner(onnx, threads) if onnx is not None else None

    def runs_for(x):
        runs = {"fastlinear": lambda: ours(x)}
        if theirs is not None:
            import torch
            tx = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode():
                    return theirs(tx).numpy()
            runs["torch"] = run_torch
        if ort_run is not None:
            runs["onnxruntime"] = lambda: ort_run(x)
        return runs

    def input_for(m):
        return rng.standard_normal((m, MLP[0][0])).astype(np.float32)

    rows = measure_model("mlp", runs_for, lambda x: reference(layers, x), input_for,
                         threads, rounds, budget, settle, progress)
    for path in onnx_paths:
        rows += run_onnx_file(path, threads, rounds, budget, settle, rng, progress)
    progress.close()
    return rows


def run_onnx_file(path, threads, rounds, budget, settle, rng, progress):
    import onnx
    graph_input = onnx.load(path, load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:]
    try:
        ours, ref = fl.load_onnx(path), fl.load_onnx(path, dtype=np.float64)
    except (OSError, TypeError, ValueError) as exc:
        raise SystemExit(f"--mlp: cannot run {path}: {exc}") from None
    ort_run = ort_runner(path, threads)

    def runs_for(x):
        runs = {"fastlinear": lambda: ours(x)}
        if ort_run is not None:
            runs["onnxruntime"] = lambda: ort_run(x)
        return runs

    def input_for(m):
        return rng.standard_normal((m, *dims)).astype(np.float32)

    title = os.path.basename(path)[:12]
    return measure_model(title, runs_for, lambda x: ref(x.astype(np.float64)), input_for,
                         threads, rounds, budget, settle, progress)
