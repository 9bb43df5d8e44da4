"""``python -m rmsprop_c demo``: train NumPy models with rmsprop_c and check them against the spec.

The default run trains a NumPy MLP (forward and backward written in NumPy, minibatches, a
cosine learning-rate decay through ``param_groups``) on an embedded, deterministic task: five
interleaved spirals with a fixed train/test split. It prints the loss and accuracy of every
epoch, the final test accuracy and the time spent in the optimizer against the whole training
loop. It then repeats the very same run with the NumPy reference optimizer
(:class:`rmsprop_c.slow.RMSprop`), compares the final weights and optimizer state
byte for byte and prints the optimizer speedup; finally it trains the same model once with every
flavor (``--flavors``), and ``--plot`` draws their loss curves.

Determinism: ``--seed`` fixes the weight init and the minibatch order; the data are fixed. The
kernels give the same bits for every thread count, but a multi-threaded BLAS matmul does not
(it splits its sums by thread), so training pins BLAS to one thread with threadpoolctl. The
same seed then gives the same metrics and weights whatever ``--threads`` is, on a given machine
and NumPy build.

``--task regression`` fits a linear model the way the R package gradDescent's ``RMSPROP`` does,
with one accumulator per coefficient instead of gradDescent's single shared one (a bug we do not
copy): see :func:`train_regression`.
"""

import argparse
import math
import sys
import time

import numpy as np

from rmsprop_c import _cli
from rmsprop_c._demo_data import (DATASETS, MLP, REGRESSION_NOISE, REGRESSION_TRUE_COEFFICIENTS,
                                  MissingDependency, load_digits_dataset, load_spirals_dataset,
                                  make_regression, make_spirals)
from rmsprop_c._demo_train import (DEFAULT_EPOCHS, DEFAULT_HIDDEN, DEFAULT_REGRESSION_EPOCHS,
                                   DEMO_LEARNING_RATES, GRADDESCENT_HYPERPARAMETERS,
                                   compare_runs, learning_rate_for, train_classifier,
                                   train_regression)
from rmsprop_c.flavors import FLAVORS
from rmsprop_c.slow import RMSprop as ReferenceRMSprop

__all__ = [
    "main", "build_parser", "make_spirals", "load_spirals_dataset", "load_digits_dataset",
    "MLP", "train_classifier", "compare_runs", "learning_rate_for", "plot_loss_curves",
    "make_regression", "train_regression", "DEMO_LEARNING_RATES", "MissingDependency",
    "REGRESSION_NOISE", "REGRESSION_TRUE_COEFFICIENTS", "GRADDESCENT_HYPERPARAMETERS",
    "DEFAULT_EPOCHS", "DEFAULT_HIDDEN", "DEFAULT_REGRESSION_EPOCHS", "DATASETS",
    "EXIT_MISSING_DEPENDENCY", "EXIT_NOT_BIT_IDENTICAL",
]

EXIT_MISSING_DEPENDENCY = 1
EXIT_NOT_BIT_IDENTICAL = 3


def _format_epoch(metrics, epochs):
    width = len(str(epochs))
    return (f"epoch {metrics['epoch']:>{width}}/{epochs}  train loss "
            f"{metrics['train_loss']:.4f}  acc {100 * metrics['train_accuracy']:5.1f}%  |  "
            f"test loss {metrics['test_loss']:.4f}  acc {100 * metrics['test_accuracy']:5.1f}%")


def _threads_text(n_threads, n_parameters):
    from rmsprop_c._config import config

    openmp = config()["openmp"]
    if n_threads is not None:
        return str(n_threads)
    return (f"up to {openmp['max_threads']}, serial or parallel per step as measured "
            "(n_threads=None)")


def _time_text(run):
    share = 100 * run.optimizer_seconds / run.loop_seconds if run.loop_seconds else 0.0
    return (f"{run.optimizer_seconds:.3f} s in the optimizer of a {run.loop_seconds:.2f} s "
            f"training loop ({share:.1f}%), {run.steps:,} steps, "
            f"{1e6 * run.optimizer_seconds / run.steps:.1f} us per step")


