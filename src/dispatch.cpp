/* Runtime SIMD dispatch: which kernel tables were built, which this CPU can run.
 * Every per-target list here is generated from RC_SIMD_TARGETS (simd_targets.h). */
#include <stddef.h>
#include "rmsprop_kernels.h"
#include "simd_targets.h"

/* The table's row order must be the index order of rmsprop_kernels.h's RC_SIMD_* enum. */
namespace row {
#define RC_ROW_INDEX(ID, name, feature) ID,
enum { RC_SIMD_TARGETS(RC_ROW_INDEX) COUNT };
#undef RC_ROW_INDEX
}
#define RC_CHECK_ROW(ID, name, feature) \
    static_assert((int)row::ID == (int)RC_SIMD_##ID, "simd_targets.h row order differs from RC_SIMD_" #ID);
RC_SIMD_TARGETS(RC_CHECK_ROW)
#undef RC_CHECK_ROW
static_assert((int)row::COUNT == (int)RC_N_SIMD, "simd_targets.h and RC_N_SIMD disagree");

/* Entry points of kernels_<name>.cpp (defined at the end of kernel_body.hpp). A target
 * that was not built is only named inside a discarded `if constexpr` branch, so its
 * missing definition is never referenced. */
extern "C" {
#define RC_DECLARE(ID, name, feature)                                             \
    rc_kernel_fn rc_kernel_##name(int dtype, int variant, int traffic);           \
    rc_nonfinite_fn rc_nonfinite_##name(int dtype);                              \
    rc_lowp_fn rc_lowp_##name(int traffic);                                       \
    rc_nonfinite_fn rc_lowp_read_##name(int dtype);
RC_SIMD_TARGETS(RC_DECLARE)
#undef RC_DECLARE
}

static rc_kernel_fn lookup(int simd, int dtype, int variant, int traffic) {
    if (dtype != RC_FLOAT32 && dtype != RC_FLOAT64) return NULL;
    if (variant < 0 || variant >= (traffic ? RC_N_TRAFFIC_VARIANTS : RC_N_VARIANTS)) return NULL;
    switch (simd) {
#define RC_CASE(ID, name, feature) \
    case RC_SIMD_##ID: if constexpr (RC_BUILT_##ID) return rc_kernel_##name(dtype, variant, traffic); break;
    RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
    }
    return NULL;
}

extern "C" rc_kernel_fn rc_get_kernel(int simd, int dtype, int variant) {
    return lookup(simd, dtype, variant, 0);
}

extern "C" rc_kernel_fn rc_get_traffic_kernel(int simd, int dtype, int variant) {
    return lookup(simd, dtype, variant, 1);
}

extern "C" rc_nonfinite_fn rc_get_nonfinite_check(int simd, int dtype) {
    if (dtype == RC_BFLOAT16 || dtype == RC_FLOAT16) {     /* widened, then the float32 pass */
        switch (simd) {
#define RC_CASE(ID, name, feature) \
    case RC_SIMD_##ID: if constexpr (RC_BUILT_##ID) return rc_lowp_read_##name(dtype); break;
        RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
        }
        return NULL;
    }
    if (dtype != RC_FLOAT32 && dtype != RC_FLOAT64) return NULL;
    switch (simd) {
#define RC_CASE(ID, name, feature) \
    case RC_SIMD_##ID: if constexpr (RC_BUILT_##ID) return rc_nonfinite_##name(dtype); break;
    RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
    }
    return NULL;
}

extern "C" rc_lowp_fn rc_get_lowp_runner(int simd, int traffic) {
    switch (simd) {
#define RC_CASE(ID, name, feature) \
    case RC_SIMD_##ID: if constexpr (RC_BUILT_##ID) return rc_lowp_##name(traffic); break;
    RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
    }
    return NULL;
}

extern "C" int rc_simd_built(int simd) {
    switch (simd) {
#define RC_CASE(ID, name, feature) case RC_SIMD_##ID: return RC_BUILT_##ID;
    RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
    }
    return 0;
}

extern "C" const char *rc_simd_name(int simd) {
    switch (simd) {
#define RC_CASE(ID, name, feature) case RC_SIMD_##ID: return #name;
    RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
    }
    return NULL;
}

extern "C" int rc_simd_supported(int simd) {
    if (simd == RC_SIMD_BASELINE) return 1;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    /* libgcc's (and compiler-rt's) cpu model also checks XGETBV, so an OS that does not
     * save the wide registers reports the feature as absent. */
    __builtin_cpu_init();
    switch (simd) {
#define RC_CASE(ID, name, feature) case RC_SIMD_##ID: return __builtin_cpu_supports(feature) ? 1 : 0;
    RC_SIMD_TARGETS(RC_CASE)
#undef RC_CASE
    }
#endif
    /* Other compilers and architectures build the baseline target only. */
    return 0;
}
