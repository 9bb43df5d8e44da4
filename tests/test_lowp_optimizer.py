"""Low precision through RMSprop: the engine equals the NumPy twin (rmsprop_c.slow) bit for
bit for every family, state_dtype, rounding and seed of the registry; checkpoints round-trip
every family (bfloat16 state stored without pickle); bad combinations are refused naming
the argument, before anything is written."""

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

import rmsprop_c as rc  # noqa: E402
from rmsprop_c import slow  # noqa: E402
from rmsprop_c._options import OPTIMIZER_OPTIONS  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
REGISTRY = {o.name: o for o in OPTIMIZER_OPTIONS}
SIZES = (3000, 17, 70001)

# (param dtypes, grad dtypes, copy dtypes or None) per tensor: a mix in one optimizer.
FAMILIES = {
    "float32 params, low-precision grads": ((F32,) * 3, (BF16, F16, F32), None),
    "bfloat16 params": ((BF16,) * 3, (BF16, BF16, F32), None),
    "float16 params": ((F16, F16, BF16), (F16, F32, BF16), None),
    "float32 masters with copies": ((F32,) * 3, (F32, BF16, F32), (BF16, None, F16)),
    "mixed with float64": ((F32, F64, BF16), (F16, F64, BF16), (BF16, None, None)),
}


def build(cls, family, state_dtype, rounding, seed, **options):
    params_dtypes, _, copy_dtypes = FAMILIES[family]
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(n).astype(np.float32).astype(d)
              for n, d in zip(SIZES, params_dtypes)]
    copies = None if copy_dtypes is None else [
        None if d is None else np.zeros(p.shape, d) for p, d in zip(params, copy_dtypes)]
    opt = cls([{"params": params[:1]}, {"params": params[1:], "lr": 3e-3}], lr=0.01,
              momentum=0.9, centered=True, state_dtype=state_dtype, rounding=rounding,
              seed=seed, param_copies=copies, **options)
    return opt, params, copies


def grads(family, params, k):
    rng = np.random.default_rng(100 + k)
    return [rng.standard_normal(p.shape).astype(np.float32).astype(d)
            for p, d in zip(params, FAMILIES[family][1])]


def everything(opt, params, copies):
    return ([p.tobytes() for p in params]
            + [b.tobytes() for s in opt.state for _, b in sorted(s.items())]
            + [c.tobytes() for c in copies or () if c is not None])


def test_the_grid_covers_every_low_precision_option():
    for name in ("state_dtype", "rounding", "seed"):
        assert REGISTRY[name].test_values, name
    assert set(REGISTRY["state_dtype"].test_values) == {None, *REGISTRY["state_dtype"].choices}
    assert set(REGISTRY["rounding"].test_values) == set(REGISTRY["rounding"].choices)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("state_dtype", REGISTRY["state_dtype"].test_values)
@pytest.mark.parametrize("rounding", REGISTRY["rounding"].test_values)
def test_the_engine_equals_the_numpy_twin(family, state_dtype, rounding):
    for seed in REGISTRY["seed"].test_values:
        for options in ({}, {"max_grad_norm": 0.5, "n_threads": 3}):
            fast, fast_params, fast_copies = build(rc.RMSprop, family, state_dtype, rounding,
                                                   seed, **options)
            twin, twin_params, twin_copies = build(slow.RMSprop, family, state_dtype,
                                                   rounding, seed, **options)
            for k in range(3):
                fast.step(grads(family, fast_params, k))
                twin.step(grads(family, twin_params, k))
            assert everything(fast, fast_params, fast_copies) == \
                everything(twin, twin_params, twin_copies), (family, state_dtype, rounding,
                                                             seed, options)
            assert fast.last_grad_norm == twin.last_grad_norm


def test_state_dtype_sets_the_state_buffers():
    params = [np.zeros(4, F32), np.zeros(4, BF16), np.zeros(4, F64)]
    dtypes = {None: [F32, BF16, F64], "float32": [F32, F32, F64],
              "bfloat16": [BF16, BF16, F64], "float16": [F16, F16, F64]}
    for state_dtype, expected in dtypes.items():
        opt = rc.RMSprop(params, lr=0.1, momentum=0.9, state_dtype=state_dtype)
        assert [s["square_avg"].dtype for s in opt.state] == expected
        assert [s["momentum_buffer"].dtype for s in opt.state] == expected
    assert rc.RMSprop(params, lr=0.1, state_dtype=ml_dtypes.bfloat16).state[0][
        "square_avg"].dtype == BF16


def test_the_tensor_index_keys_the_bits():
    # Two identical tensors get different stochastic bits: their index is in the key.
    param = np.random.default_rng(0).standard_normal(5000).astype(BF16)
    grad = np.random.default_rng(1).standard_normal(5000).astype(BF16)
    params = [param.copy(), param.copy()]
    rc.RMSprop(params, lr=1e-3, rounding="stochastic").step([grad, grad])
    assert params[0].tobytes() != params[1].tobytes()
    for index in range(2):
        expected, square_avg = param.copy(), np.zeros(5000, BF16)
        rc.reference.rmsprop_step(expected, grad, square_avg, lr=1e-3, alpha=0.99, eps=1e-8,
                                  rounding="stochastic", tensor_index=index)
        assert expected.tobytes() == params[index].tobytes()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("state_dtype", REGISTRY["state_dtype"].test_values)
