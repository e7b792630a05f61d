"""LTX-2 / LTX-2.3 audio-video diffusion for Hugging Face diffusers."""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

# Public name -> module that defines it. Imported lazily so `import ltx2_diffusers` stays cheap.
_EXPORTS = {
    "LTX2AudioVideoTransformer": "models.transformer_ltx2_av",
    "LTX2DistilledLoRA": "loaders.distilled_lora",
    "LTX2Perturbation": "models.perturbations",
    "AutoencoderAudioMel": "models.autoencoder_audio_mel",
    "LTX2HiFiGANVocoder": "models.vocoder_hifigan",
    "load_audio": "audio.io",
    "MultiModalGuidance": "guidance",
    "LTX2AudioToVideoPipeline": "pipelines.pipeline_ltx2_audio_to_video",
    "LTX2AudioToVideoPipelineOutput": "pipelines.pipeline_ltx2_audio_to_video",
    "LTX2AudioVideoPipeline": "pipelines.pipeline_ltx2_audio_video",
    "LTX2AudioVideoPipelineOutput": "pipelines.pipeline_ltx2_audio_video",
    "LTX2ImageToAudioVideoPipeline": "pipelines.pipeline_ltx2_audio_video",
    "LTX2ImageCondition": "pipelines.image_conditions",
    "enhance_prompt": "pipelines.prompt_enhancement",
    "export_to_video_with_audio": "video_io",
    "sync_report": "sync",
}

__all__ = sorted(_EXPORTS)

# diffusers finds a component library's loading method through the base classes it exposes: a folder whose
# model_index.json names `ltx2_diffusers` classes needs these visible here.
_LOADING_BASES = {"ModelMixin": "diffusers.models.modeling_utils", "ConfigMixin": "diffusers.configuration_utils"}


def __getattr__(name):
    if name in _LOADING_BASES:
        return getattr(importlib.import_module(_LOADING_BASES[name]), name)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ltx2_diffusers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .models.perturbations import LTX2Perturbation  # noqa: F401
    from .models.transformer_ltx2_av import LTX2AudioVideoTransformer  # noqa: F401
