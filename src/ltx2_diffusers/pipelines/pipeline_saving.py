"""`save_pretrained` of `LTX2AudioToVideoPipeline` and the restoring side of loading.

A saved folder is a converted folder plus the user's adapters:
- components as diffusers saves them, with CLEAN base weights (PEFT LoRA layers are taken out of the modules for
  the save and put back; a fused LoRA must be unfused or unloaded first, so the base weights are never
  silently baked);
- `distilled_lora/pytorch_lora_weights.safetensors`: the pipeline-owned distilled LoRA (diffusers LoRA format);
- `user_loras/<adapter>/pytorch_lora_weights.safetensors` (diffusers LoRA format with the adapter's PEFT configs
  as `lora_adapter_metadata`: `r`, `lora_alpha`, `rank_pattern`, `alpha_pattern` give each layer its own scaling
  again; folders saved before that carry PEFT's `lora_alpha / r` folded into `lora_B` and load as before) and
  `user_loras/adapters.json` (per component: the adapter weights, the active adapters, enabled);
- `model_index.json` naming the pipeline through the custom-pipeline shim (`_class_name: ["pipeline", ...]`) and
  `pipeline.py`, the shim itself, so `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` works.
The whole folder is built in a temporary sibling `.{name}.partial-XXXX/` and moved into place at the end, as the
converter's output (`loaders/output_folder.py`): an interrupted save (a full disk, an exception, a kill) leaves the
previous folder exactly as it was; an existing non-empty `save_directory` is replaced only when it is a previous save
or conversion by this package (its marker lists every file in it) holding nothing else, else refused with a
`ValueError` naming it and the first foreign entries: the user's files are never deleted. Saving into the folder the
pipeline was loaded from works: the previous folder is renamed aside and removed only once the new one is in place,
and the weights read from it stay valid (POSIX keeps a renamed or unlinked file's data while it is mapped). The save
needs room for both folders until the old one is removed: a file system with less free space than the weights, an
unwritable folder or a folder path below a file is refused (`ValueError` naming `save_directory`) before anything is
written. Only safetensors are written (`safe_serialization=False`
and `use_flashpack=True` are refused).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE
from diffusers.utils import logging

from ..loaders import output_folder
from ..validation import check_adapter_weights


logger = logging.get_logger(__name__)

USER_LORAS_SUBFOLDER = "user_loras"
ADAPTERS_FILE = "adapters.json"
LORA_COMPONENT_NAMES = ("transformer", "connectors")
#: `save_pretrained(..., push_to_hub=True)` options, as diffusers takes them.
HUB_OPTIONS = ("repo_id", "token", "commit_message", "create_pr", "private")


def shim_source(cls: type) -> str:
    from ..convert import PIPELINE_CLASS_NAME, PIPELINE_SHIM_SOURCE

    if cls.__name__ == PIPELINE_CLASS_NAME and cls.__module__.startswith("ltx2_diffusers."):
        return PIPELINE_SHIM_SOURCE
    return f'"""Custom-pipeline shim."""\n\nfrom {cls.__module__} import {cls.__name__}  # noqa: F401\n'


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


def _base_scaling(layer, adapter: str) -> float:
    """PEFT's `lora_alpha / r` of one layer (its own rank and alpha: `rank_pattern` / `alpha_pattern`), or
    `lora_alpha / sqrt(r)` with rsLoRA: the layer's scaling at adapter weight 1."""
    r = layer.r[adapter]
    return layer.lora_alpha[adapter] / (math.sqrt(r) if layer.use_rslora.get(adapter, False) else r)


def _component_adapter_state(model, adapter: str) -> tuple[float, dict[str, float]]:
    """The adapter's weight in `model` (`set_adapters`' weight: the first non-zero layer's scaling over that layer's
    base scaling; 0 when every layer is at 0) and, per layer holding it, what the layer's own weight differs from it
    by (1.0 unless a layer was scaled on its own, 0.0 for a layer at weight 0), folded into the layer's saved
    `lora_B`."""
    layers = [(name, layer) for name, layer in _lora_layers(model) if adapter in getattr(layer, "scaling", {})]
    if not layers:
        return 1.0, {}
    scaled = [layer for _, layer in layers if layer.scaling[adapter] != 0] or [layers[0][1]]
    weight = scaled[0].scaling[adapter] / _base_scaling(scaled[0], adapter)
    factors = {
        name: (layer.scaling[adapter] / (weight * _base_scaling(layer, adapter)) if weight != 0 else 1.0)
        for name, layer in layers
    }
    return weight, factors


