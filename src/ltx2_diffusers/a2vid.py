"""Audio-to-video command line: `python -m ltx2_diffusers.a2vid` / `ltx2-a2v`.

The flags and their defaults are those of ltx-pipelines' `a2vid_two_stage` (LTX-2.3 parameters; every one of its
flags is accepted), plus model loading from a converted folder (`--model`), offloading, `--stage-2/--no-stage-2`,
`--sync-report`, `--modality-scale-sweep` and the size bounds `--max-num-frames` / `--max-video-tokens`.
Deviations: `--distilled-lora PATH` without a strength uses 0.8 (the strength the converter and `from_single_file`
use; the reference CLI uses 1.0). The audio-guidance flags (`--audio-*`, `--v2a-guidance-scale`) are accepted and
have no effect, as in the reference A2Vid pipeline: the audio is frozen (a warning says so when one is changed).

Nothing is loaded before every cheap check has passed: flags, input files (existence, safetensors headers, audio
streams, decodable images), the output path (never one of the inputs, a container that can carry H.264 + AAC).
Outputs are written under temporary names in their folder and renamed when complete, so a failed or interrupted
run leaves an existing file untouched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from diffusers.utils import logging

from .cli_safety import (  # noqa: F401  (sweep_path, sync_report_paths, planned_outputs: public helpers)
    OUTPUT_EXTENSIONS,
    check_features,
    check_outputs,
    check_values,
    planned_outputs,
    preflight,
    sweep_path,
    sync_report_paths,
    warn_audio_guidance,
    write_atomically,
)


logger = logging.get_logger(__name__)

PROG = "ltx2-a2v"

# ltx-pipelines' A2Vid defaults (LTX_2_3_PARAMS with the two-stage output size).
DEFAULT_SEED = 10
DEFAULT_HEIGHT = 1024
DEFAULT_WIDTH = 1536
DEFAULT_NUM_FRAMES = 121
DEFAULT_FRAME_RATE = 24.0
DEFAULT_NUM_INFERENCE_STEPS = 30
DEFAULT_CFG_SCALE = 3.0
DEFAULT_STG_SCALE = 1.0
DEFAULT_RESCALE_SCALE = 0.7
DEFAULT_MODALITY_SCALE = 3.0
DEFAULT_STG_BLOCKS = (28,)
DEFAULT_SKIP_STEP = 0
DEFAULT_DISTILLED_LORA_STRENGTH = 0.8  # as the converter and from_single_file (the reference CLI: 1.0)
DEFAULT_LORA_STRENGTH = 1.0  # `--lora PATH` without a strength, as the reference CLI
# ltx-pipelines' LTX-2.3 audio guider: its CLI accepts these flags but A2Vid never uses them (the audio is frozen).
DEFAULT_AUDIO_GUIDANCE = {
    "audio_cfg_guidance_scale": 7.0,
    "audio_stg_guidance_scale": 1.0,
    "audio_rescale_scale": 0.7,
    "v2a_guidance_scale": 3.0,
    "audio_skip_step": 0,
    "audio_stg_blocks": [28],
}
DEFAULT_IMAGE_CRF = 33
OFFLOAD_MODES = ("none", "model", "sequential", "group")
QUANTIZATION_POLICIES = ("fp8-cast", "fp8-scaled-mm")
DTYPES = ("bfloat16", "float16", "float32")


class _ImageAction(argparse.Action):
    """`--image PATH FRAME STRENGTH [CRF]`, repeatable; appends `(path, frame, strength, crf)`."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (3, 4):
            raise argparse.ArgumentError(self, f"expects PATH FRAME STRENGTH [CRF], got {len(values)} values")
        path, frame, strength = values[:3]
        frame = _parse(self, int, frame, "FRAME", "an integer")
        strength = _parse(self, float, strength, "STRENGTH", "a number")
        crf = _parse(self, int, values[3], "CRF", "an integer") if len(values) == 4 else DEFAULT_IMAGE_CRF
        if frame < 0:
            raise argparse.ArgumentError(self, f"FRAME must be >= 0, got {frame}")
        if not 0.0 <= strength <= 1.0:
            raise argparse.ArgumentError(self, f"STRENGTH must be in [0, 1], got {strength}")
        if not 0 <= crf <= 51:
            raise argparse.ArgumentError(self, f"CRF must be in [0, 51] (0 = no H.264 round trip), got {crf}")
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((path, frame, strength, crf))
        setattr(namespace, self.dest, items)


