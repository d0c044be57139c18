"""fastlinear: a fast, bitwise-reproducible linear layer (y = x @ W.T + b) for CPU
inference from Python, without PyTorch."""


def _import_extensions():
    """Imports the compiled extensions. When one is not built, the usual reason is that
    Python found this source folder (the current directory or PYTHONPATH comes first on
    sys.path) instead of the installed package: the error says so, and what to do."""
    import importlib
    import importlib.machinery
    import os
    folder = os.path.dirname(os.path.abspath(__file__))
    for name in ("_core", "_blas"):
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:
            if any(os.path.exists(os.path.join(folder, name + suffix))
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES):
                raise  # built, but it does not load: the original error says why
            raise ImportError(
                f"fastlinear was imported from the source folder {folder} instead of the "
                f"installed package, and its compiled extension {name} is not built there "
                f"(for this Python). Run Python from another folder, or build in place: "
                f"pip install -e . (or python setup.py build_ext --inplace)") from exc


_import_extensions()
del _import_extensions

from . import _from_torch  # attaches Sequential.from_torch
from . import activations, functional, modules
from ._config import get_num_threads, set_num_threads, show_config
from ._version import __version__
from .activations import *  # noqa: F401,F403 (each module class, by its __all__)
from .io import load, save
from .linear import Linear
from .modules import *  # noqa: F401,F403
from .onnx import load_onnx
from .sequential import Sequential

__all__ = ["Linear", "Sequential", *activations.__all__, *modules.__all__, "load_onnx",
           "functional", "save", "load", "set_num_threads", "get_num_threads",
           "show_config", "__version__"]
