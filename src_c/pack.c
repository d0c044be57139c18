/* Packing: weights once per layer (fl_alloc, fl_pack_rows; fl_unpack gives them back),
 * their float values for the float32 kernel (fl_expand, by the ISA's widener), blocks
 * of x per call (fl_pack_x). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernel.h"

enum { FL_ALIGN = 64 };  /* one cache line, and the width of an AVX-512 load */

void *fl_aligned_alloc(size_t count, size_t size)
{
    if (size != 0 && count > (SIZE_MAX - FL_ALIGN) / size)
        return NULL;
    const size_t bytes = count * size;
    void *p = NULL;
    if (posix_memalign(&p, FL_ALIGN, bytes ? bytes : 1) != 0)
        return NULL;
    return p;
}

static void *aligned_zalloc(size_t count, size_t size)
{
    void *p = fl_aligned_alloc(count, size);
    if (p)
        memset(p, 0, count * size);
    return p;
}

/* Bytes of one stored weight (int4: see fl_panel_offset). */
static size_t weight_size(fl_dtype dt) { return (fl_formats[dt].bits + 7) / 8; }

/* int4: one group of a panel is NR float scales (FL_I4Q: then NR int32 sums, kernel.h),
 * then `group` rows of NR/2 bytes. */
static size_t group_bytes(fl_dtype dt, size_t nr, size_t group)
{
    return nr * sizeof(float) * (fl_formats[dt].quantizes_x ? 2 : 1) + group * nr / 2;
}

size_t fl_panel_offset(const fl_packed *p, size_t pc)
{
    const size_t nr = p->kern->nr;
    return fl_formats[p->dtype].scale == FL_SCALE_GROUP
               ? pc / p->group * group_bytes(p->dtype, nr, p->group)
                             : pc * nr * weight_size(p->dtype);
}

/* Where column c (< nr) of an int4 row keeps its nibble: byte, and shift within it. */
static size_t nibble_byte(size_t c, size_t nr) { return c < nr / 2 ? c : c - nr / 2; }
static unsigned nibble_shift(size_t c, size_t nr) { return c < nr / 2 ? 0 : 4; }

static unsigned char *i4_row(const fl_packed *p, unsigned char *panel, size_t kk)
{
    const size_t nr = p->kern->nr;
    return panel + kk / p->group * group_bytes(p->dtype, nr, p->group) + nr * sizeof(float)
           + kk % p->group * nr / 2;
}

static float *i4_scales(const fl_packed *p, unsigned char *panel, size_t g)
{
    return (float *)(panel + g * group_bytes(p->dtype, p->kern->nr, p->group));
}

/* FL_I4Q: the byte of a panel that holds value (kk, c) of its group's steps, and the
 * value's shift in it (kernel.h's layout). */
static unsigned char *i4q_byte(const fl_packed *p, unsigned char *panel, size_t kk, size_t c,
                               unsigned *shift)
{
    const size_t nr = p->kern->nr, qk = p->kern->qk, half = nr * qk / 2;
    const size_t v = c * qk + kk % qk;
    *shift = v < half ? 0 : 4;
    return (unsigned char *)i4_scales(p, panel, kk / p->group) + 2 * nr * sizeof(float)
           + kk % p->group / qk * half + (v < half ? v : v - half);
}

/* Copies one value of `size` bytes (aligned for its type). */
static void copy_value(size_t size, void *dst, const void *src)
{
    switch (size) {
    case 8: *(uint64_t *)dst = *(const uint64_t *)src; break;
    case 4: *(uint32_t *)dst = *(const uint32_t *)src; break;
    case 2: *(uint16_t *)dst = *(const uint16_t *)src; break;
    default: *(uint8_t *)dst = *(const uint8_t *)src; break;
    }
}

/* Moves rows [j0, j0 + rows) of the weights (and their scales) between the panels and
 * the caller's layout of fl_pack_rows(), w and scale pointing at row j0: into the panels
 * when to_panel is set, else out of them (int4 bytes of w must then be zero: nibbles
 * are or-ed in). */
