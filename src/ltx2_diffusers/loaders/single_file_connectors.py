"""Original-checkpoint layout of the LTX-2 text connectors (feature projection + video/audio connectors).

The connectors are diffusers' `LTX2TextConnectors` (reused by import); this module maps the original single-file
keys onto its state dict and builds its config from the checkpoint metadata the way ltx-core's
`EmbeddingsProcessorConfigurator` does.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import torch
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from diffusers.utils import logging
from safetensors import safe_open

from .single_file import (
    KeyTable,
    build_from_state_dict,
    check_torch_dtype,
    load_component_state_dict,
    read_checkpoint_config,
)


logger = logging.get_logger(__name__)

_PROJECTION = "text_embedding_projection."
_VIDEO_CONNECTOR = "model.diffusion_model.video_embeddings_connector."
_AUDIO_CONNECTOR = "model.diffusion_model.audio_embeddings_connector."

CONNECTORS_KEY_TABLE = KeyTable(
    name="connectors",
    prefix="",
    include_prefixes=(_PROJECTION, _VIDEO_CONNECTOR, _AUDIO_CONNECTOR),
    renames=(
        (r"^text_embedding_projection\.aggregate_embed\.", "text_proj_in."),
        (r"^text_embedding_projection\.video_aggregate_embed\.", "video_text_proj_in."),
        (r"^text_embedding_projection\.audio_aggregate_embed\.", "audio_text_proj_in."),
        (r"^model\.diffusion_model\.(video|audio)_embeddings_connector\.", r"\1_connector."),
        (r"\.transformer_1d_blocks\.", ".transformer_blocks."),
        (r"\.attn1\.q_norm\.", ".attn1.norm_q."),
        (r"\.attn1\.k_norm\.", ".attn1.norm_k."),
    ),
)

# ltx-core's feature-extractor selection: none of these keys -> V1 (LTX-2); all of them with exactly these
# values -> V2 (LTX-2.3); anything else is a layout ltx-core refuses.
_V2_KEYS = {
    "caption_proj_before_connector": True,
    "caption_projection_first_linear": False,
    "caption_proj_input_norm": False,
    "caption_projection_second_linear": False,
}
_ROPE_TYPES = ("interleaved", "split")
# Hard-coded in ltx-core (not read from the metadata): Gemma-3-12B width and hidden-state count, register count
# and connector RoPE theta.
_GEMMA_HIDDEN_SIZE = 3840
_GEMMA_NUM_HIDDEN_STATES = 49
_NUM_REGISTERS = 128
_CONNECTOR_ROPE_THETA = 10000.0


def _text_layout(section: Mapping) -> str:
    present = [k for k in _V2_KEYS if k in section]
    if not present:
        return "v1"
    missing = [k for k in _V2_KEYS if k not in section]
    if missing:
        raise ValueError(
            f"unknown text-connector layout in the checkpoint metadata: partial V2 config, missing {missing}"
        )
    wrong = {k: section[k] for k in _V2_KEYS if section[k] != _V2_KEYS[k]}
    if wrong:
        raise ValueError(
            "unknown text-connector layout in the checkpoint metadata: "
            + ", ".join(f"{k}={v!r} (expected {_V2_KEYS[k]!r})" for k, v in wrong.items())
        )
    return "v2"


def _shape(shapes: Mapping[str, Sequence[int]] | None, key: str) -> tuple[int, ...] | None:
    if shapes is None or key not in shapes:
        return None
    return tuple(int(s) for s in shapes[key])


def connectors_config_from_original(config: Mapping, tensor_shapes: Mapping[str, Sequence[int]] | None = None) -> dict:
    """`LTX2TextConnectors` kwargs from an original checkpoint's `config` metadata (or its `transformer` section).

    Reads what ltx-core reads (`rope_type`, `frequencies_precision`, `connector_*`, `audio_connector_*`, the four
    V2 text keys, the transformer widths for V2). The Gemma width / hidden-state count that ltx-core hard-codes
    (3840 x 49) and the register count (128) are taken from `tensor_shapes` (original key -> shape) when given.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    section = config["transformer"] if "transformer" in config else config
    if not isinstance(section, Mapping) or not section:
        raise ValueError("config has no 'transformer' section (the text connectors are configured there)")

    layout = _text_layout(section)
    rope_type = section.get("rope_type", "interleaved")
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r} in the checkpoint metadata (expected {_ROPE_TYPES})")
    max_pos = section.get("connector_positional_embedding_max_pos", [1])
    if not isinstance(max_pos, (list, tuple)) or len(max_pos) != 1:
        raise ValueError(f"connector_positional_embedding_max_pos must have one entry, got {max_pos!r}")

    video_heads = section.get("connector_num_attention_heads", 30)
    video_head_dim = section.get("connector_attention_head_dim", 128)
    video_layers = section.get("connector_num_layers", 2)
    audio_heads = section.get("audio_connector_num_attention_heads", video_heads)
    audio_head_dim = section.get("audio_connector_attention_head_dim", video_head_dim)
    audio_layers = section.get("audio_connector_num_layers", video_layers)
    gated = bool(section.get("connector_apply_gated_attention", False))
    video_inner, audio_inner = video_heads * video_head_dim, audio_heads * audio_head_dim

    # Gemma width and number of hidden states (embedding output + one per layer).
    if layout == "v1":
        proj = _shape(tensor_shapes, _PROJECTION + "aggregate_embed.weight")
        if proj is not None:
            caption_channels = proj[0]
            meta_channels = section.get("caption_channels")
            if meta_channels is not None and meta_channels != caption_channels:
                logger.warning(
                    f"caption_channels={meta_channels} in the metadata but the text projection outputs "
                    f"{caption_channels} features; using the tensor shape"
                )
        else:
            caption_channels = section.get("caption_channels", _GEMMA_HIDDEN_SIZE)
    else:
        proj = _shape(tensor_shapes, _PROJECTION + "video_aggregate_embed.weight")
        caption_channels = section.get("caption_channels", _GEMMA_HIDDEN_SIZE)
    if proj is not None:
        if len(proj) != 2 or proj[1] % caption_channels:
            raise ValueError(
                f"text projection weight of shape {proj} does not take a multiple of {caption_channels} "
                "(the text encoder width) input features"
            )
        proj_in_factor = proj[1] // caption_channels
    else:
        proj_in_factor = _GEMMA_NUM_HIDDEN_STATES

    registers = {}
    for name, prefix in (("video", _VIDEO_CONNECTOR), ("audio", _AUDIO_CONNECTOR)):
        shape = _shape(tensor_shapes, prefix + "learnable_registers")
        registers[name] = shape[0] if shape is not None else _NUM_REGISTERS

    if layout == "v1":
        video_hidden, audio_hidden = caption_channels, caption_channels
    else:
        video_hidden = section.get("num_attention_heads", 32) * section.get("attention_head_dim", 128)
        audio_hidden = section.get("audio_num_attention_heads", 32) * section.get("audio_attention_head_dim", 64)
    if (video_inner, audio_inner) != (video_hidden, audio_hidden):
        raise ValueError(
            f"connector widths (video {video_heads}x{video_head_dim}, audio {audio_heads}x{audio_head_dim}) do not "
            f"match their {layout.upper()} inputs (video {video_hidden}, audio {audio_hidden})"
        )

    return {
        "caption_channels": caption_channels,
        "text_proj_in_factor": proj_in_factor,
        "video_connector_num_attention_heads": video_heads,
        "video_connector_attention_head_dim": video_head_dim,
        "video_connector_num_layers": video_layers,
        "video_connector_num_learnable_registers": registers["video"],
        "video_gated_attn": gated,
        "audio_connector_num_attention_heads": audio_heads,
        "audio_connector_attention_head_dim": audio_head_dim,
        "audio_connector_num_layers": audio_layers,
        "audio_connector_num_learnable_registers": registers["audio"],
        "audio_gated_attn": gated,
        "connector_rope_base_seq_len": max_pos[0],
        "rope_theta": _CONNECTOR_ROPE_THETA,
        "rope_double_precision": section.get("frequencies_precision") == "float64",
        "causal_temporal_positioning": False,
        "rope_type": rope_type,
        "per_modality_projections": layout == "v2",
        "video_hidden_dim": video_hidden,
        "audio_hidden_dim": audio_hidden,
        "proj_bias": layout == "v2",
    }


def _connector_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    with safe_open(os.fspath(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if CONNECTORS_KEY_TABLE.owns(k)}


def load_connectors_from_single_file(
    path: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> LTX2TextConnectors:
    """diffusers `LTX2TextConnectors` from an original LTX-2 / LTX-2.3 single-file checkpoint, in eval mode.

    Config from the metadata (+ tensor shapes), keys checked strictly; tensors keep the file's dtype unless
    `torch_dtype` is given.
    """
    check_torch_dtype(torch_dtype)
    config, _ = read_checkpoint_config(path)
    state_dict = load_component_state_dict(path, CONNECTORS_KEY_TABLE, dtype=torch_dtype)
    kwargs = connectors_config_from_original(config, _connector_shapes(path))
    return build_from_state_dict(LTX2TextConnectors, kwargs, state_dict, "connectors")
