"""Run-time helpers of `ltx2-a2v` and `ltx2-av` (their flags are in `cli_common`): loading from the model flags,
`--lora` adapters, fp8-cast, placement / offloading, context parallelism, the seeded generator, guidance from the
flags, image conditions, the mp4's audio rate and the `--sync-report` writer.

`--context-parallel N` runs under `torchrun --nproc-per-node N`: the transformer is sequence parallel over the N
processes (`ltx2_diffusers.parallel`), the noise comes from a CPU generator (the same on every rank whatever its
device), and only rank 0 shows progress and writes files.
"""

from __future__ import annotations

import math
import sys

from diffusers.utils import logging

from .cli_common import AUDIO_GUIDANCE_FLAGS, DEFAULT_AUDIO_GUIDANCE
from .loaders.distilled_lora import DISTILLED_ADAPTER_NAME


logger = logging.get_logger(__name__)


def device_of(args):
    import torch

    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline_from_args(pipeline_class, args):
    """`pipeline_class` from `--checkpoint-path` or `--model`, with the optional component overrides (`--lora`
    adapters are the caller's). From original files, the checkpoint's `model_variant` (its metadata, else its file
    name: `loaders/model_variant.py`) is passed on where `from_single_file` takes one."""
    import inspect

    import torch

    from .pipelines.pipeline_ltx2_audio_to_video import load_gemma

    dtype = getattr(torch, args.dtype)
    if args.checkpoint_path is not None:
        options = {}
        if "model_variant" in inspect.signature(pipeline_class.from_single_file).parameters:
            options["model_variant"] = getattr(args, "checkpoint_variant", None) or checkpoint_variant(
                args.checkpoint_path
            )
        return pipeline_class.from_single_file(
            args.checkpoint_path,
            spatial_upsampler_path=args.spatial_upsampler_path,
            distilled_lora=args.distilled_lora,
            gemma_root=args.gemma_root,
            torch_dtype=dtype,
            **options,
        )
    pipe = pipeline_class.from_pretrained(args.model, dtype=dtype)
    if args.gemma_root is not None:
        text_encoder, tokenizer = load_gemma(args.gemma_root, dtype)
        pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)
    if args.spatial_upsampler_path is not None:
        from .loaders.single_file_upsampler import load_latent_upsampler_from_single_file

        upsampler = load_latent_upsampler_from_single_file(args.spatial_upsampler_path, torch_dtype=dtype)
        pipe.register_modules(latent_upsampler=upsampler)
    if args.distilled_lora is not None:
        if dict(pipe.config).get("model_variant") == "distilled":
            raise ValueError(f"--distilled-lora: {args.model!r} is already a distilled model (it takes no such LoRA)")
        path, strength = args.distilled_lora
        pipe.load_lora_weights(path, adapter_name=DISTILLED_ADAPTER_NAME)  # replaces the pipeline-owned distilled LoRA
        pipe.register_to_config(distilled_lora_scale=float(strength))
    return pipe


def checkpoint_variant(path) -> str:
    """The variant ("dev" or "distilled") of an original checkpoint: its metadata, else its file name."""
    from .loaders.model_variant import resolve_model_variant
    from .loaders.single_file import read_metadata

    return resolve_model_variant(read_metadata(path), None, path).name


def load_user_loras(pipe, loras, names=None) -> list[str]:
    """`--lora PATH STRENGTH` files (or diffusers-format state dicts) as adapters `cli_lora_0`, `cli_lora_1`, ...
    (or `names`) through `load_lora_weights`, weighted by `set_adapters` (active in both stages; the
    pipeline-owned distilled LoRA never touches them)."""
    names = list(names) if names is not None else [f"cli_lora_{i}" for i in range(len(loras))]
    for (source, _), name in zip(loras, names):
        pipe.load_lora_weights(source, adapter_name=name)
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


