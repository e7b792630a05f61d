"""Generic diffusers model behaviours of LTX2AudioVideoTransformer and its input validation."""

import json

import pytest
import torch
from safetensors.torch import save_file
from test_transformer_diffusers_interop import forward_kwargs, randomize_, tiny_diffusers_config

from ltx2_diffusers import LTX2AudioVideoTransformer, LTX2Perturbation


@pytest.fixture(params=["2.0", "2.3"])
def model(request):
    return randomize_(LTX2AudioVideoTransformer(**tiny_diffusers_config(request.param))).eval()


def outputs(model, **extra):
    with torch.no_grad():
        return model(**forward_kwargs(model, **extra))


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_save_load_round_trip_plain_and_sharded(model, tmp_path):
    expected = outputs(model)
    model.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    for folder in ("plain", "sharded"):
        loaded = LTX2AudioVideoTransformer.from_pretrained(tmp_path / folder).eval()
        assert max_diff(outputs(loaded), expected) == 0.0


def test_determinism_and_dict_vs_tuple(model):
    first, second = outputs(model), outputs(model)
    assert max_diff(first, second) == 0.0
    with torch.no_grad():
        as_dict = model(**forward_kwargs(model, return_dict=True))
    assert max_diff((as_dict.sample, as_dict.audio_sample), first) == 0.0


def test_gradient_checkpointing_equivalence(model):
    model.train()
    kwargs = forward_kwargs(model)

    def grads():
        model.zero_grad()
        video, audio = model(**kwargs)
        (video.square().mean() + audio.square().mean()).backward()
        return video.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_plain, grads_plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    out_ckpt, grads_ckpt = grads()
    assert (out_plain - out_ckpt).abs().max() <= 1e-6
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        assert (grads_plain[name] - grads_ckpt[name]).abs().max() <= 1e-5, name


def test_layerwise_casting_fp8_storage_runs(model):
    expected = outputs(model)
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert model.transformer_blocks[0].scale_shift_table.dtype == torch.float32  # skipped pattern
    actual = outputs(model)
    assert all(torch.isfinite(t).all() for t in actual)
    assert max_diff(actual, expected) < 1.0  # fp8 weights: close, not equal


def test_group_offloading_same_output_on_cpu(model):
    expected = outputs(model)
    model.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    assert max_diff(outputs(model), expected) == 0.0


def test_peft_lora_add_and_unload(model):
    from peft import LoraConfig

    expected = outputs(model)
    model.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    changed = outputs(model)
    assert max_diff(changed, expected) > 1e-4
    model.disable_adapters()
    assert max_diff(outputs(model), expected) <= 1e-6
    model.enable_adapters()
    model.delete_adapters("default")
    assert max_diff(outputs(model), expected) <= 1e-6


def test_compiles_fullgraph_with_perturbations(model):
    """No Python branch on tensor values: dynamo traces every guidance pass without a graph break."""
    perturbations = [
        [],
        [LTX2Perturbation("skip_video_self_attn", (1,))],
    ]
    expected = outputs(model, perturbations=perturbations)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        actual = compiled(**forward_kwargs(model, perturbations=perturbations))
        stg = compiled(
            **forward_kwargs(model, spatio_temporal_guidance_blocks=[0], perturbation_mask=torch.tensor([0.0, 1.0]))
        )
    assert max_diff(actual, expected) == 0.0
    assert all(torch.isfinite(t).all() for t in stg)


# ----------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "extra, match",
    [
        ({"hidden_states": torch.randn(2, 12, 64)}, "hidden_states has 64 channels"),
        ({"audio_hidden_states": torch.randn(2, 5, 7)}, "audio_hidden_states has 7 channels"),
        ({"video_coords": torch.zeros(2, 2, 12, 2)}, "video_coords must have shape"),
        ({"audio_coords": torch.zeros(2, 1, 4, 2)}, "audio_coords must have shape"),
        ({"perturbations": [[LTX2Perturbation("skip_video_self_attn", (5,))], []]}, "block index 5 out of range"),
        ({"perturbations": [[]]}, "one entry per batch item"),
        ({"spatio_temporal_guidance_blocks": [9]}, "spatio_temporal_guidance_blocks: block index 9"),
        ({"video_coords": None, "num_frames": None}, "pass video_coords, or num_frames"),
    ],
)
def test_bad_inputs_raise_value_error(extra, match):
    model = LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3"))
    with pytest.raises(ValueError, match=match):
        model(**forward_kwargs(model, **extra))


