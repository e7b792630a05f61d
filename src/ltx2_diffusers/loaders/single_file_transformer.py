"""Original-checkpoint layout of the LTX-2 transformer: key table, metadata -> config mapping and loading function."""

from __future__ import annotations

import os

import torch

from .single_file import KeyTable, build_from_state_dict, load_component_state_dict, read_checkpoint_config


TRANSFORMER_KEY_TABLE = KeyTable(
    name="transformer",
    prefix="model.diffusion_model.",
    exclude_prefixes=(
        "model.diffusion_model.video_embeddings_connector.",
        "model.diffusion_model.audio_embeddings_connector.",
    ),
    renames=(
        (r"^patchify_proj\.", "proj_in."),
        (r"^audio_patchify_proj\.", "audio_proj_in."),
        (r"^adaln_single\.", "time_embed."),
        (r"^audio_adaln_single\.", "audio_time_embed."),
        (r"^prompt_adaln_single\.", "prompt_adaln."),
        (r"^audio_prompt_adaln_single\.", "audio_prompt_adaln."),
        (r"^av_ca_video_scale_shift_adaln_single\.", "av_cross_attn_video_scale_shift."),
        (r"^av_ca_audio_scale_shift_adaln_single\.", "av_cross_attn_audio_scale_shift."),
        (r"^av_ca_a2v_gate_adaln_single\.", "av_cross_attn_video_a2v_gate."),
        (r"^av_ca_v2a_gate_adaln_single\.", "av_cross_attn_audio_v2a_gate."),
        (r"\.q_norm\.", ".norm_q."),
        (r"\.k_norm\.", ".norm_k."),
        (r"\.scale_shift_table_a2v_ca_video$", ".video_a2v_cross_attn_scale_shift_table"),
        (r"\.scale_shift_table_a2v_ca_audio$", ".audio_a2v_cross_attn_scale_shift_table"),
    ),
)

# Values the LTX-2 architecture fixes (ltx-core refuses anything else); present keys must match.
_FIXED_VALUES = {
    "dropout": 0.0,
    "attention_bias": True,
    "num_vector_embeds": None,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "double_self_attention": False,
    "upcast_attention": False,
    "standardization_norm": "rms_norm",
    "norm_elementwise_affine": False,
    "qk_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "av_cross_ada_norm": True,
    "use_middle_indices_grid": True,
}

_KNOWN_ROPE_TYPES = ("interleaved", "split")


def transformer_config_from_original(section: dict) -> dict:
    """Our (diffusers-style) config from the `transformer` section of an original checkpoint's metadata.

    Raises `ValueError` naming every key whose value is not an LTX-2 layout.
    """
    if not isinstance(section, dict) or not section:
        raise ValueError("the checkpoint metadata has no 'transformer' config section")
    wrong = {k: section[k] for k, v in _FIXED_VALUES.items() if k in section and section[k] != v}
    if wrong:
        raise ValueError(
            "unsupported transformer layout in the checkpoint metadata: "
            + ", ".join(f"{k}={v!r} (expected {_FIXED_VALUES[k]!r})" for k, v in wrong.items())
        )
    rope_type = section.get("rope_type", "interleaved")
    if rope_type not in _KNOWN_ROPE_TYPES:
        raise ValueError(f"unsupported transformer rope_type {rope_type!r} in the checkpoint metadata")
    max_pos = list(section.get("positional_embedding_max_pos", [20, 2048, 2048]))
    audio_max_pos = list(section.get("audio_positional_embedding_max_pos", [20]))
    if len(max_pos) != 3 or len(audio_max_pos) != 1:
        raise ValueError(
            f"unsupported positional_embedding_max_pos {max_pos} / audio_positional_embedding_max_pos "
            f"{audio_max_pos} (expected 3 and 1 entries)"
        )
    gated = bool(section.get("apply_gated_attention", False))
    cross_adaln = bool(section.get("cross_attention_adaln", False))
    projection_inside = not section.get("caption_proj_before_connector", False)
    if projection_inside and "caption_channels" not in section:
        raise ValueError("the transformer config needs 'caption_channels' when the caption projection is inside it")
    return {
        "in_channels": section.get("in_channels", 128),
        "out_channels": section.get("out_channels", 128),
        "num_attention_heads": section.get("num_attention_heads", 32),
        "attention_head_dim": section.get("attention_head_dim", 128),
        "cross_attention_dim": section.get("cross_attention_dim", 4096),
        "pos_embed_max_pos": max_pos[0],
        "base_height": max_pos[1],
        "base_width": max_pos[2],
        "gated_attn": gated,
        "cross_attn_mod": cross_adaln,
        "audio_in_channels": section.get("audio_in_channels", 128),
        "audio_out_channels": section.get("audio_out_channels", 128),
        "audio_num_attention_heads": section.get("audio_num_attention_heads", 32),
        "audio_attention_head_dim": section.get("audio_attention_head_dim", 64),
        "audio_cross_attention_dim": section.get("audio_cross_attention_dim", 2048),
        "audio_pos_embed_max_pos": audio_max_pos[0],
        "audio_gated_attn": gated,
        "audio_cross_attn_mod": cross_adaln,
        "num_layers": section.get("num_layers", 48),
        "norm_eps": section.get("norm_eps", 1e-6),
        "caption_channels": section.get("caption_channels", 3840),
        "rope_theta": float(section.get("positional_embedding_theta", 10000.0)),
        "rope_double_precision": section.get("frequencies_precision") == "float64",
        "timestep_scale_multiplier": section.get("timestep_scale_multiplier", 1000),
        # ltx-core's default when the key is absent is 1 (diffusers assumes 1000): always read it.
        "cross_attn_timestep_scale_multiplier": section.get("av_ca_timestep_scale_multiplier", 1),
        "rope_type": rope_type,
        "use_prompt_embeddings": projection_inside,
        "perturbed_attn": True,
        "use_prompt_adaln_single": True,
    }


def read_transformer_config(path: str | os.PathLike) -> dict:
    config, _ = read_checkpoint_config(path)
    return transformer_config_from_original(config.get("transformer"))


def transformer_state_dict_from_single_file(
    path: str | os.PathLike, config: dict | None = None, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    return load_component_state_dict(path, TRANSFORMER_KEY_TABLE, dtype=dtype)


def transformer_from_single_file(model_cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
    """`model_cls` (`LTX2AudioVideoTransformer`) built from the transformer of an original single-file checkpoint.

    Config from its metadata; other components in the file (VAEs, vocoder, text connectors) are ignored; keys are
    checked strictly.
    """
    config = read_transformer_config(path)
    state_dict = transformer_state_dict_from_single_file(path, config, dtype=torch_dtype)
    return build_from_state_dict(model_cls.from_config, {"config": config}, state_dict, "transformer")
