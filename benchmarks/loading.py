"""Loading: from files on disk to the first stage-1 transformer forward, against the time to read the bytes.

    python benchmarks/loading.py                   # full width, 4 blocks, 1 connector block: 8.6 GB file, 10.1 GB folder
    python benchmarks/loading.py --layers 2 --repeats 2 --sides ours
    python benchmarks/loading.py --tiny            # tests/factories.py's tiny checkpoint, seconds
    python benchmarks/loading.py --device cuda     # 8 blocks, 2 repeats: 11.7 GB file, 13.8 GB folder

Builds, in a temporary folder on local disk (removed afterwards unless `--keep`), an LTX-2.3 single-file checkpoint
at the released widths for every component (benchmarks/convert_memory.py's `full_width_config`: 32 x 128 heads, text
projection 188160 -> 4096 + 2048, the released VAE, audio VAE and vocoder) with only `--layers` transformer blocks,
a released-size spatial upsampler (1024 mid channels) and a ComfyUI-format distilled LoRA (`--lora-rank`); the
weights are random bf16. Our converter (`ltx2_diffusers.convert.convert_checkpoint`) turns them into a diffusers
folder. Then, `--repeats` times, each measurement after `os.sync()` and `posix_fadvise(DONTNEED)` on every file
(eviction checked with `mincore`: the share of the files' pages still resident is reported):

- read: every byte of the folder's `.safetensors` files, 64 MiB `readinto` chunks into one preallocated buffer
  (the floor); the same for the original single file (the reference's source);
- ours: a child process, imports done, times `LTX2AudioToVideoPipeline.from_pretrained(folder,
  torch_dtype=torch.bfloat16)` and then the call (64 x 64, 9 frames: a few tokens; random post-connector contexts
  instead of Gemma, a 0.5 s waveform) until the transformer's first stage-1 forward starts and ends (forward pre-hook
  and forward hook; the hook then stops the call);
- reference: a child process runs ltx-pipelines 1.0's `A2VidPipelineTwoStage` from the single file (Gemma bypassed
  with the same contexts, the audio file read replaced by the same waveform, tests/reference_pipeline.py's
  patches) until ltx-core's `LTXModel` first forward starts and ends. Before its first step it reads the audio
  encoder, the video encoder and the transformer; it rebuilds the transformer from disk again for stage 2 (not
  timed here).

"To the first step" is the END of the first forward: ltx-core keeps safetensors' memory-mapped tensors, so its bytes
are read from disk only when the first forward touches them; ending at the forward's start would not count them.
The forward itself is cheap at this size (a few tokens; weight-bound).

`--device cuda` (defaults: 8 blocks, 2 repeats, sides ours, ours-resident, reference): both children make their
CUDA context before the clock starts and synchronise before reading it. "ours" places the pipeline after
`from_pretrained` as the CLI does by default (`cli_running.apply_memory_tier`: the free GPU memory, at most
`memory.DEFAULT_MEMORY_BUDGET_GIB`, for this call's size; the tier is reported); "ours@GIB" for a budget of GIB;
"ours-resident" calls `pipe.to(device)` instead; ours run eager (`set_transformer_acceleration(compile=False)`: the
CLI's default compiles the blocks at the first call, a cost that is not loading). The reference is built with
`device=cuda` (its ledger reads each model straight onto the GPU). On the CPU, "ours@GIB" and "ours-resident"
run the same placement code (a dry run of the CUDA path; "ours" is not placed there). "ours-resident-noprefetch" is
"ours-resident" with the folder's weights not read ahead (`LTX2_PREFETCH_WEIGHTS=0`, `loaders.prefetch`).
"ours-device-map" loads with diffusers' `from_pretrained(..., device_map=device)`: each component's tensors are copied
to the device as they are read, while the prefetch reads the next components.

Reported: medians over the repeats, ratios to the read floor (each side / folder read, reference / single-file
read). Prints a table and one JSON line (`--json PATH` also writes it); progress goes to stderr. `--time-limit-s`
stops repeating when one more repeat would end past the limit (counted from the start; at least one repeat runs).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from page_cache import CHUNK, evict, files_under, filesystem_type, read_all, resident_fraction  # noqa: E402


HEIGHT, WIDTH, NUM_FRAMES, FRAME_RATE, RATE, CONTEXT_TOKENS = 64, 64, 9, 24.0, 16000, 32
# and "ours@GIB": placed for GIB
SIDES = ("ours", "ours-resident", "ours-resident-noprefetch", "ours-device-map", "reference")
DEFAULTS = {"cpu": (4, 3, "ours,reference"), "cuda": (8, 2, "ours,ours-resident,reference")}  # layers, repeats, sides


def log(message: str) -> None:
    print(f"[loading {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------
def estimate_bytes(layers: int, connector_layers: int) -> int:
    import math

    from convert_memory import file_shapes, full_width_config

    return sum(2 * math.prod(s) for s in file_shapes(full_width_config(layers, connector_layers)).values())


def build_files(workdir: pathlib.Path, args) -> dict[str, pathlib.Path]:
    """The original files (checkpoint, upsampler, distilled LoRA) and our converted folder."""
    import torch
    from factories import build_checkpoint, build_lora, build_upsampler

    from ltx2_diffusers.convert import convert_checkpoint

    checkpoint = workdir / "ltx-2.3-random.safetensors"
    if args.tiny:
        build_checkpoint(checkpoint, "2.3", seed=0, dtype=torch.bfloat16)
        upsampler = build_upsampler(workdir / "upsampler.safetensors", seed=1, dtype=torch.bfloat16)
    else:
        from convert_memory import file_shapes, full_width_config, write_synthetic

        config = full_width_config(args.layers, args.connector_layers)
        write_synthetic(checkpoint, config, file_shapes(config))
        upsampler = build_upsampler(workdir / "upsampler.safetensors", seed=1, dtype=torch.bfloat16, mid_channels=1024)
    lora = build_lora(workdir / "distilled-lora.safetensors", checkpoint, rank=args.lora_rank, seed=2)
    folder = workdir / "converted"
    convert_checkpoint(checkpoint, folder, spatial_upsampler_path=upsampler, distilled_lora=lora)
    return dict(checkpoint=checkpoint, upsampler=upsampler, lora=lora, folder=folder)


# ---------------------------------------------------------------------------------------------------------
# Children: one load each, in its own process (its memory is returned when it exits)
# ---------------------------------------------------------------------------------------------------------
class FirstStep(Exception):
    """Raised by the transformer's forward hook: the first stage-1 forward has run."""


