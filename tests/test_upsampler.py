"""diffusers' LTX2LatentUpsamplerModel loaded from original upsampler files equals ltx-core's LatentUpsampler."""

import json

import factories
import pytest
import torch
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from factories import REFERENCE_KEYS, needs_reference_keys
from safetensors.torch import load_file, save_file

from ltx2_diffusers.loaders.single_file_upsampler import (
    UPSAMPLER_KEY_TABLE,
    latent_upsampler_config_from_original,
    load_latent_upsampler_from_single_file,
)


KEYS = REFERENCE_KEYS

VARIANTS = {
    "pixel-shuffle": {},
    "rational-x2": {"rational_resampler": True},
    "rational-x1.5": {"rational_resampler": True, "spatial_scale": 1.5, "mid_channels": 64},
    "temporal": {"spatial_upsample": False, "temporal_upsample": True},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_ltx_core(variant):
    path = factories.cached_checkpoint("upsampler", seed=7, **VARIANTS[variant])
    ours = load_latent_upsampler_from_single_file(path, torch_dtype=torch.float32)
    ref = factories.load_reference(path, "upsampler")
    latent = torch.randn(1, 128, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(latent), ours(latent)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    config = factories.read_config(path)
    assert ours.config.mid_channels == config["mid_channels"]
    assert ours.config.use_rational_resampler == config["rational_resampler"]


def test_file_dtype_kept_and_defaults_are_ltx_cores():
    path = factories.cached_checkpoint("upsampler", seed=7)
    model = load_latent_upsampler_from_single_file(path)
    assert model.initial_conv.weight.dtype == torch.bfloat16
    # Absent keys take ltx-core's defaults (mid 512, no rational resampler), not diffusers' (1024, rational).
    kwargs = latent_upsampler_config_from_original({})
    assert kwargs["mid_channels"] == 512 and kwargs["use_rational_resampler"] is False


@needs_reference_keys
@pytest.mark.parametrize("listing, rational", [("upsampler_pixelshuffle", False), ("upsampler_rational", True)])
def test_key_table_covers_full_size_listing(listing, rational):
    keys = json.loads((KEYS / f"{listing}.json").read_text())
    config = factories.upsampler_config(mid_channels=1024, rational_resampler=rational)
    with torch.device("meta"):
        model = LTX2LatentUpsamplerModel(**latent_upsampler_config_from_original(config))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {
        UPSAMPLER_KEY_TABLE.map_key(k): tuple(shape) for k, (shape, _) in keys.items() if UPSAMPLER_KEY_TABLE.owns(k)
    }
    assert len(mapped) == len(keys)
    assert mapped == ours


@pytest.mark.parametrize(
    "config, message",
    [
        ({"dims": 1}, "dims"),
        ({"spatial_upsample": False}, "neither"),
        ({"mid_channels": 48}, "multiple of 32"),
        ({"rational_resampler": True, "spatial_scale": 3.0}, "spatial_scale"),
        ({"transformer": {}, "vae": {}}, "main LTX-2 checkpoint"),
        ({"mid_channels": "512"}, "mid_channels"),
    ],
)
def test_bad_configs(config, message):
    with pytest.raises(ValueError, match=message):
        latent_upsampler_config_from_original(config)
    with pytest.raises(TypeError, match="config"):
        latent_upsampler_config_from_original("config")


def test_main_checkpoint_is_rejected():
    path = factories.cached_checkpoint("checkpoint", "2.3", components=("vae",))
    with pytest.raises(ValueError, match="not of a latent upsampler"):
        load_latent_upsampler_from_single_file(path)


def test_mismatched_metadata_names_keys(tmp_path):
    path = factories.cached_checkpoint("upsampler", seed=7)
    config = factories.upsampler_config(rational_resampler=True)
    save_file(load_file(path), tmp_path / "u.safetensors", metadata={"config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"missing keys.*upsampler\.conv\.weight.*unexpected keys.*upsampler\.0"):
        load_latent_upsampler_from_single_file(tmp_path / "u.safetensors")


def test_missing_metadata(tmp_path):
    path = factories.cached_checkpoint("upsampler", seed=7)
    save_file(load_file(path), tmp_path / "u.safetensors")
    with pytest.raises(ValueError, match="no 'config'"):
        load_latent_upsampler_from_single_file(tmp_path / "u.safetensors")
