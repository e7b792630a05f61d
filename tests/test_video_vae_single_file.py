"""diffusers' AutoencoderKLLTX2Video loaded from original LTX-2 / LTX-2.3 files equals ltx-core's encoder/decoder."""

import copy
import json

import factories
import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from factories import REFERENCE_KEYS, RELEASED_VAE_BLOCKS, needs_reference_keys

from ltx2_diffusers.loaders.single_file import load_state_dict_strict
from ltx2_diffusers.loaders.single_file_video_vae import (
    VIDEO_VAE_KEY_TABLE,
    load_video_vae_from_single_file,
    video_vae_config_from_original,
    video_vae_key_table,
)


KEYS = REFERENCE_KEYS

# Released layouts (LTX2_REFERENCE.md section 7.1), checked against the full-size key listings below.
FULL_SIZE = {
    "23": {
        "encoder_blocks": RELEASED_VAE_BLOCKS["2.3"][0],
        "decoder_blocks": RELEASED_VAE_BLOCKS["2.3"][1],
        "timestep_conditioning": False,
    },
    "tscond": {
        "encoder_blocks": RELEASED_VAE_BLOCKS["2.3"][0],
        "decoder_blocks": RELEASED_VAE_BLOCKS["2.3"][1],
        "timestep_conditioning": True,
    },
    "20_reported": {
        "encoder_blocks": RELEASED_VAE_BLOCKS["2.0"][0],
        "decoder_blocks": RELEASED_VAE_BLOCKS["2.0"][1],
        "timestep_conditioning": True,
    },
}


def _tiny(version, **vae_overrides):
    config = factories.checkpoint_config(version)
    config["vae"].update(copy.deepcopy(vae_overrides))
    key = json.dumps(vae_overrides, sort_keys=True)
    return factories.cached_checkpoint(
        "checkpoint", version, components=("vae",), config=config, extra_vae_stats=True, seed=sum(key.encode()) % 1000
    )


VARIANTS = {
    "2.0": ("2.0", {}),
    "2.3": ("2.3", {}),
    "2.3-tscond": ("2.3", {"timestep_conditioning": True}),
    "2.3-causal-reflect": ("2.3", {"causal_decoder": True, "spatial_padding_mode": "reflect"}),
}


def _norm(vae, means):
    return (means - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)


def _decode_like_ltx_core(vae, z, seed, noise_scale=0.025, timestep=0.05):
    """ltx-core's VideoDecoder.forward protocol on the diffusers VAE: noise (tscond), un-normalise, decode at t."""
    temb = None
    if vae.config.timestep_conditioning:
        noise = torch.randn(z.size(), generator=torch.Generator().manual_seed(seed), dtype=z.dtype) * noise_scale
        z = noise + (1.0 - noise_scale) * z
        temb = torch.full((z.shape[0],), timestep, dtype=z.dtype)
    z = z * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    return vae.decode(z, temb).sample


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_ltx_core(variant):
    version, overrides = VARIANTS[variant]
    path = _tiny(version, **overrides)
    vae = load_video_vae_from_single_file(path, torch_dtype=torch.float32)
    assert vae.config.timestep_conditioning == (version == "2.0" or overrides.get("timestep_conditioning", False))
    encoder = factories.load_reference(path, "video_encoder")
    decoder = factories.load_reference(path, "video_decoder")

    video = torch.randn(1, 3, 9, 64, 96, generator=torch.Generator().manual_seed(1))
    latent = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_latent = encoder(video)
        our_latent = _norm(vae, vae.encode(video).latent_dist.mean)
        ref_video = decoder(latent, generator=torch.Generator().manual_seed(3))
        our_video = _decode_like_ltx_core(vae, latent, seed=3)
    assert our_latent.shape == ref_latent.shape == (1, 128, 2, 2, 3)
    assert our_video.shape == ref_video.shape == (1, 3, 9, 64, 96)
    assert (our_latent - ref_latent).abs().max().item() <= 1e-5
    assert (our_video - ref_video).abs().max().item() <= 1e-5
    assert vae.spatial_compression_ratio == 32 and vae.temporal_compression_ratio == 8


def test_file_dtype_is_kept_without_torch_dtype():
    vae = load_video_vae_from_single_file(_tiny("2.3"))
    assert vae.encoder.conv_in.conv.weight.dtype == torch.bfloat16
    assert not any(p.device.type == "meta" for p in vae.parameters())


@needs_reference_keys
@pytest.mark.parametrize("listing", list(FULL_SIZE))
def test_key_table_covers_full_size_listing(listing):
    keys = {}
    for part in ("encoder", "decoder"):
        keys.update(json.loads((KEYS / f"video_{part}_{listing}.json").read_text()))
    section = dict(factories.vae_config("2.3"), decoder_base_channels=128, **FULL_SIZE[listing])
    if listing == "20_reported":
        section.pop("spatial_padding_mode")
    with torch.device("meta"):
        model = AutoencoderKLLTX2Video(**video_vae_config_from_original(section))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {}
    for key, (shape, _dtype) in keys.items():
        assert VIDEO_VAE_KEY_TABLE.owns(key), key
        assert not VIDEO_VAE_KEY_TABLE.is_ignored(key), key
        new = VIDEO_VAE_KEY_TABLE.map_key(key)
        assert new not in mapped, f"collision on {new}"
        mapped[new] = tuple(shape)
    assert mapped == ours, (sorted(set(mapped) ^ set(ours))[:10], [k for k in mapped if mapped[k] != ours.get(k)][:5])


