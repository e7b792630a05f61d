"""Config keys that ltx-core's configurators default when the checkpoint metadata lacks them (transformer,
text connectors, video VAE).

Released files may lack some of them (LTX-2 19B files may lack `av_ca_timestep_scale_multiplier`). A checkpoint
written WITHOUT a key must load with ltx-core's default for it: ours (`from_single_file`) and ltx-core's own loader
(`LTXModelConfigurator` through `SingleGPUModelBuilder`) are compared on the same file, fp32 <= 1e-5. Every key is
dropped from a config where its written value differs from the default, so that a wrong default shows.
"""

import pytest
import torch
from factories import build_checkpoint, checkpoint_config, load_reference
from own_coords import max_abs_diff, reference_inputs, run_ours, run_reference

from ltx2_diffusers import LTX2AudioVideoTransformer


TOL = 1e-5

# key -> a value that differs from ltx-core's default for it (LTXModelConfigurator.from_config,
# ltx_core/model/transformer/model_configurator.py; the default is what the file gets when the key is absent).
NON_DEFAULT = {
    "av_ca_timestep_scale_multiplier": 1000.0,  # default 1 (diffusers assumes 1000)
    "timestep_scale_multiplier": 500,  # default 1000
    "positional_embedding_theta": 2500.0,  # default 10000.0
    "positional_embedding_max_pos": [16, 512, 768],  # default [20, 2048, 2048]
    "audio_positional_embedding_max_pos": [12],  # default [20]
    "rope_type": "split",  # default "interleaved"
    "frequencies_precision": "float64",  # default: float32 grid
    "norm_eps": 1e-2,  # default 1e-6
    "apply_gated_attention": True,  # default False
    "cross_attention_adaln": True,  # default False
    "caption_proj_before_connector": True,  # default False (projection inside the transformer)
}
# Defaulted keys whose default is the only value a tiny model can have: written equal to the default, dropped in
# the all-at-once test. (The keys ltx-core only checks with `check_config_value` must be present, except
# `num_vector_embeds`, whose expected value is None.)
EQUAL_TO_DEFAULT = (
    "in_channels",
    "out_channels",
    "audio_in_channels",
    "audio_out_channels",
    "attention_type",
    "num_vector_embeds",
)


def _config(version, drop=(), **values):
    config = checkpoint_config(version, **values)
    for key in drop:
        config["transformer"].pop(key, None)
    return config


def _parity(tmp_path, config):
    path = build_checkpoint(tmp_path / "model.safetensors", config=config, components=("transformer",), seed=5)
    ours = LTX2AudioVideoTransformer.from_single_file(path, torch_dtype=torch.float32).eval()
    reference = load_reference(path, "transformer", dtype=torch.float32)
    video, audio = reference_inputs(config)
    expected = run_reference(reference, video, audio)
    return ours, max_abs_diff(run_ours(ours, video, audio), expected)


@pytest.mark.parametrize("key", sorted(NON_DEFAULT))
def test_missing_key_takes_ltx_core_default(tmp_path, key):
    written = _config("2.3", **NON_DEFAULT)
    without = _config("2.3", drop=(key,), **NON_DEFAULT)
    assert key in written["transformer"] and key not in without["transformer"]
    _, delta = _parity(tmp_path, without)
    assert delta <= TOL, f"{key} absent: max|ours - ltx-core| = {delta:.3g}"
    # and the key matters: the file WITH it gives another reference output (a wrong default would show)
    reference_with = load_reference(
        build_checkpoint(tmp_path / "with.safetensors", config=written, components=("transformer",), seed=5),
        "transformer",
    )
    reference_without = load_reference(tmp_path / "model.safetensors", "transformer")
    video, audio = reference_inputs(written)
    v2, a2 = reference_inputs(without)
    if video.context.shape == v2.context.shape:  # same inputs apply: the outputs must differ
        gap = max_abs_diff(run_reference(reference_with, video, audio), run_reference(reference_without, video, audio))
        assert gap > TOL, f"{key}: the written value does not change the reference output ({gap:.3g})"


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_every_defaulted_key_missing_at_once(tmp_path, version):
    dropped = (*NON_DEFAULT, *EQUAL_TO_DEFAULT)
    config = _config(version, drop=dropped)
    assert not set(dropped) & set(config["transformer"])
    ours, delta = _parity(tmp_path, config)
    assert delta <= TOL, f"LTX-{version} without {len(dropped)} defaulted keys: max|delta| = {delta:.3g}"
    assert ours.config.cross_attn_timestep_scale_multiplier == 1
    assert ours.config.timestep_scale_multiplier == 1000
    assert ours.config.rope_type == "interleaved" and not ours.config.rope_double_precision


