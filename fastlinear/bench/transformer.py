"""The benchmark's transformer table (`python -m fastlinear.bench --transformer`).

A torch.nn.TransformerEncoder, d_model 768, 12 heads, feed-forward 3072 (ReLU), 2
layers, batch_first, its weights torch's initialisation from seed 0, runs on float32
tokens N(0, 1) shaped batch x sequence (1 x 1, 1 x 128, 8 x 128) as:

    torch          the model, eager, under inference_mode: its fused path
                   (torch._transformer_encoder_layer_fwd) as torch chooses
    torch int8     torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8): the
                   feed-forward layers' weights int8 (per tensor), their inputs quantized
                   per call; the attention's projections stay float32 (torch quantizes
                   neither in_proj, not a Linear, nor out_proj). Run with torch's fused
                   path off: it reads linear1.weight, which a quantized Linear has as a
                   method, and fails
    onnxruntime    the model exported to ONNX (torch.onnx.export, one file per token
                   shape), ONNX Runtime, all graph optimizations, the thread count
    onnxruntime int8
                   that file through ONNX Runtime's quantize_dynamic (int8 weights per
                   channel, uint8 inputs), the feed-forward MatMuls only, as torch's
    fastlinear     fastlinear.torch.replace_linear(model): every Linear (and each
                   attention's in- and out-projection) run by fastlinear, float32
                   weights; torch runs the rest (attention, LayerNorm, ReLU, sums)
    fastlinear bfloat16, fastlinear int4
                   the same with every layer's weights bfloat16, int4 (groups of 32)
    fastlinear int8
                   the feed-forward layers int8 (the layers torch int8 quantizes; with
                   int8 activations where fastlinear has them), the rest float32

interleaved, round after round, best time per call (harness.best_times). The error of
each is max|y - y64| / max|y64|, y64 the same model in float64 (torch, float64 weights
equal to the float32 ones), so a quantized model's error includes its quantization's.
/torch is the time over torch eager's (float32); /like the time over the fastest rival
storing weights alike (float32: torch, onnxruntime; int8: torch int8, onnxruntime int8).
"""
import contextlib
import copy
import inspect
import os
import tempfile

import numpy as np

import fastlinear as fl

from .compressed import _note, _quiet
from .harness import Progress, best_times, micro, ort_session, rel_error

SIZE = (768, 12, 3072, 2)  # d_model, heads, feed-forward, layers
TOKENS = ((1, 1), (1, 128), (8, 128))  # batch x sequence
FEED_FORWARD = ("*.linear1", "*.linear2")  # the layers torch's quantize_dynamic quantizes
# fastlinear's contenders: replace_linear's arguments (int8: then the rest in float32)
OURS = {"fastlinear": {}, "fastlinear bfloat16": {"weight_dtype": "bfloat16"},
        "fastlinear int4": {"weight_dtype": "int4", "group_size": 32},
        "fastlinear int8": {"weight_dtype": "int8", "include": FEED_FORWARD}}
RIVALS = ("torch", "torch int8", "onnxruntime", "onnxruntime int8")
# the rivals storing weights alike, for /like
LIKE = {"fastlinear": ("torch", "onnxruntime"),
        "fastlinear int8": ("torch int8", "onnxruntime int8")}


def parse_size(text):
    """(d_model, heads, feed_forward, layers) from "D,HEADS,FF,LAYERS"."""
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 4 or min(size) < 1 or size[0] % size[1]:
        raise SystemExit(f"--transformer {text!r}: expected D,HEADS,FF,LAYERS with D a "
                         f"multiple of HEADS, e.g. 768,12,3072,2")
    return size


def parse_tokens(text):
    """[(batch, sequence)] from comma-separated BxL."""
    tokens = []
    for item in text.split(","):
        try:
            b, length = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad tokens {item!r}: expected BATCHxLENGTH, e.g. 8x128")
        tokens.append((b, length))
    return tokens


def int8_activations():
    """Whether fastlinear's layers take activations="int8" (integer activations)."""
    return "activations" in inspect.signature(fl.Linear.from_torch).parameters


def torch_model(size):
    import torch
    d, heads, ff, layers = size
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def fastlinear_models(model):
    """name -> the model with its Linear layers replaced, per OURS."""
    ours = {}
    for name, kwargs in OURS.items():
        kwargs = dict(kwargs)
        if name == "fastlinear int8" and int8_activations():
            kwargs["activations"] = "int8"
        replaced = fl.torch.replace_linear(model, **kwargs)
        if "include" in kwargs:  # the layers left out: float32, by fastlinear too
            replaced = fl.torch.replace_linear(replaced, inplace=True)
        ours[name] = replaced
    return ours


def torch_int8(model):
    import torch
    with _quiet():  # torch.ao.quantization warns that it is deprecated
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model),
                                                      {torch.nn.Linear}, dtype=torch.qint8)


