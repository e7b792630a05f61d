"""Stage helpers shared by the LTX-2 pipelines: latent token states, conditioning, noise.

States hold PATCHIFIED tokens `(B, T, C)` as the reference does (noise is drawn in this layout), plus the clean
latent, a float32 denoise mask `(B, T, 1)` (1 = generate, 0 = keep) and the RoPE coordinates of every token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..models.rope import audio_coords, video_coords
from ..validation import AUDIO_LATENTS_PER_SECOND, audio_latent_frames  # noqa: F401  (stages.audio_latent_frames)


VIDEO_SCALE_FACTORS = (8, 32, 32)


@dataclass(frozen=True)
class LatentState:
    latent: torch.Tensor
    clean: torch.Tensor
    denoise_mask: torch.Tensor
    coords: torch.Tensor
    num_tokens: int  # tokens of the generated grid; appended conditioning tokens follow

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise_mask * sigma


def video_latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    t, h, w = VIDEO_SCALE_FACTORS
    return (num_frames - 1) // t + 1, height // h, width // w


def patchify_video(latent: torch.Tensor) -> torch.Tensor:
    """`(B, C, F, H, W)` -> `(B, F*H*W, C)` in (frame, row, column) token order."""
    return latent.flatten(2).transpose(1, 2)


def unpatchify_video(tokens: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    return tokens.transpose(1, 2).unflatten(2, size)


def video_state(
    size: tuple[int, int, int],
    channels: int,
    fps: float,
    *,
    batch_size: int = 1,
    initial_latent: torch.Tensor | None = None,
    dtype: torch.dtype,
    device: torch.device,
) -> LatentState:
    """Fresh video state (zeros, or `initial_latent` `(B, C, F, H, W)`), every token to be generated."""
    if initial_latent is None:
        tokens = torch.zeros(batch_size, size[0] * size[1] * size[2], channels, dtype=dtype, device=device)
    else:
        tokens = patchify_video(initial_latent.to(device=device, dtype=dtype))
    coords = video_coords(tokens.shape[0], *size, fps=fps, device=device, dtype=dtype)
    mask = torch.ones(*tokens.shape[:2], 1, dtype=torch.float32, device=device)
    return LatentState(tokens, tokens.clone(), mask, coords, tokens.shape[1])


def audio_state(tokens: torch.Tensor, *, frozen: bool) -> LatentState:
    """Audio tokens `(B, T, 128)`, all generated (mask 1) or all kept (`frozen`: mask 0, timesteps 0 while its
    sigma still follows the step)."""
    coords = audio_coords(tokens.shape[0], tokens.shape[1], device=tokens.device)
    mask = torch.full((*tokens.shape[:2], 1), 0.0 if frozen else 1.0, dtype=torch.float32, device=tokens.device)
    return LatentState(tokens, tokens.clone(), mask, coords, tokens.shape[1])


def frozen_audio_state(tokens: torch.Tensor, dtype: torch.dtype) -> LatentState:
    """Audio tokens `(B, T, 128)` that are never denoised (audio-to-video's given audio)."""
    return audio_state(tokens.to(dtype), frozen=True)


def condition_latent_frame(state: LatentState, latent: torch.Tensor, frame: int, strength: float) -> LatentState:
    """Replace the tokens of latent frame `frame` by `latent` `(B, C, 1, H, W)`; mask `1 - strength` there."""
    tokens = patchify_video(latent.to(state.latent.dtype))
    start = frame * tokens.shape[1]
    stop = start + tokens.shape[1]
    latent_tokens, clean, mask = state.latent.clone(), state.clean.clone(), state.denoise_mask.clone()
    latent_tokens[:, start:stop] = tokens
    clean[:, start:stop] = tokens
    mask[:, start:stop] = 1.0 - strength
    return replace(state, latent=latent_tokens, clean=clean, denoise_mask=mask)


def append_keyframe(state: LatentState, latent: torch.Tensor, frame_index: int, strength: float, fps: float):
    """Append keyframe tokens for pixel frame `frame_index` (positions of a 1-frame latent shifted in time)."""
    tokens = patchify_video(latent.to(state.latent.dtype))
    _, _, _, height, width = latent.shape
    coords = video_coords(
        tokens.shape[0], 1, height, width, causal_offset=VIDEO_SCALE_FACTORS[0], fps=1.0, device=tokens.device
    )
    time = coords[:, 0] + frame_index
    coords = torch.cat([(time / fps)[:, None], coords[:, 1:]], dim=1)
    # The reference builds this mask in the latent dtype before concatenating with the float32 mask.
    mask_value = torch.full((*tokens.shape[:2], 1), 1.0 - strength, dtype=state.latent.dtype, device=tokens.device)
    return replace(
        state,
        latent=torch.cat([state.latent, tokens], dim=1),
        clean=torch.cat([state.clean, tokens], dim=1),
        denoise_mask=torch.cat([state.denoise_mask, mask_value.float()], dim=1),
        coords=torch.cat([state.coords.float(), coords], dim=2),
    )


def add_noise(
    state: LatentState, generator: torch.Generator | None, noise_scale, noise: torch.Tensor | None = None
) -> LatentState:
    """Draw noise in the token layout and dtype (always, even at scale 0; or use `noise`) and mix it in where the
    mask says: `noise * m + latent * (1 - m)` with `m = mask * noise_scale`, in float32."""
    if noise is None:
        device = generator.device if generator is not None else state.latent.device
        noise = torch.randn(state.latent.shape, generator=generator, device=device, dtype=state.latent.dtype)
    elif noise.shape != state.latent.shape:
        raise ValueError(f"latents must have {tuple(state.latent.shape)} tokens/channels, got {tuple(noise.shape)}")
    scaled_mask = state.denoise_mask * noise_scale
    mixed = noise.to(state.latent.device) * scaled_mask + state.latent * (1 - scaled_mask)
    return replace(state, latent=mixed.to(state.latent.dtype))


def blend_with_clean(denoised: torch.Tensor, state: LatentState) -> torch.Tensor:
    """Keep conditioned tokens clean: `denoised * mask + clean * (1 - mask)` in float32, back to the input dtype."""
    return (denoised * state.denoise_mask + state.clean.float() * (1 - state.denoise_mask)).to(denoised.dtype)


def x0_from_velocity(latent: torch.Tensor, velocity: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """X0 prediction `latent - velocity * timesteps` in float32, in the latent dtype (ltx-core's `X0Model`)."""
    return (latent.float() - velocity.float() * timesteps.float()).to(latent.dtype)
