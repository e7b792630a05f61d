"""Tiled video decode (`ltx2_diffusers.models.video_vae_tiling`, behind `pipe.enable_vae_tiling()`) against ltx-core's
own (`VideoDecoder.tiled_decode` with a `TilingConfig`, which the reference CLI runs with `TilingConfig.default()`).

1. Plan: for randomised tile sizes and overlaps (space and time, each axis tiled or not) over latent shapes that the
   tiles do and do not divide, the same tiles in the same order as ltx-core's: latent slices, output slices and 1-D
   blend weights, all equal.
2. Decode: on tiny random LTX-2.3 weights, our tiled decode equals ltx-core's (fp32 <= 1e-5; bf16 bit for bit).
3. Memory: the decoder's largest intermediate while decoding tiled is that of the plan's largest tile decoded alone;
   at full size (121 x 1024 x 1536, computed on the meta device) the figures are printed.
4. Garbage tile settings are refused with a ValueError / TypeError naming the argument.

(The video VAE's own `enable_tiling` is diffusers' algorithm, kept as diffusers ships it: it blends differently and
does not reproduce the reference, which is why the pipeline's `enable_vae_tiling` does not use it.)
"""

import copy
import random

import factories
import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from factories import build_checkpoint, load_reference
from ltx_core.model.video_vae.tiling import SpatialTilingConfig, TemporalTilingConfig, TilingConfig

from ltx2_diffusers.loaders.single_file_video_vae import (
    load_video_vae_from_single_file,
    video_vae_config_from_original,
)
from ltx2_diffusers.models.video_vae_tiling import VideoTilingConfig, plan_tiles, tiled_decode


TOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = build_checkpoint(
        tmp_path_factory.mktemp("vae") / "vae.safetensors", "2.3", seed=21, components=("vae",), dtype=torch.float32
    )
    return {"path": path, "ours": _ours(path, torch.float32), "reference": load_reference(path, "video_decoder")}


def _ours(path, dtype):
    return load_video_vae_from_single_file(path, torch_dtype=dtype)


def _reference_config(config: VideoTilingConfig, latent_frames: int | None = None) -> TilingConfig:
    """ltx-core's config. With `latent_frames`, an untiled time axis becomes one temporal tile longer than the video
    (the same decode): ltx-core 1.0's `tiled_decode` raises a TypeError without a temporal config."""
    spatial = temporal = None
    if config.tile_size_in_pixels is not None:
        spatial = SpatialTilingConfig(config.tile_size_in_pixels, config.tile_overlap_in_pixels)
    if config.tile_size_in_frames is not None:
        temporal = TemporalTilingConfig(config.tile_size_in_frames, config.tile_overlap_in_frames)
    elif latent_frames is not None:
        temporal = TemporalTilingConfig(8 * max(2, latent_frames))
    return TilingConfig(spatial_config=spatial, temporal_config=temporal)


