"""RowGrad: the gradient of a few rows of a 2-D parameter (an embedding table).

A plain value type: ``rows[i]`` is the gradient of row ``indices[i]``. The step that takes
it (``RMSprop.step``) checks it; this module only names the pair.
"""

from typing import Any, NamedTuple

__all__ = ["RowGrad"]


class RowGrad(NamedTuple):
    """The gradient of the listed rows of a ``(rows, width)`` parameter.

    Pass it to :meth:`rmsprop_c.RMSprop.step` in place of a dense grad: only the listed rows
    of the parameter and of its state are stepped (see :func:`rmsprop_c.rmsprop_step_rows`).

    Parameters
    ----------
    indices : numpy.ndarray
        1-D int32 or int64 row numbers; a row may be listed more than once.
    rows : numpy.ndarray
        ``(len(indices), width)`` gradient rows, same dtype as the parameter; ``rows[i]``
        belongs to row ``indices[i]``.

    Examples
    --------
    >>> import numpy as np
    >>> grad = RowGrad(np.array([3, 7]), np.ones((2, 4), dtype=np.float32))
    >>> grad.indices.tolist(), grad.rows.shape
    ([3, 7], (2, 4))
    """

    indices: Any
    rows: Any
