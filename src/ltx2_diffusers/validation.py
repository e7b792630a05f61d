"""Bounds on what a generation may ask for, checked before any compute.

Pure functions raising `ValueError` / `TypeError` that name the argument and what was expected. The bounds are
documented here once; the pipeline's `check_inputs`, the LoRA loader and the CLI call these functions.

Bounds (inclusive):

- guidance scales (`cfg_scale`, `stg_scale`, `modality_scale`): finite, `|scale| <= MAX_GUIDANCE_SCALE` (100).
  ltx-core accepts any float; the released parameter sets use 1..7. A scale of 1e30 overflows the guided
  prediction to inf/NaN, so it is refused instead of producing NaN frames.
- `rescale_scale`: finite, in `[0, MAX_RESCALE_SCALE]` (2). 0 disables rescaling and 1 fully rescales to the
  conditional prediction's std (the released sets use 0.45 .. 1.0); values up to 2 extrapolate, as ltx-core
  would compute them.
- LoRA strengths, adapter weights and `distilled_lora_scale`: finite, `|weight| <= MAX_LORA_STRENGTH` (10).
  The released distilled LoRA runs at 0.8; user LoRAs are used at about 0..2.
- `num_frames`: at most `MAX_NUM_FRAMES` (1001 = 20 s, the models' temporal positional range, at 50 fps), also
  when it is derived from the audio (`num_frames=None`); `max_num_frames=` (CLI `--max-num-frames`) raises it.
- video latent tokens `((F - 1) / 8 + 1) * (H / 32) * (W / 32)` of the final size: at most `MAX_VIDEO_TOKENS`
  (2**18 = 262144; 121 frames at 1536x1024 are 24576, 1001 frames at that size 193536); `max_video_tokens=`
  (CLI `--max-video-tokens`) raises it.
- `frame_rate`: finite, in `[MIN_FRAME_RATE, MAX_FRAME_RATE]` (1 .. 240 fps). The reference writes its mp4 at
  `int(fps)` frames per second, which is 0 below 1 fps; 1e-6 fps would also ask for 225 million audio tokens.
- the audio latent of a generation: at least 1 frame (`num_frames / frame_rate` seconds at 25 audio latent frames
  per second; 1 frame at 60 fps is 0.4 of one).
- `num_inference_steps` (and the steps of a `sigmas` table): at most `MAX_INFERENCE_STEPS` (1000, the schedulers'
  `num_train_timesteps`; the released recipes use 8..40). Beyond, a call effectively hangs, and from about 10**6
  steps the float32 sigma table stops decreasing.
- `max_sequence_length` (text tokens): at most `MAX_SEQUENCE_LENGTH` (4096, the connectors' RoPE base length;
  the reference uses 1024), or the text encoder's position range if smaller.
- noise `latents` given to a pipeline and latents a step callback returns: finite, `|value| <= MAX_LATENT_ABS`
  (1e4). Normalised latents and noise are O(1); 1e38 overflows the float32 mixing and norms to NaN frames.
- audio sample rates (`load_audio`'s `sample_rate` = the pipelines' `audio_sample_rate`, the rate of a decoded
  file, the mel front end's rates): a whole number of Hz in `[MIN_AUDIO_SAMPLE_RATE, MAX_AUDIO_SAMPLE_RATE]`
  (100 .. 384000 Hz: 384 kHz is the highest rate audio interfaces record; below 100 Hz nothing audible is left).
- a model's config (`check_model_config`, the transformer / audio VAE / vocoder, whichever way they are built or
  loaded): the single-file config bounds (`loaders.single_file.check_config_bounds`: every number finite and at
  most 1e7 in magnitude, counts and sizes integers in range) and the keys the model divides by or sizes with
  (heads, head dims, channels, rates, eps, ...) > 0.

Error messages show user values through `shown` (at most a few hundred characters, never megabytes).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable, Mapping


__all__ = [
    "MAX_AUDIO_SAMPLE_RATE",
    "MAX_FRAME_RATE",
    "MAX_GUIDANCE_SCALE",
    "MAX_INFERENCE_STEPS",
    "MAX_LATENT_ABS",
    "MAX_LORA_STRENGTH",
    "MAX_NUM_FRAMES",
    "MAX_RESCALE_SCALE",
    "MAX_SEQUENCE_LENGTH",
    "MAX_VIDEO_TOKENS",
    "MIN_AUDIO_SAMPLE_RATE",
    "MIN_FRAME_RATE",
    "audio_latent_frames",
    "check_adapter_weights",
    "check_audio_sample_rate",
    "check_frame_rate",
    "check_guidance_scale",
    "check_latents",
    "check_lora_strength",
    "CheckedConfigMixin",
    "check_model_config",
    "check_video_size",
    "resolve_limit",
    "shown",
    "video_latent_tokens",
]

MAX_GUIDANCE_SCALE = 100.0
MAX_RESCALE_SCALE = 2.0
MAX_LORA_STRENGTH = 10.0
MAX_NUM_FRAMES = 1001
MAX_VIDEO_TOKENS = 2**18
MAX_FRAME_RATE = 240.0
MAX_INFERENCE_STEPS = 1000
MIN_AUDIO_SAMPLE_RATE = 100
MAX_AUDIO_SAMPLE_RATE = 384000
MIN_FRAME_RATE = 1.0
MAX_SEQUENCE_LENGTH = 4096
MAX_LATENT_ABS = 1e4
AUDIO_LATENTS_PER_SECOND = 16000 / 160 / 4  # the audio VAE's rate / mel hop / latent downsampling


def shown(value, limit: int = 200) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters (a user's list may be megabytes)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlist = short.maxtuple = 8
    short.maxstring = short.maxother = limit // 2
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_guidance_scale(name: str, value, rescale: bool = False) -> float:
    """`value` as a float: finite and within the documented bound (see the module docstring)."""
    value = _real(name, value)
    if rescale:
        if not 0.0 <= value <= MAX_RESCALE_SCALE:
            raise ValueError(
                f"{name} must be in [0, {MAX_RESCALE_SCALE:g}] (0 = off, 1 = full rescale), got {value!r}"
            )
    elif abs(value) > MAX_GUIDANCE_SCALE:
        raise ValueError(f"{name} must be within [-{MAX_GUIDANCE_SCALE:g}, {MAX_GUIDANCE_SCALE:g}], got {value!r}")
    return value


def check_lora_strength(name: str, value) -> float:
    """A LoRA strength / adapter weight / `distilled_lora_scale`: finite, `|value| <= MAX_LORA_STRENGTH`."""
    value = _real(name, value)
    if abs(value) > MAX_LORA_STRENGTH:
        raise ValueError(f"{name} must be within [-{MAX_LORA_STRENGTH:g}, {MAX_LORA_STRENGTH:g}], got {value!r}")
    return value


def check_adapter_weights(weights: Any, name: str = "adapter_weights") -> None:
    """Every number inside diffusers' `set_adapters` weights (None, a number, a list of them, or nested dicts of
    per-component / per-block scales) is a valid LoRA strength; `None` entries mean diffusers' default 1.0."""
    if weights is None:
        return
    if isinstance(weights, dict):
        for key, value in weights.items():
            check_adapter_weights(value, f"{name}[{key!r}]")
    elif isinstance(weights, (list, tuple)):
        for i, value in enumerate(weights):
            check_adapter_weights(value, f"{name}[{i}]")
    else:
        check_lora_strength(name, weights)


