"""Time of ``RMSprop.step`` on model-shaped parameter lists, and small-step latency.

``ModelStep``: the MLP (6 tensors, 235K parameters, in cache) and the transformer-like
model (148 tensors, 11.7M parameters, out of cache; shapes in ``common``), each dtype,
variant and thread setting: one native call steps every tensor.

``SmallStepLatency``: one 1024-element float32 tensor, through ``RMSprop.step`` and through
``rmsprop_step``: the fixed cost of a call (argument checks, dispatch), which a training
loop with many small tensors pays per step.
"""

import time

import rmsprop_c

from .common import (DTYPES, HYPERPARAMETERS, LATENCY_SIZE, MODEL_NAMES, THREAD_SETTINGS,
                     VARIANT_NAMES, BufferSet, ModelCase, assert_same_callable, assert_step_writes,
                     build_once, n_threads_of)


class ModelStep:
    """``RMSprop.step`` over all tensors of a model, one call per step."""

    params = [MODEL_NAMES, DTYPES, VARIANT_NAMES, THREAD_SETTINGS]
    param_names = ["model", "dtype", "variant", "threads"]
    timer = time.perf_counter
    rounds = 2
    repeat = (3, 10, 4.0)
    # Covers the OpenMP pool's start-up (the first parallel steps take milliseconds).
    warmup_time = 0.1
    timeout = 120

    def setup(self, model, dtype, variant, threads):
        self.case = build_once(("model", model, dtype, variant, threads),
                               lambda: self._build(model, dtype, variant, threads))
        self.step_function = self.case.optimizer.step
        assert_same_callable(self.step_function.__func__, rmsprop_c.RMSprop.step, "ModelStep")
        self.grads = self.case.grads
        # The MLP steps in tens of microseconds: average several calls into each sample.
        self.number = 20 if model == "mlp" else 1

    def _build(self, model, dtype, variant, threads):
        case = ModelCase(model, dtype, variant, n_threads_of(threads))
        assert_same_callable(type(case.optimizer), rmsprop_c.RMSprop, "ModelStep")
        assert_step_writes(lambda: case.optimizer.step(case.grads), case.writable(),
                           f"RMSprop.step({model}, {variant})")
        return case

    def time_optimizer_step(self, model, dtype, variant, threads):
        self.step_function(self.grads)


class SmallStepLatency:
    """One 1024-element float32 tensor: the per-call cost of both APIs."""

    timer = time.perf_counter
    rounds = 2
    repeat = (3, 10, 2.0)
    warmup_time = 0.05
    # Averages this many calls per sample: a single call is below a microsecond.
    number = 200

    def setup(self):
        self.functional_buffers, self.optimizer, self.grads = build_once("latency", self._build)
        self.step_function = rmsprop_c.rmsprop_step
        assert_same_callable(self.step_function, rmsprop_c._kernels.rmsprop_step,
                             "SmallStepLatency")
        assert_same_callable(type(self.optimizer), rmsprop_c.RMSprop, "SmallStepLatency")
        self.args, self.kwargs = self.functional_buffers.step_args("plain", None)

    @staticmethod
    def _build():
        functional_buffers = BufferSet.for_variant("float32", LATENCY_SIZE, "plain")
        args, kwargs = functional_buffers.step_args("plain", None)
        assert_step_writes(lambda: rmsprop_c.rmsprop_step(*args, **kwargs),
                           functional_buffers.writable("plain"), "rmsprop_step(1024)")
        # The optimizer steps its own buffers: the two benchmarks share nothing.
        optimizer_buffers = BufferSet.for_variant("float32", LATENCY_SIZE, "plain")
        grads = [optimizer_buffers.grad]
        optimizer = rmsprop_c.RMSprop([optimizer_buffers.param], **HYPERPARAMETERS)
        assert_step_writes(lambda: optimizer.step(grads),
                           {"param": optimizer_buffers.param,
                            "square_avg": optimizer.state[0]["square_avg"]},
                           "RMSprop.step(1024)")
        return functional_buffers, optimizer, grads

    def time_optimizer_step_1024(self):
        self.optimizer.step(self.grads)

    def time_rmsprop_step_1024(self):
        self.step_function(*self.args, **self.kwargs)
