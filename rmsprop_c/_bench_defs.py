"""What the benchmarks measure: variants, sizes, model shapes, traffic and the same-traffic pairing.

``python -m rmsprop_c bench`` and the asv suite (``asv_bench/``, which imports this module from
the installed package) both build their cases here, so the two always time the same thing.

The same-traffic kernel (``_kernels.same_traffic_step``: ``state += grad`` for every state
buffer a variant touches, ``param += grad``) is each case's yardstick: out of cache its time is
the memory-bandwidth ceiling of that variant (DESIGN.md, "Performance yardstick"). Model-shaped
tensor lists are paired with that kernel over ONE flat buffer of the same total size.
"""

import math

import numpy as np

from rmsprop_c import _kernels
from rmsprop_c._options import STATE_KEYS, state_layout

KIB = 1024
MIB = 1024 * 1024

# torch's defaults: every benchmark steps with these.
HYPERPARAMETERS = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}
MOMENTUM = 0.9

# Variant name -> the options that switch it on (its state buffers follow from the registry).
VARIANTS = {
    "plain": {},
    "momentum": {"momentum": MOMENTUM},
    "centered": {"centered": True},
    "centered+momentum": {"centered": True, "momentum": MOMENTUM},
    "amsgrad": {"amsgrad": True},
}
# Every state buffer at once (the most a step can touch): memory benchmarks, not the sweep.
EVERY_STATE = "centered+momentum+amsgrad"
OPTIONS_OF = {**VARIANTS,
              EVERY_STATE: {"centered": True, "momentum": MOMENTUM, "amsgrad": True}}
DTYPES = {"float32": np.float32, "float64": np.float64}

LATENCY_SIZE = 1024              # a single small tensor: the fixed cost of a call
SIMD_SIZE = 64 * KIB             # in cache on one thread: the ISA shows
MANY_TENSORS = (4096, 256)       # 4096 tensors of 256 elements: the per-tensor cost shows
ADAGRAD_SIZE = 16 * MIB          # one large tensor against torch's fused Adagrad (20 B/element)

# Training-loop sizes: the demo's MLP, a 512x512 layer, 1M and the 148-tensor transformer.
LOOP_SIZES = (17_541, 262_144, MIB, 11_705_856)
LOOP_MATMUL = 512                # the NumPy matmul (threaded BLAS) between two steps
LOOP_SLEEP = 0.02                # idle seconds between two steps


def state_keys(variant):
    """State buffers ``variant`` reads and writes besides ``square_avg``, in registry order."""
    return tuple(key for key in state_layout(OPTIONS_OF[variant]) if key != "square_avg")


def bytes_per_element(variant, dtype):
    """Bytes a step moves per element: read p, g, v and write p, v; +read+write per extra state."""
    return np.dtype(dtype).itemsize * (5 + 2 * len(state_keys(variant)))


def format_size(size):
    """1024 -> '1K', 17541 -> '17.5K', 11705856 -> '11.7M'."""
    for unit, scale in (("M", MIB), ("K", KIB)):
        if size >= scale:
            if size % scale == 0:
                return f"{size // scale}{unit}"
            digits = 1 if size < 100 * scale else 0
            return f"{size / scale:.{digits}f}{unit}"
    return str(size)


# ---------------------------------------------------------------------------------------
# Model shapes


def mlp_shapes():
    """784-256-128-10: 6 tensors, 235,146 parameters (in cache)."""
    return [(784, 256), (256,), (256, 128), (128,), (128, 10), (10,)]


def transformer_shapes(layers=12, width=256, vocabulary=8192, context=512, hidden=1024):
    """148 tensors, 11,705,856 parameters: embeddings, 12 blocks of 12 tensors, a final norm.

    Each norm is a LayerNorm's weight and bias (two tensors of ``width``): the reading that
    gives exactly 148 tensors.
    """
    shapes = [(vocabulary, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,)]                       # norm 1: weight, bias
        shapes += [(width, 3 * width), (3 * width,)]         # qkv
        shapes += [(width, width), (width,)]                 # attention projection
        shapes += [(width,), (width,)]                       # norm 2: weight, bias
        shapes += [(width, hidden), (hidden,)]               # fc in
        shapes += [(hidden, width), (width,)]                # fc out
    shapes += [(width,), (width,)]                           # final norm
    return shapes


def many_tensor_shapes(count=MANY_TENSORS[0], size=MANY_TENSORS[1]):
    return [(size,)] * count


MODELS = {"mlp": mlp_shapes, "transformer": transformer_shapes}


def model_size(shapes):
    return sum(math.prod(shape) for shape in shapes)


# A wrong shape list must not go unnoticed: the published figures name these totals.
assert len(transformer_shapes()) == 148 and model_size(transformer_shapes()) == 11_705_856
assert len(mlp_shapes()) == 6 and model_size(mlp_shapes()) == 235_146
assert model_size(transformer_shapes()) == LOOP_SIZES[-1]


# ---------------------------------------------------------------------------------------
# Buffers

# Seeded draws per array; larger arrays repeat them (drawing 10^7 values costs more than the
# steps timed on them, and no kernel's speed depends on the values).
FILL_BLOCK = 1 << 16


def seeded_array(rng, shape, dtype, low, high):
    """Uniform values in [low, high), every element (so every page) written."""
    array = np.empty(shape, dtype=dtype)
    flat = array.reshape(-1)
    block = min(flat.size, FILL_BLOCK)
    flat[:block] = rng.uniform(low, high, block)
    filled = block
    while filled < flat.size:
        count = min(filled, flat.size - filled)
        flat[filled:filled + count] = flat[:count]
        filled += count
    return array


def new_param(rng, shape, dtype):
    return seeded_array(rng, shape, dtype, -1.0, 1.0)


