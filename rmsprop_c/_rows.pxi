# Lazy row steps for embedding tables: only the rows a batch lists are read and written.
#
# A row of a C-contiguous (rows, width) table is one contiguous run of `width` elements, so
# the dense chunk kernels step a row unchanged: its rc_buffers point at the row, and the
# kernel runs over [0, width). The listings are grouped once per call by a stable LSD radix
# sort on the row: each distinct row becomes one unit of work holding its listings in order
# of appearance, and units run in ascending row order (kinder to the TLB and DRAM pages than
# random order). A unit runs on one worker, so duplicates are summed (or applied one after
# another) in the same order whatever the thread count: bits never depend on it. Workers
# split units by listing count under a row-step threading policy.

from libc.string cimport memcpy

cdef extern from *:
    """
    /* acc += g, one IEEE add per element in the buffer dtype (same as NumPy's add). */
    static void rc_rows_add_f32(float *__restrict acc, const float *__restrict g,
                                ptrdiff_t n) {
        for (ptrdiff_t i = 0; i < n; ++i) acc[i] = acc[i] + g[i];
    }
    static void rc_rows_add_f64(double *__restrict acc, const double *__restrict g,
                                ptrdiff_t n) {
        for (ptrdiff_t i = 0; i < n; ++i) acc[i] = acc[i] + g[i];
    }
    /* Rows sit at random places: ask for a row's first bytes a few units ahead. */
    static inline void rc_rows_prefetch(const char *row, ptrdiff_t bytes, int for_write) {
        if (row == NULL) return;
        for (ptrdiff_t offset = 0; offset < bytes; offset += 64) {
            if (for_write) __builtin_prefetch(row + offset, 1, 3);
            else __builtin_prefetch(row + offset, 0, 3);
        }
    }
    """
    void rc_rows_add_f32(float *acc, const float *g, Py_ssize_t n) noexcept nogil
    void rc_rows_add_f64(double *acc, const double *g, Py_ssize_t n) noexcept nogil
    void rc_rows_prefetch(const char *row, Py_ssize_t bytes, int for_write) noexcept nogil

# Units ahead whose rows are prefetched, and how much of a row (the hardware streams on).
cdef Py_ssize_t PREFETCH_UNITS = 8
cdef Py_ssize_t PREFETCH_BYTES = 512
cdef Py_ssize_t MIN_ROW_BLOCK = 64             # listings: a few microseconds of rows


cdef enum:
    DUPLICATES_SUM = 0
    DUPLICATES_SEQUENTIAL = 1
    DUPLICATES_ERROR = 2

_DUPLICATE_MODES = ("sum", "sequential", "error")

# Row steps keep their own policies (per power-of-two class of elements touched): a row's
# cost differs from a dense element's, so they must not share timings with dense steps;
# the same-traffic yardstick keeps a second set (index 1), so it never sways real steps.
cdef Policy _row_policies[2][64]
memset(_row_policies, 0, sizeof(_row_policies))


cdef inline Policy *_size_policy_rows(Py_ssize_t total, bint yardstick) noexcept nogil:
    cdef int size_class = 0
    while total > 1 and size_class < 63:
        total >>= 1
        size_class += 1
    return &_row_policies[1 if yardstick else 0][size_class]


cdef struct RowWork:
    const RowGroups *groups
    rc_kernel_fn kernel
    rc_nonfinite_fn read_pass           # grad preprocessing (grad_scale, clip_value)
    const rc_hyper *hyper
    char *param
    const char *grad
    char *square_avg
    char *momentum_buffer
    char *grad_avg
    char *max_square_avg
    Py_ssize_t width
    Py_ssize_t row_bytes
    int dtype
    int mode
    char *scratch                       # one row per worker (summed duplicates)


