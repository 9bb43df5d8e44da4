# The engine's steps with row grads: a RowGrad(indices, rows) for a 2-D param steps only the
# listed rows (the lazy rule of rmsprop_step_rows), next to dense and None grads, in one call.
#
# A RowGrad is no array, so a step holding one fails the C checks of the dense path (nothing
# runs) and comes here; dense steps pay nothing for rows. Clarity over speed outside the
# kernels: every tensor is checked under the GIL (dense grads by the engine's own checks, row
# grads here: indices read and grouped by row), nothing is written until all pass. Then one
# parallel region runs the dense plan and, per row tensor, its units (a distinct row and its
# listings) split by listing count; a unit runs on one worker, so bits never depend on the
# thread count. A row tensor's step count advances like a dense one's and drives its bias
# correction.
#
# Clipping by the global norm and skip_nonfinite read the gradient each row tensor applies:
# with duplicates="sum" the summed rows, one per distinct row in ascending row order (they are
# materialised for it, then stepped from there); with "sequential" the listed rows as given.

from rmsprop_c._rowgrad import RowGrad as _RowGrad

cdef extern from *:
    """
    static inline int rc_is_exact_type(PyObject *o, PyObject *type) {
        return (PyObject *)Py_TYPE(o) == type;
    }
    """
    bint rc_is_exact_type(PyObject *o, PyObject *type) noexcept nogil

cdef PyObject *_ROWGRAD_TYPE = <PyObject *>_RowGrad

# Mixed steps keep their own threading policies, per power-of-two class of elements touched:
# their size changes step to step, so the engine's per-optimizer (dense) policy must not
# learn from them.
cdef Policy _engine_row_policies[64]
memset(_engine_row_policies, 0, sizeof(_engine_row_policies))


cdef struct RowTensor:
    Py_ssize_t tensor                   # the engine's tensor index
    RowGroups groups
    RowWork work
    long long *block                    # the grouping's memory
    char *summed                        # the summed rows, when a norm is measured
    Py_ssize_t n_chunks                 # norm chunks of the gradient the tensor applies
    double *partials
    Py_ssize_t cursor                   # the step's next listing to take (shared by workers)


cdef bint _engine_has_rows(MultiTensorStep self, tuple grads) noexcept:
    """Some grad is a RowGrad (arrays and None are skipped without a Python call)."""
    cdef Py_ssize_t i
    cdef PyObject *grad
    for i in range(self.n_tensors):
        grad = rc_tuple_item(<PyObject *>grads, i)
        if grad == _NONE or rc_is_ndarray(grad):
            continue
        if rc_is_exact_type(grad, _ROWGRAD_TYPE) or isinstance(<object>grad, _RowGrad):
            return True
    return False


cdef class _RowSteps:
    """The row tensors of one step: their checked arrays (held until the kernels are done)
    and C memory, freed when the step ends whatever happened."""
    cdef Py_ssize_t n
    cdef RowTensor *tensors
    cdef char *scratch                  # one row per worker, of the widest row tensor
    cdef Py_ssize_t scratch_row_bytes
    cdef list held

    def __cinit__(self, Py_ssize_t capacity):
        self.n = 0
        self.tensors = <RowTensor *>calloc(max(capacity, 1), sizeof(RowTensor))
        self.scratch = NULL
        self.held = []
        if self.tensors == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t k
        if self.tensors != NULL:
            for k in range(self.n):
                free(self.tensors[k].block)
                free(self.tensors[k].summed)
                free(self.tensors[k].partials)
            free(self.tensors)
        free(self.scratch)


