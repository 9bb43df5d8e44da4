"""Shared parameters, model shapes and data builders of the benchmark suite.

Nothing here is a benchmark (no name starts with ``time_``, ``track_``, ``peakmem_`` or
``mem_``); the benchmark modules import it.

Notes
-----
asv_runner (0.3) re-runs ``setup`` before every timed call (asv#966), and runs every
parameter combination in its own forked process. Building and filling a 10^7-element
buffer set takes longer than stepping it a hundred times, so :func:`build_once` keeps the
data of the current combination for the rest of its process: setup builds it (seeded)
the first time and reuses it afterwards. Reusing stepped state does not change a step's
cost: the kernels have no data-dependent branches, and the state stays finite and normal.

Model shapes
------------
``mlp``: 784x256, 256, 256x128, 128, 128x10, 10 (235,146 parameters, 6 tensors).

``transformer``: 12 layers of width 256 (148 tensors, 11,705,856 parameters)::

    embedding 8192x256, positions 512x256
    per layer: attention norm (weight 256, bias 256), qkv 256x768 + bias 768,
               proj 256x256 + bias 256, MLP norm (weight 256, bias 256),
               fc 256x1024 + bias 1024, fc 1024x256 + bias 256
    final norm (weight 256, bias 256)

Each norm is a LayerNorm with a weight and a bias (the "2 norms" of the performance issue
are those two tensors): 2 + 12 * 12 + 2 = 148 tensors, which fixes the interpretation.
"""

import math

import numpy as np

import rmsprop_c

SEED = 20240917

DTYPES = ["float32", "float64"]
SIZES = [1_000, 100_000, 10_000_000]
LARGE_SIZE = 10_000_000
LATENCY_SIZE = 1024

# "all" is n_threads=None: OpenMP's own setting (OMP_NUM_THREADS, threadpoolctl limits).
THREAD_SETTINGS = [1, 2, "all"]

# Hyperparameters every benchmark steps with (torch defaults, a typical learning rate).
HYPERPARAMETERS = {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8}

# Variant name -> (options of rmsprop_step / RMSprop, state buffers besides square_avg).
VARIANTS = {
    "plain": ({}, ()),
    "momentum": ({"momentum": 0.9}, ("momentum_buffer",)),
    "centered": ({"centered": True}, ("grad_avg",)),
    "centered+momentum": ({"centered": True, "momentum": 0.9},
                          ("momentum_buffer", "grad_avg")),
    "amsgrad": ({"amsgrad": True}, ("max_square_avg",)),
}
VARIANT_NAMES = list(VARIANTS)


def n_threads_of(setting):
    """The ``n_threads`` argument of a THREAD_SETTINGS entry ("all" -> None)."""
    return None if setting == "all" else int(setting)


def _transformer_shapes(n_layers=12, width=256, vocab=8192, context=512, hidden=1024):
    shapes = [(vocab, width), (context, width)]
    for _ in range(n_layers):
        shapes += [(width,), (width,)]                    # attention LayerNorm weight, bias
        shapes += [(width, 3 * width), (3 * width,)]      # qkv
        shapes += [(width, width), (width,)]              # attention output projection
        shapes += [(width,), (width,)]                    # MLP LayerNorm weight, bias
        shapes += [(width, hidden), (hidden,)]            # fc in
        shapes += [(hidden, width), (width,)]             # fc out
    shapes += [(width,), (width,)]                        # final LayerNorm weight, bias
    return shapes


MODEL_SHAPES = {
    "mlp": [(784, 256), (256,), (256, 128), (128,), (128, 10), (10,)],
    "transformer": _transformer_shapes(),
}
MODEL_NAMES = list(MODEL_SHAPES)


def model_size(model):
    """Total parameter count of a model in MODEL_SHAPES."""
    return sum(math.prod(shape) for shape in MODEL_SHAPES[model])


# The performance issue's figures; a wrong shape list must not go unnoticed.
assert len(MODEL_SHAPES["mlp"]) == 6 and model_size("mlp") == 235_146
assert len(MODEL_SHAPES["transformer"]) == 148 and model_size("transformer") == 11_705_856


