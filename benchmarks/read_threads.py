"""Cold-read throughput of the machine's disk with one or several reader threads.

Writes `--gb` of files (4 files, each block a distinct 64 MiB pattern), syncs them and evicts them from the page
cache (`posix_fadvise(DONTNEED)`), then reads them back cold with each reader layout: one thread reading each file
in turn, N threads each reading contiguous slices of every file, N threads reading interleaved chunks. Prints a
table and a JSON line; removes the files at the end.

Used for issue 12's loading goal: whether `loaders.prefetch` would gain by reading with several threads (run 27 on
the H200 machine: no, 1.6-1.9 GB/s in every layout).

    python3 benchmarks/read_threads.py --gb 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

CHUNK = 64 * 2**20
LAYOUTS = (  # (threads, layout, chunk bytes)
    (1, "files", CHUNK),
    (2, "interleaved", CHUNK),
    (4, "interleaved", CHUNK),
    (8, "interleaved", CHUNK),
    (4, "slices", CHUNK),
    (8, "interleaved", 16 * 2**20),
    (16, "interleaved", 16 * 2**20),
)


def write_files(folder: str, total_bytes: int, count: int = 4) -> list[str]:
    pattern = os.urandom(CHUNK)
    chunks = max(1, total_bytes // count // CHUNK)
    files = []
    for i in range(count):
        path = os.path.join(folder, f"part{i}.bin")
        with open(path, "wb") as f:
            for j in range(chunks):
                f.write(bytes([j % 251]) + pattern[1:])  # no two consecutive blocks alike
            f.flush()
            os.fsync(f.fileno())
        files.append(path)
    return files


def evict(files: list[str]) -> None:
    os.sync()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read(ranges: list[tuple[str, int, int]], chunk: int) -> None:
    view = memoryview(bytearray(chunk))
    for path, start, length in ranges:
        fd = os.open(path, os.O_RDONLY)
        try:
            pos, end = start, start + length
            while pos < end:
                got = os.preadv(fd, [view[: min(chunk, end - pos)]], pos)
                if got <= 0:
                    break
                pos += got
        finally:
            os.close(fd)


def work_lists(files: list[str], threads: int, layout: str, chunk: int) -> list[list[tuple[str, int, int]]]:
    work = [[] for _ in range(threads)]
    for path in files:
        size = os.path.getsize(path)
        if layout in ("files", "slices"):
            step = -(-size // threads)
            for i in range(threads):
                if i * step < size:
                    work[i].append((path, i * step, min(step, size - i * step)))
        else:
            for k, start in enumerate(range(0, size, chunk)):
                work[k % threads].append((path, start, min(chunk, size - start)))
    return work


def cold_read_gbps(files: list[str], threads: int, layout: str, chunk: int) -> float:
    evict(files)
    workers = [threading.Thread(target=_read, args=(w, chunk)) for w in work_lists(files, threads, layout, chunk)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(os.path.getsize(p) for p in files) / (time.perf_counter() - start) / 1e9


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=8.0, help="bytes to write and read, in GB")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where to write the files (default: the temp folder)")
    args = parser.parse_args(argv)
    if not 0 < args.gb <= 1000 or args.repeats < 1:
        parser.error("--gb must be in (0, 1000] and --repeats at least 1")
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        files = write_files(folder, int(args.gb * 1e9))
        size = sum(os.path.getsize(p) for p in files)
        for _ in range(args.repeats):
            for threads, layout, chunk in LAYOUTS:
                name = f"{threads} thread(s), {layout}, {chunk >> 20} MiB"
                rows.setdefault(name, []).append(round(cold_read_gbps(files, threads, layout, chunk), 3))
    print(f"{'readers':40s} GB/s per repeat ({size / 1e9:.2f} GB, cold)")
    for name, values in rows.items():
        print(f"{name:40s} {' '.join(f'{v:.2f}' for v in values)}")
    result = {"benchmark": "read_threads", "bytes": size, "gbps": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
