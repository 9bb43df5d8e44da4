# cython: boundscheck=False
# Design: the per-element math lives in C++ chunk kernels (src/kernel_body.hpp), one per
# (SIMD target, dtype, variant), where the variant fixes the options that change which
# buffers are touched; the rest are runtime scalars. This module checks everything before
# any write (the error contract), picks the kernels, and runs a step's tensors in ONE OpenMP
# parallel region split by element count, or on the calling thread when the threading policy
# measured that a parallel region does not pay. No allocation happens on the step path.
#
# Exactness: scalars derived from hyperparameters (1 - alpha, lr * wd, 1 - alpha**t) are
# computed here in double; kernels round each to the buffer dtype once.
#
# The concerns live in included files, in dependency order:
#   _native.pxi      the kernel ABI and small C helpers (clock, FP mode, fork tracking)
#   _simd.pxi        SIMD target selection, build facts
#   _checks.pxi      option and array checks shared by both API paths
#   _threads.pxi     thread limits, the parallel region over a plan of tensors
#   _policy.pxi      the threading policy of n_threads=None
#   _lowp.pxi        low precision: dtype checks, stochastic keys, the functional lowp step
#   _functional.pxi  rmsprop_step, same_traffic_step
#   _engine.pxi      MultiTensorStep, the engine of RMSprop.step
#   _engine_build.pxi   the engine's construction: buffers checked and recorded
#   _engine_checks.pxi  the engine's per-step checks that raise (under the GIL)
#   _engine_lowp.pxi    the engine's low-precision dtypes and per-step records
#   _engine_fast.pxi    the engine's step region: checks in C by every worker, then kernels
#   _rows_index.pxi  row steps: indices checked and grouped by row
#   _rows.pxi        rmsprop_step_rows, lazy row steps
#   _engine_rows.pxi the engine's steps with row grads (RowGrad) next to dense ones

from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_CheckExact, PyLong_AsDouble, PyLong_AsLongLong
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.math cimport isfinite, pow, sqrt, INFINITY, NAN
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcmp
from cython.parallel cimport parallel, prange, threadid

cimport numpy as cnp

from rmsprop_c._openmp_helpers cimport (RC_OPENMP_ENABLED, omp_get_max_threads,
                                        omp_get_num_procs, omp_get_num_threads,
                                        rc_omp_barrier)

import operator
import os

import numpy as np

from rmsprop_c._options import STATE_KEYS

cnp.import_array()

include "_native.pxi"
include "_simd.pxi"
include "_checks.pxi"
include "_threads.pxi"
include "_policy.pxi"
include "_lowp.pxi"
include "_functional.pxi"
include "_engine.pxi"
include "_engine_build.pxi"
include "_engine_checks.pxi"
include "_engine_lowp.pxi"
include "_engine_fast.pxi"
include "_rows_index.pxi"
include "_rows.pxi"
include "_engine_rows.pxi"