cdef inline void _row_kernel(const RowWork *work, const rc_buffers *buffers) noexcept nogil:
    """One row's kernel; preprocessed grads (grad_scale, clip_value) go through L1 blocks,
    applied to the row's whole gradient (after duplicates are summed), as for dense steps."""
    if work.hyper.preprocess:
        _run_preprocessed(work.kernel, work.read_pass, work.hyper, buffers, work.width,
                          work.row_bytes // work.width, 0, work.width)
    else:
        work.kernel(work.hyper, buffers, 0, work.width)


cdef inline Py_ssize_t _first_unit_from(const RowGroups *groups,
                                        Py_ssize_t occurrence) noexcept nogil:
    """The first unit whose listings start at or after `occurrence`."""
    cdef Py_ssize_t low = 0, high = groups.n_units, middle
    while low < high:
        middle = (low + high) // 2
        if groups.starts[middle] < occurrence:
            low = middle + 1
        else:
            high = middle
    return low


cdef inline void _prefetch_unit(const RowWork *work, Py_ssize_t unit) noexcept nogil:
    cdef const RowGroups *groups = work.groups
    cdef Py_ssize_t offset = <Py_ssize_t>groups.rows[unit] * work.row_bytes
    cdef Py_ssize_t bytes = work.row_bytes if work.row_bytes < PREFETCH_BYTES \
        else PREFETCH_BYTES
    cdef Py_ssize_t position = groups.order[groups.starts[unit]]
    rc_rows_prefetch(work.param + offset, bytes, 1)
    rc_rows_prefetch(work.square_avg + offset, bytes, 1)
    if work.momentum_buffer != NULL:
        rc_rows_prefetch(work.momentum_buffer + offset, bytes, 1)
    if work.grad_avg != NULL:
        rc_rows_prefetch(work.grad_avg + offset, bytes, 1)
    if work.max_square_avg != NULL:
        rc_rows_prefetch(work.max_square_avg + offset, bytes, 1)
    rc_rows_prefetch(work.grad + position * work.row_bytes, bytes, 0)


cdef void _run_units(const RowWork *work, Py_ssize_t first, Py_ssize_t stop,
                     char *scratch) noexcept nogil:
    """Steps units [first, stop): each row with its occurrences, in order."""
    cdef const RowGroups *groups = work.groups
    cdef rc_buffers buffers
    cdef Py_ssize_t unit, begin, end, k, offset
    cdef Py_ssize_t row_bytes = work.row_bytes
    memset(&buffers, 0, sizeof(rc_buffers))
    for unit in range(first, stop if stop < first + PREFETCH_UNITS else first + PREFETCH_UNITS):
        _prefetch_unit(work, unit)
    for unit in range(first, stop):
        if unit + PREFETCH_UNITS < stop:
            _prefetch_unit(work, unit + PREFETCH_UNITS)
        offset = <Py_ssize_t>groups.rows[unit] * row_bytes
        buffers.param = work.param + offset
        buffers.square_avg = work.square_avg + offset
        if work.momentum_buffer != NULL:
            buffers.momentum_buffer = work.momentum_buffer + offset
        if work.grad_avg != NULL:
            buffers.grad_avg = work.grad_avg + offset
        if work.max_square_avg != NULL:
            buffers.max_square_avg = work.max_square_avg + offset
        begin = groups.starts[unit]
        end = groups.starts[unit + 1]
        if end - begin == 1 or work.mode == DUPLICATES_SEQUENTIAL:
            for k in range(begin, end):
                buffers.grad = work.grad + groups.order[k] * row_bytes
                _row_kernel(work, &buffers)
            continue
        # g = g_first + g_second + ..., left to right in the buffer dtype.
        memcpy(scratch, work.grad + groups.order[begin] * row_bytes, row_bytes)
        for k in range(begin + 1, end):
            if work.dtype == RC_FLOAT32:
                rc_rows_add_f32(<float *>scratch,
                                <const float *>(work.grad + groups.order[k] * row_bytes),
                                work.width)
            else:
                rc_rows_add_f64(<double *>scratch,
                                <const double *>(work.grad + groups.order[k] * row_bytes),
                                work.width)
        buffers.grad = scratch
        _row_kernel(work, &buffers)


cdef void _run_units_shared(const RowWork *work, Py_ssize_t *cursor, Py_ssize_t block,
                            char *scratch) noexcept nogil:
    """Blocks of `block` listings from the shared `cursor`: each block's units are those whose
    listings start in it, so every unit runs once, whole, whichever worker takes it."""
    cdef Py_ssize_t first, n = work.groups.n
    while True:
        first = rc_atomic_take(cursor, block)
        if first >= n:
            return
        _run_units(work, _first_unit_from(work.groups, first),
                   _first_unit_from(work.groups, first + block if first + block < n else n),
                   scratch)


cdef inline Py_ssize_t _row_block(Py_ssize_t listings, Py_ssize_t n_workers) noexcept nogil:
    """Listings per block of a shared cursor (as for dense elements, about 16 per worker)."""
    return max(listings // (n_workers * SHARED_BLOCKS_PER_WORKER) + 1, MIN_ROW_BLOCK)


cdef void _run_rows(const RowWork *work, int n_workers) noexcept nogil:
    """One parallel region; workers take blocks of the listings from a shared cursor."""
    cdef Py_ssize_t worker, cursor = 0
    cdef Py_ssize_t *shared = &cursor
    cdef Py_ssize_t block = _row_block(work.groups.n, n_workers)
    cdef unsigned int mode, previous
    if n_workers <= 1:
        _run_units(work, 0, work.groups.n_units, work.scratch)
        return
    mode = rc_fp_mode()
    for worker in prange(n_workers, schedule="static", num_threads=n_workers):
        previous = rc_fp_mode_enter(mode)
        _run_units_shared(work, shared, block, work.scratch + worker * work.row_bytes)
        rc_fp_mode_leave(previous)


cdef int _rows_step(object param, object indices, object grad_rows, object square_avg,
                    object momentum_buffer, object grad_avg, object max_square_avg,
                    object duplicates, object n_threads, const Options *options,
                    long long step) except -1:
    """Checks everything, groups the indices, then runs the row kernels. `options` NULL:
    the same-traffic kernel."""
    global _largest_team
    cdef int mode = _duplicates_mode(duplicates)
    cdef int threads = _thread_count(n_threads)
    cdef cnp.ndarray index_array = _check_indices(indices)

    cdef cnp.ndarray param_array = _check_array(param, "param", True)
    if cnp.PyArray_NDIM(param_array) != 2:
        raise ValueError(f"param must be 2-D (rows, width), got shape "
                         f"{(<object>param_array).shape}")
    cdef Py_ssize_t n_rows = cnp.PyArray_DIMS(param_array)[0]
    cdef Py_ssize_t width = cnp.PyArray_DIMS(param_array)[1]
    cdef Py_ssize_t n = cnp.PyArray_DIMS(index_array)[0]
    cdef cnp.ndarray grad_array = _check_array(grad_rows, "grad_rows", False)
    if cnp.PyArray_TYPE(grad_array) != cnp.PyArray_TYPE(param_array):
        raise TypeError(f"grad_rows has dtype {grad_array.dtype}, but param has dtype "
                        f"{param_array.dtype}")
    if cnp.PyArray_NDIM(grad_array) != 2 or cnp.PyArray_DIMS(grad_array)[0] != n or \
            cnp.PyArray_DIMS(grad_array)[1] != width:
        raise ValueError(f"grad_rows has shape {(<object>grad_array).shape}; expected "
                         f"(len(indices), param.shape[1]) = ({n}, {width})")
    cdef list arrays = [param_array, grad_array]
    cdef list names = ["param", "grad_rows"]
    cdef RowWork work
    memset(&work, 0, sizeof(RowWork))
    cdef void **slots[4]
    slots[0] = <void **>&work.square_avg
    slots[1] = <void **>&work.momentum_buffer
    slots[2] = <void **>&work.grad_avg
    slots[3] = <void **>&work.max_square_avg
    cdef tuple values = (square_avg, momentum_buffer, grad_avg, max_square_avg)
    _collect_states(values, STATE_KEYS, _given(values), param_array, "param", False, slots,
                    arrays, names)
    _check_disjoint(arrays, names)
    cdef int dtype = _dtype_code(param_array)

    cdef rc_hyper hyper
    memset(&hyper, 0, sizeof(rc_hyper))
    if options != NULL:
        if work.momentum_buffer == NULL and options.values[_MOMENTUM] != 0.0:
            raise ValueError("momentum > 0 needs a momentum_buffer")
        if work.grad_avg == NULL and options.values[_CENTERED] != 0.0:
            raise ValueError("centered=True needs a grad_avg buffer")
        if work.max_square_avg == NULL and options.values[_AMSGRAD] != 0.0:
            raise ValueError("amsgrad=True needs a max_square_avg buffer")
        _check_representable(options, None, dtype, -1)
        _fill_hyper(options, step, &hyper)
        work.kernel = rc_get_kernel(_simd, dtype, _variant(options))
        work.read_pass = rc_get_nonfinite_check(_simd, dtype)
    else:
        work.kernel = rc_get_traffic_kernel(
            _simd, dtype,
            rc_traffic_variant(work.grad_avg != NULL, work.max_square_avg != NULL,
                               RC_MOM_LR_OUTSIDE if work.momentum_buffer != NULL
                               else RC_MOM_NONE))
    if n == 0 or width == 0:
        return 0

    # One block: the rows and positions being sorted and their spares, the units' starts,
    # the radix histogram, then one scratch row per worker (64-byte aligned).
    cdef Py_ssize_t row_bytes = width * cnp.PyArray_ITEMSIZE(param_array)
    cdef bint adaptive = n_threads is None
    cdef Policy *policy = _size_policy_rows(n * width, options == NULL)
    cdef int workers = _policy_workers(policy, threads, n * width, adaptive)
    cdef Py_ssize_t words = 5 * n + 1 + (<Py_ssize_t>1 << RADIX_BITS)
    cdef long long *block = <long long *>malloc(sizeof(long long) * words
                                                + workers * row_bytes + 64)
    if block == NULL:
        raise MemoryError("no memory to group the row indices")
    cdef RowGroups groups
    groups.n = n
    groups.starts = <Py_ssize_t *>(block + 4 * n)
    cdef Py_ssize_t bad, duplicate = -1
    cdef double elapsed
    cdef long long started
    work.scratch = <char *>(block + words)
    work.scratch = work.scratch + (64 - (<uintptr_t>work.scratch) % 64) % 64
    try:
        with nogil:
            bad = _read_indices(index_array, block, n_rows)
            if bad < 0:
                duplicate = _group_rows(block, <Py_ssize_t *>(block + n), block + 2 * n,
                                        <Py_ssize_t *>(block + 3 * n),
                                        <Py_ssize_t *>(block + 5 * n + 1), n_rows - 1,
                                        &groups)
        if bad >= 0:
            value = index_array[bad]
            raise IndexError(f"indices[{bad}] = {value} is out of range for param with "
                             f"{n_rows} rows")
        if duplicate >= 0 and mode == DUPLICATES_ERROR:
            first = int(np.flatnonzero(index_array == index_array[duplicate])[0])
            raise ValueError(f"indices[{duplicate}] repeats row {index_array[duplicate]} "
                             f"(first listed at indices[{first}]); duplicates='error' "
                             "refuses repeated rows")
        work.groups = &groups
        work.hyper = &hyper
        work.param = <char *>cnp.PyArray_DATA(param_array)
        work.grad = <const char *>cnp.PyArray_DATA(grad_array)
        work.width = width
        work.row_bytes = row_bytes
        work.dtype = dtype
        work.mode = mode
        with nogil:
            started = rc_now_ns()
            _run_rows(&work, workers)
            elapsed = <double>(rc_now_ns() - started)
            if workers > _largest_team:           # started threads: not a step's cost
                _largest_team = workers
                elapsed = -1.0
            if adaptive:
                _policy_record(policy, workers, elapsed)
    finally:
        free(block)
    return 0


def rmsprop_step_rows(param, indices, grad_rows, square_avg, *, lr, alpha, eps,
                      momentum=0.0, centered=False, nesterov=False, weight_decay=0.0,
                      decoupled_weight_decay=False, maximize=False, amsgrad=False,
                      bias_correction=False, eps_in_sqrt=False, lr_in_momentum=False,
                      grad_scale=1.0, clip_value=None, momentum_buffer=None, grad_avg=None,
                      max_square_avg=None, step=1, duplicates="sum", n_threads=None):
    """Apply one RMSprop update to the listed rows of a table, in place (lazy rows).

    Row ``indices[i]`` of ``param`` and of every state buffer is updated with gradient row
    ``grad_rows[i]``; every other row stays byte-identical. The update of a row is the one
    of :func:`rmsprop_step` on that row, bit for bit (``rmsprop_c.reference.
    rmsprop_step_rows`` is the spec), for every dtype, SIMD target and thread count.

    Parameters
    ----------
    param : numpy.ndarray
        A 2-D ``(rows, width)`` float32 or float64 table, C-contiguous, writeable. # OUT
    indices : numpy.ndarray
        1-D int32 or int64 row numbers in ``[0, rows)``, any strides. # IN
    grad_rows : numpy.ndarray
        ``(len(indices), width)``, same dtype as ``param``, C-contiguous; row ``i`` is the
        gradient of row ``indices[i]``. Never written. # IN
    square_avg : numpy.ndarray
        Same shape and dtype as ``param``. Updated in place (listed rows only). # OUT
    lr, alpha, eps, momentum, centered, nesterov, weight_decay, decoupled_weight_decay, \
maximize, amsgrad, bias_correction, eps_in_sqrt, lr_in_momentum, grad_scale, clip_value
        The options of :func:`rmsprop_step`, with the same meaning, defaults and checks
        (``grad_scale`` and ``clip_value`` apply to a row's summed gradient).
    momentum_buffer, grad_avg, max_square_avg : numpy.ndarray or None
        State buffers, same shape and dtype as ``param``, listed rows updated in place. # OUT
    step : int, default 1
        The step count of the bias correction, as in :func:`rmsprop_step`.
    duplicates : {'sum', 'sequential', 'error'}, default 'sum'
        Rows listed more than once: ``'sum'`` adds their gradient rows in order of
        appearance (``g = g_first + g_second + ...``) and steps the row once; ``'sequential'``
        steps the row once per listing, in order of appearance (TensorFlow's sparse
        RMSProp); ``'error'`` refuses them.
    n_threads : int or None
        None: one thread or OpenMP's thread count, chosen per call from the step times this
        process measured; k: k threads (at most the CPU count). Threads split rows; results
        are identical either way.

    Raises
    ------
    TypeError
        A buffer that is not a float32/float64 ndarray, dtypes that differ, ``indices`` not
        int32/int64, or an option of the wrong type.
    ValueError
        Shapes that do not fit, a buffer that is not C-contiguous or not writeable, buffers
        that share memory, an option out of range, a missing state buffer, or with
        ``duplicates='error'`` a repeated row (naming its position).
    IndexError
        An index that is negative or not below ``param.shape[0]`` (naming its position).

    Nothing is written when an exception is raised.
    """
    cdef Options options
    if clip_value is None:
        clip_value = INFINITY
    cdef tuple values = (lr, alpha, eps, momentum, centered, nesterov, weight_decay,
                         decoupled_weight_decay, maximize, amsgrad, bias_correction,
                         eps_in_sqrt, lr_in_momentum, grad_scale, clip_value)
    cdef Py_ssize_t k
    assert len(values) == _N_KEYS
    for k in range(_N_KEYS):
        _read_value(values[k], k, None, &options)
    _check_option_pairs(&options, None)
    cdef long long step_count = _positive_int(step, "step")
    _rows_step(param, indices, grad_rows, square_avg, momentum_buffer, grad_avg,
               max_square_avg, duplicates, n_threads, &options, step_count)


def same_traffic_step_rows(param, indices, grad_rows, square_avg, *, momentum_buffer=None,
                           grad_avg=None, max_square_avg=None, duplicates="sum",
                           n_threads=None):
    """The yardstick of row steps: ``state += g``, ``param += g`` on the listed rows.

    Same checks, index grouping, duplicate handling and threading as
    :func:`rmsprop_step_rows`, over the same buffers, with trivial arithmetic: its time is
    the memory ceiling of the row step. For benchmarks.
    """
    _rows_step(param, indices, grad_rows, square_avg, momentum_buffer, grad_avg,
               max_square_avg, duplicates, n_threads, NULL, 1)
