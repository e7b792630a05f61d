"""The stage-2 distilled LoRA is pipeline-owned: the user's PEFT adapter operations behave as on any diffusers
pipeline, and stage 2 still applies the distilled LoRA. Every step runs a full (tiny) call and compares with
ltx-pipelines' A2VidPipelineTwoStage given the same user LoRA (its `loras`, both stages) and distilled LoRA."""

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import build_checkpoint, build_lora, build_upsampler
from ltx_core.components.guiders import MultiModalGuiderParams
from reference_pipeline import run_reference_a2vid
from test_pipeline_parity import contexts

import ltx2_diffusers.pipelines.ltx2_base as ltx2_base
from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance


SIZE, FRAMES, FPS, STEPS, SEED = 128, 9, 24.0, 2, 3
DISTILLED, USER_WEIGHT = 0.7, 0.6
GUIDANCE = MultiModalGuidance(cfg_scale=2.0, stg_scale=1.0, rescale_scale=0.5, modality_scale=2.0, stg_blocks=[1])
TOL = 5e-6  # frames in [0, 1]; PEFT's unfused user LoRA vs ltx-core's fused weights (fp32 rounding)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ownership")
    checkpoint = build_checkpoint(root / "ltx-2.3-tiny.safetensors", "2.3", seed=31)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=32)
    distilled = build_lora(root / "distilled.safetensors", checkpoint, seed=33, dtype=torch.float32)
    user = build_lora(root / "user.safetensors", checkpoint, seed=34, dtype=torch.float32, scale=1.0)
    rate = 16000
    t = np.arange(int(rate * 0.6)) / rate
    sf.write(root / "a.wav", np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 3 * t)], 1) * 0.4, rate)
    files = dict(checkpoint=checkpoint, upsampler=upsampler, distilled=distilled, user=user, audio=root / "a.wav")
    files["expected"] = {
        name: reference(files, loras) for name, loras in (("base", ()), ("user", ((user, USER_WEIGHT),)))
    }
    assert (files["expected"]["base"] - files["expected"]["user"]).abs().max() > 100 * TOL  # the user LoRA matters
    return files


def reference(files, loras):
    frames, *_ = run_reference_a2vid(
        checkpoint=files["checkpoint"],
        upsampler=files["upsampler"],
        distilled_lora=files["distilled"],
        distilled_strength=DISTILLED,
        audio_path=files["audio"],
        positive=contexts(0, "2.3"),
        negative=contexts(1, "2.3"),
        seed=SEED,
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        guider_params=MultiModalGuiderParams(
            cfg_scale=2.0, stg_scale=1.0, rescale_scale=0.5, modality_scale=2.0, stg_blocks=[1]
        ),
        loras=loras,
    )
    return frames.permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W)


def frames(pipe, files, **kwargs):
    out = pipe(
        audio=files["audio"],
        prompt_contexts=contexts(0, "2.3"),
        negative_prompt_contexts=contexts(1, "2.3"),
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        video_guidance=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        **{"output_type": "pt", **kwargs},
    )
    return out.frames


def check(pipe, files, expected, what):
    diff = (frames(pipe, files) - files["expected"][expected]).abs().max().item()
    print(f"{what}: max |Δ| {diff:.3g} vs reference ({expected})")
    assert diff <= TOL, f"{what}: max |Δ| {diff} against the reference with {expected!r} LoRAs"
    assert "distilled" not in (getattr(pipe.transformer, "peft_config", None) or {}), what


@pytest.fixture()
def pipe(files):
    return LTX2AudioToVideoPipeline.from_single_file(
        files["checkpoint"],
        spatial_upsampler_path=files["upsampler"],
        distilled_lora=(files["distilled"], DISTILLED),
        torch_dtype=torch.float32,
    )


def test_user_adapter_operations_between_calls(pipe, files):
    check(pipe, files, "base", "no user LoRA")
    pipe.load_lora_weights(files["user"], adapter_name="user")
    pipe.set_adapters("user", USER_WEIGHT)
    assert pipe.get_active_adapters() == ["user"]
    check(pipe, files, "user", "set_adapters")
    pipe.fuse_lora()
    check(pipe, files, "user", "fuse_lora")
    pipe.unfuse_lora()
    check(pipe, files, "user", "unfuse_lora")
    pipe.disable_lora()
    check(pipe, files, "base", "disable_lora")
    pipe.enable_lora()
    check(pipe, files, "user", "enable_lora")
    pipe.delete_adapters("user")
    assert not getattr(pipe.transformer, "peft_config", None)
    check(pipe, files, "base", "delete_adapters")
    pipe.load_lora_weights(files["user"], adapter_name="user")
    pipe.set_adapters("user", USER_WEIGHT)
    pipe.unload_lora_weights()
    check(pipe, files, "base", "unload_lora_weights")


def test_fuse_then_unload_keeps_the_fused_user_lora(pipe, files):
    pipe.load_lora_weights(files["user"], adapter_name="user")
    pipe.set_adapters("user", USER_WEIGHT)
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # diffusers' way to bake a LoRA in: the fused weights stay
    check(pipe, files, "user", "fuse_lora + unload_lora_weights")


def test_the_distilled_lora_is_not_an_adapter(pipe, files):
    assert pipe.distilled_lora is not None
    with pytest.raises(ValueError):
        pipe.set_adapters("distilled")
    # only stage 2 sees it, and only during the call: the weights read back unchanged afterwards
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    frames(pipe, files, output_type="latent")
    after = pipe.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()


