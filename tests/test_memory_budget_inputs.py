"""`enable_memory_budget` / `enable_memory_tier` inputs and the user's VAE tiling (`pipelines/memory.py`).

Refused before anything changes (weights hashed before and after, no tier applied): the "meta" device (before: every
weight moved to meta and lost), devices this process cannot place on, a budget above `MAX_MEMORY_BUDGET_GIB`
(before: OverflowError), sizes the calls refuse (before: ZeroDivisionError from the tile planner at 3 x 7 pixels).
The video VAE's own (diffusers') tiling the user turned on is kept by a tiled-decode tier (before: switched off and
ltx-core's default tiling installed) and is what the tiled estimate counts."""

import hashlib

import pytest
import torch
from factories import cached_checkpoint
from test_memory_tiers import call as frames  # the tiny call of the tier tests
from tiny_a2v import single_file_pipe, write_tone

from ltx2_diffusers.models.video_vae_tiling import VideoTilingConfig, plan_tiles
from ltx2_diffusers.pipelines import memory
from ltx2_diffusers.pipelines.memory import MAX_MEMORY_BUDGET_GIB, TIERS


SIZE, FRAMES = 128, 9


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget_inputs")
    checkpoint = cached_checkpoint("checkpoint", "2.3", seed=4)
    write_tone(root / "a.wav")
    return dict(
        checkpoint=checkpoint,
        upsampler=cached_checkpoint("upsampler", seed=5),
        lora=cached_checkpoint("lora", checkpoint_path=checkpoint, seed=6, dtype=torch.float32),
        audio=root / "a.wav",
    )


def load(files):
    return single_file_pipe(files["checkpoint"], files["upsampler"], files["lora"], 0.6)


@pytest.fixture(scope="module")
def pipe(files):
    return load(files)


def fingerprint(pipe):
    """sha256 of every component tensor (device, dtype, bytes) and the VAE tiling switches."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if not isinstance(component, torch.nn.Module):
            continue
        for key, tensor in component.state_dict().items():
            digest.update(f"{name}.{key}:{tensor.device}:{tensor.dtype}".encode())
            if tensor.device.type != "meta":
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(repr((pipe.vae_tiling, pipe.vae.use_tiling)).encode())
    return digest.hexdigest()


def refused(pipe, error, match, *args, **kwargs):
    before = fingerprint(pipe)
    with pytest.raises(error, match=match):
        pipe.enable_memory_budget(*args, **{"height": SIZE, "width": SIZE, "num_frames": FRAMES, **kwargs})
    assert fingerprint(pipe) == before
    assert memory.has_offload_hooks(pipe) == [] and getattr(pipe, "_memory_tier", None) is None


# ------------------------------------------------------------------------------------------------ devices
def test_meta_device_is_refused_before_any_weight_moves(pipe):
    for device in ("meta", torch.device("meta")):
        refused(pipe, ValueError, r"device='meta' holds no values", 10, device)
        with pytest.raises(ValueError, match=r"device='meta' holds no values"):
            pipe.enable_memory_tier(TIERS[0], device)
    assert {p.device.type for p in pipe.transformer.parameters()} == {"cpu"}


@pytest.mark.parametrize(
    "device, error, match",
    [
        ("nonsense", ValueError, "device must be a torch device or its name"),
        (1.5, TypeError, "device must be a torch device or its name"),
        (None, TypeError, "device must be a torch device or its name"),
        ("cuda:97", ValueError, r"device='cuda:97' is not available in this process"),
    ],
)
def test_non_devices_and_absent_devices_are_refused(pipe, device, error, match):
    refused(pipe, error, match, 10, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused_before_placing(pipe):
    refused(pipe, ValueError, r"device='cuda' is not available in this process \(no accelerator\)", 10, "cuda")
    with pytest.raises(ValueError, match="device='cuda' is not available"):
        pipe.enable_memory_tier(TIERS[0], "cuda")


def test_measuring_for_another_device_still_works(pipe):
    """The estimates may be asked for a device this process lacks (the walk's predicate); only placing needs it."""
    sizes = memory.measure_memory_sizes(pipe, height=SIZE, width=SIZE, num_frames=FRAMES, device="cuda")
    assert sizes.decode > 0
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        memory.measure_memory_sizes(pipe, height=SIZE, width=SIZE, num_frames=FRAMES, device="meta")


# ------------------------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("budget", [1e300, MAX_MEMORY_BUDGET_GIB * 1.0001, 10**400])
def test_budget_above_the_bound_is_refused_not_overflowed(pipe, budget):
    refused(pipe, ValueError, r"memory_budget_gib must be at most 1048576 GiB", budget, "cpu")


def test_budget_at_the_bound_is_the_resident_tier(files):
    assert memory.check_memory_budget(MAX_MEMORY_BUDGET_GIB) == 2**50
    pipe = load(files)
    tier = pipe.enable_memory_budget(MAX_MEMORY_BUDGET_GIB, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert tier == TIERS[0]


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(height=3, width=7, num_frames=10), ValueError, r"height must be a positive multiple of 64 \(two stages"),
        (dict(height=128, width=7), ValueError, r"width must be a positive multiple of 64 \(two stages\), got 7"),
        (dict(num_frames=10), ValueError, r"num_frames must be 8k \+ 1 \(1, 9, 17, \.\.\., 121\), got 10"),
        (dict(height=96), ValueError, r"height must be a positive multiple of 64 \(two stages\), got 96"),
        (dict(height=96, width=32, stage_2=False, num_frames=8), ValueError, r"num_frames must be 8k \+ 1"),
        (dict(width=-64), ValueError, r"width must be >= 1, got -64"),
        (dict(height=128.0), TypeError, r"height must be a positive int"),
        (dict(stage_2="yes", height=3), TypeError, r"stage_2 must be a bool"),
    ],
)
def test_sizes_the_calls_refuse_are_refused(pipe, kwargs, error, match):
    refused(pipe, error, match, 10, "cpu", **kwargs)


