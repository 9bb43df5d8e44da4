"""``python -m rmsprop_c bench``: rmsprop_c against its memory ceiling, its peers and real loops.

Sections (``--sections``; all by default):

* ``sweep``: ``rmsprop_step`` per variant, dtype, size and thread count, against the
  same-traffic kernel on the same buffers, the NumPy spec and ``torch.optim.RMSprop``.
* ``models``: ``RMSprop.step`` over an MLP's and a 148-tensor transformer's tensors, against
  the same-traffic kernel over one flat buffer of the same total, and torch.
* ``latency``: one 1024-element tensor through each API; the cost of ``skip_nonfinite``.
* ``simd``: each SIMD target this CPU supports, in cache, one thread.
* ``loop``: the default thread setting against one thread in training-loop conditions
  (back to back, a NumPy matmul, an idle gap or a busy machine between steps); many small
  tensors and the transformer against one flat buffer; one 16M tensor against torch's fused
  Adagrad.
* ``torch``: the torch drop-in optimizer against ``torch.optim.RMSprop`` (needs torch).
* ``rows``: lazy row steps on an embedding table against the dense step, NumPy and a
  same-traffic row kernel.
* ``clip``: gradient scaling and clipping by global norm fused into the step, against the
  plain step, NumPy clipping and torch's clip_grad_norm_ with torch.optim.RMSprop.
* ``lowp``: bfloat16 params, state and param copies against the float32 step and each
  family's own same-traffic kernel, on one 16M tensor and the transformer (needs ml_dtypes).
* ``distributed`` (only when asked for): the sharded optimizer on 1, 2 and 4 MPI ranks
  (needs mpi4py and mpich).

Method: every case builds its buffers once and times its contenders on them in one process,
interleaved, with timeit's autorange choosing the calls per batch; times are medians and every
ratio comes from the same run (see :mod:`rmsprop_c._bench_timing`). Definitions of the cases
are shared with the asv suite (:mod:`rmsprop_c._bench_defs`). Sizes default to powers of 4 from
1K elements to 4x the last-level cache in bytes of one buffer (at most 64M elements).
"""

import argparse
import gc
import importlib
import json
import os
import platform
import sys
import time

import numpy as np

from rmsprop_c import _cli, _kernels
from rmsprop_c._bench_defs import DTYPES, KIB, LOOP_SIZES, MIB, MODELS, SIMD_SIZE, VARIANTS
from rmsprop_c._bench_loop import SCENARIOS, run_loop, threading_policy
from rmsprop_c._bench_peers import import_torch, set_torch_threads
from rmsprop_c._bench_report import (format_policy, plot, print_latency, print_loop, print_models, print_rows,
                                     print_simd, print_skip_nonfinite, print_sweep)
from rmsprop_c._bench_sections import (latency_case, model_case, simd_case, skip_nonfinite_case,
                                       sweep_case)

__all__ = ["main", "build_parser", "run", "SECTIONS"]

SECTIONS = ("sweep", "models", "latency", "simd", "loop", "torch", "rows", "clip", "lowp",
            "distributed")
# Sections run when --sections is not given: the distributed one starts MPI jobs.
DEFAULT_SECTIONS = tuple(name for name in SECTIONS if name != "distributed")


# ---------------------------------------------------------------------------------------
# Machine facts


