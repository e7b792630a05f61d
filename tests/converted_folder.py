"""A tiny converted LTX-2.3 folder (transformer, VAEs, vocoder, connectors, upsampler, distilled LoRA), fp32."""

import pathlib

import torch
from factories import build_checkpoint, build_lora, build_upsampler

from ltx2_diffusers.convert import convert_checkpoint


def converted_folder(root: pathlib.Path, seed: int) -> pathlib.Path:
    """`root/converted`, converted from tiny original-format files built in `root` with seeds `seed`..`seed + 2`."""
    checkpoint = build_checkpoint(root / "ltx-2.3.safetensors", "2.3", seed=seed, dtype=torch.float32)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=seed + 1, dtype=torch.float32)
    lora = build_lora(root / "lora.safetensors", checkpoint, seed=seed + 2, dtype=torch.float32)
    out = root / "converted"
    convert_checkpoint(checkpoint, out, spatial_upsampler_path=upsampler, distilled_lora=lora)
    return out
