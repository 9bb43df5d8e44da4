"""``rmsprop_c.torch.RMSprop``: a ``torch.optim.Optimizer`` that steps CPU tensors in place.

The optimizer keeps torch's bookkeeping (param groups, ``state[p]`` with a float ``step``
tensor, hooks, state_dict format) and hands the arithmetic to the native multi-tensor engine
over zero-copy NumPy views of the parameters and state tensors. The engine is built lazily
and rebuilt when what it was built on changes (a new group, a replaced ``param.data``, a
loaded state, an option that needs a new state buffer); a step then costs one native call
plus, per tensor, fetching ``p.grad`` and its view. ``state[p]["step"]`` tensors are 0-d
views of one flat tensor, so counting a step is one torch op; the engine keeps the exact
integer counts that drive bias correction.
"""

import math
from itertools import repeat
from operator import attrgetter, is_

import numpy as np

try:
    import torch
except ImportError as error:          # torch is an optional dependency
    raise ImportError(
        "rmsprop_c.torch needs PyTorch, which is not installed: pip install torch "
        "(the CPU build is enough)"
    ) from error

from rmsprop_c import _kernels
from rmsprop_c._low_precision import BFLOAT16
from rmsprop_c._rowgrad import RowGrad
from rmsprop_c._torch_hooks import profile_hook_step
from rmsprop_c._torch_rows import row_grad
from rmsprop_c._options import GROUP_KEYS, MAX_STEP, check_option, state_layout
from rmsprop_c.flavors import FOLLOW_EPS, HYPERPARAMETERS, get_flavor

__all__ = ["RMSprop"]

# bfloat16 tensors are seen through NumPy as ml_dtypes.bfloat16 (when installed).
_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16) + (
    (torch.bfloat16,) if BFLOAT16 is not None else ())
# torch's wording for the options it checks, so code matching its messages keeps working.
_TORCH_LABELS = {"lr": "learning rate", "eps": "epsilon value", "momentum": "momentum value",
                 "weight_decay": "weight_decay value", "alpha": "alpha value"}
_grad_of = attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_tensor_numpy = torch.Tensor.numpy
_numel = torch.Tensor.numel
_is_contiguous = torch.Tensor.is_contiguous
_is_neg = torch.Tensor.is_neg
_dtype_of = attrgetter("dtype")
_is_cpu = attrgetter("is_cpu")


def _numpy_view(tensor):
    """A NumPy view of a CPU tensor's memory; bfloat16 through its bits, zero-copy."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


def _scalar_dtype():
    """The dtype torch.optim gives ``state["step"]`` (float32 unless the default is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_hyperparameter(name, value, where):
    """The normalised value of one option; torch's wording leads the message where it has one."""
    if name == "lr" and isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        check_option("lr", value.item(), where)
        return value
    try:
        return check_option(name, value, where)
    except (TypeError, ValueError) as error:
        if name in _TORCH_LABELS:
            raise type(error)(f"Invalid {_TORCH_LABELS[name]}: {value}: {error}") from None
        raise


def _check_torch_keys(group, where):
    """capturable and differentiable have no CPU meaning here: refuse them, naming the group."""
    if group.get("capturable", False):
        raise ValueError(f"{where}['capturable'] is True: rmsprop_c.torch.RMSprop steps CPU "
                         "tensors and does not support CUDA graph capture")
    if group.get("differentiable", False):
        raise ValueError(f"{where}['differentiable'] is True: rmsprop_c.torch.RMSprop "
                         "updates in place outside autograd; use torch.optim.RMSprop")


def _check_param(param, index):
    """A parameter the engine can step in place, or an error naming ``params[index]``."""
    name = f"params[{index}]"
    if param.device.type != "cpu":
        raise ValueError(f"{name} is on device {param.device}; rmsprop_c.torch.RMSprop "
                         "steps CPU tensors only")
    if param.layout != torch.strided:
        raise ValueError(f"{name} has layout {param.layout}; rmsprop_c.torch.RMSprop steps "
                         "dense tensors only")
    if param.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {param.dtype}; rmsprop_c.torch.RMSprop steps "
                        "torch.float32, float64, float16 and bfloat16 (with ml_dtypes) "
                        "tensors")
    if not param.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {param.stride()} for shape "
                         f"{tuple(param.shape)}); rmsprop_c.torch.RMSprop updates contiguous "
                         "tensors in place")


