"""Tests that need the full-size key listings skip locally without them, but FAIL under CI (`CI=true`)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent

_PROBE = """
from factories import REFERENCE_KEYS, needs_reference_keys
import pytest


@needs_reference_keys
@pytest.mark.parametrize("size", ["19B", "22B"])
def test_reads_listing(size, tmp_path):
    assert REFERENCE_KEYS is not None and tmp_path.is_dir()
"""


def _run_probe(tmp_path, ci):
    """pytest on a probe module beside a copy of factories.py in a folder with no shared/ above it."""
    folder = tmp_path / ("ci" if ci else "local")
    folder.mkdir()
    shutil.copy(HERE / "factories.py", folder / "factories.py")
    (folder / "test_probe.py").write_text(_PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LTX2_REFERENCE_KEYS")}
    if ci:
        env["CI"] = "true"
    assert not any((p / "shared" / "reference" / "keys").is_dir() for p in folder.parents)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_listings_skip_locally_with_the_reason(tmp_path):
    result = _run_probe(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout and "shared/reference/keys not found" in result.stdout


def test_missing_listings_fail_under_ci(tmp_path):
    result = _run_probe(tmp_path, ci=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed" in result.stdout and "CI=true: shared/reference/keys not found" in result.stdout
