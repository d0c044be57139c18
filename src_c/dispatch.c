/* Picks the micro-kernel ISA once: the best one this CPU runs, unless fl_set_isa() says
 * otherwise (the Python layer passes FASTLINEAR_ISA through it). */
#include <string.h>
#include "blocking.h"
#include "kernel.h"

/* Worst first; the last one this CPU supports is the default. */
static const fl_isa *const all_isas[] = {
    &fl_isa_ref,
#if defined(__x86_64__) || defined(__i386__)
    &fl_isa_avx2,    /* x86-64 with AVX2 and FMA: Haswell (2013) and later, Zen 1-3 */
    &fl_isa_avx512,  /* x86-64 with AVX-512F: Skylake-SP and later Xeons, Zen 4 */
#endif
};
enum { N_ISAS = sizeof all_isas / sizeof all_isas[0] };

static const fl_isa *current;

const fl_isa *fl_current_isa(void)
{
    if (!current) {
        /* Benign race: every thread computes the same answer. */
        const fl_isa *best = all_isas[0];
        for (int i = 0; i < N_ISAS; i++)
            if (all_isas[i]->cpu_has())
                best = all_isas[i];
        current = best;
    }
    return current;
}

const char *fl_isa_name(void) { return fl_current_isa()->name; }

int fl_set_isa(const char *name)
{
    for (int i = 0; i < N_ISAS; i++) {
        if (strcmp(all_isas[i]->name, name) == 0) {
            if (!all_isas[i]->cpu_has())
                return -2;
            current = all_isas[i];
            return 0;
        }
    }
    return -1;
}

const char *fl_supported_isa(int i)
{
    for (int j = 0; j < N_ISAS; j++)
        if (all_isas[j]->cpu_has() && i-- == 0)
            return all_isas[j]->name;
    return NULL;
}

void fl_get_blocking(fl_dtype dtype, fl_blocking *out)
{
    const fl_kernel *k = &fl_current_isa()->k[dtype];
    *out = (fl_blocking){k->mr, k->nr, k->kc, k->mc, k->nc, FL_DIRECT_X_MAX_BYTES};
}
