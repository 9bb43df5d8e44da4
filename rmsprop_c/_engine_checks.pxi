# Checks of the engine's step, before anything is written: the recorded buffers are unchanged,
# the groups' options, and each grad. Module-level functions over the engine's C fields (the
# class itself is in _engine.pxi).

cdef int _engine_check_watches(MultiTensorStep self) except -1:
    """The buffers still have the memory, dtype, size and flags they were built with."""
    cdef Py_ssize_t w
    cdef Watch *watch
    cdef cnp.ndarray array
    cdef int needed = (cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
                       | cnp.NPY_ARRAY_WRITEABLE)
    for w in range(self.n_watches):
        watch = &self.watches[w]
        array = <cnp.ndarray>watch.array
        if (cnp.PyArray_DATA(array) != watch.data
                or <void *>cnp.PyArray_DESCR(array) != watch.descr
                or (cnp.PyArray_FLAGS(array) & needed) != needed
                or _size(array) != watch.size):
            raise ValueError(
                f"{_engine_watch_name(self, w)} changed after the optimizer was built (its "
                "memory, dtype, size, contiguity or writeable flag); update buffers in "
                "place (x[...] = y) or build a new optimizer")
    return 0

cdef str _engine_watch_name(MultiTensorStep self, Py_ssize_t w):
    cdef Py_ssize_t i
    target = <object>self.watches[w].array
    for i in range(self.n_tensors):
        if self.params[i] is target:
            return f"params[{i}]"
    return "a state buffer"

cdef int _engine_read_groups(MultiTensorStep self, object param_groups, Options *options) except -1:
    """Every group's options into `options`; checks the state and dtype each needs."""
    cdef Py_ssize_t g, i, k, n
    cdef object members
    if not isinstance(param_groups, list) or len(param_groups) != self.n_groups:
        raise ValueError(f"param_groups must be a list of {self.n_groups} groups "
                         f"(as at construction), got {len(param_groups)}")
    for g in range(self.n_groups):
        group = param_groups[g]
        prefix = self.group_prefixes[g]
        if not isinstance(group, dict):
            raise TypeError(f"{prefix} must be a dict")
        _read_group(<dict>group, prefix, &options[g])
        members = (<dict>group).get("params")
        if members is not None:
            expected = <list>self.group_members[g]
            n = len(expected)
            if not isinstance(members, (list, tuple)) or len(members) != n:
                raise ValueError(f"{prefix}['params'] changed after the optimizer was "
                                 "built; build a new optimizer for other params")
            for i in range(n):
                if members[i] is not expected[i]:
                    raise ValueError(f"{prefix}['params'][{i}] was replaced after the "
                                     "optimizer was built; update params in place "
                                     "(p[...] = x) or build a new optimizer")
        _check_group_state(self, options, g, prefix, _MOMENTUM, 1)
        _check_group_state(self, options, g, prefix, _CENTERED, 2)
        _check_group_state(self, options, g, prefix, _AMSGRAD, 3)
        if self.group_float32_member[g] >= 0:
            _check_representable(&options[g], prefix, RC_FLOAT32,
                                 self.group_float32_member[g])
    return 0

cdef bint _engine_overlaps_writable(MultiTensorStep self, uintptr_t start, uintptr_t stop) noexcept:
    """Binary search of [start, stop) among the sorted, disjoint writable ranges."""
    cdef Py_ssize_t low = 0, high = self.n_writable, middle
    if start >= stop:
        return False
    while low < high:            # first range whose stop > start
        middle = (low + high) // 2
        if self.writable_ranges[2 * middle + 1] <= start:
            low = middle + 1
        else:
            high = middle
    return low < self.n_writable and self.writable_ranges[2 * low] < stop

cdef int _engine_check_grad(MultiTensorStep self, object grad, Py_ssize_t i) except -1:
    cdef cnp.ndarray param = <cnp.ndarray>self.param_objects[i]
    cdef cnp.ndarray array
    cdef uintptr_t start, stop
    if _fast_ok(grad, False):
        array = <cnp.ndarray>grad
        if cnp.PyArray_TYPE(array) != cnp.PyArray_TYPE(param) or not _same_shape(array, param):
            if _engine_grad_dtype_ok(self, array, i):     # low precision: _engine_lowp.pxi
                _check_shape(array, param, f"grads[{i}]", f"params[{i}]")
            else:
                _check_like(array, param, "grads", "params", i)
    elif _is_low_precision(grad) or self.tensor_lowp[i].param_dtype >= RC_BFLOAT16:
        array = _engine_lowp_grad(self, grad, i)
    else:
        array = _check_array(grad, "grads", False, i)
        _check_like(array, param, "grads", "params", i)
    start = <uintptr_t>cnp.PyArray_DATA(array)
    stop = start + <uintptr_t>_nbytes(array)
    # The writable ranges never change: a range proven disjoint once stays so (grads
    # are often reused, or reallocated at the same address, step after step).
    if start == self.grad_disjoint[2 * i] and stop == self.grad_disjoint[2 * i + 1]:
        return 0
    if _engine_overlaps_writable(self, start, stop):
        raise ValueError(f"grads[{i}] shares memory with a parameter or state buffer")
    self.grad_disjoint[2 * i] = start
    self.grad_disjoint[2 * i + 1] = stop
    return 0


cdef inline int _check_group_state(MultiTensorStep self, const Options *options, Py_ssize_t g,
                                   object prefix, Py_ssize_t k, int key) except -1:
    """Option k of group g is on only if every member has state buffer STATE_KEYS[key]."""
    if options[g].values[k] != 0.0 and not self.group_states[g] & (1 << key):
        raise ValueError(
            f"{_key_name(prefix, k)} is on, but the optimizer was built without "
            f"{STATE_KEYS[key]} buffers for this group (momentum, centered and "
            "amsgrad set the state layout at construction)")
    return 0
