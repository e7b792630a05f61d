"""Tiled decoding of LTX-2 video latents, as ltx-core decodes them (`VideoDecoder.tiled_decode` with a `TilingConfig`,
which the reference CLI uses with `TilingConfig.default()`).

The latent `(B, C, F, H, W)` is cut into a grid of overlapping tiles, each decoded on its own:
- in space, the longer side gets tiles of `tile_size_in_pixels` (in latent pixels of 32) and the shorter side tiles
  scaled by the aspect ratio; neighbours overlap by `tile_overlap_in_pixels`;
- in time, tiles of `tile_size_in_frames` (in latent frames of 8) overlapping by `tile_overlap_in_frames`; every tile
  after the first starts one latent frame earlier (the causal decoder turns a tile's first latent frame into a single
  frame, which gets no weight).
Each decoded tile is weighted by a separable trapezoid (linear ramps over the overlaps), the weighted tiles and the
weights are summed, and the sum is divided by the weights (clamped at 1e-8). The sums run in the latents' dtype,
one temporal row of tiles at a time, as in ltx-core, so that bf16 decodes agree bit for bit as well.

Memory: the decoder only ever sees one tile (`TilePlan.largest_tile`); besides the decoded video itself, the blend
keeps one temporal row of tiles and one weight per output pixel.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


TEMPORAL_SCALE = 8  # output frames per latent frame (the first latent frame decodes to one frame)
SPATIAL_SCALE = 32  # output pixels per latent pixel
MIN_TOTAL_WEIGHT = 1e-8


@dataclass(frozen=True)
class VideoTilingConfig:
    """Tile sizes and overlaps of a tiled video decode; the defaults are ltx-core's `TilingConfig.default()` (the
    reference CLI's). A size of None leaves that axis (space or time) in one piece.

    Args:
        tile_size_in_pixels: tile size along the longer side, a multiple of 32, at least 64.
        tile_overlap_in_pixels: overlap of neighbouring tiles, a multiple of 32, smaller than the tile.
        tile_size_in_frames: tile length in frames, a multiple of 8, at least 16.
        tile_overlap_in_frames: overlap of consecutive tiles in frames, a multiple of 8, smaller than the tile.
    """

    tile_size_in_pixels: int | None = 512
    tile_overlap_in_pixels: int = 64
    tile_size_in_frames: int | None = 64
    tile_overlap_in_frames: int = 24

    def __post_init__(self):
        spatial = _checked_size("tile_size_in_pixels", self.tile_size_in_pixels, SPATIAL_SCALE, 64)
        temporal = _checked_size("tile_size_in_frames", self.tile_size_in_frames, TEMPORAL_SCALE, 16)
        if spatial is None and temporal is None:
            raise ValueError("tile_size_in_pixels and tile_size_in_frames are both None: nothing would be tiled")
        object.__setattr__(self, "tile_size_in_pixels", spatial)
        object.__setattr__(self, "tile_size_in_frames", temporal)
        for name, size, scale in (
            ("tile_overlap_in_pixels", spatial, SPATIAL_SCALE),
            ("tile_overlap_in_frames", temporal, TEMPORAL_SCALE),
        ):
            object.__setattr__(self, name, _checked_overlap(name, getattr(self, name), scale, size))


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _checked_size(name: str, value, multiple: int, minimum: int) -> int | None:
    if value is None:
        return None
    value = _integer(name, value)
    if value < minimum or value % multiple:
        raise ValueError(f"{name} must be a multiple of {multiple} and at least {minimum}, got {value}")
    return value


def _checked_overlap(name: str, value, multiple: int, size: int | None) -> int:
    value = _integer(name, value)
    if value < 0 or value % multiple:
        raise ValueError(f"{name} must be a non-negative multiple of {multiple}, got {value}")
    if size is not None and value >= size:
        raise ValueError(f"{name} ({value}) must be smaller than the tile ({size})")
    return value


# ------------------------------------------------------------------------------------------------- tile planning
@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis: latent `[start, stop)` decodes to output `[out_start, out_stop)`, weighted by linear
    ramps over its first `left_ramp` and last `right_ramp` output samples (a time ramp starts at weight 0)."""

    start: int
    stop: int
    out_start: int
    out_stop: int
    left_ramp: int = 0
    right_ramp: int = 0
    ramp_from_zero: bool = False

    @property
    def latent(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def out(self) -> slice:
        return slice(self.out_start, self.out_stop)

    def weights(self) -> torch.Tensor:
        return ramp_weights(self.out_stop - self.out_start, self.left_ramp, self.right_ramp, self.ramp_from_zero)


def ramp_weights(length: int, left: int, right: int, from_zero: bool = False) -> torch.Tensor:
    """float32 weights `(length,)`: 1, rising linearly over the first `left` samples and falling over the last `right`
    (both multiplied where they meet). The ramps exclude their end points (0 and 1), except that a `from_zero` left
    ramp starts at 0."""
    weights = torch.ones(length)
    left, right = min(max(left, 0), length), min(max(right, 0), length)
    if left:
        weights[:left] *= (
            torch.linspace(0.0, 1.0, left + 1)[:-1] if from_zero else torch.linspace(0, 1, left + 2)[1:-1]
        )
    if right:
        weights[length - right :] *= torch.linspace(1.0, 0.0, right + 2)[1:-1]
    return weights.clamp_(0, 1)


def split_axis(length: int, size: int, overlap: int) -> tuple[tuple[int, int, int, int], ...]:
    """`(start, stop, left overlap, right overlap)` of tiles of `size` covering `[0, length)`, consecutive tiles
    `size - overlap` apart; the last tile ends at `length`. One tile when `length <= size`."""
    if length <= size:
        return ((0, length, 0, 0),)
    stride = size - overlap
    count = (length - overlap + stride - 1) // stride
    starts = [i * stride for i in range(count)]
    stops = [start + size for start in starts[:-1]] + [length]
    return tuple(
        (start, stop, overlap if i else 0, overlap if i < count - 1 else 0)
        for i, (start, stop) in enumerate(zip(starts, stops))
    )


def spatial_tiles(length: int, long_side: int, config: VideoTilingConfig) -> tuple[AxisTile, ...]:
    """Tiles of one spatial axis of `length` latent pixels; the longer side (`long_side`) gets the configured size,
    the other side a size scaled by the aspect ratio (never below the overlap + 1, nor below 2)."""
    if config.tile_size_in_pixels is None:
        return (AxisTile(0, length, 0, length * SPATIAL_SCALE),)
    size, overlap = config.tile_size_in_pixels // SPATIAL_SCALE, config.tile_overlap_in_pixels // SPATIAL_SCALE
    size = max(2, overlap + 1, round(size * length / long_side))
    return tuple(
        AxisTile(start, stop, start * SPATIAL_SCALE, stop * SPATIAL_SCALE, left * SPATIAL_SCALE, right * SPATIAL_SCALE)
        for start, stop, left, right in split_axis(length, size, overlap)
    )


def temporal_tiles(length: int, config: VideoTilingConfig) -> tuple[AxisTile, ...]:
    """Tiles of the time axis of `length` latent frames. A tile of latent frames `[a, b)` decodes to
    `8 (b - a - 1) + 1` frames, placed from frame `8 a`; tiles after the first start one latent frame early and ramp
    in over one more latent frame, from weight 0 (that first decoded frame stands for the 8 before it)."""
    if config.tile_size_in_frames is None or length <= config.tile_size_in_frames // TEMPORAL_SCALE:
        return (AxisTile(0, length, 0, _frames(length)),)
    size, overlap = config.tile_size_in_frames // TEMPORAL_SCALE, config.tile_overlap_in_frames // TEMPORAL_SCALE
    tiles = []
    for start, stop, left, right in split_axis(length, size, overlap):
        if start:
            start, left = start - 1, left + 1
        left_frames = 1 + (left - 1) * TEMPORAL_SCALE if left else 0
        tiles.append(
            AxisTile(start, stop, start * TEMPORAL_SCALE, _frames(stop), left_frames, right * TEMPORAL_SCALE, True)
        )
    return tuple(tiles)


def _frames(latent_frames: int) -> int:
    return (latent_frames - 1) * TEMPORAL_SCALE + 1


@dataclass(frozen=True)
class TilePlan:
    """The tile grid of one latent: every (frames, rows, columns) combination is one tile."""

    frames: tuple[AxisTile, ...]
    rows: tuple[AxisTile, ...]
    columns: tuple[AxisTile, ...]

    def __len__(self) -> int:
        return len(self.frames) * len(self.rows) * len(self.columns)

    def __iter__(self) -> Iterator[tuple[AxisTile, AxisTile, AxisTile]]:
        """Tiles in decoding order (ltx-core's): time, then rows, then columns."""
        return ((t, h, w) for t in self.frames for h in self.rows for w in self.columns)

    @property
    def output_size(self) -> tuple[int, int, int]:
        return self.frames[-1].out_stop, self.rows[-1].out_stop, self.columns[-1].out_stop

    @property
    def largest_tile(self) -> tuple[int, int, int]:
        """The largest latent `(frames, height, width)` the decoder is given."""
        return tuple(max(tile.stop - tile.start for tile in axis) for axis in (self.frames, self.rows, self.columns))


def plan_tiles(latent_size: tuple[int, int, int], config: VideoTilingConfig) -> TilePlan:
    """The tiles of a latent of `(frames, height, width)`, each a count >= 1 (ValueError naming the axis)."""
    for axis, value in zip(("frames", "height", "width"), latent_size):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"latent {axis} must be an int >= 1 to plan tiles, got {value!r} (latent {latent_size})")
    frames, height, width = latent_size
    long_side = max(height, width)
    return TilePlan(
        temporal_tiles(frames, config),
        spatial_tiles(height, long_side, config),
        spatial_tiles(width, long_side, config),
    )


