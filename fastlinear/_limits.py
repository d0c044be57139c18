"""This machine's limits for a linear layer, measured: the multiply-add peak of its
cores (GFLOP/s) and their read bandwidth (GB/s) for data of a given size (in the
last-level cache or beyond it). The probe is C (_limits.c), compiled on first use with
the system compiler for this machine's CPU, -O3 -fopenmp, and loaded with ctypes: a
benchmark aid, not part of the library's build.

    python -m fastlinear._limits --threads 2
"""
import argparse
import ctypes
import functools
import os
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _probe():
    """The compiled probe, or None where there is no working C compiler."""
    lib = os.path.join(tempfile.mkdtemp(prefix="fastlinear-limits-"), "limits.so")
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC",
           os.path.join(HERE, "_limits.c"), "-o", lib]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    probe = ctypes.CDLL(lib)
    probe.fma_gflops.restype = ctypes.c_double
    probe.fma_gflops.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int, ctypes.c_double]
    probe.read_gbs.restype = ctypes.c_double
    probe.read_gbs.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    return probe


@functools.lru_cache(maxsize=None)
def fma_peak(dtype, threads, tries=5):
    """Best GFLOP/s of `threads` threads doing nothing but independent FMAs."""
    probe = _probe()
    if probe is None:
        return None
    size = np.dtype(dtype).itemsize
    return max(probe.fma_gflops(size, 20_000_000, threads, 0.999999) for _ in range(tries))


@functools.lru_cache(maxsize=None)
def read_bandwidth(nbytes, threads, tries=5):
    """Best GB/s of `threads` threads reading the same `nbytes` over and over (so data
    that fits the last-level cache is read from there, larger data from memory)."""
    probe = _probe()
    if probe is None:
        return None
    chunk = 64 * 8 * threads
    nbytes = max(chunk, nbytes // chunk * chunk)
    raw = np.ones(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    buf = raw[start:start + nbytes]
    reps = max(1, int(2e9 // nbytes))  # about 2 GB read per try
    probe.read_gbs(buf.ctypes.data, nbytes, 1, threads)  # fault the pages in
    return max(probe.read_gbs(buf.ctypes.data, nbytes, reps, threads) for _ in range(tries))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if _probe() is None:
        raise SystemExit("no C compiler with OpenMP found (set CC)")
    for dtype in ("float32", "float64"):
        print(f"FMA peak {dtype}: {fma_peak(dtype, args.threads):.1f} GFLOP/s")
    for mib in (1, 8, 16, 64, 256):
        print(f"read bandwidth, {mib} MiB: "
              f"{read_bandwidth(mib << 20, args.threads):.1f} GB/s")


if __name__ == "__main__":
    main()
