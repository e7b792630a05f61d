"""The distilled LoRA stored in a converted folder: EVERY tensor (lora_A and lora_B, transformer and connector
keys) equals its source tensor exactly, or its exact cast when the conversion asks for another dtype."""

import re

import pytest
import torch
from factories import build_lora, cached_checkpoint
from safetensors.torch import load_file

from ltx2_diffusers.convert import convert_checkpoint


# The original (ComfyUI) names and the diffusers names of the same modules: block linears keep their names.
_RENAMES = (
    (r"^diffusion_model\.transformer_blocks\.", "transformer.transformer_blocks."),
    (
        r"^diffusion_model\.video_embeddings_connector\.transformer_1d_blocks\.",
        "connectors.video_connector.transformer_blocks.",
    ),
    (
        r"^diffusion_model\.audio_embeddings_connector\.transformer_1d_blocks\.",
        "connectors.audio_connector.transformer_blocks.",
    ),
)


def _diffusers_name(key):
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise AssertionError(f"unexpected LoRA key {key}")


@pytest.mark.parametrize(
    "lora_dtype, convert_dtype",
    [
        (torch.float32, None),  # kept as is (a cast through a narrower dtype would show)
        (torch.float32, "bfloat16"),  # an exact cast to the asked dtype
        (torch.bfloat16, "float32"),  # an exact upcast
    ],
    ids=["fp32-kept", "fp32-to-bf16", "bf16-to-fp32"],
)
@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_every_stored_lora_tensor_equals_its_source(tmp_path, version, lora_dtype, convert_dtype):
    checkpoint = cached_checkpoint("checkpoint", version, seed=11)
    lora = build_lora(
        tmp_path / "lora.safetensors", checkpoint, seed=13, include_connectors=True, alpha=8.0, dtype=lora_dtype
    )
    convert_checkpoint(checkpoint, tmp_path / "out", distilled_lora=lora, dtype=convert_dtype)
    stored = load_file(tmp_path / "out" / "distilled_lora" / "pytorch_lora_weights.safetensors")
    source = {k: v for k, v in load_file(lora).items() if not k.endswith(".alpha")}  # ltx-core ignores alphas
    expected_dtype = lora_dtype if convert_dtype is None else getattr(torch, convert_dtype)

    expected = {_diffusers_name(k): v for k, v in source.items()}
    assert set(stored) == set(expected)
    assert sum(k.endswith(".lora_B.weight") for k in stored) == sum(k.endswith(".lora_A.weight") for k in stored)
    assert any(k.startswith("connectors.") for k in stored) and any(k.startswith("transformer.") for k in stored)
    wrong = []
    for key, value in expected.items():
        got = stored[key]
        if got.dtype != expected_dtype or got.shape != value.shape or not torch.equal(got, value.to(expected_dtype)):
            wrong.append(f"{key}: max|delta| {(got.double() - value.double()).abs().max().item():.3g} ({got.dtype})")
    assert not wrong, f"{len(wrong)} of {len(expected)} stored LoRA tensors differ from the source: {wrong[:4]}"