def _clock(device: str) -> float:
    """`perf_counter()` once the device's queued work is done (CUDA kernels and copies run asynchronously)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _ready(device: str) -> None:
    """The CUDA context made before the clock starts (the same for both sides; not loading)."""
    if device == "cuda":
        import torch

        torch.empty(1, device=device)
        torch.cuda.synchronize()


def _marking_hooks(marks: dict, device: str, applies=lambda module: True):
    """A forward pre-hook and a forward hook: the first marks `forward_start`, the second `forward_end` and
    stops the call. Ending at the forward's end (not its start) counts weights that are read lazily (memory-mapped
    files) when the forward first touches them."""

    def pre(module, args):
        if applies(module) and "forward_start" not in marks:
            marks["forward_start"] = _clock(device)

    def post(module, args, output):
        if applies(module):
            marks["forward_end"] = _clock(device)
            raise FirstStep

    return pre, post


def _inputs(video_dim: int, audio_dim: int):
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    positive = (torch.randn(1, CONTEXT_TOKENS, video_dim, generator=g), torch.randn(1, CONTEXT_TOKENS, audio_dim, generator=g))  # fmt: skip
    negative = (torch.randn(1, CONTEXT_TOKENS, video_dim, generator=g), torch.randn(1, CONTEXT_TOKENS, audio_dim, generator=g))  # fmt: skip
    t = np.arange(RATE // 2) / RATE
    waveform = (np.stack([np.sin(2 * np.pi * 300 * t), np.cos(2 * np.pi * 5 * t)]) * 0.3).astype(np.float32)
    return positive, negative, waveform


def _dims(transformer_config: dict) -> tuple[int, int]:
    """Post-connector context widths (video, audio): the transformer's inner widths (same key names in the
    original `transformer` metadata section and in our converted `transformer/config.json`)."""
    c = transformer_config
    return c["num_attention_heads"] * c["attention_head_dim"], c["audio_num_attention_heads"] * c[
        "audio_attention_head_dim"
    ]


def budget_of(side: str) -> float | None:
    """The GiB of an "ours@GIB" side (None for the others)."""
    return float(side[len("ours@") :]) if side.startswith("ours@") else None


def place(pipe, side: str, device: str, budget_gib: float | None) -> str:
    """Placement of side "ours": the CLI's default (`cli_running.apply_memory_tier` with no `--offload`: the free CUDA
    memory, at most `memory.DEFAULT_MEMORY_BUDGET_GIB`, or `budget_gib`, for this call's size); "ours-resident":
    `pipe.to(device)`. Returns the placement in words."""
    import argparse

    import torch

    from ltx2_diffusers.cli_common import _OffloadDefault
    from ltx2_diffusers.cli_running import apply_memory_tier

    if side == "ours-resident":
        pipe.to(device)
        return f"pipe.to({device!r})"
    args = argparse.Namespace(
        memory_budget_gib=budget_gib, offload=_OffloadDefault("none"), context_parallel=None, height=HEIGHT,
        width=WIDTH, num_frames=NUM_FRAMES, frame_rate=FRAME_RATE, stage_2=True, reference_arithmetic=False,
        guidance_batch_size=None,
    )  # fmt: skip
    if not apply_memory_tier(pipe, args, torch.device(device)):
        raise RuntimeError(f"no memory tier applies on {device} without a budget (the CLI places nothing there)")
    return str(pipe._memory_tier)


def _traced_loading(start: float, trace: dict) -> None:
    """`--trace`: each component's load (diffusers' `load_sub_model`) and each prefetched file's read, as
    `[name, start_s, end_s]` from `start`, appended to `trace["components"]` and `trace["reads"]`."""
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    from ltx2_diffusers.loaders import prefetch

    load_sub_model, read_sequentially = pipeline_utils.load_sub_model, prefetch.read_sequentially

    def timed_load(*args, **kwargs):
        began = time.perf_counter() - start
        try:
            return load_sub_model(*args, **kwargs)
        finally:
            trace["components"].append(
                [kwargs.get("name", "?"), round(began, 3), round(time.perf_counter() - start, 3)]
            )

    def timed_read(files, *args, **kwargs):
        total = 0
        for f in files:
            began = time.perf_counter() - start
            total += read_sequentially([f], *args, **kwargs)
            trace["reads"].append([os.path.relpath(f, os.path.dirname(os.path.dirname(f))), round(began, 3),
                                   round(time.perf_counter() - start, 3)])  # fmt: skip
        return total

    pipeline_utils.load_sub_model, prefetch.read_sequentially = timed_load, timed_read
    trace.update(components=[], reads=[])


def _profiled_call(call, trace: dict, top: int = 25) -> None:
    """`--trace`'s extra, untimed child: the call from the loaded pipeline to the first forward's end under
    `torch.profiler` (CPU and CUDA): the `top` operators by CPU time, into `trace["call_ops"]` as
    `[name, cpu_total_ms, count]`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        call()
    ops = sorted(prof.key_averages(), key=lambda e: -e.cpu_time_total)[:top]
    trace["call_ops"] = [[e.key[:90], round(e.cpu_time_total / 1000, 1), e.count] for e in ops]


