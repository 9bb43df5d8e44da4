"""Shared helpers for the test-suite."""

import os

import numpy as np
import pytest

import rmsprop_c as rc
from rmsprop_c import _kernels

STATE_NAMES = ("square_avg", "momentum_buffer", "grad_avg", "max_square_avg")


def snapshot(*arrays):
    """Bytes of every array, to prove later that nothing was written."""
    return [None if a is None else a.tobytes() for a in arrays]


def make_tensor_state(rng, size, dtype, initial_square_avg=0.0):
    """A param and its four state buffers, with non-trivial starting state."""
    param = rng.standard_normal(size).astype(dtype)
    state = {
        "square_avg": np.full(size, initial_square_avg, dtype=dtype),
        "momentum_buffer": np.zeros(size, dtype=dtype),
        "grad_avg": np.zeros(size, dtype=dtype),
        "max_square_avg": np.zeros(size, dtype=dtype),
    }
    return param, state


def make_grad(rng, size, dtype, zero_fraction=0.1):
    """Gaussian grads over several magnitudes, with exact zeros (eps = 0 edge cases)."""
    grad = rng.standard_normal(size) * np.exp(rng.uniform(-4, 2, size))
    grad[rng.random(size) < zero_fraction] = 0.0
    return grad.astype(dtype)


@pytest.fixture
def restore_simd():
    """Restore the SIMD target a test switches."""
    previous = _kernels.get_simd_target()
    yield
    _kernels.set_simd_target(previous)


def child_environment(**variables):
    """os.environ plus `variables`, importing the same rmsprop_c as this process."""
    environment = dict(os.environ, **variables)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(rc.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root] + [p for p in [environment.get("PYTHONPATH")] if p])
    return environment
