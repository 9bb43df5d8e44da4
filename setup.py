"""Build of rmsprop_c's compiled core.

One extension, ``rmsprop_c._kernels``: the Cython driver (validation, threading) plus C++ chunk
kernels compiled once per SIMD target and chosen at import (``src/dispatch.cpp``). Each
``src/kernels_<target>.cpp`` is compiled on its own with that target's flags (SIMD_TARGETS
below; the C side's list of the same targets is ``src/simd_targets.h``), and the sources are
compiled in parallel (``-j N``; default: one job per CPU).

Environment switches:
  RMSPROP_C_OPENMP=0           build without OpenMP (serial kernels)
  RMSPROP_C_REQUIRE_OPENMP=1   fail the build when the compiler cannot build OpenMP code
  RMSPROP_C_EXTRA_CFLAGS="..." extra compile and link flags (used by the sanitizer build)
  RMSPROP_C_KEEP_SYMBOLS=1     keep the symbol table and the Cython code's unwind tables
                               (function names and backtraces for profilers and debuggers);
                               Linux builds leave both out by default
Flags that change floating-point results (fast-math and the like) are refused wherever they
come from: CFLAGS, CXXFLAGS, CC, RMSPROP_C_EXTRA_CFLAGS, ...
"""
import os
import re
import shlex
import subprocess
import sys
import sysconfig

# The kernels must equal the NumPy reference bit for bit and must see NaN and Inf (the
# non-finite check computes x - x): these flags break one or the other.
UNSAFE_FLAGS = {
    "-ffast-math", "-Ofast", "-ffinite-math-only", "-funsafe-math-optimizations",
    "-fassociative-math", "-freciprocal-math", "-fno-signed-zeros",
    "-ffp-contract=fast", "-ffp-contract=on", "-march=native", "-mcpu=native",
    "/fp:fast",
}
# clang's and Intel's floating-point models: "fast", "fast=2", "aggressive".
UNSAFE_PREFIXES = ("-ffp-model=fast", "-ffp-model=aggressive", "-fp-model=fast")
FLAG_VARIABLES = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED",
                  "RMSPROP_C_EXTRA_CFLAGS", "CL", "_CL_")


def refuse_unsafe_flags(words, origin):
    """Exit with a message naming the first result-changing flag in ``words``."""
    for word in words:
        if word in UNSAFE_FLAGS or word.startswith(UNSAFE_PREFIXES):
            sys.exit(
                f"rmsprop_c: refusing to build with {word} (from {origin}): it changes "
                "floating-point results, and rmsprop_c's kernels must match the NumPy "
                f"reference bit for bit. Remove {word} and build again."
            )


# Before the build requirements are imported: a refused environment fails at once.
for _variable in FLAG_VARIABLES:
    refuse_unsafe_flags(shlex.split(os.environ.get(_variable, "")), _variable)

import shutil  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy  # noqa: E402
from Cython.Build import cythonize  # noqa: E402
from setuptools import Extension, setup  # noqa: E402
from setuptools.command.build_ext import build_ext  # noqa: E402

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69.1
    from setuptools.dep_util import newer_group

# Common flags per compiler family. -ffp-contract=off: GCC fuses a*b+c into an FMA by default
# when the target has one (clang does within an expression), which rounds once instead of
# twice and breaks bit-exactness. -fno-math-errno only lets sqrt compile to the sqrt
# instruction (no errno branch); it changes no result. -g0: no debug info (the kernel
# instances would make a module many times larger). -fvisibility=hidden: the module exports
# its init function alone. MSVC: /fp:precise never contracts.
BASE_FLAGS = {
    "gcc": ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-g0",
            "-fvisibility=hidden"],
    "clang": ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-g0",
              "-fvisibility=hidden"],
    "msvc": ["/O2", "/std:c++17", "/fp:precise"],
}
# Extra flags for the kernel files only, to keep the kernel instances small: they throw no
# exception and need no unwind tables; GCC's vector epilogue loops would only double each
# loop for the last few elements. None of these changes an operation or its order.
KERNEL_FLAGS = {
    "gcc": ["-fno-exceptions", "-fno-asynchronous-unwind-tables",
            "--param=vect-epilogues-nomask=0"],
    "clang": ["-fno-exceptions", "-fno-asynchronous-unwind-tables"],
    "msvc": [],
}
# Extra flags for the Cython module only: its loops walk Python objects and tensor lists, so
# GCC's loop vectoriser only adds vector copies and epilogues (measured: 12 KB, no speed).
GLUE_FLAGS = {
    "gcc": ["-fvect-cost-model=very-cheap"],
    "clang": [],
    "msvc": [],
}
# The Cython code's flags in a lean build (gcc and clang): no unwind tables.
LEAN_GLUE_FLAGS = ["-fno-exceptions", "-fno-asynchronous-unwind-tables"]
# OpenMP (compile flags, link flags) per compiler family; clang needs the libomp runtime.
OPENMP_FLAGS = {
    "gcc": (["-fopenmp"], ["-fopenmp"]),
    "clang": (["-fopenmp"], ["-fopenmp"]),
    "msvc": (["/openmp"], []),
}
# The SIMD targets, in src/simd_targets.h's order: per compiler family, the flags that make
# src/kernels_<name>.cpp that target's code, or None when that compiler does not build it.
# Never -mfma or anything else that could change a result. GCC would keep 256-bit vectors
# for AVX-512 code without -mprefer-vector-width=512; clang takes the flag too.
SIMD_TARGETS = {
    "baseline": {"gcc": [], "clang": [], "msvc": []},
    "avx2": {"gcc": ["-mavx2"], "clang": ["-mavx2"], "msvc": None},
    "avx512": {
        "gcc": ["-mavx512f", "-mprefer-vector-width=512"],
        "clang": ["-mavx512f", "-mprefer-vector-width=512"],
        "msvc": None,
    },
}
# Targets other than baseline are x86-64 instruction sets.
X86_64_PLATFORMS = ("x86_64", "amd64")

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


