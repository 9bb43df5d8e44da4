# Threads: how many a step may use, and the one parallel region that runs a step (or the
# calling thread, as the threading policy in _policy.pxi decides).

# Each block of a step's elements starts on a 64-element boundary (whole cache lines).
cdef Py_ssize_t SPLIT_ALIGNMENT = 64
# A block (and a worker's share) has at least this many elements: below it a thread's share
# is under a microsecond of work, less than any fork/join measured.
cdef Py_ssize_t MIN_WORKER_ELEMENTS = 2048

# Workers take their share of a step in blocks from a shared cursor, about this many blocks
# each: a worker slowed down (by another process, a BLAS thread still spinning, a slower
# core) leaves its blocks to the others instead of holding up the step. Every element still
# goes through the same kernel segment, so the bits do not depend on who ran it.
cdef Py_ssize_t SHARED_BLOCKS_PER_WORKER = 16
cdef Py_ssize_t CHECK_BLOCK_TENSORS = 64

cdef extern from *:
    """
    static inline void rc_atomic_add(Py_ssize_t *target, Py_ssize_t value) {
        __atomic_fetch_add(target, value, __ATOMIC_RELAXED);
    }
    static inline Py_ssize_t rc_atomic_take(Py_ssize_t *cursor, Py_ssize_t amount) {
        return __atomic_fetch_add(cursor, amount, __ATOMIC_RELAXED);
    }
    """
    void rc_atomic_add(Py_ssize_t *target, Py_ssize_t value) noexcept nogil
    Py_ssize_t rc_atomic_take(Py_ssize_t *cursor, Py_ssize_t amount) noexcept nogil

cdef int _cpu_count = 1

def _init_threads():
    global _cpu_count
    _cpu_count = max(1, omp_get_num_procs())
    # OMP_NUM_THREADS (or the CPU count) as OpenMP read it, clamped to the machine.
    rmsprop_c_set_num_threads(min(max(1, omp_get_max_threads()), _cpu_count))
    if rc_install_atfork() != 0:
        raise OSError("pthread_atfork failed: cannot track forks safely")


_init_threads()


def _register_with_threadpoolctl():
    """threadpoolctl limits ("openmp" API) apply to rmsprop_c's process-wide thread limit."""
    try:
        from threadpoolctl import LibController, register
    except ImportError:     # threadpoolctl < 3.5: limits still reach OpenMP itself
        return

    class RmspropCController(LibController):
        user_api = "openmp"
        internal_api = "rmsprop_c"
        filename_prefixes = ("_kernels",)
        check_symbols = ("rmsprop_c_get_num_threads", "rmsprop_c_set_num_threads")

        def get_num_threads(self):
            return self.dynlib.rmsprop_c_get_num_threads()

        def set_num_threads(self, num_threads):
            self.dynlib.rmsprop_c_set_num_threads(int(num_threads))

        def get_version(self):
            return None

    register(RmspropCController)


_register_with_threadpoolctl()


def max_threads():
    """Threads a step may use when ``n_threads`` is None, in any calling thread.

    ``OMP_NUM_THREADS`` (or the CPU count) at import, lowered by a threadpoolctl limit
    (``threadpool_limits(n)``, or ``user_api="openmp"``), at most the CPU count; 1 in a child
    forked while its parent had other threads running.
    """
    return _default_threads()


def cpu_count():
    """Processors OpenMP may use in this process (the upper bound of ``n_threads``)."""
    return _cpu_count


def forked_after_parallel():
    """True in a child forked while its parent had threads running: it steps serially."""
    return bool(rc_parallel_unsafe)


def fork_generation():
    """How many forks led to this process since rmsprop_c was imported (0 in the original)."""
    return rc_fork_generation


cdef int _default_threads() noexcept nogil:
    if rc_parallel_unsafe or not RC_OPENMP_ENABLED:
        return 1
    cdef int limit = rc_process_thread_limit
    return limit if limit < _cpu_count else _cpu_count


cdef int _thread_count(object n_threads) except -1:
    """Upper bound of threads for a step: None -> max_threads(); else n_threads (>= 1),
    at most the CPU count; 1 where parallel regions are unsafe or not built."""
    if n_threads is None:
        return _default_threads()
    cdef long long requested = _positive_int(n_threads, "n_threads")
    if rc_parallel_unsafe or not RC_OPENMP_ENABLED:
        return 1
    return <int>(requested if requested < _cpu_count else _cpu_count)


