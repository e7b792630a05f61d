"""Memory tiers (`pipelines/memory.py`, `pipe.enable_memory_budget`): the tier table for full-size-like sizes, the
activation estimates against the live-tensor peaks traced on the tiny models (CPU) and on full-size LTX-2.3 modules
built on the meta device, the same frames in every tier, garbage budgets and the user's offload hooks refused, and
the distilled LoRA's factors following each weight's device."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from factories import cached_checkpoint, vae_config
from live_bytes import LiveBytes
from test_pipeline_parity import contexts
from tiny_a2v import single_file_pipe, write_tone
from torch.overrides import TorchFunctionMode

import ltx2_diffusers.models.attention as attention
from ltx2_diffusers import MultiModalGuidance
from ltx2_diffusers.loaders.distilled_lora import LTX2DistilledLoRA
from ltx2_diffusers.loaders.single_file_video_vae import video_vae_config_from_original
from ltx2_diffusers.models.rope import audio_coords, video_coords
from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer
from ltx2_diffusers.models.video_vae_tiling import VideoTilingConfig
from ltx2_diffusers.pipelines import memory
from ltx2_diffusers.pipelines.ltx2_base import LTX2PipelineBase
from ltx2_diffusers.pipelines.memory import GIB, TIERS, MemorySizes, choose_memory_tier, estimated_peak


def tier(offload, lora="device", tiled=True):
    """The `TIERS` entry by placement."""
    return next(t for t in TIERS if (t.offload, t.lora_location, t.tiled_decode) == (offload, lora, tiled))


STREAM_WHOLE, STREAM_TILED = tier("stream", "host", False), tier("stream", "host", True)
# Streaming tiers with blocks actually streamed (the templates keep all blocks resident when applied as they are).
STREAMING = [
    replace(STREAM_WHOLE, resident_blocks=0),
    replace(STREAM_TILED, resident_blocks=1),
    replace(STREAM_WHOLE, resident_blocks=1, text_offload="layers"),
]


TOL = 1e-5
SIZE, FRAMES = 128, 9


def gib(x: float) -> int:
    return int(x * GIB)


# Full-size LTX-2.3 in bf16 as measured on an H200 (issue 12) and from the released architecture: transformer 40 GiB
# (48 blocks; a leaf of 0.28 GiB is the 9 x 4096 modulation linear), rank-384 distilled LoRA 6.19 GiB (its largest
# W + delta pair 2 x 4096 x 16384 x 2 B plus the factors: 0.265 GiB), stage activations from the formula at
# 4 x 6,144 and 24,576 tokens (6.49 / 6.33 GiB), the whole decode as measured (18.6 GiB), the tiled one 5.32 GiB.
FULL = MemorySizes(
    transformer=gib(40),
    transformer_block=gib(40 / 48),
    transformer_outside_blocks=gib(0.8),
    transformer_leaf=gib(0.28),
    transformer_held_by_parents=gib(0.01),
    transformer_blocks=48,
    others={"connectors": gib(2.5), "audio_vae": gib(0.2), "latent_upsampler": gib(1.0), "vae": gib(0.78)},
    others_leaf=gib(0.14),
    others_held_by_parents=gib(0.01),
    unchained=gib(0.2),
    lora=gib(6.19),
    lora_transient=gib(0.265),
    stage_1=gib(6.49),
    stage_2=gib(6.33),
    decode=gib(18.6),
    decode_tiled=gib(5.32),
)
# Peaks by hand (GiB; stages = max(6.49, 6.33 + 0.265) = 6.595; budget needed = peak / 0.9):
#   resident           40 + 4.48 + 0.2 + 6.19 + max(6.595, 18.6)                 = 69.47 -> 77.19
#   stream, K resident 0.8 + K x 0.8333 + (0.2 + 1.0 + 0.78 + 0.2 kept) + max(2 x (0.8333 + 6.19 / 48) + 6.595,
#                      2.5 text, decode): whole decode 21.58 + 0.8333 K, tiled 11.50 + 0.8333 K
#   model, LoRA dev    6.19 + 0.2 + max(2.5, 40 + max(6.595, 1.0), 0.78 + 5.32)  = 52.99 -> 58.87
#   model, LoRA host   0.2 + 46.595                                              = 46.80 -> 51.99
#   group-block, dev   6.19 + max(0.8 + 2 x 0.8333 + 6.595, 0.01 + 0.28 + 5.32)  = 15.25 -> 16.95
#   group-block, host  9.06                                                      ->  10.07
#   group-leaf, dev    6.19 + max(0.01 + 0.56 + 6.595, 5.61)                     = 13.36 -> 14.84
#   group-leaf, host   7.165                                                     ->   7.97
# Streaming: K = floor((0.9 budget - base) / 0.8333), at most 48; whole decode first.
FULL_TABLE = [
    (139, "resident", "device", None, False),  # an H200's free memory
    (80, "resident", "device", None, False),
    (70, "stream", "host", 48, False),  # (63 - 21.58) / 0.8333 = 49.7 -> all 48
    (55, "stream", "host", 33, False),  # 27.92 / 0.8333 = 33.5
    (48, "stream", "host", 25, False),  # 21.62 / 0.8333 = 25.9
    (40, "stream", "host", 17, False),  # 14.42 / 0.8333 = 17.3
    (25, "stream", "host", 1, False),  # 0.92 / 0.8333 = 1.1
    (22, "stream", "host", 9, True),  # whole decode does not fit: (19.8 - 11.50) / 0.8333 = 9.96
    (16, "stream", "host", 3, True),  # 2.90 / 0.8333 = 3.5
    (10, "group-leaf", "host", None, True),  # 9.0 < 11.50 (stream), 9.06 (group-block)
    (7.97, "group-leaf", "host", None, True),
]


@pytest.mark.parametrize("budget, name, lora, resident, tiled", FULL_TABLE)
def test_tier_table_full_size(budget, name, lora, resident, tiled):
    tier = choose_memory_tier(gib(budget), FULL)
    assert (tier.name, tier.lora_location, tier.resident_blocks, tier.tiled_decode) == (name, lora, resident, tiled)


# With Gemma 3 as the text encoder (23 GiB in bf16; its largest leaf, the 262,144 x 3,840 embedding, 1.875 GiB):
#   stream, text hooks   0.8 + 2.18 + max(8.52, 23, decode) = 25.98 + 0.8333 K (whole or tiled decode)
#   stream, text layers  text = 0.01 + 2 x 1.875 = 3.76: whole 21.58 + 0.8333 K, tiled 11.50 + 0.8333 K
FULL_GEMMA = replace(FULL, others={**FULL.others, "text_encoder": gib(23)}, others_leaf=gib(1.875))
GEMMA_TABLE = [
    (40, 12, False, "hook"),  # (36 - 25.98) / 0.8333 = 12.02
    (30, 1, False, "hook"),  # 1.02 / 0.8333 = 1.2
    (25, 1, False, "layers"),  # hooks: 22.5 < 25.98; layers: 0.92 / 0.8333 = 1.1 (before: group-block)
    (16, 3, True, "layers"),  # 2.90 / 0.8333 = 3.5
]


@pytest.mark.parametrize("budget, resident, tiled, text", GEMMA_TABLE)
def test_tier_table_with_a_text_encoder(budget, resident, tiled, text):
    tier = choose_memory_tier(gib(budget), FULL_GEMMA)
    assert (tier.offload, tier.resident_blocks, tier.tiled_decode, tier.text_offload) == (
        "stream",
        resident,
        tiled,
        text,
    )


def test_tier_peaks_full_size():
    peaks = [estimated_peak(tier, FULL) / GIB for tier in TIERS]
    assert peaks == pytest.approx(
        [69.47, 21.58, 11.50, 21.58, 11.50, 52.99, 46.80, 15.25, 9.06, 13.36, 7.17], abs=0.01
    )
    assert {tier.offload for tier in TIERS} == {"none", "stream", "model", "group-block", "group-leaf"}
    stream = choose_memory_tier(gib(40), FULL)
    assert estimated_peak(stream, FULL) / GIB == pytest.approx(21.58 + 17 * 40 / 48, abs=0.01)
    assert estimated_peak(stream, FULL) <= 0.9 * gib(40)


def test_no_tier_fits_names_the_argument_and_the_smallest_budget():
    with pytest.raises(ValueError, match=r"memory_budget_gib=7\.9 fits no memory tier.*group-leaf.*>= 7\.97"):
        choose_memory_tier(gib(7.9), FULL)


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("24", TypeError, "memory_budget_gib must be a real number"),
        (None, TypeError, "memory_budget_gib must be a real number"),
        (True, TypeError, "memory_budget_gib must be a real number"),
        (float("nan"), ValueError, "memory_budget_gib must be finite"),
        (float("inf"), ValueError, "memory_budget_gib must be finite"),
        (0, ValueError, "memory_budget_gib must be > 0"),
        (-3.0, ValueError, "memory_budget_gib must be > 0"),
    ],
)
def test_garbage_budget_refused_before_anything_changes(setup, value, error, match):
    pipe = setup["pipe"]
    with pytest.raises(error, match=match):
        pipe.enable_memory_budget(value, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert memory.has_offload_hooks(pipe) == [] and not hasattr(pipe, "_memory_tier")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"height": "1024"}, TypeError, "height must be a positive int"),
        ({"width": 1536.0}, TypeError, "width must be a positive int"),
        ({"num_frames": 0}, ValueError, "num_frames must be >= 1"),
        ({"guidance_batch_size": 0}, ValueError, "guidance_batch_size must be >= 1"),
        ({"frame_rate": float("nan")}, ValueError, "frame_rate must be finite"),
    ],
)
def test_garbage_call_size_refused(setup, kwargs, error, match):
    pipe = setup["pipe"]
    with pytest.raises(error, match=match):
        pipe.enable_memory_budget(24, "cpu", **{"height": SIZE, "width": SIZE, "num_frames": FRAMES, **kwargs})
    assert memory.has_offload_hooks(pipe) == [] and not hasattr(pipe, "_memory_tier")


def test_memory_sizes_refuse_non_byte_counts():
    with pytest.raises(ValueError, match="MemorySizes.stage_1"):
        MemorySizes(1, 1, 1, 1, 1, stage_1=-5)
    with pytest.raises(ValueError, match="MemorySizes.others"):
        MemorySizes(1, 1, 1, 1, 1, others={"vae": 1.5})
    with pytest.raises(ValueError, match="offload must be one of"):
        memory.MemoryTier("x", "disk", tiled_decode=True)


# ------------------------------------------------------------------------------------------------ tiny pipeline
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    files = dict(
        checkpoint=cached_checkpoint("checkpoint", "2.3", seed=4),
        upsampler=cached_checkpoint("upsampler", seed=5),
    )
    files["lora"] = cached_checkpoint("lora", checkpoint_path=files["checkpoint"], seed=6, dtype=torch.float32)
    write_tone(root / "a.wav")
    files["audio"] = root / "a.wav"
    files["pipe"] = load(files)
    files["expected"] = call(files["pipe"], files["audio"])
    return files


def load(files):
    return single_file_pipe(files["checkpoint"], files["upsampler"], files["lora"], 0.6)


def call(pipe, audio):
    return pipe(
        audio=str(audio),
        prompt_contexts=contexts(0, "2.3"),
        negative_prompt_contexts=contexts(1, "2.3"),
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=2,
        video_guidance=MultiModalGuidance(stg_blocks=[1]),
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).frames


def tiny_sizes(pipe):
    return memory.measure_memory_sizes(pipe, height=SIZE, width=SIZE, num_frames=FRAMES)


def test_sizes_measured_from_the_components(setup):
    pipe = setup["pipe"]
    sizes = tiny_sizes(pipe)
    layers = pipe.transformer.config.num_layers
    assert sizes.transformer == sizes.transformer_outside_blocks + layers * sizes.transformer_block
    assert sizes.lora == sum(a.nbytes + b.nbytes for a, b in pipe.distilled_lora.pairs().values())
    chain = pipe.model_cpu_offload_seq.split("->")
    present = {n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)} - {
        "distilled_lora",
        "transformer",
    }
    assert set(sizes.others) == present & set(chain) and sizes.unchained == memory.module_bytes(pipe.vocoder)
    assert sizes.transformer_leaf < sizes.transformer_block < sizes.transformer
    # Nothing moved or hooked by measuring.
    assert memory.has_offload_hooks(pipe) == []


def _transformer_inputs(config, batch, frames, height, width, audio_tokens, text_tokens, device="cpu", dtype=None):
    tokens = frames * height * width
    g = dict(device=device, dtype=dtype)
    return dict(
        hidden_states=torch.randn(batch, tokens, config.in_channels, **g),
        audio_hidden_states=torch.randn(batch, audio_tokens, config.audio_in_channels, **g),
        encoder_hidden_states=torch.randn(batch, text_tokens, config.cross_attention_dim, **g),
        audio_encoder_hidden_states=torch.randn(batch, text_tokens, config.audio_cross_attention_dim, **g),
        timestep=torch.rand(batch, tokens, device=device) * 1000,
        audio_timestep=torch.rand(batch, audio_tokens, device=device) * 1000,
        sigma=torch.rand(batch, device=device) * 1000,
        audio_sigma=torch.rand(batch, device=device) * 1000,
        video_coords=video_coords(batch, frames, height, width, fps=24.0, device=device),
        audio_coords=audio_coords(batch, audio_tokens, device=device),
        use_cross_timestep=True,
        return_dict=False,
    )


def _traced_forward(model, inputs, monkeypatch):
    """Live-tensor peak of one forward, the attention kernel replaced by its output (memory-efficient attention
    keeps no T x T scores; the CPU math kernel would)."""
    monkeypatch.setattr(attention, "dispatch_attention_fn", lambda q, k, v, *args, **kwargs: torch.empty_like(q))
    with torch.no_grad(), LiveBytes() as trace:
        model(**inputs)
    return trace.peak


@pytest.mark.parametrize("batch, shape, audio_tokens", [(4, (3, 8, 8), 10), (1, (5, 8, 12), 20)])
def test_transformer_estimate_bounds_the_traced_peak_tiny(setup, monkeypatch, batch, shape, audio_tokens):
    transformer = setup["pipe"].transformer
    inputs = _transformer_inputs(transformer.config, batch, *shape, audio_tokens, 16)
    traced = _traced_forward(transformer, inputs, monkeypatch)
    estimate = memory.transformer_activation_bytes(transformer.config, batch, math.prod(shape), audio_tokens, 16, 4)
    assert traced <= estimate <= 1.5 * traced, (traced, estimate)


# LTX-2.3's transformer widths (LTX2_REFERENCE.md 1.2), two of its 48 blocks: the peak is per block.
FULL_TRANSFORMER = dict(
    num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096, audio_num_attention_heads=32,
    audio_attention_head_dim=64, audio_cross_attention_dim=2048, gated_attn=True, cross_attn_mod=True,
    audio_gated_attn=True, audio_cross_attn_mod=True, num_layers=2, rope_type="split", use_prompt_embeddings=False,
    perturbed_attn=True, caption_channels=3840,
)  # fmt: skip


@pytest.mark.parametrize("batch, shape", [(4, (16, 16, 24)), (1, (16, 32, 48))])  # stage 1 / stage 2 at the defaults
def test_transformer_estimate_matches_the_full_size_trace(monkeypatch, batch, shape):
    with torch.device("meta"):
        model = LTX2AudioVideoTransformer(**FULL_TRANSFORMER).to(torch.bfloat16)
    inputs = _transformer_inputs(model.config, batch, *shape, 126, 1024, device="meta", dtype=torch.bfloat16)
    traced = _traced_forward(model, inputs, monkeypatch)
    estimate = memory.transformer_activation_bytes(model.config, batch, math.prod(shape), 126, 1024, 2)
    assert traced <= estimate <= 1.1 * traced, (traced / GIB, estimate / GIB)
    assert 6.0 < estimate / GIB < 7.0


def _full_vae():
    """LTX-2.3's video decoder layout (LTX2_REFERENCE.md 7.1), built on the meta device."""
    section = vae_config("2.3")
    section["decoder_blocks"] = [
        ["res_x", {"num_layers": 4}], ["compress_space", {"multiplier": 2}], ["res_x", {"num_layers": 6}],
        ["compress_time", {"multiplier": 2}], ["res_x", {"num_layers": 4}], ["compress_all", {"multiplier": 1}],
        ["res_x", {"num_layers": 2}], ["compress_all", {"multiplier": 2}], ["res_x", {"num_layers": 2}],
    ]  # fmt: skip
    section["decoder_base_channels"] = 128
    with torch.device("meta"):
        return AutoencoderKLLTX2Video(**video_vae_config_from_original(section)).to(torch.bfloat16)


