"""Checks of the tiny original-format checkpoint factory (tests/factories.py)."""

import json

import pytest
import torch
from factories import (
    REFERENCE_COMPONENTS,
    TEXT_HIDDEN_SIZE,
    TEXT_NUM_HIDDEN_STATES,
    TEXT_SEQ_LEN,
    build_checkpoint,
    build_lora,
    build_upsampler,
    cached_checkpoint,
    checkpoint_config,
    file_key_map,
    load_reference,
    read_config,
    read_metadata,
    reference_key_report,
    text_encoder_dims,
    transformer_config,
    transformer_inputs,
)
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from safetensors import safe_open


VERSIONS = ("2.3", "2.0")
FILE_PREFIXES = (
    "model.diffusion_model.video_embeddings_connector.",
    "model.diffusion_model.audio_embeddings_connector.",
    "model.diffusion_model.",
    "text_embedding_projection.",
    "vae.encoder.",
    "vae.decoder.",
    "vae.per_channel_statistics.",
    "audio_vae.encoder.",
    "audio_vae.decoder.",
    "audio_vae.per_channel_statistics.",
    "vocoder.",
)


@pytest.fixture(scope="module", params=VERSIONS)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / f"full_{request.param}.safetensors"
    return request.param, build_checkpoint(path, request.param)


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


def _assert_loaded_exactly(model, component, tensors):
    """Every parameter/buffer is on CPU (none left on meta) and equals its file tensor upcast to fp32."""
    assert not model.training
    for name, value in (*model.named_parameters(), *model.named_buffers()):
        assert value.device.type == "cpu", f"{component}.{name} on {value.device}"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = model.state_dict()
    for model_key, file_key in file_key_map(component, model).items():
        assert state[model_key].dtype == torch.float32, model_key
        assert torch.equal(state[model_key], tensors[file_key].float()), f"{component}: {model_key} <- {file_key}"


# ---------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------


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
    assert transformer_config("19B") == c20 and transformer_config("2.3.0") == c23
    with pytest.raises(ValueError):
        transformer_config("1.0")


def test_config_sections_by_version():
    c23, c20 = checkpoint_config("2.3"), checkpoint_config("2.0")
    assert set(c23["vocoder"]) == {"vocoder", "bwe"} and "bwe" not in c20["vocoder"]
    assert c20["vae"]["timestep_conditioning"] and not c23["vae"]["timestep_conditioning"]
    assert all(block[1].get("residual") for block in c20["vae"]["decoder_blocks"] if block[0] == "compress_all")
    assert c23["audio_vae"]["model"]["params"]["ddconfig"]["ch"] == 128


# ---------------------------------------------------------------------------------------------------------
# transformer-only files (what the transformer parity tests use)
# ---------------------------------------------------------------------------------------------------------


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
    assert tensors["model.diffusion_model.adaln_single.linear.weight"].shape == (rows * 64, 64)
    gated = "model.diffusion_model.transformer_blocks.0.attn1.to_gate_logits.weight" in tensors
    prompt_adaln = "model.diffusion_model.prompt_adaln_single.linear.weight" in tensors
    caption_proj = "model.diffusion_model.caption_projection.linear_1.weight" in tensors
    assert (gated, prompt_adaln, caption_proj) == ((True, True, False) if version == "2.3" else (False, False, True))
    if version == "2.0":
        assert tensors["model.diffusion_model.caption_projection.linear_1.weight"].shape == (64, 48)
        assert tensors["model.diffusion_model.audio_caption_projection.linear_1.weight"].shape == (32, 48)
    else:
        assert tensors["model.diffusion_model.transformer_blocks.0.prompt_scale_shift_table"].shape == (2, 64)
    _assert_distinct_and_non_constant(tensors)


