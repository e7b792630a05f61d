"""Held-out parity of the text/image -> audio+video family (LTX2AudioVideoPipeline, LTX2ImageToAudioVideoPipeline,
distilled checkpoints) against ltx-pipelines 1.0 on configurations drawn from seeds (tests/heldout_cases.py): other
transformer depths/heads, sizes, frame counts and rates, guidance of both modalities, keyframes, `sigmas=` tables.
fp32 CPU; max |Δ| of frames in [0, 1] and waveform per case, against the issue's bound 1e-4. Prints a table and
one JSON line.

    python benchmarks/heldout_family.py [--cases N] [--first SEED]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import traceback


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from heldout_cases import TOL, draw_case, run_case  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="number of cases (seeds first .. first + N - 1)")
    parser.add_argument("--first", type=int, default=100, help="first seed (the unit test uses 3, 5, 8, 21)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in range(args.first, args.first + args.cases):
            case = draw_case(seed)
            start = time.perf_counter()
            try:
                row = run_case(case, pathlib.Path(root) / str(seed))
                row["ok"] = row["frames_max_abs_diff"] <= TOL and row["waveform_max_abs_diff"] <= TOL
            except Exception as error:  # a crash is a finding too: record it, keep going
                row = dict(case=case.label(), seed=seed, ok=False, error=f"{type(error).__name__}: {error}")
                traceback.print_exc()
            row["seconds"] = round(time.perf_counter() - start, 1)
            row["video_guidance"] = repr(case.video_guidance)
            row["audio_guidance"] = repr(case.audio_guidance)
            row["sigmas"] = case.sigmas
            row["conditions"] = case.conditions
            rows.append(row)
            print(f"[{len(rows)}/{args.cases}] seed {seed}: {row['case']} ok={row['ok']}", file=sys.stderr, flush=True)
    print(f"{'seed':>4s}  {'case':62s} {'frames max|d|':>13s} {'wave max|d|':>12s} {'ok':>3s} {'s':>5s}")
    for row in rows:
        frames = f"{row['frames_max_abs_diff']:.3g}" if "frames_max_abs_diff" in row else "-"
        wave = f"{row['waveform_max_abs_diff']:.3g}" if "waveform_max_abs_diff" in row else "-"
        print(f"{row['seed']:4d}  {row['case']:62s} {frames:>13s} {wave:>12s} {'yes' if row['ok'] else 'NO':>3s} "
              f"{row['seconds']:5.1f}")  # fmt: skip
        if "error" in row:
            print(f"      error: {row['error']}")
    result = dict(
        benchmark="heldout_family",
        tolerance=TOL,
        cases=len(rows),
        passed=sum(row["ok"] for row in rows),
        frames_max_abs_diff=max((r.get("frames_max_abs_diff", float("inf")) for r in rows), default=None),
        waveform_max_abs_diff=max((r.get("waveform_max_abs_diff", float("inf")) for r in rows), default=None),
        rows=rows,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    summary = main()
    sys.exit(0 if summary["passed"] == summary["cases"] else 1)
