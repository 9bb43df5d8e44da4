"""The engine under concurrency and hostile inputs: memory safety, fork, FP mode, threads.

Each test reproduces one way a step could read freed or wrong memory, tear state, hang, or
give thread-count-dependent bits, and checks it cannot. The memory cases also run under
AddressSanitizer in CI (.ci/sanitize), where a stray read is a report, not luck.
"""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import rmsprop_c as rc
from rmsprop_c import _kernels, reference

from conftest import child_environment
import native_helpers

BIG = 1 << 21                         # a step of milliseconds: time for another thread to act
PARALLEL = 4 * _kernels.build_info()["min_parallel_elements"]


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    return native_helpers.load(native_helpers.build(str(tmp_path_factory.mktemp("native"))))


def expected_after(params, grads_per_step, **options):
    """Params after the steps, computed with the NumPy spec (square_avg only)."""
    params = [p.copy() for p in params]
    square = [np.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_per_step, start=1):
        for p, g, v in zip(params, grads, square):
            reference.rmsprop_step(p, g, v, step=step, **options)
    return params


def run_in_thread(function):
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(function()))
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    return outcome[0]


def test_grads_list_cleared_during_a_step_is_not_read_after_free():
    # Another thread clears the list (dropping the only references) while the kernel runs.
    rng = np.random.default_rng(0)
    start = rng.standard_normal(BIG)
    for attempt in range(5):
        params = [start.copy()]
        opt = rc.RMSprop(params, lr=1e-3, n_threads=1)
        grads = [rng.standard_normal(BIG)]
        expected = expected_after([start], [[grads[0].copy()]], lr=1e-3, alpha=0.99, eps=1e-8)
        started = threading.Event()

        def clear_soon():
            started.wait(10)
            grads.clear()
            gc.collect()
            # New allocations of the same size would reuse freed memory with other values.
            _ = [np.full(BIG, 7.0) for _ in range(2)]

        clearer = threading.Thread(target=clear_soon)
        clearer.start()
        started.set()
        opt.step(grads)
        clearer.join(timeout=60)
        assert params[0].tobytes() == expected[0].tobytes(), f"attempt {attempt}"


class ShiftingGrads(list):
    """A list whose items change between lookups: the first one right, the next one not."""

    def __init__(self, right, wrong):
        super().__init__(right)
        self.wrong = wrong
        self.lookups = 0

    def __getitem__(self, index):
        self.lookups += 1
        return super().__getitem__(index) if self.lookups % 2 else self.wrong

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]


def test_a_grad_is_looked_up_once_and_that_object_is_checked_and_used():
    param = np.zeros(PARALLEL)
    opt = rc.RMSprop([param], lr=1e-2)
    right = np.full(PARALLEL, 0.5)
    grads = ShiftingGrads([right], wrong=np.ones(3))     # a wrong grad would overflow
    opt.step(grads)
    expected = expected_after([np.zeros(PARALLEL)], [[right]], lr=1e-2, alpha=0.99, eps=1e-8)
    assert param.tobytes() == expected[0].tobytes()


def test_a_group_index_out_of_range_is_refused_at_construction():
    param = np.zeros(10)
    with pytest.raises(ValueError, match="group_of_param"):
        _kernels.MultiTensorStep([param], [100000], [{"square_avg": np.zeros(10)}], 1)


@pytest.mark.parametrize("state, error, match", [
    ({"square_avg": None}, TypeError, r"state\[0\]\['square_avg'\]"),
    ({"square_avg": np.zeros(10), "momentum_buffer": None}, TypeError,
     r"state\[0\]\['momentum_buffer'\]"),
    ({"momentum_buffer": np.zeros(10)}, ValueError, r"state\[0\] lacks 'square_avg'"),
    ({"square_avg": np.zeros(10), "velocity": np.zeros(10)}, ValueError,
     r"unknown state buffer state\[0\]\['velocity'\]"),
])
def test_bad_state_entries_are_refused_at_construction_naming_them(state, error, match):
    # an entry given as None is a mistake, not an absent buffer
    with pytest.raises(error, match=match):
        _kernels.MultiTensorStep([np.zeros(10)], [0], [state], 1)


def test_validate_from_another_thread_does_not_rebind_a_running_step():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(BIG)]
    start = params[0].copy()
    opt = rc.RMSprop(params, lr=1e-3, n_threads=1)
    grads = [rng.standard_normal(BIG)]
    other = [np.full(BIG, 100.0)]
    stop = threading.Event()

    def validate_in_a_loop():
        while not stop.is_set():
            opt._engine.validate(other, opt.param_groups)

    validator = threading.Thread(target=validate_in_a_loop)
    validator.start()
    try:
        for _ in range(3):
            opt.step(grads)
    finally:
        stop.set()
        validator.join(timeout=60)
    expected = expected_after([start], [grads] * 3, lr=1e-3, alpha=0.99, eps=1e-8)
    assert params[0].tobytes() == expected[0].tobytes()


