# Checks of the engine's step, before anything is written: the recorded buffers are unchanged,
# the groups' options, and each grad. Module-level functions over the engine's C fields (the
# class itself is in _engine.pxi).

cdef extern from *:
    """
    /* Raw reads of an object's ndarray fields: no reference is taken, so the per-tensor
       checks of a step are a tight C loop. Callers hold references to every object read. */
    static inline PyObject *rc_tuple_item(PyObject *tuple, Py_ssize_t i) {
        return PyTuple_GET_ITEM(tuple, i);
    }
    static inline int rc_is_ndarray(PyObject *o) { return Py_TYPE(o) == &PyArray_Type; }
    /* The first index where two lists or tuples of length n hold different objects, or -1. */
    static inline Py_ssize_t rc_first_difference(PyObject *a, PyObject *b, Py_ssize_t n) {
        PyObject **left = PySequence_Fast_ITEMS(a), **right = PySequence_Fast_ITEMS(b);
        for (Py_ssize_t i = 0; i < n; ++i) if (left[i] != right[i]) return i;
        return -1;
    }
    static inline void *rc_array_data(PyObject *o) { return PyArray_DATA((PyArrayObject *)o); }
    static inline void *rc_array_descr(PyObject *o) {
        return (void *)PyArray_DESCR((PyArrayObject *)o);
    }
    static inline int rc_array_flags(PyObject *o) { return PyArray_FLAGS((PyArrayObject *)o); }
    static inline int rc_array_ndim(PyObject *o) { return PyArray_NDIM((PyArrayObject *)o); }
    static inline npy_intp *rc_array_dims(PyObject *o) {
        return PyArray_DIMS((PyArrayObject *)o);
    }
    """
    PyObject *rc_tuple_item(PyObject *tuple, Py_ssize_t i) noexcept nogil
    bint rc_is_ndarray(PyObject *o) noexcept nogil
    Py_ssize_t rc_first_difference(PyObject *a, PyObject *b, Py_ssize_t n) noexcept
    void *rc_array_data(PyObject *o) noexcept nogil
    void *rc_array_descr(PyObject *o) noexcept nogil
    int rc_array_flags(PyObject *o) noexcept nogil
    int rc_array_ndim(PyObject *o) noexcept nogil
    cnp.npy_intp *rc_array_dims(PyObject *o) noexcept nogil


cdef enum:
    _CONTIGUOUS_ALIGNED = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    _WRITABLE_BUFFER = _CONTIGUOUS_ALIGNED | cnp.NPY_ARRAY_WRITEABLE
    _PREFETCH_AHEAD = 24                # tensors: enough to overlap the cache misses


cdef inline Py_ssize_t _raw_size(PyObject *array) noexcept nogil:
    cdef int ndim = rc_array_ndim(array), axis
    cdef cnp.npy_intp *dims = rc_array_dims(array)
    cdef Py_ssize_t count = 1
    for axis in range(ndim):
        count *= dims[axis]
    return count


cdef inline bint _watch_holds(const Watch *watch) noexcept nogil:
    """The buffer still has the memory, dtype, size and flags recorded at construction."""
    return (rc_array_data(watch.array) == watch.data
            and rc_array_descr(watch.array) == watch.descr
            and (rc_array_flags(watch.array) & _WRITABLE_BUFFER) == _WRITABLE_BUFFER
            and _raw_size(watch.array) == watch.size)


cdef int _engine_check_tensor(MultiTensorStep self, Py_ssize_t i, PyObject *grad,
                              uintptr_t address) except -1:
    """Tensor i's buffers are unchanged and its grad is acceptable: raises the error that
    names what is wrong. The grad is an array, or (grad NULL) memory at `address`, or
    neither (None)."""
    cdef Py_ssize_t w
    for w in range(self.tensor_watches[i], self.tensor_watches[i + 1]):
        if not _watch_holds(&self.watches[w]):
            raise ValueError(
                f"{_engine_watch_name(self, w)} changed after the optimizer was built (its "
                "memory, dtype, size, contiguity or writeable flag); update buffers in "
                "place (x[...] = y) or build a new optimizer")
    if grad != NULL:
        if not _grad_fits(self, i, grad):
            _engine_check_grad(self, <object>grad, i)
    elif address == 0:
        return 0
    elif not _grad_disjoint(self, i, address):
        raise ValueError(f"grads[{i}] shares memory with a parameter or state buffer")
    if self.tensor_steps[i] >= _MAX_STEP:
        raise ValueError(f"params[{i}] has taken 2**62 steps, the most a step count may hold")
    if grad != NULL:        # the C checks accept this dtype object from now on
        self.grad_dtypes[i] = (<cnp.ndarray>grad).dtype    # held: its address stays its own
        self.grad_descr[i] = rc_array_descr(grad)
        self.tensor_lowp[i].grad_dtype = _any_dtype_code(<cnp.ndarray>grad)
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
            i = rc_first_difference(<PyObject *>members, <PyObject *>expected, n)
            if i >= 0:
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

cdef bint _engine_overlaps_writable(MultiTensorStep self, uintptr_t start,
                                    uintptr_t stop) noexcept nogil:
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
