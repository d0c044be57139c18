"""Process-wide settings: thread count, backend choice, and what this build can do."""
from __future__ import annotations

import os
import sys
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from . import _core, _tuning
from ._version import __version__

if TYPE_CHECKING:
    from ._typing import Backend, Resolved

BACKENDS = ("auto", "native", "blas")

# set_num_threads' value, None for the default: what fl.threads() puts back (_core
# keeps the same as 0 for the default).
_setting: int | None = None


def _check_threads(n: object, name: str) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 2**31 - 1:
        raise ValueError(f"number of threads must be a positive integer or None, got {n!r}")
    cpus = available_cpus()
    if n > cpus:  # kept, as torch does: the caller may know better
        warnings.warn(f"{name}({n}): this process has {cpus} CPU"
                      f"{'s' if cpus > 1 else ''} (affinity mask and cgroup quota); "
                      f"threads beyond that share them and usually run slower",
                      RuntimeWarning, stacklevel=3)
    return int(n)


def _apply(n: int | None) -> None:
    global _setting
    _core.set_num_threads(0 if n is None else n)
    _setting = n


def set_num_threads(n: int | None) -> None:
    """Sets how many threads the native kernel uses from now on, in every thread of the
    process; None goes back to the default (OpenMP's setting, see get_num_threads). The
    BLAS backend follows its own library's setting: use threadpoolctl. More threads than
    the process has CPUs are kept, as torch does, with a RuntimeWarning."""
    _apply(_check_threads(n, "set_num_threads"))


class threads:
    """with fastlinear.threads(n): ... runs the block with n threads for the native
    kernel (None: the default), then puts back what was set before, also when the block
    raises. Process-wide, like set_num_threads and threadpoolctl's limits: it applies to
    calls from every thread while the block runs. Blocks nest; one instance may be
    entered again."""

    def __init__(self, n: int | None) -> None:
        self._n = _check_threads(n, "threads")
        self._before: list[int | None] = []

    def __enter__(self) -> threads:
        self._before.append(_setting)
        _apply(self._n)
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        _apply(self._before.pop())

    def __repr__(self) -> str:
        return f"threads({self._n})"


def get_num_threads() -> int:
    """Threads the native kernel uses for a call from this thread: set_num_threads()'s
    value; without one, OpenMP's (OMP_NUM_THREADS, a threadpoolctl limit, else the CPUs
    in this process's affinity mask), at most the cgroup's CPU quota."""
    return _core.get_num_threads()


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (all CPUs where the platform has
    none), at most the cgroup's CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return cpus if quota is None else min(cpus, quota)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """CPUs the cgroup quota allows this process (rounded up), or None without a quota.
    Reads cgroup v2's cpu.max, else v1's cpu.cfs_quota_us and cpu.cfs_period_us."""
    def read(name: str) -> list[str] | None:
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
    cpus, per = int(fields[0]), int(fields[1])
    return max(1, -(-cpus // per)) if cpus > 0 and per > 0 else None


def check_backend(backend: Backend) -> Backend:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    return backend


def resolve_backend(backend: Backend) -> Resolved:
    """'native' or 'blas'. The rule for 'auto': the native kernel where it has a
    hand-tuned micro-kernel for this CPU, scipy's BLAS where only the portable C
    reference kernel would run."""
    if backend == "auto":
        return "blas" if _core.isa_name() == "ref" else "native"
    return "native" if check_backend(backend) == "native" else "blas"


def config_info() -> dict[str, Any]:
    """What show_config() prints, as a dict."""
    import scipy  # here, not at import: only the BLAS backend needs it
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
        "block_sizes": [f"{dtype} {text}" for dtype in _tuning.VALUE_TYPES
                        for text in [_tuning.describe(get_num_threads()).get(
                                     f"{_core.isa_name()} {dtype}")]
                        if text],
    }


@overload
def show_config(mode: Literal["stdout"] = ...) -> None: ...
@overload
def show_config(mode: Literal["dicts"]) -> dict[str, Any]: ...


def show_config(mode: str = "stdout") -> dict[str, Any] | None:
    """The version, the native kernel's ISA, OpenMP, threads and backends: printed
    (mode="stdout"), or returned as a dict (mode="dicts"), as numpy.show_config does."""
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    info = config_info()
    if mode == "dicts":
        return info
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:>15}: {value}")
    return None


def _apply_isa_override() -> None:
    """FASTLINEAR_ISA=ref|... forces the native kernel's ISA for this process."""
    name = os.environ.get("FASTLINEAR_ISA", "")
    if name:
        _core.set_isa(name)


_apply_isa_override()
_quota = cgroup_cpu_quota()
if _quota is not None:
    _core.set_cpu_cap(_quota)
_tuning.apply()  # before the first forward
