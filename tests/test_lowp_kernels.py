"""Low precision: the spec's helpers, and rmsprop_step equal to the spec bit for bit for
every dtype family, rounding, seed, option set, thread count and SIMD target.

Families: float32, bfloat16 or float16 params, each with float32/bfloat16/float16 grads and
state; float32 masters writing a bfloat16 or float16 param copy. The rounding and seed values come from the options registry.
"""

import itertools
import math

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

import rmsprop_c  # noqa: E402
from rmsprop_c import _kernels, reference  # noqa: E402
from rmsprop_c._options import OPTIMIZER_OPTIONS  # noqa: E402

from test_kernels import covering_option_sets, option_sets  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
STATE_NAMES = ("square_avg", "momentum_buffer", "grad_avg", "max_square_avg")
LOWP_OPTIONS = {o.name: o for o in OPTIMIZER_OPTIONS if o.name in ("rounding", "seed")}
ROUNDINGS = LOWP_OPTIONS["rounding"].test_values
SEEDS = LOWP_OPTIONS["seed"].test_values
# The (rounding, seed) pairs every grid below runs: each value of both appears once.
KEY_GRID = list(zip(ROUNDINGS, SEEDS))


def families():
    """(param, grad, state, copy) dtypes of every low-precision combination."""
    for param, grad, state in itertools.product((F32, BF16, F16), (F32, BF16, F16),
                                                (F32, BF16, F16)):
        for copy in ((None, BF16, F16) if param == F32 else (None,)):
            if (param, grad, state, copy) != (F32, F32, F32, None):
                yield param, grad, state, copy


FAMILIES = list(families())


def family_id(family):
    return "-".join("none" if d is None else d.name for d in family)


def make_case(rng, size, family):
    param_dtype, grad_dtype, state_dtype, copy_dtype = family
    param = rng.standard_normal(size).astype(np.float32).astype(param_dtype)
    state = {name: np.zeros(size, state_dtype) for name in STATE_NAMES}
    copy = None if copy_dtype is None else np.zeros(size, copy_dtype)
    grads = []
    for _ in range(4):
        grad = rng.standard_normal(size) * np.exp(rng.uniform(-4, 2, size))
        grad[rng.random(size) < 0.1] = 0.0
        grads.append(grad.astype(np.float32).astype(grad_dtype))
    return param, state, copy, grads


def run(step_function, case, options, rounding, seed, **extra):
    param, state, copy, grads = case
    param = param.copy()
    state = {name: buffer.copy() for name, buffer in state.items()}
    copy = None if copy is None else copy.copy()
    for step, grad in enumerate(grads, start=1):
        step_function(param, grad, state["square_avg"], step=step,
                      momentum_buffer=state["momentum_buffer"], grad_avg=state["grad_avg"],
                      max_square_avg=state["max_square_avg"], rounding=rounding, seed=seed,
                      tensor_index=5, param_copy=copy, **options, **extra)
    return [param.tobytes()] + [state[n].tobytes() for n in STATE_NAMES] + (
        [] if copy is None else [copy.tobytes()])


def check(family, options, size, rounding, seed, thread_counts, rng_seed):
    case = make_case(np.random.default_rng(rng_seed), size, family)
    expected = run(reference.rmsprop_step, case, options, rounding, seed)
    for n_threads in thread_counts:
        got = run(rmsprop_c.rmsprop_step, case, options, rounding, seed, n_threads=n_threads)
        differs = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
        assert not differs, (f"buffers {differs} differ: {family_id(family)}, {options}, "
                             f"size={size}, rounding={rounding}, seed={seed}, "
                             f"n_threads={n_threads}")


# ---------------------------------------------------------------------------------------
# The spec's helpers