def _speedup_text(fast, reference):
    if fast.optimizer_seconds <= 0:
        return "optimizer speedup: (too fast to time)"
    return (f"optimizer speedup: {reference.optimizer_seconds / fast.optimizer_seconds:.1f}x "
            "(reference optimizer time / rmsprop_c optimizer time)")


def run_classification(args):
    """The classifier demo: the main run, the reference run, then every flavor."""
    dataset = DATASETS[args.dataset]()
    lr, lr_source = learning_rate_for(args.flavor, args.lr)
    hidden = tuple(args.hidden)
    sizes = (dataset.n_features, *hidden, dataset.n_classes)
    n_parameters = MLP(sizes, np.random.default_rng(0)).n_parameters
    print(f"task:      {dataset.describe()}")
    print(f"model:     MLP {'-'.join(map(str, sizes))}, ReLU, softmax cross-entropy, "
          f"{n_parameters:,} float32 parameters")
    print(f"training:  {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}, "
          "cosine lr decay; BLAS on 1 thread (threaded matmuls round per thread count)")
    print(f"optimizer: rmsprop_c.RMSprop(flavor={args.flavor!r}, lr={lr:g}) [{lr_source}]")
    print(f"threads:   {_threads_text(args.threads, n_parameters)}")
    print()
    options = dict(flavor=args.flavor, lr=lr, epochs=args.epochs, batch_size=args.batch_size,
                   seed=args.seed, hidden=hidden, n_threads=args.threads)
    fast = train_classifier(
        dataset, desc="rmsprop_c", **options,
        on_epoch=lambda metrics, write: write(_format_epoch(metrics, args.epochs)))
    final = fast.history[-1]
    n_test = len(dataset.y_test)
    print(f"final test accuracy: {100 * final['test_accuracy']:.1f}% "
          f"({round(final['test_accuracy'] * n_test)}/{n_test})")
    print(f"final weights sha256: {fast.weights_digest()}")
    print(f"time: {_time_text(fast)}")
    print()
    print("the same run with the NumPy reference optimizer "
          "(rmsprop_c.slow.RMSprop):")
    reference = train_classifier(dataset, desc="reference", optimizer_class=ReferenceRMSprop,
                                 **options)
    identical, detail = compare_runs(fast, reference)
    print(f"time: {_time_text(reference)}")
    print(f"final weights identical bit for bit: {'yes' if identical else 'NO'} ({detail})")
    print(_speedup_text(fast, reference))

    histories = {args.flavor: fast.history}
    flavors = _flavors_to_compare(args.flavors)
    if flavors:
        print()
        print(f"{'every flavor' if args.flavors == 'all' else 'flavors'}: same data, model, "
              f"seed and {args.epochs} epochs; each flavor's own alpha, eps, momentum...")
        print(f"  {'flavor':<8} {'lr':>6}  {'train loss':>10}  {'test acc':>8}  lr from")
        for flavor in flavors:
            flavor_lr, source = learning_rate_for(flavor, args.lr)
            run = fast if flavor == args.flavor else train_classifier(
                dataset, desc=flavor, **{**options, "flavor": flavor, "lr": flavor_lr})
            histories[flavor] = run.history
            print(f"  {flavor:<8} {flavor_lr:>6g}  {run.history[-1]['train_loss']:>10.4f}  "
                  f"{100 * run.history[-1]['test_accuracy']:>7.1f}%  {source}")
    if args.plot:
        plot_loss_curves(histories, args.plot,
                         title=f"{dataset.name}, MLP {'-'.join(map(str, sizes))}")
        print(f"loss curves of {len(histories)} flavor(s) written to {args.plot}")
    return 0 if identical else EXIT_NOT_BIT_IDENTICAL


def _flavors_to_compare(text):
    if text == "none":
        return []
    if text == "all":
        return list(FLAVORS)
    return [name.strip() for name in text.split(",") if name.strip()]


# ----------------------------------------------------------------------------- plotting
def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "--plot needs matplotlib, which is not installed. Install it with\n"
            "    pip install matplotlib\n"
            "(or pip install -e \".[bench]\"), or run the demo without --plot."
        ) from None


