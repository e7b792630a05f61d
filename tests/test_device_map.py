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
        (-1, ValueError, "not a device index"),
        ("meta", ValueError, "'meta' holds no values"),
        ({"": torch.device("meta")}, ValueError, "'meta' holds no values"),
        (True, TypeError, "must be a device"),
        (["cpu"], TypeError, "must be a device"),
    ],
)
def test_a_device_map_that_names_no_single_device_is_refused(folder, device_map, error, match):
    with pytest.raises(error, match=match):
        LTX2DistilledLoRA.from_pretrained(folder / "distilled_lora", device_map=device_map)


@pytest.mark.parametrize(
    "device_map, device",
    [("cuda", "cuda:3"), ("cuda:1", "cuda:1"), (1, 1), ({"": 0}, 0), (torch.device("cuda", 2), "cuda:2"),
     (torch.device("cuda"), "cuda:3"), (None, "cpu")],
)  # fmt: skip
def test_the_distilled_lora_asks_safetensors_for_the_mapped_device(folder, monkeypatch, device_map, device):
    """A CUDA device without an index is the current one (diffusers places the other components there; safetensors
    would read a bare "cuda" onto device 0). The connector tensors the converter keeps are not read."""
    import safetensors

    real, asked, read = safetensors.safe_open, [], []

    class Spy:
        def __init__(self, path, framework, device="cpu"):
            asked.append(device)
            self.file = real(path, framework=framework, device="cpu")  # this machine may have no such device

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.file.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    lora = LTX2DistilledLoRA.from_pretrained(folder / "distilled_lora", device_map=device_map)
    assert asked == [device]
    assert read and not any(k.startswith("connectors.") for k in read)
    assert len(read) == 2 * len(lora.pairs())


def test_from_state_dict_copies_the_callers_tensors():
    a, b = torch.randn(2, 4), torch.randn(6, 2)
    lora = LTX2DistilledLoRA.from_state_dict({"transformer.0.lora_A.weight": a, "transformer.0.lora_B.weight": b})
    a.zero_()
    assert lora.pairs()["0"][0].abs().sum() > 0


def test_a_folder_that_does_not_list_the_lora_puts_it_on_the_mapped_device(tmp_path, monkeypatch):
    """Folders converted before `distilled_lora` was a component load it through `register_to_config`; the
    `device_map` moves it afterwards (here onto the meta device, which this machine has)."""
    import json

    import ltx2_diffusers.loaders.distilled_lora as distilled_lora

    folder = converted_folder(tmp_path, seed=43)
    index = json.loads((folder / "model_index.json").read_text())
    del index["distilled_lora"]
    (folder / "model_index.json").write_text(json.dumps(index))
    plain = LTX2AudioToVideoPipeline.from_pretrained(folder)
    assert plain.distilled_lora is not None and _factors(plain.distilled_lora)[0].device.type == "cpu"
    monkeypatch.setattr(distilled_lora, "_mapped_device", lambda device_map: "meta")
    mapped = LTX2AudioToVideoPipeline.from_pretrained(folder, device_map="cpu")
    assert all(t.device.type == "meta" for t in _factors(mapped.distilled_lora))
