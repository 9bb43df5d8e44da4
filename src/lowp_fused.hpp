/* The fused low-precision loops, included by lowp_body.hpp inside its target namespace
 * (it brings the lane helpers and the stores they use). */

/* Fused loops for the common families (the x86 targets): one pass that widens on load, runs
 * the update of rmsprop_chunk (the same IEEE operations in the same order, no FMA) and
 * rounds on store, so no block goes through scratch. Written with the lane helpers above:
 * GCC's vectoriser picks half-width vectors for the mixed 16/32-bit loop (no AVX512BW) and
 * spills. Weight decay mode, momentum placement and nesterov are loop-invariant selects
 * (both sides computed, one kept: exact); whether there is weight decay at all, bias
 * correction and momentum stay template parameters (work, a division, a buffer). Centered, amsgrad,
 * preprocessed grads, the baseline target and the other dtype mixes take the block runner
 * below. */
enum { RC_NO_COPY = -1 };

#ifdef RC_HAVE_VECTORS
template <int DTYPE> struct Lane;
template <> struct Lane<RC_FLOAT32> {
    typedef float type;
    static inline rc_fvec load(const float *p) { return f_load(p); }
};
template <> struct Lane<RC_BFLOAT16> {
    typedef uint16_t type;
    static inline rc_fvec load(const uint16_t *p) { return f_from(v_shl(v_widen16(p), 16)); }
};

/* round_float16_nearest on lanes (the scalar helper is the definition). */
static inline rc_vec v_round_float16(rc_vec u) {
    const rc_vec magnitude = v_and(u, v_set(0x7FFFFFFFu));
    const rc_vec normal = v_shr(v_add(v_add(magnitude, v_set(0xFFFu - 0x38000000u)),
                                      v_and(v_shr(magnitude, 13), v_set(1u))), 13);
    const rc_vec tiny = v_add(f_bits(f_add(f_from(magnitude), f_set(0.5f))),
                              v_set(0u - 0x3F000000u));
    rc_vec finite = v_pick_greater(v_set(0x38800000u), magnitude, tiny, normal);
    finite = v_pick_greater(magnitude, v_set(0x477FFFFFu), v_set(0x7C00u), finite);
    const rc_vec payload = v_shr(v_and(magnitude, v_set(0x7FFFFFu)), 13);
    const rc_vec empty = v_pick_greater(v_set(1u), payload, v_set(1u), v_set(0u));
    const rc_vec nan_bits = v_or(v_or(v_set(0x7C00u), payload), empty);
    const rc_vec bits = v_pick_greater(magnitude, v_set(0x7F800000u), nan_bits, finite);
    return v_or(bits, v_and(v_shr(u, 16), v_set(0x8000u)));
}

/* A store of lanes x: float32 as is; bfloat16 to nearest-even, or stochastically with the
 * bits reference.random_bits gives the lanes' element indices `low` under `key`. */
template <int DTYPE, bool STOCHASTIC> struct Store;
template <bool STOCHASTIC> struct Store<RC_FLOAT32, STOCHASTIC> {
    static inline void put(float *out, rc_fvec x, rc_vec, rc_vec) { f_store(out, x); }
};
template <> struct Store<RC_BFLOAT16, false> {
    static inline void put(uint16_t *out, rc_fvec x, rc_vec, rc_vec) {
        const rc_vec u = f_bits(x);
        v_store16(out, v_round_bfloat16(u, v_add(v_set(0x7FFFu), v_and(v_shr(u, 16), v_set(1u)))));
    }
};
template <> struct Store<RC_BFLOAT16, true> {
    static inline void put(uint16_t *out, rc_fvec x, rc_vec low, rc_vec key) {
        v_store16(out, v_round_bfloat16(f_bits(x), v_shr(v_fmix32(v_xor(low, key)), 16)));
    }
};

struct FusedScalars {
    rc_fvec lr, alpha, one_minus_alpha, eps_inside, eps_outside, weight_decay,
        lr_weight_decay, momentum, bias_correction;
    rc_vec sign, coupled, decoupled, inside, nesterov, key_param, key_square, key_momentum;
};

static inline rc_fvec f_pick(rc_vec mask, rc_fvec if_true, rc_fvec if_false) {
    return f_from(v_or(v_and(f_bits(if_true), mask), v_andnot(mask, f_bits(if_false))));
}

/* K * RC_LANES elements at the pointers; `low` holds the first lanes' element indices' low
 * 32 bits. The K vectors go stage by stage side by side: their divisions and square roots
 * overlap instead of each vector waiting on its own chain. */
