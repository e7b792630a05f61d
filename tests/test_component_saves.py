"""`save_pretrained` of the transformer, the audio VAE and the vocoder (`loaders/component_save.py`): the same files as
diffusers' `ModelMixin.save_pretrained` writes into an empty folder, landing whole or not at all: a save that fails
or is interrupted leaves every file in the folder byte-identical (sha256 before and after) and no temporary folder;
the previous save's shards go only once the new files are in place; the user's other files are never touched."""

import contextlib
import errno
import os

import pytest
import safetensors.torch
import torch
from diffusers.models.modeling_utils import ModelMixin
from file_tree import file_tree
from safetensors import safe_open
from test_transformer_diffusers_interop import randomize_, tiny_diffusers_config

from ltx2_diffusers import AutoencoderAudioMel, LTX2AudioVideoTransformer, LTX2HiFiGANVocoder
from ltx2_diffusers.loaders import component_save, output_folder


def _transformer(seed):
    return randomize_(LTX2AudioVideoTransformer(**tiny_diffusers_config("2.3")), seed)


def _audio_vae(seed):
    torch.manual_seed(seed)
    return AutoencoderAudioMel(base_channels=16, latent_channels=4, mel_bins=16)


def _vocoder(seed):
    torch.manual_seed(seed)
    return LTX2HiFiGANVocoder(
        hidden_channels=16, upsample_factors=(2,), upsample_kernel_sizes=(4,), bwe_hidden_channels=16,
        bwe_upsample_factors=(4, 3, 4), bwe_upsample_kernel_sizes=(8, 7, 8), filter_length=64, hop_length=16,
        window_length=64,
    )  # fmt: skip


MODELS = pytest.mark.parametrize(
    "make", [_transformer, _audio_vae, _vocoder], ids=["transformer", "audio_vae", "vocoder"]
)


def _shard_size(model, shards):
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) // shards + 1


def _contents(folder):
    """Each file of `folder`: a safetensors file as its metadata and tensors, any other file as its bytes."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                out[name] = (f.metadata(), {k: f.get_tensor(k) for k in f.keys()})
        else:
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def _assert_same_save(ours, theirs):
    a, b = _contents(ours), _contents(theirs)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".safetensors"):
            assert a[name][0] == b[name][0] and a[name][1].keys() == b[name][1].keys()
            assert all(torch.equal(a[name][1][k], b[name][1][k]) for k in a[name][1])
        else:
            assert a[name] == b[name], name


def _assert_loads_as(folder, model):
    loaded = type(model).from_pretrained(folder)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@MODELS
def test_a_save_equals_diffusers_save_into_an_empty_folder_and_loads(make, tmp_path):
    model = make(0)
    size = _shard_size(model, 3)
    model.save_pretrained(tmp_path / "ours", max_shard_size=size)
    ModelMixin.save_pretrained(model, tmp_path / "sharded", max_shard_size=size)
    assert len(list((tmp_path / "ours").glob("*.safetensors"))) > 1
    _assert_same_save(tmp_path / "ours", tmp_path / "sharded")
    _assert_loads_as(tmp_path / "ours", model)
    # Saved over the sharded save, unsharded: diffusers' in-place save keeps the index of the deleted shards (the
    # folder then fails to load); ours equals diffusers' save into an empty folder.
    model.save_pretrained(tmp_path / "ours")
    ModelMixin.save_pretrained(model, tmp_path / "plain")
    _assert_same_save(tmp_path / "ours", tmp_path / "plain")
    _assert_loads_as(tmp_path / "ours", model)


def _previous_save(tmp_path):
    """A sharded save of one transformer plus the user's files; returns its folder."""
    target = tmp_path / "model"
    model = _transformer(0)
    model.save_pretrained(target, max_shard_size=_shard_size(model, 4))
    (target / "README.md").write_text("my notes\n")
    (target / "runs").mkdir()
    (target / "runs" / "loss.csv").write_text("1,0.5\n")
    return target


def _failing_on_call(real, call, error, partial=False):
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            if partial:  # the writer's file left half written
                with open(args[1], "wb") as f:
                    f.write(b"partial")
            raise error
        return real(*args, **kwargs)

    return fake


ERRORS = pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()], ids=["disk_full", "ctrl_c"]
)


