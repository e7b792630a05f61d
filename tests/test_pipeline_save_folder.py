"""Where `save_pretrained` writes: the folder is built beside `save_directory` and moved into place, so an
interrupted save leaves the previous folder as it was (hashes before and after); a folder holding the user's files
is refused and left untouched; the folder the pipeline was loaded from can be saved over (the pipeline keeps
running, the reloaded one is identical); a previous save's `user_loras/` does not survive a new save; only
safetensors are written."""

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.torch
import soundfile as sf
import torch
from converted_folder import converted_folder
from factories import build_lora
from test_pipeline import call

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.loaders import output_folder


# identical weights (torch.equal) computed from freshly read files: the float32 sums may differ in the last bits
# (as in test_pipeline_save_load)
TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("savefolder")
    converted = converted_folder(root, 61)
    user = build_lora(root / "user.safetensors", root / "ltx-2.3.safetensors", seed=64, dtype=torch.float32)
    rate = 16000
    t = np.arange(int(rate * 0.5)) / rate
    sf.write(root / "a.wav", np.stack([np.sin(2 * np.pi * 250 * t), np.cos(2 * np.pi * 4 * t)], 1) * 0.3, rate)
    return dict(converted=converted, user=user, audio=root / "a.wav")


def tree(folder):
    """Every file (sha256) and folder under `folder`, by relative path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def siblings(folder):
    """The temporary `.{name}.partial-*` / `.old-*` folders beside `folder`."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def latents(pipe, setup):
    return call(pipe, setup["audio"], output_type="latent").frames


def assert_same_pipeline(a, b):
    for name, component in a.components.items():
        if isinstance(component, torch.nn.Module) and name != "distilled_lora":
            sa, sb = component.state_dict(), getattr(b, name).state_dict()
            assert sa.keys() == sb.keys(), name
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    pa, pb = a.distilled_lora.pairs(), b.distilled_lora.pairs()
    assert pa.keys() == pb.keys() and all(torch.equal(x, y) for k in pa for x, y in zip(pa[k], pb[k]))


def load(folder):
    pipe = LTX2AudioToVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def user_folder(target):
    (target / "transformer").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors").write_text("my backup")
    (target / "transformer" / "config.json").write_text('{"mine": 1}')
    (target / "README.md").write_text("my readme")
    return "notes.txt"


def previous_save_plus_a_user_file(target, pipe):
    pipe.save_pretrained(target)
    (target / "vae" / "mine.safetensors").write_text("mine")
    return "vae/mine.safetensors"


@pytest.mark.parametrize("layout", ["user_folder", "previous_save_plus_a_user_file", "converted_plus_a_user_file"])
def test_a_folder_holding_the_users_files_is_refused_and_left_as_it_was(setup, tmp_path, layout):
    pipe = load(setup["converted"])
    target = tmp_path / "out"
    if layout == "user_folder":
        foreign = user_folder(target)
    elif layout == "previous_save_plus_a_user_file":
        foreign = previous_save_plus_a_user_file(target, pipe)
    else:
        shutil.copytree(setup["converted"], target)
        (target / "notes.txt").write_text("mine")
        foreign = "notes.txt"
    before = tree(target)
    with pytest.raises(ValueError, match="save_directory") as error:
        pipe.save_pretrained(target)
    assert str(target) in str(error.value) and foreign in str(error.value)
    assert tree(target) == before
    assert siblings(target) == []


def test_saving_into_the_folder_the_pipeline_was_loaded_from(setup, tmp_path):
    folder = tmp_path / "conv"
    shutil.copytree(setup["converted"], folder)
    pipe = load(folder)
    expected = latents(pipe, setup)
    old_index = json.loads((folder / "model_index.json").read_text())
    pipe.save_pretrained(folder)
    assert siblings(folder) == []
    assert torch.equal(latents(pipe, setup), expected)  # the weights read from the replaced files are intact
    reloaded = load(folder)
    assert_same_pipeline(pipe, reloaded)
    assert (latents(reloaded, setup) - expected).abs().max().item() <= TOL
    index = json.loads((folder / "model_index.json").read_text())
    assert {k: index[k] for k in ("model_version", "model_variant", "distilled_lora_scale")} == {
        k: old_index[k] for k in ("model_version", "model_variant", "distilled_lora_scale")
    }
    # the saved folder is again a folder of ours: the reloaded pipeline saves over it too
    first = tree(folder)
    reloaded.save_pretrained(folder)
    assert set(tree(folder)) == set(first) and siblings(folder) == []
    assert (latents(load(folder), setup) - expected).abs().max().item() <= TOL


