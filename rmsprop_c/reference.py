"""The RMSprop update in plain NumPy: the executable spec (docs/update-rule.md explains it).

Same operation order and the same scalar rounding as the compiled kernels: every scalar
derived from hyperparameters is computed in Python float (double) and rounded to the buffer
dtype once; every array operation rounds in the buffer dtype. The kernels must equal this
module bit for bit, for every option, SIMD target and thread count.

Two choices the design leaves to the implementation, made explicit here:

* ``max(x, 0)`` (the centered clamp) keeps NaN: ``where(x < 0, 0, x)``.
* ``max(vmax, var)`` (amsgrad) keeps a NaN ``var``: ``where(vmax >= var, vmax, var)``.
* The clamp to ``+-clip_value`` keeps NaN: ``where(g < -c, -c, g)``, then
  ``where(g > c, c, g)``.

Gradient preprocessing comes first, in this order: ``g * grad_scale``, the clamp to
``+-clip_value``, ``* norm_coefficient`` (RMSprop's clip by global norm). The global norm
is a fixed-order float64 reduction, :func:`global_grad_norm`, equal bit for bit to the
compiled one for every thread count.

Low precision (bfloat16 as ``ml_dtypes.bfloat16``, float16): arithmetic in float32 (float64
for float64 params); every low-precision buffer is widened on load (exactly) and rounded
once on store, to nearest-even or stochastically. The widening, both roundings and the
counter-based generator of the stochastic bits are written below in integer arithmetic, so
they do not depend on how NumPy or ml_dtypes happen to cast.

It is slow (one temporary per operation) and does no input checking: use
:func:`rmsprop_c.rmsprop_step`, its fast twin, for real work. This module imports NumPy only;
``rmsprop_c.slow.RMSprop`` is the optimizer stepping with it.
"""

import math

import numpy as np

__all__ = ["rmsprop_step", "preprocess_grad", "global_grad_norm", "norm_of_preprocessed",
           "clip_coefficient", "widen", "round_nearest", "round_stochastic", "random_bits",
           "stream_key", "is_low_precision"]

# The norm's summation order: chunks of NORM_CHUNK elements from each tensor's element 0,
# NORM_LANES interleaved float64 sums per chunk (lane k takes elements i = k mod NORM_LANES),
# lanes added in order, then chunk sums added in order over chunks and tensors.
NORM_CHUNK = 1024
NORM_LANES = 8
# clip_grad_norm_'s guard against a zero norm.
NORM_GUARD = 1e-6


def preprocess_grad(grad, grad_scale=1.0, clip_value=math.inf, norm_coefficient=1.0):
    """The gradient the update uses, in the grad's dtype: scaled, clamped, then multiplied
    by the global-norm coefficient (each scalar rounded to the dtype once). A bfloat16 or
    float16 grad is widened to float32 first."""
    grad = widen(grad)
    dtype = grad.dtype.type
    with np.errstate(all="ignore"):
        clip = dtype(math.inf if clip_value is None else clip_value)
        g = grad * dtype(grad_scale)
        g = np.where(np.less(g, -clip), -clip, g)
        g = np.where(np.greater(g, clip), clip, g)
        return g * dtype(norm_coefficient)


