"""The memory tiers' decode estimate follows the decoder that will run (`pipelines/memory.py`): the channels-last
walk's (`walk_activation_bytes`) bounds the live bytes of the pipeline's walked decode, traced on the CPU for both
released decoder layouts (full width on the meta device, narrow with real weights); `measure_memory_sizes` counts it
exactly where the pipeline would walk (the placement's device, no `reference_arithmetic`, a VAE the walk supports, no
tiling) and only tiers that leave the VAE unhooked use it; at the defaults a 24 GiB budget then decodes whole."""

import copy
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from factories import RELEASED_VAE_BLOCKS, cached_checkpoint, vae_config
from live_bytes import LiveBytes
from test_memory_tiers import FRAMES, FULL, SIZE, _pipeline_decode, _traced_decode, gib, load, setup  # noqa: F401
from test_pipeline_parity import contexts

import ltx2_diffusers.pipelines.ltx2_base as ltx2_base
from ltx2_diffusers import LTX2AudioVideoPipeline, MultiModalGuidance
from ltx2_diffusers.loaders.single_file_video_vae import video_vae_config_from_original
from ltx2_diffusers.models.video_vae_decode import decode_channels_last
from ltx2_diffusers.pipelines import memory
from ltx2_diffusers.pipelines.ltx2_base import LTX2PipelineBase
from ltx2_diffusers.pipelines.memory import GIB, TIERS, MemoryTier, choose_memory_tier, estimated_peak


def _vae(version: str, full: bool):
    """The released decoder layout of `version` (`full`: at release width on the meta device in bf16; else
    narrow, on the CPU in fp32, as `vae_config` builds it)."""
    section = vae_config(version)
    if not full:
        torch.manual_seed(0)
        return AutoencoderKLLTX2Video(**video_vae_config_from_original(section)).eval()
    section["decoder_blocks"] = copy.deepcopy(RELEASED_VAE_BLOCKS["2.3" if version == "2.3" else "2.0"][1])
    section["decoder_base_channels"] = 128
    with torch.device("meta"):
        return AutoencoderKLLTX2Video(**video_vae_config_from_original(section)).to(torch.bfloat16).eval()


FULL_SHAPES = [(16, 32, 48), (5, 8, 8), (2, 16, 16), (1, 32, 48)]  # 121 x 1024 x 1536, ..., one frame
NARROW_SHAPES = [(3, 8, 8), (2, 4, 6), (1, 8, 8)]
CASES = [(v, True, s) for v in ("2.3", "2") for s in FULL_SHAPES] + [
    (v, False, s) for v in ("2.3", "2") for s in NARROW_SHAPES
]


@pytest.mark.parametrize("version, full, shape", CASES)
def test_walk_estimate_bounds_the_traced_walk(version, full, shape, monkeypatch):
    vae = _vae(version, full)
    device = "meta" if full else "cpu"
    latents = torch.randn(1, 128, *shape, dtype=vae.dtype).to(device)
    walked = []

    def walk(*args):  # the walk alone, traced
        with LiveBytes() as trace:
            walked.append((decode_channels_last(*args), trace))
        return walked[-1][0]

    monkeypatch.setattr(ltx2_base, "decode_channels_last", walk)
    traced = _traced_decode(_pipeline_decode(vae, walk_devices=(device,)), latents)
    assert len(walked) == 1  # the pipeline's decode went through the walk
    assert traced <= memory.decode_bytes(vae, *shape, tiled=False, walk=True)  # with the rescaling to [0, 1]
    peak, output = memory.walk_activation_bytes(vae.config, *shape, vae.dtype.itemsize)
    ((video, trace),) = walked
    assert output == video.numel()
    assert trace.peak <= peak <= 1.1 * trace.peak, (trace.peak / GIB, peak / GIB)
    if full and shape[0] > 1:  # the largest stage's tensors set the peak, 4.02 (LTX-2.3) / 5.06 (LTX-2) traced
        assert peak < memory.decoder_activation_bytes(vae.config, *shape, 2)[0]


# ------------------------------------------------------------------------------------------------ tier choice
@pytest.fixture(scope="module")
def pipe():
    files = dict(
        checkpoint=cached_checkpoint("checkpoint", "2.3", seed=4), upsampler=cached_checkpoint("upsampler", seed=5)
    )
    files["lora"] = cached_checkpoint("lora", checkpoint_path=files["checkpoint"], seed=6, dtype=torch.float32)
    return load(files)


def _defaults(pipe, vae=None, device="cuda", ltx_tiling=False, **kwargs):
    """`MemorySizes.decode` / `decode_walk` measured at 121 x 1024 x 1536 with LTX-2.3's full-width decoder as the
    pipeline's VAE, on the other sizes of `FULL` (test_memory_tiers: the transformer and the rest by hand)."""
    pipe.register_modules(vae=_vae("2.3", True) if vae is None else vae)
    pipe._vae_tiling = None
    if ltx_tiling:
        pipe.enable_vae_tiling()
    try:
        sizes = memory.measure_memory_sizes(pipe, height=1024, width=1536, num_frames=121, device=device, **kwargs)
    finally:
        pipe._vae_tiling = None
    return replace(FULL, decode=sizes.decode, decode_walk=sizes.decode_walk)


