"""flavor="optax" RMSprop against the real optax.rmsprop (optax 0.2.8 on jax, CPU).

Both optimizers run 30 steps over the tensors of a small model (two dense layers with
biases and a conv kernel), fed the same deterministic NumPy gradients, over every
combination of optax.rmsprop's switches: centered, momentum (None or 0.9), nesterov,
eps_in_sqrt, bias_correction and initial_scale (our initial_accumulator_value). Parameters
are compared after every step; the state at the end: optax's ``nu`` is our square_avg,
``mu`` our grad_avg, ``count`` our step count, and ``trace`` is minus our momentum_buffer
(optax scales by -lr before the trace, so its buffer sums -lr*u where ours sums lr*u).

Errors are a normwise relative error in units of the dtype's machine epsilon,
``max|ours - optax| / max|optax|`` per tensor: roughly "ULPs at the tensor's scale". The
two are not bit-identical: optax multiplies g by ``rsqrt(v + eps)`` (or by
``1 / (sqrt(v) + eps)``) where the spec divides g by the denominator, and applies the update
as ``p + (-lr * u)``.

The spec clamps the centered variance at 0 where optax takes the square root of a
negative number (NaN; with eps_in_sqrt, once v - m*m < -eps). The random, non-constant
gradients here keep the variance well positive (asserted), with one exception left out of
the grid: centered + bias_correction + initial_scale 0. There the bias-corrected variance
of the first step is exactly 0 in exact arithmetic (one sample has no variance), so both
sides compute ``g / sqrt(eps)``-sized steps out of rounding noise (or the clamp); that
case is covered with initial_scale 1.

float64: jax only computes in float64 with x64 enabled, which is process-global state.
Rather than a jax.config.update at import, which would flip it for the whole process,
every jax computation here runs inside ``jax.enable_x64(dtype == float64)``: a
thread-local context manager that restores the previous setting on exit, so nothing leaks
to other tests. Every array handed to jax is given its dtype explicitly (a float64 request
without x64 would warn, and warnings fail the suite), and the results' dtypes are asserted.

jax and optax are imported without skipping: the `compat` extra installs them and CI must
run these tests. Set RMSPROP_C_ALLOW_MISSING_COMPAT=1 to skip the module when they are absent.
"""

import itertools
import os

import numpy as np
import pytest

import rmsprop_c

from parity_model import (DTYPES, N_STEPS, make_model_and_gradients,
                           relative_error_in_eps)

if os.environ.get("RMSPROP_C_ALLOW_MISSING_COMPAT") == "1":
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp
else:
    import jax
    import jax.numpy as jnp
    import optax


# Tolerance derivation. Per step the two sides differ by a handful of roundings (each at
# most 0.5 ulp of an intermediate, plus XLA's rsqrt error): g * rsqrt(v + eps) against
# g / sqrt(v + eps), p + (-lr*u) against p - lr*u, and under jit XLA's fusion of the moment
# updates. Without jit, square_avg and grad_avg come out bit-identical (same operations in
# the same order). The 30 updates add up like a random walk and are small next to the
# parameter, so the error stays at a few ulps. Measured over the full product of switches
# and both hyperparameter sets, seeds 0-9 eager and 0-2 jitted (x86-64, jax 0.10.2, optax
# 0.2.8), largest error in eps:
#   float64: eager 3.1, jit 3.6;  float32: eager 7.0, jit 6.3  (params and momentum buffer)
# The tolerance is ~4.5x the largest measurement, rounded up to a power of two: room for
# other CPUs' vector code in XLA, while one wrong switch lands at least 2000x above it
# (test_tolerance_detects_a_wrong_setting).
# Relative terms: float64 16 * 2.2e-16 = 3.6e-15; float32 32 * 1.2e-7 = 3.8e-6.
TOLERANCE_IN_EPS = {np.float64: 16.0, np.float32: 32.0}

