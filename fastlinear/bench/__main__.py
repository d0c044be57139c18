"""fastlinear against numpy, PyTorch, ONNX Runtime and OpenVINO, in one process, at one
thread count.

Each contender computes y = x @ W.T + b for the same arrays: fastlinear's Linear (default
backend) returning a new array and writing into `out=`, numpy's `x @ W.T + b`, torch's
`F.linear`, ONNX Runtime running one Gemm node (transB=1, the bias as C) with
`intra_op_num_threads` set to the same thread count, and OpenVINO running the same ONNX
model compiled for the CPU with f32 precision, that thread count, the latency hint and
one stream (float32 only: it computes float64 in float32). The contenders run
interleaved, round after round, and each keeps its best time per call, so a noisy
neighbour slows every contender alike rather than one of them. Before each contender's
turn the process sleeps for --settle seconds: the thread pools of the others (OpenBLAS,
OpenMP) spin for a while after their last call and would otherwise steal the cores.
Ratios are fastlinear's time / the best rival's time (the fastest of numpy, torch,
ONNX Runtime and OpenVINO at that shape): below 1 means fastlinear is faster. A rival
whose package is not installed is left out.

    python -m fastlinear.bench                       # the default shape table, 2 threads
    python -m fastlinear.bench --threads 1 --dtype float64 --shapes 1x4096x4096,64x512x512
    python -m fastlinear.bench --json results.json --plot results.png --wide
    python benchmarks/bench.py ...                   # the same, from the repository root
    python -m fastlinear.bench --weight-dtype int8   # compressed weights (or all of them)
    python -m fastlinear.bench --weight-dtype int8 --activations int8   # integer products
    python -m fastlinear.bench --mlp [model.onnx]    # whole models (fastlinear/bench/mlp.py)
    python -m fastlinear.bench --transformer         # a torch transformer, its Linear layers
                                                     # replaced (fastlinear/bench/transformer.py)

--weight-dtype bfloat16, float16, int8, int4 or all prints, instead of this table, one
table per format: fastlinear with float32 weights and with weights in that format against
the rivals that compress weights alike (torch bfloat16 and dynamic int8, ONNX Runtime
dynamic int8 and MatMulNBits int4), with each one's error against the float64 product of
the unquantized weights. fastlinear/bench/compressed.py says how each is built. With
--activations int8 (int8 and int4 weights) fastlinear's layer quantizes x per row and
multiplies integers, as those rivals do.

Each shape is also set against this machine's limits for the ISA path that runs
(fastlinear.bench.limits), probed around the shape's rounds: the time its arithmetic
takes at the FMA peak, and the time the weights take to be read once the way the kernel
reads them (its order, vector width and prefetch). The larger of the two is the shape's
bound; "limit" is that bound's share of fastlinear's time (100% = at the machine's
limit). --wide adds the BLAS backend, every ratio and the weights' GB/s. The legend above
each table says what every column is; times are in microseconds.

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this command if your environment sets
them: they pin numpy's OpenBLAS to slower kernels.
"""
import argparse
import json

import numpy as np

# The formats and int4's group sizes are the library's.
from fastlinear._formats import COMPRESSED, DEFAULT_GROUP, FORMAT, GROUP_SIZES

