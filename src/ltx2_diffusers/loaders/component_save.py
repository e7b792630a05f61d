"""`save_pretrained` of this package's models and of the distilled LoRA: the new files land together, or nothing
changes.

diffusers' `ModelMixin.save_pretrained` writes `config.json` and the weights in place, after deleting the older
shards of the same weights name: a save that fails midway (a full disk, Ctrl-C, an exception while serialising) has
already lost the previous save. Here (`save_files`) the save is built in a fresh `.{name}.partial-XXXX/` folder
inside `save_directory` (the same file system, whatever is mounted where; `output_folder.TempFolder`, so a killed
save's folder is removed, with a warning, by the next save into that folder), then each new file is renamed into
place, `config.json` last. The file each rename replaces is kept aside (a hard link, else a rename) until every new
file is in place: an exception or KeyboardInterrupt at any point, the renames included, puts every replaced file
back and removes the new ones, so the folder is left exactly as it was. Only then are the previous save's files the
new one does not contain removed (`stale_weight_files`). Nothing else in the folder is touched (the user's README,
other files and folders). A process killed outright during the renames (milliseconds) can leave a mix of new and old
files; a later save repairs it.

`SafeSaveMixin.save_pretrained` takes diffusers' arguments and, for a successful save, leaves the files diffusers'
own save writes (same names, same tensors, same config), except in these, deliberately:
- `save_directory` that is a file (or a path below a file, or a folder this process cannot write in) is a
  `ValueError` naming it before anything is written (diffusers logs an error and returns);
- `safe_serialization=False` and `use_flashpack=True` are refused (this package reads safetensors only), as by the
  pipeline's `save_pretrained`, and so is a model computing with float8 weight scales that are not saved
  (`fp8.check_scales_saved`: diffusers would write weights that load silently wrong);
- `push_to_hub=True` is refused: diffusers' writes a model card over the folder's README.md and uploads the whole
  folder, the user's other files included; `model.push_to_hub(repo_id)` saves into a temporary folder and uploads
  that;
- `is_main_process=False` writes nothing (diffusers' other processes write the weight files, racing the main one);
- the previous save's files removed are those of the same weights name only: its shards, and also its index when the
  new save is not sharded (diffusers keeps it, and the folder then fails to load: the index names deleted shards)
  and its single weights file when the new save is sharded; another variant's weights and `.bin` files are kept
  (diffusers deletes another variant's shards and `.bin` shards).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable

import torch
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, _add_variant, logging

from . import output_folder
from .safetensors_only import check_safetensors_save


logger = logging.get_logger(__name__)

#: Inside the temporary folder: the files the renames replace, until the save is complete.
_REPLACED = ".replaced"


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


def check_save_directory(save_directory) -> Path:
    """The folder a save lands in (`output_folder.resolved_path`); `ValueError` naming `save_directory` before
    anything is written when it is a file or a link to nowhere, a folder this process cannot write in, or a path
    below a file."""
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
    else:
        check_output_folder("save_directory", os.fspath(target))
    return target


def _move_order(name: str) -> tuple[bool, bool]:
    """Weights first, then the index, `config.json` last."""
    return name == "config.json", name.endswith(".index.json")


def _keep_aside(path: Path, aside: Path) -> None:
    """`aside` names the file at `path` from now on: a hard link (`path` stays in place until it is replaced), else
    `path` renamed (a file system without hard links)."""
    try:
        os.link(path, aside, follow_symlinks=False)
    except OSError:
        os.rename(path, aside)


def _move_in(tmp: Path, target: Path, names: list[str]) -> None:
    """Rename each of `names` from `tmp` into `target`, keeping every file it replaces in `tmp/_REPLACED`; on any
    failure (KeyboardInterrupt included) the replaced files are put back and the new ones removed."""
    for name in names:
        if os.path.isdir(target / name) and not os.path.islink(target / name):
            raise ValueError(
                f"save_directory {os.fspath(target)!r}: {name!r} is a folder, and the save writes a file of that "
                "name; nothing was saved: move the folder out"
            )
    aside = tmp / _REPLACED
    aside.mkdir()
    kept, placed = [], []
    try:
        for name in sorted(names, key=_move_order):
            if os.path.lexists(target / name):
                _keep_aside(target / name, aside / name)
                kept.append(name)
            os.replace(tmp / name, target / name)
            placed.append(name)
    except BaseException:
        for name in reversed(placed):
            if name not in kept:
                os.unlink(target / name)
        for name in reversed(kept):
            os.replace(aside / name, target / name)
        raise


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
    save_directory, build: Callable[[Path], None], stale: Callable[[Path, set[str]], list[str]] | None = None
) -> None:
    """`build(folder)` writes the save into a fresh temporary folder; its files are then renamed into
    `save_directory` (created if missing), and afterwards `stale(save_directory, written)` names the previous
    save's files to remove (see the module docstring). On any failure before the last rename completes,
    `save_directory` is left as it was (a folder this created is removed again) and the temporary folder removed."""
    from ..cli_safety import creating_missing_folders

    target = check_save_directory(save_directory)
    with creating_missing_folders(os.path.join(os.fspath(target), "")):  # `target` itself and the folders above it
        output_folder.remove_leftovers(target, {}, folder=target)
        partial = output_folder.TempFolder(target, "partial", folder=target)
        try:
            build(partial.path)
            written = sorted(set(os.listdir(partial.path)) - {output_folder.TEMP_MARKER_NAME})
            _move_in(partial.path, target, written)
        except BaseException:
            partial.release(remove=True)
            raise
        partial.release(remove=True)
    if stale is not None:
        _remove_stale(target, stale(target, set(written)))


def stale_weight_files(folder: Path, variant: str | None, written: set[str]) -> list[str]:
    """The files in `folder` of the previous save of these weights (`variant`) that the new save (`written`) did
    not write: the single safetensors file, its shards and its index."""
    weights = _add_variant(SAFETENSORS_WEIGHTS_NAME, variant)
    stem, extension = os.path.splitext(weights)
    shard = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(extension))
    index = _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    return sorted(
        name
        for name in os.listdir(folder)
        if name not in written and (name in (weights, index) or shard.fullmatch(name))
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
        target = check_save_directory(save_directory)
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

        save_files(save_directory, build, lambda folder, written: stale_weight_files(folder, variant, written))
