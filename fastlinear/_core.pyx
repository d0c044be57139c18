"""Bridge to the C kernel: packed weights and one GIL-free call per forward.

Callers (fastlinear.functional) hand over arrays that are already checked: the right
dtype, aligned, unit stride along the last axis, non-negative row stride, `out`
C-contiguous and not overlapping `x`.
"""
import numpy as np

ctypedef fused real:
    float
    double


cdef class PackedWeights:
    """W (N x K) and the optional bias, packed for the native kernel in use at creation."""

    def __cinit__(self, weight, bias):
        self.dtype = weight.dtype
        self.isa = fl_isa_name().decode()
        if weight.dtype == np.float32:
            self._p = _pack[float](weight, bias, FL_F32)
        else:
            self._p = _pack[double](weight, bias, FL_F64)
        if self._p == NULL:
            raise MemoryError(
                f"cannot allocate packed weights of shape {tuple(weight.shape)} "
                f"and dtype {weight.dtype}")

    def __dealloc__(self):
        fl_free(self._p)


cdef fl_packed *_pack(const real[:, :] w, const real[:] b, fl_dtype dtype) noexcept:
    cdef size_t n = w.shape[0], k = w.shape[1]
    cdef const void *wp = &w[0, 0] if n and k else NULL
    cdef const void *bp = NULL
    cdef ptrdiff_t bs = 0
    if b is not None:
        bs = b.strides[0] // sizeof(real)
        bp = &b[0] if n else NULL
        if bp == NULL:   # no columns: any non-NULL pointer marks "has bias"
            bp = wp if wp != NULL else <const void *>&bs
    with nogil:
        return fl_pack(dtype, n, k, wp, w.strides[0] // <ptrdiff_t>sizeof(real),
                       w.strides[1] // <ptrdiff_t>sizeof(real), bp, bs)


def forward(PackedWeights packed, x, out, int nthreads):
    """out[:] = x @ W.T + b; x is (M, K), out is (M, N) C-contiguous."""
    cdef int rc
    if packed.dtype == np.float32:
        rc = _forward[float](packed, x, out, nthreads)
    else:
        rc = _forward[double](packed, x, out, nthreads)
    if rc == FL_ENOMEM:
        raise MemoryError(f"cannot allocate scratch for a batch of {x.shape[0]} rows")


cdef int _forward(PackedWeights packed, const real[:, :] x, real[:, ::1] out,
                  int nthreads) noexcept:
    cdef size_t m = x.shape[0], k = x.shape[1], n = out.shape[1]
    if m == 0 or n == 0:
        return FL_OK
    cdef const void *xp = &x[0, 0] if k else NULL
    cdef size_t ldx = x.strides[0] // sizeof(real) if m > 1 else k
    with nogil:
        return fl_forward(packed._p, m, xp, ldx, &out[0, 0], n, nthreads)


def isa_name():
    """The micro-kernel ISA that new packed weights use."""
    return fl_isa_name().decode()


def supported_isas():
    """ISAs this CPU and build can run, worst first."""
    names = []
    cdef const char *name = fl_supported_isa(0)
    while name != NULL:
        names.append(name.decode())
        name = fl_supported_isa(len(names))
    return names


def set_isa(str name):
    """Makes weights packed from now on use the named ISA."""
    rc = fl_set_isa(name.encode())
    if rc == -1:
        raise ValueError(f"unknown ISA {name!r}; expected one of {supported_isas()}")
    if rc == -2:
        raise ValueError(f"ISA {name!r} is not supported by this CPU or build; "
                         f"supported: {supported_isas()}")


def blocking(dtype):
    """The current ISA's block sizes for float32 or float64, as a dict."""
    cdef fl_blocking b
    fl_get_blocking(FL_F32 if np.dtype(dtype) == np.float32 else FL_F64, &b)
    return b


def openmp_enabled():
    return bool(fl_openmp_enabled())


def default_threads():
    return fl_default_threads()