def test_distilled_lora_scale_zero_is_no_lora(pipe, files):
    """`distilled_lora_scale=0` against the same pipeline with the distilled LoRA's B zeroed."""
    zero = frames(pipe, files, distilled_lora_scale=0.0)
    default = frames(pipe, files)
    for name in list(pipe.distilled_lora.pairs()):
        i = pipe.distilled_lora._targets.index(name)
        getattr(pipe.distilled_lora, f"lora_B_{i}").zero_()
    assert torch.equal(frames(pipe, files), zero)
    assert (default - zero).abs().max() > 100 * TOL


def test_bfloat16_reference_arithmetic_with_a_user_lora_is_bit_exact(tmp_path):
    """bf16 with bf16 LoRAs as released: stage 1 fuses the user LoRA, stage 2 the user and distilled LoRAs summed,
    exactly as ltx-core fuses them (`reference_arithmetic=True`)."""
    checkpoint = build_checkpoint(tmp_path / "ckpt.safetensors", "2.3", seed=51)
    upsampler = build_upsampler(tmp_path / "ups.safetensors", seed=52)
    distilled = build_lora(tmp_path / "distilled.safetensors", checkpoint, seed=53)
    user = build_lora(tmp_path / "user.safetensors", checkpoint, seed=54, scale=1.0)
    rate = 32000
    t = np.arange(int(rate * 0.5)) / rate
    sf.write(tmp_path / "a.wav", np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 7 * t)], 1) * 0.5, rate)
    files = dict(checkpoint=checkpoint, upsampler=upsampler, distilled=distilled, audio=tmp_path / "a.wav")
    expected, *_ = run_reference_a2vid(
        checkpoint=checkpoint,
        upsampler=upsampler,
        distilled_lora=distilled,
        distilled_strength=DISTILLED,
        audio_path=files["audio"],
        positive=contexts(0, "2.3"),
        negative=contexts(1, "2.3"),
        seed=SEED,
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        guider_params=MultiModalGuiderParams(
            cfg_scale=2.0, stg_scale=1.0, rescale_scale=0.5, modality_scale=2.0, stg_blocks=[1]
        ),
        loras=((user, USER_WEIGHT),),
        dtype=torch.bfloat16,
    )
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(distilled, DISTILLED), torch_dtype=torch.bfloat16
    )
    pipe.load_lora_weights(user, adapter_name="user")
    pipe.set_adapters("user", USER_WEIGHT)
    out = pipe(
        audio=files["audio"],
        prompt_contexts=tuple(c.to(torch.bfloat16) for c in contexts(0, "2.3")),
        negative_prompt_contexts=tuple(c.to(torch.bfloat16) for c in contexts(1, "2.3")),
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        frame_rate=FPS,
        num_inference_steps=STEPS,
        video_guidance=GUIDANCE,
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
        reference_arithmetic=True,
    ).frames.permute(0, 2, 1, 3, 4)
    assert torch.equal(out.float(), expected.float())


def test_store_applies_ltx_core_arithmetic_and_restores_on_error():
    import torch.nn.functional as F

    from ltx2_diffusers import LTX2DistilledLoRA
    from ltx2_diffusers.loaders.fp8 import enable_fp8_upcast

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 4))
    a0, b0 = torch.randn(2, 8, generator=g), torch.randn(6, 2, generator=g)
    a1, b1 = torch.randn(2, 6, generator=g), torch.randn(4, 2, generator=g)
    store = LTX2DistilledLoRA.from_state_dict({
        "transformer.0.lora_A.weight": a0, "transformer.0.lora_B.weight": b0,
        "transformer.1.lora_A.weight": a1, "transformer.1.lora_B.weight": b1,
    })  # fmt: skip
    x = torch.randn(3, 8, generator=g)
    w0, w1 = model[0].weight, model[1].weight
    hidden = F.linear(x, torch.matmul(b0 * 0.7, a0) + w0, model[0].bias)
    expected = F.linear(hidden, torch.matmul(b1 * 0.7, a1) + w1, model[1].bias)
    plain = model(x)
    with store.applied(model, 0.7):
        assert torch.equal(model(x), expected)
    assert type(model[0]) is torch.nn.Linear and not hasattr(model[0], "_ltx2_distilled_delta")
    assert torch.equal(model(x), plain) and model[0].weight is w0
    with pytest.raises(RuntimeError, match="inside"):
        with store.applied(model, 0.7):
            raise RuntimeError("inside")
    assert type(model[1]) is torch.nn.Linear and torch.equal(model(x), plain)

    # float8 weights (upcast at compute): the LoRA output is added to the upcast linear's output
    fp8 = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 4))
    fp8[0].weight.data = fp8[0].weight.data.to(torch.float8_e4m3fn)
    enable_fp8_upcast(fp8)
    base = fp8[0](x)
    with store.applied(fp8, 0.5):
        out = fp8[0](x)
    assert torch.allclose(out, base + F.linear(F.linear(x, a0), b0) * 0.5, atol=1e-5)
    assert torch.equal(fp8[0](x), base)
    with pytest.raises(ValueError, match="non-finite"):
        LTX2DistilledLoRA.from_state_dict(
            {"transformer.0.lora_A.weight": a0 * float("nan"), "transformer.0.lora_B.weight": b0}
        )


def test_default_stage_2_uses_ltx_cores_fused_weights(pipe, files, monkeypatch):
    """Without batching the guidance passes, the default path (no reference_arithmetic) is bit-exact in fp32:
    the stage-2 weights are `W + (B * s) @ A` exactly as ltx-core fuses them (PEFT's unfused path was not). The
    timesteps stay per token here, as the reference's (the default's one AdaLN row per item for a uniform mask
    rounds differently; it is compared with the reference in tests/test_denoise_step.py)."""
    monkeypatch.setattr(ltx2_base, "has_uniform_timesteps", lambda state: False)
    assert torch.equal(frames(pipe, files, guidance_batch_size=1), files["expected"]["base"])
