# Low precision: bfloat16 (ml_dtypes) and float16 buffers around float32 arithmetic.
#
# The math runs in float32: src/lowp_body.hpp widens each L1 block of a low-precision buffer,
# runs the float32 variant kernel and rounds each low-precision buffer once on store. Here:
# the dtype rules (checked before anything is written), the keys of the stochastic bits
# (rmsprop_c.reference.stream_key, in C), and the functional low-precision step.

cdef extern from *:
    """
    /* rmsprop_c.reference.stream_key: splitmix64's finalizer chained over the key parts. */
    static inline uint64_t rc_mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    static inline uint64_t rc_stream_key(uint64_t seed, uint64_t step, uint64_t tensor,
                                         uint64_t stream) {
        uint64_t key = rc_mix64(seed + 0x9E3779B97F4A7C15ULL);
        key = rc_mix64(key ^ step);
        return rc_mix64(key ^ (8 * tensor + stream));
    }
    """
    uint64_t rc_stream_key(uint64_t seed, uint64_t step, uint64_t tensor,
                           uint64_t stream) noexcept nogil

try:                                    # bfloat16 arrays exist only with ml_dtypes
    import ml_dtypes as _ml_dtypes
    _BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:                     # pragma: no cover - ml_dtypes is a test dependency
    _BFLOAT16 = None

cdef int _BFLOAT16_NUM = -1 if _BFLOAT16 is None else _BFLOAT16.num
# Bit masks of dtype codes (1 << RC_FLOAT32, ...), for the rules below.
cdef int _F32 = 1 << RC_FLOAT32
cdef int _BF16 = 1 << RC_BFLOAT16
cdef int _F16 = 1 << RC_FLOAT16
cdef tuple _DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")


cdef int _any_dtype_code(cnp.ndarray array) noexcept:
    """RC_FLOAT32/64, RC_BFLOAT16 or RC_FLOAT16 for native-order arrays, else -1."""
    cdef int typenum = cnp.PyArray_TYPE(array)
    if not cnp.PyArray_ISNOTSWAPPED(array):
        return -1
    if typenum == cnp.NPY_FLOAT32:
        return RC_FLOAT32
    if typenum == cnp.NPY_FLOAT64:
        return RC_FLOAT64
    if typenum == cnp.NPY_FLOAT16:
        return RC_FLOAT16
    if typenum == _BFLOAT16_NUM:
        return RC_BFLOAT16
    return -1


cdef bint _is_low_precision(object value) noexcept:
    """An ndarray of bfloat16 or float16 (anything else takes the float path)."""
    return isinstance(value, cnp.ndarray) and _any_dtype_code(<cnp.ndarray>value) >= RC_BFLOAT16


cdef str _allowed_text(int allowed):
    return " or ".join(_DTYPE_NAMES[code] for code in range(4) if allowed >> code & 1)


