"""Builds tests/c/test_kernels.c against the C sources and runs it: the micro-kernels and
packing of every ISA this CPU runs, with guard pages behind every buffer."""
import glob
import os
import shutil
import subprocess

import pytest

from fastlinear import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_stay_inside_their_buffers(tmp_path):
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc})")
    sources = sorted(glob.glob(os.path.join(ROOT, "src_c", "*.c"))
                     + glob.glob(os.path.join(ROOT, "src_c", "kernels", "*.c")))
    assert sources, "the C sources are not beside the tests"
    exe = tmp_path / "test_kernels"
    subprocess.run([cc, "-O2", "-ffp-contract=off", "-I", os.path.join(ROOT, "src_c"),
                    os.path.join(ROOT, "tests", "c", "test_kernels.c"), *sources, "-lm",
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}"
    for isa in _core.supported_isas():
        assert f"{isa}: checked" in run.stdout
