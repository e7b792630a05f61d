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
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import string
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from diffusers.utils import logging

from .loaders.single_file import KeyTable, read_checkpoint_config, read_metadata


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
DEFAULT_DISTILLED_LORA_SCALE = 0.8
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

#: The Hub-standard custom-pipeline shim written as `pipeline.py` (model_index `_class_name: ["pipeline", ...]`).
PIPELINE_SHIM_SOURCE = (
    '"""Custom-pipeline shim: the pipeline class lives in the `ltx2_diffusers` package (pip install ltx2-diffusers)."""\n'
    "\n"
    f"from ltx2_diffusers import {PIPELINE_CLASS_NAME}  # noqa: F401\n"
)


def _model_cards_dir() -> Path:
    """`model_cards/` of a source checkout, else the copy a (non-editable) install puts under `share/`."""
    checkout = Path(__file__).resolve().parents[2] / "model_cards"
    installed = Path(sys.prefix) / "share" / "ltx2-diffusers" / "model_cards"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


MODEL_CARDS_DIR = _model_cards_dir()

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_DTYPE_ALIASES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


# --------------------------------------------------------------------------------------------------- file I/O
class _SafetensorsFile:
    """Header of a safetensors file plus plain (non-mmap) reads of single tensors."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.metadata = read_metadata(self.path)  # validates: exists, header, not truncated
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            if info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"{self.path!r}: tensor {key!r} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            self.entries[key] = (_ST_DTYPES[info["dtype"]], tuple(info["shape"]), start, end)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e[1] for k, e in self.entries.items()}

    def keys_in_file_order(self, keys: Iterable[str]) -> list[str]:
        return sorted(keys, key=lambda k: self.entries[k][2])

    def read(self, key: str, handle, buffer: "_Buffer | None" = None) -> torch.Tensor:
        """The tensor `key` read from the open file `handle`; with `buffer`, it aliases the buffer's memory (valid
        until the next read into it), which saves a fresh allocation (and its page faults) per tensor."""
        dtype, shape, start, end = self.entries[key]
        buffer = torch.empty(end - start, dtype=torch.uint8) if buffer is None else buffer.get(end - start)
        handle.seek(self.data_start + start)
        if end > start and handle.readinto(buffer.numpy()) != end - start:
            raise ValueError(f"{self.path!r}: short read for tensor {key!r}")
        return buffer.view(dtype).reshape(shape)


class _Buffer:
    """A growing byte buffer reused across reads."""

    def __init__(self):
        self.data = torch.empty(0, dtype=torch.uint8)

    def get(self, size: int) -> torch.Tensor:
        if self.data.numel() < size:
            self.data = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self.data = torch.empty(size, dtype=torch.uint8)
        return self.data[:size]


def _tensor_bytes(tensor: torch.Tensor):
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


class _ShardWriter:
    """Writes one safetensors file whose header (names, dtypes, shapes) is known before any data."""

    def __init__(
        self,
        path: Path,
        items: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = path
        header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        self.expected: list[tuple[str, int]] = []
        for name, dtype, shape in items:
            size = _nbytes(dtype, shape)
            header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.expected.append((name, size))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(raw)))
        self.handle.write(raw)
        self.position = 0

    def write(self, name: str, tensor: torch.Tensor, crc: int | None = None) -> int:
        """Append the next planned tensor; returns the CRC-32 of its bytes (`crc` if the caller already has it)."""
        expected_name, size = self.expected[self.position]
        if name != expected_name or tensor.numel() * tensor.element_size() != size:
            raise RuntimeError(f"shard {self.path.name}: got {name!r} where {expected_name!r} was planned")
        data = _tensor_bytes(tensor)
        self.handle.write(data)
        self.position += 1
        return zlib.crc32(data) if crc is None else crc

    def close(self) -> None:
        if self.position != len(self.expected):
            raise RuntimeError(f"shard {self.path.name}: {len(self.expected) - self.position} tensors never written")
        self.handle.close()


def _crc_file_tensors(path: Path) -> dict[str, int]:
    """CRC-32 of every tensor's bytes in a written safetensors file, read back in 64 MiB chunks."""
    st = _SafetensorsFile(path)
    out = {}
    chunk = memoryview(bytearray(64 << 20))
    with open(path, "rb") as f:
        for key in st.keys_in_file_order(st.entries):
            _, _, start, end = st.entries[key]
            f.seek(st.data_start + start)
            crc, left = 0, end - start
            while left:
                n = f.readinto(chunk[: min(left, len(chunk))])
                if not n:
                    raise ValueError(f"{path}: short read while verifying {key!r}")
                crc = zlib.crc32(chunk[:n], crc)
                left -= n
            out[key] = crc
    return out


