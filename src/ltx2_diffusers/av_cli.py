"""Text (and images) to audio + video command line: `ltx2-av` / `python -m ltx2_diffusers.av_cli`.

Runs `LTX2AudioVideoPipeline` (ltx-pipelines' `TI2VidTwoStagesPipeline`): one mp4 whose H.264 video and AAC audio
are both generated. The flags are `ltx2-a2v`'s (`cli_common`: model loading, `--lora`, `--quantization`,
offloading, `--context-parallel`, output safety) with the same names as the reference CLI; here the audio guidance
flags (`--audio-*`, `--v2a-guidance-scale`) apply. Guidance flags, `--num-inference-steps` and `--negative-prompt`
left out take the pipeline's defaults (LTX-2.3: 30 steps, video cfg 3 / audio cfg 7; LTX-2: 40 steps; a distilled
checkpoint: its 8-step schedule without guidance); a guidance flag that is given overrides only its own field of
the LTX-2.3 guidance (video: cfg 3, STG 1 on block 28, rescale 0.7, a2v 3; audio: cfg 7, otherwise the same).

`--distilled` is ltx-pipelines' `distilled.py` recipe: 8 fixed stage-1 sigmas (`DISTILLED_SIGMAS`), no guidance
(and so no negative prompt), stage 2 on the same weights. On a dev checkpoint the distilled LoRA (`--distilled-lora
PATH [STRENGTH]`, else the converted folder's own) is applied to BOTH stages as the adapter `distilled_stage_1`, as
the reference does when it is passed to the distilled pipeline as `--lora`; the pipeline's own stage-2 LoRA runs at
strength 0 (it stays loaded, as the pipeline's stage 2 expects it), so the LoRA is not added twice. On a distilled
checkpoint nothing is added. The preset fixes the schedule and guidance, so those flags are refused with it.

`--sync-report` measures the written mp4 (the generated video's motion against its generated audio track) and
writes `<output>_sync.png` and `<output>_sync.json` beside it, as `ltx2-a2v --sync-report` does.

Nothing is loaded before the cheap checks pass (flags, files, safetensors headers, images, the output path and the
sync report's paths never one of the inputs, no file among their folders, none existing unless `--overwrite`);
missing output folders are created before loading (removed again if the run fails); every file is written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from diffusers.utils import logging

from . import cli_common, cli_running
from .cli_common import AUDIO_GUIDANCE_FLAGS, DEFAULT_NUM_FRAMES, VIDEO_GUIDANCE_FLAGS
from .cli_running import device_of, is_main_process, load_user_loras, prepare_pipeline
from .cli_safety import check_features, check_outputs, check_values, preflight


logger = logging.get_logger(__name__)

PROG = "ltx2-av"
#: The adapter name of the distilled LoRA that `--distilled` applies to both stages of a dev checkpoint.
DISTILLED_ADAPTER = "distilled_stage_1"


def pipeline_class():
    """`LTX2AudioVideoPipeline`, imported when first needed (`ValueError` if this installation lacks it)."""
    try:
        from .pipelines.pipeline_ltx2_audio_video import LTX2AudioVideoPipeline
    except ImportError as error:
        raise ValueError(f"this installation has no LTX2AudioVideoPipeline ({error}); update ltx2-diffusers") from None
    return LTX2AudioVideoPipeline


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no model is touched)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="LTX-2 / LTX-2.3 text (and images) to audio + video: an mp4 carrying the generated audio. "
        "Flags follow ltx-pipelines' ti2vid_two_stages and ltx2-a2v.",
    )
    cli_common.add_model_arguments(parser)
    inputs = parser.add_argument_group("inputs")
    cli_common.add_prompt_arguments(
        inputs,
        None,
        "rewrite the prompt with the text encoder before encoding (the image variant with an --image at frame 0)",
        negative_help="what the video should not show (default: the pipeline's, the reference's long one)",
    )
    video = cli_common.add_video_arguments(
        parser,
        cli_common._frame_count,
        f"8k + 1 (default: {DEFAULT_NUM_FRAMES})",
        num_inference_steps=None,
    )
    video.add_argument(
        "--sigmas",
        type=cli_common._sigmas,
        default=None,
        metavar="S0,S1,...,0",
        help="the stage-1 sigma table, falling to 0 (its length fixes the steps; default: the pipeline's)",
    )
    cli_common.add_video_guidance_arguments(parser, defaults=False)
    cli_common.add_audio_guidance_arguments(parser, "audio guidance", "", defaults=False)
    preset = parser.add_argument_group("presets")
    preset.add_argument(
        "--distilled",
        action="store_true",
        help="ltx-pipelines' distilled recipe: 8 fixed stage-1 sigmas, no guidance; on a dev checkpoint the "
        "distilled LoRA (--distilled-lora, else the folder's) runs in both stages",
    )
    run = cli_common.add_run_arguments(parser)
    cli_common.add_sync_report_argument(run)
    cli_common.add_acceleration_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check `argv`; bad values end in argparse errors naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _checkpoint_variant(parser, path) -> str:
    try:
        return cli_running.checkpoint_variant(path)
    except ValueError as error:
        parser.error(f"--checkpoint-path: {error}")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    cli_common.check_size_and_steps(parser, args)
    if args.sigmas is not None and args.num_inference_steps not in (None, len(args.sigmas) - 1):
        parser.error(
            f"--num-inference-steps {args.num_inference_steps} but --sigmas holds {len(args.sigmas) - 1} steps"
        )
    try:
        check_values(args, audio_guidance=True)
    except ValueError as error:
        parser.error(str(error))
    args.checkpoint_variant = None
    if args.checkpoint_path is not None and os.path.isfile(args.checkpoint_path):
        args.checkpoint_variant = _checkpoint_variant(parser, args.checkpoint_path)
    if args.distilled:
        fixed = [
            f"--{name.replace('_', '-')}"
            for name in (
                *VIDEO_GUIDANCE_FLAGS,
                *AUDIO_GUIDANCE_FLAGS,
                "sigmas",
                "num_inference_steps",
                "negative_prompt",
            )
            if getattr(args, name) is not None
        ]
        if fixed:
            parser.error(f"--distilled fixes the schedule and guidance; drop {', '.join(fixed)}")
        if args.checkpoint_variant == "dev" and args.distilled_lora is None:
            parser.error("--distilled on a dev checkpoint needs the distilled LoRA: --distilled-lora PATH [STRENGTH]")
    if args.checkpoint_variant == "distilled" and args.distilled_lora is not None:
        parser.error(f"--distilled-lora: {args.checkpoint_path!r} is already a distilled checkpoint")
    # A dev checkpoint's stage 2 needs the distilled LoRA, except in the preset (the stage-1 adapter stays on).
    need_lora = args.checkpoint_variant == "dev" and not args.distilled
    cli_common.check_model_files(parser, args, need_distilled_lora=need_lora)
    cli_common.check_sync_frames(parser, args)
    cli_common.check_run_args(parser, args)
    try:
        check_outputs(args)
        check_features(args, pipeline_class() if args.enhance_prompt else None)
    except ValueError as error:
        parser.error(str(error))


# ---------------------------------------------------------------------------------------------------- running
def load_pipeline(args):
    """The pipeline from `--checkpoint-path` or `--model`, the component overrides, and the adapters: `--lora`,
    and with `--distilled` on a dev model the distilled LoRA as adapter `distilled_stage_1` (both stages)."""
    pipe = cli_running.load_pipeline_from_args(pipeline_class(), args)
    loras, names = list(args.lora), [f"cli_lora_{i}" for i in range(len(args.lora))]
    stage_1 = distilled_stage_1_lora(pipe, args) if args.distilled else None
    if stage_1 is not None:
        loras, names = [stage_1, *loras], [DISTILLED_ADAPTER, *names]
    load_user_loras(pipe, loras, names)
    args.distilled_stage_1_applied = stage_1 is not None
    return pipe


def distilled_stage_1_lora(pipe, args):
    """`(source, strength)` of the LoRA `--distilled` applies to both stages, or None on a distilled model:
    `--distilled-lora`, else the converted folder's `distilled_lora` at its `distilled_lora_scale`."""
    variant = args.checkpoint_variant or dict(pipe.config).get("model_variant", "dev")
    if variant == "distilled":
        if args.distilled_lora is not None:
            raise ValueError(f"--distilled-lora: {args.model!r} is already a distilled model")
        return None
    if args.distilled_lora is not None:
        return args.distilled_lora
    if getattr(pipe, "distilled_lora", None) is not None:
        return pipe.distilled_lora.lora_state_dict(), float(pipe.config.distilled_lora_scale)
    raise ValueError(
        f"--distilled: {args.model!r} is a dev model without a distilled LoRA; pass --distilled-lora PATH [STRENGTH]"
    )


