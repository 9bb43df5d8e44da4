"""rmsprop_c.torch.RMSprop: every refusal names what is wrong, and writes nothing first.

Also: torch's own error inputs for RMSprop, the optional import of torch, and the
signature (torch's arguments in torch's order, then every option of the registry).
"""

import copy
import gc
import inspect
import os
import re
import subprocess
import sys
import warnings
import weakref

import pytest

if os.environ.get("RMSPROP_C_ALLOW_MISSING_COMPAT") == "1":
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")
else:
    import torch

from torch.testing._internal.common_optimizers import (OptimizerErrorEnum,
                                                       optim_error_inputs_func_rmsprop)

from rmsprop_c._options import option_names
from rmsprop_c.torch import RMSprop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_params(n=3, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=generator, dtype=dtype))
              for _ in range(n)]
    for param in params:
        param.grad = torch.randn(4, 3, generator=generator, dtype=dtype)
    return params


def snapshot(optimizer):
    params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, state


def assert_unchanged(optimizer, before):
    params, state = snapshot(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(params, before[0]))
    assert state.keys() == before[1].keys()
    for key, buffers in state.items():
        assert all(torch.equal(buffers[name], before[1][key][name]) for name in buffers)


# ---------------------------------------------------------------------------------------
# torch's own error inputs


def error_inputs():
    return optim_error_inputs_func_rmsprop("cpu", torch.float32)


@pytest.mark.parametrize("error_input", error_inputs(),
                         ids=[e.optimizer_error_input.desc for e in error_inputs()])
def test_torch_error_inputs(error_input):
    config = error_input.optimizer_error_input
    assert error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
    params = config.params if config.params is not None else make_params()
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type, match=error_input.error_regex):
            RMSprop(params, **config.kwargs)
    else:
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            RMSprop(params, **config.kwargs)


@pytest.mark.parametrize("kwargs,message", (
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1e-8), "Invalid epsilon value"),
    (dict(alpha=-0.5), "Invalid alpha value"),
    (dict(alpha=1.5), "Invalid alpha value"),
    (dict(weight_decay=-1.0), "Invalid weight_decay value"),
    (dict(lr=float("nan")), "Invalid learning rate"),
    (dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
), ids=str)
def test_hyperparameters_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RMSprop(make_params(), **kwargs)


# ---------------------------------------------------------------------------------------
# Our refusals


@pytest.mark.parametrize("kwargs,message", (
    (dict(capturable=True), "capturable"),
    (dict(differentiable=True), "differentiable"),
    (dict(fused=False), "fused=False"),
    (dict(n_threads=0), "n_threads"),
    (dict(flavor="caffe"), "flavor must be one of"),
), ids=str)
def test_refused_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMSprop(make_params(), **kwargs)


def test_flavor_without_default_lr_needs_one():
    with pytest.raises(TypeError, match="tf1.*pass lr"):
        RMSprop(make_params(), flavor="tf1")


def test_group_options_are_checked_and_named():
    optimizer = RMSprop(make_params(2))
    with pytest.raises(ValueError, match=re.escape("param_groups[1]['lr']")):
        optimizer.add_param_group({"params": make_params(1), "lr": -1.0})
    with pytest.raises(ValueError, match=re.escape("param_groups[1]['capturable']")):
        optimizer.add_param_group({"params": make_params(1), "capturable": True})
    assert len(optimizer.param_groups) == 1
    optimizer.param_groups[0]["differentiable"] = True
    with pytest.raises(ValueError, match=re.escape("param_groups[0]['differentiable']")):
        optimizer.step()


# float16 and bfloat16 params are stepped in float32 (tests/test_lowp_torch.py)
@pytest.mark.parametrize("dtype", (torch.complex64, torch.int64, torch.float8_e4m3fn), ids=str)
def test_unsupported_dtypes_name_the_param(dtype):
    params = make_params(2) + [torch.zeros(5, dtype=dtype)]
    with pytest.raises(TypeError, match=re.escape(f"params[2] has dtype {dtype}")):
        RMSprop(params)


def test_other_devices_name_the_param():
    params = make_params(1) + [torch.nn.Parameter(torch.empty(3, device="meta"))]
    with pytest.raises(ValueError, match=r"params\[1\] is on device meta.*CPU"):
        RMSprop(params)


