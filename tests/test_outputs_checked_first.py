"""The converter and `save_pretrained` check where they write before writing anything: an output below a file, in
a folder this process cannot write, or on a file system without room for the weights is refused with a
`ValueError` naming `output_dir` / `save_directory`; every file is hashed before and after."""

import collections
import os
import shutil

import pytest
from converted_folder import converted_folder
from file_tree import file_tree

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.convert import convert_checkpoint


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkedfirst")
    converted = converted_folder(root, 71)
    pipe = LTX2AudioToVideoPipeline.from_pretrained(converted)
    return dict(root=root, converted=converted, pipe=pipe, checkpoint=root / "ltx-2.3.safetensors")


def _write(kind, sources, target):
    if kind == "convert":
        return convert_checkpoint(sources["checkpoint"], target, overwrite=True)
    return sources["pipe"].save_pretrained(target)


def _label(kind):
    return "output_dir" if kind == "convert" else "save_directory"


def _read_only(monkeypatch, folder):
    """`folder` answers as the kernel answers a non-root user for a 0o555 folder (the tests may run as root)."""
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(folder) else access(path, mode))


def _full_disk(monkeypatch, free):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * free + 1, 9 * free + 1, free))


@pytest.mark.parametrize("kind", ["convert", "save"])
@pytest.mark.parametrize("case", ["below_a_file", "read_only_parent", "no_room", "no_room_over_a_previous_one"])
def test_unwritable_output_refused_before_writing(sources, tmp_path, monkeypatch, kind, case):
    (tmp_path / "notes.txt").write_text("the user's notes")
    target = tmp_path / "out"
    words = [_label(kind)]
    if case == "below_a_file":
        target, words = tmp_path / "notes.txt" / "out", words + ["notes.txt", "is a file"]
    elif case == "read_only_parent":
        (tmp_path / "locked").mkdir()
        target, words = tmp_path / "locked" / "out", words + ["locked", "not writable"]
        _read_only(monkeypatch, tmp_path / "locked")
    else:
        if case == "no_room_over_a_previous_one":
            _write(kind, sources, target)
        _full_disk(monkeypatch, free=4096)
        words += [os.fspath(target), "needs at least", "free"]
    before = file_tree(tmp_path)
    with pytest.raises(ValueError) as error:
        _write(kind, sources, target)
    for word in words:
        assert word in str(error.value), (word, str(error.value))
    assert file_tree(tmp_path) == before


def test_an_empty_save_directory_that_cannot_be_written_is_refused(sources, tmp_path, monkeypatch):
    target = tmp_path / "mount"
    target.mkdir()
    _read_only(monkeypatch, target)
    with pytest.raises(ValueError, match="save_directory .*mount.* cannot write"):
        sources["pipe"].save_pretrained(target)
    assert file_tree(tmp_path) == {"mount": "dir"}


@pytest.mark.parametrize("kind", ["convert", "save"])
def test_room_for_the_weights_is_enough(sources, tmp_path, monkeypatch, kind):
    """The free-space check is a lower bound: a disk with room for the weights plus the small files is not refused."""
    size = sum(path.stat().st_size for path in sources["converted"].rglob("*") if path.is_file())
    _full_disk(monkeypatch, free=size)
    _write(kind, sources, tmp_path / "out")
    assert (tmp_path / "out" / "model_index.json").is_file()
