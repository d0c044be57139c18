"""The benchmark runs end to end on tiny shapes: table, JSON, plot. (It measures
nothing here; timings belong to the benchmark itself.)"""
import json

import pytest

from fastlinear import bench


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
    assert "3x20x9" in text and "/numpy" in text
    data = json.loads(out.read_text())
    assert [(r["m"], r["k"], r["n"]) for r in data["results"]] == [(1, 16, 8), (3, 20, 9)]
    for row in data["results"]:
        assert set(row["us"]) >= {"fastlinear", "fastlinear-blas", "numpy"}
        assert all(t > 0 for t in row["us"].values())
    if has_plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data["sweep"]) == len(bench.SWEEP_M)


def test_bad_shape_is_refused():
    with pytest.raises(SystemExit, match="bad shape"):
        bench.parse_shapes("1x2")
