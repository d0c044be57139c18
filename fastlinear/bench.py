"""fastlinear against numpy, PyTorch and ONNX Runtime, in one process, at one thread count.

Each contender computes y = x @ W.T + b for the same arrays: fastlinear's Linear (default
backend) returning a new array and writing into `out=`, numpy's `x @ W.T + b`, torch's
`F.linear`, and ONNX Runtime running one Gemm node (transB=1, the bias as C) with
`intra_op_num_threads` set to the same thread count. The contenders run
interleaved, round after round, and each keeps its best time per call, so a noisy
neighbour slows every contender alike rather than one of them. Before each contender's
turn the process sleeps for --settle seconds: the thread pools of the others (OpenBLAS,
OpenMP) spin for a while after their last call and would otherwise steal the cores.
Ratios are fastlinear's time / the best rival's time (the fastest of numpy, torch and
ONNX Runtime at that shape): below 1 means fastlinear is faster.

    python -m fastlinear.bench                       # the default shape table, 2 threads
    python -m fastlinear.bench --threads 1 --dtype float64 --shapes 1x4096x4096,64x512x512
    python -m fastlinear.bench --json results.json --plot results.png --wide
    python benchmarks/bench.py ...                   # the same, from the repository root
    python -m fastlinear.bench --weight-dtype int8   # compressed weights (or all of them)
    python -m fastlinear.bench --mlp [model.onnx]    # whole models (fastlinear/bench_mlp.py)

--weight-dtype bfloat16, float16, int8, int4 or all prints, instead of this table, one
table per format: fastlinear with float32 weights and with weights in that format against
the rivals that compress weights alike (torch bfloat16 and dynamic int8, ONNX Runtime
dynamic int8 and MatMulNBits int4), with each one's error against the float64 product of
the unquantized weights. fastlinear/bench_compressed.py says how each is built.

Each shape is also set against this machine's limits for the ISA path that runs
(fastlinear._limits): the time the FMA peak allows for its arithmetic and the time the
read bandwidth allows for its weights, at their size. The larger of the two is the
shape's bound; "limit" is that bound's share of fastlinear's time (100% = at the
machine's limit). --wide adds the BLAS backend, every ratio and the weights' GB/s.

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this command if your environment sets
them: they pin numpy's OpenBLAS to slower kernels.
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

import fastlinear as fl
from fastlinear import _limits as limits
from fastlinear import bench_compressed as compressed

DEFAULT_SHAPES = ("1x100x50,140x100x50,1x768x3072,1x4096x4096,8x4096x4096,32x768x3072,"
                  "128x768x3072,512x1024x1024,2048x2048x2048")


SWEEP_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Progress:
    """A one-line progress bar on stderr while a shape is measured (terminals only)."""

    def __init__(self, total):
        self.total, self.done = total, 0
        self.live = sys.stderr.isatty()

    def show(self, shape):
        if self.live:
            width = 30
            filled = width * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done + 1}/{self.total} {'x'.join(map(str, shape))} ")
            sys.stderr.flush()

    def clear(self):
        self.done += 1
        if self.live:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        try:
            m, k, n = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad shape {item!r}: expected MxKxN, e.g. 32x768x3072")
        shapes.append((m, k, n))
    return shapes


RIVALS = ("numpy", "torch", "onnxruntime")
# Sizes whose read bandwidth the header and the JSON report: in cache, and from memory.
PROBED_MIB = (16, 256)


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
    try:
        import torch
    except ImportError:
        pass
    else:
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        linear = torch.nn.functional.linear

        def run_torch():
            with torch.inference_mode():
                return linear(tx, tw, tb)
        runs["torch"] = run_torch
    session = onnx_gemm(w, b, threads)
    if session is not None:
        runs["onnxruntime"] = lambda: session.run(None, {"x": x})[0]
    return runs


def ort_session(model, threads):
    """An ONNX Runtime CPU session of `model` (a ModelProto) on `threads` threads."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def onnx_gemm(w, b, threads):
    """An ONNX Runtime session computing x @ w.T + b with one Gemm node, or None without
    onnx and onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ort_session(model, threads)


def calls_for(run, budget):
    """How many calls of `run` take about `budget` seconds (at least one)."""
    once = float("inf")
    for _ in range(5):  # the fastest of a few, so a stray slow first call does not count
        start = time.perf_counter()
        run()
        once = min(once, time.perf_counter() - start)
    return max(1, int(budget / max(once, 1e-7)))


def best_times(runs, rounds, budget, settle):
    """name -> best seconds per call over `rounds` interleaved rounds."""
    counts = {}
    for name, run in runs.items():
        time.sleep(settle)
        counts[name] = calls_for(run, budget)
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            n = counts[name]
            time.sleep(settle)
            run()  # wakes this contender's threads
            start = time.perf_counter()
            for _ in range(n):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return best


def set_threads(threads):
    """The same thread count for every library in this process."""
    fl.set_num_threads(threads)
    limits = None
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=threads)  # numpy's and scipy's OpenBLAS
    except ImportError:
        print("warning: threadpoolctl is not installed; numpy keeps its own thread "
              "count", file=sys.stderr)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    return limits


def check_agreement(runs, x, w, b):
    """Every contender computes the same thing (within float32/64 rounding)."""
    exact = x.astype(np.float64) @ w.astype(np.float64).T + b
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T + np.abs(b)
    tol = 2 * (x.shape[1] + 2) * np.finfo(x.dtype).eps * scale
    for name, run in runs.items():
        y = np.asarray(run())
        if not np.all(np.abs(y - exact) <= tol):
            raise SystemExit(f"{name} disagrees with the float64 reference")


def machine_bound(m, k, n, dtype, threads):
    """(name, seconds) of the slower of the two limits for this shape, or None."""
    peak = limits.fma_peak(dtype, threads)
    weight_bytes = n * k * np.dtype(dtype).itemsize
    bandwidth = limits.read_bandwidth(weight_bytes, threads)
    if peak is None or bandwidth is None:
        return None
    return max(("FMA", 2.0 * m * k * n / peak / 1e9),
               ("BW", weight_bytes / bandwidth / 1e9), key=lambda b: b[1])


def measure(shape, dtype, threads, bound, rounds, budget, settle, rng):
    """One shape: best time per contender, derived rates and ratios; `bound` is
    machine_bound's for the shape."""
    m, k, n = shape
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    runs = contenders(x, w, b, dtype, threads)
    check_agreement(runs, x, w, b)
    best = best_times(runs, rounds, budget, settle)
    ours = best["fastlinear"]
    rival = min((name for name in RIVALS if name in best), key=best.get)
    row = {"m": m, "k": k, "n": n,
           "us": {name: t * 1e6 for name, t in best.items()},
           "gflops": {name: 2.0 * m * k * n / t / 1e9 for name, t in best.items()},
           "weight_gbs": n * k * dtype.itemsize / ours / 1e9,
           "best_rival": rival,
           "ratio_best": ours / best[rival],
           "ratio_best_out": best["fastlinear out="] / best[rival],
           "ratio": {name: ours / best[name] for name in best if name != "fastlinear"}}
    if bound is not None:
        row["bound"], row["limit_fraction"] = bound[0], bound[1] / ours
    return row


