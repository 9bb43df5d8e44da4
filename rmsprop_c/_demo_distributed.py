"""Data-parallel training of the demo model, under ``mpiexec -n N``.

``mpiexec -n 2 python -m rmsprop_c demo --distributed`` runs it.

Every rank builds the same MLP from the same seed and walks the same minibatch order; each
minibatch is split across the ranks (rank ``r`` takes examples ``r, r + n, r + 2n, ...``), each
rank backpropagates its part and writes the gradient, scaled by its share of the batch, into
the optimizer's flat grad buffer; :class:`rmsprop_c.distributed.ShardedRMSprop` sums the parts
(so the step sees the gradient of the whole minibatch's mean loss), steps its slice of the
state and gathers the params. Rank 0 then trains the same model in one process for comparison:
the accuracies agree closely but not bit for bit, because the matmuls of a split batch add in
another order.
"""

import argparse
import hashlib
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from rmsprop_c.demo import (DATASETS, DEFAULT_EPOCHS, DEFAULT_HIDDEN, MLP, MissingDependency,
                            learning_rate_for, train_classifier)
from rmsprop_c._demo_train import minibatches, set_cosine_lr
from rmsprop_c.flavors import FLAVORS

__all__ = ["main", "build_parser", "train_data_parallel"]

EXIT_MISSING_DEPENDENCY = 1
EXIT_RANKS_DIVERGED = 3


def train_data_parallel(comm, dataset, *, flavor, lr, epochs, batch_size, seed, hidden,
                        n_threads=None, on_epoch=None):
    """Train the demo MLP across the ranks of ``comm``; returns (model, optimizer, history).

    Same seed, same data and same schedule as the single-process demo: the weight init and the
    minibatch order come from ``seed``, the lr follows the same cosine decay.
    """
    from rmsprop_c.distributed import ShardedRMSprop

    rank, world = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(seed)
    model = MLP((dataset.n_features, *hidden, dataset.n_classes), rng)
    # average=False: each rank's grad is already weighted by its share of the minibatch.
    optimizer = ShardedRMSprop(model.params, comm, lr=lr, flavor=flavor, n_threads=n_threads,
                               average=False)
    grad_views = optimizer.flat_grad_buffer()
    n_train = len(dataset.y_train)
    history = []
    with threadpool_limits(limits=1, user_api="blas"):
        for epoch in range(1, epochs + 1):
            set_cosine_lr(optimizer, lr, epoch, epochs)
            totals = np.zeros(2)  # loss summed over examples, examples classified right
            for batch in minibatches(rng, n_train, batch_size):
                mine = batch[rank::world]
                if len(mine):
                    loss, correct, grads = model.loss_and_grads(dataset.x_train[mine],
                                                                dataset.y_train[mine])
                    share = grads[0].dtype.type(len(mine) / len(batch))
                    for view, grad in zip(grad_views, grads):
                        np.multiply(grad, share, out=view)
                    totals += (loss * len(mine), correct)
                else:  # fewer examples than ranks: this rank contributes nothing
                    for view in grad_views:
                        view.fill(0)
                optimizer.step(grad_views)
            totals = comm.allreduce(totals)
            test_loss, test_accuracy = model.evaluate(dataset.x_test, dataset.y_test)
            metrics = {"epoch": epoch, "train_loss": totals[0] / n_train,
                       "train_accuracy": totals[1] / n_train, "test_loss": test_loss,
                       "test_accuracy": test_accuracy}
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
    return model, optimizer, history


def build_parser():
    """The ``python -m rmsprop_c demo --distributed`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mpiexec -n N python -m rmsprop_c demo --distributed",
        description="Train the demo MLP data-parallel over MPI ranks with the optimizer state "
                    "sharded across them, then compare with one process.")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="spirals",
                        help="the embedded spirals (default) or scikit-learn's digits")
    parser.add_argument("--flavor", choices=tuple(FLAVORS), default="torch",
                        help="RMSprop flavor (default: torch)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: the demo's, per flavor)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"passes over the training set (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="examples per step, over all ranks together (default: 64)")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(DEFAULT_HIDDEN),
                        metavar="SIZE", help="hidden layer sizes (default: 128 128)")
    parser.add_argument("--seed", type=int, default=0, help="weight init and batch order")
    parser.add_argument("--threads", type=int, default=None, help="optimizer threads per rank")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the single-process run on rank 0")
    return parser


def _digest(params):
    return hashlib.sha256(b"".join(param.tobytes() for param in params)).hexdigest()[:16]


def main(argv=None):
    """Run the data-parallel demo; returns the exit status (0 when it worked)."""
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        from mpi4py import MPI
        dataset = DATASETS[args.dataset]()
    except ImportError:
        print("error: the distributed demo needs mpi4py and an MPI library; install both with\n"
              "    pip install mpi4py mpich", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    except MissingDependency as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()

    def say(text=""):
        if rank == 0:
            print(text, flush=True)

    lr, lr_source = learning_rate_for(args.flavor, args.lr)
    hidden = tuple(args.hidden)
    say(f"task:      {dataset.describe()}")
    say(f"ranks:     {world} ranks" + ("" if world > 1 else
                                       " (run under mpiexec -n 2 or more to split the work)"))
    say(f"training:  {args.epochs} epochs, batch {args.batch_size} split over the ranks, "
        f"seed {args.seed}, cosine lr decay")
    say(f"optimizer: rmsprop_c.distributed.ShardedRMSprop(flavor={args.flavor!r}, lr={lr:g}) "
        f"[{lr_source}]")
    say()
    start = time.perf_counter()
    model, optimizer, history = train_data_parallel(
        comm, dataset, flavor=args.flavor, lr=lr, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, hidden=hidden, n_threads=args.threads,
        on_epoch=lambda m: say(
            f"epoch {m['epoch']:>3}/{args.epochs}  train loss {m['train_loss']:.4f}  "
            f"train acc {100 * m['train_accuracy']:5.1f}%  test acc "
            f"{100 * m['test_accuracy']:5.1f}%"))
    seconds = time.perf_counter() - start
    digests = comm.allgather(_digest(model.params))
    identical = len(set(digests)) == 1
    state_bytes = comm.gather(optimizer.state_nbytes, root=0)
    final = history[-1]
    n_test = len(dataset.y_test)
    say()
    say(f"final test accuracy: {100 * final['test_accuracy']:.1f}% "
        f"({round(final['test_accuracy'] * n_test)}/{n_test})")
    say(f"weights identical on every rank: {'yes' if identical else 'NO'} ({digests[0]})")
    if rank == 0:
        full = sum(state_bytes)  # the shards partition the state exactly (no padding kept)
        shares = ", ".join(f"{count / 1024:.1f} KiB" for count in state_bytes)
        say(f"optimizer state per rank: {shares} (one process holds {full / 1024:.1f} KiB)")
    say(f"time: {seconds:.1f} s")
    if args.compare and rank == 0:
        single = train_classifier(dataset, flavor=args.flavor, lr=lr, epochs=args.epochs,
                                  batch_size=args.batch_size, seed=args.seed, hidden=hidden,
                                  n_threads=args.threads, show_progress=False)
        accuracy = single.history[-1]["test_accuracy"]
        say(f"the same training in one process: test accuracy {100 * accuracy:.1f}% "
            f"({round(accuracy * n_test)}/{n_test}); the split batches round their matmuls "
            "differently, so the two runs agree closely, not bit for bit")
    comm.Barrier()
    return 0 if identical else EXIT_RANKS_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
