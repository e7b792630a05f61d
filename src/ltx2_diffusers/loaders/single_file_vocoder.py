"""Original-checkpoint layout of the LTX-2 / LTX-2.3 vocoder: key table, metadata -> config mapping and loading
function."""

from __future__ import annotations

import os

import torch
from diffusers.utils import logging

from .single_file import (
    KeyTable,
    build_from_state_dict,
    config_section,
    load_component_state_dict,
    read_checkpoint_config,
)


logger = logging.get_logger(__name__)

__all__ = ["VOCODER_KEY_TABLE", "vocoder_config_from_original", "vocoder_from_single_file"]

#: Original `vocoder.*` keys -> ours (= diffusers' `LTX2Vocoder` / `LTX2VocoderWithBWE`). Exactly one leading
#: `vocoder.` is stripped, so LTX-2.3's `vocoder.vocoder.*` becomes `vocoder.*`.
VOCODER_KEY_TABLE = KeyTable(
    name="vocoder",
    prefix="vocoder.",
    renames=(
        (r"(^|\.)conv_pre\.", r"\1conv_in."),
        (r"(^|\.)conv_post\.", r"\1conv_out."),
        (r"(^|\.)ups\.", r"\1upsamplers."),
        (r"(^|\.)resblocks\.", r"\1resnets."),
        (r"(^|\.)act_post\.", r"\1act_out."),
        (r"\.downsample\.lowpass\.filter$", ".downsample.filter"),
    ),
)

_GENERATOR_KEYS = (
    "resblock_kernel_sizes",
    "upsample_rates",
    "upsample_kernel_sizes",
    "resblock_dilation_sizes",
    "upsample_initial_channel",
    "resblock",
    "output_sampling_rate",
    "activation",
    "use_tanh_at_final",
    "use_bias_at_final",
    "stereo",
)
_BWE_KEYS = ("input_sampling_rate", "n_fft", "hop_length", "num_mels", "win_length", "win_size", "sampling_rate")
_IGNORED_KEYS = ("apply_final_activation", "fmin", "fmax", "mel_fmin", "mel_fmax")


def _expect(cfg: dict, key: str, expected, where: str) -> None:
    if cfg.get(key) != expected:
        raise ValueError(f"unsupported vocoder layout: {where}{key} is {cfg.get(key)!r}, expected {expected!r}")


def _generator_kwargs(cfg: dict, where: str, final_activation: bool) -> dict:
    unknown = sorted(set(cfg) - set(_GENERATOR_KEYS) - set(_BWE_KEYS) - set(_IGNORED_KEYS))
    if unknown:
        logger.warning(f"vocoder config {where or 'top level'}: keys not used by the reference are ignored: {unknown}")
    amp = cfg.get("resblock", "1") == "AMP1"
    use_tanh = cfg.get("use_tanh_at_final", True)
    return {
        "hidden_channels": int(cfg.get("upsample_initial_channel", 1024)),
        "upsample_kernel_sizes": [int(k) for k in cfg.get("upsample_kernel_sizes", [16, 15, 8, 4, 4])],
        "upsample_factors": [int(r) for r in cfg.get("upsample_rates", [6, 5, 2, 2, 2])],
        "resnet_kernel_sizes": [int(k) for k in cfg.get("resblock_kernel_sizes", [3, 7, 11])],
        "resnet_dilations": [[int(d) for d in ds] for ds in cfg.get("resblock_dilation_sizes", [[1, 3, 5]] * 3)],
        "act_fn": cfg.get("activation", "snake") if amp else "leaky_relu",
        "antialias": amp,
        "final_act_fn": ("tanh" if use_tanh else "clamp") if final_activation else None,
        "final_bias": bool(cfg.get("use_bias_at_final", True)),
    }


def vocoder_config_from_original(section: dict) -> dict:
    """Map the original checkpoint's `config["vocoder"]` metadata to `LTX2HiFiGANVocoder` keyword arguments.

    A flat section is the LTX-2 HiFi-GAN (`resblock "1"`); `{"vocoder": ..., "bwe": ...}` is LTX-2.3's BigVGAN-v2
    with bandwidth extension. Absent keys take ltx-core's defaults; other layouts raise `ValueError`.
    """
    if not isinstance(section, dict):
        raise ValueError(f"vocoder config must be a dict, got {type(section).__name__}")
    if "bwe" not in section:
        _expect(section, "resblock", "1", "")
        _expect(section, "stereo", True, "")
        kwargs = _generator_kwargs(section, "", final_activation=True)
        kwargs["output_sampling_rate"] = int(section.get("output_sampling_rate", 24000))
        kwargs["bandwidth_extension"] = False
        return kwargs
    inner, bwe = section.get("vocoder", {}), section["bwe"]
    for cfg, where in ((inner, "vocoder."), (bwe, "bwe.")):
        _expect(cfg, "resblock", "AMP1", where)
        _expect(cfg, "stereo", True, where)
        _expect(cfg, "activation", "snakebeta", where)
    missing = [
        k for k in ("input_sampling_rate", "output_sampling_rate", "n_fft", "hop_length", "num_mels") if k not in bwe
    ]
    if missing:
        raise ValueError(f"unsupported vocoder layout: bwe section lacks {missing}")
    kwargs = _generator_kwargs(inner, "vocoder.", final_activation=True)
    for key, value in _generator_kwargs(bwe, "bwe.", final_activation=False).items():
        kwargs[f"bwe_{key}"] = value
    kwargs.update(
        bandwidth_extension=True,
        bwe_in_channels=2 * int(bwe["num_mels"]),
        filter_length=int(bwe["n_fft"]),
        hop_length=int(bwe["hop_length"]),
        window_length=int(bwe["n_fft"]),
        num_mel_channels=int(bwe["num_mels"]),
        input_sampling_rate=int(bwe["input_sampling_rate"]),
        output_sampling_rate=int(bwe["output_sampling_rate"]),
    )
    return kwargs


def vocoder_from_single_file(model_cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """`model_cls` (`LTX2HiFiGANVocoder`) built from an original LTX-2 / LTX-2.3 checkpoint (`vocoder.*` tensors,
    `config["vocoder"]` metadata).

    Tensors keep the file's dtype unless `torch_dtype` is given.
    """
    config, _ = read_checkpoint_config(path)
    kwargs = vocoder_config_from_original(config_section(config, "vocoder", path))
    state_dict = load_component_state_dict(path, VOCODER_KEY_TABLE, dtype=torch_dtype)
    return build_from_state_dict(model_cls, kwargs, state_dict, "vocoder")
