"""An output that appears while a run works (another run with the same output name) is never replaced without
`--overwrite` / `overwrite=True`: the CLIs check "no existing output" before loading, and their final renames
(`video_io.move_into_place`: `RENAME_NOREPLACE`) refuse again, naming the path, leaving the other run's file whole
and no temporary file behind. Every case hashes the user's folder before and after."""

import os
import types

import numpy as np
import pytest
import torch
from cli_user_folder import CLIS, song_and_model
from file_tree import file_tree

from ltx2_diffusers import sync, video_io
from ltx2_diffusers.video_io import export_to_video_with_audio


OTHER_RUN = b"the other run's render"


@pytest.fixture
def user(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    song_and_model(tmp_path)
    return tmp_path


class _RenderWhileAnotherRunWrites:
    """Either pipeline: while it 'generates', another run writes `appears` (relative to the cwd)."""

    config = {"model_variant": "dev"}

    def __init__(self, appears):
        self.appears = appears

    def encode_prompt(self, prompt, negative_prompt):
        return None, None, None, None

    def __call__(self, **kwargs):
        with open(self.appears, "wb") as f:
            f.write(OTHER_RUN)
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        frames = np.random.default_rng(0).random((1, 9, 64, 64, 3), dtype=np.float32)
        return types.SimpleNamespace(
            frames=frames, audio=torch.from_numpy(tone[None].astype(np.float32)), audio_sample_rate=16000
        )


def _argv(cli, output, *extra):
    inputs = ("--audio-path", "song.wav") if cli == "a2v" else ()
    size = ("--num-frames", "9", "--height", "64", "--width", "64", "--no-stage-2", "--device", "cpu")
    return ["--model", "model", *inputs, "--prompt", "p", "--output-path", output, *size, *extra]


def _run(monkeypatch, cli, appears, argv):
    module, _ = CLIS[cli]
    monkeypatch.setattr(module, "load_pipeline", lambda args: _RenderWhileAnotherRunWrites(appears))
    monkeypatch.setattr(module, "prepare_pipeline", lambda pipe, args, device: None)
    return module.main(argv)


@pytest.mark.parametrize("cli", list(CLIS))
@pytest.mark.parametrize("appears,extra", [("clip.mp4", ()), ("clip_sync.json", ("--sync-report",))])
def test_output_that_appears_during_generation_is_not_replaced(cli, appears, extra, user, monkeypatch, capsys):
    code = _run(monkeypatch, cli, appears, _argv(cli, "clip.mp4", *extra))
    err = capsys.readouterr().err
    assert code == 2 and f"{CLIS[cli][1]}: error:" in err and repr(appears) in err
    tree = file_tree(user)
    assert open(appears, "rb").read() == OTHER_RUN  # the other run's file, whole
    assert not [name for name in tree if "partial" in name]  # this run's temporary file removed


@pytest.mark.parametrize("cli", list(CLIS))
def test_with_overwrite_the_file_that_appeared_is_replaced(cli, user, monkeypatch):
    assert _run(monkeypatch, cli, "clip.mp4", _argv(cli, "clip.mp4", "--overwrite")) == 0
    assert open("clip.mp4", "rb").read() != OTHER_RUN
    assert sorted(file_tree(user)) == ["clip.mp4", "model", "model/model_index.json", "song.wav"]


def test_sweep_table_that_appears_is_not_replaced(user, monkeypatch, capsys):
    argv = _argv("a2v", "clip.mp4", "--modality-scale-sweep", "2,3")
    assert _run(monkeypatch, "a2v", "clip_modality_sweep.md", argv) == 2
    assert "clip_modality_sweep.md" in capsys.readouterr().err
    assert open("clip_modality_sweep.md", "rb").read() == OTHER_RUN
    assert not [name for name in file_tree(user) if "partial" in name]


def test_sync_report_cli_does_not_replace_a_report_that_appears(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    export_to_video_with_audio(rng.random((16, 32, 32, 3)), rng.random((1, 16000)) - 0.5, 16000, "v.mp4", 8)
    real = sync.sync_report_from_file

    def measuring_while_another_run_writes(*args, **kwargs):
        with open("v_sync.png", "wb") as f:
            f.write(OTHER_RUN)
        return real(*args, **kwargs)

    monkeypatch.setattr(sync, "sync_report_from_file", measuring_while_another_run_writes)
    before = file_tree(tmp_path)
    assert sync.main(["v.mp4"]) == 2
    assert "v_sync.png" in capsys.readouterr().err
    assert open("v_sync.png", "rb").read() == OTHER_RUN
    assert set(file_tree(tmp_path)) == set(before) | {"v_sync.png"}  # no json (not reached), no temporary file


def test_export_overwrite_false_never_replaces(tmp_path):
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    target = tmp_path / "render.mp4"
    target.write_bytes(b"previous render")
    with pytest.raises(ValueError, match="render.mp4"):  # refused before encoding
        export_to_video_with_audio(frames, None, None, target, overwrite=False)
    assert target.read_bytes() == b"previous render" and os.listdir(tmp_path) == ["render.mp4"]
    # The default (API callers, as before): replaced once the new file is complete.
    export_to_video_with_audio(frames, None, None, target)
    assert target.read_bytes() != b"previous render" and os.listdir(tmp_path) == ["render.mp4"]


def test_export_overwrite_false_refuses_a_file_that_appears_while_encoding(tmp_path, monkeypatch):
    """The last step itself never replaces: the file appears after the early check, while the frames are prepared."""
    target = tmp_path / "render.mp4"
    real = video_io.frames_to_uint8

    def preparing_while_another_run_writes(*args, **kwargs):
        target.write_bytes(OTHER_RUN)
        return real(*args, **kwargs)

    monkeypatch.setattr(video_io, "frames_to_uint8", preparing_while_another_run_writes)
    with pytest.raises(ValueError, match=r"render\.mp4' appeared while this run was writing it"):
        export_to_video_with_audio(np.zeros((3, 32, 32, 3), np.uint8), None, None, target, overwrite=False)
    assert target.read_bytes() == OTHER_RUN and os.listdir(tmp_path) == ["render.mp4"]


@pytest.mark.parametrize("renameat2", ["kernel", "absent"])
def test_the_final_rename_never_replaces_even_without_renameat2(tmp_path, monkeypatch, renameat2):
    """Without `renameat2` (macOS, glibc < 2.28) a file is moved by a hard link, which fails if the other run's
    file appeared between the existence check and the move (simulated: the check never sees it)."""
    from ltx2_diffusers.loaders import output_folder

    if renameat2 == "absent":
        monkeypatch.setattr(output_folder, "_RENAMEAT2", None)
        monkeypatch.setattr(output_folder.os.path, "lexists", lambda path: False)
    (tmp_path / "clip.mp4").write_bytes(OTHER_RUN)
    (tmp_path / "clip.mp4.partial").write_bytes(b"this run's render")
    with pytest.raises(ValueError, match="appeared while this run was writing it"):
        video_io.move_into_place(str(tmp_path / "clip.mp4.partial"), str(tmp_path / "clip.mp4"), overwrite=False)
    assert (tmp_path / "clip.mp4").read_bytes() == OTHER_RUN
    os.remove(tmp_path / "clip.mp4")
    video_io.move_into_place(str(tmp_path / "clip.mp4.partial"), str(tmp_path / "clip.mp4"), overwrite=False)
    assert (tmp_path / "clip.mp4").read_bytes() == b"this run's render" and sorted(os.listdir(tmp_path)) == [
        "clip.mp4"
    ]
