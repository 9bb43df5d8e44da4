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

#ifdef __cplusplus
extern "C" {
#endif

/* Hyperparameters in double; each kernel rounds them to its dtype once per call. */
typedef struct {
    double lr;
    double alpha;
    double one_minus_alpha;     /* 1 - alpha, computed in double */
    double eps;
    double weight_decay;        /* coupled (L2) coefficient */
    double lr_weight_decay;     /* lr * weight_decay, computed in double (decoupled decay) */
    double momentum;
    double bias_correction;     /* 1 - alpha**t, or 1 when bias correction is off */
    int maximize;
} rc_hyper;

/* Base pointers of one tensor's buffers; unused state buffers may be NULL. */
typedef struct {
    void *param;
    const void *grad;
    void *square_avg;
    void *momentum_buffer;
    void *grad_avg;
    void *max_square_avg;
} rc_buffers;

typedef void (*rc_kernel_fn)(const rc_hyper *hyper, const rc_buffers *buffers,
                             ptrdiff_t start, ptrdiff_t stop);

/* Variant index = weight_decay_mode + 3*(centered + 2*(bias_correction + 2*(amsgrad
 *                 + 2*(eps_in_sqrt + 2*momentum_mode)))) */
enum { RC_WD_NONE = 0, RC_WD_COUPLED = 1, RC_WD_DECOUPLED = 2 };
enum { RC_MOM_NONE = 0, RC_MOM_LR_OUTSIDE = 1, RC_MOM_LR_OUTSIDE_NESTEROV = 2,
       RC_MOM_LR_INSIDE = 3, RC_MOM_LR_INSIDE_NESTEROV = 4 };
#define RC_N_VARIANTS 240

enum { RC_SIMD_BASELINE = 0, RC_SIMD_AVX2 = 1, RC_SIMD_AVX512 = 2, RC_N_SIMD = 3 };
enum { RC_FLOAT32 = 0, RC_FLOAT64 = 1 };

/* Kernel for (simd, dtype, variant), or NULL when that SIMD target was not built. */
rc_kernel_fn rc_get_kernel(int simd, int dtype, int variant);
/* 1 when the SIMD target was compiled into this build. */
int rc_simd_built(int simd);
/* 1 when this CPU (and OS) can run the SIMD target. */
int rc_simd_supported(int simd);

/* Same-traffic kernels (the bandwidth yardstick): read and write the buffers the variant
 * touches with trivial arithmetic (v += g; p += g; state += g). */
rc_kernel_fn rc_get_traffic_kernel(int simd, int dtype, int variant);

/* 1 when any grad element in [start, stop) is NaN or +-Inf. */
typedef int (*rc_nonfinite_fn)(const void *grad, ptrdiff_t start, ptrdiff_t stop);
rc_nonfinite_fn rc_get_nonfinite_check(int simd, int dtype);

#ifdef __cplusplus
}
#endif

#endif
