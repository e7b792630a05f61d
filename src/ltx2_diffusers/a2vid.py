"""Audio-to-video command line: `python -m ltx2_diffusers.a2vid` / `ltx2-a2v`.

The flags and their defaults are those of ltx-pipelines' `a2vid_two_stage` (LTX-2.3 parameters; every one of its
flags is accepted), plus model loading from a converted folder (`--model`), offloading, `--stage-2/--no-stage-2`,
`--sync-report`, `--modality-scale-sweep`, the size bounds `--max-num-frames` / `--max-video-tokens` and
`--context-parallel N` (under `torchrun --nproc-per-node N`; rank 0 writes). The flags shared with `ltx2-av` live
in `cli_common`.
Deviations: `--distilled-lora PATH` without a strength uses 0.8 (the strength the converter and `from_single_file`
use; the reference CLI uses 1.0). The audio-guidance flags (`--audio-*`, `--v2a-guidance-scale`) are accepted and
have no effect, as in the reference A2Vid pipeline: the audio is frozen (a warning says so when one is changed).

Nothing is loaded before every cheap check has passed: flags, input files (existence, safetensors headers, audio
streams, decodable images), the output path (never one of the inputs, a container that can carry H.264 + AAC, no
file among its folders, and no existing output unless `--overwrite`). Missing output folders are created before
loading and removed again if the run fails. Outputs are written under temporary names in their folder and renamed
when complete, so a failed or interrupted run leaves an existing file untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from diffusers.utils import logging

from . import cli_common, cli_running
from .cli_common import (  # noqa: F401  (the shared flags' defaults and helpers stay importable from here)
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
    _finite,
    _non_negative,
    _positive,
)
from .cli_running import aac_compatible as _aac_compatible
from .cli_running import conditions_from_args as _conditions
from .cli_running import device_of as _device
from .cli_running import fp8_cast, is_main_process, load_user_loras, prepare_pipeline  # noqa: F401
from .cli_running import peak_memory as _peak_memory
from .cli_running import text_writer as _write_text
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


def _num_frames(text: str):
    """An `8k + 1` frame count, or `auto` (None): the largest count the audio covers."""
    if text.strip().lower() == "auto":
        return None
    if not text.strip().lstrip("+-").isdigit():
        raise argparse.ArgumentTypeError(f"expected 8k + 1 (9, 17, ..., 121) or 'auto', got {text!r}")
    return cli_common._frame_count(text)


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
    cli_common.add_model_arguments(parser)
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
    cli_common.add_prompt_arguments(
        inputs,
        DEFAULT_NEGATIVE_PROMPT,
        "rewrite the prompt with the text encoder before encoding (as the reference; refused if this pipeline "
        "version has no prompt enhancement)",
    )
    cli_common.add_video_arguments(
        parser,
        _num_frames,
        f"8k + 1, or 'auto' for the largest count the audio covers (default: {DEFAULT_NUM_FRAMES})",
    )
    cli_common.add_video_guidance_arguments(parser)
    cli_common.add_audio_guidance_arguments(
        parser,
        "audio guidance (accepted as the reference CLI accepts them; no effect: the audio is frozen)",
        "; no effect on frozen audio",
    )
    run = cli_common.add_run_arguments(parser)
    cli_common.add_sync_report_argument(run)
    run.add_argument(
        "--modality-scale-sweep",
        type=_sweep,
        default=None,
        metavar="S1,S2,...",
        help="render one clip per a2v guidance scale (same seed; replaces --a2v-guidance-scale) and write a "
        "side-by-side sync table (<output>_modality_sweep.json / .md)",
    )
    cli_common.add_acceleration_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check `argv`; bad values end in argparse errors naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    cli_common.check_size_and_steps(parser, args)
    try:
        check_values(args)
    except ValueError as error:
        parser.error(str(error))
    cli_common.check_model_files(parser, args)
    cli_common.require_file(parser, "--audio-path", args.audio_path)
    cli_common.check_sync_frames(parser, args, ("--sync-report", "--modality-scale-sweep"))
    cli_common.check_run_args(parser, args)
    try:
        check_outputs(args)
        check_features(args)
    except ValueError as error:
        parser.error(str(error))
    warn_audio_guidance(args, DEFAULT_AUDIO_GUIDANCE)


# ---------------------------------------------------------------------------------------------------- running
def load_pipeline(args):
    """The pipeline from `--checkpoint-path` or `--model`, with the optional component overrides and `--lora`."""
    from .pipelines.pipeline_ltx2_audio_to_video import LTX2AudioToVideoPipeline

    pipe = cli_running.load_pipeline_from_args(LTX2AudioToVideoPipeline, args)
    load_user_loras(pipe, args.lora)
    return pipe


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


def _generate(pipe, args, device, modality_scale, text):
    from .video_io import frames_to_uint8

    generator = cli_running.make_generator(args, device)
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
        output_type="pt",  # frames stay on the device until frames_to_uint8 (no float video on the host)
        **({"enhance_prompt": True} if args.enhance_prompt else {}),
        **text,
    )
    return frames_to_uint8(result.frames[0]), result.audio, result.audio_sample_rate


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


def run(args) -> list[str]:
    """Check the input files, create the output's folders, load, generate, write; returns the written paths."""
    preflight(args)
    with cli_running.creating_output_folders(args):  # created before loading; removed again (when empty) on a failure
        return _render(args)


def _render(args) -> list[str]:
    import torch

    from .video_io import export_to_video_with_audio

    start = time.perf_counter()
    pipe = load_pipeline(args)
    device = prepare_pipeline(pipe, args, _device(args)) or _device(args)
    main_process = is_main_process()  # with --context-parallel only rank 0 writes and reports
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

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
        if not main_process:
            continue
        audio, sample_rate = _aac_compatible(audio.numpy(), sample_rate)
        export_to_video_with_audio(frames, audio, sample_rate, path, fps=args.frame_rate, overwrite=args.overwrite)
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
                written += cli_running.write_sync_report(path, report, overwrite=args.overwrite)
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

    if not main_process:
        return written
    if args.modality_scale_sweep is not None:
        stem = os.path.splitext(args.output_path)[0]
        table = sweep_table(rows)
        header = f"Modality-scale sweep, seed {args.seed}, prompt: {args.prompt!r}\n\n{table}\n"
        write_atomically(f"{stem}_modality_sweep.md", _write_text(header), overwrite=args.overwrite)
        clips = {"seed": args.seed, "prompt": args.prompt, "clips": rows}
        write_atomically(
            f"{stem}_modality_sweep.json", _write_text(json.dumps(clips, indent=1)), overwrite=args.overwrite
        )
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
