"""Gradient preprocessing: grad_scale, clip_value, clip by global norm, skip_nonfinite.

Exactness: kernels equal rmsprop_c.reference bit for bit (every option set here, thread
counts 1 and 2, every SIMD target), and global_grad_norm equals reference.global_grad_norm
bit for bit whatever the thread count. Peers (torch clip_grad_norm_ + RMSprop, Keras clipnorm /
clipvalue / global_clipnorm) agree within the tolerances stated at each test.
"""

import math

import numpy as np
import pytest

import rmsprop_c as rc
from rmsprop_c import _kernels, reference
from rmsprop_c.slow import RMSprop as SlowRMSprop

from conftest import STATE_NAMES, make_grad, make_tensor_state

SIMD_TARGETS = _kernels.simd_targets_supported()
DTYPES = (np.float32, np.float64)
PREPROCESSING = [
    dict(grad_scale=0.3),
    dict(clip_value=0.5),
    dict(grad_scale=1 / 1024, clip_value=0.002),
    dict(grad_scale=7.0, clip_value=3.0),
]
# Existing options the preprocessing must compose with (every kernel variant family).
BASES = [
    dict(),
    dict(maximize=True, weight_decay=0.01),
    dict(momentum=0.9, nesterov=True, centered=True, amsgrad=True),
    dict(momentum=0.9, lr_in_momentum=True, eps_in_sqrt=True, bias_correction=True,
         weight_decay=0.02, decoupled_weight_decay=True),
]


def same_float(a, b):
    return np.float64(a).tobytes() == np.float64(b).tobytes()


def run_functional(step_function, size, dtype, options, seed, **extra):
    rng = np.random.default_rng(seed)
    param, state = make_tensor_state(rng, size, dtype)
    grads = [make_grad(rng, size, dtype) for _ in range(3)]
    if size > 10:
        grads[1][[3, 9]] = [np.nan, -np.inf]
    originals = [grad.tobytes() for grad in grads]
    for step, grad in enumerate(grads, start=1):
        step_function(param, grad, state["square_avg"], lr=0.01, alpha=0.9, eps=1e-8,
                      step=step, momentum_buffer=state["momentum_buffer"],
                      grad_avg=state["grad_avg"], max_square_avg=state["max_square_avg"],
                      **options, **extra)
    assert [grad.tobytes() for grad in grads] == originals, "a grad was written"
    return [param.tobytes()] + [state[name].tobytes() for name in STATE_NAMES]


