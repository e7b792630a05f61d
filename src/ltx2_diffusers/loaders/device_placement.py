"""Move modules' host weights to a CUDA device through a few pinned staging buffers.

`module.to("cuda")` copies every memory-mapped host tensor (what safetensors hands `from_pretrained`) straight
from pageable memory: one synchronous copy per tensor through the driver's own bounce buffer, the page faults of
the mapping taken one thread at a time (3.8 s for 13.8 GB already in the page cache on one H200 machine,
`benchmarks/loading.py` run 19). `place_modules(modules, device)` gives the same result (`Module._apply`, the
mechanism of `to()` itself, with a conversion function that returns a fresh device tensor per host tensor: the
same `nn.Parameter` objects with `.data` replaced, the same `requires_grad`, buffers replaced, tied parameters
still one object) and then fills those tensors in their host memory order: bytes are copied host -> pinned
staging buffer with torch's multi-threaded `copy_` (which also takes the mapping's page faults in parallel), and
pinned -> device with non-blocking copies on a side stream, a CUDA event per buffer marking when it may be
refilled; so the disk or page-cache read, the host copy and the transfer overlap.

Exactly what `to()` gives: the values are copied byte for byte from the tensors as they are now (a user's edits
after loading included; the files are never read again), in their dtype. A tensor that is not a plain contiguous
strided host tensor (views with odd strides, tensor subclasses, sparse or quantized layouts, a buffer that
requires grad), a module carrying offload hooks or a quantizer, and any device other than CUDA go through the
plain `to()`; on a CPU target this is `module.to(device)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch


__all__ = ["STAGING_BUFFERS", "STAGING_BYTES", "StagingPool", "place_modules", "stageable"]

STAGING_BYTES = 64 * 2**20  # bytes of one staging buffer
STAGING_BUFFERS = 3  # one filled by the host while the others are copied to the device


def stageable(tensor: torch.Tensor) -> bool:
    """A plain, dense, contiguous host tensor that does not require grad (a parameter's `.data` or a buffer):
    what the staged copy moves; anything else goes through `tensor.to(device)`."""
    return (
        type(tensor) in (torch.Tensor, torch.nn.Parameter)
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and not tensor.is_conj()
        and not tensor.is_neg()
        and tensor.is_contiguous()
        and tensor.numel() > 0
        and not (tensor.requires_grad and torch.is_grad_enabled())  # buffers: `to()` would record the graph
    )


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as a flat uint8 tensor sharing its memory."""
    return tensor.detach().reshape(-1).view(torch.uint8)


@dataclass
class _Copy:
    source: torch.Tensor
    target: torch.Tensor


class _Collector:
    """The conversion function handed to `Module._apply`: a fresh, not yet written target for each stageable host
    tensor (the copy is queued), `tensor.to(device)` for the others."""

    def __init__(self, device: torch.device):
        self.device = device
        self.copies: list[_Copy] = []
        # id of each tensor met -> (the tensor, kept alive so that its id is not reused; its target)
        self._targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        known = self._targets.get(id(tensor))
        if known is not None:  # a parameter met again (tied): its one target
            return known[1]
        if not stageable(tensor):
            return tensor.to(self.device)
        target = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
        self._targets[id(tensor)] = (tensor, target)
        # `detach()`: the host memory itself (`_apply` then points a parameter's `.data` at the target)
        self.copies.append(_Copy(tensor.detach(), target))
        return target


class StagingPool:
    """`buffers` host buffers of `nbytes` (pinned for a CUDA device) and a copy stream: `copy(copies)` writes each
    source's bytes into its target, in the given order."""

    def __init__(
        self, device, buffers: int = STAGING_BUFFERS, nbytes: int = STAGING_BYTES, pinned: bool | None = None
    ):
        if isinstance(buffers, bool) or not isinstance(buffers, int) or buffers < 1:
            raise ValueError(f"buffers must be an int >= 1, got {buffers!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
            raise ValueError(f"nbytes must be an int >= 1, got {nbytes!r}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        pinned = self.cuda if pinned is None else pinned
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned) for _ in range(buffers)]
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._done: list = [None] * buffers  # CUDA event per buffer: its transfers have finished

    def copy(self, copies: Iterable[_Copy]) -> None:
        """Copy every source into its target through the buffers; returns once the targets are written."""
        nbytes = self.buffers[0].numel()
        index, used, pending = 0, 0, []  # current buffer, bytes filled, (staged slice, target slice) to transfer
        if self.cuda:  # the targets were allocated on the current stream
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self._wait(index)
        for item in copies:
            source, target = _bytes(item.source), _bytes(item.target)
            start, total = 0, source.numel()
            while start < total:
                if used == nbytes:
                    self._flush(index, pending)
                    index, used, pending = (index + 1) % len(self.buffers), 0, []
                    self._wait(index)
                n = min(nbytes - used, total - start)
                staged = self.buffers[index][used : used + n]
                staged.copy_(source[start : start + n])
                pending.append((staged, target[start : start + n]))
                used, start = used + n, start + n
        self._flush(index, pending)
        if self.cuda:
            self.stream.synchronize()

    def _wait(self, index: int) -> None:
        if self._done[index] is not None:
            self._done[index].synchronize()
            self._done[index] = None

    def _flush(self, index: int, pending: list) -> None:
        if not pending:
            return
        context = torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
        with context:
            for staged, target in pending:
                target.copy_(staged, non_blocking=self.cuda)
            if self.cuda:
                self._done[index] = torch.cuda.Event()
                self._done[index].record(self.stream)


def _plain_only(module: torch.nn.Module) -> bool:
    """Modules whose `to()` does more than moving tensors: quantized, or carrying offload hooks."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    if getattr(module, "is_quantized", False) or getattr(module, "hf_quantizer", None) is not None:
        return True
    return _is_group_offload_enabled(module) or any(hasattr(sub, "_hf_hook") for sub in module.modules())


def _memory_order(copies: list[_Copy]) -> list[_Copy]:
    """By host address (memory-mapped files in file order, so a read ahead stays ahead of the copies)."""
    return sorted(copies, key=lambda c: c.source.data_ptr())


def place_modules(modules: Iterable[torch.nn.Module], device, pool: StagingPool | None = None) -> None:
    """Each module as `module.to(device)` leaves it, the host weights copied through `pool` (a `StagingPool`,
    made for the call when None) one module after the other, each in its host memory order. On a device other
    than CUDA (and without a `pool`), and for modules `to()` treats specially (quantized, offload hooks): `to()`."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    modules = list(modules)
    if pool is None and device.type != "cuda":
        for module in modules:
            module.to(device)
        return
    pool = pool or StagingPool(device)
    for module in modules:
        if _plain_only(module):
            module.to(device)
            continue
        collector = _Collector(device)
        module._apply(collector)
        pool.copy(_memory_order(collector.copies))


def place_pipeline_modules(pipe, device, names: Iterable[str] | None = None) -> None:
    """`place_modules` over the pipeline's `nn.Module` components (those in `names`, default all), in the order of
    its components (the order `loaders.prefetch` reads their files in), through one staging pool."""
    wanted = None if names is None else set(names)
    modules = [
        module
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module) and (wanted is None or name in wanted)
    ]
    place_modules(modules, device)