from . import compressed, linear, mlp, transformer
from .harness import describe, parse_shapes, run_meta, set_threads


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastlinear.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for every library (fastlinear, numpy's OpenBLAS, "
                             "torch, ONNX Runtime, OpenVINO)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="the float table's type of x, W, b and y (every contender "
                             "computes in it)")
    parser.add_argument("--weight-dtype", default="float32",
                        choices=["float32", *COMPRESSED, "all"],
                        help="float32: the float32 table; bfloat16, float16, int8, int4 "
                             "(all: each of them): a table per format, fastlinear against "
                             "rivals that compress weights alike, with each one's error")
    parser.add_argument("--activations", choices=["float32", "int8"], default="float32",
                        help="with --weight-dtype int8 or int4 (all: those two): int8 "
                             "measures fastlinear's layer with activations='int8' (each "
                             "row of x quantized, integer sums) instead of the weight-only "
                             "one")
    parser.add_argument("--group-size", type=int, choices=GROUP_SIZES,
                        default=argparse.SUPPRESS,
                        help="int4 weights: inputs per scale (default: "
                             f"{DEFAULT_GROUP}; ONNX Runtime's block too)")
    parser.add_argument("--shapes", default=argparse.SUPPRESS,
                        help=f"comma-separated MxKxN (default: {linear.DEFAULT_SHAPES}; with a "
                             f"compressed --weight-dtype: {compressed.DEFAULT_SHAPES})")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per shape")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="seconds per contender per round")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="seconds of sleep before each contender's turn")
    parser.add_argument("--wide", action="store_true",
                        help="more columns: the BLAS backend, the weights' GB/s, the ratio "
                             "to each rival")
    parser.add_argument("--mlp", nargs="*", metavar="FILE.onnx", default=None,
                        help="instead of the tables: a 784-512-512-256-10 MLP (and each "
                             ".onnx file given) at batch 1, 8, 64, 1024 against torch eager, "
                             "ONNX Runtime and OpenVINO, the MLP also with bfloat16 and int8 "
                             "weights, each against the machine's bound for its own bytes "
                             "(fastlinear/bench/mlp.py)")
    parser.add_argument("--transformer", nargs="?", metavar="D,HEADS,FF,LAYERS",
                        const=",".join(map(str, transformer.SIZE)), default=None,
                        help="instead of the tables: a torch.nn.TransformerEncoder of that "
                             "size with its Linear layers replaced by fastlinear's "
                             "(fastlinear.torch.replace_linear; float32, bfloat16, int8, "
                             "int4), against torch eager, torch quantize_dynamic and ONNX "
                             "Runtime (float32 and int8), with each one's error "
                             f"(fastlinear/bench/transformer.py); default size "
                             f"{','.join(map(str, transformer.SIZE))}")
    parser.add_argument("--tokens", default=",".join(f"{b}x{n}" for b, n in transformer.TOKENS),
                        metavar="BxL,...", help="--transformer: batch x sequence lengths")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="after the table, a sweep of M = "
                             f"{linear.SWEEP_M[0]} .. {linear.SWEEP_M[-1]} at --plot-kn "
                             f"({len(linear.SWEEP_M)} more shapes, each measured like a row "
                             "of the table), saved as a PNG of GFLOP/s against M")
    parser.add_argument("--plot-kn", default="768x3072", metavar="KxN",
                        help="K x N of the --plot sweep")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.activations != "float32" and (args.mlp is not None
                                           or args.transformer is not None):
        parser.error("--activations int8 is for the compressed tables (--weight-dtype)")
    if args.mlp is not None:
        return main_mlp(args)
    if args.transformer is not None:
        return main_transformer(args)
    if args.weight_dtype != "float32":
        return main_compressed(parser, args)
    if args.activations != "float32":
        parser.error("--activations int8 needs --weight-dtype int8, int4 or all")
    if hasattr(args, "group_size"):
        parser.error("--group-size is for --weight-dtype int4")

    dtype = np.dtype(args.dtype)
    shapes = parse_shapes(getattr(args, "shapes", linear.DEFAULT_SHAPES))
    sweep_kn = None
    if args.plot:
        try:
            sweep_kn = tuple(int(v) for v in args.plot_kn.lower().split("x"))
        except ValueError:
            sweep_kn = ()
        if len(sweep_kn) != 2:
            parser.error(f"--plot-kn {args.plot_kn!r}: expected KxN, e.g. 768x3072")
    limits_set = set_threads(args.threads)
    machine = describe(dtype, args.threads)
    results, sweep = linear.run_table(shapes, sweep_kn, args.plot, dtype, args.threads,
                                      args.rounds, args.budget, args.settle, args.wide)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": run_meta(args, limits_set, machine), "results": results,
                       "sweep": sweep}, f, indent=1)
    return results


def main_mlp(args):
    """--mlp: the whole-model table (mlp.py); returns its rows."""
    limits_set = set_threads(args.threads)
    machine = describe(np.dtype(np.float32), args.threads)
    rows = mlp.run_mlp(args.mlp, args.threads, args.rounds, args.budget, args.settle)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": run_meta(args, limits_set, machine), "mlp": rows}, f,
                      indent=1)
    return rows


def main_transformer(args):
    """--transformer: the transformer table (transformer.py); returns its rows."""
    size = transformer.parse_size(args.transformer)
    tokens = transformer.parse_tokens(args.tokens)
    limits_set = set_threads(args.threads)
    machine = describe(np.dtype(np.float32), args.threads)
    rows = transformer.run_transformer(size, tokens, args.threads, args.rounds, args.budget,
                                       args.settle)
    if args.json:
        meta = run_meta(args, limits_set, machine)
        meta["transformer"] = list(size)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "transformer": rows}, f, indent=1)
    return rows


def main_compressed(parser, args):
    """--weight-dtype other than float32: a table per format (compressed.py); returns
    {format: rows}."""
    if args.dtype != "float32":
        parser.error("compressed weights run with float32 inputs: drop --dtype float64")
    if args.plot:
        parser.error("--plot sweeps the float32 table: drop --weight-dtype")
    formats = COMPRESSED if args.weight_dtype == "all" else (args.weight_dtype,)
    if args.activations == "int8":
        integer = tuple(f for f in formats if FORMAT[f].int8_code is not None)
        if not integer:
            parser.error(f"--activations int8 runs with int8 or int4 weights, not "
                         f"{args.weight_dtype}")
        formats = integer
    group_size = getattr(args, "group_size", None)
    if group_size is not None and "int4" not in formats:
        parser.error("--group-size is for --weight-dtype int4")
    group_size = group_size or DEFAULT_GROUP
    limits_set = set_threads(args.threads)
    machine = describe(np.dtype(np.float32), args.threads)
    shapes = parse_shapes(getattr(args, "shapes", compressed.DEFAULT_SHAPES))
    results = compressed.run_tables(formats, shapes, group_size, args.threads, args.rounds,
                                    args.budget, args.settle, args.activations)
    if args.json:
        meta = run_meta(args, limits_set, machine)
        meta["group_size"] = group_size
        meta["activations"] = args.activations
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "compressed": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