template <int K, bool DECAY, bool BIAS, bool MOM, int PD, int GD, int SD, int CD,
          bool STOCHASTIC>
static inline __attribute__((always_inline)) void fused_lanes(
        const FusedScalars &c, rc_vec low, typename Lane<PD>::type *param,
        const typename Lane<GD>::type *grad, typename Lane<SD>::type *square_avg,
        typename Lane<SD>::type *momentum_buffer, uint16_t *copy) {
    rc_fvec p[K], g[K], v[K], u[K], b[K], step_in[K];
    rc_vec at[K];
    for (int k = 0; k < K; ++k) {
        const int o = k * RC_LANES;
        at[k] = v_add(low, v_set((uint32_t)o));
        p[k] = Lane<PD>::load(param + o);
        g[k] = f_from(v_xor(f_bits(Lane<GD>::load(grad + o)), c.sign));
        if (DECAY) {
            const rc_fvec g_coupled = f_add(g[k], f_mul(c.weight_decay, p[k]));
            const rc_fvec p_decoupled = f_sub(p[k], f_mul(c.lr_weight_decay, p[k]));
            g[k] = f_pick(c.coupled, g_coupled, g[k]);
            p[k] = f_pick(c.decoupled, p_decoupled, p[k]);
        }
        v[k] = f_add(f_mul(c.alpha, Lane<SD>::load(square_avg + o)),
                     f_mul(c.one_minus_alpha, f_mul(g[k], g[k])));
    }
    for (int k = 0; k < K; ++k) {
        const rc_fvec var = BIAS ? f_div(v[k], c.bias_correction) : v[k];
        const rc_fvec den = f_add(f_sqrt(f_add(var, c.eps_inside)), c.eps_outside);
        u[k] = f_zero_where_zero(den, f_div(g[k], den));
    }
    for (int k = 0; k < K; ++k)
        Store<SD, STOCHASTIC>::put(square_avg + k * RC_LANES, v[k], at[k], c.key_square);
    for (int k = 0; k < K; ++k) {
        if (MOM) {
            step_in[k] = f_pick(c.inside, f_mul(c.lr, u[k]), u[k]);
            b[k] = f_add(f_mul(c.momentum, Lane<SD>::load(momentum_buffer + k * RC_LANES)),
                         step_in[k]);
            const rc_fvec direction = f_pick(c.nesterov, f_add(f_mul(c.momentum, b[k]),
                                                               step_in[k]), b[k]);
            p[k] = f_sub(p[k], f_pick(c.inside, direction, f_mul(c.lr, direction)));
        } else {
            p[k] = f_sub(p[k], f_mul(c.lr, u[k]));
        }
    }
    for (int k = 0; k < K; ++k) {
        const int o = k * RC_LANES;
        if (MOM) Store<SD, STOCHASTIC>::put(momentum_buffer + o, b[k], at[k], c.key_momentum);
        Store<PD, STOCHASTIC>::put(param + o, p[k], at[k], c.key_param);
        if (CD == RC_BFLOAT16) Store<RC_BFLOAT16, false>::put(copy + o, p[k], at[k], at[k]);
        if (CD == RC_FLOAT16) v_store16(copy + o, v_round_float16(f_bits(p[k])));
    }
}

enum { RC_FUSED_WAYS = 2 };      /* vectors in flight per iteration of the main loop */

static inline rc_vec v_mask(bool condition) { return v_set(condition ? 0xFFFFFFFFu : 0u); }

/* Elements [0, n) of pointers already offset to the segment; `low_base` is the low 32 bits
 * of element 0's index in the tensor and no element's low bits wrap (the caller splits at
 * 2**32), so keys[] (param, square_avg, momentum_buffer) are the segment's keys. The last
 * n % (RC_FUSED_WAYS * RC_LANES) elements go through zero-padded buffers: same lanes, same
 * bits. */