def _traced_decode(pipe_like_decode, latents):
    with torch.no_grad(), LiveBytes() as trace:
        pipe_like_decode(latents)
    return trace.peak


def _pipeline_decode(vae, tiling=None, walk_devices=LTX2PipelineBase.CHANNELS_LAST_DECODE_DEVICES):
    """`LTX2PipelineBase.decode` (the VAE, then the rescaling to [0, 1] in float32) with `vae` as the pipeline's
    and `tiling` as what `enable_vae_tiling` set; the channels-last walk on `walk_devices` (CUDA, as the class)."""
    pipe = SimpleNamespace(vae=vae, vae_tiling=tiling, CHANNELS_LAST_DECODE_DEVICES=walk_devices)
    pipe.DECODE_NOISE_SCALE, pipe.DECODE_TIMESTEP = (
        LTX2PipelineBase.DECODE_NOISE_SCALE,
        LTX2PipelineBase.DECODE_TIMESTEP,
    )
    pipe.denormalize_latents = lambda z: LTX2PipelineBase.denormalize_latents(pipe, z)
    pipe._channels_last_decode = lambda z: LTX2PipelineBase._channels_last_decode(pipe, z)
    pipe._channels_last_decode_on = lambda *a: LTX2PipelineBase._channels_last_decode_on(pipe, *a)
    pipe._decode_tile = lambda z, generator, **kw: LTX2PipelineBase._decode_tile(pipe, z, generator, **kw)
    return lambda z: LTX2PipelineBase.decode(pipe, z, None, "pt")


