"""This machine's limits for a linear layer, measured for one ISA path of the native
kernel: the multiply-add peak of its cores (GFLOP/s), and the time they take to read a
layer's weights. The probe is C (limits.c), compiled on first use with the system
compiler for the vector width of the ISA path that runs (-mavx2 -mfma for "avx2",
-mavx512f -mfma for "avx512", baseline x86-64 for "ref"), -O3 -fopenmp, and loaded with
ctypes: a benchmark aid, not part of the library's build.

How each is measured:

- FMA peak: each thread runs 12 independent FMA chains of the path's vectors for half a
  millisecond; the best of many runs. These hosts' speed moves 15-30% from one minute
  to the next, so the benchmark probes it again around the rounds of each shape
  (`Bound`), and short runs find the machine undisturbed as often as its calls do.
- Read bound: the bytes of the shape's packed weights (panels of NR output columns, K
  rows each, one after another), each thread reading its band of panels as the kernel
  splits them, two ways: the kernel's (for rows of x taken in place, its fastest): the
  band streamed front to back, two panels side by side for one row of x where the
  kernel does so, row by row, in vectors of the path's width, each row prefetched
  FL_PREFETCH_BYTES ahead; and plain, the same band and loads without the prefetch
  (faster for weights in cache, which the kernel reads so: weights within half the
  last-level cache). The buffer is read over and over, as the
  benchmark calls a layer over and over, so weights that fit a cache are read from
  there. The bound is the best time of one pass either way: a kernel that reads its
  weights the kernel's way and computes too cannot beat it.
- A whole model (ModelBound): its Linear layers' flops at the FMA peak, or one read of
  all their packed weights in the model's own format, timed on a buffer of that size.

    python -m fastlinear.bench.limits --threads 2 [--isa avx2]
"""
import argparse
import ctypes
import functools
import math
import os
import subprocess
import tempfile

import numpy as np

from .. import _config, _core

HERE = os.path.dirname(os.path.abspath(__file__))
# Per ISA path (x86-64): the compiler flags of its vector width, and how its kernel reads
# a panel (src_c/kernels/<isa>.c: NV vectors per k row, TWO_PANELS for one row of x).
# Other CPUs get the portable kernel's 16-byte vectors.
ISA_FLAGS = {"ref": ["-DROW_VECTORS=2", "-DTWO_PANELS=0"],
             "avx2": ["-mavx2", "-mfma", "-DROW_VECTORS=4", "-DTWO_PANELS=1"],
             "avx512": ["-mavx512f", "-mavx512bw", "-mfma", "-DROW_VECTORS=4",
                        "-DTWO_PANELS=1"],
             "avx512_vnni": ["-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma",
                             "-DROW_VECTORS=4", "-DTWO_PANELS=1"]}
# Seconds of one FMA run, and of one measure of reads (as many passes as fit, at least
# one): far above the timer's resolution and the start of a thread team, and short, so
# that the best of many runs finds the machine undisturbed as often as the benchmark's
# calls do (on a busy host a long run is always cut by the scheduler somewhere).
FMA_SECONDS = 0.0005
READ_SECONDS = 0.0005


def current_isa():
    """The ISA whose bounds apply to fastlinear's calls now: the native kernel's; where
    only the portable kernel runs, backend "auto" runs BLAS, which uses the CPU's best
    vectors, so the bound is that of the best ISA the CPU has."""
    isa = _core.isa_name()
    if isa == "ref" and _config.resolve_backend("auto") == "blas":
        return _core.supported_isas()[-1]
    return isa


