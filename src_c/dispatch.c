/* Picks the micro-kernel ISA once: the best one this CPU runs, unless fl_set_isa() says
 * otherwise (the Python layer passes FASTLINEAR_ISA through it). */
#include <stdatomic.h>
#include <string.h>
#include "blocking.h"
#include "kernel.h"

/* Worst first; the last one this CPU supports is the default. */
static const fl_isa *const all_isas[] = {
    &fl_isa_ref,
#if defined(__x86_64__) || defined(__i386__)
    &fl_isa_avx2,    /* x86-64 with AVX2 and FMA: Haswell (2013) and later, Zen 1-3 */
    &fl_isa_avx512,  /* x86-64 with AVX-512F and BW: Skylake-SP and later Xeons, Zen 4 */
    &fl_isa_avx512_vnni,  /* and VNNI: Ice Lake and later Xeons, Zen 4 and 5 */
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

static atomic_size_t cache_bytes = (size_t)32 << 20;

void fl_set_cache_bytes(size_t bytes)
{
    atomic_store_explicit(&cache_bytes, bytes, memory_order_relaxed);
}

size_t fl_cache_bytes(void) { return atomic_load_explicit(&cache_bytes, memory_order_relaxed); }

/* Block sizes set by fl_set_blocking, per ISA and value type: slot 0 for calls of any
 * thread count (0: the ISA's own), then up to FL_COUNTS thread counts whose calls use
 * sizes of their own (tuned for them), each slot {threads, kc, mc, nc, ahead}, threads 0
 * when free. Every value is valid on its own, so a call that reads them while another
 * thread sets them gets sizes it can use (the bits never depend on them). */
enum { FL_COUNTS = 8, FL_AHEAD_MOST = 4 * FL_PREFETCH_BYTES };
static atomic_size_t chosen[N_ISAS][2][1 + FL_COUNTS][5];

static int isa_index(const fl_isa *isa)
{
    for (int i = 0; i < N_ISAS; i++)
        if (all_isas[i] == isa)
            return i;
    return -1;
}

static size_t load(atomic_size_t *v) { return atomic_load_explicit(v, memory_order_acquire); }

/* The first of slots 1 .. FL_COUNTS of ISA i, value type v held for `threads` threads
 * (0: a free one); 0, the slot of any count, where there is none. */
static int slot_of(int i, int v, size_t threads)
{
    for (int j = 1; j <= FL_COUNTS; j++)
        if (load(&chosen[i][v][j][0]) == threads)
            return j;
    return 0;
}

fl_blocks fl_blocks_in_force(const fl_isa *isa, fl_dtype dtype, int threads)
{
    const fl_kernel *k = &isa->k[dtype];
    fl_blocks bl = {k->kc, k->mc, k->nc, 0};
    const int i = isa_index(isa), v = fl_formats[dtype].values == FL_F64;
    if (i < 0)
        return bl;
    const int s = threads > 0 ? slot_of(i, v, (size_t)threads) : 0;
    const size_t kc = load(&chosen[i][v][s][1]), mc = load(&chosen[i][v][s][2]),
                 nc = load(&chosen[i][v][s][3]);
    return (fl_blocks){kc ? kc : bl.kc, mc ? mc : bl.mc, nc ? nc : bl.nc,
                       load(&chosen[i][v][s][4])};
}

int fl_set_blocking(const char *name, fl_dtype dtype, size_t kc, size_t mc, size_t nc,
                    size_t ahead, int threads)
{
    int i = 0;
    while (i < N_ISAS && strcmp(all_isas[i]->name, name) != 0)
        i++;
    if (i == N_ISAS || dtype < 0 || dtype >= FL_NDTYPES || threads < 0)
        return -1;
    const fl_kernel *k = &all_isas[i]->k[dtype];
    const size_t most = (size_t)1 << 20;
    const int clear = !kc && !mc && !nc;
    if (!clear && (!kc || kc % FL_SUM_BLOCK || kc > most || !mc || mc % k->mr || mc > most
                   || !nc || nc % k->nr || nc > most || ahead % 64 || ahead > FL_AHEAD_MOST))
        return -2;
    const int v = fl_formats[dtype].values == FL_F64;
    int s = threads > 0 ? slot_of(i, v, (size_t)threads) : 0;
    if (threads > 0 && !s) {  /* no slot of its own yet: a free one, claimed below */
        if (clear)
            return 0;
        if (!(s = slot_of(i, v, 0)))
            return -3;
    }
    atomic_size_t *slot = chosen[i][v][s];
    if (s && clear)  /* free the slot first: its calls go back to slot 0 */
        atomic_store_explicit(&slot[0], 0, memory_order_release);
    atomic_store_explicit(&slot[1], kc, memory_order_relaxed);
    atomic_store_explicit(&slot[2], mc, memory_order_relaxed);
    atomic_store_explicit(&slot[3], nc, memory_order_relaxed);
    atomic_store_explicit(&slot[4], clear ? 0 : ahead, memory_order_relaxed);
    if (s && !clear)  /* then claimed, its sizes in place */
        atomic_store_explicit(&slot[0], (size_t)threads, memory_order_release);
    return 0;
}

int fl_default_blocking(const char *name, fl_dtype dtype, fl_blocking *out)
{
    for (int i = 0; i < N_ISAS; i++)
        if (strcmp(all_isas[i]->name, name) == 0) {
            const fl_kernel *k = &all_isas[i]->k[dtype];
            *out = (fl_blocking){k->mr, k->nr, k->kc, k->mc, k->nc, 0, FL_DIRECT_X_MAX_BYTES};
            return 0;
        }
    return -1;
}

void fl_get_blocking(fl_dtype dtype, int threads, fl_blocking *out)
{
    const fl_isa *isa = fl_current_isa();
    const fl_kernel *k = &isa->k[dtype];
    const fl_blocks bl = fl_blocks_in_force(isa, dtype, threads);
    *out = (fl_blocking){k->mr, k->nr, bl.kc, bl.mc, bl.nc, bl.ahead, FL_DIRECT_X_MAX_BYTES};
}