@ERRORS
def test_b_a_save_failing_while_writing_leaves_the_folder_as_it_was(tmp_path, monkeypatch, error):
    target = _previous_save(tmp_path)
    before = file_tree(tmp_path)
    fake = _failing_on_call(safetensors.torch.save_file, 2, error, partial=True)
    monkeypatch.setattr(safetensors.torch, "save_file", fake)
    with pytest.raises(type(error)):
        _transformer(1).save_pretrained(target, max_shard_size=_shard_size(_transformer(1), 2))
    assert file_tree(tmp_path) == before


@ERRORS
@pytest.mark.parametrize("move", ["second", "last"])
def test_b_a_save_failing_while_moving_leaves_the_folder_as_it_was(tmp_path, monkeypatch, error, move):
    model = _transformer(1)
    size = _shard_size(model, 2)
    ModelMixin.save_pretrained(model, tmp_path / "count", max_shard_size=size)
    moves = len(os.listdir(tmp_path / "count"))  # the shards, the index, config.json (moved last)
    target = _previous_save(tmp_path)
    before = file_tree(tmp_path)
    monkeypatch.setattr(os, "replace", _failing_on_call(os.replace, 2 if move == "second" else moves, error))
    with pytest.raises(type(error)):
        model.save_pretrained(target, max_shard_size=size)
    assert file_tree(tmp_path) == before


@ERRORS
def test_b_a_failed_save_into_a_new_folder_creates_nothing(tmp_path, monkeypatch, error):
    before = file_tree(tmp_path)
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_on_call(safetensors.torch.save_file, 1, error))
    with pytest.raises(type(error)):
        _transformer(0).save_pretrained(tmp_path / "new" / "model")
    assert file_tree(tmp_path) == before
    monkeypatch.undo()
    _transformer(0).save_pretrained(tmp_path / "new" / "model")
    _assert_loads_as(tmp_path / "new" / "model", _transformer(0))


def test_c_fewer_shards_removes_the_old_ones_only_once_the_new_files_are_in_place(tmp_path, monkeypatch):
    target = _previous_save(tmp_path)
    old_shards = sorted(p.name for p in target.glob("*-of-*.safetensors"))
    model = _transformer(1)
    size = _shard_size(model, 2)
    seen_at_first_removal = []
    real_remove = os.remove

    def remove(path, *args, **kwargs):
        if os.path.dirname(os.path.abspath(path)) == os.fspath(target) and not seen_at_first_removal:
            seen_at_first_removal.append(file_tree(target))
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", remove)
    model.save_pretrained(target, max_shard_size=size)
    monkeypatch.undo()
    after = file_tree(target)
    ModelMixin.save_pretrained(model, tmp_path / "theirs", max_shard_size=size)
    new_files = sorted(os.listdir(tmp_path / "theirs"))
    assert 1 < len([name for name in new_files if "-of-" in name]) < len(old_shards)
    assert sorted(after) == sorted(new_files + ["README.md", "runs", os.path.join("runs", "loss.csv")])
    assert seen_at_first_removal, "no old shard was removed"
    assert all(seen_at_first_removal[0].get(name) == after[name] for name in new_files)
    assert set(old_shards) <= set(seen_at_first_removal[0])
    _assert_loads_as(target, model)


def test_d_the_users_files_and_other_weights_survive(tmp_path):
    target = _previous_save(tmp_path)
    model = _transformer(0)
    model.save_pretrained(target, variant="fp16", max_shard_size=_shard_size(model, 2))  # another variant's shards
    (target / "diffusion_pytorch_model-00001-of-00002.bin").write_bytes(b"an old pickle shard of the user's")
    kept = {
        k: v for k, v in file_tree(target).items() if "fp16" in k or k.endswith(".bin") or "runs" in k or "README" in k
    }
    _transformer(1).save_pretrained(target, max_shard_size=_shard_size(model, 3))
    after = file_tree(target)
    assert {k: after.get(k) for k in kept} == kept
    _assert_loads_as(target, _transformer(1))