@functools.lru_cache(maxsize=None)
def _probe(isa):
    """The probe compiled for `isa`, or None where there is no working C compiler."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(prefix="fastlinear-limits-") as tmp:
        lib = os.path.join(tmp, "limits.so")
        cmd = [cc, "-O3", *ISA_FLAGS.get(isa, ISA_FLAGS["ref"]), "-fopenmp", "-shared",
               "-fPIC", os.path.join(HERE, "limits.c"), "-o", lib]
        try:
            subprocess.run(cmd, check=True, capture_output=True)
            probe = ctypes.CDLL(lib)  # stays mapped after the file is removed
        except (OSError, subprocess.CalledProcessError):
            return None
    probe.fma_gflops.restype = ctypes.c_double
    probe.fma_gflops.argtypes = [ctypes.c_int, ctypes.c_double, ctypes.c_int,
                                 ctypes.c_double]
    probe.int8_gops.restype = ctypes.c_double
    probe.int8_gops.argtypes = [ctypes.c_double, ctypes.c_int, ctypes.c_int]
    probe.read_panels.restype = ctypes.c_double
    probe.read_panels.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                  ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int]
    return probe


def fma_peak(dtype, threads, isa=None, runs=16, seconds=FMA_SECONDS):
    """Best GFLOP/s of `runs` runs of `threads` threads doing nothing but independent FMAs
    of the vector width of `isa` (default: the native kernel's ISA now), or None without
    a C compiler. Measured anew at each call."""
    probe = _probe(isa or current_isa())
    if probe is None:
        return None
    itemsize = np.dtype(dtype).itemsize
    return max(probe.fma_gflops(itemsize, seconds, threads, 0.999999) for _ in range(runs))


def int8_peak(threads, isa=None, runs=16, seconds=FMA_SECONDS):
    """Best GOP/s (a multiply and an add per product) of `runs` runs of `threads` threads
    doing nothing but the integer kernel's int8 dot products on `isa` (default: the
    native kernel's ISA now): vpdpbusd with VNNI, else vpmaddwd and vpaddd; None without
    a C compiler."""
    probe = _probe(isa or current_isa())
    if probe is None:
        return None
    return max(probe.int8_gops(seconds, threads, 1) for _ in range(runs))


class Weights:
    """A K x N weight matrix of `dtype` laid out as the kernel of `isa` packs it, in a
    buffer of its own (written, so that no page is the shared zero page), and the time
    `threads` threads take to read it (limits.c, read_panels) in one of two ways:
    "kernel", the kernel's (for `m` rows of x: one row reads two panels side by side
    where the kernel does; the kernel's prefetch), and "plain", each thread's band
    streamed with plain loads and no software prefetch."""

    def __init__(self, k, n, dtype, threads, m=1, isa=None):
        self.probe = _probe(isa or current_isa())
        if self.probe is None:
            raise RuntimeError("no C compiler with OpenMP found (set CC)")
        row = self.probe.row_bytes()
        itemsize = np.dtype(dtype).itemsize
        self.k, self.threads = k, threads
        self.ways = {"kernel": (int(m == 1), 1), "plain": (0, 0)}  # (pairs, prefetch)
        self.panels = max(1, math.ceil(n * itemsize / row))
        self.panel_bytes = math.ceil(k * row / 64) * 64
        self.nbytes = self.panels * k * row  # what the kernel reads: N rounded up to NR
        raw = np.full(self.panels * self.panel_bytes + 64, 1, np.uint8)
        start = (-raw.ctypes.data) % 64
        self._buf = raw[start:start + self.panels * self.panel_bytes]
        self.best = {}  # way -> the fastest pass seen

    def _pass(self, way, reps):
        """Seconds per pass of `reps` passes in a row (one start of the thread team)."""
        pairs, prefetch = self.ways[way]
        return self.probe.read_panels(self._buf.ctypes.data, self.panels, self.panel_bytes,
                                      self.k, pairs, prefetch, reps, self.threads) / reps

    def seconds(self, way="kernel", runs=8):
        """The best time of one pass over the weights read `way`, over `runs` measures of
        about READ_SECONDS each."""
        if way not in self.best:
            self._pass(way, 1)  # the first pass faults the pages in
            reps, best = 1, math.inf  # then passes in a row, doubled to READ_SECONDS
            while True:
                once = self._pass(way, reps)
                best = min(best, once)
                if once * reps >= READ_SECONDS:
                    break
                reps *= 2
            self.best[way] = best
        for _ in range(runs):
            reps = max(1, round(READ_SECONDS / self.best[way]))
            self.best[way] = min(self.best[way], self._pass(way, reps))
        return self.best[way]

    def gbs(self, way="kernel", runs=8):
        return self.nbytes / self.seconds(way, runs) / 1e9


def read_bandwidth(nbytes, threads, isa=None, way=None, runs=8):
    """GB/s of `threads` threads reading about `nbytes` of float32 weights (K = 4096) for
    one row of x, `way` as Weights reads them (default: the faster way), or None without
    a C compiler."""
    if _probe(isa or current_isa()) is None:
        return None
    k = 4096
    weights = Weights(k, max(1, nbytes // (4 * k)), np.float32, threads, 1, isa)
    return max(weights.gbs(w, runs) for w in ([way] if way else weights.ways))


class Bound:
    """The machine's bound for one shape M x K x N, probed again at each call of probe()
    (around the benchmark's rounds) and kept at its best: the highest FMA peak and the
    fastest read of the weights seen, either way (Weights). bound() is the larger of the
    two times then: ("FMA", seconds) for 2 M K N flops at that peak, ("BW", seconds) for
    one read of the weights; or None without a C compiler. A kernel reads its weights
    the kernel's way and computes too: it cannot beat either time."""

    def __init__(self, m, k, n, dtype, threads, isa=None):
        self.flops = 2.0 * m * k * n
        self.dtype, self.threads, self.isa = np.dtype(dtype), threads, isa or current_isa()
        self.peak, self.read = 0.0, {}
        self.weights = (Weights(k, n, dtype, threads, m, self.isa)
                        if _probe(self.isa) is not None else None)
        self.nbytes = self.weights.nbytes if self.weights else None

    def probe(self):
        if self.weights is None:
            return
        self.peak = max(self.peak, fma_peak(self.dtype, self.threads, self.isa, runs=12))
        for way in self.weights.ways:
            self.read[way] = self.weights.seconds(way)

    def release(self):
        """Frees the weights' buffer; the bound found so far stays."""
        self.weights = None

    def bound(self):
        if not self.peak or not self.read:
            return None
        return max(("FMA", self.flops / self.peak / 1e9), ("BW", min(self.read.values())),
                   key=lambda b: b[1])

    def record(self):
        """What the JSON keeps of it."""
        if not self.peak or not self.read:
            return {}
        read_s = min(self.read.values())
        return {"fma_peak_gflops": self.peak, "read_us": read_s * 1e6,
                "read_gbs": self.nbytes / read_s / 1e9,
                "read_us_by_way": {way: t * 1e6 for way, t in self.read.items()}}


def int8_bound(m, k, n, fmt, threads, group=None, isa=None):
    """The bound of an integer-activation layer (int8 or int4 weights, int8 x): its 2 M K
    N operations at the probed int8 dot-product peak, or one read of its packed weights
    (int4: each group's scales and sums beside them, kernel.h); ("dot" or "BW",
    seconds), or None without a C compiler."""
    peak = int8_peak(threads, isa, runs=12)
    if peak is None:
        return None
    cols = -(-n // 64) * 64
    nbytes = (cols * -(-k // group) * 8 + cols * k // 2 if fmt.scale == "group"
              else cols * k + cols * 8)
    weights = Weights(4096, max(1, nbytes // 4096 // 4), np.float32, threads, 1, isa)
    read = min(weights.seconds(way) for way in weights.ways) * nbytes / weights.nbytes
    return max(("dot", 2.0 * m * k * n / peak / 1e9), ("BW", read), key=lambda b: b[1])


def packed_bytes(k, n, fmt, nr, group=None):
    """Bytes of a K x N layer's weights in weight format `fmt` (a fastlinear._formats
    Format), packed as the kernel packs them: panels of `nr` output columns (N rounded
    up), K rows each; int8's scale per output row beside them; int4's `group` rows led by
    their `nr` scales (src_c/kernel.h)."""
    cols = -(-n // nr) * nr
    if fmt.scale == "group":
        return cols * -(-k // group) * 4 + cols * k * fmt.bits // 8
    return cols * k * fmt.bits // 8 + (cols * 4 if fmt.scale == "row" else 0)


class ModelBound:
    """The machine's bound for a float32 model's forward at batch `m`, for each of its
    variants (`variants`: {name: its Linear layers as [(K, N, Format, group)]}, Format
    a fastlinear._formats record), probed again at each call of probe() and kept at its
    best, as Bound does for one layer: ("FMA", seconds) for the layers' 2 m K N flops at
    the float32 FMA peak, or ("BW", seconds) for one read of all their weights as
    packed (packed_bytes), whichever is longer. A forward reads every weight once,
    layer after layer, so the read is one pass over a buffer of all those bytes
    (MODEL_K rows per panel), the faster of Weights' two ways, scaled to the exact
    bytes: a buffer per layer, each read alone over and over, would sit in a cache
    that the whole model does not fit. Each variant has its own buffer, since its
    bytes fit the caches differently. bound(name) is None without a C compiler."""

    MODEL_K = 256

    def __init__(self, variants, m, threads, isa=None):
        self.flops = {name: sum(2.0 * m * k * n for k, n, _, _ in layers)
                      for name, layers in variants.items()}
        self.threads, self.isa = threads, isa or current_isa()
        self.peak, self.read, self.weights, self.nbytes = 0.0, {}, {}, {}
        probe = _probe(self.isa)
        if probe is None:
            return
        nr = probe.row_bytes() // 4  # float32 values per panel row: NR of these formats
        for name, layers in variants.items():
            self.nbytes[name] = sum(packed_bytes(k, n, fmt, nr, group)
                                    for k, n, fmt, group in layers)
            cols = max(1, -(-self.nbytes[name] // (self.MODEL_K * 4)))
            self.weights[name] = Weights(self.MODEL_K, cols, np.float32, threads, m,
                                         self.isa)

    def probe(self):
        if not self.weights:
            return
        self.peak = max(self.peak, fma_peak(np.float32, self.threads, self.isa, runs=12))
        for name, weights in self.weights.items():
            scale = self.nbytes[name] / weights.nbytes
            self.read[name] = min(weights.seconds(way) for way in weights.ways) * scale

    def release(self):
        """Frees the buffers; the bounds found so far stay."""
        self.weights = {}

    def bound(self, name):
        if not self.peak or name not in self.read:
            return None
        return max(("FMA", self.flops[name] / self.peak / 1e9), ("BW", self.read[name]),
                   key=lambda b: b[1])

    def record(self, name):
        """What the JSON keeps of variant `name`'s bound."""
        if not self.peak or name not in self.read:
            return {}
        return {"fma_peak_gflops": self.peak, "weight_bytes": self.nbytes[name],
                "read_us": self.read[name] * 1e6,
                "read_gbs": self.nbytes[name] / self.read[name] / 1e9}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastlinear.bench.limits", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads of the probe")
    parser.add_argument("--isa", choices=sorted(ISA_FLAGS), default=None,
                        help="vector width to probe (default: the native kernel's ISA)")
    args = parser.parse_args(argv)
    isa = args.isa or current_isa()
    if _probe(isa) is None:
        raise SystemExit("no C compiler with OpenMP found (set CC)")
    print(f"ISA path {isa}, {args.threads} threads")
    for dtype in ("float32", "float64"):
        print(f"FMA peak {dtype}: {fma_peak(dtype, args.threads, isa, runs=100):.1f} GFLOP/s")
    print(f"int8 dot-product peak: {int8_peak(args.threads, isa, runs=100):.1f} GOP/s")
    for mib in (1, 8, 16, 64, 256):
        kernel, plain = (read_bandwidth(mib << 20, args.threads, isa, way)
                         for way in ("kernel", "plain"))
        print(f"weights read, {mib} MiB: {kernel:.1f} GB/s the kernel's way, "
              f"{plain:.1f} GB/s with plain loads")


if __name__ == "__main__":
    main()
