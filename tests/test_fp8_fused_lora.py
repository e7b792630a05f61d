"""The pipeline's distilled LoRA on float8 scaled-mm linears (`enable_fp8_scaled_mm`): fused per call into a
requantised float8 weight, `quantize(W_fp8 * scale + (B * s) @ A)`, as ltx-core fuses a LoRA into scaled float8
weights (bf16 delta, float32 sum, fresh scales), never as an unfused `B(A(x))` branch; the stored weights stay
bit-identical. `torch._scaled_mm` is replaced by an exact float32 emulation so every figure is the arithmetic's
own; the layers are patched through `_patch_scaled_mm` (the public entry refuses a model off the GPU)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_lora, build_upsampler
from ltx_core.loader.fuse_loras import apply_loras
from ltx_core.loader.primitives import LoraStateDictWithStrength, StateDict
from ltx_core.quantization.fp8_scaled_mm import quantize_weight_to_fp8_per_tensor
from test_pipeline_lora_ownership import frames as ownership_frames

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2DistilledLoRA
from ltx2_diffusers.loaders import fp8
from ltx2_diffusers.loaders.distilled_lora import _target_linear


FP8 = torch.float8_e4m3fn
GRANULARITIES = pytest.mark.parametrize("rowwise", [True, False], ids=["row", "tensor"])


def emulated_scaled_mm(a, b, scale_a, scale_b, bias=None, out_dtype=None, **_):
    """`torch._scaled_mm` in exact float32: `(a * scale_a) @ (b * scale_b) + bias`, cast to `out_dtype`."""
    out = (a.float() * scale_a) @ (b.float() * scale_b)
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


@pytest.fixture(autouse=True)
def scaled_mm(monkeypatch):
    monkeypatch.setattr(torch, "_scaled_mm", emulated_scaled_mm)


def quantize_reference(w: torch.Tensor, rowwise: bool):
    """ltx-core's `quantize_weight_to_fp8_per_tensor` (no transpose), per row for `rowwise`."""
    amax = w.abs().amax(dim=-1, keepdim=True) if rowwise else w.abs().amax()
    inverse = 448.0 / amax
    return torch.clamp(w * inverse, -448.0, 448.0).to(FP8), inverse.reciprocal()


def layer(rowwise: bool, seed: int = 0, in_features: int = 32, out_features: int = 48, rank: int = 4, lora_dtype=None):
    """A scaled-mm linear (as `enable_fp8_scaled_mm` leaves it) inside a model, and a store with one LoRA pair."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(out_features, in_features, generator=g) / in_features**0.5)
        model[0].bias.copy_(torch.randn(out_features, generator=g) * 0.1)
    fp8._patch_scaled_mm([("0", model[0])], rowwise=rowwise)
    # A LoRA as large as the weight itself: its effect is far above float8's rounding.
    a = torch.randn(rank, in_features, generator=g) / in_features**0.5
    b = torch.randn(out_features, rank, generator=g) / rank**0.5
    a, b = a.to(lora_dtype or torch.bfloat16), b.to(lora_dtype or torch.bfloat16)
    store = LTX2DistilledLoRA.from_state_dict({"transformer.0.lora_A.weight": a, "transformer.0.lora_B.weight": b})
    x = torch.randn(2, 5, in_features, generator=g)
    return model, store, a, b, x


def digest(linear) -> str:
    h = hashlib.sha256()
    for tensor in (linear.weight, linear.fp8_weight_scale, linear.bias):
        h.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        h.update(bits(tensor.detach()).numpy().tobytes())
    return h.hexdigest()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


# ------------------------------------------------------------------------------------------------ arithmetic
def test_fused_weight_is_ltx_cores_scaled_fp8_fuse():
    """Per-tensor: the layer's quantisation and the fused weight are ltx-core's (`quantize_weight_to_fp8_per_tensor`,
    `apply_loras` on a scaled float8 state dict, its [in, out] layout), bit for bit, for a bf16 LoRA."""
    _, _, a, b, _ = layer(rowwise=False, seed=1)
    w = torch.randn(48, 32, generator=torch.Generator().manual_seed(1)) * 0.2
    linear = torch.nn.Linear(32, 48)
    with torch.no_grad():
        linear.weight.copy_(w)
    fp8._patch_scaled_mm([("0", linear)], rowwise=False)
    ref_q, ref_scale = quantize_weight_to_fp8_per_tensor(w)
    assert torch.equal(bits(linear.weight), bits(ref_q.t())) and torch.equal(linear.fp8_weight_scale, ref_scale)

    for strength in (0.8, -1.7):
        model_sd = {"m.weight": linear.weight.t(), "m.weight_scale": linear.fp8_weight_scale}
        lora_sd = {"m.lora_A.weight": a, "m.lora_B.weight": b}
        fused_sd = apply_loras(
            StateDict(model_sd, torch.device("cpu"), 0, {FP8}),
            [LoraStateDictWithStrength(StateDict(lora_sd, torch.device("cpu"), 0, {torch.bfloat16}), strength)],
        ).sd
        ours, ours_scale = fp8.fused_lora_fp8_weight(linear, a, b, strength)
        assert ours.dtype == FP8 and ours.shape == linear.weight.shape
        assert torch.equal(bits(ours), bits(fused_sd["m.weight"].t()))
        assert torch.equal(ours_scale, fused_sd["m.weight_scale"])
        assert not torch.equal(bits(ours), bits(linear.weight))  # the LoRA moved the weight


@GRANULARITIES
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_forward_matches_the_float_reference(rowwise, dtype):
    """(a) inside `applied()`: `scaled_mm(quantize(x), quantize(dequant(W) + (B * s) @ A)) + b`, the delta in bf16
    and the sum in float32, requantised with the layer's granularity (float32 LoRA factors cast to bf16 first)."""
    for lora_dtype in (torch.bfloat16, torch.float32):
        model, store, a, b, x = layer(rowwise, seed=2, lora_dtype=lora_dtype)
        x = x.to(dtype)
        linear = model[0]
        w = linear.weight.float() * (linear.fp8_weight_scale.reshape(-1, 1) if rowwise else linear.fp8_weight_scale)
        delta = torch.matmul(b.to(torch.bfloat16) * 0.6, a.to(torch.bfloat16))
        q, q_scale = quantize_reference(w + delta.float(), rowwise)
        xq, x_scale = quantize_reference(x.reshape(-1, x.shape[-1]).float(), rowwise)
        expected = (xq.float() * x_scale) @ (q.float() * q_scale).t() + linear.bias.to(dtype).float()
        expected = expected.to(dtype).reshape(*x.shape[:-1], -1)
        with store.applied(model, 0.6):
            out = model(x)
        diff = (out.float() - expected.float()).abs().max().item()
        print(f"{'row' if rowwise else 'tensor'} {dtype} LoRA {lora_dtype}: max |Δ| vs float reference {diff:.3g}")
        assert out.dtype == dtype and diff <= 1e-6