@MODELS
@pytest.mark.parametrize("below", [False, True], ids=["file", "below_a_file"])
def test_e_a_save_directory_that_is_a_file_is_refused_before_anything_is_written(make, tmp_path, below):
    (tmp_path / "weights").write_bytes(b"the user's file")
    before = file_tree(tmp_path)
    where = os.fspath(tmp_path / "weights" / "model" if below else tmp_path / "weights")
    with pytest.raises(ValueError, match="save_directory") as caught:
        make(0).save_pretrained(where)
    assert os.fspath(tmp_path / "weights") in str(caught.value)
    assert file_tree(tmp_path) == before


def test_refused_arguments_write_nothing(tmp_path, monkeypatch):
    import diffusers.models.modeling_utils as modeling_utils

    def no_hub(*args, **kwargs):
        raise AssertionError("the save reached the hub")

    monkeypatch.setattr(modeling_utils, "create_repo", no_hub)
    model = _transformer(0)
    for kwargs, message in (
        ({"safe_serialization": False}, "safe_serialization=False"),
        ({"use_flashpack": True}, "use_flashpack=True"),
        ({"push_to_hub": True, "repo_id": "me/model"}, "push_to_hub"),
    ):
        with pytest.raises(ValueError, match=message):
            model.save_pretrained(tmp_path / "model", **kwargs)
    model.save_pretrained(tmp_path / "model", is_main_process=False)
    assert file_tree(tmp_path) == {}


def test_a_killed_saves_temporary_folder_is_removed_by_the_next_save(tmp_path):
    target = _previous_save(tmp_path)
    before = file_tree(target)
    leftover = output_folder.TempFolder(target, "partial", folder=target)
    (leftover.path / "config.json").write_text("{}")
    leftover.release(remove=False)  # its lock is free: the process that made it is gone
    _transformer(0).save_pretrained(target, max_shard_size=_shard_size(_transformer(0), 4))
    assert file_tree(target) == before


def _single_file_save(tmp_path):
    """An unsharded save of one transformer plus the user's README; returns its folder."""
    target = tmp_path / "model"
    _transformer(0).save_pretrained(target)
    (target / "README.md").write_text("my notes\n")
    return target


