"""Process-wide settings: thread count, backend choice, and what this build can do."""
import os
import sys

import numpy as np
import scipy

from . import _core

BACKENDS = ("auto", "native", "blas")

def set_num_threads(n):
    """Sets how many threads the native kernel may use (the BLAS backend follows its own
    library's setting; use threadpoolctl for it)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 2**31 - 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads():
    """Threads the native kernel may use: set_num_threads(), else OMP_NUM_THREADS, else
    the CPUs this process may run on."""
    return _core.get_num_threads()


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    return backend


def resolve_backend(backend):
    """'native' or 'blas'. The rule for 'auto': the native kernel where it has a
    hand-tuned micro-kernel for this CPU, scipy's BLAS where only the portable C
    reference kernel would run."""
    if backend == "auto":
        return "blas" if _core.isa_name() == "ref" else "native"
    return check_backend(backend)


def config_info():
    """What show_config() prints, as a dict."""
    from . import __version__
    return {
        "fastlinear": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "native_isa": _core.isa_name(),
        "supported_isas": _core.supported_isas(),
        "openmp": _core.openmp_enabled(),
        "num_threads": get_num_threads(),
        "auto_backend": resolve_backend("auto"),
        "blas_backend": "scipy.linalg.cython_blas (sgemm, dgemm)",
    }


def show_config():
    """Prints the version, the native kernel's ISA, OpenMP, threads and backends."""
    for key, value in config_info().items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:>15}: {value}")


def _apply_isa_override():
    """FASTLINEAR_ISA=ref|... forces the native kernel's ISA for this process."""
    name = os.environ.get("FASTLINEAR_ISA", "")
    if name:
        _core.set_isa(name)


_apply_isa_override()