def test_non_contiguous_params_name_the_param():
    transposed = torch.nn.Parameter(torch.randn(3, 4).t())
    with pytest.raises(ValueError, match=r"params\[1\] is not contiguous"):
        RMSprop([make_params(1)[0], transposed])
    # In a later group, counted over all groups (as state_dict numbers them).
    optimizer = RMSprop(make_params(2))
    with pytest.raises(ValueError, match=r"params\[3\] is not contiguous"):
        optimizer.add_param_group({"params": [make_params(1)[0], transposed]})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("change", ("non_contiguous", "complex64", "float16"))
def test_param_data_changed_later_is_refused_before_writing(change):
    params = make_params(3)
    optimizer = RMSprop(params)
    optimizer.step()
    before = snapshot(optimizer)
    if change == "non_contiguous":
        params[1].data = torch.randn(3, 4).t()
        expected = (ValueError, r"params\[1\] is not contiguous")
    elif change == "complex64":
        params[1].data = params[1].data.to(torch.complex64)
        expected = (TypeError, r"params\[1\] has dtype torch.complex64")
    else:                                 # a float16 param is fine, its float32 state is not
        params[1].data = params[1].data.half()
        expected = (ValueError, r"state of params\[1\]: 'square_avg' is a torch.float32")
    with pytest.raises(expected[0], match=expected[1]):
        optimizer.step()
    params[1].data = before[0][1].clone()          # what the check compared against
    assert_unchanged(optimizer, before)


def sparse_grads_refused():
    """Sparse grads other than the rows of a 2-D param (nn.Embedding(sparse=True)'s) that
    torch lets a 2-D param hold (it refuses other layouts, shapes and dtypes itself)."""
    yield "two sparse dims", lambda: torch.sparse_coo_tensor(
        [[0, 3], [1, 2]], [1.0, 2.0], (4, 3), check_invariants=True), RuntimeError, \
        r"params\[2\]\.grad is sparse COO with 2 sparse and 0 dense dims"


@pytest.mark.parametrize("case", list(sparse_grads_refused()), ids=lambda case: case[0])
def test_sparse_grads_other_than_rows_are_refused_before_writing(case):
    _, make_grad, error, message = case
    params = make_params(3)
    optimizer = RMSprop(params, momentum=0.9)
    optimizer.step()
    before = snapshot(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # sparse CSR is beta
        params[2].grad = make_grad()
    with pytest.raises(error, match=message):
        optimizer.step()
    assert_unchanged(optimizer, before)


def test_sparse_grad_of_a_vector_is_refused_before_writing():
    params = make_params(2) + [torch.nn.Parameter(torch.zeros(5))]
    params[2].grad = torch.ones(5)
    optimizer = RMSprop(params, momentum=0.9)
    optimizer.step()
    before = snapshot(optimizer)
    params[2].grad = torch.ones(5).to_sparse()
    with pytest.raises(RuntimeError, match=r"params\[2\]\.grad is sparse COO with 1 sparse "
                                           r"and 0 dense dims for a 1-D parameter"):
        optimizer.step()
    assert_unchanged(optimizer, before)


def test_sparse_row_grad_out_of_range_is_refused_before_writing():
    params = make_params(3)
    optimizer = RMSprop(params, momentum=0.9)
    optimizer.step()
    before = snapshot(optimizer)
    params[0].grad = torch.randn(4, 3).to_sparse(1)
    params[2].grad = torch.sparse_coo_tensor([[0, 7]], torch.ones(2, 3), (4, 3),
                                             check_invariants=False)
    with pytest.raises(IndexError, match=r"grads\[2\]\.indices\[1\] = 7 is out of range"):
        optimizer.step()
    assert_unchanged(optimizer, before)


def test_duplicate_and_overlapping_params_are_refused():
    param = make_params(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # torch warns about duplicates first
        optimizer = RMSprop([param, param])
    with pytest.raises(ValueError, match=r"params\[1\] is the same tensor as params\[0\]"):
        optimizer.step()
    base = torch.randn(8)
    halves = [base[:5].requires_grad_(), base[3:].requires_grad_()]
    for half in halves:
        half.grad = torch.ones_like(half)
    with pytest.raises(ValueError, match=r"share memory"):
        RMSprop(halves).step()


def test_loaded_state_of_the_wrong_shape_is_refused():
    params = make_params(2)
    optimizer = RMSprop(params)
    optimizer.step()
    state_dict = optimizer.state_dict()
    state_dict["state"][1]["square_avg"] = torch.zeros(5)
    optimizer.load_state_dict(state_dict)
    with pytest.raises(ValueError, match=r"state of params\[1\]: 'square_avg'"):
        optimizer.step()


def test_loaded_capturable_group_is_refused_and_changes_nothing():
    optimizer = RMSprop(make_params(2))
    optimizer.step()
    state_dict = torch.optim.RMSprop(make_params(2), capturable=True).state_dict()
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=re.escape("param_groups[0]['capturable']")):
        optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["capturable"] is False
    assert_unchanged(optimizer, before)


# ---------------------------------------------------------------------------------------
# Accepted inputs that need care


def test_non_contiguous_and_tracked_grads_are_read_correctly():
    results = []
    for kind in ("plain", "non_contiguous", "requires_grad"):
        params = make_params(2, torch.float64)
        grads = [p.grad.clone() for p in params]
        if kind == "non_contiguous":
            params[0].grad = grads[0].t().contiguous().t()
            assert not params[0].grad.is_contiguous()
        elif kind == "requires_grad":
            params[0].grad = grads[0].clone().requires_grad_()
        optimizer = RMSprop(params, momentum=0.9)
        optimizer.step()
        optimizer.step()
        results.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))


