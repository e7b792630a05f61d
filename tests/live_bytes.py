"""`LiveBytes`: the peak bytes of the tensors an operation creates that are alive at once (each storage counted
once, views free), recorded through a `TorchDispatchMode`. It works on the meta device, so a full-size model's
activation peak can be traced on the CPU; allocator overheads (workspace, fragmentation) are not seen."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Inside `with LiveBytes() as trace:`, `trace.peak` is the largest sum of live storages created there."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _released(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if key in self._seen or nbytes == 0:
                continue
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor if tensor._base is None else tensor._base, self._released, key, nbytes)
        return out