class _LoraAction(argparse.Action):
    """`--distilled-lora PATH [STRENGTH]` (stores `(path, strength)`) and `--lora PATH [STRENGTH]` (repeatable:
    appends)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .validation import check_lora_strength

        if len(values) not in (1, 2):
            raise argparse.ArgumentError(self, f"expects PATH [STRENGTH], got {len(values)} values")
        strength = _parse(self, float, values[1], "STRENGTH", "a number") if len(values) == 2 else None
        if strength is not None:
            try:
                check_lora_strength("STRENGTH", strength)
            except ValueError as error:
                raise argparse.ArgumentError(self, str(error)) from None
        if self.dest == "lora":
            items = list(getattr(namespace, self.dest, None) or [])
            items.append((values[0], DEFAULT_LORA_STRENGTH if strength is None else strength))
            setattr(namespace, self.dest, items)
        else:
            setattr(
                namespace, self.dest, (values[0], DEFAULT_DISTILLED_LORA_STRENGTH if strength is None else strength)
            )


class _QuantizationAction(argparse.Action):
    """`--quantization POLICY [AMAX_PATH]` (as the reference): stores the policy; the amax calibration file of
    `fp8-scaled-mm` goes to `quantization_amax_path`."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (1, 2):
            raise argparse.ArgumentError(self, f"expects POLICY [AMAX_PATH], got {len(values)} values")
        if values[0] not in QUANTIZATION_POLICIES:
            raise argparse.ArgumentError(
                self, f"invalid choice: {values[0]!r} (choose from {', '.join(QUANTIZATION_POLICIES)})"
            )
        if len(values) == 2 and values[0] != "fp8-scaled-mm":
            raise argparse.ArgumentError(self, f"{values[0]} takes no AMAX_PATH")
        setattr(namespace, self.dest, values[0])
        setattr(namespace, "quantization_amax_path", values[1] if len(values) == 2 else None)


def _parse(action, kind, text, name, what):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentError(action, f"{name} must be {what}, got {text!r}") from None


