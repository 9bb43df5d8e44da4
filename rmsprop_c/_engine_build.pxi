# Building the engine: every param and state buffer checked once, their pointers, dtype
# objects and sizes recorded (re-checked at each step), and the no-shared-memory rule.


cdef int _engine_build(MultiTensorStep self, list params, list group_of_param, list states,
                       Py_ssize_t n_groups) except -1:
    import threading
    self._lock = threading.Lock()
    self._lock_generation = rc_fork_generation
    cdef Py_ssize_t n = len(params), i, g, k
    if len(group_of_param) != n or len(states) != n:
        raise ValueError("params, group_of_param and states differ in length")
    if n_groups < 1:
        raise ValueError("n_groups must be >= 1")
    for i in range(n):
        g = operator.index(group_of_param[i])
        if not 0 <= g < n_groups:
            raise ValueError(f"group_of_param[{i}] = {g} is not a group index "
                             f"(0 <= index < {n_groups})")
    self.n_tensors = n
    self.n_groups = n_groups
    cdef size_t m = max(n, 1)
    self.buffers = <rc_buffers *>calloc(m, sizeof(rc_buffers))
    self.tensor_group = <int *>calloc(m, sizeof(int))
    self.tensor_dtype = <int *>calloc(m, sizeof(int))
    self.tensor_steps = <long long *>calloc(m, sizeof(long long))
    self.tensor_hyper = <rc_hyper *>calloc(m, sizeof(rc_hyper))
    self.group_options = <Options *>calloc(n_groups, sizeof(Options))
    self.group_hyper = <rc_hyper *>calloc(n_groups, sizeof(rc_hyper))
    self.group_ref_step = <long long *>calloc(n_groups, sizeof(long long))
    self.group_states = <int *>calloc(n_groups, sizeof(int))
    self.group_float32_member = <int *>calloc(n_groups, sizeof(int))
    self.watches = <Watch *>calloc(m * (1 + len(STATE_KEYS)), sizeof(Watch))
    self.grad_disjoint = <uintptr_t *>calloc(2 * m, sizeof(uintptr_t))
    self.param_objects = <PyObject **>calloc(m, sizeof(PyObject *))
    self.group_kernels = <rc_kernel_fn *>calloc(2 * n_groups, sizeof(rc_kernel_fn))
    self.group_variant = <int *>calloc(n_groups, sizeof(int))
    self.group_first = <Py_ssize_t *>calloc(n_groups, sizeof(Py_ssize_t))
    self.plan_offsets = <Py_ssize_t *>calloc(m + 1, sizeof(Py_ssize_t))
    self.plan_tensors = <Py_ssize_t *>calloc(m, sizeof(Py_ssize_t))
    self.tensor_active = <unsigned char *>calloc(m, sizeof(unsigned char))
    self.grad_descr = <void **>calloc(m, sizeof(void *))
    self.tensor_watches = <Py_ssize_t *>calloc(m + 1, sizeof(Py_ssize_t))
    self.plan_kernels = <rc_kernel_fn *>calloc(m, sizeof(rc_kernel_fn))
    self.plan_checks = <rc_nonfinite_fn *>calloc(m, sizeof(rc_nonfinite_fn))
    self.plan_itemsizes = <unsigned char *>calloc(m, sizeof(unsigned char))
    self.plan_hypers = <const rc_hyper **>calloc(m, sizeof(rc_hyper *))
    self.plan_buffers = <const rc_buffers **>calloc(m, sizeof(rc_buffers *))
    self.plan_chunk_offsets = <Py_ssize_t *>calloc(m + 1, sizeof(Py_ssize_t))
    self.tensor_lowp = <rc_lowp *>calloc(m, sizeof(rc_lowp))
    if (self.tensor_lowp == NULL
            or self.buffers == NULL or self.tensor_group == NULL or self.tensor_dtype == NULL
            or self.tensor_steps == NULL or self.tensor_hyper == NULL
            or self.group_options == NULL or self.group_hyper == NULL
            or self.group_ref_step == NULL
            or self.group_states == NULL or self.group_float32_member == NULL
            or self.watches == NULL or self.plan_offsets == NULL
            or self.plan_tensors == NULL or self.tensor_watches == NULL
            or self.tensor_active == NULL or self.grad_descr == NULL
            or self.grad_disjoint == NULL or self.group_kernels == NULL
            or self.group_variant == NULL or self.group_first == NULL
            or self.param_objects == NULL
            or self.plan_kernels == NULL or self.plan_checks == NULL
            or self.plan_itemsizes == NULL
            or self.plan_hypers == NULL or self.plan_buffers == NULL
            or self.plan_chunk_offsets == NULL):
        raise MemoryError()
    self.params = list(params)
    self.grad_dtypes = [None] * n
    self.held = []
    self.group_members = [[] for _ in range(n_groups)]
    self.group_prefixes = [f"param_groups[{g}]" for g in range(n_groups)]
    for g in range(n_groups):
        self.group_states[g] = (1 << len(STATE_KEYS)) - 1
        self.group_float32_member[g] = -1

    cdef cnp.ndarray array, state_array
    cdef list ranges = []
    cdef void **slots[4]
    cdef int present
    for i in range(n):
        array = _engine_param_array(self.params[i], i)     # float32/64, bfloat16, float16
        self.params[i] = array
        self.param_objects[i] = <PyObject *>array
        g = operator.index(group_of_param[i])
        self.tensor_group[i] = g
        self.tensor_dtype[i] = _any_dtype_code(array)
        _engine_lowp_init(self, i, array)
        if self.tensor_dtype[i] != RC_FLOAT64 and self.group_float32_member[g] < 0:
            self.group_float32_member[g] = i
        self.group_members[g].append(array)
        self.buffers[i].param = cnp.PyArray_DATA(array)
        self.grad_descr[i] = <void *>cnp.PyArray_DESCR(array)
        self.grad_dtypes[i] = array.dtype
        self.tensor_watches[i] = self.n_watches
        _engine_watch(self, array)
        ranges.append((<uintptr_t>cnp.PyArray_DATA(array), cnp.PyArray_NBYTES(array),
                       f"params[{i}]"))
        if not isinstance(states[i], dict):
            raise TypeError(f"states[{i}] must be a dict of arrays")
        values = [None, None, None, None]
        present = 0
        for key, value in (<dict>states[i]).items():
            if key == "param_copy":               # low precision: _engine_lowp.pxi
                state_array = _engine_copy_array(self, value, array, i)
                _engine_watch(self, state_array)
                ranges.append((<uintptr_t>cnp.PyArray_DATA(state_array),
                               cnp.PyArray_NBYTES(state_array), f"param_copies[{i}]"))
                continue
            if key not in STATE_KEYS:
                raise ValueError(f"unknown state buffer state[{i}]['{key}']")
            k = STATE_KEYS.index(key)
            values[k] = value
            present |= 1 << k
        if not present & 1:
            raise ValueError(f"state[{i}] lacks 'square_avg'")
        names = []
        for k in range(4):
            names.append(f"state[{i}]['{STATE_KEYS[k]}']")
        _state_slots(&self.buffers[i], slots)
        collected, collected_names = [], []
        self.tensor_lowp[i].state_dtype = _collect_states(
            tuple(values), tuple(names), present, array, f"params[{i}]", True, slots,
            collected, collected_names)
        for state_array, name in zip(collected, collected_names):
            _engine_watch(self, state_array)
            ranges.append((<uintptr_t>cnp.PyArray_DATA(state_array),
                           cnp.PyArray_NBYTES(state_array), name))
        self.group_states[g] &= present
        self.tensor_watches[i + 1] = self.n_watches
    for g in range(n_groups):
        self.group_first[g] = -1
    for i in range(n - 1, -1, -1):
        self.group_first[self.tensor_group[i]] = i
    cdef Py_ssize_t n_chunks = 0
    for i in range(n):
        n_chunks += _chunks_of(cnp.PyArray_SIZE(<cnp.ndarray>self.params[i]))
        self.all_elements += cnp.PyArray_SIZE(<cnp.ndarray>self.params[i])
    self.norm_partials = <double *>calloc(max(n_chunks, 1), sizeof(double))
    if self.norm_partials == NULL:
        raise MemoryError()
    # No two writable buffers may share memory: sort by start, compare neighbours.
    ranges = [entry for entry in ranges if entry[1] > 0]
    ranges.sort()
    for i in range(1, len(ranges)):
        if ranges[i][0] < ranges[i - 1][0] + ranges[i - 1][1]:
            raise ValueError(f"{ranges[i - 1][2]} and {ranges[i][2]} share memory")
    self.writable_ranges = <uintptr_t *>calloc(2 * max(len(ranges), 1), sizeof(uintptr_t))
    if self.writable_ranges == NULL:
        raise MemoryError()
    self.n_writable = len(ranges)
    for i in range(self.n_writable):
        self.writable_ranges[2 * i] = ranges[i][0]
        self.writable_ranges[2 * i + 1] = ranges[i][0] + ranges[i][1]
    return 0


cdef int _engine_watch(MultiTensorStep self, cnp.ndarray array) except -1:
    cdef Watch *watch = &self.watches[self.n_watches]
    self.held.append(array)
    watch.array = <PyObject *>array
    watch.data = cnp.PyArray_DATA(array)
    watch.size = cnp.PyArray_SIZE(array)
    watch.descr = <void *>cnp.PyArray_DESCR(array)
    self.n_watches += 1
    return 0
