"""The benchmark runs end to end on tiny shapes: table, JSON, plot. (It measures
nothing here; timings belong to the benchmark itself.)"""
import importlib.util
import json
import tempfile

import pytest

from fastlinear import _core
from fastlinear.bench import compressed, harness, limits, linear
from fastlinear.bench.__main__ import main


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
    for row in data["results"]:
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


def test_bad_shape_is_refused():
    with pytest.raises(SystemExit, match="bad shape"):
        harness.parse_shapes("1x2")


def test_wide_table_has_every_ratio(capsys):
    main(["--shapes", "2x8x4", "--rounds", "1", "--budget", "0.001", "--settle", "0",
                "--threads", "1", "--wide"])
    header = capsys.readouterr().out.splitlines()[2]
    assert "blas" in header and "/numpy" in header and "GB/s" in header


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


def test_compressed_options_are_checked():
    with pytest.raises(SystemExit):
        main(["--weight-dtype", "int8", "--group-size", "64"])
    with pytest.raises(SystemExit):
        main(["--weight-dtype", "int4", "--dtype", "float64"])
