"""show_config tells the truth; a normal build has OpenMP; the stub matches the module."""

import os
import subprocess
import sys

import pytest

import rmsprop_c
from rmsprop_c import _kernels


def test_show_config_reports_the_build(capsys):
    facts = rmsprop_c.show_config(mode="dicts")
    assert facts["version"] == rmsprop_c.__version__
    assert facts["openmp"]["built_with_openmp"] == _kernels.openmp_enabled()
    assert facts["simd"]["chosen"] in facts["simd"]["supported"]
    assert set(facts["simd"]["supported"]) <= set(facts["simd"]["built"])
    assert "-ffp-contract=off" in facts["build"]["flags"]
    for banned in ("-march=native", "-ffast-math", "-Ofast", "-ffp-contract=fast"):
        assert banned not in facts["build"]["flags"]
    rmsprop_c.show_config()
    printed = capsys.readouterr().out
    assert rmsprop_c.__version__ in printed and "OpenMP" in printed and "SIMD" in printed


@pytest.mark.skipif(os.environ.get("RMSPROP_C_ALLOW_SERIAL_BUILD") == "1",
                    reason="RMSPROP_C_ALLOW_SERIAL_BUILD=1: a serial build is expected")
def test_a_normal_build_has_openmp():
    facts = rmsprop_c.show_config(mode="dicts")
    assert facts["openmp"]["built_with_openmp"], "the extension was built without OpenMP"
    runtimes = facts["openmp"]["runtimes"]
    assert runtimes and runtimes[0]["prefix"] in {"libgomp", "libomp", "libiomp"}, runtimes


def test_max_threads_follows_openmp_setting():
    script = ("from rmsprop_c import _kernels; print(_kernels.max_threads())")
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=environment,
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "1"


def test_max_threads_follows_threadpoolctl_limits():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _kernels.openmp_enabled():
        pytest.skip("serial build")
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert _kernels.max_threads() == 1


def test_info_command_runs():
    result = subprocess.run([sys.executable, "-m", "rmsprop_c", "info"], capture_output=True,
                            text=True, check=True)
    assert "rmsprop_c" in result.stdout and "SIMD" in result.stdout


def test_unknown_command_fails():
    result = subprocess.run([sys.executable, "-m", "rmsprop_c", "nope"], capture_output=True,
                            text=True)
    assert result.returncode != 0


def test_stub_matches_the_compiled_module():
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "rmsprop_c._kernels",
         "--mypy-config-file", "pyproject.toml"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
