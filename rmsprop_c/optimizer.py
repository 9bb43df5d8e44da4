"""The RMSprop optimizer object: param groups, flavors, state and checkpoints.

All the arithmetic happens in one native call per step (``_kernels.MultiTensorStep``): it
checks every grad and every group first, then updates all tensors in one parallel region.
Every option goes through the options registry (``_options``); checkpoint checks and the
file format live in ``_checkpoint``.
"""

import bisect
import copy

import numpy as np

from rmsprop_c import _checkpoint, _kernels, _low_precision
from rmsprop_c._checkpoint import CheckpointError
from rmsprop_c._options import (check_bool, check_group_options, check_option, check_step,
                                option_names, state_layout)
from rmsprop_c.flavors import FOLLOW_EPS, get_flavor

__all__ = ["RMSprop", "StateBuffers"]

# NumPy 2 moved byte_bounds to numpy.lib.array_utils.
_byte_bounds = getattr(getattr(np.lib, "array_utils", None), "byte_bounds", None) or \
    getattr(np, "byte_bounds")


class StateBuffers(dict):
    """The state buffers of one tensor, by name: live arrays the native step updates.

    Write into a buffer in place (``opt.state[i]["square_avg"][...] = values``); replacing,
    adding or removing a buffer would detach it from the step, so it raises TypeError.
    """

    __slots__ = ()

    def _refuse(self, *args, **kwargs):
        raise TypeError("optimizer state buffers cannot be replaced, added or removed; write "
                        "into a buffer in place, e.g. opt.state[i]['square_avg'][...] = values")

    __setitem__ = __delitem__ = __ior__ = _refuse
    update = pop = popitem = clear = setdefault = _refuse

    def __reduce__(self):
        return (StateBuffers, (dict(self),))


