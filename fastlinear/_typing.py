"""Type aliases of the public API's hints. Imported only by type checkers (the modules
import it under TYPE_CHECKING, and their annotations are never evaluated), so it costs
nothing at run time."""
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, Union

import numpy as np

Backend = Literal["auto", "native", "blas"]
Resolved = Literal["native", "blas"]  # a backend as a call runs it ("auto" resolved)
# What a Linear multiplies x as: its dtype's name (float activations), or int8 (each row
# quantized, integer sums)
Activations = Literal["float32", "float64", "int8"]
# What numpy.random.default_rng takes (SciPy's SPEC 7)
Seed = Union[None, int, np.random.SeedSequence, np.random.BitGenerator, np.random.Generator]
StrPath = Union[str, "os.PathLike[str]"]


class SupportsStateDict(Protocol):
    """A fastlinear module, a torch module: anything with state_dict()."""

    def state_dict(self) -> Mapping[str, Any]: ...

if TYPE_CHECKING:
    from .activations import GELU, LeakyReLU, ReLU, Sigmoid, SiLU, Tanh
    from .linear import Linear
    from .modules import (BatchNorm1d, Dropout, Flatten, Identity, LayerNorm, LogSoftmax,
                          Softmax)
    from .sequential import Sequential

# What a Sequential holds (a nested Sequential too)
Module = Union["Linear", "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Identity",
               "Dropout", "Flatten", "LayerNorm", "Softmax", "LogSoftmax", "BatchNorm1d",
               "Sequential"]
