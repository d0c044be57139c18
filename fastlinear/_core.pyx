"""Bridge to the C kernel: packed weights and one GIL-free call per forward.

Callers (fastlinear.functional) hand over arrays that are already checked: the right
dtype, aligned, unit stride along the last axis, non-negative row stride, `out`
C-contiguous and not overlapping `x`.
"""
import numpy as np
cimport numpy as cnp

cnp.import_array()

# Threads for the native kernel: set by fastlinear.set_num_threads (0: not set), else
# OpenMP's setting in the calling thread (OMP_NUM_THREADS, threadpoolctl, the affinity
# mask) capped by the CPUs the process may use (fastlinear._config finds the cgroup
# quota).
cdef int _num_threads = 0
cdef int _cpu_cap = 1 << 30


def set_num_threads(int n):
    """n > 0: use n threads from now on; 0: follow OpenMP's setting again."""
    global _num_threads
    _num_threads = n


def set_cpu_cap(int n):
    global _cpu_cap
    _cpu_cap = n


cdef inline int _threads() noexcept nogil:
    if _num_threads > 0:
        return _num_threads
    return min(fl_default_threads(), _cpu_cap)


def get_num_threads():
    return _threads()

ctypedef fused real:
    float
    double


cdef class PackedWeights:
    """W (N x K) and the optional bias, packed for the native kernel in use at creation."""

    def __cinit__(self, weight, bias):
        self.dtype = weight.dtype
        self.out_features, self.in_features = weight.shape
        self._typenum = cnp.NPY_FLOAT32 if weight.dtype == np.float32 else cnp.NPY_FLOAT64
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

    def forward_fast(self, x, out=None):
        """x @ W.T + b in a new array or in `out`, for the common case only: x an
        aligned C-contiguous ndarray of this dtype in native byte order, shaped (K,) or
        (M, K); `out` None or a writeable ndarray of the same kind, shaped like the
        result, apart from x in memory. Returns None for anything else; the caller then
        takes the general path (which also explains what is wrong). Skips every
        Python-level step, for calls whose arithmetic takes less time than those steps."""
        if not cnp.PyArray_CheckExact(x) or not _plain(<cnp.ndarray>x, self._typenum):
            return None
        cdef cnp.ndarray arr = <cnp.ndarray>x
        cdef int nd = cnp.PyArray_NDIM(arr)
        cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(arr)
        cdef cnp.npy_intp dims[2]
        if shape[nd - 1] != <cnp.npy_intp>self.in_features or shape[nd - 1] == 0:
            return None
        dims[0] = shape[0]
        dims[nd - 1] = self.out_features
        cdef cnp.ndarray y
        if out is None:
            y = cnp.PyArray_EMPTY(nd, dims, self._typenum, 0)
        else:
            if not cnp.PyArray_CheckExact(out):
                return None
            y = <cnp.ndarray>out
            if (not _plain(y, self._typenum) or not cnp.PyArray_ISWRITEABLE(y)
                    or cnp.PyArray_NDIM(y) != nd or not cnp.PyArray_CompareLists(
                        cnp.PyArray_DIMS(y), dims, nd) or _overlap(arr, y)):
                return None
        cdef size_t m = shape[0] if nd == 2 else 1
        cdef int rc
        with nogil:
            rc = fl_forward(self._p, m, cnp.PyArray_DATA(arr), self.in_features,
                            cnp.PyArray_DATA(y), self.out_features, _threads())
        if rc == FL_ENOMEM:
            raise MemoryError(f"cannot allocate scratch for a batch of {m} rows")
        return y


cdef inline bint _plain(cnp.ndarray a, int typenum) noexcept:
    """1-D or 2-D, C-contiguous, aligned, native byte order, of this type."""
    return (cnp.PyArray_TYPE(a) == typenum and 1 <= cnp.PyArray_NDIM(a) <= 2
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and cnp.PyArray_ISNOTSWAPPED(a))


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether two C-contiguous arrays share a byte."""
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


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


def forward(PackedWeights packed, x, out):
    """out[:] = x @ W.T + b; x is (M, K), out is (M, N) C-contiguous."""
    cdef int rc
    if packed.dtype == np.float32:
        rc = _forward[float](packed, x, out, _threads())
    else:
        rc = _forward[double](packed, x, out, _threads())
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
