"""Corrupt files and configs found by the third input audit, refused with a ValueError / TypeError naming the file:
a LoRA that is not a whole safetensors file (a SafetensorError from inside safetensors before), a LoRA source of the
wrong type (a huggingface_hub HFValidationError), a config.json that is not a JSON object (an AttributeError), and a
NaN / zero `vae/config.json` scaling_factor (NaN or inf frames before)."""

import hashlib
import json
import shutil
import struct

import pytest
import torch
from converted_folder import converted_folder
from family_call import tiny_call_args

from ltx2_diffusers import LTX2AudioVideoPipeline, MultiModalGuidance


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return converted_folder(tmp_path_factory.mktemp("garbage3_loaders"), 73)


@pytest.fixture(scope="module")
def pipe(converted):
    pipe = LTX2AudioVideoPipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_bytes(converted) -> bytes:
    return next((converted / "distilled_lora").glob("*.safetensors")).read_bytes()


def corrupt_loras(converted, root):
    """A truncated LoRA, a pickle renamed .safetensors, text, a header that is not JSON, and a .bin pickle."""
    raw = lora_bytes(converted)
    files = {
        "truncated": raw[: len(raw) // 2],
        "text": b"hello",
        "header": struct.pack("<Q", 20) + b"{not json at all!!!}" + raw[28:200],
    }
    paths = {}
    for name, content in files.items():
        paths[name] = root / f"{name}.safetensors"
        paths[name].write_bytes(content)
    for name in ("pickle.safetensors", "model.bin"):
        torch.save({"a": torch.zeros(2)}, root / name)
        paths[name] = root / name
    return paths


@pytest.mark.parametrize("adapter", ["user", "distilled"])
@pytest.mark.parametrize("name", ["truncated", "text", "header", "pickle.safetensors", "model.bin"])
def test_a_corrupt_lora_file_is_refused_naming_it(pipe, converted, tmp_path, adapter, name):
    path = corrupt_loras(converted, tmp_path)[name]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"{path.name}.*(not a safetensors file|is truncated)"):
        pipe.load_lora_weights(str(path), adapter_name=adapter)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("source", [5, None, b"lora.safetensors"])
def test_a_lora_source_of_the_wrong_type_is_refused(pipe, source):
    with pytest.raises(TypeError, match="the LoRA must be a safetensors file path, a Hub id or a state dict"):
        pipe.load_lora_weights(source, adapter_name="user")


def edited_copy(converted, tmp_path, component, edit):
    folder = tmp_path / "copy"
    shutil.copytree(converted, folder)
    path = folder / component / "config.json"
    path.write_text(edit(path.read_text()))
    return folder


def test_a_config_that_is_not_a_json_object_is_refused_naming_the_file(converted, tmp_path):
    folder = edited_copy(converted, tmp_path, "transformer", lambda text: "[1, 2]")
    with pytest.raises(ValueError, match=r"transformer/config.json.*a config must be a JSON object"):
        LTX2AudioVideoPipeline.from_pretrained(folder)


def forbidden(*args, **kwargs):
    raise AssertionError("a model ran before the input was refused")


@pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0])
def test_a_bad_vae_scaling_factor_is_refused_before_compute(converted, tmp_path, value):
    def edit(text):
        config = json.loads(text)
        config["scaling_factor"] = value
        return json.dumps(config)

    pipe = LTX2AudioVideoPipeline.from_pretrained(edited_copy(converted, tmp_path, "vae", edit))
    pipe.set_progress_bar_config(disable=True)
    for name in ("transformer", "connectors", "vae", "audio_vae", "latent_upsampler", "vocoder"):
        getattr(pipe, name).forward = forbidden
    with pytest.raises(ValueError, match="vae.config.scaling_factor must be a finite number > 0"):
        pipe(**tiny_call_args(pipe, MultiModalGuidance(stg_blocks=[1])))


@pytest.mark.parametrize("component", ["transformer", "vae", "vocoder"])
@pytest.mark.parametrize("damage", ["half", "header"])
def test_a_corrupt_component_weight_file_is_refused_before_loading(converted, tmp_path, component, damage):
    """diffusers' OSError ('Unable to load weights from checkpoint file ...') midway through loading before."""
    folder = tmp_path / "copy"
    shutil.copytree(converted, folder)
    path = next((folder / component).glob("*.safetensors"))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "half" else raw[:1000])
    with pytest.raises(ValueError, match=rf"{component}/{path.name}' (is truncated|is not a safetensors file)"):
        LTX2AudioVideoPipeline.from_pretrained(folder)


def test_dot_files_beside_the_weights_are_not_checked(converted, tmp_path):
    """Files diffusers never loads: a macOS `._*` fork and a killed save's `.*.partial.safetensors` (refused as
    "not a safetensors file" by the whole-file check before)."""
    folder = tmp_path / "copy"
    shutil.copytree(converted, folder)
    (folder / "transformer" / "._diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "distilled_lora" / ".pytorch_lora_weights.1a2b.partial.safetensors").write_bytes(b"half")
    pipe = LTX2AudioVideoPipeline.from_pretrained(folder)
    assert pipe.transformer is not None and pipe.distilled_lora is not None


@pytest.mark.parametrize("entry", [1, {"dtype": "F32"}, {"data_offsets": [0]}, {"data_offsets": "0-4"}])
def test_a_header_entry_without_offsets_is_refused_naming_the_file(tmp_path, entry):
    """A TypeError / KeyError from the header walk before."""
    from ltx2_diffusers.loaders.single_file import read_metadata

    header = json.dumps({"a": entry}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ValueError, match=r"odd\.safetensors' is not a safetensors file"):
        read_metadata(path)