def interesting_float32_bits(rng):
    edges = [0, 1, 0x00800000, 0x33000000, 0x33800000, 0x387FFFFF, 0x38800000, 0x477FE000,
             0x477FF000, 0x47800000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0x7F800000,
             0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x3F808000, 0x3F818000]
    near = [(e + d) & 0xFFFFFFFF for e in edges for d in range(-600, 600)]
    bits = np.concatenate([rng.integers(0, 1 << 32, 400_000, dtype=np.uint64),
                           np.array(near, dtype=np.uint64)]).astype(np.uint32)
    return np.concatenate([bits, bits | np.uint32(0x80000000)])


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_round_nearest_equals_the_library_casts(dtype):
    x = interesting_float32_bits(np.random.default_rng(0)).view(np.float32)
    ours = reference.round_nearest(x, dtype).view(np.uint16)
    with np.errstate(all="ignore"):
        theirs = x.astype(dtype).view(np.uint16)
    finite = ~np.isnan(x)
    assert np.array_equal(ours[finite], theirs[finite])
    nan = reference.widen(ours[~finite].view(dtype))       # NaN stays NaN with its sign
    assert np.isnan(nan).all()
    assert np.array_equal(np.signbit(nan), np.signbit(x[~finite]))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_widening_is_exact_for_every_16_bit_pattern(dtype):
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    wide = reference.widen(every)
    assert wide.dtype == np.float32
    with np.errstate(all="ignore"):
        expected = every.astype(np.float32)
    finite = ~np.isnan(expected)
    assert np.array_equal(wide.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    assert np.isnan(wide[~finite]).all()
    # widening then rounding to nearest gives every pattern back (NaNs aside)
    back = reference.round_nearest(wide, dtype).view(np.uint16)
    assert np.array_equal(back[finite], every.view(np.uint16)[finite])


def test_stochastic_rounding_picks_a_neighbour_without_bias():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(200_000) * 3).astype(np.float32)
    bits = reference.random_bits(reference.stream_key(3, 1, 0, 0), 0, x.size)
    rounded = reference.widen(reference.round_stochastic(x, bits, BF16))
    down = reference.widen(reference.round_nearest(
        (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32), BF16))
    up = np.nextafter(down.astype(BF16), np.copysign(np.inf, x).astype(BF16)).astype(np.float32)
    assert ((rounded == down) | (rounded == up)).all()
    # expected value: the error averages out (it would be ~half a ulp with truncation)
    relative = (rounded.astype(np.float64) - x) / np.abs(x)
    assert abs(relative.mean()) < 2e-5
    assert abs(relative).mean() > 1e-4        # it did round


def test_stochastic_rounding_of_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, 3.3895314e38,
                  np.float32(3.4028235e38)], dtype=np.float32)
    all_ones = np.full(x.size, 0xFFFF, dtype=np.uint32)
    zeros = np.zeros(x.size, dtype=np.uint32)
    high = reference.widen(reference.round_stochastic(x, all_ones, BF16))
    low = reference.widen(reference.round_stochastic(x, zeros, BF16))
    assert high[:4].tobytes() == x[:4].tobytes() == low[:4].tobytes()   # exact: never move
    assert np.isnan(high[4:6]).all() and np.signbit(high[5]) and not np.signbit(high[4])
    assert high[6] == 1.0 and low[6] == 1.0
    assert high[7] == 3.3895314e38 and low[7] == 3.3895314e38           # largest bfloat16
    assert high[8] == np.inf and low[8] == 3.3895314e38                  # above it: inf or max


def test_the_generator_is_pinned():
    # The bits are part of the spec: a change here changes every stochastic result.
    key = reference.stream_key(0, 1, 0, 0)
    assert key == 0x45CEC29CD9A24E4B
    assert reference.random_bits(key, 0, 4).tolist() == [26414, 61342, 37379, 60397]
    assert reference.random_bits(reference.stream_key(12345, 7, 3, 2), (1 << 32) - 2,
                                 4).tolist() == [11714, 26755, 49075, 40004]
    assert len({reference.stream_key(s, t, i, b) for s in (0, 1) for t in (1, 2)
                for i in (0, 1) for b in range(5)}) == 40
    far = reference.random_bits(key, (1 << 32) - 2, 4)       # across the 2**32 boundary
    assert far.dtype == np.uint32 and (far < 1 << 16).all()
    assert reference.random_bits(key, 5, 3).tolist() == reference.random_bits(key, 0, 8)[5:].tolist()


# ---------------------------------------------------------------------------------------
# Kernels against the spec