cdef int _engine_check_row_grad(MultiTensorStep self, Py_ssize_t i, object grad, int mode,
                                _RowSteps steps) except -1:
    """Checks tensor i's RowGrad and groups its indices into the next RowTensor of `steps`;
    raises naming grads[i] (IndexError naming the position of a bad index)."""
    cdef cnp.ndarray param = <cnp.ndarray>self.param_objects[i]
    cdef str name = f"grads[{i}]"
    _engine_check_tensor(self, i, NULL, 0)          # the recorded buffers are unchanged
    if self.tensor_steps[i] >= _MAX_STEP:
        raise ValueError(f"params[{i}] has taken 2**62 steps, the most a step count may hold")
    if cnp.PyArray_NDIM(param) != 2:
        raise ValueError(f"{name} is a RowGrad, but params[{i}] has shape "
                         f"{(<object>param).shape}; row grads need a 2-D (rows, width) param")
    _engine_lowp_refuse_rows(self, i, name)          # low precision: _engine_lowp.pxi
    try:
        indices = _check_indices(grad.indices)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}.{error}") from None
    cdef cnp.ndarray index_array = <cnp.ndarray>indices
    cdef cnp.ndarray rows = _check_array(grad.rows, name + ".rows", False)
    cdef Py_ssize_t n_rows = cnp.PyArray_DIMS(param)[0], width = cnp.PyArray_DIMS(param)[1]
    cdef Py_ssize_t n = cnp.PyArray_DIMS(index_array)[0]
    if cnp.PyArray_TYPE(rows) != cnp.PyArray_TYPE(param):
        raise TypeError(f"{name}.rows has dtype {rows.dtype}, but params[{i}] has dtype "
                        f"{param.dtype}")
    if cnp.PyArray_NDIM(rows) != 2 or cnp.PyArray_DIMS(rows)[0] != n \
            or cnp.PyArray_DIMS(rows)[1] != width:
        raise ValueError(f"{name}.rows has shape {(<object>rows).shape}; expected "
                         f"(len({name}.indices), params[{i}].shape[1]) = ({n}, {width})")
    cdef uintptr_t start = <uintptr_t>cnp.PyArray_DATA(rows)
    if _engine_overlaps_writable(self, start, start + <uintptr_t>_nbytes(rows)):
        raise ValueError(f"{name}.rows shares memory with a parameter or state buffer")

    cdef RowTensor *entry = &steps.tensors[steps.n]
    memset(entry, 0, sizeof(RowTensor))
    steps.n += 1                                    # from here on, __dealloc__ frees it
    steps.held.append(index_array)
    steps.held.append(rows)
    entry.tensor = i
    cdef Py_ssize_t row_bytes = width * cnp.PyArray_ITEMSIZE(param)
    # The functional step's layout (_rows.pxi), then room for the summed rows.
    cdef Py_ssize_t words = 5 * n + 1 + (<Py_ssize_t>1 << RADIX_BITS)
    entry.block = <long long *>malloc(sizeof(long long) * words)
    if entry.block == NULL:
        raise MemoryError(f"no memory to group the row indices of {name}")
    entry.groups.n = n
    entry.groups.n_units = 0
    entry.groups.starts = <Py_ssize_t *>(entry.block + 4 * n)
    cdef Py_ssize_t bad = -1, duplicate = -1
    if n > 0:
        with nogil:
            bad = _read_indices(index_array, entry.block, n_rows)
            if bad < 0:
                duplicate = _group_rows(
                    entry.block, <Py_ssize_t *>(entry.block + n), entry.block + 2 * n,
                    <Py_ssize_t *>(entry.block + 3 * n), <Py_ssize_t *>(entry.block + 5 * n + 1),
                    n_rows - 1, &entry.groups)
    if bad >= 0:
        raise IndexError(f"{name}.indices[{bad}] = {index_array[bad]} is out of range for "
                         f"params[{i}] with {n_rows} rows")
    if duplicate >= 0 and mode == DUPLICATES_ERROR:
        first = int(np.flatnonzero(index_array == index_array[duplicate])[0])
        raise ValueError(f"{name}.indices[{duplicate}] repeats row {index_array[duplicate]} "
                         f"(first listed at {name}.indices[{first}]); duplicates='error' "
                         "refuses repeated rows")
    cdef RowWork *work = &entry.work
    work.groups = &entry.groups
    work.param = <char *>self.buffers[i].param
    work.grad = <const char *>cnp.PyArray_DATA(rows)
    work.square_avg = <char *>self.buffers[i].square_avg
    work.momentum_buffer = <char *>self.buffers[i].momentum_buffer
    work.grad_avg = <char *>self.buffers[i].grad_avg
    work.max_square_avg = <char *>self.buffers[i].max_square_avg
    work.width = width
    work.row_bytes = row_bytes
    work.dtype = self.tensor_dtype[i]
    work.mode = mode
    if row_bytes > steps.scratch_row_bytes:
        steps.scratch_row_bytes = row_bytes
    return 0


cdef _RowSteps _engine_rows_check(MultiTensorStep self, tuple grads, object duplicates,
                                  bint write):
    """Every tensor checked, nothing written: row grads grouped (returned); with `write`,
    dense grads' pointers recorded and their tensors marked active (the dense plan's input)."""
    cdef int mode = _duplicates_mode(duplicates)
    cdef _RowSteps steps = _RowSteps(self.n_tensors)
    cdef Py_ssize_t i
    cdef PyObject *grad
    cdef uintptr_t address
    for i in range(self.n_tensors):
        grad = rc_tuple_item(<PyObject *>grads, i)
        if write:
            self.tensor_active[i] = False
            self.buffers[i].grad = NULL
        if grad != _NONE and not rc_is_ndarray(grad) and isinstance(<object>grad, _RowGrad):
            _engine_check_row_grad(self, i, <object>grad, mode, steps)
            continue
        if grad == _NONE:
            _engine_check_tensor(self, i, NULL, 0)
            continue
        _engine_check_tensor(self, i, grad, 0)      # raises unless a fitting ndarray
        if write:
            address = <uintptr_t>rc_array_data(grad)
            self.tensor_active[i] = True
            self.buffers[i].grad = <const void *>address
    return steps