def _num_frames(text: str):
    """An `8k + 1` frame count, or `auto` (None): the largest count the audio covers."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 8k + 1 (9, 17, ..., 121) or 'auto', got {text!r}") from None
    if value < 1 or (value - 1) % 8:
        raise argparse.ArgumentTypeError(f"must be 8k + 1 (9, 17, ..., 121), got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _sweep(text: str) -> tuple:
    """`1,2,3,4` -> (1.0, 2.0, 3.0, 4.0): distinct finite modality scales."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,2,3,4, got {text!r}")
    values = tuple(_finite(part) for part in parts)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"values must be distinct, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no model is touched)."""
    from .pipelines.pipeline_ltx2_audio_to_video import DEFAULT_NEGATIVE_PROMPT

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="LTX-2 / LTX-2.3 audio-to-video: an mp4 whose motion follows the audio, carrying that audio. "
        "Flags and defaults follow ltx-pipelines' a2vid_two_stage (LTX-2.3 parameters).",
    )
    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint-path", help="original single-file LTX-2 / LTX-2.3 checkpoint (.safetensors)")
    source.add_argument("--model", help="converted diffusers folder or Hugging Face Hub id")
    model.add_argument(
        "--distilled-lora",
        action=_LoraAction,
        nargs="+",
        metavar=("PATH", "STRENGTH"),
        help="distilled LoRA for stage 2 and its strength (default strength "
        f"{DEFAULT_DISTILLED_LORA_STRENGTH}, as the converter); needed with --checkpoint-path; with --model it "
        "replaces the folder's LoRA",
    )
    model.add_argument(
        "--lora",
        dest="lora",
        action=_LoraAction,
        nargs="+",
        metavar=("PATH", "STRENGTH"),
        default=[],
        help=f"user LoRA and its strength (default {DEFAULT_LORA_STRENGTH}), active in both stages; repeatable",
    )
    model.add_argument(
        "--spatial-upsampler-path",
        help="x2 spatial latent upsampler file; needed with --checkpoint-path; with --model it replaces the folder's",
    )
    model.add_argument(
        "--gemma-root",
        help="folder holding the Gemma 3 text encoder and tokenizer; needed with --checkpoint-path; "
        "with --model it replaces the folder's",
    )
    model.add_argument(
        "--quantization",
        action=_QuantizationAction,
        nargs="+",
        metavar=("POLICY", "AMAX_PATH"),
        default=None,
        help="fp8-cast (as ltx-core): store the transformer blocks' linear weights in float8 and upcast them "
        "at every call; fp8-scaled-mm [AMAX_PATH]: float8 scaled matmuls (CUDA, Hopper-class GPU)",
    )
    model.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="compute dtype (default: bfloat16)")

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--audio-path", required=True, help="audio file that drives the video (any format PyAV reads)")
    inputs.add_argument(
        "--audio-start-time", type=_non_negative, default=0.0, help="seconds to skip in the audio (default: 0.0)"
    )
    inputs.add_argument(
        "--audio-max-duration",
        type=_positive,
        default=None,
        help="seconds of audio to encode (default: the video duration, num-frames / frame-rate)",
    )
    inputs.add_argument("--prompt", required=True, help="text describing the video")
    inputs.add_argument(
        "--negative-prompt",
        default=DEFAULT_NEGATIVE_PROMPT,
        help="what the video should not show (default: the reference's long negative prompt)",
    )
    inputs.add_argument(
        "--enhance-prompt",
        action="store_true",
        help="rewrite the prompt with the text encoder before encoding (as the reference; refused if this "
        "pipeline version has no prompt enhancement)",
    )
    inputs.add_argument(
        "--image",
        dest="images",
        action=_ImageAction,
        nargs="+",
        metavar="ARG",
        default=[],
        help="image pinned to a frame: PATH FRAME STRENGTH [CRF] (CRF default "
        f"{DEFAULT_IMAGE_CRF}, 0 = none); repeatable",
    )

    video = parser.add_argument_group("video")
    video.add_argument(
        "--height",
        type=int,
        default=DEFAULT_HEIGHT,
        help=f"multiple of 64 (32 with --no-stage-2) (default: {DEFAULT_HEIGHT})",
    )
    video.add_argument(
        "--width",
        type=int,
        default=DEFAULT_WIDTH,
        help=f"multiple of 64 (32 with --no-stage-2) (default: {DEFAULT_WIDTH})",
    )
    video.add_argument(
        "--num-frames",
        type=_num_frames,
        default=DEFAULT_NUM_FRAMES,
        help=f"8k + 1, or 'auto' for the largest count the audio covers (default: {DEFAULT_NUM_FRAMES})",
    )
    video.add_argument(
        "--frame-rate", type=_positive, default=DEFAULT_FRAME_RATE, help=f"fps (default: {DEFAULT_FRAME_RATE})"
    )
    video.add_argument(
        "--num-inference-steps",
        type=int,
        default=DEFAULT_NUM_INFERENCE_STEPS,
        help=f"stage-1 denoising steps (default: {DEFAULT_NUM_INFERENCE_STEPS})",
    )
    video.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    video.add_argument(
        "--stage-2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="upsample x2 and refine with the distilled LoRA (default: on); --no-stage-2 renders one stage at "
        "the requested size",
    )

    guidance = parser.add_argument_group("video guidance")
    guidance.add_argument(
        "--video-cfg-guidance-scale",
        type=_finite,
        default=DEFAULT_CFG_SCALE,
        help=f"classifier-free guidance; 1 = off (default: {DEFAULT_CFG_SCALE})",
    )
    guidance.add_argument(
        "--video-stg-guidance-scale",
        type=_finite,
        default=DEFAULT_STG_SCALE,
        help=f"spatio-temporal guidance; 0 = off (default: {DEFAULT_STG_SCALE})",
    )
    guidance.add_argument(
        "--video-rescale-scale",
        type=_finite,
        default=DEFAULT_RESCALE_SCALE,
        help=f"rescale of the guided prediction; 0 = off (default: {DEFAULT_RESCALE_SCALE})",
    )
    guidance.add_argument(
        "--a2v-guidance-scale",
        type=_finite,
        default=DEFAULT_MODALITY_SCALE,
        help=f"audio-to-video (modality) guidance; 1 = off (default: {DEFAULT_MODALITY_SCALE})",
    )
    guidance.add_argument(
        "--video-stg-blocks",
        type=_non_negative_int,
        nargs="*",
        default=list(DEFAULT_STG_BLOCKS),
        help=f"transformer blocks perturbed by STG (default: {' '.join(map(str, DEFAULT_STG_BLOCKS))})",
    )
    guidance.add_argument(
        "--video-skip-step",
        type=_non_negative_int,
        default=DEFAULT_SKIP_STEP,
        help=f"guide only steps with index %% (N + 1) == 0 (default: {DEFAULT_SKIP_STEP})",
    )

    audio_guidance = parser.add_argument_group(
        "audio guidance (accepted as the reference CLI accepts them; no effect: the audio is frozen)"
    )
    for flag, kind, what in (
        ("--audio-cfg-guidance-scale", _finite, "audio classifier-free guidance"),
        ("--audio-stg-guidance-scale", _finite, "audio STG"),
        ("--audio-rescale-scale", _finite, "audio rescale"),
        ("--v2a-guidance-scale", _finite, "video-to-audio (modality) guidance"),
        ("--audio-skip-step", _non_negative_int, "audio skip step"),
    ):
        default = DEFAULT_AUDIO_GUIDANCE[flag[2:].replace("-", "_")]
        audio_guidance.add_argument(
            flag, type=kind, default=default, help=f"{what}; no effect on frozen audio (default: {default})"
        )
    audio_guidance.add_argument(
        "--audio-stg-blocks",
        type=_non_negative_int,
        nargs="*",
        default=list(DEFAULT_AUDIO_GUIDANCE["audio_stg_blocks"]),
        help="blocks of audio STG; no effect on frozen audio (default: 28)",
    )

    run = parser.add_argument_group("run and output")
    run.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="none: everything on --device; model / sequential / group: diffusers' CPU offloading (default: none)",
    )
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--vae-tiling", action="store_true", help="decode the video in tiles (less memory)")
    run.add_argument(
        "--guidance-batch-size",
        type=_positive_int,
        default=None,
        help="guidance passes per transformer forward (default: all of a step's passes in one batched forward)",
    )
    run.add_argument(
        "--reference-arithmetic",
        action="store_true",
        help="one pass per forward and LoRAs fused as ltx-core fuses them: bit-identical to ltx-pipelines' A2Vid",
    )
    run.add_argument(
        "--output-path",
        required=True,
        help=f"output video ({', '.join(OUTPUT_EXTENSIONS)}); never one of the inputs; written under a temporary "
        "name and renamed when complete",
    )
    run.add_argument(
        "--max-num-frames",
        type=_positive_int,
        default=None,
        help="raise the bound on the frame count (default 1001, ltx2_diffusers.validation.MAX_NUM_FRAMES), also "
        "for --num-frames auto",
    )
    run.add_argument(
        "--max-video-tokens",
        type=_positive_int,
        default=None,
        help="raise the bound on the video latent tokens ((F-1)/8+1)*(H/32)*(W/32) (default 262144)",
    )
    run.add_argument(
        "--sync-report",
        action="store_true",
        help="also write the audio-video sync report (<output>_sync.png and .json) next to the video",
    )
    run.add_argument(
        "--modality-scale-sweep",
        type=_sweep,
        default=None,
        metavar="S1,S2,...",
        help="render one clip per a2v guidance scale (same seed; replaces --a2v-guidance-scale) and write a "
        "side-by-side sync table (<output>_modality_sweep.json / .md)",
    )
    parser.set_defaults(quantization_amax_path=None)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check `argv`; bad values end in argparse errors naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    multiple = 64 if args.stage_2 else 32
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value <= 0 or value % multiple:
            stages = "two stages" if args.stage_2 else "--no-stage-2"
            parser.error(f"{flag} must be a positive multiple of {multiple} with {stages}, got {value}")
    if args.num_inference_steps < 2:
        parser.error(f"--num-inference-steps must be >= 2, got {args.num_inference_steps}")
    try:
        check_values(args)
    except ValueError as error:
        parser.error(str(error))
    if args.checkpoint_path is not None:
        _require_file(parser, "--checkpoint-path", args.checkpoint_path)
        if args.gemma_root is None:
            parser.error("--gemma-root is required with --checkpoint-path")
        if args.stage_2:
            for flag, value in (
                ("--spatial-upsampler-path", args.spatial_upsampler_path),
                ("--distilled-lora", args.distilled_lora),
            ):
                if value is None:
                    parser.error(f"{flag} is required with --checkpoint-path for two stages (or pass --no-stage-2)")
    elif os.path.exists(args.model) and not os.path.isdir(args.model):
        parser.error(f"--model must be a converted folder or a Hub id, got the file {args.model!r}")
    if args.spatial_upsampler_path is not None:
        _require_file(parser, "--spatial-upsampler-path", args.spatial_upsampler_path)
    if args.distilled_lora is not None:
        _require_file(parser, "--distilled-lora", args.distilled_lora[0])
    for path, _ in args.lora:
        _require_file(parser, "--lora", path)
    if args.quantization_amax_path is not None:
        _require_file(parser, "--quantization fp8-scaled-mm AMAX_PATH", args.quantization_amax_path)
    if args.gemma_root is not None and not os.path.isdir(args.gemma_root):
        parser.error(f"--gemma-root: no such folder {args.gemma_root!r}")
    _require_file(parser, "--audio-path", args.audio_path)
    for path, frame, _, _ in args.images:
        _require_file(parser, "--image", path)
        if args.num_frames is not None and frame >= args.num_frames:
            parser.error(f"--image {path}: FRAME {frame} is out of range for --num-frames {args.num_frames}")
    if (args.sync_report or args.modality_scale_sweep) and args.num_frames is not None and args.num_frames < 9:
        parser.error("--sync-report and --modality-scale-sweep need --num-frames >= 9")
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            parser.error(f"--device {args.device!r}: {error}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available")
    if args.offload == "sequential" and _device(args).type == "cpu":
        # accelerate's per-weight hooks cannot round-trip weights when the onload device is the CPU itself.
        parser.error("--offload sequential needs an accelerator device; on cpu there is nothing to offload to")
    output_dir = os.path.dirname(os.path.abspath(args.output_path))
    if os.path.isdir(args.output_path):
        parser.error(f"--output-path {args.output_path!r} is a folder; give a file name such as out.mp4")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        parser.error(f"--output-path: {output_dir!r} is not a folder")
    try:
        check_outputs(args)
        check_features(args)
    except ValueError as error:
        parser.error(str(error))
    warn_audio_guidance(args, DEFAULT_AUDIO_GUIDANCE)


