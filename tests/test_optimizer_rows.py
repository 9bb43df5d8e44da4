"""RMSprop.step with row grads (RowGrad) next to dense and None grads.

Bit-exact against slow.RMSprop (the reference, tensor by tensor) over the registry's option
sets x duplicate modes x dtypes x thread counts, with steps mixing dense, row and None grads
(so tensors' step counts differ and bias correction follows each one's); the global norm
and skip_nonfinite over row grads; every bad row grad refused naming it with nothing written
in any tensor; step counts; checkpoints after row steps.
"""

import numpy as np
import pytest

import rmsprop_c as rc
from rmsprop_c import reference, slow
from rmsprop_c._rowgrad import RowGrad

from conftest import snapshot
from test_rows import OPTION_SETS, make_indices

DTYPES = (np.float32, np.float64)
MODES = ("sum", "sequential", "error")
# A table large enough that two threads split its listings (1200 x 16 > 2 x 2048).
TABLE, SMALL_TABLE, VECTOR, MATRIX = (3000, 16), (400, 8), 5000, (30, 40)
LISTED = 1200


def make_params(rng, dtype):
    shapes = (TABLE, VECTOR, SMALL_TABLE, MATRIX)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def row_grad(rng, shape, n, dtype, unique):
    if n >= 50 and shape[0] >= n:
        indices = make_indices(rng, n, shape[0], unique)
    elif unique:
        indices = rng.choice(shape[0], n := min(n, shape[0]), replace=False)
    else:
        indices = rng.integers(shape[0], size=n)
    return RowGrad(indices, rng.standard_normal((n, shape[1])).astype(dtype))


def make_steps(rng, dtype, unique):
    """Three steps' grads: row, dense and None grads mixed, a table once given a dense grad,
    and the small table skipped once (its step count falls behind)."""
    dense = lambda shape: rng.standard_normal(shape).astype(dtype)     # noqa: E731
    return [
        [row_grad(rng, TABLE, LISTED, dtype, unique), dense(VECTOR),
         row_grad(rng, SMALL_TABLE, 300, dtype, unique), dense(MATRIX)],
        [row_grad(rng, TABLE, LISTED, dtype, unique), None, None, dense(MATRIX)],
        [dense(TABLE), dense(VECTOR),
         row_grad(rng, SMALL_TABLE, 50, dtype, unique), row_grad(rng, MATRIX, 20, dtype,
                                                                 unique)],
    ]


def optimizer_pair(params, options, **settings):
    """The fast optimizer on `params`, and slow.RMSprop on copies of them."""
    fast = rc.RMSprop(params, **options, **settings)
    copies = [param.copy() for param in params]
    settings = {key: value for key, value in settings.items() if key != "n_threads"}
    return fast, slow.RMSprop(copies, **options, **settings)


def state_bytes(optimizer):
    return [param.tobytes() for param in optimizer.params] + [
        array.tobytes() for buffers in optimizer.state for _, array in sorted(buffers.items())]


def assert_same(fast, expected, context):
    assert fast._engine.get_tensor_steps() == expected._engine.get_tensor_steps(), context
    got, want = state_bytes(fast), state_bytes(expected)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a == b, f"{context}: buffer {k} differs"


def run_case(options, dtype, duplicates, n_threads, seed, **settings):
    rng = np.random.default_rng(seed)
    params = make_params(rng, dtype)
    fast, expected = optimizer_pair(params, options, duplicates=duplicates,
                                    n_threads=n_threads, **settings)
    for grads in make_steps(rng, dtype, unique=duplicates == "error"):
        assert fast.step(grads) == expected.step(grads)
        assert fast.last_grad_norm == expected.last_grad_norm
    assert_same(fast, expected, f"{options} {dtype.__name__} {duplicates} {n_threads}")
    return fast


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("duplicates", MODES)
def test_mixed_steps_match_the_reference_for_every_option_and_thread_count(dtype, duplicates):
    for seed, options in enumerate(OPTION_SETS):
        for n_threads in (1, 2):
            run_case(options, dtype, duplicates, n_threads, seed)


