"""A faster decode for diffusers' `AutoencoderKLLTX2Video`: its decoder's own modules and arithmetic, laid out for
cuDNN.

`LTX2VideoDecoder3d.forward` keeps activations in NCDHW; cuDNN's 3D convolutions on Hopper run in NDHWC, so every
convolution transposes its input and output, and every causal convolution first concatenates its padding frames into
a copy of its input. On one H200 at 121 x 1024 x 1536 (LTX-2.3's decoder, bf16) that is 125 ms of transposes and
96 ms of copies in a 1.11 s decode (`benchmarks/profile_forward.py`, run 15). `decode_channels_last` walks the same
modules with:

* activations in `torch.channels_last_3d` (the weights are left as the user holds them);
* each convolution's input written once, into a buffer that already has room for the temporal replicate padding:
  the RMS norm writes its quotient there, the timestep modulation and SiLU run in place on it, the padding frames
  are copied from its first/last frame (the same values `torch.cat` would have placed);
* residual additions in place.

Every op is the one `LTX2VideoDecoder3d` runs, in the same dtype and order (`x / sqrt(mean(x**2) + eps)`, `x * (1 +
scale) + shift`, `silu`, the layer norm of the shortcut, the depth-to-space rearrangement), so outputs equal
`vae.decode` up to the reduction order of the per-pixel channel mean and the convolution algorithm cuDNN picks for
the layout (tests: fp32 within 1e-5 on tiny decoders of both released layouts and 64 random ones; bf16 within
bf16 rounding).

`channels_last_decode_supported(vae)` says when it applies: diffusers' `AutoencoderKLLTX2Video` and decoder classes
as built (no subclass, replaced module or instance-level `decode` / `forward`), one dtype, eval mode, no autograd or
autocast, no noise injection (LTX-Video 0.9's decoders), none of diffusers' own slicing / tiling / framewise
decoding switched on, and no hooks (offload hooks could not load weights the walk bypasses; a user's forward hooks
would not run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_ltx2 import (
    LTX2VideoCausalConv3d,
    LTX2VideoDecoder3d,
    LTX2VideoMidBlock3d,
    LTX2VideoResnetBlock3d,
    LTX2VideoUpBlock3d,
    LTX2VideoUpsampler3d,
    PerChannelRMSNorm,
)

from ..utils.hooks import carries_hooks


__all__ = [
    "channels_last_decode_supported",
    "decode_channels_last",
    "decode_with_noise_generator",
    "injects_decode_noise",
    "noise_generator_decode_supported",
]

_CL = torch.channels_last_3d
_DIFFUSERS_SWITCHES = ("use_slicing", "use_tiling", "use_framewise_decoding")


def _has_hooks(module: torch.nn.Module) -> bool:
    """Offload hooks (accelerate's `_hf_hook`, diffusers' hook registry), a user's forward (pre-)hooks, or an
    instance-level `forward` on `module` or inside it, or global module hooks: code the walk would not run."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks or carries_hooks(module):
        return True
    return any(sub._forward_hooks or sub._forward_pre_hooks or "forward" in vars(sub) for sub in module.modules())


def _resnets(decoder: LTX2VideoDecoder3d):
    yield from decoder.mid_block.resnets
    for block in decoder.up_blocks:
        if block.conv_in is not None:
            yield block.conv_in
        yield from block.resnets