cdef int _engine_rows_lay_out(MultiTensorStep self, _RowSteps steps, int workers,
                              bint measure) except -1:
    """The dense plan, each row tensor's kernel and scalars (from its own step count), and,
    when the step measures a norm, the gradient each row tensor applies."""
    cdef Py_ssize_t k, g, i
    cdef RowTensor *entry
    cdef const Options *options
    _engine_lay_out(self)
    self.plan_reusable = False          # row tensors step outside the plan
    if steps.scratch_row_bytes > 0:
        steps.scratch = <char *>malloc(workers * steps.scratch_row_bytes + 64)
        if steps.scratch == NULL:
            raise MemoryError("no memory for the row steps' scratch rows")
    for k in range(steps.n):
        entry = &steps.tensors[k]
        i = entry.tensor
        g = self.tensor_group[i]
        options = &self.group_options[g]
        _fill_hyper(options, self.tensor_steps[i] + 1, &self.tensor_hyper[i])
        entry.work.hyper = &self.tensor_hyper[i]
        entry.work.kernel = rc_get_kernel(_simd, entry.work.dtype, _variant(options))
        entry.work.read_pass = rc_get_nonfinite_check(_simd, entry.work.dtype)
        entry.work.scratch = steps.scratch + (64 - (<uintptr_t>steps.scratch) % 64) % 64
        if measure and entry.work.mode != DUPLICATES_SEQUENTIAL and entry.groups.n > 0:
            entry.summed = <char *>malloc(entry.groups.n_units * entry.work.row_bytes + 64)
            if entry.summed == NULL:
                raise MemoryError("no memory for the summed grad rows")
        if measure:
            _row_tensor_gradient(entry)
            entry.partials = <double *>calloc(max(entry.n_chunks, 1), sizeof(double))
            if entry.partials == NULL:
                raise MemoryError("no memory for the row grads' norm")
    return 0


cdef void _row_tensor_gradient(RowTensor *entry) noexcept nogil:
    """With duplicates summed, writes the summed rows (ascending row order) to
    `entry.summed` and points the units at them, one listing each; counts norm chunks."""
    cdef RowWork *work = &entry.work
    cdef RowGroups *groups = &entry.groups
    cdef Py_ssize_t n = groups.n, unit, k, row_bytes = work.row_bytes
    cdef char *summed = entry.summed
    if summed == NULL:
        entry.n_chunks = _chunks_of(n * work.width)
        return
    for unit in range(groups.n_units):
        memcpy(summed + unit * row_bytes,
               work.grad + groups.order[groups.starts[unit]] * row_bytes, row_bytes)
        for k in range(groups.starts[unit] + 1, groups.starts[unit + 1]):
            if work.dtype == RC_FLOAT32:
                rc_rows_add_f32(<float *>(summed + unit * row_bytes),
                                <const float *>(work.grad + groups.order[k] * row_bytes),
                                work.width)
            else:
                rc_rows_add_f64(<double *>(summed + unit * row_bytes),
                                <const double *>(work.grad + groups.order[k] * row_bytes),
                                work.width)
    for unit in range(groups.n_units):              # unit u: one listing, summed row u
        groups.order[unit] = unit
        groups.starts[unit] = unit
    groups.starts[groups.n_units] = groups.n_units
    groups.n = groups.n_units
    work.grad = summed
    entry.n_chunks = _chunks_of(groups.n_units * work.width)


cdef int _engine_rows_norm(MultiTensorStep self, _RowSteps steps, int workers, int inf_norm,
                           double *norm) noexcept nogil:
    """The global norm over every tensor in tensor order (dense partials from the plan, row
    partials here), combined in chunk order; 1 when a scaled grad is non-finite."""
    cdef Py_ssize_t k, i, chunk, plan_entry = 0, row_entry = 0, first, stop
    cdef double dense_norm, combined = 0.0, partial
    cdef double *partials
    cdef bint nan_seen = False
    cdef int nonfinite = _plan_norm(&self.plan, workers, inf_norm, self.norm_partials,
                                    &dense_norm)
    cdef RowTensor *entry
    for k in range(steps.n):
        entry = &steps.tensors[k]
        nonfinite |= entry.work.read_pass(entry.work.hyper, entry.work.grad,
                                          entry.groups.n * entry.work.width, 0,
                                          entry.n_chunks, inf_norm, <void *>entry.partials)
    for i in range(self.n_tensors):
        if plan_entry < self.plan.n and self.plan_tensors[plan_entry] == i:
            partials = self.norm_partials
            first = self.plan_chunk_offsets[plan_entry]
            stop = self.plan_chunk_offsets[plan_entry + 1]
            plan_entry += 1
        elif row_entry < steps.n and steps.tensors[row_entry].tensor == i:
            partials = steps.tensors[row_entry].partials
            first = 0
            stop = steps.tensors[row_entry].n_chunks
            row_entry += 1
        else:
            continue
        for chunk in range(first, stop):
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