def _combined_checksum(entries: Mapping[str, tuple[str, tuple[int, ...], int]]) -> str:
    digest = hashlib.sha256()
    for key in sorted(entries):
        dtype, shape, crc = entries[key]
        digest.update(f"{key}|{dtype}|{list(shape)}|{crc:08x}\n".encode())
    return digest.hexdigest()


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "10GB", "500MB", "2GiB" (decimal and binary units)."""
    if isinstance(value, bool):
        raise TypeError(f"max_shard_size must be an int or a size string, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"max_shard_size must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise TypeError(f"max_shard_size must be an int or a size string, got {value!r}")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size {value!r} is not a size such as '10GB' or '500MB'")
    unit = (match.group(2) or "B").upper()
    scale = {"B": 1}
    for i, prefix in enumerate("KMGT", start=1):
        scale[f"{prefix}B"] = 1000**i
        scale[f"{prefix}IB"] = 1024**i
    size = int(float(match.group(1)) * scale[unit])
    if size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {value!r}")
    return size


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """`None` (keep the source dtypes) or one of bfloat16 / float16 / float32."""
    if value is None or isinstance(value, torch.dtype) and value in (torch.bfloat16, torch.float16, torch.float32):
        return value
    if isinstance(value, str) and value.lower() in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[value.lower()]
    raise ValueError(f"dtype must be one of bfloat16, float16, float32 (or None to keep the source's), got {value!r}")


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
    from .models.transformer_ltx2_av import LTX2AudioVideoTransformer
    from .models.transformer_single_file import transformer_config_from_original

    return LTX2AudioVideoTransformer.from_config(transformer_config_from_original(config["transformer"]))


def _connectors(config, shapes):
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    from .models.connectors_single_file import connectors_config_from_original

    return LTX2TextConnectors(**connectors_config_from_original(config, shapes))


def _vae(config, shapes):
    from diffusers import AutoencoderKLLTX2Video

    from .models.video_vae_single_file import video_vae_config_from_original

    return AutoencoderKLLTX2Video(**video_vae_config_from_original(config["vae"]))


def _audio_vae(config, shapes):
    from .models.autoencoder_audio_mel import AutoencoderAudioMel, audio_vae_config_from_original

    return AutoencoderAudioMel(**audio_vae_config_from_original(config["audio_vae"]))


def _vocoder(config, shapes):
    from .models.vocoder_hifigan import LTX2HiFiGANVocoder, vocoder_config_from_original

    return LTX2HiFiGANVocoder(**vocoder_config_from_original(config["vocoder"]))


def _upsampler(config, shapes):
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    from .models.upsampler_single_file import latent_upsampler_config_from_original

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
        _table("models.transformer_single_file", "TRANSFORMER_KEY_TABLE"),
        _transformer,
    ),
    _Component(
        "connectors",
        ("ltx2", "LTX2TextConnectors"),
        "checkpoint",
        "transformer",
        True,
        _table("models.connectors_single_file", "CONNECTORS_KEY_TABLE"),
        _connectors,
    ),
    _Component(
        "vae",
        ("diffusers", "AutoencoderKLLTX2Video"),
        "checkpoint",
        "vae",
        True,
        _table("models.video_vae_single_file", "video_vae_key_table_for", from_config=True),
        _vae,
    ),
    _Component(
        "audio_vae",
        ("ltx2_diffusers", "AutoencoderAudioMel"),
        "checkpoint",
        "audio_vae",
        True,
        _table("models.autoencoder_audio_mel", "AUDIO_VAE_KEY_TABLE"),
        _audio_vae,
    ),
    _Component(
        "vocoder",
        ("ltx2_diffusers", "LTX2HiFiGANVocoder"),
        "checkpoint",
        "vocoder",
        False,
        _table("models.vocoder_hifigan", "VOCODER_KEY_TABLE"),
        _vocoder,
    ),
    _Component(
        "latent_upsampler",
        ("ltx2", "LTX2LatentUpsamplerModel"),
        "upsampler",
        None,
        False,
        _table("models.upsampler_single_file", "UPSAMPLER_KEY_TABLE"),
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

    def summary(self) -> str:
        lines = [f"{'component':<18}{'tensors':>9}{'MB':>12}{'shards':>8}"]
        for name, info in self.components.items():
            lines.append(f"{name:<18}{info['tensors']:>9}{info['bytes'] / 1e6:>12.1f}{info['shards']:>8}")
        lines.append(
            f"source tensors {self.source_tensors} = written {self.written_tensors} + ignored {len(self.ignored)}"
            f"{' ' + str(self.ignored) if self.ignored else ''}"
            + (f" + folded into their weights {len(self.folded)}" if self.folded else "")
        )
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
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
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
        if src_dtype in _FLOAT8:
            raise ValueError(f"the LoRA holds float8 tensors ({key!r}); LoRAs must be bf16/fp16/fp32")
        items.append(_Item(key, mapping[key], _target_dtype(src_dtype, dtype), shape))
    return items, sorted(dropped)


def _model_card_kind(model_version: str, variant: str, fp8: bool) -> str:
    if fp8:
        return "fp8"
    return f"ltx-{'2.3' if model_version.startswith('2.3') else '2'}-{variant}"


def render_model_card(kind: str, fields: Mapping[str, str], templates_dir: str | os.PathLike | None = None) -> str:
    """The filled model card `model_cards/<kind>.md` (`string.Template` placeholders such as `$repo_id`)."""
    folder = Path(templates_dir) if templates_dir is not None else MODEL_CARDS_DIR
    path = folder / f"{kind}.md"
    if not path.is_file():
        raise ValueError(f"no model card template {path} (kinds: {sorted(p.stem for p in folder.glob('*.md'))})")
    return string.Template(path.read_text()).substitute(fields)


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
    variant: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    fp8_cast: bool = False,
) -> ConversionReport:
    """Convert the original files into a diffusers folder at `output_dir` (see the module docstring).

    `dtype` None keeps every tensor's source dtype; float32 upcasts exactly. `model_version` is read from the
    metadata (pass it only for files that lack it). `variant` ("dev" / "distilled") and `repo_id` only fill the
    model card. float8 sources: cast-only weights are kept (or upcast to `dtype`), scaled ones need `dtype` and are
    dequantised; `fp8_cast` stores the transformer's block linears as float8 like ltx-core's fp8-cast policy (refused
    for files that are already float8). Raises `ValueError` / `TypeError` naming the bad argument or key; nothing is
    left at `output_dir` (nor beside it) when it raises.
    """
    started = time.perf_counter()
    checkpoint_path = Path(os.fspath(checkpoint_path))
    output_dir = Path(os.fspath(output_dir)).absolute()
    dtype = parse_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    if isinstance(distilled_lora_scale, bool) or not isinstance(distilled_lora_scale, (int, float)):
        raise TypeError(f"distilled_lora_scale must be a number, got {distilled_lora_scale!r}")
    if variant not in (None, "dev", "distilled"):
        raise ValueError(f"variant must be 'dev' or 'distilled', got {variant!r}")
    if output_dir.exists() and (not output_dir.is_dir() or (any(output_dir.iterdir()) and not overwrite)):
        raise ValueError(f"output_dir {os.fspath(output_dir)!r} exists and is not empty (pass overwrite=True)")

    # 1. Plan everything from the headers.
    checkpoint = _SafetensorsFile(checkpoint_path)
    config, file_version = read_checkpoint_config(checkpoint_path)
    if file_version is None and model_version is None:
        raise ValueError(
            f"{os.fspath(checkpoint_path)!r} has no 'model_version' in its metadata; pass model_version "
            "(--model-version) explicitly, e.g. '2.3.0' or '2.0.0'"
        )
    if file_version is not None and model_version is not None and file_version != model_version:
        raise ValueError(f"model_version {model_version!r} contradicts the file's metadata {file_version!r}")
    model_version = file_version or model_version
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
    if variant is None:
        variant = "distilled" if "distilled" in checkpoint_path.name.lower() else "dev"

    # 2. Write under a temporary name beside the output, then rename.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; the result should look like any other folder
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

        if gemma_root is not None:
            model_index.update(_copy_gemma(Path(os.fspath(gemma_root)), tmp))
        else:
            model_index.update({"text_encoder": [None, None], "tokenizer": [None, None]})
        model_index["model_version"] = model_version
        model_index["distilled_lora_scale"] = float(distilled_lora_scale)
        (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
        (tmp / "pipeline.py").write_text(PIPELINE_SHIM_SOURCE)

        fields = _card_fields(
            model_version,
            variant,
            repo_id or output_dir.name,
            checkpoint_path,
            distilled_lora,
            distilled_lora_scale,
            dtype,
            gemma_root is not None,
            upsampler is not None,
            fp8_info is not None and fp8_info.output_is_fp8,
        )
        card_kind = _model_card_kind(model_version, variant, fp8_info is not None and fp8_info.output_is_fp8)
        (tmp / "README.md").write_text(render_model_card(card_kind, fields))

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

        if output_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, trash / output_dir.name)
            os.replace(tmp, output_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

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


def _card_fields(
    model_version, variant, repo_id, checkpoint_path, distilled_lora, scale, dtype, has_gemma, has_upsampler, fp8
) -> dict:
    is_23 = model_version.startswith("2.3")
    return {
        "repo_id": repo_id,
        "model_version": model_version,
        "variant": variant,
        "base_model": "Lightricks/LTX-2.3" if is_23 else "Lightricks/LTX-2",
        "model_name": ("LTX-2.3 22B" if is_23 else "LTX-2 19B") + f" {variant}",
        "source_checkpoint": checkpoint_path.name,
        "distilled_lora": Path(os.fspath(distilled_lora)).name if distilled_lora is not None else "none",
        "distilled_lora_scale": f"{float(scale):g}",
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "source dtypes (unchanged)",
        "text_encoder": "included (text_encoder/, tokenizer/)" if has_gemma else "not included",
        "latent_upsampler": "included" if has_upsampler else "not included",
        "quantization": "float8_e4m3fn transformer weights" if fp8 else "none",
        "torch_dtype": "torch.bfloat16",
    }


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
        help=f"distilled LoRA kept as the adapter 'distilled' (default strength {DEFAULT_DISTILLED_LORA_SCALE})",
    )
    parser.add_argument("--gemma-root", help="Gemma 3 folder copied into text_encoder/ and tokenizer/")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: the source's dtypes")
    parser.add_argument("--max-shard-size", default="10GB", help="e.g. 10GB, 500MB (default 10GB)")
    parser.add_argument("--model-version", help="only for files whose metadata lacks model_version")
    parser.add_argument("--variant", choices=["dev", "distilled"], help="for the model card (default: from file name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
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
            variant=args.variant,
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
