# The functional API: one tensor and its state buffers, updated in place. Its fast twin is
# rmsprop_c.reference.rmsprop_step (same name, same signature, the spec).


cdef int _collect_buffers(object param, object grad, object square_avg, object momentum_buffer,
                          object grad_avg, object max_square_avg, rc_buffers *buffers,
                          list arrays) except -1:
    """Checks one tensor's buffers (dtype, shape, contiguity, no shared memory) and fills
    `buffers`; `arrays` receives them in order param, grad, square_avg, state..."""
    cdef cnp.ndarray param_array = _check_array(param, "param", True)
    cdef cnp.ndarray grad_array = _check_array(grad, "grad", False)
    _check_like(grad_array, param_array, "grad", "param")
    arrays.extend([param_array, grad_array])
    cdef list names = ["param", "grad"]
    memset(buffers, 0, sizeof(rc_buffers))
    buffers.param = cnp.PyArray_DATA(param_array)
    buffers.grad = cnp.PyArray_DATA(grad_array)
    cdef void **slots[4]
    _state_slots(buffers, slots)
    cdef tuple values = (square_avg, momentum_buffer, grad_avg, max_square_avg)
    _collect_states(values, STATE_KEYS, _given(values), param_array, "param", False, slots,
                    arrays, names)
    _check_disjoint(arrays, names)
    return 0


cdef void _run_one(rc_kernel_fn kernel, const rc_hyper *hyper, const rc_buffers *buffers,
                   Py_ssize_t total, unsigned char itemsize, int threads,
                   bint adaptive, int dtype) noexcept nogil:
    """One tensor through the plan runner, under the size class's threading policy."""
    cdef Py_ssize_t offsets[2]
    cdef rc_nonfinite_fn read_pass = rc_get_nonfinite_check(_simd, dtype)
    cdef Plan plan
    offsets[0] = 0
    offsets[1] = total
    plan.n = 1
    plan.total = total
    plan.offsets = offsets
    plan.itemsizes = &itemsize
    plan.kernels = &kernel
    plan.checks = &read_pass
    plan.hypers = &hyper
    plan.buffers = &buffers
    plan.chunk_offsets = NULL
    cdef Policy *policy = _size_policy(total)
    cdef int workers = _policy_workers(policy, threads, total, adaptive)
    cdef double elapsed = _plan_timed_run(&plan, workers)
    if adaptive:
        _policy_record(policy, workers, elapsed)


