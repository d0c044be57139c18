"""Finds the block sizes (KC, MC, NC), and the prefetch distance for weights that come
from cache, that run fastlinear fastest on this machine, for the ISA path and thread
count in use, and stores them for every later process (fastlinear._tuning says where
and how they are applied):

    python -m fastlinear.tune [--seconds 30]      or      fastlinear.tune()

The search keeps the bits: KC is a multiple of the summation block, MC of the tile's
rows, NC of its columns, and the tile itself is the compiled one, so every candidate
computes each output with the same operations; a prefetch changes no value
(tests/test_tuning.py checks both)."""
from __future__ import annotations

import argparse
import sys
import time
import types
from typing import Any

import numpy as np

from . import _core, _tuning
from ._config import get_num_threads

ROUNDS = 9  # at most; fewer where the time budget ends first
# A candidate replaces the derived defaults only when it is this much faster: these
# hosts move 15-30% from minute to minute, and interleaved best-of rounds leave a few %.
MARGIN = 0.97
# Compute-bound shapes (M x K x N) where the block sizes matter: x read in place (the
# k block's weight slice against the tile's loads), x packed in row blocks (MC), and a
# weight slab larger than L2 (NC).
SHAPES = ((32, 768, 3072), (256, 1024, 1024), (512, 2048, 2048))
# How far ahead tiles of several rows may ask for weights that come from cache (bytes):
# a few k rows to a few blocks of rows, for CPUs whose hardware prefetch falls behind a
# stream from L2 or L3. On a Zen 4 (2 threads, AVX-512 and AVX2) none of these moved the
# search's shapes by more than the noise (1-2%), so the derived default is none.
AHEADS = (512, 2048, 8192)


def candidates(isa: str, dtype: str = "float32") -> list[tuple[int, int, int, int]]:
    """The block sizes and prefetch distances the search tries: the derived sizes
    without prefetch, then each coordinate alone moved around them."""
    kc0, mc0, nc0 = _tuning.derived(isa, dtype)
    b = _core.default_blocking(isa, dtype)
    s, mr, nr = _core.SUM_BLOCK, b["mr"], b["nr"]
    kcs = sorted({kc for kc in (s, 2 * s, 3 * s, 4 * s, 6 * s, 8 * s, kc0)})
    mcs = sorted({max(mr, round(mc0 * f / mr) * mr) for f in (0.5, 0.75, 1, 1.5, 2)})
    ncs = sorted({max(nr, round(nc0 * f / nr) * nr) for f in (0.5, 1, 2)})
    out = [(kc0, mc0, nc0, 0)]
    out += [(kc, mc0, nc0, 0) for kc in kcs if kc != kc0]
    out += [(kc0, mc, nc0, 0) for mc in mcs if mc != mc0]
    out += [(kc0, mc0, nc, 0) for nc in ncs if nc != nc0]
    out += [(kc0, mc0, nc0, ahead) for ahead in AHEADS]
    return out


def _time_shapes(layers, xs) -> list[float]:
    """Best-of-3 seconds of each shape."""
    times = []
    for layer, x in zip(layers, xs):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            layer(x)
            best = min(best, time.perf_counter() - t)
        times.append(best)
    return times


class _Progress:
    """tqdm's bar where it is installed (the bench extra), else a line per step."""

    def __init__(self, total: int, verbose: bool):
        self.bar = None
        self.verbose, self.total, self.done = verbose, total, 0
        if verbose:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc="fastlinear.tune", unit="trial",
                                file=sys.stderr)
            except ImportError:
                pass

    def step(self, note: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note)
            self.bar.update()
        elif self.verbose:
            print(f"fastlinear.tune {self.done}/{self.total}: {note}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tune(seconds: float = 30.0, verbose: bool = True, store: bool = True) -> dict:
    """Searches float32 block sizes and prefetch distances for the ISA and thread count in
    use (interleaved rounds, best of each: these hosts' speed moves; the derived defaults
    kept unless a candidate takes 3% less time than they do, averaged over the shapes),
    stores the result with the derived float64 ones (unless store=False) and applies it.
    Returns {"isa", "threads", "float32": (kc, mc, nc, ahead), "float64": ...,
    "speedup": the derived defaults' time / the chosen's, averaged so, "file"}."""
    import fastlinear as fl  # the layers being timed (fastlinear imports this module lazily)

    isa, threads = _core.isa_name(), get_num_threads()
    cands = candidates(isa)
    rng = np.random.default_rng(0)
    layers = [fl.Linear(k, n, rng=rng, backend="native") for _, k, n in SHAPES]
    xs = [rng.standard_normal((m, k)).astype(np.float32) for m, k, _ in SHAPES]
    best = {c: [float("inf")] * len(SHAPES) for c in cands}  # per shape
    start = time.perf_counter()
    rounds = 0
    progress = _Progress(len(cands) * ROUNDS, verbose)
    try:
        while rounds < ROUNDS and (rounds == 0 or time.perf_counter() - start < seconds):
            for c in cands:
                _core.set_blocking(isa, "float32", *c, threads=threads)
                best[c] = [min(b, t) for b, t in zip(best[c], _time_shapes(layers, xs))]
                progress.step(f"kc={c[0]} mc={c[1]} nc={c[2]} ahead={c[3]}")
            rounds += 1
    finally:
        progress.close()
        _core.set_blocking(isa, "float32", 0, 0, 0, threads=threads)  # the search's
        _tuning.apply()  # what was in force, until the result is stored
    # Each shape counts alike: a candidate's times over the derived sizes', averaged (the
    # raw sum would be the largest shape's alone, 90% of it).
    def relative(c):
        return sum(t / t0 for t, t0 in zip(best[c], best[cands[0]])) / len(SHAPES)

    fastest = min(cands, key=relative)
    chosen = fastest if relative(fastest) < MARGIN else cands[0]
    result: dict[str, Any] = {
        "isa": isa, "threads": threads, "float32": chosen,
        "float64": _tuning.derived(isa, "float64") + (0,),
        "speedup": 1 / relative(chosen), "rounds": rounds, "file": None}
    if store:
        entries = dict(_tuning.read()) if _tuning.enabled() else {}
        entries[_tuning.key(isa, threads)] = {"float32": list(chosen),
                                              "float64": list(result["float64"])}
        result["file"] = _tuning.write(entries)
        _tuning.apply()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlinear.tune",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="time budget of the search (default 30; at least one round runs)")
    ap.add_argument("--dry-run", action="store_true",
                    help="search and report, but store nothing")
    args = ap.parse_args(argv)
    r = tune(args.seconds, verbose=True, store=not args.dry_run)
    print(f"{_tuning.cpu_model()}, {r['isa']} path, {r['threads']} threads, "
          f"{r['rounds']} rounds: float32 kc={r['float32'][0]} mc={r['float32'][1]} "
          f"nc={r['float32'][2]} ahead={r['float32'][3]}, {r['speedup']:.3f}x the derived "
          f"defaults on "
          f"{', '.join('x'.join(map(str, s)) for s in SHAPES)}")
    print(f"stored in {r['file']}" if r["file"] else "not stored (--dry-run)")
    return 0


class _CallableModule(types.ModuleType):
    """fastlinear.tune is this module and, called, its tune(): `fl.tune()` and
    `python -m fastlinear.tune` both work."""

    def __call__(self, *args, **kwargs):
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
