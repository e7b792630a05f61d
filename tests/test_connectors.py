"""Text connectors from original checkpoints: key table, metadata config, parity with ltx-core's EmbeddingsProcessor."""

import json

import pytest
import torch
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from factories import (
    REFERENCE_KEYS,
    TEXT_HIDDEN_SIZE,
    TEXT_NUM_HIDDEN_STATES,
    TEXT_SEQ_LEN,
    build_checkpoint,
    cached_checkpoint,
    checkpoint_config,
    load_reference,
    needs_reference_keys,
    read_config,
    text_encoder_dims,
)
from safetensors import safe_open
from safetensors.torch import save_file

from ltx2_diffusers.loaders.single_file_connectors import (
    CONNECTORS_KEY_TABLE,
    connectors_config_from_original,
    load_connectors_from_single_file,
)
from ltx2_diffusers.loaders.single_file_transformer import TRANSFORMER_KEY_TABLE


KEYS = REFERENCE_KEYS

# Released metadata values that the connectors read (LTX2_REFERENCE.md section 1.2).
FULL_SIZE_SECTIONS = {
    "19B": {
        "caption_channels": 3840,
        "rope_type": "split",
        "frequencies_precision": "float64",
        "connector_positional_embedding_max_pos": [4096],
        "connector_num_learnable_registers": 128,
    },
    "22B": {
        "caption_channels": 3840,
        "num_attention_heads": 32,
        "attention_head_dim": 128,
        "audio_num_attention_heads": 32,
        "audio_attention_head_dim": 64,
        "rope_type": "split",
        "frequencies_precision": "float64",
        "caption_proj_before_connector": True,
        "caption_proj_input_norm": False,
        "caption_projection_first_linear": False,
        "caption_projection_second_linear": False,
        "connector_num_attention_heads": 32,
        "connector_attention_head_dim": 128,
        "connector_num_layers": 8,
        "connector_positional_embedding_max_pos": [4096],
        "connector_num_learnable_registers": 128,
        "connector_apply_gated_attention": True,
        "audio_connector_num_attention_heads": 32,
        "audio_connector_attention_head_dim": 64,
    },
}


