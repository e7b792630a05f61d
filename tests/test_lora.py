"""LTX2AVLoraLoaderMixin: original-format LoRAs at strength s equal ltx-core's fused weights; diffusers format too."""

import factories
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from factories import max_abs_diff as _delta
from factories import run_ours_transformer as _ours
from factories import run_reference_transformer as _reference
from factories import transformer_parity_inputs as _inputs
from safetensors.torch import load_file, save_file

from ltx2_diffusers.convert import convert_checkpoint
from ltx2_diffusers.loaders.lora import (
    LTX2AVLoraLoaderMixin,
    convert_lora_state_dict,
    lora_key_format,
    plan_lora_conversion,
)
from ltx2_diffusers.loaders.single_file_connectors import load_connectors_from_single_file
from ltx2_diffusers.loaders.single_file_transformer import TRANSFORMER_KEY_TABLE
from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer


TOL = 1e-5
STRENGTH = 0.8


class _Pipe(LTX2AVLoraLoaderMixin, DiffusionPipeline):
    """The smallest pipeline that holds LoRA-able components."""

    def __init__(self, transformer, connectors=None):
        super().__init__()
        self.register_modules(transformer=transformer, connectors=connectors)


@pytest.fixture(scope="module")
def files():
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=21, components=("transformer", "connectors"))
    # float32 LoRA: ltx-core computes `strength * B @ A` in the LoRA's dtype (a bf16 file would round the delta).
    lora = factories.cached_checkpoint(
        "lora", checkpoint_path=checkpoint, seed=22, include_connectors=True, alpha=2.0, dtype=torch.float32
    )
    return checkpoint, lora


def _pipe(checkpoint):
    return _Pipe(
        LTX2AudioVideoTransformer.from_single_file(checkpoint, torch_dtype=torch.float32),
        load_connectors_from_single_file(checkpoint, torch_dtype=torch.float32),
    )


