"""benchmarks/tier_parity.py on the CPU: the script runs, and a streamed tier with the text encoder offloaded layer
by layer gives the resident pipeline's frames (its GPU run is in benchmarks/RESULTS.md)."""

import pathlib
import sys

import pytest


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import tier_parity  # noqa: E402


def test_tier_parity_script_runs_and_the_placements_agree(capsys):
    result = tier_parity.main(["--tiers", "stream,group-leaf"])
    rows = result["rows"]
    assert [r["tier"].split(" ")[0] for r in rows] == ["stream"] * 4 + ["group-leaf"] * 2
    assert any("layer by layer" in r["tier"] for r in rows)
    assert result["frames_std"] > 0.01
    assert all(r["max_abs_diff"] == 0.0 for r in rows)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")


def test_unknown_tier_names_are_refused():
    with pytest.raises(SystemExit):
        tier_parity.main(["--tiers", "disk"])
