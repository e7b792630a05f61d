"""LTX-2 rotary position embeddings: token coordinates, frequency tables and their application.

Coordinates are `[start, end)` bounds per axis, shape `(batch, num_axes, num_tokens, 2)`: video axes are
(time in seconds, height in pixels, width in pixels), audio has one time axis in seconds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .device_cache import cached_on_device, device_key


ROPE_TYPES = ("interleaved", "split")


def video_coords(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    *,
    scale_factors: tuple[int, int, int] = (8, 32, 32),
    causal_offset: int = 1,
    fps: float = 24.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pixel-space `[start, end)` bounds of every latent video token in (frame, row, column) token order.

    The time axis gets the causal fix of the video VAE (the first latent frame covers one pixel frame) and is
    divided by `fps`; the result is cast to `dtype` last (the reference pipelines use bfloat16 here).
    """
    grid = torch.meshgrid(
        torch.arange(num_frames, dtype=torch.float32, device=device),
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    starts = torch.stack([g.flatten() for g in grid], dim=0)  # (3, T)
    bounds = torch.stack([starts, starts + 1], dim=-1)  # (3, T, 2)
    scale = torch.tensor(scale_factors, dtype=torch.float32, device=device).view(3, 1, 1)
    pixels = bounds * scale
    time = (pixels[0] + causal_offset - scale_factors[0]).clamp(min=0) / fps
    pixels = torch.cat([time[None], pixels[1:]], dim=0)
    return pixels.unsqueeze(0).expand(batch_size, -1, -1, -1).to(dtype)


def audio_coords(
    batch_size: int,
    num_frames: int,
    *,
    sampling_rate: int = 16000,
    hop_length: int = 160,
    scale_factor: int = 4,
    causal_offset: int = 1,
    shift: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`[start, end)` bounds in seconds of every audio latent frame, shape `(batch, 1, num_frames, 2)`, float32."""
    index = torch.arange(shift, num_frames + shift, dtype=torch.float32, device=device)

    def to_seconds(latent_index: torch.Tensor) -> torch.Tensor:
        mel = (latent_index * scale_factor + causal_offset - scale_factor).clamp(min=0)
        return mel * hop_length / sampling_rate

    bounds = torch.stack([to_seconds(index), to_seconds(index + 1)], dim=-1)
    return bounds[None, None].expand(batch_size, 1, -1, -1)


def _frequency_grid(theta: float, num_axes: int, dim: int, double_precision: bool) -> torch.Tensor:
    """Angular frequencies `theta**linspace(0, 1, n) * pi/2` with `n = dim // (2 * num_axes)` (float32 result)."""
    n = dim // (2 * num_axes)
    if double_precision:
        powers = np.power(theta, np.linspace(0.0, 1.0, n, dtype=np.float64))
        return torch.tensor(powers * math.pi / 2, dtype=torch.float32)
    powers = theta ** torch.linspace(0.0, 1.0, n, dtype=torch.float32)
    return powers * math.pi / 2


def _device_frequency_grid(
    theta: float, num_axes: int, dim: int, double_precision: bool, device: torch.device
) -> torch.Tensor:
    """`_frequency_grid` on `device`, copied there once (`device_cache`: a copy from host memory per forward would
    wait for the device's queued work each time). Shared between calls: never modified in place."""
    key = ("rope_grid", theta, num_axes, dim, double_precision, device_key(device))
    return cached_on_device(key, lambda: _frequency_grid(theta, num_axes, dim, double_precision).to(device))


def rope_frequencies(
    coords: torch.Tensor,
    *,
    dim: int,
    max_pos: tuple[int, ...] | list[int],
    num_heads: int,
    theta: float = 10000.0,
    rope_type: str = "split",
    double_precision: bool = True,
    use_middle: bool = True,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(cos, sin)` for `apply_rotary_emb`.

    `coords` is `(B, num_axes, T, 2)` bounds (or `(B, num_axes, T)` positions). Positions are reduced in the
    dtype of `coords` (middle of the bounds, divided by `max_pos`), angles and cos/sin are float32 and the result
    is cast to `out_dtype`. Split layout: `(B, heads, T, dim / (2 heads))`; interleaved: `(B, T, dim)`.
    """
    if coords.ndim == 4:
        positions = (coords[..., 0] + coords[..., 1]) / 2.0 if use_middle else coords[..., 0]
    else:
        positions = coords
    num_axes = positions.shape[1]
    if len(max_pos) != num_axes:
        raise ValueError(f"coords have {num_axes} axes but max_pos {list(max_pos)} has {len(max_pos)} entries")
    fractions = torch.stack([positions[:, i] / max_pos[i] for i in range(num_axes)], dim=-1)  # (B, T, A)
    grid = _device_frequency_grid(float(theta), num_axes, dim, double_precision, fractions.device)
    angles = (grid * (fractions.unsqueeze(-1) * 2 - 1)).transpose(-1, -2).flatten(2)  # (B, T, n*A), axis minor
    cos, sin = angles.cos(), angles.sin()
    batch, tokens = cos.shape[:2]
    if rope_type == "split":
        pad = dim // 2 - cos.shape[-1]
        cos = torch.cat([torch.ones_like(cos[..., :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[..., :pad]), sin], dim=-1)
        cos = cos.reshape(batch, tokens, num_heads, -1).transpose(1, 2)
        sin = sin.reshape(batch, tokens, num_heads, -1).transpose(1, 2)
    elif rope_type == "interleaved":
        pad = dim % (2 * num_axes)
        cos = cos.repeat_interleave(2, dim=-1)
        sin = sin.repeat_interleave(2, dim=-1)
        cos = torch.cat([torch.ones_like(cos[..., :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[..., :pad]), sin], dim=-1)
    else:
        raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
    return cos.to(out_dtype), sin.to(out_dtype)


def apply_rotary_emb(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor], rope_type: str) -> torch.Tensor:
    """Rotate `x` of shape `(B, T, heads * head_dim)` by `freqs` from `rope_frequencies` (same `rope_type`)."""
    cos, sin = freqs
    if rope_type == "interleaved":
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * cos + rotated * sin
    heads, tokens = cos.shape[1:3]  # cos: (B, H, T, head_dim / 2) or (1, ...) for every item alike
    batch = x.shape[0]
    halves = x.reshape(batch, tokens, heads, 2, -1).transpose(1, 2)  # (B, H, T, 2, head_dim / 2)
    first, second = halves[..., :1, :], halves[..., 1:, :]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    out = halves * cos
    out[..., :1, :].addcmul_(-sin, second)
    out[..., 1:, :].addcmul_(sin, first)
    return out.transpose(1, 2).reshape(batch, tokens, -1)
