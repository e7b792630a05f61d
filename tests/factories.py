"""Tiny ORIGINAL-format LTX-2 / LTX-2.3 checkpoints, built with ltx-core, for parity tests.

Every component is instantiated through ltx-core's own configurator from the same ``config`` dict that is
written to the file's metadata, so the config is one ltx-core accepts. The model's state-dict keys are turned
into file keys by inverting ltx-core's SDOps renaming (checked by running the forward SDOps on every key), and
every parameter and persistent buffer gets a distinct, non-constant, seeded random value.

Versions: ``"2.3"`` (LTX-2.3 / 22B layout) and ``"2.0"`` (LTX-2 / 19B layout); aliases "22B", "19B", "2.3.0",
"2.0.0" are accepted.

Things ltx-core hard-codes that bound how tiny the files can be (see ``HARD_CODED`` below):
- video latent channels 128 (pipelines, patchifier) and the video encoder's first width = latent channels;
- audio latent 8 channels x 16 mel bins = 128; the audio VAE's per-channel statistics have ``ch`` entries, so
  the audio VAE base width ``ch`` must be 128;
- vocoder ``conv_pre`` takes 128 inputs (2 x 64 mel bins), BWE ``num_mels`` must be 64;
- connectors always use 128 learnable registers (text length must be a multiple of 128);
- the text feature extractor reads the Gemma hidden size / layer count from ``GEMMA3_CONFIG_FOR_LTX`` (3840 x 49),
  not from the checkpoint. Test files use a tiny "Gemma" (``TEXT_HIDDEN_SIZE`` x ``TEXT_NUM_HIDDEN_STATES``):
  use :func:`patch_gemma_dims` (``load_reference`` does it for you) when building the reference
  ``EmbeddingsProcessor``; the Gemma hidden size is ``transformer.caption_channels`` and the number of hidden
  states is ``in_features // caption_channels`` of the aggregate-embed weight (see :func:`text_encoder_dims`).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import json
import math
import pathlib
import shutil
import tempfile
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence
from unittest import mock

import torch
from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP, SDOps
from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
from ltx_core.model.audio_vae import vocoder as _ltx_vocoder
from ltx_core.model.audio_vae.model_configurator import (
    AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
    AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
    VOCODER_COMFY_KEYS_FILTER,
    AudioDecoderConfigurator,
    AudioEncoderConfigurator,
    VocoderConfigurator,
)
from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator
from ltx_core.model.upsampler.model_configurator import LatentUpsamplerConfigurator
from ltx_core.model.video_vae.model_configurator import (
    VAE_DECODER_COMFY_KEYS_FILTER,
    VAE_ENCODER_COMFY_KEYS_FILTER,
    VideoDecoderConfigurator,
    VideoEncoderConfigurator,
)
from ltx_core.text_encoders.gemma.encoders import encoder_configurator as _ltx_encoder_configurator
from ltx_core.text_encoders.gemma.encoders.encoder_configurator import (
    EMBEDDINGS_PROCESSOR_KEY_OPS,
    EmbeddingsProcessorConfigurator,
)
from safetensors import safe_open
from safetensors.torch import save_file


__all__ = [
    "ALL_COMPONENTS",
    "HARD_CODED",
    "REFERENCE_COMPONENTS",
    "TEXT_HIDDEN_SIZE",
    "TEXT_NUM_HIDDEN_STATES",
    "TEXT_SEQ_LEN",
    "audio_vae_config",
    "build_checkpoint",
    "build_lora",
    "build_upsampler",
    "cached_checkpoint",
    "checkpoint_config",
    "file_key_map",
    "load_reference",
    "normalize_version",
    "patch_gemma_dims",
    "read_config",
    "read_metadata",
    "reference_key_report",
    "text_encoder_dims",
    "transformer_config",
    "transformer_inputs",
    "upsampler_config",
    "vae_config",
    "vocoder_config",
]

# ---------------------------------------------------------------------------------------------------------
# Tiny sizes
# ---------------------------------------------------------------------------------------------------------

#: Tiny "Gemma" used by the text feature extractor: hidden size (= transformer ``caption_channels``) ...
TEXT_HIDDEN_SIZE = 48
#: ... and number of hidden states (Gemma layers + 1 for the embeddings).
TEXT_NUM_HIDDEN_STATES = 4
#: Text length: the connectors' learnable-register count (hard-coded 128) must divide it.
TEXT_SEQ_LEN = 128

HARD_CODED = {
    "video_latent_channels": 128,
    "audio_latent_channels_x_mel_bins": (8, 16),
    "audio_vae_ch": 128,
    "vocoder_input_channels": 128,
    "bwe_num_mels": 64,
    "connector_num_learnable_registers": 128,
    "gemma_hidden_size_x_states_in_ltx_core": (3840, 49),
    "timestep_sinusoid_channels": 256,
    "upsampler_group_norm_groups": 32,
}

ALL_COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")
REFERENCE_COMPONENTS = (
    "transformer",
    "embeddings_processor",
    "video_encoder",
    "video_decoder",
    "audio_encoder",
    "audio_decoder",
    "vocoder",
)

_MODEL_VERSION = {"2.3": "2.3.0", "2.0": "2.0.0"}
_VERSION_ALIASES = {
    "2.3": "2.3",
    "2.3.0": "2.3",
    "22b": "2.3",
    "ltx-2.3": "2.3",
    "2.0": "2.0",
    "2.0.0": "2.0",
    "2": "2.0",
    "19b": "2.0",
    "ltx-2": "2.0",
}

_V2_TEXT_KEYS = (
    "caption_proj_before_connector",
    "caption_proj_input_norm",
    "caption_projection_first_linear",
    "caption_projection_second_linear",
)


def normalize_version(version: str | float) -> str:
    """``"2.3"`` for LTX-2.3 (22B layout) or ``"2.0"`` for LTX-2 (19B layout)."""
    key = str(version).strip().lower()
    if key not in _VERSION_ALIASES:
        raise ValueError(f"unknown LTX-2 version {version!r}; use '2.3' (22B) or '2.0' (19B)")
    return _VERSION_ALIASES[key]


# ---------------------------------------------------------------------------------------------------------
# Config sections (original key names, as in the released files' `config` metadata)
# ---------------------------------------------------------------------------------------------------------


def transformer_config(
    version: str = "2.3",
    *,
    rope_type: str = "split",
    double_precision: bool = True,
    num_layers: int = 2,
    av_ca_timestep_scale_multiplier: float = 1000.0,
    **overrides,
) -> dict:
    """The ``transformer`` metadata section (original key names), tiny sizes.

    Video 2 heads x 32 (inner 64), audio 2 heads x 16 (inner 32); text hidden (caption_channels) 48.
    ``overrides`` are original keys; a value of ``None`` removes the key. Derived widths
    (``cross_attention_dim``, ``audio_cross_attention_dim``, connector widths) follow the head settings unless
    overridden explicitly. ``double_precision=False`` drops ``frequencies_precision`` (ltx-core then computes the
    RoPE grid in float32).
    """
    v = normalize_version(version)
    cfg: dict = {
        "_class_name": "AVTransformer3DModel",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": 32,
        "attention_type": "default",
        "audio_attention_head_dim": 16,
        "audio_cross_attention_dim": 32,
        "audio_num_attention_heads": 2,
        "audio_out_channels": 128,
        "audio_positional_embedding_max_pos": [20],
        "av_ca_timestep_scale_multiplier": av_ca_timestep_scale_multiplier,
        "av_cross_ada_norm": True,
        "caption_channels": TEXT_HIDDEN_SIZE,
        "causal_temporal_positioning": True,
        "connector_attention_head_dim": 24,
        "connector_norm_output": True,
        "connector_num_attention_heads": 2,
        "connector_num_layers": 2,
        "connector_num_learnable_registers": 128,
        "connector_positional_embedding_max_pos": [4096],
        "cross_attention_dim": 64,
        "cross_attention_norm": True,
        "double_self_attention": False,
        "dropout": 0.0,
        "frequencies_precision": "float64",
        "in_channels": 128,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "num_attention_heads": 2,
        "num_embeds_ada_norm": 1000,
        "num_layers": num_layers,
        "num_vector_embeds": None,
        "only_cross_attention": False,
        "out_channels": 128,
        "positional_embedding_max_pos": [20, 2048, 2048],
        "positional_embedding_theta": 10000.0,
        "positional_embedding_type": "rope",
        "qk_norm": "rms_norm",
        "rope_type": rope_type,
        "share_ff": False,
        "standardization_norm": "rms_norm",
        "timestep_scale_multiplier": 1000,
        "upcast_attention": False,
        "use_audio_video_cross_attention": True,
        "use_embeddings_connector": True,
        "use_linear_projection": False,
        "use_middle_indices_grid": True,
    }
    if v == "2.0":
        cfg["_diffusers_version"] = "0.25.1"
    else:
        cfg.update(
            {
                "apply_gated_attention": True,
                "audio_connector_attention_head_dim": 16,
                "audio_connector_num_attention_heads": 2,
                "caption_proj_before_connector": True,
                "caption_proj_input_norm": False,
                "caption_projection_first_linear": False,
                "caption_projection_second_linear": False,
                "connector_apply_gated_attention": True,
                "connector_attention_head_dim": 32,
                "connector_learnable_registers_std": 1,
                "cross_attention_adaln": True,
                "text_encoder_norm_type": "per_token_rms",
            }
        )
    if not double_precision:
        del cfg["frequencies_precision"]

    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = copy.deepcopy(value)

    # Keep the derived widths consistent with the head settings (unless given explicitly).
    video_inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    audio_inner = cfg["audio_num_attention_heads"] * cfg["audio_attention_head_dim"]
    if "cross_attention_dim" not in overrides:
        cfg["cross_attention_dim"] = video_inner
    if "audio_cross_attention_dim" not in overrides:
        cfg["audio_cross_attention_dim"] = audio_inner
    if v == "2.3" and cfg.get("caption_proj_before_connector"):
        # V2: the connectors work at the transformer widths.
        if "connector_attention_head_dim" not in overrides:
            cfg["connector_attention_head_dim"] = video_inner // cfg["connector_num_attention_heads"]
        if "audio_connector_attention_head_dim" not in overrides and "audio_connector_num_attention_heads" in cfg:
            cfg["audio_connector_attention_head_dim"] = audio_inner // cfg["audio_connector_num_attention_heads"]
    elif "connector_attention_head_dim" not in overrides:
        # V1: the connectors work at the Gemma width (= caption_channels).
        cfg["connector_attention_head_dim"] = cfg["caption_channels"] // cfg["connector_num_attention_heads"]
    return cfg


def vae_config(version: str = "2.3", **overrides) -> dict:
    """The ``vae`` section: the released block layouts with 1-2 layers per res stage and narrow widths.

    2.3: non-residual decoder, no timestep conditioning, ``spatial_padding_mode`` "zeros".
    2.0: residual ``compress_all`` decoder with timestep conditioning; no ``spatial_padding_mode`` key (ltx-core
    then pads the encoder with zeros and the decoder with reflect).
    The encoder's width starts at the latent width (128, hard-coded by ltx-core); it grows only in the last
    compression (x2 -> 256). The decoder starts at ``decoder_base_channels * 8`` = 128.
    """
    v = normalize_version(version)
    encoder_blocks = [
        ["res_x", {"num_layers": 2}],
        ["compress_space_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
        ["compress_time_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 1}],
    ]
    cfg: dict = {
        "_class_name": "CausalVideoAutoencoder",
        "dims": 3,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "encoder_blocks": encoder_blocks,
    }
    if v == "2.3":
        cfg["decoder_blocks"] = [
            ["res_x", {"num_layers": 2}],
            ["compress_space", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_time", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_all", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
            ["compress_all", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
        ]
        cfg.update(
            {
                "scaling_factor": 1.0,
                "norm_layer": "pixel_norm",
                "patch_size": 4,
                "latent_log_var": "uniform",
                "use_quant_conv": False,
                "causal_decoder": False,
                "timestep_conditioning": False,
                "normalize_latent_channels": False,
                "encoder_base_channels": 128,
                "decoder_base_channels": 16,
                "spatial_padding_mode": "zeros",
            }
        )
    else:
        cfg["decoder_blocks"] = [
            ["res_x", {"num_layers": 2, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
        ]
        cfg.update(
            {
                "scaling_factor": 1.0,
                "norm_layer": "pixel_norm",
                "patch_size": 4,
                "latent_log_var": "uniform",
                "use_quant_conv": False,
                "causal_decoder": False,
                "timestep_conditioning": True,
                "normalize_latent_channels": False,
                "decoder_base_channels": 16,
            }
        )
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def audio_vae_config(version: str = "2.3", **ddconfig_overrides) -> dict:
    """The ``audio_vae`` section. ``ch`` must stay 128 (statistics size); ch_mult (1, 1, 2) keeps one width change
    (``nin_shortcut`` in ``down.2`` / ``up.1``) while staying small; 2 res blocks per level like the release."""
    normalize_version(version)
    ddconfig = {
        "double_z": True,
        "mel_bins": 64,
        "z_channels": 8,
        "resolution": 256,
        "downsample_time": False,
        "in_channels": 2,
        "out_ch": 2,
        "ch": 128,
        "ch_mult": [1, 1, 2],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
        "mid_block_add_attention": False,
        "norm_type": "pixel",
        "causality_axis": "height",
    }
    for key, value in ddconfig_overrides.items():
        if value is None:
            ddconfig.pop(key, None)
        else:
            ddconfig[key] = copy.deepcopy(value)
    return {
        "model": {"params": {"ddconfig": ddconfig, "sampling_rate": 16000}},
        "preprocessing": {
            "audio": {
                "sampling_rate": 16000,
                "max_wav_value": 32768.0,
                "duration": 5.12,
                "stereo": True,
                "causal_padding": 3,
            },
            "stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
            "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000},
        },
    }


def vocoder_config(version: str = "2.3", *, initial_channel: int = 128, bwe_initial_channel: int = 128) -> dict:
    """The ``vocoder`` section: released rates/kernels, narrow widths. 2.0: flat HiFi-GAN ("1") config;
    2.3: ``{"vocoder": AMP1/SnakeBeta, "bwe": ...}`` (bandwidth extension 16 kHz -> 48 kHz)."""
    v = normalize_version(version)
    dilations = [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    if v == "2.0":
        return {
            "upsample_initial_channel": initial_channel,
            "resblock": "1",
            "upsample_rates": [6, 5, 2, 2, 2],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_kernel_sizes": [16, 15, 8, 4, 4],
            "resblock_dilation_sizes": dilations,
            "stereo": True,
        }
    return {
        "vocoder": {
            "upsample_initial_channel": initial_channel,
            "resblock": "AMP1",
            "upsample_rates": [5, 2, 2, 2, 2, 2],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
            "resblock_dilation_sizes": dilations,
            "stereo": True,
            "use_tanh_at_final": False,
            "activation": "snakebeta",
            "use_bias_at_final": False,
        },
        "bwe": {
            "upsample_initial_channel": bwe_initial_channel,
            "resblock": "AMP1",
            "upsample_rates": [6, 5, 2, 2, 2],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_kernel_sizes": [12, 11, 4, 4, 4],
            "resblock_dilation_sizes": dilations,
            "stereo": True,
            "use_tanh_at_final": False,
            "activation": "snakebeta",
            "use_bias_at_final": False,
            "apply_final_activation": False,
            "input_sampling_rate": 16000,
            "output_sampling_rate": 48000,
            "hop_length": 80,
            "n_fft": 512,
            "win_size": 512,
            "num_mels": 64,
        },
    }


_SCHEDULER_SECTION = {
    "_class_name": "RectifiedFlowScheduler",
    "_diffusers_version": "0.25.1",
    "num_train_timesteps": 1000,
    "shifting": None,
    "base_resolution": None,
    "sampler": "LinearQuadratic",
}


def checkpoint_config(version: str = "2.3", **transformer_kwargs) -> dict:
    """The full ``config`` metadata dict: ``transformer``, ``vae``, ``scheduler``, ``audio_vae``, ``vocoder``."""
    return {
        "transformer": transformer_config(version, **transformer_kwargs),
        "vae": vae_config(version),
        "scheduler": dict(_SCHEDULER_SECTION),
        "audio_vae": audio_vae_config(version),
        "vocoder": vocoder_config(version),
    }


def upsampler_config(
    *,
    mid_channels: int = 32,
    rational_resampler: bool = False,
    spatial_scale: float = 2.0,
    spatial_upsample: bool = True,
    temporal_upsample: bool = False,
    num_blocks_per_stage: int = 4,
    dims: int = 3,
) -> dict:
    """Top-level ``config`` of a spatial upsampler file. ``mid_channels`` must be a multiple of 32 (GroupNorm)."""
    if mid_channels % 32:
        raise ValueError("mid_channels must be a multiple of 32 (ltx-core uses GroupNorm(32, mid_channels))")
    return {
        "_class_name": "LatentUpsampler",
        "in_channels": 128,
        "mid_channels": mid_channels,
        "num_blocks_per_stage": num_blocks_per_stage,
        "dims": dims,
        "spatial_upsample": spatial_upsample,
        "temporal_upsample": temporal_upsample,
        "spatial_scale": spatial_scale,
        "rational_resampler": rational_resampler,
    }


# ---------------------------------------------------------------------------------------------------------
# Gemma dimensions (hard-coded in ltx-core's feature extractor)
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def patch_gemma_dims(hidden_size: int = TEXT_HIDDEN_SIZE, num_hidden_states: int = TEXT_NUM_HIDDEN_STATES):
    """Make ltx-core's ``EmbeddingsProcessorConfigurator`` build the feature extractor for a tiny Gemma.

    ltx-core reads ``GEMMA3_CONFIG_FOR_LTX.text_config.{hidden_size, num_hidden_layers}`` (3840, 48) from the
    encoder_configurator module; this temporarily replaces that module attribute. Nothing else is touched.
    """
    stand_in = SimpleNamespace(
        text_config=SimpleNamespace(hidden_size=hidden_size, num_hidden_layers=num_hidden_states - 1)
    )
    with mock.patch.object(_ltx_encoder_configurator, "GEMMA3_CONFIG_FOR_LTX", stand_in):
        yield


def text_encoder_dims(path_or_config: str | pathlib.Path | dict, state_dict_shapes: dict | None = None) -> tuple:
    """``(gemma_hidden_size, num_hidden_states)`` of a checkpoint: ``caption_channels`` and
    ``aggregate_embed.in_features // caption_channels`` (read from the file's tensor shapes)."""
    if isinstance(path_or_config, dict):
        config = path_or_config
        shapes = state_dict_shapes or {}
    else:
        config = read_config(path_or_config)
        shapes = _file_shapes(path_or_config)
    hidden = config["transformer"].get("caption_channels", 3840)
    for key in (
        "text_embedding_projection.aggregate_embed.weight",
        "text_embedding_projection.video_aggregate_embed.weight",
    ):
        if key in shapes:
            in_features = shapes[key][1]
            if in_features % hidden:
                raise ValueError(f"{key} in_features {in_features} is not a multiple of caption_channels {hidden}")
            return hidden, in_features // hidden
    return hidden, TEXT_NUM_HIDDEN_STATES


