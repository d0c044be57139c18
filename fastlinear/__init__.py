"""fastlinear: a fast, bitwise-reproducible linear layer (y = x @ W.T + b) for CPU
inference from Python, without PyTorch."""
__version__ = "0.1.0"

from . import functional
from ._config import get_num_threads, set_num_threads, show_config
from .linear import Linear

__all__ = ["Linear", "functional", "set_num_threads", "get_num_threads", "show_config",
           "__version__"]