def last_level_cache_bytes():
    """Size of the largest cache of cpu0 (sysfs, else sysconf, else 32 MiB)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = 0
    try:
        for entry in os.listdir(base):
            if entry.startswith("index"):
                with open(os.path.join(base, entry, "size")) as handle:
                    best = max(best, _cli.size(handle.read().strip()))
    except (OSError, argparse.ArgumentTypeError):
        pass
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        if best:
            break
        try:
            best = max(best, os.sysconf(name))
        except (ValueError, OSError):
            continue
    return best or 32 * MIB


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


MAX_DEFAULT_SIZE = 64 * MIB      # a VM may report a huge LLC: keep the sweep's buffers sane


def default_sizes(dtype, llc):
    """Powers of 4 from 1K elements up to 4x the LLC in bytes of one buffer (at most 64M)."""
    largest = min(4 * llc // np.dtype(dtype).itemsize, MAX_DEFAULT_SIZE)
    sizes = []
    size = KIB
    while size <= largest:
        sizes.append(size)
        size *= 4
    if sizes[-1] != largest:
        sizes.append(largest)
    return sizes


# ---------------------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m rmsprop_c bench",
        description="Speed of rmsprop_c against its same-traffic (memory) kernel, NumPy and "
                    "torch, and in training-loop conditions: medians of interleaved repeats, "
                    "in one process.")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (float32 plain at 1K, 64K, 1M; 3 repeats; fewer "
                             "loop steps)")
    parser.add_argument("--sections", type=_cli.choice_list(SECTIONS), metavar="LIST",
                        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all "
                             "but distributed)")
    parser.add_argument("--sizes", type=_cli.size_list, metavar="LIST",
                        help="sweep sizes: comma-separated element counts with K/M suffixes, "
                             "e.g. 1K,64K,1M (default: powers of 4 from 1K to 4x the LLC in "
                             "bytes of one buffer)")
    parser.add_argument("--threads", type=_cli.int_list, metavar="LIST",
                        help="comma-separated thread counts, e.g. 1,2 (default: 1..N)")
    parser.add_argument("--repeats", type=_cli.positive_int, metavar="N",
                        help="interleaved repeats per case (default 5; --quick 3)")
    parser.add_argument("--min-time", type=_cli.positive_float, metavar="SECONDS",
                        help="length of a timed batch (default 0.02; --quick 0.002)")
    parser.add_argument("--variants", type=_cli.choice_list(VARIANTS), metavar="LIST",
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--dtypes", type=_cli.choice_list(DTYPES), metavar="LIST",
                        help="float32, float64 or both")
    parser.add_argument("--loop-steps", type=_cli.positive_int, metavar="N",
                        help="timed steps per contender and loop scenario (default 100; "
                             "--quick 12)")
    parser.add_argument("--busy-processes", type=_cli.positive_int, metavar="N", default=1,
                        help="processes spinning during the loop's busy scenario (default 1)")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with torch")
    parser.add_argument("--reference-max-size", type=_cli.size, metavar="SIZE",
                        help="largest size the (slow) NumPy spec runs at (default: all; "
                             "--quick: 4M)")
    parser.add_argument("--json", type=_cli.output_file, metavar="FILE",
                        help="write every number to FILE")
    parser.add_argument("--plot", type=_cli.output_file, metavar="FILE.png",
                        help="draw throughput against size with the same-traffic kernel "
                             "(needs matplotlib and the sweep section)")
    return parser


def resolve_settings(args, parser):
    max_threads = _kernels.max_threads()
    quick = args.quick
    dtypes = args.dtypes or (["float32"] if quick else list(DTYPES))
    llc = last_level_cache_bytes()
    if args.sizes:
        sizes = {dtype: list(args.sizes) for dtype in dtypes}
    elif quick:
        sizes = {dtype: [KIB, 64 * KIB, MIB] for dtype in dtypes}
    else:
        sizes = {dtype: default_sizes(DTYPES[dtype], llc) for dtype in dtypes}
    settings = {
        "quick": quick,
        "max_threads": max_threads,
        "llc": llc,
        "threads": args.threads or list(range(1, max_threads + 1)),
        "repeats": args.repeats or (3 if quick else 5),
        "min_time": args.min_time or (0.002 if quick else 0.02),
        # The NumPy spec takes ~0.5 s per 16M step: quick runs skip it on big buffers.
        "reference_max_size": args.reference_max_size or (4 * MIB if quick else 1 << 62),
        "torch_foreach": not quick,
        "variants": args.variants or (["plain"] if quick else list(VARIANTS)),
        "dtypes": dtypes,
        "sizes": sizes,
        "sections": args.sections or list(DEFAULT_SECTIONS),
        "model_variants": ["plain"] if quick else (args.variants or list(VARIANTS)),
        "simd_cases": ([("plain", "float32", SIMD_SIZE)] if quick else
                       [("plain", "float32", SIMD_SIZE), ("centered", "float32", SIMD_SIZE),
                        ("plain", "float64", SIMD_SIZE)]),
        "loop_sizes": list(LOOP_SIZES),
        "loop_scenarios": list(SCENARIOS),
        "loop_steps": args.loop_steps or (12 if quick else 100),
        "busy_processes": args.busy_processes,
    }
    if args.plot and "sweep" not in settings["sections"]:
        parser.error("argument --plot: draws the sweep section, which --sections leaves out")
    return settings


def torch_section(quick, torch, no_torch):
    """What rmsprop_c._bench_torch.run returns, or why the section was skipped."""
    if torch is None:
        return {"skipped": "--no-torch" if no_torch else "torch is not installed"}
    try:
        module = importlib.import_module("rmsprop_c._bench_torch")
    except ModuleNotFoundError as error:
        if error.name != "rmsprop_c._bench_torch":
            raise
        return {"skipped": "this installation has no torch drop-in benchmark"}
    return module.run(quick)


def print_torch(result):
    if result.get("skipped"):
        print(f"\ntorch drop-in: skipped ({result['skipped']})")
        return
    module = sys.modules.get("rmsprop_c._bench_torch")
    if module is not None and hasattr(module, "format_results"):
        print()
        print(module.format_results(result))
        return
    rows = result.get("rows") or []
    title = result.get("title", "torch drop-in optimizer")
    if all(isinstance(row, dict) for row in rows):
        print_rows(title, rows)
    else:
        print(f"\n{title}", *rows, sep="\n")
    for key, value in result.items():
        if key not in ("rows", "title") and not isinstance(value, (dict, list)):
            print(f"{key}: {value}")


def run(settings, torch, no_torch=False):
    """Every selected section; returns the results dict (what --json writes)."""
    rng = np.random.default_rng(0)
    results = {
        "machine": {
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "llc_bytes": settings["llc"],
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
            "load_average_1min_at_start": load_average(),
        },
        "build": _kernels.build_info(),
        "simd_chosen": _kernels.get_simd_target(),
        "threading_policy": threading_policy(),
        "settings": dict(settings),
    }
    sections = settings["sections"]
    if "sweep" in sections:
        results["sweep"] = []
        for dtype in settings["dtypes"]:
            for variant in settings["variants"]:
                for size in settings["sizes"][dtype]:
                    results["sweep"].append(sweep_case(variant, dtype, size, settings, torch, rng))
                    gc.collect()
        print_sweep(results["sweep"])
    if "models" in sections:
        results["models"] = [model_case(model, variant, settings, torch, rng)
                             for model in MODELS for variant in settings["model_variants"]]
        print_models(results["models"])
    if "latency" in sections:
        results["latency"] = latency_case(settings, torch, rng)
        print_latency(results["latency"])
        results["skip_nonfinite"] = skip_nonfinite_case(
            settings, rng, MIB if settings["quick"] else 16 * MIB)
        print_skip_nonfinite(results["skip_nonfinite"])
    if "simd" in sections:
        results["simd"] = simd_case(settings, rng, settings["simd_cases"])
        print_simd(results["simd"])
    if "loop" in sections:
        gc.collect()
        results["loop"] = run_loop(settings, torch, rng)
        print_loop(results["loop"])
    if "torch" in sections:
        gc.collect()
        results["torch"] = torch_section(settings["quick"], torch, no_torch)
        print_torch(results["torch"])
    if "rows" in sections:
        from rmsprop_c import _bench_rows
        gc.collect()
        results["rows"] = _bench_rows.run(settings["quick"])
        _bench_rows.print_rows(results["rows"])
    if "clip" in sections:
        from rmsprop_c import _bench_clip
        gc.collect()
        results["clip"] = _bench_clip.run(settings["quick"])
        print()
        print(_bench_clip.format_results(results["clip"]))
    if "lowp" in sections:
        from rmsprop_c import _bench_lowp
        gc.collect()
        results["lowp"] = _bench_lowp.run(settings["quick"])
        print()
        print(_bench_lowp.format_results(results["lowp"]))
    if "distributed" in sections:
        from rmsprop_c import _bench_distributed
        results["distributed"] = _bench_distributed.run(settings["quick"])
        print(_bench_distributed._table(results["distributed"]))
    return results


def _header(settings, torch):
    text = (f"rmsprop_c bench: {cpu_model()}, {os.cpu_count()} CPUs, LLC "
            f"{settings['llc'] // MIB} MiB, SIMD {_kernels.get_simd_target()}, threads "
            f"{settings['threads']}, {settings['repeats']} interleaved repeats, batches of "
            f">= {settings['min_time'] * 1e3:g} ms (timeit autorange), medians; torch "
            f"{torch.__version__ if torch is not None else 'not installed or not used'}")
    policy = threading_policy()
    if policy is not None:
        text += "\n" + format_policy(policy)
    load = load_average()
    if load is not None and load > 0.5:
        text += (f"\nnote: 1-minute load average {load:.2f} before starting: other processes "
                 "compete for the cores, absolute times are noisy (ratios less so)")
    return text


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)            # e.g. an enum in the engine's policy: never lose a run's numbers


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and not _has_matplotlib():
        print("bench: --plot needs matplotlib, which is not installed: pip install matplotlib",
              file=sys.stderr)
        return 2
    settings = resolve_settings(args, parser)
    torch = None if args.no_torch else import_torch()
    settings["torch_threads"] = torch.get_num_threads() if torch is not None else None
    started = time.perf_counter()
    print(_header(settings, torch), flush=True)
    try:
        results = run(settings, torch, args.no_torch)
    finally:
        if torch is not None:
            set_torch_threads(torch, settings["torch_threads"])
    results["elapsed_seconds"] = time.perf_counter() - started
    print(f"\n{results['elapsed_seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, allow_nan=False, default=_json_default)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
