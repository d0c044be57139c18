/* The micro-kernels and packing on their own, every ISA this CPU runs, every tile height
 * and width, with a guard page right after every buffer (one element too far faults) and
 * canaries around the output tile (a write outside it is caught). Exits non-zero on the
 * first failure. Built and run by tests/test_c_kernels.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kernel.h"

static size_t page;

/* `bytes` that end exactly where an inaccessible page begins. */
static void *guarded(size_t bytes, void **region, size_t *region_len)
{
    const size_t body = (bytes + page - 1) / page * page;
    *region_len = body + page;
    char *r = mmap(NULL, *region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED || mprotect(r + body, page, PROT_NONE) != 0) {
        perror("mmap");
        exit(2);
    }
    *region = r;
    return r + body - bytes;
}

static double value(size_t seed) { return (double)((seed * 2654435761u) % 1000) / 250.0 - 2.0; }

static double get(fl_dtype dt, const void *p, size_t i)
{
    return dt == FL_F32 ? ((const float *)p)[i] : ((const double *)p)[i];
}

static void set(fl_dtype dt, void *p, size_t i, double v)
{
    if (dt == FL_F32)
        ((float *)p)[i] = (float)v;
    else
        ((double *)p)[i] = v;
}

static const double CANARY = 12345.5;
static int failures;

/* One kernel call: m x n tile, kc values of k, x packed or in place, with or without a
 * previous partial sum in y (first) and a bias. */
static void check_tile(const char *isa, fl_dtype dt, const fl_kernel *kr, size_t m, size_t n,
                       size_t kc, int packed, int first, int with_bias)
{
    const size_t size = dt == FL_F32 ? 4 : 8, mr = kr->mr, nr = kr->nr;
    const size_t ldx = kc + 3, ldy = n + 2;
    void *rx, *rw, *rb, *ry;
    size_t lx, lw, lb, ly;
    /* x in place: rows i < m at i * ldx, the last row ending at the guard. Packed: a
     * micro-panel of MR rows, only rows i < m meaningful. */
    const size_t x_elems = packed ? kc * mr : (m - 1) * ldx + kc;
    char *x = guarded((x_elems ? x_elems : 1) * size, &rx, &lx);
    char *w = guarded((kc ? kc : 1) * nr * size, &rw, &lw);
    char *b = guarded(nr * size, &rb, &lb);
    const size_t y_elems = (m - 1) * ldy + n;
    char *y = guarded(y_elems * size, &ry, &ly);
    for (size_t i = 0; i < x_elems; i++)
        set(dt, x, i, value(i + 1));
    for (size_t i = 0; i < kc * nr; i++)
        set(dt, w, i, i % nr < n ? value(7 * i + 3) : 0.0);
    for (size_t j = 0; j < nr; j++)
        set(dt, b, j, j < n ? value(j + 11) : 0.0);
    for (size_t i = 0; i < y_elems; i++)
        set(dt, y, i, (i % ldy) < n ? (first ? NAN : value(i + 5)) : CANARY);

    kr->run(kc, x, packed ? 1 : (ptrdiff_t)ldx, packed ? (ptrdiff_t)mr : 1, w, 0, 0, 0, y, ldy, m,
            n, first, NULL, with_bias ? b : NULL);

    const double eps = dt == FL_F32 ? 1.2e-7 : 2.3e-16;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < ldy && i * ldy + j < y_elems; j++) {
            const double got = get(dt, y, i * ldy + j);
            if (j >= n) {
                if (got != CANARY) {
                    printf("%s f%zu m=%zu n=%zu kc=%zu: wrote outside the tile at (%zu, %zu)\n",
                           isa, size * 8, m, n, kc, i, j);
                    failures++;
                }
                continue;
            }
            double want = first ? 0.0 : value(i * ldy + j + 5), scale = fabs(want);
            for (size_t k = 0; k < kc; k++) {
                const double a = value((packed ? k * mr + i : i * ldx + k) + 1);
                const double wv = value(7 * (k * nr + j) + 3);
                want += a * wv;
                scale += fabs(a * wv);
            }
            if (with_bias) {
                want += value(j + 11);
                scale += fabs(value(j + 11));
            }
            if (!(fabs(got - want) <= 2 * (kc + 3) * eps * scale)) {
                printf("%s f%zu m=%zu n=%zu kc=%zu packed=%d first=%d bias=%d: y(%zu, %zu) = %g, "
                       "expected %g\n", isa, size * 8, m, n, kc, packed, first, with_bias, i, j,
                       got, want);
                failures++;
            }
        }
    munmap(rx, lx);
    munmap(rw, lw);
    munmap(rb, lb);
    munmap(ry, ly);
}

/* fl_pack_x writes exactly the micro-panels it is given, element (i, k) at its place. */
static void check_pack_x(fl_dtype dt, size_t mr, size_t m, size_t kc)
{
    const size_t size = dt == FL_F32 ? 4 : 8, ldx = kc + 1;
    const size_t panels = (m + mr - 1) / mr, dst_elems = panels * kc * mr;
    void *rx, *rd;
    size_t lx, ld;
    char *x = guarded(((m - 1) * ldx + kc) * size, &rx, &lx);
    char *d = guarded(dst_elems * size, &rd, &ld);
    for (size_t i = 0; i < (m - 1) * ldx + kc; i++)
        set(dt, x, i, value(i));
    fl_pack_x(dt, mr, m, kc, x, ldx, d);
    for (size_t i = 0; i < m; i++)
        for (size_t k = 0; k < kc; k++)
            if (get(dt, d, (i / mr) * kc * mr + k * mr + i % mr) != get(dt, x, i * ldx + k)) {
                printf("fl_pack_x f%zu mr=%zu m=%zu kc=%zu: element (%zu, %zu) misplaced\n",
                       size * 8, mr, m, kc, i, k);
                failures++;
            }
    munmap(rx, lx);
    munmap(rd, ld);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);  /* every line out before a guard page faults */
    page = (size_t)sysconf(_SC_PAGESIZE);
    int isas = 0;
    for (const char *isa; (isa = fl_supported_isa(isas)) != NULL; isas++) {
        fl_set_isa(isa);
        for (int d = 0; d < 2; d++) {
            const fl_kernel *kr = &fl_current_isa()->k[d];
            const size_t heights[] = {1, 2, 4, kr->mr};
            for (size_t h = 0; h < 4; h++) {
                if (heights[h] > kr->mr)
                    continue;
                for (size_t n = 1; n <= kr->nr; n++)
                    for (size_t kc = 0; kc <= 9; kc += 3)
                        for (int variant = 0; variant < 8; variant++)
                            check_tile(isa, (fl_dtype)d, kr, heights[h], n, kc, variant & 1,
                                       (variant >> 1) & 1, (variant >> 2) & 1);
            }
            for (size_t m = 1; m <= 2 * kr->mr + 1; m++)
                check_pack_x((fl_dtype)d, kr->mr, m, 5);
        }
        printf("%s: checked\n", isa);
    }
    if (failures)
        printf("%d failures\n", failures);
    return failures ? 1 : isas ? 0 : 3;
}
