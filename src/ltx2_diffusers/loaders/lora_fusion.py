"""LoRA with the reference's arithmetic: `W + sum(s_i * B_i @ A_i)` formed in the weight's dtype, on the fly.

ltx-core fuses LoRAs into the weights at load time (`delta = (B * s) @ A` in the LoRA dtype, deltas summed, then
added to `W` in the weight dtype). PEFT instead adds `s * B(A(x))` to the base output, which rounds differently in
bfloat16. Inside `reference_lora_arithmetic(model)` every active PEFT LoRA linear computes `F.linear(x, W')` with
`W'` built exactly like ltx-core's fused weight, without keeping a second copy of the weights.

The user's adapter state is honoured as PEFT honours it: the active adapters at their `set_adapters` weights (the
layers' `scaling`, rank / alpha patterns and rsLoRA included) and a `lora_bias` (added to the bias, as PEFT's merge
does); a layer whose adapters are disabled (`disable_lora`), merged (`fuse_lora`) or given per-item `adapter_names`
runs PEFT's own forward, exactly as without `reference_arithmetic` (disabled merged adapters are unmerged first).
What the fused weight cannot express is refused before any forward (ValueError naming the adapter and layer): DoRA
(`use_dora=True`) and PEFT's other LoRA variants, LoRA layers around anything but a linear (embeddings,
convolutions, other tuners), `fan_in_fan_out`, and LoRA dropout in training mode.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from .distilled_lora import DELTA_ATTRIBUTE as DISTILLED_DELTA_ATTRIBUTE


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _offload_hooks(module) -> list:
    """The offload hooks that run around `module`'s forward, outermost first, as `(pre, post)` pairs: accelerate's
    (`_hf_hook`: `cpu_offload`, `dispatch_model`) and diffusers' hook registry (group offloading)."""
    hooks = []
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        hooks += [registry.hooks[name] for name in reversed(registry._hook_order)]
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        hooks.append(hook)
    return hooks


@contextlib.contextmanager
def _onloaded(modules):
    """Within the block the weights of `modules` are where their forwards would see them: each module's offload
    hooks (`_offload_hooks`) run their pre-forward (onload: off the meta device or host memory) before and their
    post-forward (offload again) after, as around a forward. The fused weight reads the layers' tensors directly,
    without calling their forwards."""
    entered = []
    try:
        for module in modules:
            for hook in _offload_hooks(module):
                hook.pre_forward(module)
                entered.append((hook, module))
        yield
    finally:
        for hook, module in reversed(entered):
            hook.post_forward(module, None)


def _fused_forward(self, x, *args, **kwargs):
    if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
        # PEFT's own forward: the base layer (unmerging first when disabled), or its mixed-batch path.
        return type(self).forward(self, x, *args, **kwargs)
    adapters = [name for name in self.active_adapters if name in self.lora_A]
    modules = [self.base_layer, *(self.lora_A[n] for n in adapters), *(self.lora_B[n] for n in adapters)]
    if not any(_offload_hooks(m) for m in modules):
        return _fused_linear(self, adapters, x, *args, **kwargs)
    with _onloaded(modules):
        return _fused_linear(self, adapters, x, *args, **kwargs)


def _fused_linear(self, adapters, x, *args, **kwargs):
    base = self.base_layer
    # During stage 2 the base linear also carries the pipeline's distilled LoRA (`distilled_lora.py`); ltx-core
    # sums every LoRA's delta (user LoRAs first, the distilled one last) before adding the sum to `W`.
    distilled = base.__dict__.get(DISTILLED_DELTA_ATTRIBUTE)
    weight = base._parameters["weight"] if distilled is not None else base.weight
    deltas, bias = [], base.bias
    for name in adapters:
        a = self.lora_A[name].weight.to(weight.dtype)
        b = self.lora_B[name].weight.to(weight.dtype)
        deltas.append(torch.matmul(b * self.scaling[name], a))
        if self.lora_bias.get(name, False):
            extra = self.lora_B[name].bias.to(weight.dtype) * self.scaling[name]
            bias = extra if bias is None else bias + extra
    if distilled is not None and deltas:
        a, b, scale = distilled
        deltas.append(torch.matmul(b.to(weight.device, weight.dtype) * scale, a.to(weight.device, weight.dtype)))
    if not deltas:
        return base(x, *args, **kwargs)
    delta = deltas[0] if len(deltas) == 1 else torch.sum(torch.stack(deltas), dim=0)
    return F.linear(x.to(weight.device, weight.dtype), delta + weight, bias)


