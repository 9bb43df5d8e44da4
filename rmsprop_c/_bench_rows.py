"""The ``rows`` bench section: lazy row steps on an embedding table.

A 1M x 64 float32 table (``quick``: 100K x 64) with its square_avg; batches list 1% and 10%
of the rows, 10% of the listings repeating a row listed earlier in the batch. For each
batch size and thread count, the median time of one step of:

* ``rmsprop_step_rows`` (duplicates summed, the default),
* ``same_traffic_step_rows``: the same rows, index grouping and duplicate sums with
  trivial arithmetic (``v += g; p += g``), the memory ceiling of a row step,
* ``rmsprop_step`` on the whole table (what a dense optimizer pays every batch),
* NumPy gather / step / scatter (``rmsprop_c.reference.rmsprop_step_rows``, same bits).

Then the optimizer: ``RMSprop.step`` over the table and a dense MLP (64 -> 1024 -> 1024 -> 1,
about 1.1M parameters) with a ``RowGrad`` of a 1% batch for the table and dense grads for the
MLP, against the same step with a dense grad for the table, the MLP's step alone, and
``rmsprop_step_rows`` on the table alone.

Contenders run interleaved, one call each per round; each call takes the next of several
pre-drawn batches (one rotation for all contenders), so no call finds its rows in cache
because the call before it touched them, and each call follows a read of a buffer larger
than the per-core caches. Thread counts: 1, all, and None (chosen per call by the
threading policy).
Rows per second count the listings of a batch. Run ``python -m rmsprop_c._bench_rows
[--quick]`` for a table.
"""

import argparse
import itertools
import json
import statistics
import time

import numpy as np

__all__ = ["run", "main"]

WIDTH = 64
FRACTIONS = (0.01, 0.1)
DUPLICATE_FRACTION = 0.1
BATCHES = 8
OPTIONS = dict(lr=0.01, alpha=0.99, eps=1e-8)
MLP_SHAPES = ((1024, 64), (1024,), (1024, 1024), (1024,), (1, 1024), (1,))
MODEL_FRACTION = 0.01


def make_batch(rng, n_rows, listed, width):
    """`listed` indices into n_rows, DUPLICATE_FRACTION of them repeats, and grad rows."""
    repeats = int(listed * DUPLICATE_FRACTION)
    distinct = rng.choice(n_rows, listed - repeats, replace=False)
    indices = np.concatenate([distinct, rng.choice(distinct, repeats)])
    rng.shuffle(indices)
    grad_rows = rng.standard_normal((listed, width), dtype=np.float32)
    return indices.astype(np.int64), grad_rows


class _Scrub:
    """Reads a buffer larger than the per-core caches, so that every timed call starts from
    the same cache state whatever ran before it."""

    def __init__(self, size_bytes=32 << 20):
        self.buffer = np.ones(size_bytes // 8)

    def __call__(self):
        self.buffer.sum()


def _interleaved_medians(contenders, rounds, scrub):
    """Median seconds per contender; one call of each per round, in turn, each after a
    scrub of the caches."""
    times = {name: [] for name in contenders}
    for name, call in contenders.items():           # warm-up: first touch, thread pools
        call()
    for _ in range(rounds):
        for name, call in contenders.items():
            scrub()
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(samples) for name, samples in times.items()}


def _cycling(function, batches, rotation):
    """A call that steps with the next batch of a rotation shared by the contenders, so no
    call finds the rows of the call before it in cache."""
    def call():
        indices, grad_rows = batches[next(rotation) % len(batches)]
        function(indices, grad_rows)
    return call


