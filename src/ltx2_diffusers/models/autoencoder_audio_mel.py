"""LTX-2 audio VAE over log-mel spectrograms, with the waveform front end diffusers lacks.

Config and state dict are those of diffusers' `AutoencoderKLLTX2Audio` (its encoder/decoder blocks are reused as they
are: they match ltx-core bit for bit, see tests/test_audio_vae.py); `n_fft` is the one extra config key.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl_ltx2_audio import LTX2AudioDecoder, LTX2AudioEncoder
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..audio.mel import log_mel_spectrogram
from ..loaders.component_save import SafeSaveMixin
from ..loaders.prefetch import ReadAheadWaitMixin
from ..loaders.safetensors_only import SafetensorsOnlyMixin
from ..loaders.single_file_model import FromOriginalCheckpointMixin
from ..validation import (
    MAX_LOG_MEL_ABS,
    MAX_NORMALISED_INPUT_ABS,
    CheckedConfigMixin,
    check_audio_sample_rate,
    check_bounded,
    is_compute_float,
)


logger = logging.get_logger(__name__)

__all__ = ["AutoencoderAudioMel"]


# What the bounds of `_check_input` are (`validation.check_bounded`).
_LATENT_BOUND = (MAX_NORMALISED_INPUT_ABS, "audio latents, pixel-normalised inside the decoder")
_LOG_MEL_BOUND = (MAX_LOG_MEL_ABS, "a log-mel spectrogram: log(clamp(mel, 1e-5)) of float32 magnitudes")


def _check_input(name: str, x, layout: str, bound, channels: int | None = None, last: int | None = None) -> None:
    """A floating tensor shaped `layout` (channels in dim 1 / the last size when given), at least one frame (the
    last-but-one dim of 4-D inputs, dim 1 of tokens), finite and within `bound` (`(bound, why)`); `TypeError` /
    `ValueError` naming `name`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor {layout}, got {type(x).__name__}")
    if not is_compute_float(x):
        raise TypeError(f"`{name}` must be a floating point tensor of 16 bits or more, got dtype {x.dtype}")
    ndim = 3 if channels is None else 4
    if (
        x.ndim != ndim
        or (channels is not None and x.shape[1] != channels)
        or (last is not None and x.shape[-1] != last)
        or 0 in x.shape
    ):
        frames = x.shape[ndim - 2] if x.ndim == ndim else None
        what = " (no frames)" if frames == 0 else ""
        raise ValueError(f"`{name}` must be {layout} with every size >= 1, got shape {tuple(x.shape)}{what}")
    check_bounded([(f"`{name}`", x)], *bound)


