"""The small call every pipeline-family test module makes: tiny 64x64, 9-frame latent calls on the tiny converted
folder, with the same contexts and guidance, for any of the three pipelines."""

import torch
from prompt_contexts import contexts

from ltx2_diffusers import LTX2AudioToVideoPipeline


def tiny_call_args(pipe, guidance, *, steps: int = 2, seed: int = 0, audio=None) -> dict:
    """Keyword arguments of a tiny call of `pipe`: audio-to-video takes `audio` (when given), the audio-video
    pipelines the same guidance for the audio."""
    args = dict(
        prompt_contexts=contexts(0, "2.3", tokens=16),
        negative_prompt_contexts=contexts(1, "2.3", tokens=16),
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=steps,
        video_guidance=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    if isinstance(pipe, LTX2AudioToVideoPipeline):
        if audio is not None:
            args["audio"] = audio
    else:
        args["audio_guidance"] = guidance
    return args