def test_one_stage_sizes_are_multiples_of_32(files):
    pipe = load(files)
    tier = pipe.enable_memory_budget(10, "cpu", height=96, width=32, num_frames=1, stage_2=False)
    assert tier == TIERS[0]


def test_tile_planner_refuses_an_empty_latent():
    with pytest.raises(ValueError, match=r"latent height must be an int >= 1 to plan tiles, got 0"):
        plan_tiles((2, 0, 0), VideoTilingConfig())
    with pytest.raises(ValueError, match=r"latent frames must be an int >= 1"):
        plan_tiles((0, 4, 4), VideoTilingConfig())
    assert len(plan_tiles((2, 4, 4), VideoTilingConfig())) == 1


# ------------------------------------------------------------------------------------------------ the user's tiling
def users_vae_tiling(pipe):
    pipe.vae.enable_tiling(
        tile_sample_min_height=96, tile_sample_min_width=96, tile_sample_stride_height=64, tile_sample_stride_width=64
    )


def test_a_tiled_tier_keeps_the_vaes_own_tiling_the_user_set(files):
    """The reproducer's case: diffusers' VAE tiling at 96-pixel tiles, a budget only a tiled-decode tier fits. The
    tiling stays as the user set it, the tiled estimate is that tiling's, and the frames equal the same pipeline's
    without a budget (before: use_tiling False, ltx-core's 512-pixel tiles installed)."""
    expected_pipe = load(files)
    users_vae_tiling(expected_pipe)
    expected = frames(expected_pipe, files["audio"])

    pipe = load(files)
    users_vae_tiling(pipe)
    sizes = memory.measure_memory_sizes(pipe, height=SIZE, width=SIZE, num_frames=FRAMES, device="cpu")
    latent = memory.stages.video_latent_size(FRAMES, SIZE, SIZE)
    assert sizes.decode_tiled == sizes.decode == memory.decode_bytes(pipe.vae, *latent, tiled=True)
    ltx_default = memory.ltx_tiled_decode_bytes(pipe.vae, *latent, VideoTilingConfig())
    assert sizes.decode_tiled != ltx_default

    tier = pipe.enable_memory_budget(0.1, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert tier.tiled_decode and tier.offload != "none"
    assert pipe.vae.use_tiling and pipe.vae_tiling is None
    assert (pipe.vae.tile_sample_min_height, pipe.vae.tile_sample_min_width) == (96, 96)
    assert (pipe.vae.tile_sample_stride_height, pipe.vae.tile_sample_stride_width) == (64, 64)
    out = frames(pipe, files["audio"])
    assert (out - expected).abs().max().item() <= 1e-5


def test_without_the_users_tiling_a_tiled_tier_still_installs_ltx_tiling(files):
    pipe = load(files)
    assert not pipe.vae.use_tiling and pipe.vae_tiling is None
    tier = pipe.enable_memory_budget(0.1, "cpu", height=SIZE, width=SIZE, num_frames=FRAMES)
    assert tier.tiled_decode and pipe.vae_tiling == VideoTilingConfig() and not pipe.vae.use_tiling