@pytest.mark.parametrize("simd", SIMD_TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_functional_preprocessing_equals_the_reference(simd, dtype, restore_simd):
    _kernels.set_simd_target(simd)
    for p_index, preprocessing in enumerate(PREPROCESSING):
        for b_index, base in enumerate(BASES):
            options = {**base, **preprocessing}
            for size in (0, 7, 1023, 20_001):
                expected = run_functional(reference.rmsprop_step, size, dtype, options,
                                          seed=p_index * 10 + b_index)
                for n_threads in (1, 2):
                    got = run_functional(rc.rmsprop_step, size, dtype, options,
                                         seed=p_index * 10 + b_index, n_threads=n_threads)
                    assert got == expected, (options, size, n_threads)


def test_defaults_change_no_bit():
    # grad_scale=1 and no clip are exact no-ops: the same bits as not passing them.
    for dtype in DTYPES:
        plain = run_functional(rc.rmsprop_step, 5000, dtype, dict(momentum=0.9), seed=3)
        explicit = run_functional(rc.rmsprop_step, 5000, dtype,
                                  dict(momentum=0.9, grad_scale=1.0, clip_value=math.inf),
                                  seed=3)
        assert plain == explicit


# ---------------------------------------------------------------------------------------
# global_grad_norm

NORM_SIZES = [0, 1, 7, 1023, 1024, 1025, 3 * 1024 + 5, 100_003]


@pytest.mark.parametrize("simd", SIMD_TARGETS)
@pytest.mark.parametrize("norm_type", [2, math.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_global_grad_norm_equals_the_reference_for_every_thread_count(
        simd, norm_type, dtype, restore_simd):
    _kernels.set_simd_target(simd)
    rng = np.random.default_rng(5)
    grads = [make_grad(rng, size, dtype) for size in NORM_SIZES]
    for options in (dict(), dict(grad_scale=0.3), dict(grad_scale=0.3, clip_value=0.5)):
        expected = reference.global_grad_norm(grads, norm_type, **options)
        for n_threads in (1, 2, 3):
            got = rc.global_grad_norm(grads, norm_type, n_threads=n_threads, **options)
            assert same_float(got, expected), (options, n_threads, got, expected)
    for size in NORM_SIZES:      # one tensor at a time: every tail length
        single = [grads[NORM_SIZES.index(size)]]
        assert same_float(rc.global_grad_norm(single, norm_type, n_threads=2),
                          reference.global_grad_norm(single, norm_type))


def test_global_grad_norm_mixed_dtypes_and_close_to_the_exact_norm():
    rng = np.random.default_rng(6)
    grads = [make_grad(rng, 5000, np.float32), make_grad(rng, 3001, np.float64)]
    got = rc.global_grad_norm(grads)
    assert same_float(got, reference.global_grad_norm(grads))
    exact = math.sqrt(math.fsum(float(x) ** 2 for g in grads for x in g.ravel()))
    assert abs(got - exact) <= 1e-13 * exact
    assert rc.global_grad_norm(grads, math.inf) == max(float(np.abs(g).max()) for g in grads)


@pytest.mark.parametrize("norm_type", [2, math.inf])
def test_global_grad_norm_of_nonfinite_grads(norm_type):
    grad = np.ones(3000, np.float32)
    grad[2500] = np.inf
    assert rc.global_grad_norm([grad], norm_type) == math.inf
    assert rc.global_grad_norm([grad], norm_type, clip_value=2.0) == \
        reference.global_grad_norm([grad], norm_type, clip_value=2.0)
    grad[10] = np.nan
    assert math.isnan(rc.global_grad_norm([grad], norm_type, n_threads=2))
    assert math.isnan(reference.global_grad_norm([grad], norm_type))
    assert rc.global_grad_norm([], norm_type) == 0.0


@pytest.mark.parametrize("simd", SIMD_TARGETS)
def test_nonfinite_is_seen_wherever_it_lies(simd, restore_simd):
    # 13 chunks and a tail: whole groups of chunks, single chunks and the tail each read it.
    _kernels.set_simd_target(simd)
    size = 13 * 1024 + 5
    for position in (3 * 1024 + 100, 9 * 1024 + 7, 12 * 1024 + 1023, size - 1):
        for value in (np.inf, np.nan, 1e38):
            grad = np.ones(size, np.float32)
            grad[position] = value
            scale = 10.0 if value == 1e38 else 1.0      # 1e39 overflows float32
            expected = reference.global_grad_norm([grad], grad_scale=scale)
            for n_threads in (1, 2, 3):
                got = rc.global_grad_norm([grad], grad_scale=scale, n_threads=n_threads)
                assert same_float(got, expected), (position, value, n_threads)
            opt = rc.RMSprop([np.zeros(size, np.float32)], lr=0.1, grad_scale=scale,
                             skip_nonfinite=True)
            assert opt.step([grad]) is False, (position, value)


@pytest.mark.parametrize("simd", SIMD_TARGETS)
@pytest.mark.parametrize("base", BASES, ids=lambda b: ",".join(b) or "plain")
def test_clip_by_norm_composes_with_every_kernel_family(simd, base, restore_simd):
    # No grad_scale nor clip_value: the kernels apply the coefficient themselves. Steps with
    # NaN (coefficient 1) and inf (norm inf, coefficient 0) grads included.
    _kernels.set_simd_target(simd)
    rng = np.random.default_rng(9)
    sizes = [9000, 5]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    fast = [rc.RMSprop([p.copy() for p in params], lr=0.01, max_grad_norm=1.0, n_threads=n,
                       **base) for n in (1, 2)]
    slow = SlowRMSprop([p.copy() for p in params], lr=0.01, max_grad_norm=1.0, **base)
    for step in range(4):
        grads = [make_grad(rng, n, np.float32) * 4 for n in sizes]
        if step == 1:
            grads[0][[3, 5000]] = [np.nan, -2.0]
        if step == 2:
            grads[0][7000] = -np.inf
        for opt in fast + [slow]:
            opt.step(grads)
        for opt in fast:
            assert same_float(opt.last_grad_norm, slow.last_grad_norm), step
            for got, want in zip(opt.params + [s[k] for s in opt.state for k in sorted(s)],
                                 slow.params + [s[k] for s in slow.state for k in sorted(s)]):
                assert got.tobytes() == want.tobytes(), (step, opt.n_threads)


# ---------------------------------------------------------------------------------------
# The optimizer: clip by global norm, per-group preprocessing, skip_nonfinite

def make_pair(dtype, seed, max_grad_norm=1.0, norm_type=2, **options):
    rng = np.random.default_rng(seed)
    sizes = [3000, 17, 70_001, 1024]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    groups = [
        {"params": params[:2], "grad_scale": 0.5, "clip_value": 1.5},
        {"params": params[2:], "momentum": 0.9, "centered": True},
    ]
    twins = [[p.copy() for p in params] for _ in range(2)]

    def build(cls, arrays, **extra):
        g = [{**groups[0], "params": arrays[:2]}, {**groups[1], "params": arrays[2:]}]
        return cls(g, lr=0.01, max_grad_norm=max_grad_norm, norm_type=norm_type,
                   **options, **extra)

    return rng, sizes, build, twins


@pytest.mark.parametrize("simd", SIMD_TARGETS)
@pytest.mark.parametrize("norm_type", [2, math.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_optimizer_clip_by_norm_equals_the_reference_optimizer(simd, norm_type, dtype,
                                                               restore_simd):
    _kernels.set_simd_target(simd)
    rng, sizes, build, (fast_params, slow_params) = make_pair(dtype, 7, norm_type=norm_type)
    fast = [build(rc.RMSprop, [p.copy() for p in fast_params], n_threads=n) for n in (1, 2)]
    slow = build(SlowRMSprop, slow_params)
    assert fast[0].last_grad_norm is None
    for step in range(4):
        grads = [make_grad(rng, n, dtype) * 4 for n in sizes]
        if step == 2:
            grads[1] = None                  # a tensor without a grad this step
        originals = [g.tobytes() if g is not None else None for g in grads]
        for opt in fast + [slow]:
            assert opt.step(grads) is True
        assert [g.tobytes() if g is not None else None for g in grads] == originals
        assert same_float(fast[0].last_grad_norm, slow.last_grad_norm)
        assert same_float(fast[1].last_grad_norm, slow.last_grad_norm)
        for opt in fast:
            for got, want in zip(opt.params, slow.params):
                assert got.tobytes() == want.tobytes(), (step, opt.n_threads)
            for got, want in zip(opt.state, slow.state):
                for key in want:
                    assert got[key].tobytes() == want[key].tobytes(), (step, key)


def test_last_grad_norm_is_the_norm_of_the_preprocessed_grads():
    rng = np.random.default_rng(8)
    params = [np.zeros(4000, np.float32), np.zeros(10, np.float32)]
    opt = rc.RMSprop(params, lr=0.1, grad_scale=0.25, clip_value=0.4, max_grad_norm=1e9)
    grads = [make_grad(rng, 4000, np.float32), make_grad(rng, 10, np.float32)]
    opt.step(grads)
    assert same_float(opt.last_grad_norm,
                      rc.global_grad_norm(grads, grad_scale=0.25, clip_value=0.4))
    # The threshold is far above the norm: the coefficient is 1, as without clipping.
    plain = [np.zeros(4000, np.float32), np.zeros(10, np.float32)]
    rc.RMSprop(plain, lr=0.1, grad_scale=0.25, clip_value=0.4).step(grads)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params, plain))


def test_skip_nonfinite_sees_inf_even_when_clip_value_would_hide_it():
    params = [np.zeros(5000, np.float32)]
    opt = rc.RMSprop(params, lr=0.1, clip_value=1.0, skip_nonfinite=True)
    grad = np.ones(5000, np.float32)
    grad[4321] = np.inf
    assert opt.step([grad]) is False
    assert opt.skipped_steps == 1 and not params[0].any()
    assert opt.last_grad_norm is not None


def test_skip_nonfinite_sees_grad_scale_overflow():
    params = [np.zeros(100, np.float32)]
    opt = rc.RMSprop(params, lr=0.1, grad_scale=10.0, skip_nonfinite=True)
    grad = np.full(100, 1e38, np.float32)           # finite, but 1e39 overflows float32
    assert opt.step([grad]) is False
    assert opt.step([np.ones(100, np.float32)]) is True
    assert opt.skipped_steps == 1


def test_max_grad_norm_may_change_between_steps_and_is_checked():
    opt = rc.RMSprop([np.zeros(10)], lr=0.1)
    opt.max_grad_norm = 0.5
    opt.step([np.ones(10)])
    assert same_float(opt.last_grad_norm, math.sqrt(10))
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        opt.max_grad_norm = 0.0
    with pytest.raises(ValueError, match="norm_type must be 2 or inf"):
        opt.norm_type = 1


def test_last_grad_norm_is_none_when_the_step_measures_none():
    for cls in (rc.RMSprop, SlowRMSprop):
        opt = cls([np.zeros(10)], lr=0.1, max_grad_norm=1.0)
        opt.step([np.ones(10)])
        assert same_float(opt.last_grad_norm, math.sqrt(10))
        opt.max_grad_norm = None
        opt.step([np.ones(10)])
        assert opt.last_grad_norm is None


def test_grad_scale_and_clip_value_checkpoint_round_trip(tmp_path):
    params = [np.ones(10, np.float32)]
    opt = rc.RMSprop([{"params": params, "clip_value": 0.5}], lr=0.1, grad_scale=0.5)
    opt.step([np.full(10, 3.0, np.float32)])
    path = tmp_path / "state.npz"
    opt.save(path)
    other = rc.RMSprop([np.ones(10, np.float32)], lr=0.1)
    other.load(path)
    assert other.param_groups[0]["clip_value"] == 0.5
    assert other.param_groups[0]["grad_scale"] == 0.5
    assert rc.RMSprop([np.ones(2)]).param_groups[0]["clip_value"] == math.inf


# ---------------------------------------------------------------------------------------
# Errors: named, and raised before anything is written

@pytest.mark.parametrize("name, value, error, message", [
    ("grad_scale", 0.0, ValueError, "grad_scale must be > 0"),
    ("grad_scale", -1.0, ValueError, "grad_scale must be > 0"),
    ("grad_scale", math.nan, ValueError, "grad_scale must be finite"),
    ("grad_scale", "2", TypeError, "grad_scale must be a real number"),
    ("clip_value", 0.0, ValueError, "clip_value must be > 0"),
    ("clip_value", -0.5, ValueError, "clip_value must be > 0"),
    ("clip_value", math.nan, ValueError, "clip_value must be finite"),
    ("max_grad_norm", 0.0, ValueError, "max_grad_norm must be > 0"),
    ("max_grad_norm", math.inf, ValueError, "max_grad_norm must be finite"),
    ("max_grad_norm", "1", TypeError, "max_grad_norm must be a real number"),
    ("norm_type", 1, ValueError, "norm_type must be 2 or inf"),
    ("norm_type", "l2", TypeError, "norm_type must be a real number"),
])
def test_bad_values_are_refused_naming_the_argument(name, value, error, message):
    param = np.ones(5, np.float32)
    with pytest.raises(error, match=message):
        rc.RMSprop([param], lr=0.1, **{name: value})
    if name in ("grad_scale", "clip_value"):
        with pytest.raises(error, match=rf"param_groups\[0\]\['{name}'\]"):
            rc.RMSprop([{"params": [param], name: value}], lr=0.1)
        square_avg = np.zeros(5, np.float32)
        with pytest.raises(error, match=name):
            rc.rmsprop_step(param, np.ones(5, np.float32), square_avg, lr=0.1, alpha=0.9,
                            eps=1e-8, **{name: value})
        with pytest.raises(error, match=name):
            rc.global_grad_norm([param], **{name: value})
    assert (param == 1).all()


def test_grad_scale_that_float32_cannot_hold_is_refused():
    param, square_avg = np.ones(5, np.float32), np.zeros(5, np.float32)
    for scale in (1e39, 1e-50):
        with pytest.raises(ValueError, match="grad_scale.*float32"):
            rc.rmsprop_step(param, np.ones(5, np.float32), square_avg, lr=0.1, alpha=0.9,
                            eps=1e-8, grad_scale=scale)
    assert (param == 1).all() and not square_avg.any()


def test_global_grad_norm_refuses_bad_grads_naming_them():
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        rc.global_grad_norm([np.ones(3), np.ones(3, np.int32)])
    with pytest.raises(TypeError, match="grads must be a list"):
        rc.global_grad_norm(np.ones(3))


# ---------------------------------------------------------------------------------------
# Peers

@pytest.mark.parametrize("norm_type", [2, math.inf])
def test_matches_torch_clip_grad_norm_then_rmsprop(norm_type):
    # torch: grad.mul_(scale), clip_grad_value_, clip_grad_norm_, then torch.optim.RMSprop,
    # all in float64. Only the norm's summation order differs (torch reduces per tensor with
    # foreach norms), so the norms agree to 1e-13 relative and the params to 1e-11.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    sizes = [300, 50, 1200]
    params = [rng.standard_normal(n) for n in sizes]
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    torch_opt = torch.optim.RMSprop(torch_params, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9)
    opt = rc.RMSprop(params, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9, grad_scale=0.5,
                     clip_value=2.0, max_grad_norm=1.0, norm_type=norm_type)
    for _ in range(5):
        grads = [make_grad(rng, n, np.float64) * 3 for n in sizes]
        for tensor, grad in zip(torch_params, grads):
            tensor.grad = torch.tensor(grad.copy())
        with torch.no_grad():
            for tensor in torch_params:
                tensor.grad.mul_(0.5)
        torch.nn.utils.clip_grad_value_(torch_params, 2.0)
        total = float(torch.nn.utils.clip_grad_norm_(torch_params, 1.0, norm_type=norm_type))
        torch_opt.step()
        opt.step(grads)
        assert abs(opt.last_grad_norm - total) <= 1e-13 * total
        for ours, theirs in zip(params, torch_params):
            np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-11, atol=1e-14)


def keras_global_clipnorm(grads, clip_norm):
    """Keras 3 (keras/optimizers/base_optimizer.py, clip_by_global_norm), in NumPy."""
    norm = np.sqrt(np.sum(np.stack([np.sum(np.square(g)) for g in grads])))
    scale = clip_norm * np.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    return [g * scale for g in grads]


def keras_clipnorm(grad, clip_norm):
    """Keras 3 BaseOptimizer._clip_by_norm (per tensor), in NumPy."""
    l2sum = np.sum(np.square(grad))
    l2norm = np.sqrt(l2sum) if l2sum > 0 else l2sum
    return grad * clip_norm / np.maximum(l2norm, clip_norm)


@pytest.mark.parametrize("mode", ["global_clipnorm", "clipnorm", "clipvalue"])
def test_matches_keras_clipping(mode):
    # Ours clipped inside the step against ours fed Keras-clipped grads (flavor="keras",
    # float64). clipvalue is the same clamp: bit-identical. The norm clips differ only in
    # the coefficient: max / (norm + 1e-6) (clip_grad_norm_'s) against Keras'
    # max / max(norm, max): 1e-6 / norm relative. Each step moves a param by at most about
    # lr, so after 5 steps they agree to 5 * lr * 1e-6 = 5e-8: atol 1e-7.
    # clipnorm is per tensor in Keras: one tensor per optimizer makes it the global norm.
    rng = np.random.default_rng(12)
    sizes = [700, 90] if mode != "clipnorm" else [700]
    params = [rng.standard_normal(n) for n in sizes]
    twins = [p.copy() for p in params]
    limit = 0.8 if mode == "clipvalue" else 1.5
    options = dict(clip_value=limit) if mode == "clipvalue" else dict(max_grad_norm=limit)
    ours = rc.RMSprop(params, flavor="keras", lr=0.01, momentum=0.5, **options)
    keras_like = rc.RMSprop(twins, flavor="keras", lr=0.01, momentum=0.5)
    for _ in range(5):
        grads = [make_grad(rng, n, np.float64) * 2 for n in sizes]
        ours.step(grads)
        if mode == "clipvalue":
            clipped = [np.clip(g, -limit, limit) for g in grads]
        elif mode == "clipnorm":
            clipped = [keras_clipnorm(g, limit) for g in grads]
        else:
            clipped = keras_global_clipnorm(grads, limit)
        keras_like.step(clipped)
        if mode == "clipvalue":
            assert all(a.tobytes() == b.tobytes() for a, b in zip(params, twins))
        else:
            for a, b in zip(params, twins):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
