"""Model cards: every template renders to a card huggingface_hub parses; a converted folder's snippet runs."""

import re

import factories
import pytest
import torch
from huggingface_hub import ModelCard

from ltx2_diffusers.convert import MODEL_CARDS_DIR, _card_fields, convert_checkpoint, render_model_card


KINDS = ["ltx-2-dev", "ltx-2-distilled", "ltx-2.3-dev", "ltx-2.3-distilled", "fp8"]


def _fields(version="2.3.0", variant="dev", fp8=False):
    from pathlib import Path

    return _card_fields(
        version, variant, "someone/ltx-tiny", Path("ltx.safetensors"), "lora.safetensors", 0.8, None, True, True, fp8
    )


@pytest.mark.parametrize("kind", KINDS)
def test_templates_render_and_parse(kind):
    assert sorted(p.stem for p in MODEL_CARDS_DIR.glob("*.md")) == sorted(KINDS)
    version = "2.0.0" if kind.startswith("ltx-2-") else "2.3.0"
    text = render_model_card(kind, _fields(version, "distilled" if "distilled" in kind else "dev", kind == "fp8"))
    assert "$" not in text
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["pipeline_tag"] == "text-to-video"
    assert data["base_model"] == ("Lightricks/LTX-2" if version == "2.0.0" else "Lightricks/LTX-2.3")
    assert data["license"] == "other" and data["license_link"].endswith("/LICENSE")
    assert {"ltx-2", "audio-to-video"} <= set(data["tags"])
    assert ("fp8" in data["tags"]) == (kind == "fp8")
    assert 'LTX2AudioToVideoPipeline.from_pretrained("someone/ltx-tiny"' in card.text


def test_render_errors(tmp_path):
    with pytest.raises(ValueError, match="no model card template"):
        render_model_card("ltx-3", _fields())
    with pytest.raises(KeyError):
        render_model_card("fp8", {})


def test_converted_card_parses_and_its_snippet_runs(tmp_path):
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=41)
    out = tmp_path / "ltx-2.3-tiny-distilled"
    convert_checkpoint(checkpoint, out, repo_id=str(out), variant="distilled")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "Lightricks/LTX-2.3" and "distilled" in card.text
    snippet = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)[0]
    assert str(out) in snippet
    namespace = {}
    exec(compile(snippet, "model card snippet", "exec"), namespace)
    pipe = namespace["pipe"]
    assert type(pipe).__name__ == "LTX2AudioToVideoPipeline"
    assert pipe.config.model_version == "2.3.0" and pipe.transformer.dtype == torch.bfloat16
    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    av_snippet = next(s for s in snippets if "LTX2AudioVideoPipeline.from_pretrained" in s)
    assert str(out) in av_snippet
    exec(compile(av_snippet, "model card text-to-audio+video snippet", "exec"), namespace)
    av = namespace["av"]
    assert type(av).__name__ == "LTX2AudioVideoPipeline" and av.config.model_variant == "distilled"
