"""Low precision: bfloat16 params, state and param copies against the float32 step.

Each family's ``RMSprop.step`` is timed against the float32 step and against its own
same-traffic kernel (integer adds over exactly the buffers it moves), interleaved in one
process by ``rmsprop_c._bench_lowp`` (the ``lowp`` section of ``python -m rmsprop_c bench``),
on 2**22 elements in one tensor. Tracked, lower is better:

``track_time_vs_float32``
    the family's step time / the float32 step's time.
``track_time_vs_ceiling``
    the family's step time / its same-traffic kernel's time.
"""

import numpy as np

from rmsprop_c import _bench_lowp

SIZE = 1 << 22
REPEATS = 5
MIN_TIME = 0.02


class LowPrecision:
    params = [list(_bench_lowp.FAMILIES)]
    param_names = ["family"]
    timeout = 600

    def setup_cache(self):
        if _bench_lowp.BFLOAT16 is None:
            raise NotImplementedError("needs ml_dtypes")
        case = _bench_lowp._case("asv", [(SIZE,)], None, {"repeats": REPEATS,
                                                         "min_time": MIN_TIME},
                                 np.random.default_rng(0))
        return {row["family"]: row for row in case["rows"]}

    def track_time_vs_float32(self, rows, family):
        return rows[family]["time_over_float32"]

    def track_time_vs_ceiling(self, rows, family):
        return 1.0 / rows[family]["fraction_of_ceiling"]


__all__ = ["LowPrecision"]
