"""Read a converted folder's weight files ahead, so loading reads the disk once, sequentially.

safetensors hands diffusers' `from_pretrained` memory-mapped tensors: the bytes come off the disk later, page by
page, when the weights are first touched (`pipe.to("cuda")`, a memory tier's copy into pinned memory, the first
forward). On one H200 machine's disk that made a converted folder (13.8 GB, 8 full-width blocks) take 12.4 s from
`from_pretrained` to the end of the first forward, against 8.0 s to read its bytes in 64 MiB chunks
(`benchmarks/loading.py`, run 18). `prefetch_files` starts one background thread that reads the files in large
sequential chunks into a scratch buffer (nothing is kept: the kernel's page cache holds the bytes), so the disk works
at its sequential rate while diffusers builds the models, and the page faults later find the pages in memory
(run 19, same machine: 13.2 s to the end of the first forward, 17.2 s without).

A component read straight onto a device (`from_pretrained(..., device_map=...)`: each tensor is copied as soon as
it is created) waits until the prefetch has read its files (`ReadAheadWaitMixin`, `wait_until_read`): otherwise its
page faults read the same file as the prefetch, in small requests, and the disk slows to about 1.4 GB/s from
1.7 GB/s (run 25). Waiting, the disk serves one sequential reader, and a component's copy overlaps the reading of the
next ones (the pipeline loads the largest, the transformer, first: `pipeline_loading.LOADING_ORDER`).

Only reads: files are opened read-only and never written. It reads at most half the memory the kernel reports
available (`MemAvailable`), in the components' order, passing over a file that no longer fits (more would be
evicted before use and read twice); nothing where that amount is unknown (no `/proc/meminfo`), or when the
environment sets `LTX2_PREFETCH_WEIGHTS=0`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable

from diffusers.utils import logging


logger = logging.get_logger(__name__)

__all__ = [
    "ENV_SWITCH",
    "available_memory_bytes",
    "prefetch_files",
    "prefetch_selection",
    "read_sequentially",
    "ReadAheadWaitMixin",
    "wait_until_read",
    "weight_files",
]

ENV_SWITCH = "LTX2_PREFETCH_WEIGHTS"
CHUNK_BYTES = 64 * 2**20
MEMORY_SHARE = 0.5  # prefetch at most this share of the available memory


def available_memory_bytes() -> int | None:
    """`MemAvailable` of `/proc/meminfo` in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def weight_files(folder: str | os.PathLike, subfolders: Iterable[str], variant: str | None = None) -> list[str]:
    """The `.safetensors` files `from_pretrained` loads from `folder/<subfolder>` for each subfolder that exists, in
    order: the shards the variant's index names (`<name>.safetensors.index[.<variant>].json`, file names inside the
    subfolder only), else the files of that variant (`<name>[.<variant>].safetensors`; by name); a subfolder without
    files of `variant` is loaded without one (as diffusers does), so its plain files are read. Other variants'
    files in the same subfolder are not read."""
    if variant is not None and not isinstance(variant, str):
        return []  # from_pretrained reports it
    files = []
    for name in subfolders:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            chosen = _variant_files(path, variant) or (_variant_files(path, None) if variant is not None else [])
            files += [os.path.join(path, f) for f in chosen]
    return [f for f in files if os.path.isfile(f)]