def channels_last_decode_supported(vae) -> bool:
    """Whether `decode_channels_last(vae, ...)` computes what `vae.decode` does (see the module docstring):
    diffusers' `AutoencoderKLLTX2Video` itself (not a subclass, no instance-level `decode`), its decoder's module
    classes as diffusers builds them, one dtype, eval mode, no autograd or autocast, no noise injection, none of
    diffusers' slicing / tiling / framewise decoding, no hooks."""
    from diffusers import AutoencoderKLLTX2Video

    if type(vae) is not AutoencoderKLLTX2Video or "decode" in vars(vae) or "_decode" in vars(vae):
        return False
    decoder = vae.decoder
    if type(decoder) is not LTX2VideoDecoder3d or torch.is_grad_enabled():
        return False
    if torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu"):
        return False
    if any(m.training for m in decoder.modules()) or len({p.dtype for p in decoder.parameters()}) != 1:
        return False
    if any(getattr(vae, switch, False) for switch in _DIFFUSERS_SWITCHES) or _has_hooks(vae):
        return False
    if type(decoder.mid_block) is not LTX2VideoMidBlock3d or type(decoder.norm_out) is not PerChannelRMSNorm:
        return False
    convs = [decoder.conv_in, decoder.conv_out]
    if any(type(block) is not LTX2VideoUpBlock3d for block in decoder.up_blocks):
        return False
    for block in decoder.up_blocks:
        for upsampler in block.upsamplers or ():
            if type(upsampler) is not LTX2VideoUpsampler3d:
                return False
            convs.append(upsampler.conv)
    for resnet in _resnets(decoder):
        if type(resnet) is not LTX2VideoResnetBlock3d or resnet.per_channel_scale1 is not None:
            return False
        if type(resnet.norm1) is not PerChannelRMSNorm or type(resnet.norm2) is not PerChannelRMSNorm:
            return False
        if type(resnet.nonlinearity) is not torch.nn.SiLU or type(resnet.dropout) is not torch.nn.Dropout:
            return False
        convs += [resnet.conv1, resnet.conv2]
    if any(type(conv) is not LTX2VideoCausalConv3d or type(conv.conv) is not torch.nn.Conv3d for conv in convs):
        return False
    return type(decoder.conv_act) is torch.nn.SiLU