def new_grad(rng, shape, dtype):
    # Positive grads keep the same-traffic kernel's `state += grad` finite and normal.
    return seeded_array(rng, shape, dtype, 1e-3, 2e-3)


class Buffers:
    """One flat tensor, its grad and state buffers; the step and its same-traffic twin.

    ``keys`` are the state buffers besides ``square_avg`` (default: those of ``variant``;
    ``STATE_KEYS[1:]`` serves every variant, since a step leaves the others alone).
    """

    def __init__(self, size, dtype, variant="plain", rng=None, keys=None):
        rng = np.random.default_rng(0) if rng is None else rng
        self.size = size
        self.dtype = np.dtype(dtype)
        self.param = new_param(rng, (size,), dtype)
        self.grad = new_grad(rng, (size,), dtype)
        keys = state_keys(variant) if keys is None else keys
        # square_avg positive, as in a run in progress; max_square_avg starts where a fresh
        # optimizer's does, so a first step visibly raises it.
        self.state = {"square_avg": seeded_array(rng, (size,), dtype, 1e-4, 1e-3)}
        for key in keys:
            self.state[key] = np.full(size, 0.0, dtype) if key == "max_square_avg" else \
                seeded_array(rng, (size,), dtype, -1e-3, 1e-3)

    def variant_state(self, variant):
        """Name -> array of the state buffers ``variant`` uses besides ``square_avg``."""
        return {key: self.state[key] for key in state_keys(variant)}

    def writable(self, variant):
        """Every buffer a step of ``variant`` writes."""
        return {"param": self.param, "square_avg": self.state["square_avg"],
                **self.variant_state(variant)}

    def step_call(self, variant, n_threads):
        """A no-argument callable: one ``rmsprop_step`` of ``variant`` on these buffers."""
        step = _kernels.rmsprop_step
        p, g, v = self.param, self.grad, self.state["square_avg"]
        if variant == "plain":
            lr, alpha, eps = (HYPERPARAMETERS[key] for key in ("lr", "alpha", "eps"))
            # Literal keywords, as user code writes them: unpacking a dict per call costs
            # about a third of a 1024-element step.
            return lambda: step(p, g, v, lr=lr, alpha=alpha, eps=eps, n_threads=n_threads)
        keywords = {**HYPERPARAMETERS, **OPTIONS_OF[variant], **self.variant_state(variant),
                    "n_threads": n_threads}
        return lambda: step(p, g, v, **keywords)

    def traffic_call(self, variant, n_threads):
        """The same-traffic kernel over exactly the buffers ``variant`` reads and writes."""
        same_traffic = _kernels.same_traffic_step
        p, g, v = self.param, self.grad, self.state["square_avg"]
        extra = {key: self.state.get(key) if key in state_keys(variant) else None
                 for key in STATE_KEYS[1:]}
        return lambda: same_traffic(p, g, v, **extra, n_threads=n_threads)


def model_arrays(shapes, dtype, rng):
    """Seeded params and grads of the given shapes."""
    params = [new_param(rng, shape, dtype) for shape in shapes]
    grads = [new_grad(rng, shape, dtype) for shape in shapes]
    return params, grads


def make_optimizer(params, variant="plain", n_threads=None):
    """``rmsprop_c.RMSprop`` over ``params``: the benchmark hyperparameters, state faulted in."""
    from rmsprop_c.optimizer import RMSprop

    optimizer = RMSprop(params, **HYPERPARAMETERS, **OPTIONS_OF[variant], n_threads=n_threads)
    for state in optimizer.state:
        for array in state.values():
            array.fill(0.0)            # the torch flavor's start; np.zeros maps pages lazily
    return optimizer


class ModelCase:
    """``RMSprop.step`` over a list of tensors, and the flat same-traffic buffer it pairs with."""

    def __init__(self, shapes, dtype, variant="plain", n_threads=None, rng=None, flat=True):
        rng = np.random.default_rng(0) if rng is None else rng
        self.variant = variant
        self.params, self.grads = model_arrays(shapes, dtype, rng)
        self.optimizer = make_optimizer(self.params, variant, n_threads)
        self.n_elements = model_size(shapes)
        self.flat = Buffers(self.n_elements, dtype, variant, rng) if flat else None

    def select(self, variant):
        """Step ``variant`` from now on: its options switched on, the others off.

        The state buffers are made at construction: build with ``EVERY_STATE`` to serve every
        variant (a step leaves the buffers of switched-off options alone).
        """
        options = OPTIONS_OF[variant]
        for group in self.optimizer.param_groups:
            group["momentum"] = options.get("momentum", 0.0)
            group["centered"] = options.get("centered", False)
            group["amsgrad"] = options.get("amsgrad", False)
        self.variant = variant

    def step_call(self):
        step, grads = self.optimizer.step, self.grads
        return lambda: step(grads)

    def traffic_call(self, n_threads):
        return self.flat.traffic_call(self.variant, n_threads)

    def writable(self):
        """Name -> array of every param and state buffer a step of the variant must write."""
        keys = ("square_avg",) + state_keys(self.variant)
        arrays = {f"params[{i}]": param for i, param in enumerate(self.params)}
        for index, state in enumerate(self.optimizer.state):
            arrays.update({f"state[{index}][{key!r}]": state[key] for key in keys})
        return arrays


def section_sizes(quick):
    """Timing settings, the out-of-cache size and the transformer of a section measured at
    16M elements (1M, two layers and fewer repeats when ``quick``)."""
    settings = {"repeats": 3 if quick else 9, "min_time": 0.02 if quick else 0.2}
    size = 1 << 20 if quick else 1 << 24
    transformer = transformer_shapes(layers=2) if quick else transformer_shapes()
    return settings, size, transformer
