"""Where a pipeline call makes the host wait for the device: the tiny LTX-2.3 audio-to-video pipeline called once
(after a warm-up call), every synchronising CUDA operation recorded (`torch.cuda.set_sync_debug_mode("warn")`) with
the package's source line that asked for it, counted per phase: before the first step, each stage's first step,
its later steps, and after the last. A sync in a later step keeps the host from queuing the next forward while
the GPU computes (the GPU then idles while the host catches up); the loop is meant to have none there. On the CPU
the same calls are found by a torch function mode (`tests/host_reads.py`: value reads and tensors built from host
values), since there is no device to wait for; it also counts reads of tensors that live on the host anyway (the
Euler step's sigmas, taken as host numbers), which wait for nothing on a GPU. Prints a table and one JSON line.

    python benchmarks/host_syncs.py [--device cuda] [--steps 4]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import traceback
import warnings

import numpy as np
import torch


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from factories import cached_checkpoint  # noqa: E402
from host_reads import HostReads, package_site  # noqa: E402
from prompt_contexts import contexts  # noqa: E402

from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance  # noqa: E402
from ltx2_diffusers.pipelines import ltx2_base  # noqa: E402


class Phases:
    """The phase of the call now running: "before stage 1", "stage N step 1", "stage N later steps", "after a
    stage" (stage 2's preparation included)."""

    def __init__(self):
        self.now, self.stage = "before stage 1", 0

    def step(self, index: int, stage: int) -> None:
        self.stage = stage
        self.now = f"stage {stage} step 1" if index == 0 else f"stage {stage} later steps"


def _record(device, phases: Phases, call) -> dict[str, collections.Counter]:
    """`{phase: Counter(site)}` of the syncs `call()` makes."""
    found: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    if device.type == "cuda":
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            previous = warnings.showwarning

            def show(message, category, *args, **kwargs):
                if "synchronizing" in str(message):
                    found[phases.now][package_site(traceback.extract_stack()[:-1])] += 1
                else:
                    previous(message, category, *args, **kwargs)

            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode(0)
                warnings.showwarning = previous
        return found

    class PhasedReads(HostReads):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen = len(self.sites)
            out = super().__torch_function__(func, types, args, kwargs)
            for site in self.sites[seen:]:
                found[phases.now][site] += 1
            return out

    with PhasedReads():
        call()
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="stage-1 steps (stage 2 runs its 3)")
    parser.add_argument("--compile", action="store_true", help="regional compile (CUDA default; off here: faster)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    device = torch.device(args.device)
    checkpoint = cached_checkpoint("checkpoint", "2.3", seed=4)
    upsampler = cached_checkpoint("upsampler", seed=5)
    lora = cached_checkpoint("lora", checkpoint_path=checkpoint, seed=6, dtype=torch.float32)
    pipe = LTX2AudioToVideoPipeline.from_single_file(
        checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.6), torch_dtype=torch.float32
    ).to(device)
    pipe.set_transformer_acceleration(compile=args.compile)
    pipe.set_progress_bar_config(disable=True)
    audio = (0.3 * np.sin(np.linspace(0.0, 400.0, 16000))).astype(np.float32)[None].repeat(2, 0)
    phases = Phases()

    def call(steps):
        return pipe(
            audio=audio, audio_sample_rate=16000, prompt_contexts=contexts(0, "2.3", tokens=16),
            negative_prompt_contexts=contexts(1, "2.3", tokens=16), height=128, width=128, num_frames=9,
            num_inference_steps=steps, video_guidance=MultiModalGuidance(stg_blocks=[1]),
            generator=torch.Generator().manual_seed(0), output_type="pt",
        )  # fmt: skip

    real_guided, real_denoise = ltx2_base.guided_x0, type(pipe).denoise

    def guided(*a, **k):
        phases.step(a[4], phases.stage)
        return real_guided(*a, **k)

    def denoise(self, *a, **k):
        phases.stage = k.get("stage", 0) + 1
        try:
            return real_denoise(self, *a, **k)
        finally:
            phases.now = "after a stage"

    call(2)  # warm-up (one-time work: compile, cuDNN set-up)
    ltx2_base.guided_x0, type(pipe).denoise = guided, denoise
    try:
        found = _record(device, phases, lambda: call(args.steps))
    finally:
        ltx2_base.guided_x0, type(pipe).denoise = real_guided, real_denoise
    order = ["before stage 1", "stage 1 step 1", "stage 1 later steps", "stage 2 step 1", "stage 2 later steps"]
    order.append("after a stage")
    rows = [
        dict(phase=p, syncs=sum(found[p].values()), sites=dict(found[p].most_common())) for p in order if p in found
    ]
    rows += [dict(phase=p, syncs=0, sites={}) for p in order if p not in found]
    rows.sort(key=lambda r: order.index(r["phase"]))
    print(f"{'phase':<22} {'syncs':>6}  sites (count)")
    for row in rows:
        sites = "; ".join(f"{s} ({n})" for s, n in list(row["sites"].items())[:6])
        print(f"{row['phase']:<22} {row['syncs']:>6}  {sites}")
    method = "torch.cuda.set_sync_debug_mode" if device.type == "cuda" else "HostReads (tests/host_reads.py)"
    result = dict(benchmark="host_syncs", device=str(device), torch=torch.__version__, method=method,
                  steps=args.steps, rows=rows)  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
