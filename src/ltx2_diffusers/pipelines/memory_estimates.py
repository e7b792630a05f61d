"""Activation estimates of the memory tiers (`memory.py`): one transformer forward, the video decoder's whole decode
(`vae.decode`, or the channels-last walk of `models.video_vae_decode`) and its tiled decodes (ltx-core's
`enable_vae_tiling`, or diffusers' own VAE tiling), in bytes. Pure functions of the configs and sizes."""

from __future__ import annotations

import math


# Video decoder activations, in tensors of its largest stage (see `decoder_activation_bytes`).
DECODER_LIVE_TENSORS = 7
WALK_LIVE_TENSORS = 4.25  # the same for the channels-last walk (see `walk_activation_bytes`)
FLOAT32_BYTES = 4


def transformer_activation_bytes(config, batch: int, video_tokens: int, audio_tokens: int, text_tokens: int,
                                 dtype_bytes: int) -> int:  # fmt: skip
    """Activation bytes of one transformer forward as the pipeline runs it (per-token timesteps, per-item
    cross-modal timesteps: `use_cross_timestep=True`; memory-efficient attention: no T x T scores).

    Per video token and item `b * D * (k + r + 12) + max(12 * D, 2 * b * F)` bytes, plus `b * (D + C)` per video
    token once (the rotary tables), with `b = dtype_bytes`,
    `D = num_attention_heads * attention_head_dim`, `k` the rows of the per-token timestep embedding (9 with
    `cross_attn_mod`, else 6), `r` the text cross-attention modulation rows (3 with `cross_attn_mod`), `F = 4 * D`
    the feed-forward width and `C = audio_cross_attention_dim`. Traced at the peak: the timestep embedding (k
    rows), the block's modulation (6 rows) and text cross-attention modulation (r rows), six hidden-width tensors
    (input projection, embedded timestep, residual stream, attention output, modulated input, query projection),
    the rotary tables (D, and C for the cross-modal ones; computed for ONE item, since the pipeline passes one
    item's coordinates expanded over the batch), and the larger of the float32 RMS-norm temporaries of a query
    (3 x D x 4 bytes) and the feed-forward projection and activation (2F). The same per audio token with the audio
    widths (`audio_num_attention_heads * audio_attention_head_dim`, `audio_cross_attn_mod`); the text contexts
    `3 * text_tokens * (D + D_audio) * b`. Times `batch`, the rotary tables once."""

    def per_token(width, cross_mod):
        rows = (9 + 3) if cross_mod else 6
        return dtype_bytes * width * (rows + 12) + max(12 * width, 2 * dtype_bytes * 4 * width)

    video_width = config.num_attention_heads * config.attention_head_dim
    audio_width = config.audio_num_attention_heads * config.audio_attention_head_dim
    cross = config.audio_cross_attention_dim
    per_item = (
        video_tokens * per_token(video_width, config.cross_attn_mod)
        + audio_tokens * per_token(audio_width, config.audio_cross_attn_mod)
        + 3 * text_tokens * (video_width + audio_width) * dtype_bytes
    )
    rotary = dtype_bytes * (video_tokens * (video_width + cross) + audio_tokens * (audio_width + cross))
    return batch * per_item + rotary