def _require_file(parser, flag, path):
    if not os.path.isfile(path):
        parser.error(f"{flag}: no such file {path!r}")


# ---------------------------------------------------------------------------------------------------- running
def _device(args):
    import torch

    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(args):
    """The pipeline from `--checkpoint-path` or `--model`, with the optional component overrides."""
    import torch

    from .pipelines.pipeline_ltx2_audio_to_video import LTX2AudioToVideoPipeline, load_gemma

    dtype = getattr(torch, args.dtype)
    if args.checkpoint_path is not None:
        pipe = LTX2AudioToVideoPipeline.from_single_file(
            args.checkpoint_path,
            spatial_upsampler_path=args.spatial_upsampler_path,
            distilled_lora=args.distilled_lora,
            gemma_root=args.gemma_root,
            torch_dtype=dtype,
        )
        load_user_loras(pipe, args.lora)
        return pipe
    pipe = LTX2AudioToVideoPipeline.from_pretrained(args.model, dtype=dtype)
    if args.gemma_root is not None:
        text_encoder, tokenizer = load_gemma(args.gemma_root, dtype)
        pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)
    if args.spatial_upsampler_path is not None:
        from .models.upsampler_single_file import load_latent_upsampler_from_single_file

        upsampler = load_latent_upsampler_from_single_file(args.spatial_upsampler_path, torch_dtype=dtype)
        pipe.register_modules(latent_upsampler=upsampler)
    if args.distilled_lora is not None:
        path, strength = args.distilled_lora
        pipe.load_lora_weights(path, adapter_name="distilled")  # replaces the pipeline-owned distilled LoRA
        pipe.register_to_config(distilled_lora_scale=float(strength))
    load_user_loras(pipe, args.lora)
    return pipe