def call_arguments(args, generator) -> dict:
    """The pipeline call the flags ask for (flags left None are left to the pipeline)."""
    from .guidance import MultiModalGuidance

    kwargs = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "conditions": cli_running.conditions_from_args(args),
        "height": args.height,
        "width": args.width,
        "num_frames": args.num_frames,
        "frame_rate": args.frame_rate,
        "num_inference_steps": args.num_inference_steps,
        "sigmas": None if args.sigmas is None else list(args.sigmas),
        "video_guidance": cli_running.guidance_from_flags(args, VIDEO_GUIDANCE_FLAGS),
        "audio_guidance": cli_running.guidance_from_flags(
            args, AUDIO_GUIDANCE_FLAGS, cli_running.default_audio_guidance()
        ),
        "stage_2": args.stage_2,
        "generator": generator,
        "output_type": "pt",  # frames stay on the device until frames_to_uint8 (no float video on the host)
    }
    if args.distilled:
        from .schedules import DISTILLED_SIGMAS

        kwargs["sigmas"] = list(DISTILLED_SIGMAS)
        kwargs["video_guidance"] = MultiModalGuidance.disabled()
        kwargs["audio_guidance"] = MultiModalGuidance.disabled()
        if getattr(args, "distilled_stage_1_applied", False):
            kwargs["distilled_lora_scale"] = 0.0  # the stage-1 adapter stays on for stage 2, as in distilled.py
    if args.enhance_prompt:
        kwargs["enhance_prompt"] = True
    return kwargs


