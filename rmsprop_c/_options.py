"""The options registry: every option of the update, in one table.

Each row says what an option is (type, range, default), which state buffer it needs when on,
and how the kernels treat it (a compile-time specialisation, a runtime scalar, or something
read only when the optimizer is built). Validation in both API paths, the group keys, the
flavors' key list, the state layout and the test grids all derive from this table: adding an
option means a row here, its line in ``reference.py``, its use in the kernel, a test value
and a benchmark.

Values are normalised on the way in: booleans accept ``bool`` and ``numpy.bool_`` only;
numbers accept real numbers (Python, NumPy scalars, 0-d arrays, ``Fraction``, ``Decimal``)
and are stored as Python ``float``/``int``, so a state_dict is plain JSON.
"""

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = ["Option", "OPTIONS", "OPTIMIZER_OPTIONS", "GROUP_KEYS", "STATE_KEYS", "MAX_STEP", "check_option",
           "check_bool", "check_real", "check_step", "check_choice", "check_int", "state_layout",
           "option_names"]

# Step counts stay far from int64 overflow in every path (functional, object, checkpoint).
MAX_STEP = 1 << 62

# State buffers in their fixed order; square_avg is always present.
STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg", "max_square_avg")


@dataclass(frozen=True)
class Option:
    """One option of the update.

    ``kind``: "bool", "real", "int" (an integer in [low, high]) or "choice" (one of
    ``choices``). ``low``/``high``: inclusive range for reals and ints (None: no bound). ``state``: the state buffer needed when the option is on (non-zero / True).
    ``kernel``: "specialised" (selects a compiled kernel variant), "runtime" (a scalar the
    kernel reads) or "construction" (used when state is created, not by the kernel).
    ``test_values``: values the kernel grid must cover (the first is the default).
    ``optional``: None is a valid value and means "off". ``allow_inf``: +inf is a valid
    value (meaning "no limit"). ``low_open``: ``low`` itself is refused (must be > low).
    """

    name: str
    kind: str
    default: Any
    doc: str
    low: Optional[float] = None
    high: Optional[float] = None
    state: Optional[str] = None
    kernel: str = "runtime"
    test_values: tuple = ()
    optional: bool = False
    allow_inf: bool = False
    low_open: bool = False
    choices: tuple = ()


OPTIONS = (
    Option("lr", "real", None, "learning rate", low=0.0,
           test_values=(0.01, 0.003)),
    Option("alpha", "real", 0.99, "smoothing constant of the squared-gradient average",
           low=0.0, high=1.0, test_values=(0.9, 0.99)),
    Option("eps", "real", 1e-8, "term added to the denominator", low=0.0,
           test_values=(1e-8, 0.0)),
    Option("momentum", "real", 0.0, "momentum factor", low=0.0, state="momentum_buffer",
           kernel="specialised", test_values=(0.0, 0.9)),
    Option("centered", "bool", False, "normalise by the estimated variance", state="grad_avg",
           kernel="specialised", test_values=(False, True)),
    Option("nesterov", "bool", False, "Nesterov momentum", test_values=(False, True)),
    Option("weight_decay", "real", 0.0, "weight decay coefficient", low=0.0,
           kernel="specialised", test_values=(0.0, 0.05)),
    Option("decoupled_weight_decay", "bool", False,
           "decay the params directly (p -= lr*wd*p) instead of adding wd*p to the gradient",
           kernel="specialised", test_values=(False, True)),
    Option("maximize", "bool", False, "ascend instead of descend", test_values=(False, True)),
    Option("amsgrad", "bool", False, "use the running maximum of the variance",
           state="max_square_avg", kernel="specialised", test_values=(False, True)),
    Option("bias_correction", "bool", False, "divide the averages by 1 - alpha**t",
           kernel="specialised", test_values=(False, True)),
    Option("eps_in_sqrt", "bool", False, "sqrt(v + eps) instead of sqrt(v) + eps",
           test_values=(False, True)),
    Option("lr_in_momentum", "bool", False,
           "the momentum buffer accumulates lr*u (TF, Keras, optax) instead of u (torch)",
           kernel="specialised", test_values=(False, True)),
    Option("grad_scale", "real", 1.0, "multiply every gradient by this first (e.g. 1/loss_scale)",
           low=0.0, low_open=True, test_values=(1.0, 0.3)),
    Option("clip_value", "real", math.inf,
           "clamp each scaled gradient element to [-clip_value, clip_value] (inf: no clamp)",
           low=0.0, low_open=True, allow_inf=True, test_values=(math.inf, 0.5)),
    Option("initial_accumulator_value", "real", 0.0, "where square_avg starts", low=0.0,
           kernel="construction", test_values=(0.0, 1.0)),
)

# Options of the whole optimizer, not of a param group: the gradient norm is global (one
# norm over every tensor), so its threshold and kind cannot differ between groups. The step
# reads them from RMSprop's constructor arguments, never from param_groups.
OPTIMIZER_OPTIONS = (
    Option("max_grad_norm", "real", None,
           "rescale all gradients by min(1, max_grad_norm / (norm + 1e-6)) (None: off)",
           low=0.0, low_open=True, optional=True, test_values=(None, 1.0)),
    Option("norm_type", "real", 2.0, "the norm of max_grad_norm: 2 or inf",
           test_values=(2.0, math.inf)),
    # Low precision: state dtype (None: the param's; bfloat16 state for float32 or bfloat16
    # params), how low-precision stores round, and the key of the stochastic bits.
    Option("state_dtype", "choice", None,
           "dtype of the state buffers of non-float64 params: None (the param's), "
           "'float32', 'bfloat16' or 'float16'", optional=True, kernel="construction",
           choices=("float32", "bfloat16", "float16"),
           test_values=(None, "float32", "bfloat16", "float16")),
    Option("rounding", "choice", "nearest",
           "how bfloat16 params and state are stored: 'nearest' (even) or 'stochastic' "
           "(float16 stores always round to nearest)",
           choices=("nearest", "stochastic"), test_values=("nearest", "stochastic")),
    Option("seed", "int", 0, "key of the stochastic rounding bits (with step, tensor, element)",
           low=0, high=(1 << 64) - 1, test_values=(0, 12345)),
)

