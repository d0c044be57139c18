# Type stub of the Cython bridge (_core.pyx): what mypy cannot read from the compiled
# module. tests/test_api.py checks that each name here is the module's; names it lacks
# are Any (the __getattr__ at the end) until written here.
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._formats import Format
from ._steps import Step

FL_F32: int
FL_F64: int
FL_BF16: int
FL_F16: int
FL_I8: int
FL_I4: int
FL_I8Q: int
FL_I4Q: int
FL_I8Q_MAX_K: int
FL_NDTYPES: int
FL_ACT_NONE: int
FL_ACT_RELU: int
FL_ACT_LEAKY_RELU: int
FL_ACT_GELU: int
FL_ACT_GELU_TANH: int
FL_ACT_SILU: int
FL_ACT_SIGMOID: int
FL_ACT_TANH: int
FL_NACTS: int
FL_STEP_LINEAR: int
FL_STEP_ACT: int
FL_STEP_AFFINE: int
FL_STEP_LAYERNORM: int
FL_STEP_SOFTMAX: int
FL_STEP_LOGSOFTMAX: int

def set_num_threads(n: int) -> None: ...
def set_cpu_cap(n: int) -> None: ...
def get_num_threads() -> int: ...
def default_threads() -> int: ...
def set_cache_bytes(n: int) -> None: ...
def openmp_enabled() -> bool: ...
def isa_name() -> str: ...
def supported_isas() -> list[str]: ...
def set_isa(name: str) -> None: ...
def blocking(dtype: Any, threads: int | None = None) -> dict[str, int]: ...

class PackedWeights:
    in_features: int
    out_features: int
    group: int
    dtype: np.dtype[Any]
    format: Format
    isa: str
    activations: str
    def __init__(self, out_features: int, in_features: int, fmt: Format,
                 group: int, activations: str = ...) -> None: ...
    def set_rows(self, j0: int, w: np.ndarray, scale: np.ndarray | None) -> None: ...
    def unpack(self) -> tuple[np.ndarray, np.ndarray | None]: ...
    def forward_fast(self, x: object, bias: np.ndarray | None,
                     out: object = None) -> np.ndarray | None: ...

def gemm(packed: PackedWeights, bias: np.ndarray | None, x: np.ndarray,
         out: np.ndarray) -> None: ...
def gemm_plain(weight: np.ndarray, bias: np.ndarray | None, x: np.ndarray,
               out: np.ndarray) -> None: ...

class Model:
    dtype: np.dtype[Any]
    in_features: int
    out_features: int
    def __init__(self, steps: Sequence[Step], dtype: Any, in_features: int) -> None: ...
    def forward(self, x: np.ndarray, out: np.ndarray) -> None: ...
    def forward_fast(self, x: object) -> np.ndarray | None: ...

def __getattr__(name: str) -> Any: ...