def _random_config(rng: random.Random) -> VideoTilingConfig:
    pixels, frames = 32 * rng.randint(2, 8), 8 * rng.randint(2, 8)
    spatial, temporal = rng.choice([(True, True), (True, False), (False, True)])
    return VideoTilingConfig(
        tile_size_in_pixels=pixels if spatial else None,
        tile_overlap_in_pixels=32 * rng.randint(0, pixels // 32 - 1),
        tile_size_in_frames=frames if temporal else None,
        tile_overlap_in_frames=8 * rng.randint(0, frames // 8 - 1),
    )


def _decoder(vae):
    """Normalised latent tile -> video tile through our VAE (un-normalised as the reference decoder does)."""
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    return lambda tile: vae.decode(tile * std.to(tile) + mean.to(tile)).sample


def test_defaults_are_the_reference_cli_tiling():
    ours, reference = VideoTilingConfig(), TilingConfig.default()
    assert (ours.tile_size_in_pixels, ours.tile_overlap_in_pixels) == (
        reference.spatial_config.tile_size_in_pixels,
        reference.spatial_config.tile_overlap_in_pixels,
    )
    assert (ours.tile_size_in_frames, ours.tile_overlap_in_frames) == (
        reference.temporal_config.tile_size_in_frames,
        reference.temporal_config.tile_overlap_in_frames,
    )


def test_tile_plan_equals_ltx_core(models):
    rng = random.Random(7)
    reference, checked = models["reference"], 0
    for _ in range(400):
        config = _random_config(rng)
        size = (rng.randint(1, 20), rng.randint(1, 40), rng.randint(1, 40))
        plan = plan_tiles(size, config)
        expected = reference._prepare_tiles(torch.empty(1, 1, *size, device="meta"), _reference_config(config))
        assert len(plan) == len(expected), (size, config)
        for (t, h, w), tile in zip(plan, expected):
            assert tile.in_coords[2:] == (t.latent, h.latent, w.latent), (size, config)
            out = tuple(slice(*s.indices(n)[:2]) for s, n in zip(tile.out_coords[2:], plan.output_size))
            assert out == (t.out, h.out, w.out), (size, config)
            for mask, axis in zip(tile.masks_1d[2:], (t, h, w)):
                mask = torch.ones(axis.out_stop - axis.out_start) if mask is None else mask
                assert torch.equal(axis.weights(), mask), (size, config, axis)
        checked += len(plan) > 1
    assert checked > 300  # most draws do tile


def _decode_cases():
    """(latent size, config): fixed corner cases, then random draws of 2..16 tiles, tiled along two axes or more."""
    cases = [
        ((5, 3, 7), VideoTilingConfig(96, 32, 24, 8)),  # non-divisible in every axis, portrait rows scaled down
        ((4, 4, 3), VideoTilingConfig(64, 32, 16, 8)),  # 2-latent tiles at a stride of 1: up to 3 tiles per pixel
        ((3, 5, 5), VideoTilingConfig(64, 0, 16, 0)),  # no overlap
        ((6, 2, 2), VideoTilingConfig(None, 0, 32, 16)),  # time only
    ]
    rng = random.Random(11)
    while len(cases) < 8:
        size = (rng.randint(2, 6), rng.randint(2, 7), rng.randint(2, 7))
        config = _random_config(rng)
        plan = plan_tiles(size, config)
        if len(plan) <= 16 and sum(len(axis) > 1 for axis in (plan.frames, plan.rows, plan.columns)) >= 2:
            cases.append((size, config))
    return cases


@pytest.mark.parametrize("size, config", _decode_cases())
def test_tiled_decode_equals_ltx_core(models, size, config):
    latent = torch.randn(1, 128, *size, generator=torch.Generator().manual_seed(sum(size)))
    calls = []
    hook = models["ours"].decoder.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    try:
        with torch.no_grad():
            ours = tiled_decode(_decoder(models["ours"]), latent, config)
            reference_config = _reference_config(config, latent_frames=size[0])
            reference = torch.cat(list(models["reference"].tiled_decode(latent, reference_config)), dim=2)
    finally:
        hook.remove()
    assert len(calls) == len(plan_tiles(size, config)) > 1
    assert ours.shape == reference.shape == (1, 3, 8 * (size[0] - 1) + 1, 32 * size[1], 32 * size[2])
    delta = (ours - reference).abs().max().item()
    print(f"tiled decode {size} {config}: {len(calls)} tiles, max|delta| vs ltx-core = {delta:.3g}")
    assert delta <= TOL


def test_tiled_decode_bfloat16_is_bit_exact(models):
    """ltx-core sums the tiles in the latent dtype; so do we, in the same order."""
    ours, reference = (
        _ours(models["path"], torch.bfloat16),
        load_reference(models["path"], "video_decoder", torch.bfloat16),
    )
    latent = torch.randn(1, 128, 4, 3, 5, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    config = VideoTilingConfig(64, 32, 16, 8)
    with torch.no_grad():
        tiled = tiled_decode(_decoder(ours), latent, config)
        expected = torch.cat(list(reference.tiled_decode(latent, _reference_config(config))), dim=2)
    assert tiled.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(tiled, expected)


def _largest_intermediate(decoder, run) -> int:
    """The most elements of any tensor a submodule of `decoder` returns while `run()` runs."""
    sizes = []
    hooks = [
        module.register_forward_hook(lambda m, a, out: sizes.append(out.numel()) if torch.is_tensor(out) else None)
        for module in decoder.modules()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def test_decoder_memory_is_bounded_by_the_tile(models):
    vae = models["ours"]
    decode = _decoder(vae)
    config = VideoTilingConfig(96, 32, 24, 8)
    latent = torch.randn(1, 128, 6, 6, 8)
    plan = plan_tiles(tuple(latent.shape[2:]), config)
    tiled = _largest_intermediate(vae.decoder, lambda: tiled_decode(decode, latent, config))
    one_tile = _largest_intermediate(vae.decoder, lambda: decode(torch.randn(1, 128, *plan.largest_tile)))
    whole = _largest_intermediate(vae.decoder, lambda: decode(latent))
    print(f"largest decoder intermediate: tiled {tiled}, largest tile alone {one_tile}, untiled {whole}")
    assert tiled == one_tile and whole > 3 * tiled


def test_full_size_plan_and_memory():
    """121 x 1024 x 1536 (latent 16 x 32 x 48) with the defaults, on the released LTX-2.3 decoder, built and run on
    the meta device (shapes only)."""
    size, config = (16, 32, 48), VideoTilingConfig()
    plan = plan_tiles(size, config)
    expected = load_reference_tiles(size)
    assert len(plan) == len(expected) and [(t.latent, h.latent, w.latent) for t, h, w in plan] == [
        tile.in_coords[2:] for tile in expected
    ]
    vae_config = factories.checkpoint_config("2.3")
    vae_config["vae"].update(
        decoder_base_channels=128, decoder_blocks=copy.deepcopy(factories.RELEASED_VAE_BLOCKS["2.3"][1])
    )
    with torch.device("meta"):
        vae = AutoencoderKLLTX2Video(**video_vae_config_from_original(vae_config))
    whole = _largest_intermediate(vae.decoder, lambda: vae.decoder(torch.empty(1, 128, *size, device="meta")))
    tile = _largest_intermediate(
        vae.decoder, lambda: vae.decoder(torch.empty(1, 128, *plan.largest_tile, device="meta"))
    )
    print(
        f"121x1024x1536: {len(plan)} tiles ({len(plan.frames)} x {len(plan.rows)} x {len(plan.columns)}), largest "
        f"latent tile {plan.largest_tile}; largest decoder tensor {whole * 2 / 2**30:.2f} GiB untiled vs "
        f"{tile * 2 / 2**30:.3f} GiB tiled (bf16)"
    )
    assert plan.output_size == (121, 1024, 1536)
    assert whole > 10 * tile


def load_reference_tiles(size):
    from ltx_core.model.video_vae.video_vae import VideoDecoder

    with torch.device("meta"):
        decoder = VideoDecoder()  # the tile plan depends only on its scale factors
    return decoder._prepare_tiles(torch.empty(1, 1, *size, device="meta"), TilingConfig.default())


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(tile_size_in_pixels=0), ValueError, "tile_size_in_pixels"),
        (dict(tile_size_in_pixels=-512), ValueError, "tile_size_in_pixels"),
        (dict(tile_size_in_pixels=32, tile_overlap_in_pixels=0), ValueError, "tile_size_in_pixels"),
        (dict(tile_size_in_pixels=500), ValueError, "tile_size_in_pixels"),
        (dict(tile_size_in_pixels=512.0), TypeError, "tile_size_in_pixels"),
        (dict(tile_size_in_pixels=True), TypeError, "tile_size_in_pixels"),
        (dict(tile_overlap_in_pixels=512), ValueError, "tile_overlap_in_pixels"),
        (dict(tile_overlap_in_pixels=600), ValueError, "tile_overlap_in_pixels"),
        (dict(tile_overlap_in_pixels=-32), ValueError, "tile_overlap_in_pixels"),
        (dict(tile_overlap_in_pixels=48), ValueError, "tile_overlap_in_pixels"),
        (dict(tile_size_in_frames=8, tile_overlap_in_frames=0), ValueError, "tile_size_in_frames"),
        (dict(tile_size_in_frames=60), ValueError, "tile_size_in_frames"),
        (dict(tile_size_in_frames=float("nan")), TypeError, "tile_size_in_frames"),
        (dict(tile_overlap_in_frames=64), ValueError, "tile_overlap_in_frames"),
        (dict(tile_overlap_in_frames=20), ValueError, "tile_overlap_in_frames"),
        (dict(tile_overlap_in_frames=-8), ValueError, "tile_overlap_in_frames"),
        (dict(tile_overlap_in_frames=None), TypeError, "tile_overlap_in_frames"),
        (dict(tile_size_in_pixels=None, tile_size_in_frames=None), ValueError, "both None"),
    ],
)
def test_garbage_tiling_is_refused(kwargs, error, name):
    with pytest.raises(error, match=name):
        VideoTilingConfig(**kwargs)