class AutoencoderAudioMel(
    SafeSaveMixin,
    SafetensorsOnlyMixin,
    ReadAheadWaitMixin,
    CheckedConfigMixin,
    ModelMixin,
    AutoencoderMixin,
    ConfigMixin,
    FromOriginalCheckpointMixin,
):
    r"""LTX-2 audio VAE: stereo log-mel `(B, 2, frames, mel_bins)` <-> latents `(B, latent_channels, T, mel_bins / 4)`.

    `encode`/`decode` follow diffusers' `AutoencoderKLLTX2Audio` (raw, un-normalised latents). `encode_waveform` adds
    the reference front end and returns normalised latent tokens `(B, T, latent_channels * latent_mel_bins)`, the
    audio stream's input; `decode_tokens` inverts the normalisation and token layout before decoding.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["LTX2AudioResnetBlock"]
    _skip_layerwise_casting_patterns = ["norm"]
    #: Config keys that must be numbers > 0 (`validation.CheckedConfigMixin`; the model divides or sizes by them).
    _positive_config_keys = (
        "base_channels", "output_channels", "ch_mult", "in_channels", "resolution", "latent_channels", "sample_rate",
        "mel_hop_length", "mel_bins", "n_fft",
    )  # fmt: skip

    @register_to_config
    def __init__(
        self,
        base_channels: int = 128,
        output_channels: int = 2,
        ch_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] | None = None,
        in_channels: int = 2,
        resolution: int = 256,
        latent_channels: int = 8,
        norm_type: str = "pixel",
        causality_axis: str | None = "height",
        dropout: float = 0.0,
        mid_block_add_attention: bool = False,
        sample_rate: int = 16000,
        mel_hop_length: int = 160,
        is_causal: bool = True,
        mel_bins: int | None = 64,
        double_z: bool = True,
        n_fft: int = 1024,
    ) -> None:
        super().__init__()
        self._check_config()
        if causality_axis not in ("none", "width", "height", "width-compatibility"):
            raise ValueError(
                f"`causality_axis` must be 'none', 'width', 'height' or 'width-compatibility', got {causality_axis!r}"
            )
        if norm_type not in ("pixel", "group"):
            raise ValueError(f"`norm_type` must be 'pixel' or 'group', got {norm_type!r}")
        attn = set(attn_resolutions) if attn_resolutions else attn_resolutions
        common = {
            "base_channels": base_channels,
            "output_channels": output_channels,
            "ch_mult": ch_mult,
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": attn,
            "in_channels": in_channels,
            "resolution": resolution,
            "latent_channels": latent_channels,
            "norm_type": norm_type,
            "causality_axis": causality_axis,
            "dropout": dropout,
            "mid_block_add_attention": mid_block_add_attention,
            "sample_rate": sample_rate,
            "mel_hop_length": mel_hop_length,
            "is_causal": is_causal,
            "mel_bins": mel_bins,
        }
        self.encoder = LTX2AudioEncoder(**common, double_z=double_z)
        self.decoder = LTX2AudioDecoder(**common)
        # Per-feature latent statistics, indexed like the tokens (channel * latent_mel_bins + bin); the reference
        # sizes them by `ch` as well.
        self.register_buffer("latents_mean", torch.zeros(base_channels), persistent=True)
        self.register_buffer("latents_std", torch.ones(base_channels), persistent=True)
        self.temporal_compression_ratio = 4
        self.mel_compression_ratio = 4
        self.use_slicing = False

    # ----------------------------------------------------------------------------------------- diffusers API
    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Log-mel `(B, in_channels, frames, mel_bins)` (finite, within +-`validation.MAX_LOG_MEL_ABS`) -> posterior
        over raw latents."""
        _check_input(
            "x", x, "(batch, in_channels, frames, mel_bins)", _LOG_MEL_BOUND, self.config.in_channels,
            self.config.mel_bins,
        )  # fmt: skip
        if self.use_slicing and x.shape[0] > 1:
            h = torch.cat([self.encoder(s) for s in x.split(1)])
        else:
            h = self.encoder(x)
        if self.config.double_z:
            posterior = DiagonalGaussianDistribution(h)
        else:  # the encoder yields the latents only: a point posterior at them (a 1-channel `h` cannot be halved)
            posterior = DiagonalGaussianDistribution(torch.cat([h, torch.zeros_like(h)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Raw latents `(B, latent_channels, T, mel_bins / 4)` (finite, within
        +-`validation.MAX_NORMALISED_INPUT_ABS`) -> mel `(B, output_channels, max(4T - 3, 1), mel_bins)`."""
        _check_input(
            "z", z, "(batch, latent_channels, frames, latent_mel_bins)", _LATENT_BOUND, self.config.latent_channels
        )
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self.decoder(s) for s in z.split(1)])
        else:
            decoded = self.decoder(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    # ------------------------------------------------------------------------------- tokens and statistics
    @staticmethod
    def patchify_latents(latents: torch.Tensor) -> torch.Tensor:
        """`(B, C, T, F)` -> tokens `(B, T, C * F)` (feature index `c * F + f`, the reference AudioPatchifier order)."""
        if latents.ndim != 4:
            raise ValueError(f"`latents` must be (batch, channels, frames, bins), got shape {tuple(latents.shape)}")
        b, c, t, f = latents.shape
        return latents.permute(0, 2, 1, 3).reshape(b, t, c * f)

    def unpatchify_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens `(B, T, C * F)` -> latents `(B, C, T, F)` with `C = latent_channels`."""
        c = self.config.latent_channels
        if tokens.ndim != 3 or tokens.shape[-1] % c:
            raise ValueError(f"`tokens` must be (batch, frames, {c} * bins), got shape {tuple(tokens.shape)}")
        b, t, d = tokens.shape
        return tokens.reshape(b, t, c, d // c).permute(0, 2, 1, 3)

    def _check_stats(self, tokens: torch.Tensor) -> None:
        if tokens.shape[-1] != self.latents_mean.shape[0]:
            raise ValueError(
                f"`tokens` have {tokens.shape[-1]} features but the latent statistics have {self.latents_mean.shape[0]}"
                " (latent_channels * latent mel bins must equal base_channels)"
            )

    def normalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(tokens - latents_mean) / latents_std`, statistics cast to the tokens' dtype first (as the reference)."""
        self._check_stats(tokens)
        return (tokens - self.latents_mean.to(tokens)) / self.latents_std.to(tokens)

    def denormalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens * latents_std + latents_mean`, statistics cast to the tokens' dtype first (as the reference)."""
        self._check_stats(tokens)
        return tokens * self.latents_std.to(tokens) + self.latents_mean.to(tokens)

    # ------------------------------------------------------------------------------------- waveform front end
    def waveform_to_mel(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Log-mel `(B, C, frames, mel_bins)` of a floating waveform `[C, S]` or `[B, C, S]` (finite samples in
        [-1, 1], refused beyond +-`validation.MAX_WAVEFORM_ABS`; integer PCM is refused: `load_audio` scales it) at
        `sample_rate`, a whole number of Hz in [100, 384000].

        Resampled to `config.sample_rate` and analysed exactly as the reference AudioProcessor; float32 out.
        """
        if not isinstance(waveform, torch.Tensor):
            raise TypeError(f"`waveform` must be a torch.Tensor, got {type(waveform).__name__}")
        if not is_compute_float(waveform):
            raise TypeError(
                f"`waveform` must be a floating point tensor (16 bits or more) of samples in [-1, 1], got dtype {waveform.dtype} "
                "(integer PCM: read it with load_audio, which scales it)"
            )
        if waveform.ndim == 2:
            waveform = waveform.unsqueeze(0)
        if waveform.ndim != 3:
            raise ValueError(
                f"`waveform` must be [channels, samples] or [batch, channels, samples], got {tuple(waveform.shape)}"
            )
        if self.config.mel_bins is None:
            raise ValueError("this model's config has mel_bins=None; the mel front end needs a bin count")
        sample_rate = check_audio_sample_rate(sample_rate, "sample_rate")
        waveform = waveform.to(dtype=torch.float32)  # stays on its device (offloaded models report meta)
        return log_mel_spectrogram(  # which refuses NaN, inf and samples beyond validation.MAX_WAVEFORM_ABS
            waveform,
            sample_rate,
            target_sample_rate=self.config.sample_rate,
            n_fft=self.config.n_fft,
            hop_length=self.config.mel_hop_length,
            n_mels=self.config.mel_bins,
        )

    def encode_waveform(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Normalised latent tokens `(B, T, latent_channels * latent_mel_bins)` of a waveform `[C, S]`/`[B, C, S]`.

        Mono is duplicated to the model's input channels. The latent means are patchified and normalised with the
        checkpoint statistics, as the reference `encode_audio` does; T is every latent frame the encoder yields.
        """
        mel = self.waveform_to_mel(waveform, sample_rate)
        channels = mel.shape[1]
        if channels != self.config.in_channels:
            if channels != 1:
                raise ValueError(
                    f"`waveform` has {channels} channels; the model takes {self.config.in_channels} (or mono)"
                )
            mel = mel.expand(-1, self.config.in_channels, -1, -1)
        h = self.encode(mel.to(self.dtype)).latent_dist.mean
        if not self.config.double_z:
            # The reference keeps `torch.chunk(encoder output, 2, dim=1)[0]` whatever `double_z` says.
            h = h[:, : (h.shape[1] + 1) // 2]
        return self.normalize_tokens(self.patchify_latents(h))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised latent tokens `(B, T, D)` -> log-mel `(B, output_channels, max(4T - 3, 1), mel_bins)`."""
        _check_input("tokens", tokens, "(batch, frames, features)", _LATENT_BOUND)
        return self.decode(self.unpatchify_tokens(self.denormalize_tokens(tokens))).sample