def load_user_loras(pipe, loras) -> list[str]:
    """`--lora PATH STRENGTH` files as adapters `cli_lora_0`, `cli_lora_1`, ... through `load_lora_weights`,
    weighted by `set_adapters` (active in both stages; the pipeline-owned distilled LoRA never touches them)."""
    names = []
    for i, (path, _) in enumerate(loras):
        name = f"cli_lora_{i}"
        pipe.load_lora_weights(path, adapter_name=name)
        names.append(name)
    if names:
        pipe.set_adapters(names, [float(strength) for _, strength in loras])
    return names


def fp8_cast(transformer) -> list[str]:
    """ltx-core's fp8-cast on a loaded transformer: the block linears' weights and biases are stored as
    float8_e4m3fn and upcast to the input dtype at every call. LoRA layers stay as they are. Returns the linears."""
    import torch

    from .loaders.fp8 import FP8_DTYPES, enable_fp8_upcast, is_fp8_cast_target

    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear) or module.weight.dtype in FP8_DTYPES:
            continue
        if is_fp8_cast_target(name.replace(".base_layer", "") + ".weight"):  # PEFT wraps targets as `.base_layer`
            module.weight.data = module.weight.data.to(torch.float8_e4m3fn)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.float8_e4m3fn)
    return enable_fp8_upcast(transformer)