def test_transformer_reference_loads_exactly(transformer_file):
    _, path = transformer_file
    assert reference_key_report(path, "transformer") == ([], [])
    model = load_reference(path, "transformer")
    assert type(model).__name__ == "LTXModel"
    tensors = _file_tensors(path)
    assert len(model.state_dict()) == len(tensors)
    _assert_loaded_exactly(model, "transformer", tensors)


def test_transformer_reference_forward(transformer_file):
    _, path = transformer_file
    model = load_reference(path, "transformer")
    video, audio = transformer_inputs(path)
    with torch.no_grad():
        vx, ax = model(video, audio, BatchedPerturbationConfig.empty(1))
    assert vx.shape == video.latent.shape and ax.shape == audio.latent.shape
    assert torch.isfinite(vx).all() and torch.isfinite(ax).all()
    assert 0.1 < vx.std() < 10 and 0.1 < ax.std() < 10


# ---------------------------------------------------------------------------------------------------------
# full checkpoints
# ---------------------------------------------------------------------------------------------------------


def test_full_file_format(checkpoint):
    version, path = checkpoint
    metadata = read_metadata(path)
    assert metadata["model_version"].startswith(version)
    assert set(json.loads(metadata["config"])) >= {"transformer", "vae", "audio_vae", "vocoder"}
    tensors = _file_tensors(path)
    for key in tensors:
        assert key.startswith(FILE_PREFIXES), key
    for prefix in FILE_PREFIXES:
        assert any(key.startswith(prefix) for key in tensors), f"nothing under {prefix}"
    assert all(value.dtype == torch.bfloat16 for value in tensors.values())
    _assert_distinct_and_non_constant(tensors)

    flat = TEXT_HIDDEN_SIZE * TEXT_NUM_HIDDEN_STATES
    assert text_encoder_dims(path) == (TEXT_HIDDEN_SIZE, TEXT_NUM_HIDDEN_STATES)
    assert tensors["model.diffusion_model.video_embeddings_connector.learnable_registers"].shape[0] == TEXT_SEQ_LEN
    if version == "2.3":
        assert tensors["text_embedding_projection.video_aggregate_embed.weight"].shape == (64, flat)
        assert tensors["text_embedding_projection.audio_aggregate_embed.weight"].shape == (32, flat)
        assert "text_embedding_projection.audio_aggregate_embed.bias" in tensors
        assert (
            "model.diffusion_model.audio_embeddings_connector.transformer_1d_blocks.1.attn1.to_gate_logits.bias"
            in (tensors)
        )
        for key in ("vocoder.vocoder.conv_pre.weight", "vocoder.bwe_generator.conv_pre.weight"):
            assert tensors[key].shape[1] == 128
        assert tensors["vocoder.mel_stft.mel_basis"].shape == (64, 257)
        assert tensors["vocoder.mel_stft.stft_fn.forward_basis"].shape == (514, 1, 512)
        assert "vae.decoder.timestep_scale_multiplier" not in tensors
        assert tensors["vae.decoder.up_blocks.8.res_blocks.1.conv2.conv.weight"].shape[0] == 16
    else:
        assert tensors["text_embedding_projection.aggregate_embed.weight"].shape == (48, flat)
        assert "text_embedding_projection.aggregate_embed.bias" not in tensors
        assert not any("to_gate_logits" in key for key in tensors)
        assert tensors["vocoder.conv_pre.weight"].shape[1] == 128
        assert not any(key.startswith(("vocoder.vocoder.", "vocoder.bwe_generator.")) for key in tensors)
        assert tensors["vae.decoder.timestep_scale_multiplier"].shape == ()
        assert tensors["vae.decoder.last_scale_shift_table"].shape == (2, 16)
        assert tensors["vae.decoder.up_blocks.0.res_blocks.0.scale_shift_table"].shape == (4, 128)
    assert tensors["vae.per_channel_statistics.std-of-means"].min() > 0
    assert tensors["audio_vae.per_channel_statistics.std-of-means"].min() > 0
    assert tensors["vae.encoder.conv_out.conv.weight"].shape[0] == 129


