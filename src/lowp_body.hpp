/* Low-precision steps (bfloat16, float16), instantiated once per SIMD target.
 *
 * Included by kernels_<target>.cpp after kernel_body.hpp. A low-precision tensor is stepped
 * in L1 blocks: each block of every bfloat16/float16 buffer is widened (exactly) into a
 * float32 stack block, the float32 variant kernel runs on the blocks (float32 buffers are
 * used in place), and each low-precision buffer is stored back once, rounded. So the 72
 * variants serve every dtype family, and the math is the float32 math, bit for bit.
 *
 * Every helper is the integer (or exact float) arithmetic of rmsprop_c/reference.py, written
 * branch-free so it vectorises on every target without conversion instructions.
 * Stochastic bits depend only on (key, element index in the tensor): never on the thread,
 * the block or the vector width.
 */

namespace RC_TARGET_NAMESPACE {

enum { RC_LOWP_BLOCK = 512 };

static inline uint32_t float_bits(float x) { uint32_t u; __builtin_memcpy(&u, &x, 4); return u; }
static inline float bits_float(uint32_t u) { float x; __builtin_memcpy(&x, &u, 4); return x; }
/* A branch-free select (GCC keeps chains of ?: as control flow and stops vectorising). */
static inline uint32_t pick(bool condition, uint32_t if_true, uint32_t if_false) {
    const uint32_t mask = -(uint32_t)condition;
    return (if_true & mask) | (if_false & ~mask);
}

static inline float widen_bfloat16(uint16_t h) { return bits_float((uint32_t)h << 16); }

/* Normals rebias the exponent, inf/NaN keep all-ones, subnormals are m * 2**-24 (exact). */
static inline float widen_float16(uint16_t h) {
    const uint32_t magnitude = h & 0x7FFFu;
    const uint32_t exponent = magnitude & 0x7C00u;
    const uint32_t normal = (magnitude << 13) + 0x38000000u;
    const uint32_t special = (magnitude << 13) + 0x70000000u;
    const uint32_t tiny = float_bits((float)(int32_t)magnitude * 0x1p-24f);
    const uint32_t bits = pick(exponent == 0x7C00u, special, pick(exponent == 0, tiny, normal));
    return bits_float(bits | ((uint32_t)(h & 0x8000u) << 16));
}

/* Nearest-even: add 0x7FFF plus the kept lsb, drop 16 bits; a carry reaches inf. */
static inline uint16_t round_bfloat16_nearest(float x) {
    const uint32_t u = float_bits(x);
    const uint32_t finite = ((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16) & 0x7FFFu;
    const uint32_t bits = pick((u & 0x7FFFFFFFu) > 0x7F800000u, 0x7FC0u, finite);
    return (uint16_t)(bits | ((u >> 16) & 0x8000u));
}

/* Random bits below the kept mantissa, then truncation; NaN becomes the quiet NaN. */
static inline uint16_t round_bfloat16_stochastic(float x, uint32_t random16) {
    const uint32_t u = float_bits(x);
    const uint32_t rounded = (u + random16) >> 16;
    return (uint16_t)pick((u & 0x7FFFFFFFu) > 0x7F800000u, ((u >> 16) & 0x8000u) | 0x7FC0u,
                          rounded);
}

/* Normals: rebias and round at bit 13; subnormals: the float adder rounds |x| + 0.5;
 * from 2**16 up: inf; NaN keeps its top payload bits (0x7C01 when none are left). */
static inline uint16_t round_float16_nearest(float x) {
    const uint32_t u = float_bits(x);
    const uint32_t magnitude = u & 0x7FFFFFFFu;
    const uint32_t normal = (magnitude - 0x38000000u + 0xFFFu + ((magnitude >> 13) & 1u)) >> 13;
    const uint32_t tiny = float_bits(bits_float(magnitude) + 0.5f) - 0x3F000000u;
    uint32_t finite = pick(magnitude < 0x38800000u, tiny, normal);
    finite = pick(magnitude >= 0x47800000u, 0x7C00u, finite);
    const uint32_t payload = (magnitude & 0x7FFFFFu) >> 13;
    const uint32_t nan_bits = 0x7C00u | payload | (uint32_t)(payload == 0);
    const uint32_t bits = pick(magnitude > 0x7F800000u, nan_bits, finite);
    return (uint16_t)(bits | ((u >> 16) & 0x8000u));
}

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

/* The part of reference.random_bits' key that holds the high half of the element index. */
static inline uint32_t high_key(uint32_t key_low, uint32_t key_high, uint32_t high) {
    return key_low ^ ((key_high ^ high) * 0x9E3779B1u);
}

/* Vector forms of the bfloat16 helpers, on 32-bit lanes (the scalar helpers above are the
 * definition: each lane computes exactly what they compute). Compilers narrow 32 -> 16 bits
 * poorly without AVX512BW, hence intrinsics for the two x86 targets; the baseline target
 * leaves the loops to the vectoriser. The first element not done is returned. */
#if defined(__AVX512F__)
enum { RC_LANES = 16 };
typedef __m512i rc_vec;
/* The zero-masked forms with every lane selected: the same instructions, and GCC 12 does
 * not warn about the "undefined" pass-through operand of the unmasked forms. */
static const __mmask16 RC_ALL_LANES = 0xFFFF;
static inline rc_vec v_set(uint32_t x) { return _mm512_set1_epi32((int)x); }
static inline rc_vec v_index(uint32_t base) {
    return _mm512_add_epi32(v_set(base), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                            11, 12, 13, 14, 15));
}
static inline rc_vec v_load_float(const float *p) { return _mm512_castps_si512(_mm512_loadu_ps(p)); }
static inline rc_vec v_widen16(const uint16_t *p) {
    return _mm512_maskz_cvtepu16_epi32(RC_ALL_LANES, _mm256_loadu_si256((const __m256i *)p));
}
static inline void v_store_float(float *p, rc_vec x) { _mm512_storeu_ps(p, _mm512_castsi512_ps(x)); }
static inline void v_store16(uint16_t *p, rc_vec x) {
    _mm256_storeu_si256((__m256i *)p, _mm512_maskz_cvtepi32_epi16(RC_ALL_LANES, x));
}
static inline rc_vec v_add(rc_vec a, rc_vec b) { return _mm512_add_epi32(a, b); }
static inline rc_vec v_and(rc_vec a, rc_vec b) { return _mm512_and_si512(a, b); }
static inline rc_vec v_or(rc_vec a, rc_vec b) { return _mm512_or_si512(a, b); }
static inline rc_vec v_xor(rc_vec a, rc_vec b) { return _mm512_xor_si512(a, b); }
static inline rc_vec v_mul(rc_vec a, rc_vec b) { return _mm512_mullo_epi32(a, b); }
static inline rc_vec v_shr(rc_vec a, int k) {
    return _mm512_maskz_srli_epi32(RC_ALL_LANES, a, (unsigned)k);
}
static inline rc_vec v_shl(rc_vec a, int k) {
    return _mm512_maskz_slli_epi32(RC_ALL_LANES, a, (unsigned)k);
}
/* pick(a > b, if_true, if_false), unsigned 32-bit compare */
static inline rc_vec v_pick_greater(rc_vec a, rc_vec b, rc_vec if_true, rc_vec if_false) {
    return _mm512_mask_blend_epi32(_mm512_cmpgt_epu32_mask(a, b), if_false, if_true);
}
/* Float lanes for the fused loops: one IEEE operation per intrinsic, as the scalar code. */
typedef __m512 rc_fvec;
static inline rc_fvec f_set(float x) { return _mm512_set1_ps(x); }
static inline rc_fvec f_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void f_store(float *p, rc_fvec x) { _mm512_storeu_ps(p, x); }
static inline rc_fvec f_add(rc_fvec a, rc_fvec b) { return _mm512_add_ps(a, b); }
static inline rc_fvec f_sub(rc_fvec a, rc_fvec b) { return _mm512_sub_ps(a, b); }
static inline rc_fvec f_mul(rc_fvec a, rc_fvec b) { return _mm512_mul_ps(a, b); }
static inline rc_fvec f_div(rc_fvec a, rc_fvec b) { return _mm512_div_ps(a, b); }
static inline rc_fvec f_sqrt(rc_fvec a) { return _mm512_maskz_sqrt_ps(RC_ALL_LANES, a); }
static inline rc_fvec f_from(rc_vec a) { return _mm512_castsi512_ps(a); }
static inline rc_vec f_bits(rc_fvec a) { return _mm512_castps_si512(a); }
static inline rc_vec v_andnot(rc_vec mask, rc_vec a) {
    return _mm512_maskz_andnot_epi32(RC_ALL_LANES, mask, a);
}
/* select_where(den == 0, 0, q) */
static inline rc_fvec f_zero_where_zero(rc_fvec den, rc_fvec q) {
    return _mm512_mask_mov_ps(q, _mm512_cmp_ps_mask(den, _mm512_setzero_ps(), _CMP_EQ_OQ),
                              _mm512_setzero_ps());
}
#define RC_HAVE_VECTORS 1
#elif defined(__AVX2__)
enum { RC_LANES = 8 };
typedef __m256i rc_vec;
static inline rc_vec v_set(uint32_t x) { return _mm256_set1_epi32((int)x); }
static inline rc_vec v_index(uint32_t base) {
    return _mm256_add_epi32(v_set(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline rc_vec v_load_float(const float *p) { return _mm256_castps_si256(_mm256_loadu_ps(p)); }
static inline rc_vec v_widen16(const uint16_t *p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
}
static inline void v_store_float(float *p, rc_vec x) { _mm256_storeu_ps(p, _mm256_castsi256_ps(x)); }
static inline void v_store16(uint16_t *p, rc_vec x) {      /* lanes hold values <= 0xFFFF */
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(x, x), 0xD8);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
}
static inline rc_vec v_add(rc_vec a, rc_vec b) { return _mm256_add_epi32(a, b); }
static inline rc_vec v_and(rc_vec a, rc_vec b) { return _mm256_and_si256(a, b); }
static inline rc_vec v_or(rc_vec a, rc_vec b) { return _mm256_or_si256(a, b); }
static inline rc_vec v_xor(rc_vec a, rc_vec b) { return _mm256_xor_si256(a, b); }
static inline rc_vec v_mul(rc_vec a, rc_vec b) { return _mm256_mullo_epi32(a, b); }
static inline rc_vec v_shr(rc_vec a, int k) { return _mm256_srli_epi32(a, k); }
static inline rc_vec v_shl(rc_vec a, int k) { return _mm256_slli_epi32(a, k); }
static inline rc_vec v_pick_greater(rc_vec a, rc_vec b, rc_vec if_true, rc_vec if_false) {
    const rc_vec flip = v_set(0x80000000u);              /* unsigned order via signed compare */
    const rc_vec mask = _mm256_cmpgt_epi32(v_xor(a, flip), v_xor(b, flip));
    return _mm256_blendv_epi8(if_false, if_true, mask);
}
typedef __m256 rc_fvec;
static inline rc_fvec f_set(float x) { return _mm256_set1_ps(x); }
static inline rc_fvec f_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void f_store(float *p, rc_fvec x) { _mm256_storeu_ps(p, x); }
static inline rc_fvec f_add(rc_fvec a, rc_fvec b) { return _mm256_add_ps(a, b); }
static inline rc_fvec f_sub(rc_fvec a, rc_fvec b) { return _mm256_sub_ps(a, b); }
static inline rc_fvec f_mul(rc_fvec a, rc_fvec b) { return _mm256_mul_ps(a, b); }
static inline rc_fvec f_div(rc_fvec a, rc_fvec b) { return _mm256_div_ps(a, b); }
static inline rc_fvec f_sqrt(rc_fvec a) { return _mm256_sqrt_ps(a); }
static inline rc_fvec f_from(rc_vec a) { return _mm256_castsi256_ps(a); }
static inline rc_vec f_bits(rc_fvec a) { return _mm256_castps_si256(a); }
static inline rc_vec v_andnot(rc_vec mask, rc_vec a) { return _mm256_andnot_si256(mask, a); }
static inline rc_fvec f_zero_where_zero(rc_fvec den, rc_fvec q) {
    return _mm256_andnot_ps(_mm256_cmp_ps(den, _mm256_setzero_ps(), _CMP_EQ_OQ), q);
}
#define RC_HAVE_VECTORS 1
#endif

#ifdef RC_HAVE_VECTORS
static inline ptrdiff_t widen_bfloat16_vector(const uint16_t *source, ptrdiff_t n, float *out) {
    ptrdiff_t i = 0;
    for (; i + RC_LANES <= n; i += RC_LANES) v_store_float(out + i, v_shl(v_widen16(source + i), 16));
    return i;
}
static inline rc_vec v_fmix32(rc_vec h) {
    h = v_xor(h, v_shr(h, 16));
    h = v_mul(h, v_set(0x85EBCA6Bu));
    h = v_xor(h, v_shr(h, 13));
    h = v_mul(h, v_set(0xC2B2AE35u));
    return v_xor(h, v_shr(h, 16));
}
/* round_bfloat16_nearest / _stochastic on lanes: (u + add) >> 16 keeps the sign for every
 * non-NaN u; NaN lanes become sign | 0x7FC0. */
static inline rc_vec v_round_bfloat16(rc_vec u, rc_vec add) {
    const rc_vec rounded = v_shr(v_add(u, add), 16);
    const rc_vec nan_bits = v_or(v_and(v_shr(u, 16), v_set(0x8000u)), v_set(0x7FC0u));
    return v_pick_greater(v_and(u, v_set(0x7FFFFFFFu)), v_set(0x7F800000u), nan_bits, rounded);
}
static inline ptrdiff_t store_bfloat16_nearest_vector(const float *value, ptrdiff_t n,
                                                      uint16_t *out) {
    ptrdiff_t i = 0;
    for (; i + RC_LANES <= n; i += RC_LANES) {
        const rc_vec u = v_load_float(value + i);
        const rc_vec add = v_add(v_set(0x7FFFu), v_and(v_shr(u, 16), v_set(1u)));
        v_store16(out + i, v_round_bfloat16(u, add));
    }
    return i;
}
static inline ptrdiff_t store_bfloat16_stochastic_vector(const float *value, ptrdiff_t n,
                                                         uint16_t *out, uint32_t low_base,
                                                         uint32_t key_before, uint32_t key_after) {
    ptrdiff_t i = 0;
    for (; i + RC_LANES <= n; i += RC_LANES) {
        const rc_vec low = v_index(low_base + (uint32_t)i);
        /* a lane past a 2**32 boundary has low < low_base: it takes the next key */
        const rc_vec key = v_pick_greater(v_set(low_base), low, v_set(key_after),
                                          v_set(key_before));
        const rc_vec random = v_shr(v_fmix32(v_xor(low, key)), 16);
        v_store16(out + i, v_round_bfloat16(v_load_float(value + i), random));
    }
    return i;
}
#else
static inline ptrdiff_t widen_bfloat16_vector(const uint16_t *, ptrdiff_t, float *) { return 0; }
static inline ptrdiff_t store_bfloat16_nearest_vector(const float *, ptrdiff_t, uint16_t *) {
    return 0;
}
static inline ptrdiff_t store_bfloat16_stochastic_vector(const float *, ptrdiff_t, uint16_t *,
                                                         uint32_t, uint32_t, uint32_t) {
    return 0;
}
#endif

static void widen_block(int dtype, const uint16_t *__restrict source, ptrdiff_t n,
                        float *__restrict out) {
    if (dtype == RC_BFLOAT16) {
        for (ptrdiff_t i = widen_bfloat16_vector(source, n, out); i < n; ++i)
            out[i] = widen_bfloat16(source[i]);
    } else {
        for (ptrdiff_t i = 0; i < n; ++i) out[i] = widen_float16(source[i]);
    }
}

/* Elements [first, first + n) of a bfloat16 buffer from float32 `value`. */
static void store_bfloat16(const float *__restrict value, ptrdiff_t n, uint16_t *__restrict out,
                           bool stochastic, uint64_t key, ptrdiff_t first) {
    if (!stochastic) {
        for (ptrdiff_t i = store_bfloat16_nearest_vector(value, n, out); i < n; ++i)
            out[i] = round_bfloat16_nearest(value[i]);
        return;
    }
    /* 16 bits per element: fmix32(low ^ high_key(high)) >> 16 (reference.random_bits). A
     * block crosses at most one 2**32 boundary, so two keys serve it. */
    const uint32_t key_low = (uint32_t)key, key_high = (uint32_t)(key >> 32);
    const uint32_t low_base = (uint32_t)(uint64_t)first;
    const uint32_t high_base = (uint32_t)((uint64_t)first >> 32);
    const uint32_t key_before = high_key(key_low, key_high, high_base);
    const uint32_t key_after = high_key(key_low, key_high, high_base + 1u);
    for (ptrdiff_t i = store_bfloat16_stochastic_vector(value, n, out, low_base, key_before,
                                                        key_after); i < n; ++i) {
        const uint32_t low = low_base + (uint32_t)i;
        const uint32_t mixed = low ^ pick(low < low_base, key_after, key_before);
        out[i] = round_bfloat16_stochastic(value[i], fmix32(mixed) >> 16);
    }
}

static void store_float16(const float *__restrict value, ptrdiff_t n, uint16_t *__restrict out) {
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = round_float16_nearest(value[i]);
}

/* A low-precision store: bfloat16 as `stochastic` says, float16 always to nearest. */
static inline void store_low(int dtype, const float *value, ptrdiff_t n, uint16_t *out,
                             bool stochastic, uint64_t key, ptrdiff_t first) {
    if (dtype == RC_BFLOAT16)
        store_bfloat16(value, n, out, stochastic, key, first);
    else
        store_float16(value, n, out);
}

#include "lowp_fused.hpp"

/* rc_lowp_fn: elements [start, stop) of one low-precision tensor, block by block. */
static void lowp_run(rc_kernel_fn kernel, const rc_hyper *hyper, const rc_buffers *buffers,
                     ptrdiff_t size, ptrdiff_t start, ptrdiff_t stop) {
    (void)size;
    if (fused_run(kernel, hyper, buffers, start, stop)) return;
    const rc_lowp *lowp = buffers->lowp;
    alignas(64) float grad_block[RC_LOWP_BLOCK];
    alignas(64) float preprocessed[RC_LOWP_BLOCK];
    alignas(64) float param_block[RC_LOWP_BLOCK];
    alignas(64) float state_blocks[4][RC_LOWP_BLOCK];
    void *const states[4] = {buffers->square_avg, buffers->momentum_buffer, buffers->grad_avg,
                             buffers->max_square_avg};
    const bool wide_param = lowp->param_dtype != RC_FLOAT32;
    const bool wide_state = lowp->state_dtype != RC_FLOAT32;
    const bool stochastic = lowp->stochastic != 0;
    for (ptrdiff_t first = start; first < stop; first += RC_LOWP_BLOCK) {
        const ptrdiff_t n = stop - first < RC_LOWP_BLOCK ? stop - first : RC_LOWP_BLOCK;
        const float *grad;
        if (lowp->grad_dtype == RC_FLOAT32) {
            grad = static_cast<const float *>(buffers->grad) + first;
        } else {
            widen_block(lowp->grad_dtype, static_cast<const uint16_t *>(buffers->grad) + first,
                        n, grad_block);
            grad = grad_block;
        }
        if (hyper->preprocess) {
            grad_read_pass<float>(hyper, grad, n, 0, n, RC_READ_PREPROCESS, preprocessed);
            grad = preprocessed;
        }
        float *param;
        if (wide_param) {
            widen_block(lowp->param_dtype, static_cast<uint16_t *>(buffers->param) + first, n,
                        param_block);
            param = param_block;
        } else {
            param = static_cast<float *>(buffers->param) + first;
        }
        float *state[4];
        for (int k = 0; k < 4; ++k) {
            if (states[k] == nullptr) {
                state[k] = nullptr;
            } else if (wide_state) {
                widen_block(lowp->state_dtype, static_cast<uint16_t *>(states[k]) + first, n,
                            state_blocks[k]);
                state[k] = state_blocks[k];
            } else {
                state[k] = static_cast<float *>(states[k]) + first;
            }
        }
        rc_buffers local = {param, grad, state[0], state[1], state[2], state[3], nullptr};
        kernel(hyper, &local, 0, n);
        if (wide_param)
            store_low(lowp->param_dtype, param, n,
                      static_cast<uint16_t *>(buffers->param) + first, stochastic,
                      lowp->keys[0], first);
        if (wide_state)
            for (int k = 0; k < 4; ++k)
                if (states[k] != nullptr)
                    store_low(lowp->state_dtype, state[k], n,
                              static_cast<uint16_t *>(states[k]) + first, stochastic,
                              lowp->keys[k + 1], first);
        if (lowp->param_copy != nullptr)
            store_low(lowp->copy_dtype, param, n,
                      static_cast<uint16_t *>(lowp->param_copy) + first, false, 0, first);
    }
}

/* The same-traffic twin: every buffer read and written with integer adds of the grad's
 * bits (2-byte buffers take its top 16 bits), the copy written from the param's bits.
 * Block by block, one buffer at a time: the grad block is read again from L1, memory sees
 * the same bytes, and one small loop per dtype pair serves every buffer set. */
enum { RC_TRAFFIC_BLOCK = 1024 };

template <typename S, typename G>
__attribute__((noinline)) static void add_grad_bits(ptrdiff_t n, S *__restrict state,
                                                    const G *__restrict grad) {
    const int shift = sizeof(S) < sizeof(G) ? 16 : 0;
#pragma GCC unroll 1
    for (ptrdiff_t i = 0; i < n; ++i) state[i] += (S)((uint32_t)grad[i] >> shift);
}

template <typename P, typename G, bool COPY>
__attribute__((noinline)) static void add_grad_bits_param(ptrdiff_t n, P *__restrict param,
                                                          const G *__restrict grad,
                                                          uint16_t *__restrict copy) {
    const int shift = sizeof(P) < sizeof(G) ? 16 : 0;
#pragma GCC unroll 1
    for (ptrdiff_t i = 0; i < n; ++i) {
        const P p = param[i] + (P)((uint32_t)grad[i] >> shift);
        param[i] = p;
        if (COPY) copy[i] = (uint16_t)((uint32_t)p >> (sizeof(P) > 2 ? 16 : 0));
    }
}

template <typename P, typename G, typename S>
static void lowp_traffic_typed(const rc_buffers *b, ptrdiff_t start, ptrdiff_t stop) {
    S *const states[4] = {static_cast<S *>(b->square_avg), static_cast<S *>(b->momentum_buffer),
                          static_cast<S *>(b->grad_avg), static_cast<S *>(b->max_square_avg)};
    P *const param = static_cast<P *>(b->param);
    const G *const grad = static_cast<const G *>(b->grad);
    uint16_t *const copy = static_cast<uint16_t *>(b->lowp->param_copy);
    for (ptrdiff_t at = start; at < stop; at += RC_TRAFFIC_BLOCK) {
        const ptrdiff_t n = stop - at < RC_TRAFFIC_BLOCK ? stop - at : RC_TRAFFIC_BLOCK;
        for (int k = 0; k < 4; ++k)
            if (states[k] != nullptr) add_grad_bits<S, G>(n, states[k] + at, grad + at);
        if (copy != nullptr)
            add_grad_bits_param<P, G, true>(n, param + at, grad + at, copy + at);
        else
            add_grad_bits_param<P, G, false>(n, param + at, grad + at, nullptr);
    }
}

static void lowp_traffic(rc_kernel_fn, const rc_hyper *, const rc_buffers *b, ptrdiff_t,
                         ptrdiff_t start, ptrdiff_t stop) {
    const rc_lowp *lowp = b->lowp;
    const int key = (lowp->param_dtype != RC_FLOAT32) * 4 + (lowp->grad_dtype != RC_FLOAT32) * 2
                    + (lowp->state_dtype != RC_FLOAT32);
    switch (key) {
    case 0: lowp_traffic_typed<uint32_t, uint32_t, uint32_t>(b, start, stop); break;
    case 1: lowp_traffic_typed<uint32_t, uint32_t, uint16_t>(b, start, stop); break;
    case 2: lowp_traffic_typed<uint32_t, uint16_t, uint32_t>(b, start, stop); break;
    case 3: lowp_traffic_typed<uint32_t, uint16_t, uint16_t>(b, start, stop); break;
    case 4: lowp_traffic_typed<uint16_t, uint32_t, uint32_t>(b, start, stop); break;
    case 5: lowp_traffic_typed<uint16_t, uint32_t, uint16_t>(b, start, stop); break;
    case 6: lowp_traffic_typed<uint16_t, uint16_t, uint32_t>(b, start, stop); break;
    default: lowp_traffic_typed<uint16_t, uint16_t, uint16_t>(b, start, stop); break;
    }
}

/* The grad read pass for bfloat16/float16 grads: each chunk (or block) widened, then the
 * float32 pass on it, so norms and preprocessing equal those of the widened grads. */
template <int DTYPE>
static int lowp_read_pass(const rc_hyper *hyper, const void *grad_void, ptrdiff_t size,
                          ptrdiff_t first, ptrdiff_t stop_at, int mode, void *out) {
    const uint16_t *grad = static_cast<const uint16_t *>(grad_void);
    alignas(64) float block[RC_NORM_CHUNK];
    int seen = 0;
    if (mode == RC_READ_PREPROCESS) {
        float *result = static_cast<float *>(out);
        for (ptrdiff_t at = first; at < stop_at; at += RC_NORM_CHUNK) {
            const ptrdiff_t n = stop_at - at < RC_NORM_CHUNK ? stop_at - at : RC_NORM_CHUNK;
            widen_block(DTYPE, grad + at, n, block);
            grad_read_pass<float>(hyper, block, n, 0, n, mode, result + (at - first));
        }
        return 0;
    }
    double *partials = static_cast<double *>(out);
    for (ptrdiff_t chunk = first; chunk < stop_at; ++chunk) {
        const ptrdiff_t at = chunk * RC_NORM_CHUNK;
        const ptrdiff_t n = size - at < RC_NORM_CHUNK ? size - at : RC_NORM_CHUNK;
        widen_block(DTYPE, grad + at, n, block);
        seen |= grad_read_pass<float>(hyper, block, n, 0, 1, mode, partials + chunk);
    }
    return seen;
}

}  // namespace RC_TARGET_NAMESPACE

extern "C" rc_lowp_fn RC_CONCAT(rc_lowp_, RC_TARGET_NAMESPACE)(int traffic) {
    return traffic ? &RC_TARGET_NAMESPACE::lowp_traffic : &RC_TARGET_NAMESPACE::lowp_run;
}
extern "C" rc_nonfinite_fn RC_CONCAT(rc_lowp_read_, RC_TARGET_NAMESPACE)(int dtype) {
    return dtype == RC_BFLOAT16 ? &RC_TARGET_NAMESPACE::lowp_read_pass<RC_BFLOAT16>
                                : &RC_TARGET_NAMESPACE::lowp_read_pass<RC_FLOAT16>;
}
