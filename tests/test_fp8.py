"""float8 checkpoints: fp8-cast, cast-only and scaled files, kept in float8 (upcast at compute) or dequantised."""

import json
from dataclasses import replace

import factories
import pytest
import torch
from factories import max_abs_diff as _delta
from factories import run_ours_transformer as _ours
from factories import run_reference_transformer as _reference
from factories import transformer_parity_inputs as _inputs
from ltx_core.loader.sd_ops import SDOps
from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator
from ltx_core.quantization import QuantizationPolicy
from ltx_core.quantization.fp8_scaled_mm import quantize_weight_to_fp8_per_tensor
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltx2_diffusers.convert import convert_checkpoint
from ltx2_diffusers.loaders.fp8 import (
    enable_fp8_upcast,
    fp8_cast_state_dict,
    is_fp8_cast_target,
    load_fp8_transformer,
    load_transformer_from_single_file,
)
from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer


TOL = 1e-5
FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    bf16 = factories.cached_checkpoint("checkpoint", "2.3", seed=31)
    meta = factories.read_metadata(bf16)
    tensors = load_file(bf16)
    cast = {k: v.to(FP8) if is_fp8_cast_target(k) else v for k, v in tensors.items()}
    save_file(cast, root / "cast.safetensors", metadata=meta)
    scaled, dequantised = {}, {}
    for key, value in tensors.items():
        if is_fp8_cast_target(key) and key.endswith(".weight"):
            q, scale = quantize_weight_to_fp8_per_tensor(value)  # (in, out) for cuBLAS; files store (out, in)
            scaled[key] = q.t().contiguous()
            scaled[key[: -len(".weight")] + ".weight_scale"] = scale.reshape(())
            scaled[key[: -len(".weight")] + ".input_scale"] = torch.tensor(1.0)
            dequantised[key] = q.t().float() * scale
        else:
            scaled[key] = dequantised[key] = value
    save_file(scaled, root / "scaled.safetensors", metadata=meta)
    save_file(dequantised, root / "dequantised.safetensors", metadata=meta)
    return {
        "bf16": bf16,
        "cast": root / "cast.safetensors",
        "scaled": root / "scaled.safetensors",
        "deq": root / "dequantised.safetensors",
    }


def _ltx_core_fp8_cast(path):
    """ltx-core's transformer under QuantizationPolicy.fp8_cast(), as ModelLedger builds it; non-fp8 tensors in fp32."""
    policy = QuantizationPolicy.fp8_cast()
    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator, model_path=str(path), model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP
    )
    builder = replace(
        builder,
        module_ops=(*builder.module_ops, *policy.module_ops),
        model_sd_ops=SDOps(name="chain", mapping=(*LTXV_MODEL_COMFY_RENAMING_MAP.mapping, *policy.sd_ops.mapping)),
    )
    model = builder.build(device=torch.device("cpu"))
    for p in [*model.parameters(), *model.buffers()]:
        if p.dtype not in (FP8,) and p.is_floating_point():
            p.data = p.data.float()
    return model.eval()


@pytest.fixture(scope="module")
def fp8_cast_reference(files):
    return _ltx_core_fp8_cast(files["bf16"])


def test_fp8_cast_and_cast_only_files_match_ltx_core(files, fp8_cast_reference):
    x = None
    deltas = {}
    variants = {
        "fp8_cast(bf16 file)": dict(path=files["bf16"], fp8_cast=True),
        "cast-only file, upcast": dict(path=files["cast"], fp8="upcast"),
        "cast-only file, dequantize": dict(path=files["cast"], fp8="dequantize"),
    }
    for name, kwargs in variants.items():
        path = kwargs.pop("path")
        model = load_transformer_from_single_file(path, torch_dtype=torch.float32, **kwargs)
        x = x or _inputs(model.config)
        fp8_params = [n for n, p in model.named_parameters() if p.dtype == FP8]
        assert bool(fp8_params) == (name != "cast-only file, dequantize"), name
        assert all(is_fp8_cast_target(n) for n in fp8_params)
        deltas[name] = _delta(_ours(model, x), _reference(fp8_cast_reference, x))
    print(f"fp8 vs ltx-core fp8-cast: {deltas}")
    assert all(d <= TOL for d in deltas.values()), deltas


def test_scaled_file_matches_dequantised_reference(files, fp8_cast_reference):
    reference = factories.load_reference(files["deq"], "transformer")
    deltas = {}
    for mode in ("upcast", "dequantize"):
        model = load_transformer_from_single_file(files["scaled"], fp8=mode, torch_dtype=torch.float32)
        x = _inputs(model.config)
        deltas[mode] = _delta(_ours(model, x), _reference(reference, x))
    # What ltx-core's fp8-cast does with the same file: the scales are dropped (wrong weights, no error).
    garbage = _delta(_reference(_ltx_core_fp8_cast(files["scaled"]), x), _reference(reference, x))
    print(f"scaled fp8 vs dequantised reference: {deltas}; ltx-core fp8-cast on it: {garbage:.3g}")
    assert all(d <= TOL for d in deltas.values()), deltas
    assert garbage > 1e-2


