"""A digest of a fixed grid of outputs, to show that a change keeps the bits.

    python tests/tools/digest.py            # one SHA-256 per ISA path, as JSON
    python tests/tools/digest.py --check F  # compare with digests saved in F (exit 1 if any differs)

The grid: every ISA path this CPU runs x every weight format x each epilogue (none, each
activation, a BatchNorm1d after the Linear) and row step (LayerNorm, Softmax, LogSoftmax,
a BatchNorm1d of its own) x M in {1, 2, 3, 5, 6, 7, 13, 130} x 1-3 threads x K in
{1000, 1100} (crossing a k block). Every output of a path goes into its digest, in a fixed
order; inputs and weights come from fixed seeds. Every layer runs the native kernel
(backend "native": "auto" would run BLAS on the portable path). The same grid of int8
and int4 weights with int8 activations gives one digest per path too ("<isa> int8x"):
integer sums and a fixed float sequence, so the same digest on every path.

digest-before-issue16.json: the tree before the kernels were written once per ISA (the
same digests after that, the bias's move and the Python house: commit 610e0e7);
digest-summation-blocks.json: after the summation blocks changed the bits on purpose;
digest-int8-activations.json: with integer activations (the float digests as before, the
"int8x" digest the same on all four paths, ref included; retaken after int4's groups of
x got their own scales)."""
import argparse
import hashlib
import json
import sys
import warnings

import numpy as np

import fastlinear as fl
from fastlinear import _core

FORMATS = [("float32", None), ("float64", None), ("bfloat16", None), ("float16", None),
           ("int8", None), ("int4", 32), ("int4", 128)]
INTEGER = [("int8", None), ("int4", 32), ("int4", 128)]  # with int8 activations
ROWS = (1, 2, 3, 5, 6, 7, 13, 130)
KS = (1000, 1100)
N = 70  # one full panel and an edge on every ISA


def _tails(dtype):
    """(name, modules after the Linear): each epilogue and each row step."""
    def bn():
        m = fl.BatchNorm1d(N, dtype=dtype)
        rng = np.random.default_rng(7)
        sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
        sd["weight"] = rng.uniform(0.5, 1.5, N).astype(sd["weight"].dtype)
        sd["bias"] = rng.normal(size=N).astype(sd["bias"].dtype)
        sd["running_mean"] = rng.normal(size=N).astype(sd["running_mean"].dtype)
        sd["running_var"] = rng.uniform(0.5, 2, N).astype(sd["running_var"].dtype)
        m.load_state_dict(sd)
        return m
    return [("none", []), ("relu", [fl.ReLU()]), ("leaky", [fl.LeakyReLU(0.1)]),
            ("gelu", [fl.GELU()]), ("gelu_tanh", [fl.GELU("tanh")]), ("silu", [fl.SiLU()]),
            ("sigmoid", [fl.Sigmoid()]), ("tanh", [fl.Tanh()]),
            ("bn_relu", [bn(), fl.ReLU()]),
            ("layernorm", [fl.Tanh(), fl.LayerNorm(N)]), ("softmax", [fl.Tanh(), fl.Softmax(-1)]),
            ("logsoftmax", [fl.Tanh(), fl.LogSoftmax(-1)]), ("bn_alone", [fl.Tanh(), bn()])]


def digest_isa(isa, formats=FORMATS, activations=None):
    _core.set_isa(isa)
    h = hashlib.sha256()
    for wd, group in formats:
        dtype = np.float64 if wd == "float64" else np.float32
        for k in KS:
            rng = np.random.default_rng(k)
            layer = fl.Linear(k, N, dtype=dtype, rng=rng, backend="native")
            if wd not in ("float32", "float64"):
                layer = layer.quantize(wd, group, activations=activations)
            x = rng.normal(size=(max(ROWS), k)).astype(dtype)
            for name, tail in _tails(dtype):
                model = fl.Sequential(layer, *tail)
                for threads in (1, 2, 3):
                    fl.set_num_threads(threads)
                    for m in ROWS:
                        y = np.ascontiguousarray(model(x[:m]))
                        h.update(f"{wd}/{group}/{k}/{name}/{threads}/{m}".encode())
                        h.update(y.tobytes())
                        if not tail:  # the plain layer too, outside a model
                            h.update(np.ascontiguousarray(layer(x[:m])).tobytes())
    return h.hexdigest()


def main():
    warnings.simplefilter("ignore", RuntimeWarning)  # 3 threads on a 2-CPU machine
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="FILE", help="JSON of digests to compare with")
    args = ap.parse_args()
    got = {isa: digest_isa(isa) for isa in _core.supported_isas()}
    got.update({f"{isa} int8x": digest_isa(isa, INTEGER, "int8")
                for isa in _core.supported_isas()})
    print(json.dumps(got, indent=1))
    if args.check:
        with open(args.check) as f:
            want = json.load(f)
        bad = [isa for isa in got if isa in want and want[isa] != got[isa]]
        print("same bits on", [i for i in got if i in want and i not in bad],
              "differ on", bad)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