@pytest.mark.parametrize(
    "put_back_error", [KeyboardInterrupt(), OSError(errno.EIO, "Input/output error")], ids=["ctrl_c", "io_error"]
)
def test_f_a_failed_put_back_keeps_the_replaced_files_and_says_where(tmp_path, monkeypatch, caplog, put_back_error):
    """Ctrl-C as config.json goes in (the new weights already replaced the old), then the put-back (config.json
    first) fails too: the old weights are kept (never removed, also by the next save) in the folder the warning
    names, and the original error is raised."""
    target = _single_file_save(tmp_path)
    before = file_tree(target)
    weights = "diffusion_pytorch_model.safetensors"
    calls, real = [], os.replace

    def replace(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # config.json going in
            raise KeyboardInterrupt
        if len(calls) == 3:  # config.json going back (the first file put back)
            raise put_back_error
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with caplog.at_level("WARNING", logger=component_save.logger.name), pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    after = file_tree(target)
    assert [name for name in before if after.get(name) != before[name]] == [weights]  # the new weights are in place
    kept = [path for path, digest in after.items() if digest == before[weights]]
    assert len(kept) == 1 and os.path.basename(kept[0]) == weights
    assert os.fspath(target / os.path.dirname(kept[0])) in caplog.text
    _transformer(2).save_pretrained(target)  # a later save leaves the kept files alone
    assert file_tree(target).get(kept[0]) == before[weights]
    _assert_loads_as(target, _transformer(2))


def test_f_an_interrupt_just_after_a_file_is_renamed_aside_puts_it_back(tmp_path, monkeypatch):
    """A file system without hard links: the file a rename replaces is first renamed aside; a Ctrl-C just after
    that rename still puts it back."""
    target = _single_file_save(tmp_path)
    before = file_tree(tmp_path)
    real_rename = os.rename

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if os.path.basename(os.path.dirname(os.fspath(dst))) == ".replaced":
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    assert file_tree(tmp_path) == before
    _assert_loads_as(target, _transformer(0))


def _removal_failing(monkeypatch, target, error, which):
    """`os.remove` / `os.unlink` of a file directly in `target` raise `error` on the removal `which` picks."""
    calls = []

    def wrap(real):
        def fake(path, *args, **kwargs):
            if os.path.dirname(os.path.abspath(path)) == os.fspath(target):
                calls.append(path)
                if which(os.path.basename(path), len(calls)):
                    raise error
            return real(path, *args, **kwargs)

        return fake

    monkeypatch.setattr(os, "remove", wrap(os.remove))
    monkeypatch.setattr(os, "unlink", wrap(os.unlink))


def test_g_an_interrupted_removal_of_the_previous_shards_leaves_a_folder_that_loads(tmp_path, monkeypatch):
    """A 10-shard save, then an unsharded one interrupted while removing the old shards: the old index (the
    loader reads it first) is gone before any of its shards, so the folder loads the new weights."""
    target = tmp_path / "model"
    _transformer(0).save_pretrained(target, max_shard_size=_shard_size(_transformer(0), 10))
    assert len(list(target.glob("*-of-*.safetensors"))) >= 10
    _removal_failing(monkeypatch, target, KeyboardInterrupt(), lambda name, call: call == 2)
    with pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    _assert_loads_as(target, _transformer(1))
    assert not (target / "diffusion_pytorch_model.safetensors.index.json").exists()


def test_g_a_previous_index_that_cannot_be_removed_fails_the_save_and_changes_nothing(tmp_path, monkeypatch):
    target = tmp_path / "model"
    _transformer(0).save_pretrained(target, max_shard_size=_shard_size(_transformer(0), 3))
    before = file_tree(tmp_path)
    error = OSError(errno.EACCES, "Permission denied")
    _removal_failing(monkeypatch, target, error, lambda name, call: name.endswith(".index.json"))
    with pytest.raises(OSError):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    assert file_tree(tmp_path) == before
    _assert_loads_as(target, _transformer(0))


def test_h_a_sharded_save_keeps_the_single_weights_file_as_diffusers_does(tmp_path):
    """diffusers' sharded save over an unsharded one keeps the single file (the index wins when loading): so does
    ours, byte for byte, and the folder loads the new shards."""
    model, size = _transformer(1), _shard_size(_transformer(1), 2)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _transformer(0).save_pretrained(ours)
    ModelMixin.save_pretrained(_transformer(0), theirs)
    single = file_tree(ours)["diffusion_pytorch_model.safetensors"]
    model.save_pretrained(ours, max_shard_size=size)
    ModelMixin.save_pretrained(model, theirs, max_shard_size=size)
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    assert file_tree(ours)["diffusion_pytorch_model.safetensors"] == single
    _assert_loads_as(ours, model)


@pytest.mark.parametrize(
    "name",
    ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
     "diffusion_pytorch_model-00001-of-00002.safetensors"],
)  # fmt: skip
def test_e_a_folder_named_like_a_file_of_the_save_is_refused_before_anything_is_written(tmp_path, monkeypatch, name):
    target = _single_file_save(tmp_path)
    if (target / name).exists():
        (target / name).unlink()
    (target / name).mkdir()
    (target / name / "mine.txt").write_text("the user's\n")
    before = file_tree(tmp_path)

    def no_write(*args, **kwargs):
        raise AssertionError("the save wrote weights")

    monkeypatch.setattr(safetensors.torch, "save_file", no_write)
    with pytest.raises(ValueError, match="save_directory") as caught:
        _transformer(1).save_pretrained(target, max_shard_size=_shard_size(_transformer(1), 2))
    assert os.fspath(target / name) in str(caught.value)
    assert file_tree(tmp_path) == before


def test_i_a_variants_stale_index_goes_with_the_renames(tmp_path, monkeypatch):
    """An fp16 4-shard save, then an unsharded fp16 one interrupted while removing the old shards: the fp16 index
    (`...safetensors.index.fp16.json`) is gone before any of its shards, so the folder loads the new weights."""
    target = tmp_path / "model"
    _vocoder(0).save_pretrained(target, variant="fp16", max_shard_size=_shard_size(_vocoder(0), 4))
    assert len(list(target.glob("*-of-*.safetensors"))) >= 3
    _removal_failing(monkeypatch, target, KeyboardInterrupt(), lambda name, call: call == 2)
    with pytest.raises(KeyboardInterrupt):
        _vocoder(1).save_pretrained(target, variant="fp16")
    monkeypatch.undo()
    assert not (target / "diffusion_pytorch_model.safetensors.index.fp16.json").exists()
    loaded = LTX2HiFiGANVocoder.from_pretrained(target, variant="fp16")
    expected = _vocoder(1).state_dict()
    assert all(torch.equal(expected[k], v) for k, v in loaded.state_dict().items())


