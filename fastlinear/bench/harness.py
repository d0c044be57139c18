"""What every table of the benchmark shares: the same thread count for every library,
the rivals' sessions (torch's F.linear, ONNX Runtime and OpenVINO on a model),
interleaved best-of timing (with the machine's limits probed around the rounds), the
error against a float64 reference, the progress (tqdm where installed), the shape and
time formats, and the description of the machine (CPU, ISA path, its probed limits)
printed above the tables and written to the JSON.

The rivals' packages (threadpoolctl, torch, onnxruntime, openvino) and tqdm are
optional: each is imported where it is used; a rival whose package is missing is left
out, and progress falls back to plain lines without tqdm.
"""
import functools
import platform
import sys
import time

import numpy as np

import fastlinear as fl

from .. import _tuning
from .._tuning import cpu_model  # the name the tuning file is keyed by, too
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


@functools.lru_cache(maxsize=None)
def _openvino_core():
    """One OpenVINO Core per process: each Core loads the CPU plugin anew."""
    import openvino as ov
    return ov.Core()


def openvino_runner(model, threads):
    """A callable x -> y running `model` (a ModelProto, or a path to an .onnx file) with
    OpenVINO on the CPU, or None without openvino. Compiled as a latency user would:
    float32 arithmetic (its default on CPUs with bf16 or fp16 units is to run in those),
    `threads` threads, the latency hint, one stream, no CPU pinning (pinned, its threads
    took the cores from the other libraries' in the process: fastlinear's 32x768x3072 on
    the AVX2 path 858 -> 1146 µs beside it). One infer request made here and
    reused: each call hands it x without a copy (a tensor sharing x's memory), infers,
    and returns a view of the request's output (overwritten by the next call), so the
    time is the inference's, not allocations'. The graph keeps its dynamic batch, as
    ONNX Runtime's session does."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = _openvino_core()
    source = model if isinstance(model, str) else model.SerializeToString()
    compiled = core.compile_model(core.read_model(source), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()
    tensor = ov.Tensor

    def run(x):
        request.set_input_tensor(tensor(x, shared_memory=True))
        request.infer()
        return request.get_output_tensor().data
    run.compiled = compiled  # its settings, for whoever checks them
    return run


# -- timing and error -------------------------------------------------------------------

def calls_for(run, budget):
    """How many calls of `run` take about `budget` seconds (at least one)."""
    once = float("inf")
    for _ in range(5):  # the fastest of a few, so a stray slow first call does not count
        start = time.perf_counter()
        run()
        once = min(once, time.perf_counter() - start)
    return max(1, int(budget / max(once, 1e-7)))


def best_times(runs, rounds, budget, settle, between=None):
    """name -> best seconds per call over `rounds` interleaved rounds. Before each
    contender's turn the process sleeps `settle` seconds, so that the others' thread pools
    stop spinning on the cores. `between`, if given, is called before the first round and
    after each round, after the same sleep: the machine's limits probed around the
    contenders' turns, at the same moments."""
    counts = {}
    for name, run in runs.items():
        time.sleep(settle)
        counts[name] = calls_for(run, budget)
    best = {name: float("inf") for name in runs}
    for r in range(rounds + 1):
        if between is not None:
            time.sleep(settle)
            between()
        if r == rounds:
            break
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


def micro():
    """The prefix of microseconds: "µ" where stdout can print it, else "u"."""
    try:
        "\u00b5".encode(getattr(sys.stdout, "encoding", None) or "ascii")
        return "\u00b5"
    except (LookupError, UnicodeEncodeError):
        return "u"


def format_us(t):
    """Microseconds in a table cell: three significant digits or so; '-' for none."""
    return "-" if t is None else f"{t:.2f}" if t < 10 else f"{t:.1f}" if t < 1e4 else f"{t:.0f}"