def prepare_pipeline(pipe, args, device) -> None:
    """Quantization, VAE tiling and placement / offloading as the flags ask."""
    import torch

    if args.quantization == "fp8-cast":
        fp8_cast(pipe.transformer)
    elif args.quantization == "fp8-scaled-mm":
        from .loaders.fp8 import enable_fp8_scaled_mm

        options = {} if args.quantization_amax_path is None else {"amax_path": args.quantization_amax_path}
        enable_fp8_scaled_mm(pipe.transformer, **options)
    if args.vae_tiling and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
    if args.offload == "none":
        pipe.to(device)
    elif args.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=device.type == "cuda",
        )


def _guidance(args, modality_scale: float):
    from .guidance import MultiModalGuidance

    return MultiModalGuidance(
        cfg_scale=args.video_cfg_guidance_scale,
        stg_scale=args.video_stg_guidance_scale,
        rescale_scale=args.video_rescale_scale,
        modality_scale=modality_scale,
        stg_blocks=list(args.video_stg_blocks),
        skip_step=args.video_skip_step,
    )


def _conditions(args):
    from .pipelines.image_conditions import LTX2ImageCondition

    return [LTX2ImageCondition(path, frame, strength, crf) for path, frame, strength, crf in args.images]


def _generate(pipe, args, device, modality_scale, text):
    import torch

    generator = torch.Generator(device).manual_seed(args.seed)
    result = pipe(
        audio=args.audio_path,
        audio_start_time=args.audio_start_time,
        audio_max_duration=args.audio_max_duration,
        conditions=_conditions(args),
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        frame_rate=args.frame_rate,
        num_inference_steps=args.num_inference_steps,
        video_guidance=_guidance(args, modality_scale),
        stage_2=args.stage_2,
        generator=generator,
        guidance_batch_size=args.guidance_batch_size,
        reference_arithmetic=args.reference_arithmetic,
        max_num_frames=args.max_num_frames,
        max_video_tokens=args.max_video_tokens,
        output_type="np",
        **({"enhance_prompt": True} if args.enhance_prompt else {}),
        **text,
    )
    return result.frames[0], result.audio, result.audio_sample_rate