def test_channels_last_walk_stays_under_the_decode_estimate():
    """The channels-last walk the pipeline uses on CUDA keeps fewer tensors live than `vae.decode` (traced at
    121 x 1024 x 1536: 11.4 against 12.9 GiB), so `vae.decode`'s estimate (that of tiers hooking the VAE, and of
    each tile of a tiled decode) bounds both decodes; the walk's own estimate: `tests/test_memory_decode_walk.py`."""
    vae = _full_vae().eval()  # as a pipeline holds it (`from_pretrained` / `from_single_file`)
    latents = torch.empty(1, 128, 16, 32, 48, device="meta", dtype=torch.bfloat16)
    plain = _traced_decode(_pipeline_decode(vae), latents)
    walked = _traced_decode(_pipeline_decode(vae, walk_devices=("meta",)), latents)
    assert walked < plain, (walked / GIB, plain / GIB)
    assert walked <= memory.decode_bytes(vae, 16, 32, 48, tiled=False)


@pytest.mark.parametrize("tiled", [False, True])
def test_decode_estimate_bounds_the_full_size_trace(tiled):
    vae = _full_vae()
    if tiled:
        vae.enable_tiling()
    latents = torch.empty(1, 128, 16, 32, 48, device="meta", dtype=torch.bfloat16)  # 121 x 1024 x 1536
    traced = _traced_decode(_pipeline_decode(vae), latents)
    estimate = memory.decode_bytes(vae, 16, 32, 48, tiled=tiled)
    assert traced <= estimate, (traced / GIB, estimate / GIB)
    if tiled:
        assert estimate <= 1.1 * traced
    else:  # the live tensors (12.9 GiB) plus the convolution workspace measured on an H200 (18.6 GiB in all)
        assert 18.6 * GIB <= estimate <= 1.6 * traced


