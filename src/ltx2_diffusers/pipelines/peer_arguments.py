"""diffusers' `LTX2Pipeline` argument names in our pipelines: those with the same meaning are taken
(`num_videos_per_prompt=1`, `attention_kwargs`, `decode_timestep`, `decode_noise_scale`; `guidance_rescale`, an
alias of `rescale_scale`, in `pipeline_checks.resolve_guidance`) and checked here; those
that cannot be honoured are refused with a ValueError that names the argument and what to use instead, not
Python's "unexpected keyword argument" TypeError."""

from __future__ import annotations

import functools

from ..validation import check_lora_strength, finite_float, shown


#: The peer's arguments our pipelines do not take, with what to pass instead (`{audio}`: the audio's guidance).
PEER_ONLY_ARGUMENTS = {
    "timesteps": "pass sigmas=[...] (timestep = sigma * 1000), run through the registered scheduler",
    "spatio_temporal_guidance_blocks": "pass video_guidance=MultiModalGuidance(stg_blocks=[...]){audio}",
    "audio_guidance_scale": "{audio_guidance}(cfg_scale=...)",
    "audio_stg_scale": "{audio_guidance}(stg_scale=...)",
    "audio_modality_scale": "{audio_guidance}(modality_scale=...)",
    "audio_guidance_rescale": "{audio_guidance}(rescale_scale=...)",
    "audio_latents": "{audio_latents}",
    "noise_scale": "stage 1 starts from pure noise (pass latents= for pre-drawn noise)",
    "enable_prompt_enhancement": "pass enhance_prompt=True (the reference's system prompt and seed)",
    "system_prompt": "enhance_prompt=True uses the reference's text-to-video system prompt",
    "prompt_max_new_tokens": "enhance_prompt=True generates as the reference does",
    "prompt_enhancement_kwargs": "enhance_prompt=True generates as the reference does",
    "prompt_enhancement_seed": "enhance_prompt=True is seeded from generator, as the reference",
    "use_cross_timestep": "the transformer always conditions cross-attention as the reference model does",
    "motion_speed": "frame_rate is both the playback rate and the rate the positions are conditioned on",
    "min_seconds": "pass num_frames",
    "max_seconds": "pass num_frames",
}

_GENERATING = {
    "audio": "; audio_guidance=MultiModalGuidance(stg_blocks=[...]) for the audio",
    "audio_guidance": "pass audio_guidance=MultiModalGuidance",
    "audio_latents": "the audio noise is drawn from generator (pre-drawn audio noise is not taken)",
}
_GIVEN = {
    "audio": "",
    "audio_guidance": "the audio is given, not generated, so it has no guidance: leave it out; video_guidance=MultiModalGuidance",
    "audio_latents": "the audio latents come from audio= (the audio is encoded, not generated)",
}


def peer_only_message(pipeline: str, name: str, generates_audio: bool) -> str:
    hint = PEER_ONLY_ARGUMENTS[name].format(**(_GENERATING if generates_audio else _GIVEN))
    return f"{name} is an argument of diffusers' LTX2Pipeline that {pipeline} does not take: {hint}"


def refuses_peer_only_arguments(generates_audio: bool):
    """Decorate a pipeline `__call__`: a keyword of `PEER_ONLY_ARGUMENTS` raises a ValueError naming it and what to
    use instead (any other unknown keyword is Python's TypeError, as before)."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            for name in kwargs:
                if name in PEER_ONLY_ARGUMENTS:
                    raise ValueError(peer_only_message(type(self).__name__, name, generates_audio))
            return method(self, *args, **kwargs)

        return wrapper

    return decorate


def check_peer_arguments(
    num_videos_per_prompt=1, attention_kwargs=None, decode_timestep=None, decode_noise_scale=None, *, vae=None,
    output_type="pil",
) -> None:  # fmt: skip
    """The peer's arguments we take, checked before any model: one video per prompt; `attention_kwargs` a dict
    whose only key is `"scale"` (the only one `LTX2AudioVideoTransformer` reads: the LoRA scale); the decode
    timestep and noise scale finite numbers in [0, 1], for a timestep-conditioned VAE and a decoded output."""
    if isinstance(num_videos_per_prompt, bool) or num_videos_per_prompt != 1:
        raise ValueError(
            f"num_videos_per_prompt must be 1, got {shown(num_videos_per_prompt)}: this pipeline makes one video per "
            "call; call it once per video, each with its own generator"
        )
    if attention_kwargs is not None:
        if not isinstance(attention_kwargs, dict):
            raise TypeError(f"attention_kwargs must be a dict or None, got {type(attention_kwargs).__name__}")
        unused = [key for key in attention_kwargs if key != "scale"]
        if unused:
            raise ValueError(
                f"attention_kwargs has {shown(unused)}: LTX2AudioVideoTransformer reads only 'scale' (the scale of "
                "the user's LoRA adapters)"
            )
        if "scale" in attention_kwargs:
            check_lora_strength('attention_kwargs["scale"]', attention_kwargs["scale"])
    for name, value in (("decode_timestep", decode_timestep), ("decode_noise_scale", decode_noise_scale)):
        if value is None:
            continue
        number = finite_float(value)
        if number is None or not 0 <= number <= 1:
            raise ValueError(f"{name} must be None or a number in [0, 1], got {shown(value)}")
        if output_type == "latent":
            raise ValueError(
                f"{name} applies to the decode, which output_type='latent' skips: pass it to pipe.decode(...)"
            )
        if vae is not None and not getattr(vae.config, "timestep_conditioning", False):
            raise ValueError(
                f"{name}: this video VAE's decoder is not timestep-conditioned (vae.config.timestep_conditioning "
                "is False, as LTX-2.3's): it takes no decode timestep or noise; leave it out"
            )
