# The engine's step in one parallel region, without the GIL: the workers check blocks of the
# tensors in C (buffers unchanged, grads acceptable), a barrier, one thread lays out the plan
# (or refreshes the last one's scalars), a barrier, the workers run the kernels, a barrier,
# they count the step. Checking is cache-miss bound (a few array headers per tensor), so it
# scales with the workers like the kernels do. A tensor that fails
# these checks sends the step to the full checks under the GIL (_engine_checks.pxi): they
# raise the error that names it, or accept it (a dtype equal to the param's but another object).


cdef PyObject *_NONE = <PyObject *>None


cdef inline bint _grad_fits(MultiTensorStep self, Py_ssize_t i, PyObject *grad) noexcept nogil:
    """An ndarray of the dtype object last accepted for this grad (at first the param's) and
    of the param's shape, contiguous, aligned, not overlapping a buffer the step writes."""
    cdef PyObject *param = self.param_objects[i]
    cdef int ndim = rc_array_ndim(param), axis
    cdef cnp.npy_intp *dims
    cdef cnp.npy_intp *param_dims
    cdef uintptr_t start, stop
    if (not rc_is_ndarray(grad) or rc_array_descr(grad) != self.grad_descr[i]
            or (rc_array_flags(grad) & _CONTIGUOUS_ALIGNED) != _CONTIGUOUS_ALIGNED
            or rc_array_ndim(grad) != ndim):
        return False
    dims = rc_array_dims(grad)
    param_dims = rc_array_dims(param)
    for axis in range(ndim):
        if dims[axis] != param_dims[axis]:
            return False
    return _grad_disjoint(self, i, <uintptr_t>rc_array_data(grad))


cdef inline bint _grad_disjoint(MultiTensorStep self, Py_ssize_t i,
                                uintptr_t start) noexcept nogil:
    """Tensor i's grad at `start` does not overlap a buffer the step writes."""
    cdef uintptr_t stop
    # The writable ranges never change: a grad address proven disjoint stays so (grads are
    # often reused, or reallocated at the same address, step after step).
    if start == self.grad_disjoint[2 * i]:
        return True
    stop = start + <uintptr_t>(self.watches[self.tensor_watches[i]].size
                               * _code_itemsize(self.tensor_lowp[i].grad_dtype))
    if _engine_overlaps_writable(self, start, stop):
        return False
    self.grad_disjoint[2 * i] = start
    self.grad_disjoint[2 * i + 1] = stop
    return True


cdef inline void _prefetch_tensor(MultiTensorStep self, PyObject *grads, Py_ssize_t i,
                                  bint shapes) noexcept nogil:
    """Start loading tensor i's array headers (they left the cache during the last step),
    or, with `shapes`, the shape arrays they point to (their headers loaded by now)."""
    cdef Py_ssize_t w
    cdef PyObject *grad = rc_tuple_item(grads, i) if grads != NULL else _NONE
    for w in range(self.tensor_watches[i], self.tensor_watches[i + 1]):
        rc_prefetch(rc_array_dims(self.watches[w].array) if shapes
                    else <void *>self.watches[w].array)
    if not shapes:
        rc_prefetch(grad)
    elif grad != _NONE and rc_is_ndarray(grad):
        rc_prefetch(rc_array_dims(grad))


