/* Threads of a call (threads.c): what the GEMM driver and the model runner take from it.
 * Not part of the public API. */
#ifndef FL_THREADS_H
#define FL_THREADS_H

#include <stddef.h>

/* Threads for a call of `madds` multiply-adds asked to use nthreads: 1 for small calls,
 * after a fork (threads.c), or without OpenMP; calls running at once share the cores.
 * Every fl_threads_begin() is paired with one fl_threads_end(). */
size_t fl_threads_begin(double madds, int nthreads);
void fl_threads_end(void);
/* Marks that an OpenMP team is about to run (see the fork note in threads.c). */
void fl_team_starting(void);
int fl_thread_id(void);
int fl_team_size(void);

#endif