def test_state_dict_taken_during_steps_is_never_torn():
    params = [np.zeros(BIG, np.float32)]
    opt = rc.RMSprop(params, lr=1e-3, n_threads=1)
    grads = [np.ones(BIG, np.float32)]
    stop = threading.Event()

    def step_in_a_loop():
        for _ in range(40):
            if stop.is_set():
                break
            opt.step(grads)

    stepper = threading.Thread(target=step_in_a_loop)
    stepper.start()
    snapshots = []
    try:
        while stepper.is_alive() and len(snapshots) < 40:
            snapshots.append(opt.state_dict())
    finally:
        stop.set()
        stepper.join(timeout=120)
    for snapshot in snapshots:
        square_avg = snapshot["state"][0]["square_avg"]
        # Constant grads: every element of a consistent snapshot holds the same value.
        assert np.unique(square_avg).size == 1, "a snapshot mixes two steps"


FORK_WHILE_STEPPING = r"""
import os, sys, threading, time
import numpy as np
import rmsprop_c as rc
params = [np.zeros(1 << 22)]
opt = rc.RMSprop(params, lr=1e-3, n_threads=1)
grads = [np.ones(1 << 22)]
inside = threading.Event()
def stepper():
    inside.set()
    for _ in range(20):
        opt.step(grads)
thread = threading.Thread(target=stepper)
thread.start()
inside.wait()
time.sleep(0.005)
pid = os.fork()
if pid == 0:
    try:
        small = [np.zeros(10)]
        child = rc.RMSprop(small, lr=1e-3)
        child.step([np.ones(10)])
        opt.step(grads)          # the lock the parent's thread held is not held here
        os._exit(0)
    except BaseException as error:
        print("child:", repr(error), flush=True)
        os._exit(3)
_, status = os.waitpid(pid, 0)
thread.join()
sys.exit(os.waitstatus_to_exitcode(status))
"""

FORK_AFTER_FOREIGN_OPENMP = r"""
import ctypes, os, sys
sys.path.insert(0, {tests!r})
import numpy as np
import native_helpers
import rmsprop_c as rc
from rmsprop_c import reference
lib = native_helpers.load({library!r})
assert lib.foreign_parallel_sum(100000) > 0       # another library's thread pool now exists
libc = ctypes.CDLL(None)
fork = os.fork if {use_os_fork} else libc.fork
size = 1 << 18
pid = fork()
if pid == 0:
    try:
        for n_threads in (None, 2):
            param, grad = np.linspace(-1, 1, size), np.linspace(1, 2, size)
            expected, v = param.copy(), np.zeros(size)
            reference.rmsprop_step(expected, grad, v, lr=1e-2, alpha=0.9, eps=1e-8)
            opt = rc.RMSprop([param], lr=1e-2, alpha=0.9, n_threads=n_threads)
            for _ in range(3):
                opt.step([grad]) if _ == 0 else None
            assert param.tobytes() == expected.tobytes()
        os._exit(0)
    except BaseException as error:
        print("child:", repr(error), flush=True)
        os._exit(3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_script(script, timeout=120):
    process = subprocess.Popen([sys.executable, "-c", script], env=child_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the scenario hangs (killed after a timeout)")
    return process.returncode, output


def test_a_child_forked_during_a_step_can_step():
    returncode, output = run_script(FORK_WHILE_STEPPING)
    assert returncode == 0, output


@pytest.mark.parametrize("use_os_fork", [True, False], ids=["os.fork", "libc.fork"])
def test_a_child_forked_after_another_librarys_openmp_steps_without_hanging(
        native, use_os_fork, tmp_path):
    library = native._name
    script = FORK_AFTER_FOREIGN_OPENMP.format(
        tests=os.path.dirname(os.path.abspath(__file__)), library=library,
        use_os_fork=use_os_fork)
    returncode, output = run_script(script)
    assert returncode == 0, output


def subnormal_case(dtype):
    """Grads whose squares are subnormal: flush-to-zero changes the result."""
    rng = np.random.default_rng(3)
    size = PARALLEL
    param = rng.standard_normal(size).astype(dtype)
    grad = (rng.standard_normal(size) * (1e-21 if dtype == np.float32 else 1e-160)).astype(dtype)
    return param, grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_workers_run_in_the_callers_flush_to_zero_mode(native, dtype):
    if _kernels.cpu_count() < 2 or not _kernels.openmp_enabled():
        pytest.skip("needs 2 CPUs and OpenMP to run a second worker")
    param, grad = subnormal_case(dtype)
    options = dict(lr=1e-2, alpha=0.9, eps=0.0)

    def run(n_threads):
        p, v = param.copy(), np.zeros_like(param)
        rc.rmsprop_step(p, grad, v, n_threads=n_threads, **options)
        return p.tobytes() + v.tobytes()

    gradual = run(1)
    if not native.set_flush_denormal(1):
        pytest.skip("no flush-to-zero control on this architecture")
    try:
        flushed = {n: run(n) for n in (1, 2)}
        p, v = param.copy(), np.zeros_like(param)
        reference.rmsprop_step(p, grad, v, **options)       # NumPy, on this thread
        spec = p.tobytes() + v.tobytes()
    finally:
        native.set_flush_denormal(0)
    assert flushed[1] != gradual, "the data does not exercise flush-to-zero"
    assert flushed[1] == spec
    assert flushed[2] == flushed[1]


def test_n_threads_is_clamped_to_the_machine():
    param, grad = np.linspace(0, 1, PARALLEL), np.ones(PARALLEL)
    results = []
    for n_threads in (1, 65536):
        p, v = param.copy(), np.zeros(PARALLEL)
        rc.rmsprop_step(p, grad, v, lr=1e-2, alpha=0.9, eps=1e-8, n_threads=n_threads)
        results.append(p.tobytes())
    assert results[0] == results[1]
    with pytest.raises(ValueError, match="n_threads"):
        rc.rmsprop_step(param, grad, np.zeros(PARALLEL), lr=1e-2, alpha=0.9, eps=1e-8,
                        n_threads=1 << 63)


def test_a_state_buffer_made_read_only_after_construction_is_refused():
    params = [np.zeros(100)]
    opt = rc.RMSprop(params, lr=1e-2, momentum=0.9)
    opt.state[0]["momentum_buffer"].flags.writeable = False
    before = [params[0].tobytes(), opt.state[0]["square_avg"].tobytes()]
    with pytest.raises(ValueError, match="changed after the optimizer was built"):
        opt.step([np.ones(100)])
    assert [params[0].tobytes(), opt.state[0]["square_avg"].tobytes()] == before


def test_a_param_whose_dtype_changed_in_place_is_refused():
    params = [np.zeros(100, np.float32)]
    opt = rc.RMSprop(params, lr=1e-2)
    params[0].dtype = np.int32
    with pytest.raises(ValueError, match=r"params\[0\] changed"):
        opt.step([np.ones(100, np.float32)])
    assert not params[0].any()


def test_a_resized_param_is_refused():
    params = [np.zeros(100)]
    opt = rc.RMSprop(params, lr=1e-2)
    params[0].resize(10, refcheck=False)
    with pytest.raises(ValueError, match=r"params\[0\] changed"):
        opt.step([np.ones(10)])


def test_a_threadpoolctl_limit_applies_to_steps_in_every_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    assert run_in_thread(_kernels.max_threads) == _kernels.max_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert _kernels.max_threads() == 1
        assert run_in_thread(_kernels.max_threads) == 1
    assert run_in_thread(_kernels.max_threads) == min(_kernels.cpu_count(),
                                                      _kernels.max_threads())


# ---------------------------------------------------------------------------------------
# The threading policy's decision rule, fed step times (no clock: deterministic)

def overhead(choices, costs):
    """Time of the policy's choices over the time of always stepping serially."""
    spent = sum(parallel if workers > 1 else serial
                for workers, (serial, parallel) in zip(choices, costs))
    return spent / sum(serial for serial, _ in costs)


