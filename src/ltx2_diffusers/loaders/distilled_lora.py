"""The stage-2 distilled LoRA, owned by the pipeline and kept OUTSIDE PEFT.

`LTX2DistilledLoRA` holds one `(A, B)` pair per target linear of the transformer (our module names) and is a
pipeline component (`distilled_lora`), saved as a diffusers-format LoRA file (`pytorch_lora_weights.safetensors`,
keys `transformer.<module>.lora_A.weight` / `.lora_B.weight`). It never becomes a PEFT adapter, so the user's
adapters (`set_adapters`, `fuse_lora`, `disable_lora`, `delete_adapters`, `unload_lora_weights`) are untouched.

Inside `store.applied(transformer, scale)` every target linear computes `F.linear(x, W + delta, b)` with
`delta = (B * scale) @ A` formed in the weight's dtype, as ltx-core fuses a LoRA at load time, without keeping a
second copy of the weights: the target linear's class is swapped for the block to a subclass whose `weight`
attribute returns `W + delta`. This works whether the linear is plain or the `base_layer` of a user's PEFT LoRA
layer (PEFT then adds the user's adapters on top, or has merged them into `W`), and under accelerate / diffusers
offload hooks (they wrap `forward`, which reads `self.weight` after the weights are on the device; the factors
follow the weight's device at each use, copied asynchronously when they are kept in pinned host memory, as the
offloading memory tiers keep them). Linears running float8 scaled matmuls (`enable_fp8_scaled_mm`) compute with the
delta fused into a requantised float8 weight formed at every call (`fp8.attach_fused_lora`, ltx-core's scaled-fp8
fuse); other float8 linears (upcast at compute) get `scale * B(A(x))` added to their output by a forward hook
instead, and a marker subclass: `torch.compile` does not guard on hooks, the class change is what makes compiled
blocks recompile.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging

from ..validation import check_lora_strength
from .fp8 import attach_fused_lora, detach_fused_lora, is_scaled_mm_linear
from .prefetch import wait_until_read


logger = logging.get_logger(__name__)

#: The pipeline component (and converted-folder subfolder) holding the distilled LoRA.
DISTILLED_LORA_SUBFOLDER = "distilled_lora"
#: Its file: diffusers' LoRA file name (the file is in diffusers' LoRA format).
DISTILLED_LORA_WEIGHT_NAME = LORA_WEIGHT_NAME_SAFE
#: `load_lora_weights(..., adapter_name=DISTILLED_ADAPTER_NAME)` loads the distilled LoRA, not a PEFT adapter.
DISTILLED_ADAPTER_NAME = "distilled"
#: Its default strength (`distilled_lora_scale`): the converter's, `from_single_file`'s and the CLIs' (the reference
#: CLI uses 1.0).
DEFAULT_DISTILLED_LORA_SCALE = 0.8
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
DELTA_ATTRIBUTE = "_ltx2_distilled_delta"
_SUBCLASSES: dict[tuple[type, bool], type] = {}


class _WeightWithDelta:
    """Mixed in front of a linear's class while the distilled LoRA is applied: `weight` reads as `W + delta`."""

    def __getattr__(self, name):
        value = super().__getattr__(name)
        if name != "weight":
            return value
        a, b, scale = self.__dict__[DELTA_ATTRIBUTE]
        delta = torch.matmul(_on_weight(b, value) * scale, _on_weight(a, value))
        return delta + value