# optax's defaults (it has no default learning rate), and a second set with other values.
HYPERPARAMETER_SETS = (
    dict(learning_rate=1e-2, decay=0.9, eps=1e-8),
    dict(learning_rate=3e-3, decay=0.99, eps=1e-6),
)
MOMENTUM_CHOICES = ((None, False), (0.9, False), (0.9, True))   # (momentum, nesterov)
INITIAL_SCALES = (0.0, 1.0)                                     # optax/torch default; TF1


def optax_option_grid():
    """Every combination of optax.rmsprop's switches, each with one hyperparameter set.

    The set is picked by the parity of the number of switches turned on, so every value
    of every switch meets both sets while the grid stays half the size of the full product.
    """
    for centered, (momentum, nesterov), eps_in_sqrt, bias_correction, initial_scale in \
            itertools.product((False, True), MOMENTUM_CHOICES, (False, True), (False, True),
                              INITIAL_SCALES):
        if centered and bias_correction and initial_scale == 0.0:
            continue    # first step's variance is exactly 0: see the module docstring
        switches_on = (centered + (momentum is not None) + nesterov + eps_in_sqrt
                       + bias_correction + (initial_scale != 0.0))
        yield dict(HYPERPARAMETER_SETS[switches_on % 2], centered=centered, momentum=momentum,
                   nesterov=nesterov, eps_in_sqrt=eps_in_sqrt,
                   bias_correction=bias_correction, initial_scale=initial_scale)


def option_id(options):
    return "-".join(f"{key}={value}" for key, value in options.items())


def our_arguments(options):
    """rmsprop_c.RMSprop arguments for optax.rmsprop options (lr_in_momentum: the flavor's)."""
    return dict(lr=options["learning_rate"], alpha=options["decay"], eps=options["eps"],
                momentum=options["momentum"] or 0.0, nesterov=options["nesterov"],
                centered=options["centered"], eps_in_sqrt=options["eps_in_sqrt"],
                bias_correction=options["bias_correction"],
                initial_accumulator_value=options["initial_scale"])


def smallest_relative_variance(state, bias):
    """min over elements of (vh - mh*mh) / vh: how far the centered variance is from the clamp."""
    square_avg = state["square_avg"].astype(np.float64) / bias
    grad_avg = state["grad_avg"].astype(np.float64) / bias
    return np.min((square_avg - grad_avg * grad_avg) / square_avg)


def to_jax(arrays, dtype):
    return [jnp.asarray(array, dtype=dtype) for array in arrays]


def run_against_optax(options, dtype, *, seed=0, jit=False, our_overrides=None):
    """Step both optimizers on the same gradients; the worst error of each quantity."""
    params, gradient_steps = make_model_and_gradients(seed, dtype)
    ours = [param.copy() for param in params]
    optimizer = rmsprop_c.RMSprop(ours, flavor="optax",
                                  **{**our_arguments(options), **(our_overrides or {})})
    worst = {"param": 0.0}
    with jax.enable_x64(dtype == np.float64):
        transformation = optax.rmsprop(**options)

        def optax_step(gradients, state, theirs):
            updates, state = transformation.update(gradients, state, theirs)
            return optax.apply_updates(theirs, updates), state

        if jit:
            optax_step = jax.jit(optax_step)
        theirs = to_jax(params, dtype)
        state = transformation.init(theirs)
        for step, gradients in enumerate(gradient_steps, start=1):
            optimizer.step(gradients)
            theirs, state = optax_step(to_jax(gradients, dtype), state, theirs)
            assert all(tensor.dtype == dtype for tensor in theirs)
            worst["param"] = max(worst["param"], *(
                relative_error_in_eps(mine, np.asarray(tensor))
                for mine, tensor in zip(ours, theirs)))
            if options["centered"]:
                bias = 1.0 - options["decay"] ** step if options["bias_correction"] else 1.0
                # Far from the clamp: rounding in the variance is amplified at most 100x.
                assert min(smallest_relative_variance(tensor_state, bias)
                           for tensor_state in optimizer.state) > 1e-2

        their_state = {
            "square_avg": optax.tree.get(state, "nu"),
            "grad_avg": optax.tree.get(state, "mu", default=None),
            "momentum_buffer": optax.tree.get(state, "trace", default=None),
        }
        if options["bias_correction"]:
            assert int(optax.tree.get(state, "count")) == optimizer.steps[0] == N_STEPS
        their_state = {name: [np.asarray(tensor) for tensor in tensors]
                       for name, tensors in their_state.items() if tensors is not None}
    # optax's trace accumulates the update after the -lr scaling: minus our buffer.
    if "momentum_buffer" in their_state:
        their_state["momentum_buffer"] = [-buffer for buffer in their_state["momentum_buffer"]]

    for index, our_state in enumerate(optimizer.state):
        assert set(our_state) == set(their_state)
        for name, buffer in our_state.items():
            worst[name] = max(worst.get(name, 0.0),
                              relative_error_in_eps(buffer, their_state[name][index]))
    return worst


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
@pytest.mark.parametrize("options", tuple(optax_option_grid()), ids=option_id)
def test_matches_optax_rmsprop(options, dtype):
    worst = run_against_optax(options, dtype)
    tolerance = TOLERANCE_IN_EPS[dtype]
    assert max(worst.values()) <= tolerance, f"errors in eps {worst}, tolerance {tolerance}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
