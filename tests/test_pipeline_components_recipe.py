"""A pipeline built from another's components (`Pipeline(**pipe.components)`, which carry no pipeline config) runs
the recipe of the model it holds: the version from the transformer's config, the dev/distilled variant kept on the
transformer; a `model_version` that contradicts the transformer is refused."""

import pytest
import torch
from factories import build_checkpoint

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2AudioVideoPipeline
from ltx2_diffusers.convert import convert_checkpoint


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("components_recipe")
    out = {}
    for version in ("2.0", "2.3"):
        checkpoint = build_checkpoint(root / f"ltx-{version}.safetensors", version, seed=5, dtype=torch.float32)
        convert_checkpoint(checkpoint, root / version)
        out[version] = root / version
    distilled = build_checkpoint(root / "ltx-2.3-distilled.safetensors", "2.3", seed=6, dtype=torch.float32)
    convert_checkpoint(distilled, root / "distilled")
    out["distilled"] = root / "distilled"
    return out


def recipe(pipe):
    defaults = pipe.version_defaults()
    blocks = defaults.video_guidance.stg_blocks if defaults.video_guidance is not None else None
    return pipe.config.model_version, pipe.config.model_variant, defaults.num_inference_steps, blocks


@pytest.mark.parametrize(
    "name, expected",
    [
        ("2.0", ("2.0.0", "dev", 40, [29])),
        ("2.3", ("2.3.0", "dev", 30, [28])),
        ("distilled", ("2.3.0", "distilled", 8, None)),
    ],
)
def test_components_keep_the_recipe(folders, name, expected):
    pipe = LTX2AudioToVideoPipeline.from_pretrained(folders[name])
    assert recipe(pipe) == expected
    for cls in (LTX2AudioVideoPipeline, LTX2AudioToVideoPipeline):
        assert recipe(cls(**pipe.components)) == expected


def test_a_contradicting_model_version_is_refused(folders):
    for name, wrong in (("2.0", "2.3.0"), ("2.3", "2.0.0")):
        components = LTX2AudioToVideoPipeline.from_pretrained(folders[name]).components
        with pytest.raises(ValueError, match=r"model_version .* contradicts the transformer"):
            LTX2AudioVideoPipeline(**components, model_version=wrong)
        right = "2.0.0" if wrong == "2.3.0" else "2.3.0"
        assert LTX2AudioVideoPipeline(**components, model_version=right).config.model_version == right


def test_another_pipelines_variant_does_not_stick_to_the_shared_transformer(folders):
    """A sibling built as "distilled" over a dev transformer (`from_pipe(..., model_variant=...)`) does not make
    later `Pipeline(**dev.components)` distilled: the transformer keeps the variant it was loaded as."""
    dev = LTX2AudioToVideoPipeline.from_pretrained(folders["2.3"])
    sibling = LTX2AudioVideoPipeline.from_pipe(dev, model_variant="distilled")
    assert sibling.config.model_variant == "distilled"
    assert recipe(LTX2AudioVideoPipeline(**dev.components)) == ("2.3.0", "dev", 30, [28])
