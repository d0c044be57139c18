"""This machine's limits for a linear layer, measured for one ISA path of the native
kernel: the multiply-add peak of its cores (GFLOP/s) and their read bandwidth (GB/s) for
data of a given size (in cache or beyond it). The probe is C (limits.c), compiled on
first use with the system compiler for the vector width of the ISA path that runs
(-mavx2 -mfma for "avx2", -mavx512f for "avx512", baseline x86-64 for "ref"), -O3
-fopenmp, and loaded with ctypes: a benchmark aid, not part of the library's build.

How it measures, so that it is stable from run to run: the FMA peak is the best of 9
runs of 12 independent FMA chains per thread, 50 million steps (0.05-0.1 s) each; the
bandwidth is the best of 5 passes of about 1 GB read each, after one pass that faults
the pages in.

    python -m fastlinear.bench.limits --threads 2 [--isa avx2]
"""
import argparse
import ctypes
import functools
import os
import subprocess
import tempfile

import numpy as np

from .. import _core

HERE = os.path.dirname(os.path.abspath(__file__))
# The vector width of each ISA path, as compiler flags (x86-64); other CPUs get none.
ISA_FLAGS = {"ref": [], "avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f", "-mfma"]}


def current_isa():
    return _core.isa_name()


@functools.lru_cache(maxsize=None)
def _probe(isa):
    """The probe compiled for `isa`, or None where there is no working C compiler."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(prefix="fastlinear-limits-") as tmp:
        lib = os.path.join(tmp, "limits.so")
        cmd = [cc, "-O3", *ISA_FLAGS.get(isa, []), "-fopenmp", "-shared", "-fPIC",
               os.path.join(HERE, "limits.c"), "-o", lib]
        try:
            subprocess.run(cmd, check=True, capture_output=True)
            probe = ctypes.CDLL(lib)  # stays mapped after the file is removed
        except (OSError, subprocess.CalledProcessError):
            return None
    probe.fma_gflops.restype = ctypes.c_double
    probe.fma_gflops.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int, ctypes.c_double]
    probe.read_gbs.restype = ctypes.c_double
    probe.read_gbs.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    return probe


def fma_peak(dtype, threads, isa=None):
    """Best GFLOP/s of `threads` threads doing nothing but independent FMAs of the
    vector width of `isa` (default: the native kernel's ISA now)."""
    return _fma_peak(np.dtype(dtype).itemsize, threads, isa or current_isa())


@functools.lru_cache(maxsize=None)
def _fma_peak(itemsize, threads, isa):
    probe = _probe(isa)
    if probe is None:
        return None
    iters = 50_000_000  # 50-100 ms a run at 2-4 GHz: long enough to be steady
    return max(probe.fma_gflops(itemsize, iters, threads, 0.999999) for _ in range(9))


def read_bandwidth(nbytes, threads, isa=None):
    """Best GB/s of `threads` threads reading the same `nbytes` over and over with loads
    of `isa`'s width (so data that fits a cache is read from there, larger data from
    memory)."""
    return _read_bandwidth(nbytes, threads, isa or current_isa())


@functools.lru_cache(maxsize=None)
def _read_bandwidth(nbytes, threads, isa):
    probe = _probe(isa)
    if probe is None:
        return None
    chunk = 64 * 8 * threads
    nbytes = max(chunk, nbytes // chunk * chunk)
    raw = np.ones(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    buf = raw[start:start + nbytes]
    reps = max(1, int(1e9 // nbytes))  # about 1 GB read per pass
    probe.read_gbs(buf.ctypes.data, nbytes, 1, threads)  # fault the pages in
    return max(probe.read_gbs(buf.ctypes.data, nbytes, reps, threads) for _ in range(5))


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
        print(f"FMA peak {dtype}: {fma_peak(dtype, args.threads, isa):.1f} GFLOP/s")
    for mib in (1, 8, 16, 64, 256):
        print(f"read bandwidth, {mib} MiB: "
              f"{read_bandwidth(mib << 20, args.threads, isa):.1f} GB/s")


if __name__ == "__main__":
    main()
