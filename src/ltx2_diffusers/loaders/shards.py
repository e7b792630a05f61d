"""Plain safetensors I/O for the converter: header parsing, single-tensor reads, pre-planned shard writes, CRCs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from .single_file import read_metadata


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
