"""Audio-to-video end to end: ours vs ltx-pipelines' A2VidPipelineTwoStage on the same random weights, one process.

    python benchmarks/a2v_end_to_end.py                       # H200: full-size LTX-2.3, 121 x 1024 x 1536, 30 + 3
    python benchmarks/a2v_end_to_end.py --tiny                # CPU, tiny checkpoint, under a minute
    python benchmarks/a2v_end_to_end.py --sides reference,ours,ours-eager,ours-tiled,ours-budget@24

Both sides read one *virtual* checkpoint: the original single-file key names and shapes come from ltx-core's own
models built on the meta device (tests/factories.py, benchmarks/convert_memory.py); every tensor is drawn when a
loader asks for it, seeded by its key, on the GPU for the large ones (no file is written). The two sides therefore
hold identical weights and each side's memory is its own. `safetensors.safe_open` is answered for the virtual paths
only (test-side patching, as tests/reference_pipeline.py patches the reference). The distilled LoRA (rank 384 by
default) is a virtual ComfyUI-format file too: ltx-core fuses it when it builds the stage-2 transformer, ours loads it
through `load_lora_weights`. Gemma is bypassed with random post-connector contexts on both sides; the reference's audio
file read is replaced by the same samples ours receives as an array.

Each side runs once to warm up (fewer stage-1 steps) and once timed. Reported per side: wall time end to end, wall
time of each phase (prepare = audio encode + model builds before the first step, stage 1, upsample = everything
between the stages, stage 2, decode), CUDA-event time per stage-1 step and per transformer forward (median), and
peak allocated memory per phase. Prints a table and one JSON line (`--json PATH` also writes it).

The virtual checkpoint and `serve` live in benchmarks/a2v_virtual.py, the two sides and the probes in
benchmarks/a2v_sides.py; this file is the driver (one process per side, the table, the JSON line).
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import factories  # noqa: E402
from a2v_sides import LATENT, OUR_OPTIONS, Probe, build_ours, run_ours, run_reference, side_options  # noqa: E402
from a2v_virtual import CHECKPOINT, GEMMA_HIDDEN, GEMMA_STATES, full_size_config, virtual_files  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(name, run, device, stage_1_tokens, steps, warmup_steps):
    """Warm-up call, then a timed call with probes; returns the row."""
    t0 = time.perf_counter()
    run(None, warmup_steps)
    _sync(device)
    warm = time.perf_counter() - t0
    _free(device)
    probe = Probe(device, stage_1_tokens)
    base = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    t0 = time.perf_counter()
    frames = run(probe, steps)
    _sync(device)
    total = time.perf_counter() - t0
    row = {"side": name, "total_s": total, "warmup_s": warm, "resident_before_gib": base, **probe.report(steps)}
    row["peak_total_gib"] = max(row["peak_gib"].values(), default=float("nan"))
    return row, frames


def run_side(
    side, files, inputs, dtype, device, stage_1_tokens, steps, warmup_steps, frames_out, attention_backend, cap=None
):
    try:
        if side == "reference":

            def run(probe, n):
                return run_reference(files, inputs, probe, n, dtype)

            pipe = None
        else:
            t_build = time.perf_counter()
            options = side_options(side)
            shape = {k: inputs[k] for k in ("height", "width", "num_frames")}
            if "exact" in options:  # a budget's decode estimate: the calls will not walk the decoder channels-last
                shape["reference_arithmetic"] = True
            pipe = build_ours(files, dtype, device, options, attention_backend, cap, shape)
            _sync(device)
            build_s = time.perf_counter() - t_build
            extra = {"reference_arithmetic": True} if "exact" in options else {}

            def run(probe, n):
                return run_ours(pipe, inputs, probe, n, extra)

        row, frames = measure(side, run, device, stage_1_tokens, steps, warmup_steps)
        if pipe is not None:
            row["build_s"] = build_s
            for key in ("fp8_forward_rel_err", "fp8_forward_max_abs", "memory_tier"):
                if hasattr(pipe, key):
                    row[key] = getattr(pipe, key)
        if frames_out:
            torch.save({"frames": _frames(frames).half(), "latent": LATENT.get("video")}, frames_out)
    except torch.OutOfMemoryError as e:  # a side that does not fit under the cap is a result, not a crash
        where = [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(e.__traceback__)]
        row = {
            "side": side,
            "error": f"out of memory: {str(e).splitlines()[0][:120]} at {' < '.join(where[::-1][:6])}",
        }
    except ValueError as e:  # e.g. fp8 matmuls refused on this device
        row = {"side": side, "error": f"refused: {e}"}
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint on the CPU (smoke test)")
    parser.add_argument("--sides", default="ours,reference", help="comma list of: reference, ours, ours-OPTION[-OPTION]"
                        f" with OPTION in {', '.join(OUR_OPTIONS)} (see build_ours); NAME@GIB runs that side under a "
                        "GIB memory cap (and `budget` budgets that)")  # fmt: skip
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="stage-1 steps (default 30; tiny 2)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="stage-1 steps of the warm-up call (2)")
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--memory-cap-gib", type=float, default=None, help="torch.cuda per-process memory cap (all "
                        "sides; a side written NAME@GIB gets its own cap)")  # fmt: skip
    parser.add_argument("--device", default=None)
    parser.add_argument("--attention-backend", default=None, help="diffusers attention backend for our sides "
                        "(e.g. _native_cudnn, flash_hub); default: native SDPA")  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the JSON line to this path")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)  # child process: run this side only
    parser.add_argument("--frames-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("steps", "warmup_steps"):  # the pipeline takes at least 2 stage-1 steps; refuse before any build
        if getattr(args, flag) is not None and getattr(args, flag) < 2:
            parser.error(f"--{flag.replace('_', '-')} must be at least 2 (the pipeline's num_inference_steps >= 2)")

    tiny = args.tiny
    device = torch.device(args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    dtype = torch.bfloat16  # the reference computes in bfloat16 only
    num_frames = args.num_frames or (9 if tiny else 121)
    height = args.height or (128 if tiny else 1024)
    width = args.width or (128 if tiny else 1536)
    steps = args.steps or (2 if tiny else 30)
    warmup_steps = args.warmup_steps or 2
    rank = args.lora_rank or (4 if tiny else 384)
    frame_rate = 24.0
    cap = args.memory_cap_gib
    if args.side is not None and "@" in args.side:  # "ours-offload@24": this side under a 24 GiB cap
        args.side, cap = args.side.split("@")[0], float(args.side.split("@")[1])
    if cap and device.type == "cuda" and args.side is not None:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), torch.cuda.current_device())

    t0 = time.perf_counter()
    if tiny:
        config = factories.checkpoint_config("2.3")
        up_config = factories.upsampler_config()
        gemma = (config["transformer"]["caption_channels"], factories.TEXT_NUM_HIDDEN_STATES)
    else:
        config, up_config = full_size_config()
        gemma = (GEMMA_HIDDEN, GEMMA_STATES)

    section = config["transformer"]
    g = torch.Generator().manual_seed(7)
    video_dim = section["num_attention_heads"] * section["attention_head_dim"]
    audio_dim = section["audio_num_attention_heads"] * section["audio_attention_head_dim"]
    text_tokens = 32 if tiny else 1024

    def context():
        return (
            torch.randn(1, text_tokens, video_dim, generator=g).to(dtype),
            torch.randn(1, text_tokens, audio_dim, generator=g).to(dtype),
        )

    rate = 48000
    t = np.arange(int(rate * (num_frames / frame_rate + 0.5))) / rate
    waveform = (np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 3 * t)]) * 0.4).astype(np.float32)
    inputs = dict(
        waveform=waveform, rate=rate, positive=context(), negative=context(), height=height, width=width,
        num_frames=num_frames, frame_rate=frame_rate, seed=10, device=device, stg_block=1 if tiny else 28,
    )  # fmt: skip
    latent_frames = (num_frames - 1) // 8 + 1
    stage_1_tokens = latent_frames * (height // 64) * (width // 64)

    if args.side is not None:  # child: one side, its row as the last stdout line, its frames to a file
        files = virtual_files(config, up_config, rank, dtype, device, gemma_dims=gemma)
        recipe_s = time.perf_counter() - t0
        row = run_side(
            args.side, files, inputs, dtype, device, stage_1_tokens, steps, warmup_steps, args.frames_out,
            args.attention_backend, cap,
        )  # fmt: skip
        row.update(recipe_s=recipe_s, weights_gib=files[CHECKPOINT].nbytes() / 2**30, memory_cap_gib=cap)
        if cap:
            row["side"] = f"{args.side}@{cap:g}GiB"
        print("ROW " + json.dumps(row))
        return row

    # Parent: each side in its own process (clean memory and compile caches), one after the other, same machine.
    rows, frame_files = [], {}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="a2v_e2e_"))
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        frame_files[side] = workdir / f"{side.replace('@', '_')}.pt"
        cmd = [sys.executable, __file__, "--side", side, "--frames-out", str(frame_files[side])]
        cmd += [a for a in (argv if argv is not None else sys.argv[1:])]
        child = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("ROW ")]
        if child.returncode != 0 or not lines:
            tail = (child.stderr or child.stdout).strip().splitlines()[-3:]
            row = {"side": side, "error": f"exit {child.returncode}: " + " | ".join(tail)}
        else:
            row = json.loads(lines[-1][4:])
        print(f"[{side}] " + (row.get("error") or f"{row['total_s']:.2f} s"), file=sys.stderr, flush=True)
        print("SIDE " + json.dumps(row), flush=True)  # each side's full row as soon as it ends
        rows.append(row)
        frame_files[row["side"]] = frame_files.pop(side)

    # Output differences (frames in [0, 1]) against the first side that ran: the same random weights and seed.
    names = [r["side"] for r in rows if "error" not in r and frame_files[r["side"]].exists()]
    if names:
        base = torch.load(frame_files[names[0]])
        for row in rows:
            if row["side"] in names:
                other = torch.load(frame_files[row["side"]])
                delta = other["frames"].float() - base["frames"].float()
                row["max_abs_diff_vs_" + names[0]] = delta.abs().max().item()
                row["mean_abs_diff_vs_" + names[0]] = delta.abs().mean().item()
                if other["latent"] is not None and base["latent"] is not None:  # the denoiser, without the decode
                    d = other["latent"] - base["latent"]
                    row["latent_max_abs_diff_vs_" + names[0]] = d.abs().max().item()
                    row["latent_rel_l2_vs_" + names[0]] = (d.norm() / base["latent"].norm()).item()
    shutil.rmtree(workdir, ignore_errors=True)
    _print_table(rows)
    result = {
        "benchmark": "a2v_end_to_end",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "size": {
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "stage_1_steps": steps,
            "stage_2_steps": 3,
        },
        "lora_rank": rank,
        "memory_cap_gib": args.memory_cap_gib,
        "attention_backend": args.attention_backend,
        "rows": rows,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        pathlib.Path(args.json).write_text(line + "\n")
    return result


def _frames(frames) -> torch.Tensor:
    """(F, H, W, 3) float in [0, 1] on the CPU from either side's output."""
    x = frames.float().cpu()
    if x.dim() == 5 and x.shape[2] == 3:  # ours, output_type="pt": (B, F, 3, H, W)
        return x[0].permute(0, 2, 3, 1)
    if x.dim() == 4 and x.shape[-1] == 3:  # reference chunks: (F, H, W, 3), uint8 or float
        return x / 255.0 if frames.dtype == torch.uint8 else x
    raise ValueError(f"unexpected frame layout {tuple(x.shape)}")


def _print_table(rows) -> None:
    cols = ("total_s", "stage_1_step_s")
    phases = Probe.PHASES[:-1]
    head = f"{'side':22s} {'total s':>8s} {'s/step1':>8s} " + " ".join(f"{p[:9]:>9s}" for p in phases)
    print(head + f" {'fwd1 ms':>8s} {'fwd2 ms':>8s} {'peak GiB':>9s} {'max|d|':>9s}")
    for row in rows:
        if "error" in row:
            print(f"{row['side']:22s} {row['error']}")
            continue
        diff = next((v for k, v in row.items() if k.startswith("max_abs_diff")), float("nan"))
        print(
            f"{row['side']:22s} " + " ".join(f"{row[c]:8.2f}" for c in cols) + " "
            + " ".join(f"{row['phase_s'].get(p, float('nan')):9.2f}" for p in phases)
            + f" {row['forward_ms'].get('stage_1', float('nan')):8.0f} {row['forward_ms'].get('stage_2', float('nan')):8.0f}"
            + f" {row['peak_total_gib']:9.2f} {diff:9.2e}"
        )  # fmt: skip


if __name__ == "__main__":
    main()
