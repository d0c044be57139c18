/* The ISA avx512_vnni: kernels/avx512.c compiled again for CPUs with AVX-512 VNNI (Ice
 * Lake and later Xeons, Zen 4 and 5), its integer kernel on vpdpbusd. */
#define FL_VNNI 1
#include "avx512.c"
