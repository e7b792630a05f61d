"""The converter records `model_variant` ("dev" | "distilled") and lists the distilled LoRA as a component.

Variant: the checkpoint metadata's `model_variant` where it states one, else `--model-variant`, else "distilled"
in the file name. The distilled LoRA: `"distilled_lora": ["ltx2_diffusers", "LTX2DistilledLoRA"]` in
model_index.json, loaded as the pipeline's `distilled_lora` component on both loading routes."""

import hashlib
import inspect
import json
import shutil

import factories
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltx2_diffusers.convert import convert_checkpoint, main
from ltx2_diffusers.loaders.model_variant import resolve_model_variant, variant_from_file_name


def _checkpoint(tmp_path, name, **metadata):
    """The tiny 2.3 checkpoint under `name`, with `metadata` added to its header."""
    source = factories.cached_checkpoint("checkpoint", "2.3", seed=41)
    path = tmp_path / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    if not metadata:
        shutil.copyfile(source, path)
        return path
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
    save_file(load_file(source), str(path), metadata={**header, **metadata})
    return path


def _index(folder):
    return json.loads((folder / "model_index.json").read_text())


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, metadata, requested, expected",
    [
        ("ltx-tiny-dev.safetensors", {}, None, "dev"),
        ("ltx-tiny.safetensors", {}, None, "dev"),
        ("ltx-tiny-distilled.safetensors", {}, None, "distilled"),
        ("LTX-Tiny-DISTILLED-fp8.safetensors", {}, None, "distilled"),
        ("ltx-tiny.safetensors", {}, "distilled", "distilled"),
        ("ltx-tiny-distilled.safetensors", {}, "dev", "dev"),  # the argument beats the file name
        ("ltx-tiny.safetensors", {"model_variant": "distilled"}, None, "distilled"),  # metadata beats the name
        ("ltx-tiny-distilled.safetensors", {"model_variant": "dev"}, None, "dev"),
        ("ltx-tiny.safetensors", {"model_variant": "distilled"}, "distilled", "distilled"),
    ],
)
def test_model_variant_is_recorded(tmp_path, name, metadata, requested, expected):
    checkpoint = _checkpoint(tmp_path, name, **metadata)
    out = tmp_path / "out"
    report = convert_checkpoint(checkpoint, out, model_variant=requested)
    assert _index(out)["model_variant"] == expected == report.model_variant
    source = "metadata" if metadata else "argument" if requested else "file name"
    assert f"model_variant {expected} (from the {source})" in report.summary()
    card = (out / "README.md").read_text()
    other = "dev" if expected == "distilled" else "distilled"
    assert f"tiny test/demo {expected}" in card and f"tiny test/demo {other}" not in card


def test_folder_in_the_path_does_not_count(tmp_path):
    checkpoint = _checkpoint(tmp_path, "ltx-tiny.safetensors")
    folder = tmp_path / "distilled-models"
    folder.mkdir()
    moved = folder / checkpoint.name
    shutil.move(checkpoint, moved)
    convert_checkpoint(moved, tmp_path / "out")
    assert _index(tmp_path / "out")["model_variant"] == "dev"
    assert variant_from_file_name("/x/distilled/ltx.safetensors") == "dev"


def test_sources_are_reported():
    assert resolve_model_variant({"model_variant": "dev"}, None, "a-distilled.safetensors").source == "metadata"
    assert resolve_model_variant({}, "dev", "a-distilled.safetensors").source == "argument"
    resolved = resolve_model_variant({}, None, "a-distilled.safetensors")
    assert (resolved.name, resolved.source) == ("distilled", "file name")


@pytest.mark.parametrize(
    "metadata, requested, message",
    [
        ({"model_variant": "distilled"}, "dev", "contradicts the metadata"),
        ({"model_variant": "turbo"}, None, "metadata 'model_variant' must be 'dev' or 'distilled'"),
        ({}, "turbo", r"model_variant \(--model-variant\) must be 'dev' or 'distilled'"),
    ],
)
def test_bad_or_contradicting_variants_are_refused_before_writing(tmp_path, metadata, requested, message):
    checkpoint = _checkpoint(tmp_path, "ltx-tiny.safetensors", **metadata)
    digest = _sha(checkpoint)
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(checkpoint, tmp_path / "out", model_variant=requested)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]  # no partial folder left beside it
    assert _sha(checkpoint) == digest


