"""Catch, on any device, the operations that make a CUDA step wait for the host.

On a GPU, torch's sync-debug mode finds synchronisations (tests/test_gpu_sync.py). CI has no GPU,
so this dispatch mode flags the ATen operations that synchronise on CUDA whatever their inputs:
reading a value back (`.item()`, `bool(t)`, `int(t)`), and operations whose output size depends
on the data (nonzero, boolean-mask indexing, unique, bincount, masked_select, ...). A step that
runs under it without raising has no data-dependent host branch and no data-sized allocation, which
is what CUDA-graph capture needs too. Not seen: `tolist()` and `numpy()`, which read memory
without an operator (the step's code has neither; DDP's size exchange uses tolist outside it).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# Operations that synchronise on CUDA for every input (value read-backs and data-sized outputs).
SYNCING_OPS = {
    _aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    _aten.is_nonzero.default,
    _aten.equal.default,
    _aten.nonzero.default,  # (nonzero_static has a fixed size: fine)
    _aten.masked_select.default,
    _aten.bincount.default,
    _aten._unique.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor,
    _aten.histc.default,
}


class HostSync(AssertionError):
    pass


class ForbidHostSync(TorchDispatchMode):
    """Raise `HostSync` on any operation that would synchronise a CUDA stream with the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING_OPS:
            raise HostSync(f"{func} synchronises with the host on CUDA")
        if func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
                    _aten._index_put_impl_.default):
            indices = args[1]
            if any(i is not None and i.dtype == torch.bool for i in indices):
                raise HostSync(f"{func} with a boolean mask has a data-dependent size (nonzero)")
        return func(*args, **kwargs)