def check_frame_rate(frame_rate, name: str = "frame_rate") -> float:
    """`frame_rate` as a float in `[MIN_FRAME_RATE, MAX_FRAME_RATE]`."""
    value = _real(name, frame_rate)
    if not MIN_FRAME_RATE <= value <= MAX_FRAME_RATE:
        raise ValueError(f"{name} must be in [{MIN_FRAME_RATE:g}, {MAX_FRAME_RATE:g}] fps, got {frame_rate!r}")
    return value


def check_audio_sample_rate(value, name: str = "sample_rate") -> int:
    """An audio sample rate as an int: a whole number of Hz in `[MIN_AUDIO_SAMPLE_RATE, MAX_AUDIO_SAMPLE_RATE]`.

    Raises `ValueError` naming `name` for anything else (a bool, a non-number, NaN, inf, a fraction, out of range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a whole number of Hz, got {value!r}")
    if not isinstance(value, numbers.Integral):
        value = float(value)
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"`{name}` must be a whole number of Hz, got {value!r}")
    rate = int(value)
    if not MIN_AUDIO_SAMPLE_RATE <= rate <= MAX_AUDIO_SAMPLE_RATE:
        raise ValueError(
            f"`{name}` must be in [{MIN_AUDIO_SAMPLE_RATE}, {MAX_AUDIO_SAMPLE_RATE}] Hz, got {value!r}; resample "
            "the audio into that range first"
        )
    return rate


def audio_latent_frames(duration: float) -> int:
    """Audio latent frames covering `duration` seconds (`AudioLatentShape.from_duration`)."""
    return round(duration * AUDIO_LATENTS_PER_SECOND)


def check_latents(name: str, latents) -> None:
    """A latent tensor from the user (noise `latents`, a callback's output): a floating-point tensor
    (`TypeError`), finite and within `MAX_LATENT_ABS` (`ValueError`)."""
    import torch

    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(latents).__name__}")
    if not latents.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {latents.dtype}")
    if not latents.numel():
        return
    peak = latents.detach().abs().max().item()  # one device sync: NaN and inf propagate through the max
    if not math.isfinite(peak):
        raise ValueError(f"{name} holds NaN or infinite values")
    if peak > MAX_LATENT_ABS:
        raise ValueError(
            f"{name} holds values of magnitude {peak:.3g}, above the bound of {MAX_LATENT_ABS:g} (normalised "
            "latents and noise are O(1))"
        )


def resolve_limit(name: str, value, default: int) -> int:
    """An override of a size bound (`max_num_frames`, `max_video_tokens`): None -> `default`, else a positive int."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None (default {default}), got {value!r}")
    return int(value)


