"""Bridge to the C kernel: packed weights and one GIL-free call per forward.

Callers (fastlinear._runner) hand over arrays that are already checked: the right
dtype, aligned, unit stride along the last axis, non-negative row stride, `out`
C-contiguous and not overlapping `x`.
"""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Calloc, PyMem_Free

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

cdef inline fl_dtype _float_code(bint f64) noexcept nogil:
    # The anonymous cpdef enum of _core.pxd gives its members the type int.
    return <fl_dtype>(FL_F64 if f64 else FL_F32)


ctypedef fused real:
    float
    double


cdef class PackedWeights:
    """Weights (N x K) of one format, packed for the native kernel in use at creation,
    filled a block of rows at a time by set_rows(); the bias stays beside them, passed
    to each call (a new bias never writes weights that another thread's call reads). The format is a
    fastlinear._formats.Format: its C code, the numpy type (`kernel`) and the length
    (`cols`) of the rows set_rows() takes and unpack() returns, the shape of its scales,
    the activations' type. activations "int8": x quantized per row and integer sums
    (the format's int8_code), for the weight formats that have them."""

    def __cinit__(self, size_t out_features, size_t in_features, fmt, size_t group,
                  str activations="float32"):
        cdef fl_dtype code = fmt.code
        if activations == "int8":
            if fmt.int8_code is None:
                raise ValueError(f"{fmt.name} weights have no int8 activations")
            code = fmt.int8_code
        elif activations != fmt.activations.name:
            raise ValueError(f"unknown activations {activations!r}")
        self.activations = activations
        if not 0 <= code < FL_NDTYPES:
            raise ValueError(f"unknown format code {code}")
        self.out_features, self.in_features = out_features, in_features
        self.format = fmt
        self.group = group if fmt.scale == "group" else 0
        self.dtype = fmt.activations
        self._typenum = cnp.NPY_FLOAT64 if self.dtype == np.float64 else cnp.NPY_FLOAT32
        self.isa = fl_isa_name().decode()
        with nogil:
            self._p = fl_alloc(code, out_features, in_features, self.group)
        if self._p == NULL:
            raise MemoryError(f"cannot allocate packed weights of shape "
                              f"({out_features}, {in_features}) and type {fmt.name}")

    def __dealloc__(self):
        fl_free(self._p)

    def set_rows(self, size_t j0, w, scale):
        """Packs rows [j0, j0 + len(w)): w C-contiguous, of the format's `kernel` type,
        `cols` elements a row; scale float32 C-contiguous of its scale_shape, or None for
        formats without scales."""
        cdef size_t rows = w.shape[0]
        fmt = self.format
        cols = fmt.cols(self.in_features)
        if (not isinstance(w, np.ndarray) or w.dtype != fmt.kernel
                or not w.flags.c_contiguous
                or w.ndim != 2 or w.shape[1] != cols or j0 + rows > self.out_features):
            raise ValueError("set_rows: rows of the wrong type or shape")
        cdef const float *sp = NULL
        shape = fmt.scale_shape(rows, self.in_features, self.group)
        if shape is not None:
            if (not isinstance(scale, np.ndarray) or scale.dtype != np.float32
                    or not scale.flags.c_contiguous or scale.shape != shape):
                raise ValueError("set_rows: scales of the wrong type or shape")
            sp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>scale)
        cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>w)
        cdef ptrdiff_t rs = cols
        with nogil:
            fl_pack_rows(self._p, j0, rows, wp, rs, 1, sp)

    def unpack(self):
        """(weight, scale) as new arrays in the layouts of set_rows(); scale None for
        formats without scales."""
        n, k, fmt = self.out_features, self.in_features, self.format
        cdef cnp.ndarray w = np.empty((n, fmt.cols(k)), fmt.kernel)
        cdef cnp.ndarray s = None
        cdef float *sp = NULL
        shape = fmt.scale_shape(n, k, self.group)
        if shape is not None:
            s = np.empty(shape, np.float32)
            sp = <float *>cnp.PyArray_DATA(s)
        cdef void *wp = cnp.PyArray_DATA(w)
        with nogil:
            fl_unpack(self._p, wp, sp)
        return w, s

    def forward_fast(self, x, bias, out=None):
        """x @ W.T + bias in a new array or in `out` (bias None or as _bias_data takes
        it), for the common case only: x an
        aligned C-contiguous ndarray of this dtype in native byte order, shaped (K,) or
        (M, K); `out` None or a writeable ndarray of the same kind, shaped like the
        result, apart from x in memory. Returns None for anything else; the caller then
        takes the general path (which also explains what is wrong). Skips every
        Python-level step, for calls whose arithmetic takes less time than those steps."""
        cdef cnp.ndarray y = _fast_result(x, self._typenum, self.in_features,
                                          self.out_features, out)
        if y is None:
            return None
        cdef size_t m = _rows(x)
        cdef const void *bp = _bias_data(self, bias)
        cdef int rc
        with nogil:
            rc = fl_forward(self._p, bp, m, cnp.PyArray_DATA(<cnp.ndarray>x),
                            self.in_features, cnp.PyArray_DATA(y), self.out_features,
                            _threads())
        if rc == FL_ENOMEM:
            raise MemoryError(f"cannot allocate scratch for a batch of {m} rows")
        return y


