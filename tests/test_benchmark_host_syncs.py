"""benchmarks/host_syncs.py on the CPU: the script runs, and after each stage's first step the transformer's forward
reads nothing back (its GPU run is in benchmarks/RESULTS.md)."""

import pathlib
import sys

import pytest


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import host_syncs  # noqa: E402


def test_host_syncs_script_runs_and_later_forwards_read_nothing(capsys):
    result = host_syncs.main(["--steps", "3"])
    rows = {r["phase"]: r for r in result["rows"]}
    assert list(rows) == [
        "before stage 1", "stage 1 step 1", "stage 1 later steps", "stage 2 step 1", "stage 2 later steps",
        "after a stage",
    ]  # fmt: skip
    for stage in (1, 2):
        first, later = rows[f"stage {stage} step 1"]["sites"], rows[f"stage {stage} later steps"]["sites"]
        assert any("check_all_bounded" in site for site in first)  # the first forward's and step's value checks
        assert not [site for site in later if site.startswith("models/")]  # no forward reads anything back
        # the loop's own check at the stage's end: once
        assert sum(n for site, n in later.items() if "check_all_bounded" in site) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"benchmark": "host_syncs"')


def test_a_single_step_is_refused():
    with pytest.raises(SystemExit):
        host_syncs.main(["--steps", "1"])
