"""rmsprop_c.torch.RMSprop against torch.optim.RMSprop and timm's RMSpropTF, in real loops.

A small nn.Module (a conv layer, two dense layers) is trained 30 steps by our optimizer; after
each backward its gradients are copied into a twin module stepped by the peer, so both
optimizers always see the same gradients and every difference is the optimizers' own
rounding. Errors are normwise relative errors in units of machine epsilon
(``parity_model.relative_error_in_eps``), per tensor, worst over steps.

Tolerance. torch orders the arithmetic differently from the spec (``addcmul`` forms
``v + ((1-alpha)*g)*g``, ``lerp`` updates grad_avg, ``addcdiv`` divides inside the update),
a few roundings of at most 0.5 ulp each per step; 30 steps add them like a random walk, small
next to the parameter, so the error stays at a few ulps. Measured over torch's own RMSprop
configurations on this model, seeds 0-3 (torch 2.13.0 CPU, x86-64), largest error in eps:
float64 param 11.7, state 6.9; float32 param 6.4, state 8.6. timm's RMSpropTF order
(``v += (1-alpha)*(g*g - v)``, ``p *= 1 - lr*wd``) against the tf1 flavor: up to 7.2.
The tolerance is 48 eps for both dtypes, ~4x the largest measurement (room for other SIMD
paths in torch, FMA in addcmul/addcdiv), while a wrong switch (eps inside the sqrt, alpha
0.98 for 0.99) lands above 1e6 eps (test_tolerance_detects_a_wrong_switch). In relative
terms 48 eps is 1.1e-14 in float64 and 5.7e-6 in float32.

torch is imported without skipping (CI installs it); RMSPROP_C_ALLOW_MISSING_COMPAT=1 skips.
"""

import io
import os

import numpy as np
import pytest

if os.environ.get("RMSPROP_C_ALLOW_MISSING_COMPAT") == "1":
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")
else:
    import torch

from torch.testing._internal.common_optimizers import optim_inputs_func_rmsprop

from parity_model import relative_error_in_eps
from rmsprop_c.torch import RMSprop

N_STEPS = 30
TOLERANCE_IN_EPS = 48.0
DTYPES = (torch.float64, torch.float32)
STATE_BUFFERS = ("square_avg", "momentum_buffer", "grad_avg")


