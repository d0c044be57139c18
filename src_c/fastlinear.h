/* fastlinear C kernel: the one public contract.
 *
 * Operation:  y[i, j] = sum_k x[i, k] * W[j, k]  (+ b[j])      0 <= i < M, 0 <= j < N
 * i.e. y = x @ W.T + b, the forward pass of torch.nn.Linear.
 *
 * Types: the weights are stored as float32 (FL_F32), float64 (FL_F64), bfloat16 (FL_BF16),
 * float16 (FL_F16), int8 (FL_I8) or int4 (FL_I4), or as int8 or int4 for int8 activations
 * (FL_I8Q, FL_I4Q, below); x, b and y are float64 for FL_F64 and float32 for every other format.
 *
 * Layouts (all strides in elements, not bytes):
 *   W  is read once by fl_pack_rows() with arbitrary strides (rs_w, cs_w) and copied into
 *      64-byte aligned panels of NR output columns, K rows each, zero-padded past N.
 *   x  is M x K, unit stride along k, row stride ldx >= 0 (0 broadcasts one row).
 *   b  is NULL or N contiguous values, kept by the caller beside the packed weights: a
 *      new bias is a new array, so replacing it never writes weights that a forward
 *      running in another thread reads.
 *   y  is M x N, unit stride along j, row stride ldy >= N; it is only written, never
 *      read before written (it may hold NaN garbage on entry).
 *   x and y must not overlap.
 *
 * Numerics: every y[i, j] is a sum over k in ascending order of x[i, k] times the
 * weight's float value w[j, k], in summation blocks of FL_SUM_BLOCK values of k: each
 * block's multiply-add chain starts from zero (its partial sum p), and the partial sums
 * are added in ascending order (y = p for the first block, y = y + p after it); then,
 * once, the int8 scale (y * s[j]) and the bias (y + b[j]). The order is fixed by k and
 * the format alone (no split of K across threads or at the tuned block sizes), so a row's
 * result does not depend on M, on the row's position in the batch, on the thread count
 * or on the block sizes; the blocks make float32 as accurate as BLAS (the error grows
 * with sqrt(S/2 + K/2S) rather than sqrt(K)). Paths with FMA (AVX2, AVX-512) round each
 * multiply-add once and give the same bits; the portable path (kernels/ref.c) multiplies
 * then adds where its target has no FMA. The float value of a stored weight, exact in
 * float32:
 *   FL_BF16, FL_F16  the weight itself, widened;
 *   FL_I4            q * s, q in [-8, 7], s the scale of its group of `group` values
 *                    along k (the last group of a row may be shorter); the caller stores
 *                    scales with at most 21 significant bits, so the product is exact;
 *   FL_I8            q in [-128, 127] itself: the sum runs over the integers' values, and
 *                    the row's scale s[j] multiplies it once, before the bias:
 *                    y = (sum_k x[i, k] * q[j, k]) * s[j] + b[j] (a multiply, then an add).
 *
 * Integer activations (FL_I8Q, FL_I4Q: the weights and scales of FL_I8, FL_I4, x
 * quantized per row): no float multiply-add at all. Each row of x is quantized alone,
 * in float32 operations:
 *   a = max_k |x[i, k]|; a NaN or an Inf in the row makes s = NaN and every q = 0, so
 *       the row's outputs are NaN (no other row is touched); a = 0 makes s = 0, q = 0;
 *   else u = a < 2^-64 ? 2^64 : 1 (so that 127 / (a * u) is finite), s = a / 127,
 *       r = 127 / (a * u), q[k] = round_half_even((x[i, k] * u) * r) in [-127, 127]
 *       (|x * u * r| <= 127 (1 + 2^-24)^2 < 127.5);
 * then the dot products are exact integer sums, acc = sum_k q[k] * w[j, k] (|acc| <=
 * 127 * 128 * K < 2^31: K <= FL_I8Q_MAX_K), and each output is, in this order, never
 * fused:  y = float32(acc) * (s * s_w[j]);  y = y + b[j];  then the epilogue. FL_I4Q
 * quantizes each group of `group` values of a row of x as above, alone (its own a, u, s_g
 * and r: as fine as the weights' groups), sums each group, acc_g (|acc_g| <= 127 * 8 *
 * 128, exact in float32), and adds its products in ascending g:  y = 0;  y = y +
 * float32(acc_g) * (s_g * s_w[j, g]) for each g;  y = y + b[j]. Integer
 * sums are exact in any order, so every path (portable, AVX2, AVX-512, AVX-512 VNNI)
 * gives the same bits. The VNNI kernel (vpdpbusd multiplies unsigned by signed bytes)
 * adds 128 to each q and subtracts 128 * sum_k w[j, k], packed with the weights; its
 * running sums may pass the int32 range and still end exact, because vpdpbusd and
 * vpaddd wrap modulo 2^32 (never the saturating vpdpbusds). The other paths multiply
 * int16 pairs (vpmaddwd), which cannot saturate: no vpmaddubsw (2 * 255 * 127 > 2^15).
 *
 * Threads: fl_forward() may run an OpenMP team of up to `nthreads`; scratch memory is
 * per call, so concurrent calls from different threads on one fl_packed are safe.
 * Sizes are size_t throughout: M*K, K*N and M*N may exceed 2^31.
 */
