"""Train a small NumPy MLP with rmsprop_c: the whole training loop in one screen.

Forward and backward are plain NumPy; ``opt.step(grads)`` updates every weight array in
place in one native call. Run: ``python examples/mlp_numpy.py``.
"""

import numpy as np

import rmsprop_c as rc

rng = np.random.default_rng(0)

# Toy task: is a 2-D point inside the ring 0.5 < |x| < 1 (in the square [-1.5, 1.5]^2)?
features = rng.uniform(-1.5, 1.5, (4000, 2)).astype(np.float32)
radius = np.linalg.norm(features, axis=1)
labels = ((radius > 0.5) & (radius < 1.0)).astype(np.int64)
x_train, y_train, x_test, y_test = features[:3200], labels[:3200], features[3200:], labels[3200:]

# A 2-64-64-2 ReLU network; params and grads are lists in the same order.
sizes = (2, 64, 64, 2)
params = []
for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    weight = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)  # He init
    params.append(weight.astype(np.float32))
    params.append(np.zeros(fan_out, dtype=np.float32))


def forward(x):
    """Logits and each layer's input (kept for the backward pass)."""
    inputs = []
    for layer in range(len(params) // 2):
        inputs.append(x)
        x = x @ params[2 * layer] + params[2 * layer + 1]
        if layer < len(params) // 2 - 1:
            x = np.maximum(x, 0)
    return x, inputs


def loss_and_grads(x, y):
    """Mean softmax cross-entropy of a batch and its gradient for every parameter."""
    logits, inputs = forward(x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = -float(np.log(probs[rows, y]).mean())
    delta = probs
    delta[rows, y] -= 1
    delta /= np.float32(len(y))
    grads = [None] * len(params)
    for layer in reversed(range(len(params) // 2)):
        grads[2 * layer] = inputs[layer].T @ delta
        grads[2 * layer + 1] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ params[2 * layer].T) * (inputs[layer] > 0)
    return loss, grads


opt = rc.RMSprop(params, lr=1e-2, flavor="torch")
for epoch in range(1, 21):
    order = rng.permutation(len(y_train))
    losses = []
    for start in range(0, len(order), 64):
        batch = order[start:start + 64]
        loss, grads = loss_and_grads(x_train[batch], y_train[batch])
        opt.step(grads)  # updates every array in `params` in place
        losses.append(loss)
    if epoch % 5 == 0:
        print(f"epoch {epoch:2d}  train loss {np.mean(losses):.4f}")

accuracy = float((forward(x_test)[0].argmax(axis=1) == y_test).mean())
print(f"test accuracy: {100 * accuracy:.1f}%")
