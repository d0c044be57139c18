"""Thread counts: OpenMP's settings, threadpoolctl, the affinity mask, cgroup quotas, and
calls from the caller's own thread pool."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _config

from conftest import random_layer

threadpoolctl = pytest.importorskip("threadpoolctl")


def _in_child(code, **env):
    """What a fresh process prints after `code`, with this fastlinear importable."""
    env = {**os.environ, **env,
           "PYTHONPATH": os.path.dirname(os.path.dirname(fl.__file__))}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, cwd=os.path.dirname(__file__), timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_openmp_pool_is_visible_to_threadpoolctl():
    if not fl._core.openmp_enabled():
        pytest.skip("built without OpenMP")
    apis = {info["user_api"] for info in threadpoolctl.threadpool_info()}
    assert "openmp" in apis


def test_threadpoolctl_limits_the_native_kernel(threads):
    if not fl._core.openmp_enabled():
        pytest.skip("built without OpenMP")
    before = fl.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fl.get_num_threads() == 1
    assert fl.get_num_threads() == before
    fl.set_num_threads(2)  # an explicit setting wins over OpenMP's
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fl.get_num_threads() == 2


def test_omp_num_threads_sets_the_default():
    assert _in_child("import fastlinear; print(fastlinear.get_num_threads())",
                     OMP_NUM_THREADS="1") == "1"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity mask of 2 CPUs or more")
def test_default_respects_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "import fastlinear; print(fastlinear.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    assert _in_child(code, **env) == "1"


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 2),
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _config.cgroup_cpu_quota(str(tmp_path)) == expected


def test_calls_from_a_thread_pool_match_serial_calls():
    layer = random_layer(300, 200, np.float32, seed=3)
    xs = [np.random.default_rng(i).standard_normal((150, 300)).astype(np.float32)
          for i in range(16)]
    serial = [layer(x) for x in xs]
    with ThreadPoolExecutor(2) as pool:
        pooled = list(pool.map(layer, xs))
    for a, b in zip(serial, pooled):
        np.testing.assert_array_equal(a, b)


_PARALLEL_C = r"""
#include <omp.h>
typedef void callback(void);
/* Calls cb in thread 0 of a team of two; the other thread only waits at the end. */
void in_a_team(callback *cb)
{
#pragma omp parallel num_threads(2)
    if (omp_get_thread_num() == 0)
        cb();
}
"""
_CALL_FROM_A_TEAM = r"""
import ctypes, sys
import numpy as np
import fastlinear as fl
lib = ctypes.CDLL(sys.argv[1])
model = fl.Sequential(fl.Linear(8, 8, rng=0), fl.ReLU(), fl.Linear(8, 8, rng=1),
                      fl.Linear(8, 4, rng=2, weight_dtype="int8", activations="int8"))
x = np.ones((2, 8), np.float32)
out = []
CB = ctypes.CFUNCTYPE(None)
cb = CB(lambda: out.append(model(x)))
lib.in_a_team(cb)
assert len(out) == 1 and np.array_equal(out[0], model(x))
print("ok")
"""


def test_a_call_inside_a_callers_openmp_team_does_not_wait_for_it(tmp_path):
    """A call small enough for one thread, made by one thread of a caller's OpenMP team
    (a C extension calling back into Python): it starts no team of its own, so it must
    not wait at barriers that would bind to the caller's team (a hang)."""
    src, lib = tmp_path / "team.c", tmp_path / "team.so"
    src.write_text(_PARALLEL_C)
    cc = os.environ.get("CC", "cc")
    built = subprocess.run([cc, "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(lib)],
                           capture_output=True)
    if built.returncode != 0 or not fl._core.openmp_enabled():
        pytest.skip("no C compiler with OpenMP, or a build without OpenMP")
    run = subprocess.run([sys.executable, "-c", _CALL_FROM_A_TEAM, str(lib)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
