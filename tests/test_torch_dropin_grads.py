"""How rmsprop_c.torch.RMSprop reads gradients, and that every way gives the same bits.

Fresh gradients (``zero_grad(set_to_none=True)``, the default) are handed to the engine by
address after cheap checks; persistent ones through cached NumPy views; anything unusual
(non-contiguous, None, resized) through checked views that copy or explain.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rmsprop_c import reference        # noqa: E402
from rmsprop_c.torch import RMSprop   # noqa: E402


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def batch(step):
    generator = torch.Generator().manual_seed(step)
    return torch.randn(32, 8, generator=generator), torch.randn(32, 2, generator=generator)


def train(model, optimizer, steps, set_to_none):
    trajectory = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        inputs, targets = batch(step)
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        trajectory.append(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    return trajectory


def test_fresh_and_persistent_grads_give_the_same_bits():
    fresh, persistent = make_model(), make_model()
    a = train(fresh, RMSprop(fresh.parameters(), lr=1e-2, momentum=0.9), 12, True)
    b = train(persistent, RMSprop(persistent.parameters(), lr=1e-2, momentum=0.9), 12, False)
    assert a == b


def fresh_grads(model, optimizer, step):
    """New grads of one batch, as a training loop's zero_grad + backward makes them."""
    optimizer.zero_grad()
    inputs, targets = batch(step)
    torch.nn.functional.mse_loss(model(inputs), targets).backward()


def test_fresh_grads_are_read_by_address():
    model = make_model()
    optimizer = RMSprop(model.parameters(), lr=1e-2)
    train(model, optimizer, 2, True)
    fresh_grads(model, optimizer, 5)
    grads = [p.grad for p in model.parameters()]
    table = optimizer._addresses_of(grads)
    assert table is not None
    assert table.tolist() == [g.data_ptr() for g in grads]


def non_contiguous(grad):
    wide = torch.zeros(grad.numel(), 2, dtype=grad.dtype)
    wide[:, 0] = grad.reshape(-1)
    return wide[:, 0].reshape(grad.shape)


def test_a_non_contiguous_fresh_grad_steps_as_its_contiguous_copy():
    odd, plain = make_model(), make_model()
    for model, make in ((odd, non_contiguous), (plain, torch.clone)):
        optimizer = RMSprop(model.parameters(), lr=1e-2)
        train(model, optimizer, 2, True)           # past the first step: grads by address
        fresh_grads(model, optimizer, 3)
        first = next(model.parameters())
        first.grad = make(first.grad)
        assert first.grad.is_contiguous() == (make is torch.clone)
        optimizer.step()
    for mine, theirs in zip(odd.parameters(), plain.parameters()):
        assert mine.detach().numpy().tobytes() == theirs.detach().numpy().tobytes()


def test_a_grad_resized_in_place_is_refused_and_nothing_is_written():
    model = make_model()
    optimizer = RMSprop(model.parameters(), lr=1e-2)
    train(model, optimizer, 1, True)
    fresh_grads(model, optimizer, 1)
    last = list(model.parameters())[-1]
    last.grad.resize_(last.numel() * 4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"params\[3\]"):
        optimizer.step()
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old)


def test_an_empty_param_with_a_grad_is_not_taken_for_a_missing_grad():
    empty = torch.nn.Parameter(torch.zeros(0))
    full = torch.nn.Parameter(torch.ones(4))
    optimizer = RMSprop([empty, full], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        empty.grad = torch.zeros(0)
        full.grad = torch.ones(4)
        optimizer.step()
    assert optimizer.tensor_steps == [2, 2]
    expected = np.ones(4, np.float32)
    square_avg = np.zeros(4, np.float32)
    for step in (1, 2):
        reference.rmsprop_step(expected, np.ones(4, np.float32), square_avg, lr=0.1,
                               alpha=0.99, eps=1e-8, step=step)
    assert full.detach().numpy().tobytes() == expected.tobytes()
