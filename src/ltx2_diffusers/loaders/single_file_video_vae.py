"""Original-checkpoint layout of the LTX-2 video VAE, loaded into diffusers' `AutoencoderKLLTX2Video`.

ltx-core stores the encoder and decoder as flat block lists (`down_blocks.{i}` / `up_blocks.{i}`: a `res_x` stage,
then a compression, then a `res_x` stage, ...). diffusers groups each compression with the `res_x` stage that
precedes it (encoder) or follows it (decoder) and calls the outer stage `mid_block`. The tables below do that
regrouping by index; the config mapper turns the `vae` metadata section into the matching diffusers kwargs.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import torch
from diffusers import AutoencoderKLLTX2Video
from diffusers.utils import logging

from .single_file import (
    KeyTable,
    build_from_state_dict,
    check_torch_dtype,
    config_section,
    load_component_state_dict,
    read_checkpoint_config,
)


logger = logging.get_logger(__name__)

__all__ = [
    "VIDEO_VAE_KEY_TABLE",
    "load_video_vae_from_single_file",
    "video_vae_config_from_original",
    "video_vae_key_table",
]

#: Encoder block count of every released LTX-2 / LTX-2.3 VAE (4 x [res_x, compression] + res_x).
RELEASED_NUM_ENCODER_BLOCKS = 9
# Decoder blocks are mapped by index pattern alone; rules are generated up to this many blocks.
_MAX_DECODER_BLOCKS = 64

_ENCODER_COMPRESSIONS = {
    "compress_space_res": "spatial",
    "compress_time_res": "temporal",
    "compress_all_res": "spatiotemporal",
}
_DECODER_COMPRESSIONS = {
    "compress_space": "spatial",
    "compress_time": "temporal",
    "compress_all": "spatiotemporal",
}
_SPATIAL = {"spatial": 2, "temporal": 1, "spatiotemporal": 2}
_TEMPORAL = {"spatial": 1, "temporal": 2, "spatiotemporal": 2}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _encoder_block_renames(num_blocks: int) -> tuple[tuple[str, str], ...]:
    # Mark first so that a renamed key can never match a later per-index rule.
    rules = [(r"^encoder\.down_blocks\.", "encoder.@down.")]
    for i in range(num_blocks):
        if i == num_blocks - 1:
            target = "encoder.mid_block."
        elif i % 2 == 0:
            target = f"encoder.down_blocks.{i // 2}."
        else:
            target = f"encoder.down_blocks.{i // 2}.downsamplers.0."
        rules.append((rf"^encoder\.@down\.{i}\.", target))
    return tuple(rules)


def _decoder_block_renames() -> tuple[tuple[str, str], ...]:
    rules = [(r"^decoder\.up_blocks\.", "decoder.@up.")]
    for i in range(_MAX_DECODER_BLOCKS):
        if i == 0:
            target = "decoder.mid_block."
        elif i % 2 == 1:
            target = f"decoder.up_blocks.{(i - 1) // 2}.upsamplers.0."
        else:
            target = f"decoder.up_blocks.{(i - 2) // 2}."
        rules.append((rf"^decoder\.@up\.{i}\.", target))
    return tuple(rules)


@functools.lru_cache(maxsize=8)
def video_vae_key_table(num_encoder_blocks: int = RELEASED_NUM_ENCODER_BLOCKS) -> KeyTable:
    """The key table for an encoder of `num_encoder_blocks` blocks (its last `res_x` becomes `mid_block`)."""
    if not isinstance(num_encoder_blocks, int) or num_encoder_blocks < 1 or num_encoder_blocks % 2 == 0:
        raise ValueError(f"num_encoder_blocks must be a positive odd integer, got {num_encoder_blocks!r}")
    return KeyTable(
        name="vae",
        prefix="vae.",
        include_prefixes=("vae.encoder.", "vae.decoder.", "vae.per_channel_statistics."),
        renames=(
            (r"^per_channel_statistics\.mean-of-means$", "latents_mean"),
            (r"^per_channel_statistics\.std-of-means$", "latents_std"),
            (r"^decoder\.last_time_embedder\.", "decoder.time_embedder."),
            (r"^decoder\.last_scale_shift_table$", "decoder.scale_shift_table"),
            (r"\.res_blocks\.", ".resnets."),
            *_encoder_block_renames(num_encoder_blocks),
            *_decoder_block_renames(),
        ),
        # ltx-core reads two statistics; the released files carry more (`channel`, `mean-of-stds`, ...).
        ignore=(r"per_channel_statistics\.(?!mean-of-means$|std-of-means$).+",),
    )


#: Original `vae.*` keys -> diffusers `AutoencoderKLLTX2Video` keys, for the released encoder layout.
VIDEO_VAE_KEY_TABLE = video_vae_key_table(RELEASED_NUM_ENCODER_BLOCKS)


def _blocks(section: Mapping, name: str) -> list[tuple[str, dict]]:
    blocks = section.get(name)
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(f"the 'vae' config section needs a non-empty '{name}' list, got {blocks!r}")
    out = []
    for entry in blocks:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError(f"vae {name}: every entry must be [block_type, params], got {entry!r}")
        block_type, params = entry
        params = {"num_layers": params} if isinstance(params, int) else dict(params or {})
        out.append((block_type, params))
    return out


def _check_layout(blocks: list[tuple[str, dict]], name: str, compressions: Mapping[str, str]) -> None:
    allowed = {"res_x", *compressions}
    unknown = sorted({b for b, _ in blocks if b not in allowed})
    if unknown:
        raise ValueError(
            f"vae {name}: unsupported block types {unknown} (supported: {sorted(allowed)}); "
            "diffusers' AutoencoderKLLTX2Video cannot represent them"
        )
    expected = ["res_x" if i % 2 == 0 else "<compression>" for i in range(len(blocks))]
    actual = [b if b == "res_x" else "<compression>" for b, _ in blocks]
    if len(blocks) % 2 == 0 or actual != expected:
        raise ValueError(
            f"vae {name}: unsupported layout {[b for b, _ in blocks]}; expected res_x stages alternating with "
            "compressions, starting and ending with res_x"
        )
    for i, (_, params) in enumerate(blocks[::2]):
        if not isinstance(params.get("num_layers"), int) or params["num_layers"] < 0:
            raise ValueError(f"vae {name}: res_x stage {i} needs an integer 'num_layers', got {params!r}")


def _choice(section: Mapping, key: str, default: Any, allowed: tuple) -> Any:
    value = section.get(key, default)
    if value not in allowed:
        raise ValueError(f"unsupported vae {key}={value!r} in the checkpoint metadata (supported: {list(allowed)})")
    return value


def video_vae_config_from_original(config: Mapping) -> dict:
    """`AutoencoderKLLTX2Video` kwargs from the `vae` section of an original checkpoint's metadata (or the whole
    `config`), with ltx-core's defaults for absent keys (`timestep_conditioning` True, decoder padding "reflect").
    Unknown block types or layouts raise `ValueError` naming them."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    section = config["vae"] if "vae" in config else config
    if not isinstance(section, Mapping) or not section:
        raise ValueError("the checkpoint metadata has no 'vae' config section")
    _choice(section, "dims", 3, (3,))
    _choice(section, "norm_layer", "pixel_norm", ("pixel_norm",))
    _choice(section, "latent_log_var", "uniform", ("uniform",))
    padding = section.get("spatial_padding_mode")
    if padding is not None and padding not in _PADDING_MODES:
        raise ValueError(f"unsupported vae spatial_padding_mode={padding!r} (supported: {list(_PADDING_MODES)})")
    patch_size = section.get("patch_size", 4)
    latent_channels = section.get("latent_channels", 128)
    if section.get("scaling_factor", 1.0) != 1.0:
        logger.warning(
            f"vae scaling_factor={section['scaling_factor']!r} in the checkpoint metadata is ignored, as ltx-core "
            "ignores it (latents are normalised by the per-channel statistics only)"
        )

    # Encoder: stage i = res_x 2i followed by compression 2i+1; the last res_x is the mid block.
    enc = _blocks(section, "encoder_blocks")
    _check_layout(enc, "encoder_blocks", _ENCODER_COMPRESSIONS)
    enc_res, enc_comp = enc[::2], enc[1::2]
    width, widths = latent_channels, []
    for _, params in enc_comp:
        width *= params.get("multiplier", 2)
        widths.append(width)
    down_types = [_ENCODER_COMPRESSIONS[b] for b, _ in enc_comp]

    # Decoder: listed encoder-side and built reversed. In build order, stage i = compression 2i+1 followed by
    # res_x 2i+2; res_x 0 is the mid block.
    dec = _blocks(section, "decoder_blocks")
    dec_rev = dec[::-1]
    _check_layout(dec_rev, "decoder_blocks", _DECODER_COMPRESSIONS)
    dec_res, dec_comp = dec_rev[::2], dec_rev[1::2]
    width = section.get("decoder_base_channels", 128) * 8
    in_widths, factors, residual = [], [], []
    for block_type, params in dec_comp:
        factor = params.get("multiplier", 1)
        if not isinstance(factor, int) or factor < 1 or width % factor:
            raise ValueError(f"vae decoder_blocks: {block_type} multiplier {factor!r} does not divide width {width}")
        in_widths.append(width)
        factors.append(factor)
        # ltx-core honours `residual` on compress_all only.
        residual.append(bool(params.get("residual", False)) if block_type == "compress_all" else False)
        width //= factor
    up_types = [_DECODER_COMPRESSIONS[b] for b, _ in dec_comp]

    # diffusers reverses these decoder lists (except upsample_type): pass them in encoder-side order.
    return {
        "in_channels": section.get("in_channels", 3),
        "out_channels": section.get("out_channels", 3),
        "latent_channels": latent_channels,
        "block_out_channels": tuple(widths),
        "down_block_types": ("LTX2VideoDownBlock3D",) * len(enc_comp),
        "decoder_block_out_channels": tuple(reversed(in_widths)),
        "layers_per_block": tuple(p["num_layers"] for _, p in enc_res),
        "decoder_layers_per_block": tuple(reversed([p["num_layers"] for _, p in dec_res])),
        "spatio_temporal_scaling": (True,) * len(enc_comp),
        "decoder_spatio_temporal_scaling": (True,) * len(dec_comp),
        "decoder_inject_noise": tuple(reversed([bool(p.get("inject_noise", False)) for _, p in dec_res])),
        "downsample_type": tuple(down_types),
        "upsample_type": tuple(up_types),
        "upsample_residual": tuple(reversed(residual)),
        "upsample_factor": tuple(reversed(factors)),
        "timestep_conditioning": bool(section.get("timestep_conditioning", True)),
        "patch_size": patch_size,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        # ltx-core never reads `scaling_factor`: its (un)normalisation is the per-channel statistics alone. The
        # diffusers-side pipelines divide by `config.scaling_factor`, so it is 1.0 whatever the metadata says.
        "scaling_factor": 1.0,
        "encoder_causal": True,
        "decoder_causal": bool(section.get("causal_decoder", False)),
        "encoder_spatial_padding_mode": padding or "zeros",
        "decoder_spatial_padding_mode": padding or "reflect",
        "spatial_compression_ratio": patch_size * _product(_SPATIAL[t] for t in down_types),
        "temporal_compression_ratio": _product(_TEMPORAL[t] for t in down_types),
    }


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def video_vae_key_table_for(config: Mapping) -> KeyTable:
    """The key table matching the encoder layout of a `vae` section (or whole `config`)."""
    section = config["vae"] if "vae" in config else config
    return video_vae_key_table(len(_blocks(section, "encoder_blocks")))


def load_video_vae_from_single_file(
    path: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> AutoencoderKLLTX2Video:
    """diffusers `AutoencoderKLLTX2Video` from an original LTX-2 / LTX-2.3 single-file checkpoint, in eval mode.

    Config from the `vae` metadata section; keys checked strictly; tensors keep the file's dtype unless
    `torch_dtype` is given.
    """
    check_torch_dtype(torch_dtype)
    config, _ = read_checkpoint_config(path)
    kwargs = video_vae_config_from_original(config_section(config, "vae", path))
    state_dict = load_component_state_dict(path, video_vae_key_table_for(config), dtype=torch_dtype)
    return build_from_state_dict(AutoencoderKLLTX2Video, kwargs, state_dict, "vae")
