"""The demo's training loops: minibatch RMSprop on the MLP and gradDescent-style regression.

Progress goes through tqdm when it is installed and stderr is a terminal; otherwise only the
per-epoch lines are printed.
"""

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

import rmsprop_c
from rmsprop_c._demo_data import MLP
from rmsprop_c.flavors import FLAVORS

__all__ = ["DEMO_LEARNING_RATES", "DEFAULT_HIDDEN", "DEFAULT_EPOCHS", "DEFAULT_REGRESSION_EPOCHS",
           "GRADDESCENT_HYPERPARAMETERS", "progress", "learning_rate_for", "TrainingRun",
           "train_classifier", "compare_runs", "train_regression"]

# The learning rate each flavor trains the demo MLP with, where the demo does not use the
# flavor's own default (the flavor's other hyperparameters are always its own). Tuned for
# 30 epochs with a cosine decay on the spirals and on the digits.
DEMO_LEARNING_RATES = {
    "keras": (1e-2, "default 1e-3 is too slow: ~70% test accuracy after 30 epochs"),
    "tf1": (1e-2, "tf1 has no default lr"),
    "optax": (1e-2, "optax has no default lr"),
    "lasagne": (1e-2, "default 1.0 diverges"),
    "dl4j": (1e-2, "default 0.1 overshoots: ~58% test accuracy on the digits"),
    "hinton": (1e-2, "hinton has no default lr"),
    "graves": (2e-3, "default 1e-4 is too slow; lr sits inside momentum 0.9 (steps ~10x lr)"),
}
FALLBACK_LEARNING_RATE = 1e-2  # For a flavor added later without a default lr or a row above.

DEFAULT_HIDDEN = (128, 128)  # 17,541 parameters: trains in about a second
DEFAULT_EPOCHS = 30
DEFAULT_REGRESSION_EPOCHS = 10
# gradDescent's RMSPROP: alpha 0.1 is its learning rate, "momentum" 0.9 its decay, smooth 1e-7
# goes inside the sqrt.
GRADDESCENT_HYPERPARAMETERS = dict(lr=0.1, alpha=0.9, eps=1e-7, eps_in_sqrt=True)


# ----------------------------------------------------------------------------- progress
class _Lines:
    """No bar: each line written is printed on stdout."""

    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    @staticmethod
    def write(line):
        print(line, flush=True)

    def close(self):
        pass


class _Tqdm:
    """tqdm on stderr; lines go to stdout through tqdm.write so the bar is not broken."""

    def __init__(self, tqdm, total, desc):
        self._tqdm = tqdm
        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False,
                        dynamic_ncols=True)

    def update(self, n=1):
        self.bar.update(n)

    def set_postfix_str(self, text):
        self.bar.set_postfix_str(text, refresh=False)

    def write(self, line):
        self._tqdm.write(line, file=sys.stdout)

    def close(self):
        self.bar.close()


def progress(total, desc, enabled=True):
    """A tqdm bar when tqdm is installed and stderr is a terminal, else plain lines.

    Parameters
    ----------
    total : int
        Number of updates that make 100%.
    desc : str
        Label shown before the bar.
    enabled : bool
        False never draws a bar.

    Returns
    -------
    object
        With ``update(n)``, ``set_postfix_str(text)``, ``write(line)`` (prints a line on
        stdout) and ``close()``.
    """
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return _Tqdm(tqdm, total, desc)
    return _Lines()


# ----------------------------------------------------------------------------- training
def set_cosine_lr(optimizer, lr, epoch, epochs):
    """Cosine decay from ``lr`` over the epochs (``epoch`` counts from 1), in every group."""
    for group in optimizer.param_groups:
        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def minibatches(rng, n_examples, batch_size):
    """One epoch's minibatches: index arrays over a fresh random order of the examples."""
    order = rng.permutation(n_examples)
    for start in range(0, n_examples, batch_size):
        yield order[start:start + batch_size]


def learning_rate_for(flavor, explicit=None):
    """The learning rate the demo trains ``flavor`` with, and where it comes from.

    Parameters
    ----------
    flavor : str
        A name in :data:`rmsprop_c.FLAVORS`.
    explicit : float or None
        ``--lr``: wins when given.

    Returns
    -------
    lr : float
    source : str
        A short explanation, printed next to the value.
    """
    if explicit is not None:
        return float(explicit), "--lr"
    if flavor in DEMO_LEARNING_RATES:
        lr, reason = DEMO_LEARNING_RATES[flavor]
        return lr, f"demo's choice: {reason}"
    default = FLAVORS[flavor].defaults.get("lr")
    if default is None:
        return FALLBACK_LEARNING_RATE, f"demo's choice: {flavor} has no default lr"
    return float(default), f"the {flavor} flavor's default"


