"""`convert --overwrite` (and `save_pretrained`) never replace a previous conversion whose files the user edited:
the marker records each file's size and mtime_ns, and a listed file that differs is refused, naming it (hashes of
the whole folder before and after). Markers written before these were recorded are still accepted. Saving a
pipeline over the converted folder it was loaded from keeps the converter's model card (README.md)."""

import json
import os
import shutil

import pytest
import torch
from converted_folder import converted_folder
from factories import cached_checkpoint
from file_tree import file_tree

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.convert import convert_checkpoint
from ltx2_diffusers.loaders import output_folder


@pytest.fixture(scope="module")
def checkpoint():
    return cached_checkpoint("checkpoint", "2.3", seed=81, dtype=torch.float32)


def _converted(checkpoint, out):
    convert_checkpoint(checkpoint, out)
    marker = json.loads((out / output_folder.MARKER_NAME).read_text())
    on_disk = {k for k, v in file_tree(out).items() if v != "dir"} - {output_folder.MARKER_NAME}
    assert set(marker["stats"]) == on_disk  # every file recorded
    return out


def _edit_same_size(path):
    """Change a byte without changing the size; the mtime moves on (ns clocks may be coarse: force it)."""
    data = bytearray(path.read_bytes())
    data[-1:] = b" " if data[-1:] != b" " else b"\n"
    stat = os.stat(path)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize("name,edit", [
    ("README.md", lambda p: p.write_text(p.read_text() + "\nmy notes on this model\n")),
    ("transformer/config.json", _edit_same_size),
])  # fmt: skip
def test_overwrite_refuses_a_conversion_the_user_edited(checkpoint, tmp_path, name, edit):
    out = _converted(checkpoint, tmp_path / "converted")
    edit(out / name)
    before = file_tree(tmp_path)
    with pytest.raises(ValueError, match=f"{name!r} was changed"):
        convert_checkpoint(checkpoint, out, overwrite=True)
    assert file_tree(tmp_path) == before


def test_a_copy_without_modification_times_is_refused_saying_why(checkpoint, tmp_path):
    """Decided: such a copy is refused, never replaced (sizes and times are all the marker has: no hashes of the
    weights), and the message says that the copy itself is why."""
    original = _converted(checkpoint, tmp_path / "converted")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, copy_function=shutil.copyfile)  # `cp -r`: new modification times
    for path in copy.rglob("*"):  # make every time differ even on a coarse clock
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    before = file_tree(tmp_path)
    with pytest.raises(ValueError, match="was changed since .* a copy made without keeping modification times"):
        convert_checkpoint(checkpoint, copy, overwrite=True)
    assert file_tree(tmp_path) == before


def test_a_conversion_made_before_markers_is_refused_saying_why(checkpoint, tmp_path):
    """Decided: a folder without the marker is never replaced, even one that looks like an early conversion (its
    files cannot be told from the user's); the message says so."""
    out = _converted(checkpoint, tmp_path / "converted")
    (out / output_folder.MARKER_NAME).unlink()  # as written before the marker existed
    (out / "notes.txt").write_text("the user's notes")
    before = file_tree(tmp_path)
    with pytest.raises(ValueError, match="made before this package marked its folders"):
        convert_checkpoint(checkpoint, out, overwrite=True)
    assert file_tree(tmp_path) == before


def test_an_unchanged_conversion_is_replaced_and_an_old_marker_is_accepted(checkpoint, tmp_path):
    out = _converted(checkpoint, tmp_path / "converted")
    first = json.loads((out / output_folder.MARKER_NAME).read_text())["id"]
    convert_checkpoint(checkpoint, out, overwrite=True)
    marker_path = out / output_folder.MARKER_NAME
    marker = json.loads(marker_path.read_text())
    assert marker["id"] != first
    del marker["stats"]  # as written before sizes and times were recorded
    marker_path.write_text(json.dumps(marker))
    (out / "README.md").write_text("edited, but the old marker cannot tell")
    convert_checkpoint(checkpoint, out, overwrite=True)
    assert json.loads(marker_path.read_text())["id"] != marker["id"]
    assert "edited" not in (out / "README.md").read_text()


def test_save_over_the_loaded_conversion_keeps_its_model_card(tmp_path):
    folder = converted_folder(tmp_path, 83)
    card = (folder / "README.md").read_bytes()
    pipe = LTX2AudioToVideoPipeline.from_pretrained(folder)
    pipe.save_pretrained(folder)
    assert (folder / "README.md").read_bytes() == card
    assert "README.md" in json.loads((folder / output_folder.MARKER_NAME).read_text())["files"]
    pipe.save_pretrained(folder)  # again: the carried card is the save's own now, still unchanged
    assert (folder / "README.md").read_bytes() == card
    other = tmp_path / "elsewhere"
    pipe.save_pretrained(other)  # a new folder: no card of another folder is copied
    assert not (other / "README.md").exists()
    (folder / "README.md").write_text("my own card")
    before = file_tree(folder)
    with pytest.raises(ValueError, match="'README.md' was changed"):
        pipe.save_pretrained(folder)
    assert file_tree(folder) == before