# ---------------------------------------------------------------------------------------
# A plan: the tensors of one step laid end to end in one element space, split across
# workers by element count.

cdef struct Plan:
    Py_ssize_t n                        # tensors in the plan
    Py_ssize_t total                    # their elements
    Py_ssize_t *offsets                 # n + 1 cumulative element counts
    unsigned char *itemsizes            # bytes per element of each tensor
    rc_kernel_fn *kernels
    rc_nonfinite_fn *checks             # the grad read pass (norm partials, preprocessing)
    const rc_hyper **hypers
    const rc_buffers **buffers
    Py_ssize_t *chunk_offsets           # n + 1 cumulative norm-chunk counts (or NULL)


cdef inline Py_ssize_t _plan_first(const Plan *plan, Py_ssize_t begin) noexcept nogil:
    """The plan entry holding element `begin` (binary search of the offsets)."""
    cdef Py_ssize_t low = 0, high = plan.n, middle
    while low < high:
        middle = (low + high) // 2
        if plan.offsets[middle + 1] <= begin:
            low = middle + 1
        else:
            high = middle
    return low


# Kernel calls cover fixed segments of a tensor, whatever the thread count: the elements
# before the param's first 64-byte boundary, then SEGMENT_ELEMENTS at a time (a small tensor
# is one segment). A worker runs the segments that START in its share of the elements. So
# every element goes through the same code path (vector loop or scalar remainder) for every
# thread count, which keeps even NaN signs identical, and the main loops never straddle cache
# lines (NumPy puts large arrays 16 bytes past a boundary: 1.15-1.3x slower out of cache).
cdef Py_ssize_t SEGMENT_ELEMENTS = 8192
cdef Py_ssize_t SMALL_TENSOR_ELEMENTS = 2048
cdef Py_ssize_t PREFETCH_TENSORS = 8    # tensors ahead whose first lines are requested


cdef inline Py_ssize_t _head_elements(const Plan *plan, Py_ssize_t k,
                                      Py_ssize_t size) noexcept nogil:
    cdef uintptr_t address = <uintptr_t>plan.buffers[k].param
    cdef Py_ssize_t itemsize = plan.itemsizes[k]
    if size < SMALL_TENSOR_ELEMENTS or address % itemsize:
        return 0
    return <Py_ssize_t>((64 - address % 64) % 64) // itemsize


# Elements per preprocessing block: 4 KiB of float64 (or 2 KiB of float32), in L1.
cdef enum:
    PREPROCESS_BLOCK = 512


cdef inline void *_at(void *base, Py_ssize_t start, Py_ssize_t itemsize) noexcept nogil:
    return NULL if base == NULL else <void *>(<char *>base + start * itemsize)


