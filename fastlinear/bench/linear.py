"""The benchmark's float32/float64 table (`python -m fastlinear.bench`), and its sweep of
the batch size for --plot.

Each contender computes y = x @ W.T + b for the same arrays: fastlinear's Linear (default
backend) returning a new array and writing into `out=`, numpy's `x @ W.T + b`, torch's
`F.linear`, ONNX Runtime running one Gemm node (transB=1, the bias as C), and OpenVINO
running the same ONNX model (float32 only: its CPU plugin computes float64 graphs in
float32). Each shape is also set against this machine's limits for the ISA path that
runs (limits.py).
"""
import sys

import numpy as np

import fastlinear as fl

from . import limits
from .harness import (Progress, best_times, cpu_model, format_us, group_line, micro,
                      openvino_runner, ort_session, torch_linear)

DEFAULT_SHAPES = ("1x100x50,140x100x50,1x768x3072,1x4096x4096,8x4096x4096,32x768x3072,"
                  "128x768x3072,512x1024x1024,2048x2048x2048")
SWEEP_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
RIVALS = ("numpy", "torch", "onnxruntime", "openvino")
# Rivals' names in the table's columns.
TITLES = {"numpy": "numpy", "torch": "torch", "onnxruntime": "onnxrt",
          "openvino": "openvino"}


def contenders(x, w, b, dtype, threads):
    """name -> zero-argument callable computing x @ w.T + b. Rivals whose package is not
    installed are left out."""
    native = fl.Linear(w.shape[1], w.shape[0], dtype=dtype)
    native.load_state_dict({"weight": w, "bias": b})
    blas = fl.Linear(w.shape[1], w.shape[0], dtype=dtype, backend="blas")
    blas.load_state_dict({"weight": w, "bias": b})
    out = np.empty((x.shape[0], w.shape[0]), dtype)
    runs = {
        "fastlinear": lambda: native(x),
        "fastlinear out=": lambda: native(x, out=out),
        "fastlinear-blas": lambda: blas(x),
        "numpy": lambda: x @ w.T + b,
    }
    run_torch = torch_linear(x, w, b)
    if run_torch is not None:
        runs["torch"] = run_torch
    model = gemm_model(w, b)
    session = onnx_gemm(w, b, threads, model)
    if session is not None:
        runs["onnxruntime"] = lambda: session.run(None, {"x": x})[0]
    # OpenVINO's CPU plugin has no float64 arithmetic: it would be a float32 rival.
    ov_run = (openvino_runner(model, threads)
              if model is not None and w.dtype == np.float32 else None)
    if ov_run is not None:
        runs["openvino"] = lambda: ov_run(x)
    return runs


