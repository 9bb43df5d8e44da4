"""The model and gradients both parity test files feed to rmsprop_c and to a framework."""

import numpy as np

N_STEPS = 30
# A dense layer, its bias, a second dense layer, its bias, a conv kernel; each tensor gets
# its own gradient scale so eps matters more for some tensors than for others.
MODEL_SHAPES = ((24, 32), (32,), (32, 10), (10,), (8, 3, 3, 3))
GRADIENT_SCALES = (1.0, 0.05, 3.0, 0.2, 0.01)
DTYPES = (np.float64, np.float32)


def make_model_and_gradients(seed, dtype, n_steps=N_STEPS):
    """Parameters and per-step gradients: a fixed drift plus fresh noise, never constant."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in MODEL_SHAPES]
    drifts = [0.5 * scale * rng.standard_normal(shape)
              for shape, scale in zip(MODEL_SHAPES, GRADIENT_SCALES)]
    gradient_steps = [
        [(drift + scale * rng.standard_normal(shape)).astype(dtype)
         for shape, scale, drift in zip(MODEL_SHAPES, GRADIENT_SCALES, drifts)]
        for _ in range(n_steps)
    ]
    return params, gradient_steps


def relative_error_in_eps(actual, expected):
    """max|actual - expected| / max|expected|, in units of the dtype's machine epsilon."""
    difference = np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
    return difference / np.max(np.abs(expected)) / np.finfo(actual.dtype).eps