cdef inline const void *_bias_data(PackedWeights packed, bias) except? NULL:
    """Where the C kernel reads a bias for `packed`: NULL for None, else the data of a
    C-contiguous (N,) array of the weights' activation type (ValueError otherwise)."""
    if bias is None:
        return NULL
    if (not cnp.PyArray_CheckExact(bias)
            or cnp.PyArray_TYPE(<cnp.ndarray>bias) != packed._typenum
            or cnp.PyArray_NDIM(<cnp.ndarray>bias) != 1
            or cnp.PyArray_DIMS(<cnp.ndarray>bias)[0] != <cnp.npy_intp>packed.out_features
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>bias)
            or not cnp.PyArray_ISALIGNED(<cnp.ndarray>bias)
            or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>bias)):
        raise ValueError(f"the bias must be a C-contiguous ({packed.out_features},) array "
                         f"of {packed.dtype}")
    return cnp.PyArray_DATA(<cnp.ndarray>bias)


cdef cnp.ndarray _fast_result(x, int typenum, size_t k, size_t n, out):
    """For the forward_fast methods: where an (M, n) or (n,) result of x goes (a new
    array, or `out` when it is a plain array of that shape apart from x), when x is a
    plain (M, k) or (k,) array of the type (k > 0); None for anything else."""
    if not cnp.PyArray_CheckExact(x) or not _plain(<cnp.ndarray>x, typenum):
        return None
    cdef cnp.ndarray arr = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(arr)
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(arr)
    cdef cnp.npy_intp dims[2]
    if shape[nd - 1] != <cnp.npy_intp>k or k == 0:
        return None
    dims[0] = shape[0]
    dims[nd - 1] = n
    if out is None:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    if not cnp.PyArray_CheckExact(out):
        return None
    cdef cnp.ndarray y = <cnp.ndarray>out
    if (not _plain(y, typenum) or not cnp.PyArray_ISWRITEABLE(y) or cnp.PyArray_NDIM(y) != nd
            or not cnp.PyArray_CompareLists(cnp.PyArray_DIMS(y), dims, nd)
            or _overlap(arr, y)):
        return None
    return y


cdef inline size_t _rows(cnp.ndarray x) noexcept:
    """Rows of a plain 1-D or 2-D array."""
    return cnp.PyArray_DIMS(x)[0] if cnp.PyArray_NDIM(x) == 2 else 1


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


def gemm(PackedWeights packed, bias, x, out):
    """out[:] = x @ W.T + bias (None: no bias); x is (M, K), out is (M, N) C-contiguous."""
    cdef int rc
    cdef const void *bp = _bias_data(packed, bias)
    if packed.dtype == np.float32:
        rc = _gemm[float](packed, bp, x, out, _threads())
    else:
        rc = _gemm[double](packed, bp, x, out, _threads())
    if rc == FL_ENOMEM:
        raise MemoryError(f"cannot allocate scratch for a batch of {x.shape[0]} rows")


cdef int _gemm(PackedWeights packed, const void *bias, const real[:, :] x,
               real[:, ::1] out, int nthreads) noexcept:
    cdef size_t m = x.shape[0], k = x.shape[1], n = out.shape[1]
    if m == 0 or n == 0:
        return FL_OK
    cdef const void *xp = &x[0, 0] if k else NULL
    cdef size_t ldx = x.strides[0] // sizeof(real) if m > 1 else k
    with nogil:
        return fl_forward(packed._p, bias, m, xp, ldx, &out[0, 0], n, nthreads)


def gemm_plain(weight, bias, x, out):
    """out[:] = x @ weight.T + bias for a one-off product: weight (N, K) float32 or
    float64, C-contiguous and aligned, packed block by block as the call reaches it (the
    same bits as PackedWeights holding it); bias None or a C-contiguous (N,) array of its
    type; x (M, K) of its type with unit stride along K; out (M, N) C-contiguous."""
    cdef const void *bp = NULL
    if bias is not None:
        if (not isinstance(bias, np.ndarray) or bias.shape != (weight.shape[0],)
                or bias.dtype != weight.dtype or not bias.flags.c_contiguous
                or not bias.flags.aligned):
            raise ValueError(f"the bias must be a C-contiguous ({weight.shape[0]},) array "
                             f"of {weight.dtype}")
        bp = cnp.PyArray_DATA(<cnp.ndarray>bias)
    if weight.dtype == np.float32:
        rc = _gemm_plain[float](weight, bp, x, out, _threads())
    else:
        rc = _gemm_plain[double](weight, bp, x, out, _threads())
    if rc == FL_ENOMEM:
        raise MemoryError(f"cannot allocate scratch for a batch of {x.shape[0]} rows")


