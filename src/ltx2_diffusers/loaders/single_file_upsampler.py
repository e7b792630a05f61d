"""Original LTX-2 latent-upsampler files, loaded into diffusers' `LTX2LatentUpsamplerModel`.

The upsampler ships as its own safetensors file: unprefixed keys that already carry diffusers' names, and the
configuration as a top-level `config` JSON in the metadata. Only the config needs translating.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from diffusers.utils import logging

from .single_file import KeyTable, load_component_state_dict, load_state_dict_strict, read_checkpoint_config


logger = logging.get_logger(__name__)

__all__ = ["UPSAMPLER_KEY_TABLE", "latent_upsampler_config_from_original", "load_latent_upsampler_from_single_file"]

#: Original upsampler keys -> diffusers' (identical names; the file holds nothing else).
UPSAMPLER_KEY_TABLE = KeyTable(name="latent_upsampler", prefix="")

# ltx-core's LatentUpsamplerConfigurator defaults for absent keys (diffusers' own defaults differ: mid 1024, rational).
_DEFAULTS = {
    "in_channels": 128,
    "mid_channels": 512,
    "num_blocks_per_stage": 4,
    "dims": 3,
    "spatial_upsample": True,
    "temporal_upsample": False,
    "spatial_scale": 2.0,
    "rational_resampler": False,
}
_RATIONAL_SCALES = (0.75, 1.5, 2.0, 4.0)
# Sections of a main LTX-2 checkpoint's config: their presence means the wrong file was given.
_MAIN_CHECKPOINT_SECTIONS = ("transformer", "vae", "audio_vae", "vocoder")


def latent_upsampler_config_from_original(config: Mapping) -> dict:
    """`LTX2LatentUpsamplerModel` kwargs from an upsampler file's `config` metadata (ltx-core defaults if absent)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    sections = [k for k in _MAIN_CHECKPOINT_SECTIONS if k in config]
    if sections:
        raise ValueError(
            f"this config has the sections {sections} of a main LTX-2 checkpoint, not of a latent upsampler file"
        )
    cfg = {k: config.get(k, v) for k, v in _DEFAULTS.items()}
    if cfg["dims"] not in (2, 3):
        raise ValueError(f"unsupported upsampler dims={cfg['dims']!r} (expected 2 or 3)")
    if not (cfg["spatial_upsample"] or cfg["temporal_upsample"]):
        raise ValueError("the upsampler config has neither spatial_upsample nor temporal_upsample set")
    for key, least in (("in_channels", 1), ("mid_channels", 1), ("num_blocks_per_stage", 0)):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < least:
            raise ValueError(f"upsampler {key} must be an integer >= {least}, got {cfg[key]!r}")
    if cfg["mid_channels"] % 32:
        raise ValueError(f"upsampler mid_channels={cfg['mid_channels']} is not a multiple of 32 (GroupNorm groups)")
    rational = bool(cfg["rational_resampler"])
    scale = float(cfg["spatial_scale"])
    if rational and cfg["spatial_upsample"] and not cfg["temporal_upsample"] and scale not in _RATIONAL_SCALES:
        raise ValueError(f"unsupported upsampler spatial_scale={scale} (rational resampler takes {_RATIONAL_SCALES})")
    return {
        "in_channels": cfg["in_channels"],
        "mid_channels": cfg["mid_channels"],
        "num_blocks_per_stage": cfg["num_blocks_per_stage"],
        "dims": cfg["dims"],
        "spatial_upsample": bool(cfg["spatial_upsample"]),
        "temporal_upsample": bool(cfg["temporal_upsample"]),
        "rational_spatial_scale": scale,
        "use_rational_resampler": rational,
    }


def load_latent_upsampler_from_single_file(
    path: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> LTX2LatentUpsamplerModel:
    """diffusers `LTX2LatentUpsamplerModel` from an original LTX-2 upsampler file, in eval mode.

    Config from the file's `config` metadata; keys checked strictly; tensors keep the file's dtype unless
    `torch_dtype` is given.
    """
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype or None, got {torch_dtype!r}")
    config, _ = read_checkpoint_config(path)
    kwargs = latent_upsampler_config_from_original(config)
    state_dict = load_component_state_dict(path, UPSAMPLER_KEY_TABLE, dtype=torch_dtype)
    with torch.device("meta"):
        model = LTX2LatentUpsamplerModel(**kwargs)
    load_state_dict_strict(model, state_dict, "latent_upsampler")
    return model.eval()