def _on_weight(factor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`factor` on the weight's device, then in its dtype. Factors kept on the host (offloading memory tiers) are
    copied without blocking the host (asynchronous from pinned memory); the cast is done on the weight's device."""
    non_blocking = factor.device.type == "cpu" and weight.device.type != "cpu"
    return factor.to(weight.device, non_blocking=non_blocking).to(weight.dtype)


def _with_delta_class(cls: type, hooked: bool = False) -> type:
    """`cls` with `_WeightWithDelta` in front; `hooked`: a subclass adding nothing (float8 linears get the delta
    from a forward hook; the class change is what makes `torch.compile`d blocks recompile, as dynamo does not
    guard on hooks)."""
    if (cls, hooked) not in _SUBCLASSES:
        bases = (cls,) if hooked else (_WeightWithDelta, cls)
        suffix = "WithDistilledLoRAHook" if hooked else "WithDistilledLoRA"
        _SUBCLASSES[cls, hooked] = type(f"{cls.__name__}{suffix}", bases, {})
    return _SUBCLASSES[cls, hooked]


def _target_linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """The linear computing `name`: the module itself, or the base layer of a PEFT LoRA layer wrapped around it."""
    module = model.get_submodule(name)
    while hasattr(module, "base_layer"):
        module = module.base_layer
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"distilled LoRA target {name!r} is a {type(module).__name__}, not a linear layer")
    return module


def _mapped_device(device_map) -> str | int:
    """The one device a `from_pretrained` `device_map` names ("cpu" for none; a CUDA device without an index is the
    current one, as diffusers places the other components); `ValueError` for a map that splits the component over
    devices (its factors are used together) or names no device to read onto."""
    if device_map is None:
        return "cpu"
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(
                f"distilled LoRA: device_map must name one device for the whole component, got {device_map}"
            )
        device_map = device_map[""]
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        if device_map < 0:
            raise ValueError(f"distilled LoRA: device_map {device_map} is not a device index (expected >= 0)")
        return device_map
    if isinstance(device_map, str):
        try:
            device_map = torch.device(device_map)
        except RuntimeError:
            raise ValueError(f"distilled LoRA: device_map {device_map!r} is not a device") from None
    if not isinstance(device_map, torch.device):
        raise TypeError(f"distilled LoRA: device_map must be a device (str, int or torch.device), got {device_map!r}")
    if device_map.type == "meta":
        raise ValueError("distilled LoRA: device_map 'meta' holds no values to read the factors onto")
    if device_map.type == "cuda" and device_map.index is None:
        return f"cuda:{torch.cuda.current_device()}"  # safetensors reads a bare "cuda" as device 0
    return str(device_map)