def test_original_format_matches_ltx_core_unfused_fused_and_unloads(files):
    checkpoint, lora = files
    # ltx-core leaves the tensors without a LoRA delta in the file dtype: upcasting them is exact.
    reference = factories.load_reference(checkpoint, "transformer", loras=[(lora, STRENGTH)]).float()
    pipe = _pipe(checkpoint)
    x = _inputs(pipe.transformer.config)
    base = _ours(pipe.transformer, x)
    expected = _reference(reference, x)
    assert _delta(base, expected) > 1e-3  # the LoRA changes the output

    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.set_adapters(["style"], [STRENGTH])
    unfused = _ours(pipe.transformer, x)
    pipe.unload_lora_weights()  # never fused: the base weights are untouched
    assert all(torch.equal(a, b) for a, b in zip(_ours(pipe.transformer, x), base))
    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.set_adapters(["style"], [STRENGTH])
    pipe.fuse_lora()
    fused = _ours(pipe.transformer, x)
    fused_weights = {k.replace(".base_layer", ""): v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.unfuse_lora()
    refused = _ours(pipe.transformer, x)
    pipe.unload_lora_weights()
    restored = _ours(pipe.transformer, x)

    d_unfused, d_fused = _delta(unfused, expected), _delta(fused, expected)
    ref_sd = reference.state_dict()
    d_weights = max(
        (fused_weights[TRANSFORMER_KEY_TABLE.map_key("model.diffusion_model." + k)] - v).abs().max().item()
        for k, v in ref_sd.items()
    )
    print(f"LoRA x{STRENGTH}: unfused {d_unfused:.3g}, fused {d_fused:.3g}, fused weights {d_weights:.3g}")
    assert d_unfused <= TOL and d_fused <= TOL and d_weights <= TOL
    assert _delta(refused, unfused) <= TOL
    # After fuse/unfuse the weights are W + d - d (float rounding), so "restored" is close, not bit-equal.
    assert _delta(restored, base) <= TOL
    assert not any("lora" in k for k in pipe.transformer.state_dict())


def test_connector_keys_go_to_the_connectors(files):
    checkpoint, lora = files
    pipe = _pipe(checkpoint)
    plain = load_connectors_from_single_file(checkpoint, torch_dtype=torch.float32)
    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.set_adapters("style", STRENGTH)
    assert "style" in pipe.connectors.peft_config and "style" in pipe.transformer.peft_config
    # Expected: W + s * B @ A on the connector linears (ltx-core itself leaves connector LoRA keys unused).
    state = load_file(lora)
    manual = LTX2TextConnectors.from_config(plain.config)
    manual.load_state_dict(plain.state_dict())
    converted = convert_lora_state_dict(state, pipe._lora_targets())
    weights = dict(manual.named_parameters())
    for key, a in converted.items():
        if key.startswith("connectors.") and key.endswith(".lora_A.weight"):
            module = key[len("connectors.") : -len(".lora_A.weight")]
            b = converted[key.replace("lora_A", "lora_B")]
            weights[module + ".weight"].data += STRENGTH * (b.float() @ a.float())
    hidden = torch.randn(1, factories.TEXT_SEQ_LEN, plain.config.caption_channels * plain.config.text_proj_in_factor)
    mask = torch.ones(1, factories.TEXT_SEQ_LEN, dtype=torch.long)
    with torch.no_grad():
        got, want, before = pipe.connectors(hidden, mask), manual(hidden, mask), plain(hidden, mask)
    assert (got[0] - want[0]).abs().max() <= TOL and (got[1] - want[1]).abs().max() <= TOL
    assert (got[0] - before[0]).abs().max() > 1e-3


def test_diffusers_format_and_converted_folder_equal_original(files, tmp_path):
    checkpoint, lora = files
    x = None
    outputs = {}
    for name in ("original", "diffusers", "folder"):
        pipe = _pipe(checkpoint)
        x = x or _inputs(pipe.transformer.config)
        if name == "original":
            pipe.load_lora_weights(lora, adapter_name="a")
        elif name == "diffusers":
            converted = convert_lora_state_dict(load_file(lora), pipe._lora_targets())
            save_file(converted, tmp_path / "diffusers_lora.safetensors")
            assert lora_key_format(converted) == "diffusers"
            pipe.load_lora_weights(tmp_path / "diffusers_lora.safetensors", adapter_name="a")
        else:
            out = tmp_path / "folder"
            full = factories.cached_checkpoint("checkpoint", "2.3", seed=21)
            report = convert_checkpoint(full, out, distilled_lora=lora, dtype="float32")
            pipe.load_lora_weights(out / report.distilled_lora, adapter_name="a")
        pipe.set_adapters("a", STRENGTH)
        outputs[name] = _ours(pipe.transformer, x)
    assert _delta(outputs["diffusers"], outputs["original"]) == 0.0
    assert _delta(outputs["folder"], outputs["original"]) <= TOL  # the folder's base weights came from seed 21 too


def test_alpha_is_ignored_and_state_dict_input(files):
    checkpoint, lora = files
    state = load_file(lora)
    assert any(k.endswith(".alpha") for k in state)
    no_alpha = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    results = []
    for sd in (state, no_alpha):
        pipe = _pipe(checkpoint)
        pipe.load_lora_weights(sd, adapter_name="a")
        pipe.set_adapters("a", STRENGTH)
        results.append(_ours(pipe.transformer, _inputs(pipe.transformer.config)))
    assert _delta(*results) == 0.0


def test_lora_for_another_model_is_rejected(files, tmp_path):
    checkpoint, _ = files
    wide = factories.cached_checkpoint(
        "checkpoint", "2.3", seed=23, components=("transformer",), num_attention_heads=4
    )
    other = factories.cached_checkpoint("lora", checkpoint_path=wide, seed=24)
    pipe = _pipe(checkpoint)
    with pytest.raises(ValueError, match=r"does not fit.*attn1\.to_q\.lora_A\.weight \(shapes"):
        pipe.load_lora_weights(other, adapter_name="x")
    flux = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 64),
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(192, 4),
    }
    with pytest.raises(ValueError, match=r"double_blocks\.0\.img_attn\.qkv\.lora_A\.weight \(no such linear layer\)"):
        pipe.load_lora_weights(flux, adapter_name="x")
    assert not getattr(pipe.transformer, "peft_config", None)


def test_key_format_and_plan_errors():
    with pytest.raises(ValueError, match="holds no tensors"):
        lora_key_format([])
    with pytest.raises(ValueError, match="unrecognised keys.*lora_unet"):
        lora_key_format(["lora_unet_down_blocks_0.lora_down.weight"])
    with pytest.raises(ValueError, match="mixed"):
        lora_key_format(["diffusion_model.a.lora_A.weight", "transformer.a.lora_A.weight"])
    targets = {"transformer": {"transformer_blocks.0.attn1.to_q.weight": (64, 64)}}
    with pytest.raises(ValueError, match="no lora_B"):
        plan_lora_conversion({"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64)}, targets)
    mapping, dropped = plan_lora_conversion(
        {
            "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64),
            "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": (64, 4),
            "diffusion_model.transformer_blocks.0.attn1.to_q.alpha": (),
        },
        targets,
    )
    assert mapping == {
        "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight",
    }
    assert dropped == ["diffusion_model.transformer_blocks.0.attn1.to_q.alpha"]
