"""benchmarks/profile_forward.py's pure parts: the GPU timeline's idle time and the flag lists (the rest needs CUDA)."""

import pathlib
import sys

import pytest


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_forward  # noqa: E402


def test_timeline_merges_overlaps_and_attributes_gaps_to_the_kernel_before():
    spans = [  # (start_us, end_us, name), unordered, with an overlap and a gap under the threshold
        (100.0, 150.0, "c"),
        (0.0, 40.0, "a"),
        (30.0, 60.0, "b"),  # overlaps a: one busy interval 0-60
        (63.0, 90.0, "b"),  # gap of 3 us: idle, but not counted as a gap
        (150.0, 170.0, "d"),
        (200.0, 210.0, "b"),
    ]
    t = profile_forward.timeline(spans, min_gap_us=5.0)
    assert t["span_ms"] == pytest.approx(0.210)
    assert t["busy_ms"] == pytest.approx((60 + 27 + 70 + 10) / 1000)
    assert t["idle_ms"] == pytest.approx((3 + 10 + 30) / 1000)
    assert t["gaps"] == 2
    assert dict(t["idle_after"]) == pytest.approx({"b": 0.010, "d": 0.030})
    assert t["idle_after"][0][0] == "d"  # the largest first


def test_timeline_of_no_kernels_is_empty():
    assert profile_forward.timeline([]) == {
        "span_ms": 0.0,
        "busy_ms": 0.0,
        "idle_ms": 0.0,
        "gaps": 0,
        "idle_after": [],
    }


@pytest.mark.parametrize("value", ["compiled,fast", "", "eager,"])
def test_listed_refuses_unknown_names(value):
    with pytest.raises(ValueError, match="--modes"):
        profile_forward._listed(value, "--modes", profile_forward.MODES)


def test_listed_keeps_the_order():
    assert profile_forward._listed("eager,compiled", "--modes", profile_forward.MODES) == ["eager", "compiled"]