# ---------------------------------------------------------------------------------------------------------
# Components: configurator, SDOps, file-key mapping
# ---------------------------------------------------------------------------------------------------------


def _prefix_map(*pairs: tuple[str, str], default: str | None = None) -> Callable[[str], str]:
    def to_file_key(model_key: str) -> str:
        for model_prefix, file_prefix in pairs:
            if model_key.startswith(model_prefix):
                return file_prefix + model_key[len(model_prefix) :]
        if default is None:
            raise KeyError(f"no file prefix for model key {model_key!r}")
        return default + model_key

    return to_file_key


_REFERENCE_SPECS: dict[str, tuple] = {
    # component: (configurator, SDOps, model-key -> file-key)
    "transformer": (
        LTXModelConfigurator,
        LTXV_MODEL_COMFY_RENAMING_MAP,
        _prefix_map(default="model.diffusion_model."),
    ),
    "embeddings_processor": (
        EmbeddingsProcessorConfigurator,
        EMBEDDINGS_PROCESSOR_KEY_OPS,
        _prefix_map(
            ("feature_extractor.", "text_embedding_projection."),
            ("video_connector.", "model.diffusion_model.video_embeddings_connector."),
            ("audio_connector.", "model.diffusion_model.audio_embeddings_connector."),
        ),
    ),
    "video_encoder": (
        VideoEncoderConfigurator,
        VAE_ENCODER_COMFY_KEYS_FILTER,
        _prefix_map(("per_channel_statistics.", "vae.per_channel_statistics."), default="vae.encoder."),
    ),
    "video_decoder": (
        VideoDecoderConfigurator,
        VAE_DECODER_COMFY_KEYS_FILTER,
        _prefix_map(("per_channel_statistics.", "vae.per_channel_statistics."), default="vae.decoder."),
    ),
    "audio_encoder": (
        AudioEncoderConfigurator,
        AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER,
        _prefix_map(("per_channel_statistics.", "audio_vae.per_channel_statistics."), default="audio_vae.encoder."),
    ),
    "audio_decoder": (
        AudioDecoderConfigurator,
        AUDIO_VAE_DECODER_COMFY_KEYS_FILTER,
        _prefix_map(("per_channel_statistics.", "audio_vae.per_channel_statistics."), default="audio_vae.decoder."),
    ),
    "vocoder": (VocoderConfigurator, VOCODER_COMFY_KEYS_FILTER, _prefix_map(default="vocoder.")),
    "upsampler": (LatentUpsamplerConfigurator, None, _prefix_map(default="")),
}

