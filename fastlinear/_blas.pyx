"""The BLAS backend: y = x @ W.T (+ y) through scipy's ?gemm (?gemv for one row), on
the arrays' own memory. Row-major operands become column-major ones by swapping them:
    y (M x N, row-major) = x @ W.T   <=>   y.T (N x M, col-major) = op(W) @ op(x.T)
Each operand may be row- or column-major (unit stride on either axis); the caller
copies anything else.
"""
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv
import numpy as np

ctypedef fused real:
    float
    double


INT_MAX = 2**31 - 1


def blas_layout(a):
    """('T' or 'N', leading dimension) for a 2-D (rows, cols) operand BLAS reads as-is,
    or None when it must be copied. 'T': row-major; 'N': column-major."""
    rows, cols = a.shape
    s0, s1 = a.strides
    size = a.itemsize
    if not a.flags.aligned or max(rows, cols, abs(s0) // size, abs(s1) // size) > INT_MAX:
        return None
    if s1 == size or cols == 1:
        ld = s0 // size if rows > 1 else cols
        if s0 % size == 0 and ld >= max(1, cols):
            return ("T", ld)
    if s0 == size or rows == 1:
        ld = s1 // size if cols > 1 else rows
        if s1 % size == 0 and ld >= max(1, rows):
            return ("N", ld)
    return None


def gemm(x, w, out, bint accumulate):
    """out = x @ w.T (+ out when accumulate); x (M, K), w (N, K), out (M, N)
    C-contiguous; M, N, K from 1 to INT_MAX; x and w in a blas_layout."""
    trans_w, ldw = blas_layout(w)
    trans_x, ldx = blas_layout(x)
    # y.T = op_a(W) @ op_b(x.T) in column-major terms: a row-major W (N x K) reads as a
    # K x N col-major matrix, so 'T'; a row-major x reads as K x M col-major, so 'N'.
    ta = b"T" if trans_w == "T" else b"N"
    tb = b"N" if trans_x == "T" else b"T"
    # One row is a matrix-vector product: ?gemv streams W once, ?gemm would pack it.
    incx = x.strides[1] // x.itemsize if x.shape[0] == 1 else 0
    if out.dtype == np.float32:
        _gemm[float](x, w, out, ta[0], tb[0], ldw, ldx, incx, accumulate)
    else:
        _gemm[double](x, w, out, ta[0], tb[0], ldw, ldx, incx, accumulate)


cdef void _gemm(const real[:, :] x, const real[:, :] w, real[:, ::1] out, char ta, char tb,
                int lda, int ldb, int incx, bint accumulate) noexcept:
    cdef int m = <int>x.shape[0], n = <int>w.shape[0], k = <int>x.shape[1]
    cdef int ldc = n, incy = 1
    cdef real one = 1
    cdef real beta = 1 if accumulate else 0
    # gemv's A is W as BLAS reads it: K x N col-major ('T') or N x K col-major ('N').
    cdef int rows_a = k if ta == b"T"[0] else n
    cdef int cols_a = n if ta == b"T"[0] else k
    with nogil:
        if real is float and incx:
            sgemv(&ta, &rows_a, &cols_a, &one, <float *>&w[0, 0], &lda, <float *>&x[0, 0],
                  &incx, &beta, &out[0, 0], &incy)
        elif real is float:
            sgemm(&ta, &tb, &n, &m, &k, &one, <float *>&w[0, 0], &lda, <float *>&x[0, 0],
                  &ldb, &beta, &out[0, 0], &ldc)
        elif incx:
            dgemv(&ta, &rows_a, &cols_a, &one, <double *>&w[0, 0], &lda,
                  <double *>&x[0, 0], &incx, &beta, &out[0, 0], &incy)
        else:
            dgemm(&ta, &tb, &n, &m, &k, &one, <double *>&w[0, 0], &lda,
                  <double *>&x[0, 0], &ldb, &beta, &out[0, 0], &ldc)
