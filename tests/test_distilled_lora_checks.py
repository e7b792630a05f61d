"""A distilled LoRA that cannot be applied is refused with a ValueError naming the module: a lora_A / lora_B pair of
mismatched rank when the store is built, and a pair that does not fit the transformer in check_inputs, before any
transformer forward (not at stage 2, after stage 1's compute)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_upsampler
from test_pipeline import call

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2DistilledLoRA


def test_mismatched_rank_is_refused_when_built():
    with pytest.raises(ValueError, match=r"distilled LoRA 0: lora_A \[2, 4\] and lora_B \[6, 3\]"):
        LTX2DistilledLoRA.from_state_dict(
            {"transformer.0.lora_A.weight": torch.randn(2, 4), "transformer.0.lora_B.weight": torch.randn(6, 3)}
        )
    with pytest.raises(ValueError, match="lora_A"):
        LTX2DistilledLoRA.from_state_dict(
            {"transformer.0.lora_A.weight": torch.randn(2, 4, 1), "transformer.0.lora_B.weight": torch.randn(6, 2)}
        )


def test_check_fits_names_the_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    misfit = LTX2DistilledLoRA.from_state_dict(
        {"transformer.0.lora_A.weight": torch.randn(2, 5), "transformer.0.lora_B.weight": torch.randn(6, 2)}
    )
    with pytest.raises(ValueError, match=r"distilled LoRA 0: A\[2, 5\] B\[6, 2\] do not fit the weight \[6, 4\]"):
        misfit.check_fits(model)
    absent = LTX2DistilledLoRA.from_state_dict(
        {"transformer.7.lora_A.weight": torch.randn(2, 4), "transformer.7.lora_B.weight": torch.randn(6, 2)}
    )
    with pytest.raises(ValueError, match="'7' is not a module of the transformer"):
        absent.check_fits(model)
    with pytest.raises(ValueError, match="not a module"):
        with absent.applied(model, 1.0):
            pass
    assert type(model[0]) is torch.nn.Linear


def test_a_misfit_distilled_lora_is_refused_before_any_compute(tmp_path):
    checkpoint = build_checkpoint(tmp_path / "ltx-2.3-tiny.safetensors", "2.3", seed=5)
    upsampler = build_upsampler(tmp_path / "upsampler.safetensors", seed=6)
    rate = 16000
    sf.write(tmp_path / "a.wav", np.sin(np.arange(rate) / rate * 2 * np.pi * 220) * 0.3, rate)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, torch_dtype=torch.float32
    )
    name, module = next((n, m) for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear))
    out_features, in_features = module.weight.shape
    misfit = LTX2DistilledLoRA.from_state_dict({
        f"transformer.{name}.lora_A.weight": torch.randn(2, in_features + 1),
        f"transformer.{name}.lora_B.weight": torch.randn(out_features, 2),
    })  # fmt: skip
    pipe.register_modules(distilled_lora=misfit)
    forwards = []
    pipe.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(ValueError, match=f"distilled LoRA {name}: .* do not fit the weight"):
        call(pipe, tmp_path / "a.wav", stage_2=True)
    assert forwards == []


def test_one_linear_twice_is_refused_and_left_clean():
    """Two targets resolving to one linear (a name and its `.base_layer`-free twin), or `applied` nested, would
    overwrite the delta and break the restore (the class left swapped, every `weight` read a KeyError)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    store = LTX2DistilledLoRA.from_state_dict(
        {"transformer.0.lora_A.weight": torch.randn(2, 4), "transformer.0.lora_B.weight": torch.randn(6, 2)}
    )
    x = torch.randn(3, 4)
    plain = model(x)
    with store.applied(model, 0.5):
        with pytest.raises(ValueError, match="already carries a distilled LoRA"):
            with store.applied(model, 0.5):
                pass
        inside = model(x)
    assert not torch.equal(inside, plain)
    assert type(model[0]) is torch.nn.Linear and torch.equal(model(x), plain)