# The table's columns: (title, width, cell of a row). The default fits 100 columns.
def _us(row, name):
    t = row["us"].get(name)
    return "-" if t is None else f"{t:.2f}" if t < 10 else f"{t:.1f}" if t < 1e4 else f"{t:.0f}"


def _limit(row):
    return f"{row['bound']} {100 * row['limit_fraction']:.0f}%" if "bound" in row else "n/a"


COLUMNS = [
    ("M x K x N", 14, lambda r: f"{r['m']}x{r['k']}x{r['n']}"),
    ("fastlinear", 10, lambda r: _us(r, "fastlinear")),
    ("out=", 9, lambda r: _us(r, "fastlinear out=")),
    ("numpy", 9, lambda r: _us(r, "numpy")),
    ("torch", 9, lambda r: _us(r, "torch")),
    ("onnxrt", 9, lambda r: _us(r, "onnxruntime")),
    ("/best", 6, lambda r: f"{r['ratio_best']:.2f}"),
    ("out=/best", 9, lambda r: f"{r['ratio_best_out']:.2f}"),
    ("GFLOP/s", 8, lambda r: f"{r['gflops']['fastlinear']:.1f}"),
    ("limit", 8, _limit),
]
WIDE_COLUMNS = [
    ("blas", 9, lambda r: _us(r, "fastlinear-blas")),
    ("GB/s", 6, lambda r: f"{r['weight_gbs']:.1f}"),
    *[(f"/{name[:6]}", 7, lambda r, name=name: f"{r['ratio'][name]:.2f}"
       if name in r["ratio"] else "-") for name in RIVALS],
]


