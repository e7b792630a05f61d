"""Original-checkpoint layout of the LTX-2 audio VAE: key table, metadata -> config mapping and loading function."""

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

__all__ = ["AUDIO_VAE_KEY_TABLE", "audio_vae_config_from_original", "audio_vae_from_single_file"]

#: Original `audio_vae.*` keys -> ours (= diffusers'). Statistics other than the two used are dropped, as ltx-core does.
AUDIO_VAE_KEY_TABLE = KeyTable(
    name="audio_vae",
    prefix="audio_vae.",
    renames=(
        (r"^per_channel_statistics\.mean-of-means$", "latents_mean"),
        (r"^per_channel_statistics\.std-of-means$", "latents_std"),
    ),
    ignore=(r"per_channel_statistics\.(?!mean-of-means$|std-of-means$).+",),
)

# ddconfig keys the reference reads, with the defaults ltx-core's configurators apply when a key is absent.
_DDCONFIG_DEFAULTS = {
    "ch": 128,
    "out_ch": 2,
    "ch_mult": (1, 2, 4),
    "num_res_blocks": 2,
    "attn_resolutions": (8, 16, 32),
    "resolution": 256,
    "z_channels": 8,
    "double_z": True,
    "dropout": 0.0,
    "resamp_with_conv": True,
    "in_channels": 2,
    "attn_type": "vanilla",
    "mid_block_add_attention": True,
    "norm_type": "pixel",
    "causality_axis": "height",
}
_DDCONFIG_IGNORED = {"mel_bins", "embed_dim", "give_pre_end", "tanh_out", "use_linear_attn", "downsample_time"}


def audio_vae_config_from_original(section: dict) -> dict:
    """Map the original checkpoint's `config["audio_vae"]` metadata to `AutoencoderAudioMel` keyword arguments.

    Absent keys take ltx-core's configurator defaults. Raises `ValueError` for layouts this model cannot represent.
    """
    if not isinstance(section, dict):
        raise ValueError(f"audio_vae config must be a dict, got {type(section).__name__}")
    params = section.get("model", {}).get("params", {})
    ddconfig = params.get("ddconfig", {})
    if not isinstance(ddconfig, dict) or not ddconfig:
        raise ValueError("audio_vae config has no 'model.params.ddconfig' section")
    stft = section.get("preprocessing", {}).get("stft", {})
    mel = section.get("preprocessing", {}).get("mel", {})
    variables = section.get("variables", {})
    unknown = sorted(set(ddconfig) - set(_DDCONFIG_DEFAULTS) - _DDCONFIG_IGNORED)
    if unknown:
        logger.warning(f"audio_vae ddconfig keys not used by the reference are ignored: {unknown}")
    cfg = {k: ddconfig.get(k, v) for k, v in _DDCONFIG_DEFAULTS.items()}
    if cfg["attn_type"] != "vanilla":
        raise ValueError(f"audio_vae: unsupported attn_type {cfg['attn_type']!r} (only 'vanilla')")
    if not cfg["resamp_with_conv"]:
        raise ValueError("audio_vae: unsupported layout resamp_with_conv=False (only strided-conv resampling)")
    if cfg["norm_type"] not in ("pixel", "group"):
        raise ValueError(f"audio_vae: unsupported norm_type {cfg['norm_type']!r}")
    if cfg["causality_axis"] not in ("none", "width", "height", "width-compatibility"):
        raise ValueError(f"audio_vae: unsupported causality_axis {cfg['causality_axis']!r}")
    mel_bins = ddconfig.get("mel_bins") or mel.get("n_mel_channels") or variables.get("mel_bins")
    return {
        "base_channels": int(cfg["ch"]),
        "output_channels": int(cfg["out_ch"]),
        "ch_mult": tuple(int(m) for m in cfg["ch_mult"]),
        "num_res_blocks": int(cfg["num_res_blocks"]),
        "attn_resolutions": tuple(sorted(int(r) for r in cfg["attn_resolutions"])) or None,
        "in_channels": int(cfg["in_channels"]),
        "resolution": int(cfg["resolution"]),
        "latent_channels": int(cfg["z_channels"]),
        "norm_type": cfg["norm_type"],
        "causality_axis": cfg["causality_axis"],
        "dropout": float(cfg["dropout"]),
        "mid_block_add_attention": bool(cfg["mid_block_add_attention"]),
        "sample_rate": int(params.get("sampling_rate", 16000)),
        "mel_hop_length": int(stft.get("hop_length", 160)),
        "n_fft": int(stft.get("filter_length", 1024)),
        "is_causal": bool(stft.get("causal", True)),
        "mel_bins": None if mel_bins is None else int(mel_bins),
        "double_z": bool(cfg["double_z"]),
    }


def audio_vae_from_single_file(model_cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """`model_cls` (`AutoencoderAudioMel`) built from an original LTX-2 checkpoint (`audio_vae.*` tensors,
    `config["audio_vae"]` in the metadata).

    Tensors keep the file's dtype unless `torch_dtype` is given.
    """
    config, _ = read_checkpoint_config(path)
    kwargs = audio_vae_config_from_original(config_section(config, "audio_vae", path))
    state_dict = load_component_state_dict(path, AUDIO_VAE_KEY_TABLE, dtype=torch_dtype)
    return build_from_state_dict(model_cls, kwargs, state_dict, "audio_vae")
