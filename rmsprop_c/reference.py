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

It is slow (one temporary per operation) and does no input checking: use
:func:`rmsprop_c.rmsprop_step`, its fast twin, for real work. This module imports NumPy only;
``rmsprop_c.slow.RMSprop`` is the optimizer stepping with it.
"""

import math

import numpy as np

__all__ = ["rmsprop_step", "preprocess_grad", "global_grad_norm", "norm_of_preprocessed",
           "clip_coefficient"]

# The norm's summation order: chunks of NORM_CHUNK elements from each tensor's element 0,
# NORM_LANES interleaved float64 sums per chunk (lane k takes elements i = k mod NORM_LANES),
# lanes added in order, then chunk sums added in order over chunks and tensors.
NORM_CHUNK = 1024
NORM_LANES = 8
# clip_grad_norm_'s guard against a zero norm.
NORM_GUARD = 1e-6


def preprocess_grad(grad, grad_scale=1.0, clip_value=math.inf, norm_coefficient=1.0):
    """The gradient the update uses, in the grad's dtype: scaled, clamped, then multiplied
    by the global-norm coefficient (each scalar rounded to the dtype once)."""
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


def rmsprop_step(param, grad, square_avg, *, lr, alpha, eps, momentum=0.0, centered=False,
                 nesterov=False, weight_decay=0.0, decoupled_weight_decay=False,
                 maximize=False, amsgrad=False, bias_correction=False, eps_in_sqrt=False,
                 lr_in_momentum=False, grad_scale=1.0, clip_value=math.inf, step=1,
                 n_threads=None, momentum_buffer=None, grad_avg=None, max_square_avg=None,
                 norm_coefficient=1.0):
    """One RMSprop update in place, written as the spec (same signature as the kernel).

    ``n_threads`` is accepted for signature compatibility and ignored. ``norm_coefficient``
    is the clip-by-global-norm factor RMSprop applies (the functional API has no global norm).
    """
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