@pytest.mark.parametrize("component", REFERENCE_COMPONENTS)
def test_reference_component_loads_exactly(checkpoint, component):
    _, path = checkpoint
    missing, unexpected = reference_key_report(path, component)
    assert missing == []
    if component == "transformer":
        # the connectors live under the transformer prefix; ltx-core drops them silently (strict=False)
        assert unexpected and all(
            key.startswith(("video_embeddings_connector.", "audio_embeddings_connector.")) for key in unexpected
        )
    else:
        assert unexpected == []
    model = load_reference(path, component)
    _assert_loaded_exactly(model, component, _file_tensors(path))


def test_every_file_tensor_belongs_to_a_reference_model(checkpoint):
    _, path = checkpoint
    covered = set()
    for component in REFERENCE_COMPONENTS:
        covered |= set(file_key_map(component, load_reference(path, component)).values())
    assert covered == set(_file_tensors(path))


def test_reference_forwards_are_well_scaled(checkpoint):
    version, path = checkpoint
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latent = load_reference(path, "video_encoder")(torch.rand(1, 3, 9, 64, 64, generator=gen) * 2 - 1)
        assert latent.shape == (1, 128, 2, 2, 2) and 0.1 < latent.std() < 10
        video = load_reference(path, "video_decoder")(latent, generator=gen)
        assert video.shape == (1, 3, 9, 64, 64) and 0.1 < video.std() < 10

        audio_latent = load_reference(path, "audio_encoder")(torch.randn(1, 2, 17, 64, generator=gen))
        assert audio_latent.shape == (1, 8, 5, 16) and 0.1 < audio_latent.std() < 10
        mel = load_reference(path, "audio_decoder")(audio_latent)
        assert mel.shape == (1, 2, 17, 64) and 0.1 < mel.std() < 10
        waveform = load_reference(path, "vocoder")(mel)
        assert waveform.shape == (1, 2, 17 * 160 * (3 if version == "2.3" else 1.5))
        assert 0.05 < waveform.std() and (waveform.abs() > 0.999).float().mean() < 0.1  # mostly unsaturated

        processor = load_reference(path, "embeddings_processor")
        hidden = tuple(torch.randn(1, TEXT_SEQ_LEN, TEXT_HIDDEN_SIZE, generator=gen) for _ in range(4))
        mask = torch.zeros(1, TEXT_SEQ_LEN, dtype=torch.int64)
        mask[:, -20:] = 1
        out = processor.process_hidden_states(hidden, mask)
        widths = (64, 32) if version == "2.3" else (48, 48)
        assert (out.video_encoding.shape[-1], out.audio_encoding.shape[-1]) == widths
        assert torch.isfinite(out.video_encoding).all() and torch.isfinite(out.audio_encoding).all()


def test_values_are_seeded_per_key(tmp_path, transformer_file):
    version, path = transformer_file
    full = _file_tensors(build_checkpoint(tmp_path / "a.safetensors", version, components=("transformer", "vocoder")))
    alone = _file_tensors(path)
    assert all(torch.equal(full[key], value) for key, value in alone.items())
    other = _file_tensors(build_checkpoint(tmp_path / "b.safetensors", version, seed=1, components=("transformer",)))
    assert not any(torch.equal(other[key], value) for key, value in alone.items() if value.numel() > 1)
    fp32 = build_checkpoint(tmp_path / "c.safetensors", version, dtype=torch.float32, components=("transformer",))
    assert {value.dtype for value in _file_tensors(fp32).values()} == {torch.float32}


def test_cached_checkpoint_is_reused():
    first = cached_checkpoint("checkpoint", "2.0", components=("transformer",), num_layers=1)
    assert cached_checkpoint("checkpoint", "2.0", components=("transformer",), num_layers=1) == first
    assert read_config(first)["transformer"]["num_layers"] == 1


