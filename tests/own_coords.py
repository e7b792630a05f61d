"""Transformer parity where each side builds its OWN inputs' positions from the same latent sizes.

The reference gets ltx-core ``Modality`` inputs whose positions come from ltx-core's own latent tools and patchifiers
(:func:`factories.transformer_inputs`); ours gets the same latents, contexts and timesteps, with coordinates built
by our pipeline helpers (``video_state`` / ``frozen_audio_state``) or by the model itself from the sizes. A
coordinate bug on our side (a lost causal shift, a wrong fps or scale factor) then shows up as a parity failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from factories import transformer_inputs
from ltx_core.guidance.perturbations import BatchedPerturbationConfig

from ltx2_diffusers.pipelines.ltx2_stages import frozen_audio_state, video_state


@dataclass(frozen=True)
class Sizes:
    frames: int = 3
    height: int = 2
    width: int = 3
    audio_frames: int = 7
    fps: float = 24.0
    sigma: float = 0.7


def reference_inputs(config: dict, sizes: Sizes = Sizes(), seed: int = 0) -> tuple:
    """``(video, audio)`` ltx-core modalities; positions by ltx-core (``config``: full checkpoint config)."""
    return transformer_inputs(
        config,
        frames=sizes.frames,
        height=sizes.height,
        width=sizes.width,
        audio_frames=sizes.audio_frames,
        sigma=sizes.sigma,
        fps=sizes.fps,
        seed=seed,
    )


@torch.no_grad()
def run_reference(model, video, audio) -> tuple[torch.Tensor, torch.Tensor]:
    return model(video, audio, BatchedPerturbationConfig.empty(video.latent.shape[0]))


@torch.no_grad()
def run_ours(model, video, audio, sizes: Sizes = Sizes(), coords: str = "pipeline") -> tuple[torch.Tensor, ...]:
    """Our transformer on the reference's latents, contexts and timesteps, with OUR coordinates for ``sizes``:
    ``coords="pipeline"`` (the pipeline's latent-state helpers) or ``"model"`` (the model builds them)."""
    mult = model.config.timestep_scale_multiplier
    kwargs = dict(
        hidden_states=video.latent,
        audio_hidden_states=audio.latent,
        encoder_hidden_states=video.context,
        audio_encoder_hidden_states=audio.context,
        timestep=video.timesteps.squeeze(-1) * mult,
        audio_timestep=audio.timesteps.squeeze(-1) * mult,
        sigma=video.sigma * mult,
        audio_sigma=audio.sigma * mult,
        use_cross_timestep=True,
        return_dict=False,
    )
    size = (sizes.frames, sizes.height, sizes.width)
    if coords == "pipeline":
        state = video_state(
            size,
            video.latent.shape[-1],
            sizes.fps,
            batch_size=video.latent.shape[0],
            dtype=video.latent.dtype,
            device=video.latent.device,
        )
        kwargs.update(
            video_coords=state.coords, audio_coords=frozen_audio_state(audio.latent, audio.latent.dtype).coords
        )
    elif coords == "model":
        kwargs.update(
            num_frames=sizes.frames,
            height=sizes.height,
            width=sizes.width,
            audio_num_frames=sizes.audio_frames,
            fps=sizes.fps,
        )
    else:
        raise ValueError(f"coords must be 'pipeline' or 'model', got {coords!r}")
    return model(**kwargs)


def max_abs_diff(ours, reference) -> float:
    return max((a - b).abs().max().item() for a, b in zip(ours, reference))
