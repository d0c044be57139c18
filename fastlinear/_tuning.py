"""Block sizes for this machine: derived from its caches, or found by fastlinear.tune and
stored per CPU model, ISA path and thread count in the user's cache folder. Applied
before the first forward (fastlinear._config): the derived sizes for calls of any thread
count, each stored count's own for calls of that many threads, however the count was
set (fastlinear, OpenMP, threadpoolctl, torch), as the C driver picks them per call. The
order of each sum is fixed by k alone, so block sizes change the speed, never the bits.

Stored results: $XDG_CACHE_HOME/fastlinear/tuning.json (default ~/.cache/fastlinear),
{"version": 1, "entries": {key: {"float32": [kc, mc, nc, ahead], "float64": [...]}}}
with key "<cpu model>|<isa>|<threads>|<fastlinear version>"; ahead (how far ahead tiles
of several rows prefetch weights that come from cache, bytes) may be left out: 0.
FASTLINEAR_TUNING=off ignores the file; a file that cannot be read or holds unusable
values is ignored with a warning."""
from __future__ import annotations

import functools
import json
import os
import platform
import warnings

from . import _core
from ._version import __version__

FILE_VERSION = 1
VALUE_TYPES = ("float32", "float64")
# The caches the compiled block sizes were measured on (2-core AMD EPYC Zen 4/5 guests:
# L1d 32 KiB, L2 1 MiB per core, L3 32 MiB), and the cache level each ISA's k block is
# sized for (kernels/<isa>.c: AVX2 keeps its KC x NR weight slice in L1, AVX-512 and the
# portable kernel stream theirs from L2).
REFERENCE_CACHES = {1: 32 << 10, 2: 1 << 20, 3: 32 << 20}
KC_LEVEL = {"ref": 2, "avx2": 1, "avx512": 2, "avx512_vnni": 2}

# What apply() set, per (isa, value type): the derived sizes, for any thread count (kc,
# mc, nc, ahead); and per (isa, value type, threads), the tuned ones.
Blocks = tuple[int, int, int, int]
derived_in_force: dict[tuple[str, str], Blocks] = {}
tuned: dict[tuple[str, str, int], Blocks] = {}