# ------------------------------------------------------------------------------------------------ building blocks
def _padded(x: torch.Tensor, conv: LTX2VideoCausalConv3d, causal: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`(buffer, interior, left)`: an uninitialised channels-last buffer with the temporal padding `conv` needs
    around `x`'s frames (`LTX2VideoCausalConv3d`: k - 1 frames before them when causal, (k - 1) / 2 on each side
    otherwise), the view of it where `x`'s frames go, and the count of padding frames before them."""
    k = conv.kernel_size[0]
    left = k - 1 if causal else (k - 1) // 2
    b, c, t, h, w = x.shape
    size = (b, c, t + k - 1 if causal else t + 2 * ((k - 1) // 2), h, w)
    buffer = torch.empty(size, dtype=x.dtype, device=x.device, memory_format=_CL)
    return buffer, buffer[:, :, left : left + t], left


def _conv_padded(buffer: torch.Tensor, interior: torch.Tensor, left: int, conv: LTX2VideoCausalConv3d) -> torch.Tensor:
    """`conv` over `buffer` once its `left` leading and the trailing padding frames repeat the interior's first /
    last frame (the values `LTX2VideoCausalConv3d` concatenates)."""
    right = buffer.shape[2] - interior.shape[2] - left
    if left:
        buffer[:, :, :left] = interior[:, :, :1]
    if right:
        buffer[:, :, buffer.shape[2] - right :] = interior[:, :, -1:]
    return conv.conv(buffer)


def _conv(x: torch.Tensor, conv: LTX2VideoCausalConv3d, causal: bool) -> torch.Tensor:
    """`conv(x, causal)` (its input copied once into the padded buffer, as `torch.cat` copies it)."""
    buffer, interior, left = _padded(x, conv, causal)
    interior.copy_(x)
    return _conv_padded(buffer, interior, left, conv)


def _norm_act_conv(x, norm: PerChannelRMSNorm, shift, scale, conv, causal: bool) -> torch.Tensor:
    """`conv(silu(norm(x) * (1 + scale) + shift))` (no modulation when `scale` is None), the activation written
    straight into the convolution's padded input."""
    buffer, interior, left = _padded(x, conv, causal)
    rms = torch.sqrt(torch.mean(x**2, dim=norm.channel_dim, keepdim=True) + norm.eps)
    torch.div(x, rms, out=interior)
    del rms
    if scale is not None:
        interior.mul_(1 + scale).add_(shift)
    F.silu(interior, inplace=True)
    return _conv_padded(buffer, interior, left, conv)


def _resnet(resnet: LTX2VideoResnetBlock3d, x: torch.Tensor, temb, causal: bool) -> torch.Tensor:
    shift_1 = scale_1 = shift_2 = scale_2 = None
    if resnet.scale_shift_table is not None:
        temb = temb.unflatten(1, (4, -1)) + resnet.scale_shift_table[None, ..., None, None, None]
        shift_1, scale_1, shift_2, scale_2 = temb.unbind(dim=1)
    h = _norm_act_conv(x, resnet.norm1, shift_1, scale_1, resnet.conv1, causal)
    h = _norm_act_conv(h, resnet.norm2, shift_2, scale_2, resnet.conv2, causal)
    if resnet.norm3 is not None:
        x = resnet.norm3(x.movedim(1, -1)).movedim(-1, 1)
    if resnet.conv_shortcut is not None:
        x = resnet.conv_shortcut(x)
    return h.add_(x)


def _depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """`LTX2VideoUpsampler3d`'s rearrangement `b (c s0 s1 s2) t h w -> b c (t s0) (h s1) (w s2)` into a channels-last
    result (the first `s0 - 1` frames are still there)."""
    b, _, t, h, w = x.shape
    s0, s1, s2 = stride
    source = x.reshape(b, -1, s0, s1, s2, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    out = torch.empty((b, source.shape[1], t * s0, h * s1, w * s2), dtype=x.dtype, device=x.device, memory_format=_CL)
    out.unflatten(4, (w, s2)).unflatten(3, (h, s1)).unflatten(2, (t, s0)).copy_(source)
    return out


def _upsample(upsampler: LTX2VideoUpsampler3d, x: torch.Tensor, causal: bool) -> torch.Tensor:
    s0 = upsampler.stride[0]
    residual = None
    if upsampler.residual:
        residual = _depth_to_space(x, upsampler.stride)[:, :, s0 - 1 :]
    h = _depth_to_space(_conv(x, upsampler.conv, causal), upsampler.stride)[:, :, s0 - 1 :]
    if residual is not None:  # `residual.repeat(1, r, 1, 1, 1)` added, as a broadcast over the r channel groups
        h.unflatten(1, (-1, residual.shape[1])).add_(residual[:, None])
    return h


def _block_temb(block, temb, x: torch.Tensor):
    if block.time_embedder is None:
        return temb
    embedded = block.time_embedder(
        timestep=temb.flatten(), resolution=None, aspect_ratio=None, batch_size=x.size(0), hidden_dtype=x.dtype
    )
    return embedded.view(x.size(0), -1, 1, 1, 1)


# ------------------------------------------------------------------------------------------------ the decode
def decode_channels_last(vae, z: torch.Tensor, temb: torch.Tensor | None = None, causal: bool | None = None):
    """`vae.decode(z, temb=temb, causal=causal, return_dict=False)[0]` through the channels-last walk (module
    docstring). The caller checks `channels_last_decode_supported(vae)` first; the result is a contiguous NCDHW
    tensor, as `vae.decode` returns."""
    decoder: LTX2VideoDecoder3d = vae.decoder
    causal = causal or decoder.is_causal
    x = _conv(z.contiguous(memory_format=_CL), decoder.conv_in, causal)
    if decoder.timestep_scale_multiplier is not None:
        temb = temb * decoder.timestep_scale_multiplier

    block_temb = _block_temb(decoder.mid_block, temb, x)
    for resnet in decoder.mid_block.resnets:
        x = _resnet(resnet, x, block_temb, causal)
    for block in decoder.up_blocks:
        if block.conv_in is not None:
            x = _resnet(block.conv_in, x, temb, causal)
        block_temb = _block_temb(block, temb, x)
        for upsampler in block.upsamplers or ():
            x = _upsample(upsampler, x, causal)
        for resnet in block.resnets:
            x = _resnet(resnet, x, block_temb, causal)

    shift = scale = None
    if decoder.time_embedder is not None:
        out_temb = _block_temb(decoder, temb, x).unflatten(1, (2, -1))
        shift, scale = (out_temb + decoder.scale_shift_table[None, ..., None, None, None]).unbind(dim=1)
    x = _norm_act_conv(x, decoder.norm_out, shift, scale, decoder.conv_out, causal)

    p, p_t = decoder.patch_size, decoder.patch_size_t
    b, _, t, h, w = x.shape
    x = x.reshape(b, -1, p_t, p, p, t, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3).contiguous()


# ------------------------------------------------------------------------------------------------ noise injection
def injects_decode_noise(vae) -> bool:
    """Whether `vae` is diffusers' LTX-2 video VAE with noise-injecting resnets in its decoder (`inject_noise`)."""
    from diffusers import AutoencoderKLLTX2Video

    if not isinstance(vae, AutoencoderKLLTX2Video) or type(vae.decoder) is not LTX2VideoDecoder3d:
        return False
    return any(getattr(resnet, "per_channel_scale1", None) is not None for resnet in _resnets(vae.decoder))


def noise_generator_decode_supported(vae, device: torch.device, generator: torch.Generator | None) -> bool:
    """Whether the decode should go through `decode_with_noise_generator`: `vae`'s decoder (diffusers'
    `LTX2VideoDecoder3d`) has noise-injecting resnets (`inject_noise` in the checkpoint's decoder blocks),
    `generator` is None or on `device`, and nothing that `vae.decode` would honour is on (diffusers' slicing /
    tiling / framewise decoding, offload or user hooks)."""
    if not injects_decode_noise(vae):
        return False
    if generator is not None and generator.device.type != torch.device(device).type:
        return False
    return not any(getattr(vae, switch, False) for switch in _DIFFUSERS_SWITCHES) and not _has_hooks(vae)


def decode_with_noise_generator(vae, z: torch.Tensor, temb: torch.Tensor | None, generator: torch.Generator | None):
    """`vae.decode(z, temb)` with `generator` given to the decoder's blocks, as ltx-core's `VideoDecoder` does.

    `LTX2VideoDecoder3d.forward` calls its mid and up blocks without a generator, so noise-injecting resnets draw
    from the global RNG: a seeded decode was not reproducible and not ltx-core's. The blocks and resnets draw in
    the reference's order (per resnet: after conv1, after conv2), so the same generator gives the same noise.
    The steps are `LTX2VideoDecoder3d.forward`'s (diffusers 0.42), with the generator passed.
    """
    decoder = vae.decoder
    causal = decoder.is_causal
    x = decoder.conv_in(z, causal=causal)
    if decoder.timestep_scale_multiplier is not None:
        temb = temb * decoder.timestep_scale_multiplier
    x = decoder.mid_block(x, temb, generator, causal=causal)
    for up_block in decoder.up_blocks:
        x = up_block(x, temb, generator, causal=causal)
    x = decoder.norm_out(x)
    if decoder.time_embedder is not None:
        embedded = decoder.time_embedder(
            timestep=temb.flatten(), resolution=None, aspect_ratio=None, batch_size=x.size(0), hidden_dtype=x.dtype
        )
        embedded = embedded.view(x.size(0), -1, 1, 1, 1).unflatten(1, (2, -1))
        shift, scale = (embedded + decoder.scale_shift_table[None, ..., None, None, None]).unbind(dim=1)
        x = x * (1 + scale) + shift
    x = decoder.conv_out(decoder.conv_act(x), causal=causal)
    p, p_t = decoder.patch_size, decoder.patch_size_t
    b, _, t, h, w = x.shape
    x = x.reshape(b, -1, p_t, p, p, t, h, w).permute(0, 1, 5, 2, 6, 4, 7, 3)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
