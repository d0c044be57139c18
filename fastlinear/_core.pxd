# Declarations of the C kernel's public contract (src_c/fastlinear.h).

cdef extern from "fastlinear.h" nogil:
    # The members of fl_dtype, fl_act and fl_step_kind are declared `cpdef`, so Python
    # sees them too (fastlinear._core.FL_F32 ...): the records of weight formats,
    # activations and steps hold these codes rather than tables here restating them.
    ctypedef enum fl_dtype:
        pass
    cpdef enum:
        FL_F32
        FL_F64
        FL_BF16
        FL_F16
        FL_I8
        FL_I4
        FL_I8Q
        FL_I4Q
        FL_NDTYPES
        FL_I8Q_MAX_K  # a #define: the most values of k FL_I8Q weights take
    enum:
        FL_OK
        FL_ENOMEM
        FL_SUM_BLOCK
    ctypedef struct fl_packed:
        pass
    fl_packed *fl_alloc(fl_dtype dtype, size_t n, size_t k, size_t group) noexcept
    void fl_free(fl_packed *p) noexcept
    void fl_pack_rows(fl_packed *p, size_t j0, size_t rows, const void *w, ptrdiff_t rs_w,
                      ptrdiff_t cs_w, const float *scale) noexcept
    void fl_unpack(const fl_packed *p, void *w, float *scale) noexcept
    int fl_forward(const fl_packed *p, const void *b, size_t m, const void *x, size_t ldx,
                   void *y, size_t ldy, int nthreads) noexcept
    int fl_forward_plain(fl_dtype dtype, size_t n, size_t k, const void *w, size_t ldw,
                         const void *b, size_t m, const void *x, size_t ldx, void *y,
                         size_t ldy, int nthreads) noexcept
    ctypedef enum fl_act:
        pass
    cpdef enum:
        FL_ACT_NONE
        FL_ACT_RELU
        FL_ACT_LEAKY_RELU
        FL_ACT_GELU
        FL_ACT_GELU_TANH
        FL_ACT_SILU
        FL_ACT_SIGMOID
        FL_ACT_TANH
        FL_NACTS
    ctypedef struct fl_epilogue:
        fl_act act
        double alpha
        const void *scale
        const void *shift
    ctypedef enum fl_step_kind:
        pass
    cpdef enum:
        FL_STEP_LINEAR
        FL_STEP_ACT
        FL_STEP_AFFINE
        FL_STEP_LAYERNORM
        FL_STEP_SOFTMAX
        FL_STEP_LOGSOFTMAX
    ctypedef struct fl_step:
        fl_step_kind kind
        size_t width
        const fl_packed *linear
        const void *bias
        fl_epilogue ep
        const void *a
        const void *b
        double eps
    int fl_model_forward(const fl_step *steps, size_t nsteps, fl_dtype dtype,
                         size_t width_in, size_t m, const void *x, size_t ldx, void *y,
                         size_t ldy, int nthreads) noexcept
    const char *fl_isa_name() noexcept
    int fl_set_isa(const char *name) noexcept
    const char *fl_supported_isa(int i) noexcept
    ctypedef struct fl_blocking:
        size_t mr, nr, kc, mc, nc, ahead, direct_x_max_bytes
    int fl_set_blocking(const char *isa, fl_dtype dtype, size_t kc, size_t mc,
                        size_t nc, size_t ahead, int threads) noexcept
    void fl_get_blocking(fl_dtype dtype, int threads, fl_blocking *out) noexcept
    int fl_default_blocking(const char *isa, fl_dtype dtype, fl_blocking *out) noexcept
    int fl_openmp_enabled() noexcept
    int fl_default_threads() noexcept
    void fl_set_cache_bytes(size_t bytes) noexcept


cdef class PackedWeights:
    cdef fl_packed *_p
    cdef int _typenum
    cdef readonly size_t in_features, out_features, group
    cdef readonly object dtype, format
    cdef readonly str isa, activations