@GRANULARITIES
def test_weights_are_bit_identical_outside_applied(rowwise):
    """(b) the stored float8 weight, its scale and the bias hash the same before, during and after `applied()`;
    the layer computes exactly as before afterwards (also after an error inside the block)."""
    model, store, a, b, x = layer(rowwise, seed=3)
    linear, weight = model[0], model[0].weight
    before, plain = digest(linear), model(x)
    with store.applied(model, 0.8):
        for _ in range(3):
            model(x)
        assert digest(linear) == before and linear.fp8_fused_lora is not None
    assert digest(linear) == before and linear.weight is weight and linear.fp8_fused_lora is None
    assert torch.equal(model(x), plain)
    with pytest.raises(RuntimeError, match="inside"):
        with store.applied(model, 0.8):
            raise RuntimeError("inside")
    assert linear.fp8_fused_lora is None and torch.equal(model(x), plain) and digest(linear) == before


@GRANULARITIES
def test_the_lora_is_applied(rowwise):
    """(c) the output moves by `x @ ((B * s) @ A)^T` up to float8 rounding, and follows the float model with the
    LoRA (not the one without it)."""
    model, store, a, b, x = layer(rowwise, seed=4)
    linear = model[0]
    plain = model(x)
    with store.applied(model, 0.8):
        out = model(x)
    delta = torch.matmul(b.float() * 0.8, a.float())
    w = linear.weight.float() * (linear.fp8_weight_scale.reshape(-1, 1) if rowwise else linear.fp8_weight_scale)
    effect = x @ delta.t()
    float_with = x @ (w + delta).t() + linear.bias

    def rel(got, ref):
        return ((got - ref).norm() / ref.norm()).item()

    moved, following = rel(out - plain, effect), rel(out, float_with)
    print(f"{'row' if rowwise else 'tensor'}: |out-plain| max {(out - plain).abs().max():.3g}, rel. to the LoRA's "
          f"effect {moved:.3g}; rel. to the float model with the LoRA {following:.3g}")  # fmt: skip
    # e4m3 keeps 3 mantissa bits: at most 2^-4 relative per rounding, a few percent over a matmul.
    assert moved < 0.15 and following < 0.1
    assert rel(out, x @ w.t() + linear.bias) > 5 * following  # without the LoRA it is far off