@pytest.mark.parametrize("duplicates", ("sum", "sequential"))
@pytest.mark.parametrize("norm_type", (2.0, float("inf")))
@pytest.mark.parametrize("n_threads", (1, 2, None))
def test_clip_by_global_norm_reads_the_applied_rows(duplicates, norm_type, n_threads):
    options = dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5, grad_scale=0.5,
                   clip_value=1.5)
    threshold = 3.0 if norm_type == 2 else 1.0
    for dtype in DTYPES:
        fast = run_case(options, dtype, duplicates, n_threads, 7, max_grad_norm=threshold,
                        norm_type=norm_type)
        assert fast.last_grad_norm > threshold      # the clip really scaled the step


def test_the_norm_of_summed_rows_is_the_dense_norm_of_their_scatter():
    rng = np.random.default_rng(1)
    table = np.zeros(TABLE, np.float32)
    grad = row_grad(rng, TABLE, LISTED, np.float32, unique=False)
    optimizer = rc.RMSprop([table], lr=0.01, max_grad_norm=1e9)
    optimizer.step([grad])
    rows, summed = reference.sum_duplicate_rows(grad.indices, grad.rows)
    assert optimizer.last_grad_norm == reference.global_grad_norm([summed])
    dense = np.zeros(TABLE, np.float32)
    np.add.at(dense, grad.indices, grad.rows)
    assert optimizer.last_grad_norm == pytest.approx(reference.global_grad_norm([dense]),
                                                     rel=1e-5)


@pytest.mark.parametrize("bad", (np.inf, np.nan))
@pytest.mark.parametrize("duplicates", ("sum", "sequential"))
@pytest.mark.parametrize("n_threads", (1, 2))
def test_skip_nonfinite_sees_a_bad_row_and_writes_nothing(bad, duplicates, n_threads):
    rng = np.random.default_rng(3)
    params = make_params(rng, np.float32)
    fast, expected = optimizer_pair(params, dict(lr=0.01), skip_nonfinite=True,
                                    duplicates=duplicates, n_threads=n_threads)
    grads = make_steps(rng, np.float32, unique=False)[0]
    grads[2].rows[17, 3] = bad
    before = state_bytes(fast)
    assert fast.step(grads) is False and expected.step(grads) is False
    assert state_bytes(fast) == before
    assert fast.skipped_steps == 1 and fast._engine.get_tensor_steps() == [0, 0, 0, 0]
    assert np.isnan(fast.last_grad_norm) or np.isinf(fast.last_grad_norm)
    grads[2].rows[17, 3] = 0.0
    assert fast.step(grads) is True and expected.step(grads) is True
    assert_same(fast, expected, "after the skipped step")


def test_every_row_listed_once_equals_the_dense_step():
    rng = np.random.default_rng(4)
    for dtype in DTYPES:
        table = rng.standard_normal(TABLE).astype(dtype)
        copy = table.copy()
        options = dict(lr=0.01, momentum=0.9, centered=True, bias_correction=True)
        by_rows, dense = rc.RMSprop([table], **options), rc.RMSprop([copy], **options)
        for _ in range(3):
            grad = rng.standard_normal(TABLE).astype(dtype)
            order = rng.permutation(TABLE[0])
            by_rows.step([RowGrad(order, grad[order])])
            dense.step([grad])
        assert state_bytes(by_rows) == state_bytes(dense)


def test_rows_not_listed_stay_byte_identical_and_steps_count_per_tensor():
    rng = np.random.default_rng(5)
    table, vector = rng.standard_normal(TABLE), rng.standard_normal(VECTOR)
    optimizer = rc.RMSprop([table, vector], lr=0.1, momentum=0.9)
    before = table.copy()
    listed = np.array([3, 2999, 3, 100])
    optimizer.step([RowGrad(listed, np.ones((4, TABLE[1]))), None])
    optimizer.step([RowGrad(listed[:0], np.ones((0, TABLE[1]))), None])
    untouched = np.setdiff1d(np.arange(TABLE[0]), listed)
    assert table[untouched].tobytes() == before[untouched].tobytes()
    assert not np.array_equal(table[listed], before[listed])
    assert optimizer.state[0]["square_avg"][untouched].tobytes() == \
        np.zeros((len(untouched), TABLE[1])).tobytes()
    assert optimizer._engine.get_tensor_steps() == [2, 0]      # an empty RowGrad counts
    assert optimizer.steps == [2]


