"""The RMSprop update of DESIGN.md in plain NumPy: the executable spec.

Same operation order and the same scalar rounding as the compiled kernels: every scalar
derived from hyperparameters is computed in Python float (double) and rounded to the buffer
dtype once; every array operation rounds in the buffer dtype. The kernels must equal this
module bit for bit, for every option, SIMD target and thread count.

Two choices the design leaves to the implementation, made explicit here:

* ``max(x, 0)`` (the centered clamp) keeps NaN: ``where(x < 0, 0, x)``.
* ``max(vmax, var)`` (amsgrad) keeps a NaN ``var``: ``where(vmax >= var, vmax, var)``.

It is slow (one temporary per operation) and does no input checking: use
:func:`rmsprop_c.rmsprop_step` for real work.
"""

import numpy as np

__all__ = ["rmsprop_step", "ReferenceRMSprop"]


def rmsprop_step(param, grad, square_avg, *, lr, alpha, eps, momentum=0.0, nesterov=False,
                 centered=False, weight_decay=0.0, decoupled_weight_decay=False,
                 maximize=False, amsgrad=False, bias_correction=False, eps_in_sqrt=False,
                 lr_in_momentum=False, step=1, n_threads=None, momentum_buffer=None,
                 grad_avg=None, max_square_avg=None):
    """One RMSprop update in place, written as the spec (same signature as the kernel).

    ``n_threads`` is accepted for signature compatibility and ignored.
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
        g = np.negative(grad) if maximize else grad.copy()
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


def _optimizer_base():
    from rmsprop_c.optimizer import RMSprop
    return RMSprop


from rmsprop_c._kernels import GROUP_KEYS  # noqa: E402  the options a step reads per group


class ReferenceRMSprop(_optimizer_base()):
    """:class:`rmsprop_c.RMSprop` whose step runs :func:`rmsprop_step` tensor by tensor.

    Same flavors, groups, state and checkpoints; used to check the fused multi-tensor step
    and by the demo to show the speedup.
    """

    def step(self, grads):
        self._engine.validate(grads, self.param_groups)
        if self.skip_nonfinite and not all(np.isfinite(g).all() for g in grads):
            self.skipped_steps += 1
            return False
        steps = self._engine.get_steps()
        for group_index, group in enumerate(self.param_groups):
            options = {key: group[key] for key in GROUP_KEYS}
            for index in self._group_members[group_index]:
                state = self.state[index]
                rmsprop_step(self._params[index], grads[index], state["square_avg"],
                             step=steps[group_index] + 1,
                             momentum_buffer=state.get("momentum_buffer"),
                             grad_avg=state.get("grad_avg"),
                             max_square_avg=state.get("max_square_avg"), **options)
        self._engine.set_steps([s + 1 for s in steps])
        return True

