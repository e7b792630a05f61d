"""`from_pretrained(..., device_map=device)`: diffusers reads each component onto the device as it loads it; the
distilled LoRA component follows the same map (it was left on the host before, so stage 2 copied its factors from
pageable memory at every forward). A map that splits the LoRA or names no device is refused, naming it."""

import pytest
import torch
from converted_folder import converted_folder

from ltx2_diffusers import LTX2AudioToVideoPipeline, LTX2DistilledLoRA


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return converted_folder(tmp_path_factory.mktemp("device_map"), seed=41)


def _factors(lora: LTX2DistilledLoRA) -> list[torch.Tensor]:
    return [t for pair in lora.pairs().values() for t in pair]


def test_a_pipeline_loaded_with_a_device_map_equals_the_plain_load(folder):
    plain = LTX2AudioToVideoPipeline.from_pretrained(folder)
    mapped = LTX2AudioToVideoPipeline.from_pretrained(folder, device_map="cpu")
    for name in ("transformer", "vae", "audio_vae", "vocoder", "connectors", "latent_upsampler"):
        ours, theirs = getattr(mapped, name).state_dict(), getattr(plain, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert mapped.distilled_lora is not None
    for a, b in zip(_factors(mapped.distilled_lora), _factors(plain.distilled_lora), strict=True):
        assert torch.equal(a, b) and a.device.type == "cpu"


@pytest.mark.parametrize("device_map", ["cpu", torch.device("cpu"), {"": "cpu"}, {"": torch.device("cpu")}])
def test_the_distilled_lora_reads_onto_the_mapped_device(folder, device_map):
    lora = LTX2DistilledLoRA.from_pretrained(folder / "distilled_lora", device_map=device_map)
    plain = LTX2DistilledLoRA.from_pretrained(folder / "distilled_lora")
    assert len(_factors(lora)) > 0
    for a, b in zip(_factors(lora), _factors(plain), strict=True):
        assert torch.equal(a, b) and a.device == torch.device("cpu")


@pytest.mark.parametrize(
    "device_map, error, match",
    [
        ({"transformer": 0, "": "cpu"}, ValueError, "one device for the whole component"),
        ({}, ValueError, "one device for the whole component"),
        ("balanced-ish", ValueError, "'balanced-ish' is not a device"),
        (-1, TypeError, "must be a device"),
        (True, TypeError, "must be a device"),
        (["cpu"], TypeError, "must be a device"),
    ],
)
def test_a_device_map_that_names_no_single_device_is_refused(folder, device_map, error, match):
    with pytest.raises(error, match=match):
        LTX2DistilledLoRA.from_pretrained(folder / "distilled_lora", device_map=device_map)


@pytest.mark.parametrize(
    "device_map, device",
    [("cuda", "cuda"), ("cuda:1", "cuda:1"), (1, 1), ({"": 0}, 0), (torch.device("cuda", 2), "cuda:2"), (None, "cpu")],
)
def test_the_distilled_lora_asks_safetensors_for_the_mapped_device(folder, monkeypatch, device_map, device):
    import safetensors.torch

    real, asked = safetensors.torch.load_file, []

    def spy(path, device="cpu"):
        asked.append(device)
        return real(path)  # read on the host: this machine may have no such device

    monkeypatch.setattr(safetensors.torch, "load_file", spy)
    LTX2DistilledLoRA.from_pretrained(folder / "distilled_lora", device_map=device_map)
    assert asked == [device]
