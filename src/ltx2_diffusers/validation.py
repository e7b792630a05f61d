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
- tensors, each finite and within its bound (`check_bounded`, one device sync per tensor at most; the constants
  below say where each bound comes from):
  - noise `latents` given to a pipeline and latents a step callback returns: `|value| <= MAX_LATENT_ABS` (1e4).
    Normalised latents and noise are O(1); 1e38 overflows the float32 mixing and norms to NaN frames.
  - post-connector prompt contexts (a pipeline's `prompt_contexts`, the transformer's `encoder_hidden_states`):
    `|value| <= MAX_CONTEXT_ABS` (1e4); 1e30 gives NaN frames.
  - inputs a model normalises itself: text-encoder features (`prompt_embeds`), the transformer's `hidden_states` /
    `audio_hidden_states`, the audio VAE's latents and tokens: `|value| <= MAX_NORMALISED_INPUT_ABS` (1e15; the
    latents a denoising loop feeds the transformer drift from the `MAX_LATENT_ABS` it started from).
  - the transformer's timesteps, sigmas and coordinates: `|value| <= MAX_EMBEDDED_VALUE` (2**24); its masks in
    [0, 1] (an additive `(B, 1, S)` text bias in [-inf, 0]).
  - log-mel spectrograms (the audio VAE's `encode`, the vocoder): `|value| <= MAX_LOG_MEL_ABS` (100).
  - waveforms (`load_audio`, the mel front end, `encode_waveform`): `|value| <= MAX_WAVEFORM_ABS` (1e5); samples
    beyond full scale (+-1) below that are kept, as ltx-pipelines keeps them (a written video clips them).
- numbers given where a float is expected: an integer too large for a float (10**400) is refused like inf.
- overrides of the size bounds (`max_num_frames`, `max_video_tokens`): at most `MAX_LIMIT_OVERRIDE` (2**53).
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
    "MAX_CONTEXT_ABS",
    "MAX_EMBEDDED_VALUE",
    "MAX_FRAME_RATE",
    "MAX_GUIDANCE_SCALE",
    "MAX_INFERENCE_STEPS",
    "MAX_LATENT_ABS",
    "MAX_LIMIT_OVERRIDE",
    "MAX_LOG_MEL_ABS",
    "MAX_LORA_STRENGTH",
    "MAX_NORMALISED_INPUT_ABS",
    "MAX_NUM_FRAMES",
    "MAX_RESCALE_SCALE",
    "MAX_SEQUENCE_LENGTH",
    "MAX_VIDEO_TOKENS",
    "MAX_WAVEFORM_ABS",
    "MIN_AUDIO_SAMPLE_RATE",
    "MIN_FRAME_RATE",
    "audio_latent_frames",
    "check_adapter_weights",
    "check_audio_sample_rate",
    "check_bounded",
    "check_frame_rate",
    "check_guidance_scale",
    "check_latents",
    "check_lora_strength",
    "CheckedConfigMixin",
    "check_model_config",
    "check_real",
    "check_video_size",
    "finite_float",
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
# Normalised latents and noise are O(1); 1e38 overflows the float32 mixing and norms to NaN frames.
MAX_LATENT_ABS = 1e4
# The connectors end in an RMS norm without weight, so a real context value is at most sqrt(width) = 64 (4096 wide).
MAX_CONTEXT_ABS = 1e4
# Inputs a model normalises itself (RMS / pixel norm over ~4096 features: raw Gemma features, whose massive
# activations reach ~1e5; the transformer's and audio decoder's latents): v**2 * 4096 overflows float32 above 2.9e17.
MAX_NORMALISED_INPUT_ABS = 1e15
# float32 resolves whole units only up to 2**24: timesteps (sigma * 1000, <= 1000) and positions (seconds, pixels)
# beyond it reach the sinusoidal / rotary embeddings as rounding noise, and near 3e38 overflow them to NaN.
MAX_EMBEDDED_VALUE = 2.0**24
# A log-magnitude of a normal float32 lies within +-88.8 (log 3.4e38, log 1.2e-38); the mel front end floors at -11.5.
MAX_LOG_MEL_ABS = 100.0
# Float audio is full scale at +-1 and the log-mel floor (1e-5) lies 100 dB below it; this bound lies 100 dB above it.
MAX_WAVEFORM_ABS = 1e5
# Size-bound overrides are turned into float64 durations, which count frames exactly only up to 2**53.
MAX_LIMIT_OVERRIDE = 2**53
AUDIO_LATENTS_PER_SECOND = 16000 / 160 / 4  # the audio VAE's rate / mel hop / latent downsampling


def shown(value, limit: int = 200) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters (a user's list may be megabytes)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlist = short.maxtuple = 8
    short.maxstring = short.maxother = limit // 2
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_float(value) -> float | None:
    """`value` as a finite float; None for anything else (a bool, a non-number, NaN, inf, an int too large for a
    float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range (10**400)
        return None
    return value if math.isfinite(value) else None


def check_real(name: str, value) -> float:
    """`value` as a finite float: `TypeError` naming `name` for a non-number (or a bool), `ValueError` for NaN, inf
    or an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {shown(value)}")
    result = finite_float(value)
    if result is None:
        if isinstance(value, numbers.Integral):
            bits = int(value).bit_length()
            raise ValueError(f"{name} must be finite, got an integer too large for a float ({bits} bits)")
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


def check_guidance_scale(name: str, value, rescale: bool = False) -> float:
    """`value` as a float: finite and within the documented bound (see the module docstring)."""
    value = check_real(name, value)
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
    value = check_real(name, value)
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
    value = check_real(name, frame_rate)
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
    (`TypeError`) holding values (not on the "meta" device, `ValueError`), finite and within `MAX_LATENT_ABS`
    (`ValueError`, `check_bounded`)."""
    import torch

    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(latents).__name__}")
    check_holds_values(name, latents)
    if not is_compute_float(latents):
        raise TypeError(f"{name} must be a floating-point tensor of 16 bits or more, got dtype {latents.dtype}")
    check_bounded([(name, latents)], MAX_LATENT_ABS, "normalised latents and noise are O(1)")


def check_holds_values(name: str, tensor) -> None:
    """`ValueError` naming `name` for a tensor on the "meta" device (shape and dtype only: reading it fails deep
    inside torch); anything else passes."""
    if getattr(getattr(tensor, "device", None), "type", None) == "meta":
        raise ValueError(
            f"{name} is on the meta device, which holds no values: pass the tensor with its data (on the CPU or the "
            "pipeline's device)"
        )


def is_compute_float(tensor) -> bool:
    """A floating point tensor of 16 bits or more: float8 tensors only store weights, no operation computes in them."""
    return tensor.is_floating_point() and tensor.element_size() >= 2


def check_bounded(tensors, bound: float, why: str, low: float | None = None) -> None:
    """Every `(name, tensor)` of `tensors` (a None tensor is skipped) finite and within `[-bound, bound]` (`[low,
    bound]` when `low` is given; `low=-inf` admits -inf); `ValueError` naming the tensor, its extreme values, the
    bound and `why` otherwise. One device sync per device (`check_all_bounded`)."""
    check_all_bounded([(tensors, bound, why, low)])


def check_all_bounded(checks) -> None:
    """`check_bounded` for several `(tensors, bound, why, low)` at once: each tensor's min and max are reduced on its
    device and read back in ONE device sync per device for all of them (NaN propagates through both). Skipped on the
    meta device and while `torch.compile` traces a graph (which cannot read values back). Dtypes are the caller's to
    check."""
    import torch

    if torch.compiler.is_compiling():
        return
    by_device = {}
    for tensors, bound, why, low in checks:
        for name, tensor in tensors:
            if tensor is None or not tensor.numel() or tensor.device.type == "meta" or tensor.dtype == torch.bool:
                continue
            by_device.setdefault(tensor.device, []).append((name, tensor, bound, why, low))
    for device, items in by_device.items():
        wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        for name, tensor, *_ in items:
            if tensor.is_complex():
                raise TypeError(f"{name} must hold real numbers, got {tensor.dtype}")
        # float8 and unsigned 16-64 bit tensors have no `aminmax` kernel: widened first (a copy; rare inputs)
        narrow = {torch.uint16, torch.uint32, torch.uint64}
        pairs = [
            torch.stack(torch.aminmax(t.detach().to(wide) if t.element_size() == 1 and t.is_floating_point()
                                      or t.dtype in narrow else t.detach())).to(wide)
            for _, t, *_ in items
        ]  # fmt: skip
        extremes = torch.stack(pairs).tolist()  # one sync
        for (name, _, bound, why, low), (lowest, highest) in zip(items, extremes, strict=True):
            floor = -bound if low is None else low
            if floor <= lowest and highest <= bound:  # False for NaN
                continue
            if math.isnan(lowest) or math.isnan(highest) or highest == math.inf or lowest == -math.inf > floor:
                raise ValueError(f"{name} holds NaN or infinite values")  # (an admitted -inf is not named)
            if low is None:
                raise ValueError(
                    f"{name} holds values of magnitude {max(-lowest, highest):.3g}, above the bound of {bound:.8g} "
                    f"({why})"
                )
            raise ValueError(
                f"{name} holds values in [{lowest:.3g}, {highest:.3g}], outside [{low:g}, {bound:.8g}] ({why})"
            )


def resolve_limit(name: str, value, default: int) -> int:
    """An override of a size bound (`max_num_frames`, `max_video_tokens`): None -> `default`, else a positive int
    up to `MAX_LIMIT_OVERRIDE`."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_LIMIT_OVERRIDE:
        raise ValueError(
            f"{name} must be a positive integer up to 2**53 or None (default {default}), got {shown(value)}"
        )
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

    if not isinstance(config, Mapping):
        raise ValueError(f"{where!r}: a config must be a JSON object of settings, got a {type(config).__name__}")
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