def child_ours(
    side: str, device: str, folder: str, budget_gib: float | None = None, trace: bool = False, profile: bool = False
) -> dict:
    import torch

    from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance

    if side.endswith("-noprefetch"):  # the folder's weights not read ahead (`loaders.prefetch`)
        from ltx2_diffusers.loaders.prefetch import ENV_SWITCH

        os.environ[ENV_SWITCH] = "0"
        side = side.removesuffix("-noprefetch")
    config = json.loads((pathlib.Path(folder) / "transformer" / "config.json").read_text())
    positive, negative, waveform = _inputs(*_dims(config))
    marks, placement = {}, None

    pre, post = _marking_hooks(marks, device)
    _ready(device)
    start = _clock(device)
    traced: dict = {}
    if trace:
        _traced_loading(start, traced)
    mapped = dict(device_map=device) if side == "ours-device-map" else {}  # each component read onto the device
    pipe = LTX2AudioToVideoPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, **mapped)
    marks["load"] = _clock(device)
    pipe.set_transformer_acceleration(compile=False)  # the CLI compiles at the first call on CUDA: not loading
    if mapped:
        placement = f"from_pretrained(device_map={device!r})"
    elif device != "cpu" or side != "ours" or budget_gib is not None:
        placement = place(pipe, side, device, budget_gib)
        marks["placed"] = _clock(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.register_forward_pre_hook(pre)
    pipe.transformer.register_forward_hook(post)

    def until_first_step():
        try:
            pipe(
                audio=waveform,
                audio_sample_rate=RATE,
                prompt_contexts=positive,
                negative_prompt_contexts=negative,
                height=HEIGHT,
                width=WIDTH,
                num_frames=NUM_FRAMES,
                frame_rate=FRAME_RATE,
                num_inference_steps=2,
                # few blocks: STG on the last
                video_guidance=MultiModalGuidance(stg_blocks=[config["num_layers"] - 1]),
                generator=torch.Generator(device).manual_seed(0),
                output_type="latent",
            )
        except FirstStep:
            pass

    if profile:
        _profiled_call(until_first_step, traced)
    else:
        until_first_step()
    if "forward_end" not in marks:
        raise RuntimeError("the pipeline returned without a transformer forward")
    out = {"seconds": {k: v - start for k, v in marks.items()}, "placement": placement}
    return {**out, "trace": traced} if trace else out


def child_reference(side: str, device: str, checkpoint: str, upsampler: str, lora: str) -> dict:
    import contextlib
    import dataclasses
    from unittest import mock

    import ltx_pipelines.a2vid_two_stage as a2vid
    import torch
    from factories import read_config
    from ltx_core.loader import LoraPathStrengthAndSDOps
    from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_core.model.transformer.model import LTXModel
    from ltx_core.types import Audio
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS
    from reference_pipeline import fake_encode_prompts

    section = read_config(checkpoint)["transformer"]
    positive, negative, waveform = _inputs(*_dims(section))
    guider = dataclasses.replace(LTX_2_3_PARAMS.video_guider_params, stg_blocks=[section["num_layers"] - 1])
    marks = {}

    pre, post = _marking_hooks(marks, device, lambda module: isinstance(module, LTXModel))

    def decode_audio(path, device, start_time=0.0, max_duration=None):
        samples = torch.from_numpy(waveform)
        if max_duration is not None:
            samples = samples[:, : round(max_duration * RATE)]
        return Audio(waveform=samples[None].to(device), sampling_rate=RATE)

    run_device = torch.device(device)
    with contextlib.ExitStack() as stack:
        encode = fake_encode_prompts((positive, negative), device=run_device, dtype=torch.bfloat16)
        stack.enter_context(mock.patch.object(a2vid, "encode_prompts", encode))
        stack.enter_context(mock.patch.object(a2vid, "decode_audio_from_file", decode_audio))
        if run_device.type == "cpu":  # its stages call torch.cuda.synchronize() between models
            stack.enter_context(mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None))
        stack.enter_context(torch.inference_mode())  # as its CLI's main()
        for hook in (
            torch.nn.modules.module.register_module_forward_pre_hook(pre),
            torch.nn.modules.module.register_module_forward_hook(post),
        ):
            stack.callback(hook.remove)
        _ready(device)
        start = _clock(device)
        pipe = a2vid.A2VidPipelineTwoStage(
            checkpoint_path=checkpoint,
            distilled_lora=[LoraPathStrengthAndSDOps(lora, 0.8, LTXV_LORA_COMFY_RENAMING_MAP)],
            spatial_upsampler_path=upsampler,
            gemma_root=None,
            loras=[],
            device=run_device,
        )
        try:
            pipe(
                prompt="unused",
                negative_prompt="unused",
                seed=0,
                height=HEIGHT,
                width=WIDTH,
                num_frames=NUM_FRAMES,
                frame_rate=FRAME_RATE,
                num_inference_steps=2,
                video_guider_params=guider,
                images=[],
                audio_path="unused.wav",
                audio_max_duration=NUM_FRAMES / FRAME_RATE,
            )
        except FirstStep:
            pass
    if "forward_end" not in marks:
        raise RuntimeError("the reference returned without a transformer forward")
    return {"seconds": {k: v - start for k, v in marks.items()}, "placement": None}


