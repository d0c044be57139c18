/* Packing: weights once per layer (fl_pack), blocks of x per call (fl_pack_x). */
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

/* dst[p*k*nr + kk*nr + j] = W[p*nr + j, kk], zero past n. Reads each weight row along k. */
static void pack_w_f32(size_t n, size_t k, size_t nr, const float *w, ptrdiff_t rs,
                       ptrdiff_t cs, float *dst)
{
    for (size_t j = 0; j < n; j++) {
        const float *row = w + (ptrdiff_t)j * rs;
        float *panel = dst + (j / nr) * k * nr + j % nr;
        for (size_t kk = 0; kk < k; kk++)
            panel[kk * nr] = row[(ptrdiff_t)kk * cs];
    }
}

static void pack_w_f64(size_t n, size_t k, size_t nr, const double *w, ptrdiff_t rs,
                       ptrdiff_t cs, double *dst)
{
    for (size_t j = 0; j < n; j++) {
        const double *row = w + (ptrdiff_t)j * rs;
        double *panel = dst + (j / nr) * k * nr + j % nr;
        for (size_t kk = 0; kk < k; kk++)
            panel[kk * nr] = row[(ptrdiff_t)kk * cs];
    }
}

size_t fl_dtype_size(fl_dtype dtype)
{
    return dtype == FL_F32 ? sizeof(float) : sizeof(double);
}

fl_packed *fl_pack(fl_dtype dtype, size_t n, size_t k, const void *w, ptrdiff_t rs_w,
                   ptrdiff_t cs_w, const void *b, ptrdiff_t bs)
{
    const fl_kernel *kern = &fl_current_isa()->k[dtype];
    const size_t nr = kern->nr, size = fl_dtype_size(dtype);
    fl_packed *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kern = kern;
    p->dtype = dtype;
    p->n = n;
    p->k = k;
    p->panels = (n + nr - 1) / nr;
    if (k != 0 && p->panels * nr > SIZE_MAX / k)
        goto fail;
    p->w = aligned_zalloc(p->panels * nr * k, size);
    if (!p->w)
        goto fail;
    if (b) {
        p->bias = aligned_zalloc(p->panels * nr, size);
        if (!p->bias)
            goto fail;
    }
    if (dtype == FL_F32) {
        pack_w_f32(n, k, nr, w, rs_w, cs_w, p->w);
        for (size_t j = 0; b && j < n; j++)
            ((float *)p->bias)[j] = ((const float *)b)[(ptrdiff_t)j * bs];
    } else {
        pack_w_f64(n, k, nr, w, rs_w, cs_w, p->w);
        for (size_t j = 0; b && j < n; j++)
            ((double *)p->bias)[j] = ((const double *)b)[(ptrdiff_t)j * bs];
    }
    return p;
fail:
    fl_free(p);
    return NULL;
}

void fl_free(fl_packed *p)
{
    if (!p)
        return;
    free(p->w);
    free(p->bias);
    free(p);
}

void fl_pack_x(fl_dtype dtype, size_t mr, size_t m, size_t kc, const void *x, size_t ldx,
               void *dst)
{
    /* Row by row, so x is read along k, contiguously. */
    for (size_t i = 0; i < m; i++) {
        const size_t off = (i / mr) * kc * mr + i % mr;
        if (dtype == FL_F32) {
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
