"""Process-wide settings: thread count, backend choice, and what this build can do."""
import os
import sys
import warnings

import numpy as np
import scipy

from . import _core
from ._version import __version__

BACKENDS = ("auto", "native", "blas")

def set_num_threads(n):
    """Sets how many threads the native kernel uses from now on, in every thread of the
    process (the BLAS backend follows its own library's setting: use threadpoolctl).
    More threads than the process has CPUs are kept, as torch does, with a RuntimeWarning."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 2**31 - 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    cpus = available_cpus()
    if n > cpus:  # kept, as torch does: the caller may know better
        warnings.warn(f"set_num_threads({n}): this process has {cpus} CPU"
                      f"{'s' if cpus > 1 else ''} (affinity mask and cgroup quota); "
                      f"threads beyond that share them and usually run slower",
                      RuntimeWarning, stacklevel=2)
    _core.set_num_threads(int(n))


def get_num_threads():
    """Threads the native kernel uses for a call from this thread: set_num_threads()'s
    value; without one, OpenMP's (OMP_NUM_THREADS, a threadpoolctl limit, else the CPUs
    in this process's affinity mask), at most the cgroup's CPU quota."""
    return _core.get_num_threads()


def available_cpus():
    """CPUs this process may run on: its affinity mask (all CPUs where the platform has
    none), at most the cgroup's CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cpus if quota is None else min(cpus, quota)


def cgroup_cpu_quota(root="/sys/fs/cgroup"):
    """CPUs the cgroup quota allows this process (rounded up), or None without a quota.
    Reads cgroup v2's cpu.max, else v1's cpu.cfs_quota_us and cpu.cfs_period_us."""
    def read(name):
        try:
            with open(os.path.join(root, name)) as f:
                return f.read().split()
        except OSError:
            return None
    fields = read("cpu.max")
    if fields is None:
        quota, period = read("cpu/cpu.cfs_quota_us"), read("cpu/cpu.cfs_period_us")
        fields = quota + period if quota and period else None
    if not fields or len(fields) < 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return max(1, -(-quota // period)) if quota > 0 and period > 0 else None


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
_quota = cgroup_cpu_quota()
if _quota is not None:
    _core.set_cpu_cap(_quota)
