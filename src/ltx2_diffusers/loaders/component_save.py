"""`save_pretrained` of this package's models and of the distilled LoRA: the new files land together, or nothing
changes.

diffusers' `ModelMixin.save_pretrained` writes `config.json` and the weights in place, after deleting the older
shards of the same weights name: a save that fails midway (a full disk, Ctrl-C, an exception while serialising) has
already lost the previous save. Here (`save_files`) the save is built in a fresh `.{name}.partial-XXXX/` folder
inside `save_directory` (the same file system, whatever is mounted where; `output_folder.TempFolder`, so a killed
save's folder is removed, with a warning, by the next save into that folder), then each new file is renamed into
place, `config.json` last; the previous save's index the new one does not write is taken out with them (a loader
reads an index first: left behind, it names shards about to be removed; its name is diffusers' for the variant,
`diffusion_pytorch_model.safetensors.index.fp16.json`). The file each rename replaces or takes out is kept aside
(recorded first, then a hard link, else a rename) until every new file is in place: an exception or
KeyboardInterrupt at any point, the renames included, puts every such file back and removes the new ones, so the
folder is left exactly as it was. If putting back fails too (a second Ctrl-C, an I/O error), the temporary folder is
kept, renamed `.{name}.kept-XXXX` (a name a later save's leftover cleanup never matches), a warning names its
`.replaced/` folder holding the previous files not in place and the new files left in the folder, and the original
error is raised. Only once the new files are in place are the previous save's shards the new one does not contain
removed (`stale_weight_files`): the folder loads the new save at every moment of that. That cleanup (the kept files
first, then the temporary folder, then those shards) finishes even if a KeyboardInterrupt comes meanwhile, which is
raised afterwards; if the kept files cannot all be removed, the temporary folder stays with its temp marker, for the
next save's leftover cleanup. Nothing else in the folder is touched (the user's README, other files and folders). A process
killed outright during the renames (milliseconds) can leave a mix of new and old files; a later save repairs it.

`SafeSaveMixin.save_pretrained` takes diffusers' arguments and, for a successful save, leaves the files diffusers'
own save writes (same names, same tensors, same config), except in these, deliberately:
- `save_directory` that is a file (or a path below a file, or a folder this process cannot write in) is a
  `ValueError` naming it before anything is written (diffusers logs an error and returns), and so is a folder in it
  named like a file the save writes (`config.json`, the weights, their index or shards; diffusers fails midway);
- `safe_serialization=False` and `use_flashpack=True` are refused (this package reads safetensors only), as by the
  pipeline's `save_pretrained`, and so is a model computing with float8 weight scales that are not saved
  (`fp8.check_scales_saved`: diffusers would write weights that load silently wrong);
- `push_to_hub=True` is refused: diffusers' writes a model card over the folder's README.md and uploads the whole
  folder, the user's other files included; `model.push_to_hub(repo_id)` saves into a temporary folder and uploads
  that;
- `is_main_process=False` writes nothing (diffusers' other processes write the weight files, racing the main one);
- the previous save's files removed are those of the same weights name only: its shards, and also its index when the
  new save is not sharded (diffusers keeps it, and the folder then fails to load: the index names deleted shards);
  its single weights file is kept when the new save is sharded, as diffusers keeps it (the new index wins when
  loading); another variant's weights and `.bin` files are kept (diffusers deletes another variant's shards and
  `.bin` shards).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, _add_variant, logging

from . import output_folder
from .safetensors_only import check_safetensors_save


logger = logging.get_logger(__name__)

#: Inside the temporary folder: the files the renames replace, until the save is complete.
_REPLACED = ".replaced"
#: Tries of a cleanup step that a KeyboardInterrupt stopped (`_finish`).
_TRIES = 3


def weight_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of the modules' weights as saved (each storage once; meta tensors not counted): a lower bound of the
    saved files' size, for `output_folder.check_free_space`."""
    seen, total = set(), 0
    for module in modules:
        for tensor in module.state_dict().values():
            key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
            if tensor.data_ptr() == 0 or key in seen:
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def check_save_directory(save_directory, writes: re.Pattern | None = None) -> Path:
    """The folder a save lands in (`output_folder.resolved_path`); `ValueError` naming `save_directory` before
    anything is written when it is a file or a link to nowhere, a folder this process cannot write in, a path below a
    file, or a folder holding a folder named like a file the save writes (`writes` matches the whole name)."""
    from ..cli_safety import check_output_folder

    target = Path(output_folder.resolved_path(save_directory))
    where = os.fspath(save_directory)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ValueError(
            f"save_directory {where!r} exists and is not a folder (a file or a link to nowhere); nothing was saved: "
            "choose a folder"
        )
    if os.path.isdir(target):
        if not os.access(target, os.W_OK | os.X_OK):
            raise ValueError(f"save_directory {where!r} is a folder this process cannot write in")
        if writes is not None:
            _check_no_folder_named(target, writes)
    else:
        check_output_folder("save_directory", os.fspath(target))
    return target


