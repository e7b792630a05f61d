"""What the command lines `ltx2-a2v` and `ltx2-av` share: flags, their checks, loading, placement, output helpers.

Flag groups (each an `add_*_arguments(parser)`): model loading (`--checkpoint-path` | `--model`, `--distilled-lora`,
`--lora`, `--spatial-upsampler-path`, `--gemma-root`, `--quantization`, `--dtype`), prompts and images
(`--prompt`, `--negative-prompt`, `--enhance-prompt`, `--image`), video size and steps, video guidance, audio
guidance, and run/output (`--offload`, `--memory-budget-gib`, `--device`, `--vae-tiling`, `--guidance-batch-size`,
`--reference-arithmetic`, `--output-path`, size bounds, `--context-parallel`), speed (`--compile`,
`--attention-backend`). The flags keep ltx-pipelines' names
and defaults (LTX-2.3 parameters); the `check_*` functions check the files and devices they name before anything
loads. The flags' defaults and value types are in `cli_values` (importable from here too); loading, placement and
the other run-time helpers are in `cli_running`.
"""

from __future__ import annotations

import argparse
import os

from diffusers.utils import logging

from .cli_values import (  # noqa: F401  (the defaults and value types stay importable from here)
    AUDIO_GUIDANCE_FLAGS,
    DEFAULT_AUDIO_GUIDANCE,
    DEFAULT_CFG_SCALE,
    DEFAULT_DISTILLED_LORA_SCALE,
    DEFAULT_FRAME_RATE,
    DEFAULT_HEIGHT,
    DEFAULT_IMAGE_CRF,
    DEFAULT_LORA_STRENGTH,
    DEFAULT_MODALITY_SCALE,
    DEFAULT_NUM_FRAMES,
    DEFAULT_NUM_INFERENCE_STEPS,
    DEFAULT_RESCALE_SCALE,
    DEFAULT_SEED,
    DEFAULT_SKIP_STEP,
    DEFAULT_STG_BLOCKS,
    DEFAULT_STG_SCALE,
    DEFAULT_WIDTH,
    DTYPES,
    OFFLOAD_MODES,
    QUANTIZATION_POLICIES,
    VIDEO_GUIDANCE_FLAGS,
    _finite,
    _frame_count,
    _ImageAction,
    _LoraAction,
    _non_negative,
    _non_negative_int,
    _parse,
    _positive,
    _positive_int,
    _QuantizationAction,
    _seed,
    _sigmas,
)


logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------- flags
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint-path` | `--model`, the optional component files, `--lora`, `--quantization`, `--dtype`."""
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
        f"{DEFAULT_DISTILLED_LORA_SCALE}, as the converter); needed with --checkpoint-path; with --model it "
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
    parser.set_defaults(quantization_amax_path=None)


def add_prompt_arguments(
    group,
    default_negative_prompt: str | None,
    enhance_help: str,
    negative_help: str = "what the video should not show (default: the reference's long negative prompt)",
) -> None:
    """`--prompt`, `--negative-prompt`, `--enhance-prompt` and the repeatable `--image PATH FRAME STRENGTH [CRF]`."""
    group.add_argument("--prompt", required=True, help="text describing the video")
    group.add_argument(
        "--negative-prompt",
        default=default_negative_prompt,
        help=negative_help,
    )
    group.add_argument("--enhance-prompt", action="store_true", help=enhance_help)
    group.add_argument(
        "--image",
        dest="images",
        action=_ImageAction,
        nargs="+",
        metavar="ARG",
        default=[],
        help="image pinned to a frame: PATH FRAME STRENGTH [CRF] (CRF default "
        f"{DEFAULT_IMAGE_CRF}, 0 = none); repeatable",
    )


def add_video_arguments(
    parser, num_frames_type, num_frames_help: str, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS
):
    """Size, frame count and rate, steps, seed, `--stage-2/--no-stage-2`; returns the group."""
    video = parser.add_argument_group("video")
    for flag, default in (("--height", DEFAULT_HEIGHT), ("--width", DEFAULT_WIDTH)):
        video.add_argument(
            flag, type=int, default=default, help=f"multiple of 64 (32 with --no-stage-2) (default: {default})"
        )
    video.add_argument("--num-frames", type=num_frames_type, default=DEFAULT_NUM_FRAMES, help=num_frames_help)
    video.add_argument(
        "--frame-rate", type=_positive, default=DEFAULT_FRAME_RATE, help=f"fps (default: {DEFAULT_FRAME_RATE})"
    )
    from .validation import MAX_INFERENCE_STEPS

    steps = "the pipeline's: 30 for LTX-2.3, 40 for LTX-2, 8 for distilled" if num_inference_steps is None else None
    video.add_argument(
        "--num-inference-steps",
        type=int,
        default=num_inference_steps,
        help=f"stage-1 denoising steps, 2..{MAX_INFERENCE_STEPS} (default: {steps or num_inference_steps})",
    )
    video.add_argument(
        "--seed", type=_seed, default=DEFAULT_SEED, help=f"random seed in [0, 2**63 - 1] (default: {DEFAULT_SEED})"
    )
    video.add_argument(
        "--stage-2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="upsample x2 and refine with the distilled LoRA (default: on); --no-stage-2 renders one stage at "
        "the requested size",
    )
    return video


def add_video_guidance_arguments(parser, defaults: bool = True) -> None:
    """The video guider's flags; `defaults=False` leaves them None (the pipeline's default guidance)."""
    guidance = parser.add_argument_group("video guidance")

    def default(value):
        return value if defaults else None

    def shown(value):
        return value if defaults else f"the pipeline's, {value} for LTX-2.3"

    for flag, kind, value, what in (
        ("--video-cfg-guidance-scale", _finite, DEFAULT_CFG_SCALE, "classifier-free guidance; 1 = off"),
        ("--video-stg-guidance-scale", _finite, DEFAULT_STG_SCALE, "spatio-temporal guidance; 0 = off"),
        ("--video-rescale-scale", _finite, DEFAULT_RESCALE_SCALE, "rescale of the guided prediction; 0 = off"),
        ("--a2v-guidance-scale", _finite, DEFAULT_MODALITY_SCALE, "audio-to-video (modality) guidance; 1 = off"),
    ):
        guidance.add_argument(flag, type=kind, default=default(value), help=f"{what} (default: {shown(value)})")
    blocks = " ".join(map(str, DEFAULT_STG_BLOCKS))
    guidance.add_argument(
        "--video-stg-blocks",
        type=_non_negative_int,
        nargs="*",
        default=default(list(DEFAULT_STG_BLOCKS)),
        help=f"transformer blocks perturbed by STG (default: {shown(blocks)})",
    )
    guidance.add_argument(
        "--video-skip-step",
        type=_non_negative_int,
        default=default(DEFAULT_SKIP_STEP),
        help=f"guide only steps with index %% (N + 1) == 0 (default: {shown(DEFAULT_SKIP_STEP)})",
    )


def add_audio_guidance_arguments(parser, title: str, effect: str, defaults: bool = True) -> None:
    """The audio guider's flags (`--audio-*`, `--v2a-guidance-scale`); `effect` ends each help text."""
    audio = parser.add_argument_group(title)
    for flag, kind, what in (
        ("--audio-cfg-guidance-scale", _finite, "audio classifier-free guidance"),
        ("--audio-stg-guidance-scale", _finite, "audio STG"),
        ("--audio-rescale-scale", _finite, "audio rescale"),
        ("--v2a-guidance-scale", _finite, "video-to-audio (modality) guidance"),
        ("--audio-skip-step", _non_negative_int, "audio skip step"),
    ):
        value = DEFAULT_AUDIO_GUIDANCE[flag[2:].replace("-", "_")]
        shown = value if defaults else f"the pipeline's, {value} for LTX-2.3"
        audio.add_argument(
            flag, type=kind, default=value if defaults else None, help=f"{what}{effect} (default: {shown})"
        )
    audio.add_argument(
        "--audio-stg-blocks",
        type=_non_negative_int,
        nargs="*",
        default=list(DEFAULT_AUDIO_GUIDANCE["audio_stg_blocks"]) if defaults else None,
        help=f"blocks of audio STG{effect} (default: {28 if defaults else 'the pipeline' + chr(39) + 's, 28 for LTX-2.3'})",
    )


def add_run_arguments(parser):
    """Placement, batching, output path, size bounds and `--context-parallel`; returns the group."""
    from .cli_safety import OUTPUT_EXTENSIONS

    run = parser.add_argument_group("run and output")
    run.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="none: everything on --device; model / sequential / group: diffusers' CPU offloading (default: the "
        "memory tier, see --memory-budget-gib)",
    )
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--vae-tiling", action="store_true", help="decode the video in tiles (less memory)")
    add_memory_arguments(run)
    run.add_argument(
        "--guidance-batch-size",
        type=_positive_int,
        default=None,
        help="guidance passes per transformer forward (default: all of a step's passes in one batched forward)",
    )
    run.add_argument(
        "--reference-arithmetic",
        action="store_true",
        help="one pass per forward and LoRAs fused as ltx-core fuses them: bit-identical to ltx-pipelines",
    )
    run.add_argument(
        "--context-parallel",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run the transformer sequence-parallel over N processes: launch with torchrun --nproc-per-node N "
        "(one GPU each, or gloo on CPU); rank 0 writes the outputs",
    )
    run.add_argument(
        "--output-path",
        required=True,
        help=f"output video ({', '.join(OUTPUT_EXTENSIONS)}); never one of the inputs; written under a temporary "
        "name and renamed when complete; missing folders are created",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output video (and the sync reports / sweep tables this run writes); without it "
        "an existing file is refused before anything loads",
    )
    run.add_argument(
        "--max-num-frames",
        type=_positive_int,
        default=None,
        help="raise the bound on the frame count (default 1001, ltx2_diffusers.validation.MAX_NUM_FRAMES)",
    )
    run.add_argument(
        "--max-video-tokens",
        type=_positive_int,
        default=None,
        help="raise the bound on the video latent tokens ((F-1)/8+1)*(H/32)*(W/32) (default 262144)",
    )
    return run


#: The fewest frames `--sync-report` (and `ltx2-a2v`'s `--modality-scale-sweep`) measure: `sync_report` needs 4, and
#: below 9 the only `8k + 1` count is 1.
SYNC_REPORT_MIN_FRAMES = 9


def add_sync_report_argument(group) -> None:
    """`--sync-report`: the audio-video sync report of the written mp4 beside it."""
    group.add_argument(
        "--sync-report",
        action="store_true",
        help="also write the audio-video sync report (<output>_sync.png and .json) next to the video",
    )


def check_sync_frames(parser, args, flags=("--sync-report",)) -> None:
    """The sync-measuring `flags` given with fewer than `SYNC_REPORT_MIN_FRAMES` frames: a parser error naming them
    (`--num-frames auto`, None, is bounded by the audio and checked when the video is measured)."""
    given = any(getattr(args, flag[2:].replace("-", "_"), None) for flag in flags)
    if given and args.num_frames is not None and args.num_frames < SYNC_REPORT_MIN_FRAMES:
        need = "need" if len(flags) > 1 else "needs"
        parser.error(f"{' and '.join(flags)} {need} --num-frames >= {SYNC_REPORT_MIN_FRAMES}")


class _OffloadDefault(str):
    """`--offload`'s default, equal to "none" but told apart from an explicit `--offload none`."""


def add_memory_arguments(group) -> None:
    """`--memory-budget-gib`: the memory tier (`pipelines/memory.py`) for a budget; `--offload`'s default becomes
    "the tier" (on CUDA the free GPU memory, at most `memory.DEFAULT_MEMORY_BUDGET_GIB`, is the budget). An
    explicit `--offload` places the pipeline as asked."""
    group.add_argument(
        "--memory-budget-gib",
        type=_positive,
        default=None,
        metavar="GIB",
        help="GPU memory the run may use: picks the fastest placement whose estimated peak fits (everything "
        "resident; transformer blocks streamed from pinned host memory, as many kept resident as fit; model "
        "offload; block, then leaf group offload with a CUDA stream; tiled decode). Default on CUDA without "
        "--offload: the free GPU memory, at most 40 GiB. Not with --offload, --context-parallel or a CPU device",
    )
    group.set_defaults(offload=_OffloadDefault("none"))


def offload_given(args) -> bool:
    """Whether `--offload` was given (its default is the memory tier)."""
    return not isinstance(args.offload, _OffloadDefault)


def check_memory_args(parser, args) -> None:
    """`--memory-budget-gib` chooses the offloading itself: refused with `--offload`, `--context-parallel` or
    a device that is not CUDA."""
    if getattr(args, "memory_budget_gib", None) is None:
        return
    from .cli_running import device_of

    if offload_given(args):
        parser.error(f"--memory-budget-gib chooses the offloading itself; drop --offload {args.offload} or the budget")
    if getattr(args, "context_parallel", None) is not None:
        parser.error("--memory-budget-gib cannot be combined with --context-parallel: every rank holds the model")
    if device_of(args).type != "cuda":
        parser.error(f"--memory-budget-gib needs a CUDA device, got {device_of(args)} (no GPU memory to budget)")


COMPILE_MODES = {"auto": "auto", "on": True, "off": False}  # --compile -> set_transformer_acceleration(compile=)


def _attention_backend(text: str) -> str:
    from .pipelines.acceleration import TransformerAcceleration, check_attention_backend

    try:
        check_attention_backend(TransformerAcceleration(attention_backend=text).attention_backend)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_acceleration_arguments(parser) -> None:
    """`--compile {auto,on,off}` and `--attention-backend NAME` (`pipe.set_transformer_acceleration`)."""
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--compile",
        choices=tuple(COMPILE_MODES),
        default="auto",
        help="regional torch.compile of the transformer blocks: auto (on CUDA, not with --reference-arithmetic, "
        "sequential/group offload or --context-parallel), on (any device), off (default: auto)",
    )
    speed.add_argument(
        "--attention-backend",
        type=_attention_backend,
        default="auto",
        metavar="NAME",
        help="diffusers attention backend of the transformer (e.g. native, flash, _native_cudnn), or auto: the one "
        "measured fastest for the GPU (default: auto)",
    )


def check_acceleration(parser, args) -> None:
    """`--compile on` cannot compile blocks that carry offload hooks (`--offload sequential` / `group`)."""
    if getattr(args, "compile", "auto") == "on" and args.offload in ("sequential", "group"):
        parser.error(
            f"--compile on cannot compile the transformer blocks under --offload {args.offload} (its hooks sit "
            "inside the blocks); use --compile auto (eager there) or --offload model"
        )


# ---------------------------------------------------------------------------------------------------- checks
def require_file(parser, flag, path):
    if not os.path.isfile(path):
        parser.error(f"{flag}: no such file {path!r}")


def check_size_and_steps(parser, args) -> None:
    multiple = 64 if args.stage_2 else 32
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value <= 0 or value % multiple:
            stages = "two stages" if args.stage_2 else "--no-stage-2"
            parser.error(f"{flag} must be a positive multiple of {multiple} with {stages}, got {value}")
    from .validation import MAX_INFERENCE_STEPS

    steps = args.num_inference_steps
    if steps is not None and not 2 <= steps <= MAX_INFERENCE_STEPS:
        parser.error(f"--num-inference-steps must be in [2, {MAX_INFERENCE_STEPS}], got {steps}")


def check_model_files(parser, args, need_distilled_lora: bool = True) -> None:
    """The model flags' files and folders exist; `--checkpoint-path` comes with what two stages need."""
    if args.checkpoint_path is not None:
        require_file(parser, "--checkpoint-path", args.checkpoint_path)
        if args.gemma_root is None:
            parser.error("--gemma-root is required with --checkpoint-path")
        if args.stage_2:
            needed = [("--spatial-upsampler-path", args.spatial_upsampler_path)]
            if need_distilled_lora:
                needed.append(("--distilled-lora", args.distilled_lora))
            for flag, value in needed:
                if value is None:
                    parser.error(f"{flag} is required with --checkpoint-path for two stages (or pass --no-stage-2)")
    elif os.path.exists(args.model) and not os.path.isdir(args.model):
        parser.error(f"--model must be a converted folder or a Hub id, got the file {args.model!r}")
    if args.spatial_upsampler_path is not None:
        require_file(parser, "--spatial-upsampler-path", args.spatial_upsampler_path)
    if args.distilled_lora is not None:
        require_file(parser, "--distilled-lora", args.distilled_lora[0])
    for path, _ in args.lora:
        require_file(parser, "--lora", path)
    if args.quantization_amax_path is not None:
        require_file(parser, "--quantization fp8-scaled-mm AMAX_PATH", args.quantization_amax_path)
    if args.gemma_root is not None and not os.path.isdir(args.gemma_root):
        parser.error(f"--gemma-root: no such folder {args.gemma_root!r}")
    for path, frame, _, _ in args.images:
        require_file(parser, "--image", path)
        if args.num_frames is not None and frame >= args.num_frames:
            parser.error(f"--image {path}: FRAME {frame} is out of range for --num-frames {args.num_frames}")


def check_run_args(parser, args) -> None:
    """`--device`, `--offload`, `--context-parallel` (torchrun's environment) and the output path's folders."""
    if args.device is not None:
        try:
            check_device(args.device)
        except ValueError as error:
            parser.error(str(error))
    from .cli_running import device_of

    if args.offload == "sequential" and device_of(args).type == "cpu":
        # accelerate's per-weight hooks cannot round-trip weights when the onload device is the CPU itself.
        parser.error("--offload sequential needs an accelerator device; on cpu there is nothing to offload to")
    check_context_parallel(parser, args)
    check_memory_args(parser, args)
    check_acceleration(parser, args)
    if os.path.isdir(args.output_path):
        parser.error(f"--output-path {args.output_path!r} is a folder; give a file name such as out.mp4")
    from .cli_safety import check_output_folder

    try:
        check_output_folder("--output-path", args.output_path)
    except ValueError as error:
        parser.error(str(error))


def check_device(text: str):
    """`--device`: a torch device that can hold tensors with data and is present here (the CPU, an available
    CUDA / XPU / MPS device); the `meta` device (shapes only) and unknown or absent devices are refused."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise ValueError(f"--device {text!r}: {error}") from None
    if device.type == "meta":
        raise ValueError(f"--device {text!r}: the meta device holds no data; use cpu or cuda")
    if device.type == "cpu":
        return device
    available = {
        "cuda": lambda: torch.cuda.is_available(),
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
        "mps": lambda: torch.backends.mps.is_available(),
    }
    if device.type not in available:
        raise ValueError(f"--device {text!r}: {device.type} devices are not supported; use cpu, cuda, xpu or mps")
    if not available[device.type]():
        raise ValueError(f"--device {text}: {device.type.upper()} is not available")
    if device.type != "mps" and device.index is not None:
        count = getattr(torch, device.type).device_count()
        if device.index >= count:
            raise ValueError(f"--device {text!r}: there are only {count} {device.type} device(s)")
    return device


def check_context_parallel(parser, args) -> None:
    """`--context-parallel N`: N >= 2, launched by torchrun with N processes, everything on the rank's device."""
    n = getattr(args, "context_parallel", None)
    if n is None:
        return
    if n < 2:
        parser.error(f"--context-parallel must be >= 2 (the number of processes), got {n}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        parser.error(
            f"--context-parallel {n} needs torchrun's environment (RANK, WORLD_SIZE): launch as "
            f"torchrun --nproc-per-node {n} -m ltx2_diffusers.<cli> ... --context-parallel {n}"
        )
    if os.environ["WORLD_SIZE"] != str(n):
        parser.error(
            f"--context-parallel {n} but torchrun launched WORLD_SIZE={os.environ['WORLD_SIZE']} processes; "
            "they must be equal"
        )
    if args.offload != "none":
        parser.error(
            f"--context-parallel cannot be combined with --offload {args.offload}: every rank holds the model"
        )
    if args.device is not None:
        parser.error("--context-parallel picks each rank's device (LOCAL_RANK's GPU, else cpu); drop --device")