def error_cases():
    rows = lambda n, width=SMALL_TABLE[1], dtype=np.float32: \
        np.ones((n, width), dtype)                                      # noqa: E731
    yield "out of range", RowGrad(np.array([0, 400]), rows(2)), IndexError, \
        r"grads\[2\]\.indices\[1\] = 400 is out of range for params\[2\] with 400 rows"
    yield "negative", RowGrad(np.array([-1, 3], np.int32), rows(2)), IndexError, \
        r"grads\[2\]\.indices\[0\] = -1"
    yield "width", RowGrad(np.array([1, 2]), rows(2, 9)), ValueError, \
        r"grads\[2\]\.rows has shape \(2, 9\); expected"
    yield "count", RowGrad(np.array([1, 2]), rows(3)), ValueError, r"grads\[2\]\.rows has"
    yield "dtype", RowGrad(np.array([1, 2]), rows(2, dtype=np.float64)), TypeError, \
        r"grads\[2\]\.rows has dtype float64, but params\[2\] has dtype float32"
    yield "index dtype", RowGrad(np.array([1.0, 2.0]), rows(2)), TypeError, \
        r"grads\[2\]\.indices has dtype float64"
    yield "index shape", RowGrad(np.array([[1, 2]]), rows(2)), ValueError, \
        r"grads\[2\]\.indices must be 1-D"
    yield "index list", RowGrad([1, 2], rows(2)), TypeError, \
        r"grads\[2\]\.indices must be a numpy.ndarray"
    yield "rows list", RowGrad(np.array([1, 2]), [[1.0] * 8] * 2), TypeError, \
        r"grads\[2\]\.rows must be a numpy.ndarray"
    yield "non-contiguous", RowGrad(np.array([1, 2]), rows(2, 16)[:, ::2]), ValueError, \
        r"grads\[2\]\.rows is not C-contiguous"
    yield "repeat with error mode", RowGrad(np.array([5, 1, 5]), rows(3)), ValueError, \
        r"grads\[2\]\.indices\[2\] repeats row 5 \(first listed at grads\[2\]\.indices\[0\]\)"


@pytest.mark.parametrize("case", list(error_cases()), ids=lambda case: case[0])
@pytest.mark.parametrize("optimizer_class", (rc.RMSprop, slow.RMSprop))
def test_a_bad_row_grad_is_named_and_nothing_changes_anywhere(case, optimizer_class):
    _, bad, error, message = case
    rng = np.random.default_rng(6)
    params = make_params(rng, np.float32)
    optimizer = optimizer_class(params, lr=0.1, momentum=0.9, duplicates="error")
    grads = make_steps(rng, np.float32, unique=True)[0]
    optimizer.step(grads)
    before, steps = state_bytes(optimizer), optimizer._engine.get_tensor_steps()
    grads[2] = bad
    with pytest.raises(error, match=message):
        optimizer.step(grads)
    assert state_bytes(optimizer) == before
    assert optimizer._engine.get_tensor_steps() == steps


def test_row_grads_for_params_that_are_not_tables_or_share_memory_are_refused():
    rng = np.random.default_rng(8)
    params = make_params(rng, np.float32)
    optimizer = rc.RMSprop(params, lr=0.1)
    before = state_bytes(optimizer)
    grads = make_steps(rng, np.float32, unique=True)[0]
    grads[1] = RowGrad(np.array([0]), np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match=r"grads\[1\] is a RowGrad, but params\[1\] has "
                                         r"shape \(5000,\); row grads need a 2-D"):
        optimizer.step(grads)
    grads = make_steps(rng, np.float32, unique=True)[0]
    grads[0] = RowGrad(np.array([0, 1]), params[0][:2])
    with pytest.raises(ValueError, match=r"grads\[0\]\.rows shares memory with a parameter"):
        optimizer.step(grads)
    assert state_bytes(optimizer) == before


