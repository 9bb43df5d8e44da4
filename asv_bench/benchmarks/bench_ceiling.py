"""Throughput of the large cases, and their distance to the memory-bandwidth ceiling.

The ceiling of a variant is its same-traffic kernel (``rmsprop_c._kernels.same_traffic_step``:
``state += grad`` for every buffer the variant touches, ``param += grad``), timed in the same
process, interleaved with the real step (DESIGN.md, "Performance yardstick"). Each case
tracks three numbers, so the graphs show distance to the limit, not only seconds:

``track_time_vs_ceiling``
    median step time / median same-traffic time: 1.0 is at the ceiling, 1.25 is 25% slower
    than it (the fraction of the ceiling reached is its inverse).
``track_step_ms_per_gb``
    milliseconds the rmsprop_c step takes per GB it must move (GB/s = 1000 / this).
``track_ceiling_ms_per_gb``
    the same for the same-traffic kernel: the machine's bandwidth for this traffic pattern,
    so a change of the machine is told apart from a change of the kernel.

Every figure is lower-is-better on purpose: asv (0.6, see asv#1617) treats every benchmark
that way, so GB/s or a fraction of the ceiling would make ``asv continuous`` and ``asv
publish`` call a slower kernel an improvement and fail on a faster one.

Bytes per element: itemsize x (5 + 2 per extra state buffer): read p, g, v and write p, v,
plus read and write of each of momentum_buffer, grad_avg, max_square_avg.

Cases: ``rmsprop_step`` on 10^7 elements (``KernelCeiling``), and ``RMSprop.step`` on the
148-tensor transformer-like model against a flat same-traffic kernel over as many elements
(``TransformerCeiling``), each dtype x variant x threads.

All cases of a class are measured in its ``setup_cache``: one process, one buffer set per
dtype serving every variant (a variant leaves the other state buffers alone), so the
dozens of cases cost two buffer builds instead of one per case and per metric. The
``track_`` methods report from those measurements. The ceiling kernel runs on its own
buffers: ``v += g`` would drive the real step's accumulator negative.
"""

import time

import rmsprop_c
from rmsprop_c import _kernels

from .common import (ALL_STATE_KEYS, DTYPES, LARGE_SIZE, THREAD_SETTINGS, VARIANT_NAMES,
                     BufferSet, ModelCase, assert_same_callable, assert_step_writes,
                     bytes_per_step, median_seconds, model_size, n_threads_of)

# Interleaved (step, ceiling) pairs per case; the medians of these are reported.
N_PAIRS = 9
# Wall-clock timer of every measurement in setup_cache.
TIMER = time.perf_counter


def qualified_name(function):
    return f"{function.__module__}.{function.__qualname__}"


def _reset_amsgrad_memory(arrays):
    """vmax only grows: restart it at 0 so the next case's first step visibly updates it."""
    for name, array in arrays.items():
        if "max_square_avg" in name:
            array.fill(0.0)


def measure_kernel_ceilings():
    """(dtype, variant, threads) -> timings of rmsprop_step and its ceiling on 10^7 elements."""
    step_function = rmsprop_c.rmsprop_step
    assert_same_callable(step_function, _kernels.rmsprop_step, "KernelCeiling")
    measurements = {}
    for dtype in DTYPES:
        step_buffers = BufferSet(dtype, LARGE_SIZE, ALL_STATE_KEYS)
        ceiling_buffers = BufferSet(dtype, LARGE_SIZE, ALL_STATE_KEYS)
        for variant in VARIANT_NAMES:
            for threads in THREAD_SETTINGS:
                n_threads = n_threads_of(threads)
                step_args, step_kwargs = step_buffers.step_args(variant, n_threads)
                ceiling_args, ceiling_kwargs = ceiling_buffers.traffic_args(variant, n_threads)

                def step():
                    step_function(*step_args, **step_kwargs)

                def ceiling():
                    _kernels.same_traffic_step(*ceiling_args, **ceiling_kwargs)

                where = f"({dtype}, {variant}, threads={threads})"
                _reset_amsgrad_memory(step_buffers.writable(variant))
                assert_step_writes(step, step_buffers.writable(variant), "rmsprop_step" + where)
                assert_step_writes(ceiling, ceiling_buffers.writable(variant),
                                   "same_traffic_step" + where)
                step_seconds, ceiling_seconds = median_seconds([step, ceiling], N_PAIRS, TIMER)
                measurements[(dtype, variant, threads)] = {
                    "step": qualified_name(step_function),
                    "ceiling": qualified_name(_kernels.same_traffic_step),
                    "step_seconds": step_seconds,
                    "ceiling_seconds": ceiling_seconds,
                    "bytes": bytes_per_step(LARGE_SIZE, dtype, variant),
                }
        del step_buffers, ceiling_buffers
    return measurements


