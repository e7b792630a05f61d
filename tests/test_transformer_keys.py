"""The transformer key table covers the full-size released layouts (keys/transformer_{19B,22B}.json)."""

import json

import pytest
import torch
from factories import REFERENCE_KEYS, needs_reference_keys

from ltx2_diffusers import LTX2AudioVideoTransformer
from ltx2_diffusers.loaders.single_file_transformer import TRANSFORMER_KEY_TABLE, transformer_config_from_original


KEYS = REFERENCE_KEYS

FULL_SIZE = {
    # Values of the released checkpoints' metadata (LTX2_REFERENCE.md section 1.2).
    "19B": dict(caption_channels=3840, caption_proj_before_connector=False),
    "22B": dict(
        caption_channels=3840,
        caption_proj_before_connector=True,
        apply_gated_attention=True,
        cross_attention_adaln=True,
    ),
}


@needs_reference_keys
@pytest.mark.parametrize("size", ["19B", "22B"])
def test_key_table_covers_full_size_listing(size):
    listing = json.loads((KEYS / f"transformer_{size}.json").read_text())
    section = dict(rope_type="split", frequencies_precision="float64", **FULL_SIZE[size])
    with torch.device("meta"):
        model = LTX2AudioVideoTransformer.from_config(transformer_config_from_original(section))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    mapped = {}
    for key, (shape, _dtype) in listing.items():
        assert TRANSFORMER_KEY_TABLE.owns(key), key
        new = TRANSFORMER_KEY_TABLE.map_key(key)
        assert new not in mapped, f"collision on {new}"
        mapped[new] = tuple(shape)
    assert set(mapped) == set(ours), (sorted(set(mapped) - set(ours))[:5], sorted(set(ours) - set(mapped))[:5])
    assert mapped == ours


def test_connector_keys_are_not_transformer_keys():
    assert not TRANSFORMER_KEY_TABLE.owns("model.diffusion_model.video_embeddings_connector.learnable_registers")
    assert not TRANSFORMER_KEY_TABLE.owns("model.diffusion_model.audio_embeddings_connector.learnable_registers")
    assert not TRANSFORMER_KEY_TABLE.owns("vae.decoder.conv_in.conv.weight")
