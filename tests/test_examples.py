"""Every script in examples/ runs to the end and prints what it promises.

Each example runs in a subprocess with ``sys.executable`` and ``-W error``. The torch example
runs in CI (the `compat` extra installs torch); only RMSPROP_C_ALLOW_MISSING_COMPAT=1 lets a
missing torch skip it.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name):
    """Run ``examples/<name>`` from the repository root; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        cwd=EXAMPLES.parent, capture_output=True, text=True, timeout=300,
    )


def check_ran(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_every_example_has_a_test():
    tested = {"mlp_numpy.py", "custom_framework.py", "torch_inplace.py", "bfloat16_params.py",
              "torch_dropin.py"}        # run by tests/test_torch_dropin_example.py
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_mlp_numpy_learns_the_ring():
    result = run_example("mlp_numpy.py")
    check_ran(result)
    match = re.search(r"^test accuracy: ([\d.]+)%$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    assert float(match.group(1)) > 90.0  # chance is ~62% (the majority class)


def test_custom_framework_fits_the_sine():
    result = run_example("custom_framework.py")
    check_ran(result)
    match = re.search(r"^mse: first step ([\d.]+) -> final ([\d.]+)", result.stdout, re.MULTILINE)
    assert match, result.stdout
    first, final = map(float, match.groups())
    assert final < first / 100


def test_bfloat16_params_fit_with_stochastic_rounding_and_stall_to_nearest():
    pytest.importorskip("ml_dtypes")
    result = run_example("bfloat16_params.py")
    check_ran(result)
    mse = {kind: float(value) for kind, value in re.findall(
        r"^mse with bfloat16 weights, (rounded to nearest|stochastic rounding): ([\d.]+)$",
        result.stdout, re.MULTILINE)}
    assert mse["stochastic rounding"] < 0.01 < 1.0 < mse["rounded to nearest"], result.stdout
    assert "bit-identical on 1 and 2 threads: True" in result.stdout


def test_torch_inplace_updates_the_torch_tensors():
    if importlib.util.find_spec("torch") is None:
        if os.environ.get("RMSPROP_C_ALLOW_MISSING_COMPAT") == "1":
            pytest.skip("torch is not installed (RMSPROP_C_ALLOW_MISSING_COMPAT=1)")
        pytest.fail("torch is not installed: pip install -e \".[test,compat]\", or set "
                    "RMSPROP_C_ALLOW_MISSING_COMPAT=1 to skip")
    result = run_example("torch_inplace.py")
    check_ran(result)
    assert "torch parameters changed in place: True" in result.stdout
    assert "equal to the NumPy reference update bit for bit: True" in result.stdout
    match = re.search(r"largest difference from torch\.optim\.RMSprop: (\S+)", result.stdout)
    assert match and float(match.group(1)) < 1e-5, result.stdout
