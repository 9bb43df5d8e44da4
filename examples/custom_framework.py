"""Plug rmsprop_c.RMSprop into a home-made NumPy framework.

The framework below is the usual shape: layers own ``params`` and same-shaped ``grads``
arrays, ``backward`` writes the grads in place, and the model lists both in the same order.
The optimizer only needs those two lists: it updates the layers' arrays in place, so the
layers see the new weights without any copying back. Run: ``python examples/custom_framework.py``.
"""

import numpy as np

import rmsprop_c as rc


class Dense:
    """y = x @ W + b, with its gradients kept in preallocated arrays."""

    def __init__(self, n_in, n_out, rng):
        self.weight = (rng.standard_normal((n_in, n_out)) * np.sqrt(2 / n_in)).astype(np.float32)
        self.bias = np.zeros(n_out, dtype=np.float32)
        self.params = [self.weight, self.bias]
        self.grads = [np.zeros_like(self.weight), np.zeros_like(self.bias)]

    def forward(self, x):
        self.x = x
        return x @ self.weight + self.bias

    def backward(self, grad_out):
        np.matmul(self.x.T, grad_out, out=self.grads[0])  # in place: the optimizer holds these
        np.sum(grad_out, axis=0, out=self.grads[1])
        return grad_out @ self.weight.T


class Tanh:
    """Elementwise tanh; no parameters."""

    def __init__(self):
        self.params: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, grad_out):
        return grad_out * (1 - self.y * self.y)


class Sequential:
    """Layers applied in order; ``parameters()`` and ``gradients()`` line up one to one."""

    def __init__(self, *layers):
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)

    def parameters(self):
        return [param for layer in self.layers for param in layer.params]

    def gradients(self):
        return [grad for layer in self.layers for grad in layer.grads]


rng = np.random.default_rng(0)
x = np.linspace(-np.pi, np.pi, 512, dtype=np.float32).reshape(-1, 1)
y = np.sin(2 * x)  # fit a sine wave

model = Sequential(Dense(1, 32, rng), Tanh(), Dense(32, 32, rng), Tanh(), Dense(32, 1, rng))
# The same list of arrays for the whole run: the optimizer keeps state per array.
opt = rc.RMSprop(model.parameters(), lr=1e-2, flavor="keras")
grads = model.gradients()

losses = []
for step in range(1, 2001):
    batch = rng.integers(0, len(x), 64)
    prediction = model.forward(x[batch])
    error = prediction - y[batch]
    losses.append(float(np.mean(error * error)))
    model.backward(2 * error / np.float32(len(batch)))  # d(mean squared error)/d(prediction)
    opt.step(grads)
    if step % 500 == 0:
        print(f"step {step:4d}  mse {np.mean(losses[-100:]):.5f}")

full_error = model.forward(x) - y
final_mse = float(np.mean(full_error * full_error))
print(f"mse: first step {losses[0]:.4f} -> final {final_mse:.5f} "
      f"({losses[0] / final_mse:.0f}x lower)")