def test_matches_jitted_optax_rmsprop(dtype):
    """optax is usually run under jax.jit: XLA may fuse the update, still within tolerance."""
    options = dict(HYPERPARAMETER_SETS[0], centered=True, momentum=0.9, nesterov=True,
                   eps_in_sqrt=True, bias_correction=True, initial_scale=1.0)
    worst = run_against_optax(options, dtype, jit=True)
    assert max(worst.values()) <= TOLERANCE_IN_EPS[dtype], worst


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
def test_flavor_defaults_match_optax_defaults(dtype):
    """flavor="optax" with only lr is optax.rmsprop with only learning_rate."""
    learning_rate = 1e-2    # neither side has a default
    params, gradient_steps = make_model_and_gradients(1, dtype)
    ours = [param.copy() for param in params]
    optimizer = rmsprop_c.RMSprop(ours, flavor="optax", lr=learning_rate)
    with jax.enable_x64(dtype == np.float64):
        transformation = optax.rmsprop(learning_rate)
        theirs = to_jax(params, dtype)
        state = transformation.init(theirs)
        for gradients in gradient_steps:
            optimizer.step(gradients)
            updates, state = transformation.update(to_jax(gradients, dtype), state, theirs)
            theirs = optax.apply_updates(theirs, updates)
        theirs = [np.asarray(tensor) for tensor in theirs]
    for mine, tensor in zip(ours, theirs):
        assert relative_error_in_eps(mine, tensor) <= TOLERANCE_IN_EPS[dtype]


WRONG_SETTINGS = {
    # eps added after the sqrt instead of inside: the torch/optax difference.
    "eps_outside_sqrt": (dict(eps_in_sqrt=True), dict(eps_in_sqrt=False)),
    # plain momentum instead of optax's nesterov trace.
    "no_nesterov": (dict(momentum=0.9, nesterov=True), dict(nesterov=False)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
@pytest.mark.parametrize("mistake", tuple(WRONG_SETTINGS))
def test_tolerance_detects_a_wrong_setting(dtype, mistake):
    """The tolerance is discriminating: one wrong switch is far outside it."""
    optax_options, our_mistake = WRONG_SETTINGS[mistake]
    options = dict(HYPERPARAMETER_SETS[0], centered=False, momentum=None, nesterov=False,
                   eps_in_sqrt=True, bias_correction=False, initial_scale=0.0)
    options.update(optax_options)
    worst = run_against_optax(options, dtype, our_overrides=our_mistake)
    assert worst["param"] > 100 * TOLERANCE_IN_EPS[dtype], worst
