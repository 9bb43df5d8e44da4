"""Pure-NumPy twins of the fast API, with the same names: a check and a teaching aid.

``rmsprop_step`` is the spec itself (``rmsprop_c.reference``); ``RMSprop`` is the optimizer
with every step run tensor by tensor through it. Same flavors, groups, state, threading
arguments, gradient preprocessing and checkpoints as :class:`rmsprop_c.RMSprop`, only slower.
"""

import numpy as np

from rmsprop_c._options import GROUP_KEYS
from rmsprop_c._rowgrad import RowGrad
from rmsprop_c.optimizer import RMSprop as _FastRMSprop
from rmsprop_c.reference import (clip_coefficient, global_grad_norm, norm_of_preprocessed,
                                 preprocess_grad, rmsprop_step, rmsprop_step_rows,
                                 sum_duplicate_rows, widen)

__all__ = ["RMSprop", "rmsprop_step", "global_grad_norm"]


class RMSprop(_FastRMSprop):
    """:class:`rmsprop_c.RMSprop` whose step runs the NumPy spec tensor by tensor."""

    def _applied(self, grad):
        """The gradient a tensor applies, as the global norm reads it: a row grad's summed
        rows (duplicates='sum') or its listed rows."""
        if not isinstance(grad, RowGrad):
            return grad
        if self.duplicates == "sequential":
            return grad.rows
        return sum_duplicate_rows(grad.indices, grad.rows)[1]

    def step(self, grads):
        self._engine.validate(grads, self.param_groups, self.duplicates)
        coefficient = 1.0
        self._last_grad_norm = None
        if self.max_grad_norm is not None or self.skip_nonfinite:
            preprocessed, nonfinite = [], False
            for group_index, group in enumerate(self.param_groups):
                for index in self._group_members[group_index]:
                    grad = self._applied(grads[index])
                    if grad is None:
                        continue
                    with np.errstate(all="ignore"):
                        wide = widen(grad)           # low precision: float32 arithmetic
                        scaled = wide * wide.dtype.type(group["grad_scale"])
                    nonfinite = nonfinite or not np.isfinite(scaled).all()
                    preprocessed.append((index, preprocess_grad(grad, group["grad_scale"],
                                                                group["clip_value"])))
            preprocessed.sort(key=lambda entry: entry[0])      # the step's tensor order
            norm = norm_of_preprocessed([array for _, array in preprocessed], self.norm_type)
            self._last_grad_norm = norm
            if self.skip_nonfinite and nonfinite:
                self.skipped_steps += 1
                return False
            if self.max_grad_norm is not None:
                coefficient = clip_coefficient(self.max_grad_norm, norm)
        tensor_steps = self._engine.get_tensor_steps()
        for group_index, group in enumerate(self.param_groups):
            options = {key: group[key] for key in GROUP_KEYS}
            for index in self._group_members[group_index]:
                if grads[index] is None:
                    continue
                state = self.state[index]
                buffers = dict(step=tensor_steps[index] + 1, norm_coefficient=coefficient,
                               momentum_buffer=state.get("momentum_buffer"),
                               grad_avg=state.get("grad_avg"),
                               max_square_avg=state.get("max_square_avg"))
                grad = grads[index]
                if isinstance(grad, RowGrad):
                    rmsprop_step_rows(self._params[index], grad.indices, grad.rows,
                                      state["square_avg"], duplicates=self.duplicates,
                                      **buffers, **options)
                else:
                    rmsprop_step(self._params[index], grad, state["square_avg"], **buffers,
                                 rounding=self.rounding, seed=self.seed, tensor_index=index,
                                 param_copy=self._param_copies[index], **options)
                tensor_steps[index] += 1
        self._engine.set_tensor_steps(tensor_steps)
        return True
