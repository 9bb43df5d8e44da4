"""Step sequences whose plan changes between steps: the engine reuses a step's plan only while
it still fits (every tensor has a grad, each group keeps its kernel); each case below changes
what the plan depends on between two steps and compares every step with the NumPy twin."""

import numpy as np
import pytest

import rmsprop_c
from rmsprop_c.slow import RMSprop as ReferenceRMSprop

from conftest import make_grad

SIZES = [300, 17, 1000, 64, 5, 2049]


def make_pair(rng, n_threads, **options):
    params = [rng.standard_normal(size).astype(np.float32) for size in SIZES]
    twins = [p.copy() for p in params]
    groups = [{"params": params[:3]}, {"params": params[3:], "momentum": 0.9}]
    twin_groups = [{"params": twins[:3]}, {"params": twins[3:], "momentum": 0.9}]
    fast = rmsprop_c.RMSprop(groups, lr=0.01, n_threads=n_threads, **options)
    slow = ReferenceRMSprop(twin_groups, lr=0.01, **options)
    return fast, slow, params, twins


def assert_same(fast, slow, params, twins, when):
    for i, (a, b) in enumerate(zip(params, twins)):
        assert a.tobytes() == b.tobytes(), f"{when}: params[{i}] differs"
    for i in range(len(params)):
        for key, value in fast.state[i].items():
            assert value.tobytes() == slow.state[i][key].tobytes(), \
                f"{when}: state[{i}]['{key}'] differs"


def both(fast, slow, action):
    action(fast)
    action(slow)


def set_group(g, **values):
    def action(opt):
        opt.param_groups[g].update(values)
    return action


def reload_with_steps(steps):
    def action(opt):
        state = opt.state_dict()
        for g, step in enumerate(steps):
            state["param_groups"][g]["step"] = step
        opt.load_state_dict(state)
    return action


EVENTS = {
    "every grad": None,
    "a None grad": [1, 4],
    "new lr": set_group(0, lr=0.003),
    "weight decay on": set_group(1, weight_decay=0.01),
    "momentum off": set_group(1, momentum=0.0),
    "steps reloaded": reload_with_steps([7, 3]),
}


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("event", sorted(EVENTS))
def test_a_change_between_steps_gives_the_reference_steps(event, bias_correction, n_threads):
    rng = np.random.default_rng(abs(hash((event, bias_correction, n_threads))) % 2**32)
    fast, slow, params, twins = make_pair(rng, n_threads, bias_correction=bias_correction)
    change = EVENTS[event]
    for step in range(6):
        grads = [make_grad(rng, p.size, p.dtype) for p in params]
        if step == 3:
            if isinstance(change, list):
                for i in change:
                    grads[i] = None
            elif change is not None:
                both(fast, slow, change)
        fast.step(grads)
        slow.step(grads)
        assert_same(fast, slow, params, twins, f"after step {step + 1} ({event})")
    assert fast._engine.get_tensor_steps() == slow._engine.get_tensor_steps()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_grads_leaving_and_returning_with_bias_correction(n_threads):
    # A tensor skipped for a step falls behind its group: it needs scalars of its own
    # (bias correction) until the counts are reloaded equal.
    rng = np.random.default_rng(31)
    fast, slow, params, twins = make_pair(rng, n_threads, bias_correction=True)
    patterns = [[], [2], [], [], [0, 5], [], [], [2, 3], []]
    for step, missing in enumerate(patterns):
        grads = [None if i in missing else make_grad(rng, p.size, p.dtype)
                 for i, p in enumerate(params)]
        fast.step(grads)
        slow.step(grads)
        assert_same(fast, slow, params, twins, f"after step {step + 1}")


@pytest.mark.parametrize("n_threads", [1, 2])
def test_clipped_then_unclipped_steps_reuse_no_stale_coefficient(n_threads):
    rng = np.random.default_rng(32)
    fast, slow, params, twins = make_pair(rng, n_threads)
    for step in range(6):
        limit = 0.5 if step % 2 == 0 else None
        fast.max_grad_norm = slow.max_grad_norm = limit
        grads = [make_grad(rng, p.size, p.dtype) for p in params]
        fast.step(grads)
        slow.step(grads)
        assert_same(fast, slow, params, twins, f"after step {step + 1}")


@pytest.mark.parametrize("n_threads", [1, 2])
def test_rounding_switched_between_steps_is_applied(n_threads):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from rmsprop_c import _kernels, reference
    rng = np.random.default_rng(33)
    param = rng.standard_normal(3000).astype(ml_dtypes.bfloat16)
    square_avg = np.zeros(3000, ml_dtypes.bfloat16)
    twin, twin_square_avg = param.copy(), square_avg.copy()
    engine = _kernels.MultiTensorStep([param], [0], [{"square_avg": square_avg}], 1)
    group = rmsprop_c.RMSprop([np.zeros(1, np.float32)], lr=0.01).param_groups[0]
    group = {key: group[key] for key in group if key != "params"}
    for step, rounding in enumerate(["nearest", "nearest", "stochastic", "stochastic",
                                     "nearest"], start=1):
        engine.set_rounding(rounding, 5)
        grad = rng.standard_normal(3000).astype(ml_dtypes.bfloat16)
        engine.step([grad], [group], n_threads)
        options = {key: group[key] for key in rmsprop_c._options.GROUP_KEYS}
        reference.rmsprop_step(twin, grad, twin_square_avg, step=step, rounding=rounding,
                               seed=5, tensor_index=0, **options)
        assert param.view(np.uint16).tobytes() == twin.view(np.uint16).tobytes(), \
            f"step {step} ({rounding})"
