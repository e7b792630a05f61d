"""The converter's plan and writer: which component owns each source tensor, and the streamed, verified write.

`COMPONENTS` is the declarative list (model_index entry, source file, config section, key table, model on the meta
device). `_plan_sources` assigns every source key to exactly one component (or a documented drop) and checks the
mapped names and shapes against the target model's state dict, before anything is written; `_plan_lora` plans the
distilled LoRA against those models. `_write_tensors` streams the planned tensors into safetensors shards, recording
per-tensor CRC-32s in a `_Ledger`; `_verify` re-reads every written file and compares them. `convert.py` drives it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Callable, Sequence

import torch

from .shards import _Buffer, _crc_file_tensors, _nbytes, _SafetensorsFile, _ShardWriter, _tensor_bytes
from .single_file import KeyTable


WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

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
    from ..models.transformer_ltx2_av import LTX2AudioVideoTransformer
    from .single_file_transformer import transformer_config_from_original

    return LTX2AudioVideoTransformer.from_config(transformer_config_from_original(config["transformer"]))


def _connectors(config, shapes):
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    from .single_file_connectors import connectors_config_from_original

    return LTX2TextConnectors(**connectors_config_from_original(config, shapes))


def _vae(config, shapes):
    from diffusers import AutoencoderKLLTX2Video

    from .single_file_video_vae import video_vae_config_from_original

    return AutoencoderKLLTX2Video(**video_vae_config_from_original(config["vae"]))


def _audio_vae(config, shapes):
    from ..models.autoencoder_audio_mel import AutoencoderAudioMel
    from .single_file_audio_vae import audio_vae_config_from_original

    return AutoencoderAudioMel(**audio_vae_config_from_original(config["audio_vae"]))


def _vocoder(config, shapes):
    from ..models.vocoder_hifigan import LTX2HiFiGANVocoder
    from .single_file_vocoder import vocoder_config_from_original

    return LTX2HiFiGANVocoder(**vocoder_config_from_original(config["vocoder"]))


def _upsampler(config, shapes):
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    from .single_file_upsampler import latent_upsampler_config_from_original

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


def _plan_lora(
    lora: _SafetensorsFile, plans: Sequence[_Plan], dtype: torch.dtype | None
) -> tuple[list[_Item], list[str]]:
    from .lora import plan_lora_conversion

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