cdef Py_ssize_t _engine_check_range(MultiTensorStep self, PyObject *grads,
                                    const uintptr_t *addresses, Py_ssize_t low,
                                    Py_ssize_t high, Py_ssize_t *inactive) noexcept nogil:
    """Tensors [low, high): how many fail the C checks (and, added to `inactive`, how many
    have a None grad). Records each grad's pointer. Grads are arrays in the tuple `grads`,
    or, when that is NULL, memory at `addresses` (0: None) that the caller vouches for: the
    param's dtype and size, contiguous, alive."""
    cdef Py_ssize_t i, w, failed = 0, idle = 0
    cdef PyObject *grad
    cdef uintptr_t address
    cdef bint good, active
    # Headers are fetched 2 * _PREFETCH_AHEAD tensors ahead, shape arrays half as far.
    for i in range(low, min(high, low + 2 * _PREFETCH_AHEAD)):
        _prefetch_tensor(self, grads, i, False)
    for i in range(low, min(high, low + _PREFETCH_AHEAD)):
        _prefetch_tensor(self, grads, i, True)
    for i in range(low, high):
        if i + 2 * _PREFETCH_AHEAD < high:
            _prefetch_tensor(self, grads, i + 2 * _PREFETCH_AHEAD, False)
        if i + _PREFETCH_AHEAD < high:
            _prefetch_tensor(self, grads, i + _PREFETCH_AHEAD, True)
        good = True
        for w in range(self.tensor_watches[i], self.tensor_watches[i + 1]):
            good = good and _watch_holds(&self.watches[w])
        if grads != NULL:
            grad = rc_tuple_item(grads, i)
            active = grad != _NONE
            address = <uintptr_t>rc_array_data(grad) if active else 0
            good = good and (not active or _grad_fits(self, i, grad))
        else:
            address = addresses[i]
            active = address != 0
            good = good and (not active or _grad_disjoint(self, i, address))
        self.tensor_active[i] = active
        idle += not active
        good = good and (not active or self.tensor_steps[i] < _MAX_STEP)
        self.buffers[i].grad = <const void *>address if good else NULL
        failed += not good
    inactive[0] += idle
    return failed


cdef bint _engine_plan_refresh(MultiTensorStep self) noexcept nogil:
    """Reuse the last plan when it still fits: it held every tensor, every tensor has a grad
    again (so every step count moved together) and each group keeps its kernel. Only the
    groups' scalars are derived again. False: lay the plan out anew."""
    cdef Py_ssize_t g, first
    cdef const Options *options = self.group_options
    if not self.plan_reusable or self.plan_simd != _simd:
        return False
    for g in range(self.n_groups):
        if _variant(&options[g]) != self.group_variant[g]:
            return False
    for g in range(self.n_groups):
        first = self.group_first[g]
        if first >= 0:
            _fill_hyper(&options[g], self.tensor_steps[first] + 1, &self.group_hyper[g])
            self.group_ref_step[g] = self.tensor_steps[first]
    return True


cdef void _engine_lay_out(MultiTensorStep self) noexcept nogil:
    """The plan of the step from the checked tensors. A group's scalars are derived once,
    from its first active tensor's step count; bias correction needs its own scalars for a
    tensor whose count differs (one skipped with a None grad before)."""
    cdef Py_ssize_t i, g, n_active = 0, size
    cdef int dtype, variant
    cdef const Options *options = self.group_options
    cdef rc_nonfinite_fn checks[2]
    cdef bint reusable = True
    self.plan_simd = _simd
    for g in range(self.n_groups):
        self.group_ref_step[g] = -1
        variant = _variant(&options[g])
        self.group_variant[g] = variant
        self.group_kernels[2 * g] = rc_get_kernel(_simd, RC_FLOAT32, variant)
        self.group_kernels[2 * g + 1] = rc_get_kernel(_simd, RC_FLOAT64, variant)
    checks[0] = rc_get_nonfinite_check(_simd, RC_FLOAT32)
    checks[1] = rc_get_nonfinite_check(_simd, RC_FLOAT64)
    self.plan_offsets[0] = 0
    self.plan_chunk_offsets[0] = 0
    for i in range(self.n_tensors):
        if not self.tensor_active[i]:
            reusable = False
            continue
        g = self.tensor_group[i]
        if self.group_ref_step[g] < 0:
            _fill_hyper(&options[g], self.tensor_steps[i] + 1, &self.group_hyper[g])
            self.group_ref_step[g] = self.tensor_steps[i]
            self.plan_hypers[n_active] = &self.group_hyper[g]
        elif (options[g].values[_BIAS_CORRECTION] != 0.0
                and self.tensor_steps[i] != self.group_ref_step[g]):
            _fill_hyper(&options[g], self.tensor_steps[i] + 1, &self.tensor_hyper[i])
            self.plan_hypers[n_active] = &self.tensor_hyper[i]
            reusable = False
        else:
            self.plan_hypers[n_active] = &self.group_hyper[g]
        dtype = self.tensor_dtype[i]
        size = self.watches[self.tensor_watches[i]].size
        self.plan_kernels[n_active] = self.group_kernels[2 * g + (dtype == RC_FLOAT64)]
        self.plan_checks[n_active] = checks[dtype == RC_FLOAT64]
        self.plan_itemsizes[n_active] = 8 if dtype == RC_FLOAT64 else 4
        self.plan_buffers[n_active] = &self.buffers[i]
        _engine_lowp_plan(self, i, n_active)        # low precision: _engine_lowp.pxi
        reusable = reusable and not self.tensor_lowp[i].stochastic   # keys change each step
        self.plan_tensors[n_active] = i
        self.plan_offsets[n_active + 1] = self.plan_offsets[n_active] + size
        self.plan_chunk_offsets[n_active + 1] = (self.plan_chunk_offsets[n_active]
                                                 + _chunks_of(size))
        n_active += 1
    self.plan.n = n_active
    self.plan.total = self.plan_offsets[n_active]
    self.plan.offsets = self.plan_offsets
    self.plan.itemsizes = self.plan_itemsizes
    self.plan.kernels = self.plan_kernels
    self.plan.checks = self.plan_checks
    self.plan.hypers = self.plan_hypers
    self.plan.buffers = self.plan_buffers
    self.plan.chunk_offsets = self.plan_chunk_offsets
    self.plan_reusable = reusable


