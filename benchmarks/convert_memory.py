"""Peak memory and throughput of the converter on a synthetic full-width LTX-2.3 checkpoint.

    python benchmarks/convert_memory.py [--layers 2] [--workdir DIR] [--keep]

The checkpoint has the released LTX-2.3 (22B) widths for every component (transformer 32 x 128 heads, text
projection 188160 -> 4096 + 2048, the released video VAE, audio VAE and BigVGAN + BWE vocoder) but only `--layers`
transformer blocks, so it is a few GB instead of 44. Its original-format key names and shapes come from ltx-core's
own models built on the meta device (tests/factories.py inverts ltx-core's key renaming); values are uniform noise in
bf16. The conversion runs in a child process (`python -m ltx2_diffusers.convert`); its peak RSS (ru_maxrss) is
compared with that of a child that only imports the converter. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import factories  # noqa: E402

from ltx2_diffusers.convert import _nbytes, _ShardWriter  # noqa: E402


GEMMA_HIDDEN, GEMMA_STATES = 3840, 49


def full_width_config(layers: int, connector_layers: int) -> dict:
    """The `config` metadata of LTX-2.3 at release widths, with `layers` transformer blocks and `connector_layers`
    text-connector blocks (8 in the release)."""
    config = factories.checkpoint_config(
        "2.3",
        num_layers=layers,
        num_attention_heads=32,
        attention_head_dim=128,
        audio_num_attention_heads=32,
        audio_attention_head_dim=64,
        caption_channels=GEMMA_HIDDEN,
        connector_num_attention_heads=32,
        connector_num_layers=connector_layers,
        audio_connector_num_attention_heads=32,
    )
    config["vae"].update(
        decoder_base_channels=128,
        encoder_blocks=copy.deepcopy(factories.RELEASED_VAE_BLOCKS["2.3"][0]),
        decoder_blocks=copy.deepcopy(factories.RELEASED_VAE_BLOCKS["2.3"][1]),
    )
    config["audio_vae"] = factories.audio_vae_config("2.3", ch_mult=[1, 2, 4])
    config["vocoder"] = factories.vocoder_config("2.3", initial_channel=1536, bwe_initial_channel=512)
    return config


def file_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Original file key -> shape for every component, from ltx-core's models on the meta device."""
    shapes: dict[str, tuple[int, ...]] = {}
    for model_names in factories._COMPONENT_MODELS.values():
        for name in model_names:
            model = factories._instantiate(name, config, (GEMMA_HIDDEN, GEMMA_STATES))
            key_map = factories.file_key_map(name, model)
            for model_key, tensor in model.state_dict(keep_vars=True).items():
                shapes[key_map[model_key]] = tuple(tensor.shape)
    return shapes


def write_synthetic(path: Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> int:
    """Stream uniform bf16 noise into a single safetensors file with the checkpoint metadata; returns its bytes."""
    items = [(k, torch.bfloat16, shapes[k]) for k in sorted(shapes)]
    writer = _ShardWriter(path, items, {"config": json.dumps(config), "model_version": "2.3.0"})
    generator = torch.Generator().manual_seed(0)
    for key, dtype, shape in items:
        writer.write(key, torch.empty(shape, dtype=dtype).uniform_(-1, 1, generator=generator))
    writer.handle.close()
    writer.close()
    return path.stat().st_size


# Runs in the child: the converter's CLI, then the high-water mark of the child's own address space. (VmHWM is
# reset by exec; ru_maxrss is not, and would include the parent's pages copied at fork.)
_CHILD = """
import re, sys
code = 0
if sys.argv[1:]:
    from ltx2_diffusers.convert import main
    code = main(sys.argv[1:])
else:
    import diffusers, transformers, ltx2_diffusers.convert  # noqa: F401
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print("VMHWM", int(hwm) * 1024)
sys.exit(code)
"""


def run_child(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stdout) of a child Python running `_CHILD` with `args`."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"child {args[:3]} failed:\n{result.stdout}\n{result.stderr}")
    peak = int(result.stdout.rsplit("VMHWM", 1)[1])
    return seconds, peak, result.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1, help="transformer blocks (full width); default 1")
    parser.add_argument("--connector-layers", type=int, default=1, help="text-connector blocks; default 1")
    parser.add_argument("--workdir", help="where to write the files (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and converted folder")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ltx2_convert_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint, output = workdir / "synthetic-ltx-2.3-full-width.safetensors", workdir / "converted"
    try:
        config = full_width_config(args.layers, args.connector_layers)
        shapes = file_shapes(config)
        start = time.perf_counter()
        size = write_synthetic(checkpoint, config, shapes)
        write_seconds = time.perf_counter() - start
        largest_key = max(shapes, key=lambda k: _nbytes(torch.bfloat16, shapes[k]))
        largest = _nbytes(torch.bfloat16, shapes[largest_key])

        _, baseline_rss, _ = run_child([])
        shutil.rmtree(output, ignore_errors=True)
        seconds, peak_rss, summary = run_child(["--checkpoint-path", str(checkpoint), "--output-dir", str(output)])
        written = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    gb = 1e9
    rows = [
        ("synthetic checkpoint", f"{size / gb:.2f} GB, {len(shapes)} tensors ({args.layers} full-width blocks)"),
        ("largest tensor", f"{largest / gb:.2f} GB ({largest_key})"),
        ("written", f"{written / gb:.2f} GB"),
        ("conversion time", f"{seconds:.1f} s ({size / gb / seconds:.2f} GB/s incl. start-up and verification)"),
        ("peak RSS, conversion", f"{peak_rss / gb:.2f} GB"),
        ("peak RSS, imports only", f"{baseline_rss / gb:.2f} GB"),
        (
            "peak RSS above imports",
            f"{(peak_rss - baseline_rss) / gb:.2f} GB (= {(peak_rss - baseline_rss) / largest:.2f} x largest tensor)",
        ),
        ("writing the synthetic file", f"{write_seconds:.1f} s"),
    ]
    print(summary.rsplit("VMHWM", 1)[0].rstrip())
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(
        json.dumps(
            {
                "checkpoint_bytes": size,
                "tensors": len(shapes),
                "layers": args.layers,
                "largest_tensor_bytes": largest,
                "seconds": round(seconds, 2),
                "gb_per_s": round(size / gb / seconds, 3),
                "peak_rss_bytes": peak_rss,
                "baseline_rss_bytes": baseline_rss,
                "cpu_count": os.cpu_count(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