def test_i_an_interrupt_just_after_a_new_file_is_renamed_in_removes_it(tmp_path, monkeypatch):
    """Ctrl-C right after the new index (which replaces nothing) is renamed in: it is removed again."""
    target = _single_file_save(tmp_path)
    before = file_tree(tmp_path)
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if os.fspath(dst).endswith(".index.json"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target, max_shard_size=_shard_size(_transformer(1), 2))
    monkeypatch.undo()
    assert file_tree(tmp_path) == before
    _assert_loads_as(target, _transformer(0))


def test_i_an_interrupt_during_the_cleanup_of_a_complete_save_finishes_it(tmp_path, monkeypatch):
    """Ctrl-C as the temporary folder is being removed after the new files are in place: the cleanup still
    finishes (no temporary folder, the old shards removed), then the interrupt is raised."""
    target = _previous_save(tmp_path)
    real, interrupted = os.unlink, []

    def unlink(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if "dir_fd" in kwargs and not interrupted:  # shutil.rmtree's removals
            interrupted.append(path)
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    assert interrupted
    after = file_tree(target)
    assert sorted(name for name in after if "/" not in name and os.sep not in name) == sorted(
        ["README.md", "runs", "config.json", "diffusion_pytorch_model.safetensors"]
    )
    _assert_loads_as(target, _transformer(1))


def _config_going_in_interrupted(monkeypatch, put_back_error):
    """`os.replace`: Ctrl-C as config.json goes in (after the new weights), then `put_back_error` as config.json
    goes back."""
    calls, real = [], os.replace

    def replace(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # config.json going in
            raise KeyboardInterrupt
        if len(calls) == 3:  # config.json going back
            raise put_back_error
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _marker_undeletable(monkeypatch):
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) == output_folder.TEMP_MARKER_NAME:
            raise OSError(errno.EACCES, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def _failed_put_back(tmp_path, monkeypatch, caplog, put_back_error, marker_undeletable=False):
    """A single-file save, then a save whose put-back fails (`_config_going_in_interrupted`); returns the folder,
    its tree before, the path (relative) of the previous weights after, and the warning."""
    target = _single_file_save(tmp_path)
    before = file_tree(target)
    _config_going_in_interrupted(monkeypatch, put_back_error)
    if marker_undeletable:
        _marker_undeletable(monkeypatch)
    with caplog.at_level("WARNING", logger=component_save.logger.name), pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    kept = [path for path, digest in file_tree(target).items() if digest == before[WEIGHTS]]
    assert len(kept) == 1
    warning = [r.getMessage() for r in caplog.records if "could not all be put back" in r.getMessage()]
    assert len(warning) == 1
    return target, before, kept[0], warning[0]


WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_i_a_kept_folder_is_renamed_out_of_a_later_saves_reach(tmp_path, monkeypatch, caplog):
    """The put-back fails and the temp marker cannot be deleted: the folder holding the previous weights is
    renamed `.model.kept-*` (never a leftover to a later save), and the warning names that path."""
    target, before, kept, warning = _failed_put_back(tmp_path, monkeypatch, caplog, KeyboardInterrupt(), True)
    _transformer(2).save_pretrained(target)
    assert file_tree(target).get(kept) == before[WEIGHTS]
    assert kept.split(os.sep)[0].startswith(".model.kept-") and os.path.basename(kept) == WEIGHTS
    assert os.fspath(target / os.path.dirname(kept)) in warning
    _assert_loads_as(target, _transformer(2))


def test_i_a_second_interrupt_while_keeping_the_folder_still_keeps_it(tmp_path, monkeypatch, caplog):
    """Another Ctrl-C as the failed save looks into its `.replaced/` folder: the folder is still set aside, where
    a later save leaves it alone."""
    real_listdir, interrupted = os.listdir, []

    def listdir(path=".", *args, **kwargs):
        if os.path.basename(os.fspath(path)) == ".replaced" and not interrupted:
            interrupted.append(path)
            raise KeyboardInterrupt
        return real_listdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "listdir", listdir)
    target, before, kept, warning = _failed_put_back(tmp_path, monkeypatch, caplog, KeyboardInterrupt())
    assert interrupted
    _transformer(2).save_pretrained(target)
    assert file_tree(target).get(kept) == before[WEIGHTS]
    assert kept.split(os.sep)[0].startswith(".model.kept-")


def test_i_a_kept_folder_that_cannot_be_renamed_is_named_with_why(tmp_path, monkeypatch, caplog):
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if ".kept-" in os.fspath(dst):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    target, before, kept, warning = _failed_put_back(tmp_path, monkeypatch, caplog, KeyboardInterrupt())
    assert kept.split(os.sep)[0].startswith(".model.partial-")
    assert os.fspath(target / os.path.dirname(kept)) in warning and "Device or resource busy" in warning
    assert not [name for name in os.listdir(target) if ".kept-" in name]


def test_i_the_warning_lists_what_is_not_in_place(tmp_path, monkeypatch, caplog):
    """The put-back stops at config.json (kept aside as a hard link of the file still in place): the warning lists
    the previous weights only, and the new weights left in the folder."""
    target, before, kept, warning = _failed_put_back(
        tmp_path, monkeypatch, caplog, OSError(errno.EIO, "Input/output error")
    )
    assert file_tree(target)["config.json"] == before["config.json"]
    assert f"{[WEIGHTS]} are in {os.fspath(target / os.path.dirname(kept))!r}" in warning
    assert "config.json" not in warning
    assert f"the new files {[WEIGHTS]} are in {os.fspath(target)!r}" in warning


def test_j_an_unreadable_replaced_folder_is_kept_and_survives_a_later_save(tmp_path, monkeypatch, caplog):
    """The put-back fails and `.replaced/` cannot even be listed (EIO): the save still raises its own error, and the
    folder with the previous weights is kept where a later save's leftover cleanup leaves it alone."""
    real_listdir = os.listdir

    def listdir(path=".", *args, **kwargs):
        if os.path.basename(os.fspath(path)) == ".replaced":
            raise OSError(errno.EIO, "Input/output error")
        return real_listdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "listdir", listdir)
    target, before, kept, warning = _failed_put_back(tmp_path, monkeypatch, caplog, KeyboardInterrupt())
    _transformer(2).save_pretrained(target)
    assert file_tree(target).get(kept) == before[WEIGHTS]
    assert os.fspath(target / os.path.dirname(kept)) in warning


