"""Every memory tier on a real device: the tiny LTX-2.3 audio-to-video pipeline with a tiny Gemma 3 text encoder,
placed by each `memory.TIERS` entry (`enable_memory_tier`; the stream tiers with blocks actually streamed, with and
without `text_offload="layers"`), called twice, against the same pipeline resident on the device. On CUDA this runs
what the CPU tests cannot: pinned host copies, the side-stream block copies and diffusers' group offload with a
CUDA stream. Prints a table (max |Δ| of the frames, peak memory) and one JSON line.

    python benchmarks/tier_parity.py [--device cuda] [--tiers resident,stream,model,group-block,group-leaf]

Float32, regional compile off and cuDNN's TF32 off, so that the placement is the only difference: every row is
expected bit-exact (max |Δ| 0).
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import scipy.io.wavfile
import torch


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from factories import cached_checkpoint  # noqa: E402

from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance  # noqa: E402
from ltx2_diffusers.pipelines import memory  # noqa: E402
from ltx2_diffusers.pipelines.pipeline_ltx2_audio_to_video import load_gemma  # noqa: E402
from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3, tiny_gemma3_dims  # noqa: E402


def placements() -> list[memory.MemoryTier]:
    """The tier table, the stream tiers with one block of two resident (as the table leaves them, all would be)."""
    return [replace(t, resident_blocks=1) if t.offload == "stream" else t for t in memory.TIERS]


def main(argv=None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiers", default="", help="comma-separated tier names (default: all)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=9)
    args = parser.parse_args(argv)
    names = {n for n in args.tiers.split(",") if n}
    unknown = names - {t.name for t in memory.TIERS}
    if unknown:
        parser.error(f"unknown tiers {sorted(unknown)}; choose from {sorted({t.name for t in memory.TIERS})}")
    tf32 = torch.backends.cudnn.allow_tf32
    with tempfile.TemporaryDirectory() as root:
        try:
            torch.backends.cudnn.allow_tf32 = False
            return _run(args, pathlib.Path(root))
        finally:
            torch.backends.cudnn.allow_tf32 = tf32  # the process's setting again (the test runs this in pytest)


def _run(args, root: pathlib.Path) -> dict:
    names = {n for n in args.tiers.split(",") if n}
    checkpoint = cached_checkpoint("checkpoint", "2.3", seed=4)
    upsampler = cached_checkpoint("upsampler", seed=5)
    lora = cached_checkpoint("lora", checkpoint_path=checkpoint, seed=6, dtype=torch.float32)
    audio = root / "a.wav"  # a 200 Hz tone (scipy: the GPU image has no soundfile)
    scipy.io.wavfile.write(audio, 16000, (0.4 * np.sin(2 * np.pi * 200 * np.arange(9600) / 16000)).astype(np.float32))
    gemma_dir = None

    def load():
        nonlocal gemma_dir
        pipe = LTX2AudioToVideoPipeline.from_single_file(
            checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.6), torch_dtype=torch.float32
        )
        if gemma_dir is None:
            gemma_dir = build_tiny_gemma3(root / "gemma", **tiny_gemma3_dims(pipe.connectors.config))
        pipe.text_encoder, pipe.tokenizer = load_gemma(gemma_dir, torch.float32)
        pipe.set_transformer_acceleration(compile=False)
        return pipe

    def call(pipe):
        return pipe(
            audio=str(audio), prompt="a man sings", negative_prompt="blurry", max_sequence_length=128,
            height=args.size, width=args.size, num_frames=args.frames, num_inference_steps=2,
            video_guidance=MultiModalGuidance(stg_blocks=[1]), generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).frames.float().cpu()  # fmt: skip

    device = torch.device(args.device)
    resident = load().to(device)
    expected = call(resident)
    del resident
    rows = []
    for tier in placements():
        if names and tier.name not in names:
            continue
        pipe = load()
        pipe.enable_memory_tier(tier, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        diffs = [(call(pipe) - expected).abs().max().item() for _ in range(2)]  # the second on re-applied hooks
        rows.append(
            dict(
                tier=str(tier), max_abs_diff=max(diffs), seconds=round(time.perf_counter() - start, 2),
                peak_mib=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
            )
        )  # fmt: skip
        del pipe
    print(f"{'tier':<110} {'max |d|':>9} {'s':>6} {'peak MiB':>9}")
    for row in rows:
        print(f"{row['tier']:<110} {row['max_abs_diff']:>9.3g} {row['seconds']:>6} {row['peak_mib']!s:>9}")
    result = dict(device=str(device), torch=torch.__version__, frames_std=expected.std().item(), rows=rows)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
