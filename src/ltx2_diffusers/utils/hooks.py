"""Whether accelerate / diffusers hooks sit on a module or inside it.

Two questions, two predicates:

- `carries_hooks`: is there any accelerate hook (`_hf_hook`) or any diffusers hook (a non-empty `_diffusers_hook`
  registry: group offload, but also caching, layerwise casting, ...) that wraps a forward? Code that bypasses or
  recompiles forwards (the channels-last VAE walk, `compile_repeated_blocks`) must not run past these.
- `placed_by_offload`: was the module placed by an offload (accelerate's model / sequential CPU offload, diffusers'
  group offload)? Diffusers hooks that move no weights (caching, casting) do not count here: the memory tiers ask
  this to know which components the user (or a tier) already offloads.
"""

from __future__ import annotations

import torch


__all__ = ["carries_hooks", "placed_by_offload"]


def carries_hooks(module: torch.nn.Module) -> bool:
    """Whether accelerate's `_hf_hook` (set, not None) or a diffusers hook registry holding at least one hook sits
    on `module` or on a module inside it. Torch forward (pre-)hooks and global module hooks do not count."""
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if getattr(sub, "_hf_hook", None) is not None or (registry is not None and registry.hooks):
            return True
    return False


def placed_by_offload(module: torch.nn.Module) -> bool:
    """Whether `module` or a module inside it has accelerate's `_hf_hook` attribute (model or sequential CPU offload;
    accelerate deletes it when the hook is removed) or `module` is under diffusers' group offloading."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return any(hasattr(sub, "_hf_hook") for sub in module.modules()) or _is_group_offload_enabled(module)