template <bool DECAY, bool BIAS, bool MOM, int PD, int GD, int SD, int CD, bool STOCHASTIC>
static void fused_chunk(const rc_hyper *hyper, int wd_mode, int mom_mode, ptrdiff_t n,
                        uint32_t low_base, const uint32_t *keys, void *param_void,
                        const void *grad_void, void *square_void, void *momentum_void,
                        void *copy_void) {
    typedef typename Lane<PD>::type P;
    typedef typename Lane<GD>::type G;
    typedef typename Lane<SD>::type S;
    P *param = static_cast<P *>(param_void);
    const G *grad = static_cast<const G *>(grad_void);
    S *square_avg = static_cast<S *>(square_void);
    S *momentum_buffer = static_cast<S *>(momentum_void);
    uint16_t *copy = static_cast<uint16_t *>(copy_void);
    FusedScalars c;
    c.lr = f_set((float)hyper->lr);
    c.alpha = f_set((float)hyper->alpha);
    c.one_minus_alpha = f_set((float)hyper->one_minus_alpha);
    c.eps_inside = f_set((float)hyper->eps_inside);
    c.eps_outside = f_set((float)hyper->eps_outside);
    c.weight_decay = f_set((float)hyper->weight_decay);
    c.lr_weight_decay = f_set((float)hyper->lr_weight_decay);
    c.momentum = f_set((float)hyper->momentum);
    c.bias_correction = f_set((float)hyper->bias_correction);
    c.sign = v_set(hyper->maximize ? 0x80000000u : 0u);
    c.coupled = v_mask(wd_mode == RC_WD_COUPLED);
    c.decoupled = v_mask(wd_mode == RC_WD_DECOUPLED);
    c.inside = v_mask(mom_mode == RC_MOM_LR_INSIDE);
    c.nesterov = v_mask(hyper->nesterov != 0);
    c.key_param = v_set(keys[0]);
    c.key_square = v_set(keys[1]);
    c.key_momentum = v_set(keys[2]);
    /* The last n % TAIL elements run through zero-padded copies in the same loop (same
     * lanes, same bits): one inlined body per instance instead of two. */
    enum { TAIL = RC_FUSED_WAYS * RC_LANES };
    P p_tail[TAIL] = {};
    G g_tail[TAIL] = {};
    S v_tail[TAIL] = {}, b_tail[TAIL] = {};
    uint16_t c_tail[TAIL];
    const ptrdiff_t rest = n % TAIL;
    for (ptrdiff_t i = 0; i < n; i += TAIL) {
        P *p_at = param + i;
        const G *g_at = grad + i;
        S *v_at = square_avg + i, *b_at = MOM ? momentum_buffer + i : nullptr;
        uint16_t *c_at = CD != RC_NO_COPY ? copy + i : nullptr;
        if (n - i < TAIL) {
            __builtin_memcpy(p_tail, p_at, rest * sizeof(P));
            __builtin_memcpy(g_tail, g_at, rest * sizeof(G));
            __builtin_memcpy(v_tail, v_at, rest * sizeof(S));
            if (MOM) __builtin_memcpy(b_tail, b_at, rest * sizeof(S));
            p_at = p_tail, g_at = g_tail, v_at = v_tail, b_at = b_tail, c_at = c_tail;
        }
        fused_lanes<RC_FUSED_WAYS, DECAY, BIAS, MOM, PD, GD, SD, CD, STOCHASTIC>(
            c, v_index(low_base + (uint32_t)i), p_at, g_at, v_at, b_at, c_at);
    }
    if (rest == 0) return;
    const ptrdiff_t i = n - rest;
    __builtin_memcpy(param + i, p_tail, rest * sizeof(P));
    __builtin_memcpy(square_avg + i, v_tail, rest * sizeof(S));
    if (MOM) __builtin_memcpy(momentum_buffer + i, b_tail, rest * sizeof(S));
    if (CD != RC_NO_COPY) __builtin_memcpy(copy + i, c_tail, rest * sizeof(uint16_t));
}
#endif

typedef void (*rc_fused_fn)(const rc_hyper *, int, int, ptrdiff_t, uint32_t, const uint32_t *,
                            void *, const void *, void *, void *, void *);

#ifdef RC_HAVE_VECTORS
/* The fused dtype families (param, grad, state, copy, whether any stochastic store). */
#define RC_FUSED_FAMILIES(X)                                              \
    X(RC_BFLOAT16, RC_BFLOAT16, RC_BFLOAT16, RC_NO_COPY, true)            \
    X(RC_BFLOAT16, RC_FLOAT32, RC_BFLOAT16, RC_NO_COPY, true)             \
    X(RC_FLOAT32, RC_FLOAT32, RC_BFLOAT16, RC_NO_COPY, true)              \
    X(RC_FLOAT32, RC_FLOAT32, RC_FLOAT32, RC_BFLOAT16, false)             \
    X(RC_FLOAT32, RC_FLOAT32, RC_FLOAT32, RC_FLOAT16, false)

template <bool BIAS, bool MOM, int PD, int GD, int SD, int CD, bool STOCHASTIC>
static inline rc_fused_fn fused_pick_decay(bool decay) {
    return decay ? &fused_chunk<true, BIAS, MOM, PD, GD, SD, CD, STOCHASTIC>
                 : &fused_chunk<false, BIAS, MOM, PD, GD, SD, CD, STOCHASTIC>;
}