def _hidden_states(hidden: int, states: int, seed: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    # Layers of different scales and offsets, like Gemma's (V1 normalises per layer).
    return tuple(
        torch.randn(batch, TEXT_SEQ_LEN, hidden, generator=gen) * (0.5 + layer) + 0.1 * layer
        for layer in range(states)
    )


def _left_mask(valid: list[int]) -> torch.Tensor:
    mask = torch.zeros(len(valid), TEXT_SEQ_LEN, dtype=torch.long)
    for row, n in enumerate(valid):
        mask[row, TEXT_SEQ_LEN - n :] = 1
    return mask


def _assert_parity(path, batch_valid: list[int], seed: int = 0) -> float:
    ref = load_reference(path, "embeddings_processor")
    ours = load_connectors_from_single_file(path, torch_dtype=torch.float32)
    hidden, states = text_encoder_dims(path)
    assert (ours.config.caption_channels, ours.config.text_proj_in_factor) == (hidden, states)
    hs = _hidden_states(hidden, states, seed, batch=len(batch_valid))
    mask = _left_mask(batch_valid)
    with torch.no_grad():
        video, audio, out_mask = ours(torch.stack(hs, dim=-1).flatten(2), mask)
        worst = 0.0
        for row in range(len(batch_valid)):  # ltx-core's register replacement handles batch 1 only
            expected = ref.process_hidden_states(tuple(h[row : row + 1] for h in hs), mask[row : row + 1])
            for got, want in (
                (video[row : row + 1], expected.video_encoding),
                (audio[row : row + 1], expected.audio_encoding),
            ):
                assert got.shape == want.shape
                worst = max(worst, (got - want).abs().max().item())
            assert torch.equal(out_mask[row : row + 1], expected.attention_mask.to(out_mask.dtype))
    assert worst <= 1e-5, worst
    return worst


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_parity_with_reference_left_padded(version):
    path = cached_checkpoint("checkpoint", version=version, components=("connectors",), dtype=torch.float32)
    _assert_parity(path, [37])
    _assert_parity(path, [TEXT_SEQ_LEN, 1, 90], seed=1)  # full, BOS-only and partial rows in one batch


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_parity_with_reference_config_variants(version, tmp_path):
    """Interleaved RoPE in float32, ltx-core's default connector max_pos [1], 5 hidden states, bf16 file."""
    path = build_checkpoint(
        tmp_path / "c.safetensors",
        version,
        components=("connectors",),
        seed=3,
        text_hidden_states=5,
        rope_type="interleaved",
        double_precision=False,
        connector_positional_embedding_max_pos=None,
    )
    config = load_connectors_from_single_file(path).config
    assert config.rope_type == "interleaved" and not config.rope_double_precision
    assert config.connector_rope_base_seq_len == 1 and config.text_proj_in_factor == 5
    _assert_parity(path, [50, 128], seed=2)


def test_dtype_follows_file_unless_given():
    path = cached_checkpoint("checkpoint", version="2.3", components=("connectors",))  # bf16 file
    assert load_connectors_from_single_file(path).dtype == torch.bfloat16
    model = load_connectors_from_single_file(path, torch_dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not model.training


def test_config_from_tiny_metadata():
    v1 = connectors_config_from_original(checkpoint_config("2.0"))
    assert not v1["per_modality_projections"] and not v1["proj_bias"] and not v1["video_gated_attn"]
    assert v1["caption_channels"] == TEXT_HIDDEN_SIZE and v1["text_proj_in_factor"] == 49  # no shapes: ltx-core's
    v2 = connectors_config_from_original(checkpoint_config("2.3")["transformer"])  # the section works too
    assert v2["per_modality_projections"] and v2["proj_bias"] and v2["video_gated_attn"] and v2["audio_gated_attn"]
    assert (v2["video_hidden_dim"], v2["audio_hidden_dim"]) == (64, 32)
    shapes = {
        "text_embedding_projection.video_aggregate_embed.weight": (64, TEXT_HIDDEN_SIZE * TEXT_NUM_HIDDEN_STATES)
    }
    assert connectors_config_from_original(checkpoint_config("2.3"), shapes)["text_proj_in_factor"] == 4


@needs_reference_keys
@pytest.mark.parametrize("size", ["19B", "22B"])
def test_key_table_covers_full_size_listing(size):
    listing = json.loads((KEYS / f"embeddings_processor_{size}.json").read_text())
    shapes = {key: tuple(shape) for key, (shape, _dtype) in listing.items()}
    config = connectors_config_from_original({"transformer": FULL_SIZE_SECTIONS[size]}, shapes)
    assert (config["caption_channels"], config["text_proj_in_factor"]) == (3840, 49)
    assert config["per_modality_projections"] == (size == "22B")
    with torch.device("meta"):
        model = LTX2TextConnectors(**config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Same config without shapes (ltx-core's hard-coded Gemma dims) builds the same model.
    assert connectors_config_from_original({"transformer": FULL_SIZE_SECTIONS[size]}) == config

    mapped = {}
    for key, shape in shapes.items():
        assert CONNECTORS_KEY_TABLE.owns(key) and not CONNECTORS_KEY_TABLE.is_ignored(key), key
        assert not TRANSFORMER_KEY_TABLE.owns(key), key
        new = CONNECTORS_KEY_TABLE.map_key(key)
        assert new not in mapped, f"{key} collides with another key on {new}"
        mapped[new] = shape
    assert set(mapped) == set(ours), (sorted(set(mapped) - set(ours))[:5], sorted(set(ours) - set(mapped))[:5])
    assert mapped == ours


@needs_reference_keys
@pytest.mark.parametrize("size", ["19B", "22B"])
def test_key_table_owns_no_other_component(size):
    for key in json.loads((KEYS / f"transformer_{size}.json").read_text()):
        assert not CONNECTORS_KEY_TABLE.owns(key), key
    for other in ("vae.decoder.conv_in.conv.weight", "audio_vae.encoder.conv_in.weight", "vocoder.conv_pre.weight"):
        assert not CONNECTORS_KEY_TABLE.owns(other)


# ---------------------------------------------------------------------------------------------------- bad inputs


def _rewrite(src, dst, drop=(), config=None):
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
        metadata = dict(f.metadata())
    if config is not None:
        metadata["config"] = json.dumps(config)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_missing_key_is_named(tmp_path):
    src = cached_checkpoint("checkpoint", version="2.3", components=("connectors",))
    dropped = "model.diffusion_model.audio_embeddings_connector.transformer_1d_blocks.1.attn1.to_gate_logits.bias"
    path = _rewrite(src, tmp_path / "m.safetensors", drop=(dropped,))
    with pytest.raises(
        ValueError, match=r"missing keys \(1\).*audio_connector\.transformer_blocks\.1\.attn1\.to_gate"
    ):
        load_connectors_from_single_file(path)


def test_file_without_connectors(tmp_path):
    path = tmp_path / "none.safetensors"
    save_file({"vae.decoder.x": torch.zeros(1)}, str(path), metadata={"config": json.dumps(checkpoint_config())})
    with pytest.raises(ValueError, match="holds no connectors weights"):
        load_connectors_from_single_file(path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"caption_proj_input_norm": None}, r"partial V2 config, missing \['caption_proj_input_norm'\]"),
        ({"caption_projection_first_linear": True}, "caption_projection_first_linear=True"),
        ({"rope_type": "spiral"}, "rope_type 'spiral'"),
        ({"connector_positional_embedding_max_pos": [1, 2]}, "connector_positional_embedding_max_pos"),
        ({"connector_num_attention_heads": 4}, "connector widths"),
    ],
)
def test_unknown_layout(change, match, tmp_path):
    src = cached_checkpoint("checkpoint", version="2.3", components=("connectors",))
    config = read_config(src)
    for key, value in change.items():
        if value is None:
            config["transformer"].pop(key)
        else:
            config["transformer"][key] = value
    with pytest.raises(ValueError, match=match):
        connectors_config_from_original(config)
    with pytest.raises(ValueError, match=match):
        load_connectors_from_single_file(_rewrite(src, tmp_path / "bad.safetensors", config=config))


def test_v1_tensors_under_v2_metadata(tmp_path):
    src = cached_checkpoint("checkpoint", version="2.0", components=("connectors",))
    path = _rewrite(src, tmp_path / "mixed.safetensors", config=checkpoint_config("2.3"))
    with pytest.raises(ValueError, match="connectors checkpoint does not match the model"):
        load_connectors_from_single_file(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="config"):
        connectors_config_from_original("transformer")
    with pytest.raises(ValueError, match="transformer"):
        connectors_config_from_original({})
    with pytest.raises(ValueError, match="does not exist"):
        load_connectors_from_single_file(tmp_path / "absent.safetensors")
    src = cached_checkpoint("checkpoint", version="2.0", components=("connectors",))
    with pytest.raises(TypeError, match="torch_dtype"):
        load_connectors_from_single_file(src, torch_dtype="float32")
