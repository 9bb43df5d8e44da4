"""The error contract: right class, message naming the argument, nothing written."""

import numpy as np
import pytest

import rmsprop_c

from conftest import snapshot

SIZE = 16
GOOD_HYPER = dict(lr=0.01, alpha=0.9, eps=1e-8)


def fresh_buffers(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {
        "param": rng.standard_normal(SIZE).astype(dtype),
        "grad": rng.standard_normal(SIZE).astype(dtype),
        "square_avg": rng.random(SIZE).astype(dtype),
        "momentum_buffer": rng.standard_normal(SIZE).astype(dtype),
        "grad_avg": rng.standard_normal(SIZE).astype(dtype) * 0.1,
        "max_square_avg": rng.random(SIZE).astype(dtype),
    }


def call(buffers, **overrides):
    arguments = dict(GOOD_HYPER, momentum=0.9, centered=True, amsgrad=True)
    arguments.update(overrides)
    return rmsprop_c.rmsprop_step(
        buffers["param"], buffers["grad"], buffers["square_avg"],
        momentum_buffer=buffers.get("momentum_buffer"), grad_avg=buffers.get("grad_avg"),
        max_square_avg=buffers.get("max_square_avg"), **arguments)


def assert_raises_and_nothing_written(buffers, error, name, **overrides):
    arrays = [value for value in buffers.values() if isinstance(value, np.ndarray)]
    before = snapshot(*arrays)
    with pytest.raises(error) as raised:
        call(buffers, **overrides)
    assert name in str(raised.value), f"message {raised.value!r} does not name {name!r}"
    assert snapshot(*arrays) == before, "a buffer was written before the error"


def test_the_valid_call_works():
    # The bad-input tests below change one thing of this call.
    buffers = fresh_buffers()
    before = buffers["param"].copy()
    call(buffers)
    assert not np.array_equal(before, buffers["param"])


BUFFER_NAMES = ["param", "grad", "square_avg", "momentum_buffer", "grad_avg", "max_square_avg"]


@pytest.mark.parametrize("name", BUFFER_NAMES)
@pytest.mark.parametrize("bad_dtype", [np.int64, np.float16, np.complex64, ">f4"])
def test_unsupported_dtype_is_a_type_error(name, bad_dtype):
    if name in ("param", "grad") and bad_dtype is np.float16:
        return       # a low-precision step (tests/test_lowp_kernels.py)
    buffers = fresh_buffers()
    buffers[name] = buffers[name].astype(bad_dtype)
    assert_raises_and_nothing_written(buffers, TypeError, name)


@pytest.mark.parametrize("name", BUFFER_NAMES[1:])
def test_dtype_that_differs_from_param_is_a_type_error(name):
    buffers = fresh_buffers()
    buffers[name] = buffers[name].astype(np.float64)
    assert_raises_and_nothing_written(buffers, TypeError, name)


@pytest.mark.parametrize("name", BUFFER_NAMES)
def test_non_array_is_a_type_error(name):
    buffers = fresh_buffers()
    buffers[name] = buffers[name].tolist()
    assert_raises_and_nothing_written(buffers, TypeError, name)


@pytest.mark.parametrize("name", BUFFER_NAMES[1:])
@pytest.mark.parametrize("shape", [(SIZE - 1,), (SIZE + 1,), (2, SIZE // 2)])
def test_shape_that_differs_is_a_value_error(name, shape):
    buffers = fresh_buffers()
    buffers[name] = np.zeros(shape, dtype=np.float32)
    assert_raises_and_nothing_written(buffers, ValueError, name)


@pytest.mark.parametrize("name", BUFFER_NAMES)
def test_non_contiguous_buffer_is_a_value_error(name):
    buffers = fresh_buffers()
    wide = np.zeros(2 * SIZE, dtype=np.float32)
    wide[::2] = buffers[name]
    buffers[name] = wide[::2]            # strided view: never copied (the update would be lost)
    assert_raises_and_nothing_written(buffers, ValueError, name)


def test_fortran_ordered_2d_buffers_are_refused():
    buffers = {key: np.asfortranarray(value.reshape(4, 4))
               for key, value in fresh_buffers().items()}
    assert_raises_and_nothing_written(buffers, ValueError, "param")


@pytest.mark.parametrize("name", [n for n in BUFFER_NAMES if n != "grad"])
def test_read_only_output_buffer_is_a_value_error(name):
    buffers = fresh_buffers()
    buffers[name].flags.writeable = False
    assert_raises_and_nothing_written(buffers, ValueError, name)


def test_misaligned_buffer_is_a_value_error():
    buffers = fresh_buffers()
    raw = np.zeros(SIZE * 4 + 1, dtype=np.uint8)
    misaligned = raw[1:].view(np.float32)
    misaligned[...] = buffers["square_avg"]
    buffers["square_avg"] = misaligned
    assert_raises_and_nothing_written(buffers, ValueError, "square_avg")


@pytest.mark.parametrize("first, second", [
    ("param", "grad"), ("param", "square_avg"), ("grad", "square_avg"),
    ("square_avg", "momentum_buffer"), ("grad_avg", "max_square_avg"),
    ("param", "max_square_avg"),
])
def test_buffers_sharing_memory_are_a_value_error(first, second):
    buffers = fresh_buffers()
    buffers[second] = buffers[first]
    assert_raises_and_nothing_written(buffers, ValueError, "share memory")


def test_partially_overlapping_views_are_refused():
    buffers = fresh_buffers()
    storage = np.zeros(SIZE + 4, dtype=np.float32)
    buffers["param"] = storage[:SIZE]
    buffers["square_avg"] = storage[4:]
    assert_raises_and_nothing_written(buffers, ValueError, "share memory")


@pytest.mark.parametrize("name, value", [
    ("lr", -1e-3), ("lr", float("nan")), ("lr", float("inf")),
    ("eps", -1e-8), ("eps", float("nan")), ("eps", float("inf")),
    ("momentum", -0.1), ("momentum", float("inf")),
    ("weight_decay", -0.01), ("weight_decay", float("nan")),
    ("alpha", -0.1), ("alpha", 1.5), ("alpha", float("nan")),
    ("step", 0), ("step", -3),
    ("n_threads", 0), ("n_threads", -2),
])
def test_hyperparameter_out_of_range_is_a_value_error(name, value):
    assert_raises_and_nothing_written(fresh_buffers(), ValueError, name, **{name: value})


@pytest.mark.parametrize("name, value", [
    ("lr", "0.01"), ("alpha", None), ("eps", [1e-8]), ("step", 1.5), ("n_threads", 2.0),
])
def test_hyperparameter_of_wrong_type_is_a_type_error(name, value):
    assert_raises_and_nothing_written(fresh_buffers(), TypeError, name, **{name: value})


def test_bias_correction_with_alpha_one_is_refused():
    assert_raises_and_nothing_written(fresh_buffers(), ValueError, "alpha", alpha=1.0,
                                      bias_correction=True)


@pytest.mark.parametrize("missing, options", [
    ("momentum_buffer", dict(momentum=0.5)),
    ("grad_avg", dict(centered=True)),
    ("max_square_avg", dict(amsgrad=True)),
])
def test_option_without_its_state_buffer_is_a_value_error(missing, options):
    buffers = fresh_buffers()
    buffers[missing] = None
    assert_raises_and_nothing_written(buffers, ValueError, missing, **options)


def test_unused_state_buffers_may_be_omitted():
    buffers = fresh_buffers()
    for name in ("momentum_buffer", "grad_avg", "max_square_avg"):
        buffers[name] = None
    call(buffers, momentum=0.0, centered=False, amsgrad=False)


# --- the optimizer: every tensor checked before any is written --------------------------

def make_optimizer(n_tensors=5, **options):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(10 + i).astype(np.float32) for i in range(n_tensors)]
    return rmsprop_c.RMSprop(params, **options), params


def optimizer_snapshot(opt):
    return snapshot(*opt.params, *[a for state in opt.state for a in state.values()])


def good_grads(params):
    return [np.ones_like(p) for p in params]


@pytest.mark.parametrize("bad_grad, error", [
    (lambda p: p.astype(np.float64), TypeError),
    (lambda p: np.ones(p.size + 1, np.float32), ValueError),
    (lambda p: np.ones(2 * p.size, np.float32)[::2], ValueError),
    (lambda p: list(p), TypeError),
])
def test_optimizer_validates_all_grads_before_writing(bad_grad, error):
    opt, params = make_optimizer(momentum=0.9)
    grads = good_grads(params)
    grads[3] = bad_grad(params[3])
    before = optimizer_snapshot(opt)
    with pytest.raises(error, match=r"grads\[3\]"):
        opt.step(grads)
    assert optimizer_snapshot(opt) == before
    assert opt.steps == [0]


def test_optimizer_refuses_a_grad_that_is_a_param():
    opt, params = make_optimizer()
    grads = good_grads(params)
    grads[2] = params[2]
    before = optimizer_snapshot(opt)
    with pytest.raises(ValueError, match=r"grads\[2\].*share"):
        opt.step(grads)
    assert optimizer_snapshot(opt) == before


def test_optimizer_refuses_a_grad_that_is_a_state_buffer():
    opt, params = make_optimizer(momentum=0.9)
    grads = good_grads(params)
    grads[1] = opt.state[1]["momentum_buffer"]
    before = optimizer_snapshot(opt)
    with pytest.raises(ValueError, match=r"grads\[1\].*share"):
        opt.step(grads)
    assert optimizer_snapshot(opt) == before


def test_optimizer_refuses_wrong_number_of_grads():
    opt, params = make_optimizer()
    with pytest.raises(ValueError, match="grads"):
        opt.step(good_grads(params)[:-1])


def test_optimizer_refuses_params_that_share_memory():
    storage = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        rmsprop_c.RMSprop([storage[:12], storage[8:]])
    with pytest.raises(ValueError, match="share memory"):
        rmsprop_c.RMSprop([storage, storage])


@pytest.mark.parametrize("bad_param, error", [
    (np.zeros(4, np.int32), TypeError),
    (np.zeros(8, np.float32)[::2], ValueError),
    ([1.0, 2.0], TypeError),
])
def test_optimizer_refuses_bad_params_naming_the_index(bad_param, error):
    with pytest.raises(error, match=r"params\[1\]"):
        rmsprop_c.RMSprop([np.zeros(3, np.float32), bad_param])


def test_optimizer_refuses_a_param_made_read_only_later():
    opt, params = make_optimizer()
    params[4].flags.writeable = False
    before = optimizer_snapshot(opt)
    with pytest.raises(ValueError, match=r"params\[4\]"):
        opt.step(good_grads(params))
    assert optimizer_snapshot(opt) == before


@pytest.mark.parametrize("key, value, error", [
    ("lr", -1.0, ValueError), ("alpha", 2.0, ValueError), ("eps", float("nan"), ValueError),
    ("momentum", float("inf"), ValueError), ("weight_decay", -0.5, ValueError),
    ("lr", "fast", TypeError),
])
def test_bad_group_hyperparameter_set_between_steps(key, value, error):
    opt, params = make_optimizer(momentum=0.9)
    opt.param_groups[0][key] = value
    before = optimizer_snapshot(opt)
    with pytest.raises(error, match=rf"param_groups\[0\]\['{key}'\]"):
        opt.step(good_grads(params))
    assert optimizer_snapshot(opt) == before


def test_bad_constructor_hyperparameter_is_refused_at_construction():
    with pytest.raises(ValueError, match="lr"):
        make_optimizer(lr=-0.1)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        make_optimizer(initial_accumulator_value=-1.0)


@pytest.mark.parametrize("key, value, buffer", [
    ("momentum", 0.9, "momentum_buffer"), ("centered", True, "grad_avg"),
    ("amsgrad", True, "max_square_avg")])
def test_turning_on_an_option_without_its_state_buffer_is_refused(key, value, buffer):
    opt, params = make_optimizer()
    opt.param_groups[0][key] = value
    before = optimizer_snapshot(opt)
    with pytest.raises(ValueError, match=rf"\['{key}'\] is on.*without {buffer}"):
        opt.step(good_grads(params))
    assert optimizer_snapshot(opt) == before


def test_group_missing_a_key_is_named():
    opt, params = make_optimizer()
    del opt.param_groups[0]["eps"]
    before = optimizer_snapshot(opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\] lacks the key 'eps'"):
        opt.step(good_grads(params))
    assert optimizer_snapshot(opt) == before
