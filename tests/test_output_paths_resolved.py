"""`..` after a symbolic link is resolved as the kernel resolves it (the link first, then `..`): the temporary file
of an export lies beside the final file (one filesystem: no EXDEV after the encoding), the output-folder checks look
at the folder the file lands in, and `save_pretrained("link/../saved")` saves beside the link's target, where the OS
puts `link/../saved`. The link's target is on another filesystem (/dev/shm) when this machine has one."""

import os
import shutil
import uuid

import numpy as np
import pytest
from file_tree import file_tree

from ltx2_diffusers.cli_safety import check_output_folder, creating_missing_folders
from ltx2_diffusers.loaders import output_folder
from ltx2_diffusers.video_io import export_to_video_with_audio, partial_path, read_video_with_audio


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """cwd = tmp_path holding `link` -> `<other>/inner`; yields `<other>` (on /dev/shm when it is a tmpfs)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tmp_path
    other = os.path.join(base, f"f2files_other_{uuid.uuid4().hex[:8]}")
    os.makedirs(os.path.join(other, "inner"))
    os.symlink(os.path.join(other, "inner"), tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    yield other
    shutil.rmtree(other, ignore_errors=True)


def test_export_through_link_dotdot_lands_beside_the_target(elsewhere, tmp_path):
    assert os.path.dirname(partial_path("link/../clip.mp4")) == os.path.realpath(elsewhere)
    before = file_tree(tmp_path)
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    export_to_video_with_audio(frames, None, None, "link/../clip.mp4", fps=8, overwrite=False)
    assert sorted(os.listdir(elsewhere)) == ["clip.mp4", "inner"]  # no temporary file left either
    assert file_tree(tmp_path) == before  # nothing written in the cwd
    assert read_video_with_audio(os.path.join(elsewhere, "clip.mp4"), require_audio=False).frames.shape[0] == 3


def test_output_folder_checks_look_where_the_file_lands(elsewhere, tmp_path):
    (tmp_path / "blocker").mkdir()  # in the cwd a folder; where the file lands a file
    with open(os.path.join(elsewhere, "blocker"), "w") as f:
        f.write("the user's file")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_folder("--output-path", "link/../blocker/out.mp4")
    check_output_folder("--output-path", "link/../new/deeper/out.mp4")
    with creating_missing_folders("link/../new/deeper/out.mp4") as created:
        assert created == ["link/../new", "link/../new/deeper"]
        assert os.path.isdir(os.path.join(elsewhere, "new", "deeper")) and not (tmp_path / "new").exists()


def test_resolved_path_keeps_the_name_and_resolves_the_folder(elsewhere, tmp_path):
    real = os.path.realpath(elsewhere)
    assert output_folder.resolved_path("link/../saved") == os.path.join(real, "saved")
    assert output_folder.resolved_path("link/../saved/") == os.path.join(real, "saved")
    assert output_folder.resolved_path("plain") == os.path.join(os.path.realpath(tmp_path), "plain")
    assert output_folder.resolved_path("link") == os.path.join(os.path.realpath(tmp_path), "link")  # not followed


def test_save_pretrained_through_link_dotdot(elsewhere, tmp_path, saved_pipe):
    before = file_tree(tmp_path)
    saved_pipe.save_pretrained("link/../saved")
    assert (output_folder.Path(elsewhere) / "saved" / output_folder.MARKER_NAME).is_file()
    assert sorted(os.listdir(elsewhere)) == ["inner", "saved"]
    assert file_tree(tmp_path) == before


@pytest.fixture(scope="module")
def saved_pipe(tmp_path_factory):
    from converted_folder import converted_folder

    from ltx2_diffusers import LTX2AudioToVideoPipeline

    return LTX2AudioToVideoPipeline.from_pretrained(converted_folder(tmp_path_factory.mktemp("resolved"), 71))