def test_ltx_tiled_decode_estimate_bounds_the_full_size_trace():
    """`enable_vae_tiling()` (ltx-core's tiles: 48 at 121 x 1024 x 1536): the estimate covers the traced live
    bytes of the pipeline's tiled decode and stays close to them."""
    vae = _full_vae()
    latents = torch.empty(1, 128, 16, 32, 48, device="meta", dtype=torch.bfloat16)
    tiling = VideoTilingConfig()
    traced = _traced_decode(_pipeline_decode(vae, tiling), latents)
    estimate = memory.ltx_tiled_decode_bytes(vae, 16, 32, 48, tiling)
    assert traced <= estimate <= 1.25 * traced, (traced / GIB, estimate / GIB)
    assert estimate < memory.decode_bytes(vae, 16, 32, 48, tiled=False) / 2


@pytest.mark.parametrize("tiled", [False, True])
def test_decode_estimate_bounds_the_tiny_trace(setup, tiled):
    pipe = load(setup)
    if tiled:
        pipe.vae.enable_tiling(
            tile_sample_min_height=128, tile_sample_min_width=128, tile_sample_stride_height=96,
            tile_sample_stride_width=96,
        )  # fmt: skip
    latents = torch.randn(1, 128, 3, 8, 8)
    traced = _traced_decode(lambda z: pipe.decode(z, None, "pt"), latents)
    estimate = memory.decode_bytes(pipe.vae, 3, 8, 8, tiled=tiled)
    assert traced <= estimate <= 1.6 * traced, (traced, estimate)


