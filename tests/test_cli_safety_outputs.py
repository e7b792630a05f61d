"""`ltx2-a2v` and `ltx2-av`: existing outputs (and the sidecars a run writes) are never replaced without
`--overwrite`; every folder above `--output-path` is checked, and the missing ones created, before any model loads
(and removed again when the run fails); `--seed`, `--device` and `--num-inference-steps` are refused before loading.

Every refusal hashes all of the user's files before and after and fails if a model would have been loaded.
"""

import os
import types

import av
import numpy as np
import pytest
import torch
from cli_user_folder import CLIS, song_and_model
from file_tree import file_tree
from PIL import Image

from ltx2_diffusers.validation import MAX_INFERENCE_STEPS


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The user's folder: a song, a converted-model folder, an earlier render with its sync report, notes."""
    monkeypatch.chdir(tmp_path)
    song_and_model(tmp_path)
    (tmp_path / "old.mp4").write_bytes(b"an earlier render the user keeps")
    (tmp_path / "old_sync.json").write_text("my notes on the earlier render")
    (tmp_path / "notes.txt").write_text("not a folder")
    return tmp_path


class _Render:
    """Stands in for either pipeline: 9 grey frames of 64x64 and a second of a 440 Hz tone at 16 kHz."""

    config = {"model_variant": "dev"}

    def __init__(self):
        self.calls = 0

    def __call__(self, **kwargs):
        self.calls += 1
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        frames = np.random.default_rng(self.calls).random((1, 9, 64, 64, 3), dtype=np.float32)
        return types.SimpleNamespace(
            frames=frames, audio=torch.from_numpy(tone[None].astype(np.float32)), audio_sample_rate=16000
        )


@pytest.fixture
def loads(monkeypatch):
    """`load_pipeline` of both CLIs records the output folder's state when loading and returns `_Render`."""
    seen = []

    def load(args):
        seen.append(os.path.isdir(os.path.dirname(os.path.abspath(args.output_path))))
        return _Render()

    for module, _ in CLIS.values():
        monkeypatch.setattr(module, "load_pipeline", load)
        monkeypatch.setattr(module, "prepare_pipeline", lambda pipe, args, device: None)
    return seen


@pytest.fixture
def no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the cheap checks refused the input")

    for module, _ in CLIS.values():
        monkeypatch.setattr(module, "load_pipeline", fail)


def _argv(cli, output, *extra):
    inputs = ("--audio-path", "song.wav") if cli == "a2v" else ()
    size = ("--num-frames", "9", "--height", "64", "--width", "64", "--no-stage-2", "--device", "cpu")
    return ["--model", "model", *inputs, "--prompt", "p", "--output-path", output, *size, *extra]


def _refused(cli, argv, capsys):
    module, prog = CLIS[cli]
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{prog}: error:" in err
    return err


# ------------------------------------------------------------------------------------- existing outputs
# name: (output, extra flags, the existing path the error must name)
EXISTING = {
    "the video": ("old.mp4", (), "old.mp4"),
    "the video, with a sync report": ("old.mp4", ("--sync-report",), "old.mp4"),
    "another spelling": ("./model/../old.mp4", ("--sync-report",), "old.mp4"),
    "only the sidecar exists": ("fresh.mp4", ("--sync-report",), "fresh_sync.json"),
}


@pytest.mark.parametrize("cli", list(CLIS))
@pytest.mark.parametrize("name", list(EXISTING))
def test_existing_output_refused_without_overwrite(cli, name, user, no_loading, capsys):
    output, extra, existing = EXISTING[name]
    if existing == "fresh_sync.json":
        (user / "fresh_sync.json").write_text("a report the user keeps")
    before = file_tree(user)
    err = _refused(cli, _argv(cli, output, *extra), capsys)
    assert existing in err and "already exists" in err and "--overwrite" in err, err
    assert file_tree(user) == before


def test_existing_sweep_table_refused_without_overwrite(user, no_loading, capsys):
    (user / "clip_modality_sweep.md").write_text("the table of an earlier sweep")
    before = file_tree(user)
    err = _refused("a2v", _argv("a2v", "clip.mp4", "--modality-scale-sweep", "1,3"), capsys)
    assert "clip_modality_sweep.md" in err and "--overwrite" in err
    assert file_tree(user) == before


@pytest.mark.parametrize("cli", list(CLIS))
def test_overwrite_still_refuses_an_input(cli, user, no_loading, capsys):
    """`--overwrite` replaces earlier outputs, never an input: the sync report as a hard link of the image."""
    Image.new("RGB", (64, 64), (200, 10, 10)).save(user / "face.png")
    os.link("face.png", "out_sync.png")
    before = file_tree(user)
    err = _refused(cli, _argv(cli, "out.mp4", "--image", "face.png", "0", "1", "--sync-report", "--overwrite"), capsys)
    assert "--image" in err and "face.png" in err and "out_sync.png" in err, err
    assert file_tree(user) == before


