"""Where the GPU time of one transformer forward and of one video decode goes: kernels by category.

Random full-width LTX-2.3 blocks (`--layers`, default 8), bf16 and (with `--fp8`) fp8 scaled matmuls, compiled
regionally as the pipeline does on CUDA. Stage 1: one batched forward of the four guidance passes at 6,144 video
tokens (STG sharing the conditional prefix); stage 2: one batch-1 forward at 24,576 tokens with a random rank-384
distilled LoRA. Each forward runs under `torch.profiler`; kernels are summed by category (matmul, attention,
fused elementwise, copies, other) and the largest are listed. With `--decode`, the full-size video VAE decodes a
121 x 1024 x 1536 latent through `vae.decode` and through the channels-last walk of `models.video_vae_decode`
(`--decode-layouts`; time, peak, max |Δ| against the first).
Prints tables and one JSON line.

    python benchmarks/profile_forward.py --layers 8 --fp8 --decode
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

import torch


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from attention_backends import event_median, stage_1, stage_2  # noqa: E402
from block_streaming import random_lora  # noqa: E402
from transformer_step import build_models, make_inputs  # noqa: E402


CATEGORIES = (  # first match wins; lower-case substrings of the kernel name
    ("attention", ("fmha", "flash", "attention", "cudnn", "sdpa")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "scaled_mm", "f8f8", "sm90")),
    ("copy", ("memcpy", "memset", "copy_")),
    ("fused elementwise", ("triton",)),
)


def category(name: str) -> str:
    low = name.lower()
    for label, needles in CATEGORIES:
        if any(n in low for n in needles):
            return label
    return "other"


def profile(fn, top: int) -> dict:
    """GPU kernel time of one call of `fn` (after a warm-up call), by category and the `top` largest kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels: dict[str, float] = collections.Counter()
    spans = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += event.device_time_total / 1000  # ms
            spans.append((event.time_range.start, event.time_range.end, event.name))
    by_category: dict[str, float] = collections.Counter()
    for name, ms in kernels.items():
        by_category[category(name)] += ms
    largest = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
    return {"total_ms": sum(kernels.values()), "by_category": dict(by_category),
            "largest": [(name[:110], ms) for name, ms in largest], "timeline": timeline(spans)}  # fmt: skip


def timeline(spans: list[tuple[float, float, str]], min_gap_us: float = 5.0, top: int = 5) -> dict:
    """Where the GPU waits inside one profiled call: the kernels' `(start_us, end_us, name)` merged into busy
    intervals; the span from the first kernel's start to the last one's end; the idle time inside it, counted in
    gaps longer than `min_gap_us`, summed by the kernel that ran before each gap (the `top` largest)."""
    if not spans:
        return {"span_ms": 0.0, "busy_ms": 0.0, "idle_ms": 0.0, "gaps": 0, "idle_after": []}
    ordered = sorted(spans)
    busy, gaps, after = 0.0, 0, collections.Counter()
    start, end, last = ordered[0][0], ordered[0][1], ordered[0][2]
    for s, e, name in ordered[1:]:
        if s > end:
            busy += end - start
            if s - end > min_gap_us:
                gaps += 1
                after[last[:80]] += (s - end) / 1000
            start, end = s, e
        elif e > end:
            end = e
        if e >= end:
            last = name
    busy += end - start
    span = max(e for _, e, _ in ordered) - ordered[0][0]
    return {"span_ms": span / 1000, "busy_ms": busy / 1000, "idle_ms": (span - busy) / 1000, "gaps": gaps,
            "idle_after": [(name, ms) for name, ms in after.most_common(top)]}  # fmt: skip