def _waveform(audio):
    """`(channels, samples)` float32 numpy from the pipeline's audio (a tensor or array, with or without batch)."""
    import numpy as np

    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    return audio[0] if audio.ndim == 3 else audio


def run(args) -> str | None:
    """Check the input files, create the output's folders, load, generate, write the mp4 and with `--sync-report`
    its sync report (rank 0); returns the mp4's path (None on other ranks)."""
    preflight(args)
    with cli_running.creating_output_folders(args):  # created before loading; removed again (when empty) on a failure
        return _render(args)


def _render(args) -> str | None:
    import torch

    from .video_io import export_to_video_with_audio, frames_to_uint8

    start = time.perf_counter()
    pipe = load_pipeline(args)
    device = prepare_pipeline(pipe, args, device_of(args)) or device_of(args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = pipe(**call_arguments(args, cli_running.make_generator(args, device)))
    if not is_main_process():  # with --context-parallel only rank 0 writes
        return None
    frames = frames_to_uint8(result.frames[0])
    audio, sample_rate = cli_running.aac_compatible(_waveform(result.audio), int(result.audio_sample_rate))
    export_to_video_with_audio(
        frames, audio, sample_rate, args.output_path, fps=args.frame_rate, overwrite=args.overwrite
    )
    num_frames, height, width = frames.shape[:3]
    print(
        f"wrote {args.output_path}: {num_frames} frames, {width}x{height}, {args.frame_rate:g} fps, "
        f"{audio.shape[-1] / sample_rate:.2f} s of audio at {sample_rate} Hz"
    )
    if args.sync_report:
        cli_running.write_sync_report(args.output_path, overwrite=args.overwrite)
    print(f"done in {time.perf_counter() - start:.1f} s on {device}, {cli_running.peak_memory(device)}")
    return args.output_path


def main(argv=None) -> int:
    """Entry point of `ltx2-av` and `python -m ltx2_diffusers.av_cli`."""
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError) as error:  # bad inputs refused
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