def _adds_adapters(layer) -> list[str]:
    """The adapters a PEFT tuner layer adds to its output in this state (none when disabled or merged)."""
    if layer.disable_adapters or layer.merged:
        return []
    names = getattr(layer, "adapter_layer_names", ())
    return [a for a in layer.active_adapters if any(a in getattr(layer, n, {}) for n in names)]


def _inexpressible(name: str, layer) -> str | None:
    """Why `layer`'s active adapters cannot be computed as a fused weight (None: they can)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    adapters = _adds_adapters(layer)
    if not adapters:
        return None
    if type(layer) is not LoraLinear:
        return f"adapter {adapters[0]!r} on layer {name!r} is a {type(layer).__name__}, not a LoRA linear"
    if not isinstance(layer.get_base_layer(), torch.nn.Linear):
        base = type(layer.get_base_layer()).__name__
        return f"adapter {adapters[0]!r} on layer {name!r} wraps a {base}, not a torch.nn.Linear"
    if layer.fan_in_fan_out:
        return f"adapter {adapters[0]!r} on layer {name!r} uses fan_in_fan_out (transposed weights)"
    for adapter in adapters:
        if adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter, False):
            return (
                f"adapter {adapter!r} (layer {name!r}) is a DoRA (use_dora=True), which reference_arithmetic does "
                "not support (ltx-core's fused weight has no magnitude vector)"
            )
        variant = layer.lora_variant.get(adapter)
        if variant is not None:
            return f"adapter {adapter!r} (layer {name!r}) is a {type(variant).__name__} LoRA variant"
        dropout = layer.lora_dropout[adapter]
        if isinstance(dropout, torch.nn.Dropout) and dropout.training and dropout.p > 0:
            return (
                f"adapter {adapter!r} (layer {name!r}) applies LoRA dropout (p={dropout.p}) in training mode (.eval())"
            )
    return None


def check_fusable(model: torch.nn.Module) -> None:
    """`ValueError` naming the adapter and layer if `reference_lora_arithmetic(model)` cannot compute the user's
    PEFT LoRA layers as ltx-core's fused weight (the pipelines ask before any model runs)."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    problems = [p for n, m in model.named_modules() if isinstance(m, BaseTunerLayer) and (p := _inexpressible(n, m))]
    if problems:
        raise ValueError(
            f"reference_arithmetic=True cannot compute the user's LoRA as ltx-core fuses it: {problems[0]}"
            f"{f' ({len(problems)} layers in all)' if len(problems) > 1 else ''}; run without reference_arithmetic, "
            "or disable_lora() / fuse_lora() that adapter first"
        )
    fp8 = [n for n, m in model.named_modules() if isinstance(m, LoraLinear) and m.base_layer.weight.dtype in _FP8]
    if fp8:
        raise ValueError(
            f"reference_arithmetic=True: LoRA layers on float8 weights ({fp8[0]}, ...; {len(fp8)} in all) cannot be "
            "computed as ltx-core fuses them (it re-quantises the fused weight); run without reference_arithmetic"
        )


@contextlib.contextmanager
def reference_lora_arithmetic(model: torch.nn.Module):
    """Within the block, PEFT LoRA linears of `model` use ltx-core's fused-weight arithmetic (the user's adapter
    state honoured; what the fused weight cannot express refused with a ValueError before anything runs)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    check_fusable(model)
    patched = [m for m in model.modules() if type(m) is LoraLinear]
    for module in patched:
        module.forward = types.MethodType(_fused_forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
