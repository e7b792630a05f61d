"""Page cache helpers of benchmarks/loading.py: evict files, check their residency (`mincore`), read them."""

from __future__ import annotations

import ctypes
import os
import pathlib
import time


CHUNK = 64 << 20


# ---------------------------------------------------------------------------------------------------------
def files_under(*paths: pathlib.Path) -> list[pathlib.Path]:
    out = []
    for path in paths:
        out += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return out


def evict(paths: list[pathlib.Path]) -> None:
    """Write back dirty pages, then drop every page of `paths` from the page cache."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[pathlib.Path]) -> float:
    """Share of the files' pages in the page cache (`mincore` on a read-only shared mapping of each file)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if not size:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            try:
                if libc.mincore(addr, size, vec):
                    raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            finally:
                libc.munmap(addr, size)
            resident += sum(b & 1 for b in bytes(vec))
            total += pages
        finally:
            os.close(fd)
    return resident / max(total, 1)


def filesystem_type(path: pathlib.Path) -> str:
    """The type of the file system holding `path` (the longest mount point above it in /proc/mounts)."""
    path, best = str(path.resolve()).rstrip("/") + "/", ("", "")
    for line in pathlib.Path("/proc/mounts").read_text().splitlines():
        _, mount, kind = line.split()[:3]
        if path.startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
            best = (mount, kind)
    return best[1]


def read_all(paths: list[pathlib.Path], buffer: bytearray) -> tuple[int, float]:
    """(bytes, seconds) to read every byte of `paths` in `CHUNK` pieces into `buffer`."""
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total, time.perf_counter() - start
