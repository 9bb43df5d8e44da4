/* The fused RMSprop element loop, instantiated once per SIMD target.
 *
 * Included by kernels_<target>.cpp, which setup.py compiles with that target's flags, inside
 * a namespace named after the target, so that each target gets its own instantiations
 * (identical mangled names across translation units would be merged by the linker). The
 * options that change the buffers touched are template parameters: the compiler drops the
 * code of options that are off and vectorises the rest.
 *
 * Exactness: one IEEE operation at a time, in the buffer dtype, in the order of
 * rmsprop_c/reference.py. The build passes -ffp-contract=off (no FMA fusion) and never
 * fast-math; -fno-math-errno only lets sqrt become the sqrt instruction (same result).
 * The including file brings the system headers it needs (stddef, stdint, utility).
 */

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace RC_TARGET_NAMESPACE {

template <typename T> struct SignBits;
template <> struct SignBits<float> { typedef uint32_t type; static constexpr uint32_t mask = 0x80000000u; };
template <> struct SignBits<double> { typedef uint64_t type; static constexpr uint64_t mask = 0x8000000000000000ull; };

static inline float element_sqrt(float x) { return __builtin_sqrtf(x); }
static inline double element_sqrt(double x) { return __builtin_sqrt(x); }

/* -g as a sign-bit flip, exactly what NumPy's negative does, NaN payloads included. */
template <typename T>
static inline T flip_sign(T value, typename SignBits<T>::type sign_mask) {
    typename SignBits<T>::type bits;
    __builtin_memcpy(&bits, &value, sizeof(T));
    bits ^= sign_mask;
    __builtin_memcpy(&value, &bits, sizeof(T));
    return value;
}

/* Selections as bit masks, not branches: GCC sinks work into a branch (or keeps a chain of
 * float selects as control flow) and then refuses to vectorise the loop. */
template <typename T>
static inline T select_where(bool condition, T if_true, T if_false) {
    typedef typename SignBits<T>::type Bits;
    Bits true_bits, false_bits;
    __builtin_memcpy(&true_bits, &if_true, sizeof(T));
    __builtin_memcpy(&false_bits, &if_false, sizeof(T));
    const Bits mask = -(Bits)condition;
    const Bits chosen = (true_bits & mask) | (false_bits & ~mask);
    T result;
    __builtin_memcpy(&result, &chosen, sizeof(T));
    return result;
}

/* The element blocks of rmsprop_chunk: 64 bytes, whole vectors on every target. */
template <typename T> struct Block { enum { size = 64 / sizeof(T) }; };

/* Inlined into its variant's table entry (rmsprop_variant), the one copy of the loop.
 * Pointers are restrict-qualified parameters (GCC trusts those, also once inlined, but not
 * restrict locals), so the loop needs no runtime alias checks; the error contract
 * guarantees no buffers overlap. Template parameters are the options that change the
 * buffers touched or cost time when compiled in; eps placement and nesterov are
 * loop-invariant runtime values. */
template <typename T, int WD, bool CENTERED, bool BIAS, bool AMSGRAD, int MOM>
static inline __attribute__((always_inline)) void rmsprop_chunk(const rc_hyper *hyper,
                                                                ptrdiff_t blocks,
                          T *__restrict param, const T *__restrict grad, T *__restrict square_avg,
                          T *__restrict momentum_buffer, T *__restrict grad_avg,
                          T *__restrict max_square_avg) {
    /* Scalars rounded to T once. */
    const T lr = (T)hyper->lr;
    const T alpha = (T)hyper->alpha;
    const T one_minus_alpha = (T)hyper->one_minus_alpha;
    const T eps_inside = (T)hyper->eps_inside;
    const T eps_outside = (T)hyper->eps_outside;
    const T weight_decay = (T)hyper->weight_decay;
    const T lr_weight_decay = (T)hyper->lr_weight_decay;
    const T momentum = (T)hyper->momentum;
    const T bias_correction = (T)hyper->bias_correction;
    const bool nesterov = hyper->nesterov != 0;
    const typename SignBits<T>::type sign_mask = hyper->maximize ? SignBits<T>::mask : 0;
    const T norm_coefficient = (T)hyper->norm_coefficient;

    /* Whole blocks: the compiler sees a multiple of the vector width and emits no scalar
     * epilogue (the caller runs a last partial block through run_tail). */
    const ptrdiff_t n = blocks * Block<T>::size;
    for (ptrdiff_t i = 0; i < n; ++i) {
        T p = param[i];
        /* Scaled and clamped already when that is on; the norm's factor last, as the spec. */
        T g = flip_sign(grad[i] * norm_coefficient, sign_mask);
        if (WD == RC_WD_COUPLED) g = g + weight_decay * p;
        if (WD == RC_WD_DECOUPLED) p = p - lr_weight_decay * p;

        const T v = alpha * square_avg[i] + one_minus_alpha * (g * g);
        square_avg[i] = v;
        T var = BIAS ? v / bias_correction : v;
        if (CENTERED) {
            const T m = alpha * grad_avg[i] + one_minus_alpha * g;
            grad_avg[i] = m;
            const T m_hat = BIAS ? m / bias_correction : m;
            var = var - m_hat * m_hat;
            var = select_where(__builtin_isless(var, T(0)), T(0), var);   /* clamp at 0; NaN passes */
        }
        if (AMSGRAD) {
            const T previous_max = max_square_avg[i];
            var = select_where(__builtin_isgreaterequal(previous_max, var), previous_max, var);  /* NaN in var passes */
            max_square_avg[i] = var;
        }
        const T den = element_sqrt(var + eps_inside) + eps_outside;
        const T u = select_where(den == T(0), T(0), g / den);   /* eps = 0 and var = 0: no step */

        if (MOM == RC_MOM_NONE) {
            p = p - lr * u;
        } else if (MOM == RC_MOM_LR_OUTSIDE) {
            const T b = momentum * momentum_buffer[i] + u;
            momentum_buffer[i] = b;
            p = p - lr * select_where(nesterov, momentum * b + u, b);
        } else {
            const T scaled = lr * u;
            const T b = momentum * momentum_buffer[i] + scaled;
            momentum_buffer[i] = b;
            p = p - select_where(nesterov, momentum * b + scaled, b);
        }
        param[i] = p;
    }
}

/* The same-traffic kernel: reads and writes exactly the buffers of the variant. Its last
 * partial vector runs as a loop, not unrolled (code size). */
template <typename T, bool CENTERED, bool AMSGRAD, bool MOMENTUM>
__attribute__((noinline)) static void traffic_chunk(ptrdiff_t n,
                          T *__restrict param, const T *__restrict grad, T *__restrict square_avg,
                          T *__restrict momentum_buffer, T *__restrict grad_avg,
                          T *__restrict max_square_avg) {
#pragma GCC unroll 1
    for (ptrdiff_t i = 0; i < n; ++i) {
        const T g = grad[i];
        square_avg[i] += g;
        if (CENTERED) grad_avg[i] += g;
        if (AMSGRAD) max_square_avg[i] += g;
        if (MOMENTUM) momentum_buffer[i] += g;
        param[i] += g;
    }
}

/* Gradient preprocessing in the order of reference.preprocess_grad: g * grad_scale, clamp
 * to +-clip_value (NaN passes), * norm_coefficient (the caller passes 1 for the norm). */
template <typename T>
static inline T preprocess(T g, T grad_scale, T negative_clip, T clip, T coefficient) {
    g = g * grad_scale;
    g = select_where(__builtin_isless(g, negative_clip), negative_clip, g);
    g = select_where(__builtin_isgreater(g, clip), clip, g);
    return g * coefficient;
}

/* x - x is +0 for finite x and NaN otherwise: OR-ing its bits flags NaN/Inf branch-free. */
template <typename T>
static inline typename SignBits<T>::type nonfinite_bits(T x) {
    const T difference = x - x;
    typename SignBits<T>::type bits;
    __builtin_memcpy(&bits, &difference, sizeof(T));
    return bits;
}

/* The direct norm path's shape: RC_NORM_GROUP chunks side by side from as many streams far
 * apart, each prefetching its next chunk (independent add chains; one read stream alone is
 * latency-bound at about 13 GB/s per core, four prefetched ones reach 19). */
#if defined(__AVX__)
enum { RC_NORM_GROUP = 4 };
#else
enum { RC_NORM_GROUP = 2 };             /* 16 SSE registers: 4 sums of 8 lanes would spill */
#endif

/* The target's float64 vector (RC_NORM_WIDTH lanes) and the float32 values it widens from.
 * Lane-wise IEEE operations, so each lane sum keeps the order of the spec; GCC keeps wider
 * generic vectors in memory. aligned(4): loads from any float. */
#if defined(__AVX512F__)
enum { RC_NORM_WIDTH = 8 };
#elif defined(__AVX__)
enum { RC_NORM_WIDTH = 4 };
#else
enum { RC_NORM_WIDTH = 2 };
#endif
typedef float NormFloats __attribute__((vector_size(4 * RC_NORM_WIDTH), aligned(4)));
typedef double NormDoubles __attribute__((vector_size(8 * RC_NORM_WIDTH)));
enum { RC_NORM_PARTS = RC_NORM_LANES / RC_NORM_WIDTH };     /* vectors per chunk's lanes */

static inline NormDoubles widen(NormFloats values) {
    /* GCC splits the generic conversion into halves and reinserts them (3x the shuffles). */
#if defined(__AVX512F__)
    __m256 packed;
    __builtin_memcpy(&packed, &values, sizeof(packed));
    const __m512d wide = _mm512_cvtps_pd(packed);
#elif defined(__AVX__)
    __m128 packed;
    __builtin_memcpy(&packed, &values, sizeof(packed));
    const __m256d wide = _mm256_cvtps_pd(packed);
#endif
#if defined(__AVX__)
    NormDoubles result;
    __builtin_memcpy(&result, &wide, sizeof(result));
    return result;
#else
    return __builtin_convertvector(values, NormDoubles);
#endif
}

/* Chunk sums of G whole float32 chunks, chunk c at x + c * stride, straight from the grad:
 * lane k of a chunk sums (double)(x * grad_scale)^2 over i = k mod lanes, in element order;
 * then lane 0 + lane 1 + ... in order. `prefetch`: each chunk's successor is read next. */
template <int G>
static inline void norm2_direct(const float *__restrict x, ptrdiff_t stride, float grad_scale,
                                bool prefetch, double *__restrict sums, ptrdiff_t sums_stride) {
    NormDoubles lanes[G][RC_NORM_PARTS];
    for (int c = 0; c < G; ++c)
        for (int part = 0; part < RC_NORM_PARTS; ++part) lanes[c][part] = NormDoubles{};
    for (ptrdiff_t i = 0; i < RC_NORM_CHUNK; i += RC_NORM_LANES) {
        if (prefetch && i % (64 / sizeof(float)) == 0)
            for (int c = 0; c < G; ++c)
                __builtin_prefetch(x + c * stride + RC_NORM_CHUNK + i, 0, 3);
        /* Unrolled, so that the sums live in registers. */
#pragma GCC unroll 8
        for (int c = 0; c < G; ++c)
#pragma GCC unroll 8
            for (int part = 0; part < RC_NORM_PARTS; ++part) {
                NormFloats values;
                __builtin_memcpy(&values, x + c * stride + i + part * RC_NORM_WIDTH,
                                 sizeof(values));
                const NormDoubles g = widen(values * grad_scale);
                lanes[c][part] = lanes[c][part] + g * g;
            }
    }
    for (int c = 0; c < G; ++c) {
        double sum = lanes[c][0][0];
        for (int lane = 1; lane < RC_NORM_LANES; ++lane)
            sum = sum + lanes[c][lane / RC_NORM_WIDTH][lane % RC_NORM_WIDTH];
        sums[c * sums_stride] = sum;
    }
}

/* One norm chunk, preprocessed into `out` (n <= RC_NORM_CHUNK elements, zero-padded to a
 * whole chunk: adding +0 changes no lane sum or maximum). Returns the OR of the non-finite
 * bits of x * grad_scale. Branch-free: vectorises. */
template <typename T>
static inline typename SignBits<T>::type preprocess_chunk(
        const T *__restrict x, ptrdiff_t n, T grad_scale, T negative_clip, T clip,
        T *__restrict out) {
    typename SignBits<T>::type seen = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        seen |= nonfinite_bits(x[i] * grad_scale);
        out[i] = preprocess(x[i], grad_scale, negative_clip, clip, T(1));
    }
    for (ptrdiff_t i = n; i < RC_NORM_CHUNK; ++i) out[i] = T(0);
    return seen;
}

