"""Transformer forwards at the pipeline's two shapes, per attention backend, eager and compiled; ltx-core alongside.

Stage 1 of audio-to-video runs one batched forward of the four guidance passes (cond, negative, STG, isolated) at
6,144 video tokens each, the STG pass sharing the conditional pass's blocks before the perturbed one; stage 2 runs
one batch-1 forward at 24,576 video tokens. Random full-width LTX-2.3 blocks (`--layers`, default 8; times scale
with the layer count), bf16. Times are CUDA-event medians after warm-up; differences are against our eager forward
with PyTorch's default SDPA choice on the same inputs. Prints a table and one JSON line.

    python benchmarks/attention_backends.py --layers 8
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import sys

import torch


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from transformer_step import _ours_kwargs, build_models, make_inputs  # noqa: E402


BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient")


def event_median(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def stage_1(model, x, stg_block, per_item: bool = False):
    from ltx2_diffusers import LTX2Perturbation
    from ltx2_diffusers.models.perturbations import shared_prefixes

    contexts = torch.cat([x["video_context"], x["negative_context"], x["video_context"], x["video_context"]])
    perturbations = [
        (),
        (),
        (LTX2Perturbation("skip_video_self_attn", (stg_block,)),),
        (LTX2Perturbation("skip_a2v_cross_attn"), LTX2Perturbation("skip_v2a_cross_attn")),
    ]
    shared = shared_prefixes(perturbations, {2: 0}, model.config.num_layers)
    return model(**_ours_kwargs(x, 4, contexts, per_item), perturbations=perturbations, shared_prefix=shared)[0]


def stage_2(model, x, per_item: bool = False):
    return model(**_ours_kwargs(x, 1, x["video_context"], per_item))[0]


def reference_stage_1(model, x, stg_block):
    from transformer_step import run_reference

    return run_reference(model, x, stg_block)


def reference_stage_2(model, x):
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig, PerturbationConfig
    from ltx_core.model.transformer.modality import Modality

    video = Modality(x["video"], x["sigma"], x["sigma"][:, None].expand(1, x["video"].shape[1]),
                     x["video_coords"], x["video_context"])  # fmt: skip
    audio = Modality(x["audio"], x["sigma"], torch.zeros(1, x["audio"].shape[1], device=x["audio"].device),
                     x["audio_coords"], x["audio_context"])  # fmt: skip
    return model(video, audio, BatchedPerturbationConfig([PerturbationConfig([])]))[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--compiled", default="native,_native_cudnn", help="backends also timed compiled")
    parser.add_argument("--fp8", action="store_true", help="also time fp8 scaled matmuls, compiled, per backend")
    args = parser.parse_args(argv)
    device, dtype = torch.device("cuda"), torch.bfloat16
    stg_block = args.layers // 2 + 4 if args.layers >= 16 else args.layers // 2

    reference, ours, _ = build_models(args.layers, device, dtype, seed=0)
    shapes = {
        "stage_1": make_inputs(6144, 126, 1024, device, dtype, seed=1),
        "stage_2": make_inputs(24576, 126, 1024, device, dtype, seed=2),
    }
    rows, base = [], {}

    def measure(name, model, backend, ref=False):
        row = {"impl": name, "backend": backend}
        for shape, x in shapes.items():
            step = {
                (True, "stage_1"): lambda x=x: reference_stage_1(model, x, stg_block),
                (True, "stage_2"): lambda x=x: reference_stage_2(model, x),
                (False, "stage_1"): lambda x=x: stage_1(model, x, stg_block),
                (False, "stage_2"): lambda x=x: stage_2(model, x),
            }
            fn = step[ref, shape]
            try:
                with torch.no_grad():
                    out = fn().float()
                    row[f"{shape}_ms"] = event_median(fn, args.repeats)
                if shape not in base:
                    base[shape] = out
                ref_out = base[shape]
                row[f"{shape}_max_abs"] = (out - ref_out).abs().max().item()
                row[f"{shape}_rel_l2"] = ((out - ref_out).norm() / ref_out.norm()).item()
            except Exception as e:  # a backend this build cannot run is a result
                row[f"{shape}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        print(json.dumps(row), flush=True)

    for backend in args.backends.split(","):
        ours.set_attention_backend(backend)
        measure(f"ours eager {backend}", ours, backend)
    ours.set_attention_backend("native")
    measure("ltx-core 1.0 eager (4 x batch-1 at stage 1)", reference, "sdpa", ref=True)
    del reference
    torch.cuda.empty_cache()
    for backend in [b for b in args.compiled.split(",") if b]:
        model = copy.deepcopy(ours)
        model.set_attention_backend(backend)
        model.compile_repeated_blocks(fullgraph=True)
        measure(f"ours compiled {backend}", model, backend)
        if args.fp8:
            from ltx2_diffusers.loaders.fp8 import enable_fp8_scaled_mm

            del model
            torch.cuda.empty_cache()
            model = copy.deepcopy(ours)
            model.set_attention_backend(backend)
            enable_fp8_scaled_mm(model)
            model.compile_repeated_blocks(fullgraph=True)
            measure(f"ours fp8 compiled {backend}", model, backend)
        del model
        torch.cuda.empty_cache()

    print(f"{'implementation':44s} {'stage-1 ms':>10s} {'stage-2 ms':>10s} {'max|d| s1':>10s} {'max|d| s2':>10s}")
    for r in rows:
        print(
            f"{r['impl']:44s} {r.get('stage_1_ms', float('nan')):10.1f} {r.get('stage_2_ms', float('nan')):10.1f} "
            f"{r.get('stage_1_max_abs', float('nan')):10.2e} {r.get('stage_2_max_abs', float('nan')):10.2e}"
            + "".join(f"  {k}: {v}" for k, v in r.items() if k.endswith("_error"))
        )
    result = {
        "benchmark": "attention_backends",
        "layers": args.layers,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
