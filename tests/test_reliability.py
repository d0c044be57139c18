"""Concurrency, fork, memory, the floating-point environment and huge offsets."""
import ctypes
import gc
import mmap
import multiprocessing
import os
import threading

import numpy as np
import pytest

import fastlinear as fl

from conftest import assert_close, random_layer


def _parallel_case(backend="native", seed=0):
    """Big enough that the native kernel starts its OpenMP team."""
    layer = random_layer(300, 200, np.float32, backend=backend, seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((150, 300)).astype(np.float32)
    return layer, x


# -- threads -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["native", "blas"])
def test_many_python_threads_share_one_layer(backend):
    layer, x = _parallel_case(backend)
    expected = layer(x)
    rows = [x[i % 7:] for i in range(8)]
    errors = []

    def work(i):
        for _ in range(30):
            y = layer(rows[i])
            if backend == "native" and not np.array_equal(y, expected[i % 7:]):
                errors.append(f"thread {i}: bits differ from the serial call")
            elif not np.allclose(y, expected[i % 7:], rtol=1e-5, atol=1e-5):
                errors.append(f"thread {i}: values differ from the serial call")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_weight_swaps_during_forward_never_mix():
    """Each call sees the old weights or the new ones, never a mixture."""
    layer, x = _parallel_case("native")
    other = random_layer(300, 200, np.float32, seed=99)
    states = [layer.state_dict(), other.state_dict()]
    answers = [layer(x), other(x)]
    stop = threading.Event()
    bad = []

    def forward_loop():
        while not stop.is_set():
            y = layer(x)
            if not any(np.array_equal(y, a) for a in answers):
                bad.append(y)

    workers = [threading.Thread(target=forward_loop) for _ in range(3)]
    for t in workers:
        t.start()
    for i in range(200):
        layer.load_state_dict(states[i % 2])
    stop.set()
    for t in workers:
        t.join()
    assert not bad, f"{len(bad)} calls mixed old and new weights"


# -- fork ----------------------------------------------------------------------------
def _child_forward(layer, x, queue):
    queue.put([layer(x).tobytes() for _ in range(3)])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="this platform cannot fork")
def test_forked_child_after_parallel_calls_does_not_hang():
    layer, x = _parallel_case("native")
    expected = layer(x).tobytes()  # the parent's team has run
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_forward, args=(layer, x, queue))
    child.start()
    try:
        results = queue.get(timeout=60)  # before join: the child waits for its pipe
    except Exception:
        child.kill()
        pytest.fail("the forked child hung in its first parallel call")
    child.join(10)
    assert child.exitcode == 0
    assert results == [expected] * 3      # the same bits, on one thread
    assert layer(x).tobytes() == expected  # and the parent still works


# -- memory --------------------------------------------------------------------------
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer holds freed memory in quarantine")
def test_no_leaks_across_calls_reassignments_and_layers():
    layer, x = _parallel_case("native")
    out = np.empty((150, 200), np.float32)
    w = layer.weight.copy()

    def churn(n):
        for i in range(n):
            layer(x)
            layer(x[:1])
            layer(x, out=out)
            layer.weight = w
            fl.Linear(64, 32, rng=i)(x[:4, :64])
            fl.functional.linear(x[:3], w, backend="native")
        gc.collect()

    churn(50)  # warm up allocator pools
    before = _rss_bytes()
    churn(500)
    growth = _rss_bytes() - before
    # 500 rounds allocate over 1 GB in total; a leak of even one packed copy of w per
    # round (240 KB) would show as 100+ MB.
    assert growth < 16 << 20, f"resident memory grew by {growth >> 20} MiB"


def test_absurd_sizes_raise_memory_error():
    with pytest.raises(MemoryError):
        fl.Linear(1 << 20, 1 << 22)  # 4 Ti weights
    layer = fl.Linear(8, 3)
    huge = np.broadcast_to(np.ones(8, np.float32), (1 << 42, 8))  # no memory behind it
    with pytest.raises(MemoryError):
        layer(huge)


# -- floating-point environment ------------------------------------------------------
def _fegetround():
    libm = ctypes.CDLL(None)
    return libm.fegetround()


def _denormals_kept():
    tiny = np.float32(1e-38)
    return bool(tiny * np.float32(1e-3) != 0)


def test_floating_point_environment_is_left_alone():
    before = (_fegetround(), _denormals_kept(), np.geterr())
    for backend in ("native", "blas"):
        layer, x = _parallel_case(backend)
        layer(x)
        layer(x[0])
    assert (_fegetround(), _denormals_kept(), np.geterr()) == before
    assert before[1], "denormals were flushed before the test: the check cannot see a change"


def test_denormal_inputs_are_not_flushed():
    layer = fl.Linear(2, 1, bias=False, backend="native")
    layer.weight = np.array([[1.0, 1.0]], np.float32)
    x = np.array([[1e-40, 0.0]], np.float32)  # a float32 denormal
    assert layer(x)[0] == np.float32(1e-40)


# -- offsets past 2**31 elements -----------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_more_than_2_to_the_31_elements_apart(dtype):
    """x's second row lies 2**31 + 64 elements after its first: an int32 offset would
    wrap. The mapping is lazy, so only the pages of the two rows are ever touched."""
    k, ldx = 96, (1 << 31) + 64
    size = np.dtype(dtype).itemsize
    try:
        buf = mmap.mmap(-1, (ldx + k) * size)
    except (OSError, OverflowError, ValueError):
        pytest.skip("cannot reserve the address space")
    try:
        x = np.ndarray((2, k), dtype, buffer=buf, strides=(ldx * size, size))
        x[0] = np.arange(k) / k
        x[1] = -np.arange(k) / k
        layer = random_layer(k, 5, dtype, backend="native")
        y = layer(x)
        assert_close(y, np.array(x), layer.weight, layer.bias)
        del x
    finally:
        buf.close()