#ifndef FASTLINEAR_H
#define FASTLINEAR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Values of k per summation block (Numerics above): never tuned, as it sets the bits. It
 * equals the largest int4 group, and every k block is made of whole summation blocks. */
#define FL_SUM_BLOCK 128

/* The weights' storage type (the activations' type follows from it, above). */
typedef enum {
    FL_F32, FL_F64, FL_BF16, FL_F16, FL_I8, FL_I4, FL_I8Q, FL_I4Q, FL_NDTYPES
} fl_dtype;

/* The most values of k FL_I8Q weights take: their integer sums then fit in int32. */
#define FL_I8Q_MAX_K 132104

enum { FL_OK = 0, FL_ENOMEM = 1 };

typedef struct fl_packed fl_packed;

/* Allocates zeroed packed weights for an N x K matrix of the given type, for the kernel
 * chosen by fl_isa_name(): int4 keeps one scale per `group` (32, 64 or 128) values along
 * k (ignored for other types). NULL when memory cannot be allocated. */
fl_packed *fl_alloc(fl_dtype dtype, size_t n, size_t k, size_t group);
void fl_free(fl_packed *p);
/* Packs rows [j0, j0 + rows) of W and their scales; callers may pack a large matrix a
 * block of rows at a time. w holds those rows: float, double, or the raw 16 bits
 * of bfloat16 and float16 (strides rs_w, cs_w in elements); int8 (FL_I8, FL_I8Q; strides
 * in elements) with `scale` holding one scale per row; int4 (FL_I4, FL_I4Q) as two
 * values per byte, the even k in the low nibble, each row ceil(K/2) bytes at a row
 * stride of rs_w bytes (cs_w ignored), with `scale` holding rows x ceil(K/group)
 * scales, row-major. `scale` is ignored for the
 * other types. */
void fl_pack_rows(fl_packed *p, size_t j0, size_t rows, const void *w, ptrdiff_t rs_w,
                  ptrdiff_t cs_w, const float *scale);
/* Writes the stored form back, in fl_pack_rows()'s layouts, contiguous: all of W into w
 * (N x K elements; int4: N rows of ceil(K/2) bytes), the scales (int8, int4) into
 * `scale`. */
void fl_unpack(const fl_packed *p, void *w, float *scale);

/* y = x @ W.T + b for M rows (b NULL: no bias). Returns FL_OK or FL_ENOMEM (y
 * untouched then). */
int fl_forward(const fl_packed *p, const void *b, size_t m, const void *x, size_t ldx,
               void *y, size_t ldy, int nthreads);

/* The same for weights of type FL_F32 or FL_F64 as the caller holds them (N rows of K
 * values, unit stride along k, row stride ldw), for one-off products: each block of
 * weights is packed as the call reaches it, by the thread that uses it, so W is read
 * once; the same bits as fl_forward on the same weights packed by fl_pack_rows. */
int fl_forward_plain(fl_dtype dtype, size_t n, size_t k, const void *w, size_t ldw,
                     const void *b, size_t m, const void *x, size_t ldx, void *y,
                     size_t ldy, int nthreads);

/* Activations, applied elementwise: as the epilogue of a Linear step (after the bias, on
 * the tile just computed, before it leaves the cache) or as a step of their own. They
 * are fastlinear's own code (activation.h): the same bits on every ISA and machine.
 *   RELU x < 0 ? 0 : x (NaN stays NaN)       LEAKY_RELU  x > 0 ? x : x * alpha
 *   GELU x Phi(x) (erf)    GELU_TANH torch's tanh approximation    SILU x sigmoid(x)
 *   SIGMOID 1 / (1 + exp(-x))                TANH */
typedef enum {
    FL_ACT_NONE, FL_ACT_RELU, FL_ACT_LEAKY_RELU, FL_ACT_GELU, FL_ACT_GELU_TANH, FL_ACT_SILU,
    FL_ACT_SIGMOID, FL_ACT_TANH, FL_NACTS
} fl_act;
typedef struct {
    fl_act act;
    double alpha;  /* LEAKY_RELU's negative slope */
    /* A Linear's only: NULL, or N values each (the activations' type) that make each
     * output y[j] * scale[j] + shift[j] (a multiply, then an add) after the bias and
     * before the activation: a BatchNorm1d fused into the Linear before it. */
    const void *scale, *shift;
} fl_epilogue;