def print_profile(label: str, row: dict) -> None:
    total = row["total_ms"]
    print(f"\n{label}: wall {row['wall_ms']:.1f} ms, kernels {total:.1f} ms")
    for name, ms in sorted(row["by_category"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<18s} {ms:9.2f} ms {100 * ms / total:5.1f} %")
    for name, ms in row["largest"]:
        print(f"    {ms:8.2f} ms  {name}")
    t = row.get("timeline")
    if t:
        print(f"  GPU busy {t['busy_ms']:.1f} of {t['span_ms']:.1f} ms between the first and last kernel; idle "
              f"{t['idle_ms']:.1f} ms ({t['gaps']} gaps > 5 us), largest by the kernel before the gap:")  # fmt: skip
        for name, ms in t["idle_after"]:
            print(f"    {ms:8.2f} ms idle after  {name}")


MODES, TIMESTEPS = ("compiled", "eager"), ("token", "item")


def _listed(value: str, flag: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma list of `allowed` names (ValueError naming `flag` otherwise)."""
    names = value.split(",")
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"{flag}: unknown {unknown}; expected a comma list of {', '.join(allowed)}")
    return names


def transformer_rows(args) -> dict:
    from ltx2_diffusers.loaders.fp8 import enable_fp8_scaled_mm
    from ltx2_diffusers.pipelines.memory import place_distilled_lora

    device, dtype = torch.device("cuda"), torch.bfloat16
    stg_block = args.layers // 2
    reference, model, theirs = build_models(args.layers, device, dtype, seed=0)
    del reference, theirs
    torch.cuda.empty_cache()
    model.eval()
    lora = random_lora(model, 384, device)
    place_distilled_lora(lora, "device", device)
    shapes = {
        "stage_1": make_inputs(6144, 126, 1024, device, dtype, seed=1),
        "stage_2": make_inputs(24576, 126, 1024, device, dtype, seed=2),
    }

    def forward(shape, per_item):
        if shape == "stage_1":
            return stage_1(model, shapes[shape], stg_block, per_item)
        with lora.applied(model, 1.0):
            return stage_2(model, shapes[shape], per_item)

    rows = {}
    modes, timestep_modes = _listed(args.modes, "--modes", MODES), _listed(args.timesteps, "--timesteps", TIMESTEPS)
    # bf16 before fp8 (`enable_fp8_scaled_mm` converts the weights in place); eager rows run the compiled blocks
    # eager (`force_eager`) once they are compiled
    for dtype_mode in ("bf16", "fp8") if args.fp8 else ("bf16",):
        if dtype_mode == "fp8":
            enable_fp8_scaled_mm(model, granularity="row")
        for mode in modes:
            if mode == "compiled" and not any(b._compiled_call_impl for b in model.transformer_blocks):
                model.compile_repeated_blocks(fullgraph=True)
            stance = "force_eager" if mode == "eager" else "default"
            for shape in shapes:
                for timesteps in timestep_modes:
                    per_item = timesteps == "item"
                    with torch.no_grad(), torch.compiler.set_stance(stance):
                        row = profile(lambda shape=shape, p=per_item: forward(shape, p), args.top)
                        row["wall_ms"] = event_median(lambda shape=shape, p=per_item: forward(shape, p), args.repeats)
                    label = f"{dtype_mode}_{shape}" + ("" if mode == "compiled" else f"_{mode}") + f"_{timesteps}"
                    rows[label] = row
                    print_profile(f"{label} ({args.layers} blocks)", row)
    return rows


def decode_rows(args) -> dict:
    from convert_memory import full_width_config
    from diffusers import AutoencoderKLLTX2Video

    from ltx2_diffusers.loaders.single_file_video_vae import video_vae_config_from_original
    from ltx2_diffusers.models.video_vae_decode import decode_channels_last

    config = video_vae_config_from_original(full_width_config(1, 1))
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLLTX2Video(**config).to(torch.bfloat16).eval()
    latent = torch.randn(1, 128, 16, 32, 48, device="cuda", dtype=torch.bfloat16)
    temb = torch.full((1,), 0.05, device="cuda", dtype=torch.bfloat16)
    rows, base = {}, None
    for layout in args.decode_layouts.split(","):
        torch.backends.cudnn.benchmark = layout.endswith("+cudnn_benchmark")
        if layout.startswith("module_channels_last_3d"):  # the modules' own forwards on channels-last tensors
            vae.to(memory_format=torch.channels_last_3d)
        else:
            vae.to(memory_format=torch.contiguous_format)
        z = latent.contiguous(memory_format=torch.channels_last_3d) if layout.startswith("module_") else latent

        def decode(z=z, walk=layout.startswith("walk")):
            if walk:
                return decode_channels_last(vae, z, temb)
            return vae.decode(z, temb=temb, return_dict=False)[0]

        with torch.no_grad():
            out = decode().float().cpu()  # on the host: not in the next layout's peak
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            row = profile(decode, args.top)
            row["wall_ms"] = event_median(decode, max(args.repeats // 2, 2), warmup=1)
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        base = out if base is None else base
        row["max_abs_vs_first"] = (out - base).abs().max().item()
        del out
        rows[f"decode_{layout}"] = row
        print_profile(f"decode {layout} (peak {row['peak_gib']:.2f} GiB, max|d| {row['max_abs_vs_first']:.3g})", row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=14, help="largest kernels listed per profile")
    parser.add_argument("--fp8", action="store_true", help="also profile fp8 scaled matmuls")
    parser.add_argument("--decode", action="store_true", help="also profile the full-size video decode")
    parser.add_argument("--decode-layouts", default="default,walk", help="comma list of: default (vae.decode), walk "
                        "(models.video_vae_decode), module_channels_last_3d (vae.decode on channels-last modules); "
                        "each may end in +cudnn_benchmark")  # fmt: skip
    parser.add_argument("--no-transformer", action="store_true")
    parser.add_argument("--modes", default="compiled", help="comma list of: compiled (regional, as the pipeline on "
                        "CUDA), eager")  # fmt: skip
    parser.add_argument("--timesteps", default="token", help="comma list of: token (one timestep per token, as the "
                        "reference), item (one per item, the pipeline's default for a uniform mask)")  # fmt: skip
    args = parser.parse_args(argv)
    rows = {} if args.no_transformer else transformer_rows(args)
    if args.decode:
        rows.update(decode_rows(args))
    print("\n| profile | wall ms | kernels ms | " + " | ".join(c for c, _ in CATEGORIES) + " | other |")
    for label, row in rows.items():
        cats = [row["by_category"].get(c, 0.0) for c, _ in CATEGORIES] + [row["by_category"].get("other", 0.0)]
        print(
            f"| {label} | {row['wall_ms']:.1f} | {row['total_ms']:.1f} | "
            + " | ".join(f"{c:.1f}" for c in cats)
            + " |"
        )
    result = {"benchmark": "profile_forward", "layers": args.layers, "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "rows": rows}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