def _case(param, square_avg, dense_grad, batches, n_threads, rounds, numpy_rounds, scrub):
    from rmsprop_c import _kernels, reference

    def rows_step(indices, grad_rows):
        _kernels.rmsprop_step_rows(param, indices, grad_rows, square_avg, n_threads=n_threads,
                                   **OPTIONS)

    def traffic(indices, grad_rows):
        _kernels.same_traffic_step_rows(param, indices, grad_rows, square_avg,
                                        n_threads=n_threads)

    def numpy_step(indices, grad_rows):
        reference.rmsprop_step_rows(param, indices, grad_rows, square_avg, **OPTIONS)

    def dense():
        _kernels.rmsprop_step(param, dense_grad, square_avg, n_threads=n_threads, **OPTIONS)

    rotation = itertools.count()
    seconds = _interleaved_medians({
        "rmsprop_step_rows": _cycling(rows_step, batches, rotation),
        "same_traffic_step_rows": _cycling(traffic, batches, rotation),
        "dense rmsprop_step": dense,
    }, rounds, scrub)
    seconds.update(_interleaved_medians(
        {"numpy gather/step/scatter": _cycling(numpy_step, batches, rotation)},
        numpy_rounds, scrub))
    return seconds


def _model_case(param, square_avg, dense_grad, batches, n_threads, rounds, scrub):
    """RMSprop.step of the table (rows or dense) plus an MLP, the MLP alone, and the
    functional row step of the table alone: median seconds each."""
    import rmsprop_c as rc
    from rmsprop_c import _kernels

    rng = np.random.default_rng(1)
    mlp = [rng.standard_normal(shape, dtype=np.float32) * 0.01 for shape in MLP_SHAPES]
    mlp_grads = [rng.standard_normal(shape, dtype=np.float32) for shape in MLP_SHAPES]
    mixed = rc.RMSprop([param] + mlp, n_threads=n_threads, **OPTIONS)
    dense = rc.RMSprop([param] + mlp, n_threads=n_threads, **OPTIONS)
    mlp_only = rc.RMSprop(mlp, n_threads=n_threads, **OPTIONS)

    def rows_and_mlp(indices, grad_rows):
        mixed.step([rc.RowGrad(indices, grad_rows)] + mlp_grads)

    def table_rows(indices, grad_rows):
        _kernels.rmsprop_step_rows(param, indices, grad_rows, square_avg, n_threads=n_threads,
                                   **OPTIONS)

    rotation = itertools.count()
    return _interleaved_medians({
        "RMSprop.step table rows + MLP": _cycling(rows_and_mlp, batches, rotation),
        "RMSprop.step table dense + MLP": lambda: dense.step([dense_grad] + mlp_grads),
        "RMSprop.step MLP alone": lambda: mlp_only.step(mlp_grads),
        "rmsprop_step_rows table alone": _cycling(table_rows, batches, rotation),
    }, rounds, scrub)


def run(quick=False):
    """Measure the ``rows`` section; returns a dict (no pass/fail judgements)."""
    from rmsprop_c import _kernels
    from rmsprop_c.bench import cpu_model, load_average

    n_rows = 100_000 if quick else 1_000_000
    rounds, numpy_rounds = (5, 3) if quick else (9, 3)
    rng = np.random.default_rng(0)
    param = rng.standard_normal((n_rows, WIDTH), dtype=np.float32)
    square_avg = np.zeros_like(param)
    dense_grad = rng.standard_normal((n_rows, WIDTH), dtype=np.float32)
    thread_counts = [1] + ([_kernels.max_threads()] if _kernels.max_threads() > 1 else []) \
        + [None]
    scrub = _Scrub()
    cases = []
    for fraction in FRACTIONS:
        listed = int(n_rows * fraction)
        batches = [make_batch(rng, n_rows, listed, WIDTH) for _ in range(BATCHES)]
        distinct = statistics.mean(len(np.unique(indices)) for indices, _ in batches)
        for n_threads in thread_counts:
            seconds = _case(param, square_avg, dense_grad, batches, n_threads, rounds,
                            numpy_rounds, scrub)
            rows_time = seconds["rmsprop_step_rows"]
            cases.append({
                "touched_fraction": fraction,
                "listed_rows": listed,
                "distinct_rows": distinct,
                "n_threads": n_threads,
                "seconds": seconds,
                "rows_per_second": {name: listed / value for name, value in seconds.items()
                                    if name != "dense rmsprop_step"},
                "dense_time_over_row_time": seconds["dense rmsprop_step"] / rows_time,
                "numpy_time_over_row_time": seconds["numpy gather/step/scatter"] / rows_time,
                "row_rate_over_same_traffic_rate":
                    seconds["same_traffic_step_rows"] / rows_time,
            })
    models = []
    listed = int(n_rows * MODEL_FRACTION)
    batches = [make_batch(rng, n_rows, listed, WIDTH) for _ in range(BATCHES)]
    for n_threads in thread_counts:
        seconds = _model_case(param, square_avg, dense_grad, batches, n_threads, rounds, scrub)
        mixed = seconds["RMSprop.step table rows + MLP"]
        models.append({
            "touched_fraction": MODEL_FRACTION, "listed_rows": listed,
            "mlp_parameters": sum(int(np.prod(shape)) for shape in MLP_SHAPES),
            "n_threads": n_threads, "seconds": seconds,
            "dense_step_over_mixed_step": seconds["RMSprop.step table dense + MLP"] / mixed,
            "rows_part_over_functional_rows":
                (mixed - seconds["RMSprop.step MLP alone"])
                / seconds["rmsprop_step_rows table alone"],
        })
    return {
        "table": {"rows": n_rows, "width": WIDTH, "dtype": "float32"},
        "duplicate_fraction": DUPLICATE_FRACTION,
        "duplicates": "sum",
        "statistic": f"median of {rounds} interleaved rounds ({numpy_rounds} for NumPy)",
        "simd": _kernels.get_simd_target(),
        "cpu": cpu_model(),
        "load_average": load_average(),
        "cases": cases,
        "optimizer": models,
    }


