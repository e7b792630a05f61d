"""LTX-2 LoRAs: the original LTX / ComfyUI format and diffusers' format, mapped onto our transformer and connectors.

Original files name modules as the single-file checkpoint does (`diffusion_model.transformer_blocks.0.attn1.to_q`
+ `.lora_A.weight` [rank, in] / `.lora_B.weight` [out, rank]); ltx-core applies them as `W + strength * B @ A`,
ignoring any `.alpha`. The module paths go through the same key tables as the checkpoint (transformer and
connectors), so the diffusers-format names are `transformer.<our module>.lora_A.weight` and
`connectors.<diffusers module>.lora_A.weight`, with PEFT scaling 1 (alpha = rank) and the strength given as the
adapter weight.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import torch
from diffusers.loaders import LTX2LoraLoaderMixin
from diffusers.utils import logging

from ..validation import check_adapter_weights, check_lora_strength
from .single_file import _check_safetensors_file
from .single_file_connectors import CONNECTORS_KEY_TABLE
from .single_file_transformer import TRANSFORMER_KEY_TABLE


logger = logging.get_logger(__name__)

__all__ = [
    "LTX2AVLoraLoaderMixin",
    "LORA_COMPONENTS",
    "check_lora_tensors",
    "convert_lora_state_dict",
    "lora_key_format",
    "plan_lora_conversion",
]

#: Pipeline components a LoRA can target, with the single-file key table whose names they use.
LORA_COMPONENTS = {"transformer": TRANSFORMER_KEY_TABLE, "connectors": CONNECTORS_KEY_TABLE}
_PARTS = (".lora_A.weight", ".lora_B.weight")
_ORIGINAL_PREFIXES = ("diffusion_model.", "text_embedding_projection.")
# Keys of original-format files that ltx-core reads and drops: alphas (it scales by strength only).
_DROPPED_SUFFIXES = (".alpha",)


def lora_key_format(keys: Iterable[str]) -> str:
    """`"original"` (LTX / ComfyUI names) or `"diffusers"` (`transformer.` / `connectors.` names).

    `ValueError` naming the keys when they are a mixture of both or neither.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("the LoRA holds no tensors")
    original = [k for k in keys if k.startswith(_ORIGINAL_PREFIXES)]
    diffusers = [k for k in keys if k.split(".", 1)[0] in LORA_COMPONENTS]
    if len(original) == len(keys):
        return "original"
    if len(diffusers) == len(keys):
        return "diffusers"
    others = [k for k in keys if k not in set(original) | set(diffusers)]
    raise ValueError(
        "not an LTX-2 LoRA: keys must all start with 'diffusion_model.' (original format) or all with "
        f"'transformer.' / 'connectors.' (diffusers format); unrecognised keys ({len(others)}): {others[:10]}"
        + (
            f"; original-format keys mixed with diffusers-format keys {diffusers[:3]}"
            if original and diffusers
            else ""
        )
    )


def _split_part(key: str) -> tuple[str, str] | None:
    for part in _PARTS:
        if key.endswith(part):
            return key[: -len(part)], part
    return None


def _map_original_module(module: str) -> tuple[str, str] | None:
    """`(component, our module path)` for an original-format module path, or None if no table owns it."""
    file_key = ("model." + module if module.startswith("diffusion_model.") else module) + ".weight"
    owners = [name for name, table in LORA_COMPONENTS.items() if table.owns(file_key)]
    if len(owners) != 1:
        return None
    table = LORA_COMPONENTS[owners[0]]
    return owners[0], table.map_key(file_key)[: -len(".weight")]


