"""`save_pretrained` of `LTX2AudioToVideoPipeline` and the restoring side of loading.

A saved folder is a converted folder plus the user's adapters:
- components as diffusers saves them, with CLEAN base weights (PEFT LoRA layers are taken out of the modules for
  the save and put back; a fused LoRA must be unfused or unloaded first, so the base weights are never
  silently baked);
- `distilled_lora/pytorch_lora_weights.safetensors`: the pipeline-owned distilled LoRA (diffusers LoRA format);
- `user_loras/<adapter>/pytorch_lora_weights.safetensors` (diffusers LoRA format, PEFT's `lora_alpha / r` folded
  into `lora_B`) and `user_loras/adapters.json` (adapter weights, active adapters, enabled);
- `model_index.json` naming the pipeline through the custom-pipeline shim (`_class_name: ["pipeline", ...]`) and
  `pipeline.py`, the shim itself, so `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` works.
Files are written to a temporary name and renamed; an existing `pipeline.py` that is not the shim is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import torch
from diffusers.utils import logging


logger = logging.get_logger(__name__)

USER_LORAS_SUBFOLDER = "user_loras"
ADAPTERS_FILE = "adapters.json"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_COMPONENT_NAMES = ("transformer", "connectors")


def shim_source(cls: type) -> str:
    from ..convert import PIPELINE_CLASS_NAME, PIPELINE_SHIM_SOURCE

    if cls.__name__ == PIPELINE_CLASS_NAME and cls.__module__.startswith("ltx2_diffusers."):
        return PIPELINE_SHIM_SOURCE
    return f'"""Custom-pipeline shim."""\n\nfrom {cls.__module__} import {cls.__name__}  # noqa: F401\n'


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)] if model else []


@contextlib.contextmanager
def peft_layers_removed(components: dict):
    """Within the block, each PEFT LoRA layer of `components` is replaced in its parent by its base layer."""
    swapped = []
    try:
        for model in components.values():
            for name, layer in _lora_layers(model):
                if not name:
                    continue
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                if getattr(parent, child, None) is layer:
                    setattr(parent, child, layer.get_base_layer())
                    swapped.append((parent, child, layer))
        yield
    finally:
        for parent, child, layer in reversed(swapped):
            setattr(parent, child, layer)


def _adapter_weight(model, adapter: str) -> float:
    config = model.peft_config[adapter]
    base = config.lora_alpha / config.r
    for _, layer in _lora_layers(model):
        if adapter in getattr(layer, "scaling", {}):
            return layer.scaling[adapter] / base
    return 1.0


def user_adapter_files(pipe) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Per adapter, its diffusers-format LoRA tensors (all components), and the adapters' state."""
    from peft.utils import get_peft_model_state_dict

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    weights: dict[str, float] = {}
    active, enabled = [], True
    for component in LORA_COMPONENT_NAMES:
        model = getattr(pipe, component, None)
        for adapter, config in (getattr(model, "peft_config", None) or {}).items():
            state = get_peft_model_state_dict(model, adapter_name=adapter)
            scaling = config.lora_alpha / config.r
            out = tensors.setdefault(adapter, {})
            for key, value in state.items():
                value = value.detach().cpu()
                out[f"{component}.{key}"] = (value * scaling if ".lora_B." in key else value).contiguous()
            weights.setdefault(adapter, _adapter_weight(model, adapter))
        if model is not None and getattr(model, "peft_config", None):
            active = list(dict.fromkeys(active + list(model.active_adapters())))
            layers = _lora_layers(model)
            enabled = enabled and not (layers and all(layer.disable_adapters for _, layer in layers))
    return tensors, {"weights": weights, "active": active, "enabled": enabled}