def print_rows(result):
    """The section as a table."""
    from rmsprop_c._bench_report import format_ratio, format_seconds, print_table

    table = result["table"]
    title = (f"Lazy rows: {table['rows']:,} x {table['width']} {table['dtype']} table, "
             f"{result['duplicate_fraction']:.0%} repeated listings summed "
             f"({result['statistic']}; load {result['load_average']})")
    rows = []
    for case in result["cases"]:
        seconds = case["seconds"]
        rows.append([
            f"{case['touched_fraction']:.0%}", f"{case['listed_rows']:,}",
            "auto" if case["n_threads"] is None else case["n_threads"],
            format_seconds(seconds["rmsprop_step_rows"]),
            f"{case['rows_per_second']['rmsprop_step_rows'] / 1e6:.2f} M",
            format_seconds(seconds["same_traffic_step_rows"]),
            format_ratio(case["row_rate_over_same_traffic_rate"]),
            format_seconds(seconds["dense rmsprop_step"]),
            format_ratio(case["dense_time_over_row_time"]),
            format_seconds(seconds["numpy gather/step/scatter"]),
            format_ratio(case["numpy_time_over_row_time"]),
        ])
    print_table(title, ["rows", "listed", "threads", "row step", "rows/s",
                        "same traffic", "rate vs it", "dense step", "dense / row",
                        "NumPy", "NumPy / row"], rows)
    rows = []
    for case in result.get("optimizer", []):
        seconds = case["seconds"]
        rows.append([
            "auto" if case["n_threads"] is None else case["n_threads"],
            format_seconds(seconds["RMSprop.step table rows + MLP"]),
            format_seconds(seconds["RMSprop.step table dense + MLP"]),
            format_ratio(case["dense_step_over_mixed_step"]),
            format_seconds(seconds["RMSprop.step MLP alone"]),
            format_seconds(seconds["rmsprop_step_rows table alone"]),
            format_ratio(case["rows_part_over_functional_rows"]),
        ])
    if rows:
        case = result["optimizer"][0]
        print_table(f"RMSprop.step: the table ({case['touched_fraction']:.0%} of rows as a "
                    f"RowGrad) + an MLP of {case['mlp_parameters']:,} parameters",
                    ["threads", "rows + MLP", "dense + MLP", "dense / rows", "MLP alone",
                     "row step alone", "(rows + MLP - MLP) / row step"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 100K-row table")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_rows(result)


if __name__ == "__main__":
    main()
