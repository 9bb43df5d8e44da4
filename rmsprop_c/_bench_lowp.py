"""Benchmark of the low-precision families against the float32 step and their own ceilings.

Families (``RMSprop.step``, plain RMSprop, medians of interleaved repeats):

* ``float32``: float32 params, grads and state (20 bytes per element), the yardstick;
* ``f32 params + bf16 state``: float32 params and grads, bfloat16 square_avg (16 B);
* ``bf16 params + bf16 state``: everything bfloat16 (10 B), rounded to nearest and
  stochastically;
* ``f32 master + bf16 copy``: the float32 step writing a bfloat16 param copy in the same
  pass (22 B), and, for comparison, the float32 step followed by a separate cast.

Each family is also timed against its own same-traffic kernel (integer adds over exactly
the same buffers, :func:`rmsprop_c._kernels.same_traffic_step`), in the same process. Cases:
one 16M-element tensor (every thread, then one) and the 148-tensor transformer (its
same-traffic kernel runs over one flat buffer of the same total).
"""

import numpy as np

from rmsprop_c import _kernels
from rmsprop_c._bench_defs import format_size, model_size, section_sizes
from rmsprop_c._bench_timing import Contender, measure
from rmsprop_c._low_precision import BFLOAT16
from rmsprop_c.optimizer import RMSprop

__all__ = ["run", "format_results", "FAMILIES"]

LR, ALPHA, EPS = 1e-3, 0.99, 1e-8
F32 = np.dtype(np.float32)
# name: (param dtype, grad dtype, state dtype, copy dtype, rounding)
FAMILIES = {
    "float32": (F32, F32, F32, None, "nearest"),
    "f32 params + bf16 state": (F32, F32, BFLOAT16, None, "nearest"),
    "bf16 params + bf16 state": (BFLOAT16, BFLOAT16, BFLOAT16, None, "nearest"),
    "bf16 params + bf16 state, stochastic": (BFLOAT16, BFLOAT16, BFLOAT16, None, "stochastic"),
    "f32 master + bf16 copy": (F32, F32, F32, BFLOAT16, "nearest"),
}


def bytes_per_element(family):
    """Bytes one plain step moves per element: read p, g, v; write p, v; write the copy."""
    param, grad, state, copy, _ = FAMILIES[family]
    return 2 * param.itemsize + grad.itemsize + 2 * state.itemsize + (
        copy.itemsize if copy is not None else 0)


def _arrays(shapes, dtype, rng, scale=1.0):
    return [(rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)
            for shape in shapes]


def _family_step(family, shapes, n_threads, rng):
    param, grad, state, copy, rounding = FAMILIES[family]
    params = _arrays(shapes, param, rng)
    grads = _arrays(shapes, grad, rng, 1e-2)
    copies = None if copy is None else [np.zeros(shape, copy) for shape in shapes]
    optimizer = RMSprop(params, lr=LR, alpha=ALPHA, eps=EPS, n_threads=n_threads,
                        state_dtype=state.name, rounding=rounding, param_copies=copies)
    for buffers in optimizer.state:
        for array in buffers.values():
            array.fill(0.0)                  # fault the pages in before timing
    return lambda: optimizer.step(grads)


def _step_then_cast(shapes, n_threads, rng):
    params = _arrays(shapes, F32, rng)
    grads = _arrays(shapes, F32, rng, 1e-2)
    copies = [np.zeros(shape, BFLOAT16) for shape in shapes]
    optimizer = RMSprop(params, lr=LR, alpha=ALPHA, eps=EPS, n_threads=n_threads)

    def run():
        optimizer.step(grads)
        for param, copy in zip(params, copies):
            np.copyto(copy, param, casting="unsafe")

    return run


def _family_ceiling(family, total, n_threads):
    """The same-traffic kernel over one flat buffer of the family's dtypes."""
    param, grad, state, copy, _ = FAMILIES[family]
    buffers = [np.zeros(total, dtype) for dtype in (param, grad, state)]
    copy_array = None if copy is None else np.zeros(total, copy)
    return lambda: _kernels.same_traffic_step(*buffers, n_threads=n_threads,
                                              param_copy=copy_array)


def _case(name, shapes, n_threads, settings, rng):
    total = model_size(shapes)
    contenders = []
    for family in FAMILIES:
        contenders.append(Contender(family, _family_step(family, shapes, n_threads, rng)))
        if not family.endswith("stochastic"):
            contenders.append(Contender(f"ceiling: {family}",
                                        _family_ceiling(family, total, n_threads)))
    contenders.append(Contender("float32 step, then cast", _step_then_cast(shapes, n_threads,
                                                                           rng)))
    seconds = measure(contenders, settings["repeats"], settings["min_time"])
    base = seconds["float32"]["median"]
    rows = []
    for family in FAMILIES:
        ours = seconds[family]["median"]
        ceiling = seconds[f"ceiling: {family.replace(', stochastic', '')}"]["median"]
        rows.append({"family": family, "bytes_per_element": bytes_per_element(family),
                     "seconds": ours, "speedup_over_float32": base / ours,
                     "time_over_float32": ours / base, "fraction_of_ceiling": ceiling / ours})
    return {"case": name, "elements": total, "tensors": len(shapes), "seconds": seconds,
            "rows": rows,
            "step_then_cast_over_float32": seconds["float32 step, then cast"]["median"] / base}


def run(quick=False):
    """Times every case; returns a dict of medians, samples and ratios.

    ``quick``: smaller sizes and fewer repeats (seconds, for a smoke run).
    """
    if BFLOAT16 is None:
        return {"skipped": "bfloat16 needs the ml_dtypes package"}
    rng = np.random.default_rng(0)
    settings, size, transformer = section_sizes(quick)
    n_threads = _kernels.max_threads()
    return {
        "threads": n_threads, "quick": bool(quick),
        "cases": [_case(f"{format_size(size)}, one tensor", [(size,)], n_threads, settings, rng),
                  _case(f"{format_size(size)}, one tensor, 1 thread", [(size,)], 1, settings,
                        rng),
                  _case(f"transformer ({len(transformer)} tensors)", transformer, n_threads,
                        settings, rng)],
    }


def format_results(results):
    """Plain-text tables of :func:`run`'s results."""
    if "skipped" in results:
        return f"Low precision: skipped ({results['skipped']})"
    lines = [f"Low precision (bfloat16), plain RMSprop, up to {results['threads']} threads"]
    for case in results["cases"]:
        lines.append(f"  {case['case']}: {case['elements']:,} elements")
        lines.append(f"    {'family':<38} {'B/elem':>6} {'ms':>9} {'vs float32':>11} "
                     f"{'of ceiling':>11}")
        for row in case["rows"]:
            lines.append(f"    {row['family']:<38} {row['bytes_per_element']:>6} "
                         f"{row['seconds'] * 1e3:>9.2f} {row['speedup_over_float32']:>10.2f}x "
                         f"{row['fraction_of_ceiling']:>11.2f}")
        lines.append(f"    float32 step then a separate cast: "
                     f"{case['step_then_cast_over_float32']:.2f}x the float32 step's time")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_results(run()))