def gemm_model(w, b):
    """The ONNX model computing x @ w.T + b with one Gemm node (x's rows a dynamic
    dimension), or None without onnx."""
    try:
        from onnx import helper, numpy_helper
    except ImportError:
        return None
    elem = helper.np_dtype_to_tensor_dtype(w.dtype)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    graph = helper.make_graph(
        [node], "linear",
        [helper.make_tensor_value_info("x", elem, ["m", w.shape[1]])],
        [helper.make_tensor_value_info("y", elem, ["m", w.shape[0]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def onnx_gemm(w, b, threads, model=None):
    """An ONNX Runtime session of gemm_model(w, b) (or the `model` given), or None
    without onnx and onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    model = model if model is not None else gemm_model(w, b)
    return None if model is None else ort_session(model, threads)


def check_agreement(runs, x, w, b):
    """Every contender computes the same thing (within float32/64 rounding)."""
    exact = x.astype(np.float64) @ w.astype(np.float64).T + b
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T + np.abs(b)
    tol = 2 * (x.shape[1] + 2) * np.finfo(x.dtype).eps * scale
    for name, run in runs.items():
        y = np.asarray(run())
        if not np.all(np.abs(y - exact) <= tol):
            raise SystemExit(f"{name} disagrees with the float64 reference")


def measure(shape, dtype, threads, rounds, budget, settle, rng):
    """One shape: best time per contender, derived rates and ratios, and the machine's
    bound for the shape probed around the rounds (limits.Bound)."""
    m, k, n = shape
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    runs = contenders(x, w, b, dtype, threads)
    check_agreement(runs, x, w, b)
    bound = limits.Bound(m, k, n, dtype, threads)
    best = best_times(runs, rounds, budget, settle, between=bound.probe)
    ours = best["fastlinear"]
    rival = min((name for name in RIVALS if name in best), key=best.get)
    row = {"m": m, "k": k, "n": n,
           "us": {name: t * 1e6 for name, t in best.items()},
           "gflops": {name: 2.0 * m * k * n / t / 1e9 for name, t in best.items()},
           "weight_gbs": n * k * dtype.itemsize / ours / 1e9,
           "best_rival": rival,
           "ratio_best": ours / best[rival],
           "ratio_best_out": best["fastlinear out="] / best[rival],
           "ratio": {name: ours / best[name] for name in best if name != "fastlinear"},
           **bound.record()}
    limit = bound.bound()
    bound.release()  # the weights' copy goes before the next shape's arrays come
    if limit is not None:
        row["bound"], row["limit_fraction"] = limit[0], limit[1] / ours
    return row


# The table's columns: (group, title, width, cell of a row). The default fits 100
# columns: the rivals' times take 7 (no time prints wider than 6 characters).
def _us(row, name):
    return format_us(row["us"].get(name))


def _limit(row):
    return f"{row['bound']} {100 * row['limit_fraction']:.0f}%" if "bound" in row else "n/a"


COLUMNS = [
    ("", "M x K x N", 14, lambda r: f"{r['m']}x{r['k']}x{r['n']}"),
    ("time", "fastlinear", 10, lambda r: _us(r, "fastlinear")),
    ("time", "out=", 7, lambda r: _us(r, "fastlinear out=")),
    *[("time", TITLES[name], max(7, len(TITLES[name])), lambda r, name=name: _us(r, name))
      for name in RIVALS],
    ("ratio", "/best", 6, lambda r: f"{r['ratio_best']:.2f}"),
    ("ratio", "out=/best", 9, lambda r: f"{r['ratio_best_out']:.2f}"),
    ("", "GFLOP/s", 7, lambda r: f"{r['gflops']['fastlinear']:.1f}"),
    ("", "limit", 8, _limit),
]
WIDE_COLUMNS = [
    ("wide", "blas", 9, lambda r: _us(r, "fastlinear-blas")),
    ("wide", "GB/s", 6, lambda r: f"{r['weight_gbs']:.1f}"),
    *[("wide", f"/{TITLES[name]}", max(7, len(TITLES[name]) + 1),
       lambda r, name=name: f"{r['ratio'][name]:.2f}" if name in r["ratio"] else "-")
      for name in RIVALS],
]


def legend(rounds, wide):
    """What the table's columns are, printed above it."""
    entries = [
        ("fastlinear", "fl.Linear(x), a new array each call"),
        ("out=", "fl.Linear(x, out=buf), into the caller's array"),
        ("numpy", "x @ W.T + b"),
        ("torch", "torch.nn.functional.linear"),
        ("onnxrt", "ONNX Runtime, one Gemm node"),
        ("openvino", "OpenVINO, the same Gemm model: f32 precision, latency hint, one stream;\n"
                     "float32 only ('-' for float64: it computes those in float32)"),
        ("/best", "fastlinear's time / the fastest rival's (numpy, torch, onnxrt, openvino):\n"
                  "below 1, faster"),
        ("out=/best", "the same for out="),
        ("GFLOP/s", "2 M K N / fastlinear's time"),
        ("limit", "the machine's bound for the shape / fastlinear's time, 100% = at the bound:\n"
                  "FMA: 2 M K N flops at the FMA peak; BW: the weights read once, the kernel's\n"
                  "way or with plain loads, whichever is faster (fastlinear.bench.limits); the\n"
                  "larger of the two times. Each is the best probed around the shape's rounds\n"
                  "(before, between, after: the machine of the same moment), so a share above\n"
                  "100% is noise"),
    ]
    if wide:
        entries += [("blas", 'fl.Linear(x) with backend="blas" (scipy\'s BLAS)'),
                    ("GB/s", "the weights' bytes / fastlinear's time"),
                    ("/numpy ...", "fastlinear's time / that rival's")]
    lines = [f"Times in {micro()}s per call, each contender's best of {rounds} interleaved "
             "rounds; all compute",
             "y = x @ W.T + b for the same arrays on the same threads."]
    for title, text in entries:
        first, *rest = text.split("\n")
        lines.append(f"  {title:<10}  {first}")
        lines += [" " * 14 + more for more in rest]
    return lines


def head(wide):
    """The two header lines: the groups of columns, then their titles."""
    columns = COLUMNS + (WIDE_COLUMNS if wide else [])
    titles = {"time": f" time ({micro()}s) ", "ratio": " ratio "}
    return [group_line([(titles.get(g, ""), w) for g, _, w, _ in columns]),
            " ".join(f"{title:>{width}}" for _, title, width, _ in columns)]


def format_row(row, wide=False):
    columns = COLUMNS + (WIDE_COLUMNS if wide else [])
    return " ".join(f"{cell(row):>{width}}" for _, _, width, cell in columns)


def sweep_figure(rows, k, n, dtype, threads):
    """GFLOP/s against M for one K x N, a line per contender, the legend beside the axes
    (it covers no data); a matplotlib Figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in rows[0]["gflops"]:
        ax.plot([r["m"] for r in rows], [r["gflops"][name] for r in rows], marker="o",
                label=name)
    peaks = [r["fma_peak_gflops"] for r in rows if r.get("fma_peak_gflops")]
    if peaks:
        ax.axhline(max(peaks), color="grey", linestyle="--",
                   label=f"FMA peak of {fl._core.isa_name()}\n(best probe of the sweep)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size M")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"y = x @ W.T + b, K x N = {k} x {n}, {dtype}, {threads} threads\n"
                 f"ISA path {fl._core.isa_name()}, {cpu_model()}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=9)
    fig.tight_layout()
    return fig


def plot(rows, path, k, n, dtype, threads):
    """The sweep's figure, saved as a PNG at `path`."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    import matplotlib.pyplot as plt
    fig = sweep_figure(rows, k, n, dtype, threads)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"plot written to {path}")


def run_table(shapes, sweep_kn, plot_path, dtype, threads, rounds, budget, settle, wide):
    """The table of `shapes`, then (with `sweep_kn`, a (k, n)) the sweep of M for that
    K x N and its plot at `plot_path`, printing the legend and the header first, then each
    row as it is measured; returns (rows, sweep rows)."""
    sweep_shapes = [(m, *sweep_kn) for m in SWEEP_M] if sweep_kn else []
    for line in legend(rounds, wide):
        print(line)
    if sweep_shapes:
        print(f"--plot: after the table, {len(sweep_shapes)} more shapes, a sweep of "
              f"M = {SWEEP_M[0]} .. {SWEEP_M[-1]} at K x N = {sweep_kn[0]} x {sweep_kn[1]},\n"
              "        each measured as a row of the table, then drawn as GFLOP/s against M")
    print()
    for line in head(wide):
        print(line)
    sys.stdout.flush()
    rng = np.random.default_rng(0)
    progress = Progress(len(shapes) + len(sweep_shapes))
    results = []
    for shape in shapes:
        progress.show("x".join(map(str, shape)))
        results.append(measure(shape, dtype, threads, rounds, budget, settle, rng))
        progress.write(format_row(results[-1], wide))
    sweep = []
    if sweep_shapes:
        for line in ["", f"sweep of M for --plot, K x N = {sweep_kn[0]} x {sweep_kn[1]}:",
                     *head(wide)]:
            progress.write(line, step=False)
        for shape in sweep_shapes:
            progress.show("sweep " + "x".join(map(str, shape)))
            sweep.append(measure(shape, dtype, threads, rounds, budget, settle, rng))
            progress.write(format_row(sweep[-1], wide))
    progress.close()
    if sweep_shapes:
        plot(sweep, plot_path, *sweep_kn, dtype.name, threads)
    return results, sweep