cdef void _engine_rows_run(MultiTensorStep self, _RowSteps steps, int workers) noexcept nogil:
    """One region: workers take blocks of the dense plan's elements, then of each row
    tensor's listings, from shared cursors."""
    cdef Py_ssize_t worker, k, total = self.plan.total, cursor = 0
    cdef Py_ssize_t *shared = &cursor
    cdef Py_ssize_t block = _shared_block(total, workers)
    cdef unsigned int fp_mode, previous
    cdef RowTensor *entry
    cdef char *scratch
    for k in range(steps.n):
        steps.tensors[k].cursor = 0
    if workers <= 1:
        _plan_run_range(&self.plan, 0, total)
        for k in range(steps.n):
            entry = &steps.tensors[k]
            _run_units(&entry.work, 0, entry.groups.n_units, entry.work.scratch)
        return
    fp_mode = rc_fp_mode()
    for worker in prange(workers, schedule="static", num_threads=workers):
        previous = rc_fp_mode_enter(fp_mode)
        _plan_run_shared(&self.plan, shared, block)
        for k in range(steps.n):
            entry = &steps.tensors[k]
            scratch = entry.work.scratch + worker * steps.scratch_row_bytes
            _run_units_shared(&entry.work, &entry.cursor, _row_block(entry.groups.n, workers),
                              scratch)
        rc_fp_mode_leave(previous)


cdef object _engine_rows_step(MultiTensorStep self, tuple grads, object duplicates,
                              int threads, bint adaptive, bint skip_nonfinite,
                              bint clip_by_norm, double threshold, bint inf_norm):
    """A step with row grads; the caller holds the step lock and has read the groups.
    Returns True when applied, False when skipped (skip_nonfinite)."""
    global _largest_team
    cdef bint measure = clip_by_norm or skip_nonfinite
    cdef _RowSteps steps = _engine_rows_check(self, grads, duplicates, True)
    cdef Py_ssize_t k, work_size = 0
    cdef int workers, size_class = 0
    cdef bint nonfinite = False
    cdef double norm = 0.0, coefficient = 1.0, elapsed
    cdef long long started
    cdef Policy *policy
    for k in range(self.n_tensors):
        if self.tensor_active[k]:
            work_size += self.watches[self.tensor_watches[k]].size
    for k in range(steps.n):
        work_size += steps.tensors[k].groups.n * steps.tensors[k].work.width
    k = work_size
    while k > 1 and size_class < 63:
        k >>= 1
        size_class += 1
    policy = &_engine_row_policies[size_class]
    workers = _policy_workers(policy, threads, work_size, adaptive)
    _engine_rows_lay_out(self, steps, workers, measure)
    with nogil:
        if measure:
            nonfinite = _engine_rows_norm(self, steps, workers, inf_norm, &norm)
            if clip_by_norm:
                coefficient = threshold / (norm + 1e-6)
                if not coefficient < 1.0:           # also NaN: the grads carry their NaN
                    coefficient = 1.0
                if coefficient != 1.0:
                    for k in range(self.plan.n):
                        (<rc_hyper *>self.plan.hypers[k]).norm_coefficient = coefficient
                        (<rc_hyper *>self.plan.hypers[k]).preprocess = 1
                    for k in range(steps.n):
                        (<rc_hyper *>steps.tensors[k].work.hyper).norm_coefficient = coefficient
                        (<rc_hyper *>steps.tensors[k].work.hyper).preprocess = 1
        if not (skip_nonfinite and nonfinite):
            started = rc_now_ns()
            _engine_rows_run(self, steps, workers)
            elapsed = <double>(rc_now_ns() - started)
            if workers > _largest_team:             # started pool threads: not a step's cost
                _largest_team = workers
                elapsed = -1.0
            if adaptive:
                _policy_record(policy, workers, elapsed)
    self.measured_norm = norm
    self.norm_measured = measure
    if skip_nonfinite and nonfinite:
        return False
    for k in range(self.plan.n):
        self.tensor_steps[self.plan_tensors[k]] += 1
    for k in range(steps.n):
        self.tensor_steps[steps.tensors[k].tensor] += 1
    return True