class FullDisk(OSError):
    pass


def fail_at_write(monkeypatch, number, error):
    """`safetensors.torch.save_file` writes part of the `number`-th file, then raises `error` (a full disk)."""
    real, count = safetensors.torch.save_file, [0]

    def save_file(tensors, filename, metadata=None):
        count[0] += 1
        if count[0] == number:
            with open(filename, "wb") as handle:
                handle.write(b"partial")
            raise error
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return count


@pytest.mark.parametrize("error", [FullDisk(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("at", [1, 3, 7])
def test_an_interrupted_save_over_the_loaded_folder_leaves_it_as_it_was(setup, tmp_path, monkeypatch, error, at):
    folder = tmp_path / "conv"
    shutil.copytree(setup["converted"], folder)
    pipe = load(folder)
    expected = latents(pipe, setup)
    before = tree(folder)
    count = fail_at_write(monkeypatch, at, error)
    with pytest.raises(type(error)):
        pipe.save_pretrained(folder)
    assert count[0] == at
    monkeypatch.undo()
    assert tree(folder) == before
    assert siblings(folder) == []
    assert torch.equal(latents(load(folder), setup), expected)


def test_an_interrupted_save_over_an_earlier_save_keeps_the_earlier_one_whole(setup, tmp_path, monkeypatch):
    """The auditors' case: save, change every weight, save again with the disk filling up: the folder is the first
    save, not a mix of old and new components."""
    pipe = load(setup["converted"])
    target = tmp_path / "saved"
    pipe.save_pretrained(target)
    before = tree(target)
    expected = latents(load(target), setup)
    with torch.no_grad():
        for name in ("transformer", "vae", "audio_vae", "vocoder", "connectors", "latent_upsampler"):
            for parameter in getattr(pipe, name).parameters():
                parameter.add_(1.0)
    fail_at_write(monkeypatch, 4, FullDisk(28, "No space left on device"))
    with pytest.raises(FullDisk):
        pipe.save_pretrained(target)
    monkeypatch.undo()
    assert tree(target) == before and siblings(target) == []
    assert torch.equal(latents(load(target), setup), expected)
    pipe.save_pretrained(target)  # with room on the disk the new weights replace the earlier save as a whole
    assert tree(target) != before
    assert_same_pipeline(pipe, load(target))


def test_a_killed_saves_leftover_is_removed_by_the_next_save(setup, tmp_path):
    pipe = load(setup["converted"])
    target = tmp_path / "saved"
    leftover = output_folder.TempFolder(target, "partial")  # as a killed save leaves it: marker, lock released
    (leftover.path / "transformer").mkdir()
    leftover.release(remove=False)
    live = output_folder.TempFolder(target, "partial")  # another save still running: its lock is held
    try:
        pipe.save_pretrained(target)
        assert not leftover.path.exists() and live.path.exists()
    finally:
        live.release(remove=True)
    assert siblings(target) == []
    assert (target / output_folder.MARKER_NAME).is_file()


def test_a_save_killed_between_its_two_moves_leaves_the_previous_save_to_the_next_one(setup, tmp_path, monkeypatch):
    """Killed after moving the previous save aside, before moving the new one in: the next save moves it back
    first, so when that save fails too the previous save is still there (it was deleted with the leftover)."""
    pipe = load(setup["converted"])
    target = tmp_path / "saved"
    pipe.save_pretrained(target)
    before = tree(target)
    killed = output_folder.TempFolder(target, "old")  # as publish leaves it when killed between the two moves
    os.rename(target, killed.path / target.name)
    killed.release(remove=False)
    fail_at_write(monkeypatch, 2, FullDisk(28, "No space left on device"))
    with pytest.raises(FullDisk):
        pipe.save_pretrained(target)
    monkeypatch.undo()
    assert tree(target) == before and siblings(target) == []


def test_adapters_deleted_since_an_earlier_save_do_not_come_back(setup, tmp_path):
    pipe = load(setup["converted"])
    target = tmp_path / "saved"
    pipe.load_lora_weights(setup["user"], adapter_name="mine")
    pipe.save_pretrained(target)
    assert load(target).get_list_adapters() == {"transformer": ["mine"]}
    pipe.delete_adapters("mine")
    pipe.save_pretrained(target)
    assert not (target / "user_loras").exists()
    reloaded = load(target)
    assert not getattr(reloaded.transformer, "peft_config", None)
    assert (latents(reloaded, setup) - latents(load(setup["converted"]), setup)).abs().max().item() <= TOL


@pytest.mark.parametrize("option", [{"safe_serialization": False}, {"use_flashpack": True}])
def test_only_safetensors_are_written(setup, tmp_path, option):
    pipe = load(setup["converted"])
    target = tmp_path / "saved"
    with pytest.raises(ValueError, match=next(iter(option))):
        pipe.save_pretrained(target, **option)
    assert not target.exists() and siblings(target) == []


def test_an_empty_or_new_folder_is_written_and_marked(setup, tmp_path):
    pipe = load(setup["converted"])
    for target in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        if target.name == "empty":
            target.mkdir()
        pipe.save_pretrained(os.fspath(target))
        marker = json.loads((target / output_folder.MARKER_NAME).read_text())
        listed = {p for p in marker["files"] if not p.endswith("/")}
        on_disk = {k for k, v in tree(target).items() if v != "dir"} - {output_folder.MARKER_NAME}
        assert listed == on_disk and "pipeline.py" in listed
        assert siblings(target) == []


def test_push_to_hub_uploads_the_whole_folder_once_it_is_in_place(setup, tmp_path, monkeypatch):
    """No network: the Hub calls are recorded. The repository is created before anything is written, the model card
    is part of the marked folder, and the upload is of the final folder, complete (shim, user adapters)."""
    import types

    import diffusers.utils.hub_utils
    import huggingface_hub

    calls = []
    target = tmp_path / "saved"

    def create_repo(repo_id, **kwargs):
        calls.append(("create", repo_id, target.exists()))
        return types.SimpleNamespace(repo_id="me/" + repo_id)

    def model_card(repo_id, **kwargs):
        return huggingface_hub.ModelCard("card of " + repo_id)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(diffusers.utils.hub_utils, "load_or_create_model_card", model_card)
    pipe = load(setup["converted"])
    pipe.load_lora_weights(setup["user"], adapter_name="mine")
    pipe._upload_folder = lambda folder, repo_id, **kw: calls.append(
        ("upload", folder, repo_id, kw.get("commit_message"), sorted(tree(pathlib.Path(folder))))
    )
    pipe.save_pretrained(target, push_to_hub=True, commit_message="first")
    assert calls[0] == ("create", "saved", False)
    kind, folder, repo_id, message, listing = calls[1]
    assert (kind, folder, repo_id, message) == ("upload", str(target), "me/saved", "first")
    expected = {
        "pipeline.py",
        "README.md",
        "user_loras/mine/pytorch_lora_weights.safetensors",
        output_folder.MARKER_NAME,
    }
    assert expected <= set(listing)
    assert "card of me/saved" in (target / "README.md").read_text()
    assert "README.md" in json.loads((target / output_folder.MARKER_NAME).read_text())["files"]


def test_an_existing_empty_folder_is_filled_in_place(setup, tmp_path, monkeypatch):
    """An empty `save_directory` (a mount point, or in a folder the user cannot write) is kept: nothing is built
    beside it, and the folder itself is never removed or renamed."""
    pipe = load(setup["converted"])
    parent = tmp_path / "readonly_parent"
    target = parent / "mount"
    target.mkdir(parents=True)
    inode = target.stat().st_ino

    real_temp_folder = output_folder.TempFolder

    def no_sibling(output_dir, kind, folder=None):
        where = output_dir.parent if folder is None else folder  # the components' own saves build inside theirs
        if where != target and target not in where.parents:
            raise AssertionError("a temporary folder beside save_directory")
        return real_temp_folder(output_dir, kind, folder=folder)

    real_rmdir = os.rmdir

    def busy_rmdir(path, *args, **kwargs):  # a mount point cannot be removed
        if os.path.abspath(path) == os.fspath(target):
            raise OSError(16, "Device or resource busy")
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(output_folder, "TempFolder", no_sibling)
    monkeypatch.setattr(os, "rmdir", busy_rmdir)
    pipe.save_pretrained(target)
    monkeypatch.undo()
    assert target.stat().st_ino == inode and sorted(p.name for p in parent.iterdir()) == ["mount"]
    marker = json.loads((target / output_folder.MARKER_NAME).read_text())
    on_disk = {k for k, v in tree(target).items() if v != "dir"} - {output_folder.MARKER_NAME}
    assert {p for p in marker["files"] if not p.endswith("/")} == on_disk
    assert not [p for p in target.iterdir() if p.name.startswith(".mount.partial-")]
    assert_same_pipeline(pipe, load(target))


@pytest.mark.parametrize("failure", ["write", "move"])
def test_an_interrupted_save_into_an_empty_folder_leaves_it_empty(setup, tmp_path, monkeypatch, failure):
    pipe = load(setup["converted"])
    target = tmp_path / "empty"
    target.mkdir()
    if failure == "write":
        fail_at_write(monkeypatch, 3, FullDisk(28, "No space left on device"))
    else:  # the third entry cannot be moved up (e.g. a full disk's journal, a kill between moves)
        real, count = output_folder._rename_noreplace, [0]

        def rename(src, dst):
            count[0] += 1
            if count[0] == 3:
                raise KeyboardInterrupt
            return real(src, dst)

        monkeypatch.setattr(output_folder, "_rename_noreplace", rename)
    with pytest.raises((FullDisk, KeyboardInterrupt)):
        pipe.save_pretrained(target)
    monkeypatch.undo()
    assert list(target.iterdir()) == [] and siblings(target) == []
    pipe.save_pretrained(target)  # the folder is still usable
    assert_same_pipeline(pipe, load(target))


KILLED_SAVE = """
import os, sys, time
from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.pipelines import pipeline_saving
pipe = LTX2AudioToVideoPipeline.from_pretrained(sys.argv[1])
real = pipeline_saving.write_extras
def write_extras_then_hang(pipe, folder):
    real(pipe, folder)
    open(sys.argv[3], "w").write(os.fspath(folder))
    time.sleep(600)
pipeline_saving.write_extras = write_extras_then_hang
pipe.save_pretrained(sys.argv[2])
"""


def test_a_save_into_an_empty_folder_killed_mid_build_is_cleaned_up_by_the_next_save(setup, tmp_path, caplog):
    """kill -9 while the save is built inside an existing empty folder: the next save into it removes the
    leftover (its temp marker's lock is free), names it in a warning, and saves."""
    import signal
    import subprocess
    import sys
    import time

    target, ready = tmp_path / "empty", tmp_path / "ready.txt"
    target.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parents[1] / "src")] + sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(setup["converted"]), str(target), str(ready)], env=env
    )
    try:
        deadline = time.time() + 300
        while not ready.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), "the save never reached its build"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    leftover = pathlib.Path(ready.read_text())
    assert [p.name for p in target.iterdir()] == [leftover.name] and leftover.name.startswith(".empty.partial-")
    assert (leftover / output_folder.TEMP_MARKER_NAME).is_file() and (leftover / "model_index.json").is_file()
    pipe = load(setup["converted"])
    with caplog.at_level("WARNING"):
        pipe.save_pretrained(target)
    assert os.fspath(leftover) in caplog.text
    assert not leftover.exists() and (target / output_folder.MARKER_NAME).is_file()
    assert not [p for p in target.iterdir() if ".partial-" in p.name] and siblings(target) == []
    assert_same_pipeline(pipe, load(target))


def test_a_save_into_an_empty_folder_leaves_a_live_saves_build_alone(setup, tmp_path):
    """A build inside the folder whose lock is held (another save still running) is neither removed nor saved
    over: the folder is not empty, and not a save of this package."""
    target = tmp_path / "empty"
    target.mkdir()
    live = output_folder.TempFolder(target, "partial", folder=target)
    try:
        with pytest.raises(ValueError, match="save_directory"):
            load(setup["converted"]).save_pretrained(target)
        assert live.path.exists() and [p.name for p in target.iterdir()] == [live.path.name]
    finally:
        live.release(remove=True)
