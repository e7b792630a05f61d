"""`ltx2-a2v`'s and `ltx2-av`'s protection of the user's files and its cheap checks, run before any model loads.

- `check_outputs`: every file the run will write (`planned_outputs`: the video or sweep clips, sync reports,
  sweep tables) has a container that can carry H.264 + AAC, is not a folder or special file, does not exist yet
  (unless `--overwrite`: never replace what this run did not create without being told), and is not one of the
  inputs (the same file by inode or resolved path: symlinks and hard links included) nor an existing file inside
  an input folder (`--model`, `--gemma-root`), even with `--overwrite`.
- `check_output_folder`: no folder above an output is a file, the nearest existing one is a writable folder;
  `creating_missing_folders` creates the missing ones before the work and removes them again (when still empty) if it fails.
- `preflight`: the input files' contents: safetensors headers (LoRAs: floating point dtypes only), an audio
  stream in `--audio-path` that covers the video and, with `--num-frames auto`, gives at most `--max-num-frames`
  frames (from the header, before any decoding), decodable condition images.
- `write_atomically`: write under a temporary name beside the target and rename when complete; without
  `--overwrite` the rename never replaces a file that appeared meanwhile (another run with the same name).
- `check_values` / `check_features`: flag values against `ltx2_diffusers.validation`'s bounds; flags this
  installation cannot honour (`--enhance-prompt`, `--quantization fp8-scaled-mm`).

Every refusal is a `ValueError` naming the flag and the file.
"""

from __future__ import annotations

import contextlib
import math
import os

from diffusers.utils import logging

from .video_io import CONTAINERS


__all__ = [
    "OUTPUT_EXTENSIONS",
    "check_features",
    "check_output_folder",
    "check_name_length",
    "check_outputs",
    "check_same_files",
    "check_values",
    "creating_missing_folders",
    "input_paths",
    "planned_outputs",
    "preflight",
    "same_file",
    "sweep_path",
    "sync_report_paths",
    "warn_audio_guidance",
    "write_atomically",
]

logger = logging.get_logger(__name__)

# Containers that carry an H.264 video track with an AAC audio track (the extension picks the container): the ones
# `export_to_video_with_audio` writes.
OUTPUT_EXTENSIONS = CONTAINERS
#: How many bytes `video_io.partial_path` adds to a file's name (`.` + `.` + 12 hex + `.partial`).
PARTIAL_NAME_EXTRA = 22


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same inode (hard links, symlinks) or the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def sweep_path(output_path: str, scale: float) -> str:
    """`out.mp4` -> `out_modality3.mp4` (`out_modality2.5.mp4`, `out_modality-1.mp4`)."""
    stem, ext = os.path.splitext(output_path)
    return f"{stem}_modality{scale:g}{ext or '.mp4'}"


def sync_report_paths(video_path: str) -> tuple[str, str]:
    """Where `--sync-report` writes: `<video stem>_sync.png` and `<video stem>_sync.json`."""
    stem = os.path.splitext(video_path)[0]
    return f"{stem}_sync.png", f"{stem}_sync.json"


def planned_outputs(args) -> list[str]:
    """Every file the run writes: the video(s), the sync reports and the sweep tables."""
    sweep = getattr(args, "modality_scale_sweep", None)
    videos = [args.output_path] if sweep is None else [sweep_path(args.output_path, scale) for scale in sweep]
    paths = list(videos)
    if getattr(args, "sync_report", False):
        for video in videos:
            paths += sync_report_paths(video)
    if sweep is not None:
        stem = os.path.splitext(args.output_path)[0]
        paths += [f"{stem}_modality_sweep.md", f"{stem}_modality_sweep.json"]
    return paths


def input_paths(args) -> list[tuple[str, str]]:
    """`(flag, path)` of every input file and folder."""
    audio = getattr(args, "audio_path", None)
    inputs = [("--audio-path", audio)] if audio is not None else []
    inputs += [("--image", path) for path, _, _, _ in args.images]
    inputs += [("--lora", path) for path, _ in args.lora]
    for flag, value in (
        ("--checkpoint-path", args.checkpoint_path),
        ("--distilled-lora", args.distilled_lora[0] if args.distilled_lora else None),
        ("--spatial-upsampler-path", args.spatial_upsampler_path),
        ("--quantization fp8-scaled-mm AMAX_PATH", args.quantization_amax_path),
        ("--gemma-root", args.gemma_root),
        ("--model", args.model if args.model is not None and os.path.isdir(args.model) else None),
    ):
        if value is not None:
            inputs.append((flag, value))
    return inputs