@dataclass
class TrainingRun:
    """What one training run produced."""

    params: list
    optimizer: object
    history: list = field(default_factory=list)  # one dict of metrics per epoch
    optimizer_seconds: float = 0.0  # inside optimizer.step
    loop_seconds: float = 0.0  # the whole training loop, optimizer included
    steps: int = 0
    averaged_params: Optional[list] = None  # regression: mean of the last epoch's iterates

    def weights_bytes(self):
        return b"".join(param.tobytes() for param in self.params)

    def weights_digest(self):
        """First 16 hex digits of the SHA-256 of the final weights' bytes."""
        return hashlib.sha256(self.weights_bytes()).hexdigest()[:16]


def train_classifier(dataset, *, flavor="torch", lr, epochs=DEFAULT_EPOCHS, batch_size=64,
                     seed=0, hidden=DEFAULT_HIDDEN, n_threads=None,
                     optimizer_class=rmsprop_c.RMSprop, desc="training", on_epoch=None,
                     show_progress=True):
    """Train an :class:`MLP` on ``dataset`` with minibatch RMSprop and a cosine lr decay.

    Parameters
    ----------
    dataset : Dataset
        Train and test data.
    flavor : str
        RMSprop flavor (its hyperparameters, except ``lr``).
    lr : float
        Peak learning rate; epoch ``e`` (from 1) uses ``lr * (1 + cos(pi (e-1) / epochs)) / 2``.
    epochs, batch_size : int
        Passes over the training set; examples per step.
    seed : int
        Seeds the weight init and the minibatch order.
    hidden : tuple of int
        Hidden layer sizes.
    n_threads : int or None
        Optimizer threads (None: OpenMP's setting).
    optimizer_class : type
        :class:`rmsprop_c.RMSprop` or :class:`rmsprop_c.slow.RMSprop`.
    desc : str
        Label of the progress bar.
    on_epoch : callable or None
        Called as ``on_epoch(metrics, write)`` after each epoch; ``write`` prints a line
        without breaking the progress bar.
    show_progress : bool
        Whether to draw a progress bar (never drawn when stderr is not a terminal).

    Returns
    -------
    TrainingRun
    """
    rng = np.random.default_rng(seed)
    model = MLP((dataset.n_features, *hidden, dataset.n_classes), rng)
    optimizer = optimizer_class(model.params, lr=lr, flavor=flavor, n_threads=n_threads)
    run = TrainingRun(params=model.params, optimizer=optimizer)
    n_train = len(dataset.y_train)
    bar = progress(epochs * math.ceil(n_train / batch_size), desc, show_progress)
    # One BLAS thread: a threaded matmul rounds differently for each thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        loop_start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            set_cosine_lr(optimizer, lr, epoch, epochs)
            loss_sum, n_correct = 0.0, 0
            for batch in minibatches(rng, n_train, batch_size):
                loss, correct, grads = model.loss_and_grads(dataset.x_train[batch],
                                                            dataset.y_train[batch])
                step_start = time.perf_counter()
                optimizer.step(grads)
                run.optimizer_seconds += time.perf_counter() - step_start
                run.steps += 1
                loss_sum += loss * len(batch)
                n_correct += correct
                bar.update()
            test_loss, test_accuracy = model.evaluate(dataset.x_test, dataset.y_test)
            metrics = {"epoch": epoch, "train_loss": loss_sum / n_train,
                       "train_accuracy": n_correct / n_train, "test_loss": test_loss,
                       "test_accuracy": test_accuracy}
            run.history.append(metrics)
            bar.set_postfix_str(f"loss {metrics['train_loss']:.4f}")
            if on_epoch is not None:
                on_epoch(metrics, bar.write)
        run.loop_seconds = time.perf_counter() - loop_start
    bar.close()
    return run


def _state_bytes(optimizer):
    return b"".join(buffer.tobytes() for state in optimizer.state
                    for _, buffer in sorted(state.items()))


def compare_runs(fast, reference):
    """Whether two runs ended with the same weights and optimizer state, bit for bit.

    Parameters
    ----------
    fast, reference : TrainingRun

    Returns
    -------
    identical : bool
    detail : str
        What was compared, or how much differs.
    """
    n_values = sum(param.size for param in fast.params)
    dtypes = sorted({param.dtype.name for param in fast.params})
    if (fast.weights_bytes() == reference.weights_bytes()
            and _state_bytes(fast.optimizer) == _state_bytes(reference.optimizer)):
        return True, f"{n_values:,} {'/'.join(dtypes)} weights and the optimizer state"
    differing = sum(int(np.count_nonzero(a != b)) for a, b in zip(fast.params, reference.params))
    largest = max(float(np.max(np.abs(a.astype(np.float64) - b)))
                  for a, b in zip(fast.params, reference.params))
    return False, (f"{differing:,} of {n_values:,} weights differ, by up to {largest:.3g}; "
                   "state may differ too")


