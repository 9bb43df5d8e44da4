"""Memory of a step: proof that no temporary proportional to the tensor size is allocated.

Every case is float32 with every state buffer on (momentum, centered, amsgrad), through
both APIs, at 10^5 and 10^7 elements.

``StepPeakMemory.peakmem_step`` is the process's peak RSS after one step;
``peakmem_buffers_only`` is the same process setup without the step. asv's peak RSS includes
setup, so the step's own cost is the difference, and it must not grow with the size (a
single float32 temporary of 10^7 elements would add 40 MB).

``StepRssGrowth.track_step_temporaries`` measures that difference directly: it resets the
kernel's peak-RSS mark (Linux ``/proc/self/clear_refs``), steps, and reports how far the
peak rose above the RSS before the step, in units of one tensor-sized buffer, rounded to
0.1: 0.0 means no temporary proportional to the size, 1.0 means one float32 copy of the
tensor. (Raw bytes vary by a page or two between runs, which asv would flag as a 1.5x
change; the rounded figure only moves when a real temporary appears.) Skipped where the
mark cannot be reset.

The large buffers are never stepped in setup (that would hide a temporary in the
baseline): setup checks the callable on a smaller copy of the same configuration instead.
"""

import numpy as np

import rmsprop_c

from .common import (HYPERPARAMETERS, assert_same_callable, assert_step_writes, build_once,
                     new_rng)

APIS = ["rmsprop_step", "RMSprop.step"]
MEMORY_SIZES = [100_000, 10_000_000]
# Every optional state buffer at once: the most buffers a step can touch.
ALL_STATE_OPTIONS = {"momentum": 0.9, "centered": True, "amsgrad": True}
STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg", "max_square_avg")
# Above the serial threshold: the check also starts the OpenMP pool, whose thread stacks
# would otherwise show up as growth of the first measured step.
CHECK_SIZE = 1 << 17


def build_step(api, size):
    """(step callable, name -> array it writes) for ``api`` on ``size`` float32 elements.

    Every buffer is written here, so all pages are resident before anything is measured.
    """
    rng = new_rng()
    param = rng.standard_normal(size, dtype=np.float32)
    grad = rng.standard_normal(size, dtype=np.float32)
    if api == "rmsprop_step":
        state = {key: np.full(size, 0.0, dtype=np.float32) for key in STATE_KEYS}
        step_function = rmsprop_c.rmsprop_step
        assert_same_callable(step_function, rmsprop_c._kernels.rmsprop_step, "rmsprop_step")
        kwargs = {**HYPERPARAMETERS, **ALL_STATE_OPTIONS,
                  **{key: state[key] for key in STATE_KEYS[1:]}}

        def step():
            step_function(param, grad, state["square_avg"], **kwargs)

        return step, {"param": param, **state}
    optimizer = rmsprop_c.RMSprop([param], **HYPERPARAMETERS, **ALL_STATE_OPTIONS)
    assert_same_callable(type(optimizer), rmsprop_c.RMSprop, "RMSprop.step")
    state = optimizer.state[0]
    assert sorted(state) == sorted(STATE_KEYS), sorted(state)
    for array in state.values():
        array[...] = 0.0                  # np.zeros pages are mapped lazily: fault them in now
    grads = [grad]

    def step():
        optimizer.step(grads)

    return step, {"param": param, **state}


def build_checked_step(api, size):
    """``build_step`` after checking, on a small copy, that the step writes every buffer."""
    small_step, small_arrays = build_step(api, CHECK_SIZE)
    assert_step_writes(small_step, small_arrays, api)
    return build_step(api, size)


class StepPeakMemory:
    """Peak RSS of the process with and without one step (float32, all state buffers)."""

    params = [APIS, MEMORY_SIZES]
    param_names = ["api", "size"]
    timeout = 120

    def setup(self, api, size):
        self.step, self.arrays = build_once(("memory", api, size),
                                            lambda: build_checked_step(api, size))

    def peakmem_buffers_only(self, api, size):
        """The baseline: same setup, no step."""

    def peakmem_step(self, api, size):
        self.step()


def _read_status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")            # 5: reset the peak RSS mark (VmHWM) to the current RSS


class StepRssGrowth:
    """How far one step raises the peak RSS above the RSS before it, in tensor-sized buffers."""

    params = [APIS, MEMORY_SIZES]
    param_names = ["api", "size"]
    timeout = 120

    def setup(self, api, size):
        try:
            _reset_peak_rss()
            _read_status_bytes("VmHWM")
        except OSError as error:
            raise NotImplementedError(f"cannot reset the peak RSS mark: {error}") from None
        self.step, self.arrays = build_once(("memory", api, size),
                                            lambda: build_checked_step(api, size))

    def track_step_temporaries(self, api, size):
        _reset_peak_rss()
        before = _read_status_bytes("VmRSS")
        self.step()
        growth = _read_status_bytes("VmHWM") - before
        return round(growth / self.arrays["param"].nbytes, 1)

    track_step_temporaries.unit = "tensor-sized buffers"