def video_latent_tokens(num_frames: int, height: int, width: int) -> int:
    """Tokens of a `num_frames x height x width` video in the LTX-2 video latent (x8 in time, x32 in space)."""
    return ((num_frames - 1) // 8 + 1) * (height // 32) * (width // 32)


def check_video_size(
    num_frames, height: int, width: int, max_num_frames=None, max_video_tokens=None, frame_rate=None
) -> None:
    """Refuse a frame count above `max_num_frames` and a latent above `max_video_tokens` (defaults in the module
    docstring), and with `frame_rate` a video too short for one audio latent frame; `num_frames=None` (derived
    from the audio later) checks only the overrides themselves."""
    frames_limit = resolve_limit("max_num_frames", max_num_frames, MAX_NUM_FRAMES)
    tokens_limit = resolve_limit("max_video_tokens", max_video_tokens, MAX_VIDEO_TOKENS)
    if num_frames is None:
        return
    if num_frames > frames_limit:
        raise ValueError(
            f"num_frames={num_frames} is above the bound of {frames_limit} frames (max_num_frames; the models' "
            "positional range is 20 s); pass a larger max_num_frames to allow it"
        )
    tokens = video_latent_tokens(num_frames, height, width)
    if tokens > tokens_limit:
        raise ValueError(
            f"{num_frames} frames at {width}x{height} are {tokens} video latent tokens, above the bound of "
            f"{tokens_limit} (max_video_tokens); pass a larger max_video_tokens to allow it"
        )
    if frame_rate is not None and audio_latent_frames(num_frames / frame_rate) < 1:
        raise ValueError(
            f"num_frames={num_frames} at frame_rate={frame_rate} lasts {num_frames / frame_rate:.4f} s: 0 audio "
            f"latent frames ({AUDIO_LATENTS_PER_SECOND:g} per second, rounded), the audio needs at least 1; "
            "pass more frames or a lower frame_rate"
        )


def _plain(value):
    """Tuples as lists (the single-file bounds walk lists), mappings as dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None:
        yield value


def check_model_config(where: str, config: Mapping, positive: Iterable[str] = ()) -> None:
    """`ValueError` naming `where` (the file and/or the model class) and the key for a config outside the bounds of
    `check_config_bounds`, or a key of `positive` (every number in it, for a list) that is not a number > 0
    (None is left to the model)."""
    from .loaders.single_file import check_config_bounds

    config = _plain(config)
    check_config_bounds(config, where)
    for key in positive:
        for item in _leaves(config.get(key)):
            if isinstance(item, bool) or not isinstance(item, numbers.Real) or not item > 0:
                raise ValueError(f"{where!r}: config value {key} = {config[key]!r} must be a number > 0")


class CheckedConfigMixin:
    """For a `ConfigMixin` model listing `_positive_config_keys`: the `config.json` that `from_pretrained` reads is
    checked naming the file, and `_check_config()` (called by the model's `__init__`) checks the config however the
    model is built (`check_model_config`)."""

    #: Config keys that must be numbers > 0 (the model divides or sizes by them).
    _positive_config_keys: tuple[str, ...] = ()

    @classmethod
    def _dict_from_json_file(cls, json_file):
        config = super()._dict_from_json_file(json_file)
        check_model_config(f"{os.fspath(json_file)} ({cls.__name__})", config, cls._positive_config_keys)
        return config

    def _check_config(self) -> None:
        check_model_config(type(self).__name__, self.config, self._positive_config_keys)
