"""rmsprop_step_rows: lazy row steps of a (rows, width) table.

Bit-exact against rmsprop_c.reference.rmsprop_step_rows over an options grid drawn from the
options registry x duplicate modes x dtypes x thread counts (sizes large enough that two
threads really split the rows); equal to the dense step when every row is listed once; rows
not listed stay byte-identical; every bad input raises naming the argument, writing nothing;
and the "sequential" mode with the tf1 flavor matches a NumPy transcription of TensorFlow's
sparse RMSProp kernels.
"""

import itertools

import numpy as np
import pytest

import rmsprop_c
from rmsprop_c import _kernels, reference
from rmsprop_c._options import OPTIONS
from rmsprop_c._rowgrad import RowGrad
from rmsprop_c.flavors import FLAVORS

from conftest import STATE_NAMES, snapshot

rmsprop_step_rows = _kernels.rmsprop_step_rows

DTYPES = (np.float32, np.float64)
MODES = ("sum", "sequential", "error")
N_STEPS = 3
# Large enough that n_threads=2 splits the rows: 1200 listings x 16 columns > 2 x 2048.
TABLE_ROWS, WIDTH, LISTED = 3000, 16, 1200


def registry_option_sets():
    """Defaults; each option at each of its other test values; everything on; and a fixed
    sample of random combinations of the registry's test values."""
    defaults = {option.name: option.test_values[0] for option in OPTIONS}
    yield dict(defaults)
    for option in OPTIONS:
        for value in option.test_values[1:]:
            options = dict(defaults, **{option.name: value})
            if option.name in ("nesterov", "lr_in_momentum"):
                options["momentum"] = 0.9               # so the option changes something
            yield options
    yield {option.name: option.test_values[-1] for option in OPTIONS}
    rng = np.random.default_rng(2024)
    for _ in range(12):
        yield {option.name: option.test_values[rng.integers(len(option.test_values))]
               for option in OPTIONS}


OPTION_SETS = list(registry_option_sets())


def split(options):
    """(kernel options, initial value of square_avg)."""
    options = dict(options)
    return options, options.pop("initial_accumulator_value")


def make_table(rng, dtype, rows=TABLE_ROWS, width=WIDTH, initial_square_avg=0.0):
    param = rng.standard_normal((rows, width)).astype(dtype)
    state = {
        "square_avg": np.full((rows, width), initial_square_avg, dtype=dtype)
        + rng.random((rows, width)).astype(dtype) * dtype(0.01),
        "momentum_buffer": (rng.standard_normal((rows, width)) * 0.01).astype(dtype),
        "grad_avg": (rng.standard_normal((rows, width)) * 0.01).astype(dtype),
        "max_square_avg": (rng.random((rows, width)) * 0.01).astype(dtype),
    }
    return param, state


