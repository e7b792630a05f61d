"""LTX2AudioVideoTransformer is a drop-in for diffusers' LTX2VideoTransformer3DModel: folders load both ways and
the same forward arguments give the same outputs."""

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel

from ltx2_diffusers import LTX2AudioVideoTransformer


def tiny_diffusers_config(version):
    config = dict(
        num_attention_heads=2,
        attention_head_dim=32,
        cross_attention_dim=64,
        audio_num_attention_heads=2,
        audio_attention_head_dim=16,
        audio_cross_attention_dim=32,
        num_layers=2,
        caption_channels=48,
        rope_type="split",
        perturbed_attn=True,
    )
    if version == "2.3":
        config.update(
            gated_attn=True,
            cross_attn_mod=True,
            audio_gated_attn=True,
            audio_cross_attn_mod=True,
            use_prompt_embeddings=False,
        )
    return config


def randomize_(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / max(p.shape[-1], 1) ** 0.5)
    return model


def forward_kwargs(model, batch=2, seed=1, **extra):
    g = torch.Generator().manual_seed(seed)
    text_dim = model.config.caption_channels if model.config.use_prompt_embeddings else None
    sigma = torch.rand(batch, generator=g) * 1000
    kwargs = dict(
        hidden_states=torch.randn(batch, 2 * 2 * 3, 128, generator=g),
        audio_hidden_states=torch.randn(batch, 5, 128, generator=g),
        encoder_hidden_states=torch.randn(batch, 7, text_dim or model.config.cross_attention_dim, generator=g),
        audio_encoder_hidden_states=torch.randn(
            batch, 7, text_dim or model.config.audio_cross_attention_dim, generator=g
        ),
        timestep=sigma[:, None].expand(batch, 12).clone(),
        audio_timestep=torch.zeros(batch, 5),
        sigma=sigma,
        audio_sigma=sigma,
        num_frames=2,
        height=2,
        width=3,
        audio_num_frames=5,
        fps=24.0,
        use_cross_timestep=True,
        return_dict=False,
    )
    kwargs.update(extra)
    return kwargs


@pytest.mark.parametrize("version", ["2.0", "2.3"])
@pytest.mark.parametrize("direction", ["diffusers_to_ours", "ours_to_diffusers"])
def test_folders_load_both_ways_with_same_outputs(tmp_path, version, direction):
    config = tiny_diffusers_config(version)
    if direction == "diffusers_to_ours":
        source = randomize_(LTX2VideoTransformer3DModel(**config)).eval()
        source.save_pretrained(tmp_path)
        target = LTX2AudioVideoTransformer.from_pretrained(tmp_path).eval()
    else:
        source = randomize_(LTX2AudioVideoTransformer(**config)).eval()
        source.save_pretrained(tmp_path)
        target = LTX2VideoTransformer3DModel.from_pretrained(tmp_path).eval()
    assert set(source.state_dict()) == set(target.state_dict())
    extras = [
        {},
        {"encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])},
        {"isolate_modalities": True},
        {"spatio_temporal_guidance_blocks": [1], "perturbation_mask": torch.tensor([0.0, 1.0])},
        {"spatio_temporal_guidance_blocks": [0]},
        {"use_cross_timestep": False, "audio_timestep": None, "per_item_timestep": True},
    ]
    with torch.no_grad():
        for extra in extras:
            extra = dict(extra)
            per_item = extra.pop("per_item_timestep", False)
            kwargs = forward_kwargs(source, **extra)
            if per_item:
                kwargs["timestep"] = kwargs["sigma"]
            expected = source(**kwargs)
            actual = target(**kwargs)
            for e, a in zip(expected, actual):
                assert (e - a).abs().max().item() <= 1e-5, extra


def test_our_config_keys_equal_diffusers():
    ours = set(LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3")).config)
    theirs = set(LTX2VideoTransformer3DModel(**tiny_diffusers_config("2.3")).config)
    assert ours == theirs
