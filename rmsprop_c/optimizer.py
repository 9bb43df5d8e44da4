"""The RMSprop optimizer object: param groups, flavors, state and checkpoints.

All the arithmetic happens in one native call per step (``_kernels.MultiTensorStep``): it
checks every grad and every group first, then updates all tensors in one parallel region.
"""

import json
import math
import os
import tempfile
import zipfile

import numpy as np

from rmsprop_c import _kernels
from rmsprop_c.flavors import FOLLOW_EPS, HYPERPARAMETERS, get_flavor

__all__ = ["RMSprop"]

CHECKPOINT_FORMAT = "rmsprop_c.checkpoint"
CHECKPOINT_VERSION = 1
STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg", "max_square_avg")
_META_KEY = "__rmsprop_c_meta__"
_GROUP_KEYS = tuple(HYPERPARAMETERS)


def _state_layout(group):
    """State buffers a group needs (fixed at construction)."""
    keys = ["square_avg"]
    if group["momentum"] > 0:
        keys.append("momentum_buffer")
    if group["centered"]:
        keys.append("grad_avg")
    if group["amsgrad"]:
        keys.append("max_square_avg")
    return keys


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
    skip_nonfinite : bool, default False
        When True, a step whose grads hold NaN or Inf changes nothing, counts
        ``skipped_steps`` and returns False.

    Notes
    -----
    ``opt.param_groups[i]["lr"] = x`` between steps takes effect on the next step; so do the
    other hyperparameters, except that the state buffers are created at construction:
    momentum, centered and amsgrad can be turned off later but only turned on if the group
    had them from the start.
    """

    def __init__(self, params, lr=None, *, alpha=None, eps=None, momentum=None,
                 centered=None, nesterov=None, weight_decay=None,
                 decoupled_weight_decay=None, maximize=None, amsgrad=None,
                 bias_correction=None, eps_in_sqrt=None, lr_in_momentum=None,
                 initial_accumulator_value=None, flavor="torch", n_threads=None,
                 skip_nonfinite=False):
        self.flavor = get_flavor(flavor)
        explicit = dict(
            lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered,
            nesterov=nesterov, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
            amsgrad=amsgrad, bias_correction=bias_correction, eps_in_sqrt=eps_in_sqrt,
            lr_in_momentum=lr_in_momentum, initial_accumulator_value=initial_accumulator_value,
        )
        self.defaults = self.flavor.resolve(explicit)
        self.n_threads = n_threads
        self.skip_nonfinite = bool(skip_nonfinite)
        self.skipped_steps = 0

        self.param_groups = []
        self._params = []
        self._group_members = []
        for group_index, group in enumerate(self._split_groups(params)):
            resolved = dict(self.defaults)
            resolved.update({key: value for key, value in group.items() if key != "params"})
            if resolved["lr"] is None:
                raise TypeError(
                    f"flavor {self.flavor.name!r} has no default learning rate: pass lr "
                    f"(or an 'lr' in param_groups[{group_index}])"
                )
            if resolved["initial_accumulator_value"] == FOLLOW_EPS:
                resolved["initial_accumulator_value"] = resolved["eps"]
            members = list(range(len(self._params), len(self._params) + len(group["params"])))
            self._params.extend(group["params"])
            self._group_members.append(members)
            resolved["params"] = list(group["params"])
            self.param_groups.append(resolved)

        self.state = []
        group_of_param = []
        for group_index, group in enumerate(self.param_groups):
            initial = group["initial_accumulator_value"]
            if not (isinstance(initial, (int, float, np.floating, np.integer))
                    and not isinstance(initial, bool) and math.isfinite(initial)
                    and initial >= 0):
                raise ValueError(
                    f"param_groups[{group_index}]['initial_accumulator_value'] must be finite "
                    f"and >= 0, got {initial!r}"
                )
            for index in self._group_members[group_index]:
                param = self._params[index]
                group_of_param.append(group_index)
                state = {}
                if isinstance(param, np.ndarray) and param.dtype in (np.float32, np.float64):
                    for key in _state_layout(group):
                        state[key] = np.zeros(param.shape, dtype=param.dtype)
                    state["square_avg"].fill(initial)
                self.state.append(state)
        # Checks every param and state buffer (dtype, contiguity, no shared memory).
        self._engine = _kernels.MultiTensorStep(
            self._params, group_of_param, self.state, len(self.param_groups))
        self._engine.check_groups(self.param_groups)

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
                unknown = set(group) - set(_GROUP_KEYS) - {"params"}
                if unknown:
                    raise ValueError(f"param_groups[{index}] has unknown keys {sorted(unknown)}; "
                                     f"known: {', '.join(_GROUP_KEYS)}")
                members = group["params"]
                members = [members] if isinstance(members, np.ndarray) else list(members)
                groups.append({**group, "params": members})
            return groups
        if any(isinstance(entry, dict) for entry in params):
            raise TypeError("params mixes arrays and param group dicts")
        return [{"params": params}]

    # -------------------------------------------------------------------------------
    def step(self, grads):
        """Apply one update to every parameter, in place, in one native call.

        Parameters
        ----------
        grads : list of numpy.ndarray
            One gradient per parameter, in the order the params were given, with the same
            shapes and dtypes (read-only arrays are fine).

        Returns
        -------
        bool
            True when the update was applied; False when ``skip_nonfinite`` and a gradient
            held NaN or Inf (nothing was changed).

        Raises
        ------
        TypeError, ValueError
            As :func:`rmsprop_c.rmsprop_step`, naming the tensor index (``grads[3]``) or the
            group key; every grad and group is checked before anything is written.
        """
        applied = self._engine.step(grads, self.param_groups, self.n_threads,
                                    self.skip_nonfinite)
        if not applied:
            self.skipped_steps += 1
        return applied

    @property
    def params(self):
        """The parameters, in step order."""
        return list(self._params)

    @property
    def steps(self):
        """Step count of each param group (drives bias correction)."""
        return self._engine.get_steps()

    # -------------------------------------------------------------------------------
    def state_dict(self):
        """A copy of the optimizer state: hyperparameters, step counts and buffers.

        Arrays are copies, not views of the live state.
        """
        steps = self._engine.get_steps()
        groups = []
        for group_index, group in enumerate(self.param_groups):
            entry = {key: group[key] for key in _GROUP_KEYS}
            entry["params"] = list(self._group_members[group_index])
            entry["step"] = steps[group_index]
            groups.append(entry)
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "flavor": self.flavor.name,
            "skipped_steps": self.skipped_steps,
            "param_groups": groups,
            "state": [{key: array.copy() for key, array in state.items()}
                      for state in self.state],
        }

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`; everything is checked before anything changes.

        Raises ValueError naming what does not match: format version, number of groups or tensors, group membership, state layout (momentum,
        centered, amsgrad), shapes, dtypes, non-finite state, hyperparameters out of range
        (TypeError only for a state_dict that is not a dict or holds non-arrays).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an rmsprop_c optimizer state (no 'format' marker)")
        if state_dict.get("format_version") != CHECKPOINT_VERSION:
            raise ValueError(f"unsupported format_version {state_dict.get('format_version')!r}; "
                             f"this version reads {CHECKPOINT_VERSION}")
        groups = state_dict.get("param_groups")
        states = state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(states, list):
            raise ValueError("state_dict needs 'param_groups' and 'state' lists")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state has {len(groups)} param groups, optimizer has "
                             f"{len(self.param_groups)}")
        if len(states) != len(self._params):
            raise ValueError(f"state has {len(states)} tensors, optimizer has "
                             f"{len(self._params)}")
        new_groups = []
        steps = []
        for group_index, (saved, current) in enumerate(zip(groups, self.param_groups)):
            where = f"param_groups[{group_index}]"
            if not isinstance(saved, dict):
                raise ValueError(f"{where} is not a dict")
            missing = set(_GROUP_KEYS) - set(saved)
            if missing:
                raise ValueError(f"{where} lacks {sorted(missing)}")
            if list(saved.get("params", ())) != self._group_members[group_index]:
                raise ValueError(f"{where} holds params {saved.get('params')}, optimizer "
                                 f"has {self._group_members[group_index]}")
            step = saved.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
                raise ValueError(f"{where}['step'] must be an integer >= 0, got {step!r}")
            merged = dict(current)
            merged.update({key: saved[key] for key in _GROUP_KEYS})
            if _state_layout(merged) != _state_layout(current):
                raise ValueError(
                    f"{where} needs state {_state_layout(merged)}, but this optimizer was built "
                    f"with {_state_layout(current)} (momentum, centered and amsgrad set the "
                    "state layout)"
                )
            new_groups.append(merged)
            steps.append(int(step))
        self._engine.check_groups(new_groups)
        for index, (saved, current) in enumerate(zip(states, self.state)):
            where = f"state[{index}]"
            if not isinstance(saved, dict) or set(saved) != set(current):
                keys = sorted(saved) if isinstance(saved, dict) else saved
                raise ValueError(f"{where} holds {keys}, expected {sorted(current)}")
            for key, live in current.items():
                array = saved[key]
                if not isinstance(array, np.ndarray):
                    raise TypeError(f"{where}['{key}'] must be a numpy.ndarray")
                if array.dtype != live.dtype:     # DESIGN: wrong dtype on load is a ValueError
                    raise ValueError(f"{where}['{key}'] has dtype {array.dtype}, "
                                     f"expected {live.dtype}")
                if array.shape != live.shape:
                    raise ValueError(f"{where}['{key}'] has shape {array.shape}, "
                                     f"expected {live.shape}")
                if not np.isfinite(array).all():
                    raise ValueError(f"{where}['{key}'] holds NaN or Inf")
        # Everything checked: now apply. Copy into the live buffers (the engine holds them).
        for saved, current in zip(states, self.state):
            for key, live in current.items():
                np.copyto(live, saved[key])
        for group, merged in zip(self.param_groups, new_groups):
            group.update({key: merged[key] for key in _GROUP_KEYS})
        self._engine.set_steps(steps)
        skipped = state_dict.get("skipped_steps", 0)
        self.skipped_steps = int(skipped) if isinstance(skipped, (int, np.integer)) else 0

    def save(self, path):
        """Write the state to ``path`` as an ``.npz`` archive (no pickle), atomically.

        The archive is written to a temporary file in the same directory and moved over
        ``path`` with ``os.replace``: an error or a crash mid-write leaves any previous file
        at ``path`` intact. ``path`` is used as given (no ``.npz`` is appended).
        """
        state = self.state_dict()
        arrays = {}
        layout = []
        for index, buffers in enumerate(state.pop("state")):
            layout.append(sorted(buffers))
            for key, array in buffers.items():
                arrays[f"state/{index}/{key}"] = array
        state["layout"] = layout
        arrays[_META_KEY] = np.array(json.dumps(state))
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        handle = tempfile.NamedTemporaryFile(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp", delete=False)
        try:
            with handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            try:
                os.unlink(handle.name)
            except OSError:
                pass
            raise

    def load(self, path):
        """Restore the state written by :meth:`save`; checks everything first.

        A truncated, foreign or mismatched file raises ValueError and leaves the optimizer
        exactly as it was.
        """
        path = os.fspath(path)
        try:
            # Our own handle: np.load leaves the file open when the zip is truncated.
            with open(path, "rb") as handle:
                archive = np.load(handle, allow_pickle=False)
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise ValueError(f"{path} is not an rmsprop_c checkpoint (not an .npz)")
                with archive:
                    names = set(archive.files)
                    if _META_KEY not in names:
                        raise ValueError(f"{path} is not an rmsprop_c checkpoint (no metadata)")
                    meta = json.loads(str(archive[_META_KEY][()]))
                    if not isinstance(meta, dict) or not isinstance(meta.get("layout"), list):
                        raise ValueError(f"{path} has malformed metadata")
                    expected = {_META_KEY}
                    states = []
                    for index, keys in enumerate(meta["layout"]):
                        if not isinstance(keys, list):
                            raise ValueError(f"{path} has malformed metadata")
                        buffers = {}
                        for key in keys:
                            name = f"state/{index}/{key}"
                            if name not in names:
                                raise ValueError(f"{path} lacks the array {name}")
                            buffers[key] = archive[name]
                            expected.add(name)
                        states.append(buffers)
                    if names != expected:
                        raise ValueError(f"{path} holds unexpected arrays {sorted(names - expected)}")
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError,
                UnicodeDecodeError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not a readable rmsprop_c checkpoint: {error}") from None
        except ValueError as error:
            # np.load refuses pickled (object) arrays with a ValueError; keep ours as they are.
            if str(error).startswith(path):
                raise
            raise ValueError(f"{path} is not a readable rmsprop_c checkpoint: {error}") from None
        meta.pop("layout")
        meta["state"] = states
        self.load_state_dict(meta)

    def __repr__(self):
        lines = [f"RMSprop(flavor={self.flavor.name!r}, n_threads={self.n_threads!r}) ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"  group {index}: {len(group['params'])} params, " + ", ".join(
                f"{key}={group[key]!r}" for key in _GROUP_KEYS))
        return "\n".join(lines + [")"])
