"""Train bfloat16 weights directly: no float32 master copy, half the optimizer memory.

A least-squares fit whose weights, gradients and RMSprop state are all bfloat16
(``ml_dtypes.bfloat16``). The step computes in float32 and rounds each stored value once:
to nearest, small late updates are rounded away and the fit stalls; stochastically, they
survive in expectation. Stochastic bits depend on (seed, step, param index, element index)
only, so the run is bit-identical for any thread count. Run: ``python examples/bfloat16_params.py``.
"""

import ml_dtypes
import numpy as np

import rmsprop_c as rc

BF16 = ml_dtypes.bfloat16
rng = np.random.default_rng(0)
features = rng.standard_normal((512, 64)).astype(np.float32)
true_weights = rng.uniform(1.0, 2.0, 64).astype(np.float32)
targets = features @ true_weights


def fit(rounding, n_threads=1, steps=1500):
    weights = np.zeros(64, BF16)
    opt = rc.RMSprop([weights], lr=3e-3, rounding=rounding, seed=0, n_threads=n_threads)
    for _ in range(steps):
        residual = features @ weights.astype(np.float32) - targets
        grad = (features.T @ residual / len(targets)).astype(BF16)
        opt.step([grad])
    return weights, float(np.mean((features @ weights.astype(np.float32) - targets) ** 2))


nearest, nearest_mse = fit("nearest")
stochastic, stochastic_mse = fit("stochastic")
print(f"mse with bfloat16 weights, rounded to nearest: {nearest_mse:.4f}")
print(f"mse with bfloat16 weights, stochastic rounding: {stochastic_mse:.4f}")
print("bit-identical on 1 and 2 threads:",
      fit("stochastic", n_threads=2)[0].tobytes() == stochastic.tobytes())