@pytest.mark.parametrize("cli", list(CLIS))
def test_overwrite_replaces_the_earlier_render_and_its_report(cli, user, loads, capsys):
    before = file_tree(user)
    module, _ = CLIS[cli]
    assert module.main(_argv(cli, "old.mp4", "--sync-report", "--overwrite")) == 0
    after = file_tree(user)
    assert set(after) == set(before) | {"old_sync.png"}  # no temporary file left
    assert after["old.mp4"] != before["old.mp4"] and after["old_sync.json"] != before["old_sync.json"]
    assert {k: v for k, v in after.items() if k not in ("old.mp4", "old_sync.json", "old_sync.png")} == {
        k: v for k, v in before.items() if k not in ("old.mp4", "old_sync.json")
    }
    with av.open(str(user / "old.mp4")) as container:
        assert container.streams.video[0].frames == 9
    # A second run into the same name is refused again: the run does not remember what it wrote.
    before = file_tree(user)
    _refused(cli, _argv(cli, "old.mp4", "--sync-report"), capsys)
    assert file_tree(user) == before


# ------------------------------------------------------------------------------------- output folders
@pytest.mark.parametrize("cli", list(CLIS))
@pytest.mark.parametrize(
    "output,words",
    [
        ("notes.txt/sub/out.mp4", ["--output-path", "notes.txt", "is a file, not a folder"]),
        ("notes.txt/out.mp4", ["--output-path", "notes.txt", "is a file, not a folder"]),
        ("notes.txt/a/b/c/out.mp4", ["--output-path", "notes.txt", "is a file, not a folder"]),
        ("dangling/sub/out.mp4", ["--output-path", "dangling", "link to nowhere"]),
    ],
)
def test_output_below_a_file_refused_before_loading(cli, output, words, user, no_loading, capsys):
    os.symlink("nowhere", "dangling")
    before = file_tree(user)
    err = _refused(cli, _argv(cli, output), capsys)
    for word in words:
        assert word in err, (word, err)
    assert file_tree(user) == before


@pytest.mark.parametrize("cli", list(CLIS))
def test_output_in_a_read_only_folder_refused_before_loading(cli, user, no_loading, monkeypatch, capsys):
    (user / "locked").mkdir()
    locked = str(user / "locked")
    access = os.access
    # The permission as the kernel would answer a non-root user for a 0o555 folder (tests may run as root).
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == locked else access(path, mode))
    before = file_tree(user)
    err = _refused(cli, _argv(cli, "locked/new/out.mp4"), capsys)
    assert "locked" in err and "not writable" in err
    assert file_tree(user) == before


@pytest.mark.parametrize("cli", list(CLIS))
def test_missing_folders_created_before_loading(cli, user, loads):
    module, _ = CLIS[cli]
    assert module.main(_argv(cli, "renders/today/out.mp4")) == 0
    assert loads == [True]  # the folders existed when the model loaded
    assert os.listdir(user / "renders" / "today") == ["out.mp4"]


@pytest.mark.parametrize("cli", list(CLIS))
@pytest.mark.parametrize("error", [ValueError("bad weights"), KeyboardInterrupt()])
def test_created_folders_removed_when_the_run_fails(cli, error, user, monkeypatch):
    module, _ = CLIS[cli]
    (user / "renders").mkdir()
    (user / "renders" / "keep.txt").write_text("the user's folder stays")
    before = file_tree(user)

    def failing(args):
        assert os.path.isdir(user / "renders" / "today" / "x")
        raise error

    monkeypatch.setattr(module, "load_pipeline", failing)
    if isinstance(error, ValueError):
        assert module.main(_argv(cli, "renders/today/x/out.mp4")) == 2
    else:
        with pytest.raises(KeyboardInterrupt):
            module.main(_argv(cli, "renders/today/x/out.mp4"))
    assert file_tree(user) == before  # renders/today and renders/today/x are gone again, renders stays


# ------------------------------------------------------------------------------------- flag values
# name: (flags, words the error must hold)
FLAGS = {
    "seed 2**64": (("--seed", str(2**64)), ["--seed", str(2**64)]),
    "seed 2**63": (("--seed", str(2**63)), ["--seed", "2**63 - 1"]),
    "negative seed": (("--seed", "-1"), ["--seed", ">= 0"]),
    "meta device": (("--device", "meta"), ["--device", "meta"]),
    "unknown device": (("--device", "toaster"), ["--device", "toaster"]),
    "absent device kind": (("--device", "hpu"), ["--device", "hpu"]),
    "a million steps": (("--num-inference-steps", "1000000"), ["--num-inference-steps", str(MAX_INFERENCE_STEPS)]),
    "one step above": (("--num-inference-steps", str(MAX_INFERENCE_STEPS + 1)), ["--num-inference-steps"]),
}


@pytest.mark.parametrize("cli", list(CLIS))
@pytest.mark.parametrize("name", list(FLAGS))
def test_flag_values_refused_before_loading(cli, name, user, no_loading, capsys):
    flags, words = FLAGS[name]
    before = file_tree(user)
    err = _refused(cli, _argv(cli, "out.mp4", *flags), capsys)
    for word in words:
        assert word in err, (word, err)
    assert file_tree(user) == before


@pytest.mark.parametrize("cli", list(CLIS))
def test_bounds_themselves_are_accepted(cli, user, loads):
    module, _ = CLIS[cli]
    argv = _argv(cli, "out.mp4", "--seed", str(2**63 - 1), "--num-inference-steps", str(MAX_INFERENCE_STEPS))
    args = module.parse_args(argv)
    assert args.seed == 2**63 - 1 and args.num_inference_steps == MAX_INFERENCE_STEPS
    assert torch.Generator("cpu").manual_seed(args.seed).initial_seed() == 2**63 - 1
