"""Two or more builds of fastlinear timed against each other on the benchmark's shapes,
interleaved in rounds (these hosts' speed moves from minute to minute), best of each.

    python tests/tools/speed.py BUILD_DIR [BUILD_DIR ...] [--rounds 5] [--isa avx2]

Each BUILD_DIR is a source tree built in place (python setup.py build_ext --inplace); the
table gives microseconds per call and each build's time over the first's."""
import argparse
import json
import os
import subprocess
import sys

SHAPES = ("1x100x50,140x100x50,1x768x3072,1x4096x4096,8x4096x4096,32x768x3072,"
          "128x768x3072,512x1024x1024,2048x2048x2048")

ONE_ROUND = r"""
import json, sys, time
import numpy as np
import fastlinear as fl
out = {}
for shape in sys.argv[1].split(","):
    m, k, n = map(int, shape.split("x"))
    for wd in sys.argv[2].split(","):
        layer = fl.Linear(k, n, rng=0, backend="native")
        if wd != "float32":
            layer = layer.quantize(wd)
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        layer(x)
        calls = max(1, int(2e8 / (m * k * n + 1e5)))
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(calls):
                layer(x)
            best = min(best, (time.perf_counter() - t) / calls)
        out[f"{shape} {wd}"] = best * 1e6
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--formats", default="float32")
    ap.add_argument("--isa", help="FASTLINEAR_ISA for every build")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.isa:
        env["FASTLINEAR_ISA"] = args.isa
    best = [dict() for _ in args.builds]
    for r in range(args.rounds):
        for i, build in enumerate(args.builds):
            run = subprocess.run([sys.executable, "-c", ONE_ROUND, args.shapes, args.formats],
                                 cwd=build, env={**env, "PYTHONPATH": build},
                                 capture_output=True, text=True, check=True)
            for key, us in json.loads(run.stdout).items():
                best[i][key] = min(best[i].get(key, float("inf")), us)
        print(f"round {r + 1} of {args.rounds}", file=sys.stderr)
    print(f"{'shape':28s}" + "".join(f"{os.path.basename(b.rstrip('/'))[:12]:>14s}" for b in args.builds))
    for key in best[0]:
        base = best[0][key]
        cells = [f"{base:14.1f}"] + [f"{b[key]:8.1f} {b[key] / base:5.3f}" for b in best[1:]]
        print(f"{key:28s}" + "".join(cells))


if __name__ == "__main__":
    main()