def test_at_the_defaults_24_gib_decodes_whole_through_the_walk(pipe):
    sizes = _defaults(pipe)
    assert sizes.decode_walk == memory.decode_bytes(pipe.vae, 16, 32, 48, tiled=False, walk=True)
    assert sizes.decode == memory.decode_bytes(pipe.vae, 16, 32, 48, tiled=False)
    assert sizes.decode_walk / GIB == pytest.approx(12.12, abs=0.01)  # 4.27 x 2.84 GiB (128 x 121 x 256 x 384)
    assert sizes.decode / GIB == pytest.approx(19.85, abs=0.01)  # 7 x 2.84 GiB
    # stream, whole decode: 0.8 + 2.18 + max(8.52, 2.5, 12.12) = 15.10 + 0.8333 K; (21.6 - 15.10) / 0.8333 = 7.8
    tier = choose_memory_tier(gib(24), sizes)
    assert (tier.offload, tier.resident_blocks, tier.tiled_decode) == ("stream", 7, False)
    # 16 GiB: 14.4 < 15.10, tiled as before: (14.4 - 11.50) / 0.8333 = 3.5
    tier = choose_memory_tier(gib(16), sizes)
    assert (tier.offload, tier.resident_blocks, tier.tiled_decode) == ("stream", 3, True)
    # Resident leaves the VAE unhooked too: 40 + 4.48 + 0.2 + 6.19 + max(6.595, 12.12) = 62.99 (69.47 by hand).
    assert estimated_peak(TIERS[0], sizes) / GIB == pytest.approx(62.99, abs=0.01)
    # A tier that hooks the VAE decodes through vae.decode: its whole decode keeps that estimate.
    hooked = MemoryTier("model", "model", tiled_decode=False)
    assert estimated_peak(hooked, sizes) == estimated_peak(hooked, replace(sizes, decode_walk=None))
    assert estimated_peak(hooked, sizes) / GIB == pytest.approx(6.19 + 0.2 + 46.595, abs=0.01)


@pytest.mark.parametrize("case", ["reference_arithmetic", "forward hook", "cpu", "ltx tiling", "diffusers tiling"])
def test_without_the_walk_24_gib_decodes_in_tiles(pipe, case):
    vae = _vae("2.3", True)
    kwargs = {}
    if case == "reference_arithmetic":
        kwargs["reference_arithmetic"] = True
    elif case == "forward hook":
        vae.decoder.up_blocks[0].register_forward_hook(lambda *a: None)
    elif case == "cpu":
        kwargs["device"] = "cpu"
    elif case == "diffusers tiling":
        vae.enable_tiling()
    sizes = _defaults(pipe, vae, ltx_tiling=case == "ltx tiling", **kwargs)
    assert sizes.decode_walk is None
    tier = choose_memory_tier(gib(24), sizes)
    if case.endswith("tiling"):  # the user's tiles are the tiers' "whole" decode: 5.32 GiB (the rescaling)
        assert sizes.decode / GIB == pytest.approx(5.32, abs=0.01)
        assert (tier.offload, tier.resident_blocks, tier.tiled_decode) == ("stream", 12, False)
        return
    # stream, whole decode: 2.98 + 19.85 > 21.6; tiled: (21.6 - 11.50) / 0.8333 = 12.1
    assert (tier.offload, tier.resident_blocks, tier.tiled_decode) == ("stream", 12, True)


def test_the_predicate_is_the_pipelines(pipe, monkeypatch):
    """`measure_memory_sizes` asks `LTX2PipelineBase._channels_last_decode_on` (the decode's own predicate, under
    no_grad as a call decodes): a device class the pipeline walks on is one the estimate walks on."""
    assert LTX2PipelineBase.CHANNELS_LAST_DECODE_DEVICES == ("cuda",)
    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))
    assert _defaults(pipe, device="cpu").decode_walk is not None
    assert _defaults(pipe, device="cuda").decode_walk is None
    assert memory.measure_memory_sizes(pipe, height=1024, width=1536, num_frames=121).decode_walk is None


def test_enable_memory_budget_passes_the_device_and_reference_arithmetic(pipe, monkeypatch):
    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))
    seen = []

    def choose(budget, sizes, **kwargs):
        seen.append(sizes.decode_walk)
        raise ValueError("stop before placing")

    monkeypatch.setattr(memory, "choose_memory_tier", choose)
    pipe.register_modules(vae=_vae("2.3", False))
    pipe._vae_tiling = None
    for exact in (False, True):
        with pytest.raises(ValueError, match="stop before placing"):
            pipe.enable_memory_budget(24, "cpu", height=128, width=128, num_frames=9, reference_arithmetic=exact)
    assert seen[0] == memory.decode_bytes(pipe.vae, 2, 4, 4, tiled=False, walk=True) and seen[1] is None
    with pytest.raises(TypeError, match="reference_arithmetic must be a bool"):
        pipe.enable_memory_budget(24, "cpu", height=128, width=128, num_frames=9, reference_arithmetic="yes")
    assert memory.has_offload_hooks(pipe) == []


