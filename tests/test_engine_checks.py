"""A step's per-tensor checks, which run in C inside the step's parallel region.

Each worker checks its share of the tensors before any worker writes. A bad tensor anywhere
in the split (first, in the middle, last, in any worker's share) must be refused with the
error that names it and nothing written; grads the C checks do not recognise but the
contract accepts (an equal dtype that is another object, new arrays every step) must step
exactly as the spec does.
"""

import numpy as np
import pytest

import rmsprop_c as rc
from rmsprop_c import reference

N_TENSORS = 64
WIDTH = 4096                       # 64 x 4096 elements: large enough for two workers
POSITIONS = [0, N_TENSORS // 2 - 1, N_TENSORS // 2, N_TENSORS - 1]
OPTIONS = dict(lr=1e-2, alpha=0.9, eps=1e-8)


def build(n_threads, dtype=np.float32, **options):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(WIDTH).astype(dtype) for _ in range(N_TENSORS)]
    grads = [rng.standard_normal(WIDTH).astype(dtype) for _ in range(N_TENSORS)]
    opt = rc.RMSprop(params, n_threads=n_threads, **OPTIONS, **options)
    return params, grads, opt


def snapshot(params, opt):
    return [p.tobytes() for p in params] + [
        buffer.tobytes() for state in opt.state for buffer in state.values()]


def spec_after(params_before, grads_per_step):
    params = [p.copy() for p in params_before]
    square = [np.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_per_step, start=1):
        for p, g, v in zip(params, grads, square):
            if g is not None:
                reference.rmsprop_step(p, g, v, step=step, **OPTIONS)
    return params


def wrong_dtype(params, grads, opt, k):
    grads[k] = grads[k].astype(np.float64)
    return TypeError, rf"grads\[{k}\]"


def wrong_shape(params, grads, opt, k):
    grads[k] = grads[k][:-1].copy()
    return ValueError, rf"grads\[{k}\] has shape"


def not_contiguous(params, grads, opt, k):
    grads[k] = np.repeat(grads[k], 2)[::2]
    return ValueError, rf"grads\[{k}\] is not C-contiguous"


def not_an_array(params, grads, opt, k):
    grads[k] = grads[k].tolist()
    return TypeError, rf"grads\[{k}\]"


def shares_a_state_buffer(params, grads, opt, k):
    grads[k] = opt.state[(k + 1) % N_TENSORS]["square_avg"]
    return ValueError, rf"grads\[{k}\] shares memory"


def is_a_param(params, grads, opt, k):
    grads[k] = params[k]
    return ValueError, rf"grads\[{k}\] shares memory"


def param_made_read_only(params, grads, opt, k):
    params[k].flags.writeable = False
    return ValueError, rf"params\[{k}\] changed"