def _folders_up(path: str):
    """The folders above `path`, nearest first, as strings the kernel resolves (no `os.path.abspath`, which would
    drop a `..` that follows a symbolic link lexically instead of after the link), ending at the first that exists
    (or is a link to nowhere)."""
    folder = os.path.dirname(path) or os.curdir
    while True:
        yield folder
        if os.path.lexists(folder) or folder in (os.curdir, os.path.dirname(folder)):
            return
        folder = os.path.dirname(folder) or os.curdir


def check_output_folder(flag: str, path: str) -> None:
    """Every folder above `path` can hold it: none is an existing file (or a link to nowhere), and the nearest
    existing one is a folder this process may write in. ValueError naming `flag` and the offending folder. The
    folders are the kernel's reading of `path` (`_folders_up`: `link/../x.mp4` is beside the link's target)."""
    for folder in _folders_up(path):
        if os.path.exists(folder):
            break
        if os.path.lexists(folder):
            raise ValueError(f"{flag} {path!r}: {folder!r} is a link to nowhere, not a folder")
    folder = os.path.realpath(folder)  # the folder itself, named in the messages
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: {folder!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} is not writable")


def check_name_length(flag: str, path: str, extra: int) -> None:
    """`path`'s own name, plus the `extra` bytes of the temporary name written beside it first, fits the file
    system's limit on one name (`NAME_MAX` of the nearest existing folder, usually 255 bytes); ValueError naming
    `flag` otherwise, before any work (else the run would fail with `OSError` only when it writes)."""
    name = os.path.basename(os.path.normpath(path))
    folder = list(_folders_up(path))[-1]  # the nearest existing one
    try:
        limit = os.pathconf(folder if os.path.isdir(folder) else os.curdir, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(name))
    if size + extra > limit:
        raise ValueError(
            f"{flag} {path!r}: its name is {size} bytes long, but at most {limit - extra} fit (the file system allows "
            f"{limit} bytes per name and this run first writes it under a temporary name {extra} bytes longer); "
            "choose a shorter name"
        )


@contextlib.contextmanager
def creating_missing_folders(path: str):
    """Create the missing folders above `path` for the work in the `with` block; if the block fails, remove those
    of them that are still empty (nothing this run did not create is removed). Yields the created folders."""
    missing = [folder for folder in _folders_up(path) if not os.path.isdir(folder)]
    created = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
        yield created
    except BaseException:
        for folder in reversed(created):
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                break
        raise


def check_same_files(outputs, inputs, overwrite: bool = False, flag: str = "--output-path", named=None) -> None:
    """`outputs` (paths this run writes) against `inputs` (`(flag, path)` of files and folders it reads): no
    output is an input (same inode or resolved path: symlinks, hard links), an existing file inside an input
    folder, an existing non-regular file (folder, link to nowhere, device), another output, or (without
    `overwrite`) an existing file. ValueError naming the path and `flag` (the path `flag` names: `named`)."""
    for i, output in enumerate(outputs):
        what = flag if output == named else f"{flag} (writes {output!r})"
        check_name_length(what, output, PARTIAL_NAME_EXTRA)
        if os.path.lexists(output) and not os.path.isfile(output):
            raise ValueError(f"{what}: {output!r} exists and is not a regular file; it would be replaced")
        for other in outputs[:i]:
            if same_file(output, other):
                raise ValueError(f"{flag}: two outputs of this run are the same file {output!r}")
        for input_flag, path in inputs:
            if os.path.isdir(path):
                inside = os.path.commonpath([os.path.realpath(output), os.path.realpath(path)])
                if os.path.lexists(output) and inside == os.path.realpath(path):
                    raise ValueError(
                        f"{what}: {output!r} is an existing file inside the {input_flag} folder {path!r}; "
                        "it would be replaced"
                    )
            elif same_file(output, path):
                raise ValueError(
                    f"{what} is the {input_flag} input {path!r}; it would be replaced. Choose another name"
                )
    if not overwrite:
        for output in outputs:
            if os.path.lexists(output):
                raise ValueError(
                    f"{flag}: {output!r} already exists; pass --overwrite to replace it, or choose another name"
                )


