"""Run ltx-pipelines' A2VidPipelineTwoStage on CPU in float32 with test-side patches only (LTX2_REFERENCE.md §15).

Text encoding is bypassed with fixed post-connector contexts; the final video is the decoder output mapped to
[0, 1] without tiling or uint8 rounding.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import ltx_pipelines.a2vid_two_stage as a2vid
import torch
from ltx_core.loader import LoraPathStrengthAndSDOps
from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessorOutput
from ltx_pipelines.utils.args import ImageConditioningInput


def _float32(fn):
    def wrapped(*args, **kwargs):
        kwargs["dtype"] = torch.float32
        return fn(*args, **kwargs)

    return wrapped


def run_reference_a2vid(
    *,
    checkpoint,
    upsampler,
    distilled_lora,
    distilled_strength,
    audio_path,
    positive,
    negative,
    seed,
    height,
    width,
    num_frames,
    frame_rate,
    num_inference_steps,
    guider_params,
    images=(),
    audio_start_time=0.0,
    audio_max_duration=None,
    dtype=torch.float32,
    device="cpu",
    loras=(),
):
    """`loras`: `(path, strength)` LoRAs of both stages (the reference's `--lora`). `dtype=torch.bfloat16` runs the reference unpatched in its native precision. Returns `(frames (1, 3, F, H, W) in [0, 1], final latent, original audio waveform, sample rate)`."""
    captured = {}

    def fake_encode_prompts(prompts, ledger, **kwargs):
        mask = torch.ones(1, positive[0].shape[1], dtype=torch.int64, device=device)
        pos, neg = (tuple(c.to(device=device, dtype=dtype) for c in pair) for pair in (positive, negative))
        return [EmbeddingsProcessorOutput(*pos, mask), EmbeddingsProcessorOutput(*neg, mask)]

    def fake_decode(latent, decoder, tiling_config, generator):
        captured["latent"] = latent
        captured["frames"] = ((decoder(latent, generator=generator).float() + 1) / 2).clamp(0, 1)
        return iter(())

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(a2vid, "encode_prompts", fake_encode_prompts))
        stack.enter_context(mock.patch.object(a2vid, "vae_decode_video", fake_decode))
        if dtype == torch.float32:
            stack.enter_context(mock.patch.object(a2vid, "denoise_video_only", _float32(a2vid.denoise_video_only)))
            stack.enter_context(
                mock.patch.object(a2vid, "combined_image_conditionings", _float32(a2vid.combined_image_conditionings))
            )
        if torch.device(device).type == "cpu":
            stack.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
        pipe = a2vid.A2VidPipelineTwoStage(
            checkpoint_path=str(checkpoint),
            distilled_lora=[
                LoraPathStrengthAndSDOps(str(distilled_lora), distilled_strength, LTXV_LORA_COMFY_RENAMING_MAP)
            ],
            spatial_upsampler_path=str(upsampler),
            gemma_root=None,
            loras=[LoraPathStrengthAndSDOps(str(p), s, LTXV_LORA_COMFY_RENAMING_MAP) for p, s in loras],
            device=torch.device(device),
        )
        pipe.dtype = dtype
        pipe.pipeline_components.dtype = dtype
        for ledger in (pipe.stage_1_model_ledger, pipe.stage_2_model_ledger):
            ledger.dtype = dtype
            build = ledger.transformer

            def transformer(build=build):
                # LoRA fusion leaves tensors without a delta in the file dtype: cast them (exact upcast).
                return build().to(dtype)

            ledger.transformer = transformer
        _, audio = pipe(
            prompt="unused",
            negative_prompt="unused",
            seed=seed,
            height=height,
            width=width,
            num_frames=num_frames,
            frame_rate=frame_rate,
            num_inference_steps=num_inference_steps,
            video_guider_params=guider_params,
            images=[ImageConditioningInput(*image) for image in images],
            audio_path=str(audio_path),
            audio_start_time=audio_start_time,
            audio_max_duration=audio_max_duration if audio_max_duration is not None else num_frames / frame_rate,
        )
    return captured["frames"], captured["latent"], audio.waveform, audio.sampling_rate
