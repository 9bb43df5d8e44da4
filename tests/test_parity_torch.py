"""flavor="torch" RMSprop against the real torch.optim.RMSprop (CPU, torch 2.13).

Both optimizers run 30 steps over the tensors of a small model (two dense layers with
biases and a conv kernel), fed the same deterministic NumPy gradients. Parameters are
compared after every step; square_avg, momentum_buffer and grad_avg (torch's state has
the same names and meaning) and the step count at the end.

Errors are measured as a normwise relative error in units of the dtype's machine epsilon,
``max|ours - torch| / max|torch|`` per tensor: roughly "ULPs at the tensor's scale". The
two implementations are not bit-identical because torch orders the arithmetic differently
(``addcmul`` computes ``v + (value*g)*g``, ``lerp`` for grad_avg, ``addcdiv`` for the step).

The spec clamps the centered variance ``v - m*m`` at 0 where torch takes the square root of
a negative number (NaN). The gradients here are random and non-constant, so the variance
stays well positive and the clamp is never reached; the tests assert that.

torch is imported without skipping: the `compat` extra installs it and CI must run these
tests. Set RMSPROP_C_ALLOW_MISSING_COMPAT=1 to skip the module when torch is absent.
"""

import itertools
import os

import numpy as np
import pytest

import rmsprop_c

from parity_model import (DTYPES, N_STEPS, make_model_and_gradients,
                           relative_error_in_eps)

if os.environ.get("RMSPROP_C_ALLOW_MISSING_COMPAT") == "1":
    torch = pytest.importorskip("torch")
else:
    import torch


# Tolerance derivation. Per step the two sides differ by a handful of roundings (each at
# most 0.5 ulp of an intermediate): torch forms (value*g)*g in addcmul where the spec forms
# (1-alpha)*(g*g), updates grad_avg with lerp, and divides inside addcdiv. The 30 updates
# add up like a random walk and are small next to the parameter, so the error stays at a
# few ulps instead of growing 30x. Measured over this file's grid, seeds 0-9 and both torch
# implementations (x86-64, torch 2.13.0 CPU), largest error in eps:
#   float64: param 4.4, square_avg 4.2, grad_avg 6.5, momentum_buffer 7.9
#   float32: param 4.6, square_avg 4.0, grad_avg 8.0, momentum_buffer 14.8
# (the largest come from runs with centered and momentum both on).
# The tolerance is ~4x the largest measurement, rounded up to a power of two: room for
# other SIMD paths in torch (AVX-512, FMA in addcmul/addcdiv) on other machines, while a
# wrong switch lands at least 1e4x above it (test_tolerance_detects_a_wrong_setting).
# Relative terms: float64 32 * 2.2e-16 = 7.1e-15; float32 64 * 1.2e-7 = 7.6e-6.
TOLERANCE_IN_EPS = {np.float64: 32.0, np.float32: 64.0}

# torch's defaults, and a second set where alpha and eps are not the defaults.
HYPERPARAMETER_SETS = (
    dict(lr=1e-2, alpha=0.99, eps=1e-8),
    dict(lr=3e-3, alpha=0.9, eps=1e-6),
)


def torch_option_grid():
    """Every combination of torch's options, crossed with the two hyperparameter sets."""
    for hyperparameters, weight_decay, momentum, centered, maximize in itertools.product(
            HYPERPARAMETER_SETS, (0.0, 1e-2), (0.0, 0.9), (False, True), (False, True)):
        yield dict(hyperparameters, weight_decay=weight_decay, momentum=momentum,
                   centered=centered, maximize=maximize)


def option_id(options):
    return "-".join(f"{key}={value}" for key, value in options.items())


def smallest_relative_variance(state):
    """min over elements of (v - m*m) / v: how far the centered variance is from the clamp."""
    square_avg = state["square_avg"].astype(np.float64)
    grad_avg = state["grad_avg"].astype(np.float64)
    return np.min((square_avg - grad_avg * grad_avg) / square_avg)