def test_state_layout_follows_group_changes():
    params = make_params(2)
    optimizer = RMSprop(params)
    optimizer.step()
    assert "momentum_buffer" not in optimizer.state[params[0]]
    optimizer.param_groups[0]["momentum"] = 0.9
    optimizer.step()
    assert optimizer.state[params[0]]["momentum_buffer"].any()
    assert optimizer.tensor_steps == [2, 2]


def test_no_gradient_memory_is_held_when_grads_are_new_each_step():
    """A loop whose backward makes new grads (model.zero_grad()) frees the old ones."""
    model = torch.nn.Linear(4, 3)
    optimizer = RMSprop(model.parameters())
    inputs = torch.randn(8, 4)
    for _ in range(3):
        model.zero_grad()
        model(inputs).sum().backward()
        optimizer.step()
    old_grads = [weakref.ref(param.grad) for param in model.parameters()]
    model.zero_grad()
    gc.collect()
    assert all(ref() is None for ref in old_grads)


def test_persistent_grads_are_read_fresh_each_step():
    """zero_grad(set_to_none=False) keeps the grad tensors; their new values are used."""
    results = []
    for set_to_none in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).double()
        optimizer = RMSprop(model.parameters(), momentum=0.5)
        for step in range(5):
            optimizer.zero_grad(set_to_none=set_to_none)
            (model(torch.full((2, 4), float(step + 1), dtype=torch.float64)) ** 2).sum() \
                .backward()
            optimizer.step()
        results.append([param.detach().clone() for param in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_skip_nonfinite_changes_nothing():
    params = make_params(2)
    optimizer = RMSprop(params, skip_nonfinite=True)
    optimizer.step()
    before = snapshot(optimizer)
    params[1].grad[2, 1] = float("nan")
    optimizer.step()
    assert optimizer.skipped_steps == 1 and optimizer.tensor_steps == [1, 1]
    assert_unchanged(optimizer, before)


def test_deepcopy_keeps_the_settings():
    params = make_params(2)
    optimizer = RMSprop(params, flavor="tf1", lr=1e-3, n_threads=1)
    optimizer.step()
    clone = copy.deepcopy(optimizer)
    assert (clone.flavor.name, clone.n_threads) == ("tf1", 1)
    for param in clone.param_groups[0]["params"]:
        param.grad = torch.ones_like(param)       # deepcopy gives params without grads
    clone.step()
    assert clone.tensor_steps == [2, 2] and optimizer.tensor_steps == [1, 1]


# ---------------------------------------------------------------------------------------
# The signature and the optional import


def test_signature_is_torchs_then_every_option():
    ours = list(inspect.signature(RMSprop).parameters)
    theirs = list(inspect.signature(torch.optim.RMSprop).parameters)
    assert ours[:len(theirs)] == theirs
    assert set(option_names()) <= set(ours)
    assert {"fused", "flavor", "n_threads", "skip_nonfinite"} <= set(ours)


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_import_rmsprop_c_never_imports_torch():
    result = run_python("import sys, rmsprop_c, rmsprop_c.optimizer, rmsprop_c.flavors\n"
                        "print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_missing_torch_says_how_to_install():
    result = run_python("import sys\nsys.modules['torch'] = None\n"
                        "try:\n    import rmsprop_c.torch\n"
                        "except ImportError as error:\n    print(error)\n")
    assert result.returncode == 0, result.stderr
    assert "pip install torch" in result.stdout