@functools.lru_cache(maxsize=1)
def cache_sizes() -> dict[int, int]:
    """Data cache sizes by level, bytes, from Linux's sysfs (per core for L1/L2, the
    whole L3); {} where they cannot be read. Read once: apply() runs on every change of
    thread count (fl.threads blocks too)."""
    sizes: dict[int, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = os.listdir(base)
    except OSError:
        return sizes
    for name in names:
        if not name.startswith("index"):
            continue
        try:
            with open(os.path.join(base, name, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, name, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, name, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        except (ValueError, IndexError):
            continue
        sizes[level] = size
    return sizes


def _round(value: float, step: int, low: int, high: int) -> int:
    """value rounded down to a multiple of step, within [low, high] (multiples too)."""
    return int(min(max(int(value) // step * step, low), high))


def derived(isa: str, dtype: str, caches: dict[int, int] | None = None) -> tuple[int, int, int]:
    """The ISA's compiled block sizes scaled by this machine's caches against the ones
    they were measured on: KC by the level its weight slice lives in, MC by L2, NC by
    L3; each within half and twice the compiled value, rounded to what the kernel takes
    (kc a multiple of the summation block, mc of the tile's rows, nc of its columns)."""
    caches = cache_sizes() if caches is None else caches
    b = _compiled(isa, dtype)
    s = _core.SUM_BLOCK

    def scaled(value: int, level: int, step: int) -> int:
        ratio = caches.get(level, REFERENCE_CACHES[level]) / REFERENCE_CACHES[level]
        low = max(step, (value // 2) // step * step)
        return _round(value * ratio, step, low, 2 * value)

    return (scaled(b["kc"], KC_LEVEL.get(isa, 2), s), scaled(b["mc"], 2, b["mr"]),
            scaled(b["nc"], 3, b["nr"]))


def _compiled(isa: str, dtype: str) -> dict:
    """The ISA's own block sizes, as kernels/<isa>.c sets them."""
    return _core.default_blocking(isa, dtype)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def key(isa: str, threads: int) -> str:
    return f"{cpu_model()}|{isa}|{threads}|{__version__}"


def path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "fastlinear", "tuning.json")


def enabled() -> bool:
    return os.environ.get("FASTLINEAR_TUNING", "").lower() not in ("off", "0", "false", "no")


_read_cache: tuple[tuple, dict] | None = None


def read() -> dict:
    """The stored entries, {} for none; a file that cannot be used is ignored with a
    warning (never trusted). Read again only when the file changes."""
    global _read_cache
    file = path()
    try:
        stamp = (file, os.stat(file).st_mtime_ns)
    except OSError:
        return {}
    if _read_cache is not None and _read_cache[0] == stamp:
        return _read_cache[1]
    entries = _read(file)
    _read_cache = (stamp, entries)
    return entries


def _read(file: str) -> dict:
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise ValueError(f"version {data.get('version') if isinstance(data, dict) else None!r}, "
                             f"expected {FILE_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ValueError("no entries")
        return entries
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        warnings.warn(f"fastlinear: ignoring the stored tuning {file}: {exc}", RuntimeWarning,
                      stacklevel=3)
        return {}


def write(entries: dict) -> str:
    file = path()
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": FILE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
    os.replace(tmp, file)  # whole, never half written
    return file


def _entry_threads(entry_key: str, isa: str) -> int | None:
    """The thread count of a stored key of this CPU, ISA and version; None otherwise."""
    model, _, rest = entry_key.rpartition(f"|{isa}|")
    count, _, version = rest.partition("|")
    if model != cpu_model() or version != __version__ or not count.isdigit():
        return None
    return int(count) or None


def apply() -> None:
    """Sets every ISA's block sizes: those derived from the caches for calls of any
    thread count, and, where tuning is on, the stored ones of this CPU for calls of the
    thread count each was tuned for."""
    entries = read() if enabled() else {}
    if 3 in cache_sizes():  # which weights the kernels prefetch (fastlinear.h)
        _core.set_cache_bytes(cache_sizes()[3])
    for (isa, dtype, threads) in list(tuned):
        _core.set_blocking(isa, dtype, 0, 0, 0, threads=threads)
        del tuned[isa, dtype, threads]
    for isa in _core.supported_isas():
        for dtype in VALUE_TYPES:
            blocks = derived(isa, dtype) + (0,)
            _core.set_blocking(isa, dtype, *blocks)
            derived_in_force[isa, dtype] = blocks
        for entry_key, stored in entries.items():
            count = _entry_threads(entry_key, isa)
            if count is None:
                continue
            for dtype in VALUE_TYPES:
                try:
                    values = [int(v) for v in stored[dtype]]
                    if len(values) not in (3, 4):
                        raise ValueError(f"{values}: expected [kc, mc, nc, ahead]")
                    kc, mc, nc, ahead = (values + [0])[:4]
                    _core.set_blocking(isa, dtype, kc, mc, nc, ahead, threads=count)
                    tuned[isa, dtype, count] = (kc, mc, nc, ahead)
                except (KeyError, TypeError, ValueError) as exc:
                    warnings.warn(f"fastlinear: ignoring the stored tuning of {isa} "
                                  f"{dtype} for {count} threads in {path()}: {exc}",
                                  RuntimeWarning, stacklevel=2)


def describe(threads: int) -> dict:
    """{"avx512 float32": "kc=512 mc=144 nc=8192 (derived from the caches)", ...}: the
    sizes calls of `threads` threads use (and their prefetch distance where not 0)."""
    out = {}
    for (isa, dtype), b in sorted(derived_in_force.items()):
        source = "derived from the caches"
        if (isa, dtype, threads) in tuned:
            b, source = tuned[isa, dtype, threads], f"tuned for {threads} threads: {path()}"
        ahead = f" ahead={b[3]}" if b[3] else ""
        out[f"{isa} {dtype}"] = f"kc={b[0]} mc={b[1]} nc={b[2]}{ahead} ({source})"
    return out
