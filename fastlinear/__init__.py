"""fastlinear: a fast, bitwise-reproducible linear layer (y = x @ W.T + b) for CPU
inference from Python, without PyTorch."""
from typing import TYPE_CHECKING

from . import _extensions

# The native kernel now, with an error that says what to do when it is not built; the
# BLAS backend (scipy) when it first runs, the ONNX reader when first used (below).
_extensions.load("_core")

from . import _from_torch  # attaches Sequential.from_torch
from . import activations, functional, modules
from ._config import get_num_threads, set_num_threads, show_config, threads
from ._version import __version__
from .activations import *  # noqa: F401,F403 (each module class, by its __all__)
from .io import load, load_model, save
from .linear import Linear
from .modules import *  # noqa: F401,F403
from .sequential import Sequential

if TYPE_CHECKING:
    from . import onnx, torch
    from .onnx import load_onnx
else:
    def __getattr__(name):
        # fastlinear.onnx and load_onnx, imported on first use: most programs never
        # read an ONNX file, and import time counts for short scripts.
        if name in ("onnx", "load_onnx"):
            import importlib
            onnx = importlib.import_module(f"{__name__}.onnx")  # sets fastlinear.onnx
            globals()["load_onnx"] = onnx.load_onnx
            return globals()[name]
        if name in ("tune", "torch"):  # the tuner (a module that, called, tunes:
            # fl.tune()); fastlinear.torch, which imports torch
            import importlib
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__():
        return sorted({*globals(), "onnx", "load_onnx", "tune", "torch"})

__all__ = ["Linear", "Sequential", *activations.__all__, *modules.__all__, "load_onnx",
           "functional", "save", "load", "load_model", "set_num_threads",
           "get_num_threads", "threads", "show_config", "__version__"]