def run_against_torch(options, dtype, *, foreach=False, seed=0, our_overrides=None):
    """Step both optimizers on the same gradients; the worst error of each quantity."""
    params, gradient_steps = make_model_and_gradients(seed, dtype)
    ours = [param.copy() for param in params]
    optimizer = rmsprop_c.RMSprop(ours, flavor="torch", **{**options, **(our_overrides or {})})
    theirs = [torch.from_numpy(param.copy()).requires_grad_(True) for param in params]
    torch_optimizer = torch.optim.RMSprop(theirs, foreach=foreach, **options)

    worst = {"param": 0.0}
    for gradients in gradient_steps:
        optimizer.step(gradients)
        for tensor, gradient in zip(theirs, gradients):
            tensor.grad = torch.from_numpy(gradient.copy())
        torch_optimizer.step()
        worst["param"] = max(worst["param"], *(
            relative_error_in_eps(mine, tensor.detach().numpy())
            for mine, tensor in zip(ours, theirs)))
        if options.get("centered"):
            # Far from the clamp: rounding in the variance is amplified at most 100x.
            assert min(smallest_relative_variance(state) for state in optimizer.state) > 1e-2

    for index, tensor in enumerate(theirs):
        torch_state = torch_optimizer.state[tensor]
        assert int(torch_state["step"]) == optimizer.steps[0] == N_STEPS
        assert set(optimizer.state[index]) <= set(torch_state)
        for name, buffer in optimizer.state[index].items():
            worst[name] = max(worst.get(name, 0.0),
                              relative_error_in_eps(buffer, torch_state[name].numpy()))
    return worst


@pytest.mark.parametrize("foreach", (False, True), ids=("single_tensor", "foreach"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
@pytest.mark.parametrize("options", tuple(torch_option_grid()), ids=option_id)
def test_matches_torch_rmsprop(options, dtype, foreach):
    worst = run_against_torch(options, dtype, foreach=foreach)
    expected_state = {"param", "square_avg"}
    expected_state |= {"momentum_buffer"} if options["momentum"] else set()
    expected_state |= {"grad_avg"} if options["centered"] else set()
    assert set(worst) == expected_state
    tolerance = TOLERANCE_IN_EPS[dtype]
    assert max(worst.values()) <= tolerance, f"errors in eps {worst}, tolerance {tolerance}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
def test_flavor_defaults_match_torch_defaults(dtype):
    """RMSprop(params) with no arguments is torch.optim.RMSprop(params) with none."""
    params, gradient_steps = make_model_and_gradients(1, dtype)
    ours = [param.copy() for param in params]
    optimizer = rmsprop_c.RMSprop(ours)
    theirs = [torch.from_numpy(param.copy()).requires_grad_(True) for param in params]
    torch_optimizer = torch.optim.RMSprop(theirs)
    for gradients in gradient_steps:
        optimizer.step(gradients)
        for tensor, gradient in zip(theirs, gradients):
            tensor.grad = torch.from_numpy(gradient.copy())
        torch_optimizer.step()
    for mine, tensor in zip(ours, theirs):
        assert relative_error_in_eps(mine, tensor.detach().numpy()) <= TOLERANCE_IN_EPS[dtype]


WRONG_SETTINGS = {
    # eps inside the sqrt (the optax/keras placement) instead of after it.
    "eps_inside_sqrt": (dict(weight_decay=0.0), dict(eps_in_sqrt=True)),
    # decoupled (AdamW-style) weight decay instead of torch's coupled L2.
    "decoupled_weight_decay": (dict(weight_decay=1e-2), dict(decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: dtype.__name__)
@pytest.mark.parametrize("mistake", tuple(WRONG_SETTINGS))
def test_tolerance_detects_a_wrong_setting(dtype, mistake):
    """The tolerance is discriminating: one wrong switch is far outside it."""
    torch_options, our_mistake = WRONG_SETTINGS[mistake]
    options = dict(HYPERPARAMETER_SETS[0], momentum=0.9, centered=False, maximize=False,
                   **torch_options)
    worst = run_against_torch(options, dtype, our_overrides=our_mistake)
    assert worst["param"] > 100 * TOLERANCE_IN_EPS[dtype], worst
