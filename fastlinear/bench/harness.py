"""What every table of the benchmark shares: the same thread count for every library,
the rivals' sessions (torch's F.linear, ONNX Runtime on a model), interleaved best-of
timing, the error against a float64 reference, the progress bar, the shape and time
formats, and the description of the machine (CPU, ISA path, its probed limits) printed
above the tables and written to the JSON.

The rivals' packages (threadpoolctl, torch, onnxruntime) are optional: each is imported
where it is used, and a rival whose package is missing is left out.
"""
import platform
import sys
import time

import numpy as np

import fastlinear as fl

from . import limits

# Sizes whose read bandwidth the header and the JSON report: in cache, and from memory.
PROBED_MIB = (16, 256)


# -- threads and the rivals' sessions ---------------------------------------------------

def set_threads(threads):
    """The same thread count for every library in this process."""
    fl.set_num_threads(threads)
    limits_set = None
    try:
        from threadpoolctl import threadpool_limits
        limits_set = threadpool_limits(limits=threads)  # numpy's and scipy's OpenBLAS
    except ImportError:
        print("warning: threadpoolctl is not installed; numpy keeps its own thread "
              "count", file=sys.stderr)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    return limits_set


def torch_linear(x, w, b, dtype_name=None):
    """A callable running torch's F.linear on x, w, b (converted to torch's `dtype_name`
    first, outside the timing), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
    if dtype_name is not None:
        dt = getattr(torch, dtype_name)
        tx, tw, tb = (t.to(dt) for t in (tx, tw, tb))
    linear = torch.nn.functional.linear

    def run():
        with torch.inference_mode():
            return linear(tx, tw, tb)
    return run


def ort_session(model, threads):
    """An ONNX Runtime CPU session of `model` (a ModelProto, or a path to an .onnx file)
    on `threads` threads, one operator at a time."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# -- timing and error -------------------------------------------------------------------

def calls_for(run, budget):
    """How many calls of `run` take about `budget` seconds (at least one)."""
    once = float("inf")
    for _ in range(5):  # the fastest of a few, so a stray slow first call does not count
        start = time.perf_counter()
        run()
        once = min(once, time.perf_counter() - start)
    return max(1, int(budget / max(once, 1e-7)))


def best_times(runs, rounds, budget, settle):
    """name -> best seconds per call over `rounds` interleaved rounds. Before each
    contender's turn the process sleeps `settle` seconds, so that the others' thread pools
    stop spinning on the cores."""
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


def rel_error(y, y64):
    """max|y - y64| / max|y64| (inf or nan where y is not finite)."""
    with np.errstate(invalid="ignore"):
        return float(np.max(np.abs(np.asarray(y, np.float64) - y64)) / np.max(np.abs(y64)))


# -- shapes, times and progress on the terminal -----------------------------------------

def parse_shapes(text):
    """[(m, k, n)] from comma-separated MxKxN."""
    shapes = []
    for item in text.split(","):
        try:
            m, k, n = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad shape {item!r}: expected MxKxN, e.g. 32x768x3072")
        shapes.append((m, k, n))
    return shapes


def format_us(t):
    """Microseconds in a table cell: three significant digits or so; '-' for none."""
    return "-" if t is None else f"{t:.2f}" if t < 10 else f"{t:.1f}" if t < 1e4 else f"{t:.0f}"


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


# -- the machine ------------------------------------------------------------------------

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


def run_meta(args, limits_set):
    """The JSON's description of the run: versions, machine, threads, limits; `limits_set`
    is set_threads's."""
    dtype = np.dtype(args.dtype)
    return {"fastlinear": fl._config.config_info(), "threads": args.threads,
            "dtype": args.dtype, "weight_dtype": args.weight_dtype,
            "machine": platform.machine(), "cpu": cpu_model(), "isa": fl._core.isa_name(),
            "fma_peak_gflops": limits.fma_peak(dtype, args.threads),
            "read_gbs": {f"{mib} MiB": limits.read_bandwidth(mib << 20, args.threads)
                         for mib in PROBED_MIB},
            "blas": limits_set.get_original_num_threads() if limits_set else None}
