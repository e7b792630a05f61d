"""benchmarks/loading.py --tiny: the tiny checkpoint is converted, its page cache evicted, and both sides load it up
to the end of their first stage-1 transformer forward; the JSON line carries every figure. The side "ours@40" runs,
on the CPU, the placement that `--device cuda` applies (the CLI's memory tier for a budget)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tiny_loading_benchmark_reports_positive_figures(tmp_path):
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loading.py"), "--tiny", "--repeats", "1", "--workdir",
         str(tmp_path), "--json", str(out), "--sides", "ours,ours@40,reference"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == line
    for key in ("folder_bytes", "single_file_bytes", "cold_gb_per_s", "warm_gb_per_s", "ours_ratio_to_read",
                "reference_ratio_to_read", "reference_ratio_to_single_file_read",
                "ours_ratio_to_read_paired", "reference_ratio_to_read_paired"):  # fmt: skip
        assert line[key] > 0, key
    for key in ("read_folder", "read_folder_warm", "read_single_file", "ours_load", "ours_forward_start",
                "ours_forward_end", "reference_forward_start", "reference_forward_end"):  # fmt: skip
        assert line["median_s"][key] > 0, key
        assert len(line["runs_s"][key]) == 1, key
    # loading, then the pre-step work, then the forward; eviction left at most 1% of the pages resident
    med = line["median_s"]
    assert med["ours_load"] < med["ours_forward_start"] < med["ours_forward_end"]
    assert med["reference_forward_start"] < med["reference_forward_end"]
    assert med["ours@40_load"] < med["ours@40_placed"] < med["ours@40_forward_start"] < med["ours@40_forward_end"]
    assert list(line["placements"]) == ["ours@40"] and line["placements"]["ours@40"].startswith("resident")
    assert line["ours@40_ratio_to_read"] > 0 and "ours_placed" not in med  # "ours" is not placed on the CPU
    assert 0.0 <= line["max_resident_after_eviction"] < 0.01
    for side in ("ours", "reference"):
        assert line["source_bytes"][side] > 0 and 0.0 < line["read_share_at_first_step"][side] <= 1.0, side
    assert line["size"] == "tiny" and line["device"] == "cpu"
    # the temporary files are removed
    assert not list(tmp_path.glob("ltx2_loading_bench_*"))


def test_tiny_loading_benchmark_traces_the_device_map_side(tmp_path):
    """`--trace`: each component's load and each prefetched file's read (the reads in the loads' order), and one
    untimed profiled child per side; "ours-device-map" loads with `device_map` and is not placed afterwards."""
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loading.py"), "--tiny", "--repeats", "1", "--workdir",
         str(tmp_path), "--json", str(out), "--sides", "ours-device-map", "--trace"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    line = json.loads(out.read_text())
    med = line["median_s"]
    assert 0 < med["ours-device-map_load"] < med["ours-device-map_forward_start"] < med["ours-device-map_forward_end"]
    assert "ours-device-map_placed" not in med
    assert line["placements"] == {"ours-device-map": "from_pretrained(device_map='cpu')"}
    (trace,) = line["traces"]["ours-device-map"]
    read = [path.split("/")[0] for path, _, _ in trace["reads"]]
    loaded = [name for name, _, _ in trace["components"] if name in read]
    assert read == loaded and "transformer" in read and "distilled_lora" in read
    assert all(0 <= start <= end for _, start, end in trace["reads"] + trace["components"])
    (profiled,) = line["traces"]["ours-device-map_profiled"]
    assert profiled["call_ops"] and all(ms >= 0 and count > 0 for _, ms, count in profiled["call_ops"])
