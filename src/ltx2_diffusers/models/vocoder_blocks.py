"""Building blocks of the LTX-2 HiFi-GAN / BigVGAN-v2 vocoders.

Module and buffer names follow diffusers' `LTX2Vocoder` / `LTX2VocoderWithBWE` so state dicts are interchangeable;
the numerics follow the ltx-core reference (see tests/test_vocoder.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def kaiser_sinc_filter1d(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass `(1, 1, kernel_size)` (BigVGAN's anti-aliasing filter), normalised to sum 1."""
    half_size = kernel_size // 2
    attenuation = 2.285 * (half_size - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    f32 = {"dtype": torch.float32, "device": "cpu"}  # explicit: constructors may run under another default dtype
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False, **f32)
    if kernel_size % 2 == 0:
        time = torch.arange(-half_size, half_size, **f32) + 0.5
    else:
        time = torch.arange(kernel_size, **f32) - half_size
    if cutoff == 0:
        return torch.zeros(1, 1, kernel_size, **f32)
    x = 2 * cutoff * time
    sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(math.pi * x) / math.pi / x)
    filt = 2 * cutoff * window * sinc
    filt = filt / filt.sum()
    return filt.view(1, 1, kernel_size)


class SnakeBeta(nn.Module):
    """`x + sin²(x·e^α) / (e^β + 1e-9)` with per-channel log-scale α, β (β = α when `use_beta` is False: Snake)."""

    def __init__(self, channels: int, use_beta: bool = True):
        super().__init__()
        self.use_beta = use_beta
        self.alpha = nn.Parameter(torch.zeros(channels))
        if use_beta:
            self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = 1e-9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha.unsqueeze(0).unsqueeze(-1))
        amplitude = torch.exp(self.beta.unsqueeze(0).unsqueeze(-1)) if self.use_beta else alpha
        return x + (1.0 / (amplitude + self.eps)) * torch.sin(x * alpha).pow(2)