static void transfer(fl_packed *p, size_t j0, size_t rows, void *w, ptrdiff_t rs,
                     ptrdiff_t cs, float *scale, int to_panel)
{
    const size_t nr = p->kern->nr, k = p->k, wsize = weight_size(p->dtype);
    for (size_t r = 0; r < rows; r++) {
        const size_t j = j0 + r, c = j % nr;
        unsigned char *panel = (unsigned char *)p->w + j / nr * p->panel_bytes;
        if (fl_formats[p->dtype].scale == FL_SCALE_GROUP) {
            const size_t groups = (k + p->group - 1) / p->group;
            const unsigned shift = nibble_shift(c, nr);
            unsigned char *row = (unsigned char *)w + (ptrdiff_t)r * rs;
            for (size_t g = 0; g < groups; g++) {
                float *s = &i4_scales(p, panel, g)[c];
                if (to_panel)
                    *s = scale[r * groups + g];
                else
                    scale[r * groups + g] = *s;
            }
            uint32_t sum = 0;  /* FL_I4Q: of the group's values, modulo 2^32 */
            for (size_t kk = 0; kk < k; kk++) {
                unsigned sh = shift;
                unsigned char *packed = fl_formats[p->dtype].quantizes_x
                                            ? i4q_byte(p, panel, kk, c, &sh)
                                            : i4_row(p, panel, kk) + nibble_byte(c, nr);
                unsigned char *plain = row + kk / 2;
                const unsigned plain_shift = kk % 2 ? 4 : 0, q = (*plain >> plain_shift) & 15u;
                if (to_panel)
                    *packed = (unsigned char)((*packed & ~(15u << sh)) | q << sh);
                else
                    *plain |= (unsigned char)(((*packed >> sh) & 15u) << plain_shift);
                if (fl_formats[p->dtype].quantizes_x && to_panel) {
                    sum += q < 8 ? q : q - 16u;
                    if (kk + 1 == k || (kk + 1) % p->group == 0) {
                        int32_t *s = (int32_t *)(void *)(i4_scales(p, panel, kk / p->group) + nr);
                        s[c] = (int32_t)(sum * (uint32_t)p->kern->qshift);
                        sum = 0;
                    }
                }
            }
            continue;
        }
        char *row = (char *)w + (ptrdiff_t)r * rs * (ptrdiff_t)wsize;
        /* steps of qk values of k, each NR columns of qk values (kernel.h's fl_qkernel);
         * qk = 1 for the float kernels' layout */
        const size_t qk = p->kern->qk ? p->kern->qk : 1;
        unsigned char *col = panel + c * qk * wsize;
        uint32_t sum = 0;  /* FL_I8Q: modulo 2^32, as the kernel subtracts it */
        for (size_t kk = 0; kk < k; kk++) {
            char *plain = row + (ptrdiff_t)kk * cs * (ptrdiff_t)wsize;
            unsigned char *packed = col + (kk / qk * nr * qk + kk % qk) * wsize;
            if (to_panel)
                copy_value(wsize, packed, plain);
            else
                copy_value(wsize, plain, packed);
            if (p->wsum)
                sum += (uint32_t)(int32_t)*(const signed char *)packed;
        }
        if (p->wsum && to_panel)
            p->wsum[j] = (int32_t)(sum * (uint32_t)p->kern->qshift);
        if (fl_formats[p->dtype].scale == FL_SCALE_ROW) {
            if (to_panel)
                p->scale[j] = scale[r];
            else
                scale[r] = p->scale[j];
        }
    }
}

fl_packed *fl_alloc(fl_dtype dtype, size_t n, size_t k, size_t group)
{
    const fl_isa *isa = fl_current_isa();
    const fl_kernel *kern = &isa->k[dtype];
    const size_t nr = kern->nr;
    fl_packed *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->isa = isa;
    p->kern = kern;
    p->dtype = dtype;
    p->n = n;
    p->k = k;
    const int grouped = fl_formats[dtype].scale == FL_SCALE_GROUP;
    p->group = grouped ? group : 0;
    p->panels = (n + nr - 1) / nr;
    /* The panel's bytes, checked against overflow (then rounded up to a cache line). */
    const size_t unit = grouped ? group_bytes(dtype, nr, group) : nr * weight_size(dtype);
    const size_t qk = kern->qk ? kern->qk : 1;  /* FL_I8Q: whole steps of k */
    const size_t units = grouped ? (k + group - 1) / group : (k + qk - 1) / qk * qk;
    if (units > SIZE_MAX / 2 / unit)
        goto fail;
    p->panel_bytes = (units * unit + 63) / 64 * 64;
    p->w = aligned_zalloc(p->panels, p->panel_bytes);
    if (!p->w)
        goto fail;
    if (fl_formats[dtype].scale == FL_SCALE_ROW
        && !(p->scale = aligned_zalloc(p->panels * nr, sizeof(float))))
        goto fail;
    if (fl_formats[dtype].quantizes_x && fl_formats[dtype].scale == FL_SCALE_ROW
        && !(p->wsum = aligned_zalloc(p->panels * nr, sizeof(int32_t))))
        goto fail;
    return p;
fail:
    fl_free(p);
    return NULL;
}

void fl_pack_rows(fl_packed *p, size_t j0, size_t rows, const void *w, ptrdiff_t rs_w,
                  ptrdiff_t cs_w, const float *scale)
{
    transfer(p, j0, rows, (void *)w, rs_w, cs_w, (float *)scale, 1);
}

void fl_unpack(const fl_packed *p, void *w, float *scale)
{
    const size_t row = (p->k * fl_formats[p->dtype].bits + 7) / 8 / weight_size(p->dtype);
    if (fl_formats[p->dtype].bits < 8)  /* nibbles are or-ed in */
        memset(w, 0, p->n * row);
    transfer((fl_packed *)p, 0, p->n, w, (ptrdiff_t)row, 1, scale, 0);
}