class LTX2DistilledLoRA(ModelMixin, ConfigMixin):
    """The distilled LoRA's `(A, B)` pairs `A [rank, in]`, `B [out, rank]` per transformer linear (our names)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, targets: list[str] | tuple[str, ...] = ()):
        super().__init__()
        self._targets = list(targets)
        for i, name in enumerate(self._targets):
            self.register_buffer(f"lora_A_{i}", torch.empty(0), persistent=False)
            self.register_buffer(f"lora_B_{i}", torch.empty(0), persistent=False)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "LTX2DistilledLoRA":
        """From diffusers-format keys `transformer.<module>.lora_A.weight` / `.lora_B.weight` (others refused; at
        least one pair; tensor values only); the store holds copies of the tensors."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of key -> tensor, got {type(state_dict).__name__}")
        if not state_dict:
            raise ValueError("distilled LoRA state_dict is empty: expected transformer lora_A / lora_B weights")
        return cls._from_tensors(state_dict, copy=True)

    @classmethod
    def _from_tensors(cls, state_dict: Mapping[str, torch.Tensor], copy: bool) -> "LTX2DistilledLoRA":
        """`from_state_dict`; without `copy` the store takes the tensors themselves (freshly read from a file)."""
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"distilled LoRA {key!r} is a {type(value).__name__}, expected a torch.Tensor")
            for part in ("lora_A", "lora_B"):
                suffix = f".{part}.weight"
                if key.startswith("transformer.") and key.endswith(suffix):
                    pairs.setdefault(key[len("transformer.") : -len(suffix)], {})[part] = value
                    break
            else:
                raise ValueError(f"distilled LoRA key {key!r} is not a transformer lora_A/lora_B weight")
        incomplete = sorted(name for name, pair in pairs.items() if len(pair) != 2)
        if incomplete:
            raise ValueError(f"distilled LoRA modules without both lora_A and lora_B: {incomplete[:10]}")
        for name, pair in pairs.items():
            for part, tensor in pair.items():
                if not tensor.is_floating_point():
                    raise ValueError(f"distilled LoRA {name}.{part} has dtype {tensor.dtype}, expected a float dtype")
                if not torch.isfinite(tensor.float()).all():
                    raise ValueError(f"distilled LoRA {name}.{part} holds non-finite values")
            a, b = pair["lora_A"], pair["lora_B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(
                    f"distilled LoRA {name}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not a "
                    "[rank, in] / [out, rank] pair"
                )
        store = cls(targets=sorted(pairs))
        for i, name in enumerate(store._targets):
            for part in ("lora_A", "lora_B"):
                tensor = pairs[name][part].detach()
                setattr(store, f"{part}_{i}", tensor.clone() if copy else tensor)
        return store

    def pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            name: (getattr(self, f"lora_A_{i}"), getattr(self, f"lora_B_{i}")) for i, name in enumerate(self._targets)
        }

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """diffusers-format LoRA keys (what `save_pretrained` writes)."""
        out = {}
        for name, (a, b) in self.pairs().items():
            out[f"transformer.{name}.lora_A.weight"] = a.contiguous()
            out[f"transformer.{name}.lora_B.weight"] = b.contiguous()
        return out

    # -------------------------------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "LTX2DistilledLoRA":
        """A `distilled_lora/` folder (or the safetensors file itself): `pytorch_lora_weights.safetensors`; its
        `config.json` is optional (converted folders before this component existed have none); its `connectors.*`
        tensors (the converter keeps them) are skipped. A `device_map` naming one device (`"cuda"`, `0`,
        `{"": device}`, as diffusers passes it to each component) reads the tensors onto that device; diffusers'
        other loading options (`torch_dtype`, ...) are accepted and ignored: the tensors keep their file dtype, and
        are cast to each weight's dtype when the delta is formed (ltx-core's arithmetic)."""
        from safetensors import SafetensorError, safe_open

        from .single_file import _check_safetensors_file

        path = os.fspath(pretrained_model_name_or_path)
        subfolder = kwargs.get("subfolder")
        if subfolder:
            path = os.path.join(path, subfolder)
        if os.path.isdir(path):
            path = os.path.join(path, DISTILLED_LORA_WEIGHT_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"distilled LoRA file {path!r} not found")
        _check_safetensors_file(path)  # ValueError naming the file: not safetensors, empty, truncated
        device = _mapped_device(kwargs.get("device_map"))
        if kwargs.get("device_map") is not None:
            wait_until_read(os.path.dirname(path))  # read by the prefetch first (loaders.prefetch)
        # The converter keeps the source LoRA's text-connector part (`connectors.*`); the reference applies the
        # distilled LoRA to the transformer only, so that part is not read (as `load_lora_weights` does).
        try:
            with safe_open(path, framework="pt", device=device) as f:
                keys = list(f.keys())
                state_dict = {k: f.get_tensor(k) for k in keys if not k.startswith("connectors.")}
        except SafetensorError as error:
            raise ValueError(f"distilled LoRA file {path!r} is not a readable safetensors file: {error}") from None
        if not state_dict:
            raise ValueError(
                f"distilled LoRA file {path!r} holds no transformer LoRA tensors ({len(keys)} tensors, none "
                "transformer.*.lora_A / lora_B)"
            )
        if len(state_dict) < len(keys):
            logger.info(
                f"the distilled LoRA's {len(keys) - len(state_dict)} connector tensors are not used (the reference "
                "ignores them)"
            )
        return cls._from_tensors(state_dict, copy=False)

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs) -> None:
        """`save_directory/pytorch_lora_weights.safetensors` (diffusers LoRA format) and `config.json`, both written
        into a temporary folder and then renamed into place, the config last (`component_save.save_files`): a save
        that fails or is interrupted leaves the earlier pair as it was, never a new weights file beside an old
        config (as diffusers' `save_pretrained`, existing files of these names are replaced on success)."""
        from safetensors.torch import save_file

        from .component_save import save_files

        if not is_main_process:
            return
        tensors = {k: v.detach().cpu() for k, v in self.lora_state_dict().items()}
        config = json.dumps({"_class_name": type(self).__name__, "targets": self._targets}, indent=2)

        def build(folder):
            save_file(tensors, os.path.join(folder, DISTILLED_LORA_WEIGHT_NAME), metadata={"format": "pt"})
            with open(os.path.join(folder, self.config_name), "w") as f:
                f.write(config)

        writes = re.compile(f"{re.escape(DISTILLED_LORA_WEIGHT_NAME)}|{re.escape(self.config_name)}")
        save_files(save_directory, build, writes)

    # -------------------------------------------------------------------------------------------- compute
    def check_fits(self, transformer: torch.nn.Module) -> None:
        """`ValueError` naming the module if a target is not a linear of `transformer` whose weight the pair fits."""
        for name, (a, b) in self.pairs().items():
            try:
                linear = _target_linear(transformer, name)
            except AttributeError:
                raise ValueError(f"distilled LoRA target {name!r} is not a module of the transformer") from None
            if tuple(a.shape[1:]) != tuple(linear.weight.shape[1:]) or b.shape[0] != linear.weight.shape[0]:
                raise ValueError(
                    f"distilled LoRA {name}: A{list(a.shape)} B{list(b.shape)} do not fit the weight "
                    f"{list(linear.weight.shape)}"
                )

    @contextlib.contextmanager
    def applied(self, transformer: torch.nn.Module, scale: float):
        """Within the block, every target linear of `transformer` computes with `W + (B * scale) @ A`; `scale` is a
        LoRA strength (`validation.check_lora_strength`: finite, `|scale| <= MAX_LORA_STRENGTH`)."""
        scale = check_lora_strength("scale", scale)
        self.check_fits(transformer)
        swapped, hooks, hooked, fused = [], [], set(), []
        try:
            for name, (a, b) in self.pairs().items():
                linear = _target_linear(transformer, name)
                scaled_mm = is_scaled_mm_linear(linear)
                if (
                    type(linear) in _SUBCLASSES.values()
                    or id(linear) in hooked
                    or (scaled_mm and linear.fp8_fused_lora is not None)
                ):
                    raise ValueError(
                        f"distilled LoRA {name}: the layer already carries a distilled LoRA (two targets naming one "
                        "linear, or applied() nested)"
                    )
                hooked.add(id(linear))
                if scaled_mm:
                    attach_fused_lora(linear, a, b, float(scale))
                    fused.append(linear)
                    continue
                if linear.weight.dtype in _FP8:
                    hooks.append(linear.register_forward_hook(_output_delta_hook(a, b, scale)))
                    # torch.compile does not guard on hooks: the class change makes compiled blocks recompile.
                    swapped.append((linear, type(linear)))
                    linear.__class__ = _with_delta_class(type(linear), hooked=True)
                    continue
                linear.__dict__[DELTA_ATTRIBUTE] = (a, b, float(scale))
                swapped.append((linear, type(linear)))
                linear.__class__ = _with_delta_class(type(linear))
            yield
        finally:
            for linear, cls in swapped:
                linear.__class__ = cls
                linear.__dict__.pop(DELTA_ATTRIBUTE, None)
            for hook in hooks:
                hook.remove()
            for linear in fused:
                detach_fused_lora(linear)


def _output_delta_hook(a: torch.Tensor, b: torch.Tensor, scale: float):
    def hook(module, args, output):
        x = args[0].to(output.device, output.dtype)
        return output + F.linear(F.linear(x, a.to(x)), b.to(x)) * scale

    return hook