def _folder_in_the_way(target: Path, name: str) -> ValueError:
    return ValueError(
        f"save_directory {os.fspath(target)!r}: {os.fspath(target / name)!r} is a folder, and the save writes a file "
        "of that name; nothing was saved: move the folder out"
    )


def _check_no_folder_named(target: Path, writes: re.Pattern) -> None:
    for entry in os.scandir(target):
        if writes.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            raise _folder_in_the_way(target, entry.name)


def weight_names(variant: str | None) -> re.Pattern:
    """The names of the files of these weights (`variant`): the single safetensors file, its index, its shards."""
    weights = _add_variant(SAFETENSORS_WEIGHTS_NAME, variant)
    index = _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    return re.compile(f"{re.escape(weights)}|{re.escape(index)}|{_shard_names(variant).pattern}")


def _shard_names(variant: str | None) -> re.Pattern:
    stem, extension = os.path.splitext(_add_variant(SAFETENSORS_WEIGHTS_NAME, variant))
    return re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(extension))


def _move_order(index: str | None) -> Callable[[str], tuple[bool, bool]]:
    """Weights first, then the index (`index`: its name, with the variant), `config.json` last."""
    return lambda name: (name == "config.json", name == index)


def _keep_aside(path: Path, aside: Path) -> None:
    """`aside` names the file at `path` from now on: a hard link (`path` stays in place until it is replaced), else
    `path` renamed (a file system without hard links)."""
    try:
        os.link(path, aside, follow_symlinks=False)
    except OSError:
        os.rename(path, aside)


def _move_in(
    tmp: Path,
    target: Path,
    names: list[str],
    retired: list[str],
    index: str | None,
    kept: list[str],
    placed: list[str],
) -> None:
    """Rename each of `names` from `tmp` into `target` and take each of `retired` (the previous save's index, which
    a loader reads before a single weights file) out of it, keeping every file replaced or taken out in
    `tmp/_REPLACED`; on any failure (KeyboardInterrupt included) those are put back and the new files removed. When
    the put-back fails too, the files not put back stay in `tmp/_REPLACED` (`save_files` keeps that folder) and the
    original error is raised. `index` is the name of the weights' index (moved after the weights); `kept` and
    `placed` (empty lists) record the names of the files kept aside and renamed in."""
    for name in names:
        if os.path.isdir(target / name) and not os.path.islink(target / name):
            raise _folder_in_the_way(target, name)
    aside = tmp / _REPLACED
    aside.mkdir()
    try:
        for name in sorted([*names, *retired], key=_move_order(index)):
            if os.path.lexists(target / name):
                kept.append(name)  # first: a Ctrl-C just after it is renamed aside still puts it back
                _keep_aside(target / name, aside / name)
            if name not in retired:
                placed.append(name)  # first too: a Ctrl-C just after the rename still removes it
                os.replace(tmp / name, target / name)
            elif name in kept and os.path.lexists(target / name):  # kept aside as a hard link
                os.unlink(target / name)
    except BaseException:
        try:
            _put_back(tmp, target, kept, placed)
        except BaseException as failure:
            logger.warning(f"putting back the files the save replaced in {os.fspath(target)!r} failed: {failure!r}")
        raise


