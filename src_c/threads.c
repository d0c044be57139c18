/* Threads: how many a call gets (fl_threads_begin: small calls, forks, calls running at
 * once from several threads of the caller's), and the OpenMP team's queries. The GEMM
 * driver (gemm.c) and the model runner (model.c) start their teams through these; the
 * bits never depend on the count. */
#include <stdatomic.h>
#include "blocking.h"
#include "fastlinear.h"
#include "threads.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef _OPENMP
#include <pthread.h>

/* libgomp cannot restart its thread team in a child forked after the team ran: the
 * child's first parallel region waits forever for threads that were not copied. So a
 * child forked after any team ran here computes on its calling thread alone (the same
 * bits; only slower). */
static volatile int team_started, forked_after_team;

static void after_fork_in_child(void) { forked_after_team = team_started; }

static void __attribute__((constructor)) watch_forks(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}
#endif

/* Calls running now, from any threads. Calls made at once from several threads (a
 * thread pool of the caller's) share the cores: each takes nthreads / running threads,
 * as teams larger than the machine spin against each other (measured, 2 pool workers on
 * 2 cores at 140x100x50: 0.30 of one caller's speed without this, 0.44 with; the pool's
 * own cost per task is most of the rest). The bits do not depend on it. */
static atomic_int running_calls;

int fl_team_size(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

int fl_thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void fl_team_starting(void)
{
#ifdef _OPENMP
    team_started = 1;
#endif
}

size_t fl_threads_begin(double madds, int nthreads)
{
    size_t threads = nthreads > 1 ? (size_t)nthreads : 1;
    if (madds < FL_PARALLEL_MIN_MADDS)
        threads = 1;
#ifdef _OPENMP
    if (forked_after_team)
        threads = 1;
#else
    threads = 1;
#endif
    const size_t running = (size_t)atomic_fetch_add(&running_calls, 1) + 1;
    return threads > running ? threads / running : 1;
}

void fl_threads_end(void) { atomic_fetch_sub(&running_calls, 1); }

int fl_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fl_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