class RMSprop:
    r"""RMSprop over NumPy arrays, updated in place by fused multi-threaded kernels.

    Per element, in the dtype of the parameter (``rmsprop_c.reference`` is the spec)::

        v = alpha * v + (1 - alpha) * g**2
        m = alpha * m + (1 - alpha) * g                      (centered)
        var = max(v - m**2, 0) if centered else v            (each / (1 - alpha**t) with bias_correction)
        den = sqrt(var + eps) if eps_in_sqrt else sqrt(var) + eps
        u = g / den  (0 where den == 0)
        p -= lr * u                     no momentum
        b = mu*b + u;      p -= lr * b  momentum, torch style
        b = mu*b + lr*u;   p -= b       momentum, lr_in_momentum (TF, Keras, optax)

    Parameters
    ----------
    params : list of numpy.ndarray, or list of dict
        The parameters (float32/float64, C-contiguous, writeable), or torch-style groups
        ``[{"params": [...], "lr": ...}, ...]``; a group's keys override the defaults.
    lr : float, optional
        Learning rate; the flavor's default when omitted (required by flavors without one).
    alpha, eps, momentum, centered, nesterov, weight_decay, decoupled_weight_decay, \
maximize, amsgrad, bias_correction, eps_in_sqrt, lr_in_momentum, initial_accumulator_value
        As in :func:`rmsprop_c.rmsprop_step`; None takes the flavor's default.
        ``initial_accumulator_value`` is where ``square_avg`` starts.
    flavor : str, default "torch"
        Framework preset: one of ``rmsprop_c.FLAVORS`` (torch, keras, tf1, optax, lasagne,
        dl4j, hinton, graves).
    n_threads : int or None
        Threads per step; None follows OpenMP's setting (``OMP_NUM_THREADS``, threadpoolctl).
    grad_scale : float, optional
        Every gradient is multiplied by it first (finite, > 0; default 1), e.g.
        ``1 / loss_scale`` in mixed-precision training. Per param group.
    clip_value : float, optional
        Then each gradient element is clamped to [-clip_value, clip_value] (> 0; NaN stays
        NaN). inf (the default): no clamp. Per param group.
    max_grad_norm : float or None, default None
        Clip by global norm: the norm of all gradients together (after grad_scale and
        clip_value) is measured, and every gradient is multiplied by
        ``min(1, max_grad_norm / (norm + 1e-6))`` inside the step, as
        ``torch.nn.utils.clip_grad_norm_`` does. For the whole optimizer, not per group.
    norm_type : 2 or inf, default 2
        The norm of ``max_grad_norm`` (and of ``last_grad_norm``).
    skip_nonfinite : bool, default False
        When True, a step whose grads hold NaN or Inf (after grad_scale) changes nothing,
        counts ``skipped_steps`` and returns False.
    duplicates : {'sum', 'sequential', 'error'}, default 'sum'
        What a row listed more than once in a :class:`rmsprop_c.RowGrad` means, as in
        :func:`rmsprop_c.rmsprop_step_rows`: its gradient rows are summed (the gradient a
        dense or coalesced sparse grad would hold), stepped once per listing (TensorFlow's
        sparse RMSProp), or refused.
    state_dtype : None, "float32", "bfloat16" or "float16"
        dtype of the state buffers of all but float64 params (None: the param's). Params
        may be bfloat16 (``ml_dtypes.bfloat16``) or float16; grads of non-float64 params
        may be any of float32, bfloat16, float16. Arithmetic is float32; see
        docs/low-precision.md.
    rounding : "nearest" or "stochastic", default "nearest"
        How bfloat16 params and state are stored: to nearest-even, or stochastically with
        bits keyed by (seed, step count, param index, element index): the same bits for
        every thread count and SIMD target.
    seed : int, default 0
        Key of the stochastic bits, in [0, 2**64); kept in checkpoints.
    param_copies : list or None
        One bfloat16/float16 array (or None) per param: receives the updated float32 param,
        rounded to nearest, in the same pass.

    Raises
    ------
    TypeError
        A boolean option that is not a ``bool`` or ``numpy.bool_`` (``maximize="False"``), a
        numeric option that is not a real number (a str, bool, complex or array), naming it.
    ValueError
        A numeric option out of range or not finite, naming it.

    Notes
    -----
    Gradients are never written: scaling and clipping happen inside the step, and the norm
    costs one extra read of the gradients. With row grads the norm reads the gradient rows
    each table applies: the summed rows (one per distinct row) with ``duplicates='sum'``,
    the listed rows with ``'sequential'``. ``opt.last_grad_norm`` holds the norm the last
    step measured (with ``max_grad_norm`` or ``skip_nonfinite``; else None), the same
    number :func:`rmsprop_c.global_grad_norm` returns, whatever the thread count.

    Numeric options accept any real number (NumPy scalars, 0-d arrays, ``Fraction``,
    ``Decimal``) and are stored as Python ``float``. ``opt.param_groups[i]["lr"] = x``
    between steps takes effect on the next step; so do the other hyperparameters, except
    that the state buffers are created at construction: momentum, centered and amsgrad can
    be turned off later but only turned on if the group had them from the start. The arrays
    in ``param_groups[i]["params"]`` are fixed at construction: replacing or adding one is
    refused at the next step. ``opt.state[i]`` maps buffer names to the live state arrays:
    write into them in place (``opt.state[i]["square_avg"][...] = x``); replacing, adding or
    removing a buffer raises TypeError. ``copy.deepcopy(opt)`` gives an independent
    optimizer over copies of the params.
    """


    def __init__(self, params, lr=None, *, alpha=None, eps=None, momentum=None,
                 centered=None, nesterov=None, weight_decay=None,
                 decoupled_weight_decay=None, maximize=None, amsgrad=None,
                 bias_correction=None, eps_in_sqrt=None, lr_in_momentum=None,
                 initial_accumulator_value=None, grad_scale=None, clip_value=None,
                 max_grad_norm=None, norm_type=2, flavor="torch", n_threads=None,
                 skip_nonfinite=False, duplicates="sum", state_dtype=None, rounding="nearest",
                 seed=0, param_copies=None):
        self.flavor = get_flavor(flavor)
        explicit = dict(
            lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered,
            nesterov=nesterov, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
            amsgrad=amsgrad, bias_correction=bias_correction, eps_in_sqrt=eps_in_sqrt,
            lr_in_momentum=lr_in_momentum, initial_accumulator_value=initial_accumulator_value,
            grad_scale=grad_scale, clip_value=clip_value,
        )
        self.defaults = self.flavor.resolve(
            {name: check_option(name, value) for name, value in explicit.items()
             if value is not None})
        if n_threads is not None:
            n_threads = check_step(n_threads, "n_threads", low=1)
        self.n_threads = n_threads
        self.skip_nonfinite = check_bool(skip_nonfinite, "skip_nonfinite")
        self.max_grad_norm = max_grad_norm
        self.norm_type = norm_type
        self.duplicates = duplicates
        self.skipped_steps = 0
        self._last_grad_norm = None
        self.state_dtype = check_option("state_dtype", state_dtype)
        self.rounding = check_option("rounding", rounding)
        self.seed = check_option("seed", seed)

        self.param_groups = []
        self._params = []
        self._group_members = []
        for group_index, group in enumerate(self._split_groups(params)):
            overrides = {key: value for key, value in group.items() if key != "params"}
            resolved = {**self.defaults, **overrides}
            if resolved["lr"] is None and "lr" not in overrides:
                raise TypeError(
                    f"flavor {self.flavor.name!r} has no default learning rate: pass lr "
                    f"(or an 'lr' in param_groups[{group_index}])"
                )
            initial = resolved["initial_accumulator_value"]
            if type(initial) is str and initial == FOLLOW_EPS and \
                    "initial_accumulator_value" not in overrides:
                resolved["initial_accumulator_value"] = resolved["eps"]
            resolved = check_group_options(resolved, f"param_groups[{group_index}]['{{}}']")
            members = list(range(len(self._params), len(self._params) + len(group["params"])))
            self._params.extend(group["params"])
            self._group_members.append(members)
            resolved["params"] = list(group["params"])
            self.param_groups.append(resolved)
        self._layouts = [state_layout(group) for group in self.param_groups]
        self._param_copies = _low_precision.check_param_copies(param_copies, self._params)

        state = []
        for group_index, group in enumerate(self.param_groups):
            for index in self._group_members[group_index]:
                param = self._params[index]
                buffers = {}
                if isinstance(param, np.ndarray) and param.dtype in _low_precision.STEPPABLE:
                    dtype = _low_precision.state_dtype_for(param, self.state_dtype, index)
                    buffers = {key: np.zeros(param.shape, dtype=dtype)
                               for key in self._layouts[group_index]}
                    buffers["square_avg"].fill(group["initial_accumulator_value"])
                state.append(StateBuffers(buffers))
        self._state = tuple(state)
        self._engine = self._build_engine()
        self._engine.check_groups(self.param_groups)

    def _build_engine(self):
        """The native stepper over ``_params`` and ``_state`` (checks every buffer)."""
        group_of_param = [0] * len(self._params)
        for group_index, members in enumerate(self._group_members):
            for index in members:
                group_of_param[index] = group_index
        engine = _kernels.MultiTensorStep(
            self._params, group_of_param,
            [dict(buffers) if twin is None else dict(buffers, param_copy=twin)
             for buffers, twin in zip(self._state, self._param_copies)],
            len(self._group_members))
        engine.set_rounding(self.rounding, self.seed)
        return engine

    @staticmethod
    def _split_groups(params):
        if isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays or of param group dicts, "
                            "not a single array (wrap it in a list)")
        params = list(params)
        if not params:
            raise ValueError("params is empty")
        if all(isinstance(entry, dict) for entry in params):
            groups = []
            for index, group in enumerate(params):
                if "params" not in group:
                    raise ValueError(f"param_groups[{index}] has no 'params'")
                unknown = set(group) - set(option_names()) - {"params"}
                if unknown:
                    raise ValueError(f"param_groups[{index}] has unknown keys {sorted(unknown)}; "
                                     f"known: {', '.join(option_names())}")
                members = group["params"]
                members = [members] if isinstance(members, np.ndarray) else list(members)
                groups.append({**group, "params": members})
            return groups
        if any(isinstance(entry, dict) for entry in params):
            raise TypeError("params mixes arrays and param group dicts")
        return [{"params": params}]

    @property
    def max_grad_norm(self):
        """The clip-by-global-norm threshold (None: off); may be changed between steps."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._max_grad_norm = check_option("max_grad_norm", value)

    @property
    def norm_type(self):
        """2.0 or inf: the norm that ``max_grad_norm`` and ``last_grad_norm`` use."""
        return self._norm_type

    @norm_type.setter
    def norm_type(self, value):
        self._norm_type = check_option("norm_type", value)

    @property
    def duplicates(self):
        """How row grads treat a row listed more than once: 'sum', 'sequential' or 'error'
        (may be changed between steps)."""
        return self._duplicates

    @duplicates.setter
    def duplicates(self, value):
        # rows: the modes of rmsprop_step_rows
        if not isinstance(value, str) or value not in _kernels._DUPLICATE_MODES:
            raise ValueError(f"duplicates must be one of 'sum', 'sequential', 'error'; "
                             f"got {value!r}")
        self._duplicates = value

    @property
    def threading(self):
        """How ``n_threads=None`` decides for this optimizer: the current choice (serial or
        parallel) and the step times behind it (see docs/threading.md)."""
        return self._engine.threading()

    @property
    def last_grad_norm(self):
        """The global gradient norm the last step measured, after grad_scale and
        clip_value and before clipping by norm: a float when that step had
        ``max_grad_norm`` or ``skip_nonfinite`` on, else None."""
        return self._last_grad_norm

    # -------------------------------------------------------------------------------
    def step(self, grads):
        """Apply one update to every parameter, in place, in one native call.

        Parameters
        ----------
        grads : list of numpy.ndarray, rmsprop_c.RowGrad or None
            One gradient per parameter, in the order the params were given, with the same
            shapes and dtypes (read-only arrays are fine). None skips the parameter (its
            state and step count stay). For a 2-D parameter, ``RowGrad(indices, rows)``
            steps only the listed rows of it and of its state (lazy rows, as
            :func:`rmsprop_c.rmsprop_step_rows`; repeated rows follow ``duplicates``); its
            step count advances and drives its bias correction.

        Returns
        -------
        bool
            True when the update was applied; False when ``skip_nonfinite`` and a gradient
            held NaN or Inf after grad_scale (nothing was changed).

        Raises
        ------
        TypeError, ValueError
            As :func:`rmsprop_c.rmsprop_step`, naming the tensor index (``grads[3]``) or the
            group key; every grad and group is checked before anything is written.
        IndexError
            A row grad's index out of range, naming it (``grads[0].indices[7]``).
        """
        applied = self._engine.step(grads, self.param_groups, self.n_threads,
                                    self.skip_nonfinite, self._max_grad_norm, self._norm_type,
                                    self._duplicates)
        self._last_grad_norm = self._engine.last_grad_norm
        if not applied:
            self.skipped_steps += 1
        return applied

    @property
    def params(self):
        """The parameters, in step order."""
        return list(self._params)

    @property
    def state(self):
        """Per parameter, in step order, its :class:`StateBuffers` (live arrays by name)."""
        return self._state

    @property
    def steps(self):
        """Step count of each param group (drives bias correction)."""
        return self._engine.get_steps()

    # -------------------------------------------------------------------------------
    def _snapshot(self):
        """The state_dict; the caller holds the engine's lock. Options are normalised."""
        steps = self._engine.get_steps()
        if len(self.param_groups) != len(self._group_members):
            raise ValueError(f"param_groups has {len(self.param_groups)} groups; it had "
                             f"{len(self._group_members)} at construction")
        groups = []
        for group_index, group in enumerate(self.param_groups):
            where = f"param_groups[{group_index}]"
            if not isinstance(group, dict):
                raise TypeError(f"{where} must be a dict, got {type(group).__name__}")
            missing = [key for key in option_names() if key not in group]
            if missing:
                raise ValueError(f"{where} lacks the key {missing[0]!r}")
            entry = check_group_options({key: group[key] for key in option_names()},
                                        where + "['{}']")
            entry["params"] = list(self._group_members[group_index])
            entry["step"] = steps[group_index]
            groups.append(entry)
        return {
            "format": _checkpoint.FORMAT,
            "format_version": _checkpoint.VERSION,
            "flavor": self.flavor.name,
            "skipped_steps": self.skipped_steps,
            "rounding": self.rounding,
            "seed": self.seed,
            "param_groups": groups,
            "state": [{key: array.copy() for key, array in buffers.items()}
                      for buffers in self._state],
        }

    def state_dict(self):
        """A copy of the optimizer state: hyperparameters, step counts and buffers.

        Arrays are copies, not views of the live state; numbers are Python ``float`` and
        ``int``, so everything but the arrays is plain JSON. Waits for a step running in
        another thread to finish, so the copy is never of a half-applied step.

        Raises
        ------
        TypeError, ValueError
            A hyperparameter set in ``param_groups`` that is not valid, naming its key.
        """
        with self._engine.exclusive():
            return self._snapshot()

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`; everything is checked before anything changes.

        The state must come from an optimizer with the same flavor, param groups, tensor
        shapes and dtypes and state layout (momentum, centered, amsgrad). A checkpoint of
        another flavor is refused, not adopted: the flavor chose defaults that the saved
        hyperparameters may not reflect.

        Raises
        ------
        rmsprop_c.CheckpointError
            (a ValueError) for anything malformed or that does not fit: format or version,
            unknown or missing keys, flavor, group or tensor count, group membership, state
            layout, array type, shape or dtype, NaN or Inf in the state, a hyperparameter
            of the wrong type or out of range, a step count outside 0..2**62. The optimizer
            is then left exactly as it was.
        """
        with self._engine.exclusive():
            self._load(state_dict)

    def _load(self, state_dict):
        options, steps, skipped, states = _checkpoint.check_state_dict(
            state_dict, flavor=self.flavor.name, members=self._group_members,
            layouts=self._layouts, live_state=self._state)
        rounding, seed = _checkpoint.check_rounding(state_dict)
        new_groups = [{**group, **group_options}
                      for group, group_options in zip(self.param_groups, options)]
        try:
            self._engine.check_groups(new_groups)
        except (TypeError, ValueError) as error:
            raise CheckpointError(str(error)) from None
        states = self._detached(states)
        # Everything checked: now apply. Copy into the live buffers (the engine holds them).
        for saved, live in zip(states, self._state):
            for key, buffer in live.items():
                np.copyto(buffer, saved[key])
        for group, group_options in zip(self.param_groups, options):
            group.update(group_options)
        self._engine.set_steps(steps)
        self._engine.set_rounding(rounding, seed)
        self.rounding, self.seed = rounding, seed
        self.skipped_steps = skipped

    def _detached(self, states):
        """``states`` with copies of the arrays that overlap a live buffer (copied in order,
        they could otherwise read a buffer already overwritten)."""
        # The live buffers are disjoint (the engine checks it), so sorted by start their ends
        # are sorted too: the last one starting before an array's end decides.
        ranges = sorted(_byte_bounds(array) for array in self._params + [
            buffer for buffers in self._state for buffer in buffers.values()] if array.size)
        starts = [start for start, _ in ranges]

        def overlaps(array):
            low, high = _byte_bounds(array)
            position = bisect.bisect_left(starts, high) - 1
            return position >= 0 and ranges[position][1] > low

        return [{key: array.copy() if array.size and overlaps(array) else array
                 for key, array in saved.items()} for saved in states]

    def save(self, path):
        """Write the state to ``path`` as an ``.npz`` archive (no pickle), atomically.

        Parameters
        ----------
        path : str, bytes or os.PathLike
            Used as given (no ``.npz`` is appended). A new file gets the permissions
            ``np.save`` would give (0o666 minus the umask); an existing file keeps its
            mode; a symlink stays a link and its target is replaced.

        Notes
        -----
        The archive is written to a temporary file in the target's directory and moved over
        it with ``os.replace``: an error or a crash mid-write leaves any previous file
        intact. Errors name ``path``. Waits for a running step to finish, then copies the
        state, so the file never holds half a step.
        """
        path = _checkpoint.as_path(path)
        with self._engine.exclusive():       # a consistent copy; the file is written after
            state = self._snapshot()
        arrays, layout = {}, []
        for index, buffers in enumerate(state.pop("state")):
            layout.append(sorted(buffers))
            for key, array in buffers.items():
                arrays[f"state/{index}/{key}"] = array
        state["layout"] = layout
        arrays, state["dtype_tags"] = _low_precision.encode_arrays(arrays)
        _checkpoint.write_checkpoint(path, state, arrays)

    def load(self, path):
        """Restore the state written by :meth:`save`; checks everything first.

        Raises
        ------
        rmsprop_c.CheckpointError
            (a ValueError) for any file that is not a valid checkpoint of this optimizer
            (truncated, damaged, foreign, pickled, mismatched); the optimizer is then left
            exactly as it was.
        OSError
            When the file cannot be opened (FileNotFoundError for a missing file).
        """
        path = _checkpoint.as_path(path)
        state = _checkpoint.read_checkpoint(path, self._state, len(self.param_groups))
        with self._engine.exclusive():
            try:
                self._load(state)
            except CheckpointError as error:
                raise CheckpointError(f"cannot load checkpoint {path}: {error}") from None

    def __deepcopy__(self, memo):
        """An independent optimizer over deep copies of the params, state and groups."""
        cls = type(self)
        duplicate = cls.__new__(cls)
        memo[id(self)] = duplicate
        with self._engine.exclusive():
            for name, value in self.__dict__.items():
                if name not in ("_engine", "_params", "_state", "param_groups",
                                "_param_copies"):
                    setattr(duplicate, name, copy.deepcopy(value, memo))
            duplicate._params = [copy.deepcopy(param, memo) for param in self._params]
            duplicate._param_copies = [None if c is None else c.copy()
                                       for c in self._param_copies]
            duplicate._state = tuple(
                StateBuffers({key: array.copy() for key, array in buffers.items()})
                for buffers in self._state)
            duplicate.param_groups = []
            for group, members in zip(self.param_groups, self._group_members):
                entry = {key: copy.deepcopy(value, memo)
                         for key, value in group.items() if key != "params"}
                entry["params"] = [duplicate._params[index] for index in members]
                duplicate.param_groups.append(entry)
            steps = self._engine.get_steps()
        duplicate._engine = duplicate._build_engine()
        duplicate._engine.set_steps(steps)
        return duplicate

    def __repr__(self):
        lines = [f"RMSprop(flavor={self.flavor.name!r}, n_threads={self.n_threads!r}, "
                 f"max_grad_norm={self._max_grad_norm!r}, norm_type={self._norm_type!r}) ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"  group {index}: {len(group['params'])} params, " + ", ".join(
                f"{key}={group.get(key)!r}" for key in option_names()))
        return "\n".join(lines + [")"])