#: build_checkpoint component -> reference models written for it
_COMPONENT_MODELS = {
    "transformer": ("transformer",),
    "connectors": ("embeddings_processor",),
    "vae": ("video_encoder", "video_decoder"),
    "audio_vae": ("audio_encoder", "audio_decoder"),
    "vocoder": ("vocoder",),
}

#: models whose constructor computes buffer values we perturb (filters): built on CPU, the rest on meta
_BUILD_ON_CPU = {"vocoder", "upsampler"}


def _apply_sd_ops(sd_ops: SDOps | None, file_key: str) -> str | None:
    if sd_ops is None:
        return file_key
    key = sd_ops.apply_to_key(file_key)
    if key is None:
        return None
    results = sd_ops.apply_to_key_value(key, torch.empty(0))
    if len(results) != 1:
        raise AssertionError(f"SDOps {sd_ops.name} maps {file_key!r} to {len(results)} keys")
    return results[0].new_key


def _instantiate(model_name: str, config: dict, gemma_dims: tuple[int, int] | None = None) -> torch.nn.Module:
    configurator = _REFERENCE_SPECS[model_name][0]
    ctx = patch_gemma_dims(*gemma_dims) if model_name == "embeddings_processor" else contextlib.nullcontext()
    device = "cpu" if model_name in _BUILD_ON_CPU else "meta"
    with ctx, torch.device(device):
        return configurator.from_config(config)


