"""Sparse COO gradients of ``rmsprop_c.torch.RMSprop``: zero-copy row grads.

``nn.Embedding(sparse=True)`` gives a 2-D table a sparse COO gradient with one sparse dim
(the rows a batch looked up, repeated as often as it looked them up, uncoalesced) and one
dense dim (the width). Its indices and values are exactly a :class:`rmsprop_c.RowGrad`:
NumPy views of them go to the engine, which sums repeated rows in order of appearance.
"""

import torch

from rmsprop_c._rowgrad import RowGrad

__all__ = ["row_grad"]


def row_grad(grad, param, index):
    """A RowGrad viewing a sparse COO ``grad`` of ``param`` (no copy unless its values are
    not contiguous), or an error naming ``params[index]``."""
    name = f"params[{index}].grad"
    if grad.layout != torch.sparse_coo:
        raise RuntimeError(f"{name} has layout {grad.layout}: rmsprop_c.torch.RMSprop "
                           "takes dense gradients and the sparse COO gradients of 2-D "
                           "parameters (nn.Embedding(sparse=True))")
    if param.dim() != 2 or grad.sparse_dim() != 1 or grad.dense_dim() != 1:
        raise RuntimeError(
            f"{name} is sparse COO with {grad.sparse_dim()} sparse and {grad.dense_dim()} "
            f"dense dims for a {param.dim()}-D parameter: rmsprop_c.torch.RMSprop steps the "
            "rows of a 2-D parameter whose sparse gradient has 1 sparse dim (rows) and 1 "
            "dense dim (width), as nn.Embedding(sparse=True) gives")
    if grad.dtype != param.dtype or grad.shape != param.shape:
        raise ValueError(f"{name} is a {grad.dtype} tensor of shape {tuple(grad.shape)}; "
                         f"params[{index}] is {param.dtype} of shape {tuple(param.shape)}")
    if grad.device != param.device:
        raise ValueError(f"{name} is on device {grad.device}; params[{index}] is on "
                         f"{param.device}")
    values = grad._values().detach()
    if not values.is_contiguous():
        values = values.contiguous()               # a copy is fine: grads are only read
    return RowGrad(grad._indices().detach()[0].numpy(), values.numpy())
