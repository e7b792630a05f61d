"""LTX-2 / LTX-2.3 mel-to-waveform vocoder (HiFi-GAN, BigVGAN-v2 with bandwidth extension)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging

from ..loaders.component_save import SafeSaveMixin
from ..loaders.prefetch import ReadAheadWaitMixin
from ..loaders.safetensors_only import SafetensorsOnlyMixin
from ..loaders.single_file_model import FromOriginalCheckpointMixin
from ..validation import MAX_LOG_MEL_ABS, CheckedConfigMixin, check_bounded, is_compute_float
from .vocoder_blocks import HiFiGANGenerator, MelSTFT, UpSample1d, build_generator, run_generator


logger = logging.get_logger(__name__)

__all__ = ["LTX2HiFiGANVocoder"]


class LTX2HiFiGANVocoder(
    SafeSaveMixin,
    SafetensorsOnlyMixin,
    ReadAheadWaitMixin,
    CheckedConfigMixin,
    ModelMixin,
    ConfigMixin,
    FromOriginalCheckpointMixin,
):
    r"""Stereo log-mel `(B, 2, frames, mel_bins)` -> waveform `(B, 2, samples)` in [-1, 1].

    `bandwidth_extension=False` is the LTX-2 HiFi-GAN (24 kHz, leaky ReLU 0.1 inside, 0.01 before `conv_out`, tanh),
    state-dict compatible with diffusers' `LTX2Vocoder`. `bandwidth_extension=True` (the default: the LTX-2.3
    release) is a BigVGAN-v2 generator at `input_sampling_rate`, clamped, followed by the bandwidth extender: causal
    log-mel of its output (checkpoint STFT/mel buffers) -> `bwe_*` generator residual + Hann-sinc upsampled skip,
    clamped, at `output_sampling_rate`; state-dict compatible with diffusers' `LTX2VocoderWithBWE`.
    """

    _no_split_modules = ["HiFiGANResBlock"]
    #: Config keys that must be numbers > 0 (`validation.CheckedConfigMixin`; the model divides or sizes by them).
    _positive_config_keys = (
        "in_channels", "hidden_channels", "out_channels", "upsample_kernel_sizes", "upsample_factors",
        "resnet_kernel_sizes", "resnet_dilations", "antialias_ratio", "antialias_kernel_size", "bwe_in_channels",
        "bwe_hidden_channels", "bwe_out_channels", "bwe_upsample_kernel_sizes", "bwe_upsample_factors",
        "bwe_resnet_kernel_sizes", "bwe_resnet_dilations", "bwe_antialias_ratio", "bwe_antialias_kernel_size",
        "filter_length", "hop_length", "window_length", "num_mel_channels", "input_sampling_rate",
        "output_sampling_rate",
    )  # fmt: skip

    @register_to_config
    def __init__(
        self,
        in_channels: int = 128,
        hidden_channels: int = 1536,
        out_channels: int = 2,
        upsample_kernel_sizes: tuple[int, ...] = (11, 4, 4, 4, 4, 4),
        upsample_factors: tuple[int, ...] = (5, 2, 2, 2, 2, 2),
        resnet_kernel_sizes: tuple[int, ...] = (3, 7, 11),
        resnet_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        act_fn: str = "snakebeta",
        leaky_relu_negative_slope: float = 0.1,
        antialias: bool = True,
        antialias_ratio: int = 2,
        antialias_kernel_size: int = 12,
        final_act_fn: str | None = "clamp",
        final_bias: bool = False,
        bandwidth_extension: bool = True,
        bwe_in_channels: int = 128,
        bwe_hidden_channels: int = 512,
        bwe_out_channels: int = 2,
        bwe_upsample_kernel_sizes: tuple[int, ...] = (12, 11, 4, 4, 4),
        bwe_upsample_factors: tuple[int, ...] = (6, 5, 2, 2, 2),
        bwe_resnet_kernel_sizes: tuple[int, ...] = (3, 7, 11),
        bwe_resnet_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        bwe_act_fn: str = "snakebeta",
        bwe_leaky_relu_negative_slope: float = 0.1,
        bwe_antialias: bool = True,
        bwe_antialias_ratio: int = 2,
        bwe_antialias_kernel_size: int = 12,
        bwe_final_act_fn: str | None = None,
        bwe_final_bias: bool = False,
        filter_length: int = 512,
        hop_length: int = 80,
        window_length: int = 512,
        num_mel_channels: int = 64,
        input_sampling_rate: int = 16000,
        output_sampling_rate: int = 48000,
    ):
        super().__init__()
        self._check_config()
        generator = {
            "in_channels": in_channels,
            "hidden_channels": hidden_channels,
            "out_channels": out_channels,
            "upsample_kernel_sizes": upsample_kernel_sizes,
            "upsample_factors": upsample_factors,
            "resnet_kernel_sizes": resnet_kernel_sizes,
            "resnet_dilations": resnet_dilations,
            "act_fn": act_fn,
            "leaky_relu_negative_slope": leaky_relu_negative_slope,
            "antialias": antialias,
            "antialias_ratio": antialias_ratio,
            "antialias_kernel_size": antialias_kernel_size,
            "final_act_fn": final_act_fn,
            "final_bias": final_bias,
        }
        if not bandwidth_extension:
            build_generator(self, **generator)
            return
        if output_sampling_rate % input_sampling_rate:
            raise ValueError(
                f"`output_sampling_rate` ({output_sampling_rate}) must be a multiple of `input_sampling_rate` "
                f"({input_sampling_rate})"
            )
        if bwe_in_channels != out_channels * num_mel_channels:
            raise ValueError(
                f"`bwe_in_channels` ({bwe_in_channels}) must equal out_channels * num_mel_channels "
                f"({out_channels} * {num_mel_channels})"
            )
        self.vocoder = HiFiGANGenerator(**generator)
        self.bwe_generator = HiFiGANGenerator(
            in_channels=bwe_in_channels,
            hidden_channels=bwe_hidden_channels,
            out_channels=bwe_out_channels,
            upsample_kernel_sizes=bwe_upsample_kernel_sizes,
            upsample_factors=bwe_upsample_factors,
            resnet_kernel_sizes=bwe_resnet_kernel_sizes,
            resnet_dilations=bwe_resnet_dilations,
            act_fn=bwe_act_fn,
            leaky_relu_negative_slope=bwe_leaky_relu_negative_slope,
            antialias=bwe_antialias,
            antialias_ratio=bwe_antialias_ratio,
            antialias_kernel_size=bwe_antialias_kernel_size,
            final_act_fn=bwe_final_act_fn,
            final_bias=bwe_final_bias,
        )
        self.mel_stft = MelSTFT(filter_length, hop_length, window_length, num_mel_channels)
        # Not in the checkpoint: built in float32 on CPU even when the model is created on the meta device.
        self.resampler = UpSample1d(output_sampling_rate // input_sampling_rate, window="hann")

    @property
    def sampling_rate(self) -> int:
        """Sample rate of the returned waveform."""
        return self.config.output_sampling_rate

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # diffusers folders carry no `bandwidth_extension` key: their class name says which variant they hold.
        if "bandwidth_extension" not in config_dict and "bandwidth_extension" not in kwargs:
            name = config_dict.get("_class_name")
            if name in ("LTX2Vocoder", "LTX2VocoderWithBWE"):
                config_dict = {**config_dict, "bandwidth_extension": name == "LTX2VocoderWithBWE"}
                if name == "LTX2VocoderWithBWE" and config_dict.get("final_act_fn", "clamp") is None:
                    logger.warning(
                        "this LTX2VocoderWithBWE config has final_act_fn=None; the LTX-2.3 reference clamps the "
                        "inner vocoder's output to [-1, 1] (final_act_fn='clamp'). Keeping the config as given."
                    )
        return super().extract_init_dict(config_dict, **kwargs)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel `(B, channels, frames, mel_bins)` with `channels * mel_bins == in_channels` -> `(B, 2, samples)`.
        The mel must be finite and within +-`validation.MAX_LOG_MEL_ABS` (100).

        LTX-2: `samples = frames * prod(upsample_factors)`. LTX-2.3: that many samples at `input_sampling_rate`,
        times `output_sampling_rate / input_sampling_rate`.
        """
        if not isinstance(mel, torch.Tensor):
            raise TypeError(f"`mel` must be a torch.Tensor, got {type(mel).__name__}")
        if not is_compute_float(mel):
            raise TypeError(
                f"`mel` must be a floating point tensor of 16 bits or more (a log-mel spectrogram), got dtype {mel.dtype}"
            )
        if mel.ndim != 4 or mel.shape[1] * mel.shape[3] != self.config.in_channels:
            raise ValueError(
                f"`mel` must be (batch, channels, frames, mel_bins) with channels * mel_bins = "
                f"{self.config.in_channels}, got shape {tuple(mel.shape)}"
            )
        if mel.shape[0] == 0 or mel.shape[2] == 0:
            raise ValueError(f"`mel` must hold at least one batch item and one frame, got shape {tuple(mel.shape)}")
        check_bounded([("`mel`", mel)], MAX_LOG_MEL_ABS, "a log-mel spectrogram: log of float32 magnitudes")
        if not self.config.bandwidth_extension:
            return run_generator(self, mel)

        x = self.vocoder(mel)
        batch, channels, length = x.shape
        out_length = length * self.config.output_sampling_rate // self.config.input_sampling_rate
        hop = self.config.hop_length
        if length % hop:
            x = F.pad(x, (0, hop - length % hop))
        bwe_mel = self.mel_stft(x.reshape(batch * channels, -1))
        bwe_mel = bwe_mel.reshape(batch, channels, *bwe_mel.shape[1:]).transpose(2, 3)
        residual = self.bwe_generator(bwe_mel)
        skip = self.resampler(x)
        if residual.shape != skip.shape:
            raise ValueError(
                f"bandwidth extension residual {tuple(residual.shape)} and skip {tuple(skip.shape)} differ: "
                "bwe_upsample_factors must multiply to hop_length * output/input sampling rate ratio"
            )
        return torch.clamp(residual + skip, -1, 1)[..., :out_length]