def check_outputs(args) -> None:
    """The output's container and folders, and no output that is (or would replace) an input, another output,
    or (without `--overwrite`) an existing file."""
    extension = os.path.splitext(args.output_path)[1].lower()
    if extension not in OUTPUT_EXTENSIONS:
        raise ValueError(
            f"--output-path {args.output_path!r}: cannot write a {extension or 'extension-less'} file; the video "
            f"(H.264 + AAC) needs one of {', '.join(OUTPUT_EXTENSIONS)}"
        )
    check_output_folder("--output-path", args.output_path)
    overwrite = bool(getattr(args, "overwrite", False))
    check_same_files(planned_outputs(args), input_paths(args), overwrite=overwrite, named=args.output_path)


def write_atomically(path: str, write, *, overwrite: bool) -> str:
    """`write(temporary_path)` then rename onto `path`: an existing `path` stays whole if writing fails. Without
    `overwrite` an existing `path` is never replaced, even one that appeared since the run's checks (another run):
    `ValueError` naming it (`video_io.move_into_place`), the temporary file removed."""
    from .video_io import move_into_place, partial_path

    temporary = partial_path(path)
    try:
        write(temporary)
        move_into_place(temporary, path, overwrite)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def check_safetensors(flag: str, path: str, lora: bool = False) -> None:
    """The file has a readable safetensors header; a LoRA holds floating point tensors only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
            if lora:
                for key in keys:
                    if key.endswith(".alpha"):
                        continue
                    dtype = handle.get_slice(key).get_dtype()
                    if not dtype.startswith(("F", "BF")):
                        raise ValueError(
                            f"{flag} {path!r}: tensor {key!r} has dtype {dtype}; LoRA weights must be floating point"
                        )
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{flag} {path!r} is not a readable .safetensors file: {error}") from None
    if not keys:
        raise ValueError(f"{flag} {path!r} holds no tensors")


def probe_audio_seconds(path: str) -> float | None:
    """Duration of the first audio stream from the container header (None when unknown); ValueError naming the
    file when PyAV cannot open it or it has no audio stream (an image, a silent video)."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, EOFError) as error:
        raise ValueError(f"--audio-path {path!r} is not a media file PyAV can read: {error}") from None
    with container:
        streams = container.streams.audio
        if not streams:
            kinds = sorted({stream.type for stream in container.streams}) or ["nothing"]
            raise ValueError(f"--audio-path {path!r} has no audio stream (it holds {', '.join(kinds)})")
        stream = streams[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1_000_000
    return None


def preflight(args) -> None:
    """Cheap checks of the input files' contents, before any model loads or any encoding: safetensors headers
    (LoRAs: floating point dtypes), an audio stream in `--audio-path` long enough for the video and, with
    `--num-frames auto`, giving at most `--max-num-frames` frames; decodable condition images. ValueError names
    the flag and the file."""
    from .pipelines.image_conditions import _as_rgb
    from .validation import MAX_NUM_FRAMES

    for flag, path in (
        ("--checkpoint-path", args.checkpoint_path),
        ("--spatial-upsampler-path", args.spatial_upsampler_path),
    ):
        if path is not None:
            check_safetensors(flag, path)
    if args.distilled_lora is not None:
        check_safetensors("--distilled-lora", args.distilled_lora[0], lora=True)
    for path, _ in args.lora:
        check_safetensors("--lora", path, lora=True)
    for path, _, _, _ in args.images:
        try:
            _as_rgb(path)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--image: {error}") from None

    if getattr(args, "audio_path", None) is None:
        return  # ltx2-av: no input audio
    seconds = probe_audio_seconds(args.audio_path)
    if seconds is None:
        return  # the pipeline checks the decoded length (and bounds a derived frame count while decoding)
    available = seconds - args.audio_start_time
    if args.audio_max_duration is not None:
        available = min(available, args.audio_max_duration)
    if args.num_frames is None:
        limit = MAX_NUM_FRAMES if args.max_num_frames is None else args.max_num_frames
        frames = math.floor(available * args.frame_rate + 1e-9)
        frames = ((frames - 1) // 8) * 8 + 1
        if frames > limit:
            raise ValueError(
                f"--num-frames auto: {available:.3f} s of --audio-path {args.audio_path!r} at --frame-rate "
                f"{args.frame_rate:g} would be {frames} frames, above the bound of {limit} (--max-num-frames); pass "
                "--num-frames, --audio-max-duration or a larger --max-num-frames"
            )
    else:
        span = args.num_frames / args.frame_rate
        # Header durations may be slightly off, and the pipeline takes audio ending up to about 1.5 audio latent
        # frames (60 ms) before the video, as the reference does: the exact check is the pipeline's, later.
        if available < span - max(0.1, 0.02 * span):
            raise ValueError(
                f"--audio-path {args.audio_path!r} covers about {max(available, 0):.3f} s after --audio-start-time "
                f"{args.audio_start_time:g} but --num-frames {args.num_frames} at {args.frame_rate:g} fps need "
                f"{span:.3f} s"
            )


def check_values(args, audio_guidance: bool = False) -> None:
    """Guidance scales, frame rate and size against the documented bounds of `ltx2_diffusers.validation`; the
    audio guidance scales too with `audio_guidance` (where they apply). Flags left None are the pipeline's."""
    from .validation import check_frame_rate, check_guidance_scale, check_video_size

    scales = [
        ("--video-cfg-guidance-scale", args.video_cfg_guidance_scale, False),
        ("--video-stg-guidance-scale", args.video_stg_guidance_scale, False),
        ("--video-rescale-scale", args.video_rescale_scale, True),
        ("--a2v-guidance-scale", args.a2v_guidance_scale, False),
        *(("--modality-scale-sweep", value, False) for value in getattr(args, "modality_scale_sweep", None) or ()),
    ]
    if audio_guidance:
        scales += [
            ("--audio-cfg-guidance-scale", args.audio_cfg_guidance_scale, False),
            ("--audio-stg-guidance-scale", args.audio_stg_guidance_scale, False),
            ("--audio-rescale-scale", args.audio_rescale_scale, True),
            ("--v2a-guidance-scale", args.v2a_guidance_scale, False),
        ]
    try:
        for flag, value, rescale in scales:
            if value is not None:
                check_guidance_scale(flag, value, rescale=rescale)
        check_frame_rate(args.frame_rate, "--frame-rate")
        check_video_size(args.num_frames, args.height, args.width, args.max_num_frames, args.max_video_tokens)
    except ValueError as error:
        message = str(error)
        for name, flag in (("max_num_frames", "--max-num-frames"), ("max_video_tokens", "--max-video-tokens")):
            message = message.replace(name, flag)
        raise ValueError(message.replace("num_frames=", "--num-frames ")) from None


def check_features(args, pipeline_class=None) -> None:
    """Flags that need something this installation may lack: prompt enhancement (`pipeline_class.__call__`
    takes `enhance_prompt`; default class `LTX2AudioToVideoPipeline`), fp8 scaled matmuls."""
    import inspect

    if args.enhance_prompt and pipeline_class is None:
        from .pipelines.pipeline_ltx2_audio_to_video import LTX2AudioToVideoPipeline as pipeline_class
    if args.enhance_prompt and "enhance_prompt" not in inspect.signature(pipeline_class.__call__).parameters:
        raise ValueError(
            f"--enhance-prompt: prompt enhancement is not implemented in this version of {pipeline_class.__name__}; "
            "run without it (or enhance the prompt yourself)"
        )
    if args.quantization == "fp8-scaled-mm":
        from .loaders import fp8

        enable = getattr(fp8, "enable_fp8_scaled_mm", None)
        if enable is None:
            raise ValueError(
                "--quantization fp8-scaled-mm is not available in this installation "
                "(ltx2_diffusers.loaders.fp8.enable_fp8_scaled_mm is missing; it needs CUDA and a Hopper-class GPU); "
                "use --quantization fp8-cast"
            )
        if args.quantization_amax_path is not None and "amax_path" not in inspect.signature(enable).parameters:
            raise ValueError(
                "--quantization fp8-scaled-mm AMAX_PATH: this installation's fp8-scaled-mm takes no amax file"
            )


def warn_audio_guidance(args, defaults: dict) -> None:
    """One warning naming the audio-guidance flags changed from `defaults`: they have no effect."""
    changed = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name, default in defaults.items()
        if getattr(args, name) != default
    ]
    if changed:
        logger.warning(
            f"{', '.join(changed)}: no effect. The audio is an input and stays frozen, so audio guidance is never "
            "applied (the reference A2Vid pipeline ignores these flags too)."
        )
