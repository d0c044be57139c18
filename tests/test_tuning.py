"""Block sizes found on the machine (fastlinear.tune, fastlinear._tuning): derived from
the caches, searched, stored per CPU, ISA and thread count, applied at import; never
the bits."""
import json
import warnings

import numpy as np
import pytest

import fastlinear as fl
from fastlinear import _core, _tuning


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache folder; the block sizes in force put back afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FASTLINEAR_TUNING", raising=False)
    _tuning.apply()  # none stored: the derived sizes for every thread count
    yield tmp_path
    monkeypatch.undo()
    _tuning.apply()


def _outputs(dtype):
    """Outputs of every weight format over shapes that read x in place and pack it,
    across k blocks and tile edges; 9 rows in place run as tiles of 4 + 4 + 1 rows where
    the weights are not prefetched and 6 + 2 + 1 where they are (gemm.c's tile_rows)."""
    rng = np.random.default_rng(5)
    formats = ["float64"] if dtype == "float64" else ["float32", "bfloat16", "int8", "int4"]
    out = []
    for m, k, n in ((3, 1100, 70), (9, 300, 70), (300, 700, 130)):
        x = rng.standard_normal((m, k)).astype(dtype)
        base = fl.Linear(k, n, rng=1, dtype=dtype, backend="native")
        for fmt in formats:
            layer = base if fmt == dtype else base.quantize(fmt)
            out.append(layer(x))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_candidate_gives_the_same_bits(isa, dtype, cache_dir):
    expected = _outputs(dtype)
    for kc, mc, nc, ahead in fl.tune.candidates(isa, dtype):
        _core.set_blocking(isa, dtype, kc, mc, nc, ahead)
        assert (_core.blocking(dtype)["kc"], _core.blocking(dtype)["ahead"]) == (kc, ahead)
        for got, want in zip(_outputs(dtype), expected):
            assert got.tobytes() == want.tobytes(), (kc, mc, nc, ahead)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_prefetching_or_not_gives_the_same_bits(isa, dtype, cache_dir):
    """The weights are prefetched or not by their size against the cache (fastlinear.h's
    fl_set_cache_bytes): only the speed may change."""
    _core.set_cache_bytes(1 << 40)  # no weights prefetched
    expected = _outputs(dtype)
    _core.set_cache_bytes(0)  # all prefetched
    for got, want in zip(_outputs(dtype), expected):
        assert got.tobytes() == want.tobytes()


def test_derived_blocks_follow_the_caches():
    """On the caches the compiled sizes were measured on they are those sizes; larger
    caches give larger blocks, always sizes the kernel takes."""
    for isa in _core.supported_isas():
        for dtype in ("float32", "float64"):
            own = _core.default_blocking(isa, dtype)
            assert _tuning.derived(isa, dtype, _tuning.REFERENCE_CACHES) == (
                own["kc"], own["mc"], own["nc"])
            big = _tuning.derived(isa, dtype, {1: 48 << 10, 2: 2 << 20, 3: 96 << 20})
            assert big[0] % _core.SUM_BLOCK == 0 and big[1] % own["mr"] == 0
            assert big[2] % own["nr"] == 0
            assert big[1] >= own["mc"] and big[2] >= own["nc"]


def test_tune_stores_and_applies_per_cpu_isa_and_threads(cache_dir):
    result = fl.tune(seconds=0, verbose=False)  # one round
    assert result["rounds"] == 1 and result["isa"] == _core.isa_name()
    with open(result["file"]) as f:
        stored = json.load(f)
    entry = stored["entries"][_tuning.key(result["isa"], result["threads"])]
    assert tuple(entry["float32"]) == result["float32"]
    assert tuple(_core.blocking(np.float32)[k]
                 for k in ("kc", "mc", "nc", "ahead")) == result["float32"]
    assert "tuned" in _tuning.describe(result["threads"])[f"{result['isa']} float32"]


def _store(cache_dir, float32):
    folder = cache_dir / "fastlinear"
    folder.mkdir(exist_ok=True)
    key = _tuning.key(_core.isa_name(), fl.get_num_threads())
    (folder / "tuning.json").write_text(json.dumps(
        {"version": 1, "entries": {key: {"float32": float32, "float64": [512, 72, 4096]}}}))


