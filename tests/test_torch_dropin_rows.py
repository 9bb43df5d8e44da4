"""rmsprop_c.torch.RMSprop with the sparse COO grads of nn.Embedding(sparse=True).

A training loop of an embedding table plus a dense MLP equals, bit for bit, rmsprop_c.RMSprop
fed RowGrad(indices, values) of the same sparse grads (coalesced or not, persistent or fresh
grads, one or two threads); the row grads are views of torch's indices and values.
"""

import numpy as np
import pytest
import torch

import rmsprop_c as rc
from rmsprop_c._torch_rows import row_grad
from rmsprop_c.torch import RMSprop

VOCABULARY, WIDTH, BATCH = 3000, 16, 96
OPTION_SETS = (
    dict(lr=0.01),
    dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01),
    dict(lr=0.01, alpha=0.9, bias_correction=True, amsgrad=True, grad_scale=0.5,
         clip_value=2.0),
)


class Model(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCABULARY, WIDTH, sparse=True, dtype=dtype)
        self.hidden = torch.nn.Linear(WIDTH, 32, dtype=dtype)
        self.out = torch.nn.Linear(32, 1, dtype=dtype)
        self.unused = torch.nn.Linear(3, 3, dtype=dtype)     # never gets a grad

    def forward(self, tokens):
        return self.out(torch.tanh(self.hidden(self.embedding(tokens).mean(1))))


def numpy_grads(model):
    """The grads as rmsprop_c.RMSprop takes them: copies, sparse ones as RowGrad."""
    grads = []
    for param in model.parameters():
        grad = param.grad
        if grad is None:
            grads.append(None)
        elif grad.is_sparse:
            grads.append(rc.RowGrad(grad._indices()[0].numpy().copy(),
                                    grad._values().numpy().copy()))
        else:
            grads.append(grad.numpy().copy())
    return grads


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("n_threads", (1, 2))
@pytest.mark.parametrize("grads", ("fresh", "persistent", "coalesced"))
def test_sparse_embedding_training_equals_the_numpy_row_grad_path(dtype, options, n_threads,
                                                                 grads):
    torch.manual_seed(0)
    model = Model(dtype)
    params = list(model.parameters())
    arrays = [param.detach().numpy().copy() for param in params]
    optimizer = RMSprop(params, n_threads=n_threads, **options)
    expected = rc.RMSprop(arrays, n_threads=n_threads, **options)
    generator = torch.Generator().manual_seed(1)
    for step in range(4):
        optimizer.zero_grad(set_to_none=grads != "persistent")
        for _ in range(2 if grads == "persistent" else 1):   # accumulate into the grads
            tokens = torch.randint(0, VOCABULARY, (BATCH, 5), generator=generator)
            tokens[:, 0] = 7                                # a row repeated in every batch
            model(tokens).square().mean().backward()
        if grads == "coalesced":
            model.embedding.weight.grad = model.embedding.weight.grad.coalesce()
        assert model.embedding.weight.grad.is_sparse
        expected.step(numpy_grads(model))
        optimizer.step()
        for param, array in zip(params, arrays):
            assert param.detach().numpy().tobytes() == array.tobytes(), step
    state = optimizer.state[model.embedding.weight]
    assert float(state["step"]) == 4.0
    assert optimizer.tensor_steps == [4, 4, 4, 4, 4, 0, 0]
    for key, buffer in expected.state[0].items():
        assert state[key].numpy().tobytes() == buffer.tobytes(), key


def test_row_grads_view_torch_memory():
    embedding = torch.nn.Embedding(100, 8, sparse=True)
    embedding(torch.tensor([[3, 5, 3]])).sum().backward()
    grad = embedding.weight.grad
    rows = row_grad(grad, embedding.weight, 0)
    assert rows.indices.ctypes.data == grad._indices().data_ptr()
    assert rows.rows.ctypes.data == grad._values().data_ptr()
    assert rows.indices.tolist() == [3, 5, 3]


def test_a_repeated_row_is_summed_once_like_a_dense_grad():
    embedding = torch.nn.Embedding(50, 4, sparse=True, dtype=torch.float64)
    dense = torch.nn.Embedding(50, 4, dtype=torch.float64)
    dense.weight.data.copy_(embedding.weight.data)
    sparse_optimizer = RMSprop(embedding.parameters(), lr=0.1)
    dense_optimizer = RMSprop(dense.parameters(), lr=0.1)
    for module, optimizer in ((embedding, sparse_optimizer), (dense, dense_optimizer)):
        module(torch.tensor([1, 2, 1, 1])).sum().backward()
        optimizer.step()
    listed = [1, 2]
    assert torch.equal(embedding.weight[listed], dense.weight[listed])
    # lazy: rows not listed keep their value, where a dense step moves no row either (g = 0)
    assert torch.equal(embedding.weight, dense.weight)
