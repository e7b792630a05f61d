"""LoRA with the reference's arithmetic: `W + sum(s_i * B_i @ A_i)` formed in the weight's dtype, on the fly.

ltx-core fuses LoRAs into the weights at load time (`delta = (B * s) @ A` in the LoRA dtype, deltas summed, then
added to `W` in the weight dtype). PEFT instead adds `s * B(A(x))` to the base output, which rounds differently in
bfloat16. Inside `reference_lora_arithmetic(model)` every active PEFT LoRA linear computes `F.linear(x, W')` with
`W'` built exactly like ltx-core's fused weight, without keeping a second copy of the weights.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from .distilled_lora import DELTA_ATTRIBUTE as DISTILLED_DELTA_ATTRIBUTE


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _fused_forward(self, x, *args, **kwargs):
    base = self.base_layer
    if self.disable_adapters or self.merged:
        return base(x, *args, **kwargs)
    # During stage 2 the base linear also carries the pipeline's distilled LoRA (`distilled_lora.py`); ltx-core
    # sums every LoRA's delta (user LoRAs first, the distilled one last) before adding the sum to `W`.
    distilled = base.__dict__.get(DISTILLED_DELTA_ATTRIBUTE)
    weight = base._parameters["weight"] if distilled is not None else base.weight
    deltas = []
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a = self.lora_A[name].weight.to(weight.dtype)
        b = self.lora_B[name].weight.to(weight.dtype)
        deltas.append(torch.matmul(b * self.scaling[name], a))
    if distilled is not None and deltas:
        a, b, scale = distilled
        deltas.append(torch.matmul(b.to(weight.device, weight.dtype) * scale, a.to(weight.device, weight.dtype)))
    if not deltas:
        return base(x, *args, **kwargs)
    delta = deltas[0] if len(deltas) == 1 else torch.sum(torch.stack(deltas), dim=0)
    return F.linear(x.to(weight.dtype), delta + weight, base.bias)


@contextlib.contextmanager
def reference_lora_arithmetic(model: torch.nn.Module):
    """Within the block, PEFT LoRA linears of `model` use ltx-core's fused-weight arithmetic."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = [m for m in model.modules() if isinstance(m, LoraLinear)]
    fp8 = [n for n, m in model.named_modules() if isinstance(m, LoraLinear) and m.base_layer.weight.dtype in _FP8]
    if fp8:
        raise ValueError(
            f"reference_arithmetic=True: LoRA layers on float8 weights ({fp8[0]}, ...; {len(fp8)} in all) cannot be "
            "computed as ltx-core fuses them (it re-quantises the fused weight); run without reference_arithmetic"
        )
    for module in patched:
        module.forward = types.MethodType(_fused_forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
