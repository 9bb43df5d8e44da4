"""The torch drop-in with bfloat16 and float16 params: zero-copy, bit-exact against the
NumPy spec (tensor index = the param's position), stochastic rounding keyed by seed."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

import rmsprop_c.torch as rct  # noqa: E402
from rmsprop_c import reference  # noqa: E402
from rmsprop_c._options import OPTIMIZER_OPTIONS  # noqa: E402

ROUNDINGS = next(o for o in OPTIMIZER_OPTIONS if o.name == "rounding").test_values


def as_numpy(tensor):
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_low_precision_params_step_in_place_as_the_spec_says(dtype, rounding):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 40), torch.nn.Linear(40, 3)).to(dtype)
    params = list(model.parameters())
    start = [as_numpy(p).copy() for p in params]
    pointers = [p.data_ptr() for p in params]
    optimizer = rct.RMSprop(params, lr=1e-2, momentum=0.9, rounding=rounding, seed=7)
    history = []
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape).to(dtype)
        history.append([as_numpy(p.grad).copy() for p in params])
        optimizer.step()
    assert [p.data_ptr() for p in params] == pointers
    for index, param in enumerate(params):
        expected = start[index].copy()
        square_avg = np.zeros_like(expected)
        momentum_buffer = np.zeros_like(expected)
        for step, grads in enumerate(history, start=1):
            reference.rmsprop_step(expected, grads[index], square_avg, lr=1e-2, alpha=0.99,
                                   eps=1e-8, momentum=0.9, momentum_buffer=momentum_buffer,
                                   step=step, rounding=rounding, seed=7, tensor_index=index)
        state = optimizer.state[param]
        assert state["square_avg"].dtype == dtype
        assert as_numpy(param).tobytes() == expected.tobytes()
        assert as_numpy(state["square_avg"]).tobytes() == square_avg.tobytes()
        assert as_numpy(state["momentum_buffer"]).tobytes() == momentum_buffer.tobytes()


def test_rounding_and_seed_are_checked_and_survive_pickling():
    import pickle
    param = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="rounding"):
        rct.RMSprop([param], rounding="up")
    with pytest.raises(ValueError, match="seed"):
        rct.RMSprop([param], seed=-1)
    optimizer = rct.RMSprop([param], rounding="stochastic", seed=3)
    restored = pickle.loads(pickle.dumps(optimizer))
    assert (restored.rounding, restored.seed) == ("stochastic", 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sparse_grads_of_low_precision_params_are_refused_naming_them(dtype):
    embedding = torch.nn.Embedding(10, 4, sparse=True).to(dtype)
    optimizer = rct.RMSprop(embedding.parameters(), lr=0.1)
    before = embedding.weight.detach().clone()
    embedding(torch.tensor([1, 2])).float().sum().backward()
    with pytest.raises(TypeError, match=r"params\[0\]"):
        optimizer.step()
    assert torch.equal(embedding.weight.detach(), before)