def plan_lora_conversion(
    shapes: Mapping[str, Sequence[int]],
    targets: Mapping[str, Mapping[str, Sequence[int]]],
) -> tuple[dict[str, str], list[str]]:
    """Map the keys of a LoRA (original or diffusers format) to diffusers-format keys, checking every pair.

    `shapes`: LoRA key -> tensor shape. `targets`: component -> {parameter name -> shape} of the models the LoRA
    is for (e.g. a transformer's `state_dict()` shapes). Returns `(mapping, dropped)`: LoRA key -> new key, and
    the keys deliberately dropped (`.alpha` of original files, which ltx-core ignores). Raises `ValueError`
    naming every key that does not land on a linear weight of matching shape (a LoRA for another model), and
    every `lora_A` without its `lora_B`.
    """
    fmt = lora_key_format(shapes)
    mapping: dict[str, str] = {}
    dropped: list[str] = []
    unmatched: list[str] = []
    modules: dict[tuple[str, str], dict[str, str]] = {}
    for key in shapes:
        split = _split_part(key)
        if split is None:
            if fmt == "original" and key.endswith(_DROPPED_SUFFIXES):
                dropped.append(key)
            else:
                unmatched.append(key)
            continue
        module, part = split
        if fmt == "original":
            target = _map_original_module(module)
        else:
            component, _, rest = module.partition(".")
            target = (component, rest)
        if target is None:
            unmatched.append(key)
            continue
        modules.setdefault(target, {})[part] = key

    for (component, module), parts in modules.items():
        weight = targets.get(component, {}).get(module + ".weight")
        missing = [p for p in _PARTS if p not in parts]
        if missing:
            unmatched.extend(f"{k} (no {', '.join(m.lstrip('.') for m in missing)})" for k in parts.values())
            continue
        a, b = (tuple(shapes[parts[p]]) for p in _PARTS)
        if (
            weight is None
            or len(weight) != 2
            or len(a) != 2
            or len(b) != 2
            or a[1] != weight[1]
            or b[0] != weight[0]
            or a[0] != b[1]
        ):
            what = (
                "no such linear layer" if weight is None else f"shapes A{list(a)} B{list(b)} vs weight {list(weight)}"
            )
            unmatched.extend(f"{k} ({what})" for k in parts.values())
            continue
        for part, key in parts.items():
            mapping[key] = f"{component}.{module}{part}"
    if unmatched:
        raise ValueError(
            f"the LoRA does not fit this LTX-2 model: {len(unmatched)} keys match no layer of "
            f"{sorted(targets)}: {sorted(unmatched)[:20]}{' ...' if len(unmatched) > 20 else ''}"
        )
    if dropped:
        logger.info(f"dropping {len(dropped)} '.alpha' tensors: LTX-2 LoRAs scale by strength only")
    return mapping, dropped


def convert_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], targets: Mapping[str, Mapping[str, Sequence[int]]]
) -> dict[str, torch.Tensor]:
    """A LoRA state dict (original or diffusers format) in diffusers format, checked against `targets`
    (see `plan_lora_conversion`)."""
    mapping, _ = plan_lora_conversion({k: tuple(v.shape) for k, v in state_dict.items()}, targets)
    return {new: state_dict[old] for old, new in mapping.items()}


def check_lora_tensors(state_dict: Mapping[str, torch.Tensor], source: str = "the LoRA state dict") -> None:
    """Refuse, naming `source` and the tensor, a LoRA tensor that is not a torch floating point tensor (integer or
    bool dtypes: a re-tagged or foreign file) or that holds NaN / infinite values. `.alpha` scalars, which are
    dropped (ltx-core scales by strength only), are not checked."""
    for key, value in state_dict.items():
        if key.endswith(_DROPPED_SUFFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{source}: tensor {key!r} is a {type(value).__name__}, not a torch tensor")
        if not value.dtype.is_floating_point:
            raise TypeError(f"{source}: tensor {key!r} has dtype {value.dtype}; LoRA weights must be floating point")
        finite = torch.isfinite(value.float() if value.element_size() == 1 else value)
        if not bool(finite.all()):
            raise ValueError(
                f"{source}: tensor {key!r} holds {int((~finite).sum())} NaN or infinite values of {value.numel()}"
            )


def _module_shapes(model: torch.nn.Module | None) -> dict[str, tuple[int, ...]]:
    if model is None:
        return {}
    shapes = {}
    for name, module in model.named_modules():
        # PEFT-wrapped layers expose the original weight under `base_layer`.
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear) and name:
            shapes[name.replace(".base_layer", "") + ".weight"] = tuple(base.weight.shape)
    return shapes


