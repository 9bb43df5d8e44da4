"""The step wrapper of the torch drop-in.

torch.optim.Optimizer wraps every ``step`` in a profiler range and runs the step hooks around
it. The range costs about 15 us per step even when no profiler runs, as much as the whole step
of a small model. This wrapper runs torch's own wrapper whenever a profiler is on or any step
hook (global or the optimizer's) is registered, and the bare step otherwise, so hooks and
profiling behave exactly as in torch.
"""

import functools

import torch
from torch.optim import optimizer as _torch_optimizer

__all__ = ["profile_hook_step"]


def profile_hook_step(step):
    """``step`` wrapped as torch wraps it, skipping the wrapper when it would do nothing."""
    hooked = torch.optim.Optimizer.profile_hook_step(step)
    global_pre = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
    global_post = getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
    profiling = getattr(torch.autograd, "_profiler_enabled", None)
    if global_pre is None or global_post is None or profiling is None:
        return hooked                   # a torch whose internals differ: always its wrapper

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if (global_pre or global_post or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or profiling()):
            return hooked(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    return wrapper
