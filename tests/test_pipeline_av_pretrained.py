"""The text/image->audio+video pipelines load from a converted folder and from the original single file (the same
components as audio-to-video) and render the same latents either way; `model_variant` selects the recipe."""

import json
import shutil

import PIL.Image
import pytest
import torch
from factories import build_checkpoint, build_lora, build_upsampler
from test_pipeline_av_parity import contexts

from ltx2_diffusers import LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.convert import convert_checkpoint


GUIDANCE = MultiModalGuidance(stg_blocks=[1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("av_pretrained")
    checkpoint = build_checkpoint(root / "ltx-2.3.safetensors", "2.3", seed=17, dtype=torch.float32)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=18, dtype=torch.float32)
    lora = build_lora(root / "lora.safetensors", checkpoint, seed=19, dtype=torch.float32)
    out = root / "converted"
    convert_checkpoint(
        checkpoint, out, spatial_upsampler_path=upsampler, distilled_lora=lora, distilled_lora_scale=0.7
    )
    PIL.Image.new("RGB", (96, 64), (200, 40, 90)).save(root / "image.png")
    return dict(root=root, out=out, checkpoint=checkpoint, upsampler=upsampler, lora=lora)


def call(pipe, **kwargs):
    args = dict(
        prompt_contexts=contexts(0, "2.3"), negative_prompt_contexts=contexts(1, "2.3"), height=128, width=128,
        num_frames=9, num_inference_steps=2, video_guidance=GUIDANCE, audio_guidance=GUIDANCE,
        generator=torch.Generator().manual_seed(3), output_type="latent",
    )  # fmt: skip
    args.update(kwargs)
    return pipe(**args)


@pytest.mark.parametrize("cls", [LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline])
def test_from_pretrained_equals_from_single_file(converted, cls):
    pipe = cls.from_pretrained(converted["out"])
    assert type(pipe) is cls and pipe.distilled_lora is not None and pipe.config.distilled_lora_scale == 0.7
    assert pipe.config.model_variant == "dev"
    single = cls.from_single_file(
        converted["checkpoint"], spatial_upsampler_path=converted["upsampler"],
        distilled_lora=(converted["lora"], 0.7), torch_dtype=torch.float32,
    )  # fmt: skip
    extra = {"image": converted["root"] / "image.png"} if cls is LTX2ImageToAudioVideoPipeline else {}
    ours, expected = call(pipe, **extra), call(single, **extra)
    assert ours.frames.shape == (1, 128, 2, 4, 4) and ours.audio.shape[0] == 1 and ours.audio_sample_rate is None
    assert (ours.frames - expected.frames).abs().max().item() <= 1e-5  # LoRA in PEFT format vs original: rounding
    assert (ours.audio - expected.audio).abs().max().item() <= 1e-5


def test_model_variant_from_the_folder_and_the_single_file(converted, tmp_path):
    index = json.loads((converted["out"] / "model_index.json").read_text())
    folder = tmp_path / "distilled"
    shutil.copytree(converted["out"], folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "model_variant": "distilled"}))
    pipe = LTX2AudioVideoPipeline.from_pretrained(folder)
    assert pipe.config.model_variant == "distilled" and pipe.version_defaults().video_guidance is None
    single = LTX2AudioVideoPipeline.from_single_file(
        converted["checkpoint"], spatial_upsampler_path=converted["upsampler"], model_variant="distilled",
        torch_dtype=torch.float32,
    )  # fmt: skip
    assert single.config.model_variant == "distilled" and single.distilled_lora is None
    kwargs = dict(negative_prompt_contexts=None, video_guidance=None, audio_guidance=None, num_inference_steps=None)
    diff = (call(single, **kwargs).frames - call(pipe, **kwargs).frames).abs().max().item()
    assert diff <= 1e-5, diff  # the same recipe from either source (converted weights: float rounding)
    with pytest.raises(ValueError, match="model_variant"):
        LTX2AudioVideoPipeline.from_single_file(converted["checkpoint"], model_variant="turbo")


def test_save_pretrained_round_trip_keeps_the_class_and_variant(converted, tmp_path):
    pipe = LTX2AudioVideoPipeline.from_pretrained(converted["out"])
    pipe.register_to_config(model_variant="distilled")
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LTX2AudioVideoPipeline"] and index["model_variant"] == "distilled"
    again = LTX2AudioVideoPipeline.from_pretrained(tmp_path / "saved")
    assert type(again) is LTX2AudioVideoPipeline and again.config.model_variant == "distilled"
    assert again.distilled_lora is not None
    kwargs = dict(negative_prompt_contexts=None, video_guidance=None, audio_guidance=None, num_inference_steps=None)
    diff = (call(again, **kwargs).frames - call(pipe, **kwargs).frames).abs().max().item()
    assert diff <= 1e-5, diff  # equal weights; CPU kernels round differently on differently aligned buffers
