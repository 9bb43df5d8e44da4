"""show_config tells the truth; a normal build has OpenMP; the stub matches the module."""

import os
import pathlib
import platform
import re
import shutil
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
    flags = facts["build"]["flags"].replace(";", " ").split()
    for banned in ("-march=native", "-ffast-math", "-Ofast", "-ffp-contract=fast",
                   "-ffinite-math-only", "-mfma"):
        assert banned not in flags
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


REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variable, flag", [
    ("CFLAGS", "-ffast-math"), ("CXXFLAGS", "-Ofast"), ("CFLAGS", "-ffinite-math-only"),
    ("CPPFLAGS", "-ffp-contract=fast"), ("RMSPROP_C_EXTRA_CFLAGS", "-march=native"),
])
def test_build_refuses_result_changing_flags(variable, flag):
    if not (REPOSITORY / "setup.py").is_file():
        pytest.skip("not run from a source checkout")
    environment = dict(os.environ, **{variable: f"-O2 {flag}"})
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPOSITORY,
                            env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"refusing to build with {flag} (from {variable})" in result.stderr, result.stderr


def _load_base(path):
    """Where this process mapped the start of the file at `path` (Linux /proc/self/maps)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[-1] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise AssertionError(f"{real} is not mapped")


def _wide_registers_per_target(path, targets):
    """{target: {'ymm', 'zmm'} registers used in that target's kernel code}.

    A target's file is one object, so its functions lie together: the span from its lowest
    to its highest kernel address is that target's code (the module may be stripped, so
    the addresses come from the module, not from symbol names).
    """
    base = _load_base(path)
    used = {}
    for name in targets:
        offsets = [address - base for address in _kernels._kernel_addresses(name)]
        listing = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", f"--start-address={min(offsets)}",
             f"--stop-address={max(offsets) + 1}", path],
            capture_output=True, text=True, check=True).stdout
        assert listing.count("\n") > 100 * len(offsets) // 8, listing[:2000]
        used[name] = set(re.findall(r"%([yz]mm)\d", listing))
    return used


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"}
                    or shutil.which("objdump") is None or not os.path.exists("/proc/self/maps"),
                    reason="needs an x86-64 Linux build and binutils' objdump")
def test_simd_targets_contain_their_instructions():
    # show_config's list of built targets is only true if each target's kernels were
    # compiled for it (clang, for one, ignores GCC's target pragmas)
    built = _kernels.simd_targets_built()
    used = _wide_registers_per_target(_kernels.__file__, built)
    if "avx2" in built:
        assert "ymm" in used["avx2"] and "zmm" not in used["avx2"], used
    if "avx512" in built:
        assert "zmm" in used["avx512"], used