def norm_of_preprocessed(arrays, norm_type=2):
    """The global norm of already preprocessed grads, in the fixed summation order."""
    if float(norm_type) == math.inf:
        largest = 0.0
        for array in arrays:
            magnitude = np.abs(array.astype(np.float64).ravel())
            if np.isnan(magnitude).any():
                return math.nan
            if magnitude.size:
                largest = max(largest, float(magnitude.max()))
        return largest
    total = 0.0
    for array in arrays:
        x = array.astype(np.float64).ravel()
        n_chunks = -(-x.size // NORM_CHUNK)
        padded = np.zeros(n_chunks * NORM_CHUNK)           # + 0.0 changes no lane sum
        padded[:x.size] = x
        with np.errstate(all="ignore"):
            squares = (padded * padded).reshape(n_chunks, NORM_CHUNK // NORM_LANES, NORM_LANES)
            lanes = np.zeros((n_chunks, NORM_LANES))
            for row in range(NORM_CHUNK // NORM_LANES):   # each lane in element order
                lanes += squares[:, row, :]
            chunk_sums = lanes[:, 0].copy()
            for lane in range(1, NORM_LANES):
                chunk_sums += lanes[:, lane]
        for chunk_sum in chunk_sums.tolist():
            total += chunk_sum
    return math.sqrt(total)


def global_grad_norm(grads, norm_type=2, *, grad_scale=1.0, clip_value=math.inf,
                     n_threads=None):
    """The norm of all grads as one vector, after grad_scale and clip_value (the spec of
    :func:`rmsprop_c.global_grad_norm`; ``n_threads`` is ignored)."""
    return norm_of_preprocessed([preprocess_grad(g, grad_scale, clip_value) for g in grads],
                                norm_type)


def clip_coefficient(max_grad_norm, norm):
    """min(1, max_grad_norm / (norm + 1e-6)) in double; 1 when the norm is NaN."""
    coefficient = max_grad_norm / (norm + NORM_GUARD)
    return coefficient if coefficient < 1.0 else 1.0


# ---------------------------------------------------------------------------------------
# Low precision: widening, rounding and the stochastic bits, in integer arithmetic.

try:                                   # bfloat16 arrays exist only with ml_dtypes installed
    from ml_dtypes import bfloat16 as _bfloat16
    BFLOAT16 = np.dtype(_bfloat16)
except ImportError:                    # pragma: no cover - ml_dtypes is a test dependency
    BFLOAT16 = None

_M32 = np.uint32(0xFFFFFFFF)
_M64 = (1 << 64) - 1
# The generator's constants: splitmix64's increment and finalizer, murmur3's fmix32.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
# Streams: which buffer of an element the bits round (param, then STATE_KEYS order).
STREAMS = {"param": 0, "square_avg": 1, "momentum_buffer": 2, "grad_avg": 3,
           "max_square_avg": 4}


def is_low_precision(dtype):
    """True for bfloat16 and float16."""
    dtype = np.dtype(dtype)
    return dtype == np.float16 or (BFLOAT16 is not None and dtype == BFLOAT16)


def _bits16(array):
    return np.ascontiguousarray(array).view(np.uint16).astype(np.uint32)


def _as_float32(bits32):
    return bits32.astype(np.uint32).view(np.float32)


def widen(array):
    """float32 from bfloat16 or float16, exactly (NaN payloads kept); others unchanged.

    bfloat16: its 16 bits become the float32's upper half. float16: sign, exponent rebias
    and mantissa shift for normals, infinities and NaNs (payload shifted up by 13 bits);
    subnormals are m * 2**-24, computed exactly in float32.
    """
    if not is_low_precision(array.dtype):
        return array
    h = _bits16(array)
    if array.dtype != np.float16:
        return _as_float32(h << 16)
    sign = (h & 0x8000) << 16
    magnitude = h & 0x7FFF
    exponent = magnitude & 0x7C00
    normal = (magnitude << 13) + np.uint32(0x38000000)
    special = (magnitude << 13) + np.uint32(0x70000000)          # inf, NaN
    tiny = (magnitude.astype(np.float32) * np.float32(2.0 ** -24)).view(np.uint32)
    bits = np.where(exponent == 0x7C00, special, np.where(exponent == 0, tiny, normal))
    return _as_float32(bits | sign)


def round_nearest(x, dtype):
    """float32 ``x`` rounded to nearest-even in ``dtype`` (bfloat16 or float16).

    Overflow gives +-inf (what rounding to nearest with an unbounded exponent and then
    saturating to inf gives: bfloat16 from 0x7F7F8000, float16 from 65520 up). NaN stays
    NaN with its sign: bfloat16 makes it the quiet NaN 0x7FC0; float16 keeps the top 10
    payload bits (0x7C01 when none are left), as NumPy's cast does. Equals
    ``x.astype(dtype)`` of ml_dtypes and NumPy for every float32.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    sign16 = (u >> 16) & 0x8000
    magnitude = u & 0x7FFFFFFF
    nan = magnitude > 0x7F800000
    with np.errstate(all="ignore"):
        if dtype == np.float16:
            rebias = magnitude - np.uint32(0x38000000) + np.uint32(0xFFF) + ((magnitude >> 13) & 1)
            normal = rebias >> 13
            # subnormal float16 (and zero): the float32 adder rounds to nearest-even for us
            tiny = ((magnitude.view(np.float32) + np.float32(0.5)).view(np.uint32)
                    - np.uint32(0x3F000000))
            finite = np.where(magnitude < 0x38800000, tiny, normal)
            finite = np.where(magnitude >= 0x47800000, np.uint32(0x7C00), finite)
            payload = (magnitude & 0x7FFFFF) >> 13
            nan_bits = 0x7C00 | payload | (payload == 0)
        else:
            finite = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16 & 0x7FFF
            nan_bits = np.uint32(0x7FC0)
    bits = np.where(nan, nan_bits, finite) | sign16
    return bits.astype(np.uint16).view(dtype).reshape(np.shape(x))


def round_stochastic(x, random16, dtype):
    """float32 ``x`` rounded to bfloat16 stochastically with 16 random bits per element.

    The random bits are added below the kept mantissa, then the low 16 bits are dropped:
    x rounds up with probability (distance to the value below) / (spacing). A carry moves
    into the exponent as it should; above the largest bfloat16 the next value up is inf.
    Exact bfloat16 values (zeros and infinities included) never move; NaN becomes the quiet
    NaN 0x7FC0 with its sign, as in :func:`round_nearest`. float16 stores always round to
    nearest (``dtype`` float16 ignores ``random16``).
    """
    if dtype == np.float16:
        return round_nearest(x, dtype)
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    with np.errstate(all="ignore"):
        # sign | magnitude + r: the sign bit is never reached (|x| + r <= 0x7F80FFFF)
        rounded = (u + random16.astype(np.uint32)) >> 16
    bits = np.where(nan, ((u >> 16) & 0x8000) | 0x7FC0, rounded)
    return bits.astype(np.uint16).view(dtype).reshape(np.shape(x))


def _mix64(z):
    """splitmix64's finalizer on a Python int (mod 2**64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def stream_key(seed, step, tensor_index, stream):
    """The 64-bit key of one buffer of one tensor at one step (Python int).

    ``mix(mix(mix(seed + gamma) ^ step) ^ (8 * tensor_index + stream))``, mod 2**64, with
    splitmix64's finalizer as ``mix``. ``step``: the tensor's step count (1 on its first
    step); ``tensor_index``: the param's index in the optimizer (0 in a functional call);
    ``stream``: 0 for the param, 1 to 4 for the state buffers in STATE_KEYS order.
    """
    key = _mix64((int(seed) + GOLDEN_GAMMA) & _M64)
    key = _mix64(key ^ (int(step) & _M64))
    return _mix64(key ^ ((8 * int(tensor_index) + int(stream)) & _M64))


def _fmix32(h):
    """murmur3's 32-bit finalizer, elementwise on uint32 arrays."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_bits(key, first, count):
    """16 random bits for elements ``first .. first + count - 1`` under ``key``.

    Counter-based: element i's bits depend only on (key, i), never on threads, blocks or
    SIMD width. With lo, hi the 32-bit halves of i and k_lo, k_hi those of the key (all
    uint32 arithmetic, mod 2**32):
    ``h = fmix32(lo ^ k_lo ^ ((k_hi ^ hi) * 0x9E3779B1))``; the bits are ``h >> 16``.
    One finalizer per element (two multiplies) keeps the bits cheap enough to vectorise.
    """
    index = np.arange(first, first + count, dtype=np.uint64)
    low = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (index >> np.uint64(32)).astype(np.uint32)
    with np.errstate(all="ignore"):
        high_key = (np.uint32(key >> 32) ^ high) * np.uint32(0x9E3779B1)
        h = _fmix32(low ^ np.uint32(key & 0xFFFFFFFF) ^ high_key)
    return h >> 16


def _store(target, value, rounding, key):
    """float32 ``value`` into ``target``: as is, or rounded once to its low precision."""
    if not is_low_precision(target.dtype):
        target[...] = value
    elif rounding == "stochastic":
        bits = random_bits(key, 0, value.size).reshape(value.shape)
        target[...] = round_stochastic(value, bits, target.dtype)
    else:
        target[...] = round_nearest(value, target.dtype)


def _low_precision_step(param, grad, square_avg, options, rounding, seed, tensor_index,
                        param_copy, states):
    """Widen every buffer to float32, step, then store each once (see rmsprop_step)."""
    step = options["step"]
    wide_param = widen(param).astype(np.float32, copy=True)
    square = widen(square_avg).astype(np.float32, copy=True)
    others = {name: widen(buffer).astype(np.float32, copy=True)
              for name, buffer in states.items() if name != "square_avg" and buffer is not None}
    rmsprop_step(wide_param, widen(grad), square, **options, **others)
    stored = dict(others, square_avg=square)
    _store(param, wide_param, rounding, stream_key(seed, step, tensor_index, STREAMS["param"]))
    for name, value in stored.items():
        _store(states[name], value, rounding, stream_key(seed, step, tensor_index,
                                                         STREAMS[name]))
    if param_copy is not None:
        param_copy[...] = round_nearest(wide_param, param_copy.dtype)


def rmsprop_step(param, grad, square_avg, *, lr, alpha, eps, momentum=0.0, centered=False,
                 nesterov=False, weight_decay=0.0, decoupled_weight_decay=False,
                 maximize=False, amsgrad=False, bias_correction=False, eps_in_sqrt=False,
                 lr_in_momentum=False, grad_scale=1.0, clip_value=math.inf, step=1,
                 n_threads=None, momentum_buffer=None, grad_avg=None, max_square_avg=None,
                 norm_coefficient=1.0, rounding="nearest", seed=0, tensor_index=0,
                 param_copy=None):
    """One RMSprop update in place, written as the spec (same signature as the kernel).

    ``n_threads`` is accepted for signature compatibility and ignored. ``norm_coefficient``
    is the clip-by-global-norm factor RMSprop applies (the functional API has no global norm).

    Low precision: when any buffer is bfloat16 or float16 (or ``param_copy`` is given), every
    buffer is widened to float32, the float32 update runs, and each low-precision buffer is
    stored once, rounded as ``rounding`` says ("nearest": to nearest-even; "stochastic": with
    the bits of :func:`random_bits` under :func:`stream_key` (seed, step, tensor_index,
    buffer)). ``param_copy`` (bfloat16 or float16) receives the updated param rounded to
    nearest.
    """
    states = {"square_avg": square_avg, "momentum_buffer": momentum_buffer,
              "grad_avg": grad_avg, "max_square_avg": max_square_avg}
    if param_copy is not None or any(
            is_low_precision(buffer.dtype) for buffer in (param, grad, *states.values())
            if buffer is not None):
        options = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered,
                       nesterov=nesterov, weight_decay=weight_decay,
                       decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                       amsgrad=amsgrad, bias_correction=bias_correction,
                       eps_in_sqrt=eps_in_sqrt, lr_in_momentum=lr_in_momentum,
                       grad_scale=grad_scale, clip_value=clip_value, step=step,
                       norm_coefficient=norm_coefficient)
        _low_precision_step(param, grad, square_avg, options, rounding, seed, tensor_index,
                            param_copy, states)
        return
    dtype = param.dtype.type
    # Scalars: computed in double, rounded to the dtype once.
    lr_t = dtype(lr)
    alpha_t = dtype(alpha)
    one_minus_alpha = dtype(1.0 - alpha)
    eps_t = dtype(eps)
    weight_decay_t = dtype(weight_decay)
    lr_weight_decay = dtype(lr * weight_decay)
    momentum_t = dtype(momentum)
    bias = dtype(1.0 - alpha ** step) if bias_correction else None
    zero = dtype(0)

    with np.errstate(all="ignore"):  # inf/NaN are data here, as in the kernel
        p = param.copy()
        g = preprocess_grad(grad, grad_scale, clip_value, norm_coefficient)
        g = np.negative(g) if maximize else g
        if weight_decay != 0 and not decoupled_weight_decay:
            g = g + weight_decay_t * p
        if weight_decay != 0 and decoupled_weight_decay:
            p = p - lr_weight_decay * p

        v = alpha_t * square_avg + one_minus_alpha * (g * g)
        square_avg[...] = v
        var = v / bias if bias_correction else v
        if centered:
            m = alpha_t * grad_avg + one_minus_alpha * g
            grad_avg[...] = m
            m_hat = m / bias if bias_correction else m
            var = var - m_hat * m_hat
            var = np.where(np.less(var, zero), zero, var)
        if amsgrad:
            var = np.where(np.greater_equal(max_square_avg, var), max_square_avg, var)
            max_square_avg[...] = var

        den = np.sqrt(var + eps_t) if eps_in_sqrt else np.sqrt(var) + eps_t
        u = np.where(den == zero, zero, g / den)

        if momentum == 0:
            p = p - lr_t * u
        elif not lr_in_momentum:                      # torch: lr outside the buffer
            b = momentum_t * momentum_buffer + u
            momentum_buffer[...] = b
            p = p - lr_t * ((momentum_t * b + u) if nesterov else b)
        else:                                         # TF / Keras / optax: lr inside
            scaled = lr_t * u
            b = momentum_t * momentum_buffer + scaled
            momentum_buffer[...] = b
            p = p - ((momentum_t * b + scaled) if nesterov else b)
        param[...] = p


def rmsprop_step_rows(param, indices, grad_rows, square_avg, *, lr, alpha, eps, momentum=0.0,
                      centered=False, nesterov=False, weight_decay=0.0,
                      decoupled_weight_decay=False, maximize=False, amsgrad=False,
                      bias_correction=False, eps_in_sqrt=False, lr_in_momentum=False,
                      grad_scale=1.0, clip_value=None, momentum_buffer=None, grad_avg=None,
                      max_square_avg=None, step=1, duplicates="sum", n_threads=None,
                      norm_coefficient=1.0):
    """The lazy row step, written as the spec (same signature as the kernel).

    Gathers the listed rows of ``param`` and of every state buffer, steps them with
    :func:`rmsprop_step`, and scatters them back; other rows are not touched. A row listed
    more than once: ``"sum"`` adds its gradient rows in order of appearance (``g_first +
    g_second + ...``, in the buffer dtype) and steps it once; ``"sequential"`` steps it once
    per listing, in order; ``"error"`` raises ValueError. ``n_threads`` is ignored.
    ``norm_coefficient`` is the clip-by-global-norm factor RMSprop applies.
    """
    indices = np.asarray(indices).astype(np.int64)
    if indices.size == 0:
        return
    options = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered,
                   nesterov=nesterov, weight_decay=weight_decay,
                   decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                   amsgrad=amsgrad, bias_correction=bias_correction, eps_in_sqrt=eps_in_sqrt,
                   lr_in_momentum=lr_in_momentum, grad_scale=grad_scale,
                   clip_value=math.inf if clip_value is None else clip_value, step=step,
                   norm_coefficient=norm_coefficient)
    states = {"square_avg": square_avg, "momentum_buffer": momentum_buffer,
              "grad_avg": grad_avg, "max_square_avg": max_square_avg}
    states = {name: buffer for name, buffer in states.items() if buffer is not None}

    def step_rows(rows, grads):                       # rows are distinct here
        gathered = {name: buffer[rows] for name, buffer in states.items()}
        p = param[rows]
        rmsprop_step(p, grads, **gathered, **options)
        param[rows] = p
        for name, buffer in states.items():
            buffer[rows] = gathered[name]

    rank = _listing_rank(indices)
    if duplicates == "error" and rank.max() > 0:
        position = int(np.flatnonzero(rank > 0)[0])
        raise ValueError(f"indices[{position}] repeats row {indices[position]}")
    if duplicates == "sequential":
        for k in range(rank.max() + 1):               # listing k of every row, in order
            listed = rank == k
            step_rows(indices[listed], grad_rows[listed])
        return
    step_rows(*sum_duplicate_rows(indices, grad_rows))


def _listing_rank(indices):
    """rank[i]: how many times row indices[i] was listed before position i."""
    order = np.argsort(indices, kind="stable")
    sorted_rows = indices[order]
    group_start = np.zeros(len(indices), dtype=np.int64)
    boundaries = np.flatnonzero(np.diff(sorted_rows)) + 1
    group_start[boundaries] = boundaries
    rank = np.empty(len(indices), dtype=np.int64)
    rank[order] = np.arange(len(indices)) - np.maximum.accumulate(group_start)
    return rank


def sum_duplicate_rows(indices, grad_rows):
    """(distinct rows ascending, their summed gradient rows): the gradient rows of a row
    listed more than once added in order of appearance, ``g_first + g_second + ...``, in
    the buffer dtype. The gradient a row step applies with ``duplicates="sum"`` (and the
    one RMSprop's global norm reads)."""
    indices = np.asarray(indices).astype(np.int64)
    rows, unit = np.unique(indices, return_inverse=True)
    summed = np.empty((len(rows),) + grad_rows.shape[1:], dtype=grad_rows.dtype)
    if indices.size == 0:
        return rows, summed
    rank = _listing_rank(indices)
    summed[unit[rank == 0]] = grad_rows[rank == 0]
    for k in range(1, rank.max() + 1):                # g_first + g_second + ..., in order
        listed = rank == k
        summed[unit[listed]] = summed[unit[listed]] + grad_rows[listed]
    return rows, summed


__all__ += ["rmsprop_step_rows", "sum_duplicate_rows"]