def file_key_map(model_name: str, model: torch.nn.Module) -> dict[str, str]:
    """``{model state-dict key: file key}`` for a reference model, inverted from ltx-core's SDOps.

    Every file key is checked by running ltx-core's forward SDOps on it (it must come back to the model key).
    """
    _, sd_ops, to_file_key = _REFERENCE_SPECS[model_name]
    mapping = {}
    for model_key in model.state_dict(keep_vars=True):
        file_key = to_file_key(model_key)
        back = _apply_sd_ops(sd_ops, file_key)
        if back != model_key:
            raise AssertionError(f"{model_name}: file key {file_key!r} maps back to {back!r}, not {model_key!r}")
        mapping[model_key] = file_key
    return mapping


# ---------------------------------------------------------------------------------------------------------
# Random values
# ---------------------------------------------------------------------------------------------------------


def _generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _normal(shape, gen, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean


def _uniform(shape, gen, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float32) * (high - low) + low


def _stft_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plausible values for the BWE mel front end (ltx-core initialises them to zeros): Hann-windowed DFT bases
    (rows: real parts, then imaginary parts) and a slaney mel filterbank."""
    forward = module.stft_fn.forward_basis
    n_fft = forward.shape[-1]
    n_freqs = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * k * n / n_fft
    dft = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=0)  # (2*n_freqs, n_fft)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    inverse = torch.linalg.pinv(dft).T * window
    import torchaudio.functional as taf  # noqa: PLC0415 - only needed for 2.3 vocoders

    mel = taf.melscale_fbanks(
        n_freqs, 0.0, 8000.0, module.mel_basis.shape[0], 16000, norm="slaney", mel_scale="slaney"
    ).T
    return {
        "stft_fn.forward_basis": (dft * window)[:, None, :].float(),
        "stft_fn.inverse_basis": inverse[:, None, :].float(),
        "mel_basis": mel.float(),
    }


def _vocoder_gain(model: torch.nn.Module, module_name: str) -> float:
    """Extra weight gain inside vocoders so the random waveform stays mostly inside the final tanh / clamp range
    (unit-gain residual blocks and Snake activations blow it up to |x| ~ 100, which would hide errors)."""
    if not isinstance(model, (_ltx_vocoder.Vocoder, _ltx_vocoder.VocoderWithBWE)):
        return 1.0
    if ".resblocks." in f".{module_name}.":
        return 0.3
    if module_name.endswith("conv_post"):
        owner_name = module_name.rpartition(".")[0]
        owner = model.get_submodule(owner_name) if owner_name else model
        return 0.12 if owner.is_amp else 0.3
    return 1.0


def _random_value(
    model: torch.nn.Module, model_key: str, tensor: torch.Tensor, seed: int, file_key: str, cache: dict
) -> torch.Tensor:
    """A seeded random float32 value for one parameter/buffer, scaled so activations stay O(1)."""
    gen = _generator(seed, file_key)
    module_name, _, attr = model_key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    shape = tuple(tensor.shape)
    nn = torch.nn

    if isinstance(module, _ltx_vocoder.MelSTFT) or isinstance(module, _ltx_vocoder._STFTFn):
        owner_name = module_name if isinstance(module, _ltx_vocoder.MelSTFT) else module_name.rpartition(".")[0]
        if owner_name not in cache:
            cache[owner_name] = _stft_buffers(model.get_submodule(owner_name))
        local = model_key[len(owner_name) + 1 :]
        return cache[owner_name][local] * _uniform(shape, gen, 0.9, 1.1)
    if attr in ("filter", "kernel") and tensor.device.type != "meta":
        # Anti-aliasing / blur filters computed by the constructor: keep their shape, make each one unique.
        return tensor.detach().float() * _uniform(shape, gen, 0.8, 1.2)
    if attr == "mean-of-means":
        return _normal(shape, gen, 0.1)
    if attr == "std-of-means":
        return _uniform(shape, gen, 0.5, 1.5)
    if attr == "timestep_scale_multiplier":
        return _uniform(shape, gen, 900.0, 1100.0)
    if "scale_shift_table" in attr:
        return _normal(shape, gen, 0.5)
    if attr == "learnable_registers":
        return _normal(shape, gen, 1.0)
    if attr in ("alpha", "beta"):  # Snake / SnakeBeta log-scale parameters
        return _uniform(shape, gen, -0.5, 0.5)
    if attr.startswith("per_channel_scale"):  # video VAE noise injection
        return _normal(shape, gen, 0.1)
    if isinstance(module, (nn.RMSNorm, nn.LayerNorm, nn.GroupNorm)):
        return _uniform(shape, gen, 0.5, 1.5) if attr == "weight" else _normal(shape, gen, 0.1)
    if attr == "bias":
        return _normal(shape, gen, 0.1)
    if attr.startswith("weight") and len(shape) >= 2:
        if isinstance(module, nn.Linear):
            fan_in = module.in_features
        elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            fan_in = shape[0] * math.prod(shape[2:]) / math.prod(module.stride)
        else:
            fan_in = math.prod(shape[1:])
        return _normal(shape, gen, _vocoder_gain(model, module_name) / math.sqrt(max(fan_in, 1)))
    if len(shape) >= 1:
        return _normal(shape, gen, 0.1)
    return _uniform(shape, gen, 0.5, 1.5)


def _random_state(model_name: str, model: torch.nn.Module, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``{file key: tensor}`` for every parameter and persistent buffer of a reference model."""
    key_map = file_key_map(model_name, model)
    cache: dict = {}
    out = {}
    for model_key, tensor in model.state_dict(keep_vars=True).items():
        file_key = key_map[model_key]
        value = _random_value(model, model_key, tensor, seed, file_key, cache)
        if value.shape != tensor.shape:
            raise AssertionError(f"{model_key}: generated {tuple(value.shape)}, expected {tuple(tensor.shape)}")
        out[file_key] = value.to(dtype).contiguous()
    return out


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def _save(tensors: dict[str, torch.Tensor], path: str | pathlib.Path, metadata: dict[str, str]) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(path), metadata=metadata)
    return path


