/* Block sizes, one table for every ISA and dtype. The reasoning, per number:
 *
 *   MR x NR  the register tile: MR*NR accumulators plus one weight row and one x value
 *            must fit in the vector registers, so nothing spills in the k loop.
 *   KC       one KC x NR weight slice (KC*NR*size bytes) plus MR x KC of x stay in L1d
 *            (32-48 KiB) while the ir loop sweeps the rows of a block.
 *   MC       one MC x KC block of packed x (MC*KC*size bytes) stays in L2 (1-2 MiB per
 *            core) while the jr loop sweeps every weight panel; multiple of MR.
 *   NC       one KC x NC weight slab (KC*NC*size bytes) stays in the shared L3 (32 MiB)
 *            while the ic loop sweeps the row blocks; multiple of NR.
 *   PACK_X   below this many rows x is read in place: packing costs a pass over x
 *            and only pays when a block of x is reused across many panels, many times.
 */
#ifndef FL_BLOCKING_H
#define FL_BLOCKING_H

/* Portable C (kernels/ref.c): 16 SSE registers of 4 floats or 2 doubles at baseline
 * x86-64, so 4 x 8 floats (8 registers) and 4 x 4 doubles (8 registers). */
#define FL_REF_F32_MR 4
#define FL_REF_F32_NR 8
#define FL_REF_F32_KC 512   /* 16 KiB of weights + 8 KiB of x in L1 */
#define FL_REF_F32_MC 128   /* 256 KiB of x in L2 */
#define FL_REF_F32_NC 4096  /* 8 MiB of weights in L3 */

#define FL_REF_F64_MR 4
#define FL_REF_F64_NR 4
#define FL_REF_F64_KC 512   /* 16 KiB of weights + 16 KiB of x in L1 */
#define FL_REF_F64_MC 64    /* 256 KiB of x in L2 */
#define FL_REF_F64_NC 2048  /* 8 MiB of weights in L3 */

#define FL_PACK_X_MIN_M 64

/* Below this many multiply-adds a call runs on one thread: starting and joining an
 * OpenMP team costs a few microseconds, about what one core does in 2^17 multiply-adds. */
#define FL_PARALLEL_MIN_MADDS (1u << 17)

#endif