cdef int _gemm_plain(const real[:, ::1] w, const void *bias, const real[:, :] x,
                     real[:, ::1] out, int nthreads) except -1:
    cdef size_t n = w.shape[0], k = w.shape[1], m = x.shape[0]
    if out.shape[0] != m or out.shape[1] != n or x.shape[1] != k:
        raise ValueError("gemm_plain: operands of mismatched shapes")
    if m == 0 or n == 0:
        return FL_OK
    cdef const void *wp = &w[0, 0] if k else NULL
    cdef const void *xp = &x[0, 0] if k else NULL
    cdef size_t ldx = x.strides[0] // sizeof(real) if m > 1 else k
    cdef fl_dtype dt = _float_code(real is double)
    with nogil:
        return fl_forward_plain(dt, n, k, wp, k, bias, m, xp, ldx, &out[0, 0], n, nthreads)


cdef class Model:
    """A chain of steps run by fl_model_forward in one call, built once from records
    with fl_step's fields by name (fastlinear._steps.Step, .Epilogue): kind, linear (a
    PackedWeights) and its bias, ep (act, alpha, scale, shift), a, b, eps; each step's width follows
    from the ones before it. Arrays (ep.scale, ep.shift, a, b) are None or C-contiguous
    (width,) arrays of the model's dtype. The model keeps what the steps point into."""
    cdef fl_step *_steps
    cdef size_t _n
    cdef list _keep
    cdef int _typenum
    cdef readonly object dtype
    cdef readonly size_t in_features, out_features

    def __cinit__(self, steps, dtype, size_t in_features):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"a model runs float32 or float64, not {self.dtype}")
        self._typenum = cnp.NPY_FLOAT64 if self.dtype == np.float64 else cnp.NPY_FLOAT32
        self._n = len(steps)
        self._steps = <fl_step *>PyMem_Calloc(max(self._n, 1), sizeof(fl_step))
        if self._steps == NULL:
            raise MemoryError
        self._keep = []
        self.in_features = in_features
        cdef size_t width = in_features
        cdef fl_step *st
        cdef PackedWeights packed
        cdef int kind, act
        for i, step in enumerate(steps):
            st = &self._steps[i]
            kind = step.kind
            if kind == FL_STEP_LINEAR:
                packed = step.linear
                if packed.dtype != self.dtype or packed.in_features != width:
                    raise ValueError(f"step {i}: weights of {packed.in_features} inputs "
                                     f"and {packed.dtype} after {width} values of {self.dtype}")
                st.linear = packed._p
                st.bias = _bias_data(packed, step.bias)
                width = packed.out_features
                self._keep += [packed, step.bias]
            elif kind not in (FL_STEP_ACT, FL_STEP_AFFINE, FL_STEP_LAYERNORM,
                              FL_STEP_SOFTMAX, FL_STEP_LOGSOFTMAX):
                raise ValueError(f"step {i}: unknown kind {kind}")
            st.kind = <fl_step_kind>kind
            st.width = width
            if kind in (FL_STEP_LINEAR, FL_STEP_ACT):
                act = step.ep.act
                if not 0 <= act < FL_NACTS:
                    raise ValueError(f"step {i}: unknown activation {act}")
                st.ep.act = <fl_act>act
                st.ep.alpha = step.ep.alpha
            if kind == FL_STEP_LINEAR and step.ep.scale is not None:
                self._check_row_arrays(i, (step.ep.scale, step.ep.shift), width)
                st.ep.scale = cnp.PyArray_DATA(<cnp.ndarray>step.ep.scale)
                st.ep.shift = cnp.PyArray_DATA(<cnp.ndarray>step.ep.shift)
            if kind in (FL_STEP_AFFINE, FL_STEP_LAYERNORM) and step.a is not None:
                self._check_row_arrays(i, (step.a, step.b), width)
                st.a = cnp.PyArray_DATA(<cnp.ndarray>step.a)
                st.b = cnp.PyArray_DATA(<cnp.ndarray>step.b)
            if kind == FL_STEP_LAYERNORM:
                st.eps = step.eps
        self.out_features = width

    def _check_row_arrays(self, i, arrays, width):
        """ValueError unless each is a C-contiguous (width,) array of the model's dtype;
        the model keeps them."""
        for arr in arrays:
            if (not isinstance(arr, np.ndarray) or arr.dtype != self.dtype
                    or arr.shape != (width,) or not arr.flags.c_contiguous):
                raise ValueError(f"step {i}: parameters must be C-contiguous ({width},) "
                                 f"arrays of {self.dtype}")
        self._keep += list(arrays)

    def __dealloc__(self):
        PyMem_Free(self._steps)

    def forward(self, x, out):
        """out[:] = the chain applied to each row of x: x (M, in_features) with unit
        stride along rows' values, out (M, out_features) C-contiguous, not overlapping x."""
        cdef int rc
        if self.dtype == np.float32:
            rc = self._run[float](x, out, _threads())
        else:
            rc = self._run[double](x, out, _threads())
        if rc == FL_ENOMEM:
            raise MemoryError(f"cannot allocate buffers for a batch of {x.shape[0]} rows")

    def forward_fast(self, x):
        """The chain over x in a new array, for the common case only: x an aligned
        C-contiguous ndarray of the model's dtype in native byte order, shaped
        (in_features,) or (M, in_features). None for anything else (the caller then takes
        the general path, which also explains what is wrong)."""
        cdef cnp.ndarray y = _fast_result(x, self._typenum, self.in_features,
                                          self.out_features, None)
        if y is None:
            return None
        cdef size_t m = _rows(x)
        cdef int rc
        cdef fl_dtype dt = _float_code(self._typenum == cnp.NPY_FLOAT64)
        with nogil:
            rc = fl_model_forward(self._steps, self._n, dt, self.in_features, m,
                                  cnp.PyArray_DATA(<cnp.ndarray>x), self.in_features,
                                  cnp.PyArray_DATA(y), self.out_features, _threads())
        if rc == FL_ENOMEM:
            raise MemoryError(f"cannot allocate buffers for a batch of {m} rows")
        return y

    cdef int _run(self, const real[:, :] x, real[:, ::1] out, int nthreads) noexcept:
        cdef size_t m = x.shape[0], k = x.shape[1]
        if m == 0 or out.shape[1] == 0:
            return FL_OK
        cdef const void *xp = &x[0, 0] if k else NULL
        cdef size_t ldx = x.strides[0] // sizeof(real) if m > 1 else k
        cdef fl_dtype dt = _float_code(real is double)
        with nogil:
            return fl_model_forward(self._steps, self._n, dt, k, m, xp, ldx, &out[0, 0],
                                    out.shape[1], nthreads)


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