# The text connectors read their keys from the same `transformer` section (Embeddings1DConnectorConfigurator and
# AudioEmbeddings1DConnectorConfigurator, ltx_core/text_encoders/gemma/embeddings_connector.py).
CONNECTOR_NON_DEFAULT = {
    "rope_type": "split",  # default "interleaved"
    "frequencies_precision": "float64",  # default: float32 grid
    "connector_positional_embedding_max_pos": [4096],  # default [1]
    "connector_apply_gated_attention": True,  # default False
}


@pytest.mark.parametrize("key", sorted(CONNECTOR_NON_DEFAULT))
@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_connectors_missing_key_takes_ltx_core_default(tmp_path, version, key):
    from test_connectors import _assert_parity

    config = _config(version, drop=(key,), **CONNECTOR_NON_DEFAULT)
    assert key not in config["transformer"]
    path = build_checkpoint(
        tmp_path / "c.safetensors", config=config, components=("connectors",), seed=9, dtype=torch.float32
    )
    _assert_parity(path, [37, 128], seed=4)


# The video VAE (VideoEncoderConfigurator / VideoDecoderConfigurator, ltx_core/model/video_vae/model_configurator.py):
# a missing `spatial_padding_mode` pads the encoder with zeros but the DECODER with reflect; a missing
# `timestep_conditioning` means a timestep-conditioned decoder.
VAE_NON_DEFAULT = {"spatial_padding_mode": "zeros", "timestep_conditioning": False}  # as the 2.3 files write them
VAE_EQUAL_TO_DEFAULT = ("dims", "in_channels", "out_channels", "latent_channels", "patch_size", "norm_layer")
VAE_EQUAL_TO_DEFAULT += ("latent_log_var", "causal_decoder")


@pytest.mark.parametrize(
    "drop",
    [(k,) for k in VAE_NON_DEFAULT] + [(*VAE_NON_DEFAULT, *VAE_EQUAL_TO_DEFAULT)],
    ids=[*VAE_NON_DEFAULT, "all"],
)
def test_video_vae_missing_keys_take_ltx_core_defaults(tmp_path, drop):
    from test_video_vae_single_file import _decode_like_ltx_core, _norm

    from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file

    config = checkpoint_config("2.3")
    assert all(config["vae"][k] == v for k, v in VAE_NON_DEFAULT.items())
    for key in drop:
        del config["vae"][key]
    path = build_checkpoint(tmp_path / "v.safetensors", config=config, components=("vae",), seed=17)
    vae = load_video_vae_from_single_file(path, torch_dtype=torch.float32)
    encoder, decoder = load_reference(path, "video_encoder"), load_reference(path, "video_decoder")
    video = torch.randn(1, 3, 9, 64, 96, generator=torch.Generator().manual_seed(1))
    latent = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        d_enc = (_norm(vae, vae.encode(video).latent_dist.mean) - encoder(video)).abs().max().item()
        ref_video = decoder(latent, generator=torch.Generator().manual_seed(3))
        d_dec = (_decode_like_ltx_core(vae, latent, seed=3) - ref_video).abs().max().item()
    assert d_enc <= TOL and d_dec <= TOL, f"without {drop}: encoder {d_enc:.3g}, decoder {d_dec:.3g}"
    assert vae.config.timestep_conditioning == ("timestep_conditioning" in drop)