def test_checkpoints_round_trip_every_family(family, state_dtype, tmp_path):
    source, params, _ = build(rc.RMSprop, family, state_dtype, "stochastic", 12345)
    for k in range(2):
        source.step(grads(family, params, k))
    path = tmp_path / "state.npz"
    source.save(path)
    with np.load(path, allow_pickle=False) as archive:      # plain dtypes: no pickle
        kinds = {name: archive[name].dtype for name in archive.files}
    assert all(dtype.kind in "fuU" for dtype in kinds.values()), kinds
    if any(s["square_avg"].dtype == BF16 for s in source.state):
        assert np.dtype(np.uint16) in kinds.values()
    for load in ("file", "state_dict"):
        target, target_params, _ = build(rc.RMSprop, family, state_dtype, "nearest", 0)
        if load == "file":
            target.load(path)
        else:
            target.load_state_dict(source.state_dict())
        assert (target.seed, target.rounding) == (12345, "stochastic")
        for saved, loaded in zip(source.state, target.state):
            for key in saved:
                assert loaded[key].dtype == saved[key].dtype
                assert loaded[key].tobytes() == saved[key].tobytes(), (load, key)
        # both continue identically (same keys: seed, steps, tensor indices)
        for mine, theirs in zip(target_params, params):
            mine[...] = theirs
        source.step(grads(family, params, 9 + len(load)))
        target.step(grads(family, target_params, 9 + len(load)))
        assert everything(source, params, None) == everything(target, target_params, None)


def test_a_checkpoint_without_rounding_and_seed_loads_with_the_defaults():
    opt, params, _ = build(rc.RMSprop, "float32 params, low-precision grads", None,
                           "stochastic", 9)
    state = opt.state_dict()
    del state["rounding"], state["seed"]
    opt.load_state_dict(state)
    assert (opt.rounding, opt.seed) == ("nearest", 0)


def test_a_bfloat16_buffer_without_its_tag_is_refused(tmp_path):
    opt, params, _ = build(rc.RMSprop, "bfloat16 params", None, "nearest", 0)
    path = tmp_path / "state.npz"
    opt.save(path)
    with np.load(path) as archive:
        arrays = dict(archive)
    meta = str(arrays.pop("__rmsprop_c_meta__"))
    np.savez(path, **arrays, __rmsprop_c_meta__=np.array(meta.replace('"dtype_tags"',
                                                                       '"other_tags"')))
    before = [s["square_avg"].tobytes() for s in opt.state]
    with pytest.raises(rc.CheckpointError):
        opt.load(path)
    assert [s["square_avg"].tobytes() for s in opt.state] == before


@pytest.mark.parametrize("kwargs, grads_dtypes, error, name", [
    (dict(state_dtype="int8"), None, ValueError, "state_dtype"),
    (dict(rounding="even"), None, ValueError, "rounding"),
    (dict(seed=-3), None, ValueError, "seed"),
    (dict(param_copies=[None]), None, ValueError, "param_copies"),
    (dict(param_copies=[None, np.zeros(5, F32), None]), None, TypeError, r"param_copies\[1\]"),
    (dict(param_copies=[None, None, np.zeros(7, BF16)]), None, TypeError, r"param_copies\[2\]"),
    (dict(param_copies=[np.zeros(4, BF16), None, None]), None, ValueError, r"param_copies\[0\]"),
    ({}, (F32, BF16, BF16), TypeError, r"grads\[1\]"),
    ({}, (F64, F64, BF16), TypeError, r"grads\[0\]"),
])
def test_bad_low_precision_input_is_refused_naming_it(kwargs, grads_dtypes, error, name):
    params = [np.ones(5, F32), np.ones(6, F64), np.ones(7, BF16)]
    before = [p.tobytes() for p in params]
    with pytest.raises(error, match=name):
        opt = rc.RMSprop(params, lr=0.1, **kwargs)
        opt.step([np.ones(p.shape, d) for p, d in zip(params, grads_dtypes)])
    assert [p.tobytes() for p in params] == before


def test_skip_nonfinite_sees_nan_in_low_precision_grads():
    params = [np.ones(3000, BF16), np.ones(70, F32)]
    opt = rc.RMSprop(params, lr=0.1, skip_nonfinite=True)
    before = [p.tobytes() for p in params] + [s["square_avg"].tobytes() for s in opt.state]
    bad = np.ones(3000, BF16)
    bad[2999] = np.nan
    assert opt.step([bad, np.ones(70, F16)]) is False
    assert opt.skipped_steps == 1
    assert [p.tobytes() for p in params] + [s["square_avg"].tobytes() for s in opt.state] == before
    assert opt.step([np.ones(3000, BF16), np.ones(70, F16)]) is True


@pytest.mark.parametrize("kwargs, dtype", [({}, BF16), ({}, F16), ({"state_dtype": "bfloat16"}, F32),
                                           ({"param_copies": "bf16"}, F32)])
def test_row_grads_of_low_precision_tensors_are_refused_naming_them(kwargs, dtype):
    table = np.ones((10, 4), dtype)
    if kwargs.get("param_copies"):
        kwargs = {"param_copies": [np.zeros((10, 4), BF16)]}
    opt = rc.RMSprop([table], lr=0.1, **kwargs)
    before = [table.tobytes()] + [b.tobytes() for b in opt.state[0].values()]
    with pytest.raises(TypeError, match=r"grads\[0\] is a RowGrad"):
        opt.step([rc.RowGrad(np.array([1, 3]), np.ones((2, 4), dtype))])
    assert [table.tobytes()] + [b.tobytes() for b in opt.state[0].values()] == before


def test_low_precision_dense_tensors_step_next_to_row_grads():
    def run(cls):
        dense, table = np.ones(3000, BF16), np.ones((10, 4), F32)
        opt = cls([dense, table], lr=0.01, rounding="stochastic", seed=3)
        for k in range(3):
            opt.step([np.full(3000, 0.5 + k, BF16),
                      rc.RowGrad(np.array([1, 3]), np.ones((2, 4), F32))])
        return everything(opt, [dense, table], None)

    assert run(rc.RMSprop) == run(slow.RMSprop)
