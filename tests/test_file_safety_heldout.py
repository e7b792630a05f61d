"""Held-out file-safety cases of the converter and `ltx2-a2v` (found by an audit after the earlier hardening):

- a run interrupted (Ctrl-C) while `publish` re-verifies the previous conversion it moved aside puts it back at
  `output_dir` (before: it stayed hidden in `.out.old-*/out`, no longer a leftover, and `output_dir` was gone);
- an output name too long for the file system once the temporary name is added is refused before any work
  (before: `OSError: File name too long` after planning / after the whole generation, with a traceback).

Every case compares the whole work folder (files by sha256) before and after.
"""

import os

import factories
import pytest
from cli_user_folder import CLIS, song_and_model
from file_tree import file_tree

from ltx2_diffusers.convert import convert_checkpoint, main
from ltx2_diffusers.loaders import output_folder


@pytest.fixture
def checkpoint():
    return factories.cached_checkpoint("checkpoint", "2.3", seed=21)


def test_interrupt_while_verifying_the_moved_aside_conversion_puts_it_back(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert_checkpoint(checkpoint, out)
    before = file_tree(tmp_path)
    verify = output_folder._conversion_id

    def interrupted(folder, label="output_dir"):
        if folder.parent.name.startswith(".out.old-"):
            raise KeyboardInterrupt
        return verify(folder, label)

    monkeypatch.setattr(output_folder, "_conversion_id", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(checkpoint, out, overwrite=True)
    assert file_tree(tmp_path) == before


@pytest.mark.parametrize("length", [240, 300])
def test_converter_refuses_a_name_too_long_before_any_work(checkpoint, tmp_path, monkeypatch, capsys, length):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(output_folder, "check_free_space", _no_work)
    assert main(["--checkpoint-path", str(checkpoint), "--output-dir", "a" * length]) == 2
    err = capsys.readouterr().err
    assert "output_dir" in err and "choose a shorter name" in err
    assert os.listdir(tmp_path) == []


def _no_work(*args, **kwargs):
    raise AssertionError("the converter planned the work before refusing the name")


@pytest.mark.parametrize("cli", list(CLIS))
@pytest.mark.parametrize("length", [240, 300])
def test_cli_refuses_a_name_too_long_before_loading(cli, length, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    song_and_model(tmp_path)
    module, prog = CLIS[cli]
    monkeypatch.setattr(module, "load_pipeline", _no_work)
    before = file_tree(tmp_path)
    inputs = ("--audio-path", "song.wav") if cli == "a2v" else ()
    output = "a" * length + ".mp4"
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--model", "model", *inputs, "--prompt", "p", "--output-path", output, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{prog}: error: --output-path" in err and "choose a shorter name" in err
    assert file_tree(tmp_path) == before