def test_policy_goes_parallel_when_parallel_steps_are_faster():
    costs = [(500_000.0, 270_000.0)] * 2000        # a 1M step back to back: 1.85x on 2 threads
    choices = _kernels._simulate_policy(costs)
    assert sum(w > 1 for w in choices[10:]) >= 0.95 * len(choices[10:])
    assert overhead(choices, costs) <= 0.6


@pytest.mark.parametrize("serial, parallel", [
    (11_000.0, 4_400_000.0),        # 17.5K elements, a threaded matmul between steps
    (140_000.0, 3_500_000.0),       # 262K elements after a 20 ms idle gap
    (9_000_000.0, 16_000_000.0),    # 11.7M elements on a busy machine
])
def test_policy_stays_serial_when_parallel_steps_lose(serial, parallel):
    costs = [(serial, parallel)] * 20000
    choices = _kernels._simulate_policy(costs)
    assert overhead(choices, costs) <= 1.1


def test_policy_recovers_parallel_when_the_machine_frees_up():
    # After a BLAS-heavy phase of 3 s, parallel pays again: back to it within a second.
    bad = [(100_000.0, 3_000_000.0)] * 30000
    good = [(100_000.0, 55_000.0)] * 20000
    choices = _kernels._simulate_policy(bad + good)
    assert sum(w > 1 for w in choices[-10000:]) >= 9500


def test_policy_never_splits_below_the_minimum_size():
    costs = [(1_000.0, 10.0)] * 100
    minimum = _kernels.build_info()["min_parallel_elements"]
    assert set(_kernels._simulate_policy(costs, total=minimum - 1)) == {1}


def test_an_optimizer_reports_its_threading_decision():
    params = [np.zeros(PARALLEL, np.float32)]
    opt = rc.RMSprop(params, lr=1e-3)
    for _ in range(5):
        opt.step([np.ones(PARALLEL, np.float32)])
    facts = opt.threading
    assert facts["choice"] in ("serial", "parallel")
    assert facts["serial_steps"] + facts["parallel_steps"] == 5
    assert facts["serial_steps"] >= 1           # the first step always times serial
