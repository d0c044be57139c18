"""The benchmark runs end to end on tiny shapes: legend, table, JSON, plot, progress; its
machine probe reads what the kernel reads. (It measures nothing here; timings belong to
the benchmark itself.)"""
import argparse
import importlib.util
import io
import json
import math
import os
import re
import sys
import tempfile
import time

import numpy as np
import pytest

from fastlinear import _core
from fastlinear.bench import compressed, harness, limits, linear
from fastlinear.bench.__main__ import build_parser, main

QUICK = ["--rounds", "1", "--budget", "0.001", "--settle", "0", "--threads", "1"]
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src_c")


def _has_probe():
    return limits._probe(_core.isa_name()) is not None


def test_benchmark_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "results.json"
    png = tmp_path / "sweep.png"
    argv = ["--shapes", "1x16x8,3x20x9", "--rounds", "1", "--budget", "0.001",
            "--settle", "0", "--threads", "1", "--json", str(out)]
    has_plot = True
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", str(png), "--plot-kn", "16x8"]
    except ImportError:
        has_plot = False
    main(argv)
    text = capsys.readouterr().out
    assert "3x20x9" in text and "/best" in text and "out=" in text
    assert f"ISA path {_core.isa_name()}" in text
    assert max(len(line) for line in text.splitlines()) <= 100, text
    data = json.loads(out.read_text())
    assert data["meta"]["isa"] == _core.isa_name()
    assert [(r["m"], r["k"], r["n"]) for r in data["results"]] == [(1, 16, 8), (3, 20, 9)]
    if _has_probe():
        assert data["meta"]["fma_peak_gflops"] > 0
    for row in data["results"]:
        if _has_probe():  # the bound probed between the rounds, kept with the row
            assert row["bound"] in ("FMA", "BW") and row["limit_fraction"] > 0
            assert row["fma_peak_gflops"] > 0 and row["read_us"] > 0
            assert set(row["read_us_by_way"]) == {"kernel", "plain"}
        assert set(row["us"]) >= {"fastlinear", "fastlinear out=", "fastlinear-blas", "numpy"}
        assert all(t > 0 for t in row["us"].values())
        rival = row["best_rival"]
        assert rival in linear.RIVALS and row["us"][rival] == min(
            row["us"][name] for name in linear.RIVALS if name in row["us"])
        assert row["ratio_best"] == pytest.approx(row["us"]["fastlinear"] / row["us"][rival])
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            assert "onnxruntime" in row["us"]  # it ran and agreed with the reference
    if has_plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data["sweep"]) == len(linear.SWEEP_M)
        assert f"{len(linear.SWEEP_M)} more shapes" in text  # --plot says what it adds


def test_bad_shape_is_refused():
    with pytest.raises(SystemExit, match="bad shape"):
        harness.parse_shapes("1x2")


def _header(text):
    return next(line for line in text.splitlines() if "M x K x N" in line)


def test_wide_table_has_every_ratio(capsys):
    main(["--shapes", "2x8x4", *QUICK, "--wide"])
    text = capsys.readouterr().out
    header = _header(text)
    assert "blas" in header and "/numpy" in header and "GB/s" in header
    legend = text[:text.index(header)]
    assert "blas" in legend and "GB/s" in legend and "/numpy" in legend


def test_legend_and_header_come_before_the_first_measurement(capsys, monkeypatch):
    """What the first measurement finds already printed: the machine, the units, a legend
    entry for every column, what a share of a bound means, and the header."""
    printed = []
    measure = linear.measure

    def spy(*args, **kwargs):
        printed.append(capsys.readouterr().out)
        return measure(*args, **kwargs)
    monkeypatch.setattr(linear, "measure", spy)
    main(["--shapes", "2x8x4", *QUICK])
    before = printed[0]
    assert before.startswith("fastlinear ") and f"ISA path {_core.isa_name()}" in before
    assert f"Times in {harness.micro()}s per call" in before
    assert f"time ({harness.micro()}s)" in before
    header = _header(before)
    legend = before[:before.index(header)]
    for _, title, _, _ in linear.COLUMNS[1:]:
        assert re.search(rf"^ +{re.escape(title)} ", legend, re.M), title
    assert "100% = at the bound" in legend and "FMA peak" in legend and "noise" in legend
    assert "2x8x4" not in before


