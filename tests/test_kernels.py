"""rmsprop_step equals rmsprop_c.reference.rmsprop_step bit for bit.

The full grid of the registry's test values (every boolean x momentum x weight decay x eps)
runs on small sizes;
the large sizes (where the step splits across threads) run every option one at a time plus
all-on and all-off, with n_threads 1, 2 and 3 compared with one reference run.
"""

import itertools

import numpy as np
import pytest

import rmsprop_c
from rmsprop_c import _kernels, reference

from conftest import STATE_NAMES, make_grad, make_tensor_state

from rmsprop_c._options import GROUP_KEYS, OPTIONS

# The grid comes from the options registry: every option the kernel reads, with the values
# the registry says a test must cover. A new option cannot escape it.
KERNEL_OPTIONS = [option for option in OPTIONS if option.name in GROUP_KEYS]
BOOLEAN_OPTIONS = tuple(o.name for o in KERNEL_OPTIONS if o.kind == "bool")
# Numeric options beyond lr and alpha get a grid axis each (lr and alpha vary per test).
NUMERIC_AXES = {o.name: o.test_values for o in KERNEL_OPTIONS
                if o.kind == "real" and o.name not in ("lr", "alpha")}
DTYPES = (np.float32, np.float64)
N_STEPS = 5


def option_sets():
    """Every combination of the registry's test values (bools x numeric axes)."""
    for flags in itertools.product((False, True), repeat=len(BOOLEAN_OPTIONS)):
        for numbers in itertools.product(*NUMERIC_AXES.values()):
            options = dict(zip(BOOLEAN_OPTIONS, flags))
            options.update(zip(NUMERIC_AXES, numbers))
            options.update(lr=0.01, alpha=0.9)
            yield options


def test_the_grid_covers_every_kernel_option_and_value():
    seen = {}
    for options in option_sets():
        for name, value in options.items():
            seen.setdefault(name, set()).add(value)
    for option in KERNEL_OPTIONS:
        assert option.name in seen, f"{option.name} is not in the kernel grid"
        if option.name not in ("lr", "alpha"):
            assert set(option.test_values) <= seen[option.name], option.name


def covering_option_sets():
    """All off, all on, and each option alone: cheap coverage for large sizes."""
    base = dict(lr=0.003, alpha=0.95, eps=1e-8, momentum=0.0, weight_decay=0.0,
                **{name: False for name in BOOLEAN_OPTIONS})
    yield dict(base)
    yield dict(base, momentum=0.9, weight_decay=0.01,
               **{name: True for name in BOOLEAN_OPTIONS})
    for name in BOOLEAN_OPTIONS:
        yield dict(base, **{name: True}, momentum=0.8 if name in ("nesterov",
                                                                  "lr_in_momentum") else 0.0)
    yield dict(base, momentum=0.9)
    yield dict(base, weight_decay=0.02)
    yield dict(base, weight_decay=0.02, decoupled_weight_decay=True)
    yield dict(base, eps=0.0, centered=True)


def run_steps(step_function, param, state, grads, options, **extra):
    for step, grad in enumerate(grads, start=1):
        step_function(param, grad, state["square_avg"], step=step,
                      momentum_buffer=state["momentum_buffer"], grad_avg=state["grad_avg"],
                      max_square_avg=state["max_square_avg"], **options, **extra)


def assert_bit_equal(param, state, expected_param, expected_state, context):
    assert param.tobytes() == expected_param.tobytes(), f"param differs: {context}"
    for name in STATE_NAMES:
        assert state[name].tobytes() == expected_state[name].tobytes(), \
            f"{name} differs: {context}"


