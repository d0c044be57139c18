"""The element-wise activations a converted torch.nn.Sequential may hold between its
Linear layers, computed in place on the layer's fresh output (no extra array)."""
import math

import numpy as np
from scipy.special import erf

# Python floats: they take the array's dtype (a float32 output stays float32).
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)

__all__ = ["ReLU", "GELU", "Tanh"]


class ReLU:
    """max(x, 0), like torch.nn.ReLU."""

    def __call__(self, y):
        return np.maximum(y, 0, out=y)

    def __repr__(self):
        return "ReLU()"


class Tanh:
    """tanh(x), like torch.nn.Tanh."""

    def __call__(self, y):
        return np.tanh(y, out=y)

    def __repr__(self):
        return "Tanh()"


class GELU:
    """x * Phi(x), like torch.nn.GELU: approximate="none" uses erf, "tanh" torch's tanh
    approximation."""

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def __call__(self, y):
        if self.approximate == "tanh":
            inner = y * y
            inner *= 0.044715 * y
            inner += y
            inner *= _SQRT_2_OVER_PI
            half = np.tanh(inner, out=inner)
        else:
            half = erf(y * _SQRT_HALF)
        half += 1
        half *= 0.5
        return np.multiply(y, half, out=y)

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"
