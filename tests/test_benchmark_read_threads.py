"""benchmarks/read_threads.py: each reader layout covers every byte once, and a small run cleans up after itself."""

import os
import pathlib
import sys


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import read_threads  # noqa: E402


def test_work_lists_cover_each_byte_exactly_once(tmp_path):
    files = []
    for i, size in enumerate((5 * 2**20 + 3, 2**20, 1)):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * size)
        files.append(str(path))
    for threads, layout, chunk in read_threads.LAYOUTS:
        chunk = min(chunk, 2**20)  # small chunks so the interleaved layouts have several per file
        covered = {p: [] for p in files}
        work = read_threads.work_lists(files, threads, layout, chunk)
        assert len(work) == threads
        for ranges in work:
            for path, start, length in ranges:
                assert length > 0
                covered[path].append((start, start + length))
        for path, spans in covered.items():
            spans.sort()
            assert spans[0][0] == 0 and spans[-1][1] == os.path.getsize(path)
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), (layout, threads, spans)


def test_small_run_reports_every_layout_and_removes_its_files(tmp_path, capsys):
    result = read_threads.main(["--gb", "0.004", "--repeats", "1", "--workdir", str(tmp_path)])
    assert len(result["gbps"]) == len(read_threads.LAYOUTS)
    assert all(len(v) == 1 and v[0] > 0 for v in result["gbps"].values())
    assert result["bytes"] == 4 * 2**26  # at least one 64 MiB block per file
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"benchmark": "read_threads"')
