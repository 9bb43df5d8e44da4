"""Checkpoints: the state_dict checks and the ``.npz`` file format, read and written safely.

A checkpoint file is a plain ``.npz`` (no pickle): one ``state/<tensor>/<buffer>`` array per
state buffer and a JSON string under ``META_KEY`` holding the rest of the state_dict plus
the buffer layout. Reading trusts nothing in the file: every size is checked against the
live optimizer before anything is allocated, the metadata's size and nesting are bounded
before it is parsed, and every problem becomes one exception type, ``CheckpointError``.
Writing goes to a short-named temporary file beside the target and is renamed over it.
"""

import json
import os
import secrets
import stat
import zipfile

import numpy as np

from rmsprop_c._low_precision import stored_dtype
from rmsprop_c._options import (OPTIONS, check_group_options, check_option, check_step,
                                option_names, state_layout)

__all__ = ["CheckpointError", "FORMAT", "VERSION", "META_KEY", "as_path", "check_state_dict",
           "write_checkpoint", "read_checkpoint", "check_rounding"]

FORMAT = "rmsprop_c.checkpoint"
VERSION = 1
META_KEY = "__rmsprop_c_meta__"
TOP_KEYS = frozenset({"format", "format_version", "flavor", "skipped_steps", "param_groups",
                      "state"})
# Keys added after the first checkpoints, with the value an earlier version ran with.
TOP_DEFAULTS_ADDED_LATER = {"rounding": "nearest", "seed": 0}
TOP_KEYS_ADDED_LATER = frozenset(TOP_DEFAULTS_ADDED_LATER)
# A valid metadata string nests 4 deep; anything far deeper is junk, refused before parsing.
MAX_JSON_DEPTH = 16
_CHUNK = 1 << 18          # bytes per read: stays in cache, like np.load


class CheckpointError(ValueError):
    """A checkpoint (file or state_dict) that is malformed or does not fit this optimizer.

    Raised before anything is changed: the optimizer is left exactly as it was.
    """


def as_path(path):
    """``path`` (str, bytes or os.PathLike) as a str; TypeError naming it otherwise."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}") from None


def _names(keys):
    return sorted(repr(key) for key in keys)


def _is_index(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------------------------------
# state_dict checks

def check_state_dict(state_dict, *, flavor, members, layouts, live_state):
    """Check a state_dict against the live optimizer; change nothing.

    ``members``: the tensor indices of each param group;
    ``layouts``: each group's state buffer names; ``live_state``: each tensor's buffers.
    Returns ``(options, steps, skipped_steps, states)``: per group the normalised options,
    per group the step count, and per tensor the saved arrays. Raises CheckpointError.
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"a state_dict must be a dict, got {type(state_dict).__name__}")
    if not (type(state_dict.get("format")) is str and state_dict["format"] == FORMAT):
        raise CheckpointError("not an rmsprop_c optimizer state (no 'format' marker)")
    version = state_dict.get("format_version")
    if not (_is_index(version) and version == VERSION):
        raise CheckpointError(f"unsupported format_version {version!r}; this version reads "
                              f"{VERSION}")
    missing = TOP_KEYS - set(state_dict)
    unknown = set(state_dict) - TOP_KEYS - TOP_KEYS_ADDED_LATER
    if missing or unknown:
        raise CheckpointError(f"the state_dict lacks {_names(missing)} or holds unknown keys "
                              f"{_names(unknown)}")
    saved_flavor = state_dict["flavor"]
    if not (type(saved_flavor) is str and saved_flavor == flavor):
        raise CheckpointError(f"the checkpoint was saved with flavor {saved_flavor!r}, this "
                              f"optimizer uses flavor {flavor!r}; build the optimizer with "
                              f"flavor={saved_flavor!r} to load it")
    skipped = _checked(check_step, state_dict["skipped_steps"], "skipped_steps", low=0)
    saved_groups, saved_states = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, list) or not isinstance(saved_states, list):
        raise CheckpointError("'param_groups' and 'state' must be lists")
    if len(saved_groups) != len(members):
        raise CheckpointError(f"the state has {len(saved_groups)} param groups, the optimizer "
                              f"has {len(members)}")
    if len(saved_states) != len(live_state):
        raise CheckpointError(f"the state has {len(saved_states)} tensors, the optimizer has "
                              f"{len(live_state)}")
    options, steps = [], []
    for index, saved in enumerate(saved_groups):
        group_options, step = _check_group(saved, index, members[index], layouts[index])
        options.append(group_options)
        steps.append(step)
    states = [_check_tensor_state(saved, index, live_state[index])
              for index, saved in enumerate(saved_states)]
    return options, steps, skipped, states