cdef void _run_preprocessed(rc_kernel_fn kernel, rc_nonfinite_fn read_pass,
                            const rc_hyper *hyper, const rc_buffers *buffers, Py_ssize_t size,
                            Py_ssize_t itemsize, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """Elements [start, stop) of one tensor with preprocessed grads: each block's grads go
    through the read pass into an L1 buffer, and the kernel reads that buffer instead."""
    cdef double block[PREPROCESS_BLOCK]
    cdef rc_buffers local
    cdef Py_ssize_t end
    cdef Py_ssize_t per_block = PREPROCESS_BLOCK * 8 // itemsize
    while start < stop:
        end = start + per_block if start + per_block < stop else stop
        read_pass(hyper, buffers.grad, size, start, end, RC_READ_PREPROCESS, <void *>block)
        local.param = _at(buffers.param, start, itemsize)
        local.grad = <const void *>block
        local.square_avg = _at(buffers.square_avg, start, itemsize)
        local.momentum_buffer = _at(buffers.momentum_buffer, start, itemsize)
        local.grad_avg = _at(buffers.grad_avg, start, itemsize)
        local.max_square_avg = _at(buffers.max_square_avg, start, itemsize)
        kernel(hyper, &local, 0, end - start)
        start = end


cdef inline void _call_kernel(const Plan *plan, Py_ssize_t k, Py_ssize_t start,
                              Py_ssize_t stop) noexcept nogil:
    """Tensor k's kernel on [start, stop), through L1 blocks when grads are preprocessed."""
    if plan.buffers[k].lowp != NULL:      # low precision: widened blocks (src/lowp_body.hpp)
        plan.buffers[k].lowp.run(plan.kernels[k], plan.hypers[k], plan.buffers[k],
                                 plan.offsets[k + 1] - plan.offsets[k], start, stop)
    elif plan.hypers[k].preprocess:
        _run_preprocessed(plan.kernels[k], plan.checks[k], plan.hypers[k], plan.buffers[k],
                          plan.offsets[k + 1] - plan.offsets[k], plan.itemsizes[k], start,
                          stop)
    else:
        plan.kernels[k](plan.hypers[k], plan.buffers[k], start, stop)


cdef void _run_segments(const Plan *plan, Py_ssize_t k, Py_ssize_t low,
                        Py_ssize_t high) noexcept nogil:
    """Tensor k's segments whose first element lies in [low, high) (tensor-relative)."""
    cdef Py_ssize_t size = plan.offsets[k + 1] - plan.offsets[k]
    cdef Py_ssize_t head, start, stop
    if size < SMALL_TENSOR_ELEMENTS:
        if low == 0 and size > 0:
            _call_kernel(plan, k, 0, size)
        return
    head = _head_elements(plan, k, size)
    if low == 0 and head > 0:
        _call_kernel(plan, k, 0, head)
    start = head if low <= head else \
        head + (low - head + SEGMENT_ELEMENTS - 1) // SEGMENT_ELEMENTS * SEGMENT_ELEMENTS
    while start < high and start < size:
        stop = start + SEGMENT_ELEMENTS if start + SEGMENT_ELEMENTS < size else size
        _call_kernel(plan, k, start, stop)
        start = stop


cdef inline void _prefetch_buffers(const rc_buffers *buffers) noexcept nogil:
    """The first line of each of a tensor's buffers, a few tensors ahead: small tensors
    scattered over the heap (torch's allocator) cost a page walk each, which this starts."""
    rc_prefetch(buffers.param)
    rc_prefetch(buffers.grad)
    rc_prefetch(buffers.square_avg)
    if buffers.momentum_buffer != NULL:
        rc_prefetch(buffers.momentum_buffer)
    if buffers.grad_avg != NULL:
        rc_prefetch(buffers.grad_avg)
    if buffers.max_square_avg != NULL:
        rc_prefetch(buffers.max_square_avg)


cdef void _plan_run_range(const Plan *plan, Py_ssize_t begin, Py_ssize_t end) noexcept nogil:
    """The segments that start in global elements [begin, end)."""
    cdef Py_ssize_t k, stop
    if begin >= end:
        return
    k = _plan_first(plan, begin)
    while begin < end and k < plan.n:
        stop = plan.offsets[k + 1] if plan.offsets[k + 1] < end else end
        if k + PREFETCH_TENSORS < plan.n and plan.offsets[k + PREFETCH_TENSORS] < end:
            _prefetch_buffers(plan.buffers[k + PREFETCH_TENSORS])
        if stop > begin:
            _run_segments(plan, k, begin - plan.offsets[k], stop - plan.offsets[k])
            begin = stop
        k += 1


cdef inline Py_ssize_t _shared_block(Py_ssize_t total, Py_ssize_t n_workers) noexcept nogil:
    """Elements per block of a shared cursor, a multiple of SPLIT_ALIGNMENT."""
    cdef Py_ssize_t block = total // (n_workers * SHARED_BLOCKS_PER_WORKER) + 1
    if block < MIN_WORKER_ELEMENTS:
        block = MIN_WORKER_ELEMENTS
    return block + (-block) % SPLIT_ALIGNMENT


cdef void _plan_run_shared(const Plan *plan, Py_ssize_t *cursor,
                           Py_ssize_t block) noexcept nogil:
    """Blocks of `block` elements taken from the shared `cursor` until none is left."""
    cdef Py_ssize_t begin
    while True:
        begin = rc_atomic_take(cursor, block)
        if begin >= plan.total:
            return
        _plan_run_range(plan, begin, begin + block if begin + block < plan.total
                        else plan.total)


cdef inline Py_ssize_t _chunks_of(Py_ssize_t size) noexcept nogil:
    return (size + RC_NORM_CHUNK - 1) // RC_NORM_CHUNK


cdef inline Py_ssize_t _plan_first_chunk(const Plan *plan, Py_ssize_t chunk) noexcept nogil:
    """The plan entry holding global norm chunk `chunk`."""
    cdef Py_ssize_t low = 0, high = plan.n, middle
    while low < high:
        middle = (low + high) // 2
        if plan.chunk_offsets[middle + 1] <= chunk:
            low = middle + 1
        else:
            high = middle
    return low


cdef int _plan_norm_range(const Plan *plan, Py_ssize_t begin, Py_ssize_t end, int inf_norm,
                          double *partials) noexcept nogil:
    """Norm partials of global chunks [begin, end), each written at its own index."""
    cdef Py_ssize_t k, stop, base
    cdef int nonfinite = 0
    if begin >= end:
        return 0
    k = _plan_first_chunk(plan, begin)
    while begin < end and k < plan.n:
        stop = plan.chunk_offsets[k + 1] if plan.chunk_offsets[k + 1] < end else end
        if stop > begin:
            base = plan.chunk_offsets[k]
            nonfinite |= plan.checks[k](plan.hypers[k], plan.buffers[k].grad,
                                        plan.offsets[k + 1] - plan.offsets[k],
                                        begin - base, stop - base, inf_norm,
                                        <void *>(partials + base))
            begin = stop
        k += 1
    return nonfinite


cdef int _plan_norm(const Plan *plan, int n_workers, int inf_norm, double *partials,
                    double *norm) noexcept nogil:
    """The grad norm of the plan: partials per chunk in parallel, combined in chunk order
    (so the bits never depend on n_workers). Returns 1 when a scaled grad is non-finite."""
    cdef Py_ssize_t worker, chunk, total = plan.chunk_offsets[plan.n]
    cdef int nonfinite = 0
    cdef unsigned int mode, previous
    cdef double combined = 0.0, partial
    cdef bint nan_seen = False
    if n_workers > total:
        n_workers = <int>total if total > 0 else 1
    cdef Py_ssize_t cursor = 0, first
    cdef Py_ssize_t *shared = &cursor
    # Blocks of chunks from a shared cursor, as the kernels take blocks of elements.
    cdef Py_ssize_t block = max(total // (n_workers * SHARED_BLOCKS_PER_WORKER) + 1,
                                MIN_WORKER_ELEMENTS // RC_NORM_CHUNK)
    if n_workers <= 1:
        nonfinite = _plan_norm_range(plan, 0, total, inf_norm, partials)
    else:
        mode = rc_fp_mode()
        for worker in prange(n_workers, schedule="static", num_threads=n_workers):
            previous = rc_fp_mode_enter(mode)
            while True:
                first = rc_atomic_take(shared, block)
                if first >= total:
                    break
                nonfinite += _plan_norm_range(plan, first, min(first + block, total),
                                              inf_norm, partials)
            rc_fp_mode_leave(previous)
    for chunk in range(total):
        partial = partials[chunk]
        if inf_norm:
            if partial != partial:
                nan_seen = True
            elif partial > combined:
                combined = partial
        else:
            combined = combined + partial
    if inf_norm:
        norm[0] = NAN if nan_seen else combined
    else:
        norm[0] = sqrt(combined)
    return nonfinite != 0


cdef void _plan_run(const Plan *plan, int n_workers) noexcept nogil:
    """The step: one parallel region, every worker in the caller's floating-point mode."""
    cdef Py_ssize_t worker
    cdef unsigned int mode, previous
    if n_workers <= 1:
        _plan_run_range(plan, 0, plan.total)
        return
    cdef Py_ssize_t cursor = 0
    cdef Py_ssize_t *shared = &cursor
    cdef Py_ssize_t block = _shared_block(plan.total, n_workers)
    mode = rc_fp_mode()
    for worker in prange(n_workers, schedule="static", num_threads=n_workers):
        previous = rc_fp_mode_enter(mode)
        _plan_run_shared(plan, shared, block)
        rc_fp_mode_leave(previous)


# The largest team any parallel region had: a larger one starts new threads (milliseconds
# once per process), which says nothing about what later steps will cost.
cdef int _largest_team = 1


cdef double _plan_timed_run(const Plan *plan, int n_workers) noexcept nogil:
    """Runs the plan; returns its wall time in nanoseconds, or -1 when it started threads."""
    global _largest_team
    cdef long long started = rc_now_ns()
    _plan_run(plan, n_workers)
    cdef double elapsed = <double>(rc_now_ns() - started)
    if n_workers > _largest_team:
        _largest_team = n_workers
        return -1.0
    return elapsed


# Functional calls share one policy per power-of-two size class (the engine keeps its own).