def rmsprop_step(param, grad, square_avg, *, lr, alpha, eps, momentum=0.0, centered=False,
                 nesterov=False, weight_decay=0.0, decoupled_weight_decay=False,
                 maximize=False, amsgrad=False, bias_correction=False, eps_in_sqrt=False,
                 lr_in_momentum=False, grad_scale=1.0, clip_value=INFINITY, step=1,
                 n_threads=None, momentum_buffer=None, grad_avg=None, max_square_avg=None,
                 rounding="nearest", seed=0, tensor_index=0, param_copy=None):
    """Apply one fused RMSprop update to one tensor, in place.

    The update is the one of ``rmsprop_c.reference.rmsprop_step`` (the spec, in NumPy; see
    docs/update-rule.md), bit for bit, for every dtype, SIMD target and thread count.

    Parameters
    ----------
    param : numpy.ndarray
        float32 or float64, C-contiguous, writeable. Updated in place. # OUT
    grad : numpy.ndarray
        Same dtype and shape as ``param``; may be read-only; never written. # IN
    square_avg : numpy.ndarray
        The running average of squared gradients. Updated in place. # OUT
    lr, alpha, eps : float
        Learning rate (finite, >= 0), smoothing constant in [0, 1], and eps (finite, >= 0;
        0 is legal: elements with a zero denominator are not moved).
    momentum : float, default 0
        Momentum factor (finite, >= 0); > 0 needs ``momentum_buffer``.
    centered, nesterov, maximize, amsgrad, bias_correction, eps_in_sqrt, lr_in_momentum : bool
        Options of the update (``bool`` or ``numpy.bool_``). ``centered`` needs
        ``grad_avg``; ``amsgrad`` needs ``max_square_avg``.
    weight_decay : float, default 0
        Weight decay (finite, >= 0), coupled into the gradient unless
        ``decoupled_weight_decay``.
    grad_scale : float, default 1
        Every gradient element is multiplied by it first (finite, > 0; e.g. 1/loss_scale).
    clip_value : float or None, default inf
        Then each element is clamped to [-clip_value, clip_value] (> 0; NaN stays NaN);
        inf or None: no clamp. The grad array itself is never written.
    step : int, default 1
        The 1-based step count of the bias correction, at most 2**62.
    n_threads : int or None
        None: one thread or OpenMP's thread count, chosen per call from step times measured
        in this process; k: k threads (at most the CPU count). Results are identical either way.
    momentum_buffer, grad_avg, max_square_avg : numpy.ndarray or None
        State buffers, same dtype and shape as ``param``, updated in place. # OUT
    rounding : {"nearest", "stochastic"}, default "nearest"
        How bfloat16 params and state are stored: to nearest-even, or stochastically with
        bits keyed by (seed, step, tensor_index, element). float16 stores and the param copy
        always round to nearest.
    seed : int, default 0
        Key of the stochastic bits, in [0, 2**64).
    tensor_index : int, default 0
        The tensor's part of that key (``RMSprop`` uses the param's index).
    param_copy : numpy.ndarray or None
        bfloat16 or float16 array that receives the updated float32 param, rounded to
        nearest, in the same pass. # OUT

    Notes
    -----
    Low precision (docs/low-precision.md): a float32, bfloat16 or float16 param takes
    grads and state of any of these three dtypes (all state buffers alike). Arithmetic is
    float32; each low-precision buffer is rounded once on store.

    Raises
    ------
    TypeError
        A buffer that is not a float32/float64 ndarray (or one of the low-precision
        combinations above), dtypes that differ, or an option of the wrong type.
    ValueError
        Shapes that differ, a buffer that is not C-contiguous or not writeable, buffers that
        share memory, an option out of range or overflowing the dtype, or a missing state
        buffer. Nothing is written when an exception is raised.
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
    cdef int threads = _thread_count(n_threads)
    cdef bint stochastic = _read_rounding(rounding)
    cdef uint64_t seed_value = _read_seed(seed)
    cdef Py_ssize_t tensor = 0 if type(tensor_index) is int and tensor_index == 0 else \
        _check_step(tensor_index, "tensor_index", 0)
    if param_copy is not None or _is_low_precision(param) or _is_low_precision(grad) or \
            _is_low_precision(square_avg):        # low precision: _lowp.pxi
        return _lowp_functional(&options, step_count, threads, n_threads is None, param, grad,
                                square_avg, momentum_buffer, grad_avg, max_square_avg,
                                param_copy, stochastic, seed_value, tensor, False)

    cdef rc_buffers buffers
    cdef list arrays = []
    _collect_buffers(param, grad, square_avg, momentum_buffer, grad_avg, max_square_avg,
                     &buffers, arrays)
    if buffers.momentum_buffer == NULL and options.values[_MOMENTUM] != 0.0:
        raise ValueError("momentum > 0 needs a momentum_buffer")
    if buffers.grad_avg == NULL and options.values[_CENTERED] != 0.0:
        raise ValueError("centered=True needs a grad_avg buffer")
    if buffers.max_square_avg == NULL and options.values[_AMSGRAD] != 0.0:
        raise ValueError("amsgrad=True needs a max_square_avg buffer")
    cdef cnp.ndarray param_array = <cnp.ndarray>arrays[0]
    cdef int dtype = _dtype_code(param_array)
    _check_representable(&options, None, dtype, -1)

    cdef rc_hyper hyper
    _fill_hyper(&options, step_count, &hyper)
    cdef rc_kernel_fn kernel = rc_get_kernel(_simd, dtype, _variant(&options))
    cdef Py_ssize_t total = cnp.PyArray_SIZE(param_array)
    cdef unsigned char itemsize = <unsigned char>cnp.PyArray_ITEMSIZE(param_array)
    with nogil:
        _run_one(kernel, &hyper, &buffers, total, itemsize, threads, n_threads is None, dtype)


def same_traffic_step(param, grad, square_avg, *, momentum_buffer=None, grad_avg=None,
                      max_square_avg=None, n_threads=None, param_copy=None):
    """The bandwidth yardstick: ``state += grad`` for every buffer given, ``param += grad``.

    Reads and writes exactly the buffers the matching RMSprop variant touches, with the same
    threading, so its time is the memory ceiling of that variant. For benchmarks. With
    bfloat16/float16 buffers (or ``param_copy``) the adds are integer adds of the bits, and
    the copy receives the param's top 16 bits: the bytes of the low-precision step.
    """
    cdef int threads = _thread_count(n_threads)
    if param_copy is not None or _is_low_precision(param) or _is_low_precision(grad) or \
            _is_low_precision(square_avg):
        return _lowp_functional(NULL, 1, threads, n_threads is None, param, grad, square_avg,
                                momentum_buffer, grad_avg, max_square_avg, param_copy, False,
                                0, 0, True)
    cdef rc_buffers buffers
    cdef list arrays = []
    _collect_buffers(param, grad, square_avg, momentum_buffer, grad_avg, max_square_avg,
                     &buffers, arrays)
    cdef cnp.ndarray param_array = <cnp.ndarray>arrays[0]
    cdef rc_hyper hyper
    memset(&hyper, 0, sizeof(rc_hyper))
    cdef int dtype = _dtype_code(param_array)
    cdef rc_kernel_fn kernel = rc_get_traffic_kernel(
        _simd, _dtype_code(param_array),
        rc_traffic_variant(buffers.grad_avg != NULL, buffers.max_square_avg != NULL,
                           RC_MOM_LR_OUTSIDE if buffers.momentum_buffer != NULL
                           else RC_MOM_NONE))
    cdef Py_ssize_t total = cnp.PyArray_SIZE(param_array)
    cdef unsigned char itemsize = <unsigned char>cnp.PyArray_ITEMSIZE(param_array)
    with nogil:
        _run_one(kernel, &hyper, &buffers, total, itemsize, threads, n_threads is None, dtype)


def global_grad_norm(grads, norm_type=2, *, grad_scale=1.0, clip_value=INFINITY,
                     n_threads=None):
    """The norm of all gradients together, as one vector: deterministic and multi-threaded.

    Computed over the gradients after ``grad_scale`` and ``clip_value``, exactly as
    :class:`rmsprop_c.RMSprop` measures it before clipping by ``max_grad_norm``, and equal
    bit for bit to ``rmsprop_c.reference.global_grad_norm`` for every thread count and SIMD
    target (docs/preprocessing.md defines the summation order).

    Parameters
    ----------
    grads : sequence of numpy.ndarray
        float32 or float64, C-contiguous arrays (dtypes may differ; bfloat16 and float16
        ones are widened to float32); never written.
    norm_type : 2 or inf, default 2
        The Euclidean norm (summed in float64) or the largest magnitude.
    grad_scale : float, default 1
        Each element is multiplied by it first (finite, > 0), in the array's dtype.
    clip_value : float or None, default inf
        Then clamped to [-clip_value, clip_value] (> 0); inf or None: no clamp.
    n_threads : int or None
        Threads of the read pass; the result does not depend on it.

    Returns
    -------
    float
        The norm; NaN when a gradient holds NaN, inf when one holds inf (or the sum of
        squares overflows float64). 0.0 for no elements.

    Raises
    ------
    TypeError, ValueError
        A gradient that is not a C-contiguous float32/float64 ndarray (naming
        ``grads[i]``), or a bad ``norm_type``, ``grad_scale`` or ``clip_value``.
    """
    cdef bint inf_norm = _check_option("norm_type", norm_type) != 2.0
    cdef Options options
    memset(&options, 0, sizeof(Options))
    _read_value(grad_scale, _GRAD_SCALE, None, &options)
    _read_value(INFINITY if clip_value is None else clip_value, _CLIP_VALUE, None, &options)
    cdef int threads = _thread_count(n_threads)
    if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
        raise TypeError(f"grads must be a list or tuple of arrays, got {type(grads).__name__}")
    cdef list arrays = [_check_lowp_array(grad, f"grads[{i}]", False, _F32 | _BF16 | _F16)
                        if _is_low_precision(grad) else _check_array(grad, "grads", False, i)
                        for i, grad in enumerate(grads)]     # low precision: widened, float32
    cdef Py_ssize_t n = len(arrays), i
    cdef rc_hyper hyper
    memset(&hyper, 0, sizeof(rc_hyper))
    hyper.grad_scale = options.values[_GRAD_SCALE]
    hyper.clip_value = options.values[_CLIP_VALUE]
    for i in range(n):
        if _any_dtype_code(<cnp.ndarray>arrays[i]) != RC_FLOAT64 and (
                not isfinite(<float>hyper.grad_scale) or <float>hyper.grad_scale == 0):
            raise ValueError(f"grad_scale = {hyper.grad_scale!r} is not representable as a "
                             f"positive float32, the dtype of grads[{i}]")
    cdef size_t m = max(n, 1)
    cdef Plan plan
    cdef Py_ssize_t *offsets = <Py_ssize_t *>calloc(m + 1, sizeof(Py_ssize_t))
    cdef Py_ssize_t *chunk_offsets = <Py_ssize_t *>calloc(m + 1, sizeof(Py_ssize_t))
    cdef rc_nonfinite_fn *checks = <rc_nonfinite_fn *>calloc(m, sizeof(rc_nonfinite_fn))
    cdef const rc_hyper **hypers = <const rc_hyper **>calloc(m, sizeof(rc_hyper *))
    cdef rc_buffers *buffers = <rc_buffers *>calloc(m, sizeof(rc_buffers))
    cdef const rc_buffers **buffer_pointers = <const rc_buffers **>calloc(
        m, sizeof(rc_buffers *))
    cdef double norm = 0.0
    cdef double *partials
    cdef cnp.ndarray partial_array
    try:
        if (offsets == NULL or chunk_offsets == NULL or checks == NULL or hypers == NULL
                or buffers == NULL or buffer_pointers == NULL):
            raise MemoryError()
        for i in range(n):
            array = <cnp.ndarray>arrays[i]
            offsets[i + 1] = offsets[i] + _size(array)
            chunk_offsets[i + 1] = chunk_offsets[i] + _chunks_of(_size(array))
            checks[i] = rc_get_nonfinite_check(_simd, _any_dtype_code(array))
            hypers[i] = &hyper
            buffers[i].grad = cnp.PyArray_DATA(array)
            buffer_pointers[i] = &buffers[i]
        partial_array = np.empty(max(chunk_offsets[n], 1), dtype=np.float64)
        partials = <double *>cnp.PyArray_DATA(partial_array)
        plan.n = n
        plan.total = offsets[n]
        plan.offsets = offsets
        plan.kernels = NULL
        plan.checks = checks
        plan.hypers = hypers
        plan.buffers = buffer_pointers
        plan.chunk_offsets = chunk_offsets
        plan.itemsizes = NULL
        with nogil:
            _plan_norm(&plan, _policy_workers(_size_policy(plan.total), threads, plan.total,
                                              False), inf_norm, partials, &norm)
        return norm
    finally:
        free(offsets)
        free(chunk_offsets)
        free(checks)
        free(<void *>hypers)
        free(buffers)
        free(<void *>buffer_pointers)