def test_table_ownership_and_ignored_statistics():
    table = VIDEO_VAE_KEY_TABLE
    assert not table.owns("audio_vae.per_channel_statistics.mean-of-means")
    assert not table.owns("model.diffusion_model.proj_out.weight")
    assert not table.owns("vocoder.conv_pre.weight")
    for extra in ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means"):
        assert table.is_ignored(f"vae.per_channel_statistics.{extra}")
    assert not table.is_ignored("vae.per_channel_statistics.mean-of-means")
    assert table.map_key("vae.decoder.up_blocks.8.res_blocks.0.conv1.conv.weight") == (
        "decoder.up_blocks.3.resnets.0.conv1.conv.weight"
    )
    assert table.map_key("vae.decoder.up_blocks.7.conv.conv.bias") == "decoder.up_blocks.3.upsamplers.0.conv.conv.bias"
    assert table.map_key("vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight") == (
        "decoder.time_embedder.timestep_embedder.linear_1.weight"
    )
    assert table.map_key("vae.encoder.down_blocks.8.res_blocks.1.conv2.conv.bias") == (
        "encoder.mid_block.resnets.1.conv2.conv.bias"
    )
    # A smaller encoder gets its own table (last res_x -> mid_block).
    assert video_vae_key_table(5).map_key("vae.encoder.down_blocks.4.res_blocks.0.conv1.conv.bias") == (
        "encoder.mid_block.resnets.0.conv1.conv.bias"
    )


def test_inject_noise_keys_map():
    section = factories.vae_config("2.0")
    for _, params in section["decoder_blocks"][::2]:
        params["inject_noise"] = True
    with torch.device("meta"):
        model = AutoencoderKLLTX2Video(**video_vae_config_from_original(section))
    names = set(model.state_dict())
    table = VIDEO_VAE_KEY_TABLE
    assert table.map_key("vae.decoder.up_blocks.0.res_blocks.0.per_channel_scale1") in names
    assert table.map_key("vae.decoder.up_blocks.6.res_blocks.0.per_channel_scale2") in names


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"encoder_blocks": [["res_x", 1], ["compress_all_x_y", {}], ["res_x", 1]]}, "compress_all_x_y"),
        ({"decoder_blocks": [["res_x", 1], ["attn_res_x", {"num_layers": 1}], ["res_x", 1]]}, "attn_res_x"),
        ({"decoder_blocks": [["res_x", 1], ["res_x_y", {}], ["compress_all", {}], ["res_x", 1]]}, "res_x_y"),
        ({"encoder_blocks": [["res_x", 1], ["res_x", 1], ["compress_all_res", {}]]}, "layout"),
        ({"latent_log_var": "per_channel"}, "latent_log_var"),
        ({"norm_layer": "group_norm"}, "norm_layer"),
        ({"spatial_padding_mode": "mirror"}, "spatial_padding_mode"),
        ({"encoder_blocks": None}, "encoder_blocks"),
    ],
)
def test_bad_layouts_are_named(overrides, message):
    section = factories.vae_config("2.3")
    section.update(overrides)
    with pytest.raises(ValueError, match=message):
        video_vae_config_from_original(section)


def test_config_errors():
    with pytest.raises(TypeError, match="config"):
        video_vae_config_from_original(["vae"])
    with pytest.raises(ValueError, match="'vae'"):
        video_vae_config_from_original({})
    with pytest.raises(TypeError, match="torch_dtype"):
        load_video_vae_from_single_file(_tiny("2.3"), torch_dtype="float32")


def test_metadata_mismatch_names_missing_keys(tmp_path):
    # Metadata claims a timestep-conditioned decoder the file does not hold: strict loading names the keys.
    config = factories.checkpoint_config("2.3")
    path = factories.build_checkpoint(tmp_path / "a.safetensors", "2.3", components=("vae",), config=config)
    config["vae"]["timestep_conditioning"] = True
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), tmp_path / "b.safetensors", metadata={"config": json.dumps(config)})
    with pytest.raises(ValueError, match="missing keys.*time_embedder"):
        load_video_vae_from_single_file(tmp_path / "b.safetensors")


def test_no_vae_in_file():
    path = factories.cached_checkpoint("checkpoint", "2.3", components=("audio_vae",))
    with pytest.raises(ValueError, match="no vae weights"):
        load_video_vae_from_single_file(path)


def test_strict_loader_names_unexpected_keys():
    section = factories.vae_config("2.3")
    with torch.device("meta"):
        model = AutoencoderKLLTX2Video(**video_vae_config_from_original(section))
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    state["decoder.up_blocks.9.resnets.0.conv1.conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys.*up_blocks\.9"):
        load_state_dict_strict(model, state, "vae")