@pytest.mark.skipif(not _has_probe(), reason="no C compiler with OpenMP")
def test_no_share_of_a_bound_far_above_100_percent():
    """A shape bound by reading its weights (8 MiB: in cache, at 0.5 flop per byte) and
    one bound by its arithmetic: the kernel cannot beat the machine's bound by more than
    noise."""
    rows = main(["--shapes", "1x1024x2048,64x256x256", "--rounds", "3", "--budget", "0.005",
                 "--settle", "0.01", "--threads", "1"])
    assert rows[1]["bound"] == "FMA"
    for row in rows:
        assert 0 < row["limit_fraction"] < 1.25, row


@pytest.mark.skipif(not _has_probe(), reason="no C compiler with OpenMP")
def test_probe_reads_the_packed_weights_at_a_sane_speed():
    """The probe reads the bytes the kernel reads (N rounded up to whole panels, K rows
    each), about as fast as numpy copies that many bytes, or faster (a copy writes too),
    and not absurdly faster (no read left out)."""
    probe = limits._probe(limits.current_isa())  # the ISA Weights packs for
    row = probe.row_bytes()
    k, n = 1024, 4096
    weights = limits.Weights(k, n - 3, np.float32, 1)
    assert weights.panels == math.ceil(n * 4 / row)
    assert weights.nbytes == weights.panels * k * row and weights.panel_bytes % 64 == 0
    src = np.ones(weights.nbytes // 4, np.float32)
    dst = np.empty_like(src)
    copy = math.inf
    for _ in range(10):
        start = time.perf_counter()
        np.copyto(dst, src)
        copy = min(copy, time.perf_counter() - start)
    copy_gbs = src.nbytes / copy / 1e9
    for way in ("kernel", "plain"):
        gbs = weights.gbs(way)
        assert 0.5 * copy_gbs < gbs < 50 * copy_gbs, (way, gbs, copy_gbs)


def _enum(path, name):
    with open(path) as f:
        text = f.read()
    return int(re.search(rf"\b{name} = (\d+)", text).group(1))


@pytest.mark.skipif(not os.path.isdir(SRC), reason="the C sources are not here")
def test_probe_reads_as_the_kernels_do():
    """limits.py and limits.c restate how each kernel reads its weights: vectors per k
    row, two panels for one row of x, the prefetch distance. They agree with src_c."""
    with open(os.path.join(SRC, "blocking.h")) as f:
        prefetch = int(re.search(r"#define FL_PREFETCH_BYTES (\d+)", f.read()).group(1))
    probe_c = os.path.join(os.path.dirname(limits.__file__), "limits.c")
    assert _enum(probe_c, "PREFETCH_BYTES") == prefetch
    for isa, flags in limits.ISA_FLAGS.items():
        kernel = os.path.join(SRC, "kernels", f"{isa.removesuffix('_vnni')}.c")  # its base
        assert f"-DROW_VECTORS={_enum(kernel, 'NV')}" in flags, isa
        assert f"-DTWO_PANELS={_enum(kernel, 'TWO_PANELS')}" in flags, isa
    if _has_probe():
        isa = _core.isa_name()
        kernel = os.path.join(SRC, "kernels", f"{isa.removesuffix('_vnni')}.c")  # its base
        assert limits._probe(isa).row_bytes() == _enum(kernel, "NV") * _enum(kernel, "VBYTES")


def test_progress_without_tqdm_prints_plain_lines(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    main(["--shapes", "1x16x8,2x8x4", *QUICK])
    captured = capsys.readouterr()
    assert "[1/2] shape 1x16x8" in captured.err and "[2/2] shape 2x8x4" in captured.err
    assert "2x8x4" in captured.out


def test_progress_off_a_terminal_is_a_line_per_shape_with_the_time_left(capsys):
    pytest.importorskip("tqdm")
    main(["--shapes", "1x16x8,2x8x4", *QUICK])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("[")] == [
        "[1/2] shape 1x16x8", "[2/2] shape 2x8x4"]
    assert all(" left" in line for line in lines if line.startswith("["))


def test_progress_on_a_terminal_is_a_bar_above_the_rows(monkeypatch, capsys):
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    bar = Terminal()
    monkeypatch.setattr(sys, "stderr", bar)
    progress = harness.Progress(2)
    for shape in ("1x2x3", "4x5x6"):
        progress.show(shape)
        progress.write(f"row {shape}")
    progress.close()
    assert capsys.readouterr().out.splitlines() == ["row 1x2x3", "row 4x5x6"]
    assert "shape 4x5x6:" in bar.getvalue() and "1/2 [" in bar.getvalue()


def test_every_flag_has_help():
    parser = build_parser()
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    assert "12 more shapes" in parser.format_help().replace("\n", " ").replace("  ", " ")


def test_plot_legend_covers_no_data():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    names = ("fastlinear", "fastlinear out=", "numpy", "torch", "onnxruntime")
    rows = [{"m": m, "gflops": {name: (i + 1) * 10.0 * math.log2(2 * m)
                                for i, name in enumerate(names)},
             "fma_peak_gflops": 600.0} for m in linear.SWEEP_M]
    fig = linear.sweep_figure(rows, 768, 3072, "float32", 2)
    try:
        fig.canvas.draw()
        (ax,) = fig.axes
        legend = ax.get_legend()
        assert legend is not None
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
    finally:
        plt.close(fig)


def test_probe_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    limits._probe.cache_clear()
    try:
        if limits._probe(_core.isa_name()) is None:
            pytest.skip("no C compiler with OpenMP")
        assert limits.fma_peak("float32", 1) > 0
    finally:
        limits._probe.cache_clear()
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_command_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "usage: python -m fastlinear.bench" in text
    assert "--threads" in text and "(default: 2)" in text
    assert "--dtype" in text and "(default: float32)" in text


def _installed(*modules):
    return all(importlib.util.find_spec(m) for m in modules)


@pytest.mark.parametrize("weight_dtype", ["int8", "int4", "bfloat16"])
def test_compressed_weights_table(weight_dtype, tmp_path, capsys):
    """Each format's table runs fastlinear float32 and every installed rival of the format,
    with finite errors of the size its quantization gives; then fastlinear in the format,
    once fl.Linear takes weight_dtype."""
    out = tmp_path / "results.json"
    main(["--weight-dtype", weight_dtype, "--shapes", "2x64x48", "--rounds", "1",
                "--budget", "0.001", "--settle", "0", "--threads", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100, text
    data = json.loads(out.read_text())
    assert data["meta"]["weight_dtype"] == weight_dtype
    (row,) = data["compressed"][weight_dtype]
    assert (row["m"], row["k"], row["n"]) == (2, 64, 48)
    expected = {"int8": {"torch int8": ("torch",), "onnxruntime int8": ("onnx", "onnxruntime")},
                "int4": {"onnxruntime int4": ("onnx", "onnxruntime", "onnx_ir"),
                         "onnxruntime int4 acc4": ("onnx", "onnxruntime", "onnx_ir")},
                "bfloat16": {"torch bf16": ("torch",)}}[weight_dtype]
    assert set(compressed.rival_names(weight_dtype)) == set(expected)
    rivals = [name for name, modules in expected.items() if _installed(*modules)]
    # the quantization's relative error at K = 64: int4 ~ 1/16, int8 ~ 1/256, bf16 ~ 2^-8
    limit = {"int8": 0.05, "int4": 0.25, "bfloat16": 0.02}[weight_dtype]
    assert row["error"]["fastlinear float32"] < 1e-5
    for name in rivals:
        assert row["us"][name] > 0 and 0 < row["error"][name] < limit, name
    header = text.splitlines()[-2]
    assert "fl f32" in header and "/f32" in header and "/best" in header
    for name in rivals:
        assert compressed.TITLES[name] in header
    if rivals:
        assert row["best_rival"] == min(rivals, key=row["us"].get)
    ours = f"fastlinear {weight_dtype}"
    assert row["us"][ours] > 0 and 0 < row["error"][ours] < limit
    assert row["ratio_float32"] == pytest.approx(row["us"][ours] / row["us"]["fastlinear float32"])
    if rivals:
        assert row["ratio_best"] == pytest.approx(row["us"][ours] / row["us"][row["best_rival"]])


@pytest.mark.parametrize("weight_dtype", ["int8", "int4"])
def test_integer_activations_table(weight_dtype, tmp_path, capsys):
    """--activations int8: fastlinear's integer layer in the format's column, beside the
    same rivals, its error of the size the rounding of x and w gives."""
    out = tmp_path / "results.json"
    main(["--weight-dtype", weight_dtype, "--activations", "int8", "--shapes", "2x64x48",
          "--rounds", "1", "--budget", "0.001", "--settle", "0", "--threads", "1",
          "--json", str(out)])
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100, text
    data = json.loads(out.read_text())
    assert data["meta"]["activations"] == "int8"
    (row,) = data["compressed"][weight_dtype]
    ours = compressed.ours(weight_dtype, "int8")
    assert ours == f"fastlinear {weight_dtype} x int8" and row["activations"] == "int8"
    assert f"fastlinear {weight_dtype}" not in row["us"]  # the weight-only one left out
    limit = {"int8": 0.05, "int4": 0.25}[weight_dtype]
    assert row["us"][ours] > 0 and 0 < row["error"][ours] < limit
    header = text.splitlines()[-2]
    assert compressed.TITLES[ours] in header
    assert "weights x int8 activations" in text and "each row of x quantized to int8" in text
    rivals = [name for name in compressed.rival_names(weight_dtype) if name in row["us"]]
    if rivals:
        assert row["ratio_best"] == pytest.approx(row["us"][ours] / row["us"][row["best_rival"]])
    if _has_probe():  # its share of the bound: a time at the int8 peak or of a read
        kind, share = row["limit"]
        assert kind in ("dot", "BW") and share > 0 and "limit" in header


def test_compressed_options_are_checked():
    with pytest.raises(SystemExit):
        main(["--weight-dtype", "int8", "--group-size", "64"])
    with pytest.raises(SystemExit):
        main(["--weight-dtype", "int4", "--dtype", "float64"])
    for argv in (["--activations", "int8"], ["--weight-dtype", "bfloat16", "--activations",
                                             "int8"], ["--mlp", "--activations", "int8"],
                 ["--weight-dtype", "int8", "--activations", "int4"]):
        with pytest.raises(SystemExit):
            main(argv)


# -- OpenVINO as a rival; the MLP table with fastlinear's quantized models ---------------

def test_openvino_runs_the_gemm_as_configured():
    """Compiled for the CPU with f32 precision, the benchmark's threads, the latency hint
    and one stream; its output is the product, within float32 rounding."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((9, 20)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    run = harness.openvino_runner(linear.gemm_model(w, b), 2)
    props = {name: str(run.compiled.get_property(name)) for name in (
        "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT",
        "NUM_STREAMS")}
    assert props["INFERENCE_PRECISION_HINT"] in ("<Type: 'float32'>", "f32", "float32"), props
    assert props["INFERENCE_NUM_THREADS"] == "2" and props["NUM_STREAMS"] == "1"
    assert "LATENCY" in props["PERFORMANCE_HINT"]
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(run(x), exact, rtol=1e-5, atol=1e-5)
    x2 = rng.standard_normal((5, 20)).astype(np.float32)  # another batch, same request
    np.testing.assert_allclose(run(x2), x2.astype(np.float64) @ w.T + b, rtol=1e-5,
                               atol=1e-5)


def test_openvino_in_the_float32_table_not_the_float64_one(capsys):
    if not _installed("openvino", "onnx"):
        pytest.skip("openvino and onnx are not installed")
    (row,) = main(["--shapes", "3x20x9", *QUICK])  # it agreed with the reference
    assert row["us"]["openvino"] > 0 and "openvino" in row["ratio"]
    header = _header(capsys.readouterr().out)
    assert "openvino" in header
    (row,) = main(["--shapes", "3x20x9", *QUICK, "--dtype", "float64"])
    assert "openvino" not in row["us"]


def test_openvino_left_out_where_it_is_not_installed(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    assert harness.openvino_runner(None, 1) is None
    (row,) = main(["--shapes", "3x20x9", *QUICK])
    assert "openvino" not in row["us"]
    text = capsys.readouterr().out
    assert text.splitlines()[-1].split()[6] == "-"  # its column, empty


def test_packed_bytes_per_format():
    """A layer's packed bytes: N rounded up to panels of NR columns; bfloat16 half of
    float32's, int8 a quarter plus a float32 scale per column, int4 an eighth plus a
    row of NR scales per group."""
    from fastlinear._formats import FORMAT
    k, n, nr = 784, 10, 64
    f32 = limits.packed_bytes(k, n, FORMAT["float32"], nr)
    assert f32 == nr * k * 4
    assert limits.packed_bytes(k, n, FORMAT["bfloat16"], nr) == f32 // 2
    assert limits.packed_bytes(k, n, FORMAT["int8"], nr) == f32 // 4 + nr * 4
    assert limits.packed_bytes(k, n, FORMAT["int4"], nr, 32) == f32 // 8 + 25 * nr * 4


def test_mlp_table_with_quantized_models_rivals_and_bounds(tmp_path, capsys, monkeypatch):
    """The MLP with float32, bfloat16 and int8 weights beside every installed rival, each
    with its error against the float64 model; each of fastlinear's models against the
    bound of its own bytes; then an .onnx file given, with its rivals."""
    from fastlinear.bench import mlp
    monkeypatch.setattr(mlp, "BATCHES", (1, 3))  # two batches: a test, not a measure
    out = tmp_path / "mlp.json"
    rivals = [name for name, modules in (("torch", ("torch",)),
                                         ("onnxruntime", ("onnx", "onnxruntime")),
                                         ("openvino", ("onnx", "openvino")))
              if _installed(*modules)]
    argv = ["--mlp", *QUICK, "--json", str(out)]
    if _installed("onnx"):
        import onnx
        path = tmp_path / "mlp.onnx"
        onnx.save(mlp.onnx_model(mlp.mlp_weights(np.random.default_rng(2))), str(path))
        argv.insert(1, str(path))
    main(argv)
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100, text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "contender" in line and "limit" in line)
    legend = "\n".join(lines[:header])
    for word in ("bfloat16", "int8", "openvino", "/best", "limit", "error"):
        assert word in legend, word
    rows = json.loads(out.read_text())["mlp"]
    ours = {"fastlinear": 1e-5, "fastlinear bfloat16": 0.02, "fastlinear int8": 0.05}
    integer = {"fastlinear i8 x i8": 0.05}  # int8 activations: no bound
    for row in rows[:2]:
        assert list(row["us"]) == [*ours, *integer, *rivals]
        for name, limit in {**ours, **integer}.items():
            assert row["us"][name] > 0 and 0 < row["error"][name] < limit, name
        for name in rivals:
            assert row["us"][name] > 0 and 0 < row["error"][name] < 1e-5, name
        if rivals:
            assert row["best_rival"] == min(rivals, key=row["us"].get)
            assert row["ratio_best"]["fastlinear"] == pytest.approx(
                row["us"]["fastlinear"] / row["us"][row["best_rival"]])
        if _has_probe():
            size = {name: row["limits"][name]["weight_bytes"] for name in ours}
            # 784-512-512-256-10: 797,184 weights of 4 bytes, more with the panels' padding
            assert size["fastlinear"] >= 4 * 797_184
            assert size["fastlinear bfloat16"] == size["fastlinear"] // 2
            assert size["fastlinear"] // 4 < size["fastlinear int8"] < size["fastlinear"] // 3.9
            for name in ours:
                assert row["bound"][name] in ("FMA", "BW") and row["limit_fraction"][name] > 0
            assert set(row["bound"]) == set(ours)
    assert text.count("fastlinear int8") == 2  # a line per batch of the MLP
    if _installed("onnx"):
        assert [row["model"] for row in rows[2:]] == ["mlp.onnx"] * 2
        for row in rows[2:]:
            assert list(row["us"]) == ["fastlinear", *[r for r in rivals if r != "torch"]]
            assert row["error"]["fastlinear"] < 1e-5
            if _has_probe():
                assert set(row["bound"]) == {"fastlinear"}


def test_transformer_table(tmp_path, capsys):
    """A tiny transformer, its Linear layers replaced (float32, bfloat16, int4, int8),
    beside torch eager, torch's dynamic int8 and ONNX Runtime where installed, each with
    its error against the float64 model."""
    pytest.importorskip("torch")
    from fastlinear.bench import transformer
    out = tmp_path / "transformer.json"
    main(["--transformer", "16,2,32,1", "--tokens", "1x1,2x3", *QUICK, "--json", str(out)])
    text = capsys.readouterr().out
    table = text[text.index("Times in"):]  # the lines above are describe()'s
    assert max(len(line) for line in table.splitlines()) <= 100, table
    assert "d_model 16, 2 heads, feed-forward 32" in table and "/like" in table
    data = json.loads(out.read_text())
    assert data["meta"]["transformer"] == [16, 2, 32, 1]
    rows = data["transformer"]
    assert [row["tokens"] for row in rows] == [[1, 1], [2, 3]]
    onnx = _installed("onnx", "onnxruntime")
    limits = {"fastlinear": 1e-5, "fastlinear bfloat16": 0.02, "fastlinear int4": 0.2,
              "fastlinear int8": 0.05, "torch": 1e-5, "torch int8": 0.05,
              **({"onnxruntime": 1e-5, "onnxruntime int8": 0.05} if onnx else {})}
    for row in rows:
        assert set(row["us"]) == set(limits)
        for name, limit in limits.items():
            assert row["us"][name] > 0 and 0 <= row["error"][name] < limit, name
        assert row["ratio_torch"]["torch"] == 1
        like = row["ratio_like"]["fastlinear int8"]
        assert like["rival"] in ("torch int8", "onnxruntime int8")
        assert like["ratio"] == pytest.approx(row["us"]["fastlinear int8"]
                                              / row["us"][like["rival"]])
    with pytest.raises(SystemExit, match="D,HEADS,FF,LAYERS"):
        transformer.parse_size("10,3,4,1")