class SmallNet(torch.nn.Module):
    """Conv (4 x 2 x 3 x 3) -> dense 64x16 -> tanh -> dense 16x3: six parameter tensors."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)
        self.hidden = torch.nn.Linear(64, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, inputs):
        features = torch.tanh(self.conv(inputs)).flatten(1)
        return self.out(torch.tanh(self.hidden(features)))


def make_pair(dtype, seed=0):
    """Our model, an identical twin, and a fixed batch."""
    torch.manual_seed(seed)
    ours = SmallNet().to(dtype)
    twin = SmallNet().to(dtype)
    twin.load_state_dict(ours.state_dict())
    inputs = torch.randn(32, 2, 6, 6, dtype=dtype)
    targets = torch.randn(32, 3, dtype=dtype)
    return ours, twin, inputs, targets


def backward(model, inputs, targets, step):
    """Loss of a batch that changes each step (so gradients are never stationary)."""
    scale = 1.0 + 0.1 * np.sin(step)
    loss = torch.nn.functional.mse_loss(model(inputs * scale), targets)
    loss.backward()
    return loss


def copy_grads(source, destination):
    for mine, theirs in zip(source.parameters(), destination.parameters()):
        theirs.grad = None if mine.grad is None else mine.grad.clone()


def worst_error(ours, twin):
    return max(relative_error_in_eps(mine.detach().numpy(), theirs.detach().numpy())
               for mine, theirs in zip(ours.parameters(), twin.parameters()))


def run_pair(dtype, our_kwargs, torch_kwargs, n_steps=N_STEPS, seed=0, between=None):
    """Train ``ours`` with rmsprop_c, ``twin`` with torch.optim.RMSprop on the same grads."""
    ours, twin, inputs, targets = make_pair(dtype, seed)
    optimizer = RMSprop(ours.parameters(), **our_kwargs)
    torch_optimizer = torch.optim.RMSprop(twin.parameters(), **torch_kwargs)
    worst = 0.0
    for step in range(n_steps):
        optimizer.zero_grad()
        torch_optimizer.zero_grad()
        backward(ours, inputs, targets, step)
        if between is not None:
            between(step, ours, optimizer, torch_optimizer)
        copy_grads(ours, twin)
        optimizer.step()
        torch_optimizer.step()
        worst = max(worst, worst_error(ours, twin))
    return worst, ours, twin, optimizer, torch_optimizer


def torch_configurations():
    """torch's own RMSprop test configurations for CPU."""
    return [(config.desc, config.kwargs) for config in optim_inputs_func_rmsprop("cpu")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("desc,kwargs", torch_configurations(),
                         ids=[desc for desc, _ in torch_configurations()])
def test_matches_torch_on_its_own_configurations(desc, kwargs, dtype):
    worst, ours, twin, optimizer, torch_optimizer = run_pair(dtype, kwargs, kwargs)
    assert worst <= TOLERANCE_IN_EPS, f"{desc}: {worst:.2f} eps"
    for mine, theirs in zip(ours.parameters(), twin.parameters()):
        our_state, torch_state = optimizer.state[mine], torch_optimizer.state[theirs]
        assert our_state["step"].dtype == torch_state["step"].dtype == torch.float32
        assert our_state["step"].shape == () and float(our_state["step"]) == N_STEPS
        assert float(torch_state["step"]) == N_STEPS
        for name in STATE_BUFFERS:
            assert (name in our_state) == (name in torch_state), name
            if name in our_state:
                error = relative_error_in_eps(our_state[name].numpy(), torch_state[name].numpy())
                assert error <= TOLERANCE_IN_EPS, (name, error)


def test_configurations_cover_every_torch_option():
    """The configurations torch tests exercise weight decay, centered, momentum, maximize."""
    seen = set()
    for _, kwargs in torch_configurations():
        seen |= {key for key, value in kwargs.items() if value}
    assert {"lr", "weight_decay", "centered", "momentum", "maximize"} <= seen


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mistake", (dict(eps_in_sqrt=True), dict(alpha=0.98)), ids=str)
def test_tolerance_detects_a_wrong_switch(dtype, mistake):
    worst, *_ = run_pair(dtype, dict(momentum=0.9, **mistake), dict(momentum=0.9))
    assert worst > 1e4 * TOLERANCE_IN_EPS


def test_foreach_and_fused_arguments_change_nothing():
    results = []
    for kwargs in ({}, {"foreach": True}, {"foreach": False}, {"fused": True}):
        _, ours, *_ = run_pair(torch.float64, kwargs, {}, n_steps=5)
        results.append([param.detach().clone() for param in ours.parameters()])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_tensor_lr_matches_torch():
    worst, *_ = run_pair(torch.float64, {"lr": torch.tensor(3e-3)}, {"lr": torch.tensor(3e-3)})
    assert worst <= TOLERANCE_IN_EPS


# ---------------------------------------------------------------------------------------
# Schedulers, None grads, param groups, hooks


SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.3),
    "LambdaLR": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 / (1 + e)),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=N_STEPS),
    "CosineAnnealingWarmRestarts": lambda opt: (
        torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5)),
}


@pytest.mark.parametrize("name", tuple(SCHEDULERS))
def test_schedulers_match_torch(name):
    ours, twin, inputs, targets = make_pair(torch.float64)
    optimizer = RMSprop(ours.parameters(), lr=1e-2, momentum=0.5)
    torch_optimizer = torch.optim.RMSprop(twin.parameters(), lr=1e-2, momentum=0.5)
    schedulers = [SCHEDULERS[name](optimizer), SCHEDULERS[name](torch_optimizer)]
    learning_rates = set()
    for step in range(N_STEPS):
        optimizer.zero_grad()
        backward(ours, inputs, targets, step)
        copy_grads(ours, twin)
        optimizer.step()
        torch_optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == torch_optimizer.param_groups[0]["lr"]
        learning_rates.add(optimizer.param_groups[0]["lr"])
    assert len(learning_rates) > 2
    assert worst_error(ours, twin) <= TOLERANCE_IN_EPS


def skip_some(step, model, optimizer, torch_optimizer):
    """The hidden layer gets no gradient on every third step; the conv bias never does."""
    if step % 3 == 0:
        model.hidden.weight.grad = None
        model.hidden.bias.grad = None
    model.conv.bias.grad = None


