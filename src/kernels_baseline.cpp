/* RMSprop chunk kernels compiled for the baseline SIMD target (runtime-dispatched by dispatch.cpp). */
#include <stddef.h>
#include <stdint.h>
#include <utility>
#include "rmsprop_kernels.h"


#define RC_TARGET_NAMESPACE baseline
#include "kernel_body.hpp"
