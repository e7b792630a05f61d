"""Run ltx-pipelines' A2VidPipelineTwoStage on CPU in float32 with test-side patches only (LTX2_REFERENCE.md §15).

Text encoding is bypassed with fixed post-connector contexts; the final video is the decoder output mapped to
[0, 1] without uint8 rounding (untiled unless a ``tiling_config`` is passed).
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


def fake_encode_prompts(contexts, *, device, dtype):
    """Stand-in for ltx-pipelines' ``encode_prompts``: the i-th prompt gets ``contexts[i]``, a post-connector
    ``(video, audio)`` pair, moved to ``device``/``dtype``, with an all-ones mask."""

    def encode_prompts(prompts, ledger, **kwargs):
        outputs = []
        for pair in contexts[: len(prompts)]:
            mask = torch.ones(1, pair[0].shape[1], dtype=torch.int64, device=device)
            outputs.append(EmbeddingsProcessorOutput(*(c.to(device=device, dtype=dtype) for c in pair), mask))
        return outputs

    return encode_prompts


def capturing_video_decode(captured):
    """Stand-in for ``vae_decode_video``: stores the final latent and the decoder output mapped to [0, 1] (no uint8
    rounding) in ``captured``; yields no chunks. A ``tiling_config`` decodes through ltx-core's ``tiled_decode``."""

    def decode(latent, decoder, tiling_config, generator):
        captured["latent"] = latent
        if tiling_config is None:
            video = decoder(latent, generator=generator)
        else:
            video = torch.cat(list(decoder.tiled_decode(latent, tiling_config, generator=generator)), dim=2)
        captured["frames"] = ((video.float() + 1) / 2).clamp(0, 1)
        return iter(())

    return decode


@contextlib.contextmanager
def reference_patches(module, *, captured, contexts, dtype, device, float32_functions=()):
    """Patch a reference pipeline module for a CPU run: fixed contexts, captured decode, ``float32_functions``
    (names in ``module`` that take ``dtype=``) forced to float32 when ``dtype`` is float32, no CUDA sync."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(module, "encode_prompts", fake_encode_prompts(contexts, device=device, dtype=dtype))
        )
        stack.enter_context(mock.patch.object(module, "vae_decode_video", capturing_video_decode(captured)))
        if dtype == torch.float32:
            for name in float32_functions:
                stack.enter_context(mock.patch.object(module, name, _float32(getattr(module, name))))
        if torch.device(device).type == "cpu":
            stack.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
        yield


def set_pipeline_dtype(pipe, ledgers, dtype):
    """Run a constructed reference pipeline in ``dtype``: its own dtype, its components' and its ledgers'."""
    pipe.dtype = dtype
    pipe.pipeline_components.dtype = dtype
    for ledger in ledgers:
        ledger.dtype = dtype
        build = ledger.transformer

        def transformer(build=build):
            # LoRA fusion leaves tensors without a delta in the file dtype: cast them (exact upcast).
            return build().to(dtype)

        ledger.transformer = transformer


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
    tiling_config=None,
):
    """`distilled_lora`: the stage-2 LoRA file (None: none, a distilled checkpoint's recipe). `loras`: `(path,
    strength)` LoRAs of both stages (the reference's `--lora`). `tiling_config`: ltx-core's
    `TilingConfig` of the video decode (None: one piece). `dtype=torch.bfloat16` runs the reference unpatched in its native precision. Returns `(frames (1, 3, F, H, W) in [0, 1], final latent, original audio waveform, sample rate)`."""
    captured = {}
    float32_functions = ("denoise_video_only", "combined_image_conditionings")
    with reference_patches(
        a2vid,
        captured=captured,
        contexts=(positive, negative),
        dtype=dtype,
        device=device,
        float32_functions=float32_functions,
    ):
        pipe = a2vid.A2VidPipelineTwoStage(
            checkpoint_path=str(checkpoint),
            distilled_lora=[
                LoraPathStrengthAndSDOps(str(distilled_lora), distilled_strength, LTXV_LORA_COMFY_RENAMING_MAP)
            ]
            if distilled_lora is not None
            else [],
            spatial_upsampler_path=str(upsampler),
            gemma_root=None,
            loras=[LoraPathStrengthAndSDOps(str(p), s, LTXV_LORA_COMFY_RENAMING_MAP) for p, s in loras],
            device=torch.device(device),
        )
        set_pipeline_dtype(pipe, (pipe.stage_1_model_ledger, pipe.stage_2_model_ledger), dtype)
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
            tiling_config=tiling_config,
        )
    return captured["frames"], captured["latent"], audio.waveform, audio.sampling_rate