def bytes_per_step(n_elements, dtype, variant):
    """Bytes a step moves: read p, g, v; write p, v; read+write each extra state buffer."""
    extra_buffers = len(VARIANTS[variant][1])
    return n_elements * np.dtype(dtype).itemsize * (5 + 2 * extra_buffers)


# ---------------------------------------------------------------------------------------
# Data: built once per process (see the module notes), seeded, every page written.

_built = {}


def build_once(key, build):
    """``build()``'s result for ``key``, built on first use in this process.

    Holds one key at a time, so a process that runs several combinations does not
    accumulate their buffers.
    """
    if key not in _built:
        _built.clear()
        _built[key] = build()
    return _built[key]


def new_rng():
    """The seeded generator every data builder starts from."""
    return np.random.default_rng(SEED)


# Seeded draws per array; larger arrays repeat them (drawing 10^7 values costs more than
# the steps timed on them, and the kernels' speed does not depend on the values).
FILL_BLOCK = 1 << 16


def seeded_array(rng, shape, dtype, scale, positive=False):
    """``scale`` x standard normal (or uniform [0, 1) if ``positive``) seeded values.

    Writes every element, so every page is resident before anything is measured.
    """
    array = np.empty(shape, dtype=dtype)
    flat = array.reshape(-1)
    block = min(flat.size, FILL_BLOCK)
    draws = rng.random(block, dtype=dtype) if positive else rng.standard_normal(block, dtype=dtype)
    np.multiply(draws, scale, out=flat[:block], casting="same_kind")
    filled = block
    while filled < flat.size:
        count = min(filled, flat.size - filled)
        flat[filled:filled + count] = flat[:count]
        filled += count
    return array


def filled_state(rng, shape, dtype, state_keys):
    """``square_avg`` and the buffers in ``state_keys``, filled like a run in progress.

    ``square_avg`` is positive; ``max_square_avg`` starts at 0, as in a fresh optimizer, so
    the first step visibly updates it (it only ever grows).
    """
    state = {"square_avg": seeded_array(rng, shape, dtype, 1e-2, positive=True)}
    for key in state_keys:
        if key == "max_square_avg":
            state[key] = np.full(shape, 0.0, dtype=dtype)
        else:
            state[key] = seeded_array(rng, shape, dtype, 1e-3)
    return state


ALL_STATE_KEYS = ("momentum_buffer", "grad_avg", "max_square_avg")
# Options that make RMSprop allocate every state buffer (variants switch them off later).
ALL_STATE_OPTIONS = {"momentum": 0.9, "centered": True, "amsgrad": True}


class BufferSet:
    """One tensor, its grad and state buffers, and the arguments of each variant's step.

    ``state_keys`` are the buffers besides ``square_avg``: those of one variant
    (:meth:`for_variant`), or ``ALL_STATE_KEYS`` to serve every variant (a variant's step
    leaves the other buffers alone).
    """

    def __init__(self, dtype, size, state_keys):
        rng = new_rng()
        self.param = seeded_array(rng, (size,), dtype, 1.0)
        self.grad = seeded_array(rng, (size,), dtype, 0.1)
        self.state = filled_state(rng, (size,), dtype, state_keys)

    @classmethod
    def for_variant(cls, dtype, size, variant):
        """The buffers ``variant`` needs, and no others."""
        return cls(dtype, size, VARIANTS[variant][1])

    def state_buffers(self, variant):
        """Name -> array of the state buffers ``variant`` uses besides ``square_avg``."""
        return {key: self.state[key] for key in VARIANTS[variant][1]}

    def step_args(self, variant, n_threads):
        """(args, kwargs) of ``rmsprop_step`` for ``variant``."""
        kwargs = {**HYPERPARAMETERS, **VARIANTS[variant][0], **self.state_buffers(variant),
                  "n_threads": n_threads}
        return (self.param, self.grad, self.state["square_avg"]), kwargs

    def traffic_args(self, variant, n_threads):
        """(args, kwargs) of ``same_traffic_step`` touching the buffers of ``variant``."""
        kwargs = {**self.state_buffers(variant), "n_threads": n_threads}
        return (self.param, self.grad, self.state["square_avg"]), kwargs

    def writable(self, variant):
        """Name -> array of every buffer a step of ``variant`` must write."""
        return {"param": self.param, "square_avg": self.state["square_avg"],
                **self.state_buffers(variant)}