def test_the_grid_covers_every_low_precision_value():
    # A new optimizer-wide option needs its grid (and a line here); the norm options have
    # theirs in test_preprocessing.py, state_dtype in test_lowp_optimizer.py.
    assert {o.name for o in OPTIMIZER_OPTIONS} == {"max_grad_norm", "norm_type", "state_dtype",
                                                   "rounding", "seed"}
    assert set(LOWP_OPTIONS["rounding"].test_values) == set(LOWP_OPTIONS["rounding"].choices)
    covered = {"rounding": {r for r, _ in KEY_GRID}, "seed": {s for _, s in KEY_GRID}}
    for name, option in LOWP_OPTIONS.items():
        assert set(option.test_values) <= covered[name], name
    dtypes = {d for family in FAMILIES for d in family}
    assert {BF16, F16, F32, None} <= dtypes
    assert {family[2] for family in FAMILIES} == {F32, BF16, F16}     # state dtypes


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
@pytest.mark.parametrize("size", [1, 37, 1023])
def test_every_family_on_the_covering_options(family, size):
    for index, options in enumerate(covering_option_sets()):
        options = dict(options, grad_scale=0.5, clip_value=2.0) if index % 3 == 1 else options
        for rounding, seed in KEY_GRID:
            check(family, options, size, rounding, seed, (1, 2, 3), rng_seed=index)


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_large_tensors_across_thread_counts(family):
    options = dict(lr=0.003, alpha=0.95, eps=1e-8, momentum=0.9, centered=True, amsgrad=True)
    for rounding, seed in KEY_GRID:
        check(family, options, 200_003, rounding, seed, (1, 2, 3), rng_seed=7)


def test_the_full_option_grid_rotates_through_the_families():
    for index, options in enumerate(itertools.islice(option_sets(), 0, None, 16)):
        family = FAMILIES[index % len(FAMILIES)]
        check(family, options, 37, ROUNDINGS[index % 2], SEEDS[index // 2 % 2], (1,),
              rng_seed=index)


@pytest.mark.parametrize("simd", _kernels.simd_targets_supported())
def test_every_simd_target(simd, restore_simd):
    _kernels.set_simd_target(simd)
    options = dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9, nesterov=True,
                   weight_decay=0.01, grad_scale=0.25, clip_value=1.0)
    for family in FAMILIES:
        for rounding, seed in KEY_GRID:
            check(family, options, 1031, rounding, seed, (1, 2), rng_seed=3)


# The families with a one-pass loop (src/lowp_fused.hpp); the rest take widened blocks.
FUSED_FAMILIES = [(BF16, BF16, BF16, None), (BF16, F32, BF16, None), (F32, F32, BF16, None),
                  (F32, F32, F32, BF16), (F32, F32, F32, F16)]


def fused_option_sets():
    """Every weight decay mode, momentum placement, nesterov and bias correction, without
    the options that send a tensor to the block runner (centered, amsgrad, grad_scale)."""
    decays = [{}, dict(weight_decay=0.05), dict(weight_decay=0.05, decoupled_weight_decay=True)]
    momenta = [{}] + [dict(momentum=0.9, lr_in_momentum=inside, nesterov=nesterov)
                      for inside in (False, True) for nesterov in (False, True)]
    for index, (decay, momentum, bias) in enumerate(
            itertools.product(decays, momenta, (False, True))):
        yield dict(lr=0.01, alpha=0.9, eps=1e-8, bias_correction=bias, maximize=index % 3 == 1,
                   eps_in_sqrt=index % 4 == 2, **decay, **momentum)