class LTX2AVLoraLoaderMixin(LTX2LoraLoaderMixin):
    """diffusers' `LTX2LoraLoaderMixin` for our transformer and connectors, with the reference's LoRA semantics.

    `load_lora_weights` takes original LTX / ComfyUI files (`diffusion_model.*`, strength-only scaling: the adapter
    weight is the strength) and diffusers files; connector keys go to `connectors`. Keys that match no layer raise
    `ValueError` naming them. `fuse_lora` / `unfuse_lora` default to every component holding LoRA layers.
    """

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """The LoRA's tensors as stored (no renaming); see `load_lora_weights` for the conversion."""
        return_metadata = kwargs.pop("return_lora_metadata", False)
        from diffusers.loaders.lora_base import _fetch_state_dict  # noqa: PLC0415

        source = pretrained_model_name_or_path_or_dict
        if not isinstance(source, (str, os.PathLike, Mapping)):
            raise TypeError(
                "the LoRA must be a safetensors file path, a Hub id or a state dict of tensors, got "
                f"{type(source).__name__}"
            )
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
            _check_safetensors_file(source)  # a truncated / pickle / non-safetensors file: ValueError naming it

        state_dict, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
            weight_name=kwargs.pop("weight_name", None),
            use_safetensors=kwargs.pop("use_safetensors", True),
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=False,
        )
        return (state_dict, metadata) if return_metadata else state_dict

    def _lora_targets(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {name: _module_shapes(getattr(self, name, None)) for name in LORA_COMPONENTS}

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, **kwargs):
        """Load a LoRA (path, Hub id or state dict) as adapter `adapter_name`, active at weight 1.0.

        Original-format files follow ltx-core (`W + s * B @ A`, alphas ignored) with `s` the adapter weight set
        by `set_adapters(..., weights=[s])`; diffusers-format files keep their own metadata/alpha scaling.
        Integer / bool tensors (`TypeError`) and NaN / infinite values (`ValueError`) are refused, naming the file
        and the tensor, before any layer is touched.
        """
        if isinstance(pretrained_model_name_or_path_or_dict, (str, os.PathLike)) and os.path.isfile(
            pretrained_model_name_or_path_or_dict
        ):
            pretrained_model_name_or_path_or_dict = os.fspath(pretrained_model_name_or_path_or_dict)
        hotswap = kwargs.pop("hotswap", False)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
            state_dict, metadata = dict(pretrained_model_name_or_path_or_dict), None
        else:
            state_dict, metadata = self.lora_state_dict(
                pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
            )
        source = (
            f"LoRA {pretrained_model_name_or_path_or_dict!r}"
            if isinstance(pretrained_model_name_or_path_or_dict, str)
            else "the LoRA state dict"
        )
        check_lora_tensors(state_dict, source)
        fmt = lora_key_format(state_dict)
        converted = convert_lora_state_dict(state_dict, self._lora_targets())
        if fmt == "original":
            metadata = None  # strength-only scaling: PEFT alpha = rank
        for component in LORA_COMPONENTS:
            part = {k: v for k, v in converted.items() if k.startswith(component + ".")}
            model = getattr(self, component, None)
            if not part or model is None:
                continue
            model.load_lora_adapter(
                part,
                network_alphas=None,
                adapter_name=adapter_name,
                metadata=None if metadata is None else {k: v for k, v in metadata.items()},
                _pipeline=self,
                low_cpu_mem_usage=low_cpu_mem_usage,
                hotswap=hotswap,
                prefix=component,
            )

    def _components_with_lora(self) -> list[str]:
        from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

        names = []
        for name in self._lora_loadable_modules:
            model = getattr(self, name, None)
            if model is not None and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
                names.append(name)
        return names

    def set_adapters(self, adapter_names, adapter_weights=None):
        """diffusers' `set_adapters`, applied only to the components that hold LoRA layers. Every weight must be
        finite with `|w| <= 10` (`ltx2_diffusers.validation.MAX_LORA_STRENGTH`), else `ValueError`."""
        from diffusers.loaders.lora_base import LoraBaseMixin  # noqa: PLC0415

        check_adapter_weights(adapter_weights)

        saved = self._lora_loadable_modules
        self._lora_loadable_modules = self._components_with_lora()
        try:
            LoraBaseMixin.set_adapters(self, adapter_names, adapter_weights)
        finally:
            self._lora_loadable_modules = saved

    def fuse_lora(
        self, components=None, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None, **kwargs
    ):
        """Merge the active adapters into the weights of `components` (default: every component with LoRA layers)."""
        from diffusers.loaders.lora_base import LoraBaseMixin  # noqa: PLC0415

        check_lora_strength("lora_scale", lora_scale)
        components = self._components_with_lora() if components is None else components
        if components:
            LoraBaseMixin.fuse_lora(
                self,
                components=components,
                lora_scale=lora_scale,
                safe_fusing=safe_fusing,
                adapter_names=adapter_names,
            )

    def unfuse_lora(self, components=None, **kwargs):
        """Undo `fuse_lora` on `components` (default: every component with LoRA layers)."""
        from diffusers.loaders.lora_base import LoraBaseMixin  # noqa: PLC0415

        components = self._components_with_lora() if components is None else components
        if components:
            LoraBaseMixin.unfuse_lora(self, components=components)
