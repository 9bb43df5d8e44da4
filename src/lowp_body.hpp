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

/* 16 bits for element index (high:low) under key (key_high:key_low): reference.random_bits. */
static inline uint32_t random16(uint32_t low, uint32_t high, uint32_t key_low, uint32_t key_high) {
    return fmix32(fmix32(low ^ key_low) ^ high ^ key_high) >> 16;
}

static void widen_block(int dtype, const uint16_t *__restrict source, ptrdiff_t n,
                        float *__restrict out) {
    if (dtype == RC_BFLOAT16) {
        for (ptrdiff_t i = 0; i < n; ++i) out[i] = widen_bfloat16(source[i]);
    } else {
        for (ptrdiff_t i = 0; i < n; ++i) out[i] = widen_float16(source[i]);
    }
}

/* Elements [first, first + n) of a bfloat16 buffer from float32 `value`. */
static void store_bfloat16(const float *__restrict value, ptrdiff_t n, uint16_t *__restrict out,
                           bool stochastic, uint64_t key, ptrdiff_t first) {
    if (!stochastic) {
        for (ptrdiff_t i = 0; i < n; ++i) out[i] = round_bfloat16_nearest(value[i]);
        return;
    }
    const uint32_t key_low = (uint32_t)key, key_high = (uint32_t)(key >> 32);
    const uint32_t low_base = (uint32_t)(uint64_t)first;
    const uint32_t high_base = (uint32_t)((uint64_t)first >> 32);
    for (ptrdiff_t i = 0; i < n; ++i) {
        const uint32_t low = low_base + (uint32_t)i;          /* n < 2**32: at most one carry */
        const uint32_t high = high_base + (uint32_t)(low < low_base);
        out[i] = round_bfloat16_stochastic(value[i], random16(low, high, key_low, key_high));
    }
}

static void store_float16(const float *__restrict value, ptrdiff_t n, uint16_t *__restrict out) {
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = round_float16_nearest(value[i]);
}

static inline void store_copy(int dtype, const float *value, ptrdiff_t n, uint16_t *out) {
    if (dtype == RC_BFLOAT16)
        store_bfloat16(value, n, out, false, 0, 0);
    else
        store_float16(value, n, out);
}

/* rc_lowp_fn: elements [start, stop) of one low-precision tensor, block by block. */
static void lowp_run(rc_kernel_fn kernel, const rc_hyper *hyper, const rc_buffers *buffers,
                     ptrdiff_t size, ptrdiff_t start, ptrdiff_t stop) {
    (void)size;
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
            widen_block(RC_BFLOAT16, static_cast<uint16_t *>(buffers->param) + first, n,
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
                widen_block(RC_BFLOAT16, static_cast<uint16_t *>(states[k]) + first, n,
                            state_blocks[k]);
                state[k] = state_blocks[k];
            } else {
                state[k] = static_cast<float *>(states[k]) + first;
            }
        }
        rc_buffers local = {param, grad, state[0], state[1], state[2], state[3], nullptr};
        kernel(hyper, &local, 0, n);
        if (wide_param)
            store_bfloat16(param, n, static_cast<uint16_t *>(buffers->param) + first,
                           stochastic, lowp->keys[0], first);
        if (wide_state)
            for (int k = 0; k < 4; ++k)
                if (states[k] != nullptr)
                    store_bfloat16(state[k], n, static_cast<uint16_t *>(states[k]) + first,
                                   stochastic, lowp->keys[k + 1], first);
        if (lowp->param_copy != nullptr)
            store_copy(lowp->copy_dtype, param, n,
                       static_cast<uint16_t *>(lowp->param_copy) + first);
    }
}

/* The same-traffic twin: every buffer read and written with integer adds of the grad's
 * bits (2-byte buffers take its top 16 bits), the copy written from the param's bits. */
template <typename P, typename G, typename S>
static void lowp_traffic_loop(ptrdiff_t n, P *__restrict param, const G *__restrict grad,
                              S *__restrict square_avg, S *__restrict momentum_buffer,
                              S *__restrict grad_avg, S *__restrict max_square_avg,
                              uint16_t *__restrict copy) {
    const int shift = sizeof(G) > sizeof(uint16_t) ? 16 : 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        const uint32_t g = (uint32_t)grad[i];
        const S gs = (S)(sizeof(S) < sizeof(G) ? g >> shift : g);
        const P gp = (P)(sizeof(P) < sizeof(G) ? g >> shift : g);
        square_avg[i] += gs;
        if (momentum_buffer) momentum_buffer[i] += gs;
        if (grad_avg) grad_avg[i] += gs;
        if (max_square_avg) max_square_avg[i] += gs;
        const P p = param[i] + gp;
        param[i] = p;
        if (copy) copy[i] = (uint16_t)((uint32_t)p >> (sizeof(P) > 2 ? 16 : 0));
    }
}

template <typename P, typename G, typename S>
static void lowp_traffic_typed(const rc_buffers *b, ptrdiff_t start, ptrdiff_t stop) {
    const rc_lowp *lowp = b->lowp;
    auto at_s = [start](void *base) { return base ? static_cast<S *>(base) + start : nullptr; };
    lowp_traffic_loop<P, G, S>(
        stop - start, static_cast<P *>(b->param) + start, static_cast<const G *>(b->grad) + start,
        at_s(b->square_avg), at_s(b->momentum_buffer), at_s(b->grad_avg),
        at_s(b->max_square_avg),
        lowp->param_copy ? static_cast<uint16_t *>(lowp->param_copy) + start : nullptr);
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