def test_each_thread_count_uses_the_sizes_tuned_for_it(cache_dir):
    """However the count is set: the C driver picks the sizes per call, by the count the
    call asks for; a count that was not tuned uses the derived sizes."""
    isa, own = _core.isa_name(), _core.default_blocking(_core.isa_name(), "float32")
    mine = {1: [_core.SUM_BLOCK, own["mr"], own["nr"], 0],
            2: [2 * _core.SUM_BLOCK, 2 * own["mr"], 2 * own["nr"], 2048]}
    (cache_dir / "fastlinear").mkdir()
    (cache_dir / "fastlinear" / "tuning.json").write_text(json.dumps({"version": 1, "entries": {
        _tuning.key(isa, n): {"float32": b, "float64": [512, 72, 4096]}
        for n, b in mine.items()}}))
    _tuning.apply()

    def blocks(**kw):
        return [_core.blocking(np.float32, **kw)[k] for k in ("kc", "mc", "nc", "ahead")]

    assert blocks(threads=1) == mine[1] and blocks(threads=2) == mine[2]
    assert blocks(threads=3) == list(_tuning.derived(isa, "float32")) + [0]
    for n in (1, 2):
        with fl.threads(n):
            assert blocks() == mine[n]
            shown = fl.show_config("dicts")["block_sizes"][0]
            assert f"tuned for {n} threads" in shown and ("ahead=2048" in shown) == (n == 2)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        if fl.get_num_threads() == 1:  # the default follows OpenMP's count
            assert blocks() == mine[1]


def test_at_most_eight_thread_counts_have_their_own_sizes(cache_dir):
    isa, own = _core.isa_name(), _core.default_blocking(_core.isa_name(), "float32")
    try:
        for n in range(1, 9):
            _core.set_blocking(isa, "float32", _core.SUM_BLOCK, own["mr"], own["nr"], threads=n)
        with pytest.raises(ValueError, match="8 thread counts"):
            _core.set_blocking(isa, "float32", _core.SUM_BLOCK, own["mr"], own["nr"], threads=9)
        _core.set_blocking(isa, "float32", 0, 0, 0, threads=8)  # frees a slot
        _core.set_blocking(isa, "float32", _core.SUM_BLOCK, own["mr"], own["nr"], threads=9)
        assert _core.blocking(np.float32, threads=9)["kc"] == _core.SUM_BLOCK
        assert _core.blocking(np.float32, threads=8)["kc"] == _tuning.derived(isa, "float32")[0]
    finally:
        for n in range(1, 10):
            _core.set_blocking(isa, "float32", 0, 0, 0, threads=n)


def test_stored_blocks_are_used_unless_tuning_is_off(cache_dir, monkeypatch):
    own = _core.default_blocking(_core.isa_name(), "float32")
    chosen = [2 * _core.SUM_BLOCK, 2 * own["mr"], 4 * own["nr"]]
    _store(cache_dir, chosen)
    _tuning.apply()
    assert [_core.blocking(np.float32)[k] for k in ("kc", "mc", "nc")] == chosen
    monkeypatch.setenv("FASTLINEAR_TUNING", "off")
    _tuning.apply()
    assert [_core.blocking(np.float32)[k] for k in ("kc", "mc", "nc")] == list(
        _tuning.derived(_core.isa_name(), "float32"))


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 99, "entries": {}}),
                                     json.dumps({"version": 1, "entries": []})])
def test_an_unusable_file_is_ignored_with_a_warning(cache_dir, content):
    (cache_dir / "fastlinear").mkdir()
    (cache_dir / "fastlinear" / "tuning.json").write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring the stored tuning"):
        _tuning.apply()
    assert [_core.blocking(np.float32)[k] for k in ("kc", "mc", "nc")] == list(
        _tuning.derived(_core.isa_name(), "float32"))


@pytest.mark.parametrize("float32", [[100, 7, 3],  # kc not a multiple of the summation block
                                     [512, 144, 8192, 100],  # ahead not whole cache lines
                                     [512, 144, 8192, 0, 0]])
def test_values_the_kernel_cannot_take_are_not_trusted(cache_dir, float32):
    _store(cache_dir, float32)
    with pytest.warns(RuntimeWarning, match="ignoring the stored tuning"):
        _tuning.apply()
    assert _core.blocking(np.float32)["kc"] % _core.SUM_BLOCK == 0
    assert _core.blocking(np.float32)["ahead"] == 0


def test_another_cpus_entry_is_not_used(cache_dir):
    folder = cache_dir / "fastlinear"
    folder.mkdir()
    key = f"Another CPU|{_core.isa_name()}|{fl.get_num_threads()}|{fl.__version__}"
    (folder / "tuning.json").write_text(json.dumps(
        {"version": 1, "entries": {key: {"float32": [128, 6, 64], "float64": [128, 6, 32]}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _tuning.apply()
    assert [_core.blocking(np.float32)[k] for k in ("kc", "mc", "nc")] == list(
        _tuning.derived(_core.isa_name(), "float32"))


def test_bad_block_sizes_are_refused():
    isa = _core.isa_name()
    for kc, mc, nc, ahead in ((100, 144, 8192, 0), (512, 0, 8192, 0), (512, 144, 7, 0),
                              (1 << 21, 144, 8192, 0), (512, 144, 8192, 100),
                              (512, 144, 8192, 1 << 17)):
        with pytest.raises(ValueError, match="cannot be used"):
            _core.set_blocking(isa, "float32", kc, mc, nc, ahead)
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.set_blocking("sse9", "float32", 512, 144, 8192)
    with pytest.raises(ValueError, match="negative thread count"):
        _core.set_blocking(isa, "float32", 512, 144, 8192, threads=-1)