def prepare_pipeline(pipe, args, device):
    """Quantization, VAE tiling, context parallelism and placement / offloading as the flags ask; returns the
    device the pipeline runs on (with `--context-parallel`, this rank's)."""
    import torch

    if args.quantization == "fp8-cast":
        fp8_cast(pipe.transformer)
    if args.vae_tiling:
        pipe.enable_vae_tiling()  # ltx-core's TilingConfig.default(), as the reference CLI decodes
    if getattr(args, "context_parallel", None) is not None:
        device = enable_context_parallel(pipe, args.context_parallel)
    if args.quantization == "fp8-scaled-mm":  # quantised on this rank's GPU: the weights must be there first
        from .loaders.fp8 import enable_fp8_scaled_mm

        options = {} if args.quantization_amax_path is None else {"amax_path": args.quantization_amax_path}
        pipe.transformer.to(device)
        enable_fp8_scaled_mm(pipe.transformer, **options)
    apply_acceleration_flags(pipe, args)
    if apply_memory_tier(pipe, args, device):
        return device
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
    return device


def apply_acceleration_flags(pipe, args) -> None:
    """`--compile` / `--attention-backend` as `pipe.set_transformer_acceleration(...)` (applied at the call)."""
    from .cli_common import COMPILE_MODES

    compile, backend = COMPILE_MODES[getattr(args, "compile", "auto")], getattr(args, "attention_backend", "auto")
    if hasattr(pipe, "set_transformer_acceleration"):
        pipe.set_transformer_acceleration(compile=compile, attention_backend=backend)
    elif (compile, backend) != ("auto", "auto"):
        raise ValueError(f"--compile/--attention-backend: {type(pipe).__name__} has no set_transformer_acceleration")


def apply_memory_tier(pipe, args, device) -> bool:
    """The memory tier for `--memory-budget-gib`, or on CUDA without `--offload` (and without
    `--context-parallel`) for the free GPU memory (plus what PyTorch already holds there) capped at
    `DEFAULT_MEMORY_BUDGET_GIB` (the whole free memory when no tier fits the cap), applied by
    `pipe.enable_memory_budget` for this run's size and printed; False when neither applies (the `--offload`
    placement follows)."""
    from .cli_common import offload_given
    from .pipelines.memory import DEFAULT_MEMORY_BUDGET_GIB, GIB

    budget, free = getattr(args, "memory_budget_gib", None), None
    if budget is None:
        if offload_given(args) or device.type != "cuda" or getattr(args, "context_parallel", None) is not None:
            return False
        import torch

        # What PyTorch already holds is this pipeline's (e.g. the fp8-scaled-mm transformer quantised on the
        # device, and the blocks its caching allocator kept), which the estimates count themselves.
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
        budget = min(free / GIB, DEFAULT_MEMORY_BUDGET_GIB)
    size = dict(
        height=args.height, width=args.width, num_frames=planned_num_frames(args), frame_rate=args.frame_rate,
        stage_2=args.stage_2, guidance_batch_size=1 if args.reference_arithmetic else args.guidance_batch_size,
        reference_arithmetic=args.reference_arithmetic,
    )  # fmt: skip
    try:
        try:
            tier = pipe.enable_memory_budget(budget, device, **size)
        except ValueError:
            if free is None or budget >= free / GIB:
                raise
            budget = free / GIB  # the default cap fits no tier for this size: the free memory may
            tier = pipe.enable_memory_budget(budget, device, **size)
    except ValueError as error:
        if free is None:
            raise ValueError(f"--memory-budget-gib: {error}") from None
        raise ValueError(
            f"{device} has {free / GIB:.2f} GiB free: {error}; free GPU memory, or pass --offload sequential"
        ) from None
    source = "--memory-budget-gib" if free is None else f"default, {free / GIB:.2f} GiB free on {device}"
    print(f"memory tier: {tier} for {budget:.2f} GiB ({source})")
    return True