/* The grad read pass of rmsprop_kernels.h (norm partials, non-finite flag, preprocessing).
 * Each lane of a chunk is its own sequential sum (or maximum) in element order, so the
 * vector code the compiler makes keeps the order of the spec. */
template <typename T>
static int grad_read_pass(const rc_hyper *hyper, const void *grad_void, ptrdiff_t size,
                          ptrdiff_t first, ptrdiff_t stop_at, int mode, void *out) {
    typedef typename SignBits<T>::type Bits;
    const T *__restrict grad = static_cast<const T *>(grad_void);
    const T grad_scale = (T)hyper->grad_scale;
    const T clip = (T)hyper->clip_value;
    const T negative_clip = -clip;
    if (mode == RC_READ_PREPROCESS) {
        /* The step kernel applies the norm's factor: the block holds scaled, clamped grads. */
        T *__restrict result = static_cast<T *>(out);
        for (ptrdiff_t i = first; i < stop_at; ++i)
            result[i - first] = preprocess(grad[i], grad_scale, negative_clip, clip, T(1));
        return 0;
    }
    double *partials = static_cast<double *>(out);
    alignas(64) T block[RC_NORM_CHUNK];
    Bits seen = 0;
    const bool direct = sizeof(T) == 4 && mode == RC_READ_NORM2 && clip == T(__builtin_inf());
    if constexpr (sizeof(T) == 4) {
        /* float32 without a clamp, the common case, straight from the grad: a square of a
         * float32 never overflows float64, so a chunk sum is finite exactly when every
         * x * grad_scale is. The whole chunks are cut into RC_NORM_GROUP equal runs read
         * side by side (four streams far apart keep more reads in flight than one). */
        const ptrdiff_t whole = (stop_at < size / RC_NORM_CHUNK ? stop_at : size / RC_NORM_CHUNK)
                                - first;
        const ptrdiff_t run = direct && whole > 0 ? whole / RC_NORM_GROUP : 0;
        for (ptrdiff_t j = 0; j < run; ++j) {
            double *sums = partials + first + j;
            norm2_direct<RC_NORM_GROUP>(grad + (first + j) * RC_NORM_CHUNK, run * RC_NORM_CHUNK,
                                        grad_scale, j + 1 < run, sums, run);
            for (int c = 0; c < RC_NORM_GROUP; ++c)
                seen |= (Bits)!(sums[c * run] - sums[c * run] == 0.0);
        }
        first += run * RC_NORM_GROUP;
    }
    for (ptrdiff_t chunk = first; chunk < stop_at; ++chunk) {
        const ptrdiff_t start = chunk * RC_NORM_CHUNK;
        const ptrdiff_t count = size - start < RC_NORM_CHUNK ? size - start : RC_NORM_CHUNK;
        if constexpr (sizeof(T) == 4) {
            if (direct && count == RC_NORM_CHUNK) {
                norm2_direct<1>(grad + start, 0, grad_scale, false, partials + chunk, 0);
                seen |= (Bits)!(partials[chunk] - partials[chunk] == 0.0);
                continue;
            }
        }
        seen |= preprocess_chunk(grad + start, count, grad_scale, negative_clip, clip, block);
        if (mode == RC_READ_NORM_INF) {
            /* |x| as bits: for non-NaN values integer order is float order, and every NaN
             * lies above +inf. So the largest bits give max |x|, or reveal a NaN. Exact and
             * order-free. */
            Bits largest = 0;
            for (ptrdiff_t i = 0; i < RC_NORM_CHUNK; ++i) {
                Bits bits;
                __builtin_memcpy(&bits, &block[i], sizeof(T));
                bits &= ~SignBits<T>::mask;
                largest = bits > largest ? bits : largest;
            }
            const T infinity = __builtin_inf();
            Bits infinity_bits;
            __builtin_memcpy(&infinity_bits, &infinity, sizeof(T));
            T result;
            __builtin_memcpy(&result, &largest, sizeof(T));
            partials[chunk] = largest > infinity_bits ? __builtin_nan("") : (double)result;
            continue;
        }
        double lanes[RC_NORM_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (ptrdiff_t i = 0; i < RC_NORM_CHUNK; i += RC_NORM_LANES)
            for (int lane = 0; lane < RC_NORM_LANES; ++lane) {
                const double g = (double)block[i + lane];
                lanes[lane] = lanes[lane] + g * g;
            }
        double sum = lanes[0];
        for (int lane = 1; lane < RC_NORM_LANES; ++lane) sum = sum + lanes[lane];
        partials[chunk] = sum;
    }
    return seen != 0;
}

/* Offsets the (possibly NULL) state pointers of a tensor's buffers to element `start`. */
template <typename T>
static inline T *at(void *base, ptrdiff_t start) {
    return base ? static_cast<T *>(base) + start : nullptr;
}

/* The last n < Block<T>::size elements of a tensor: copied into zero-padded blocks, run
 * as one block by the same variant (same lanes, same bits), copied back. One copy per
 * dtype. */
template <typename T>
__attribute__((noinline)) static void run_tail(rc_kernel_fn variant, const rc_hyper *hyper,
                                               const rc_buffers *buffers, ptrdiff_t first,
                                               ptrdiff_t stop) {
    enum { B = Block<T>::size };
    const ptrdiff_t n = stop - first;
    void *const bases[6] = {buffers->param, const_cast<void *>(buffers->grad),
                            buffers->square_avg, buffers->momentum_buffer, buffers->grad_avg,
                            buffers->max_square_avg};
    alignas(64) T padded[6][B] = {};
    for (int k = 0; k < 6; ++k)
        if (bases[k] != nullptr)
            __builtin_memcpy(padded[k], at<T>(bases[k], first), n * sizeof(T));
    const rc_buffers local = {padded[0], padded[1], padded[2], bases[3] ? padded[3] : nullptr,
                              bases[4] ? padded[4] : nullptr, bases[5] ? padded[5] : nullptr,
                              buffers->lowp};
    variant(hyper, &local, 0, B);
    for (int k = 0; k < 6; ++k)
        if (k != 1 && bases[k] != nullptr)
            __builtin_memcpy(at<T>(bases[k], first), padded[k], n * sizeof(T));
}

/* A variant's table entry: the whole blocks of [start, stop) in place, then the rest. */
template <typename T, int V>
static void rmsprop_variant(const rc_hyper *hyper, const rc_buffers *buffers,
                            ptrdiff_t start, ptrdiff_t stop) {
    const ptrdiff_t blocks = (stop - start) / Block<T>::size;
    /* Decodes the variant index of rmsprop_kernels.h. */
    rmsprop_chunk<T, V % 3, (V / 3) % 2 != 0, (V / 6) % 2 != 0, (V / 12) % 2 != 0, V / 24>(
        hyper, blocks, at<T>(buffers->param, start),
        static_cast<const T *>(buffers->grad) + start, at<T>(buffers->square_avg, start),
        at<T>(buffers->momentum_buffer, start), at<T>(buffers->grad_avg, start),
        at<T>(buffers->max_square_avg, start));
    const ptrdiff_t first = start + blocks * Block<T>::size;
    if (first < stop) run_tail<T>(&rmsprop_variant<T, V>, hyper, buffers, first, stop);
}

template <typename T, int V>
static inline void traffic_range(const rc_buffers *buffers, ptrdiff_t start, ptrdiff_t stop) {
    traffic_chunk<T, (V & 1) != 0, (V & 2) != 0, (V & 4) != 0>(
        stop - start, at<T>(buffers->param, start),
        static_cast<const T *>(buffers->grad) + start, at<T>(buffers->square_avg, start),
        at<T>(buffers->momentum_buffer, start), at<T>(buffers->grad_avg, start),
        at<T>(buffers->max_square_avg, start));
}

template <typename T, int V>
static void traffic_variant(const rc_hyper *, const rc_buffers *buffers,
                            ptrdiff_t start, ptrdiff_t stop) {
    traffic_range<T, V>(buffers, start, stop);
}

template <typename T, int... V>
struct KernelTable {
    static constexpr rc_kernel_fn rmsprop[sizeof...(V)] = {&rmsprop_variant<T, V>...};
};
template <typename T, int... V>
struct TrafficTable {
    static constexpr rc_kernel_fn traffic[sizeof...(V)] = {&traffic_variant<T, V>...};
};

template <typename T, typename Seq> struct TableFor;
template <typename T, int... V>
struct TableFor<T, std::integer_sequence<int, V...>> {
    typedef KernelTable<T, V...> kernels;
    typedef TrafficTable<T, V...> traffic;
};

typedef TableFor<float, std::make_integer_sequence<int, RC_N_VARIANTS>>::kernels TableF32;
typedef TableFor<double, std::make_integer_sequence<int, RC_N_VARIANTS>>::kernels TableF64;
typedef TableFor<float, std::make_integer_sequence<int, RC_N_TRAFFIC_VARIANTS>>::traffic TrafficF32;
typedef TableFor<double, std::make_integer_sequence<int, RC_N_TRAFFIC_VARIANTS>>::traffic TrafficF64;

}  // namespace RC_TARGET_NAMESPACE

/* Accessor with C linkage named after the target, used by dispatch.cpp. */
#define RC_CONCAT_(a, b) a##b
#define RC_CONCAT(a, b) RC_CONCAT_(a, b)
extern "C" rc_kernel_fn RC_CONCAT(rc_kernel_, RC_TARGET_NAMESPACE)(int dtype, int variant, int traffic) {
    if (dtype == RC_FLOAT32)
        return traffic ? RC_TARGET_NAMESPACE::TrafficF32::traffic[variant] : RC_TARGET_NAMESPACE::TableF32::rmsprop[variant];
    return traffic ? RC_TARGET_NAMESPACE::TrafficF64::traffic[variant] : RC_TARGET_NAMESPACE::TableF64::rmsprop[variant];
}
extern "C" rc_nonfinite_fn RC_CONCAT(rc_nonfinite_, RC_TARGET_NAMESPACE)(int dtype) {
    return dtype == RC_FLOAT32 ? &RC_TARGET_NAMESPACE::grad_read_pass<float>
                               : &RC_TARGET_NAMESPACE::grad_read_pass<double>;
}