def run_child(spec: dict) -> dict:
    """`child_ours(**spec)` or `child_reference(**spec)` in a fresh interpreter; its last stdout line."""
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"child {spec['side']} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------
def measure(files: dict[str, pathlib.Path], sides: list[str], repeats: int, device: str = "cpu",
            deadline: float | None = None, trace: bool = False) -> dict:  # fmt: skip
    folder_weights = sorted(files["folder"].rglob("*.safetensors"))
    every_file = files_under(files["folder"], files["checkpoint"], files["upsampler"], files["lora"])
    buffer = bytearray(CHUNK)
    buffer[:] = bytes(CHUNK)  # touched: no page faults inside the timed reads
    runs: dict[str, list[float]] = {"read_folder": [], "read_folder_warm": [], "read_single_file": []}
    residency: list[float] = []
    reference_files = [files["checkpoint"], files["upsampler"], files["lora"]]
    sources = {side: reference_files if side == "reference" else folder_weights for side in sides}
    specs = {
        side: dict(side=side, device=device, checkpoint=str(files["checkpoint"]), upsampler=str(files["upsampler"]),
                   lora=str(files["lora"])) if side == "reference"
        else dict(side=side.partition("@")[0], device=device, folder=str(files["folder"]), budget_gib=budget_of(side),
                  trace=trace)
        for side in sides
    }  # fmt: skip
    read_share: dict[str, list[float]] = {side: [] for side in sides}
    traces: dict[str, list[dict]] = {}
    placements: dict[str, str] = {}
    folder_bytes = single_bytes = 0
    longest = 0.0
    for repeat in range(repeats):
        began = time.perf_counter()
        if repeat and deadline is not None and began + longest > deadline:
            log(f"--time-limit-s: stopping after {repeat} repeats (one more takes about {longest:.0f} s)")
            break
        evict(every_file)
        residency.append(resident_fraction(every_file))
        folder_bytes, seconds = read_all(folder_weights, buffer)
        runs["read_folder"].append(seconds)
        runs["read_folder_warm"].append(read_all(folder_weights, buffer)[1])
        evict(every_file)
        residency.append(resident_fraction(every_file))
        single_bytes, seconds = read_all([files["checkpoint"]], buffer)
        runs["read_single_file"].append(seconds)
        log(f"repeat {repeat + 1}: read folder {runs['read_folder'][-1]:.2f} s, single file {seconds:.2f} s")
        for side in sides:
            evict(every_file)
            residency.append(resident_fraction(every_file))
            out = run_child(specs[side])
            for mark, seconds in out["seconds"].items():
                runs.setdefault(f"{side}_{mark}", []).append(seconds)
            if out["placement"] is not None:
                placements[side] = out["placement"]
            # pages of the side's files in the page cache once its first forward has ended (it exits there):
            # the share of its bytes it read from disk (with read-ahead) before the first step
            read_share[side].append(resident_fraction(sources[side]))
            log(f"repeat {repeat + 1}: {side} {json.dumps({k: round(v, 2) for k, v in out['seconds'].items()})}")
            if "trace" in out:
                traces.setdefault(side, []).append(out["trace"])
                for key, rows in out["trace"].items():
                    log(f"  trace {key}:\n" + "\n".join(f"    {row}" for row in rows))
        longest = max(longest, time.perf_counter() - began)
    for side in sides if trace and (deadline is None or time.perf_counter() + longest / 2 < deadline) else ():
        if side != "reference":  # one more child, untimed: where the call's time goes until the first step
            evict(every_file)
            out = run_child({**specs[side], "profile": True})
            log(f"  profiled call of {side} (not timed):\n" + "\n".join(f"    {r}" for r in out["trace"]["call_ops"]))
            traces.setdefault(f"{side}_profiled", []).append(out["trace"])
    medians = {k: statistics.median(v) for k, v in runs.items() if v}
    return {
        "folder_bytes": folder_bytes,
        "single_file_bytes": single_bytes,
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items() if v},
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "max_resident_after_eviction": round(max(residency), 4),
        "source_bytes": {side: sum(p.stat().st_size for p in sources[side]) for side in sides},
        "read_share_at_first_step": {side: round(statistics.median(v), 3) for side, v in read_share.items()},
        "cold_gb_per_s": round(folder_bytes / 1e9 / medians["read_folder"], 3),
        "warm_gb_per_s": round(folder_bytes / 1e9 / medians["read_folder_warm"], 3),
        "placements": placements,
        "repeats_done": len(runs["read_folder"]),
        **({"traces": traces} if traces else {}),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=tuple(DEFAULTS), default="cpu", help="where both sides load and run")
    parser.add_argument("--layers", type=int, help="full-width transformer blocks (release: 48; default 4, cuda 8)")
    parser.add_argument("--connector-layers", type=int, default=1, help="text-connector blocks (release: 8)")
    parser.add_argument("--lora-rank", type=int, default=None, help="distilled LoRA rank (default 384; tiny 4)")
    parser.add_argument("--repeats", type=int, help="default 3, cuda 2")
    parser.add_argument(
        "--sides", help=f"comma-separated from {SIDES}, ours@GIB (default {DEFAULTS['cpu'][2]}; cuda: all)"
    )
    parser.add_argument("--time-limit-s", type=float, help="no repeat after the first that would end past this")
    parser.add_argument("--tiny", action="store_true", help="tests/factories.py's tiny checkpoint")
    parser.add_argument("--workdir", help="parent of the temporary folder (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--json", help="also write the JSON line here")
    parser.add_argument("--trace", action="store_true", help="our sides also log each component's load and each "
                        "prefetched file's read; after the repeats, one untimed child per side logs the call's "
                        "operators by CPU time (torch.profiler) to the first step")  # fmt: skip
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    layers, repeats, default_sides = DEFAULTS[args.device]
    args.layers = layers if args.layers is None else args.layers
    args.repeats = repeats if args.repeats is None else args.repeats
    sides = [s for s in (args.sides or default_sides).split(",") if s]
    if not sides or not all(s in SIDES or re.fullmatch(r"ours@\d+(\.\d+)?", s) and budget_of(s) > 0 for s in sides):
        parser.error(f"--sides: comma-separated from {SIDES} or ours@GIB (GIB > 0), got {args.sides!r}")
    if args.repeats < 1 or args.layers < 1 or args.connector_layers < 1:
        parser.error("--repeats, --layers and --connector-layers must be at least 1")
    if args.lora_rank is None:
        args.lora_rank = 4 if args.tiny else 384
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    parent = pathlib.Path(args.workdir or tempfile.gettempdir())
    if filesystem_type(parent) in ("tmpfs", "ramfs"):
        raise SystemExit(f"{parent} is in memory ({filesystem_type(parent)}): no eviction there; --workdir on a disk")
    if not args.tiny:
        estimate = estimate_bytes(args.layers, args.connector_layers)
        need = int(2.4 * estimate)  # the originals + the converted folder, the upsampler and LoRA, a margin
        free = shutil.disk_usage(parent).free
        if free < need:
            raise SystemExit(
                f"not enough free disk in {parent}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed for "
                f"{args.layers} full-width blocks; use --layers 1 or --workdir elsewhere"
            )
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ltx2_loading_bench_", dir=parent))
    try:
        start = time.perf_counter()
        log(f"building the files in {workdir}")
        files = build_files(workdir, args)
        build_s = time.perf_counter() - start
        log(f"built in {build_s:.0f} s; measuring {sides} on {args.device}, {args.repeats} repeats")
        deadline = None if args.time_limit_s is None else begin + args.time_limit_s
        result = measure(files, sides, args.repeats, args.device, deadline, args.trace)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    cuda = args.device == "cuda"
    med = result["median_s"]
    result.update(
        benchmark="loading",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        torch=torch.__version__,
        size="tiny" if args.tiny else f"full width, {args.layers} blocks, {args.connector_layers} connector blocks",
        layers=None if args.tiny else args.layers,
        connector_layers=None if args.tiny else args.connector_layers,
        lora_rank=args.lora_rank,
        repeats=result.pop("repeats_done"),
        repeats_asked=args.repeats,
        build_s=round(build_s, 1),
        cpu_count=os.cpu_count(),
        device=args.device,
        device_name=torch.cuda.get_device_name() if cuda else "cpu",
        eviction_ok=result["max_resident_after_eviction"] < 0.01 and result["cold_gb_per_s"] < 0.8 * result["warm_gb_per_s"],
    )  # fmt: skip
    runs = result["runs_s"]
    for side in sides:  # each repeat's load over the same repeat's read, just before it (the disk's speed drifts)
        paired = [end / read for end, read in zip(runs[f"{side}_forward_end"], runs["read_folder"])]
        result[f"{side}_ratio_to_read_paired"] = round(statistics.median(paired), 3)
        result[f"{side}_ratio_to_read"] = round(med[f"{side}_forward_end"] / med["read_folder"], 3)
    if "reference" in sides:
        result["reference_ratio_to_single_file_read"] = round(
            med["reference_forward_end"] / med["read_single_file"], 3
        )

    gb = 1e9
    rows = [
        ("size", result["size"]),
        ("folder weights", f"{result['folder_bytes'] / gb:.2f} GB (.safetensors of the converted folder)"),
        ("single file", f"{result['single_file_bytes'] / gb:.2f} GB (the reference's checkpoint)"),
        ("read folder, cold", f"{med['read_folder']:.2f} s ({result['cold_gb_per_s']:.2f} GB/s)"),
        ("read folder, warm", f"{med['read_folder_warm']:.2f} s ({result['warm_gb_per_s']:.2f} GB/s, page cache)"),
        ("read single file, cold", f"{med['read_single_file']:.2f} s"),
    ]
    for side in sides:
        if side != "reference":
            rows.append((f"{side}: from_pretrained", f"{med[f'{side}_load']:.2f} s"))
        if f"{side}_placed" in med:
            rows.append((f"{side}: placed", f"{med[f'{side}_placed']:.2f} s ({result['placements'][side]})"))
        rows.append((f"{side}: first forward starts", f"{med[f'{side}_forward_start']:.2f} s"))
        ends = f"{med[f'{side}_forward_end']:.2f} s = {result[f'{side}_ratio_to_read']:.2f} x folder read"
        if side == "reference":
            ends += f", {result['reference_ratio_to_single_file_read']:.2f} x single-file read"
        rows.append((f"{side}: first forward ends", ends))
    shares = (f"{s} {100 * result['read_share_at_first_step'][s]:.0f}% of {result['source_bytes'][s] / gb:.2f} GB"
              for s in sides)  # fmt: skip
    mapped = "" if cuda else ": weights are memory-mapped, read when touched"
    rows.append(
        ("read before the first step", f"{', '.join(shares)} (pages cached when the first forward ended{mapped})")
    )
    paired = ", ".join(f"{side} {result[f'{side}_ratio_to_read_paired']:.2f} x" for side in sides)
    rows.append(("paired ratios", f"{paired} (median over repeats of load / folder read of the same repeat)"))
    evicted = "ok" if result["eviction_ok"] else "PROBABLY FAILED (cold read as fast as warm, or pages resident)"
    resident = 100 * result["max_resident_after_eviction"]
    rows.append(("eviction", f"max {resident:.2f}% of pages resident after DONTNEED; {evicted}"))
    on = f", on {result['device_name']}" if cuda else ""
    rows.append(("medians of", f"{result['repeats']} runs each, {os.cpu_count()} CPU cores, bf16{on}"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    line = json.dumps(result)
    print(line)
    if args.json:
        pathlib.Path(args.json).write_text(line + "\n")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps((child_reference if spec["side"] == "reference" else child_ours)(**spec)))
        sys.exit(0)
    main()
    sys.exit(0)