/* A model: steps applied in order to each row of x; each row is computed alone (the
 * promise above holds for the whole chain). Values are float64 where dtype is FL_F64,
 * else float32 (the weights of LINEAR steps may be any format of that family). */
typedef enum {
    FL_STEP_LINEAR,     /* y = x @ W.T + b, then ep (scale and shift, activation) */
    FL_STEP_ACT,        /* y = ep(x) */
    FL_STEP_AFFINE,     /* y[j] = x[j] * a[j] + b[j] (a BatchNorm1d not after a Linear) */
    FL_STEP_LAYERNORM,  /* y = (x - mean) / sqrt(var + eps) (* a[j] + b[j] when a, b) */
    FL_STEP_SOFTMAX,    /* y = exp(x - max) / sum(exp(x - max)) */
    FL_STEP_LOGSOFTMAX  /* y = (x - max) - log(sum(exp(x - max))) */
} fl_step_kind;
typedef struct {
    fl_step_kind kind;
    size_t width;            /* values per row this step writes (LINEAR: W's N) */
    const fl_packed *linear; /* LINEAR, with its bias b (NULL: none), N values */
    const void *bias;
    fl_epilogue ep;          /* LINEAR, ACT */
    const void *a, *b;       /* AFFINE, LAYERNORM (both NULL: no affine): width values */
    double eps;              /* LAYERNORM */
} fl_step;

/* Runs the steps over the m rows of x (width_in values each, row stride ldx) into y (the
 * last step's width, row stride ldy): one team of up to nthreads threads for every step,
 * the rows between steps in per-call buffers, a block of FL_MODEL_ROWS rows at a time.
 * LINEAR steps' weights must take width_in (or the previous step's width) values. x and
 * y must not overlap; no steps copy x. Returns FL_OK or FL_ENOMEM (y untouched then). */
int fl_model_forward(const fl_step *steps, size_t nsteps, fl_dtype dtype, size_t width_in,
                     size_t m, const void *x, size_t ldx, void *y, size_t ldy,
                     int nthreads);

/* Name of the micro-kernel ISA that fl_alloc() uses now: the best one this CPU supports,
 * picked on first use. Weights already packed keep the kernel they were packed for. */
const char *fl_isa_name(void);
/* Makes fl_alloc() use the named ISA ("ref", ...). Returns 0, or -1 for an unknown name,
 * -2 for an ISA this CPU (or this build) lacks. Not thread-safe: call it at start-up. */
int fl_set_isa(const char *name);
/* Name of the i-th ISA this CPU and build support, best last; NULL past the end. */
const char *fl_supported_isa(int i);
/* Block sizes (kernel.h): the register tile MR x NR, the k, row and column blocks, how
 * far ahead tiles of several rows ask for weights that come from cache (bytes, 0: they
 * do not), and the most bytes of x read in place. */
typedef struct { size_t mr, nr, kc, mc, nc, ahead, direct_x_max_bytes; } fl_blocking;
/* Sets the block sizes (kernel.h: KC, MC, NC, and the prefetch distance `ahead` for
 * weights that come from cache) that calls with weights of `dtype`'s value type
 * (float32 for every format but FL_F64) use on the named ISA from their next start on:
 * `threads` 0, calls of any thread count (kc, mc, nc all 0: the ISA's own again, no
 * prefetch); `threads` > 0, only calls of that many threads, which then ignore the sizes
 * for any count (all 0: they no longer do). They never change the bits (the order of
 * each sum is fixed by k alone), only the speed. Returns 0, -1 for an unknown ISA or a
 * negative count, -2 for sizes the kernel cannot take (kc a multiple of FL_SUM_BLOCK, mc
 * of MR, nc of NR, all positive and at most 2^20; ahead a multiple of 64 up to 64 KiB),
 * -3 where 8 thread counts already have sizes of their own. */
int fl_set_blocking(const char *isa, fl_dtype dtype, size_t kc, size_t mc, size_t nc,
                    size_t ahead, int threads);
/* The named ISA's own block sizes for `dtype` (its kernels/<isa>.c): 0, or -1 for an
 * ISA this build lacks. */
int fl_default_blocking(const char *isa, fl_dtype dtype, fl_blocking *out);
/* The block sizes calls of `threads` threads use now for `dtype` (for tests and
 * diagnostics). */
void fl_get_blocking(fl_dtype dtype, int threads, fl_blocking *out);
/* The size of the last-level cache that calls share (fastlinear sets the L3's, read from
 * the OS; default 32 MiB): the packed weights of a call that exceed half of it are
 * streamed from memory with software prefetch, smaller ones read from cache without.
 * Only the speed depends on it. */
void fl_set_cache_bytes(size_t bytes);
/* 1 when built with OpenMP, else 0. */
int fl_openmp_enabled(void);
/* Thread count OpenMP would use by default (OMP_NUM_THREADS, affinity); 1 without OpenMP. */
int fl_default_threads(void);

#ifdef __cplusplus
}
#endif
#endif
