"""fastlinear: a fast, bitwise-reproducible linear layer (y = x @ W.T + b) for CPU
inference from Python, without PyTorch."""
__version__ = "0.1.0"


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

from . import functional
from ._config import get_num_threads, set_num_threads, show_config
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Tanh
from .io import load, save
from .linear import Linear
from .modules import BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LogSoftmax, Softmax
from .onnx import load_onnx
from .sequential import Sequential

__all__ = ["Linear", "Sequential", "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh",
           "Identity", "Dropout", "Flatten", "LayerNorm", "Softmax", "LogSoftmax",
           "BatchNorm1d", "load_onnx", "functional", "save", "load", "set_num_threads",
           "get_num_threads", "show_config", "__version__"]
