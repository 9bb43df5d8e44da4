# The engine behind RMSprop.step: every tensor of an optimizer stepped by one native call.
#
# Built once from the params and state buffers (checked then, and their data pointer, dtype,
# size and flags recorded); each step checks in C, with no Python call per tensor on the
# fast path: the recorded buffers are unchanged, the groups' options, and each grad (taken
# once from a snapshot that holds references until the kernels are done). Then one parallel
# region (or none, as the threading policy decides) covers all tensors, the workers taking
# blocks of elements from a shared cursor.
# Clipping by the global norm (or skip_nonfinite) first runs one read pass over the grads:
# workers write norm partials at fixed chunk indices, combined in chunk order afterwards, so
# the norm (and the step) never depends on the thread count.

cdef struct Watch:
    PyObject *array                     # a reference held by MultiTensorStep.held
    void *data
    Py_ssize_t size
    void *descr                         # the dtype object: identity covers kind, size, order


cdef class MultiTensorStep:
    """All tensors of an optimizer, stepped by one native call per step.

    Private: use :class:`rmsprop_c.RMSprop` (or ``rmsprop_c.torch.RMSprop``). Steps are
    mutually exclusive: a second concurrent ``step`` is refused, and ``exclusive()`` waits
    for a running step.
    """
    cdef Py_ssize_t n_tensors
    cdef Py_ssize_t n_groups
    cdef rc_buffers *buffers
    cdef int *tensor_group
    cdef int *tensor_dtype
    cdef long long *tensor_steps
    cdef rc_hyper *tensor_hyper         # for a tensor whose step count differs from its group's
    cdef Options *group_options
    cdef rc_hyper *group_hyper
    cdef long long *group_ref_step      # the step count the group's scalars were made for
    cdef int *group_states              # bit k: every member has STATE_KEYS[k]
    cdef int *group_float32_member      # a float32 member's index, or -1
    cdef PyObject **param_objects       # borrowed from self.params (held)
    cdef Watch *watches
    cdef Py_ssize_t *tensor_watches     # n + 1: tensor i's buffers are watches[t[i]:t[i + 1]]
    cdef Py_ssize_t n_watches
    cdef uintptr_t *writable_ranges     # sorted [start, stop) pairs of every writable buffer
    cdef Py_ssize_t n_writable
    cdef uintptr_t *grad_disjoint       # per tensor, a grad range already proven disjoint
    cdef rc_kernel_fn *group_kernels    # per group and dtype, this step's kernel
    cdef int *group_variant             # the variant group_kernels were chosen for
    cdef int plan_simd                  # ... and the SIMD target
    cdef Py_ssize_t *group_first        # each group's first tensor
    cdef bint plan_reusable             # the plan holds every tensor and only group scalars
    cdef Py_ssize_t region_inactive     # tensors with a None grad in this step's region
    cdef Py_ssize_t check_cursor        # the region's next tensor to check
    cdef Py_ssize_t run_cursor          # ... and its next element to step
    cdef Py_ssize_t finish_cursor       # ... and its next tensor to count
    cdef bint steps_counted             # the region advanced the step counts, dropped the grads
    # The plan of the current step (active tensors only).
    cdef Py_ssize_t *plan_offsets
    cdef Py_ssize_t *plan_tensors       # the tensor index of each plan entry
    cdef unsigned char *tensor_active   # this step: the grad is not None
    cdef void **grad_descr              # the grad dtype object the C checks accept
    cdef list grad_dtypes               # ... held, so that no other object takes its address
    cdef Py_ssize_t region_failed       # tensors failing the C checks in this step's region
    cdef Py_ssize_t all_elements        # of every param: the step's size for the policy
    cdef rc_kernel_fn *plan_kernels
    cdef rc_nonfinite_fn *plan_checks
    cdef unsigned char *plan_itemsizes
    cdef const rc_hyper **plan_hypers
    cdef const rc_buffers **plan_buffers
    cdef Py_ssize_t *plan_chunk_offsets
    cdef double *norm_partials          # one per norm chunk of every tensor
    cdef double measured_norm
    cdef bint norm_measured
    cdef Plan plan
    cdef Policy policy
    cdef readonly list params
    cdef list held                      # every array the engine reads or writes
    cdef list group_members             # per group, the param objects at construction
    cdef list group_prefixes
    cdef object _lock
    cdef int _lock_generation
    cdef bint stepping
    # Low precision (_engine_lowp.pxi): per tensor, dtypes, param copy and this step's keys.
    cdef rc_lowp *tensor_lowp
    cdef bint lowp_stochastic
    cdef uint64_t lowp_seed

    def __cinit__(self):
        self.buffers = NULL
        self.tensor_group = NULL
        self.tensor_dtype = NULL
        self.tensor_steps = NULL
        self.tensor_hyper = NULL
        self.group_options = NULL
        self.group_hyper = NULL
        self.group_ref_step = NULL
        self.group_states = NULL
        self.group_float32_member = NULL
        self.watches = NULL
        self.param_objects = NULL
        self.writable_ranges = NULL
        self.grad_disjoint = NULL
        self.group_kernels = NULL
        self.group_variant = NULL
        self.group_first = NULL
        self.plan_reusable = False
        self.plan_offsets = NULL
        self.plan_tensors = NULL
        self.tensor_active = NULL
        self.grad_descr = NULL
        self.tensor_watches = NULL
        self.plan_kernels = NULL
        self.plan_checks = NULL
        self.plan_itemsizes = NULL
        self.plan_hypers = NULL
        self.plan_buffers = NULL
        self.plan_chunk_offsets = NULL
        self.norm_partials = NULL
        self.tensor_lowp = NULL
        _policy_reset(&self.policy)

    def __dealloc__(self):
        free(self.buffers)
        free(self.tensor_group)
        free(self.tensor_dtype)
        free(self.tensor_steps)
        free(self.tensor_hyper)
        free(self.group_options)
        free(self.group_hyper)
        free(self.group_ref_step)
        free(self.group_states)
        free(self.group_float32_member)
        free(self.watches)
        free(self.param_objects)
        free(self.writable_ranges)
        free(self.grad_disjoint)
        free(self.group_kernels)
        free(self.group_variant)
        free(self.group_first)
        free(self.plan_offsets)
        free(self.plan_tensors)
        free(self.tensor_active)
        free(self.grad_descr)
        free(self.tensor_watches)
        free(self.plan_kernels)
        free(self.plan_checks)
        free(self.plan_itemsizes)
        free(<void *>self.plan_hypers)
        free(<void *>self.plan_buffers)
        free(self.plan_chunk_offsets)
        free(self.norm_partials)
        free(self.tensor_lowp)

    def __init__(self, list params, list group_of_param, list states, Py_ssize_t n_groups):
        """params[i]: ndarray; group_of_param[i]: its group; states[i]: dict of state arrays."""
        _engine_build(self, params, group_of_param, states, n_groups)

    def set_rounding(self, rounding, seed):
        """How bfloat16 stores round ("nearest" or "stochastic") and the seed of the bits."""
        self.lowp_stochastic = _read_rounding(rounding)
        self.lowp_seed = _read_seed(seed)
        self.plan_reusable = False          # the low-precision records change with it

    # -------------------------------------------------------------------------------
    # Mutual exclusion (a lock taken across a fork is stale in the child: replace it)

    cdef object _current_lock(self):
        if self._lock_generation != rc_fork_generation:
            import threading
            self._lock = threading.Lock()
            self._lock_generation = rc_fork_generation
            self.stepping = False
        return self._lock

    def exclusive(self):
        """A lock to hold while reading or writing the buffers outside a step.

        ``with engine.exclusive():`` waits until no step runs and makes steps wait
        meanwhile, so state_dict, load_state_dict, save and load never see or make a
        half-applied step.
        """
        return self._current_lock()

    # -------------------------------------------------------------------------------
    # Step counts: one per tensor (a tensor skipped with a None grad does not advance)

    @property
    def total_elements(self):
        return sum(cnp.PyArray_SIZE(<cnp.ndarray>p) for p in self.params)

    def get_steps(self):
        """Step count of each group (the largest of its tensors' counts)."""
        steps = [0] * self.n_groups
        for i in range(self.n_tensors):
            g = self.tensor_group[i]
            steps[g] = max(steps[g], self.tensor_steps[i])
        return steps

    def set_steps(self, steps):
        """Set every tensor's step count from one count per group (a checkpoint)."""
        if len(steps) != self.n_groups:
            raise ValueError(f"expected {self.n_groups} step counts, got {len(steps)}")
        checked = [_check_step(s, f"steps[{g}]", 0) for g, s in enumerate(steps)]
        for i in range(self.n_tensors):
            self.tensor_steps[i] = checked[self.tensor_group[i]]
        self.plan_reusable = False          # bias correction may need per-tensor scalars

    def get_tensor_steps(self):
        """Step count of each tensor."""
        return [self.tensor_steps[i] for i in range(self.n_tensors)]

    def set_tensor_steps(self, steps):
        """Set each tensor's step count."""
        if len(steps) != self.n_tensors:
            raise ValueError(f"expected {self.n_tensors} step counts, got {len(steps)}")
        checked = [_check_step(s, f"steps[{i}]", 0) for i, s in enumerate(steps)]
        for i in range(self.n_tensors):
            self.tensor_steps[i] = checked[i]
        self.plan_reusable = False

    def threading(self):
        """This optimizer's threading decision and the step times behind it."""
        return _policy_facts(&self.policy)

    # -------------------------------------------------------------------------------
    # A step: every check (_engine_checks.pxi) before anything is written, then the plan

    cdef int _prepare(self, tuple grads, const uintptr_t *addresses, bint write) except -1:
        """Every per-tensor check of a step, under the GIL, raising the error that names
        what is wrong; with `write`, also lays out the plan of the step. Grads are the
        arrays of `grads`, or (when that is None) memory at `addresses`. The groups'
        options are read (and checked) before."""
        cdef Py_ssize_t i
        cdef PyObject *grad = NULL
        cdef uintptr_t address = 0
        for i in range(self.n_tensors):
            grad = NULL
            address = 0
            if grads is not None:
                grad = rc_tuple_item(<PyObject *>grads, i)
                if grad == _NONE:
                    grad = NULL
                else:
                    address = <uintptr_t>rc_array_data(grad)
            else:
                address = addresses[i]
            _engine_check_tensor(self, i, grad, address)
            if write:
                self.tensor_active[i] = grad != NULL or (grads is None and address != 0)
                self.buffers[i].grad = <const void *>address if self.tensor_active[i] else NULL
        if write:
            _engine_lay_out(self)
        return 0

    cdef tuple _snapshot(self, object grads):
        """The grads as a tuple: holds a reference to each, looked up exactly once."""
        if type(grads) is tuple:
            return <tuple>grads
        if isinstance(grads, (list, tuple)):
            return tuple(grads)
        raise TypeError(f"grads must be a list or tuple of arrays, got {type(grads).__name__}")

    def check_groups(self, param_groups):
        """Raise as a step would for these group options; changes nothing."""
        cdef Options *options = <Options *>malloc(self.n_groups * sizeof(Options))
        if options == NULL:
            raise MemoryError()
        try:
            _engine_read_groups(self, param_groups, options)
        finally:
            free(options)

    def validate(self, grads, param_groups, duplicates="sum"):
        """Raise as a step would for these grads and groups; changes nothing."""
        cdef tuple snapshot = self._snapshot(grads)
        cdef Options *options = <Options *>malloc(self.n_groups * sizeof(Options))
        if options == NULL:
            raise MemoryError()
        try:
            if len(snapshot) != self.n_tensors:
                raise ValueError(f"grads has {len(snapshot)} arrays, but the optimizer has "
                                 f"{self.n_tensors} params")
            _engine_read_groups(self, param_groups, options)
            if _engine_has_rows(self, snapshot):        # row grads: _engine_rows.pxi
                _engine_rows_check(self, snapshot, duplicates, False)
            else:
                self._prepare(snapshot, NULL, False)
        finally:
            free(options)

    @property
    def last_grad_norm(self):
        """The norm the last step measured (None when it measured none)."""
        return self.measured_norm if self.norm_measured else None

    def step(self, grads, param_groups, object n_threads=None, bint skip_nonfinite=False,
             object max_grad_norm=None, object norm_type=2.0, object duplicates="sum"):
        """Check everything, then update every tensor whose grad is not None.

        With ``max_grad_norm`` (or ``skip_nonfinite``), one read pass first measures the
        global norm of the preprocessed grads (``last_grad_norm``); with ``max_grad_norm``
        every grad is then scaled by min(1, max_grad_norm / (norm + 1e-6)) inside the step.
        Returns False (and writes nothing) when ``skip_nonfinite`` and a grad after
        grad_scale holds NaN or Inf; True when applied. A grad may be a ``RowGrad`` for a
        2-D param (lazy rows; ``duplicates`` as in ``rmsprop_step_rows``).
        """
        cdef tuple snapshot = self._snapshot(grads)
        if len(snapshot) != self.n_tensors:
            raise ValueError(f"grads has {len(snapshot)} arrays, but the optimizer has "
                             f"{self.n_tensors} params")
        return self._step(snapshot, NULL, param_groups, n_threads, skip_nonfinite,
                          max_grad_norm, norm_type, duplicates)

    def step_addresses(self, addresses, param_groups, object n_threads=None,
                       bint skip_nonfinite=False, object max_grad_norm=None,
                       object norm_type=2.0):
        """:meth:`step` with each grad given as the address of its first element (0 for
        None), for callers whose grads are not NumPy arrays (the torch optimizer).

        The caller vouches for each address: C-contiguous memory of the param's dtype and
        element count that stays alive and unchanged until this call returns. The engine
        still refuses grads that overlap a param or state buffer.
        """
        cdef cnp.ndarray table = np.ascontiguousarray(addresses, dtype=np.uintp)
        if table.ndim != 1 or table.shape[0] != self.n_tensors:
            raise ValueError(f"addresses must be 1-D with {self.n_tensors} entries, got "
                             f"shape {(<object>table).shape}")
        return self._step(None, <const uintptr_t *>cnp.PyArray_DATA(table), param_groups,
                          n_threads, skip_nonfinite, max_grad_norm, norm_type, "sum")

    cdef object _step(self, tuple snapshot, const uintptr_t *addresses, object param_groups,
                      object n_threads, bint skip_nonfinite, object max_grad_norm,
                      object norm_type, object duplicates):
        global _largest_team
        cdef int threads = _thread_count(n_threads)
        cdef bint adaptive = n_threads is None
        cdef Py_ssize_t i, k
        cdef int workers
        cdef bint nonfinite = False
        cdef Py_ssize_t failed
        cdef double elapsed, norm = 0.0, coefficient = 1.0, threshold = 0.0
        cdef long long started
        cdef bint clip_by_norm = max_grad_norm is not None
        # norm_type 2 (the default) without a call into the registry; anything else checked there
        cdef bint inf_norm = not (type(norm_type) in (float, int) and norm_type == 2) \
            and _check_option("norm_type", norm_type) != 2.0
        cdef bint measure
        if clip_by_norm:
            threshold = _check_option("max_grad_norm", max_grad_norm)
        measure = clip_by_norm or skip_nonfinite
        cdef PyObject *grads = <PyObject *>NULL if snapshot is None else <PyObject *>snapshot
        lock = self._current_lock()
        if self.stepping:
            raise RuntimeError("this optimizer is being stepped by another thread; step one "
                               "optimizer from one thread at a time")
        self.stepping = True              # set under the GIL: a concurrent step sees it
        try:
            lock.acquire()                # waits while state is being saved or loaded
        except BaseException:
            self.stepping = False
            raise
        try:
            _engine_read_groups(self, param_groups, self.group_options)
            with nogil:
                workers = _policy_workers(&self.policy, threads, self.all_elements, adaptive)
                started = rc_now_ns()
                failed = _engine_checked_run(self, grads, addresses, workers, not measure)
            if failed:
                # A RowGrad is no array, so it fails the C checks: rows (_engine_rows.pxi)
                if grads != NULL and _engine_has_rows(self, snapshot):
                    return _engine_rows_step(self, snapshot, duplicates, threads,
                                             adaptive, skip_nonfinite, clip_by_norm,
                                             threshold, inf_norm)
                self._prepare(snapshot, addresses, True)   # raises, or accepts what C could not
            with nogil:
                if measure:
                    nonfinite = _plan_norm(&self.plan, workers, inf_norm, self.norm_partials,
                                           &norm)
                    if clip_by_norm:
                        coefficient = threshold / (norm + 1e-6)
                        if not coefficient < 1.0:       # also NaN: the grads carry their NaN
                            coefficient = 1.0
                        if coefficient != 1.0:        # the kernels multiply by it
                            for k in range(self.plan.n):
                                (<rc_hyper *>self.plan.hypers[k]).norm_coefficient = \
                                    coefficient
                if not (skip_nonfinite and nonfinite):
                    if measure or failed:
                        _plan_run(&self.plan, workers)
                    elapsed = <double>(rc_now_ns() - started)
                    if workers > _largest_team:   # started pool threads: not a step's cost
                        _largest_team = workers
                        elapsed = -1.0
                    if adaptive:
                        _policy_record(&self.policy, workers, elapsed)
            self.measured_norm = norm
            self.norm_measured = measure
            if skip_nonfinite and nonfinite:
                return False
            if not self.steps_counted:
                for k in range(self.plan.n):
                    self.tensor_steps[self.plan_tensors[k]] += 1
            return True
        finally:
            # The kernels are done with the grads: drop the pointers into them.
            if not self.steps_counted:
                for i in range(self.n_tensors):
                    self.buffers[i].grad = NULL
            self.steps_counted = False
            lock.release()
            self.stepping = False