def check_against_reference(options, size, dtype, thread_counts, seed):
    rng = np.random.default_rng(seed)
    param, state = make_tensor_state(rng, size, dtype)
    grads = [make_grad(rng, size, dtype) for _ in range(N_STEPS)]
    expected_param, expected_state = param.copy(), {k: v.copy() for k, v in state.items()}
    run_steps(reference.rmsprop_step, expected_param, expected_state, grads, options)
    for n_threads in thread_counts:
        got_param, got_state = param.copy(), {k: v.copy() for k, v in state.items()}
        run_steps(rmsprop_c.rmsprop_step, got_param, got_state, grads, options,
                  n_threads=n_threads)
        assert_bit_equal(got_param, got_state, expected_param, expected_state,
                         f"{options}, size={size}, dtype={dtype.__name__}, "
                         f"n_threads={n_threads}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("size", [0, 1, 7, 1023])
def test_full_option_grid_small_sizes(size, dtype):
    for index, options in enumerate(option_sets()):
        check_against_reference(options, size, dtype, (1, 2, 3), seed=index)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("size", [65537, 1_000_003])
def test_large_sizes_across_thread_counts(size, dtype):
    for index, options in enumerate(covering_option_sets()):
        check_against_reference(options, size, dtype, (1, 2, 3), seed=1000 + index)


@pytest.mark.parametrize("simd", _kernels.simd_targets_supported())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_simd_target_on_the_full_grid(simd, dtype, restore_simd):
    _kernels.set_simd_target(simd)
    assert _kernels.get_simd_target() == simd
    for index, options in enumerate(option_sets()):
        check_against_reference(options, 37, dtype, (1,), seed=index)


@pytest.mark.parametrize("simd", _kernels.simd_targets_supported())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_partial_block_length_on_every_simd_target(simd, dtype, restore_simd):
    # The kernels run whole 64-byte blocks in place and a last partial block through a
    # zero-padded copy: every length up to two blocks and one element, on the covering options.
    _kernels.set_simd_target(simd)
    block = 64 // np.dtype(dtype).itemsize
    for size in range(2 * block + 2):
        for index, options in enumerate(covering_option_sets()):
            check_against_reference(options, size, dtype, (1,), seed=size * 100 + index)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("eps_in_sqrt", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_zero_gradients_with_zero_eps_do_not_move_params(dtype, eps_in_sqrt, centered):
    rng = np.random.default_rng(7)
    param, state = make_tensor_state(rng, 1031, dtype)
    original = param.copy()
    zeros = np.zeros_like(param)
    for step in range(1, N_STEPS + 1):
        rmsprop_c.rmsprop_step(param, zeros, state["square_avg"], lr=0.1, alpha=0.9, eps=0.0,
                               centered=centered, eps_in_sqrt=eps_in_sqrt, momentum=0.9,
                               momentum_buffer=state["momentum_buffer"],
                               grad_avg=state["grad_avg"], step=step)
    # den == 0 everywhere, so u = 0: no NaN, and the parameters stay where they were.
    assert param.tobytes() == original.tobytes()
    assert not np.isnan(state["momentum_buffer"]).any()


def test_multidimensional_buffers_match_flat_ones():
    rng = np.random.default_rng(3)
    param, state = make_tensor_state(rng, 4 * 5 * 6, np.float32)
    grads = [make_grad(rng, param.size, np.float32) for _ in range(3)]
    options = dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9, centered=True)
    flat_param, flat_state = param.copy(), {k: v.copy() for k, v in state.items()}
    run_steps(rmsprop_c.rmsprop_step, flat_param, flat_state, grads, options)
    shaped_param = param.reshape(4, 5, 6).copy()
    shaped_state = {k: v.reshape(4, 5, 6).copy() for k, v in state.items()}
    run_steps(rmsprop_c.rmsprop_step, shaped_param, shaped_state,
              [g.reshape(4, 5, 6) for g in grads], options)
    assert shaped_param.tobytes() == flat_param.tobytes()


def test_read_only_grad_is_accepted_and_unchanged():
    rng = np.random.default_rng(4)
    param, state = make_tensor_state(rng, 100, np.float64)
    grad = make_grad(rng, 100, np.float64)
    grad.flags.writeable = False
    before = grad.tobytes()
    rmsprop_c.rmsprop_step(param, grad, state["square_avg"], lr=0.01, alpha=0.99, eps=1e-8)
    assert grad.tobytes() == before


def test_a_step_changes_the_param():
    # Guards the bit-exact tests against comparing two no-ops.
    rng = np.random.default_rng(5)
    param, state = make_tensor_state(rng, 64, np.float32)
    before = param.copy()
    rmsprop_c.rmsprop_step(param, make_grad(rng, 64, np.float32, 0.0), state["square_avg"],
                           lr=0.01, alpha=0.99, eps=1e-8)
    assert (param != before).all()
