/* Block sizes. Each ISA's own (MR, NR, KC, MC, NC) sit beside its kernel, with their
 * measurements (kernels/<isa>.c, as BLIS keeps them per configuration); the numbers
 * here are shared by every ISA. What each size is for:
 *
 *   MR x NR  the register tile: MR*NR accumulators plus one weight row and one x value
 *            must fit in the vector registers, so nothing spills in the k loop.
 *   KC       the k block: one KC x NR weight slice (KC*NR*size bytes) is reused by every
 *            micro-panel of x in the ir loop, from L1d (32-48 KiB) or, where the tile
 *            needs few loads per FMA, from L2; a long KC makes reloading the y tile and
 *            packing x, once per block, cheap.
 *   MC       one MC x KC block of packed x (MC*KC*size bytes) stays in L2 (1-2 MiB per
 *            core) while the jr loop sweeps every weight panel; multiple of MR.
 *   NC       one KC x NC weight slab (KC*NC*size bytes) stays in the shared L3 (32 MiB)
 *            while the ic loop sweeps the row blocks; multiple of NR.
 *   DIRECT_X x is read in place while all of it (M*K*size bytes) fits this budget, a
 *            quarter of L2: it then stays in cache while every weight panel streams past.
 *            Beyond it, packing pays: far-apart rows (a stride of 16 KiB for K = 4096
 *            floats) fall into the same L1 sets and evict each other. Zen 4, 14 x 32 tiles,
 *            2 threads: 32x768x3072 (96 KiB of x) 226 GFLOP/s in place, 198 packed;
 *            32x4096x4096 (512 KiB) 97 in place, 180 packed; 140x100x50 (55 KiB) 84 in
 *            place, 63 packed, on one thread.
 */
#ifndef FL_BLOCKING_H
#define FL_BLOCKING_H

/* The kernels prefetch the weights this far ahead of the k step they compute, where a
 * call's weights exceed half the last-level cache (fl_set_cache_bytes: smaller ones stay in
 * cache between calls and are read faster without, unless fastlinear.tune found a distance
 * that pays for them: kernel.h's fl_blocks): one 16 KiB slice ahead, so that while a
 * row block re-reads the slice in cache (M > MR), or while a single row streams it, the
 * next one is already on its way from memory. Measured (avx2, 2 threads, float32):
 * 8x4096x4096 1883 -> 1239 us, 1x4096x4096 898 -> 486 us (4 KiB ahead: 1471 and 609; 32
 * KiB: 1386 and 937); avx512: 8x4096x4096 1020 -> 718 us, 1x768x3072 54.6 -> 41.9 us. */
#define FL_PREFETCH_BYTES 16384
/* The integer kernels (kernels/qtile.h) read a step of 4 k rows of bytes per 4 of their
 * instructions per row: a quarter of the distance is the same time ahead. Measured
 * (avx512_vnni, 2 threads, Zen 4, us, 16 KiB -> 4 KiB): 8x4096x4096 339-361 -> 323-333,
 * 128x768x3072 676-707 -> 675-705, 1x4096x4096 120 -> 114-118 (none at all: 127). */
#define FL_QPREFETCH_BYTES 4096

/* int4 weights keep one scale per group of up to this many k rows; a group never
 * straddles two k blocks, so every ISA's KC is a multiple of it (kernels/tile.h). */
#define FL_I4_MAX_GROUP 128

#define FL_DIRECT_X_MAX_BYTES (256u * 1024u)

/* Below this many multiply-adds a call runs on one thread: starting and joining an
 * OpenMP team costs a few microseconds, about what one core does in 2^17 multiply-adds. */
#define FL_PARALLEL_MIN_MADDS (1u << 17)

/* The model runner (model.c) takes this many rows through all its steps before the next
 * block: a block's values between steps (64 rows x 512 floats = 128 KiB per buffer)
 * stay in L2, and x stays under FL_DIRECT_X_MAX_BYTES for K up to 1024, so each Linear
 * reads it in place and its threads split the weight panels (no packing). Measured, the
 * 784-512-512-256-10 MLP at batch 1024, 2 threads, AVX-512 (AVX2) path, ms, best of
 * noisy runs: 32 rows 4.40 (7.42), 64 rows 3.53 (7.03), 96 rows 3.64 (7.36), 128 rows
 * 4.19 (7.63), 256 rows 3.90, 1024 rows 3.94. */
#define FL_MODEL_ROWS 64

/* For the one-thread threshold above, a value of a row-wise step (an activation,
 * LayerNorm, softmax: a few dozen vector operations per 16 values) counts as this many
 * multiply-adds. */
#define FL_ROW_STEP_MADDS 4

#endif
