"""Block streaming against resident blocks: the compiled transformer forwards of the pipeline's two shapes when
part of the blocks stream from pinned host memory (`pipelines/block_streaming.py`).

Random full-width LTX-2.3 blocks (`--layers`, default 16), bf16, a random rank-384 distilled LoRA over the block
linears (stage 2 applies it; its factors on the GPU for the resident rows, in pinned host memory and streamed with
each block otherwise). Stage 1: one batched forward of the four guidance passes at 6,144 video tokens (the STG pass
sharing the conditional pass's prefix); stage 2: one batch-1 forward at 24,576 tokens with the LoRA. For each
fraction of streamed blocks (spread evenly) and slot count: CUDA-event medians, the peak memory of the forward,
and the largest difference against the resident forward (0: the slots hold the same values). Also the host-to-
device bandwidth of one block's copy from pinned memory. Prints a table and one JSON line.

    python benchmarks/block_streaming.py --layers 16
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from attention_backends import event_median, stage_1, stage_2  # noqa: E402
from transformer_step import build_models, make_inputs  # noqa: E402


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


def random_lora(model, rank: int, device, seed: int = 3):
    from ltx2_diffusers.loaders.distilled_lora import LTX2DistilledLoRA

    g = torch.Generator(device).manual_seed(seed)
    pairs = {}
    for name, module in model.named_modules():
        if name.startswith("transformer_blocks") and name.endswith(LORA_TARGETS):
            a = torch.randn(rank, module.in_features, generator=g, device=device, dtype=torch.bfloat16)
            b = torch.randn(module.out_features, rank, generator=g, device=device, dtype=torch.bfloat16)
            pairs[f"transformer.{name}.lora_A.weight"] = a / module.in_features**0.5
            pairs[f"transformer.{name}.lora_B.weight"] = b * (0.5 / rank**0.5)
    return LTX2DistilledLoRA.from_state_dict(pairs)


def copy_bandwidth(block: torch.nn.Module) -> float:
    """GiB/s of one block's tensors copied from pinned host memory into one device buffer."""
    host = [t.detach().to("cpu").pin_memory() for t in [*block.parameters(), *block.buffers()]]
    dev = [torch.empty_like(t, device="cuda") for t in host]
    nbytes = sum(t.numel() * t.element_size() for t in host)

    def copy():
        for d, h in zip(dev, host):
            d.copy_(h, non_blocking=True)

    ms = event_median(copy, 5)
    return nbytes / 2**30 / (ms / 1000)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fractions", default="0,0.25,0.5,0.75,1", help="fractions of the blocks streamed")
    parser.add_argument("--slots", default="2", help="slot counts to time (comma-separated)")
    parser.add_argument("--lora-rank", type=int, default=384)
    args = parser.parse_args(argv)
    from ltx2_diffusers.pipelines.block_streaming import BlockStreamer, spread_blocks
    from ltx2_diffusers.pipelines.memory import place_distilled_lora

    device, dtype = torch.device("cuda"), torch.bfloat16
    stg_block = args.layers // 2 + 4 if args.layers >= 16 else args.layers // 2
    reference, model, theirs = build_models(args.layers, device, dtype, seed=0)
    del reference, theirs
    torch.cuda.empty_cache()
    model.eval()
    lora = random_lora(model, args.lora_rank, device)
    bandwidth = copy_bandwidth(model.transformer_blocks[0])
    shapes = {
        "stage_1": make_inputs(6144, 126, 1024, device, dtype, seed=1),
        "stage_2": make_inputs(24576, 126, 1024, device, dtype, seed=2),
    }
    model.compile_repeated_blocks(fullgraph=True)
    rows, base = [], {}

    def forward(shape):
        if shape == "stage_1":
            return stage_1(model, shapes[shape], stg_block)
        with lora.applied(model, 1.0):
            return stage_2(model, shapes[shape])

    for fraction in [float(f) for f in args.fractions.split(",")]:
        streamed = spread_blocks(args.layers, round(fraction * args.layers))
        for slots in [int(s) for s in args.slots.split(",")] if streamed else [0]:
            streamer = None
            if streamed:
                place_distilled_lora(lora, "host", device)
                resident = set(range(args.layers)) - set(streamed)
                streamer = BlockStreamer(model, device, resident, slots=slots).attach()
            else:
                place_distilled_lora(lora, "device", device)
            torch.cuda.synchronize()
            row = {"streamed": len(streamed), "layers": args.layers, "slots": slots}
            for shape in shapes:
                with torch.no_grad():
                    out = forward(shape).float()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    row[f"{shape}_ms"] = event_median(lambda shape=shape: forward(shape), args.repeats)
                    row[f"{shape}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if shape not in base:
                    base[shape] = out
                row[f"{shape}_max_abs"] = (out - base[shape]).abs().max().item()
            row["resident_gib"] = torch.cuda.memory_allocated() / 2**30
            rows.append(row)
            print(json.dumps(row), flush=True)
            if streamer is not None:
                streamer.detach()
            torch.cuda.empty_cache()

    block_gib = sum(t.numel() * t.element_size() for t in model.transformer_blocks[0].parameters()) / 2**30
    print(f"copy bandwidth from pinned memory: {bandwidth:.1f} GiB/s; one block {block_gib:.3f} GiB")
    print(f"{'streamed':>9s} {'slots':>5s} {'stage-1 ms':>10s} {'stage-2 ms':>10s} {'peak 1':>7s} {'peak 2':>7s} "
          f"{'max|d| 1':>9s} {'max|d| 2':>9s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['streamed']:>4d}/{r['layers']:<4d} {r['slots']:5d} {r['stage_1_ms']:10.1f} {r['stage_2_ms']:10.1f} "
            f"{r['stage_1_peak_gib']:7.2f} {r['stage_2_peak_gib']:7.2f} {r['stage_1_max_abs']:9.2e} "
            f"{r['stage_2_max_abs']:9.2e}"
        )
    result = {
        "benchmark": "block_streaming",
        "layers": args.layers,
        "block_gib": block_gib,
        "copy_gib_per_s": bandwidth,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
