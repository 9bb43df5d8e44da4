/* RMSprop chunk kernels for the avx512 SIMD target (runtime-dispatched by dispatch.cpp).
 * setup.py compiles this file alone with the target's flags (simd_targets.h, setup.py). */
#include <stddef.h>
#include <stdint.h>
#include <utility>
#include <immintrin.h>
#include "rmsprop_kernels.h"

/* Without the target flags these would be baseline kernels under the avx512 name. */
#ifndef __AVX512F__
#error "kernels_avx512.cpp must be compiled with the avx512 target flags (e.g. -mavx512f); build with setup.py"
#endif

#define RC_TARGET_NAMESPACE avx512
#include "kernel_body.hpp"
#include "lowp_body.hpp"