_BY_NAME = {option.name: option for option in OPTIONS}
_ANY_SCOPE = {**_BY_NAME, **{option.name: option for option in OPTIMIZER_OPTIONS}}

# The keys of a param group that a step reads (construction-only options excluded).
GROUP_KEYS = tuple(option.name for option in OPTIONS if option.kernel != "construction")


def option_names():
    """Every option name, in registry order."""
    return tuple(_BY_NAME)


def check_bool(value, name):
    """``value`` as a Python bool; TypeError naming ``name`` unless bool or numpy.bool_."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _as_float(value, name):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool {value!r}")
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise TypeError(f"{name} must be a real number, got an array of shape {value.shape}")
        value = value[()]
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a real number, got bool {value!r}")
    if isinstance(value, (complex, np.complexfloating)) or not (
            isinstance(value, (numbers.Real, np.integer, np.floating))
            or type(value).__name__ == "Decimal"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError) as error:
        raise ValueError(f"{name} cannot be represented as a float: {value!r} ({error})") \
            from None


def check_real(value, name, low=None, high=None, low_open=False, allow_inf=False):
    """``value`` as a finite Python float in [low, high] (low excluded when ``low_open``;
    +inf accepted when ``allow_inf``); TypeError/ValueError naming it."""
    number = _as_float(value, name)
    if allow_inf and number == math.inf:
        return number
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low_open and low is not None and number <= low:
        raise ValueError(f"{name} must be > {low:g}, got {value!r}")
    if low is not None and high is not None and not (low <= number <= high):
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
    if low is not None and number < low:
        raise ValueError(f"{name} must be >= {low:g}, got {value!r}")
    if high is not None and number > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value!r}")
    return number


def _as_int(value, name):
    """``value`` as a Python int (NumPy integers and 0-d arrays too, never a bool)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") \
            from None


def check_step(value, name="step", low=1):
    """``value`` as a Python int in [low, MAX_STEP]; TypeError/ValueError naming it."""
    number = _as_int(value, name)
    if number < low:
        raise ValueError(f"{name} must be >= {low}, got {number}")
    if number > MAX_STEP:
        raise ValueError(f"{name} must be <= 2**62, got {number}")
    return number


def check_norm_type(value, name="norm_type"):
    """2 or inf (any real spelling, and the strings "inf"/"2"), as a Python float."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "2"):
        value = float(value)
    number = _as_float(value, name)
    if number not in (2.0, math.inf):
        raise ValueError(f"{name} must be 2 or inf, got {value!r}")
    return number


def check_choice(value, name, choices):
    """``value`` if it is one of the strings ``choices``; TypeError/ValueError naming it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(map(repr, choices))}; "
                        f"got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_int(value, name, low, high):
    """``value`` as a Python int in [low, high]; TypeError/ValueError naming it."""
    number = _as_int(value, name)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {number}")
    return number


def check_option(name, value, where=None):
    """The normalised value of option ``name``; errors name ``where`` (default: the name).

    Optional options accept None (off)."""
    option = _ANY_SCOPE[name]
    label = where or name
    if option.optional and value is None:
        return None
    if option.kind == "choice":
        if name == "state_dtype" and not isinstance(value, str):
            value = _dtype_name(value, label)
        return check_choice(value, label, option.choices)
    if option.kind == "int":
        return check_int(value, label, option.low, option.high)
    if option.kind == "bool":
        return check_bool(value, label)
    if name == "norm_type":
        return check_norm_type(value, label)
    return check_real(value, label, option.low, option.high, option.low_open,
                      option.allow_inf)


def _dtype_name(value, name):
    """'float32' or 'bfloat16' from a dtype-like (numpy.float32, ml_dtypes.bfloat16, ...)."""
    try:
        return np.dtype(value).name
    except TypeError:
        raise TypeError(f"{name} must be None, 'float32', 'bfloat16' or 'float16', got "
                        f"{type(value).__name__} {value!r}") from None


def check_group_options(values, where_format="{}"):
    """Normalise every option present in the mapping ``values``; returns a new dict.

    ``where_format`` turns a key into the name errors use, e.g. "param_groups[0]['{}']".
    """
    checked = {}
    for key, value in values.items():
        if key in _BY_NAME:
            checked[key] = check_option(key, value, where_format.format(key))
        else:
            checked[key] = value
    if checked.get("bias_correction") and checked.get("alpha") == 1.0:
        raise ValueError(f"{where_format.format('alpha')} must be < 1 with bias_correction "
                         "(1 - alpha**t would be 0)")
    return checked


def state_layout(group):
    """The state buffers a group of options needs, in STATE_KEYS order."""
    needed = {"square_avg"}
    for option in OPTIONS:
        if option.state is not None and group.get(option.name, option.default):
            needed.add(option.state)
    return [key for key in STATE_KEYS if key in needed]