def check_saveable(pipe, save_directory) -> None:
    """Refuse before writing anything: fused LoRA layers, float8 scaled-mm linears (their scales are run-time
    buffers that are not saved), a foreign `pipeline.py`, an adapter name that is not a plain folder name (it
    names `user_loras/<adapter>/`: a separator or `..` would write outside the folder)."""
    from ..loaders.fp8 import is_scaled_mm_linear

    transformer = getattr(pipe, "transformer", None)
    scaled = [n for n, m in transformer.named_modules() if is_scaled_mm_linear(m)] if transformer is not None else []
    if scaled:
        raise ValueError(
            f"transformer runs float8 scaled matmuls (enable_fp8_scaled_mm: {scaled[0]}, ...), whose weight scales "
            "are not saved; save the pipeline before enable_fp8_scaled_mm, and apply it again after loading"
        )
    for component in LORA_COMPONENT_NAMES:
        for adapter in getattr(getattr(pipe, component, None), "peft_config", None) or {}:
            _check_adapter_folder_name(adapter)
        merged = [n for n, layer in _lora_layers(getattr(pipe, component, None)) if layer.merged]
        if merged:
            raise ValueError(
                f"{component} has fused LoRA layers ({merged[0]}, ...): call unfuse_lora() before save_pretrained, "
                "or unload_lora_weights() to keep the fused weights as the base weights"
            )
    shim = os.path.join(os.fspath(save_directory), "pipeline.py")
    if os.path.exists(shim):
        with open(shim) as f:
            if f.read() != shim_source(type(pipe)):
                raise ValueError(f"{shim} exists and is not this pipeline's shim: refusing to replace it")


def _check_adapter_folder_name(adapter) -> None:
    separators = [sep for sep in (os.sep, os.altsep, "/", "\\") if sep]
    if not isinstance(adapter, str) or adapter in ("", ".", "..") or any(sep in adapter for sep in separators):
        raise ValueError(
            f"adapter name {adapter!r} cannot be saved: it names the folder user_loras/<adapter>/, so it must be a "
            "plain name without path separators (rename the adapter)"
        )


def write_extras(pipe, save_directory) -> None:
    """The user adapters, the shim and the custom-pipeline `_class_name`, after diffusers saved the components."""
    from safetensors.torch import save_file

    save_directory = os.fspath(save_directory)
    tensors, state = user_adapter_files(pipe)
    for adapter, part in tensors.items():
        folder = os.path.join(save_directory, USER_LORAS_SUBFOLDER, adapter)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lora.", dir=folder)
        os.close(fd)
        try:
            save_file(part, tmp, metadata={"format": "pt"})
            os.replace(tmp, os.path.join(folder, LORA_WEIGHT_NAME))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    if tensors:
        _write_atomic(os.path.join(save_directory, USER_LORAS_SUBFOLDER, ADAPTERS_FILE), json.dumps(state, indent=2))
    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["_class_name"] = ["pipeline", type(pipe).__name__]
    _write_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    _write_atomic(os.path.join(save_directory, "pipeline.py"), shim_source(type(pipe)))


def restore_user_adapters(pipe, folder: str) -> None:
    """Load `user_loras/` of a saved folder and restore their weights/state, unless the components already carry
    PEFT adapters (a live pipeline's components, e.g. through `from_pipe`): those and their state are the user's
    and are left as they are."""
    root = os.path.join(folder, USER_LORAS_SUBFOLDER)
    state_path = os.path.join(root, ADAPTERS_FILE)
    if not os.path.isfile(state_path):
        return
    loaded = set()
    for component in LORA_COMPONENT_NAMES:
        loaded |= set(getattr(getattr(pipe, component, None), "peft_config", None) or {})
    if loaded:
        logger.info(f"{state_path} not restored: the components already carry adapters {sorted(loaded)}")
        return
    with open(state_path) as f:
        state = json.load(f)
    for adapter in state["weights"]:
        _check_adapter_folder_name(adapter)
    for adapter in state["weights"]:
        pipe.load_lora_weights(os.path.join(root, adapter), weight_name=LORA_WEIGHT_NAME, adapter_name=adapter)
    if state["active"]:
        pipe.set_adapters(state["active"], [state["weights"][a] for a in state["active"]])
    if not state["enabled"]:
        pipe.disable_lora()
