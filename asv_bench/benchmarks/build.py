"""The size of the installed compiled module, in bytes.

Every kernel instance (per SIMD target, dtype and variant) lands in this one file, so a change
that multiplies instances, or lets the compiler unroll or duplicate each one, shows up here
before anyone notices a slower build.
"""

import os

from rmsprop_c import _kernels


def track_module_bytes():
    return os.path.getsize(_kernels.__file__)


track_module_bytes.unit = "bytes"