template <int PD, int GD, int SD, int CD, bool STOCHASTIC>
static inline rc_fused_fn fused_pick(bool decay, bool bias, bool mom) {
    if (bias) return mom ? fused_pick_decay<true, true, PD, GD, SD, CD, STOCHASTIC>(decay)
                         : fused_pick_decay<true, false, PD, GD, SD, CD, STOCHASTIC>(decay);
    return mom ? fused_pick_decay<false, true, PD, GD, SD, CD, STOCHASTIC>(decay)
               : fused_pick_decay<false, false, PD, GD, SD, CD, STOCHASTIC>(decay);
}
#endif

/* The fused loop for this tensor and the float32 variant `kernel` (found by its address in
 * this target's table: the runner's caller picks both for the same target), or NULL. */
static rc_fused_fn fused_for(rc_kernel_fn kernel, const rc_hyper *hyper, const rc_lowp *lowp,
                             int *wd_mode, int *mom_mode) {
#ifdef RC_HAVE_VECTORS
    int variant = -1;
    for (int v = 0; v < RC_N_VARIANTS; ++v)
        if (TableF32::rmsprop[v] == kernel) variant = v;
    if (variant < 0 || hyper->preprocess) return nullptr;
    const bool centered = (variant / 3) % 2 != 0, bias = (variant / 6) % 2 != 0;
    const bool amsgrad = (variant / 12) % 2 != 0;
    if (centered || amsgrad) return nullptr;
    *wd_mode = variant % 3;
    *mom_mode = variant / 24;
    const bool mom = *mom_mode != RC_MOM_NONE, decay = *wd_mode != RC_WD_NONE;
    const int copy = lowp->param_copy != nullptr ? lowp->copy_dtype : RC_NO_COPY;
    const bool stochastic = lowp->stochastic != 0;
#define RC_FUSED_ROW(PD, GD, SD, CD, HAS_STOCHASTIC)                                        \
    if (lowp->param_dtype == PD && lowp->grad_dtype == GD && lowp->state_dtype == SD       \
            && copy == CD) {                                                               \
        if (HAS_STOCHASTIC && stochastic)                                                  \
            return fused_pick<PD, GD, SD, CD, true>(decay, bias, mom);                     \
        return fused_pick<PD, GD, SD, CD, false>(decay, bias, mom);                        \
    }
    RC_FUSED_FAMILIES(RC_FUSED_ROW)
#undef RC_FUSED_ROW
#else
    (void)kernel, (void)hyper, (void)lowp, (void)wd_mode, (void)mom_mode;
#endif
    return nullptr;
}

static inline void *offset(void *base, ptrdiff_t first, int dtype) {
    if (base == nullptr) return nullptr;
    return static_cast<char *>(base) + first * (dtype == RC_FLOAT32 ? 4 : 2);
}

/* Runs [start, stop) fused, split where the element index's low 32 bits wrap (the
 * stochastic key changes there); false when this tensor takes the block runner. */
static bool fused_run(rc_kernel_fn kernel, const rc_hyper *hyper, const rc_buffers *buffers,
                      ptrdiff_t start, ptrdiff_t stop) {
    const rc_lowp *lowp = buffers->lowp;
    int wd_mode = 0, mom_mode = 0;
    const rc_fused_fn fn = fused_for(kernel, hyper, lowp, &wd_mode, &mom_mode);
    if (fn == nullptr) return false;
    for (ptrdiff_t first = start; first < stop;) {
        const uint64_t high = (uint64_t)first >> 32;
        const ptrdiff_t boundary = (ptrdiff_t)((high + 1) << 32);
        const ptrdiff_t end = stop < boundary ? stop : boundary;
        uint32_t keys[3];                /* lowp->keys 0..2: param, square_avg, momentum */
        for (int k = 0; k < 3; ++k) {
            const uint64_t key = lowp->keys[k];
            keys[k] = high_key((uint32_t)key, (uint32_t)(key >> 32), (uint32_t)high);
        }
        fn(hyper, wd_mode, mom_mode, end - first, (uint32_t)(uint64_t)first, keys,
           offset(buffers->param, first, lowp->param_dtype),
           offset(const_cast<void *>(buffers->grad), first, lowp->grad_dtype),
           offset(buffers->square_avg, first, lowp->state_dtype),
           offset(buffers->momentum_buffer, first, lowp->state_dtype),
           offset(lowp->param_copy, first, RC_BFLOAT16));
        first = end;
    }
    return true;
}
