"""LTX-2 / LTX-2.3 mel-to-waveform vocoder (HiFi-GAN, BigVGAN-v2 with bandwidth extension)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging

from ..loaders.single_file import (
    KeyTable,
    build_from_state_dict,
    config_section,
    load_component_state_dict,
    read_checkpoint_config,
)
from .vocoder_blocks import HiFiGANGenerator, MelSTFT, UpSample1d, build_generator, run_generator


logger = logging.get_logger(__name__)

__all__ = ["LTX2HiFiGANVocoder", "VOCODER_KEY_TABLE", "vocoder_config_from_original"]

#: Original `vocoder.*` keys -> ours (= diffusers' `LTX2Vocoder` / `LTX2VocoderWithBWE`). Exactly one leading
#: `vocoder.` is stripped, so LTX-2.3's `vocoder.vocoder.*` becomes `vocoder.*`.
VOCODER_KEY_TABLE = KeyTable(
    name="vocoder",
    prefix="vocoder.",
    renames=(
        (r"(^|\.)conv_pre\.", r"\1conv_in."),
        (r"(^|\.)conv_post\.", r"\1conv_out."),
        (r"(^|\.)ups\.", r"\1upsamplers."),
        (r"(^|\.)resblocks\.", r"\1resnets."),
        (r"(^|\.)act_post\.", r"\1act_out."),
        (r"\.downsample\.lowpass\.filter$", ".downsample.filter"),
    ),
)

_GENERATOR_KEYS = (
    "resblock_kernel_sizes",
    "upsample_rates",
    "upsample_kernel_sizes",
    "resblock_dilation_sizes",
    "upsample_initial_channel",
    "resblock",
    "output_sampling_rate",
    "activation",
    "use_tanh_at_final",
    "use_bias_at_final",
    "stereo",
)
_BWE_KEYS = ("input_sampling_rate", "n_fft", "hop_length", "num_mels", "win_length", "win_size", "sampling_rate")
_IGNORED_KEYS = ("apply_final_activation", "fmin", "fmax", "mel_fmin", "mel_fmax")


def _expect(cfg: dict, key: str, expected, where: str) -> None:
    if cfg.get(key) != expected:
        raise ValueError(f"unsupported vocoder layout: {where}{key} is {cfg.get(key)!r}, expected {expected!r}")


def _generator_kwargs(cfg: dict, where: str, final_activation: bool) -> dict:
    unknown = sorted(set(cfg) - set(_GENERATOR_KEYS) - set(_BWE_KEYS) - set(_IGNORED_KEYS))
    if unknown:
        logger.warning(f"vocoder config {where or 'top level'}: keys not used by the reference are ignored: {unknown}")
    amp = cfg.get("resblock", "1") == "AMP1"
    use_tanh = cfg.get("use_tanh_at_final", True)
    return {
        "hidden_channels": int(cfg.get("upsample_initial_channel", 1024)),
        "upsample_kernel_sizes": [int(k) for k in cfg.get("upsample_kernel_sizes", [16, 15, 8, 4, 4])],
        "upsample_factors": [int(r) for r in cfg.get("upsample_rates", [6, 5, 2, 2, 2])],
        "resnet_kernel_sizes": [int(k) for k in cfg.get("resblock_kernel_sizes", [3, 7, 11])],
        "resnet_dilations": [[int(d) for d in ds] for ds in cfg.get("resblock_dilation_sizes", [[1, 3, 5]] * 3)],
        "act_fn": cfg.get("activation", "snake") if amp else "leaky_relu",
        "antialias": amp,
        "final_act_fn": ("tanh" if use_tanh else "clamp") if final_activation else None,
        "final_bias": bool(cfg.get("use_bias_at_final", True)),
    }


def vocoder_config_from_original(section: dict) -> dict:
    """Map the original checkpoint's `config["vocoder"]` metadata to `LTX2HiFiGANVocoder` keyword arguments.

    A flat section is the LTX-2 HiFi-GAN (`resblock "1"`); `{"vocoder": ..., "bwe": ...}` is LTX-2.3's BigVGAN-v2
    with bandwidth extension. Absent keys take ltx-core's defaults; other layouts raise `ValueError`.
    """
    if not isinstance(section, dict):
        raise ValueError(f"vocoder config must be a dict, got {type(section).__name__}")
    if "bwe" not in section:
        _expect(section, "resblock", "1", "")
        _expect(section, "stereo", True, "")
        kwargs = _generator_kwargs(section, "", final_activation=True)
        kwargs["output_sampling_rate"] = int(section.get("output_sampling_rate", 24000))
        kwargs["bandwidth_extension"] = False
        return kwargs
    inner, bwe = section.get("vocoder", {}), section["bwe"]
    for cfg, where in ((inner, "vocoder."), (bwe, "bwe.")):
        _expect(cfg, "resblock", "AMP1", where)
        _expect(cfg, "stereo", True, where)
        _expect(cfg, "activation", "snakebeta", where)
    missing = [
        k for k in ("input_sampling_rate", "output_sampling_rate", "n_fft", "hop_length", "num_mels") if k not in bwe
    ]
    if missing:
        raise ValueError(f"unsupported vocoder layout: bwe section lacks {missing}")
    kwargs = _generator_kwargs(inner, "vocoder.", final_activation=True)
    for key, value in _generator_kwargs(bwe, "bwe.", final_activation=False).items():
        kwargs[f"bwe_{key}"] = value
    kwargs.update(
        bandwidth_extension=True,
        bwe_in_channels=2 * int(bwe["num_mels"]),
        filter_length=int(bwe["n_fft"]),
        hop_length=int(bwe["hop_length"]),
        window_length=int(bwe["n_fft"]),
        num_mel_channels=int(bwe["num_mels"]),
        input_sampling_rate=int(bwe["input_sampling_rate"]),
        output_sampling_rate=int(bwe["output_sampling_rate"]),
    )
    return kwargs


class LTX2HiFiGANVocoder(ModelMixin, ConfigMixin):
    r"""Stereo log-mel `(B, 2, frames, mel_bins)` -> waveform `(B, 2, samples)` in [-1, 1].

    `bandwidth_extension=False` is the LTX-2 HiFi-GAN (24 kHz, leaky ReLU 0.1 inside, 0.01 before `conv_out`, tanh),
    state-dict compatible with diffusers' `LTX2Vocoder`. `bandwidth_extension=True` (the default: the LTX-2.3
    release) is a BigVGAN-v2 generator at `input_sampling_rate`, clamped, followed by the bandwidth extender: causal
    log-mel of its output (checkpoint STFT/mel buffers) -> `bwe_*` generator residual + Hann-sinc upsampled skip,
    clamped, at `output_sampling_rate`; state-dict compatible with diffusers' `LTX2VocoderWithBWE`.
    """

    _no_split_modules = ["HiFiGANResBlock"]

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

        LTX-2: `samples = frames * prod(upsample_factors)`. LTX-2.3: that many samples at `input_sampling_rate`,
        times `output_sampling_rate / input_sampling_rate`.
        """
        if not isinstance(mel, torch.Tensor):
            raise TypeError(f"`mel` must be a torch.Tensor, got {type(mel).__name__}")
        if mel.ndim != 4 or mel.shape[1] * mel.shape[3] != self.config.in_channels:
            raise ValueError(
                f"`mel` must be (batch, channels, frames, mel_bins) with channels * mel_bins = "
                f"{self.config.in_channels}, got shape {tuple(mel.shape)}"
            )
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

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> "LTX2HiFiGANVocoder":
        """Build from an original LTX-2 / LTX-2.3 checkpoint (`vocoder.*` tensors, `config["vocoder"]` metadata).

        Tensors keep the file's dtype unless `torch_dtype` is given.
        """
        config, _ = read_checkpoint_config(path)
        kwargs = vocoder_config_from_original(config_section(config, "vocoder", path))
        state_dict = load_component_state_dict(path, VOCODER_KEY_TABLE, dtype=torch_dtype)
        return build_from_state_dict(cls, kwargs, state_dict, "vocoder")
