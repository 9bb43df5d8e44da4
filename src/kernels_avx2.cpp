/* RMSprop chunk kernels for the avx2 SIMD target (runtime-dispatched by dispatch.cpp).
 * setup.py compiles this file alone with the target's flags (simd_targets.h, setup.py). */
#include <stddef.h>
#include <stdint.h>
#include <utility>
#include <immintrin.h>
#include "rmsprop_kernels.h"

/* Without the target flags these would be baseline kernels under the avx2 name. */
#ifndef __AVX2__
#error "kernels_avx2.cpp must be compiled with the avx2 target flags (e.g. -mavx2); build with setup.py"
#endif

#define RC_TARGET_NAMESPACE avx2
#include "kernel_body.hpp"
#include "lowp_body.hpp"