class RMSprop(torch.optim.Optimizer):
    r"""RMSprop for torch CPU tensors, one fused native step over all parameters.

    A drop-in for :class:`torch.optim.RMSprop`: same arguments, same param groups, same
    ``state[p]`` entries (``step``, ``square_avg``, ``momentum_buffer``, ``grad_avg``), same
    state_dict format, so checkpoints move between the two. ``step()`` updates every
    parameter with a gradient in one call to the compiled kernels, in place, without copies;
    parameters whose ``.grad`` is None are skipped and their state does not advance. A sparse
    COO grad of a 2-D parameter (``nn.Embedding(sparse=True)``) steps only the rows it lists
    (lazily, repeated rows summed), from views of its indices and values.

    Parameters
    ----------
    params : iterable of torch.Tensor or dict
        Parameters (CPU, float32, float64, float16 or bfloat16, contiguous) or param
        group dicts. Low-precision params step in float32 with state of their own dtype.
    lr, alpha, eps, weight_decay, momentum, centered, maximize : optional
        As in :class:`torch.optim.RMSprop`. None takes the flavor's default (for the
        default flavor "torch": lr 1e-2, alpha 0.99, eps 1e-8, no weight decay, no
        momentum). ``lr`` may be a 1-element tensor.
    capturable, differentiable : bool, default False
        Accepted for signature compatibility; True raises ValueError (CUDA graph capture
        and differentiating through the step do not apply to an in-place CPU kernel).
    foreach, fused : bool or None
        Accepted and ignored: every step is one fused call. ``fused=False`` raises
        ValueError.
    flavor : str, default "torch"
        Framework preset (``rmsprop_c.FLAVORS``): "tf1" gives TensorFlow's RMSprop (eps
        inside the square root, accumulator starting at 1, lr inside the momentum buffer).
    nesterov, decoupled_weight_decay, amsgrad, bias_correction, eps_in_sqrt, \
lr_in_momentum, initial_accumulator_value, grad_scale, clip_value : optional
        The other options of :class:`rmsprop_c.RMSprop`; None takes the flavor's default.
    n_threads : int or None
        Threads per step; None follows OpenMP's setting.
    rounding, seed : optional
        How bfloat16 params and state are stored ("nearest" or "stochastic") and the seed
        of the stochastic bits, as in :class:`rmsprop_c.RMSprop`.
    skip_nonfinite : bool, default False
        When True, a step whose gradients hold NaN or Inf changes nothing and counts
        ``skipped_steps``.

    Notes
    -----
    ``state[p]["step"]`` is created for every parameter at the first step (torch creates it
    at a parameter's first gradient); a parameter that never had a gradient has step 0 and
    untouched buffers, which torch.optim.RMSprop treats as fresh state.

    Examples
    --------
    >>> import torch, rmsprop_c.torch
    >>> model = torch.nn.Linear(4, 2)
    >>> optimizer = rmsprop_c.torch.RMSprop(model.parameters(), lr=1e-3, momentum=0.9)
    >>> model(torch.ones(3, 4)).sum().backward()
    >>> optimizer.step()
    >>> float(optimizer.state[model.weight]["step"])
    1.0
    """

    def __init__(self, params, lr=None, alpha=None, eps=None, weight_decay=None,
                 momentum=None, centered=None, capturable=False, foreach=None, maximize=None,
                 differentiable=False, fused=None, *, flavor="torch", nesterov=None,
                 decoupled_weight_decay=None, amsgrad=None, bias_correction=None,
                 eps_in_sqrt=None, lr_in_momentum=None, initial_accumulator_value=None,
                 grad_scale=None, clip_value=None, n_threads=None, skip_nonfinite=False,
                 rounding="nearest", seed=0):
        flavor = get_flavor(flavor)
        if fused is not None and not fused:
            raise ValueError("fused=False: rmsprop_c.torch.RMSprop always runs the fused "
                             "step; use torch.optim.RMSprop for the unfused one")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(
                n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be None or an integer >= 1, got {n_threads!r}")
        explicit = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize,
                        nesterov=nesterov, decoupled_weight_decay=decoupled_weight_decay,
                        amsgrad=amsgrad, bias_correction=bias_correction,
                        eps_in_sqrt=eps_in_sqrt, lr_in_momentum=lr_in_momentum,
                        initial_accumulator_value=initial_accumulator_value,
                        grad_scale=grad_scale, clip_value=clip_value)
        resolved = flavor.resolve(explicit)
        if resolved["lr"] is None:
            raise TypeError(f"flavor {flavor.name!r} has no default learning rate: pass lr")
        self._follow_eps = resolved["initial_accumulator_value"] == FOLLOW_EPS
        if self._follow_eps:
            resolved["initial_accumulator_value"] = resolved["eps"]
        defaults = {key: _check_hyperparameter(key, resolved[key], key)
                    for key in HYPERPARAMETERS}
        defaults.update(capturable=capturable, foreach=foreach, differentiable=differentiable)
        _check_torch_keys(defaults, "defaults")
        self.flavor = flavor
        self.n_threads = n_threads
        self.skip_nonfinite = bool(skip_nonfinite)
        self.skipped_steps = 0
        self.rounding = check_option("rounding", rounding)
        self.seed = check_option("seed", seed)
        self._invalidate()
        super().__init__(params, defaults)

    # -------------------------------------------------------------------------------
    # Groups and the engine's life cycle

    # torch's step wrapper (hooks, a profiler range) only when a hook or a profiler is on
    profile_hook_step = staticmethod(profile_hook_step)

    def add_param_group(self, param_group):
        """Add a param group (torch's semantics); its options and params are checked first.

        Errors name the group (``param_groups[2]['lr']``) and the parameter index, counted
        over all groups as in ``state_dict()``.
        """
        if isinstance(param_group, dict):
            index = len(self.param_groups)
            where = f"param_groups[{index}]"
            if self._follow_eps and "initial_accumulator_value" not in param_group \
                    and "eps" in param_group:
                param_group["initial_accumulator_value"] = param_group["eps"]
            for key in HYPERPARAMETERS:
                if key in param_group:
                    param_group[key] = _check_hyperparameter(
                        key, param_group[key], f"{where}['{key}']")
            _check_torch_keys(param_group, where)
        super().add_param_group(param_group)
        first = sum(len(group["params"]) for group in self.param_groups[:-1])
        try:
            for offset, param in enumerate(self.param_groups[-1]["params"]):
                _check_param(param, first + offset)
        except (TypeError, ValueError):
            self.param_groups.pop()        # torch appended it: a refused group leaves no trace
            raise
        self._invalidate()

    def __getstate__(self):
        state = super().__getstate__()
        state["_rmsprop_c"] = {"flavor": self.flavor.name, "n_threads": self.n_threads,
                               "skip_nonfinite": self.skip_nonfinite,
                               "skipped_steps": self.skipped_steps,
                               "follow_eps": self._follow_eps,
                               "rounding": self.rounding, "seed": self.seed}
        return state

    def __setstate__(self, state):
        """Used by load_state_dict and unpickling: groups from torch.optim.RMSprop (or an
        older save) get this optimizer's defaults for the options they lack."""
        state = dict(state)
        settings = state.pop("_rmsprop_c", None)
        defaults = state.get("defaults", getattr(self, "defaults", {}))
        for index, group in enumerate(state["param_groups"]):
            where = f"param_groups[{index}]"
            if settings is None and getattr(self, "_follow_eps", False) and "eps" in group:
                group.setdefault("initial_accumulator_value", group["eps"])
            for key, default in defaults.items():
                group.setdefault(key, default)
            for key in HYPERPARAMETERS:
                group[key] = _check_hyperparameter(key, group[key], f"{where}['{key}']")
            _check_torch_keys(group, where)
        super().__setstate__(state)
        if settings is not None:
            self.flavor = get_flavor(settings["flavor"])
            self.n_threads = settings["n_threads"]
            self.skip_nonfinite = settings["skip_nonfinite"]
            self.skipped_steps = settings["skipped_steps"]
            self._follow_eps = settings["follow_eps"]
            self.rounding = settings.get("rounding", "nearest")
            self.seed = settings.get("seed", 0)
        self._invalidate()

    def _invalidate(self):
        """Forget the engine and every cache built with it; the next step rebuilds them."""
        self._engine = None
        self._params = []
        self._param_ptrs = []
        self._numels = []
        self._dtypes = []
        self._group_lists = []
        self._layouts = []
        self._step_counts = None
        self._clear_grad_cache()

    def _clear_grad_cache(self, keep_next=True):
        self._grad_refs = None
        self._grad_views = None
        self._grads_complete = False      # every param had a grad (no None) in the cache
        self._keep_grad_views = keep_next

    def _current(self):
        """True when the engine still matches the groups, their state layouts and params."""
        groups = self.param_groups
        if self._engine is None or len(groups) != len(self._group_lists):
            return False
        for group, members, layout in zip(groups, self._group_lists, self._layouts):
            if group["params"] is not members[0] or len(members[0]) != members[1]:
                return False
            if (group["momentum"] > 0, bool(group["centered"]), bool(group["amsgrad"])) \
                    != layout:
                return False
        return list(map(_data_ptr, self._params)) == self._param_ptrs

    def _build(self):
        """Check every param and state tensor, create missing state, build the engine."""
        params = [param for group in self.param_groups for param in group["params"]]
        seen = {}
        for index, param in enumerate(params):
            _check_param(param, index)
            if id(param) in seen:
                raise ValueError(f"params[{index}] is the same tensor as params[{seen[id(param)]}]")
            seen[id(param)] = index
        group_of_param = [index for index, group in enumerate(self.param_groups)
                          for _ in group["params"]]
        state_views, steps = [], []
        for index, (param, group_index) in enumerate(zip(params, group_of_param)):
            state = self.state[param]
            state_views.append(self._state_views(param, index, self.param_groups[group_index],
                                                 state))
            steps.append(self._read_step(state, index))
        scalar_dtype = _scalar_dtype()
        engine = _kernels.MultiTensorStep(
            [_numpy_view(param.detach()) for param in params], group_of_param, state_views,
            len(self.param_groups))
        engine.set_tensor_steps(steps)
        engine.set_rounding(self.rounding, self.seed)
        # state["step"]: 0-d views of one tensor, counted by one op per step.
        counts = torch.tensor(steps, dtype=scalar_dtype)
        for index, param in enumerate(params):
            self.state[param]["step"] = counts[index]
        self._engine = engine
        self._step_counts = counts.numpy()   # np.add: 0.7 us per step, torch's add_ 2.7 us
        self._params = params
        self._param_ptrs = list(map(_data_ptr, params))
        self._numels = list(map(_numel, params))
        self._dtypes = list(map(_dtype_of, params))
        self._group_lists = [(group["params"], len(group["params"]))
                             for group in self.param_groups]
        self._layouts = [(group["momentum"] > 0, bool(group["centered"]),
                          bool(group["amsgrad"])) for group in self.param_groups]
        self._clear_grad_cache()

    @staticmethod
    def _read_step(state, index):
        step = state.get("step", 0)
        value = float(step.item() if isinstance(step, torch.Tensor) else step)
        if not (math.isfinite(value) and value >= 0 and value == int(value)
                and value <= MAX_STEP):
            raise ValueError(f"state of params[{index}]: 'step' must be a whole number >= 0, "
                             f"got {step!r}")
        return int(value)

    @staticmethod
    def _state_views(param, index, group, state):
        """NumPy views of a param's state tensors, created (or fixed) as torch would hold them."""
        initial = group["initial_accumulator_value"]
        views = {}
        for key in state_layout(group):
            buffer = state.get(key)
            if buffer is None:
                buffer = torch.zeros_like(param, memory_format=torch.contiguous_format)
                if key == "square_avg" and initial != 0:
                    buffer.fill_(initial)
                state[key] = buffer
            elif not isinstance(buffer, torch.Tensor):
                raise TypeError(f"state of params[{index}]: '{key}' must be a tensor, got "
                                f"{type(buffer).__name__}")
            elif buffer.shape != param.shape or buffer.dtype != param.dtype \
                    or buffer.device != param.device or buffer.layout != torch.strided:
                raise ValueError(
                    f"state of params[{index}]: '{key}' is a {buffer.dtype} tensor of shape "
                    f"{tuple(buffer.shape)} on {buffer.device}; params[{index}] is "
                    f"{param.dtype} of shape {tuple(param.shape)} on {param.device}")
            elif not buffer.is_contiguous():
                buffer = buffer.contiguous()
                state[key] = buffer
            views[key] = _numpy_view(buffer.detach())
        for key in ("momentum_buffer", "grad_avg", "max_square_avg"):
            buffer = state.get(key)
            if key not in views and isinstance(buffer, torch.Tensor) \
                    and buffer.shape == param.shape and buffer.dtype == param.dtype \
                    and buffer.is_contiguous() and buffer.device == param.device:
                views[key] = _numpy_view(buffer.detach())   # kept: the option may come back
        return views

    # -------------------------------------------------------------------------------
    # The step

    def _engine_groups(self):
        """The groups as the engine reads them: exactly GROUP_KEYS, plain numbers."""
        translated = []
        for index, group in enumerate(self.param_groups):
            if group["capturable"] or group["differentiable"]:
                _check_torch_keys(group, f"param_groups[{index}]")
            entry = {key: group[key] for key in GROUP_KEYS}
            if isinstance(entry["lr"], torch.Tensor):
                entry["lr"] = entry["lr"].item()
            translated.append(entry)
        return translated

    @staticmethod
    def _views_of(grads, params=None):
        """NumPy views of the grads (None stays None), in the fewest calls; and whether
        every grad was there."""
        try:
            return list(map(_tensor_numpy, grads)), True
        except (TypeError, RuntimeError):      # a None, sparse or autograd-tracked grad
            views = RMSprop._careful_views(grads, params)
            return views, not _has_none(views)

    @staticmethod
    def _careful_views(grads, params=None):
        """Views of any dense grad, copied when not contiguous, and row grads viewing
        sparse COO grads; errors name the index."""
        views = []
        for index, grad in enumerate(grads):
            if grad is None:
                views.append(None)
                continue
            if grad.layout != torch.strided:            # rows: sparse COO grads
                if grad.dtype in (torch.bfloat16, torch.float16):
                    raise TypeError(f"params[{index}].grad is a sparse {grad.dtype} tensor: "
                                    "row grads need float32 or float64 params")
                views.append(row_grad(grad, params[index] if params else grad, index))
                continue
            grad = grad.detach()
            if not grad.is_contiguous():
                grad = grad.contiguous()       # a copy is fine: grads are only read
            views.append(_numpy_view(grad))
        return views

    def _addresses_of(self, grads):
        """The grads' data addresses when every grad is new this step (the usual
        ``zero_grad(set_to_none=True)`` loop) and plainly fits its param: a CPU strided
        contiguous tensor of the param's dtype and element count. Cheaper than NumPy views
        of fresh tensors; None when views are the way (persistent grads, None grads,
        anything unusual, which the views path checks and explains)."""
        if self._keep_grad_views or _has_none(grads):
            return None
        try:
            addresses = list(map(_data_ptr, grads))           # raises for sparse layouts
        except RuntimeError:
            return None
        if (0 in addresses or list(map(_numel, grads)) != self._numels
                or list(map(_dtype_of, grads)) != self._dtypes
                or not all(map(_is_contiguous, grads)) or not all(map(_is_cpu, grads))
                or any(map(_is_neg, grads))):
            return None
        return np.array(addresses, dtype=np.uintp)

    def _grad_views_cached(self, grads, same):
        """Views of ``grads``, reusing last step's when ``same`` (every grad is the same tensor
        object as last step).

        Grads that persist between steps (``zero_grad(set_to_none=False)``) hit every step.
        A loop that makes new grads each step misses; there the views are not kept, so the
        optimizer holds no gradient memory while the next backward allocates new grads.
        """
        if same:
            self._keep_grad_views = True
            return self._grad_views
        views, complete = self._views_of(grads, self._params)
        # rows: a sparse grad's indices and values change in place when it accumulates
        if self._keep_grad_views and not any(isinstance(view, RowGrad) for view in views):
            self._grad_refs, self._grad_views = grads, views
        else:
            self._grad_refs = self._grad_views = None
        self._keep_grad_views = False
        self._grads_complete = complete
        return views

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient, in one native call.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with grad enabled first).

        Returns
        -------
        The closure's loss, or None.

        Raises
        ------
        TypeError, ValueError, RuntimeError
            Naming the parameter index (``params[3]``, counted over all groups as in
            ``state_dict()``) or the group key; nothing is written when a step raises.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._current():
            self._build()
        grads = list(map(_grad_of, self._params))
        groups = self._engine_groups()
        refs = self._grad_refs
        # The same grad tensors as last step: their cached views beat reading addresses.
        same = refs is not None and all(map(is_, grads, refs))
        addresses = None if same else self._addresses_of(grads)
        try:
            if addresses is not None:
                complete = True
                applied = self._engine.step_addresses(addresses, groups, self.n_threads,
                                                      self.skip_nonfinite)
            else:
                views = self._grad_views_cached(grads, same)
                complete = self._grads_complete
                applied = self._engine.step(views, groups, self.n_threads,
                                            self.skip_nonfinite)
        except (TypeError, ValueError):
            # Nothing was written. A non-contiguous grad needs a copy: retry once with
            # careful views; any other problem raises again, named in torch's terms.
            self._clear_grad_cache()
            views = self._careful_views(grads, self._params)
            complete = not _has_none(views)
            self._explain_grads(grads)
            applied = self._engine.step(views, groups, self.n_threads, self.skip_nonfinite)
        if not applied:
            self.skipped_steps += 1
            return loss
        self._count_step(grads, complete)
        torch.autograd.graph.increment_version(self._params)
        return loss

    def _count_step(self, grads, complete):
        """Advance ``state["step"]`` of the tensors that had a gradient."""
        if complete:
            np.add(self._step_counts, 1, out=self._step_counts)
            return
        stepped = [index for index, grad in enumerate(grads) if grad is not None]
        if stepped:
            self._step_counts[stepped] += 1

    def _explain_grads(self, grads):
        """Re-raise an engine error about grads in torch's terms, when it is about them."""
        for index, (param, grad) in enumerate(zip(self._params, grads)):
            if grad is None:
                continue
            if grad.dtype != param.dtype or grad.shape != param.shape:
                raise ValueError(f"params[{index}].grad is a {grad.dtype} tensor of shape "
                                 f"{tuple(grad.shape)}; params[{index}] is {param.dtype} of "
                                 f"shape {tuple(param.shape)}")

    def zero_grad(self, set_to_none=True):
        """As :meth:`torch.optim.Optimizer.zero_grad`; with ``set_to_none`` also drops this
        optimizer's references to the old gradients."""
        if set_to_none:
            self._clear_grad_cache(keep_next=False)
        else:
            self._keep_grad_views = True      # the grads persist: their views can too
        super().zero_grad(set_to_none)

    @property
    def tensor_steps(self):
        """Step count of each parameter, in state_dict order (drives bias correction)."""
        if not self._current():
            self._build()
        return self._engine.get_tensor_steps()


def _has_none(items):
    return any(map(is_, items, repeat(None)))