void fl_free(fl_packed *p)
{
    if (!p)
        return;
    free(p->w);
    free(p->scale);
    free(p->wsum);
    free(p);
}

void fl_expand(const fl_packed *p, size_t q, size_t pc, size_t kc, float *dst)
{
    const unsigned char *panel = (const unsigned char *)p->w + q * p->panel_bytes;
    p->kern->widen(kc, panel + fl_panel_offset(p, pc), p->group, dst);
}

typedef float fl_f4 __attribute__((vector_size(16)));
typedef float fl_f4_mem __attribute__((vector_size(16), aligned(4), may_alias));

/* dst[k * nr + c] = src[c * ld + k] for c < 4, k < 4: a 4 x 4 transpose in SSE/NEON
 * registers (four loads, eight shuffles, four stores instead of sixteen scattered
 * stores). */
static void transpose4(const float *src, size_t ld, float *dst, size_t nr)
{
    const fl_f4 r0 = *(const fl_f4_mem *)src, r1 = *(const fl_f4_mem *)(src + ld);
    const fl_f4 r2 = *(const fl_f4_mem *)(src + 2 * ld), r3 = *(const fl_f4_mem *)(src + 3 * ld);
    const fl_f4 t0 = __builtin_shufflevector(r0, r1, 0, 4, 1, 5);
    const fl_f4 t1 = __builtin_shufflevector(r0, r1, 2, 6, 3, 7);
    const fl_f4 t2 = __builtin_shufflevector(r2, r3, 0, 4, 1, 5);
    const fl_f4 t3 = __builtin_shufflevector(r2, r3, 2, 6, 3, 7);
    *(fl_f4_mem *)dst = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    *(fl_f4_mem *)(dst + nr) = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    *(fl_f4_mem *)(dst + 2 * nr) = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    *(fl_f4_mem *)(dst + 3 * nr) = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

void fl_pack_block(fl_dtype dtype, size_t nr, size_t cols, size_t kc, const void *w,
                   size_t ldw, void *dst)
{
    const size_t size = fl_value_size(dtype);
    memset(dst, 0, kc * nr * size);  /* the columns past `cols` */
    if (size == sizeof(float)) {
        const float *src = w;
        float *d = dst;
        size_t c = 0;
        /* 8 rows of W at a time, read along k: each step writes 32 bytes of a row of the
         * block (4 rows, 16, wrote each line 4 times from L2; 16 rows at a stride of a
         * power of two compete for the same L1 sets). 1x4096x4096 on Zen 4, 2 threads:
         * 3.7 ms with 4 rows, 3.0 with 8, 3.6 with 16 (numpy 1.4-1.5 ms). */
        for (; c + 8 <= cols; c += 8) {
            size_t kk = 0;
            for (; kk + 4 <= kc; kk += 4) {
                transpose4(src + c * ldw + kk, ldw, d + kk * nr + c, nr);
                transpose4(src + (c + 4) * ldw + kk, ldw, d + kk * nr + c + 4, nr);
            }
            for (; kk < kc; kk++)
                for (size_t i = 0; i < 8; i++)
                    d[kk * nr + c + i] = src[(c + i) * ldw + kk];
        }
        for (; c + 4 <= cols; c += 4) {
            size_t kk = 0;
            for (; kk + 4 <= kc; kk += 4)
                transpose4(src + c * ldw + kk, ldw, d + kk * nr + c, nr);
            for (; kk < kc; kk++)
                for (size_t i = 0; i < 4; i++)
                    d[kk * nr + c + i] = src[(c + i) * ldw + kk];
        }
        for (; c < cols; c++)
            for (size_t kk = 0; kk < kc; kk++)
                d[kk * nr + c] = src[c * ldw + kk];
        return;
    }
    const double *src = w;
    double *d = dst;
    for (size_t c = 0; c < cols; c++)  /* row by row, so W is read along k */
        for (size_t kk = 0; kk < kc; kk++)
            d[kk * nr + c] = src[c * ldw + kk];
}

void fl_pack_x(fl_dtype dtype, size_t mr, size_t m, size_t kc, const void *x, size_t ldx,
               void *dst)
{
    /* Row by row, so x is read along k, contiguously. */
    for (size_t i = 0; i < m; i++) {
        const size_t off = (i / mr) * kc * mr + i % mr;
        if (dtype != FL_F64) {
            const float *src = (const float *)x + i * ldx;
            float *d = (float *)dst + off;
            for (size_t k = 0; k < kc; k++)
                d[k * mr] = src[k];
        } else {
            const double *src = (const double *)x + i * ldx;
            double *d = (double *)dst + off;
            for (size_t k = 0; k < kc; k++)
                d[k * mr] = src[k];
        }
    }
}