@pytest.mark.parametrize(
    "extra, error, match",
    [
        ({"hidden_states": torch.zeros(2, 12, 128, dtype=torch.int64)}, TypeError, "hidden_states must be a floating"),
        ({"audio_hidden_states": torch.zeros(2, 5, 128, dtype=torch.int32)}, TypeError, "audio_hidden_states must be"),
        ({"audio_hidden_states": torch.zeros(2, 5, 128, dtype=torch.complex64)}, TypeError, "audio_hidden_states"),
        ({"encoder_hidden_states": torch.zeros(2, 7, 64, dtype=torch.int64)}, TypeError, "encoder_hidden_states must"),
        (
            {"audio_hidden_states": torch.randn(2, 0, 128), "audio_timestep": None, "audio_num_frames": 0},
            ValueError,
            "audio_hidden_states has 0 tokens",
        ),
        (
            {"hidden_states": torch.randn(2, 0, 128), "timestep": 3.0, "num_frames": 0},
            ValueError,
            "hidden_states has 0",
        ),
        ({"timestep": "500"}, TypeError, "timestep must be a tensor or a real number, got str"),
        ({"timestep": True}, TypeError, "timestep must be a tensor or a real number, got bool"),
        ({"timestep": None}, TypeError, "timestep is required"),
        ({"timestep": float("nan")}, ValueError, "timestep must be finite"),
        ({"sigma": float("inf")}, ValueError, "sigma must be finite"),
        ({"audio_timestep": [1.0, 2.0]}, TypeError, "audio_timestep must be a tensor or a real number, got list"),
    ],
)
def test_bad_input_types_are_refused_before_compute(extra, error, match):
    model = LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3"))
    with pytest.raises(error, match=match):
        model(**forward_kwargs(model, **extra))


@pytest.mark.parametrize("value", [500.0, 500, 0])
def test_a_python_number_timestep_is_the_same_timestep_for_every_item(model, value):
    kwargs = forward_kwargs(model)
    as_tensor = outputs(model, timestep=torch.full((2,), float(value)), audio_timestep=None, sigma=kwargs["sigma"])
    as_number = outputs(model, timestep=value, audio_timestep=None)
    assert max_diff(as_number, as_tensor) == 0.0
    both = outputs(model, timestep=value, audio_timestep=value, sigma=value, audio_sigma=value)
    tensors = {k: torch.full((2,), float(value)) for k in ("timestep", "audio_timestep", "sigma", "audio_sigma")}
    assert max_diff(both, outputs(model, **tensors)) == 0.0


def test_bad_perturbation_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        LTX2Perturbation("skip_everything")


def test_single_file_without_transformer_keys_or_config(tmp_path):
    no_config = tmp_path / "no_config.safetensors"
    save_file({"model.diffusion_model.proj_out.weight": torch.zeros(2, 2)}, no_config)
    with pytest.raises(ValueError, match="no 'config' entry"):
        LTX2AudioVideoTransformer.from_single_file(no_config)

    no_transformer = tmp_path / "vae_only.safetensors"
    config = {"transformer": {"caption_proj_before_connector": True}}
    save_file(
        {"vae.decoder.conv_in.conv.weight": torch.zeros(2)}, no_transformer, metadata={"config": json.dumps(config)}
    )
    with pytest.raises(ValueError, match="holds no transformer weights"):
        LTX2AudioVideoTransformer.from_single_file(no_transformer)

    not_safetensors = tmp_path / "junk.safetensors"
    not_safetensors.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        LTX2AudioVideoTransformer.from_single_file(not_safetensors)

    bad_layout = tmp_path / "bad_layout.safetensors"
    config = {"transformer": {"qk_norm": "layer_norm", "caption_proj_before_connector": True}}
    save_file(
        {"model.diffusion_model.proj_out.weight": torch.zeros(2)}, bad_layout, metadata={"config": json.dumps(config)}
    )
    with pytest.raises(ValueError, match="qk_norm='layer_norm'"):
        LTX2AudioVideoTransformer.from_single_file(bad_layout)


def test_split_rope_head_layouts_that_cannot_run_are_refused():
    """Half the audio cross-attention width must divide by the VIDEO heads (ltx-core fails inside its RoPE)."""
    from ltx2_diffusers import LTX2AudioVideoTransformer

    with pytest.raises(
        ValueError, match=r"audio->video cross-attention .* width 32 halved \(16\) must divide by its 3"
    ):
        LTX2AudioVideoTransformer(
            num_attention_heads=3, attention_head_dim=32, cross_attention_dim=96, audio_num_attention_heads=1,
            audio_attention_head_dim=32, audio_cross_attention_dim=32, num_layers=1, caption_channels=16,
            rope_type="split",
        )  # fmt: skip