@pytest.mark.parametrize("tier", [*(t for t in TIERS if t.offload != "stream"), *STREAMING], ids=str)
def test_every_tier_gives_the_same_frames(setup, tier):
    pipe = load(setup)
    pipe.enable_memory_tier(tier, "cpu")
    assert pipe._memory_tier == tier
    if tier.resident_blocks is not None:
        streamer = pipe.transformer._block_streamer
        assert len(streamer.streamed) == pipe.transformer.config.num_layers - tier.resident_blocks
        assert set(memory.has_offload_hooks(pipe)) <= set(memory.TEXT_COMPONENTS)  # the others stay resident
        assert _is_group_offload_enabled(pipe.connectors) == (tier.text_offload == "layers")
    if tier.offload != "none":
        assert memory.has_offload_hooks(pipe)
    for _ in range(2):  # the second call runs on the hooks diffusers re-applies after the first
        frames = call(pipe, setup["audio"])
        assert (frames - setup["expected"]).abs().max().item() <= TOL


def test_budget_picks_the_fastest_tier_that_fits(setup):
    sizes = tiny_sizes(setup["pipe"])
    peaks = {tier: estimated_peak(tier, sizes) for tier in TIERS}
    resident = TIERS[0]
    below = peaks[resident] * 0.9999
    stream = replace(STREAM_WHOLE, resident_blocks=memory.stream_resident_blocks(below, sizes, False))
    assert peaks[resident] > estimated_peak(stream, sizes)
    for budget, expected in ((peaks[resident] / 0.9 * 1.0001, resident), (below / 0.9, stream)):
        pipe = load(setup)
        tier = pipe.enable_memory_budget(budget / GIB, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
        assert tier == expected == pipe._memory_tier
        assert (call(pipe, setup["audio"]) - setup["expected"]).abs().max().item() <= TOL


def test_a_stream_tier_without_its_resident_count_is_refused(setup):
    pipe = load(setup)
    with pytest.raises(ValueError, match=r"tier.resident_blocks is None: a stream tier needs its count"):
        pipe.enable_memory_tier(STREAM_WHOLE, "cpu")
    assert memory.has_offload_hooks(pipe) == [] and pipe.transformer._block_streamer is None


def test_budget_too_small_refused_and_nothing_changes(setup):
    pipe = load(setup)
    smallest = min(estimated_peak(tier, tiny_sizes(pipe)) for tier in TIERS)
    with pytest.raises(ValueError, match=r"memory_budget_gib=.* fits no memory tier.*memory_budget_gib >= "):
        pipe.enable_memory_budget(smallest / 2 / GIB, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert memory.has_offload_hooks(pipe) == [] and not pipe.vae.use_tiling


@pytest.mark.parametrize("user", ["model", "group"])
def test_user_offload_hooks_are_not_replaced(setup, user):
    pipe = load(setup)
    if user == "model":
        pipe.enable_model_cpu_offload(device="cpu")
        hooks = list(pipe._all_hooks)
        transformer_hook = pipe.transformer._hf_hook
    else:
        pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level")
    with pytest.raises(ValueError, match=r"already carry offload hooks \(set by the user\)"):
        pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    with pytest.raises(ValueError, match="already carry offload hooks"):
        pipe.enable_memory_tier(TIERS[0], "cpu")
    if user == "model":
        assert pipe._all_hooks == hooks and pipe.transformer._hf_hook is transformer_hook
    else:
        assert _is_group_offload_enabled(pipe.transformer)
    assert not hasattr(pipe, "_memory_tier")


def test_a_second_budget_is_refused(setup):
    pipe = load(setup)
    pipe.enable_memory_tier(tier("group-block"), "cpu")
    with pytest.raises(ValueError, match=r"set by memory tier group-block"):
        pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    pipe = load(setup)
    pipe.enable_memory_tier(STREAMING[0], "cpu")
    with pytest.raises(ValueError, match=r"set by memory tier stream \(0 blocks resident"):
        pipe.enable_memory_budget(1000, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    pipe = load(setup)
    pipe.register_modules(connectors=None)  # no hooked component left: the streaming transformer is what refuses
    pipe.enable_memory_tier(STREAMING[0], "cpu")
    assert memory.has_offload_hooks(pipe) == []
    with pytest.raises(ValueError, match=r"\['transformer'\] already carry offload hooks \(set by memory tier stream"):
        pipe.enable_memory_tier(TIERS[0], "cpu")


@pytest.mark.parametrize("location", ["device", "host"])
def test_model_tier_keeps_the_lora_where_the_tier_says(setup, location, monkeypatch):
    """diffusers re-applies model offload after every call; the LoRA must stay where the tier put it. On a CPU
    machine the onload device is "cpu:0" (diffusers' device for `device="cpu"`), the host "cpu"."""
    pipe = load(setup)
    moves = []
    original = LTX2DistilledLoRA.to

    def spy(self, *args, **kwargs):
        moves.append(torch.device(args[0]) if args else kwargs.get("device"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LTX2DistilledLoRA, "to", spy)
    pipe.enable_memory_tier(memory.MemoryTier("model", "model", True, location), "cpu")
    call(pipe, setup["audio"])
    onloaded = torch.device("cpu", 0) in moves
    assert onloaded == (location == "device"), moves


# ------------------------------------------------------------------------------------------------ LoRA factors
class _ToSpy(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            self.calls.append((args[0].device, args[1:], kwargs))
        return func(*args, **kwargs)


def _store_and_linear(weight_device, factor_dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(6, 5, device=weight_device)
    a, b = torch.randn(3, 6, generator=g, dtype=factor_dtype), torch.randn(5, 3, generator=g, dtype=factor_dtype)
    model = torch.nn.Sequential(linear)
    store = LTX2DistilledLoRA.from_state_dict({"transformer.0.lora_A.weight": a, "transformer.0.lora_B.weight": b})
    return model, linear, store, a, b


def test_host_factors_follow_the_weight_device_without_blocking():
    model, linear, store, _, _ = _store_and_linear("meta")
    with store.applied(model, 0.5), _ToSpy() as spy:
        weight = linear.weight
    assert weight.device.type == "meta" and weight.shape == (5, 6)
    factor_moves = [c for c in spy.calls if c[0].type == "cpu"]
    assert len(factor_moves) == 2 and all(c[2].get("non_blocking") is True for c in factor_moves), spy.calls


def test_factors_on_the_weight_device_are_used_in_its_dtype():
    """float64 factors and a float32 weight on the CPU: same device (no asynchronous copy), delta in float32 as
    ltx-core forms it (`B * scale` cast first)."""
    model, linear, store, a, b = _store_and_linear("cpu", torch.float64)
    with store.applied(model, 0.5), _ToSpy() as spy:
        weight = linear.weight
    expected = torch.matmul(b.float() * 0.5, a.float()) + linear._parameters["weight"]
    assert torch.equal(weight, expected)
    assert all(not c[2].get("non_blocking", False) for c in spy.calls)


def test_place_distilled_lora(monkeypatch):
    _, _, store, _, _ = _store_and_linear("cpu")
    memory.place_distilled_lora(store, "device", torch.device("meta"))
    assert all(t.device.type == "meta" for t in store.buffers())
    _, _, store, _, _ = _store_and_linear("cpu")
    pinned = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self.shape) or self.clone())
    memory.place_distilled_lora(store, "host", torch.device("cuda"))  # pinned for a CUDA device (no GPU needed)
    assert sorted(pinned) == [(3, 6), (5, 3)] and all(t.device.type == "cpu" for t in store.buffers())
    pinned.clear()
    memory.place_distilled_lora(store, "host", torch.device("cpu"))
    assert pinned == []


# ------------------------------------------------------------------------------------------------ seams
def test_compile_true_with_a_budget_only_group_offload_fits_is_refused_before_placing(setup):
    """`compile=True` cannot compile blocks that carry group-offload hooks (refused at the call); a budget whose
    only fitting tiers are group offload is refused up front, naming both settings, and nothing is placed. With a
    budget the model tier fits, that tier is applied (model offload keeps the blocks compilable)."""
    pipe = load(setup)
    pipe.set_transformer_acceleration(compile=True)
    peaks = {tier: estimated_peak(tier, tiny_sizes(pipe)) for tier in TIERS}
    group = min(peaks[t] for t in TIERS if t.offload.startswith("group"))
    model = min(peaks[t] for t in TIERS if t.offload == "model")
    assert group < model
    budget = (group + model) / 2 / 0.9 / GIB
    with pytest.raises(ValueError, match=r"memory_budget_gib=.* compile=True"):
        pipe.enable_memory_budget(budget, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert memory.has_offload_hooks(pipe) == [] and not hasattr(pipe, "_memory_tier") and pipe.vae_tiling is None
    tier = pipe.enable_memory_budget(model / 0.9 * 1.0001 / GIB, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert tier.offload == "model"


def test_a_tier_keeps_the_users_vae_tiling(setup):
    pipe = load(setup)
    pipe.enable_vae_tiling(tile_size_in_pixels=64, tile_overlap_in_pixels=32)
    users = pipe.vae_tiling
    pipe.enable_memory_tier(tier("model"), "cpu")  # a tiled-decode tier
    assert pipe.vae_tiling is users


@pytest.mark.parametrize("tiling", ["ltx", "diffusers"])
def test_the_resident_estimate_decodes_as_the_user_set_it(setup, tiling):
    """With tiling the user turned on, the resident tier's decode is tiled too: its estimate is the tiled one (at
    this tiny size, 64-pixel tiles, more than the whole decode's: the blend buffers dominate)."""
    pipe = load(setup)
    whole = tiny_sizes(pipe).decode
    if tiling == "ltx":
        pipe.enable_vae_tiling(tile_size_in_pixels=64, tile_overlap_in_pixels=32)
        expected = tiny_sizes(pipe).decode_tiled
    else:
        pipe.vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=32,
                               tile_sample_stride_width=32)  # fmt: skip
        expected = memory.decode_bytes(pipe.vae, *memory.stages.video_latent_size(FRAMES, SIZE, SIZE), tiled=True)
    sizes = tiny_sizes(pipe)
    assert sizes.decode == expected != whole


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"device": "nonsense"}, ValueError, "device must be a torch device"),
        ({"device": 1.5}, TypeError, "device must be a torch device"),
        ({"stage_2": "no"}, TypeError, "stage_2 must be a bool"),
    ],
)
def test_garbage_device_and_stage_2_refused(setup, kwargs, error, match):
    pipe = setup["pipe"]
    with pytest.raises(error, match=match):
        pipe.enable_memory_budget(**{"memory_budget_gib": 24, "device": "cpu", "height": SIZE, "width": SIZE,
                                     "num_frames": FRAMES, **kwargs})  # fmt: skip
    if "device" in kwargs:
        with pytest.raises(error, match=match):
            pipe.enable_memory_tier(TIERS[0], kwargs["device"])
    assert memory.has_offload_hooks(pipe) == [] and not hasattr(pipe, "_memory_tier")
