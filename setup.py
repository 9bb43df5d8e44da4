"""Build of rmsprop_c's compiled core.

One extension, ``rmsprop_c._kernels``: the Cython driver (validation, threading) plus C++ chunk
kernels compiled once per SIMD target and chosen at import (``src/dispatch.cpp``).

Environment switches:
  RMSPROP_C_OPENMP=0           build without OpenMP (serial kernels)
  RMSPROP_C_REQUIRE_OPENMP=1   fail the build when the compiler cannot build OpenMP code
  RMSPROP_C_EXTRA_CFLAGS="..." extra compile and link flags (used by the sanitizer build)
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -ffp-contract=off: GCC fuses a*b+c into an FMA by default when the target has one, which
# rounds once instead of twice and breaks bit-exactness with the NumPy reference.
# -fno-math-errno only lets sqrt compile to the sqrt instruction (no errno branch); it does
# not change any result. -g0: no debug info (720 kernel instances would make a 12 MB module).
# Never fast-math or native-arch flags: see DESIGN.md.
BASE_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-g0"]

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int threads = 0;
        #pragma omp parallel reduction(+:threads)
        threads += 1;
        printf("%d", threads);
        return threads > 0 ? 0 : 1;
    }
    """
)

SIMD_PROBE = textwrap.dedent(
    """
    #pragma GCC target("{target}")
    static float twice(float x) {{ return x + x; }}
    int main(void) {{ return (int)twice(0.0f); }}
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_off(name):
    return os.environ.get(name, "").strip().lower() in {"0", "false", "no", "off"}


class BuildExt(build_ext):
    """Probes OpenMP and the SIMD targets with the compiler that will build the extension."""

    def _try_compile_and_run(self, source, suffix, extra_args):
        workdir = tempfile.mkdtemp(prefix="rmsprop_c_probe_")
        try:
            path = os.path.join(workdir, "probe" + suffix)
            with open(path, "w") as handle:
                handle.write(source)
            objects = self.compiler.compile([path], output_dir=workdir, extra_postargs=extra_args)
            executable = os.path.join(workdir, "probe")
            self.compiler.link_executable(objects, executable, extra_postargs=extra_args)
            subprocess.run([executable], check=True, capture_output=True, timeout=60)
            return True
        except Exception:  # any compile, link or run failure means "not available"
            return False
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _openmp_flags(self):
        if _env_off("RMSPROP_C_OPENMP"):
            print("rmsprop_c: OpenMP disabled by RMSPROP_C_OPENMP=0; building serial kernels")
            return []
        if self._try_compile_and_run(OPENMP_PROBE, ".c", ["-fopenmp"]):
            return ["-fopenmp"]
        message = (
            "rmsprop_c: the compiler cannot build and run an OpenMP program; building serial "
            "kernels (multi-threaded steps disabled)."
        )
        if _env_flag("RMSPROP_C_REQUIRE_OPENMP"):
            sys.exit(message + " RMSPROP_C_REQUIRE_OPENMP=1 makes this fatal.")
        warnings.warn(message)
        return []

    def _simd_targets(self):
        if sysconfig.get_platform().split("-")[-1] not in {"x86_64", "amd64"}:
            return []
        targets = []
        for name, pragma in (("AVX2", "avx2"), ("AVX512", "avx512f,prefer-vector-width=512")):
            source = SIMD_PROBE.format(target=pragma)
            if self._try_compile_and_run(source, ".c", []):
                targets.append(name)
        return targets

    def _compiler_version(self):
        """First line of `<compiler> --version`, for show_config()."""
        executable = self.compiler.compiler_so[0]
        try:
            output = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                    timeout=30).stdout
            return output.splitlines()[0].replace('"', "'") if output else executable
        except (OSError, subprocess.SubprocessError):
            return executable

    def build_extensions(self):
        openmp = self._openmp_flags()
        simd = self._simd_targets()
        extra = os.environ.get("RMSPROP_C_EXTRA_CFLAGS", "").split()
        compile_flags = BASE_FLAGS + openmp + extra
        compiler = self._compiler_version()
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags
            ext.extra_link_args = openmp + extra
            ext.sources = [
                source for source in ext.sources
                if not any(source.endswith(f"kernels_{t.lower()}.cpp") for t in ("AVX2", "AVX512"))
                or any(source.endswith(f"kernels_{t.lower()}.cpp") for t in simd)
            ]
            ext.define_macros += [(f"RC_BUILD_{t}", "1") for t in simd]
            ext.define_macros += [
                ("RC_BUILD_COMPILER", f'"{compiler}"'),
                ("RC_BUILD_FLAGS", '"{}"'.format(" ".join(compile_flags))),
                ("RC_BUILD_SIMD", '"{}"'.format(" ".join(["baseline"] + [t.lower() for t in simd]))),
            ]
        super().build_extensions()


extension = Extension(
    "rmsprop_c._kernels",
    sources=[
        "rmsprop_c/_kernels.pyx",
        "src/dispatch.cpp",
        "src/kernels_baseline.cpp",
        "src/kernels_avx2.cpp",
        "src/kernels_avx512.cpp",
    ],
    include_dirs=["src", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    language="c++",
    depends=["src/kernel_body.hpp", "src/rmsprop_kernels.h"],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": 3,
            "cdivision": True,
            "initializedcheck": False,
            # No generated pickle helpers or doctest dict: nothing to pickle, stub stays exact.
            "auto_pickle": False,
            "autotestdict": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
