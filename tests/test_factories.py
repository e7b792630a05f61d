"""Checks of the tiny original-format checkpoint factory (tests/factories.py)."""

import json

import pytest
import torch
from factories import (
    build_checkpoint,
    checkpoint_config,
    load_reference,
    read_config,
    read_metadata,
    reference_key_report,
    transformer_config,
    transformer_inputs,
)
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from safetensors import safe_open


VERSIONS = ("2.3", "2.0")


@pytest.fixture(scope="module", params=VERSIONS)
def transformer_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / f"transformer_{request.param}.safetensors"
    return request.param, build_checkpoint(path, request.param, components=("transformer",))


def _file_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def _assert_distinct_and_non_constant(tensors):
    seen = {}
    for key, value in tensors.items():
        if value.numel() > 1:
            assert value.min() != value.max(), f"{key} is constant"
        fingerprint = (
            tuple(value.shape),
            value.dtype,
            value.contiguous().view(-1).view(torch.uint8).numpy().tobytes(),
        )
        assert fingerprint not in seen, f"{key} equals {seen.get(fingerprint)}"
        seen[fingerprint] = key


def test_transformer_config_versions():
    c23, c20 = transformer_config("2.3"), transformer_config("2.0")
    assert c23["apply_gated_attention"] and c23["cross_attention_adaln"] and c23["caption_proj_before_connector"]
    for key in ("apply_gated_attention", "cross_attention_adaln", "caption_proj_before_connector"):
        assert key not in c20
    assert c23["num_attention_heads"] == c23["audio_num_attention_heads"]
    assert c23["cross_attention_dim"] == 64 and c23["audio_cross_attention_dim"] == 32
    # 19B connectors work at the Gemma width, 22B ones at the transformer widths
    assert c20["connector_num_attention_heads"] * c20["connector_attention_head_dim"] == c20["caption_channels"]
    assert c23["connector_num_attention_heads"] * c23["connector_attention_head_dim"] == 64
    assert c23["audio_connector_num_attention_heads"] * c23["audio_connector_attention_head_dim"] == 32
    custom = transformer_config(
        "2.3", rope_type="interleaved", double_precision=False, num_layers=3, av_ca_timestep_scale_multiplier=1.0
    )
    assert custom["rope_type"] == "interleaved" and "frequencies_precision" not in custom
    assert custom["num_layers"] == 3 and custom["av_ca_timestep_scale_multiplier"] == 1.0
    assert "caption_channels" not in transformer_config("2.3", caption_channels=None)
    assert set(checkpoint_config("2.0")) == {"transformer", "vae", "scheduler", "audio_vae", "vocoder"}


def test_transformer_file_format(transformer_file):
    version, path = transformer_file
    metadata = read_metadata(path)
    assert metadata["model_version"] == {"2.3": "2.3.0", "2.0": "2.0.0"}[version]
    config = json.loads(metadata["config"])
    assert {"transformer", "vae", "audio_vae", "vocoder"} <= set(config)
    tensors = _file_tensors(path)
    assert all(key.startswith("model.diffusion_model.") for key in tensors)
    assert all(value.dtype == torch.bfloat16 for value in tensors.values())
    rows = 9 if version == "2.3" else 6
    assert tensors["model.diffusion_model.transformer_blocks.1.scale_shift_table"].shape == (rows, 64)
    assert tensors["model.diffusion_model.transformer_blocks.0.audio_scale_shift_table"].shape == (rows, 32)
    gated = "model.diffusion_model.transformer_blocks.0.attn1.to_gate_logits.weight" in tensors
    prompt_adaln = "model.diffusion_model.prompt_adaln_single.linear.weight" in tensors
    caption_proj = "model.diffusion_model.caption_projection.linear_1.weight" in tensors
    assert (gated, prompt_adaln, caption_proj) == ((True, True, False) if version == "2.3" else (False, False, True))
    if version == "2.0":
        assert tensors["model.diffusion_model.caption_projection.linear_1.weight"].shape == (64, 48)
        assert tensors["model.diffusion_model.audio_caption_projection.linear_1.weight"].shape == (32, 48)
    _assert_distinct_and_non_constant(tensors)


def test_transformer_reference_loads_exactly(transformer_file):
    _, path = transformer_file
    assert reference_key_report(path, "transformer") == ([], [])
    model = load_reference(path, "transformer")
    assert type(model).__name__ == "LTXModel"
    assert not model.training
    tensors = _file_tensors(path)
    state = model.state_dict()
    assert len(state) == len(tensors)
    for key, value in state.items():
        assert value.device.type == "cpu" and value.dtype == torch.float32, key
        assert torch.equal(value, tensors["model.diffusion_model." + key].float()), key
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_transformer_reference_forward(transformer_file):
    _, path = transformer_file
    model = load_reference(path, "transformer")
    video, audio = transformer_inputs(read_config(path))
    with torch.no_grad():
        vx, ax = model(video, audio, BatchedPerturbationConfig.empty(1))
    assert vx.shape == video.latent.shape and ax.shape == audio.latent.shape
    assert torch.isfinite(vx).all() and torch.isfinite(ax).all()
    assert 0.1 < vx.std() < 10 and 0.1 < ax.std() < 10
