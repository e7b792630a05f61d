"""`LTX2DistilledLoRA.save_pretrained` writes its weights and config.json into a temporary folder and renames them
into place together (`component_save.save_files`): a save that fails or is interrupted, while writing or renaming
either file, leaves the earlier pair as it was (hashes before and after) and no temporary file; saving over the file
the LoRA was read from (memory-mapped, `copy=False`) keeps it readable."""

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


def _failing_config_write(monkeypatch, error):
    """`open` for writing a file named like config.json (the temporary name included) raises `error`."""
    import builtins

    real = builtins.open

    def fake(file, mode="r", *args, **kwargs):
        if "w" in mode and "config" in os.path.basename(os.fspath(file)):
            raise error
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake)


def _failing_second_rename(monkeypatch, error):
    real, calls = os.replace, []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the config's, after the weights'
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", fake)


@pytest.mark.parametrize("fail", [_failing_config_write, _failing_second_rename], ids=["writing", "renaming"])
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_on_the_config_keeps_the_earlier_pair(tmp_path, monkeypatch, fail, error):
    """Weights and config.json land together: never a new weights file beside the previous config."""
    _lora(1).save_pretrained(tmp_path / "lora")
    (tmp_path / "lora" / "README.md").write_text("the user's notes\n")
    before = file_tree(tmp_path)
    bigger = LTX2DistilledLoRA.from_state_dict(
        {f"transformer.{i}.lora_{p}.weight": torch.ones(2, 2) for i in range(2) for p in "AB"}
    )  # another targets list: a new weights file beside the old config would not match it
    fail(monkeypatch, error)
    with pytest.raises(type(error)):
        bigger.save_pretrained(tmp_path / "lora")
    monkeypatch.undo()
    assert file_tree(tmp_path) == before
    loaded = LTX2DistilledLoRA.from_pretrained(tmp_path / "lora")
    assert sorted(loaded.pairs()) == ["0"]


@pytest.mark.parametrize("name", ["config.json", "pytorch_lora_weights.safetensors"])
def test_a_folder_named_like_a_file_of_the_save_is_refused_before_anything_is_written(tmp_path, monkeypatch, name):
    (tmp_path / "lora" / name).mkdir(parents=True)
    (tmp_path / "lora" / name / "mine.txt").write_text("the user's\n")
    before = file_tree(tmp_path)

    def no_write(*args, **kwargs):
        raise AssertionError("the save wrote weights")

    monkeypatch.setattr(safetensors.torch, "save_file", no_write)
    with pytest.raises(ValueError, match="save_directory") as caught:
        _lora(1).save_pretrained(tmp_path / "lora")
    assert os.fspath(tmp_path / "lora" / name) in str(caught.value)
    assert file_tree(tmp_path) == before
