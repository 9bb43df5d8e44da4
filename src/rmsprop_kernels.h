/* C interface of the per-ISA RMSprop chunk kernels (see kernel_body.hpp for the math).
 *
 * A kernel updates elements [start, stop) of one tensor's buffers in place. The Cython layer
 * picks one kernel per tensor group from a table indexed by (SIMD target, dtype, variant),
 * where the variant encodes every loop-invariant option, so no kernel branches per element
 * on an option that is off.
 */
#ifndef RMSPROP_C_KERNELS_H
#define RMSPROP_C_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* The kernels are exact only under IEEE semantics: refuse flags that break them. */
#if defined(__FAST_MATH__)
#error "rmsprop_c must not be built with -ffast-math or -Ofast: results would not be exact"
#endif
#if defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__
#error "rmsprop_c must not be built with -ffinite-math-only: NaN and Inf handling would break"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Hyperparameters in double; each kernel rounds them to its dtype once per call.
 * eps sits in one of two places: den = sqrt(var + eps_inside) + eps_outside, the other one
 * being 0. That equals the spec bit for bit: adding +0 changes no nonzero value, and where
 * a zero's sign could differ, den == 0 and u is 0 either way. */
typedef struct {
    double lr;
    double alpha;
    double one_minus_alpha;     /* 1 - alpha, computed in double */
    double eps_inside;          /* eps when eps_in_sqrt, else 0 */
    double eps_outside;         /* eps when not eps_in_sqrt, else 0 */
    double weight_decay;        /* coupled (L2) coefficient */
    double lr_weight_decay;     /* lr * weight_decay, computed in double (decoupled decay) */
    double momentum;
    double bias_correction;     /* 1 - alpha**t, or 1 when bias correction is off */
    /* Gradient preprocessing, first, in this order: g * grad_scale, clamp to +-clip_value,
     * * norm_coefficient. The chunk kernels multiply every grad by norm_coefficient (1 when
     * off: x * 1 == x); the scale and the clamp come from the driver, which runs the read
     * pass (RC_READ_PREPROCESS) into an L1 block first when `preprocess` is set. Off, they
     * are 1 and +inf, no-ops on every value the update computes with (x * 1 == x, NaN
     * payloads included; the clamp to +-inf keeps x). */
    double grad_scale;
    double clip_value;          /* +inf when off */
    double norm_coefficient;    /* min(1, max_grad_norm / (norm + 1e-6)), or 1 */
    int preprocess;             /* grad_scale or clip_value is not a no-op (read by the driver) */
    int maximize;
    int nesterov;
} rc_hyper;

struct rc_lowp;

/* Base pointers of one tensor's buffers; unused state buffers may be NULL. `lowp` is NULL
 * unless a buffer is bfloat16/float16 (or a param copy is written): see rc_lowp below. */
typedef struct {
    void *param;
    const void *grad;
    void *square_avg;
    void *momentum_buffer;
    void *grad_avg;
    void *max_square_avg;
    const struct rc_lowp *lowp;
} rc_buffers;

typedef void (*rc_kernel_fn)(const rc_hyper *hyper, const rc_buffers *buffers,
                             ptrdiff_t start, ptrdiff_t stop);

/* The one encoding of a kernel variant (the options that change which buffers are touched
 * or that cost time when compiled in; the rest are runtime scalars):
 *   variant = weight_decay_mode + 3*(centered + 2*(bias_correction + 2*(amsgrad
 *             + 2*momentum_mode)))
 * Same-traffic kernels depend only on the buffers touched:
 *   traffic_variant = centered + 2*amsgrad + 4*(momentum_mode != NONE) */
enum { RC_WD_NONE = 0, RC_WD_COUPLED = 1, RC_WD_DECOUPLED = 2 };
enum { RC_MOM_NONE = 0, RC_MOM_LR_OUTSIDE = 1, RC_MOM_LR_INSIDE = 2 };
#define RC_N_VARIANTS 72
#define RC_N_TRAFFIC_VARIANTS 8

static inline int rc_variant(int weight_decay_mode, int centered, int bias_correction,
                             int amsgrad, int momentum_mode) {
    return weight_decay_mode + 3 * (centered + 2 * (bias_correction + 2 * (amsgrad
           + 2 * momentum_mode)));
}
static inline int rc_traffic_variant(int centered, int amsgrad, int momentum_mode) {
    return centered + 2 * amsgrad + 4 * (momentum_mode != RC_MOM_NONE);
}