def _adapter_metadata(config) -> dict:
    """The adapter's PEFT config as diffusers saves it with a LoRA (`lora_adapter_metadata`): sets as lists."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}


def user_adapter_files(pipe) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict[str, dict]]:
    """Per adapter, its diffusers-format LoRA tensors (all components) and its PEFT configs (`r`, `lora_alpha`,
    `rank_pattern`, `alpha_pattern`, ... per component: `<component>.<key>`, diffusers' `lora_adapter_metadata`),
    so that loading them rebuilds every layer's own scaling; and the adapters' state, per component:
    `weights[adapter][component]`, `active[component]`, `enabled[component]`."""
    from peft.utils import get_peft_model_state_dict

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    configs: dict[str, dict] = {}
    weights: dict[str, dict[str, float]] = {}
    active: dict[str, list[str]] = {}
    enabled: dict[str, bool] = {}
    for component in LORA_COMPONENT_NAMES:
        model = getattr(pipe, component, None)
        for adapter, config in (getattr(model, "peft_config", None) or {}).items():
            state = get_peft_model_state_dict(model, adapter_name=adapter)
            weight, factors = _component_adapter_state(model, adapter)
            out = tensors.setdefault(adapter, {})
            for key, value in state.items():
                value = value.detach().cpu()
                factor = factors.get(key.rpartition(".lora_B.")[0], 1.0) if ".lora_B." in key else 1.0
                keep = math.isclose(factor, 1.0, rel_tol=1e-6)  # the rounding of weight * base: no rescaling
                out[f"{component}.{key}"] = (value if keep else value * factor).contiguous()
            packed = {f"{component}.{k}": v for k, v in _adapter_metadata(config).items()}
            configs.setdefault(adapter, {}).update(packed)
            weights.setdefault(adapter, {})[component] = weight
        if model is not None and getattr(model, "peft_config", None):
            active[component] = list(model.active_adapters())
            layers = _lora_layers(model)
            enabled[component] = not (layers and all(layer.disable_adapters for _, layer in layers))
    return tensors, {"weights": weights, "active": active, "enabled": enabled}, configs


def check_saveable(pipe, safe_serialization=True, use_flashpack=False) -> None:
    """Refuse before writing anything: pickle or flashpack serialisation (only safetensors are written), fused LoRA
    layers, float8 weight scales that are not saved (`fp8.check_scales_saved`), an adapter name that
    is not a plain folder name (it names `user_loras/<adapter>/`: a separator or `..` would write outside the
    folder)."""
    from ..loaders.fp8 import check_scales_saved
    from ..loaders.safetensors_only import check_safetensors_save

    check_safetensors_save(safe_serialization, use_flashpack)
    if getattr(pipe, "transformer", None) is not None:
        check_scales_saved(pipe.transformer, "transformer")
    for component in LORA_COMPONENT_NAMES:
        for adapter in getattr(getattr(pipe, component, None), "peft_config", None) or {}:
            _check_adapter_folder_name(adapter)
        merged = [n for n, layer in _lora_layers(getattr(pipe, component, None)) if layer.merged]
        if merged:
            raise ValueError(
                f"{component} has fused LoRA layers ({merged[0]}, ...): call unfuse_lora() before save_pretrained, "
                "or unload_lora_weights() to keep the fused weights as the base weights"
            )


def _check_adapter_folder_name(adapter) -> None:
    separators = [sep for sep in (os.sep, os.altsep, "/", "\\") if sep]
    if not isinstance(adapter, str) or adapter in ("", ".", "..") or any(sep in adapter for sep in separators):
        raise ValueError(
            f"adapter name {adapter!r} cannot be saved: it names the folder user_loras/<adapter>/, so it must be a "
            "plain name without path separators (rename the adapter)"
        )


def save_folder(pipe, save_directory, save_components, hub: dict | None = None) -> None:
    """Build the saved folder in a temporary sibling (`save_components(tmp)`: diffusers' save of the components,
    then `write_extras`, the package marker and, with `hub`, the Hub model card, else the model card of the folder
    saved over when the pipeline was loaded from it: `_carried_card`) and move it to `save_directory`
    (see the module docstring); `ValueError` before any work for a `save_directory` that is not absent, empty or
    a previous save/conversion of this package holding nothing else. `hub` (`push_to_hub=True`): the
    `HUB_OPTIONS` given; the repository (default: the folder's name) is created before the save, as diffusers
    does, and the folder uploaded once it is in place."""
    target = Path(output_folder.resolved_path(save_directory))  # `link/../saved`: beside the link's target
    if target.is_dir() and not target.is_symlink():  # a killed save into this (then empty) folder left its build
        output_folder.remove_leftovers(target, {}, folder=target)
    output_folder.remove_leftovers(target, {})  # before inspecting: it may move a killed save's previous folder back
    expected = output_folder.inspect_output(target, overwrite=True, label="save_directory")
    _check_writable(target, expected)
    output_folder.check_free_space(target, weight_bytes(pipe), label="save_directory")
    if hub is not None:
        from huggingface_hub import create_repo

        repo = create_repo(
            hub.get("repo_id", target.name), exist_ok=True, private=hub.get("private"), token=hub.get("token")
        )
        hub = {**hub, "repo_id": repo.repo_id}

    carried = _carried_card(pipe, target, expected) if hub is None else None

    def build(folder: Path) -> None:
        save_components(os.fspath(folder))
        write_extras(pipe, folder)
        if carried is not None:  # the converter's model card of the folder saved over
            shutil.copyfile(carried, folder / "README.md")
        if hub is not None:
            from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card

            card = load_or_create_model_card(hub["repo_id"], token=hub.get("token"), is_pipeline=True)
            populate_model_card(card).save(os.fspath(folder / "README.md"))
        output_folder.write_marker(folder)

    if expected.kind == "empty":
        _fill_empty_folder(target, build)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = output_folder.TempFolder(target, "partial")
        try:
            build(partial.path)
            output_folder.publish(partial.path, target, expected, label="save_directory")
        except BaseException:
            partial.release(remove=True)
            raise
        partial.release(remove=False)
    if hub is not None:
        pipe._upload_folder(
            os.fspath(target),
            hub["repo_id"],
            token=hub.get("token"),
            commit_message=hub.get("commit_message"),
            create_pr=hub.get("create_pr", False),
        )


def weight_bytes(pipe) -> int:
    """Bytes of the components' weights as saved (`component_save.weight_bytes`)."""
    from ..loaders.component_save import weight_bytes as module_bytes

    return module_bytes(c for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def _check_writable(target: Path, expected) -> None:
    """`ValueError` naming `save_directory` before anything is written (or created) when the save cannot land: a
    folder above it is a file, or the folder it is built in is not writable (an existing empty `save_directory` is
    filled in place: that folder itself; else the nearest existing folder above it)."""
    from ..cli_safety import check_output_folder

    if expected.kind != "empty":
        check_output_folder("save_directory", os.fspath(target))
    elif not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"save_directory {os.fspath(target)!r} is an empty folder this process cannot write in")


def _carried_card(pipe, target: Path, expected) -> Path | None:
    """The model card (README.md) of the converted folder the pipeline was loaded from, when saving over that same
    folder: it describes the same weights, so the new save keeps it. It is unchanged: `inspect_output` refused a
    folder whose listed files were edited since it was written (markers without sizes and times: not checked)."""
    source = getattr(pipe, "config", {}).get("_name_or_path")
    card = target / "README.md"
    if expected.kind != "conversion" or not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return None
    if os.path.realpath(source) != os.path.realpath(target) or card.is_symlink() or not card.is_file():
        return None
    return card


def _fill_empty_folder(target: Path, build) -> None:
    """Save into an existing empty `save_directory`, which is kept as it is (it may be a mount point, or sit in a
    folder the user cannot write): the save is built in a hidden folder inside it, then its entries are moved up,
    the package marker last. On any failure what was moved is removed again, so the folder is left empty. The hidden
    folder holds a locked temp marker, as the converter's: if the save is killed, the next save into the folder
    removes it (`output_folder.remove_leftovers`, with a warning naming it)."""
    where = os.fspath(target)
    partial = output_folder.TempFolder(target, "partial", folder=target)
    tmp = partial.path
    moved = []
    try:
        build(tmp)
        others = sorted(set(os.listdir(target)) - {tmp.name})
        if others:
            raise ValueError(f"save_directory {where!r} is no longer empty ({others[:5]}); nothing was saved")
        entries = set(os.listdir(tmp)) - {output_folder.TEMP_MARKER_NAME}
        for name in sorted(entries, key=lambda n: n == output_folder.MARKER_NAME):
            output_folder._rename_noreplace(tmp / name, target / name)
            moved.append(target / name)
    except BaseException:
        for path in moved:  # only entries this save moved in (the folder was empty)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        partial.release(remove=True)
        raise
    partial.release(remove=True)  # only its temp marker is left in it


def write_extras(pipe, save_directory) -> None:
    """The user adapters, the shim and the custom-pipeline `_class_name`, after diffusers saved the components
    (into the temporary folder of `save_folder`)."""
    from safetensors.torch import save_file

    save_directory = os.fspath(save_directory)
    tensors, state, configs = user_adapter_files(pipe)
    for adapter, part in tensors.items():
        folder = os.path.join(save_directory, USER_LORAS_SUBFOLDER, adapter)
        os.makedirs(folder, exist_ok=True)
        metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(configs[adapter], sort_keys=True)}
        save_file(part, os.path.join(folder, LORA_WEIGHT_NAME_SAFE), metadata=metadata)
    if tensors:
        with open(os.path.join(save_directory, USER_LORAS_SUBFOLDER, ADAPTERS_FILE), "w") as f:
            f.write(json.dumps(state, indent=2))
    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["_class_name"] = ["pipeline", type(pipe).__name__]
    with open(index_path, "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(save_directory, "pipeline.py"), "w") as f:
        f.write(shim_source(type(pipe)))


def _check_adapter_state(state, path: str) -> None:
    """`adapters.json` as `save_pretrained` writes it (this form, or the earlier one: `active` a list, `enabled` a
    bool, one weight per adapter); `ValueError` naming the file otherwise, before any adapter is loaded."""

    def bad(what: str):
        return ValueError(f"{path}: {what} (a file written by save_pretrained was expected)")

    if not isinstance(state, dict) or not {"weights", "active", "enabled"} <= set(state):
        raise bad("an object with 'weights', 'active' and 'enabled' is expected")
    weights, active, enabled = state["weights"], state["active"], state["enabled"]
    if not isinstance(weights, dict):
        raise bad("'weights' must map adapter names to weights")
    for adapter in weights:
        _check_adapter_folder_name(adapter)
    check_adapter_weights(weights, f"{path} weights")
    if isinstance(active, list):  # the earlier form
        if not isinstance(enabled, bool) or any(a not in weights for a in active):
            raise bad("'active' must list saved adapters and 'enabled' be true or false")
        return
    if not isinstance(active, dict) or not isinstance(enabled, dict):
        raise bad("'active' and 'enabled' must be per component")
    for component, names in active.items():
        if not isinstance(names, list) or any(not isinstance(weights.get(a), dict) for a in names):
            raise bad(f"'active' of {component!r} must list saved adapters with per-component weights")
        if any(component not in weights[a] for a in names):
            raise bad(f"an adapter active in {component!r} has no weight for it")
    if not all(isinstance(v, bool) for v in enabled.values()):
        raise bad("'enabled' must map components to true or false")


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
        try:
            state = json.load(f)
        except ValueError as error:
            raise ValueError(f"{state_path} is not valid JSON: {error}") from None
    _check_adapter_state(state, state_path)
    for adapter in state["weights"]:
        pipe.load_lora_weights(os.path.join(root, adapter), weight_name=LORA_WEIGHT_NAME_SAFE, adapter_name=adapter)
    if isinstance(state["active"], list):  # written before the state was kept per component: one for all
        if state["active"]:
            pipe.set_adapters(state["active"], [state["weights"][a] for a in state["active"]])
        if not state["enabled"]:
            pipe.disable_lora()
        return
    for component, names in state["active"].items():
        model = getattr(pipe, component, None) if component in LORA_COMPONENT_NAMES else None
        if model is None or not getattr(model, "peft_config", None):
            continue
        if names:
            model.set_adapters(names, [state["weights"][a][component] for a in names])
        if not state["enabled"].get(component, True):
            model.disable_lora()
