"""Tiled video decode (the VAE's `enable_tiling`, used by the pipeline and `a2vid --vae-tiling`) against ltx-core.

1. Where tiling must not change the result (a decoder whose convolutions see one latent pixel in space, so every
   tile decodes exactly its part of the whole): our tiled decode, our untiled decode, ltx-core's untiled decode and
   ltx-core's OWN tiled decode (`VideoDecoder.tiled_decode` with a `TilingConfig`) all agree (fp32 <= 1e-5).
2. On the full random decoder (tiles differ near their borders): a two-tile decode equals the left tile up to the
   tile stride, a linear cross-fade over the overlap, then the right tile, each tile decoded alone by ltx-core.
"""

import pytest
import torch
from factories import build_checkpoint, load_reference, read_metadata
from ltx_core.model.video_vae.tiling import SpatialTilingConfig, TemporalTilingConfig, TilingConfig
from safetensors.torch import load_file, save_file

from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file


TOL = 1e-5
LATENT_PX = 32  # spatial compression of the LTX-2 video VAE


def _spatially_local(path, out):
    """A copy of the file whose decoder convolutions keep only their centre tap in height and width."""
    tensors = load_file(path)
    for key, value in tensors.items():
        if key.startswith("vae.decoder.") and value.ndim == 5:
            mask = torch.zeros(value.shape[-2:], dtype=value.dtype)
            mask[value.shape[-2] // 2, value.shape[-1] // 2] = 1
            tensors[key] = value * mask
    save_file(tensors, str(out), metadata=read_metadata(path))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    full = build_checkpoint(folder / "full.safetensors", "2.3", seed=21, components=("vae",), dtype=torch.float32)
    return {"full": full, "local": _spatially_local(full, folder / "local.safetensors")}


def _ours(path):
    return load_video_vae_from_single_file(path, torch_dtype=torch.float32)


@torch.no_grad()
def _decode_ours(vae, z, tiles=None):
    """Our VAE on normalised latents `z`; `tiles` = (min, stride) in pixels enables tiling. Returns (frames, calls)."""
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    calls = []
    hook = vae.decoder.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    try:
        if tiles is not None:
            size, stride = tiles
            vae.enable_tiling(
                tile_sample_min_height=size,
                tile_sample_min_width=size,
                tile_sample_stride_height=stride,
                tile_sample_stride_width=stride,
            )
        frames = vae.decode(z * std + mean).sample
    finally:
        hook.remove()
        vae.disable_tiling()
    return frames, calls


def _latent(height, width, frames=2, seed=3):
    return torch.randn(1, 128, frames, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("height, width", [(4, 5), (3, 6)])
def test_tiled_decode_agrees_with_ltx_core_tiled_where_tiling_is_exact(files, height, width):
    ours = _ours(files["local"])
    reference = load_reference(files["local"], "video_decoder")
    z = _latent(height, width)
    with torch.no_grad():
        ref_untiled = reference(z)
        config = TilingConfig(  # ltx-core needs a temporal config too: one temporal tile covers these 2 frames
            spatial_config=SpatialTilingConfig(tile_size_in_pixels=64, tile_overlap_in_pixels=32),
            temporal_config=TemporalTilingConfig(tile_size_in_frames=64, tile_overlap_in_frames=24),
        )
        ref_tiles, forward = [], reference.forward
        reference.forward = lambda latent, *a, **k: ref_tiles.append(latent.shape) or forward(latent, *a, **k)
        ref_tiled = torch.cat(list(reference.tiled_decode(z, config)), dim=2)
        del reference.forward
    assert len(ref_tiles) > 1  # ltx-core did tile
    ours_untiled, untiled_calls = _decode_ours(ours, z)
    ours_tiled, tiled_calls = _decode_ours(ours, z, tiles=(64, 32))
    assert len(untiled_calls) == 1 and len(tiled_calls) == height * width  # 2x2-latent tiles at a 1-latent stride
    assert ours_tiled.shape == ref_tiled.shape == ref_untiled.shape
    deltas = {
        "ours tiled vs ltx-core tiled": (ours_tiled - ref_tiled).abs().max().item(),
        "ours tiled vs ours untiled": (ours_tiled - ours_untiled).abs().max().item(),
        "ours untiled vs ltx-core untiled": (ours_untiled - ref_untiled).abs().max().item(),
        "ltx-core tiled vs untiled": (ref_tiled - ref_untiled).abs().max().item(),
    }
    assert all(d <= TOL for d in deltas.values()), deltas


@pytest.mark.parametrize("axis", ["width", "height"])
def test_two_tiles_cross_fade_over_their_overlap(files, axis):
    """Tiles of 3 latent pixels (96 px) at a stride of 2 (64 px) over 4 latent pixels: tile 0 covers latents 0-2,
    tile 1 latents 2-3; the output is tile 0's first 64 px, then 32 px fading linearly from tile 0 (weight
    1 - x/32) to tile 1 (weight x/32), then the rest of tile 1."""
    ours = _ours(files["full"])
    reference = load_reference(files["full"], "video_decoder")
    dim = 4 if axis == "width" else 3
    z = _latent(2, 4, seed=5) if axis == "width" else _latent(4, 2, seed=5)
    tiled, calls = _decode_ours(ours, z, tiles=(96, 64))
    untiled, _ = _decode_ours(ours, z)
    assert len(calls) == 2
    with torch.no_grad():
        first = reference(z.narrow(dim, 0, 3))  # 96 px
        second = reference(z.narrow(dim, 2, 2))  # 64 px, starting at pixel 64
    stride, overlap = 2 * LATENT_PX, LATENT_PX
    weight = (torch.arange(overlap, dtype=torch.float32) / overlap).view(-1, *([1] * (4 - dim)))
    fade = first.narrow(dim, stride, overlap) * (1 - weight) + second.narrow(dim, 0, overlap) * weight
    expected = torch.cat([first.narrow(dim, 0, stride), fade, second.narrow(dim, overlap, overlap)], dim=dim)
    assert tiled.shape == expected.shape == untiled.shape
    delta = (tiled - expected).abs().max().item()
    assert delta <= TOL, f"tiled decode vs ltx-core tiles cross-faded: max|delta| = {delta:.3g}"
    # the tiles do differ from the whole near their borders: this checks the blend, not a no-op
    assert (tiled - untiled).abs().max().item() > 1e-3