def print_row(row, header, wide=False):
    columns = COLUMNS + (WIDE_COLUMNS if wide else [])
    if header:
        print(" ".join(f"{title:>{width}}" for title, width, _ in columns))
    print(" ".join(f"{cell(row):>{width}}" for _, width, cell in columns), flush=True)


def cpu_model():
    """The CPU's model name, as the OS reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(dtype, threads):
    """Two lines naming what is measured: versions, ISA path, CPU, the path's limits."""
    isa = fl._core.isa_name()
    peak = limits.fma_peak(dtype, threads)
    bw = [limits.read_bandwidth(mib << 20, threads) for mib in PROBED_MIB]
    first = (f"fastlinear {fl.__version__}, {np.dtype(dtype).name}, {threads} threads, "
             f"ISA path {isa}, {cpu_model()}")
    if peak is None or None in bw:
        return first + "\n(no C compiler: machine limits not probed)"
    reads = ", ".join(f"{gbs:.0f} GB/s ({mib} MiB)" for gbs, mib in zip(bw, PROBED_MIB))
    return first + f"\n{isa} limits: FMA peak {peak:.0f} GFLOP/s, read bandwidth {reads}"


def plot(rows, path, k, n, dtype, threads):
    """GFLOP/s against M for one K x N, a line per contender."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in rows[0]["gflops"]:
        ax.plot([r["m"] for r in rows], [r["gflops"][name] for r in rows], marker="o",
                label=name)
    peak = limits.fma_peak(dtype, threads)
    if peak:
        ax.axhline(peak, color="grey", linestyle="--",
                   label=f"FMA peak of {fl._core.isa_name()} (probe)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size M")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"y = x @ W.T + b, K x N = {k} x {n}, {dtype}, {threads} threads\n"
                 f"ISA path {fl._core.isa_name()}, {cpu_model()}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastlinear.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for every library (fastlinear, numpy's OpenBLAS, "
                             "torch, ONNX Runtime)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--weight-dtype", default="float32",
                        choices=["float32", *compressed.FORMATS, "all"],
                        help="float32: the float32 table; bfloat16, float16, int8, int4 "
                             "(all: each of them): a table per format, fastlinear against "
                             "rivals that compress weights alike, with each one's error")
    parser.add_argument("--group-size", type=int, choices=compressed.GROUP_SIZES,
                        default=argparse.SUPPRESS,
                        help="int4 weights: inputs per scale (default: "
                             f"{compressed.DEFAULT_GROUP_SIZE}; ONNX Runtime's block too)")
    parser.add_argument("--shapes", default=argparse.SUPPRESS,
                        help=f"comma-separated MxKxN (default: {DEFAULT_SHAPES}; with a "
                             f"compressed --weight-dtype: {compressed.DEFAULT_SHAPES})")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per shape")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="seconds per contender per round")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="seconds of sleep before each contender's turn")
    parser.add_argument("--wide", action="store_true",
                        help="more columns: the BLAS backend, the weights' GB/s, the ratio "
                             "to each rival")
    parser.add_argument("--mlp", nargs="*", metavar="FILE.onnx", default=None,
                        help="instead of the tables: a 784-512-512-256-10 MLP (and each "
                             ".onnx file given) at batch 1, 8, 64, 1024 against torch eager "
                             "and ONNX Runtime (fastlinear/bench_mlp.py)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--plot", help="also sweep M for --plot-kn and save a PNG here")
    parser.add_argument("--plot-kn", default="768x3072", help="K x N of the plot's sweep")
    args = parser.parse_args(argv)
    if args.mlp is not None:
        return main_mlp(args)
    if args.weight_dtype != "float32":
        return main_compressed(parser, args)
    if hasattr(args, "group_size"):
        parser.error("--group-size is for --weight-dtype int4")

    dtype = np.dtype(args.dtype)
    limits_set = set_threads(args.threads)
    rng = np.random.default_rng(0)
    print(describe(dtype, args.threads))
    shapes = parse_shapes(getattr(args, "shapes", DEFAULT_SHAPES))
    sweep_kn = tuple(int(v) for v in args.plot_kn.split("x")) if args.plot else None
    sweep_shapes = [(m, *sweep_kn) for m in SWEEP_M] if sweep_kn else []
    # The probes run now, while no other library's threads spin on the cores.
    bounds = {shape: machine_bound(*shape, dtype, args.threads)
              for shape in shapes + sweep_shapes}
    progress = Progress(len(shapes) + len(sweep_shapes))
    results = []
    for shape in shapes:
        progress.show(shape)
        row = measure(shape, dtype, args.threads, bounds[shape], args.rounds, args.budget,
                      args.settle, rng)
        progress.clear()
        print_row(row, header=not results, wide=args.wide)
        results.append(row)
    sweep = []
    if sweep_shapes:
        print(f"sweep of M for K x N = {sweep_kn[0]} x {sweep_kn[1]}:")
        for shape in sweep_shapes:
            progress.show(shape)
            row = measure(shape, dtype, args.threads, bounds[shape], args.rounds,
                          args.budget, args.settle, rng)
            progress.clear()
            print_row(row, header=not sweep, wide=args.wide)
            sweep.append(row)
        plot(sweep, args.plot, *sweep_kn, args.dtype, args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": run_meta(args, limits_set), "results": results,
                       "sweep": sweep}, f, indent=1)
    return results


def run_meta(args, limits_set):
    """The JSON's description of the run: versions, machine, threads, limits."""
    dtype = np.dtype(args.dtype)
    return {"fastlinear": fl._config.config_info(), "threads": args.threads,
            "dtype": args.dtype, "weight_dtype": args.weight_dtype,
            "machine": platform.machine(), "cpu": cpu_model(), "isa": fl._core.isa_name(),
            "fma_peak_gflops": limits.fma_peak(dtype, args.threads),
            "read_gbs": {f"{mib} MiB": limits.read_bandwidth(mib << 20, args.threads)
                         for mib in PROBED_MIB},
            "blas": limits_set.get_original_num_threads() if limits_set else None}


