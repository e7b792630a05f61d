"""`FromOriginalCheckpointMixin`: `from_single_file` for our own models, provided from `loaders/`.

As diffusers' `FromOriginalModelMixin` (in `diffusers.loaders`) does for its models, the model classes inherit this
mixin and know nothing of the checkpoint format: each class is registered below with its component's loading
function and metadata -> config mapping, which live with its key table in `loaders/single_file_<component>.py`.
Components whose model is diffusers' own class (video VAE, text connectors, latent upsampler) are loaded by the
`load_*_from_single_file` functions of their modules instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .single_file_audio_vae import audio_vae_config_from_original, audio_vae_from_single_file
from .single_file_transformer import transformer_config_from_original, transformer_from_single_file
from .single_file_vocoder import vocoder_config_from_original, vocoder_from_single_file


__all__ = ["FromOriginalCheckpointMixin", "OriginalFormat", "ORIGINAL_FORMATS"]


@dataclass(frozen=True)
class OriginalFormat:
    """How one model class is read from an original single-file checkpoint.

    - `load(model_cls, path, torch_dtype)`: the model built from the file, in eval mode.
    - `config_from_original(section)`: the model's config from its section of the checkpoint metadata.
    """

    load: Callable
    config_from_original: Callable[[dict], dict]


#: Model class name -> its original format (looked up along the class's MRO, so subclasses inherit it).
ORIGINAL_FORMATS: dict[str, OriginalFormat] = {
    "LTX2AudioVideoTransformer": OriginalFormat(transformer_from_single_file, transformer_config_from_original),
    "AutoencoderAudioMel": OriginalFormat(audio_vae_from_single_file, audio_vae_config_from_original),
    "LTX2HiFiGANVocoder": OriginalFormat(vocoder_from_single_file, vocoder_config_from_original),
}


def _original_format(cls) -> OriginalFormat:
    for klass in cls.__mro__:
        if klass.__name__ in ORIGINAL_FORMATS:
            return ORIGINAL_FORMATS[klass.__name__]
    raise ValueError(
        f"{cls.__name__} has no registered original single-file format (known: {sorted(ORIGINAL_FORMATS)})"
    )


class FromOriginalCheckpointMixin:
    """`from_single_file` and `config_from_original` for a model class registered in `ORIGINAL_FORMATS`."""

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None):
        """Load this component of an original LTX-2 / LTX-2.3 single-file checkpoint (config from its metadata).

        Other components in the file are ignored; keys are checked strictly; tensors keep the file's dtype unless
        `torch_dtype` is given.
        """
        return _original_format(cls).load(cls, path, torch_dtype)

    @classmethod
    def config_from_original(cls, section: dict) -> dict:
        """This model's config from its section of an original checkpoint's metadata."""
        return _original_format(cls).config_from_original(section)