def sweep_table(rows: list[dict]) -> str:
    """Markdown table of a modality-scale sweep."""
    lines = [
        "| a2v guidance scale | video | best lag (frames) | best lag (ms) | sync score | zero-lag correlation |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        zero = "n/a" if row["zero_lag_correlation"] is None else f"{row['zero_lag_correlation']:.3f}"
        lines.append(
            f"| {row['modality_scale']:g} | {os.path.basename(row['video'])} | {row['best_lag_frames']:+d} | "
            f"{row['best_lag_ms']:+.1f} | {row['sync_score']:.3f} | {zero} |"
        )
    return "\n".join(lines)


def _aac_compatible(audio, sample_rate: int):
    """The audio unchanged, or resampled to 48 kHz when AAC cannot carry its rate."""
    from .video_io import AAC_SAMPLE_RATES

    if sample_rate in AAC_SAMPLE_RATES:
        return audio, sample_rate
    import librosa

    logger.warning(f"AAC has no {sample_rate} Hz mode; the mp4's audio is resampled to 48000 Hz.")
    return librosa.resample(audio, orig_sr=sample_rate, target_sr=48000, res_type="soxr_hq"), 48000


def _peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return f"peak RSS {rss / 2**30:.2f} GiB"


def _write_text(text: str):
    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write


def run(args) -> list[str]:
    """Check the input files, load, generate, write; returns the written paths."""
    import torch

    from .video_io import export_to_video_with_audio

    preflight(args)
    start = time.perf_counter()
    device = _device(args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    Path(os.path.dirname(os.path.abspath(args.output_path))).mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args)
    prepare_pipeline(pipe, args, device)

    scales = args.modality_scale_sweep or (args.a2v_guidance_scale,)
    text = {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
    if len(scales) > 1:  # encode once for the whole sweep
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(args.prompt, args.negative_prompt)
        text = {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": neg_embeds,
            "negative_prompt_attention_mask": neg_mask,
        }

    written, rows = [], []
    for scale in scales:
        clip_start = time.perf_counter()
        path = args.output_path if args.modality_scale_sweep is None else sweep_path(args.output_path, scale)
        frames, audio, sample_rate = _generate(pipe, args, device, scale, text)
        audio, sample_rate = _aac_compatible(audio.numpy(), sample_rate)
        export_to_video_with_audio(frames, audio, sample_rate, path, fps=args.frame_rate)
        written.append(path)
        num_frames, height, width = frames.shape[:3]
        print(
            f"wrote {path}: {num_frames} frames, {width}x{height}, {args.frame_rate:g} fps, "
            f"{audio.shape[-1] / sample_rate:.2f} s of audio at {sample_rate} Hz"
        )
        if args.sync_report or args.modality_scale_sweep is not None:
            from .sync import sync_report_from_file

            report = sync_report_from_file(path)
            if args.sync_report:
                png, json_path = sync_report_paths(path)
                write_atomically(png, report.save_png)
                write_atomically(json_path, report.save_json)
                written += [png, json_path]
                print(f"sync report {png}: {report.summary()}")
            rows.append(
                {
                    "modality_scale": scale,
                    "video": path,
                    "best_lag_frames": int(report.best_lag_frames),
                    "best_lag_ms": float(report.best_lag_ms),
                    "sync_score": float(report.sync_score),
                    "zero_lag_correlation": report.to_dict()["zero_lag_correlation"],
                    "seconds": round(time.perf_counter() - clip_start, 2),
                }
            )

    if args.modality_scale_sweep is not None:
        stem = os.path.splitext(args.output_path)[0]
        table = sweep_table(rows)
        header = f"Modality-scale sweep, seed {args.seed}, prompt: {args.prompt!r}\n\n{table}\n"
        write_atomically(f"{stem}_modality_sweep.md", _write_text(header))
        clips = {"seed": args.seed, "prompt": args.prompt, "clips": rows}
        write_atomically(f"{stem}_modality_sweep.json", _write_text(json.dumps(clips, indent=1)))
        written += [f"{stem}_modality_sweep.md", f"{stem}_modality_sweep.json"]
        print(table)
        print(f"sweep table: {stem}_modality_sweep.md and {stem}_modality_sweep.json")

    print(f"done in {time.perf_counter() - start:.1f} s on {device}, {_peak_memory(device)}")
    return written


def main(argv=None) -> int:
    """Entry point of `ltx2-a2v` and `python -m ltx2_diffusers.a2vid`."""
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError) as error:  # bad inputs refused (e.g. audio shorter than the video)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
