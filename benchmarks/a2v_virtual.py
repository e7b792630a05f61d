"""The virtual checkpoint both sides of benchmarks/a2v_end_to_end.py read: the original single-file key names and
shapes from ltx-core's own models built on the meta device (tests/factories.py, benchmarks/convert_memory.py), every
tensor drawn when a loader asks for it, seeded by its key (no file is written), and `serve`, which answers
`safetensors.safe_open` for the virtual paths only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import pathlib
import sys
from unittest import mock

import torch


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import factories  # noqa: E402


GEMMA_HIDDEN, GEMMA_STATES = 3840, 49
CHECKPOINT = "/virtual/ltx-2.3-random.safetensors"
UPSAMPLER = "/virtual/ltx-2.3-spatial-upscaler-random.safetensors"
LORA = "/virtual/ltx-2.3-distilled-lora-random.safetensors"
LARGE = 1 << 20  # tensors above this many elements are drawn on the generation device, in the target dtype


# ---------------------------------------------------------------------------------------------------------
# Virtual checkpoints
# ---------------------------------------------------------------------------------------------------------
def _seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class VirtualFile:
    """key -> recipe; `get_tensor` draws the value (small: factories' seeded CPU values; large: normal noise)."""

    def __init__(self, metadata: dict, dtype: torch.dtype, device: torch.device, seed: int):
        self.metadata, self.dtype, self.device, self.seed = metadata, dtype, device, seed
        self.out = device  # where get_tensor hands values out (drawn on `device`)
        self.small: dict[str, torch.Tensor] = {}
        self.large: dict[str, tuple[tuple[int, ...], float]] = {}

    def keys(self):
        return list(self.small) + list(self.large)

    def shape(self, key):
        return tuple(self.small[key].shape) if key in self.small else self.large[key][0]

    def get(self, key: str) -> torch.Tensor:
        if key in self.small:
            return self.small[key].to(self.out)
        shape, std = self.large[key]
        generator = torch.Generator(self.device).manual_seed(_seed(self.seed, key))
        value = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        return value.mul_(std).to(self.out)

    def nbytes(self) -> int:
        size = self.dtype.itemsize
        return sum(t.nbytes for t in self.small.values()) + sum(math.prod(s) * size for s, _ in self.large.values())


def _std(model: torch.nn.Module, model_key: str, shape) -> float:
    module_name, _, _ = model_key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    nn = torch.nn
    if isinstance(module, nn.Linear):
        fan_in = module.in_features
    elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        fan_in = shape[0] * math.prod(shape[2:]) / math.prod(module.stride)
    else:
        fan_in = math.prod(shape[1:])
    return factories._vocoder_gain(model, module_name) / math.sqrt(max(fan_in, 1))


def _fill(vf: VirtualFile, model_name: str, model: torch.nn.Module) -> None:
    key_map = factories.file_key_map(model_name, model)
    cache: dict = {}
    for model_key, tensor in model.state_dict(keep_vars=True).items():
        key = key_map[model_key]
        if key in vf.small or key in vf.large:
            continue
        if tensor.numel() > LARGE and model_key.endswith("weight"):
            vf.large[key] = (tuple(tensor.shape), _std(model, model_key, tensor.shape))
        else:
            value = factories._random_value(model, model_key, tensor, vf.seed, key, cache)
            vf.small[key] = value.to(vf.dtype).contiguous()


def full_size_config() -> tuple[dict, dict]:
    """LTX-2.3 at release size (48 blocks, 8 connector blocks) and the released x2 spatial upsampler."""
    from convert_memory import full_width_config

    return full_width_config(48, 8), factories.upsampler_config(mid_channels=1024)


def virtual_files(config, upsampler_config, lora_rank, dtype, device, seed=0, gemma_dims=(GEMMA_HIDDEN, GEMMA_STATES)):
    checkpoint = VirtualFile({"config": json.dumps(config), "model_version": "2.3.0"}, dtype, device, seed)
    for model_names in factories._COMPONENT_MODELS.values():
        for name in model_names:
            _fill(checkpoint, name, factories._instantiate(name, config, gemma_dims))
    upsampler = VirtualFile({"config": json.dumps(upsampler_config)}, dtype, device, seed + 1)
    _fill(upsampler, "upsampler", factories._instantiate("upsampler", upsampler_config))
    # The distilled LoRA, ComfyUI format, over the block linears (factories.build_lora's layout and scales).
    lora = VirtualFile({}, dtype, device, seed + 2)
    prefix = "model.diffusion_model."
    targets = tuple("." + t for t in factories._LORA_TARGETS)
    for key in sorted(checkpoint.keys()):
        shape = checkpoint.shape(key)
        if not key.startswith(prefix + "transformer_blocks.") or not key.endswith(".weight") or len(shape) != 2:
            continue
        module = key[: -len(".weight")]
        if not module.endswith(targets):
            continue
        out_features, in_features = shape
        name = "diffusion_model." + module[len(prefix) :]
        lora.large[name + ".lora_A.weight"] = ((lora_rank, in_features), 1.0 / math.sqrt(in_features))
        lora.large[name + ".lora_B.weight"] = ((out_features, lora_rank), 0.5 / math.sqrt(lora_rank))
    return {CHECKPOINT: checkpoint, UPSAMPLER: upsampler, LORA: lora}


_SAFETENSORS_DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class _Handle:
    def __init__(self, vf: VirtualFile, device):
        self.vf, self.device = vf, device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return self.vf.keys()

    def metadata(self):
        return dict(self.vf.metadata)

    def get_slice(self, key):
        shape = self.vf.shape(key)
        dtype = self.vf.small[key].dtype if key in self.vf.small else self.vf.dtype
        name = _SAFETENSORS_DTYPE_NAMES[dtype]
        return type("Slice", (), {"get_shape": lambda self: list(shape), "get_dtype": lambda self: name})()

    def get_tensor(self, key):
        value = self.vf.get(key)
        return value if self.device is None else value.to(self.device)


@contextlib.contextmanager
def serve(files: dict[str, VirtualFile]):
    """Answer `safe_open` (safetensors' and the names our loaders imported) for the virtual paths."""
    import safetensors

    from ltx2_diffusers.loaders import single_file, single_file_connectors

    real_open, real_check = safetensors.safe_open, single_file._check_safetensors_file

    def safe_open(path, framework="pt", device=None):
        path = str(path)
        if path in files:
            return _Handle(
                files[path], None if device in (None, "cpu") and files[path].device.type == "cpu" else device
            )
        return real_open(path, framework=framework, device=device or "cpu")

    def check(path):
        if str(path) not in files:
            real_check(path)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(safetensors, "safe_open", safe_open))
        stack.enter_context(mock.patch.object(single_file, "safe_open", safe_open))
        stack.enter_context(mock.patch.object(single_file_connectors, "safe_open", safe_open))
        stack.enter_context(mock.patch.object(single_file, "_check_safetensors_file", check))
        yield