def header_targets(path="src/simd_targets.h"):
    """(ID, name) rows of the C side's target table."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), path)) as handle:
        return re.findall(r"^\s*X\((\w+),\s*(\w+),", handle.read(), flags=re.MULTILINE)


def _check_target_tables():
    rows = header_targets()
    if [name for _, name in rows] != list(SIMD_TARGETS) or any(i != n.upper() for i, n in rows):
        sys.exit(f"rmsprop_c: setup.py's SIMD_TARGETS {list(SIMD_TARGETS)} and "
                 f"src/simd_targets.h's rows {rows} must list the same targets in order")


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_off(name):
    return os.environ.get(name, "").strip().lower() in {"0", "false", "no", "off"}


class BuildExt(build_ext):
    """Flags per compiler family, OpenMP probe, and one compile per SIMD target file."""

    def _cxx_command(self):
        """The command line the compiler uses for C++ sources (unix compilers)."""
        command = getattr(self.compiler, "compiler_so_cxx", None) or self.compiler.compiler_so
        # "ccache g++ ...": the compiler is the word after the launcher
        while len(command) > 1 and os.path.basename(command[0]) in {"ccache", "sccache"}:
            command = command[1:]
        return command

    def _compiler_version(self):
        """First line of `<compiler> --version`, for show_config()."""
        if self.compiler.compiler_type == "msvc":
            return "MSVC"
        executable = self._cxx_command()[0]
        try:
            output = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                    timeout=30).stdout
            return output.splitlines()[0].replace('"', "'") if output else executable
        except (OSError, subprocess.SubprocessError):
            return executable

    def _family(self, version):
        if self.compiler.compiler_type == "msvc":
            return "msvc"
        return "clang" if "clang" in version.lower() else "gcc"

    def _refuse_compiler_flags(self):
        """The flags the compiler object carries (Python's own CFLAGS included)."""
        for attribute in ("compiler", "compiler_so", "compiler_cxx", "compiler_so_cxx",
                          "linker_so", "linker_so_cxx", "linker_exe", "compile_options"):
            refuse_unsafe_flags(getattr(self.compiler, attribute, None) or [],
                                f"the compiler command {attribute}, Python's sysconfig")

    def _try_build(self, source, compile_args, link_args=None, run=False):
        """True when `source` compiles (and links and runs, with link_args / run)."""
        workdir = tempfile.mkdtemp(prefix="rmsprop_c_probe_")
        try:
            path = os.path.join(workdir, "probe.cpp")
            with open(path, "w") as handle:
                handle.write(source)
            objects = self.compiler.compile([path], output_dir=workdir,
                                            extra_postargs=compile_args)
            if link_args is not None:
                executable = os.path.join(workdir, "probe")
                self.compiler.link_executable(objects, executable, extra_postargs=link_args,
                                              target_lang="c++")
                if run:
                    subprocess.run([executable], check=True, capture_output=True, timeout=60)
            return True
        except Exception:  # any compile, link or run failure means "not available"
            return False
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _openmp_flags(self, family):
        if _env_off("RMSPROP_C_OPENMP"):
            print("rmsprop_c: OpenMP disabled by RMSPROP_C_OPENMP=0; building serial kernels")
            return [], []
        compile_args, link_args = OPENMP_FLAGS[family]
        if self._try_build(OPENMP_PROBE, compile_args, link_args, run=True):
            return compile_args, link_args
        message = (
            "rmsprop_c: the compiler cannot build and run an OpenMP program; building serial "
            "kernels (multi-threaded steps disabled)."
        )
        if family == "clang":
            message += " clang needs the libomp runtime (Debian: apt-get install libomp-dev)."
        if _env_flag("RMSPROP_C_REQUIRE_OPENMP"):
            sys.exit(message + " RMSPROP_C_REQUIRE_OPENMP=1 makes this fatal.")
        warnings.warn(message)
        return [], []

    def _simd_flags(self, family, common):
        """{target name: its extra flags} for the targets this compiler builds here."""
        x86_64 = sysconfig.get_platform().split("-")[-1] in X86_64_PLATFORMS
        built = {}
        for name, per_family in SIMD_TARGETS.items():
            flags = per_family[family]
            if name == "baseline":
                built[name] = flags
            elif flags is None:
                if x86_64:
                    warnings.warn(f"rmsprop_c: the {name} kernels are not built with {family}; "
                                  "the baseline kernels run instead")
            elif x86_64 and self._try_build("int main(void) { return 0; }\n", common + flags):
                built[name] = flags
        return built

    def build_extensions(self):
        _check_target_tables()
        self._refuse_compiler_flags()
        compiler = self._compiler_version()
        family = self._family(compiler)
        extra = shlex.split(os.environ.get("RMSPROP_C_EXTRA_CFLAGS", ""))
        openmp_compile, openmp_link = self._openmp_flags(family)
        common = BASE_FLAGS[family] + openmp_compile + extra
        self._target_flags = self._simd_flags(family, common)
        self._kernel_flags = KERNEL_FLAGS[family]
        # Lean by default on Linux: the symbol table names every kernel instance (a sixth of
        # the module), and the Cython code's unwind tables serve only debuggers and profilers
        # (no C++ exception passes through it). The dynamic symbols Python needs stay.
        lean = (family != "msvc" and sys.platform.startswith("linux") and not self.debug
                and not _env_flag("RMSPROP_C_KEEP_SYMBOLS"))
        self._glue_flags = GLUE_FLAGS[family] + (LEAN_GLUE_FLAGS if lean else [])
        described = " ".join(common) + "".join(
            f"; {name}: {' '.join(flags)}" for name, flags in self._target_flags.items() if flags)
        for ext in self.extensions:
            ext.extra_compile_args = common
            ext.extra_link_args = openmp_link + extra + (["-s"] if lean else [])
            ext.define_macros += [(f"RC_BUILT_{name.upper()}", "1" if name in self._target_flags
                                   else "0") for name in SIMD_TARGETS]
            ext.define_macros += [
                ("RC_BUILD_COMPILER", f'"{compiler}"'),
                ("RC_BUILD_FLAGS", f'"{described}"'),
                ("RC_BUILD_SIMD", '"{}"'.format(" ".join(self._target_flags))),
            ]
        super().build_extensions()

    def _compile_units(self, ext):
        """(source, extra flags) for every source to compile; unbuilt targets' files dropped."""
        units = []
        for source in sorted(ext.sources):
            match = re.search(r"kernels_(\w+)\.cpp$", source.replace("\\", "/"))
            if match and match.group(1) in SIMD_TARGETS:
                if match.group(1) in self._target_flags:
                    units.append((source, ext.extra_compile_args + self._kernel_flags
                                  + self._target_flags[match.group(1)]))
            elif source.replace("\\", "/").startswith("rmsprop_c/"):
                units.append((source, ext.extra_compile_args + self._glue_flags))
            else:
                units.append((source, ext.extra_compile_args))
        return units

    def build_extension(self, ext):
        # setuptools compiles an extension's sources one after another with the same flags:
        # here each source gets its own flags and the compiles run side by side.
        ext_path = self.get_ext_fullpath(ext.name)
        if not (self.force or newer_group(list(ext.sources) + ext.depends, ext_path, "newer")):
            return
        units = self._compile_units(ext)
        if self.compiler.compiler_type == "msvc" and not self.compiler.initialized:
            self.compiler.initialize()  # not thread-safe: done before the parallel compiles
        self.mkpath(self.build_temp)
        macros = ext.define_macros[:] + [(name,) for name in ext.undef_macros]

        def compile_one(unit):
            source, flags = unit
            return self.compiler.compile([source], output_dir=self.build_temp, macros=macros,
                                         include_dirs=ext.include_dirs, debug=self.debug,
                                         extra_postargs=flags, depends=ext.depends)

        jobs = self.parallel if isinstance(self.parallel, int) and self.parallel > 0 else 0
        jobs = min(len(units), jobs or os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            objects = [obj for objs in pool.map(compile_one, units) for obj in objs]
        self.compiler.link_shared_object(
            objects + list(ext.extra_objects or []),
            ext_path,
            libraries=self.get_libraries(ext),
            library_dirs=ext.library_dirs,
            runtime_library_dirs=ext.runtime_library_dirs,
            extra_postargs=ext.extra_link_args or [],
            export_symbols=self.get_export_symbols(ext),
            debug=self.debug,
            build_temp=self.build_temp,
            target_lang=ext.language or "c++",
        )


extension = Extension(
    "rmsprop_c._kernels",
    sources=["rmsprop_c/_kernels.pyx", "src/dispatch.cpp"]
    + [f"src/kernels_{name}.cpp" for name in SIMD_TARGETS],
    include_dirs=["src", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    language="c++",
    depends=["src/kernel_body.hpp", "src/lowp_body.hpp", "src/lowp_fused.hpp",
             "src/rmsprop_kernels.h", "src/simd_targets.h"],
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
