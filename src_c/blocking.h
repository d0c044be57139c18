/* Block sizes, one table for every ISA and dtype. The reasoning, per number:
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

/* AVX2 + FMA (kernels/avx2.c): 16 ymm registers, one tile body for both dtypes. 3 rows x
 * 4 ymm = 12 accumulators, 3 broadcast x values, 1 weight vector: all 16. Not the classic
 * 6 x 2 ymm: a single row (M = 1, weights streamed from memory) then has only 2 FMA
 * chains, which at 4 cycles of FMA latency cap the stream near 88 GB/s on 2 Zen 4 cores;
 * 3 x 4 gives it 4 chains (8 at M = 2) and 12 for M >= 3, with 7 loads per 12 FMAs.
 * Measured with FASTLINEAR_ISA=avx2 on a 2-core AMD EPYC (Zen 5, KVM) whose 256-bit FMA
 * peak is 271 GFLOP/s float32 (fastlinear._limits --isa avx2), 2 threads:
 * 32x768x3072 250, 128x768x3072 246, 512x1024x1024 250, 2048^3 248 GFLOP/s (91-92%);
 * 6 x 16 tiles with GCC's accumulators spilled ran 108-124. KC 128/256/512 for float32:
 * within noise at 2048^3 (240/248/249) and 128x768x3072 (252/246/242); 256 keeps the
 * 32 KiB weight slice in L1 (48 KiB on Zen 5; on 32 KiB L1s it streams from L2, which 7
 * loads per 12 FMAs allow). float64: KC 128 gave 117 GFLOP/s at 2048^3 against 107 at
 * 256, of a 136 peak. */
#define FL_AVX2_MR 3
#define FL_AVX2_NV 4           /* ymm per tile row: NR = 32 floats, 16 doubles */
#define FL_AVX2_F32_KC 256
#define FL_AVX2_F32_MC 144     /* 144 KiB of packed x in L2 */
#define FL_AVX2_F32_NC 4096    /* 4 MiB of weights in L3 */
#define FL_AVX2_F64_KC 128     /* 16 KiB of weights in L1 */
#define FL_AVX2_F64_MC 72      /* 72 KiB of packed x in L2 */
#define FL_AVX2_F64_NC 2048    /* 2 MiB of weights in L3 */

/* int4 on AVX2 widens each weight vector with five instructions (load and extend, two
 * shifts, convert, scale) for every 3-row tile that reads it: from this many rows on,
 * widening each block once into a buffer for the float32 kernel pays. Measured (2 threads,
 * Zen 5, us, in registers -> widened): 16x768x3072 533 -> 395, 32x768x3072 999 -> 702,
 * 16x4096x4096 3740 -> 2905; 8x768x3072 268 -> 257, 8x4096x4096 1868 -> 1922. The other
 * formats (one or two instructions) and AVX-512 int4 (a table lookup, 6-row tiles) were
 * as fast or faster in registers at every M up to FL_DIRECT_X_MAX_BYTES of x. */
#define FL_AVX2_I4_WIDEN_ROWS 12

/* Both x86 kernels prefetch the weights this far ahead of the k step they compute: one
 * 16 KiB slice ahead, so that while a row block re-reads the slice in cache (M > MR), or
 * while a single row streams it, the next one is already on its way from memory. Measured
 * (avx2, 2 threads, float32): 8x4096x4096 1883 -> 1239 us, 1x4096x4096 898 -> 486 us
 * (4 KiB ahead: 1471 and 609; 32 KiB: 1386 and 937); avx512: 8x4096x4096 1020 -> 718 us,
 * 1x768x3072 54.6 -> 41.9 us. */
#define FL_PREFETCH_BYTES 16384

/* AVX-512 (kernels/avx512.c): 32 zmm registers. 6 rows x 4 zmm = 24 accumulators,
 * 4 for the weight row, 1 for the broadcast x value. Four zmm per row, not two: a
 * single row (M = 1, weights streamed at memory speed) then still has 4 independent FMA
 * chains to cover the FMA latency, and the tile needs only 10 loads per 24 FMAs.
 * KC is far past the L1-sized choice of the table above, on measurement: those few
 * loads per FMA are fed from L2 (1-2 MiB per core) with room to spare, so the KC x NR
 * weight slice (128 KiB) streams from L2, and a long KC makes the per-block costs
 * (reloading y, packing x) vanish. Zen 4, 2 threads, 2048^3: 14 x 32 tiles gave 171
 * GFLOP/s at KC = 128 and 214 at 1024; 6 x 64 tiles give 204 at KC = 256 and 215 at
 * 512, and 1 x 768 x 3072 runs at 180 GB/s instead of 110-170 (of ~190 from L3).
 * MC keeps the MC x KC block of packed x (288 KiB) in L2 beside the weight slice. */
#define FL_AVX512_MR 6
#define FL_AVX512_NV 4      /* zmm per tile row: NR = 64 floats, 32 doubles */
#define FL_AVX512_F32_KC 512
#define FL_AVX512_F32_MC 144
#define FL_AVX512_F32_NC 8192  /* 16 MiB of weights in L3 */

#define FL_AVX512_F64_KC 512
#define FL_AVX512_F64_MC 72    /* 288 KiB of packed x in L2 */
#define FL_AVX512_F64_NC 4096  /* 16 MiB of weights in L3 */

/* int4 weights keep one scale per group of up to this many k rows; a group never
 * straddles two k blocks, so every KC above is a multiple of it. */
#define FL_I4_MAX_GROUP 128
_Static_assert(FL_REF_F32_KC % FL_I4_MAX_GROUP == 0 && FL_AVX2_F32_KC % FL_I4_MAX_GROUP == 0
               && FL_AVX512_F32_KC % FL_I4_MAX_GROUP == 0, "int4 groups within k blocks");

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