def check_rounding(state_dict):
    """The (rounding, seed) a state_dict carries (an earlier version's: nearest, 0)."""
    def checked(name, value):
        try:
            return check_option(name, value)
        except (TypeError, ValueError) as error:
            raise CheckpointError(str(error)) from None

    return tuple(checked(key, state_dict.get(key, default))
                 for key, default in TOP_DEFAULTS_ADDED_LATER.items())


def _checked(check, value, name, **kwargs):
    try:
        return check(value, name, **kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(str(error)) from None


# Options added after the first checkpoints were written: a group without them ran with the
# registry default, so a checkpoint from an earlier version still loads exactly.
OPTIONS_ADDED_LATER = ("grad_scale", "clip_value")


def _check_group(saved, index, members, layout):
    where = f"param_groups[{index}]"
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where} must be a dict, got {type(saved).__name__}")
    defaults = {option.name: option.default for option in OPTIONS}
    saved = {**{key: defaults[key] for key in OPTIONS_ADDED_LATER}, **saved}
    expected = set(option_names()) | {"params", "step"}
    missing, unknown = expected - set(saved), set(saved) - expected
    if missing or unknown:
        raise CheckpointError(f"{where} lacks {_names(missing)} or holds unknown keys "
                              f"{_names(unknown)}")
    params = saved["params"]
    if not (isinstance(params, list) and all(_is_index(p) for p in params)
            and [int(p) for p in params] == members):
        raise CheckpointError(f"{where}['params'] is {_short(params)}, the optimizer's group "
                              f"holds params {members}")
    step = _checked(check_step, saved["step"], f"{where}['step']", low=0)
    try:
        options = check_group_options({key: saved[key] for key in option_names()},
                                      where + "['{}']")
    except (TypeError, ValueError) as error:
        raise CheckpointError(str(error)) from None
    if members and state_layout(options) != layout:
        raise CheckpointError(f"{where} needs state {state_layout(options)}, but this optimizer "
                              f"was built with {layout} (momentum, centered and amsgrad set the "
                              "state layout)")
    return options, step


def _check_tensor_state(saved, index, live):
    where = f"state[{index}]"
    if not isinstance(saved, dict) or set(saved) != set(live):
        keys = _names(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"{where} holds {keys}, expected {_names(live)}")
    for key, buffer in live.items():
        array = saved[key]
        name = f"{where}['{key}']"
        if not isinstance(array, np.ndarray) or isinstance(array, np.ma.MaskedArray):
            raise CheckpointError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
        if array.dtype != buffer.dtype:
            raise CheckpointError(f"{name} has dtype {array.dtype}, expected {buffer.dtype}")
        if array.shape != buffer.shape:
            raise CheckpointError(f"{name} has shape {array.shape}, expected {buffer.shape}")
        if array.size:
            # min and max propagate NaN: two reductions and no temporary array.
            low, high = array.min(), array.max()
            if not (np.isfinite(low) and np.isfinite(high)):
                raise CheckpointError(f"{name} holds NaN or Inf")
            if key in ("square_avg", "max_square_avg") and low < 0:
                raise CheckpointError(f"{name} holds negative values (an average of squares)")
    return saved


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------
# writing