def plot_loss_curves(histories, path, title=""):
    """Draw the training loss per epoch of several flavors on one chart and save it as PNG.

    Parameters
    ----------
    histories : dict
        Flavor name -> list of per-epoch metrics (dicts with "epoch" and "train_loss").
    path : str or os.PathLike
        Where to write the PNG.
    title : str
        Appended to the chart title.

    Raises
    ------
    MissingDependency
        When matplotlib is not installed.
    """
    _require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    for flavor, history in histories.items():
        axes.plot([m["epoch"] for m in history], [m["train_loss"] for m in history],
                  marker="o", markersize=3, label=flavor)
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss (cross-entropy)")
    axes.set_title(f"rmsprop_c flavors: {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


def run_regression(args):
    """The gradDescent-style regression demo, checked against the reference optimizer."""
    design, targets = make_regression()
    true = np.asarray(REGRESSION_TRUE_COEFFICIENTS)
    least_squares = np.linalg.lstsq(design, targets, rcond=None)[0]
    print(f"task:      linear regression, {len(targets):,} rows, {len(true) - 1} standard "
          f"normal features + intercept, noise sd {REGRESSION_NOISE}")
    print("training:  as gradDescent's RMSPROP (R): one random row per step, decay 0.9, "
          "smoothing 1e-7")
    print("           inside the sqrt, alpha (learning rate) 0.1; but one accumulator per "
          "coefficient")
    print("           (gradDescent shares one scalar across all coefficients: a bug, not "
          "copied)")
    lr = GRADDESCENT_HYPERPARAMETERS["lr"] if args.lr is None else args.lr
    print(f"optimizer: rmsprop_c.RMSprop(lr={lr:g}, alpha=0.9, eps=1e-7, eps_in_sqrt=True); "
          f"{args.epochs} epochs x {len(targets):,} steps, seed {args.seed}")
    print()
    fast = train_regression(
        design, targets, epochs=args.epochs, seed=args.seed, lr=lr, n_threads=args.threads,
        desc="rmsprop_c",
        on_epoch=lambda metrics, write: write(
            f"epoch {metrics['epoch']:>{len(str(args.epochs))}}/{args.epochs}  train MSE "
            f"{metrics['train_loss']:.4f}"))
    fitted, averaged = fast.params[0], fast.averaged_params[0]
    print()
    print(f"  {'coefficient':<11} {'true':>7} {'fitted':>8} {'averaged':>9} "
          f"{'least squares':>14}")
    names = ["intercept"] + [f"x{index}" for index in range(1, len(true))]
    for row in zip(names, true, fitted, averaged, least_squares):
        print(f"  {row[0]:<11} {row[1]:>7.3f} {row[2]:>8.4f} {row[3]:>9.4f} {row[4]:>14.4f}")
    standard_error = REGRESSION_NOISE / math.sqrt(len(targets))
    print(f"largest error: last iterate {np.max(np.abs(fitted - true)):.4f}, mean of the last "
          f"epoch's iterates {np.max(np.abs(averaged - true)):.4f},")
    print(f"               least squares {np.max(np.abs(least_squares - true)):.4f} "
          f"(noise sd / sqrt(rows) = {standard_error:.4f})")
    print(f"the last iterate (what gradDescent returns) keeps moving by about lr = {lr:g} per "
          "step: the lr is constant")
    print(f"final weights sha256: {fast.weights_digest()}")
    print(f"time: {_time_text(fast)}")
    print()
    print("the same run with the NumPy reference optimizer "
          "(rmsprop_c.slow.RMSprop):")
    reference = train_regression(design, targets, epochs=args.epochs, seed=args.seed, lr=lr,
                                 optimizer_class=ReferenceRMSprop, desc="reference")
    identical, detail = compare_runs(fast, reference)
    print(f"time: {_time_text(reference)}")
    print(f"final weights identical bit for bit: {'yes' if identical else 'NO'} ({detail})")
    print(_speedup_text(fast, reference))
    return 0 if identical else EXIT_NOT_BIT_IDENTICAL


# ----------------------------------------------------------------------------- command line
def _flavor_list(text):
    if text in ("all", "none"):
        return text
    names = _flavors_to_compare(text)
    unknown = [name for name in names if name not in FLAVORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown flavor(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(FLAVORS)}, or 'all' / 'none'")
    return text


def build_parser():
    """The ``python -m rmsprop_c demo`` argument parser."""
    lr_notes = "; ".join(f"{name} {lr:g} ({reason})"
                         for name, (lr, reason) in DEMO_LEARNING_RATES.items())
    parser = argparse.ArgumentParser(
        prog="python -m rmsprop_c demo",
        description="Train NumPy models with rmsprop_c, check the result bit for bit against "
                    "the NumPy reference optimizer, and show the optimizer speedup.",
        epilog="Learning rates: every flavor trains with its own hyperparameters; the lr is "
               f"the flavor's default except: {lr_notes}. Same seed, same metrics, for any "
               "--threads (BLAS is pinned to one thread during training); "
               "`python -m rmsprop_c info` shows how steps use threads.",
    )
    parser.add_argument("--task", choices=("classify", "regression"), default="classify",
                        help="an MLP classifier (default), or linear regression trained like "
                             "gradDescent's RMSPROP")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="spirals",
                        help="classifier data: the embedded spirals (default) or "
                             "scikit-learn's digits (needs scikit-learn)")
    parser.add_argument("--flavor", choices=tuple(FLAVORS), default="torch",
                        help="RMSprop flavor of the main run (default: torch)")
    parser.add_argument("--lr", type=_cli.positive_float, default=None,
                        help="learning rate of every run (default: per flavor, see below; "
                             "regression: 0.1, gradDescent's alpha)")
    parser.add_argument("--epochs", type=_cli.positive_int, default=None,
                        help=f"passes over the training set (default: {DEFAULT_EPOCHS}; "
                             f"regression: {DEFAULT_REGRESSION_EPOCHS})")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=64,
                        help="examples per step (default: 64)")
    parser.add_argument("--hidden", type=_cli.positive_int, nargs="+", default=list(DEFAULT_HIDDEN),
                        metavar="SIZE", help="hidden layer sizes (default: 128 128)")
    parser.add_argument("--seed", type=_cli.integer, default=0,
                        help="seeds the weight init and the minibatch order (default: 0)")
    parser.add_argument("--threads", type=_cli.positive_int, default=None,
                        help="optimizer threads (default: OpenMP's setting)")
    parser.add_argument("--flavors", type=_flavor_list, default="all",
                        help="flavors trained after the main run, for the comparison table "
                             "and --plot: 'all' (default), 'none', or a comma-separated list")
    parser.add_argument("--plot", type=_cli.output_file, metavar="FILE.png", default=None,
                        help="draw the loss curves of the main and compared flavors "
                             "(needs matplotlib)")
    parser.add_argument("--low-precision", action="store_true",
                        help="train with bfloat16 params, state or param copies and compare "
                             "test accuracy with float32 (needs ml_dtypes); the other "
                             "options are then those of the low-precision demo")
    parser.add_argument("--distributed", action="store_true",
                        help="train data-parallel over MPI ranks with sharded optimizer state; "
                             "run under mpiexec -n N (needs mpi4py and mpich); the other "
                             "options are then those of the distributed demo")
    return parser


def main(argv=None):
    """Run the demo.

    Parameters
    ----------
    argv : list of str or None
        The arguments after ``demo`` (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 1 when an optional dependency is missing (the message says how to get
        it); 3 when the rmsprop_c and the reference runs do not end bit-identical.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--distributed" in argv:
        from rmsprop_c._demo_distributed import main as distributed_main
        return distributed_main([arg for arg in argv if arg != "--distributed"])
    if "--low-precision" in argv:
        from rmsprop_c._demo_lowp import main as low_precision_main
        return low_precision_main([arg for arg in argv if arg != "--low-precision"])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "regression" and args.plot:
        parser.error("--plot draws the classifier's loss curves; it does not apply to "
                     "--task regression")
    if args.epochs is None:
        args.epochs = DEFAULT_REGRESSION_EPOCHS if args.task == "regression" else DEFAULT_EPOCHS
    start = time.perf_counter()
    try:
        if args.plot:
            _require_matplotlib()  # fail before training, not after
        status = run_regression(args) if args.task == "regression" else run_classification(args)
    except MissingDependency as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    print(f"total time: {time.perf_counter() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
