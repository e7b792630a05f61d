"""`from_pretrained` reads safetensors only: `use_safetensors=False` / `use_flashpack=True` are refused, a component
folder holding only pickle weights is refused naming the file (never unpickled), and pickle files beside the
safetensors ones are ignored."""

import hashlib
import shutil

import pytest
import torch
from converted_folder import converted_folder

from ltx2_diffusers import LTX2AudioToVideoPipeline


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return converted_folder(tmp_path_factory.mktemp("safetensors_only"), 71)


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called: a pickle file was read")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("option", [{"use_safetensors": False}, {"use_flashpack": True}])
def test_pickle_options_are_refused(converted, option, no_unpickling):
    with pytest.raises(ValueError, match=next(iter(option))):
        LTX2AudioToVideoPipeline.from_pretrained(converted, **option)


def pickle_component(folder, component, keep_safetensors):
    """`component/diffusion_pytorch_model.bin`: its weights, all zeros, as a pickle file."""
    sub = folder / component
    state = {k: torch.zeros_like(v) for k, v in getattr(LTX2AudioToVideoPipeline.from_pretrained(folder), component)
             .state_dict().items()}  # fmt: skip
    if not keep_safetensors:
        for path in sub.glob("*.safetensors*"):
            path.unlink()
    torch.save(state, sub / "diffusion_pytorch_model.bin")
    return sub / "diffusion_pytorch_model.bin"


@pytest.mark.parametrize("component", ["transformer", "vocoder", "latent_upsampler"])
def test_a_folder_with_only_pickle_weights_is_refused_naming_the_file(converted, tmp_path, component, monkeypatch):
    folder = tmp_path / "conv"
    shutil.copytree(converted, folder)
    pickle_file = pickle_component(folder, component, keep_safetensors=False)
    digest = hashlib.sha256(pickle_file.read_bytes()).hexdigest()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ValueError, match="only safetensors") as error:
        LTX2AudioToVideoPipeline.from_pretrained(folder)
    assert str(pickle_file) in str(error.value)
    assert hashlib.sha256(pickle_file.read_bytes()).hexdigest() == digest
    # a component the caller passes is not read from the folder
    other = LTX2AudioToVideoPipeline.from_pretrained(converted)
    pipe = LTX2AudioToVideoPipeline.from_pretrained(folder, **{component: getattr(other, component)})
    assert getattr(pipe, component) is getattr(other, component)


def test_pickle_files_beside_safetensors_are_ignored(converted, tmp_path, no_unpickling):
    folder = tmp_path / "conv"
    shutil.copytree(converted, folder)
    pickle_component(folder, "transformer", keep_safetensors=True)
    expected = LTX2AudioToVideoPipeline.from_pretrained(converted).transformer.state_dict()
    loaded = LTX2AudioToVideoPipeline.from_pretrained(folder).transformer.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert any(v.abs().max() > 0 for v in loaded.values())  # not the pickle file's zeros


MODEL_COMPONENTS = {"transformer": "LTX2AudioVideoTransformer", "audio_vae": "AutoencoderAudioMel",
                    "vocoder": "LTX2HiFiGANVocoder"}  # fmt: skip


@pytest.mark.parametrize("component", sorted(MODEL_COMPONENTS))
def test_the_models_own_from_pretrained_reads_safetensors_only(converted, tmp_path, component, monkeypatch):
    """Also when diffusers' loader (not the pipeline's) calls the model class: pickle options and a folder of
    pickle weights are refused, naming the file; safetensors load as before."""
    import ltx2_diffusers

    model_cls = getattr(ltx2_diffusers, MODEL_COMPONENTS[component])
    loaded = model_cls.from_pretrained(converted, subfolder=component)
    expected = getattr(LTX2AudioToVideoPipeline.from_pretrained(converted), component).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    for option in ({"use_safetensors": False}, {"use_flashpack": True}):
        with pytest.raises(ValueError, match=next(iter(option))):
            model_cls.from_pretrained(converted, subfolder=component, **option)
    folder = tmp_path / "conv"
    shutil.copytree(converted, folder)
    pickle_file = pickle_component(folder, component, keep_safetensors=False)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ValueError, match="only safetensors") as error:
        model_cls.from_pretrained(folder, subfolder=component)
    assert str(pickle_file) in str(error.value)
    with pytest.raises(ValueError, match="only safetensors"):
        model_cls.from_pretrained(folder / component)
