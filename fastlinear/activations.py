"""The element-wise activations, like torch.nn's. Each runs fastlinear's own vectorised
code (src_c/activation.h): the same bits on every CPU, ISA and library version, alone or
fused into the Linear before it in a Sequential. Inputs of any shape; float64 input gives
float64, any other real input float32; a new array is returned (the input is never
changed). Accuracy (ulp against float64): docs/models.md, "Activations"."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from . import _core, _optional, _runner, _steps

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import ArrayLike

__all__ = ["ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh"]


class _Activation:
    # What each module class declares for the converters (their tables are built from
    # these): torch_names, the torch.nn classes it is converted from; torch_args, the
    # attributes of that torch module its constructor takes, in order; onnx_ops, the ONNX
    # operators (domain.op_type outside the default domain) read as this one module.
    torch_names: tuple[str, ...] = ()
    torch_args: tuple[str, ...] = ()
    onnx_ops: tuple[str, ...] = ()
    _act = _core.FL_ACT_NONE  # the C kernel's code
    _alpha = 0.0

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return _runner.module(self, x)

    forward = __call__

    def _steps(self, width, dtype):
        return [_steps.Step(_core.FL_STEP_ACT, ep=_steps.Epilogue(self._act, self._alpha))]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def to_torch(self) -> torch.nn.Module:
        """The torch.nn module this one stands for (torch is imported here)."""
        return _optional.torch_module(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """max(x, 0); NaN stays NaN."""
    torch_names, onnx_ops = ("ReLU",), ("Relu",)
    _act = _core.FL_ACT_RELU


class SiLU(_Activation):
    """x * sigmoid(x)."""
    torch_names = ("SiLU",)  # ONNX writes it out: x * Sigmoid(x)
    _act = _core.FL_ACT_SILU


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""
    torch_names, onnx_ops = ("Sigmoid",), ("Sigmoid",)
    _act = _core.FL_ACT_SIGMOID


class Tanh(_Activation):
    """tanh(x)."""
    torch_names, onnx_ops = ("Tanh",), ("Tanh",)
    _act = _core.FL_ACT_TANH


class LeakyReLU(_Activation):
    """x if x > 0 else negative_slope * x (the slope held as a float32 for float32 data,
    as torch does)."""
    torch_names, torch_args = ("LeakyReLU",), ("negative_slope",)
    onnx_ops = ("LeakyRelu",)
    _act = _core.FL_ACT_LEAKY_RELU

    def __init__(self, negative_slope: float = 0.01) -> None:
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
            raise TypeError(f"negative_slope must be a number, got {negative_slope!r}")
        self._alpha = float(negative_slope)

    @property
    def negative_slope(self) -> float:
        return self._alpha

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self._alpha})"


class GELU(_Activation):
    """x * Phi(x): approximate="none" with erf, "tanh" with torch's tanh approximation."""
    torch_names, torch_args = ("GELU",), ("approximate",)
    onnx_ops = ("Gelu", "com.microsoft.Gelu")

    def __init__(self, approximate: Literal["none", "tanh"] = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self._act = _core.FL_ACT_GELU if approximate == "none" else _core.FL_ACT_GELU_TANH

    @property
    def approximate(self) -> Literal["none", "tanh"]:
        return "none" if self._act == _core.FL_ACT_GELU else "tanh"

    def __repr__(self) -> str:
        return f"GELU(approximate={self.approximate!r})"