def test_older_argument_name_still_works_and_must_agree(tmp_path):
    checkpoint = _checkpoint(tmp_path, "ltx-tiny.safetensors")
    convert_checkpoint(checkpoint, tmp_path / "a", variant="distilled")
    assert _index(tmp_path / "a")["model_variant"] == "distilled"
    with pytest.raises(ValueError, match="disagree"):
        convert_checkpoint(checkpoint, tmp_path / "b", model_variant="dev", variant="distilled")
    assert not (tmp_path / "b").exists()


def test_cli_flag(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, "ltx-tiny.safetensors")
    assert (
        main(
            ["--checkpoint-path", str(checkpoint), "--output-dir", str(tmp_path / "a"), "--model-variant", "distilled"]
        )
        == 0
    )
    assert _index(tmp_path / "a")["model_variant"] == "distilled"
    assert main(["--checkpoint-path", str(checkpoint), "--output-dir", str(tmp_path / "b"), "--variant", "dev"]) == 0
    assert _index(tmp_path / "b")["model_variant"] == "dev"
    stated = _checkpoint(tmp_path, "stated.safetensors", model_variant="dev")
    args = ["--checkpoint-path", str(stated), "--output-dir", str(tmp_path / "c"), "--model-variant", "distilled"]
    assert main(args) == 2
    assert "contradicts the metadata" in capsys.readouterr().err and not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):
        main(["--checkpoint-path", str(checkpoint), "--output-dir", str(tmp_path / "d"), "--model-variant", "turbo"])


def test_distilled_lora_is_a_listed_component(tmp_path):
    from diffusers import DiffusionPipeline

    from ltx2_diffusers import LTX2AudioToVideoPipeline

    source = factories.cached_checkpoint("checkpoint", "2.3", seed=41)
    lora = factories.cached_checkpoint("lora", checkpoint_path=source, seed=43, include_connectors=True)
    checkpoint = _checkpoint(tmp_path, "ltx-tiny-dev.safetensors")
    with_lora, without = tmp_path / "with", tmp_path / "without"
    convert_checkpoint(checkpoint, with_lora, distilled_lora=lora, distilled_lora_scale=0.6)
    convert_checkpoint(checkpoint, without)
    index = _index(with_lora)
    assert index["distilled_lora"] == ["ltx2_diffusers", "LTX2DistilledLoRA"]
    assert index["distilled_lora_scale"] == 0.6 and index["model_variant"] == "dev"
    assert sorted(p.name for p in (with_lora / "distilled_lora").iterdir()) == ["pytorch_lora_weights.safetensors"]
    assert _index(without)["distilled_lora"] == [None, None] and not (without / "distilled_lora").exists()
    for pipe in (
        LTX2AudioToVideoPipeline.from_pretrained(with_lora),
        DiffusionPipeline.from_pretrained(with_lora, trust_remote_code=True),
    ):
        assert type(pipe.distilled_lora).__name__ == "LTX2DistilledLoRA"
        assert pipe.config.distilled_lora_scale == 0.6
        assert not getattr(pipe.transformer, "peft_config", None)  # owned by the pipeline, never a PEFT adapter
        if "model_variant" in inspect.signature(type(pipe).__init__).parameters:
            assert pipe.config.model_variant == "dev"
    assert LTX2AudioToVideoPipeline.from_pretrained(without).distilled_lora is None
    # The same pairs as a folder without the entry (the subfolder fallback through `load_lora_weights`); the
    # source LoRA's connector part is kept in the file but never loaded, on either route.
    stored = load_file(with_lora / "distilled_lora" / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("connectors.") for k in stored)
    legacy = tmp_path / "legacy"
    shutil.copytree(with_lora, legacy)
    index.pop("distilled_lora")
    (legacy / "model_index.json").write_text(json.dumps(index))
    listed = LTX2AudioToVideoPipeline.from_pretrained(with_lora).distilled_lora.lora_state_dict()
    fallback = LTX2AudioToVideoPipeline.from_pretrained(legacy).distilled_lora.lora_state_dict()
    assert sorted(listed) == sorted(fallback) == sorted(k for k in stored if k.startswith("transformer."))
    assert all(torch.equal(listed[k], fallback[k]) for k in listed)
