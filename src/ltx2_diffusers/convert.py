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
its CRC-32 compared, and the run reports counts and checksums.

Nothing the converter did not write is deleted or replaced (`loaders/output_folder.py`): inputs inside the output
folder (or an output inside an input folder) are refused, `--overwrite` replaces only a previous conversion (its
marker lists exactly the files present), and the final move refuses a target that changed meanwhile.

`model_index.json` records the pipeline config: `model_version` (from the metadata), `distilled_lora_scale`, and
`model_variant` ("dev" | "distilled": the metadata key `model_variant` where the file states it, else
`--model-variant`, else "distilled" in the checkpoint's file name; `loaders/model_variant.py`). A converted
distilled LoRA is the `distilled_lora` component (`["ltx2_diffusers", "LTX2DistilledLoRA"]`, weights in
`distilled_lora/pytorch_lora_weights.safetensors`). The model card names the variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers.utils import logging

# MODEL_CARDS_DIR, parse_size and the card/shard helpers stay importable from here.
from .loaders import output_folder
from .loaders.model_cards import MODEL_CARDS_DIR, _card_fields, _model_card_kind, render_model_card  # noqa: F401
from .loaders.model_variant import check_model_variant, resolve_model_variant
from .loaders.shards import (
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
from .loaders.single_file import KeyTable, check_model_version, read_checkpoint_config, read_metadata


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
DISTILLED_LORA_SUBFOLDER = "distilled_lora"
DISTILLED_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: Its model_index entry (`LTX2DistilledLoRA.from_pretrained` reads the subfolder; no config.json needed).
DISTILLED_LORA_ENTRY = ("ltx2_diffusers", "LTX2DistilledLoRA")
DEFAULT_DISTILLED_LORA_SCALE = 0.8
#: `distilled_lora_scale` must be finite and in [0, MAX_DISTILLED_LORA_SCALE] (the bound of every LoRA strength).
MAX_DISTILLED_LORA_SCALE = 10.0
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

#: The Hub-standard custom-pipeline shim written as `pipeline.py` (model_index `_class_name: ["pipeline", ...]`).
PIPELINE_SHIM_SOURCE = (
    '"""Custom-pipeline shim: the pipeline class lives in the `ltx2_diffusers` package (pip install ltx2-diffusers)."""\n'
    "\n"
    f"from ltx2_diffusers import {PIPELINE_CLASS_NAME}  # noqa: F401\n"
)


_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


# --------------------------------------------------------------------------------------------------- components
@dataclasses.dataclass(frozen=True)
class _Component:
    """One pipeline component: its model_index entry, where its tensors come from, its table and its model."""

    name: str
    entry: tuple[str, str]
    source: str  # "checkpoint" or "upsampler"
    section: str | None  # config section that configures it (None: the upsampler's own config)
    required: bool
    table: Callable[[dict], KeyTable]
    build: Callable[[dict, dict], torch.nn.Module]  # (config, original shapes) -> model on the meta device


def _transformer(config, shapes):
    from .loaders.single_file_transformer import transformer_config_from_original
    from .models.transformer_ltx2_av import LTX2AudioVideoTransformer

    return LTX2AudioVideoTransformer.from_config(transformer_config_from_original(config["transformer"]))


def _connectors(config, shapes):
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    from .loaders.single_file_connectors import connectors_config_from_original

    return LTX2TextConnectors(**connectors_config_from_original(config, shapes))


def _vae(config, shapes):
    from diffusers import AutoencoderKLLTX2Video

    from .loaders.single_file_video_vae import video_vae_config_from_original

    return AutoencoderKLLTX2Video(**video_vae_config_from_original(config["vae"]))


def _audio_vae(config, shapes):
    from .loaders.single_file_audio_vae import audio_vae_config_from_original
    from .models.autoencoder_audio_mel import AutoencoderAudioMel

    return AutoencoderAudioMel(**audio_vae_config_from_original(config["audio_vae"]))


def _vocoder(config, shapes):
    from .loaders.single_file_vocoder import vocoder_config_from_original
    from .models.vocoder_hifigan import LTX2HiFiGANVocoder

    return LTX2HiFiGANVocoder(**vocoder_config_from_original(config["vocoder"]))


def _upsampler(config, shapes):
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    from .loaders.single_file_upsampler import latent_upsampler_config_from_original

    return LTX2LatentUpsamplerModel(**latent_upsampler_config_from_original(config))


def _table(module: str, attr: str, from_config: bool = False):
    def get(config):
        import importlib

        obj = getattr(importlib.import_module(f"ltx2_diffusers.{module}"), attr)
        return obj(config) if from_config else obj

    return get


#: The declarative component list: model_index entry, source file, config section, key table, model.
COMPONENTS: tuple[_Component, ...] = (
    _Component(
        "transformer",
        ("ltx2_diffusers", "LTX2AudioVideoTransformer"),
        "checkpoint",
        "transformer",
        True,
        _table("loaders.single_file_transformer", "TRANSFORMER_KEY_TABLE"),
        _transformer,
    ),
    _Component(
        "connectors",
        ("ltx2", "LTX2TextConnectors"),
        "checkpoint",
        "transformer",
        True,
        _table("loaders.single_file_connectors", "CONNECTORS_KEY_TABLE"),
        _connectors,
    ),
    _Component(
        "vae",
        ("diffusers", "AutoencoderKLLTX2Video"),
        "checkpoint",
        "vae",
        True,
        _table("loaders.single_file_video_vae", "video_vae_key_table_for", from_config=True),
        _vae,
    ),
    _Component(
        "audio_vae",
        ("ltx2_diffusers", "AutoencoderAudioMel"),
        "checkpoint",
        "audio_vae",
        True,
        _table("loaders.single_file_audio_vae", "AUDIO_VAE_KEY_TABLE"),
        _audio_vae,
    ),
    _Component(
        "vocoder",
        ("ltx2_diffusers", "LTX2HiFiGANVocoder"),
        "checkpoint",
        "vocoder",
        False,
        _table("loaders.single_file_vocoder", "VOCODER_KEY_TABLE"),
        _vocoder,
    ),
    _Component(
        "latent_upsampler",
        ("ltx2", "LTX2LatentUpsamplerModel"),
        "upsampler",
        None,
        False,
        _table("loaders.single_file_upsampler", "UPSAMPLER_KEY_TABLE"),
        _upsampler,
    ),
)


@dataclasses.dataclass
class _Item:
    source: str
    target: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclasses.dataclass
class _Plan:
    component: _Component
    model: torch.nn.Module
    items: list[_Item]
    ignored: list[str]


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote: per-component tensor counts/bytes/shards, every dropped key, checksums."""

    output_dir: str
    model_version: str
    components: dict[str, dict]
    source_tensors: int
    written_tensors: int
    ignored: list[str]
    folded: list[str]
    source_bytes: int
    written_bytes: int
    source_checksum: str
    output_checksum: str
    seconds: float
    distilled_lora: str | None = None
    model_variant: str | None = None
    model_variant_source: str | None = None  # "metadata", "argument" or "file name"

    def summary(self) -> str:
        lines = [f"{'component':<18}{'tensors':>9}{'MB':>12}{'shards':>8}"]
        for name, info in self.components.items():
            lines.append(f"{name:<18}{info['tensors']:>9}{info['bytes'] / 1e6:>12.1f}{info['shards']:>8}")
        lines.append(
            f"source tensors {self.source_tensors} = written {self.written_tensors} + ignored {len(self.ignored)}"
            f"{' ' + str(self.ignored) if self.ignored else ''}"
            + (f" + folded into their weights {len(self.folded)}" if self.folded else "")
        )
        if self.model_variant is not None:
            lines.append(f"model_variant {self.model_variant} (from the {self.model_variant_source})")
        lines.append(f"source checksum {self.source_checksum}")
        lines.append(f"output checksum {self.output_checksum} (re-read and verified)")
        gbs = self.source_bytes / 1e9 / self.seconds if self.seconds > 0 else float("inf")
        lines.append(f"{self.source_bytes / 1e9:.2f} GB in {self.seconds:.1f} s ({gbs:.2f} GB/s) -> {self.output_dir}")
        return "\n".join(lines)


def _target_dtype(source: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None or not source.is_floating_point:
        return source
    return dtype


def _plan_component(
    component: _Component,
    config: dict,
    st: _SafetensorsFile,
    keys: list[str],
    dtype_for: Callable[[str, torch.dtype], torch.dtype],
) -> _Plan:
    table = component.table(config)
    with torch.device("meta"):
        model = component.build(config, st.shapes())
    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    items, ignored, origin = [], [], {}
    for key in st.keys_in_file_order(keys):
        if table.is_ignored(key):
            ignored.append(key)
            continue
        target = table.map_key(key)
        if target in origin:
            raise ValueError(f"{component.name}: keys {origin[target]!r} and {key!r} both map to {target!r}")
        origin[target] = key
        src_dtype, shape, _, _ = st.entries[key]
        items.append(_Item(key, target, dtype_for(key, src_dtype), shape))
        if target in state and state[target].dtype.is_floating_point and not src_dtype.is_floating_point:
            raise ValueError(
                f"{component.name}: {st.path!r}: tensor {key!r} has dtype {src_dtype} where the model expects floating "
                "point weights (a corrupted or re-tagged file)"
            )
    given = {i.target: i.shape for i in items}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(f"{origin[k]} -> {k}" for k in set(given) - set(expected))
    wrong = sorted(
        f"{origin[k]}: {list(given[k])} vs {list(expected[k])}"
        for k in given
        if k in expected and given[k] != expected[k]
    )
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if names:
                parts.append(f"{label} ({len(names)}): {names[:20]}{' ...' if len(names) > 20 else ''}")
        raise ValueError(
            f"{component.name}: {st.path!r} does not match the layout its metadata describes: " + "; ".join(parts)
        )
    return _Plan(component, model, items, ignored)


def _plan_sources(
    checkpoint: _SafetensorsFile,
    config: dict,
    upsampler: _SafetensorsFile | None,
    upsampler_config: dict | None,
    dtype: torch.dtype | None,
    fp8_plan=None,
) -> list[_Plan]:
    """Assign every source key to exactly one component and check each component against its model.

    Scale tensors of scaled float8 weights (`fp8_plan.folded`) belong to no component: they are folded into
    their weights."""
    sources = {"checkpoint": (checkpoint, config), "upsampler": (upsampler, upsampler_config)}
    folded = set(fp8_plan.folded) if fp8_plan is not None else set()
    plans = []
    for source, (st, cfg) in sources.items():
        if st is None:
            continue
        owned: dict[str, list[str]] = {}
        tables = {}
        for component in COMPONENTS:
            if component.source != source:
                continue
            if component.section is not None and component.section not in cfg:
                if component.required:
                    raise ValueError(
                        f"{st.path!r}: the metadata config has no {component.section!r} section for "
                        f"{component.name} (found sections: {sorted(cfg)})"
                    )
                tables[component.name] = None
                continue
            table = component.table(cfg)
            tables[component.name] = table
            for key in st.entries:
                if table.owns(key) and not (source == "checkpoint" and key in folded):
                    owned.setdefault(key, []).append(component.name)
        unmapped = sorted(k for k in st.entries if k not in owned and not (source == "checkpoint" and k in folded))
        if unmapped:
            raise ValueError(
                f"{st.path!r}: {len(unmapped)} tensors belong to no LTX-2 component (another model's checkpoint, "
                f"or a layout this converter does not know): {unmapped[:20]}{' ...' if len(unmapped) > 20 else ''}"
            )
        shared = sorted(k for k, owners in owned.items() if len(owners) > 1)
        if shared:
            raise ValueError(f"{st.path!r}: keys claimed by several components: {shared[:10]}")
        for component in COMPONENTS:
            if component.source != source:
                continue
            keys = [k for k, owners in owned.items() if owners[0] == component.name]
            if tables[component.name] is None:
                continue
            if not keys:
                if component.required or component.section is not None:
                    raise ValueError(
                        f"{st.path!r}: the metadata configures {component.name} but the file holds none of its tensors"
                    )
                continue
            if fp8_plan is not None and source == "checkpoint":

                def dtype_for(key, src):
                    return fp8_plan.output_dtype(key, src, dtype)

            else:

                def dtype_for(key, src):
                    return _target_dtype(src, dtype)

            plans.append(_plan_component(component, cfg, st, keys, dtype_for))
    return plans


def _shard(items: Sequence[_Item], max_bytes: int) -> list[list[_Item]]:
    shards, current, size = [], [], 0
    for item in items:
        n = _nbytes(item.dtype, item.shape)
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current or not shards:
        shards.append(current)
    return shards


def _convert_tensor(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


class _Ledger:
    """Per-tensor CRCs of what was read and what was written."""

    def __init__(self):
        self.source: dict[str, tuple[str, tuple[int, ...], int]] = {}
        self.written: dict[str, tuple[str, tuple[int, ...], int]] = {}
        self.written_files: dict[str, Path] = {}
        self.source_bytes = 0
        self.written_bytes = 0

    def read(self, label: str, tensor: torch.Tensor) -> int:
        if label in self.source:
            raise RuntimeError(f"source tensor {label!r} read twice")
        crc = zlib.crc32(_tensor_bytes(tensor))
        self.source[label] = (str(tensor.dtype), tuple(tensor.shape), crc)
        self.source_bytes += tensor.numel() * tensor.element_size()
        return crc

    def wrote(self, label: str, path: Path, tensor: torch.Tensor, crc: int) -> None:
        if label in self.written:
            raise RuntimeError(f"output tensor {label!r} written twice")
        self.written[label] = (str(tensor.dtype), tuple(tensor.shape), crc)
        self.written_files[label] = path
        self.written_bytes += tensor.numel() * tensor.element_size()


def _write_tensors(
    folder: Path,
    st: _SafetensorsFile,
    items: Sequence[_Item],
    max_bytes: int,
    ledger: _Ledger,
    label: str,
    weights_name: str = WEIGHTS_NAME,
    index_name: str | None = WEIGHTS_INDEX_NAME,
    transform: Callable[[str, torch.Tensor, _Item], torch.Tensor] | None = None,
) -> int:
    """Stream `items` from `st` into shards under `folder`; returns the number of shards."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = _shard(items, max_bytes) if index_name else [list(items)]
    names = (
        [weights_name]
        if len(shards) == 1
        else [
            weights_name.replace(".safetensors", f"-{i + 1:05d}-of-{len(shards):05d}.safetensors")
            for i in range(len(shards))
        ]
    )
    weight_map, total = {}, 0
    buffer = _Buffer()
    with open(st.path, "rb") as handle:
        for shard, name in zip(shards, names):
            writer = _ShardWriter(folder / name, [(i.target, i.dtype, i.shape) for i in shard])
            try:
                for item in shard:
                    tensor = st.read(item.source, handle, buffer)
                    source_crc = ledger.read(f"{os.path.basename(st.path)}:{item.source}", tensor)
                    out = transform(item.source, tensor, item) if transform else _convert_tensor(tensor, item.dtype)
                    crc = writer.write(item.target, out, source_crc if out is tensor else None)
                    ledger.wrote(f"{label}/{item.target}", folder / name, out, crc)
                    weight_map[item.target] = name
                    total += out.numel() * out.element_size()
                    del tensor, out
            finally:
                writer.handle.close()
            writer.close()
    if len(shards) > 1 and index_name:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / index_name).write_text(json.dumps(index, indent=2) + "\n")
    return len(shards)


# --------------------------------------------------------------------------------------------------- extras
def _gemma_files(gemma_root: Path) -> tuple[Path, list[Path], Path, list[Path]]:
    """(weights folder, its files to copy, tokenizer folder, its files) of a Gemma 3 folder, searched recursively."""
    if not gemma_root.is_dir():
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} is not a folder")
    weights = sorted(gemma_root.rglob("model*.safetensors"))
    if not weights:
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} holds no model*.safetensors")
    weights_dir = weights[0].parent
    if not (weights_dir / "config.json").is_file():
        raise ValueError(f"gemma_root: {os.fspath(weights_dir)!r} has the weights but no config.json")
    tokenizer_marks = sorted(
        p
        for pattern in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        for p in gemma_root.rglob(pattern)
    )
    if not tokenizer_marks:
        raise ValueError(f"gemma_root {os.fspath(gemma_root)!r} holds no tokenizer (tokenizer.json / tokenizer.model)")
    tokenizer_dir = tokenizer_marks[0].parent
    tokenizer_names = re.compile(
        r"(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json))$"
    )
    te_files = [
        p
        for p in sorted(weights_dir.iterdir())
        if p.is_file()
        and (
            p.suffix == ".safetensors"
            or p.name in ("config.json", "generation_config.json")
            or p.name.endswith(".safetensors.index.json")
        )
    ]
    tok_files = [p for p in sorted(tokenizer_dir.iterdir()) if p.is_file() and tokenizer_names.fullmatch(p.name)]
    return weights_dir, te_files, tokenizer_dir, tok_files