@pytest.mark.parametrize("kwargs", (dict(), dict(momentum=0.9, centered=True)), ids=str)
def test_none_grads_are_skipped_like_torch(kwargs):
    worst, ours, twin, optimizer, torch_optimizer = run_pair(
        torch.float64, kwargs, kwargs, between=skip_some)
    assert worst <= TOLERANCE_IN_EPS
    for mine, theirs in zip(ours.parameters(), twin.parameters()):
        torch_state = torch_optimizer.state.get(theirs, {})
        assert float(optimizer.state[mine]["step"]) == float(torch_state.get("step", 0))
    untouched = make_pair(torch.float64)[0].conv.bias
    assert torch.equal(ours.conv.bias, untouched)
    assert not optimizer.state[ours.conv.bias]["square_avg"].any()
    assert optimizer.tensor_steps == [N_STEPS, 0, N_STEPS - 10, N_STEPS - 10, N_STEPS, N_STEPS]


def test_zero_grad_without_none_steps_every_param_like_torch():
    def zero_instead(step, model, optimizer, torch_optimizer):
        if step == 4:
            optimizer.zero_grad(set_to_none=False)
            assert all(p.grad is not None and not p.grad.any() for p in model.parameters())

    worst, ours, twin, optimizer, _ = run_pair(torch.float64, {}, {}, between=zero_instead)
    assert worst <= TOLERANCE_IN_EPS


def test_add_param_group_and_group_options_match_torch():
    ours, twin, inputs, targets = make_pair(torch.float64)
    split = lambda model: ([*model.conv.parameters(), *model.hidden.parameters()],
                           list(model.out.parameters()))
    optimizer = RMSprop(split(ours)[0], lr=1e-2)
    torch_optimizer = torch.optim.RMSprop(split(twin)[0], lr=1e-2)
    for step in range(N_STEPS):
        if step == 10:
            optimizer.add_param_group({"params": split(ours)[1], "lr": 3e-3, "momentum": 0.9})
            torch_optimizer.add_param_group({"params": split(twin)[1], "lr": 3e-3,
                                             "momentum": 0.9})
        ours.zero_grad()
        backward(ours, inputs, targets, step)
        copy_grads(ours, twin)
        optimizer.step()
        torch_optimizer.step()
    assert worst_error(ours, twin) <= TOLERANCE_IN_EPS
    assert optimizer.param_groups[1]["momentum"] == 0.9
    assert float(optimizer.state[ours.out.weight]["step"]) == N_STEPS - 10


def test_replaced_param_data_is_stepped_like_torch():
    """``param.data = ...`` (as ``module.to`` does) moves the param to new memory."""
    def replace(step, model, optimizer, torch_optimizer):
        if step == 5:
            for optim in (optimizer, torch_optimizer):
                weight = optim.param_groups[0]["params"][2]
                weight.data = weight.data.clone()

    worst, *_ = run_pair(torch.float64, {}, {}, between=replace)
    assert worst <= TOLERANCE_IN_EPS


def test_step_hooks_and_closure():
    ours, _, inputs, targets = make_pair(torch.float64)
    optimizer = RMSprop(ours.parameters())
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    before = ours.out.weight.detach().clone()

    def closure():
        optimizer.zero_grad()
        calls.append("closure")
        return backward(ours, inputs, targets, 0)

    loss = optimizer.step(closure)
    assert calls == ["pre", "closure", "post"]
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert not torch.equal(before, ours.out.weight)


def test_global_step_hooks_run_and_can_change_the_arguments():
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    ours, _, inputs, targets = make_pair(torch.float64)
    optimizer = RMSprop(ours.parameters())
    calls = []

    def pre(opt, args, kwargs):
        calls.append(("pre", opt is optimizer))
        return args, {"closure": lambda: calls.append("closure")}

    handles = [register_optimizer_step_pre_hook(pre),
               register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append("post"))]
    try:
        backward(ours, inputs, targets, 0)
        optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [("pre", True), "closure", "post"]
    calls.clear()
    optimizer.step()                    # the hooks are gone: the bare step
    assert calls == []


