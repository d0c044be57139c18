"""The benchmark runs end to end on tiny shapes: table, JSON, plot. (It measures
nothing here; timings belong to the benchmark itself.)"""
import importlib.util
import json
import tempfile

import pytest

from fastlinear import _core, _limits as limits, bench


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
    bench.main(argv)
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
        assert rival in bench.RIVALS and row["us"][rival] == min(
            row["us"][name] for name in bench.RIVALS if name in row["us"])
        assert row["ratio_best"] == pytest.approx(row["us"]["fastlinear"] / row["us"][rival])
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            assert "onnxruntime" in row["us"]  # it ran and agreed with the reference
    if has_plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data["sweep"]) == len(bench.SWEEP_M)


def test_bad_shape_is_refused():
    with pytest.raises(SystemExit, match="bad shape"):
        bench.parse_shapes("1x2")


def test_wide_table_has_every_ratio(capsys):
    bench.main(["--shapes", "2x8x4", "--rounds", "1", "--budget", "0.001", "--settle", "0",
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
        bench.main(["--help"])
    text = capsys.readouterr().out
    assert "usage: python -m fastlinear.bench" in text
    assert "--threads" in text and "(default: 2)" in text