def test_duplicates_option_is_checked_and_may_change_between_steps():
    with pytest.raises(ValueError, match="duplicates must be one of"):
        rc.RMSprop([np.zeros((3, 2))], lr=0.1, duplicates="mean")
    table = np.zeros((3, 2))
    optimizer = rc.RMSprop([table], lr=0.1)
    with pytest.raises(ValueError, match="duplicates must be one of"):
        optimizer.duplicates = None
    optimizer.duplicates = "error"
    with pytest.raises(ValueError, match="repeats row 1"):
        optimizer.step([RowGrad(np.array([1, 1]), np.ones((2, 2)))])
    optimizer.duplicates = "sequential"
    assert optimizer.step([RowGrad(np.array([1, 1]), np.ones((2, 2)))])
    expected, square_avg = np.zeros((3, 2)), np.zeros((3, 2))
    reference.rmsprop_step_rows(expected, np.array([1, 1]), np.ones((2, 2)), square_avg,
                                lr=0.1, alpha=0.99, eps=1e-8, duplicates="sequential")
    assert table.tobytes() == expected.tobytes()


def test_checkpoint_round_trip_after_row_steps(tmp_path):
    rng = np.random.default_rng(9)
    options = dict(lr=0.01, momentum=0.9, centered=True, bias_correction=True)
    params = make_params(rng, np.float32)
    optimizer = rc.RMSprop(params, **options)
    steps = [make_steps(rng, np.float32, unique=False) for _ in range(2)]
    for grads in steps[0]:
        grads = [grad if grad is not None else np.zeros_like(param)
                 for grad, param in zip(grads, params)]        # equal counts per tensor
        optimizer.step(grads)
    optimizer.save(tmp_path / "rows.npz")
    restored_params = [param.copy() for param in params]
    restored = rc.RMSprop(restored_params, **options)
    restored.load(tmp_path / "rows.npz")
    from_dict = rc.RMSprop([param.copy() for param in params], **options)
    from_dict.load_state_dict(optimizer.state_dict())
    assert restored._engine.get_tensor_steps() == [3, 3, 3, 3]
    for grads in steps[1]:
        for each in (optimizer, restored, from_dict):
            each.step(grads)
    assert state_bytes(restored) == state_bytes(optimizer) == state_bytes(from_dict)


def test_a_row_step_of_a_read_only_grad_and_int32_indices_is_fine():
    rng = np.random.default_rng(10)
    table = rng.standard_normal(SMALL_TABLE).astype(np.float32)
    copy, square_avg = table.copy(), np.zeros_like(table)
    indices = np.array([5, 7, 5], np.int32)[::-1]            # strided view
    rows = rng.standard_normal((3, SMALL_TABLE[1])).astype(np.float32)
    rows.flags.writeable = False
    rc.RMSprop([table], lr=0.1).step((RowGrad(indices, rows),))
    reference.rmsprop_step_rows(copy, indices, rows, square_avg, lr=0.1, alpha=0.99,
                                eps=1e-8)
    assert table.tobytes() == copy.tobytes()
    assert snapshot(rows) == snapshot(rows.copy())


@pytest.mark.parametrize("n_threads", (1, 2))
def test_tables_of_both_dtypes_in_two_groups_match_the_reference(n_threads):
    rng = np.random.default_rng(11)
    wide = rng.standard_normal(TABLE)
    narrow = rng.standard_normal(TABLE).astype(np.float32)
    vector = rng.standard_normal(VECTOR).astype(np.float32)
    groups = lambda params: [                                            # noqa: E731
        {"params": params[:2], "momentum": 0.9},
        {"params": params[2:], "lr": 0.05, "bias_correction": True}]
    params = [wide, narrow, vector]
    copies = [param.copy() for param in params]
    fast = rc.RMSprop(groups(params), lr=0.01, momentum=0.5, n_threads=n_threads)
    expected = slow.RMSprop(groups(copies), lr=0.01, momentum=0.5)
    for step in range(3):
        grads = [row_grad(rng, TABLE, LISTED, np.float64, unique=False),
                 row_grad(rng, TABLE, LISTED, np.float32, unique=False) if step != 1 else None,
                 rng.standard_normal(VECTOR).astype(np.float32)]
        assert fast.step(grads) and expected.step(grads)
    assert_same(fast, expected, "two dtypes")
    assert fast._engine.get_tensor_steps() == [3, 2, 3]