def _variant_files(path: str, variant: str | None) -> list[str]:
    names = sorted(os.listdir(path))
    index_suffix = ".safetensors.index.json" if variant is None else f".safetensors.index.{variant}.json"
    shards = []
    for index in (n for n in names if n.endswith(index_suffix)):
        try:
            with open(os.path.join(path, index), encoding="utf-8") as f:
                shards += [s for s in json.load(f)["weight_map"].values() if isinstance(s, str)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.debug(f"prefetch ignored the index {index}: {error}")
    if shards:
        return [s for s in dict.fromkeys(shards) if s.endswith(".safetensors") and os.path.basename(s) == s]
    suffix = ".safetensors" if variant is None else f".{variant}.safetensors"
    dots = 1 if variant is None else 2 + variant.count(".")
    return [n for n in names if n.endswith(suffix) and n.count(".") == dots]


def read_sequentially(files: Iterable[str], chunk_bytes: int = CHUNK_BYTES) -> int:
    """Read every file front to back in `chunk_bytes` chunks into one scratch buffer; the bytes read. A file that
    cannot be read is skipped (loading itself reports it)."""
    buffer = bytearray(chunk_bytes)
    view, total = memoryview(buffer), 0
    for path in files:
        try:
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    total += n
        except OSError as error:
            logger.debug(f"prefetch skipped {path}: {error}")
    return total


def prefetch_selection(files: list[str], budget_bytes: int) -> list[str]:
    """The files read ahead within `budget_bytes`: in order, each one that still fits what is left of the budget
    (a file larger than the rest is passed over; later, smaller ones may still fit)."""
    chosen, left = [], budget_bytes
    for path in files:
        size = os.path.getsize(path)
        if size <= left:
            chosen.append(path)
            left -= size
    return chosen


def prefetch_files(files: list[str]) -> threading.Thread | None:
    """Start a daemon thread that `read_sequentially`s the files that fit `MEMORY_SHARE` of the available memory
    (`prefetch_selection`); None (nothing started) when disabled by `LTX2_PREFETCH_WEIGHTS=0`, when the available
    memory is unknown, or when no file fits."""
    if os.environ.get(ENV_SWITCH, "1").strip() in {"0", "false", "False", "no"} or not files:
        return None
    available = available_memory_bytes()
    chosen = [] if available is None else prefetch_selection(files, int(MEMORY_SHARE * available))
    if len(chosen) < len(files):
        logger.debug(f"weight prefetch: {len(chosen)} of {len(files)} files (available memory {available} bytes)")
    if not chosen:
        return None
    events = {_key(path): threading.Event() for path in chosen}
    thread = threading.Thread(target=_read_ahead, args=(chosen, events), name="ltx2-weight-prefetch", daemon=True)
    with _PENDING_LOCK:
        _PENDING.update({key: (event, thread) for key, event in events.items()})
    try:
        thread.start()
    except RuntimeError as error:  # no thread could be started: load without the read-ahead
        _unregister(events)
        logger.debug(f"weight prefetch not started: {error}")
        return None
    return thread


# file -> (event set once the prefetch has read it or skipped it, the prefetch's thread); removed when it ends. Keyed
# by the file's folder resolved and its own name: the files of a Hugging Face cache snapshot are links to blobs.
_PENDING: dict[str, tuple[threading.Event, threading.Thread]] = {}
_PENDING_LOCK = threading.Lock()


def _key(path: str | os.PathLike) -> str:
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _unregister(events: dict[str, threading.Event]) -> None:
    """Set the events (no waiter is left waiting) and remove them from `_PENDING`."""
    with _PENDING_LOCK:
        for key, event in events.items():
            event.set()
            if key in _PENDING and _PENDING[key][0] is event:
                del _PENDING[key]


def _forget_after_fork() -> None:
    """In a forked child the prefetch thread does not exist: nothing is pending there."""
    global _PENDING, _PENDING_LOCK
    _PENDING, _PENDING_LOCK = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _read_ahead(files: list[str], events: dict[str, threading.Event]) -> None:
    """The prefetch thread: `read_sequentially` file by file, each file's event set once it is read; every event
    set and unregistered at the end, whatever happens."""
    try:
        for path in files:
            read_sequentially([path])
            events[_key(path)].set()
    finally:
        _unregister(events)


def wait_until_read(folder: str | os.PathLike) -> int:
    """Block until the running prefetch has read the files it holds under `folder` (none: returns at once), or
    until its thread is gone; the number of files waited for."""
    prefix = os.path.join(os.path.realpath(folder), "")
    with _PENDING_LOCK:
        pending = [entry for path, entry in _PENDING.items() if path.startswith(prefix)]
    for event, thread in pending:
        while not event.wait(1.0) and thread.is_alive():
            pass
    return len(pending)


class ReadAheadWaitMixin:
    """For a model class loaded by `from_pretrained`: with a `device_map` (each tensor copied to its device as soon
    as it is created), first wait until the prefetch has read the component folder's files (`wait_until_read`)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if kwargs.get("device_map") is not None and isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            wait_until_read(os.path.join(pretrained_model_name_or_path, kwargs.get("subfolder") or ""))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
