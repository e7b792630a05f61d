"""benchmarks/a2v_end_to_end.py --tiny: both sides run end to end on one virtual random checkpoint (CPU)."""

from __future__ import annotations

import importlib.util
import pathlib


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("a2v_end_to_end", ROOT / "benchmarks" / "a2v_end_to_end.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_end_to_end_ours_and_reference(tmp_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "result.json"
    result = bench.main(["--tiny", "--sides", "reference,ours,ours-exact-tiled", "--json", str(out)])
    rows = {row["side"]: row for row in result["rows"]}
    assert set(rows) == {"ours", "reference", "ours-exact-tiled"}
    for side, row in rows.items():
        assert "error" not in row, (side, row.get("error"))
        assert row["total_s"] > 0 and row["stage_1_step_s"] > 0
        assert set(row["phase_s"]) == {"prepare", "stage_1", "upsample", "stage_2", "decode"}
    # Ours batches a step's four guidance passes into one forward; the reference runs them one by one.
    assert rows["ours"]["forwards"] == {"stage_1": 2, "stage_2": 3}
    assert rows["reference"]["forwards"] == {"stage_1": 8, "stage_2": 3}
    assert rows["ours-exact-tiled"]["forwards"] == {"stage_1": 8, "stage_2": 3}
    # Same virtual weights and seed on every side, the reference first (the baseline). reference_arithmetic hands
    # its decoder the reference's final latent bit for bit; its frames differ only by the reference's uint8 output.
    assert rows["reference"]["latent_max_abs_diff_vs_reference"] == 0.0
    assert rows["ours-exact-tiled"]["latent_max_abs_diff_vs_reference"] == 0.0
    assert rows["ours-exact-tiled"]["max_abs_diff_vs_reference"] <= 1 / 255 + 1e-3
    # The default mode (batched passes, the STG prefix shared) changes bf16 rounding only.
    assert 0.0 < rows["ours"]["latent_rel_l2_vs_reference"] < 0.05
    assert 0.0 < rows["ours"]["max_abs_diff_vs_reference"] < 0.1
    assert rows["ours"]["mean_abs_diff_vs_reference"] < 0.01
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith('{"benchmark": "a2v_end_to_end"')
    assert out.read_text().strip() == printed[-1]
