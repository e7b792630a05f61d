"""Reading original LTX-2 single-file checkpoints: metadata, declarative key tables and one shared engine.

Every component (transformer, audio VAE, vocoder, ...) declares a `KeyTable`: which keys of the original file
belong to it and how they are renamed into our (diffusers-compatible) state-dict names. `from_single_file`
methods and the converter both go through the functions here, so a mapping is written exactly once.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Iterator

import torch
from safetensors import safe_open


@dataclass(frozen=True)
class KeyTable:
    """Declarative mapping from original checkpoint keys to our state-dict keys.

    - `prefix`: a key belongs to the component iff it starts with `prefix` and with none of `exclude_prefixes`
      (and, when `include_prefixes` is given, with one of those: for components spread over several prefixes).
    - `renames`: `(regex, replacement)` pairs applied in order with `re.sub` to the key after `prefix` is stripped.
    - `ignore`: regexes (matched against the stripped key) of tensors that are read and deliberately dropped.
    """

    name: str
    prefix: str
    renames: tuple[tuple[str, str], ...] = ()
    exclude_prefixes: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    include_prefixes: tuple[str, ...] = ()
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", tuple((re.compile(p), r) for p, r in self.renames))
        object.__setattr__(self, "include_prefixes", tuple(self.include_prefixes))

    def owns(self, key: str) -> bool:
        if self.include_prefixes and not key.startswith(self.include_prefixes):
            return False
        return key.startswith(self.prefix) and not any(key.startswith(p) for p in self.exclude_prefixes)

    def is_ignored(self, key: str) -> bool:
        stripped = key[len(self.prefix) :]
        return any(re.fullmatch(p, stripped) for p in self.ignore)

    def map_key(self, key: str) -> str:
        new = key[len(self.prefix) :]
        for pattern, repl in self._compiled:
            new = pattern.sub(repl, new)
        return new


def _check_safetensors_file(path: str | os.PathLike) -> None:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file {path!r} does not exist")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path!r} is not a safetensors file: it is only {size} bytes long")
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 0 or header_len > size - 8 or header_len > 100_000_000:
            raise ValueError(f"{path!r} is not a safetensors file (invalid header length {header_len})")
        header = f.read(header_len)
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r} is not a safetensors file (its header is not JSON: {e})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{path!r} is not a safetensors file (its header is not a JSON object)")
    entries = [v for k, v in parsed.items() if k != "__metadata__"]
    offsets = [v.get("data_offsets") if isinstance(v, dict) else None for v in entries]
    if not all(isinstance(o, list) and len(o) == 2 and all(type(x) is int for x in o) for o in offsets):
        raise ValueError(f"{path!r} is not a safetensors file (a tensor entry of its header has no data_offsets)")
    end = max((o[1] for o in offsets), default=0)
    if 8 + header_len + end > size:
        raise ValueError(
            f"{path!r} is truncated: the header promises {8 + header_len + end} bytes but the file has {size}"
        )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (empty dict if none); `ValueError` for a missing/invalid file."""
    _check_safetensors_file(path)
    with safe_open(os.fspath(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_checkpoint_config(path: str | os.PathLike) -> tuple[dict, str | None]:
    """`(config, model_version)` from an original checkpoint's metadata; `ValueError` if `config` is absent."""
    meta = read_metadata(path)
    if "config" not in meta:
        raise ValueError(
            f"{os.fspath(path)!r} has no 'config' entry in its safetensors metadata (found keys: "
            f"{sorted(meta) or 'none'}); original LTX-2 checkpoints carry their configuration there"
        )
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise ValueError(f"the 'config' metadata of {os.fspath(path)!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"the 'config' metadata of {os.fspath(path)!r} is not a JSON object")
    check_config_bounds(config, os.fspath(path))
    version = meta.get("model_version")
    if version is not None:
        check_model_version(version, f"{os.fspath(path)!r}: 'model_version'")
    return config, version


def check_model_version(version, where: str) -> None:
    """`ValueError` unless `version` looks like a version string ("2.3.0"; digits first, at most 32 characters)."""
    if not isinstance(version, str):
        raise ValueError(f"{where} must be a version string such as '2.3.0', got {type(version).__name__} {version!r}")
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+_-]{0,31}", version):
        raise ValueError(f"{where} {str(version)[:80]!r} is not a version such as '2.3.0'")


#: Bounds on a checkpoint's metadata config, checked before any model is built (the released LTX-2.3 file has
#: 48 layers, 32 heads of 128, widths up to 4096, sample rates up to 48000):
#: - every number anywhere is finite with magnitude at most `CONFIG_MAX_ABS`;
#: - counts (keys such as `num_layers`, `*_heads`, `*_registers`, `*_blocks`, `norm_num_groups`) are integers in
#:   [0, `CONFIG_MAX_COUNT`] (or null, or booleans for flags such as `normalize_latent_channels`); a key ending in
#:   `_std`, `_mean`, `_scale`, `_eps`, `_multiplier`, `_theta` or `_factor` is a real number, not a count or size;
#: - sizes (keys ending in `dim`, `channels`, `size`, `bins`, `length`, ...) are integers in [0, `CONFIG_MAX_SIZE`]
#:   (or null / booleans); a string where such a number belongs is refused.
CONFIG_MAX_ABS = 1e7
CONFIG_MAX_COUNT = 4096
CONFIG_MAX_SIZE = 1 << 20
_COUNT_KEY = re.compile(r"(^|_)(num|n)_|layers|blocks|registers|heads|groups")
_SIZE_KEY = re.compile(r"(dim|dims|channels?|_ch|^ch|size|sizes|bins|mels|resolution|length|n_fft)$")
# Real-valued settings whose names contain a count word (`connector_learnable_registers_std`): not counts.
_REAL_KEY = re.compile(r"_(std|mean|scale|eps|multiplier|theta|factor)$")


def check_config_bounds(config, where: str) -> None:
    """`ValueError` naming the file and the key for a config value outside the bounds above."""

    def walk(value, key: str, dotted: str, in_list: bool = False):
        limit = CONFIG_MAX_COUNT if _COUNT_KEY.search(key) else CONFIG_MAX_SIZE if _SIZE_KEY.search(key) else None
        if _REAL_KEY.search(key):
            limit = None
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k), f"{dotted}.{k}" if dotted else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, key, f"{dotted}[{i}]", True)
        elif limit is not None and not in_list and isinstance(value, str):
            raise ValueError(f"{where!r}: config value {dotted} = {value!r} is not a number (an integer expected)")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if limit is not None and not (isinstance(value, int) and 0 <= value <= limit):
                raise ValueError(
                    f"{where!r}: config value {dotted} = {value!r} is outside the model's range (an integer in "
                    f"[0, {limit}] expected)"
                )
            if not math.isfinite(value) or abs(value) > CONFIG_MAX_ABS:
                raise ValueError(
                    f"{where!r}: config value {dotted} = {value!r} is not finite or above {CONFIG_MAX_ABS:g} in magnitude"
                )

    walk(config, "", "")


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    _check_safetensors_file(path)
    with safe_open(os.fspath(path), framework="pt") as f:
        return list(f.keys())


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def iter_component_tensors(
    path: str | os.PathLike, table: KeyTable, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Stream `(original_key, new_key, tensor)` for every non-ignored tensor the table owns, one at a time."""
    _check_safetensors_file(path)
    with safe_open(os.fspath(path), framework="pt") as f:
        for key in f.keys():
            if not table.owns(key) or table.is_ignored(key):
                continue
            tensor_dtype = f.get_slice(key).get_dtype()
            if tensor_dtype not in _FLOAT_DTYPES:
                raise ValueError(
                    f"{os.fspath(path)!r}: tensor {key!r} has dtype {tensor_dtype} where {table.name} expects floating "
                    "point weights (a corrupted or re-tagged file)"
                )
            tensor = f.get_tensor(key)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            yield key, table.map_key(key), tensor


def load_component_state_dict(
    path: str | os.PathLike, table: KeyTable, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The component's state dict in our naming; `ValueError` if the file holds none of its keys or two keys collide."""
    state_dict: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for old, new, tensor in iter_component_tensors(path, table, dtype):
        if new in state_dict:
            raise ValueError(f"{table.name}: keys {origin[new]!r} and {old!r} both map to {new!r}")
        state_dict[new] = tensor
        origin[new] = old
    if not state_dict:
        starts = table.include_prefixes or (table.prefix,)
        raise ValueError(
            f"{os.fspath(path)!r} holds no {table.name} weights (no key starts with {' or '.join(map(repr, starts))})"
        )
    return state_dict


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], component: str) -> None:
    """`load_state_dict(strict=True)` semantics with an error that names every missing and unexpected key."""
    expected = set(model.state_dict().keys())
    given = set(state_dict)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
            )
        raise ValueError(f"{component} checkpoint does not match the model: " + "; ".join(parts))
    for name, tensor in model.state_dict().items():
        if tensor.shape != state_dict[name].shape:
            raise ValueError(
                f"{component} checkpoint does not match the model: {name!r} has shape "
                f"{tuple(state_dict[name].shape)} in the checkpoint but {tuple(tensor.shape)} in the model"
            )
    model.load_state_dict(state_dict, strict=True, assign=True)


def config_section(config: dict, section: str, path: str | os.PathLike) -> dict:
    """`config[section]` of a checkpoint's metadata, or a `ValueError` naming the file and the section."""
    if section not in config:
        raise ValueError(f"{os.fspath(path)!r}: the metadata config has no {section!r} section")
    return config[section]


def build_from_state_dict(
    model_cls, kwargs: dict, state_dict: dict[str, torch.Tensor], component: str
) -> torch.nn.Module:
    """`model_cls(**kwargs)` built on the meta device, filled strictly from `state_dict`, in eval mode."""
    with torch.device("meta"):
        model = model_cls(**kwargs)
    load_state_dict_strict(model, state_dict, component)
    return model.eval()


def check_torch_dtype(torch_dtype) -> None:
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype or None, got {torch_dtype!r}")