cdef void _engine_finish_range(MultiTensorStep self, Py_ssize_t low,
                               Py_ssize_t high) noexcept nogil:
    """After the kernels: tensors [low, high) with a grad count the step; no grad pointer is
    kept past the step."""
    cdef Py_ssize_t i
    for i in range(low, high):
        self.tensor_steps[i] += self.tensor_active[i]
        self.buffers[i].grad = NULL


cdef Py_ssize_t _engine_checked_run(MultiTensorStep self, PyObject *grads,
                                    const uintptr_t *addresses, int workers,
                                    bint run) noexcept nogil:
    """Check every tensor, lay out the plan and (with `run`) run it, in one region of
    `workers` threads. Returns how many tensors failed the checks (then nothing ran)."""
    cdef Py_ssize_t n = self.n_tensors, failed, idle, first, check_block
    cdef int team, worker
    cdef unsigned int mode, previous
    self.region_inactive = 0
    self.steps_counted = False
    if workers <= 1:
        failed = _engine_check_range(self, grads, addresses, 0, n, &self.region_inactive)
        if failed == 0:
            if not (self.region_inactive == 0 and _engine_plan_refresh(self)):
                _engine_lay_out(self)
            if run:
                _plan_run_range(&self.plan, 0, self.plan.total)
                _engine_finish_range(self, 0, n)
                self.steps_counted = True
        return failed
    mode = rc_fp_mode()
    self.region_failed = 0
    self.check_cursor = 0
    self.run_cursor = 0
    self.finish_cursor = 0
    check_block = max(CHECK_BLOCK_TENSORS, n // (workers * SHARED_BLOCKS_PER_WORKER) + 1)
    team = 1                            # private in the region; set so none is read unset
    worker = 0
    first = 0
    previous = 0
    failed = 0
    idle = 0
    with parallel(num_threads=workers):
        team = omp_get_num_threads()        # OpenMP may grant fewer threads than asked
        worker = threadid()
        previous = rc_fp_mode_enter(mode)
        idle = 0
        failed = 0
        while True:                     # blocks of tensors from a shared cursor
            first = rc_atomic_take(&self.check_cursor, check_block)
            if first >= n:
                break
            failed = failed + _engine_check_range(self, grads, addresses, first,
                                                  min(first + check_block, n), &idle)
        if failed != 0:
            rc_atomic_add(&self.region_failed, failed)
        if idle != 0:
            rc_atomic_add(&self.region_inactive, idle)
        rc_omp_barrier()
        if worker == 0 and self.region_failed == 0 and not (
                self.region_inactive == 0 and _engine_plan_refresh(self)):
            _engine_lay_out(self)
        rc_omp_barrier()
        if run and self.region_failed == 0:
            _plan_run_shared(&self.plan, &self.run_cursor, _shared_block(self.plan.total, team))
            rc_omp_barrier()            # every kernel is done with the grads
            while True:
                first = rc_atomic_take(&self.finish_cursor, check_block)
                if first >= n:
                    break
                _engine_finish_range(self, first, min(first + check_block, n))
        rc_fp_mode_leave(previous)
    self.steps_counted = run and self.region_failed == 0
    return self.region_failed