# ---------------------------------------------------------------------------------------------------------
# upsampler and LoRA files
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rational", "scale"), [(False, 2.0), (True, 2.0), (True, 1.5)])
def test_upsampler(tmp_path, rational, scale):
    path = build_upsampler(tmp_path / "up.safetensors", rational_resampler=rational, spatial_scale=scale)
    config = read_config(path)
    assert config["rational_resampler"] is rational and config["in_channels"] == 128
    tensors = _file_tensors(path)
    assert "initial_conv.weight" in tensors and "final_conv.weight" in tensors
    assert ("upsampler.blur_down.kernel" in tensors) is rational
    assert ("upsampler.0.weight" in tensors) is not rational
    _assert_distinct_and_non_constant(tensors)
    assert reference_key_report(path, "upsampler") == ([], [])
    model = load_reference(path, "upsampler")
    _assert_loaded_exactly(model, "upsampler", tensors)
    with torch.no_grad():
        out = model(torch.randn(1, 128, 2, 4, 4))
    assert out.shape == (1, 128, 2, int(4 * scale), int(4 * scale)) and torch.isfinite(out).all()


def test_lora_is_fused_by_the_reference(tmp_path, checkpoint):
    _, path = checkpoint
    with pytest.raises(ValueError, match="connector"):
        build_lora(tmp_path / "x.safetensors", cached_checkpoint(components=("transformer",)), include_connectors=True)
    lora = build_lora(tmp_path / "lora.safetensors", path, rank=4, include_connectors=True)
    lora_tensors = _file_tensors(lora)
    checkpoint = _file_tensors(path)
    a_keys = [key for key in lora_tensors if key.endswith(".lora_A.weight")]
    assert len(a_keys) * 2 == len(lora_tensors)
    assert any(".audio_to_video_attn.to_k." in key for key in a_keys)
    assert any(key.startswith("diffusion_model.video_embeddings_connector.") for key in a_keys)
    for a_key in a_keys:
        weight = checkpoint.get("model." + a_key.replace(".lora_A.weight", ".weight"))
        b = lora_tensors[a_key.replace("lora_A", "lora_B")]
        if weight is not None:  # connector LoRA keys target tensors that are not in this file
            assert lora_tensors[a_key].shape == (4, weight.shape[1]) and b.shape == (weight.shape[0], 4)

    base = load_reference(path, "transformer", dtype=None)
    fused = load_reference(path, "transformer", loras=[(lora, 0.7)])
    fused_state, base_state = fused.state_dict(), base.state_dict()
    changed = {key for key in base_state if not torch.equal(fused_state[key], base_state[key].float())}
    block_pairs = [key for key in a_keys if key.startswith("diffusion_model.transformer_blocks.")]
    assert len(changed) == len(block_pairs)
    key = "transformer_blocks.1.audio_to_video_attn.to_k"
    a = lora_tensors[f"diffusion_model.{key}.lora_A.weight"]
    b = lora_tensors[f"diffusion_model.{key}.lora_B.weight"]
    # ltx-core: delta = (strength * B) @ A in the LoRA dtype (bf16), added to the bf16 weight in the target dtype
    expected = torch.matmul(b * 0.7, a).float() + base_state[f"{key}.weight"]
    assert torch.equal(fused_state[f"{key}.weight"], expected)


def test_extra_vae_statistics_are_dropped_by_the_reference(tmp_path):
    path = build_checkpoint(tmp_path / "stats.safetensors", "2.3", components=("vae",), extra_vae_stats=True)
    extras = {"per_channel_statistics.channel", "per_channel_statistics.mean-of-stds"}
    extras.add("per_channel_statistics.mean-of-stds_over_std-of-means")
    _assert_distinct_and_non_constant(_file_tensors(path))
    for component in ("video_encoder", "video_decoder"):
        assert reference_key_report(path, component) == ([], sorted(extras))
        _assert_loaded_exactly(load_reference(path, component), component, _file_tensors(path))
