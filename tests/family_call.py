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


#: The model components of the family's pipelines (shared by `family_pipes`).
FAMILY_MODELS = ("transformer", "connectors", "vae", "audio_vae", "latent_upsampler", "vocoder")


def family_pipes(folder) -> dict:
    """The three pipelines of the family sharing the components of the converted `folder` ("av", "a2v", "i2av"),
    progress bars off."""
    from ltx2_diffusers import LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline

    av = LTX2AudioVideoPipeline.from_pretrained(folder)
    pipes = {
        "av": av,
        "a2v": LTX2AudioToVideoPipeline.from_pipe(av),
        "i2av": LTX2ImageToAudioVideoPipeline.from_pipe(av),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def family_call(pipe, guidance, audio, image, /, **kwargs):
    """A tiny call of any family pipeline (`tiny_call_args`) with `audio` at 16 kHz for audio-to-video and `image`
    for image-to-audio-video; `kwargs` (`audio` and `image` included) override and go to the pipeline as given."""
    from ltx2_diffusers import LTX2ImageToAudioVideoPipeline

    args = tiny_call_args(pipe, guidance)
    if isinstance(pipe, LTX2AudioToVideoPipeline):
        args.update(audio=audio, audio_sample_rate=16000)
    if isinstance(pipe, LTX2ImageToAudioVideoPipeline):
        args.update(image=image)
    args.update(kwargs)
    return pipe(**args)
