"""Time of the functional kernel ``rmsprop_c.rmsprop_step`` on one tensor.

Grid: dtype (float32, float64) x size (10^3, 10^5, 10^7 elements) x variant (plain,
momentum, centered, centered+momentum, amsgrad) x threads (1, 2, "all" = OpenMP's setting).
10^3 is latency (serial path), 10^5 is in cache and above the serial threshold, 10^7 is
out of cache (memory bound: see ``bench_ceiling`` for the distance to the ceiling).
"""

import time

import rmsprop_c

from .common import (DTYPES, SIZES, THREAD_SETTINGS, VARIANT_NAMES, BufferSet,
                     assert_same_callable, assert_step_writes, build_once, n_threads_of)


def calls_per_sample(size):
    """Timed calls averaged into one sample: ~1 ms of work, at least one call."""
    return max(1, min(200, 1_000_000 // size))


class RmspropStep:
    """``rmsprop_step`` on one contiguous tensor, every variant, dtype and thread setting."""

    params = [DTYPES, SIZES, VARIANT_NAMES, THREAD_SETTINGS]
    param_names = ["dtype", "size", "variant", "threads"]
    timer = time.perf_counter
    rounds = 2
    repeat = (3, 10, 4.0)
    # Covers the OpenMP pool's start-up (the first parallel steps take milliseconds).
    warmup_time = 0.1
    timeout = 120

    def setup(self, dtype, size, variant, threads):
        self.step_function = rmsprop_c.rmsprop_step
        assert_same_callable(self.step_function, rmsprop_c._kernels.rmsprop_step,
                             "RmspropStep")
        buffers = build_once(("functional", dtype, size, variant),
                             lambda: self._build(dtype, size, variant, threads))
        self.args, self.kwargs = buffers.step_args(variant, n_threads_of(threads))
        # Small steps take microseconds: average several calls into each sample.
        self.number = calls_per_sample(size)

    def _build(self, dtype, size, variant, threads):
        buffers = BufferSet.for_variant(dtype, size, variant)
        args, kwargs = buffers.step_args(variant, n_threads_of(threads))
        assert_step_writes(lambda: self.step_function(*args, **kwargs),
                           buffers.writable(variant), f"rmsprop_step({variant})")
        return buffers

    def time_rmsprop_step(self, dtype, size, variant, threads):
        self.step_function(*self.args, **self.kwargs)