# ------------------------------------------------------------------------------------------------ refusals
def test_garbage_is_refused_before_compute():
    """(e) non-finite LoRA factors are refused when the store is built; a non-finite or non-number scale, a nested
    `applied()` and `attach_fused_lora` on a layer that is not scaled-mm are refused before any forward, the layer
    left clean."""
    model, store, a, b, x = layer(rowwise=True, seed=5)
    linear, before = model[0], digest(model[0])
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="non-finite"):
            LTX2DistilledLoRA.from_state_dict(
                {"transformer.0.lora_A.weight": a * bad, "transformer.0.lora_B.weight": b}
            )
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            with store.applied(model, scale):
                model(x)
    with pytest.raises(ValueError, match="already carries"):
        with store.applied(model, 0.5):
            with store.applied(model, 0.5):
                model(x)
    assert calls == [] and linear.fp8_fused_lora is None and digest(linear) == before
    with pytest.raises(ValueError, match="enable_fp8_scaled_mm"):
        fp8.attach_fused_lora(torch.nn.Linear(4, 4), a, b, 1.0)


# ------------------------------------------------------------------------------------------------ pipeline
STRENGTH = 0.8
# Stated before measuring: frames in [0, 1]; float8 (3 mantissa bits) in every block linear of both stages.
FRAME_MEAN_TOL, FRAME_MAX_TOL = 0.02, 0.2


def test_pipeline_stage_2_with_fp8_scaled_mm_and_the_distilled_lora(tmp_path, monkeypatch):
    """(d) the tiny two-stage pipeline in bfloat16 with every block linear on (emulated) float8 scaled matmuls,
    row-wise: stage 2 fuses the distilled LoRA into every target at every forward and nowhere else, and the frames
    stay within float8 tolerance of the bfloat16 pipeline, far closer than the LoRA's own effect."""
    checkpoint = build_checkpoint(tmp_path / "ltx-2.3-tiny.safetensors", "2.3", seed=41)
    upsampler = build_upsampler(tmp_path / "upsampler.safetensors", seed=42)
    lora = build_lora(tmp_path / "distilled.safetensors", checkpoint, seed=43, dtype=torch.bfloat16)
    rate = 16000
    t = np.arange(int(rate * 0.6)) / rate
    sf.write(tmp_path / "a.wav", np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 3 * t)], 1) * 0.4, rate)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, STRENGTH), torch_dtype=torch.bfloat16
    )

    def frames(**kwargs):  # the ownership tests' call: 128 x 128, 9 frames, 2 steps, cfg + STG + modality + rescale
        return ownership_frames(pipe, {"audio": tmp_path / "a.wav"}, **kwargs).float()

    reference, without_lora = frames(), frames(distilled_lora_scale=0.0)
    targets = fp8._scaled_mm_targets(pipe.transformer)
    fp8._patch_scaled_mm(targets, rowwise=True)
    lora_targets = {id(_target_linear(pipe.transformer, n)) for n in pipe.distilled_lora.pairs()}
    assert lora_targets <= {id(m) for _, m in targets}  # every distilled-LoRA target runs scaled matmuls
    fused_calls, fuse = [], fp8.fused_lora_fp8_weight

    def counting(linear, a, b, scale):
        fused_calls.append((pipe._stage_index, id(linear), scale))
        return fuse(linear, a, b, scale)

    monkeypatch.setattr(fp8, "fused_lora_fp8_weight", counting)
    before = {name: digest(m) for name, m in targets}
    out = frames()
    assert {name: digest(m) for name, m in targets} == before

    assert fused_calls and {(stage, scale) for stage, _, scale in fused_calls} == {(1, STRENGTH)}
    per_layer = {i: sum(1 for _, j, _ in fused_calls if j == i) for i in lora_targets}
    assert len(set(per_layer.values())) == 1 and min(per_layer.values()) >= 1  # every target, every forward
    assert torch.isfinite(out).all()
    diff, lora_effect = (out - reference).abs(), (reference - without_lora).abs()
    print(
        f"fp8 scaled-mm (row) + fused distilled LoRA vs bf16: max |Δ| {diff.max():.4g}, mean |Δ| {diff.mean():.4g}; "
        f"the LoRA's effect in bf16: max {lora_effect.max():.4g}, mean {lora_effect.mean():.4g}; "
        f"{len(lora_targets)} targets fused {min(per_layer.values())} times each"
    )
    assert diff.mean() <= FRAME_MEAN_TOL and diff.max() <= FRAME_MAX_TOL
    assert diff.mean() < 0.5 * lora_effect.mean()


def test_save_pretrained_refuses_scaled_mm_weights(tmp_path):
    """The float8 scaled-mm weights are saved without their scales (a run-time setting, non-persistent buffers):
    a folder saved so would load as silently wrong weights. Refused before anything is written."""
    checkpoint = build_checkpoint(tmp_path / "ltx-2.3-tiny.safetensors", "2.3", seed=41)
    pipe = LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32)
    fp8._patch_scaled_mm(fp8._scaled_mm_targets(pipe.transformer), rowwise=True)
    target = tmp_path / "saved"
    with pytest.raises(ValueError, match="enable_fp8_scaled_mm"):
        pipe.save_pretrained(target)
    assert not target.exists()