def _put_back(tmp: Path, target: Path, kept: list[str], placed: list[str]) -> None:
    """Undo `_move_in`: each kept file back in `target` (leaving `tmp/_REPLACED` empty once all are), then the new
    files that replaced nothing removed (those that were renamed in: no longer in `tmp`)."""
    aside = tmp / _REPLACED
    for name in reversed(kept):
        if not os.path.lexists(aside / name):
            continue  # interrupted before it was kept aside: still in place
        os.replace(aside / name, target / name)
        if os.path.lexists(aside / name):  # a hard link of the file still in place: the rename did nothing
            os.unlink(aside / name)
    for name in reversed(placed):
        if name not in kept and not os.path.lexists(tmp / name) and os.path.lexists(target / name):
            os.unlink(target / name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _not_put_back(tmp: Path, target: Path, kept: list[str], placed: list[str]) -> tuple[list[str], list[str]]:
    """After a failed put-back (`_move_in`'s `kept` and `placed`): the previous files in `tmp/_REPLACED` not in
    place (a hard link of the file in place is not listed), and the new files left in `target`."""
    aside = tmp / _REPLACED
    try:
        previous = sorted(name for name in os.listdir(aside) if not _same_file(aside / name, target / name))
    except OSError as error:
        previous = [f"(unreadable: {error})"]
    new = [
        name
        for name in placed
        if not os.path.lexists(tmp / name)  # renamed in
        and os.path.lexists(target / name)
        and (name not in kept or os.path.lexists(aside / name))  # not put back
    ]
    return previous, sorted(new)


class _SetAside:
    """The steps (each safe to repeat, for `_finish`) renaming a temporary folder to `.{name}.kept-XXXX`, a name a
    later save's leftover cleanup never matches, and deleting its temp marker: `path` is where the folder is, and
    `problem` what could not be done (empty if nothing)."""

    def __init__(self, partial: output_folder.TempFolder, target: Path):
        self.partial, self.target = partial, target
        self.path, self.problem, self._name = partial.path, "", None

    def steps(self) -> list[Callable[[], None]]:
        # the marker first: whatever happens next, a later save's leftover cleanup no longer takes the folder
        return [lambda: output_folder.drop_temp_marker(self.partial.path), self._reserve, self._rename, self._check]

    def _reserve(self) -> None:
        if self._name is None and not self.problem:
            try:
                self._name = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.kept-", dir=self.target))
            except OSError as error:
                self.problem = f"renaming it out of the way failed: {error}"

    def _rename(self) -> None:
        if self._name is None:
            return
        if not os.path.lexists(self.partial.path):  # renamed already (an interrupt before `path` was updated)
            if os.path.isdir(self._name):
                self.path = self._name
            return
        try:
            os.rename(self.partial.path, self._name)  # over the empty folder just reserved
        except OSError as error:
            self.problem = f"renaming it out of the way failed: {error}"
            with contextlib.suppress(OSError):
                os.rmdir(self._name)
            self._name = None
            return
        self.path = self._name

    def _check(self) -> None:
        if self.path == self.partial.path and os.path.lexists(self.path / output_folder.TEMP_MARKER_NAME):
            self.problem += (
                "; it still has its temp marker: a later save into that folder may remove it, move it first"
            )


def _release_failed(partial: output_folder.TempFolder, target: Path, kept: list[str], placed: list[str]) -> None:
    """After a failed `_move_in`: remove the temporary folder, unless it holds replaced files that could not be
    put back; then keep it under a name no later save removes (`_SetAside`) and say what is where. A
    KeyboardInterrupt meanwhile does not stop this (`_finish`)."""
    state = {"keep": True, "lists": (["(not listed: interrupted)"], [])}  # until looked at: kept
    folder = _SetAside(partial, target)

    def look() -> None:
        aside = partial.path / _REPLACED
        try:
            state["keep"] = os.path.isdir(aside) and bool(os.listdir(aside))
            if state["keep"]:
                state["lists"] = _not_put_back(partial.path, target, kept, placed)
        except OSError:  # cannot tell what is there: kept (unlisted)
            state["keep"] = True

    def if_kept(step: Callable[[], None]) -> Callable[[], None]:
        return lambda: step() if state["keep"] else None

    try:
        _finish([look, *map(if_kept, folder.steps()), lambda: partial.release(remove=not state["keep"])])
    finally:
        if state["keep"]:
            previous, new = state["lists"]
            logger.warning(
                f"the save into {os.fspath(target)!r} failed, and the previous files it had replaced could not all "
                f"be put back: {previous} are in {os.fspath(folder.path / _REPLACED)!r}, and the new files {new} are "
                f"in {os.fspath(target)!r}; move the previous files back into {os.fspath(target)!r} yourself (their "
                f"folder {os.fspath(folder.path)!r} is kept: a later save never removes it"
                + (f"; {folder.problem.lstrip('; ')})" if folder.problem else ")")
            )


def _finish(steps: list[Callable[[], object]]) -> None:
    """Run each step to its end even if a KeyboardInterrupt stops it (each step is retried, up to `_TRIES` times:
    the steps are safe to repeat; a step interrupted every time is given up, the next ones still run), then raise
    that KeyboardInterrupt."""
    interrupted = None
    for step in steps:
        for _ in range(_TRIES):
            try:
                step()
                break
            except KeyboardInterrupt as error:
                interrupted = error
    if interrupted is not None:
        raise interrupted


def _remove_stale(target: Path, names: Iterable[str]) -> None:
    for name in names:
        path = target / name
        if not os.path.isfile(path):
            continue
        try:
            os.remove(path)
        except OSError as error:
            logger.warning(f"the new save is in place, but its previous file {os.fspath(path)!r} stays: {error}")


def save_files(
    save_directory,
    build: Callable[[Path], None],
    writes: re.Pattern,
    stale: Callable[[Path, set[str]], list[str]] | None = None,
    index: str | None = None,
) -> None:
    """`build(folder)` writes the save into a fresh temporary folder; its files are then renamed into
    `save_directory` (created if missing); `stale(save_directory, written)` names the previous save's files to
    remove: the one named `index` (the weights' index, with the variant) is taken out with the renames, the others
    are removed afterwards (see the module docstring). `writes` matches the names of the files `build` may write: a folder of such a name in
    `save_directory` is refused before anything is written. On any failure before the last rename completes,
    `save_directory` is left as it was (a folder this created is removed again) and the temporary folder removed
    (kept, with a warning naming it, if a replaced file could not be put back)."""
    from ..cli_safety import creating_missing_folders

    target = check_save_directory(save_directory, writes)
    with creating_missing_folders(os.path.join(os.fspath(target), "")):  # `target` itself and the folders above it
        output_folder.remove_leftovers(target, {}, folder=target)
        partial = output_folder.TempFolder(target, "partial", folder=target)
        kept, placed = [], []
        try:
            build(partial.path)
            written = sorted(set(os.listdir(partial.path)) - {output_folder.TEMP_MARKER_NAME})
            previous = [] if stale is None else stale(target, set(written))
            retired = [name for name in previous if name == index]
            _move_in(partial.path, target, written, retired, index, kept, placed)
        except BaseException:
            _release_failed(partial, target, kept, placed)
            raise
        # The new files are in place: the cleanup finishes even if interrupted. The previous files first (a
        # folder without its temp marker is never removed by a later save): the folder goes only once they are gone,
        # else it stays with its marker, for a later save to remove.
        done = {"replaced": False}

        def remove_replaced() -> None:
            shutil.rmtree(partial.path / _REPLACED, ignore_errors=True)
            done["replaced"] = not os.path.lexists(partial.path / _REPLACED)

        def release() -> None:
            partial.release(remove=done["replaced"])
            if os.path.lexists(partial.path) and done["replaced"]:
                logger.warning(
                    f"could not remove the temporary folder {os.fspath(partial.path)!r}; delete it yourself"
                )

        _finish(
            [
                remove_replaced,
                release,
                lambda: _remove_stale(target, [name for name in previous if name not in retired]),
            ]
        )


def stale_weight_files(folder: Path, variant: str | None, written: set[str]) -> list[str]:
    """The files in `folder` of the previous save of these weights (`variant`) that the new save (`written`) did
    not write: its shards and its index. A single weights file is kept, as diffusers keeps it (a sharded save's
    index wins when loading)."""
    shard = _shard_names(variant)
    index = _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    return sorted(
        name for name in os.listdir(folder) if name not in written and (name == index or shard.fullmatch(name))
    )


class SafeSaveMixin:
    """For a model class (in front of `ModelMixin`): diffusers' `save_pretrained`, landing whole or not at all
    (`save_files`; the differences from diffusers' are in this module's docstring)."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        use_flashpack: bool = False,
        **kwargs,
    ) -> None:
        """diffusers' `ModelMixin.save_pretrained` into a temporary folder, its files then renamed into
        `save_directory`: a failed or interrupted save leaves `save_directory` as it was, and the previous save's
        shards are removed only once the new files are in place. Only safetensors are written
        (`safe_serialization=False` and `use_flashpack=True` are refused); `push_to_hub=True` is refused (use
        `push_to_hub(repo_id)`); `is_main_process=False` writes nothing; a `save_directory` that is a file is a
        `ValueError` naming it."""
        from .fp8 import check_scales_saved

        check_safetensors_save(safe_serialization, use_flashpack)
        check_scales_saved(self, type(self).__name__)
        if push_to_hub:
            raise ValueError(
                f"push_to_hub=True: {type(self).__name__}.save_pretrained writes the local folder only (diffusers' "
                "would write a model card over its README.md and upload every file in it); call "
                "push_to_hub(repo_id), which saves into a temporary folder and uploads that"
            )
        if not is_main_process:
            return
        writes = re.compile(f"{re.escape(self.config_name)}|{weight_names(variant).pattern}")
        target = check_save_directory(save_directory, writes)
        output_folder.check_free_space(target, weight_bytes([self]), label="save_directory")

        def build(folder: Path) -> None:
            super(SafeSaveMixin, self).save_pretrained(
                os.fspath(folder),
                is_main_process=True,
                save_function=save_function,
                safe_serialization=True,
                variant=variant,
                max_shard_size=max_shard_size,
                **kwargs,
            )

        save_files(
            save_directory,
            build,
            writes,
            lambda folder, written: stale_weight_files(folder, variant, written),
            _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant),
        )
