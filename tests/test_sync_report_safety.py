"""`ltx2-sync-report` never loses a user's file and refuses bad outputs before measuring anything.

Every refusal hashes all the files of the folder before and after and requires them unchanged (no new file, no
partial file, no created folder), and requires the error to name the flag and the path at fault.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from file_tree import file_tree
from PIL import Image

from ltx2_diffusers import sync
from ltx2_diffusers.sync import MIN_SAMPLE_RATE, SyncReport, main, sync_report
from ltx2_diffusers.video_io import export_to_video_with_audio


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder holding clip.mp4 (24 frames at 8 fps with a tone) and the user's notes.txt."""
    monkeypatch.chdir(tmp_path)
    frames = np.random.default_rng(0).integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    audio = (0.3 * np.sin(np.linspace(0, 600, 48000)))[None].astype(np.float32)
    export_to_video_with_audio(frames, audio, 48000, tmp_path / "clip.mp4", fps=8)
    (tmp_path / "notes.txt").write_text("the user's notes")
    return tmp_path


@pytest.fixture
def no_measuring(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the video was measured before the output checks refused")

    monkeypatch.setattr(sync, "sync_report_from_file", fail)


# name: (argv after the input, links {name: target, "hard:name": target}, words the error must hold)
REFUSED = {
    "png is a symlink to the input": (["--out", "link.png"], {"link.png": "clip.mp4"}, ["--out", "clip.mp4"]),
    "png is a hard link of the input": (["--out", "hard.png"], {"hard:hard.png": "clip.mp4"}, ["--out", "clip.mp4"]),
    "json is a hard link of the input": (["--out", "report.png"], {"hard:report.json": "clip.mp4"},
                                         ["--out", "report.json", "clip.mp4"]),
    "json is a symlink to the input": (["--out", "report.png"], {"report.json": "clip.mp4"},
                                       ["--out", "report.json", "clip.mp4"]),
    "json is a symlink to the png": (["--out", "r.png", "--overwrite"], {"r.png": "notes.txt", "r.json": "notes.txt"},
                                     ["--out", "same file"]),
    "hard link with --overwrite": (["--out", "report.png", "--overwrite"], {"hard:report.json": "clip.mp4"},
                                   ["--out", "clip.mp4"]),
    "out is the input": (["--out", "clip.mp4"], {}, ["--out", "clip.mp4", ".png"]),
    "out is an mp4": (["--out", "clip4.mp4"], {}, ["--out", "clip4.mp4", ".png"]),
    "out is a text file": (["--out", "r.txt"], {}, ["--out", "r.txt", ".png"]),
    "out is extension-less": (["--out", "report"], {}, ["--out", "report", ".png"]),
    "existing png": (["--out", "notes.png"], {"hard:notes.png": "notes.txt"}, ["--out", "notes.png", "--overwrite"]),
    "existing default json": ([], {"hard:clip_sync.json": "notes.txt"}, ["--out", "clip_sync.json", "--overwrite"]),
    "png is a dangling link": (["--out", "d.png"], {"d.png": "nowhere.png"}, ["--out", "d.png", "not a regular"]),
    "png below a file": (["--out", "notes.txt/sub/r.png"], {}, ["--out", "notes.txt", "not a folder"]),
    "png is a folder": (["--out", "dir.png"], {"dir:dir.png": ""}, ["--out", "dir.png", "not a regular"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_before_measuring_files_untouched(name, work, no_measuring, capsys):
    argv, links, words = REFUSED[name]
    for link, target in links.items():
        if link.startswith("hard:"):
            os.link(target, link[5:])
        elif link.startswith("dir:"):
            os.mkdir(link[4:])
        else:
            os.symlink(target, link)
    before = file_tree(work)
    assert main(["clip.mp4", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltx2-sync-report: error:"), err
    for word in words:
        assert word in err, (word, err)
    assert file_tree(work) == before


def test_existing_outputs_replaced_only_with_overwrite(work, capsys):
    (work / "clip_sync.json").write_text("my notes")
    (work / "clip_sync.png").write_text("my picture")
    before = file_tree(work)
    assert main(["clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert "'clip_sync.png' already exists" in err and "--overwrite" in err
    assert file_tree(work) == before
    assert main(["clip.mp4", "--overwrite"]) == 0
    after = file_tree(work)
    assert after.keys() == before.keys()  # replaced in place, no temporary file left
    assert after["clip.mp4"] == before["clip.mp4"] and after["notes.txt"] == before["notes.txt"]
    assert json.loads((work / "clip_sync.json").read_text())["num_frames"] == 24
    with Image.open(work / "clip_sync.png") as image:
        assert image.size == (1000, 650)


def test_symlinked_output_replaced_not_written_through(work):
    """With --overwrite a link at the output path is replaced by the report; its target stays as it was."""
    os.symlink("notes.txt", "r.png")
    notes = file_tree(work)["notes.txt"]
    assert main(["clip.mp4", "--out", "r.png", "--overwrite"]) == 0
    assert not os.path.islink("r.png") and file_tree(work)["notes.txt"] == notes
    with Image.open("r.png") as image:
        assert image.format == "PNG"


def test_failure_while_writing_keeps_the_old_report(work, monkeypatch):
    """The JSON writer fails half-way (disk full, Ctrl-C): the old JSON is whole and no partial file stays."""
    (work / "clip_sync.json").write_text("the earlier report")

    def failing(self, path):
        with open(path, "w") as handle:
            handle.write('{"fps": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(SyncReport, "save_json", failing)
    with pytest.raises(KeyboardInterrupt):
        main(["clip.mp4", "--overwrite"])
    assert (work / "clip_sync.json").read_text() == "the earlier report"
    assert sorted(os.listdir(work)) == ["clip.mp4", "clip_sync.json", "clip_sync.png", "notes.txt"]


def test_missing_folders_are_created_and_removed_on_failure(work, monkeypatch, capsys):
    assert main(["clip.mp4", "--out", "reports/a/r.png"]) == 0
    assert sorted(os.listdir(work / "reports" / "a")) == ["r.json", "r.png"]
    before = file_tree(work)
    assert main(["notes.txt", "--out", "other/b/r.png"]) == 2  # not a video: refused while measuring
    assert "notes.txt" in capsys.readouterr().err
    assert file_tree(work) == before  # the folders made for it are gone again


def test_module_runs_main(work):
    """`python -m ltx2_diffusers.sync` is the console script (a `__main__` guard)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(
        [sys.executable, "-m", "ltx2_diffusers.sync", "missing.mp4"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2 and "ltx2-sync-report: error:" in run.stderr and "missing.mp4" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "ltx2_diffusers.sync", "--help"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0 and "--overwrite" in run.stdout


@pytest.mark.parametrize("sample_rate", [30, 229, 1000, MIN_SAMPLE_RATE - 1])
def test_sample_rate_below_the_minimum_is_refused(sample_rate):
    frames = np.random.default_rng(1).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    audio = np.random.default_rng(2).standard_normal(sample_rate * 2).astype(np.float32)
    with pytest.raises(ValueError, match=f"sample_rate.*{MIN_SAMPLE_RATE}.*got {sample_rate}"):
        sync_report(frames, audio, sample_rate, 4.0)


def test_minimum_sample_rate_is_measured(recwarn):
    frames = np.random.default_rng(1).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    audio = np.random.default_rng(2).standard_normal(MIN_SAMPLE_RATE * 2).astype(np.float32)
    report = sync_report(frames, audio, MIN_SAMPLE_RATE, 4.0)
    assert report.sample_rate == MIN_SAMPLE_RATE and np.isfinite(report.onset_envelope[1:]).all()
    assert not [w for w in recwarn if "Empty filters" in str(w.message)]  # every mel band has frequency bins