class UpSample1d(nn.Module):
    """Integer-ratio upsampling by a transposed depthwise conv with a low-pass filter (replicate-padded ends).

    `window="kaiser"`: BigVGAN's kaiser-sinc filter (a checkpoint buffer). `window="hann"`: the Hann-windowed sinc of
    `torchaudio.functional.resample` (width 6, rolloff 0.99), built in float32 on CPU and kept so.
    """

    def __init__(self, ratio: int = 2, kernel_size: int = 12, window: str = "kaiser"):
        super().__init__()
        self.ratio = ratio
        if window == "hann":
            rolloff, lowpass_width = 0.99, 6
            width = math.ceil(lowpass_width / rolloff)
            self.kernel_size = 2 * width * ratio + 1
            self.pad = width
            self.pad_left = 2 * width * ratio
            self.pad_right = self.kernel_size - ratio
            t = (torch.arange(self.kernel_size, dtype=torch.float32, device="cpu") / ratio - width) * rolloff
            hann = torch.cos(t.clamp(-lowpass_width, lowpass_width) * math.pi / lowpass_width / 2) ** 2
            filt = (torch.sinc(t) * hann * rolloff / ratio).view(1, 1, -1)
        elif window == "kaiser":
            self.kernel_size = kernel_size
            self.pad = kernel_size // ratio - 1
            self.pad_left = self.pad * ratio + (kernel_size - ratio) // 2
            self.pad_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
            filt = kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, kernel_size)
        else:
            raise ValueError(f"`window` must be 'kaiser' or 'hann', got {window!r}")
        if window == "hann":
            # A plain attribute, not a buffer: `model.to(dtype)` must not round it (cast to the input's dtype at use).
            self.filter = filt
        else:
            self.register_buffer("filter", filt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        filt = self.filter.to(dtype=x.dtype, device=x.device).expand(channels, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, filt, stride=self.ratio, groups=channels)
        return x[..., self.pad_left : -self.pad_right]


class DownSample1d(nn.Module):
    """Anti-aliased integer-ratio downsampling: replicate pad, depthwise kaiser-sinc low-pass conv with stride."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels)


class AntiAliasActivation(nn.Module):
    """Upsample ×ratio → activation → downsample ×ratio (BigVGAN `Activation1d`)."""

    def __init__(self, act: nn.Module, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.upsample = UpSample1d(ratio, kernel_size)
        self.act = act
        self.downsample = DownSample1d(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


class HiFiGANResBlock(nn.Module):
    """Three `x += conv2(act2(conv1(act1(x))))` steps: HiFi-GAN ResBlock1 (leaky ReLU) or BigVGAN AMPBlock1 (snake)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilations: tuple[int, ...],
        act_fn: str,
        negative_slope: float,
        antialias: bool,
        antialias_ratio: int,
        antialias_kernel_size: int,
    ):
        super().__init__()
        leaky = act_fn == "leaky_relu"

        def conv(dilation: int) -> nn.Conv1d:
            padding = "same" if leaky else (kernel_size * dilation - dilation) // 2
            return nn.Conv1d(channels, channels, kernel_size, 1, dilation=dilation, padding=padding)

        def act() -> nn.Module:
            module = nn.LeakyReLU(negative_slope) if leaky else SnakeBeta(channels, use_beta=act_fn == "snakebeta")
            return AntiAliasActivation(module, antialias_ratio, antialias_kernel_size) if antialias else module

        self.convs1 = nn.ModuleList([conv(d) for d in dilations])
        self.convs2 = nn.ModuleList([conv(1) for _ in dilations])
        self.acts1 = nn.ModuleList([act() for _ in dilations])
        self.acts2 = nn.ModuleList([act() for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for act1, conv1, act2, conv2 in zip(self.acts1, self.convs1, self.acts2, self.convs2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


def build_generator(
    module: nn.Module,
    *,
    in_channels: int,
    hidden_channels: int,
    out_channels: int,
    upsample_kernel_sizes,
    upsample_factors,
    resnet_kernel_sizes,
    resnet_dilations,
    act_fn: str,
    leaky_relu_negative_slope: float,
    antialias: bool,
    antialias_ratio: int,
    antialias_kernel_size: int,
    final_act_fn: str | None,
    final_bias: bool,
) -> None:
    """Register a mel-to-waveform generator's layers (`conv_in`, `upsamplers`, `resnets`, `act_out`, `conv_out`)."""
    if act_fn not in ("leaky_relu", "snake", "snakebeta"):
        raise ValueError(f"`act_fn` must be 'leaky_relu', 'snake' or 'snakebeta', got {act_fn!r}")
    if final_act_fn not in ("tanh", "clamp", None):
        raise ValueError(f"`final_act_fn` must be 'tanh', 'clamp' or None, got {final_act_fn!r}")
    if len(upsample_kernel_sizes) != len(upsample_factors):
        raise ValueError("`upsample_kernel_sizes` and `upsample_factors` must have the same length")
    if len(resnet_kernel_sizes) != len(resnet_dilations):
        raise ValueError("`resnet_kernel_sizes` and `resnet_dilations` must have the same length")
    module.conv_in = nn.Conv1d(in_channels, hidden_channels, 7, 1, padding=3)
    module.upsamplers = nn.ModuleList()
    module.resnets = nn.ModuleList()
    channels = hidden_channels
    for factor, kernel in zip(upsample_factors, upsample_kernel_sizes):
        module.upsamplers.append(nn.ConvTranspose1d(channels, channels // 2, kernel, factor, (kernel - factor) // 2))
        channels //= 2
        for res_kernel, dilations in zip(resnet_kernel_sizes, resnet_dilations):
            module.resnets.append(
                HiFiGANResBlock(
                    channels,
                    res_kernel,
                    tuple(dilations),
                    act_fn,
                    leaky_relu_negative_slope,
                    antialias,
                    antialias_ratio,
                    antialias_kernel_size,
                )
            )
    if act_fn == "leaky_relu":
        # The reference uses a default `nn.LeakyReLU()` here: slope 0.01, not the 0.1 used everywhere else.
        module.act_out = nn.LeakyReLU(0.01)
    else:
        module.act_out = AntiAliasActivation(SnakeBeta(channels), antialias_ratio, antialias_kernel_size)
    module.conv_out = nn.Conv1d(channels, out_channels, 7, 1, padding=3, bias=final_bias)
    module._generator_spec = (act_fn, leaky_relu_negative_slope, len(resnet_kernel_sizes), final_act_fn)


def run_generator(module: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """Mel `(B, C, frames, bins)` (flattened to `C * bins` input channels) -> waveform `(B, out_channels, samples)`."""
    act_fn, slope, per_stage, final_act_fn = module._generator_spec
    x = module.conv_in(mel.transpose(2, 3).flatten(1, 2))
    for i, upsampler in enumerate(module.upsamplers):
        if act_fn == "leaky_relu":
            x = F.leaky_relu(x, slope)
        x = upsampler(x)
        x = torch.stack([module.resnets[j](x) for j in range(i * per_stage, (i + 1) * per_stage)], dim=0).mean(dim=0)
    x = module.conv_out(module.act_out(x))
    if final_act_fn == "tanh":
        x = torch.tanh(x)
    elif final_act_fn == "clamp":
        x = torch.clamp(x, -1, 1)
    return x


class HiFiGANGenerator(nn.Module):
    """A standalone generator (see `build_generator` for the arguments); used as a sub-module by the BWE variant."""

    def __init__(self, **kwargs):
        super().__init__()
        build_generator(self, **kwargs)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return run_generator(self, mel)


class CausalSTFT(nn.Module):
    """Magnitude STFT as a strided conv with checkpoint DFT×window bases, left-padded by `window - hop` (causal)."""

    def __init__(self, filter_length: int, hop_length: int, window_length: int):
        super().__init__()
        self.hop_length = hop_length
        self.window_length = window_length
        n_freqs = filter_length // 2 + 1
        self.register_buffer("forward_basis", torch.zeros(n_freqs * 2, 1, filter_length))
        self.register_buffer("inverse_basis", torch.zeros(n_freqs * 2, 1, filter_length))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(N, samples)` -> magnitude `(N, n_freqs, frames)`."""
        x = F.pad(waveform.unsqueeze(1), (max(0, self.window_length - self.hop_length), 0))
        spec = F.conv1d(x, self.forward_basis, stride=self.hop_length)
        n_freqs = spec.shape[1] // 2
        real, imag = spec[:, :n_freqs], spec[:, n_freqs:]
        return torch.sqrt(real**2 + imag**2)


class MelSTFT(nn.Module):
    """Causal log-mel `(N, n_mels, frames)` with the checkpoint's mel filterbank `mel_basis (n_mels, n_freqs)`."""

    def __init__(self, filter_length: int, hop_length: int, window_length: int, num_mel_channels: int):
        super().__init__()
        self.stft_fn = CausalSTFT(filter_length, hop_length, window_length)
        self.register_buffer("mel_basis", torch.zeros(num_mel_channels, filter_length // 2 + 1))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        magnitude = self.stft_fn(waveform)
        mel = torch.matmul(self.mel_basis.to(magnitude.dtype), magnitude)
        return torch.log(torch.clamp(mel, min=1e-5))
