# SIMD target selection and the build facts show_config() reports. Every target gives
# bit-identical results; the choice changes only speed.

cdef extern from "simd_targets.h":
    const char *rc_simd_name(int simd)

SIMD_NAMES = tuple(rc_simd_name(i).decode() for i in range(RC_N_SIMD))

cdef int _simd = RC_SIMD_BASELINE


cdef int _simd_index(str name) except -1:
    try:
        return SIMD_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown SIMD target {name!r}; expected one of {', '.join(SIMD_NAMES)}"
        ) from None


def simd_targets_built():
    """SIMD targets compiled into this build, e.g. ``('baseline', 'avx2', 'avx512')``."""
    return tuple(name for i, name in enumerate(SIMD_NAMES) if rc_simd_built(i))


def simd_targets_supported():
    """SIMD targets that are built and that this CPU can run."""
    return tuple(name for i, name in enumerate(SIMD_NAMES)
                 if rc_simd_built(i) and rc_simd_supported(i))


def get_simd_target():
    """The SIMD target the kernels run with now."""
    return SIMD_NAMES[_simd]


def set_simd_target(name):
    """Run the kernels with SIMD target ``name`` ('baseline', 'avx2' or 'avx512').

    Every target gives bit-identical results; this exists for tests and benchmarks.
    ``None`` picks the best target this CPU supports.
    """
    global _simd
    if name is None:
        _simd = SIMD_NAMES.index(simd_targets_supported()[-1])
        return SIMD_NAMES[_simd]
    cdef int index = _simd_index(name)
    if not rc_simd_built(index):
        raise ValueError(f"SIMD target {name!r} was not built; built: {simd_targets_built()}")
    if not rc_simd_supported(index):
        raise ValueError(
            f"SIMD target {name!r} is not supported by this CPU; "
            f"supported: {simd_targets_supported()}"
        )
    _simd = index
    return name


def _kernel_addresses(name):
    """Where SIMD target ``name``'s update kernels (every variant, both dtypes) are loaded.

    For the build-fact tests, which disassemble each target's code: a stripped module names
    no functions.
    """
    cdef int index = _simd_index(name)
    if not rc_simd_built(index):
        raise ValueError(f"SIMD target {name!r} was not built; built: {simd_targets_built()}")
    cdef int variant
    addresses = []
    for variant in range(RC_N_VARIANTS):
        addresses.append(<uintptr_t>rc_get_kernel(index, RC_FLOAT32, variant))
        addresses.append(<uintptr_t>rc_get_kernel(index, RC_FLOAT64, variant))
    return addresses


def _select_simd_from_environment():
    requested = os.environ.get("RMSPROP_C_SIMD", "").strip().lower()
    if requested:
        try:
            set_simd_target(requested)
        except ValueError as error:
            raise ValueError(f"RMSPROP_C_SIMD={requested!r}: {error}") from None
    else:
        set_simd_target(None)


_select_simd_from_environment()


def build_info():
    """Compiler, flags, OpenMP and SIMD facts of this build."""
    return {
        "compiler": RC_BUILD_COMPILER.decode(),
        "flags": RC_BUILD_FLAGS.decode(),
        "openmp": bool(RC_OPENMP_ENABLED),
        "simd_built": simd_targets_built(),
        "simd_supported": simd_targets_supported(),
        "simd_chosen": get_simd_target(),
        # Fewer elements than this never split across threads (each worker gets at least
        # half of it); above it, n_threads=k splits and n_threads=None decides per step.
        "min_parallel_elements": 2 * MIN_WORKER_ELEMENTS,
    }


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(RC_OPENMP_ENABLED)
