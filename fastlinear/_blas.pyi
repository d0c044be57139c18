# Type stub of the BLAS backend (_blas.pyx), for mypy.
import numpy as np

INT_MAX: int

def blas_layout(a: np.ndarray) -> tuple[str, int] | None: ...
def gemm(x: np.ndarray, w: np.ndarray, out: np.ndarray, accumulate: bool) -> None: ...
