"""Low-precision helpers of the optimizer object: state dtypes, param copies, checkpoints.

bfloat16 arrays are NumPy arrays of ``ml_dtypes.bfloat16``; float16 is NumPy's own. The
arithmetic lives in the kernels (``src/lowp_body.hpp``); here are the rules the optimizer
applies when it builds state and writes or reads checkpoints.
"""

import numpy as np

try:                                    # bfloat16 arrays exist only with ml_dtypes
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:                     # pragma: no cover - ml_dtypes is a test dependency
    BFLOAT16 = None

__all__ = ["BFLOAT16", "STEPPABLE", "state_dtype_for", "check_param_copies", "encode_arrays",
           "stored_dtype"]

# Param dtypes the step takes (bfloat16 only with ml_dtypes installed).
STEPPABLE = tuple(d for d in (np.dtype(np.float32), np.dtype(np.float64), BFLOAT16,
                              np.dtype(np.float16)) if d is not None)
# How a bfloat16 array is stored in a checkpoint: its bits as uint16, with a dtype tag.
_TAG = "bfloat16"


def _named(name):
    if name == "bfloat16":
        if BFLOAT16 is None:
            raise TypeError("state_dtype='bfloat16' needs the ml_dtypes package")
        return BFLOAT16
    return np.dtype(name)


def state_dtype_for(param, state_dtype, index):
    """The dtype of params[index]'s state: the param's (``state_dtype`` None), or the named
    one ("float32", "bfloat16" or "float16") for the other params; float64 params keep
    float64 state (their arithmetic is float64)."""
    if state_dtype is None or param.dtype == np.float64:
        return param.dtype
    return _named(state_dtype)


def check_param_copies(param_copies, params):
    """``param_copies`` as a list with one entry (array or None) per param."""
    if param_copies is None:
        return [None] * len(params)
    if isinstance(param_copies, np.ndarray) or not isinstance(param_copies, (list, tuple)):
        raise TypeError("param_copies must be a list with one array (or None) per param, got "
                        f"{type(param_copies).__name__}")
    if len(param_copies) != len(params):
        raise ValueError(f"param_copies has {len(param_copies)} entries, but there are "
                         f"{len(params)} params")
    return list(param_copies)


def encode_arrays(arrays):
    """(arrays, tags): bfloat16 arrays as their uint16 bits, tagged by name (no pickle)."""
    encoded, tags = {}, {}
    for name, array in arrays.items():
        if BFLOAT16 is not None and array.dtype == BFLOAT16:
            encoded[name] = array.view(np.uint16)
            tags[name] = _TAG
        else:
            encoded[name] = array
    return encoded, tags


def stored_dtype(live, tag, name):
    """The dtype a checkpoint stores for the live buffer ``live`` under ``tag``."""
    tagged = BFLOAT16 is not None and live.dtype == BFLOAT16
    if tag is not None and (tag != _TAG or not tagged):
        raise ValueError(f"{name} is tagged {tag!r}, but the live buffer has dtype "
                         f"{live.dtype}")
    if tagged and tag is None:
        raise ValueError(f"{name} lacks its bfloat16 tag (the live buffer is bfloat16)")
    return np.dtype(np.uint16) if tagged else live.dtype