class ModelCase:
    """A model's params and grads (seeded) under an ``RMSprop`` optimizer.

    With ``variant=None`` the optimizer holds every state buffer and :meth:`select`
    switches between variants (state buffers are made at construction; options can be
    turned off per step).
    """

    def __init__(self, model, dtype, variant, n_threads):
        rng = new_rng()
        self.params = [seeded_array(rng, shape, dtype, 1.0) for shape in MODEL_SHAPES[model]]
        self.grads = [seeded_array(rng, shape, dtype, 0.1) for shape in MODEL_SHAPES[model]]
        options = ALL_STATE_OPTIONS if variant is None else VARIANTS[variant][0]
        self.optimizer = rmsprop_c.RMSprop(self.params, **HYPERPARAMETERS, **options,
                                           n_threads=n_threads)
        for state in self.optimizer.state:
            for array in state.values():
                array.fill(0.0)           # torch flavor: all start at 0; np.zeros pages are
                                          # mapped lazily, so fault them in now
        self.n_elements = sum(param.size for param in self.params)
        self.variant = variant

    def select(self, variant, n_threads):
        """Step ``variant`` with ``n_threads`` from now on (needs ``variant=None`` at build)."""
        options = VARIANTS[variant][0]
        group = self.optimizer.param_groups[0]
        group["momentum"] = options.get("momentum", 0.0)
        group["centered"] = options.get("centered", False)
        group["amsgrad"] = options.get("amsgrad", False)
        self.optimizer.n_threads = n_threads
        self.variant = variant

    def writable(self):
        """Name -> array of every param and state buffer a step of the variant must write."""
        keys = ("square_avg",) + VARIANTS[self.variant][1]
        arrays = {f"params[{i}]": param for i, param in enumerate(self.params)}
        for index, state in enumerate(self.optimizer.state):
            arrays.update({f"state[{index}][{key!r}]": state[key] for key in keys})
        return arrays


# ---------------------------------------------------------------------------------------
# Checks that a benchmark calls what its name says.

def _sample(array, n_samples=1024):
    """A strided copy of ~n_samples elements spread over the whole array (all threads' ranges)."""
    flat = array.reshape(-1)
    return flat[::max(1, flat.size // n_samples)].copy()


def assert_step_writes(step, arrays, what):
    """Run ``step()`` once and assert it changed (nearly) every sampled element of ``arrays``.

    A few elements may legitimately keep their value (an update below half an ulp), so
    the check asks for 90% of the samples of each buffer.
    """
    before = {name: _sample(array) for name, array in arrays.items()}
    step()
    for name, array in arrays.items():
        changed = np.count_nonzero(_sample(array) != before[name])
        if changed < 0.9 * before[name].size:
            raise AssertionError(f"{what} did not update {name}: {changed} of "
                                 f"{before[name].size} sampled elements changed")


def assert_same_callable(actual, expected, what):
    """Fail when a benchmark is about to time something other than its name says."""
    if actual is not expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def median_seconds(functions, n_pairs, timer):
    """Median wall time of each function, interleaved (f0, f1, f0, f1, ...) after a warmup.

    Interleaving puts the rmsprop_c step and its same-traffic ceiling under the same
    machine conditions, as the design's yardstick asks.
    """
    for function in functions:
        function()
    times = [[] for _ in functions]
    for _ in range(n_pairs):
        for function, samples in zip(functions, times):
            start = timer()
            function()
            samples.append(timer() - start)
    return [float(np.median(samples)) for samples in times]
