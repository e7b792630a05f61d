"""The transformer's matmul shapes under cuBLAS and under inductor's autotuned GEMM templates; fp8 attention probe.

Issue 12's stage-1 step and stage-2 forward are 47-66 % bf16 GEMMs (run 15, about 640 TFLOP/s with cuBLAS).
This measures, for the LTX-2.3 video block's linear shapes at the stage-1 batch (3 or 4 guidance passes x 6,144
tokens) and the stage-2 batch (24,576 tokens), one `F.linear` (bias, bf16):

- `eager`: cuBLAS as the pipeline runs it today;
- `compiled`: `torch.compile` default (inductor calls cuBLAS for plain matmuls);
- `autotune`: `torch.compile(mode="max-autotune-no-cudagraphs")` (inductor benchmarks its Triton GEMM templates
  against cuBLAS and keeps the fastest);

and the feed-forward up-projection followed by the tanh GELU: `eager` (two kernels), `addmm_gelu`
(`torch._addmm_activation(..., use_gelu=True)`: cuBLASLt's GELU epilogue, one kernel), `compiled`, `autotune`
(a Triton template may fuse the GELU into its epilogue). Differences are reported against the eager output.
`--probe-fp8-attention` also tries `scaled_dot_product_attention` on float8_e4m3fn inputs and reports whether this
PyTorch runs it. CUDA-event medians; prints a table and one JSON line.

    python benchmarks/gemm_backends.py
    python benchmarks/gemm_backends.py --tokens 18432 24576 --probe-fp8-attention
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch
import torch.nn.functional as F


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from attention_backends import event_median  # noqa: E402


# (name, in_features, out_features) of the LTX-2.3 video block's linears (inner dim 4096, feed-forward 4x).
SHAPES = (("qkvo", 4096, 4096), ("ff_up", 4096, 16384), ("ff_down", 16384, 4096))


def variants(gelu: bool):
    def linear(x, w, b):
        y = F.linear(x, w, b)
        return F.gelu(y, approximate="tanh") if gelu else y

    out = {"eager": linear}
    if gelu:
        out["addmm_gelu"] = lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=True)
    out["compiled"] = torch.compile(linear, dynamic=False)
    out["autotune"] = torch.compile(linear, mode="max-autotune-no-cudagraphs", dynamic=False)
    return out


def probe_fp8_attention() -> str:
    q = torch.randn(1, 32, 1024, 128, device="cuda", dtype=torch.bfloat16)
    try:
        out = F.scaled_dot_product_attention(*(t.to(torch.float8_e4m3fn) for t in (q, q, q)))
        return f"runs (output {out.dtype})"
    except Exception as error:  # noqa: BLE001 - the probe reports whatever this build says
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[18432, 24576])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--probe-fp8-attention", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for tokens in args.tokens:
        for name, fan_in, fan_out in SHAPES:
            for gelu in (False, True) if name == "ff_up" else (False,):
                torch._dynamo.reset()  # fresh graphs for each shape (no recompile limit, no automatic dynamic)
                x = torch.randn(tokens, fan_in, device="cuda", dtype=torch.bfloat16)
                w = torch.randn(fan_out, fan_in, device="cuda", dtype=torch.bfloat16) / fan_in**0.5
                b = torch.randn(fan_out, device="cuda", dtype=torch.bfloat16)
                flops = 2 * tokens * fan_in * fan_out
                reference = None
                for label, fn in variants(gelu).items():
                    with torch.no_grad():
                        out = fn(x, w, b)
                        reference = out if reference is None else reference
                        ms = event_median(lambda fn=fn, x=x, w=w, b=b: fn(x, w, b), args.repeats)
                    rows.append(
                        {
                            "shape": f"{name}{'+gelu' if gelu else ''}",
                            "tokens": tokens,
                            "variant": label,
                            "ms": round(ms, 3),
                            "tflops": round(flops / ms / 1e9, 1),
                            "max_abs_diff": float((out.float() - reference.float()).abs().max()),
                        }
                    )
                    print(
                        f"{rows[-1]['shape']:<13} {tokens:>6} {label:<11} {ms:8.3f} ms {rows[-1]['tflops']:7.1f} "
                        f"TFLOP/s  max|d| {rows[-1]['max_abs_diff']:.3g}",
                        flush=True,
                    )
    result = {"benchmark": "gemm_backends", "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.probe_fp8_attention:
        result["fp8_attention"] = probe_fp8_attention()
        print(f"fp8 scaled_dot_product_attention: {result['fp8_attention']}")
    print(json.dumps({**result, "rows": rows}))


if __name__ == "__main__":
    main()