def train_regression(design, targets, *, epochs=DEFAULT_REGRESSION_EPOCHS, seed=0,
                     lr=GRADDESCENT_HYPERPARAMETERS["lr"], optimizer_class=rmsprop_c.RMSprop,
                     n_threads=None, on_epoch=None, show_progress=True, desc="regression"):
    """Linear regression trained like gradDescent's ``RMSPROP``, one accumulator per coefficient.

    The R package gradDescent's ``RMSPROP(dataTrain, alpha=0.1, maxIter, momentum=0.9)`` draws
    ``maxIter`` rows at random (with replacement) and steps on each row alone:
    ``g_j = (x . theta - y) x_j``, ``E = 0.9 E + 0.1 g_j^2``,
    ``theta_j -= 0.1 / sqrt(E + 1e-7) g_j``. Its ``E`` is one scalar shared by all
    coefficients (updated once per coefficient, in column order), so each coefficient's step
    is scaled by the other coefficients' gradients: a bug, which this demo does not copy.
    Here each coefficient has its own accumulator, i.e. :class:`rmsprop_c.RMSprop` with
    ``lr=0.1`` (gradDescent's ``alpha``), ``alpha=0.9`` (its decay), ``eps=1e-7`` and
    ``eps_in_sqrt=True``. Like gradDescent, the result is the last iterate; with a constant
    learning rate it keeps moving by about ``lr`` per step, so the mean of the last epoch's
    iterates (Polyak-Ruppert averaging) is kept too: its error follows the noise level.

    Parameters
    ----------
    design : numpy.ndarray
        float64, shape (n_rows, n_coefficients), intercept column included.
    targets : numpy.ndarray
        float64, shape (n_rows,).
    epochs : int
        ``epochs * n_rows`` single-row steps (gradDescent's ``maxIter``).
    seed : int
        Seeds the initial coefficients (uniform in [0, 1), as gradDescent) and the rows drawn.
    lr : float
        Learning rate (gradDescent's ``alpha``, 0.1 by default).
    optimizer_class : type
        :class:`rmsprop_c.RMSprop` or :class:`rmsprop_c.slow.RMSprop`.
    n_threads : int or None
        Optimizer threads.
    on_epoch : callable or None
        Called as ``on_epoch(metrics, write)`` after every ``n_rows`` steps.
    show_progress : bool
        Whether to draw a progress bar (never drawn when stderr is not a terminal).
    desc : str
        Label of the progress bar.

    Returns
    -------
    TrainingRun
        ``params[0]`` holds the fitted coefficients, ``averaged_params[0]`` the mean of the
        last epoch's iterates; ``history`` the training MSE after each epoch.
    """
    rng = np.random.default_rng(seed)
    n_rows, n_coefficients = design.shape
    coefficients = rng.uniform(0.0, 1.0, n_coefficients)
    optimizer = optimizer_class([coefficients], **{**GRADDESCENT_HYPERPARAMETERS, "lr": lr},
                                n_threads=n_threads)
    run = TrainingRun(params=[coefficients], optimizer=optimizer)
    rows = rng.integers(0, n_rows, epochs * n_rows)
    bar = progress(len(rows), desc, show_progress)
    grad = np.empty(n_coefficients)
    iterate_sum = np.zeros(n_coefficients)
    # One BLAS thread, as for the classifier: the per-epoch MSE uses a matrix-vector product.
    with threadpool_limits(limits=1, user_api="blas"):
        loop_start = time.perf_counter()
        for step_index, row in enumerate(rows, start=1):
            features = design[row]
            np.multiply(features, float(features @ coefficients) - targets[row], out=grad)
            step_start = time.perf_counter()
            optimizer.step([grad])
            run.optimizer_seconds += time.perf_counter() - step_start
            if step_index > (epochs - 1) * n_rows:
                iterate_sum += coefficients
            if step_index % n_rows == 0:
                residuals = design @ coefficients - targets
                metrics = {"epoch": step_index // n_rows,
                           "train_loss": float(residuals @ residuals) / n_rows}
                run.history.append(metrics)
                bar.update(n_rows)
                if on_epoch is not None:
                    on_epoch(metrics, bar.write)
        run.loop_seconds = time.perf_counter() - loop_start
    run.steps = len(rows)
    run.averaged_params = [iterate_sum / n_rows]
    bar.close()
    return run
