"""Checkpoint-format code lives under `loaders/`: models import no key table or loading function, only the loader
mixins (the single-file mixin, the one that waits for the weight prefetch, the safetensors-only and the safe-save
ones)."""

import ast
import pathlib

import pytest

import ltx2_diffusers
from ltx2_diffusers import AutoencoderAudioMel, LTX2AudioVideoTransformer, LTX2HiFiGANVocoder
from ltx2_diffusers.loaders.single_file_audio_vae import audio_vae_config_from_original
from ltx2_diffusers.loaders.single_file_model import ORIGINAL_FORMATS, FromOriginalCheckpointMixin, _original_format
from ltx2_diffusers.loaders.single_file_transformer import transformer_config_from_original
from ltx2_diffusers.loaders.single_file_vocoder import vocoder_config_from_original


MODELS = pathlib.Path(ltx2_diffusers.__file__).parent / "models"


def _own_loader_imports(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0 and (node.module or "").startswith("loaders"):
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ltx2_diffusers.loaders"):
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_models_import_only_the_loader_mixin():
    files = sorted(MODELS.glob("*.py"))
    assert len(files) >= 10
    assert not [f.name for f in files if "single_file" in f.name]
    imports = {f.name: _own_loader_imports(f) for f in files}
    allowed = [
        "loaders.component_save.SafeSaveMixin",
        "loaders.prefetch.ReadAheadWaitMixin",
        "loaders.safetensors_only.SafetensorsOnlyMixin",
        "loaders.single_file_model.FromOriginalCheckpointMixin",
    ]
    assert {name: found for name, found in imports.items() if found and sorted(found) != allowed} == {}
    assert sorted(name for name, found in imports.items() if found) == [
        "autoencoder_audio_mel.py",
        "transformer_ltx2_av.py",
        "vocoder_hifigan.py",
    ]


@pytest.mark.parametrize(
    "model_cls, mapping",
    [
        (LTX2AudioVideoTransformer, transformer_config_from_original),
        (AutoencoderAudioMel, audio_vae_config_from_original),
        (LTX2HiFiGANVocoder, vocoder_config_from_original),
    ],
)
def test_every_model_with_from_single_file_is_registered(model_cls, mapping):
    assert issubclass(model_cls, FromOriginalCheckpointMixin)
    assert ORIGINAL_FORMATS[model_cls.__name__].config_from_original is mapping

    class Subclass(model_cls):
        pass

    assert Subclass.from_single_file.__func__ is FromOriginalCheckpointMixin.from_single_file.__func__
    assert _original_format(Subclass) is ORIGINAL_FORMATS[model_cls.__name__]


def test_config_from_original_dispatches_to_the_components_mapping():
    section = {"num_layers": 3, "attention_head_dim": 8, "num_attention_heads": 2, "caption_channels": 16}
    assert LTX2AudioVideoTransformer.config_from_original(section) == transformer_config_from_original(section)
    vocoder = {"resblock": "1", "stereo": True, "upsample_initial_channel": 32}
    assert LTX2HiFiGANVocoder.config_from_original(vocoder) == vocoder_config_from_original(vocoder)
    assert LTX2HiFiGANVocoder.config_from_original(vocoder)["hidden_channels"] == 32


def test_an_unregistered_class_is_refused_by_name(tmp_path):
    class Unknown(FromOriginalCheckpointMixin):
        pass

    with pytest.raises(ValueError, match="Unknown has no registered original single-file format"):
        Unknown.from_single_file(tmp_path / "x.safetensors")
