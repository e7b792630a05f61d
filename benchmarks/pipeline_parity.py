"""Audio-to-video pipeline vs ltx-pipelines' A2VidPipelineTwoStage on tiny random checkpoints: max |Δ| of
the decoded frames in [0, 1] in float32 (the test's setting) and bfloat16 (both in their native precision).
Prints a table and one JSON line.

    python benchmarks/pipeline_parity.py [--device cuda] [--variants eager,no-walk,no-tf32,all-off]

`--variants` adds float32 LTX-2.3 default-mode rows with one GPU-only lever turned off, to tell where a GPU
difference comes from: `eager` (no regional compile), `no-walk` (the VAE decode without the channels-last walk),
`no-tf32` (cuDNN convolutions and matmuls in full float32 for both sides: PyTorch lets cuDNN use TF32 by
default), `all-off` (the three together). Each row also gives the difference of the final video latents.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

import numpy as np
import scipy.io.wavfile
import torch


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from factories import build_checkpoint, build_lora, build_upsampler  # noqa: E402
from ltx_core.components.guiders import MultiModalGuiderParams  # noqa: E402
from prompt_contexts import contexts  # noqa: E402
from reference_pipeline import run_reference_a2vid  # noqa: E402

from ltx2_diffusers import LTX2AudioToVideoPipeline, MultiModalGuidance  # noqa: E402


def main(argv=None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--versions", default="2.3,2.0", help="comma-separated model versions to run")
    parser.add_argument("--variants", default="", help="comma-separated: " + ", ".join(VARIANTS))
    args = parser.parse_args(argv)
    device = args.device
    variants = [v for v in args.variants.split(",") if v]
    versions = [v for v in args.versions.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    root = pathlib.Path(tempfile.mkdtemp())
    rate = 44100
    t = np.arange(int(rate * 0.6)) / rate
    stereo = (np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 3 * t)], 1) * 0.4).astype(np.float32)
    scipy.io.wavfile.write(root / "audio.wav", rate, stereo)
    guidance = MultiModalGuidance(stg_blocks=[1])
    rows = []
    cases = [
        (v, "reference_arithmetic" if exact else "default", d)
        for v, exact in (("2.3", False), ("2.3", True), ("2.0", False), ("2.0", True))
        for d in (torch.float32, torch.bfloat16)
        if v in versions
    ]
    cases[2:2] = [("2.3", variant, torch.float32) for variant in variants]  # beside the default float32 row
    tf32_matmul_default = torch.backends.cuda.matmul.allow_tf32
    for version, mode, dtype in cases:
        checkpoint = build_checkpoint(root / f"ltx-{version}.safetensors", version, seed=1)
        upsampler = build_upsampler(root / "upsampler.safetensors", seed=2)
        positive, negative = contexts(0, version), contexts(1, version)
        off = VARIANTS.get(mode, ())
        torch.backends.cudnn.allow_tf32 = "tf32" not in off  # PyTorch's default: True
        torch.backends.cuda.matmul.allow_tf32 = False if "tf32" in off else tf32_matmul_default
        # ltx-core forms LoRA deltas in the LoRA file's dtype: one file per precision.
        lora = build_lora(root / f"lora-{version}.safetensors", checkpoint, seed=3, dtype=dtype)
        reference, reference_latent, *_ = run_reference_a2vid(
            checkpoint=checkpoint, upsampler=upsampler, distilled_lora=lora, distilled_strength=0.8,
            audio_path=root / "audio.wav", positive=positive, negative=negative, seed=10, height=128, width=128,
            num_frames=9, frame_rate=24.0, num_inference_steps=3, dtype=dtype, device=device,
            guider_params=MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7,
                                                 modality_scale=3.0, stg_blocks=[1]),
        )  # fmt: skip
        pipe = LTX2AudioToVideoPipeline.from_single_file(
            checkpoint, spatial_upsampler_path=upsampler, distilled_lora=(lora, 0.8), dtype=dtype
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        if "compile" in off:
            pipe.set_transformer_acceleration(compile=False)
        if "walk" in off:
            pipe.CHANNELS_LAST_DECODE_DEVICES = ()  # this instance decodes through `vae.decode`
        outputs = {}
        for output_type in ("pt", "latent"):
            outputs[output_type] = pipe(
                audio=root / "audio.wav", prompt_contexts=tuple(c.to(dtype) for c in positive),
                negative_prompt_contexts=tuple(c.to(dtype) for c in negative), height=128, width=128, num_frames=9,
                num_inference_steps=3, video_guidance=guidance, generator=torch.Generator(device).manual_seed(10),
                output_type=output_type, reference_arithmetic=mode == "reference_arithmetic",
            ).frames  # fmt: skip
        diff = (outputs["pt"].permute(0, 2, 1, 3, 4).float().cpu() - reference.float().cpu()).abs()
        latent_diff = (outputs["latent"].float().cpu() - reference_latent.float().cpu()).abs()
        rows.append(
            {
                "version": version,
                "dtype": str(dtype).replace("torch.", ""),
                "mode": mode,
                "reference_arithmetic": mode == "reference_arithmetic",
                "max_abs_diff": diff.max().item(),
                "mean_abs_diff": diff.mean().item(),
                "latent_max_abs_diff": latent_diff.max().item(),
            }
        )
        if len(rows) == 1:
            print(
                f"{'version':8s} {'dtype':9s} {'mode':22s} {'max|d| frames':>14s} {'mean|d|':>10s} {'max|d| latent':>14s}"
            )
        _print_row(rows[-1])  # as each row is done: a run stopped by a time limit still shows its rows
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, tf32_matmul_default
    name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    result = {"benchmark": "pipeline_parity", "device": name, "rows": rows}
    print(json.dumps(result))
    return result


#: The float32 rows of `--variants`: the GPU-only levers each turns off.
VARIANTS = {
    "eager": ("compile",),
    "no-walk": ("walk",),
    "no-tf32": ("tf32",),
    "all-off": ("compile", "walk", "tf32"),
}


def _print_row(row: dict) -> None:
    print(
        f"{row['version']:8s} {row['dtype']:9s} {row['mode']:22s} {row['max_abs_diff']:14.3e} "
        f"{row['mean_abs_diff']:10.3e} {row['latent_max_abs_diff']:14.3e}",
        flush=True,
    )


if __name__ == "__main__":
    main()