def state_shrunk_in_place(params, grads, opt, k):
    # __setstate__ replaces an array's memory and shape even while others hold it.
    opt.state[k]["square_avg"].__setstate__(np.zeros(WIDTH // 2, np.float32).__reduce__()[2])
    return ValueError, "a state buffer changed"


BAD = [wrong_dtype, wrong_shape, not_contiguous, not_an_array, shares_a_state_buffer,
       is_a_param, param_made_read_only, state_shrunk_in_place]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("make_bad", BAD, ids=lambda f: f.__name__)
def test_a_bad_tensor_anywhere_in_the_split_is_refused_and_nothing_is_written(
        n_threads, position, make_bad):
    params, grads, opt = build(n_threads)
    opt.step(grads)                     # the grads' addresses are known from now on
    error, message = make_bad(params, grads, opt, position)
    before = snapshot(params, opt)
    steps = opt._engine.get_tensor_steps()
    with pytest.raises(error, match=message):
        opt.step(grads)
    assert snapshot(params, opt) == before
    assert opt._engine.get_tensor_steps() == steps


@pytest.mark.parametrize("n_threads", [1, 2])
def test_new_grad_arrays_every_step_equal_the_spec(n_threads):
    params, _, opt = build(n_threads)
    start = [p.copy() for p in params]
    rng = np.random.default_rng(2)
    history = []
    for _ in range(3):
        grads = [rng.standard_normal(WIDTH).astype(np.float32) for _ in range(N_TENSORS)]
        history.append(grads)
        opt.step(grads)
    for got, want in zip(params, spec_after(start, history)):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_an_equal_dtype_that_is_another_object_is_accepted(n_threads):
    params, grads, opt = build(n_threads)
    start = [p.copy() for p in params]
    other = np.dtype(np.float32, metadata={"unit": "none"})     # == float32, not the same object
    assert other == np.float32 and other is not params[0].dtype
    grads[N_TENSORS - 1] = grads[N_TENSORS - 1].astype(other)
    opt.step(grads)
    for got, want in zip(params, spec_after(start, [grads])):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_none_grads_in_every_share_skip_their_tensors(n_threads):
    params, grads, opt = build(n_threads)
    start = [p.copy() for p in params]
    for k in POSITIONS:
        grads[k] = None
    opt.step(grads)
    for k, (got, want) in enumerate(zip(params, spec_after(start, [grads]))):
        assert got.tobytes() == want.tobytes()
        assert (got.tobytes() == start[k].tobytes()) == (k in POSITIONS)


def test_grads_that_overlap_each_other_are_accepted():
    # Grads are only read: two may share memory (one a view of another).
    params, grads, opt = build(2)
    start = [p.copy() for p in params]
    grads[1] = grads[0]
    opt.step(grads)
    for got, want in zip(params, spec_after(start, [grads])):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("make_bad", BAD, ids=lambda f: f.__name__)
def test_validate_raises_what_a_step_raises(make_bad):
    params, grads, opt = build(2)
    error, message = make_bad(params, grads, opt, N_TENSORS - 1)
    with pytest.raises(error, match=message):
        opt._engine.validate(grads, opt.param_groups)


# Grads given as addresses: the entry the torch optimizer uses for tensors that are not
# NumPy arrays. The caller vouches for dtype, size and lifetime; overlap is still refused.

def addresses_of(grads):
    return np.array([0 if g is None else g.ctypes.data for g in grads], dtype=np.uintp)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_grads_given_as_addresses_step_as_arrays_do(n_threads):
    params, grads, opt = build(n_threads)
    start = [p.copy() for p in params]
    grads[3] = None
    for _ in range(2):
        assert opt._engine.step_addresses(addresses_of(grads), opt.param_groups, n_threads)
    for got, want in zip(params, spec_after(start, [grads, grads])):
        assert got.tobytes() == want.tobytes()
    assert opt._engine.get_tensor_steps()[3] == 0
    assert opt._engine.get_tensor_steps()[4] == 2


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("position", POSITIONS)
def test_an_address_inside_a_state_buffer_is_refused_and_nothing_is_written(
        n_threads, position):
    params, grads, opt = build(n_threads)
    table = addresses_of(grads)
    opt._engine.step_addresses(table, opt.param_groups, n_threads)
    table[position] = opt.state[0]["square_avg"].ctypes.data + 4 * (WIDTH // 2)
    before = snapshot(params, opt)
    with pytest.raises(ValueError, match=rf"grads\[{position}\] shares memory"):
        opt._engine.step_addresses(table, opt.param_groups, n_threads)
    assert snapshot(params, opt) == before


@pytest.mark.parametrize("table", [np.zeros(N_TENSORS - 1, np.uintp),
                                   np.zeros((N_TENSORS, 1), np.uintp)])
def test_an_address_table_of_the_wrong_shape_is_refused(table):
    params, grads, opt = build(1)
    with pytest.raises(ValueError, match="addresses must be 1-D"):
        opt._engine.step_addresses(table, opt.param_groups)


def test_a_dtype_object_accepted_once_cannot_be_impersonated_later():
    # The C checks remember the dtype object last accepted for a grad; another dtype must
    # never pass for it, even one created after the first was dropped by its owner.
    params, grads, opt = build(2)
    odd = np.dtype(np.float32, metadata={"tag": 1})
    grads[5] = grads[5].astype(odd)
    opt.step(grads)
    del odd
    grads[5] = None
    for attempt in range(50):
        wrong = np.dtype(np.float64, metadata={"tag": attempt})
        grads[5] = np.zeros(WIDTH, wrong)
        before = snapshot(params, opt)
        with pytest.raises(TypeError, match=r"grads\[5\]"):
            opt.step(grads)
        assert snapshot(params, opt) == before