@pytest.mark.parametrize("simd", _kernels.simd_targets_supported())
@pytest.mark.parametrize("family", FUSED_FAMILIES, ids=family_id)
def test_fused_families_in_every_variant(family, simd, restore_simd):
    _kernels.set_simd_target(simd)
    for index, options in enumerate(fused_option_sets()):
        rounding, seed = KEY_GRID[index % len(KEY_GRID)]
        size = (37, 1000, 4099)[index % 3]       # a partial vector alone, and after whole ones
        check(family, options, size, rounding, seed, (1, 3), rng_seed=index)


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_nonfinite_and_overflowing_values_match_the_spec(family):
    rng = np.random.default_rng(11)
    param, state, copy, grads = make_case(rng, 4096, family)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e-40, 0.0],
                        dtype=np.float32)
    with np.errstate(all="ignore"):            # float16 overflows to inf: wanted here
        for grad in grads:
            where = rng.integers(0, grad.size, 64)
            grad[where] = specials[rng.integers(0, specials.size, 64)].astype(grad.dtype)
        param[:8] = specials.astype(param.dtype)
    case = (param, state, copy, grads)
    options = dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9)
    for rounding in ROUNDINGS:
        expected = run(reference.rmsprop_step, case, options, rounding, 1)
        for n_threads in (1, 3):
            assert run(rmsprop_c.rmsprop_step, case, options, rounding, 1,
                       n_threads=n_threads) == expected


def test_stochastic_bits_depend_on_seed_step_and_tensor():
    rng = np.random.default_rng(2)
    param = rng.standard_normal(4096).astype(BF16)
    grad = rng.standard_normal(4096).astype(BF16)

    def stepped(**key):
        p, v = param.copy(), np.zeros(4096, BF16)
        rmsprop_c.rmsprop_step(p, grad, v, lr=1e-3, alpha=0.9, eps=1e-8,
                               rounding="stochastic", **key)
        return p.tobytes()

    base = stepped(seed=0, step=1, tensor_index=0)
    assert base == stepped(seed=0, step=1, tensor_index=0)
    for other in (dict(seed=1, step=1, tensor_index=0), dict(seed=0, step=2, tensor_index=0),
                  dict(seed=0, step=1, tensor_index=1)):
        assert stepped(**other) != base, other


def added_bits(buffer, grad):
    """buffer's bits plus the grad's (its top 16 bits for a 2-byte buffer), wrapping."""
    bits = grad.view(np.uint32 if grad.itemsize == 4 else np.uint16).astype(np.uint32)
    if buffer.itemsize < grad.itemsize:
        bits >>= 16
    kind = np.uint32 if buffer.itemsize == 4 else np.uint16
    return (buffer.view(kind) + bits.astype(kind)).view(buffer.dtype)


@pytest.mark.parametrize("param_dtype, grad_dtype, state_dtype", [
    (BF16, F16, BF16), (F32, BF16, BF16), (BF16, F32, F32), (F16, F16, F32)])
def test_same_traffic_kernels_add_the_grad_bits_to_every_buffer(param_dtype, grad_dtype,
                                                                  state_dtype):
    # The memory yardstick of the low-precision steps: every buffer read and written once.
    size = 5000                         # whole blocks of 1024 and a partial one
    rng = np.random.default_rng(0)
    param = rng.standard_normal(size).astype(param_dtype)
    grad = rng.standard_normal(size).astype(grad_dtype)
    states = {name: rng.standard_normal(size).astype(state_dtype)
              for name in ("square_avg", "momentum_buffer", "grad_avg", "max_square_avg")}
    expected = {name: added_bits(value, grad) for name, value in states.items()}
    expected_param = added_bits(param, grad)
    square_avg, others = states["square_avg"], dict(states)
    del others["square_avg"]
    _kernels.same_traffic_step(param, grad, square_avg, **others)
    assert param.tobytes() == expected_param.tobytes()
    for name, value in states.items():
        assert value.tobytes() == expected[name].tobytes(), name


def test_same_traffic_kernel_writes_the_param_copy_from_the_param_bits():
    size = 3001
    rng = np.random.default_rng(1)
    master, grad = rng.standard_normal(size).astype(F32), rng.standard_normal(size).astype(F32)
    square_avg, copy = np.ones(size, BF16), np.zeros(size, BF16)
    expected_master = added_bits(master, grad)
    _kernels.same_traffic_step(master, grad, square_avg, param_copy=copy)
    assert master.tobytes() == expected_master.tobytes()
    assert np.array_equal(copy.view(np.uint16), (master.view(np.uint32) >> 16).astype(np.uint16))


# ---------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, nothing written

