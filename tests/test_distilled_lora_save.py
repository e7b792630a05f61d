"""`LTX2DistilledLoRA.save_pretrained` writes each file under a temporary name and renames it when complete: a save
that fails or is interrupted mid-file leaves the earlier files as they were (hashes before and after) and no
temporary file; saving over the file the LoRA was read from (memory-mapped, `copy=False`) keeps it readable."""

import os

import pytest
import safetensors.torch
import torch
from file_tree import file_tree

from ltx2_diffusers import LTX2DistilledLoRA


def _lora(seed):
    generator = torch.Generator().manual_seed(seed)
    return LTX2DistilledLoRA.from_state_dict(
        {
            "transformer.0.lora_A.weight": torch.randn(2, 4, generator=generator),
            "transformer.0.lora_B.weight": torch.randn(6, 2, generator=generator),
        }
    )


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_save_keeps_the_earlier_files(tmp_path, monkeypatch, error):
    _lora(1).save_pretrained(tmp_path / "lora")
    before = file_tree(tmp_path)
    real = safetensors.torch.save_file

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(type(error)):
        _lora(2).save_pretrained(tmp_path / "lora")
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert file_tree(tmp_path) == before
    _lora(2).save_pretrained(tmp_path / "lora")
    assert file_tree(tmp_path).keys() == before.keys() and file_tree(tmp_path) != before


def test_saving_over_the_file_it_was_read_from(tmp_path):
    first = _lora(3)
    first.save_pretrained(tmp_path / "lora")
    expected = {k: v.clone() for k, v in first.pairs().items() for v in [torch.cat([t.flatten() for t in v])]}
    loaded = LTX2DistilledLoRA.from_pretrained(tmp_path / "lora")
    _lora(4).save_pretrained(tmp_path / "lora")
    got = {k: torch.cat([t.flatten() for t in v]) for k, v in loaded.pairs().items()}
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert sorted(os.listdir(tmp_path / "lora")) == ["config.json", "pytorch_lora_weights.safetensors"]