@contextlib.contextmanager
def _fused_path_off():
    import torch
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def onnx_sessions(model, x, threads, folder):
    """{"onnxruntime": run, "onnxruntime int8": run} on the model exported for x's
    shape, or {} without onnx and onnxruntime."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        _note(f"{exc.name} is not installed: the ONNX Runtime lines are left out")
        return {}
    import torch
    path = os.path.join(folder, f"transformer_{'x'.join(map(str, x.shape))}.onnx")
    with _quiet():
        torch.onnx.export(model, (torch.from_numpy(x),), path, input_names=["x"],
                          output_names=["y"], dynamo=False)
        nodes = [n.name for n in onnx.load(path).graph.node
                 if n.op_type in ("MatMul", "Gemm")
                 and any(f"/{p[2:]}/" in n.name for p in FEED_FORWARD)]
        quantize_dynamic(path, path + ".int8", per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    runs = {}
    for name, file in (("onnxruntime", path), ("onnxruntime int8", path + ".int8")):
        session = ort_session(file, threads)
        runs[name] = lambda s=session: s.run(None, {"x": x})[0]
    return runs


def measure(models, x, threads, rounds, budget, settle, folder):
    """One token shape: time and error per contender, and the ratios."""
    import torch
    tx = torch.from_numpy(x)

    def torch_run(model, fused=True):
        def run():
            with torch.inference_mode(), (contextlib.nullcontext() if fused
                                          else _fused_path_off()):
                return model(tx)
        return run
    runs = {name: torch_run(model) for name, model in models["ours"].items()}
    runs["torch"] = torch_run(models["torch"])
    runs["torch int8"] = torch_run(models["torch int8"], fused=False)
    runs.update(onnx_sessions(models["torch"], x, threads, folder))
    with torch.inference_mode():
        y64 = models["float64"](tx.double()).numpy()
    errors = {name: rel_error(np.asarray(run()), y64) for name, run in runs.items()}
    best = best_times(runs, rounds, budget, settle)
    row = {"tokens": list(x.shape[:2]), "us": {name: t * 1e6 for name, t in best.items()},
           "error": errors, "ratio_torch": {name: t / best["torch"] for name, t in best.items()},
           "ratio_like": {}}
    for name, like in LIKE.items():
        present = [r for r in like if r in best]
        if name in best and present:
            rival = min(present, key=best.get)
            row["ratio_like"][name] = {"rival": rival, "ratio": best[name] / best[rival]}
    return row


COLUMNS = (("contender", 19), ("time", 10), ("/torch", 7), ("/like", 6), ("error", 8))


def format_row(row, order):
    lines = []
    for i, name in enumerate(n for n in order if n in row["us"]):
        like = row["ratio_like"].get(name)
        cells = (name, f"{row['us'][name]:.0f}" if row["us"][name] >= 100
                 else f"{row['us'][name]:.1f}",
                 f"{row['ratio_torch'][name]:.2f}",
                 "-" if like is None else f"{like['ratio']:.2f}",
                 f"{row['error'][name]:.1e}")
        lead = f"{'x'.join(map(str, row['tokens'])):>8}" if i == 0 else " " * 8
        lines.append(f"{lead}  " + " ".join(
            f"{c:<{w}}" if j == 0 else f"{c:>{w}}" for j, (c, (_, w)) in enumerate(
                zip(cells, COLUMNS))))
    return "\n".join(lines)


def head(size, rounds):
    d, heads, ff, layers = size
    int8 = "int8 weights and int8 activations" if int8_activations() else "int8 weights"
    return [f"Times in {micro()}s per call, each contender's best of {rounds} interleaved "
            "rounds; a line per contender.",
            f"  model              torch.nn.TransformerEncoder: d_model {d}, {heads} heads, "
            f"feed-forward {ff},",
            f"                     {layers} layers; tokens: batch x sequence",
            "  torch              eager, inference_mode, its fused path; torch int8: "
            "quantize_dynamic",
            "                     (feed-forward layers int8, attention float32)",
            "  onnxruntime        the model exported to ONNX; int8: quantize_dynamic, "
            "feed-forward layers",
            "  fastlinear         fl.torch.replace_linear(model): every Linear and "
            "projection by",
            "                     fastlinear, the rest torch's; bfloat16, int4: every "
            "layer in that",
            f"                     format; int8: the feed-forward layers with {int8}",
            "  /torch, /like      the time / torch eager's; / the fastest rival storing "
            "weights alike",
            "  error              max|y - y64| / max|y64|, y64: the model in float64",
            f"{'tokens':>8}  " + " ".join(
                (f"{t:<{w}}" if j == 0 else f"{t:>{w}}")
                for j, (t, w) in enumerate((t if t != "time" else f"time ({micro()}s)", w)
                                           for t, w in COLUMNS))]


def run_transformer(size, tokens, threads, rounds, budget, settle):
    """The table; returns its rows."""
    try:
        import torch
    except ImportError:
        raise SystemExit("--transformer needs torch: pip install torch") from None
    for line in head(size, rounds):
        print(line)
    model = torch_model(size)
    models = {"torch": model, "torch int8": torch_int8(model),
              "float64": copy.deepcopy(model).double(), "ours": fastlinear_models(model)}
    order = (*OURS, *RIVALS)
    progress = Progress(len(tokens), "tokens")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for b, length in tokens:
            progress.show(f"{b}x{length}")
            x = rng.standard_normal((b, length, size[0])).astype(np.float32)
            row = measure(models, x, threads, rounds, budget, settle, folder)
            rows.append(row)
            progress.write(format_row(row, order))
    progress.close()
    return rows