def buffers_of(param_dtype=F32, grad_dtype=F32, state_dtype=F32, copy_dtype=None):
    rng = np.random.default_rng(0)
    buffers = {"param": rng.standard_normal(64).astype(np.float32).astype(param_dtype),
               "grad": rng.standard_normal(64).astype(np.float32).astype(grad_dtype),
               "square_avg": np.ones(64, state_dtype),
               "momentum_buffer": np.ones(64, state_dtype)}
    if copy_dtype is not None:
        buffers["param_copy"] = np.zeros(64, copy_dtype)
    return buffers


@pytest.mark.parametrize("buffers, error, name", [
    (buffers_of(np.float64, BF16, np.float64), TypeError, "param"),
    (buffers_of(F32, np.float64, BF16), TypeError, "grad"),
    (buffers_of(F32, BF16, np.float64), TypeError, "square_avg"),
    (buffers_of(BF16, BF16, BF16, BF16), TypeError, "param_copy"),
    (buffers_of(F32, F32, F32, F32), TypeError, "param_copy"),
    (dict(buffers_of(F32, BF16, BF16), momentum_buffer=np.ones(64, F32)), TypeError,
     "momentum_buffer"),
    (dict(buffers_of(F32, BF16, BF16), param_copy=np.zeros(63, BF16)), ValueError,
     "param_copy"),
    (dict(buffers_of(BF16, BF16, BF16), grad=np.ones(65, BF16)), ValueError, "grad"),
])
def test_bad_low_precision_buffers_are_refused_naming_them(buffers, error, name):
    before = [b.tobytes() for b in buffers.values()]
    with pytest.raises(error, match=name):
        rmsprop_c.rmsprop_step(**buffers, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9)
    assert [b.tobytes() for b in buffers.values()] == before


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_a_missing_square_avg_is_refused(family):
    # square_avg is required on every path; a low-precision step once ran without one
    buffers = buffers_of(*family)
    del buffers["square_avg"]
    before = [b.tobytes() for b in buffers.values()]
    with pytest.raises(TypeError, match="square_avg"):
        rmsprop_c.rmsprop_step(square_avg=None, **buffers, lr=0.01, alpha=0.9, eps=1e-8,
                               momentum=0.9)
    assert [b.tobytes() for b in buffers.values()] == before


@pytest.mark.parametrize("key, value, error", [
    ("rounding", "up", ValueError), ("rounding", 1, TypeError), ("seed", -1, ValueError),
    ("seed", 1 << 64, ValueError), ("seed", 1.5, TypeError), ("tensor_index", -1, ValueError),
])
def test_bad_rounding_options_are_refused_naming_them(key, value, error):
    buffers = buffers_of(BF16, BF16, BF16)
    before = [b.tobytes() for b in buffers.values()]
    with pytest.raises(error, match=key):
        rmsprop_c.rmsprop_step(**buffers, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9,
                               **{key: value})
    assert [b.tobytes() for b in buffers.values()] == before


def test_rounding_is_checked_on_float_buffers_too():
    buffers = buffers_of()
    with pytest.raises(ValueError, match="rounding"):
        rmsprop_c.rmsprop_step(**buffers, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9,
                               rounding="down")
    assert math.isfinite(float(buffers["param"][0]))


@pytest.mark.parametrize("norm_type", [2, math.inf])
def test_global_grad_norm_widens_low_precision_grads(norm_type):
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(n).astype(np.float32).astype(d)
             for n, d in ((5000, BF16), (3, F16), (70_000, F32), (1025, BF16))]
    grads[0][7] = np.float32(3e38).astype(BF16)
    expected = reference.global_grad_norm(grads, norm_type, grad_scale=0.5, clip_value=2.0)
    for n_threads in (1, 2, 3):
        assert rmsprop_c.global_grad_norm(grads, norm_type, grad_scale=0.5, clip_value=2.0,
                                          n_threads=n_threads) == expected
    assert rmsprop_c.global_grad_norm(grads[:1], norm_type) == \
        reference.global_grad_norm([reference.widen(grads[0])], norm_type)


def test_array_valued_rounding_is_refused_naming_it():
    buffers = buffers_of(BF16, BF16, BF16)
    with pytest.raises(TypeError, match="rounding"):
        rmsprop_c.rmsprop_step(**buffers, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9,
                               rounding=np.array(["nearest"]))
