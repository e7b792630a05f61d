"""Where a conversion lands: the output folder is only ever created, or replaced when it is a previous conversion.
`save_pretrained` of the pipelines lands the same way (`pipelines/pipeline_saving.save_folder`, its messages naming
`save_directory`): a conversion or a save is a folder of this package, which either may replace.

The rules (nothing the converter did not write is ever deleted or replaced):

- Inputs against the output, before any work (`check_inputs_outside`): no input (a file or a folder, by its own path
  and by the path it resolves to) may be the output folder or lie inside it, and the output folder may not lie inside
  an input folder (`gemma_root`). So `--output-dir .` or the folder holding the checkpoint is refused.
- Every conversion writes `MARKER_NAME` listing each file it wrote, with its size and `mtime_ns` ("stats"; no
  hashing of 40 GB). `overwrite` replaces only a folder whose marker is there, whose `model_index.json` is there and
  whose files are exactly the listed ones, each of the recorded size and modification time: a user's file in it, a
  listed file the user edited (README.md, a config.json), or a folder converted by something else is refused,
  naming the path (`inspect_output`). Markers written before "stats" existed are accepted without that check (their
  files are still compared by name). Copying a conversion without keeping modification times (`cp -r` without
  `-p`) makes its files look edited: such a copy is refused, never replaced, and the message says so. A folder
  without the marker is never replaced, even one that looks like a save or conversion made before the marker existed
  (its files cannot be told from the user's); the message says that too.
- The folder is built in `.{name}.partial-XXXX` beside the output; the run holds an `flock` on the temp marker
  `TEMP_MARKER_NAME` inside it for its whole life. The final move (`publish`) re-inspects the output under a lock on
  the parent folder and must find it as it was at the start (absent, empty, or the same previous conversion), then
  renames with `RENAME_NOREPLACE` (plain `os.rename` where the kernel lacks it: that still never replaces a file or a
  non-empty folder). With `overwrite` the previous conversion is renamed into `.{name}.old-XXXX/`, re-verified there
  (the same conversion id), and only then removed. So two conversions into one folder cannot both succeed.
- Leftover `.partial-*` / `.old-*` folders of a killed run (named so, holding a temp marker for this output, and whose
  lock is free) are named in a warning and removed at the start of the next run into the same place, before that
  run inspects the output (`remove_leftovers`; a `save_pretrained` into an existing empty folder builds in such a
  folder inside it, and the next save into that folder removes it there the same way). A run killed between the two
  moves of `overwrite` left the output absent and the previous folder in `.old-*`: it is moved back first (that run
  replaced nothing), so the next run finds it as it was (and replaces it only with `overwrite`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Mapping

from diffusers.utils import logging


try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, leftovers are then left alone
    fcntl = None

logger = logging.get_logger(__name__)

MARKER_NAME = ".ltx2_diffusers_conversion.json"
TEMP_MARKER_NAME = ".ltx2_diffusers_temp.json"
_MARKER_FORMAT = "ltx2-diffusers-conversion/1"
#: How many bytes the temporary folders beside the output add to its name (`.` + `.partial-` + 8 random).
TEMP_NAME_EXTRA = 18
_TEMP_FORMAT = "ltx2-diffusers-temp/1"


@dataclasses.dataclass(frozen=True)
class OutputState:
    """What was at the output path: "absent", "empty" (an empty folder) or "conversion" (with its marker id)."""

    kind: str
    conversion_id: str | None = None

    def describe(self) -> str:
        return {"absent": "absent", "empty": "an empty folder"}.get(self.kind, f"conversion {self.conversion_id}")


def resolved_path(path: str | os.PathLike) -> str:
    """`path` with its folder resolved as the kernel resolves it (each symbolic link first, then the `..` after it:
    `link/../clip.mp4` lies beside the link's target, not in the current folder as `os.path.abspath` has it), its
    own name kept as given (it may itself be a link, which the callers refuse or replace as a name)."""
    path = os.fspath(path)
    head, name = os.path.split(path.rstrip(os.sep) or path)
    if name in ("", os.curdir, os.pardir):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(head or os.curdir), name)


# ------------------------------------------------------------------------------------------------ inputs vs output
def _forms(path: Path) -> set[Path]:
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def check_inputs_outside(output_dir: Path, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """`ValueError` naming both paths if an input is (or lies inside) `output_dir`, or `output_dir` lies inside an
    input folder."""
    outs = _forms(output_dir)
    for label, value in inputs.items():
        if value is None:
            continue
        path = Path(os.fspath(value))
        for form in _forms(path):
            for out in outs:
                if form == out or out in form.parents:
                    raise ValueError(
                        f"{label} {os.fspath(path)!r} lies inside output_dir {os.fspath(output_dir)!r}; the converter "
                        "never writes where its inputs are: choose another output_dir"
                    )
                if path.is_dir() and form in out.parents:
                    raise ValueError(
                        f"output_dir {os.fspath(output_dir)!r} lies inside {label} {os.fspath(path)!r}; choose an "
                        "output_dir outside the input folders"
                    )


def _human_size(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_free_space(output_dir: Path, needed: int, label: str = "output_dir") -> None:
    """`ValueError` naming `label` before anything is written when the file system that will hold `output_dir` has
    less room than `needed` bytes (the weights the run writes: a lower bound of the folder's size). A previous folder
    at `output_dir` is removed only once the new one is complete, so both need room for a while."""
    folder = output_dir
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ValueError(
            f"{label} {os.fspath(output_dir)!r}: writing it needs at least {_human_size(needed)}, but the file system "
            f"of {os.fspath(folder)!r} has {_human_size(free)} free (a previous folder there is removed only once the "
            f"new one is complete); free some space or choose another {label}"
        )


# ------------------------------------------------------------------------------------------------ markers
def _listing(folder: Path) -> list[str]:
    """Every file, link and folder (`name/`) under `folder` as a sorted relative POSIX path, markers excluded."""
    out = []
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            path = os.path.join(root, name)
            rel = Path(os.path.relpath(path, folder)).as_posix()
            if os.path.isdir(path) and not os.path.islink(path):
                rel += "/"
            if rel not in (MARKER_NAME, TEMP_MARKER_NAME):
                out.append(rel)
    return sorted(out)


def _stat(path: Path) -> list[int]:
    """`[size, mtime_ns]` of a file (the link itself for a link): what the marker records to notice an edit."""
    info = os.lstat(path)
    return [info.st_size, info.st_mtime_ns]


def write_marker(folder: Path) -> str:
    """Write the conversion marker listing every file now in `folder`, each file's `[size, mtime_ns]` under
    "stats" (cheap: no hashing of the weights); returns the new conversion id."""
    conversion_id = uuid.uuid4().hex
    files = _listing(folder)
    stats = {rel: _stat(folder / rel) for rel in files if not rel.endswith("/")}
    marker = {"format": _MARKER_FORMAT, "id": conversion_id, "files": files, "stats": stats}
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    return conversion_id


def _writer(label: str) -> str:
    """Who writes a folder called `label`, for the messages."""
    return "this converter" if label == "output_dir" else "ltx2_diffusers (save_pretrained or the converter)"


def _unmarked_hint(folder: Path) -> str:
    """For a folder without a marker that looks like a save or conversion of this package (its `model_index.json`
    names the custom-pipeline shim): why it is refused all the same."""
    try:
        class_name = json.loads((folder / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not (isinstance(class_name, list) and class_name[:1] == ["pipeline"] and (folder / "pipeline.py").is_file()):
        return ""
    return (
        "; it looks like a save or conversion made before this package marked its folders, so which of its files "
        "are yours cannot be told and it is never replaced"
    )


def _conversion_id(folder: Path, label: str = "output_dir") -> str:
    """The marker id of `folder` if it is exactly a folder this package wrote (a conversion or a `save_pretrained`),
    else `ValueError` naming `label`, the path and the first entries that are not ours."""
    where = os.fspath(folder)
    writer = _writer(label)
    marker_path = folder / MARKER_NAME
    try:
        marker = json.loads(marker_path.read_text())
        files, conversion_id = marker["files"], marker["id"]
        if marker["format"] != _MARKER_FORMAT or not isinstance(files, list) or not isinstance(conversion_id, str):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"{label} {where!r} is not a folder {writer} wrote (no valid {MARKER_NAME}; it holds "
            f"{sorted(os.listdir(folder))[:5]}){_unmarked_hint(folder)}; only such a folder holding nothing else is "
            f"replaced: remove or move it yourself, or choose another {label}"
        ) from None
    if not (folder / "model_index.json").is_file() or os.path.islink(folder / "model_index.json"):
        raise ValueError(f"{label} {where!r} has a conversion marker but no model_index.json; refusing to replace it")
    present = _listing(folder)
    foreign = sorted(set(present) - set(files))
    links = [p for p in present if os.path.islink(folder / p)]  # the converter writes no links
    if foreign or links:
        foreign = foreign or links
        raise ValueError(
            f"{label} {where!r} holds files {writer} did not write ({len(foreign)}: {foreign[:5]}); refusing to "
            f"replace it: move them out or choose another {label}"
        )
    stats = marker.get("stats")  # absent in markers written before it was recorded: those are accepted as they are
    if stats is not None:
        if not isinstance(stats, dict):
            raise ValueError(f'{label} {where!r}: its {MARKER_NAME} is damaged ("stats"); refusing to replace it')
        for rel in present:
            recorded = stats.get(rel)
            if rel.endswith("/") or rel not in files:
                continue
            if recorded is None or list(recorded) != _stat(folder / rel):
                raise ValueError(
                    f"{label} {where!r}: {rel!r} was changed since {writer} wrote it (its size or modification "
                    f"time differs from {MARKER_NAME}; a copy made without keeping modification times, as `cp -r` "
                    f"without `-p`, looks edited too); refusing to replace your edit: move the file out (or the "
                    f"folder), or choose another {label}"
                )
    return conversion_id


def _state(output_dir: Path, label: str = "output_dir") -> OutputState:
    """What is at `output_dir` now; `ValueError` for anything that is not absent, empty or a conversion of ours."""
    where = os.fspath(output_dir)
    if os.path.islink(output_dir):
        raise ValueError(f"{label} {where!r} is a symbolic link; give the real folder or a new path")
    if not os.path.lexists(output_dir):
        return OutputState("absent")
    if not output_dir.is_dir():
        raise ValueError(f"{label} {where!r} exists and is not a folder")
    if not any(output_dir.iterdir()):
        return OutputState("empty")
    return OutputState("conversion", _conversion_id(output_dir, label))


def inspect_output(output_dir: Path, overwrite: bool, label: str = "output_dir") -> OutputState:
    """The state `publish` must find again at the end; refuses a non-empty folder unless it is ours and `overwrite`.
    `label` names the folder in the messages (`save_pretrained` passes "save_directory")."""
    if not overwrite and os.path.lexists(output_dir) and not os.path.islink(output_dir) and output_dir.is_dir():
        if any(output_dir.iterdir()):
            raise ValueError(
                f"output_dir {os.fspath(output_dir)!r} exists and is not empty (pass overwrite=True / --overwrite to "
                "replace a previous conversion)"
            )
    return _state(output_dir, label)


# ------------------------------------------------------------------------------------------------ temp folders
class TempFolder:
    """A `.{name}.{kind}-XXXX` folder beside the output (or in `folder`: `save_pretrained` into an existing empty
    folder builds inside it), holding a temp marker that this process keeps locked."""

    def __init__(self, output_dir: Path, kind: str, folder: Path | None = None):
        parent = output_dir.parent if folder is None else folder
        self.path = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{kind}-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp creates 0700; the result should look like any other folder
        marker = {"format": _TEMP_FORMAT, "output": output_dir.name, "pid": os.getpid()}
        self._handle = open(self.path / TEMP_MARKER_NAME, "w+")
        self._handle.write(json.dumps(marker) + "\n")
        self._handle.flush()
        if fcntl is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def forget(self) -> None:
        """Delete the temp marker, so that the folder is never taken for a leftover."""
        drop_temp_marker(self.path)

    def release(self, remove: bool) -> None:
        """Drop the lock; with `remove`, delete the folder (only ever one this object created)."""
        self._handle.close()
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)


def _is_live(marker: Path) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    with open(marker) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def remove_leftovers(
    output_dir: Path, inputs: Mapping[str, str | os.PathLike | None], folder: Path | None = None
) -> list[Path]:
    """Remove the `.partial-*` / `.old-*` folders an interrupted run into `output_dir` left beside it (or in
    `folder`: inside `output_dir` for a save into an existing empty folder); returns them."""
    parent = output_dir.parent if folder is None else folder
    if (folder is not None and os.path.islink(folder)) or not parent.is_dir():
        return []  # a parent reached through a link is the usual `models -> /data/models`; the named folder is not
    pattern = re.compile(rf"\.{re.escape(output_dir.name)}\.(partial|old)-[A-Za-z0-9_]+")
    removed = []
    for path in sorted(parent.iterdir()):
        if not pattern.fullmatch(path.name) or os.path.islink(path) or not path.is_dir():
            continue
        marker = path / TEMP_MARKER_NAME
        try:
            info = json.loads(marker.read_text())
            ours = info.get("format") == _TEMP_FORMAT and info.get("output") == output_dir.name
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours or _is_live(marker):
            continue
        try:
            check_inputs_outside(path, inputs)
        except ValueError:
            logger.warning(f"leaving the leftover folder {os.fspath(path)!r} in place: an input lies inside it")
            continue
        if path.name.startswith(f".{output_dir.name}.old-") and not _moved_back(path, output_dir):
            continue
        logger.warning(
            f"removing {os.fspath(path)!r}, left by an interrupted conversion into {os.fspath(output_dir)!r}"
        )
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _moved_back(trash: Path, output_dir: Path) -> bool:
    """An `.old-` leftover of a run killed between the two moves of `publish` holds the previous folder while
    `output_dir` is absent: move it back (that run replaced nothing). An empty `output_dir` (`mkdir -p` before the
    next run) is removed first. True when `trash` may now be removed: it was moved back, or a conversion of ours is at
    `output_dir` (the run was killed between `publish`'s last two renames: the leftover is the replaced copy, which
    `publish` renames away from `output_dir.name` before removing it). Anything else at `output_dir` (a file, a link,
    the user's folder): the leftover is kept, with a warning."""
    aside = trash / output_dir.name
    if not os.path.lexists(aside):
        return True
    if os.path.isdir(output_dir) and not os.path.islink(output_dir):
        with contextlib.suppress(OSError):
            os.rmdir(output_dir)  # only if empty
    if os.path.lexists(output_dir):
        try:
            replaced = _state(output_dir).kind == "conversion"  # the instant between `publish`'s two renames
        except ValueError:
            replaced = False
        if not replaced:
            logger.warning(
                f"leaving {os.fspath(trash)!r} in place: it holds the previous {os.fspath(output_dir)!r}, moved "
                f"aside by an interrupted run, and something else is at {os.fspath(output_dir)!r} now"
            )
        return replaced
    try:
        _rename_noreplace(aside, output_dir)
    except OSError as error:
        logger.warning(
            f"leaving {os.fspath(trash)!r} in place: it holds the previous {os.fspath(output_dir)!r}, left by an "
            f"interrupted run, which could not be moved back ({error})"
        )
        return False
    logger.warning(
        f"moved {os.fspath(aside)!r} back to {os.fspath(output_dir)!r}: an interrupted run had moved it aside and "
        "replaced nothing"
    )
    return True


# ------------------------------------------------------------------------------------------------ the final move
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _find_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _find_renameat2()


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with `OSError` if `dst` exists: never replaces it."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), os.fspath(dst))
    if not os.path.isdir(src) or os.path.islink(src):
        try:  # a file: a hard link fails atomically if `dst` exists (POSIX `rename` would replace it)
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as error:  # a file system without hard links (FAT, some network shares)
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", os.fspath(dst))
    os.rename(src, dst)  # a folder: never replaces a file or a non-empty folder; Windows: never replaces anything


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish(tmp: Path, output_dir: Path, expected: OutputState, label: str = "output_dir") -> None:
    """Move the finished `tmp` to `output_dir`, which must be as `inspect_output` found it; `ValueError` otherwise.
    The previous folder (a conversion or save) is renamed aside and removed only once `tmp` is in its place: open
    or memory-mapped files of it stay readable (POSIX keeps a renamed or unlinked file's data while it is open)."""
    where = os.fspath(output_dir)
    during = "the conversion" if label == "output_dir" else "the save"
    with _parent_lock(output_dir.parent):
        try:
            now = _state(output_dir, label)
        except ValueError as e:
            raise ValueError(f"{label} {where!r} changed during {during}; nothing was replaced ({e})") from None
        if now != expected:
            raise ValueError(
                f"{label} {where!r} changed during {during} (it was {expected.describe()}, it is now "
                f"{now.describe()}: another run?); nothing was replaced"
            )
        if now.kind == "empty":
            try:
                os.rmdir(output_dir)  # fails if something was put in it meanwhile
            except OSError:
                raise ValueError(f"{label} {where!r} is no longer empty; nothing was replaced") from None
        if now.kind != "conversion":
            try:
                _rename_noreplace(tmp, output_dir)
            except OSError:
                raise ValueError(f"{label} {where!r} appeared during {during}; nothing was replaced") from None
            drop_temp_marker(output_dir)
            return
        trash = TempFolder(output_dir, "old")
        aside = trash.path / output_dir.name
        try:
            os.rename(output_dir, aside)  # `aside` does not exist: a plain move
            try:
                moved = _conversion_id(aside)
            except ValueError:
                moved = None
            if moved != expected.conversion_id:
                _rename_noreplace(aside, output_dir)
                raise ValueError(f"{label} {where!r} changed during {during}; nothing was replaced")
            try:
                _rename_noreplace(tmp, output_dir)
            except OSError:
                _rename_noreplace(aside, output_dir)
                raise ValueError(f"{label} {where!r} appeared during {during}; nothing was replaced") from None
        except BaseException:
            if os.path.lexists(aside) and not os.path.lexists(output_dir):  # interrupted between the two moves
                with contextlib.suppress(OSError):
                    _rename_noreplace(aside, output_dir)
            if os.path.lexists(aside):  # could not be moved back: keep it, and never take it for a leftover
                trash.forget()
                trash.release(remove=False)
                logger.error(
                    f"the previous content of {where!r} could not be moved back; it is at {os.fspath(aside)!r}"
                )
            else:
                trash.release(remove=True)
            raise
        with contextlib.suppress(OSError):  # the replaced copy: never moved back by `_moved_back` once renamed
            os.rename(aside, trash.path / "replaced")
        drop_temp_marker(output_dir)
        trash.release(remove=True)


def drop_temp_marker(folder: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(folder / TEMP_MARKER_NAME)