def _transformers_class(name: str | None, fallback: str) -> str:
    import transformers

    return name if isinstance(name, str) and hasattr(transformers, name) else fallback


def _copy_gemma(gemma_root: Path, out: Path) -> dict[str, list[str]]:
    weights_dir, te_files, tokenizer_dir, tok_files = _gemma_files(gemma_root)
    for sub, files in (("text_encoder", te_files), ("tokenizer", tok_files)):
        (out / sub).mkdir()
        for path in files:
            shutil.copyfile(path, out / sub / path.name)
    te_config = json.loads((weights_dir / "config.json").read_text())
    te_class = _transformers_class((te_config.get("architectures") or [None])[0], "Gemma3ForConditionalGeneration")
    tok_config_path = tokenizer_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
    tok_class = _transformers_class(tok_config.get("tokenizer_class"), "GemmaTokenizerFast")
    return {"text_encoder": ["transformers", te_class], "tokenizer": ["transformers", tok_class]}


def _plan_lora(
    lora: _SafetensorsFile, plans: Sequence[_Plan], dtype: torch.dtype | None
) -> tuple[list[_Item], list[str]]:
    from .loaders.lora import plan_lora_conversion

    targets = {p.component.name: {k: tuple(v.shape) for k, v in p.model.state_dict().items()} for p in plans}
    mapping, dropped = plan_lora_conversion(lora.shapes(), targets)
    items = []
    for key in lora.keys_in_file_order(mapping):
        src_dtype, shape, _, _ = lora.entries[key]
        if src_dtype in _FLOAT8 or not src_dtype.is_floating_point:
            raise ValueError(
                f"{lora.path!r}: the LoRA tensor {key!r} has dtype {src_dtype}; LoRAs must be bf16/fp16/fp32"
            )
        items.append(_Item(key, mapping[key], _target_dtype(src_dtype, dtype), shape))
    return items, sorted(dropped)


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
    output_folder.check_inputs_outside(output_dir, inputs)
    expected_output = output_folder.inspect_output(output_dir, overwrite)
    output_folder.remove_leftovers(output_dir, inputs)

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
    if file_version is not None and model_version is not None and file_version != model_version:
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
    if gemma_root is not None:
        _gemma_files(Path(os.fspath(gemma_root)))

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


def _verify(ledger: _Ledger) -> None:
    by_file: dict[Path, list[str]] = {}
    for label, path in ledger.written_files.items():
        by_file.setdefault(path, []).append(label)
    for path, labels in by_file.items():
        on_disk = _crc_file_tensors(path)
        prefix = labels[0][: labels[0].index("/") + 1]
        expected = {label[len(prefix) :]: ledger.written[label][2] for label in labels}
        if on_disk != expected:
            bad = sorted(k for k in set(on_disk) | set(expected) if on_disk.get(k) != expected.get(k))
            raise RuntimeError(f"verification failed for {path}: {bad[:10]}")


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
        help=f"distilled LoRA kept as the adapter 'distilled' (default strength {DEFAULT_DISTILLED_LORA_SCALE}; "
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
        help="replace a previous conversion by this converter (never a folder holding other files)",
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
    """CLI entry point; prints the conversion summary. Returns 0, or 2 with the error on bad input."""
    args = build_parser().parse_args(argv)
    try:
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
    print(report.summary())
    if args.push_to_hub:
        print(f"pushed: {push_folder_to_hub(report.output_dir, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