def measure_transformer_ceilings():
    """(dtype, variant, threads) -> timings of RMSprop.step on the transformer and its ceiling."""
    measurements = {}
    n_elements = model_size("transformer")
    for dtype in DTYPES:
        model = ModelCase("transformer", dtype, None, None)
        assert_same_callable(type(model.optimizer), rmsprop_c.RMSprop, "TransformerCeiling")
        assert model.n_elements == n_elements
        ceiling_buffers = BufferSet(dtype, n_elements, ALL_STATE_KEYS)
        for variant in VARIANT_NAMES:
            for threads in THREAD_SETTINGS:
                n_threads = n_threads_of(threads)
                model.select(variant, n_threads)
                optimizer_step, grads = model.optimizer.step, model.grads
                ceiling_args, ceiling_kwargs = ceiling_buffers.traffic_args(variant, n_threads)

                def step():
                    optimizer_step(grads)

                def ceiling():
                    _kernels.same_traffic_step(*ceiling_args, **ceiling_kwargs)

                where = f"(transformer, {dtype}, {variant}, threads={threads})"
                _reset_amsgrad_memory(model.writable())
                assert_step_writes(step, model.writable(), "RMSprop.step" + where)
                assert_step_writes(ceiling, ceiling_buffers.writable(variant),
                                   "same_traffic_step" + where)
                step_seconds, ceiling_seconds = median_seconds([step, ceiling], N_PAIRS, TIMER)
                measurements[(dtype, variant, threads)] = {
                    "step": qualified_name(optimizer_step.__func__),
                    "ceiling": qualified_name(_kernels.same_traffic_step),
                    "step_seconds": step_seconds,
                    "ceiling_seconds": ceiling_seconds,
                    "bytes": bytes_per_step(n_elements, dtype, variant),
                }
        del model, ceiling_buffers
    return measurements


class _CeilingTracks:
    """The three track_ methods over a measurements dict; subclasses set what was timed."""

    params = [DTYPES, VARIANT_NAMES, THREAD_SETTINGS]
    param_names = ["dtype", "variant", "threads"]
    timeout = 60
    expected_step = None             # qualified name of the callable the step must be

    def setup(self, measurements, dtype, variant, threads):
        self.measurement = measurements[(dtype, variant, threads)]
        if self.measurement["step"] != self.expected_step:
            raise AssertionError(f"timed {self.measurement['step']}, expected "
                                 f"{self.expected_step}")
        if self.measurement["ceiling"] != qualified_name(_kernels.same_traffic_step):
            raise AssertionError(f"ceiling timed {self.measurement['ceiling']}")

    def track_time_vs_ceiling(self, measurements, dtype, variant, threads):
        return self.measurement["step_seconds"] / self.measurement["ceiling_seconds"]

    def track_step_ms_per_gb(self, measurements, dtype, variant, threads):
        return 1e3 * self.measurement["step_seconds"] / (self.measurement["bytes"] / 1e9)

    def track_ceiling_ms_per_gb(self, measurements, dtype, variant, threads):
        return 1e3 * self.measurement["ceiling_seconds"] / (self.measurement["bytes"] / 1e9)

    track_time_vs_ceiling.unit = "x same-traffic time"
    track_step_ms_per_gb.unit = "ms/GB"
    track_ceiling_ms_per_gb.unit = "ms/GB"


class KernelCeiling(_CeilingTracks):
    """``rmsprop_step`` on 10^7 elements against its same-traffic kernel."""

    expected_step = qualified_name(rmsprop_c.rmsprop_step)

    def setup_cache(self):
        return measure_kernel_ceilings()

    setup_cache.timeout = 900


class TransformerCeiling(_CeilingTracks):
    """``RMSprop.step`` on the 148-tensor model against the flat same-traffic kernel."""

    expected_step = qualified_name(rmsprop_c.RMSprop.step)

    def setup_cache(self):
        return measure_transformer_ceilings()

    setup_cache.timeout = 900