def group_line(groups):
    """A line of group titles over the columns: `groups` is [(title, width)] per column;
    neighbours with the same title share one, centred in dashes; '' leaves blanks."""
    merged = []
    for title, width in groups:
        if merged and title and merged[-1][0] == title:
            merged[-1][1] += width + 1
        else:
            merged.append([title, width])
    return " ".join(f"{title:-^{width}}" if title else " " * width
                    for title, width in merged).rstrip()


class Progress:
    """Where the benchmark stands, on stderr: before each step (a shape), its name, how
    many steps are done and the time left. On a terminal, a live tqdm bar that the rows
    printed with write() push down; elsewhere (a log, a pipe), one line per step, its
    time left estimated by tqdm from the steps done. Without tqdm, a plain line per
    step."""

    def __init__(self, total, what="shape"):
        self.total, self.done, self.what = total, 0, what
        self.start = time.monotonic()
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.tqdm, self.bar = tqdm, None
        if tqdm is not None and sys.stderr.isatty():
            self.bar = tqdm(total=total, file=sys.stderr, leave=False, unit=what,
                            dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                       "[{elapsed}<{remaining}]")

    def show(self, label):
        """Before a step: `label` is being measured."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.what} {label}")
            return
        head = f"[{self.done + 1}/{self.total}] {self.what} {label}"
        if self.tqdm is not None:
            line = self.tqdm.format_meter(
                self.done, self.total, time.monotonic() - self.start, prefix=head,
                bar_format="{desc}: {elapsed} elapsed, {remaining} left")
        else:
            line = f"{head}: {time.monotonic() - self.start:.0f} s elapsed"
        print(line, file=sys.stderr, flush=True)

    def write(self, line, step=True):
        """`line` on stdout (above the bar on a terminal); `step`: after a step, its row."""
        if self.bar is not None:
            with self.tqdm.external_write_mode(file=sys.stdout):
                print(line, flush=True)
        else:
            print(line, flush=True)
        if step:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- the machine ------------------------------------------------------------------------

def describe(dtype, threads):
    """Prints lines naming what is measured (versions, ISA path, CPU; the block sizes in
    force, tuned or derived: both at once, before the probes run), then the path's limits
    at the start; returns those limits for the JSON (None where there is no C
    compiler)."""
    isa = fl._core.isa_name()
    print(f"fastlinear {fl.__version__}, {np.dtype(dtype).name}, {threads} threads, "
          f"ISA path {isa}, {cpu_model()}", flush=True)
    values = "float64" if np.dtype(dtype) == np.float64 else "float32"
    print(f"block sizes {_tuning.describe(threads).get(f'{isa} {values}', '-')}",
          flush=True)
    peak = limits.fma_peak(dtype, threads, runs=40)
    bw = {mib: limits.read_bandwidth(mib << 20, threads) for mib in PROBED_MIB}
    if peak is None:
        print("(no C compiler: machine limits not probed)", flush=True)
        return {"fma_peak_gflops": None, "read_gbs": None}
    reads = ", ".join(f"{gbs:.0f} GB/s ({mib} MiB)" for mib, gbs in bw.items())
    # The ISA path is named on the line above (avx512_vnni made this one too long).
    print(f"limits at the start: FMA peak {peak:.0f} GFLOP/s; weights read {reads}",
          flush=True)
    return {"fma_peak_gflops": peak,
            "read_gbs": {f"{mib} MiB": gbs for mib, gbs in bw.items()}}


def run_meta(args, limits_set, machine):
    """The JSON's description of the run: versions, machine, threads, the limits probed at
    the start (`machine`, describe's); `limits_set` is set_threads's."""
    return {"fastlinear": fl._config.config_info(), "threads": args.threads,
            "dtype": args.dtype, "weight_dtype": args.weight_dtype,
            "machine": platform.machine(), "cpu": cpu_model(), "isa": fl._core.isa_name(),
            **machine,
            "blas": limits_set.get_original_num_threads() if limits_set else None}
