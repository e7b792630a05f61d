"""`from_single_file` decides `model_version` and `model_variant` as the converter does, and refuses what it
cannot decide (no silent fallback to LTX-2.3 or to the dev recipe)."""

import shutil

import factories
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ltx2_diffusers import LTX2AudioToVideoPipeline


def _copy_without_version(source, target):
    with safe_open(str(source), "pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "model_version"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_a_file_without_model_version_is_refused_unless_it_is_given(tmp_path):
    checkpoint = _copy_without_version(
        factories.cached_checkpoint("checkpoint", "2.3", seed=3), tmp_path / "x.safetensors"
    )
    with pytest.raises(ValueError, match="has no 'model_version' in its metadata; pass model_version"):
        LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32)
    pipe = LTX2AudioToVideoPipeline.from_single_file(checkpoint, torch_dtype=torch.float32, model_version="2.3.0")
    assert pipe.config.model_version == "2.3.0"
    with pytest.raises(ValueError, match="contradicts the file's metadata"):
        LTX2AudioToVideoPipeline.from_single_file(
            factories.cached_checkpoint("checkpoint", "2.3", seed=3), torch_dtype=torch.float32, model_version="2.0.0"
        )


@pytest.mark.parametrize("given", ["2.3", "2.3.0", "2.3.0.0"])
def test_a_model_version_written_shorter_than_the_files_is_the_same_release(given):
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        factories.cached_checkpoint("checkpoint", "2.3", seed=3), torch_dtype=torch.float32, model_version=given
    )
    assert pipe.config.model_version == "2.3.0"  # the file's spelling is kept


@pytest.mark.parametrize("given", ["2.30", "2.3.1", "2", "3.2.0"])
def test_a_different_release_than_the_files_is_refused(given):
    with pytest.raises(ValueError, match="contradicts the file's metadata '2.3.0'"):
        LTX2AudioToVideoPipeline.from_single_file(
            factories.cached_checkpoint("checkpoint", "2.3", seed=3), torch_dtype=torch.float32, model_version=given
        )


def test_the_variant_comes_from_the_file_name_when_not_given(tmp_path):
    source = factories.cached_checkpoint("checkpoint", "2.3", seed=3)
    distilled = shutil.copyfile(source, tmp_path / "ltx-2.3-tiny-distilled.safetensors")
    assert LTX2AudioToVideoPipeline.from_single_file(distilled, torch_dtype=torch.float32).config.model_variant == (
        "distilled"
    )
    assert LTX2AudioToVideoPipeline.from_single_file(source, torch_dtype=torch.float32).config.model_variant == "dev"
    explicit = LTX2AudioToVideoPipeline.from_single_file(distilled, torch_dtype=torch.float32, model_variant="dev")
    assert explicit.config.model_variant == "dev"


@pytest.mark.parametrize(
    "distilled_lora, match",
    [(("a.safetensors",), "must be a path or \\(path, strength\\)"), (("a.safetensors", float("nan")), "strength")],
)
def test_a_malformed_distilled_lora_is_refused_before_loading(distilled_lora, match):
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=3)
    with pytest.raises(ValueError, match=match):
        LTX2AudioToVideoPipeline.from_single_file(checkpoint, distilled_lora=distilled_lora)


def test_a_model_version_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError, match="model_version must be a version string such as '2.3.0', got float 2.3"):
        LTX2AudioToVideoPipeline.from_single_file(
            factories.cached_checkpoint("checkpoint", "2.3", seed=3), torch_dtype=torch.float32, model_version=2.3
        )