def _decoder_stages(config, frames: int, height: int, width: int):
    """`(channels, frames, height, width)` of every stage of diffusers' LTX-2 video decoder for a latent of that
    size: conv_in / mid block, then each up block after its upsampler (x2 in space for "spatial" and
    "spatiotemporal", `2f - 1` frames for "temporal" and "spatiotemporal"), then the unpatchified output."""
    channels = tuple(reversed(config.decoder_block_out_channels))
    factors = tuple(reversed(config.upsample_factor))
    scaling = config.decoder_spatio_temporal_scaling
    scaling = tuple(reversed(scaling)) if isinstance(scaling, (tuple, list)) else (scaling,) * len(channels)
    shapes = [(channels[0], frames, height, width)]
    for i, kind in enumerate(config.upsample_type[: len(channels)]):
        if scaling[i]:
            if kind in ("spatial", "spatiotemporal"):
                height, width = 2 * height, 2 * width
            if kind in ("temporal", "spatiotemporal"):
                frames = 2 * frames - 1
        shapes.append((channels[i] // factors[i], frames, height, width))
    patch = config.patch_size
    shapes.append((config.out_channels, frames, height * patch, width * patch))
    return shapes


def decoder_activation_bytes(config, frames: int, height: int, width: int, dtype_bytes: int) -> tuple[int, int]:
    """`(peak, output)` bytes of one whole decode of a `(frames, height, width)` latent.

    `peak = DECODER_LIVE_TENSORS * S * dtype_bytes` with `S` the element count of the largest decoder stage
    (`_decoder_stages`): at a resnet of that stage its input (the residual), the normalised activation, the
    padded convolution input and the convolution output are live with part of the stage before (traced: 4.5 S for
    LTX-2.3's decoder, 5.3 S for LTX-2's reflect-padded one), plus the convolutions' workspace (measured on an
    H200: 18.6 GiB = 6.6 S at 121 x 1024 x 1536 with LTX-2.3). `output`: the decoded video's elements."""
    shapes = _decoder_stages(config, frames, height, width)
    largest = max(c * f * h * w for c, f, h, w in shapes[:-1])
    c, f, h, w = shapes[-1]
    return DECODER_LIVE_TENSORS * largest * dtype_bytes, c * f * h * w


def walk_activation_bytes(config, frames: int, height: int, width: int, dtype_bytes: int) -> tuple[int, int]:
    """`(peak, output)` bytes of one whole decode through the channels-last walk (`models.video_vae_decode`).

    At a resnet of a stage of `n` elements and `f` frames the walk keeps its input (the residual; after a temporal
    upsampler a view of a tensor that still holds the frame it drops: at most `n (f + 1) / f`), the first
    convolution's output, the second's input (written once into a buffer with room for the 2 padding frames of the
    3-frame kernels: `n (f + 2) / f`, the norm, modulation and SiLU in place) and its output (the residual added in
    place); a spatial padding other than zeros (LTX-2's reflect) adds `Conv3d`'s padded copy of that buffer. So
    `peak = (WALK_LIVE_TENSORS - 2) n + n (f + 1) / f + (1 + copy) n_padded` at the stage where that is largest,
    or at `conv_out` its input, padded input and output `O`, then `2 O` (the unpatchified copy), if larger.
    `WALK_LIVE_TENSORS`: those 4 tensors plus the convolutions' workspace, calibrated on an H200 at
    121 x 1024 x 1536 with LTX-2.3 in bf16: 12.82 GiB peak less the VAE's 1.35 GiB of weights, 11.47 GiB = 4.04
    tensors of the largest stage (traced live: 4.02; `benchmarks/profile_forward.py` run 16), rounded up to 4.25."""
    shapes = _decoder_stages(config, frames, height, width)
    copy = int(getattr(config, "decoder_spatial_padding_mode", "zeros") != "zeros")
    # Each stage's residual (with the dropped frame) and padded convolution input(s).
    live = [(c * (f + 1) * h * w, (1 + copy) * c * (f + 2) * (h + 2 * copy) * (w + 2 * copy)) for c, f, h, w in shapes]
    stage = max((WALK_LIVE_TENSORS - 2) * math.prod(s) + r + p for s, (r, p) in zip(shapes[:-1], live))
    output = math.prod(shapes[-1])
    last = math.prod(shapes[-2]) + live[-2][1] + output
    return math.ceil(max(stage, last, 2 * output) * dtype_bytes), output


def ltx_tiled_decode_bytes(vae, frames: int, height: int, width: int, tiling) -> int:
    """Activation bytes of `LTX2PipelineBase.decode` under `enable_vae_tiling` (ltx-core's tiled decode,
    `models.video_vae_tiling.tiled_decode`) for a `(frames, height, width)` latent and a `VideoTilingConfig`: the
    decoder's peak on the plan's largest tile, while the blend buffers are live (the video and its weights, one
    temporal row and its weights, all in the VAE dtype; the tile times its mask), or the rescaling of the output
    (the video in the VAE dtype and two float32 copies), whichever is larger."""
    from ..models.video_vae_tiling import plan_tiles

    config, size = vae.config, vae.dtype.itemsize
    plan = plan_tiles((frames, height, width), tiling)
    whole_peak, output = decoder_activation_bytes(config, frames, height, width, size)
    rescale = output * (size + 2 * FLOAT32_BYTES)
    if len(plan) == 1:
        return max(whole_peak, rescale)
    tile_peak, tile_out = decoder_activation_bytes(config, *plan.largest_tile, size)
    out_frames, out_height, out_width = plan.output_size
    pixels = out_frames * out_height * out_width
    row_frames = max(t.out_stop - t.out_start for t in plan.frames)
    row = row_frames * out_height * out_width
    channels = output // pixels
    buffers = (pixels + row) * (channels + 1) * size + 2 * tile_out * size
    return max(tile_peak + buffers, rescale)


def decode_bytes(vae, frames: int, height: int, width: int, tiled: bool, walk: bool = False) -> int:
    """Activation bytes of `LTX2PipelineBase.decode` for a `(frames, height, width)` latent: the decoder's peak
    (whole: `vae.decode`'s, or with `walk` the channels-last walk's; or per tile of the VAE's own tile settings,
    with the decoded tiles kept until they are blended and the blended rows and video concatenated: diffusers'
    `tiled_decode`), or the rescaling of the output (the video in the VAE dtype and two float32 copies), whichever
    is larger."""
    config, size = vae.config, vae.dtype.itemsize
    peak, output = (walk_activation_bytes if walk else decoder_activation_bytes)(config, frames, height, width, size)
    rescale = output * (size + 2 * FLOAT32_BYTES)
    ratio = vae.spatial_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    if not tiled or (height <= tile_h and width <= tile_w):
        return max(peak, rescale)
    stride_h, stride_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    tiles, tile_peak = 0, 0
    for i in range(0, height, stride_h):
        for j in range(0, width, stride_w):
            h, w = min(tile_h, height - i), min(tile_w, width - j)
            peak, out = decoder_activation_bytes(config, frames, h, w, size)
            tiles, tile_peak = tiles + out * size, max(tile_peak, peak)
    return max(tile_peak + tiles, tiles + 2 * output * size, rescale)