#include "simd_targets.h"
#define RC_SIMD_ENUM_ROW(ID, name, feature) RC_SIMD_##ID,
enum { RC_SIMD_TARGETS(RC_SIMD_ENUM_ROW) RC_N_SIMD };
#undef RC_SIMD_ENUM_ROW
enum { RC_FLOAT32 = 0, RC_FLOAT64 = 1, RC_BFLOAT16 = 2, RC_FLOAT16 = 3 };

/* Low precision (lowp_body.hpp): a tensor whose param, grad or state is bfloat16/float16,
 * or that writes a param copy, runs through `run`, which widens each L1 block of its
 * buffers to float32, calls the float32 variant `kernel` on the block, and stores each
 * low-precision buffer once: rounded to nearest-even, or stochastically (bfloat16 only)
 * with 16 bits per element from the counter-based generator of rmsprop_c/reference.py,
 * keyed by keys[stream] (0: param, 1..4: state buffers) and the element's index in the
 * tensor. The param copy (bfloat16 or float16) always rounds to nearest. */
typedef void (*rc_lowp_fn)(rc_kernel_fn kernel, const rc_hyper *hyper,
                           const rc_buffers *buffers, ptrdiff_t size, ptrdiff_t start,
                           ptrdiff_t stop);
struct rc_lowp {
    rc_lowp_fn run;
    int param_dtype;            /* RC_FLOAT32, RC_BFLOAT16 or RC_FLOAT16 */
    int grad_dtype;             /* RC_FLOAT32, RC_BFLOAT16 or RC_FLOAT16 */
    int state_dtype;            /* the same three (every state buffer alike) */
    int copy_dtype;             /* RC_BFLOAT16 or RC_FLOAT16 when param_copy is set */
    int stochastic;             /* bfloat16 stores round stochastically */
    void *param_copy;
    uint64_t keys[5];
};
typedef struct rc_lowp rc_lowp;
/* The low-precision block runner and its same-traffic twin, per SIMD target (NULL when not
 * built). The twin ignores `kernel` and `hyper`. */
rc_lowp_fn rc_get_lowp_runner(int simd, int traffic);

/* Kernel for (simd, dtype, variant), or NULL when that SIMD target was not built. */
rc_kernel_fn rc_get_kernel(int simd, int dtype, int variant);
/* 1 when the SIMD target was compiled into this build. */
int rc_simd_built(int simd);
/* 1 when this CPU (and OS) can run the SIMD target. */
int rc_simd_supported(int simd);

/* Same-traffic kernels (the bandwidth yardstick): read and write the buffers the variant
 * touches with trivial arithmetic (v += g; p += g; state += g). */
rc_kernel_fn rc_get_traffic_kernel(int simd, int dtype, int traffic_variant);

/* The grad read pass, one per (SIMD target, dtype), in three modes:
 * RC_READ_NORM2 / RC_READ_NORM_INF: norm partials over fixed chunks of RC_NORM_CHUNK
 *   elements (each tensor's chunks start at its element 0): for chunks [first, stop) of one
 *   tensor of `size` elements, writes ((double *)out)[c] for each chunk c:
 *     norm 2: RC_NORM_LANES float64 sums, lane k summing x_i*x_i for i = k mod lanes (i from
 *             the chunk start), in element order; then lane 0 + lane 1 + ... in order.
 *     norm inf: max |x_i| as float64, NaN when any x_i is NaN.
 *   x_i = (double)clamp((T)grad_i * (T)grad_scale, +-(T)clip_value), the step's own grad.
 *   Returns 1 when any grad_i * grad_scale is NaN or +-Inf. Callers add the partials in
 *   chunk order, so no result depends on the threads.
 * RC_READ_PREPROCESS: writes the scaled, clamped grads of elements [first, stop) to (T *)out:
 *   the step runs its kernel (which applies norm_coefficient) on them, block by block.
 * (It keeps the accessor name of the non-finite check it replaced: dispatch.cpp routes it.) */
#define RC_NORM_CHUNK 1024
#define RC_NORM_LANES 8
enum { RC_READ_NORM2 = 0, RC_READ_NORM_INF = 1, RC_READ_PREPROCESS = 2 };
typedef int (*rc_nonfinite_fn)(const rc_hyper *hyper, const void *grad, ptrdiff_t size,
                               ptrdiff_t first, ptrdiff_t stop, int mode, void *out);
rc_nonfinite_fn rc_get_nonfinite_check(int simd, int dtype);

#ifdef __cplusplus
}
#endif

#endif