def build_checkpoint(
    path: str | pathlib.Path,
    version: str = "2.3",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    components: Sequence[str] = ALL_COMPONENTS,
    config: dict | None = None,
    text_hidden_states: int = TEXT_NUM_HIDDEN_STATES,
    extra_vae_stats: bool = False,
    **transformer_kwargs,
) -> pathlib.Path:
    """Write a tiny original-format single-file checkpoint and return its path.

    ``components`` ⊆ ("transformer", "connectors", "vae", "audio_vae", "vocoder"); the metadata always carries the
    full ``config`` (all sections) and ``model_version``. ``config`` replaces :func:`checkpoint_config`
    (``transformer_kwargs`` must then be empty). Values are seeded per file key, so a tensor does not change
    when other components are added. ``text_hidden_states`` is the tiny Gemma's number of hidden states.
    ``extra_vae_stats`` adds the statistics the released files carry beyond the two ltx-core uses
    (``vae.per_channel_statistics.{channel, mean-of-stds, mean-of-stds_over_std-of-means}``, per third-party
    converters); ltx-core drops them silently, a converter must too. Off by default, so that every file tensor
    is loaded by some reference model.
    """
    v = normalize_version(version)
    unknown = set(components) - set(ALL_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from {ALL_COMPONENTS}")
    if config is None:
        config = checkpoint_config(v, **transformer_kwargs)
    elif transformer_kwargs:
        raise TypeError("pass either config or transformer keyword arguments, not both")
    gemma_dims = (config["transformer"].get("caption_channels", TEXT_HIDDEN_SIZE), text_hidden_states)

    tensors: dict[str, torch.Tensor] = {}
    for component in components:
        for model_name in _COMPONENT_MODELS[component]:
            model = _instantiate(model_name, config, gemma_dims)
            for key, value in _random_state(model_name, model, seed, dtype).items():
                if key in tensors:  # shared keys (per-channel statistics of encoder/decoder)
                    if tensors[key].shape != value.shape or not torch.equal(tensors[key], value):
                        raise AssertionError(f"shared key {key} differs between models")
                    continue
                tensors[key] = value
    if extra_vae_stats and "vae" in components:
        prefix = "vae.per_channel_statistics."
        n = tensors[prefix + "std-of-means"].shape[0]
        mean_of_stds = _uniform((n,), _generator(seed, prefix + "mean-of-stds"), 0.5, 1.5)
        extras = {
            "channel": torch.arange(n, dtype=torch.float32),
            "mean-of-stds": mean_of_stds,
            "mean-of-stds_over_std-of-means": mean_of_stds / tensors[prefix + "std-of-means"].float(),
        }
        tensors.update({prefix + name: value.to(dtype) for name, value in extras.items()})
    metadata = {"config": json.dumps(config), "model_version": _MODEL_VERSION[v]}
    return _save(tensors, path, metadata)


def build_upsampler(
    path: str | pathlib.Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    rational_resampler: bool = False,
    mid_channels: int = 32,
    spatial_scale: float = 2.0,
    spatial_upsample: bool = True,
    temporal_upsample: bool = False,
    num_blocks_per_stage: int = 4,
) -> pathlib.Path:
    """Write a tiny spatial (or temporal) latent-upsampler file: unprefixed keys, ``config`` at top level."""
    config = upsampler_config(
        mid_channels=mid_channels,
        rational_resampler=rational_resampler,
        spatial_scale=spatial_scale,
        spatial_upsample=spatial_upsample,
        temporal_upsample=temporal_upsample,
        num_blocks_per_stage=num_blocks_per_stage,
    )
    model = _instantiate("upsampler", config)
    tensors = _random_state("upsampler", model, seed, dtype)
    return _save(tensors, path, {"config": json.dumps(config)})


_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


def build_lora(
    path: str | pathlib.Path,
    checkpoint_path: str | pathlib.Path,
    *,
    rank: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    include_connectors: bool = False,
    targets: Iterable[str] = _LORA_TARGETS,
    alpha: float | None = None,
    scale: float = 0.5,
) -> pathlib.Path:
    """Write a ComfyUI-format LoRA for the checkpoint's transformer block linears.

    Keys: ``diffusion_model.transformer_blocks.{i}.<module>.lora_A.weight`` [rank, in] and ``.lora_B.weight``
    [out, rank], for every 2-D block weight whose module name ends with one of ``targets`` (all attentions incl.
    audio and audio<->video, ``ff`` / ``audio_ff``); shapes are read from the checkpoint. With
    ``include_connectors`` the text connectors' block linears are added too
    (``diffusion_model.{video,audio}_embeddings_connector.transformer_1d_blocks.{i}...``; ltx-core ignores them).
    ``alpha`` (optional) adds ``.alpha`` scalars (ltx-core ignores them: it scales by strength only).
    The delta ``B @ A`` has entries of about ``scale / sqrt(in)``.
    """
    prefix = "model.diffusion_model."
    blocks = (f"{prefix}transformer_blocks.",)
    if include_connectors:
        blocks += (f"{prefix}video_embeddings_connector.", f"{prefix}audio_embeddings_connector.")
    targets = tuple(targets)
    shapes = _file_shapes(checkpoint_path)
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in sorted(shapes.items()):
        if not key.startswith(blocks) or not key.endswith(".weight") or len(shape) != 2:
            continue
        module = key[: -len(".weight")]
        if not module.endswith(tuple("." + t for t in targets)):
            continue
        out_features, in_features = shape
        lora_key = "diffusion_model." + module[len(prefix) :]
        a = _normal((rank, in_features), _generator(seed, lora_key + ".lora_A"), 1.0 / math.sqrt(in_features))
        b = _normal((out_features, rank), _generator(seed, lora_key + ".lora_B"), scale / math.sqrt(rank))
        tensors[f"{lora_key}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{lora_key}.lora_B.weight"] = b.to(dtype).contiguous()
        if alpha is not None:
            tensors[f"{lora_key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    if not tensors:
        raise ValueError(f"{checkpoint_path} has no transformer block weights to build a LoRA for")
    if include_connectors and not any("_embeddings_connector." in key for key in tensors):
        raise ValueError(f"{checkpoint_path} has no connector weights (build it with the 'connectors' component)")
    return _save(tensors, path, {})


# ---------------------------------------------------------------------------------------------------------
# Reading files / building the reference
# ---------------------------------------------------------------------------------------------------------


def read_metadata(path: str | pathlib.Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_config(path: str | pathlib.Path) -> dict:
    """The parsed ``config`` metadata (what ltx-core's loader reads)."""
    return json.loads(read_metadata(path).get("config", "{}"))


def _file_shapes(path: str | pathlib.Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def _builder(path, component: str, loras: Sequence = ()) -> SingleGPUModelBuilder:
    if component not in _REFERENCE_SPECS:
        raise ValueError(f"unknown component {component!r}; choose from {tuple(_REFERENCE_SPECS)}")
    configurator, sd_ops, _ = _REFERENCE_SPECS[component]
    builder = SingleGPUModelBuilder(model_class_configurator=configurator, model_path=str(path), model_sd_ops=sd_ops)
    for lora in loras:
        lora_path, strength = (lora, 1.0) if isinstance(lora, (str, pathlib.Path)) else lora
        if component != "transformer":
            raise ValueError("ltx-core applies LoRAs to the transformer only")
        builder = builder.lora(str(lora_path), strength, LTXV_LORA_COMFY_RENAMING_MAP)
    return builder


def _reference_context(path, component: str):
    if component == "embeddings_processor":
        return patch_gemma_dims(*text_encoder_dims(path))
    return contextlib.nullcontext()


def load_reference(
    path: str | pathlib.Path,
    component: str,
    dtype: torch.dtype | None = torch.float32,
    *,
    loras: Sequence = (),
) -> torch.nn.Module:
    """The ltx-core model for ``component``, built from the file through ltx-core's own loading path
    (``SingleGPUModelBuilder`` + the component's configurator and SDOps, as ``ModelLedger`` does), on CPU, eval.

    Components: "transformer" (``LTXModel``, not ``X0Model``), "embeddings_processor", "video_encoder",
    "video_decoder", "audio_encoder", "audio_decoder", "vocoder", "upsampler" (own file). The builder casts every
    file tensor to ``dtype`` (``None`` keeps the file dtypes); bf16 -> fp32 is exact. ``loras``: paths or
    ``(path, strength)`` pairs fused by ltx-core at build time (transformer only; with ``dtype`` float32 the
    deltas are computed in float32). Raises if anything is left on the meta device (ltx-core only logs that).
    """
    builder = _builder(path, component, loras)
    with _reference_context(path, component):
        model = builder.build(device=torch.device("cpu"), dtype=dtype)
    on_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if on_meta:
        raise RuntimeError(f"{component}: ltx-core left {len(on_meta)} tensors uninitialised, e.g. {on_meta[:5]}")
    return model.eval()


def reference_key_report(path: str | pathlib.Path, component: str) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)``: model keys the file (after ltx-core's SDOps) does not provide, and renamed file
    keys the model does not have (ltx-core loads with ``strict=False`` and drops those silently)."""
    builder = _builder(path, component)
    with _reference_context(path, component):
        meta_model = builder.meta_model(builder.model_config(), ())
    expected = set(meta_model.state_dict(keep_vars=True))
    loaded = set(
        builder.load_sd(
            [str(path)], registry=builder.registry, device=torch.device("cpu"), sd_ops=builder.model_sd_ops
        ).sd
    )
    return sorted(expected - loaded), sorted(loaded - expected)


# ---------------------------------------------------------------------------------------------------------
# Cached checkpoints (one per process and argument set)
# ---------------------------------------------------------------------------------------------------------

_CACHE: dict[str, pathlib.Path] = {}
_CACHE_DIR: pathlib.Path | None = None


def _cache_dir() -> pathlib.Path:
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = pathlib.Path(tempfile.mkdtemp(prefix="ltx2_factories_"))
        atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    return _CACHE_DIR


def cached_checkpoint(kind: str = "checkpoint", /, *args, **kwargs) -> pathlib.Path:
    """Build (once per process) and return a file: ``kind`` is "checkpoint" (:func:`build_checkpoint`),
    "upsampler" (:func:`build_upsampler`) or "lora" (:func:`build_lora`, pass ``checkpoint_path=``).
    The file lives in a per-process temporary directory removed at exit; treat it as read-only."""
    builders = {"checkpoint": build_checkpoint, "upsampler": build_upsampler, "lora": build_lora}
    if kind not in builders:
        raise ValueError(f"kind must be one of {tuple(builders)}")
    if kind == "lora" and args:
        raise TypeError("pass checkpoint_path= as a keyword for kind='lora'")
    cache_key = repr((kind, args, sorted(kwargs.items(), key=lambda kv: kv[0])))
    if cache_key not in _CACHE or not _CACHE[cache_key].exists():
        name = hashlib.sha256(cache_key.encode()).hexdigest()[:16] + ".safetensors"
        _CACHE[cache_key] = builders[kind](_cache_dir() / name, *args, **kwargs)
    return _CACHE[cache_key]


# ---------------------------------------------------------------------------------------------------------
# Reference transformer inputs
# ---------------------------------------------------------------------------------------------------------


def transformer_inputs(
    config: dict | str | pathlib.Path,
    *,
    batch: int = 1,
    frames: int = 2,
    height: int = 2,
    width: int = 3,
    audio_frames: int = 5,
    text_tokens: int = 7,
    sigma: float = 0.7,
    fps: float = 24.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple:
    """``(video, audio)`` ltx-core ``Modality`` inputs for ``LTXModel.forward`` with pipeline-style positions
    (video: pixel bounds with the causal fix, time / fps, cast to ``dtype``; audio: seconds, float32), random
    latents and contexts (19B: caption_channels wide, before the in-transformer projection; 22B: the
    transformer widths) and per-token timesteps ``sigma``. ``config``: the full checkpoint config or a file path."""
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier  # noqa: PLC0415
    from ltx_core.model.transformer.modality import Modality  # noqa: PLC0415
    from ltx_core.tools import AudioLatentTools, VideoLatentTools  # noqa: PLC0415
    from ltx_core.types import AudioLatentShape, VideoLatentShape  # noqa: PLC0415

    if not isinstance(config, dict):
        config = read_config(config)
    tcfg = config["transformer"]
    gen = torch.Generator().manual_seed(seed)
    video_state = VideoLatentTools(
        VideoLatentPatchifier(patch_size=1),
        VideoLatentShape(batch, tcfg.get("in_channels", 128), frames, height, width),
        fps,
    ).create_initial_state(device="cpu", dtype=dtype)
    audio_state = AudioLatentTools(
        AudioPatchifier(patch_size=1), AudioLatentShape(batch, 8, audio_frames, 16)
    ).create_initial_state(device="cpu", dtype=dtype)
    if tcfg.get("caption_proj_before_connector", False):
        video_ctx_dim, audio_ctx_dim = tcfg["cross_attention_dim"], tcfg["audio_cross_attention_dim"]
    else:
        video_ctx_dim = audio_ctx_dim = tcfg["caption_channels"]
    sig = torch.full((batch,), sigma, dtype=torch.float32)

    def modality(state, ctx_dim):
        latent = torch.randn(state.latent.shape, generator=gen).to(dtype)
        return Modality(
            latent=latent,
            sigma=sig,
            timesteps=state.denoise_mask * sigma,
            positions=state.positions,
            context=torch.randn(batch, text_tokens, ctx_dim, generator=gen).to(dtype),
        )

    return modality(video_state, video_ctx_dim), modality(audio_state, audio_ctx_dim)


# ---------------------------------------------------------------------------------------------------------
# Transformer parity helpers shared by the LoRA and fp8 tests (ours vs the reference on one input set)
# ---------------------------------------------------------------------------------------------------------


def transformer_parity_inputs(config):
    """Tiny inputs for our transformer config: latents, contexts, sigma, coordinates and per-token timesteps."""
    from ltx2_diffusers.models.rope import audio_coords, video_coords  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    frames, height, width, audio_frames, text = 2, 2, 3, 5, 7
    text_dim = config.caption_channels if config.use_prompt_embeddings else None
    sigma = torch.tensor([0.6])
    video = torch.randn(1, frames * height * width, config.in_channels, generator=g)
    audio = torch.randn(1, audio_frames, config.audio_in_channels, generator=g)
    return dict(
        video=video,
        audio=audio,
        ctx=torch.randn(1, text, text_dim or config.cross_attention_dim, generator=g),
        actx=torch.randn(1, text, text_dim or config.audio_cross_attention_dim, generator=g),
        sigma=sigma,
        vc=video_coords(1, frames, height, width, fps=24.0, dtype=torch.float32),
        ac=audio_coords(1, audio_frames),
        vt=sigma[:, None].expand(1, video.shape[1]),
        at=sigma[:, None].expand(1, audio_frames),
    )


@torch.no_grad()
def run_ours_transformer(model, x):
    return model(
        hidden_states=x["video"],
        audio_hidden_states=x["audio"],
        encoder_hidden_states=x["ctx"],
        audio_encoder_hidden_states=x["actx"],
        timestep=x["vt"] * 1000,
        audio_timestep=x["at"] * 1000,
        sigma=x["sigma"] * 1000,
        audio_sigma=x["sigma"] * 1000,
        video_coords=x["vc"],
        audio_coords=x["ac"],
        use_cross_timestep=True,
        return_dict=False,
    )


@torch.no_grad()
def run_reference_transformer(model, x):
    from ltx_core.model.transformer.modality import Modality as _Modality  # noqa: PLC0415

    return model(
        _Modality(latent=x["video"], sigma=x["sigma"], timesteps=x["vt"], positions=x["vc"], context=x["ctx"]),
        _Modality(latent=x["audio"], sigma=x["sigma"], timesteps=x["at"], positions=x["ac"], context=x["actx"]),
        None,
    )


def max_abs_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------------
# Released full-size video VAE block layouts (encoder, decoder), for key-coverage tests and benchmarks
# ---------------------------------------------------------------------------------------------------------
_ENC_23 = [
    ["res_x", {"num_layers": 4}],
    ["compress_space_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 6}],
    ["compress_time_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 4}],
    ["compress_all_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 2}],
    ["compress_all_res", {"multiplier": 1}],
    ["res_x", {"num_layers": 2}],
]
_DEC_23 = [
    ["res_x", {"num_layers": 4}],
    ["compress_space", {"multiplier": 2}],
    ["res_x", {"num_layers": 6}],
    ["compress_time", {"multiplier": 2}],
    ["res_x", {"num_layers": 4}],
    ["compress_all", {"multiplier": 1}],
    ["res_x", {"num_layers": 2}],
    ["compress_all", {"multiplier": 2}],
    ["res_x", {"num_layers": 2}],
]
_ENC_20 = [
    ["res_x", {"num_layers": 4}],
    ["compress_space_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 6}],
    ["compress_time_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 6}],
    ["compress_all_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 2}],
    ["compress_all_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 2}],
]
_DEC_20 = [
    ["res_x", {"num_layers": 5, "inject_noise": False}],
    ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 5, "inject_noise": False}],
    ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 5, "inject_noise": False}],
    ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 5, "inject_noise": False}],
]
RELEASED_VAE_BLOCKS = {"2.3": (_ENC_23, _DEC_23), "2.0": (_ENC_20, _DEC_20)}


# ---------------------------------------------------------------------------------------------------------
# The reference key listings (shared/reference/keys, which lies beside the checkout for developers and CI)
# ---------------------------------------------------------------------------------------------------------
def _find_reference_keys() -> pathlib.Path | None:
    import os  # noqa: PLC0415

    if os.environ.get("LTX2_REFERENCE_KEYS"):
        return pathlib.Path(os.environ["LTX2_REFERENCE_KEYS"])
    for folder in pathlib.Path(__file__).resolve().parents[1:]:
        candidate = folder / "shared" / "reference" / "keys"
        if candidate.is_dir():
            return candidate
    return None


REFERENCE_KEYS = _find_reference_keys()
_NO_REFERENCE_KEYS = "shared/reference/keys not found beside the checkout (set LTX2_REFERENCE_KEYS to its path)"


def running_under_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value (as CI services set ``CI=true``)."""
    import os  # noqa: PLC0415

    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def needs_reference_keys(test):
    """Decorator for tests that read the full-size key listings (:data:`REFERENCE_KEYS`).

    With the listings the test runs as written. Without them it is skipped with the reason locally, and FAILS
    (with the reason) under CI (``CI=true``): a CI run must never pass while silently skipping them.
    """
    import functools  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    if REFERENCE_KEYS is not None:
        return test
    if not running_under_ci():
        return pytest.mark.skip(reason=_NO_REFERENCE_KEYS)(test)

    @functools.wraps(test)
    def fail(*args, **kwargs):
        pytest.fail(f"CI=true: {_NO_REFERENCE_KEYS}", pytrace=False)

    return fail
