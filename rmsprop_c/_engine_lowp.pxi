# The engine's low-precision side: which dtypes its buffers and grads may have, and the
# per-step record (rc_lowp) of a tensor that has a bfloat16/float16 buffer or a param copy.
# Module-level functions over MultiTensorStep's C fields (the class is in _engine.pxi).


cdef cnp.ndarray _engine_param_array(object value, Py_ssize_t i):
    """params[i]: float32/float64 as ever, or bfloat16/float16."""
    if _is_low_precision(value):
        return _check_lowp_array(value, f"params[{i}]", True, _F32 | _BF16 | _F16)
    return _check_array(value, "params", True, i)


cdef cnp.ndarray _engine_copy_array(MultiTensorStep self, object value, cnp.ndarray param,
                                    Py_ssize_t i):
    """param_copies[i]: bfloat16/float16, the shape of a float32 params[i]."""
    cdef cnp.ndarray array = _check_param_copy(value, f"param_copies[{i}]", param,
                                               f"params[{i}]")
    self.tensor_lowp[i].param_copy = cnp.PyArray_DATA(array)
    self.tensor_lowp[i].copy_dtype = _any_dtype_code(array)
    return array


cdef int _engine_lowp_init(MultiTensorStep self, Py_ssize_t i, cnp.ndarray param) except -1:
    cdef rc_lowp *lowp = &self.tensor_lowp[i]
    lowp.param_dtype = _any_dtype_code(param)
    lowp.grad_dtype = lowp.param_dtype
    lowp.state_dtype = -1
    lowp.copy_dtype = -1
    return 0


cdef bint _engine_grad_dtype_ok(MultiTensorStep self, cnp.ndarray grad, Py_ssize_t i) noexcept:
    """A grad of another dtype than params[i] that the low-precision step takes."""
    cdef int param_code = self.tensor_lowp[i].param_dtype
    cdef int code = _any_dtype_code(grad)
    return param_code != RC_FLOAT64 and code >= 0 and code != RC_FLOAT64


cdef cnp.ndarray _engine_lowp_grad(MultiTensorStep self, object grad, Py_ssize_t i):
    """grads[i] when it or params[i] is low precision (checked like any grad)."""
    cdef cnp.ndarray param = <cnp.ndarray>self.param_objects[i]
    cdef str name = f"grads[{i}]"
    cdef cnp.ndarray array = _check_lowp_array(
        grad, name, False, (_F32 | _BF16 | _F16) if self.tensor_lowp[i].param_dtype != RC_FLOAT64
        else (1 << RC_FLOAT64), f" for params[{i}] of dtype {param.dtype}")
    if not _engine_grad_dtype_ok(self, array, i):
        _check_like(array, param, "grads", "params", i)
    _check_shape(array, param, name, f"params[{i}]")
    return array


cdef inline int _code_itemsize(int code) noexcept nogil:
    """Bytes per element of a dtype code (RC_FLOAT32, RC_FLOAT64, RC_BFLOAT16, RC_FLOAT16)."""
    return 8 if code == RC_FLOAT64 else (4 if code == RC_FLOAT32 else 2)


cdef inline void _engine_lowp_plan(MultiTensorStep self, Py_ssize_t i,
                                   Py_ssize_t slot) noexcept nogil:
    """Tensor i's low-precision record for this step (or none), in plan slot `slot`; its
    grad dtype was recorded by the checks."""
    cdef rc_lowp *lowp = &self.tensor_lowp[i]
    cdef int state = lowp.state_dtype if lowp.state_dtype >= 0 else lowp.param_dtype
    if lowp.param_dtype == RC_FLOAT64 or (
            lowp.param_dtype == RC_FLOAT32 and lowp.grad_dtype == RC_FLOAT32
            and state == RC_FLOAT32 and lowp.param_copy == NULL):
        self.buffers[i].lowp = NULL
        return
    lowp.state_dtype = state
    lowp.run = rc_get_lowp_runner(_simd, 0)
    lowp.stochastic = self.lowp_stochastic
    if self.lowp_stochastic:
        _lowp_keys(lowp, self.lowp_seed, self.tensor_steps[i] + 1, i)
    self.buffers[i].lowp = lowp
    self.plan_checks[slot] = rc_get_nonfinite_check(_simd, lowp.grad_dtype)
    self.plan_itemsizes[slot] = <unsigned char>_code_itemsize(lowp.param_dtype)


cdef int _engine_lowp_refuse_rows(MultiTensorStep self, Py_ssize_t i, str name) except -1:
    """Row grads step float32/float64 buffers only: refuse them for a low-precision tensor."""
    cdef rc_lowp *lowp = &self.tensor_lowp[i]
    if lowp.param_dtype >= RC_BFLOAT16 or lowp.param_copy != NULL or (
            lowp.state_dtype >= 0 and lowp.state_dtype != lowp.param_dtype):
        raise TypeError(f"{name} is a RowGrad, but params[{i}] is stepped in low precision "
                        "(bfloat16/float16 param or state, or a param copy); row grads need "
                        "float32 or float64 params with state of the same dtype")
    return 0
