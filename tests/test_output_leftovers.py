"""Leftovers of an interrupted overwrite (`loaders/output_folder.py`): the previous conversion moved aside by a run
killed between its two moves is moved back even when the user has since created the output folder empty
(`mkdir -p`), and a copy that a run did replace is never moved back after the user deletes the output."""

import os
import shutil

import pytest
from factories import cached_checkpoint
from file_tree import file_tree

from ltx2_diffusers.convert import convert_checkpoint
from ltx2_diffusers.loaders import output_folder


@pytest.fixture
def first(tmp_path):
    out = tmp_path / "out"
    convert_checkpoint(cached_checkpoint("checkpoint", "2.3", seed=21), out, repo_id="first")
    return out


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_an_empty_output_folder_does_not_cost_the_moved_aside_conversion(first):
    before = file_tree(first)
    trash = output_folder.TempFolder(first, "old")  # a run killed between the two moves of an overwrite
    os.rename(first, trash.path / first.name)
    trash.release(remove=False)
    first.mkdir()  # `mkdir -p out` before the next run
    with pytest.raises(ValueError, match="overwrite"):
        convert_checkpoint(cached_checkpoint("checkpoint", "2.3", seed=21), first, repo_id="second")
    assert file_tree(first) == before and leftovers(first) == []


@pytest.mark.parametrize("other", ["user_folder", "file", "link"])
def test_a_moved_aside_conversion_is_kept_when_something_else_took_its_place(first, other):
    before = file_tree(first)
    trash = output_folder.TempFolder(first, "old")
    os.rename(first, trash.path / first.name)
    trash.release(remove=False)
    if other == "user_folder":
        first.mkdir()
        (first / "notes.txt").write_text("mine")
    elif other == "file":
        first.write_text("mine")
    else:
        (first.parent / "empty").mkdir()
        first.symlink_to(first.parent / "empty")
    output_folder.remove_leftovers(first, {})
    assert file_tree(trash.path / first.name) == before  # kept (it was deleted as "the replaced copy")


def test_a_replaced_copy_is_never_moved_back(first, monkeypatch):
    release = output_folder.TempFolder.release

    def killed_before_the_removal(self, remove):
        if remove and self.path.name.startswith(f".{first.name}.old-"):
            release(self, remove=False)
            raise KeyboardInterrupt  # the run dies with the new folder in place, the replaced one not yet removed
        release(self, remove)

    monkeypatch.setattr(output_folder.TempFolder, "release", killed_before_the_removal)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(cached_checkpoint("checkpoint", "2.3", seed=21), first, repo_id="second", overwrite=True)
    monkeypatch.undo()
    assert "second" in (first / "README.md").read_text() and len(leftovers(first)) == 1
    shutil.rmtree(first)  # the user deletes the output
    output_folder.remove_leftovers(first, {})
    assert not first.exists() and leftovers(first) == []  # the first conversion (replaced) is not resurrected
