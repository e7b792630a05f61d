"""reference_arithmetic=True on LoRA layers whose base weights are float8 (fp8-cast): ltx-core fuses such a LoRA in
bfloat16 and re-quantises the weight, which cannot be reproduced on the fly; the context refuses it with a ValueError
naming the layer, before any forward (before: NotImplementedError from inside torch on the float8 matmul)."""

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from ltx2_diffusers.loaders.fp8 import enable_fp8_upcast
from ltx2_diffusers.loaders.lora_fusion import reference_lora_arithmetic


def _model(fp8: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    if fp8:
        model[1].weight.data = model[1].weight.data.to(torch.float8_e4m3fn)
        enable_fp8_upcast(model)
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "1"], init_lora_weights=False), model)
    for parameter in model.parameters():
        if parameter.dtype == torch.float8_e4m3fn and parameter is not model[1].base_layer.weight:
            parameter.data = parameter.data.float()  # the LoRA's own A/B stay float32
    return model


def test_float8_base_weights_are_refused_before_any_forward():
    model = _model(fp8=True)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=r"reference_arithmetic=True: LoRA layers on float8 weights \(1, \.\.\.; 1"):
        with reference_lora_arithmetic(model):
            model(torch.randn(2, 8))
    assert calls == []
    assert "forward" not in model[0].__dict__  # nothing left patched


def test_float32_base_weights_still_run():
    model = _model(fp8=False)
    x = torch.randn(2, 8)
    expected = model(x)
    with reference_lora_arithmetic(model):
        out = model(x)
    assert (out - expected).abs().max().item() <= 1e-5
    assert "forward" not in model[0].__dict__
