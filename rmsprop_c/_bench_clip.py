"""Benchmark of gradient clipping fused into the step, against clipping done outside it.

Contenders, float32, medians of interleaved repeats (``_bench_timing.measure``):

* ``step``: ``RMSprop.step`` without preprocessing (the yardstick).
* ``fused clip by norm``: ``RMSprop(max_grad_norm=...)``: one extra read of the grads for the
  norm, the scaling inside the step.
* ``numpy clip, then step``: the norm with ``np.vdot`` per tensor, the grads scaled into a
  second buffer with ``np.multiply``, then the plain step on it.
* ``torch clip_grad_norm_ + RMSprop``: ``torch.nn.utils.clip_grad_norm_`` then
  ``torch.optim.RMSprop.step`` on the same data (when torch is installed).

Cases: one 16M-element tensor (out of cache) and the 148-tensor transformer; and, in cache,
the cost of the preprocessing path (``clip_value``) and of the norm pass against the plain step.
"""

import math

import numpy as np

from rmsprop_c import _kernels
from rmsprop_c._bench_defs import format_size, model_arrays, model_size, section_sizes
from rmsprop_c._bench_timing import Contender, measure
from rmsprop_c.optimizer import RMSprop

__all__ = ["run"]

LR, ALPHA, EPS = 1e-3, 0.99, 1e-8
MAX_GRAD_NORM = 1.0          # below the benchmark grads' norm: the clip is always active


def _optimizer(params, **options):
    optimizer = RMSprop(params, lr=LR, alpha=ALPHA, eps=EPS, **options)
    for state in optimizer.state:
        for array in state.values():
            array.fill(0.0)                  # fault the pages in before timing
    return optimizer


def _numpy_clip_then_step(params, grads, n_threads):
    optimizer = _optimizer(params, n_threads=n_threads)
    scaled = [np.empty_like(grad) for grad in grads]

    def run():
        norm = math.sqrt(sum(float(np.vdot(grad, grad)) for grad in grads))
        coefficient = min(1.0, MAX_GRAD_NORM / (norm + 1e-6))
        for grad, out in zip(grads, scaled):
            np.multiply(grad, grad.dtype.type(coefficient), out=out)
        optimizer.step(scaled)

    return run


def _torch_contender(torch, params, grads, n_threads):
    torch.set_num_threads(n_threads)
    tensors = [torch.from_numpy(param.copy()).requires_grad_() for param in params]
    for tensor, grad in zip(tensors, grads):
        tensor.grad = torch.from_numpy(grad.copy())
    optimizer = torch.optim.RMSprop(tensors, lr=LR, alpha=ALPHA, eps=EPS)

    def run():
        torch.nn.utils.clip_grad_norm_(tensors, MAX_GRAD_NORM)
        optimizer.step()

    return run


def _contenders(shapes, torch, n_threads, rng, pinned):
    """``pinned``: every contender runs on exactly ``n_threads`` (else ours choose, up to it)."""
    params, grads = model_arrays(shapes, np.float32, rng)
    copies = [[param.copy() for param in params] for _ in range(2)]
    ours = n_threads if pinned else None
    plain = _optimizer(params, n_threads=ours)
    fused = _optimizer(copies[0], max_grad_norm=MAX_GRAD_NORM, n_threads=ours)
    contenders = [
        Contender("step", lambda: plain.step(grads)),
        Contender("fused clip by norm", lambda: fused.step(grads)),
        Contender("numpy clip, then step", _numpy_clip_then_step(copies[1], grads, ours)),
    ]
    if torch is not None:
        contenders.append(Contender("torch clip_grad_norm_ + RMSprop",
                                    _torch_contender(torch, params, grads, n_threads)))
    return contenders


def _case(name, shapes, torch, n_threads, settings, rng, pinned=False):
    results = measure(_contenders(shapes, torch, n_threads, rng, pinned), settings["repeats"],
                      settings["min_time"])
    base = results["step"]["median"]
    fused = results["fused clip by norm"]["median"]
    return {
        "case": name,
        "elements": model_size(shapes),
        "tensors": len(shapes),
        "seconds": results,
        "fused_over_plain": fused / base,
        "speedup_over": {other: results[other]["median"] / fused for other in results
                         if other not in ("step", "fused clip by norm")},
    }


def _in_cache_case(size, settings, rng):
    params, grads = model_arrays([(size,)], np.float32, rng)
    copies = [[param.copy() for param in params] for _ in range(2)]
    plain = _optimizer(params, n_threads=1)
    clipped = _optimizer(copies[0], clip_value=1.0, grad_scale=0.5, n_threads=1)
    by_norm = _optimizer(copies[1], max_grad_norm=MAX_GRAD_NORM, n_threads=1)
    results = measure([Contender("step", lambda: plain.step(grads)),
                       Contender("grad_scale + clip_value", lambda: clipped.step(grads)),
                       Contender("clip by norm", lambda: by_norm.step(grads))],
                      settings["repeats"], settings["min_time"], warm_each_batch=True)
    base = results["step"]["median"]
    return {"case": f"in cache, {format_size(size)}, 1 thread", "elements": size,
            "seconds": results,
            "ratios": {name: results[name]["median"] / base for name in results}}


def run(quick=False):
    """Times every case; returns a dict of the medians, samples and ratios.

    ``quick``: smaller sizes and fewer repeats (seconds, for a smoke run).
    """
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    settings, size, transformer = section_sizes(quick)
    n_threads = _kernels.max_threads()
    return {
        "threads": n_threads,
        "quick": bool(quick),
        "out_of_cache": _case(f"{format_size(size)} float32", [(size,)], torch, n_threads,
                              settings, rng),
        "out_of_cache_one_thread": _case(f"{format_size(size)} float32, 1 thread", [(size,)],
                                         None, 1, settings, rng, pinned=True),
        "transformer": _case(f"transformer ({len(transformer)} tensors) float32",
                             transformer, torch, n_threads, settings, rng),
        "in_cache": _in_cache_case(1 << 14 if quick else 1 << 16, settings, rng),
    }


def format_results(results):
    """Plain-text tables of :func:`run`'s results (seconds as microseconds)."""
    lines = [f"Gradient clipping fused into the step, {results['threads']} threads"]
    for key in ("out_of_cache", "out_of_cache_one_thread", "transformer"):
        case = results[key]
        lines.append(f"  {case['case']}: {case['elements']:,} elements")
        for name, entry in case["seconds"].items():
            lines.append(f"    {name:<34} {entry['median'] * 1e6:12.1f} us")
        lines.append(f"    fused clip by norm / step: {case['fused_over_plain']:.2f}x")
        for other, ratio in case["speedup_over"].items():
            lines.append(f"    fused clip by norm is {ratio:.2f}x faster than {other}")
    case = results["in_cache"]
    lines.append(f"  {case['case']}")
    for name, ratio in case["ratios"].items():
        lines.append(f"    {name:<34} {case['seconds'][name]['median'] * 1e6:10.2f} us"
                     f"  {ratio:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_results(run()))
