"""Run ltx-pipelines' TI2VidTwoStagesPipeline and DistilledPipeline on CPU in float32 (test-side patches only).

The patches are ``reference_pipeline``'s: text encoding is bypassed with fixed post-connector contexts; the final
video is the decoder output mapped to [0, 1] without tiling or uint8 rounding. The audio is the reference's own
``decode_audio`` (audio VAE decoder + vocoder) output at the vocoder's rate.
"""

from __future__ import annotations

import ltx_pipelines.distilled as distilled
import ltx_pipelines.ti2vid_two_stages as ti2vid
import torch
from ltx_core.loader import LoraPathStrengthAndSDOps
from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
from ltx_pipelines.utils.args import ImageConditioningInput
from ltx_pipelines.utils.constants import LTX_2_3_PARAMS
from reference_pipeline import reference_patches, set_pipeline_dtype


# Functions of the pipeline modules that take `dtype=` (bf16 in the reference), forced to float32 for fp32 runs.
_FLOAT32_FUNCTIONS = ("denoise_audio_video", "combined_image_conditionings")


def run_reference_ti2vid(
    *,
    checkpoint,
    upsampler,
    distilled_lora,
    distilled_strength,
    positive,
    negative,
    seed,
    height,
    width,
    num_frames,
    frame_rate,
    num_inference_steps,
    video_guider_params=None,
    audio_guider_params=None,
    images=(),
    dtype=torch.float32,
    device="cpu",
):
    """``TI2VidTwoStagesPipeline`` on the given files. ``positive`` / ``negative``: post-connector ``(video, audio)``
    contexts. Guider params default to ltx-pipelines' LTX-2.3 defaults (video cfg 3, audio cfg 7, STG on block 28:
    pass blocks that exist in a tiny model). ``images``: ``(path, frame_index, strength[, crf])`` tuples.

    Returns ``(frames (1, 3, F, H, W) in [0, 1], final video latent, waveform (channels, samples), sample rate)``.
    """
    captured = {}
    video_guider_params = video_guider_params or LTX_2_3_PARAMS.video_guider_params
    audio_guider_params = audio_guider_params or LTX_2_3_PARAMS.audio_guider_params
    with reference_patches(
        ti2vid,
        captured=captured,
        contexts=(positive, negative),
        dtype=dtype,
        device=device,
        float32_functions=_FLOAT32_FUNCTIONS,
    ):
        pipe = ti2vid.TI2VidTwoStagesPipeline(
            checkpoint_path=str(checkpoint),
            distilled_lora=[
                LoraPathStrengthAndSDOps(str(distilled_lora), distilled_strength, LTXV_LORA_COMFY_RENAMING_MAP)
            ],
            spatial_upsampler_path=str(upsampler),
            gemma_root=None,
            loras=[],
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
            video_guider_params=video_guider_params,
            audio_guider_params=audio_guider_params,
            images=[ImageConditioningInput(*image) for image in images],
        )
    return captured["frames"], captured["latent"], audio.waveform, audio.sampling_rate


def run_reference_distilled(
    *,
    checkpoint,
    upsampler,
    positive,
    seed,
    height,
    width,
    num_frames,
    frame_rate,
    images=(),
    dtype=torch.float32,
    device="cpu",
):
    """``DistilledPipeline`` (8 distilled sigmas, then 3 stage-2 sigmas, no guidance) on the given files.

    Returns ``(frames (1, 3, F, H, W) in [0, 1], final video latent, waveform (channels, samples), sample rate)``.
    """
    captured = {}
    with reference_patches(
        distilled,
        captured=captured,
        contexts=(positive,),
        dtype=dtype,
        device=device,
        float32_functions=_FLOAT32_FUNCTIONS,
    ):
        pipe = distilled.DistilledPipeline(
            distilled_checkpoint_path=str(checkpoint),
            gemma_root=None,
            spatial_upsampler_path=str(upsampler),
            loras=[],
            device=torch.device(device),
        )
        set_pipeline_dtype(pipe, (pipe.model_ledger,), dtype)
        _, audio = pipe(
            prompt="unused",
            seed=seed,
            height=height,
            width=width,
            num_frames=num_frames,
            frame_rate=frame_rate,
            images=[ImageConditioningInput(*image) for image in images],
        )
    return captured["frames"], captured["latent"], audio.waveform, audio.sampling_rate