# ------------------------------------------------------------------------------------------------ calls
def _call(pipe, audio, **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(
        audio=str(audio), prompt_contexts=contexts(0, "2.3"), negative_prompt_contexts=contexts(1, "2.3"),
        height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=2,
        video_guidance=MultiModalGuidance(stg_blocks=[1]), generator=torch.Generator().manual_seed(0), **kwargs,
    )  # fmt: skip


def _walk_spy(monkeypatch):
    walked = []
    real = ltx2_base.decode_channels_last

    def spy(*args):
        walked.append(1)
        return real(*args)

    monkeypatch.setattr(ltx2_base, "decode_channels_last", spy)
    return walked


def test_reference_arithmetic_calls_under_a_walk_budget_are_refused_before_compute(setup, monkeypatch):  # noqa: F811
    """A budget that counted the walk's whole decode refuses `reference_arithmetic=True` calls that decode video
    (they decode through `vae.decode`, whole or per tile), before any model runs; the default calls walk as
    budgeted; a VAE the user has since hooked no longer walks, and nothing is refused."""
    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))  # the walk on this device
    walked = _walk_spy(monkeypatch)
    pipe = load(setup)
    tier = pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert (tier.offload, tier.tiled_decode) == ("none", False) and pipe._walk_decode_budget is not None
    forwards = []
    pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    message = r"reference_arithmetic=True decodes through vae.decode.*enable_memory_budget\(1000\)"
    with pytest.raises(ValueError, match=message):
        _call(pipe, setup["audio"], reference_arithmetic=True)
    pipe.enable_vae_tiling()  # tiles through vae.decode: not what the budget counted either
    with pytest.raises(ValueError, match=message):
        _call(pipe, setup["audio"], reference_arithmetic=True)
    pipe.disable_vae_tiling()
    with pytest.raises(TypeError, match="reference_arithmetic must be a bool"):
        _call(pipe, setup["audio"], reference_arithmetic="yes")
    assert forwards == [] and walked == []  # refused before the transformer ran

    _call(pipe, setup["audio"], reference_arithmetic=True, output_type="latent")  # no decode: nothing to refuse
    assert forwards and walked == []
    frames = _call(pipe, setup["audio"]).frames
    assert walked == [1]  # walked, as budgeted
    assert (frames - setup["expected"]).abs().max().item() <= 1e-5

    hook = pipe.vae.decoder.register_forward_hook(lambda *a: None)  # the user's: the VAE no longer walks
    frames = _call(pipe, setup["audio"], reference_arithmetic=True).frames
    assert walked == [1] and torch.isfinite(frames).all()
    hook.remove()


def test_a_budget_measured_for_reference_arithmetic_covers_its_calls(setup, monkeypatch):  # noqa: F811
    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))
    pipe = load(setup)
    pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES, reference_arithmetic=True)
    assert pipe._walk_decode_budget is None
    frames = _call(pipe, setup["audio"], reference_arithmetic=True).frames
    assert (frames - setup["expected"]).abs().max().item() <= 1e-5


def test_a_tier_applied_directly_clears_the_walk_budget(setup, monkeypatch):  # noqa: F811
    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))
    pipe = load(setup)
    tier = pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert pipe._walk_decode_budget is not None
    pipe.enable_memory_tier(tier, "cpu")  # the user's own tier: no decode estimate behind it
    assert pipe._walk_decode_budget is None
    pipe.check_decode_budget(True, "pt")  # nothing to refuse


def test_the_audio_video_pipeline_refuses_too(setup, monkeypatch):  # noqa: F811
    monkeypatch.setattr(LTX2PipelineBase, "CHANNELS_LAST_DECODE_DEVICES", ("cpu",))
    pipe = LTX2AudioVideoPipeline.from_single_file(
        setup["checkpoint"], spatial_upsampler_path=setup["upsampler"], distilled_lora=(setup["lora"], 0.6),
        torch_dtype=torch.float32,
    )  # fmt: skip
    pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    forwards = []
    pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    with pytest.raises(ValueError, match="reference_arithmetic=True decodes through vae.decode"):
        pipe(
            prompt_contexts=contexts(0, "2.3"), negative_prompt_contexts=contexts(1, "2.3"), height=SIZE, width=SIZE,
            num_frames=FRAMES, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt",
            video_guidance=MultiModalGuidance(stg_blocks=[1]), audio_guidance=MultiModalGuidance(stg_blocks=[1]),
            reference_arithmetic=True,
        )  # fmt: skip
    assert forwards == []
