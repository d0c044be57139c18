"""Builds fastlinear's two extensions: _core (the C kernel behind a Cython bridge) and
_blas (scipy's BLAS through Cython). Metadata lives in pyproject.toml.

Environment:
  FASTLINEAR_NO_OPENMP=1   build without OpenMP (single-threaded), even where available.
  FASTLINEAR_SANITIZE=1    build with AddressSanitizer and UndefinedBehaviorSanitizer
                           (for tests: run Python with LD_PRELOAD="$(cc -print-file-name=libasan.so)
                           libstdc++.so.6" and ASAN_OPTIONS=detect_leaks=0; see .ci/run).
"""
import glob
import os
import sys
import tempfile
import textwrap

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_SOURCES = [
    "src_c/pack.c",
    "src_c/gemm.c",
    "src_c/model.c",
    "src_c/dispatch.c",
    "src_c/threads.c",
    "src_c/kernels/ref.c",
    "src_c/kernels/avx2.c",
    "src_c/kernels/avx512.c",
    "src_c/kernels/avx512_vnni.c",
]
# -ffp-contract=off: GCC's default for GNU C (-ffp-contract=fast) fuses a*b+c into an FMA
# wherever it likes, so a vectorised loop and its scalar tail could round differently and
# an output's bits would depend on which path computed it. With it off, the AVX kernels
# get FMAs only where their intrinsics ask, and the portable kernel does a multiply then
# an add on every compiler and CPU.
# No tuning for the build machine's CPU and no fast-math: a wheel built here must run on
# any x86-64 (kernels for newer ISAs carry target attributes) and keep NaN and Inf.
C_FLAGS = ["-O3", "-ffp-contract=off"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer", "-g"]
OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
""")


def compiler_has_openmp(compiler):
    """True when this compiler builds and links an OpenMP program with -fopenmp."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, "probe", output_dir=tmp,
                                     extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        use_openmp = os.environ.get("FASTLINEAR_NO_OPENMP", "") in ("", "0")
        if use_openmp and not compiler_has_openmp(self.compiler):
            print("fastlinear: this compiler lacks OpenMP (-fopenmp); building the "
                  "native kernel single-threaded", file=sys.stderr)
            use_openmp = False
        sanitize = os.environ.get("FASTLINEAR_SANITIZE", "") not in ("", "0")
        for ext in self.extensions:
            ext.extra_compile_args += C_FLAGS
            if sanitize:
                ext.extra_compile_args += SANITIZE_FLAGS
                ext.extra_link_args += SANITIZE_FLAGS
            if use_openmp and ext.name == "fastlinear._core":
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


extensions = [
    Extension("fastlinear._core", ["fastlinear/_core.pyx", *C_SOURCES],
              include_dirs=["src_c", numpy.get_include()],
              depends=sorted(glob.glob("src_c/*.h") + glob.glob("src_c/kernels/*.h")),  # rebuild all
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]),
    Extension("fastlinear._blas", ["fastlinear/_blas.pyx"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False,
                             "wraparound": False, "initializedcheck": False},
    ),
    cmdclass={"build_ext": BuildExt},
)