def write_checkpoint(path, meta, arrays):
    """Write ``arrays`` and the JSON of ``meta`` to ``path`` atomically, as np.save would.

    A new file gets 0o666 & ~umask; an existing one keeps its mode; a symlink keeps pointing
    at its target, which is replaced. OSErrors name ``path``, never the temporary file.
    """
    user_path = as_path(path)
    target = os.path.realpath(user_path) if os.path.islink(user_path) else user_path
    directory = os.path.dirname(os.path.abspath(target))
    temporary = None
    try:
        mode = None
        try:
            existing = os.stat(target)
            if stat.S_ISREG(existing.st_mode):
                mode = stat.S_IMODE(existing.st_mode)
        except FileNotFoundError:
            pass
        for _ in range(100):
            # Short: a long user name plus a suffix must not pass the file-name limit.
            temporary = os.path.join(directory, f".rmsprop_c-{secrets.token_hex(6)}.tmp")
            try:
                handle = open(temporary, "xb")       # 0o666 & ~umask, like np.save
                break
            except FileExistsError:
                temporary = None
        else:
            raise FileExistsError(f"no free temporary name in {directory}")
        with handle:
            if mode is not None:
                os.chmod(handle.fileno(), mode)
            np.savez(handle, **arrays, **{META_KEY: np.array(json.dumps(meta))})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        temporary = None
        _sync_directory(directory)
    except OSError as error:
        if error.errno is not None:      # name the user's path, not the temporary file
            raise type(error)(error.errno, error.strerror, user_path) from None
        raise
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def _sync_directory(directory):
    """Make the rename durable where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------
# reading

def read_checkpoint(path, live_state, n_groups):
    """The state_dict stored in ``path``, checked against the live buffers' sizes.

    ``live_state``: each tensor's live buffers, which bound every array read from the file.
    Raises CheckpointError for anything malformed; OSError (FileNotFoundError, ...) only
    when the file cannot be opened.
    """
    user_path = as_path(path)
    handle = open(user_path, "rb")
    try:
        with handle:
            return _read(handle, live_state, n_groups)
    except CheckpointError as error:
        raise CheckpointError(f"cannot load checkpoint {user_path}: {error}") from None
    except Exception as error:    # anything a damaged zip or header can raise
        raise CheckpointError(f"cannot load checkpoint {user_path}: not a readable rmsprop_c "
                              f"checkpoint ({type(error).__name__}: {error})") from error


def _read(handle, live_state, n_groups):
    magic = handle.read(6)
    handle.seek(0)
    if magic == b"\x93NUMPY":
        raise CheckpointError("not an rmsprop_c checkpoint (an .npy array, not an .npz archive)")
    if not zipfile.is_zipfile(handle):
        raise CheckpointError("not an rmsprop_c checkpoint (not an .npz archive)")
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        infos = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or info.filename[:-4] in infos:
                raise CheckpointError(f"unexpected or repeated member {info.filename!r}")
            infos[info.filename[:-4]] = info
        if META_KEY not in infos:
            raise CheckpointError("not an rmsprop_c checkpoint (no metadata)")
        limit = 4096 + 2048 * n_groups + 256 * len(live_state)   # characters
        meta = _read_meta(archive, infos.pop(META_KEY), limit)
        layout = meta.pop("layout", None) if isinstance(meta, dict) else None
        tags = meta.pop("dtype_tags", {}) if isinstance(meta, dict) else None
        if not isinstance(tags, dict) or not all(type(v) is str for v in tags.values()):
            raise CheckpointError("malformed metadata (dtype tags)")
        if not isinstance(layout, list) or not all(
                isinstance(keys, list) and all(type(key) is str for key in keys)
                for keys in layout):
            raise CheckpointError("malformed metadata (no buffer layout)")
        if len(layout) != len(live_state):
            raise CheckpointError(f"the state has {len(layout)} tensors, the optimizer has "
                                  f"{len(live_state)}")
        expected = {f"state/{index}/{key}" for index, keys in enumerate(layout) for key in keys}
        if set(infos) - expected:
            raise CheckpointError(f"unexpected arrays {sorted(set(infos) - expected)[:8]}")
        if expected - set(infos):
            raise CheckpointError(f"lacks the arrays {sorted(expected - set(infos))[:8]}")
        states = []
        for index, keys in enumerate(layout):
            if set(keys) != set(live_state[index]) or len(keys) != len(set(keys)):
                raise CheckpointError(f"state[{index}] holds {sorted(keys)}, expected "
                                      f"{sorted(live_state[index])}")
            states.append({key: _read_array(archive, infos[f"state/{index}/{key}"],
                                            live_state[index][key], f"state[{index}]['{key}']",
                                            tags.get(f"state/{index}/{key}"))
                           for key in keys})
    meta["state"] = states
    return meta


def _read_header(member, name):
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise CheckpointError(f"{name} has an unsupported .npy version {version}")
    if dtype.hasobject:
        raise CheckpointError(f"{name} holds Python objects (a pickle); refused")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise CheckpointError(f"{name} has an invalid shape {shape}")
    return shape, fortran_order, dtype


def _read_exactly(member, nbytes, name):
    data = member.read(nbytes)
    if len(data) != nbytes or member.read(1):      # reading to the end checks the CRC
        raise CheckpointError(f"{name} does not hold the {nbytes} bytes its header declares")
    return data


def _read_array(archive, info, live, name, tag=None):
    """The array stored in ``info``; a bfloat16 one is stored as uint16 bits under ``tag``."""
    try:
        expected = stored_dtype(live, tag, name)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    with archive.open(info) as member:
        shape, fortran_order, dtype = _read_header(member, name)
        if dtype != expected:
            raise CheckpointError(f"{name} has dtype {dtype}, expected {expected}")
        if tuple(shape) != live.shape:
            raise CheckpointError(f"{name} has shape {tuple(shape)}, expected {live.shape}")
        # The size is now the live buffer's: safe to allocate. Cache-sized chunks.
        array = np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
        flat = array.reshape(-1, order="A").view(np.uint8)
        filled = 0
        while filled < flat.size:
            chunk = member.read(min(_CHUNK, flat.size - filled))
            if not chunk:
                break
            flat[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
        if filled != flat.size or member.read(1):    # reading to the end checks the CRC
            raise CheckpointError(f"{name} does not hold the {flat.size} bytes its header "
                                  "declares")
    return array.view(live.dtype)


def _read_meta(archive, info, limit):
    with archive.open(info) as member:
        shape, _, dtype = _read_header(member, "the metadata")
        if dtype.kind != "U" or shape != ():
            raise CheckpointError("malformed metadata (not a string)")
        if dtype.itemsize > 4 * limit:
            raise CheckpointError(f"metadata of {dtype.itemsize // 4} characters; at most "
                                  f"{limit} fit this optimizer")
        data = _read_exactly(member, dtype.itemsize, "the metadata")
        text = str(np.frombuffer(data, dtype=dtype)[0])
    # Bound the nesting before json.loads: the parser recurses once per level.
    if _json_depth(np.frombuffer(data, dtype=np.uint32)) > MAX_JSON_DEPTH:
        raise CheckpointError(f"malformed metadata (nested deeper than {MAX_JSON_DEPTH})")
    try:
        return json.loads(text)
    except ValueError as error:
        raise CheckpointError(f"malformed metadata ({error})") from None


def _json_depth(codes):
    """Deepest bracket nesting outside strings of JSON text given as code points (linear)."""
    if codes.size == 0:
        return 0
    positions = np.arange(codes.size)
    backslash = codes == ord("\\")
    # A quote is escaped when an odd run of backslashes precedes it.
    last_other = np.maximum.accumulate(np.where(backslash, -1, positions))
    run_before = np.empty(codes.size, dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = positions[:-1] - last_other[:-1]
    quote = (codes == ord('"')) & (run_before % 2 == 0)
    outside = (np.cumsum(quote) % 2 == 0) & ~quote
    step = (np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(codes, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(np.where(outside, step, 0)).max())