def test_fp8_cast_on_an_fp8_file_is_refused(files, tmp_path):
    for kind in ("cast", "scaled"):
        with pytest.raises(ValueError, match="already quantised"):
            load_transformer_from_single_file(files[kind], fp8_cast=True)
        with pytest.raises(ValueError, match="already quantised"):
            convert_checkpoint(files[kind], tmp_path / "out", fp8_cast=True)
        assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="already float8"):
        fp8_cast_state_dict({"transformer_blocks.0.attn1.to_q.weight": torch.zeros(2, 2, dtype=FP8)})


def test_converter_fp8_cast_and_fp8_sources(files, fp8_cast_reference, tmp_path):
    x = None
    # fp8-cast of a bf16 file: the folder stores the block linears as float8 (fp8 model card).
    report = convert_checkpoint(files["bf16"], tmp_path / "cast", fp8_cast=True, dtype="float32")
    with safe_open(tmp_path / "cast" / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {k for k, d in dtypes.items() if d == "F8_E4M3"} == {k for k in dtypes if is_fp8_cast_target(k)}
    assert "fp8" in (tmp_path / "cast" / "README.md").read_text()
    assert report.written_tensors == report.source_tensors
    ref_out = None
    for folder in ("cast",):
        model = load_fp8_transformer(tmp_path / folder, torch_dtype=torch.float32)
        assert any(p.dtype == FP8 for p in model.parameters())
        x = _inputs(model.config)
        ref_out = _reference(fp8_cast_reference, x)
        assert _delta(_ours(model, x), ref_out) <= TOL
        upcast = LTX2AudioVideoTransformer.from_pretrained(
            tmp_path / folder, subfolder="transformer", torch_dtype=torch.float32
        )
        assert _delta(_ours(upcast, x), ref_out) <= TOL

    # A cast-only fp8 file keeps its float8 tensors by default.
    convert_checkpoint(files["cast"], tmp_path / "kept")
    kept = LTX2AudioVideoTransformer.from_pretrained(
        tmp_path / "kept", subfolder="transformer", torch_dtype=torch.float32
    )
    assert _delta(_ours(kept, x), ref_out) <= TOL

    # A scaled file needs a dtype; with one, its weights are dequantised and the scales folded and reported.
    with pytest.raises(ValueError, match="pass dtype"):
        convert_checkpoint(files["scaled"], tmp_path / "deq")
    assert not (tmp_path / "deq").exists()
    report = convert_checkpoint(files["scaled"], tmp_path / "deq", dtype="float32")
    scales = [k for k in load_file(files["scaled"]) if k.endswith(("_scale",))]
    assert len(report.folded) == len(scales) and report.source_tensors == report.written_tensors + len(report.folded)
    assert "folded" in report.summary()
    deq = LTX2AudioVideoTransformer.from_pretrained(tmp_path / "deq", subfolder="transformer")
    expected = factories.load_reference(files["deq"], "transformer")
    assert _delta(_ours(deq, x), _reference(expected, x)) <= TOL
    assert (
        json.loads((tmp_path / "deq" / "model_index.json").read_text())["transformer"][1]
        == "LTX2AudioVideoTransformer"
    )


def test_bad_arguments(files):
    with pytest.raises(ValueError, match="fp8 must be"):
        load_transformer_from_single_file(files["cast"], fp8="keep")
    with pytest.raises(TypeError, match="torch_dtype"):
        load_transformer_from_single_file(files["cast"], torch_dtype=FP8)
    with pytest.raises(ValueError, match="no config.json"):
        load_fp8_transformer(files["cast"].parent)
    with pytest.raises(ValueError, match="scales given"):
        enable_fp8_upcast(torch.nn.Linear(2, 2), {"x": torch.tensor(1.0)})


def test_save_pretrained_refuses_the_scales_it_would_drop(files, tmp_path):
    """fp8='upcast' of a scaled file keeps each weight's scale as a run-time buffer, which save_pretrained does not
    write: the saved folder would load unscaled (outputs off by the scales, no error). The model's and the pipeline's
    saves refuse it before anything is written; the dequantised model saves and loads back."""
    from ltx2_diffusers import LTX2AudioToVideoPipeline

    model = load_transformer_from_single_file(files["scaled"], fp8="upcast", torch_dtype=torch.float32)
    with pytest.raises(ValueError, match="LTX2AudioVideoTransformer holds float8 weights with their checkpoint scale"):
        model.save_pretrained(tmp_path / "model")
    pipe = LTX2AudioToVideoPipeline.from_single_file(files["bf16"], torch_dtype=torch.float32)
    pipe.register_modules(transformer=model)
    with pytest.raises(ValueError, match="transformer holds float8 weights with their checkpoint scale"):
        pipe.save_pretrained(tmp_path / "pipe")
    assert list(tmp_path.iterdir()) == []
    dequantised = load_transformer_from_single_file(files["scaled"], fp8="dequantize", torch_dtype=torch.float32)
    dequantised.save_pretrained(tmp_path / "model")
    x = _inputs(dequantised.config)
    loaded = LTX2AudioVideoTransformer.from_pretrained(tmp_path / "model")
    assert _delta(_ours(loaded, x), _ours(dequantised, x)) == 0.0