def main_mlp(args):
    """--mlp: the whole-model table (bench_mlp); returns its rows."""
    from . import bench_mlp
    limits_set = set_threads(args.threads)
    print(describe(np.dtype(np.float32), args.threads))
    rows = bench_mlp.run_mlp(args.mlp, args.threads, args.rounds, args.budget, args.settle)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": run_meta(args, limits_set), "mlp": rows}, f, indent=1)
    return rows


def main_compressed(parser, args):
    """--weight-dtype other than float32: a table per format (bench_compressed); returns
    {format: rows}."""
    if args.dtype != "float32":
        parser.error("compressed weights run with float32 inputs: drop --dtype float64")
    if args.plot:
        parser.error("--plot sweeps the float32 table: drop --weight-dtype")
    formats = compressed.FORMATS if args.weight_dtype == "all" else (args.weight_dtype,)
    group_size = getattr(args, "group_size", None)
    if group_size is not None and "int4" not in formats:
        parser.error("--group-size is for --weight-dtype int4")
    group_size = group_size or compressed.DEFAULT_GROUP_SIZE
    limits_set = set_threads(args.threads)
    print(describe(np.dtype(np.float32), args.threads))
    shapes = parse_shapes(getattr(args, "shapes", compressed.DEFAULT_SHAPES))
    progress = Progress(len(formats) * len(shapes))
    results = compressed.run_tables(formats, shapes, group_size, args.threads, args.rounds,
                                    args.budget, args.settle, progress)
    if args.json:
        meta = run_meta(args, limits_set)
        meta["group_size"] = group_size
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "compressed": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
