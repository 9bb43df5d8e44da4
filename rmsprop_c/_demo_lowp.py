"""``python -m rmsprop_c demo --low-precision``: the demo MLP trained with bfloat16.

Trains the demo's classifier (same data, model, seeds, cosine schedule) five ways and
compares final test accuracy with float32:

* ``float32``: the yardstick;
* ``bfloat16 state``: float32 params, square_avg in bfloat16 (``state_dtype="bfloat16"``);
* ``bfloat16 params, nearest`` / ``stochastic``: the params themselves are bfloat16, and so
  are the grads and the state; the forward pass widens the params to float32;
* ``bfloat16 copy``: float32 master params; the forward pass uses a bfloat16 copy that the
  step refreshes in the same pass (``param_copies``).

Nearest rounding loses every update smaller than half a bfloat16 spacing of its weight (about
0.2% of it): once the learning rate decays, most weights stop moving. Stochastic rounding
keeps those updates in expectation. ``--plot`` draws the loss and accuracy curves.
"""

import argparse
import sys

import numpy as np
from threadpoolctl import threadpool_limits

import rmsprop_c
from rmsprop_c import _cli
from rmsprop_c._demo_data import DATASETS, MLP, MissingDependency
from rmsprop_c._demo_train import (DEFAULT_EPOCHS, DEFAULT_HIDDEN, learning_rate_for,
                                   minibatches, set_cosine_lr)
from rmsprop_c._low_precision import BFLOAT16

__all__ = ["MODES", "train", "main"]

# name: (param storage, state_dtype, rounding, write a bfloat16 copy)
MODES = {
    "float32": ("float32", None, "nearest", False),
    "bfloat16 state": ("float32", "bfloat16", "nearest", False),
    "bfloat16 params, nearest": ("bfloat16", None, "nearest", False),
    "bfloat16 params, stochastic": ("bfloat16", None, "stochastic", False),
    "bfloat16 copy": ("float32", None, "nearest", True),
}


def train(dataset, mode, *, lr, epochs=DEFAULT_EPOCHS, batch_size=64, seed=0,
          hidden=DEFAULT_HIDDEN):
    """Train the demo MLP in one of :data:`MODES`; returns one dict of metrics per epoch.

    Metrics: train loss, test accuracy, and ``frozen``: of the weights with a nonzero
    gradient, the fraction a step left unchanged (mean over the epoch's steps).
    """
    storage, state_dtype, rounding, with_copy = MODES[mode]
    rng = np.random.default_rng(seed)
    model = MLP((dataset.n_features, *hidden, dataset.n_classes), rng)
    compute = model.params                         # float32: what the forward pass reads
    if storage == "bfloat16":
        stored = [param.astype(BFLOAT16) for param in compute]
    else:
        stored = [param.copy() for param in compute]
    copies = [param.astype(BFLOAT16) for param in stored] if with_copy else None
    visible = copies if with_copy else stored      # the weights the model runs with
    optimizer = rmsprop_c.RMSprop(stored, lr=lr, state_dtype=state_dtype, rounding=rounding,
                                  seed=seed, param_copies=copies)
    n_train = len(dataset.y_train)
    history = []
    with threadpool_limits(limits=1, user_api="blas"):
        for epoch in range(1, epochs + 1):
            set_cosine_lr(optimizer, lr, epoch, epochs)
            loss_sum, frozen_sum, n_steps = 0.0, 0.0, 0
            for batch in minibatches(rng, n_train, batch_size):
                for wide, weights in zip(compute, visible):
                    wide[...] = weights.astype(np.float32)
                loss, _, grads = model.loss_and_grads(dataset.x_train[batch],
                                                      dataset.y_train[batch])
                grads = [grad.astype(param.dtype) for grad, param in zip(grads, stored)]
                before = [weights.copy() for weights in visible]
                optimizer.step(grads)
                pushed = [grad != 0 for grad in grads]
                frozen_sum += sum(int(((b == w) & m).sum()) for b, w, m in
                                  zip(before, visible, pushed)) / max(1, sum(
                                      int(m.sum()) for m in pushed))
                loss_sum += loss * len(batch)
                n_steps += 1
            for wide, weights in zip(compute, visible):
                wide[...] = weights.astype(np.float32)
            _, accuracy = model.evaluate(dataset.x_test, dataset.y_test)
            history.append({"epoch": epoch, "train_loss": loss_sum / n_train,
                            "test_accuracy": accuracy, "frozen": frozen_sum / n_steps})
    return history


def plot(curves, path, title):
    """Train loss and test accuracy per epoch, one line per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, history in curves.items():
        epochs = [row["epoch"] for row in history]
        loss_axis.plot(epochs, [row["train_loss"] for row in history], label=mode)
        accuracy_axis.plot(epochs, [100 * row["test_accuracy"] for row in history], label=mode)
    loss_axis.set(xlabel="epoch", ylabel="train loss", yscale="log", title="train loss")
    accuracy_axis.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    loss_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m rmsprop_c demo --low-precision",
        description="Train the demo MLP with bfloat16 params, state or param copies and "
                    "compare test accuracy with float32.")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="spirals")
    parser.add_argument("--lr", type=_cli.positive_float, default=None,
                        help="peak learning rate (default: the demo's, 0.01)")
    parser.add_argument("--epochs", type=_cli.positive_int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seeds", type=_cli.positive_int, default=3,
                        help="seeds averaged per mode (default: 3)")
    parser.add_argument("--plot", type=_cli.output_file, metavar="FILE.png", default=None,
                        help="draw loss and test accuracy per epoch for float32 and the "
                             "bfloat16 params (seed 0; needs matplotlib)")
    return parser


def main(argv=None):
    """Print the accuracy table (and draw the plot); returns the exit status."""
    args = build_parser().parse_args(argv)
    if BFLOAT16 is None:
        print("error: the low-precision demo needs ml_dtypes (pip install ml_dtypes)",
              file=sys.stderr)
        return 1
    try:
        dataset = DATASETS[args.dataset]()
    except MissingDependency as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    lr = learning_rate_for("torch", args.lr)[0]
    print(f"task: {dataset.describe()}; {args.epochs} epochs, lr {lr:g} (cosine), "
          f"seeds 0..{args.seeds - 1}")
    print(f"{'mode':<30} {'test accuracy':>14} {'vs float32':>11} {'frozen, last epoch':>19}")
    results, curves = {}, {}
    for mode in MODES:
        runs = [train(dataset, mode, lr=lr, epochs=args.epochs, seed=seed)
                for seed in range(args.seeds)]
        curves[mode] = runs[0]
        results[mode] = (float(np.mean([run[-1]["test_accuracy"] for run in runs])),
                         float(np.mean([run[-1]["frozen"] for run in runs])))
        accuracy, frozen = results[mode]
        delta = 100 * (accuracy - results["float32"][0])
        print(f"{mode:<30} {100 * accuracy:>13.2f}% {delta:>+10.2f}pt {100 * frozen:>18.1f}%",
              flush=True)
    if args.plot:
        shown = ("float32", "bfloat16 params, nearest", "bfloat16 params, stochastic")
        plot({mode: curves[mode] for mode in shown}, args.plot,
             f"{dataset.describe()}: bfloat16 params, lr {lr:g} with cosine decay")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