cdef cnp.ndarray _check_lowp_array(object value, str name, bint writeable, int allowed,
                                   str why=""):
    """The array if it is C-contiguous, aligned, of an `allowed` dtype (and writeable)."""
    if not isinstance(value, np.ndarray) or isinstance(value, np.ma.MaskedArray):
        _refuse_non_array(value, name)
    cdef cnp.ndarray array = <cnp.ndarray>value
    cdef int code = _any_dtype_code(array)
    if code < 0 or not (allowed >> code) & 1:
        raise TypeError(f"{name} has dtype {array.dtype}; expected {_allowed_text(allowed)}"
                        f"{why}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(array):
        raise ValueError(f"{name} is not C-contiguous; pass a contiguous array (an in-place "
                         "update of a copy would be lost)")
    if not cnp.PyArray_ISALIGNED(array):
        raise ValueError(f"{name} is not aligned to its dtype")
    if writeable and not cnp.PyArray_ISWRITEABLE(array):
        raise ValueError(f"{name} is not writeable")
    return array


cdef int _check_shape(cnp.ndarray array, cnp.ndarray reference, str name,
                      str reference_name) except -1:
    if not _same_shape(array, reference):
        raise ValueError(f"{name} has shape {(<object>array).shape}, but {reference_name} "
                         f"has shape {(<object>reference).shape}")
    return 0


cdef int _lowp_state_rule(int param_code) noexcept:
    """State dtypes a param may have: float32, bfloat16 or float16 for any of those params."""
    return _F32 | _BF16 | _F16


cdef cnp.ndarray _check_state_buffer(object value, str name, cnp.ndarray param,
                                     str param_name, bint low_precision, int *state_code,
                                     list first_name):
    """One state buffer of `param`, checked alike by rmsprop_step and the optimizer's engine:
    writeable, C-contiguous, aligned, of the param's shape and dtype; or, on the low-precision
    path with a float32, bfloat16 or float16 param, of any of those three dtypes, every state
    buffer of the tensor alike (`state_code`: the dtype seen first, -1 before any; the name of
    the buffer that had it is kept in `first_name`; both unused off that path: NULL, None)."""
    cdef cnp.ndarray array
    cdef int code
    if not low_precision or _any_dtype_code(param) == RC_FLOAT64:
        array = _check_array(value, name, True)
        _check_like(array, param, name, param_name)
        return array
    array = _check_lowp_array(value, name, True, _lowp_state_rule(_any_dtype_code(param)),
                              f" for {param_name} of dtype {param.dtype}")
    _check_shape(array, param, name, param_name)
    code = _any_dtype_code(array)
    if state_code[0] >= 0 and code != state_code[0]:
        raise TypeError(f"{name} has dtype {array.dtype}, but {first_name[0]} has dtype "
                        f"{_DTYPE_NAMES[state_code[0]]}: the state buffers of {param_name} "
                        f"share one dtype")
    if state_code[0] < 0:
        first_name[:] = [name]
    state_code[0] = code
    return array


cdef int _given(tuple values):
    """The presence bits of optional state buffers passed as arguments (None: absent);
    square_avg is always given."""
    cdef int k, present = 1
    for k in range(1, 4):
        if values[k] is not None:
            present |= 1 << k
    return present


cdef int _collect_states(tuple values, tuple names, int present, cnp.ndarray param,
                         str param_name, bint low_precision, void ***slots, list arrays,
                         list array_names) except -2:
    """The state buffers of one tensor, for every path that takes them (rmsprop_step,
    rmsprop_step_rows, the optimizer's engine): `values[k]` is the buffer of STATE_KEYS[k],
    present when bit k of `present` is set, and `names[k]` its name in messages. Each present
    one goes through _check_state_buffer; its data pointer is stored at slots[k] (NULL when
    absent) and the array and its name are appended. Returns the state dtype code on the
    low-precision path (-1 otherwise)."""
    cdef int state_code = -1
    cdef list first_state = [None]
    cdef cnp.ndarray array
    cdef int k
    for k in range(4):
        if not present & (1 << k):
            slots[k][0] = NULL
            continue
        array = _check_state_buffer(values[k], names[k], param, param_name, low_precision,
                                    &state_code, first_state)
        slots[k][0] = cnp.PyArray_DATA(array)
        arrays.append(array)
        array_names.append(names[k])
    return state_code


cdef void _state_slots(rc_buffers *buffers, void ***slots) noexcept:
    """slots[k]: where the data pointer of STATE_KEYS[k] goes in `buffers`."""
    slots[0] = &buffers.square_avg
    slots[1] = &buffers.momentum_buffer
    slots[2] = &buffers.grad_avg
    slots[3] = &buffers.max_square_avg


cdef cnp.ndarray _check_param_copy(object value, str name, cnp.ndarray param,
                                   str param_name):
    """A low-precision copy of `param` (both API paths): bfloat16/float16, the shape of a
    float32 param, writeable, C-contiguous."""
    if _any_dtype_code(param) != RC_FLOAT32:
        raise TypeError(f"{name} needs a float32 {param_name} (the master copy), got dtype "
                        f"{param.dtype}")
    cdef cnp.ndarray array = _check_lowp_array(value, name, True, _BF16 | _F16)
    _check_shape(array, param, name, param_name)
    return array


cdef int _collect_lowp(object param, object grad, object square_avg, object momentum_buffer,
                       object grad_avg, object max_square_avg, object param_copy,
                       rc_buffers *buffers, rc_lowp *lowp, list arrays) except -1:
    """Checks one low-precision tensor's buffers and fills `buffers` and `lowp` (dtypes and
    copy; the caller sets run, stochastic and keys). Nothing is written."""
    cdef cnp.ndarray param_array = _check_lowp_array(
        param, "param", True, _F32 | _BF16 | _F16,
        " with bfloat16/float16 buffers (float64 params take float64 buffers only)")
    cdef cnp.ndarray grad_array = _check_lowp_array(grad, "grad", False, _F32 | _BF16 | _F16)
    _check_shape(grad_array, param_array, "grad", "param")
    cdef list names = ["param", "grad"]
    arrays.extend([param_array, grad_array])
    memset(buffers, 0, sizeof(rc_buffers))
    memset(lowp, 0, sizeof(rc_lowp))
    lowp.param_dtype = _any_dtype_code(param_array)
    lowp.grad_dtype = _any_dtype_code(grad_array)
    buffers.param = cnp.PyArray_DATA(param_array)
    buffers.grad = cnp.PyArray_DATA(grad_array)
    cdef cnp.ndarray array
    cdef void **slots[4]
    _state_slots(buffers, slots)
    cdef tuple values = (square_avg, momentum_buffer, grad_avg, max_square_avg)
    lowp.state_dtype = _collect_states(values, STATE_KEYS, _given(values), param_array, "param",
                                       True, slots, arrays, names)
    if param_copy is not None:
        array = _check_param_copy(param_copy, "param_copy", param_array, "param")
        lowp.param_copy = cnp.PyArray_DATA(array)
        lowp.copy_dtype = _any_dtype_code(array)
        arrays.append(array)
        names.append("param_copy")
    _check_disjoint(arrays, names)
    buffers.lowp = lowp
    return 0


cdef void _lowp_keys(rc_lowp *lowp, uint64_t seed, long long step,
                     Py_ssize_t tensor_index) noexcept nogil:
    """The stream keys of one tensor at one step (0: param, 1..4: state, STATE_KEYS order)."""
    cdef int stream
    for stream in range(5):
        lowp.keys[stream] = rc_stream_key(seed, <uint64_t>step, <uint64_t>tensor_index,
                                          <uint64_t>stream)


cdef bint _read_rounding(object rounding) except -1:
    """True for "stochastic", False for "nearest"; the registry explains anything else."""
    if type(rounding) is str and rounding == "nearest":
        return False
    return _check_option("rounding", rounding) == "stochastic"


cdef uint64_t _read_seed(object seed) except? 0:
    if type(seed) is int and 0 <= seed < (1 << 64):
        return <uint64_t>seed
    return <uint64_t>_check_option("seed", seed)


cdef object _lowp_functional(const Options *options, long long step, int threads,
                             bint adaptive, object param, object grad, object square_avg,
                             object momentum_buffer, object grad_avg, object max_square_avg,
                             object param_copy, bint stochastic, uint64_t seed,
                             Py_ssize_t tensor_index, bint traffic):
    """rmsprop_step (or same_traffic_step) of one tensor with low-precision buffers."""
    cdef rc_buffers buffers
    cdef rc_lowp lowp
    cdef list arrays = []
    _collect_lowp(param, grad, square_avg, momentum_buffer, grad_avg, max_square_avg,
                  param_copy, &buffers, &lowp, arrays)
    cdef rc_hyper hyper
    cdef rc_kernel_fn kernel = NULL
    memset(&hyper, 0, sizeof(rc_hyper))
    if not traffic:
        if buffers.momentum_buffer == NULL and options.values[_MOMENTUM] != 0.0:
            raise ValueError("momentum > 0 needs a momentum_buffer")
        if buffers.grad_avg == NULL and options.values[_CENTERED] != 0.0:
            raise ValueError("centered=True needs a grad_avg buffer")
        if buffers.max_square_avg == NULL and options.values[_AMSGRAD] != 0.0:
            raise ValueError("amsgrad=True needs a max_square_avg buffer")
        _check_representable(options, None, RC_FLOAT32, -1)
        _fill_hyper(options, step, &hyper)
        kernel = rc_get_kernel(_simd, RC_FLOAT32, _variant(options))
    lowp.run = rc_get_lowp_runner(_simd, traffic)
    lowp.stochastic = stochastic
    _lowp_keys(&lowp, seed, step, tensor_index)
    cdef cnp.ndarray param_array = <cnp.ndarray>arrays[0]
    cdef Py_ssize_t total = cnp.PyArray_SIZE(param_array)
    cdef unsigned char itemsize = <unsigned char>cnp.PyArray_ITEMSIZE(param_array)
    with nogil:
        _run_one(kernel, &hyper, &buffers, total, itemsize, threads, adaptive, RC_FLOAT32)
