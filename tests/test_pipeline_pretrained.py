"""A converted folder loads into LTX2AudioToVideoPipeline (directly, and through DiffusionPipeline with the
custom-pipeline shim) and renders the same video as the pipeline built from the original files."""

import json

import pytest
import torch
from diffusers import DiffusionPipeline
from factories import build_checkpoint, build_lora, build_upsampler
from test_pipeline import call

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.convert import convert_checkpoint


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("pretrained")
    checkpoint = build_checkpoint(root / "ltx-2.3.safetensors", "2.3", seed=7, dtype=torch.float32)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=8, dtype=torch.float32)
    lora = build_lora(root / "lora.safetensors", checkpoint, seed=9, dtype=torch.float32)
    out = root / "converted"
    convert_checkpoint(
        checkpoint, out, spatial_upsampler_path=upsampler, distilled_lora=lora, distilled_lora_scale=0.7
    )
    rate = 16000
    t = np.arange(int(rate * 0.5)) / rate
    sf.write(root / "a.wav", np.stack([np.sin(2 * np.pi * 300 * t), np.cos(2 * np.pi * 5 * t)], 1) * 0.3, rate)
    reference = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.7), torch_dtype=torch.float32
    )
    return dict(out=out, audio=root / "a.wav", reference=reference)


def test_from_pretrained_without_remote_code_equals_single_file(converted):
    index = json.loads((converted["out"] / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LTX2AudioToVideoPipeline"]
    pipe = LTX2AudioToVideoPipeline.from_pretrained(converted["out"])
    assert type(pipe) is LTX2AudioToVideoPipeline
    assert pipe.config.distilled_lora_scale == 0.7
    assert pipe.distilled_lora is not None
    expected = call(converted["reference"], converted["audio"], output_type="latent").frames
    actual = call(pipe, converted["audio"], output_type="latent").frames
    assert (actual - expected).abs().max().item() <= 1e-5  # LoRA in PEFT format vs original format: float rounding


def test_diffusion_pipeline_with_trust_remote_code(converted):
    pipe = DiffusionPipeline.from_pretrained(converted["out"], trust_remote_code=True)
    assert type(pipe).__name__ == "LTX2AudioToVideoPipeline"
    # the shim resolves to our class; the distilled adapter is loaded by our from_pretrained only
    assert pipe.transformer.config.num_layers == converted["reference"].transformer.config.num_layers
