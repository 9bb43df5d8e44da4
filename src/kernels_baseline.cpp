/* RMSprop chunk kernels for the baseline SIMD target (runtime-dispatched by dispatch.cpp).
 * Compiled with the common flags only: whatever the compiler's default architecture is. */
#include <stddef.h>
#include <stdint.h>
#include <utility>
#include "rmsprop_kernels.h"

#define RC_TARGET_NAMESPACE baseline
#include "kernel_body.hpp"
#include "lowp_body.hpp"