def test_the_profiler_sees_the_step_under_torchs_name():
    ours, _, inputs, targets = make_pair(torch.float64)
    optimizer = RMSprop(ours.parameters())
    backward(ours, inputs, targets, 0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step()
    names = {event.name for event in profile.events()}
    assert "Optimizer.step#RMSprop.step" in names


def test_autograd_sees_the_in_place_update():
    """A graph that saved a param before the step refuses to backpropagate, as with torch."""
    ours, _, inputs, targets = make_pair(torch.float64)
    optimizer = RMSprop(ours.parameters())
    backward(ours, inputs, targets, 0)
    loss = torch.nn.functional.mse_loss(ours(inputs), targets)
    optimizer.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ---------------------------------------------------------------------------------------
# state_dict, both ways, and resuming


def through_bytes(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def train(model, optimizer, inputs, targets, steps, between=None):
    for step in steps:
        optimizer.zero_grad()
        backward(model, inputs, targets, step)
        if between is not None:
            between(step, model, optimizer, None)
        optimizer.step()


@pytest.mark.parametrize("direction", ("torch_to_ours", "ours_to_torch"))
def test_state_dict_moves_between_torch_and_ours(direction):
    """Saved by one, loaded by the other: the run goes on as the saving optimizer's would."""
    kwargs = dict(lr=5e-3, momentum=0.9, centered=True, weight_decay=1e-3)
    first, second = ((torch.optim.RMSprop, RMSprop) if direction == "torch_to_ours"
                     else (RMSprop, torch.optim.RMSprop))
    model, _, inputs, targets = make_pair(torch.float64)
    optimizer = first(model.parameters(), **kwargs)
    train(model, optimizer, inputs, targets, range(10), between=skip_some)
    saved_optimizer = through_bytes(optimizer.state_dict())
    resumed_model = SmallNet().to(torch.float64)
    resumed_model.load_state_dict(through_bytes(model.state_dict()))
    resumed = second(resumed_model.parameters(), **kwargs)
    resumed.load_state_dict(saved_optimizer)
    assert resumed.param_groups[0]["momentum"] == 0.9
    loaded = resumed.state_dict()["state"]
    for index, saved in saved_optimizer["state"].items():
        assert float(loaded[index]["step"]) == float(saved["step"])
        for key in STATE_BUFFERS:
            assert torch.equal(loaded[index][key], saved[key])

    # Both go on in lockstep on the same grads: the difference is the two roundings only.
    worst = 0.0
    for step in range(10, N_STEPS):
        resumed.zero_grad()
        backward(resumed_model, inputs, targets, step)
        skip_some(step, resumed_model, None, None)
        copy_grads(resumed_model, model)
        resumed.step()
        optimizer.step()
        worst = max(worst, worst_error(resumed_model, model))
    assert 0 < worst <= TOLERANCE_IN_EPS
    for mine, theirs in zip(resumed_model.parameters(), model.parameters()):
        mine_state, their_state = resumed.state.get(mine, {}), optimizer.state.get(theirs, {})
        assert float(mine_state.get("step", 0)) == float(their_state.get("step", 0))


@pytest.mark.parametrize("kwargs", (
    dict(momentum=0.9, centered=True),
    dict(flavor="optax", lr=1e-2, bias_correction=True, momentum=0.9, nesterov=True),
    dict(flavor="tf1", lr=1e-2, amsgrad=True),
), ids=("torch", "optax-bias-correction", "tf1-amsgrad"))
def test_resumed_run_equals_uninterrupted_bit_for_bit(kwargs):
    model, twin, inputs, targets = make_pair(torch.float32)
    uninterrupted = RMSprop(twin.parameters(), **kwargs)
    train(twin, uninterrupted, inputs, targets, range(N_STEPS), between=skip_some)

    optimizer = RMSprop(model.parameters(), **kwargs)
    train(model, optimizer, inputs, targets, range(12), between=skip_some)
    saved_model = through_bytes(model.state_dict())
    saved_optimizer = through_bytes(optimizer.state_dict())
    del model, optimizer
    resumed_model = SmallNet().to(torch.float32)
    resumed_model.load_state_dict(saved_model)
    resumed = RMSprop(resumed_model.parameters(), **kwargs)
    resumed.load_state_dict(saved_optimizer)
    train(resumed_model, resumed, inputs, targets, range(12, N_STEPS), between=skip_some)

    for mine, expected in zip(resumed_model.parameters(), twin.parameters()):
        assert torch.equal(mine, expected)
        mine_state, expected_state = resumed.state[mine], uninterrupted.state[expected]
        assert set(mine_state) == set(expected_state)
        for key in mine_state:
            assert torch.equal(mine_state[key], expected_state[key]), key
    assert resumed.tensor_steps == uninterrupted.tensor_steps


def test_state_dict_is_torch_format():
    model, _, inputs, targets = make_pair(torch.float64)
    optimizer = RMSprop(model.parameters(), momentum=0.9)
    train(model, optimizer, inputs, targets, range(3))
    state_dict = optimizer.state_dict()
    assert sorted(state_dict) == ["param_groups", "state"]
    assert state_dict["param_groups"][0]["params"] == list(range(6))
    assert sorted(state_dict["state"][0]) == ["momentum_buffer", "square_avg", "step"]
    assert state_dict["state"][0]["square_avg"].data_ptr() == \
        optimizer.state[model.conv.weight]["square_avg"].data_ptr()


# ---------------------------------------------------------------------------------------
# flavor="tf1" against timm's RMSpropTF


def rmsprop_tf_step(param, grad, state, *, lr, alpha, eps, momentum, centered, weight_decay,
                    decoupled_decay):
    """One step of timm's RMSpropTF (timm/optim/rmsprop_tf.py), transcribed to NumPy.

    TensorFlow's order of operations: the averages move by ``(1 - alpha) * (x - avg)``; eps
    goes inside the square root; the mean square starts at one; the momentum buffer holds
    the lr-scaled update. Decoupled decay scales the param by ``1 - lr * wd`` first.
    """
    one_minus_alpha = 1.0 - alpha
    if weight_decay:
        if decoupled_decay:
            param *= 1.0 - lr * weight_decay
        else:
            grad = grad + weight_decay * param
    state["square_avg"] += one_minus_alpha * (grad * grad - state["square_avg"])
    if centered:
        state["grad_avg"] += one_minus_alpha * (grad - state["grad_avg"])
        denominator = np.sqrt(state["square_avg"] - state["grad_avg"] ** 2 + eps)
    else:
        denominator = np.sqrt(state["square_avg"] + eps)
    if momentum > 0:
        state["momentum_buffer"] *= momentum
        state["momentum_buffer"] += lr * (grad / denominator)
        param -= state["momentum_buffer"]
    else:
        param -= lr * (grad / denominator)


TF_CONFIGURATIONS = {
    "plain": dict(momentum=0.0, centered=False, weight_decay=0.0, decoupled_decay=False),
    "momentum": dict(momentum=0.9, centered=False, weight_decay=0.0, decoupled_decay=False),
    "centered-momentum": dict(momentum=0.9, centered=True, weight_decay=0.0,
                              decoupled_decay=False),
    "weight-decay": dict(momentum=0.0, centered=False, weight_decay=1e-2,
                         decoupled_decay=False),
    "decoupled-decay": dict(momentum=0.5, centered=False, weight_decay=1e-2,
                            decoupled_decay=True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", tuple(TF_CONFIGURATIONS))
def test_tf1_flavor_matches_timm_rmsprop_tf(name, dtype):
    config = TF_CONFIGURATIONS[name]
    lr, alpha, eps = 1e-2, 0.9, 1e-10        # timm's defaults, TensorFlow's decay and eps
    model, _, inputs, targets = make_pair(dtype)
    optimizer = RMSprop(model.parameters(), flavor="tf1", lr=lr, momentum=config["momentum"],
                        centered=config["centered"], weight_decay=config["weight_decay"],
                        decoupled_weight_decay=config["decoupled_decay"])
    expected = [param.detach().numpy().copy() for param in model.parameters()]
    states = [{"square_avg": np.ones_like(p), "grad_avg": np.zeros_like(p),
               "momentum_buffer": np.zeros_like(p)} for p in expected]
    # Python floats: NumPy rounds them to the array dtype where they meet, as torch does.
    scalars = dict(lr=lr, alpha=alpha, eps=eps, momentum=config["momentum"],
                   weight_decay=config["weight_decay"])
    worst = 0.0
    for step in range(N_STEPS):
        optimizer.zero_grad()
        backward(model, inputs, targets, step)
        grads = [param.grad.numpy().copy() for param in model.parameters()]
        optimizer.step()
        for param, grad, state in zip(expected, grads, states):
            rmsprop_tf_step(param, grad, state, **scalars, centered=config["centered"],
                            decoupled_decay=config["decoupled_decay"])
        worst = max(worst, max(relative_error_in_eps(mine.detach().numpy(), theirs)
                               for mine, theirs in zip(model.parameters(), expected)))
    assert worst <= TOLERANCE_IN_EPS, f"{worst:.2f} eps"
