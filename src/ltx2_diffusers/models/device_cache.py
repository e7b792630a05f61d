"""Small constant tensors a forward needs on its device (keep masks, item indices, the RoPE frequency grid), built once
per device instead of at every forward: building a tensor from host values on a GPU copies it from pageable host
memory, which waits for all the work queued on the device (a stream sync), and a forward that did so for each
block's keep mask left the GPU idle while the host caught up.

The cached tensors are ordinary tensors whatever the mode of the call that first built them (built outside
`torch.inference_mode`, so a later call with autograd can use them), never modified in place, and not cached while
`torch.compile` traces or a tensor mode (fake tensors) is active.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch


_MAX_ENTRIES = 512
_CACHE: dict[Hashable, torch.Tensor] = {}


def cached_on_device(key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`build()`'s tensor for `key` (which must name its device and dtype), built once and shared."""
    if torch.compiler.is_compiling() or _fake_mode_active():  # a graph constant / a fake tensor: not shared
        return build()
    tensor = _CACHE.get(key)
    if tensor is None:
        with torch.inference_mode(False):
            tensor = build()
        if type(tensor) is not torch.Tensor:  # a fake or other subclass tensor (a tensor mode): not kept
            return tensor
        if len(_CACHE) >= _MAX_ENTRIES:
            _CACHE.clear()
        _CACHE[key] = tensor
    return tensor


def device_constant(values: tuple, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.tensor(values, device=device, dtype=dtype)`, built once per `(values with their types and exact bits,
    device, dtype)`. Shared between calls: never modify it in place."""
    exact = tuple((type(v), v.hex() if isinstance(v, float) else v) for v in values)  # -0.0 and NaN keyed exactly
    key = ("constant", exact, device_key(device), dtype or torch.get_default_dtype())
    return cached_on_device(key, lambda: torch.tensor(values, device=device, dtype=dtype))


def device_key(device) -> torch.device:
    """`device` with its index (`"cuda"` means the current CUDA device, which a cache must not pin)."""
    device = torch.device(device)
    module = getattr(torch, device.type, None)
    if device.index is None and device.type != "cpu" and hasattr(module, "current_device"):
        return torch.device(device.type, module.current_device())
    return device


def _fake_mode_active() -> bool:
    key = getattr(getattr(torch._C, "_TorchDispatchModeKey", None), "FAKE", None)
    return key is not None and torch._C._get_dispatch_mode(key) is not None