# ------------------------------------------------------------------------------------------------- decoding
def tile_mask(t: AxisTile, h: AxisTile, w: AxisTile) -> torch.Tensor:
    """The separable float32 weight `(1, 1, frames, height, width)` of one tile."""
    return (t.weights().view(-1, 1, 1) * h.weights().view(1, -1, 1) * w.weights().view(1, 1, -1))[None, None]


def blend_tile(buffer: torch.Tensor, weights: torch.Tensor, tile: torch.Tensor, mask: torch.Tensor, region) -> None:
    """Add `tile` weighted by `mask` into `buffer[region]` and the mask into `weights[region]`."""
    mask = mask.to(device=buffer.device, dtype=buffer.dtype)
    buffer[region] += tile * mask
    weights[region] += mask


def tiled_decode(
    decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, config: VideoTilingConfig
) -> torch.Tensor:
    """The video `(B, c, 8 (F - 1) + 1, 32 H, 32 W)` of `latents` `(B, C, F, H, W)`, decoded tile by tile with `decode`
    (latent tile -> video tile; called in ltx-core's tile order, so per-tile noise draws match) and blended."""
    plan = plan_tiles(tuple(latents.shape[2:]), config)
    if len(plan) == 1:
        return decode(latents)
    frames, height, width = plan.output_size
    video = weights = None
    for t in plan.frames:
        row = row_weights = None  # the tiles of this temporal slice, summed from zero (ltx-core's order of sums)
        for h in plan.rows:
            for w in plan.columns:
                tile = decode(latents[:, :, t.latent, h.latent, w.latent])
                expected = (t.out_stop - t.out_start, h.out_stop - h.out_start, w.out_stop - w.out_start)
                if tuple(tile.shape[2:]) != expected:
                    raise RuntimeError(f"the decoder made a tile of {tuple(tile.shape[2:])}, expected {expected}")
                if row is None:
                    row = latents.new_zeros(tile.shape[0], tile.shape[1], expected[0], height, width)
                    row_weights = latents.new_zeros(1, 1, expected[0], height, width)
                blend_tile(
                    row, row_weights, tile, tile_mask(t, h, w), (slice(None), slice(None), slice(None), h.out, w.out)
                )
        if video is None:
            video = latents.new_zeros(row.shape[0], row.shape[1], frames, height, width)
            weights = latents.new_zeros(1, 1, frames, height, width)
        video[:, :, t.out] += row
        weights[:, :, t.out] += row_weights
        del row, row_weights
    return video.div_(weights.clamp_(min=MIN_TOTAL_WEIGHT))
