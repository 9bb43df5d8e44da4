/* RMSprop chunk kernels compiled for the avx2 SIMD target (runtime-dispatched by dispatch.cpp). */
#include <stddef.h>
#include <stdint.h>
#include <utility>
#include "rmsprop_kernels.h"

#pragma GCC target("avx2")
#define RC_TARGET_NAMESPACE avx2
#include "kernel_body.hpp"