def test_j_a_kept_folder_whose_rename_is_interrupted_every_time_survives_a_later_save(tmp_path, monkeypatch, caplog):
    """Ctrl-C at every try to set the folder aside: its temp marker was dropped first, so a later save leaves it."""
    import tempfile

    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if ".kept-" in kwargs.get("prefix", ""):
            raise KeyboardInterrupt
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    target, before, kept, warning = _failed_put_back(tmp_path, monkeypatch, caplog, KeyboardInterrupt())
    assert kept.split(os.sep)[0].startswith(".model.partial-")
    # no temp marker: a later save in another process (where this one's lock is gone) takes it for no leftover
    assert not os.path.lexists(target / kept.split(os.sep)[0] / output_folder.TEMP_MARKER_NAME)
    _transformer(2).save_pretrained(target)
    assert file_tree(target).get(kept) == before[WEIGHTS]


def test_j_a_cleanup_whose_removals_are_interrupted_leaves_a_folder_a_later_save_removes(tmp_path, monkeypatch):
    """After a complete save, Ctrl-C at every try to remove `.replaced/` (and a folder removal that would take the
    temp marker first): the temporary folder keeps its marker, so the next save removes it with the old files."""
    import shutil

    target = _single_file_save(tmp_path)
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        path = os.fspath(path)
        if os.path.basename(path) == ".replaced":
            raise KeyboardInterrupt
        if ".partial-" in os.path.basename(path):  # as a removal that reaches the marker before `.replaced/`
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, output_folder.TEMP_MARKER_NAME))
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        _transformer(1).save_pretrained(target)
    monkeypatch.undo()
    _assert_loads_as(target, _transformer(1))
    _transformer(2).save_pretrained(target)
    assert not [name for name in os.listdir(target) if ".partial-" in name]
    _assert_loads_as(target, _transformer(2))
