"""Convert original LTX-2 / LTX-2.3 files into a folder that `DiffusionPipeline.from_pretrained` loads.

    python -m ltx2_diffusers.convert --checkpoint-path ltx-2.3-22b-dev.safetensors \
        --spatial-upsampler-path ltx-2.3-spatial-upscaler-x2.safetensors \
        --distilled-lora ltx-2.3-22b-distilled-lora.safetensors 0.8 --output-dir ltx-2.3-22b-dev-diffusers

Every component is one key table (shared with `from_single_file`) plus a config mapper over the checkpoint
metadata. The whole conversion is planned from the file headers first (every source key must be owned by exactly
one component or be a documented drop; the mapped names and shapes must equal the target model's state dict), so
bad inputs fail before anything is written. Tensors are then streamed one at a time (plain reads, no mmap) into
safetensors shards whose headers are written up front, so memory stays near the largest tensor. The folder is
built under a temporary name beside `--output-dir` and renamed at the end; every written tensor is re-read and
its CRC-32 compared, and the run reports counts and checksums. The plan and the streamed writer live in
`loaders/conversion_plan.py`, the Gemma copy in `loaders/gemma_files.py`; this module drives them and holds the CLI.

Nothing the converter did not write is deleted or replaced (`loaders/output_folder.py`): inputs inside the output
folder (or an output inside an input folder) are refused, `--overwrite` replaces only a previous conversion (its
marker lists exactly the files present, each of the recorded size and modification time: an edited file is
refused, naming it), and the final move refuses a target that changed meanwhile. An output below a file, in a folder
this process cannot write, or on a file system with less free space than the planned tensors is refused after the
header reads, before anything is written.

`model_index.json` records the pipeline config: `model_version` (from the metadata), `distilled_lora_scale`, and
`model_variant` ("dev" | "distilled": the metadata key `model_variant` where the file states it, else
`--model-variant`, else "distilled" in the checkpoint's file name; `loaders/model_variant.py`). A converted
distilled LoRA is the `distilled_lora` component (`["ltx2_diffusers", "LTX2DistilledLoRA"]`, weights in
`distilled_lora/pytorch_lora_weights.safetensors`). The model card names the variant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from diffusers.utils import logging

# MODEL_CARDS_DIR, parse_size, the card/shard helpers and the planning/writing machinery (moved to
# `loaders/conversion_plan.py` and `loaders/gemma_files.py`) stay importable from here.
from .loaders import output_folder
from .loaders.conversion_plan import (  # noqa: F401
    _FLOAT8,
    COMPONENTS,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    ConversionReport,
    _audio_vae,
    _Component,
    _connectors,
    _convert_tensor,
    _Item,
    _Ledger,
    _Plan,
    _plan_component,
    _plan_lora,
    _plan_sources,
    _shard,
    _table,
    _target_dtype,
    _transformer,
    _upsampler,
    _vae,
    _verify,
    _vocoder,
    _write_tensors,
)
from .loaders.distilled_lora import (  # noqa: F401  (importable from here, as before)
    DEFAULT_DISTILLED_LORA_SCALE,
    DISTILLED_LORA_SUBFOLDER,
    DISTILLED_LORA_WEIGHT_NAME,
)
from .loaders.gemma_files import _copy_gemma, _gemma_files, _transformers_class  # noqa: F401
from .loaders.model_cards import MODEL_CARDS_DIR, _card_fields, _model_card_kind, render_model_card  # noqa: F401
from .loaders.model_variant import check_model_variant, resolve_model_variant, same_version
from .loaders.shards import (  # noqa: F401
    _Buffer,
    _combined_checksum,
    _crc_file_tensors,
    _nbytes,
    _SafetensorsFile,
    _ShardWriter,
    _tensor_bytes,
    parse_dtype,
    parse_size,
)
from .loaders.single_file import KeyTable, check_model_version, read_checkpoint_config, read_metadata  # noqa: F401


logger = logging.get_logger(__name__)

__all__ = [
    "ConversionReport",
    "DISTILLED_LORA_SUBFOLDER",
    "DISTILLED_LORA_WEIGHT_NAME",
    "PIPELINE_SHIM_SOURCE",
    "convert_checkpoint",
    "is_pipeline_shim",
    "main",
    "render_model_card",
]

PIPELINE_CLASS_NAME = "LTX2AudioToVideoPipeline"
#: Where the distilled LoRA lands in a converted folder (diffusers format, adapter "distilled").
#: Its model_index entry (`LTX2DistilledLoRA.from_pretrained` reads the subfolder; no config.json needed).
DISTILLED_LORA_ENTRY = ("ltx2_diffusers", "LTX2DistilledLoRA")
#: `distilled_lora_scale` must be finite and in [0, MAX_DISTILLED_LORA_SCALE] (the bound of every LoRA strength).
MAX_DISTILLED_LORA_SCALE = 10.0

#: The Hub-standard custom-pipeline shim written as `pipeline.py` (model_index `_class_name: ["pipeline", ...]`).
PIPELINE_SHIM_SOURCE = (
    '"""Custom-pipeline shim: the pipeline class lives in the `ltx2_diffusers` package (pip install ltx2-diffusers)."""\n'
    "\n"
    f"from ltx2_diffusers import {PIPELINE_CLASS_NAME}  # noqa: F401\n"
)


def is_pipeline_shim(folder: str | os.PathLike) -> bool:
    """True if `folder/pipeline.py` is exactly the shim this converter writes (safe to load without remote code)."""
    path = Path(folder) / "pipeline.py"
    return path.is_file() and path.read_text() == PIPELINE_SHIM_SOURCE


# --------------------------------------------------------------------------------------------------- main entry
def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    spatial_upsampler_path: str | os.PathLike | None = None,
    distilled_lora: str | os.PathLike | None = None,
    distilled_lora_scale: float = DEFAULT_DISTILLED_LORA_SCALE,
    gemma_root: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
    model_version: str | None = None,
    model_variant: str | None = None,
    variant: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    fp8_cast: bool = False,
) -> ConversionReport:
    """Convert the original files into a diffusers folder at `output_dir` (see the module docstring).

    `dtype` None keeps every tensor's source dtype; float32 upcasts exactly. `model_version` is read from the
    metadata (pass it only for files that lack it). `model_variant` ("dev" / "distilled", `variant` is its older
    name) is recorded in model_index.json and the model card; it must agree with the metadata key `model_variant`
    where the file has one, and defaults to the file name (`loaders/model_variant.py`). `repo_id` fills the card.
    float8 sources: cast-only weights are kept (or upcast to `dtype`), scaled ones need `dtype` and are
    dequantised; `fp8_cast` stores the transformer's block linears as float8 like ltx-core's fp8-cast policy (refused
    for files that are already float8). `overwrite` replaces only a previous conversion by this converter whose files
    are untouched (`loaders/output_folder.py`); `distilled_lora_scale` is finite, in [0, 10]. Raises `ValueError` /
    `TypeError` naming the bad argument, path or key; nothing is left at `output_dir` (nor beside it) when it raises.
    """
    started = time.perf_counter()
    checkpoint_path = Path(os.fspath(checkpoint_path))
    output_dir = Path(os.fspath(output_dir)).absolute()
    dtype = parse_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    if isinstance(distilled_lora_scale, bool) or not isinstance(distilled_lora_scale, (int, float)):
        raise TypeError(f"distilled_lora_scale must be a number, got {distilled_lora_scale!r}")
    if not (math.isfinite(distilled_lora_scale) and 0 <= distilled_lora_scale <= MAX_DISTILLED_LORA_SCALE):
        raise ValueError(
            f"distilled_lora_scale (--distilled-lora STRENGTH) must be finite and in [0, {MAX_DISTILLED_LORA_SCALE:g}], "
            f"got {distilled_lora_scale!r}"
        )
    if variant is not None:
        if model_variant is not None and model_variant != variant:
            raise ValueError(f"model_variant {model_variant!r} and its older name variant {variant!r} disagree")
        model_variant = variant
    if model_variant is not None:
        check_model_variant(model_variant, "model_variant (--model-variant)")
    inputs = {
        "checkpoint_path": checkpoint_path,
        "spatial_upsampler_path": spatial_upsampler_path,
        "distilled_lora": distilled_lora,
        "gemma_root": gemma_root,
    }
    from .cli_safety import check_name_length, check_output_folder

    check_output_folder("output_dir", os.fspath(output_dir))  # a folder above it is a file, or not writable
    check_name_length("output_dir", os.fspath(output_dir), output_folder.TEMP_NAME_EXTRA)
    output_folder.check_inputs_outside(output_dir, inputs)
    output_folder.remove_leftovers(output_dir, inputs)  # first: it may move a killed run's previous folder back
    expected_output = output_folder.inspect_output(output_dir, overwrite)

    # 1. Plan everything from the headers.
    checkpoint = _SafetensorsFile(checkpoint_path)
    config, file_version = read_checkpoint_config(checkpoint_path)
    resolved_variant = resolve_model_variant(read_metadata(checkpoint_path), model_variant, checkpoint_path)
    model_variant = resolved_variant.name
    if file_version is None and model_version is None:
        raise ValueError(
            f"{os.fspath(checkpoint_path)!r} has no 'model_version' in its metadata; pass model_version "
            "(--model-version) explicitly, e.g. '2.3.0' or '2.0.0'"
        )
    if model_version is not None:
        check_model_version(model_version, "model_version")
    if file_version is not None and model_version is not None and not same_version(file_version, model_version):
        raise ValueError(f"model_version {model_version!r} contradicts the file's metadata {file_version!r}")
    model_version = file_version or model_version
    check_model_version(model_version, "model_version")
    from .loaders.fp8 import check_fp8_conversion

    fp8_info = check_fp8_conversion(checkpoint, dtype, fp8_cast=bool(fp8_cast))
    upsampler = upsampler_config = None
    if spatial_upsampler_path is not None:
        upsampler = _SafetensorsFile(spatial_upsampler_path)
        upsampler_config, _ = read_checkpoint_config(spatial_upsampler_path)
    plans = _plan_sources(checkpoint, config, upsampler, upsampler_config, dtype, fp8_info)
    lora = lora_items = None
    lora_dropped: list[str] = []
    if distilled_lora is not None:
        lora = _SafetensorsFile(distilled_lora)
        lora_items, lora_dropped = _plan_lora(lora, plans, dtype)
    needed = sum(_nbytes(i.dtype, i.shape) for plan in plans for i in plan.items)
    needed += sum(_nbytes(i.dtype, i.shape) for i in lora_items or ())
    if gemma_root is not None:
        _, te_files, _, _ = _gemma_files(Path(os.fspath(gemma_root)))
        needed += sum(path.stat().st_size for path in te_files)
    output_folder.check_free_space(output_dir, needed)

    # 2. Write under a temporary name beside the output, then rename.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_folder.TempFolder(output_dir, "partial")
    tmp = partial.path
    ledger = _Ledger()
    ignored: list[str] = []
    components: dict[str, dict] = {}
    try:
        model_index: dict = {
            "_class_name": ["pipeline", PIPELINE_CLASS_NAME],
            "_diffusers_version": _diffusers_version(),
        }
        for plan in plans:
            name = plan.component.name
            st = checkpoint if plan.component.source == "checkpoint" else upsampler
            folder = tmp / name
            folder.mkdir()
            plan.model.save_config(folder)
            transform = None
            if fp8_info is not None and plan.component.source == "checkpoint":

                def transform(key, tensor, item):
                    return fp8_info.transform(key, tensor, item.dtype)

            shards = _write_tensors(folder, st, plan.items, max_bytes, ledger, name, transform=transform)
            ignored += [f"{os.path.basename(st.path)}:{k}" for k in plan.ignored]
            components[name] = {
                "tensors": len(plan.items),
                "bytes": sum(_nbytes(i.dtype, i.shape) for i in plan.items),
                "shards": shards,
            }
            model_index[name] = list(plan.component.entry)
        for component in COMPONENTS:
            model_index.setdefault(component.name, [None, None])

        from diffusers import FlowMatchEulerDiscreteScheduler

        from .schedules import flow_match_scheduler_config

        FlowMatchEulerDiscreteScheduler(**flow_match_scheduler_config()).save_pretrained(tmp / "scheduler")
        model_index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]

        lora_rel = None
        if lora is not None:
            folder = tmp / DISTILLED_LORA_SUBFOLDER
            _write_tensors(
                folder, lora, lora_items, max_bytes, ledger, DISTILLED_LORA_SUBFOLDER, DISTILLED_LORA_WEIGHT_NAME, None
            )
            ignored += [f"{os.path.basename(lora.path)}:{k}" for k in lora_dropped]
            components[DISTILLED_LORA_SUBFOLDER] = {
                "tensors": len(lora_items),
                "bytes": sum(_nbytes(i.dtype, i.shape) for i in lora_items),
                "shards": 1,
            }
            lora_rel = f"{DISTILLED_LORA_SUBFOLDER}/{DISTILLED_LORA_WEIGHT_NAME}"
            model_index[DISTILLED_LORA_SUBFOLDER] = list(DISTILLED_LORA_ENTRY)
        else:
            model_index[DISTILLED_LORA_SUBFOLDER] = [None, None]

        if gemma_root is not None:
            model_index.update(_copy_gemma(Path(os.fspath(gemma_root)), tmp))
        else:
            model_index.update({"text_encoder": [None, None], "tokenizer": [None, None]})
        model_index["model_version"] = model_version
        model_index["model_variant"] = model_variant
        model_index["distilled_lora_scale"] = float(distilled_lora_scale)
        (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2, allow_nan=False) + "\n")
        (tmp / "pipeline.py").write_text(PIPELINE_SHIM_SOURCE)

        fields = _card_fields(
            model_version,
            model_variant,
            repo_id or output_dir.name,
            checkpoint_path,
            distilled_lora,
            distilled_lora_scale,
            dtype,
            gemma_root is not None,
            upsampler is not None,
            fp8_info is not None and fp8_info.output_is_fp8,
            transformer_params=sum(
                math.prod(i.shape) for p in plans if p.component.name == "transformer" for i in p.items
            ),
        )
        card_kind = _model_card_kind(model_version, model_variant, fp8_info is not None and fp8_info.output_is_fp8)
        (tmp / "README.md").write_text(render_model_card(card_kind, fields), encoding="utf-8")

        folded = []
        if fp8_info is not None and fp8_info.folded:
            with open(checkpoint.path, "rb") as handle:
                for key in fp8_info.folded:
                    ledger.read(f"{checkpoint_path.name}:{key}", checkpoint.read(key, handle))
            folded = [f"{checkpoint_path.name}:{k}" for k in fp8_info.folded]

        # 3. Verify: every tensor re-read from disk has the CRC it was written with.
        _verify(ledger)
        expected_sources = len(checkpoint.entries) + (len(upsampler.entries) if upsampler else 0)
        expected_sources += len(lora.entries) if lora else 0
        if len(ledger.source) + len(ignored) != expected_sources or len(ledger.written) + len(folded) != len(
            ledger.source
        ):
            raise RuntimeError(
                f"{expected_sources} source tensors but {len(ledger.written)} written + {len(folded)} folded + "
                f"{len(ignored)} ignored"
            )

        output_folder.write_marker(tmp)
        output_folder.publish(tmp, output_dir, expected_output)
    except BaseException:
        partial.release(remove=True)
        raise
    partial.release(remove=False)

    return ConversionReport(
        output_dir=os.fspath(output_dir),
        model_version=model_version,
        components=components,
        source_tensors=len(ledger.source) + len(ignored),
        written_tensors=len(ledger.written),
        ignored=ignored,
        folded=folded,
        source_bytes=ledger.source_bytes,
        written_bytes=ledger.written_bytes,
        source_checksum=_combined_checksum(ledger.source),
        output_checksum=_combined_checksum(ledger.written),
        seconds=time.perf_counter() - started,
        distilled_lora=lora_rel,
        model_variant=model_variant,
        model_variant_source=resolved_variant.source,
    )


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _parse_lora_arg(values: Sequence[str] | None) -> tuple[str | None, float]:
    if not values:
        return None, DEFAULT_DISTILLED_LORA_SCALE
    if len(values) > 2:
        raise ValueError(f"--distilled-lora takes PATH [STRENGTH], got {values}")
    strength = DEFAULT_DISTILLED_LORA_SCALE
    if len(values) == 2:
        try:
            strength = float(values[1])
        except ValueError:
            raise ValueError(f"--distilled-lora STRENGTH must be a number, got {values[1]!r}") from None
    return values[0], strength


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltx2_diffusers.convert",
        description="Convert original LTX-2 / LTX-2.3 checkpoints into a diffusers from_pretrained folder.",
    )
    parser.add_argument("--checkpoint-path", required=True, help="single-file LTX-2 / LTX-2.3 checkpoint")
    parser.add_argument("--output-dir", required=True, help="folder to create")
    parser.add_argument("--spatial-upsampler-path", help="spatial upsampler safetensors file")
    parser.add_argument(
        "--distilled-lora",
        nargs="+",
        metavar=("PATH", "STRENGTH"),
        help=f"distilled LoRA, stored as the pipeline's `distilled_lora` component (default strength {DEFAULT_DISTILLED_LORA_SCALE}; "
        f"finite, 0 to {MAX_DISTILLED_LORA_SCALE:g})",
    )
    parser.add_argument("--gemma-root", help="Gemma 3 folder copied into text_encoder/ and tokenizer/")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: the source's dtypes")
    parser.add_argument("--max-shard-size", default="10GB", help="e.g. 10GB, 500MB (default 10GB)")
    parser.add_argument("--model-version", help="only for files whose metadata lacks model_version")
    parser.add_argument(
        "--model-variant",
        "--variant",
        dest="model_variant",
        choices=["dev", "distilled"],
        help="recorded as model_variant in model_index.json and the model card (default: the checkpoint metadata's "
        "model_variant, else 'distilled' if the file name says so, else 'dev'); must agree with the metadata",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous conversion by this converter (never a folder holding other files, nor one whose "
        "files were edited since)",
    )
    parser.add_argument(
        "--fp8-cast",
        action="store_true",
        help="store the transformer's block linears as float8_e4m3fn (ltx-core fp8-cast)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repository")
    return parser


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str) -> str:
    """Create (if needed) and upload to the Hub model repository `repo_id`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), repo_type="model")
    return str(getattr(info, "commit_url", info))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the conversion summary. Returns 0, or 2 with the error on bad input (an output
    folder that cannot be made, e.g. below a file, is refused before any work, naming the path)."""
    from .cli_safety import check_output_folder

    args = build_parser().parse_args(argv)
    try:
        check_output_folder("--output-dir", args.output_dir)
        lora_path, lora_scale = _parse_lora_arg(args.distilled_lora)
        report = convert_checkpoint(
            args.checkpoint_path,
            args.output_dir,
            spatial_upsampler_path=args.spatial_upsampler_path,
            distilled_lora=lora_path,
            distilled_lora_scale=lora_scale,
            gemma_root=args.gemma_root,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            model_version=args.model_version,
            model_variant=args.model_variant,
            repo_id=args.push_to_hub,
            overwrite=args.overwrite,
            fp8_cast=args.fp8_cast,
        )
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, PermissionError) as e:  # e.g. the output's folders changed meanwhile
        print(f"error: {e.filename!r}: {e.strerror}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.push_to_hub:
        print(f"pushed: {push_folder_to_hub(report.output_dir, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