def make_indices(rng, n, rows, unique, index_dtype=np.int64):
    """n indices into `rows`; unless unique, about 10% repeat earlier ones, one row 5 times."""
    if unique:
        return rng.choice(rows, n, replace=False).astype(index_dtype)
    if rows < n:
        return rng.integers(rows, size=n).astype(index_dtype)
    distinct = rng.choice(rows, n - n // 10, replace=False)
    repeats = rng.choice(distinct, n // 10 - 4)
    indices = np.concatenate([distinct, repeats, np.repeat(distinct[:1], 4)])
    rng.shuffle(indices)
    return indices.astype(index_dtype)


def make_grad_rows(rng, n, width, dtype):
    grad = rng.standard_normal((n, width)) * np.exp(rng.uniform(-4, 2, (n, width)))
    grad[rng.random((n, width)) < 0.05] = 0.0
    return grad.astype(dtype)


def copy_state(state):
    return {name: buffer.copy() for name, buffer in state.items()}


def run_rows(step_function, param, state, batches, options, duplicates, **extra):
    for step, (indices, grad_rows) in enumerate(batches, start=1):
        step_function(param, indices, grad_rows, state["square_avg"], step=step,
                      momentum_buffer=state["momentum_buffer"], grad_avg=state["grad_avg"],
                      max_square_avg=state["max_square_avg"], duplicates=duplicates,
                      **options, **extra)


def assert_bit_equal(param, state, expected_param, expected_state, context):
    assert param.tobytes() == expected_param.tobytes(), f"param differs: {context}"
    for name in STATE_NAMES:
        assert state[name].tobytes() == expected_state[name].tobytes(), \
            f"{name} differs: {context}"


def check_against_reference(options, dtype, duplicates, thread_counts, seed,
                            rows=TABLE_ROWS, width=WIDTH, listed=LISTED):
    rng = np.random.default_rng(seed)
    options, initial = split(options)
    param, state = make_table(rng, dtype, rows, width, initial)
    batches = []
    for step in range(N_STEPS):
        index_dtype = (np.int32, np.int64)[step % 2]
        indices = make_indices(rng, listed, rows, duplicates == "error", index_dtype)
        if step == 1:                                # a view with a negative stride
            indices = np.ascontiguousarray(indices[::-1])[::-1]
        if step == 2:                                # strided and byte-swapped
            indices = np.repeat(indices.astype(indices.dtype.newbyteorder()), 2)[::2]
        batches.append((indices, make_grad_rows(rng, listed, width, dtype)))
    expected_param, expected_state = param.copy(), copy_state(state)
    run_rows(reference.rmsprop_step_rows, expected_param, expected_state, batches, options,
             duplicates)
    assert expected_param.tobytes() != param.tobytes()
    for n_threads in thread_counts:
        got_param, got_state = param.copy(), copy_state(state)
        run_rows(rmsprop_step_rows, got_param, got_state, batches, options, duplicates,
                 n_threads=n_threads)
        assert_bit_equal(got_param, got_state, expected_param, expected_state,
                         f"{options}, {dtype.__name__}, duplicates={duplicates}, "
                         f"n_threads={n_threads}")


@pytest.mark.parametrize("duplicates", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_registry_grid_matches_reference_for_every_thread_count(dtype, duplicates):
    for index, options in enumerate(OPTION_SETS):
        check_against_reference(options, dtype, duplicates, (1, 2), seed=index)


@pytest.mark.parametrize("simd", _kernels.simd_targets_supported())
def test_every_simd_target(simd, restore_simd):
    _kernels.set_simd_target(simd)
    for index, options in enumerate(OPTION_SETS[::3]):
        for dtype, duplicates in itertools.product(DTYPES, ("sum", "sequential")):
            # width 37: vector bodies and scalar tails inside every row
            check_against_reference(options, dtype, duplicates, (1,), seed=100 + index,
                                    rows=300, width=37, listed=120)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_rows_wider_and_narrower_than_a_vector(dtype):
    for width in (1, 3, 8, 129):
        check_against_reference(OPTION_SETS[-1], dtype, "sum", (1, 2), seed=width,
                                rows=500, width=width, listed=300)


@pytest.mark.parametrize("duplicates", MODES)
def test_tall_tables_and_a_single_row_table(duplicates):
    # Row numbers of 17 bits (the grouping sorts them in more than one pass), and 0 bits.
    check_against_reference(OPTION_SETS[-1], np.float32, duplicates, (1, 2), seed=77,
                            rows=70_001, width=2, listed=6000)
    if duplicates != "error":
        check_against_reference(OPTION_SETS[-1], np.float64, duplicates, (1, 2), seed=78,
                                rows=1, width=5, listed=7)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_row_listed_once_equals_the_dense_step(dtype, n_threads):
    for index, options in enumerate(OPTION_SETS[::2]):
        rng = np.random.default_rng(500 + index)
        options, initial = split(options)
        param, state = make_table(rng, dtype, 700, 24, initial)
        dense_param, dense_state = param.copy(), copy_state(state)
        for step in range(1, N_STEPS + 1):
            grad = make_grad_rows(rng, 700, 24, dtype)
            order = rng.permutation(700)
            rmsprop_c.rmsprop_step(dense_param, grad, dense_state["square_avg"], step=step,
                                   momentum_buffer=dense_state["momentum_buffer"],
                                   grad_avg=dense_state["grad_avg"],
                                   max_square_avg=dense_state["max_square_avg"], **options)
            rmsprop_step_rows(param, order, grad[order], state["square_avg"], step=step,
                              momentum_buffer=state["momentum_buffer"],
                              grad_avg=state["grad_avg"],
                              max_square_avg=state["max_square_avg"], n_threads=n_threads,
                              duplicates="error", **options)
        assert_bit_equal(param, state, dense_param, dense_state, options)


@pytest.mark.parametrize("duplicates", ["sum", "sequential"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_rows_not_listed_stay_byte_identical(duplicates, n_threads):
    rng = np.random.default_rng(11)
    param, state = make_table(rng, np.float32)
    param[5] = np.nan                       # a NaN payload must survive untouched rows too
    before = {"param": param.copy(), **copy_state(state)}
    indices = make_indices(rng, LISTED, TABLE_ROWS, unique=False)
    indices = indices[indices != 5]
    options = {option.name: option.test_values[-1] for option in OPTIONS}
    options, _ = split(options)
    rmsprop_step_rows(param, indices, make_grad_rows(rng, len(indices), WIDTH, np.float32),
                      state["square_avg"], momentum_buffer=state["momentum_buffer"],
                      grad_avg=state["grad_avg"], max_square_avg=state["max_square_avg"],
                      duplicates=duplicates, n_threads=n_threads, **options)
    listed = np.zeros(TABLE_ROWS, dtype=bool)
    listed[indices] = True
    after = {"param": param, **state}
    for name, buffer in after.items():
        assert buffer[~listed].tobytes() == before[name][~listed].tobytes(), name
        assert (buffer[listed] != before[name][listed]).any(), name


def test_sum_adds_repeated_rows_in_order_of_appearance():
    # float32 rounding makes the order visible: (1 + big) - big = 0, (-big + big) + 1 = 1.
    big = np.float32(2.0**25)
    grad_rows = np.array([[1.0], [big], [-big]], dtype=np.float32)
    indices = np.array([0, 0, 0])
    summed = (grad_rows[0] + grad_rows[1]) + grad_rows[2]
    assert summed[0] != (grad_rows[2, 0] + grad_rows[1, 0]) + grad_rows[0, 0]
    param, square_avg = np.zeros((2, 1), np.float32), np.zeros((2, 1), np.float32)
    expected_param, expected_square_avg = param[:1].copy(), square_avg[:1].copy()
    rmsprop_c.rmsprop_step(expected_param, summed[None], expected_square_avg, lr=0.5,
                           alpha=0.5, eps=1e-8)
    rmsprop_step_rows(param, indices, grad_rows, square_avg, lr=0.5, alpha=0.5, eps=1e-8)
    assert param[:1].tobytes() == expected_param.tobytes()
    assert square_avg[:1].tobytes() == expected_square_avg.tobytes()
    assert param[1].tobytes() == np.zeros(1, np.float32).tobytes()


def test_sequential_steps_a_repeated_row_once_per_listing():
    param, square_avg = np.ones((3, 4)), np.zeros((3, 4))
    grad_rows = np.array([[0.5] * 4, [-0.25] * 4])
    expected_param, expected_square_avg = param[1:2].copy(), square_avg[1:2].copy()
    for row in grad_rows:
        reference.rmsprop_step(expected_param, row[None], expected_square_avg, lr=0.1,
                               alpha=0.9, eps=1e-8)
    rmsprop_step_rows(param, np.array([1, 1], np.int32), grad_rows, square_avg, lr=0.1,
                      alpha=0.9, eps=1e-8, duplicates="sequential")
    assert param[1:2].tobytes() == expected_param.tobytes()
    assert square_avg[1:2].tobytes() == expected_square_avg.tobytes()


def test_no_indices_change_nothing():
    param, square_avg = np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32)
    rmsprop_step_rows(param, np.array([], np.int64), np.zeros((0, 3), np.float32), square_avg,
                      lr=0.1, alpha=0.9, eps=1e-8)
    assert (param == 1).all() and (square_avg == 0).all()


def test_row_grad_names_indices_and_rows():
    indices, rows = np.array([2, 0]), np.ones((2, 3))
    grad = RowGrad(indices, rows)
    assert grad.indices is indices and grad.rows is rows
    assert RowGrad(indices=indices, rows=rows) == (indices, rows)
    with pytest.raises(AttributeError):
        grad.indices = None


# ---------------------------------------------------------------------------------------
# Errors: each names the argument, and nothing is written.

def error_case_buffers():
    rng = np.random.default_rng(3)
    param, state = make_table(rng, np.float64, 10, 4)
    return dict(param=param, indices=np.array([1, 3, 5]),
                grad_rows=rng.standard_normal((3, 4)), square_avg=state["square_avg"],
                momentum_buffer=state["momentum_buffer"], grad_avg=state["grad_avg"],
                max_square_avg=state["max_square_avg"])


def broken(name, value=None, **changes):
    """The call's arguments with `name` replaced by value(buffers), plus `changes`."""
    def arguments(buffers):
        call = dict(buffers, lr=0.01, alpha=0.9, eps=1e-8)
        call.update(changes)
        if value is not None:
            call[name] = value(buffers)
        return call
    arguments.label = name + "".join(f"-{k}" for k in changes)
    return arguments


ERROR_CASES = [
    (broken("param", lambda b: b["param"].ravel()), ValueError, "param must be 2-D"),
    (broken("param", lambda b: b["param"].astype(np.float16)), TypeError, "param"),
    (broken("param", lambda b: np.asfortranarray(b["param"])), ValueError, "param"),
    (broken("param", lambda b: b["param"].tolist()), TypeError, "param"),
    (broken("indices", lambda b: b["indices"].astype(np.float64)), TypeError, "indices"),
    (broken("indices", lambda b: b["indices"].astype(np.uint32)), TypeError, "indices"),
    (broken("indices", lambda b: b["indices"][:, None]), ValueError, "indices"),
    (broken("indices", lambda b: [1, 3, 5]), TypeError, "indices"),
    (broken("indices", lambda b: np.array([1, 3])), ValueError, "grad_rows"),
    (broken("indices", lambda b: np.array([1, -1, 5])), IndexError, r"indices\[1\] = -1"),
    (broken("indices", lambda b: np.array([1, 3, 10], np.int32)), IndexError,
     r"indices\[2\] = 10 .* 10 rows"),
    (broken("grad_rows", lambda b: b["grad_rows"][:, :3].copy()), ValueError, "grad_rows"),
    (broken("grad_rows", lambda b: b["grad_rows"].astype(np.float32)), TypeError,
     "grad_rows"),
    (broken("grad_rows", lambda b: np.asfortranarray(b["grad_rows"])), ValueError,
     "grad_rows"),
    (broken("grad_rows", lambda b: b["param"][:3]), ValueError, "share memory"),
    (broken("square_avg", lambda b: b["square_avg"][:5]), ValueError, "square_avg"),
    (broken("square_avg", lambda b: b["square_avg"].astype(np.float32)), TypeError,
     "square_avg"),
    (broken("momentum_buffer", lambda b: b["param"]), ValueError, "share memory"),
    (broken("max_square_avg", lambda b: b["max_square_avg"][:, :2].copy()), ValueError,
     "max_square_avg"),
    (broken("momentum_buffer", lambda b: None, momentum=0.9), ValueError, "momentum_buffer"),
    (broken("grad_avg", lambda b: None, centered=True), ValueError, "grad_avg"),
    (broken("max_square_avg", lambda b: None, amsgrad=True), ValueError, "max_square_avg"),
    (broken("lr", lambda b: -0.1), ValueError, "lr"),
    (broken("alpha", lambda b: 1.5), ValueError, "alpha"),
    (broken("eps", lambda b: float("nan")), ValueError, "eps"),
    (broken("centered", lambda b: 1), TypeError, "centered"),
    (broken("step", lambda b: 0), ValueError, "step"),
    (broken("n_threads", lambda b: 0), ValueError, "n_threads"),
    (broken("duplicates", lambda b: "mean"), ValueError, "duplicates"),
    (broken("duplicates", lambda b: None), TypeError, "duplicates"),
    (broken("duplicates", lambda b: "error", indices=np.array([4, 3, 4])), ValueError,
     r"indices\[2\] repeats row 4 \(first listed at indices\[0\]\)"),
]


@pytest.mark.parametrize("arguments, error, message", [
    pytest.param(*case, id=f"{case[0].label}-{case[1].__name__}") for case in ERROR_CASES])
def test_bad_input_names_the_argument_and_writes_nothing(arguments, error, message):
    buffers = error_case_buffers()
    call = arguments(buffers)
    before = snapshot(*(buffers[name] for name in ("param",) + STATE_NAMES))
    with pytest.raises(error, match=message):
        rmsprop_step_rows(call.pop("param"), call.pop("indices"), call.pop("grad_rows"),
                          call.pop("square_avg"), **call)
    assert snapshot(*(buffers[name] for name in ("param",) + STATE_NAMES)) == before


def test_lr_overflowing_float32_is_refused():
    param, square_avg = np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="lr = .* overflows float32"):
        rmsprop_step_rows(param, np.array([0]), np.ones((1, 2), np.float32), square_avg,
                          lr=1e39, alpha=0.9, eps=1e-8)
    assert (param == 1).all() and (square_avg == 0).all()


def test_read_only_param_is_refused():
    buffers = error_case_buffers()
    buffers["param"].flags.writeable = False
    with pytest.raises(ValueError, match="param is not writeable"):
        rmsprop_step_rows(buffers["param"], buffers["indices"], buffers["grad_rows"],
                          buffers["square_avg"], lr=0.1, alpha=0.9, eps=1e-8)


def test_read_only_grad_rows_and_indices_are_fine():
    buffers = error_case_buffers()
    buffers["grad_rows"].flags.writeable = False
    buffers["indices"].flags.writeable = False
    rmsprop_step_rows(buffers["param"], buffers["indices"], buffers["grad_rows"],
                      buffers["square_avg"], lr=0.1, alpha=0.9, eps=1e-8)


# ---------------------------------------------------------------------------------------
# TensorFlow: a NumPy transcription of SparseApplyRMSPropOp and SparseApplyCenteredRMSPropOp
# (tensorflow/core/kernels/training_ops.cc). Per listing i, in order, on row r = indices[i]:
#   ms[r]  = ms[r] * rho + g * g * (1 - rho)            (1 - rho computed in the dtype)
#   mg[r]  = mg[r] * rho + g * (1 - rho)                (centered only)
#   denom  = ms[r] + eps           or  ms[r] + eps - mg[r]**2 (centered: no clamp at 0)
#   mom[r] = mom[r] * momentum + rsqrt(denom) * lr * g
#   var[r] -= mom[r]
# Ours: ms*alpha + (1-alpha)*g*g with 1-alpha rounded from double, and lr * (g / sqrt(...)):
# the same rule rounded differently. Measured after 5 steps: square_avg within 3 ULPs; params
# and momentum within about 700 ULPs relative on elements near 0; hence the tolerances below.

def tf_sparse_apply_rmsprop(var, ms, mom, mg, indices, grad, lr, rho, momentum, epsilon,
                            centered):
    dtype = var.dtype.type
    lr, rho, momentum, epsilon = dtype(lr), dtype(rho), dtype(momentum), dtype(epsilon)
    one_minus_rho = dtype(1) - rho
    with np.errstate(invalid="ignore"):
        for i, row in enumerate(indices):
            g = grad[i]
            ms[row] = ms[row] * rho + g * g * one_minus_rho
            if centered:
                mg[row] = mg[row] * rho + g * one_minus_rho
                denom = ms[row] + epsilon - mg[row] * mg[row]
            else:
                denom = ms[row] + epsilon
            mom[row] = mom[row] * momentum + (dtype(1) / np.sqrt(denom)) * lr * g
            var[row] = var[row] - mom[row]


TF1 = FLAVORS["tf1"].defaults
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_sequential_tf1_matches_tensorflow_sparse_rmsprop(dtype, momentum, centered):
    rng = np.random.default_rng(41)
    rows, width, listed = 400, 8, 300
    var = rng.standard_normal((rows, width)).astype(dtype)
    ms = np.full((rows, width), TF1["initial_accumulator_value"], dtype=dtype)
    mom, mg = np.zeros_like(var), np.zeros_like(var)
    ours = {"param": var.copy(), "square_avg": ms.copy(), "momentum_buffer": mom.copy(),
            "grad_avg": mg.copy()}
    lr = 0.01
    for step in range(1, 6):
        indices = make_indices(rng, listed, rows, unique=False)
        grad = (rng.standard_normal((listed, width)) * 0.5).astype(dtype)
        tf_sparse_apply_rmsprop(var, ms, mom, mg, indices, grad, lr, TF1["alpha"], momentum,
                                TF1["eps"], centered)
        # TF keeps a momentum slot always; with momentum 0 ours steps without one.
        rmsprop_step_rows(ours["param"], indices, grad, ours["square_avg"], lr=lr,
                          alpha=TF1["alpha"], eps=TF1["eps"], eps_in_sqrt=TF1["eps_in_sqrt"],
                          lr_in_momentum=TF1["lr_in_momentum"], momentum=momentum,
                          centered=centered, step=step, duplicates="sequential",
                          momentum_buffer=ours["momentum_buffer"] if momentum else None,
                          grad_avg=ours["grad_avg"] if centered else None, n_threads=2)
    np.testing.assert_allclose(ours["param"], var, **TOLERANCE[dtype])
    np.testing.assert_allclose(ours["square_avg"], ms, **TOLERANCE[dtype])
    if momentum:
        np.testing.assert_allclose(ours["momentum_buffer"], mom, **TOLERANCE[dtype])
    if centered:
        np.testing.assert_allclose(ours["grad_avg"], mg, **TOLERANCE[dtype])
    assert (ours["param"] != var).any() or dtype is np.float64   # rounding does differ


def test_centered_clamp_is_where_tensorflow_differs():
    # ms - mg**2 < 0 (reachable by rounding, or from a restored state): TensorFlow takes the
    # rsqrt of a negative number (NaN); ours clamps the variance at 0 first.
    var = np.zeros((2, 1), np.float32)
    ms, mg = np.full((2, 1), 0.01, np.float32), np.full((2, 1), 1.0, np.float32)
    mom = np.zeros_like(var)
    ours_var, ours_ms, ours_mg = var.copy(), ms.copy(), mg.copy()
    grad, indices = np.array([[0.5]], np.float32), np.array([1])
    tf_sparse_apply_rmsprop(var, ms, mom, mg, indices, grad, 0.01, 0.9, 0.0, 1e-10, True)
    rmsprop_step_rows(ours_var, indices, grad, ours_ms, grad_avg=ours_mg, lr=0.01, alpha=0.9,
                      eps=1e-10, eps_in_sqrt=True, centered=True)
    assert np.isnan(var[1, 0])
    assert np.isfinite(ours_var[1, 0]) and ours_var[1, 0] != 0
    assert ours_var[0, 0] == 0 and var[0, 0] == 0


@pytest.mark.slow
def test_quick_rows_bench_reports_every_case():
    from rmsprop_c import _bench_rows

    result = _bench_rows.run(quick=True)
    json_text = __import__("json").dumps(result)             # plain data, no NumPy scalars
    assert "NaN" not in json_text
    fractions = sorted({case["touched_fraction"] for case in result["cases"]})
    assert fractions == list(_bench_rows.FRACTIONS)
    for case in result["cases"]:
        assert case["listed_rows"] == int(result["table"]["rows"] * case["touched_fraction"])
        assert case["distinct_rows"] < case["listed_rows"]     # repeats were drawn
        assert set(case["seconds"]) == {"rmsprop_step_rows", "same_traffic_step_rows",
                                        "dense rmsprop_step", "numpy gather/step/scatter"}
        assert all(seconds > 0 for seconds in case["seconds"].values())
    assert [case["n_threads"] for case in result["optimizer"]] == \
        [case["n_threads"] for case in result["cases"]
         if case["touched_fraction"] == _bench_rows.FRACTIONS[0]]
    for case in result["optimizer"]:
        assert set(case["seconds"]) == {
            "RMSprop.step table rows + MLP", "RMSprop.step table dense + MLP",
            "RMSprop.step MLP alone", "rmsprop_step_rows table alone"}
        assert all(seconds > 0 for seconds in case["seconds"].values())
        assert case["dense_step_over_mixed_step"] > 0