def blocking(dtype, threads=None):
    """The block sizes calls of `threads` threads (default: get_num_threads()) use now on
    the current ISA for float32 or float64, as a dict."""
    cdef fl_blocking b
    fl_get_blocking(_float_code(np.dtype(dtype) == np.float64),
                    _threads() if threads is None else threads, &b)
    return b


# Values of k per summation block (fastlinear.h): the tuned KC is a multiple of it.
SUM_BLOCK = FL_SUM_BLOCK


def set_blocking(str isa, dtype, size_t kc=0, size_t mc=0, size_t nc=0, size_t ahead=0,
                 int threads=0):
    """Block sizes for calls with float32 (every format but float64) or float64 weights
    on the named ISA, from their next start, and how far ahead their tiles of several
    rows prefetch weights that come from cache (bytes, 0: no prefetch): threads 0, calls
    of any thread count (0, 0, 0: the ISA's own); threads > 0, calls of that many threads
    only (0, 0, 0: then the sizes of any count again). Never the bits."""
    rc = fl_set_blocking(isa.encode(), _float_code(np.dtype(dtype) == np.float64), kc, mc,
                         nc, ahead, threads)
    if rc == -1:
        raise ValueError(f"unknown ISA {isa!r} (expected one of {supported_isas()}) or "
                         f"a negative thread count ({threads})")
    if rc == -2:
        raise ValueError(f"block sizes kc={kc}, mc={mc}, nc={nc}, ahead={ahead} cannot be "
                         f"used on {isa}: kc a multiple of {FL_SUM_BLOCK}, mc of the tile's "
                         f"rows, nc of its columns, each positive and at most 2**20; ahead "
                         f"a multiple of 64 up to 65536")
    if rc == -3:
        raise ValueError(f"8 thread counts already have block sizes of their own on {isa}")


def default_blocking(str isa, dtype):
    """The named ISA's own block sizes (its kernels/<isa>.c) for float32 or float64."""
    cdef fl_blocking b
    if fl_default_blocking(isa.encode(), _float_code(np.dtype(dtype) == np.float64), &b):
        raise ValueError(f"unknown ISA {isa!r}; expected one of {supported_isas()}")
    return b


def openmp_enabled():
    return bool(fl_openmp_enabled())


def default_threads():
    return fl_default_threads()


def set_cache_bytes(size_t n):
    """The last-level cache's size: weights past half of it are streamed with prefetch."""
    fl_set_cache_bytes(n)