def planned_num_frames(args) -> int:
    """`--num-frames`, or with `--num-frames auto` the count the audio gives (as `preflight` computes it; the
    bound `--max-num-frames` when the container does not tell its duration)."""
    if args.num_frames is not None:
        return args.num_frames
    from .cli_safety import probe_audio_seconds
    from .validation import MAX_NUM_FRAMES

    seconds = probe_audio_seconds(args.audio_path)
    if seconds is None:
        return args.max_num_frames or MAX_NUM_FRAMES
    available = seconds - args.audio_start_time
    if args.audio_max_duration is not None:
        available = min(available, args.audio_max_duration)
    frames = math.floor(available * args.frame_rate + 1e-9)
    return max(1, ((frames - 1) // 8) * 8 + 1)


def enable_context_parallel(pipe, degree: int):
    """`parallel.enable_context_parallel` on the transformer (process group from torchrun's environment); other
    ranks than 0 show no progress bar and log errors only. Returns this rank's device."""
    from . import parallel

    device = parallel.enable_context_parallel(pipe.transformer, degree)
    if not parallel.is_main_process():
        pipe.set_progress_bar_config(disable=True)
        logging.set_verbosity_error()
    return device


def creating_output_folders(args):
    """The `with` block that creates `--output-path`'s missing folders before the work and removes them again (when
    still empty) if it fails (`cli_safety.creating_missing_folders`); with `--context-parallel` only rank 0 (torchrun's
    `RANK`), the rank that writes, creates them."""
    import contextlib
    import os

    from .cli_safety import creating_missing_folders

    return (
        creating_missing_folders(args.output_path)
        if os.environ.get("RANK", "0") == "0"
        else contextlib.nullcontext([])
    )


def is_main_process() -> bool:
    from .parallel import is_main_process as main_process

    return main_process()


def make_generator(args, device):
    """The seeded generator: on `device`, or on the CPU with `--context-parallel` (every rank draws the same
    noise whatever its device)."""
    import torch

    on = "cpu" if getattr(args, "context_parallel", None) is not None else device
    return torch.Generator(on).manual_seed(args.seed)


def guidance_from_flags(args, flags: dict, defaults=None):
    """None when every flag in `flags` (attribute -> `MultiModalGuidance` field) is None (the pipeline's default
    guidance), else `defaults` (default: `MultiModalGuidance()`, LTX-2.3's video guidance) with the given flags'
    fields replaced."""
    import dataclasses

    from .guidance import MultiModalGuidance

    given = {field: getattr(args, name) for name, field in flags.items() if getattr(args, name) is not None}
    if not given:
        return None
    if "stg_blocks" in given:
        given["stg_blocks"] = list(given["stg_blocks"])
    return dataclasses.replace(defaults if defaults is not None else MultiModalGuidance(), **given)


def default_audio_guidance():
    """ltx-pipelines' LTX-2.3 audio guidance (`DEFAULT_AUDIO_GUIDANCE`) as a `MultiModalGuidance`."""
    from .guidance import MultiModalGuidance

    return MultiModalGuidance(**{field: DEFAULT_AUDIO_GUIDANCE[name] for name, field in AUDIO_GUIDANCE_FLAGS.items()})


def conditions_from_args(args):
    from .pipelines.image_conditions import LTX2ImageCondition

    return [LTX2ImageCondition(path, frame, strength, crf) for path, frame, strength, crf in args.images]


def aac_compatible(audio, sample_rate: int):
    """The audio unchanged, or resampled to 48 kHz when AAC cannot carry its rate."""
    from .video_io import AAC_SAMPLE_RATES

    if sample_rate in AAC_SAMPLE_RATES:
        return audio, sample_rate
    import librosa

    logger.warning(f"AAC has no {sample_rate} Hz mode; the mp4's audio is resampled to 48000 Hz.")
    return librosa.resample(audio, orig_sr=sample_rate, target_sr=48000, res_type="soxr_hq"), 48000


def peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return f"peak RSS {rss / 2**30:.2f} GiB"


def text_writer(text: str):
    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write


def write_sync_report(video_path: str, report=None, *, overwrite: bool) -> list[str]:
    """`--sync-report`: measure the written `video_path` (its motion against its audio track; `report` if already
    measured) and write `<stem>_sync.png` and `<stem>_sync.json` beside it, each under a temporary name renamed when
    complete (without `overwrite` never onto a file that appeared meanwhile). Prints the summary; returns the two paths."""
    from .cli_safety import sync_report_paths, write_atomically

    if report is None:
        from .sync import sync_report_from_file

        report = sync_report_from_file(video_path)
    png, json_path = sync_report_paths(video_path)
    write_atomically(png, report.save_png, overwrite=overwrite)
    write_atomically(json_path, report.save_json, overwrite=overwrite)
    print(f"sync report {png}: {report.summary()}")
    return [png, json_path]
