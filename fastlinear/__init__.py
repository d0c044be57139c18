"""fastlinear: a fast, bitwise-reproducible linear layer (y = x @ W.T + b) for CPU
inference from Python, without PyTorch."""
__version__ = "0.1.0"

from . import functional
from ._config import get_num_threads, set_num_threads, show_config
from .activations import GELU, ReLU, Tanh
from .io import load, save
from .linear import Linear
from .sequential import Sequential

__all__ = ["Linear", "Sequential", "ReLU", "GELU", "Tanh", "functional", "save", "load",
           "set_num_threads", "get_num_threads", "show_config", "__version__"]
