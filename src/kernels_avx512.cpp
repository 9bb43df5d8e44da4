/* RMSprop chunk kernels compiled for the avx512 SIMD target (runtime-dispatched by dispatch.cpp). */
#include <stddef.h>
#include <stdint.h>
#include <utility>
#include "rmsprop_kernels.h"

#pragma GCC target("avx512f,prefer-vector-width=512")
#define RC_TARGET_NAMESPACE avx512
#include "kernel_body.hpp"
